//! tidemark binary: parse the command line, run it, map the outcome to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = tidemark::cli::Cli::parse();
    std::process::ExitCode::from(tidemark::app::main(cli))
}
