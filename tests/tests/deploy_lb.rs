//! The production shape on one machine: nginx terminating TLS (a certificate from a CA the test
//! makes) in front of relay processes bridged by a real nats-server; and a rolling restart.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::time::Duration;

/// nginx on a free loopback port, TLS with `cert`/`key`, round-robin over `relays`; stopped on drop.
struct Nginx {
    port: u16,
    child: std::process::Child,
    dir: TempDir,
}

impl Nginx {
    fn start(cert: &std::path::Path, key: &std::path::Path, relays: &[SocketAddr]) -> Nginx {
        assert!(
            std::process::Command::new("nginx").arg("-v").output().is_ok(),
            "nginx is not installed (scripts/test.sh installs it)"
        );
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.0.display();
        let upstreams: String = relays.iter().map(|a| format!("        server {a} max_fails=0;\n")).collect();
        let conf = format!(
            r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream relays {{
{upstreams}    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
        );
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new("nginx")
            // A group of its own: the workers go with the master when the test stops it.
            .process_group(0)
            .args(["-e", &format!("{d}/error.log"), "-p"])
            .arg(&dir.0)
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        until_listening(port, "nginx");
        Nginx { port, child, dir }
    }

    fn url(&self) -> String {
        format!("wss://localhost:{}/", self.port)
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM to the whole group (nginx's fast shutdown), bounded; then SIGKILL to whatever is
    /// left, so no worker outlives the test holding its port.
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Relay processes on the NATS upstream, trusting X-Forwarded-For from loopback (nginx).
fn relay(nats: &NatsServer, extra: &[&str]) -> RelayProc {
    let url = nats.url();
    let mut args = vec!["--upstream", "nats", "--nats-url", &url, "--trusted-proxy", "127.0.0.1/32"];
    args.extend_from_slice(extra);
    RelayProc::start(&args, &[("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)])
}

/// WebSocket connections a relay has accepted so far.
async fn accepted(admin: SocketAddr) -> u64 {
    let (_, m) = http_get(admin, "/metrics").await;
    m.lines().find_map(|l| l.strip_prefix("ghostwire_connections_total ")).and_then(|v| v.trim().parse().ok()).unwrap()
}

/// Waits (bounded) until the relays at `admins` have accepted `want` connections in all.
async fn until_accepted(admins: &[SocketAddr], want: u64) {
    eventually(10, &format!("{want} accepted connections"), || async move {
        let mut total = 0;
        for a in admins {
            total += accepted(*a).await;
        }
        if total >= want {
            Ok(())
        } else {
            Err(format!("{total} so far"))
        }
    })
    .await
}

#[tokio::test]
async fn clients_through_a_tls_load_balancer_land_on_different_relays_and_chat() {
    let dir = TempDir::new("lb");
    let (ca, cert, key) = test_ca(&dir.0);
    let nats = NatsServer::start();
    let (r1, r2) = (relay(&nats, &[]), relay(&nats, &[]));
    // A third relay serves wss:// itself (rustls), with the same certificate.
    let r3 = relay(&nats, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let lb = Nginx::start(&cert, &key, &[r1.addr, r2.addr]);
    let ca_arg = ca.to_str().unwrap();
    within(90, async {
        for r in [&r1, &r2, &r3] {
            until_ready(r.admin, 10).await;
        }
        let code = room("lb");
        let mut a = Peer::start(&["--relay", &lb.url(), &code, "--ca", ca_arg]);
        until_accepted(&[r1.admin, r2.admin], 1).await;
        let mut b = Peer::start(&["--relay", &lb.url(), &code, "--ca", ca_arg]);
        until_accepted(&[r1.admin, r2.admin], 2).await;
        // Round robin put one client on each replica: the room spans both through NATS.
        assert_eq!((accepted(r1.admin).await, accepted(r2.admin).await), (1, 1));
        let (ca_code, cb_code) = (a.code().await, b.code().await);
        assert_eq!(ca_code, cb_code);
        a.say("through nginx").await;
        assert_eq!(b.heard().await, "through nginx");
        b.say("and back").await;
        assert_eq!(a.heard().await, "and back");
        hang_up_and_part(a, b).await;

        // One client through the load balancer, one straight to a relay's own TLS listener.
        let direct = format!("wss://localhost:{}/", r3.addr.port());
        let (mut c, mut d, cc, cd) = connected_pair_via(&lb.url(), &direct, &room("direct"), &["--ca", ca_arg]).await;
        assert_eq!(cc, cd);
        c.say("lb to rustls").await;
        assert_eq!(d.heard().await, "lb to rustls");
        hang_up_and_part(c, d).await;

        // A client that does not trust the test CA is refused, and told why.
        let (status, log) = Peer::start(&["--relay", &lb.url(), &room("untrusted")]).exit().await;
        assert_eq!(status, 3, "{log}");
        assert!(log.contains("not trusted") && log.contains("--ca"), "{log}");
    })
    .await;
    assert!(!lb.errors().contains("[emerg]"), "{}", lb.errors());
}

/// SIGTERM to one replica with rooms live: its clients get 1001 and a clear message, their
/// partners on the other replica PEER_LEFT; rooms wholly on the other replica go on; new rooms
/// through the load balancer keep working; no relay panics.
#[tokio::test]
async fn a_rolling_restart_moves_only_the_stopped_replica_s_clients() {
    let dir = TempDir::new("roll");
    let (ca, cert, key) = test_ca(&dir.0);
    let nats = NatsServer::start();
    let (stopping, staying) = (relay(&nats, &[]), relay(&nats, &[]));
    let lb = Nginx::start(&cert, &key, &[stopping.addr, staying.addr]);
    let ca_arg = ca.to_str().unwrap();
    let (old, new) = (stopping.url.clone(), staying.url.clone());
    within(90, async {
        until_ready(stopping.admin, 10).await;
        until_ready(staying.admin, 10).await;
        // Split across the replicas, wholly on the stopping one, wholly on the staying one.
        let split = room("split");
        let (mut s1, mut s2) = (join(&old, &split).await, join(&new, &split).await);
        expect_peer_found(&mut s1).await;
        expect_peer_found(&mut s2).await;
        let (mut o1, mut o2) = pair(&old, &room("old")).await;
        let (mut n1, mut n2) = pair(&new, &room("new")).await;
        // A real client on the stopping replica that does not resume, to read what a person is told.
        let no_resume = ["--resume-window", "0"];
        let (mut p, mut q, _, _) = connected_pair_via(&old, &new, &room("people"), &no_resume).await;
        // Two that resume, through the load balancer: round robin puts the first on the
        // stopping replica, the second on the staying one.
        let resume_room = room("resume");
        let mut r1 = Peer::start(&["--relay", &lb.url(), &resume_room, "--ca", ca_arg]);
        r1.status("searching").await;
        let mut r2 = Peer::start(&["--relay", &lb.url(), &resume_room, "--ca", ca_arg]);
        r1.code().await;
        r2.code().await;
        r1.say("before the restart").await;
        assert_eq!(r2.heard().await, "before the restart");

        stopping.signal(Signal::SIGTERM);
        for ws in [&mut s1, &mut o1, &mut o2] {
            expect_error(ws, 1001).await;
        }
        expect_peer_left(&mut s2).await;
        let said = p.status("shutting down").await;
        assert!(said.contains("1001") && said.contains("again"), "{said}");
        // Nobody chose to leave: the partner is told its peer was lost, not that it left.
        let lost = q.status("session destroyed").await;
        assert!(lost.contains("the connection to your peer was lost") && lost.contains("exit 3"), "{lost}");

        // The resuming pair goes on through the staying replica, the code never typed again.
        r1.status("back: resumed").await;
        r1.say("after the restart").await;
        assert_eq!(r2.heard().await, "after the restart");
        hang_up_and_part(r1, r2).await;

        // The staying replica's room is untouched.
        send(&mut n1, signal("MSG", "still here")).await;
        assert_eq!(expect_text(&mut n2).await, signal("MSG", "still here"));

        // New rooms through the load balancer keep working (nginx moves on from the stopped relay).
        let (mut x, mut y, cx, cy) = connected_pair_via(&lb.url(), &lb.url(), &room("after"), &["--ca", ca_arg]).await;
        assert_eq!(cx, cy);
        x.say("after the restart").await;
        assert_eq!(y.heard().await, "after the restart");
        hang_up_and_part(x, y).await;
    })
    .await;
    let stopped = tokio::task::spawn_blocking(move || stopping.wait()).await.unwrap();
    assert_eq!(stopped.0, Some(0), "{}", stopped.1);
    let staying_log = tokio::task::spawn_blocking(move || {
        staying.signal(Signal::SIGTERM);
        staying.wait()
    })
    .await
    .unwrap();
    for log in [&stopped.1, &staying_log.1] {
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// A rolling deploy mid-conversation: two replicas behind nginx, each stopped with SIGTERM and
/// started again on its port, one after the other, while 300 numbered lines flow. The two
/// clients resume through whichever replica nginx picks; every line arrives once, in order, and
/// nobody types the code again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_of_both_replicas_mid_stream_loses_nothing() {
    let dir = TempDir::new("deploy");
    let (ca, cert, key) = test_ca(&dir.0);
    let nats = NatsServer::start();
    let listen = [format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())];
    let start = |i: usize| relay(&nats, &["--listen", &listen[i]]);
    let mut replicas = [Some(start(0)), Some(start(1))];
    let addrs: Vec<SocketAddr> = listen.iter().map(|l| l.parse().unwrap()).collect();
    let lb = Nginx::start(&cert, &key, &addrs);
    let ca_arg = ca.to_str().unwrap();
    within(120, async {
        for r in replicas.iter().flatten() {
            until_ready(r.admin, 10).await;
        }
        let code = room("deploy");
        let mut a = Peer::start(&["--relay", &lb.url(), &code, "--ca", ca_arg]);
        a.status("searching").await;
        let mut b = Peer::start(&["--relay", &lb.url(), &code, "--ca", ca_arg]);
        a.code().await;
        b.code().await;
        // Queued at once, sent paced (about 80 a second): the deploy happens while they flow.
        for i in 1..=300 {
            a.say(&format!("line {i:03}")).await;
        }
        let mut next = 1;
        for (i, until) in [(0, 60), (1, 160)] {
            while next <= until {
                assert_eq!(b.heard().await, format!("line {next:03}"));
                next += 1;
            }
            let old = replicas[i].take().unwrap();
            old.signal(Signal::SIGTERM);
            let (code, log) = tokio::task::spawn_blocking(move || old.wait()).await.unwrap();
            assert_eq!(code, Some(0), "{log}");
            let new = start(i);
            until_ready(new.admin, 20).await;
            replicas[i] = Some(new);
        }
        while next <= 300 {
            assert_eq!(b.heard().await, format!("line {next:03}"), "each line once, in order");
            next += 1;
        }
        // Both were moved by the deploy (the first stop dropped one of them, and so its peer).
        a.status("back: resumed").await;
        b.status("back: resumed").await;
        hang_up_and_part(a, b).await;
    })
    .await;
}
