//! The load scenarios, each driving a relay through real TCP connections.
//!
//! All run on one thread (the generator is pinned to one core by the suite) and
//! report their own CPU use, so a figure the generator could not drive is
//! recognisable as a lower bound.

use crate::ws::{self, text_frame, Reader};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A connected client: its stream and read buffer.
pub struct Conn {
    stream: TcpStream,
    reader: Reader,
}

/// CPU time this process has used (user + system).
pub fn own_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// The SIGNAL frame text with a payload field of exactly `len` bytes, starting with `stamp`.
pub fn signal_text(len: usize, stamp: &str) -> Vec<u8> {
    let mut payload = stamp.to_owned();
    while payload.len() < len {
        payload.push('x');
    }
    payload.truncate(len);
    format!(r#"{{"type":"SIGNAL","kind":"MSG","payload":"{payload}"}}"#).into_bytes()
}

/// Where the payload starts in [`signal_text`]'s output.
const PAYLOAD_AT: usize = r#"{"type":"SIGNAL","kind":"MSG","payload":""#.len();

async fn join(addr: SocketAddr, src: Option<IpAddr>, room: &str, buffer: usize) -> io::Result<Conn> {
    let mut stream = ws::connect(addr, src).await?;
    stream.write_all(&text_frame(format!(r#"{{"type":"JOIN","room":"{room}"}}"#).as_bytes())).await?;
    Ok(Conn { stream, reader: Reader::new(buffer) })
}

/// Waits for PEER_FOUND (answering pings on the way).
async fn peer_found(c: &mut Conn) -> io::Result<()> {
    loop {
        while let Some(f) = c.reader.next_frame() {
            match f.opcode {
                1 if f.payload.windows(10).any(|w| w == b"PEER_FOUND") => return Ok(()),
                1 => return Err(io::Error::other(format!("relay said {}", String::from_utf8_lossy(f.payload)))),
                8 => return Err(io::Error::other("relay closed before PEER_FOUND")),
                _ => {}
            }
        }
        if !c.reader.fill(&mut c.stream).await? {
            return Err(io::Error::other("relay closed before PEER_FOUND"));
        }
    }
}

/// Where the two clients of each room connect: one relay, or a room split over two relays.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The first client's relay.
    pub a: SocketAddr,
    /// The second client's relay.
    pub b: SocketAddr,
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Target {
        Target { a: addr, b: addr }
    }
}

/// Two clients paired in `room`.
pub async fn pair(to: impl Into<Target>, src: Option<IpAddr>, room: &str, buffer: usize) -> io::Result<(Conn, Conn)> {
    let to = to.into();
    let mut a = join(to.a, src, room, buffer).await?;
    let mut b = join(to.b, src, room, buffer).await?;
    peer_found(&mut a).await?;
    peer_found(&mut b).await?;
    Ok((a, b))
}

/// A room code unique per scenario run and index.
pub fn room(tag: u32, i: usize) -> String {
    format!("B{tag:05}R{i:07}")
}

/// A tag no earlier scenario of this process used: a scenario run twice on one relay (the cost
/// curve) must not join rooms whose previous clients the relay may still be closing.
fn next_tag() -> u32 {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (std::process::id().wrapping_mul(97).wrapping_add(run)) % 100_000
}

async fn pairs(to: Target, n: usize, tag: u32, buffer: usize) -> io::Result<Vec<(Conn, Conn)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(pair(to, None, &room(tag, i), buffer).await?);
    }
    Ok(out)
}

/// What a measured window saw.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Frames delivered to clients.
    pub frames: u64,
    /// Wall time.
    pub secs: f64,
    /// This generator's CPU use, as a share of one core.
    pub gen_cpu: f64,
}

/// Scenario 1: `rooms` pairs send `payload`-byte SIGNALs both ways; each client keeps `window`
/// frames in flight (it sends one more for every frame it receives).
pub async fn throughput(
    to: impl Into<Target>,
    rooms: usize,
    window: usize,
    payload: usize,
    warmup: Duration,
    measure: Duration,
    mut probe: impl FnMut(),
) -> io::Result<Window> {
    let tag = next_tag();
    let conns = pairs(to.into(), rooms, tag, 64 * 1024).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let frame = text_frame(&signal_text(payload, "T"));
    let mut tasks = Vec::new();
    for (a, b) in conns {
        for mut c in [a, b] {
            let (frame, delivered, stop) = (frame.clone(), Arc::clone(&delivered), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::with_capacity(frame.len() * window);
                for _ in 0..window {
                    out.extend_from_slice(&frame);
                }
                c.stream.write_all(&out).await?;
                while !stop.load(Relaxed) {
                    if !c.reader.fill(&mut c.stream).await? {
                        break;
                    }
                    out.clear();
                    let mut n = 0;
                    while let Some(f) = c.reader.next_frame() {
                        match f.opcode {
                            1 => n += 1,
                            9 => out.extend_from_slice(&ws::client_frame(0xA, f.payload)),
                            8 => return Ok::<(), io::Error>(()),
                            _ => {}
                        }
                    }
                    delivered.fetch_add(n, Relaxed);
                    for _ in 0..n {
                        out.extend_from_slice(&frame);
                    }
                    c.stream.write_all(&out).await?;
                }
                Ok(())
            }));
        }
    }
    tokio::time::sleep(warmup).await;
    probe();
    let (f0, c0, t0) = (delivered.load(Relaxed), own_cpu(), Instant::now());
    tokio::time::sleep(measure).await;
    let (f1, c1, secs) = (delivered.load(Relaxed), own_cpu(), t0.elapsed().as_secs_f64());
    probe();
    stop.store(true, Relaxed);
    for t in tasks {
        t.abort();
    }
    Ok(Window { frames: f1 - f0, secs, gen_cpu: (c1 - c0).as_secs_f64() / secs })
}

