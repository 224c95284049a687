//! Fault injection: latency, server errors and throttling, per operation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What may go wrong with one operation (or, as the default, with all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRule {
    /// Added to every call, in milliseconds.
    pub latency_ms: u64,
    /// Probability (0..=1) that a call fails with 503 `ServiceUnavailable`.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_rate: f64,
    /// Every n-th call fails with 503 (0 = never); deterministic, for tests.
    pub error_every: u64,
    /// Probability (0..=1) that a call is refused with 429 `Throttling`.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub throttle_rate: f64,
    /// Every n-th call is throttled (0 = never).
    pub throttle_every: u64,
    /// The `Retry-After` of throttled calls, in milliseconds (sent as
    /// `Retry-After` whole seconds rounded up and `retry-after-ms`).
    pub retry_after_ms: u64,
}

/// The faults of the whole API: a default rule and per-operation overrides
/// keyed by operation name (`CreateLoadBalancer`, `DescribeListeners`...).
/// Admin endpoints and `/openapi.json` never fail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    pub default: FaultRule,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, FaultRule>,
}

/// What the fault injector decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOutcome {
    Proceed,
    Fail,
    Throttle { retry_after: Duration },
}

/// Fault state: the config and the per-rule call counters of `*_every`.
#[derive(Debug, Default)]
pub struct FaultState {
    pub config: FaultConfig,
    counters: BTreeMap<String, u64>,
}

impl FaultState {
    pub fn new(config: FaultConfig) -> Self {
        Self {
            config,
            counters: BTreeMap::new(),
        }
    }

    pub fn set(&mut self, config: FaultConfig) {
        self.config = config;
        self.counters.clear();
    }

    /// Decide the fate of one call of `op`; returns the latency to add too.
    pub fn decide(&mut self, op: &str, random: f64) -> (Duration, FaultOutcome) {
        let (key, rule) = match self.config.operations.get(op) {
            Some(rule) => (op.to_string(), *rule),
            None => (String::new(), self.config.default),
        };
        let latency = Duration::from_millis(rule.latency_ms);
        let counter = self.counters.entry(key).or_insert(0);
        *counter += 1;
        let n = *counter;
        let throttle = (rule.throttle_every > 0 && n.is_multiple_of(rule.throttle_every))
            || (rule.throttle_rate > 0.0 && random < rule.throttle_rate);
        if throttle {
            return (
                latency,
                FaultOutcome::Throttle {
                    retry_after: Duration::from_millis(rule.retry_after_ms),
                },
            );
        }
        let fail = (rule.error_every > 0 && n.is_multiple_of(rule.error_every))
            || (rule.error_rate > 0.0 && random < rule.error_rate);
        (
            latency,
            if fail {
                FaultOutcome::Fail
            } else {
                FaultOutcome::Proceed
            },
        )
    }
}

/// A rate of a fault rule that is not a probability.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{rule}.{field}: {rate} is not in 0..=1")]
pub struct InvalidFaultRate {
    /// `default` or the operation's name.
    pub rule: String,
    pub field: &'static str,
    pub rate: f64,
}

impl FaultConfig {
    /// Rates must be probabilities.
    pub fn validate(&self) -> Result<(), InvalidFaultRate> {
        let rules = std::iter::once(("default", &self.default))
            .chain(self.operations.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, rule) in rules {
            for (field, rate) in [
                ("error_rate", rule.error_rate),
                ("throttle_rate", rule.throttle_rate),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(InvalidFaultRate {
                        rule: name.to_string(),
                        field,
                        rate,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_call_fails_per_rule() {
        let mut state = FaultState::new(FaultConfig {
            default: FaultRule {
                error_every: 3,
                ..FaultRule::default()
            },
            operations: [(
                "DescribeLoadBalancers".to_string(),
                FaultRule {
                    throttle_every: 2,
                    retry_after_ms: 20,
                    ..FaultRule::default()
                },
            )]
            .into(),
        });
        let outcomes: Vec<_> = (0..3).map(|_| state.decide("X", 0.5).1).collect();
        assert_eq!(
            outcomes,
            [
                FaultOutcome::Proceed,
                FaultOutcome::Proceed,
                FaultOutcome::Fail
            ]
        );
        let throttled: Vec<_> = (0..2)
            .map(|_| state.decide("DescribeLoadBalancers", 0.5).1)
            .collect();
        assert_eq!(
            throttled[1],
            FaultOutcome::Throttle {
                retry_after: Duration::from_millis(20)
            }
        );
    }

    #[test]
    fn rates_are_probabilities() {
        let bad = FaultConfig {
            default: FaultRule {
                error_rate: 1.5,
                ..FaultRule::default()
            },
            ..FaultConfig::default()
        };
        let err = bad.validate().expect_err("rate out of range");
        assert_eq!((err.rule.as_str(), err.field), ("default", "error_rate"));
        assert_eq!(err.to_string(), "default.error_rate: 1.5 is not in 0..=1");
    }
}
