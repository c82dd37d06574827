//! The session's state machine: every protocol rule of a session, in one transition function.
//!
//! No I/O happens here. [`Machine::handle`] takes an [`Event`] (something the user, the relay
//! or the peer did, already decoded) and returns the [`Action`]s the driver (`session`) must
//! perform: frames to send, text to show, a connection to open. The states carry their data:
//! the key pair exists only in KEY_SETUP, the peer's commitment only there, the channel and
//! the verification code only in CONNECTED, the reason for the end only in DISCONNECTED. When a
//! state is left its data is dropped, and every secret type wipes itself on drop.
//!
//! What travels inside the encrypted channel (numbering, receipts, resuming) is the record
//! layer's ([`crate::record`]): CONNECTED holds it, and this machine decides what to do with
//! what it opens.
//!
//! Any (state, event) pair outside the table below is a protocol deviation: the machine moves to
//! DISCONNECTED with "unexpected EVENT in state STATE". Once DISCONNECTED, the first reason
//! stands: later events change nothing until the driver reports the teardown done (`Wiped`).
//!
//! | state | event | next | actions |
//! |---|---|---|---|
//! | INIT | Start | INPUT_VALIDATION | prompt for the room code |
//! | INPUT_VALIDATION | CodeTyped (invalid) | INPUT_VALIDATION | say why, prompt again |
//! | INPUT_VALIDATION | CodeTyped (valid) | SEARCHING | connect to the relay, JOIN |
//! | INPUT_VALIDATION | CodeTyped (with a secret, v1) | DISCONNECTED | bad input |
//! | SEARCHING | PeerFound (bare code) | KEY_SETUP | (USER_FOUND:) generate keys; send the commitment (v2) or the key (v1) |
//! | SEARCHING | PeerFound (code with a secret) | PAKE_EXCHANGE | send our SPAKE2 message |
//! | PAKE_EXCHANGE | PeerPake | KEY_SETUP | finish SPAKE2; generate keys; send the commitment |
//! | PAKE_EXCHANGE | PeerCommit, PeerKey (the peer has no secret, or a relay stripped it) | DISCONNECTED | verification failed |
//! | KEY_SETUP (bare code) | PeerPake | DISCONNECTED | verification failed (the peer's code has a secret) |
//! | KEY_SETUP (after the PAKE) | PeerKey | KEY_CONFIRMATION | checks as below; BURN the room at the relay, then send our confirmation MAC |
//! | KEY_SETUP (after the PAKE) | PeerConfirm (before the key it covers) | DISCONNECTED | verification failed |
//! | KEY_CONFIRMATION | PeerConfirm (valid) | CONNECTED | say the code's secret verified the exchange |
//! | KEY_CONFIRMATION | PeerConfirm (invalid) | DISCONNECTED | verification failed: the code is burnt |
//! | PAKE_EXCHANGE | PeerLeft | DISCONNECTED | the peer left early |
//! | KEY_SETUP (after the PAKE), KEY_CONFIRMATION | PeerLeft | DISCONNECTED | verification failed (fail closed: a peer that failed its check leaves) |
//! | PAKE_EXCHANGE | Deadline (past it) | DISCONNECTED | protocol: the exchange took too long |
//! | KEY_CONFIRMATION | any ending but a security one (Relay, NetworkError, Deviation, Quit, Deadline past it) | DISCONNECTED | unconfirmed: exit 5, the code is burnt (our MAC is out) |
//! | KEY_SETUP | PeerCommit (v2, first) | KEY_SETUP | record it, reveal our key |
//! | KEY_SETUP | PeerCommit (second, or v1) | DISCONNECTED | protocol |
//! | KEY_SETUP | PeerKey | CONNECTED | check version, commitment and key; show the verification code |
//! | KEY_SETUP | PeerKey (before the commitment, wrong version, bad key) | DISCONNECTED | protocol / security |
//! | KEY_SETUP | Deadline (past it) | DISCONNECTED | protocol: the exchange took too long |
//! | CONNECTED | PeerRecord (text) | CONNECTED | show it (after the peer finished: protocol) |
//! | CONNECTED | PeerRecord (Done) | CONNECTED (waiting for our last receipts if we are done too), or DISCONNECTED (Finished) once both are done and every line of ours is confirmed | say so; send the receipt we owe |
//! | CONNECTED | PeerRecord (receipt) | CONNECTED, or DISCONNECTED (Finished) as above | confirm our lines below it (ahead of what we sent, backwards, or unannounced: protocol) |
//! | CONNECTED | AckDue | CONNECTED | send the receipt we owe, if any |
//! | CONNECTED (both done) | Deadline (past it) | DISCONNECTED (Finished) | the lines never confirmed are named at teardown |
//! | CONNECTED | PeerRecord (Bye / Mismatch) | DISCONNECTED | peer left / security |
//! | CONNECTED | PeerRecord (fails a check) | DISCONNECTED | security / protocol |
//! | CONNECTED | Send | CONNECTED | seal, send |
//! | CONNECTED | InputDone | CONNECTED (v2: send the receipt we owe, then Done), DISCONNECTED if v1, or as PeerRecord (Done) if the peer is done too | |
//! | CONNECTED | Quit | DISCONNECTED | send the receipt we owe, then Bye (v2) |
//! | CONNECTED | Mismatch | DISCONNECTED | send the receipt we owe, then Mismatch (v2) |
//! | SEARCHING … KEY_CONFIRMATION | Mismatch | same | say there is nothing to compare yet |
//! | KEY_SETUP | PeerLeft | DISCONNECTED | the peer left early |
//! | CONNECTED (both resume) | PeerLeft, NetworkError, Relay (1001, 4007, 4009, 4011) | RESUMING | say so; Rejoin the rendezvous room |
//! | RESUMING | PeerFound | RESUMING (met) | the opener sends its RESUME |
//! | RESUMING (met) | PeerResume (valid) | CONNECTED | the answerer answers; new keys; seal again what the peer missed, then a receipt |
//! | RESUMING (met) | PeerResume (invalid: replayed, foreign, wrong generation) | DISCONNECTED | security: the session is destroyed |
//! | RESUMING | PeerLeft, NetworkError, Relay, Deadline (handshake past it) | RESUMING | Rejoin again (the driver backs off) |
//! | RESUMING | Deadline (window past it) | DISCONNECTED | peer lost: the connection did not come back |
//! | RESUMING | Quit / Mismatch | DISCONNECTED | |
//! | CONNECTED | PeerLeft | DISCONNECTED | peer left if it said Done (or v1), else peer lost |
//! | SEARCHING | Relay (1001, 4007), within JOIN_RETRY of the first | SEARCHING | Rejoin the room (the driver backs off) |
//! | SEARCHING … CONNECTED | Relay, NetworkError, Deviation | DISCONNECTED | |
//! | INPUT_VALIDATION … CONNECTED | Quit | DISCONNECTED | |
//! | INPUT_VALIDATION | InputDone | DISCONNECTED | bad input: no code |
//! | any but DISCONNECTED | Deadline (not yet, or no deadline) | same | — |
//! | DISCONNECTED | Wiped | SESSION_DESTROYED | exit |
//! | DISCONNECTED | anything else | DISCONNECTED | — (the first reason stands) |
//! | SESSION_DESTROYED | anything | SESSION_DESTROYED | — (nothing revives it) |

