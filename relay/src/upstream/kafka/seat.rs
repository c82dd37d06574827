//! One seat of this relay: its join, and the task that carries its traffic through the log.
//!
//! A join writes a JOIN record and waits for the reader to read it back: the verdict (waiting,
//! paired, full) is the log's, the same on every relay. The seat's task then numbers the
//! connection's frames into FRAMES records, at most `--peer-queue` of them unacknowledged
//! (backpressure reaches the client), hands the partner's frames to the connection in order,
//! acknowledges them with ACK records, and on departure writes what is left and a LEAVE record
//! carrying the number of frames sent, so the partner hears PEER_LEFT after exactly those.

use super::log::Seat;
use super::reader::Room;
use super::{wire, Shared, OP_TIMEOUT};
use crate::metrics::LostCause;
use crate::upstream::inbox::Inbox;
use crate::upstream::link::{Broken, Departure, Handover, Outbox, Outgoing, QueueLink, LOST};
use crate::upstream::{Frame, JoinError, Joined, KillSwitch, Mailbox, Seat as SeatGuard};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use ghostwire_shared::ErrorCode;
use rdkafka::producer::DeliveryFuture;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Frames written per record at most (and at most `Shared::max_batch_bytes` of them).
const BATCH: usize = 64;
/// Delivered frames are acknowledged at the latest this long after (or every `ACK_EVERY`).
const ACK_DELAY: Duration = Duration::from_millis(50);

/// What the reader tells a seat: the log's outcomes that concern it.
pub(super) enum Event {
    /// The join was admitted; the seat waits for a partner.
    Waiting,
    /// The room has its two seats: `partner` is the other one.
    Paired {
        /// The other seat.
        partner: Seat,
    },
    /// The join was refused: two seats hold the room.
    Full,
    /// The join was refused: the room is burnt.
    Burnt,
    /// Frames from the partner, numbered from `first`.
    Frames {
        /// The first frame's number.
        first: u64,
        /// The frames.
        frames: Vec<Bytes>,
    },
    /// The partner delivered every frame below `next`.
    Ack {
        /// The next frame it expects.
        next: u64,
    },
    /// The partner left after `sent` frames.
    Left {
        /// Frames it sent in all.
        sent: u64,
    },
    /// The seat cannot go on.
    Lost(LostWhy),
}

/// Why a seat was lost.
#[derive(Debug, Clone, Copy)]
pub(super) enum LostWhy {
    /// This relay lapsed in the log, or cannot read it.
    ThisRelay,
    /// The partner's relay lapsed.
    PartnerRelay,
}

/// What the seat's task answers the join: the guard whose drop is the departure, and the link
/// when the room was paired by this join.
type Verdict = Result<(DropGuard, Option<QueueLink>), JoinError>;

/// Takes a seat in `room` for the connection that owns `me`.
pub(super) async fn join(
    shared: Arc<Shared>,
    tasks: &TaskTracker,
    room: Room,
    me: Mailbox,
) -> Result<Joined, JoinError> {
    if !shared.health.ready.load(Ordering::Acquire) {
        let why = shared.health.trouble().unwrap_or_else(|| "Kafka upstream not ready".into());
        return Err(JoinError::Unavailable(why));
    }
    let count = SeatCount::new(&shared);
    if count.held > shared.max_rooms {
        return Err(JoinError::AtCapacity);
    }
    let (answer, verdict) = oneshot::channel();
    // The seat runs in its own task, so a connection that goes away mid-join cannot leave a
    // seat behind: the task sees the answer unread (its guard dropped) and leaves.
    tasks.spawn(SeatTask::new(shared, room, me, count).run(answer));
    match verdict.await {
        Ok(Ok((guard, None))) => Ok(Joined::Waiting(SeatGuard::new(guard))),
        Ok(Ok((guard, Some(link)))) => Ok(Joined::Paired(SeatGuard::new(guard), Box::new(link))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(JoinError::Unavailable("the join's task ended".into())),
    }
}

/// One seat counted in `Shared::open`; uncounted (and unregistered) on drop.
struct SeatCount {
    shared: Arc<Shared>,
    /// Seats held, this one included, when it was counted.
    held: usize,
    /// The seat's number once registered with the reader.
    n: Option<u64>,
}

impl SeatCount {
    fn new(shared: &Arc<Shared>) -> SeatCount {
        let held = shared.open.fetch_add(1, Ordering::AcqRel) + 1;
        SeatCount { shared: Arc::clone(shared), held, n: None }
    }
}

impl Drop for SeatCount {
    fn drop(&mut self) {
        if let Some(n) = self.n {
            self.shared.seats.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
        }
        if self.shared.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.seats_gone.notify_waiters();
        }
    }
}

