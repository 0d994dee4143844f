//! Forward acknowledgements (protocol level 5, decision 0016): what a node forwarded to a peer
//! and the peer has not yet acknowledged, and what a node handled of what a peer forwarded.
//!
//! TCP keeps a link's frames in order, so `Publish` frames carry no number: the sender counts
//! the ones it sends to a peer (per boot epoch of that peer, across its links), the receiver
//! counts the ones it handles (per boot epoch of the sender), and the receiver's
//! `ForwardAck { upto }` says every frame up to that count has been routed (and, in `sync`
//! durability, committed). A link that comes back to the same epoch starts with
//! `ForwardResume { from }` and the frames after `from` again; the receiver skips those it
//! handled already. Pure state, no I/O: the link task (`link.rs`) drives it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::frame::Frame;

/// The first protocol level with forward acknowledgements.
pub const ACK_LEVEL: u8 = 5;

/// The sender's side for one peer (one boot epoch of it): the frames it has not acknowledged.
#[derive(Debug)]
pub struct Ledger {
    /// The peer's boot epoch: a peer that restarted gets a new ledger.
    pub epoch: u64,
    inner: Mutex<Inner>,
    acked: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The number of the last frame taken.
    next: u64,
    /// Frames `acked + 1 ..= next`, in order.
    tail: VecDeque<Frame>,
    /// The link the ledger belongs to now (or last did): a stale link's end does not give up
    /// a newer link's frames.
    link: u64,
    /// Given up ([`Ledger::settle`]) and not linked since.
    settled: bool,
    /// Its frames are being sent to the nodes that adopted the peer's sessions
    /// ([`Ledger::close_after`]): it takes no more until a link to the peer resumes it.
    closed: bool,
    /// Frames given up ([`Ledger::give_up`]) and kept for the peer's return: numbered
    /// `kept_from + 1 ..`, up to the count acknowledged. Nobody waits for them.
    kept: VecDeque<Frame>,
    kept_from: u64,
    /// When the oldest of `kept` was given up.
    kept_since: Option<std::time::Instant>,
}

impl Ledger {
    /// A ledger for a peer first linked (or restarted) with boot epoch `epoch`.
    pub fn new(epoch: u64) -> Ledger {
        Ledger {
            epoch,
            inner: Mutex::new(Inner::default()),
            acked: watch::Sender::new(0),
        }
    }

    /// Numbers `frame` (a `Publish`) and keeps it until acknowledged, sending it nowhere yet
    /// (the peer is down); `None` when `limit` frames wait already (the caller drops it,
    /// counted). Returns the frame's number.
    pub fn take(&self, frame: &Frame, limit: usize) -> Option<u64> {
        self.take_and_send(frame.clone(), limit, |_| true)
    }

    /// Numbers `frame` and hands it to `send` (the link's queue) under the ledger's lock, so
    /// that the queue's order is the numbers' order. `None` as for [`Ledger::take`], or when
    /// `send` fails (nothing is kept then).
    pub fn take_and_send(
        &self,
        frame: Frame,
        limit: usize,
        send: impl FnOnce(Frame) -> bool,
    ) -> Option<u64> {
        let mut inner = self.inner.lock();
        if inner.tail.len() >= limit || inner.closed {
            return None;
        }
        inner.tail.push_back(frame.clone());
        if !send(frame) {
            inner.tail.pop_back();
            return None;
        }
        inner.next += 1;
        inner.settled = false;
        Some(inner.next)
    }

    /// The peer handled every frame up to `upto`.
    pub fn ack(&self, upto: u64) {
        let mut inner = self.inner.lock();
        let acked = *self.acked.borrow();
        // A count beyond what was sent is a confused peer: believe no more than was sent.
        let upto = upto.min(inner.next);
        if upto > inner.kept_from && !inner.kept.is_empty() {
            let done = usize::try_from(upto - inner.kept_from)
                .unwrap_or(usize::MAX)
                .min(inner.kept.len());
            inner.kept.drain(..done);
            inner.kept_from += done as u64;
            if inner.kept.is_empty() {
                inner.kept_since = None;
            }
        }
        if upto <= acked {
            return;
        }
        let done = usize::try_from(upto - acked)
            .unwrap_or(usize::MAX)
            .min(inner.tail.len());
        inner.tail.drain(..done);
        self.acked.send_replace(upto);
    }

    /// The count acknowledged.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    /// True once frame `n` is acknowledged (or given up).
    pub fn is_acked(&self, n: u64) -> bool {
        self.acked() >= n
    }

