//! Prometheus metrics of the data plane. Families are created once per
//! [`DataPlane`](super::DataPlane); each backend resolves its own series at
//! creation so the forwarding hot path only touches atomics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a per-listener series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub balancer: String,
    /// `port/proto`, e.g. `80/tcp`.
    pub listener: String,
}

/// Labels of a per-backend series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct BackendLabels {
    pub balancer: String,
    pub listener: String,
    /// `ip:port` of the backend.
    pub backend: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    bytes_in: Family<BackendLabels, Counter>,
    bytes_out: Family<BackendLabels, Counter>,
    connections: Family<BackendLabels, Counter>,
    active_connections: Family<BackendLabels, Gauge>,
    connect_failures: Family<BackendLabels, Counter>,
    backend_healthy: Family<BackendLabels, Gauge>,
    udp_sessions: Family<BackendLabels, Gauge>,
    ejections: Family<BackendLabels, Counter>,
    ejected: Family<BackendLabels, Gauge>,
    rejected: Family<ListenerLabels, Counter>,
    no_backend: Family<ListenerLabels, Counter>,
    udp_session_limit: Family<ListenerLabels, Counter>,
    /// How many live backends/listeners hold each label set: a listener
    /// removed and re-added while its old backends drain shares their series,
    /// which may only be dropped when the last holder is gone.
    holders: Arc<Mutex<Holders>>,
}

#[derive(Debug, Default)]
struct Holders {
    backends: HashMap<BackendLabels, usize>,
    listeners: HashMap<ListenerLabels, usize>,
}

/// The series of one backend of one listener, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct BackendMetrics {
    labels: BackendLabels,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub connections: Counter,
    pub active_connections: Gauge,
    pub connect_failures: Counter,
    pub healthy: Gauge,
    pub udp_sessions: Gauge,
    /// Times passive health checking took the backend out.
    pub ejections: Counter,
    /// 1 while passive health checking keeps the backend out.
    pub ejected: Gauge,
}

/// The series of one listener, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct ListenerMetrics {
    labels: ListenerLabels,
    /// Connections or datagrams refused by the access control list.
    pub rejected: Counter,
    /// Connections or datagrams dropped because no backend could take them.
    pub no_backend: Counter,
    /// Datagrams of new UDP clients dropped at the session cap.
    pub udp_session_limit: Counter,
}

impl Metrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "slb_dataplane_bytes_in",
            "Bytes received from clients and forwarded to a backend",
            self.bytes_in.clone(),
        );
        registry.register(
            "slb_dataplane_bytes_out",
            "Bytes received from a backend and forwarded to clients",
            self.bytes_out.clone(),
        );
        registry.register(
            "slb_dataplane_connections",
            "TCP connections and UDP sessions forwarded to a backend",
            self.connections.clone(),
        );
        registry.register(
            "slb_dataplane_active_connections",
            "TCP connections and UDP sessions currently open to a backend",
            self.active_connections.clone(),
        );
        registry.register(
            "slb_dataplane_connect_failures",
            "Failed attempts to connect to a backend (another backend is tried next)",
            self.connect_failures.clone(),
        );
        registry.register(
            "slb_dataplane_backend_healthy",
            "Health-check verdict of a backend: 1 healthy, 0 unhealthy or not yet probed",
            self.backend_healthy.clone(),
        );
        registry.register(
            "slb_dataplane_udp_sessions",
            "UDP client sessions currently mapped to a backend",
            self.udp_sessions.clone(),
        );
        registry.register(
            "slb_dataplane_backend_ejections",
            "Times a backend was taken out by passive health checking (real connections failing in a row)",
            self.ejections.clone(),
        );
        registry.register(
            "slb_dataplane_backend_ejected",
            "Whether passive health checking keeps a backend out now (1) or not (0)",
            self.ejected.clone(),
        );
        registry.register(
            "slb_dataplane_rejected",
            "TCP connections and UDP datagrams refused by the listener's access control",
            self.rejected.clone(),
        );
        registry.register(
            "slb_dataplane_no_backend",
            "TCP connections and UDP datagrams dropped because no backend could take them",
            self.no_backend.clone(),
        );
        registry.register(
            "slb_dataplane_udp_session_limit",
            "Datagrams of new UDP clients dropped because the listener holds its most sessions",
            self.udp_session_limit.clone(),
        );
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn backend(&self, labels: BackendLabels) -> BackendMetrics {
        // Held until the series exist, so a concurrent forget cannot drop them.
        let mut holders = self.holders();
        *holders.backends.entry(labels.clone()).or_default() += 1;
        BackendMetrics {
            bytes_in: self.bytes_in.get_or_create(&labels).clone(),
            bytes_out: self.bytes_out.get_or_create(&labels).clone(),
            connections: self.connections.get_or_create(&labels).clone(),
            active_connections: self.active_connections.get_or_create(&labels).clone(),
            connect_failures: self.connect_failures.get_or_create(&labels).clone(),
            healthy: self.backend_healthy.get_or_create(&labels).clone(),
            udp_sessions: self.udp_sessions.get_or_create(&labels).clone(),
            ejections: self.ejections.get_or_create(&labels).clone(),
            ejected: self.ejected.get_or_create(&labels).clone(),
            labels,
        }
    }

    pub(crate) fn listener(&self, labels: ListenerLabels) -> ListenerMetrics {
        // Held until the series exist, so a concurrent forget cannot drop them.
        let mut holders = self.holders();
        *holders.listeners.entry(labels.clone()).or_default() += 1;
        ListenerMetrics {
            rejected: self.rejected.get_or_create(&labels).clone(),
            no_backend: self.no_backend.get_or_create(&labels).clone(),
            udp_session_limit: self.udp_session_limit.get_or_create(&labels).clone(),
            labels,
        }
    }

    /// Drop the series of a backend that is gone (removed and drained).
    pub(crate) fn forget_backend(&self, m: &BackendMetrics) {
        let mut holders = self.holders();
        if !release(&mut holders.backends, &m.labels) {
            return;
        }
        self.bytes_in.remove(&m.labels);
        self.bytes_out.remove(&m.labels);
        self.connections.remove(&m.labels);
        self.active_connections.remove(&m.labels);
        self.connect_failures.remove(&m.labels);
        self.backend_healthy.remove(&m.labels);
        self.udp_sessions.remove(&m.labels);
        self.ejections.remove(&m.labels);
        self.ejected.remove(&m.labels);
    }

    /// Drop the series of a listener that is gone.
    pub(crate) fn forget_listener(&self, m: &ListenerMetrics) {
        let mut holders = self.holders();
        if !release(&mut holders.listeners, &m.labels) {
            return;
        }
        self.rejected.remove(&m.labels);
        self.no_backend.remove(&m.labels);
        self.udp_session_limit.remove(&m.labels);
    }
}

/// Count one holder of `key` out; true when it was the last.
fn release<K: std::hash::Hash + Eq>(holders: &mut HashMap<K, usize>, key: &K) -> bool {
    match holders.get_mut(key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            holders.remove(key);
            true
        }
        None => false,
    }
}
