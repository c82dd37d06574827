//! Reliable delivery between two seats on different relays: what every distributed upstream
//! shares, whatever carries its messages.
//!
//! A broker (or a link between relays) can lose messages in flight when it restarts or a
//! connection drops. Each direction of a pair therefore numbers its frames: the sender keeps
//! every frame until the receiver acknowledges it, and sends the unacknowledged ones again
//! after a reconnect, when the receiver reports a gap, or when acknowledgements stall; the
//! receiver delivers only the next number it expects and drops the rest (a duplicate is
//! acknowledged again; a gap is reported by acknowledging what it has). The departure carries
//! the number of frames sent, so PEER_LEFT is delivered after exactly those frames.
//!
//! The window (frames sent and not yet acknowledged) is bounded: when it is full the sender
//! stops taking frames from its connection, which stops reading its client. Nothing here does
//! I/O or reads a clock of its own; the seat that uses it does both.

use super::inbox::{Inbox, Receiver};
use super::{BoxFuture, Frame, LinkError, PeerLink, SendError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::time::Instant;

/// A connection's link to a partner on another relay: a bounded queue to the task that carries
/// the seat's traffic (which numbers the frames and keeps them until acknowledged). The queue is
/// an [`Inbox`]: a send is one short lock, and the seat takes a batch under one lock, where a
/// channel pays atomics on both sides for every frame.
pub struct QueueLink(Arc<Inbox>);

impl PeerLink for QueueLink {
    fn send(&mut self, frame: Frame) -> Result<(), SendError> {
        self.0.push(frame)
    }

    fn writable(&self) -> BoxFuture<'static, Result<(), LinkError>> {
        let queue = Arc::clone(&self.0);
        Box::pin(std::future::poll_fn(move |cx| queue.poll_writable(cx)))
    }
}

/// The seat's end of its connection's [`QueueLink`]s: the frames queued for the partner, oldest
/// first. Dropping it (the seat's task ended) makes later sends fail with `Gone`.
pub struct Outbox {
    queue: Arc<Inbox>,
    /// Closes the queue on drop.
    _end: Receiver,
    /// Frames taken from the queue and not given out yet: never more than the `max` they were
    /// taken under, so a seat that takes within its window stays within it.
    taken: VecDeque<Frame>,
}

impl Outbox {
    /// A queue of at most `cap` frames.
    pub fn new(cap: usize) -> Outbox {
        let queue = Inbox::new(cap);
        Outbox { _end: Receiver::new(Arc::clone(&queue)), queue, taken: VecDeque::new() }
    }

    /// A link for the connection, to send into this queue.
    pub fn link(&self) -> QueueLink {
        QueueLink(Arc::clone(&self.queue))
    }

    /// The next frame, once there is one. When none is left from the last take, takes up to
    /// `max` (at least one) of what is queued. Cancel-safe.
    pub async fn recv(&mut self, max: usize) -> Frame {
        loop {
            if let Some(frame) = self.taken.pop_front() {
                return frame;
            }
            let (queue, taken) = (&self.queue, &mut self.taken);
            std::future::poll_fn(|cx| queue.poll_take(cx, taken, max.max(1))).await;
        }
    }

    /// The next frame if one is queued; when none is left from the last take, takes up to `max`.
    pub fn try_recv(&mut self, max: usize) -> Option<Frame> {
        if self.taken.is_empty() {
            self.queue.take(&mut self.taken, max);
        }
        self.taken.pop_front()
    }
}

/// The sending half of a pair's link.
pub struct Outgoing {
    /// The number the next new frame gets.
    next: u64,
    /// Frames sent and not acknowledged, oldest first, with their numbers and when they were
    /// first sent.
    unacked: VecDeque<(u64, Bytes, Instant)>,
    window: usize,
    /// When the receiver last acknowledged something new (or the first unacked frame was sent).
    progress: Instant,
    /// Where the time each acknowledgement took is observed (the oldest frame it covers).
    handover: Option<prometheus::Histogram>,
}

/// What an acknowledgement told the sender.
#[derive(Debug, PartialEq, Eq)]
pub enum Acked {
    /// Frames were acknowledged.
    Progress,
    /// Nothing new while frames wait: the receiver has a gap, send them again.
    Gap,
    /// Nothing new, nothing waiting.
    Nothing,
}

