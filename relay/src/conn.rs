//! One task per client connection, from the first frame to the close.
//!
//! The task owns its WebSocket outright (no split, no lock) and waits on three
//! things at once: its kill switch (shutdown, slow consumer), its inbox (what
//! the partner sent, PEER_FOUND, PEER_LEFT) and the socket. The phases are an
//! enum: `AwaitJoin` → `Waiting` → `Paired`; any frame that does not fit the
//! phase ends the connection with its code, and only this connection.
//!
//! Frames from the partner are written in batches: everything queued is taken
//! at once, fed, and flushed once, so a busy pair costs one syscall per
//! batch rather than per frame. A write the client does not take within
//! `--ping-timeout` drops it as a slow consumer.
//!
//! When the partner's queue is full, the frame waits in `blocked` and the task
//! stops reading its own client (backpressure through TCP) while it keeps
//! writing what the partner sends, so two busy peers never wait on each other.

use crate::metrics::Metrics;
use crate::upstream::inbox::{Delivery, Inbox, Receiver};
use crate::upstream::{
    BoxFuture, Frame, KillSwitch, LinkError, Mailbox, PeerLink, RoomKeyer, Seat, SendError, Upstream,
};
use crate::Config;
use futures_util::{FutureExt, SinkExt, StreamExt};
use ghostwire_shared::frame::{inspect, Inbound, PEER_FOUND_JSON, PEER_LEFT_JSON};
use ghostwire_shared::{ErrorCode, RelayFrame};
use governor::{Quota, RateLimiter};
use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
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
}

