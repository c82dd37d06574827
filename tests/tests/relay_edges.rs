//! The relay's edges: TLS, limits, trusted proxies, the admin listener and shutdown.

#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use ghostwire_tests::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn wss_with_a_certificate_made_by_the_test() {
    within(20, async {
        let dir = TempDir::new("tls");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert_pem, key_pem) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
        std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
        let relay = TestRelay::with(|c| {
            c.tls_cert = Some(cert_pem.clone());
            c.tls_key = Some(key_pem.clone());
        })
        .await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let connector = tls_connector(roots);
        let url = format!("wss://localhost:{}/ws", relay.addr.port());
        let code = room("tls");
        let mut peers = Vec::new();
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let stream = connector.connect(name, tcp).await.unwrap();
            let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), stream).await.unwrap();
            use futures_util::SinkExt;
            ws.send(join_frame(&code).into()).await.unwrap();
            peers.push(ws);
        }
        for ws in &mut peers {
            let m = ws.next().await.unwrap().unwrap();
            assert_eq!(m.to_text().unwrap(), r#"{"type":"PEER_FOUND"}"#);
        }
        use futures_util::SinkExt;
        peers[0].send(signal("MSG", "over tls").into()).await.unwrap();
        let m = peers[1].next().await.unwrap().unwrap();
        assert_eq!(m.to_text().unwrap(), signal("MSG", "over tls"));
        // A plain ws:// client gets no WebSocket out of a TLS port.
        assert!(tokio_tungstenite::connect_async(format!("ws://{}/", relay.addr)).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn admin_listener_reports_health_readiness_and_counters_without_room_codes() {
    within(20, async {
        let relay = TestRelay::with(|_| {}).await;
        assert_eq!(http_get(relay.admin, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(http_get(relay.admin, "/readyz").await.0, 200);
        assert_eq!(http_get(relay.admin, "/nothing").await.0, 404);
        let code = room("metric");
        let (mut a, mut b) = pair(&relay.url(), &code).await;
        send(&mut a, signal("MSG", "counted")).await;
        let seen = expect_text(&mut b).await;
        let (status, body) = http_get(relay.admin, "/metrics").await;
        assert_eq!(status, 200);
        for line in [
            "ghostwire_connections_open 2",
            "ghostwire_rooms_open 1",
            "ghostwire_rooms_paired_total 1",
            "ghostwire_frames_forwarded_total 1",
            &format!("ghostwire_bytes_forwarded_total {}", seen.len()),
            "ghostwire_errors_total{code=\"4002\",reason=\"room_full\"} 0",
        ] {
            assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
        }
        assert!(!body.contains(&code), "a room code leaked into /metrics");
    })
    .await;
}

#[tokio::test]
async fn connection_limits_answer_with_http_statuses() {
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.max_conns_per_ip = 2;
        })
        .await;
        let _a = connect(&relay.url()).await;
        let _b = connect(&relay.url()).await;
        let err = tokio_tungstenite::connect_async(relay.url()).await.err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("429")), "{err:?}");
        // Another loopback address is another client.
        let other = connect_from([127, 0, 0, 2], relay.addr).await;
        assert!(other.is_ok(), "{other:?}");

        let full = TestRelay::with(|c| c.max_conns = 1).await;
        let _only = connect(&full.url()).await;
        let err = tokio_tungstenite::connect_async(full.url()).await.err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("503")), "{err:?}");
    })
    .await;
}

/// A WebSocket opened from a chosen loopback source address.
async fn connect_from(src: [u8; 4], dst: std::net::SocketAddr) -> Result<Ws, String> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((std::net::Ipv4Addr::from(src), 0).into()).unwrap();
    let tcp = sock.connect(dst).await.map_err(|e| e.to_string())?;
    let url = format!("ws://{dst}/");
    tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

async fn connect_with_xff(url: &str, xff: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws).map_err(|e| e.to_string())
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    within(20, async {
        let trusting = TestRelay::with(|c| {
            c.max_conns_per_ip = 1;
            c.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        })
        .await;
        let _one = connect_with_xff(&trusting.url(), "198.51.100.1").await.unwrap();
        let _two = connect_with_xff(&trusting.url(), "198.51.100.2, 127.0.0.1").await.unwrap();
        let same = connect_with_xff(&trusting.url(), "198.51.100.1").await;
        assert!(same.as_ref().err().is_some_and(|e| e.contains("429")), "{:?}", same.err());

        // From an untrusted peer the header is the client's own claim and is ignored.
        let wary = TestRelay::with(|c| c.max_conns_per_ip = 1).await;
        let _one = connect_with_xff(&wary.url(), "198.51.100.1").await.unwrap();
        let spoof = connect_with_xff(&wary.url(), "198.51.100.2").await;
        assert!(spoof.as_ref().err().is_some_and(|e| e.contains("429")), "{:?}", spoof.err());
    })
    .await;
}

