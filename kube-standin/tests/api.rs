//! The stand-in through a real kube::Client.

mod common;

use std::time::Duration;

use common::{client, lb_service, rv, timed};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::WatchStreamExt;
use kube_standin::ApiServer;
use serde_json::json;

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn service_crud_and_defaults() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
        let created = svcs
            .create(&PostParams::default(), &lb_service("web", &[80, 443]))
            .await
            .expect("create");
        let spec = created.spec.clone().expect("spec");
        assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
        assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
        assert_eq!(
            created.metadata.generation, None,
            "Services carry no generation"
        );
        assert!(
            spec.cluster_ip
                .as_deref()
                .is_some_and(|ip| ip.starts_with("10.96."))
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        let ports = spec.ports.clone().expect("ports");
        assert!(
            ports
                .iter()
                .all(|p| p.node_port.is_some_and(|n| (30000..=32767).contains(&n)))
        );
        assert_ne!(ports[0].node_port, ports[1].node_port);
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));

        // 409 AlreadyExists
        let e = svcs
            .create(&PostParams::default(), &lb_service("web", &[80]))
            .await
            .expect_err("dup");
        assert_eq!(api_err(e), (409, "AlreadyExists".into()));

        // get / list
        let got = svcs.get("web").await.expect("get");
        assert_eq!(got.metadata.uid, created.metadata.uid);
        assert_eq!(
            svcs.list(&ListParams::default())
                .await
                .expect("list")
                .items
                .len(),
            1
        );

        // replace keeps allocations, ignores status
        let mut upd = got.clone();
        upd.spec.as_mut().expect("spec").session_affinity = Some("ClientIP".into());
        upd.status = Some(
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}))
                .expect("status"),
        );
        let replaced = svcs
            .replace("web", &PostParams::default(), &upd)
            .await
            .expect("replace");
        assert_eq!(replaced.metadata.generation, None);
        assert!(rv(&replaced.metadata) > rv(&got.metadata));
        let lb = replaced
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress);
        assert!(lb.is_none(), "status is ignored on the main resource");

        // stale RV → 409 Conflict
        let e = svcs
            .replace("web", &PostParams::default(), &upd)
            .await
            .expect_err("stale");
        assert_eq!(api_err(e), (409, "Conflict".into()));

        // invalid port → 422 naming the field
        let e = svcs
            .create(&PostParams::default(), &lb_service("bad", &[0]))
            .await
            .expect_err("invalid");
        match e {
            kube::Error::Api(s) => {
                assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
                assert!(s.message.contains("spec.ports[0].port"), "{}", s.message);
            }
            other => panic!("{other:?}"),
        }

        // delete → gone → 404
        svcs.delete("web", &DeleteParams::default())
            .await
            .expect("delete");
        let e = svcs.get("web").await.expect_err("gone");
        assert_eq!(api_err(e), (404, "NotFound".into()));
    })
    .await;
}

#[tokio::test]
async fn status_subresource() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
        let created = svcs.create(&PostParams::default(), &lb_service("web", &[80])).await.expect("create");
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}, "spec": {"sessionAffinity": "ClientIP"}});
        let patched = svcs
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("status patch");
        let ip = patched.status.clone().and_then(|s| s.load_balancer).and_then(|l| l.ingress).and_then(|i| i[0].ip.clone());
        assert_eq!(ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(patched.spec.and_then(|s| s.session_affinity).as_deref(), Some("None"), "spec ignored by status writes");
        assert_eq!(patched.metadata.generation, created.metadata.generation);
        // the same status again: no new resourceVersion
        let again = svcs
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("status patch");
        assert_eq!(again.metadata.resource_version, patched.metadata.resource_version);
        // replace_status
        let mut st = again.clone();
        st.status = Some(serde_json::from_value(json!({"loadBalancer": {}})).expect("status"));
        let replaced = svcs
            .replace_status("web", &PostParams::default(), &st)
            .await
            .expect("replace status");
        assert!(replaced.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).is_none());
        let reqs = server.requests();
        assert!(reqs.iter().any(|r| r.verb == "patch" && r.subresource == "status" && r.patch_type.as_deref() == Some("merge")));
        assert!(reqs.iter().any(|r| r.verb == "update" && r.resource_path() == "services/status"));
    })
    .await;
}

