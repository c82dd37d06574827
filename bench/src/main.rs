//! `ghostwire-bench`: the project's benchmark of record.
//!
//! `ghostwire-bench suite` starts each relay under test pinned to core 0
//! (`taskset -c 0`), drives it from this process (which `scripts/bench.sh` pins
//! to core 1), samples the relay's CPU time and memory from `/proc`, and prints
//! one table with medians over `--runs` runs and ratios ours/theirs from the
//! same run. Any relay that speaks the protocol can be measured: ours, and
//! with `--compare` the Python and Node reference relays in `../shared/bench`.

mod load;
mod resume;
mod ws;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "ghostwire-bench", about = "Benchmark relays that speak the Ghostwire room protocol, side by side")]
struct Args {
    /// Also run the comparison relays (Python `websockets`, Node `ws`) from --peers.
    #[arg(long)]
    compare: bool,
    /// Runs per relay; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A tiny configuration that only checks that every scenario runs (for the tests).
    #[arg(long)]
    smoke: bool,
    /// The relay binary under test.
    #[arg(long, default_value = "target/release/ghostwire-relay")]
    relay: PathBuf,
    /// The folder with run_peer.sh and the comparison relays.
    #[arg(long, default_value = "../shared/bench")]
    peers: PathBuf,
    /// Idle connections for the capacity scenario (pairs are half of it).
    #[arg(long, default_value_t = 19_600)]
    capacity: usize,
    /// Run one scenario against our relay and stop (for quick before/after comparisons).
    #[arg(long, value_parser = ["throughput", "curve", "half", "capacity", "cross", "resume"])]
    only: Option<String>,
    /// Another relay binary (e.g. an earlier commit's) to run the cross-relay scenario with too,
    /// alternating with --relay in every run, so the two compare within one run.
    #[arg(long, value_name = "RELAY")]
    baseline: Option<PathBuf>,
}

/// `--only`: one scenario, ours only, medians of `--runs`.
async fn only(args: &Args, plan: &Plan, which: &str) -> Result<()> {
    for name in ["ghostwire", "bare", "split"] {
        println!("{name}:");
        only_one(args, plan, which, name).await?;
    }
    Ok(())
}

async fn only_one(args: &Args, plan: &Plan, which: &str, name: &'static str) -> Result<()> {
    let mut rows = Vec::new();
    for _ in 0..args.runs.max(1) {
        let relay = Relay::start(name, args)?;
        match which {
            "throughput" => {
                let m = measured_throughput(&relay, plan.rooms, plan).await?;
                println!(
                    "throughput: {:.0} frames/s, relay {:.3} µs/frame, generator {:.0}%",
                    m.fps,
                    m.relay_us,
                    m.gen_cpu * 100.0
                );
                rows.push(m.fps);
            }
            "half" => {
                // Saturation with the throughput load, then latency at half of it (as in the full run).
                let rate = (measured_throughput(&relay, plan.rooms, plan).await?.fps / 4.0).max(1.0);
                let half =
                    load::latency(relay.addr, plan.half_rooms, rate, plan.payload, plan.warmup, plan.measure).await?;
                println!(
                    "half: {rate:.0} rt/s over {} rooms, achieved {:.0}, p50 {} p99 {} p99.9 {} µs, generator {:.0}%",
                    plan.half_rooms,
                    half.rate,
                    half.quantile(0.5),
                    half.quantile(0.99),
                    half.quantile(0.999),
                    half.gen_cpu * 100.0
                );
                rows.push(f64::from(half.quantile(0.99)));
            }
            "curve" => {
                // Relay CPU per frame at each room count; the row is its spread (max / min).
                let mut per_frame = Vec::new();
                for &rooms in &plan.curve {
                    let m = measured_throughput(&relay, rooms, plan).await?;
                    println!(
                        "curve: {rooms} rooms, {:.0} frames/s, relay {:.3} µs/frame, generator {:.0}%",
                        m.fps,
                        m.relay_us,
                        m.gen_cpu * 100.0
                    );
                    per_frame.push(m.relay_us);
                }
                let (lo, hi) = per_frame.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &u| (lo.min(u), hi.max(u)));
                rows.push(hi / lo.max(f64::MIN_POSITIVE));
            }
            _ => {
                let cap = capacity(&relay, &plan.capacity_steps).await?;
                for (conns, kib) in &cap.steps {
                    println!("capacity: {conns} connections, {kib:.2} KiB each, {:.2} s to connect", cap.connect_secs);
                }
                rows.push(cap.steps.last().map_or(0.0, |s| s.1));
            }
        }
    }
    println!("median: {:.2}", median(rows));
    Ok(())
}

