//! Forwarding sinks for tests and the single applier task that feeds the
//! configured sink in the order the cloud's changes happened.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::forwarding::{BalancerForwarding, ForwardingError, ForwardingSink};

/// A sink that forwards nothing (API-only clouds).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

#[async_trait]
impl ForwardingSink for NullSink {
    async fn apply(&self, _config: BalancerForwarding) -> Result<(), ForwardingError> {
        Ok(())
    }
    async fn remove(&self, _balancer_id: &str) {}
}

/// One call a [`RecordingSink`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    Apply(BalancerForwarding),
    Remove(String),
}

impl SinkEvent {
    pub fn balancer_id(&self) -> &str {
        match self {
            Self::Apply(c) => &c.balancer_id,
            Self::Remove(id) => id,
        }
    }
}

/// A sink that records every call, for tests.
#[derive(Debug, Clone, Default)]
pub struct RecordingSink {
    events: Arc<Mutex<Vec<SinkEvent>>>,
    changed: Arc<Notify>,
}

impl RecordingSink {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SinkEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn events(&self) -> Vec<SinkEvent> {
        self.lock().clone()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The last config applied to `balancer_id`, unless it was removed after.
    pub fn current(&self, balancer_id: &str) -> Option<BalancerForwarding> {
        match self
            .lock()
            .iter()
            .rev()
            .find(|e| e.balancer_id() == balancer_id)
        {
            Some(SinkEvent::Apply(c)) => Some(c.clone()),
            _ => None,
        }
    }

    /// Wait until `pred` holds for the recorded events, or `timeout` passes;
    /// returns whether it held.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[SinkEvent]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if pred(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.lock());
            }
        }
    }

    fn push(&self, event: SinkEvent) {
        self.lock().push(event);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl ForwardingSink for RecordingSink {
    async fn apply(&self, config: BalancerForwarding) -> Result<(), ForwardingError> {
        self.push(SinkEvent::Apply(config));
        Ok(())
    }
    async fn remove(&self, balancer_id: &str) {
        self.push(SinkEvent::Remove(balancer_id.to_string()));
    }
}

/// Answered once the sink has carried out one message: the sink's error,
/// if it failed.
pub(crate) type Applied = oneshot::Receiver<Result<(), ForwardingError>>;

/// What the applier task is told to do. `done` (when given) is answered
/// once the sink has carried it out, so an API call can return only when
/// the data plane forwards accordingly, or fail when it cannot.
#[derive(Debug)]
pub(crate) enum ApplierMsg {
    Apply(
        BalancerForwarding,
        Option<oneshot::Sender<Result<(), ForwardingError>>>,
    ),
    Remove(String, Option<oneshot::Sender<Result<(), ForwardingError>>>),
}

/// Feeds the sink from one task, so calls for one balancer keep their order
/// and the state lock is never held across the sink's awaits.
pub(crate) fn spawn_applier(
    sink: Arc<dyn ForwardingSink>,
) -> (
    mpsc::UnboundedSender<ApplierMsg>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<ApplierMsg>();
    let handle = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let (result, done) = match msg {
                ApplierMsg::Apply(config, done) => {
                    let id = config.balancer_id.clone();
                    let result = sink.apply(config).await;
                    if let Err(err) = &result {
                        tracing::warn!(balancer = %id, error = %err, "data plane could not apply the balancer");
                    }
                    (result, done)
                }
                ApplierMsg::Remove(id, done) => {
                    sink.remove(&id).await;
                    (Ok(()), done)
                }
            };
            if let Some(done) = done {
                // The caller may have given up waiting; nothing to tell then.
                let _ = done.send(result);
            }
        }
    });
    (tx, handle)
}
