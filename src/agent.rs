//! `tidemark-agent`: the whole program. Parses the command line, runs it, maps the outcome
//! to an exit code. `tidemark` (the front end, `main.rs`) hands it every command it does
//! not settle itself.

use std::path::Path;

use clap::{CommandFactory, Parser};
use tidemark::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    if let Command::DistAssets { out } = &cli.command {
        // Packaging, not operations: the agent is the one binary that links clap, so it
        // writes the man pages and completions from the very definitions it parses with.
        return match dist_assets(out) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tidemark: error: cannot write {}: {e}", out.display());
                std::process::ExitCode::from(1)
            }
        };
    }
    std::process::ExitCode::from(tidemark::cmd::main(cli))
}

/// Man pages (`tidemark.1`, one `tidemark-SUB.1` per visible subcommand) into `out/man`,
/// bash, zsh and fish completions into `out/completions`.
fn dist_assets(out: &Path) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), tidemark::cli::FRONT_END, &completions)?;
    }
    Ok(())
}

/// Keeps glibc from holding on to freed buffers: each thread that allocates gets its own
/// arena by default (up to 8 per core), and the mmap threshold rises to the largest block
/// ever freed, so parallel pushes leave tens of MiB per worker resident.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}
