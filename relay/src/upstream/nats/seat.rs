//! One seat on the broker: the join protocol, and the task that carries a seat's traffic.
//!
//! Joining (see the module above for the names):
//! 1. subscribe to the seat's subjects, so a partner can reach it as soon as
//!    its slot exists;
//! 2. `create` slot `.a`: taken means this seat waits for a partner;
//! 3. else `create` slot `.b`: refused means the room is full (4002);
//! 4. else read who holds `.a` and ask it to pair (`.j` request). It answers
//!    `ok` once it has told its connection PEER_FOUND. If nobody answers (its
//!    relay is gone) its slot is stale: delete it (only at the revision read,
//!    so a newer holder is never evicted), give `.b` back and start again.
//!
//! When `.b` is taken, both holders are probed (`.p`): if nobody answers for
//! one, its relay died and that slot is freed the same way before another
//! round. Only two live holders make the room full.
//!
//! Membership is only ever decided by `create`, which the broker performs
//! atomically; the read in step 4 only finds the partner's address.
//!
//! After the join, one task per seat forwards the connection's frames to the
//! partner's subject, delivers the partner's frames into the connection's
//! inbox, renews the slot, and on departure sends what is left, frees the
//! slot and tells the partner (`.l`), in that order.

use super::{Shared, OP_TIMEOUT};
use crate::upstream::inbox::Inbox;
use crate::upstream::{BoxFuture, Frame, JoinError, Joined, KillSwitch, LinkError, Mailbox, PeerLink, Seat, SendError};
use async_nats::client::RequestErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::{Message, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use ghostwire_shared::ErrorCode;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{error::Elapsed, timeout, Instant};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Rounds of steps 2-4 before a join gives up (each extra round follows a stale or departing slot).
const ATTEMPTS: u32 = 4;
/// Frames published per pass of a seat task's loop, beyond the first.
const OUT_BATCH: usize = 63;
/// The answer to a pairing request that succeeded.
const PAIRED: &[u8] = b"ok";

/// Takes a seat in the room whose broker name is `room`.
pub(super) async fn join(
    shared: Arc<Shared>,
    tasks: TaskTracker,
    room: String,
    me: Mailbox,
) -> Result<Joined, JoinError> {
    let Some(kv) = shared.bucket() else {
        return Err(JoinError::Unavailable("NATS upstream not ready".into()));
    };
    let count = SeatCount::new(&shared);
    if count.held > shared.max_rooms {
        return Err(JoinError::AtCapacity);
    }
    let id = format!("{}.{}", shared.relay_id, shared.next_seat.fetch_add(1, Relaxed));
    let sub = shared.client.subscribe(format!("{}.*", shared.names.seat(&id))).await.map_err(unavailable)?;
    let (a, b) = (format!("{room}.a"), format!("{room}.b"));
    let value = Bytes::from(id.clone());

    for round in 0..ATTEMPTS {
        match timeout(OP_TIMEOUT, kv.create(&a, value.clone())).await.map_err(unavailable)? {
            Ok(revision) => {
                let seat = SeatTask::new(&shared, kv, id, a, revision, sub, me, count);
                return Ok(Joined::Waiting(seat.spawn(&tasks)));
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e)),
        }
        let revision = match timeout(OP_TIMEOUT, kv.create(&b, value.clone())).await.map_err(unavailable)? {
            Ok(revision) => revision,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                // Full only if two different live seats hold the slots. A holder whose relay died
                // is reclaimed here; one seat seen in both slots is a seat between rounds of its
                // own join (reads are snapshots). Either way, another round decides.
                let holder_b = check_holder(&shared, &kv, &b).await;
                let holder_a = check_holder(&shared, &kv, &a).await;
                match (holder_a, holder_b) {
                    (Holder::Freed, _) | (_, Holder::Freed) => continue,
                    (Holder::Live(x), Holder::Live(y)) if x == y => continue,
                    _ => {}
                }
                shared.metrics.upstream.slot_conflicts.fetch_add(1, Relaxed);
                return Err(JoinError::RoomFull);
            }
            Err(e) => return Err(unavailable(e)),
        };
        let first = match timeout(OP_TIMEOUT, kv.entry(&a)).await {
            Ok(Ok(Some(entry))) if entry.operation == Operation::Put => Some(entry),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => return Err(give_back(&kv, &b, revision, unavailable(e)).await),
            Err(e) => return Err(give_back(&kv, &b, revision, unavailable(e)).await),
        };
        let Some(first) = first else {
            // `.a` was freed since step 2: start again.
            release(&kv, &b, revision).await;
            continue;
        };
        let Some(partner) = std::str::from_utf8(&first.value).ok().filter(|p| is_seat_id(p)).map(str::to_owned) else {
            release(&kv, &a, first.revision).await;
            release(&kv, &b, revision).await;
            continue;
        };
        let asked = shared.client.request(format!("{}.j", shared.names.seat(&partner)), value.clone()).await;
        match asked {
            Ok(reply) if reply.payload.as_ref() == PAIRED => {
                let mut seat = SeatTask::new(&shared, kv, id, b, revision, sub, me, count);
                let link = seat.pair(&partner);
                return Ok(Joined::Paired(seat.spawn(&tasks), Box::new(link)));
            }
            Ok(_) => {
                // The holder of `.a` is leaving or still ending its last pair: its slot frees soon.
                release(&kv, &b, revision).await;
                tokio::time::sleep(Duration::from_millis(20 << round)).await;
            }
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                // Nobody holds that seat any more: its relay died or it is just leaving.
                release(&kv, &a, first.revision).await;
                release(&kv, &b, revision).await;
            }
            Err(e) => return Err(give_back(&kv, &b, revision, unavailable(e)).await),
        }
    }
    Err(JoinError::Unavailable("the room's slots kept changing".into()))
}