use crate::code::{self, Secret};
use crate::crypto::{self, Channel, CryptoError, KeyPair, Notice, Record, Version};
use crate::end::End;
use crate::pake;
use crate::proto;
use crate::receipts::{Receipts, FINISH_WAIT};
use crate::record::Records;
use crate::resume::{Hello, Opening, Resumption};
use crate::ui::Tone;
use ghostwire_shared::RoomCode;
use std::time::Duration;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// Time the peer has to complete the key exchange after PEER_FOUND.
pub const KEY_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a resume handshake has after the two sides meet again; then they meet again.
pub const RESUME_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session waits by default for its connection to come back (`--resume-window`).
pub const RESUME_WINDOW: Duration = Duration::from_secs(300);
/// How long a JOIN the relay cannot serve yet is tried again: 4007 (its room service is away,
/// or, on the mesh, it waits out a lost relay's lease for a few seconds) and 1001 (a relay
/// that shuts down; behind a balancer another takes the JOIN).
pub const JOIN_RETRY: Duration = Duration::from_secs(30);

/// KEY_SETUP's data: our key pair, the peer's commitment once it arrives, and what the PAKE
/// agreed (with a code that has a secret).
pub struct KeySetup {
    keys: KeyPair,
    peer_commit: Option<[u8; 32]>,
    deadline: Instant,
    pake: Option<Agreed>,
}

/// SEARCHING's data: the room, the secret (wiped once the PAKE starts), and until when a
/// relay that cannot serve the room yet is asked again.
pub struct Searching {
    room: RoomCode,
    secret: Option<Secret>,
    retry_until: Option<Instant>,
}

/// PAKE_EXCHANGE's data: our half of SPAKE2.
pub struct PakeExchange {
    room: String,
    start: pake::Start,
    deadline: Instant,
}

/// SPAKE2 done: the shared key, and the room it was for.
pub struct Agreed {
    room: String,
    shared: pake::Shared,
}

/// KEY_CONFIRMATION's data: the channel, held back until the peer's MAC proves the exchange.
pub struct Confirming {
    connected: Connected,
    confirm: pake::Confirm,
    deadline: Instant,
}

/// CONNECTED's data: the record layer (the channel), the code to compare, and who has finished
/// sending.
pub struct Connected {
    records: Records,
    code: Option<Zeroizing<String>>,
    me_done: bool,
    peer_done: bool,
    /// Both done, our last receipts awaited until then.
    finish_by: Option<Instant>,
    /// Lines were sealed again after a resume: say so once the peer has confirmed them all.
    resent: bool,
}

/// RESUMING's data: the session, waiting for its connection to come back.
pub struct Resuming {
    connected: Box<Connected>,
    /// The end of the resume window.
    until: Instant,
    /// Met again in the rendezvous room: the handshake's deadline, and our opening if we open.
    met: Option<(Instant, Option<Opening>)>,
    /// The rendezvous room.
    room: RoomCode,
}

/// Where the session is, with what exists only there.
pub enum State {
    /// Nothing has happened yet.
    Init,
    /// Waiting for a valid room code.
    InputValidation,
    /// Connecting to the relay and waiting there for the peer.
    Searching(Box<Searching>),
    /// Our SPAKE2 message sent; waiting for the peer's.
    PakeExchange(Box<PakeExchange>),
    /// Keys generated and our first key frame sent; waiting for the peer's.
    KeySetup(Box<KeySetup>),
    /// Keys agreed and our confirmation MAC sent; waiting for the peer's.
    KeyConfirmation(Box<Confirming>),
    /// Keys agreed: messages flow.
    Connected(Box<Connected>),
    /// The connection dropped: meeting the peer again, to resume with new keys.
    Resuming(Box<Resuming>),
    /// Tearing down for this reason: socket closing, secrets being wiped.
    Disconnected(End),
    /// Done. Nothing is left in memory.
    SessionDestroyed,
}

