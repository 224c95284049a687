//! The OpenAPI 3.1 description of the mock cloud's API, served at
//! `/openapi.json`: the operations listed here, every body's schema derived
//! from its Rust type. `scripts/schemathesis.sh` checks the server keeps it.

use serde_json::{Value, json};

use super::api::{TAG_FILTER_PATTERN, TagFilter};
use super::limits::{CLIENT_TOKEN_MAX_CHARS, CLIENT_TOKEN_PATTERN};
use super::model::CLIENT_TOKEN_HEADER;
use super::state::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

fn op(id: &str, summary: &str, body: Option<&str>, ok: (&str, Option<&str>)) -> Value {
    let mut o = json!({
        "operationId": id,
        "summary": summary,
        "responses": {
            ok.0: match ok.1 {
                Some(schema) => json!({
                    "description": "success",
                    "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
                }),
                None => json!({"description": "success"}),
            },
            "400": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "409": {"$ref": "#/components/responses/Conflict"},
            "429": {"$ref": "#/components/responses/Throttled"},
            "503": {"$ref": "#/components/responses/Error"}
        }
    });
    if let Some(schema) = body {
        o["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
        });
    }
    o
}

/// A create that takes an idempotency token: a replay answers 200 with the
/// object the first call made.
fn with_token(mut o: Value) -> Value {
    o["parameters"] = json!([{"$ref": "#/components/parameters/ClientToken"}]);
    if let Some(created) = o["responses"].get("201").cloned() {
        let mut replayed = created;
        replayed["description"] =
            json!("replayed: the object an earlier call with the same x-client-token made");
        o["responses"]["200"] = replayed;
    }
    o
}

/// A list call: paged, and filtered by tags where the server takes them.
fn with_list(mut o: Value, tags: TagFilter) -> Value {
    let mut params = vec![
        json!({"$ref": "#/components/parameters/PageSize"}),
        json!({"$ref": "#/components/parameters/PageToken"}),
    ];
    if tags == TagFilter::Accepted {
        params.push(json!({"$ref": "#/components/parameters/Tag"}));
    }
    o["parameters"] = Value::Array(params);
    o
}

/// The document of a cloud whose VIPs come from `vips`.
pub fn document(vips: ipnet::IpNet) -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "portico mock SLB cloud",
            "version": "1",
            "description": "An Alibaba-SLB-style API: load balancers with VIPs, listeners, backend server groups, ACLs and tags. Errors are {code, message, request_id}; every response carries x-request-id; creates are idempotent under the x-client-token header."
        },
        "paths": paths(),
        "components": components(vips),
    })
}

