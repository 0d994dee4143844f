//! Reading the durable state back at start: retained messages into the index, persistent
//! sessions (offline) with their subscriptions in the trie, their queues, what was in flight
//! both ways, their wills and expiry timers counted from when their connections ended.

use std::sync::Arc;
use std::time::Instant;

use ahash::{AHashMap, AHashSet};
use bytestring::ByteString;
use rookery_auth::acl::SubscribeDecision;
use rookery_store::now_ms;
use rookery_store::{QueueOp, SessionRecord, StoreError};
use tracing::{info, warn};

use super::convert;
use crate::broker::Broker;
use crate::message::{Delivery, Message};
use crate::router::topic;
use crate::router::trie::Subscription;
use crate::session::inflight::OutState;
use crate::session::{NEVER_EXPIRES, Restoring, SessionState};

/// What a restore brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Retained messages.
    pub retained: usize,
    /// Persistent sessions.
    pub sessions: usize,
    /// Sessions that had expired while the broker was down (ended now, wills published).
    pub expired: usize,
    /// Messages queued or in flight.
    pub messages: usize,
}

/// Loads everything the stores hold into `broker`. Run before the listeners accept.
pub async fn restore(broker: &Arc<Broker>) -> Result<Restored, StoreError> {
    let Some(p) = broker.persist.clone() else {
        return Ok(Restored::default());
    };
    let stores = p.committer().stores().clone();
    let now = Instant::now();
    let wall = now_ms();
    let mut restored = Restored::default();

    let retained = stores.retained.load().await?;
    restored.retained = retained.len();
    fill_retained(&mut broker.retained.write(), retained, (now, wall));

    let mut known: AHashSet<String> = AHashSet::new();
    let mut timers = Vec::new();
    // In a cluster sharing Redis, each node brings back the sessions it owned; another
    // node's are fetched when their clients come back (crate::cluster::handover).
    let own_only = p.sessions_shared() && broker.config.cluster_listen.is_some();
    for record in stores.sessions.load().await? {
        known.insert(record.client_id.clone());
        if own_only && record.owner_node != broker.config.node_id {
            continue;
        }
        let (entries, incoming) = stores.queue.load(&record.client_id).await?;
        restored.messages += entries.len();
        timers.extend(restore_session(
            broker,
            Some(&p),
            // What the previous life had not committed may come for it (`cluster::restart`).
            Some(&|s: &Arc<crate::session::Session>| s.set_from_previous_life()),
            record,
            entries,
            incoming,
            (now, wall),
        ));
    }
    // Only once every session is back: a will published now reaches all its subscribers.
    for t in timers {
        match t {
            Timers::Expired(session) => {
                broker.end_session(&session, 1);
                restored.expired += 1;
            }
            Timers::Arm {
                session,
                will_left,
                expiry_left,
            } => {
                broker.schedule_after_disconnect(session, 1, will_left, expiry_left);
                restored.sessions += 1;
            }
        }
    }
    // Entries whose session record is gone (deleted in a commit that the queue store missed).
    for client_id in stores.queue.clients().await? {
        if !known.contains(&client_id) {
            warn!(client_id, "queued messages without a session: dropped");
            p.queue_op(QueueOp::Purge { client_id });
        }
    }
    if restored == Restored::default() {
        return Ok(restored);
    }
    info!(
        retained = restored.retained,
        sessions = restored.sessions,
        expired = restored.expired,
        messages = restored.messages,
        "durable state restored"
    );
    Ok(restored)
}

/// Sets each stored retained message in `index`, read at `now` (monotonic, wall ms).
pub(crate) fn fill_retained(
    index: &mut crate::router::retained::RetainedIndex,
    stored: Vec<rookery_store::StoredMessage>,
    (now, wall): (Instant, u64),
) {
    for m in stored {
        let id = crate::message::next_id();
        index.set(Arc::new(convert::message(m, 0, id, now, wall)));
    }
}

/// Runs on a restored session before its subscriptions enter the trie.
pub(crate) type BeforeRoutes<'a> = &'a dyn Fn(&Arc<crate::session::Session>);

/// What a restored session's timers need.
pub(crate) enum Timers {
    /// It expired while the broker was down: end it (publishing its will).
    Expired(Arc<crate::session::Session>),
    /// Arm its will-delay and expiry timers with what is left of them.
    Arm {
        session: Arc<crate::session::Session>,
        will_left: Option<u32>,
        expiry_left: u32,
    },
}

