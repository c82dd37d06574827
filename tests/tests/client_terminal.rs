//! The client in a real pseudo-terminal, the way people use it: pastes with and without
//! bracketed paste, two lines in one write, `TERM=dumb`, and Ctrl-C / Ctrl-D in every state,
//! with a shell after it to show that nothing typed reaches the next program.

#![allow(clippy::unwrap_used)]

use expectrl::Expect;
use futures_util::{SinkExt, StreamExt};
use ghostwire_tests::*;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// `ghostwire ARGS` in a pseudo-terminal with `TERM=term`, run by `sh`, which after the client
/// exits prints its exit code and then one line it reads from the same terminal.
fn terminal(term: &str, args: &[&str]) -> expectrl::session::OsSession {
    let client = std::iter::once(bin("ghostwire").display().to_string())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    // Like an interactive shell, the wrapper survives a Ctrl-C meant for the client (a trap, not
    // an ignore: the client must not inherit SIGINT ignored).
    let script = format!("trap true INT; {client}; echo \"EXITED=$?\"; read -r next; echo \"NEXT=[$next]\"");
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script]).env("NO_COLOR", "1").env("TERM", term).env_remove("GHOSTWIRE_RELAY");
    let mut session = expectrl::Session::spawn(cmd).unwrap();
    session.set_expect_timeout(Some(TERMINAL_WAIT));
    session
}

/// How long the terminal side, and the peer waiting for it, wait for the next thing to show: as
/// long as a loaded CI machine may take to start a client and pair it (the peer's own
/// [`FRAME_WAIT`] is for the frames after that).
const TERMINAL_WAIT: Duration = Duration::from_secs(30);

/// Waits for `what` on the terminal; if it does not come, fails showing what the terminal did show.
fn saw(term: &mut expectrl::session::OsSession, what: &str) {
    if let Err(e) = term.expect(what) {
        term.set_expect_timeout(Some(Duration::from_millis(200)));
        let shown = term.expect(expectrl::Regex("(?s).+")).map(|c| String::from_utf8_lossy(c.as_bytes()).into_owned());
        panic!("{what:?} not shown ({e}); the terminal showed after the last match: {shown:?}");
    }
}

/// After the client ended: its exit code was `code`, and the next program reads only what is
/// typed from now on.
fn ends_cleanly(term: &mut expectrl::session::OsSession, code: i32) {
    saw(term, &format!("EXITED={code}"));
    term.send_line("typed after").unwrap();
    saw(term, "NEXT=[typed after]");
}

/// Runs a blocking terminal script on its own thread, bounded.
async fn in_terminal<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(Duration::from_secs(90), tokio::task::spawn_blocking(f)).await.unwrap().unwrap()
}

