//! What every handler shares, and the one path a change takes: made on a
//! copy of the store, handed to the data plane and waited for, committed
//! and made durable only once traffic follows it (or not made at all when
//! the data plane cannot apply it), then acknowledged.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::call::{ApiMetrics, ApiStats};
use super::durable::{PersistError, StateWriter};
use crate::cloud::CloudConfig;
use crate::cloud::error::ApiError;
use crate::cloud::faults::FaultState;
use crate::cloud::sink::{Applied, ApplierMsg};
use crate::cloud::state::{Effects, Store};
use crate::forwarding::ForwardingError;
use crate::forwarding::projection::balancer_forwarding;

/// The shared state behind every handler.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(super) config: CloudConfig,
    pub(crate) store: Mutex<Store>,
    pub(super) faults: Mutex<FaultState>,
    pub(super) stats: Mutex<ApiStats>,
    applier: mpsc::UnboundedSender<ApplierMsg>,
    /// Held through one change, from the copy of the store to its commit.
    changes: tokio::sync::Mutex<()>,
    writer: StateWriter,
    pub(crate) metrics: ApiMetrics,
}

pub(crate) type AppState = Arc<Inner>;

/// Lock `m`, even if a panicking holder poisoned it: every change to what
/// it guards is made whole or not at all.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn new(
        config: CloudConfig,
        store: Store,
        applier: mpsc::UnboundedSender<ApplierMsg>,
    ) -> Self {
        let faults = FaultState::new(config.faults.clone());
        let writer = StateWriter::new(config.state_file.clone());
        Self {
            config,
            store: Mutex::new(store),
            faults: Mutex::new(faults),
            stats: Mutex::new(ApiStats::default()),
            applier,
            changes: tokio::sync::Mutex::new(()),
            writer,
            metrics: ApiMetrics::default(),
        }
    }

    /// Send the forwarding of every balancer to the data plane (start-up).
    pub(crate) fn apply_all(&self) {
        let store = lock(&self.store);
        for id in store.balancers.keys() {
            if let Some(fwd) = balancer_forwarding(&store, id, self.config.drain_timeout) {
                let _ = self.applier.send(ApplierMsg::Apply(fwd, None));
            }
        }
    }

    /// Make one change, as the API's one path for changes:
    ///
    /// 1. `f` runs on a copy of the store (a refusal changes nothing);
    /// 2. the data plane is given the forwarding of every balancer the
    ///    change affects, and waited for;
    /// 3. only if it applied all of it does the change replace the store
    ///    and get written to the state file; the call then returns, so
    ///    what the API acknowledges is what traffic sees (read-your-writes).
    ///
    /// If the data plane cannot apply it (a VIP's port is taken on the
    /// host), the change is not made: the balancers it already reached are
    /// given their forwarding from the unchanged store again, and the
    /// caller gets 409 `ForwardingFailed`. Changes run one at a time, so
    /// the store a failed change leaves is the one before it.
    pub(super) async fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<(T, Effects), ApiError>,
    ) -> Result<T, ApiError> {
        let _one_change = self.changes.lock().await;
        let mut next = self.read(Store::clone);
        let (value, effects) = f(&mut next)?;
        if let Err(err) = self.forward(&next, &effects).await {
            let current = self.read(Store::clone);
            if let Err(again) = self.forward(&current, &effects).await {
                tracing::error!(error = %again, "data plane cannot return to the state before a failed change");
            }
            return Err(forwarding_failed(&err));
        }
        let snapshot = {
            let mut store = lock(&self.store);
            *store = next;
            self.writer.snapshot(&store).map_err(persist_failed)?
        };
        drop(_one_change);
        if let Some(snapshot) = snapshot {
            self.writer.write(snapshot).await.map_err(persist_failed)?;
        }
        Ok(value)
    }

    /// Hand the data plane what `store` says `effects`' balancers forward,
    /// in order, and wait until it has: the first error, if any.
    async fn forward(&self, store: &Store, effects: &Effects) -> Result<(), ForwardingError> {
        let mut waits = Vec::new();
        for id in &effects.remove {
            let (done, wait) = tokio::sync::oneshot::channel();
            if store.balancers.contains_key(id) {
                // Back to a balancer that was to go (a failed change).
                if let Some(fwd) = balancer_forwarding(store, id, self.config.drain_timeout) {
                    self.send(ApplierMsg::Apply(fwd, Some(done)), wait, &mut waits);
                }
            } else {
                self.send(ApplierMsg::Remove(id.clone(), Some(done)), wait, &mut waits);
            }
        }
        for id in &effects.apply {
            let (done, wait) = tokio::sync::oneshot::channel();
            match balancer_forwarding(store, id, self.config.drain_timeout) {
                Some(fwd) => self.send(ApplierMsg::Apply(fwd, Some(done)), wait, &mut waits),
                // Gone in `store` (a failed change made it): stop forwarding.
                None => self.send(ApplierMsg::Remove(id.clone(), Some(done)), wait, &mut waits),
            }
        }
        let mut first = Ok(());
        for wait in waits {
            // A closed channel means the applier stopped (the cloud is
            // shutting down): nothing forwards any more either way.
            if let Ok(Err(err)) = wait.await
                && first.is_ok()
            {
                first = Err(err);
            }
        }
        first
    }

    fn send(&self, msg: ApplierMsg, wait: Applied, waits: &mut Vec<Applied>) {
        if self.applier.send(msg).is_ok() {
            waits.push(wait);
        }
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }
}

/// 409 `ForwardingFailed`, with the data plane's error and its causes.
fn forwarding_failed(err: &ForwardingError) -> ApiError {
    ApiError::conflict(
        "ForwardingFailed",
        format!(
            "the data plane cannot apply the change, so it was not made: {}",
            chain(err)
        ),
    )
}

/// `err` and its causes, `: `-separated.
fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Log a failed save with its causes and answer 500: the change is in
/// effect but may not survive a restart.
fn persist_failed(err: PersistError) -> ApiError {
    let message = chain(&err);
    tracing::error!(error = %message, "cannot save the cloud's state");
    ApiError::internal(message)
}
