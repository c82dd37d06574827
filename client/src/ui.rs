//! The two front ends: an interactive line editor, and plain pipes for scripts.
//!
//! Input is read on its own thread (rustyline's `readline` blocks) and arrives
//! at the session as [`Input`] values over a channel. Output goes through
//! [`Ui`]: in interactive mode through rustyline's external printer, so that
//! incoming messages appear above the line being typed without disturbing it;
//! in piped mode received messages go to stdout, one per line, and status lines
//! to stderr.
//!
//! rustyline keeps no history here: its history entries are plain `String`s that
//! cannot be wiped, and it is built without file history, so nothing typed is
//! kept beyond the line being edited.

use owo_colors::{OwoColorize, Stream};
use rustyline::error::ReadlineError;
use rustyline::ExternalPrinter;
use std::io::{BufRead, Write};
use std::sync::{mpsc as std_mpsc, Mutex};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// Something the user did.
pub enum Input {
    /// A room code typed at the prompt.
    Code(Zeroizing<String>),
    /// A message to send.
    Line(Zeroizing<String>),
    /// A slash command.
    Command(Command),
    /// End of input (Ctrl-D, or the end of stdin).
    Eof,
}

/// The slash commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/quit`
    Quit,
    /// `/verify`
    Verify,
    /// `/help`
    Help,
    /// `/mismatch`
    Mismatch,
    /// Anything else starting with `/`.
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
codes differ (someone may be in the middle) · /quit ends the session · anything else is sent to your peer";

/// How a status line looks.
#[derive(Debug, Clone, Copy)]
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

/// Where output goes.
pub struct Ui {
    printer: Option<Mutex<Box<dyn ExternalPrinter + Send>>>,
}

fn parse_command(line: &str) -> Option<Command> {
    let word = line.trim();
    if !word.starts_with('/') {
        return None;
    }
    Some(match word {
        "/quit" | "/exit" => Command::Quit,
        "/verify" => Command::Verify,
        "/help" => Command::Help,
        "/mismatch" => Command::Mismatch,
        other => Command::Unknown(other.chars().take(32).collect()),
    })
}

/// Replaces control characters (but tab) so a peer cannot drive the terminal with escape sequences.
pub fn sanitize(text: &str) -> Zeroizing<String> {
    Zeroizing::new(text.chars().map(|c| if c.is_control() && c != '\t' { '\u{FFFD}' } else { c }).collect())
}

impl Ui {
    /// Starts the input thread. `interactive` chooses the line editor; `need_code` makes the first
    /// inputs room codes until one is accepted (answered through the returned verdict sender).
    pub fn start(
        interactive: bool,
        need_code: bool,
    ) -> Result<(Ui, mpsc::Receiver<Input>, std_mpsc::Sender<Verdict>), String> {
        let (tx, rx) = mpsc::channel(64);
        let (verdict_tx, verdict_rx) = std_mpsc::channel();
        let printer = if interactive {
            let config = rustyline::Config::builder().auto_add_history(false).build();
            let mut editor = rustyline::DefaultEditor::with_config(config)
                .map_err(|e| format!("cannot set up the terminal: {e}"))?;
            let printer = editor.create_external_printer().map_err(|e| format!("cannot set up the terminal: {e}"))?;
            std::thread::spawn(move || read_interactive(editor, need_code, tx, verdict_rx));
            Some(Mutex::new(Box::new(printer) as Box<dyn ExternalPrinter + Send>))
        } else {
            std::thread::spawn(move || read_piped(need_code, tx, verdict_rx));
            None
        };
        Ok((Ui { printer }, rx, verdict_tx))
    }

    fn emit(&self, line: String, to_stdout: bool) {
        match &self.printer {
            Some(p) => {
                if let Ok(mut p) = p.lock() {
                    let _ = p.print(format!("{line}\n"));
                }
            }
            None if to_stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            None => eprintln!("{line}"),
        }
    }

