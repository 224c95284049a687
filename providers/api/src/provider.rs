//! The provider contract: what a provider promises the controller, and the
//! object-safe form the controller holds.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

use crate::{LoadBalancerKey, LoadBalancerSpec, LoadBalancerStatus, ProviderError};

/// A Service's annotations, as the controller reads them before any spec
/// exists (to decide whether a Service is portico's at all).
pub type ServiceAnnotations = BTreeMap<String, String>;

/// A spec a provider has checked and parsed: the spec itself, the
/// provider's typed options read from it (annotations above all), and what
/// the provider accepts but does not enforce. Made once per reconcile by
/// [`LoadBalancerProvider::prepare`], with no I/O, and handed to `ensure`,
/// so annotations are parsed exactly once.
#[derive(Debug, Clone)]
pub struct Prepared<O> {
    pub spec: LoadBalancerSpec,
    pub options: O,
    /// Parts of the spec accepted but not enforced, each a sentence naming
    /// the field and what to do instead. The controller reports them as
    /// Warning Events when the Service changes, so nothing a user asked for
    /// is dropped silently.
    pub unenforced: Vec<String>,
}

impl<O> Prepared<O> {
    /// A prepared spec with nothing unenforced.
    pub fn new(spec: LoadBalancerSpec, options: O) -> Self {
        Self {
            spec,
            options,
            unenforced: Vec::new(),
        }
    }
}

/// Why a provider leaves a Service to another controller although the
/// Service has no class (e.g. the AWS Load Balancer Controller's
/// `aws-load-balancer-type: external`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declined {
    /// Who the Service belongs to instead, and the annotation that says so.
    pub reason: String,
}

/// Something a successful `ensure` noticed that did not fail it but that the
/// Service's owner should see (an instance the cloud refused as a target).
/// The controller posts it as a Warning Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The Event's reason, CamelCase (`TargetRefused`).
    pub reason: String,
    /// A sentence naming what and what to do.
    pub message: String,
}

impl Notice {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// A place that can build load balancers: a cloud, a mock cloud, or a
/// bare-metal announcer. Implement this; the controller holds it as a
/// [`DynProvider`] (every provider is one through a blanket impl).
///
/// The controller calls it for one Service at a time per key (never two
/// concurrent calls for the same key), but for many keys concurrently.
#[async_trait]
pub trait LoadBalancerProvider: Send + Sync + 'static {
    /// What `prepare` reads from a spec (typed annotations); `()` for a
    /// provider without options.
    type Options: Send + Sync + 'static;

    /// A short lowercase name (`slb`, `aws`, `arp`) for logs and metrics.
    fn name(&self) -> &str;

    /// Check and parse the provider-specific parts of `spec` without I/O, so
    /// a bad Service is reported before any cloud call.
    ///
    /// # Errors
    /// [`ProviderError::InvalidSpec`] naming the field, or
    /// [`ProviderError::Unsupported`].
    fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<Self::Options>, ProviderError>;

    /// Whether a class-less Service that portico would otherwise claim
    /// belongs to another controller by its annotations. No I/O.
    fn declines(&self, annotations: &ServiceAnnotations) -> Option<Declined> {
        let _ = annotations;
        None
    }

    /// Whether the Service picks its targets by node label (so a change of
    /// labels alone must reconcile it). No I/O.
    fn selects_targets_by_node_labels(&self, annotations: &ServiceAnnotations) -> bool {
        let _ = annotations;
        false
    }

    /// Make the balancer for the prepared spec's key exist exactly as the
    /// spec describes.
    ///
    /// # Idempotency
    /// Finds an existing balancer by ownership (tags or deterministic name)
    /// before creating one, so a retry after a crash never makes a second.
    /// When the cloud already matches the spec, makes no mutating call.
    ///
    /// # Errors
    /// Anything in [`ProviderError`]; a failed call may leave the balancer
    /// partly converged, but always findable and convergeable by the next
    /// `ensure` or removable by `delete`.
    ///
    /// # Cancellation
    /// The future may be dropped at any await point (shutdown, leadership
    /// loss); the same guarantees as for an error apply.
    async fn ensure(
        &self,
        prepared: &Prepared<Self::Options>,
    ) -> Result<LoadBalancerStatus, ProviderError>;

