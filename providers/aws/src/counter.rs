//! Counts AWS API calls by operation, as an SDK interceptor: Prometheus
//! metrics for production (`portico_aws_calls_total{operation,kind}`,
//! `portico_aws_call_attempts_total`), and a snapshot the tests' "zero
//! mutating calls" and the benchmarks read. With the `testing` feature it
//! also injects faults.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeSerializationInterceptorContextRef,
    BeforeTransmitInterceptorContextMut,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Which error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// HTTP 400 with code `Throttling` (`RequestLimitExceeded` for EC2).
    Throttling,
    /// HTTP 503 `ServiceUnavailable`.
    ServiceUnavailable,
}

/// Fail every `every`-th HTTP attempt (across operations) with `kind`.
/// The faulted request never reaches the server (its body is emptied), so a
/// fault never half-applies a mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultInjection {
    pub every: u64,
    pub kind: FaultKind,
}

/// A snapshot of the calls made so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Operations started, by name (`DescribeLoadBalancers`; EC2 ones as `ec2:DescribeSubnets`).
    pub by_operation: BTreeMap<String, u64>,
    /// Read-only operations (`Describe*`, `Get*`, `List*`).
    pub reads: u64,
    /// Everything else: create, modify, delete, register, tag.
    pub mutations: u64,
    /// HTTP attempts, retries included.
    pub attempts: u64,
    /// Attempts failed on purpose.
    pub injected_faults: u64,
}

impl CallStats {
    pub fn total(&self) -> u64 {
        self.reads + self.mutations
    }

    /// Calls of operation `op`.
    pub fn count(&self, op: &str) -> u64 {
        self.by_operation.get(op).copied().unwrap_or(0)
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &CallStats) -> CallStats {
        let by_operation = self
            .by_operation
            .iter()
            .filter_map(|(op, n)| {
                let d = n.saturating_sub(earlier.count(op));
                (d > 0).then(|| (op.clone(), d))
            })
            .collect();
        CallStats {
            by_operation,
            reads: self.reads.saturating_sub(earlier.reads),
            mutations: self.mutations.saturating_sub(earlier.mutations),
            attempts: self.attempts.saturating_sub(earlier.attempts),
            injected_faults: self.injected_faults.saturating_sub(earlier.injected_faults),
        }
    }
}

/// Whether an operation name is read-only.
pub fn is_read_only(op: &str) -> bool {
    let name = op.strip_prefix("ec2:").unwrap_or(op);
    ["Describe", "Get", "List"]
        .iter()
        .any(|p| name.starts_with(p))
}

#[derive(Debug, Default)]
struct State {
    stats: CallStats,
    faults: Option<FaultInjection>,
    fault_seq: u64,
}

/// One AWS operation and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    /// `read` or `mutating`.
    kind: &'static str,
}

/// The interceptor; clones share their counts. Register it on each SDK
/// client's config with `.interceptor(counter.clone())`.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    state: Arc<Mutex<State>>,
    calls: Family<CallLabels, Counter>,
    attempts: Counter,
}

#[derive(Debug, Clone, Copy)]
struct Injected(Option<FaultKind>);

impl Storable for Injected {
    type Storer = StoreReplace<Self>;
}

impl CallCounter {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> CallStats {
        self.state().stats.clone()
    }

    pub fn reset(&self) {
        self.state().stats = CallStats::default();
    }

    /// Register the metrics (`portico_aws_calls_total`,
    /// `portico_aws_call_attempts_total`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_aws_calls",
            "AWS API calls started, by operation and kind (read or mutating)",
            self.calls.clone(),
        );
        registry.register(
            "portico_aws_call_attempts",
            "HTTP attempts of AWS API calls, the SDK's retries included",
            self.attempts.clone(),
        );
    }

    /// Start (`Some`) or stop (`None`) injecting faults.
    #[cfg(feature = "testing")]
    pub fn set_faults(&self, faults: Option<FaultInjection>) {
        let mut state = self.state();
        state.faults = faults.filter(|f| f.every > 0);
        state.fault_seq = 0;
    }

    fn operation(cfg: &ConfigBag) -> String {
        match cfg.load::<Metadata>() {
            Some(m) if m.service().to_ascii_lowercase().contains("ec2") => {
                format!("ec2:{}", m.name())
            }
            Some(m) => m.name().to_string(),
            None => "unknown".to_string(),
        }
    }
}

fn fault_response(kind: FaultKind, ec2: bool) -> Result<Response, BoxError> {
    let (status, code, message) = match kind {
        FaultKind::Throttling if ec2 => (503, "RequestLimitExceeded", "Request limit exceeded."),
        FaultKind::Throttling => (400, "Throttling", "Rate exceeded"),
        FaultKind::ServiceUnavailable => (503, "ServiceUnavailable", "Service unavailable"),
    };
    let body = if ec2 {
        format!(
            "<Response><Errors><Error><Code>{code}</Code><Message>{message} (injected)</Message></Error></Errors><RequestID>injected</RequestID></Response>"
        )
    } else {
        format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message} (injected)</Message></Error><RequestId>injected</RequestId></ErrorResponse>"
        )
    };
    let mut response = Response::new(StatusCode::try_from(status)?, SdkBody::from(body));
    response.headers_mut().insert("content-type", "text/xml");
    Ok(response)
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "portico-call-counter"
    }

    // Not `read_before_execution`: client-level interceptors run that hook
    // before the operation's metadata is in the bag.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = Self::operation(cfg);
        let read = is_read_only(&op);
        self.calls
            .get_or_create(&CallLabels {
                operation: op.clone(),
                kind: if read { "read" } else { "mutating" },
            })
            .inc();
        let mut state = self.state();
        if read {
            state.stats.reads += 1;
        } else {
            state.stats.mutations += 1;
        }
        *state.stats.by_operation.entry(op).or_default() += 1;
        Ok(())
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.attempts.inc();
        let fault = {
            let mut state = self.state();
            state.stats.attempts += 1;
            match state.faults {
                Some(f) => {
                    state.fault_seq += 1;
                    if state.fault_seq.is_multiple_of(f.every) {
                        state.stats.injected_faults += 1;
                        Some(f.kind)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        if fault.is_some() {
            // Send nothing the server could act on; the response is replaced below.
            let request = context.request_mut();
            *request.body_mut() = SdkBody::from("");
            request.headers_mut().insert("content-length", "0");
        }
        cfg.interceptor_state().store_put(Injected(fault));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Injected(Some(kind))) = cfg.load::<Injected>().copied() {
            let ec2 = Self::operation(cfg).starts_with("ec2:");
            *context.response_mut() = fault_response(kind, ec2)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_by_name() {
        for (op, read) in [
            ("DescribeLoadBalancers", true),
            ("ec2:DescribeSubnets", true),
            ("CreateLoadBalancer", false),
            ("RegisterTargets", false),
            ("AddTags", false),
            ("ec2:RunInstances", false),
        ] {
            assert_eq!(is_read_only(op), read, "{op}");
        }
    }

    #[test]
    fn stats_subtract() {
        let mut a = CallStats::default();
        a.by_operation.insert("AddTags".into(), 1);
        a.mutations = 1;
        let mut b = a.clone();
        *b.by_operation.entry("AddTags".into()).or_default() += 2;
        b.by_operation.insert("DescribeTags".into(), 1);
        b.mutations += 2;
        b.reads += 1;
        let d = b.since(&a);
        assert_eq!(d.count("AddTags"), 2);
        assert_eq!(d.count("DescribeTags"), 1);
        assert_eq!((d.reads, d.mutations, d.total()), (1, 2, 3));
    }
}
