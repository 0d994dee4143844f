//! Sessions: per client id, what outlives a connection.
//!
//! A [`Session`] is shared (`Arc`) between the registry, the subscription trie and publishing
//! connections. Its pending [`queue::Queue`] is the one place where publishers leave deliveries,
//! online or offline. Its [`SessionState`] (subscriptions and QoS 1/2 state) is owned by the
//! connection while one is attached, so the connection touches it without locks, and handed
//! back to the session when the connection ends.

pub mod inflight;
pub mod queue;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytestring::ByteString;
use parking_lot::Mutex;
use rookery_codec::{LastWill, QoS};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::message::Delivery;
use crate::router::trie::{SessionId, Subscriber, Subscription};
use inflight::{Incoming, Outgoing};
use queue::{Pushed, Queue, QueueLimits};

/// Session Expiry Interval meaning "never expires" (MQTT 5.0 section 3.1.2.11.2).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// What a connection owns while attached and hands back when it ends.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Subscriptions by the filter as the client sent it (including any `$share/group/`).
    pub subscriptions: AHashMap<ByteString, Subscription>,
    /// Outgoing QoS 1/2 in flight.
    pub outgoing: Outgoing,
    /// Incoming QoS 2 awaiting PUBREL.
    pub incoming: Incoming,
}

/// Messages the broker sends a connection's task.
#[derive(Debug)]
pub enum Control {
    /// Another connection with the same client id arrived: close (v5 reason 0x8E), hand the
    /// session back and answer on `done`. `resumes` tells whether the newcomer keeps the session.
    TakeOver {
        /// The new connection keeps the session (Clean Start 0).
        resumes: bool,
        /// No new connection: the cluster moved the session to another node, which keeps
        /// its will (an adoption across a partition); the will is not published here.
        moved: bool,
        /// Answered once the session is handed back.
        done: oneshot::Sender<()>,
    },
    /// Close with this MQTT 5.0 reason code (for example 0x97 when the queue overflowed).
    Kick(u8),
    /// The node is draining: close, telling the client to use another server, and keep the
    /// will as a shutdown does.
    Drain,
    /// The broker is shutting down (v5 reason 0x8B). Sent to every session after the shutdown
    /// token is cancelled, so that a connection waits on one channel instead of two.
    Shutdown,
}

/// The live connection of a session.
#[derive(Debug)]
struct Attached {
    /// Taken by the first control message: one is all a closing connection needs.
    control: Option<oneshot::Sender<Control>>,
    peer: SocketAddr,
}

/// The identity a session belongs to.
#[derive(Debug, Default)]
struct Owner {
    /// Set once a connection has attached.
    known: bool,
    /// The username ACLs apply to.
    username: Option<ByteString>,
    /// The password file vouched for `username`.
    by_password: bool,
}

/// A parked session taken out for another node ([`Session::extract`]).
#[derive(Debug)]
pub struct Extracted {
    /// Subscriptions and QoS 1/2 state both ways.
    pub state: SessionState,
    /// The will still pending.
    pub will: Option<LastWill>,
    /// Session Expiry Interval.
    pub expiry_secs: u32,
    /// When its last connection ended.
    pub disconnected_ms: Option<u64>,
    /// The last attach generation.
    pub generation: u64,
    /// Deliveries waiting to be sent, in order.
    pub queued: Vec<Delivery>,
}

/// A will waiting for its delay (or the session's end) before it is published.
#[derive(Debug)]
pub struct PendingWill {
    /// The will.
    pub will: LastWill,
    /// The generation of the connection that left it.
    pub generation: u64,
}

#[derive(Debug)]
struct Inner {
    /// The state while no connection holds it. Boxed: an online session (the common case)
    /// keeps only a pointer's worth of room for it.
    state: Option<Box<SessionState>>,
    attached: Option<Attached>,
    generation: u64,
    expiry_secs: u32,
    removed: bool,
    /// Boxed for the same reason: rare, and large.
    pending_will: Option<Box<PendingWill>>,
    takeovers: Vec<Instant>,
    /// Cancels the will-delay and expiry timers of the last disconnect.
    timers: Option<CancellationToken>,
    /// When the last connection ended (wall clock, ms), for the stored record.
    disconnected_ms: Option<u64>,
}

