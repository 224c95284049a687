//! What an `IPPool`'s status should say: capacity, use and the `Accepted`
//! condition. Pure; the condition's transition time moves only when its
//! status does, so an unchanged pool is never rewritten.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::allocator::Usage;
use crate::pool::{CONDITION_ACCEPTED, IpPool, IpPoolStatus, reason};
use crate::pools::Rejection;

/// The allocator's view of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    Accepted(Usage),
    Rejected(&'a Rejection),
}

fn count(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The status `pool` should show, given the verdict and the time now.
pub fn desired(pool: &IpPool, verdict: Verdict<'_>, now: &Time) -> IpPoolStatus {
    let (usage, status, reason, message) = match verdict {
        Verdict::Accepted(usage) => (
            usage,
            "True",
            reason::VALID,
            "the allocator hands out its addresses".to_string(),
        ),
        Verdict::Rejected(rejection) => (
            Usage::default(),
            "False",
            rejection.reason(),
            format!("not used: {}", rejection.message()),
        ),
    };
    let previous = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_ACCEPTED));
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    IpPoolStatus {
        capacity: count(usage.capacity),
        in_use: count(usage.in_use),
        available: count(usage.capacity.saturating_sub(usage.in_use)),
        conditions: vec![Condition {
            type_: CONDITION_ACCEPTED.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: pool.metadata.generation,
        }],
    }
}

/// Whether the pool's status already says `reason` with `message` (so a
/// restarted controller does not repeat the Event of a known rejection).
pub fn already_reported(pool: &IpPool, rejection: &Rejection) -> bool {
    pool.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == CONDITION_ACCEPTED
                && c.reason == rejection.reason()
                && c.message.ends_with(rejection.message())
        })
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::pool::{AddressBlock, IpPoolSpec};

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("time"))
    }

    fn pool() -> IpPool {
        let mut p = IpPool::new(
            "p",
            IpPoolSpec {
                addresses: vec![AddressBlock::from("10.0.0.0/24")],
                auto_assign: true,
                avoid_buggy_ips: false,
                namespace_selector: None,
                service_selector: None,
            },
        );
        p.metadata.generation = Some(3);
        p
    }

    #[test]
    fn an_accepted_pool_reports_its_use_and_keeps_its_transition_time() {
        let mut p = pool();
        let usage = Usage {
            capacity: 256,
            in_use: 3,
        };
        let first = desired(&p, Verdict::Accepted(usage), &at(100));
        assert_eq!(
            (first.capacity, first.in_use, first.available),
            (256, 3, 253)
        );
        let c = &first.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Valid"));
        assert_eq!(c.observed_generation, Some(3));
        p.status = Some(first.clone());
        let later = desired(&p, Verdict::Accepted(usage), &at(200));
        assert_eq!(later, first, "nothing changed, nothing to write");
        let rejection = Rejection::Overlapping {
            with: "old".into(),
            message: "10.0.0.0/24 overlaps 10.0.0.0/16 of IPPool \"old\"".into(),
        };
        assert!(!already_reported(&p, &rejection));
        let rejected = desired(&p, Verdict::Rejected(&rejection), &at(300));
        let c = &rejected.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Overlapping")
        );
        assert_eq!(c.last_transition_time, at(300), "the status flipped");
        assert_eq!((rejected.capacity, rejected.in_use), (0, 0));
        p.status = Some(rejected);
        assert!(already_reported(&p, &rejection));
    }

    #[test]
    fn huge_pools_saturate() {
        let usage = Usage {
            capacity: u128::MAX,
            in_use: 1,
        };
        let status = desired(&pool(), Verdict::Accepted(usage), &at(1));
        assert_eq!(status.capacity, i64::MAX);
        assert_eq!(status.available, i64::MAX);
    }
}
