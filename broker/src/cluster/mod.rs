//! Clustering: membership and one link per peer.
//!
//! Every node listens on `cluster_listen` and dials every address in `peers` (the same list on
//! every node: a node recognises its own address by the node id in the handshake and stops
//! dialing it). Both sides of a link send a [`frame::Hello`] first (cluster name, node id,
//! boot epoch); a link to another cluster, or to itself, is closed. When two nodes dial each
//! other at once the link dialed by the node with the smaller id is kept, on both sides.
//! Links send heartbeats each [`link::HEARTBEAT`] and are closed after
//! [`link::DEAD_AFTER`] of silence; dialers reconnect with backoff.
//!
//! What rides on the links (routes, forwarded messages, ownership) builds on this module.

pub mod acks;
pub mod adoption;
pub mod discovery;
pub mod frame;
pub mod handover;
pub mod link;
pub mod ownership;
pub mod reroute;
pub mod restart;
pub mod retained;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ahash::AHashMap;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::router::routes::RemoteRoutes;
use frame::Frame;

/// Forwarded messages queued for one peer above which more are dropped (and counted): a last
/// resort, publishers are paused long before (see [`FORWARD_HIGH`]).
pub const FORWARD_QUEUE: usize = 65_536;
/// Forwarded messages queued for one peer from which each publisher that adds one is paused
/// until the queue is back under [`FORWARD_LOW`] (backpressure across nodes).
pub const FORWARD_HIGH: usize = 8_192;
/// See [`FORWARD_HIGH`].
pub const FORWARD_LOW: usize = 4_096;
/// Remembered claims of client ids by other nodes before old ones are pruned.
const CLAIMS_KEPT: usize = 10_000;
/// How long a claim is worth remembering.
const CLAIM_MEMORY_MS: u64 = 10_000;

/// The forwarded messages waiting on one link.
#[derive(Debug, Default)]
pub struct LinkQueue {
    count: AtomicUsize,
    drained: tokio::sync::Notify,
}

impl LinkQueue {
    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One message taken off to be written.
    pub fn taken(&self) {
        if self.count.fetch_sub(1, Ordering::Relaxed) == FORWARD_LOW {
            self.drained.notify_waiters();
        }
    }

    /// Waits until fewer than [`FORWARD_LOW`] wait, or `limit` passes.
    pub async fn wait_drained(&self, limit: std::time::Duration) {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.len() < FORWARD_LOW {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = &mut deadline => return,
            }
        }
    }
}

/// What [`Cluster::forward`] did.
#[derive(Debug, Clone)]
pub enum Forwarded {
    /// Queued for the peer.
    Sent,
    /// Queued, and the peer's queue is long: the publisher should wait on it.
    Congested(Arc<LinkQueue>),
    /// Not queued: the peer is not linked or its queue is full.
    Dropped,
}

/// A forwarded message the peer is to acknowledge: its number in the peer's ledger.
#[derive(Debug, Clone)]
pub struct AckWait {
    /// The peer's ledger.
    pub ledger: Arc<acks::Ledger>,
    /// The message's number in it.
    pub n: u64,
}

impl AckWait {
    /// True once the peer acknowledged it (or it was given up).
    pub fn is_done(&self) -> bool {
        self.ledger.is_acked(self.n)
    }
}

/// How long a peer at level 5 that went down keeps its routes (what is forwarded to it waits
/// in its ledger, and the publishers' acknowledgements with it) when nobody adopts its
/// sessions: long enough for a cut cable or a stalled process to come back, short enough that
/// a node gone for good does not hold publishers long.
pub const KEPT_WHILE_DOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// A live link to a peer, as the registry holds it.
#[derive(Debug, Clone)]
pub struct PeerLink {
    /// Unique per link, to tell a replaced link from the current one.
    pub link_id: u64,
    /// The peer's boot epoch.
    pub epoch: u64,
    /// The protocol level both ends speak (the lower of the two; see `frame::LEVEL`).
    pub level: u8,
    /// The node id of the side that dialed (decides between two links of one pair).
    pub dialer: String,
    /// The peer (`host:port` from `peers`) we dialed, when we did.
    pub dialed: Option<String>,
    /// Frames to send. Unbounded for route changes (which must never be lost); forwarded
    /// messages are bounded by `queued`.
    pub tx: mpsc::UnboundedSender<Frame>,
    /// Forwarded messages waiting in `tx`.
    pub queued: Arc<LinkQueue>,
    /// Cancelled to close this link.
    pub close: CancellationToken,
    /// The peer's ledger of forwarded messages not acknowledged (level 5 and up; set by
    /// [`Cluster::register`]).
    pub ledger: Option<Arc<acks::Ledger>>,
}

