//! The stand-in's API through a real kube::Client, on both servers: each
//! probe runs on the stand-in and on the real kube-apiserver and the two
//! records must be equal (`common::both`). What only the stand-in can be
//! asked — cutting every watch, the request record, its fixed allocation
//! ranges — is in `standin_only.rs` (see the crate docs, "Known
//! differences").
//!
//! Longer than most files: eleven short probes, one per area of the API,
//! read best side by side as one suite.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::both::{Target, outcome, same_on_both};
use common::{lb_service, rv};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::runtime::{conditions, wait::await_condition, watcher};
use serde_json::json;

fn names<K: kube::Resource>(items: impl IntoIterator<Item = K>) -> Vec<String> {
    items
        .into_iter()
        .filter_map(|o| o.meta().name.clone())
        .collect()
}

fn node_ports(svc: &Service) -> Vec<Option<i32>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().map(|p| p.node_port).collect())
        .unwrap_or_default()
}

fn ingress_ips(svc: &Service) -> Vec<Option<String>> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

async fn service_crud(t: Target) -> Vec<String> {
    let svcs = t.services();
    let pp = PostParams::default();
    let mut seen = Vec::new();
    let created = svcs
        .create(&pp, &lb_service("web", &[80, 443]))
        .await
        .expect("create");
    let spec = created.spec.clone().expect("spec");
    let ports = node_ports(&created);
    seen.push(format!(
        "namespace from the URL: {}, uid and creationTimestamp set: {}, generation {:?}",
        created.metadata.namespace.as_deref() == Some(t.ns.as_str()),
        created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some(),
        created.metadata.generation,
    ));
    seen.push(format!(
        "clusterIP in 10.96/16: {}, externalTrafficPolicy {:?}, every port has its own nodePort: {}",
        spec.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.96.")),
        spec.external_traffic_policy,
        ports.iter().all(Option::is_some) && ports[0] != ports[1],
    ));
    seen.push(format!(
        "create it again: {}",
        outcome(svcs.create(&pp, &lb_service("web", &[80])).await)
    ));
    let got = svcs.get("web").await.expect("get");
    let listed = svcs.list(&ListParams::default()).await.expect("list");
    seen.push(format!(
        "get finds the same uid: {}, list {:?}",
        got.metadata.uid == created.metadata.uid,
        names(listed.items)
    ));
    // A replace keeps the allocations and ignores status.
    let mut upd = got.clone();
    upd.spec.as_mut().expect("spec").session_affinity = Some("ClientIP".into());
    upd.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}))
            .expect("status"),
    );
    let replaced = svcs.replace("web", &pp, &upd).await.expect("replace");
    seen.push(format!(
        "replace: sessionAffinity {:?}, nodePorts kept {}, status ignored {}, generation {:?}, resourceVersion grew {}",
        replaced.spec.as_ref().and_then(|s| s.session_affinity.clone()),
        node_ports(&replaced) == ports,
        ingress_ips(&replaced).is_empty(),
        replaced.metadata.generation,
        rv(&replaced.metadata) > rv(&got.metadata),
    ));
    seen.push(format!(
        "replace with a stale resourceVersion: {}",
        outcome(svcs.replace("web", &pp, &upd).await)
    ));
    seen.push(format!(
        "port 0: {}",
        outcome(svcs.create(&pp, &lb_service("bad", &[0])).await)
    ));
    seen.push(format!(
        "delete: {}",
        outcome(svcs.delete("web", &DeleteParams::default()).await)
    ));
    seen.push(format!(
        "get after delete: {}",
        outcome(svcs.get("web").await)
    ));
    seen
}