/// Round-trip times in microseconds, with the generator's CPU share.
pub struct Latencies {
    /// Every sample, sorted.
    pub micros: Vec<u32>,
    /// Round trips per second achieved.
    pub rate: f64,
    /// This generator's CPU use, as a share of one core.
    pub gen_cpu: f64,
}

impl Latencies {
    /// The `q` quantile (0..=1) in microseconds.
    pub fn quantile(&self, q: f64) -> u32 {
        if self.micros.is_empty() {
            return 0;
        }
        let i = ((self.micros.len() - 1) as f64 * q).round() as usize;
        self.micros[i]
    }
}

/// Scenario 2: in each room A sends timestamped SIGNALs and B echoes them. With `rate` > 0 the
/// offered load is `rate` round trips/s spread evenly over the rooms (open loop: a pacing thread
/// writes each frame at its scheduled time, within ~20 µs, whatever came back; tokio's 1 ms timer
/// would send them in millisecond bursts instead); with `rate` = 0 each A sends its next frame
/// when the echo arrives. The round trip is measured from the moment the frame is written to the
/// moment the echo is read.
pub async fn latency(
    to: impl Into<Target>,
    rooms: usize,
    rate: f64,
    payload: usize,
    warmup: Duration,
    measure: Duration,
) -> io::Result<Latencies> {
    let tag = next_tag();
    let conns = pairs(to.into(), rooms, tag, 16 * 1024).await?;
    let epoch = Instant::now();
    let record_from = epoch + warmup;
    let record_until = record_from + measure;
    let open_loop = rate > 0.0;
    let mut tasks = Vec::new();
    let mut writers = Vec::new();
    for (mut a, mut b) in conns.into_iter() {
        if open_loop {
            // The pacing thread writes through a second descriptor of the same socket.
            let std = a.stream.into_std()?;
            writers.push(std.try_clone()?);
            a.stream = TcpStream::from_std(std)?;
        }
        // B echoes every SIGNAL back, byte for byte.
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while b.reader.fill(&mut b.stream).await.unwrap_or(false) {
                out.clear();
                while let Some(f) = b.reader.next_frame() {
                    match f.opcode {
                        1 => ws::push_frame(&mut out, 0x1, f.payload),
                        9 => ws::push_frame(&mut out, 0xA, f.payload),
                        _ => {}
                    }
                }
                if b.stream.write_all(&out).await.is_err() {
                    break;
                }
            }
            Vec::new()
        }));
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut stamper = Stamper::new(payload, epoch);
            if !open_loop && stamper.send(&mut a.stream, 1).await.is_err() {
                return samples;
            }
            loop {
                // Stop at the end of the window even if nothing more arrives (not every relay pings).
                match tokio::time::timeout_at(record_until.into(), a.reader.fill(&mut a.stream)).await {
                    Ok(Ok(true)) => {}
                    _ => return samples,
                }
                let mut echoes = 0;
                let mut pongs = Vec::new();
                let now = Instant::now();
                let now_ns = epoch.elapsed().as_nanos();
                while let Some(f) = a.reader.next_frame() {
                    match f.opcode {
                        1 if f.payload.len() >= PAYLOAD_AT + 20 => {
                            let digits = &f.payload[PAYLOAD_AT..PAYLOAD_AT + 20];
                            let sent_ns: u128 =
                                std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                            if now > record_from && now < record_until {
                                let rtt = now_ns.saturating_sub(sent_ns) / 1000;
                                samples.push(rtt.min(u32::MAX as u128) as u32);
                            }
                            echoes += 1;
                        }
                        9 => ws::push_frame(&mut pongs, 0xA, f.payload),
                        _ => {}
                    }
                }
                if !pongs.is_empty() && a.stream.write_all(&pongs).await.is_err() {
                    return samples;
                }
                if !open_loop && echoes > 0 && stamper.send(&mut a.stream, echoes).await.is_err() {
                    return samples;
                }
            }
        }));
    }
    let pacer = open_loop.then(|| std::thread::spawn(move || pace(writers, rate, payload, epoch, record_until)));
    tokio::time::sleep_until((record_from).into()).await;
    let c0 = own_cpu();
    tokio::time::sleep_until(record_until.into()).await;
    let gen_cpu = (own_cpu() - c0).as_secs_f64() / measure.as_secs_f64();
    if let Some(p) = pacer {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    let mut micros = Vec::new();
    for t in tasks.into_iter().skip(1).step_by(2) {
        micros.extend(t.await.unwrap_or_default());
    }
    micros.sort_unstable();
    let rate = micros.len() as f64 / measure.as_secs_f64();
    Ok(Latencies { micros, rate, gen_cpu })
}

