//! The broker's shared state and the publish path.
//!
//! [`Broker::route`] runs in the publishing connection's task: it matches the topic in the
//! trie under a read lock and pushes one shared message into each matching session's queue.
//! No central router task sits on the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use parking_lot::RwLock;
use rookery_codec::{LastWill, QoS};
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::cluster::Forwarded;
use crate::cluster::frame::Frame;
use crate::config::Config;
use crate::limits::LiveLimits;
use crate::limits::memory::MemoryGate;
use crate::message::{Delivery, Message};
use crate::metrics::{DropReason, Metrics};
use crate::persist::{Persist, convert};
use crate::router::local::LocalRouter;
use crate::router::retained::RetainedIndex;
use crate::router::routes::SharedMatches;
use crate::router::topic;
use crate::router::trie::{Matches, SessionId, Subscriber, Subscription};
use crate::security::Security;
use crate::session::{PushOutcome, PushPolicy, Session, Sessions};
use rookery_store::committer::{Op, Ticket};
use rookery_store::now_ms;
use rookery_store::{QueueEntry, QueueOp, RetainedOp, StoredMessage};

/// What routing one message did.
#[derive(Default)]
pub struct Routed {
    /// Sessions it was queued for.
    pub receivers: usize,
    /// A session whose queue is now over its limit: the publisher pauses until it drains.
    pub congested: Option<Arc<Session>>,
    /// A peer's link queue that is now long: the publisher pauses until it drains.
    pub peer_congested: Option<Arc<crate::cluster::LinkQueue>>,
    /// The commit that makes this message durable, when it caused store writes.
    pub ticket: Option<Ticket>,
    /// Not routed: it needed the store, and the store cannot take it now.
    pub refused: bool,
    /// QoS 1/2: the peers with a subscriber that are to acknowledge it (protocol level 5).
    pub forwarded: Vec<crate::cluster::AckWait>,
}

/// Which of this node's shared groups a routing may deliver to.
enum Groups<'a> {
    /// Every group (no other node has members of a matching group).
    All,
    /// Decide per group: keep those with an online member here, and remove them from the
    /// list; the groups left in it go to other nodes.
    Decide(&'a mut SharedMatches),
    /// A forwarded message: only these groups (`$share/{group}/{filter}`).
    Only(&'a [String]),
    /// A message a dead node had not committed, sent again to the nodes that adopted its
    /// sessions: only to sessions adopted from `from`, and only these groups.
    Adopted {
        /// Shared groups the dead node was picked for.
        groups: &'a [String],
        /// The dead node.
        from: &'a str,
    },
}

/// One session a message goes to, with what is particular to it.
pub(crate) struct Target<'a> {
    pub(crate) session: &'a Arc<Session>,
    /// The shared group it comes from (`$share/{group}/{filter}`); an empty key for a
    /// relayed delivery from a group a level-3 node did not name. A thin pointer, as in
    /// the router's matches.
    #[allow(clippy::borrowed_box)]
    pub(crate) group: Option<&'a Box<str>>,
    pub(crate) granted: QoS,
    pub(crate) retain_as_published: bool,
    pub(crate) subscription_ids: SmallVec<[u32; 2]>,
    pub(crate) stored: u64,
}

