//! The machine driven directly, pair by pair, with a simulated peer that holds real keys.

#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use crate::proto::PeerMsg;
use ghostwire_shared::RelayFrame;
use std::collections::HashMap;

/// The peer on the other side of the machine: its own keys, and its channel once agreed.
struct FakePeer {
    keys: KeyPair,
    channel: Option<Channel>,
}

fn sent(actions: &[Action]) -> Vec<PeerMsg> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(frame) => match RelayFrame::parse(frame, 1 << 16).unwrap() {
                RelayFrame::Signal(s) => Some(proto::decode(&s).unwrap()),
                other => panic!("{other:?}"),
            },
            _ => None,
        })
        .collect()
}

/// The peer's KEY_EXCHANGE without receipts, resuming or files.
fn key_event(key: Vec<u8>, v2: bool) -> Event {
    Event::PeerKey { key, v2, acks: false, resume: false, files: false }
}

fn typed(s: &str) -> Event {
    Event::CodeTyped(Zeroizing::new(s.to_owned()))
}

fn line(s: &str) -> Event {
    Event::Send(Zeroizing::new(s.to_owned()))
}

/// A machine in SEARCHING.
fn searching(version: Version) -> Machine {
    let mut m = Machine::new(version);
    assert_eq!(m.handle(Event::Start), vec![Action::PromptCode]);
    assert!(matches!(m.handle(typed("abcd1234"))[..], [Action::Connect(_)]));
    m
}

/// A machine in KEY_SETUP (v2) that has sent its commitment; returns the commitment.
fn key_setup() -> (Machine, [u8; 32]) {
    let mut m = searching(Version::Hardened2);
    let out = sent(&m.handle(Event::PeerFound));
    let [PeerMsg::Commit { commit }] = out[..] else { panic!("{out:?}") };
    (m, commit)
}

/// A code with a secret part, for the PAKE states.
const SECRET_CODE: &str = "abcd1234-tulip-cider-lunar";

/// A machine in PAKE_EXCHANGE with `code`, and the SPAKE2 message it sent.
fn pake_exchange(code: &str) -> (Machine, Vec<u8>) {
    let mut m = Machine::new(Version::Hardened2);
    m.handle(Event::Start);
    assert!(matches!(m.handle(typed(code))[..], [Action::Connect(_)]));
    let out = sent(&m.handle(Event::PeerFound));
    let [PeerMsg::Pake { ref msg }] = out[..] else { panic!("{out:?}") };
    (m, msg.clone())
}

/// A machine in KEY_CONFIRMATION after a PAKE with a peer that holds the same secret; returns
/// it, the MAC it sent, and the MAC the peer would send.
fn key_confirmation() -> (Machine, Vec<u8>, [u8; 32]) {
    let (mut m, my_pake) = pake_exchange(SECRET_CODE);
    let peer = pake::Start::new("ABCD1234", b"tulip-cider-lunar");
    let peer_msg = peer.message().to_vec();
    let peer_shared = peer.finish(&my_pake).unwrap();
    let out = sent(&m.handle(Event::PeerPake(peer_msg)));
    let [PeerMsg::Commit { .. }] = out[..] else { panic!("{out:?}") };
    let keys = KeyPair::generate();
    let out = sent(&m.handle(Event::PeerCommit(keys.commitment())));
    let [PeerMsg::Key { ref key, .. }] = out[..] else { panic!("{out:?}") };
    let mine: [u8; 32] = key.as_slice().try_into().unwrap();
    let out = sent(&m.handle(key_event(keys.public().to_vec(), true)));
    let [PeerMsg::Confirm { ref mac }] = out[..] else { panic!("{out:?}") };
    let theirs = peer_shared.confirm("ABCD1234", keys.public(), &mine);
    assert!(theirs.check(mac), "the machine's MAC is the one the peer expects");
    (m, mac.clone(), theirs.mine)
}

#[test]
fn the_codes_secret_confirms_the_exchange_before_anything_is_sent() {
    let (mut m, _, theirs) = key_confirmation();
    assert!(!m.can_send(), "nothing is sent before the peer's MAC");
    let actions = m.handle(Event::PeerConfirm(theirs.to_vec()));
    assert_eq!(m.state().name(), "CONNECTED");
    assert!(actions.iter().any(|a| matches!(a, Action::Say(_, t) if t.contains("verified by the code's secret"))));
    assert!(m.can_send());
}

