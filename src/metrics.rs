//! Prometheus metrics of the controller. Each component reports through the
//! handles here; the HTTP server encodes the registry.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub provider: String,
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub provider: String,
    pub op: String,
}

/// The controller's metric handles.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub errors: Family<KindLabels, Counter>,
    pub provider_calls: Family<CallLabels, Counter>,
    pub provider_call_duration: Family<OpLabels, Histogram>,
    pub in_flight: Gauge,
    pub queued: Gauge,
    pub pending_node_changes: Gauge,
    pub eligible_nodes: Gauge,
    pub is_leader: Gauge,
    pub orphans_deleted: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.5, 14))
}

impl Metrics {
    /// Create the handles and register them under `portico_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self {
            reconciles: Family::default(),
            reconcile_duration: duration_histogram(),
            errors: Family::default(),
            provider_calls: Family::default(),
            provider_call_duration: Family::new_with_constructor(duration_histogram),
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            pending_node_changes: Gauge::default(),
            eligible_nodes: Gauge::default(),
            is_leader: Gauge::default(),
            orphans_deleted: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("portico");
        r.register(
            "reconciles",
            "Service reconciles by result",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one Service reconcile",
            m.reconcile_duration.clone(),
        );
        r.register("errors", "Reconcile errors by kind", m.errors.clone());
        r.register(
            "provider_calls",
            "Provider calls by operation and result",
            m.provider_calls.clone(),
        );
        r.register(
            "provider_call_duration_seconds",
            "Provider call latency by operation",
            m.provider_call_duration.clone(),
        );
        r.register(
            "reconciles_in_flight",
            "Reconciles running now",
            m.in_flight.clone(),
        );
        r.register(
            "reconciles_queued",
            "Services waiting for a worker (the work queue's depth)",
            m.queued.clone(),
        );
        r.register(
            "pending_node_changes",
            "Node changes waiting for the debounce window to close",
            m.pending_node_changes.clone(),
        );
        r.register(
            "eligible_nodes",
            "Nodes that receive balancer traffic",
            m.eligible_nodes.clone(),
        );
        r.register(
            "is_leader",
            "1 while this replica holds the leader lease",
            m.is_leader.clone(),
        );
        r.register(
            "orphans_deleted",
            "Balancers deleted because their Service is gone",
            m.orphans_deleted.clone(),
        );
        Arc::new(m)
    }

    pub fn reconciled(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Start timing a reconcile; the guard records the duration and in-flight count.
    pub fn reconcile_timer(self: &Arc<Self>) -> ReconcileTimer {
        self.in_flight.inc();
        ReconcileTimer {
            metrics: self.clone(),
            start: Instant::now(),
        }
    }

    /// Record one provider call.
    pub fn provider_call(&self, provider: &str, op: &str, ok: Result<(), &str>, start: Instant) {
        let result = match ok {
            Ok(()) => "ok".to_string(),
            Err(kind) => kind.to_string(),
        };
        self.provider_calls
            .get_or_create(&CallLabels {
                provider: provider.into(),
                op: op.into(),
                result,
            })
            .inc();
        self.provider_call_duration
            .get_or_create(&OpLabels {
                provider: provider.into(),
                op: op.into(),
            })
            .observe(start.elapsed().as_secs_f64());
    }
}

/// Drop guard for reconcile duration and the in-flight gauge.
#[derive(Debug)]
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics
            .reconcile_duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}