/// Something that happened, as the driver decoded it.
pub enum Event {
    /// The program started.
    Start,
    /// The user typed a room code (validated here).
    CodeTyped(Zeroizing<String>),
    /// The relay sent PEER_FOUND.
    PeerFound,
    /// The peer's KEY_COMMIT arrived.
    PeerCommit([u8; 32]),
    /// The peer's KEY_EXCHANGE arrived.
    PeerKey {
        /// The key bytes, length unchecked.
        key: Vec<u8>,
        /// Marked `"v":2`.
        v2: bool,
        /// The peer sends and reads receipts (`"ack":1`).
        acks: bool,
        /// The peer resumes after a drop (`"resume":1`).
        resume: bool,
        /// The peer reads file transfer records (`"files":1`).
        files: bool,
    },
    /// The peer's RESUME arrived.
    PeerResume(Hello),
    /// The peer's MSG arrived: nonce ‖ box.
    PeerRecord(Vec<u8>),
    /// The peer's PAKE message arrived.
    PeerPake(Vec<u8>),
    /// The peer's KEY_CONFIRM arrived.
    PeerConfirm(Vec<u8>),
    /// The user's next line is due to be sent (the driver paces and queues them).
    Send(Zeroizing<String>),
    /// The user has nothing more to say (end of input; everything queued was sent).
    InputDone,
    /// The user quit (/quit, Ctrl-C, Ctrl-D at a terminal, a signal).
    Quit,
    /// The user reports that the verification codes differ.
    Mismatch,
    /// The relay sent PEER_LEFT.
    PeerLeft,
    /// The relay ended the connection with a code (ERROR frame or close code).
    Relay {
        /// The code.
        code: u16,
        /// Its reason, sanitized.
        reason: String,
    },
    /// The connection to the relay failed or closed without a code.
    NetworkError(String),
    /// A check below the machine failed (decoding, a flood): ends the session for this reason.
    Deviation(End),
    /// Time passed (the driver's timer for [`Machine::deadline`]).
    Deadline(Instant),
    /// A receipt we owe is due (the driver's timer, [`crate::receipts::ACK_DELAY`] after it became owed).
    AckDue,
    /// A record of a file transfer to seal and send (the driver sends one only when
    /// [`Machine::can_send_file`]).
    File(crate::transfer::FileRecord),
    /// Teardown finished (internal).
    Wiped,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask for the room code.
    PromptCode,
    /// Say why the code was refused and ask again.
    Reprompt(String),
    /// Connect to the relay and JOIN this room.
    Connect(RoomCode),
    /// The connection is gone or useless: close it if it is not, then connect again (backing
    /// off) and JOIN `room`, the session's rendezvous. `failed` says why the last attempt
    /// failed (empty for the first).
    Rejoin {
        /// The rendezvous room.
        room: RoomCode,
        /// Why the last attempt failed, if one did.
        failed: String,
    },
    /// Send this frame to the relay.
    Send(String),
    /// Tell the relay to burn the room (`BURN`), if it takes that: our proof of the code goes
    /// out next, and from then on every new session with this code is one more guess at it.
    Burn,
    /// Show a message from the peer.
    Show(Zeroizing<String>),
    /// Show a status line.
    Say(Tone, String),
    /// A record of a file transfer from the peer, for the driver's transfers.
    File(crate::transfer::FileRecord),
    /// Our lines a receipt has just confirmed, oldest first: mark them delivered.
    Delivered(Vec<Zeroizing<String>>),
    /// Show the verification code.
    ShowCode(String),
    /// Close the socket and wipe every secret (the reason is in DISCONNECTED).
    Teardown,
    /// Report the reason and exit.
    Exit,
}

impl State {
    /// The state's name, as the prototype's table spells it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Init => "INIT",
            State::InputValidation => "INPUT_VALIDATION",
            State::Searching(_) => "SEARCHING",
            State::PakeExchange(_) => "PAKE_EXCHANGE",
            State::KeySetup(_) => "KEY_SETUP",
            State::KeyConfirmation(_) => "KEY_CONFIRMATION",
            State::Connected(_) => "CONNECTED",
            State::Resuming(_) => "RESUMING",
            State::Disconnected(_) => "DISCONNECTED",
            State::SessionDestroyed => "SESSION_DESTROYED",
        }
    }
}

impl Event {
    /// The event's name, for "unexpected EVENT in state STATE".
    pub fn name(&self) -> &'static str {
        match self {
            Event::Start => "Start",
            Event::CodeTyped(_) => "CodeTyped",
            Event::PeerFound => "PeerFound",
            Event::PeerCommit(_) => "PeerCommit",
            Event::PeerKey { .. } => "PeerKey",
            Event::PeerResume(_) => "PeerResume",
            Event::AckDue => "AckDue",
            Event::File(_) => "File",
            Event::PeerRecord(_) => "PeerRecord",
            Event::PeerPake(_) => "PeerPake",
            Event::PeerConfirm(_) => "PeerConfirm",
            Event::Send(_) => "Send",
            Event::InputDone => "InputDone",
            Event::Quit => "Quit",
            Event::Mismatch => "Mismatch",
            Event::PeerLeft => "PeerLeft",
            Event::Relay { .. } => "Relay",
            Event::NetworkError(_) => "NetworkError",
            Event::Deviation(_) => "Deviation",
            Event::Deadline(_) => "Deadline",
            Event::Wiped => "Wiped",
        }
    }
}

