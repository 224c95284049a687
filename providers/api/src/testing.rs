//! An in-memory provider that records every call, for controller tests and
//! as the reference implementation the conformance suite is checked against.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::conformance::{Faults, Harness, Observed};
use crate::{
    Declined, IngressStatus, IpMode, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    LoadBalancerStatus, Notice, PortStatus, Prepared, ProviderError, ServiceAnnotations,
};

/// A class-less Service with this annotation is declined (it stands for
/// another controller's annotation, like AWS's `aws-load-balancer-type`).
pub const DECLINE_ANNOTATION: &str = "test.portico.io/owner";
/// A Service with this annotation selects its targets by node label.
pub const NODE_LABELS_ANNOTATION: &str = "test.portico.io/target-node-labels";
/// A Service with this annotation gets an unenforced-field note.
pub const UNENFORCED_ANNOTATION: &str = "test.portico.io/unenforced";
/// Each ensure of a Service with this annotation notices its value
/// (reason `TestNotice`), as AWS notices an instance it refused.
pub const NOTICE_ANNOTATION: &str = "test.portico.io/notice";

/// `prepare` then `ensure`, as the controller calls them: for tests that
/// start from a spec.
#[async_trait]
pub trait EnsureSpec {
    /// # Errors
    /// Those of `prepare`, then those of `ensure`.
    async fn ensure_spec(
        &self,
        spec: &LoadBalancerSpec,
    ) -> Result<LoadBalancerStatus, ProviderError>;
}

#[async_trait]
impl<P: LoadBalancerProvider + ?Sized> EnsureSpec for P {
    async fn ensure_spec(
        &self,
        spec: &LoadBalancerSpec,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        let prepared = self.prepare(spec.clone())?;
        self.ensure(&prepared).await
    }
}

/// Which provider operation a recorded call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Ensure,
    Get,
    Delete,
    ListOwned,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub key: Option<LoadBalancerKey>,
    /// For `ensure`: whether it created, changed, or left the balancer alone.
    pub effect: Effect,
    pub failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    None,
    Created,
    Updated,
    Deleted,
}

#[derive(Debug, Default)]
struct State {
    balancers: BTreeMap<LoadBalancerKey, (LoadBalancerSpec, LoadBalancerStatus)>,
    /// What the last ensure of each key noticed, until taken.
    notices: BTreeMap<LoadBalancerKey, Vec<Notice>>,
    next_ip: u32,
    calls: Vec<Call>,
    /// Errors handed out, one per call, before normal service resumes.
    queued_errors: VecDeque<ProviderError>,
    faults: Faults,
    fault_counter: u64,
}

/// An in-memory provider. Clones share state, so a "restarted controller"
/// in a test sees the balancers the first one made, like a real cloud.
#[derive(Debug, Clone, Default)]
pub struct RecordingProvider {
    state: Arc<Mutex<State>>,
    latency: Arc<Mutex<Duration>>,
    ensured: Arc<Notify>,
    started: Arc<std::sync::atomic::AtomicUsize>,
}

impl RecordingProvider {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic in another test thread must not hide this test's result.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls begun so far, finished or not (`calls` lists the finished).
    pub fn started(&self) -> usize {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// How many balancers `ensure` created.
    pub fn creates(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.effect == Effect::Created)
            .count()
    }

    /// Calls that changed something.
    pub fn mutations(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.effect != Effect::None)
            .count()
    }

    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The spec the balancer of `key` was last converged to.
    pub fn spec(&self, key: &LoadBalancerKey) -> Option<LoadBalancerSpec> {
        self.state()
            .balancers
            .get(key)
            .map(|(spec, _)| spec.clone())
    }

    /// The balancers that exist now.
    pub fn balancers(&self) -> Vec<LoadBalancerKey> {
        self.state().balancers.keys().cloned().collect()
    }

    /// The spec of the balancer of Service `namespace/name`, whatever its uid.
    pub fn spec_for(&self, namespace: &str, name: &str) -> Option<LoadBalancerSpec> {
        self.state()
            .balancers
            .iter()
            .find(|(k, _)| k.namespace == namespace && k.name == name)
            .map(|(_, (spec, _))| spec.clone())
    }

    /// Fail the next calls with these errors, one each.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = ProviderError>) {
        self.state().queued_errors.extend(errors);
    }

    /// Make every call take this long (a slow cloud).
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap_or_else(|e| e.into_inner()) = latency;
    }

    /// Put a balancer in place as if a previous controller had made it.
    pub fn insert(&self, spec: LoadBalancerSpec) {
        let mut state = self.state();
        let status = Self::status_for(&mut state, &spec);
        state.balancers.insert(spec.key.clone(), (spec, status));
    }

    /// Resolves after the next successful `ensure`.
    pub fn ensured(&self) -> Arc<Notify> {
        self.ensured.clone()
    }

    fn status_for(state: &mut State, spec: &LoadBalancerSpec) -> LoadBalancerStatus {
        let ip = spec.requested_ips.first().copied().unwrap_or_else(|| {
            state.next_ip += 1;
            // 198.51.100.0/24 is TEST-NET-2: never routed.
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, (state.next_ip % 250) as u8 + 1))
        });
        LoadBalancerStatus {
            ingress: vec![IngressStatus {
                ip: Some(ip),
                hostname: None,
                ip_mode: Some(IpMode::Vip),
                ports: PortStatus::of_listeners(&spec.listeners),
            }],
        }
    }

    async fn begin(&self, op: Op, key: Option<&LoadBalancerKey>) -> Result<(), ProviderError> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let latency = *self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut state = self.state();
        let injected = state.queued_errors.pop_front().or_else(|| {
            let faults = state.faults;
            if faults.fail_every == 0 {
                return None;
            }
            state.fault_counter += 1;
            state
                .fault_counter
                .is_multiple_of(faults.fail_every)
                .then(|| {
                    if faults.throttle {
                        ProviderError::Throttled {
                            retry_after: Some(Duration::from_millis(20)),
                        }
                    } else {
                        ProviderError::transient("injected fault")
                    }
                })
        });
        match injected {
            Some(err) => {
                state.calls.push(Call {
                    op,
                    key: key.cloned(),
                    effect: Effect::None,
                    failed: true,
                });
                Err(err)
            }
            None => Ok(()),
        }
    }

    fn record(&self, op: Op, key: Option<&LoadBalancerKey>, effect: Effect) {
        self.state().calls.push(Call {
            op,
            key: key.cloned(),
            effect,
            failed: false,
        });
    }
}

