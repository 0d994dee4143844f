//! Decoding errors, each mapped to the MQTT 5.0 reason code a server sends for it.

use crate::reason;

/// Why a byte stream is not a valid MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not form a packet of the claimed type (MQTT 5.0 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well formed but breaks a protocol rule (MQTT 5.0 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet is larger than the negotiated maximum (MQTT 5.0 0x95).
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Size the fixed header announced, in bytes including the header.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// CONNECT names a protocol or level we do not speak (MQTT 5.0 0x84, 3.1.1 return code 1).
    #[error("unsupported protocol name or level {level}")]
    UnsupportedProtocol {
        /// The protocol level byte received (0 when the name itself was wrong).
        level: u8,
    },
}

impl DecodeError {
    /// The MQTT 5.0 reason code to send in CONNACK or DISCONNECT for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}
