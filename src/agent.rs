//! `tidemark-agent`: the whole program. Parses the command line, runs it, maps the outcome
//! to an exit code. `tidemark` (the front end, `main.rs`) hands it every command it does
//! not settle itself.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tune_malloc();
    let cli = tidemark::cli::Cli::parse();
    std::process::ExitCode::from(tidemark::cmd::main(cli))
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
