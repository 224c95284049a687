//! Least privilege, proven from the real control plane's audit log: after
//! every real-cluster scenario ran as the controller's ServiceAccount, the
//! requests that account made are compared with what `deploy/rbac.yaml`
//! grants. Any 403 fails, and so does any granted rule never used.
//!
//! Runs after the other real-cluster tests (`scripts/test.sh` runs it on its
//! own; the default nextest filter leaves it out).

mod common;

use std::collections::BTreeSet;

use common::rbac_manifest;
use kube_standin::control_plane::{
    AuditEvent, CONTROLLER_ACCOUNT, CONTROLLER_NAMESPACE, ControlPlane, grants,
};

/// (API group, resource or resource/subresource, verb).
type Permission = (String, String, String);

/// Every (group, resource, verb) the roles in the manifest grant.
fn granted() -> BTreeSet<Permission> {
    grants(&rbac_manifest())
        .expect("read deploy/rbac.yaml")
        .into_iter()
        .map(|g| {
            assert!(
                g.group != "*" && g.resource != "*" && g.verb != "*",
                "wildcards are not least privilege: {g:?}"
            );
            (g.group, g.resource, g.verb)
        })
        .collect()
}

fn permission(event: &AuditEvent) -> Option<Permission> {
    let object = event.object_ref.as_ref()?;
    Some((
        object.api_group.clone().unwrap_or_default(),
        event.resource(),
        event.verb.clone(),
    ))
}

#[tokio::test]
async fn controller_rbac_is_exactly_what_it_uses() {
    let plane = ControlPlane::connect().await.expect("real control plane");
    let user = ControlPlane::service_account_user(CONTROLLER_NAMESPACE, CONTROLLER_ACCOUNT);
    let events: Vec<AuditEvent> = plane
        .audit_since(0)
        .expect("audit log")
        .into_iter()
        .filter(|e| e.user.username == user)
        .collect();
    assert!(
        events.len() > 50,
        "the controller made only {} requests: run the real-cluster scenarios first",
        events.len()
    );

    // kube-apiserver refuses some requests while it stops and starts (its
    // RBAC caches are gone or not yet filled): those are not findings.
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
        "403s while kube-apiserver restarted ({} restarts): {during_restarts}",
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
    assert!(
        forbidden.is_empty(),
        "the controller was refused (403): {forbidden:#?}"
    );

    let used: BTreeSet<Permission> = events.iter().filter_map(permission).collect();
    let granted = granted();
    let missing: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    println!("controller requests in the audit log: {}", events.len());
    println!("permissions used:");
    for (group, resource, verb) in &used {
        println!("  {group:>20} {resource:<18} {verb}");
    }
    assert!(
        missing.is_empty(),
        "used but not granted by deploy/rbac.yaml: {missing:?}"
    );
    assert!(
        unused.is_empty(),
        "granted by deploy/rbac.yaml but never used by any scenario: {unused:?}"
    );
}
