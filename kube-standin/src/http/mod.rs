//! The HTTP surface: one handler that parses Kubernetes API paths and
//! dispatches to the store, discovery and table rendering; watch streams
//! are in [`watch`].

mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::StandinError;
use crate::discovery;
use crate::patch::{self, PatchType};
use crate::record::{RecordedRequest, Recorder};
use crate::resources::ResourceType;
use crate::selectors::Selectors;
use crate::store::{self, DeleteOptions, ListParams, Preconditions, Store, WriteOptions};
use crate::table::{self, IncludeObject};

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub(crate) struct AppState {
    pub store: Store,
    pub recorder: Recorder,
    pub server_address: String,
    pub bookmark_interval: Duration,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// A parsed resource request path.
#[derive(Debug, Default, Clone)]
struct ResourcePath {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

#[derive(Debug)]
enum Target {
    Version,
    Health,
    ApiVersions,
    GroupList,
    Group(String),
    ResourceList(String, String),
    Resource(ResourcePath),
    NotFound,
}

fn parse_target(path: &str, store: &Store) -> Target {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Target::Version,
        ["healthz"] | ["readyz"] | ["livez"] => Target::Health,
        ["api"] => Target::ApiVersions,
        ["api", v] => Target::ResourceList(String::new(), v.to_string()),
        ["api", v, rest @ ..] => resource_path("", v, rest, store),
        ["apis"] => Target::GroupList,
        ["apis", g] => Target::Group(g.to_string()),
        ["apis", g, v] => Target::ResourceList(g.to_string(), v.to_string()),
        ["apis", g, v, rest @ ..] => resource_path(g, v, rest, store),
        _ => Target::NotFound,
    }
}

fn resource_path(group: &str, version: &str, rest: &[&str], store: &Store) -> Target {
    let reg = store.registry();
    let mut rp = ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        ..ResourcePath::default()
    };
    let namespaced_here = rest.len() >= 3
        && rest[0] == "namespaces"
        && reg
            .find(group, version, rest[2])
            .is_some_and(|t| t.namespaced);
    let tail = if namespaced_here {
        rp.namespace = Some(rest[1].to_string());
        &rest[2..]
    } else {
        rest
    };
    if tail.is_empty() || tail.len() > 3 {
        return Target::NotFound;
    }
    rp.plural = tail[0].to_string();
    rp.name = tail.get(1).map(|s| s.to_string());
    rp.subresource = tail.get(2).map(|s| s.to_string());
    Target::Resource(rp)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &StandinError) -> Response {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status())
}

fn not_found_path() -> StandinError {
    StandinError::UnknownResource(String::new())
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0.into_iter().collect())
        .unwrap_or_default();
    let mut rec = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        verb: "get".into(),
        content_type: header_str(&headers, header::CONTENT_TYPE),
        user_agent: header_str(&headers, header::USER_AGENT),
        field_manager: query.get("fieldManager").cloned(),
        ..RecordedRequest::default()
    };
    let target = parse_target(uri.path(), &st.store);
    let resp = match target {
        Target::Resource(rp) => {
            rec.group = rp.group.clone();
            rec.version = rp.version.clone();
            rec.resource = rp.plural.clone();
            rec.subresource = rp.subresource.clone().unwrap_or_default();
            rec.namespace = rp.namespace.clone().unwrap_or_default();
            rec.name = rp.name.clone().unwrap_or_default();
            let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            rec.verb = match (&method, rp.name.is_some()) {
                (&Method::GET, true) => "get",
                (&Method::GET, false) if watch => "watch",
                (&Method::GET, false) => "list",
                (&Method::POST, _) => "create",
                (&Method::PUT, _) => "update",
                (&Method::PATCH, _) => "patch",
                (&Method::DELETE, true) => "delete",
                (&Method::DELETE, false) => "deletecollection",
                _ => "unknown",
            }
            .to_string();
            if method == Method::PATCH {
                rec.patch_type = rec
                    .content_type
                    .as_deref()
                    .and_then(PatchType::from_content_type)
                    .map(|t| t.as_str().to_string());
            }
            let ctx = Ctx {
                st: &st,
                query: &query,
                headers: &headers,
            };
            match resource_request(&ctx, &method, &rp, watch, &body).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, path = %uri.path(), %method, "request failed");
                    error_response(&e)
                }
            }
        }
        Target::Version => json_response(StatusCode::OK, &discovery::version()),
        Target::Health => {
            let mut r = Response::new(Body::from("ok"));
            *r.status_mut() = StatusCode::OK;
            r
        }
        Target::ApiVersions => {
            json_response(StatusCode::OK, &discovery::api_versions(&st.server_address))
        }
        Target::GroupList => json_response(
            StatusCode::OK,
            &discovery::api_group_list(&st.store.registry()),
        ),
        Target::Group(g) => match discovery::api_group(&st.store.registry(), &g) {
            Some(v) => json_response(StatusCode::OK, &v),
            None => error_response(&not_found_path()),
        },
        Target::ResourceList(g, v) => {
            match discovery::api_resource_list(&st.store.registry(), &g, &v) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => error_response(&not_found_path()),
            }
        }
        Target::NotFound => error_response(&not_found_path()),
    };
    rec.status = resp.status().as_u16();
    tracing::trace!(method = %rec.method, path = %rec.path, status = rec.status, "request");
    st.recorder.push(rec);
    resp
}

