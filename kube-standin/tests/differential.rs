//! The stand-in kept honest: each probe sends the same requests to the
//! stand-in and to the real kube-apiserver (`scripts/control-plane.sh`) and
//! records what it observes — status codes, reasons, the field an error
//! names, defaulted values. The two records must be equal. Differences that
//! are left on purpose are listed in the crate docs ("Known differences")
//! and are not probed here.
//!
//! Longer than most files: one probe per behaviour portico depends on, each
//! short; they read best side by side.

mod common;

use common::both::{Target, outcome, same_on_both};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn service(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("service")
}

fn lb(name: &str, ports: Value) -> Service {
    service(name, json!({"type": "LoadBalancer", "ports": ports}))
}

async fn service_defaults(t: Target) -> Vec<String> {
    let svcs = t.services();
    let created = svcs
        .create(
            &PostParams::default(),
            &lb(
                "web",
                json!([
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    {"name": "dns-udp", "port": 53, "protocol": "UDP"},
                    {"name": "http", "port": 80}
                ]),
            ),
        )
        .await
        .expect("create");
    let spec = created.spec.clone().expect("spec");
    let ports = spec.ports.clone().unwrap_or_default();
    let mut seen = vec![
        format!("type {:?}", spec.type_),
        format!("sessionAffinity {:?}", spec.session_affinity),
        format!("externalTrafficPolicy {:?}", spec.external_traffic_policy),
        format!("internalTrafficPolicy {:?}", spec.internal_traffic_policy),
        format!("ipFamilies {:?}", spec.ip_families),
        format!("ipFamilyPolicy {:?}", spec.ip_family_policy),
        format!(
            "allocateLoadBalancerNodePorts {:?}",
            spec.allocate_load_balancer_node_ports
        ),
        format!(
            "ports {:?}",
            ports
                .iter()
                .map(|p| (p.protocol.clone(), p.target_port.clone()))
                .collect::<Vec<_>>()
        ),
        format!(
            "TCP and UDP 53 share a nodePort: {}",
            ports[0].node_port == ports[1].node_port
        ),
        format!(
            "80 has its own nodePort: {}",
            ports[2].node_port != ports[0].node_port
        ),
        format!("generation {:?}", created.metadata.generation),
        format!(
            "status {}",
            serde_json::to_string(&created.status).unwrap_or_default()
        ),
    ];
    // Strategic merge of spec.ports merges by port number.
    let patch = json!({"spec": {"ports": [{"port": 80, "name": "web"}]}});
    let out = svcs
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("strategic patch");
    let names: Vec<_> = out
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.port, p.protocol))
        .collect();
    seen.push(format!("after strategic merge {names:?}"));
    seen.push(outcome(
        svcs.create(&PostParams::default(), &lb("bad", json!([{"port": 0}])))
            .await,
    ));
    let mut ranges = lb("ranges", json!([{"port": 80}]));
    ranges
        .spec
        .as_mut()
        .expect("spec")
        .load_balancer_source_ranges = Some(vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()]);
    seen.push(format!(
        "bad source range: {}",
        outcome(svcs.create(&PostParams::default(), &ranges).await)
    ));
    let mut annotated = lb("annotated", json!([{"port": 80}]));
    annotated.metadata.annotations = Some(
        [(
            "service.beta.kubernetes.io/load-balancer-source-ranges".to_string(),
            "10.0.0.0/8,10.0.0.0/33".to_string(),
        )]
        .into(),
    );
    seen.push(format!(
        "bad source-range annotation: {}",
        outcome(svcs.create(&PostParams::default(), &annotated).await)
    ));
    let cluster_ip = service(
        "internal",
        json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30999}]}),
    );
    seen.push(format!(
        "ClusterIP with a nodePort: {}",
        outcome(svcs.create(&PostParams::default(), &cluster_ip).await)
    ));
    seen
}

/// The ports of a Service as (port, protocol, targetPort, name).
fn port_list(svc: &Service) -> String {
    let ports: Vec<_> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            format!(
                "{}/{} -> {:?} {:?}",
                p.port,
                p.protocol.unwrap_or_default(),
                p.target_port,
                p.name
            )
        })
        .collect();
    ports.join(", ")
}