/// What a peer looks like from here, for metrics and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The label: the configured address, or the node id of a peer that dialed us.
    pub peer: String,
    /// A link is up.
    pub up: bool,
}

/// This node's view of the cluster.
pub struct Cluster {
    /// This node's id.
    pub node_id: String,
    /// The cluster's name.
    pub name: String,
    /// This node's boot epoch.
    pub epoch: u64,
    /// Peers, `host:port`: the configured list (own address included, as in the shared
    /// list) and what `peers_dns` resolves to.
    peers: parking_lot::RwLock<Vec<String>>,
    links: Mutex<AHashMap<String, PeerLink>>,
    /// The filters each peer announced.
    pub remote: parking_lot::RwLock<RemoteRoutes>,
    /// Messages forwarded to each peer, and dropped because its queue was full.
    forwarded: Mutex<AHashMap<String, (u64, u64)>>,
    /// The newest claim of each client id by another node: (ms, node id). Kept a while so
    /// that a connection still attaching here when the claim came can lose to it after.
    claims: Mutex<AHashMap<String, (u64, String)>>,
    /// Node id last seen at each dialed peer address.
    seen_at: Mutex<AHashMap<String, String>>,
    next_link: AtomicU64,
    /// Configured peers that could not be reached at least once.
    unreachable: Mutex<ahash::AHashSet<String>>,
    /// `peers_dns` is set and has not been resolved yet.
    awaiting_dns: std::sync::atomic::AtomicBool,
    /// Sessions this node asked its peers for.
    pub asks: handover::Asks,
    /// Sessions moving to or from this node.
    pub moves: handover::Moves,
    /// Peers that said they are draining (until their link goes down).
    draining: Mutex<ahash::AHashSet<String>>,
    /// The links' TLS, when mutual TLS is configured (reloaded with the other files).
    link_tls: std::sync::OnceLock<Arc<link::LinkTls>>,
    /// What each peer (of level 5 and up) has not acknowledged, by node id.
    ledgers: Mutex<AHashMap<String, Arc<acks::Ledger>>>,
    /// What this node handled of each peer's forwarded messages: (its epoch, the count).
    handled: Mutex<AHashMap<String, (u64, Arc<acks::Handled>)>>,
    /// Peers down whose routes are kept (see [`KEPT_WHILE_DOWN`]).
    kept: Mutex<ahash::AHashSet<String>>,
    /// `kept` is not empty (read on every forward).
    any_kept: std::sync::atomic::AtomicBool,
    /// Peers that said they adopted their share of a departed node's sessions, by departed
    /// node (`Frame::Adopted`).
    adopted: Mutex<AHashMap<String, ahash::AHashSet<String>>>,
    /// Wakes the waiters of [`Cluster::wait_adopted`].
    adopted_changed: tokio::sync::Notify,
    /// Messages sent to the adopters of each departed peer, and those given up.
    rerouted: Mutex<AHashMap<String, u64>>,
    /// This node lost the majority since it last checked its sessions' owners: the others may
    /// have adopted them (`ownership::recheck_owners`).
    owners_suspect: std::sync::atomic::AtomicBool,
    /// One recheck of the owners at a time: links coming up together wait for the first.
    pub(crate) rechecking: tokio::sync::Mutex<()>,
    /// The ledgers of peers' previous lives (they restarted) that still hold frames, until
    /// the peer says how far that life committed (`restart.rs`).
    orphans: Mutex<AHashMap<String, Arc<acks::Ledger>>>,
    /// This node's previous life's forward marks, per sender, read from its store at start.
    previous_marks: std::sync::OnceLock<AHashMap<String, frame::PreviousMark>>,
    /// Rereads of the retained index from a shared store after a link came up.
    pub(crate) retained_rereads: retained::Rereads,
}

/// What registering a new link decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The new link is the peer's link now (an older one, if any, was closed).
    Kept,
    /// Another link of this pair wins the tie-break: close the new one.
    Duplicate,
}

