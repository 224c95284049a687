//! What the controller is configured to do, independent of how it was told
//! (flags, environment, tests).

use std::time::Duration;

use portico_provider::ClusterName;

/// The `spec.loadBalancerClass` portico answers to by default.
pub const DEFAULT_CLASS: &str = "portico.io/slb";

/// Node changes within this window are handled together (the CLI's default too).
pub const DEFAULT_NODE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Settings of the Service controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Written into ownership tags; several clusters can share one cloud.
    pub cluster: ClusterName,
    /// Services with this `spec.loadBalancerClass` are ours.
    pub class: String,
    /// Whether Services without a class are ours too (the cluster's default controller).
    pub claim_classless: bool,
    /// Concurrent reconciles.
    pub workers: u16,
    /// Each managed Service is re-ensured this often, repairing cloud drift.
    pub resync: Duration,
    /// Node changes arriving within this window are handled together.
    pub node_debounce: Duration,
    /// Whether balancers whose Service is gone are deleted at all.
    pub gc: bool,
    /// How often balancers whose Service is gone are looked for.
    pub gc_interval: Duration,
    /// How long a balancer must stay orphaned (across passes) before it goes.
    pub gc_grace: Duration,
    /// The most orphaned balancers one pass deletes.
    pub gc_max_per_pass: usize,
    /// Backoff bounds for failed reconciles.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            cluster: ClusterName::new("kubernetes"),
            class: DEFAULT_CLASS.to_string(),
            claim_classless: true,
            workers: 16,
            resync: Duration::from_secs(600),
            node_debounce: DEFAULT_NODE_DEBOUNCE,
            gc: true,
            gc_interval: Duration::from_secs(300),
            gc_grace: Duration::from_secs(600),
            gc_max_per_pass: 10,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
        }
    }
}