/// Reads (and drops) what the client writes to the terminal until `stop` is set, as a terminal
/// does all along: a terminal that stops reading stalls the program writing to it.
fn drain_until(term: &mut expectrl::session::OsSession, stop: &std::sync::atomic::AtomicBool) {
    term.set_expect_timeout(Some(Duration::from_millis(50)));
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = term.expect(expectrl::Regex("(?s).+"));
    }
    term.set_expect_timeout(Some(TERMINAL_WAIT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_lines_pasted_without_bracketed_paste_all_arrive_in_order() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    within(120, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("paste");
        let mut peer = Peer::start(&["--relay", &relay.url(), &code]);
        let url = relay.url();
        let typed = code.clone();
        let lines: Vec<String> = (1..=300).map(|i| format!("pasted line {i}")).collect();
        let paste: String = lines.iter().map(|l| format!("{l}\r")).collect();
        let (heard_all, heard_more) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (all, more) = (heard_all.clone(), heard_more.clone());
        let term = tokio::task::spawn_blocking(move || {
            let mut term = terminal("xterm", &["--relay", &url, &typed]);
            saw(&mut term, "verification code");
            // One write, as a terminal without bracketed paste delivers a paste; then two lines
            // in one write, as a fast typist's burst arrives.
            term.send(&paste).unwrap();
            term.send("burst one\rburst two\r").unwrap();
            drain_until(&mut term, &all);
            // A bracketed paste of several lines: one message per line, no U+FFFD in them.
            term.send("\x1b[200~alpha\nbeta\ngamma\x1b[201~\r").unwrap();
            drain_until(&mut term, &more);
            term.send("/quit\r").unwrap();
            // Quitting at once, the receipt of the last lines may not be in yet: said, and still 0.
            saw(&mut term, "session destroyed: you ended the session");
            saw(&mut term, "(exit 0)");
            ends_cleanly(&mut term, 0);
        });
        peer.status_within("verification code: ", TERMINAL_WAIT).await;
        for want in lines.iter().map(String::as_str).chain(["burst one", "burst two"]) {
            assert_eq!(peer.heard().await, want);
        }
        heard_all.store(true, Ordering::SeqCst);
        for want in ["alpha", "beta", "gamma"] {
            assert_eq!(peer.heard().await, want);
        }
        heard_more.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(60), term).await.unwrap().unwrap();
        peer.status("your peer left").await;
        assert_eq!(peer.exit().await.0, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_dumb_falls_back_to_plain_line_input_and_chats() {
    within(90, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("dumb");
        let url = relay.url();
        let typed = code.clone();
        let (to_term, from_test) = std::sync::mpsc::channel::<()>();
        let term = tokio::task::spawn_blocking(move || {
            let mut term = terminal("dumb", &["--relay", &url]);
            saw(&mut term, "plain line input");
            saw(&mut term, "room code: ");
            term.send_line(&typed).unwrap();
            saw(&mut term, "verification code");
            term.send_line("hello from a dumb terminal").unwrap();
            from_test.recv_timeout(Duration::from_secs(30)).unwrap();
            saw(&mut term, "peer: and hello back");
            term.send_line("//slash text").unwrap();
            // Ctrl-D at the start of a line: end of input at a terminal is leaving.
            term.send("\x04").unwrap();
            saw(&mut term, "session destroyed: you ended the session");
            saw(&mut term, "(exit 0)");
            ends_cleanly(&mut term, 0);
        });
        let mut peer = Peer::start(&["--relay", &relay.url(), &code]);
        peer.status_within("verification code: ", TERMINAL_WAIT).await;
        assert_eq!(peer.heard().await, "hello from a dumb terminal");
        peer.say("and hello back").await;
        to_term.send(()).unwrap();
        assert_eq!(peer.heard().await, "/slash text");
        peer.status("your peer left").await;
        tokio::time::timeout(Duration::from_secs(60), term).await.unwrap().unwrap();
    })
    .await;
}

/// A relay that pairs the client with nobody: PEER_FOUND, then silence (the key exchange hangs).
async fn pairing_relay() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let _join = ws.next().await;
            ws.send(Message::text(r#"{"type":"PEER_FOUND"}"#)).await.unwrap();
            held.push(ws);
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_and_ctrl_d_end_the_client_in_every_state() {
    within(240, async {
        let relay = TestRelay::with(|_| {}).await;
        let (silent, _s) = silent_relay().await;
        let (pairing, _p) = pairing_relay().await;
        for (key, name) in [("\x03", "Ctrl-C"), ("\x04", "Ctrl-D")] {
            // (state, relay, code or none, what shows the state is reached)
            let states = [
                ("room prompt", relay.url(), None, "room code: "),
                ("connecting", silent.clone(), Some(room("conn")), "connecting to"),
                ("waiting", relay.url(), Some(room("wait")), "searching"),
                ("key exchange", pairing.clone(), Some(room("keys")), "exchanging keys"),
                ("connected", relay.url(), Some(room("conn2")), "verification code"),
            ];
            for (state, url, code, marker) in states {
                let peer =
                    (state == "connected").then(|| Peer::start(&["--relay", &relay.url(), code.as_deref().unwrap()]));
                let result = in_terminal(move || {
                    let mut args = vec!["--relay".to_owned(), url];
                    args.extend(code);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let mut term = terminal("xterm", &args);
                    term.expect(marker).unwrap();
                    if state != "room prompt" {
                        // The editor redraws its prompt below the status line once it reads keys.
                        saw(&mut term, "> ");
                    }
                    term.send(key).unwrap();
                    // At the prompt no session began: nothing was destroyed, and it says so.
                    let ended = if state == "room prompt" {
                        "ended before any session began: you ended it (exit 0)"
                    } else {
                        "session destroyed: you ended the session (exit 0)"
                    };
                    let said = term.expect(ended).map(|_| ());
                    if said.is_ok() {
                        ends_cleanly(&mut term, 0);
                    }
                    said
                })
                .await;
                assert!(result.is_ok(), "{name} in {state}: {result:?}");
                if let Some(mut peer) = peer {
                    peer.status("your peer left").await;
                    assert_eq!(peer.exit().await.0, 0);
                }
            }
        }
    })
    .await;
}

/// A bracketed paste of several lines is data, every line of it: a pasted `/quit` or
/// `/mismatch` is sent, not obeyed, and the session goes on. Typed, the same `/mismatch` is a
/// command: both sides end as a security failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_command_is_data_and_a_typed_one_is_a_command() {
    within(120, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("bpaste");
        let mut peer = Peer::start(&["--relay", &relay.url(), &code]);
        let (url, typed) = (relay.url(), code.clone());
        let (pasted_tx, pasted_rx) = std::sync::mpsc::channel::<()>();
        let terminal_side = tokio::task::spawn_blocking(move || {
            let mut term = terminal("xterm", &["--relay", &url, &typed]);
            saw(&mut term, "verification code");
            saw(&mut term, "> ");
            // What a terminal sends for a bracketed paste of four lines.
            term.send("\x1b[200~first\r/quit\r/mismatch\rlast\x1b[201~").unwrap();
            term.send("\r").unwrap();
            pasted_rx.recv_timeout(TERMINAL_WAIT).unwrap();
            term.send_line("/mismatch").unwrap();
            saw(&mut term, "the verification codes differ");
            ends_cleanly(&mut term, 5);
        });
        for line in ["first", "/quit", "/mismatch", "last"] {
            assert_eq!(peer.heard().await, line);
        }
        pasted_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(90), terminal_side).await.unwrap().unwrap();
        let (status, log) = peer.exit().await;
        assert_eq!(status, 5, "{log}");
        assert!(log.contains("your peer reported that the verification codes differ"), "{log}");
    })
    .await;
}

/// `TERM=dumb`: a message that arrives while a line is half typed is printed over it and the
/// half-typed text echoed again below, never onto it; the line is then sent whole, Backspace
/// included. A line still half typed when the session ends is reported as not sent (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_dumb_keeps_a_half_typed_line_apart_from_incoming_ones() {
    within(90, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("dumbtype");
        let (url, typed) = (relay.url(), code.clone());
        let (to_term, from_test) = std::sync::mpsc::channel::<()>();
        let (to_test, mut from_term) = tokio::sync::mpsc::unbounded_channel::<()>();
        let term = tokio::task::spawn_blocking(move || {
            let mut term = terminal("dumb", &["--relay", &url, &typed]);
            saw(&mut term, "verification code");
            term.send("half typedX\x7f").unwrap();
            saw(&mut term, "half typedX\x08 \x08");
            to_test.send(()).unwrap();
            from_test.recv_timeout(TERMINAL_WAIT).unwrap();
            // Over the half-typed line, then that line again, intact, below it.
            saw(&mut term, "\rpeer: incoming while typing\r\nhalf typed");
            term.send(" continued\r").unwrap();
            from_test.recv_timeout(TERMINAL_WAIT).unwrap();
            term.send("left behind").unwrap();
            saw(&mut term, "left behind");
            to_test.send(()).unwrap();
            saw(&mut term, "not sent: left behind");
            saw(&mut term, "session destroyed: your peer left; 1 line was not sent (exit 1)");
            ends_cleanly(&mut term, 1);
        });
        let mut next = async || tokio::time::timeout(TERMINAL_WAIT, from_term.recv()).await.unwrap().unwrap();
        let mut peer = Peer::start(&["--relay", &relay.url(), &code]);
        next().await;
        peer.say("incoming while typing").await;
        to_term.send(()).unwrap();
        assert_eq!(peer.heard().await, "half typed continued");
        to_term.send(()).unwrap();
        next().await;
        // The peer is interrupted (Ctrl-C) while this side has a line half typed.
        peer.interrupt();
        tokio::time::timeout(Duration::from_secs(60), term).await.unwrap().unwrap();
    })
    .await;
}

