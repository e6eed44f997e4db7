//! Link-time settings for the binary.

fn main() {
    // archive_command and restore_command start this binary once per WAL file, so its
    // start-up is on PostgreSQL's critical path. Packed relative relocations (DT_RELR,
    // glibc >= 2.36) shrink the ~50k relocations the dynamic loader applies at start.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
