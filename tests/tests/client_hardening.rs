//! The client's edges: wss:// with a private CA, pacing that drops nothing, and process hardening.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;

#[tokio::test]
async fn wss_with_a_private_ca_and_a_clear_refusal_without_it() {
    within(60, async {
        let dir = TempDir::new("ca");
        let (ca, cert, key) = test_ca(&dir.0);
        let relay = TestRelay::with(|c| {
            c.tls_cert = Some(cert.clone());
            c.tls_key = Some(key.clone());
        })
        .await;
        let url = format!("wss://localhost:{}/", relay.addr.port());
        let code = room("wss");
        let ca_arg = ca.to_str().unwrap();
        let (mut a, mut b, ca_code, cb_code) = connected_pair(&url, &code, &["--ca", ca_arg]).await;
        assert_eq!(ca_code, cb_code);
        a.say("over wss").await;
        assert_eq!(b.heard().await, "over wss");
        // Without the CA the relay's certificate is not trusted: a clear message, exit 3.
        let (status, log) = Peer::start(&["--relay", &url, &room("nowss")]).exit().await;
        assert_eq!(status, 3, "{log}");
        assert!(log.contains("not trusted") && log.contains("--ca"), "{log}");
    })
    .await;
}

#[tokio::test]
async fn a_script_sending_faster_than_the_limit_is_paced_and_loses_nothing() {
    within(60, async {
        let relay = TestRelay::with(|_| {}).await;
        let (mut a, mut b, _, _) = connected_pair(&relay.url(), &room("pace"), &[]).await;
        // Well past the burst of 50: the rest is paced at 20/s, not dropped or refused.
        for i in 0..90 {
            a.say(&format!("line {i}")).await;
        }
        for i in 0..90 {
            assert_eq!(b.heard().await, format!("line {i}"));
        }
        a.hang_up();
        let (status, log) = a.exit().await;
        assert_eq!(status, 0, "{log}");
        assert!(!log.contains("not sent"), "{log}");
    })
    .await;
}

#[tokio::test]
async fn core_dumps_are_off_and_memory_is_locked() {
    within(30, async {
        let relay = TestRelay::with(|_| {}).await;
        let mut a = Peer::start(&["--relay", &relay.url(), &room("harden")]);
        a.status("searching").await;
        let pid = a.child.id().unwrap();
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap().to_owned();
        assert!(core.split_whitespace().filter(|w| *w == "0").count() >= 2, "{core}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let locked: u64 = status
            .lines()
            .find(|l| l.starts_with("VmLck:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        let root = nix::unistd::geteuid().is_root();
        let unlimited = matches!(
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK),
            Ok((soft, _)) if soft == nix::sys::resource::RLIM_INFINITY
        );
        if root || unlimited {
            assert!(locked > 0, "memory not locked although the limit allows it:\n{status}");
        } else {
            // Where it cannot lock everything, it must say so.
            a.status("may be swapped").await;
        }
        a.say("/quit").await;
        assert_eq!(a.exit().await.0, 0);
    })
    .await;
}