#[tokio::test]
async fn proxy_protocol_names_the_client_for_a_trusted_proxy() {
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.max_conns_per_ip = 1;
            c.proxy_protocol = true;
            c.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        })
        .await;
        let via_proxy = |src: &'static str| {
            let addr = relay.addr;
            async move {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                tcp.write_all(format!("PROXY TCP4 {src} 127.0.0.1 40000 {}\r\n", addr.port()).as_bytes())
                    .await
                    .unwrap();
                tokio_tungstenite::client_async(format!("ws://{addr}/"), tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                    .await
                    .map(|(ws, _)| ws)
                    .map_err(|e| e.to_string())
            }
        };
        let _a = via_proxy("203.0.113.1").await.unwrap();
        let _b = via_proxy("203.0.113.2").await.unwrap();
        let again = via_proxy("203.0.113.1").await;
        assert!(again.as_ref().err().is_some_and(|e| e.contains("429")), "{:?}", again.err());
        // A trusted peer that sends no PROXY header is refused: the header is required from it.
        let mut bare = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        bare.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(FRAME_WAIT, bare.read_to_end(&mut buf)).await.unwrap();
        assert!(!String::from_utf8_lossy(&buf).contains("101"), "upgraded without a PROXY header");
    })
    .await;
}

/// Behind a PROXY-protocol balancer, the named client's own X-Forwarded-For is not believed:
/// trust goes hop by hop, and the client is not a trusted proxy.
#[tokio::test]
async fn a_client_behind_a_proxy_cannot_pick_its_address_with_forwarded_for() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.max_conns_per_ip = 2;
            c.proxy_protocol = true;
            c.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        })
        .await;
        let mut outcomes = Vec::new();
        let mut held = Vec::new();
        for i in 0..5 {
            let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
            let header = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {}\r\n", relay.addr.port());
            tcp.write_all(header.as_bytes()).await.unwrap();
            let mut req = format!("ws://{}/", relay.addr).into_client_request().unwrap();
            req.headers_mut().insert("x-forwarded-for", format!("10.0.0.{i}").parse().unwrap());
            match tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await {
                Ok((ws, _)) => {
                    held.push(ws);
                    outcomes.push("upgraded".to_owned());
                }
                Err(e) => outcomes.push(e.to_string()),
            }
        }
        let upgraded = outcomes.iter().filter(|o| *o == "upgraded").count();
        assert_eq!(upgraded, 2, "the PROXY-named client counts once whatever its XFF says: {outcomes:?}");
        assert!(outcomes.iter().filter(|o| o.contains("429")).count() == 3, "{outcomes:?}");
    })
    .await;
}