async fn status_writes(t: Target) -> Vec<String> {
    let svcs = t.services();
    let created = svcs
        .create(&PostParams::default(), &lb_service("web", &[80]))
        .await
        .expect("create");
    let mut seen = Vec::new();
    let patch = json!({
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
        "spec": {"sessionAffinity": "ClientIP"}
    });
    let patched = svcs
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("status patch");
    seen.push(format!(
        "status patch: ingress {:?}, spec ignored (sessionAffinity {:?}), generation kept {}",
        ingress_ips(&patched),
        patched
            .spec
            .as_ref()
            .and_then(|s| s.session_affinity.clone()),
        patched.metadata.generation == created.metadata.generation,
    ));
    let again = svcs
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("status patch");
    seen.push(format!(
        "the same status again keeps the resourceVersion: {}",
        again.metadata.resource_version == patched.metadata.resource_version
    ));
    let mut cleared = again.clone();
    cleared.status = Some(serde_json::from_value(json!({"loadBalancer": {}})).expect("status"));
    let replaced = svcs
        .replace_status("web", &PostParams::default(), &cleared)
        .await
        .expect("replace status");
    seen.push(format!(
        "replace_status clears the ingress: {}",
        ingress_ips(&replaced).is_empty()
    ));
    seen
}

async fn merge_strategic_and_apply(t: Target) -> Vec<String> {
    let svcs = t.services();
    let before = svcs
        .create(&PostParams::default(), &lb_service("web", &[80, 443]))
        .await
        .expect("create");
    let mut seen = Vec::new();
    // A merge patch: null deletes.
    let m = json!({"metadata": {"labels": {"tier": "fe", "app": null}}});
    let out = svcs
        .patch("web", &PatchParams::default(), &Patch::Merge(&m))
        .await
        .expect("merge");
    seen.push(format!(
        "merge patch labels {:?}",
        out.metadata.labels.unwrap_or_default()
    ));
    // A strategic merge patch merges ports element-wise.
    let s = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
    let out = svcs
        .patch("web", &PatchParams::default(), &Patch::Strategic(&s))
        .await
        .expect("strategic");
    let ports = out
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    seen.push(format!(
        "strategic patch ports {:?}, nodePorts kept {}",
        ports
            .iter()
            .map(|p| (p.port, p.name.clone()))
            .collect::<Vec<_>>(),
        node_ports(&out) == node_ports(&before),
    ));

    // Server-side apply: creates, then manages its fields.
    let cms: Api<ConfigMap> = t.api();
    let data = |cm: ConfigMap| {
        cm.data
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>()
    };
    let config = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": data});
    let tester = PatchParams::apply("tester");
    let created = cms
        .patch("cfg", &tester, &Patch::Apply(&config(json!({"a": "1"}))))
        .await
        .expect("apply creates");
    seen.push(format!("apply creates {:?}", data(created)));
    let merged = cms
        .patch("cfg", &tester, &Patch::Apply(&config(json!({"b": "2"}))))
        .await
        .expect("apply updates");
    seen.push(format!(
        "a field the manager stops applying goes: {:?}",
        data(merged)
    ));
    let other = config(json!({"b": "3"}));
    seen.push(format!(
        "another manager changing it: {}",
        outcome(
            cms.patch("cfg", &PatchParams::apply("other"), &Patch::Apply(&other))
                .await
        )
    ));
    let forced = cms
        .patch(
            "cfg",
            &PatchParams::apply("other").force(),
            &Patch::Apply(&other),
        )
        .await
        .expect("forced");
    seen.push(format!("forced {:?}", data(forced)));
    seen
}

