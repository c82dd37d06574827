//! Line input for a terminal the line editor cannot drive (`TERM=dumb`, say).
//!
//! The terminal's own line input echoes what is typed where the cursor is, so a message that
//! arrives mid-line used to be printed onto the half-typed line. Here the client reads the keys
//! itself (the terminal's canonical mode and echo off; Ctrl-C still raises SIGINT), echoes them,
//! and keeps the line being typed in [`Typing`], which the output side locks to print: a line
//! that arrives mid-typing is written over it (carriage return, the line, spaces over what is
//! left) and the half-typed text is echoed again below. Only what every terminal does is used:
//! carriage return, newline and backspace.
//!
//! Editing: Backspace erases a character, Ctrl-U the line, Enter sends it. Ctrl-D on an empty
//! line ends input; with text, it ends too, and the text is reported as not sent. Escape
//! sequences (arrow keys) are ignored. The terminal's settings are restored by `main` before
//! the process exits, as for the line editor.

use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices};
use std::io::{Read as _, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use zeroize::Zeroizing;

/// The longest line kept while typing, in bytes (beyond it, keys are refused with a bell).
const MAX_TYPED: usize = 8 * 1024;

/// The line being typed, shared between the reader (which edits it) and the output (which
/// prints around it).
#[derive(Default)]
pub struct Typing(Mutex<Line>);

#[derive(Default)]
struct Line {
    text: Zeroizing<String>,
    /// What is typed is a message (not a room code, which is never shown again).
    message: bool,
}

impl Typing {
    fn lock(&self) -> MutexGuard<'_, Line> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `line` (and a newline) to `out` without disturbing what is being typed: over it,
    /// then the typed text again below.
    pub fn print_over(&self, out: &mut dyn Write, line: &str) {
        let typing = self.lock();
        let typed = typing.text.chars().count();
        if typed == 0 {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(b"\r");
        let _ = err.flush();
        let _ = write!(out, "{line}");
        let shown = line.chars().count();
        if shown < typed {
            let _ = write!(out, "{:width$}", "", width = typed - shown);
        }
        let _ = writeln!(out);
        let _ = out.flush();
        let _ = err.write_all(typing.text.as_bytes());
        let _ = err.flush();
    }

    /// The message left half-typed, if any (taken: it is reported once). The cursor moves to a
    /// new line below whatever was typed (a half-typed room code is only left there).
    pub fn abandoned(&self) -> Option<Zeroizing<String>> {
        let mut typing = self.lock();
        if typing.text.is_empty() {
            return None;
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(b"\n");
        let _ = err.flush();
        let text = std::mem::take(&mut typing.text);
        typing.message.then_some(text)
    }
}

/// What the reader got.
pub enum Read {
    /// A line, ended with Enter.
    Line(Zeroizing<String>),
    /// Ctrl-D (what was typed stays in [`Typing`], to be reported as not sent), or the
    /// terminal went away.
    End,
}

/// Reads keys from the terminal on stdin and edits the line in [`Typing`].
pub struct Reader {
    input: std::fs::File,
    typing: Arc<Typing>,
    /// Bytes of a character not complete yet.
    pending: Vec<u8>,
    /// Inside an escape sequence: 1 after ESC, 2 inside `ESC [` or `ESC O`.
    escape: u8,
}

impl Reader {
    /// Turns the terminal's line input and echo off (the reader does both now).
    ///
    /// # Errors
    /// Where stdin is not a terminal whose settings can be changed.
    pub fn new(typing: Arc<Typing>) -> std::io::Result<Reader> {
        let stdin = std::io::stdin();
        let mut tty = termios::tcgetattr(stdin.as_fd()).map_err(std::io::Error::from)?;
        tty.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
        tty.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        tty.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &tty).map_err(std::io::Error::from)?;
        let input = std::fs::File::from(stdin.as_fd().try_clone_to_owned()?);
        Ok(Reader { input, typing, pending: Vec::new(), escape: 0 })
    }

    /// The next line; `message` says whether it is a message (else a room code, which is
    /// echoed as it is typed but never reported as not sent).
    pub fn next(&mut self, message: bool) -> Read {
        self.typing.lock().message = message;
        let mut byte = [0u8; 1];
        loop {
            match self.input.read(&mut byte) {
                Ok(1) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => return Read::End,
            }
            if let Some(read) = self.key(byte[0]) {
                return read;
            }
        }
    }

    /// One byte from the terminal; `Some` when it ends the line.
    fn key(&mut self, b: u8) -> Option<Read> {
        if self.escape > 0 {
            // ESC, then `[` or `O` and parameters, up to a final byte (0x40-0x7E).
            self.escape = match (self.escape, b) {
                (1, b'[' | b'O') => 2,
                (2, 0x40..=0x7e) | (1, _) => 0,
                _ => 2,
            };
            return None;
        }
        let mut typing = self.typing.lock();
        let mut err = std::io::stderr().lock();
        match b {
            b'\r' | b'\n' => {
                let _ = err.write_all(b"\n");
                let _ = err.flush();
                self.pending.clear();
                return Some(Read::Line(std::mem::take(&mut typing.text)));
            }
            0x04 => return Some(Read::End),
            0x7f | 0x08 if typing.text.pop().is_some() => {
                let _ = err.write_all(b"\x08 \x08");
            }
            0x15 => {
                for _ in 0..typing.text.chars().count() {
                    let _ = err.write_all(b"\x08 \x08");
                }
                typing.text.clear();
            }
            0x1b => self.escape = 1,
            b'\t' | 0x20.. => {
                self.pending.push(b);
                match std::str::from_utf8(&self.pending) {
                    Ok(c) if typing.text.len() + c.len() <= MAX_TYPED => {
                        typing.text.push_str(c);
                        let _ = err.write_all(c.as_bytes());
                        self.pending.clear();
                    }
                    Ok(_) => {
                        let _ = err.write_all(b"\x07");
                        self.pending.clear();
                    }
                    // Part of a character: wait for the rest (a byte that can never complete
                    // one is dropped with what came before it).
                    Err(e) if e.error_len().is_none() && self.pending.len() < 4 => {}
                    Err(_) => self.pending.clear(),
                }
            }
            _ => {}
        }
        let _ = err.flush();
        None
    }
}
