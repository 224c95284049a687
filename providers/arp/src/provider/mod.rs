//! The arp provider (`portico.io/arp`): the controller's side of bare
//! metal. It builds nothing in a cloud: `ensure` gives the Service
//! addresses from the `IPPool`s, which the controller writes into its
//! status; the speakers announce them (ARP/NDP) and kube-proxy on the
//! announcing node forwards the traffic as for any other node.
//!
//! Service status is the source of truth. At the start of every leadership
//! term ([`ArpProvider::sync`], run by the controller only while it leads)
//! the provider loads the pools and adopts every address our Services show
//! in their status before it answers any call, and keeps watching:
//! addresses other controllers' Services show are never handed out, and a
//! status that shows an address wins over a holding never published.
//!
//! # Errors
//! A Service that cannot get an address (pool exhausted, asked address
//! outside every pool or in use) gets a [`ProviderError::Transient`] whose
//! message starts with [`ALLOCATION_FAILED`]: the controller turns it into
//! a Warning Event and the Service's condition, and retries with backoff,
//! so the address comes once capacity appears.

mod pool_status;
pub mod service;
mod sync;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use portico_provider::{
    ClusterName, IngressStatus, IpMode, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    LoadBalancerStatus, PortStatus, Prepared, ProviderError,
};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::allocator::{Allocation, AllocationError, Allocator, FamilyPolicy, Request, Sharing};
use crate::pool::IpPool;
use crate::pools::{PoolSet, ServiceFacts, validate};
use crate::request::{ArpOptions, options};
pub use service::Ownership;

/// The provider's name in logs and metrics.
pub const NAME: &str = "arp";
/// The load-balancer class the arp provider answers to by default.
pub const DEFAULT_CLASS: &str = "portico.io/arp";
/// How every allocation failure's message starts (the reason users search
/// for in `kubectl describe svc`).
pub const ALLOCATION_FAILED: &str = "AllocationFailed";
/// Field manager of the IPPool status writes; reporter of pool Events.
pub const FIELD_MANAGER: &str = "portico";

/// How the provider is set up.
#[derive(Debug, Clone)]
pub struct ArpProviderConfig {
    pub cluster: ClusterName,
    /// Which Services are the controller's (their addresses are adopted;
    /// everyone else's are reserved).
    pub ownership: Ownership,
    /// This replica's name in the Events it posts.
    pub identity: String,
    /// How long a call waits for the pools and statuses to load.
    pub ready_timeout: Duration,
    /// Changes within this window make one IPPool status write.
    pub status_debounce: Duration,
}

impl ArpProviderConfig {
    pub fn new(cluster: ClusterName, ownership: Ownership, identity: impl Into<String>) -> Self {
        Self {
            cluster,
            ownership,
            identity: identity.into(),
            ready_timeout: Duration::from_secs(10),
            status_debounce: Duration::from_millis(200),
        }
    }
}

/// The allocator and the pools it uses.
#[derive(Debug, Default)]
struct State {
    allocator: Allocator,
    pools: PoolSet,
}

/// Where Service labels, namespace labels and family policies come from.
#[derive(Clone)]
struct Directory {
    services: Store<Service>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
}

struct Shared {
    config: ArpProviderConfig,
    state: Mutex<State>,
    /// True while a sync has loaded the pools and adopted the statuses.
    ready: watch::Sender<bool>,
    /// `None` without an API server ([`ArpProvider::with_pools`]).
    directory: RwLock<Option<Directory>>,
    kube: bool,
    /// The allocator changed: pool statuses are due.
    changed: Notify,
}

/// The provider. Clones share the allocator.
#[derive(Clone)]
pub struct ArpProvider {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ArpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArpProvider")
            .field("cluster", &self.shared.config.cluster)
            .field("ownership", &self.shared.config.ownership)
            .finish_non_exhaustive()
    }
}

const _: () = {
    const fn assert_provider<P: LoadBalancerProvider>() {}
    assert_provider::<ArpProvider>();
};

fn allocation_failed(err: &AllocationError) -> ProviderError {
    ProviderError::transient(format!("{ALLOCATION_FAILED}: {err}"))
}

fn status_of(ips: &[IpAddr], ports: Vec<PortStatus>) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: ips
            .iter()
            .map(|ip| IngressStatus {
                ip: Some(*ip),
                hostname: None,
                ip_mode: Some(IpMode::Vip),
                ports: ports.clone(),
            })
            .collect(),
    }
}

impl ArpProvider {
    /// A provider fed by the API server: it answers once [`ArpProvider::sync`]
    /// runs and has loaded the pools and the statuses.
    pub fn new(config: ArpProviderConfig) -> Self {
        Self::build(config, false)
    }

    /// A provider with fixed pools and no API server (tests, and the
    /// conformance suite): ready at once; Services have no labels.
    pub fn with_pools(config: ArpProviderConfig, pools: &[IpPool]) -> Self {
        let provider = Self::build(config, true);
        provider.set_pools(validate(pools));
        provider.shared.ready.send_replace(true);
        provider
    }