#[tokio::test]
async fn finalizer_flow_with_json_patch() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
        svcs.create(&PostParams::default(), &lb_service("web", &[80]))
            .await
            .expect("create");
        // kube-runtime's finalizer helper: test null on the absent list, then add
        let add = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/cleanup"]}
        ]);
        let p: json_patch::Patch = serde_json::from_value(add.clone()).expect("patch");
        let with = svcs
            .patch("web", &PatchParams::default(), &Patch::<()>::Json(p))
            .await
            .expect("add finalizer");
        assert_eq!(
            with.metadata.finalizers,
            Some(vec!["example.com/cleanup".to_string()])
        );
        // the same patch again fails the test op
        let p: json_patch::Patch = serde_json::from_value(add).expect("patch");
        let e = svcs
            .patch("web", &PatchParams::default(), &Patch::<()>::Json(p))
            .await
            .expect_err("test fails");
        assert!(matches!(e, kube::Error::Api(_)));

        // delete keeps it with a deletionTimestamp
        svcs.delete("web", &DeleteParams::default())
            .await
            .expect("delete");
        let deleting = svcs.get("web").await.expect("still there");
        assert!(deleting.metadata.deletion_timestamp.is_some());
        // removing the finalizer (test on index 0) deletes it
        let remove = json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ]);
        let p: json_patch::Patch = serde_json::from_value(remove).expect("patch");
        svcs.patch("web", &PatchParams::default(), &Patch::<()>::Json(p))
            .await
            .expect("remove finalizer");
        assert!(svcs.get_opt("web").await.expect("get").is_none());
    })
    .await;
}

#[tokio::test]
async fn merge_strategic_and_apply_patches() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
        svcs.create(&PostParams::default(), &lb_service("web", &[80, 443])).await.expect("create");
        let before = svcs.get("web").await.expect("get");
        let np80 = before.spec.as_ref().and_then(|s| s.ports.as_ref()).map(|p| p[0].node_port);

        // merge patch replaces lists; null deletes
        let m = json!({"metadata": {"labels": {"tier": "fe", "app": null}}});
        let out = svcs.patch("web", &PatchParams::default(), &Patch::Merge(&m)).await.expect("merge");
        let labels = out.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("tier").map(String::as_str), Some("fe"));
        assert!(!labels.contains_key("app"));

        // strategic merge merges ports by port
        let s = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let out = svcs.patch("web", &PatchParams::default(), &Patch::Strategic(&s)).await.expect("strategic");
        let ports = out.spec.and_then(|s| s.ports).expect("ports");
        assert_eq!(ports.len(), 2, "443 kept");
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(Some(ports[0].node_port), np80, "node port kept");

        // server-side apply: create if missing, then merge
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}});
        let cms: Api<ConfigMap> = Api::default_namespaced(client(&server).await);
        let pp = PatchParams::apply("tester");
        let created = cms.patch("cfg", &pp, &Patch::Apply(&cm)).await.expect("apply creates");
        assert_eq!(created.data.and_then(|d| d.get("a").cloned()).as_deref(), Some("1"));
        let cm2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"b": "2"}});
        let merged = cms.patch("cfg", &pp, &Patch::Apply(&cm2)).await.expect("apply updates");
        let data = merged.data.unwrap_or_default();
        assert_eq!(data.get("b").map(String::as_str), Some("2"));
        assert!(!data.contains_key("a"), "a field the manager stopped applying is removed");
        // another manager changing b conflicts unless forced
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"b": "3"}});
        let e = cms.patch("cfg", &PatchParams::apply("other"), &Patch::Apply(&other)).await.expect_err("conflict");
        assert_eq!(api_err(e), (409, "Conflict".into()));
        let forced = cms.patch("cfg", &PatchParams::apply("other").force(), &Patch::Apply(&other)).await.expect("forced");
        assert_eq!(forced.data.and_then(|d| d.get("b").cloned()).as_deref(), Some("3"));
        let kinds: Vec<_> = server.requests().iter().filter_map(|r| r.patch_type.clone()).collect();
        assert_eq!(kinds, ["merge", "strategic", "apply", "apply", "apply", "apply"]);
    })
    .await;
}

