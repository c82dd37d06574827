//! One conformance suite for every upstream: the contract in `relay/src/upstream/mod.rs`,
//! checked through real WebSocket connections against each implementation, unchanged.
//!
//! A harness per upstream starts what it needs (nothing for `local`, a real nats-server for
//! `nats`, a real Kafka-protocol broker for `kafka`, an introducer for `mesh`) and three relay
//! URLs that share one room space (for `local`, one relay three times). The cases every upstream
//! passes run for each; the cases about relays and brokers failing (a relay killed, a broker
//! blip, a lasting outage) run for the distributed ones; for the mesh, which has no broker, what
//! fails is the network in front of one relay's mesh port. Adding an
//! upstream is one `Kind`, one arm in `World::start` and in `processes`, and one `suite!` line.

#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use ghostwire_relay::Config;
use ghostwire_shared::ErrorCode;
use ghostwire_tests::*;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Local,
    Nats,
    Kafka,
    Mesh,
}

/// Environment variables for a relay process.
type Env = Vec<(&'static str, &'static str)>;

/// A broker the distributed cases kill and restart.
trait Broker: Send {
    fn kill(&mut self);
    fn run(&mut self);
}

impl Broker for NatsServer {
    fn kill(&mut self) {
        NatsServer::kill(self)
    }
    fn run(&mut self) {
        NatsServer::run(self)
    }
}

/// The mesh has no broker: what the distributed cases break is the network in front of relay
/// 1's mesh port (its links and its gossip), with the introducer kept alongside.
struct MeshNet {
    cut: Cut,
    _introducer: Option<TestRelay>,
}

impl Broker for MeshNet {
    fn kill(&mut self) {
        self.cut.kill()
    }
    fn run(&mut self) {
        self.cut.run()
    }
}

