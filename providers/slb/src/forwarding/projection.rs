//! The cloud's state seen from the data plane: what one balancer forwards,
//! computed from its listeners, their backend groups and ACLs. This is the
//! one place that knows both the cloud's resources and the forwarding
//! shapes, so neither side knows the other's.
//!
//! The store holds only validated objects (ports in range, CIDRs that
//! parse, references that resolve; `Store::check_consistency` on load), so
//! the lenient conversions below drop nothing in practice.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::{
    AccessControl, BackendConfig, BalancerForwarding, HealthCheckConfig, ListenerConfig, ProbeKind,
    Scheduler, Transport,
};
use crate::cloud::Store;
use crate::cloud::model::{
    AclMode, HealthCheck, HealthCheckType, Listener, ListenerAcl, ListenerProtocol, SchedulerKind,
};

/// What the data plane should forward for balancer `id`, if it exists;
/// listeners in (port, transport) order.
pub fn balancer_forwarding(
    store: &Store,
    id: &str,
    drain_timeout: Duration,
) -> Option<BalancerForwarding> {
    let lb = store.balancers.get(id)?;
    let mut listeners: Vec<ListenerConfig> = store
        .listeners
        .values()
        .filter(|l| l.load_balancer_id == id)
        .map(|l| listener_config(store, l, drain_timeout))
        .collect();
    listeners.sort_by_key(|l| (l.port, l.transport));
    Some(BalancerForwarding {
        balancer_id: lb.id.clone(),
        vip: lb.address,
        listeners,
    })
}

fn listener_config(store: &Store, l: &Listener, drain_timeout: Duration) -> ListenerConfig {
    let hc = &l.settings.health_check;
    ListenerConfig {
        port: l.port,
        transport: match l.protocol {
            ListenerProtocol::Tcp => Transport::Tcp,
            ListenerProtocol::Udp => Transport::Udp,
        },
        backends: backends(store, &l.settings.backend_server_group_id),
        health_check: HealthCheckConfig {
            probe: probe(hc),
            interval: Duration::from_secs(hc.interval_seconds.into()),
            timeout: Duration::from_secs(hc.timeout_seconds.into()),
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        },
        access: access(store, l.settings.acl.as_ref()),
        scheduler: match l.settings.scheduler {
            SchedulerKind::Wrr => Scheduler::Wrr,
            SchedulerKind::Wlc => Scheduler::Wlc,
        },
        drain_timeout,
        sticky_timeout: l
            .settings
            .sticky_session
            .map(|s| Duration::from_secs(s.timeout_seconds.into())),
    }
}

/// The servers of group `group_id` as backends (none if the group is gone).
fn backends(store: &Store, group_id: &str) -> Vec<BackendConfig> {
    let Some(group) = store.groups.get(group_id) else {
        return Vec::new();
    };
    group
        .servers
        .iter()
        .filter_map(|s| {
            let port = u16::try_from(s.port).ok()?;
            Some(BackendConfig {
                addr: SocketAddr::new(s.address, port),
                weight: s.weight,
            })
        })
        .collect()
}

fn probe(hc: &HealthCheck) -> ProbeKind {
    if !hc.enabled {
        return ProbeKind::Disabled;
    }
    match (hc.kind, hc.port) {
        (HealthCheckType::Tcp, _) => ProbeKind::TcpConnect,
        (HealthCheckType::Http, Some(port)) => ProbeKind::Http {
            port,
            path: hc.path.clone().unwrap_or_else(|| "/".into()),
        },
        // The API refuses an http check without a port; a connect check is
        // the closest meaning if one is found anyway.
        (HealthCheckType::Http, None) => ProbeKind::TcpConnect,
    }
}