/// Everything connections share.
pub struct Broker {
    /// The configuration in force.
    pub config: Config,
    /// Sessions by client id.
    pub sessions: Sessions,
    /// Subscriptions.
    pub router: RwLock<LocalRouter>,
    /// Retained messages.
    pub retained: RwLock<RetainedIndex>,
    /// Counters.
    pub metrics: Metrics,
    /// Passwords, ACL and bans in force.
    pub security: Security,
    /// The stores, unless durability is off.
    pub persist: Option<Arc<Persist>>,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Cancelled when a drain starts (and at shutdown): listeners stop accepting.
    pub drain: CancellationToken,
    /// Cancelled when a drain has disconnected every client: the process may exit.
    pub drained: CancellationToken,
    /// The drain was asked with `stay`: once drained, the process waits for SIGTERM instead of
    /// exiting (the operator removes the pod itself, after checking the hand-off).
    pub stay_after_drain: std::sync::atomic::AtomicBool,
    /// Background tasks (connections, timers) to wait for at shutdown.
    pub tasks: TaskTracker,
    /// Rate limits and the memory mark in force (swapped with [`Broker::set_limits`]).
    pub limits: ArcSwap<LiveLimits>,
    /// Whether `limits` limits publishers at all: one load on every PUBLISH.
    publish_limits: AtomicBool,
    /// Shut while queued bytes are above the memory high-water mark.
    pub memory: MemoryGate,
    /// True once every listener is up and state is restored, false again while draining.
    pub ready: AtomicBool,
    /// This node's cluster view, when `cluster_listen` is set.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    push_policy: PushPolicy,
    started: Instant,
}

impl Broker {
    /// A broker with this configuration, no state and no store.
    pub fn new(config: Config, security: Security) -> Arc<Broker> {
        Broker::with_persist(config, security, None)
    }

    /// A broker with this configuration that writes its durable state through `persist`.
    pub fn with_persist(
        config: Config,
        security: Security,
        persist: Option<Arc<Persist>>,
    ) -> Arc<Broker> {
        let push_policy = PushPolicy {
            limits: config.queue_limits(),
            queue_qos0_offline: config.queue_qos0_offline,
        };
        let limits = ArcSwap::from_pointee(LiveLimits::from_config(&config));
        let shutdown = CancellationToken::new();
        Arc::new(Broker {
            config,
            sessions: Sessions::default(),
            router: RwLock::new(LocalRouter::default()),
            retained: RwLock::new(RetainedIndex::default()),
            metrics: Metrics::default(),
            security,
            persist,
            drain: shutdown.child_token(),
            drained: CancellationToken::new(),
            stay_after_drain: std::sync::atomic::AtomicBool::new(false),
            shutdown,
            tasks: TaskTracker::new(),
            publish_limits: AtomicBool::new(limits.load().limits_publishers()),
            limits,
            memory: MemoryGate::default(),
            ready: AtomicBool::new(false),
            cluster: std::sync::OnceLock::new(),
            push_policy,
            started: Instant::now(),
        })
    }

