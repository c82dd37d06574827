//! The upstream layer: how the two halves of a room find and reach each other.
//!
//! A connection task never touches the room table. It calls
//! [`Upstream::join`] with its [`Mailbox`] and gets back a [`Seat`] (its place
//! in the room; dropping it leaves) and, once a partner exists, a [`PeerLink`]
//! to send frames to that partner. Everything the room does to a connection
//! arrives in its mailbox. The same contract holds whether the partner is in
//! this process ([`local`], the default) or on another relay (NATS, Kafka and
//! mesh implementations sit behind this trait), which is why it is written in
//! terms of messages, not shared state.
//!
//! # Contract
//!
//! Every implementation keeps it; `tests/tests/conformance.rs` checks it against each one.
//!
//! * **Join arbitration.** At most two seats exist per room at any time, across
//!   every relay sharing the room space. `join` answers [`JoinError::RoomFull`]
//!   to a third joiner; it must be decided atomically, never check-then-act.
//! * **Readiness.** An upstream that is not [`ready`](Upstream::ready) (its broker
//!   unreachable; on the mesh, a relay of its roster not linked) admits no new room:
//!   `join` answers [`JoinError::Unavailable`] (4007), so no relay decides a room
//!   from a view the others do not share.
//! * **Nothing unauthenticated is acted on.** What a distributed upstream reads from
//!   a broker or a link counts only if it proves it came from a relay holding the
//!   cluster secret (broker tags, see [`broker_auth`]; Noise links on the mesh).
//! * **Pairing.** The second joiner gets [`Joined::Paired`] with a link to the
//!   first; the first receives [`Inbox::peer_found`] with a link to the
//!   second, delivered before any frame from the second can arrive. A pair is
//!   made by both sides or by neither: a join that fails leaves no seat
//!   reserved or paired anywhere.
//! * **Delivery.** [`PeerLink::send`] never waits. Frames from one sender
//!   arrive in the order sent, byte-identical, each exactly once. When the
//!   partner's bounded queue is full, `send` hands the frame back and the
//!   sender waits on [`PeerLink::writable`] (and stops reading its own client
//!   meanwhile: backpressure).
//! * **Faults.** Across a broker outage or reconnect, or a link between relays
//!   that drops and comes back, shorter than the upstream's peer timeout, no
//!   frame is lost, duplicated or reordered (distributed upstreams number
//!   frames, acknowledge them and send the unacknowledged ones again; see
//!   [`link`]). When delivery can no longer be guaranteed (the outage outlasts
//!   the bound, the partner's relay died) both connections end with
//!   [`ErrorCode::PeerLost`] (4011), never with PEER_LEFT, within the bound the
//!   implementation documents.
//! * **Slow consumers.** One rule for every upstream, enforced where the
//!   frames end: a connection whose client takes nothing for `--ping-timeout`
//!   while frames wait is dropped with [`ErrorCode::SlowConsumer`] (4009) by
//!   its own connection task; its departure then reaches the partner. An
//!   upstream never drops a connection for its partner's slowness.
//! * **Departure.** Dropping a [`Seat`] frees the room at once (the code can be
//!   joined again immediately) and delivers [`Inbox::peer_left`] to the
//!   partner after every frame the leaver sent before leaving.
//! * **Burning.** [`Upstream::burn`] (a paired client said BURN: its code is about to be
//!   tested) makes every later `join` of the room, through any relay sharing the room space,
//!   answer [`JoinError::Burnt`] (4012) for `--burn-ttl`. The burn is recorded where joins are
//!   decided before `burn` returns, so nothing the client sends after BURN (its key
//!   confirmation) reaches the partner before the room is refused. The pair itself goes on.
//! * **Cancel safety.** Dropping the `join` future before it completes leaves
//!   no seat behind.
//! * **Shutdown.** [`Upstream::close`] runs after the last connection ended and
//!   returns once departures have reached the partners (bounded).

#[cfg(any(feature = "nats", feature = "kafka"))]
pub mod broker_auth;
pub mod burns;
pub mod inbox;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod link;
pub mod local;
#[cfg(feature = "mesh")]
pub mod mesh;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "nats", feature = "kafka"))]
pub mod repeats;
pub mod room_id;

pub use inbox::Inbox;
pub use room_id::{RoomId, RoomKeyer};

use ghostwire_shared::ErrorCode;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// A frame on its way between peers: the exact text the sender wrote (UTF-8, shared, never
/// copied on the way). The upstream layer's own type: the WebSocket library's appears only
/// where a connection reads or writes one (`conn.rs`), and converting costs nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// A frame of static text.
    pub const fn from_static(text: &'static str) -> Frame {
        Frame(Utf8Bytes::from_static(text))
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The frame's bytes, shared.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.0.into()
    }

    /// A frame from bytes that arrived from elsewhere (a broker, a link).
    ///
    /// # Errors
    /// Where the bytes are not UTF-8.
    pub fn from_utf8(bytes: bytes::Bytes) -> Result<Frame, std::str::Utf8Error> {
        Utf8Bytes::try_from(bytes).map(Frame)
    }
}

impl From<Utf8Bytes> for Frame {
    fn from(text: Utf8Bytes) -> Frame {
        Frame(text)
    }
}

impl From<Frame> for Utf8Bytes {
    fn from(frame: Frame) -> Utf8Bytes {
        frame.0
    }
}

