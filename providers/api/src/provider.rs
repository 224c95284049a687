use async_trait::async_trait;

use crate::{LoadBalancerKey, LoadBalancerSpec, LoadBalancerStatus, ProviderError};

/// A place that can build load balancers: a cloud, a mock cloud, or a
/// bare-metal announcer.
///
/// The controller calls it for one Service at a time per key (never two
/// concurrent calls for the same key), but for many keys concurrently.
#[async_trait]
pub trait LoadBalancerProvider: Send + Sync + 'static {
    /// A short lowercase name (`slb`, `aws`, `arp`) for logs and metrics.
    fn name(&self) -> &str;

    /// Check the provider-specific parts of `spec` (annotations above all)
    /// without I/O, so a bad Service is reported before any cloud call.
    ///
    /// # Errors
    /// [`ProviderError::InvalidSpec`] naming the field, or
    /// [`ProviderError::Unsupported`].
    fn validate(&self, spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        let _ = spec;
        Ok(())
    }

    /// Parts of `spec` this provider accepts but does not enforce, each a
    /// sentence naming the field and what to do instead (AWS: an NLB cannot
    /// filter `loadBalancerSourceRanges`). No I/O. The controller reports
    /// them as Warning Events when the Service changes, so nothing a user
    /// asked for is dropped silently.
    fn unenforced(&self, spec: &LoadBalancerSpec) -> Vec<String> {
        let _ = spec;
        Vec::new()
    }

    /// Make the balancer for `spec.key` exist exactly as `spec` describes.
    ///
    /// # Idempotency
    /// Finds an existing balancer by ownership (tags or deterministic name)
    /// before creating one, so a retry after a crash never makes a second.
    /// When the cloud already matches `spec`, makes no mutating call.
    ///
    /// # Errors
    /// Anything in [`ProviderError`]; a failed call may leave the balancer
    /// partly converged, but always findable and convergeable by the next
    /// `ensure` or removable by `delete`.
    ///
    /// # Cancellation
    /// The future may be dropped at any await point (shutdown, leadership
    /// loss); the same guarantees as for an error apply.
    async fn ensure(&self, spec: &LoadBalancerSpec) -> Result<LoadBalancerStatus, ProviderError>;

    /// The balancer's current status, if it exists.
    ///
    /// # Idempotency
    /// Read-only.
    async fn get(&self, key: &LoadBalancerKey)
    -> Result<Option<LoadBalancerStatus>, ProviderError>;

    /// Delete everything owned by `key`.
    ///
    /// # Idempotency
    /// Deleting what is already gone is success.
    ///
    /// # Errors
    /// On error some parts may remain; calling again finishes the job.
    ///
    /// # Cancellation
    /// As for `ensure`.
    async fn delete(&self, key: &LoadBalancerKey) -> Result<(), ProviderError>;

    /// Every balancer this cluster owns (by ownership tags), for orphan
    /// garbage collection.
    ///
    /// # Idempotency
    /// Read-only.
    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError>;
}

#[async_trait]
impl<P: LoadBalancerProvider + ?Sized> LoadBalancerProvider for std::sync::Arc<P> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn validate(&self, spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        (**self).validate(spec)
    }
    fn unenforced(&self, spec: &LoadBalancerSpec) -> Vec<String> {
        (**self).unenforced(spec)
    }
    async fn ensure(&self, spec: &LoadBalancerSpec) -> Result<LoadBalancerStatus, ProviderError> {
        (**self).ensure(spec).await
    }
    async fn get(
        &self,
        key: &LoadBalancerKey,
    ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        (**self).get(key).await
    }
    async fn delete(&self, key: &LoadBalancerKey) -> Result<(), ProviderError> {
        (**self).delete(key).await
    }
    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError> {
        (**self).list_owned().await
    }
}
