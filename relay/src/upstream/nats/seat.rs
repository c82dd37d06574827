//! One seat on the broker: the join protocol, and the task that carries a seat's traffic.
//!
//! Every message to a seat goes to `<prefix>.seat.<to>.<kind>.<from>`, where `<to>` and
//! `<from>` are seat ids (`<relay>.<counter>`): the subject names the sender, and a seat accepts
//! pairing, frames, acknowledgements and departures only from the seat it is paired (or being
//! paired) with. Anything else (a stale seat, a confused relay) is dropped and counted.
//!
//! | kind | carries | meaning |
//! |---|---|---|
//! | `j` | request | "pair with me": the holder of `.a` reserves itself for the sender (phase one) |
//! | `c` | request | "commit": the holder tells its connection PEER_FOUND, then answers (phase two) |
//! | `x` | — | the joiner gave up between the phases: the reservation (or pair) ends |
//! | `f` | `n` ‖ (length ‖ frame)… | frames numbered from `n` (8 bytes, big-endian), each a 4-byte length and the frame byte for byte |
//! | `k` | `n` | acknowledgement: every frame below `n` was handed to the connection |
//! | `l` | `n` | departure after `n` frames |
//! | `p` | request | probe: "are you alive?" |
//!
//! Joining:
//! 1. subscribe to the seat's subjects, so a partner can reach it as soon as its slot exists;
//! 2. `create` slot `.a`: taken means this seat waits for a partner;
//! 3. else `create` slot `.b`: refused means the room is full (4002), unless a holder is dead
//!    (probed with `p`: no responders), whose slot is then deleted at the revision read;
//! 4. else read who holds `.a`, reserve it (`j`), then commit (`c`). A pair exists once both
//!    answered; if the second answer does not come, the joiner gives `.b` back and tells the
//!    holder (`x`), and a holder that hears no commit returns to waiting on its own. No
//!    half-paired seat is left behind.
//!
//! Membership is only ever decided by `create`, which the broker performs atomically.
//!
//! After the join, one task per seat forwards the connection's frames, numbered (see
//! [`link`](crate::upstream::link)), delivers the partner's in order into the connection's
//! inbox, acknowledges them, sends again what the partner has not acknowledged after a
//! reconnect, and renews the slot (making it again if a restarted server lost it). A partner
//! not heard within `--nats-peer-timeout` ends the connection with 4011 (peer lost). On
//! departure it sends what is left, frees the slot and announces the departure with the number
//! of frames sent, then stays until they are acknowledged (bounded by the peer timeout).