/// Registers one session (offline, subscriptions in the trie, queue filled). Also installs
/// a session handed over by another node ([`crate::cluster::handover`]).
pub(crate) fn restore_session(
    broker: &Arc<Broker>,
    p: Option<&super::Persist>,
    before_routes: Option<BeforeRoutes<'_>>,
    record: SessionRecord,
    entries: Vec<rookery_store::QueueEntry>,
    incoming: Vec<u16>,
    (now, wall): (Instant, u64),
) -> Option<Timers> {
    let client_id = ByteString::from(record.client_id.as_str());
    let username = record.username.as_deref().map(ByteString::from);
    let mut state = SessionState::default();
    let max_levels = broker.config.max_topic_levels;
    for r in &record.subscriptions {
        let Ok(parsed) = topic::parse_filter(&r.filter, max_levels) else {
            continue;
        };
        // The ACL in force now decides, as it would for a new SUBSCRIBE.
        let acl_check =
            match broker
                .security
                .check_subscribe(username.as_deref(), &client_id, parsed.filter)
            {
                SubscribeDecision::Denied => continue,
                SubscribeDecision::Allowed { check_each_message } => check_each_message,
            };
        state.subscriptions.insert(
            ByteString::from(r.filter.as_str()),
            Subscription {
                options: convert::subscription_options(r),
                id: r.id,
                acl_check,
            },
        );
    }
    for pid in incoming {
        state.incoming.receive(pid);
    }
    // One shared message however many entries refer to it.
    let mut messages: AHashMap<u64, Arc<Message>> = AHashMap::new();
    let mut queued = Vec::new();
    for e in entries {
        if let Some(p) = p {
            p.saw_id(e.id);
            p.saw_id(e.message_id);
        }
        if let (Some(pid), true) = (e.packet_id, e.released) {
            // Only PUBCOMP is awaited: the message itself is not needed.
            state.outgoing.restore(pid, OutState::Released(e.id));
            continue;
        }
        let Some(stored) = e.message else { continue };
        let message = messages
            .entry(e.message_id)
            .or_insert_with(|| {
                Arc::new(convert::message(
                    stored,
                    0,
                    crate::message::next_id(),
                    now,
                    wall,
                ))
            })
            .clone();
        let delivery = Delivery {
            message,
            qos: rookery_codec::QoS::from_u8(e.qos).unwrap_or(rookery_codec::QoS::AtLeastOnce),
            retain: e.retain,
            subscription_ids: e.subscription_ids.into_iter().collect(),
            stored: e.id,
        };
        match e.packet_id {
            Some(pid) if e.released => state.outgoing.restore(pid, OutState::Released(e.id)),
            Some(pid) => state.outgoing.restore(pid, OutState::Published(delivery)),
            None => queued.push(delivery),
        }
    }
    let will = record.will.clone().map(convert::will);
    let will_delay = record.will.as_ref().map(|w| w.delay_secs);
    let subs: Vec<ByteString> = state.subscriptions.keys().cloned().collect();
    let session = broker.sessions.restore(Restoring {
        client_id,
        expiry_secs: record.expiry_secs,
        username,
        by_password: record.by_password,
        state,
        will,
        disconnected_ms: record.disconnected_at_ms,
    })?;
    // The claim its record was written under: later writes of it carry the same, or newer.
    session.set_claimed(record.epoch);
    if let Some(hook) = before_routes {
        hook(&session);
    }
    // The queue before the routes: a message routed to it now comes after what waited.
    session.with_queue(|q| {
        for d in queued {
            q.push_restored(d);
        }
    });
    {
        let mut router = broker.router.write();
        session.with_parked(|v| {
            for raw in &subs {
                if let (Ok(parsed), Some(sub)) = (
                    topic::parse_filter(raw, max_levels),
                    v.subscriptions.get(raw),
                ) {
                    router.subscribe(&session, parsed.filter, parsed.group, *sub);
                }
            }
        });
    }
    // Timers count from when the connection ended; a session that was connected when the
    // broker stopped counts from now.
    let ended = record.disconnected_at_ms.unwrap_or(wall).min(wall);
    let elapsed_secs = u32::try_from((wall - ended) / 1000).unwrap_or(u32::MAX);
    let expiry_left = if record.expiry_secs == NEVER_EXPIRES {
        NEVER_EXPIRES
    } else {
        record.expiry_secs.saturating_sub(elapsed_secs)
    };
    if expiry_left == 0 {
        return Some(Timers::Expired(session));
    }
    Some(Timers::Arm {
        session,
        will_left: will_delay.map(|d| d.saturating_sub(elapsed_secs)),
        expiry_left,
    })
}
