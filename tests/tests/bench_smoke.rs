//! The benchmark runs: every scenario, in a tiny configuration (figures are not checked here;
//! they belong in `scripts/bench.sh` runs, never in assertions).

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;

/// Runs the benchmark in its smoke configuration against the debug relay with `args`; its
/// stdout, after checking that it succeeded.
async fn smoke(args: &[&str]) -> String {
    let out = tokio::process::Command::new(bin("ghostwire-bench"))
        .arg("--smoke")
        .args(args)
        .arg("--relay")
        .arg(bin("ghostwire-relay"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[tokio::test]
async fn every_benchmark_scenario_runs() {
    within(120, async {
        let text = smoke(&[]).await;
        for section in [
            "## Throughput",
            "## Latency",
            "## Cost curve",
            "## Cross-relay",
            "| two relays via NATS | ",
            "| two relays via Kafka (noida-db) | ",
            "## Capacity",
            "## Slow reader",
            "## Against the targets",
        ] {
            assert!(text.contains(section), "missing {section}:\n{text}");
        }
        // Each table has a ghostwire row with figures.
        assert!(text.lines().filter(|l| l.starts_with("| ghostwire | ")).count() >= 5, "{text}");
    })
    .await;
}

#[tokio::test]
async fn the_quick_comparisons_run_for_ours_and_the_bare_relay() {
    within(120, async {
        for (only, line) in [("throughput", "throughput: "), ("curve", "curve: 8 rooms"), ("half", "half: ")] {
            let text = smoke(&["--runs", "1", "--only", only]).await;
            let (ours, bare) =
                text.split_once("bare:").unwrap_or_else(|| panic!("--only {only}: no bare run:\n{text}"));
            assert!(ours.contains(line) && bare.contains(line), "--only {only}: a relay without {line:?}:\n{text}");
        }
    })
    .await;
}
