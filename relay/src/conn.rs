//! One task per client connection, from the first frame to the close.
//!
//! The task owns its WebSocket outright (no split, no lock) and waits on four
//! things at once: its kill switch (shutdown, slow consumer), its inbox (what
//! the partner sent, PEER_FOUND, PEER_LEFT), the socket, and one timer (the
//! join or wait deadline, and the next ping). A BURN, once paired, is awaited before the next
//! frame is read (see [`Upstream::burn`]). Every connection holds this
//! task's future for its whole life, so what is rare (closing, the stall
//! timer of a write, a frame held back by a full partner) is boxed when it
//! happens rather than sized into it. The phases are an enum: `AwaitJoin` →
//! `Waiting` → `Paired`; any frame that does not fit the phase ends the
//! connection with its code, and only this connection.
//!
//! Frames from the partner are written in batches: everything queued is taken
//! at once, fed, and flushed once, so a busy pair costs one syscall per
//! batch rather than per frame. A write the client does not take within
//! `--ping-timeout` drops it as a slow consumer.
//!
//! When the partner's queue is full, the frame waits in `blocked` and the task
//! stops reading its own client (backpressure through TCP) while it keeps
//! writing what the partner sends, so two busy peers never wait on each other.

use crate::limits::{ByteBudget, BULK_FRAME};
use crate::metrics::Metrics;
use crate::upstream::inbox::{Delivery, Inbox, Receiver};
use crate::upstream::{
    BoxFuture, Frame, KillSwitch, LinkError, Mailbox, PeerLink, RoomId, RoomKeyer, Seat, SendError, Upstream,
};
use crate::Config;
use futures_util::{FutureExt, SinkExt, StreamExt};
use ghostwire_shared::frame::{inspect, Inbound, PEER_FOUND_JSON, PEER_LEFT_JSON};
use ghostwire_shared::{ErrorCode, RelayFrame};
use governor::{Quota, RateLimiter};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, sleep_until, timeout, Instant, Sleep};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Messages handled per pass of the connection's select before it looks at anything else.
const READ_BATCH: usize = 64;
/// Time a closing client gets to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What every connection task shares.
pub(crate) struct Ctx {
    pub config: Config,
    /// Turns room codes into the keyed ids upstreams work with.
    pub rooms: RoomKeyer,
    pub upstream: Arc<dyn Upstream>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// When each connection is told to go (1001) once the relay shuts down.
    pub drain: Drain,
}

/// The waves a shutdown closes connections in (`--drain-spread`): each connection joins one,
/// in turn, and the waves are closed one after another. Sixteen tokens in all, so spreading
/// costs no task or timer per connection.
pub(crate) struct Drain {
    waves: [CancellationToken; Drain::WAVES],
    next: std::sync::atomic::AtomicUsize,
}

impl Drain {
    const WAVES: usize = 16;

    pub fn new() -> Drain {
        Drain { waves: std::array::from_fn(|_| CancellationToken::new()), next: Default::default() }
    }

    /// The wave the next connection joins.
    fn wave(&self) -> &CancellationToken {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.waves[n % Drain::WAVES]
    }

    /// Closes the waves one after another over `spread` (all at once for zero).
    pub async fn close(&self, spread: Duration) {
        let step = spread / Drain::WAVES as u32;
        for (i, wave) in self.waves.iter().enumerate() {
            if i > 0 && !step.is_zero() {
                sleep(step).await;
            }
            wave.cancel();
        }
    }
}

