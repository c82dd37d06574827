//! Two real `ghostwire` processes through a real relay: what a person (or script) sees.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;

#[tokio::test]
async fn two_clients_chat_both_ways_with_matching_codes() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let (mut a, mut b, ca, cb) = connected_pair(&relay.url(), &room("chat"), &[]).await;
        assert_eq!(ca, cb, "both sides must show the same verification code");
        assert!(ca.len() == 11 && ca.chars().filter(char::is_ascii_digit).count() == 10, "{ca}");
        let texts: Vec<String> = (0..40)
            .map(|i| match i % 4 {
                0 => format!("plain message {i}"),
                1 => format!("ünïcödé 👻 {i} — ≠ ∞ 漢字"),
                2 => format!("  spaces kept {i}  "),
                _ => format!("{{\"json\":\"inside\",\"n\":{i}}}"),
            })
            .collect();
        for t in &texts {
            a.say(t).await;
        }
        for t in &texts {
            assert_eq!(&b.heard().await, t);
        }
        for t in texts.iter().rev() {
            b.say(t).await;
        }
        for t in texts.iter().rev() {
            assert_eq!(&a.heard().await, t);
        }
        // 1000 characters (multi-byte ones too) pass; 1001 are refused and not sent.
        let max = "é".repeat(1000);
        a.say(&max).await;
        assert_eq!(b.heard().await, max);
        a.say(&"x".repeat(1001)).await;
        let refused = a.status("not sent").await;
        assert!(refused.contains("line 42 not sent: 1001 characters, the limit is 1000"), "{refused}");
        a.say("after the refusal").await;
        assert_eq!(b.heard().await, "after the refusal", "the refused message must not arrive");
        // End of input on both: both finish; A exits 1 as one of its lines was not sent.
        a.hang_up();
        b.status("your peer has finished sending").await;
        b.hang_up();
        let (code_a, log_a) = a.exit().await;
        assert_eq!(code_a, 1, "{log_a}");
        assert!(log_a.contains("you both finished: everything was sent; 1 line was not sent (exit 1)"), "{log_a}");
        assert_eq!(b.exit().await.0, 0);
    })
    .await;
}

#[tokio::test]
async fn lines_before_the_peer_arrives_are_queued_and_sent_before_quitting() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("queue");
        let mut a = Peer::start(&["--relay", &relay.url(), &code]);
        for i in 0..5 {
            a.say(&format!("early {i}")).await;
        }
        a.hang_up(); // end of input before there is even a peer
        a.status("searching").await;
        let mut b = Peer::start(&["--relay", &relay.url(), &code]);
        for i in 0..5 {
            assert_eq!(b.heard().await, format!("early {i}"));
        }
        // A has finished, but stays to hear B until B finishes too.
        b.status("your peer has finished sending").await;
        b.say("late reply").await;
        assert_eq!(a.heard().await, "late reply");
        b.hang_up();
        both_finished(a, b).await;
    })
    .await;
}

#[tokio::test]
async fn two_piped_clients_each_say_a_line_and_both_exit_0() {
    // `printf 'hi\n' | ghostwire CODE` on both sides: end of input is "nothing more to say",
    // so each still hears the other before both end.
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("pipes");
        let mut a = Peer::start(&["--relay", &relay.url(), &code]);
        a.say("hi from a").await;
        a.hang_up();
        let mut b = Peer::start(&["--relay", &relay.url(), &code]);
        b.say("hi from b").await;
        b.hang_up();
        assert_eq!(a.heard().await, "hi from b");
        assert_eq!(b.heard().await, "hi from a");
        both_finished(a, b).await;
    })
    .await;
}

