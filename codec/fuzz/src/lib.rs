//! Oracles shared by the fuzz targets.
//!
//! - Decoding never panics, and `Ok(None)` leaves the buffer untouched.
//! - Whatever decodes re-encodes to bytes that decode to the same packet, and
//!   `encoded_len` tells the size `encode` writes.
//! - Decoding a stream fed in chunks yields the same packets, and ends the same way, as
//!   decoding it in one go.

use bytes::BytesMut;
use rookery_codec::encode::encoded_len;
use rookery_codec::{DecodeError, Packet, Protocol, decode, encode};

/// Large enough never to matter for fuzz-sized inputs.
pub const MAX: usize = 1 << 28;

/// Encodes `p`, decodes it back, and checks it is the same packet.
pub fn roundtrip(p: &Packet, proto: Protocol) {
    let mut out = BytesMut::new();
    encode(p, proto, &mut out);
    assert_eq!(out.len(), encoded_len(p, proto), "encoded_len of {p:?}");
    match decode(&mut out, proto, MAX) {
        Ok(Some(back)) => assert_eq!(&back, p, "round trip changed the packet"),
        other => panic!("re-encoded {p:?} as {out:02X?}, which decodes to {other:?}"),
    }
    assert!(out.is_empty(), "bytes left after re-decoding {p:?}");
}

/// Decodes packets off `buf` until it needs more bytes or fails; each packet is checked
/// with [`roundtrip`] and appended to `out`.
pub fn drain(
    buf: &mut BytesMut,
    proto: Protocol,
    max: usize,
    out: &mut Vec<Packet>,
) -> Result<(), DecodeError> {
    loop {
        let before = buf.clone();
        match decode(buf, proto, max)? {
            Some(p) => {
                assert!(buf.len() < before.len(), "decoded a packet from no bytes");
                roundtrip(&p, proto);
                out.push(p);
            }
            None => {
                assert_eq!(*buf, before, "Ok(None) changed the buffer");
                return Ok(());
            }
        }
    }
}

/// The `decode_v311` / `decode_v5` body: the whole input as one buffer.
pub fn decode_all(data: &[u8], proto: Protocol) {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    let _ = drain(&mut buf, proto, MAX, &mut out);
}

/// The `decode_stream` body. `data[0]` picks the protocol (`% 3`: 3.1, 3.1.1, 5.0) and
/// the read size (`>> 2`, plus 1: 1 to 64 bytes); the rest of `data` is the stream.
pub fn decode_stream(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let proto = match ctl % 3 {
        0 => Protocol::V31,
        1 => Protocol::V311,
        _ => Protocol::V5,
    };
    let chunk = usize::from(ctl >> 2) + 1;

    // In one go.
    let mut whole = BytesMut::from(stream);
    let mut expected = Vec::new();
    let whole_end = drain(&mut whole, proto, MAX, &mut expected);

    // In chunks, as reads from a socket would deliver it.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut end = Ok(());
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        end = drain(&mut buf, proto, MAX, &mut got);
        if end.is_err() {
            break;
        }
    }
    assert_eq!(got, expected, "chunked decoding differs");
    assert_eq!(
        end.is_err(),
        whole_end.is_err(),
        "chunked decoding ends differently"
    );
    if end.is_ok() {
        assert_eq!(buf, whole, "different bytes left over");
    }
}
