//! The mesh upstream as operators run it: an introducer and relays as separate processes on
//! loopback, killed with real signals. (The upstream contract itself is checked by
//! `conformance.rs`, as for every upstream.)

#![allow(clippy::unwrap_used)]

use futures_util::SinkExt;
use ghostwire_tests::*;
use nix::sys::signal::Signal;
use std::time::Duration;

const SECRET: [(&str, &str); 1] = [("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)];

/// An introducer process on a free port; its `host:port`.
fn introducer() -> (RelayProc, String) {
    let intro = format!("127.0.0.1:{}", free_port());
    let proc = relay_from(&mesh_introducer_args(&intro));
    (proc, intro)
}

/// A relay process announcing itself to `intro`, with link beats every 250 ms and a relay given
/// up after 2 s (so the tests that wait for it are short), and `secret` as its cluster secret.
fn relay_with(intro: &str, secret: &str) -> RelayProc {
    let args = mesh_relay_args(intro, "127.0.0.1:0", "2s");
    RelayProc::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[("GHOSTWIRE_CLUSTER_SECRET", secret)])
}

/// A relay process from `args`, in the test cluster.
fn relay_from(args: &[String]) -> RelayProc {
    RelayProc::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &SECRET)
}

fn relay(intro: &str) -> RelayProc {
    relay_with(intro, CLUSTER_SECRET)
}

/// An introducer and `n` relays, each knowing and linked to all the others.
async fn mesh(n: usize) -> (RelayProc, String, Vec<RelayProc>) {
    let (intro_proc, intro) = introducer();
    let relays: Vec<RelayProc> = (0..n).map(|_| relay(&intro)).collect();
    for r in &relays {
        until_meshed(r.admin, n - 1).await;
    }
    (intro_proc, intro, relays)
}

/// An introducer and three relays: a room split over two of them carries frames both ways, a
/// third joiner on the third relay is refused, and the room is free again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_split_over_relays_chats() {
    within(60, async {
        let (_intro, _, r) = mesh(3).await;
        room_contract(&r[0].url, &r[1].url).await;
        room_contract(&r[2].url, &r[0].url).await;
        let (_, metrics) = http_get(r[0].admin, "/metrics").await;
        assert!(!metrics.contains("ghostwire_upstream_frames_out_total 0\n"), "{metrics}");
        // Each relay publishes its load in the membership: all three see the pair's two seats,
        // the third relay (which holds neither) included.
        let code = room("load");
        let (mut a, mut b) = (join(&r[0].url, &code).await, join(&r[1].url, &code).await);
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        for relay in &r {
            until_metric(relay.admin, "ghostwire_upstream_mesh_seats 2").await;
        }
    })
    .await;
}

/// 20 clients join one room at once through three relay processes, 50 times over: exactly two
/// are admitted each time, and every relay ends with no room open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_joiners_through_three_relay_processes_admit_exactly_two() {
    within(240, async {
        let (_intro, _, r) = mesh(3).await;
        for round in 0..50 {
            let code = room("race");
            let mut conns = Vec::new();
            for i in 0..20 {
                conns.push(connect(&r[i % 3].url).await);
            }
            futures_util::future::join_all(conns.iter_mut().map(|ws| send(ws, join_frame(&code)))).await;
            let outcomes = futures_util::future::join_all(conns.iter_mut().map(|ws| async move {
                let text = expect_text(ws).await;
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                match v["type"].as_str() {
                    Some("PEER_FOUND") => true,
                    Some("ERROR") if v["code"] == 4002 => false,
                    _ => panic!("unexpected answer to a racing JOIN: {text}"),
                }
            }))
            .await;
            let admitted = outcomes.iter().filter(|in_| **in_).count();
            assert_eq!(admitted, 2, "round {round}: {outcomes:?}");
            for ws in &mut conns {
                let _ = ws.close(None).await;
            }
        }
        for relay in &r {
            until_metric(relay.admin, "ghostwire_rooms_open 0").await;
        }
    })
    .await;
}

/// What a third joiner hears first within two seconds: `Some(text)`, or `None` when it waits.
async fn first_answer(url: &str, code: &str) -> Option<String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = join(url, code).await;
    match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        Err(_) => None,
        Ok(Some(Ok(Message::Text(text)))) => Some(text.to_string()),
        Ok(other) => panic!("unexpected answer to a JOIN: {other:?}"),
    }
}

