//! A hostile relay, written here, between two real `ghostwire` clients: each attack the
//! documentation says the client resists is performed, and the client must end the session
//! with the right reason and exit code.

#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use ghostwire::crypto::{commitment, Channel, KeyPair, Version};
use ghostwire_tests::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A destination in a rule's answer that drops both connections at once (no close frame).
const CUT: usize = usize::MAX;

/// Decides what becomes of a frame from client `from` (0 or 1): a list of (to, text) to send
/// (to [`CUT`]: drop both sockets instead).
type Rule = Box<dyn FnMut(usize, &str) -> Vec<(usize, String)> + Send>;

/// Accepts two clients, answers their JOINs with PEER_FOUND (or lets `before_found` speak first),
/// then routes every frame through `rule`, and drops both as soon as one leaves. Returns the URL.
async fn hostile(rule: Rule, before_found: Option<String>) -> String {
    hostile_with(rule, before_found, false).await
}

/// Like [`hostile`]; with `graceful`, when one client leaves the other is told PEER_LEFT and
/// served until it leaves too, as a relay does (so what was already sent to it arrives).
async fn hostile_with(mut rule: Rule, before_found: Option<String>, graceful: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut socks = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let join = ws.next().await.unwrap().unwrap();
            assert!(join.to_text().unwrap().contains("JOIN"));
            if let Some(early) = &before_found {
                ws.send(Message::text(early.clone())).await.unwrap();
            }
            socks.push(ws);
        }
        for ws in &mut socks {
            ws.send(Message::text(r#"{"type":"PEER_FOUND"}"#)).await.unwrap();
        }
        let (mut s1, mut s0) = (socks.pop().unwrap(), socks.pop().unwrap());
        let mut open = [true, true];
        while open[0] || open[1] {
            let (from, msg) = tokio::select! {
                m = s0.next(), if open[0] => (0, m),
                m = s1.next(), if open[1] => (1, m),
            };
            let Some(Ok(Message::Text(text))) = msg else {
                if !graceful {
                    break;
                }
                open[from] = false;
                let other = if from == 0 { &mut s1 } else { &mut s0 };
                let _ = other.send(Message::text(r#"{"type":"PEER_LEFT"}"#)).await;
                continue;
            };
            let out = rule(from, text.as_str());
            if out.iter().any(|(to, _)| *to == CUT) {
                break;
            }
            for (to, out) in out {
                if !open[to] {
                    continue;
                }
                let sock = if to == 0 { &mut s0 } else { &mut s1 };
                let _ = sock.send(Message::text(out)).await;
            }
        }
    });
    url
}

fn kind(frame: &str) -> String {
    serde_json::from_str::<Value>(frame).unwrap()["kind"].as_str().unwrap_or("").to_owned()
}

fn forward(from: usize, f: &str) -> Vec<(usize, String)> {
    vec![(1 - from, f.to_owned())]
}

/// Two clients through the relay at `url`, A first: A is the relay's client 0, B its client 1.
async fn two_through(url: &str) -> (Peer, Peer) {
    let mut a = Peer::start(&["--relay", url, "ROOM0001"]);
    // Wait until the relay has A before starting B, so the order is known.
    a.status("searching").await;
    let b = Peer::start(&["--relay", url, "ROOM0001"]);
    (a, b)
}

/// Runs two clients through `rule`; A (client 0) sends `lines`; returns how B (client 1) ended:
/// its `session destroyed` line and exit code.
async fn attack(rule: Rule, lines: &[&str]) -> (String, i32) {
    let (mut a, mut b) = two_through(&hostile(rule, None).await).await;
    a.code().await;
    for l in lines {
        a.say(l).await;
    }
    let line = b.status("session destroyed").await;
    let (code, _) = b.exit().await;
    (line, code)
}

/// A rule that lets the key exchange through and applies `f` to A's MSG frames, numbered from 0.
fn on_msgs(mut f: impl FnMut(usize, String) -> Vec<(usize, String)> + Send + 'static) -> Rule {
    let mut n = 0;
    Box::new(move |from, frame| {
        if from == 0 && kind(frame) == "MSG" {
            n += 1;
            f(n - 1, frame.to_owned())
        } else {
            forward(from, frame)
        }
    })
}

#[tokio::test]
async fn reflected_message_is_detected() {
    within(60, async {
        // A's first message goes back to A instead of to B.
        let (mut a, _b) =
            two_through(&hostile(on_msgs(|i, f| if i == 0 { vec![(0, f)] } else { vec![(1, f)] }), None).await).await;
        a.code().await;
        a.say("echo?").await;
        let line = a.status("session destroyed").await;
        assert!(line.contains("reflected"), "{line}");
        assert_eq!(a.exit().await.0, 5);
    })
    .await;
}

#[tokio::test]
async fn replayed_message_is_detected() {
    within(60, async {
        let (line, code) = attack(on_msgs(|_, f| vec![(1, f.clone()), (1, f)]), &["once"]).await;
        assert!(line.contains("replayed"), "{line}");
        assert_eq!(code, 5);
    })
    .await;
}

#[tokio::test]
async fn reordered_messages_are_detected() {
    within(60, async {
        let mut held = None;
        let rule = on_msgs(move |i, f| match i {
            0 => {
                held = Some(f);
                vec![]
            }
            1 => vec![(1, f), (1, held.take().unwrap())],
            _ => vec![(1, f)],
        });
        let (line, code) = attack(rule, &["first", "second"]).await;
        assert!(line.contains("missing or out of order"), "{line}");
        assert_eq!(code, 5);
    })
    .await;
}

#[tokio::test]
async fn dropped_message_is_detected() {
    within(60, async {
        let rule = on_msgs(|i, f| if i == 0 { vec![] } else { vec![(1, f)] });
        let (line, code) = attack(rule, &["lost", "next"]).await;
        assert!(line.contains("missing or out of order"), "{line}");
        assert_eq!(code, 5);
    })
    .await;
}

#[tokio::test]
async fn tampered_message_is_detected() {
    within(60, async {
        let rule = on_msgs(|_, f| {
            let mut v: Value = serde_json::from_str(&f).unwrap();
            let mut payload = B64.decode(v["payload"].as_str().unwrap()).unwrap();
            payload[40] ^= 0x01; // one bit of ciphertext
            v["payload"] = json!(B64.encode(payload));
            vec![(1, v.to_string())]
        });
        let (line, code) = attack(rule, &["untouchable"]).await;
        assert!(line.contains("failed authentication"), "{line}");
        assert_eq!(code, 5);
    })
    .await;
}

#[tokio::test]
async fn bad_base64_and_unknown_kinds_are_protocol_violations() {
    within(60, async {
        let rule = on_msgs(|_, _| vec![(1, r#"{"type":"SIGNAL","kind":"MSG","payload":"%%%not base64"}"#.into())]);
        let (line, code) = attack(rule, &["x"]).await;
        assert!(line.contains("base64"), "{line}");
        assert_eq!(code, 4);
        let rule = on_msgs(|_, _| vec![(1, r#"{"type":"SIGNAL","kind":"FILE_CHUNK","data":"AAAA"}"#.into())]);
        let (line, code) = attack(rule, &["x"]).await;
        assert!(line.contains("unknown message kind"), "{line}");
        assert_eq!(code, 4);
    })
    .await;
}

#[tokio::test]
async fn signal_before_peer_found_is_a_protocol_violation() {
    within(60, async {
        let early = r#"{"type":"SIGNAL","kind":"MSG","payload":"AAAA"}"#.to_owned();
        let url = hostile(Box::new(forward), Some(early)).await;
        let mut a = Peer::start(&["--relay", &url, "ROOM0001"]);
        let line = a.status("session destroyed").await;
        assert!(line.contains("unexpected PeerRecord in state SEARCHING"), "{line}");
        assert_eq!(a.exit().await.0, 4);
    })
    .await;
}

/// Replaces A's commitment and key with `key` (and a commitment that matches it).
fn substitute_key(key: Vec<u8>) -> Rule {
    Box::new(move |from, frame| {
        if from == 0 && kind(frame) == "KEY_COMMIT" {
            let c = commitment(&key.clone().try_into().unwrap_or([9u8; 32]));
            return vec![(1, json!({"type":"SIGNAL","kind":"KEY_COMMIT","v":2,"commit":B64.encode(c)}).to_string())];
        }
        if from == 0 && kind(frame) == "KEY_EXCHANGE" {
            return vec![(1, json!({"type":"SIGNAL","kind":"KEY_EXCHANGE","v":2,"key":B64.encode(&key)}).to_string())];
        }
        forward(from, frame)
    })
}

#[tokio::test]
async fn garbage_keys_are_refused() {
    within(60, async {
        let (line, code) = attack(substitute_key(vec![1, 2, 3]), &[]).await;
        assert!(line.contains("not 32 bytes"), "{line}");
        assert_eq!(code, 4);
        let (line, code) = attack(substitute_key(vec![0; 32]), &[]).await;
        assert!(line.contains("weak"), "{line}");
        assert_eq!(code, 5);
        let mut order8 = vec![0u8; 32];
        order8[0] = 1; // the point u = 1 has order 1
        let (line, code) = attack(substitute_key(order8), &[]).await;
        assert!(line.contains("weak"), "{line}");
        assert_eq!(code, 5);
    })
    .await;
}

#[tokio::test]
async fn reflected_key_exchange_is_refused() {
    within(60, async {
        // A's commitment and key are sent back to A as if they were B's.
        let rule: Rule = Box::new(|from, frame| match (from, kind(frame).as_str()) {
            (0, "KEY_COMMIT" | "KEY_EXCHANGE") => vec![(0, frame.to_owned())],
            (1, "KEY_COMMIT" | "KEY_EXCHANGE") => vec![],
            _ => forward(from, frame),
        });
        let (mut a, _b) = two_through(&hostile(rule, None).await).await;
        let line = a.status("session destroyed").await;
        assert!(line.contains("our own key"), "{line}");
        assert_eq!(a.exit().await.0, 5);
    })
    .await;
}

#[tokio::test]
async fn naive_key_substitution_breaks_the_commitment() {
    within(60, async {
        // The relay swaps A's revealed key for its own but cannot change the commitment A sent first.
        let mitm = KeyPair::generate();
        let fake = *mitm.public();
        let rule: Rule = Box::new(move |from, frame| {
            if from == 0 && kind(frame) == "KEY_EXCHANGE" {
                return vec![(
                    1,
                    json!({"type":"SIGNAL","kind":"KEY_EXCHANGE","v":2,"key":B64.encode(fake)}).to_string(),
                )];
            }
            forward(from, frame)
        });
        let (line, code) = attack(rule, &[]).await;
        assert!(line.contains("does not match its commitment"), "{line}");
        assert_eq!(code, 5);
    })
    .await;
}

/// A relay in the middle that runs an honest-looking key exchange with each side on its own keys.
/// Returns the rule and, through `flood_b`, optionally floods B with valid messages once keyed.
fn man_in_the_middle(flood_b: usize) -> Rule {
    let keys = [KeyPair::generate(), KeyPair::generate()];
    let mut channels: [Option<Channel>; 2] = [None, None];
    Box::new(move |from, frame| {
        let v: Value = serde_json::from_str(frame).unwrap();
        let me = &keys[from];
        match v["kind"].as_str() {
            Some("KEY_COMMIT") => {
                vec![(
                    from,
                    json!({"type":"SIGNAL","kind":"KEY_COMMIT","v":2,"commit":B64.encode(me.commitment())}).to_string(),
                )]
            }
            Some("KEY_EXCHANGE") => {
                let theirs: [u8; 32] = B64.decode(v["key"].as_str().unwrap()).unwrap().try_into().unwrap();
                let mut chan = Channel::new(me.agree(&theirs).unwrap(), Version::Hardened2, me.public(), &theirs);
                let mut out = vec![(
                    from,
                    json!({"type":"SIGNAL","kind":"KEY_EXCHANGE","v":2,"key":B64.encode(me.public())}).to_string(),
                )];
                if from == 1 {
                    for i in 0..flood_b {
                        let sealed = chan.seal(&format!("flood {i}"));
                        out.push((1, json!({"type":"SIGNAL","kind":"MSG","payload":B64.encode(sealed)}).to_string()));
                    }
                }
                channels[from] = Some(chan);
                out
            }
            _ => vec![],
        }
    })
}

#[tokio::test]
async fn a_relay_in_the_middle_gets_different_verification_codes() {
    within(60, async {
        let (mut a, mut b) = two_through(&hostile(man_in_the_middle(0), None).await).await;
        let (ca, cb) = (a.code().await, b.code().await);
        assert_ne!(ca, cb, "a man in the middle must not be able to make the codes match");
        // (The users compare, see the difference and type /mismatch: client_terminal.rs.)
        a.interrupt();
        assert_eq!(a.exit().await.0, 0);
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_valid_messages_is_a_violation() {
    within(60, async {
        // 1000 at once: beyond the receiver's burst of 600 (proto::RECV_RATE).
        let (a, mut b) = two_through(&hostile(man_in_the_middle(1000), None).await).await;
        let line = b.status("session destroyed").await;
        assert!(line.contains("flood"), "{line}");
        assert_eq!(b.exit().await.0, 4);
        drop(a);
    })
    .await;
}

/// With a code that has a secret part, the same full key substitution is caught with nothing to
/// compare: the relay can forward the PAKE messages and MACs but cannot make them match its
/// keys. Both clients end with "verification failed" (exit 5) before any message is sent: the
/// relay, holding a key with each, never sees a MSG.
#[tokio::test]
async fn a_relay_in_the_middle_is_caught_by_the_codes_secret() {
    within(60, async {
        let msgs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut substitute = man_in_the_middle(0);
        let seen = std::sync::Arc::clone(&msgs);
        let rule: Rule = Box::new(move |from, frame| match kind(frame).as_str() {
            "PAKE" | "KEY_CONFIRM" => forward(from, frame),
            "MSG" => {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                vec![]
            }
            _ => substitute(from, frame),
        });
        let url = hostile_with(rule, None, true).await;
        let start = |url: &str| Peer::with_code("ROOM0001-tulip-cider-lunar", &["--relay", url]);
        let mut a = start(&url);
        a.status("searching").await;
        let mut b = start(&url);
        a.say("a secret the relay must not read").await;
        b.say("nor this").await;
        for p in [a, b] {
            let (code, log) = p.exit().await;
            assert_eq!(code, 5, "{log}");
            assert!(log.contains("verification failed: wrong code or a relay in the middle"), "{log}");
        }
        assert_eq!(msgs.load(std::sync::atomic::Ordering::SeqCst), 0, "no message reached the relay");
    })
    .await;
}

/// A relay in the middle that has received A's key-confirmation MAC (all it needs to test a
/// guess of the code offline) and then ends A's session in a way that reads as harmless: going
/// away (1001), a lost peer (4011), or a dropped connection. Each must still burn the code:
/// "verification failed", exit 5, never "run ghostwire again".
#[tokio::test]
async fn a_relay_that_leaves_after_taking_the_mac_cannot_dodge_the_burn() {
    within(60, async {
        let error = |code: u16| format!(r#"{{"type":"ERROR","code":{code},"reason":"maintenance"}}"#);
        let endings: [(&str, Option<String>); 3] =
            [("going away", Some(error(1001))), ("peer lost", Some(error(4011))), ("cut", None)];
        for (what, frame) in endings {
            let rule: Rule = Box::new(move |from, f| match (from, kind(f).as_str(), &frame) {
                (0, "KEY_CONFIRM", Some(frame)) => vec![(0, frame.clone())],
                (0, "KEY_CONFIRM", None) => vec![(CUT, String::new())],
                (1, "KEY_CONFIRM", _) => vec![],
                _ => forward(from, f),
            });
            let url = hostile(rule, None).await;
            let start = |url: &str| Peer::with_code("ROOM0001-tulip-cider-lunar", &["--relay", url]);
            let mut a = start(&url);
            a.status("searching").await;
            let _b = start(&url);
            let (code, log) = a.exit().await;
            assert_eq!(code, 5, "{what}: {log}");
            assert!(log.contains("verification failed") && log.contains("burnt"), "{what}: {log}");
            assert!(!log.contains("run ghostwire again"), "{what}: {log}");
        }
    })
    .await;
}

/// Every hostile character class a relay or peer can put in text this client prints.
const HOSTILE_TEXT: &str =
    "\u{1b}]52;c;cHduZWQ=\u{7}\u{1b}[2J\u{1b}]0;title\u{7}\u{9b}31m\u{202e}exe.txt\u{2066}\u{200b}\u{2028}\u{feff}\r";

/// Whether `text` still holds a character from [`HOSTILE_TEXT`] that must not reach a terminal.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| {
            (c.is_control() && *c != '\n' && *c != '\t')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200b}'..='\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
        })
        .collect()
}

/// A relay that answers the JOIN with `reply` and then waits for the client to go.
async fn one_reply(reply: Message) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let _join = ws.next().await;
        let _ = ws.send(reply).await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    url
}

/// Each path by which text from the network is printed, fed every hostile class: an unknown
/// frame type (quoted in a decoding error), an ERROR reason, a close reason, and a peer's
/// message. Nothing raw reaches stderr or stdout; the replacement character shows where.
#[tokio::test]
async fn nothing_from_the_network_reaches_the_terminal_raw() {
    within(60, async {
        use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
        let unknown_type = json!({ "type": HOSTILE_TEXT }).to_string();
        let error_reason = json!({"type": "ERROR", "code": 4999, "reason": HOSTILE_TEXT}).to_string();
        let close = CloseFrame { code: CloseCode::from(4998), reason: HOSTILE_TEXT.into() };
        for reply in [Message::text(unknown_type), Message::text(error_reason), Message::Close(Some(close))] {
            let url = one_reply(reply.clone()).await;
            let (code, log) = Peer::start(&["--relay", &url, "ROOM0001"]).exit().await;
            assert_ne!(code, 0, "{log}");
            assert!(raw_controls(&log).is_empty(), "raw {:?} in {log:?}", raw_controls(&log));
            assert!(log.contains('\u{fffd}'), "the hostile text was shown, replaced: {log:?}");
        }
        // A peer's message, to a piped peer (stdout) and in its status lines.
        let relay = TestRelay::with(|_| {}).await;
        let (mut a, mut b, _, _) = connected_pair(&relay.url(), &room("ctl"), &[]).await;
        a.say(&format!("hello {}", HOSTILE_TEXT.replace(['\r'], ""))).await;
        let heard = b.heard().await;
        assert!(heard.starts_with("hello "), "{heard:?}");
        assert!(raw_controls(&heard).is_empty(), "raw {:?} in {heard:?}", raw_controls(&heard));
        hang_up_and_part(a, b).await;
    })
    .await;
}

/// A relay that accepts the TCP connection and never answers: the client gives up after
/// --connect-timeout with a sentence that says so (exit 3), instead of hanging.
#[tokio::test]
async fn a_silent_relay_is_given_up_after_the_connect_timeout() {
    within(30, async {
        let (url, held) = silent_relay().await;
        let (code, log) = Peer::start(&["--relay", &url, "--connect-timeout", "1s", "ROOM0001"]).exit().await;
        assert_eq!(code, 3, "{log}");
        assert!(log.contains("did not answer within 1s (--connect-timeout)"), "{log}");
        // A bad value names the flag.
        let (code, log) = Peer::start(&["--relay", &url, "--connect-timeout", "0s", "ROOM0001"]).exit().await;
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("--connect-timeout"), "{log}");
        held.abort();
    })
    .await;
}

/// A relay that swallows every receipt (every MSG from B) cannot make A believe its lines
/// arrived: when the session ends, A names each line as not confirmed, and does not exit 0,
/// although B did get them (A cannot know that, and says so rather than guess).
#[tokio::test]
async fn lines_whose_receipts_were_swallowed_are_named_as_not_confirmed() {
    within(60, async {
        let rule: Rule = Box::new(|from, frame| match (from, kind(frame).as_str()) {
            (1, "MSG") => vec![],
            _ => forward(from, frame),
        });
        let url = hostile_with(rule, None, true).await;
        // A resumes for 2 s after B's silent departure, then ends and names what is unconfirmed.
        let mut a = Peer::start(&["--relay", &url, "ROOM0001", "--resume-window", "2s"]);
        a.status("searching").await;
        let mut b = Peer::start(&["--relay", &url, "ROOM0001"]);
        a.code().await;
        a.say("first line").await;
        a.say("second line").await;
        assert_eq!(b.heard().await, "first line");
        assert_eq!(b.heard().await, "second line");
        // B quits (its receipts and its goodbye are swallowed too); A hears PEER_LEFT.
        b.interrupt();
        let (status, log) = a.exit().await;
        assert!(log.contains("not confirmed as delivered: first line"), "{log}");
        assert!(log.contains("not confirmed as delivered: second line"), "{log}");
        assert!(log.contains("2 lines were not confirmed as delivered"), "{log}");
        assert!(log.contains("did not come back within 2s (--resume-window)"), "{log}");
        assert_ne!(status, 0, "{log}");
    })
    .await;
}
