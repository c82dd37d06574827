//! A person at a terminal: the interactive client in a pseudo-terminal, typed into and read
//! the way a person would, while a scripted peer talks to it.

#![allow(clippy::unwrap_used)]

use expectrl::Expect;
use ghostwire_tests::*;
use std::sync::mpsc;
use std::time::Duration;

/// Steps the terminal side reports to the test, and the test's answers.
#[derive(Debug, PartialEq)]
enum Step {
    Searching,
    Drafting,
    Verified(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_types_into_the_interactive_client() {
    within(90, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("pty");
        let (url, typed_code) = (relay.url(), code.clone());
        let (to_test, mut from_term) = tokio::sync::mpsc::unbounded_channel::<Step>();
        let (to_term, from_test) = mpsc::channel::<()>();
        let terminal = tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(bin("ghostwire"));
            cmd.args(["--relay", &url]).env("NO_COLOR", "1").env("TERM", "xterm");
            let mut term = expectrl::Session::spawn(cmd).unwrap();
            term.set_expect_timeout(Some(Duration::from_secs(15)));
            // No code on the command line: it asks, refuses a bad one, asks again.
            term.expect("room code: ").unwrap();
            term.send_line("abc").unwrap();
            term.expect("room code must be 8 to 16 characters").unwrap();
            // What was typed stays in the editor, to be corrected; Ctrl-U clears it.
            term.expect("room code: abc").unwrap();
            term.send("\x15").unwrap();
            term.send_line(&typed_code).unwrap();
            term.expect("searching").unwrap();
            to_test.send(Step::Searching).unwrap();
            let found = term.expect(expectrl::Regex("verification code: ([0-9]{5} [0-9]{5})")).unwrap();
            let shown = String::from_utf8_lossy(found.get(1).unwrap()).into_owned();
            to_test.send(Step::Verified(shown)).unwrap();
            // Half a line typed, then the peer's message arrives: it must show above the input line
            // and leave what is being typed intact.
            term.send("draft").unwrap();
            to_test.send(Step::Drafting).unwrap();
            from_test.recv_timeout(Duration::from_secs(15)).unwrap();
            term.expect("peer: incoming while you type").unwrap();
            term.send_line(" continued").unwrap();
            from_test.recv_timeout(Duration::from_secs(15)).unwrap();
            // The peer's receipt marks the line delivered.
            term.expect("✓ delivered: \"draft continued\"").unwrap();
            // Commands.
            term.send_line("/help").unwrap();
            term.expect("/mismatch").unwrap();
            term.send_line("/verify").unwrap();
            term.expect("verification code: ").unwrap();
            // Too long: refused, and put back in the editor to be shortened.
            term.send_line("y".repeat(1001)).unwrap();
            term.expect("not sent: 1001 characters, the limit is 1000").unwrap();
            term.expect(format!("> {}", "y".repeat(60))).unwrap();
            term.send("\x15").unwrap(); // Ctrl-U: clear the line
            term.send_line("/quit").unwrap();
            // (Quitting at once, the last line's receipt may not be in yet: said, and still 0.)
            term.expect("session destroyed: you ended the session").unwrap();
            term.expect("(exit 0)").unwrap();
            let status = term.get_process_mut().wait().unwrap();
            format!("{status:?}")
        });
        let mut next_step =
            async || tokio::time::timeout(Duration::from_secs(30), from_term.recv()).await.unwrap().unwrap();
        assert_eq!(next_step().await, Step::Searching);
        let mut peer = Peer::start(&["--relay", &relay.url(), &code]);
        let peer_code = peer.code().await;
        assert_eq!(next_step().await, Step::Verified(peer_code));
        assert_eq!(next_step().await, Step::Drafting);
        peer.say("incoming while you type").await;
        to_term.send(()).unwrap();
        assert_eq!(peer.heard().await, "draft continued", "the half-typed line was disturbed");
        to_term.send(()).unwrap();
        let status = terminal.await.unwrap();
        assert!(status.contains("Exited") && status.ends_with(", 0)"), "{status}");
        peer.status("your peer left").await;
    })
    .await;
}