#[test]
fn a_wrong_mac_a_downgrade_or_an_early_departure_fails_the_verification() {
    let (mut m, mine, _) = key_confirmation();
    m.handle(Event::PeerConfirm(mine));
    assert_eq!(ended(&m), &End::VerificationFailed, "our own MAC reflected");
    let (mut m, _) = pake_exchange(SECRET_CODE);
    m.handle(Event::PeerCommit([0; 32]));
    assert_eq!(ended(&m), &End::VerificationFailed, "a commitment where the PAKE must be");
    let (mut m, _) = key_setup();
    m.handle(Event::PeerPake(vec![0; 33]));
    assert_eq!(ended(&m), &End::VerificationFailed, "a PAKE to a bare code");
    let (mut m, _, _) = key_confirmation();
    m.handle(Event::PeerLeft);
    assert_eq!(ended(&m), &End::VerificationFailed, "gone before confirming: fail closed");
    let (mut m, _) = pake_exchange(SECRET_CODE);
    m.handle(Event::PeerPake(vec![1, 2, 3]));
    assert_eq!(ended(&m), &End::VerificationFailed, "a malformed PAKE message");
    assert_eq!(End::VerificationFailed.exit_code(), 5);
}

/// Once our MAC is out, no ending lets the code be used again: a relay that has our MAC and
/// then says it is going away, loses the peer, cuts the line or stalls has spent its guess.
#[test]
fn every_ending_after_our_mac_is_out_burns_the_code() {
    let endings = [
        Event::Relay { code: 1001, reason: "going away".into() },
        Event::Relay { code: 4011, reason: String::new() },
        Event::NetworkError("lost the connection to the relay".into()),
        Event::Deviation(End::Protocol("the relay sent an invalid frame".into())),
        Event::Quit,
    ];
    for event in endings {
        let name = event.name();
        let (mut m, _, _) = key_confirmation();
        m.handle(event);
        let end = ended(&m);
        assert!(matches!(end, End::Unconfirmed(_)), "{name}: {end:?}");
        assert_eq!(end.exit_code(), 5, "{name}");
        assert!(end.to_string().contains("burnt"), "{name}: {end}");
    }
    let (mut m, _, _) = key_confirmation();
    let deadline = m.deadline().unwrap();
    m.handle(Event::Deadline(deadline));
    assert!(matches!(ended(&m), End::Unconfirmed(why) if why.to_string().contains("in time")));
    // Before our MAC is out, the same endings are what they say (nothing to guess against).
    let (mut m, _) = pake_exchange(SECRET_CODE);
    m.handle(Event::Relay { code: 1001, reason: String::new() });
    assert_eq!(ended(&m).exit_code(), 3);
    // A security ending stays itself.
    let (mut m, mine, _) = key_confirmation();
    m.handle(Event::PeerConfirm(mine));
    assert_eq!(ended(&m), &End::VerificationFailed);
}

#[test]
fn legacy_v1_refuses_a_code_with_a_secret() {
    let mut m = Machine::new(Version::Legacy1);
    m.handle(Event::Start);
    m.handle(typed(SECRET_CODE));
    assert!(matches!(ended(&m), End::BadInput(why) if why.contains("--legacy-v1")));
}

/// A machine in CONNECTED (v2), and the peer it is connected to.
fn connected() -> (Machine, FakePeer) {
    let (mut m, their_commit) = key_setup();
    let peer = KeyPair::generate();
    let out = sent(&m.handle(Event::PeerCommit(peer.commitment())));
    let [PeerMsg::Key { ref key, v2: true, rx: Some(_), acks: true, .. }] = out[..] else { panic!("{out:?}") };
    let mine: [u8; 32] = key.as_slice().try_into().unwrap();
    assert_eq!(crypto::commitment(&mine), their_commit, "the revealed key is the committed one");
    let actions = m.handle(key_event(peer.public().to_vec(), true));
    assert!(actions.iter().any(|a| matches!(a, Action::ShowCode(_))), "{actions:?}");
    let channel = Channel::new(peer.agree(&mine).unwrap(), Version::Hardened2, peer.public(), &mine);
    (m, FakePeer { keys: peer, channel: Some(channel) })
}

