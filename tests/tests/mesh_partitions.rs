//! The mesh under attack and under partial partitions: relay processes on loopback, each behind
//! a [`Cut`] it advertises as its mesh address, so that what reaches one relay (TCP, UDP or
//! both) can be cut and restored. After each cut: no room admits more than two, during the cut
//! and after it heals, and the relays form one roster again without a restart.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;
use std::time::Duration;

const SECRET: [(&str, &str); 1] = [("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)];
/// The relays' peer timeout, in seconds (heartbeats every 250 ms).
const TIMEOUT_S: u64 = 2;

/// A relay process whose mesh port is behind a cut it advertises.
struct CutRelay {
    proc: RelayProc,
    cut: Cut,
}

/// Where the second and third relays' mesh ports listen, and so where they dial and gossip
/// from: an address of their own, which the first relay's and the introducer's cuts can
/// isolate (and theirs can isolate 127.0.0.1, where the first relay and the introducer are).
const OTHER_SIDE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
const THIS_SIDE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// An introducer process and three relays, each behind its own cut, all meshed.
async fn three_behind_cuts() -> (CutRelay, Vec<CutRelay>) {
    let intro_back = free_port();
    let intro_cut = Cut::new(intro_back);
    let intro = format!("127.0.0.1:{}", intro_cut.front);
    let mut args = mesh_introducer_args(&format!("127.0.0.1:{intro_back}"));
    args.extend(["--mesh-advertise".to_owned(), intro.clone()]);
    let introducer = RelayProc::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &SECRET);
    let mut relays = Vec::new();
    for i in 0..3 {
        let back = std::net::SocketAddr::new(if i == 0 { THIS_SIDE } else { OTHER_SIDE }, free_port());
        let cut = Cut::to(back);
        let mut args = mesh_relay_args(&intro, &back.to_string(), &format!("{TIMEOUT_S}s"));
        args.extend(["--mesh-advertise".to_owned(), format!("127.0.0.1:{}", cut.front)]);
        let proc = RelayProc::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &SECRET);
        relays.push(CutRelay { proc, cut });
    }
    for r in &relays {
        until_meshed(r.proc.admin, 2).await;
    }
    (CutRelay { proc: introducer, cut: intro_cut }, relays)
}

/// What one racing joiner heard first.
#[derive(Debug, PartialEq)]
enum Heard {
    Found,
    Refused(u64),
    /// Nothing within the wait: it waits in the room for a partner.
    Waiting,
}

/// `rounds` rounds of 12 joiners racing for one fresh room through the relays at `urls`;
/// returns, per round, how many were told PEER_FOUND. A relay that is not ready refuses
/// (4007), a full room refuses (4002); neither is an over-admission.
async fn race(urls: &[String], rounds: usize) -> Vec<usize> {
    let mut found = Vec::new();
    for _ in 0..rounds {
        let code = room("part");
        let mut conns = Vec::new();
        for i in 0..12 {
            conns.push(connect(&urls[i % urls.len()]).await);
        }
        futures_util::future::join_all(conns.iter_mut().map(|ws| send(ws, join_frame(&code)))).await;
        let heard = futures_util::future::join_all(conns.iter_mut().map(|ws| async move {
            use futures_util::StreamExt;
            use tokio_tungstenite::tungstenite::Message;
            match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
                Err(_) => Heard::Waiting,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    match v["type"].as_str() {
                        Some("PEER_FOUND") => Heard::Found,
                        Some("ERROR") => Heard::Refused(v["code"].as_u64().unwrap_or(0)),
                        _ => panic!("unexpected answer to a racing JOIN: {text}"),
                    }
                }
                Ok(other) => panic!("unexpected answer to a racing JOIN: {other:?}"),
            }
        }))
        .await;
        for h in &heard {
            assert!(matches!(h, Heard::Found | Heard::Waiting | Heard::Refused(4002 | 4007)), "{heard:?}");
        }
        found.push(heard.iter().filter(|h| **h == Heard::Found).count());
        for ws in &mut conns {
            let _ = futures_util::SinkExt::close(ws).await;
        }
    }
    found
}

