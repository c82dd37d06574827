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
        // A name the certificate does not carry: said as such, not as an unknown CA.
        let elsewhere = TestRelay::with(|c| {
            c.listen = "127.0.0.2:0".parse().unwrap();
            c.tls_cert = Some(cert.clone());
            c.tls_key = Some(key.clone());
        })
        .await;
        let other_name = format!("wss://{}/", elsewhere.addr);
        let (status, log) = Peer::start(&["--relay", &other_name, "--ca", ca_arg, &room("name")]).exit().await;
        assert_eq!(status, 3, "{log}");
        assert!(log.contains("it is not valid for the name \"127.0.0.2\""), "{log}");
    })
    .await;
}

#[tokio::test]
async fn a_ca_certificate_served_as_the_relays_own_is_named_as_such() {
    within(60, async {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = TempDir::new("ca-as-cert");
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_pem, key_pem) = (dir.0.join("ca.pem"), dir.0.join("ca.key"));
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        let relay = TestRelay::with(|c| {
            c.tls_cert = Some(cert_pem.clone());
            c.tls_key = Some(key_pem.clone());
        })
        .await;
        let url = format!("wss://localhost:{}/", relay.addr.port());
        let (status, log) =
            Peer::start(&["--relay", &url, "--ca", cert_pem.to_str().unwrap(), &room("caleaf")]).exit().await;
        assert_eq!(status, 3, "{log}");
        assert!(log.contains("it is a CA certificate, which cannot identify a server"), "{log}");
        assert!(!log.contains("not signed by"), "the reason is not guessed: {log}");
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
        let log = a.log.join("\n");
        assert!(!log.contains("not sent"), "{log}");
        hang_up_and_part(a, b).await;
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
        a.interrupt();
        assert_eq!(a.exit().await.0, 0);
    })
    .await;
}

/// GHOSTWIRE_CODE is not left in the environment block the kernel shows in /proc/PID/environ
/// (readable by root, or anyone while the process is dumpable): its bytes are overwritten.
#[tokio::test]
async fn the_code_from_the_environment_is_wiped_from_proc_environ() {
    within(30, async {
        let relay = TestRelay::with(|_| {}).await;
        let mut a = Peer::with_code("ENVWIPE1-tulip-cider-lunar", &["--relay", &relay.url()]);
        a.status("searching").await;
        let pid = a.child.id().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let text = String::from_utf8_lossy(&environ);
        assert!(text.contains("NO_COLOR=1"), "the environment block was read: {text:?}");
        assert!(!text.contains("tulip") && !text.contains("ENVWIPE1"), "the code is still there: {text:?}");
        a.interrupt();
        assert_eq!(a.exit().await.0, 0);
    })
    .await;
}

/// The errors of a first run name the likely cause: nothing listening (and how to start a
/// relay), a wss:// URL for a plain relay, a ws:// URL for a TLS relay.
#[tokio::test]
async fn first_run_mistakes_are_named_with_what_to_do() {
    within(60, async {
        let nothing = format!("ws://127.0.0.1:{}/", free_port());
        let (code, log) = Peer::start(&["--relay", &nothing, &room("first")]).exit().await;
        assert_eq!(code, 3, "{log}");
        assert!(log.contains("nothing listens there") && log.contains("ghostwire-relay"), "{log}");
        // --new hands out no code for a relay it cannot reach.
        let (code, log) = Peer::start(&["--relay", &nothing, "--new"]).exit().await;
        assert_eq!(code, 3, "{log}");
        assert!(!log.contains("tell your peer") && !log.contains("code: "), "{log}");

        let plain = TestRelay::with(|_| {}).await;
        let wss = format!("wss://{}/", plain.addr);
        let (code, log) = Peer::start(&["--relay", &wss, &room("first")]).exit().await;
        assert_eq!(code, 3, "{log}");
        assert!(log.contains("use ws:// instead of wss://"), "{log}");

        let dir = TempDir::new("scheme");
        let (tls, _ca) = tls_relay(&dir.0).await;
        let ws = format!("ws://{}/", tls.addr);
        let (code, log) = Peer::start(&["--relay", &ws, &room("first")]).exit().await;
        assert_eq!(code, 3, "{log}");
        assert!(log.contains("use wss:// instead of ws://"), "{log}");
    })
    .await;
}

/// DEPLOY.md's three-command recipe for a private CA and a relay certificate, run as written
/// (bash, the openssl the machine has): the relay serves the leaf, and a client with `--ca`
/// trusts it and chats.
#[tokio::test]
async fn the_deploy_recipe_for_a_private_ca_makes_a_certificate_clients_trust() {
    within(60, async {
        let deploy = std::fs::read_to_string(repo_root().join("docs/DEPLOY.md")).unwrap();
        let marker = deploy.find("<!-- leaf-recipe:").expect("the recipe is marked in DEPLOY.md");
        let block = &deploy[marker..];
        let start = block.find("```sh\n").unwrap() + "```sh\n".len();
        let recipe = &block[start..start + block[start..].find("```").unwrap()];
        let dir = TempDir::new("leaf-recipe");
        let made = tokio::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", recipe])
            .current_dir(&dir.0)
            .output()
            .await
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let relay = TestRelay::with(|c| {
            c.tls_cert = Some(dir.0.join("relay.pem"));
            c.tls_key = Some(dir.0.join("relay.key"));
        })
        .await;
        let url = format!("wss://127.0.0.1:{}/", relay.addr.port());
        let ca = dir.0.join("ca.pem");
        let (mut a, mut b, ca_code, cb_code) =
            connected_pair(&url, &room("recipe"), &["--ca", ca.to_str().unwrap()]).await;
        assert_eq!(ca_code, cb_code);
        a.say("over the recipe's certificate").await;
        assert_eq!(b.heard().await, "over the recipe's certificate");
        hang_up_and_part(a, b).await;
    })
    .await;
}
