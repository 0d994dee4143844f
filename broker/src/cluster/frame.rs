//! The cluster link's wire format: length-prefixed, versioned frames. Pure functions over
//! bytes, fuzzed like the MQTT codec (`broker/fuzz/fuzz_targets/cluster_frame.rs`).
//!
//! ```text
//! frame = length: u32 big-endian (of what follows) | version: u8 | body: postcard(Frame)
//! ```
//!
//! A frame longer than the limit, of another version, or whose body does not decode is an
//! error that closes the link (never a panic, never an allocation of the claimed length before
//! the bytes are there).
//!
//! Frame types are added at the end of [`Frame`], so older frames keep their encoding, but a
//! node that receives a type it does not know closes the link. So each side tells the other
//! its protocol level ([`LEVEL`]) in one byte after the `Hello` body, which an older node's
//! decoder ignores (postcard reads what the type needs and no further), and a node sends a
//! frame type only on a link whose lower level has it ([`Hello::protocol`]). A `Hello` without
//! the byte is level 2, the first release of this format.

use bytes::{Buf, BufMut, BytesMut};
use rookery_store::StoredMessage;
use serde::{Deserialize, Serialize};

/// The frame format's version byte (every frame carries it; another one closes the link).
pub const VERSION: u8 = 2;
/// The protocol level this node speaks, within [`VERSION`]: which frame types it knows.
///
/// - 2: the format's first release (a `Hello` without the level byte).
/// - 3: `HandoverPart` (a session's queue in parts before its `HandoverReply`).
/// - 4: `DeliverInGroup` (a relayed shared-group delivery names its group).
/// - 5: `ForwardAck` and `ForwardResume` (forwarded messages are acknowledged, `acks.rs`).
/// - 6: `Adopted`, `PublishAdopted` and `Resumed` (what a dead node had not committed goes to
///   the nodes that adopted its sessions, or resumed one from the store, `reroute.rs`).
/// - 7: `Restarted` (what a node's previous life had not committed goes to its new one,
///   `restart.rs`).
pub const LEVEL: u8 = 7;
/// The level of a peer whose `Hello` carries no level byte.
pub const FIRST_LEVEL: u8 = 2;
/// The largest frame accepted (a forwarded PUBLISH of the largest MQTT packet fits).
pub const MAX_FRAME: usize = 268_435_460 + 4096;

