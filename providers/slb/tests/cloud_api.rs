//! The mock cloud's API through real HTTP: errors, idempotency, pagination,
//! quotas, faults, and what the data plane is told.

use std::sync::Arc;
use std::time::Duration;

use portico_slb::cloud::model::*;
use portico_slb::cloud::{
    ApiStats, CloudConfig, CloudServer, FaultConfig, FaultRule, Quotas, RecordingSink, SinkEvent,
};
use portico_slb::forwarding::{AccessControl, ProbeKind, Scheduler, Transport};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Cloud {
    server: CloudServer,
    sink: RecordingSink,
    http: reqwest::Client,
}

impl Cloud {
    async fn start(config: CloudConfig) -> Self {
        let sink = RecordingSink::new();
        let server = CloudServer::start(
            config,
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(sink.clone()),
        )
        .await
        .expect("cloud starts");
        Self {
            server,
            sink,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// Send and return (status, body as JSON or Null, headers).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(t) = token {
            req = req.header(CLIENT_TOKEN_HEADER, t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json body")
        };
        (status, value, headers)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self
            .call(reqwest::Method::POST, path, Some(body), None)
            .await;
        (s, v)
    }

    async fn create_lb(&self, name: &str, tags: Value) -> LoadBalancer {
        let (s, v) = self
            .post("/v1/load-balancers", json!({"name": name, "tags": tags}))
            .await;
        assert_eq!(s, 201, "{v}");
        serde_json::from_value(v).expect("balancer")
    }

    async fn create_group(&self, lb: &str, servers: Value) -> BackendServerGroup {
        let (s, v) = self
            .post(
                &format!("/v1/load-balancers/{lb}/backend-server-groups"),
                json!({"name": "g", "servers": servers}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        serde_json::from_value(v).expect("group")
    }

    async fn stats(&self) -> ApiStats {
        let (_, v, _) = self
            .call(reqwest::Method::GET, "/admin/stats", None, None)
            .await;
        serde_json::from_value(v).expect("stats")
    }
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str, mentions: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should name {mentions:?}"
    );
    assert!(
        body["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
}

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .expect("test timed out");
}

#[tokio::test]
async fn rejects_bad_input_naming_the_field() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let (s, v, headers) = cloud
            .call(
                reqwest::Method::POST,
                "/v1/load-balancers",
                Some(json!({"name": "a", "colour": "blue"})),
                None,
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "colour");
        let header = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|h| h.to_str().ok())
            .expect("x-request-id");
        assert_eq!(v["request_id"], header, "body and header carry one id");

        let cases = [
            ("empty name", json!({"name": ""}), "name"),
            ("unknown spec", json!({"name": "a", "spec": "huge"}), "spec"),
            (
                "bad address type",
                json!({"name": "a", "address_type": "moon"}),
                "address_type",
            ),
            (
                "address outside the range",
                json!({"name": "a", "address": "10.0.0.1"}),
                "address",
            ),
            ("not json", json!("just a string"), "body"),
        ];
        for (desc, body, field) in cases {
            let (s, v) = cloud.post("/v1/load-balancers", body).await;
            assert_eq!(s, 400, "{desc}: {v}");
            assert!(
                v["message"].as_str().unwrap_or_default().contains(field),
                "{desc}: {v}"
            );
        }

        let lb = cloud.create_lb("ports", json!({})).await;
        let group = cloud.create_group(&lb.id, json!([])).await;
        let listeners = format!("/v1/load-balancers/{}/listeners", lb.id);
        for (desc, port) in [("zero", json!(0)), ("too big", json!(70000))] {
            let (s, v) = cloud
                .post(
                    &listeners,
                    json!({"port": port, "protocol": "tcp", "backend_server_group_id": group.id}),
                )
                .await;
            assert_error(s, &v, 400, "InvalidParameter", "port");
            let _ = desc;
        }
        let (s, v) = cloud
            .post(
                &listeners,
                json!({"port": 80, "protocol": "tcp", "backend_server_group_id": group.id,
                       "health_check": {"type": "http", "port": 99999}}),
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "health_check.port");
        let (s, v) = cloud
            .post(
                &listeners,
                json!({"port": 80, "protocol": "tcp", "backend_server_group_id": group.id,
                       "health_check": {"interval_seconds": 99}}),
            )
            .await;
        assert_error(
            s,
            &v,
            400,
            "InvalidParameter",
            "health_check.interval_seconds",
        );
        let (s, v) = cloud
            .post(
                &format!("/v1/load-balancers/{}/backend-server-groups", lb.id),
                json!({"name": "g", "servers": [{"address": "10.0.0.1", "port": 0}]}),
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "servers[0].port");
        let (s, v) = cloud
            .post(
                "/v1/acls",
                json!({"name": "a", "entries": [{"cidr": "10.0.0.0/8"}, {"cidr": "300.1.0.0/16"}]}),
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "entries[1].cidr");

        // Nothing above was half-applied.
        let snapshot = cloud.server.snapshot();
        assert_eq!(snapshot.balancers.len(), 1);
        assert!(snapshot.listeners.is_empty());
        assert_eq!(snapshot.groups.len(), 1);
        assert!(snapshot.acls.is_empty());
    })
    .await;
}