/// What the stored record of a parked session is made of.
#[derive(Debug)]
pub struct ParkedView<'a> {
    /// Its subscriptions.
    pub subscriptions: &'a AHashMap<ByteString, Subscription>,
    /// Session Expiry Interval.
    pub expiry_secs: u32,
    /// When its connection ended.
    pub disconnected_ms: Option<u64>,
    /// The will still pending.
    pub will: Option<&'a LastWill>,
    /// The attach generation.
    pub generation: u64,
}

/// One session.
#[derive(Debug)]
pub struct Session {
    /// Unique id for this session object.
    pub id: SessionId,
    /// The client identifier.
    pub client_id: ByteString,
    online: AtomicBool,
    /// Its QoS 1/2 deliveries are written to the queue store (persistent, with a store).
    durable: AtomicBool,
    /// Moving between nodes: its deliveries are relayed or checked for duplicates (see
    /// `cluster::handover`).
    moving: AtomicBool,
    /// Restored from the store at start and not started clean since: what this node's
    /// previous life had not committed is for it (`cluster::restart`).
    previous_life: AtomicBool,
    queue: Mutex<Queue>,
    /// Woken when the queue goes from empty to non-empty.
    pub wake: Notify,
    /// Woken (all waiters) when the queue drops below its limit or the session goes offline:
    /// publishers paused by backpressure wait here.
    pub space: Notify,
    inner: Mutex<Inner>,
    /// Serialises CONNECTs for this client id.
    pub attach_lock: tokio::sync::Mutex<()>,
    /// Who the session belongs to: the identity of the connection that last attached.
    owner: Mutex<Owner>,
    takeovers_total: AtomicU64,
    /// When this node last gave the client id a connection (ms since the epoch), to settle
    /// claims from other nodes: the newest connection keeps the id.
    claimed_ms: AtomicU64,
}

/// What [`Session::push`] did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// Queued beyond the queue's limits: the publisher should pause until it drains.
    QueuedOverLimit,
    /// Queued; an older message was dropped for it.
    QueuedDroppedOldest,
    /// Dropped: queue full.
    DroppedFull,
    /// Dropped: QoS 0 for an offline session that does not queue QoS 0.
    DroppedOffline,
}

/// Delivery-time options every push needs.
#[derive(Debug, Clone, Copy)]
pub struct PushPolicy {
    /// Queue bounds.
    pub limits: QueueLimits,
    /// Queue QoS 0 messages for offline sessions.
    pub queue_qos0_offline: bool,
}

impl Subscriber for Arc<Session> {
    fn session_id(&self) -> SessionId {
        self.id
    }
    fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }
}

/// What a connection gets when it attaches.
#[derive(Debug)]
pub struct Attachment {
    /// The state it now owns.
    pub state: SessionState,
    /// Its generation, to hand back with the state.
    pub generation: u64,
    /// True when an existing session was resumed (CONNACK Session Present).
    pub session_present: bool,
    /// A will left by the previous connection that the attach made due: publish it now.
    pub will_to_publish: Option<LastWill>,
    /// Filters of subscriptions discarded by a clean start: remove them from the trie.
    pub discarded_subscriptions: Vec<ByteString>,
}

impl Session {
    fn new(id: SessionId, client_id: ByteString) -> Session {
        Session {
            id,
            client_id,
            online: AtomicBool::new(false),
            durable: AtomicBool::new(false),
            moving: AtomicBool::new(false),
            previous_life: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            space: Notify::new(),
            inner: Mutex::new(Inner {
                state: None,
                attached: None,
                generation: 0,
                expiry_secs: 0,
                removed: false,
                pending_will: None,
                takeovers: Vec::new(),
                timers: None,
                disconnected_ms: None,
            }),
            attach_lock: tokio::sync::Mutex::new(()),
            owner: Mutex::new(Owner::default()),
            takeovers_total: AtomicU64::new(0),
            claimed_ms: AtomicU64::new(0),
        }
    }

