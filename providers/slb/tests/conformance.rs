//! The provider conformance suite against an in-process mock cloud.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use portico_provider::conformance::{Faults, Harness, Observed, ObservedCheck};
use portico_provider::{ClusterName, LoadBalancerKey, Protocol};
use portico_slb::cloud::model::{HealthCheckType, ListenerProtocol};
use portico_slb::cloud::{
    ApiStats, CloudConfig, CloudServer, FaultConfig, FaultRule, RecordingSink,
};
use portico_slb::provider::{CloudClient, SlbProvider, SlbProviderConfig, marker};

struct SlbHarness {
    // Kept alive for the test; dropping it stops the server.
    cloud: CloudServer,
    provider: SlbProvider,
    http: reqwest::Client,
    /// Reads the cloud directly, past the provider.
    reader: CloudClient,
}

impl SlbHarness {
    async fn start() -> Self {
        let sink = Arc::new(RecordingSink::new());
        let cloud = CloudServer::start(
            CloudConfig::default(),
            "127.0.0.1:0".parse().expect("addr"),
            sink,
        )
        .await
        .expect("cloud starts");
        let mut config = SlbProviderConfig::new(cloud.url(), ClusterName::new("conformance"));
        config.request_timeout = Duration::from_secs(5);
        config.max_retries = 5;
        let provider = SlbProvider::new(config).expect("provider");
        let reader =
            CloudClient::new(&cloud.url(), Duration::from_secs(5), 5).expect("cloud client");
        Self {
            cloud,
            provider,
            http: reqwest::Client::new(),
            reader,
        }
    }
}

#[async_trait]
impl Harness for SlbHarness {
    type Provider = SlbProvider;

    fn provider(&self) -> &SlbProvider {
        &self.provider
    }

    async fn observe(&self, key: &LoadBalancerKey) -> Option<Observed> {
        let lb = self
            .reader
            .balancers(&key.lookup_tags())
            .await
            .expect("list balancers")
            .into_iter()
            .next()?;
        let listeners = self.reader.listeners(&lb.id).await.expect("listeners");
        let groups = self.reader.groups(&lb.id).await.expect("groups");
        let mark = marker(key);
        let mut seen = Observed::default();
        let mut acls = Vec::new();
        for l in listeners.iter().filter(|l| l.settings.description == mark) {
            let protocol = match l.protocol {
                ListenerProtocol::Tcp => Protocol::Tcp,
                ListenerProtocol::Udp => Protocol::Udp,
            };
            seen.listeners.insert((l.port, protocol));
            let group = groups
                .iter()
                .find(|g| g.id == l.settings.backend_server_group_id)
                .expect("a listener's group exists");
            for server in &group.servers {
                let node_port = u16::try_from(server.port).expect("a port");
                seen.routes
                    .insert((l.port, protocol, server.address.to_string(), node_port));
            }
            let check = &l.settings.health_check;
            seen.health_checks.insert(match check.kind {
                HealthCheckType::Tcp => ObservedCheck::TrafficPort,
                HealthCheckType::Http => ObservedCheck::Http {
                    port: check.port.expect("an http check has a port"),
                    path: check.path.clone().unwrap_or_else(|| "/".into()),
                },
            });
            acls.push(l.settings.acl.clone());
        }
        let mut ranges = std::collections::BTreeSet::new();
        for acl in acls.into_iter().flatten() {
            let owned = self
                .reader
                .acls(&key.lookup_tags())
                .await
                .expect("acls")
                .into_iter()
                .find(|a| a.id == acl.acl_id)
                .expect("the listener's ACL is portico's");
            for entry in owned.entries {
                ranges.insert(entry.cidr.parse().expect("a CIDR"));
            }
        }
        seen.source_ranges = Some(ranges);
        Some(seen)
    }

    async fn mutating_calls(&self) -> u64 {
        let stats: ApiStats = self
            .http
            .get(format!("{}/admin/stats", self.cloud.url()))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json");
        stats.mutating_calls
    }

    async fn set_faults(&self, faults: Faults) -> bool {
        let rule = if faults.throttle {
            FaultRule {
                throttle_every: faults.fail_every,
                retry_after_ms: 20,
                ..FaultRule::default()
            }
        } else {
            FaultRule {
                error_every: faults.fail_every,
                ..FaultRule::default()
            }
        };
        let config = FaultConfig {
            default: rule,
            ..FaultConfig::default()
        };
        let resp = self
            .http
            .put(format!("{}/admin/faults", self.cloud.url()))
            .json(&config)
            .send()
            .await
            .expect("faults");
        resp.status().is_success()
    }
}

portico_provider::conformance_tests!(async { SlbHarness::start().await });