#[tokio::test]
async fn unknown_ids_clashes_and_pages() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let (s, v, _) = cloud
            .call(
                reqwest::Method::GET,
                "/v1/load-balancers/lb-nope",
                None,
                None,
            )
            .await;
        assert_error(s, &v, 404, "LoadBalancerNotFound", "lb-nope");
        let (s, v, _) = cloud
            .call(reqwest::Method::DELETE, "/v1/acls/acl-nope", None, None)
            .await;
        assert_error(s, &v, 404, "AclNotFound", "acl-nope");

        let lb = cloud.create_lb("clash", json!({})).await;
        let (s, v, _) = cloud
            .call(
                reqwest::Method::GET,
                &format!("/v1/load-balancers/{}/listeners/lsn-nope", lb.id),
                None,
                None,
            )
            .await;
        assert_error(s, &v, 404, "ListenerNotFound", "lsn-nope");

        let group = cloud.create_group(&lb.id, json!([])).await;
        let listeners = format!("/v1/load-balancers/{}/listeners", lb.id);
        let body = json!({"port": 80, "protocol": "tcp", "backend_server_group_id": group.id});
        let (s, _) = cloud.post(&listeners, body.clone()).await;
        assert_eq!(s, 201);
        let (s, v) = cloud.post(&listeners, body).await;
        assert_error(s, &v, 409, "ListenerAlreadyExists", "80");
        let (s, _) = cloud
            .post(
                &listeners,
                json!({"port": 80, "protocol": "udp", "backend_server_group_id": group.id}),
            )
            .await;
        assert_eq!(s, 201, "same port, other protocol is fine");

        let (s, v, _) = cloud
            .call(
                reqwest::Method::GET,
                "/v1/load-balancers?page_size=101",
                None,
                None,
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "page_size");
        let (s, v, _) = cloud
            .call(
                reqwest::Method::GET,
                "/v1/load-balancers?colour=red",
                None,
                None,
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "colour");
        let (s, v, _) = cloud
            .call(reqwest::Method::GET, "/v1/nowhere", None, None)
            .await;
        assert_error(s, &v, 404, "NotFound", "route");
    })
    .await;
}

#[tokio::test]
async fn pagination_returns_every_balancer_once() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let mut want = Vec::new();
        for i in 0..7 {
            want.push(
                cloud
                    .create_lb(&format!("p{i}"), json!({"team": "a"}))
                    .await
                    .id,
            );
        }
        cloud.create_lb("other", json!({"team": "b"})).await;
        want.sort();
        let mut got = Vec::new();
        let mut token = String::new();
        for _ in 0..10 {
            let path = format!("/v1/load-balancers?page_size=3&tag=team%3Da&page_token={token}");
            let (s, v, _) = cloud.call(reqwest::Method::GET, &path, None, None).await;
            assert_eq!(s, 200, "{v}");
            let page: Page<LoadBalancer> = serde_json::from_value(v).expect("page");
            assert!(page.items.len() <= 3);
            got.extend(page.items.into_iter().map(|b| b.id));
            match page.next_page_token {
                Some(t) => token = t,
                None => break,
            }
        }
        assert_eq!(got, want, "tag filter and pages cover each balancer once");
    })
    .await;
}