use super::{Shared, OP_TIMEOUT};
use crate::metrics::LostCause;
use crate::upstream::inbox::Inbox;
use crate::upstream::link::{Acked, Broken, Handover, Outbox, Outgoing, QueueLink};
use crate::upstream::{BoxFuture, Frame, JoinError, Joined, KillSwitch, Mailbox, Seat};
use async_nats::client::RequestErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::{Message, Subscriber};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use ghostwire_shared::ErrorCode;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{error::Elapsed, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Rounds of steps 2-4 before a join gives up (each extra round follows a stale or departing slot).
const ATTEMPTS: u32 = 4;
/// Broker messages handled per pass of a seat task's loop, in each direction.
const BATCH: usize = 64;
/// The answer to a pairing request that succeeded.
const PAIRED: &[u8] = b"ok";
/// Unacknowledged frames are sent again after this long without an acknowledgement.
const RESEND_AFTER: Duration = Duration::from_millis(500);
/// Delivered frames are acknowledged at the latest this long after (or every `ACK_EVERY`).
const ACK_DELAY: Duration = Duration::from_millis(100);
/// A publish that the client library does not take this fast is left to the resend (the frame
/// stays in the window), so a broker outage never blocks the seat's task.
const PUBLISH_WAIT: Duration = Duration::from_millis(200);

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
    // A burnt room is refused before any slot is taken. A joiner that checked just before a
    // burn may still wait in `.a`, but it is never paired: whoever takes `.b` checks again.
    not_burnt(&shared, &room).await?;
    let id = format!("{}.{}", shared.relay_id, shared.next_seat.fetch_add(1, Relaxed));
    let sub = shared.client.subscribe(format!("{}.>", shared.names.seat(&id))).await.map_err(unavailable)?;
    // A round trip, so the server has the subscription before any slot names this seat: a
    // partner that reads the slot can always reach it ("no responders" then means gone).
    timeout(OP_TIMEOUT, shared.client.flush()).await.map_err(unavailable)?.map_err(unavailable)?;
    let (a, b) = (format!("{room}.a"), format!("{room}.b"));

    for round in 0..ATTEMPTS {
        match timeout(OP_TIMEOUT, kv.create(&a, shared.slot_value(&a, &id))).await.map_err(unavailable)? {
            Ok(revision) => {
                let seat = SeatTask::new(&shared, kv, id, a, revision, sub, me, count);
                return Ok(Joined::Waiting(seat.spawn(&tasks)));
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e)),
        }
        let revision =
            match timeout(OP_TIMEOUT, kv.create(&b, shared.slot_value(&b, &id))).await.map_err(unavailable)? {
                Ok(revision) => revision,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    // Full only if two different live seats hold the slots. A holder whose relay died
                    // is reclaimed here; one seat seen in both slots is a seat between rounds of its
                    // own join (reads are snapshots). Either way, another round decides.
                    let holder_b = check_holder(&shared, &kv, &b, &id).await;
                    let holder_a = check_holder(&shared, &kv, &a, &id).await;
                    match (holder_a, holder_b) {
                        (Holder::Freed, _) | (_, Holder::Freed) => continue,
                        (Holder::Live(x), Holder::Live(y)) if x == y => continue,
                        _ => {}
                    }
                    shared.metrics.upstream.slot_conflicts.inc();
                    return Err(JoinError::RoomFull);
                }
                Err(e) => return Err(unavailable(e)),
            };
        if let Err(e) = not_burnt(&shared, &room).await {
            return Err(give_back(&kv, &b, revision, e).await);
        }
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
        let Some(partner) = shared.slot_holder(&a, &first.value).map(str::to_owned) else {
            release(&kv, &a, first.revision).await;
            release(&kv, &b, revision).await;
            continue;
        };
        let names = &shared.names;
        match shared.request(names.to(&partner, "j", &id)).await {
            Ok(Some(answer)) if answer.as_ref() == PAIRED => {}
            Ok(_) => {
                // The holder of `.a` is leaving, or reserved by another joiner for a moment.
                release(&kv, &b, revision).await;
                tokio::time::sleep(Duration::from_millis(20 << round)).await;
                continue;
            }
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                // Nobody answers for that seat. Its relay died (not heard within the peer
                // timeout): the slot is stale, free it. Otherwise the seat is leaving, or its
                // relay is reconnecting: give `.b` back and try again shortly.
                if !shared.liveness.alive(relay_of(&partner)) {
                    release(&kv, &a, first.revision).await;
                }
                release(&kv, &b, revision).await;
                tokio::time::sleep(Duration::from_millis(20 << round)).await;
                continue;
            }
            Err(e) => return Err(give_back(&kv, &b, revision, unavailable(e)).await),
        }
        // Phase two. Only an answer commits this side; without one, the holder is told to forget
        // the reservation (it also drops it by itself when no commit comes).
        match shared.request(names.to(&partner, "c", &id)).await {
            Ok(Some(answer)) if answer.as_ref() == PAIRED => {
                let mut seat = SeatTask::new(&shared, kv, id, b, revision, sub, me, count);
                let link = seat.pair(&partner);
                return Ok(Joined::Paired(seat.spawn(&tasks), Box::new(link)));
            }
            outcome => {
                let x = names.to(&partner, "x", &id);
                let _ = shared.client.publish(x.clone(), shared.seal(&x, b"")).await;
                release(&kv, &b, revision).await;
                if let Err(e) = outcome {
                    if e.kind() != RequestErrorKind::NoResponders {
                        return Err(unavailable(e));
                    }
                }
            }
        }
    }
    Err(JoinError::Unavailable("the room's slots kept changing".into()))
}