#[tokio::test]
async fn noop_patch_keeps_rv_and_emits_no_event() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
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
        let same =
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"type": "LoadBalancer"}});
        for patch in [Patch::Merge(same.clone()), Patch::Strategic(same.clone())] {
            let out = svcs
                .patch("web", &PatchParams::default(), &patch)
                .await
                .expect("patch");
            assert_eq!(
                out.metadata.resource_version.as_deref(),
                Some(start.as_str())
            );
        }
        let out = svcs
            .replace("web", &PostParams::default(), &created)
            .await
            .expect("replace");
        assert_eq!(
            out.metadata.resource_version.as_deref(),
            Some(start.as_str())
        );
        // a real change arrives as the first event
        let change = json!({"metadata": {"labels": {"x": "y"}}});
        svcs.patch("web", &PatchParams::default(), &Patch::Merge(&change))
            .await
            .expect("patch");
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Modified(s)) => {
                assert_eq!(
                    s.metadata
                        .labels
                        .and_then(|l| l.get("x").cloned())
                        .as_deref(),
                    Some("y")
                );
            }
            other => panic!("expected the label change first, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn list_pagination() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let cms: Api<ConfigMap> = Api::default_namespaced(client(&server).await);
        for i in 0..12 {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": format!("cm-{i:02}")}}))
                    .expect("cm");
            cms.create(&PostParams::default(), &cm)
                .await
                .expect("create");
        }
        let mut lp = ListParams::default().limit(5);
        let mut names = Vec::new();
        let mut pages = 0;
        loop {
            let page = cms.list(&lp).await.expect("list");
            pages += 1;
            names.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
                _ => break,
            }
        }
        assert_eq!(pages, 3);
        let want: Vec<String> = (0..12).map(|i| format!("cm-{i:02}")).collect();
        assert_eq!(names, want);
    })
    .await;
}

#[tokio::test]
async fn watch_replays_in_order_and_410_after_compaction() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
        let a = svcs
            .create(&PostParams::default(), &lb_service("a", &[80]))
            .await
            .expect("create");
        let from = a.metadata.resource_version.clone().expect("rv");
        svcs.create(&PostParams::default(), &lb_service("b", &[80]))
            .await
            .expect("create");
        svcs.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
        )
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
            match stream.try_next().await.expect("event") {
                Some(WatchEvent::Added(s)) => {
                    seen.push(format!("ADDED {}", s.metadata.name.unwrap_or_default()))
                }
                Some(WatchEvent::Modified(s)) => {
                    seen.push(format!("MODIFIED {}", s.metadata.name.unwrap_or_default()))
                }
                Some(WatchEvent::Deleted(s)) => {
                    seen.push(format!("DELETED {}", s.metadata.name.unwrap_or_default()))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["ADDED b", "MODIFIED a", "DELETED b"]);

        server.compact();
        let mut stream = svcs
            .watch(&WatchParams::default(), &from)
            .await
            .expect("watch")
            .boxed();
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
            other => panic!("expected 410, got {other:?}"),
        }
        // list with an old continue token is 410 too
        let page = svcs
            .list(&ListParams::default().limit(1))
            .await
            .expect("list");
        assert!(page.metadata.continue_.is_none(), "one service left");
    })
    .await;
}