enum Phase {
    /// Handshake done, no JOIN yet. Holds the mailbox until it is handed to the room.
    AwaitJoin(Option<Mailbox>),
    /// Alone in a room.
    Waiting(Seat),
    /// Both peers present.
    Paired(#[allow(dead_code)] Seat, Box<dyn PeerLink>),
}

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
    let kill = KillSwitch::child_of(&ctx.shutdown);
    let inbox = Inbox::new(cfg.peer_queue as usize);
    let rx = Receiver::new(Arc::clone(&inbox));
    // Frames taken from the inbox and not yet written; reused, so steady state allocates nothing.
    let mut batch: VecDeque<Frame> = VecDeque::new();
    let mut phase = Phase::AwaitJoin(Some(Mailbox { inbox, kill: kill.clone() }));
    let limiter = RateLimiter::direct(
        Quota::per_second(NonZeroU32::new(cfg.frame_rate).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(cfg.frame_burst).unwrap_or(NonZeroU32::MIN)),
    );
    let stall = cfg.ping_timeout;
    let deadline = sleep(cfg.join_timeout);
    tokio::pin!(deadline);
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Liveness without a clock read per frame: any frame sets `seen`; each ping tick turns it
    // into `alive_at` (so silence is detected to within one ping interval).
    let mut seen = false;
    let mut alive_at = Instant::now();
    // Registered once: re-creating the cancellation future on every pass costs a lock each time.
    let killed = kill.fired();
    tokio::pin!(killed);
    // A frame the partner had no room for, and the wait for that room.
    let mut blocked: Option<(Frame, BoxFuture<'static, Result<(), LinkError>>)> = None;

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
                    if let Err(stop) = bounded(send_text(&mut ws, PEER_FOUND_JSON), killed.as_mut(), stall).await {
                        break stop.exit(&kill);
                    }
                }
                Delivery::Frames => match bounded(write_batch(&mut ws, &mut batch), killed.as_mut(), stall).await {
                    Ok((frames, bytes)) => {
                        metrics.frames_forwarded.inc_by(frames);
                        metrics.bytes_forwarded.inc_by(bytes);
                    }
                    Err(stop) => break stop.exit(&kill),
                },
                Delivery::PeerLeft => break Exit::PeerLeft,
            },
            room = async { match blocked.as_mut() { Some((_, wait)) => wait.await, None => std::future::pending().await } },
                if blocked.is_some() =>
            {
                let Some((frame, _)) = blocked.take() else { continue };
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
                    if limiter.check().is_err() {
                        break 'conn Exit::Error(ErrorCode::RateLimited);
                    }
                    // Decide on a borrowed view, then let go of it before the text moves on.
                    let room = match inspect(text.as_str()) {
                        Ok(Inbound::Signal { .. }) => None,
                        // From here on the room is its keyed id: no upstream sees the code.
                        Ok(Inbound::Join(code)) => Some(ctx.rooms.id(&code)),
                        Err(e) => break 'conn Exit::Error(e.code()),
                    };
                    match (&mut phase, room) {
                        (Phase::Paired(_, link), None) => blocked = forward(link.as_mut(), Frame::from(text)),
                        (Phase::AwaitJoin(mailbox), Some(room)) => {
                            let Some(mailbox) = mailbox.take() else { break 'conn Exit::Error(ErrorCode::OutOfOrder) };
                            let joined = tokio::select! {
                                biased;
                                () = &mut killed => break 'conn Exit::Error(kill.code()),
                                joined = ctx.upstream.join(&room, mailbox) => joined,
                            };
                            match joined {
                                Ok(crate::upstream::Joined::Waiting(seat)) => {
                                    phase = Phase::Waiting(seat);
                                    deadline.as_mut().reset(Instant::now() + cfg.wait_timeout);
                                }
                                Ok(crate::upstream::Joined::Paired(seat, link)) => {
                                    metrics.rooms_paired_total.inc();
                                    phase = Phase::Paired(seat, link);
                                    if let Err(stop) = bounded(send_text(&mut ws, PEER_FOUND_JSON), killed.as_mut(), stall).await {
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
            () = &mut deadline, if !matches!(phase, Phase::Paired(..)) => {
                break Exit::Error(match phase {
                    Phase::Waiting(_) => ErrorCode::WaitTimeout,
                    _ => ErrorCode::JoinTimeout,
                });
            }
            _ = ping.tick() => {
                if std::mem::take(&mut seen) {
                    alive_at = Instant::now();
                } else if alive_at.elapsed() >= cfg.ping_interval + cfg.ping_timeout {
                    metrics.ping_timeouts.inc();
                    break Exit::Gone;
                }
                if let Err(stop) = bounded(ws.send(Message::Ping(Default::default())), killed.as_mut(), stall).await {
                    break stop.exit(&kill);
                }
            }
        }
    };

    // Leave the room before anything else, so the partner hears of it at once.
    drop(phase);
    goodbye(&mut ws, exit, metrics).await;
}

/// Ends the connection the way `exit` says, within [`CLOSE_GRACE`].
async fn goodbye<S>(ws: &mut WebSocketStream<S>, exit: Exit, metrics: &Metrics)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match exit {
        Exit::Gone => {
            // Let tungstenite finish a close the client started; bounded, as the client may be gone.
            let _ = timeout(CLOSE_GRACE, async { while let Some(Ok(_)) = ws.next().await {} }).await;
        }
        Exit::PeerLeft => {
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
    blocked: &Option<(Frame, BoxFuture<'static, Result<(), LinkError>>)>,
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
fn forward(link: &mut dyn PeerLink, frame: Frame) -> Option<(Frame, BoxFuture<'static, Result<(), LinkError>>)> {
    match link.send(frame) {
        Ok(()) | Err(SendError::Gone) => None,
        Err(SendError::Full(frame)) => Some((frame, link.writable())),
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

/// Runs a write, giving up if the connection is killed or the client does not take the data in `stall`.
async fn bounded<T>(
    write: impl Future<Output = Result<T, WsError>>,
    killed: Pin<&mut impl Future<Output = ()>>,
    stall: Duration,
) -> Result<T, Stop> {
    tokio::select! {
        biased;
        r = write => r.map_err(|_| Stop::Io),
        () = killed => Err(Stop::Killed),
        // Created only if the write did not finish on its first poll: no timer on the fast path.
        () = async { sleep(stall).await } => Err(Stop::Stalled),
    }
}

async fn send_text<S>(ws: &mut WebSocketStream<S>, text: &'static str) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::Text(Utf8Bytes::from_static(text))).await
}

/// Writes every frame in `batch` (at most `--peer-queue` of them), then flushes once.
async fn write_batch<S>(ws: &mut WebSocketStream<S>, batch: &mut VecDeque<Frame>) -> Result<(u64, u64), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut frames, mut bytes) = (0u64, 0u64);
    while let Some(frame) = batch.pop_front() {
        frames += 1;
        bytes += frame.len() as u64;
        ws.feed(Message::Text(frame.into())).await?;
    }
    ws.flush().await?;
    Ok((frames, bytes))
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