/// What a link carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The first frame each side sends.
    Hello(Hello),
    /// Sent when the link is otherwise quiet; its absence for long enough marks the peer down.
    Heartbeat,
    /// Every filter the sender has subscribers for (sent on link-up; replaces what the
    /// receiver knew of the sender's routes).
    Routes(Vec<String>),
    /// The client ids connected to the sender, with when each connected (sent on link-up:
    /// after a partition both sides may hold a connection of one id; the older one goes).
    Claims(Vec<(String, u64)>),
    /// The sender has a first subscriber for this filter.
    RouteAdd(String),
    /// The sender has no subscriber for this filter any more.
    RouteRemove(String),
    /// A message published on the sender, for the receiver's subscribers (never forwarded
    /// again). The receiver delivers it to its shared groups named in `groups` only
    /// (`$share/{group}/{filter}`): the sender picked one node per group.
    Publish {
        /// The message's cluster-wide id.
        id: u64,
        /// The message.
        message: StoredMessage,
        /// Shared groups the receiver was picked for.
        groups: Vec<String>,
    },
    /// A client resumes its session on the sender: the receiver, if it holds the session,
    /// closes its connection, takes the session out and answers with it.
    HandoverAsk {
        /// The client id.
        client_id: String,
        /// When the sender asked (ms since the Unix epoch): identifies the ask.
        at_ms: u64,
    },
    /// The answer to a `HandoverAsk`: the session, if the sender held it.
    HandoverReply {
        /// The client id.
        client_id: String,
        /// The ask's `at_ms`.
        at_ms: u64,
        /// The session, now the asker's.
        transfer: Option<Box<super::handover::Transfer>>,
    },
    /// The receiver installed the session the sender handed it and announced its routes: the
    /// sender may stop relaying once every node knows those routes.
    HandoverInstalled {
        /// The client id.
        client_id: String,
    },
    /// A delivery for a session the sender handed to the receiver, matched by the sender's
    /// routes while the other nodes may not know the new ones yet.
    Deliver {
        /// The delivery.
        delivery: Relayed,
        /// From a shared group.
        shared: bool,
    },
    /// Answer `RouteFenceAck { id }` once `node`'s routes include every one of `filters`
    /// (or `node` is not linked): from then on the receiver sends their messages to `node`.
    RouteFence {
        /// Identifies the fence.
        id: u64,
        /// The node whose routes are awaited.
        node: String,
        /// Filters as announced.
        filters: Vec<String>,
    },
    /// The answer to `RouteFence`.
    RouteFenceAck {
        /// The fence.
        id: u64,
    },
    /// The sender is draining: sessions are not to be handed to it.
    Draining,
    /// The sender relays nothing more for this session.
    HandoverFinished {
        /// The client id.
        client_id: String,
    },
    /// A client connected to the sender with this client id at `at_ms`: the receiver closes
    /// its own connection of that id if it is older (one client id, one connection in the
    /// cluster; the newest wins, ties going to the larger node id).
    Claim {
        /// The client id.
        client_id: String,
        /// When the sender accepted the connection, ms since the Unix epoch.
        at_ms: u64,
    },
    /// Deliveries of a session handed over that are too many for one frame: sent, in order,
    /// before the `HandoverReply` (same client id and `at_ms`) that carries the rest.
    HandoverPart {
        /// The client id.
        client_id: String,
        /// The ask's `at_ms`.
        at_ms: u64,
        /// The next deliveries, in order.
        entries: Vec<super::handover::TransferEntry>,
    },
    /// A `Deliver` from a shared group, naming the group (level 4): the receiver checks
    /// duplicates per group, so a moving session in two groups that match one topic gets the
    /// delivery of each.
    DeliverInGroup {
        /// The delivery.
        delivery: Relayed,
        /// The group's key, `$share/{group}/{filter}`.
        group: String,
    },
    /// Every `Publish` the receiver sent on its links to this node (in its current boot
    /// epoch) up to number `upto` has been routed here, and in `sync` durability committed
    /// (level 5; see `acks.rs`).
    ForwardAck {
        /// The count handled.
        upto: u64,
    },
    /// Sent first on a link of level 5: the next `Publish` on this link is number `from + 1`
    /// (after a reconnection, the frames not acknowledged follow again; the receiver skips
    /// those it handled).
    ForwardResume {
        /// The count the sender knows acknowledged.
        from: u64,
    },
    /// The sender has adopted its share of the sessions of `departed`, a node that left
    /// without handing them over, and announced their routes (level 6): the receiver may now
    /// send it what `departed` had not committed.
    Adopted {
        /// The node that left.
        departed: String,
    },
    /// A message `departed` had been forwarded and had not committed when it died, for the
    /// receiver's sessions adopted from it only (level 6). Numbered and acknowledged like a
    /// `Publish`.
    PublishAdopted {
        /// The node whose sessions it is for.
        departed: String,
        /// The message's cluster-wide id.
        id: u64,
        /// The message.
        message: StoredMessage,
        /// Shared groups `departed` was picked for.
        groups: Vec<String>,
    },
    /// The sender read a session of `departed`, a node it has no link to, from the store (its
    /// client came back there before an adoption): the receiver sends it, as
    /// `PublishAdopted`, what it forwarded to `departed` and `departed` has not committed
    /// (level 6). Nothing waits for these copies; the adoption's resend still comes.
    Resumed {
        /// The node the session was read away from.
        departed: String,
    },
    /// Sent first on every link of level 7: how far the sender's previous life (its last
    /// boot epoch that committed any) had committed what the receiver forwarded to it, as
    /// its store says (`None`: nothing, or no store). The receiver sends it, as
    /// `PublishAdopted` naming the sender, what it had forwarded to that life after the mark
    /// and not had acknowledged: the sender delivers it to the sessions it restored from its
    /// store only.
    Restarted {
        /// The sender's last forward mark of the receiver's frames.
        mark: Option<PreviousMark>,
    },
}

