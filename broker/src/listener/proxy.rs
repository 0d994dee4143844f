//! PROXY protocol v1 and v2 headers (HAProxy's `send-proxy` / `send-proxy-v2`), read before
//! anything else on listeners that enable it, so that logs, ACLs and limits see the client's
//! real address rather than the load balancer's.
//!
//! The header is read with exact-length reads, never past its end, so the bytes after it (a TLS
//! ClientHello, an HTTP upgrade, a CONNECT) stay in the socket for the next layer. Parsing is
//! the `ppp` crate's; [`parse`] is pure and fuzzed.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature, the first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// Longest v2 header we accept: 16 fixed bytes and the addresses and TLVs after them.
const V2_MAX: usize = 16 + 1024;

/// A header that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket failed or closed mid-header.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The connection did not start with a PROXY header.
    #[error("the connection did not start with a PROXY protocol header")]
    Missing,
    /// It started like one but was malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
}

/// Reads one header and returns the client's address (`None` for `LOCAL`/`UNKNOWN`, such as a
/// load balancer's own health check).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    // 12 bytes cannot overrun: a v1 header has at least 15 and a v2 header at least 16.
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        // v1 ends at CRLF. Byte reads: at most ~100 small reads, once per connection.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::Malformed(
                    "v1 header longer than 107 bytes".into(),
                ));
            }
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            buf.push(byte[0]);
        }
    } else if buf.as_slice() == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        buf.extend_from_slice(&fixed);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if 16 + len > V2_MAX {
            return Err(ProxyError::Malformed(format!(
                "v2 header of {len} bytes exceeds the {V2_MAX}-byte limit"
            )));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        stream.read_exact(&mut buf[start..]).await?;
    } else {
        return Err(ProxyError::Missing);
    }
    parse(&buf)
}

/// True when `buf` starts like a PROXY header (checked on listeners that do not expect one, so
/// that a misconfigured load balancer is told apart from a broken client in the log).
pub fn looks_like_header(buf: &[u8]) -> bool {
    let n = buf.len().min(V2_SIGNATURE.len());
    n >= 6 && (buf.starts_with(b"PROXY ") || buf[..n] == V2_SIGNATURE[..n])
}

/// Parses one complete header.
pub fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::{v1, v2};
    if header.starts_with(V2_SIGNATURE) {
        let h = v2::Header::try_from(header).map_err(|e| ProxyError::Malformed(e.to_string()))?;
        if h.command == v2::Command::Local {
            return Ok(None);
        }
        return Ok(match h.addresses {
            v2::Addresses::IPv4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            v2::Addresses::IPv6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
        });
    }
    // v1 is ASCII by definition. Checking here also keeps non-ASCII bytes away from `ppp`,
    // whose v1 parser slices the text at byte offsets and panics inside a multi-byte
    // character (found by fuzzing: `\r` followed by one).
    if !header.is_ascii() {
        return Err(ProxyError::Malformed("v1 header is not ASCII".into()));
    }
    let text = std::str::from_utf8(header)
        .map_err(|_| ProxyError::Malformed("v1 header is not ASCII".into()))?;
    let h = v1::Header::try_from(text).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match h.addresses {
        v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn v1_tcp4_and_tcp6_give_the_source() {
        let a = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 1883\r\n").unwrap();
        assert_eq!(a, Some("203.0.113.7:51000".parse().unwrap()));
        let a = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1883\r\n").unwrap();
        assert_eq!(a, Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), None);
    }

    #[test]
    fn v2_proxy_and_local() {
        let mut addrs = vec![198, 51, 100, 9, 10, 0, 0, 1];
        addrs.extend_from_slice(&40000u16.to_be_bytes());
        addrs.extend_from_slice(&1883u16.to_be_bytes());
        let h = v2(1, 0x11, &addrs);
        assert_eq!(
            parse(&h).unwrap(),
            Some("198.51.100.9:40000".parse().unwrap())
        );
        assert_eq!(parse(&v2(0, 0, &[])).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"PROXY TCP4 300.0.0.1 1.1.1.1 1 2\r\n"[..],
            b"PROXY TCP4 1.1.1.1\r\n",
            b"PROXY\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04abcd",
            b"",
            // Found by fuzzing: made `ppp` panic slicing inside a multi-byte character.
            "PROXY \r\u{e9}".as_bytes(),
            "\r\u{1F600}".as_bytes(),
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_leaves_the_rest() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 1883\r\n\x10\x00rest";
        let addr = read_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("192.0.2.1:1000".parse().unwrap()));
        assert_eq!(input, b"\x10\x00rest");

        let mut addrs = vec![192, 0, 2, 1, 192, 0, 2, 2];
        addrs.extend_from_slice(&7u16.to_be_bytes());
        addrs.extend_from_slice(&8u16.to_be_bytes());
        let mut bytes = v2(1, 0x11, &addrs);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let mut input = bytes.as_slice();
        let addr = read_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("192.0.2.1:7".parse().unwrap()));
        assert_eq!(input, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn a_connection_without_a_header_is_refused() {
        let mut input: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyError::Missing)
        ));
        let mut long = b"PROXY ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        let mut input = long.as_slice();
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyError::Malformed(_))
        ));
    }
}
