//! From the Kubernetes objects the speaker watches and the gossip view to
//! the announcing node of every VIP: pure, so it is tested without an API
//! server and computed the same way on every node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::membership::{MemberView, speaker_alive};
use crate::ranking::{self, NoAnnouncer, NodeFacts, TrafficPolicy};

/// Nodes with this label never receive load-balancer traffic (unless its
/// value parses as false, as upstream reads it).
pub const EXCLUDE_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service that shares a VIP: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The decision for one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipDecision {
    /// The Services with this VIP in their status.
    pub services: Vec<ServiceRef>,
    /// Who announces it, or why nobody does.
    pub announcer: Result<String, NoAnnouncer>,
}

/// What the speaker sees.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// This speaker's node.
    pub me: &'a str,
    /// The `spec.loadBalancerClass` the speaker serves.
    pub class: &'a str,
    /// Services, all namespaces.
    pub services: &'a [std::sync::Arc<Service>],
    /// EndpointSlices, all namespaces.
    pub slices: &'a [std::sync::Arc<EndpointSlice>],
    /// Nodes.
    pub nodes: &'a [std::sync::Arc<Node>],
    /// The speaker pods (the Kubernetes view of which speakers run).
    pub speaker_pods: &'a [std::sync::Arc<Pod>],
    /// What gossip says.
    pub gossip: &'a MemberView,
}

/// Go's `strconv.ParseBool`, which upstream uses for the exclude label.
fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn excluded(node: &Node) -> bool {
    node.labels()
        .get(EXCLUDE_LB_LABEL)
        .is_some_and(|v| parse_go_bool(v) != Some(false))
}

/// The VIPs of a Service this speaker serves: `type: LoadBalancer`, our
/// class, and IPs in `status.loadBalancer.ingress`. Others yield nothing.
pub fn service_vips(svc: &Service, class: &str) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.load_balancer_class.as_deref() != Some(class)
        || svc.metadata.deletion_timestamp.is_some()
    {
        return Vec::new();
    }
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn is_local(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local")
}

/// Nodes with a ready endpoint of `svc`, from its EndpointSlices (an
/// endpoint whose `ready` is unset counts as ready, as the API documents).
fn ready_nodes(svc: &Service, slices: &[std::sync::Arc<EndpointSlice>]) -> BTreeSet<String> {
    let namespace = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    slices
        .iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(namespace.as_str())
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&name)
        })
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// Nodes whose speaker pod Kubernetes reports ready.
pub fn ready_speakers(pods: &[std::sync::Arc<Pod>]) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect()
}

/// The announcing node of every VIP of every Service we serve.
pub fn decide(inputs: Inputs<'_>) -> BTreeMap<IpAddr, VipDecision> {
    let kube_ready = ready_speakers(inputs.speaker_pods);
    let nodes: Vec<NodeFacts> = inputs
        .nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .map(|n| {
            let name = n.name_any();
            NodeFacts {
                alive: speaker_alive(inputs.me, &name, inputs.gossip, &kube_ready),
                excluded: excluded(n),
                name,
            }
        })
        .collect();
    let mut vips: BTreeMap<IpAddr, (Vec<ServiceRef>, Vec<TrafficPolicy>)> = BTreeMap::new();
    for svc in inputs.services {
        let ips = service_vips(svc, inputs.class);
        if ips.is_empty() {
            continue;
        }
        let policy = if is_local(svc) {
            TrafficPolicy::Local {
                ready_nodes: ready_nodes(svc, inputs.slices),
            }
        } else {
            TrafficPolicy::Cluster
        };
        let service = ServiceRef {
            namespace: svc.namespace().unwrap_or_default(),
            name: svc.name_any(),
        };
        for ip in ips {
            let entry = vips.entry(ip).or_default();
            entry.0.push(service.clone());
            entry.1.push(policy.clone());
        }
    }
    vips.into_iter()
        .map(|(ip, (mut services, policies))| {
            services.sort();
            let announcer = ranking::announcer(ip, &policies, &nodes).map(str::to_string);
            (
                ip,
                VipDecision {
                    services,
                    announcer,
                },
            )
        })
        .collect()
}

/// Where other speakers listen for gossip: each other Node's internal
/// address (host network) and the gossip port.
pub fn gossip_peers(
    nodes: &[std::sync::Arc<Node>],
    me: &str,
    port: u16,
) -> BTreeSet<std::net::SocketAddr> {
    nodes
        .iter()
        .filter(|n| n.name_any() != me)
        .filter_map(|n| internal_ip(n))
        .map(|ip| std::net::SocketAddr::new(ip, port))
        .collect()
}

