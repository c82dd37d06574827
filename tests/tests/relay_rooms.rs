//! Pairing, forwarding, departures and room reuse, through real WebSocket connections.

#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use ghostwire_tests::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn second_joiner_pairs_both_and_frames_pass_byte_identical() {
    within(20, async {
        let relay = TestRelay::with(|c| c.frame_burst = 10_000).await;
        let code = room("pair");
        let mut a = join(&relay.url(), &code).await;
        let mut b = join(&relay.url(), &code).await;
        // The first thing a lone client ever receives is PEER_FOUND: nothing was sent to it before.
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        // Odd spacing, key order, escapes and non-ASCII: a re-serialising relay would change these bytes.
        let odd = "{ \"payload\" : \"h\\u00e9llo \u{1F47B}\\n\",\"kind\":\"MSG\",  \"type\":\"SIGNAL\", \"n\":1.50 }";
        send(&mut a, odd).await;
        assert_eq!(expect_text(&mut b).await, odd);
        let back = signal("KEY_EXCHANGE", &"k".repeat(44));
        send(&mut b, back.clone()).await;
        assert_eq!(expect_text(&mut a).await, back);
        // Many frames keep their order.
        for i in 0..500 {
            send(&mut a, signal("MSG", &i.to_string())).await;
        }
        for i in 0..500 {
            assert_eq!(expect_text(&mut b).await, signal("MSG", &i.to_string()));
        }
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn third_joiner_is_refused_and_cannot_reach_the_room() {
    within(20, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("full");
        let (mut a, mut b) = pair(&relay.url(), &code).await;
        let mut c = connect(&relay.url()).await;
        send(&mut c, join_frame(&code)).await;
        // Whatever C tries after its JOIN must not reach A or B.
        let _ = c.send(Message::text(signal("MSG", "injected"))).await;
        expect_error(&mut c, 4002).await;
        send(&mut a, signal("MSG", "still private")).await;
        assert_eq!(expect_text(&mut b).await, signal("MSG", "still private"));
        send(&mut b, signal("MSG", "reply")).await;
        assert_eq!(expect_text(&mut a).await, signal("MSG", "reply"));
        assert_eq!(relay.metrics.errors(ghostwire_shared::ErrorCode::RoomFull), 1);
    })
    .await;
}

#[tokio::test]
async fn departure_tells_the_partner_after_its_last_frames_and_frees_the_room() {
    within(20, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("left");
        let (mut a, mut b) = pair(&relay.url(), &code).await;
        for i in 0..20 {
            send(&mut b, signal("MSG", &format!("last {i}"))).await;
        }
        b.close(None).await.unwrap();
        for i in 0..20 {
            assert_eq!(expect_text(&mut a).await, signal("MSG", &format!("last {i}")));
        }
        expect_peer_left(&mut a).await;
        // The same code is free again at once.
        let (mut c, mut d) = pair(&relay.url(), &code).await;
        send(&mut c, signal("MSG", "new room")).await;
        assert_eq!(expect_text(&mut d).await, signal("MSG", "new room"));
    })
    .await;
}

#[tokio::test]
async fn a_lone_waiter_that_leaves_frees_the_room() {
    within(20, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("lone");
        let a = join(&relay.url(), &code).await;
        // A dropped TCP connection (no close frame) counts as leaving.
        drop(a);
        // The room is free once the relay has seen the departure; pairing two newcomers proves it
        // (a stale waiter would take the first newcomer's place and the second would get 4002).
        let mut tries = 0;
        loop {
            tries += 1;
            let mut b = join(&relay.url(), &code).await;
            let mut c = join(&relay.url(), &code).await;
            match (recv(&mut b).await, recv(&mut c).await) {
                (Seen::Text(x), Seen::Text(y)) if x.contains("PEER_FOUND") && y.contains("PEER_FOUND") => break,
                _ => assert!(tries < 50, "room never freed"),
            }
            // A relay that has not processed the disconnect yet: wait for its connection count to drop.
            while relay.metrics.connections_open.get() > 0 {
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn two_hundred_rooms_at_once_each_stay_private() {
    within(60, async {
        let relay = TestRelay::with(|c| c.max_conns_per_ip = 1000).await;
        let url = relay.url();
        let mut tasks = Vec::new();
        for r in 0..200 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let code = room(&format!("R{r}"));
                let (mut a, mut b) = pair(&url, &code).await;
                for i in 0..20 {
                    send(&mut a, signal("MSG", &format!("{code}/{i}"))).await;
                    send(&mut b, signal("MSG", &format!("{code}/b{i}"))).await;
                }
                for i in 0..20 {
                    assert_eq!(expect_text(&mut b).await, signal("MSG", &format!("{code}/{i}")));
                    assert_eq!(expect_text(&mut a).await, signal("MSG", &format!("{code}/b{i}")));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (_, metrics) = http_get(relay.admin, "/metrics").await;
        assert!(metrics.contains("ghostwire_rooms_paired_total 200"), "{metrics}");
        assert!(metrics.contains("ghostwire_frames_forwarded_total 8000"), "{metrics}");
    })
    .await;
}

#[tokio::test]
async fn served_on_slash_and_slash_ws_only() {
    within(20, async {
        let relay = TestRelay::with(|_| {}).await;
        let code = room("path");
        let mut a = join(&format!("ws://{}/ws", relay.addr), &code).await;
        let mut b = join(&relay.url(), &code).await;
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        let err =
            tokio_tungstenite::connect_async(format!("ws://{}/other", relay.addr)).await.err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("404")), "{err:?}");
        // The public port serves no metrics.
        let answer = ghostwire_relay::probe::get(relay.addr, "/metrics", FRAME_WAIT).await;
        assert!(!matches!(answer, Ok((200, _))), "{answer:?}");
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_and_its_partner_told() {
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.ping_interval = std::time::Duration::from_millis(100);
            c.ping_timeout = std::time::Duration::from_millis(200);
        })
        .await;
        let code = room("ping");
        let (mut a, b) = pair(&relay.url(), &code).await;
        // B is never polled again, so it never answers a ping; A keeps reading (and answering) throughout.
        expect_peer_left(&mut a).await;
        assert_eq!(relay.metrics.ping_timeouts.get(), 1);
        drop(b);
    })
    .await;
}

#[tokio::test]
async fn client_close_frame_is_answered() {
    within(20, async {
        let relay = TestRelay::with(|_| {}).await;
        let mut a = join(&relay.url(), &room("close")).await;
        a.close(None).await.unwrap();
        // The relay answers our close; the stream then ends.
        loop {
            match a.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn the_in_process_upstream_keeps_the_room_contract() {
    let relay = TestRelay::with(|_| {}).await;
    within(30, room_contract(&relay.url(), &relay.url())).await;
}