/// Who holds a slot, as far as a probe can tell.
enum Holder {
    /// A seat that answered a `.p` probe.
    Live(String),
    /// Free now: it was free when read, or its holder's relay died and the slot was deleted.
    Freed,
    /// Could not tell (a timeout or an error): counted as held.
    Unknown,
}

/// Reads slot `key` and probes its holder. Only "no responders" counts as dead; the slot is then
/// deleted at the revision read, never a newer one.
async fn check_holder(shared: &Shared, kv: &kv::Store, key: &str) -> Holder {
    let entry = match timeout(OP_TIMEOUT, kv.entry(key)).await {
        Ok(Ok(Some(entry))) if entry.operation == Operation::Put => entry,
        Ok(Ok(_)) => return Holder::Freed,
        _ => return Holder::Unknown,
    };
    let Some(seat) = std::str::from_utf8(&entry.value).ok().filter(|s| is_seat_id(s)) else {
        release(kv, key, entry.revision).await;
        return Holder::Freed;
    };
    match shared.client.request(format!("{}.p", shared.names.seat(seat)), Bytes::new()).await {
        Ok(_) => Holder::Live(seat.to_owned()),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => {
            release(kv, key, entry.revision).await;
            Holder::Freed
        }
        Err(_) => Holder::Unknown,
    }
}

fn unavailable(e: impl std::fmt::Display) -> JoinError {
    JoinError::Unavailable(e.to_string())
}

/// Deletes `key` if it is still at `revision` (so a newer holder is never evicted).
async fn release(kv: &kv::Store, key: &str, revision: u64) {
    if let Ok(Err(e)) = timeout(OP_TIMEOUT, kv.delete_expect_revision(key, Some(revision))).await {
        tracing::debug!(error = %e, "slot already changed; not deleted");
    }
}

async fn give_back(kv: &kv::Store, key: &str, revision: u64, why: JoinError) -> JoinError {
    release(kv, key, revision).await;
    why
}

