//! Packet types for MQTT 3.1, 3.1.1 and 5.0.
//!
//! One set of types serves every protocol version: fields that only exist in
//! MQTT 5.0 (properties, reason codes on acknowledgements) are ignored when a
//! packet is encoded for an older version, and left at their defaults when one
//! is decoded from an older version.

use bytes::Bytes;
use bytestring::ByteString;

/// The protocol version a connection speaks, from the CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (protocol name `MQTT`, level 4).
    V311,
    /// MQTT 5.0 (protocol name `MQTT`, level 5).
    V5,
}

impl Protocol {
    /// True for MQTT 5.0, the only version with properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }

    /// The protocol level byte of the CONNECT packet.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// QoS 0.
    #[default]
    AtMostOnce = 0,
    /// QoS 1.
    AtLeastOnce = 1,
    /// QoS 2.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, `None` for 3.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A user property: a UTF-8 name and value pair (MQTT 5.0).
pub type UserProperty = (ByteString, ByteString);

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (boxed: it is large and rare).
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5.0 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Version named by the protocol name and level.
    pub protocol: Protocol,
    /// Clean Session (3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: ByteString,
    /// The will message, if the will flag is set.
    pub will: Option<LastWill>,
    /// User name, if the flag is set.
    pub username: Option<ByteString>,
    /// Password, if the flag is set (binary data).
    pub password: Option<Bytes>,
    /// MQTT 5.0 properties.
    pub properties: ConnectProperties,
}

/// CONNECT properties (MQTT 5.0 section 3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval (0x11), seconds.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (0x21); 0 is a protocol error.
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size (0x27); 0 is a protocol error.
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum (0x22).
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information (0x19), 0 or 1.
    pub request_response_information: Option<u8>,
    /// Request Problem Information (0x17), 0 or 1.
    pub request_problem_information: Option<u8>,
    /// User Properties (0x26), in order.
    pub user_properties: Vec<UserProperty>,
    /// Authentication Method (0x15).
    pub authentication_method: Option<ByteString>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
}

/// The will of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Will topic.
    pub topic: ByteString,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain.
    pub retain: bool,
    /// Will properties (MQTT 5.0 section 3.1.3.2).
    pub properties: WillProperties,
}

/// Will properties (MQTT 5.0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Will Delay Interval (0x18), seconds.
    pub will_delay_interval: Option<u32>,
    /// Payload Format Indicator (0x01), 0 or 1.
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval (0x02), seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content Type (0x03).
    pub content_type: Option<ByteString>,
    /// Response Topic (0x08).
    pub response_topic: Option<ByteString>,
    /// Correlation Data (0x09).
    pub correlation_data: Option<Bytes>,
    /// User Properties (0x26).
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// MQTT 5.0 reason code, or the 3.1.1 return code (0 to 5). See [`crate::reason`].
    pub code: u8,
    /// MQTT 5.0 properties.
    pub properties: ConnAckProperties,
}

/// CONNACK properties (MQTT 5.0 section 3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session Expiry Interval (0x11).
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (0x21).
    pub receive_maximum: Option<u16>,
    /// Maximum QoS (0x24), 0 or 1.
    pub maximum_qos: Option<u8>,
    /// Retain Available (0x25), 0 or 1.
    pub retain_available: Option<u8>,
    /// Maximum Packet Size (0x27).
    pub maximum_packet_size: Option<u32>,
    /// Assigned Client Identifier (0x12).
    pub assigned_client_identifier: Option<ByteString>,
    /// Topic Alias Maximum (0x22).
    pub topic_alias_maximum: Option<u16>,
    /// Reason String (0x1F).
    pub reason_string: Option<ByteString>,
    /// User Properties (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Wildcard Subscription Available (0x28).
    pub wildcard_subscription_available: Option<u8>,
    /// Subscription Identifiers Available (0x29).
    pub subscription_identifiers_available: Option<u8>,
    /// Shared Subscription Available (0x2A).
    pub shared_subscription_available: Option<u8>,
    /// Server Keep Alive (0x13).
    pub server_keep_alive: Option<u16>,
    /// Response Information (0x1A).
    pub response_information: Option<ByteString>,
    /// Server Reference (0x1C).
    pub server_reference: Option<ByteString>,
    /// Authentication Method (0x15).
    pub authentication_method: Option<ByteString>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty when an MQTT 5.0 topic alias stands for it.
    pub topic: ByteString,
    /// Packet identifier; 0 for QoS 0 (no identifier on the wire).
    pub packet_id: u16,
    /// Application payload.
    pub payload: Bytes,
    /// MQTT 5.0 properties.
    pub properties: PublishProperties,
}

