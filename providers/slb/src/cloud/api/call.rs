//! One API call's bookkeeping around its handler: the request id, call
//! statistics (`/admin/stats`), injected faults and the request metric.

use std::collections::BTreeMap;
use std::future::Future;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use super::response::error_response;
use super::shared::{AppState, lock};
use crate::cloud::error::ApiError;
use crate::cloud::faults::FaultOutcome;
use crate::cloud::model::REQUEST_ID_HEADER;

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

/// The id of the request being served; the middleware sets it.
#[derive(Debug, Clone)]
struct RequestId(String);

fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4().simple())
}

/// Give every request an id, and every response the `x-request-id` header.
pub(super) async fn request_id_layer(mut req: Request, next: Next) -> Response {
    let id = new_request_id();
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

/// An operation of the API by name (`CreateLoadBalancer`...), for stats,
/// faults and metrics.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Read(&'static str),
    /// Counted in [`ApiStats::mutating_calls`].
    Write(&'static str),
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::Read(name) | Self::Write(name) => name,
        }
    }
}

/// One API call being served.
pub(super) struct Call {
    pub(super) state: AppState,
    pub(super) request_id: String,
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
            .unwrap_or_else(new_request_id);
        Ok(Self {
            state: state.clone(),
            request_id,
        })
    }
}

impl Call {
    /// Count the call, inject the faults in force for `op` (or run `work`),
    /// and turn an error into its response.
    pub(super) async fn run<F>(self, op: Op, work: F) -> Response
    where
        F: Future<Output = Result<Response, ApiError>>,
    {
        let state = &self.state;
        {
            let mut stats = lock(&state.stats);
            *stats.calls.entry(op.name().to_string()).or_insert(0) += 1;
            if matches!(op, Op::Write(_)) {
                stats.mutating_calls += 1;
            }
        }
        let random: f64 = rand::random();
        let (latency, outcome) = lock(&state.faults).decide(op.name(), random);
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
                    tracing::warn!(operation = op.name(), code = err.code, message = %err.message, "api call failed");
                } else {
                    tracing::debug!(operation = op.name(), code = err.code, message = %err.message, "api call rejected");
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
                operation: op.name().to_string(),
                code,
            })
            .inc();
        resp
    }
}