    /// A status line (stderr in piped mode).
    pub fn status(&self, tone: Tone, text: &str) {
        let line = match tone {
            Tone::Info => format!("{}", format!("· {text}").if_supports_color(Stream::Stderr, |t| t.cyan())),
            Tone::Good => format!("{}", format!("✓ {text}").if_supports_color(Stream::Stderr, |t| t.green())),
            Tone::Warn => format!("{}", format!("! {text}").if_supports_color(Stream::Stderr, |t| t.yellow())),
            Tone::Bad => format!("{}", format!("✗ {text}").if_supports_color(Stream::Stderr, |t| t.red())),
        };
        self.emit(line, false);
    }

    /// The verification code, on its own line starting `verification code: `.
    pub fn verification(&self, code: &str) {
        let line = format!("verification code: {code}");
        self.emit(format!("{}", line.if_supports_color(Stream::Stderr, |t| t.bold())), false);
    }

    /// A message from the peer: verbatim on stdout in piped mode, labelled in interactive mode.
    pub fn incoming(&self, text: &str) {
        let clean = sanitize(text);
        if self.printer.is_some() {
            let label = "peer:".if_supports_color(Stream::Stdout, |t| t.magenta()).to_string();
            self.emit(format!("{label} {}", clean.as_str()), true);
        } else {
            self.emit(clean.as_str().to_owned(), true);
        }
    }

    /// Whether this is the interactive front end.
    pub fn interactive(&self) -> bool {
        self.printer.is_some()
    }
}

/// Hands a typed room code to the session and waits for its verdict: `Some(true)` accepted,
/// `Some(false)` rejected (the reason is shown; ask again), `None` the session is gone.
fn submit_code(line: String, tx: &mpsc::Sender<Input>, verdicts: &std_mpsc::Receiver<Verdict>) -> Option<bool> {
    tx.blocking_send(Input::Code(Zeroizing::new(line))).ok()?;
    match verdicts.recv().ok()? {
        Verdict::Accepted => Some(true),
        Verdict::Rejected(why) => {
            eprintln!("{why}");
            Some(false)
        }
    }
}

/// A typed line as input: a slash command, or a message.
fn classify(line: String) -> Input {
    let line = Zeroizing::new(line);
    match parse_command(&line) {
        Some(cmd) => Input::Command(cmd),
        None => Input::Line(line),
    }
}

fn read_interactive(
    mut editor: rustyline::DefaultEditor,
    need_code: bool,
    tx: mpsc::Sender<Input>,
    verdicts: std_mpsc::Receiver<Verdict>,
) {
    if need_code {
        loop {
            match editor.readline("room code: ") {
                Ok(line) => match submit_code(line, &tx, &verdicts) {
                    Some(true) => break,
                    Some(false) => continue,
                    None => return,
                },
                Err(ReadlineError::Interrupted) => {
                    let _ = tx.blocking_send(Input::Command(Command::Quit));
                    return;
                }
                Err(_) => {
                    let _ = tx.blocking_send(Input::Eof);
                    return;
                }
            }
        }
    }
    loop {
        let input = match editor.readline("> ") {
            Ok(line) => classify(line),
            Err(ReadlineError::Interrupted) => Input::Command(Command::Quit),
            Err(_) => Input::Eof,
        };
        let last = matches!(input, Input::Eof | Input::Command(Command::Quit));
        if tx.blocking_send(input).is_err() || last {
            return;
        }
    }
}

fn read_piped(need_code: bool, tx: mpsc::Sender<Input>, verdicts: std_mpsc::Receiver<Verdict>) {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    if need_code {
        loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = tx.blocking_send(Input::Eof);
                return;
            };
            match submit_code(line, &tx, &verdicts) {
                Some(true) => break,
                Some(false) => continue,
                None => return,
            }
        }
    }
    for line in lines {
        let Ok(line) = line else { break };
        if tx.blocking_send(classify(line)).is_err() {
            return;
        }
    }
    let _ = tx.blocking_send(Input::Eof);
}
