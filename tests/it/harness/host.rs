//! Host doubles: a loop-mounted filesystem that can really be frozen, and an instance
//! metadata service.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use super::http::{read_message, with_headers};

/// An ext4 filesystem in a file, loop-mounted: a real block device whose mount can be frozen.
pub struct LoopMount {
    /// Mount point.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl LoopMount {
    /// Makes and mounts one of `mib` MiB; None (with a note on stderr) where this machine
    /// cannot loop-mount (not root, no loop devices).
    pub fn new(mib: u64) -> Option<LoopMount> {
        let tmp = tempfile::Builder::new().prefix("tidemark-loop").tempdir_in("/var/tmp").unwrap();
        let img = tmp.path().join("fs.img");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(mib << 20).unwrap();
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))
            || !ok(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&dir))
        {
            eprintln!("SKIPPED: cannot make and loop-mount an ext4 image here (needs root, e2fsprogs and /dev/loop*)");
            return None;
        }
        Some(LoopMount { dir, _tmp: tmp })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.dir).output();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// A loopback IMDSv2 endpoint (token, then metadata paths), for the real IMDS client.
pub fn imds_server(values: &'static [(&'static str, &'static str)]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            use std::io::Write;
            let Ok((head, _)) = read_message(&mut c, false) else { continue };
            let line = head.lines().next().unwrap_or_default().to_string();
            let has_token = head.to_ascii_lowercase().contains("x-aws-ec2-metadata-token: tok");
            let (status, body) = if line.starts_with("PUT /latest/api/token") {
                ("200 OK\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600", "tok".to_string())
            } else if let Some((_, v)) = values.iter().find(|(p, _)| line.starts_with(&format!("GET {p} "))) {
                if has_token {
                    ("200 OK", v.to_string())
                } else {
                    ("401 Unauthorized", String::new())
                }
            } else {
                ("404 Not Found", String::new())
            };
            let _ = c.write_all(with_headers(&format!("HTTP/1.1 {status}\r\n"), body.len()).as_bytes());
            let _ = c.write_all(body.as_bytes());
        }
    });
    port
}
