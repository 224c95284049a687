//! What the chart renders from its values, beyond validity (`tests/chart.rs`):
//! the NOTES an operator reads, the `helm test` hook, topology spread, the
//! values that reach the controller's arguments, environment and pod spec,
//! and alerts written against metrics the controller really exports.

mod chart_support;
mod common;

use std::collections::BTreeSet;

use chart_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Service};
use portico::cli::{Cli, Command, LogFormat, RunArgs};
use serde_json::Value;

/// Collapse runs of whitespace, so a check does not depend on line breaks.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn pod_spec(docs: &[Value]) -> PodSpec {
    let deployment: Deployment = typed(find(docs, "Deployment").expect("Deployment"));
    deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec")
}

/// The Deployment's command line, parsed by portico's own CLI.
fn parsed_args(pod: &PodSpec) -> (Vec<String>, Cli) {
    let args = pod.containers[0].args.clone().unwrap_or_default();
    let mut argv = vec!["portico".to_string()];
    argv.extend(args.iter().cloned());
    let cli =
        <Cli as clap::Parser>::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    (args, cli)
}

fn run_args(cli: &Cli) -> &RunArgs {
    match &cli.command {
        Command::Run(run) => run,
        _ => panic!("not `portico run`"),
    }
}

#[test]
fn notes_say_how_to_check_it_works_and_what_uninstall_leaves() {
    let slb = flat(&notes(&[]));
    for want in [
        "portico 0.1.0 (slb provider) is installed in portico-system.",
        "kubectl -n portico-system get deploy portico",
        "kubectl -n portico-system logs deploy/portico | grep \"cluster identity\"",
        "helm test portico -n portico-system",
        // slb takes Services without a class.
        "create a Service of type LoadBalancer and watch EXTERNAL-IP appear",
        "delete the LoadBalancer Services portico serves",
        "service.kubernetes.io/load-balancer-cleanup",
        "Installing portico again finishes that clean-up.",
        "The CRDs (IPPool, VipAnnouncement) stay after uninstall",
    ] {
        assert!(slb.contains(want), "NOTES say {want:?}: {slb}");
    }
    // What NOTES tell the operator to grep for is what the controller logs.
    let app = std::fs::read_to_string(repo().join("src/app.rs")).expect("src/app.rs");
    assert!(
        app.contains("\"cluster identity"),
        "the controller logs \"cluster identity\""
    );
    assert!(!slb.contains("IPPool first"), "no pools outside arp");

    let aws = flat(&notes(&["provider=aws"]));
    assert!(
        aws.contains("with spec.loadBalancerClass: portico.io/aws"),
        "aws does not take classless Services, so NOTES name the class: {aws}"
    );
    // NOTES name the class exactly where the controller's default leaves
    // classless Services alone.
    for (provider, kind) in [
        ("slb", portico::cli::ProviderKind::Slb),
        ("aws", portico::cli::ProviderKind::Aws),
        ("arp", portico::cli::ProviderKind::Arp),
    ] {
        let text = flat(&notes(&[&format!("provider={provider}")]));
        assert_eq!(
            text.contains("with spec.loadBalancerClass:"),
            !kind.claims_classless_by_default(),
            "{provider}: {text}"
        );
    }
    let aws_claims = flat(&notes(&["provider=aws", "claimClassless=true"]));
    assert!(
        !aws_claims.contains("spec.loadBalancerClass"),
        "{aws_claims}"
    );
    let classed = flat(&notes(&[
        "claimClassless=false",
        "loadBalancerClass=example.com/lb",
    ]));
    assert!(
        classed.contains("with spec.loadBalancerClass: example.com/lb"),
        "{classed}"
    );
    let quiet = flat(&notes(&["metrics.service.enabled=false"]));
    assert!(
        !quiet.contains("helm test"),
        "no helm test without the metrics Service it calls: {quiet}"
    );

    // arp: the IPPool NOTES show is one the CRD's type accepts.
    let arp = notes(&["provider=arp"]);
    let manifest: String = arp
        .split_once("<<EOF\n")
        .and_then(|(_, rest)| rest.split_once("  EOF"))
        .map(|(body, _)| {
            body.lines()
                .map(|l| l.trim_start())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|| panic!("NOTES show an IPPool: {arp}"));
    let pool: portico_arp::pool::IpPool =
        serde_yaml::from_str(&manifest).unwrap_or_else(|e| panic!("{manifest}: {e}"));
    assert!(!pool.spec.addresses.is_empty());
    let arp = flat(&arp);
    assert!(
        arp.contains("with spec.loadBalancerClass: portico.io/arp"),
        "{arp}"
    );
    assert!(arp.contains("kubectl get vipannouncements -A"), "{arp}");
}

#[test]
fn the_helm_test_pod_checks_readyz_through_the_metrics_service() {
    for (set, port) in [(&[][..], 10258), (&["metrics.port=9100"][..], 9100)] {
        let docs = render(None, set).expect("renders");
        let pod: Pod = typed(find(&docs, "Pod").expect("the helm test Pod"));
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get("helm.sh/hook").map(String::as_str),
            Some("test"),
            "a helm test hook"
        );
        assert!(
            annotations
                .get("helm.sh/hook-delete-policy")
                .is_some_and(|p| p.contains("before-hook-creation")),
            "a second helm test replaces the first pod: {annotations:?}"
        );
        let command = pod.spec.expect("spec").containers[0]
            .command
            .clone()
            .unwrap_or_default();
        let url = command.last().expect("a URL");

        // The URL is the metrics Service's name and port, which lead to the
        // container port the readiness probe checks.
        let service: Service = typed(
            docs.iter()
                .find(|d| d["kind"] == "Service")
                .expect("metrics Service"),
        );
        let service_port = &service.spec.clone().expect("spec").ports.expect("ports")[0];
        assert_eq!(service_port.port, port);
        assert_eq!(
            url,
            &format!(
                "http://{}:{port}/readyz",
                service.metadata.name.as_deref().expect("name")
            ),
            "{set:?}"
        );
        let pod_spec = pod_spec(&docs);
        let container = &pod_spec.containers[0];
        let named = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http-metrics"))
            .expect("the http-metrics port");
        assert_eq!(named.container_port, port);
        assert_eq!(
            service_port.target_port,
            Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                    "http-metrics".into()
                )
            )
        );
        let readiness = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.as_deref());
        assert_eq!(readiness, Some("/readyz"));
    }
    let docs = render(None, &["metrics.service.enabled=false"]).expect("renders");
    assert!(
        find(&docs, "Pod").is_none(),
        "no test pod without the Service it calls"
    );
}