/// The value of the counter `name` on the relay at `admin`.
async fn counter(admin: std::net::SocketAddr, name: &str) -> u64 {
    let (_, m) = http_get(admin, "/metrics").await;
    m.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok())).map_or(0, |v| v as u64)
}

/// Waits (bounded) until `name` on `admin` is at least `at_least`.
async fn until_counter(admin: std::net::SocketAddr, name: &str, at_least: u64) {
    eventually(20, &format!("{name} >= {at_least}"), || async move {
        let n = counter(admin, name).await;
        if n >= at_least {
            Ok(())
        } else {
            Err(format!("{name} = {n}"))
        }
    })
    .await
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// TCP to the third relay is cut; datagrams pass (the membership sees it alive).
    TcpOnly,
    /// Datagrams to the third relay are dropped; its links stay up.
    UdpOnly,
    /// Everything to the third relay is cut, while what it sends still arrives (one-way).
    OneWay,
    /// Everything between {the first relay, the introducer} and {the second and third relays}
    /// is cut, both ways: two sides that each keep a live membership, the larger one without
    /// the introducer.
    Full,
}

/// Cuts what reaches the third relay in `shape`, races joiners through all three during the
/// cut, heals it, and checks that one roster forms again within the bound and that no room
/// admitted more than two at any time.
async fn a_cut_admits_no_third(shape: Shape) {
    let (intro, mut r) = three_behind_cuts().await;
    let urls: Vec<String> = r.iter().map(|x| x.proc.url.clone()).collect();
    let (first, third) = (r[0].proc.admin, r[2].proc.admin);
    let before = counter(first, "ghostwire_upstream_suspicions_total").await
        + counter(third, "ghostwire_upstream_suspicions_total").await;
    match shape {
        Shape::TcpOnly => r[2].cut.kill_tcp(),
        Shape::UdpOnly => r[2].cut.kill_udp(),
        Shape::OneWay => r[2].cut.kill(),
        Shape::Full => {
            for cut in [&r[0].cut, &intro.cut] {
                cut.isolate(OTHER_SIDE);
            }
            for cut in [&r[1].cut, &r[2].cut] {
                cut.isolate(THIS_SIDE);
            }
        }
    }
    // The cut has been seen (a link went down, or the membership declared a member down) ...
    eventually(20, "the cut to be seen", || async move {
        let now = counter(first, "ghostwire_upstream_suspicions_total").await
            + counter(third, "ghostwire_upstream_suspicions_total").await;
        if now > before {
            Ok(())
        } else {
            Err(format!("suspicions {now}"))
        }
    })
    .await;
    let during = race(&urls, 4).await;
    // ... and, where links are cut, outlasted the peer timeout: relays were given up.
    if !matches!(shape, Shape::UdpOnly) {
        until_counter(third, "ghostwire_upstream_peer_deaths_total", 1).await;
    }
    if matches!(shape, Shape::Full) {
        // The introducer's side drops the other two once their leases can no longer be running,
        // and admits their rooms too once their records could have moved (the grace).
        until_meshed(r[0].proc.admin, 0).await;
        until_metric(r[0].proc.admin, "ghostwire_upstream_rooms_moving 0").await;
    }
    let given_up = race(&urls, 4).await;
    if matches!(shape, Shape::Full) {
        // The side with the introducer admits new rooms again; the other side, although it
        // has more relays, linked to each other, never does.
        assert!(
            given_up.iter().all(|n| *n == 2),
            "{shape:?}: after the give-up, exactly two per room (the introducer's side), never more: {given_up:?}"
        );
        for x in &r[1..] {
            let (status, why) = http_get(x.proc.admin, "/readyz").await;
            assert!(status == 503 && why.contains("lease"), "the other side is not ready: {status} {why}");
        }
        for x in r.iter().map(|x| &x.cut).chain([&intro.cut]) {
            x.rejoin();
        }
    }
    r[2].cut.run();
    // One roster again, with no restart: every relay knows and is linked to the two others.
    let healed = tokio::time::Instant::now();
    for x in &r {
        until_meshed(x.proc.admin, 2).await;
    }
    let took = healed.elapsed();
    let after = race(&urls, 6).await;
    for (when, rounds) in [("during the cut", &during), ("after the give-up", &given_up), ("after healing", &after)] {
        assert!(rounds.iter().all(|n| *n <= 2), "{shape:?}, {when}: more than two admitted to one room: {rounds:?}");
    }
    assert!(after.iter().all(|n| *n == 2), "{shape:?}: healed, every room admits exactly two: {after:?}");
    eprintln!("{shape:?}: one roster {took:?} after healing; found per round {during:?} {given_up:?} {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_only_cut_admits_no_third_and_heals() {
    within(150, a_cut_admits_no_third(Shape::TcpOnly)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_only_cut_admits_no_third_and_heals() {
    within(150, a_cut_admits_no_third(Shape::UdpOnly)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_cut_admits_no_third_and_heals() {
    within(150, a_cut_admits_no_third(Shape::OneWay)).await;
}

/// The partition leases exist for: the first relay and the introducer cut off from the two
/// other relays, both ways, TCP and UDP. Each side keeps a live membership and declares the
/// other down; only the side with a majority of the introducers admits, although the other
/// side has more relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_two_way_partition_admits_on_one_side_only_and_heals() {
    within(150, a_cut_admits_no_third(Shape::Full)).await;
}

/// The finding that split the mesh: a stranger without the secret opens 128 TCP connections to
/// one relay's mesh port and sends nothing, again and again, while another relay starts. The
/// handshake permits are no lever: the stranger holds only its own source's share, and only for
/// the first-message deadline, so the new relay links to everyone and racing joiners through
/// all three relays find exactly one partner each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_holding_handshake_slots_cannot_split_the_mesh() {
    within(150, async {
        let intro = format!("127.0.0.1:{}", free_port());
        let args = mesh_introducer_args(&intro);
        let _introducer = RelayProc::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &SECRET);
        let start = |listen: &str| {
            let args = mesh_relay_args(&intro, listen, &format!("{TIMEOUT_S}s"));
            RelayProc::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &SECRET)
        };
        let port = free_port();
        let m1 = start(&format!("127.0.0.1:{port}"));
        let m2 = start("127.0.0.1:0");
        until_meshed(m1.admin, 1).await;
        until_meshed(m2.admin, 1).await;
        // The stranger, from its own loopback address: 128 silent connections, opened again as
        // the relay closes them, until told to stop.
        let stop = tokio_util::sync::CancellationToken::new();
        let knocking = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut opened = 0u64;
                while !stop.is_cancelled() {
                    held.retain(|s: &tokio::net::TcpStream| {
                        let mut b = [0u8; 1];
                        !matches!(s.try_read(&mut b), Ok(0) | Err(_) if s.peer_addr().is_err())
                    });
                    while held.len() < 128 {
                        let sock = tokio::net::TcpSocket::new_v4().unwrap();
                        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                        match sock.connect(([127, 0, 0, 1], port).into()).await {
                            Ok(s) => {
                                held.push(s);
                                opened += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                opened
            })
        };
        // The knocks are being refused before the new relay starts.
        until_counter(m1.admin, "ghostwire_upstream_link_handshakes_refused_total", 1).await;
        let m3 = start("127.0.0.1:0");
        for admin in [m1.admin, m2.admin, m3.admin] {
            until_meshed(admin, 2).await;
        }
        let urls = [m1.url.clone(), m2.url.clone(), m3.url.clone()];
        let found = race(&urls, 8).await;
        stop.cancel();
        let opened = knocking.await.unwrap();
        assert!(opened >= 128, "the stranger knocked {opened} times");
        assert!(found.iter().all(|n| *n == 2), "exactly two per room: {found:?}");
        for admin in [m1.admin, m2.admin, m3.admin] {
            let (_, m) = http_get(admin, "/metrics").await;
            assert!(m.contains("ghostwire_upstream_roster_size 2\n"), "{m}");
        }
    })
    .await;
}
