//! The NATS upstream against a real `nats-server` (JetStream, memory storage) on loopback:
//! rooms across relays, the join race, dead relays, a restarted broker, and what the broker sees.

#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use ghostwire_tests::*;
use std::time::Duration;

async fn relays(nats: &NatsServer, n: usize) -> Vec<TestRelay> {
    relays_with(nats, n, |c| c).await
}

async fn relays_with(
    nats: &NatsServer,
    n: usize,
    f: impl Fn(ghostwire_relay::Config) -> ghostwire_relay::Config,
) -> Vec<TestRelay> {
    let mut out = Vec::new();
    for _ in 0..n {
        let relay = TestRelay::start(f(nats_config(&nats.url()))).await;
        until_ready(relay.admin, 10).await;
        out.push(relay);
    }
    out
}

#[tokio::test]
async fn three_relays_share_one_room_space() {
    let nats = NatsServer::start();
    within(60, async {
        let r = relays(&nats, 3).await;
        room_contract(&r[0].url(), &r[2].url()).await;
        room_contract(&r[1].url(), &r[2].url()).await;
        // A room whose two seats are taken on relays 1 and 2 refuses a third on relay 3.
        let code = room("three");
        let mut a = join(&r[0].url(), &code).await;
        let mut b = join(&r[1].url(), &code).await;
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        let conflicts = || r[2].metrics.upstream.slot_conflicts.get();
        let before = conflicts();
        let mut c = join(&r[2].url(), &code).await;
        expect_error(&mut c, 4002).await;
        assert_eq!(conflicts(), before + 1);
    })
    .await;
}

