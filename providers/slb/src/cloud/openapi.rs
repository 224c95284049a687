//! The OpenAPI 3 description of the mock cloud's API, served at `/openapi.json`.

use serde_json::{Value, json};

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
            "409": {"$ref": "#/components/responses/Error"},
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

fn with_token(mut o: Value) -> Value {
    o["parameters"] = json!([{"$ref": "#/components/parameters/ClientToken"}]);
    o
}

fn with_list(mut o: Value, tags: bool) -> Value {
    let mut params = vec![
        json!({"$ref": "#/components/parameters/PageSize"}),
        json!({"$ref": "#/components/parameters/PageToken"}),
    ];
    if tags {
        params.push(json!({"$ref": "#/components/parameters/Tag"}));
    }
    o["parameters"] = Value::Array(params);
    o
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "portico mock SLB cloud",
            "version": "1",
            "description": "An Alibaba-SLB-style API: load balancers with VIPs, listeners, backend server groups, ACLs and tags. Errors are {code, message, request_id}; every response carries x-request-id; creates are idempotent under the x-client-token header."
        },
        "paths": paths(),
        "components": components(),
    })
}

fn paths() -> Value {
    json!({
            "/v1/load-balancers": {
                "get": with_list(op("DescribeLoadBalancers", "List balancers, optionally filtered by tags", None, ("200", Some("LoadBalancerPage"))), true),
                "post": with_token(op("CreateLoadBalancer", "Create a balancer (201; 200 when replayed from a client token)", Some("CreateLoadBalancerRequest"), ("201", Some("LoadBalancer"))))
            },
            "/v1/load-balancers/{lb}": {
                "parameters": [{"$ref": "#/components/parameters/Lb"}],
                "get": op("DescribeLoadBalancer", "Describe a balancer", None, ("200", Some("LoadBalancer"))),
                "patch": op("ModifyLoadBalancer", "Change name, spec, add or remove tags", Some("UpdateLoadBalancerRequest"), ("200", Some("LoadBalancer"))),
                "delete": op("DeleteLoadBalancer", "Delete a balancer with its listeners and groups; frees its VIP", None, ("204", None))
            },
            "/v1/load-balancers/{lb}/listeners": {
                "parameters": [{"$ref": "#/components/parameters/Lb"}],
                "get": with_list(op("DescribeListeners", "List listeners", None, ("200", Some("ListenerPage"))), false),
                "post": with_token(op("CreateListener", "Create a listener; 409 ListenerAlreadyExists on a port/protocol clash", Some("CreateListenerRequest"), ("201", Some("Listener"))))
            },
            "/v1/load-balancers/{lb}/listeners/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Lb"}, {"$ref": "#/components/parameters/Id"}],
                "get": op("DescribeListener", "Describe a listener", None, ("200", Some("Listener"))),
                "put": op("ModifyListener", "Replace the listener's settings in place", Some("ListenerSettings"), ("200", Some("Listener"))),
                "delete": op("DeleteListener", "Delete a listener", None, ("204", None))
            },
            "/v1/load-balancers/{lb}/backend-server-groups": {
                "parameters": [{"$ref": "#/components/parameters/Lb"}],
                "get": with_list(op("DescribeBackendServerGroups", "List backend server groups", None, ("200", Some("BackendServerGroupPage"))), false),
                "post": with_token(op("CreateBackendServerGroup", "Create a backend server group", Some("CreateBackendServerGroupRequest"), ("201", Some("BackendServerGroup"))))
            },
            "/v1/load-balancers/{lb}/backend-server-groups/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Lb"}, {"$ref": "#/components/parameters/Id"}],
                "get": op("DescribeBackendServerGroup", "Describe a group", None, ("200", Some("BackendServerGroup"))),
                "delete": op("DeleteBackendServerGroup", "Delete a group no listener uses", None, ("204", None))
            },
            "/v1/load-balancers/{lb}/backend-server-groups/{id}/servers": {
                "parameters": [{"$ref": "#/components/parameters/Lb"}, {"$ref": "#/components/parameters/Id"}],
                "put": op("SetBackendServers", "Replace the whole server list atomically", Some("ServersRequest"), ("200", Some("BackendServerGroup")))
            },
            "/v1/load-balancers/{lb}/backend-server-groups/{id}/servers/add": {
                "parameters": [{"$ref": "#/components/parameters/Lb"}, {"$ref": "#/components/parameters/Id"}],
                "post": op("AddBackendServers", "Add servers, or update weight/description of present ones", Some("ServersRequest"), ("200", Some("BackendServerGroup")))
            },
            "/v1/load-balancers/{lb}/backend-server-groups/{id}/servers/remove": {
                "parameters": [{"$ref": "#/components/parameters/Lb"}, {"$ref": "#/components/parameters/Id"}],
                "post": op("RemoveBackendServers", "Remove servers by address and port; absent ones are ignored", Some("ServersRequest"), ("200", Some("BackendServerGroup")))
            },
            "/v1/acls": {
                "get": with_list(op("DescribeAcls", "List ACLs, optionally filtered by tags", None, ("200", Some("AclPage"))), true),
                "post": with_token(op("CreateAcl", "Create an ACL", Some("CreateAclRequest"), ("201", Some("Acl"))))
            },
            "/v1/acls/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Id"}],
                "get": op("DescribeAcl", "Describe an ACL", None, ("200", Some("Acl"))),
                "put": op("ModifyAcl", "Replace the ACL's entries (and name)", Some("UpdateAclRequest"), ("200", Some("Acl"))),
                "delete": op("DeleteAcl", "Delete an ACL no listener uses", None, ("204", None))
            },
            "/admin/faults": {
                "get": {"operationId": "GetFaults", "responses": {"200": {"description": "the fault config", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FaultConfig"}}}}}},
                "put": {"operationId": "SetFaults", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FaultConfig"}}}}, "responses": {"200": {"description": "the new fault config"}, "400": {"$ref": "#/components/responses/Error"}}}
            },
            "/admin/stats": {
                "get": {"operationId": "GetStats", "responses": {"200": {"description": "call counts", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiStats"}}}}}}
            },
            "/admin/stats/reset": {
                "post": {"operationId": "ResetStats", "responses": {"204": {"description": "counters zeroed"}}}
            }
    })
}

fn components() -> Value {
    let port = json!({"type": "integer", "minimum": 1, "maximum": 65535});
    json!({
            "parameters": {
                "Lb": {"name": "lb", "in": "path", "required": true, "schema": {"type": "string"}},
                "Id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                "ClientToken": {"name": "x-client-token", "in": "header", "required": false, "description": "Idempotency token (1..=64 chars): a create retried with the same token returns the object the first one made, while it exists.", "schema": {"type": "string"}},
                "PageSize": {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
                "PageToken": {"name": "page_token", "in": "query", "schema": {"type": "string"}},
                "Tag": {"name": "tag", "in": "query", "description": "key=value; repeat to require several tags", "schema": {"type": "array", "items": {"type": "string"}}, "style": "form", "explode": true}
            },
            "responses": {
                "Error": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Throttled": {"description": "throttled; wait Retry-After seconds (retry-after-ms has milliseconds)", "headers": {"Retry-After": {"schema": {"type": "integer"}}, "retry-after-ms": {"schema": {"type": "integer"}}}, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            },
            "schemas": schemas(&port)
    })
}

fn schemas(port: &Value) -> Value {
    let mut out = serde_json::Map::new();
    out.extend(schemas_a(port));
    out.extend(schemas_b(port));
    Value::Object(out)
}

fn object(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn schemas_a(port: &Value) -> serde_json::Map<String, Value> {
    object(json!({
                "Error": {"type": "object", "required": ["code", "message", "request_id"], "properties": {"code": {"type": "string", "example": "InvalidParameter"}, "message": {"type": "string"}, "request_id": {"type": "string"}}},
                "Tags": {"type": "object", "additionalProperties": {"type": "string"}},
                "LoadBalancer": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "address": {"type": "string"}, "address_type": {"type": "string", "enum": ["internet", "intranet"]}, "spec": {"type": "string"}, "tags": {"$ref": "#/components/schemas/Tags"}, "created_at": {"type": "integer"}}},
                "LoadBalancerPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/LoadBalancer"}}, "next_page_token": {"type": "string"}}},
                "CreateLoadBalancerRequest": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 80}, "address_type": {"type": "string", "enum": ["internet", "intranet"]}, "spec": {"type": "string", "enum": crate::cloud::model::BALANCER_SPECS}, "address": {"type": "string"}, "tags": {"$ref": "#/components/schemas/Tags"}}},
                "UpdateLoadBalancerRequest": {"type": "object", "additionalProperties": false, "properties": {"name": {"type": "string"}, "spec": {"type": "string"}, "add_tags": {"$ref": "#/components/schemas/Tags"}, "remove_tags": {"type": "array", "items": {"type": "string"}}}},
                "HealthCheck": {"type": "object", "additionalProperties": false, "properties": {"enabled": {"type": "boolean", "default": true}, "type": {"type": "string", "enum": ["tcp", "http"]}, "port": port, "path": {"type": "string"}, "interval_seconds": {"type": "integer", "minimum": 1, "maximum": 50, "default": 2}, "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 300, "default": 5}, "healthy_threshold": {"type": "integer", "minimum": 2, "maximum": 10, "default": 3}, "unhealthy_threshold": {"type": "integer", "minimum": 2, "maximum": 10, "default": 3}}},
                "ListenerSettings": {"type": "object", "additionalProperties": false, "required": ["backend_server_group_id"], "properties": {"backend_server_group_id": {"type": "string"}, "health_check": {"$ref": "#/components/schemas/HealthCheck"}, "scheduler": {"type": "string", "enum": ["wrr", "wlc"]}, "acl": {"type": "object", "properties": {"acl_id": {"type": "string"}, "mode": {"type": "string", "enum": ["white", "black"]}}}, "sticky_session": {"type": "object", "properties": {"timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 86400}}}, "description": {"type": "string"}}},
                "CreateListenerRequest": {"allOf": [{"type": "object", "required": ["port", "protocol"], "properties": {"port": port, "protocol": {"type": "string", "enum": ["tcp", "udp"]}}}, {"$ref": "#/components/schemas/ListenerSettings"}]},
                "Listener": {"allOf": [{"type": "object", "properties": {"id": {"type": "string"}, "load_balancer_id": {"type": "string"}, "port": port, "protocol": {"type": "string"}}}, {"$ref": "#/components/schemas/ListenerSettings"}]},
    }))
}

fn schemas_b(port: &Value) -> serde_json::Map<String, Value> {
    object(json!({
                "ListenerPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Listener"}}, "next_page_token": {"type": "string"}}},
                "BackendServer": {"type": "object", "additionalProperties": false, "required": ["address", "port"], "properties": {"address": {"type": "string"}, "port": port, "weight": {"type": "integer", "minimum": 0, "maximum": 100, "default": 100}, "description": {"type": "string"}}},
                "BackendServerGroup": {"type": "object", "properties": {"id": {"type": "string"}, "load_balancer_id": {"type": "string"}, "name": {"type": "string"}, "servers": {"type": "array", "items": {"$ref": "#/components/schemas/BackendServer"}}}},
                "BackendServerGroupPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/BackendServerGroup"}}, "next_page_token": {"type": "string"}}},
                "CreateBackendServerGroupRequest": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {"name": {"type": "string"}, "servers": {"type": "array", "items": {"$ref": "#/components/schemas/BackendServer"}}}},
                "ServersRequest": {"type": "object", "additionalProperties": false, "required": ["servers"], "properties": {"servers": {"type": "array", "items": {"$ref": "#/components/schemas/BackendServer"}}}},
                "AclEntry": {"type": "object", "additionalProperties": false, "required": ["cidr"], "properties": {"cidr": {"type": "string", "example": "10.0.0.0/8"}, "description": {"type": "string"}}},
                "Acl": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AclEntry"}}, "tags": {"$ref": "#/components/schemas/Tags"}}},
                "AclPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Acl"}}, "next_page_token": {"type": "string"}}},
                "CreateAclRequest": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {"name": {"type": "string"}, "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AclEntry"}}, "tags": {"$ref": "#/components/schemas/Tags"}}},
                "UpdateAclRequest": {"type": "object", "additionalProperties": false, "required": ["entries"], "properties": {"name": {"type": "string"}, "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AclEntry"}}}},
                "FaultRule": {"type": "object", "additionalProperties": false, "properties": {"latency_ms": {"type": "integer"}, "error_rate": {"type": "number", "minimum": 0, "maximum": 1}, "error_every": {"type": "integer"}, "throttle_rate": {"type": "number", "minimum": 0, "maximum": 1}, "throttle_every": {"type": "integer"}, "retry_after_ms": {"type": "integer"}}},
                "FaultConfig": {"type": "object", "additionalProperties": false, "properties": {"default": {"$ref": "#/components/schemas/FaultRule"}, "operations": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/FaultRule"}}}},
                "ApiStats": {"type": "object", "properties": {"calls": {"type": "object", "additionalProperties": {"type": "integer"}}, "mutating_calls": {"type": "integer"}, "faults_injected": {"type": "integer"}, "errors": {"type": "object", "additionalProperties": {"type": "integer"}}}}
    }))
}
