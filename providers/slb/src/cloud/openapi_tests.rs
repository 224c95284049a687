//! The document's limits are the server's: each bound the document
//! states is read from it and tried on the server's own validation,
//! which must take the bound and refuse one past it.

use std::collections::BTreeMap;

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue};

use super::*;
use crate::cloud::api::{client_token, list_params};
use crate::cloud::model::*;
use crate::cloud::state::validate::*;

fn doc() -> Value {
    document(crate::cloud::default_vip_range())
}

fn int(v: &Value) -> u32 {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| panic!("an integer: {v}"))
}

fn len(v: &Value) -> usize {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or_else(|| panic!("a length: {v}"))
}

/// `minimum` and `maximum` of an integer schema.
fn bounds(v: &Value) -> (u32, u32) {
    (int(&v["minimum"]), int(&v["maximum"]))
}

/// `check` takes `min` and `max`, and refuses one past each.
fn at_bounds(what: &str, (min, max): (u32, u32), check: impl Fn(u32) -> bool) {
    assert!(
        check(min),
        "{what}: the document's minimum {min} is refused"
    );
    assert!(
        check(max),
        "{what}: the document's maximum {max} is refused"
    );
    assert!(!check(max + 1), "{what}: {} is taken", max + 1);
    if min > 0 {
        assert!(!check(min - 1), "{what}: {} is taken", min - 1);
    }
}

/// `check` takes a text of `max` characters and refuses one more.
fn at_length(what: &str, min: usize, max: usize, check: impl Fn(&str) -> bool) {
    assert!(check(&"a".repeat(max)), "{what}: {max} characters refused");
    assert!(
        !check(&"a".repeat(max + 1)),
        "{what}: {} characters taken",
        max + 1
    );
    if min > 0 {
        assert!(
            !check(&"a".repeat(min - 1)),
            "{what}: {} characters taken",
            min - 1
        );
    }
}

fn http_check() -> HealthCheck {
    HealthCheck {
        kind: HealthCheckType::Http,
        port: Some(10256),
        path: Some("/healthz".into()),
        ..HealthCheck::default()
    }
}

#[test]
fn the_documents_limits_are_the_validators() {
    let d = doc();
    let schemas = &d["components"]["schemas"];

    // Health checks, in both the tcp and the http form.
    let variants = schemas["HealthCheck"]["oneOf"]
        .as_array()
        .expect("tcp and http");
    type Set = fn(&mut HealthCheck, u32);
    let fields: [(&str, Set); 4] = [
        ("interval_seconds", |h, v| h.interval_seconds = v),
        ("timeout_seconds", |h, v| h.timeout_seconds = v),
        ("healthy_threshold", |h, v| h.healthy_threshold = v),
        ("unhealthy_threshold", |h, v| h.unhealthy_threshold = v),
    ];
    for (field, set) in fields {
        for (i, variant) in variants.iter().enumerate() {
            let documented = bounds(&variant["properties"][field]);
            at_bounds(
                &format!("health_check.{field} (form {i})"),
                documented,
                |v| {
                    let mut hc = if i == 0 {
                        HealthCheck::default()
                    } else {
                        http_check()
                    };
                    set(&mut hc, v);
                    check_health("hc", &hc).is_ok()
                },
            );
        }
    }
    let http = &variants[1]["properties"];
    at_bounds("health_check.port", bounds(&http["port"]), |v| {
        let Ok(port) = u16::try_from(v) else {
            return false;
        };
        let hc = HealthCheck {
            port: Some(port),
            ..http_check()
        };
        check_health("hc", &hc).is_ok()
    });
    let path = &http["path"];
    // `/` and then up to `maxLength - 1` more.
    at_length(
        "health_check.path",
        0,
        len(&path["maxLength"]) - 1,
        |rest| {
            let hc = HealthCheck {
                path: Some(format!("/{rest}")),
                ..http_check()
            };
            check_health("hc", &hc).is_ok()
        },
    );

    // Servers: weight and port.
    let server = |port, weight| BackendServer {
        address: "10.0.0.1".parse().expect("ip"),
        port,
        weight,
        description: String::new(),
    };
    let props = &schemas["BackendServer"]["properties"];
    at_bounds("servers[].weight", bounds(&props["weight"]), |w| {
        check_servers("servers", vec![server(80, w)]).is_ok()
    });
    at_bounds("servers[].port", bounds(&props["port"]), |p| {
        check_servers("servers", vec![server(p, 1)]).is_ok()
    });
    at_bounds(
        "listener port",
        bounds(&schemas["CreateListenerRequest"]["properties"]["port"]),
        |p| check_port("port", p).is_ok(),
    );
    at_bounds(
        "sticky_session.timeout_seconds",
        bounds(&schemas["StickySession"]["properties"]["timeout_seconds"]),
        |t| check_sticky("sticky_session", &StickySession { timeout_seconds: t }).is_ok(),
    );

    // Names, descriptions, tags.
    for schema in [
        "CreateLoadBalancerRequest",
        "CreateBackendServerGroupRequest",
        "CreateAclRequest",
    ] {
        let name = &schemas[schema]["properties"]["name"];
        at_length(
            &format!("{schema}.name"),
            len(&name["minLength"]),
            len(&name["maxLength"]),
            |n| check_name("name", n).is_ok(),
        );
    }
    for (schema, field) in [
        ("ListenerSettings", "description"),
        ("BackendServer", "description"),
        ("AclEntry", "description"),
    ] {
        let max = len(&schemas[schema]["properties"][field]["maxLength"]);
        at_length(&format!("{schema}.{field}"), 0, max, |t| {
            check_description(field, t).is_ok()
        });
    }
    let tags = &schemas["CreateLoadBalancerRequest"]["properties"]["tags"];
    let tagged = |pairs: Vec<(String, String)>| {
        check_tags("tags", &pairs.into_iter().collect::<BTreeMap<_, _>>()).is_ok()
    };
    at_length(
        "tag key",
        len(&tags["propertyNames"]["minLength"]),
        len(&tags["propertyNames"]["maxLength"]),
        |k| tagged(vec![(k.to_string(), String::new())]),
    );
    at_length(
        "tag value",
        0,
        len(&tags["additionalProperties"]["maxLength"]),
        |v| tagged(vec![("k".into(), v.to_string())]),
    );
    let most = len(&tags["maxProperties"]);
    let n_tags = |n: usize| (0..n).map(|i| (format!("k{i}"), String::new())).collect();
    assert!(
        tagged(n_tags(most)) && !tagged(n_tags(most + 1)),
        "tag count"
    );

    // Parameters: the client token and the page size.
    let params = &d["components"]["parameters"];
    let token = &params["ClientToken"]["schema"];
    at_length(
        "x-client-token",
        len(&token["minLength"]),
        len(&token["maxLength"]),
        |t| {
            let mut headers = HeaderMap::new();
            headers.insert(
                CLIENT_TOKEN_HEADER,
                HeaderValue::from_str(t).expect("header"),
            );
            client_token(&headers).is_ok()
        },
    );
    let page_size = &params["PageSize"]["schema"];
    at_bounds("page_size", bounds(page_size), |n| {
        let query = Ok(Query(vec![("page_size".to_string(), n.to_string())]));
        list_params(query, TagFilter::Refused).is_ok()
    });
    let default = list_params(Ok(Query(Vec::new())), TagFilter::Refused)
        .expect("no parameters")
        .0
        .size;
    assert_eq!(page_size["default"], default, "default page size");
}

