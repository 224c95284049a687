//! The differential harness: one probe, run on the stand-in and on the real
//! kube-apiserver (`scripts/control-plane.sh start`), must observe the same.
//! A probe records what it sees as lines of text — status codes, reasons,
//! the fields an error names, defaulted values — never anything either
//! server picks freely (uids, resourceVersions, IPs, node ports).

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::Client;
use kube::api::{Api, PostParams};
use kube_standin::ApiServer;
use kube_standin::control_plane::ControlPlane;
use serde_json::json;

use super::{client, timed};

/// Where a probe runs: a client and a namespace of its own. `ns` is the
/// same on both servers, so names derived from it (cluster-scoped objects
/// a probe makes) compare equal.
#[derive(Clone)]
pub struct Target {
    pub client: Client,
    pub ns: String,
}

impl Target {
    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A namespaced API of this target's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }
}

pub type Probe = fn(Target) -> Pin<Box<dyn Future<Output = Vec<String>> + Send>>;

/// `ok`, or `CODE Reason field,field` naming what the server refused.
pub fn outcome<T>(result: Result<T, kube::Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(kube::Error::Api(status)) => {
            // The fields named, as a set (the real server may name one twice).
            let fields: std::collections::BTreeSet<String> = status
                .details
                .as_ref()
                .map(|d| {
                    d.causes
                        .iter()
                        .map(|c| c.field.clone())
                        .filter(|f| !f.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let fields: Vec<String> = fields.into_iter().collect();
            format!("{} {} {}", status.code, status.reason, fields.join(","))
                .trim_end()
                .to_string()
        }
        Err(other) => format!("client error: {other}"),
    }
}

pub async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// Run `probe` on both servers and require the same observations.
pub async fn same_on_both(name: &str, probe: Probe) {
    timed(60, async {
        let ns = format!(
            "diff-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let server = ApiServer::start().await.expect("stand-in starts");
        let standin = client(&server).await;
        let plane = ControlPlane::connect()
            .await
            .expect("the real control plane (scripts/control-plane.sh start)");
        namespace(&standin, &ns).await;
        namespace(&plane.admin, &ns).await;
        let fake = probe(Target {
            client: standin,
            ns: ns.clone(),
        })
        .await;
        let real = probe(Target {
            client: plane.admin.clone(),
            ns,
        })
        .await;
        for (i, (f, r)) in fake.iter().zip(&real).enumerate() {
            println!("{i:2} {} stand-in: {f}", if f == r { " " } else { "≠" });
            if f != r {
                println!("            real: {r}");
            }
        }
        assert_eq!(
            fake, real,
            "{name}: the stand-in and the real kube-apiserver disagree"
        );
    })
    .await;
}
