//! One seat of this relay: its join at the room's owner, and the task that carries its traffic
//! straight to the partner's relay.
//!
//! The join asks the owner (which may be this relay) and waits for its verdict. Admitted second,
//! the seat tells its partner's relay `Paired` itself, on the same link its frames will take,
//! so the partner hears of it before any frame (the owner tells it too, in case this relay
//! dies first). The task then numbers the connection's frames, at most `--peer-queue`
//! unacknowledged (backpressure reaches the client), hands the partner's frames to the
//! connection in order and acknowledges them once handed over, and on departure sends what is
//! left, then `Left` with the number of frames sent, and frees the room at the owner.

use super::wire::{Msg, SeatRef, Verdict};
use super::Shared;
use crate::metrics::LostCause;
use crate::upstream::inbox::Inbox;
use crate::upstream::link::{Broken, Handover, Outbox, Outgoing, QueueLink, LOST};
use crate::upstream::{Frame, JoinError, Joined, KillSwitch, Mailbox, RoomId, Seat as SeatGuard};
use bytes::Bytes;
use ghostwire_shared::ErrorCode;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Frames per message at most.
const BATCH: usize = 64;
/// Delivered frames are acknowledged at the latest this long after (or every `ACK_EVERY`).
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Time for the owner's verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the mesh tells a seat.
#[derive(Debug)]
pub(super) enum Event {
    /// The owner `owner` decided the join.
    Verdict { owner: u64, verdict: Verdict },
    /// The partner is `partner` (told by the owner or by the partner's relay).
    Paired { partner: SeatRef },
    /// Frames from seat `from`, numbered from `first`.
    Frames { from: SeatRef, first: u64, frames: Vec<Bytes> },
    /// Seat `from` delivered every frame below `next`.
    Ack { from: SeatRef, next: u64 },
    /// Seat `from` left after `sent` frames.
    Left { from: SeatRef, sent: u64 },
    /// The partner's relay does not know the partner: the pair is lost.
    Gone,
    /// Relay `relay` was given up.
    RelayLost(u64),
}

/// The guard whose drop is the departure, and the link when this join paired the room.
type Verdicted = Result<(DropGuard, Option<QueueLink>), JoinError>;

/// Takes a seat in `room` for the connection that owns `me`.
pub(super) async fn join(
    shared: Arc<Shared>,
    tasks: &TaskTracker,
    room: RoomId,
    me: Mailbox,
) -> Result<Joined, JoinError> {
    if shared.introducer {
        return Err(JoinError::Unavailable("this relay is a mesh introducer and serves no rooms".into()));
    }
    let held = shared.open.fetch_add(1, Ordering::AcqRel) + 1;
    let count = SeatCount(Arc::clone(&shared), None);
    if held > shared.max_rooms {
        return Err(JoinError::AtCapacity);
    }
    let (answer, verdict) = oneshot::channel();
    // Its own task, so a connection gone mid-join cannot leave a seat behind at the owner.
    tasks.spawn(SeatTask::new(shared, room, me, count).run(answer));
    match verdict.await {
        Ok(Ok((guard, None))) => Ok(Joined::Waiting(SeatGuard::new(guard))),
        Ok(Ok((guard, Some(link)))) => Ok(Joined::Paired(SeatGuard::new(guard), Box::new(link))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(JoinError::Unavailable("the join's task ended".into())),
    }
}

/// One seat counted in `Shared::open` (and registered by number once it has one).
struct SeatCount(Arc<Shared>, Option<u64>);

impl Drop for SeatCount {
    fn drop(&mut self) {
        if let Some(n) = self.1 {
            self.0.seats.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
        }
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.seats_gone.notify_waiters();
        }
    }
}

struct SeatTask {
    shared: Arc<Shared>,
    me: SeatRef,
    room: RoomId,
    owner: Option<u64>,
    /// Owners this room had before, for a pair whose room moved with a roster change: each keeps
    /// the pair's record (it answers a stale joiner "full") until the pair leaves.
    former: Vec<u64>,
    /// Wakes at every roster change: the room may have moved.
    roster: tokio::sync::watch::Receiver<u64>,
    inbox: Arc<Inbox>,
    kill: KillSwitch,
    events: mpsc::UnboundedReceiver<Event>,
    /// Events that came before the verdict, replayed after it in order.
    early: VecDeque<Event>,
    /// What the connection queued for the partner.
    outbox: Outbox,
    partner: Option<SeatRef>,
    out: Outgoing,
    recv: Handover,
    /// The pair was lost (the connection is being ended).
    ended: bool,
    leave: CancellationToken,
    _count: SeatCount,
}