fn paths() -> Value {
    use super::api::paths::*;
    let lb = || json!([{"$ref": "#/components/parameters/Lb"}]);
    let lb_id =
        || json!([{"$ref": "#/components/parameters/Lb"}, {"$ref": "#/components/parameters/Id"}]);
    let items = [
        (
            LOAD_BALANCERS,
            json!({
                "get": with_list(op("DescribeLoadBalancers", "List balancers, optionally filtered by tags", None, ("200", Some("LoadBalancerPage"))), TagFilter::Accepted),
                "post": with_token(op("CreateLoadBalancer", "Create a balancer (201; 200 when replayed from a client token)", Some("CreateLoadBalancerRequest"), ("201", Some("LoadBalancer"))))
            }),
        ),
        (
            LOAD_BALANCER,
            json!({
                "parameters": lb(),
                "get": op("DescribeLoadBalancer", "Describe a balancer", None, ("200", Some("LoadBalancer"))),
                "patch": op("ModifyLoadBalancer", "Change name, spec, add or remove tags", Some("UpdateLoadBalancerRequest"), ("200", Some("LoadBalancer"))),
                "delete": op("DeleteLoadBalancer", "Delete a balancer with its listeners and groups; frees its VIP", None, ("204", None))
            }),
        ),
        (
            LISTENERS,
            json!({
                "parameters": lb(),
                "get": with_list(op("DescribeListeners", "List listeners", None, ("200", Some("ListenerPage"))), TagFilter::Refused),
                "post": with_token(op("CreateListener", "Create a listener; 409 ListenerAlreadyExists on a port/protocol clash, 409 ForwardingFailed when the data plane cannot listen", Some("CreateListenerRequest"), ("201", Some("Listener"))))
            }),
        ),
        (
            LISTENER,
            json!({
                "parameters": lb_id(),
                "get": op("DescribeListener", "Describe a listener", None, ("200", Some("Listener"))),
                "put": op("ModifyListener", "Replace the listener's settings in place", Some("ListenerSettings"), ("200", Some("Listener"))),
                "delete": op("DeleteListener", "Delete a listener", None, ("204", None))
            }),
        ),
        (
            GROUPS,
            json!({
                "parameters": lb(),
                "get": with_list(op("DescribeBackendServerGroups", "List backend server groups", None, ("200", Some("BackendServerGroupPage"))), TagFilter::Refused),
                "post": with_token(op("CreateBackendServerGroup", "Create a backend server group", Some("CreateBackendServerGroupRequest"), ("201", Some("BackendServerGroup"))))
            }),
        ),
        (
            GROUP,
            json!({
                "parameters": lb_id(),
                "get": op("DescribeBackendServerGroup", "Describe a group", None, ("200", Some("BackendServerGroup"))),
                "delete": op("DeleteBackendServerGroup", "Delete a group no listener uses", None, ("204", None))
            }),
        ),
        (
            SERVERS,
            json!({
                "parameters": lb_id(),
                "put": op("SetBackendServers", "Replace the whole server list atomically", Some("ServersRequest"), ("200", Some("BackendServerGroup")))
            }),
        ),
        (
            SERVERS_ADD,
            json!({
                "parameters": lb_id(),
                "post": op("AddBackendServers", "Add servers, or update weight/description of present ones", Some("ServersRequest"), ("200", Some("BackendServerGroup")))
            }),
        ),
        (
            SERVERS_REMOVE,
            json!({
                "parameters": lb_id(),
                "post": op("RemoveBackendServers", "Remove servers by address and port; absent ones are ignored", Some("ServersRequest"), ("200", Some("BackendServerGroup")))
            }),
        ),
        (
            ACLS,
            json!({
                "get": with_list(op("DescribeAcls", "List ACLs, optionally filtered by tags", None, ("200", Some("AclPage"))), TagFilter::Accepted),
                "post": with_token(op("CreateAcl", "Create an ACL", Some("CreateAclRequest"), ("201", Some("Acl"))))
            }),
        ),
        (
            ACL,
            json!({
                "parameters": [{"$ref": "#/components/parameters/Id"}],
                "get": op("DescribeAcl", "Describe an ACL", None, ("200", Some("Acl"))),
                "put": op("ModifyAcl", "Replace the ACL's entries (and name)", Some("UpdateAclRequest"), ("200", Some("Acl"))),
                "delete": op("DeleteAcl", "Delete an ACL no listener uses", None, ("204", None))
            }),
        ),
        (
            FAULTS,
            json!({
                "get": {"operationId": "GetFaults", "responses": {"200": {"description": "the fault config", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FaultConfig"}}}}}},
                "put": {"operationId": "SetFaults", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FaultConfig"}}}}, "responses": {"200": {"description": "the new fault config"}, "400": {"$ref": "#/components/responses/Error"}}}
            }),
        ),
        (
            STATS,
            json!({
                "get": {"operationId": "GetStats", "responses": {"200": {"description": "call counts", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiStats"}}}}}}
            }),
        ),
        (
            STATS_RESET,
            json!({
                "post": {"operationId": "ResetStats", "responses": {"204": {"description": "counters zeroed"}}}
            }),
        ),
    ];
    Value::Object(
        items
            .into_iter()
            .map(|(path, item)| (path.to_string(), item))
            .collect(),
    )
}

fn components(vips: ipnet::IpNet) -> Value {
    json!({
            "parameters": {
                "Lb": {"name": "lb", "in": "path", "required": true, "schema": {"type": "string"}},
                "Id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                "ClientToken": {"name": CLIENT_TOKEN_HEADER, "in": "header", "required": false, "description": "Idempotency token: a create retried with the same token returns the object the first one made, while it exists.", "schema": {"type": "string", "minLength": 1, "maxLength": CLIENT_TOKEN_MAX_CHARS, "pattern": CLIENT_TOKEN_PATTERN}},
                "PageSize": {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE}},
                "PageToken": {"name": "page_token", "in": "query", "schema": {"type": "string"}},
                "Tag": {"name": "tag", "in": "query", "description": "key=value; repeat to require several tags", "schema": {"type": "array", "items": {"type": "string", "pattern": TAG_FILTER_PATTERN}}, "style": "form", "explode": true}
            },
            "responses": {
                "Error": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Conflict": {"description": "conflict with what exists (ListenerAlreadyExists, AddressInUse, AddressExhausted, a group or ACL still in use), or ForwardingFailed: the data plane could not apply the change (e.g. a VIP's port is taken on the host), so the change was not made; retry it later", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Throttled": {"description": "throttled; wait Retry-After seconds (retry-after-ms has milliseconds)", "headers": {"Retry-After": {"schema": {"type": "integer"}}, "retry-after-ms": {"schema": {"type": "integer"}}}, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            },
            "schemas": schemas(vips)
    })
}

/// Every request and response body's schema, derived from the wire types
/// (`model.rs`), so the document and the server cannot disagree on shape.
fn schemas(vips: ipnet::IpNet) -> Value {
    use crate::cloud::model::*;
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    generator.subschema_for::<ErrorBody>();
    generator.subschema_for::<Page<LoadBalancer>>();
    generator.subschema_for::<CreateLoadBalancerRequest>();
    generator.subschema_for::<UpdateLoadBalancerRequest>();
    generator.subschema_for::<Page<Listener>>();
    generator.subschema_for::<CreateListenerRequest>();
    generator.subschema_for::<ListenerSettings>();
    generator.subschema_for::<Page<BackendServerGroup>>();
    generator.subschema_for::<CreateBackendServerGroupRequest>();
    generator.subschema_for::<ServersRequest>();
    generator.subschema_for::<Page<Acl>>();
    generator.subschema_for::<CreateAclRequest>();
    generator.subschema_for::<UpdateAclRequest>();
    generator.subschema_for::<crate::cloud::FaultConfig>();
    generator.subschema_for::<crate::cloud::ApiStats>();
    let mut schemas = generator.take_definitions(true);
    // A requested VIP must lie in this cloud's range: say which.
    if let Some(address) = schemas
        .get_mut("CreateLoadBalancerRequest")
        .and_then(|r| r["properties"].get_mut("address"))
    {
        *address = requested_vip_schema(vips);
    }
    Value::Object(schemas)
}

/// An address inside `vips` (IPv4: a pattern over its octets), or none.
/// An IPv6 range is not described by a pattern: the document then only
/// allows leaving the address to the cloud, which is narrower than the
/// server, so still true.
fn requested_vip_schema(vips: ipnet::IpNet) -> Value {
    let ipnet::IpNet::V4(net) = vips else {
        return json!({"type": "null", "description": "leave it out: the cloud picks a VIP"});
    };
    let any = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])".to_string();
    let octets = net.network().octets();
    let prefix = usize::from(net.prefix_len());
    let parts: Vec<String> = (0..4)
        .map(|i| {
            let fixed_bits = prefix.saturating_sub(i * 8).min(8);
            match fixed_bits {
                0 => any.clone(),
                8 => octets[i].to_string(),
                bits => {
                    let size = 1u16 << (8 - bits);
                    let from = u16::from(octets[i]);
                    let choices: Vec<String> = (from..from + size).map(|v| v.to_string()).collect();
                    format!("({})", choices.join("|"))
                }
            }
        })
        .collect();
    json!({
        "anyOf": [
            {"type": "string", "pattern": format!("^{}$", parts.join("\\."))},
            {"type": "null"}
        ],
        "description": format!("a VIP inside {vips}, free; leave it out to let the cloud pick one")
    })
}

#[cfg(test)]
mod tests {
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
        let pattern = |v: &Value| {
            regex::Regex::new(v["pattern"].as_str().expect("a pattern")).expect("a regex")
        };

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
}