    /// True once a drain has started: new connections are refused.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled() && !self.shutdown.is_cancelled()
    }

    /// Puts new limits in force (a reload).
    pub fn set_limits(&self, limits: LiveLimits) {
        self.publish_limits
            .store(limits.limits_publishers(), Ordering::Relaxed);
        self.limits.store(Arc::new(limits));
    }

    /// True when publish rate limits are on (cheaper than loading them).
    pub fn publish_limits_on(&self) -> bool {
        self.publish_limits.load(Ordering::Relaxed)
    }

    /// Time since the broker started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Routes a message published on this node: stores it if retained, queues it for every
    /// matching session here, and forwards it once to each peer with a matching subscriber
    /// (a retained message to every linked peer, so that each node's retained index has it).
    /// With a store, QoS 1/2 deliveries to persistent sessions are written to it first (one
    /// submission for the whole message, before any subscriber can see and acknowledge it).
    pub fn route(&self, message: &Arc<Message>) -> Routed {
        let mut remote_groups = self.remote_groups(message);
        let groups = match &mut remote_groups {
            Some(remote) => Groups::Decide(remote),
            None => Groups::All,
        };
        let mut routed = self.route_here(message, true, groups);
        if !routed.refused {
            self.forward(message, &mut routed, remote_groups);
        }
        routed
    }

    /// The shared groups matching `message` that have members on other nodes, when any.
    fn remote_groups(&self, message: &Message) -> Option<SharedMatches> {
        let cluster = self.cluster.get()?;
        if message.topic.starts_with("$SYS") {
            return None;
        }
        let remote = cluster.remote.read();
        if !remote.has_shared() {
            return None;
        }
        let groups = remote.shared_for(&message.topic);
        (!groups.is_empty()).then_some(groups)
    }

    /// Routes a message a peer forwarded: to this node's sessions only (never forwarded
    /// again, so no loops), and a retained one into the index, and into this node's store
    /// unless that is shared (then the node it was published on stored it). Returns a session
    /// whose queue it pushed over its limit (the link then stops reading until it drains:
    /// backpressure to the peer), and the commit of its store writes (the peer's
    /// acknowledgement waits for it in `sync`).
    pub fn route_forwarded(
        &self,
        id: u64,
        stored: StoredMessage,
        groups: &[String],
    ) -> (Option<Arc<Session>>, Option<Ticket>) {
        // The publishing node's id: the same message reaching a moving session twice is
        // delivered once.
        let message = Arc::new(convert::message(stored, 0, id, Instant::now(), now_ms()));
        let routed = self.route_here(&message, false, Groups::Only(groups));
        (routed.congested, routed.ticket)
    }

    /// Routes a message that `departed` (a dead node) had been forwarded and had not
    /// committed, to the sessions adopted here from it only. As [`Broker::route_forwarded`].
    pub fn route_adopted(
        &self,
        departed: &str,
        id: u64,
        stored: StoredMessage,
        groups: &[String],
    ) -> (Option<Arc<Session>>, Option<Ticket>) {
        let message = Arc::new(convert::message(stored, 0, id, Instant::now(), now_ms()));
        let routed = self.route_here(
            &message,
            false,
            Groups::Adopted {
                groups,
                from: departed,
            },
        );
        (routed.congested, routed.ticket)
    }

    fn is_adopted_from(&self, session: &Session, departed: &str) -> bool {
        if departed == self.config.node_id {
            // Our previous life's (`cluster::restart`).
            return session.is_from_previous_life();
        }
        session.is_moving()
            && self
                .cluster
                .get()
                .is_some_and(|c| c.moves.adopted_from(session.id, departed))
    }

    /// Tells the other nodes that a connection here took `session`'s client id (at the time
    /// [`Session::set_claimed`] noted), and gives the session up at once if another node's
    /// newer claim came while it was attaching: of concurrent CONNECTs the newest wins,
    /// everywhere.
    pub fn claim(self: &Arc<Self>, session: &Session) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        cluster.broadcast(&Frame::Claim {
            client_id: session.client_id.to_string(),
            at_ms: session.claimed(),
        });
        self.claim_in_store(session);
        if let Some((at_ms, node)) = cluster.claim_of(&session.client_id) {
            self.lose_to(session, at_ms, &node, false);
        }
    }

    /// A peer's connection took `client_id` at `at_ms`: our connection, if older, is closed
    /// (0x8E), and our copy of the session goes (the newer connection started clean or
    /// fetched it already).
    pub fn remote_claim(self: &Arc<Self>, peer: &str, client_id: &str, at_ms: u64) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let (at_ms, node) = cluster.note_claim(client_id, at_ms, peer);
        if let Some(session) = self.sessions.get(client_id) {
            self.lose_to(&session, at_ms, &node, false);
        }
    }

    /// A claim another node made in the shared session store (`ownership::watch`). One made
    /// a millisecond after ours is an adoption of our session (`adoption.rs` claims just after
    /// the departed node's own claim), not a connection: the client is alive and reconnects
    /// there, where the adopted session keeps its will, so ours goes without publishing it.
    pub fn stored_claim(self: &Arc<Self>, peer: &str, client_id: &str, at_ms: u64) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let (at_ms, node) = cluster.note_claim(client_id, at_ms, peer);
        if let Some(session) = self.sessions.get(client_id) {
            let adoption = at_ms == session.claimed().saturating_add(1);
            self.lose_to(&session, at_ms, &node, adoption);
        }
    }

    /// A peer's connections on link-up (after a partition, both sides may have one of the
    /// same id): for each of ours that is older, ours goes, without its will (the client is
    /// alive, connected there).
    pub fn remote_claims(self: &Arc<Self>, peer: &str, claims: Vec<(String, u64)>) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        for (client_id, at_ms) in claims {
            let (at_ms, node) = cluster.note_claim(&client_id, at_ms, peer);
            if let Some(session) = self.sessions.get(&client_id) {
                self.lose_to(&session, at_ms, &node, true);
            }
        }
    }

    /// Gives `session` up if the claim (`at_ms`, `node`) is newer than ours (ties to the
    /// larger node id): its connection is closed and the session removed here.
    fn lose_to(self: &Arc<Self>, session: &Session, at_ms: u64, node: &str, resumed: bool) {
        let ours = (session.claimed(), self.config.node_id.as_str());
        if (at_ms, node) <= ours {
            return;
        }
        let (broker, client_id, node) =
            (self.clone(), session.client_id.to_string(), node.to_owned());
        tokio::spawn(async move {
            if broker
                .discard_for_peer(&client_id, (at_ms, &node), resumed)
                .await
            {
                info!(
                    client_id,
                    node, "session taken over by a connection on another node"
                );
            }
        });
    }

    /// Sends the message to each peer that has a subscriber for it, and to the peer picked
    /// for each shared group in `remote_groups` (those left to other nodes).
    fn forward(
        &self,
        message: &Arc<Message>,
        routed: &mut Routed,
        remote_groups: Option<SharedMatches>,
    ) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        if message.topic.starts_with("$SYS") {
            return; // each node's own
        }
        let remote = cluster.remote.read();
        let matched = remote.peers_for(&message.topic);
        let mut peers = matched.clone();
        // Each group's node, in turn among those with members.
        let mut picked: SmallVec<[(Arc<str>, Vec<String>); 2]> = SmallVec::new();
        // A peer down with its routes kept takes a group's message only if no linked peer
        // has a member.
        let kept = cluster.any_kept();
        for (key, candidates) in remote_groups.iter().flatten() {
            let up: SmallVec<[Arc<str>; 4]>;
            let candidates = if kept && candidates.iter().any(|p| !cluster.is_kept(p)) {
                up = candidates
                    .iter()
                    .filter(|p| !cluster.is_kept(p))
                    .cloned()
                    .collect();
                &up[..]
            } else {
                &candidates[..]
            };
            let Some(peer) = remote.pick(candidates, key, message.id) else {
                continue;
            };
            match picked.iter_mut().find(|(p, _)| p == peer) {
                Some((_, keys)) => keys.push(key.to_string()),
                None => picked.push((peer.clone(), vec![key.to_string()])),
            }
            if !peers.contains(peer) {
                peers.push(peer.clone());
            }
        }
        // `remote` stays read-locked until the frames are queued: a node learning a route
        // (write lock) answers a route fence only after them (cluster::handover).
        if message.retain {
            for p in cluster.up_peers() {
                if !peers.iter().any(|q| **q == *p) {
                    peers.push(p.into());
                }
            }
        }
        if peers.is_empty() {
            return;
        }
        let stored = convert::stored_message(message, Instant::now(), now_ms());
        for peer in &peers {
            let groups = picked
                .iter_mut()
                .find(|(p, _)| p == peer)
                .map(|(_, keys)| std::mem::take(keys))
                .unwrap_or_default();
            let wanted = !groups.is_empty() || matched.contains(peer);
            let frame = Frame::Publish {
                id: message.id,
                message: stored.clone(),
                groups,
            };
            let (forwarded, wait) = cluster.forward(peer, frame);
            let sent = match forwarded {
                Forwarded::Sent => true,
                Forwarded::Congested(queue) => {
                    routed.peer_congested = Some(queue);
                    true
                }
                Forwarded::Dropped => false,
            };
            if sent && wanted {
                routed.receivers += 1;
                if let Some(wait) = wait.filter(|_| message.qos != QoS::AtMostOnce) {
                    routed.forwarded.push(wait);
                }
            }
        }
    }

    fn route_here(
        &self,
        message: &Arc<Message>,
        published_here: bool,
        groups: Groups<'_>,
    ) -> Routed {
        let durable = self
            .persist
            .as_ref()
            .filter(|_| message.qos != QoS::AtMostOnce);
        let mut routed = Routed::default();
        let adopted_from = match groups {
            Groups::Adopted { from, .. } => Some(from),
            _ => None,
        };
        // A message sent again for adopted sessions was retained where it was published.
        if message.retain && adopted_from.is_none() {
            // `$SYS` values are the broker's own and current only while it runs: not stored.
            // A peer's is stored here too unless the store is shared (the node it was
            // published on wrote it there): a node restarted on its own disk has them all.
            let stored = self.persist.as_ref().filter(|p| {
                !message.topic.starts_with("$SYS") && (published_here || !p.retained_shared())
            });
            if let Some(p) = stored {
                if published_here && message.qos != QoS::AtMostOnce && !p.accepts_messages() {
                    routed.refused = true;
                    return routed;
                }
                // A peer's goes into the index even when the store cannot take it.
                if published_here || p.accepts_messages() {
                    routed.ticket = Some(self.store_retained(p, message));
                }
            }
            let mut retained = self.retained.write();
            if message.payload.is_empty() {
                retained.remove(&message.topic);
            } else {
                retained.set(message.clone());
            }
        }
        let router = self.router.read();
        let mut matches: Matches<'_, Arc<Session>> = Matches::new();
        let mut denied = 0u64;
        if self.security.has_acl() || adopted_from.is_some() {
            // Subscriptions the ACL allows only in part: each message is checked for read
            // access, inside the match so that a shared group picks a member that may read it.
            // Likewise a message for adopted sessions picks among them, and among their
            // QoS 1 and 2 subscriptions: the dead node may have delivered it to a QoS 0 one,
            // which is at most once.
            let denied_cell = std::cell::Cell::new(0u64);
            let accept = |s: &Arc<Session>, sub: &Subscription| {
                if let Some(from) = adopted_from
                    && (sub.options.qos == QoS::AtMostOnce || !self.is_adopted_from(s, from))
                {
                    return false;
                }
                let ok = !sub.acl_check || self.readable_by(s, &message.topic);
                if !ok {
                    denied_cell.set(denied_cell.get() + 1);
                }
                ok
            };
            router.collect_filtered(&message.topic, &mut matches, &accept);
            denied = denied_cell.get();
        } else {
            router.collect(&message.topic, &mut matches);
        }
        if denied > 0 {
            self.metrics
                .dropped_acl_total
                .fetch_add(denied, Ordering::Relaxed);
        }
        if matches.is_empty() {
            return routed;
        }
        // No Local: never back to the publisher's own session. MQTT 5.0 [MQTT-3.8.3-3].
        matches.retain(|m| !(m.sub.options.no_local && m.handle.id == message.origin));
        match groups {
            Groups::All => {}
            // Forwarded: only the groups the publishing node picked this node for.
            Groups::Only(keys) | Groups::Adopted { groups: keys, .. } => {
                matches.retain(|m| m.group.is_none_or(|k| keys.iter().any(|g| **g == **k)));
            }
            // Published here, with members of some groups elsewhere too: a group with an
            // online member here keeps the message; one without leaves it to another node.
            Groups::Decide(remote) => matches.retain(|m| {
                let Some(key) = m.group else { return true };
                let Some(i) = remote.iter().position(|(k, _)| **k == **key) else {
                    return true;
                };
                if m.handle.is_online() {
                    remote.swap_remove(i);
                    true
                } else {
                    false
                }
            }),
        }
        if matches.is_empty() {
            return routed;
        }
        // One delivery per session for overlapping subscriptions: highest QoS and every
        // subscription identifier. MQTT 5.0 section 3.3.4, [MQTT-3.3.4-2], [MQTT-3.3.4-3].
        // Sorting in place brings a session's matches together without allocating.
        matches.sort_unstable_by_key(|m| (m.shared(), m.handle.session_id()));
        // With a store, targets are gathered first so that their writes go out in one
        // submission before any of them is queued.
        let mut gathered: SmallVec<[Target<'_>; 4]> = SmallVec::new();
        let mut i = 0;
        while i < matches.len() {
            let first = &matches[i];
            let mut j = i + 1;
            let mut qos = first.sub.options.qos;
            let mut rap = first.sub.options.retain_as_published;
            let mut ids: SmallVec<[u32; 2]> = first.sub.id.into_iter().collect();
            if !first.shared() {
                while j < matches.len()
                    && !matches[j].shared()
                    && matches[j].handle.id == first.handle.id
                {
                    qos = qos.max(matches[j].sub.options.qos);
                    rap |= matches[j].sub.options.retain_as_published;
                    ids.extend(matches[j].sub.id);
                    j += 1;
                }
            }
            let target = Target {
                session: first.handle,
                group: first.group,
                granted: qos,
                retain_as_published: rap,
                subscription_ids: ids,
                stored: 0,
            };
            i = j;
            // A session moving between nodes: relayed to its new node, or delivered once.
            if target.session.is_moving() && !self.moving_target(&target, message) {
                continue;
            }
            if durable.is_some() {
                gathered.push(target);
            } else {
                self.push_target(target, message, &mut routed);
            }
        }
        if let Some(p) = durable {
            if !self.store_deliveries(p, message, &mut gathered, &mut routed) {
                return routed;
            }
            for target in gathered {
                self.push_target(target, message, &mut routed);
            }
        }
        routed
    }

    fn store_retained(&self, p: &Persist, message: &Message) -> Ticket {
        let op = if message.payload.is_empty() {
            RetainedOp::Delete {
                topic: message.topic.to_string(),
            }
        } else {
            RetainedOp::Put(convert::stored_message(message, Instant::now(), now_ms()))
        };
        p.submit([Op::Retained(op)])
    }

    /// Writes the message once and an entry for each persistent session among `targets`.
    /// False (and `routed.refused`) when the store cannot take them.
    pub(crate) fn store_deliveries(
        &self,
        p: &Persist,
        message: &Message,
        targets: &mut [Target<'_>],
        routed: &mut Routed,
    ) -> bool {
        let mut ops: Vec<Op> = Vec::new();
        let mut message_id = 0;
        for t in targets.iter_mut() {
            if !t.session.is_durable() || t.granted == QoS::AtMostOnce {
                continue;
            }
            if message_id == 0 {
                if !p.accepts_messages() {
                    routed.refused = true;
                    return false;
                }
                message_id = p.next_id();
                ops.push(Op::Queue(QueueOp::Message {
                    id: message_id,
                    message: convert::stored_message(message, Instant::now(), now_ms()),
                }));
            }
            t.stored = p.next_id();
            ops.push(Op::Queue(QueueOp::Enqueue {
                client_id: t.session.client_id.to_string(),
                entry: QueueEntry {
                    id: t.stored,
                    message_id,
                    qos: message.qos.min(t.granted) as u8,
                    retain: t.retain_as_published && message.retain,
                    subscription_ids: t.subscription_ids.to_vec(),
                    packet_id: None,
                    released: false,
                    message: None,
                },
            }));
        }
        if !ops.is_empty() {
            routed.ticket = Some(p.submit(ops));
        }
        true
    }

    pub(crate) fn push_target(&self, t: Target<'_>, message: &Arc<Message>, routed: &mut Routed) {
        let session = t.session;
        let delivery = Delivery {
            message: message.clone(),
            qos: message.qos.min(t.granted),
            // MQTT 5.0 [MQTT-3.3.1-12], [MQTT-3.3.1-13]; 3.1.1 [MQTT-3.3.1-9].
            retain: t.retain_as_published && message.retain,
            subscription_ids: t.subscription_ids,
            stored: t.stored,
        };
        match self.push(session, delivery) {
            PushOutcome::Queued | PushOutcome::QueuedDroppedOldest => routed.receivers += 1,
            PushOutcome::QueuedOverLimit => {
                routed.receivers += 1;
                routed.congested.get_or_insert_with(|| session.clone());
            }
            PushOutcome::DroppedFull | PushOutcome::DroppedOffline => {}
        }
    }

    fn readable_by(&self, session: &Session, topic: &str) -> bool {
        let username = session.username();
        self.security
            .can_read(username.as_deref(), &session.client_id, topic)
    }

    /// Queues one delivery; what the queue drops is deleted from the store.
    fn push(&self, session: &Arc<Session>, delivery: Delivery) -> PushOutcome {
        let stored = delivery.stored;
        let outcome = session.push(delivery, &self.push_policy);
        let mut gone: SmallVec<[u64; 2]> = SmallVec::new();
        match outcome {
            PushOutcome::QueuedDroppedOldest => {
                self.metrics.dropped(DropReason::QueueFull, 1);
                gone.extend(session.with_queue(|q| q.take_dropped()));
            }
            PushOutcome::DroppedFull => {
                self.metrics.dropped(DropReason::QueueFull, 1);
                gone.push(stored);
            }
            PushOutcome::DroppedOffline => {
                self.metrics.dropped(DropReason::Offline, 1);
                gone.push(stored);
            }
            PushOutcome::Queued | PushOutcome::QueuedOverLimit => {}
        }
        gone.retain(|id| *id != 0);
        if let Some(p) = &self.persist
            && !gone.is_empty()
        {
            p.submit(gone.into_iter().map(|id| {
                Op::Queue(QueueOp::Ack {
                    client_id: session.client_id.to_string(),
                    id,
                })
            }));
        }
        outcome
    }

    /// Queues the retained messages matching a new subscription for `session`, writing those
    /// for a persistent session to the store first. Returns how many were queued and the
    /// commit that makes them durable.
    pub fn send_retained(
        &self,
        session: &Arc<Session>,
        filter: &str,
        granted: QoS,
        subscription_id: Option<u32>,
        acl_check: Option<Option<&str>>,
        now: Instant,
    ) -> (usize, Option<Ticket>) {
        let messages = self.retained.read().matching(filter);
        let mut sent = 0;
        let mut ticket = None;
        for message in messages {
            if message.is_expired(now) {
                continue;
            }
            // The ACL allows the filter only in part: each retained topic is checked.
            if let Some(username) = acl_check
                && !self
                    .security
                    .can_read(username, &session.client_id, &message.topic)
            {
                self.metrics
                    .dropped_acl_total
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut target = [Target {
                session,
                group: None,
                granted,
                // Retained messages sent for a new subscription keep RETAIN set. [MQTT-3.3.1-8]
                retain_as_published: true,
                subscription_ids: subscription_id.into_iter().collect(),
                stored: 0,
            }];
            if let Some(p) = &self.persist
                && message.qos != QoS::AtMostOnce
            {
                let mut routed = Routed::default();
                if !self.store_deliveries(p, &message, &mut target, &mut routed) {
                    continue;
                }
                ticket = routed.ticket.or(ticket);
            }
            let [t] = target;
            let delivery = Delivery {
                qos: message.qos.min(t.granted),
                retain: true,
                subscription_ids: t.subscription_ids,
                stored: t.stored,
                message,
            };
            if matches!(
                self.push(session, delivery),
                PushOutcome::Queued
                    | PushOutcome::QueuedDroppedOldest
                    | PushOutcome::QueuedOverLimit
            ) {
                sent += 1;
            }
        }
        (sent, ticket)
    }

    /// Publishes a will message (its topic was validated at CONNECT) if the ACL in force still
    /// lets `username` write it: a rule revoked since CONNECT holds back the will too.
    pub fn publish_will(
        &self,
        will: &LastWill,
        origin: SessionId,
        client_id: &str,
        username: Option<&str>,
    ) {
        if !self.security.can_publish(username, client_id, &will.topic) {
            self.metrics
                .publishes_denied_total
                .fetch_add(1, Ordering::Relaxed);
            info!(client_id, topic = %will.topic, "will withheld: the ACL no longer allows its topic");
            return;
        }
        let message = Arc::new(Message::from_will(will, origin, Instant::now()));
        let n = self.route(&message).receivers;
        self.metrics
            .wills_published_total
            .fetch_add(1, Ordering::Relaxed);
        debug!(client_id, topic = %will.topic, receivers = n, "will published");
    }

    /// Removes a session's subscriptions from the trie.
    pub fn unsubscribe_all(&self, session: SessionId, filters: &[ByteString]) {
        if filters.is_empty() {
            return;
        }
        let mut router = self.router.write();
        for raw in filters {
            if let Ok(parsed) = topic::parse_filter(raw, usize::MAX) {
                router.unsubscribe(session, parsed.filter, parsed.group);
            }
        }
    }

    /// The claim this node holds `session` under, for a fenced store write.
    pub(crate) fn owner_of(&self, session: &Session) -> Option<(u64, String)> {
        Some((session.claimed(), self.config.node_id.clone()))
    }

    /// Writes the record of a persistent session whose connection has ended.
    pub fn store_parked_session(&self, session: &Session) -> Option<Ticket> {
        let p = self.persist.as_ref()?;
        if !session.is_durable() {
            return None;
        }
        let username = session.username();
        let by_password = session.password_user().is_some();
        let record = session.with_parked(|v| {
            p.session_record(
                &session.client_id,
                v.expiry_secs,
                v.disconnected_ms,
                username.as_ref(),
                by_password,
                v.subscriptions,
                v.will,
                session.claimed(),
            )
        })?;
        Some(p.put_session(record))
    }

    /// Ends a session if it is still idle at `generation`: subscriptions out of the trie,
    /// registry entry gone, pending will published. Returns true when it ended.
    pub fn end_session(&self, session: &Arc<Session>, generation: u64) -> bool {
        let Some((subs, will)) = session.end_if_idle(generation) else {
            return false;
        };
        if let Some(p) = &self.persist
            && session.is_durable()
        {
            session.set_durable(false);
            p.delete_session(&session.client_id, self.owner_of(session));
        }
        self.unsubscribe_all(session.id, &subs);
        self.sessions.remove(session);
        if let Some(will) = will {
            let username = session.username();
            self.publish_will(&will, session.id, &session.client_id, username.as_deref());
        }
        true
    }

    /// Arms the timers of a session whose connection just ended: the will delay and the
    /// session expiry. Both check `generation` so that a reconnect cancels them.
    pub fn schedule_after_disconnect(
        self: &Arc<Self>,
        session: Arc<Session>,
        generation: u64,
        will_delay: Option<u32>,
        expiry_secs: u32,
    ) {
        let Some(token) = session.timer_token(generation) else {
            return;
        };
        if let Some(delay) = will_delay
            && delay < expiry_secs
        {
            let broker = self.clone();
            let session = session.clone();
            self.spawn_timer(
                Duration::from_secs(u64::from(delay)),
                token.clone(),
                move || {
                    if let Some(will) = session.take_due_will(generation) {
                        let username = session.username();
                        broker.publish_will(
                            &will,
                            session.id,
                            &session.client_id,
                            username.as_deref(),
                        );
                        // Published: a restart must not publish it again.
                        broker.store_parked_session(&session);
                    }
                },
            );
        }
        if expiry_secs == crate::session::NEVER_EXPIRES {
            return;
        }
        let broker = self.clone();
        self.spawn_timer(
            Duration::from_secs(u64::from(expiry_secs)),
            token,
            move || {
                if broker.end_session(&session, generation) {
                    broker
                        .metrics
                        .sessions_expired_total
                        .fetch_add(1, Ordering::Relaxed);
                    info!(client_id = %session.client_id, "session expired");
                }
            },
        );
    }

    fn spawn_timer(
        &self,
        after: Duration,
        cancel: CancellationToken,
        f: impl FnOnce() + Send + 'static,
    ) {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => f(),
                _ = cancel.cancelled() => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
