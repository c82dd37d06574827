//! The client through a real SOCKS5 proxy (Debian's microsocks, on loopback): two clients chat
//! through it, the relay's name reaches the proxy unresolved while the client opens no socket
//! but the proxy's and looks nothing up, and every proxy failure is named without showing a
//! credential.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;

/// A microsocks on a free loopback port, its log in a file, stopped on drop.
struct Microsocks {
    port: u16,
    log: std::path::PathBuf,
    child: std::process::Child,
    _dir: TempDir,
}

impl Microsocks {
    fn start(extra: &[&str]) -> Microsocks {
        let dir = TempDir::new("socks");
        let log = dir.0.join("microsocks.log");
        let port = free_port();
        let child = std::process::Command::new("microsocks")
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("microsocks is missing: scripts/test.sh installs it");
        until_listening(port, "microsocks");
        Microsocks { port, log, child, _dir: dir }
    }

    fn url(&self) -> String {
        format!("socks5h://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Microsocks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ghostwire` with the proxy credentials `env` set (and nothing else of the caller's).
fn client(env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin("ghostwire"));
    cmd.env_remove("GHOSTWIRE_PROXY").env_remove("GHOSTWIRE_PROXY_USER").env_remove("GHOSTWIRE_PROXY_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// SIGTERM, as a user's kill: the client ends the session (exit 0).
fn stop(peer: &Peer) {
    let pid = nix::unistd::Pid::from_raw(peer.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

#[tokio::test]
async fn two_clients_chat_through_the_proxy_which_alone_resolves_and_reaches_the_relay() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        // Outgoing connections from the proxy come from 127.0.0.2.
        let proxy = Microsocks::start(&["-b", "127.0.0.2"]);
        // A host name, so that there is something to resolve (or not).
        let url = format!("ws://localhost:{}/", relay.addr.port());
        let code = room("socks");
        let dir = TempDir::new("sockstrace");
        let trace = dir.0.join("client.strace");
        let mut traced = tokio::process::Command::new("strace");
        traced.args(["-f", "-qq", "-e", "trace=connect,openat", "-o"]).arg(&trace).arg(bin("ghostwire"));
        let mut a = Peer::start_with(traced, &["--proxy", &proxy.url(), "--relay", &url, &code]);
        let said = a.status("connecting to").await;
        assert!(said.contains(&format!("through the SOCKS5 proxy at 127.0.0.1:{}", proxy.port)), "{said}");
        let mut b = Peer::start_with(client(&[("GHOSTWIRE_PROXY", &proxy.url())]), &["--relay", &url, &code]);
        a.code().await;
        b.code().await;
        a.say("through the proxy").await;
        assert_eq!(b.heard().await, "through the proxy");
        b.say("and back").await;
        assert_eq!(a.heard().await, "and back");
        hang_up_and_part(a, b).await;
        // The proxy was given the name, unresolved, once per client.
        let log = proxy.log();
        let asked = format!("connected to localhost:{}", relay.addr.port());
        assert_eq!(log.matches(&asked).count(), 2, "{log}");
        // The client connected to nothing but the proxy, and never looked a name up.
        let trace = std::fs::read_to_string(&trace).unwrap();
        let connects: Vec<&str> = trace.lines().filter(|l| l.contains("connect(")).collect();
        assert!(!connects.is_empty(), "strace saw no connect: the check would prove nothing:\n{trace}");
        let to_proxy = format!("sin_port=htons({}), sin_addr=inet_addr(\"127.0.0.1\")", proxy.port);
        for line in &connects {
            assert!(line.contains(&to_proxy), "a connection not to the proxy: {line}");
        }
        for lookup in ["/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/gai.conf"] {
            assert!(!trace.contains(lookup), "the client read {lookup}: it resolved a name itself");
        }
    })
    .await;
}

#[tokio::test]
async fn each_proxy_failure_is_named_and_no_credential_is_shown() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let url = format!("ws://localhost:{}/", relay.addr.port());
        let secret = "pr0xy-s3cret-word";
        let run = |env: Vec<(&'static str, String)>, args: Vec<String>| async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut peer = Peer::start_with(client(&env), &args);
            peer.hang_up();
            peer.exit().await
        };
        let code = room("sockfail");
        let args = |proxy: &str, relay: &str| {
            vec!["--proxy".to_owned(), proxy.to_owned(), "--relay".to_owned(), relay.to_owned(), code.clone()]
        };

        // Nothing listens where the proxy should be.
        let nowhere = format!("socks5h://127.0.0.1:{}", free_port());
        let (exit, log) = run(vec![], args(&nowhere, &url)).await;
        assert_eq!(exit, 3, "{log}");
        assert!(log.contains("cannot reach the SOCKS5 proxy at 127.0.0.1:"), "{log}");

        // A proxy that wants a password: none given, then a wrong one, then the right one.
        let guarded = Microsocks::start(&["-u", "alice", "-P", secret]);
        let (exit, log) = run(vec![], args(&guarded.url(), &url)).await;
        assert_eq!(exit, 3, "{log}");
        assert!(
            log.contains("it requires authentication: set GHOSTWIRE_PROXY_USER and GHOSTWIRE_PROXY_PASSWORD"),
            "{log}"
        );
        let wrong =
            vec![("GHOSTWIRE_PROXY_USER", "alice".to_owned()), ("GHOSTWIRE_PROXY_PASSWORD", "not-it".to_owned())];
        let (exit, log) = run(wrong, args(&guarded.url(), &url)).await;
        assert_eq!(exit, 3, "{log}");
        assert!(log.contains("it refused the username and password") && !log.contains("not-it"), "{log}");
        let right = [("GHOSTWIRE_PROXY_USER", "alice"), ("GHOSTWIRE_PROXY_PASSWORD", secret)];
        let mut admitted = Peer::start_with(
            client(&right),
            &args(&guarded.url(), &url).iter().map(String::as_str).collect::<Vec<_>>(),
        );
        admitted.status("searching").await;
        stop(&admitted);
        let (_, log) = admitted.exit().await;
        assert!(!log.contains(secret), "the password was shown: {log}");

        // The proxy is up, the relay behind it is not.
        let open = Microsocks::start(&[]);
        let dead_relay = format!("ws://localhost:{}/", free_port());
        let (exit, log) = run(vec![], args(&open.url(), &dead_relay)).await;
        assert_eq!(exit, 3, "{log}");
        assert!(
            log.contains("it could not reach the relay at localhost:") && log.contains("connection refused"),
            "{log}"
        );

        // Credentials in the URL (every local user can read argv) and a proxy that is not SOCKS5:
        // bad input, and the password is not repeated back.
        let in_url = format!("socks5h://alice:{secret}@127.0.0.1:{}", open.port);
        let (exit, log) = run(vec![], args(&in_url, &url)).await;
        assert_eq!(exit, 2, "{log}");
        assert!(log.contains("credentials do not go in the URL") && !log.contains(secret), "{log}");
        let (exit, log) = run(vec![], args(&format!("http://127.0.0.1:{}", open.port), &url)).await;
        assert_eq!(exit, 2, "{log}");
        assert!(log.contains("the scheme is http://"), "{log}");

        // socks5:// resolves the name here: allowed, with a warning that the lookup is not hidden.
        let local = format!("socks5://127.0.0.1:{}", open.port);
        let mut warned =
            Peer::start_with(client(&[]), &args(&local, &url).iter().map(String::as_str).collect::<Vec<_>>());
        warned.status("the lookup is not hidden").await;
        warned.status("searching").await;
        stop(&warned);
        assert_eq!(warned.exit().await.0, 0);
    })
    .await;
}

