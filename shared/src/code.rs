//! The error codes of the protocol, in one place.
//!
//! Every code is both the `code` of an ERROR frame and the WebSocket close
//! code the relay closes the connection with, so a client sees the same
//! number whichever it reads. Application codes live in 4000-4999 as RFC 6455
//! reserves that range for applications; 1001 ("going away") is the standard
//! code for a server that shuts down.

use std::fmt;

/// Why the relay ended a connection. The discriminant is the wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The relay is shutting down (WebSocket "going away").
    GoingAway = 1001,
    /// Not a JSON object in a text frame, an unknown `type`, or a field of the wrong type.
    Malformed = 4000,
    /// JOIN with a room code that does not match `^[A-Z0-9]{8,16}$`.
    BadRoomCode = 4001,
    /// The room already holds two peers.
    RoomFull = 4002,
    /// A valid frame at the wrong time: SIGNAL before PEER_FOUND, a second JOIN,
    /// a first frame other than JOIN, or a relay-only type sent by a client.
    OutOfOrder = 4003,
    /// More frames than the per-connection token bucket allows.
    RateLimited = 4004,
    /// A frame larger than the relay's frame limit.
    TooLarge = 4005,
    /// The relay holds as many rooms as it is configured to.
    RelayFull = 4006,
    /// The room service behind the relay (its upstream) could not be reached.
    UpstreamUnavailable = 4007,
    /// No JOIN arrived within the join deadline.
    JoinTimeout = 4008,
    /// The connection did not read what it was sent fast enough.
    SlowConsumer = 4009,
    /// No second peer joined within the wait deadline.
    WaitTimeout = 4010,
    /// The partner was lost without leaving: its relay died, or the upstream between the two
    /// relays failed for longer than frames can be held. Unlike PEER_LEFT, nobody chose to leave.
    PeerLost = 4011,
    /// The room's code failed a verification (a client said BURN): the relay refuses the room
    /// for `--burn-ttl`. Make a new code.
    Burnt = 4012,
}

impl ErrorCode {
    /// Every code, for exhaustive tables (metrics, documentation tests).
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::GoingAway,
        ErrorCode::Malformed,
        ErrorCode::BadRoomCode,
        ErrorCode::RoomFull,
        ErrorCode::OutOfOrder,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::RelayFull,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::JoinTimeout,
        ErrorCode::SlowConsumer,
        ErrorCode::WaitTimeout,
        ErrorCode::PeerLost,
        ErrorCode::Burnt,
    ];

    /// The number on the wire (ERROR `code` and WebSocket close code).
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number, if it is one of ours.
    pub fn from_u16(n: u16) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_u16() == n)
    }

    /// The short reason the relay puts in ERROR frames and close frames.
    pub const fn reason(self) -> &'static str {
        match self {
            ErrorCode::GoingAway => "relay shutting down: resume elsewhere",
            ErrorCode::Malformed => "malformed frame",
            ErrorCode::BadRoomCode => "bad room code",
            ErrorCode::RoomFull => "room full",
            ErrorCode::OutOfOrder => "frame out of order",
            ErrorCode::RateLimited => "rate limited",
            ErrorCode::TooLarge => "frame too large",
            ErrorCode::RelayFull => "relay at capacity",
            ErrorCode::UpstreamUnavailable => "room service unavailable",
            ErrorCode::JoinTimeout => "join timeout",
            ErrorCode::SlowConsumer => "slow consumer",
            ErrorCode::WaitTimeout => "waited too long for a peer",
            ErrorCode::PeerLost => "peer lost",
            ErrorCode::Burnt => "code burnt: make a new one with --new",
        }
    }

    /// A stable snake_case name, for metrics labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::GoingAway => "going_away",
            ErrorCode::Malformed => "malformed",
            ErrorCode::BadRoomCode => "bad_room_code",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RelayFull => "relay_full",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::JoinTimeout => "join_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::WaitTimeout => "wait_timeout",
            ErrorCode::PeerLost => "peer_lost",
            ErrorCode::Burnt => "burnt",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.as_u16(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_u16()), "duplicate code {c}");
            assert_eq!(ErrorCode::from_u16(c.as_u16()), Some(c));
            assert!(c.as_u16() == 1001 || (4000..5000).contains(&c.as_u16()));
        }
        assert_eq!(ErrorCode::from_u16(4999), None);
    }
}
