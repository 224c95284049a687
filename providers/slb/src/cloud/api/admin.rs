//! Handlers outside the cloud's resources: fault injection, call
//! statistics, the OpenAPI document, and the answers to unknown routes and
//! methods. None of them is counted or fault-injected.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::call::{ApiStats, Call};
use super::request::parse;
use super::response::error_response;
use super::shared::{AppState, lock};
use crate::cloud::error::ApiError;
use crate::cloud::faults::FaultConfig;

pub(super) async fn get_faults(State(s): State<AppState>) -> Response {
    (StatusCode::OK, axum::Json(lock(&s.faults).config.clone())).into_response()
}

pub(super) async fn put_faults(call: Call, body: Bytes) -> Response {
    let result = parse::<FaultConfig>(&body).and_then(|config| {
        config
            .validate()
            .map_err(|err| ApiError::invalid("faults", err.to_string()))?;
        lock(&call.state.faults).set(config.clone());
        tracing::info!(?config, "faults changed");
        Ok(config)
    });
    match result {
        Ok(config) => (StatusCode::OK, axum::Json(config)).into_response(),
        Err(err) => error_response(&err, &call.request_id, None),
    }
}

pub(super) async fn get_stats(State(s): State<AppState>) -> Response {
    (StatusCode::OK, axum::Json(lock(&s.stats).clone())).into_response()
}

pub(super) async fn reset_stats(State(s): State<AppState>) -> Response {
    *lock(&s.stats) = ApiStats::default();
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn openapi(State(s): State<AppState>) -> Response {
    let document = crate::cloud::openapi::document(s.config.vip_range);
    (StatusCode::OK, axum::Json(document)).into_response()
}

pub(super) async fn not_found(call: Call) -> Response {
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

pub(super) async fn method_not_allowed(call: Call) -> Response {
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