#[tokio::test]
async fn client_token_replay_makes_one_balancer() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let body = json!({"name": "once"});
        let (s1, v1, _) = cloud
            .call(
                reqwest::Method::POST,
                "/v1/load-balancers",
                Some(body.clone()),
                Some("tok-1"),
            )
            .await;
        let (s2, v2, _) = cloud
            .call(
                reqwest::Method::POST,
                "/v1/load-balancers",
                Some(body.clone()),
                Some("tok-1"),
            )
            .await;
        assert_eq!((s1, s2), (201, 200));
        assert_eq!(v1["id"], v2["id"]);
        assert_eq!(v1["address"], v2["address"]);
        assert_eq!(cloud.server.snapshot().balancers.len(), 1);
        let (s3, v3, _) = cloud
            .call(
                reqwest::Method::POST,
                "/v1/load-balancers",
                Some(body),
                Some("tok-2"),
            )
            .await;
        assert_eq!(s3, 201);
        assert_ne!(v1["id"], v3["id"]);
        assert_ne!(
            v1["address"], v3["address"],
            "each balancer has its own VIP"
        );
    })
    .await;
}

#[tokio::test]
async fn quotas_name_the_limit() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig {
            quotas: Quotas {
                balancers: 1,
                servers_per_group: 1,
                ..Quotas::default()
            },
            ..CloudConfig::default()
        })
        .await;
        let lb = cloud.create_lb("only", json!({})).await;
        let (s, v) = cloud
            .post("/v1/load-balancers", json!({"name": "two"}))
            .await;
        assert_error(s, &v, 403, "QuotaExceeded", "balancers");
        let group = cloud
            .create_group(&lb.id, json!([{"address": "10.0.0.1", "port": 30000}]))
            .await;
        let (s, v) = cloud
            .post(
                &format!(
                    "/v1/load-balancers/{}/backend-server-groups/{}/servers/add",
                    lb.id, group.id
                ),
                json!({"servers": [{"address": "10.0.0.2", "port": 30000}]}),
            )
            .await;
        assert_error(s, &v, 403, "QuotaExceeded", "servers_per_group");
        assert_eq!(cloud.server.snapshot().groups[&group.id].servers.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn faults_throttle_with_retry_after_and_are_counted() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let faults = FaultConfig {
            default: FaultRule::default(),
            operations: [
                (
                    "DescribeLoadBalancers".to_string(),
                    FaultRule {
                        throttle_every: 1,
                        retry_after_ms: 1500,
                        ..FaultRule::default()
                    },
                ),
                (
                    "CreateLoadBalancer".to_string(),
                    FaultRule {
                        error_every: 1,
                        ..FaultRule::default()
                    },
                ),
            ]
            .into(),
        };
        let (s, _, _) = cloud
            .call(
                reqwest::Method::PUT,
                "/admin/faults",
                Some(serde_json::to_value(&faults).expect("json")),
                None,
            )
            .await;
        assert_eq!(s, 200);
        let (_, got, _) = cloud
            .call(reqwest::Method::GET, "/admin/faults", None, None)
            .await;
        assert_eq!(
            serde_json::from_value::<FaultConfig>(got).expect("faults"),
            faults
        );

        let (s, v, headers) = cloud
            .call(reqwest::Method::GET, "/v1/load-balancers", None, None)
            .await;
        assert_error(s, &v, 429, "Throttling", "throttl");
        assert_eq!(
            headers.get("retry-after").and_then(|h| h.to_str().ok()),
            Some("2")
        );
        assert_eq!(
            headers
                .get(RETRY_AFTER_MS_HEADER)
                .and_then(|h| h.to_str().ok()),
            Some("1500")
        );
        let (s, v) = cloud.post("/v1/load-balancers", json!({"name": "x"})).await;
        assert_error(s, &v, 503, "ServiceUnavailable", "unavailable");
        assert!(
            cloud.server.snapshot().balancers.is_empty(),
            "a failed call changes nothing"
        );

        let stats = cloud.stats().await;
        assert_eq!(stats.calls.get("DescribeLoadBalancers"), Some(&1));
        assert_eq!(stats.mutating_calls, 1);
        assert_eq!(stats.faults_injected, 2);

        let (s, v, _) = cloud
            .call(
                reqwest::Method::PUT,
                "/admin/faults",
                Some(json!({"default": {"error_rate": 2.0}})),
                None,
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "error_rate");
        let (s, _, _) = cloud
            .call(reqwest::Method::POST, "/admin/stats/reset", None, None)
            .await;
        assert_eq!(s, 204);
        assert_eq!(cloud.stats().await, ApiStats::default());
    })
    .await;
}

