//! The session's state machine: the prototype's eight states, one transition function.
//!
//! No I/O happens here. [`transition`] takes the current [`State`] and an
//! [`Event`] and returns the next state with the [`Action`] the driver
//! (`session`) must perform, or [`Unexpected`] for any pair not in the table
//! below. The driver treats `Unexpected` as a protocol deviation: the session
//! goes through DISCONNECTED to SESSION_DESTROYED.
//!
//! | state | event | next | action |
//! |---|---|---|---|
//! | INIT | Start | INPUT_VALIDATION | prompt for the room code |
//! | INPUT_VALIDATION | CodeRejected | INPUT_VALIDATION | say why, prompt again |
//! | INPUT_VALIDATION | CodeAccepted | SEARCHING | connect to the relay, JOIN |
//! | SEARCHING | PeerFound | USER_FOUND | generate keys, send commitment (v2) or key (v1) |
//! | USER_FOUND | KeysSent | KEY_SETUP | — |
//! | KEY_SETUP | PeerCommit | KEY_SETUP | record it, reveal our key (v2) |
//! | KEY_SETUP | PeerKey | CONNECTED | check it, derive the box, show the verification code, flush queued lines |
//! | CONNECTED | PeerMsg | CONNECTED | decrypt, check, show |
//! | CONNECTED | UserLine | CONNECTED | encrypt, send |
//! | SEARCHING, USER_FOUND, KEY_SETUP | UserLine | same | queue until CONNECTED |
//! | INPUT_VALIDATION … CONNECTED | PeerLeft, RelayError, NetworkError, Deviation, Quit | DISCONNECTED | close the socket, wipe |
//! | DISCONNECTED | Wiped | SESSION_DESTROYED | show the reason, exit |

use std::fmt;

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Nothing has happened yet.
    Init,
    /// Waiting for a valid room code.
    InputValidation,
    /// Connected to the relay, waiting for the peer.
    Searching,
    /// The relay paired us; keys not yet sent.
    UserFound,
    /// Keys sent; waiting for the peer's.
    KeySetup,
    /// Keys agreed: messages flow.
    Connected,
    /// Tearing down: socket closing, secrets being wiped.
    Disconnected,
    /// Done. Nothing is left in memory.
    SessionDestroyed,
}

/// Something that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The program started.
    Start,
    /// A valid room code was entered.
    CodeAccepted,
    /// An invalid room code was entered.
    CodeRejected,
    /// The relay sent PEER_FOUND.
    PeerFound,
    /// Our keys were generated and our first key frame sent (internal).
    KeysSent,
    /// The peer's KEY_COMMIT arrived.
    PeerCommit,
    /// The peer's KEY_EXCHANGE arrived.
    PeerKey,
    /// The peer's MSG arrived.
    PeerMsg,
    /// The user entered a message.
    UserLine,
    /// The relay sent PEER_LEFT.
    PeerLeft,
    /// The relay sent ERROR.
    RelayError,
    /// The connection to the relay failed or closed.
    NetworkError,
    /// A check below the state machine failed (crypto, decoding, flood).
    Deviation,
    /// The user quit (/quit, end of input, Ctrl-C).
    Quit,
    /// Teardown finished (internal).
    Wiped,
}

/// What the driver must do for a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask for the room code.
    PromptCode,
    /// Explain the rejected code and ask again.
    Reprompt,
    /// Connect to the relay and JOIN.
    Connect,
    /// Generate keys and send the first key frame.
    SendKeys,
    /// Record the peer's commitment and reveal our key.
    RevealKey,
    /// Check the peer's key and establish the channel.
    Establish,
    /// Decrypt and show a message.
    Show,
    /// Encrypt and send the user's message.
    Send,
    /// Hold the user's message until CONNECTED.
    Queue,
    /// Nothing to do.
    Nothing,
    /// Close the socket and wipe every secret.
    Teardown,
    /// Report the reason and exit.
    Exit,
}

/// A pair outside the table: a protocol deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unexpected {
    /// The state it happened in.
    pub state: State,
    /// The event that does not belong there.
    pub event: Event,
}

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected {:?} in state {}", self.event, self.state)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Init => "INIT",
            State::InputValidation => "INPUT_VALIDATION",
            State::Searching => "SEARCHING",
            State::UserFound => "USER_FOUND",
            State::KeySetup => "KEY_SETUP",
            State::Connected => "CONNECTED",
            State::Disconnected => "DISCONNECTED",
            State::SessionDestroyed => "SESSION_DESTROYED",
        })
    }
}