/// Strategic merge of `spec.ports` keys on the port alone (upstream's
/// `patchMergeKey: port`), not on port and protocol.
async fn ports_merge_key(t: Target) -> Vec<String> {
    let svcs = t.services();
    svcs.create(
        &PostParams::default(),
        &lb(
            "dns",
            json!([
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"}
            ]),
        ),
    )
    .await
    .expect("create");
    svcs.create(
        &PostParams::default(),
        &lb(
            "mixed",
            json!([
                {"name": "dns", "port": 53, "protocol": "TCP"},
                {"name": "http", "port": 80, "protocol": "TCP"}
            ]),
        ),
    )
    .await
    .expect("create");
    let mut seen = Vec::new();
    let patch = |ports: Value| json!({"spec": {"ports": ports}});
    for (what, name, ports) in [
        (
            "53/UDP onto TCP and UDP 53",
            "dns",
            json!([{"port": 53, "protocol": "UDP", "name": "dns"}]),
        ),
        (
            "53/UDP with a targetPort onto TCP and UDP 53",
            "dns",
            json!([{"port": 53, "protocol": "UDP", "name": "dns-udp", "targetPort": 5353}]),
        ),
        (
            "53/TCP with a targetPort onto TCP and UDP 53",
            "dns",
            json!([{"port": 53, "protocol": "TCP", "targetPort": 5353}]),
        ),
        (
            "53/UDP onto 53/TCP and 80/TCP",
            "mixed",
            json!([{"port": 53, "protocol": "UDP", "targetPort": 5353}]),
        ),
    ] {
        let result = svcs
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Strategic(&patch(ports)),
            )
            .await;
        let shown = match &result {
            Ok(svc) => port_list(svc),
            Err(_) => String::new(),
        };
        seen.push(format!("{what}: {} {shown}", outcome(result)));
    }
    seen
}

async fn status_writes(t: Target) -> Vec<String> {
    let svcs = t.services();
    svcs.create(&PostParams::default(), &lb("web", json!([{"port": 80}])))
        .await
        .expect("create");
    svcs.create(
        &PostParams::default(),
        &service("internal", json!({"ports": [{"port": 80}]})),
    )
    .await
    .expect("create");
    let status = |ingress: Value| json!({"status": {"loadBalancer": {"ingress": ingress}}});
    let mut seen = Vec::new();
    let written = svcs
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&status(json!([{"ip": "203.0.113.7"}]))),
        )
        .await
        .expect("status");
    seen.push(format!(
        "ip without ipMode defaults to {:?}",
        written
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.first().and_then(|i| i.ip_mode.clone()))
    ));
    // The same status again changes nothing.
    let before = svcs.get("web").await.expect("get");
    let again = svcs
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&status(json!([{"ip": "203.0.113.7", "ipMode": "VIP"}]))),
        )
        .await
        .expect("status");
    seen.push(format!(
        "rewriting the defaulted status keeps the resourceVersion: {}",
        before.resource_version() == again.resource_version()
    ));
    for (what, ingress) in [
        (
            "ipMode without ip",
            json!([{"hostname": "lb.example.com", "ipMode": "VIP"}]),
        ),
        ("IP in hostname", json!([{"hostname": "203.0.113.8"}])),
        (
            "bad ipMode",
            json!([{"ip": "203.0.113.9", "ipMode": "Tunnel"}]),
        ),
        ("bad ip", json!([{"ip": "not-an-ip"}])),
        ("hostname only", json!([{"hostname": "lb.example.com"}])),
    ] {
        let result = svcs
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(&status(ingress)),
            )
            .await;
        seen.push(format!("{what}: {}", outcome(result)));
    }
    let result = svcs
        .patch_status(
            "internal",
            &PatchParams::default(),
            &Patch::Merge(&status(json!([{"ip": "203.0.113.10"}]))),
        )
        .await;
    seen.push(format!(
        "ingress on a ClusterIP Service: {}",
        outcome(result)
    ));
    seen
}