/// The session: a protocol version and the current state.
pub struct Machine {
    version: Version,
    state: State,
    /// Receipts, once connected to a peer that announced them (see [`crate::receipts`]). Kept
    /// beside the state: the lines they name outlive CONNECTED, to be reported.
    receipts: Option<Receipts>,
    /// How long a dropped session waits for its connection (zero: it does not resume).
    resume_window: Duration,
    /// The peer reads file transfer records (see [`crate::transfer`]).
    files: bool,
}

const V1_ONLY: &str = "the peer speaks only the legacy v1 protocol (no verification code, no replay protection); \
                       to talk to it anyway, both run with --legacy-v1";
const V2_ONLY: &str = "the peer speaks the hardened protocol (v2); run without --legacy-v1";

impl Machine {
    /// A machine in INIT speaking `version`.
    pub fn new(version: Version) -> Machine {
        Machine { version, state: State::Init, receipts: None, resume_window: Duration::ZERO, files: false }
    }

    /// The same machine, resuming a dropped session within `window` (zero: never) with a
    /// peer that resumes too.
    pub fn resuming(mut self, window: Duration) -> Machine {
        self.resume_window = window;
        self
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// When the driver must send [`Event::Deadline`] next, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::PakeExchange(p) => Some(p.deadline),
            State::KeySetup(ks) => Some(ks.deadline),
            State::KeyConfirmation(c) => Some(c.deadline),
            State::Connected(c) => c.finish_by,
            State::Resuming(r) => Some(r.met.as_ref().map_or(r.until, |(by, _)| r.until.min(*by))),
            _ => None,
        }
    }

    /// Whether a user line can be sent now (connected, and we have not said we are done).
    pub fn can_send(&self) -> bool {
        matches!(&self.state, State::Connected(c) if !c.me_done) && !self.receipts.as_ref().is_some_and(Receipts::full)
    }

    /// Whether a record of a file transfer can go out now: connected to a peer that reads
    /// them (the driver waits while resuming).
    pub fn can_send_file(&self) -> bool {
        self.files && matches!(self.state, State::Connected(_))
    }

    /// Our records the peer has not confirmed yet, lines and file records together (the
    /// driver keeps a transfer's window with it).
    pub fn unconfirmed(&self) -> usize {
        self.receipts.as_ref().map_or(0, Receipts::unconfirmed)
    }

    /// Whether we owe the peer a receipt (the driver then sends [`Event::AckDue`] within
    /// [`crate::receipts::ACK_DELAY`]).
    pub fn ack_owed(&self) -> bool {
        matches!(self.state, State::Connected(_)) && self.receipts.as_ref().is_some_and(Receipts::owed)
    }

    /// Our lines that no receipt confirmed, once the session is over (taken: reported once).
    /// Empty with a peer that does not send receipts.
    pub fn take_unconfirmed(&mut self) -> Vec<Zeroizing<String>> {
        if !matches!(self.state, State::Disconnected(_) | State::SessionDestroyed) {
            return Vec::new();
        }
        self.receipts.take().map(Receipts::into_unconfirmed).unwrap_or_default()
    }

    /// Whether the relay or the peer is involved yet (there is a socket to watch).
    pub fn online(&self) -> bool {
        matches!(
            self.state,
            State::Searching(_)
                | State::PakeExchange(_)
                | State::KeySetup(_)
                | State::KeyConfirmation(_)
                | State::Connected(_)
                | State::Resuming(_)
        )
    }

    /// The verification code, once the keys are exchanged (v2).
    pub fn code(&self) -> Option<&str> {
        match &self.state {
            State::Connected(c) => c.code.as_deref().map(String::as_str),
            _ => None,
        }
    }

    /// The reason the session ended, once DISCONNECTED or later.
    pub fn end(&self) -> Option<&End> {
        match &self.state {
            State::Disconnected(end) => Some(end),
            _ => None,
        }
    }

    /// The one transition function: applies `event` and says what to do.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let state = std::mem::replace(&mut self.state, State::SessionDestroyed);
        let proof_out = matches!(state, State::KeyConfirmation(_));
        let (mut next, actions) = self.transition(state, event);
        // Our MAC is out and the peer's has not verified: whoever holds our MAC can test guesses
        // of the code offline, so however the session ends now, the code is burnt. A relay that
        // says "going away" (or cuts the line, or stalls) cannot turn a failed guess into a retry.
        if let (true, State::Disconnected(why)) = (proof_out, &mut next) {
            if why.exit_code() != crate::end::exit::SECURITY {
                *why = End::Unconfirmed(Box::new(std::mem::replace(why, End::Quit)));
            }
        }
        self.state = next;
        actions
    }

    fn transition(&mut self, state: State, event: Event) -> (State, Vec<Action>) {
        use Event as E;
        use State as S;
        let v2 = self.version == Version::Hardened2;
        match (state, event) {
            (S::Init, E::Start) => (S::InputValidation, vec![Action::PromptCode]),
            (S::InputValidation, E::CodeTyped(typed)) => match code::parse(&typed) {
                Ok(code) if code.secret.is_some() && !v2 => end(End::BadInput(
                    "--legacy-v1 cannot use a code with a secret part (v1 has no PAKE): use a bare room code".into(),
                )),
                Ok(code) => {
                    let searching = Searching { room: code.room.clone(), secret: code.secret, retry_until: None };
                    (S::Searching(Box::new(searching)), vec![Action::Connect(code.room)])
                }
                Err(why) => (S::InputValidation, vec![Action::Reprompt(why)]),
            },
            (S::InputValidation, E::InputDone) => end(End::BadInput("no valid room code was given".into())),
            (S::Searching(s), E::PeerFound) => match s.secret {
                Some(secret) => {
                    // The secret is wiped here: SPAKE2 keeps only what it derived from it.
                    let start = pake::Start::new(s.room.as_str(), secret.as_bytes());
                    drop(secret);
                    let frame = proto::pake_frame(start.message());
                    let deadline = Instant::now() + KEY_SETUP_TIMEOUT;
                    let px = PakeExchange { room: s.room.as_str().to_owned(), start, deadline };
                    let say = Action::Say(Tone::Info, "peer found: proving we both hold the code's secret".into());
                    (S::PakeExchange(Box::new(px)), vec![say, Action::Send(frame)])
                }
                None => {
                    let say = Action::Say(Tone::Info, "peer found: exchanging keys".into());
                    let (ks, frame) = self.key_setup(None);
                    (S::KeySetup(Box::new(ks)), vec![say, Action::Send(frame)])
                }
            },
            (S::PakeExchange(px), E::PeerPake(msg)) => match px.start.finish(&msg) {
                Ok(shared) => {
                    let (ks, frame) = self.key_setup(Some(Agreed { room: px.room, shared }));
                    (S::KeySetup(Box::new(ks)), vec![Action::Send(frame)])
                }
                Err(_) => end(End::VerificationFailed),
            },
            // A key exchange without the PAKE, from a peer whose code has no secret or through a
            // relay that removed it: never accepted in its place.
            (S::PakeExchange(_), E::PeerCommit(_) | E::PeerKey { .. }) => end(End::VerificationFailed),
            (S::KeySetup(ks), E::PeerPake(_)) if ks.pake.is_none() => end(End::VerificationFailed),
            // A MAC before the keys it covers: the exchange was tampered with.
            (S::KeySetup(ks), E::PeerConfirm(_)) if ks.pake.is_some() => end(End::VerificationFailed),
            (S::KeyConfirmation(c), E::PeerConfirm(mac)) => {
                if c.confirm.check(&mac) {
                    let actions = vec![
                        Action::Say(Tone::Good, "keys exchanged: end-to-end encrypted".into()),
                        Action::Say(Tone::Good, "verified by the code's secret: no relay can be in the middle".into()),
                    ];
                    (S::Connected(Box::new(c.connected)), actions)
                } else {
                    end(End::VerificationFailed)
                }
            }
            (S::PakeExchange(p), E::Deadline(now)) if now >= p.deadline => {
                end(End::Protocol("the peer did not complete the key exchange in time".into()))
            }
            (S::KeyConfirmation(c), E::Deadline(now)) if now >= c.deadline => {
                end(End::Protocol("the peer did not confirm the key exchange in time".into()))
            }
            (S::PakeExchange(_), E::PeerLeft) => end(End::PeerLeftEarly),
            // After the PAKE, a peer gone before it confirmed cannot be told from a peer that
            // failed the check (or a relay that cut it off): fail closed, the code is burnt.
            (S::KeyConfirmation(_), E::PeerLeft) => end(End::VerificationFailed),
            (S::KeySetup(ks), E::PeerLeft) if ks.pake.is_some() => end(End::VerificationFailed),
            (S::KeySetup(_), E::PeerCommit(_)) if !v2 => end(End::Protocol(V2_ONLY.into())),
            (S::KeySetup(ks), E::PeerCommit(_)) if ks.peer_commit.is_some() => {
                end(End::Protocol("the peer committed to a key twice".into()))
            }
            (S::KeySetup(mut ks), E::PeerCommit(commit)) => {
                // Reveal only now that the peer is bound to its key.
                ks.peer_commit = Some(commit);
                let reveal = proto::key_frame(ks.keys.public(), true, !self.resume_window.is_zero());
                (S::KeySetup(ks), vec![Action::Send(reveal)])
            }
            (S::KeySetup(mut ks), E::PeerKey { key, v2: marked, acks, resume, files }) => {
                let agreed = ks.pake.take();
                let mine = *ks.keys.public();
                // Receipts with a v2 peer that announced them (v1 has no record for them).
                self.receipts = (acks && v2).then(Receipts::default);
                // Files with a v2 peer that reads them; they are confirmed and resumed like lines.
                self.files = files && acks && v2;
                // Resuming needs the receipts: they say what to send again.
                let resume = resume && acks && v2 && !self.resume_window.is_zero();
                match (self.establish(*ks, &key, marked, resume), agreed) {
                    (Ok((connected, actions)), None) => (S::Connected(Box::new(connected)), actions),
                    (Ok((connected, _)), Some(agreed)) => {
                        // Nothing is sent before the peer proves the same exchange. (`establish`
                        // accepted the key, so it is 32 bytes.)
                        let Ok(peer) = crypto::PublicBytes::try_from(key.as_slice()) else {
                            return end(End::Security(CryptoError::BadKeyLength));
                        };
                        let confirm = agreed.shared.confirm(&agreed.room, &mine, &peer);
                        let frame = proto::confirm_frame(&confirm.mine);
                        let deadline = Instant::now() + KEY_SETUP_TIMEOUT;
                        let c = Confirming { connected, confirm, deadline };
                        (S::KeyConfirmation(Box::new(c)), vec![Action::Burn, Action::Send(frame)])
                    }
                    (Err(why), _) => end(why),
                }
            }
            (S::KeySetup(ks), E::Deadline(now)) if now >= ks.deadline => {
                end(End::Protocol("the peer did not complete the key exchange in time".into()))
            }
            (S::KeySetup(_), E::PeerLeft) => end(End::PeerLeftEarly),
            (S::Connected(c), E::PeerRecord(payload)) => self.on_record(c, &payload),
            (S::Connected(mut c), E::File(record)) if self.files => {
                let frame = c.records.seal_file(&record, self.receipts.as_mut());
                (S::Connected(c), frame.map(Action::Send).into_iter().collect())
            }
            (S::Connected(mut c), E::Send(text)) if !c.me_done => {
                let frame = c.records.seal_text(&text, self.receipts.as_mut());
                (S::Connected(c), vec![Action::Send(frame)])
            }
            (S::Connected(c), E::Deadline(now)) if c.finish_by.is_some_and(|by| now >= by) => end(End::Finished),
            (S::Connected(mut c), E::AckDue) => {
                let ack = self.ack(&mut c);
                (S::Connected(c), ack.into_iter().collect())
            }
            (S::Connected(mut c), E::InputDone) if !c.me_done => {
                // The receipt we owe goes first: a peer that reads our `done` has it.
                let ack = self.ack(&mut c);
                match c.records.seal_notice(Notice::Done) {
                    None => end(End::EndOfInput),
                    Some(done) => {
                        let mut actions: Vec<Action> = ack.into_iter().collect();
                        actions.push(Action::Send(done));
                        c.me_done = true;
                        if !c.peer_done {
                            actions.push(Action::Say(
                                Tone::Info,
                                "everything was sent; waiting for your peer to finish (Ctrl-C to leave now)".into(),
                            ));
                        }
                        self.settle(c, actions)
                    }
                }
            }
            (S::Connected(mut c), E::Quit) => {
                let ack = self.ack(&mut c);
                prepend(ack, leave(&mut c, Notice::Bye, End::Quit))
            }
            (S::Connected(mut c), E::Mismatch) => {
                let ack = self.ack(&mut c);
                prepend(ack, leave(&mut c, Notice::Mismatch, End::VerificationMismatch))
            }
            (state @ (S::Searching(_) | S::PakeExchange(_) | S::KeySetup(_) | S::KeyConfirmation(_)), E::Mismatch) => {
                (state, vec![Action::Say(Tone::Info, "nothing to compare yet: keys are not exchanged".into())])
            }
            // A connection that drops (ours, or the peer's as the relay reports it) is a pause
            // when both sides resume: they meet again in the rendezvous room.
            (S::Connected(c), E::PeerLeft) if c.records.rendezvous().is_some() => {
                self.away(c, "its connection to the relay dropped".into(), true)
            }
            (S::Connected(c), E::NetworkError(why)) if c.records.rendezvous().is_some() => self.away(c, why, false),
            (S::Connected(c), E::Relay { code, reason }) if c.records.rendezvous().is_some() && resumable(code) => {
                let peer = code == ghostwire_shared::ErrorCode::PeerLost.as_u16();
                self.away(c, crate::end::relay_says(code, &reason, true), peer)
            }
            (S::Resuming(r), E::PeerFound) => self.met(r),
            (S::Resuming(r), E::PeerResume(hello)) if r.met.is_some() => self.resumed(r, &hello),
            (S::Resuming(r), E::PeerLeft) => self.rejoin(r, "your peer's connection dropped again".into()),
            (S::Resuming(r), E::NetworkError(why)) => self.rejoin(r, why),
            (S::Resuming(r), E::Relay { code, reason }) => self.rejoin(r, crate::end::relay_says(code, &reason, false)),
            (S::Resuming(r), E::Deadline(now)) if now >= r.until => end(End::PeerLost(format!(
                "the connection did not come back within {} (--resume-window); your peer may have quit",
                humantime::format_duration(self.resume_window)
            ))),
            (S::Resuming(r), E::Deadline(now)) if r.met.as_ref().is_some_and(|(by, _)| now >= *by) => {
                self.rejoin(r, "your peer did not complete the resume in time".into())
            }
            (S::Resuming(_), E::Quit) => end(End::Quit),
            (S::Resuming(_), E::Mismatch) => end(End::VerificationMismatch),
            (state @ S::Resuming(_), E::AckDue) => (state, vec![]),
            (S::Connected(c), E::PeerLeft) if c.peer_done || !v2 => end(End::PeerLeft),
            (S::Connected(_), E::PeerLeft) => {
                end(End::PeerLost("it left without saying goodbye (its connection to the relay broke)".into()))
            }
            (S::Searching(mut s), E::Relay { code, reason }) if join_retried(code) => {
                let now = Instant::now();
                if now >= *s.retry_until.get_or_insert(now + JOIN_RETRY) {
                    return end(End::Relay { code, reason, paired: false });
                }
                let room = s.room.clone();
                let failed = format!("the relay cannot serve the room yet ({code}: {reason})");
                (S::Searching(s), vec![Action::Rejoin { room, failed }])
            }
            (
                state @ (S::Searching(_)
                | S::PakeExchange(_)
                | S::KeySetup(_)
                | S::KeyConfirmation(_)
                | S::Connected(_)),
                E::Relay { code, reason },
            ) => {
                let paired = !matches!(state, S::Searching(_));
                end(End::Relay { code, reason, paired })
            }
            (
                S::Searching(_) | S::PakeExchange(_) | S::KeySetup(_) | S::KeyConfirmation(_) | S::Connected(_),
                E::NetworkError(why),
            ) => end(End::Network(why)),
            (
                S::Searching(_) | S::PakeExchange(_) | S::KeySetup(_) | S::KeyConfirmation(_) | S::Connected(_),
                E::Deviation(why),
            ) => end(why),
            (
                S::InputValidation | S::Searching(_) | S::PakeExchange(_) | S::KeySetup(_) | S::KeyConfirmation(_),
                E::Quit,
            ) => end(End::Quit),
            (S::Disconnected(_), E::Wiped) => (S::SessionDestroyed, vec![Action::Exit]),
            (state @ S::Disconnected(_), _) => (state, vec![]),
            (S::SessionDestroyed, _) => (S::SessionDestroyed, vec![]),
            (state, E::Deadline(_)) => (state, vec![]),
            (state, event) => end(End::Protocol(format!("unexpected {} in state {}", event.name(), state.name()))),
        }
    }

    /// CONNECTED → RESUMING: the connection dropped (`why`; `peer`: the peer's); meet the peer
    /// again.
    fn away(&mut self, c: Box<Connected>, why: String, peer: bool) -> (State, Vec<Action>) {
        let until = Instant::now() + self.resume_window;
        let Some(room) = c.records.rendezvous().cloned() else {
            return end(End::Network(why));
        };
        let r = Box::new(Resuming { connected: c, until, met: None, room });
        let window = humantime::format_duration(self.resume_window);
        let say = if peer {
            format!("your peer is away ({why}): waiting up to {window} for it to come back (--resume-window); type on, nothing is lost")
        } else {
            format!("connection lost ({why}): resuming for up to {window} (--resume-window); type on, nothing is lost")
        };
        let rejoin = Action::Rejoin { room: r.room.clone(), failed: String::new() };
        (State::Resuming(r), vec![Action::Say(Tone::Warn, say), rejoin])
    }

    /// RESUMING: this attempt failed (`why`); meet again.
    fn rejoin(&mut self, mut r: Box<Resuming>, why: String) -> (State, Vec<Action>) {
        r.met = None;
        let rejoin = Action::Rejoin { room: r.room.clone(), failed: why };
        (State::Resuming(r), vec![rejoin])
    }

    /// RESUMING: the peer is in the rendezvous room; the opener opens.
    fn met(&mut self, mut r: Box<Resuming>) -> (State, Vec<Action>) {
        let deadline = Instant::now() + RESUME_HANDSHAKE_TIMEOUT;
        let (opening, actions) = match r.connected.records.open_resume() {
            Some((opening, frame)) => (Some(opening), vec![Action::Send(frame)]),
            None => (None, vec![]),
        };
        r.met = Some((deadline, opening));
        (State::Resuming(r), actions)
    }

    /// RESUMING → CONNECTED: the peer's half of the handshake. The channel takes the new keys,
    /// and what the peer missed is sealed again, in order, under them.
    fn resumed(&mut self, mut r: Box<Resuming>, hello: &Hello) -> (State, Vec<Action>) {
        let opening = r.met.take().and_then(|(_, opening)| opening);
        let mut c = r.connected;
        let (frames, resent) = match c.records.resume(opening, hello, self.receipts.as_mut()) {
            Ok(done) => done,
            Err(why) => return end(why),
        };
        let mut actions: Vec<Action> = frames.into_iter().map(Action::Send).collect();
        c.resent |= resent > 0;
        let resent = match resent {
            0 => "nothing to re-send".to_owned(),
            1 => "1 line re-sent".to_owned(),
            n => format!("{n} lines re-sent"),
        };
        actions.push(Action::Say(Tone::Good, format!("back: resumed with new keys; {resent}")));
        self.settle(c, actions)
    }

    /// KEY_SETUP's data and the first key frame: the commitment (v2) or the key (v1).
    fn key_setup(&self, pake: Option<Agreed>) -> (KeySetup, String) {
        let keys = KeyPair::generate();
        let frame = if self.version == Version::Hardened2 {
            proto::commit_frame(&keys.commitment())
        } else {
            proto::key_frame(keys.public(), false, false)
        };
        let deadline = Instant::now() + KEY_SETUP_TIMEOUT;
        (KeySetup { keys, peer_commit: None, deadline, pake }, frame)
    }

    /// KEY_SETUP → CONNECTED: every check on the peer's key, then the channel.
    fn establish(
        &self,
        ks: KeySetup,
        key: &[u8],
        marked_v2: bool,
        resume: bool,
    ) -> Result<(Connected, Vec<Action>), End> {
        let version = self.version;
        match (version, marked_v2) {
            (Version::Hardened2, false) => return Err(End::Protocol(V1_ONLY.into())),
            (Version::Legacy1, true) => return Err(End::Protocol(V2_ONLY.into())),
            _ => {}
        }
        let peer: crypto::PublicBytes = key.try_into().map_err(|_| End::Security(CryptoError::BadKeyLength))?;
        if version == Version::Hardened2 {
            match ks.peer_commit {
                None => return Err(End::Protocol("the peer revealed its key before committing to it".into())),
                Some(c) if c != crypto::commitment(&peer) => return Err(End::Security(CryptoError::CommitMismatch)),
                Some(_) => {}
            }
        }
        let mine = *ks.keys.public();
        let boxed = ks.keys.agree(&peer).map_err(End::Security)?;
        let resumption = if resume {
            let shared = ks.keys.shared(&peer).map_err(End::Security)?;
            Resumption::new(&shared, &mine, &peer)
        } else {
            None
        };
        // `ks` (the secret key) is dropped, and wiped, when this function returns.
        let channel = Channel::new(boxed, version, &mine, &peer);
        let (code, actions) = match version {
            Version::Hardened2 => {
                let code = Zeroizing::new(crypto::verification_code(&mine, &peer));
                let actions = vec![
                    Action::Say(Tone::Good, "keys exchanged: end-to-end encrypted".into()),
                    Action::ShowCode(code.to_string()),
                    Action::Say(
                        Tone::Info,
                        "compare this code with your peer (by voice or in person); if it differs, type /mismatch. \
                         With a bare room code this is the only way to catch a relay in the middle \
                         (ghostwire --new makes codes whose secret checks it for you)"
                            .into(),
                    ),
                ];
                (Some(code), actions)
            }
            Version::Legacy1 => (
                None,
                vec![
                    Action::Say(Tone::Good, "keys exchanged: end-to-end encrypted (legacy v1)".into()),
                    Action::Say(
                        Tone::Warn,
                        "legacy v1 has no verification code: a relay in the middle cannot be detected".into(),
                    ),
                ],
            ),
        };
        let records = Records::new(channel, resumption);
        let connected = Connected { records, code, me_done: false, peer_done: false, finish_by: None, resent: false };
        Ok((connected, actions))
    }

    /// Once both sides are done: sends the receipt we owe, and ends (Finished) when every line of
    /// ours is confirmed, or when [`FINISH_WAIT`] has passed without (the teardown then names
    /// the lines never confirmed).
    fn settle(&mut self, mut c: Box<Connected>, mut actions: Vec<Action>) -> (State, Vec<Action>) {
        if !(c.me_done && c.peer_done) {
            return (State::Connected(c), actions);
        }
        actions.extend(self.ack(&mut c));
        if self.receipts.as_ref().map_or(0, Receipts::unconfirmed) == 0 {
            actions.push(Action::Teardown);
            return (State::Disconnected(End::Finished), actions);
        }
        c.finish_by.get_or_insert_with(|| Instant::now() + FINISH_WAIT);
        (State::Connected(c), actions)
    }

    /// The receipt we owe, sealed, if we owe one.
    fn ack(&mut self, c: &mut Connected) -> Option<Action> {
        c.records.seal_owed_ack(self.receipts.as_mut()).map(Action::Send)
    }

    /// A record from the peer in CONNECTED.
    fn on_record(&mut self, mut c: Box<Connected>, payload: &[u8]) -> (State, Vec<Action>) {
        match c.records.open(payload, self.receipts.as_mut()) {
            Err(why) => end(why),
            // A receipt may follow the peer's `done`: it answers lines of ours.
            Ok(Record::Ack(_)) => {
                let delivered = self.receipts.as_mut().map(Receipts::take_delivered).unwrap_or_default();
                let mut said = vec![];
                if !delivered.is_empty() {
                    said.push(Action::Delivered(delivered));
                }
                if c.resent && self.receipts.as_ref().is_some_and(|r| r.unconfirmed() == 0) {
                    c.resent = false;
                    said.push(Action::Say(Tone::Good, "delivered: your peer confirmed every line you sent".into()));
                }
                self.settle(c, said)
            }
            // A transfer's records may follow the peer's `done` (a piped peer declines offers).
            Ok(Record::File(_)) if !self.files => {
                end(End::Protocol("the peer sent a file record without announcing files".into()))
            }
            Ok(Record::File(record)) => (State::Connected(c), vec![Action::File(record)]),
            Ok(_) if c.peer_done => end(End::Protocol("the peer sent more after saying it had finished".into())),
            Ok(Record::Text(text)) => (State::Connected(c), vec![Action::Show(text)]),
            // Both finished: the receipt for its last lines goes out before we close.
            Ok(Record::Notice(Notice::Done)) if c.me_done => {
                c.peer_done = true;
                self.settle(c, vec![])
            }
            Ok(Record::Notice(Notice::Done)) => {
                c.peer_done = true;
                let say = Action::Say(Tone::Info, "your peer has finished sending (end of its input)".into());
                (State::Connected(c), vec![say])
            }
            Ok(Record::Notice(Notice::Bye)) => end(End::PeerLeft),
            Ok(Record::Notice(Notice::Mismatch)) => end(End::PeerMismatch),
        }
    }
}