/// A node's last forward mark of one peer's frames, as a `Restarted` frame carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousMark {
    /// The node's boot epoch when it wrote the mark.
    pub receiver_epoch: u64,
    /// The peer's boot epoch then.
    pub sender_epoch: u64,
    /// How many of the peer's frames of that pair of epochs were committed.
    pub upto: u64,
}

/// A delivery relayed for a session handed over, as `Deliver` and `DeliverInGroup` carry it.
/// postcard writes a struct's fields in order with nothing around them, so `Deliver` is the
/// same on the wire as when these were its own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relayed {
    /// The client id.
    pub client_id: String,
    /// The message's cluster-wide id (the receiver delivers each id once per way).
    pub id: u64,
    /// The message.
    pub message: StoredMessage,
    /// QoS of the delivery.
    pub qos: u8,
    /// RETAIN flag of the delivery.
    pub retain: bool,
    /// Subscription identifiers of the delivery.
    pub subscription_ids: Vec<u32>,
}

impl Frame {
    /// True for the frames forward acknowledgements count (`acks.rs`).
    pub fn is_forwarded(&self) -> bool {
        matches!(self, Frame::Publish { .. } | Frame::PublishAdopted { .. })
    }

    /// This frame as a link of protocol `level` can carry it: a `DeliverInGroup` becomes the
    /// level-3 `Deliver` of a shared group (the receiver then checks duplicates across all its
    /// groups at once, as before level 4). Pure.
    pub fn for_level(self, level: u8) -> Frame {
        match self {
            Frame::DeliverInGroup { delivery, .. } if level < 4 => Frame::Deliver {
                delivery,
                shared: true,
            },
            other => other,
        }
    }
}

/// Who is at the other end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster's name: links between clusters are refused.
    pub cluster: String,
    /// The sender's node id.
    pub node_id: String,
    /// The sender's boot epoch (milliseconds since the Unix epoch at start): a restarted peer
    /// has a new one, so state learned from its previous life is dropped.
    pub epoch: u64,
    /// Set by a dialer whose id is the larger one and that keeps the link anyway (the other
    /// node did not dial it in time). Without it, such a dialer hangs up after the handshake,
    /// and the accepting side does not take the link up at all.
    pub insist: bool,
    /// The sender's protocol level: not in the postcard body but in the byte after it (see
    /// the module documentation), [`FIRST_LEVEL`] when there is none.
    #[serde(skip)]
    pub protocol: u8,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over [`MAX_FRAME`] (or under the version byte).
    #[error("frame length {0} out of range")]
    Length(usize),
    /// A version this node does not speak.
    #[error("unsupported cluster protocol version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// The body is not a frame.
    #[error("malformed frame: {0}")]
    Body(String),
}

