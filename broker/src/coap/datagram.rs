//! Reading a datagram into a CoAP message, with the format checks RFC 7252 asks for that the
//! decoder leaves out (pure; fuzzed as `coap_datagram` in `broker/fuzz`).

use coap_lite::{MessageClass, Packet};

/// Largest datagram read; anything longer is refused (RFC 7252 section 4.6 keeps messages
/// within one IP packet, 1280 bytes being the safe size).
pub const MAX_DATAGRAM: usize = Packet::MAX_SIZE;

/// Why a datagram is not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a CoAP 1 message, or one with a format error.
    Malformed,
    /// Longer than one datagram may be.
    TooLarge,
}

/// Reads a datagram. Refuses what RFC 7252 calls a message format error and the decoder
/// accepts: a version other than 1 (section 3: silently ignored), a payload marker with no
/// payload after it (section 3), and an Empty message with a token, options or a payload
/// (section 4.1).
pub fn decode(bytes: &[u8]) -> Result<Packet, Refused> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(Refused::TooLarge);
    }
    let packet = std::panic::catch_unwind(|| Packet::from_bytes(bytes))
        .ok()
        .and_then(Result::ok)
        .ok_or(Refused::Malformed)?;
    if packet.header.get_version() != 1 {
        return Err(Refused::Malformed);
    }
    let reencoded = packet
        .to_bytes_unlimited()
        .map_err(|_| Refused::Malformed)?;
    if packet.payload.is_empty()
        && bytes.len() == reencoded.len() + 1
        && bytes.last() == Some(&0xff)
        && bytes[..reencoded.len()] == reencoded[..]
    {
        return Err(Refused::Malformed);
    }
    if matches!(packet.header.code, MessageClass::Empty)
        && (bytes.len() != 4 || !packet.get_token().is_empty())
    {
        return Err(Refused::Malformed);
    }
    Ok(packet)
}

/// Total message size the block-wise handler works to (its default, RFC 7959's 1152).
pub const BLOCK_MESSAGE_SIZE: usize = 1152;
/// What Block1 and Block2 options can add to a message (the handler's own margin).
const BLOCK_OPTIONS: usize = 12;
/// The smallest block (SZX 0).
const SMALLEST_BLOCK: usize = 16;

/// True when a request's options leave room for at least the smallest block in a message of
/// [`BLOCK_MESSAGE_SIZE`]. `coap-lite`'s block handler divides by the room left and panics
/// when there is none (found by the `coap_datagram` fuzz target), so requests that fail this
/// are refused before it sees them.
pub fn leaves_room_for_a_block(packet: &Packet) -> bool {
    let mut head = packet.clone();
    head.payload.clear();
    head.to_bytes_unlimited()
        .is_ok_and(|b| b.len() + BLOCK_OPTIONS + SMALLEST_BLOCK <= BLOCK_MESSAGE_SIZE)
}

/// True when the bytes start with a CoAP 1 confirmable header: a message that cannot be
/// processed is then rejected with RST (section 4.2).
pub fn is_confirmable_header(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[0] >> 6 == 1 && (bytes[0] >> 4) & 3 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_errors_the_decoder_accepts_are_refused() {
        // CON GET, mid 1, no token, Uri-Path "a".
        let good = [0x40, 0x01, 0x00, 0x01, 0xb1, b'a'];
        assert!(decode(&good).is_ok());
        // The same with a payload marker and nothing after it.
        let mut marker = good.to_vec();
        marker.push(0xff);
        assert_eq!(decode(&marker).unwrap_err(), Refused::Malformed);
        // With a payload after the marker: fine.
        marker.push(b'x');
        assert_eq!(decode(&marker).unwrap().payload, b"x");
        // Version 0.
        assert_eq!(
            decode(&[0x00, 0x01, 0x00, 0x01]).unwrap_err(),
            Refused::Malformed
        );
        // An Empty CON (a ping) is 4 bytes; with a token or payload it is malformed.
        assert!(decode(&[0x40, 0x00, 0x00, 0x02]).is_ok());
        assert_eq!(
            decode(&[0x41, 0x00, 0x00, 0x02, 0x32]).unwrap_err(),
            Refused::Malformed
        );
        assert_eq!(
            decode(&[0x40, 0x00, 0x00, 0x02, 0xff, 0x32]).unwrap_err(),
            Refused::Malformed
        );
        assert_eq!(decode(&[0x40; 2000]).unwrap_err(), Refused::TooLarge);
        assert_eq!(decode(&[]).unwrap_err(), Refused::Malformed);
        assert!(leaves_room_for_a_block(&decode(&good).unwrap()));
        let mut long = vec![0x40, 0x01, 0x00, 0x03];
        for _ in 0..5 {
            long.extend([0xbd, 0xf0]); // Uri-Path of 13 + 240 bytes
            long.extend([b'a'; 253]);
        }
        let long = decode(&long).unwrap();
        assert!(!leaves_room_for_a_block(&long));
        assert!(is_confirmable_header(&good));
        assert!(!is_confirmable_header(&[0x50, 1, 0, 1]));
        assert!(!is_confirmable_header(&[0x00, 1, 0, 1]));
    }
}