#[tokio::test]
async fn wss_goes_through_the_proxy_too_with_the_certificate_checked_end_to_end() {
    within(60, async {
        let dir = TempDir::new("sockswss");
        let (relay, ca) = tls_relay(&dir.0).await;
        let proxy = Microsocks::start(&[]);
        let url = format!("wss://localhost:{}/", relay.addr.port());
        let ca = ca.to_str().unwrap();
        let (mut a, mut b, code_a, code_b) =
            connected_pair(&url, &room("sockstls"), &["--proxy", &proxy.url(), "--ca", ca]).await;
        assert_eq!(code_a, code_b);
        a.say("tls inside socks").await;
        assert_eq!(b.heard().await, "tls inside socks");
        assert_eq!(proxy.log().matches(&format!("connected to localhost:{}", relay.addr.port())).count(), 2);
        // TLS runs between the client and the relay, not the proxy: without the CA it is refused.
        let mut untrusting =
            Peer::start_with(client(&[]), &["--proxy", &proxy.url(), "--relay", &url, &room("sockno")]);
        untrusting.hang_up();
        let (exit, log) = untrusting.exit().await;
        assert_eq!(exit, 3, "{log}");
        assert!(log.contains("not trusted"), "{log}");
        hang_up_and_part(a, b).await;
    })
    .await;
}

#[tokio::test]
async fn tor_without_tor_running_says_so() {
    within(30, async {
        // This machine runs no Tor (the test needs its port closed; it binds nothing there).
        if std::net::TcpStream::connect("127.0.0.1:9050").is_ok() {
            panic!("something listens on 127.0.0.1:9050; this test needs Tor's port closed");
        }
        let mut peer = Peer::start_with(client(&[]), &["--tor", "--relay", "ws://example.onion/", &room("tor")]);
        peer.hang_up();
        let (exit, log) = peer.exit().await;
        assert_eq!(exit, 3, "{log}");
        assert!(log.contains("through the SOCKS5 proxy at 127.0.0.1:9050"), "{log}");
        assert!(
            log.contains("cannot reach Tor's SOCKS port at 127.0.0.1:9050") && log.contains("is Tor running?"),
            "{log}"
        );
    })
    .await;
}