#[test]
fn topology_spread_defaults_to_zones_and_takes_the_values() {
    let docs = render(None, &[]).expect("renders");
    let deployment: Deployment = typed(find(&docs, "Deployment").expect("Deployment"));
    let template_labels = deployment
        .spec
        .clone()
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .expect("pod labels");
    let spread = pod_spec(&docs)
        .topology_spread_constraints
        .expect("spread constraints");
    assert_eq!(spread.len(), 1, "{spread:?}");
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    assert_eq!(spread[0].max_skew, 1);
    assert_eq!(
        spread[0].when_unsatisfiable, "ScheduleAnyway",
        "a cluster with one zone still schedules both"
    );
    let selects = spread[0]
        .label_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .expect("matchLabels");
    assert!(
        selects
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v)),
        "the constraint selects the controller's own pods: {selects:?} vs {template_labels:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("spread.yaml");
    std::fs::write(
        &values,
        "topologySpreadConstraints:\n  - maxSkew: 2\n    topologyKey: kubernetes.io/hostname\n    whenUnsatisfiable: DoNotSchedule\n    labelSelector:\n      matchLabels:\n        app.kubernetes.io/name: portico\n",
    )
    .expect("write values");
    let docs = render(Some(&values), &[]).expect("renders");
    let spread = pod_spec(&docs)
        .topology_spread_constraints
        .expect("spread constraints");
    assert_eq!(
        spread.len(),
        1,
        "the values replace the default: {spread:?}"
    );
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(spread[0].max_skew, 2);
    assert_eq!(spread[0].when_unsatisfiable, "DoNotSchedule");
}