/// NATS goes away and comes back (restarted empty: memory storage). Meanwhile `/readyz` says
/// why and joins get 4007; then the relays reconnect and make the bucket again on their own, and
/// a peer that was waiting alone through it has its slot made again: it is still found.
/// (What happens to frames across the outage is the conformance suite's `a_broker_blip_loses_nothing`.)
#[tokio::test]
async fn a_restarted_nats_server_refuses_joins_meanwhile_and_a_waiting_peer_is_still_found() {
    let mut nats = NatsServer::start();
    within(90, async {
        let r = relays_with(&nats, 2, fast_failures).await;
        // The slot's write on the broker is the event that says the waiting peer is in.
        let monitor = async_nats::connect(nats.url()).await.unwrap();
        let mut slots = monitor.subscribe("$KV.ghostwire-rooms.>").await.unwrap();
        monitor.flush().await.unwrap();
        let code = room("alone");
        let mut alone = join(&r[1].url(), &code).await;
        let slot = tokio::time::timeout(FRAME_WAIT, slots.next()).await.unwrap().unwrap();
        assert!(slot.subject.ends_with(".a"), "{}", slot.subject);
        drop(monitor);

        nats.kill();
        let body = until_unready_because(r[0].admin, "NATS").await;
        assert!(!body.contains(CLUSTER_SECRET), "{body}");
        let mut refused = join(&r[0].url(), &room("outage")).await;
        expect_error(&mut refused, 4007).await;

        nats.run();
        for relay in &r {
            until_ready(relay.admin, 20).await;
        }
        let mut second = join(&r[0].url(), &code).await;
        assert_eq!(expect_text(&mut second).await, r#"{"type":"PEER_FOUND"}"#, "the joiner");
        assert_eq!(expect_text(&mut alone).await, r#"{"type":"PEER_FOUND"}"#, "the peer waiting through it");
        send(&mut second, signal("MSG", "found you")).await;
        assert_eq!(expect_text(&mut alone).await, signal("MSG", "found you"));
        room_contract(&r[1].url(), &r[0].url()).await;
        let (_, metrics) = http_get(r[0].admin, "/metrics").await;
        assert!(metrics.contains("ghostwire_upstream_reconnects_total 1"), "{metrics}");
    })
    .await;
}

/// What a confused or stale relay might send, sent by hand on the broker: a reservation given up
/// (`x`) frees the waiting seat at once; a commit from a seat that did not reserve is refused;
/// frames that name a sender other than the partner are dropped and counted, never delivered.
/// The seat id in a slot's value: the id, then its 16-byte tag.
fn seat_in(value: &[u8]) -> String {
    String::from_utf8(value[..value.len() - 16].to_vec()).unwrap()
}

/// A frame message as relays send them (first number, then length and frame), untagged.
fn frame_message(text: &str) -> Vec<u8> {
    let mut m = 0u64.to_be_bytes().to_vec();
    m.extend_from_slice(&(text.len() as u32).to_be_bytes());
    m.extend_from_slice(text.as_bytes());
    m
}

/// A forger with full access to the NATS server but not the cluster secret: it reads the slots
/// and every subject, and publishes and requests anything. Each attack of the red-team pass is
/// performed: pairing a waiting client with a seat of its own, injecting a frame, announcing a
/// departure, planting a slot, and replaying or splicing a real relay's message. None is acted
/// on; each is counted in `upstream_forged_total`; the clients see only each other.
#[tokio::test]
async fn a_forger_on_the_broker_cannot_pair_inject_evict_or_plant() {
    let nats = NatsServer::start();
    within(60, async {
        let r = relays(&nats, 2).await;
        let forged = |i: usize| r[i].metrics.upstream.forged.get();
        let forger = async_nats::connect(nats.url()).await.unwrap();
        let mut slots = forger.subscribe("$KV.ghostwire-rooms.>").await.unwrap();
        let mut wire = forger.subscribe("ghostwire.seat.>").await.unwrap();
        forger.flush().await.unwrap();
        let code = room("forge");
        let mut a = join(&r[0].url(), &code).await;
        let slot = tokio::time::timeout(FRAME_WAIT, slots.next()).await.unwrap().unwrap();
        let seat_a = seat_in(&slot.payload);
        let to_a = |kind: &str, from: &str| format!("ghostwire.seat.{seat_a}.{kind}.{from}");
        let mine = "0123456789abcdef.1";

        // Pairing A with the forger's seat: phase one and two, unanswered and not acted on.
        let before = forged(0);
        let j = tokio::time::timeout(Duration::from_millis(500), forger.request(to_a("j", mine), "".into())).await;
        assert!(!matches!(j, Ok(Ok(_))), "a forged pairing request was answered");
        let c = tokio::time::timeout(Duration::from_millis(500), forger.request(to_a("c", mine), "".into())).await;
        assert!(!matches!(c, Ok(Ok(_))), "a forged commit was answered");
        assert!(forged(0) >= before + 2, "the forgeries were counted");

        // A real joiner still finds A waiting.
        let mut b = join(&r[1].url(), &code).await;
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        let slot_b = tokio::time::timeout(FRAME_WAIT, slots.next()).await.unwrap().unwrap();
        let seat_b = seat_in(&slot_b.payload);

        // As B's own seat: a frame, then a departure. Neither reaches A.
        let before = forged(0);
        forger.publish(to_a("f", &seat_b), frame_message(&signal("MSG", "injected")).into()).await.unwrap();
        forger.publish(to_a("l", &seat_b), "0".into()).await.unwrap();
        forger.flush().await.unwrap();
        until_counted("the forged frame and departure", before + 2, || forged(0)).await;
        send(&mut b, signal("MSG", "real")).await;
        assert_eq!(expect_text(&mut a).await, signal("MSG", "real"), "only B's frame arrives");

        // A real, tagged message of B's, replayed on its subject and spliced onto another:
        // the replay is a duplicate the pair's numbering drops, the splice does not verify.
        let captured = loop {
            let m = tokio::time::timeout(FRAME_WAIT, wire.next()).await.unwrap().unwrap();
            if m.subject.as_str() == to_a("f", &seat_b) {
                break m;
            }
        };
        let before = forged(0);
        forger.publish(captured.subject.clone(), captured.payload.clone()).await.unwrap();
        forger.publish(to_a("l", &seat_b), captured.payload.clone()).await.unwrap();
        forger.flush().await.unwrap();
        until_counted("the spliced message", before + 1, || forged(0)).await;
        send(&mut b, signal("MSG", "after the replay")).await;
        assert_eq!(expect_text(&mut a).await, signal("MSG", "after the replay"), "the replay was not delivered again");

        // A planted slot: the forger writes a waiting seat of its own into a fresh room. The
        // relays do not believe it; two real joiners find each other.
        let planted = room("plant");
        let js = async_nats::jetstream::new(forger.clone());
        let kv = js.get_key_value("ghostwire-rooms").await.unwrap();
        // Where the room's first slot is (the test knows the secret; a forger would have to
        // find a live room's key by watching, which only makes this attack harder).
        let keyer = ghostwire_relay::upstream::room_id::RoomKeyer::for_config(&nats_config(&nats.url())).unwrap();
        let key_a = format!("{}.a", keyer.id(&ghostwire_shared::RoomCode::parse(&planted).unwrap()).hex());
        let mut fake = forger.subscribe(format!("ghostwire.seat.{mine}.>")).await.unwrap();
        let mut plant = mine.as_bytes().to_vec();
        plant.extend_from_slice(&[0u8; 16]);
        kv.put(&key_a, plant.into()).await.unwrap();
        let before = forged(1);
        let (mut d, mut e) = (join(&r[1].url(), &planted).await, join(&r[0].url(), &planted).await);
        tokio::join!(expect_peer_found(&mut d), expect_peer_found(&mut e));
        assert!(forged(1) + forged(0) > before, "the planted slot was counted");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), fake.next()).await.is_err(),
            "a relay asked the planted seat to pair"
        );
    })
    .await;
}

