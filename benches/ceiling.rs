//! The compute ceiling: zstd-3 + AES-256-GCM (tidemark's sealing) of a WAL corpus held in
//! memory, on all cores. Neither tool can archive faster than this on this machine.
//! Usage: BENCH_CORPUS=dir cargo bench --bench ceiling

use std::time::Instant;

use tidemark::codec::{seal_to_vec, Keyring};

fn main() {
    let Ok(dir) = std::env::var("BENCH_CORPUS") else {
        eprintln!("set BENCH_CORPUS to a directory of WAL segments (benches/run.sh does)");
        return;
    };
    let mut files: Vec<Vec<u8>> = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir).expect("corpus dir").flatten().map(|e| e.path()).collect();
    names.sort();
    for p in names {
        files.push(std::fs::read(p).expect("segment"));
    }
    let total: usize = files.iter().map(Vec::len).sum();
    let ring = Keyring::generate("bench");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..cores {
            let files = &files;
            let ring = &ring;
            s.spawn(move || {
                for (i, f) in files.iter().enumerate().filter(|(i, _)| i % cores == c) {
                    let sealed = seal_to_vec(ring, &format!("seg{i}"), 3, f).expect("seal");
                    std::hint::black_box(sealed);
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!("ceiling_mb_s {:.1}", total as f64 / 1e6 / secs);
}
