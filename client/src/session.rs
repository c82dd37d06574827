//! The session driver: feeds events to the state machine and performs its actions.
//!
//! One task owns everything secret (key pair, channel, queued lines) and the
//! socket; the input thread and the UI only pass values in and out. Every way
//! out of the main loop goes through [`Session::fail`], which records the first
//! reason and moves the machine to DISCONNECTED; teardown then closes the
//! socket and drops (wipes) every secret before SESSION_DESTROYED.

use crate::cli::parse_room_code;
use crate::crypto::{self, Channel, CryptoError, KeyPair, PublicBytes, Version};
use crate::end::End;
use crate::net::{self, Socket};
use crate::proto::{self, PeerMsg};
use crate::state::{transition, Action, Event, State};
use crate::ui::{Command, Input, Tone, Ui, Verdict, HELP};
use futures_util::{SinkExt, StreamExt};
use ghostwire_shared::{ClientFrame, RelayFrame, RoomCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use zeroize::Zeroizing;

/// The longest message a user may send, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// What we send at most: frames per second, sustained and burst (well under the relay's limit).
const SEND_RATE: (u32, u32) = (20, 50);
/// What the peer may send us before it counts as a flood (above any honest client's SEND_RATE).
const RECV_RATE: (u32, u32) = (60, 120);
/// Time the peer has to complete the key exchange after PEER_FOUND.
pub const KEY_SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the session needs to know from the command line.
pub struct Settings {
    /// The relay URL.
    pub relay: String,
    /// A CA file for wss://.
    pub ca: Option<PathBuf>,
    /// Which protocol to speak.
    pub version: Version,
    /// The room code, if given on the command line.
    pub room: Option<RoomCode>,
}

struct Session {
    settings: Settings,
    state: State,
    ui: Ui,
    inputs: mpsc::Receiver<Input>,
    verdicts: std_mpsc::Sender<Verdict>,
    ws: Option<Socket>,
    keys: Option<KeyPair>,
    my_public: Option<PublicBytes>,
    peer_commit: Option<[u8; 32]>,
    channel: Option<Channel>,
    code: Option<String>,
    queue: VecDeque<Zeroizing<String>>,
    eof_pending: bool,
    end: Option<End>,
    send_limit: DefaultDirectRateLimiter,
    recv_limit: DefaultDirectRateLimiter,
}

fn limiter((rate, burst): (u32, u32)) -> DefaultDirectRateLimiter {
    let nz = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(nz(rate)).allow_burst(nz(burst)))
}

/// Runs one session to its end and says why it ended.
pub async fn run(
    settings: Settings,
    ui: Ui,
    inputs: mpsc::Receiver<Input>,
    verdicts: std_mpsc::Sender<Verdict>,
) -> End {
    let session = Session {
        settings,
        state: State::Init,
        ui,
        inputs,
        verdicts,
        ws: None,
        keys: None,
        my_public: None,
        peer_commit: None,
        channel: None,
        code: None,
        queue: VecDeque::new(),
        eof_pending: false,
        end: None,
        send_limit: limiter(SEND_RATE),
        recv_limit: limiter(RECV_RATE),
    };
    session.run().await
}