/// PUBLISH properties (MQTT 5.0 section 3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload Format Indicator (0x01).
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval (0x02), seconds.
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias (0x23); 0 is a protocol error.
    pub topic_alias: Option<u16>,
    /// Response Topic (0x08).
    pub response_topic: Option<ByteString>,
    /// Correlation Data (0x09).
    pub correlation_data: Option<Bytes>,
    /// User Properties (0x26), in order.
    pub user_properties: Vec<UserProperty>,
    /// Subscription Identifiers (0x0B), server to client only; each 1 to 268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// Content Type (0x03).
    pub content_type: Option<ByteString>,
}

impl PublishProperties {
    /// True when no property is set, the common case worth a fast path.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    /// Packet identifier.
    pub packet_id: u16,
    /// MQTT 5.0 reason code (0 = success); absent on the wire for older versions.
    pub reason: u8,
    /// MQTT 5.0 properties.
    pub properties: AckProperties,
}

/// Properties of acknowledgements (reason string and user properties).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Reason String (0x1F).
    pub reason_string: Option<ByteString>,
    /// User Properties (0x26).
    pub user_properties: Vec<UserProperty>,
}

impl AckProperties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

/// Retain Handling subscription option (MQTT 5.0 section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: never send retained messages for this subscription.
    DoNotSend = 2,
}

/// Subscription options of one SUBSCRIBE entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (5.0).
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The topic filter as sent (may start with `$share/`).
    pub filter: ByteString,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (never 0).
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<SubscribeFilter>,
    /// MQTT 5.0 properties.
    pub properties: SubscribeProperties,
}

/// SUBSCRIBE properties (MQTT 5.0 section 3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Subscription Identifier (0x0B), 1 to 268,435,455.
    pub subscription_identifier: Option<u32>,
    /// User Properties (0x26).
    pub user_properties: Vec<UserProperty>,
}

/// SUBACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// One reason code (5.0) or return code (3.1.1: 0, 1, 2 or 0x80) per filter.
    pub reason_codes: Vec<u8>,
    /// MQTT 5.0 properties.
    pub properties: AckProperties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (never 0).
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<ByteString>,
    /// User Properties (0x26), MQTT 5.0.
    pub user_properties: Vec<UserProperty>,
}

/// UNSUBACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// One reason code per filter (5.0 only; empty for older versions).
    pub reason_codes: Vec<u8>,
    /// MQTT 5.0 properties.
    pub properties: AckProperties,
}

/// DISCONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// MQTT 5.0 reason code (0 = normal disconnection).
    pub reason: u8,
    /// MQTT 5.0 properties.
    pub properties: DisconnectProperties,
}

/// DISCONNECT properties (MQTT 5.0 section 3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// Session Expiry Interval (0x11), client to server only.
    pub session_expiry_interval: Option<u32>,
    /// Reason String (0x1F).
    pub reason_string: Option<ByteString>,
    /// User Properties (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Server Reference (0x1C).
    pub server_reference: Option<ByteString>,
}

/// AUTH (MQTT 5.0 only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Reason code: 0x00 success, 0x18 continue, 0x19 re-authenticate.
    pub reason: u8,
    /// Properties.
    pub properties: AuthProperties,
}

/// AUTH properties (MQTT 5.0 section 3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// Authentication Method (0x15).
    pub authentication_method: Option<ByteString>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
    /// Reason String (0x1F).
    pub reason_string: Option<ByteString>,
    /// User Properties (0x26).
    pub user_properties: Vec<UserProperty>,
}