impl Cluster {
    /// A node with no links yet.
    pub fn new(node_id: String, name: String, epoch: u64, peers: Vec<String>) -> Arc<Cluster> {
        Arc::new(Cluster {
            node_id,
            name,
            epoch,
            peers: parking_lot::RwLock::new(peers),
            links: Mutex::new(AHashMap::new()),
            remote: parking_lot::RwLock::new(RemoteRoutes::default()),
            forwarded: Mutex::new(AHashMap::new()),
            claims: Mutex::new(AHashMap::new()),
            seen_at: Mutex::new(AHashMap::new()),
            next_link: AtomicU64::new(1),
            unreachable: Mutex::new(ahash::AHashSet::new()),
            awaiting_dns: std::sync::atomic::AtomicBool::new(false),
            owners_suspect: std::sync::atomic::AtomicBool::new(false),
            rechecking: tokio::sync::Mutex::new(()),
            asks: handover::Asks::default(),
            moves: handover::Moves::default(),
            draining: Mutex::new(ahash::AHashSet::new()),
            link_tls: std::sync::OnceLock::new(),
            ledgers: Mutex::new(AHashMap::new()),
            handled: Mutex::new(AHashMap::new()),
            kept: Mutex::new(ahash::AHashSet::new()),
            any_kept: std::sync::atomic::AtomicBool::new(false),
            adopted: Mutex::new(AHashMap::new()),
            adopted_changed: tokio::sync::Notify::new(),
            rerouted: Mutex::new(AHashMap::new()),
            orphans: Mutex::new(AHashMap::new()),
            previous_marks: std::sync::OnceLock::new(),
            retained_rereads: retained::Rereads::default(),
        })
    }

    /// Sets this node's previous life's forward marks (once, before any link is up).
    pub fn set_previous_marks(&self, marks: AHashMap<String, frame::PreviousMark>) {
        let _ = self.previous_marks.set(marks);
    }

    /// This node's previous life's forward mark of `peer`'s frames, if its store has one.
    pub fn previous_mark(&self, peer: &str) -> Option<frame::PreviousMark> {
        self.previous_marks.get()?.get(peer).copied()
    }

    /// The ledger of `peer`'s previous life, if it still holds frames.
    pub fn orphan(&self, peer: &str) -> Option<Arc<acks::Ledger>> {
        self.orphans.lock().get(peer).cloned()
    }

    /// Takes the ledger of `peer`'s previous life, if it is `ledger` (any, for `None`).
    pub fn take_orphan(
        &self,
        peer: &str,
        ledger: Option<&Arc<acks::Ledger>>,
    ) -> Option<Arc<acks::Ledger>> {
        let mut orphans = self.orphans.lock();
        let ours = orphans
            .get(peer)
            .is_some_and(|o| ledger.is_none_or(|l| Arc::ptr_eq(o, l)));
        if ours { orphans.remove(peer) } else { None }
    }

    /// `peer` said it adopted its share of `departed`'s sessions.
    pub fn note_adopted(&self, peer: &str, departed: &str) {
        self.adopted
            .lock()
            .entry(departed.to_owned())
            .or_default()
            .insert(peer.to_owned());
        self.adopted_changed.notify_waiters();
    }

