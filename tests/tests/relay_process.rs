//! The real `ghostwire-relay` binary: flags, signals and what it writes to its log.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let mut relay = RelayProc::start(&["--drain-timeout", "5s"], &[]);
    within(30, async {
        let url = format!("ws://{}/", relay.addr);
        let (mut a, mut b) = pair(&url, &room("term")).await;
        relay.signal(nix::sys::signal::Signal::SIGTERM);
        expect_error(&mut a, 1001).await;
        expect_error(&mut b, 1001).await;
    })
    .await;
    relay.wait_for("shutting down");
    let (code, log) = tokio::task::spawn_blocking(move || relay.wait()).await.unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn logs_carry_no_room_codes_payloads_or_client_ips() {
    let secret_room = "LOGSECRET42";
    let secret_payload = "payload-that-must-not-be-logged";
    for log_ips in [false, true] {
        let args: &[&str] = if log_ips { &["--log-ips"] } else { &[] };
        // The most verbose level an operator can ask for.
        let relay = RelayProc::start(args, &[("GHOSTWIRE_LOG", "trace")]);
        let addr = relay.addr;
        within(30, async {
            // Clients from 127.0.0.9, an address that appears nowhere else in the log.
            let mut peers = Vec::new();
            for _ in 0..2 {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind("127.0.0.9:0".parse().unwrap()).unwrap();
                let tcp = sock.connect(addr).await.unwrap();
                let (mut ws, _) = tokio_tungstenite::client_async(
                    format!("ws://{addr}/"),
                    tokio_tungstenite::MaybeTlsStream::Plain(tcp),
                )
                .await
                .unwrap();
                send(&mut ws, join_frame(secret_room)).await;
                peers.push(ws);
            }
            for ws in &mut peers {
                expect_peer_found(ws).await;
            }
            send(&mut peers[0], signal("MSG", secret_payload)).await;
            assert_eq!(expect_text(&mut peers[1]).await, signal("MSG", secret_payload));
            send(&mut peers[1], "{broken").await;
            expect_error(&mut peers[1], 4000).await;
            // The partner's ending (1000, logged before its PEER_LEFT is sent) comes before the
            // SIGTERM below, or it would end with 1001 instead.
            expect_peer_left(&mut peers[0]).await;
        })
        .await;
        relay.signal(nix::sys::signal::Signal::SIGTERM);
        let (code, log) = tokio::task::spawn_blocking(move || relay.wait()).await.unwrap();
        assert_eq!(code, Some(0), "{log}");
        assert!(log.contains("closing connection"), "trace log is not verbose enough to prove anything:\n{log}");
        // Each ending's close code, for an operator reading why connections end.
        assert!(log.contains("code=4000") && log.contains("code=1000"), "close codes at debug:\n{log}");
        assert!(!log.contains(secret_room) && !log.contains(secret_payload), "secret in log:\n{log}");
        assert_eq!(log.contains("127.0.0.9"), log_ips, "client IP logged iff --log-ips:\n{log}");
    }
}

/// Flags that parse one by one but cannot work together, or cannot work at all, stop the start
/// with exit 2 and a sentence naming every flag involved, before anything listens.
#[test]
fn contradictory_or_unworkable_settings_are_refused_naming_their_flags() {
    let mesh = ["--upstream", "mesh", "--introducers", "127.0.0.1:1"];
    let kafka = ["--upstream", "kafka", "--kafka-brokers", "127.0.0.1:1"];
    let nats = ["--upstream", "nats", "--nats-url", "nats://127.0.0.1:1"];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            [&mesh[..], &["--mesh-peer-timeout", "1s", "--mesh-heartbeat", "15s"]].concat(),
            vec!["--mesh-peer-timeout", "--mesh-heartbeat"],
        ),
        (
            [&nats[..], &["--nats-peer-timeout", "1s", "--nats-heartbeat", "5s"]].concat(),
            vec!["--nats-peer-timeout", "--nats-heartbeat"],
        ),
        (
            [&kafka[..], &["--kafka-snapshot-every", "10m", "--kafka-retention", "1m"]].concat(),
            vec!["--kafka-retention", "--kafka-snapshot-every"],
        ),
        (vec!["--max-frame-bytes", "10"], vec!["--max-frame-bytes"]),
        (vec!["--max-conns", "0"], vec!["--max-conns"]),
        (vec!["--max-rooms", "0"], vec!["--max-rooms"]),
        (vec!["--max-conns-per-ip", "0"], vec!["--max-conns-per-ip"]),
        ([&mesh[..], &["--mesh-listen", "0.0.0.0:0"]].concat(), vec!["--mesh-listen", "--mesh-advertise"]),
        (vec!["--drain-spread", "5s", "--drain-timeout", "5s"], vec!["--drain-spread", "--drain-timeout"]),
    ];
    for (args, named) in cases {
        // The same refusal from a start and from --check-config.
        for check in [&[][..], &["--check-config"][..]] {
            let out = Command::new(bin("ghostwire-relay"))
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .args(&args)
                .args(check)
                .env("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {check:?}: {err}");
            for flag in &named {
                assert!(err.contains(flag), "{args:?} {check:?} must name {flag}: {err}");
            }
            assert!(!err.contains("relay listening"), "{args:?} started: {err}");
        }
    }
    // A log filter typo would silence every line: refused, naming the variable.
    for typo in ["warning", "verbose", "info,=x"] {
        let out = Command::new(bin("ghostwire-relay"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("GHOSTWIRE_LOG", typo)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "GHOSTWIRE_LOG={typo}: {err}");
        assert!(err.contains("GHOSTWIRE_LOG"), "{err}");
    }
}