#[tokio::test]
async fn label_and_field_selectors() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
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
        let names = |l: kube::api::ObjectList<Service>| -> Vec<String> {
            l.items
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect()
        };
        let cases = [
            ("equality", "tier=fe", vec!["a", "c"]),
            ("inequality", "tier!=fe", vec!["b"]),
            ("set", "app in (a,b)", vec!["a", "b"]),
            ("notin", "app notin (a,b)", vec!["c"]),
            ("exists", "tier", vec!["a", "b", "c"]),
            ("not exists", "!tier", vec![]),
        ];
        for (desc, sel, want) in cases {
            let got = names(
                svcs.list(&ListParams::default().labels(sel))
                    .await
                    .expect("list"),
            );
            assert_eq!(got, want, "{desc}");
        }
        let got = names(
            svcs.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .expect("list"),
        );
        assert_eq!(got, ["b"]);
    })
    .await;
}

#[tokio::test]
async fn nodes_leases_and_lease_conflicts() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let c = client(&server).await;
        let nodes: Api<Node> = Api::all(c.clone());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}})).expect("node");
        let created = nodes.create(&PostParams::default(), &node).await.expect("create node");
        assert!(created.status.is_some(), "node status is kept on create");
        assert_eq!(nodes.list(&ListParams::default()).await.expect("list").items.len(), 1);

        let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "portico"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})).expect("lease");
        let l1 = leases.create(&PostParams::default(), &lease).await.expect("create lease");
        let mut l2 = l1.clone();
        l2.spec.as_mut().expect("spec").holder_identity = Some("b".into());
        leases.replace("portico", &PostParams::default(), &l2).await.expect("update");
        // a second writer with the old RV loses
        let mut l3 = l1.clone();
        l3.spec.as_mut().expect("spec").holder_identity = Some("c".into());
        let e = leases.replace("portico", &PostParams::default(), &l3).await.expect_err("conflict");
        assert_eq!(api_err(e), (409, "Conflict".into()));
        // namespaces must exist
        let missing: Api<Lease> = Api::namespaced(c, "nope");
        let e = missing.create(&PostParams::default(), &lease).await.expect_err("no namespace");
        assert_eq!(api_err(e), (404, "NotFound".into()));
    })
    .await;
}

#[tokio::test]
async fn watcher_survives_disconnects() {
    timed(60, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
        let stream =
            kube::runtime::watcher(svcs.clone(), kube::runtime::watcher::Config::default())
                .applied_objects()
                .boxed();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = stream;
            while let Some(ev) = stream.next().await {
                if let Ok(s) = ev {
                    let _ = tx.send(s.metadata.name.unwrap_or_default());
                }
            }
        });
        svcs.create(&PostParams::default(), &lb_service("a", &[80]))
            .await
            .expect("create");
        assert_eq!(rx.recv().await.as_deref(), Some("a"));
        // wait for the watch to be open, then cut it
        while server.store().watch_count() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.disconnect_watches();
        svcs.create(&PostParams::default(), &lb_service("b", &[80]))
            .await
            .expect("create");
        assert_eq!(rx.recv().await.as_deref(), Some("b"));
        // compaction forces a re-list, which still finds everything
        while server.store().watch_count() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.compact();
        server.disconnect_watches();
        svcs.create(&PostParams::default(), &lb_service("c", &[80]))
            .await
            .expect("create");
        let mut got = Vec::new();
        while !got.contains(&"c".to_string()) {
            got.push(rx.recv().await.expect("watcher alive"));
        }
        let watches = server
            .requests()
            .iter()
            .filter(|r| r.verb == "watch")
            .count();
        assert!(watches >= 2, "re-watched after disconnect ({watches})");
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn streaming_list_initial_events() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
        svcs.create(&PostParams::default(), &lb_service("a", &[80]))
            .await
            .expect("create");
        let cfg = kube::runtime::watcher::Config::default().streaming_lists();
        let mut stream = kube::runtime::watcher(svcs.clone(), cfg).boxed();
        let mut events = Vec::new();
        loop {
            match stream.try_next().await.expect("ok").expect("event") {
                kube::runtime::watcher::Event::InitApply(s) => {
                    events.push(s.metadata.name.unwrap_or_default())
                }
                kube::runtime::watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(events, ["a"]);
        let w = server
            .requests()
            .into_iter()
            .find(|r| r.verb == "watch")
            .expect("watch");
        assert!(w.query.contains("sendInitialEvents=true"), "{}", w.query);
    })
    .await;
}