#[tokio::test]
async fn sink_follows_listener_backend_and_acl_changes() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let lb = cloud.create_lb("fwd", json!({})).await;
        let group = cloud
            .create_group(&lb.id, json!([{"address": "10.0.0.1", "port": 30080, "weight": 50}]))
            .await;
        let (s, v) = cloud
            .post("/v1/acls", json!({"name": "office", "entries": [{"cidr": "192.168.1.0/24"}]}))
            .await;
        assert_eq!(s, 201, "{v}");
        let acl: Acl = serde_json::from_value(v).expect("acl");
        let (s, v) = cloud
            .post(
                &format!("/v1/load-balancers/{}/listeners", lb.id),
                json!({"port": 80, "protocol": "tcp", "backend_server_group_id": group.id,
                       "scheduler": "wlc", "sticky_session": {"timeout_seconds": 60},
                       "acl": {"acl_id": acl.id, "mode": "white"},
                       "health_check": {"type": "http", "port": 32000, "path": "/healthz"}}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let listener: Listener = serde_json::from_value(v).expect("listener");

        let id = lb.id.clone();
        assert!(
            cloud
                .sink
                .wait_for(TIMEOUT, |_| true)
                .await
        );
        let sink = cloud.sink.clone();
        let applied = |check: Box<dyn Fn(&portico_slb::forwarding::BalancerForwarding) -> bool + Send>| {
            let sink = sink.clone();
            let id = id.clone();
            async move {
                sink.wait_for(Duration::from_secs(5), |events| {
                    matches!(events.iter().rev().find(|e| e.balancer_id() == id), Some(SinkEvent::Apply(c)) if check(c))
                })
                .await
            }
        };
        assert!(
            applied(Box::new(|c| {
                c.listeners.len() == 1 && {
                    let l = &c.listeners[0];
                    l.port == 80
                        && l.transport == Transport::Tcp
                        && l.scheduler == Scheduler::Wlc
                        && l.sticky_timeout == Some(Duration::from_secs(60))
                        && l.backends.len() == 1
                        && l.backends[0].weight == 50
                        && l.access == AccessControl::AllowOnly(vec!["192.168.1.0/24".parse().expect("net")])
                        && l.health_check.probe == ProbeKind::Http { port: 32000, path: "/healthz".into() }
                }
            }))
            .await,
            "listener create reached the sink: {:?}",
            cloud.sink.current(&lb.id)
        );
        assert_eq!(cloud.sink.current(&lb.id).map(|c| c.vip), Some(lb.address));

        let (s, v) = cloud
            .post(
                &format!("/v1/load-balancers/{}/backend-server-groups/{}/servers/add", lb.id, group.id),
                json!({"servers": [{"address": "10.0.0.2", "port": 30080}]}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(applied(Box::new(|c| c.listeners[0].backends.len() == 2)).await, "backend added");

        let (s, v, _) = cloud
            .call(
                reqwest::Method::PUT,
                &format!("/v1/acls/{}", acl.id),
                Some(json!({"entries": [{"cidr": "10.0.0.0/8"}]})),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(
            applied(Box::new(|c| c.listeners[0].access == AccessControl::AllowOnly(vec!["10.0.0.0/8".parse().expect("net")]))).await,
            "acl change reached the sink"
        );

        let (s, v, _) = cloud
            .call(reqwest::Method::DELETE, &format!("/v1/acls/{}", acl.id), None, None)
            .await;
        assert_error(s, &v, 409, "ResourceInUse", &listener.id);

        let mut settings = listener.settings.clone();
        settings.acl = None;
        let (s, v, _) = cloud
            .call(
                reqwest::Method::PUT,
                &format!("/v1/load-balancers/{}/listeners/{}", lb.id, listener.id),
                Some(serde_json::to_value(&settings).expect("json")),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(applied(Box::new(|c| c.listeners[0].access == AccessControl::AllowAll)).await);

        let (s, _, _) = cloud
            .call(reqwest::Method::DELETE, &format!("/v1/load-balancers/{}", lb.id), None, None)
            .await;
        assert_eq!(s, 204);
        assert!(
            cloud
                .sink
                .wait_for(Duration::from_secs(5), |events| {
                    matches!(events.last(), Some(SinkEvent::Remove(r)) if *r == id)
                })
                .await,
            "delete reached the sink"
        );
        let snapshot = cloud.server.snapshot();
        assert!(snapshot.listeners.is_empty() && snapshot.groups.is_empty());
    })
    .await;
}

#[tokio::test]
async fn openapi_and_metrics_are_served() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let (s, doc, _) = cloud
            .call(reqwest::Method::GET, "/openapi.json", None, None)
            .await;
        assert_eq!(s, 200);
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for path in [
            "/v1/load-balancers",
            "/v1/load-balancers/{lb}/listeners",
            "/v1/acls",
            "/admin/faults",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} documented");
        }
        assert!(doc["components"]["schemas"]["CreateListenerRequest"].is_object());

        cloud.create_lb("m", json!({})).await;
        let mut registry = prometheus_client::registry::Registry::default();
        cloud.server.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                "slb_api_requests_total{operation=\"CreateLoadBalancer\",code=\"201\"} 1"
            ),
            "{text}"
        );
    })
    .await;
}