/// Sizes of every scenario.
struct Plan {
    warmup: Duration,
    measure: Duration,
    rooms: usize,
    window: usize,
    payload: usize,
    rt_rate: f64,
    /// Rooms for the half-saturation latency point: fewer rooms carry the same rate in larger
    /// batches, which one generator core can drive (with 100 rooms it is the generator that saturates).
    half_rooms: usize,
    curve: Vec<usize>,
    capacity_steps: Vec<usize>,
    slow_for: Duration,
    /// Connection resets in the resume scenario.
    cuts: usize,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        if args.smoke {
            return Plan {
                warmup: Duration::from_millis(100),
                measure: Duration::from_millis(300),
                rooms: 4,
                window: 4,
                payload: 256,
                rt_rate: 200.0,
                half_rooms: 2,
                curve: vec![2, 8],
                capacity_steps: vec![20, 40],
                slow_for: Duration::from_millis(500),
                cuts: 3,
            };
        }
        let full = args.capacity.max(2);
        Plan {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(3),
            rooms: 100,
            window: 32,
            payload: 256,
            rt_rate: 2000.0,
            half_rooms: 2,
            curve: vec![10, 100, 1000],
            capacity_steps: vec![full / 10, full / 2, full],
            slow_for: Duration::from_secs(3),
            cuts: 100,
        }
    }
}

/// A relay process under test.
struct Relay {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Relay {
    fn start(name: &'static str, args: &Args) -> Result<Relay> {
        Relay::start_with(name, args, &[])
    }

    /// The relay binary `bin` on the NATS upstream at `nats`.
    fn nats(args: &Args, bin: &Path, nats: &str) -> Result<Relay> {
        let extra = ["--upstream", "nats", "--nats-url", nats, "--cluster-secret", "bench-cluster-secret-0123456789"];
        Relay::start_bin("ghostwire", args, bin, &extra)
    }

    /// The relay binary `bin` on the Kafka upstream at `brokers`, its topic under `prefix`.
    fn kafka(args: &Args, bin: &Path, brokers: &str, prefix: &str) -> Result<Relay> {
        let extra = [
            "--upstream",
            "kafka",
            "--kafka-brokers",
            brokers,
            "--kafka-topic-prefix",
            prefix,
            "--cluster-secret",
            "bench-cluster-secret-0123456789",
        ];
        Relay::start_bin("ghostwire", args, bin, &extra)
    }

    /// The relay binary `bin` on the mesh upstream, announcing itself to the introducer at
    /// `introducer`, or (`is_introducer`) that introducer itself.
    fn mesh(args: &Args, bin: &Path, introducer: &str, is_introducer: bool) -> Result<Relay> {
        let listen = if is_introducer { introducer.to_owned() } else { format!("127.0.0.1:{}", free_port()?) };
        let mut extra =
            vec!["--upstream", "mesh", "--mesh-listen", &listen, "--cluster-secret", "bench-cluster-secret-0123456789"];
        extra.extend(if is_introducer { ["--mesh-introducer", ""] } else { ["--introducers", introducer] });
        extra.retain(|a| !a.is_empty());
        Relay::start_bin("ghostwire", args, bin, &extra)
    }

    fn start_with(name: &'static str, args: &Args, extra: &[&str]) -> Result<Relay> {
        Relay::start_bin(name, args, &args.relay, extra)
    }