/// 600 piped lines to a peer that says it takes more (`rx`): paced fast, yet within the relay's
/// default 100 frames/s (no 4004) and the receiver's flood limit: every line arrives, in order,
/// and both exit 0.
#[tokio::test]
async fn a_long_pipe_to_a_current_peer_arrives_whole_within_every_limit() {
    within(90, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("longpipe");
        let mut b = Peer::start(&["--relay", &relay.url(), &code]);
        b.status("searching").await;
        let mut a = Peer::start(&["--relay", &relay.url(), &code]);
        for i in 0..600 {
            a.say(&format!("line {i}")).await;
        }
        a.hang_up();
        for i in 0..600 {
            assert_eq!(b.heard().await, format!("line {i}"));
        }
        b.hang_up();
        both_finished(a, b).await;
        assert_eq!(relay.metrics.errors(ghostwire_shared::ErrorCode::RateLimited), 0);
    })
    .await;
}

/// Receipts: a piped sender whose peer stays on, then quits, hears every line confirmed first
/// (the peer sends the receipt it owes before its goodbye), so it ends with exit 0 and nothing
/// named as not confirmed.
#[tokio::test]
async fn every_line_is_confirmed_before_a_peer_that_quits_says_goodbye() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("receipts");
        let mut b = Peer::start(&["--relay", &relay.url(), &code]);
        b.status("searching").await;
        let mut a = Peer::start(&["--relay", &relay.url(), &code]);
        for i in 0..30 {
            a.say(&format!("receipted {i}")).await;
        }
        a.hang_up();
        for i in 0..30 {
            assert_eq!(b.heard().await, format!("receipted {i}"));
        }
        a.status("waiting for your peer to finish").await;
        b.interrupt();
        let (status, log) = a.exit().await;
        assert_eq!(status, 0, "{log}");
        assert!(log.contains("your peer left"), "{log}");
        assert!(!log.contains("not confirmed"), "{log}");
        assert_eq!(b.exit().await.0, 0);
    })
    .await;
}

/// A bare room code in lower case is accepted and upper-cased. (A code typed at the prompt,
/// refused and asked for again: client_pty.rs, at a terminal, the only place the client asks.)
#[tokio::test]
async fn a_lower_case_room_code_is_upper_cased() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("lower");
        let mut a = Peer::start(&["--relay", &relay.url(), &code.to_lowercase()]);
        a.status("searching").await;
        let mut b = Peer::start(&["--relay", &relay.url(), &code]);
        assert_eq!(a.code().await, b.code().await);
        a.say("found you").await;
        assert_eq!(b.heard().await, "found you");
        hang_up_and_part(a, b).await;
    })
    .await;
}

#[tokio::test]
async fn new_with_legacy_v1_prints_a_fresh_bare_code_and_waits_in_it() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let mut a = Peer::start(&["--relay", &relay.url(), "--new", "--legacy-v1"]);
        let line = a.status("room code: ").await;
        let code = line.trim_start_matches("room code: ").to_owned();
        assert_eq!(code.len(), 16);
        assert!(code.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        let mut b = Peer::start(&["--relay", &relay.url(), "--legacy-v1", &code]);
        a.status("keys exchanged").await;
        b.status("keys exchanged").await;
    })
    .await;
}

