//! `ghostwire-relay`: flags, logging and signals around [`ghostwire_relay::Relay`].

use clap::Parser;
use ghostwire_relay::config::LogFormat;
use ghostwire_relay::{Config, Relay};
use std::io::IsTerminal;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than the system allocator: the frame path allocates and frees small buffers
/// per frame, and glibc's malloc cost a fifth of the relay's frames per second (README,
/// Performance). Idle memory per connection is within a few percent either way.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log filter GHOSTWIRE_LOG asks for (info when unset or empty).
///
/// A typo must not silence the log: a filter that does not parse is refused, and so is a bare
/// word that is not a level (`warning`, `verbose`), which tracing would read as the name of a
/// target and so show nothing else. Targets take a level: `ghostwire_relay=debug`.
fn log_filter(asked: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let asked = asked.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info");
    for directive in asked.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains(['=', '[', ':']) && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level (trace, debug, info, warn, error, off); a target takes one, \
                 as in ghostwire_relay=debug"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(asked).map_err(|e| format!("{asked:?} is not a log filter: {e}"))
}

/// `--check-config`: the checks of a start, without binding or reaching a broker; then the
/// effective configuration (secrets print as `[redacted]`).
fn check_config(config: &Config) -> std::process::ExitCode {
    match Relay::check(config) {
        Ok(_) => {
            println!("{config:#?}");
            println!("ghostwire-relay: the configuration is valid");
            std::process::ExitCode::SUCCESS
        }
        // Unusable TLS files are a configuration mistake here too: 2, whatever the cause.
        Err(e) => {
            eprintln!("ghostwire-relay: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if config.probe {
        return probe(config.admin_listen);
    }
    if config.check_config {
        return check_config(&config);
    }
    let filter = match log_filter(std::env::var("GHOSTWIRE_LOG").ok().as_deref()) {
        Ok(filter) => filter,
        Err(why) => {
            eprintln!("ghostwire-relay: GHOSTWIRE_LOG: {why}");
            return std::process::ExitCode::from(2);
        }
    };
    // The NATS client's trace events print message payloads and its CONNECT line (with the
    // token or password), and it logs an ERROR at every reconnect attempt (a wrong token: every
    // 0.8 s, forever): off, whatever GHOSTWIRE_LOG asks for. The relay logs the broker's state
    // itself, from the client's events: the cause once at WARN when it starts, once when over.
    let filter = match "async_nats=off".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log that cannot be written (stderr closed: a log collector gone, `| head`) must not
        // stop the relay: by default the subscriber reports that with eprintln!, which panics
        // on a closed stderr, and the panicking task (the signal handler, say) dies with it.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => {
            logs.with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()).init()
        }
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    raise_fd_limit(config.max_conns);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ghostwire-relay: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let relay = match Relay::bind(config.clone(), shutdown.clone()).await {
            Ok(relay) => relay,
            Err(e) => {
                eprintln!("ghostwire-relay: {e}");
                // Documented in --help: 2 for configuration (like a bad flag), 1 for the rest.
                let code = if matches!(e, ghostwire_relay::Error::Config(_)) { 2 } else { 1 };
                return std::process::ExitCode::from(code);
            }
        };
        // Handlers are registered before the relay says it listens: a SIGTERM that arrives in
        // between would otherwise take the default action and skip the drain.
        let signals = match Signals::register() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ghostwire-relay: cannot install signal handlers: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let scheme = if config.tls_cert.is_some() { "wss" } else { "ws" };
        tracing::info!(
            listen = %format!("{scheme}://{}/", relay.local_addr()),
            admin = %relay.admin_addr(),
            upstream = ?config.upstream,
            "relay listening"
        );
        tokio::spawn(signals.drain_on_first(shutdown));
        relay.run().await;
        tracing::info!("relay stopped");
        std::process::ExitCode::SUCCESS
    })
}

/// `--probe`: GET /healthz on the admin listener at `admin`, within 3 s.
fn probe(admin: std::net::SocketAddr) -> std::process::ExitCode {
    let admin = probe_target(admin);
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(ghostwire_relay::probe::get(admin, "/healthz", std::time::Duration::from_secs(3))));
    match answer {
        Ok((200, _)) => std::process::ExitCode::SUCCESS,
        Ok((status, body)) => {
            eprintln!("ghostwire-relay --probe: {admin}: HTTP {status}: {}", body.trim());
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ghostwire-relay --probe: {admin}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where `--probe` connects: the admin address, with an unspecified host (`0.0.0.0`, `::`, as in
/// a container) replaced by loopback.
fn probe_target(mut admin: std::net::SocketAddr) -> std::net::SocketAddr {
    if admin.ip().is_unspecified() {
        admin.set_ip(if admin.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    admin
}

/// SIGTERM and SIGINT, registered.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Cancels `shutdown` on the first SIGTERM or SIGINT; a second one exits at once.
    async fn drain_on_first(mut self, shutdown: CancellationToken) {
        tokio::select! { _ = self.term.recv() => {}, _ = self.int.recv() => {} }
        tracing::info!("signal received: draining (send it again to exit at once)");
        shutdown.cancel();
        tokio::select! { _ = self.term.recv() => {}, _ = self.int.recv() => {} }
        std::process::exit(130);
    }
}

/// Raises the soft open-file limit to the hard one: every connection is a descriptor.
fn raise_fd_limit(max_conns: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < max_conns + 64 => tracing::warn!(
            limit,
            max_conns,
            "open-file limit is below --max-conns; connections beyond it will fail to be accepted"
        ),
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_probe_reaches_an_all_interfaces_admin_listener_on_loopback() {
        let target = |s: &str| super::probe_target(s.parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(target("0.0.0.0:9765").to_string(), "127.0.0.1:9765");
        assert_eq!(target("[::]:9765").to_string(), "[::1]:9765");
        assert_eq!(target("10.1.2.3:9765").to_string(), "10.1.2.3:9765");
    }
}