impl Outgoing {
    /// A sender holding at most `window` unacknowledged frames.
    pub fn new(window: usize) -> Outgoing {
        Outgoing { next: 0, unacked: VecDeque::new(), window: window.max(1), progress: Instant::now(), handover: None }
    }

    /// The same sender, observing how long each acknowledgement took into `handover`.
    pub fn timed(mut self, handover: prometheus::Histogram) -> Outgoing {
        self.handover = Some(handover);
        self
    }

    /// Whether another frame may be sent now.
    pub fn has_room(&self) -> bool {
        self.room() > 0
    }

    /// How many more frames may be sent now.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.unacked.len())
    }

    /// The number the next frame will get.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Numbers `frame` and keeps it until acknowledged; returns its number.
    pub fn send(&mut self, frame: Bytes, now: Instant) -> u64 {
        if self.unacked.is_empty() {
            self.progress = now;
        }
        let seq = self.next;
        self.next += 1;
        self.unacked.push_back((seq, frame, now));
        seq
    }

    /// The receiver has every frame below `next_expected`.
    pub fn ack(&mut self, next_expected: u64, now: Instant) -> Acked {
        let before = self.unacked.len();
        let oldest = self.unacked.front().filter(|(seq, _, _)| *seq < next_expected).map(|(_, _, at)| *at);
        while self.unacked.front().is_some_and(|(seq, _, _)| *seq < next_expected) {
            self.unacked.pop_front();
        }
        if let (Some(at), Some(h)) = (oldest, &self.handover) {
            h.observe(now.saturating_duration_since(at).as_secs_f64());
        }
        if self.unacked.len() < before {
            self.progress = now;
            Acked::Progress
        } else if self.unacked.is_empty() {
            Acked::Nothing
        } else {
            Acked::Gap
        }
    }

    /// The frames to send again, oldest first.
    pub fn unacked(&self) -> impl Iterator<Item = (u64, &Bytes)> {
        self.unacked.iter().map(|(seq, frame, _)| (*seq, frame))
    }

    /// Frames numbered so far (what a departure announces).
    pub fn sent(&self) -> u64 {
        self.next
    }

    /// Whether every frame was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Whether frames have waited `after` without any acknowledgement.
    pub fn stalled(&self, now: Instant, after: std::time::Duration) -> bool {
        !self.unacked.is_empty() && now.duration_since(self.progress) >= after
    }

    /// Forgets everything waiting (the pair ended).
    pub fn clear(&mut self) {
        self.unacked.clear();
    }
}

/// Acknowledge at the latest after this many delivered frames (well inside any window).
pub const ACK_EVERY: u64 = 64;

/// The receiving half of a pair's link.
#[derive(Default)]
pub struct Incoming {
    /// The number of the next frame to deliver: every frame below it was delivered.
    expected: u64,
    /// The last acknowledgement sent (the `expected` it carried).
    acked: u64,
    /// The departure announced this many frames.
    left_after: Option<u64>,
    /// A duplicate, a gap or a departure: the sender should hear from us now, not later.
    urgent: bool,
}

/// What to do with an arriving frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next one: deliver it, then call [`Incoming::delivered`].
    Deliver,
    /// Delivered before (sent again): drop it.
    Duplicate,
    /// Ahead of a missing one: drop it; the sender will send both again.
    Gap,
}

impl Incoming {
    /// Classifies frame `seq`.
    pub fn arrived(&mut self, seq: u64) -> Arrival {
        match seq.cmp(&self.expected) {
            std::cmp::Ordering::Equal => Arrival::Deliver,
            std::cmp::Ordering::Less => {
                self.urgent = true;
                Arrival::Duplicate
            }
            std::cmp::Ordering::Greater => {
                self.urgent = true;
                Arrival::Gap
            }
        }
    }

    /// The expected frame was handed to the connection.
    pub fn delivered(&mut self) {
        self.expected += 1;
    }

    /// The partner left after sending `total` frames.
    pub fn left(&mut self, total: u64) {
        self.left_after = Some(total);
        self.urgent = true;
    }

    /// Whether the partner left and every frame it sent was delivered.
    pub fn finished(&self) -> bool {
        self.left_after.is_some_and(|total| self.expected >= total)
    }

    /// Whether the partner left but frames it sent are still missing.
    pub fn missing_after_departure(&self) -> bool {
        self.left_after.is_some_and(|total| self.expected < total)
    }

