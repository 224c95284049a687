//! VIP allocation: a new balancer gets the address it asked for, when that
//! lies in the cloud's range and is free, or else the next free address
//! after the one handed out last.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::Store;
use crate::cloud::error::ApiError;

/// At most this many addresses of the range are considered, so a huge
/// (IPv6) range costs a bounded search.
const MAX_CANDIDATES: usize = 1 << 20;

impl Store {
    /// The VIP of a new balancer: `wanted` if given (it must lie in `range`
    /// and be free), otherwise the next free address of `range`.
    pub(super) fn take_vip(
        &mut self,
        range: &IpNet,
        wanted: Option<IpAddr>,
    ) -> Result<IpAddr, ApiError> {
        let Some(addr) = wanted else {
            return self.next_free_vip(range);
        };
        if !range.contains(&addr) {
            return Err(ApiError::invalid(
                "address",
                format!("{addr} is outside the cloud's range {range}"),
            ));
        }
        if let Some(owner) = self.balancers.values().find(|b| b.address == addr) {
            return Err(ApiError::conflict(
                "AddressInUse",
                format!("address: {addr} is in use by {}", owner.id),
            ));
        }
        Ok(addr)
    }

    /// Search the range round-robin from `vip_cursor`, so a freed address is
    /// handed out again only after the others.
    fn next_free_vip(&mut self, range: &IpNet) -> Result<IpAddr, ApiError> {
        let exhausted =
            || ApiError::conflict("AddressExhausted", format!("no address left in {range}"));
        let used: BTreeSet<IpAddr> = self.balancers.values().map(|b| b.address).collect();
        let hosts: Vec<IpAddr> = range.hosts().take(MAX_CANDIDATES).collect();
        if hosts.is_empty() {
            return Err(exhausted());
        }
        let n = hosts.len() as u64;
        for step in 0..n {
            let idx = ((self.vip_cursor + step) % n) as usize;
            let candidate = hosts[idx];
            if !used.contains(&candidate) {
                self.vip_cursor = (idx as u64 + 1) % n;
                return Ok(candidate);
            }
        }
        Err(exhausted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::model::{AddressType, LoadBalancer};

    fn with_balancers(addrs: &[&str]) -> Store {
        let mut store = Store::new();
        for (i, a) in addrs.iter().enumerate() {
            let id = format!("lb-{i}");
            store.balancers.insert(
                id.clone(),
                LoadBalancer {
                    id,
                    name: "x".into(),
                    address: a.parse().expect("address"),
                    address_type: AddressType::Internet,
                    spec: "slb.s1.small".into(),
                    tags: Default::default(),
                    created_at: 0,
                },
            );
        }
        store
    }

    struct Case {
        desc: &'static str,
        used: &'static [&'static str],
        wanted: Option<&'static str>,
        /// The VIP, or the error code.
        expected: Result<&'static str, &'static str>,
    }

    #[test]
    fn vips_are_taken_as_asked_or_next_free() {
        // 10.0.0.0/30 has two hosts: .1 and .2.
        let range: IpNet = "10.0.0.0/30".parse().expect("range");
        let cases = [
            Case {
                desc: "first free address",
                used: &[],
                wanted: None,
                expected: Ok("10.0.0.1"),
            },
            Case {
                desc: "skips a used address",
                used: &["10.0.0.1"],
                wanted: None,
                expected: Ok("10.0.0.2"),
            },
            Case {
                desc: "all used",
                used: &["10.0.0.1", "10.0.0.2"],
                wanted: None,
                expected: Err("AddressExhausted"),
            },
            Case {
                desc: "wanted and free",
                used: &["10.0.0.1"],
                wanted: Some("10.0.0.2"),
                expected: Ok("10.0.0.2"),
            },
            Case {
                desc: "wanted but used",
                used: &["10.0.0.1"],
                wanted: Some("10.0.0.1"),
                expected: Err("AddressInUse"),
            },
            Case {
                desc: "wanted outside the range",
                used: &[],
                wanted: Some("10.0.1.1"),
                expected: Err("InvalidParameter"),
            },
        ];
        for case in cases {
            let mut store = with_balancers(case.used);
            let wanted = case.wanted.map(|w| w.parse().expect("wanted"));
            let got = store
                .take_vip(&range, wanted)
                .map(|a| a.to_string())
                .map_err(|e| e.code);
            assert_eq!(got, case.expected.map(str::to_string), "{}", case.desc);
        }
    }

    #[test]
    fn a_freed_vip_comes_back_only_after_the_others() {
        let range: IpNet = "10.0.0.0/29".parse().expect("range"); // .1 ..= .6
        let mut store = Store::new();
        let first = store.take_vip(&range, None).expect("first");
        let second = store.take_vip(&range, None).expect("second");
        assert_eq!(
            (first.to_string().as_str(), second.to_string().as_str()),
            ("10.0.0.1", "10.0.0.2")
        );
        // Nothing holds .1 now (no balancer was stored), yet the cursor moves on.
        let third = store.take_vip(&range, None).expect("third");
        assert_eq!(third.to_string(), "10.0.0.3");
    }
}
