//! The session driver: the I/O around the state machine.
//!
//! One task owns the socket, the machine (and so every secret) and the outbox of lines waiting
//! to be sent; the input thread and the UI only pass values in and out. Each turn of the loop
//! waits for whichever comes first: input, the connection being opened, a frame from the relay,
//! the pacer, the machine's deadline, or a signal. Everything it hears becomes an
//! [`Event`]; everything the machine answers is an [`Action`] performed here.
//!
//! What the driver adds to the machine is time and order:
//!
//! * **The outbox.** Every line the user gives is queued, in order, and released to the
//!   machine only while it can send, at most [`SEND_RATE`], or [`FAST_SEND_RATE`] to a peer
//!   whose key says it takes that much (token buckets under the relay's default). Typing or pasting faster than that is paced, never refused. The queue holds at
//!   most [`MAX_QUEUED`] lines; when it is full the driver stops reading input (the terminal or
//!   pipe holds the rest) and says so.
//! * **End of input.** At a terminal, Ctrl-D ends the session like /quit. From a pipe it means
//!   "nothing more to say": once the outbox is empty the machine tells the peer, and the
//!   session goes on showing what arrives until the peer finishes or leaves.
//! * **Nothing lost unseen.** Lines still queued when the session ends are shown as not sent,
//!   and counted: the process then exits with [`exit::UNSENT`](crate::end::exit::UNSENT) where it
//!   would have exited 0.