    /// Waits until frame `n` is acknowledged (or given up).
    pub async fn wait(&self, n: u64) {
        let mut rx = self.acked.subscribe();
        // The ledger lives as long as this borrow of it: the sender cannot be gone.
        let _ = rx.wait_for(|a| *a >= n).await;
    }

    /// A link to the peer (of this epoch) is up: `send` gets `ForwardResume` with the count
    /// acknowledged, then every frame not acknowledged, in order, under the ledger's lock.
    /// Frames given up and kept go first (`ForwardResume` counts from them): the receiver
    /// skips those it handled. Returns how many frames were sent again.
    pub fn resume(&self, link: u64, mut send: impl FnMut(Frame) -> bool) -> usize {
        let mut inner = self.inner.lock();
        inner.link = link;
        inner.settled = false;
        inner.closed = false;
        let acked = self.acked();
        if inner.kept_from + inner.kept.len() as u64 != acked {
            // Not followed by the frames after them (cannot happen: acknowledgements are
            // cumulative); numbered wrong if sent.
            Self::forget_kept(&mut inner);
        }
        let from = acked - inner.kept.len() as u64;
        if !send(Frame::ForwardResume { from }) {
            return 0;
        }
        let mut n = 0;
        for f in inner.kept.iter().chain(&inner.tail) {
            if !send(f.clone()) {
                break;
            }
            n += 1;
        }
        n
    }

    /// The link `link` went down. True when it was the ledger's link (no newer one is up).
    pub fn is_link(&self, link: u64) -> bool {
        self.inner.lock().link == link
    }

    /// Gives up what waits (the peer is gone, its sessions elsewhere): every frame counts as
    /// acknowledged, so publishers waiting on them go on. Returns how many were given up. The
    /// count goes on from where it was, so a peer of this epoch that comes back after all
    /// reads the next frames at the right numbers.
    pub fn settle(&self) -> usize {
        let mut inner = self.inner.lock();
        let given_up = inner.tail.len();
        inner.tail.clear();
        Self::forget_kept(&mut inner);
        inner.settled = true;
        // A peer of this epoch linked again meanwhile is forwarded to as before.
        inner.closed = false;
        let next = inner.next;
        self.acked.send_replace(next);
        given_up
    }

    /// As [`Ledger::settle`] (publishers go on), for a peer gone too long whose sessions nobody
    /// adopted: the frames are kept, for its return (sent again first on a link of the same
    /// epoch, or after the mark of its previous life when it restarted) until
    /// [`Ledger::drop_kept_since`]. Returns how many were given up.
    pub fn give_up(&self, now: std::time::Instant) -> usize {
        let mut inner = self.inner.lock();
        let given_up = inner.tail.len();
        let acked = self.acked();
        if inner.kept_from + inner.kept.len() as u64 != acked {
            Self::forget_kept(&mut inner);
        }
        if inner.kept.is_empty() {
            inner.kept_from = acked;
            inner.kept_since = (given_up > 0).then_some(now);
        }
        let tail = std::mem::take(&mut inner.tail);
        inner.kept.extend(tail);
        inner.settled = true;
        inner.closed = false;
        let next = inner.next;
        self.acked.send_replace(next);
        given_up
    }

    /// Forgets the kept frames if the oldest was given up at or before `at`. Returns how many.
    pub fn drop_kept_since(&self, at: std::time::Instant) -> usize {
        let mut inner = self.inner.lock();
        if inner.kept_since.is_none_or(|s| s > at) {
            return 0;
        }
        let n = inner.kept.len();
        Self::forget_kept(&mut inner);
        n
    }

    fn forget_kept(inner: &mut Inner) {
        inner.kept.clear();
        inner.kept_since = None;
    }

    /// Every frame given up and kept or not acknowledged, with its number, in order (for a
    /// peer that restarted: what its previous life had not committed goes to its new one).
    pub fn numbered_all(&self) -> Vec<(u64, Frame)> {
        let inner = self.inner.lock();
        let acked = self.acked();
        let kept = (inner.kept_from + 1..).zip(inner.kept.iter().cloned());
        let tail = (acked + 1..).zip(inner.tail.iter().cloned());
        kept.chain(tail).collect()
    }

    /// The peer died and its sessions were adopted: the frames it had not acknowledged and
    /// that are numbered above `mark` (the count it had committed, as its store says), in
    /// order, for the adopters. The ledger takes nothing more (the peer's routes are gone);
    /// what it holds waits until [`Ledger::settle`], so publishers wait for the adopters.
    pub fn close_after(&self, mark: u64) -> Vec<Frame> {
        let mut inner = self.inner.lock();
        inner.closed = true;
        self.after(&inner, mark)
    }

