//! The provider conformance suite against an in-process mock cloud.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use portico_provider::ClusterName;
use portico_provider::conformance::{Faults, Harness};
use portico_slb::cloud::{
    ApiStats, CloudConfig, CloudServer, FaultConfig, FaultRule, RecordingSink,
};
use portico_slb::provider::{SlbProvider, SlbProviderConfig};

struct SlbHarness {
    // Kept alive for the test; dropping it stops the server.
    cloud: CloudServer,
    provider: SlbProvider,
    http: reqwest::Client,
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
        Self {
            cloud,
            provider,
            http: reqwest::Client::new(),
        }
    }
}

#[async_trait]
impl Harness for SlbHarness {
    type Provider = SlbProvider;

    fn provider(&self) -> &SlbProvider {
        &self.provider
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
