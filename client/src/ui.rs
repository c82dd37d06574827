//! The three front ends: a line editor, a plain terminal, and pipes for scripts.
//!
//! Input is read on its own thread (reading blocks) and reaches the session as [`Input`] values
//! over a channel; the session never waits for the thread, so Ctrl-C and the relay are always
//! heard. Which front end runs:
//!
//! * **editor** (stdin and stdout are terminals the line editor can drive): rustyline, so that
//!   messages from the peer appear above the line being typed without disturbing it. It is
//!   built with `buffer-redux`, which keeps what was typed ahead or pasted between two lines.
//!   A bracketed paste of several lines becomes one message per line. A line over the length
//!   limit goes back into the editor to be shortened.
//! * **plain** (a terminal the editor cannot drive, e.g. `TERM=dumb`): the client's own simple
//!   line input ([`plain`](crate::plain)), so a message that arrives mid-line is printed above
//!   the half-typed text, not onto it; the same commands; output as plain lines.
//! * **piped** (stdin or stdout is not a terminal): each stdin line is a message, sent as it
//!   is, whatever it starts with (no commands: a script's data is never obeyed); received
//!   messages go to stdout one per line, status lines to stderr; end of input means "nothing
//!   more to say", not "hang up" (see `session`).
//!
//! Commands come only from a person typing at a terminal: a bracketed paste of several lines
//! is data in the editor too. (A terminal without bracketed paste, or `TERM=dumb`, cannot tell
//! a paste from typing; there a line starting with `/` is a command, `//` escapes it.)
//!
//! Lines read by the plain and piped front ends go through one fixed-size buffer that is wiped
//! when the reader ends, and each line is a `Zeroizing` string. rustyline keeps no history here
//! and is built without file history. What it copies internally (its line buffer, its kill ring,
//! the printer's queue) cannot be wiped from outside; those copies live in memory the client
//! locks when the system allows it (see `harden`).

use crate::plain::{self, Typing};
use crate::proto::MAX_MESSAGE_CHARS;
use owo_colors::{OwoColorize, Stream};
use rustyline::error::ReadlineError;
use rustyline::{Cmd, EventHandler, ExternalPrinter, KeyEvent};
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::mpsc;
use zeroize::{Zeroize, Zeroizing};

/// Something the user did.
pub enum Input {
    /// A room code typed at the prompt.
    Code(Zeroizing<String>),
    /// A message to send.
    Line(Zeroizing<String>),
    /// A slash command.
    Command(Command),
    /// A line that cannot be sent (too long, not UTF-8), already described for the user.
    Refused(String),
    /// End of input: Ctrl-D at a terminal, or the end of stdin.
    Eof,
}

/// The slash commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/quit`, `/exit`, or Ctrl-C in the editor.
    Quit,
    /// `/verify`
    Verify,
    /// `/help`
    Help,
    /// `/mismatch`
    Mismatch,
    /// `/send PATH`
    Send(String),
    /// `/accept [DIR]`
    Accept(Option<String>),
    /// `/reject`
    Reject,
    /// `/cancel`
    Cancel,
    /// Anything else starting with a single `/`.
    Unknown(String),
}

/// The session's answer to a typed room code.
pub enum Verdict {
    /// The code is valid; stop prompting.
    Accepted,
    /// Invalid, with the reason; prompt again.
    Rejected(String),
}

/// The help text for `/help`.
pub const HELP: &str = "commands: /verify shows the verification code again · /mismatch ends the session if the \
codes differ (someone may be in the middle) · /send PATH offers a file to your peer · /accept [DIR] takes the \
file your peer offers (into DIR, or here) · /reject declines it · /cancel stops a transfer · /quit ends the \
session (so does Ctrl-C or Ctrl-D) · anything else is sent to your peer; to send a line that starts with /, type \
it as // (a pasted block is sent as it is)";

/// How a status line looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Progress.
    Info,
    /// Something good happened.
    Good,
    /// Something the user should know.
    Warn,
    /// Something went wrong.
    Bad,
}

/// Which front end is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The line editor on a terminal.
    Editor,
    /// A terminal the editor cannot drive: plain line input.
    Plain,
    /// Pipes or files: scriptable.
    Piped,
}

/// What the printer thread is given: a line to show, or a request to say when every line
/// before it is shown.
enum Print {
    Line(Zeroizing<String>),
    Flushed(std_mpsc::Sender<()>),
}

