//! `rookery-broker healthcheck [--url URL]`: one plain HTTP GET, exit 0 on a 200. The broker
//! image is built `FROM scratch`, with no curl or shell for a HEALTHCHECK to use.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(url: &str) -> ExitCode {
    match get(url) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("rookery-broker healthcheck: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("rookery-broker healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `http://host:port/path` into the address and the path.
fn parse(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok((authority, path))
}

fn get(url: &str) -> Result<u16, String> {
    let (authority, path) = parse(url)?;
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the host resolves to no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    status_of(&head[..n]).ok_or_else(|| "not an HTTP response".into())
}

/// The status code of an HTTP/1.x status line.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head.get(..12)?).ok()?;
    if !line.starts_with("HTTP/1.") {
        return None;
    }
    line.get(9..12)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            parse("http://127.0.0.1:9100/healthz"),
            Ok(("127.0.0.1:9100", "/healthz"))
        );
        assert_eq!(parse("http://broker:9100"), Ok(("broker:9100", "/")));
        assert!(parse("https://x/").is_err());
        assert!(parse("http:///x").is_err());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(status_of(b"HTTP/1.1"), None);
    }
}