/// What a broker that deletes slots can do, and its bound: it can let a second pair into a
/// room whose slots it deleted (no single arbiter can stop that), and the pair it displaced
/// ends with 4007 at its next slot renewal, a third of `--nats-slot-ttl` (1 s here).
#[tokio::test]
async fn a_pair_whose_slots_the_broker_deleted_ends_at_its_next_renewal() {
    let nats = NatsServer::start();
    within(60, async {
        let r = relays_with(&nats, 2, fast_failures).await;
        let code = room("delete");
        let (mut a, mut b) = pair_via(&r[0].url(), &r[1].url(), &code).await;
        let forger = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(forger.clone());
        let kv = js.get_key_value("ghostwire-rooms").await.unwrap();
        let mut keys = kv.keys().await.unwrap();
        while let Some(Ok(key)) = keys.next().await {
            kv.purge(&key).await.unwrap();
        }
        let (mut c, mut d) = pair_via(&r[0].url(), &r[1].url(), &code).await;
        // Each displaced seat ends: by its own renewal (4007), or by its partner's departure.
        for ws in [&mut a, &mut b] {
            let said = expect_text(ws).await;
            assert!(said.contains("4007") || said.contains("PEER_LEFT"), "{said}");
        }
        send(&mut c, signal("MSG", "the pair that stays")).await;
        assert_eq!(expect_text(&mut d).await, signal("MSG", "the pair that stays"));
    })
    .await;
}

#[tokio::test]
async fn a_relay_whose_nats_is_unreachable_is_not_ready_and_becomes_ready_when_it_appears() {
    let mut nats = NatsServer::reserved();
    within(60, async {
        let relay = TestRelay::start(nats_config(&nats.url())).await;
        let (status, body) = http_get(relay.admin, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains(&nats.url()) || body.contains("NATS"), "{body}");
        let (_, metrics) = http_get(relay.admin, "/metrics").await;
        assert!(metrics.contains("ghostwire_upstream_connected{upstream=\"nats\"} 0"), "{metrics}");
        let mut ws = join(&relay.url(), &room("early")).await;
        expect_error(&mut ws, 4007).await;
        nats.run();
        until_ready(relay.admin, 20).await;
        until_metric(relay.admin, "ghostwire_upstream_connected{upstream=\"nats\"} 1").await;
        let code = room("late");
        pair(&relay.url(), &code).await;
    })
    .await;
}