    /// The frames not acknowledged, with their numbers, in order, leaving the ledger as it is
    /// (copies for a node that resumed one of the peer's sessions).
    pub fn numbered(&self) -> Vec<(u64, Frame)> {
        let inner = self.inner.lock();
        let first = self.acked() + 1;
        (first..).zip(inner.tail.iter().cloned()).collect()
    }

    fn after(&self, inner: &Inner, mark: u64) -> Vec<Frame> {
        let skip = usize::try_from(mark.saturating_sub(self.acked())).unwrap_or(usize::MAX);
        inner.tail.iter().skip(skip).cloned().collect()
    }

    /// True when frames wait for an acknowledgement or are kept after being given up.
    pub fn holds(&self) -> bool {
        let inner = self.inner.lock();
        !inner.tail.is_empty() || !inner.kept.is_empty()
    }

    /// Frames waiting for an acknowledgement.
    pub fn unacked(&self) -> usize {
        self.inner.lock().tail.len()
    }
}

/// The receiver's side for one peer (one boot epoch of it): how many of its forwarded frames
/// have been handled, shared by its links (an old link may still deliver while a new one
/// resends).
#[derive(Debug, Default)]
pub struct Handled {
    count: AtomicU64,
}

impl Handled {
    /// The count handled.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Frame number `n` arrived: true when it is to be handled now, false when it was
    /// already (sent again after a reconnection).
    pub fn claim(&self, n: u64) -> bool {
        let mut current = self.count.load(Ordering::Acquire);
        loop {
            if n <= current {
                return false;
            }
            match self
                .count
                .compare_exchange(current, n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }
}

/// One link's reading of forwarded frames: the number of the last `Publish` it read, and the
/// acknowledgements it owes (each waiting for a commit in `sync` durability).
#[derive(Debug)]
pub struct Reading {
    /// The number of the last `Publish` read on this link.
    pub position: u64,
    /// What was handled, shared with the peer's other links.
    pub handled: std::sync::Arc<Handled>,
    /// (count, commit ticket): acknowledgements waiting for their commit.
    pub owed: VecDeque<(u64, u64)>,
    /// The count last acknowledged on this link.
    pub sent: u64,
}

impl Reading {
    /// A link's reading of a peer whose frames `handled` counts.
    pub fn new(handled: std::sync::Arc<Handled>) -> Reading {
        Reading {
            position: 0,
            handled,
            owed: VecDeque::new(),
            sent: 0,
        }
    }

    /// `ForwardResume { from }`: the next `Publish` is number `from + 1`.
    pub fn resume(&mut self, from: u64) {
        self.position = from;
    }

    /// A `Publish` arrived: true when it is to be routed, false when it was handled already.
    pub fn arrived(&mut self) -> bool {
        self.position += 1;
        self.handled.claim(self.position)
    }

    /// After a read pass: what to acknowledge now, given the highest commit ticket the pass
    /// made (`ticket`, 0 for none) and the ticket committed so far. Passes whose commits are
    /// pending are kept in order and acknowledged by [`Reading::committed`].
    pub fn after_pass(&mut self, ticket: u64, committed: u64) -> Option<u64> {
        if self.position <= self.sent && self.owed.is_empty() {
            return None;
        }
        if ticket > committed || !self.owed.is_empty() {
            if self.owed.back().is_none_or(|(n, _)| *n < self.position) {
                let ticket = ticket.max(self.owed.back().map_or(0, |(_, t)| *t));
                self.owed.push_back((self.position, ticket));
            }
            return self.committed(committed);
        }
        self.ack(self.position)
    }

    /// The committer reached `committed`: the count to acknowledge now, if it moved.
    pub fn committed(&mut self, committed: u64) -> Option<u64> {
        let mut upto = None;
        while let Some(&(n, t)) = self.owed.front() {
            if t > committed {
                break;
            }
            self.owed.pop_front();
            upto = Some(n);
        }
        upto.and_then(|n| self.ack(n))
    }

    /// The ticket the first owed acknowledgement waits for.
    pub fn waiting_for(&self) -> Option<u64> {
        self.owed.front().map(|(_, t)| *t)
    }

    fn ack(&mut self, n: u64) -> Option<u64> {
        (n > self.sent).then(|| {
            self.sent = n;
            n
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn publish(id: u64) -> Frame {
        Frame::Publish {
            id,
            message: rookery_store::StoredMessage {
                topic: "t".into(),
                payload: bytes::Bytes::from_static(b"x"),
                qos: 1,
                retain: false,
                properties: bytes::Bytes::new(),
                expires_at_ms: None,
            },
            groups: vec![],
        }
    }

    fn ids(frames: &[Frame]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Publish { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn closing_for_the_adopters_yields_what_the_dead_peer_had_not_committed() {
        let l = Ledger::new(7);
        for id in 1..=6 {
            l.take_and_send(publish(id), 10, |_| true);
        }
        l.ack(2);
        // Its store says it committed up to 4: frames 5 and 6 go to the adopters (copies for
        // a node that resumed a session leave the ledger open).
        let numbered = l.numbered();
        assert_eq!(
            numbered.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        let frames: Vec<Frame> = numbered.into_iter().map(|(_, f)| f).collect();
        assert_eq!(ids(&frames), [3, 4, 5, 6]);
        assert_eq!(l.take(&publish(7), 10), Some(7));
        assert_eq!(ids(&l.close_after(4)), [5, 6, 7]);
        // A mark at or below what was acknowledged: everything not acknowledged.
        assert_eq!(ids(&l.close_after(0)), [3, 4, 5, 6, 7]);
        assert_eq!(ids(&l.close_after(9)), Vec::<u64>::new());
        // Closed: nothing more is taken, and the publishers wait until it is settled.
        assert_eq!(l.take(&publish(8), 10), None);
        assert!(!l.is_acked(7));
        assert_eq!(l.settle(), 5);
        assert!(l.is_acked(7));
        // Settled, it takes again (a link of the same epoch may be up by then), and a link of
        // the same epoch opens it too.
        assert_eq!(l.take(&publish(8), 10), Some(8));
        l.close_after(0);
        l.resume(2, |_| true);
        assert_eq!(l.take(&publish(9), 10), Some(9));
    }

    #[test]
    fn acknowledgements_are_cumulative_and_drop_what_they_cover() {
        let l = Ledger::new(7);
        for id in 1..=5 {
            assert_eq!(l.take_and_send(publish(id), 10, |_| true), Some(id));
        }
        assert!(!l.is_acked(1));
        l.ack(3);
        assert!(l.is_acked(3) && !l.is_acked(4));
        assert_eq!(l.unacked(), 2);
        // Late or repeated acknowledgements change nothing; one past what was sent is capped.
        l.ack(2);
        assert_eq!(l.acked(), 3);
        l.ack(99);
        assert_eq!(l.acked(), 5);
        assert_eq!(l.unacked(), 0);
    }

    #[test]
    fn a_full_ledger_refuses_and_a_failed_send_keeps_nothing() {
        let l = Ledger::new(1);
        assert_eq!(l.take_and_send(publish(1), 2, |_| true), Some(1));
        assert_eq!(l.take_and_send(publish(2), 2, |_| false), None);
        assert_eq!(l.take(&publish(3), 2), Some(2));
        assert_eq!(l.take(&publish(4), 2), None);
        assert_eq!(l.unacked(), 2);
    }

    #[test]
    fn a_link_back_resumes_from_the_acknowledged_count_and_the_receiver_skips_what_it_had() {
        let sender = Ledger::new(1);
        let handled = Arc::new(Handled::default());
        let mut first = Reading::new(handled.clone());
        for id in 1..=6 {
            sender.take_and_send(publish(id), 100, |_| true);
        }
        // The first link delivers 1..=4; the acknowledgement of 3 and 4 is lost with it.
        let mut routed = vec![];
        for id in 1..=4 {
            if first.arrived() {
                routed.push(id);
            }
        }
        sender.ack(2);
        // The new link: ForwardResume { from: 2 }, then 3..=6 again.
        let mut resent = vec![];
        assert_eq!(
            sender.resume(2, |f| {
                resent.push(f);
                true
            }),
            4
        );
        assert_eq!(resent[0], Frame::ForwardResume { from: 2 });
        assert_eq!(ids(&resent), vec![3, 4, 5, 6]);
        let mut second = Reading::new(handled.clone());
        for f in &resent {
            match f {
                Frame::ForwardResume { from } => second.resume(*from),
                Frame::Publish { id, .. } => {
                    if second.arrived() {
                        routed.push(*id);
                    }
                }
                _ => unreachable!(),
            }
        }
        assert_eq!(routed, vec![1, 2, 3, 4, 5, 6], "each once, in order");
        assert_eq!(second.after_pass(0, 0), Some(6));
        sender.ack(6);
        assert_eq!(sender.unacked(), 0);
    }

    #[test]
    fn an_old_link_still_delivering_beside_the_new_one_routes_nothing_twice() {
        let handled = Arc::new(Handled::default());
        let (mut old, mut new) = (Reading::new(handled.clone()), Reading::new(handled.clone()));
        new.resume(0);
        let mut routed = 0;
        // Interleaved: both carry 1..=3.
        for _ in 0..3 {
            routed += usize::from(new.arrived());
            routed += usize::from(old.arrived());
        }
        assert_eq!(routed, 3);
        assert_eq!(handled.count(), 3);
    }

    #[test]
    fn in_sync_durability_an_acknowledgement_waits_for_its_commit_and_keeps_order() {
        let mut r = Reading::new(Arc::new(Handled::default()));
        r.arrived();
        r.arrived();
        // Pass 1 made commit 10, not committed yet.
        assert_eq!(r.after_pass(10, 5), None);
        assert_eq!(r.waiting_for(), Some(10));
        r.arrived();
        // Pass 2 made no store write, but must not be acknowledged before pass 1.
        assert_eq!(r.after_pass(0, 5), None);
        assert_eq!(r.committed(9), None);
        assert_eq!(r.committed(10), Some(3));
        assert_eq!(r.waiting_for(), None);
        // Nothing new read: nothing to say.
        assert_eq!(r.after_pass(0, 10), None);
        r.arrived();
        assert_eq!(r.after_pass(11, 11), Some(4));
    }

    #[test]
    fn settling_releases_the_waiters_and_the_count_goes_on() {
        let l = Ledger::new(1);
        l.take(&publish(1), 10);
        l.take(&publish(2), 10);
        assert_eq!(l.settle(), 2);
        assert!(l.is_acked(2));
        assert_eq!(l.take_and_send(publish(3), 10, |_| true), Some(3));
        let mut resent = vec![];
        l.resume(5, |f| {
            resent.push(f);
            true
        });
        assert_eq!(resent[0], Frame::ForwardResume { from: 2 });
        assert_eq!(ids(&resent), vec![3]);
    }

    #[test]
    fn frames_given_up_are_kept_for_the_peers_return_and_sent_first() {
        let l = Ledger::new(1);
        for id in 1..=3 {
            l.take(&publish(id), 10);
        }
        l.ack(1);
        let t0 = std::time::Instant::now();
        assert_eq!(l.give_up(t0), 2);
        assert!(l.is_acked(3), "publishers go on");
        assert_eq!(
            l.numbered_all().iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [2, 3]
        );
        // Back (same epoch): from 1, frames 2 and 3 again, then what was taken since.
        let mut sent = vec![];
        assert_eq!(
            l.resume(2, |f| {
                sent.push(f);
                true
            }),
            2
        );
        assert_eq!(sent[0], Frame::ForwardResume { from: 1 });
        assert_eq!(ids(&sent), [2, 3]);
        assert_eq!(l.take_and_send(publish(4), 10, |_| true), Some(4));
        // Gone again before acknowledging them: 2..=4 are kept, in one run.
        l.give_up(t0);
        assert_eq!(
            ids(&l
                .numbered_all()
                .into_iter()
                .map(|(_, f)| f)
                .collect::<Vec<_>>()),
            [2, 3, 4]
        );
        // An acknowledgement drops those it covers.
        l.ack(3);
        assert_eq!(
            l.numbered_all().iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [4]
        );
        let mut sent = vec![];
        l.resume(3, |f| {
            sent.push(f);
            true
        });
        assert_eq!(sent[0], Frame::ForwardResume { from: 3 });
        assert_eq!(ids(&sent), [4]);
        l.ack(4);
        assert!(l.numbered_all().is_empty());
        // Kept frames go after their time, or when the ledger is settled.
        l.take(&publish(5), 10);
        let t1 = std::time::Instant::now();
        l.give_up(t1);
        assert_eq!(l.drop_kept_since(t0), 0, "given up after t0");
        assert_eq!(l.drop_kept_since(t1), 1);
        l.take(&publish(6), 10);
        l.give_up(t1);
        assert_eq!(l.settle(), 0);
        assert!(l.numbered_all().is_empty());
    }

    #[tokio::test]
    async fn a_waiter_wakes_at_its_number() {
        let l = Arc::new(Ledger::new(1));
        for id in 1..=3 {
            l.take(&publish(id), 10);
        }
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.wait(2).await }
        });
        tokio::task::yield_now().await;
        l.ack(1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        l.ack(2);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