struct Ctx<'a> {
    st: &'a AppState,
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
}

impl Ctx<'_> {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }

    fn accept(&self) -> String {
        header_str(self.headers, header::ACCEPT).unwrap_or_default()
    }

    fn wants_table(&self) -> bool {
        table::wants_table(&self.accept())
    }

    fn include(&self) -> IncludeObject {
        IncludeObject::parse(self.q("includeObject"))
    }

    fn dry_run(&self) -> bool {
        self.q("dryRun").is_some()
    }

    fn selectors(&self, rt: &ResourceType) -> Result<Selectors, StandinError> {
        let selectors = Selectors::parse(self.q("labelSelector"), self.q("fieldSelector"))?;
        selectors.fields.check_supported(rt)?;
        Ok(selectors)
    }
}

/// Set the apiVersion to the version requested (objects are stored once per
/// group/resource, whichever version wrote them).
fn present(rt: &ResourceType, mut obj: Value) -> Value {
    if obj.is_object() {
        obj["apiVersion"] = json!(rt.api_version());
    }
    obj
}

fn parse_object(ctx: &Ctx<'_>, body: &[u8]) -> Result<Value, StandinError> {
    let ct = header_str(ctx.headers, header::CONTENT_TYPE).unwrap_or_default();
    let parsed = if ct.contains("yaml") {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| StandinError::BadRequest(format!("invalid request body: {e}")))
}

fn check_kind(rt: &ResourceType, obj: &Value) -> Result<(), StandinError> {
    if let Some(k) = obj["kind"].as_str()
        && !k.is_empty()
        && k != rt.kind
    {
        return Err(StandinError::BadRequest(format!(
            "the body of the request was in an unknown format - kind {k} does not match the resource {}",
            rt.qualified_name()
        )));
    }
    Ok(())
}