async fn next_frame(ws: &mut Option<Socket>) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run(mut self) -> End {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            return End::Network("cannot install signal handlers".into());
        };
        if self.fire(Event::Start) == Action::PromptCode {
            if let Some(code) = self.settings.room.take() {
                self.accept_code(code).await;
            }
        }
        let key_deadline = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(key_deadline);
        let mut deadline_armed = false;
        while self.state != State::Disconnected {
            if self.state == State::UserFound || self.state == State::KeySetup {
                if !deadline_armed {
                    key_deadline.as_mut().reset(tokio::time::Instant::now() + KEY_SETUP_TIMEOUT);
                    deadline_armed = true;
                }
            } else {
                deadline_armed = false;
            }
            tokio::select! {
                input = self.inputs.recv() => self.on_input(input.unwrap_or(Input::Eof)).await,
                frame = next_frame(&mut self.ws) => self.on_frame(frame).await,
                () = &mut key_deadline, if deadline_armed => {
                    self.fail(End::Protocol("the peer did not complete the key exchange in time".into()));
                }
                _ = term.recv() => self.fail(End::Quit),
                _ = int.recv() => self.fail(End::Quit),
                _ = hup.recv() => self.fail(End::Quit),
            }
        }
        self.teardown().await;
        let _ = self.fire(Event::Wiped);
        self.end.take().unwrap_or(End::Quit)
    }

    /// Applies `event`; an event outside the table is a protocol deviation.
    fn fire(&mut self, event: Event) -> Action {
        match transition(self.state, event) {
            Ok((next, action)) => {
                self.state = next;
                action
            }
            Err(unexpected) => {
                self.fail(End::Protocol(unexpected.to_string()));
                Action::Teardown
            }
        }
    }

    /// Ends the session for `end` (the first reason given is the one reported).
    fn fail(&mut self, end: End) {
        let event = end.event();
        if self.end.is_none() {
            self.end = Some(end);
        }
        if let Ok((next, _)) = transition(self.state, event) {
            self.state = next;
        }
    }

    async fn accept_code(&mut self, room: RoomCode) {
        let _ = self.verdicts.send(Verdict::Accepted);
        if self.fire(Event::CodeAccepted) != Action::Connect {
            return;
        }
        self.ui.status(Tone::Info, &format!("connecting to {}", self.settings.relay));
        match net::connect(&self.settings.relay, self.settings.ca.as_deref()).await {
            Ok(ws) => self.ws = Some(ws),
            Err(e) => return self.fail(End::Network(e)),
        }
        let join = ClientFrame::Join { room }.to_json();
        if self.send_frame(join).await {
            self.ui.status(Tone::Info, "searching: waiting for your peer to join the room");
        }
    }

    async fn send_frame(&mut self, text: String) -> bool {
        let Some(ws) = self.ws.as_mut() else { return false };
        match ws.send(Message::text(text)).await {
            Ok(()) => true,
            Err(e) => {
                self.fail(End::Network(format!("lost the connection to the relay: {e}")));
                false
            }
        }
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Code(typed) => {
                if self.state != State::InputValidation {
                    return;
                }
                match parse_room_code(&typed) {
                    Ok(code) => self.accept_code(code).await,
                    Err(why) => {
                        if self.fire(Event::CodeRejected) == Action::Reprompt {
                            let _ = self.verdicts.send(Verdict::Rejected(why));
                        }
                    }
                }
            }
            Input::Line(text) => {
                if text.trim().is_empty() {
                    return;
                }
                let chars = text.chars().count();
                if chars > MAX_MESSAGE_CHARS {
                    let msg = format!("message not sent: {chars} characters, the limit is {MAX_MESSAGE_CHARS}");
                    return self.ui.status(Tone::Warn, &msg);
                }
                match self.fire(Event::UserLine) {
                    Action::Queue => self.queue.push_back(text),
                    Action::Send => self.send_line(&text).await,
                    _ => {}
                }
            }
            Input::Command(cmd) => self.on_command(cmd),
            Input::Eof => match self.state {
                State::InputValidation => self.fail(End::BadInput("no valid room code was given".into())),
                State::Connected if self.queue.is_empty() => self.fail(End::EndOfInput),
                _ => self.eof_pending = true,
            },
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Quit => self.fail(End::Quit),
            Command::Help => self.ui.status(Tone::Info, HELP),
            Command::Verify => match (&self.code, self.settings.version) {
                (Some(code), _) => self.ui.verification(code),
                (None, Version::Legacy1) if self.state == State::Connected => {
                    self.ui.status(Tone::Warn, "legacy v1 sessions have no verification code")
                }
                (None, _) => self.ui.status(Tone::Info, "no verification code yet: keys are not exchanged"),
            },
            Command::Mismatch if self.state == State::Connected => self.fail(End::VerificationMismatch),
            Command::Mismatch => self.ui.status(Tone::Info, "nothing to compare yet: keys are not exchanged"),
            Command::Unknown(name) => self.ui.status(Tone::Warn, &format!("unknown command {name} (try /help)")),
        }
    }

    async fn send_line(&mut self, text: &str) {
        if let Err(not_until) = self.send_limit.check() {
            if self.ui.interactive() {
                return self.ui.status(Tone::Warn, "slow down: that message was not sent");
            }
            // Scripts are paced instead: nothing they send is dropped.
            tokio::time::sleep(not_until.wait_time_from(DefaultClock::default().now())).await;
            let _ = self.send_limit.check();
        }
        let Some(channel) = self.channel.as_mut() else { return };
        let frame = proto::msg_frame(&channel.seal(text));
        self.send_frame(frame).await;
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return,
            Some(Ok(Message::Binary(_))) => return self.fail(End::Protocol("the relay sent a binary frame".into())),
            Some(Ok(Message::Close(_))) | None => {
                return self.fail(End::Network("the relay closed the connection".into()));
            }
            Some(Err(e)) => return self.fail(End::Network(format!("lost the connection to the relay: {e}"))),
        };
        let frame = match RelayFrame::parse(text.as_str(), net::MAX_FRAME) {
            Ok(f) => f,
            Err(e) => return self.fail(End::Protocol(format!("the relay sent an invalid frame ({e})"))),
        };
        match frame {
            RelayFrame::PeerFound => {
                if self.fire(Event::PeerFound) == Action::SendKeys {
                    self.send_keys().await;
                }
            }
            RelayFrame::PeerLeft => self.fail(End::PeerLeft),
            RelayFrame::Error { code, reason } => {
                self.fail(End::Relay { code, reason: crate::ui::sanitize(&reason).chars().take(200).collect() })
            }
            RelayFrame::Signal(signal) => {
                if self.recv_limit.check().is_err() {
                    return self.fail(End::Protocol("the peer sent messages faster than allowed (flood)".into()));
                }
                match proto::decode(&signal) {
                    Ok(msg) => self.on_peer(msg).await,
                    Err(e) => self.fail(End::Protocol(format!("the peer sent a bad message: {e}"))),
                }
            }
        }
    }

    async fn send_keys(&mut self) {
        self.ui.status(Tone::Info, "peer found: exchanging keys");
        let keys = KeyPair::generate();
        let frame = match self.settings.version {
            Version::Hardened2 => proto::commit_frame(&keys.commitment()),
            Version::Legacy1 => proto::key_frame(keys.public(), false),
        };
        self.my_public = Some(*keys.public());
        self.keys = Some(keys);
        if self.send_frame(frame).await {
            let _ = self.fire(Event::KeysSent);
        }
    }

    async fn on_peer(&mut self, msg: PeerMsg) {
        let legacy = self.settings.version == Version::Legacy1;
        match msg {
            PeerMsg::Commit { commit } => {
                if self.fire(Event::PeerCommit) != Action::RevealKey {
                    return;
                }
                if legacy {
                    return self.fail(End::Protocol(
                        "the peer speaks the hardened protocol (v2); run without --legacy-v1".into(),
                    ));
                }
                if self.peer_commit.replace(commit).is_some() {
                    return self.fail(End::Protocol("the peer committed to a key twice".into()));
                }
                // Reveal only now that the peer is bound to its key.
                let Some(mine) = self.my_public else { return };
                self.send_frame(proto::key_frame(&mine, true)).await;
            }
            PeerMsg::Key { key, v2 } => {
                if self.fire(Event::PeerKey) == Action::Establish {
                    self.establish(key, v2).await;
                }
            }
            PeerMsg::Msg { payload } => {
                if self.fire(Event::PeerMsg) != Action::Show {
                    return;
                }
                let Some(channel) = self.channel.as_mut() else { return };
                match channel.open(&payload) {
                    Ok(text) => self.ui.incoming(&text),
                    Err(e) => self.fail(End::Security(e)),
                }
            }
        }
    }

    async fn establish(&mut self, key: Vec<u8>, v2: bool) {
        let version = self.settings.version;
        match (version, v2) {
            (Version::Hardened2, false) => {
                return self.fail(End::Protocol(
                    "the peer speaks only the legacy v1 protocol (no verification code, no replay protection); \
                     to talk to it anyway, both run with --legacy-v1"
                        .into(),
                ))
            }
            (Version::Legacy1, true) => {
                return self
                    .fail(End::Protocol("the peer speaks the hardened protocol (v2); run without --legacy-v1".into()))
            }
            _ => {}
        }
        let Ok(peer) = <PublicBytes>::try_from(key.as_slice()) else {
            return self.fail(End::Security(CryptoError::BadKeyLength));
        };
        if version == Version::Hardened2 {
            match self.peer_commit {
                None => return self.fail(End::Protocol("the peer revealed its key before committing to it".into())),
                Some(c) if c != crypto::commitment(&peer) => {
                    return self.fail(End::Security(CryptoError::CommitMismatch))
                }
                Some(_) => {}
            }
        }
        // The secret key is needed for nothing else: take it out so it is wiped right after.
        let (Some(keys), Some(mine)) = (self.keys.take(), self.my_public) else { return };
        let boxed = match keys.agree(&peer) {
            Ok(b) => b,
            Err(e) => return self.fail(End::Security(e)),
        };
        drop(keys);
        self.channel = Some(Channel::new(boxed, version, &mine, &peer));
        match version {
            Version::Hardened2 => {
                let code = crypto::verification_code(&mine, &peer);
                self.ui.status(Tone::Good, "keys exchanged: end-to-end encrypted");
                self.ui.verification(&code);
                self.ui.status(
                    Tone::Info,
                    "compare this code with your peer (by voice or in person); if it differs, type /mismatch",
                );
                self.code = Some(code);
            }
            Version::Legacy1 => {
                self.ui.status(Tone::Good, "keys exchanged: end-to-end encrypted (legacy v1)");
                self.ui
                    .status(Tone::Warn, "legacy v1 has no verification code: a relay in the middle cannot be detected");
            }
        }
        while let Some(line) = self.queue.pop_front() {
            if self.state != State::Connected {
                return;
            }
            if self.fire(Event::UserLine) == Action::Send {
                self.send_line(&line).await;
            }
        }
        if self.eof_pending && self.state == State::Connected {
            self.fail(End::EndOfInput);
        }
    }

    /// DISCONNECTED: close the socket, wipe every secret.
    async fn teardown(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            // Sends what is still buffered, then a close frame; bounded, the relay may be gone.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        self.channel = None;
        self.keys = None;
        self.peer_commit = None;
        self.queue.clear();
        if let Some(code) = self.code.as_mut() {
            zeroize::Zeroize::zeroize(code);
        }
    }
}