    /// Notes that a connection here took the client id at `ms`.
    pub fn set_claimed(&self, ms: u64) {
        self.claimed_ms.store(ms, Ordering::Relaxed);
    }

    /// When a connection here last took the client id.
    pub fn claimed(&self) -> u64 {
        self.claimed_ms.load(Ordering::Relaxed)
    }

    /// True while a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// True when QoS 1/2 deliveries to this session are stored.
    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Relaxed)
    }

    /// True while the session moves between nodes.
    pub fn is_moving(&self) -> bool {
        self.moving.load(Ordering::Relaxed)
    }

    /// True when the session was restored at start and has not been started clean since.
    pub fn is_from_previous_life(&self) -> bool {
        self.previous_life.load(Ordering::Relaxed)
    }

    /// Marks the session as restored at start.
    pub fn set_from_previous_life(&self) {
        self.previous_life.store(true, Ordering::Relaxed);
    }

    /// Marks the session as moving between nodes, or not.
    pub fn set_moving(&self, moving: bool) {
        self.moving.store(moving, Ordering::Relaxed);
    }

    /// Sets whether QoS 1/2 deliveries to this session are stored.
    pub fn set_durable(&self, durable: bool) {
        self.durable.store(durable, Ordering::Relaxed);
    }

    /// Runs `f` on what the stored record of this session is made of, while it is parked
    /// (no connection attached) and not removed.
    pub fn with_parked<R>(&self, f: impl FnOnce(&ParkedView<'_>) -> R) -> Option<R> {
        let inner = self.inner.lock();
        if inner.attached.is_some() || inner.removed {
            return None;
        }
        let empty = AHashMap::new();
        let view = ParkedView {
            subscriptions: inner.state.as_deref().map_or(&empty, |s| &s.subscriptions),
            expiry_secs: inner.expiry_secs,
            disconnected_ms: inner.disconnected_ms,
            will: inner.pending_will.as_deref().map(|p| &p.will),
            generation: inner.generation,
        };
        Some(f(&view))
    }

    /// The generation of the last attach (or of the restore at start).
    pub fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// Queues a delivery and wakes the connection if the queue was empty.
    pub fn push(&self, delivery: Delivery, policy: &PushPolicy) -> PushOutcome {
        if delivery.qos == QoS::AtMostOnce && !policy.queue_qos0_offline && !self.is_online() {
            return PushOutcome::DroppedOffline;
        }
        // Backpressure only towards a live subscriber (an offline one may never drain), and not
        // under the `disconnect` policy, whose point is to cut slow clients off.
        let backpressure = delivery.qos != QoS::AtMostOnce
            && self.is_online()
            && policy.limits.overflow != queue::OverflowPolicy::Disconnect;
        let pushed = self
            .queue
            .lock()
            .push(delivery, &policy.limits, backpressure);
        match pushed {
            Pushed::Queued {
                was_empty,
                over_limit,
            } => {
                if was_empty {
                    self.wake.notify_one();
                }
                if over_limit {
                    PushOutcome::QueuedOverLimit
                } else {
                    PushOutcome::Queued
                }
            }
            Pushed::QueuedDroppedOldest => PushOutcome::QueuedDroppedOldest,
            Pushed::DroppedFull => PushOutcome::DroppedFull,
            Pushed::Overflow => {
                // Slow consumer under the `disconnect` policy. No sender left means the
                // connection is already being closed.
                if let Some(a) = self.inner.lock().attached.as_mut()
                    && let Some(control) = a.control.take()
                {
                    let _ = control.send(Control::Kick(rookery_codec::reason::QUOTA_EXCEEDED));
                }
                PushOutcome::DroppedFull
            }
        }
    }

    /// Runs `f` on the queue under its lock (the connection drains in batches this way).
    pub fn with_queue<R>(&self, f: impl FnOnce(&mut Queue) -> R) -> R {
        f(&mut self.queue.lock())
    }

    /// Messages waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.lock().len()
    }

    /// Takeovers of this client id since the session was created.
    pub fn takeovers(&self) -> u64 {
        self.takeovers_total.load(Ordering::Relaxed)
    }

    /// The current Session Expiry Interval in seconds.
    pub fn expiry_secs(&self) -> u32 {
        self.inner.lock().expiry_secs
    }

    /// Sets the Session Expiry Interval (at CONNECT or DISCONNECT).
    pub fn set_expiry_secs(&self, secs: u32) {
        self.inner.lock().expiry_secs = secs;
    }

    /// The live connection's control channel, taken (so that the old connection is told once),
    /// with the old peer. Counts a takeover and returns how many happened within `window`.
    pub fn begin_takeover(
        &self,
        window: Duration,
        now: Instant,
    ) -> Option<(Option<oneshot::Sender<Control>>, SocketAddr, usize)> {
        let mut inner = self.inner.lock();
        let attached = inner.attached.as_mut()?;
        let (control, peer) = (attached.control.take(), attached.peer);
        inner.takeovers.retain(|t| now.duration_since(*t) < window);
        inner.takeovers.push(now);
        self.takeovers_total.fetch_add(1, Ordering::Relaxed);
        Some((control, peer, inner.takeovers.len()))
    }

    /// The address of the connection that holds the session, if one does.
    pub fn attached_peer(&self) -> Option<SocketAddr> {
        self.inner.lock().attached.as_ref().map(|a| a.peer)
    }

    /// True while a connection holds the session (until it has handed the state back).
    pub fn is_attached(&self) -> bool {
        self.inner.lock().attached.is_some()
    }

    /// Attaches a connection. `None` when the session was removed meanwhile (the caller looks
    /// the client id up again). The caller holds `attach_lock` and has closed any live connection.
    pub fn attach(
        &self,
        clean_start: bool,
        expiry_secs: u32,
        control: &mut Option<oneshot::Sender<Control>>,
        peer: SocketAddr,
    ) -> Option<Attachment> {
        let mut inner = self.inner.lock();
        if inner.removed {
            return None;
        }
        // A reconnect makes the timers of the last disconnect moot: stop them now rather than
        // let them sleep out a long expiry.
        if let Some(timers) = inner.timers.take() {
            timers.cancel();
        }
        // A connection that did not hand its state back (it timed out) leaves a fresh one.
        let previous = inner.state.take().map(|s| *s).unwrap_or_default();
        // A session whose expiry was 0 ended with its connection. MQTT 5.0 [MQTT-3.1.2-23].
        let had_session = inner.generation > 0 && inner.expiry_secs > 0;
        let pending_will = inner.pending_will.take();
        let mut attachment = Attachment {
            state: previous,
            generation: inner.generation + 1,
            session_present: false,
            will_to_publish: None,
            discarded_subscriptions: Vec::new(),
        };
        if clean_start || !had_session {
            // The old session ends: its delayed will is due now. MQTT 5.0 section 3.1.2.5.
            attachment.will_to_publish = pending_will.map(|p| p.will);
            let old = std::mem::take(&mut attachment.state);
            attachment.discarded_subscriptions = old.subscriptions.into_keys().collect();
            self.queue.lock().clear();
            self.previous_life.store(false, Ordering::Relaxed);
        } else {
            // Resumed before the will delay passed: the will is not sent.
            attachment.session_present = true;
        }
        inner.generation = attachment.generation;
        inner.attached = Some(Attached {
            control: control.take(),
            peer,
        });
        inner.expiry_secs = expiry_secs;
        self.online.store(true, Ordering::Relaxed);
        Some(attachment)
    }

    /// Hands the state back when a connection ends. Returns false when a newer connection
    /// has attached meanwhile (then the state is stale and dropped).
    pub fn detach(
        &self,
        generation: u64,
        state: SessionState,
        will: Option<PendingWill>,
        queue_qos0: bool,
    ) -> bool {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return false;
        }
        inner.state = Some(Box::new(state));
        inner.attached = None;
        inner.pending_will = will.map(Box::new);
        inner.disconnected_ms = Some(rookery_store::now_ms());
        self.online.store(false, Ordering::Relaxed);
        drop(inner);
        // Publishers paused on this queue stop waiting for a client that is gone.
        self.space.notify_waiters();
        if !queue_qos0 {
            self.queue.lock().drop_qos0();
        }
        true
    }

    /// A token for the timers armed after the disconnect of `generation`, cancelled by the next
    /// attach. `None` when another connection attached meanwhile.
    pub fn timer_token(&self, generation: u64) -> Option<CancellationToken> {
        let mut inner = self.inner.lock();
        if inner.generation != generation || inner.attached.is_some() {
            return None;
        }
        let token = CancellationToken::new();
        if let Some(old) = inner.timers.replace(token.clone()) {
            old.cancel();
        }
        Some(token)
    }

    /// Ends the session if it is still detached at `generation`: marks it removed and returns
    /// its subscriptions (to remove from the trie) and any pending will (to publish now).
    pub fn end_if_idle(&self, generation: u64) -> Option<(Vec<ByteString>, Option<LastWill>)> {
        let mut inner = self.inner.lock();
        if inner.generation != generation || inner.attached.is_some() || inner.removed {
            return None;
        }
        inner.removed = true;
        let subs = inner
            .state
            .take()
            .map(|s| s.subscriptions.into_keys().collect())
            .unwrap_or_default();
        let will = inner.pending_will.take().map(|p| p.will);
        drop(inner);
        self.queue.lock().clear();
        Some((subs, will))
    }

    /// Tells the live connection, if any, that another node takes the session over (v5
    /// DISCONNECT 0x8E; `resumes` when the newcomer keeps the session, which keeps a delayed
    /// will from firing; `moved` when no newcomer took it but the session went on elsewhere
    /// with its will): answered on the returned receiver once it has handed the state back.
    pub fn take_over_for_peer(&self, resumes: bool, moved: bool) -> Option<oneshot::Receiver<()>> {
        let mut inner = self.inner.lock();
        let control = inner.attached.as_mut()?.control.take()?;
        let (done, handed_back) = oneshot::channel();
        control
            .send(Control::TakeOver {
                resumes,
                moved,
                done,
            })
            .ok()?;
        self.takeovers_total.fetch_add(1, Ordering::Relaxed);
        Some(handed_back)
    }

    /// Takes everything out of a parked session for another node and marks it removed (its
    /// timers stop). `None` while a connection holds it, or once removed.
    pub fn extract(&self) -> Option<Extracted> {
        let mut inner = self.inner.lock();
        if inner.attached.is_some() || inner.removed {
            return None;
        }
        inner.removed = true;
        if let Some(timers) = inner.timers.take() {
            timers.cancel();
        }
        let extracted = Extracted {
            state: inner.state.take().map(|b| *b).unwrap_or_default(),
            will: inner.pending_will.take().map(|p| p.will),
            expiry_secs: inner.expiry_secs,
            disconnected_ms: inner.disconnected_ms,
            generation: inner.generation,
            queued: Vec::new(),
        };
        drop(inner);
        let mut extracted = extracted;
        extracted.queued = self.queue.lock().take_all();
        self.space.notify_waiters();
        Some(extracted)
    }

    /// Records who the attached connection authenticated as.
    pub fn set_identity(&self, username: Option<ByteString>, by_password: bool) {
        *self.owner.lock() = Owner {
            known: true,
            username,
            by_password,
        };
    }

    /// True when the session was last attached by a different username: such a CONNECT
    /// neither takes over a live connection nor resumes the session's subscriptions and queue.
    pub fn owned_by_other(&self, username: Option<&str>) -> bool {
        let owner = self.owner.lock();
        owner.known && owner.username.as_deref() != username
    }

    /// The username ACLs apply to.
    pub fn username(&self) -> Option<ByteString> {
        self.owner.lock().username.clone()
    }

    /// The username, when the password file vouched for it.
    pub fn password_user(&self) -> Option<ByteString> {
        let owner = self.owner.lock();
        owner.by_password.then(|| owner.username.clone()).flatten()
    }

    /// Closes the live connection, if any, with this MQTT 5.0 reason code. True when one was
    /// told to close.
    pub fn kick(&self, code: u8) -> bool {
        let mut inner = self.inner.lock();
        match inner.attached.as_mut().and_then(|a| a.control.take()) {
            Some(control) => control.send(Control::Kick(code)).is_ok(),
            None => false,
        }
    }

    /// Tells the live connection, if any, that the broker is shutting down. True when one
    /// was told.
    pub fn shut_down(&self) -> bool {
        let mut inner = self.inner.lock();
        match inner.attached.as_mut().and_then(|a| a.control.take()) {
            Some(control) => control.send(Control::Shutdown).is_ok(),
            None => false,
        }
    }

    /// Tells the live connection, if any, that the node is draining. True when one was told.
    pub fn drain(&self) -> bool {
        let mut inner = self.inner.lock();
        match inner.attached.as_mut().and_then(|a| a.control.take()) {
            Some(control) => control.send(Control::Drain).is_ok(),
            None => false,
        }
    }

    /// Takes the pending will if it is still the one left by `generation` and nobody resumed.
    pub fn take_due_will(&self, generation: u64) -> Option<LastWill> {
        let mut inner = self.inner.lock();
        if inner.generation != generation || inner.attached.is_some() {
            return None;
        }
        inner.pending_will.take().map(|p| p.will)
    }
}

