//! Least privilege, proven from the real control plane's audit log: after
//! every real-cluster scenario ran as the controller's ServiceAccount, the
//! requests that account made are compared with what `deploy/rbac.yaml`
//! grants. Any 403 fails, and so does any granted rule never used. A grant
//! covers a request only where it applies: a Role's rules in the Role's
//! namespace, a rule with `resourceNames` for that name.
//!
//! The ServiceAccounts `helm install` created in `tests/chart_real.rs` (the
//! slb and arp releases, each running the controller as the pod would) are
//! audited too, against the RBAC the chart rendered for them and bound to
//! them: no 403, nothing used that was not granted. (That `deploy/rbac.yaml`
//! is the chart's render is `tests/chart.rs` `deploy_rbac_is_the_charts`.)
//!
//! Runs after the other real-cluster tests (`scripts/test.sh` runs it on its
//! own; the default nextest filter leaves it out).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{rbac_manifest, tool};
use kube_standin::control_plane::{
    AuditEvent, CONTROLLER_ACCOUNT, CONTROLLER_NAMESPACE, ControlPlane, Grant, grants,
};
use serde::Deserialize;
use serde_json::Value;

/// One request: API group, resource or resource/subresource, verb, and the
/// namespace and name it was for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn used(event: &AuditEvent) -> Option<Use> {
    let object = event.object_ref.as_ref()?;
    Some(Use {
        group: object.api_group.clone().unwrap_or_default(),
        resource: event.resource(),
        verb: event.verb.clone(),
        namespace: object.namespace.clone(),
        name: object.name.clone(),
    })
}

/// Whether `grant` allows `request`: same group, resource and verb, and
/// the grant's namespace and resource name, when it has them.
fn covers(grant: &Grant, request: &Use) -> bool {
    grant.group == request.group
        && grant.resource == request.resource
        && grant.verb == request.verb
        && grant
            .namespace
            .as_ref()
            .is_none_or(|ns| request.namespace.as_ref() == Some(ns))
        && grant
            .name
            .as_ref()
            .is_none_or(|n| request.name.as_ref() == Some(n))
}

fn no_wildcards(grants: &[Grant]) {
    for g in grants {
        assert!(
            g.group != "*" && g.resource != "*" && g.verb != "*",
            "wildcards are not least privilege: {g:?}"
        );
    }
}

/// What the audit log shows of `user`: its requests outside kube-apiserver
/// restarts (whose RBAC caches are gone or not yet filled: refusals then
/// are not findings), the ones refused, the uses no grant covers, and the
/// grants no use needed.
struct Audit {
    requests: usize,
    forbidden: BTreeSet<String>,
    uses: BTreeSet<Use>,
    not_granted: Vec<Use>,
    unused: Vec<Grant>,
}

fn audit(plane: &ControlPlane, user: &str, grants: &[Grant]) -> Audit {
    let events: Vec<AuditEvent> = plane
        .audit_since(0)
        .expect("audit log")
        .into_iter()
        .filter(|e| e.user.username == user)
        .collect();
    let restarts = plane.restart_windows();
    let restarting = |e: &AuditEvent| {
        restarts.iter().any(|(from, to)| {
            e.request_received_timestamp.as_str() >= from.as_str()
                && e.request_received_timestamp.as_str() <= to.as_str()
        })
    };
    let during_restarts = events
        .iter()
        .filter(|e| e.code() == Some(403) && restarting(e))
        .count();
    println!(
        "{user}: {} requests; 403s while kube-apiserver restarted ({} restarts): {during_restarts}",
        events.len(),
        restarts.len()
    );
    let forbidden = events
        .iter()
        .filter(|e| e.code() == Some(403) && !restarting(e))
        .map(|e| {
            format!(
                "{} {} at {}",
                e.verb, e.request_uri, e.request_received_timestamp
            )
        })
        .collect();
    let uses: BTreeSet<Use> = events.iter().filter_map(used).collect();
    let not_granted = uses
        .iter()
        .filter(|u| !grants.iter().any(|g| covers(g, u)))
        .cloned()
        .collect();
    let unused = grants
        .iter()
        .filter(|g| !uses.iter().any(|u| covers(g, u)))
        .cloned()
        .collect();
    Audit {
        requests: events.len(),
        forbidden,
        uses,
        not_granted,
        unused,
    }
}

#[tokio::test]
async fn controller_rbac_is_exactly_what_it_uses() {
    let plane = ControlPlane::connect().await.expect("real control plane");
    let user = ControlPlane::service_account_user(CONTROLLER_NAMESPACE, CONTROLLER_ACCOUNT);
    let granted = grants(&rbac_manifest()).expect("read deploy/rbac.yaml");
    no_wildcards(&granted);
    let audit = audit(&plane, &user, &granted);
    assert!(
        audit.requests > 50,
        "the controller made only {} requests: run the real-cluster scenarios first",
        audit.requests
    );
    assert!(
        audit.forbidden.is_empty(),
        "the controller was refused (403): {:#?}",
        audit.forbidden
    );
    println!("permissions used (group, resource, verb):");
    let distinct: BTreeSet<_> = audit
        .uses
        .iter()
        .map(|u| (&u.group, &u.resource, &u.verb))
        .collect();
    for (group, resource, verb) in distinct {
        println!("  {group:>20} {resource:<18} {verb}");
    }
    assert!(
        audit.not_granted.is_empty(),
        "used but not granted by deploy/rbac.yaml: {:#?}",
        audit.not_granted
    );
    assert!(
        audit.unused.is_empty(),
        "granted by deploy/rbac.yaml but never used by any scenario: {:#?}",
        audit.unused
    );
}