    /// What the last successful `ensure` of `key` noticed (see [`Notice`]).
    /// The controller asks right after that `ensure` returned, before any
    /// other call for `key`. No I/O.
    ///
    /// # Idempotency
    /// Drains: a second call returns nothing until the next `ensure`.
    fn take_notices(&self, key: &LoadBalancerKey) -> Vec<Notice> {
        let _ = key;
        Vec::new()
    }

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

/// A prepared spec whose options type is known only to the provider that
/// made it: what the controller carries from `prepare` to `ensure`.
pub struct PreparedSpec(Box<dyn AnyPrepared>);

impl PreparedSpec {
    pub fn spec(&self) -> &LoadBalancerSpec {
        self.0.spec()
    }

    pub fn unenforced(&self) -> &[String] {
        self.0.unenforced()
    }
}

impl fmt::Debug for PreparedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedSpec")
            .field("spec", self.spec())
            .field("unenforced", &self.unenforced())
            .finish_non_exhaustive()
    }
}

trait AnyPrepared: Send + Sync {
    fn spec(&self) -> &LoadBalancerSpec;
    fn unenforced(&self) -> &[String];
    fn as_any(&self) -> &dyn Any;
}

impl<O: Send + Sync + 'static> AnyPrepared for Prepared<O> {
    fn spec(&self) -> &LoadBalancerSpec {
        &self.spec
    }
    fn unenforced(&self) -> &[String] {
        &self.unenforced
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The object-safe form of [`LoadBalancerProvider`] the controller holds
/// (`Arc<dyn DynProvider>`). Implemented for every provider; do not
/// implement it by hand.
#[async_trait]
pub trait DynProvider: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// See [`LoadBalancerProvider::prepare`].
    ///
    /// # Errors
    /// As there.
    fn prepare(&self, spec: LoadBalancerSpec) -> Result<PreparedSpec, ProviderError>;
    fn declines(&self, annotations: &ServiceAnnotations) -> Option<Declined>;
    fn selects_targets_by_node_labels(&self, annotations: &ServiceAnnotations) -> bool;
    /// See [`LoadBalancerProvider::ensure`].
    async fn ensure(&self, prepared: &PreparedSpec) -> Result<LoadBalancerStatus, ProviderError>;
    fn take_notices(&self, key: &LoadBalancerKey) -> Vec<Notice>;
    async fn get(&self, key: &LoadBalancerKey)
    -> Result<Option<LoadBalancerStatus>, ProviderError>;
    async fn delete(&self, key: &LoadBalancerKey) -> Result<(), ProviderError>;
    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError>;
}

#[async_trait]
impl<P: LoadBalancerProvider> DynProvider for P {
    fn name(&self) -> &str {
        LoadBalancerProvider::name(self)
    }
    fn prepare(&self, spec: LoadBalancerSpec) -> Result<PreparedSpec, ProviderError> {
        let prepared = LoadBalancerProvider::prepare(self, spec)?;
        Ok(PreparedSpec(Box::new(prepared)))
    }
    fn declines(&self, annotations: &ServiceAnnotations) -> Option<Declined> {
        LoadBalancerProvider::declines(self, annotations)
    }
    fn selects_targets_by_node_labels(&self, annotations: &ServiceAnnotations) -> bool {
        LoadBalancerProvider::selects_targets_by_node_labels(self, annotations)
    }
    async fn ensure(&self, prepared: &PreparedSpec) -> Result<LoadBalancerStatus, ProviderError> {
        let Some(prepared) = prepared.0.as_any().downcast_ref::<Prepared<P::Options>>() else {
            // Only a wiring mistake gets here (a spec prepared by another
            // provider); refuse rather than build from unparsed options.
            return Err(ProviderError::invalid(
                "spec",
                format!(
                    "prepared by another provider, not {}",
                    LoadBalancerProvider::name(self)
                ),
            ));
        };
        LoadBalancerProvider::ensure(self, prepared).await
    }
    fn take_notices(&self, key: &LoadBalancerKey) -> Vec<Notice> {
        LoadBalancerProvider::take_notices(self, key)
    }
    async fn get(
        &self,
        key: &LoadBalancerKey,
    ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        LoadBalancerProvider::get(self, key).await
    }
    async fn delete(&self, key: &LoadBalancerKey) -> Result<(), ProviderError> {
        LoadBalancerProvider::delete(self, key).await
    }
    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError> {
        LoadBalancerProvider::list_owned(self).await
    }
}