/// A session read back from the store, for [`Sessions::restore`].
#[derive(Debug)]
pub struct Restoring {
    /// The client id.
    pub client_id: ByteString,
    /// Session Expiry Interval.
    pub expiry_secs: u32,
    /// The username ACLs apply to.
    pub username: Option<ByteString>,
    /// The password file vouched for it.
    pub by_password: bool,
    /// Subscriptions and QoS 1/2 state.
    pub state: SessionState,
    /// The will still pending.
    pub will: Option<LastWill>,
    /// When its last connection ended (wall clock, ms).
    pub disconnected_ms: Option<u64>,
}

/// All sessions by client id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<AHashMap<ByteString, Arc<Session>>>,
    next_id: AtomicU64,
}

impl Sessions {
    /// The session of `client_id`, created when there is none.
    pub fn get_or_create(&self, client_id: &ByteString) -> Arc<Session> {
        let mut map = self.map.lock();
        if let Some(s) = map.get(client_id) {
            return s.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let s = Arc::new(Session::new(id, client_id.clone()));
        map.insert(client_id.clone(), s.clone());
        s
    }

    /// The session of `client_id`, if any.
    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.map.lock().get(client_id).cloned()
    }

    /// Removes `session` from the registry if it is still the one registered for its id.
    pub fn remove(&self, session: &Arc<Session>) {
        let mut map = self.map.lock();
        if map
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            map.remove(&session.client_id);
        }
    }

    /// Registers a persistent session read back from the store (at start, or handed over by
    /// another node): offline, with its state parked and its will pending, as if its
    /// connection had just ended (generation 1). `None` when a session of that id exists.
    pub fn restore(&self, r: Restoring) -> Option<Arc<Session>> {
        let Restoring {
            client_id,
            expiry_secs,
            username,
            by_password,
            state,
            will,
            disconnected_ms,
        } = r;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let s = Session::new(id, client_id.clone());
        {
            let mut inner = s.inner.lock();
            inner.state = Some(Box::new(state));
            inner.generation = 1;
            inner.expiry_secs = expiry_secs;
            inner.disconnected_ms = disconnected_ms;
            inner.pending_will = will.map(|will| {
                Box::new(PendingWill {
                    will,
                    generation: 1,
                })
            });
        }
        *s.owner.lock() = Owner {
            known: true,
            username,
            by_password,
        };
        s.durable.store(true, Ordering::Relaxed);
        let s = Arc::new(s);
        // Never over a session of that id that appeared meanwhile (a CONNECT here).
        match self.map.lock().entry(client_id) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(s.clone());
                Some(s)
            }
        }
    }

    /// A snapshot of every session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.map.lock().values().cloned().collect()
    }

    /// Number of sessions (online and offline).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// True when there is no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (online, offline) session counts.
    pub fn counts(&self) -> (usize, usize) {
        let map = self.map.lock();
        let online = map.values().filter(|s| s.is_online()).count();
        (online, map.len() - online)
    }
}