impl SeatTask {
    fn new(shared: Arc<Shared>, room: RoomId, me: Mailbox, mut count: SeatCount) -> SeatTask {
        let n = shared.next_seat.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::unbounded_channel();
        shared.seats.lock().unwrap_or_else(|p| p.into_inner()).insert(n, tx);
        count.1 = Some(n);
        let outbox = Outbox::new(shared.peer_queue);
        let roster = shared.roster.changes();
        SeatTask {
            me: SeatRef { relay: shared.links.me(), n },
            out: Outgoing::new(shared.peer_queue).timed(shared.metrics.upstream.handover_seconds.clone()),
            shared,
            room,
            owner: None,
            former: Vec::new(),
            roster,
            recv: Handover::new(Arc::clone(&me.inbox)),
            inbox: me.inbox,
            kill: me.kill,
            events,
            early: VecDeque::new(),
            outbox,
            partner: None,
            ended: false,
            leave: CancellationToken::new(),
            _count: count,
        }
    }

    async fn run(mut self, answer: oneshot::Sender<Verdicted>) {
        if self.verdict(answer).await {
            while let Some(event) = self.early.pop_front() {
                self.on_event(event);
            }
            self.serve().await;
        }
        self.depart().await;
    }

    /// Sends the join to the room's owner as this relay sees the roster.
    fn ask_owner(&mut self) -> bool {
        let Some(owner) = self.shared.owner(&self.room.bytes()) else { return false };
        self.owner = Some(owner);
        self.shared.links.send(owner, Msg::Join { room: self.room.bytes(), seat: self.me.n })
    }

    /// Asks the owner and answers the join with its verdict. `false` when the seat ends here.
    async fn verdict(&mut self, answer: oneshot::Sender<Verdicted>) -> bool {
        let mut answer = Some(answer);
        let unavailable = |why: &str| Err(JoinError::Unavailable(why.to_owned()));
        if !self.ask_owner() {
            if let Some(answer) = answer.take() {
                let _ = answer.send(unavailable("no relay of the mesh can be reached"));
            }
            return false;
        }
        let deadline = tokio::time::sleep(VERDICT_TIMEOUT);
        tokio::pin!(deadline);
        let verdict: Verdicted = loop {
            let closed = async {
                match answer.as_mut() {
                    Some(a) => a.closed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(Event::Verdict { owner, verdict }) if Some(owner) == self.owner => match verdict {
                        Verdict::Waiting => break Ok((self.leave.clone().drop_guard(), None)),
                        Verdict::Paired(first) => {
                            self.paired_with(first);
                            break Ok((self.leave.clone().drop_guard(), Some(self.outbox.link())));
                        }
                        Verdict::Full => {
                            self.shared.metrics.upstream.slot_conflicts.inc();
                            self.owner = None;
                            break Err(JoinError::RoomFull);
                        }
                        Verdict::Refused => {
                            self.owner = None;
                            break unavailable("the room's relay is not admitting new rooms now");
                        }
                        Verdict::Burnt => {
                            self.owner = None;
                            break Err(JoinError::Burnt);
                        }
                    },
                    Some(Event::RelayLost(relay)) if Some(relay) == self.owner => {
                        self.owner = None;
                        break unavailable("the room's relay was lost");
                    }
                    Some(Event::Verdict { .. }) => self.shared.metrics.upstream.foreign_messages.inc(),
                    Some(event) => self.early.push_back(event),
                    None => break unavailable("the mesh stopped"),
                },
                () = &mut deadline => break unavailable("the room's relay did not answer in time"),
                // Gone mid-join: the verdict is still awaited, so the departure frees what it
                // was given (and tells a partner it was paired with).
                () = closed => answer = None,
            }
        };
        let admitted = verdict.is_ok();
        match answer {
            Some(answer) => answer.send(verdict).is_ok() && admitted,
            None => false,
        }
    }

