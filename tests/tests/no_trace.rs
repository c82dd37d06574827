//! Leave no trace: a whole session under `strace`, and not one file opened for writing,
//! by the client or by the relay.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;
use std::path::Path;

/// The open calls in an strace log that could write: write flags, or creat().
fn writing_opens(trace: &str) -> (usize, Vec<String>) {
    let opens: Vec<&str> =
        trace.lines().filter(|l| l.contains("open(") || l.contains("openat(") || l.contains("creat(")).collect();
    let writes = opens
        .iter()
        .filter(|l| {
            l.contains("creat(")
                || ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"].iter().any(|flag| l.contains(flag))
        })
        .map(|l| l.to_string())
        .collect();
    (opens.len(), writes)
}

fn strace(out: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=open,openat,creat", "-o"]).arg(out);
    cmd
}

#[tokio::test]
async fn a_whole_client_session_opens_no_file_for_writing() {
    within(60, async {
        let dir = TempDir::new("strace");
        let log = dir.0.join("client.strace");
        let relay = TestRelay::with(|_| {}).await;
        let code = room("trace");
        let mut cmd = strace(&log);
        cmd.arg(bin("ghostwire"));
        let mut a = Peer::start_with(cmd, &["--relay", &relay.url(), &code]);
        a.status("searching").await;
        let mut b = Peer::start(&["--relay", &relay.url(), &code]);
        a.code().await;
        a.say("secret words").await;
        assert_eq!(b.heard().await, "secret words");
        b.say("more secret words").await;
        assert_eq!(a.heard().await, "more secret words");
        hang_up_and_part(a, b).await;
        let trace = std::fs::read_to_string(&log).unwrap();
        let (opens, writes) = writing_opens(&trace);
        assert!(opens > 0, "strace saw no open at all; the test would prove nothing:\n{trace}");
        assert!(writes.is_empty(), "the client opened files for writing:\n{}", writes.join("\n"));
    })
    .await;
}

#[tokio::test]
async fn a_relay_carrying_a_session_opens_no_file_for_writing() {
    within(60, async {
        let dir = TempDir::new("strace-relay");
        let log = dir.0.join("relay.strace");
        let port = free_port();
        let url = format!("ws://127.0.0.1:{port}/");
        let mut relay = strace(&log)
            .arg(bin("ghostwire-relay"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Ready when it accepts a connection.
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (mut a, mut b, _, _) = connected_pair(&url, &room("relaytrace"), &[]).await;
        a.say("through the relay").await;
        assert_eq!(b.heard().await, "through the relay");
        hang_up_and_part(a, b).await;
        // strace does not pass signals on: SIGTERM goes to the relay, strace's child.
        let tracer = relay.id().unwrap();
        let children = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children")).unwrap();
        let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = relay.wait().await.unwrap();
        assert!(status.success(), "{status:?}");
        let trace = std::fs::read_to_string(&log).unwrap();
        let (opens, writes) = writing_opens(&trace);
        assert!(opens > 0, "strace saw no open at all:\n{trace}");
        assert!(writes.is_empty(), "the relay opened files for writing:\n{}", writes.join("\n"));
    })
    .await;
}
