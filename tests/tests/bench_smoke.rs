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
            "## Resume",
            "## Against the targets",
        ] {
            assert!(text.contains(section), "missing {section}:\n{text}");
        }
        // Each table has a ghostwire row with figures.
        assert!(text.lines().filter(|l| l.starts_with("| ghostwire | ")).count() >= 5, "{text}");
        // The cross-relay rows split the CPU per frame between the relays and the broker (read
        // from /proc around the throughput window: the busy relays always show a figure; the
        // broker may use less than a clock tick in a smoke run, but is read, so never NaN).
        let nats = text.lines().find(|l| l.starts_with("| two relays via NATS | ")).unwrap_or_default();
        let cpu = nats.split('|').nth(3).unwrap_or_default();
        let (relays, broker) = cpu.split_once(" + ").unwrap_or_else(|| panic!("no relays + broker CPU: {nats}"));
        let us = |figure: &str| figure.trim().parse::<f64>().unwrap_or(f64::NAN);
        assert!(us(relays) > 0.0 && us(broker) >= 0.0, "CPU per frame in {nats}");
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
