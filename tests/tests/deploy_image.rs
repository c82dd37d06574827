//! The container image without a Docker engine: the Dockerfile lints clean, the script that
//! stands in for its build stage runs the same command, and the binary it builds serves and
//! answers its own health probe (the image's HEALTHCHECK).

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn the_dockerfile_lints_clean_with_hadolint() {
    let out = std::process::Command::new(deploy_tool("hadolint")).arg(repo_root().join("Dockerfile")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_dockerfile_runs_as_non_root_with_a_health_check_and_only_the_relay() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let run_stage = dockerfile.split("FROM gcr.io/distroless/").nth(1).expect("a distroless run stage");
    assert!(run_stage.contains("USER 65532:65532"));
    assert!(run_stage.contains("HEALTHCHECK") && run_stage.contains("\"--probe\""));
    assert!(run_stage.contains("EXPOSE 8765 9765"));
    let copies: Vec<&str> = run_stage.lines().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies, ["COPY --from=build /ghostwire-relay /usr/local/bin/ghostwire-relay"]);
}

#[tokio::test]
async fn the_release_script_builds_what_the_image_holds_and_it_probes_itself() {
    // The same cargo command in both places.
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let release_sh = std::fs::read_to_string(repo_root().join("scripts/build-release.sh")).unwrap();
    let command = "cargo build --locked --release -p ghostwire-relay";
    assert!(dockerfile.contains(&format!("RUN {command}")), "Dockerfile lost its build command");
    assert!(release_sh.lines().any(|l| l.trim() == command), "build-release.sh lost its build command");

    // scripts/test.sh ran it already, so this is a no-op check of what it prints.
    let out = within(600, script(&repo_root().join("scripts/build-release.sh")).output()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let binary = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    assert!(binary.ends_with("target/release/ghostwire-relay"), "{}", binary.display());

    // Serve from it as the image would, and run the image's HEALTHCHECK command against it.
    let (port, admin) = (free_port(), free_port());
    let mut relay = std::process::Command::new(&binary)
        .env("GHOSTWIRE_LISTEN", format!("127.0.0.1:{port}"))
        .env("GHOSTWIRE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let probe = || {
        std::process::Command::new(&binary)
            .arg("--probe")
            .env("GHOSTWIRE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !probe().status.success() {
        assert!(std::time::Instant::now() < deadline, "the probe never succeeded");
        std::thread::sleep(Duration::from_millis(50));
    }
    within(20, async {
        pair(&format!("ws://127.0.0.1:{port}/"), &room("image")).await;
    })
    .await;
    relay.kill().unwrap();
    relay.wait().unwrap();
    // Nothing listens any more: the probe fails, and says where it looked.
    let out = probe();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{admin}")));
}