/// The open-loop sender: frame `k` goes to room `k % rooms` at `k / rate` seconds. Wakes every
/// ~50 µs (timer slack lowered to 1 µs), stamps what is due with the time of writing, and writes
/// each room's due frames in one write.
fn pace(mut writers: Vec<std::net::TcpStream>, rate: f64, payload: usize, epoch: Instant, until: Instant) {
    use std::io::Write;
    let _ = nix::sys::prctl::set_timerslack(1_000);
    let mut frame = text_frame(&signal_text(payload, &"0".repeat(20)));
    let at = frame.len() - (signal_text(payload, "").len() - PAYLOAD_AT);
    let rooms = writers.len().max(1);
    let mut batches: Vec<Vec<u8>> = vec![Vec::new(); rooms];
    let start = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < until {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if due > sent {
            let stamp = format!("{:020}", epoch.elapsed().as_nanos());
            frame[at..at + 20].copy_from_slice(stamp.as_bytes());
            for k in sent..due {
                batches[(k % rooms as u64) as usize].extend_from_slice(&frame);
            }
            sent = due;
            for (w, batch) in writers.iter_mut().zip(batches.iter_mut()) {
                // Non-blocking (the descriptor is shared with tokio): retry until the kernel takes it.
                let mut left: &[u8] = batch;
                while !left.is_empty() {
                    match w.write(left) {
                        Ok(n) => left = &left[n..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                        Err(_) => return,
                    }
                }
                batch.clear();
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Writes timestamped SIGNAL frames from one reused buffer: the frame is built once and only its
/// 20 timestamp digits change.
struct Stamper {
    frame: Vec<u8>,
    at: usize,
    out: Vec<u8>,
    epoch: Instant,
}

impl Stamper {
    fn new(payload: usize, epoch: Instant) -> Stamper {
        let frame = text_frame(&signal_text(payload, &"0".repeat(20)));
        let at = frame.len() - (signal_text(payload, "").len() - PAYLOAD_AT);
        Stamper { frame, at, out: Vec::new(), epoch }
    }

    /// Writes `n` frames stamped now, in one write.
    async fn send(&mut self, stream: &mut TcpStream, n: usize) -> io::Result<()> {
        let stamp = format!("{:020}", self.epoch.elapsed().as_nanos());
        self.frame[self.at..self.at + 20].copy_from_slice(stamp.as_bytes());
        self.out.clear();
        for _ in 0..n {
            self.out.extend_from_slice(&self.frame);
        }
        stream.write_all(&self.out).await
    }
}

/// Scenario 3: `n` idle pairs (room indexes from `first`), from source addresses cycling over `sources`, connected with at
/// most `concurrency` handshakes in flight. Returns the connections (to hold) and the time taken.
pub async fn capacity(
    addr: SocketAddr,
    first: usize,
    n: usize,
    sources: &[IpAddr],
    concurrency: usize,
) -> io::Result<(Vec<(Conn, Conn)>, Duration)> {
    let tag = next_tag();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in first..first + n {
        let gate = Arc::clone(&gate);
        let src = sources.get(i % sources.len().max(1)).copied();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(io::Error::other)?;
            pair(addr, src, &room(tag, i), 256).await
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.push(t.await.map_err(io::Error::other)??);
    }
    Ok((held, start.elapsed()))
}

/// Scenario 4: one pair; A writes `payload`-byte frames as fast as the relay takes them for
/// `duration` while B never reads. Returns how many frames A wrote, and whether the relay ended
/// the room (B dropped, A told).
pub async fn slow_reader(addr: SocketAddr, payload: usize, duration: Duration) -> io::Result<(u64, bool)> {
    let tag = next_tag();
    let (mut a, b) = pair(addr, None, &room(tag, 0), 4096).await?;
    let frame = text_frame(&signal_text(payload, "S"));
    let mut burst = Vec::new();
    for _ in 0..16 {
        burst.extend_from_slice(&frame);
    }
    let mut written = 0u64;
    let deadline = tokio::time::Instant::now() + duration;
    let (mut rd, mut wr) = a.stream.split();
    let ended = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break false,
            r = wr.write_all(&burst) => { if r.is_err() { break true; } written += 16; }
            r = a.reader.fill(&mut rd) => {
                if !r.unwrap_or(false) { break true; }
                let mut left = false;
                while let Some(f) = a.reader.next_frame() {
                    left |= f.opcode == 8 || f.payload.windows(9).any(|w| w == b"PEER_LEFT");
                }
                if left { break true; }
            }
        }
    };
    drop(b);
    Ok((written, ended))
}
