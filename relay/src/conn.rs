//! One task per client connection, from the first frame to the close.
//!
//! The task owns its WebSocket outright (no split, no lock) and waits on four
//! things at once: its kill switch (shutdown, slow consumer), its control
//! channel (PEER_FOUND, PEER_LEFT), its frame queue (what the partner sent)
//! and the socket. The phases are an enum: `AwaitJoin` → `Waiting` →
//! `Paired`; any frame that does not fit the phase ends the connection with
//! its code, and only this connection.
//!
//! Frames from the partner are written in batches: `feed` each queued frame,
//! `flush` once when the queue is empty, so a busy pair costs one syscall per
//! batch rather than per frame. A write the client does not take within
//! `--ping-timeout` drops it as a slow consumer.
//!
//! When the partner's queue is full, the frame waits in `blocked` and the task
//! stops reading its own client (backpressure through TCP) while it keeps
//! writing what the partner sends, so two busy peers never wait on each other.

use crate::metrics::Metrics;
use crate::upstream::{BoxFuture, Control, Frame, KillSwitch, LinkError, Mailbox, PeerLink, Seat, SendError, Upstream};
use crate::Config;
use futures_util::{SinkExt, StreamExt};
use ghostwire_shared::frame::{inspect, Inbound, PEER_FOUND_JSON, PEER_LEFT_JSON};
use ghostwire_shared::{ErrorCode, RelayFrame};
use governor::{Quota, RateLimiter};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Most frames written between two flushes.
const MAX_BATCH: usize = 256;
/// Time a closing client gets to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What every connection task shares.
pub(crate) struct Ctx {
    pub config: Config,
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
    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(cfg.peer_queue as usize);
    // A mailbox receives at most one PeerFound and one PeerLeft.
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(2);
    let mut phase = Phase::AwaitJoin(Some(Mailbox { frames: frames_tx, control: control_tx, kill: kill.clone() }));
    let limiter = RateLimiter::direct(
        Quota::per_second(NonZeroU32::new(cfg.frame_rate).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(cfg.frame_burst).unwrap_or(NonZeroU32::MIN)),
    );
    let stall = cfg.ping_timeout;
    let deadline = sleep(cfg.join_timeout);
    tokio::pin!(deadline);
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    // A frame the partner had no room for, and the wait for that room.
    let mut blocked: Option<(Frame, BoxFuture<'static, Result<(), LinkError>>)> = None;

    let exit = loop {
        tokio::select! {
            biased;
            () = kill.fired() => break Exit::Error(kill.code()),
            Some(control) = control_rx.recv() => match control {
                Control::PeerFound(link) => {
                    let Phase::Waiting(seat) = std::mem::replace(&mut phase, Phase::AwaitJoin(None)) else {
                        // The upstream broke its contract; fail this connection, not the relay.
                        tracing::error!("PeerFound outside the waiting phase");
                        break Exit::Error(ErrorCode::OutOfOrder);
                    };
                    phase = Phase::Paired(seat, link);
                    if let Err(stop) = bounded(send_text(&mut ws, PEER_FOUND_JSON), &kill, stall).await {
                        break stop.exit(&kill);
                    }
                }
                Control::PeerLeft => break Exit::PeerLeft,
            },
            Some(first) = frames_rx.recv() => {
                match bounded(write_batch(&mut ws, first, &mut frames_rx), &kill, stall).await {
                    Ok((frames, bytes)) => {
                        metrics.frames_forwarded.fetch_add(frames, Relaxed);
                        metrics.bytes_forwarded.fetch_add(bytes, Relaxed);
                    }
                    Err(stop) => break stop.exit(&kill),
                }
            }
            room = async { match blocked.as_mut() { Some((_, wait)) => wait.await, None => std::future::pending().await } },
                if blocked.is_some() =>
            {
                let Some((frame, _)) = blocked.take() else { continue };
                if let (Ok(()), Phase::Paired(_, link)) = (room, &mut phase) {
                    blocked = forward(link.as_mut(), frame);
                }
            }
            msg = ws.next(), if blocked.is_none() => {
                last_seen = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => break Exit::Error(ErrorCode::Malformed),
                    Some(Ok(Message::Ping(_))) => {
                        if limiter.check().is_err() {
                            break Exit::Error(ErrorCode::RateLimited);
                        }
                        continue;
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break Exit::Gone,
                    Some(Err(WsError::Capacity(_))) => break Exit::Error(ErrorCode::TooLarge),
                    Some(Err(WsError::Utf8(_) | WsError::Protocol(_))) => break Exit::Error(ErrorCode::Malformed),
                    Some(Err(_)) => break Exit::Gone,
                };
                if limiter.check().is_err() {
                    break Exit::Error(ErrorCode::RateLimited);
                }
                // Decide on a borrowed view, then let go of it before the text moves on.
                let room = match inspect(text.as_str()) {
                    Ok(Inbound::Signal { .. }) => None,
                    Ok(Inbound::Join(room)) => Some(room),
                    Err(e) => break Exit::Error(e.code()),
                };
                match (&mut phase, room) {
                    (Phase::Paired(_, link), None) => blocked = forward(link.as_mut(), text),
                    (Phase::AwaitJoin(mailbox), Some(room)) => {
                        let Some(mailbox) = mailbox.take() else { break Exit::Error(ErrorCode::OutOfOrder) };
                        let joined = tokio::select! {
                            biased;
                            () = kill.fired() => break Exit::Error(kill.code()),
                            joined = ctx.upstream.join(&room, mailbox) => joined,
                        };
                        match joined {
                            Ok(crate::upstream::Joined::Waiting(seat)) => {
                                phase = Phase::Waiting(seat);
                                deadline.as_mut().reset(Instant::now() + cfg.wait_timeout);
                            }
                            Ok(crate::upstream::Joined::Paired(seat, link)) => {
                                metrics.rooms_paired_total.fetch_add(1, Relaxed);
                                phase = Phase::Paired(seat, link);
                                if let Err(stop) = bounded(send_text(&mut ws, PEER_FOUND_JSON), &kill, stall).await {
                                    break stop.exit(&kill);
                                }
                            }
                            Err(e) => break Exit::Error(e.code()),
                        }
                    }
                    _ => break Exit::Error(ErrorCode::OutOfOrder),
                }
            }
            () = &mut deadline, if !matches!(phase, Phase::Paired(..)) => {
                break Exit::Error(match phase {
                    Phase::Waiting(_) => ErrorCode::WaitTimeout,
                    _ => ErrorCode::JoinTimeout,
                });
            }
            _ = ping.tick() => {
                if last_seen.elapsed() >= cfg.ping_interval + cfg.ping_timeout {
                    metrics.ping_timeouts.fetch_add(1, Relaxed);
                    break Exit::Gone;
                }
                if let Err(stop) = bounded(ws.send(Message::Ping(Default::default())), &kill, stall).await {
                    break stop.exit(&kill);
                }
            }
        }
    };

    // Leave the room before anything else, so the partner hears of it at once.
    drop(phase);
    match exit {
        Exit::Gone => {
            // Let tungstenite finish a close the client started; bounded, as the client may be gone.
            let _ = timeout(CLOSE_GRACE, async { while let Some(Ok(_)) = ws.next().await {} }).await;
        }
        Exit::PeerLeft => {
            let finish = async {
                // The partner's last frames were queued before its departure notice: deliver them first.
                while let Ok(frame) = frames_rx.try_recv() {
                    ws.feed(Message::Text(frame)).await?;
                }
                ws.feed(Message::Text(Utf8Bytes::from_static(PEER_LEFT_JSON))).await?;
                ws.flush().await?;
                close(&mut ws, CloseCode::Normal, "peer left").await
            };
            let _ = timeout(CLOSE_GRACE, finish).await;
        }
        Exit::Error(code) => {
            metrics.error(code);
            tracing::debug!(code = code.as_u16(), reason = code.reason(), "closing connection");
            let finish = async {
                ws.feed(Message::text(RelayFrame::error(code).to_json())).await?;
                close(&mut ws, CloseCode::from(code.as_u16()), code.reason()).await
            };
            let _ = timeout(CLOSE_GRACE, finish).await;
        }
    }
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
    kill: &KillSwitch,
    stall: Duration,
) -> Result<T, Stop> {
    tokio::select! {
        biased;
        r = write => r.map_err(|_| Stop::Io),
        () = kill.fired() => Err(Stop::Killed),
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

/// Writes `first` and whatever else is queued (up to [`MAX_BATCH`]), then flushes once.
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    first: Frame,
    queue: &mut mpsc::Receiver<Frame>,
) -> Result<(u64, u64), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut frames, mut bytes) = (1u64, first.len() as u64);
    ws.feed(Message::Text(first)).await?;
    while frames < MAX_BATCH as u64 {
        let Ok(next) = queue.try_recv() else { break };
        frames += 1;
        bytes += next.len() as u64;
        ws.feed(Message::Text(next)).await?;
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