/// Who may connect: everyone without an ACL; with one, its entries as a
/// whitelist or a blacklist (an ACL that is gone has no entries).
fn access(store: &Store, acl: Option<&ListenerAcl>) -> AccessControl {
    let Some(acl_ref) = acl else {
        return AccessControl::AllowAll;
    };
    let nets: Vec<IpNet> = store
        .acls
        .get(&acl_ref.acl_id)
        .map(|a| {
            a.entries
                .iter()
                .filter_map(|e| e.cidr.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match acl_ref.mode {
        AclMode::White => AccessControl::AllowOnly(nets),
        AclMode::Black => AccessControl::Deny(nets),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cloud::model::{
        Acl, AclEntry, AddressType, BackendServer, BackendServerGroup, ListenerSettings,
        LoadBalancer, StickySession,
    };

    fn store() -> Store {
        let mut store = Store::new();
        store.balancers.insert(
            "lb-1".into(),
            LoadBalancer {
                id: "lb-1".into(),
                name: "web".into(),
                address: "127.240.0.1".parse().expect("vip"),
                address_type: AddressType::Internet,
                spec: "slb.s1.small".into(),
                tags: BTreeMap::new(),
                created_at: 0,
            },
        );
        store.groups.insert(
            "sg-1".into(),
            BackendServerGroup {
                id: "sg-1".into(),
                load_balancer_id: "lb-1".into(),
                name: "nodes".into(),
                servers: vec![BackendServer {
                    address: "10.0.0.1".parse().expect("addr"),
                    port: 30080,
                    weight: 40,
                    description: String::new(),
                }],
            },
        );
        store.acls.insert(
            "acl-1".into(),
            Acl {
                id: "acl-1".into(),
                name: "office".into(),
                entries: vec![AclEntry::new("192.0.2.0/24".parse().expect("cidr"))],
                tags: BTreeMap::new(),
            },
        );
        store
    }

    fn listener(
        id: &str,
        port: u16,
        protocol: ListenerProtocol,
        settings: ListenerSettings,
    ) -> Listener {
        Listener {
            id: id.into(),
            load_balancer_id: "lb-1".into(),
            port,
            protocol,
            settings,
        }
    }

    fn settings() -> ListenerSettings {
        ListenerSettings {
            backend_server_group_id: "sg-1".into(),
            health_check: HealthCheck::default(),
            scheduler: SchedulerKind::Wrr,
            acl: None,
            sticky_session: None,
            description: String::new(),
        }
    }

    #[test]
    fn a_balancer_forwards_its_listeners_in_port_order() {
        let mut store = store();
        let udp = listener("lsn-b", 53, ListenerProtocol::Udp, settings());
        let tcp = ListenerSettings {
            scheduler: SchedulerKind::Wlc,
            acl: Some(ListenerAcl {
                acl_id: "acl-1".into(),
                mode: AclMode::Black,
            }),
            sticky_session: Some(StickySession {
                timeout_seconds: 60,
            }),
            ..settings()
        };
        let tcp = listener("lsn-a", 443, ListenerProtocol::Tcp, tcp);
        store.listeners.insert(tcp.id.clone(), tcp);
        store.listeners.insert(udp.id.clone(), udp);

        let drain = Duration::from_secs(7);
        let fwd = balancer_forwarding(&store, "lb-1", drain).expect("balancer exists");
        assert_eq!(fwd.vip.to_string(), "127.240.0.1");
        let ports: Vec<_> = fwd
            .listeners
            .iter()
            .map(|l| (l.port, l.transport))
            .collect();
        assert_eq!(ports, [(53, Transport::Udp), (443, Transport::Tcp)]);

        let tcp = &fwd.listeners[1];
        assert_eq!(
            tcp.backends,
            [BackendConfig {
                addr: "10.0.0.1:30080".parse().expect("addr"),
                weight: 40
            }]
        );
        assert_eq!(tcp.scheduler, Scheduler::Wlc);
        assert_eq!(
            tcp.access,
            AccessControl::Deny(vec!["192.0.2.0/24".parse().expect("net")])
        );
        assert_eq!(tcp.sticky_timeout, Some(Duration::from_secs(60)));
        assert_eq!(tcp.drain_timeout, drain);
        assert_eq!(fwd.listeners[0].access, AccessControl::AllowAll);

        assert_eq!(balancer_forwarding(&store, "lb-gone", drain), None);
    }

    #[test]
    fn health_checks_become_probes() {
        let http = |port, path: Option<&str>| HealthCheck {
            kind: HealthCheckType::Http,
            port,
            path: path.map(str::to_string),
            ..HealthCheck::default()
        };
        let cases = [
            (
                "tcp check connects",
                HealthCheck::default(),
                ProbeKind::TcpConnect,
            ),
            (
                "disabled check probes nothing",
                HealthCheck {
                    enabled: false,
                    ..http(Some(10256), None)
                },
                ProbeKind::Disabled,
            ),
            (
                "http check without a path asks for /",
                http(Some(10256), None),
                ProbeKind::Http {
                    port: 10256,
                    path: "/".into(),
                },
            ),
            (
                "http check keeps its path",
                http(Some(10256), Some("/healthz")),
                ProbeKind::Http {
                    port: 10256,
                    path: "/healthz".into(),
                },
            ),
            (
                "http check without a port connects",
                http(None, None),
                ProbeKind::TcpConnect,
            ),
        ];
        for (desc, hc, expected) in cases {
            assert_eq!(probe(&hc), expected, "{desc}");
        }
    }
}