/// The Roles and ClusterRoles the chart renders for `release` in
/// `namespace` with `args` and binds to the controller's ServiceAccount
/// `account`, written to a manifest in `dir`.
fn chart_grants(
    dir: &Path,
    release: &str,
    namespace: &str,
    account: &str,
    args: &[&str],
) -> Vec<Grant> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portico");
    let output = std::process::Command::new(tool("helm"))
        .args(["template", release])
        .arg(&chart)
        .args(["-n", namespace])
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs: Vec<Value> =
        serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&output.stdout))
            .map(|d| Value::deserialize(d).expect("YAML"))
            .filter(|d| !d.is_null())
            .collect();
    let bound: BTreeSet<(String, String)> = docs
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("RoleBinding" | "ClusterRoleBinding")
            )
        })
        .filter(|d| {
            d["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == namespace
            })
        })
        .map(|d| {
            (
                d["roleRef"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                d["roleRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let roles: Vec<String> = docs
        .iter()
        .filter(|d| {
            bound.contains(&(
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ))
        })
        .map(|d| serde_yaml::to_string(d).expect("YAML"))
        .collect();
    assert!(!roles.is_empty(), "{release}: no role bound to {account}");
    let path = dir.join(format!("{release}-rbac.yaml"));
    std::fs::write(&path, roles.join("---\n")).expect("write");
    let granted = grants(&path).expect("grants");
    no_wildcards(&granted);
    granted
}

#[tokio::test]
async fn the_charts_service_accounts_use_only_what_the_chart_grants_them() {
    let plane = ControlPlane::connect().await.expect("real control plane");
    let dir = tempfile::tempdir().expect("tempdir");
    // The releases of tests/chart_real.rs.
    let arp_values =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portico/ci/arp-values.yaml");
    let arp_values = arp_values.to_str().expect("utf-8");
    let releases = [
        (
            "chart-test",
            "portico-chart",
            &["--set", "slb.endpoint=http://cloud"][..],
        ),
        ("chart-arp", "portico-chart-arp", &["-f", arp_values][..]),
    ];
    for (release, namespace, args) in releases {
        let account = format!("{release}-portico");
        let granted = chart_grants(dir.path(), release, namespace, &account, args);
        let user = ControlPlane::service_account_user(namespace, &account);
        let audit = audit(&plane, &user, &granted);
        assert!(
            audit.requests > 10,
            "{user} made only {} requests: run tests/chart_real.rs first",
            audit.requests
        );
        assert!(
            audit.forbidden.is_empty(),
            "{user} was refused (403): {:#?}",
            audit.forbidden
        );
        assert!(
            audit.not_granted.is_empty(),
            "{user} used what the chart does not grant it: {:#?}",
            audit.not_granted
        );
        // The chart's scenarios are short, so not every grant is used here;
        // deploy/rbac.yaml (the same rules) is held to that above.
        println!(
            "{user}: granted but not used in tests/chart_real.rs: {:?}",
            audit
                .unused
                .iter()
                .map(|g| format!("{} {} {}", g.group, g.resource, g.verb))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_grant_covers_only_its_namespace_and_name() {
    let grant = |namespace: Option<&str>, name: Option<&str>| Grant {
        group: "coordination.k8s.io".into(),
        resource: "leases".into(),
        verb: "get".into(),
        namespace: namespace.map(String::from),
        name: name.map(String::from),
    };
    let request = |namespace: &str, name: &str| Use {
        group: "coordination.k8s.io".into(),
        resource: "leases".into(),
        verb: "get".into(),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
    };
    let rows = [
        (
            "a cluster-wide grant covers every namespace",
            grant(None, None),
            request("ns", "x"),
            true,
        ),
        (
            "a Role covers its own namespace",
            grant(Some("ns"), None),
            request("ns", "x"),
            true,
        ),
        (
            "a Role does not cover another namespace",
            grant(Some("ns"), None),
            request("other", "x"),
            false,
        ),
        (
            "resourceNames cover that name",
            grant(Some("ns"), Some("x")),
            request("ns", "x"),
            true,
        ),
        (
            "resourceNames do not cover another name",
            grant(Some("ns"), Some("x")),
            request("ns", "y"),
            false,
        ),
    ];
    for (desc, g, r, want) in rows {
        assert_eq!(covers(&g, &r), want, "{desc}");
    }
    let mut other_verb = request("ns", "x");
    other_verb.verb = "update".into();
    assert!(!covers(&grant(None, None), &other_verb), "another verb");
}