async fn class_and_type_changes(t: Target) -> Vec<String> {
    let svcs = t.services();
    let mut svc = lb("web", json!([{"port": 80}]));
    svc.spec.as_mut().expect("spec").load_balancer_class = Some("example.com/a".into());
    svcs.create(&PostParams::default(), &svc)
        .await
        .expect("create");
    svcs.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}})),
    )
    .await
    .expect("status");
    let mut seen = Vec::new();
    let change = json!({"spec": {"loadBalancerClass": "example.com/b"}});
    seen.push(format!(
        "class change: {}",
        outcome(
            svcs.patch("web", &PatchParams::default(), &Patch::Merge(&change))
                .await
        )
    ));
    let to_cluster_ip = json!({"spec": {"type": "ClusterIP"}});
    let out = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&to_cluster_ip),
        )
        .await
        .expect("type change");
    let spec = out.spec.clone().expect("spec");
    seen.push(format!(
        "after LoadBalancer -> ClusterIP: class {:?}, nodePort {:?}, status {}",
        spec.load_balancer_class,
        spec.ports.unwrap_or_default()[0].node_port,
        serde_json::to_string(&out.status).unwrap_or_default()
    ));
    seen
}

async fn selectors(t: Target) -> Vec<String> {
    let svcs = t.services();
    svcs.create(&PostParams::default(), &lb("web", json!([{"port": 80}])))
        .await
        .expect("create");
    let mut seen = Vec::new();
    for selector in [
        "metadata.name=web",
        "metadata.namespace!=kube-system",
        "spec.type=LoadBalancer",
        "spec.clusterIP!=None",
        "spec.loadBalancerClass=x",
        "status.phase=Running",
    ] {
        let result = svcs
            .list(&ListParams::default().fields(selector))
            .await
            .map(|l| l.items.len());
        let shown = match &result {
            Ok(n) => format!("ok {n}"),
            Err(_) => String::new(),
        };
        seen.push(format!(
            "fieldSelector {selector}: {} {shown}",
            outcome(result)
        ));
    }
    seen
}

async fn leases(t: Target) -> Vec<String> {
    let api: Api<Lease> = Api::namespaced(t.client.clone(), &t.ns);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "l"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .expect("lease");
    let created = api
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let mut seen = Vec::new();
    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    seen.push(format!(
        "stale resourceVersion: {}",
        outcome(api.replace("l", &PostParams::default(), &stale).await)
    ));
    let mut unconditional = created.clone();
    unconditional.metadata.resource_version = None;
    seen.push(format!(
        "no resourceVersion: {}",
        outcome(
            api.replace("l", &PostParams::default(), &unconditional)
                .await
        )
    ));
    seen.push(format!(
        "current resourceVersion: {}",
        outcome(api.replace("l", &PostParams::default(), &created).await)
    ));
    seen
}

fn event(ns: &str, name: &str, reason: &str, note: &str) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "portico.io/controller",
        "reportingInstance": "portico-0",
        "action": "Ensuring",
        "reason": reason,
        "type": "Normal",
        "note": note,
        "regarding": {"kind": "Service", "name": "web", "namespace": ns, "apiVersion": "v1"}
    }))
    .expect("event")
}

async fn events(t: Target) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(t.client.clone(), &t.ns);
    let mut seen = Vec::new();
    let long_note = "x".repeat(1025);
    let long_reason = "R".repeat(129);
    for (what, e) in [
        ("valid", event(&t.ns, "e1", "EnsuringLoadBalancer", "ok")),
        (
            "note of 1025 bytes",
            event(&t.ns, "e2", "EnsuringLoadBalancer", &long_note),
        ),
        (
            "reason of 129 bytes",
            event(&t.ns, "e3", &long_reason, "ok"),
        ),
    ] {
        seen.push(format!(
            "{what}: {}",
            outcome(api.create(&PostParams::default(), &e).await)
        ));
    }
    let long = "A".repeat(129);
    // What is changed: (description, how, given a 129-byte string).
    type Change = (&'static str, fn(&mut Event, &str));
    let changes: [Change; 10] = [
        ("no reportingController", |e, _| {
            e.reporting_controller = None
        }),
        ("no reportingInstance", |e, _| e.reporting_instance = None),
        ("reportingInstance of 129 bytes", |e, long| {
            e.reporting_instance = Some(long.to_string())
        }),
        ("no action", |e, _| e.action = None),
        ("action of 129 bytes", |e, long| {
            e.action = Some(long.to_string())
        }),
        ("no eventTime", |e, _| e.event_time = None),
        ("no type", |e, _| e.type_ = None),
        ("type Info", |e, _| e.type_ = Some("Info".into())),
        ("no reason", |e, _| e.reason = None),
        ("no note", |e, _| e.note = None),
    ];
    for (i, (what, change)) in changes.into_iter().enumerate() {
        let mut e = event(&t.ns, &format!("m{i}"), "EnsuringLoadBalancer", "ok");
        change(&mut e, &long);
        seen.push(format!(
            "{what}: {}",
            outcome(api.create(&PostParams::default(), &e).await)
        ));
    }
    let mut elsewhere = event(&t.ns, "e5", "EnsuringLoadBalancer", "ok");
    if let Some(regarding) = elsewhere.regarding.as_mut() {
        regarding.namespace = Some("another".into());
    }
    seen.push(format!(
        "about an object of another namespace: {}",
        outcome(api.create(&PostParams::default(), &elsewhere).await)
    ));
    seen
}

