//! Finding an address for a Service in one pool: an address already shared
//! under its sharing key first, else the lowest free one. The walk visits
//! only the held addresses of the range (a sorted map), never every
//! address, so a /64 costs no more than a /29.

use std::net::IpAddr;

use portico_provider::IpFamily;

use super::{Allocator, Request};
use crate::addresses::{from_number, is_buggy, to_number};
use crate::pools::Pool;

impl Allocator {
    /// An address of `family` in `pool` the request may take.
    pub(super) fn free_in(&self, pool: &Pool, family: IpFamily, req: &Request) -> Option<IpAddr> {
        if req.sharing.key.is_some()
            && let Some(shared) = self.shared_in(pool, family, req)
        {
            return Some(shared);
        }
        pool.ranges_of(family).find_map(|range| {
            let (start, end) = range.bounds();
            let avoid = |n: u128| pool.avoid_buggy_ips && is_buggy(from_number(family, n));
            let mut next = start;
            for held in self
                .holders
                .range(range.first()..=range.last())
                .map(|(ip, _)| to_number(*ip))
            {
                while next < held {
                    if !avoid(next) {
                        return Some(from_number(family, next));
                    }
                    next += 1;
                }
                // `held` < u128::MAX here unless the range ends at the last
                // address, where the loop below has nothing left to try.
                match held.checked_add(1) {
                    Some(n) => next = next.max(n),
                    None => return None,
                }
            }
            while next <= end {
                if !avoid(next) {
                    return Some(from_number(family, next));
                }
                next = next.checked_add(1)?;
            }
            None
        })
    }

    /// An address of `family` in `pool` that Services with the request's
    /// sharing key already hold and the request may join.
    fn shared_in(&self, pool: &Pool, family: IpFamily, req: &Request) -> Option<IpAddr> {
        pool.ranges_of(family).find_map(|range| {
            self.holders
                .range(range.first()..=range.last())
                .find(|(ip, holders)| {
                    !holders.owned.is_empty()
                        && pool.offers(**ip)
                        && self
                            .clash(**ip, &req.key, &req.ports, &req.sharing)
                            .is_none()
                })
                .map(|(ip, _)| *ip)
        })
    }
}
