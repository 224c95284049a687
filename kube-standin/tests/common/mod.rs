//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod both;

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_standin::ApiServer;

/// Run a test body under a timeout.
pub async fn timed<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out");
}

/// A kube::Client built the way users build one: from the kubeconfig YAML.
pub async fn client(server: &ApiServer) -> kube::Client {
    let kc = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config loads");
    kube::Client::try_from(config).expect("client builds")
}

/// A LoadBalancer Service fixture; ports are named `port-<number>` (the
/// API requires names once there is more than one).
pub fn lb_service(name: &str, ports: &[i32]) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": name},
            "ports": ports
                .iter()
                .map(|p| serde_json::json!({"port": p, "name": format!("port-{p}")}))
                .collect::<Vec<_>>(),
        }
    }))
    .expect("valid service")
}

pub fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("numeric resourceVersion")
}