#[async_trait]
impl LoadBalancerProvider for RecordingProvider {
    /// The parsed `test.portico.io/weight` annotation.
    type Options = u8;

    fn name(&self) -> &str {
        "recording"
    }

    fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<u8>, ProviderError> {
        // Mirrors a real provider's annotation parsing so controller tests can exercise bad input.
        let weight = spec
            .annotations
            .parse_in_range("test.portico.io/weight", 0, 100)?
            .and_then(|w| u8::try_from(w).ok())
            .unwrap_or(1);
        let mut seen = std::collections::BTreeSet::new();
        for l in &spec.listeners {
            if !seen.insert((l.port, l.protocol)) {
                return Err(ProviderError::invalid(
                    "spec.ports",
                    format!("port {} {} is listed twice", l.port, l.protocol),
                ));
            }
        }
        if let Some(l) = spec
            .listeners
            .iter()
            .find(|l| l.protocol == crate::Protocol::Sctp)
        {
            return Err(ProviderError::Unsupported {
                what: format!("protocol SCTP on port {}", l.port),
            });
        }
        let unenforced = spec
            .annotations
            .get(UNENFORCED_ANNOTATION)
            .map(|v| format!("{UNENFORCED_ANNOTATION}={v} is accepted but not enforced"))
            .into_iter()
            .collect();
        Ok(Prepared {
            spec,
            options: weight,
            unenforced,
        })
    }

    fn declines(&self, annotations: &ServiceAnnotations) -> Option<Declined> {
        annotations.get(DECLINE_ANNOTATION).map(|owner| Declined {
            reason: format!("{DECLINE_ANNOTATION} names {owner}"),
        })
    }

    fn selects_targets_by_node_labels(&self, annotations: &ServiceAnnotations) -> bool {
        annotations.contains_key(NODE_LABELS_ANNOTATION)
    }

    async fn ensure(&self, prepared: &Prepared<u8>) -> Result<LoadBalancerStatus, ProviderError> {
        let spec = &prepared.spec;
        self.begin(Op::Ensure, Some(&spec.key)).await?;
        let (effect, status) = {
            let mut state = self.state();
            match state.balancers.get(&spec.key) {
                Some((existing, status)) if existing == spec => (Effect::None, status.clone()),
                Some((_, status)) => {
                    let mut status = status.clone();
                    let fresh = Self::status_for(&mut state, spec);
                    status.ingress[0].ports = fresh.ingress[0].ports.clone();
                    state
                        .balancers
                        .insert(spec.key.clone(), (spec.clone(), status.clone()));
                    (Effect::Updated, status)
                }
                None => {
                    let status = Self::status_for(&mut state, spec);
                    state
                        .balancers
                        .insert(spec.key.clone(), (spec.clone(), status.clone()));
                    (Effect::Created, status)
                }
            }
        };
        self.record(Op::Ensure, Some(&spec.key), effect);
        let noticed: Vec<Notice> = spec
            .annotations
            .get(NOTICE_ANNOTATION)
            .map(|v| Notice::new("TestNotice", v))
            .into_iter()
            .collect();
        self.state().notices.insert(spec.key.clone(), noticed);
        self.ensured.notify_waiters();
        Ok(status)
    }

    fn take_notices(&self, key: &LoadBalancerKey) -> Vec<Notice> {
        self.state().notices.remove(key).unwrap_or_default()
    }

    async fn get(
        &self,
        key: &LoadBalancerKey,
    ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        self.begin(Op::Get, Some(key)).await?;
        self.record(Op::Get, Some(key), Effect::None);
        Ok(self.state().balancers.get(key).map(|(_, s)| s.clone()))
    }

    async fn delete(&self, key: &LoadBalancerKey) -> Result<(), ProviderError> {
        self.begin(Op::Delete, Some(key)).await?;
        let removed = self.state().balancers.remove(key).is_some();
        self.record(
            Op::Delete,
            Some(key),
            if removed {
                Effect::Deleted
            } else {
                Effect::None
            },
        );
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError> {
        self.begin(Op::ListOwned, None).await?;
        self.record(Op::ListOwned, None, Effect::None);
        Ok(self.balancers())
    }
}

/// The conformance harness for [`RecordingProvider`].
#[async_trait]
impl Harness for RecordingProvider {
    type Provider = Self;

    fn provider(&self) -> &Self {
        self
    }

    async fn mutating_calls(&self) -> u64 {
        self.mutations() as u64
    }

    async fn observe(&self, key: &LoadBalancerKey) -> Option<Observed> {
        self.spec(key).map(|spec| Observed::exactly(&spec, self))
    }

    async fn set_faults(&self, faults: Faults) -> bool {
        let mut state = self.state();
        state.faults = faults;
        state.fault_counter = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::conformance_tests!(async { RecordingProvider::new() });
}
