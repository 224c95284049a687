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
#[path = "openapi_tests.rs"]
mod tests;
