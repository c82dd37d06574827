//! `./run.sh`, the README's demo command: builds, starts a relay, chats, stops the relay it started.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;

/// How long run.sh may take to build before it speaks (a cold release build on 2 cores).
const BUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(480);

/// `run.sh` as a person runs it.
fn run_sh(port: u16) -> tokio::process::Command {
    let mut cmd = script(&repo_root().join("run.sh"));
    cmd.env("GHOSTWIRE_PORT", port.to_string()).env("GHOSTWIRE_ADMIN_PORT", free_port().to_string());
    cmd
}

#[tokio::test]
async fn run_sh_starts_a_relay_chats_and_stops_it() {
    // The first call may build the release binaries (scripts/test.sh builds them beforehand).
    within(600, async {
        let port = free_port();
        let code = room("runsh");
        let mut demo = Peer::start_group(run_sh(port), &[&code]);
        // run.sh builds first: quick when scripts/test.sh has built the release binaries, minutes if not.
        demo.status_within("started a relay", BUILD_WAIT).await;
        let url = format!("ws://127.0.0.1:{port}/");
        let mut other = Peer::start(&["--relay", &url, &code]);
        assert_eq!(demo.code().await, other.code().await);
        demo.say("hello from run.sh").await;
        assert_eq!(other.heard().await, "hello from run.sh");
        other.say("hello back").await;
        assert_eq!(demo.heard().await, "hello back");
        demo.hang_up();
        other.hang_up();
        let (status, log) = demo.exit().await;
        assert_eq!(status, 0, "{log}");
        // The relay run.sh started is gone with it.
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "relay still listening");
        let (status, _) = other.exit().await;
        assert_ne!(status, -1);
    })
    .await;
}

#[tokio::test]
async fn run_sh_without_a_code_makes_one_up_and_says_what_to_run() {
    within(600, async {
        let port = free_port();
        let mut demo = Peer::start_group(run_sh(port), &[]);
        let line = demo.status_within("in a second terminal, run:", BUILD_WAIT).await;
        let code = line.rsplit(' ').next().unwrap().to_owned();
        assert_eq!(code.len(), 16, "{line}");
        let mut other = Peer::start(&["--relay", &format!("ws://127.0.0.1:{port}/"), &code]);
        assert_eq!(demo.code().await, other.code().await);
        hang_up_and_part(demo, other).await;
    })
    .await;
}