/// The editor's printer, on a thread of its own. rustyline's printer holds one message at a
/// time and blocks until the editor takes it; the editor takes it between keys, and may itself
/// wait for the session to take a line it read (a paste of more lines than the input queue
/// holds). Printing from the session would then deadlock both; through this thread the
/// session never waits for the editor.
struct Printer {
    jobs: std_mpsc::Sender<Print>,
}

impl Printer {
    fn start(mut printer: Box<dyn ExternalPrinter + Send>) -> Printer {
        let (jobs, queue) = std_mpsc::channel::<Print>();
        std::thread::spawn(move || {
            for job in queue {
                match job {
                    // The printer takes ownership; its copy is rustyline's (see the module docs).
                    Print::Line(mut line) => {
                        let _ = printer.print(std::mem::take(&mut *line));
                    }
                    Print::Flushed(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Printer { jobs }
    }

    /// Waits (at most a second) until every line given so far is shown.
    fn flush(&self) {
        let (done, shown) = std_mpsc::channel();
        if self.jobs.send(Print::Flushed(done)).is_ok() {
            let _ = shown.recv_timeout(std::time::Duration::from_secs(1));
        }
    }
}

/// Where output goes.
pub struct Ui {
    mode: Mode,
    printer: Option<Printer>,
    /// The line being typed at a plain terminal, printed around.
    typing: Option<Arc<Typing>>,
}

/// Classifies one line a person or script gave: a command, or a message (`//x` sends `/x`).
fn classify(line: Zeroizing<String>) -> Input {
    if line.starts_with("//") {
        return Input::Line(Zeroizing::new(line[1..].to_owned()));
    }
    let word = line.trim();
    if !word.starts_with('/') {
        return Input::Line(line);
    }
    let (name, rest) = word.split_once(char::is_whitespace).map_or((word, ""), |(n, r)| (n, r.trim()));
    let arg = (!rest.is_empty()).then(|| rest.to_owned());
    Input::Command(match (name, arg) {
        ("/send", path) => Command::Send(path.unwrap_or_default()),
        ("/accept", dir) => Command::Accept(dir),
        ("/reject", None) => Command::Reject,
        ("/cancel", None) => Command::Cancel,
        _ => return Input::Command(simple(word)),
    })
}

/// A command without arguments.
fn simple(word: &str) -> Command {
    match word {
        "/quit" | "/exit" => Command::Quit,
        "/verify" => Command::Verify,
        "/help" => Command::Help,
        "/mismatch" => Command::Mismatch,
        other => Command::Unknown(other.chars().take(32).collect()),
    }
}

/// The one filter for text that came from the network (a peer's message, a relay's reason, an
/// error that quotes a frame) or from a user, before it reaches the terminal: every character
/// that could drive the terminal or hide what a line says becomes U+FFFD.
///
/// That is every control character but tab (C0, DEL and C1: escape sequences, OSC 52, title
/// changes), the bidirectional controls (U+061C, U+200E/F, U+202A–202E, U+2066–2069), which can
/// make a line read as something it is not, and the invisible ones (U+200B–200D, U+2028/2029,
/// U+FEFF). Every status line and the final report pass through it ([`Ui::status`], `main`).
pub fn sanitize(text: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    out.extend(text.chars().map(|c| if hidden(c) { '\u{FFFD}' } else { c }));
    out
}

/// Whether `c` must not reach the terminal as it is (see [`sanitize`]).
pub fn hidden(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}'
                | '\u{2029}' | '\u{FEFF}'
        )
}

/// Why a line is too long to send, if it is.
fn too_long(line: &str) -> Option<usize> {
    let chars = line.chars().count();
    (chars > MAX_MESSAGE_CHARS).then_some(chars)
}

impl Ui {
    /// Starts the input thread for the front end that fits: the editor when `terminal` (stdin
    /// and stdout are terminals) and it can drive it, else plain terminal input; pipes when not
    /// `terminal`. `need_code` makes the first inputs room codes until one is accepted (answered
    /// through the returned verdict sender). `warnings` are shown before the input thread can
    /// print its first prompt, followed by one of the Ui's own if the editor cannot be used.
    pub fn start(
        terminal: bool,
        need_code: bool,
        warnings: &[String],
    ) -> (Ui, mpsc::Receiver<Input>, std_mpsc::Sender<Verdict>) {
        let (tx, rx) = mpsc::channel(64);
        let (verdict_tx, verdict_rx) = std_mpsc::channel();
        let (mut ui, editor, own_warning) = match terminal.then(editor) {
            Some(Ok((editor, printer))) => {
                (Ui { mode: Mode::Editor, printer: Some(Printer::start(printer)), typing: None }, Some(editor), None)
            }
            Some(Err(e)) => (
                Ui { mode: Mode::Plain, printer: None, typing: None },
                None,
                Some(format!("the line editor cannot drive this terminal ({e}): using plain line input")),
            ),
            None => (Ui { mode: Mode::Piped, printer: None, typing: None }, None, None),
        };
        // A plain terminal: the client's own line input, if the terminal lets it turn its own off.
        let plain = (ui.mode == Mode::Plain).then(|| Arc::new(Typing::default()));
        let plain = plain.and_then(|typing| plain::Reader::new(Arc::clone(&typing)).ok().map(|r| (r, typing)));
        if let Some((_, typing)) = &plain {
            ui.typing = Some(Arc::clone(typing));
        }
        // Before the reader starts: its prompt must come after what the user has to read first.
        for warning in warnings.iter().chain(&own_warning) {
            ui.status(Tone::Warn, warning);
        }
        let mode = ui.mode;
        match (editor, plain) {
            (Some(editor), _) => std::thread::spawn(move || read_editor(editor, need_code, tx, verdict_rx)),
            (None, Some((reader, _))) => std::thread::spawn(move || read_plain(reader, need_code, tx, verdict_rx)),
            (None, None) => std::thread::spawn(move || read_lines(mode, need_code, tx, verdict_rx)),
        };
        (ui, rx, verdict_tx)
    }

    /// Waits (bounded) until every line given to the editor's printer is shown: before the
    /// session's last words are written beside it.
    pub fn flush(&self) {
        if let Some(p) = &self.printer {
            p.flush();
        }
    }

    /// The front end in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn emit(&self, line: &str, to_stdout: bool) {
        match &self.printer {
            Some(p) => {
                let mut copy = Zeroizing::new(String::with_capacity(line.len() + 1));
                copy.push_str(line);
                copy.push('\n');
                let _ = p.jobs.send(Print::Line(copy));
            }
            None => match (&self.typing, to_stdout) {
                (Some(typing), true) => typing.print_over(&mut std::io::stdout().lock(), line),
                (Some(typing), false) => typing.print_over(&mut std::io::stderr().lock(), line),
                (None, true) => {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                (None, false) => eprintln!("{line}"),
            },
        }
    }

    /// A status line (stderr unless the editor shows it).
    pub fn status(&self, tone: Tone, text: &str) {
        let text = sanitize(text);
        let text = text.as_str();
        let line = match tone {
            Tone::Info => format!("{}", format!("· {text}").if_supports_color(Stream::Stderr, |t| t.cyan())),
            Tone::Good => format!("{}", format!("✓ {text}").if_supports_color(Stream::Stderr, |t| t.green())),
            Tone::Warn => format!("{}", format!("! {text}").if_supports_color(Stream::Stderr, |t| t.yellow())),
            Tone::Bad => format!("{}", format!("✗ {text}").if_supports_color(Stream::Stderr, |t| t.red())),
        };
        self.emit(&line, false);
    }

    /// A line of our own, shown as it is (stderr unless the editor shows it).
    pub fn plain(&self, text: &str) {
        self.emit(text, false);
    }

    /// The verification code, on its own line starting `verification code: `.
    pub fn verification(&self, code: &str) {
        let line = format!("verification code: {code}");
        self.emit(&format!("{}", line.if_supports_color(Stream::Stderr, |t| t.bold())), false);
    }

    /// A message from the peer: verbatim on stdout when piped, labelled at a terminal.
    pub fn incoming(&self, text: &str) {
        let clean = sanitize(text);
        if self.mode == Mode::Piped {
            return self.emit(&clean, true);
        }
        let label = "peer:".if_supports_color(Stream::Stdout, |t| t.magenta()).to_string();
        let mut line = Zeroizing::new(String::with_capacity(label.len() + 1 + clean.len()));
        line.push_str(&label);
        line.push(' ');
        line.push_str(&clean);
        self.emit(&line, true);
    }

    /// A message left half-typed at a plain terminal when the session ended (taken: reported
    /// once).
    pub fn abandoned(&self) -> Option<Zeroizing<String>> {
        self.typing.as_ref().and_then(|t| t.abandoned())
    }

    /// Marks our `lines` delivered (a receipt confirmed them), at a terminal: one dim line per
    /// receipt, quoting the line (or the first and last of several), cut to [`QUOTED`]
    /// characters. Piped output stays the peer's lines and the status a script reads.
    pub fn delivered(&self, lines: &[Zeroizing<String>]) {
        if self.mode == Mode::Piped {
            return;
        }
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else { return };
        // Sized once, so no growth leaves a copy of the text behind unwiped.
        let mut text = Zeroizing::new(String::with_capacity(400));
        text.push_str("✓ delivered: ");
        if lines.len() == 1 {
            quote_into(&mut text, first);
        } else {
            text.push_str(&format!("{} lines, ", lines.len()));
            quote_into(&mut text, first);
            text.push_str(" … ");
            quote_into(&mut text, last);
        }
        let mut line = Zeroizing::new(String::with_capacity(text.len() + 16));
        let _ = std::fmt::Write::write_fmt(
            &mut *line,
            format_args!("{}", text.as_str().if_supports_color(Stream::Stderr, |t| t.dimmed())),
        );
        self.emit(&line, false);
    }

    /// A line the user gave that was not sent, shown with its text so nothing is lost unseen.
    pub fn unsent(&self, text: &str) {
        let clean = sanitize(text);
        let mut line = Zeroizing::new(String::with_capacity(10 + clean.len()));
        line.push_str("not sent: ");
        line.push_str(&clean);
        self.status(Tone::Warn, &line);
    }
}

/// Characters of one of our lines quoted in a delivery mark.
const QUOTED: usize = 40;

/// Appends `line` to `out` in quotes, sanitized and cut to [`QUOTED`] characters.
fn quote_into(out: &mut String, line: &str) {
    let clean = sanitize(line);
    out.push('"');
    out.extend(clean.chars().take(QUOTED));
    if clean.chars().count() > QUOTED {
        out.push('…');
    }
    out.push('"');
}

type Editor = rustyline::Editor<Words, rustyline::history::DefaultHistory>;
/// The editor, and how the person last left it with text in it (see `LeaveWithText`).
type Leaving = (Editor, Arc<AtomicU8>);

/// Tab completion of the code's words at the room code prompt (and nothing once chatting: the
/// helper is removed when the code is accepted).
struct Words;

impl rustyline::completion::Completer for Words {
    type Candidate = String;
    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        let (start, words) = crate::code::complete(line, pos);
        Ok((start, words.into_iter().map(str::to_owned).collect()))
    }
}
impl rustyline::hint::Hinter for Words {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Words {}
impl rustyline::validate::Validator for Words {}
impl rustyline::Helper for Words {}

/// The line editor and its printer, if this terminal supports them.
fn editor() -> Result<(Leaving, Box<dyn ExternalPrinter + Send>), String> {
    let config = rustyline::Config::builder()
        .auto_add_history(false)
        .max_history_size(0)
        .map_err(|e| e.to_string())?
        .completion_type(rustyline::CompletionType::List);
    let mut editor = Editor::with_config(config.build()).map_err(|e| e.to_string())?;
    let leaving = Arc::new(AtomicU8::new(STAYING));
    for (key, how) in [(KeyEvent::ctrl('D'), LEFT_EOF), (KeyEvent::ctrl('C'), LEFT_INTERRUPT)] {
        let handler = LeaveWithText { leaving: Arc::clone(&leaving), how };
        editor.bind_sequence(key, EventHandler::Conditional(Box::new(handler)));
    }
    // rustyline refuses (ENOTTY) a terminal it cannot drive, such as TERM=dumb.
    let printer = editor.create_external_printer().map_err(|e| match e {
        ReadlineError::Errno(errno) if errno as i32 == nix::libc::ENOTTY => "unsupported terminal".to_owned(),
        other => other.to_string(),
    })?;
    Ok(((editor, leaving), Box::new(printer)))
}

/// The line was typed to the end and not ended by Ctrl-D or Ctrl-C.
const STAYING: u8 = 0;
/// Ctrl-D at the end of a line with text in it.
const LEFT_EOF: u8 = 1;
/// Ctrl-C with text in the editor.
const LEFT_INTERRUPT: u8 = 2;

/// Ctrl-D at the end of a line with text, or Ctrl-C with text: the person is leaving, and the
/// text must not vanish with the editor. The line is handed over (as Enter would) with `how`
/// recorded, so the reader reports it as not sent and then ends. On an empty line both keep
/// their meaning (end of input, interrupt); Ctrl-D inside a line deletes, as in every readline.
struct LeaveWithText {
    leaving: Arc<AtomicU8>,
    how: u8,
}

impl rustyline::ConditionalEventHandler for LeaveWithText {
    fn handle(
        &self,
        _: &rustyline::Event,
        _: rustyline::RepeatCount,
        _: bool,
        ctx: &rustyline::EventContext<'_>,
    ) -> Option<Cmd> {
        if ctx.line().is_empty() || (self.how == LEFT_EOF && ctx.pos() < ctx.line().len()) {
            return None;
        }
        self.leaving.store(self.how, Ordering::Release);
        Some(Cmd::AcceptLine)
    }
}

/// Hands a typed room code to the session and waits for its verdict: `Some(true)` accepted,
/// `Some(false)` rejected (the reason is shown; ask again), `None` the session is gone.
fn submit_code(
    line: Zeroizing<String>,
    tx: &mpsc::Sender<Input>,
    verdicts: &std_mpsc::Receiver<Verdict>,
) -> Option<bool> {
    tx.blocking_send(Input::Code(line)).ok()?;
    match verdicts.recv().ok()? {
        Verdict::Accepted => Some(true),
        Verdict::Rejected(why) => {
            eprintln!("{}", sanitize(&why).as_str());
            Some(false)
        }
    }
}

fn read_editor(
    (mut editor, leaving): Leaving,
    need_code: bool,
    tx: mpsc::Sender<Input>,
    verdicts: std_mpsc::Receiver<Verdict>,
) {
    let ended = |e: ReadlineError| match e {
        ReadlineError::Interrupted => Input::Command(Command::Quit),
        _ => Input::Eof,
    };
    // How the person left with text in the editor (see `LeaveWithText`), as the input it means.
    let left = |how: u8| match how {
        LEFT_INTERRUPT => Some(Input::Command(Command::Quit)),
        LEFT_EOF => Some(Input::Eof),
        _ => None,
    };
    if need_code {
        editor.set_helper(Some(Words));
        // A refused code stays in the editor to be corrected, not typed again.
        let mut refused: Option<Zeroizing<String>> = None;
        loop {
            let read = match refused.take() {
                Some(text) => editor.readline_with_initial("room code: ", (&text, "")),
                None => editor.readline("room code: "),
            };
            match read {
                Ok(line) => {
                    let line = Zeroizing::new(line);
                    // Leaving at the prompt: a half-typed code is a secret, not shown again.
                    if let Some(input) = left(leaving.swap(STAYING, Ordering::AcqRel)) {
                        let _ = tx.blocking_send(input);
                        return;
                    }
                    match submit_code(line.clone(), &tx, &verdicts) {
                        Some(true) => {
                            editor.set_helper(None);
                            break;
                        }
                        Some(false) => refused = Some(line),
                        None => return,
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(ended(e));
                    return;
                }
            }
        }
    }
    // Text put back into the editor: a line over the limit, with whatever was pasted after it.
    let mut again: Option<Zeroizing<String>> = None;
    loop {
        let read = match again.take() {
            Some(text) => editor.readline_with_initial("> ", (&text, "")),
            None => editor.readline("> "),
        };
        let text = match read {
            Ok(text) => Zeroizing::new(text),
            Err(e) => {
                let _ = tx.blocking_send(ended(e));
                return;
            }
        };
        if let Some(input) = left(leaving.swap(STAYING, Ordering::AcqRel)) {
            // Typed but not sent with Enter: shown as not sent (and counted), never dropped.
            for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
                let shown = format!("not sent (you left before pressing Enter): {}", sanitize(line).as_str());
                let _ = tx.blocking_send(Input::Refused(shown));
            }
            let _ = tx.blocking_send(input);
            return;
        }
        // A bracketed paste arrives as one "line" holding newlines: one message per line, and
        // every one of them data. Commands come only from a person typing: a pasted `/quit` is
        // sent, not obeyed.
        let pasted = text.contains(['\n', '\r']);
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let (line, after) = rest.split_once(['\n', '\r']).unwrap_or((rest, ""));
            if let Some(chars) = too_long(line) {
                eprintln!(
                    "! not sent: {chars} characters, the limit is {MAX_MESSAGE_CHARS}; shorten it and press Enter"
                );
                again = Some(Zeroizing::new(rest.to_owned()));
                break;
            }
            rest = after;
            if line.is_empty() {
                continue;
            }
            let line = Zeroizing::new(line.to_owned());
            let input = if pasted { Input::Line(line) } else { classify(line) };
            let quit = matches!(input, Input::Command(Command::Quit));
            if tx.blocking_send(input).is_err() || quit {
                return;
            }
        }
    }
}

/// Lines from stdin through one wiped buffer. A line longer than the buffer is refused whole.
struct LineReader {
    input: std::fs::File,
    buf: Zeroizing<Vec<u8>>,
    /// Bytes in `buf[..filled]` not yet returned.
    filled: usize,
    eof: bool,
    /// 1-based number of the next line.
    number: usize,
}

/// Enough for the longest message (1000 characters of up to 4 bytes) and a command.
const LINE_BUFFER: usize = 8 * 1024;

enum Line {
    Text(Zeroizing<String>),
    Bad(String),
}

impl LineReader {
    fn new() -> std::io::Result<LineReader> {
        let input = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        Ok(LineReader { input, buf: Zeroizing::new(vec![0; LINE_BUFFER]), filled: 0, eof: false, number: 1 })
    }

    /// The next line (without its `\n` or `\r\n`), or `None` at the end of input.
    fn next(&mut self) -> Option<Line> {
        let mut overlong = false;
        loop {
            if let Some(end) = self.buf[..self.filled].iter().position(|b| *b == b'\n') {
                let line = self.take(end, 1);
                if overlong {
                    return Some(self.bad("is too long to send"));
                }
                return Some(line);
            }
            if self.eof {
                if self.filled == 0 && !overlong {
                    return None;
                }
                let line = self.take(self.filled, 0);
                return Some(if overlong { self.bad("is too long to send") } else { line });
            }
            if self.filled == self.buf.len() {
                // No newline in a full buffer: the line is over any limit; drop it, keep reading.
                overlong = true;
                self.buf.zeroize();
                self.filled = 0;
            }
            match self.input.read(&mut self.buf[self.filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.eof = true,
            }
        }
    }

    /// Takes `len` bytes as a line and drops `skip` more (the newline), wiping what moved.
    fn take(&mut self, len: usize, skip: usize) -> Line {
        let number = self.number;
        self.number += 1;
        let raw = &self.buf[..len];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(text) => {
                let mut s = Zeroizing::new(String::with_capacity(text.len()));
                s.push_str(text);
                Line::Text(s)
            }
            Err(_) => Line::Bad(format!("line {number} not sent: it is not valid UTF-8")),
        };
        let used = len + skip;
        self.buf.copy_within(used..self.filled, 0);
        let filled = self.filled - used;
        self.buf[filled..self.filled].zeroize();
        self.filled = filled;
        line
    }

    fn bad(&self, what: &str) -> Line {
        Line::Bad(format!("line {} not sent: it {what}", self.number - 1))
    }
}

/// Reads room codes with `next` (`None`: input ended; `Some(None)`: a line that was no code,
/// already described) and hands each to the session until one is accepted (`true`). `false`
/// when input ended (the session is told) or the session is gone.
fn ask_code(
    mut next: impl FnMut() -> Option<Option<Zeroizing<String>>>,
    tx: &mpsc::Sender<Input>,
    verdicts: &std_mpsc::Receiver<Verdict>,
) -> bool {
    loop {
        let line = match next() {
            Some(Some(line)) => line,
            Some(None) => continue,
            None => {
                let _ = tx.blocking_send(Input::Eof);
                return false;
            }
        };
        match submit_code(line, tx, verdicts) {
            Some(true) => return true,
            Some(false) => continue,
            None => return false,
        }
    }
}

/// The plain-terminal front end: the client's own line input (see [`plain`]).
fn read_plain(
    mut reader: plain::Reader,
    need_code: bool,
    tx: mpsc::Sender<Input>,
    verdicts: std_mpsc::Receiver<Verdict>,
) {
    let next_code = || {
        eprint!("room code: ");
        match reader.next(false) {
            plain::Read::Line(line) => Some(Some(line)),
            plain::Read::End => None,
        }
    };
    if need_code && !ask_code(next_code, &tx, &verdicts) {
        return;
    }
    loop {
        let input = match reader.next(true) {
            plain::Read::Line(text) if text.is_empty() => continue,
            plain::Read::Line(text) => match too_long(&text) {
                Some(chars) => Input::Refused(format!(
                    "not sent: {chars} characters, the limit is {MAX_MESSAGE_CHARS}: {}",
                    sanitize(&text).as_str()
                )),
                None => classify(text),
            },
            // What was typed stays with the Ui, which reports it as not sent.
            plain::Read::End => Input::Eof,
        };
        let end = matches!(input, Input::Eof | Input::Command(Command::Quit));
        if tx.blocking_send(input).is_err() || end {
            return;
        }
    }
}

/// The plain-terminal (when its own line input cannot be turned off) and piped front ends: one
/// line at a time from stdin.
fn read_lines(mode: Mode, need_code: bool, tx: mpsc::Sender<Input>, verdicts: std_mpsc::Receiver<Verdict>) {
    let Ok(mut reader) = LineReader::new() else {
        let _ = tx.blocking_send(Input::Eof);
        return;
    };
    // A person at a terminal (even with stdout piped on) may type commands; a pipe may not.
    let typing = std::io::stdin().is_terminal();
    let next_code = || {
        if mode == Mode::Plain {
            eprint!("room code: ");
        }
        match reader.next()? {
            Line::Text(line) => Some(Some(line)),
            Line::Bad(why) => {
                eprintln!("{}", sanitize(&why).as_str());
                Some(None)
            }
        }
    };
    if need_code && !ask_code(next_code, &tx, &verdicts) {
        return;
    }
    while let Some(line) = reader.next() {
        let input = match line {
            Line::Bad(why) => Input::Refused(why),
            Line::Text(text) if mode == Mode::Plain && text.is_empty() => continue,
            Line::Text(text) => match too_long(&text) {
                Some(chars) => Input::Refused(format!(
                    "line {} not sent: {chars} characters, the limit is {MAX_MESSAGE_CHARS}",
                    reader.number - 1
                )),
                // From a pipe every line is data, sent as it is; at a plain terminal a person
                // types, and a line starting with `/` is a command.
                None if !typing => Input::Line(text),
                None => classify(text),
            },
        };
        if tx.blocking_send(input).is_err() {
            return;
        }
    }
    let _ = tx.blocking_send(Input::Eof);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(s: &str) -> Option<String> {
        match classify(Zeroizing::new(s.to_owned())) {
            Input::Line(l) => Some(l.to_string()),
            _ => None,
        }
    }

    #[test]
    fn slash_lines_are_commands_unless_doubled() {
        assert_eq!(line_of("//etc/passwd"), Some("/etc/passwd".into()));
        assert_eq!(line_of("// spaced"), Some("/ spaced".into()));
        assert_eq!(line_of("hello /quit"), Some("hello /quit".into()));
        assert!(matches!(classify(Zeroizing::new("/quit".into())), Input::Command(Command::Quit)));
        assert!(matches!(classify(Zeroizing::new(" /verify ".into())), Input::Command(Command::Verify)));
        assert!(matches!(classify(Zeroizing::new("/etc".into())), Input::Command(Command::Unknown(w)) if w == "/etc"));
    }

    #[test]
    fn peers_cannot_send_terminal_controls() {
        assert_eq!(sanitize("a\x1b[2Jb\tc\u{7}").as_str(), "a\u{FFFD}[2Jb\tc\u{FFFD}");
        // Every class the filter names, one character each: C0, DEL, C1 (CSI, OSC), bidi
        // embeddings and isolates, marks, invisible spaces and separators.
        let hostile = [
            '\u{0}', '\u{1b}', '\r', '\n', '\u{7f}', '\u{9b}', '\u{9d}', '\u{061C}', '\u{200B}', '\u{200C}',
            '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}',
            '\u{2067}', '\u{2068}', '\u{2069}', '\u{2028}', '\u{2029}', '\u{FEFF}',
        ];
        for c in hostile {
            assert_eq!(sanitize(&format!("x{c}y")).as_str(), "x\u{FFFD}y", "U+{:04X} got through", u32::from(c));
        }
        // What people write stays as it is: accents, CJK, right-to-left scripts, emoji.
        for fine in ["café", "日本語", "שלום עולם", "مرحبا", "🙂👍", "a\tb"] {
            assert_eq!(sanitize(fine).as_str(), fine);
        }
    }
}