async fn noop_writes(t: Target) -> Vec<String> {
    let svcs = t.services();
    let created = svcs
        .create(&PostParams::default(), &lb_service("web", &[80]))
        .await
        .expect("create");
    let start = created.metadata.resource_version.clone().expect("rv");
    let mut stream = svcs
        .watch(&WatchParams::default(), &start)
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    let same = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"type": "LoadBalancer"}});
    for (what, patch) in [
        ("merge", Patch::Merge(same.clone())),
        ("strategic", Patch::Strategic(same.clone())),
    ] {
        let out = svcs
            .patch("web", &PatchParams::default(), &patch)
            .await
            .expect("patch");
        seen.push(format!(
            "{what} patch that changes nothing keeps the resourceVersion: {}",
            out.metadata.resource_version.as_deref() == Some(start.as_str())
        ));
    }
    let out = svcs
        .replace("web", &PostParams::default(), &created)
        .await
        .expect("replace");
    seen.push(format!(
        "replace that changes nothing keeps the resourceVersion: {}",
        out.metadata.resource_version.as_deref() == Some(start.as_str())
    ));
    let change = json!({"metadata": {"labels": {"x": "y"}}});
    svcs.patch("web", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("patch");
    let first = match stream.try_next().await.expect("event") {
        Some(WatchEvent::Modified(s)) => format!(
            "MODIFIED x={:?}",
            s.metadata.labels.unwrap_or_default().get("x")
        ),
        other => format!("{other:?}"),
    };
    seen.push(format!("first watch event: {first}"));
    seen
}

async fn pagination(t: Target) -> Vec<String> {
    let cms: Api<ConfigMap> = t.api();
    for i in 0..12 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm-{i:02}")}}))
                .expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let mut lp = ListParams::default().limit(5);
    let mut pages = Vec::new();
    loop {
        let page = cms.list(&lp).await.expect("list");
        pages.push(names(page.items).join(" "));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    pages
}

async fn watch_replay(t: Target) -> Vec<String> {
    let svcs = t.services();
    let a = svcs
        .create(&PostParams::default(), &lb_service("a", &[80]))
        .await
        .expect("create");
    let from = a.metadata.resource_version.clone().expect("rv");
    svcs.create(&PostParams::default(), &lb_service("b", &[80]))
        .await
        .expect("create");
    let label = json!({"metadata": {"labels": {"v": "2"}}});
    svcs.patch("a", &PatchParams::default(), &Patch::Merge(label))
        .await
        .expect("patch");
    svcs.delete("b", &DeleteParams::default())
        .await
        .expect("delete");
    let mut stream = svcs
        .watch(&WatchParams::default(), &from)
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match stream.try_next().await.expect("event") {
            Some(WatchEvent::Added(s)) => format!("ADDED {}", s.metadata.name.unwrap_or_default()),
            Some(WatchEvent::Modified(s)) => {
                format!("MODIFIED {}", s.metadata.name.unwrap_or_default())
            }
            Some(WatchEvent::Deleted(s)) => {
                format!("DELETED {}", s.metadata.name.unwrap_or_default())
            }
            other => format!("{other:?}"),
        });
    }
    seen
}

async fn selectors(t: Target) -> Vec<String> {
    let svcs = t.services();
    for (name, tier) in [("a", "fe"), ("b", "be"), ("c", "fe")] {
        let mut s = lb_service(name, &[80]);
        s.metadata
            .labels
            .get_or_insert_default()
            .insert("tier".into(), tier.into());
        svcs.create(&PostParams::default(), &s)
            .await
            .expect("create");
    }
    let mut seen = Vec::new();
    for selector in [
        "tier=fe",
        "tier!=fe",
        "app in (a,b)",
        "app notin (a,b)",
        "tier",
        "!tier",
    ] {
        let got = svcs.list(&ListParams::default().labels(selector)).await;
        seen.push(format!(
            "{selector}: {:?}",
            got.map(|l| names(l.items))
                .map_err(|e| outcome::<()>(Err(e)))
        ));
    }
    let got = svcs
        .list(&ListParams::default().fields("metadata.name=b"))
        .await;
    seen.push(format!(
        "metadata.name=b: {:?}",
        got.map(|l| names(l.items))
            .map_err(|e| outcome::<()>(Err(e)))
    ));
    seen
}

