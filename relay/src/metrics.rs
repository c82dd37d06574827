//! Counters, rendered as Prometheus text on the admin listener.
//!
//! Plain atomics, no labels beyond the error code: nothing per room or per
//! client exists here, so a scrape can never reveal a room code or an address.
//! Hot-path counters (frames, bytes) are added once per write batch, not once
//! per frame, to keep shared cache lines off the frame path.

use ghostwire_shared::ErrorCode;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The relay's counters.
#[derive(Default)]
pub struct Metrics {
    /// WebSocket connections accepted (handshake completed).
    pub connections_total: AtomicU64,
    /// WebSocket connections open now.
    pub connections_open: AtomicU64,
    /// Connections refused before the WebSocket opened (limits, bad path, failed or slow handshake).
    pub handshakes_refused: AtomicU64,
    /// Rooms that got their second peer.
    pub rooms_paired_total: AtomicU64,
    /// SIGNAL frames delivered to a client.
    pub frames_forwarded: AtomicU64,
    /// Bytes of SIGNAL frames delivered to a client.
    pub bytes_forwarded: AtomicU64,
    /// Connections dropped because the client stopped answering pings.
    pub ping_timeouts: AtomicU64,
    /// The distributed upstream's counters (zero with the in-process upstream).
    pub upstream: UpstreamMetrics,
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

/// Counters of a distributed upstream (NATS): what crossed the broker and what went wrong.
#[derive(Default)]
pub struct UpstreamMetrics {
    /// Frames received from the broker for this relay's clients.
    pub frames_in: AtomicU64,
    /// Frames published to the broker for partners.
    pub frames_out: AtomicU64,
    /// Publishes (frames, departures, heartbeats) the client library refused.
    pub publish_errors: AtomicU64,
    /// Reconnections to the broker after a lost connection.
    pub reconnects: AtomicU64,
    /// Joins refused because both slots of the room were taken (4002), decided by the broker.
    pub slot_conflicts: AtomicU64,
    /// Partners ended because their relay stopped sending heartbeats.
    pub peers_lost: AtomicU64,
    /// Frames sent again because they were not acknowledged (after a reconnect, a reported gap,
    /// or a stall).
    pub retransmits: AtomicU64,
    /// Messages dropped because they did not come from the seat they claim (a stale or confused relay).
    pub foreign_messages: AtomicU64,
}

impl Metrics {
    /// Counts a connection ended with `code`.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Connections ended with `code` so far.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL.iter().position(|c| *c == code).map_or(0, |i| self.errors[i].load(Relaxed))
    }

    /// The Prometheus text exposition, with `rooms_open` supplied by the upstream.
    pub fn render(&self, rooms_open: usize, upstream: &str) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP ghostwire_{name} {help}\n# TYPE ghostwire_{name} {kind}\nghostwire_{name} {value}\n"
            );
        };
        metric("connections_total", "counter", "WebSocket connections accepted.", self.connections_total.load(Relaxed));
        metric("connections_open", "gauge", "WebSocket connections open now.", self.connections_open.load(Relaxed));
        metric(
            "handshakes_refused_total",
            "counter",
            "Connections refused or failed before the WebSocket opened.",
            self.handshakes_refused.load(Relaxed),
        );
        metric(
            "rooms_open",
            "gauge",
            "Rooms in which this relay holds a seat, joins in progress included; a room split over two relays counts on each (--max-rooms bounds this number, per relay).",
            rooms_open as u64,
        );
        metric(
            "rooms_paired_total",
            "counter",
            "Rooms that got their second peer.",
            self.rooms_paired_total.load(Relaxed),
        );
        metric(
            "frames_forwarded_total",
            "counter",
            "SIGNAL frames delivered to clients.",
            self.frames_forwarded.load(Relaxed),
        );
        metric(
            "bytes_forwarded_total",
            "counter",
            "Bytes of SIGNAL frames delivered to clients.",
            self.bytes_forwarded.load(Relaxed),
        );
        metric(
            "ping_timeouts_total",
            "counter",
            "Connections dropped for not answering pings.",
            self.ping_timeouts.load(Relaxed),
        );
        let u = &self.upstream;
        metric("upstream_frames_in_total", "counter", "Frames received from the broker.", u.frames_in.load(Relaxed));
        metric("upstream_frames_out_total", "counter", "Frames published to the broker.", u.frames_out.load(Relaxed));
        metric(
            "upstream_publish_errors_total",
            "counter",
            "Publishes to the broker that failed.",
            u.publish_errors.load(Relaxed),
        );
        metric("upstream_reconnects_total", "counter", "Reconnections to the broker.", u.reconnects.load(Relaxed));
        metric(
            "upstream_slot_conflicts_total",
            "counter",
            "Joins refused by the broker because the room was full.",
            u.slot_conflicts.load(Relaxed),
        );
        metric(
            "upstream_peers_lost_total",
            "counter",
            "Partners ended because their relay went silent.",
            u.peers_lost.load(Relaxed),
        );
        metric(
            "upstream_retransmits_total",
            "counter",
            "Frames sent again because the partner had not acknowledged them.",
            u.retransmits.load(Relaxed),
        );
        metric(
            "upstream_foreign_messages_total",
            "counter",
            "Messages dropped because they did not come from the partner seat they name.",
            u.foreign_messages.load(Relaxed),
        );
        let _ = write!(
            out,
            "# HELP ghostwire_errors_total Connections ended with an ERROR, by code.\n# TYPE ghostwire_errors_total counter\n"
        );
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "ghostwire_errors_total{{code=\"{}\",reason=\"{}\"}} {}",
                code.as_u16(),
                code.name(),
                self.errors[i].load(Relaxed)
            );
        }
        let _ = write!(out, "# HELP ghostwire_upstream_info The upstream in use.\n# TYPE ghostwire_upstream_info gauge\nghostwire_upstream_info{{upstream=\"{upstream}\"}} 1\n");
        out
    }
}