    /// The acknowledgement to send now, if one is due: urgent, or [`ACK_EVERY`] frames since the
    /// last (acknowledgements are batched; [`flush`](Self::flush) sends the rest a moment later).
    pub fn take_ack(&mut self) -> Option<u64> {
        (self.urgent || self.expected - self.acked >= ACK_EVERY).then(|| self.flush()).flatten()
    }

    /// Whether delivered frames wait for an acknowledgement.
    pub fn ack_pending(&self) -> bool {
        self.urgent || self.expected > self.acked
    }

    /// The acknowledgement for everything delivered, if anything is unacknowledged.
    pub fn flush(&mut self) -> Option<u64> {
        if !self.ack_pending() {
            return None;
        }
        self.urgent = false;
        self.acked = self.expected;
        Some(self.expected)
    }
}

/// The receiving side of a seat: the partner's numbered frames handed to the connection in
/// order, held here while the connection has no room (the sender's window bounds them), and
/// acknowledged only once handed over; then PEER_LEFT after exactly the frames announced.
pub struct Handover {
    inbox: Arc<Inbox>,
    inc: Incoming,
    /// Partner frames the connection had no room for yet.
    pending: VecDeque<Frame>,
    /// PEER_LEFT was told.
    told: bool,
}

/// Frames that cannot be handed over as they came.
#[derive(Debug, PartialEq, Eq)]
pub enum Broken {
    /// A number is missing.
    Gap,
    /// A frame is not UTF-8 text.
    NotText,
}

/// The frame count a seat's departure announces when the seat was lost, not left (a record
/// it could not deliver, its relay cut off): its partner ends with 4011, never PEER_LEFT. A
/// relay that does not know this value ends with 4011 too, since the frames it announces never
/// come.
pub const LOST: u64 = u64::MAX;

/// Where a departure stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Departure {
    /// The partner has not left, or frames are still held here: nothing to do yet.
    NotYet,
    /// PEER_LEFT was told just now.
    Told,
    /// The partner left and frames it announced never came.
    Missing,
}

impl Handover {
    /// A handover into `inbox`.
    pub fn new(inbox: Arc<Inbox>) -> Handover {
        Handover { inbox, inc: Incoming::default(), pending: VecDeque::new(), told: false }
    }