enum Phase {
    /// Handshake done, no JOIN yet. Holds the mailbox until it is handed to the room.
    AwaitJoin(Option<Mailbox>),
    /// Alone in a room.
    Waiting(Seat),
    /// Both peers present.
    Paired(#[allow(dead_code)] Seat, Box<dyn PeerLink>),
}

/// A frame the partner had no room for, and the wait for room. Boxed: it is there only under
/// backpressure, and unboxed it would take its size in every connection's future.
type Blocked = Option<Box<(Frame, BoxFuture<'static, Result<(), LinkError>>)>>;

/// How the loop ended.
enum Exit {
    /// End with an ERROR frame and this close code.
    Error(ErrorCode),
    /// The partner left: deliver what it sent, then PEER_LEFT, then close normally.
    PeerLeft,
    /// The client closed or the socket died: nothing more to say.
    Gone,
}

/// Why a bounded write did not complete.
enum Stop {
    Io,
    Killed,
    Stalled,
}

/// Serves one client until it leaves. Errors end here and never reach the accept loop.
pub(crate) async fn serve<S>(mut ws: WebSocketStream<S>, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let cfg = &ctx.config;
    let metrics = &ctx.metrics;
    let kill = KillSwitch::child_of(ctx.drain.wave());
    let inbox = Inbox::new(cfg.peer_queue as usize);
    let rx = Receiver::new(Arc::clone(&inbox));
    // Frames taken from the inbox and not yet written; reused, so steady state allocates nothing.
    let mut batch: VecDeque<Frame> = VecDeque::new();
    let mut phase = Phase::AwaitJoin(Some(Mailbox { inbox, kill: kill.clone() }));
    let limiter = RateLimiter::direct(
        Quota::per_second(NonZeroU32::new(cfg.frame_rate).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(cfg.frame_burst).unwrap_or(NonZeroU32::MIN)),
    );
    // Bulk frames (file chunks) pay bytes instead of frame tokens; see `limits::ByteBudget`.
    let mut bytes = ByteBudget::new(cfg.byte_rate, cfg.byte_burst, Instant::now());
    // One timer for both clocks (a second costs every connection its size and a boxed sleep):
    // the join or wait deadline (none once paired) and the next ping.
    let mut deadline = Some(Instant::now() + cfg.join_timeout);
    let mut next_ping = Instant::now() + cfg.ping_interval;
    let timer = sleep_until(wake_at(deadline, next_ping));
    tokio::pin!(timer);
    // Liveness without a clock read per frame: any frame sets `seen`; each ping tick turns it
    // into `alive_at` (so silence is detected to within one ping interval).
    let mut seen = false;
    let mut alive_at = Instant::now();
    // Registered once: re-creating the cancellation future on every pass costs a lock each time.
    let killed = kill.fired();
    tokio::pin!(killed);
    // A frame the partner had no room for, and the wait for that room.
    let mut blocked: Blocked = None;
    // The room of the JOIN, for a BURN once paired.
    let mut joined: Option<RoomId> = None;

    let exit = 'conn: loop {
        tokio::select! {
            biased;
            () = &mut killed => break Exit::Error(kill.code()),
            delivery = rx.recv(&mut batch) => match delivery {
                Delivery::PeerFound(link) => {
                    let Phase::Waiting(seat) = std::mem::replace(&mut phase, Phase::AwaitJoin(None)) else {
                        // The upstream broke its contract; fail this connection, not the relay.
                        tracing::error!("PeerFound outside the waiting phase");
                        break Exit::Error(ErrorCode::OutOfOrder);
                    };
                    phase = Phase::Paired(seat, link);
                    deadline = None;
                    if let Err(stop) = bounded(send_text(&mut ws, PEER_FOUND_JSON), killed.as_mut(), cfg.ping_timeout).await {
                        break stop.exit(&kill);
                    }
                }
                Delivery::Frames => match bounded(write_batch(&mut ws, &mut batch), killed.as_mut(), cfg.ping_timeout).await {
                    Ok((frames, bytes)) => {
                        metrics.frames_forwarded.inc_by(frames);
                        metrics.bytes_forwarded.inc_by(bytes);
                    }
                    Err(stop) => break stop.exit(&kill),
                },
                Delivery::PeerLeft => break Exit::PeerLeft,
            },
            room = async { match blocked.as_mut() { Some(held) => (&mut held.1).await, None => std::future::pending().await } },
                if blocked.is_some() =>
            {
                let Some(held) = blocked.take() else { continue };
                let (frame, _) = *held;
                if let (Ok(()), Phase::Paired(_, link)) = (room, &mut phase) {
                    blocked = forward(link.as_mut(), frame);
                }
            }
            msg = ws.next(), if blocked.is_none() => {
                seen = true;
                // Frames already read are handled here, up to READ_BATCH, without another pass
                // through the select (each pass polls the kill future and locks the inbox).
                let mut budget = READ_BATCH;
                let mut next = Some(msg);
                while let Some(msg) = next.take() {
                    let Some(text) = (match msg {
                        Some(Ok(Message::Text(text))) => Some(text),
                        Some(Ok(Message::Binary(_))) => break 'conn Exit::Error(ErrorCode::Malformed),
                        // Control frames cost the relay work too: every inbound frame counts.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                            if limiter.check().is_err() {
                                break 'conn Exit::Error(ErrorCode::RateLimited);
                            }
                            None
                        }
                        Some(Ok(Message::Frame(_))) => None,
                        Some(Ok(Message::Close(_))) | None => break 'conn Exit::Gone,
                        Some(Err(WsError::Capacity(_))) => break 'conn Exit::Error(ErrorCode::TooLarge),
                        // The client vanished without a close: gone, not malformed.
                        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => break 'conn Exit::Gone,
                        Some(Err(WsError::Utf8(_) | WsError::Protocol(_))) => break 'conn Exit::Error(ErrorCode::Malformed),
                        Some(Err(_)) => break 'conn Exit::Gone,
                    }) else {
                        next = more(&mut ws, &mut budget, &phase, &blocked);
                        continue;
                    };
                    let bulk = text.len() > BULK_FRAME;
                    if !bulk && limiter.check().is_err() {
                        break 'conn Exit::Error(ErrorCode::RateLimited);
                    }
                    // Decide on a borrowed view, then let go of it before the text moves on.
                    let room = match inspect(text.as_str()) {
                        Ok(Inbound::Signal { .. }) => None,
                        // From here on the room is its keyed id: no upstream sees the code.
                        Ok(Inbound::Join(code)) => Some(ctx.rooms.id(&code)),
                        // Recorded before anything after it is read: the client's key confirmation
                        // follows, and must not reach the partner before the room is refused.
                        Ok(Inbound::Burn) => {
                            let (Phase::Paired(..), Some(room)) = (&phase, joined) else {
                                break 'conn Exit::Error(ErrorCode::OutOfOrder);
                            };
                            let burnt = tokio::select! {
                                biased;
                                () = &mut killed => break 'conn Exit::Error(kill.code()),
                                burnt = ctx.upstream.burn(&room, cfg.burn_ttl) => burnt,
                            };
                            if let Err(e) = burnt {
                                tracing::debug!(error = %e, "a burn could not be recorded");
                                break 'conn Exit::Error(ErrorCode::UpstreamUnavailable);
                            }
                            metrics.rooms_burnt_total.inc();
                            next = more(&mut ws, &mut budget, &phase, &blocked);
                            continue;
                        }
                        Err(e) => break 'conn Exit::Error(e.code()),
                    };
                    match (&mut phase, room) {
                        (Phase::Paired(_, link), None) => {
                            blocked = match bulk.then(|| bytes.charge(text.len(), Instant::now())).flatten() {
                                // Over the byte rate: held (and reading paused) until it is paid.
                                Some(wait) => Some(Box::new((Frame::from(text), Box::pin(async move {
                                    tokio::time::sleep(wait).await;
                                    Ok(())
                                })))),
                                None => forward(link.as_mut(), Frame::from(text)),
                            };
                        }
                        (Phase::AwaitJoin(mailbox), Some(room)) => {
                            let Some(mailbox) = mailbox.take() else { break 'conn Exit::Error(ErrorCode::OutOfOrder) };
                            joined = Some(room);
                            let asked = Instant::now();
                            let joined = tokio::select! {
                                biased;
                                () = &mut killed => break 'conn Exit::Error(kill.code()),
                                joined = ctx.upstream.join(&room, mailbox) => joined,
                            };
                            metrics.join_seconds.observe(asked.elapsed().as_secs_f64());
                            match joined {
                                Ok(crate::upstream::Joined::Waiting(seat)) => {
                                    phase = Phase::Waiting(seat);
                                    deadline = Some(Instant::now() + cfg.wait_timeout);
                                    timer.as_mut().reset(wake_at(deadline, next_ping));
                                }
                                Ok(crate::upstream::Joined::Paired(seat, link)) => {
                                    metrics.rooms_paired_total.inc();
                                    phase = Phase::Paired(seat, link);
                                    deadline = None;
                                    if let Err(stop) = bounded(send_text(&mut ws, PEER_FOUND_JSON), killed.as_mut(), cfg.ping_timeout).await {
                                        break 'conn stop.exit(&kill);
                                    }
                                }
                                Err(e) => break 'conn Exit::Error(e.code()),
                            }
                        }
                        _ => break 'conn Exit::Error(ErrorCode::OutOfOrder),
                    }
                    next = more(&mut ws, &mut budget, &phase, &blocked);
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break Exit::Error(match phase {
                        Phase::Waiting(_) => ErrorCode::WaitTimeout,
                        _ => ErrorCode::JoinTimeout,
                    });
                }
                if now >= next_ping {
                    // A late tick delays the ones after it rather than bunching them up.
                    next_ping = now + cfg.ping_interval;
                    if std::mem::take(&mut seen) {
                        alive_at = now;
                    } else if now.duration_since(alive_at) >= cfg.ping_interval + cfg.ping_timeout {
                        metrics.ping_timeouts.inc();
                        break Exit::Gone;
                    }
                    if let Err(stop) = bounded(ws.send(Message::Ping(Default::default())), killed.as_mut(), cfg.ping_timeout).await {
                        break stop.exit(&kill);
                    }
                }
                timer.as_mut().reset(wake_at(deadline, next_ping));
            }
        }
    };

