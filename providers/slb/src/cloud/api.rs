//! The HTTP layer: routes, request parsing, fault injection, stats, metrics,
//! durable writes and the hand-off to the data plane.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::CloudConfig;
use super::error::ApiError;
use super::faults::{FaultConfig, FaultOutcome, FaultState};
use super::model::*;
use super::sink::ApplierMsg;
use super::state::{DEFAULT_PAGE_SIZE, Effects, MAX_PAGE_SIZE, PageRequest, Store};

/// Counts of API calls, served at `GET /admin/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiStats {
    /// Calls by operation name, including failed and fault-injected ones.
    pub calls: BTreeMap<String, u64>,
    /// Calls of mutating operations (create, update, delete, set/add/remove servers).
    pub mutating_calls: u64,
    /// Calls answered with an injected fault (503 or 429).
    pub faults_injected: u64,
    /// Error responses by error code.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: String,
    pub code: String,
}

/// Prometheus metrics of the API.
#[derive(Debug, Clone, Default)]
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
}

/// The shared state behind every handler.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: CloudConfig,
    pub(crate) store: Mutex<Store>,
    faults: Mutex<FaultState>,
    stats: Mutex<ApiStats>,
    applier: mpsc::UnboundedSender<ApplierMsg>,
    generation: AtomicU64,
    written: tokio::sync::Mutex<u64>,
    pub(crate) metrics: ApiMetrics,
}

pub(crate) type AppState = Arc<Inner>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn new(
        config: CloudConfig,
        store: Store,
        applier: mpsc::UnboundedSender<ApplierMsg>,
    ) -> Self {
        let faults = FaultState::new(config.faults.clone());
        Self {
            config,
            store: Mutex::new(store),
            faults: Mutex::new(faults),
            stats: Mutex::new(ApiStats::default()),
            applier,
            generation: AtomicU64::new(0),
            written: tokio::sync::Mutex::new(0),
            metrics: ApiMetrics::default(),
        }
    }

    /// Send the forwarding of every balancer to the data plane (start-up).
    pub(crate) fn apply_all(&self) {
        let store = lock(&self.store);
        for id in store.balancers.keys() {
            if let Some(fwd) = store.forwarding(id, self.config.drain_timeout) {
                let _ = self.applier.send(ApplierMsg::Apply(fwd, None));
            }
        }
    }

    /// Run a mutation under the lock; on success hand its effects to the
    /// data plane (in order, still under the lock), make it durable, and
    /// return only once the data plane forwards accordingly: what the API
    /// acknowledges is what traffic sees (read-your-writes).
    async fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<(T, Effects), ApiError>,
    ) -> Result<T, ApiError> {
        let mut applied = Vec::new();
        let (value, snapshot) = {
            let mut store = lock(&self.store);
            let (value, effects) = f(&mut store)?;
            for id in &effects.remove {
                let (done, wait) = tokio::sync::oneshot::channel();
                if self
                    .applier
                    .send(ApplierMsg::Remove(id.clone(), Some(done)))
                    .is_ok()
                {
                    applied.push(wait);
                }
            }
            for id in &effects.apply {
                if let Some(fwd) = store.forwarding(id, self.config.drain_timeout) {
                    let (done, wait) = tokio::sync::oneshot::channel();
                    if self
                        .applier
                        .send(ApplierMsg::Apply(fwd, Some(done)))
                        .is_ok()
                    {
                        applied.push(wait);
                    }
                }
            }
            let snapshot = match &self.config.state_file {
                Some(_) => {
                    let bytes = serde_json::to_vec_pretty(&*store)
                        .map_err(|e| ApiError::internal(format!("cannot encode state: {e}")))?;
                    let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                    Some((generation, bytes))
                }
                None => None,
            };
            (value, snapshot)
        };
        if let (Some(path), Some((generation, bytes))) = (&self.config.state_file, snapshot) {
            let mut written = self.written.lock().await;
            if *written < generation {
                let path = path.clone();
                let result = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
                    .await
                    .map_err(|e| ApiError::internal(format!("state writer failed: {e}")))?;
                result.map_err(|e| {
                    tracing::error!(error = %e, "cannot write the state file");
                    ApiError::internal(format!("cannot save state: {e}"))
                })?;
                *written = generation;
            }
        }
        for wait in applied {
            // An error means the applier stopped (the cloud is shutting down).
            let _ = wait.await;
        }
        Ok(value)
    }

    fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }
}