/// Every pattern the document gives agrees with the server on samples
/// of what it must take and refuse: IPv4 and IPv6 CIDRs (each `::`
/// shortening), names, health check paths, client tokens.
#[test]
fn the_documents_patterns_are_the_validators() {
    let d = doc();
    let schemas = &d["components"]["schemas"];
    let pattern =
        |v: &Value| regex::Regex::new(v["pattern"].as_str().expect("a pattern")).expect("a regex");

    let cidr = pattern(&schemas["AclEntry"]["properties"]["cidr"]);
    let takes_cidr = |c: &str| {
        parse_entries(
            "entries",
            vec![AclEntry {
                cidr: c.into(),
                description: String::new(),
            }],
        )
        .is_ok()
    };
    let good = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "192.168.1.7/32",
        "255.255.255.255/32",
        "::/0",
        "::1/128",
        "fd00::/8",
        "FD00:AB::1/64",
        "1:2:3:4:5:6:7:8/128",
        "1:2:3:4:5:6:7::/112",
        "1::8/64",
        "1:2::7:8/64",
        "1:2:3::6:7:8/96",
        "1:2:3:4::5:6:7/96",
        "1:2:3:4:5::6:7/96",
        "1:2:3:4:5:6::7/96",
        "::2:3:4:5:6:7:8/0",
        "0000:0000::ffff/9",
    ];
    for c in good {
        assert!(cidr.is_match(c), "the document refuses {c}");
        assert!(takes_cidr(c), "the server refuses {c}");
    }
    let bad = [
        "10.0.0.0",
        "10.0.0.0/33",
        "010.0.0.0/8",
        "256.0.0.0/8",
        " 10.0.0.0/8",
        "10.0.0.0/8 ",
        "fd00::/129",
        "1:2:3:4:5:6:7:8:9/64",
        "1::2::3/64",
        "12345::/16",
        "fd00:/8",
        ":fd00::/8",
        "fd00::/08",
    ];
    for c in bad {
        assert!(!cidr.is_match(c), "the document takes {c}");
        assert!(!takes_cidr(c), "the server takes {c}");
    }

    let name = pattern(&schemas["CreateLoadBalancerRequest"]["properties"]["name"]);
    for n in ["web", " x ", "\u{85}a"] {
        assert!(name.is_match(n) && check_name("name", n).is_ok(), "{n:?}");
    }
    for n in [" ", "\t\n", "\u{3000}"] {
        assert!(!name.is_match(n) && check_name("name", n).is_err(), "{n:?}");
    }

    let http = &schemas["HealthCheck"]["oneOf"][1]["properties"];
    let path = pattern(&http["path"]);
    let takes_path = |p: &str| {
        let hc = HealthCheck {
            path: Some(p.into()),
            ..http_check()
        };
        check_health("hc", &hc).is_ok()
    };
    for p in ["/", "/healthz", "/a?b=c&d=%20"] {
        assert!(path.is_match(p) && takes_path(p), "{p:?}");
    }
    for p in ["healthz", "/a b", "/\u{e9}", "/\u{85}", "/\u{feff}", ""] {
        assert!(!path.is_match(p) && !takes_path(p), "{p:?}");
    }

    let token = pattern(&d["components"]["parameters"]["ClientToken"]["schema"]);
    let takes_token = |t: &str| {
        let mut headers = HeaderMap::new();
        match HeaderValue::from_str(t) {
            Ok(v) => {
                headers.insert(CLIENT_TOKEN_HEADER, v);
                client_token(&headers).is_ok()
            }
            Err(_) => false,
        }
    };
    for t in ["tok-1", "!~"] {
        assert!(token.is_match(t) && takes_token(t), "{t:?}");
    }
    for t in ["has space", "tab\there", ""] {
        assert!(!token.is_match(t) && !takes_token(t), "{t:?}");
    }
}
