//! `ApiServer::client()` (feature `client`).
#![cfg(feature = "client")]

mod common;

use common::timed;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube_standin::ApiServer;

#[tokio::test]
async fn client_helper_talks_to_the_server() {
    timed(30, async {
        let server = ApiServer::start().await.expect("start");
        let client = server.client().await.expect("client");
        assert_eq!(client.default_namespace(), "default");
        let nss: Api<Namespace> = Api::all(client);
        let names: Vec<String> = nss
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert!(
            names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string())
        );
        let r = server.requests().pop().expect("recorded");
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str()),
            ("list", "namespaces")
        );
        server.shutdown().await;
    })
    .await;
}