/// Appends one frame to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(VERSION);
    // A `Vec` writer never fails; the frame types hold nothing postcard cannot encode.
    let body = postcard::to_stdvec(frame).unwrap_or_default();
    out.put_slice(&body);
    if let Frame::Hello(hello) = frame {
        out.put_u8(hello.protocol);
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Takes one whole frame off the front of `buf`; `Ok(None)` while more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(1..=MAX_FRAME).contains(&len) {
        return Err(FrameError::Length(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len);
    if body[0] != VERSION {
        return Err(FrameError::Version(body[0]));
    }
    let (mut frame, rest) = postcard::take_from_bytes::<Frame>(&body[1..])
        .map_err(|e| FrameError::Body(e.to_string()))?;
    if let Frame::Hello(hello) = &mut frame {
        hello.protocol = rest.first().map_or(FIRST_LEVEL, |&l| l.max(FIRST_LEVEL));
    }
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            cluster: "prod".into(),
            node_id: "rookery-1".into(),
            epoch: 1_795_000_000_000,
            insist: false,
            protocol: LEVEL,
        })
    }

    /// A frame as a node of the first level wrote it: no level byte after a `Hello`.
    fn encode_first_level(frame: &Frame) -> BytesMut {
        let body = postcard::to_stdvec(frame).unwrap();
        let mut out = BytesMut::new();
        out.put_u32(u32::try_from(body.len() + 1).unwrap());
        out.put_u8(VERSION);
        out.put_slice(&body);
        out
    }

    #[test]
    fn a_hello_carries_the_level_and_one_without_it_is_the_first_level() {
        let mut wire = BytesMut::new();
        encode(&hello(), &mut wire);
        let Some(Frame::Hello(h)) = decode(&mut wire).unwrap() else {
            panic!("not a Hello");
        };
        assert_eq!(h.protocol, LEVEL);

        let mut old = encode_first_level(&hello());
        let Some(Frame::Hello(h)) = decode(&mut old).unwrap() else {
            panic!("not a Hello");
        };
        assert_eq!(h.protocol, FIRST_LEVEL);
        assert_eq!(h.node_id, "rookery-1");
    }

    #[test]
    fn a_first_level_decoder_reads_a_new_hello_as_before() {
        // What a node of the first level does with the frame body: `postcard::from_bytes`,
        // which ignores the level byte after the `Hello`.
        let mut wire = BytesMut::new();
        encode(&hello(), &mut wire);
        let body = &wire[5..];
        let old: Frame = postcard::from_bytes(body).unwrap();
        let Frame::Hello(h) = old else {
            panic!("not a Hello");
        };
        assert_eq!(
            (h.cluster.as_str(), h.epoch, h.insist),
            ("prod", 1_795_000_000_000, false)
        );
        // And the frames after it are where that node expects them.
        let mut stream = wire.clone();
        encode(&Frame::Heartbeat, &mut stream);
        let mut first = BytesMut::from(&stream[..]);
        assert!(matches!(decode(&mut first).unwrap(), Some(Frame::Hello(_))));
        assert_eq!(decode(&mut first).unwrap(), Some(Frame::Heartbeat));
    }

    #[test]
    fn a_level_below_the_first_counts_as_the_first() {
        let mut wire = encode_first_level(&hello());
        wire.put_u8(0);
        let n = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) + 1;
        wire[..4].copy_from_slice(&n.to_be_bytes());
        let Some(Frame::Hello(h)) = decode(&mut wire).unwrap() else {
            panic!("not a Hello");
        };
        assert_eq!(h.protocol, FIRST_LEVEL);
    }

    fn relayed() -> Relayed {
        Relayed {
            client_id: "dev".into(),
            id: 9,
            message: StoredMessage {
                topic: "a/b".into(),
                payload: bytes::Bytes::from_static(b"1"),
                qos: 1,
                retain: false,
                properties: bytes::Bytes::new(),
                expires_at_ms: None,
            },
            qos: 1,
            retain: false,
            subscription_ids: vec![2],
        }
    }

    fn in_group() -> Frame {
        Frame::DeliverInGroup {
            delivery: relayed(),
            group: "$share/g/a/+".into(),
        }
    }

    #[test]
    fn a_delivery_in_a_group_goes_as_such_from_level_4_and_as_a_shared_deliver_below() {
        assert_eq!(in_group().for_level(4), in_group());
        assert_eq!(in_group().for_level(LEVEL), in_group());
        assert_eq!(
            in_group().for_level(3),
            Frame::Deliver {
                delivery: relayed(),
                shared: true
            }
        );
        // Other frames are the same on every level.
        assert_eq!(Frame::Heartbeat.for_level(2), Frame::Heartbeat);
        let mut wire = BytesMut::new();
        encode(&in_group(), &mut wire);
        assert_eq!(decode(&mut wire).unwrap(), Some(in_group()));
    }

    #[test]
    fn a_deliver_is_on_the_wire_what_it_was_with_its_fields_inline() {
        let d = relayed();
        let frame = Frame::Deliver {
            delivery: d.clone(),
            shared: true,
        };
        let new = postcard::to_stdvec(&frame).unwrap();
        // The variant index, then the fields one after another, as a flat variant had them.
        let flat = postcard::to_stdvec(&(
            d.client_id,
            d.id,
            d.message,
            d.qos,
            d.retain,
            d.subscription_ids,
            true,
        ))
        .unwrap();
        assert_eq!(new[1..], flat[..]);
    }

    #[test]
    fn frames_round_trip_one_by_one_and_in_pieces() {
        let mut wire = BytesMut::new();
        encode(&hello(), &mut wire);
        encode(&Frame::Heartbeat, &mut wire);
        let message = Frame::Publish {
            id: 77,
            message: StoredMessage {
                topic: "a/b".into(),
                payload: bytes::Bytes::from_static(b"21.5"),
                qos: 1,
                retain: false,
                properties: bytes::Bytes::new(),
                expires_at_ms: Some(7),
            },
            groups: vec!["$share/g/a/+".into()],
        };
        encode(&message, &mut wire);
        encode(&Frame::Routes(vec!["a/+".into(), "#".into()]), &mut wire);
        encode(&Frame::ForwardResume { from: 3 }, &mut wire);
        encode(&Frame::ForwardAck { upto: u64::MAX }, &mut wire);
        let adopted = Frame::Adopted {
            departed: "node-2".into(),
        };
        encode(&adopted, &mut wire);
        let again = match message.clone() {
            Frame::Publish {
                id,
                message,
                groups,
            } => Frame::PublishAdopted {
                departed: "node-2".into(),
                id,
                message,
                groups,
            },
            other => other,
        };
        assert!(again.is_forwarded() && message.is_forwarded() && !adopted.is_forwarded());
        encode(&again, &mut wire);
        let resumed = Frame::Resumed {
            departed: "node-2".into(),
        };
        encode(&resumed, &mut wire);
        let restarted = Frame::Restarted {
            mark: Some(PreviousMark {
                receiver_epoch: 1,
                sender_epoch: u64::MAX,
                upto: 41,
            }),
        };
        encode(&restarted, &mut wire);
        encode(&Frame::Restarted { mark: None }, &mut wire);
        // Fed a byte at a time, the decoder waits, then yields each frame once.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 11);
        assert_eq!(got[..2], [hello(), Frame::Heartbeat]);
        assert_eq!(got[2], message);
        assert_eq!(
            got[4..],
            [
                Frame::ForwardResume { from: 3 },
                Frame::ForwardAck { upto: u64::MAX },
                adopted,
                again,
                resumed,
                restarted,
                Frame::Restarted { mark: None }
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_lengths_versions_and_bodies_are_errors() {
        let mut b = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decode(&mut b), Err(FrameError::Length(0)));
        let mut b = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut b), Err(FrameError::Length(_))));
        let mut b = BytesMut::from(&[0u8, 0, 0, 2, 9, 0][..]);
        assert_eq!(decode(&mut b), Err(FrameError::Version(9)));
        let mut b = BytesMut::from(&[0u8, 0, 0, 2, VERSION, 200][..]);
        assert!(matches!(decode(&mut b), Err(FrameError::Body(_))));
    }

    #[test]
    fn a_claimed_length_allocates_nothing_before_the_bytes_come() {
        let mut b = BytesMut::from(&[0x01u8, 0, 0, 0, VERSION][..]);
        assert_eq!(decode(&mut b), Ok(None));
        assert!(b.capacity() < 1024);
    }

    proptest::proptest! {
        /// Arbitrary bytes: an error or frames, never a panic; what decodes re-encodes to
        /// itself. (`broker/fuzz` runs the same check under libFuzzer.)
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = decode(&mut buf) {
                let mut again = BytesMut::new();
                encode(&f, &mut again);
                proptest::prop_assert_eq!(decode(&mut again), Ok(Some(f)));
            }
        }

        /// A valid frame with its body's bytes mutated: still no panic.
        #[test]
        fn mutated_frames_never_panic(at in 0usize..64, to in proptest::num::u8::ANY) {
            let mut wire = BytesMut::new();
            encode(&hello(), &mut wire);
            let i = 4 + at % (wire.len() - 4);
            wire[i] = to;
            let _ = decode(&mut wire);
        }
    }
}
