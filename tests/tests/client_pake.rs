//! Codes with a secret part, end to end: two real `ghostwire` clients through a real relay, and
//! through the tests' hostile relay doing a full key substitution. The secret is passed the way
//! people are told to (GHOSTWIRE_CODE, or typed at the prompt), never on the command line.

#![allow(clippy::unwrap_used)]

use expectrl::Expect;
use ghostwire_tests::*;

/// A client in the room of `code` through `url`, the code in GHOSTWIRE_CODE.
fn with_code(url: &str, code: &str, extra: &[&str]) -> Peer {
    Peer::with_code(code, &[&["--relay", url], extra].concat())
}

/// A fresh room part for each test, so tests sharing a relay never meet.
fn code(words: &str) -> String {
    let room: String = room("pake").chars().filter(|c| c.is_ascii_alphanumeric()).take(16).collect();
    format!("{room}-{words}")
}

#[tokio::test]
async fn two_clients_with_the_same_full_code_chat_verified_by_its_secret() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = code("tulip-cider-lunar");
        let mut a = with_code(&relay.url(), &code, &[]);
        a.status("searching").await;
        // Typed forgivingly on the other side: case, spaces, a unique prefix.
        let mut b = with_code(&relay.url(), &code.replace("tulip-cider", "TULIP  cide").replace('-', " "), &[]);
        for p in [&mut a, &mut b] {
            p.status("verified by the code's secret").await;
        }
        a.say("hello, verified").await;
        assert_eq!(b.heard().await, "hello, verified");
        b.say("and back").await;
        assert_eq!(a.heard().await, "and back");
        hang_up_and_part(a, b).await;
    })
    .await;
}

/// In a code with words, O reads as 0 and I and L as 1 (only v2+ clients use such codes), so
/// two people who read the room part differently still meet, and the words still verify.
#[tokio::test]
async fn look_alikes_in_a_code_with_words_meet_in_one_room() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let digits: String = room("alike").chars().filter(char::is_ascii_digit).take(4).collect();
        let (zeros, letters) = (format!("A{digits}01L"), format!("A{digits}OIl"));
        let mut a = with_code(&relay.url(), &format!("{zeros}-tulip-cider-lunar"), &[]);
        a.status("searching").await;
        let mut b = with_code(&relay.url(), &format!("{letters}-tulip-cider-lunar"), &[]);
        for p in [&mut a, &mut b] {
            p.status("verified by the code's secret").await;
        }
        a.say("one room").await;
        assert_eq!(b.heard().await, "one room");
        hang_up_and_part(a, b).await;
    })
    .await;
}

#[tokio::test]
async fn a_wrong_word_ends_both_before_any_message() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let right = code("tulip-cider-lunar");
        let wrong = right.replace("lunar", "lunch");
        let mut a = with_code(&relay.url(), &right, &[]);
        a.status("searching").await;
        // B types ahead: its line must never be sent.
        let mut b = with_code(&relay.url(), &wrong, &[]);
        b.say("this must never be sent").await;
        for p in [a, b] {
            let (status, log) = p.exit().await;
            assert_eq!(status, 5, "{log}");
            assert!(log.contains("verification failed: wrong code or a relay in the middle"), "{log}");
            assert!(log.contains("This code is burnt"), "{log}");
            assert!(!log.contains("verified by the code's secret"), "{log}");
        }
        // PAKE, commitment, key and MAC each way, and nothing more: no message crossed.
        assert_eq!(relay.metrics.frames_forwarded.get(), 8);
        // Both said BURN before their MAC: the relay now refuses the code, so a retry gives a
        // relay in the middle no further guess.
        assert_eq!(relay.metrics.rooms_burnt_total.get(), 2);
        let again = with_code(&relay.url(), &right, &[]);
        let (status, log) = again.exit().await;
        assert_eq!(status, 2, "{log}");
        assert!(log.contains("this code is burnt"), "{log}");
        assert!(log.contains("ghostwire --new"), "{log}");
        assert!(log.contains("error 4012"), "{log}");
    })
    .await;
}