/// In the editor, Ctrl-D inside a line deletes (as in every readline); Ctrl-D at the end of a
/// line with text, or Ctrl-C with text, ends the session and the text is reported as not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_d_or_ctrl_c_with_text_typed_ends_and_reports_the_text_unsent() {
    within(120, async {
        let relay = TestRelay::with(|_| {}).await;
        for (key, name) in [("\x04", "Ctrl-D"), ("\x03", "Ctrl-C")] {
            let code = room("withtext");
            let mut peer = Peer::start(&["--relay", &relay.url(), &code]);
            let (url, typed) = (relay.url(), code.clone());
            let term = tokio::spawn(in_terminal(move || {
                let mut term = terminal("xterm", &["--relay", &url, &typed]);
                saw(&mut term, "verification code");
                saw(&mut term, "> ");
                // Three to the left, then Ctrl-D: the character under the cursor goes.
                term.send("abcdef\x1b[D\x1b[D\x1b[D\x04\r").unwrap();
                term.send("typed, then leaving").unwrap();
                saw(&mut term, "typed, then leaving");
                term.send(key).unwrap();
                saw(&mut term, "not sent (you left before pressing Enter): typed, then leaving");
                saw(&mut term, "session destroyed: you ended the session; 1 line was not sent");
                saw(&mut term, "(exit 1)");
                ends_cleanly(&mut term, 1);
            }));
            assert_eq!(peer.heard().await, "abcef", "{name}");
            term.await.unwrap();
            peer.status("your peer left").await;
            assert_eq!(peer.exit().await.0, 0, "{name}");
        }
    })
    .await;
}

