//! `tidemark`: the front end. PostgreSQL starts it once per WAL file, so it settles the
//! common cases of `wal-push` (the daemon archives) and `wal-fetch` (read-ahead spooled the
//! segment) itself. It links neither the AWS SDKs, whose relocations alone doubled a call's
//! start-up, nor clap. Every other command, and those two when they need a store, it execs
//! as `tidemark-agent`, which parses and explains the command line.
//!
//! It has no Rust `main`: std's start-up (the main thread's stack guard, found by reading
//! /proc/self/maps, and its signal handlers) costs each call 50-100 us, and nothing below
//! needs it. std still works: arguments come from its own init hook.
#![no_main]

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use tidemark::cmd::fast_path::{self, Call};

/// The C entry point (see the module note).
#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    // std's start-up would have done this: a closed stderr must be an error, not a kill.
    // SAFETY: setting a signal to be ignored, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    i32::from(front_end())
}

fn front_end() -> u8 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut local_step_done = false;
    if let Some(call) = Call::parse(&args, |k| std::env::var_os(k)) {
        fast_path::init_logging_at("warn", call.log_format);
        if let Some(code) = fast_path::local_step(&call) {
            return code;
        }
        local_step_done = true;
    }
    // Always the sibling, never this file, whatever this file is called: a renamed front end
    // must fail to find the agent rather than exec itself.
    let agent = match std::env::current_exe() {
        Ok(me) if me.file_name().is_some_and(|n| n != tidemark::cli::AGENT) => me.with_file_name(tidemark::cli::AGENT),
        Ok(me) => return cannot_run(&me.display().to_string(), &std::io::Error::other("that is this front end")),
        Err(e) => return cannot_run(tidemark::cli::AGENT, &e),
    };
    let mut cmd = std::process::Command::new(&agent);
    cmd.args(args.iter().skip(1));
    if local_step_done {
        cmd.env(fast_path::LOCAL_STEP_DONE, "1");
    }
    let e = cmd.exec();
    cannot_run(&agent.display().to_string(), &e)
}

/// 126 is the shell's "cannot execute", and for `wal-fetch` it aborts recovery rather than
/// ending it early.
fn cannot_run(agent: &str, e: &std::io::Error) -> u8 {
    eprintln!(
        "tidemark: error: cannot run {agent}: {e}; tidemark-agent must be installed beside tidemark (`cargo build --release` builds both)"
    );
    fast_path::FETCH_ABORT
}
