//! What every handler shares, and the one path a change takes: made under
//! the store's lock, handed to the data plane in order, made durable, and
//! acknowledged only once traffic follows it.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::call::{ApiMetrics, ApiStats};
use super::durable::{PersistError, StateWriter};
use crate::cloud::CloudConfig;
use crate::cloud::error::ApiError;
use crate::cloud::faults::FaultState;
use crate::cloud::sink::ApplierMsg;
use crate::cloud::state::{Effects, Store};
use crate::forwarding::projection::balancer_forwarding;

/// The shared state behind every handler.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(super) config: CloudConfig,
    pub(crate) store: Mutex<Store>,
    pub(super) faults: Mutex<FaultState>,
    pub(super) stats: Mutex<ApiStats>,
    applier: mpsc::UnboundedSender<ApplierMsg>,
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

    /// Run a mutation under the lock; on success hand its effects to the
    /// data plane (in order, still under the lock), make it durable, and
    /// return only once the data plane forwards accordingly: what the API
    /// acknowledges is what traffic sees (read-your-writes).
    pub(super) async fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<(T, Effects), ApiError>,
    ) -> Result<T, ApiError> {
        let mut applied = Vec::new();
        let (value, snapshot) = {
            let mut store = lock(&self.store);
            let (value, effects) = f(&mut store)?;
            for id in &effects.remove {
                let (done, wait) = tokio::sync::oneshot::channel();
                if self
                    .applier
                    .send(ApplierMsg::Remove(id.clone(), Some(done)))
                    .is_ok()
                {
                    applied.push(wait);
                }
            }
            for id in &effects.apply {
                if let Some(fwd) = balancer_forwarding(&store, id, self.config.drain_timeout) {
                    let (done, wait) = tokio::sync::oneshot::channel();
                    if self
                        .applier
                        .send(ApplierMsg::Apply(fwd, Some(done)))
                        .is_ok()
                    {
                        applied.push(wait);
                    }
                }
            }
            let snapshot = self.writer.snapshot(&store).map_err(persist_failed)?;
            (value, snapshot)
        };
        if let Some(snapshot) = snapshot {
            self.writer.write(snapshot).await.map_err(persist_failed)?;
        }
        for wait in applied {
            // An error means the applier stopped (the cloud is shutting down).
            let _ = wait.await;
        }
        Ok(value)
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }
}

/// Log a failed save with its causes and answer 500: the change is in
/// effect but may not survive a restart.
fn persist_failed(err: PersistError) -> ApiError {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %message, "cannot save the cloud's state");
    ApiError::internal(message)
}