#[tokio::test]
async fn discovery_and_tables_over_plain_http() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let c = client(&server).await;
        let v = c.apiserver_version().await.expect("version");
        assert_eq!(v.major, "1");
        let groups = c.list_api_groups().await.expect("groups");
        assert!(
            groups
                .groups
                .iter()
                .any(|g| g.name == "coordination.k8s.io")
        );
        let core = c.list_core_api_resources("v1").await.expect("core");
        let svc = core
            .resources
            .iter()
            .find(|r| r.name == "services")
            .expect("services");
        assert_eq!(svc.short_names, Some(vec!["svc".to_string()]));
        assert!(core.resources.iter().any(|r| r.name == "services/status"));
        // kube's discovery works end to end
        let disc = kube::discovery::Discovery::new(c.clone())
            .run()
            .await
            .expect("discovery");
        assert!(disc.has_group("discovery.k8s.io"));

        // a Table, as kubectl asks for it
        let svcs: Api<Service> = Api::default_namespaced(c.clone());
        svcs.create(&PostParams::default(), &lb_service("web", &[80]))
            .await
            .expect("create");
        let req = http::Request::get("/api/v1/namespaces/default/services?limit=500")
            .header(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(Vec::new())
            .expect("request");
        let table: serde_json::Value = c.request(req).await.expect("table");
        assert_eq!(table["kind"], "Table");
        let cols: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            &cols[..6],
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age"
            ]
        );
        assert_eq!(table["rows"][0]["cells"][3], "<pending>");
        assert!(
            table["rows"][0]["cells"][4]
                .as_str()
                .is_some_and(|p| p.starts_with("80:3"))
        );
    })
    .await;
}

#[tokio::test]
async fn custom_resources_from_crds() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let c = client(&server).await;
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "ippools.portico.dev"},
            "spec": {"group": "portico.dev", "scope": "Cluster",
                "names": {"plural": "ippools", "singular": "ippool", "kind": "IPPool", "shortNames": ["ipp"]},
                "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                    "subresources": {"status": {}}}]}
        });
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(c.clone());
        crds.create(&PostParams::default(), &serde_json::from_value(crd).expect("crd")).await.expect("create crd");
        let ar = kube::api::ApiResource {
            group: "portico.dev".into(),
            version: "v1alpha1".into(),
            api_version: "portico.dev/v1alpha1".into(),
            kind: "IPPool".into(),
            plural: "ippools".into(),
        };
        let pools: Api<kube::api::DynamicObject> = Api::all_with(c, &ar);
        let pool: kube::api::DynamicObject = serde_json::from_value(json!({"apiVersion": "portico.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "default"}, "spec": {"addresses": ["192.0.2.0/28"]}})).expect("pool");
        pools.create(&PostParams::default(), &pool).await.expect("create pool");
        let got = pools.get("default").await.expect("get pool");
        assert_eq!(got.data["spec"]["addresses"][0], "192.0.2.0/28");
        let st = json!({"status": {"allocated": 1}});
        let out = pools.patch_status("default", &PatchParams::default(), &Patch::Merge(&st)).await.expect("status");
        assert_eq!(out.data["status"]["allocated"], 1);
    })
    .await;
}