    /// This join paired the room with `first`: its relay hears it from us before any frame.
    fn paired_with(&mut self, first: SeatRef) {
        self.partner = Some(first);
        self.shared.links.send(first.relay, Msg::Paired { to: first.n, partner: self.me });
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
                    self.send_frames(frame, true);
                }
                // The partner's frames wait while the connection has no room (the sender's window
                // bounds them), and so does everything after them, which keeps the order.
                event = self.events.recv(), if !holding => match event {
                    Some(event) => self.on_event(event),
                    None => self.kill.kill(ErrorCode::UpstreamUnavailable),
                },
                () = &mut ack_timer, if ack_armed => {
                    ack_armed = false;
                    self.acknowledge(true);
                }
                Ok(()) = self.roster.changed() => self.rehome(),
            }
        }
    }

    fn is_partner(&self, from: SeatRef) -> bool {
        let ok = self.partner == Some(from);
        if !ok {
            self.shared.metrics.upstream.foreign_messages.inc();
        }
        ok
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Paired { partner } => match self.partner {
                None => {
                    self.partner = Some(partner);
                    self.inbox.peer_found(Box::new(self.outbox.link()));
                }
                Some(known) if known == partner => {}
                Some(_) => self.shared.metrics.upstream.foreign_messages.inc(),
            },
            Event::Frames { from, first, frames } => {
                if !self.is_partner(from) {
                    return;
                }
                self.shared.metrics.upstream.frames_in.inc_by(frames.len() as u64);
                match self.recv.frames(first, frames) {
                    Ok(()) => self.acknowledge(false),
                    Err(Broken::Gap) => self.lost(LostCause::Delivery, "frames missing from the link"),
                    Err(Broken::NotText) => {
                        self.shared.metrics.upstream.foreign_messages.inc();
                        self.lost(LostCause::Delivery, "a frame that is not UTF-8");
                    }
                }
            }
            Event::Ack { from, next } => {
                if self.is_partner(from) {
                    self.out.ack(next, Instant::now());
                }
            }
            Event::Left { from, sent: LOST } => {
                if self.is_partner(from) && !self.ended && !self.recv.told() {
                    self.lost(LostCause::PartnerRelay, "the partner's seat was lost");
                }
            }
            Event::Left { from, sent } => {
                if self.is_partner(from) {
                    self.recv.left(sent);
                    self.check_departure();
                }
            }
            Event::Gone => {
                if !self.ended && !self.recv.told() {
                    self.lost(LostCause::PartnerRelay, "the partner's relay no longer knows the partner");
                }
            }
            Event::RelayLost(relay) => {
                if self.partner.is_some_and(|p| p.relay == relay) {
                    if !self.ended && !self.recv.told() {
                        self.lost(LostCause::PartnerRelay, "the partner's relay was lost");
                    }
                } else if self.owner == Some(relay) {
                    // The room's owner is gone: the room is recorded at the new owner.
                    self.rehome();
                }
            }
            Event::Verdict { owner, verdict } if Some(owner) == self.owner && self.partner.is_none() => match verdict {
                Verdict::Waiting => {}
                Verdict::Paired(first) => {
                    self.paired_with(first);
                    self.inbox.peer_found(Box::new(self.outbox.link()));
                }
                Verdict::Full => self.lost(LostCause::Delivery, "the room filled while its owner changed"),
                Verdict::Refused => {
                    self.lost(LostCause::ThisRelay, "the room's new owner is not admitting new rooms now")
                }
                Verdict::Burnt => self.lost(LostCause::Delivery, "the room was burnt while its owner changed"),
            },
            Event::Verdict { .. } => {}
        }
    }

    /// The roster changed, or the owner was given up: when the room has another owner now, the
    /// seat records itself there (`Hold`: with its partner, or waiting), so that owner knows the
    /// room is taken. A waiting seat leaves the previous owner; a paired one leaves its record
    /// there until the pair ends.
    fn rehome(&mut self) {
        let Some(before) = self.owner else { return };
        let Some(now) = self.shared.owner(&self.room.bytes()) else {
            if self.partner.is_none() {
                self.lost(LostCause::ThisRelay, "no relay of the mesh can be reached");
            }
            return;
        };
        if now == before {
            return;
        }
        let room = self.room.bytes();
        if self.partner.is_none() {
            self.shared.links.send(before, Msg::Leave { room, seat: self.me.n });
        } else if !self.former.contains(&before) {
            self.former.push(before);
        }
        self.former.retain(|r| *r != now);
        self.owner = Some(now);
        let held = Msg::Hold { room, seat: self.me.n, partner: self.partner };
        if !self.shared.links.send(now, held) && self.partner.is_none() {
            self.lost(LostCause::ThisRelay, "no relay of the mesh can be reached");
        }
    }

    /// Sends `first` and what else is queued (within the window when `windowed`) as one message.
    fn send_frames(&mut self, first: Frame, windowed: bool) {
        let Some(partner) = self.partner else { return };
        let mut frames = vec![first.into_bytes()];
        let mut bytes = frames[0].len();
        while frames.len() < BATCH && bytes < self.shared.max_batch_bytes {
            let max = if windowed { self.out.room().saturating_sub(frames.len()) } else { usize::MAX };
            let Some(frame) = self.outbox.try_recv(max) else { break };
            bytes += frame.len();
            frames.push(frame.into_bytes());
        }
        let now = Instant::now();
        let first = self.out.next_seq();
        for frame in &frames {
            self.out.send(frame.clone(), now);
        }
        let count = frames.len() as u64;
        // The link keeps what it was given until the partner's relay has it; the window here
        // bounds what waits for the partner's connection (acknowledged once handed over).
        let sent = Msg::Frames { to: partner.n, from: self.me.n, first, frames };
        if self.shared.links.send(partner.relay, sent) {
            self.shared.metrics.upstream.frames_out.inc_by(count);
        } else {
            self.lost(LostCause::PartnerRelay, "the partner's relay is not linked");
        }
    }

    /// Tells the connection PEER_LEFT once every frame the partner announced was handed over.
    /// (Frames announced and not yet here are still on their way: the link delivers in order.)
    fn check_departure(&mut self) {
        let _ = self.recv.departure();
    }

    /// Sends the acknowledgement due now (`all`: everything handed over so far).
    fn acknowledge(&mut self, all: bool) {
        if let (Some(next), Some(partner)) = (self.recv.ack(all), self.partner) {
            self.shared.links.send(partner.relay, Msg::Ack { to: partner.n, from: self.me.n, next });
        }
    }

    /// Delivery can no longer be guaranteed: 4011 (or 4007 while no partner was found).
    fn lost(&mut self, cause: LostCause, why: &str) {
        tracing::debug!(why, "a mesh seat is lost");
        self.ended = true;
        let code = if self.partner.is_some() { ErrorCode::PeerLost } else { ErrorCode::UpstreamUnavailable };
        if code == ErrorCode::PeerLost {
            self.shared.metrics.upstream.peers_lost.inc(cause);
        }
        self.kill.kill(code);
    }

    /// Sends what the connection queued before leaving and the departure, and frees the room
    /// at its owner: the seat is counted until the owner has it (bounded), so a room this relay
    /// reports empty is free to join again at once.
    async fn depart(&mut self) {
        if let Some(partner) = self.partner {
            while let Some(frame) = self.outbox.try_recv(usize::MAX).filter(|_| !self.ended) {
                self.send_frames(frame, false);
            }
            // A lost seat's partner must not read a departure (PEER_LEFT): it was not one.
            let sent = if self.ended { LOST } else { self.out.sent() };
            self.shared.links.send(partner.relay, Msg::Left { to: partner.n, from: self.me.n, sent });
        }
        for former in std::mem::take(&mut self.former) {
            self.shared.links.send(former, Msg::Leave { room: self.room.bytes(), seat: self.me.n });
        }
        if let Some(owner) = self.owner {
            let leave = Msg::Leave { room: self.room.bytes(), seat: self.me.n };
            self.shared.links.send_handled(owner, leave, VERDICT_TIMEOUT).await;
        }
    }
}
