//! Opt-in: the controller against a real cluster from `KUBECONFIG`, with a
//! recording provider (no cloud is touched). Skipped, with the reason
//! printed, when `KUBECONFIG` is not set.
//!
//! Everything happens in a fresh namespace with a load-balancer class unique
//! to the run, so another controller in the cluster never sees these
//! Services and this one never touches anything else.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use portico::builders::svc;
use portico::config::ControllerConfig;
use portico::status::CONDITION_TYPE;
use portico_provider::testing::RecordingProvider;

async fn real_client() -> Option<kube::Client> {
    let Some(path) = std::env::var_os("KUBECONFIG") else {
        eprintln!(
            "skipped: KUBECONFIG is not set; set it to run these scenarios against a real cluster"
        );
        return None;
    };
    match portico::app::kube_client(Some(std::path::Path::new(&path))).await {
        Ok(client) => Some(client),
        Err(err) => panic!("KUBECONFIG is set but unusable: {err}"),
    }
}

#[tokio::test]
async fn lifecycle_against_a_real_cluster() {
    let Some(client) = real_client().await else {
        return;
    };
    within(180, async {
        let run = format!("portico-test-{:08x}", rand::random::<u32>());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(run.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");

        let class = format!("portico.io/{run}");
        let config = ControllerConfig {
            class: class.clone(),
            claim_classless: false,
            ..test_config()
        };
        let provider = RecordingProvider::new();
        let replica = Replica::start(client.clone(), provider.clone(), config, None);
        let services: Api<Service> = Api::namespaced(client.clone(), &run);

        let mut web = svc(&run, "web")
            .lb()
            .class(&class)
            .port_without_node_port(80)
            .build();
        web.metadata.uid = None;
        services
            .create(&PostParams::default(), &web)
            .await
            .expect("create Service");
        let ready = eventually("EXTERNAL-IP", 60, || async {
            services
                .get_opt("web")
                .await
                .ok()
                .flatten()
                .filter(|s| ingress_ip(s).is_some())
        })
        .await;
        assert!(has_finalizer(&ready));
        assert_eq!(
            condition(&ready, CONDITION_TYPE).map(|c| c.0),
            Some("True".to_string())
        );

        // Type change away from LoadBalancer releases the Service.
        let to_cluster_ip =
            serde_json::json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null}});
        services
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(&to_cluster_ip),
            )
            .await
            .expect("patch type");
        eventually("released", 60, || async {
            services
                .get_opt("web")
                .await
                .ok()
                .flatten()
                .filter(|s| !has_finalizer(s) && ingress_ip(s).is_none())
        })
        .await;
        assert!(provider.balancers().is_empty());

        // Delete flow.
        let mut api = svc(&run, "api")
            .lb()
            .class(&class)
            .port_without_node_port(443)
            .build();
        api.metadata.uid = None;
        services
            .create(&PostParams::default(), &api)
            .await
            .expect("create Service");
        eventually("api ready", 60, || async {
            services
                .get_opt("api")
                .await
                .ok()
                .flatten()
                .filter(|s| ingress_ip(s).is_some())
        })
        .await;
        services
            .delete("api", &DeleteParams::default())
            .await
            .expect("delete");
        eventually("api gone", 60, || async {
            services
                .get_opt("api")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        })
        .await;
        assert!(
            provider.balancers().is_empty(),
            "balancer deleted before the Service went"
        );

        replica.stop().await;
        let _ = namespaces.delete(&run, &DeleteParams::default()).await;
    })
    .await;
}
