//! The operator kit: `deploy/prometheus/alerts.yaml` is a valid rules file, each alert fires on
//! the pattern it is for (`promtool test rules`), and each metric it reads is one a real relay
//! exports. promtool comes with Debian's `prometheus` package, which `./scripts/test.sh`
//! installs.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::*;
use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .unwrap_or_else(|e| panic!("promtool ({e}): ./scripts/test.sh installs it (Debian's prometheus package)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The alert names of the rules file.
fn alerts() -> Vec<String> {
    let rules = std::fs::read_to_string(dir().join("alerts.yaml")).unwrap();
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(str::to_owned).collect()
}

#[test]
fn the_rules_check_and_every_alert_fires_on_its_pattern() {
    let names = alerts();
    assert!(names.len() >= 8, "{names:?}");
    assert!(promtool(&["check", "rules", "alerts.yaml"]).contains(&format!("{} rules found", names.len())));
    promtool(&["test", "rules", "alerts.test.yaml"]);
    let tests = std::fs::read_to_string(dir().join("alerts.test.yaml")).unwrap();
    for name in &names {
        assert!(tests.contains(&format!("alertname: {name}\n")), "no promtool test shows {name} firing");
    }
}

/// A rule about a metric the relay does not export would never fire: every `ghostwire_` name
/// the rules read appears in the `/metrics` of a relay of some upstream (each relay exports
/// only the series of the upstream it runs).
#[tokio::test]
async fn every_metric_the_alerts_read_is_one_the_relay_exports() {
    within(120, every_metric_the_alerts_read_is_exported()).await;
}

async fn every_metric_the_alerts_read_is_exported() {
    let rules = std::fs::read_to_string(dir().join("alerts.yaml")).unwrap();
    let nats = NatsServer::start();
    let kafka = KafkaBroker::start();
    let (_introducer, intro) = mesh_introducer().await;
    let relays = [
        TestRelay::with(|_| {}).await,
        TestRelay::start(nats_config(&nats.url())).await,
        TestRelay::start(kafka_config(&kafka.brokers(), "alerts")).await,
        TestRelay::start(mesh_config(&intro)).await,
    ];
    let mut metrics = String::new();
    for relay in &relays {
        metrics.push_str(&http_get(relay.admin, "/metrics").await.1);
    }
    let mut read = Vec::new();
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("expr: ")) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if (word.starts_with("ghostwire_") || word.starts_with("process_")) && !read.contains(&word) {
                read.push(word);
            }
        }
    }
    assert!(read.len() >= 10, "{read:?}");
    for name in read {
        let exported =
            metrics.lines().any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")));
        assert!(exported, "the alerts read {name}, which the relay does not export");
    }
}

/// DEPLOY's alert section points at the rules, and names every alert.
#[test]
fn deploy_md_lists_every_alert() {
    let deploy = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOY.md")).unwrap();
    assert!(deploy.contains("deploy/prometheus/alerts.yaml"));
    for name in alerts() {
        assert!(deploy.contains(&name), "DEPLOY.md does not name {name}");
    }
}
