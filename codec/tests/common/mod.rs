//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::BytesMut;
use rookery_codec::encode::encoded_len;
use rookery_codec::{DecodeError, Packet, Protocol, decode, encode};

/// Generous limit for tests that are not about size.
pub const MAX: usize = 1 << 28;

/// Concatenates byte slices.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Encodes `p` for `proto`.
pub fn enc(p: &Packet, proto: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(p, proto, &mut buf);
    buf.to_vec()
}

/// Decodes all of `bytes` as one packet; fails the test if bytes are left over.
pub fn dec(bytes: &[u8], proto: Protocol) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let out = decode(&mut buf, proto, MAX)?;
    if out.is_some() {
        assert!(buf.is_empty(), "{} bytes left after one packet", buf.len());
    }
    Ok(out)
}

/// Decodes `bytes`, expecting an error.
pub fn err(bytes: &[u8], proto: Protocol) -> DecodeError {
    match dec(bytes, proto) {
        Err(e) => e,
        Ok(p) => panic!("expected an error for {bytes:02X?}, got {p:?}"),
    }
}

/// Every proper prefix of `bytes` decodes to `Ok(None)` and leaves the buffer as it was.
pub fn check_partial(bytes: &[u8], proto: Protocol) {
    for split in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..split]);
        let r = decode(&mut buf, proto, MAX);
        assert_eq!(r, Ok(None), "prefix of {split} bytes of {bytes:02X?}");
        assert_eq!(&buf[..], &bytes[..split], "buffer touched at split {split}");
    }
    // Fed one byte at a time into the same buffer.
    let mut buf = BytesMut::new();
    let mut got = None;
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        match decode(&mut buf, proto, MAX) {
            Ok(None) => assert!(i + 1 < bytes.len(), "complete packet returned None"),
            Ok(Some(p)) => {
                assert_eq!(i + 1, bytes.len(), "packet returned early");
                got = Some(p);
            }
            Err(e) => panic!("error {e} at byte {i}"),
        }
    }
    assert!(got.is_some() && buf.is_empty());
}

/// `p` encodes to exactly `bytes`, `bytes` decode to exactly `p`, every prefix is
/// incomplete, and `encoded_len` agrees.
pub fn vector(p: &Packet, proto: Protocol, bytes: &[u8]) {
    assert_eq!(enc(p, proto), bytes, "encoding of {p:?} for {proto:?}");
    assert_eq!(encoded_len(p, proto), bytes.len(), "encoded_len of {p:?}");
    assert_eq!(
        dec(bytes, proto),
        Ok(Some(p.clone())),
        "decoding {bytes:02X?}"
    );
    check_partial(bytes, proto);
}
