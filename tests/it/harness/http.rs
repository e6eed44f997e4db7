//! Just enough HTTP/1.1 framing for the proxies and the IMDS double: one request per
//! connection.

use std::net::TcpStream;

/// The head with `Content-Length: len` and `Connection: close` in place of its own.
pub(super) fn with_headers(head: &str, len: usize) -> String {
    let mut out = String::new();
    for (i, l) in head.trim_end().lines().enumerate() {
        let lower = l.to_ascii_lowercase();
        if i > 0 && (lower.starts_with("content-length:") || lower.starts_with("connection:")) {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {len}\r\nConnection: close\r\n\r\n"));
    out
}

/// Reads one HTTP message: its head, and a body by Content-Length, chunked framing, or
/// (responses) to EOF.
pub(super) fn read_message(s: &mut TcpStream, to_eof: bool) -> std::io::Result<(String, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end..].to_vec();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        // The last chunk, then (optional trailers and) an empty line.
        while !(body.ends_with(b"0\r\n\r\n")
            || (body.windows(5).any(|w| w == b"\r\n0\r\n") && body.ends_with(b"\r\n\r\n")))
        {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if to_eof {
        s.read_to_end(&mut body)?;
    }
    Ok((head, body))
}

/// The head with `Connection: close` (one request per connection keeps framing simple).
pub(super) fn closing(head: &str) -> String {
    let mut out = String::new();
    for (i, l) in head.trim_end().lines().enumerate() {
        if i > 0 && l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}
