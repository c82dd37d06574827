//! What an operator sees: each metric after the event it counts, TLS failures by reason, and the
//! start-up warnings for a certificate clients will refuse.

#![allow(clippy::unwrap_used)]

use ghostwire_relay::metrics::{Refusal, TlsFailure};
use ghostwire_shared::ErrorCode;
use ghostwire_tests::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of the series `name` (with its labels) in a Prometheus text body.
fn value(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn limits_build_upstream_and_process_are_on_metrics() {
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.max_conns = 40;
            c.max_conns_per_ip = 5;
            c.max_rooms = 7;
        })
        .await;
        let (_, body) = http_get(relay.admin, "/metrics").await;
        assert_eq!(value(&body, "ghostwire_max_connections"), Some(40.0), "{body}");
        assert_eq!(value(&body, "ghostwire_max_connections_per_ip"), Some(5.0));
        assert_eq!(value(&body, "ghostwire_max_rooms"), Some(7.0));
        assert_eq!(value(&body, "ghostwire_upstream_connected{upstream=\"local\"}"), Some(1.0));
        let build = body.lines().find(|l| l.starts_with("ghostwire_build_info{")).unwrap();
        assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
        assert!(build.contains("upstreams=\"local,nats,kafka,mesh\""), "{build}");
        assert!(build.ends_with(" 1"), "{build}");
        // The process's own figures, read from /proc: plausible, not zero.
        assert!(value(&body, "process_resident_memory_bytes").unwrap() > 1e6, "{body}");
        assert!(value(&body, "process_open_fds").unwrap() >= 3.0);
        assert!(value(&body, "process_cpu_seconds_total").is_some());
        assert!(value(&body, "process_max_fds").unwrap() >= 1.0);
        // Each JOIN's decision is timed: two joins, two observations, within the 5 s bucket.
        assert_eq!(value(&body, "ghostwire_join_seconds_count"), Some(0.0));
        let code = room("timed");
        let (mut a, mut b) = (join(&relay.url(), &code).await, join(&relay.url(), &code).await);
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        let (_, body) = http_get(relay.admin, "/metrics").await;
        assert_eq!(value(&body, "ghostwire_join_seconds_count"), Some(2.0), "{body}");
        assert_eq!(value(&body, "ghostwire_join_seconds_bucket{le=\"5\"}"), Some(2.0), "{body}");
    })
    .await;
}

#[tokio::test]
async fn refused_handshakes_are_counted_by_reason() {
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.max_conns_per_ip = 1;
            c.handshake_timeout = Duration::from_millis(300);
        })
        .await;
        let _held = connect(&relay.url()).await;
        // A second connection from the same address: 429.
        assert!(tokio_tungstenite::connect_async(relay.url()).await.is_err());
        // Another path, from another address: refused at the upgrade.
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut s = s.connect(relay.addr).await.unwrap();
        s.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(FRAME_WAIT, s.read_to_end(&mut answer)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 404"));
        // A client that never finishes its upgrade: the handshake deadline.
        let stalled = tokio::net::TcpSocket::new_v4().unwrap();
        stalled.bind("127.0.0.4:0".parse().unwrap()).unwrap();
        let mut stalled = stalled.connect(relay.addr).await.unwrap();
        stalled.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(tokio::time::timeout(FRAME_WAIT, stalled.read(&mut buf)).await.unwrap().unwrap_or(0), 0);
        let (_, body) = http_get(relay.admin, "/metrics").await;
        for (reason, n) in [("per_ip_limit", 1.0), ("upgrade", 1.0), ("timeout", 1.0), ("capacity", 0.0), ("tls", 0.0)] {
            assert_eq!(value(&body, &format!("ghostwire_handshakes_refused_total{{reason=\"{reason}\"}}")), Some(n), "{reason}:\n{body}");
        }
        assert_eq!(relay.metrics.refusals(Refusal::PerIpLimit), 1);
    })
    .await;
}

#[tokio::test]
async fn a_shutdown_is_not_counted_as_an_error() {
    within(20, async {
        let relay = TestRelay::with(|c| c.drain_timeout = Duration::from_secs(5)).await;
        let (mut a, mut b) = pair(&relay.url(), &room("shutmetric")).await;
        let metrics = relay.metrics.clone();
        let shutdown = relay.shutdown.clone();
        let stopping = tokio::spawn(relay.stop());
        shutdown.cancelled().await;
        expect_error(&mut a, 1001).await;
        expect_error(&mut b, 1001).await;
        stopping.await.unwrap();
        assert_eq!(metrics.errors(ErrorCode::GoingAway), 2);
        let body = metrics.render(0, true);
        assert_eq!(value(&body, "ghostwire_shutdown_closes_total"), Some(2.0), "{body}");
        assert!(!body.contains("code=\"1001\""), "1001 counted as an error:\n{body}");
        let errors: f64 = body
            .lines()
            .filter(|l| l.starts_with("ghostwire_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(errors, 0.0, "{body}");
    })
    .await;
}

#[tokio::test]
async fn tls_handshake_failures_are_counted_by_reason() {
    within(20, async {
        let dir = TempDir::new("tlsfail");
        let (relay, _ca) = tls_relay(&dir.0).await;
        // A client that does not trust the certificate (no roots at all) rejects it with an alert.
        let connector = tls_connector(rustls::RootCertStore::empty());
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            assert!(connector.connect(name, tcp).await.is_err());
        }
        // Plain HTTP to the TLS port.
        let mut plain = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(FRAME_WAIT, plain.read_to_end(&mut sink)).await.unwrap();
        let metrics = relay.metrics.clone();
        eventually(10, "the TLS failures to be counted", || {
            let (rejected, not_tls) =
                (metrics.tls_failures(TlsFailure::CertificateRejected), metrics.tls_failures(TlsFailure::NotTls));
            async move {
                if rejected == 2 && not_tls == 1 {
                    Ok(())
                } else {
                    Err(format!("certificate_rejected {rejected}, not_tls {not_tls}"))
                }
            }
        })
        .await;
        let (_, body) = http_get(relay.admin, "/metrics").await;
        assert_eq!(
            value(&body, "ghostwire_tls_handshake_failures_total{reason=\"certificate_rejected\"}"),
            Some(2.0),
            "{body}"
        );
        assert_eq!(value(&body, "ghostwire_tls_handshake_failures_total{reason=\"not_tls\"}"), Some(1.0));
        assert_eq!(value(&body, "ghostwire_handshakes_refused_total{reason=\"tls\"}"), Some(3.0));
    })
    .await;
}

#[tokio::test]
async fn the_relay_warns_at_start_about_a_certificate_clients_will_refuse_and_logs_the_first_rejection() {
    within(30, async {
        let dir = TempDir::new("tlswarn");
        // A self-signed certificate marked as a CA, as people make with a one-line openssl command.
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_pem, key_pem) = (dir.0.join("ca-as-server.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        let mut relay =
            RelayProc::start(&["--tls-cert", cert_pem.to_str().unwrap(), "--tls-key", key_pem.to_str().unwrap()], &[]);
        assert!(relay.startup.contains("WARN") && relay.startup.contains("is a CA certificate"), "{}", relay.startup);
        // A well-behaved client refuses it; the relay says so once, with the reason.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let refused = tls_connector(roots).connect(name, tcp).await;
        assert!(refused.is_err());
        let line = tokio::task::spawn_blocking(move || relay.wait_for("TLS handshake failed")).await.unwrap();
        assert!(line.contains("WARN") && line.contains("certificate_rejected"), "{line}");
    })
    .await;
}
