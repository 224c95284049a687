//! Least privilege, proven from the real control plane's audit log: after
//! every real-cluster scenario ran as the controller's ServiceAccount, the
//! requests that account made are compared with what `deploy/rbac.yaml`
//! grants, where it grants it (a Role's namespace, a rule's resourceNames).
//! Any 403 fails, and so does a request no grant covers, a grant no request
//! used, and a grant broader than its use: cluster-wide for what the
//! controller keeps in one namespace by design (its Lease), or for any name
//! where one object is all it is ever used on.
//!
//! The ServiceAccounts `helm install` created in `tests/chart_real.rs` (the
//! slb and arp releases, each running the controller as the pod would) are
//! audited too, against the RBAC the chart rendered and bound to them: no
//! 403, nothing used that was not granted. (That `deploy/rbac.yaml` is the
//! chart's render is `tests/chart.rs` `deploy_rbac_is_the_charts`, so the
//! "every grant used" half holds for the chart too.)
//!
//! Runs after the other real-cluster tests (`scripts/test.sh` runs it on its
//! own; the default nextest filter leaves it out). Only what the log holds
//! from `PORTICO_AUDIT_SINCE` on counts (`scripts/test.sh` sets it when its
//! tests start), so a control plane left running with an earlier run's
//! requests cannot make an unused grant look used.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, Utc};
use common::{rbac_manifest, tool};
use kube_standin::control_plane::{
    AuditEvent, CONTROLLER_ACCOUNT, CONTROLLER_NAMESPACE, ControlPlane, Grant, grants,
};
use serde::Deserialize;
use serde_json::Value;

/// One request the controller made, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Request {
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    verb: String,
    /// As RBAC judges it: `GET /api/v1/namespaces/x` is in namespace x.
    namespace: Option<String>,
    name: Option<String>,
}

impl Request {
    fn from_audit(event: &AuditEvent) -> Option<Request> {
        let object = event.object_ref.as_ref()?;
        Some(Request {
            group: object.api_group.clone().unwrap_or_default(),
            resource: event.resource(),
            verb: event.verb.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        })
    }

    /// The namespace the object lives in: a Namespace lives in none,
    /// though it is addressed as its own.
    fn home(&self) -> Option<&str> {
        if self.resource == "namespaces" {
            None
        } else {
            self.namespace.as_deref()
        }
    }

    fn shown(&self) -> String {
        format!(
            "{} {}/{} in {} named {}",
            self.verb,
            self.group,
            self.resource,
            self.namespace.as_deref().unwrap_or("(cluster)"),
            self.name.as_deref().unwrap_or("(any)")
        )
    }
}

fn shown(grant: &Grant) -> String {
    format!(
        "{} {}/{} in {} named {}",
        grant.verb,
        grant.group,
        grant.resource,
        grant.namespace.as_deref().unwrap_or("(every namespace)"),
        grant.name.as_deref().unwrap_or("(any)")
    )
}

fn same_permission(grant: &Grant, request: &Request) -> bool {
    grant.group == request.group && grant.resource == request.resource && grant.verb == request.verb
}

/// Whether RBAC lets `grant` authorize `request`.
fn covers(grant: &Grant, request: &Request) -> bool {
    same_permission(grant, request)
        && grant
            .namespace
            .as_ref()
            .is_none_or(|ns| request.namespace.as_ref() == Some(ns))
        && grant
            .name
            .as_ref()
            .is_none_or(|name| request.name.as_ref() == Some(name))
}

/// What the controller touches in one namespace by design (its Lease, in
/// its own namespace), so a cluster-wide grant for it is too broad.
/// Services, their status and their Events live wherever users put
/// Services: that the scenarios used one namespace says nothing about them.
const IN_ONE_NAMESPACE_BY_DESIGN: [(&str, &str); 1] = [("coordination.k8s.io", "leases")];

/// Verbs RBAC can limit to named objects (create, list and watch name none).
const NAMED_VERBS: [&str; 4] = ["get", "update", "patch", "delete"];

/// What is wrong with `grants` for the requests `used`.
#[derive(Debug, Default, PartialEq)]
struct Findings {
    /// Requests no grant covers.
    missing: Vec<String>,
    /// Grants no request used.
    unused: Vec<String>,
    /// Grants wider than their use.
    too_broad: Vec<String>,
}

impl Findings {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unused.is_empty() && self.too_broad.is_empty()
    }
}

