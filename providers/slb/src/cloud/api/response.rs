//! Writing responses: JSON bodies, `201` or a replay's `200`, and errors as
//! `{code, message, request_id}` with their HTTP status and, when
//! throttled, `Retry-After`.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cloud::error::ApiError;
use crate::cloud::model::{ErrorBody, RETRY_AFTER_MS_HEADER};
use crate::cloud::state::Created;

pub(super) fn error_response(
    err: &ApiError,
    request_id: &str,
    retry_after_ms: Option<u64>,
) -> Response {
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

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response, ApiError> {
    Ok((status, axum::Json(value)).into_response())
}

/// `201` with a new object; `200` with the object a replayed token made.
pub(super) fn created<T: Serialize>(c: Created<T>) -> Result<Response, ApiError> {
    match c {
        Created::New(object) => json(StatusCode::CREATED, &object),
        Created::Replayed(object) => json(StatusCode::OK, &object),
    }
}

pub(super) fn no_content() -> Result<Response, ApiError> {
    Ok(StatusCode::NO_CONTENT.into_response())
}
