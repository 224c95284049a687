//! Table tests of `defaults.rs` (kept apart so the module reads as its logic).

use super::*;

fn lb(ports: Value) -> Value {
    json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "ports": ports}})
}

#[test]
fn create_defaults() {
    let mut s = lb(json!([{"port": 80}]));
    service(&mut s, None, Allocated::default()).expect("valid");
    let spec = &s["spec"];
    assert_eq!(spec["clusterIP"], "10.96.0.10");
    assert_eq!(spec["clusterIPs"], json!(["10.96.0.10"]));
    assert_eq!(spec["ports"][0]["protocol"], "TCP");
    assert_eq!(spec["ports"][0]["targetPort"], 80);
    assert_eq!(spec["ports"][0]["nodePort"], 30000);
    assert_eq!(spec["externalTrafficPolicy"], "Cluster");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(s["status"], json!({"loadBalancer": {}}));
}

#[test]
fn validation_table() {
    let taken = || {
        let mut a = Allocated::default();
        a.node_ports.insert(30080);
        a
    };
    let cases = [
        ("port 0", lb(json!([{"port": 0}])), "spec.ports[0].port"),
        (
            "port too big",
            lb(json!([{"port": 70000}])),
            "spec.ports[0].port",
        ),
        (
            "nodePort clash",
            lb(json!([{"port": 80, "nodePort": 30080}])),
            "spec.ports[0].nodePort",
        ),
        (
            "nodePort range",
            lb(json!([{"port": 80, "nodePort": 80}])),
            "spec.ports[0].nodePort",
        ),
        (
            "duplicate",
            lb(json!([{"port": 80, "name": "a"}, {"port": 80, "name": "b"}])),
            "spec.ports[1]",
        ),
        (
            "two ports need names",
            lb(json!([{"port": 80, "name": "a"}, {"port": 443}])),
            "spec.ports[1].name",
        ),
        (
            "port names are DNS labels",
            lb(json!([{"port": 80, "name": "Web"}])),
            "spec.ports[0].name",
        ),
        (
            "port names are unique",
            lb(json!([{"port": 80, "name": "a"}, {"port": 443, "name": "a"}])),
            "spec.ports[1].name",
        ),
        ("no ports", lb(json!([])), "spec.ports"),
        (
            "bad type",
            json!({"spec": {"type": "Foo", "ports": [{"port": 1}]}}),
            "spec.type",
        ),
    ];
    for (desc, mut s, field) in cases {
        match service(&mut s, None, taken()) {
            Err(StandinError::Invalid { causes, .. }) => {
                assert_eq!(causes[0].0, field, "{desc}")
            }
            other => panic!("{desc}: {other:?}"),
        }
    }
}

#[test]
fn duplicate_node_port_on_update_is_the_allocators_500() {
    let mut s = lb(json!([
        {"port": 53, "protocol": "TCP", "name": "dns-tcp"},
        {"port": 53, "protocol": "UDP", "name": "dns-udp"}
    ]));
    service(&mut s, None, Allocated::default()).expect("valid");
    let np = s["spec"]["ports"][0]["nodePort"].clone();
    assert_eq!(
        s["spec"]["ports"][1]["nodePort"], np,
        "TCP and UDP 53 share"
    );
    // What a strategic merge of 53/UDP by port gives: both UDP, one nodePort.
    let both_udp = json!([
        {"port": 53, "protocol": "UDP", "nodePort": np, "name": "dns"},
        {"port": 53, "protocol": "UDP", "nodePort": np, "name": "dns-udp"}
    ]);
    let mut upd = lb(both_udp.clone());
    match service(&mut upd, Some(&s), Allocated::default()) {
        Err(e @ StandinError::Internal(_)) => {
            assert_eq!(e.to_string(), format!("duplicate nodePort: {{UDP {np}}}"));
            assert_eq!(e.code(), 500);
            assert!(
                e.to_status().get("reason").is_none(),
                "no reason, as upstream"
            );
        }
        other => panic!("{other:?}"),
    }
    // On create, or without nodePorts, validation names the duplicate.
    let mut created = lb(both_udp);
    assert!(matches!(
        service(&mut created, None, Allocated::default()),
        Err(StandinError::Invalid { .. })
    ));
}

#[test]
fn update_keeps_allocations_and_local_gets_health_port() {
    let mut s = lb(json!([{"port": 80}]));
    service(&mut s, None, Allocated::default()).expect("valid");
    let mut upd = lb(json!([{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]));
    upd["spec"]["externalTrafficPolicy"] = json!("Local");
    let mut others = Allocated::default();
    others.cluster_ips.insert("10.96.0.99".into());
    service(&mut upd, Some(&s), others).expect("valid");
    assert_eq!(upd["spec"]["clusterIP"], s["spec"]["clusterIP"]);
    assert_eq!(
        upd["spec"]["ports"][0]["nodePort"],
        s["spec"]["ports"][0]["nodePort"]
    );
    assert!(upd["spec"]["ports"][1]["nodePort"].as_u64().is_some());
    assert!(upd["spec"]["healthCheckNodePort"].as_u64().is_some());
    // back to ClusterIP drops node ports
    let mut cip = upd.clone();
    cip["spec"]["type"] = json!("ClusterIP");
    service(&mut cip, Some(&upd), Allocated::default()).expect("valid");
    assert!(cip["spec"]["ports"][0].get("nodePort").is_none());
    assert!(cip["spec"].get("externalTrafficPolicy").is_none());
}