fn judge(grants: &[Grant], used: &BTreeSet<Request>) -> Findings {
    let mut findings = Findings::default();
    for request in used {
        if !grants.iter().any(|g| covers(g, request)) {
            findings.missing.push(request.shown());
        }
    }
    for grant in grants {
        if !used.iter().any(|r| covers(grant, r)) {
            findings.unused.push(shown(grant));
            continue;
        }
        // Where and on what the controller touches this resource at all,
        // with any verb: a verb seen in one namespace only is still needed
        // wherever the resource is (Events are patched where Services are).
        let of_resource: Vec<&Request> = used
            .iter()
            .filter(|r| r.group == grant.group && r.resource == grant.resource)
            .collect();
        let homes: BTreeSet<Option<&str>> = of_resource.iter().map(|r| r.home()).collect();
        if grant.namespace.is_none()
            && IN_ONE_NAMESPACE_BY_DESIGN.contains(&(grant.group.as_str(), grant.resource.as_str()))
            && let [Some(only)] = homes.into_iter().collect::<Vec<_>>()[..]
        {
            findings.too_broad.push(format!(
                "{}: used in namespace {only} only, grant it with a Role there",
                shown(grant)
            ));
        }
        let names: BTreeSet<&str> = of_resource
            .iter()
            .filter_map(|r| r.name.as_deref())
            .collect();
        if grant.name.is_none()
            && NAMED_VERBS.contains(&grant.verb.as_str())
            && let [only] = names.into_iter().collect::<Vec<_>>()[..]
        {
            findings.too_broad.push(format!(
                "{}: used on {only} only, limit it with resourceNames: [{only}]",
                shown(grant)
            ));
        }
    }
    findings
}

/// Every grant of the manifest; wildcards are never least privilege.
fn granted() -> Vec<Grant> {
    let grants = grants(&rbac_manifest()).expect("read deploy/rbac.yaml");
    for g in &grants {
        assert!(
            g.group != "*" && g.resource != "*" && g.verb != "*",
            "wildcards are not least privilege: {g:?}"
        );
    }
    grants
}

fn timestamp(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("timestamp {text:?}: {e}"))
        .with_timezone(&Utc)
}

/// `user`'s requests in the audit log (from `PORTICO_AUDIT_SINCE` on), and
/// those refused (403) outside kube-apiserver restarts: while it stops and
/// starts its RBAC caches are gone or not yet filled, so refusals then are
/// not findings.
fn audited(plane: &ControlPlane, user: &str) -> (Vec<AuditEvent>, BTreeSet<String>) {
    let since = std::env::var("PORTICO_AUDIT_SINCE").ok();
    let since = since.as_deref().map(timestamp);
    let events: Vec<AuditEvent> = plane
        .audit_since(0)
        .expect("audit log")
        .into_iter()
        .filter(|e| e.user.username == user)
        .filter(|e| since.is_none_or(|s| timestamp(&e.request_received_timestamp) >= s))
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
    let forbidden: BTreeSet<String> = events
        .iter()
        .filter(|e| e.code() == Some(403) && !restarting(e))
        .map(|e| {
            format!(
                "{} {} at {}",
                e.verb, e.request_uri, e.request_received_timestamp
            )
        })
        .collect();
    (events, forbidden)
}

#[tokio::test]
async fn controller_rbac_is_exactly_what_it_uses() {
    let plane = ControlPlane::connect().await.expect("real control plane");
    let user = ControlPlane::service_account_user(CONTROLLER_NAMESPACE, CONTROLLER_ACCOUNT);
    match std::env::var("PORTICO_AUDIT_SINCE") {
        Ok(since) => println!("audit log read from {since} (PORTICO_AUDIT_SINCE)"),
        Err(_) => println!(
            "PORTICO_AUDIT_SINCE is not set: reading the whole audit log, earlier runs included"
        ),
    }
    let (events, forbidden) = audited(&plane, &user);
    assert!(
        events.len() > 50,
        "the controller made only {} requests: run the real-cluster scenarios first",
        events.len()
    );
    assert!(
        forbidden.is_empty(),
        "the controller was refused (403): {forbidden:#?}"
    );

    let used: BTreeSet<Request> = events.iter().filter_map(Request::from_audit).collect();
    println!("controller requests in the audit log: {}", events.len());
    let permissions: BTreeSet<(&str, &str, &str)> = used
        .iter()
        .map(|r| (r.group.as_str(), r.resource.as_str(), r.verb.as_str()))
        .collect();
    println!("permissions used:");
    for (group, resource, verb) in permissions {
        let homes: BTreeSet<&str> = used
            .iter()
            .filter(|r| r.group == group && r.resource == resource && r.verb == verb)
            .map(|r| r.home().unwrap_or("(cluster)"))
            .collect();
        println!(
            "  {group:>20} {resource:<18} {verb:<7} {} namespace(s)",
            homes.len()
        );
    }
    let findings = judge(&granted(), &used);
    assert!(
        findings.is_empty(),
        "deploy/rbac.yaml and the controller's requests disagree: {findings:#?}"
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
    for g in &granted {
        assert!(
            g.group != "*" && g.resource != "*" && g.verb != "*",
            "wildcards are not least privilege: {g:?}"
        );
    }
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
        let (events, forbidden) = audited(&plane, &user);
        assert!(
            events.len() > 10,
            "{user} made only {} requests: run tests/chart_real.rs first",
            events.len()
        );
        assert!(
            forbidden.is_empty(),
            "{user} was refused (403): {forbidden:#?}"
        );
        let used: BTreeSet<Request> = events.iter().filter_map(Request::from_audit).collect();
        let findings = judge(&granted, &used);
        assert!(
            findings.missing.is_empty(),
            "{user} used what the chart does not grant it: {:#?}",
            findings.missing
        );
        // The chart's scenarios are short, so not every grant is used here;
        // deploy/rbac.yaml (the same rules) is held to that above.
        println!(
            "{user}: granted but not used in tests/chart_real.rs: {:?}",
            findings.unused
        );
    }
}

