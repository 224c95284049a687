//! A real kube-runtime Controller and kube-lease-manager against the stand-in.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{client, lb_service, timed};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube_standin::ApiServer;
use serde_json::json;

const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed")]
struct ReconcileError(#[source] Box<dyn std::error::Error + Send + Sync>);

struct Ctx {
    client: kube::Client,
    reconciles: AtomicUsize,
    cleanups: AtomicUsize,
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, svc, |event| async {
        match event {
            Finalizer::Apply(svc) => {
                // ipMode spelled out: the server defaults it, so leaving it out
                // would make every reconcile see a difference and write again.
                let want = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.10", "ipMode": "VIP"}]}});
                let have = serde_json::to_value(svc.status.clone()).unwrap_or_default();
                if have != want {
                    let name = svc.metadata.name.clone().unwrap_or_default();
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": want})),
                    )
                    .await
                    .map_err(|e| ReconcileError(Box::new(e)))?;
                }
                Ok::<_, ReconcileError>(Action::await_change())
            }
            Finalizer::Cleanup(_) => {
                ctx.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| ReconcileError(Box::new(e)))
}

fn error_policy(_svc: Arc<Service>, _err: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn controller_reconciles_without_looping() {
    timed(60, async {
        let server = ApiServer::start().await.expect("start");
        let c = client(&server).await;
        let svcs: Api<Service> = Api::default_namespaced(c.clone());
        let ctx = Arc::new(Ctx {
            client: c.clone(),
            reconciles: AtomicUsize::new(0),
            cleanups: AtomicUsize::new(0),
        });
        let controller = Controller::new(svcs.clone(), kube::runtime::watcher::Config::default())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| async {});
        let handle = tokio::spawn(controller);

        svcs.create(&PostParams::default(), &lb_service("web", &[80]))
            .await
            .expect("create");
        // wait until the status is written
        loop {
            let s = svcs.get("web").await.expect("get");
            let ip = s
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|l| l.ingress)
                .and_then(|i| i[0].ip.clone());
            if ip.is_some() {
                assert_eq!(s.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // settle, then make sure it is not looping
        tokio::time::sleep(Duration::from_millis(700)).await;
        let settled = ctx.reconciles.load(Ordering::SeqCst);
        assert!(settled <= 4, "{settled} reconciles for one create");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            ctx.reconciles.load(Ordering::SeqCst),
            settled,
            "reconciling in a loop"
        );
        let writes = server.requests().iter().filter(|r| r.is_write()).count();
        assert_eq!(writes, 3, "create, add finalizer, status");

        svcs.delete("web", &DeleteParams::default())
            .await
            .expect("delete");
        loop {
            if svcs.get_opt("web").await.expect("get").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ctx.cleanups.load(Ordering::SeqCst), 1);
        handle.abort();
    })
    .await;
}

#[tokio::test]
async fn lease_manager_elects_one_leader() {
    timed(60, async {
        let server = ApiServer::start().await.expect("start");
        let mut managers = Vec::new();
        for id in ["a", "b"] {
            let m = kube_lease_manager::LeaseManagerBuilder::new(
                client(&server).await,
                "portico-leader",
            )
            .with_namespace("kube-system")
            .with_identity(id)
            .with_duration(3)
            .with_grace(1)
            .build()
            .await
            .expect("lease manager");
            managers.push(m);
        }
        let b = managers.pop().expect("b");
        let a = managers.pop().expect("a");
        let (mut a_rx, a_task) = a.watch().await;
        // a becomes leader first
        while !*a_rx.borrow_and_update() {
            a_rx.changed().await.expect("a alive");
        }
        let (mut b_rx, b_task) = b.watch().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !*b_rx.borrow_and_update(),
            "b must not lead while a holds the lease"
        );
        // a crashes (no release); b takes over after expiry
        a_task.abort();
        while !*b_rx.borrow_and_update() {
            b_rx.changed().await.expect("b alive");
        }
        let store = server.store();
        let leases = store.resolve("leases").expect("leases");
        let lease = store
            .get(&leases, "kube-system", "portico-leader")
            .expect("lease");
        assert_eq!(lease["spec"]["holderIdentity"], "b");
        drop(b_rx);
        let _ = b_task.await;
    })
    .await;
}
