//! `caseshare probe URL`: one plain-HTTP GET with a deadline, exit 0 on a
//! 200 answer and 1 on anything else. It is the container image's
//! `HEALTHCHECK` (`caseshare probe http://127.0.0.1:7444/readyz`), so the
//! image needs neither a shell nor curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// GETs `url` (`http://HOST:PORT/PATH`; no TLS, no redirects) within
/// `timeout`; the status line on success, an error otherwise.
pub fn run(url: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: HOST:PORT expected"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = TcpStream::connect_timeout(&addr, left()).with_context(|| url.to_string())?;
    s.set_write_timeout(Some(left()))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .with_context(|| url.to_string())?;
    // The status line is all that is read (at most 4 KiB).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        s.set_read_timeout(Some(left()))?;
        let n = s.read(&mut chunk).with_context(|| url.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    match line.split(' ').nth(1) {
        Some("200") => Ok(line),
        Some(_) => bail!("{url}: {line}"),
        None => bail!("{url}: no HTTP status line"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req);
            c.write_all(answer.as_bytes()).unwrap();
        });
        format!("http://127.0.0.1:{port}/readyz")
    }

    #[test]
    fn ok_only_on_200() {
        let t = Duration::from_secs(5);
        assert!(run(&serve_once("HTTP/1.1 200 OK\r\n\r\nready\n"), t).is_ok());
        let e = run(&serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n"), t).unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
        assert!(run(&serve_once(""), t).is_err());
        assert!(run("https://127.0.0.1:1/readyz", t).is_err());
        // Nothing listening: refused, not hung.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        assert!(run(&format!("http://127.0.0.1:{port}/"), t).is_err());
    }
}
