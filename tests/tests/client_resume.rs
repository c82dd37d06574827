//! A conversation survives its connections: real `ghostwire` processes whose TCP connections
//! are reset by a proxy, or whose relay is killed and restarted, resume by themselves (no code
//! typed again) and deliver every line exactly once, in order.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;
use nix::sys::signal::Signal;
use std::time::Duration;

/// Lines piped in, and connection cuts while they flow.
const LINES: usize = 1000;
const CUTS: usize = 20;

/// A small deterministic generator for the cut timings (the seed is printed to replay a run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A pipes [`LINES`] numbered lines to B, each through its own proxy in front of its relay,
/// while the proxies cut connections [`CUTS`] times (each cut once the session is back from
/// the one before); B must print each line once, in order, and both must end normally with
/// everything confirmed.
async fn lines_survive_cuts(relay_a: std::net::SocketAddr, relay_b: std::net::SocketAddr) {
    let proxies = [CutProxy::start(relay_a).await, CutProxy::start(relay_b).await];
    let code = room("cuts");
    let mut a = Peer::start(&["--relay", &proxies[0].url(), &code]);
    a.status("searching").await;
    let mut b = Peer::start(&["--relay", &proxies[1].url(), &code]);
    a.code().await;
    b.code().await;
    for i in 1..=LINES {
        a.say(&format!("line {i:04}")).await;
    }
    a.hang_up();
    let reader = tokio::spawn(async move {
        for i in 1..=LINES {
            assert_eq!(b.heard().await, format!("line {i:04}"), "line {i}: each line once, in order");
        }
        b
    });
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("cut timings seed: {seed}");
    let mut rng = Lcg(seed);
    for n in 0..CUTS {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        // One side's connection, the other's, or both at once; new ones refused for a while.
        let refuse = Duration::from_millis(rng.below(500));
        match n % 3 {
            0 => proxies[0].cut(refuse),
            1 => proxies[1].cut(refuse),
            _ => proxies.iter().for_each(|p| p.cut(refuse)),
        }
        a.status("back: resumed").await;
    }
    let mut b = reader.await.unwrap();
    b.hang_up();
    let (ea, eb) = (a.exit().await, b.exit().await);
    for (code, log) in [&ea, &eb] {
        assert_eq!(*code, 0, "{log}");
        assert!(log.contains("you both finished: everything was sent"), "{log}");
        assert!(!log.contains("not confirmed"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_lines_arrive_once_and_in_order_through_twenty_cuts() {
    let relay = TestRelay::with(|_| {}).await;
    within(120, lines_survive_cuts(relay.addr, relay.addr)).await;
}

/// The relay process is killed mid-stream and started again on its port: both clients
/// reconnect to it, meet again and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_and_restarted_on_its_port_loses_nothing() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = || RelayProc::start(&["--listen", &listen], &[]);
    let relay = start();
    within(90, async {
        let url = relay.url.clone();
        let code = room("restart");
        let mut a = Peer::start(&["--relay", &url, &code]);
        a.status("searching").await;
        let mut b = Peer::start(&["--relay", &url, &code]);
        a.code().await;
        b.code().await;
        for i in 1..=200 {
            a.say(&format!("line {i:03}")).await;
        }
        for i in 1..=50 {
            assert_eq!(b.heard().await, format!("line {i:03}"));
        }
        relay.signal(Signal::SIGKILL);
        let _ = tokio::task::spawn_blocking(move || relay.wait()).await.unwrap();
        a.status("connection lost").await;
        let relay = start();
        for i in 51..=200 {
            assert_eq!(b.heard().await, format!("line {i:03}"), "each line once, in order");
        }
        a.status("back: resumed").await;
        hang_up_and_part(a, b).await;
        drop(relay);
    })
    .await;
}
