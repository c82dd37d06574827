//! The second calibration row: a bare relay of another design than `bare-relay`, the fastest
//! simple one we know (issue 30 measured it at 2.1M frames/s where ours did 1.49M).
//!
//! Like `bare-relay` it speaks only what the load generator needs (a JOIN pairs two connections
//! by room, later text frames go to the partner verbatim, a departure is a PEER_LEFT) and has no
//! limits, timeouts or metrics. What differs:
//! - every frame is parsed with serde_json, borrowed (as a relay that checks frames must);
//! - each connection is two tasks: a reader that parses and hands frames to the partner's
//!   writer, and a writer that drains its unbounded queue `recv_many(.., 256)` at a time, feeds
//!   every frame and flushes once per batch;
//! - a 16 KiB read buffer and a 64 KiB write buffer per connection;
//! - a current-thread runtime.
//!
//! The benchmark keeps whichever bare relay forwards more frames/s as the floor.
//!
//! Usage: `bare-split PORT` (listens on 127.0.0.1).

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The same allocator as Ghostwire's relay, so the rows differ in code only.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What a connection's writer sends.
enum Out {
    /// The partner arrived: where the reader sends our frames.
    Paired(mpsc::UnboundedSender<Out>),
    /// A frame from the partner.
    Frame(Utf8Bytes),
    /// The partner left.
    Left,
}

/// Rooms with one connection waiting: its writer's queue, and where to tell its reader.
type Rooms = Arc<Mutex<HashMap<String, (mpsc::UnboundedSender<Out>, mpsc::UnboundedSender<Out>)>>>;

const PEER_FOUND: &str = r#"{"type":"PEER_FOUND"}"#;
const PEER_LEFT: &str = r#"{"type":"PEER_LEFT"}"#;
/// Frames a writer takes from its queue at once.
const BATCH: usize = 256;

/// The fields a frame is checked for, borrowed from its text.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow, default)]
    room: Option<&'a str>,
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(9000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let rooms: Rooms = Arc::default();
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp, Arc::clone(&rooms)));
        }
    })
}

async fn serve(tcp: TcpStream, rooms: Rooms) {
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024).write_buffer_size(64 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else { return };
    let (mut sink, mut stream) = ws.split();
    // The writer's queue (frames to this client), and the reader's (who its partner is).
    let (to_writer, mut queue) = mpsc::unbounded_channel::<Out>();
    let (to_reader, mut partner_rx) = mpsc::unbounded_channel::<Out>();
    let room = match stream.next().await {
        Some(Ok(Message::Text(t))) => match serde_json::from_str::<Frame>(&t) {
            Ok(Frame { kind: "JOIN", room: Some(room) }) => room.to_owned(),
            _ => return,
        },
        _ => return,
    };
    let waiting = {
        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
        match rooms.remove(&room) {
            Some(first) => Some(first),
            None => {
                rooms.insert(room.clone(), (to_writer.clone(), to_reader.clone()));
                None
            }
        }
    };
    let mut partner: Option<mpsc::UnboundedSender<Out>> = None;
    if let Some((first_writer, first_reader)) = waiting {
        let _ = first_reader.send(Out::Paired(to_writer.clone()));
        let _ = first_writer.send(Out::Frame(Utf8Bytes::from_static(PEER_FOUND)));
        let _ = to_writer.send(Out::Frame(Utf8Bytes::from_static(PEER_FOUND)));
        partner = Some(first_writer);
    }
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while queue.recv_many(&mut batch, BATCH).await > 0 {
            for out in batch.drain(..) {
                let msg = match out {
                    Out::Frame(t) => Message::Text(t),
                    Out::Left => Message::text(PEER_LEFT),
                    Out::Paired(_) => continue,
                };
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    loop {
        tokio::select! {
            // The partner's queue first: the client sends only after PEER_FOUND, queued after it.
            biased;
            Some(Out::Paired(p)) = partner_rx.recv(), if partner.is_none() => partner = Some(p),
            got = stream.next() => match got {
                Some(Ok(Message::Text(t))) => {
                    if serde_json::from_str::<Frame>(&t).is_err() {
                        break;
                    }
                    if let Some(p) = &partner {
                        let _ = p.send(Out::Frame(t));
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    {
        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.get(&room).is_some_and(|(w, _)| w.same_channel(&to_writer)) {
            rooms.remove(&room);
        }
    }
    if let Some(p) = partner {
        let _ = p.send(Out::Left);
    }
    drop(to_writer);
    writer.abort();
}