    // Leave the room before anything else, so the partner hears of it at once.
    drop(phase);
    Box::pin(goodbye(&mut ws, exit, metrics)).await;
}

/// Ends the connection the way `exit` says, within [`CLOSE_GRACE`].
async fn goodbye<S>(ws: &mut WebSocketStream<S>, exit: Exit, metrics: &Metrics)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match exit {
        Exit::Gone => {
            tracing::debug!(reason = "client closed", "connection closed");
            // Let tungstenite finish a close the client started; bounded, as the client may be gone.
            let _ = timeout(CLOSE_GRACE, async { while let Some(Ok(_)) = ws.next().await {} }).await;
        }
        Exit::PeerLeft => {
            tracing::debug!(code = 1000, reason = "peer left", "closing connection");
            // The inbox hands over every frame the partner sent before it reports the departure,
            // and those are written already: PEER_LEFT comes last.
            let finish = async {
                ws.send(Message::Text(Utf8Bytes::from_static(PEER_LEFT_JSON))).await?;
                close(ws, CloseCode::Normal, "peer left").await
            };
            let _ = timeout(CLOSE_GRACE, finish).await;
        }
        Exit::Error(code) => {
            metrics.error(code);
            tracing::debug!(code = code.as_u16(), reason = code.reason(), "closing connection");
            let finish = async {
                ws.feed(Message::text(RelayFrame::error(code).to_json())).await?;
                close(ws, CloseCode::from(code.as_u16()), code.reason()).await
            };
            let _ = timeout(CLOSE_GRACE, finish).await;
        }
    }
}

