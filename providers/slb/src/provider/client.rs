//! A typed HTTP client of the mock cloud, with retries.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use portico_provider::ProviderError;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cloud::model::*;

/// Longest `Retry-After` the client waits out itself; longer ones go back
/// to the controller as `Throttled`.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What went wrong talking to the cloud.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{operation}: cloud answered {status} {code}: {message} (request {request_id})")]
    Api {
        operation: &'static str,
        status: u16,
        code: String,
        message: String,
        request_id: String,
        retry_after: Option<Duration>,
    },
    #[error("{operation}: request failed")]
    Transport {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{operation}: cannot decode the cloud's answer")]
    Decode {
        operation: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
}

impl ClientError {
    fn retryable(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status >= 500 || *status == 429,
            Self::Transport { .. } => true,
            Self::Decode { .. } | Self::Encode(_) => false,
        }
    }

    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<ClientError> for ProviderError {
    fn from(err: ClientError) -> Self {
        match &err {
            ClientError::Api {
                status,
                code,
                message,
                retry_after,
                ..
            } => match (*status, code.as_str()) {
                (429, _) => ProviderError::Throttled {
                    retry_after: *retry_after,
                },
                (s, _) if s >= 500 => ProviderError::transient_from("cloud server error", err),
                (_, "QuotaExceeded") => {
                    let resource = message
                        .strip_prefix("quota ")
                        .and_then(|m| m.split_whitespace().next())
                        .unwrap_or("slb")
                        .to_string();
                    ProviderError::QuotaExceeded {
                        resource,
                        message: message.clone(),
                    }
                }
                (_, "InvalidParameter") => {
                    let (field, reason) = message
                        .split_once(": ")
                        .unwrap_or(("request", message.as_str()));
                    ProviderError::invalid(format!("slb.{field}"), reason)
                }
                (_, "AddressInUse") => {
                    ProviderError::invalid("spec.loadBalancerIP", message.clone())
                }
                (404, _) => ProviderError::NotFound {
                    what: message.clone(),
                },
                (409, _) => ProviderError::Conflict {
                    message: message.clone(),
                },
                _ => ProviderError::transient_from("unexpected cloud answer", err),
            },
            ClientError::Transport { .. } => {
                ProviderError::transient_from("cloud unreachable", err)
            }
            ClientError::Decode { .. } | ClientError::Encode(_) => {
                ProviderError::transient_from("cloud protocol error", err)
            }
        }
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = value(RETRY_AFTER_MS_HEADER).and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    value("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// One request to make (possibly several times).
struct Req<'a> {
    operation: &'static str,
    method: Method,
    path: String,
    query: Vec<(&'a str, String)>,
    body: Option<Vec<u8>>,
    token: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct CloudClient {
    http: reqwest::Client,
    base: String,
    max_retries: usize,
}

fn encode<T: Serialize>(body: &T) -> Result<Option<Vec<u8>>, ClientError> {
    serde_json::to_vec(body)
        .map(Some)
        .map_err(ClientError::Encode)
}

impl CloudClient {
    pub fn new(
        endpoint: &str,
        timeout: Duration,
        max_retries: usize,
    ) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| ProviderError::transient_from("cannot build the http client", e))?;
        Ok(Self {
            http,
            base: endpoint.trim_end_matches('/').to_string(),
            max_retries,
        })
    }

    async fn once(&self, req: &Req<'_>) -> Result<(StatusCode, bytes::Bytes), ClientError> {
        let mut builder = self
            .http
            .request(req.method.clone(), format!("{}{}", self.base, req.path));
        if !req.query.is_empty() {
            builder = builder.query(&req.query);
        }
        if let Some(token) = req.token {
            builder = builder.header(CLIENT_TOKEN_HEADER, token);
        }
        if let Some(body) = &req.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let transport = |source| ClientError::Transport {
            operation: req.operation,
            source,
        };
        let resp = builder.send().await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            return Ok((status, body));
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (code, message) = match parsed {
            Some(e) => (e.code, e.message),
            None => (
                status.canonical_reason().unwrap_or("Error").to_string(),
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        };
        Err(ClientError::Api {
            operation: req.operation,
            status: status.as_u16(),
            code,
            message,
            request_id,
            retry_after: retry_after(&headers),
        })
    }

    async fn send(&self, req: Req<'_>) -> Result<(StatusCode, bytes::Bytes), ClientError> {
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(self.max_retries);
        let operation = req.operation;
        (|| self.once(&req))
            .retry(backoff)
            .when(ClientError::retryable)
            .adjust(|err, next| match (next, err.retry_after()) {
                (None, _) => None,
                (Some(_), Some(ra)) if ra > MAX_INLINE_RETRY_AFTER => None,
                (Some(d), Some(ra)) => Some(ra.max(d.min(ra + Duration::from_millis(50)))),
                (Some(d), None) => Some(d),
            })
            .notify(|err, wait| {
                tracing::debug!(operation, error = %err, ?wait, "retrying cloud call");
            })
            .await
    }

    async fn json<T: DeserializeOwned>(&self, req: Req<'_>) -> Result<T, ClientError> {
        let operation = req.operation;
        let (_, body) = self.send(req).await?;
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode { operation, source })
    }

    async fn empty(&self, req: Req<'_>) -> Result<(), ClientError> {
        self.send(req).await.map(|_| ())
    }

    fn req(operation: &'static str, method: Method, path: String) -> Req<'static> {
        Req {
            operation,
            method,
            path,
            query: Vec::new(),
            body: None,
            token: None,
        }
    }

    async fn all_pages<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: String,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = Self::req(operation, Method::GET, path.clone());
            req.query.push(("page_size", "100".to_string()));
            for (k, v) in tags {
                req.query.push(("tag", format!("{k}={v}")));
            }
            if let Some(t) = &token {
                req.query.push(("page_token", t.clone()));
            }
            let page: Page<T> = self.json(req).await?;
            out.extend(page.items);
            match page.next_page_token {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                _ => return Ok(out),
            }
        }
    }

    // ---- balancers ----

    pub async fn create_balancer(
        &self,
        body: &CreateLoadBalancerRequest,
        token: &str,
    ) -> Result<LoadBalancer, ClientError> {
        let mut req = Self::req(
            "CreateLoadBalancer",
            Method::POST,
            "/v1/load-balancers".into(),
        );
        req.body = encode(body)?;
        req.token = Some(token);
        self.json(req).await
    }

    pub async fn balancer(&self, id: &str) -> Result<LoadBalancer, ClientError> {
        self.json(Self::req(
            "DescribeLoadBalancer",
            Method::GET,
            format!("/v1/load-balancers/{id}"),
        ))
        .await
    }

    pub async fn balancers(
        &self,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<LoadBalancer>, ClientError> {
        self.all_pages("DescribeLoadBalancers", "/v1/load-balancers".into(), tags)
            .await
    }

    pub async fn update_balancer(
        &self,
        id: &str,
        body: &UpdateLoadBalancerRequest,
    ) -> Result<LoadBalancer, ClientError> {
        let mut req = Self::req(
            "ModifyLoadBalancer",
            Method::PATCH,
            format!("/v1/load-balancers/{id}"),
        );
        req.body = encode(body)?;
        self.json(req).await
    }

    pub async fn delete_balancer(&self, id: &str) -> Result<(), ClientError> {
        self.empty(Self::req(
            "DeleteLoadBalancer",
            Method::DELETE,
            format!("/v1/load-balancers/{id}"),
        ))
        .await
    }

    // ---- listeners ----

    pub async fn listeners(&self, lb: &str) -> Result<Vec<Listener>, ClientError> {
        self.all_pages(
            "DescribeListeners",
            format!("/v1/load-balancers/{lb}/listeners"),
            &BTreeMap::new(),
        )
        .await
    }

    pub async fn create_listener(
        &self,
        lb: &str,
        body: &CreateListenerRequest,
        token: &str,
    ) -> Result<Listener, ClientError> {
        let mut req = Self::req(
            "CreateListener",
            Method::POST,
            format!("/v1/load-balancers/{lb}/listeners"),
        );
        req.body = encode(body)?;
        req.token = Some(token);
        self.json(req).await
    }

    pub async fn update_listener(
        &self,
        lb: &str,
        id: &str,
        body: &ListenerSettings,
    ) -> Result<Listener, ClientError> {
        let mut req = Self::req(
            "ModifyListener",
            Method::PUT,
            format!("/v1/load-balancers/{lb}/listeners/{id}"),
        );
        req.body = encode(body)?;
        self.json(req).await
    }

    pub async fn delete_listener(&self, lb: &str, id: &str) -> Result<(), ClientError> {
        self.empty(Self::req(
            "DeleteListener",
            Method::DELETE,
            format!("/v1/load-balancers/{lb}/listeners/{id}"),
        ))
        .await
    }

    // ---- groups ----

    pub async fn groups(&self, lb: &str) -> Result<Vec<BackendServerGroup>, ClientError> {
        self.all_pages(
            "DescribeBackendServerGroups",
            format!("/v1/load-balancers/{lb}/backend-server-groups"),
            &BTreeMap::new(),
        )
        .await
    }

    pub async fn create_group(
        &self,
        lb: &str,
        body: &CreateBackendServerGroupRequest,
        token: &str,
    ) -> Result<BackendServerGroup, ClientError> {
        let mut req = Self::req(
            "CreateBackendServerGroup",
            Method::POST,
            format!("/v1/load-balancers/{lb}/backend-server-groups"),
        );
        req.body = encode(body)?;
        req.token = Some(token);
        self.json(req).await
    }

    pub async fn add_servers(
        &self,
        lb: &str,
        group: &str,
        servers: Vec<BackendServer>,
    ) -> Result<BackendServerGroup, ClientError> {
        let mut req = Self::req(
            "AddBackendServers",
            Method::POST,
            format!("/v1/load-balancers/{lb}/backend-server-groups/{group}/servers/add"),
        );
        req.body = encode(&ServersRequest { servers })?;
        self.json(req).await
    }

    pub async fn remove_servers(
        &self,
        lb: &str,
        group: &str,
        servers: Vec<BackendServer>,
    ) -> Result<BackendServerGroup, ClientError> {
        let mut req = Self::req(
            "RemoveBackendServers",
            Method::POST,
            format!("/v1/load-balancers/{lb}/backend-server-groups/{group}/servers/remove"),
        );
        req.body = encode(&ServersRequest { servers })?;
        self.json(req).await
    }

    pub async fn delete_group(&self, lb: &str, group: &str) -> Result<(), ClientError> {
        self.empty(Self::req(
            "DeleteBackendServerGroup",
            Method::DELETE,
            format!("/v1/load-balancers/{lb}/backend-server-groups/{group}"),
        ))
        .await
    }

    // ---- ACLs ----

    pub async fn acls(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Acl>, ClientError> {
        self.all_pages("DescribeAcls", "/v1/acls".into(), tags)
            .await
    }

    pub async fn create_acl(
        &self,
        body: &CreateAclRequest,
        token: &str,
    ) -> Result<Acl, ClientError> {
        let mut req = Self::req("CreateAcl", Method::POST, "/v1/acls".into());
        req.body = encode(body)?;
        req.token = Some(token);
        self.json(req).await
    }

    pub async fn update_acl(&self, id: &str, body: &UpdateAclRequest) -> Result<Acl, ClientError> {
        let mut req = Self::req("ModifyAcl", Method::PUT, format!("/v1/acls/{id}"));
        req.body = encode(body)?;
        self.json(req).await
    }

    pub async fn delete_acl(&self, id: &str) -> Result<(), ClientError> {
        self.empty(Self::req(
            "DeleteAcl",
            Method::DELETE,
            format!("/v1/acls/{id}"),
        ))
        .await
    }
}

/// Treat "not found" as done (for deletes).
pub fn gone_ok(result: Result<(), ClientError>) -> Result<(), ClientError> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}