struct SeatTask {
    shared: Arc<Shared>,
    seat: Seat,
    room: Room,
    inbox: Arc<Inbox>,
    kill: KillSwitch,
    events: mpsc::UnboundedReceiver<Event>,
    /// What the connection queued for the partner.
    outbox: Outbox,
    partner: Option<Seat>,
    out: Outgoing,
    recv: Handover,
    /// Records written and not yet taken by the log.
    deliveries: FuturesUnordered<DeliveryFuture>,
    leave: CancellationToken,
    /// The pair was lost: the departure says so ([`LOST`]).
    was_lost: bool,
    _count: SeatCount,
}

impl SeatTask {
    fn new(shared: Arc<Shared>, room: Room, me: Mailbox, count: SeatCount) -> SeatTask {
        let outbox = Outbox::new(shared.peer_queue);
        let out = Outgoing::new(shared.peer_queue).timed(shared.metrics.upstream.handover_seconds.clone());
        // Numbered when its join is written (see `verdict`); until then it hears nothing.
        let (_, events) = mpsc::unbounded_channel();
        SeatTask {
            seat: Seat { relay: shared.relay, n: 0 },
            shared,
            room,
            recv: Handover::new(Arc::clone(&me.inbox)),
            inbox: me.inbox,
            kill: me.kill,
            events,
            outbox,
            partner: None,
            out,
            deliveries: FuturesUnordered::new(),
            leave: CancellationToken::new(),
            was_lost: false,
            _count: count,
        }
    }

    /// Writes `value` to the room's partition; `false` if the producer refused it.
    fn write(&mut self, value: &[u8]) -> bool {
        match self.shared.produce(&self.room, value) {
            Some(delivery) => {
                self.deliveries.push(delivery);
                true
            }
            None => false,
        }
    }

    async fn run(mut self, answer: oneshot::Sender<Verdict>) {
        if self.verdict(answer).await {
            self.serve().await;
        }
        self.depart().await;
    }

