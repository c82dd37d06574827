//! `ghostwire`: flags, process hardening, the terminal, and one session.

use clap::Parser;
use ghostwire::cli::{self, Args};
use ghostwire::crypto::Version;
use ghostwire::end::{exit, End};
use ghostwire::net::{Proxy, Target};
use ghostwire::session::{self, Outcome, Settings};
use ghostwire::ui::Ui;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    let hardening = ghostwire::harden::harden();
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    // The line editor restores the terminal when readline returns; the session may end while it
    // waits, so the terminal's settings are saved here and put back before exit.
    let saved_tty =
        if std::io::stdin().is_terminal() { nix::sys::termios::tcgetattr(std::io::stdin()).ok() } else { None };

    let relay = match Target::parse(&args.relay, args.ca.as_deref()) {
        Ok(target) => target,
        Err(why) => return refuse(&why),
    };
    let relay = match args.proxy().map(|url| Proxy::parse(url, proxy_credentials(), args.tor)) {
        None => relay,
        Some(Ok(proxy)) => {
            if proxy.resolves_locally() {
                eprintln!(
                    "ghostwire: warning: with socks5:// the relay's name is looked up on this machine, \
                     so the lookup is not hidden; socks5h:// has the proxy do it"
                );
            }
            relay.through(proxy)
        }
        Some(Err(why)) => return refuse(&why),
    };
    // GHOSTWIRE_CODE is read once, removed from the environment and wiped from its block.
    let from_env = ghostwire::harden::take_env("GHOSTWIRE_CODE");
    // What --new shows, once the relay is reached.
    let mut announce = Vec::new();
    let code = match (&args.room, from_env, args.new) {
        (Some(typed), _, _) if ghostwire::code::has_secret_part(typed) => {
            return refuse(
                "a code with a secret part must not be on the command line, where every user of this \
                 machine can read it: type it at the prompt (run ghostwire without it) or put it in GHOSTWIRE_CODE",
            );
        }
        // Two codes given: which one the user meant cannot be guessed (and taking the bare one
        // would silently drop the secret check the other asked for).
        (Some(_), Some(_), _) => {
            return refuse(
                "two codes were given, ROOMCODE on the command line and GHOSTWIRE_CODE in the environment: \
                 give one (unset GHOSTWIRE_CODE, or leave out ROOMCODE)",
            )
        }
        (None, Some(_), true) => {
            return refuse(
                "--new makes a fresh code, but GHOSTWIRE_CODE already holds one: give one (unset \
                 GHOSTWIRE_CODE, or leave out --new)",
            )
        }
        (Some(typed), None, _) => match cli::parse_room_code(typed) {
            Ok(code) => Some(zeroize::Zeroizing::new(code.as_str().to_owned())),
            Err(why) => return refuse(&why),
        },
        // Checked here, with the same suggestions the prompt gives for a mistyped word.
        (None, Some(code), false) => match ghostwire::code::parse(&code) {
            Ok(_) => Some(code),
            Err(why) => return refuse(&format!("GHOSTWIRE_CODE: {why}")),
        },
        (None, None, true) if args.legacy_v1 => {
            let code = cli::new_room_code();
            announce.push(format!("room code: {}", code.as_str()));
            announce.push(format!("tell your peer to run: {}", cli::join_command(&args, Some(&code))));
            Some(zeroize::Zeroizing::new(code.as_str().to_owned()))
        }
        (None, None, true) => {
            let code = ghostwire::code::generate();
            announce.push(format!("code: {}", code.as_str()));
            announce.push(format!(
                "tell your peer the code, and to run: {} (and type the code at its prompt)",
                cli::join_command(&args, None)
            ));
            if args.ca.is_some() {
                announce.push("(they need the same CA file)".into());
            }
            Some(code)
        }
        // Nobody to ask: a pipe's lines are messages, never the code.
        (None, None, false) if !std::io::stdin().is_terminal() => {
            return refuse(
                "no code was given, and standard input is not a terminal to ask at (its lines are \
                 messages): give a bare room code as ROOMCODE, or any code in GHOSTWIRE_CODE, or use --new",
            )
        }
        (None, None, false) => None,
    };
    let (ui, inputs, verdicts) = Ui::start(terminal, code.is_none(), &hardening.warnings);
    // Only a terminal the editor drives takes escape sequences (a plain one shows them).
    let editor = ui.mode() == ghostwire::ui::Mode::Editor;
    let settings = Settings {
        relay,
        version: if args.legacy_v1 { Version::Legacy1 } else { Version::Hardened2 },
        code,
        connect_timeout: args.connect_timeout,
        resume_window: args.resume_window,
        announce,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ghostwire: cannot start: {e}");
            return ExitCode::from(exit::NETWORK);
        }
    };
    let outcome = runtime.block_on(session::run(settings, ui, inputs, verdicts));
    drop(runtime);

    if let Some(tty) = saved_tty {
        use nix::sys::termios::{tcflush, tcsetattr, FlushArg, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &tty);
        // What was typed but not read is the session's, not the next program's.
        let _ = tcflush(std::io::stdin(), FlushArg::TCIFLUSH);
        if editor && std::io::stderr().is_terminal() {
            eprint!("\r\x1b[K");
        }
    }
    let code = exit_code(&outcome);
    report(&outcome, code);
    if args.wipe_screen && std::io::stderr().is_terminal() {
        // Clear the screen, move home, clear the scrollback.
        eprint!("\x1b[2J\x1b[H\x1b[3J");
    }
    let _ = std::io::stderr().flush();
    // The input thread may be blocked reading the terminal; exiting ends it.
    std::process::exit(i32::from(code))
}

