//! Reading requests: JSON bodies, the client token header and list query
//! parameters. Every error names the offending field.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::cloud::error::ApiError;
use crate::cloud::limits::{self, CLIENT_TOKEN_MAX_CHARS};
use crate::cloud::model::CLIENT_TOKEN_HEADER;
use crate::cloud::state::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageRequest};

/// The query of a list call, as axum parsed it (or why it could not).
pub(crate) type ListQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// A `tag` filter's value must hold an `=` (`key=value`; the key may be
/// empty); the document says so with this pattern.
pub(crate) const TAG_FILTER_PATTERN: &str = "=";

/// Whether a list call filters by `tag=key=value` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagFilter {
    Accepted,
    Refused,
}

/// Parse a JSON body; errors name the offending field. A number with no
/// fraction is an integer whatever its spelling (`8080.0`), as JSON Schema
/// has it.
pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
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

pub(crate) fn client_token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(CLIENT_TOKEN_HEADER) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(token) if limits::is_client_token(token) => Ok(Some(token.to_string())),
            _ => Err(ApiError::invalid(
                CLIENT_TOKEN_HEADER,
                format!("must be 1..={CLIENT_TOKEN_MAX_CHARS} visible ASCII characters, no spaces"),
            )),
        },
    }
}

/// Parse list parameters: `page_size`, `page_token` and, where
/// `tag_filter` accepts them, repeated `tag=key=value`. Anything else is
/// rejected.
pub(crate) fn list_params(
    query: ListQuery,
    tag_filter: TagFilter,
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
            "tag" if tag_filter == TagFilter::Accepted => {
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
