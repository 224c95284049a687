//! One provider call per Service at a time: the reconciler and the orphan
//! collector both take a Service's lock before they call the provider for
//! its balancer (the provider contract promises each key one caller).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Locks by Service (`namespace/name`), created on demand and dropped when
/// nobody holds or waits for them.
#[derive(Debug, Default)]
pub struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Held while a caller works on one Service's balancer.
#[derive(Debug)]
pub struct KeyGuard<'a> {
    owner: &'a KeyLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// Wait for, then hold, the lock of `namespace/name`.
    pub async fn lock(&self, namespace: &str, name: &str) -> KeyGuard<'_> {
        let key = format!("{namespace}/{name}");
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        KeyGuard {
            owner: self,
            key,
            guard: Some(guard),
        }
    }

    /// Whether someone holds the lock of `namespace/name` now.
    #[cfg(test)]
    pub(crate) fn is_held(&self, namespace: &str, name: &str) -> bool {
        let locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .get(&format!("{namespace}/{name}"))
            .is_some_and(|l| l.try_lock().is_err())
    }

    /// How many Services have a lock entry (held or waited for).
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map holds it now: nobody waits, forget it.
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_key_and_no_leftovers() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("default", "web").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("default", "web").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the second caller waits for the first"
        );
        // Another Service is not held up.
        let other = tokio::time::timeout(Duration::from_secs(1), locks.lock("default", "api"))
            .await
            .expect("other keys are free");
        drop(other);
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter gets the lock")
            .expect("task");
        assert!(locks.is_empty(), "released locks are forgotten");
    }
}
