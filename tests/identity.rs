//! The cluster identity in ownership tags: unique per cluster by default
//! (from the kube-system namespace's UID), stable across restarts, and
//! `--cluster-name` when given. Read with the controller's own credentials,
//! so on the real control plane RBAC must allow it.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use portico::app::cluster_identity;

async fn default_identity_comes_from_kube_system(backend: Backend) {
    within(30, async {
        let env = Env::api_only(backend, 0).await;
        let first = cluster_identity(&env.controller_client, None)
            .await
            .expect("identity");
        let again = cluster_identity(&env.controller_client, Some("  "))
            .await
            .expect("identity");
        assert_eq!(first, again, "stable across restarts");
        let uid = Api::<Namespace>::all(env.client.clone())
            .get("kube-system")
            .await
            .expect("kube-system")
            .metadata
            .uid
            .expect("uid");
        let hex: String = uid
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(16)
            .collect();
        assert_eq!(first.as_str(), format!("k8s-{hex}"));
        let given = cluster_identity(&env.controller_client, Some("prod-eu"))
            .await
            .expect("identity");
        assert_eq!(given.as_str(), "prod-eu", "--cluster-name wins");
    })
    .await;
}

on_both_backends!(default_identity_comes_from_kube_system);
