//! Reading a Kubernetes Service the way the allocator needs it: whether it
//! is ours, what its status shows, and what its selectors match against.
//! Pure, so the adoption after a restart is tested without an API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use portico_provider::{Annotations, ClusterName, LoadBalancerKey, Protocol, TrafficPolicy};

use crate::allocator::{Claim, FamilyPolicy, Port, Sharing};
use crate::pools::ServiceFacts;
use crate::request::annotation;

/// Which Services the controller serves (its `--load-balancer-class`, and
/// class-less ones when it claims those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub class: String,
    pub claim_classless: bool,
}

impl Ownership {
    /// Whether `svc`'s class is ours (whatever its type).
    pub fn claims(&self, svc: &Service) -> bool {
        match svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_deref())
        {
            Some(class) => class == self.class,
            None => self.claim_classless,
        }
    }
}

/// A `type: LoadBalancer` Service that is not being deleted.
pub fn is_live_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && svc.metadata.deletion_timestamp.is_none()
}

/// The addresses `status.loadBalancer.ingress` shows.
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// `namespace/name`.
pub fn id(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

pub fn key(svc: &Service, cluster: &ClusterName) -> LoadBalancerKey {
    LoadBalancerKey::new(
        cluster.clone(),
        svc.namespace().unwrap_or_default(),
        svc.name_any(),
        svc.uid().unwrap_or_default(),
    )
}

fn ports(svc: &Service) -> BTreeSet<Port> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP").parse().ok()?;
            Some((protocol, u16::try_from(p.port).ok()?))
        })
        .collect::<BTreeSet<(Protocol, u16)>>()
}

/// The sharing rule of `svc`, read as `prepare` reads it (a key spelled
/// twice differently counts as no key: such a Service is refused anyway).
pub fn sharing(svc: &Service) -> Sharing {
    let annotations = Annotations::new(svc.annotations().clone());
    let keys: BTreeSet<&str> = annotation::SHARING
        .iter()
        .filter_map(|k| annotations.get(k).filter(|v| !v.is_empty()))
        .collect();
    let local = svc
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local");
    Sharing {
        key: (keys.len() == 1)
            .then(|| keys.first().map(|k| k.to_string()))
            .flatten(),
        traffic: if local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        },
    }
}

/// What `svc` shows in its status, to adopt; none when it shows nothing.
pub fn claim(svc: &Service, cluster: &ClusterName) -> Option<Claim> {
    let ips = status_ips(svc);
    (!ips.is_empty()).then(|| Claim {
        key: key(svc, cluster),
        ips,
        ports: ports(svc),
        sharing: sharing(svc),
    })
}

/// Whether `svc` is the Service of `key` and shows `ip` in its status.
pub fn shows(svc: &Service, key: &LoadBalancerKey, ip: IpAddr) -> bool {
    svc.uid().as_deref() == Some(key.uid.as_str()) && status_ips(svc).contains(&ip)
}

/// What pools' selectors match against.
pub fn facts(svc: &Service, namespace_labels: BTreeMap<String, String>) -> ServiceFacts {
    ServiceFacts {
        namespace: svc.namespace().unwrap_or_default(),
        labels: svc.labels().clone(),
        namespace_labels,
    }
}