async fn nodes_and_leases(t: Target) -> Vec<String> {
    let nodes: Api<Node> = Api::all(t.client.clone());
    let name = format!("{}-node", t.ns);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"probe": t.ns}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("node");
    let mut seen = Vec::new();
    let created = nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let addresses = created
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.address)
        .collect::<Vec<_>>();
    seen.push(format!("node created with its status: {addresses:?}"));
    let listed = nodes
        .list(&ListParams::default().labels(&format!("probe={}", t.ns)))
        .await
        .expect("list");
    seen.push(format!("nodes listed: {}", listed.items.len()));
    seen.push(format!(
        "delete node: {}",
        outcome(nodes.delete(&name, &DeleteParams::default()).await)
    ));

    let leases: Api<Lease> = t.api();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "portico"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .expect("lease");
    let first = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    let mut second = first.clone();
    second.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    seen.push(format!(
        "update: {}",
        outcome(
            leases
                .replace("portico", &PostParams::default(), &second)
                .await
        )
    ));
    let mut late = first.clone();
    late.spec.as_mut().expect("spec").holder_identity = Some("c".into());
    seen.push(format!(
        "a second writer with the old resourceVersion: {}",
        outcome(
            leases
                .replace("portico", &PostParams::default(), &late)
                .await
        )
    ));
    let missing: Api<Lease> = Api::namespaced(t.client.clone(), &format!("{}-missing", t.ns));
    seen.push(format!(
        "in a namespace that does not exist: {}",
        outcome(missing.create(&PostParams::default(), &lease).await)
    ));
    seen
}

async fn streaming_list(t: Target) -> Vec<String> {
    let svcs = t.services();
    svcs.create(&PostParams::default(), &lb_service("a", &[80]))
        .await
        .expect("create");
    let cfg = watcher::Config::default().streaming_lists();
    let mut stream = watcher(svcs, cfg).boxed();
    let initial = async {
        let mut events = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(watcher::Event::InitApply(s))) => {
                    events.push(s.metadata.name.unwrap_or_default())
                }
                Ok(Some(watcher::Event::InitDone)) => {
                    break format!("initial events {events:?}, then InitDone");
                }
                Ok(Some(_)) => {}
                Ok(None) => break "stream ended".into(),
                Err(e) => break format!("error {e}"),
            }
        }
    };
    let seen = tokio::time::timeout(Duration::from_secs(10), initial)
        .await
        .unwrap_or_else(|_| "no InitDone within 10 s".into());
    vec![seen]
}