/// The next message if the socket has one ready now, while a pass may go on: paired (frames are
/// all that is expected), not held back by a full partner queue, and within its budget.
fn more<S>(
    ws: &mut WebSocketStream<S>,
    budget: &mut usize,
    phase: &Phase,
    blocked: &Blocked,
) -> Option<Option<Result<Message, WsError>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if *budget == 0 || blocked.is_some() || !matches!(phase, Phase::Paired(..)) {
        return None;
    }
    *budget -= 1;
    ws.next().now_or_never()
}

/// Hands `frame` to the partner; if its queue is full, returns the frame and the wait for room.
/// A partner that is gone or dropped drops the frame: its `PeerLeft` is on the way.
fn forward(link: &mut dyn PeerLink, frame: Frame) -> Blocked {
    match link.send(frame) {
        Ok(()) | Err(SendError::Gone) => None,
        Err(SendError::Full(frame)) => Some(Box::new((frame, link.writable()))),
    }
}

impl Stop {
    fn exit(self, kill: &KillSwitch) -> Exit {
        match self {
            Stop::Io => Exit::Gone,
            Stop::Killed => Exit::Error(kill.code()),
            Stop::Stalled => Exit::Error(ErrorCode::SlowConsumer),
        }
    }
}

/// When the connection's timer must next wake: its deadline, if it has one, or its next ping.
fn wake_at(deadline: Option<Instant>, next_ping: Instant) -> Instant {
    deadline.map_or(next_ping, |d| d.min(next_ping))
}