/// An introducer process for relays run as processes (never cut: killing relays is the case).
struct IntroducerProc(#[allow(dead_code)] RelayProc);

impl Broker for IntroducerProc {
    fn kill(&mut self) {}
    fn run(&mut self) {}
}

impl Broker for KafkaBroker {
    fn kill(&mut self) {
        KafkaBroker::stop(self)
    }
    fn run(&mut self) {
        KafkaBroker::run(self)
    }
}

/// For relays run as processes (to be killed): the broker `kind` needs, started, and the
/// arguments and environment that put a relay process in its room space, with failure detection
/// tuned so that a lost relay is noticed within 2.25 s.
fn processes(kind: Kind) -> (Box<dyn Broker>, Vec<String>, Env) {
    match kind {
        Kind::Nats => {
            let nats = NatsServer::start();
            let args = [
                "--upstream",
                "nats",
                "--nats-url",
                &nats.url(),
                "--nats-heartbeat",
                "250ms",
                "--nats-peer-timeout",
                "2s",
            ]
            .map(String::from)
            .to_vec();
            (Box::new(nats), args, vec![("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)])
        }
        Kind::Kafka => {
            let kafka = KafkaBroker::start();
            let args = [
                "--upstream",
                "kafka",
                "--kafka-brokers",
                &kafka.brokers(),
                "--kafka-heartbeat",
                "250ms",
                "--kafka-peer-timeout",
                "2s",
            ]
            .map(String::from)
            .to_vec();
            (Box::new(kafka), args, vec![("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)])
        }
        Kind::Mesh => {
            let port = free_port();
            let intro = format!("127.0.0.1:{port}");
            let args = mesh_introducer_args(&intro);
            let introducer = RelayProc::start(
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                &[("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)],
            );
            let args = mesh_relay_args(&intro, "127.0.0.1:0", "2s");
            (Box::new(IntroducerProc(introducer)), args, vec![("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)])
        }
        Kind::Local => unreachable!("one process cannot lose a relay"),
    }
}

/// Three relay URLs sharing one room space, and what runs behind them.
struct World {
    relays: Vec<TestRelay>,
    broker: Option<Box<dyn Broker>>,
}

impl World {
    /// The world for `kind`, each relay's configuration adjusted by `tune`.
    async fn start(kind: Kind, tune: impl Fn(&mut Config)) -> World {
        match kind {
            Kind::Local => World { relays: vec![TestRelay::with(tune).await], broker: None },
            Kind::Nats => {
                let nats = NatsServer::start();
                let relays = World::relays(|| nats_config(&nats.url()), tune).await;
                World { relays, broker: Some(Box::new(nats)) }
            }
            Kind::Kafka => {
                let kafka = KafkaBroker::start();
                let relays = World::relays(|| kafka_config(&kafka.brokers(), "conformance"), tune).await;
                World { relays, broker: Some(Box::new(kafka)) }
            }
            Kind::Mesh => {
                let (introducer, intro) = mesh_introducer().await;
                // Relay 1 listens behind a cut; the others reach it only through it.
                let back = free_port();
                let cut = Cut::new(back);
                let mut relays = Vec::new();
                for i in 0..3 {
                    let mut c = mesh_config(&intro);
                    if i == 1 {
                        c.mesh.listen = format!("127.0.0.1:{back}").parse().unwrap();
                        c.mesh.advertise = Some(format!("127.0.0.1:{}", cut.front));
                    }
                    tune(&mut c);
                    relays.push(TestRelay::start(c).await);
                }
                for relay in &relays {
                    until_meshed(relay.admin, 2).await;
                }
                World { relays, broker: Some(Box::new(MeshNet { cut, _introducer: Some(introducer) })) }
            }
        }
    }

    /// Three relays configured by `base` adjusted by `tune`, each ready.
    async fn relays(base: impl Fn() -> Config, tune: impl Fn(&mut Config)) -> Vec<TestRelay> {
        let mut relays = Vec::new();
        for _ in 0..3 {
            let mut c = base();
            tune(&mut c);
            let relay = TestRelay::start(c).await;
            until_ready(relay.admin, 20).await;
            relays.push(relay);
        }
        relays
    }

    /// Relay `i` of three (the same one thrice for an in-process upstream).
    fn url(&self, i: usize) -> String {
        self.relays[i % self.relays.len()].url()
    }

    fn admins(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        self.relays.iter().map(|r| r.admin)
    }
}

/// The text of the next frame, or what came instead.
async fn next_event(ws: &mut Ws) -> String {
    match recv(ws).await {
        Seen::Text(t) => t,
        other => format!("{other:?}"),
    }
}

async fn pairing_frames_and_departure(kind: Kind) {
    let world = World::start(kind, |_| {}).await;
    // Through relays 0 and 1, then 1 and 2: PEER_FOUND, a third joiner refused, 100 frames
    // byte-identical and in order both ways, PEER_LEFT after the last frame, the room free again.
    room_contract(&world.url(0), &world.url(1)).await;
    room_contract(&world.url(1), &world.url(2)).await;
    // Frames that crossed relays were acknowledged, and the time that took is observed (the
    // in-process upstream has no such round trip, and no such series).
    let mut observed = 0.0;
    for admin in world.admins() {
        let (_, metrics) = http_get(admin, "/metrics").await;
        observed += metric_value(&metrics, "ghostwire_upstream_handover_seconds_count").unwrap_or(0.0);
    }
    assert_eq!(observed > 0.0, kind != Kind::Local, "handover observations: {observed}");
}

/// The value of the series `name` (without labels) in a Prometheus text page.
fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn a_departure_follows_every_frame_sent_before_it(kind: Kind) {
    let world = World::start(kind, |c| {
        c.frame_rate = 100_000;
        c.frame_burst = 100_000;
    })
    .await;
    let (mut a, mut b) = pair_via(&world.url(0), &world.url(1), &room("burst")).await;
    // Sent back to back and the socket closed at once: the departure must not overtake them.
    for i in 0..300 {
        send(&mut a, signal("MSG", &format!("n{i}"))).await;
    }
    a.close(None).await.unwrap();
    for i in 0..300 {
        assert_eq!(expect_text(&mut b).await, signal("MSG", &format!("n{i}")), "frame {i}");
    }
    expect_peer_left(&mut b).await;
}

/// 20 clients join one room at once through 3 relays, 50 times over: exactly two get in, and
/// every seat is given back afterwards.
async fn racing_joiners_admit_exactly_two(kind: Kind) {
    let world = World::start(kind, |_| {}).await;
    for round in 0..50 {
        let code = room("race");
        let mut conns = Vec::new();
        for i in 0..20 {
            conns.push(connect(&world.url(i)).await);
        }
        // Every JOIN is written before any answer is read.
        futures_util::future::join_all(conns.iter_mut().map(|ws| send(ws, join_frame(&code)))).await;
        let outcomes = futures_util::future::join_all(conns.iter_mut().map(|ws| async move {
            let text = expect_text(ws).await;
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            match v["type"].as_str() {
                Some("PEER_FOUND") => "in",
                Some("ERROR") if v["code"] == 4002 => "full",
                _ => panic!("unexpected answer to a racing JOIN: {text}"),
            }
        }))
        .await;
        let admitted = outcomes.iter().filter(|o| **o == "in").count();
        assert_eq!(admitted, 2, "round {round}: {outcomes:?}");
        for ws in &mut conns {
            let _ = ws.close(None).await;
        }
    }
    for admin in world.admins() {
        until_metric(admin, "ghostwire_rooms_open 0").await;
    }
}

/// A reader that never reads is dropped with 4009 by its own relay; its partner is told, and
/// the relay never buffers without bound on its way there.
async fn a_slow_consumer_is_dropped_and_its_partner_told(kind: Kind) {
    let world = World::start(kind, |c| {
        c.frame_burst = 1_000_000;
        c.frame_rate = 1_000_000;
        c.peer_queue = 8;
        c.ping_timeout = Duration::from_secs(1);
    })
    .await;
    let (a, b) = pair_via(&world.url(0), &world.url(1), &room("slow")).await;
    let (mut a_tx, mut a_rx) = a.split();
    let frame = signal("MSG", &"x".repeat(32 * 1024));
    let mut sent = 0usize;
    let notice = loop {
        tokio::select! {
            biased;
            seen = a_rx.next() => break seen,
            r = a_tx.send(Message::text(frame.clone())), if sent < 2048 => {
                assert!(r.is_ok(), "A was cut off: {r:?}");
                sent += 1;
            }
        }
    };
    let notice = notice.and_then(|m| m.ok()).map(|m| m.to_text().map(str::to_owned).unwrap_or_default());
    assert_eq!(notice.as_deref(), Some(r#"{"type":"PEER_LEFT"}"#));
    assert!(sent < 2048, "the reader that does not read was never dropped");
    let slow: u64 = world.relays.iter().map(|r| r.metrics.errors(ErrorCode::SlowConsumer)).sum();
    assert_eq!(slow, 1, "exactly the reader is dropped, as a slow consumer");
    drop(b);
}

/// The contract that resuming relies on: a seat whose connection is reset (no LEAVE) is freed at
/// once, so the two sides of a session meet again in the same room through any relay of the
/// room space, again and again. Real clients through proxies that reset their connections 20
/// times while 1,000 lines flow: every line arrives once, in order, and both end normally.
async fn a_session_resumes_through_twenty_cuts_with_every_line_once(kind: Kind) {
    let world = World::start(kind, |_| {}).await;
    let (a, b) = (world.relays[0].addr, world.relays[1 % world.relays.len()].addr);
    lines_survive_cuts(a, b, 1000, 20).await;
}

/// A stranger who knows the room code, and nothing else, joins while a session is away: it is
/// not paired with either side (they meet again in a room only they can name, through any
/// relay of the room space), it waits alone in the code's room (a second stranger pairs with
/// it), and the session goes on with nothing lost.
async fn a_stranger_with_the_room_code_is_not_paired_with_a_session_that_is_away(kind: Kind) {
    use futures_util::FutureExt;
    let world = World::start(kind, |_| {}).await;
    let proxy = CutProxy::start(world.relays[0].addr).await;
    let code = room("stranger");
    let mut a = Peer::start(&["--relay", &proxy.url(), &code]);
    a.status("searching").await;
    let mut b = Peer::start(&["--relay", &world.url(1), &code]);
    a.code().await;
    b.code().await;
    proxy.cut(Duration::from_millis(500));
    b.status("your peer is away").await;
    let mut stranger = join(&world.url(2), &code).await;
    a.status("back: resumed").await;
    a.say("after the drop").await;
    assert_eq!(b.heard().await, "after the drop");
    assert!(stranger.next().now_or_never().is_none(), "the stranger was told something");
    let mut second = join(&world.url(0), &code).await;
    expect_peer_found(&mut stranger).await;
    expect_peer_found(&mut second).await;
    hang_up_and_part(a, b).await;
}

/// Files cross the room space as people send them, at real terminals on two relays: an 8 MiB
/// file and an empty one arrive byte-identical, their SHA-256 verified, while a line typed
/// during the transfer goes through; a transfer the receiver cancels leaves nothing behind.
async fn files_cross_byte_identical_and_a_cancelled_one_leaves_nothing(kind: Kind) {
    let world = World::start(kind, |_| {}).await;
    let dir = TempDir::new("files");
    let (from, to) = (dir.0.join("from"), dir.0.join("to"));
    std::fs::create_dir_all(&from).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    // Not compressible, not repetitive: every byte counts.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let big: Vec<u8> = (0..8 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(from.join("big.bin"), &big).unwrap();
    std::fs::write(from.join("empty"), b"").unwrap();
    let code = room("files");
    let (url_a, url_b) = (world.url(0), world.url(1));
    let to_dir = to.to_str().unwrap().to_owned();
    tokio::task::block_in_place(|| {
        let mut a = TermPeer::start(&["--relay", &url_a, &code], &from);
        a.expect("searching");
        let mut b = TermPeer::start(&["--relay", &url_b, &code], &to);
        a.expect("verification code");
        b.expect("verification code");
        a.line("/send big.bin");
        b.expect("your peer offers big.bin (8.0 MiB)");
        b.line(&format!("/accept {to_dir}"));
        a.expect("sending big.bin: 10%");
        a.line("typed while the file moves");
        b.expect("peer: typed while the file moves");
        b.expect("received big.bin (8.0 MiB), SHA-256 verified");
        a.expect("your peer verified every byte");
        a.line("/send empty");
        b.expect("your peer offers empty (0 bytes)");
        b.line("/accept");
        b.expect("received empty (0 bytes), SHA-256 verified");
        a.expect("sent empty");
        // Cancelled by the receiver half way: no file, no .part.
        a.line("/send big.bin");
        b.expect("your peer offers big.bin");
        b.line(&format!("/accept {to_dir}"));
        b.expect("receiving big.bin: 10%");
        b.line("/cancel");
        b.expect("cancelled receiving big.bin");
        a.expect("your peer cancelled big.bin");
        a.line("/quit");
        b.expect("your peer left");
    });
    assert_eq!(std::fs::read(to.join("big.bin")).unwrap(), big, "the file changed on the way");
    assert_eq!(std::fs::read(to.join("empty")).unwrap(), b"");
    let mut names: Vec<String> =
        std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["big.bin", "empty"], "the cancelled transfer left something");
}

/// Joins abandoned mid-way (the client closes right after JOIN) leave no seat behind.
async fn an_abandoned_join_leaves_no_seat(kind: Kind) {
    let world = World::start(kind, |_| {}).await;
    let code = room("cancel");
    for i in 0..20 {
        let mut ws = connect(&world.url(i)).await;
        send(&mut ws, join_frame(&code)).await;
        drop(ws);
    }
    for admin in world.admins() {
        until_metric(admin, "ghostwire_rooms_open 0").await;
    }
    let (mut a, mut b) = pair_via(&world.url(1), &world.url(2), &code).await;
    let mut third = join(&world.url(0), &code).await;
    expect_error(&mut third, 4002).await;
    send(&mut a, signal("MSG", "after the abandoned joins")).await;
    assert_eq!(expect_text(&mut b).await, signal("MSG", "after the abandoned joins"));
}

/// A relay killed with SIGKILL says nothing more: its partners on other relays are closed with
/// 4011 (peer lost) within the documented bound, and its rooms can be used again at once.
async fn a_killed_relay_s_partners_are_told_the_peer_is_lost(kind: Kind) {
    let (_broker, args, env) = processes(kind);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let victim = RelayProc::start(&args, &env);
    let survivor = RelayProc::start(&args, &env);
    until_ready(victim.admin, 10).await;
    until_ready(survivor.admin, 10).await;
    if kind == Kind::Mesh {
        // A mesh relay admits rooms only while linked to every relay it knows: both, to each other.
        until_meshed(victim.admin, 1).await;
        until_meshed(survivor.admin, 1).await;
    }
    // Room 1: the victim's client is first; room 2: it is second.
    let (one, two) = (room("killa"), room("killb"));
    let mut a1 = join(&victim.url, &one).await;
    until_metric(victim.admin, "ghostwire_rooms_open 1").await;
    let mut b1 = join(&survivor.url, &one).await;
    let mut b2 = join(&survivor.url, &two).await;
    until_metric(survivor.admin, "ghostwire_rooms_open 2").await;
    let mut a2 = join(&victim.url, &two).await;
    for ws in [&mut a1, &mut b1, &mut a2, &mut b2] {
        expect_peer_found(ws).await;
    }
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = tokio::time::Instant::now();
    expect_error(&mut b1, 4011).await;
    expect_error(&mut b2, 4011).await;
    let took = killed.elapsed();
    // The bound with these settings is 2 s + 250 ms; the rest is scheduling slack.
    assert!(took < Duration::from_secs(5), "4011 took {took:?}");
    // A mesh relay admits no new room until its membership has the dead relay down too (it
    // could be cut off, not dead, and own rooms of its own): ready again within that bound.
    until_ready(survivor.admin, 20).await;
    for code in [&one, &two] {
        let (mut c, mut d) = pair_via(&survivor.url, &survivor.url, code).await;
        send(&mut c, signal("MSG", "reused")).await;
        assert_eq!(expect_text(&mut d).await, signal("MSG", "reused"));
    }
    survivor.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, log) = tokio::task::spawn_blocking(move || survivor.wait()).await.unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// The broker goes away and comes back within the peer timeout while one side sends 40 frames
/// at 5 a second: the other side receives all 40, once each, in order, and the room lives on.
async fn a_broker_blip_loses_nothing(kind: Kind) {
    // A blip is an outage shorter than the peer timeout. The broker is down for 1.4 s, but a
    // restarted broker on a loaded machine can take seconds more to answer: the timeout leaves
    // room for that, so the test shows the blip rule, not the machine's speed.
    let mut world = World::start(kind, |c| {
        c.nats.peer_timeout = Duration::from_secs(15);
        c.kafka.peer_timeout = Duration::from_secs(15);
    })
    .await;
    let (mut a, mut b) = pair_via(&world.url(0), &world.url(1), &room("blip")).await;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    for i in 0..40 {
        tick.tick().await;
        if i == 5 {
            world.kill_broker();
        }
        if i == 12 {
            world.restart_broker();
        }
        send(&mut a, signal("MSG", &format!("blip {i}"))).await;
    }
    for i in 0..40 {
        assert_eq!(next_event(&mut b).await, signal("MSG", &format!("blip {i}")), "frame {i}");
    }
    // Both directions still work, and nothing extra arrives.
    send(&mut b, signal("MSG", "after")).await;
    assert_eq!(next_event(&mut a).await, signal("MSG", "after"));
    send(&mut a, signal("MSG", "and back")).await;
    assert_eq!(next_event(&mut b).await, signal("MSG", "and back"));
    let (_, metrics) = http_get(world.relays[0].admin, "/metrics").await;
    assert!(metrics.contains("ghostwire_upstream_reconnects_total 1"), "{metrics}");
}

/// The broker goes away for good: delivery can no longer be guaranteed, so both sides are closed
/// with 4011 (peer lost), not told their peer left.
async fn a_lasting_outage_closes_both_with_peer_lost(kind: Kind) {
    let mut world = World::start(kind, |c| *c = fast_failures(c.clone())).await;
    let (mut a, mut b) = pair_via(&world.url(0), &world.url(1), &room("outage")).await;
    send(&mut a, signal("MSG", "before")).await;
    assert_eq!(expect_text(&mut b).await, signal("MSG", "before"));
    world.kill_broker();
    let gone = tokio::time::Instant::now();
    expect_error(&mut a, 4011).await;
    expect_error(&mut b, 4011).await;
    // fast_failures: a peer is lost after 2 s without heartbeats (every 250 ms).
    assert!(gone.elapsed() < Duration::from_secs(6), "took {:?}", gone.elapsed());
    // Each relay counts the pair it lost, so the documented alert on peers lost fires.
    for admin in [world.relays[0].admin, world.relays[1].admin] {
        let (_, metrics) = http_get(admin, "/metrics").await;
        let lost: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("ghostwire_upstream_peers_lost_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(lost >= 1.0, "a 4011 not counted in ghostwire_upstream_peers_lost_total: {metrics}");
    }
}

/// A pair lost in an outage is never told its peer left. The broker goes away; the first side
/// whose relay notices is closed with 4011; the broker then comes back at once, before the
/// other side's relay may have noticed. The other side must be closed with 4011 too: what the
/// first relay writes when its lost seat departs must not read as a departure (PEER_LEFT,
/// 1000), which would tell a person their peer chose to leave.
async fn a_pair_lost_in_an_outage_is_never_told_its_peer_left(kind: Kind) {
    let mut world = World::start(kind, |c| *c = fast_failures(c.clone())).await;
    let (a, mut b) = pair_via(&world.url(0), &world.url(1), &room("comeback")).await;
    let mut a = a;
    send(&mut a, signal("MSG", "before")).await;
    assert_eq!(expect_text(&mut b).await, signal("MSG", "before"));
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    for (side, mut ws) in [("a", a), ("b", b)] {
        let tx = tx.clone();
        tokio::spawn(async move {
            // What the relay said first (an ERROR or PEER_LEFT text), within the outage bound.
            let said = match tokio::time::timeout(Duration::from_secs(30), recv(&mut ws)).await {
                Ok(Seen::Text(text)) => text,
                other => format!("{other:?}"),
            };
            let _ = tx.send((side, said));
        });
    }
    world.kill_broker();
    let first = seen.recv().await.unwrap();
    world.restart_broker();
    let second = seen.recv().await.unwrap();
    for (side, said) in [first, second] {
        assert!(said.contains(r#""code":4011"#), "side {side} was told {said}, not 4011");
    }
}

/// A client waiting alone when the broker goes away for longer than the peer timeout is told
/// (4007, upstream unavailable) within about that bound, not left waiting until its wait ends
/// (10 minutes by default). An outage shorter than the peer timeout keeps it waiting (see
/// `a_broker_blip_loses_nothing` and the NATS restart test).
async fn a_waiting_client_is_told_when_the_upstream_is_gone(kind: Kind) {
    let mut world = World::start(kind, |c| *c = fast_failures(c.clone())).await;
    let mut alone = join(&world.url(0), &room("alone")).await;
    until_metric(world.relays[0].admin, "ghostwire_rooms_open 1").await;
    world.kill_broker();
    let gone = tokio::time::Instant::now();
    expect_error(&mut alone, 4007).await;
    // fast_failures: 2 s of peer timeout; the rest is detection and scheduling slack.
    assert!(gone.elapsed() < Duration::from_secs(8), "took {:?}", gone.elapsed());
}

/// A relay that is not ready (its broker gone; on the mesh, its links cut) admits no new room:
/// every JOIN gets 4007 while `/readyz` says why, so no relay can decide a room from a view the
/// others do not share. Once the broker is back, each is ready again and rooms pair across
/// them.
async fn a_relay_that_is_not_ready_admits_no_room(kind: Kind) {
    let mut world = World::start(kind, |c| *c = fast_failures(c.clone())).await;
    world.kill_broker();
    let admins: Vec<_> = world.admins().collect();
    for (i, admin) in admins.iter().enumerate() {
        eventually(30, "the relay to be unready", || async move {
            match http_get(*admin, "/readyz").await {
                (503, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        })
        .await;
        let mut c = join(&world.url(i), &room("unready")).await;
        expect_error(&mut c, 4007).await;
    }
    world.restart_broker();
    for admin in &admins {
        until_ready(*admin, 30).await;
    }
    let (mut a, mut b) = pair_via(&world.url(0), &world.url(1), &room("readyagain")).await;
    send(&mut a, signal("MSG", "ready again")).await;
    assert_eq!(expect_text(&mut b).await, signal("MSG", "ready again"));
}

/// The code a relay refuses `code`'s JOIN with (after its ERROR frame, the close).
async fn refusal(url: &str, code: &str) -> Result<u16, String> {
    let mut c = join(url, code).await;
    let text = match recv(&mut c).await {
        Seen::Text(t) => t,
        other => return Err(format!("{other:?}")),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{text}: {e}"))?;
    if v["type"] != "ERROR" {
        return Err(format!("admitted: {text}"));
    }
    finish_close(&mut c).await;
    v["code"].as_u64().and_then(|n| u16::try_from(n).ok()).ok_or(text)
}

/// A paired client's BURN refuses the room (4012) through every relay, for `--burn-ttl` and
/// then no longer; the pair itself goes on, other rooms are untouched, and a client that is not
/// paired cannot burn (4003).
async fn a_burnt_room_is_refused_everywhere_until_its_burn_ends(kind: Kind) {
    const TTL: Duration = Duration::from_secs(8);
    let world = World::start(kind, |c| c.burn_ttl = TTL).await;
    let mut lone = join(&world.url(2), &room("lone")).await;
    send(&mut lone, r#"{"type":"BURN"}"#).await;
    expect_error(&mut lone, 4003).await;

    let code = room("burnt");
    let (mut a, mut b) = pair_via(&world.url(0), &world.url(1), &code).await;
    let burnt_at = tokio::time::Instant::now();
    send(&mut a, r#"{"type":"BURN"}"#).await;
    // The relay reads nothing more from `a` until the burn is recorded: once this frame is
    // through, the room is refused everywhere.
    send(&mut a, signal("MSG", "after the burn")).await;
    assert_eq!(expect_text(&mut b).await, signal("MSG", "after the burn"));
    let recorded_at = tokio::time::Instant::now();
    send(&mut b, signal("MSG", "the pair goes on")).await;
    assert_eq!(expect_text(&mut a).await, signal("MSG", "the pair goes on"));
    a.close(None).await.unwrap();
    expect_peer_left(&mut b).await;

    for i in 0..3 {
        let url = world.url(i);
        let code = code.as_str();
        // A departure may still be on its way to the broker: "full" until then, never admitted.
        eventually(20, "the burnt room to be refused with 4012", || {
            let url = url.clone();
            async move {
                match refusal(&url, code).await? {
                    4012 => Ok(()),
                    4002 => Err("4002 (the departure is on its way)".into()),
                    other => panic!("relay {i} refused a burnt room with {other}, not 4012"),
                }
            }
        })
        .await;
    }
    assert!(
        burnt_at.elapsed() < TTL,
        "the refusals were checked {:?} after the burn, past its TTL: the machine is too slow for this case",
        burnt_at.elapsed()
    );
    // Another room is not affected.
    let (mut c, mut d) = pair_via(&world.url(2), &world.url(0), &room("unburnt")).await;
    send(&mut c, signal("MSG", "hello")).await;
    assert_eq!(expect_text(&mut d).await, signal("MSG", "hello"));
    drop((c, d));

    // The burn ends `TTL` after it was recorded (between `burnt_at` and `recorded_at`).
    tokio::time::sleep_until(recorded_at + TTL + Duration::from_millis(500)).await;
    eventually(20, "the room to pair again once its burn ended", || {
        let code = code.clone();
        let (u0, u1) = (world.url(0), world.url(1));
        async move {
            let mut a = join(&u0, &code).await;
            let mut b = join(&u1, &code).await;
            match (recv(&mut a).await, recv(&mut b).await) {
                (Seen::Text(x), Seen::Text(y)) if x.contains("PEER_FOUND") && y.contains("PEER_FOUND") => Ok(()),
                // Leftovers of the earlier checks may still hold the room for a moment.
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

impl World {
    fn kill_broker(&mut self) {
        if let Some(broker) = self.broker.as_mut() {
            broker.kill();
        }
    }
    fn restart_broker(&mut self) {
        if let Some(broker) = self.broker.as_mut() {
            broker.run();
        }
    }
}

macro_rules! case {
    ($kind:expr, $secs:expr, $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                within($secs, super::$case($kind)).await;
            }
        )+
    };
}

/// The cases every upstream passes.
macro_rules! suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;
            case!($kind, 60, pairing_frames_and_departure, a_departure_follows_every_frame_sent_before_it);
            case!($kind, 60, a_slow_consumer_is_dropped_and_its_partner_told, an_abandoned_join_leaves_no_seat);
            case!($kind, 240, racing_joiners_admit_exactly_two);
            case!($kind, 90, a_burnt_room_is_refused_everywhere_until_its_burn_ends);
            case!($kind, 120, a_session_resumes_through_twenty_cuts_with_every_line_once);
            case!($kind, 60, a_stranger_with_the_room_code_is_not_paired_with_a_session_that_is_away);
            case!($kind, 120, files_cross_byte_identical_and_a_cancelled_one_leaves_nothing);
        }
    };
    ($name:ident, $kind:expr, distributed) => {
        suite!($name, $kind);
        mod distributed {
            use super::*;
            case!($kind, 60, a_killed_relay_s_partners_are_told_the_peer_is_lost);
            case!($kind, 60, a_broker_blip_loses_nothing, a_lasting_outage_closes_both_with_peer_lost);
            case!($kind, 90, a_relay_that_is_not_ready_admits_no_room);
            case!($kind, 90, a_pair_lost_in_an_outage_is_never_told_its_peer_left);
        }
    };
}

suite!(local, Kind::Local);
// With a broker, an upstream that is gone is gone for every room; on the mesh a relay cut
// off from one other relay goes on with the rest, and its waiting clients rightly wait.
mod nats_upstream {
    use super::*;
    suite!(nats, Kind::Nats, distributed);
    case!(Kind::Nats, 60, a_waiting_client_is_told_when_the_upstream_is_gone);
}
mod kafka_upstream {
    use super::*;
    suite!(kafka, Kind::Kafka, distributed);
    case!(Kind::Kafka, 60, a_waiting_client_is_told_when_the_upstream_is_gone);
}
mod mesh_upstream {
    use super::*;
    suite!(mesh, Kind::Mesh, distributed);
}
