//! Loopback proxies in front of moto: one that takes the store away and brings it back
//! ([`Proxy`]), one that injects EC2 API faults ([`FaultProxy`]), one that breaks a share of
//! S3 requests ([`ChaosProxy`]).

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::http::{closing, read_message, with_headers};
use super::{free_port, wait_for};

/// A loopback TCP proxy that can be taken down and brought back on the same port,
/// so the store "goes away" (connections refused) without losing moto's in-memory state.
pub struct Proxy {
    /// Listen port.
    pub port: u16,
    target: u16,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts forwarding a free port to `target`.
    pub fn start(target: u16) -> Proxy {
        let mut p = Proxy { port: free_port(), target, rt: None };
        p.up();
        p
    }

    /// Starts (again) listening.
    pub fn up(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (port, target) = (self.port, self.target);
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).expect("proxy bind");
        rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        self.rt = Some(rt);
    }

    /// Stops listening and cuts every open connection.
    pub fn down(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        wait_for("proxy to close", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What a [`FaultProxy`] does to requests.
#[derive(Default)]
pub struct Faults {
    /// Answer this many requests (of `action`, or any) with 503 RequestLimitExceeded.
    pub throttle: usize,
    /// Only requests whose `Action=` is this are throttled or rewritten.
    pub action: Option<String>,
    /// Error code of the injected failures (default RequestLimitExceeded, a 503; others are 400s).
    pub code: Option<String>,
    /// Replace text in matching responses.
    pub rewrite: Vec<(String, String)>,
    /// Actions seen, in order.
    pub seen: Vec<String>,
    /// Requests answered with a throttling error.
    pub throttled: usize,
}

/// A loopback HTTP/1.1 proxy in front of moto that injects faults into EC2 query calls.
pub struct FaultProxy {
    /// Its port.
    pub port: u16,
    /// The faults, changeable while running.
    pub faults: std::sync::Arc<std::sync::Mutex<Faults>>,
}

impl FaultProxy {
    /// Starts forwarding to `upstream` (a port on 127.0.0.1).
    pub fn start(upstream: u16) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let faults = std::sync::Arc::new(std::sync::Mutex::new(Faults::default()));
        let f2 = faults.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let f = f2.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(c, upstream, &f);
                });
            }
        });
        FaultProxy { port, faults }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve_one(mut c: TcpStream, upstream: u16, faults: &std::sync::Mutex<Faults>) -> std::io::Result<()> {
    use std::io::Write;
    let (head, body) = read_message(&mut c, false)?;
    let text = String::from_utf8_lossy(&body);
    let action = text.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or("").to_string();
    let (throttle, rewrite, code) = {
        let mut f = faults.lock().unwrap();
        f.seen.push(action.clone());
        let hit = f.action.as_deref().is_none_or(|a| a == action);
        let throttle = hit && f.throttle > 0;
        if throttle {
            f.throttle -= 1;
            f.throttled += 1;
        }
        let code = f.code.clone().unwrap_or_else(|| "RequestLimitExceeded".into());
        (throttle, if hit { f.rewrite.clone() } else { Vec::new() }, code)
    };
    if throttle {
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>");
        let resp = if code == "RequestLimitExceeded" {
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\n"
        } else {
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\n"
        };
        c.write_all(with_headers(resp, xml.len()).as_bytes())?;
        c.write_all(xml.as_bytes())?;
        return Ok(());
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(with_headers(&head, body.len()).as_bytes())?;
    up.write_all(&body)?;
    let (rhead, rbody) = read_message(&mut up, true)?;
    let mut rtext = String::from_utf8_lossy(&rbody).into_owned();
    for (from, to) in &rewrite {
        rtext = rtext.replace(from, to);
    }
    c.write_all(with_headers(&rhead, rtext.len()).as_bytes())?;
    c.write_all(rtext.as_bytes())?;
    Ok(())
}

/// Faults a [`ChaosProxy`] injects, one kind per faulty request, in turn.
pub const CHAOS_KINDS: [&str; 6] = [
    "reset before the request",
    "503 SlowDown",
    "500 InternalError",
    "truncated body",
    "delay",
    "reset after the request applied",
];

/// A binary-safe loopback HTTP/1.1 proxy in front of moto's S3 API that breaks a fixed
/// share of requests, cycling through [`CHAOS_KINDS`] (deterministic: no test luck).
pub struct ChaosProxy {
    /// Its port.
    pub port: u16,
    /// Faults injected so far, per kind (indexes of [`CHAOS_KINDS`]).
    pub injected: std::sync::Arc<std::sync::Mutex<[u64; 6]>>,
    /// Requests seen.
    pub requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ChaosProxy {
    /// Forwards to `upstream`, breaking one request in `every`.
    pub fn start(upstream: u16, every: u64) -> ChaosProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let injected = std::sync::Arc::new(std::sync::Mutex::new([0u64; 6]));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (inj, reqs) = (injected.clone(), requests.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let n = reqs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Every `every`-th request is broken, the kinds taken in turn.
                let fault = (n % every == every - 1).then(|| ((n / every) % 6) as usize);
                if let Some(k) = fault {
                    inj.lock().unwrap()[k] += 1;
                }
                std::thread::spawn(move || {
                    let _ = chaos_one(c, upstream, fault);
                });
            }
        });
        ChaosProxy { port, injected, requests }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn chaos_one(mut c: TcpStream, upstream: u16, fault: Option<usize>) -> std::io::Result<()> {
    use std::io::Write;
    let (head, body) = read_message(&mut c, false)?;
    let s3_error = |status: &str, code: &str| {
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>chaos</RequestId></Error>");
        format!("HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}", xml.len())
    };
    match fault {
        Some(0) => return Ok(()),
        Some(1) => return c.write_all(s3_error("503 Slow Down", "SlowDown").as_bytes()),
        Some(2) => return c.write_all(s3_error("500 Internal Server Error", "InternalError").as_bytes()),
        Some(4) => std::thread::sleep(Duration::from_millis(300)),
        _ => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(closing(&head).as_bytes())?;
    up.write_all(&body)?;
    let (rhead, rbody) = read_message(&mut up, true)?;
    match fault {
        Some(5) => Ok(()),
        Some(3) => {
            // Headers promise the whole body; half of it arrives, then the connection ends.
            c.write_all(closing(&rhead).as_bytes())?;
            c.write_all(&rbody[..rbody.len() / 2])
        }
        _ => {
            c.write_all(closing(&rhead).as_bytes())?;
            c.write_all(&rbody)
        }
    }
}