/// Write `bytes` to `path` atomically: temp file in the same directory,
/// fsync, rename over, fsync the directory.
pub(crate) fn write_atomic(path: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The id of the request being served; the middleware sets it.
#[derive(Debug, Clone)]
struct RequestId(String);

async fn request_id_layer(mut req: Request, next: Next) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4().simple());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key(REQUEST_ID_HEADER)
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        resp.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    resp
}

/// An operation of the API, for stats, faults and metrics.
#[derive(Debug, Clone, Copy)]
struct Op {
    name: &'static str,
    mutating: bool,
}

const fn read(name: &'static str) -> Op {
    Op {
        name,
        mutating: false,
    }
}
const fn write(name: &'static str) -> Op {
    Op {
        name,
        mutating: true,
    }
}

/// One API call being served.
struct Call {
    state: AppState,
    request_id: String,
}

impl FromRequestParts<AppState> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4().simple()));
        Ok(Self {
            state: state.clone(),
            request_id,
        })
    }
}

fn error_response(err: &ApiError, request_id: &str, retry_after_ms: Option<u64>) -> Response {
    let body = ErrorBody {
        code: err.code.to_string(),
        message: err.message.clone(),
        request_id: request_id.to_string(),
    };
    let mut resp = (err.status, axum::Json(body)).into_response();
    if let Some(ms) = retry_after_ms {
        let headers = resp.headers_mut();
        headers.insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(ms.div_ceil(1000)),
        );
        headers.insert(
            HeaderName::from_static(RETRY_AFTER_MS_HEADER),
            HeaderValue::from(ms),
        );
    }
    resp
}

impl Call {
    async fn run<F>(self, op: Op, work: F) -> Response
    where
        F: Future<Output = Result<Response, ApiError>>,
    {
        let state = &self.state;
        {
            let mut stats = lock(&state.stats);
            *stats.calls.entry(op.name.to_string()).or_insert(0) += 1;
            if op.mutating {
                stats.mutating_calls += 1;
            }
        }
        let random: f64 = rand::random();
        let (latency, outcome) = lock(&state.faults).decide(op.name, random);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let (result, retry_after_ms) = match outcome {
            FaultOutcome::Proceed => (work.await, None),
            FaultOutcome::Fail => (
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the service is temporarily unavailable (injected fault)",
                )),
                None,
            ),
            FaultOutcome::Throttle { retry_after } => (
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Throttling",
                    "request was denied due to request throttling (injected fault)",
                )),
                Some(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)),
            ),
        };
        if outcome != FaultOutcome::Proceed {
            lock(&state.stats).faults_injected += 1;
        }
        let (code, resp) = match result {
            Ok(resp) => (resp.status().as_u16().to_string(), resp),
            Err(err) => {
                if err.status.is_server_error() && outcome == FaultOutcome::Proceed {
                    tracing::warn!(operation = op.name, code = err.code, message = %err.message, "api call failed");
                } else {
                    tracing::debug!(operation = op.name, code = err.code, message = %err.message, "api call rejected");
                }
                *lock(&state.stats)
                    .errors
                    .entry(err.code.to_string())
                    .or_insert(0) += 1;
                (
                    err.code.to_string(),
                    error_response(&err, &self.request_id, retry_after_ms),
                )
            }
        };
        state
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                operation: op.name.to_string(),
                code,
            })
            .inc();
        resp
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response, ApiError> {
    Ok((status, axum::Json(value)).into_response())
}

fn created<T: Serialize>(c: super::state::Created<T>) -> Result<Response, ApiError> {
    let status = if c.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    json(status, &c.object)
}

fn no_content() -> Result<Response, ApiError> {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Parse a JSON body; errors name the offending field. A number with no
/// fraction is an integer whatever its spelling (`8080.0`), as JSON Schema
/// has it.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut raw: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    integral_floats_to_integers(&mut raw);
    let value: T = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(field, e.into_inner().to_string())
    })?;
    Ok(value)
}

fn integral_floats_to_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && n.is_f64()
                && f.fract() == 0.0
                && (0.0..=u64::MAX as f64).contains(&f)
            {
                // Integral and in range: the cast is exact.
                *value = serde_json::Value::from(f as u64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

fn client_token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(CLIENT_TOKEN_HEADER) {
        None => Ok(None),
        Some(v) => {
            let token = v
                .to_str()
                .map_err(|_| ApiError::invalid(CLIENT_TOKEN_HEADER, "must be visible ASCII"))?;
            if token.is_empty() || token.len() > 64 {
                return Err(ApiError::invalid(
                    CLIENT_TOKEN_HEADER,
                    "must have 1..=64 characters",
                ));
            }
            if !token.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
                return Err(ApiError::invalid(
                    CLIENT_TOKEN_HEADER,
                    "must be visible ASCII without spaces",
                ));
            }
            Ok(Some(token.to_string()))
        }
    }
}