impl FakePeer {
    fn text(&mut self, s: &str) -> Event {
        Event::PeerRecord(self.channel.as_mut().unwrap().seal(s))
    }
    fn notice(&mut self, n: Notice) -> Event {
        Event::PeerRecord(self.channel.as_mut().unwrap().seal_notice(n).unwrap())
    }
    /// Opens what the machine sent.
    fn open(&mut self, actions: &[Action]) -> Vec<Record> {
        sent(actions)
            .into_iter()
            .map(|m| match m {
                PeerMsg::Msg { payload } => self.channel.as_mut().unwrap().open(&payload).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    }
}

fn ended(m: &Machine) -> &End {
    m.end().unwrap_or_else(|| panic!("still in {}", m.state().name()))
}

/// Every state the machine can be in, reached through real events.
fn in_state(name: &str) -> (Machine, Option<FakePeer>) {
    match name {
        "INIT" => (Machine::new(Version::Hardened2), None),
        "INPUT_VALIDATION" => {
            let mut m = Machine::new(Version::Hardened2);
            m.handle(Event::Start);
            (m, None)
        }
        "SEARCHING" => (searching(Version::Hardened2), None),
        "PAKE_EXCHANGE" => (pake_exchange(SECRET_CODE).0, None),
        "KEY_SETUP" => (key_setup().0, None),
        "KEY_CONFIRMATION" => (key_confirmation().0, None),
        "CONNECTED" => {
            let (m, p) = connected();
            (m, Some(p))
        }
        "DISCONNECTED" => {
            let mut m = searching(Version::Hardened2);
            m.handle(Event::Quit);
            (m, None)
        }
        "SESSION_DESTROYED" => {
            let mut m = searching(Version::Hardened2);
            m.handle(Event::Quit);
            m.handle(Event::Wiped);
            (m, None)
        }
        other => panic!("{other}"),
    }
}

const STATES: [&str; 9] = [
    "INIT",
    "INPUT_VALIDATION",
    "SEARCHING",
    "PAKE_EXCHANGE",
    "KEY_SETUP",
    "KEY_CONFIRMATION",
    "CONNECTED",
    "DISCONNECTED",
    "SESSION_DESTROYED",
];
const EVENTS: [&str; 18] = [
    "PeerPake",
    "PeerConfirm",
    "Start",
    "CodeTyped",
    "PeerFound",
    "PeerCommit",
    "PeerKey",
    "PeerRecord",
    "Send",
    "InputDone",
    "Quit",
    "Mismatch",
    "PeerLeft",
    "Relay",
    "NetworkError",
    "Deviation",
    "Deadline",
    "Wiped",
];

/// A representative, well-formed event of each kind (from the peer where it has one).
fn event(name: &str, peer: Option<&mut FakePeer>) -> Event {
    let other = KeyPair::generate();
    match name {
        "Start" => Event::Start,
        "PeerPake" => Event::PeerPake(pake::Start::new("ABCD1234", b"tulip-cider-lunar").message().to_vec()),
        "PeerConfirm" => Event::PeerConfirm(vec![0; 32]),
        "CodeTyped" => typed("ABCD1234"),
        "PeerFound" => Event::PeerFound,
        "PeerCommit" => Event::PeerCommit(other.commitment()),
        "PeerKey" => key_event(other.public().to_vec(), true),
        "PeerRecord" => match peer {
            Some(p) => p.text("hello"),
            None => Event::PeerRecord(vec![0; 64]),
        },
        "Send" => line("hi"),
        "InputDone" => Event::InputDone,
        "Quit" => Event::Quit,
        "Mismatch" => Event::Mismatch,
        "PeerLeft" => Event::PeerLeft,
        "Relay" => Event::Relay { code: 4002, reason: "room full".into() },
        "NetworkError" => Event::NetworkError("gone".into()),
        "Deviation" => Event::Deviation(End::Protocol("flood".into())),
        "Deadline" => Event::Deadline(Instant::now()),
        "Wiped" => Event::Wiped,
        other => panic!("{other}"),
    }
}

/// The table from the module documentation, written out independently of `transition`:
/// (state, event) → next state. Pairs not listed are unexpected.
fn table() -> HashMap<(&'static str, &'static str), &'static str> {
    let mut t = HashMap::new();
    t.insert(("INIT", "Start"), "INPUT_VALIDATION");
    t.insert(("INPUT_VALIDATION", "CodeTyped"), "SEARCHING");
    t.insert(("INPUT_VALIDATION", "InputDone"), "DISCONNECTED");
    t.insert(("SEARCHING", "PeerFound"), "KEY_SETUP");
    t.insert(("SEARCHING", "Mismatch"), "SEARCHING");
    t.insert(("KEY_SETUP", "PeerCommit"), "KEY_SETUP");
    // A key without a commitment first: a deviation (to DISCONNECTED), but an expected event.
    t.insert(("KEY_SETUP", "PeerKey"), "DISCONNECTED");
    t.insert(("KEY_SETUP", "Mismatch"), "KEY_SETUP");
    t.insert(("KEY_SETUP", "PeerLeft"), "DISCONNECTED");
    t.insert(("PAKE_EXCHANGE", "PeerPake"), "KEY_SETUP");
    // A key exchange in place of the PAKE (a downgrade): verification failed.
    t.insert(("PAKE_EXCHANGE", "PeerCommit"), "DISCONNECTED");
    t.insert(("PAKE_EXCHANGE", "PeerKey"), "DISCONNECTED");
    t.insert(("PAKE_EXCHANGE", "Mismatch"), "PAKE_EXCHANGE");
    t.insert(("PAKE_EXCHANGE", "PeerLeft"), "DISCONNECTED");
    // A PAKE message to a bare code: the peer's code has a secret this one lacks.
    t.insert(("KEY_SETUP", "PeerPake"), "DISCONNECTED");
    t.insert(("KEY_CONFIRMATION", "PeerConfirm"), "DISCONNECTED");
    t.insert(("KEY_CONFIRMATION", "Mismatch"), "KEY_CONFIRMATION");
    t.insert(("KEY_CONFIRMATION", "PeerLeft"), "DISCONNECTED");
    t.insert(("CONNECTED", "PeerRecord"), "CONNECTED");
    t.insert(("CONNECTED", "Send"), "CONNECTED");
    t.insert(("CONNECTED", "InputDone"), "CONNECTED");
    t.insert(("CONNECTED", "Mismatch"), "DISCONNECTED");
    t.insert(("CONNECTED", "PeerLeft"), "DISCONNECTED");
    let online = ["SEARCHING", "PAKE_EXCHANGE", "KEY_SETUP", "KEY_CONFIRMATION", "CONNECTED"];
    for s in online {
        for e in ["Relay", "NetworkError", "Deviation", "Quit"] {
            t.insert((s, e), "DISCONNECTED");
        }
        t.insert((s, "Deadline"), s);
    }
    t.insert(("INPUT_VALIDATION", "Quit"), "DISCONNECTED");
    for s in ["INIT", "INPUT_VALIDATION"] {
        t.insert((s, "Deadline"), s);
    }
    for e in EVENTS {
        t.insert(("DISCONNECTED", e), "DISCONNECTED");
        t.insert(("SESSION_DESTROYED", e), "SESSION_DESTROYED");
    }
    t.insert(("DISCONNECTED", "Wiped"), "SESSION_DESTROYED");
    t
}

#[test]
fn every_state_event_pair() {
    let table = table();
    for s in STATES {
        for e in EVENTS {
            let (mut m, mut peer) = in_state(s);
            assert_eq!(m.state().name(), s);
            let before = m.end().cloned();
            m.handle(event(e, peer.as_mut()));
            let next = m.state().name();
            match table.get(&(s, e)) {
                Some(want) => {
                    assert_eq!(next, *want, "{s} + {e}");
                    if let (Some(end), Some(first)) = (m.end(), before) {
                        assert_eq!(*end, first, "{s} + {e}: the first reason stands");
                    }
                    if let Some(End::Protocol(why)) = m.end() {
                        assert!(!why.starts_with("unexpected"), "{s} + {e} is in the table: {why}");
                    }
                }
                None => {
                    let want = End::Protocol(format!("unexpected {e} in state {s}"));
                    // With our MAC out, every ending burns the code (and says why underneath).
                    let want = if s == "KEY_CONFIRMATION" { End::Unconfirmed(Box::new(want)) } else { want };
                    assert_eq!(m.end(), Some(&want), "{s} + {e}");
                }
            }
        }
    }
}

#[test]
fn codes_are_validated_and_reprompted() {
    let mut m = Machine::new(Version::Hardened2);
    m.handle(Event::Start);
    let out = m.handle(typed("abc"));
    assert!(matches!(&out[..], [Action::Reprompt(why)] if why.contains("8 to 16")), "{out:?}");
    assert_eq!(m.state().name(), "INPUT_VALIDATION");
    assert!(matches!(&m.handle(typed(" abcd1234 "))[..], [Action::Connect(c)] if c.as_str() == "ABCD1234"));
    let mut m = Machine::new(Version::Hardened2);
    m.handle(Event::Start);
    m.handle(Event::InputDone);
    assert!(matches!(ended(&m), End::BadInput(_)));
}

#[test]
fn a_second_commitment_is_a_violation() {
    let (mut m, _) = key_setup();
    let c = KeyPair::generate().commitment();
    assert_eq!(sent(&m.handle(Event::PeerCommit(c))).len(), 1, "the first reveals our key");
    m.handle(Event::PeerCommit(c));
    assert_eq!(ended(&m), &End::Protocol("the peer committed to a key twice".into()));
}

#[test]
fn a_key_before_its_commitment_is_a_violation() {
    let (mut m, _) = key_setup();
    m.handle(key_event(KeyPair::generate().public().to_vec(), true));
    assert_eq!(ended(&m), &End::Protocol("the peer revealed its key before committing to it".into()));
}

#[test]
fn a_key_that_is_not_the_committed_one_is_an_attack() {
    let (mut m, _) = key_setup();
    m.handle(Event::PeerCommit(KeyPair::generate().commitment()));
    m.handle(key_event(KeyPair::generate().public().to_vec(), true));
    assert_eq!(ended(&m), &End::Security(CryptoError::CommitMismatch));
    assert_eq!(ended(&m).exit_code(), crate::end::exit::SECURITY);
}

#[test]
fn bad_keys_are_refused() {
    for (key, want) in [
        (vec![1u8; 31], End::Security(CryptoError::BadKeyLength)),
        (vec![0u8; 32], End::Security(CryptoError::WeakKey)),
    ] {
        let (mut m, _) = key_setup();
        m.handle(Event::PeerCommit(crypto::commitment(&[0u8; 32])));
        m.handle(key_event(key, true));
        assert_eq!(ended(&m), &want);
    }
}

#[test]
fn versions_never_downgrade_silently() {
    // A v2 client meeting a v1 key.
    let (mut m, _) = key_setup();
    m.handle(Event::PeerCommit(KeyPair::generate().commitment()));
    m.handle(key_event(KeyPair::generate().public().to_vec(), false));
    assert!(matches!(ended(&m), End::Protocol(why) if why.contains("--legacy-v1")));
    // A v1 client meeting a v2 commitment, and a v2 key.
    for ev in [Event::PeerCommit([1; 32]), key_event(KeyPair::generate().public().to_vec(), true)] {
        let mut m = searching(Version::Legacy1);
        let out = sent(&m.handle(Event::PeerFound));
        assert!(matches!(out[..], [PeerMsg::Key { v2: false, .. }]), "v1 sends its key at once: {out:?}");
        m.handle(ev);
        assert!(matches!(ended(&m), End::Protocol(why) if why.contains("without --legacy-v1")));
    }
}

#[test]
fn the_key_exchange_has_a_deadline() {
    let (mut m, _) = key_setup();
    let deadline = m.deadline().unwrap();
    m.handle(Event::Deadline(deadline - Duration::from_millis(1)));
    assert_eq!(m.state().name(), "KEY_SETUP");
    m.handle(Event::Deadline(deadline));
    assert!(matches!(ended(&m), End::Protocol(why) if why.contains("in time")));
    let (m, _) = connected();
    assert_eq!(m.deadline(), None, "no deadline once connected");
}

#[test]
fn texts_flow_both_ways() {
    let (mut m, mut peer) = connected();
    let hello = peer.text("hello");
    assert_eq!(m.handle(hello), vec![Action::Show(Zeroizing::new("hello".into()))]);
    let out = m.handle(line("back"));
    assert_eq!(peer.open(&out), vec![Record::Text(Zeroizing::new("back".into()))]);
    assert!(m.code().is_some_and(|c| c.len() == 11));
}

#[test]
fn both_finishing_ends_normally_in_either_order() {
    // We finish first, then the peer.
    let (mut m, mut peer) = connected();
    let out = m.handle(Event::InputDone);
    assert_eq!(peer.open(&out), vec![Record::Notice(Notice::Done)]);
    assert!(!m.can_send() && m.end().is_none(), "still reading what the peer sends");
    let late = peer.text("still talking");
    assert!(matches!(m.handle(late)[..], [Action::Show(_)]));
    let done = peer.notice(Notice::Done);
    m.handle(done);
    assert_eq!(ended(&m), &End::Finished);
    // The peer finishes first, then we do.
    let (mut m, mut peer) = connected();
    let done = peer.notice(Notice::Done);
    m.handle(done);
    assert!(m.can_send());
    let out = m.handle(Event::InputDone);
    assert_eq!(peer.open(&out), vec![Record::Notice(Notice::Done)]);
    assert_eq!(ended(&m), &End::Finished);
}

#[test]
fn a_peer_that_finished_may_leave_but_not_talk() {
    let (mut m, mut peer) = connected();
    let done = peer.notice(Notice::Done);
    m.handle(done);
    m.handle(Event::PeerLeft);
    assert_eq!(ended(&m), &End::PeerLeft);
    let (mut m, mut peer) = connected();
    let done = peer.notice(Notice::Done);
    m.handle(done);
    let more = peer.text("more");
    m.handle(more);
    assert!(matches!(ended(&m), End::Protocol(why) if why.contains("after saying it had finished")));
}

#[test]
fn leaving_tells_the_peer_and_a_silent_departure_is_a_loss() {
    let (mut m, mut peer) = connected();
    let out = m.handle(Event::Quit);
    assert_eq!(peer.open(&out), vec![Record::Notice(Notice::Bye)]);
    assert_eq!(ended(&m), &End::Quit);

    let (mut m, mut peer) = connected();
    let bye = peer.notice(Notice::Bye);
    m.handle(bye);
    assert_eq!(ended(&m), &End::PeerLeft);

    let (mut m, _) = connected();
    m.handle(Event::PeerLeft);
    assert!(matches!(ended(&m), End::PeerLost(_)));
    assert_eq!(ended(&m).exit_code(), crate::end::exit::NETWORK);

    let (mut m, _) = key_setup();
    m.handle(Event::PeerLeft);
    assert_eq!(ended(&m), &End::PeerLeftEarly);
}

#[test]
fn a_mismatch_ends_both_sides_as_a_security_failure() {
    let (mut m, mut peer) = connected();
    let out = m.handle(Event::Mismatch);
    assert_eq!(peer.open(&out), vec![Record::Notice(Notice::Mismatch)]);
    assert_eq!(ended(&m), &End::VerificationMismatch);

    let (mut m, mut peer) = connected();
    let mismatch = peer.notice(Notice::Mismatch);
    m.handle(mismatch);
    assert_eq!(ended(&m), &End::PeerMismatch);
    assert_eq!(ended(&m).exit_code(), crate::end::exit::SECURITY);
}

/// Before pairing, a relay that cannot serve the room yet (4007) or is shutting down (1001) is
/// asked again, for JOIN_RETRY from the first refusal; then the refusal is the ending. Other
/// codes end at once.
#[tokio::test(start_paused = true)]
async fn a_join_the_relay_cannot_serve_yet_is_tried_again_for_a_while() {
    for code in [4007, 1001] {
        let mut m = searching(Version::Hardened2);
        let refused = Event::Relay { code, reason: "room service unavailable".into() };
        let out = m.handle(refused);
        let [Action::Rejoin { ref room, ref failed }] = out[..] else { panic!("{out:?}") };
        assert_eq!((room.as_str(), m.state().name()), ("ABCD1234", "SEARCHING"));
        assert!(failed.contains(&code.to_string()) && failed.contains("room service unavailable"), "{failed}");
        tokio::time::advance(JOIN_RETRY - Duration::from_secs(1)).await;
        let out = m.handle(Event::Relay { code, reason: String::new() });
        assert!(matches!(out[..], [Action::Rejoin { .. }]), "{out:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
        m.handle(Event::Relay { code, reason: String::new() });
        assert!(matches!(ended(&m), End::Relay { code: c, paired: false, .. } if *c == code), "{:?}", ended(&m));
    }
    let mut m = searching(Version::Hardened2);
    m.handle(Event::Relay { code: 4002, reason: "room full".into() });
    assert!(matches!(ended(&m), End::Relay { code: 4002, .. }));
    // A peer found after a retry goes on as ever.
    let mut m = searching(Version::Hardened2);
    m.handle(Event::Relay { code: 4007, reason: String::new() });
    assert!(matches!(sent(&m.handle(Event::PeerFound))[..], [PeerMsg::Commit { .. }]));
}

#[test]
fn relay_codes_say_whether_a_peer_was_lost() {
    let (mut m, _) = connected();
    m.handle(Event::Relay { code: 4007, reason: String::new() });
    assert!(ended(&m).to_string().contains("the connection to your peer was lost"), "{}", ended(&m));
}

#[test]
fn secrets_exist_only_in_their_states() {
    let (mut m, mut peer) = connected();
    assert!(m.code().is_some());
    let bye = peer.notice(Notice::Bye);
    m.handle(bye);
    assert!(matches!(m.state(), State::Disconnected(_)), "channel and code are gone with CONNECTED");
    assert_eq!(m.code(), None);
    let _ = &peer.keys;
}

// ---- resuming: two real machines, with the relay in between played by the test ----

/// What the relay would deliver to the other side for `actions`, as events.
fn as_events(actions: &[Action]) -> Vec<Event> {
    sent(actions)
        .into_iter()
        .map(|m| match m {
            PeerMsg::Commit { commit } => Event::PeerCommit(commit),
            PeerMsg::Key { key, v2, acks, resume, files, .. } => Event::PeerKey { key, v2, acks, resume, files },
            PeerMsg::Msg { payload } => Event::PeerRecord(payload),
            PeerMsg::Pake { msg } => Event::PeerPake(msg),
            PeerMsg::Confirm { mac } => Event::PeerConfirm(mac),
            PeerMsg::Resume(hello) => Event::PeerResume(hello),
        })
        .collect()
}

/// Feeds `events` to `to`, and what it answers back to `from`, until both are quiet; returns
/// every text each side showed.
fn shuttle(a: &mut Machine, b: &mut Machine, first: Vec<Action>, from_a: bool) -> (Vec<String>, Vec<String>) {
    if from_a {
        exchange(a, b, first, vec![])
    } else {
        exchange(a, b, vec![], first)
    }
}

/// As [`shuttle`], with what each side sent first.
fn exchange(a: &mut Machine, b: &mut Machine, from_a: Vec<Action>, from_b: Vec<Action>) -> (Vec<String>, Vec<String>) {
    let mut shown = (vec![], vec![]);
    let mut pending = (as_events(&from_a), as_events(&from_b));
    // pending.0: for b; pending.1: for a.
    while !pending.0.is_empty() || !pending.1.is_empty() {
        for event in std::mem::take(&mut pending.0) {
            let out = b.handle(event);
            shown.1.extend(out.iter().filter_map(|a| if let Action::Show(t) = a { Some(t.to_string()) } else { None }));
            pending.1.extend(as_events(&out));
        }
        for event in std::mem::take(&mut pending.1) {
            let out = a.handle(event);
            shown.0.extend(out.iter().filter_map(|a| if let Action::Show(t) = a { Some(t.to_string()) } else { None }));
            pending.0.extend(as_events(&out));
        }
    }
    shown
}

/// Two machines that resume, connected to each other through the test.
fn resuming_pair() -> (Machine, Machine) {
    let make = || {
        let mut m = Machine::new(Version::Hardened2).resuming(Duration::from_secs(60));
        m.handle(Event::Start);
        m.handle(typed("ABCD1234"));
        m
    };
    let (mut a, mut b) = (make(), make());
    let fa = a.handle(Event::PeerFound);
    let fb = b.handle(Event::PeerFound);
    exchange(&mut a, &mut b, fa, fb);
    assert_eq!((a.state().name(), b.state().name()), ("CONNECTED", "CONNECTED"));
    (a, b)
}

/// Both sides meet again and run the handshake; returns what each side showed.
fn meet(a: &mut Machine, b: &mut Machine) -> (Vec<String>, Vec<String>) {
    let fa = a.handle(Event::PeerFound);
    let fb = b.handle(Event::PeerFound);
    exchange(a, b, fa, fb)
}

fn rejoins(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Rejoin { .. }))
}