    fn start_bin(name: &'static str, args: &Args, bin: &Path, extra: &[&str]) -> Result<Relay> {
        let port = free_port()?;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]);
        match name {
            "ghostwire" => {
                cmd.arg(bin).args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--admin-listen",
                    &admin.to_string(),
                    // The limiter stays on, set high enough not to bind, so its cost is measured.
                    "--frame-rate",
                    "10000000",
                    "--frame-burst",
                    "10000000",
                    "--max-conns-per-ip",
                    "1000000",
                    "--max-conns",
                    "40000",
                    "--max-rooms",
                    "40000",
                ]);
                cmd.args(extra);
                cmd.env("GHOSTWIRE_LOG", "warn");
            }
            "python" | "node" => {
                cmd.arg(args.peers.join("run_peer.sh")).args([name, &port.to_string()]);
            }
            "bare" | "split" => {
                // Built beside the relay by `cargo build -p ghostwire-bench` (scripts/bench.sh).
                let file = if name == "bare" { "bare-relay" } else { "bare-split" };
                let bare = bin.parent().unwrap_or(Path::new(".")).join(file);
                cmd.arg(bare).arg(port.to_string());
            }
            _ => bail!("unknown relay {name}"),
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context(name)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("{name} relay did not start listening on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Relay { name, child, addr, admin })
    }

    /// CPU seconds the relay has used (all threads).
    fn cpu(&self) -> f64 {
        cpu_seconds(&self.child)
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds a process has used (all threads), from /proc/PID/stat.
fn cpu_seconds(child: &Child) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A `nats-server` with JetStream for the cross-relay scenario, pinned with the relays.
struct NatsServer {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl NatsServer {
    /// `None` when nats-server is not installed (the scenario is then skipped, and says so).
    fn start() -> Result<Option<NatsServer>> {
        if Command::new("nats-server").arg("--version").output().is_err() {
            return Ok(None);
        }
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("ghostwire-bench-nats-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("taskset")
            .args(["-c", "0", "nats-server", "-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nats-server")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("nats-server did not start listening");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(NatsServer { child, url: format!("nats://127.0.0.1:{port}"), dir }))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Kafka-protocol broker (noida-db, from the wheel `scripts/test.sh` installs into
/// `target/kafka-tools` beside the relay's build, or `$GHOSTWIRE_NOIDA_DB`) for the cross-relay
/// scenario, pinned with the relays.
struct KafkaBroker {
    child: Child,
    brokers: String,
    dir: PathBuf,
}

impl KafkaBroker {
    /// `None` when noida-db is not installed (its row is then skipped, and says so).
    fn start(relay: &Path) -> Result<Option<KafkaBroker>> {
        // `target/<profile>/ghostwire-relay` → `target/kafka-tools`.
        let tools = relay.parent().and_then(Path::parent).unwrap_or(Path::new("target")).join("kafka-tools/lib");
        let found = std::env::var_os("GHOSTWIRE_NOIDA_DB").map(PathBuf::from).or_else(|| {
            std::fs::read_dir(&tools)
                .ok()?
                .flatten()
                .map(|d| d.path().join("site-packages/noida_db/noida-db"))
                .find(|p| p.is_file())
        });
        let Some(noida) = found else { return Ok(None) };
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("ghostwire-bench-kafka-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(noida)
            .args(["start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port", &port.to_string(), "--data-dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("noida-db")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("noida-db did not start listening");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(KafkaBroker { child, brokers: format!("127.0.0.1:{port}"), dir }))
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One side of the cross-relay comparison.
#[derive(Default, Clone, Copy)]
struct Cross {
    fps: f64,
    /// CPU per frame at saturation, µs: the relays together, and the broker.
    relays_us: f64,
    broker_us: f64,
    open: [f64; 4],
    open_rate: f64,
    closed: [f64; 4],
    closed_rate: f64,
}

/// The same load on one relay (in-process upstream) and split over two relays through a broker
/// or a link. `relays` and `broker` are the processes on core 0 whose CPU is read around the
/// throughput window.
async fn cross_once(
    target: load::Target,
    plan: &Plan,
    rt_rate: f64,
    relays: &[&Relay],
    broker: Option<&Child>,
) -> Result<Cross> {
    let mut cpu = Vec::new();
    let tp = load::throughput(target, plan.rooms, plan.window, plan.payload, plan.warmup, plan.measure, || {
        cpu.push([relays.iter().map(|r| r.cpu()).sum::<f64>(), broker.map_or(0.0, cpu_seconds)])
    })
    .await
    .context("throughput")?;
    let per_frame = |i: usize| match cpu[..] {
        [before, after] => (after[i] - before[i]) * 1e6 / tp.frames.max(1) as f64,
        _ => f64::NAN,
    };
    let open = load::latency(target, plan.rooms, rt_rate, plan.payload, plan.warmup, plan.measure).await?;
    let closed = load::latency(target, 1, 0.0, plan.payload, plan.warmup, plan.measure).await?;
    Ok(Cross {
        fps: tp.frames as f64 / tp.secs,
        relays_us: per_frame(0),
        broker_us: per_frame(1),
        open: quantiles(&open),
        open_rate: open.rate,
        closed: quantiles(&closed),
        closed_rate: closed.rate,
    })
}

/// Waits until a NATS relay's /readyz answers 200 (it has connected and made its bucket).
async fn until_ready(admin: SocketAddr) -> Result<()> {
    until_answer(admin, "/readyz", "").await
}

/// Waits (bounded) until `path` on the admin listener answers 200 with a line starting `line`.
async fn until_answer(admin: SocketAddr, path: &str, line: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let answer = ghostwire_relay::probe::get(admin, path, Duration::from_secs(1)).await;
        if let Ok((200, body)) = &answer {
            if line.is_empty() || body.lines().any(|l| l.starts_with(line)) {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("relay at {admin} never answered {path} with {line:?}: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One run's figures for one relay.
#[derive(Default, Clone)]
struct Figures {
    fps: f64,
    relay_us_per_frame: f64,
    gen_cpu_tp: f64,
    lat: [f64; 4],
    lat_rate: f64,
    gen_cpu_lat: f64,
    closed: [f64; 4],
    closed_rate: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One throughput window: frames per second, the relay's CPU per frame over it, the generator's share.
struct Measured {
    fps: f64,
    relay_us: f64,
    gen_cpu: f64,
}

/// The throughput load at `rooms` rooms on `relay`, with the relay's CPU read around the window.
async fn measured_throughput(relay: &Relay, rooms: usize, plan: &Plan) -> Result<Measured> {
    let mut cpu = Vec::new();
    let w = load::throughput(relay.addr, rooms, plan.window, plan.payload, plan.warmup, plan.measure, || {
        cpu.push(relay.cpu())
    })
    .await?;
    let relay_us = match cpu[..] {
        [before, after] => (after - before) * 1e6 / w.frames.max(1) as f64,
        _ => f64::NAN,
    };
    Ok(Measured { fps: w.frames as f64 / w.secs, relay_us, gen_cpu: w.gen_cpu })
}

fn quantiles(l: &load::Latencies) -> [f64; 4] {
    [0.5, 0.9, 0.99, 0.999].map(|q| l.quantile(q) as f64)
}

async fn run_once(relay: &mut Relay, plan: &Plan) -> Result<Figures> {
    let mut f = Figures::default();
    let tp = measured_throughput(relay, plan.rooms, plan).await.context("throughput")?;
    f.fps = tp.fps;
    f.relay_us_per_frame = tp.relay_us;
    f.gen_cpu_tp = tp.gen_cpu;
    let lat = load::latency(relay.addr, plan.rooms, plan.rt_rate, plan.payload, plan.warmup, plan.measure).await?;
    f.lat = quantiles(&lat);
    f.lat_rate = lat.rate;
    f.gen_cpu_lat = lat.gen_cpu;
    let closed = load::latency(relay.addr, 1, 0.0, plan.payload, plan.warmup, plan.measure).await?;
    f.closed = quantiles(&closed);
    f.closed_rate = closed.rate;
    if !relay.alive() {
        bail!("{} relay died during the run", relay.name);
    }
    Ok(f)
}

/// Capacity: RSS per connection at each step, and the time to connect all.
struct Capacity {
    steps: Vec<(usize, f64)>,
    connect_secs: f64,
    baseline_kib: u64,
}

async fn capacity(relay: &Relay, steps: &[usize]) -> Result<Capacity> {
    // Let the relay settle, then take its idle footprint as the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = relay.memory().0;
    let sources: Vec<IpAddr> = (2..=254).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect();
    let mut held = Vec::new();
    let mut out = Vec::new();
    let mut connect = Duration::ZERO;
    for &conns in steps {
        let pairs = conns / 2;
        let more = pairs.saturating_sub(held.len());
        let (mut fresh, took) =
            load::capacity(relay.addr, held.len(), more, &sources, 256).await.context("capacity")?;
        connect += took;
        held.append(&mut fresh);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss = relay.memory().0;
        out.push((held.len() * 2, (rss.saturating_sub(baseline)) as f64 / (held.len() * 2) as f64));
    }
    drop(held);
    Ok(Capacity { steps: out, connect_secs: connect.as_secs_f64(), baseline_kib: baseline })
}

async fn suite(args: Args) -> Result<()> {
    let plan = Plan::new(&args);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("open-file limit: {n} (children inherit it)"),
        Err(e) => eprintln!("cannot raise the open-file limit: {e}"),
    }
    if let Some(which) = &args.only {
        if which == "cross" {
            return cross_scenario(&args, &plan, args.runs.max(1)).await.map(|_| ());
        }
        if which == "resume" {
            return resume_scenario(&args, &plan).await.map(|_| ());
        }
        return only(&args, &plan, which).await;
    }
    // "bare" and "split", forwarding relays with no limits or checks of two designs
    // (bench/src/bin/bare-relay.rs, bare-split.rs), are the calibration rows: the faster of the
    // two is the floor our frame path is measured against.
    let names: Vec<&'static str> = if args.compare {
        vec!["ghostwire", "bare", "split", "node", "python"]
    } else {
        vec!["ghostwire", "bare", "split"]
    };
    let runs = if args.smoke { 1 } else { args.runs.max(1) };
    let mut per: Vec<(&str, Vec<Figures>)> = Vec::new();
    for &name in &names {
        let mut figs = Vec::new();
        for run in 1..=runs {
            eprintln!("{name}: run {run}/{runs}");
            let mut relay = Relay::start(name, &args)?;
            figs.push(run_once(&mut relay, &plan).await.with_context(|| format!("{name} run {run}"))?);
        }
        per.push((name, figs));
    }
    let med = |name: &str, pick: &dyn Fn(&Figures) -> f64| {
        per.iter().find(|(n, _)| *n == name).map(|(_, f)| median(f.iter().map(pick).collect())).unwrap_or(f64::NAN)
    };

    println!(
        "\n## Throughput ({} rooms × 2 clients, {}-byte payloads, window {} per client)\n",
        plan.rooms, plan.payload, plan.window
    );
    println!("| relay | frames/s | relay CPU µs/frame | generator CPU |");
    println!("|---|---:|---:|---:|");
    for &n in &names {
        let gen = med(n, &|f| f.gen_cpu_tp);
        let bound = if gen > 0.9 { " (generator-bound: a lower bound)" } else { "" };
        println!(
            "| {n} | {:.0}{bound} | {:.2} | {:.0}% |",
            med(n, &|f| f.fps),
            med(n, &|f| f.relay_us_per_frame),
            gen * 100.0
        );
    }
    println!("\n## Latency (round trip through the relay, µs)\n");
    println!("| relay | load | achieved rt/s | p50 | p90 | p99 | p99.9 | generator CPU |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for &n in &names {
        println!(
            "| {n} | {} rt/s over {} rooms | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% |",
            plan.rt_rate,
            plan.rooms,
            med(n, &|f| f.lat_rate),
            med(n, &|f| f.lat[0]),
            med(n, &|f| f.lat[1]),
            med(n, &|f| f.lat[2]),
            med(n, &|f| f.lat[3]),
            med(n, &|f| f.gen_cpu_lat) * 100.0
        );
        println!(
            "| {n} | closed loop, 1 room | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | |",
            med(n, &|f| f.closed_rate),
            med(n, &|f| f.closed[0]),
            med(n, &|f| f.closed[1]),
            med(n, &|f| f.closed[2]),
            med(n, &|f| f.closed[3])
        );
    }

    // Ours only: latency at half our saturation, and the cost curve.
    let sat = med("ghostwire", &|f| f.fps);
    let half_rt = (sat / 2.0 / 2.0).max(1.0);
    let relay = Relay::start("ghostwire", &args)?;
    let half = load::latency(relay.addr, plan.half_rooms, half_rt, plan.payload, plan.warmup, plan.measure).await?;
    println!(
        "| ghostwire | {:.0} rt/s (50% of saturation) over {} rooms | {:.0} | {} | {} | {} | {} | {:.0}% |",
        half_rt,
        plan.half_rooms,
        half.rate,
        half.quantile(0.5),
        half.quantile(0.9),
        half.quantile(0.99),
        half.quantile(0.999),
        half.gen_cpu * 100.0
    );
    println!("\n## Cost curve (ghostwire)\n");
    println!("| rooms | frames/s | relay CPU µs/frame | generator CPU |");
    println!("|---:|---:|---:|---:|");
    let mut curve = Vec::new();
    for &rooms in &plan.curve {
        let m = measured_throughput(&relay, rooms, &plan).await.context("cost curve")?;
        curve.push(m.relay_us);
        println!("| {rooms} | {:.0} | {:.2} | {:.0}% |", m.fps, m.relay_us, m.gen_cpu * 100.0);
    }
    drop(relay);

    // A room split over two relays through NATS, next to the same load on one relay.
    let cross = cross_scenario(&args, &plan, runs).await?;
    let resume = resume_scenario(&args, &plan).await?;

    println!("\n## Capacity (idle connected pairs; relay RSS above its idle baseline)\n");
    println!("| relay | connections | KiB per connection | time to connect all | idle baseline |");
    println!("|---|---:|---:|---:|---:|");
    let mut caps = Vec::new();
    for &n in &names {
        let relay = Relay::start(n, &args)?;
        let steps = if n == "ghostwire" {
            plan.capacity_steps.clone()
        } else {
            vec![*plan.capacity_steps.last().unwrap_or(&2)]
        };
        let cap = capacity(&relay, &steps).await.with_context(|| format!("{n} capacity"))?;
        for (conns, kib) in &cap.steps {
            println!("| {n} | {conns} | {kib:.1} | {:.2} s | {} KiB |", cap.connect_secs, cap.baseline_kib);
        }
        caps.push((n, cap));
    }
    println!("\n## Slow reader ({} s of 32 KiB frames to a peer that never reads)\n", plan.slow_for.as_secs_f64());
    println!("| relay | frames taken | relay peak RSS growth | room ended by the relay |");
    println!("|---|---:|---:|---|");
    for &n in &names {
        let relay = Relay::start(n, &args)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = relay.memory().0;
        let (written, ended) = load::slow_reader(relay.addr, 32 * 1024, plan.slow_for).await?;
        let peak = relay.memory().1;
        println!(
            "| {n} | {written} | {:.1} MiB | {} |",
            (peak.saturating_sub(before)) as f64 / 1024.0,
            if ended { "yes" } else { "no" }
        );
    }

    println!("\n## Against the targets (this run)\n");
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!("- throughput: {:.0} frames/s (target ≥ 1,000,000)", sat);
    for bare in ["bare", "split"] {
        println!(
            "- frame path ours/{bare}: {:.2}× the frames/s, {:.2}× the CPU per frame",
            ratio(sat, med(bare, &|f| f.fps)),
            ratio(med("ghostwire", &|f| f.relay_us_per_frame), med(bare, &|f| f.relay_us_per_frame))
        );
    }
    let floor = med("bare", &|f| f.fps).max(med("split", &|f| f.fps));
    println!("- frame path ours/the faster bare relay: {:.2}× the frames/s (target ≥ 0.85×)", ratio(sat, floor));
    if args.compare {
        println!(
            "- throughput ratio ours/node: {:.2}× (target ≥ 7×); ours/python: {:.2}×",
            ratio(sat, med("node", &|f| f.fps)),
            ratio(sat, med("python", &|f| f.fps))
        );
        for (label, i) in [("p50", 0), ("p99", 2)] {
            println!(
                "- latency {label} at {} rt/s ours/node: {:.2} (target < 1); closed loop ours/node: {:.2}",
                plan.rt_rate,
                ratio(med("ghostwire", &|f| f.lat[i]), med("node", &|f| f.lat[i])),
                ratio(med("ghostwire", &|f| f.closed[i]), med("node", &|f| f.closed[i]))
            );
        }
    }
    println!("- p99 at 50% of saturation: {} µs (target ≤ 1000)", half.quantile(0.99));
    if let Some((one, two)) = cross {
        println!(
            "- cross-relay through NATS: {:.2}× the one-relay throughput; closed-loop p50 {:.0} µs vs {:.0} µs, p99 {:.0} vs {:.0}",
            ratio(two.fps, one.fps),
            two.closed[0],
            one.closed[0],
            two.closed[2],
            one.closed[2]
        );
    }
    if let (Some(min), Some(max)) = (curve.iter().cloned().reduce(f64::min), curve.iter().cloned().reduce(f64::max)) {
        println!(
            "- CPU per frame across {:?} rooms: {:.2}-{:.2} µs, spread {:.0}% (target ≤ 25%)",
            plan.curve,
            min,
            max,
            (max / min - 1.0) * 100.0
        );
    }
    println!(
        "- a connection reset to the first line delivered after it: p50 {:.0} ms, p99 {:.0} ms (target: p50 < 1 s; \
         magic-wormhole's dilation takes 60 s or more to notice a dead peer)",
        resume.0, resume.1
    );
    if let Some((_, cap)) = caps.iter().find(|(n, _)| *n == "ghostwire") {
        if let Some((conns, kib)) = cap.steps.last() {
            println!("- {conns} idle connections at {kib:.1} KiB each (target ≤ 8 KiB at 19,600)");
            let per = |name: &str| caps.iter().find(|(n, _)| *n == name).and_then(|(_, c)| c.steps.last()).map(|s| s.1);
            for other in ["bare", "node"] {
                if let Some(theirs) = per(other) {
                    println!("- idle KiB per connection ours/{other}: {:.2} ({kib:.1} / {theirs:.1})", kib / theirs);
                }
            }
        }
        if let Some((_, node)) = caps.iter().find(|(n, _)| *n == "node") {
            println!(
                "- time to connect all: ours {:.2} s, node {:.2} s (target: ours ≤ node)",
                cap.connect_secs, node.connect_secs
            );
        }
    }
    Ok(())
}

/// The resume scenario (see [`resume`]): two clients through our relay, one connection reset
/// `plan.cuts` times; prints the table and returns (p50, p99) in milliseconds.
async fn resume_scenario(args: &Args, plan: &Plan) -> Result<(f64, f64)> {
    let client = args.relay.with_file_name("ghostwire");
    let relay = Relay::start("ghostwire", args)?;
    let mut took = resume::reset_to_delivery(relay.addr, &client, plan.cuts).await.context("resume")?;
    took.sort();
    let ms = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!("\n## Resume (a connection reset to the first line delivered after it, {} resets, ms)\n", plan.cuts);
    println!("| client | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!("| ghostwire | {:.0} | {:.0} | {:.0} | {:.0} |", ms(0.5), ms(0.9), ms(0.99), ms(1.0));
    Ok((ms(0.5), ms(0.99)))
}

/// The cross-relay scenario: the same load on one relay, then on a room split over two relays
/// through NATS (and, with --baseline, over two relays of the baseline binary), `runs` times,
/// alternating; prints the table of medians.
async fn cross_scenario(args: &Args, plan: &Plan, runs: usize) -> Result<Option<(Cross, Cross)>> {
    let cross_rate = plan.rt_rate / 2.0;
    println!("\n## Cross-relay (a room's two clients on two relays through NATS, Kafka or a mesh link, vs both on one relay)\n");
    let Some(nats) = NatsServer::start()? else {
        println!("skipped: nats-server is not installed (scripts/test.sh installs it)");
        return Ok(None);
    };
    // A broker runs only for its own row: noida-db keeps writing its log out for seconds after a
    // load (its autosave thread), which would otherwise take core 0 from the rows after it.
    let mut kafka_found = true;
    let (mut one, mut two, mut base, mut kaf, mut mesh) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let split = |bin: &Path| {
        let started = Relay::nats(args, bin, &nats.url).and_then(|r1| Ok((r1, Relay::nats(args, bin, &nats.url)?)));
        async move {
            let (r1, r2) = started?;
            until_ready(r1.admin).await?;
            until_ready(r2.admin).await?;
            Ok::<_, anyhow::Error>((r1, r2))
        }
    };
    for run in 1..=runs {
        eprintln!("cross-relay: run {run}/{runs}");
        let single = Relay::start("ghostwire", args)?;
        one.push(cross_once(single.addr.into(), plan, cross_rate, &[&single], None).await.context("one relay")?);
        drop(single);
        let (r1, r2) = split(&args.relay).await?;
        two.push(
            cross_once(load::Target { a: r1.addr, b: r2.addr }, plan, cross_rate, &[&r1, &r2], Some(&nats.child))
                .await
                .context("two relays through NATS")?,
        );
        drop((r1, r2));
        if let Some(bin) = &args.baseline {
            let (r1, r2) = split(bin).await?;
            let target = load::Target { a: r1.addr, b: r2.addr };
            base.push(cross_once(target, plan, cross_rate, &[&r1, &r2], Some(&nats.child)).await.context("baseline")?);
        }
        {
            // Two relays linked directly, found through an introducer (a third process).
            let intro = format!("127.0.0.1:{}", free_port()?);
            let introducer = Relay::mesh(args, &args.relay, &intro, true)?;
            until_ready(introducer.admin).await?;
            let r1 = Relay::mesh(args, &args.relay, &intro, false)?;
            let r2 = Relay::mesh(args, &args.relay, &intro, false)?;
            for r in [&r1, &r2] {
                until_answer(r.admin, "/metrics", "ghostwire_upstream_links_up 1").await?;
                until_ready(r.admin).await?;
            }
            mesh.push(
                cross_once(load::Target { a: r1.addr, b: r2.addr }, plan, cross_rate, &[&r1, &r2], None)
                    .await
                    .context("two relays linked in a mesh")?,
            );
        }
        // Last, and a new broker each run (so every run starts from an empty log, as the NATS
        // runs do), stopped with its relays before the next run.
        match KafkaBroker::start(&args.relay)? {
            Some(kafka) => {
                let r1 = Relay::kafka(args, &args.relay, &kafka.brokers, "bench")?;
                let r2 = Relay::kafka(args, &args.relay, &kafka.brokers, "bench")?;
                until_ready(r1.admin).await?;
                until_ready(r2.admin).await?;
                kaf.push(
                    cross_once(
                        load::Target { a: r1.addr, b: r2.addr },
                        plan,
                        cross_rate,
                        &[&r1, &r2],
                        Some(&kafka.child),
                    )
                    .await
                    .context("two relays through Kafka")?,
                );
            }
            None => kafka_found = false,
        }
        // Each run's frames/s, so a median can be told from a spread.
        let last = |v: &[Cross]| v.last().map_or(String::from("-"), |c| format!("{:.0}", c.fps));
        eprintln!(
            "cross-relay: run {run}/{runs} frames/s: one {}, NATS {}, baseline {}, mesh {}, Kafka {}",
            last(&one),
            last(&two),
            last(&base),
            last(&mesh),
            last(&kaf)
        );
    }
    let pick = |v: &[Cross], f: &dyn Fn(&Cross) -> f64| median(v.iter().map(f).collect());
    let mid = |v: &[Cross]| Cross {
        fps: pick(v, &|c| c.fps),
        relays_us: pick(v, &|c| c.relays_us),
        broker_us: pick(v, &|c| c.broker_us),
        open: [0, 1, 2, 3].map(|i| pick(v, &|c| c.open[i])),
        open_rate: pick(v, &|c| c.open_rate),
        closed: [0, 1, 2, 3].map(|i| pick(v, &|c| c.closed[i])),
        closed_rate: pick(v, &|c| c.closed_rate),
    };
    let (one, two) = (mid(&one), mid(&two));
    println!(
        "| setup | frames/s | CPU µs/frame: relays + broker | {cross_rate} rt/s over {} rooms: p50 / p99 µs | closed loop, 1 room: rt/s, p50 / p99 µs |",
        plan.rooms
    );
    println!("|---|---:|---:|---:|---:|");
    let mut rows = vec![("one relay (in-process)".to_owned(), one), ("two relays via NATS".to_owned(), two)];
    if let Some(bin) = &args.baseline {
        rows.push((format!("two relays via NATS, baseline `{}`", bin.display()), mid(&base)));
    }
    if kafka_found {
        rows.push(("two relays via Kafka (noida-db)".to_owned(), mid(&kaf)));
    }
    rows.push(("two relays linked directly (mesh)".to_owned(), mid(&mesh)));
    for (label, c) in &rows {
        println!(
            "| {label} | {:.0} | {:.2} + {:.2} | {:.0} / {:.0} (achieved {:.0} rt/s) | {:.0}: {:.0} / {:.0} |",
            c.fps, c.relays_us, c.broker_us, c.open[0], c.open[2], c.open_rate, c.closed_rate, c.closed[0], c.closed[2]
        );
    }
    if let (Some(_), Some((_, b))) = (&args.baseline, rows.get(2)) {
        println!("\n- this relay / baseline through NATS: {:.2}× the frames/s", two.fps / b.fps.max(1.0));
    }
    if !kafka_found {
        println!("\n- Kafka row skipped: noida-db is not installed (scripts/test.sh installs it)");
    }
    Ok(Some((one, two)))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(suite(args))
}
