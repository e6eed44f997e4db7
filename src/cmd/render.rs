//! What every command prints through: stdout that ends quietly when its reader goes away,
//! one JSON document, byte counts for people.

/// `println!` that ends the command quietly when stdout is closed (`tidemark backup show | head`).
macro_rules! outln {
    ($($t:tt)*) => { $crate::cmd::render::emit(&format!("{}\n", format!($($t)*))) };
}

/// `print!` with the same closed-stdout handling.
macro_rules! out {
    ($($t:tt)*) => { $crate::cmd::render::emit(&format!($($t)*)) };
}

/// Writes to stdout; a reader that went away (EPIPE) ends the process at once, quietly.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tidemark: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// A size for people to read: "15 B", "1.46 KiB".
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Prints `v` as one pretty JSON document.
pub fn json<T: serde::Serialize>(v: &T) -> Result<(), super::Failure> {
    let text = serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?;
    outln!("{text}");
    Ok(())
}