/// A third joiner of each of `codes`, through `urls` in turn, is refused as full (4002), never
/// left waiting for a fourth to pair with; 4007 (a new owner waiting for the rooms' records)
/// is asked again.
async fn every_room_stays_full(urls: &[&str], codes: &[String]) {
    for (i, code) in codes.iter().enumerate() {
        let url = urls[i % urls.len()];
        eventually(20, "a third joiner refused as full", || async move {
            match first_answer(url, code).await {
                None => panic!("{code}: a third joiner was admitted to a paired room"),
                Some(text) if text.contains("4002") => Ok(()),
                Some(text) if text.contains("4007") => Err(text),
                Some(text) => panic!("{code}: unexpected answer {text}"),
            }
        })
        .await;
    }
}

/// Twelve rooms paired across two relays. A third relay joins and takes over about a third of
/// the rooms by their hash; then it is killed (SIGKILL) and they move on again. Each time the
/// rooms' records move with them: every pair goes on, and a third joiner of any of the codes,
/// on any relay, is refused as full. Once the pairs leave, every code is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_keeps_its_room_full_when_the_room_changes_owner() {
    within(120, async {
        let (_intro, intro, mut r) = mesh(2).await;
        let codes: Vec<String> = (0..12).map(|i| room(&format!("owned{i}"))).collect();
        let mut pairs = Vec::new();
        for code in &codes {
            let (mut a, mut b) = (join(&r[0].url, code).await, join(&r[1].url, code).await);
            expect_peer_found(&mut a).await;
            expect_peer_found(&mut b).await;
            pairs.push((a, b));
        }
        r.push(relay(&intro));
        for x in &r {
            until_meshed(x.admin, 2).await;
        }
        every_room_stays_full(&[&r[2].url, &r[0].url, &r[1].url], &codes).await;
        let third = r.pop().unwrap();
        third.signal(Signal::SIGKILL);
        let _ = tokio::task::spawn_blocking(move || third.wait()).await.unwrap();
        for x in &r {
            until_meshed(x.admin, 1).await;
        }
        every_room_stays_full(&[&r[0].url, &r[1].url], &codes).await;
        for (a, b) in &mut pairs {
            send(a, signal("MSG", "still here")).await;
            assert_eq!(expect_text(b).await, signal("MSG", "still here"));
        }
        drop(pairs);
        for x in &r {
            until_metric(x.admin, "ghostwire_rooms_open 0").await;
        }
        for (i, code) in codes.iter().enumerate() {
            let (mut a, mut b) = (join(&r[i % 2].url, code).await, join(&r[(i + 1) % 2].url, code).await);
            expect_peer_found(&mut a).await;
            expect_peer_found(&mut b).await;
        }
    })
    .await;
}

/// Two relays pair a room across each other, `rounds` times, and exchange a message in each.
async fn new_rooms_pair(r: &[RelayProc], rounds: usize, tag: &str) {
    for i in 0..rounds {
        let code = room(&format!("{tag}{i}"));
        let (x, y) = if i % 2 == 0 { (&r[0].url, &r[1].url) } else { (&r[1].url, &r[0].url) };
        let mut e = join(x, &code).await;
        let mut f = join(y, &code).await;
        expect_peer_found(&mut e).await;
        expect_peer_found(&mut f).await;
        send(&mut f, signal("MSG", "new room")).await;
        assert_eq!(expect_text(&mut e).await, signal("MSG", "new room"));
    }
}