/// The one transition function.
///
/// # Errors
/// [`Unexpected`] for every (state, event) pair not in the table.
pub fn transition(state: State, event: Event) -> Result<(State, Action), Unexpected> {
    use Event as E;
    use State as S;
    let live = matches!(state, S::InputValidation | S::Searching | S::UserFound | S::KeySetup | S::Connected);
    Ok(match (state, event) {
        (S::Init, E::Start) => (S::InputValidation, Action::PromptCode),
        (S::InputValidation, E::CodeRejected) => (S::InputValidation, Action::Reprompt),
        (S::InputValidation, E::CodeAccepted) => (S::Searching, Action::Connect),
        (S::Searching, E::PeerFound) => (S::UserFound, Action::SendKeys),
        (S::UserFound, E::KeysSent) => (S::KeySetup, Action::Nothing),
        (S::KeySetup, E::PeerCommit) => (S::KeySetup, Action::RevealKey),
        (S::KeySetup, E::PeerKey) => (S::Connected, Action::Establish),
        (S::Connected, E::PeerMsg) => (S::Connected, Action::Show),
        (S::Connected, E::UserLine) => (S::Connected, Action::Send),
        (S::Searching | S::UserFound | S::KeySetup, E::UserLine) => (state, Action::Queue),
        (_, E::PeerLeft | E::RelayError | E::NetworkError | E::Deviation | E::Quit) if live => {
            (S::Disconnected, Action::Teardown)
        }
        (S::Disconnected, E::Wiped) => (S::SessionDestroyed, Action::Exit),
        _ => return Err(Unexpected { state, event }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const STATES: [State; 8] = [
        State::Init,
        State::InputValidation,
        State::Searching,
        State::UserFound,
        State::KeySetup,
        State::Connected,
        State::Disconnected,
        State::SessionDestroyed,
    ];
    const EVENTS: [Event; 15] = [
        Event::Start,
        Event::CodeAccepted,
        Event::CodeRejected,
        Event::PeerFound,
        Event::KeysSent,
        Event::PeerCommit,
        Event::PeerKey,
        Event::PeerMsg,
        Event::UserLine,
        Event::PeerLeft,
        Event::RelayError,
        Event::NetworkError,
        Event::Deviation,
        Event::Quit,
        Event::Wiped,
    ];

    /// The table from the module documentation, written out independently of `transition`.
    fn table() -> HashMap<(State, Event), (State, Action)> {
        use Event as E;
        use State as S;
        let mut t = HashMap::new();
        t.insert((S::Init, E::Start), (S::InputValidation, Action::PromptCode));
        t.insert((S::InputValidation, E::CodeRejected), (S::InputValidation, Action::Reprompt));
        t.insert((S::InputValidation, E::CodeAccepted), (S::Searching, Action::Connect));
        t.insert((S::Searching, E::PeerFound), (S::UserFound, Action::SendKeys));
        t.insert((S::UserFound, E::KeysSent), (S::KeySetup, Action::Nothing));
        t.insert((S::KeySetup, E::PeerCommit), (S::KeySetup, Action::RevealKey));
        t.insert((S::KeySetup, E::PeerKey), (S::Connected, Action::Establish));
        t.insert((S::Connected, E::PeerMsg), (S::Connected, Action::Show));
        t.insert((S::Connected, E::UserLine), (S::Connected, Action::Send));
        for s in [S::Searching, S::UserFound, S::KeySetup] {
            t.insert((s, E::UserLine), (s, Action::Queue));
        }
        for s in [S::InputValidation, S::Searching, S::UserFound, S::KeySetup, S::Connected] {
            for e in [E::PeerLeft, E::RelayError, E::NetworkError, E::Deviation, E::Quit] {
                t.insert((s, e), (S::Disconnected, Action::Teardown));
            }
        }
        t.insert((S::Disconnected, E::Wiped), (S::SessionDestroyed, Action::Exit));
        t
    }

    #[test]
    fn every_state_event_pair() {
        let table = table();
        let mut allowed = 0;
        for s in STATES {
            for e in EVENTS {
                match (transition(s, e), table.get(&(s, e))) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, *want, "{s} + {e:?}");
                        allowed += 1;
                    }
                    (Err(u), None) => assert_eq!(u, Unexpected { state: s, event: e }),
                    (got, want) => panic!("{s} + {e:?}: got {got:?}, table says {want:?}"),
                }
            }
        }
        assert_eq!(allowed, table.len());
        assert_eq!(STATES.len() * EVENTS.len(), 120);
    }

    #[test]
    fn every_path_ends_destroyed() {
        // From every live state, a teardown event leads through DISCONNECTED to SESSION_DESTROYED.
        for s in STATES {
            if let Ok((State::Disconnected, Action::Teardown)) = transition(s, Event::Quit) {
                assert_eq!(transition(State::Disconnected, Event::Wiped), Ok((State::SessionDestroyed, Action::Exit)));
            }
        }
        assert!(transition(State::SessionDestroyed, Event::Quit).is_err(), "nothing revives a destroyed session");
    }
}
