//! Every bad input closes that one connection with its code, and nothing else breaks.

#![allow(clippy::unwrap_used)]

use futures_util::SinkExt;
use ghostwire_shared::ErrorCode;
use ghostwire_tests::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A room that must keep working while strangers misbehave next to it.
async fn still_works(a: &mut Ws, b: &mut Ws, n: usize) {
    send(a, signal("MSG", &format!("ping {n}"))).await;
    assert_eq!(expect_text(b).await, signal("MSG", &format!("ping {n}")));
}

#[tokio::test]
async fn each_deviation_closes_only_its_connection_with_its_code() {
    within(30, async {
        let relay = TestRelay::with(|c| c.max_frame_bytes = ghostwire_shared::MIN_MAX_FRAME_BYTES).await;
        let url = relay.url();
        let (mut a, mut b) = pair(&url, &room("bystand")).await;
        let waiting = room("waiting");
        // (frames to send after connecting, expected code)
        let cases: Vec<(&str, Vec<Message>, u16)> = vec![
            ("not JSON", vec![Message::text("hello")], 4000),
            ("JSON array", vec![Message::text(r#"["JOIN","ABCDEFGH"]"#)], 4000),
            ("JSON number", vec![Message::text("7")], 4000),
            ("binary frame", vec![Message::binary(b"{}".to_vec())], 4000),
            ("unknown type", vec![Message::text(r#"{"type":"HELLO"}"#)], 4000),
            ("missing type", vec![Message::text(r#"{"room":"ABCDEFGH"}"#)], 4000),
            ("JOIN without room", vec![Message::text(r#"{"type":"JOIN"}"#)], 4000),
            ("bad room code", vec![Message::text(join_frame("short"))], 4001),
            ("lower-case room code", vec![Message::text(join_frame("abcdefgh"))], 4001),
            ("SIGNAL before JOIN", vec![Message::text(signal("MSG", "x"))], 4003),
            ("relay-only PEER_FOUND", vec![Message::text(r#"{"type":"PEER_FOUND"}"#)], 4003),
            ("relay-only ERROR", vec![Message::text(r#"{"type":"ERROR","code":4000,"reason":"x"}"#)], 4003),
            (
                "SIGNAL before PEER_FOUND",
                vec![Message::text(join_frame(&waiting)), Message::text(signal("MSG", "x"))],
                4003,
            ),
            (
                "second JOIN",
                vec![Message::text(join_frame(&room("twice"))), Message::text(join_frame(&room("again")))],
                4003,
            ),
            ("SIGNAL without kind", vec![Message::text(r#"{"type":"SIGNAL","payload":"x"}"#)], 4000),
            (
                "oversize frame",
                vec![Message::text(format!(
                    r#"{{"type":"JOIN","room":"ABCDEFGH","pad":"{}"}}"#,
                    "x".repeat(ghostwire_shared::MIN_MAX_FRAME_BYTES)
                ))],
                4005,
            ),
        ];
        for (n, (what, frames, code)) in cases.into_iter().enumerate() {
            let mut c = connect(&url).await;
            for f in frames {
                // The relay may close before the last frame is written; that is the point.
                let _ = c.send(f).await;
            }
            tokio::time::timeout(FRAME_WAIT, expect_error(&mut c, code))
                .await
                .unwrap_or_else(|_| panic!("{what}: no error {code}"));
            still_works(&mut a, &mut b, n).await;
        }
        // The waiting room's peer was refused for its SIGNAL, so the room was freed.
        let (_x, _y) = pair(&url, &waiting).await;
        assert_eq!(relay.metrics.errors(ErrorCode::Malformed), 8);
        assert_eq!(relay.metrics.errors(ErrorCode::TooLarge), 1);
    })
    .await;
}

#[tokio::test]
async fn a_deviation_inside_a_room_ends_it_and_tells_the_partner() {
    within(20, async {
        let relay = TestRelay::with(|_| {}).await;
        let (mut a, mut b) = pair(&relay.url(), &room("inroom")).await;
        send(&mut a, "{not json").await;
        expect_error(&mut a, 4000).await;
        expect_peer_left(&mut b).await;
        let (mut a, mut b) = pair(&relay.url(), &room("inroom2")).await;
        send(&mut b, join_frame(&room("other"))).await;
        expect_error(&mut b, 4003).await;
        expect_peer_left(&mut a).await;
    })
    .await;
}

#[tokio::test]
async fn oversize_frame_is_refused_before_it_is_buffered() {
    within(20, async {
        // A frame header announcing 1 GiB, and no payload: a relay that buffers first would wait for it.
        let relay = TestRelay::with(|c| c.max_frame_bytes = ghostwire_shared::MIN_MAX_FRAME_BYTES).await;
        let mut c = connect(&relay.url()).await;
        send(&mut c, join_frame(&room("big"))).await;
        let raw = match c.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
            _ => unreachable!(),
        };
        // FIN + text, masked, 127 => 64-bit length, then the mask key.
        let mut header = vec![0x81u8, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        raw.write_all(&header).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(FRAME_WAIT, raw.read_to_end(&mut got)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains(r#""code":4005"#), "{text}");
    })
    .await;
}

#[tokio::test]
async fn join_and_wait_deadlines() {
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.join_timeout = Duration::from_millis(200);
            c.wait_timeout = Duration::from_millis(300);
        })
        .await;
        let mut silent = connect(&relay.url()).await;
        expect_error(&mut silent, 4008).await;
        let code = room("wait");
        let mut lone = join(&relay.url(), &code).await;
        expect_error(&mut lone, 4010).await;
        // The expired room is free again; a pair formed in it is not subject to the wait deadline.
        let (mut a, mut b) = pair(&relay.url(), &code).await;
        // Keep talking for twice the wait deadline: the pair must outlive it.
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for n in 0..12 {
            tick.tick().await;
            still_works(&mut a, &mut b, n).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_stalled_http_upgrade_is_dropped_at_the_handshake_deadline() {
    within(20, async {
        let relay = TestRelay::with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
        let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        // The relay closes the socket without an answer.
        let n = tokio::time::timeout(FRAME_WAIT, s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(relay.metrics.refusals(ghostwire_relay::metrics::Refusal::Timeout), 1);
    })
    .await;
}

/// Unsolicited pongs (and pings) are frames too: a flood of them is rate limited like any other.
#[tokio::test]
async fn a_flood_of_pongs_is_rate_limited() {
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.frame_rate = 1;
            c.frame_burst = 5;
        })
        .await;
        let mut ws = join(&relay.url(), &room("pongs")).await;
        for _ in 0..50 {
            if ws.send(Message::Pong(Default::default())).await.is_err() {
                break;
            }
        }
        expect_error(&mut ws, 4004).await;
        assert_eq!(relay.metrics.errors(ErrorCode::RateLimited), 1);
    })
    .await;
}

#[tokio::test]
async fn rate_limit_drops_a_flooder_and_lets_the_burst_through() {
    within(20, async {
        let relay = TestRelay::with(|c| {
            c.frame_rate = 1;
            c.frame_burst = 5;
        })
        .await;
        let (mut a, mut b) = pair(&relay.url(), &room("flood")).await;
        // JOIN took one token; four SIGNALs fit the burst, the next ones do not (at 1/s the bucket
        // cannot refill 45 tokens while they are sent).
        for i in 0..50 {
            if a.send(Message::text(signal("MSG", &i.to_string()))).await.is_err() {
                break;
            }
        }
        let mut delivered = 0;
        loop {
            let t = expect_text(&mut b).await;
            if t.contains("PEER_LEFT") {
                break;
            }
            delivered += 1;
        }
        assert!((4..=6).contains(&delivered), "{delivered} frames passed a bucket of 5");
        loop {
            match recv(&mut a).await {
                Seen::Text(t) if t.contains("SIGNAL") => continue,
                Seen::Text(t) => {
                    assert!(t.contains(r#""code":4004"#), "{t}");
                    break;
                }
                other => panic!("expected ERROR 4004, got {other:?}"),
            }
        }
        assert_eq!(relay.metrics.errors(ErrorCode::RateLimited), 1);
    })
    .await;
}

#[tokio::test]
async fn max_rooms_refuses_a_new_room_but_not_a_second_peer() {
    within(20, async {
        let relay = TestRelay::with(|c| c.max_rooms = 1).await;
        let code = room("cap");
        let mut a = join(&relay.url(), &code).await;
        let mut other = join(&relay.url(), &room("cap2")).await;
        expect_error(&mut other, 4006).await;
        // Joining the existing room is not opening a new one.
        let mut b = join(&relay.url(), &code).await;
        expect_peer_found(&mut a).await;
        expect_peer_found(&mut b).await;
        // Once the room is freed, a new one fits again.
        drop((a, b));
        let (mut tries, fresh) = (0, room("cap3"));
        loop {
            let mut c = join(&relay.url(), &fresh).await;
            let mut d = join(&relay.url(), &fresh).await;
            if recv(&mut c).await == Seen::Text(r#"{"type":"PEER_FOUND"}"#.into()) {
                expect_peer_found(&mut d).await;
                break;
            }
            tries += 1;
            assert!(tries < 100, "the freed room was never released");
            while relay.metrics.connections_open.get() > 0 {
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
}
