//! A local moto server: S3 and EC2 APIs in memory.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{aws_env, free_port, wait_for};

/// A moto server on a free loopback port.
pub struct Moto {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Moto {
    /// Starts moto and waits until it answers.
    pub fn start() -> Moto {
        let exe = std::env::var("TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe} (tests/run.sh installs it): {e}"));
        let m = Moto { child, port };
        wait_for("moto to listen", Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        m
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, bucket: &str) {
        aws_env();
        let opts = tidemark::store::StoreOptions {
            region: Some("us-east-1".into()),
            endpoint: Some(self.endpoint()),
            multipart_threshold: None,
        };
        let s = tidemark::store::s3::S3Store::new(bucket, "", &opts).await;
        s.client().create_bucket().bucket(bucket).send().await.expect("create bucket");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
