//! MQTT 3.1, 3.1.1 and 5.0 packets as plain data: bytes in, packets out, no I/O.
//!
//! - [`packet`]: the packet types, one set for all versions.
//! - [`decode`](mod@decode): `decode(&mut BytesMut, protocol, max_packet)` takes one whole
//!   packet off the front of a buffer, or returns `Ok(None)` when more bytes are needed.
//! - [`encode`](mod@encode): appends a packet to a buffer; [`encode::encode_publish`] is the
//!   broker's hot path.
//! - [`reason`]: reason and return codes by name.
//! - [`error`]: what a malformed stream is, mapped to its reason code.
//!
//! Strings are [`bytestring::ByteString`] and binary data [`bytes::Bytes`]: both are slices of
//! the frame that was read, so decoding a PUBLISH copies neither its topic nor its payload.

pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
mod properties;
mod reader;
pub mod reason;

pub use decode::decode;
pub use encode::encode;
pub use error::DecodeError;
pub use packet::*;