/// A sink that takes its time, as a data plane binding sockets might.
#[derive(Debug, Clone)]
struct SlowSink(RecordingSink);

#[async_trait::async_trait]
impl portico_slb::forwarding::ForwardingSink for SlowSink {
    async fn apply(
        &self,
        config: portico_slb::forwarding::BalancerForwarding,
    ) -> Result<(), portico_slb::forwarding::ForwardingError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.0.apply(config).await
    }
    async fn remove(&self, balancer_id: &str) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.0.remove(balancer_id).await;
    }
}

/// Read-your-writes: the API answers a change only once the data plane has
/// applied it, so "ensure returned" means traffic follows.
#[tokio::test]
async fn a_change_is_acknowledged_only_once_the_data_plane_has_it() {
    with_timeout(async {
        let recorded = RecordingSink::new();
        let server = CloudServer::start(
            CloudConfig::default(),
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(SlowSink(recorded.clone())),
        )
        .await
        .expect("cloud starts");
        let cloud = Cloud {
            server,
            sink: recorded.clone(),
            http: reqwest::Client::new(),
        };
        let lb = cloud.create_lb("ryw", json!({})).await;
        let group = cloud
            .create_group(&lb.id, json!([{"address": "10.0.0.1", "port": 30080}]))
            .await;
        let (s, v) = cloud
            .post(
                &format!("/v1/load-balancers/{}/listeners", lb.id),
                json!({"port": 80, "protocol": "udp", "backend_server_group_id": group.id}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let listeners = |c: Option<portico_slb::forwarding::BalancerForwarding>| {
            c.map(|c| c.listeners.len()).unwrap_or(0)
        };
        assert_eq!(
            listeners(recorded.current(&lb.id)),
            1,
            "the listener is forwarding when the API answers"
        );
        let (s, v) = cloud
            .post(
                &format!(
                    "/v1/load-balancers/{}/backend-server-groups/{}/servers/remove",
                    lb.id, group.id
                ),
                json!({"servers": [{"address": "10.0.0.1", "port": 30080}]}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let backends = recorded
            .current(&lb.id)
            .map(|c| c.listeners[0].backends.len())
            .unwrap_or(usize::MAX);
        assert_eq!(
            backends, 0,
            "the removed server is out of the data plane when the API answers"
        );
    })
    .await;
}

/// A data plane that cannot listen on port 81 (as when another process
/// holds it on the host); everything else it records.
#[derive(Debug, Clone)]
struct PortTakenSink(RecordingSink);

#[async_trait::async_trait]
impl portico_slb::forwarding::ForwardingSink for PortTakenSink {
    async fn apply(
        &self,
        config: portico_slb::forwarding::BalancerForwarding,
    ) -> Result<(), portico_slb::forwarding::ForwardingError> {
        if let Some(l) = config.listeners.iter().find(|l| l.port == 81) {
            return Err(portico_slb::forwarding::ForwardingError::Bind {
                addr: std::net::SocketAddr::new(config.vip, l.port),
                transport: l.transport,
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
        }
        self.0.apply(config).await
    }
    async fn remove(&self, balancer_id: &str) {
        self.0.remove(balancer_id).await;
    }
}

/// A change the data plane cannot apply is refused (409 ForwardingFailed)
/// and not made: the API, the state file and the data plane all keep the
/// state before it, and the next change goes through.
#[tokio::test]
async fn a_change_the_data_plane_cannot_apply_is_refused_and_not_made() {
    with_timeout(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_file = dir.path().join("cloud.json");
        let recorded = RecordingSink::new();
        let server = CloudServer::start(
            CloudConfig {
                state_file: Some(state_file.clone()),
                ..CloudConfig::default()
            },
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(PortTakenSink(recorded.clone())),
        )
        .await
        .expect("cloud starts");
        let cloud = Cloud {
            server,
            sink: recorded.clone(),
            http: reqwest::Client::new(),
        };
        let lb = cloud.create_lb("taken", json!({})).await;
        let group = cloud
            .create_group(&lb.id, json!([{"address": "10.0.0.1", "port": 30080}]))
            .await;
        let listeners = format!("/v1/load-balancers/{}/listeners", lb.id);
        let create = |port: u16| json!({"port": port, "protocol": "tcp", "backend_server_group_id": group.id});
        let (s, v) = cloud.post(&listeners, create(80)).await;
        assert_eq!(s, 201, "{v}");

        let (s, v, _) = cloud
            .call(reqwest::Method::POST, &listeners, Some(create(81)), Some("tok-1"))
            .await;
        assert_error(s, &v, 409, "ForwardingFailed", "cannot listen on");
        let (s, v, _) = cloud
            .call(reqwest::Method::GET, &listeners, None, None)
            .await;
        assert_eq!(s, 200, "{v}");
        let ports: Vec<u64> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|l| l["port"].as_u64())
            .collect();
        assert_eq!(ports, [80], "the refused listener was not made");
        assert_eq!(cloud.server.snapshot().listeners.len(), 1);
        let on_disk: portico_slb::cloud::Store =
            serde_json::from_slice(&std::fs::read(&state_file).expect("state file"))
                .expect("state");
        assert_eq!(on_disk.listeners.len(), 1, "nor written to the state file");
        let forwarded: Vec<u16> = recorded
            .current(&lb.id)
            .expect("forwarding")
            .listeners
            .iter()
            .map(|l| l.port)
            .collect();
        assert_eq!(forwarded, [80], "the data plane keeps what the API says");

        // Nothing of the failed create stays, not even its token: the same
        // token makes a new listener rather than replaying one.
        let (s, v, _) = cloud
            .call(reqwest::Method::POST, &listeners, Some(create(82)), Some("tok-1"))
            .await;
        assert_eq!(s, 201, "the next change goes through: {v}");
        assert_eq!(v["port"], 82, "{v}");
        assert_eq!(cloud.server.snapshot().listeners.len(), 2);
        assert_eq!(cloud.sink.current(&lb.id).map(|c| c.listeners.len()), Some(2));
    })
    .await;
}

/// What the OpenAPI document allows, the server takes, and nothing else:
/// integral numbers in any spelling, repeated servers and CIDRs folded into
/// one (the last listing counts), tokens without spaces, and a bad request
/// refused even under a token seen before.
#[tokio::test]
async fn requests_follow_the_document() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let lb = cloud.create_lb("doc", json!({})).await;
        let (s, v) = cloud
            .post(
                &format!("/v1/load-balancers/{}/backend-server-groups", lb.id),
                json!({"name": "g", "servers": [
                    {"address": "10.0.0.1", "port": 30080.0, "weight": 10},
                    {"address": "10.0.0.1", "port": 30080, "weight": 20.0}
                ]}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let group: BackendServerGroup = serde_json::from_value(v).expect("group");
        assert_eq!(group.servers.len(), 1, "a repeated server is one server");
        assert_eq!(group.servers[0].weight, 20, "its last listing counts");

        let (s, v) = cloud
            .post(
                "/v1/acls",
                json!({"name": "a", "entries": [
                    {"cidr": "10.0.0.1/8", "description": "first"},
                    {"cidr": "10.0.0.0/8", "description": "last"}
                ]}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let acl: Acl = serde_json::from_value(v).expect("acl");
        assert_eq!(
            acl.entries,
            vec![AclEntry {
                cidr: "10.0.0.0/8".into(),
                description: "last".into()
            }]
        );

        let (s, v, _) = cloud
            .call(
                reqwest::Method::POST,
                "/v1/load-balancers",
                Some(json!({"name": "t"})),
                Some("has space"),
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "x-client-token");

        let (s, _, _) = cloud
            .call(
                reqwest::Method::POST,
                "/v1/load-balancers",
                Some(json!({"name": "t"})),
                Some("tok-1"),
            )
            .await;
        assert_eq!(s, 201);
        let (s, v, _) = cloud
            .call(
                reqwest::Method::POST,
                "/v1/load-balancers",
                Some(json!({"name": "t", "tags": {"": "x"}})),
                Some("tok-1"),
            )
            .await;
        assert_error(s, &v, 400, "InvalidParameter", "tags");
    })
    .await;
}

/// Every operation the document lists is served: no documented path and
/// method falls through to the router's "no such route" or "method not
/// allowed" answers (the document and the router share their paths).
#[tokio::test]
async fn every_documented_operation_is_routed() {
    with_timeout(async {
        let cloud = Cloud::start(CloudConfig::default()).await;
        let (s, doc, _) = cloud
            .call(reqwest::Method::GET, "/openapi.json", None, None)
            .await;
        assert_eq!(s, 200);
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() >= 14, "{}", paths.len());
        let mut operations = 0;
        for (path, item) in paths {
            let concrete = path.replace("{lb}", "lb-x").replace("{id}", "x-1");
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| *k != "parameters");
            for method in methods {
                let method: reqwest::Method = method.to_uppercase().parse().expect("a method");
                let body = matches!(
                    method,
                    reqwest::Method::POST | reqwest::Method::PUT | reqwest::Method::PATCH
                )
                .then(|| json!({}));
                let (status, v, _) = cloud.call(method.clone(), &concrete, body, None).await;
                let code = v["code"].as_str().unwrap_or_default();
                assert!(
                    status != 405 && !(status == 404 && code == "NotFound"),
                    "{method} {path} is documented but not routed: {status} {v}"
                );
                operations += 1;
            }
        }
        assert!(operations >= 26, "{operations} operations tried");
        let (status, v, _) = cloud
            .call(reqwest::Method::GET, "/v1/nothing-here", None, None)
            .await;
        assert_eq!((status, v["code"].as_str()), (404, Some("NotFound")));
    })
    .await;
}