    /// Writes the JOIN and answers the join with what the log decided. `false` when the seat
    /// ends here.
    async fn verdict(&mut self, mut answer: oneshot::Sender<Verdict>) -> bool {
        let unavailable = |why: &str| Err(JoinError::Unavailable(why.to_owned()));
        let (tx, events) = mpsc::unbounded_channel();
        self.events = events;
        let (seat, delivery) = self.shared.join(&self.room, tx);
        self.seat = seat;
        self._count.n = Some(seat.n);
        match delivery {
            Some(delivery) => self.deliveries.push(delivery),
            None => {
                let _ = answer.send(unavailable("the Kafka producer's queue is full"));
                return false;
            }
        }
        let deadline = tokio::time::sleep(self.shared.peer_timeout.max(OP_TIMEOUT));
        tokio::pin!(deadline);
        let guard = || self.leave.clone().drop_guard();
        let verdict: Verdict = loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(Event::Waiting) => break Ok((guard(), None)),
                    Some(Event::Paired { partner }) => {
                        self.partner = Some(partner);
                        break Ok((guard(), Some(self.outbox.link())));
                    }
                    Some(Event::Full) => break Err(JoinError::RoomFull),
                    Some(Event::Burnt) => break Err(JoinError::Burnt),
                    Some(Event::Lost(_)) | None => break unavailable("lost the connection to Kafka"),
                    Some(_) => {}
                },
                Some(delivered) = self.deliveries.next() => {
                    if !matches!(delivered, Ok(Ok(_))) {
                        self.shared.metrics.upstream.publish_errors.inc();
                        break unavailable("Kafka did not take the join");
                    }
                }
                () = &mut deadline => break unavailable("Kafka did not answer the join in time"),
                () = answer.closed() => return false,
            }
        };
        let admitted = verdict.is_ok();
        // An unread answer drops its guard, which is the departure.
        let _ = answer.send(verdict);
        admitted
    }

    /// Carries the seat's traffic until the connection leaves.
    async fn serve(&mut self) {
        let ack_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(ack_timer);
        let mut ack_armed = false;
        loop {
            if !ack_armed && self.recv.ack_pending() {
                ack_timer.as_mut().reset(Instant::now() + ACK_DELAY);
                ack_armed = true;
            }
            let holding = self.recv.holding();
            tokio::select! {
                biased;
                () = self.leave.cancelled() => return,
                () = self.recv.room(), if holding => {
                    self.recv.release();
                    self.check_departure();
                    self.acknowledge(false);
                }
                frame = self.outbox.recv(self.out.room()), if self.partner.is_some() && self.out.has_room() => {
                    self.write_frames(frame, true);
                }
                // The partner's frames wait while the connection has no room (the sender's window
                // bounds them), and so does everything after them, which keeps the order.
                event = self.events.recv(), if !holding => match event {
                    Some(event) => self.on_event(event),
                    None => self.kill.kill(ErrorCode::UpstreamUnavailable),
                },
                Some(delivered) = self.deliveries.next() => {
                    if !matches!(delivered, Ok(Ok(_))) {
                        self.shared.metrics.upstream.publish_errors.inc();
                        tracing::debug!("Kafka did not take a record of a seat: its pair is lost");
                        self.lost(LostCause::Delivery);
                    }
                }
                () = &mut ack_timer, if ack_armed => {
                    ack_armed = false;
                    self.acknowledge(true);
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Paired { partner } if self.partner.is_none() => {
                self.partner = Some(partner);
                self.inbox.peer_found(Box::new(self.outbox.link()));
            }
            Event::Frames { first, frames } => match self.recv.frames(first, frames) {
                Ok(()) => self.acknowledge(false),
                Err(Broken::Gap) => {
                    tracing::debug!("frames missing from the log: the pair is lost");
                    self.lost(LostCause::Delivery);
                }
                Err(Broken::NotText) => {
                    self.shared.metrics.upstream.foreign_messages.inc();
                    self.lost(LostCause::Delivery);
                }
            },
            Event::Ack { next } => {
                self.out.ack(next, Instant::now());
            }
            Event::Left { sent: LOST } => {
                tracing::debug!("the partner's seat was lost");
                self.lost(LostCause::PartnerRelay);
            }
            Event::Left { sent } => {
                self.recv.left(sent);
                self.check_departure();
                self.acknowledge(false);
            }
            Event::Lost(LostWhy::PartnerRelay) => {
                tracing::debug!("the partner's relay lapsed in the log");
                self.lost(LostCause::PartnerRelay);
            }
            Event::Lost(LostWhy::ThisRelay) => {
                tracing::debug!("this relay lapsed in the log, or cannot read it");
                self.lost(LostCause::ThisRelay);
            }
            Event::Paired { .. } | Event::Waiting | Event::Full | Event::Burnt => {}
        }
    }

    /// Numbers `first` and what else is queued (within the window when `windowed`) into one
    /// FRAMES record.
    fn write_frames(&mut self, first: Frame, windowed: bool) {
        let mut frames = vec![first.into_bytes()];
        let mut bytes = frames[0].len();
        while frames.len() < BATCH && bytes < self.shared.max_batch_bytes {
            let max = if windowed { self.out.room().saturating_sub(frames.len()) } else { usize::MAX };
            let Some(frame) = self.outbox.try_recv(max) else { break };
            bytes += frame.len();
            frames.push(frame.into_bytes());
        }
        let now = Instant::now();
        let number = self.out.next_seq();
        for frame in &frames {
            self.out.send(frame.clone(), now);
        }
        let count = frames.len() as u64;
        if self.write(&wire::frames(self.seat, number, &frames)) {
            self.shared.metrics.upstream.frames_out.inc_by(count);
        } else {
            self.lost(LostCause::Delivery);
        }
    }

    /// Tells the connection PEER_LEFT once every frame the partner announced was handed over;
    /// frames announced and never seen are lost (the log has them all before the departure).
    fn check_departure(&mut self) {
        if self.recv.departure() == Departure::Missing {
            tracing::debug!("the partner left, and frames it announced are missing from the log");
            self.lost(LostCause::Delivery);
        }
    }

    /// Writes the acknowledgement due now (`all`: everything delivered so far). Nothing while
    /// frames wait for the connection to make room: they are not handed over yet.
    fn acknowledge(&mut self, all: bool) {
        if let (Some(next), Some(_)) = (self.recv.ack(all), self.partner) {
            self.write(&wire::ack(self.seat, next));
        }
    }

    /// Delivery can no longer be guaranteed: the connection ends with 4011 (or 4007 while no
    /// partner was found).
    fn lost(&mut self, cause: LostCause) {
        if std::mem::replace(&mut self.was_lost, true) {
            return;
        }
        let code = if self.partner.is_some() { ErrorCode::PeerLost } else { ErrorCode::UpstreamUnavailable };
        if code == ErrorCode::PeerLost {
            self.shared.metrics.upstream.peers_lost.inc(cause);
        }
        self.kill.kill(code);
    }

    /// Writes what the connection queued before leaving and the departure, and waits (bounded)
    /// for the log to take them.
    async fn depart(&mut self) {
        if self.partner.is_some() && !self.was_lost {
            while let Some(frame) = self.outbox.try_recv(usize::MAX) {
                self.write_frames(frame, false);
            }
        }
        // A lost seat's partner must not read a departure (PEER_LEFT): it was not one.
        let sent = if self.was_lost && self.partner.is_some() { LOST } else { self.out.sent() };
        self.write(&wire::leave(self.seat, sent));
        let taken = async { while self.deliveries.next().await.is_some() {} };
        let _ = tokio::time::timeout(OP_TIMEOUT, taken).await;
    }
}
