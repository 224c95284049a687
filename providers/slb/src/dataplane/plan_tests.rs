use super::*;
use crate::forwarding::{AccessControl, BackendConfig, HealthCheckConfig, ProbeKind, Scheduler};

fn listener(port: u16, transport: Transport, backends: &[u16]) -> ListenerConfig {
    ListenerConfig {
        port,
        transport,
        backends: backends
            .iter()
            .map(|p| BackendConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], *p)),
                weight: 1,
            })
            .collect(),
        health_check: HealthCheckConfig {
            probe: ProbeKind::TcpConnect,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        },
        access: AccessControl::AllowAll,
        scheduler: Scheduler::Wrr,
        drain_timeout: Duration::from_secs(5),
        sticky_timeout: None,
    }
}

fn desired(vip: [u8; 4], listeners: Vec<ListenerConfig>) -> BalancerForwarding {
    BalancerForwarding {
        balancer_id: "lb-1".into(),
        vip: IpAddr::from(vip),
        listeners,
    }
}

fn running(
    vip: [u8; 4],
    ls: Vec<ListenerConfig>,
) -> Option<(IpAddr, BTreeMap<ListenerKey, ListenerConfig>)> {
    Some((
        IpAddr::from(vip),
        ls.into_iter().map(|l| (ListenerKey::of(&l), l)).collect(),
    ))
}

#[test]
fn plan_table() {
    let tcp80 = listener(80, Transport::Tcp, &[1, 2]);
    let tcp80b = listener(80, Transport::Tcp, &[2, 3]);
    let udp53 = listener(53, Transport::Udp, &[1]);
    let tcp53 = listener(53, Transport::Tcp, &[1]);
    let key = |l: &ListenerConfig| ListenerKey::of(l);
    struct Case {
        desc: &'static str,
        current: Option<(IpAddr, BTreeMap<ListenerKey, ListenerConfig>)>,
        desired: BalancerForwarding,
        want: Plan,
    }
    let cases = [
        Case {
            desc: "new balancer binds everything",
            current: None,
            desired: desired([127, 240, 0, 1], vec![tcp80.clone(), udp53.clone()]),
            want: Plan {
                add: vec![udp53.clone(), tcp80.clone()],
                ..Plan::default()
            },
        },
        Case {
            desc: "same config changes nothing",
            current: running([127, 240, 0, 1], vec![tcp80.clone(), udp53.clone()]),
            desired: desired([127, 240, 0, 1], vec![tcp80.clone(), udp53.clone()]),
            want: Plan::default(),
        },
        Case {
            desc: "backend change updates in place",
            current: running([127, 240, 0, 1], vec![tcp80.clone()]),
            desired: desired([127, 240, 0, 1], vec![tcp80b.clone()]),
            want: Plan {
                update: vec![tcp80b.clone()],
                ..Plan::default()
            },
        },
        Case {
            desc: "transport change is a different listener",
            current: running([127, 240, 0, 1], vec![udp53.clone()]),
            desired: desired([127, 240, 0, 1], vec![tcp53.clone()]),
            want: Plan {
                add: vec![tcp53.clone()],
                remove: vec![key(&udp53)],
                ..Plan::default()
            },
        },
        Case {
            desc: "vip change rebinds everything",
            current: running([127, 240, 0, 1], vec![tcp80.clone()]),
            desired: desired([127, 240, 0, 2], vec![tcp80.clone()]),
            want: Plan {
                add: vec![tcp80.clone()],
                remove: vec![key(&tcp80)],
                ..Plan::default()
            },
        },
        Case {
            desc: "duplicate listener: the first wins",
            current: None,
            desired: desired([127, 240, 0, 1], vec![tcp80.clone(), tcp80b.clone()]),
            want: Plan {
                add: vec![tcp80.clone()],
                ..Plan::default()
            },
        },
        Case {
            desc: "no listeners left removes all",
            current: running([127, 240, 0, 1], vec![tcp80.clone()]),
            desired: desired([127, 240, 0, 1], vec![]),
            want: Plan {
                remove: vec![key(&tcp80)],
                ..Plan::default()
            },
        },
    ];
    for case in cases {
        assert_eq!(
            plan(case.current, &case.desired),
            case.want,
            "{}",
            case.desc
        );
    }
}