/// Whether a relay code that ends a connection leaves the session resumable: the relay going
/// away, its upstream failing, the peer's relay lost, or this side too slow for a moment.
fn resumable(code: u16) -> bool {
    use ghostwire_shared::ErrorCode as C;
    [C::GoingAway, C::UpstreamUnavailable, C::PeerLost, C::SlowConsumer].iter().any(|c| c.as_u16() == code)
}

/// Whether a JOIN that the relay refused with `code` before pairing is tried again (see
/// [`JOIN_RETRY`]).
fn join_retried(code: u16) -> bool {
    use ghostwire_shared::ErrorCode as C;
    [C::GoingAway, C::UpstreamUnavailable].iter().any(|c| c.as_u16() == code)
}

/// `first`, if any, before the actions of `step`.
fn prepend(first: Option<Action>, mut step: (State, Vec<Action>)) -> (State, Vec<Action>) {
    if let Some(first) = first {
        step.1.insert(0, first);
    }
    step
}

/// To DISCONNECTED for `why`.
fn end(why: End) -> (State, Vec<Action>) {
    (State::Disconnected(why), vec![Action::Teardown])
}

/// Leaves CONNECTED for `why`, telling the peer first (v2).
fn leave(c: &mut Connected, notice: Notice, why: End) -> (State, Vec<Action>) {
    let mut actions: Vec<Action> = c.records.seal_notice(notice).map(Action::Send).into_iter().collect();
    actions.push(Action::Teardown);
    (State::Disconnected(why), actions)
}

#[cfg(test)]
mod tests;