/// Ends one connection from outside its task, with a code.
///
/// Cloneable and cheap; the first code set wins.
#[derive(Clone)]
pub struct KillSwitch {
    token: CancellationToken,
    code: Arc<AtomicU16>,
}

impl KillSwitch {
    /// A switch that also fires when `parent` is cancelled (relay shutdown, code 1001).
    pub fn child_of(parent: &CancellationToken) -> KillSwitch {
        KillSwitch { token: parent.child_token(), code: Arc::new(AtomicU16::new(0)) }
    }

    /// Ends the connection with `code` (slow consumer, peer lost, upstream unavailable).
    pub fn kill(&self, code: ErrorCode) {
        let _ = self.code.compare_exchange(0, code.as_u16(), Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    /// Resolves once the switch fires. (The token's own future, not an `async fn` around it:
    /// every connection holds one, so the wrapper's size would be paid per connection.)
    pub fn fired(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Why the switch fired: the code given to [`kill`](Self::kill), or 1001 when the parent did.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::from_u16(self.code.load(Ordering::Acquire)).unwrap_or(ErrorCode::GoingAway)
    }
}

/// Where a connection receives what its room sends it.
#[derive(Clone)]
pub struct Mailbox {
    /// Frames from the partner (bounded by the relay's `--peer-queue`), and the room's notices.
    pub inbox: Arc<Inbox>,
    /// Ends the connection from outside its task (slow consumer, peer lost, upstream gone).
    pub kill: KillSwitch,
}

/// Sends frames to the partner.
pub trait PeerLink: Send + 'static {
    /// Queues `frame` for the partner without waiting.
    ///
    /// # Errors
    /// [`SendError::Full`] gives the frame back when the partner's queue is
    /// full (wait on [`writable`](Self::writable), then send it again);
    /// [`SendError::Gone`] when the partner has left (a `PeerLeft` follows).
    fn send(&mut self, frame: Frame) -> Result<(), SendError>;

    /// Resolves when [`send`](Self::send) has room again. Cancel-safe.
    ///
    /// # Errors
    /// [`LinkError::Gone`] when the partner left (or was dropped).
    fn writable(&self) -> BoxFuture<'static, Result<(), LinkError>>;
}

/// A frame [`PeerLink::send`] could not queue.
pub enum SendError {
    /// The partner's queue is full; here is the frame back.
    Full(Frame),
    /// The partner has gone.
    Gone,
}

/// Why the partner cannot be written to any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The partner has gone.
    #[error("partner gone")]
    Gone,
}

/// A connection's place in a room; dropping it leaves the room.
pub struct Seat(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Seat {
    /// Wraps an implementation's guard, whose `Drop` performs the departure.
    pub fn new(guard: impl Send + Sync + 'static) -> Seat {
        Seat(Box::new(guard))
    }
}

/// The outcome of a successful join.
pub enum Joined {
    /// First in the room; `Control::PeerFound` will follow.
    Waiting(Seat),
    /// Second in the room; the partner is already told.
    Paired(Seat, Box<dyn PeerLink>),
}

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room holds two peers.
    #[error("room full")]
    RoomFull,
    /// This relay holds `--max-rooms` rooms.
    #[error("relay at its room limit")]
    AtCapacity,
    /// The room service cannot be reached.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The room was burnt (a client's verification of its code was under way).
    #[error("room burnt")]
    Burnt,
}

impl JoinError {
    /// The wire code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            JoinError::RoomFull => ErrorCode::RoomFull,
            JoinError::AtCapacity => ErrorCode::RelayFull,
            JoinError::Unavailable(_) => ErrorCode::UpstreamUnavailable,
            JoinError::Burnt => ErrorCode::Burnt,
        }
    }
}

/// Resolves once `count` reads zero; `zero` must be notified (`notify_waiters`) each time it
/// drops to zero. How a distributed upstream's `close` waits for its seats' departures.
#[cfg(any(feature = "nats", feature = "kafka", feature = "mesh"))]
pub(crate) async fn until_zero(count: &std::sync::atomic::AtomicUsize, zero: &tokio::sync::Notify) {
    loop {
        let notified = zero.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if count.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The room space: see the module documentation for the contract.
pub trait Upstream: Send + Sync + 'static {
    /// Takes a seat in `room` (the keyed id: an upstream never sees a room code) for the
    /// connection that owns `me`.
    fn join<'a>(&'a self, room: &'a RoomId, me: Mailbox) -> BoxFuture<'a, Result<Joined, JoinError>>;

    /// Refuses every later join of `room` (4012) for `ttl`, across every relay sharing the room
    /// space; resolves once that is recorded where joins are decided. Called only for a
    /// connection paired in `room`.
    ///
    /// # Errors
    /// [`JoinError::Unavailable`] when the burn could not be recorded (the connection then ends
    /// with 4007, so its client's key confirmation never leaves the relay).
    fn burn<'a>(&'a self, room: &'a RoomId, ttl: std::time::Duration) -> BoxFuture<'a, Result<(), JoinError>>;

    /// `Ok` when joins can succeed; otherwise why not (shown by `/readyz`).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    /// Rooms this relay currently holds a seat in.
    fn open_rooms(&self) -> usize;

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Called once every connection has ended at shutdown: finishes the departures still in
    /// flight (partners on other relays hear PEER_LEFT) and stops background work.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
