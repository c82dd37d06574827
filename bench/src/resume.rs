//! The resume scenario: how long a connection reset interrupts a conversation.
//!
//! Two real `ghostwire` clients (the binary beside the relay's) chat through our relay; one of
//! them reaches it through a TCP proxy here that resets its connection (both ends get a RST, as
//! when a NAT forgets the connection). Right after each reset that client is given a marker
//! line, and the time until the other client prints it is measured: noticing the reset, the
//! backoff, reconnecting, the resume handshake and the re-send, end to end. Both clients
//! resume, so the figure includes the partner's own reconnection too.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long one marker may take before the scenario gives up.
const MARK_WAIT: Duration = Duration::from_secs(60);

/// A loopback proxy to `target` whose [`Proxy::cut`] resets every connection through it.
struct Proxy {
    addr: SocketAddr,
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0u64);
        let tx = cuts.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {
                            reset(client);
                            reset(server);
                        }
                    }
                });
            }
        });
        Ok(Proxy { addr, cuts, task })
    }

    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes `stream` with a TCP reset.
fn reset(stream: TcpStream) {
    // SO_LINGER with a zero timeout makes close() send RST; the socket is closed on drop.
    let _ = stream.set_zero_linger();
}

/// Reads `heard` until the line `mark` (bounded by [`MARK_WAIT`]).
async fn until(heard: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, mark: &str) -> Result<()> {
    loop {
        match tokio::time::timeout(MARK_WAIT, heard.next_line()).await {
            Ok(Ok(Some(line))) if line == mark => return Ok(()),
            Ok(Ok(Some(_))) => {}
            Ok(_) => bail!("the receiving client ended"),
            Err(_) => bail!("{mark:?} did not arrive within {MARK_WAIT:?}"),
        }
    }
}

/// The times from each of `cuts` resets to the first line delivered after it.
pub async fn reset_to_delivery(relay: SocketAddr, client: &Path, cuts: usize) -> Result<Vec<Duration>> {
    let proxy = Proxy::start(relay).await?;
    let code = format!("RESUME{:010}", std::process::id());
    let start = |url: String| {
        tokio::process::Command::new(client)
            .args(["--relay", &url, &code])
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", client.display()))
    };
    let mut a = start(format!("ws://{}/", proxy.addr))?;
    let mut b = start(format!("ws://{relay}/"))?;
    let (Some(mut to_a), Some(from_b)) = (a.stdin.take(), b.stdout.take()) else { bail!("no pipes") };
    let mut heard = BufReader::new(from_b).lines();
    // Lines before the session is up are queued: the first one arriving means it is up.
    to_a.write_all(b"ready\n").await?;
    until(&mut heard, "ready").await.context("the clients did not connect")?;
    let mut took = Vec::with_capacity(cuts);
    for i in 0..cuts {
        proxy.cut();
        let cut_at = Instant::now();
        to_a.write_all(format!("mark {i}\n").as_bytes()).await?;
        until(&mut heard, &format!("mark {i}")).await?;
        took.push(cut_at.elapsed());
    }
    drop(to_a);
    let _ = (a.kill().await, b.kill().await);
    Ok(took)
}