async fn discovery(t: Target) -> Vec<String> {
    let c = t.client.clone();
    let mut seen = Vec::new();
    let version = c.apiserver_version().await.expect("version");
    seen.push(format!("major version {}", version.major));
    let groups = c.list_api_groups().await.expect("groups");
    seen.push(format!(
        "groups include coordination.k8s.io: {}",
        groups
            .groups
            .iter()
            .any(|g| g.name == "coordination.k8s.io")
    ));
    let core = c.list_core_api_resources("v1").await.expect("core");
    let services = core.resources.iter().find(|r| r.name == "services");
    seen.push(format!(
        "services: short names {:?}, namespaced {:?}, status subresource {}",
        services.and_then(|s| s.short_names.clone()),
        services.map(|s| s.namespaced),
        core.resources.iter().any(|r| r.name == "services/status"),
    ));
    let discovery = kube::discovery::Discovery::new(c.clone())
        .run()
        .await
        .expect("discovery");
    seen.push(format!(
        "kube discovery finds discovery.k8s.io: {}",
        discovery.has_group("discovery.k8s.io")
    ));

    // A Table, as kubectl asks for it.
    t.services()
        .create(&PostParams::default(), &lb_service("web", &[80]))
        .await
        .expect("create");
    let req = http::Request::get(format!("/api/v1/namespaces/{}/services?limit=500", t.ns))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .expect("request");
    let table: serde_json::Value = c.request(req).await.expect("table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let cells = &table["rows"][0]["cells"];
    let port = cells[4].as_str().unwrap_or_default();
    seen.push(format!(
        "{} {columns:?}: name {}, external IP {}, ports 80:<nodePort>/TCP {}",
        table["kind"],
        cells[0],
        cells[3],
        port.starts_with("80:") && port.ends_with("/TCP"),
    ));
    seen
}

async fn custom_resources(t: Target) -> Vec<String> {
    // A group of its own: CRDs are cluster-wide and outlive the probe on
    // the real server until it is deleted at the end.
    let group = format!("{}.example.com", t.ns);
    let crd_name = format!("ippools.{group}");
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {"group": group, "scope": "Cluster",
            "names": {"plural": "ippools", "singular": "ippool", "kind": "IPPool", "shortNames": ["ipp"]},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "addresses": {"type": "array", "items": {"type": "string"}}}},
                    "status": {"type": "object", "properties": {
                        "allocated": {"type": "integer"}}}}}},
                "subresources": {"status": {}}}]}
    });
    let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());
    let mut seen = Vec::new();
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(crd).expect("crd"),
    )
    .await
    .expect("create crd");
    let established = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(crds.clone(), &crd_name, conditions::is_crd_established()),
    )
    .await;
    seen.push(format!(
        "established: {}",
        matches!(established, Ok(Ok(Some(_))))
    ));
    let resource = ApiResource {
        group: group.clone(),
        version: "v1alpha1".into(),
        api_version: format!("{group}/v1alpha1"),
        kind: "IPPool".into(),
        plural: "ippools".into(),
    };
    let pools: Api<DynamicObject> = Api::all_with(t.client.clone(), &resource);
    let pool: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1alpha1"), "kind": "IPPool",
        "metadata": {"name": "default"}, "spec": {"addresses": ["192.0.2.0/28"]}
    }))
    .expect("pool");
    seen.push(format!(
        "create a custom resource: {}",
        outcome(pools.create(&PostParams::default(), &pool).await)
    ));
    let got = pools.get("default").await.expect("get pool");
    seen.push(format!("spec {}", got.data["spec"]));
    let status = json!({"status": {"allocated": 1}});
    let out = pools
        .patch_status("default", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    seen.push(format!("status {}", out.data["status"]));
    seen.push(format!(
        "delete the CRD: {}",
        outcome(crds.delete(&crd_name, &DeleteParams::default()).await)
    ));
    seen
}

#[tokio::test]
async fn service_crud_and_defaults() {
    same_on_both("crud", |t| Box::pin(service_crud(t))).await;
}

#[tokio::test]
async fn status_subresource() {
    same_on_both("status", |t| Box::pin(status_writes(t))).await;
}

#[tokio::test]
async fn merge_strategic_and_apply_patches() {
    same_on_both("patches", |t| Box::pin(merge_strategic_and_apply(t))).await;
}

#[tokio::test]
async fn noop_writes_keep_the_resource_version_and_emit_no_event() {
    same_on_both("noop", |t| Box::pin(noop_writes(t))).await;
}

#[tokio::test]
async fn list_pagination() {
    same_on_both("pages", |t| Box::pin(pagination(t))).await;
}

#[tokio::test]
async fn watch_replays_in_order() {
    same_on_both("replay", |t| Box::pin(watch_replay(t))).await;
}

#[tokio::test]
async fn label_and_field_selectors() {
    same_on_both("selectors", |t| Box::pin(selectors(t))).await;
}

#[tokio::test]
async fn nodes_leases_and_lease_conflicts() {
    same_on_both("nodes", |t| Box::pin(nodes_and_leases(t))).await;
}

#[tokio::test]
async fn streaming_list_initial_events() {
    same_on_both("streaming", |t| Box::pin(streaming_list(t))).await;
}

#[tokio::test]
async fn discovery_and_tables() {
    same_on_both("discovery", |t| Box::pin(discovery(t))).await;
}

#[tokio::test]
async fn custom_resources_from_crds() {
    same_on_both("crds", |t| Box::pin(custom_resources(t))).await;
}
