//! The operator kit: `deploy/prometheus/alerts.yaml` is a valid rules file, each alert fires on
//! the pattern it is for (`promtool test rules`), the Grafana dashboard's queries are valid
//! PromQL, and each metric the alerts and the dashboard read is one a real relay exports. promtool comes with Debian's `prometheus` package, which `./scripts/test.sh`
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

/// The queries of `deploy/grafana/ghostwire.json`, panel by panel.
fn dashboard_queries() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/ghostwire.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel id repeated: {title}");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}: not on the datasource variable");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        queries.extend(targets.iter().map(|t| t["expr"].as_str().unwrap().to_owned()));
    }
    assert!(queries.len() >= 15, "{queries:?}");
    queries
}

/// Every query of the dashboard parses as PromQL: promtool checks them as recording rules.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let queries = dashboard_queries();
    let dir = TempDir::new("dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: ghostwire:dashboard:{i}\n        expr: {}\n",
            serde_json::to_string(q).unwrap()
        ));
    }
    let file = dir.0.join("dashboard.rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(checked.contains(&format!("{} rules found", queries.len())), "{checked}");
}

/// A rule about a metric the relay does not export would never fire, and a panel would stay
/// empty: every `ghostwire_` or `process_` name the rules and the dashboard read appears in the
/// `/metrics` of a relay of some upstream (each relay exports only the series of the upstream
/// it runs).
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
    let exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_owned)
        .chain(dashboard_queries())
        .collect();
    for line in &exprs {
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
        assert!(exported, "the alerts or the dashboard read {name}, which no relay exports");
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