#[test]
fn help_explains_every_flag_and_a_bad_flag_is_named() {
    let out = Command::new(bin("ghostwire-relay")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in [
        "--listen",
        "--admin-listen",
        "--tls-cert",
        "--tls-key",
        "--max-frame-bytes",
        "--frame-rate",
        "--frame-burst",
        "--max-conns-per-ip",
        "--max-conns",
        "--max-rooms",
        "--join-timeout",
        "--wait-timeout",
        "--ping-interval",
        "--ping-timeout",
        "--peer-queue",
        "--drain-timeout",
        "--trusted-proxy",
        "--handshake-timeout",
        "--upstream",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(help.contains("[default: 127.0.0.1:8765]") && help.contains("GHOSTWIRE_LISTEN"), "{help}");
    assert!(help.contains("GHOSTWIRE_LOG") && help.contains("Exit codes: 0"), "{help}");
    let out = Command::new(bin("ghostwire-relay")).args(["--frame-rate", "lots"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("--frame-rate"), "{err}");
    // Durations that would panic a task (a zero interval) or overflow a deadline are refused at
    // start, naming the flag; so is every zero timeout.
    for (flag, value, says) in [
        ("--ping-interval", "0", "must be more than zero"),
        ("--nats-heartbeat", "0s", "must be more than zero"),
        ("--join-timeout", "0ms", "must be more than zero"),
        ("--wait-timeout", "1000000000s", "at most a year"),
        ("--handshake-timeout", "-1", ""),
    ] {
        let out = Command::new(bin("ghostwire-relay")).arg(format!("{flag}={value}")).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag) && err.contains(says), "{flag} {value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A port that is taken: a clear message and a non-zero exit, no panic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut child = Command::new(bin("ghostwire-relay"))
        .args(["--listen", &addr, "--admin-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

/// Each flag `--help` lists, with its `[default: …]` and `[env: …]` when it has them.
fn flags_in_help(binary: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let out = Command::new(bin(binary)).arg("--help").output().unwrap();
    assert!(out.status.success());
    let mut flags: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("-h, ").or_else(|| t.strip_prefix("-V, ")).unwrap_or(t);
        if line.starts_with("  ") && t.starts_with("--") && !line.starts_with("          ") {
            let name = t.split([' ', '=']).next().unwrap().to_owned();
            flags.push((name, None, None));
        } else if let Some((_, default, env)) = flags.last_mut() {
            if let Some(d) = t.strip_prefix("[default: ").and_then(|d| d.strip_suffix(']')) {
                *default = Some(d.to_owned());
            }
            if let Some(e) = t.strip_prefix("[env: ").and_then(|e| e.split(['=', ']']).next()) {
                *env = Some(e.to_owned());
            }
        }
    }
    flags
}

/// The README's flag tables say what `--help` says: every flag of both binaries is in the
/// README, and a table row that names a flag gives its environment variable and default.
#[test]
fn the_readme_flag_tables_match_help() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let mut checked = 0;
    for binary in ["ghostwire-relay", "ghostwire"] {
        for (flag, default, env) in flags_in_help(binary) {
            if flag == "--help" || flag == "--version" {
                continue;
            }
            assert!(readme.contains(&format!("`{flag}")), "{binary} {flag} is not in the README");
            let named = format!("`{flag}`");
            let Some(row) = rows.iter().find(|r| r[0].split(", ").any(|c| c == named)) else { continue };
            if let Some(env) = env {
                assert!(row[1].contains(&env), "{binary} {flag}: --help says env {env}, the README {}", row[1]);
            }
            if let Some(default) = default {
                let readme_default = row[2].replace('`', "");
                assert!(
                    readme_default.contains(&default),
                    "{binary} {flag}: --help says default {default}, the README {readme_default}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} rows checked: has the table format changed?");
}

/// The same promise with the NATS upstream at the most verbose level: no room code, payload,
/// NATS token or cluster secret in either relay's log (the NATS client's own trace output would
/// print payloads and its credentials; the relay caps it).
#[tokio::test]
async fn nats_relays_log_no_room_codes_payloads_or_credentials() {
    let (secret_room, secret_payload, token) = ("NATSLOGSECRET42", "nats-payload-not-logged", "nats-token-not-logged");
    let nats = NatsServer::start_with(&["--auth", token]);
    let url = nats.url();
    let args = ["--upstream", "nats", "--nats-url", &url];
    let env = [("GHOSTWIRE_LOG", "trace"), ("NATS_TOKEN", token), ("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET)];
    let (r1, r2) = (RelayProc::start(&args, &env), RelayProc::start(&args, &env));
    within(30, async {
        until_ready(r1.admin, 10).await;
        until_ready(r2.admin, 10).await;
        let (mut a, mut b) = (join(&r1.url, secret_room).await, join(&r2.url, secret_room).await);
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        send(&mut a, signal("MSG", secret_payload)).await;
        assert_eq!(expect_text(&mut b).await, signal("MSG", secret_payload));
    })
    .await;
    for relay in [r1, r2] {
        relay.signal(nix::sys::signal::Signal::SIGTERM);
        let (code, log) = tokio::task::spawn_blocking(move || relay.wait()).await.unwrap();
        assert_eq!(code, Some(0), "{log}");
        // The connection's end is logged either way it comes: the relay closing it (its
        // partner left first, or the relay shut down) or the client gone first (the test drops
        // its sockets as it ends): a race between the two, so either line proves the verbosity.
        let ended = log.contains("closing connection") || log.contains("connection closed");
        assert!(ended, "trace log is not verbose enough to prove anything:\n{log}");
        for secret in [secret_room, secret_payload, token, CLUSTER_SECRET] {
            assert!(!log.contains(secret), "{secret} in log:\n{log}");
        }
    }
}

/// A relay whose log can no longer be written (the reader of its stderr is gone: a log
/// collector that died, `| head`) still stops on SIGTERM, draining, with exit 0: a failed log
/// write must not kill the task that handles the signal.
#[test]
fn a_relay_whose_log_reader_is_gone_still_stops_on_sigterm() {
    use std::io::BufRead;
    let mut child = Command::new(bin("ghostwire-relay"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("relay listening") {
            break;
        }
    }
    drop(lines); // the log's reader goes away
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let Ok(status) = rx.recv_timeout(std::time::Duration::from_secs(15)) else {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("the relay did not stop on SIGTERM once its log's reader was gone");
    };
    assert!(status.unwrap().success());
}

/// `--check-config` checks what a start checks, without binding (the listen address here is
/// taken) or reaching a broker (there is none), prints the effective configuration with the
/// cluster secret redacted, and exits 0; a missing secret or unreadable TLS files exit 2.
#[test]
fn check_config_validates_without_starting_and_redacts_secrets() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let base = ["--listen", listen.as_str(), "--admin-listen", "127.0.0.1:0", "--check-config"];
    let run = |args: &[&str], secret: bool| {
        let mut cmd = Command::new(bin("ghostwire-relay"));
        cmd.args(base).args(args).env_remove("GHOSTWIRE_CLUSTER_SECRET");
        if secret {
            cmd.env("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--upstream", "nats", "--nats-url", "nats://127.0.0.1:1"], true);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("the configuration is valid") && out.contains(&listen), "{out}");
    assert!(out.contains("[redacted]") && !out.contains(CLUSTER_SECRET), "the secret is redacted: {out}");
    let (code, _, err) = run(&["--upstream", "nats", "--nats-url", "nats://127.0.0.1:1"], false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--cluster-secret"), "{err}");
    let (code, _, err) = run(&["--upstream", "mesh"], true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--introducers"), "{err}");
    let (code, _, err) = run(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}

/// `--log-format json`: every line the relay writes is one JSON object a log collector can
/// read, with the level, the message and the event's fields.
#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::BufRead;
    let mut child = Command::new(bin("ghostwire-relay"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let listening = loop {
        let line = lines.recv_timeout(Duration::from_secs(10)).expect("the relay logged no start within 10 s");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        seen.push(line);
        if v["message"] == "relay listening" {
            break v;
        }
    };
    assert!(listening["listen"].as_str().is_some_and(|l| l.starts_with("ws://127.0.0.1:")), "{listening}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    // The drain's lines too, until the relay exits and its stderr closes (bounded).
    loop {
        match lines.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => {
                serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the relay did not exit on SIGTERM"),
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{seen:?}");
}
