//! The Helm chart: lint, render with several values files, every rendered
//! object a valid Kubernetes object, bad values refused by name, the image
//! recipe in agreement, and a real `helm install`/`upgrade`/`uninstall`
//! into the real control plane with the controller running as the chart's
//! ServiceAccount with the chart's arguments.

mod chart_support;
mod common;

use std::process::Command;

use chart_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Deserialize;
use serde_json::Value;

#[test]
fn chart_lints_strictly_with_every_values_file() {
    for values in values_files() {
        let chart = chart();
        let mut args = vec!["lint", "--strict", chart.to_str().expect("utf-8")];
        let v = values.as_ref().map(|v| v.to_string_lossy().into_owned());
        if let Some(v) = &v {
            args.extend(["-f", v.as_str()]);
        }
        if let Err(err) = run_helm(&args) {
            panic!("helm lint --strict {v:?}: {err}");
        }
    }
}

#[test]
fn every_rendered_document_is_a_valid_object() {
    for values in values_files() {
        let docs = render(values.as_deref(), &[]).expect("renders");
        for doc in &docs {
            match doc["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
                "ClusterRole" => drop(typed::<ClusterRole>(doc)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
                "Role" => drop(typed::<Role>(doc)),
                "RoleBinding" => drop(typed::<RoleBinding>(doc)),
                "Deployment" => drop(typed::<Deployment>(doc)),
                "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(doc)),
                "Service" => drop(typed::<Service>(doc)),
                "Pod" => drop(typed::<Pod>(doc)),
                "DaemonSet" => drop(typed::<k8s_openapi::api::apps::v1::DaemonSet>(doc)),
                "CustomResourceDefinition" => drop(typed::<
                    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
                >(doc)),
                "ServiceMonitor" | "PrometheusRule" => {
                    assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                    assert!(doc["spec"].is_object(), "{doc}");
                }
                other => panic!("{values:?}: unexpected kind {other}"),
            }
        }
        let deployment: Deployment = typed(find(&docs, "Deployment").expect("a Deployment"));
        let args = deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec")
            .containers[0]
            .args
            .clone()
            .unwrap_or_default();
        // The rendered arguments are ones `portico run` accepts.
        let mut argv = vec!["portico".to_string()];
        argv.extend(args);
        let parsed = <portico::cli::Cli as clap::Parser>::try_parse_from(&argv);
        assert!(parsed.is_ok(), "{values:?}: {argv:?}: {:?}", parsed.err());
    }
}

#[test]
fn the_controller_is_hardened_and_highly_available() {
    let docs = render(None, &[]).expect("renders");
    let deployment: Deployment = typed(find(&docs, "Deployment").expect("Deployment"));
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2), "two replicas, one leads");
    let pod = spec.template.spec.expect("pod spec");
    let pod_security = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let container = &pod.containers[0];
    let security = container.security_context.clone().expect("securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    let probe_path = |p: Option<k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get).and_then(|h| h.path)
    };
    assert_eq!(
        probe_path(container.liveness_probe.clone()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(container.readiness_probe.clone()).as_deref(),
        Some("/readyz")
    );
    assert!(
        pod.affinity.and_then(|a| a.pod_anti_affinity).is_some(),
        "replicas prefer different nodes"
    );
    let pdb: PodDisruptionBudget = typed(find(&docs, "PodDisruptionBudget").expect("PDB"));
    assert!(pdb.spec.and_then(|s| s.min_available).is_some());
    let single = render(Some(&chart().join("ci/single-values.yaml")), &[]).expect("renders");
    assert!(
        find(&single, "PodDisruptionBudget").is_none(),
        "no PDB for one replica"
    );
    assert!(
        find(&single, "Role").is_none(),
        "no Lease rights without leader election"
    );
}

/// The speaker DaemonSet, rendered for `provider: arp` only.
#[test]
fn the_speaker_daemonset_is_host_network_with_only_raw_capabilities() {
    use k8s_openapi::api::apps::v1::DaemonSet;

    let default = render(None, &[]).expect("renders");
    assert!(
        find(&default, "DaemonSet").is_none(),
        "no speaker unless provider is arp"
    );
    let docs = render(None, &["provider=arp"]).expect("renders with arp");
    let daemonset: DaemonSet = typed(find(&docs, "DaemonSet").expect("speaker DaemonSet"));
    let pod = daemonset
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(
        pod.host_network,
        Some(true),
        "answers on the node's interface"
    );
    assert!(
        pod.tolerations.is_some_and(|t| !t.is_empty()),
        "tolerations"
    );
    assert!(pod.node_selector.is_some(), "node selector");
    let container = &pod.containers[0];
    let caps = container
        .security_context
        .clone()
        .and_then(|s| s.capabilities)
        .expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let mut added = caps.add.expect("added capabilities");
    added.sort();
    assert_eq!(added, vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]);
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.clone())
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path);
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"), "downward API");
    // The rendered arguments are ones `portico speaker` accepts.
    let mut argv = vec!["portico".to_string()];
    argv.extend(container.args.clone().expect("args"));
    argv.extend(["--node-name".to_string(), "n1".to_string()]);
    let parsed = <portico::cli::Cli as clap::Parser>::try_parse_from(&argv);
    assert!(
        matches!(
            parsed.as_ref().map(|c| &c.command),
            Ok(portico::cli::Command::Speaker(_))
        ),
        "{argv:?}: {:?}",
        parsed.err()
    );
    let role: ClusterRole = typed(
        docs.iter()
            .find(|d| {
                d["kind"] == "ClusterRole"
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with("-speaker"))
            })
            .expect("speaker ClusterRole"),
    );
    assert!(
        role.rules.iter().flatten().all(|r| r
            .verbs
            .iter()
            .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
            || r.resources
                .iter()
                .flatten()
                .all(|res| res == "events" || res == "vipannouncements")),
        "the speaker writes only Events and VipAnnouncements"
    );
}