    /// Waits until every linked peer that adopts (level 6 and up, not draining) has said it
    /// adopted its share of `departed`'s sessions, or `limit` passed. True when all did.
    pub async fn wait_adopted(&self, departed: &str, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.adopted_changed.notified();
            // One lock at a time (`register` takes `adopted` under `links`).
            let said = self
                .adopted
                .lock()
                .get(departed)
                .cloned()
                .unwrap_or_default();
            let missing = self
                .peers_at(reroute::REROUTE_LEVEL)
                .into_iter()
                .any(|p| p != departed && !self.is_draining(&p) && !said.contains(&p));
            if !missing {
                return true;
            }
            // Links come and go without a notice: look again now and then.
            let tick =
                (tokio::time::Instant::now() + std::time::Duration::from_millis(100)).min(deadline);
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(tick) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Peers linked at `level` or above.
    pub fn peers_at(&self, level: u8) -> Vec<String> {
        let mut v: Vec<String> = self
            .links
            .lock()
            .iter()
            .filter(|(_, l)| !l.close.is_cancelled() && l.level >= level)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Sends `frame` to every peer linked at `level` or above (a frame type of that level).
    pub fn broadcast_at(&self, level: u8, frame: &Frame) {
        for peer in self.peers_at(level) {
            self.send_to(&peer, frame.clone());
        }
    }

    /// Stops keeping `departed`'s routes: nothing more is forwarded to it or waits for it.
    pub fn forget_routes(&self, departed: &str) {
        self.unkeep(departed);
        self.remote.write().drop_peer(departed);
    }

    /// Counts `n` messages of `departed` sent to its adopters.
    pub fn count_rerouted(&self, departed: &str, n: usize) {
        if n > 0 {
            *self.rerouted.lock().entry(departed.to_owned()).or_insert(0) += n as u64;
        }
    }

    /// (departed peer, messages sent to its adopters), for the metrics.
    pub fn rerouted_counts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .rerouted
            .lock()
            .iter()
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// Notes that a configured peer could not be reached (or refused the link).
    pub fn note_unreachable(&self, addr: &str) {
        self.unreachable.lock().insert(addr.to_owned());
    }

    /// True once every configured peer is this node, linked, or was found unreachable: the
    /// node has joined what it could of the cluster (readiness waits for it, so that clients
    /// come once the routes of the reachable peers are known).
    pub fn joined(&self) -> bool {
        if self.awaiting_dns.load(Ordering::Relaxed) {
            return false;
        }
        let unreachable = self.unreachable.lock();
        self.peers.read().iter().all(|addr| {
            unreachable.contains(addr)
                || self
                    .node_at(addr)
                    .is_some_and(|id| id == self.node_id || self.is_up(&id))
        })
    }

    /// Peers come from DNS too: not joined before the first answer ([`Cluster::dns_resolved`]).
    pub fn expect_dns(&self) {
        self.awaiting_dns.store(true, Ordering::Relaxed);
    }

    /// `peers_dns` answered (or failed) once.
    pub fn dns_resolved(&self) {
        self.awaiting_dns.store(false, Ordering::Relaxed);
    }

    /// The peers now.
    pub fn peers(&self) -> Vec<String> {
        self.peers.read().clone()
    }

    /// Adds a peer (found by DNS); false when it was known.
    pub fn add_peer(&self, addr: &str) -> bool {
        let mut peers = self.peers.write();
        if peers.iter().any(|p| p == addr) {
            return false;
        }
        peers.push(addr.to_owned());
        true
    }

    /// Removes a peer (gone from DNS).
    pub fn remove_peer(&self, addr: &str) {
        self.peers.write().retain(|p| p != addr);
        self.unreachable.lock().remove(addr);
    }

    /// A fresh link id.
    pub fn next_link_id(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes which node answered at a dialed address.
    pub fn note_seen(&self, addr: &str, node_id: &str) {
        self.seen_at
            .lock()
            .insert(addr.to_owned(), node_id.to_owned());
    }

    /// Registers a link to `peer` after its handshake. Of two live links between the same
    /// pair, the one dialed by the smaller node id is kept; both nodes decide the same way. A
    /// link from the same dialer, or from a peer with a new epoch, replaces the old one (the
    /// dialer would not dial again if it thought the old one alive).
    pub fn register(&self, peer: &str, mut link: PeerLink) -> Registered {
        if let Some(addr) = &link.dialed {
            self.note_seen(addr, peer);
        }
        let mut links = self.links.lock();
        if let Some(old) = links.get(peer)
            && !old.close.is_cancelled()
            && old.epoch == link.epoch
            && old.dialer < link.dialer
        {
            return Registered::Duplicate;
        }
        self.attach_ledger(peer, &mut link);
        // Back: a later departure is a new one.
        self.adopted.lock().remove(peer);
        if let Some(old) = links.insert(peer.to_owned(), link) {
            old.close.cancel();
        }
        drop(links);
        self.unkeep(peer);
        Registered::Kept
    }

    /// Gives a new link of level 5 its peer's ledger and sends on it first what the ledger
    /// holds (under the `links` lock, so nothing forwarded meanwhile goes ahead of it). A peer
    /// with a new epoch restarted: what its old life did not acknowledge is given up.
    fn attach_ledger(&self, peer: &str, link: &mut PeerLink) {
        let mut ledgers = self.ledgers.lock();
        let old = ledgers.get(peer).cloned();
        if link.level < acks::ACK_LEVEL {
            if let Some(old) = old {
                ledgers.remove(peer);
                self.count_given_up(peer, old.settle());
            }
            return;
        }
        let ledger = match old {
            Some(l) if l.epoch == link.epoch => l,
            old => {
                match old {
                    // It restarted: it says how far its previous life committed, and is sent
                    // the rest (`restart.rs`); the publishers wait for that a little longer.
                    Some(old) if link.level >= restart::RESTART_LEVEL && old.holds() => {
                        if let Some(older) = self.orphans.lock().insert(peer.to_owned(), old) {
                            self.count_given_up(peer, older.settle());
                        }
                    }
                    Some(old) => self.count_given_up(peer, old.settle()),
                    None => {}
                }
                let l = Arc::new(acks::Ledger::new(link.epoch));
                ledgers.insert(peer.to_owned(), l.clone());
                l
            }
        };
        let resent = ledger.resume(link.link_id, |f| {
            // Counted before it is sent: the writer counts it off once written.
            let publish = f.is_forwarded();
            if publish {
                link.queued.count.fetch_add(1, Ordering::Relaxed);
            }
            let sent = link.tx.send(f).is_ok();
            if !sent && publish {
                link.queued.count.fetch_sub(1, Ordering::Relaxed);
            }
            sent
        });
        if resent > 0 {
            tracing::info!(
                peer,
                messages = resent,
                "forwarded messages not acknowledged sent again"
            );
        }
        link.ledger = Some(ledger);
    }

    /// Forgets the link `link_id` to `peer` if it is still the registered one. The routes the
    /// peer announced on it go too, unless the link was of level 5 and the peer was not
    /// draining: then they stay, and what is forwarded to the peer waits in its ledger, until
    /// it comes back or [`Cluster::give_up`]. Returns true when the routes were kept.
    pub fn unregister(&self, peer: &str, link_id: u64) -> bool {
        let removed = {
            let mut links = self.links.lock();
            let ours = links.get(peer).is_some_and(|l| l.link_id == link_id);
            if ours { links.remove(peer) } else { None }
        };
        let Some(removed) = removed else {
            return false;
        };
        // A node that drained is leaving: it took its sessions elsewhere, and it comes back,
        // if at all, as a new boot epoch.
        let drained = self.draining.lock().remove(peer);
        self.asks.drop_parts(peer);
        if let (Some(ledger), true) = (&removed.ledger, drained) {
            self.remote.write().drop_peer(peer);
            self.count_given_up(peer, ledger.settle());
            return false;
        }
        if removed.ledger.is_some() {
            let mut kept = self.kept.lock();
            kept.insert(peer.to_owned());
            self.any_kept.store(true, Ordering::Relaxed);
            return true;
        }
        // Not under `links`: elsewhere `remote` is taken first, then `links`.
        self.remote.write().drop_peer(peer);
        false
    }

    /// `peer`, down since its link `link_id` went, is not coming back in time and nobody
    /// adopted its sessions: its routes go and what waits for it is given up (counted as
    /// dropped), so that its publishers' acknowledgements go out, and kept, for its return
    /// ([`acks::Ledger::give_up`]). Nothing if it came back meanwhile. Returns how many
    /// messages were given up.
    pub fn give_up(&self, peer: &str, link_id: u64) -> usize {
        if self.is_up(peer) {
            return 0;
        }
        let ledger = self.ledgers.lock().get(peer).cloned();
        let Some(ledger) = ledger.filter(|l| l.is_link(link_id)) else {
            return 0;
        };
        self.unkeep(peer);
        self.remote.write().drop_peer(peer);
        // Kept for its return, which may still come (`Ledger::give_up`).
        let given_up = ledger.give_up(std::time::Instant::now());
        self.count_given_up(peer, given_up);
        given_up
    }

    fn unkeep(&self, peer: &str) {
        let mut kept = self.kept.lock();
        if kept.remove(peer) {
            self.any_kept.store(!kept.is_empty(), Ordering::Relaxed);
        }
    }

    /// True when `peer` is down and its routes are kept.
    pub fn is_kept(&self, peer: &str) -> bool {
        self.any_kept.load(Ordering::Relaxed) && self.kept.lock().contains(peer)
    }

    /// True when some peer is down with its routes kept (a shared group then prefers members
    /// on linked nodes).
    pub fn any_kept(&self) -> bool {
        self.any_kept.load(Ordering::Relaxed)
    }

    pub(crate) fn count_given_up(&self, peer: &str, n: usize) {
        if n == 0 {
            return;
        }
        tracing::warn!(
            peer,
            messages = n,
            "forwarded messages not acknowledged given up"
        );
        let mut counts = self.forwarded.lock();
        let entry = counts.entry(peer.to_owned()).or_insert((0, 0));
        entry.1 += n as u64;
    }

    /// What this node handled of `peer`'s forwarded messages in its boot epoch `epoch`
    /// (a new epoch starts from zero).
    pub fn handled(&self, peer: &str, epoch: u64) -> Arc<acks::Handled> {
        let mut handled = self.handled.lock();
        match handled.get(peer) {
            Some((e, h)) if *e == epoch => h.clone(),
            _ => {
                let h = Arc::new(acks::Handled::default());
                handled.insert(peer.to_owned(), (epoch, h.clone()));
                h
            }
        }
    }

    /// The ledger of `peer`, when it has one.
    pub fn ledger(&self, peer: &str) -> Option<Arc<acks::Ledger>> {
        self.ledgers.lock().get(peer).cloned()
    }

    /// Forwarded messages not acknowledged, per peer with a ledger.
    pub fn unacked(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .ledgers
            .lock()
            .iter()
            .map(|(p, l)| (p.clone(), l.unacked()))
            .collect();
        v.sort();
        v
    }

    /// Sends `frame` to every linked peer (route changes).
    pub fn broadcast(&self, frame: &Frame) {
        for link in self.links.lock().values() {
            let _ = link.tx.send(frame.clone());
        }
    }

    /// The protocol level of the link to `peer` (`frame::FIRST_LEVEL` when not linked): a
    /// frame type newer than it must not be sent there.
    pub fn level(&self, peer: &str) -> u8 {
        self.links
            .lock()
            .get(peer)
            .map_or(frame::FIRST_LEVEL, |link| link.level)
    }

    /// Queues a control frame for `peer` (outside the forwarding budget). False when the peer
    /// is not linked.
    pub fn send_to(&self, peer: &str, frame: Frame) -> bool {
        let links = self.links.lock();
        links.get(peer).is_some_and(|link| {
            !link.close.is_cancelled() && link.tx.send(frame.for_level(link.level)).is_ok()
        })
    }

    /// Queues a forwarded message for `peer`. Dropped (and counted) only when the peer is not
    /// linked or its queue is full. On a link of level 5 the message is numbered in the peer's
    /// ledger (returned: the publisher's acknowledgement waits for it); a QoS 1/2 message for
    /// a peer down with its routes kept waits in the ledger alone.
    pub fn forward(&self, peer: &str, frame: Frame) -> (Forwarded, Option<AckWait>) {
        let result = {
            let links = self.links.lock();
            match links.get(peer) {
                Some(link) if link.queued.len() < FORWARD_QUEUE => {
                    // Counted before it is sent: the writer counts it off once written.
                    let n = link.queued.count.fetch_add(1, Ordering::Relaxed) + 1;
                    let taken = match &link.ledger {
                        Some(ledger) => ledger
                            .take_and_send(frame, FORWARD_QUEUE, |f| link.tx.send(f).is_ok())
                            .map(|n| {
                                Some(AckWait {
                                    ledger: ledger.clone(),
                                    n,
                                })
                            }),
                        None => link.tx.send(frame).is_ok().then_some(None),
                    };
                    match taken {
                        None => {
                            link.queued.count.fetch_sub(1, Ordering::Relaxed);
                            (Forwarded::Dropped, None)
                        }
                        Some(wait) if n >= FORWARD_HIGH => {
                            (Forwarded::Congested(link.queued.clone()), wait)
                        }
                        Some(wait) => (Forwarded::Sent, wait),
                    }
                }
                Some(_) => (Forwarded::Dropped, None),
                None => {
                    drop(links);
                    self.hold_for_down(peer, &frame)
                }
            }
        };
        let mut counts = self.forwarded.lock();
        // Allocates the peer's name once, not per message.
        if !counts.contains_key(peer) {
            counts.insert(peer.to_owned(), (0, 0));
        }
        let Some(entry) = counts.get_mut(peer) else {
            return result;
        };
        if matches!(result.0, Forwarded::Dropped) {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
        result
    }

    /// A message for a peer that is down: kept in its ledger when its routes are kept and the
    /// message is QoS 1 or 2 (QoS 0 promises nothing, and goes).
    fn hold_for_down(&self, peer: &str, frame: &Frame) -> (Forwarded, Option<AckWait>) {
        let qos = match frame {
            Frame::Publish { message, .. } | Frame::PublishAdopted { message, .. } => message.qos,
            _ => 0,
        };
        if qos == 0 || !self.is_kept(peer) {
            return (Forwarded::Dropped, None);
        }
        let Some(ledger) = self.ledger(peer) else {
            return (Forwarded::Dropped, None);
        };
        match ledger.take(frame, FORWARD_QUEUE) {
            Some(n) => (Forwarded::Sent, Some(AckWait { ledger, n })),
            None => (Forwarded::Dropped, None),
        }
    }

    /// Records another node's claim of `client_id`; returns the newest claim known.
    pub fn note_claim(&self, client_id: &str, at_ms: u64, node: &str) -> (u64, String) {
        let mut claims = self.claims.lock();
        if claims.len() >= CLAIMS_KEPT {
            // Claims settle within a link round trip: old ones can go.
            let horizon = at_ms.saturating_sub(CLAIM_MEMORY_MS);
            claims.retain(|_, (at, _)| *at >= horizon);
        }
        let entry = claims
            .entry(client_id.to_owned())
            .or_insert_with(|| (at_ms, node.to_owned()));
        if (at_ms, node) > (entry.0, entry.1.as_str()) {
            *entry = (at_ms, node.to_owned());
        }
        entry.clone()
    }

    /// The newest claim of `client_id` by another node, if one is remembered.
    pub fn claim_of(&self, client_id: &str) -> Option<(u64, String)> {
        self.claims.lock().get(client_id).cloned()
    }

    /// (peer, forwarded, dropped) for every peer a message was ever forwarded to.
    pub fn forward_counts(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = self
            .forwarded
            .lock()
            .iter()
            .map(|(p, (f, d))| (p.clone(), *f, *d))
            .collect();
        v.sort();
        v
    }

    /// The node id last seen at a dialed address.
    pub fn node_at(&self, addr: &str) -> Option<String> {
        self.seen_at.lock().get(addr).cloned()
    }

    /// True while a link to `node_id` is up.
    pub fn is_up(&self, node_id: &str) -> bool {
        self.links
            .lock()
            .get(node_id)
            .is_some_and(|l| !l.close.is_cancelled())
    }

    /// Sets the links' TLS (at start).
    pub fn set_link_tls(&self, tls: Arc<link::LinkTls>) {
        let _ = self.link_tls.set(tls);
    }

    /// The links' TLS, when mutual TLS is configured.
    pub fn link_tls(&self) -> Option<&Arc<link::LinkTls>> {
        self.link_tls.get()
    }

    /// `peer` said it is draining.
    pub fn note_draining(&self, peer: &str) {
        self.draining.lock().insert(peer.to_owned());
    }

    /// True when `peer` said it is draining (and its link has not gone down since).
    pub fn is_draining(&self, peer: &str) -> bool {
        self.draining.lock().contains(peer)
    }

    /// True when this node and the peers linked to it are more than half of the cluster it
    /// knows of (the configured or resolved peer addresses, itself included).
    pub fn has_majority(&self) -> bool {
        let known = self.peers.read().len().max(self.links.lock().len() + 1);
        (self.up_peers().len() + 1) * 2 > known
    }

    /// Notes that this node may have been cut off long enough for the others to adopt its
    /// sessions.
    pub fn suspect_owners(&self) {
        self.owners_suspect.store(true, Ordering::SeqCst);
    }

    /// True once after [`Self::suspect_owners`]: the caller checks the owners now.
    pub(crate) fn take_owners_suspect(&self) -> bool {
        self.owners_suspect.swap(false, Ordering::SeqCst)
    }

    /// Node ids with a link up.
    pub fn up_peers(&self) -> Vec<String> {
        self.peers_at(0)
    }

    /// Every configured peer (by address, this node's own left out once known) and every
    /// linked node that is not configured here (by node id), with its link state.
    pub fn status(&self) -> Vec<PeerStatus> {
        let seen = self.seen_at.lock().clone();
        let up = self.up_peers();
        let mut out = Vec::new();
        let mut covered = Vec::new();
        for addr in self.peers.read().iter() {
            let id = seen.get(addr);
            if id.is_some_and(|id| *id == self.node_id) {
                continue;
            }
            if let Some(id) = id {
                covered.push(id.clone());
            }
            out.push(PeerStatus {
                peer: addr.clone(),
                up: id.is_some_and(|id| up.contains(id)),
            });
        }
        for id in up {
            if !covered.contains(&id) {
                out.push(PeerStatus { peer: id, up: true });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(cluster: &Cluster, dialer: &str, epoch: u64) -> PeerLink {
        let (tx, _rx) = mpsc::unbounded_channel();
        PeerLink {
            link_id: cluster.next_link_id(),
            epoch,
            level: frame::LEVEL,
            dialer: dialer.into(),
            dialed: None,
            tx,
            queued: Arc::new(LinkQueue::default()),
            close: CancellationToken::new(),
            ledger: None,
        }
    }

    #[test]
    fn of_two_links_the_smaller_dialer_wins_whatever_the_order() {
        for first_is_a in [true, false] {
            let c = Cluster::new("b".into(), "x".into(), 1, vec![]);
            let by_a = link(&c, "a", 7);
            let by_b = link(&c, "b", 7);
            let (first, second) = if first_is_a {
                (by_a.clone(), by_b.clone())
            } else {
                (by_b.clone(), by_a.clone())
            };
            let r1 = c.register("a", first);
            let r2 = c.register("a", second);
            assert_eq!(r1, Registered::Kept);
            if first_is_a {
                assert_eq!(r2, Registered::Duplicate);
            } else {
                assert_eq!(r2, Registered::Kept);
                assert!(by_b.close.is_cancelled(), "the loser is closed");
            }
            assert!(!by_a.close.is_cancelled());
            assert!(c.is_up("a"));
        }
    }

    #[test]
    fn a_restarted_peer_replaces_its_old_link() {
        let c = Cluster::new("b".into(), "x".into(), 1, vec![]);
        let old = link(&c, "a", 1);
        assert_eq!(c.register("a", old.clone()), Registered::Kept);
        let new = link(&c, "b", 2);
        assert_eq!(c.register("a", new.clone()), Registered::Kept);
        assert!(old.close.is_cancelled());
        // The old link's end does not unregister the new one.
        c.unregister("a", old.link_id);
        assert!(c.is_up("a"));
        c.unregister("a", new.link_id);
        assert!(!c.is_up("a"));
    }

    #[test]
    fn status_lists_configured_peers_by_address_and_skips_this_node() {
        let (me, other) = ("n1.headless:4370".to_owned(), "n2.headless:4370".to_owned());
        let c = Cluster::new("n1".into(), "x".into(), 1, vec![me.clone(), other.clone()]);
        c.note_seen(&me, "n1");
        assert_eq!(
            c.status(),
            vec![PeerStatus {
                peer: other.clone(),
                up: false
            }]
        );
        let mut l = link(&c, "n1", 5);
        l.dialed = Some(other.clone());
        c.register("n2", l);
        assert_eq!(
            c.status(),
            vec![PeerStatus {
                peer: other,
                up: true
            }]
        );
    }

    #[test]
    fn joined_once_every_peer_is_this_node_linked_or_unreachable() {
        let peers = vec!["a:1".to_owned(), "b:1".to_owned(), "c:1".to_owned()];
        let c = Cluster::new("na".into(), "x".into(), 1, peers);
        assert!(!c.joined());
        c.note_seen("a:1", "na");
        assert!(!c.joined());
        let mut l = link(&c, "na", 3);
        l.dialed = Some("b:1".into());
        c.register("nb", l);
        assert!(!c.joined(), "c:1 not tried yet");
        c.note_unreachable("c:1");
        assert!(c.joined());
        // Linked but not yet matched to its address does not count.
        let c2 = Cluster::new("na".into(), "x".into(), 1, vec!["b:1".to_owned()]);
        c2.register("nb", link(&c2, "nb", 3));
        assert!(!c2.joined());
    }
}