/// Type-ahead beyond the queue: 1,100 lines pasted while still searching (the queue holds
/// 1,000, so the client stops reading and the editor holds the rest), then the peer arrives and
/// several status lines are shown at once while the editor hands over what it held. Every line
/// arrives, in order, and the client still answers /quit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paste_beyond_the_queue_while_searching_does_not_hang_the_client() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    within(120, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("typeahead");
        let url = relay.url();
        let typed = code.clone();
        let lines: Vec<String> = (1..=1100).map(|i| format!("early line {i}")).collect();
        let paste: String = lines.iter().map(|l| format!("{l}\r")).collect();
        let heard_all = Arc::new(AtomicBool::new(false));
        let all = heard_all.clone();
        let (pasted_tx, pasted) = tokio::sync::oneshot::channel();
        let term = tokio::task::spawn_blocking(move || {
            let mut term = terminal("xterm", &["--relay", &url, &typed]);
            saw(&mut term, "searching");
            // Written as a terminal passes a long paste on, a piece at a time, the screen read
            // meanwhile (a terminal whose screen is not read stalls the program writing to it).
            let mut shown = String::new();
            term.set_expect_timeout(Some(Duration::from_millis(20)));
            for piece in paste.as_bytes().chunks(1024) {
                term.send(piece).unwrap();
                while let Ok(c) = term.expect(expectrl::Regex("(?s).+")) {
                    shown.push_str(&String::from_utf8_lossy(c.as_bytes()));
                }
            }
            // The session has queued 1,000 and stopped reading; the editor holds the rest.
            let deadline = std::time::Instant::now() + TERMINAL_WAIT;
            while !shown.contains("early line 1000") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the editor stopped at: {}",
                    &shown[shown.len().saturating_sub(300)..]
                );
                if let Ok(c) = term.expect(expectrl::Regex("(?s).+")) {
                    shown.push_str(&String::from_utf8_lossy(c.as_bytes()));
                }
            }
            term.set_expect_timeout(Some(TERMINAL_WAIT));
            let _ = pasted_tx.send(());
            drain_until(&mut term, &all);
            term.send("/quit\r").unwrap();
            saw(&mut term, "session destroyed: you ended the session");
            ends_cleanly(&mut term, 0);
        });
        tokio::time::timeout(Duration::from_secs(70), pasted).await.unwrap().unwrap();
        let mut peer = Peer::start(&["--relay", &relay.url(), &code]);
        peer.status_within("verification code: ", TERMINAL_WAIT).await;
        for want in &lines {
            assert_eq!(&peer.heard().await, want);
        }
        heard_all.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(60), term).await.unwrap().unwrap();
        peer.status("your peer left").await;
    })
    .await;
}
