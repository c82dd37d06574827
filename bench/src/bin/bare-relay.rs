//! The calibration row of the benchmark: a bare relay that only forwards.
//!
//! It speaks just enough of Ghostwire's relay protocol for the load generator (a JOIN pairs two
//! connections by room; every later text frame goes to the partner verbatim; a departure is a
//! PEER_LEFT) and nothing else: no limits, no validation, no timeouts, no metrics, no upstream
//! layer. One task per connection on a single-threaded runtime, channels between partners, and
//! batched writes (every frame waiting is written before one flush). What Ghostwire's relay
//! does beyond this is what its frame path costs; this is the floor it is measured against.
//! It keeps tokio-tungstenite's default buffers (a 128 KiB read buffer per connection): a floor
//! for frames per second, not for memory per idle connection. It uses the relay's allocator
//! (mimalloc); with glibc's it forwards about as fast.
//!
//! Usage: `bare-relay PORT` (listens on 127.0.0.1).

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The same allocator as Ghostwire's relay, so the two differ in code only.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What a connection hears from its room.
enum Out {
    /// The partner arrived: where to send our frames.
    Paired(mpsc::UnboundedSender<Out>),
    /// A frame from the partner.
    Frame(Utf8Bytes),
    /// The partner left.
    Left,
}

type Rooms = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Out>>>>;

const PEER_FOUND: &str = r#"{"type":"PEER_FOUND"}"#;
const PEER_LEFT: &str = r#"{"type":"PEER_LEFT"}"#;

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
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { return };
    let (mut sink, mut stream) = ws.split();
    let (me, mut inbox) = mpsc::unbounded_channel::<Out>();
    // The JOIN: the room is the value of "room" (no validation).
    let room = match stream.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<serde_json::Value>(&t)
            .ok()
            .and_then(|v| v["room"].as_str().map(str::to_owned))
            .unwrap_or_default(),
        _ => return,
    };
    let waiting = {
        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
        match rooms.remove(&room) {
            Some(first) => Some(first),
            None => {
                rooms.insert(room.clone(), me.clone());
                None
            }
        }
    };
    let mut partner = None;
    if let Some(first) = waiting {
        let _ = first.send(Out::Paired(me.clone()));
        partner = Some(first);
        if sink.send(Message::text(PEER_FOUND)).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            got = stream.next() => match got {
                Some(Ok(Message::Text(t))) => {
                    if let Some(p) = &partner {
                        let _ = p.send(Out::Frame(t));
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            Some(out) = inbox.recv() => {
                let mut next = Some(out);
                // Everything waiting goes out before one flush.
                while let Some(out) = next.take() {
                    let msg = match out {
                        Out::Paired(p) => {
                            partner = Some(p);
                            Message::text(PEER_FOUND)
                        }
                        Out::Frame(t) => Message::Text(t),
                        Out::Left => Message::text(PEER_LEFT),
                    };
                    if sink.feed(msg).await.is_err() {
                        return;
                    }
                    next = inbox.try_recv().ok();
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
    let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
    if rooms.get(&room).is_some_and(|w| w.same_channel(&me)) {
        rooms.remove(&room);
    }
    drop(rooms);
    if let Some(p) = partner {
        let _ = p.send(Out::Left);
    }
}