/// A code with a secret part is good for one session: once both proved it, the room is burnt
/// too, so the code cannot be tried again later by anyone.
#[tokio::test]
async fn a_code_that_verified_is_not_accepted_again() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = code("tulip-cider-lunar");
        let mut a = with_code(&relay.url(), &code, &[]);
        a.status("searching").await;
        let mut b = with_code(&relay.url(), &code, &[]);
        for p in [&mut a, &mut b] {
            p.status("verified by the code's secret").await;
        }
        hang_up_and_part(a, b).await;
        let (status, log) = with_code(&relay.url(), &code, &[]).exit().await;
        assert_eq!(status, 2, "{log}");
        assert!(log.contains("this code is burnt"), "{log}");
        // A bare code (the prototype's, no secret) is never burnt: it meets again.
        let bare = room("bare");
        let (a, b, _, _) = connected_pair(&relay.url(), &bare, &[]).await;
        hang_up_and_part(a, b).await;
        let (a, b, _, _) = connected_pair(&relay.url(), &bare, &[]).await;
        hang_up_and_part(a, b).await;
        assert_eq!(relay.metrics.rooms_burnt_total.get(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_code_with_a_secret_on_the_command_line_is_refused() {
    within(30, async {
        let (status, log) = Peer::start(&["--relay", "ws://127.0.0.1:9/", "K7Q2M9XA-tulip-cider-lunar"]).exit().await;
        assert_eq!(status, 2, "{log}");
        assert!(log.contains("must not be on the command line") && log.contains("GHOSTWIRE_CODE"), "{log}");
        assert!(!log.contains("tulip"), "the secret is not repeated: {log}");
        // --legacy-v1 has no PAKE: a secret code is a clear error, not silently dropped.
        let (status, log) = with_code("ws://127.0.0.1:9/", "K7Q2M9XA-tulip-cider-lunar", &["--legacy-v1"]).exit().await;
        assert_eq!(status, 2, "{log}");
        assert!(log.contains("--legacy-v1 cannot use a code with a secret part"), "{log}");
    })
    .await;
}

#[tokio::test]
async fn a_word_not_in_the_list_is_rejected_at_input_with_a_suggestion() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let good = code("tulip-cider-lunar");
        // At the prompt (the only place the client asks): a bad word is refused with the
        // nearest, and the code asked for again, still in the editor to be fixed in place.
        let typed = good.clone();
        at_the_prompt(&relay.url(), &good, move |term| {
            term.send_line(typed.replace("cider", "cidre")).unwrap();
            term.expect("is not in the word list; did you mean cider").unwrap();
            term.expect("cidre-lunar").unwrap();
            term.send("\x1b[D".repeat("-lunar".len()) + &"\x7f".repeat(2)).unwrap(); // left ×6, then delete "re"
            term.send_line("er").unwrap();
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn new_prints_a_code_with_a_secret_and_the_other_side_joins_with_it() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let mut a = Peer::start(&["--relay", &relay.url(), "--new"]);
        let line = a.status("code: ").await;
        let code = line.trim_start_matches("code: ").to_owned();
        let parts: Vec<&str> = code.split('-').collect();
        assert_eq!(parts.len(), 4, "{code}");
        assert_eq!(parts[0].len(), 8);
        let told = a.status("tell your peer").await;
        assert!(!told.contains(&code), "the command to pass on carries no secret: {told}");
        let mut b = with_code(&relay.url(), &code, &[]);
        b.status("verified by the code's secret").await;
        a.status("verified by the code's secret").await;
    })
    .await;
}

/// At the prompt, Tab completes a word of the code from the list (the screen shows it whole),
/// and a session follows as with the code typed out.
#[tokio::test]
async fn tab_completes_the_words_at_the_prompt() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let good = code("tulip-cider-lunar");
        let room_part = good.split('-').next().unwrap().to_owned();
        at_the_prompt(&relay.url(), &good, move |term| {
            term.send(format!("{room_part}-tul\t")).unwrap();
            term.expect("tulip").unwrap();
            term.send("-cid\t").unwrap();
            term.expect("cider").unwrap();
            term.send("-luna\t").unwrap();
            term.expect("lunar").unwrap();
            term.send("\r").unwrap();
        })
        .await;
    })
    .await;
}

/// A client in a pseudo-terminal at `url` with no code, so it asks: `typing` answers the prompt;
/// a peer joins with `code`, both must verify by the code's secret, then Ctrl-C ends the first.
async fn at_the_prompt(url: &str, code: &str, typing: impl FnOnce(&mut expectrl::session::OsSession) + Send + 'static) {
    let url_for_term = url.to_owned();
    let terminal = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(bin("ghostwire"));
        cmd.args(["--relay", &url_for_term]).env("NO_COLOR", "1").env("TERM", "xterm");
        let mut term = expectrl::Session::spawn(cmd).unwrap();
        term.set_expect_timeout(Some(std::time::Duration::from_secs(30)));
        term.expect("room code: ").unwrap();
        typing(&mut term);
        term.expect("verified by the code's secret").unwrap();
        term.send("\x03").unwrap();
        term.expect("session destroyed").unwrap();
    });
    let mut b = with_code(url, code, &[]);
    b.status("verified by the code's secret").await;
    tokio::time::timeout(std::time::Duration::from_secs(50), terminal).await.unwrap().unwrap();
}