/// `Ok` unless `room` is burnt. Asked before a join takes a slot, and again once it holds `.b`:
/// the burn was written before the burner's pair freed its slots, so a `.b` taken after that
/// sees it, and no pair can form in a burnt room.
async fn not_burnt(shared: &Shared, room: &str) -> Result<(), JoinError> {
    match shared.is_burnt(room).await? {
        true => Err(JoinError::Burnt),
        false => Ok(()),
    }
}

/// Who holds a slot, as far as a probe can tell.
enum Holder {
    /// A seat that answered a probe.
    Live(String),
    /// Free now: it was free when read, or its holder's relay died and the slot was deleted.
    Freed,
    /// Could not tell (a timeout or an error): counted as held.
    Unknown,
}

/// Reads slot `key` and probes its holder (as seat `me`). Only "no responders" counts as dead;
/// the slot is then deleted at the revision read, never a newer one.
async fn check_holder(shared: &Shared, kv: &kv::Store, key: &str, me: &str) -> Holder {
    let entry = match timeout(OP_TIMEOUT, kv.entry(key)).await {
        Ok(Ok(Some(entry))) if entry.operation == Operation::Put => entry,
        Ok(Ok(_)) => return Holder::Freed,
        _ => return Holder::Unknown,
    };
    // A value without this cluster's tag was not written by a relay: it holds nothing.
    let Some(seat) = shared.slot_holder(key, &entry.value) else {
        release(kv, key, entry.revision).await;
        return Holder::Freed;
    };
    match shared.request(shared.names.to(seat, "p", me)).await {
        Ok(Some(_)) => Holder::Live(seat.to_owned()),
        Ok(None) => Holder::Unknown,
        // Dead only if its relay is not heard either (a reconnecting relay's seats answer soon).
        Err(e) if e.kind() == RequestErrorKind::NoResponders && !shared.liveness.alive(relay_of(seat)) => {
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
pub(super) fn is_seat_id(s: &str) -> bool {
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

/// A batch of frames as one message: the first frame's number, then each frame's length and bytes.
fn encode_batch(first: u64, frames: &[Bytes]) -> Bytes {
    let size = 8 + frames.iter().map(|f| 4 + f.len()).sum::<usize>();
    let mut out = bytes::BytesMut::with_capacity(size);
    out.extend_from_slice(&first.to_be_bytes());
    for frame in frames {
        out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        out.extend_from_slice(frame);
    }
    out.freeze()
}

/// The first number and the frames of a batch (slices of `payload`, not copies); `None` if it is
/// not one.
fn decode_batch(mut payload: Bytes) -> Option<(u64, Vec<Bytes>)> {
    use bytes::Buf;
    if payload.len() < 8 {
        return None;
    }
    let first = payload.get_u64();
    let mut frames = Vec::new();
    while !payload.is_empty() {
        if payload.len() < 4 {
            return None;
        }
        let len = payload.get_u32() as usize;
        if payload.len() < len {
            return None;
        }
        frames.push(payload.split_to(len));
    }
    Some((first, frames))
}

/// The relay part of a seat id.
fn relay_of(seat: &str) -> &str {
    seat.split_once('.').map_or(seat, |(relay, _)| relay)
}

/// A message to a seat, read from its subject: `<kind>.<from relay>.<from n>`.
#[derive(Debug, PartialEq, Eq)]
struct Addressed<'a> {
    kind: &'a str,
    from: &'a str,
}

/// Parses what follows the seat's own `<prefix>.seat.<id>.` in a subject.
fn addressed(rest: &str) -> Option<Addressed<'_>> {
    let (kind, from) = rest.split_once('.')?;
    is_seat_id(from).then_some(Addressed { kind, from })
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

/// The partner: its seat id, the subject its frames go to (but their number), and the token
/// cancelled when its relay goes silent.
struct Partner {
    id: String,
    frames: async_nats::Subject,
    dead: CancellationToken,
}

/// Where the seat is in its life.
#[derive(Clone, PartialEq, Eq)]
enum Phase {
    /// Holding `.a`, no partner yet.
    Waiting,
    /// Reserved by joiner `.0` (phase one) until `.1`; its commit pairs.
    Reserved(String, Instant),
    /// Frames flow both ways.
    Paired,
    /// The partner left or vanished; the slot is free; the connection is closing.
    Ended,
}

struct SeatTask {
    shared: Arc<Shared>,
    kv: kv::Store,
    id: String,
    /// This seat's subjects begin with this (`<prefix>.seat.<id>.`).
    base: String,
    key: String,
    revision: u64,
    /// The slot's renewal in flight: polled beside the frames, never holding them up.
    renewing: Option<BoxFuture<'static, Renewal>>,
    sub: Subscriber,
    inbox: Arc<Inbox>,
    kill: KillSwitch,
    /// What the connection queued for the partner (open while the task runs: the departure is
    /// `leave`, not a closed queue).
    outbox: Outbox,
    phase: Phase,
    partner: Option<Partner>,
    out: Outgoing,
    /// The partner's frames, handed to the connection in order and acknowledged once handed over.
    recv: Handover,
    /// When the partner's departure arrived with frames still missing.
    missing_since: Option<Instant>,
    /// Since when the upstream is not ready while this seat waits for a partner.
    unready_since: Option<Instant>,
    generation: watch::Receiver<u64>,
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
        shared.hold_slot(&key, Some(&id));
        let mut generation = shared.generation.subscribe();
        generation.mark_unchanged();
        SeatTask {
            shared: Arc::clone(shared),
            kv,
            base: format!("{}.", shared.names.seat(&id)),
            id,
            key,
            revision,
            renewing: None,
            sub,
            recv: Handover::new(Arc::clone(&me.inbox)),
            inbox: me.inbox,
            kill: me.kill,
            outbox: Outbox::new(shared.peer_queue),
            phase: Phase::Waiting,
            partner: None,
            out: Outgoing::new(shared.peer_queue).timed(shared.metrics.upstream.handover_seconds.clone()),
            missing_since: None,
            unready_since: None,
            generation,
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
    fn pair(&mut self, partner: &str) -> QueueLink {
        let dead = self.shared.liveness.watch(relay_of(partner));
        let frames = async_nats::Subject::from(self.shared.names.to(partner, "f", &self.id));
        self.partner = Some(Partner { id: partner.to_owned(), frames, dead });
        self.phase = Phase::Paired;
        self.outbox.link()
    }

    async fn run(mut self) {
        let every = self.shared.slot_ttl / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resend = tokio::time::interval(RESEND_AFTER);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sub_open = true;
        let ack_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(ack_timer);
        let mut ack_armed = false;
        loop {
            if !ack_armed && self.recv.ack_pending() {
                ack_timer.as_mut().reset(Instant::now() + ACK_DELAY);
                ack_armed = true;
            }
            let dead = self.partner.as_ref().map(|p| p.dead.clone());
            let reserved_until = match &self.phase {
                Phase::Reserved(_, until) => Some(*until),
                _ => None,
            };
            // Partner frames the connection had no room for yet wait in the handover, and so does
            // everything after them (the broker is not read meanwhile), which keeps the order.
            // The connection's own write bound drops it as a slow consumer if it never makes room.
            let holding = self.recv.holding();
            tokio::select! {
                biased;
                () = self.leave.cancelled() => break,
                () = async { match dead { Some(d) => d.cancelled_owned().await, None => std::future::pending().await } } => {
                    self.lost(LostCause::PartnerRelay, "relay not heard within --nats-peer-timeout").await;
                }
                () = self.recv.room(), if holding => {
                    self.recv.release();
                    self.check_departure().await;
                    self.acknowledge().await;
                }
                frame = self.outbox.recv(self.out.room()), if self.out.has_room() => {
                    // What else is queued goes in the same message (within the window, and
                    // bounded, so the other direction is not starved and a message stays well
                    // under NATS's limit).
                    let mut batch = vec![frame];
                    while batch.len() < BATCH {
                        let Some(frame) = self.outbox.try_recv(self.out.room().saturating_sub(batch.len())) else {
                            break;
                        };
                        batch.push(frame);
                    }
                    self.publish_new(batch).await;
                }
                msg = self.sub.next(), if sub_open && !holding => match msg {
                    Some(msg) => {
                        self.on_message(msg).await;
                        for _ in 1..BATCH {
                            if self.recv.holding() {
                                break;
                            }
                            let Some(Some(msg)) = self.sub.next().now_or_never() else { break };
                            self.on_message(msg).await;
                        }
                        self.acknowledge().await;
                    }
                    None => {
                        sub_open = false;
                        self.kill.kill(ErrorCode::UpstreamUnavailable);
                    }
                },
                Ok(()) = self.generation.changed() => {
                    // A new connection: what was in flight may be lost. Send it again. (The slot,
                    // if a restarted server lost it, the keeper makes again before joins resume.)
                    self.resend().await;
                }
                _ = resend.tick() => {
                    let now = Instant::now();
                    if self.out.stalled(now, RESEND_AFTER) {
                        self.resend().await;
                    }
                    self.check_waiting(now);
                    // Only while paired: a pair that ended (or was lost) meanwhile is not lost again.
                    if let Some(since) = self.missing_since.filter(|_| self.phase == Phase::Paired) {
                        if now.duration_since(since) >= self.shared.liveness.timeout() {
                            self.lost(LostCause::Delivery, "its last frames did not arrive").await;
                        }
                    }
                }
                () = &mut ack_timer, if ack_armed => {
                    ack_armed = false;
                    self.acknowledge_all().await;
                }
                () = async { match reserved_until { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    // Phase one without phase two: the joiner is gone; wait for another.
                    self.phase = Phase::Waiting;
                }
                _ = renew.tick(), if self.renewing.is_none() && self.phase != Phase::Ended => self.start_renewal(),
                renewed = async { match self.renewing.as_mut() { Some(r) => r.await, None => std::future::pending().await } },
                    if self.renewing.is_some() =>
                {
                    self.renewing = None;
                    self.renewed(renewed).await;
                }
            }
        }
        self.depart().await;
    }

    /// A seat waiting for a partner while NATS is away for longer than the peer timeout ends
    /// with 4007: its slot may be gone and no relay admits joins meanwhile, so the client is
    /// told rather than left waiting out its wait. A shorter outage changes nothing.
    fn check_waiting(&mut self, now: Instant) {
        if self.phase != Phase::Waiting || self.shared.bucket().is_some() {
            self.unready_since = None;
            return;
        }
        let since = *self.unready_since.get_or_insert(now);
        if now.duration_since(since) >= self.shared.liveness.timeout() {
            tracing::debug!("NATS away for the peer timeout: a waiting seat ends");
            self.phase = Phase::Ended;
            self.kill.kill(ErrorCode::UpstreamUnavailable);
        }
    }

    /// Publishes a message of `kind` to seat `to`.
    async fn publish(&mut self, to: &str, kind: &str, payload: Bytes) -> bool {
        let subject = async_nats::Subject::from(self.shared.names.to(to, kind, &self.id));
        self.publish_to(subject, payload).await
    }

    /// Publishes `payload` to `subject`, tagged; a publish the client library does not take in
    /// time is counted, and left to the resend where it matters.
    async fn publish_to(&mut self, subject: async_nats::Subject, payload: Bytes) -> bool {
        let sealed = self.shared.seal(&subject, &payload);
        let sent = timeout(PUBLISH_WAIT, self.shared.client.publish(subject, sealed)).await;
        let ok = matches!(sent, Ok(Ok(())));
        if !ok {
            self.shared.metrics.upstream.publish_errors.inc();
        }
        ok
    }

    /// Numbers the connection's frames and sends them in one message; they stay in the window
    /// until acknowledged. The message is the first number (8 bytes, big-endian), then each frame
    /// as a 4-byte big-endian length and its bytes: a pair's frames keep one subject, which the
    /// server's subject cache serves, and a burst costs the broker one message.
    async fn publish_new(&mut self, frames: Vec<Frame>) {
        let Some(p) = &self.partner else { return };
        let subject = p.frames.clone();
        let now = Instant::now();
        let first = self.out.next_seq();
        let count = frames.len() as u64;
        let frames: Vec<Bytes> = frames.into_iter().map(Frame::into_bytes).collect();
        for frame in &frames {
            self.out.send(frame.clone(), now);
        }
        if self.publish_to(subject, encode_batch(first, &frames)).await {
            self.shared.metrics.upstream.frames_out.inc_by(count);
        }
    }

    /// Sends every unacknowledged frame again, and the departure if it was announced.
    async fn resend(&mut self) {
        let Some(p) = &self.partner else { return };
        let (to, subject) = (p.id.clone(), p.frames.clone());
        let frames: Vec<(u64, Bytes)> = self.out.unacked().map(|(seq, f)| (seq, f.clone())).collect();
        for chunk in frames.chunks(BATCH) {
            let first = chunk[0].0;
            let bodies: Vec<Bytes> = chunk.iter().map(|(_, f)| f.clone()).collect();
            self.shared.metrics.upstream.retransmits.inc_by(bodies.len() as u64);
            self.publish_to(subject.clone(), encode_batch(first, &bodies)).await;
        }
        if self.leave.is_cancelled() {
            self.publish(&to, "l", Bytes::from(self.out.sent().to_string())).await;
        }
    }

    /// Sends the acknowledgement that is due now (urgent, or a batch is full), if any.
    async fn acknowledge(&mut self) {
        let next = self.recv.ack(false);
        self.send_ack(next).await;
    }

    /// Acknowledges everything handed over so far.
    async fn acknowledge_all(&mut self) {
        let next = self.recv.ack(true);
        self.send_ack(next).await;
    }

    async fn send_ack(&mut self, next: Option<u64>) {
        let (Some(next), Some(p)) = (next, &self.partner) else { return };
        let to = p.id.clone();
        self.publish(&to, "k", Bytes::from(next.to_string())).await;
    }

    async fn on_message(&mut self, msg: Message) {
        let Some(rest) = msg.subject.as_str().strip_prefix(self.base.as_str()) else { return };
        let Some(m) = addressed(rest) else {
            self.shared.metrics.upstream.foreign_messages.inc();
            return;
        };
        // Nothing a relay of this cluster did not write is looked at (see `broker_auth`).
        let Some(payload) = self.shared.open(&msg.subject, msg.payload) else { return };
        let from_partner = self.partner.as_ref().is_some_and(|p| p.id == m.from);
        let from_reserver = matches!(&self.phase, Phase::Reserved(j, _) if j == m.from);
        match m.kind {
            "p" => return self.answer(&msg.subject, msg.reply, b"").await,
            "j" => {
                let answer = if self.phase == Phase::Waiting
                    || matches!(&self.phase, Phase::Reserved(_, until) if *until <= Instant::now())
                {
                    self.phase = Phase::Reserved(m.from.to_owned(), Instant::now() + OP_TIMEOUT);
                    PAIRED
                } else {
                    b"no"
                };
                return self.answer(&msg.subject, msg.reply, answer).await;
            }
            "c" if from_reserver => {
                let partner = m.from.to_owned();
                let link = self.pair(&partner);
                // Told before the answer goes out, so PEER_FOUND precedes the partner's frames.
                self.inbox.peer_found(Box::new(link));
                return self.answer(&msg.subject, msg.reply, PAIRED).await;
            }
            "c" => return self.answer(&msg.subject, msg.reply, b"no").await,
            "x" if from_reserver => {
                self.phase = Phase::Waiting;
                return;
            }
            _ if !from_partner => {}
            "x" => return self.end_pair().await,
            "f" if self.phase == Phase::Paired => {
                let Some((first, frames)) = decode_batch(payload) else {
                    tracing::warn!("dropped a malformed frame message from NATS");
                    return;
                };
                self.shared.metrics.upstream.frames_in.inc_by(frames.len() as u64);
                match self.recv.frames(first, frames) {
                    // Messages lost across a reconnect: the acknowledgement (sent at once) has
                    // the partner send the rest again.
                    Ok(()) | Err(Broken::Gap) => {}
                    Err(Broken::NotText) => tracing::warn!("dropped a frame from NATS that is not UTF-8"),
                }
                self.check_departure().await;
                return;
            }
            "k" => {
                let Some(next) = std::str::from_utf8(&payload).ok().and_then(|n| n.parse().ok()) else { return };
                if self.out.ack(next, Instant::now()) == Acked::Gap {
                    self.resend().await;
                }
                return;
            }
            "l" if self.phase == Phase::Paired => {
                let Some(total) = std::str::from_utf8(&payload).ok().and_then(|n| n.parse().ok()) else {
                    return;
                };
                self.recv.left(total);
                return self.check_departure().await;
            }
            _ => return,
        }
        self.shared.metrics.upstream.foreign_messages.inc();
    }

    /// Answers the request made on `request`, tagged for it and its reply subject.
    async fn answer(&mut self, request: &str, reply: Option<async_nats::Subject>, answer: &'static [u8]) {
        if let Some(reply) = reply {
            let sealed = self.shared.seal_reply(request, &reply, answer);
            if self.shared.client.publish(reply, sealed).await.is_err() {
                self.shared.metrics.upstream.publish_errors.inc();
            }
        }
    }

    /// After a departure or a delivery: the pair ends once every announced frame was handed over.
    async fn check_departure(&mut self) {
        if self.phase != Phase::Paired {
            return;
        }
        if self.recv.finished() {
            self.acknowledge_all().await;
            self.end_pair().await;
        } else if self.recv.missing() && self.missing_since.is_none() {
            self.missing_since = Some(Instant::now());
        }
    }

    /// The partner is gone: free the slot first, so that once the connection sees PEER_LEFT the
    /// room can be joined again at once.
    async fn end_pair(&mut self) {
        self.shared.hold_slot(&self.key, None);
        self.partner = None;
        self.out.clear();
        self.phase = Phase::Ended;
        // Without a connection the delete cannot succeed: do not hold PEER_LEFT back for it (the
        // slot then expires, or the next joiner reclaims it).
        if self.shared.client.connection_state() == async_nats::connection::State::Connected {
            self.free_slot().await;
        }
        self.inbox.peer_left();
    }

    /// The partner can no longer be reached: delivery cannot be guaranteed, so the connection
    /// ends with 4011 (peer lost), not PEER_LEFT.
    async fn lost(&mut self, cause: LostCause, why: &str) {
        tracing::info!(reason = why, "partner lost");
        self.shared.hold_slot(&self.key, None);
        self.shared.metrics.upstream.peers_lost.inc(cause);
        self.partner = None;
        self.out.clear();
        self.phase = Phase::Ended;
        self.kill.kill(ErrorCode::PeerLost);
        if self.shared.client.connection_state() == async_nats::connection::State::Connected {
            self.free_slot().await;
        }
    }

    fn start_renewal(&mut self) {
        let (kv, key, revision) = (self.kv.clone(), self.key.clone(), self.revision);
        let value = self.shared.slot_value(&key, &self.id);
        self.renewing = Some(Box::pin(async move { timeout(OP_TIMEOUT, kv.update(&key, value, revision)).await }));
    }

    /// The outcome of a renewal. A slot that still holds this seat's id is kept (a restarted
    /// server's slot, made again by the keeper, has a new revision); one that expired is made
    /// again; one that another seat took ends the connection. A renewal that failed because the
    /// broker is away is tried again at the next tick: the outcome after the reconnect decides.
    async fn renewed(&mut self, outcome: Renewal) {
        match outcome {
            Ok(Ok(revision)) => self.revision = revision,
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                let entry = timeout(OP_TIMEOUT, self.kv.entry(&self.key)).await;
                let still_ours = match entry {
                    Ok(Ok(Some(entry))) if entry.operation == Operation::Put => {
                        (self.shared.slot_holder(&self.key, &entry.value) == Some(self.id.as_str()))
                            .then_some(entry.revision)
                    }
                    Ok(Ok(_)) => {
                        timeout(OP_TIMEOUT, self.kv.create(&self.key, self.shared.slot_value(&self.key, &self.id)))
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                    Ok(Err(_)) | Err(_) => return,
                };
                match still_ours {
                    Some(revision) => self.revision = revision,
                    None => {
                        tracing::warn!("room slot taken by another seat while NATS was away: ending the connection");
                        self.kill.kill(ErrorCode::UpstreamUnavailable);
                    }
                }
            }
            _ => {}
        }
    }

    /// Deletes the slot at its latest revision (a renewal in flight is settled first, or the delete
    /// would name a revision that no longer exists).
    async fn free_slot(&mut self) {
        if let Some(renewing) = self.renewing.take() {
            let outcome = renewing.await;
            self.renewed(outcome).await;
        }
        self.shared.hold_slot(&self.key, None);
        release(&self.kv, &self.key, self.revision).await;
    }

    /// The connection left: its last frames, then the slot, then the departure with the number
    /// of frames sent; then, while the partner is alive and frames are unacknowledged, resends
    /// (bounded by the peer timeout).
    async fn depart(mut self) {
        // Past the window if need be: the outbox is bounded too, and these are the last frames.
        let mut last = Vec::new();
        while let Some(frame) = self.outbox.try_recv(usize::MAX) {
            last.push(frame);
            if last.len() == BATCH {
                self.publish_new(std::mem::take(&mut last)).await;
            }
        }
        if !last.is_empty() {
            self.publish_new(last).await;
        }
        if self.phase != Phase::Ended {
            self.free_slot().await;
        }
        self.shared.hold_slot(&self.key, None);
        let Some(p) = &self.partner else { return };
        let (to, dead) = (p.id.clone(), p.dead.clone());
        self.publish(&to, "l", Bytes::from(self.out.sent().to_string())).await;
        let until = Instant::now() + self.shared.liveness.timeout();
        let mut resend = tokio::time::interval_at(Instant::now() + RESEND_AFTER, RESEND_AFTER);
        while !self.out.all_acked() {
            tokio::select! {
                () = dead.cancelled() => break,
                () = tokio::time::sleep_until(until) => break,
                _ = resend.tick() => self.resend().await,
                Ok(()) = self.generation.changed() => self.resend().await,
                msg = self.sub.next() => match msg {
                    Some(msg) => {
                        // Only acknowledgements and the partner's own departure matter now.
                        self.on_message(msg).await;
                        self.acknowledge_all().await;
                    }
                    None => break,
                },
            }
        }
    }
}

/// The connection's link to a partner through the broker: a bounded queue the seat task drains
/// into the window. A full queue is backpressure; a reader that never makes room is dropped by
/// its own relay (4009), and a partner lost ends this connection (4011).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_seat_ids_are_accepted_from_a_slot() {
        assert!(is_seat_id("0123456789abcdef.42"));
        assert!(!is_seat_id("0123456789abcdef."));
        assert!(!is_seat_id("0123456789abcde.1"));
        assert!(!is_seat_id("0123456789abcdef.1.f"));
        assert!(!is_seat_id("0123456789abcdef.>"));
        assert!(!is_seat_id(""));
    }

    #[test]
    fn batches_round_trip_and_garbage_is_refused() {
        let frames = vec![Bytes::from_static(b"{}"), Bytes::new(), Bytes::from_static(b"\xc3\xa9")];
        assert_eq!(decode_batch(encode_batch(7, &frames)), Some((7, frames)));
        assert_eq!(decode_batch(Bytes::from_static(b"short")), None);
        let mut cut = encode_batch(1, &[Bytes::from_static(b"abcdef")]).to_vec();
        cut.pop();
        assert_eq!(decode_batch(Bytes::from(cut)), None, "a frame cut short");
    }

    #[test]
    fn subjects_name_their_sender() {
        let from = "0123456789abcdef.7";
        assert_eq!(addressed("f.0123456789abcdef.7"), Some(Addressed { kind: "f", from }));
        assert_eq!(addressed("k.0123456789abcdef.7"), Some(Addressed { kind: "k", from }));
        assert_eq!(addressed("f.0123456789abcdef.7.42"), None, "a sender that is not a seat id");
        assert_eq!(addressed("f.nothex.7"), None);
        assert_eq!(addressed("f"), None);
    }
}