/// The proxy's username and password, from GHOSTWIRE_PROXY_USER and GHOSTWIRE_PROXY_PASSWORD.
fn proxy_credentials() -> Option<(String, zeroize::Zeroizing<String>)> {
    let user = std::env::var("GHOSTWIRE_PROXY_USER").ok()?;
    let password = zeroize::Zeroizing::new(std::env::var("GHOSTWIRE_PROXY_PASSWORD").unwrap_or_default());
    Some((user, password))
}

/// Bad input before any session: say what, exit 2.
fn refuse(why: &str) -> ExitCode {
    eprintln!("ghostwire: {why}");
    ExitCode::from(exit::BAD_INPUT)
}

/// The exit code: the reason's, except that a normal end with lines left unsent, or sent and
/// never confirmed by the peer, or a file transfer unfinished, is 1 (unless the user chose to leave before the receipts came).
fn exit_code(outcome: &Outcome) -> u8 {
    let unconfirmed = outcome.unconfirmed > 0 && outcome.end != End::Quit;
    match outcome.end.exit_code() {
        exit::OK if outcome.unsent > 0 || unconfirmed || outcome.files > 0 => exit::UNSENT,
        code => code,
    }
}

fn report(outcome: &Outcome, code: u8) {
    use owo_colors::{OwoColorize, Stream};
    let end: &End = &outcome.end;
    let mut unsent = match outcome.unsent {
        0 => String::new(),
        1 => "; 1 line was not sent".to_owned(),
        n => format!("; {n} lines were not sent"),
    };
    match outcome.unconfirmed {
        0 => {}
        1 => unsent.push_str("; 1 line was not confirmed as delivered"),
        n => unsent.push_str(&format!("; {n} lines were not confirmed as delivered")),
    }
    match outcome.files {
        0 => {}
        1 => unsent.push_str("; 1 file transfer did not finish"),
        n => unsent.push_str(&format!("; {n} file transfers did not finish")),
    }
    // The reason may quote the network (a relay's frame, a peer's): through the one filter.
    // Before a valid code there was no session: nothing was destroyed, and saying so would alarm.
    let line = if outcome.began {
        format!("session destroyed: {end}{unsent} (exit {code})")
    } else {
        format!("ended before any session began: {}{unsent} (exit {code})", end.cause())
    };
    let line = ghostwire::ui::sanitize(&line);
    let line = line.as_str();
    if code == exit::OK {
        eprintln!("{}", line.if_supports_color(Stream::Stderr, |t| t.green()));
    } else {
        eprintln!("{}", line.if_supports_color(Stream::Stderr, |t| t.red()));
    }
}