/// `spec.ipFamilyPolicy` (the API server always sets it on a Service with a
/// cluster IP; without one, what the family count implies).
pub fn family_policy(svc: &Service) -> FamilyPolicy {
    let spec = svc.spec.as_ref();
    match spec.and_then(|s| s.ip_family_policy.as_deref()) {
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        Some(_) => FamilyPolicy::SingleStack,
        None if spec
            .and_then(|s| s.ip_families.as_ref())
            .map_or(0, Vec::len)
            > 1 =>
        {
            FamilyPolicy::RequireDualStack
        }
        None => FamilyPolicy::SingleStack,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::ObjectMeta;

    use super::*;

    fn svc(class: Option<&str>, ips: &[&str]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                annotations: Some(BTreeMap::from([(
                    annotation::METALLB_LEGACY_ALLOW_SHARED_IP.to_string(),
                    "dns".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_class: class.map(String::from),
                external_traffic_policy: Some("Local".into()),
                ports: Some(vec![
                    ServicePort {
                        port: 53,
                        protocol: Some("UDP".into()),
                        ..ServicePort::default()
                    },
                    ServicePort {
                        port: 53,
                        ..ServicePort::default()
                    },
                ]),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ips.iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some(ip.to_string()),
                                ..LoadBalancerIngress::default()
                            })
                            .collect(),
                    ),
                }),
                ..ServiceStatus::default()
            }),
        }
    }

    #[test]
    fn ownership_follows_the_class() {
        let ours = Ownership {
            class: "portico.io/arp".into(),
            claim_classless: false,
        };
        let rows = [
            ("our class", svc(Some("portico.io/arp"), &[]), true),
            ("another class", svc(Some("metallb"), &[]), false),
            ("no class, not claimed", svc(None, &[]), false),
        ];
        for (desc, s, want) in rows {
            assert_eq!(ours.claims(&s), want, "{desc}");
        }
        let greedy = Ownership {
            claim_classless: true,
            ..ours
        };
        assert!(
            greedy.claims(&svc(None, &[])),
            "no class while claiming those"
        );
    }

    #[test]
    fn a_status_becomes_a_claim_with_ports_and_sharing() {
        let s = svc(
            Some("portico.io/arp"),
            &["192.0.2.5", "not an ip", "2001:db8::5"],
        );
        let claim = claim(&s, &ClusterName::new("c")).expect("shows addresses");
        assert_eq!(claim.key.uid, "u1");
        assert_eq!(
            claim.ips,
            vec![
                "192.0.2.5".parse::<IpAddr>().expect("ip"),
                "2001:db8::5".parse().expect("ip")
            ],
            "unreadable entries are skipped"
        );
        assert_eq!(
            claim.ports,
            BTreeSet::from([(Protocol::Tcp, 53), (Protocol::Udp, 53)]),
            "a port without protocol is TCP"
        );
        assert_eq!(
            claim.sharing,
            Sharing {
                key: Some("dns".into()),
                traffic: TrafficPolicy::Local
            }
        );
        assert!(shows(&s, &claim.key, claim.ips[0]));
        let mut other = claim.key.clone();
        other.uid = "u2".into();
        assert!(
            !shows(&s, &other, claim.ips[0]),
            "a re-created Service is another"
        );
        assert!(claim_of_nothing().is_none());
    }

    fn claim_of_nothing() -> Option<Claim> {
        claim(&svc(Some("portico.io/arp"), &[]), &ClusterName::new("c"))
    }

    #[test]
    fn a_service_being_deleted_or_of_another_type_is_not_live() {
        let mut deleting = svc(None, &[]);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let mut cluster_ip = svc(None, &[]);
        if let Some(spec) = cluster_ip.spec.as_mut() {
            spec.type_ = Some("ClusterIP".into());
        }
        assert!(is_live_load_balancer(&svc(None, &[])));
        assert!(!is_live_load_balancer(&deleting));
        assert!(!is_live_load_balancer(&cluster_ip));
    }

    #[test]
    fn the_family_policy_is_read_or_implied() {
        let mut s = svc(None, &[]);
        assert_eq!(family_policy(&s), FamilyPolicy::SingleStack);
        if let Some(spec) = s.spec.as_mut() {
            spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        }
        assert_eq!(
            family_policy(&s),
            FamilyPolicy::RequireDualStack,
            "two families imply it"
        );
        if let Some(spec) = s.spec.as_mut() {
            spec.ip_family_policy = Some("PreferDualStack".into());
        }
        assert_eq!(family_policy(&s), FamilyPolicy::PreferDualStack);
    }
}
