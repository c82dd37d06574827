//! A conversation survives its connections: real `ghostwire` processes whose TCP connections
//! are reset by a proxy, or whose relay is killed and restarted, resume by themselves (no code
//! typed again) and deliver every line exactly once, in order. (1,000 lines through 20 cuts,
//! and a stranger with the room code meeting a session that is away, are cases of the
//! conformance suite, on every upstream.)

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;
use nix::sys::signal::Signal;

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

/// A relay that stops answering for a few seconds (SIGSTOP, as a host that stalls) and then
/// goes on is a pause, not a drop: lines typed meanwhile arrive once it continues, in order,
/// with no reconnection (a connection is called dead only after 40 s of silence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stalled_for_seconds_is_a_pause() {
    let relay = RelayProc::start(&[], &[]);
    within(60, async {
        let code = room("stall");
        let mut a = Peer::start(&["--relay", &relay.url, &code]);
        a.status("searching").await;
        let mut b = Peer::start(&["--relay", &relay.url, &code]);
        a.code().await;
        b.code().await;
        a.say("before the stall").await;
        assert_eq!(b.heard().await, "before the stall");
        relay.signal(Signal::SIGSTOP);
        a.say("during the stall").await;
        // The fault itself: the relay host stalls for 3 s.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        relay.signal(Signal::SIGCONT);
        assert_eq!(b.heard().await, "during the stall");
        a.hang_up();
        b.status("your peer has finished sending").await;
        b.hang_up();
        let (ea, eb) = (a.exit().await, b.exit().await);
        for (code, log) in [&ea, &eb] {
            assert_eq!(*code, 0, "{log}");
            assert!(!log.contains("connection lost") && !log.contains("reconnecting"), "{log}");
        }
    })
    .await;
}

/// A relay that cannot serve rooms yet (its NATS server is not up: 4007) is asked again, with
/// the reason shown, and the two people pair once it can; nobody runs ghostwire again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_the_relay_cannot_serve_yet_is_retried_until_it_can() {
    let mut nats = NatsServer::reserved();
    let relay = TestRelay::start(nats_config(&nats.url())).await;
    within(60, async {
        let code = room("notyet");
        let mut a = Peer::start(&["--relay", &relay.url(), &code]);
        let said = a.status("reconnecting (attempt 2").await;
        assert!(said.contains("cannot serve the room yet (4007"), "{said}");
        nats.run();
        until_ready(relay.admin, 30).await;
        let mut b = Peer::start(&["--relay", &relay.url(), &code]);
        a.code().await;
        b.code().await;
        a.say("served at last").await;
        assert_eq!(b.heard().await, "served at last");
        hang_up_and_part(a, b).await;
    })
    .await;
}