#[test]
fn values_reach_the_controller() {
    // ci/slb-values.yaml: priority class, extra environment, claim-classless,
    // workers, endpoint.
    let docs = render(Some(&chart().join("ci/slb-values.yaml")), &[]).expect("renders");
    let pod = pod_spec(&docs);
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    let env: Vec<(String, Option<String>)> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    assert!(
        env.contains(&("RUST_LOG".into(), Some("portico=debug".into()))),
        "extraEnv: {env:?}"
    );
    assert!(
        env.iter().any(|(n, _)| n == "POD_NAME"),
        "the chart's own variable stays: {env:?}"
    );
    let (_, cli) = parsed_args(&pod);
    let run = run_args(&cli);
    assert_eq!(run.claim_classless, Some(true));
    assert_eq!(run.workers, 32);
    assert_eq!(
        run.slb.slb_endpoint.as_deref(),
        Some("http://portico-slb.portico-system.svc:8480")
    );
    assert!(matches!(cli.log_format, LogFormat::Json), "the default");

    // ci/single-values.yaml: text logs, no leader election.
    let (_, cli) = parsed_args(&pod_spec(
        &render(Some(&chart().join("ci/single-values.yaml")), &[]).expect("renders"),
    ));
    let run = run_args(&cli);
    assert!(matches!(cli.log_format, LogFormat::Text));
    assert!(!run.leader_elect);

    // ci/aws-values.yaml: class, cluster name, region, VPC; claim-classless
    // left to the provider's default.
    let (args, cli) = parsed_args(&pod_spec(
        &render(Some(&chart().join("ci/aws-values.yaml")), &[]).expect("renders"),
    ));
    let run = run_args(&cli);
    assert_eq!(run.provider, portico::cli::ProviderKind::Aws);
    assert_eq!(
        run.load_balancer_class.as_deref(),
        Some("service.k8s.aws/portico")
    );
    assert_eq!(run.cluster_name.as_deref(), Some("prod-eu-west-1"));
    assert_eq!(run.aws.aws_region.as_deref(), Some("eu-west-1"));
    assert_eq!(run.aws.aws_vpc_id.as_deref(), Some("vpc-0a1b2c3d"));
    assert!(
        !args.iter().any(|a| a.starts_with("--claim-classless")),
        "null claimClassless leaves the provider's default: {args:?}"
    );

    // claimClassless=false, extra flags after the chart's own (the last
    // value of a flag wins, so extraArgs can override the chart).
    let (args, cli) = parsed_args(&pod_spec(
        &render(
            None,
            &[
                "claimClassless=false",
                "priorityClassName=portico-critical",
                "extraArgs[0]=--slb-state=/tmp/cloud.json",
                "extraArgs[1]=--resync=5m",
            ],
        )
        .expect("renders"),
    ));
    let run = run_args(&cli);
    assert_eq!(run.claim_classless, Some(false));
    assert_eq!(
        run.slb.slb_state.as_deref(),
        Some(std::path::Path::new("/tmp/cloud.json"))
    );
    assert_eq!(run.resync, std::time::Duration::from_secs(300), "{args:?}");
    assert_eq!(
        args.last().map(String::as_str),
        Some("--resync=5m"),
        "extraArgs come last"
    );
}