#[test]
fn a_dropped_session_resumes_with_every_line_once_and_in_order() {
    let (mut a, mut b) = resuming_pair();
    // a sends three lines; the first arrives (its receipt is lost), the other two are lost.
    let one = a.handle(line("one"));
    a.handle(line("two"));
    a.handle(line("three"));
    let shown = b.handle(as_events(&one).remove(0));
    assert!(shown.contains(&Action::Show(Zeroizing::new("one".into()))));
    b.handle(Event::AckDue); // the receipt, lost with the connection
                             // a's connection drops; the relay tells b its peer left.
    assert!(rejoins(&a.handle(Event::NetworkError("reset".into()))));
    assert!(rejoins(&b.handle(Event::PeerLeft)));
    assert_eq!((a.state().name(), b.state().name()), ("RESUMING", "RESUMING"));
    assert!(!a.can_send(), "lines wait while resuming");
    let Action::Rejoin { room: room_a, .. } = a.handle(Event::NetworkError("again".into())).pop().unwrap() else {
        panic!()
    };
    let Action::Rejoin { room: room_b, .. } = b.handle(Event::PeerLeft).pop().unwrap() else { panic!() };
    assert_eq!(room_a, room_b, "both meet in the rendezvous room");
    assert_ne!(room_a.as_str(), "ABCD1234", "the human code is never used again");
    let (_, shown_b) = meet(&mut a, &mut b);
    assert_eq!(shown_b, ["two", "three"], "exactly what was missing, in order");
    assert_eq!((a.state().name(), b.state().name()), ("CONNECTED", "CONNECTED"));
    // Lines flow after it, and the receipts confirm everything.
    let four = a.handle(line("four"));
    let (_, shown_b) = shuttle(&mut a, &mut b, four, true);
    assert_eq!(shown_b, ["four"]);
    let ack = b.handle(Event::AckDue);
    let said = a.handle(as_events(&ack).remove(0));
    assert_eq!(a.receipts.as_ref().unwrap().unconfirmed(), 0);
    // The lines re-sent after the drop are confirmed: the person is told, once.
    assert!(said.iter().any(|x| matches!(x, Action::Say(_, t) if t.starts_with("delivered:"))), "{said:?}");
}