/// Runs a write, giving up if the connection is killed or the client does not take the data in `stall`.
///
/// Written out rather than as a `select!`: this future lives inside every connection's, so its
/// size is paid per connection; the stall timer is boxed and made only if the write did not
/// finish on its first poll (the fast path has none).
fn bounded<'k, T, W, K>(
    mut write: W,
    mut killed: Pin<&'k mut K>,
    stall: Duration,
) -> impl Future<Output = Result<T, Stop>> + 'k
where
    W: Future<Output = Result<T, WsError>> + Unpin + 'k,
    K: Future<Output = ()>,
{
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    poll_fn(move |cx| {
        if let Poll::Ready(r) = Pin::new(&mut write).poll(cx) {
            return Poll::Ready(r.map_err(|_| Stop::Io));
        }
        if killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Stop::Killed));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(sleep(stall)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(Stop::Stalled))
    })
}

fn send_text<'a, S>(
    ws: &'a mut WebSocketStream<S>,
    text: &'static str,
) -> impl Future<Output = Result<(), WsError>> + Unpin + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::Text(Utf8Bytes::from_static(text)))
}

/// Writes every frame in `batch` (at most `--peer-queue` of them), then flushes once; resolves
/// to the frames and bytes written. (A `feed` loop and a `flush`, polled by hand: as an `async
/// fn` it would hold its argument and its awaitee side by side, in every connection's future.)
fn write_batch<'a, S>(
    ws: &'a mut WebSocketStream<S>,
    batch: &'a mut VecDeque<Frame>,
) -> impl Future<Output = Result<(u64, u64), WsError>> + Unpin + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut sent = (0u64, 0u64);
    poll_fn(move |cx| {
        while !batch.is_empty() {
            ready!(ws.poll_ready_unpin(cx))?;
            let Some(frame) = batch.pop_front() else { break };
            sent.0 += 1;
            sent.1 += frame.len() as u64;
            ws.start_send_unpin(Message::Text(frame.into()))?;
        }
        ready!(ws.poll_flush_unpin(cx))?;
        Poll::Ready(Ok(sent))
    })
}

/// Sends a close frame and waits for the client's answer (the caller bounds the time).
async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &'static str) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) })).await?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::borrowed::Borrowed;
    use tokio::net::TcpStream;

    /// Every connection, idle or not, holds this future for its whole life: what it grows by,
    /// each of them pays (the README's per-connection budget counts it).
    #[test]
    fn the_connection_future_stays_within_its_budget() {
        fn future_size<A, B, F: Future, G: Fn(A, B) -> F>(_: &G) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(&|ws: WebSocketStream<Borrowed<TcpStream>>, ctx: Arc<Ctx>| serve(ws, ctx));
        assert!(size <= 2048, "the connection future is {size} bytes, over its 2 KiB budget");
    }
}