async fn resource_request(
    ctx: &Ctx<'_>,
    method: &Method,
    rp: &ResourcePath,
    watch: bool,
    body: &[u8],
) -> Result<Response, StandinError> {
    let rt = ctx
        .st
        .store
        .registry()
        .find(&rp.group, &rp.version, &rp.plural)
        .cloned()
        .ok_or_else(not_found_path)?;
    if rp.namespace.is_some() && !rt.namespaced {
        return Err(not_found_path());
    }
    if rt.namespaced
        && rp.namespace.is_none()
        && (rp.name.is_some() || *method != Method::GET && *method != Method::DELETE)
    {
        return Err(not_found_path());
    }
    let status = match rp.subresource.as_deref() {
        None => false,
        Some("status") if rt.has_status && rp.name.is_some() => true,
        Some(_) => return Err(not_found_path()),
    };
    let ns = rp.namespace.clone().unwrap_or_default();
    let store = &ctx.st.store;
    let write = WriteOptions {
        dry_run: ctx.dry_run(),
        status,
        field_manager: ctx.q("fieldManager").map(str::to_string),
        force: ctx.flag("force"),
        reset_status_on_create: true,
        require_namespace: true,
    };
    match (method, rp.name.as_deref()) {
        (&Method::GET, Some(name)) => {
            let obj = present(&rt, store.get(&rt, &ns, name)?);
            if ctx.wants_table() {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&rt, &[obj], meta, ctx.include()),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        (&Method::GET, None) if watch => watch::start(ctx, &rt, rp.namespace.clone()),
        (&Method::GET, None) => {
            let params = ListParams {
                namespace: rp.namespace.clone(),
                selectors: ctx.selectors(&rt)?,
                limit: ctx.q("limit").and_then(|l| l.parse().ok()),
                continue_token: ctx.q("continue").map(str::to_string),
                resource_version: ctx.q("resourceVersion").map(str::to_string),
                resource_version_match: ctx.q("resourceVersionMatch").map(str::to_string),
            };
            let mut page = store.list(&rt, &params)?;
            page.items = page.items.into_iter().map(|o| present(&rt, o)).collect();
            if ctx.wants_table() {
                let mut meta = json!({"resourceVersion": page.rv.to_string()});
                if let Some(c) = &page.continue_token {
                    meta["continue"] = json!(c);
                }
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&rt, &page.items, meta, ctx.include()),
                ));
            }
            Ok(json_response(StatusCode::OK, &store::list_body(&rt, page)))
        }
        (&Method::POST, None) => {
            let obj = parse_object(ctx, body)?;
            check_kind(&rt, &obj)?;
            let created = store.create(&rt, &ns, obj, &write)?;
            Ok(json_response(StatusCode::CREATED, &present(&rt, created)))
        }
        (&Method::PUT, Some(name)) => {
            let obj = parse_object(ctx, body)?;
            check_kind(&rt, &obj)?;
            let out = store.replace(&rt, &ns, name, obj, &write)?;
            Ok(json_response(StatusCode::OK, &present(&rt, out)))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = header_str(ctx.headers, header::CONTENT_TYPE).unwrap_or_default();
            let ty = PatchType::from_content_type(&ct).ok_or_else(|| {
                StandinError::UnsupportedMediaType(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"))
            })?;
            let patch_body = patch::parse_body(ty, body)?;
            let (out, created) = store.patch(&rt, &ns, name, ty, &patch_body, &write)?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &present(&rt, out)))
        }
        (&Method::DELETE, Some(name)) => {
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(body)
                    .map_err(|e| StandinError::BadRequest(format!("invalid delete options: {e}")))?
            };
            let delete = DeleteOptions {
                preconditions: Preconditions {
                    uid: opts["preconditions"]["uid"].as_str().map(str::to_string),
                    resource_version: opts["preconditions"]["resourceVersion"]
                        .as_str()
                        .map(str::to_string),
                },
                dry_run: ctx.dry_run() || opts["dryRun"].as_array().is_some_and(|a| !a.is_empty()),
            };
            let out = store.delete(&rt, &ns, name, &delete)?;
            if out["metadata"]["deletionTimestamp"].is_string() || delete.dry_run {
                return Ok(json_response(StatusCode::OK, &present(&rt, out)));
            }
            Ok(json_response(StatusCode::OK, &success_status(&rt, &out)))
        }
        (&Method::DELETE, None) => {
            let params = ListParams {
                namespace: rp.namespace.clone(),
                selectors: ctx.selectors(&rt)?,
                ..ListParams::default()
            };
            let page = store.list(&rt, &params)?;
            let delete = DeleteOptions {
                dry_run: ctx.dry_run(),
                ..DeleteOptions::default()
            };
            let mut items = Vec::new();
            for o in page.items {
                let ons = o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let oname = o["metadata"]["name"].as_str().unwrap_or("").to_string();
                match store.delete(&rt, &ons, &oname, &delete) {
                    Ok(d) => items.push(present(&rt, d)),
                    Err(StandinError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let list = json!({
                "kind": format!("{}List", rt.kind),
                "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": store.resource_version().to_string()},
                "items": items,
            });
            Ok(json_response(StatusCode::OK, &list))
        }
        _ => Err(StandinError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            rt.qualified_name()
        ))),
    }
}

fn success_status(rt: &ResourceType, obj: &Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": obj["metadata"]["name"],
            "group": rt.group,
            "kind": rt.plural,
            "uid": obj["metadata"]["uid"],
        }
    })
}
