//! The Kubernetes manifests, checked offline: every overlay renders with `kubectl kustomize`,
//! passes `kubernetes-validate --strict` against the Kubernetes schemas, has no checkov failure
//! that docs/DEPLOY.md does not list as deliberate, and keeps the security settings the issue
//! asks for. The checkers are installed by scripts/test.sh into target/deploy-tools.

#![allow(clippy::unwrap_used)]

use ghostwire_tests::{deploy_tool, repo_root, TempDir};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const OVERLAYS: [&str; 4] = ["single", "nats", "mesh", "kafka"];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// The overlay rendered to YAML, written under a fresh directory (returned with the file).
fn render(overlay: &str) -> (TempDir, PathBuf) {
    let yaml = run(Command::new(deploy_tool("kubectl"))
        .args(["kustomize"])
        .arg(repo_root().join("k8s/overlays").join(overlay)));
    let dir = TempDir::new(&format!("k8s-{overlay}"));
    let file = dir.0.join(format!("{overlay}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    (dir, file)
}

/// The rendered objects as JSON (PyYAML from the checkers' environment does the parsing).
fn objects(overlay: &str) -> Vec<Value> {
    let (_dir, file) = render(overlay);
    let json = run(Command::new(deploy_tool("python"))
        .arg("-c")
        .arg("import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))")
        .arg(&file));
    serde_json::from_str(&json).unwrap()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// A Deployment's first container's environment: (name, value), empty for values from fields.
fn env_of(deployment: &Value) -> Vec<(String, String)> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[test]
fn every_overlay_renders_and_passes_the_kubernetes_schemas() {
    for overlay in OVERLAYS {
        let (_dir, file) = render(overlay);
        run(Command::new(deploy_tool("kubernetes-validate")).args(["--strict", "--quiet"]).arg(&file));
    }
}

#[test]
fn the_schema_check_catches_a_mistake() {
    // A misspelt field must fail, or the check above proves nothing.
    let (dir, file) = render("single");
    let broken = std::fs::read_to_string(&file).unwrap().replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
    let bad = dir.0.join("broken.yaml");
    std::fs::write(&bad, broken).unwrap();
    let out =
        Command::new(deploy_tool("kubernetes-validate")).args(["--strict", "--quiet"]).arg(&bad).output().unwrap();
    assert!(!out.status.success(), "a misspelt field passed validation");
}

/// The checkov checks docs/DEPLOY.md declares deliberately failed, from its line
/// `Deliberate checkov exceptions: CKV_..., CKV_...`.
fn documented_exceptions() -> Vec<String> {
    let deploy = std::fs::read_to_string(repo_root().join("docs/DEPLOY.md")).unwrap();
    let line = deploy.lines().find(|l| l.contains("Deliberate checkov exceptions:")).expect("DEPLOY.md lists them");
    line.split(':')
        .nth(1)
        .unwrap()
        .split(',')
        .map(|c| c.trim().trim_matches('`').trim_end_matches('.').to_owned())
        .collect()
}

#[test]
fn checkov_finds_no_failure_that_is_not_documented_as_deliberate() {
    let skips = documented_exceptions();
    assert!(skips.iter().all(|s| s.starts_with("CKV")), "{skips:?}");
    for overlay in OVERLAYS {
        let (dir, _) = render(overlay);
        run(Command::new(deploy_tool("checkov"))
            .args(["--framework", "kubernetes", "--quiet", "--compact", "--skip-download", "-d"])
            .arg(&dir.0)
            .arg("--skip-check")
            .arg(skips.join(","))
            .env("BC_SKIP_MAPPING", "TRUE"));
    }
    run(Command::new(deploy_tool("checkov"))
        .args(["--framework", "dockerfile", "--quiet", "--compact", "--skip-download", "-f"])
        .arg(repo_root().join("Dockerfile"))
        .env("BC_SKIP_MAPPING", "TRUE"));
}

#[test]
fn the_relay_pods_are_locked_down_and_probed() {
    for overlay in OVERLAYS {
        let objs = objects(overlay);
        // Every Deployment (the relays, and the mesh's introducers) is locked down alike.
        for deployment in find(&objs, "Deployment") {
            let pod = &deployment["spec"]["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], false, "{overlay}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{overlay}");
            let relay = &pod["containers"][0];
            let sc = &relay["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{overlay}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{overlay}");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{overlay}");
            for k in ["requests", "limits"] {
                assert!(relay["resources"][k]["cpu"].is_string() && relay["resources"][k]["memory"].is_string());
            }
            assert_eq!(relay["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(relay["readinessProbe"]["httpGet"]["path"], "/readyz");
            // A mesh relay's death makes the other relays unready for about one lease (4 probe
            // periods plus a tenth, after the last ping: about 6 s at the default 1 s); the
            // probe must not pull every replica for it: failing ≥ twice that long first. (An
            // introducer's readiness changes only when it starts.)
            if deployment["metadata"]["name"] == "ghostwire-relay" {
                let probe = &relay["readinessProbe"];
                let period = probe["periodSeconds"].as_u64().unwrap();
                let tolerated = (probe["failureThreshold"].as_u64().unwrap() - 1) * period;
                assert!(tolerated >= 12, "{overlay}: /readyz failing {tolerated} s pulls the replica");
                let set = env_of(deployment);
                assert!(set.iter().all(|(k, _)| k != "GHOSTWIRE_MESH_PROBE_PERIOD"), "{overlay}: recheck the bound");
            }
            // Room to drain: the preStop pause and the relay's drain fit in the grace period
            // (an introducer has no clients to drain).
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            if deployment["metadata"]["name"] == "ghostwire-relay" {
                assert!(relay["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap() + 10 < grace);
            }
            // No secret in a ConfigMap, no secret value in the pod's environment.
            assert!(find(&objs, "ConfigMap").is_empty(), "{overlay}");
            for env in relay["env"].as_array().unwrap() {
                // Values from the pod's own fields (its IP) only: never from a Secret or ConfigMap.
                let from = &env["valueFrom"];
                assert!(from.is_null() || from["fieldRef"].is_object(), "{overlay}: {env}");
                let name = env["name"].as_str().unwrap();
                assert!(!name.ends_with("SECRET") && !name.ends_with("TOKEN") && !name.ends_with("PASSWORD"), "{name}");
            }
        }
        let ingress = find(&objs, "Ingress")[0];
        assert!(ingress["spec"]["tls"][0]["secretName"].is_string());
        let timeout = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"].as_str();
        assert!(timeout.unwrap().parse::<u64>().unwrap() >= 3600);
        // One budget per Deployment: the relays', and the introducers' in the mesh overlay.
        assert_eq!(find(&objs, "PodDisruptionBudget").len(), find(&objs, "Deployment").len(), "{overlay}");
        assert!(!find(&objs, "NetworkPolicy").is_empty());
    }
}

#[test]
fn the_nats_overlay_runs_several_relays_and_reads_its_secrets_from_secret_volumes() {
    let objs = objects("nats");
    let deployment = find(&objs, "Deployment")[0];
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let hpa = find(&objs, "HorizontalPodAutoscaler")[0];
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let env = env_of(deployment);
    assert!(env.contains(&("GHOSTWIRE_UPSTREAM".into(), "nats".into())));
    let secrets: Vec<&str> =
        pod["volumes"].as_array().unwrap().iter().filter_map(|v| v["secret"]["secretName"].as_str()).collect();
    assert_eq!(secrets, ["ghostwire-cluster", "ghostwire-nats"]);
    // Only relays reach NATS; the relays reach only NATS and DNS.
    let policies = find(&objs, "NetworkPolicy");
    let to_nats = policies.iter().find(|p| p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "nats");
    let from = &to_nats.unwrap()["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
    assert_eq!(from["app.kubernetes.io/name"], "ghostwire-relay");
    let relay_policy = policies.iter().find(|p| p["metadata"]["name"] == "ghostwire-relay").unwrap();
    assert_eq!(relay_policy["spec"]["egress"].as_array().unwrap().len(), 2);
}

#[test]
fn the_mesh_overlay_runs_relays_and_introducers_found_through_a_headless_service() {
    let objs = objects("mesh");
    let deployments = find(&objs, "Deployment");
    let named = |name: &str| *deployments.iter().find(|d| d["metadata"]["name"] == name).unwrap();
    let relays = named("ghostwire-relay");
    assert!(relays["spec"]["replicas"].as_u64().unwrap() >= 2);
    let env = env_of(relays);
    assert!(env.contains(&("GHOSTWIRE_UPSTREAM".into(), "mesh".into())));
    assert!(env.contains(&("GHOSTWIRE_MESH_INTRODUCERS".into(), "ghostwire-introducer:7946".into())));
    assert!(env.contains(&("GHOSTWIRE_MESH_ADVERTISE".into(), "$(POD_IP):7946".into())));
    let introducers = named("ghostwire-introducer");
    // The relays admit new rooms with a majority of the introducers answering: three, so one
    // may be down, replaced one at a time (a surge would raise the majority for good).
    assert_eq!(introducers["spec"]["replicas"].as_u64(), Some(3), "one introducer down must not stop admission");
    let rolling = &introducers["spec"]["strategy"]["rollingUpdate"];
    assert_eq!((rolling["maxSurge"].as_u64(), rolling["maxUnavailable"].as_u64()), (Some(0), Some(1)));
    let budgets = find(&objs, "PodDisruptionBudget");
    let budget = budgets.iter().find(|b| b["metadata"]["name"] == "ghostwire-introducer").unwrap();
    assert_eq!(budget["spec"]["maxUnavailable"].as_u64(), Some(1));
    assert!(env_of(introducers).contains(&("GHOSTWIRE_MESH_INTRODUCER".into(), "true".into())));
    // Every one of them reads the cluster secret from its Secret, as a file.
    for d in [relays, introducers] {
        let volumes = d["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "ghostwire-cluster"));
    }
    // The introducers' Service is headless (its name resolves to every introducer) and carries
    // the gossip's UDP port.
    let service = find(&objs, "Service").into_iter().find(|s| s["metadata"]["name"] == "ghostwire-introducer").unwrap();
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["ports"][0]["protocol"], "UDP");
    assert_eq!(service["spec"]["ports"][0]["port"], 7946);
    // Relays take links and gossip only from relays and introducers.
    let policies = find(&objs, "NetworkPolicy");
    let relay_policy = policies.iter().find(|p| p["metadata"]["name"] == "ghostwire-relay").unwrap();
    let mesh_in = relay_policy["spec"]["ingress"].as_array().unwrap().last().unwrap();
    assert_eq!(mesh_in["ports"][0]["port"], 7946);
    assert_eq!(relay_policy["spec"]["egress"].as_array().unwrap().len(), 2);
    assert!(policies.iter().any(|p| p["metadata"]["name"] == "ghostwire-introducer"));
}

#[test]
fn the_kafka_overlay_runs_several_relays_over_sasl_and_tls_with_file_secrets() {
    let objs = objects("kafka");
    let deployment = find(&objs, "Deployment")[0];
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert!(find(&objs, "HorizontalPodAutoscaler")[0]["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let env = env_of(deployment);
    let value = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(value("GHOSTWIRE_UPSTREAM"), "kafka");
    // Secrets as files: the cluster secret and the SASL password, each from its Secret.
    assert!(value("KAFKA_PASSWORD_FILE").starts_with("/run/secrets/"));
    assert!(env.iter().all(|(n, _)| n != "KAFKA_PASSWORD"));
    let secrets: Vec<&str> =
        pod["volumes"].as_array().unwrap().iter().filter_map(|v| v["secret"]["secretName"].as_str()).collect();
    assert_eq!(secrets, ["ghostwire-cluster", "ghostwire-kafka"]);
    // The settings the relay reads are ones it takes (a typo would stop every pod at start).
    let relay = bin_output(&[
        "--upstream",
        "kafka",
        "--kafka-brokers",
        &value("KAFKA_BROKERS"),
        "--kafka-sasl-mechanism",
        &value("KAFKA_SASL_MECHANISM"),
        "--kafka-user",
        &value("KAFKA_USER"),
        "--help",
    ]);
    assert!(relay.status.success(), "{}", String::from_utf8_lossy(&relay.stderr));
    // The relays reach only the brokers and DNS.
    let policies = find(&objs, "NetworkPolicy");
    let relay_policy = policies.iter().find(|p| p["metadata"]["name"] == "ghostwire-relay").unwrap();
    let egress = relay_policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 2);
    assert_eq!(egress[0]["ports"][0]["port"], 9092);
}

/// `ghostwire-relay ARGS`, its output.
fn bin_output(args: &[&str]) -> std::process::Output {
    Command::new(ghostwire_tests::bin("ghostwire-relay")).args(args).output().unwrap()
}

/// Every overlay has a PodMonitor that scrapes what exists: it selects the relay pods by their
/// labels, on a port the relay container names, at the path the relay serves its metrics on.
#[test]
fn every_overlay_has_a_podmonitor_that_scrapes_the_relays() {
    for overlay in OVERLAYS {
        let objs = objects(overlay);
        let monitors = find(&objs, "PodMonitor");
        assert_eq!(monitors.len(), 1, "{overlay}");
        let monitor = monitors[0];
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
        let relays =
            find(&objs, "Deployment").into_iter().find(|d| d["metadata"]["name"] == "ghostwire-relay").unwrap();
        let labels = &relays["spec"]["template"]["metadata"]["labels"];
        for (k, v) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "{overlay}: the PodMonitor selects {k}={v}, the pods are labelled {labels}");
        }
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["path"], "/metrics");
        let ports = relays["spec"]["template"]["spec"]["containers"][0]["ports"].as_array().unwrap();
        let port = ports
            .iter()
            .find(|p| p["name"] == endpoint["port"])
            .unwrap_or_else(|| panic!("{overlay}: no port {}", endpoint["port"]));
        // The admin listener, where /metrics is served.
        assert_eq!(port["containerPort"], 9765, "{overlay}");
    }
}

#[test]
fn the_single_overlay_stays_at_one_relay() {
    // The in-process upstream cannot span replicas: more than one would split the room space.
    let objs = objects("single");
    let deployment = find(&objs, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert!(find(&objs, "HorizontalPodAutoscaler").is_empty());
}

/// Every namespaced object of every overlay, the overlay's own (an HPA, a NetworkPolicy)
/// included, lands in the namespace the base creates: `kubectl apply -k` puts nothing
/// elsewhere.
#[test]
fn every_object_of_every_overlay_is_in_the_ghostwire_namespace() {
    for overlay in OVERLAYS {
        for o in objects(overlay) {
            if o["kind"] == "Namespace" {
                continue;
            }
            assert_eq!(o["metadata"]["namespace"], "ghostwire", "{overlay}: {} {}", o["kind"], o["metadata"]["name"]);
        }
    }
}

/// The relay runs as uid/gid 65532 and its secrets are mounted root-owned: they must be
/// group-readable by a group the pod is in (fsGroup), and by no one else.
#[test]
fn the_pods_user_can_read_its_secrets_and_no_one_else_can() {
    for overlay in OVERLAYS {
        let objs = objects(overlay);
        for deployment in find(&objs, "Deployment") {
            let pod = &deployment["spec"]["template"]["spec"];
            let volumes: Vec<&Value> = pod["volumes"]
                .as_array()
                .map(|v| v.iter().filter(|v| v["secret"].is_object()).collect())
                .unwrap_or_default();
            if volumes.is_empty() {
                continue;
            }
            let sc = &pod["securityContext"];
            let name = deployment["metadata"]["name"].as_str().unwrap();
            assert_ne!(sc["runAsUser"].as_u64(), Some(0), "{overlay}/{name}: not root");
            assert_eq!(sc["fsGroup"], sc["runAsGroup"], "{overlay}/{name}: the secrets' group is the pod's");
            for v in volumes {
                let mode = v["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
                assert_eq!(mode & 0o040, 0o040, "{overlay}/{name}: {v} is group-readable");
                assert_eq!(mode & 0o007, 0, "{overlay}/{name}: {v} is not readable by others");
                assert!(v["secret"]["items"].as_array().into_iter().flatten().all(|i| i["mode"].is_null()), "{v}");
            }
        }
    }
}