/// The Node's first `InternalIP`.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeStatus, PodCondition, PodSpec,
        PodStatus, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use kube::api::ObjectMeta;

    use super::*;

    const CLASS: &str = "portico.io/arp";

    fn svc(name: &str, class: &str, ips: &[&str], local: bool) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_class: Some(class.into()),
                external_traffic_policy: Some(if local { "Local" } else { "Cluster" }.into()),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ips.iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some(ip.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
        })
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: format!("10.0.0.{}", name.len()),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn pod(node: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(format!("speaker-{node}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn slice(service: &str, endpoints: &[(&str, Option<bool>)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-abc")),
                namespace: Some("default".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(node, ready)| Endpoint {
                        addresses: vec!["10.244.0.5".into()],
                        node_name: Some(node.to_string()),
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: None,
        })
    }

    fn gossip(alive: &[&str], down: &[&str]) -> MemberView {
        MemberView {
            alive: alive.iter().map(|s| s.to_string()).collect(),
            down: down.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn only_our_class_with_an_address_is_announced() {
        let rows = [
            ("ours with an IP", svc("a", CLASS, &["192.0.2.1"], false), 1),
            (
                "another class",
                svc("b", "portico.io/slb", &["192.0.2.2"], false),
                0,
            ),
            ("ours without an IP yet", svc("c", CLASS, &[], false), 0),
            (
                "dual-stack",
                svc("d", CLASS, &["192.0.2.4", "2001:db8::4"], false),
                2,
            ),
            (
                "a hostname is not a VIP",
                {
                    let mut s = (*svc("e", CLASS, &[], false)).clone();
                    s.status = Some(ServiceStatus {
                        load_balancer: Some(LoadBalancerStatus {
                            ingress: Some(vec![LoadBalancerIngress {
                                hostname: Some("lb.example".into()),
                                ..Default::default()
                            }]),
                        }),
                        ..Default::default()
                    });
                    Arc::new(s)
                },
                0,
            ),
            (
                "not a LoadBalancer any more",
                {
                    let mut s = (*svc("f", CLASS, &["192.0.2.6"], false)).clone();
                    if let Some(spec) = s.spec.as_mut() {
                        spec.type_ = Some("ClusterIP".into());
                    }
                    Arc::new(s)
                },
                0,
            ),
        ];
        for (desc, service, want) in rows {
            assert_eq!(service_vips(&service, CLASS).len(), want, "{desc}");
        }
    }

    #[test]
    fn decisions_follow_gossip_labels_and_endpoints() {
        let nodes = [
            node("n1", &[]),
            node("n2", &[]),
            node("n3", &[(EXCLUDE_LB_LABEL, "true")]),
        ];
        let pods = [pod("n1", true), pod("n2", true), pod("n3", true)];
        let services = [
            svc("web", CLASS, &["192.0.2.10"], false),
            svc("local", CLASS, &["192.0.2.11"], true),
        ];
        let slices = [slice("local", &[("n2", None), ("n1", Some(false))])];
        let decide_with = |view: &MemberView| {
            decide(Inputs {
                me: "n1",
                class: CLASS,
                services: &services,
                slices: &slices,
                nodes: &nodes,
                speaker_pods: &pods,
                gossip: view,
            })
        };
        let web: IpAddr = "192.0.2.10".parse().expect("ip");
        let local: IpAddr = "192.0.2.11".parse().expect("ip");

        let all_up = decide_with(&gossip(&["n2", "n3"], &[]));
        let owner = all_up[&web].announcer.clone().expect("an announcer");
        assert_ne!(owner, "n3", "the excluded node never announces");
        assert_eq!(
            all_up[&local].announcer.as_deref(),
            Ok("n2"),
            "Local: the only node with a ready endpoint (unset ready counts as ready)"
        );
        assert_eq!(
            all_up[&web].services,
            vec![ServiceRef {
                namespace: "default".into(),
                name: "web".into()
            }]
        );

        let n2_down = decide_with(&gossip(&["n3"], &["n2"]));
        assert_eq!(
            n2_down[&web].announcer.as_deref(),
            Ok("n1"),
            "n1 is all that is left"
        );
        assert_eq!(
            n2_down[&local].announcer,
            Err(NoAnnouncer::NoReadyEndpoints),
            "its endpoints' node is gone"
        );

        let no_gossip_yet = decide_with(&MemberView::default());
        assert_eq!(
            no_gossip_yet[&web].announcer, all_up[&web].announcer,
            "before gossip knows anyone, the ready speaker pods decide, the same way"
        );
    }

    #[test]
    fn peers_are_the_other_nodes_internal_addresses() {
        let nodes = [node("n1", &[]), node("nn2", &[])];
        let peers = gossip_peers(&nodes, "n1", 7946);
        assert_eq!(
            peers.into_iter().collect::<Vec<_>>(),
            vec!["10.0.0.3:7946".parse().expect("addr")]
        );
    }
}
