//! What only the stand-in can be asked, so it is not in the differential
//! suite (`api.rs`, `differential.rs`): its hooks have no counterpart on a
//! real kube-apiserver — cutting every watch at once (the real tier breaks
//! them by restarting kube-apiserver, `tests/controller.rs`), the record
//! of requests (the real server's is its audit log), forgetting old
//! resourceVersions on demand (the real server forgets when its watch cache
//! window moves on, and a fresh control plane still remembers version 1) —
//! and its allocation
//! ranges are fixed where the real server's are flags. See the crate docs,
//! "Known differences".

mod common;

use std::time::Duration;

use common::{client, lb_service, timed};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube_standin::ApiServer;
use serde_json::json;

#[tokio::test]
async fn allocations_come_from_fixed_ranges() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let svcs: Api<Service> = Api::default_namespaced(client(&server).await);
        let created = svcs
            .create(&PostParams::default(), &lb_service("web", &[80, 443]))
            .await
            .expect("create");
        let spec = created.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        let ports: Vec<_> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.node_port)
            .collect();
        assert_eq!(ports, [Some(30000), Some(30001)], "from 30000 up, in order");
    })
    .await;
}

#[tokio::test]
async fn watcher_survives_disconnects_and_compaction() {
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
async fn requests_are_recorded_with_verb_subresource_and_patch_type() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let c = client(&server).await;
        let svcs: Api<Service> = Api::default_namespaced(c.clone());
        svcs.create(&PostParams::default(), &lb_service("web", &[80]))
            .await
            .expect("create");
        let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}});
        let patched = svcs
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("status patch");
        svcs.replace_status("web", &PostParams::default(), &patched)
            .await
            .expect("replace status");
        let label = json!({"metadata": {"labels": {"a": "b"}}});
        svcs.patch("web", &PatchParams::default(), &Patch::Strategic(&label))
            .await
            .expect("strategic");
        let cms: Api<ConfigMap> = Api::default_namespaced(c);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}});
        cms.patch("cfg", &PatchParams::apply("tester"), &Patch::Apply(&cm))
            .await
            .expect("apply");
        let cfg = kube::runtime::watcher::Config::default().streaming_lists();
        let mut stream = kube::runtime::watcher(svcs, cfg).boxed();
        while !matches!(
            stream.try_next().await.expect("ok"),
            Some(kube::runtime::watcher::Event::InitDone)
        ) {}
        cms.list(&ListParams::default()).await.expect("list");

        let reqs = server.requests();
        let shown: Vec<String> = reqs
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.verb,
                    r.resource_path(),
                    r.patch_type.as_deref().unwrap_or("-")
                )
            })
            .collect();
        let want = [
            "create services -",
            "patch services/status merge",
            "update services/status -",
            "patch services strategic",
            "patch configmaps apply",
            "watch services -",
            "list configmaps -",
        ];
        assert_eq!(shown, want);
        let watch = reqs.iter().find(|r| r.verb == "watch").expect("watch");
        assert!(
            watch.query.contains("sendInitialEvents=true"),
            "{}",
            watch.query
        );
    })
    .await;
}

/// A watch from a resourceVersion the server no longer keeps is told to
/// re-list (410 Expired). Stand-in only: it forgets on demand, while the
/// real server forgets when its watch cache window moves on (minutes, and
/// a fresh control plane still remembers version 1).
#[tokio::test]
async fn a_watch_from_a_forgotten_version_is_told_to_relist() {
    timed(30, async {
        let server = ApiServer::start().await.expect("stand-in starts");
        let client = client(&server).await;
        let svcs: Api<Service> = Api::namespaced(client, "default");
        svcs.create(&PostParams::default(), &lb_service("a", &[80]))
            .await
            .expect("create");
        server.store().compact();
        let mut stream = svcs
            .watch(&WatchParams::default(), "1")
            .await
            .expect("watch")
            .boxed();
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Error(e)) => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            }
            other => panic!("from resourceVersion 1: {other:?}"),
        }
    })
    .await;
}