/// Each bad value is refused with a message naming the value and saying
/// what is wrong (helm's schema errors, or `portico.validate`'s `fail`).
#[test]
fn bad_values_are_refused_by_name() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "unknown provider",
            &["provider=gcp"],
            &["at '/provider'", "value must be one of"],
        ),
        (
            "no replicas",
            &["replicaCount=0"],
            &["at '/replicaCount'", "minimum: got 0, want 1"],
        ),
        (
            "a typo in a top-level key",
            &["replicas=3"],
            &["additional properties 'replicas' not allowed"],
        ),
        (
            "a bad class",
            &["loadBalancerClass=Not A Class"],
            &["at '/loadBalancerClass'", "does not match pattern"],
        ),
        (
            "a bad duration",
            &["resync=soon"],
            &["at '/resync'", "does not match pattern"],
        ),
        (
            "a flag that is not one",
            &["extraArgs[0]=workers=3"],
            &["at '/extraArgs/0'", "does not match pattern '^--'"],
        ),
        (
            "a bad VPC id",
            &["aws.vpcId=my-vpc"],
            &["at '/aws/vpcId'", "does not match pattern"],
        ),
        (
            "a typo under aws",
            &["aws.regoin=eu-west-1"],
            &["at '/aws'", "additional properties 'regoin' not allowed"],
        ),
        (
            "a typo under slb",
            &["slb.endpont=http://cloud:8480"],
            &["at '/slb'", "additional properties 'endpont' not allowed"],
        ),
        (
            "a typo under podDisruptionBudget",
            &["podDisruptionBudget.minAvailabe=1"],
            &[
                "at '/podDisruptionBudget'",
                "additional properties 'minAvailabe' not allowed",
            ],
        ),
        (
            "a typo under leaderElection",
            &["leaderElection.enable=true"],
            &[
                "at '/leaderElection'",
                "additional properties 'enable' not allowed",
            ],
        ),
        (
            "a key in the wrong case",
            &["metrics.servicemonitor.enabled=true"],
            &[
                "at '/metrics'",
                "additional properties 'servicemonitor' not allowed",
            ],
        ),
        (
            "a typo in an environment variable",
            &["extraEnv[0].nam=RUST_LOG"],
            &[
                "at '/extraEnv/0'",
                "missing property 'name'",
                "additional properties 'nam' not allowed",
            ],
        ),
        (
            "a typo in a toleration",
            &["tolerations[0].ke=dedicated"],
            &[
                "at '/tolerations/0'",
                "additional properties 'ke' not allowed",
            ],
        ),
        (
            "a word for a boolean",
            &["metrics.serviceMonitor.enabled=yes"],
            &[
                "at '/metrics/serviceMonitor/enabled'",
                "got string, want boolean",
            ],
        ),
        (
            "a negative PDB",
            &["podDisruptionBudget.minAvailable=-1"],
            &[
                "at '/podDisruptionBudget/minAvailable'",
                "minimum: got -1, want 0",
            ],
        ),
        (
            "a PDB that blocks every drain",
            &["podDisruptionBudget.minAvailable=2"],
            &[
                "podDisruptionBudget.minAvailable: 2 of 2 replicas would never let a node be drained",
            ],
        ),
        (
            "replicas without a leader",
            &["replicaCount=3", "leaderElection.enabled=false"],
            &["replicaCount: 3 replicas need leaderElection.enabled=true"],
        ),
    ];
    for (desc, set, wants) in cases {
        match render(None, set) {
            Ok(_) => panic!("{desc}: {set:?} was accepted"),
            Err(err) => {
                for want in *wants {
                    assert!(
                        err.contains(want),
                        "{desc}: {set:?}: the message says {want:?}: {err}"
                    );
                }
            }
        }
    }
    // What stays allowed beside them.
    for set in [
        &["replicaCount=1", "leaderElection.enabled=false"][..],
        &["podDisruptionBudget.minAvailable=50%"],
        &["podDisruptionBudget.minAvailable=0"],
        &["extraEnv[0].name=RUST_LOG", "extraEnv[0].value=debug"],
    ] {
        if let Err(err) = render(None, set) {
            panic!("{set:?} is refused: {err}");
        }
    }
}