#[tokio::test]
async fn a_distributed_upstream_refuses_to_start_without_a_cluster_secret() {
    let nats = NatsServer::start();
    let mut config = nats_config(&nats.url());
    config.cluster_secret = None;
    let err = ghostwire_relay::Relay::bind(config, Default::default()).await.err().unwrap().to_string();
    assert!(err.contains("--cluster-secret"), "{err}");
    let mut config = nats_config(&nats.url());
    config.cluster_secret = Some("short".parse().unwrap());
    let err = ghostwire_relay::Relay::bind(config, Default::default()).await.err().unwrap().to_string();
    assert!(err.contains("at least 16"), "{err}");
    // The binary says the same and exits non-zero.
    let out = std::process::Command::new(bin("ghostwire-relay"))
        .args([
            "--upstream",
            "nats",
            "--nats-url",
            &nats.url(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("GHOSTWIRE_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error exits 2, as --help says");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster-secret"));
}

/// Everything the relays publish, as a monitor subscribed to `>` sees it: no room code, in any
/// case, in any subject, header or payload; the frames' payloads themselves pass unchanged.
#[tokio::test]
async fn the_broker_never_sees_a_room_code() {
    let nats = NatsServer::start();
    within(60, async {
        let monitor = async_nats::connect(nats.url()).await.unwrap();
        let mut all = monitor.subscribe(">").await.unwrap();
        monitor.flush().await.unwrap();
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = std::sync::Arc::clone(&captured);
        // How many slot deletes the monitor has seen: the last thing a departure publishes.
        let (deletes_tx, mut deletes) = tokio::sync::watch::channel(0usize);
        let capture = tokio::spawn(async move {
            while let Some(msg) = all.next().await {
                let deleted =
                    msg.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_some_and(|v| v.as_str() == "DEL");
                if deleted {
                    deletes_tx.send_modify(|n| *n += 1);
                }
                let mut c = sink.lock().unwrap();
                c.extend_from_slice(msg.subject.as_bytes());
                c.push(b'\n');
                if let Some(h) = &msg.headers {
                    for (k, vs) in h.iter() {
                        for v in vs {
                            c.extend_from_slice(format!("{k}: {}\n", v.as_str()).as_bytes());
                        }
                    }
                }
                c.extend_from_slice(&msg.payload);
                c.push(b'\n');
            }
        });
        let r = relays(&nats, 2).await;
        let code = room("secret");
        let mut a = join(&r[0].url(), &code).await;
        let mut b = join(&r[1].url(), &code).await;
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        send(&mut a, signal("MSG", "opaque-ciphertext-1")).await;
        assert_eq!(expect_text(&mut b).await, signal("MSG", "opaque-ciphertext-1"));
        a.close(None).await.unwrap();
        expect_peer_left(&mut b).await;
        monitor.flush().await.unwrap();
        // Both slots' deletes are the last things published; wait until the monitor has them.
        let freed = tokio::time::timeout(FRAME_WAIT, deletes.wait_for(|n| *n >= 2)).await;
        assert!(matches!(freed, Ok(Ok(_))), "the monitor never saw both slots freed");
        capture.abort();
        let seen = String::from_utf8_lossy(&captured.lock().unwrap()).into_owned();
        // The capture is real: slot writes, pairing, frames and heartbeats all went through it.
        assert!(seen.contains("$KV.ghostwire-rooms."), "{seen}");
        assert!(seen.contains("opaque-ciphertext-1"), "{seen}");
        assert!(seen.contains("ghostwire.hb."), "{seen}");
        for form in [code.clone(), code.to_lowercase()] {
            assert!(!seen.contains(&form), "room code {form} visible to the broker:\n{seen}");
        }
        // And nothing of it is kept on the broker's disk: the slots' stream is in memory.
        let js = async_nats::jetstream::new(monitor.clone());
        let mut stream = js.get_stream("KV_ghostwire-rooms").await.unwrap();
        let config = &stream.info().await.unwrap().config;
        assert_eq!(config.storage, async_nats::jetstream::stream::StorageType::Memory);
        assert!(config.max_age > Duration::ZERO);
    })
    .await;
}

/// Two `ghostwire` clients on two relays verify each other and chat.
#[tokio::test]
async fn clients_split_over_two_relays_are_told_their_peer_was_lost_when_nats_dies() {
    let mut nats = NatsServer::start();
    within(60, async {
        let r = relays_with(&nats, 2, fast_failures).await;
        // Clients that do not resume (those that do wait for the broker: client_resume).
        let no_resume = ["--resume-window", "0"];
        let (mut a, mut b, _, _) = connected_pair_via(&r[0].url(), &r[1].url(), &room("lost"), &no_resume).await;
        a.say("before the broker died").await;
        assert_eq!(b.heard().await, "before the broker died");
        nats.kill();
        // Nobody left: both are told the connection to the peer was lost, exit 3 (not "left", 0).
        for p in [a, b] {
            let (code, log) = p.exit().await;
            assert_eq!(code, 3, "{log}");
            assert!(log.contains("the connection to your peer was lost"), "{log}");
        }
    })
    .await;
}

#[tokio::test]
async fn two_clients_on_two_relays_chat() {
    let nats = NatsServer::start();
    within(60, async {
        let r = relays(&nats, 2).await;
        let (mut a, mut b, ca, cb) = connected_pair_via(&r[0].url(), &r[1].url(), &room("chat"), &[]).await;
        assert_eq!(ca, cb);
        a.say("hello across relays").await;
        assert_eq!(b.heard().await, "hello across relays");
        b.say("and back").await;
        assert_eq!(a.heard().await, "and back");
        hang_up_and_part(a, b).await;
    })
    .await;
}

/// A relay on `config` gets ready (it authenticated and made its bucket) and serves a room.
async fn serves(config: ghostwire_relay::Config) {
    let relay = TestRelay::start(config).await;
    until_ready(relay.admin, 10).await;
    pair(&relay.url(), &room("auth")).await;
}

/// Waits (bounded) until /readyz fails with a body containing `why`; returns the body.
async fn until_unready_because(admin: std::net::SocketAddr, why: &str) -> String {
    eventually(10, &format!("/readyz saying {why:?}"), || async move {
        match http_get(admin, "/readyz").await {
            (503, body) if body.contains(why) => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await
}

#[tokio::test]
async fn token_and_user_password_authentication() {
    within(60, async {
        let nats = NatsServer::start_with(&["--auth", "the-right-token"]);
        let mut config = nats_config(&nats.url());
        config.nats.token = Some("the-right-token".parse().unwrap());
        serves(config).await;
        // A wrong token: not ready, and /readyz says what NATS said.
        let mut config = nats_config(&nats.url());
        config.nats.token = Some("a-wrong-token".parse().unwrap());
        let relay = TestRelay::start(config).await;
        let body = until_unready_because(relay.admin, "authorization").await;
        assert!(!body.contains("a-wrong-token"), "the token leaked into /readyz: {body}");

        // The token from a file (a mounted secret), trailing newline and all.
        let dir = TempDir::new("token-file");
        let file = dir.0.join("token");
        std::fs::write(&file, "the-right-token\n").unwrap();
        let mut config = nats_config(&nats.url());
        config.nats.token_file = Some(file.clone());
        serves(config).await;
        // A file that cannot be read is a configuration error naming the flag.
        let mut config = nats_config(&nats.url());
        config.nats.token_file = Some(dir.0.join("missing"));
        let err = ghostwire_relay::Relay::bind(config, Default::default()).await.err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("--nats-token-file")), "{err:?}");

        let nats = NatsServer::start_with(&["--user", "relay", "--pass", "the-password"]);
        let mut config = nats_config(&nats.url());
        config.nats.user = Some("relay".into());
        config.nats.password = Some("the-password".parse().unwrap());
        serves(config).await;
        let password = dir.0.join("password");
        std::fs::write(&password, "the-password").unwrap();
        let mut config = nats_config(&nats.url());
        config.nats.user = Some("relay".into());
        config.nats.password_file = Some(password);
        serves(config).await;
    })
    .await;
}

#[tokio::test]
async fn nkey_authentication() {
    let dir = TempDir::new("nkey");
    let user = nkeys::KeyPair::new_user();
    let conf = dir.0.join("nats.conf");
    std::fs::write(&conf, format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n", user.public_key())).unwrap();
    let nats = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);
    within(60, async {
        let mut config = nats_config(&nats.url());
        config.nats.nkey = Some(user.seed().unwrap().parse().unwrap());
        serves(config).await;
        // Without the nkey the server refuses the relay.
        let relay = TestRelay::start(nats_config(&nats.url())).await;
        until_unready_because(relay.admin, "authorization").await;
    })
    .await;
}

#[tokio::test]
async fn tls_to_nats_with_a_private_ca() {
    let dir = TempDir::new("natstls");
    let (ca, cert, key) = test_ca(&dir.0);
    let nats =
        NatsServer::start_with(&["--tls", "--tlscert", cert.to_str().unwrap(), "--tlskey", key.to_str().unwrap()]);
    within(60, async {
        let mut config = nats_config(&nats.url());
        config.nats.ca = Some(ca.clone());
        serves(config).await;
        // The system's roots do not know the test CA: refused, and /readyz says why in rustls's
        // words (async-nats alone says "IO error").
        let relay = TestRelay::start(nats_config(&nats.url())).await;
        let body = until_unready_because(relay.admin, "certificate was refused").await;
        assert!(body.contains("UnknownIssuer") && body.contains("--nats-ca"), "{body}");
        // Nor does another CA given with --nats-ca (the same name, another key: rustls names
        // the bad signature).
        let other = TempDir::new("natstls-other");
        let (other_ca, _, _) = test_ca(&other.0);
        let mut config = nats_config(&nats.url());
        config.nats.ca = Some(other_ca);
        let relay = TestRelay::start(config).await;
        let body = until_unready_because(relay.admin, "certificate was refused").await;
        assert!(body.contains("invalid peer certificate: BadSignature"), "{body}");
    })
    .await;
}

/// A relay reading the cluster secret from a file (a mounted Kubernetes Secret, newline and all)
/// shares rooms with one given it in the environment: same key, same room ids.
#[tokio::test]
async fn the_cluster_secret_can_come_from_a_file() {
    let dir = TempDir::new("secret");
    let file = dir.0.join("cluster-secret");
    std::fs::write(&file, format!("{CLUSTER_SECRET}\n")).unwrap();
    let nats = NatsServer::start();
    within(60, async {
        let mut from_file = nats_config(&nats.url());
        from_file.cluster_secret = None;
        from_file.cluster_secret_file = Some(file.clone());
        let (a, b) = (TestRelay::start(from_file).await, TestRelay::start(nats_config(&nats.url())).await);
        until_ready(a.admin, 10).await;
        until_ready(b.admin, 10).await;
        room_contract(&a.url(), &b.url()).await;
        // A file that cannot be read stops the relay at start, naming the flag.
        let mut missing = nats_config(&nats.url());
        missing.cluster_secret = None;
        missing.cluster_secret_file = Some(dir.0.join("absent"));
        let err = ghostwire_relay::Relay::bind(missing, Default::default()).await.err().unwrap().to_string();
        assert!(err.contains("--cluster-secret-file"), "{err}");
    })
    .await;
}

/// A wrong token is refused at every reconnect attempt, about every 0.8 s, forever: the relay
/// says so once (WARN, with NATS's words), not once per attempt, and never shows the token.
#[tokio::test]
async fn a_refused_credential_is_logged_once_however_often_it_is_retried() {
    within(60, async {
        let nats = NatsServer::start_with(&["--auth", "the-right-token"]);
        let url = nats.url();
        let lines = tokio::task::spawn_blocking(move || {
            let mut relay = RelayProc::start(
                &["--upstream", "nats", "--nats-url", &url, "--nats-token", "a-wrong-token"],
                &[
                    ("GHOSTWIRE_CLUSTER_SECRET", CLUSTER_SECRET),
                    // Each attempt shows at DEBUG: the event this test counts.
                    ("GHOSTWIRE_LOG", "info,ghostwire_relay::upstream::nats=debug"),
                ],
            );
            relay.lines_until("NATS connection attempt failed", 4)
        })
        .await
        .unwrap();
        let loud: Vec<&String> = lines
            .iter()
            .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains("authorization"))
            .collect();
        assert_eq!(loud.len(), 1, "4 attempts, one WARN: {lines:#?}");
        assert!(loud[0].contains("authorization violation"), "{}", loud[0]);
        assert!(lines.iter().all(|l| !l.contains("a-wrong-token")), "the token was logged: {lines:#?}");
    })
    .await;
}