    fn build(config: ArpProviderConfig, fixed: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
                ready: watch::Sender::new(false),
                directory: RwLock::new(None),
                kube: !fixed,
                changed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The allocator is left consistent between calls; a panic elsewhere
        // must not stop allocation.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_pools(&self, set: PoolSet) {
        let mut state = self.state();
        state.allocator.set_pools(&set);
        state.pools = set;
    }

    /// Bumped on every change of the allocator (for tests counting
    /// "mutating calls").
    pub fn generation(&self) -> u64 {
        self.state().allocator.generation()
    }

    /// What `key` holds.
    pub fn allocation(&self, key: &LoadBalancerKey) -> Option<Allocation> {
        self.state().allocator.get(key).cloned()
    }

    async fn ready(&self) -> Result<(), ProviderError> {
        let mut ready = self.shared.ready.subscribe();
        match tokio::time::timeout(self.shared.config.ready_timeout, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ProviderError::transient(
                "the IP allocator has not loaded the IPPools and the addresses in Services' status yet (is the IPPool CRD installed? the controller's log says)",
            )),
        }
    }

    fn directory(&self) -> Option<Directory> {
        self.shared
            .directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the pools' selectors match the Service against, and its family
    /// policy. The Service comes from the provider's own watch, which may
    /// lag the controller's by a moment.
    async fn facts(
        &self,
        spec: &LoadBalancerSpec,
    ) -> Result<(ServiceFacts, FamilyPolicy), ProviderError> {
        let key = &spec.key;
        if !self.shared.kube {
            let policy = if spec.ip_families.len() > 1 {
                FamilyPolicy::RequireDualStack
            } else {
                FamilyPolicy::SingleStack
            };
            return Ok((
                ServiceFacts {
                    namespace: key.namespace.clone(),
                    ..ServiceFacts::default()
                },
                policy,
            ));
        }
        let reference = ObjectRef::<Service>::new(&key.name).within(&key.namespace);
        let namespace = ObjectRef::<PartialObjectMeta<Namespace>>::new(&key.namespace);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(directory) = self.directory()
                && let Some(svc) = directory
                    .services
                    .get(&reference)
                    .filter(|s| s.metadata.uid.as_deref() == Some(key.uid.as_str()))
            {
                let labels = directory
                    .namespaces
                    .get(&namespace)
                    .and_then(|n| n.metadata.labels.clone())
                    .unwrap_or_default();
                return Ok((service::facts(&svc, labels), service::family_policy(&svc)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError::transient(format!(
                    "the IP allocator's watch has not seen Service {key} yet"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn request(
        spec: &LoadBalancerSpec,
        options: &ArpOptions,
        facts: ServiceFacts,
        family_policy: FamilyPolicy,
    ) -> Request {
        Request {
            key: spec.key.clone(),
            facts,
            families: spec.ip_families.clone(),
            family_policy,
            ips: options.ips.clone(),
            pool: options.pool.clone(),
            ports: spec
                .listeners
                .iter()
                .map(|l| (l.protocol, l.port))
                .collect(),
            sharing: Sharing {
                key: options.sharing_key.clone(),
                traffic: spec.traffic_policy,
            },
        }
    }
}

#[async_trait]
impl LoadBalancerProvider for ArpProvider {
    type Options = ArpOptions;

    fn name(&self) -> &str {
        NAME
    }

    fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<ArpOptions>, ProviderError> {
        let options = options(&spec)?;
        Ok(Prepared::new(spec, options))
    }

    async fn ensure(
        &self,
        prepared: &Prepared<ArpOptions>,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        let spec = &prepared.spec;
        self.ready().await?;
        let (facts, policy) = self.facts(spec).await?;
        let request = Self::request(spec, &prepared.options, facts, policy);
        let result = self.state().allocator.allocate(&request);
        match result {
            Ok(done) => {
                if done.changed {
                    info!(addresses = ?done.ips, pool = ?done.pool, "addresses allocated");
                    self.shared.changed.notify_one();
                }
                Ok(status_of(
                    &done.ips,
                    PortStatus::of_listeners(&spec.listeners),
                ))
            }
            Err(err) => {
                warn!(error = %err, "no address for this Service");
                Err(allocation_failed(&err))
            }
        }
    }

    async fn get(
        &self,
        key: &LoadBalancerKey,
    ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        self.ready().await?;
        Ok(self.state().allocator.get(key).map(|a| {
            let mut ports: Vec<PortStatus> = a
                .ports
                .iter()
                .map(|(protocol, port)| PortStatus {
                    port: *port,
                    protocol: *protocol,
                    error: None,
                })
                .collect();
            ports.sort_by_key(|p| (p.port, p.protocol));
            status_of(&a.ips, ports)
        }))
    }

    async fn delete(&self, key: &LoadBalancerKey) -> Result<(), ProviderError> {
        self.ready().await?;
        let released = self.state().allocator.release(key);
        if let Some(released) = released {
            info!(addresses = ?released.ips, "addresses released");
            self.shared.changed.notify_one();
        }
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError> {
        self.ready().await?;
        Ok(self.state().allocator.keys().cloned().collect())
    }
}