    /// Whether frames wait for the connection to make room (take nothing more from the carrier
    /// meanwhile: that keeps the order).
    pub fn holding(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Resolves when the connection has room (or is gone). Cancel-safe.
    pub async fn room(&self) {
        let inbox = Arc::clone(&self.inbox);
        let _ = std::future::poll_fn(|cx| inbox.poll_writable(cx)).await;
    }

    /// Hands over what was held, as far as there is room (one lock for all of it).
    pub fn release(&mut self) {
        if self.inbox.push_from(&mut self.pending).is_err() {
            // The connection has ended: nothing held can reach it now.
            self.pending.clear();
        }
    }

    /// Frames from the partner, numbered from `first`: duplicates dropped, the rest handed over
    /// (or held) in order.
    ///
    /// # Errors
    /// [`Broken`] when one is missing or not text; what came before it was handed over.
    pub fn frames(&mut self, first: u64, frames: Vec<Bytes>) -> Result<(), Broken> {
        let mut outcome = Ok(());
        for (i, bytes) in (first..).zip(frames) {
            match self.inc.arrived(i) {
                Arrival::Deliver => {}
                Arrival::Duplicate => continue,
                Arrival::Gap => {
                    outcome = Err(Broken::Gap);
                    break;
                }
            }
            let Ok(frame) = Frame::from_utf8(bytes) else {
                outcome = Err(Broken::NotText);
                break;
            };
            // Numbered as delivered once queued here; acknowledged only once handed over.
            self.inc.delivered();
            self.pending.push_back(frame);
        }
        // The whole batch under one lock; what does not fit waits here, in order.
        self.release();
        outcome
    }

    /// The partner left after sending `sent` frames.
    pub fn left(&mut self, sent: u64) {
        self.inc.left(sent);
    }

    /// Tells the connection PEER_LEFT once every frame the partner announced was handed over.
    pub fn departure(&mut self) -> Departure {
        if self.told {
            return Departure::NotYet;
        }
        if self.finished() {
            self.told = true;
            self.inbox.peer_left();
            Departure::Told
        } else if self.missing() {
            Departure::Missing
        } else {
            Departure::NotYet
        }
    }

    /// Whether the partner left and every frame it announced was handed over: PEER_LEFT is due
    /// (for a seat that must do something first, then tell it itself).
    pub fn finished(&self) -> bool {
        self.pending.is_empty() && self.inc.finished()
    }

    /// Whether the partner left and frames it announced have not arrived.
    pub fn missing(&self) -> bool {
        self.pending.is_empty() && self.inc.missing_after_departure()
    }

    /// Whether PEER_LEFT was told.
    pub fn told(&self) -> bool {
        self.told
    }

    /// Whether an acknowledgement is owed.
    pub fn ack_pending(&self) -> bool {
        self.inc.ack_pending()
    }

    /// The acknowledgement to send now (`all`: for everything handed over, else only when one is
    /// due); none while frames are held, since they are not handed over yet.
    pub fn ack(&mut self, all: bool) -> Option<u64> {
        if !self.pending.is_empty() {
            return None;
        }
        if all {
            self.inc.flush()
        } else {
            self.inc.take_ack()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn a_window_of_unacknowledged_frames() {
        let now = Instant::now();
        let mut out = Outgoing::new(2);
        assert_eq!(out.send(Bytes::from_static(b"a"), now), 0);
        assert_eq!(out.send(Bytes::from_static(b"b"), now), 1);
        assert!(!out.has_room());
        assert_eq!(out.ack(0, now), Acked::Gap);
        assert!(out.stalled(now + Duration::from_secs(1), Duration::from_secs(1)));
        assert_eq!(out.ack(1, now), Acked::Progress);
        assert_eq!(out.unacked().map(|(s, _)| s).collect::<Vec<_>>(), [1]);
        assert_eq!(out.ack(2, now), Acked::Progress);
        assert!(out.all_acked() && out.has_room());
        assert_eq!(out.ack(2, now), Acked::Nothing);
        assert_eq!(out.sent(), 2);
    }

    #[test]
    fn a_departure_waits_for_every_frame_it_announced() {
        let mut inc = Incoming::default();
        inc.left(2);
        assert!(inc.missing_after_departure() && !inc.finished());
        assert_eq!(inc.arrived(0), Arrival::Deliver);
        inc.delivered();
        assert_eq!(inc.arrived(0), Arrival::Duplicate);
        assert_eq!(inc.arrived(1), Arrival::Deliver);
        inc.delivered();
        assert!(inc.finished());
        assert_eq!(inc.take_ack(), Some(2), "a departure is acknowledged at once");
        assert_eq!(inc.take_ack(), None);
    }

    #[test]
    fn acknowledgements_are_batched_and_flushed() {
        let mut inc = Incoming::default();
        for _ in 0..ACK_EVERY - 1 {
            inc.arrived(inc.expected);
            inc.delivered();
            assert_eq!(inc.take_ack(), None);
        }
        assert!(inc.ack_pending());
        assert_eq!(inc.flush(), Some(ACK_EVERY - 1));
        assert!(!inc.ack_pending());
        for _ in 0..ACK_EVERY {
            inc.arrived(inc.expected);
            inc.delivered();
        }
        assert_eq!(inc.take_ack(), Some(2 * ACK_EVERY - 1));
        assert_eq!(inc.arrived(0), Arrival::Duplicate);
        assert_eq!(inc.take_ack(), Some(2 * ACK_EVERY - 1), "a duplicate is answered at once");
    }

    fn texts(batch: &VecDeque<Frame>) -> Vec<&str> {
        batch.iter().map(Frame::as_str).collect()
    }

    /// What the connection would read from its inbox now.
    fn read(inbox: &Inbox) -> VecDeque<Frame> {
        let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        let mut batch = VecDeque::new();
        let _ = inbox.poll_recv(&mut cx, &mut batch);
        batch
    }

    #[tokio::test]
    async fn an_outbox_hands_out_no_more_than_it_may_take_and_backpressures_its_link() {
        let mut outbox = Outbox::new(3);
        let mut link = outbox.link();
        for text in ["a", "b", "c"] {
            assert!(link.send(Frame::from_static(text)).is_ok());
        }
        assert!(matches!(link.send(Frame::from_static("d")), Err(SendError::Full(_))), "bounded at 3");
        let writable = link.writable();
        // A window with room for two: two taken, the third stays queued.
        assert_eq!(outbox.recv(2).await.as_str(), "a");
        assert_eq!(outbox.try_recv(0).map(|f| f.as_str().to_owned()).as_deref(), Some("b"), "already taken");
        assert!(outbox.try_recv(0).is_none(), "nothing more may be taken");
        assert!(writable.await.is_ok(), "taking made room");
        assert!(link.send(Frame::from_static("d")).is_ok());
        let rest: Vec<String> =
            std::iter::from_fn(|| outbox.try_recv(usize::MAX)).map(|f| f.as_str().to_owned()).collect();
        assert_eq!(rest, ["c", "d"]);
        drop(outbox);
        assert!(matches!(link.send(Frame::from_static("e")), Err(SendError::Gone)));
        assert_eq!(link.writable().await, Err(LinkError::Gone));
    }

    #[test]
    fn a_handover_holds_what_does_not_fit_and_acknowledges_only_what_was_handed_over() {
        let inbox = Inbox::new(2);
        let _rx = super::super::inbox::Receiver::new(Arc::clone(&inbox));
        let mut h = Handover::new(Arc::clone(&inbox));
        let batch = |from: u8, to: u8| (from..to).map(|i| Bytes::from(format!("f{i}"))).collect::<Vec<_>>();
        assert_eq!(h.frames(0, batch(0, 3)), Ok(()));
        assert!(h.holding(), "two fit, one is held");
        assert_eq!(h.ack(true), None, "nothing acknowledged while a frame is held");
        assert_eq!(texts(&read(&inbox)), ["f0", "f1"]);
        h.release();
        assert!(!h.holding());
        assert_eq!(h.ack(true), Some(3));
        // A resend of what was handed over is dropped; a gap is reported after what came before.
        assert_eq!(h.frames(1, batch(1, 5)), Ok(()));
        assert_eq!(h.frames(9, batch(9, 10)), Err(Broken::Gap));
        assert_eq!(texts(&read(&inbox)), ["f2", "f3"]);
        h.release();
        assert_eq!(texts(&read(&inbox)), ["f4"]);
        // Not text: what came before it is handed over.
        let bad = vec![Bytes::from_static(b"f5"), Bytes::from_static(b"\xff")];
        assert_eq!(h.frames(5, bad), Err(Broken::NotText));
        assert_eq!(texts(&read(&inbox)), ["f5"]);
        // PEER_LEFT after exactly the frames announced.
        h.left(7);
        assert!(h.missing() && !h.finished());
        assert_eq!(h.frames(6, batch(6, 7)), Ok(()));
        assert!(h.finished());
        assert_eq!(h.departure(), Departure::Told);
        assert_eq!(h.departure(), Departure::NotYet, "told once");
    }

    proptest! {
        /// Whatever the carrier loses, duplicates or reorders, resending what is unacknowledged
        /// until all is acknowledged delivers every frame once, in order.
        #[test]
        fn exactly_once_in_order_over_a_lossy_carrier(
            n in 1usize..60,
            fate in prop::collection::vec(0u8..4, 0..400),
            window in 1usize..16,
        ) {
            let now = Instant::now();
            let mut out = Outgoing::new(window);
            let mut inc = Incoming::default();
            let mut delivered = Vec::new();
            let mut fate = fate.into_iter().cycle();
            let mut next = 0usize;
            let mut rounds = 0;
            while delivered.len() < n {
                rounds += 1;
                prop_assert!(rounds < 10_000, "no progress");
                while next < n && out.has_room() {
                    out.send(Bytes::from(next.to_string()), now);
                    next += 1;
                }
                // The carrier: 0 loses every other frame (which ones changes by round, so no frame
                // is lost forever), 1 delivers, 2 duplicates, 3 delivers reversed pairs.
                let mut wire: Vec<(u64, Bytes)> = out.unacked().map(|(s, f)| (s, f.clone())).collect();
                match fate.next().unwrap_or(1) {
                    0 => { wire.retain(|(s, _)| (s + rounds) % 2 == 1); }
                    2 => { let copy = wire.clone(); wire.extend(copy); }
                    3 => { for pair in wire.chunks_mut(2) { pair.reverse(); } }
                    _ => {}
                }
                for (seq, frame) in wire {
                    if inc.arrived(seq) == Arrival::Deliver {
                        delivered.push(frame);
                        inc.delivered();
                    }
                }
                if let Some(ack) = inc.flush() {
                    out.ack(ack, now);
                }
            }
            let want: Vec<Bytes> = (0..n).map(|i| Bytes::from(i.to_string())).collect();
            prop_assert_eq!(delivered, want);
        }
    }
}
