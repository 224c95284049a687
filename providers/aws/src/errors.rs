//! AWS error codes mapped to what the controller should do about them.

use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use portico_provider::ProviderError;

/// How long to wait after throttling the SDK's own retries did not absorb.
pub const THROTTLE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Map one error response (`code` and HTTP `status` as AWS sent them) of
/// operation `op` to a [`ProviderError`]. Pure, so a table test covers it.
pub fn classify(op: &str, code: Option<&str>, status: Option<u16>, message: &str) -> ProviderError {
    let code_str = code.unwrap_or("");
    let detail = if message.is_empty() {
        format!("{op}: {code_str}")
    } else {
        format!("{op}: {code_str}: {message}")
    };
    match code_str {
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestThrottled"
        | "SlowDown" => ProviderError::Throttled {
            retry_after: Some(THROTTLE_RETRY_AFTER),
        },
        "DuplicateLoadBalancerName"
        | "DuplicateTargetGroupName"
        | "DuplicateListener"
        | "ResourceInUse"
        | "IncorrectState"
        | "OperationNotPermitted"
        | "InvalidGroup.Duplicate" => ProviderError::Conflict { message: detail },
        // A security group still held (by a just-deleted NLB's network
        // interfaces, for a minute or so): it frees itself; retry.
        "DependencyViolation" => ProviderError::transient(format!("still in use: {detail}")),
        c if c.starts_with("TooMany") || c.ends_with("LimitExceeded") => {
            ProviderError::QuotaExceeded {
                resource: c.to_string(),
                message: detail,
            }
        }
        "ValidationError"
        | "InvalidConfigurationRequest"
        | "InvalidTarget"
        | "InvalidSubnet"
        | "InvalidScheme"
        | "InvalidSecurityGroup"
        | "InvalidGroupId.Malformed"
        | "InvalidCertificate"
        | "CertificateNotFound"
        | "InvalidLoadBalancerAction"
        | "IncompatibleProtocols"
        | "UnsupportedProtocol"
        | "AvailabilityZoneNotSupported"
        | "AllocationIdNotFound"
        | "SubnetNotFound"
        | "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "InvalidParameter"
        | "MissingParameter" => {
            ProviderError::invalid(format!("aws {op}"), format!("{code_str}: {message}"))
        }
        c if c.ends_with("NotFound") || c.ends_with("NotFoundException") => {
            ProviderError::NotFound { what: detail }
        }
        "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
            // An operator fixes IAM; retrying slowly then recovers on its own.
            ProviderError::transient(format!("access denied: {detail}"))
        }
        _ => match status {
            Some(s) if s >= 500 => ProviderError::transient(format!("server error {s}: {detail}")),
            _ => ProviderError::transient(detail),
        },
    }
}

/// Map an SDK error of operation `op`.
pub fn from_sdk<E>(op: &str, err: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            classify(
                op,
                e.code(),
                Some(service.raw().status().as_u16()),
                e.message().unwrap_or_default(),
            )
        }
        SdkError::TimeoutError(_) => ProviderError::transient(format!("{op}: timed out")),
        _ => {
            // Dispatch and response failures: the connection, not the request.
            let message = format!("{op}: {}", error_chain(&err));
            ProviderError::Transient {
                message,
                source: Some(Box::new(err)),
            }
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Nothing (`T::default()`) for a not-found error: deleting what is gone is
/// done, and a resource gone since it was listed has no tags.
pub fn gone_is_ok<T: Default>(result: Result<T, ProviderError>) -> Result<T, ProviderError> {
    match result {
        Err(ProviderError::NotFound { .. }) => Ok(T::default()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_what_the_controller_does() {
        let cases: &[(&str, Option<&str>, Option<u16>, &str)] = &[
            ("throttling", Some("Throttling"), Some(400), "throttled"),
            (
                "throttling exception",
                Some("ThrottlingException"),
                Some(400),
                "throttled",
            ),
            (
                "ec2 request limit",
                Some("RequestLimitExceeded"),
                Some(503),
                "throttled",
            ),
            (
                "validation",
                Some("ValidationError"),
                Some(400),
                "invalid_spec",
            ),
            (
                "bad config",
                Some("InvalidConfigurationRequest"),
                Some(400),
                "invalid_spec",
            ),
            (
                "bad target",
                Some("InvalidTarget"),
                Some(400),
                "invalid_spec",
            ),
            (
                "bad subnet",
                Some("InvalidSubnet"),
                Some(400),
                "invalid_spec",
            ),
            (
                "missing subnet",
                Some("SubnetNotFound"),
                Some(400),
                "invalid_spec",
            ),
            (
                "too many lbs",
                Some("TooManyLoadBalancers"),
                Some(400),
                "quota_exceeded",
            ),
            (
                "too many targets",
                Some("TooManyTargets"),
                Some(400),
                "quota_exceeded",
            ),
            (
                "too many registrations",
                Some("TooManyRegistrationsForTargetId"),
                Some(400),
                "quota_exceeded",
            ),
            (
                "lb gone",
                Some("LoadBalancerNotFound"),
                Some(400),
                "not_found",
            ),
            (
                "tg gone",
                Some("TargetGroupNotFound"),
                Some(400),
                "not_found",
            ),
            (
                "listener gone",
                Some("ListenerNotFound"),
                Some(400),
                "not_found",
            ),
            (
                "duplicate lb",
                Some("DuplicateLoadBalancerName"),
                Some(400),
                "conflict",
            ),
            (
                "duplicate tg",
                Some("DuplicateTargetGroupName"),
                Some(400),
                "conflict",
            ),
            ("tg in use", Some("ResourceInUse"), Some(400), "conflict"),
            (
                "unavailable",
                Some("ServiceUnavailable"),
                Some(503),
                "transient",
            ),
            ("internal", Some("InternalFailure"), Some(500), "transient"),
            ("bare 503", None, Some(503), "transient"),
            (
                "access denied",
                Some("AccessDenied"),
                Some(403),
                "transient",
            ),
            ("unknown 4xx", Some("SomethingNew"), Some(400), "transient"),
        ];
        for (desc, code, status, label) in cases {
            let err = classify("CreateLoadBalancer", *code, *status, "details");
            assert_eq!(err.metric_label(), *label, "{desc}: {err}");
        }
    }

    #[test]
    fn invalid_names_the_operation_and_cause() {
        let err = classify(
            "CreateTargetGroup",
            Some("ValidationError"),
            Some(400),
            "port out of range",
        );
        assert_eq!(
            err.to_string(),
            "invalid load balancer spec: aws CreateTargetGroup: ValidationError: port out of range"
        );
    }

    #[test]
    fn not_found_counts_as_deleted() {
        assert!(
            gone_is_ok::<()>(Err(classify(
                "DeleteListener",
                Some("ListenerNotFound"),
                None,
                ""
            )))
            .is_ok()
        );
        assert!(
            gone_is_ok::<()>(Err(classify(
                "DeleteListener",
                Some("Throttling"),
                None,
                ""
            )))
            .is_err()
        );
    }
}