#[test]
fn a_session_resumes_again_and_again() {
    let (mut a, mut b) = resuming_pair();
    for round in 0..5 {
        let text = format!("line {round}");
        a.handle(line(&text)); // lost
        a.handle(Event::Relay { code: 1001, reason: "shutting down".into() });
        b.handle(Event::Relay { code: 4011, reason: "peer lost".into() });
        let (_, shown_b) = meet(&mut a, &mut b);
        assert_eq!(shown_b, [text]);
    }
}

#[test]
fn a_resume_from_an_earlier_generation_destroys_the_session() {
    let (mut a, mut b) = resuming_pair();
    a.handle(Event::NetworkError("reset".into()));
    b.handle(Event::PeerLeft);
    let fa = a.handle(Event::PeerFound);
    let fb = b.handle(Event::PeerFound);
    let a_opens = sent(&fa).iter().any(|m| matches!(m, PeerMsg::Resume(_)));
    // The relay records the opening of the first resume...
    let old_opening = as_events(if a_opens { &fa } else { &fb }).remove(0);
    exchange(&mut a, &mut b, fa, fb);
    assert_eq!((a.state().name(), b.state().name()), ("CONNECTED", "CONNECTED"));
    // ...and at the next drop replays it to the side that answers.
    a.handle(Event::NetworkError("reset".into()));
    b.handle(Event::PeerLeft);
    a.handle(Event::PeerFound);
    b.handle(Event::PeerFound);
    let answerer = if a_opens { &mut b } else { &mut a };
    answerer.handle(old_opening);
    assert_eq!(ended(answerer), &End::ResumeFailed(crate::resume::ResumeError::Generation));
    assert_eq!(ended(answerer).exit_code(), crate::end::exit::SECURITY);
}