use crate::crypto::Version;
use crate::end::End;
use crate::net::{self, Connection, Socket, Target};
use crate::proto::{self, PeerMsg, RECV_RATE};
use crate::state::{Action, Event, Machine, State};
use crate::transfer::{FileRecord, Step, Transfers, WINDOW};
use crate::ui::{sanitize, Command, Input, Mode, Tone, Ui, Verdict, HELP};
use futures_util::{SinkExt, StreamExt};
use ghostwire_shared::{ClientFrame, RelayFrame, RoomCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use zeroize::Zeroizing;

/// What we send at most to a peer that did not say it takes more (v1, and v2 clients before
/// `rx`, whose flood limit is 60/s): frames per second, sustained and burst.
pub const SEND_RATE: (u32, u32) = (20, 50);
/// What we send at most to a peer whose key said it takes at least this much (`rx`): under the
/// relay's default of 100 frames/s (burst 200) with room for the control frames and for the
/// backlog a broker blip of the peer timeout leaves in the socket.
pub const FAST_SEND_RATE: (u32, u32) = (80, 100);

/// Lines waiting to be sent at most; beyond, input is not read until some go out.
pub const MAX_QUEUED: usize = 1000;

/// Reconnecting after a drop: the first wait, doubled at each attempt up to the last (each
/// drawn between half and all of it, so clients cut at once do not come back at once).
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// A connection that has carried nothing (not even a pong) for this long is dead; the driver
/// pings the relay after [`PING_AFTER`] of silence.
pub const DEAD_AFTER: Duration = Duration::from_secs(30);
/// Silence after which the driver pings the relay.
pub const PING_AFTER: Duration = Duration::from_secs(10);

/// What the session needs to know from the command line.
pub struct Settings {
    /// The relay, checked.
    pub relay: Target,
    /// Which protocol to speak.
    pub version: Version,
    /// The code (a bare room code, or one with a secret part), if given before the session (the
    /// command line, GHOSTWIRE_CODE, --new); parsed by the state machine like a typed one.
    pub code: Option<Zeroizing<String>>,
    /// How long reaching the relay may take, from TCP to the WebSocket upgrade.
    pub connect_timeout: Duration,
    /// How long a dropped session tries to resume (zero: it does not).
    pub resume_window: Duration,
    /// Lines to show once the relay is reached (the code `--new` made, and what to tell the
    /// peer): a code is not handed out for a relay that cannot be reached.
    pub announce: Vec<String>,
}

/// How a session ended: the reason, and how many lines the user gave that were not sent.
pub struct Outcome {
    /// Why the session ended.
    pub end: End,
    /// Lines given but not sent (each was shown).
    pub unsent: usize,
    /// Lines sent that no receipt confirmed (each was shown; only with a peer that sends
    /// receipts).
    pub unconfirmed: usize,
    /// Whether a session began (a valid code was taken and the relay asked for): if not, there
    /// was nothing to destroy, and the report says so.
    pub began: bool,
    /// File transfers that did not finish (each was shown).
    pub files: usize,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Connection, String>>>>;

struct Driver {
    relay: Target,
    connect_timeout: Duration,
    announce: Vec<String>,
    machine: Machine,
    ui: Ui,
    inputs: mpsc::Receiver<Input>,
    inputs_open: bool,
    verdicts: std_mpsc::Sender<Verdict>,
    connecting: Option<Connecting>,
    joining: Option<RoomCode>,
    /// Resuming: the attempts so far, and when the next one starts.
    attempts: u32,
    rejoin_at: Option<Instant>,
    /// When the socket last carried anything, and whether we pinged since.
    heard_at: Instant,
    pinged: bool,
    ws: Option<Socket>,
    /// The relay takes BURN (see [`Action::Burn`]).
    relay_burns: bool,
    outbox: VecDeque<Zeroizing<String>>,
    input_ended: bool,
    done_told: bool,
    full_said: bool,
    unsent: usize,
    send_limit: DefaultDirectRateLimiter,
    recv_limit: DefaultDirectRateLimiter,
    pace_at: Option<Instant>,
    /// When the receipt we owe is sent (see [`crate::receipts`]), and when the last one was.
    ack_at: Option<Instant>,
    acked_at: Option<Instant>,
    unconfirmed: usize,
    began: bool,
    /// Files sent and received in this session, and their records waiting to go out.
    transfers: Transfers,
    file_out: VecDeque<FileRecord>,
    files_unfinished: usize,
}

fn limiter((rate, burst): (u32, u32)) -> DefaultDirectRateLimiter {
    let nz = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(nz(rate)).allow_burst(nz(burst)))
}

/// Runs one session to its end and says how it ended.
pub async fn run(
    settings: Settings,
    ui: Ui,
    inputs: mpsc::Receiver<Input>,
    verdicts: std_mpsc::Sender<Verdict>,
) -> Outcome {
    let driver = Driver {
        relay: settings.relay,
        connect_timeout: settings.connect_timeout,
        announce: settings.announce,
        machine: Machine::new(settings.version).resuming(settings.resume_window),
        ui,
        inputs,
        inputs_open: true,
        verdicts,
        connecting: None,
        joining: None,
        attempts: 0,
        rejoin_at: None,
        heard_at: Instant::now(),
        pinged: false,
        ws: None,
        relay_burns: false,
        outbox: VecDeque::new(),
        input_ended: false,
        done_told: false,
        full_said: false,
        unsent: 0,
        send_limit: limiter(SEND_RATE),
        recv_limit: limiter(RECV_RATE),
        pace_at: None,
        ack_at: None,
        acked_at: None,
        unconfirmed: 0,
        began: false,
        transfers: Transfers::default(),
        file_out: VecDeque::new(),
        files_unfinished: 0,
    };
    driver.run(settings.code).await
}

async fn next_frame(ws: &mut Option<Socket>) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn connected(connecting: &mut Option<Connecting>) -> Result<Connection, String> {
    match connecting {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

async fn at(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self, code: Option<Zeroizing<String>>) -> Outcome {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            return Outcome {
                end: End::Network("cannot install signal handlers".into()),
                unsent: 0,
                unconfirmed: 0,
                began: false,
                files: 0,
            };
        };
        self.handle(Event::Start).await;
        if let Some(code) = code {
            self.handle(Event::CodeTyped(code)).await;
        }
        while self.machine.end().is_none() {
            let reading = self.inputs_open && self.outbox.len() < MAX_QUEUED;
            if !reading && self.inputs_open && !self.full_said {
                self.full_said = true;
                let msg = format!("{MAX_QUEUED} messages are waiting to be sent: reading more input once they go out");
                self.ui.status(Tone::Warn, &msg);
            }
            let silence_at =
                self.ws.as_ref().map(|_| self.heard_at + if self.pinged { DEAD_AFTER } else { PING_AFTER });
            tokio::select! {
                input = self.inputs.recv(), if reading => self.on_input(input).await,
                result = connected(&mut self.connecting) => {
                    self.connecting = None;
                    self.on_connected(result).await;
                }
                frame = next_frame(&mut self.ws) => {
                    self.heard_at = Instant::now();
                    self.pinged = false;
                    if let Some(event) = self.on_frame(frame) {
                        self.handle(event).await;
                    }
                }
                () = at(self.rejoin_at) => {
                    self.rejoin_at = None;
                    self.start_connecting();
                }
                () = at(silence_at) => {
                    self.on_silence().await;
                }
                () = at(self.pace_at) => self.pace_at = None,
                () = at(self.ack_at) => {
                    self.ack_at = None;
                    self.acked_at = Some(Instant::now());
                    self.handle(Event::AckDue).await;
                }
                () = at(self.machine.deadline()) => self.handle(Event::Deadline(Instant::now())).await,
                _ = term.recv() => self.handle(Event::Quit).await,
                _ = int.recv() => self.handle(Event::Quit).await,
                _ = hup.recv() => self.handle(Event::Quit).await,
            }
            if matches!(self.machine.state(), State::Connected(_)) {
                self.attempts = 0;
            }
            self.pump().await;
            self.pump_files().await;
            // A receipt goes out at once, unless one went out lately: then it waits to cover
            // what else arrives meanwhile.
            if self.ack_at.is_none() && self.machine.ack_owed() {
                let now = Instant::now();
                self.ack_at = Some(self.acked_at.map_or(now, |last| now.max(last + crate::receipts::ACK_DELAY)));
            }
        }
        self.teardown().await;
        // Everything said so far is on the screen before the final report is written beside it.
        self.ui.flush();
        let end = self.machine.end().cloned().unwrap_or(End::Quit);
        self.machine.handle(Event::Wiped);
        Outcome {
            end,
            unsent: self.unsent,
            unconfirmed: self.unconfirmed,
            began: self.began,
            files: self.files_unfinished,
        }
    }

    /// Feeds `event` to the machine and performs what it answers (sending may fail: that is
    /// fed back as the next event).
    async fn handle(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            for action in self.machine.handle(event) {
                if let Some(next) = self.perform(action).await {
                    events.push_back(next);
                }
            }
        }
    }

    async fn perform(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::PromptCode | Action::Teardown | Action::Exit => {}
            Action::Reprompt(why) => {
                let _ = self.verdicts.send(Verdict::Rejected(why));
            }
            Action::Connect(code) => {
                let _ = self.verdicts.send(Verdict::Accepted);
                let how = match self.relay.proxy() {
                    Some(proxy) => format!(" through the SOCKS5 proxy at {}", proxy.addr()),
                    None => String::new(),
                };
                self.ui.status(Tone::Info, &format!("connecting to {}{how}", self.relay.url()));
                self.joining = Some(code);
                self.began = true;
                self.start_connecting();
            }
            Action::Rejoin { room, failed } => {
                // The old socket, if any, is useless now: dropping it closes it.
                self.ws = None;
                self.connecting = None;
                self.joining = Some(room);
                self.attempts += 1;
                let delay = backoff(self.attempts);
                self.rejoin_at = Some(Instant::now() + delay);
                // The reason's first clause: the advice after it is for a first connection.
                let failed = failed.split("; ").next().unwrap_or_default();
                let why = if failed.is_empty() { String::new() } else { format!(": {failed}") };
                self.ui.status(
                    Tone::Info,
                    &format!(
                        "reconnecting (attempt {}, next in {:.1} s; ctrl-C to end){why}",
                        self.attempts,
                        delay.as_secs_f64()
                    ),
                );
            }
            Action::Send(frame) => return self.send(frame).await,
            // A relay that does not announce BURN would close on it: there is nothing to ask.
            Action::Burn if self.relay_burns => return self.send(ClientFrame::Burn.to_json()).await,
            Action::Burn => {}
            Action::Show(text) => self.ui.incoming(&text),
            Action::Say(tone, text) => self.ui.status(tone, &text),
            Action::ShowCode(code) => self.ui.verification(&code),
            Action::Delivered(lines) => self.ui.delivered(&lines),
            Action::File(record) => {
                let can_ask = self.ui.mode() != Mode::Piped;
                match self.transfers.on_record(record, can_ask) {
                    Ok(step) => self.take_step(step),
                    Err(violation) => return Some(Event::Deviation(End::Protocol(violation.to_string()))),
                }
            }
        }
        None
    }

    /// Starts connecting to the relay, first or again (the room to JOIN is in `joining`).
    fn start_connecting(&mut self) {
        let (relay, limit) = (self.relay.clone(), self.connect_timeout);
        self.connecting = Some(Box::pin(async move {
            let url = relay.url().to_owned();
            tokio::time::timeout(limit, net::connect(relay)).await.unwrap_or_else(|_| {
                Err(format!(
                    "the relay at {url} did not answer within {} (--connect-timeout): it accepted \
                     or ignored the connection but did not complete TCP, TLS and the WebSocket \
                     upgrade; is the URL a Ghostwire relay, and is it up?",
                    humantime::format_duration(limit)
                ))
            })
        }));
    }

    /// The socket has been silent: ping the relay, or, if a ping went unanswered, call the
    /// connection dead (a resuming session then reconnects).
    async fn on_silence(&mut self) {
        if self.pinged {
            self.ws = None;
            let why = format!("the relay did not answer for {}", humantime::format_duration(PING_AFTER + DEAD_AFTER));
            return self.handle(Event::NetworkError(why)).await;
        }
        self.pinged = true;
        if let Some(ws) = self.ws.as_mut() {
            if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                self.ws = None;
                self.handle(Event::NetworkError(format!("lost the connection to the relay: {e}"))).await;
            }
        }
    }

    async fn send(&mut self, frame: String) -> Option<Event> {
        let ws = self.ws.as_mut()?;
        match ws.send(Message::text(frame)).await {
            Ok(()) => None,
            Err(e) => Some(Event::NetworkError(format!("lost the connection to the relay: {e}"))),
        }
    }

    async fn on_connected(&mut self, result: Result<Connection, String>) {
        match result {
            Ok(Connection { ws, burns }) => {
                self.ws = Some(ws);
                self.heard_at = Instant::now();
                self.pinged = false;
                self.relay_burns = burns;
                for line in std::mem::take(&mut self.announce) {
                    self.ui.plain(&line);
                }
                let Some(room) = self.joining.take() else { return };
                if let Some(failed) = self.send(ClientFrame::Join { room }.to_json()).await {
                    return self.handle(failed).await;
                }
                if matches!(self.machine.state(), State::Resuming(_)) {
                    self.ui.status(Tone::Info, "reconnected: waiting for your peer to come back");
                } else {
                    self.ui.status(Tone::Info, "searching: waiting for your peer to join the room");
                }
            }
            Err(why) => self.handle(Event::NetworkError(why)).await,
        }
    }

    async fn on_input(&mut self, input: Option<Input>) {
        let input = input.unwrap_or_else(|| {
            self.inputs_open = false;
            Input::Eof
        });
        match input {
            Input::Code(typed) => {
                if matches!(self.machine.state(), State::InputValidation) {
                    self.handle(Event::CodeTyped(typed)).await;
                }
            }
            Input::Line(text) => {
                if self.ui.mode() != Mode::Piped && text.is_empty() {
                    return;
                }
                self.outbox.push_back(text);
            }
            Input::Refused(why) => {
                self.unsent += 1;
                self.ui.status(Tone::Warn, &why);
            }
            Input::Command(cmd) => self.on_command(cmd).await,
            Input::Eof => {
                self.inputs_open = false;
                if self.ui.mode() != Mode::Piped {
                    // Ctrl-D at a terminal: the person is leaving.
                    return self.handle(Event::Quit).await;
                }
                self.input_ended = true;
                if matches!(self.machine.state(), State::InputValidation) {
                    self.handle(Event::InputDone).await;
                }
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Quit => self.handle(Event::Quit).await,
            Command::Mismatch => self.handle(Event::Mismatch).await,
            Command::Help => self.ui.status(Tone::Info, HELP),
            Command::Verify => match self.machine.code() {
                Some(code) => self.ui.verification(code),
                None if matches!(self.machine.state(), State::Connected(_)) => {
                    self.ui.status(Tone::Warn, "legacy v1 sessions have no verification code")
                }
                None => self.ui.status(Tone::Info, "no verification code yet: keys are not exchanged"),
            },
            Command::Send(path) if path.is_empty() => self.ui.status(Tone::Warn, "usage: /send PATH"),
            Command::Send(_) | Command::Accept(_) | Command::Reject | Command::Cancel
                if !self.machine.can_send_file() =>
            {
                let why = if matches!(self.machine.state(), State::Resuming(_)) {
                    "not now: the session is reconnecting (try again once it is back)"
                } else if matches!(self.machine.state(), State::Connected(_)) {
                    "your peer's client cannot receive files (it is older, or speaks v1)"
                } else {
                    "not yet: files go once the keys are exchanged"
                };
                self.ui.status(Tone::Warn, why);
            }
            Command::Send(path) => {
                let result = self.transfers.offer(&expand_home(&path));
                self.took(result);
            }
            Command::Accept(dir) => {
                let dir = dir.map_or_else(crate::transfer::default_dir, |d| expand_home(&d));
                let result = self.transfers.accept(&dir);
                self.took(result);
            }
            Command::Reject => {
                let result = self.transfers.reject();
                self.took(result);
            }
            Command::Cancel => {
                let result = self.transfers.cancel();
                self.took(result);
            }
            Command::Unknown(name) => {
                // Not a command, and not sent: counted like any line that did not go out.
                self.unsent += 1;
                self.ui.status(
                    Tone::Warn,
                    &format!(
                        "not sent: {name} is not a command (/help lists them; to send a line starting with /, type //)"
                    ),
                );
            }
        }
    }

    /// A command's step, or why it could not be taken.
    fn took(&mut self, result: Result<Step, String>) {
        match result {
            Ok(step) => self.take_step(step),
            Err(why) => self.ui.status(Tone::Warn, &why),
        }
    }

    /// Shows what a transfer says and queues what it sends.
    fn take_step(&mut self, step: Step) {
        for (tone, text) in step.say {
            self.ui.status(tone, &text);
        }
        self.file_out.extend(step.send);
    }

    /// Sends the transfers' records, then the next chunks, while the machine can and the
    /// window allows: lines go first (they wait behind at most one window of chunks).
    async fn pump_files(&mut self) {
        while self.machine.can_send_file() {
            if let Some(record) = self.file_out.pop_front() {
                self.handle(Event::File(record)).await;
                continue;
            }
            if !self.outbox.is_empty() || !self.transfers.has_chunks() || self.machine.unconfirmed() >= WINDOW {
                return;
            }
            let step = self.transfers.next_chunk();
            self.take_step(step);
        }
    }

    /// Releases queued lines while the machine can send and the pacer allows; then, once input
    /// has ended and nothing is left, tells the machine.
    async fn pump(&mut self) {
        while self.pace_at.is_none() && self.machine.can_send() {
            if self.outbox.is_empty() {
                if self.input_ended && !self.done_told {
                    self.done_told = true;
                    self.handle(Event::InputDone).await;
                }
                return;
            }
            if let Err(not_until) = self.send_limit.check() {
                self.pace_at = Some(Instant::now() + not_until.wait_time_from(DefaultClock::default().now()));
                return;
            }
            if let Some(line) = self.outbox.pop_front() {
                if self.outbox.len() < MAX_QUEUED {
                    self.full_said = false;
                }
                self.handle(Event::Send(line)).await;
            }
        }
    }

    /// A frame (or the lack of one) from the relay, as an event for the machine (none for
    /// WebSocket control frames, which tungstenite answers itself).
    fn on_frame(&mut self, frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Option<Event> {
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return None,
            Some(Ok(Message::Binary(_))) => {
                return Some(Event::Deviation(End::Protocol("the relay sent a binary frame".into())));
            }
            Some(Ok(Message::Close(Some(close)))) if is_relay_code(close.code) => {
                let code = u16::from(close.code);
                return Some(Event::Relay { code, reason: sanitize(&close.reason).chars().take(200).collect() });
            }
            Some(Ok(Message::Close(_))) | None => {
                self.ws = None;
                return Some(Event::NetworkError("the relay closed the connection".into()));
            }
            Some(Err(e)) => {
                self.ws = None;
                return Some(Event::NetworkError(format!("lost the connection to the relay: {e}")));
            }
        };
        Some(self.on_text(&text))
    }

    fn on_text(&mut self, text: &str) -> Event {
        let frame = match RelayFrame::parse(text, net::MAX_FRAME) {
            Ok(f) => f,
            Err(e) => return Event::Deviation(End::Protocol(format!("the relay sent an invalid frame ({e})"))),
        };
        match frame {
            RelayFrame::PeerFound => Event::PeerFound,
            RelayFrame::PeerLeft => Event::PeerLeft,
            RelayFrame::Error { code, reason } => {
                Event::Relay { code, reason: sanitize(&reason).chars().take(200).collect() }
            }
            RelayFrame::Signal(signal) => {
                // A frame this long can only be a file chunk (the record layer refuses any other
                // record that large, and chunks only within a transfer this side accepted): it
                // is paced by the transfer's window, not counted as a message.
                let bulk = text.len() > BULK_FRAME;
                if !bulk && self.recv_limit.check().is_err() {
                    return Event::Deviation(End::Protocol(
                        "the peer sent messages faster than allowed (flood)".into(),
                    ));
                }
                match proto::decode(&signal) {
                    Ok(PeerMsg::Commit { commit }) => Event::PeerCommit(commit),
                    Ok(PeerMsg::Resume(hello)) => Event::PeerResume(hello),
                    Ok(PeerMsg::Key { key, v2, rx, acks, resume, files }) => {
                        // A peer that takes more is sent more; the relay's own limit still bounds it.
                        if rx.is_some_and(|rx| rx >= u64::from(FAST_SEND_RATE.0)) {
                            self.send_limit = limiter(FAST_SEND_RATE);
                        }
                        Event::PeerKey { key, v2, acks, resume, files }
                    }
                    Ok(PeerMsg::Msg { payload }) => Event::PeerRecord(payload),
                    Ok(PeerMsg::Pake { msg }) => Event::PeerPake(msg),
                    Ok(PeerMsg::Confirm { mac }) => Event::PeerConfirm(mac),
                    Err(e) => Event::Deviation(End::Protocol(format!("the peer sent a bad message: {e}"))),
                }
            }
        }
    }

    /// DISCONNECTED: close the socket, show what was not sent, wipe the outbox.
    async fn teardown(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            // Sends what is still buffered, then a close frame; bounded, the relay may be gone.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        self.unsent += self.outbox.len();
        for line in self.outbox.drain(..) {
            self.ui.unsent(&line);
        }
        self.file_out.clear();
        for said in self.transfers.ended() {
            self.files_unfinished += 1;
            self.ui.status(Tone::Warn, &said);
        }
        if let Some(typed) = self.ui.abandoned() {
            self.unsent += 1;
            self.ui.unsent(&typed);
        }
        // Sent, but the peer never confirmed them: they may not have arrived.
        for line in self.machine.take_unconfirmed() {
            self.unconfirmed += 1;
            let mut shown = Zeroizing::new(String::from("not confirmed as delivered: "));
            shown.push_str(&line);
            self.ui.status(Tone::Warn, &shown);
        }
    }
}

/// The wait before reconnect attempt `attempt` (from 1): [`BACKOFF`]'s first wait doubled at each
/// attempt up to its last, then drawn between half and all of that.
fn backoff(attempt: u32) -> Duration {
    use crypto_box::aead::rand_core::RngCore;
    let (first, last) = BACKOFF;
    let full = first.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(last);
    let half = full / 2;
    let jitter = u64::from(crypto_box::aead::OsRng.next_u32()) % (half.as_millis() as u64 + 1);
    half + Duration::from_millis(jitter)
}

/// Whether a close code is one the relay ends connections with (1001 and 4000-4999).
fn is_relay_code(code: CloseCode) -> bool {
    let n = u16::from(code);
    n == 1001 || (4000..5000).contains(&n)
}

/// A frame longer than this is bulk (a file chunk's frame is about 43 KiB; a line's at most
/// about 6 KiB).
const BULK_FRAME: usize = 40_000;

/// `~/x` as the person meant it: under their home directory.
fn expand_home(path: &str) -> std::path::PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => std::path::PathBuf::from(path),
    }
}