/// (API group, resource, verb) of every ClusterRole rule rendered.
fn cluster_grants(docs: &[Value]) -> std::collections::BTreeSet<(String, String, String)> {
    docs.iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .map(typed::<ClusterRole>)
        .flat_map(|role| role.rules.unwrap_or_default())
        .flat_map(|rule| {
            let groups = rule.api_groups.unwrap_or_default();
            let resources = rule.resources.unwrap_or_default();
            let mut out = Vec::new();
            for g in &groups {
                for r in &resources {
                    for v in &rule.verbs {
                        out.push((g.clone(), r.clone(), v.clone()));
                    }
                }
            }
            out
        })
        .collect()
}

#[test]
fn the_arp_provider_ships_its_crd_and_only_it_may_touch_ippools() {
    let arp = render(Some(&chart().join("ci/arp-values.yaml")), &[]).expect("renders");
    let grants = cluster_grants(&arp);
    for (group, resource, verb) in [
        ("portico.io", "ippools", "list"),
        ("portico.io", "ippools", "watch"),
        ("portico.io", "ippools/status", "patch"),
        ("", "namespaces", "watch"),
    ] {
        assert!(
            grants.contains(&(group.into(), resource.into(), verb.into())),
            "arp may {verb} {group}/{resource}: {grants:?}"
        );
    }
    for (desc, values) in [
        ("slb", None),
        ("aws", Some(chart().join("ci/aws-values.yaml"))),
    ] {
        let docs = render(values.as_deref(), &[]).expect("renders");
        assert!(
            cluster_grants(&docs)
                .iter()
                .all(|(g, _, _)| g != "portico.io"),
            "{desc}: no IPPool rights"
        );
    }
    // helm installs crds/ before the templates; the file is generated from
    // the Rust types (portico-arp's test keeps them in step).
    let chart = chart();
    let out = run_helm(&[
        "template",
        "portico",
        chart.to_str().expect("utf-8"),
        "--include-crds",
        "--set",
        "provider=arp",
    ])
    .expect("renders with CRDs");
    let crd = serde_yaml::Deserializer::from_str(&out)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .expect("the IPPool CRD");
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        typed(&crd);
    assert_eq!(crd.metadata.name.as_deref(), Some("ippools.portico.io"));
    assert_eq!(crd.spec.scope, "Cluster");
}

/// Every CRD is in crds/, none in templates/: helm installs crds/ before
/// the templates and never deletes them, so `helm uninstall` or switching
/// `provider` away from arp keeps the CRDs and the objects of their kinds
/// (`tests/chart_real.rs` checks that on a real API server).
#[test]
fn the_crds_are_in_crds_so_uninstall_keeps_them() {
    for values in values_files() {
        for provider in ["slb", "aws", "arp"] {
            let set = format!("provider={provider}");
            let docs = render(values.as_deref(), &[&set]).expect("renders");
            assert!(
                find(&docs, "CustomResourceDefinition").is_none(),
                "{values:?} {set}: a CRD in templates/ is deleted by helm uninstall"
            );
        }
    }
    let chart = chart();
    let out = run_helm(&[
        "template",
        "portico",
        chart.to_str().expect("utf-8"),
        "--include-crds",
        "--set",
        "provider=arp",
    ])
    .expect("renders with CRDs");
    let mut names: Vec<String> = serde_yaml::Deserializer::from_str(&out)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(|d| {
            d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["ippools.portico.io", "vipannouncements.portico.io"]);
}

#[test]
fn the_image_recipe_matches_the_chart() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let last = |prefix: &str| {
        dockerfile
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or_else(|| panic!("Dockerfile has no {prefix}"))
            .to_string()
    };
    let docs = render(None, &[]).expect("renders");
    let deployment: Deployment = typed(find(&docs, "Deployment").expect("Deployment"));
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let container = &pod.containers[0];
    let binary = container.command.clone().unwrap_or_default()[0].clone();
    assert!(
        last("COPY --from=build").ends_with(&format!(" {binary}")),
        "the image puts portico where the chart runs it ({binary})"
    );
    assert_eq!(last("ENTRYPOINT"), format!("[\"{binary}\"]"));
    let user = pod
        .security_context
        .and_then(|s| s.run_as_user)
        .expect("runAsUser");
    assert_eq!(last("USER"), format!("{user}:{user}"), "same non-root user");
    let port = container.ports.clone().unwrap_or_default()[0].container_port;
    assert_eq!(last("EXPOSE"), port.to_string(), "same metrics port");
    assert!(last("FROM").contains("distroless"), "minimal runtime image");
}

#[test]
fn deploy_rbac_is_the_charts() {
    let output = Command::new("bash")
        .arg(repo().join("scripts/render-rbac.sh"))
        .arg("--stdout")
        .output()
        .expect("render");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fresh = String::from_utf8_lossy(&output.stdout);
    let committed =
        std::fs::read_to_string(repo().join("deploy/rbac.yaml")).expect("deploy/rbac.yaml");
    assert_eq!(
        committed, fresh,
        "deploy/rbac.yaml drifted from the chart: run scripts/render-rbac.sh"
    );
}