#[async_trait]
impl<P: LoadBalancerProvider> LoadBalancerProvider for std::sync::Arc<P> {
    type Options = P::Options;
    fn name(&self) -> &str {
        (**self).name()
    }
    fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<Self::Options>, ProviderError> {
        (**self).prepare(spec)
    }
    fn declines(&self, annotations: &ServiceAnnotations) -> Option<Declined> {
        (**self).declines(annotations)
    }
    fn selects_targets_by_node_labels(&self, annotations: &ServiceAnnotations) -> bool {
        (**self).selects_targets_by_node_labels(annotations)
    }
    async fn ensure(
        &self,
        prepared: &Prepared<Self::Options>,
    ) -> Result<LoadBalancerStatus, ProviderError> {
        (**self).ensure(prepared).await
    }
    fn take_notices(&self, key: &LoadBalancerKey) -> Vec<Notice> {
        (**self).take_notices(key)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterName;

    /// The smallest provider: it builds nothing and parses one option.
    struct Parsing;

    #[async_trait]
    impl LoadBalancerProvider for Parsing {
        type Options = u8;
        fn name(&self) -> &str {
            "parsing"
        }
        fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<u8>, ProviderError> {
            let weight = spec.annotations.parse("weight")?.unwrap_or(1);
            Ok(Prepared::new(spec, weight))
        }
        async fn ensure(
            &self,
            prepared: &Prepared<u8>,
        ) -> Result<LoadBalancerStatus, ProviderError> {
            // Echo the parsed option so the test sees it crossed the erasure.
            Err(ProviderError::transient(format!(
                "weight {}",
                prepared.options
            )))
        }
        async fn get(
            &self,
            _: &LoadBalancerKey,
        ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
            Ok(None)
        }
        async fn delete(&self, _: &LoadBalancerKey) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError> {
            Ok(Vec::new())
        }
    }

    struct Other;

    #[async_trait]
    impl LoadBalancerProvider for Other {
        type Options = String;
        fn name(&self) -> &str {
            "other"
        }
        fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<String>, ProviderError> {
            Ok(Prepared::new(spec, String::new()))
        }
        async fn ensure(&self, _: &Prepared<String>) -> Result<LoadBalancerStatus, ProviderError> {
            Ok(LoadBalancerStatus::default())
        }
        async fn get(
            &self,
            _: &LoadBalancerKey,
        ) -> Result<Option<LoadBalancerStatus>, ProviderError> {
            Ok(None)
        }
        async fn delete(&self, _: &LoadBalancerKey) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>, ProviderError> {
            Ok(Vec::new())
        }
    }

    fn spec(weight: &str) -> LoadBalancerSpec {
        let mut spec = LoadBalancerSpec::new(LoadBalancerKey::new(
            ClusterName::new("c"),
            "default",
            "web",
            "u1",
        ));
        spec.annotations =
            crate::Annotations::new(BTreeMap::from([("weight".to_string(), weight.to_string())]));
        spec
    }

    #[tokio::test]
    async fn options_cross_the_object_safe_form_once_parsed() {
        let provider: std::sync::Arc<dyn DynProvider> = std::sync::Arc::new(Parsing);
        let prepared = provider.prepare(spec("7")).expect("valid");
        assert_eq!(prepared.spec().key.name, "web");
        let err = provider.ensure(&prepared).await.expect_err("echo");
        assert!(err.to_string().contains("weight 7"), "{err}");
        let bad = provider.prepare(spec("seven")).expect_err("not a number");
        assert!(
            bad.to_string().contains("metadata.annotations[weight]"),
            "{bad}"
        );
        assert_eq!(
            provider.declines(&BTreeMap::new()),
            None,
            "declines nothing by default"
        );
    }

    #[tokio::test]
    async fn a_spec_prepared_by_another_provider_is_refused() {
        let other = DynProvider::prepare(&Other, spec("1")).expect("valid");
        let err = DynProvider::ensure(&Parsing, &other)
            .await
            .expect_err("wrong provider");
        assert!(
            err.to_string().contains("prepared by another provider"),
            "{err}"
        );
    }
}