/// Parse list parameters: `page_size`, `page_token` and, where `tags`
/// is allowed, repeated `tag=key=value`. Anything else is rejected.
fn list_params(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allow_tags: bool,
) -> Result<(PageRequest, BTreeMap<String, String>), ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let mut page = PageRequest {
        size: DEFAULT_PAGE_SIZE,
        token: None,
    };
    let mut tags = BTreeMap::new();
    for (key, value) in pairs {
        match key.as_str() {
            "page_size" => {
                let size: usize = value.parse().map_err(|_| {
                    ApiError::invalid("page_size", format!("{value:?} is not a number"))
                })?;
                if size == 0 || size > MAX_PAGE_SIZE {
                    return Err(ApiError::invalid(
                        "page_size",
                        format!("{size} is out of range 1..={MAX_PAGE_SIZE}"),
                    ));
                }
                page.size = size;
            }
            "page_token" => {
                if !value.is_empty() {
                    page.token = Some(value);
                }
            }
            "tag" if allow_tags => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    ApiError::invalid("tag", format!("{value:?} is not key=value"))
                })?;
                tags.insert(k.to_string(), v.to_string());
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown query parameter (expected page_size, page_token or tag)",
                ));
            }
        }
    }
    Ok((page, tags))
}

type ListQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

// ---- load balancers ----

async fn create_balancer(call: Call, headers: HeaderMap, body: Bytes) -> Response {
    let s = call.state.clone();
    call.run(write("CreateLoadBalancer"), async move {
        let token = client_token(&headers)?;
        let req: CreateLoadBalancerRequest = parse(&body)?;
        let result = s
            .mutate(|st| {
                st.create_balancer(&s.config, req, token.as_deref())
                    .map(|c| (c, Effects::default()))
            })
            .await?;
        created(result)
    })
    .await
}

async fn list_balancers(call: Call, query: ListQuery) -> Response {
    let s = call.state.clone();
    call.run(read("DescribeLoadBalancers"), async move {
        let (page, tags) = list_params(query, true)?;
        json(
            StatusCode::OK,
            &s.read(|st| st.list_balancers(&tags, &page)),
        )
    })
    .await
}

async fn describe_balancer(call: Call, Path(id): Path<String>) -> Response {
    let s = call.state.clone();
    call.run(read("DescribeLoadBalancer"), async move {
        json(StatusCode::OK, &s.read(|st| st.describe_balancer(&id))?)
    })
    .await
}

async fn update_balancer(call: Call, Path(id): Path<String>, body: Bytes) -> Response {
    let s = call.state.clone();
    call.run(write("ModifyLoadBalancer"), async move {
        let req: UpdateLoadBalancerRequest = parse(&body)?;
        let lb = s
            .mutate(|st| {
                st.update_balancer(&id, req)
                    .map(|lb| (lb, Effects::default()))
            })
            .await?;
        json(StatusCode::OK, &lb)
    })
    .await
}

async fn delete_balancer(call: Call, Path(id): Path<String>) -> Response {
    let s = call.state.clone();
    call.run(write("DeleteLoadBalancer"), async move {
        s.mutate(|st| st.delete_balancer(&id).map(|e| ((), e)))
            .await?;
        no_content()
    })
    .await
}

// ---- listeners ----

async fn create_listener(
    call: Call,
    Path(lb): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = call.state.clone();
    call.run(write("CreateListener"), async move {
        let token = client_token(&headers)?;
        let req: CreateListenerRequest = parse(&body)?;
        let result = s
            .mutate(|st| st.create_listener(&s.config.quotas, &lb, req, token.as_deref()))
            .await?;
        created(result)
    })
    .await
}

async fn list_listeners(call: Call, Path(lb): Path<String>, query: ListQuery) -> Response {
    let s = call.state.clone();
    call.run(read("DescribeListeners"), async move {
        let (page, _) = list_params(query, false)?;
        json(StatusCode::OK, &s.read(|st| st.list_listeners(&lb, &page))?)
    })
    .await
}