#[test]
fn judge_table() {
    let grant =
        |group: &str, resource: &str, verb: &str, ns: Option<&str>, name: Option<&str>| Grant {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
        };
    let request =
        |group: &str, resource: &str, verb: &str, ns: Option<&str>, name: Option<&str>| Request {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
        };
    let kube_system_get = request(
        "",
        "namespaces",
        "get",
        Some("kube-system"),
        Some("kube-system"),
    );
    let lease = |verb: &str, ns: &str| {
        request(
            "coordination.k8s.io",
            "leases",
            verb,
            Some(ns),
            Some("portico-controller"),
        )
    };
    let event = |verb: &str, ns: &str, name: &str| {
        request("events.k8s.io", "events", verb, Some(ns), Some(name))
    };
    // (description, grants, requests, (missing, unused, too broad) counts)
    let cases = [
        (
            "namespaces get limited to kube-system, used on it",
            vec![grant("", "namespaces", "get", None, Some("kube-system"))],
            vec![kube_system_get.clone()],
            (0, 0, 0),
        ),
        (
            "namespaces get for any name, used on kube-system only",
            vec![grant("", "namespaces", "get", None, None)],
            vec![kube_system_get.clone()],
            (0, 0, 1),
        ),
        (
            "resourceNames naming another object: refused and unused",
            vec![grant("", "namespaces", "get", None, Some("default"))],
            vec![kube_system_get],
            (1, 1, 0),
        ),
        (
            "a Role where the Lease is",
            vec![
                grant(
                    "coordination.k8s.io",
                    "leases",
                    "create",
                    Some("kube-system"),
                    None,
                ),
                grant(
                    "coordination.k8s.io",
                    "leases",
                    "get",
                    Some("kube-system"),
                    Some("portico-controller"),
                ),
            ],
            vec![lease("create", "kube-system"), lease("get", "kube-system")],
            (0, 0, 0),
        ),
        (
            "a Role in another namespace than the Lease",
            vec![grant(
                "coordination.k8s.io",
                "leases",
                "create",
                Some("portico-system"),
                None,
            )],
            vec![lease("create", "kube-system")],
            (1, 1, 0),
        ),
        (
            "a ClusterRole for a Lease in one namespace",
            vec![grant("coordination.k8s.io", "leases", "create", None, None)],
            vec![lease("create", "kube-system")],
            (0, 0, 1),
        ),
        (
            "Events patched in one namespace, created in two: cluster-wide is needed",
            vec![
                grant("events.k8s.io", "events", "create", None, None),
                grant("events.k8s.io", "events", "patch", None, None),
            ],
            vec![
                event("create", "default", "web.1"),
                event("create", "apps", "api.1"),
                event("patch", "default", "web.1"),
            ],
            (0, 0, 0),
        ),
        (
            "Service status patched in one namespace: cluster-wide by design",
            vec![grant("", "services/status", "patch", None, None)],
            vec![
                request("", "services/status", "patch", Some("default"), Some("web")),
                request("", "services/status", "patch", Some("default"), Some("api")),
            ],
            (0, 0, 0),
        ),
        (
            "a grant nothing used",
            vec![grant("", "services", "delete", None, None)],
            vec![],
            (0, 1, 0),
        ),
        (
            "cluster-wide lists are cluster-wide",
            vec![grant("", "services", "list", None, None)],
            vec![request("", "services", "list", None, None)],
            (0, 0, 0),
        ),
    ];
    for (desc, grants, requests, want) in cases {
        let used: BTreeSet<Request> = requests.into_iter().collect();
        let f = judge(&grants, &used);
        assert_eq!(
            (f.missing.len(), f.unused.len(), f.too_broad.len()),
            want,
            "{desc}: {f:#?}"
        );
    }
}
