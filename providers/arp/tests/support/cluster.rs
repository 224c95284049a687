//! The objects a speaker reads: Nodes, speaker pods, the Service, the
//! VipAnnouncement CRD.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use portico_arp::speaker::publish::VipAnnouncement;
use serde_json::json;

use super::{SPEAKER_NAMESPACE, TestNode};

pub const CLASS: &str = "portico.io/arp";

pub async fn client(kubeconfig: &std::path::Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    Client::try_from(config).expect("client")
}

/// Namespace, CRD, Nodes (Ready) and a ready speaker pod per node.
pub async fn seed(client: &Client, nodes: &[TestNode]) {
    let pp = PostParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": SPEAKER_NAMESPACE}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&pp, &VipAnnouncement::crd())
        .await
        .expect("VipAnnouncement CRD");
    let node_api: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), SPEAKER_NAMESPACE);
    for node in nodes {
        let status = json!({
            "addresses": [
                {"type": "InternalIP", "address": node.ip.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        });
        node_api
            .create(
                &pp,
                &serde_json::from_value(json!({
                    "metadata": {"name": node.name},
                    "status": status,
                }))
                .expect("node"),
            )
            .await
            .expect("create node");
        node_api
            .patch_status(
                &node.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .expect("node status");
        let pod_name = format!("speaker-{}", node.name);
        pods.create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": pod_name, "labels": {
                    "app.kubernetes.io/name": "portico",
                    "app.kubernetes.io/component": "speaker",
                }},
                "spec": {"nodeName": node.name, "containers": [{"name": "speaker", "image": "portico"}]},
            }))
            .expect("pod"),
        )
        .await
        .expect("create pod");
        pods.patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .expect("pod status");
    }
}

/// A LoadBalancer Service of our class with `vips` in its status.
pub async fn service(client: &Client, name: &str, vips: &[IpAddr], local: bool) {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let families: Vec<&str> = vips
        .iter()
        .map(|v| if v.is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {
                    "type": "LoadBalancer",
                    "loadBalancerClass": CLASS,
                    "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                    "ipFamilies": families,
                    "ipFamilyPolicy": if families.len() > 1 { "RequireDualStack" } else { "SingleStack" },
                    "selector": {"app": name},
                    "ports": [{"name": "http", "port": super::PORT, "targetPort": super::PORT}],
                },
            }))
            .expect("service"),
        )
        .await
        .expect("create service");
    let ingress: Vec<_> = vips
        .iter()
        .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
        .collect();
    services
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
        )
        .await
        .expect("service status");
}

/// An EndpointSlice of `service` with one ready endpoint on each of `nodes`.
pub async fn endpoints_on(client: &Client, service: &str, nodes: &[&str]) {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let endpoints: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"addresses": [format!("10.244.{i}.5")], "nodeName": n, "conditions": {"ready": true}}))
        .collect();
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": super::PORT, "protocol": "TCP"}],
            }))
            .expect("slice"),
        )
        .await
        .expect("create slice");
}

/// The node the VipAnnouncement of `service`'s `vip` names, if written.
pub async fn announced_node(client: &Client, service: &str, vip: IpAddr) -> Option<String> {
    let api: Api<VipAnnouncement> = Api::namespaced(client.clone(), "default");
    let name = portico_arp::speaker::publish::object_name(service, vip);
    api.get_opt(&name).await.ok().flatten().map(|a| a.spec.node)
}

/// Notes of the `Announcing` Events on `service`.
pub async fn announcing_events(client: &Client, service: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("Announcing")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service)
        })
        .filter_map(|e| e.note)
        .collect()
}
