//! `ghostwire`: flags, process hardening, the terminal, and one session.

use clap::Parser;
use ghostwire::cli::{self, Args};
use ghostwire::crypto::Version;
use ghostwire::end::{exit, End};
use ghostwire::session::{self, Settings};
use ghostwire::ui::{Tone, Ui};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    let hardening = ghostwire::harden::harden();
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    // rustyline restores the terminal when readline returns; the session may end while it waits,
    // so the terminal's settings are saved here and put back before exit.
    let saved_tty = if interactive { nix::sys::termios::tcgetattr(std::io::stdin()).ok() } else { None };

    let room = match (&args.room, args.new) {
        (Some(typed), _) => match cli::parse_room_code(typed) {
            Ok(code) => Some(code),
            Err(why) => {
                eprintln!("ghostwire: {why}");
                return ExitCode::from(exit::BAD_INPUT);
            }
        },
        (None, true) => {
            let code = cli::new_room_code();
            eprintln!("room code: {}", code.as_str());
            eprintln!("tell your peer to run: ghostwire {}", code.as_str());
            Some(code)
        }
        (None, false) => None,
    };
    let (ui, inputs, verdicts) = match Ui::start(interactive, room.is_none()) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("ghostwire: {e}");
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    for warning in &hardening.warnings {
        ui.status(Tone::Warn, warning);
    }
    let settings = Settings {
        relay: args.relay.clone(),
        ca: args.ca.clone(),
        version: if args.legacy_v1 { Version::Legacy1 } else { Version::Hardened2 },
        room,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ghostwire: cannot start: {e}");
            return ExitCode::from(exit::NETWORK);
        }
    };
    let end = runtime.block_on(session::run(settings, ui, inputs, verdicts));
    drop(runtime);

    if let Some(tty) = saved_tty {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &tty);
        eprint!("\r\x1b[K");
    }
    let code = end.exit_code();
    report(&end, code);
    if args.wipe_screen && std::io::stderr().is_terminal() {
        // Clear the screen, move home, clear the scrollback.
        eprint!("\x1b[2J\x1b[H\x1b[3J");
    }
    let _ = std::io::stderr().flush();
    // The input thread may be blocked reading the terminal; exiting ends it.
    std::process::exit(i32::from(code))
}

fn report(end: &End, code: u8) {
    use owo_colors::{OwoColorize, Stream};
    let line = format!("session destroyed: {end} (exit {code})");
    if code == exit::OK {
        eprintln!("{}", line.if_supports_color(Stream::Stderr, |t| t.green()));
    } else {
        eprintln!("{}", line.if_supports_color(Stream::Stderr, |t| t.red()));
    }
}