#[tokio::test]
async fn exit_codes_per_reason() {
    within(60, async {
        // Bad input: 2, with a message that says what is wrong.
        let (code, log) = Peer::start(&["--relay", "ws://127.0.0.1:9/", "no!"]).exit().await;
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("room code must be"), "{log}");
        // A bad flag names the flag: 2 (clap).
        let (code, log) = Peer::start(&["--relya", "x", "ABCDEFGH"]).exit().await;
        assert_eq!(code, 2);
        assert!(log.contains("--relya"), "{log}");
        // A relay URL or CA file that cannot work: 2, naming the problem, before any connection.
        for (args, says) in [
            (vec!["--relay", "ws://127.0.0.1:99999/"], "port must be a number from 1 to 65535"),
            (vec!["--relay", "ftp://127.0.0.1/"], "the scheme is ftp://"),
            (vec!["--relay", "ws://127.0.0.1:9/", "--ca", "/dev/null"], "--ca applies only to wss://"),
            (vec!["--relay", "wss://127.0.0.1:9/", "--ca", "/nonexistent.pem"], "cannot read CA certificates"),
            (vec!["--relay", "wss://127.0.0.1:9/", "--ca", "/dev/null"], "no PEM certificate found"),
        ] {
            let (code, log) = Peer::start(&[args.as_slice(), &["ABCDEFGH"]].concat()).exit().await;
            assert_eq!(code, 2, "{args:?}: {log}");
            assert!(log.contains(says), "{args:?}: {log}");
        }
        // No relay listening: 3.
        let port = free_port();
        let (code, log) = Peer::start(&["--relay", &format!("ws://127.0.0.1:{port}/"), "ABCDEFGH"]).exit().await;
        assert_eq!(code, 3, "{log}");
        assert!(log.contains("cannot reach the relay"), "{log}");
        // The relay refuses (room full): 3, with the relay's reason.
        let relay = TestRelay::with(|_| {}).await;
        let full = room("full");
        let (_a, _b, _, _) = connected_pair(&relay.url(), &full, &[]).await;
        let (code, log) = Peer::start(&["--relay", &relay.url(), &full]).exit().await;
        assert_eq!(code, 3, "{log}");
        assert!(log.contains("the room is full") && log.contains("(error 4002)"), "{log}");
        // The relay shuts down under a connected pair that does not resume: 3 for both, "the
        // relay is shutting down" (resuming is tested in client_resume).
        let (a, b, _, _) = connected_pair(&relay.url(), &room("down"), &["--resume-window", "0"]).await;
        relay.shutdown.cancel();
        for mut p in [a, b] {
            let line = p.status("session destroyed").await;
            assert!(
                line.contains("the relay is shutting down: run ghostwire again to reconnect (error 1001)"),
                "{line}"
            );
            assert!(line.contains("exit 3"), "{line}");
            assert_eq!(p.exit().await.0, 3);
        }
    })
    .await;
}

/// A script's lines are data, whatever they start with: a pipe sends `/usr/bin`, `// a C
/// comment`, `/quit` and `/mismatch` as they are, and the session goes on after them.
#[tokio::test]
async fn piped_lines_starting_with_a_slash_are_sent_as_they_are() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let (mut a, mut b, _, _) = connected_pair(&relay.url(), &room("slash"), &[]).await;
        let lines = ["x", "/usr/bin", "// a C comment", "/quit", "/mismatch", "y"];
        for line in lines {
            a.say(line).await;
        }
        for line in lines {
            assert_eq!(b.heard().await, line);
        }
        hang_up_and_part(a, b).await;
    })
    .await;
}

/// Codes that contradict each other, or a code nobody can be asked for, are refused at once
/// (exit 2) with a sentence that names them; a mistyped word in GHOSTWIRE_CODE gets the
/// prompt's suggestions.
#[tokio::test]
async fn conflicting_or_missing_codes_are_refused_by_name() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let url = relay.url();
        let with_env = |code: &str, args: &[&str]| Peer::with_code(code, &[&["--relay", url.as_str()], args].concat());
        let (code, log) = with_env("ROOM1ABC-tulip-cider-lunar", &["ROOM2ABC"]).exit().await;
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("ROOMCODE") && log.contains("GHOSTWIRE_CODE"), "{log}");
        let (code, log) = with_env("ROOM1ABC-tulip-cider-lunar", &["--new"]).exit().await;
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("--new") && log.contains("GHOSTWIRE_CODE"), "{log}");
        let (code, log) = with_env("ROOM1ABC-tulip-cidr-lunar", &[]).exit().await;
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("GHOSTWIRE_CODE") && log.contains("cider"), "a suggestion: {log}");
        let (code, log) = Peer::start(&["--relay", &relay.url()]).exit().await;
        assert_eq!(code, 2, "{log}");
        assert!(log.contains("standard input is not a terminal") && log.contains("GHOSTWIRE_CODE"), "{log}");
    })
    .await;
}