/// The introducers are the lease witnesses. With one of three killed (SIGKILL) the relays go on
/// admitting; with two killed, no majority answers: the paired room goes on, new rooms are
/// refused (4007) and `/readyz` says why; with one back (after its first lease) they admit
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rooms_need_a_majority_of_the_introducers() {
    within(90, async {
        let mut intros: Vec<(RelayProc, String)> = (0..3).map(|_| introducer()).collect();
        let all = intros.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(",");
        let r: Vec<RelayProc> = (0..2).map(|_| relay(&all)).collect();
        for x in &r {
            until_meshed(x.admin, 1).await;
        }
        let code = room("kept");
        let mut c = join(&r[0].url, &code).await;
        let mut d = join(&r[1].url, &code).await;
        expect_peer_found(&mut c).await;
        expect_peer_found(&mut d).await;

        let (first, _) = intros.remove(0);
        first.signal(Signal::SIGKILL);
        drop(first);
        new_rooms_pair(&r, 4, "one-down").await;

        let (second, second_addr) = intros.remove(0);
        second.signal(Signal::SIGKILL);
        drop(second);
        for x in &r {
            eventually(20, "no lease with one introducer of three", || async {
                match http_get(x.admin, "/readyz").await {
                    (503, why) if why.contains("lease") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        }
        let mut refused = join(&r[0].url, &room("refused")).await;
        expect_error(&mut refused, 4007).await;
        send(&mut c, signal("MSG", "the paired room goes on")).await;
        assert_eq!(expect_text(&mut d).await, signal("MSG", "the paired room goes on"));

        let _back = relay_from(&mesh_introducer_args(&second_addr));
        for x in &r {
            until_ready(x.admin, 20).await;
        }
        new_rooms_pair(&r, 2, "back").await;
    })
    .await;
}

/// A relay started while the introducer is down is not ready; once the introducer is back, it
/// finds the mesh and serves rooms with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_without_introducers_waits_for_them() {
    within(60, async {
        let (intro_proc, intro, r) = mesh(2).await;
        intro_proc.signal(Signal::SIGKILL);
        drop(intro_proc);
        let late = relay(&intro);
        let (status, why) = http_get(late.admin, "/readyz").await;
        assert_eq!(status, 503, "a relay that reached no member of the mesh is not ready: {why}");
        assert!(why.contains("not yet known to any member of the mesh"), "{why}");
        let _back = relay_from(&mesh_introducer_args(&intro));
        until_meshed(late.admin, 2).await;
        let code = room("late");
        let mut g = join(&late.url, &code).await;
        let mut h = join(&r[1].url, &code).await;
        expect_peer_found(&mut g).await;
        expect_peer_found(&mut h).await;
        send(&mut g, signal("MSG", "via the late relay")).await;
        assert_eq!(expect_text(&mut h).await, signal("MSG", "via the late relay"));
    })
    .await;
}

/// A relay with another cluster secret joins nothing: its gossip does not open, its link
/// handshakes are refused (counted on the relays it tries), and a client on it never meets a
/// client of the mesh in the same room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_the_wrong_secret_is_refused_and_pairs_nothing() {
    within(60, async {
        let (mut _intro, intro, r) = mesh(2).await;
        let intruder = relay_with(&intro, "not-the-cluster-secret-at-all");
        // Its announcements reach the introducer sealed under the wrong key: dropped and counted.
        eventually(10, "the introducer refusing the intruder's gossip", || async {
            let (_, m) = http_get(_intro.admin, "/metrics").await;
            if m.lines().any(|l| l.starts_with("ghostwire_upstream_gossip_refused_total") && !l.ends_with(" 0")) {
                Ok(())
            } else {
                Err(m)
            }
        })
        .await;
        // The introducer says so (once a minute at most), and the intruder's /readyz names the
        // secret among what to check, not only the introducers.
        let said = tokio::task::block_in_place(|| _intro.wait_for("refused gossip"));
        assert!(said.contains("--cluster-secret"), "{said}");
        let (status, why) = http_get(intruder.admin, "/readyz").await;
        assert_eq!(status, 503, "the intruder never becomes part of the mesh");
        assert!(why.contains("cluster secret"), "{why}");
        // Someone who knows a relay's mesh port, and the protocol, but not the secret: the relay
        // refuses the handshake at its last message and closes; nothing of the mesh is read.
        let mesh_port = mesh_port_of(&r[0]).await;
        wrong_psk_handshake(mesh_port).await;
        until_metric(r[0].admin, "ghostwire_upstream_link_auth_failures_total 1").await;
        // Garbage on the port closes that connection only.
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", mesh_port)).await.unwrap();
        use tokio::io::AsyncWriteExt;
        raw.write_all(b"\x00\x20not a noise handshake at all.....").await.unwrap();
        drop(raw);
        let code = room("intrude");
        let mut inside = join(&r[0].url, &code).await;
        let mut outside = join(&intruder.url, &code).await;
        // Neither is paired with the other: the mesh's client waits alone.
        send(&mut outside, signal("MSG", "let me in")).await;
        let mut other = join(&r[1].url, &code).await;
        expect_peer_found(&mut inside).await;
        expect_peer_found(&mut other).await;
        send(&mut other, signal("MSG", "only for the mesh")).await;
        assert_eq!(expect_text(&mut inside).await, signal("MSG", "only for the mesh"));
        let _ = outside.send(tokio_tungstenite::tungstenite::Message::Close(None)).await;
        let (_, m) = http_get(r[0].admin, "/metrics").await;
        assert!(m.contains("ghostwire_upstream_roster_size 1\n"), "the intruder is on no roster: {m}");
    })
    .await;
}

/// Runs the mesh's Noise handshake (`XXpsk3`) against `port` with a key not derived from the
/// cluster secret, then tries to talk: the relay must close without a word of the mesh.
async fn wrong_psk_handshake(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let params: snow::params::NoiseParams = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
    let key = snow::Builder::new(params.clone()).generate_keypair().unwrap();
    let mut hs = snow::Builder::new(params)
        .local_private_key(&key.private)
        .unwrap()
        .psk(3, &[0x42; 32])
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut buf = vec![0u8; 65_535];
    async fn put(s: &mut tokio::net::TcpStream, m: &[u8]) {
        s.write_all(&(m.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(m).await.unwrap();
    }
    let n = hs.write_message(&[], &mut buf).unwrap();
    put(&mut s, &buf[..n]).await;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await.unwrap();
    hs.read_message(&msg, &mut buf).unwrap();
    let n = hs.write_message(&[], &mut buf).unwrap();
    put(&mut s, &buf[..n]).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the relay answered a wrong key: {read:?} {rest:?}");
}

/// The mesh port a relay process logged at start.
async fn mesh_port_of(r: &RelayProc) -> u16 {
    let line = r.startup.lines().find(|l| l.contains("mesh upstream started")).unwrap().to_owned();
    let listen = line.split("listen=").nth(1).unwrap().split_whitespace().next().unwrap();
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// A relay that restarts on the same mesh port is a new incarnation: the partners of its old
/// rooms are told 4011 at once (not after the timeout), and the new one serves rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_is_a_new_generation() {
    within(90, async {
        let (_intro, intro, mut r) = mesh(2).await;
        let code = room("gen");
        let mut a = join(&r[0].url, &code).await;
        let mut b = join(&r[1].url, &code).await;
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        let port = mesh_port_of(&r[1]).await;
        let old = r.pop().unwrap();
        old.signal(Signal::SIGKILL);
        let (_, _) = tokio::task::spawn_blocking(move || old.wait()).await.unwrap();
        let restarted = relay_from(&mesh_relay_args(&intro, &format!("127.0.0.1:{port}"), "30s"));
        expect_error(&mut a, 4011).await;
        // The lost seat is given back before the room is joined again (a relay that reports no
        // open room has had its departures taken by the rooms' owners).
        until_metric(r[0].admin, "ghostwire_rooms_open 0").await;
        until_meshed(restarted.admin, 1).await;
        // The survivor admits new rooms once it is linked to the new incarnation too.
        until_meshed(r[0].admin, 1).await;
        // Right after a restart the two rosters may disagree for a moment about who owns a room;
        // a join is then refused with 4007 (never paired wrongly). Within a few seconds the
        // same room code pairs again, through the survivor and the new incarnation: the lost
        // pair's seats are gone everywhere.
        let urls = (r[0].url.clone(), restarted.url.clone());
        let admins = [r[0].admin, restarted.admin];
        // (The new incarnation may still count the old one as a member until its own peer
        // timeout, 30 s here, has passed without a link to it.)
        let (mut c, mut d) = eventually(45, "a room through the survivor and the new incarnation", || {
            let (urls, code) = (urls.clone(), code.clone());
            async move {
                // A refused attempt's seats are given back before the next one.
                for admin in admins {
                    until_metric(admin, "ghostwire_rooms_open 0").await;
                }
                let (mut c, mut d) = (join(&urls.0, &code).await, join(&urls.1, &code).await);
                // A side left waiting (its partner refused) says nothing: that attempt failed too.
                let tc = format!("{:?}", tokio::time::timeout(Duration::from_secs(3), recv(&mut c)).await);
                let td = format!("{:?}", tokio::time::timeout(Duration::from_secs(3), recv(&mut d)).await);
                let found = r#"Ok(Text("{\"type\":\"PEER_FOUND\"}"))"#;
                if tc == found && td == found {
                    return Ok((c, d));
                }
                for t in [&tc, &td] {
                    let retry = t == found || t.contains("4007") || t.starts_with("Err(Elapsed");
                    assert!(retry, "only a refusal, or no answer while the other was refused, may be retried: {t}");
                }
                let ready = [http_get(admins[0], "/readyz").await.1, http_get(admins[1], "/readyz").await.1];
                Err(format!("{tc} / {td}; /readyz: {ready:?}"))
            }
        })
        .await;
        send(&mut d, signal("MSG", "new generation")).await;
        assert_eq!(expect_text(&mut c).await, signal("MSG", "new generation"));
    })
    .await;
}

/// A relay stopped with SIGTERM ends its clients' rooms as departures (PEER_LEFT, not 4011)
/// and says goodbye: the other relay gives it up at once, not after its (long) peer timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_shuts_down_says_goodbye() {
    within(60, async {
        let (_intro, intro) = introducer();
        let leaving = relay_from(&mesh_relay_args(&intro, "127.0.0.1:0", "30s"));
        let staying = relay_from(&mesh_relay_args(&intro, "127.0.0.1:0", "30s"));
        until_meshed(leaving.admin, 1).await;
        until_meshed(staying.admin, 1).await;
        let code = room("bye");
        let (mut a, mut b) = (join(&leaving.url, &code).await, join(&staying.url, &code).await);
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        leaving.signal(Signal::SIGTERM);
        let stopped = tokio::time::Instant::now();
        expect_peer_left(&mut b).await;
        until_metric(staying.admin, "ghostwire_upstream_peer_deaths_total 1").await;
        assert!(stopped.elapsed() < Duration::from_secs(15), "given up after {:?}", stopped.elapsed());
        let (code_exit, log) = tokio::task::spawn_blocking(move || leaving.wait()).await.unwrap();
        assert_eq!(code_exit, Some(0), "{log}");
        // The code is free again, on the relay that stayed.
        let (mut c, mut d) = (join(&staying.url, &code).await, join(&staying.url, &code).await);
        expect_peer_found(&mut c).await;
        expect_peer_found(&mut d).await;
    })
    .await;
}

/// Two `ghostwire` clients, each on its own relay of the mesh, chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_two_relays_chat() {
    within(60, async {
        let (_intro, _, r) = mesh(2).await;
        let (mut a, mut b, ca, cb) = connected_pair_via(&r[0].url, &r[1].url, &room("chat"), &[]).await;
        assert_eq!(ca, cb);
        a.say("hello across the mesh").await;
        assert_eq!(b.heard().await, "hello across the mesh");
        b.say("and back").await;
        assert_eq!(a.heard().await, "and back");
        hang_up_and_part(a, b).await;
    })
    .await;
}

/// Without an introducer the relay says what is missing and exits 2.
#[tokio::test]
async fn a_relay_without_introducers_is_a_clear_configuration_error() {
    within(20, async {
        let out = tokio::process::Command::new(bin("ghostwire-relay"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--upstream", "mesh"])
            .args(["--mesh-listen", "127.0.0.1:0"])
            .env("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--introducers"), "{err}");
    })
    .await;
}

/// With probe period `period` instead of the tests' 500 ms.
fn with_probe_period(mut args: Vec<String>, period: &str) -> Vec<String> {
    let at = args.iter().position(|a| a == "--mesh-probe-period").unwrap();
    args[at + 1] = period.to_owned();
    args
}

/// When a relay dies, the others admit no new room until its lease has run out (they say so on
/// `/readyz`, all at once). Two people who start then are not turned away: their clients JOIN
/// again until the relays admit the room, and they talk. (Leases of 4 s here, as by default: the window is
/// about 6 s, open when they join.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_who_join_while_a_dead_relays_lease_runs_out_get_through() {
    within(90, async {
        let intro = format!("127.0.0.1:{}", free_port());
        let _introducer = relay_from(&with_probe_period(mesh_introducer_args(&intro), "1s"));
        let start = || relay_from(&with_probe_period(mesh_relay_args(&intro, "127.0.0.1:0", "30s"), "1s"));
        let r = [start(), start(), start()];
        for relay in &r {
            until_meshed(relay.admin, 2).await;
        }
        r[2].signal(Signal::SIGKILL);
        eventually(10, "the survivors refusing new rooms", || async {
            match (http_get(r[0].admin, "/readyz").await, http_get(r[1].admin, "/readyz").await) {
                ((503, a), (503, b)) if a.contains("linked to 1 of the 2") && b.contains("linked to 1 of the 2") => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let code = room("blip");
        let mut a = Peer::start(&["--relay", &r[0].url, &code]);
        let said = a.status("reconnecting").await;
        assert!(said.contains("cannot serve the room yet (4007"), "{said}");
        let mut b = Peer::start(&["--relay", &r[1].url, &code]);
        let refused_at = tokio::time::Instant::now();
        until_ready(r[0].admin, 30).await;
        until_ready(r[1].admin, 30).await;
        eprintln!("the survivors were ready again {:?} after the first refusal", refused_at.elapsed());
        a.code().await;
        b.code().await;
        a.say("through the blip").await;
        assert_eq!(b.heard().await, "through the blip");
        hang_up_and_part(a, b).await;
    })
    .await;
}