async fn describe_listener(call: Call, Path((lb, id)): Path<(String, String)>) -> Response {
    let s = call.state.clone();
    call.run(read("DescribeListener"), async move {
        json(
            StatusCode::OK,
            &s.read(|st| st.describe_listener(&lb, &id))?,
        )
    })
    .await
}

async fn update_listener(
    call: Call,
    Path((lb, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let s = call.state.clone();
    call.run(write("ModifyListener"), async move {
        let settings: ListenerSettings = parse(&body)?;
        let listener = s
            .mutate(|st| st.update_listener(&lb, &id, settings))
            .await?;
        json(StatusCode::OK, &listener)
    })
    .await
}

async fn delete_listener(call: Call, Path((lb, id)): Path<(String, String)>) -> Response {
    let s = call.state.clone();
    call.run(write("DeleteListener"), async move {
        s.mutate(|st| st.delete_listener(&lb, &id).map(|e| ((), e)))
            .await?;
        no_content()
    })
    .await
}

// ---- backend server groups ----

async fn create_group(
    call: Call,
    Path(lb): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = call.state.clone();
    call.run(write("CreateBackendServerGroup"), async move {
        let token = client_token(&headers)?;
        let req: CreateBackendServerGroupRequest = parse(&body)?;
        let result = s
            .mutate(|st| {
                st.create_group(&s.config.quotas, &lb, req, token.as_deref())
                    .map(|c| (c, Effects::default()))
            })
            .await?;
        created(result)
    })
    .await
}

async fn list_groups(call: Call, Path(lb): Path<String>, query: ListQuery) -> Response {
    let s = call.state.clone();
    call.run(read("DescribeBackendServerGroups"), async move {
        let (page, _) = list_params(query, false)?;
        json(StatusCode::OK, &s.read(|st| st.list_groups(&lb, &page))?)
    })
    .await
}

async fn describe_group(call: Call, Path((lb, id)): Path<(String, String)>) -> Response {
    let s = call.state.clone();
    call.run(read("DescribeBackendServerGroup"), async move {
        json(StatusCode::OK, &s.read(|st| st.describe_group(&lb, &id))?)
    })
    .await
}

async fn delete_group(call: Call, Path((lb, id)): Path<(String, String)>) -> Response {
    let s = call.state.clone();
    call.run(write("DeleteBackendServerGroup"), async move {
        s.mutate(|st| st.delete_group(&lb, &id).map(|()| ((), Effects::default())))
            .await?;
        no_content()
    })
    .await
}

#[derive(Debug, Clone, Copy)]
enum ServersChange {
    Set,
    Add,
    Remove,
}

async fn change_servers(
    call: Call,
    lb: String,
    id: String,
    body: Bytes,
    change: ServersChange,
) -> Response {
    let s = call.state.clone();
    let op = match change {
        ServersChange::Set => write("SetBackendServers"),
        ServersChange::Add => write("AddBackendServers"),
        ServersChange::Remove => write("RemoveBackendServers"),
    };
    call.run(op, async move {
        let req: ServersRequest = parse(&body)?;
        let quotas = &s.config.quotas;
        let group = s
            .mutate(|st| match change {
                ServersChange::Set => st.set_servers(quotas, &lb, &id, req.servers),
                ServersChange::Add => st.add_servers(quotas, &lb, &id, req.servers),
                ServersChange::Remove => st.remove_servers(quotas, &lb, &id, req.servers),
            })
            .await?;
        json(StatusCode::OK, &group)
    })
    .await
}

async fn set_servers(call: Call, Path((lb, id)): Path<(String, String)>, body: Bytes) -> Response {
    change_servers(call, lb, id, body, ServersChange::Set).await
}

async fn add_servers(call: Call, Path((lb, id)): Path<(String, String)>, body: Bytes) -> Response {
    change_servers(call, lb, id, body, ServersChange::Add).await
}

async fn remove_servers(
    call: Call,
    Path((lb, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    change_servers(call, lb, id, body, ServersChange::Remove).await
}

// ---- ACLs ----

async fn create_acl(call: Call, headers: HeaderMap, body: Bytes) -> Response {
    let s = call.state.clone();
    call.run(write("CreateAcl"), async move {
        let token = client_token(&headers)?;
        let req: CreateAclRequest = parse(&body)?;
        let result = s
            .mutate(|st| {
                st.create_acl(&s.config.quotas, req, token.as_deref())
                    .map(|c| (c, Effects::default()))
            })
            .await?;
        created(result)
    })
    .await
}

async fn list_acls(call: Call, query: ListQuery) -> Response {
    let s = call.state.clone();
    call.run(read("DescribeAcls"), async move {
        let (page, tags) = list_params(query, true)?;
        json(StatusCode::OK, &s.read(|st| st.list_acls(&tags, &page)))
    })
    .await
}

async fn describe_acl(call: Call, Path(id): Path<String>) -> Response {
    let s = call.state.clone();
    call.run(read("DescribeAcl"), async move {
        json(StatusCode::OK, &s.read(|st| st.describe_acl(&id))?)
    })
    .await
}

async fn update_acl(call: Call, Path(id): Path<String>, body: Bytes) -> Response {
    let s = call.state.clone();
    call.run(write("ModifyAcl"), async move {
        let req: UpdateAclRequest = parse(&body)?;
        let acl = s
            .mutate(|st| st.update_acl(&s.config.quotas, &id, req))
            .await?;
        json(StatusCode::OK, &acl)
    })
    .await
}

async fn delete_acl(call: Call, Path(id): Path<String>) -> Response {
    let s = call.state.clone();
    call.run(write("DeleteAcl"), async move {
        s.mutate(|st| st.delete_acl(&id).map(|()| ((), Effects::default())))
            .await?;
        no_content()
    })
    .await
}

// ---- admin ----

async fn get_faults(State(s): State<AppState>) -> Response {
    (StatusCode::OK, axum::Json(lock(&s.faults).config.clone())).into_response()
}

async fn put_faults(call: Call, body: Bytes) -> Response {
    let result = parse::<FaultConfig>(&body).and_then(|config| {
        config
            .validate()
            .map_err(|reason| ApiError::invalid("faults", reason))?;
        lock(&call.state.faults).set(config.clone());
        tracing::info!(?config, "faults changed");
        Ok(config)
    });
    match result {
        Ok(config) => (StatusCode::OK, axum::Json(config)).into_response(),
        Err(err) => error_response(&err, &call.request_id, None),
    }
}

async fn get_stats(State(s): State<AppState>) -> Response {
    (StatusCode::OK, axum::Json(lock(&s.stats).clone())).into_response()
}

async fn reset_stats(State(s): State<AppState>) -> Response {
    *lock(&s.stats) = ApiStats::default();
    StatusCode::NO_CONTENT.into_response()
}

async fn openapi(State(s): State<AppState>) -> Response {
    let document = super::openapi::document(s.config.vip_range);
    (StatusCode::OK, axum::Json(document)).into_response()
}

async fn not_found(call: Call) -> Response {
    error_response(
        &ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such route; see /openapi.json",
        ),
        &call.request_id,
        None,
    )
}

async fn method_not_allowed(call: Call) -> Response {
    error_response(
        &ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "this route does not take that method; see /openapi.json",
        ),
        &call.request_id,
        None,
    )
}

pub(crate) fn router(state: AppState) -> Router {
    let lb = "/v1/load-balancers/{lb}";
    Router::new()
        .route(
            "/v1/load-balancers",
            get(list_balancers).post(create_balancer),
        )
        .route(
            lb,
            get(describe_balancer)
                .patch(update_balancer)
                .delete(delete_balancer),
        )
        .route(
            &format!("{lb}/listeners"),
            get(list_listeners).post(create_listener),
        )
        .route(
            &format!("{lb}/listeners/{{id}}"),
            get(describe_listener)
                .put(update_listener)
                .delete(delete_listener),
        )
        .route(
            &format!("{lb}/backend-server-groups"),
            get(list_groups).post(create_group),
        )
        .route(
            &format!("{lb}/backend-server-groups/{{id}}"),
            get(describe_group).delete(delete_group),
        )
        .route(
            &format!("{lb}/backend-server-groups/{{id}}/servers"),
            put(set_servers),
        )
        .route(
            &format!("{lb}/backend-server-groups/{{id}}/servers/add"),
            post(add_servers),
        )
        .route(
            &format!("{lb}/backend-server-groups/{{id}}/servers/remove"),
            post(remove_servers),
        )
        .route("/v1/acls", get(list_acls).post(create_acl))
        .route(
            "/v1/acls/{id}",
            get(describe_acl).put(update_acl).delete(delete_acl),
        )
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/stats", get(get_stats))
        .route("/admin/stats/reset", post(reset_stats))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn(request_id_layer))
}