/// `<16 hex>.<number>`: what this relay writes into a slot; anything else in a slot is refused.
fn is_seat_id(s: &str) -> bool {
    match s.split_once('.') {
        Some((relay, n)) => {
            relay.len() == 16
                && relay.bytes().all(|b| b.is_ascii_hexdigit())
                && !n.is_empty()
                && n.len() <= 20
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// One seat counted in `Shared::seats` (the rooms this relay holds); uncounted on drop.
struct SeatCount {
    shared: Arc<Shared>,
    /// Seats held, this one included, when it was counted.
    held: usize,
}

impl SeatCount {
    fn new(shared: &Arc<Shared>) -> SeatCount {
        let held = shared.seats.fetch_add(1, AcqRel) + 1;
        SeatCount { shared: Arc::clone(shared), held }
    }
}

impl Drop for SeatCount {
    fn drop(&mut self) {
        if self.shared.seats.fetch_sub(1, AcqRel) == 1 {
            self.shared.seats_gone.notify_waiters();
        }
    }
}

/// What a renewal came to: the slot's new revision, or why not.
type Renewal = Result<Result<u64, kv::UpdateError>, Elapsed>;

/// The partner's subjects, and the token cancelled when its relay goes silent.
struct Partner {
    frames: Subject,
    left: Subject,
    dead: CancellationToken,
}

/// Where the seat is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Holding `.a`, no partner yet.
    Waiting,
    /// Frames flow both ways.
    Paired,
    /// The partner left or vanished; the slot is free; the connection is closing.
    Ended,
}

struct SeatTask {
    shared: Arc<Shared>,
    kv: kv::Store,
    id: String,
    key: String,
    revision: u64,
    renewed: Instant,
    /// The slot's renewal in flight: polled beside the frames, never holding them up.
    renewing: Option<BoxFuture<'static, Renewal>>,
    sub: Subscriber,
    inbox: Arc<Inbox>,
    kill: KillSwitch,
    outbox: mpsc::Receiver<Frame>,
    /// The sending half of `outbox`, cloned into the connection's link at pairing. Held here, so
    /// `outbox` never closes while the task runs (the departure is `leave`, not a closed queue).
    outbox_tx: mpsc::Sender<Frame>,
    phase: Phase,
    partner: Option<Partner>,
    leave: CancellationToken,
    _count: SeatCount,
}

impl SeatTask {
    #[allow(clippy::too_many_arguments)]
    fn new(
        shared: &Arc<Shared>,
        kv: kv::Store,
        id: String,
        key: String,
        revision: u64,
        sub: Subscriber,
        me: Mailbox,
        count: SeatCount,
    ) -> SeatTask {
        let (tx, outbox) = mpsc::channel(shared.peer_queue);
        SeatTask {
            shared: Arc::clone(shared),
            kv,
            id,
            key,
            revision,
            renewed: Instant::now(),
            renewing: None,
            sub,
            inbox: me.inbox,
            kill: me.kill,
            outbox,
            outbox_tx: tx,
            phase: Phase::Waiting,
            partner: None,
            leave: CancellationToken::new(),
            _count: count,
        }
    }

    /// Starts the task; the returned seat's drop is the connection leaving.
    fn spawn(self, tasks: &TaskTracker) -> Seat {
        let leave = self.leave.clone().drop_guard();
        tasks.spawn(self.run());
        Seat::new(leave)
    }

    /// Becomes paired with seat `partner`; returns the connection's link to it.
    fn pair(&mut self, partner: &str) -> NatsLink {
        let base = self.shared.names.seat(partner);
        let relay = partner.split_once('.').map_or(partner, |(relay, _)| relay);
        self.partner = Some(Partner {
            frames: Subject::from(format!("{base}.f")),
            left: Subject::from(format!("{base}.l")),
            dead: self.shared.liveness.watch(relay),
        });
        self.phase = Phase::Paired;
        NatsLink { tx: self.outbox_tx.clone(), stall: self.shared.stall, me: self.kill.clone() }
    }

    async fn run(mut self) {
        let every = self.shared.slot_ttl / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A partner frame the connection had no room for, and when waiting for room gives up.
        let mut pending: Option<Frame> = None;
        let stalled = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(stalled);
        let mut sub_open = true;
        loop {
            let dead = self.partner.as_ref().map(|p| p.dead.clone());
            let inbox = &self.inbox;
            tokio::select! {
                biased;
                () = self.leave.cancelled() => break,
                () = async { match dead { Some(d) => d.cancelled_owned().await, None => std::future::pending().await } } => {
                    self.shared.metrics.upstream.peers_lost.fetch_add(1, Relaxed);
                    self.end_pair().await;
                }
                room = std::future::poll_fn(|cx| inbox.poll_writable(cx)), if pending.is_some() => {
                    if let (Ok(()), Some(frame)) = (room, pending.take()) {
                        self.deliver(frame, &mut pending, stalled.as_mut());
                    }
                }
                () = &mut stalled, if pending.is_some() => {
                    pending = None;
                    self.kill.kill(ErrorCode::SlowConsumer);
                }
                Some(frame) = self.outbox.recv() => {
                    self.publish(frame).await;
                    // What else is queued goes in the same pass (bounded, so the other direction
                    // is not starved).
                    for _ in 0..OUT_BATCH {
                        let Ok(frame) = self.outbox.try_recv() else { break };
                        self.publish(frame).await;
                    }
                }
                msg = self.sub.next(), if sub_open && pending.is_none() => match msg {
                    Some(msg) => self.on_message(msg, &mut pending, stalled.as_mut()).await,
                    None => {
                        sub_open = false;
                        self.kill.kill(ErrorCode::UpstreamUnavailable);
                    }
                },
                _ = renew.tick(), if self.renewing.is_none() && self.phase != Phase::Ended => {
                    let (kv, key, id, revision) = (self.kv.clone(), self.key.clone(), self.id.clone(), self.revision);
                    self.renewing = Some(Box::pin(async move {
                        timeout(OP_TIMEOUT, kv.update(&key, Bytes::from(id), revision)).await
                    }));
                }
                renewed = async { match self.renewing.as_mut() { Some(r) => r.await, None => std::future::pending().await } },
                    if self.renewing.is_some() =>
                {
                    self.renewing = None;
                    self.renewed(renewed);
                }
            }
        }
        self.depart().await;
    }

    /// Publishes one of the connection's frames to the partner. A publish the client cannot take
    /// within the stall bound ends the connection (4007) rather than lose the frame unseen.
    async fn publish(&mut self, frame: Frame) {
        let Some(p) = &self.partner else { return };
        let sent = timeout(self.shared.stall, self.shared.client.publish(p.frames.clone(), Bytes::from(frame))).await;
        if matches!(sent, Ok(Ok(()))) {
            self.shared.metrics.upstream.frames_out.fetch_add(1, Relaxed);
        } else {
            self.shared.metrics.upstream.publish_errors.fetch_add(1, Relaxed);
            self.kill.kill(ErrorCode::UpstreamUnavailable);
        }
    }

    async fn on_message(
        &mut self,
        msg: Message,
        pending: &mut Option<Frame>,
        stalled: std::pin::Pin<&mut tokio::time::Sleep>,
    ) {
        match msg.subject.as_str().rsplit('.').next() {
            Some("f") if self.phase == Phase::Paired => match Utf8Bytes::try_from(msg.payload) {
                Ok(frame) => {
                    self.shared.metrics.upstream.frames_in.fetch_add(1, Relaxed);
                    self.deliver(frame, pending, stalled);
                }
                Err(_) => tracing::warn!("dropped a frame from NATS that is not UTF-8"),
            },
            Some("j") => {
                let partner = std::str::from_utf8(&msg.payload).ok().filter(|p| is_seat_id(p)).map(str::to_owned);
                let answer: &'static [u8] = match partner {
                    Some(partner) if self.phase == Phase::Waiting => {
                        let link = self.pair(&partner);
                        // Told before the answer goes out, so PEER_FOUND precedes the partner's frames.
                        self.inbox.peer_found(Box::new(link));
                        PAIRED
                    }
                    _ => b"no",
                };
                if let Some(reply) = msg.reply {
                    if self.shared.client.publish(reply, Bytes::from_static(answer)).await.is_err() {
                        self.shared.metrics.upstream.publish_errors.fetch_add(1, Relaxed);
                    }
                }
            }
            Some("l") if self.phase == Phase::Paired => self.end_pair().await,
            Some("p") => {
                if let Some(reply) = msg.reply {
                    if self.shared.client.publish(reply, Bytes::new()).await.is_err() {
                        self.shared.metrics.upstream.publish_errors.fetch_add(1, Relaxed);
                    }
                }
            }
            _ => {}
        }
    }

    /// Queues a partner frame for the connection, or holds it until there is room.
    fn deliver(&mut self, frame: Frame, pending: &mut Option<Frame>, stalled: std::pin::Pin<&mut tokio::time::Sleep>) {
        match self.inbox.push(frame) {
            Ok(()) | Err(SendError::Gone) => {}
            Err(SendError::Full(frame)) => {
                if pending.is_none() {
                    stalled.reset(Instant::now() + self.shared.stall);
                }
                *pending = Some(frame);
            }
        }
    }

    /// The partner is gone: free the slot first, so that once the connection sees PEER_LEFT the
    /// room can be joined again at once.
    async fn end_pair(&mut self) {
        self.partner = None;
        self.phase = Phase::Ended;
        // Without a connection the delete cannot succeed: do not hold PEER_LEFT back for it (the
        // slot then expires, or the next joiner reclaims it).
        if self.shared.client.connection_state() == async_nats::connection::State::Connected {
            self.free_slot().await;
        }
        self.inbox.peer_left();
    }

    /// The outcome of a renewal: a slot lost to expiry or to another holder ends the connection.
    fn renewed(&mut self, outcome: Renewal) {
        match outcome {
            Ok(Ok(revision)) => {
                self.revision = revision;
                self.renewed = Instant::now();
            }
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                tracing::warn!("room slot lost (expired or taken while NATS was away): ending the connection");
                self.kill.kill(ErrorCode::UpstreamUnavailable);
            }
            _ if self.renewed.elapsed() >= self.shared.slot_ttl => {
                tracing::warn!("room slot not renewed within --nats-slot-ttl: ending the connection");
                self.kill.kill(ErrorCode::UpstreamUnavailable);
            }
            _ => {}
        }
    }

    /// Deletes the slot at its latest revision (a renewal in flight is settled first, or the delete
    /// would name a revision that no longer exists).
    async fn free_slot(&mut self) {
        if let Some(renewing) = self.renewing.take() {
            let outcome = renewing.await;
            self.renewed(outcome);
        }
        release(&self.kv, &self.key, self.revision).await;
    }

    /// The connection left: its last frames, then the slot, then the partner's notice.
    async fn depart(mut self) {
        while let Ok(frame) = self.outbox.try_recv() {
            self.publish(frame).await;
        }
        if self.phase != Phase::Ended {
            self.free_slot().await;
        }
        if let Some(p) = self.partner.take() {
            if self.shared.client.publish(p.left, Bytes::new()).await.is_err() {
                self.shared.metrics.upstream.publish_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The connection's link to a partner through the broker: a bounded queue the seat task drains.
struct NatsLink {
    tx: mpsc::Sender<Frame>,
    stall: Duration,
    /// The connection's own switch: a queue the broker does not drain within the stall bound
    /// means NATS is not taking frames (4007).
    me: KillSwitch,
}

impl PeerLink for NatsLink {
    fn send(&mut self, frame: Frame) -> Result<(), SendError> {
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(frame) => SendError::Full(frame),
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
    }

    fn writable(&self) -> BoxFuture<'static, Result<(), LinkError>> {
        let (tx, stall, me) = (self.tx.clone(), self.stall, self.me.clone());
        Box::pin(async move {
            match timeout(stall, tx.reserve()).await {
                Ok(Ok(_permit)) => Ok(()),
                Ok(Err(_)) => Err(LinkError::Gone),
                Err(_) => {
                    me.kill(ErrorCode::UpstreamUnavailable);
                    Err(LinkError::Gone)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_seat_id;

    #[test]
    fn only_seat_ids_are_accepted_from_a_slot() {
        assert!(is_seat_id("0123456789abcdef.42"));
        assert!(!is_seat_id("0123456789abcdef."));
        assert!(!is_seat_id("0123456789abcde.1"));
        assert!(!is_seat_id("0123456789abcdef.1.f"));
        assert!(!is_seat_id("0123456789abcdef.>"));
        assert!(!is_seat_id(""));
    }
}