/// Idle TCP connections from one address (no TLS, no upgrade: half-open) take only that
/// address's --max-conns-per-ip, counted from accept, so another address still gets in.
#[tokio::test]
async fn a_half_open_flood_from_one_address_does_not_starve_another() {
    within(30, async {
        let relay = TestRelay::with(|c| {
            c.max_conns = 40;
            c.max_conns_per_ip = 5;
        })
        .await;
        let mut flood = Vec::new();
        for _ in 0..60 {
            flood.push(tokio::net::TcpStream::connect(relay.addr).await.unwrap());
        }
        // The sixth and later are told why, at once, and closed.
        let mut answer = String::new();
        let mut last = flood.pop().unwrap();
        tokio::time::timeout(FRAME_WAIT, last.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        // Another address connects and upgrades while the flood holds its connections.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let tcp = socket.connect(relay.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(
            format!("ws://{}/", relay.addr),
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        )
        .await
        .expect("127.0.0.2 was starved by 127.0.0.1's half-open connections");
        send(&mut ws, join_frame(&room("flood"))).await;
        drop(flood);
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001_and_returns() {
    within(20, async {
        let relay = TestRelay::with(|c| c.drain_timeout = Duration::from_secs(5)).await;
        let (mut a, mut b) = pair(&relay.url(), &room("bye")).await;
        let mut lone = join(&relay.url(), &room("byelone")).await;
        let admin = relay.admin;
        let shutdown = relay.shutdown.clone();
        let stopping = tokio::spawn(relay.stop());
        shutdown.cancelled().await;
        for ws in [&mut a, &mut b, &mut lone] {
            expect_error(ws, 1001).await;
        }
        // Clients answered the close promptly, so the relay returns well within the drain deadline.
        stopping.await.unwrap();
        assert!(tokio::net::TcpStream::connect(admin).await.is_err(), "admin listener still open");
    })
    .await;
}

/// With --drain-spread the clients are told to go (1001) over the spread, a wave at a time,
/// not all at once: clients that resume elsewhere then reach the other replicas spread out.
/// Every one of them is still told, none is dropped.
#[tokio::test]
async fn a_spread_drain_closes_its_clients_over_the_spread() {
    within(30, async {
        let relay = TestRelay::with(|c| {
            c.drain_timeout = Duration::from_secs(10);
            c.drain_spread = Duration::from_secs(2);
        })
        .await;
        let mut clients = Vec::new();
        for i in 0..32 {
            clients.push(join(&relay.url(), &room(&format!("spread{i}"))).await);
        }
        until_metric(relay.admin, "ghostwire_rooms_open 32").await;
        let shutdown = relay.shutdown.clone();
        let stopping = tokio::spawn(relay.stop());
        shutdown.cancelled().await;
        let told: Vec<_> = clients
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    expect_error(&mut ws, 1001).await;
                    tokio::time::Instant::now()
                })
            })
            .collect();
        let mut at = Vec::new();
        for t in told {
            at.push(t.await.unwrap());
        }
        let (first, last) = (at.iter().min().unwrap(), at.iter().max().unwrap());
        // Sixteen waves over 2 s: the last comes 15/16 of the spread after the first.
        assert!(*last - *first >= Duration::from_millis(1500), "all told within {:?}", *last - *first);
        stopping.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn readyz_fails_while_draining() {
    within(20, async {
        let relay = TestRelay::with(|c| c.drain_timeout = Duration::from_secs(10)).await;
        // A client that never answers the close keeps the relay draining.
        let (_a, _b) = pair(&relay.url(), &room("drain")).await;
        relay.shutdown.cancel();
        let (status, body) = http_get(relay.admin, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
        assert_eq!(http_get(relay.admin, "/healthz").await.0, 200);
    })
    .await;
}

#[tokio::test]
async fn shutdown_does_not_wait_past_the_drain_deadline_for_clients_that_never_answer() {
    within(20, async {
        // Each connection would give a silent client 2 s to answer its close; the drain deadline
        // (300 ms) must cut that short.
        let relay = TestRelay::with(|c| c.drain_timeout = Duration::from_millis(300)).await;
        let (_a, _b) = pair(&relay.url(), &room("silent")).await;
        let stopped = tokio::time::timeout(Duration::from_millis(1500), relay.stop()).await;
        assert!(stopped.is_ok(), "the relay kept draining past its deadline");
    })
    .await;
}

#[tokio::test]
async fn a_client_that_vanishes_without_a_close_is_gone_not_malformed() {
    let relay = TestRelay::with(|_| {}).await;
    within(30, async {
        let (a, mut b) = pair(&relay.url(), &room("vanish")).await;
        drop(a); // the TCP connection ends with no close frame
        expect_peer_left(&mut b).await;
    })
    .await;
    assert_eq!(relay.metrics.errors(ghostwire_shared::ErrorCode::Malformed), 0);
}

/// A relay behind a PROXY-protocol balancer (127.0.0.1 trusted), with `per_ip` per address.
async fn behind_proxy(per_ip: usize, max_conns: usize) -> TestRelay {
    TestRelay::with(|c| {
        c.max_conns = max_conns;
        c.max_conns_per_ip = per_ip;
        c.proxy_protocol = true;
        c.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await
}

/// Sends `header` then an upgrade request carrying `xff`; the upgraded socket or the refusal.
async fn upgrade_behind_proxy(addr: std::net::SocketAddr, header: &[u8], xff: &str) -> Result<Ws, String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
    tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// Half-open connections that a PROXY header names for one client (headers never finished)
/// take that client's --max-conns-per-ip from the moment the header names it, so they cannot
/// fill the relay: the fourth is refused with 429 at once, and another client still gets in.
#[tokio::test]
async fn half_open_connections_named_by_a_proxy_header_hold_only_their_clients_slots() {
    within(30, async {
        let relay = behind_proxy(3, 60).await;
        let header = format!("PROXY TCP4 9.9.9.30 127.0.0.1 40000 {}\r\n", relay.addr.port());
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..60 {
            let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
            tcp.write_all(header.as_bytes()).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n").await.unwrap(); // never finished
            held.push(tcp);
        }
        // Every connection past the third is answered 429 and closed; the first three wait.
        for tcp in held.iter_mut().skip(3) {
            let mut answer = String::new();
            tokio::time::timeout(FRAME_WAIT, tcp.read_to_string(&mut answer)).await.unwrap().unwrap();
            assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
            refused += 1;
        }
        assert_eq!(refused, 57);
        held.truncate(3); // the refused hang up; the three the relay still waits on stay open
        let other = format!("PROXY TCP4 203.0.113.5 127.0.0.1 40001 {}\r\n", relay.addr.port());
        let ws = upgrade_behind_proxy(relay.addr, other.as_bytes(), "203.0.113.5").await;
        assert!(ws.is_ok(), "another client was starved: {:?}", ws.err());
        drop(held);
    })
    .await;
}

/// A PROXY header that names nobody (v1 UNKNOWN, v2 LOCAL) counts the connection against the
/// proxy's own address; the client's X-Forwarded-For, which it writes itself, is not believed.
#[tokio::test]
async fn unknown_and_local_proxy_headers_count_as_the_proxy_never_as_the_clients_claim() {
    within(30, async {
        let mut v2_local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2_local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]); // v2, LOCAL, unspecified, no addresses
        for header in [b"PROXY UNKNOWN\r\n".to_vec(), v2_local] {
            let relay = behind_proxy(2, 60).await;
            let mut outcomes = Vec::new();
            let mut held = Vec::new();
            for i in 0..5 {
                match upgrade_behind_proxy(relay.addr, &header, &format!("198.51.100.{i}")).await {
                    Ok(ws) => {
                        held.push(ws);
                        outcomes.push("upgraded".to_owned());
                    }
                    Err(e) => outcomes.push(e),
                }
            }
            let upgraded = outcomes.iter().filter(|o| *o == "upgraded").count();
            assert_eq!(upgraded, 2, "{:?}: five claimed addresses, one proxy: {outcomes:?}", header);
            assert_eq!(outcomes.iter().filter(|o| o.contains("429")).count(), 3, "{outcomes:?}");
        }
    })
    .await;
}

/// Bulk frames (file chunks, over 8 KiB) pay bytes, not frame tokens: a sender far above
/// --frame-rate in frames, and above --byte-rate in bytes, is slowed to the byte rate, never
/// cut off with 4004, and every frame arrives intact and in order. Small frames still pay the
/// frame rate (the flood tests in relay_deviations.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_frames_are_slowed_to_the_byte_rate_never_cut_off() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let relay = TestRelay::with(|c| {
        c.byte_rate = 8 << 20;
        c.byte_burst = 1 << 20;
    })
    .await;
    within(60, async {
        let (mut a, mut b) = pair(&relay.url(), &room("bulk")).await;
        // 600 frames of 48 KiB: 6× the frame burst, 28 MiB, 27 over the byte burst.
        const FRAMES: usize = 600;
        let chunk = |i: usize| signal("CHUNK", &format!("{i:06}{}", "x".repeat(48 * 1024)));
        let started = tokio::time::Instant::now();
        let sender = tokio::spawn(async move {
            for i in 0..FRAMES {
                a.feed(Message::text(chunk(i))).await.unwrap();
            }
            a.flush().await.unwrap();
            a
        });
        for i in 0..FRAMES {
            match tokio::time::timeout(FRAME_WAIT, b.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) => assert!(t.as_str() == chunk(i), "frame {i} changed or out of order"),
                other => panic!("frame {i}: {other:?}"),
            }
        }
        // The limit held: 27 MiB over the burst at 8 MiB/s cannot pass in under 3 s.
        assert!(started.elapsed() >= Duration::from_secs(3), "not slowed: {:?}", started.elapsed());
        let _a = sender.await.unwrap();
        assert_eq!(relay.metrics.errors(ghostwire_shared::ErrorCode::RateLimited), 0);
    })
    .await;
}
