//! A hostile sender, written here with the client's own state machine (so it speaks the
//! protocol and holds the session's keys), offers files under names meant to escape the
//! receiver's directory; a real `ghostwire` at a terminal receives the offers. Each name is
//! refused, answered FAILED, and nothing is written anywhere.

#![allow(clippy::unwrap_used)]

use futures_util::SinkExt;
use ghostwire::crypto::Version;
use ghostwire::proto::{self, PeerMsg};
use ghostwire::state::{Action, Event, Machine};
use ghostwire::transfer::FileRecord;
use ghostwire_shared::RelayFrame;
use ghostwire_tests::*;
use tokio_tungstenite::tungstenite::Message;
use zeroize::Zeroizing;

/// A peer driven by the client's state machine over a raw WebSocket.
struct Driven {
    ws: Ws,
    machine: Machine,
}

impl Driven {
    async fn join(url: &str, code: &str) -> Driven {
        let mut machine = Machine::new(Version::Hardened2);
        machine.handle(Event::Start);
        machine.handle(Event::CodeTyped(Zeroizing::new(code.to_owned())));
        Driven { ws: join(url, code).await, machine }
    }

    /// Feeds the machine the next frame from the relay; sends what it answers; returns the
    /// file records it handed over.
    async fn step(&mut self) -> Vec<FileRecord> {
        let text = match recv(&mut self.ws).await {
            Seen::Text(t) => t,
            other => panic!("the relay said {other:?}"),
        };
        let event = match RelayFrame::parse(&text, 1 << 16).unwrap() {
            RelayFrame::PeerFound => Event::PeerFound,
            RelayFrame::Signal(s) => match proto::decode(&s).unwrap() {
                PeerMsg::Commit { commit } => Event::PeerCommit(commit),
                PeerMsg::Key { key, v2, acks, resume, files, .. } => Event::PeerKey { key, v2, acks, resume, files },
                PeerMsg::Msg { payload } => Event::PeerRecord(payload),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        };
        self.act(event).await
    }

    async fn act(&mut self, event: Event) -> Vec<FileRecord> {
        let mut files = vec![];
        for action in self.machine.handle(event) {
            match action {
                Action::Send(frame) => self.ws.send(Message::text(frame)).await.unwrap(),
                Action::File(record) => files.push(record),
                _ => {}
            }
        }
        files
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_senders_names_are_refused_and_nothing_is_written() {
    let relay = TestRelay::with(|_| {}).await;
    let dir = TempDir::new("hostile-files");
    let (inbox, outside) = (dir.0.join("inbox"), dir.0.join("outside"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    within(60, async {
        let code = room("hostile");
        let mut attacker = Driven::join(&relay.url(), &code).await;
        let url = relay.url();
        let (code2, inbox2) = (code.clone(), inbox.clone());
        let victim = tokio::task::spawn_blocking(move || {
            let mut t = TermPeer::start(&["--relay", &url, &code2], &inbox2);
            t.expect("verification code");
            t
        });
        // The key exchange, as any peer runs it.
        while !attacker.machine.can_send_file() {
            attacker.step().await;
        }
        let victim_term = victim.await.unwrap();
        let names = [
            "../outside/escaped",
            "/etc/passwd",
            "..",
            "sub/dir",
            "..\\outside\\win",
            "C:evil",
            "NUL",
            "bell\u{7}",
            "right\u{202e}fdp.exe",
        ];
        let mut term = victim_term;
        for (i, name) in names.iter().enumerate() {
            let id = u32::try_from(i + 1).unwrap();
            let offer = FileRecord::Offer { id, size: 4, name: (*name).to_owned() };
            attacker.act(Event::File(offer)).await;
            // The answer: FAILED for that transfer (receipts in between are skipped).
            let answer = loop {
                if let Some(r) = attacker.step().await.pop() {
                    break r;
                }
            };
            assert!(matches!(answer, FileRecord::Failed { id: got, .. } if got == id), "{name:?}: {answer:?}");
            term = tokio::task::spawn_blocking(move || {
                term.expect("whose name is refused");
                term
            })
            .await
            .unwrap();
        }
        // A chunk for an offer not accepted is a deviation: the session ends.
        let chunk = FileRecord::Chunk { id: 20, data: Zeroizing::new(b"evil".to_vec()) };
        attacker.act(Event::File(FileRecord::Offer { id: 20, size: 4, name: "fine".into() })).await;
        attacker.act(Event::File(chunk)).await;
        let mut term = tokio::task::spawn_blocking(move || {
            term.expect("session destroyed: protocol violation");
            term
        })
        .await
        .unwrap();
        drop(term.expect("(exit"));
    })
    .await;
    for d in [&inbox, &outside] {
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "something was written in {d:?}");
    }
    assert!(std::fs::read_dir(&dir.0).unwrap().count() == 2, "something was written beside the inbox");
}

/// A transfer through a connection that is reset three times (a proxy that resets it and
/// refuses new connections for a moment) goes on after each resume from where it was, and the
/// file arrives byte-identical, verified, with no code typed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_three_times_completes() {
    let relay = TestRelay::with(|_| {}).await;
    let proxy = CutProxy::start(relay.addr).await;
    let dir = TempDir::new("cut-files");
    let (from, to) = (dir.0.join("from"), dir.0.join("to"));
    std::fs::create_dir_all(&from).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    let content: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(from.join("cut.bin"), &content).unwrap();
    let code = room("cutfiles");
    let (via_proxy, direct) = (proxy.url(), relay.url());
    let (cuts_tx, mut cuts) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (resumed_tx, mut resumed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (from2, to2) = (from.clone(), to.clone());
    let people = tokio::task::spawn_blocking(move || {
        let mut a = TermPeer::start(&["--relay", &via_proxy, &code], &from2);
        a.expect("searching");
        let mut b = TermPeer::start(&["--relay", &direct, &code], &to2);
        a.expect("verification code");
        b.expect("verification code");
        a.line("/send cut.bin");
        b.expect("your peer offers cut.bin");
        b.line("/accept");
        for tenth in ["10%", "30%", "60%"] {
            b.expect(&format!("receiving cut.bin: {tenth}"));
            cuts_tx.send(()).unwrap();
            a.expect("back: resumed");
            resumed_tx.send(()).unwrap();
        }
        b.expect("received cut.bin (16.0 MiB), SHA-256 verified");
        a.expect("your peer verified every byte");
        a.line("/quit");
        b.expect("your peer left");
    });
    within(120, async {
        for _ in 0..3 {
            cuts.recv().await.unwrap();
            proxy.cut(std::time::Duration::from_millis(300));
            resumed.recv().await.unwrap();
        }
        people.await.unwrap();
    })
    .await;
    assert_eq!(std::fs::read(to.join("cut.bin")).unwrap(), content, "the file changed across the cuts");
    assert_eq!(std::fs::read_dir(&to).unwrap().count(), 1, "something else was left");
}
