use std::time::Duration;

/// Why a provider call failed, phrased as what the controller should do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// A temporary failure (network, 5xx, eventual consistency): retry with backoff.
    #[error("transient provider error: {message}")]
    Transient {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The cloud asked us to slow down; retry no sooner than `retry_after` when given.
    #[error("throttled by the provider{}", retry_after.map(|d| format!(", retry after {}ms", d.as_millis())).unwrap_or_default())]
    Throttled { retry_after: Option<Duration> },
    /// The Service asks for something this provider cannot build; `field`
    /// names what to fix. From the pure `prepare`, the controller waits for
    /// the Service to change; from a cloud call, it retries slowly (clouds
    /// refuse what they later accept: limits, eventual consistency).
    #[error("invalid load balancer spec: {field}: {reason}")]
    InvalidSpec { field: String, reason: String },
    /// An account limit stops the change; retry slowly, an operator must act.
    #[error("quota exceeded for {resource}: {message}")]
    QuotaExceeded { resource: String, message: String },
    /// The cloud state changed under us (concurrent writer, object in a
    /// transitional state): re-read and retry soon.
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// Something the spec refers to (a balancer id to reuse, a subnet) does not exist.
    #[error("not found: {what}")]
    NotFound { what: String },
    /// The provider does not support what the spec asks (e.g. a protocol).
    #[error("unsupported by this provider: {what}")]
    Unsupported { what: String },
}

impl ProviderError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            source: None,
        }
    }

    pub fn transient_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Transient {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The least time before the next attempt after this error. Every error
    /// a cloud returns is retried (clouds are eventually consistent, limits
    /// clear, someone fixes the account): these floors, under the
    /// controller's exponential backoff with jitter, keep the retries sane.
    ///
    /// | kind | floor | why |
    /// | --- | --- | --- |
    /// | Transient, Conflict | none | the next try likely works |
    /// | Throttled | `retry_after`, else 2 s | the cloud asked to slow down |
    /// | NotFound | 5 s | a just-created object is not visible yet (AWS `TargetGroupNotFound`) |
    /// | InvalidSpec, Unsupported | 30 s | the cloud refused; only a change or a cloud-side fix helps |
    /// | QuotaExceeded | 60 s | an operator must raise a limit or free capacity |
    pub fn retry_floor(&self) -> Duration {
        match self {
            Self::Transient { .. } | Self::Conflict { .. } => Duration::ZERO,
            Self::Throttled { retry_after } => retry_after.unwrap_or(Duration::from_secs(2)),
            Self::NotFound { .. } => Duration::from_secs(5),
            Self::InvalidSpec { .. } | Self::Unsupported { .. } => Duration::from_secs(30),
            Self::QuotaExceeded { .. } => Duration::from_secs(60),
        }
    }

    /// A short, stable label for metrics and Service conditions.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Transient { .. } => "transient",
            Self::Throttled { .. } => "throttled",
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::Conflict { .. } => "conflict",
            Self::NotFound { .. } => "not_found",
            Self::Unsupported { .. } => "unsupported",
        }
    }

    /// The CamelCase reason used in Kubernetes conditions.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            Self::Transient { .. } => "ProviderError",
            Self::Throttled { .. } => "Throttled",
            Self::InvalidSpec { .. } => "InvalidSpec",
            Self::QuotaExceeded { .. } => "QuotaExceeded",
            Self::Conflict { .. } => "Conflict",
            Self::NotFound { .. } => "NotFound",
            Self::Unsupported { .. } => "Unsupported",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_floors_per_kind() {
        let cases = [
            ("transient: no floor", ProviderError::transient("x"), 0),
            (
                "conflict: no floor",
                ProviderError::Conflict {
                    message: "x".into(),
                },
                0,
            ),
            (
                "throttled: what the cloud said",
                ProviderError::Throttled {
                    retry_after: Some(Duration::from_millis(7_500)),
                },
                7_500,
            ),
            (
                "throttled without a hint: 2 s",
                ProviderError::Throttled { retry_after: None },
                2_000,
            ),
            (
                "not found: 5 s",
                ProviderError::NotFound { what: "x".into() },
                5_000,
            ),
            ("invalid: 30 s", ProviderError::invalid("f", "r"), 30_000),
            (
                "unsupported: 30 s",
                ProviderError::Unsupported { what: "x".into() },
                30_000,
            ),
            (
                "quota: 60 s",
                ProviderError::QuotaExceeded {
                    resource: "x".into(),
                    message: "y".into(),
                },
                60_000,
            ),
        ];
        for (desc, err, ms) in cases {
            assert_eq!(err.retry_floor(), Duration::from_millis(ms), "{desc}");
        }
    }

    #[test]
    fn messages_name_the_field() {
        let err = ProviderError::invalid("metadata.annotations[x]", "not a number");
        assert_eq!(
            err.to_string(),
            "invalid load balancer spec: metadata.annotations[x]: not a number"
        );
        let throttled = ProviderError::Throttled {
            retry_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            throttled.to_string(),
            "throttled by the provider, retry after 1500ms"
        );
    }
}