async fn finalizers(t: Target) -> Vec<String> {
    let svcs = t.services();
    svcs.create(&PostParams::default(), &lb("web", json!([{"port": 80}])))
        .await
        .expect("create");
    let mut seen = Vec::new();
    let json_patch = |v: Value| -> json_patch::Patch { serde_json::from_value(v).expect("patch") };
    let add = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/cleanup"]}
    ]);
    seen.push(format!(
        "add with test null: {}",
        outcome(
            svcs.patch(
                "web",
                &PatchParams::default(),
                &Patch::<()>::Json(json_patch(add.clone()))
            )
            .await
        )
    ));
    seen.push(format!(
        "the same again: {}",
        outcome(
            svcs.patch(
                "web",
                &PatchParams::default(),
                &Patch::<()>::Json(json_patch(add))
            )
            .await
        )
    ));
    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    let deleting = svcs.get("web").await.expect("still there");
    seen.push(format!(
        "deleting: {}",
        deleting.metadata.deletion_timestamp.is_some()
    ));
    let more = json!({"metadata": {"finalizers": ["example.com/cleanup", "example.com/late"]}});
    seen.push(format!(
        "new finalizer while deleting: {}",
        outcome(
            svcs.patch("web", &PatchParams::default(), &Patch::Merge(&more))
                .await
        )
    ));
    let wrong = json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/other"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]);
    seen.push(format!(
        "remove guarded by a failing test: {}",
        outcome(
            svcs.patch(
                "web",
                &PatchParams::default(),
                &Patch::<()>::Json(json_patch(wrong))
            )
            .await
        )
    ));
    let remove = json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]);
    seen.push(format!(
        "remove: {}",
        outcome(
            svcs.patch(
                "web",
                &PatchParams::default(),
                &Patch::<()>::Json(json_patch(remove))
            )
            .await
        )
    ));
    seen.push(format!(
        "gone: {}",
        svcs.get_opt("web").await.expect("get").is_none()
    ));
    seen
}

#[tokio::test]
async fn service_defaults_and_allocation() {
    same_on_both("defaults", |t| Box::pin(service_defaults(t))).await;
}

#[tokio::test]
async fn service_ports_strategic_merge_key() {
    same_on_both("ports", |t| Box::pin(ports_merge_key(t))).await;
}

#[tokio::test]
async fn service_status_is_defaulted_and_validated() {
    same_on_both("status", |t| Box::pin(status_writes(t))).await;
}

#[tokio::test]
async fn load_balancer_class_and_type_changes() {
    same_on_both("class", |t| Box::pin(class_and_type_changes(t))).await;
}

#[tokio::test]
async fn service_field_selectors() {
    same_on_both("selectors", |t| Box::pin(selectors(t))).await;
}

#[tokio::test]
async fn lease_updates() {
    same_on_both("leases", |t| Box::pin(leases(t))).await;
}

#[tokio::test]
async fn events_are_validated() {
    same_on_both("events", |t| Box::pin(events(t))).await;
}

#[tokio::test]
async fn finalizer_flow() {
    same_on_both("finalizers", |t| Box::pin(finalizers(t))).await;
}
