//! Link-time settings for the binary.

fn main() {
    // archive_command and restore_command start this binary once per WAL file, so its
    // start-up is on PostgreSQL's critical path. Packed relative relocations (DT_RELR,
    // glibc >= 2.36) shrink the ~50k relocations the dynamic loader applies at start.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        // The front end links with GNU ld, not rustc's default lld: lld keeps the exception
        // tables (.gcc_except_table) of every function it drops as unused, 3.5 of the 6 MB
        // of a stripped release front end; GNU ld drops them with their functions.
        println!("cargo:rustc-link-arg-bin=tidemark=-fuse-ld=bfd");
    }
}