#[test]
fn a_resume_window_that_runs_out_ends_the_session_and_names_what_was_not_delivered() {
    let (mut a, _b) = resuming_pair();
    a.handle(line("lost line"));
    a.handle(Event::NetworkError("gone".into()));
    let until = a.deadline().unwrap();
    a.handle(Event::Deadline(until));
    assert!(matches!(ended(&a), End::PeerLost(why) if why.contains("--resume-window")), "{:?}", a.end());
    let left: Vec<String> = a.take_unconfirmed().iter().map(|t| t.to_string()).collect();
    assert_eq!(left, ["lost line"]);
}

#[test]
fn without_a_resume_window_a_drop_ends_the_session_as_before() {
    let (mut m, _) = connected();
    m.handle(Event::NetworkError("reset".into()));
    assert!(matches!(ended(&m), End::Network(_)));
    let (mut m, _) = connected();
    m.handle(Event::PeerLeft);
    assert!(matches!(ended(&m), End::PeerLost(_)));
}

#[test]
fn ctrl_c_while_resuming_ends_the_session() {
    let (mut a, _b) = resuming_pair();
    a.handle(Event::NetworkError("gone".into()));
    a.handle(Event::Quit);
    assert_eq!(ended(&a), &End::Quit);
}

/// Each receipt marks the lines it confirms delivered, once, oldest first; lines the peer has
/// not confirmed are not marked.
#[test]
fn a_receipt_marks_the_lines_it_confirms_delivered() {
    let (mut a, mut b) = resuming_pair();
    let delivered = |actions: &[Action]| -> Vec<String> {
        actions
            .iter()
            .flat_map(|x| match x {
                Action::Delivered(lines) => lines.iter().map(|l| l.to_string()).collect(),
                _ => vec![],
            })
            .collect()
    };
    let mut to_b = vec![];
    for text in ["one", "two"] {
        to_b.extend(as_events(&a.handle(line(text))));
    }
    for event in to_b {
        b.handle(event);
    }
    let ack = b.handle(Event::AckDue);
    let three = as_events(&a.handle(line("three")));
    assert_eq!(delivered(&a.handle(as_events(&ack).remove(0))), ["one", "two"]);
    for event in three {
        b.handle(event);
    }
    let ack = b.handle(Event::AckDue);
    assert_eq!(delivered(&a.handle(as_events(&ack).remove(0))), ["three"]);
    assert_eq!(a.receipts.as_ref().unwrap().unconfirmed(), 0);
}