/// The chart itself never passes a flag twice: an override is the
/// operator's choice (extraArgs), not an accident of a values file.
#[test]
fn no_values_file_renders_a_flag_twice() {
    for values in values_files() {
        for set in [&[][..], &["provider=aws"], &["provider=arp"]] {
            let docs = render(values.as_deref(), set).expect("renders");
            for kind in ["Deployment", "DaemonSet"] {
                for doc in docs.iter().filter(|d| d["kind"] == kind) {
                    let args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let mut seen = BTreeSet::new();
                    for arg in args.iter().filter_map(Value::as_str) {
                        let flag = arg.split('=').next().unwrap_or(arg);
                        if flag.starts_with("--") {
                            assert!(
                                seen.insert(flag.to_string()),
                                "{values:?} {set:?}: {kind} passes {flag} twice: {args:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Every series name the controller's registry exports, as scraped: each
/// labelled family gets one sample first (an empty family prints nothing).
fn exported_series() -> BTreeSet<String> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = portico::metrics::Metrics::register(&mut registry);
    metrics.reconciled("error");
    metrics.error("throttled");
    metrics.provider_call("slb", "ensure", Ok(()), std::time::Instant::now());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

#[test]
fn alerts_use_metrics_the_controller_exports() {
    let exported = exported_series();
    for want in [
        "portico_reconciles_total",
        "portico_is_leader",
        "portico_errors_total",
    ] {
        assert!(exported.contains(want), "{want} in {exported:?}");
    }
    let docs = render(None, &["metrics.prometheusRule.enabled=true"]).expect("renders");
    let rule = find(&docs, "PrometheusRule").expect("PrometheusRule");
    let rules = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    let mut alerts = BTreeSet::new();
    for rule in rules {
        let alert = rule["alert"].as_str().expect("alert name");
        alerts.insert(alert.to_string());
        let expr = rule["expr"].as_str().expect("expr");
        let used: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("portico_"))
            .collect();
        assert!(!used.is_empty(), "{alert}: {expr}");
        for name in used {
            assert!(
                exported.contains(name),
                "{alert} uses {name}, which the controller does not export: {exported:?}"
            );
        }
        assert!(rule["for"].is_string(), "{alert} waits before firing");
        assert!(
            rule["labels"]["severity"].is_string(),
            "{alert} has a severity"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{alert} says why"
        );
    }
    assert_eq!(
        alerts,
        BTreeSet::from([
            "PorticoNoLeader".to_string(),
            "PorticoProviderThrottled".to_string(),
            "PorticoReconcileErrors".to_string(),
        ])
    );
    let expr = |name: &str| {
        rules
            .iter()
            .find(|r| r["alert"] == name)
            .and_then(|r| r["expr"].as_str())
            .expect("expr")
            .to_string()
    };
    // No replica scraped at all is no leader too.
    let no_leader = expr("PorticoNoLeader");
    assert!(
        no_leader.contains(r#"absent(portico_is_leader{namespace="portico-system"})"#),
        "{no_leader}"
    );
    // The label values the alerts filter on are the ones the code writes.
    let throttled = portico_provider::ProviderError::Throttled { retry_after: None };
    assert!(
        expr("PorticoProviderThrottled")
            .contains(&format!("kind=\"{}\"", throttled.metric_label())),
        "throttling is counted as kind={}",
        throttled.metric_label()
    );
}

#[test]
fn held_as_rendered_sees_a_dropped_or_changed_field() {
    let rendered = serde_json::json!({"spec": {"args": ["--a"], "x": {"y": 1}}});
    let defaulted = serde_json::json!({"spec": {"args": ["--a"], "x": {"y": 1, "z": 2}}});
    assert_eq!(held_as_rendered(&rendered, &defaulted, "d"), Ok(()));
    let dropped = serde_json::json!({"spec": {"args": ["--a"], "x": {}}});
    assert_eq!(
        held_as_rendered(&rendered, &dropped, "d"),
        Err("d.spec.x.y: not on the server".to_string())
    );
    let changed = serde_json::json!({"spec": {"args": ["--b"], "x": {"y": 1}}});
    assert!(held_as_rendered(&rendered, &changed, "d").is_err());
    let longer = serde_json::json!({"spec": {"args": ["--a", "--b"], "x": {"y": 1}}});
    assert!(held_as_rendered(&rendered, &longer, "d").is_err());
}
