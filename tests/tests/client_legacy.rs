//! Interop with a peer that speaks only the prototype's wire format (v1), written here from
//! that format alone with `crypto_box`: KEY_EXCHANGE carries just `key`, and a MSG payload is
//! base64(nonce ‖ crypto_box(UTF-8 text)).

#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use crypto_box::aead::{Aead, AeadCore, OsRng};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use ghostwire_tests::*;
use serde_json::{json, Value};

/// The prototype's side of a session, over a WebSocket joined to a room.
struct V1Peer {
    ws: Ws,
    boxed: Option<SalsaBox>,
    sent: Vec<String>,
}

impl V1Peer {
    /// Joins, waits for PEER_FOUND, exchanges keys the v1 way.
    async fn join(url: &str, room: &str) -> V1Peer {
        let mut ws = join(url, room).await;
        expect_peer_found(&mut ws).await;
        let secret = SecretKey::generate(&mut OsRng);
        let key = B64.encode(secret.public_key().as_bytes());
        send(&mut ws, json!({"type": "SIGNAL", "kind": "KEY_EXCHANGE", "key": key}).to_string()).await;
        let mut peer = V1Peer { ws, boxed: None, sent: Vec::new() };
        let theirs: Value = serde_json::from_str(&expect_text(&mut peer.ws).await).unwrap();
        if theirs["kind"] == "KEY_EXCHANGE" && theirs.get("v").is_none() {
            let bytes: [u8; 32] = B64.decode(theirs["key"].as_str().unwrap()).unwrap().try_into().unwrap();
            peer.boxed = Some(SalsaBox::new(&PublicKey::from(bytes), &secret));
        }
        peer
    }

    async fn say(&mut self, text: &str) {
        let boxed = self.boxed.as_ref().unwrap();
        let nonce = SalsaBox::generate_nonce(&mut OsRng);
        let mut blob = nonce.to_vec();
        blob.extend(boxed.encrypt(&nonce, text.as_bytes()).unwrap());
        let frame = json!({"type": "SIGNAL", "kind": "MSG", "payload": B64.encode(blob)}).to_string();
        self.sent.push(frame.clone());
        send(&mut self.ws, frame).await;
    }

    async fn heard(&mut self) -> String {
        let v: Value = serde_json::from_str(&expect_text(&mut self.ws).await).unwrap();
        assert_eq!(v["kind"], "MSG", "{v}");
        let blob = B64.decode(v["payload"].as_str().unwrap()).unwrap();
        let (nonce, ct) = blob.split_at(24);
        String::from_utf8(self.boxed.as_ref().unwrap().decrypt(nonce.into(), ct).unwrap()).unwrap()
    }
}

#[tokio::test]
async fn legacy_flag_talks_to_a_prototype_peer_both_ways() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("legacy");
        let mut g = Peer::start(&["--relay", &relay.url(), "--legacy-v1", &code]);
        g.status("searching").await;
        let mut v1 = V1Peer::join(&relay.url(), &code).await;
        assert!(v1.boxed.is_some(), "ghostwire --legacy-v1 must send a v1 KEY_EXCHANGE (no \"v\")");
        g.status("no verification code").await;
        for i in 0..10 {
            v1.say(&format!("from the prototype {i} ✓")).await;
        }
        for i in 0..10 {
            assert_eq!(g.heard().await, format!("from the prototype {i} ✓"));
        }
        g.say("from ghostwire").await;
        assert_eq!(v1.heard().await, "from ghostwire");
        // Even in v1, a replayed frame is caught (by its nonce).
        let again = v1.sent[0].clone();
        send(&mut v1.ws, again).await;
        let line = g.status("session destroyed").await;
        assert!(line.contains("replayed"), "{line}");
        assert_eq!(g.exit().await.0, 5);
    })
    .await;
}

/// A peer that does not say what it takes (the prototype, and v2 clients before `rx`, whose
/// flood limit is 60/s) is sent 20 lines a second after a burst of 50, however fast they come.
#[tokio::test]
async fn a_peer_that_does_not_announce_its_rate_is_sent_at_most_20_lines_a_second() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("pace");
        let mut g = Peer::start(&["--relay", &relay.url(), "--legacy-v1", &code]);
        g.status("searching").await;
        let mut v1 = V1Peer::join(&relay.url(), &code).await;
        g.status("no verification code").await;
        for i in 0..90 {
            g.say(&format!("paced {i}")).await;
        }
        let mut first_after_burst = None;
        for i in 0..90 {
            assert_eq!(v1.heard().await, format!("paced {i}"));
            if i == 50 {
                first_after_burst = Some(std::time::Instant::now());
            }
        }
        // 39 more lines after the burst at 20/s take at least 1.95 s (a lower bound: a slow
        // machine only makes it longer).
        let paced = first_after_burst.unwrap().elapsed();
        assert!(paced >= std::time::Duration::from_millis(1_850), "39 lines in {paced:?}: faster than 20/s");
    })
    .await;
}

#[tokio::test]
async fn without_the_flag_a_prototype_peer_is_refused_by_name() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("nolegacy");
        let mut g = Peer::start(&["--relay", &relay.url(), &code]);
        g.status("searching").await;
        let v1 = V1Peer::join(&relay.url(), &code).await;
        // ghostwire sent a v2 commitment, never its key: no silent downgrade.
        assert!(v1.boxed.is_none());
        let line = g.status("session destroyed").await;
        assert!(line.contains("legacy v1") && line.contains("--legacy-v1"), "{line}");
        assert_eq!(g.exit().await.0, 4);
    })
    .await;
}
