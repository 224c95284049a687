//! The address blocks of an IP pool: CIDRs (`192.0.2.0/28`,
//! `2001:db8::/120`), ranges (`192.0.2.10-192.0.2.20`) and single addresses,
//! held as inclusive integer ranges so that capacity, overlap and "the next
//! free address" are plain arithmetic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use portico_provider::IpFamily;

/// Why a block of addresses cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not a CIDR (10.0.0.0/24), a range (10.0.0.10-10.0.0.20) or an address")]
    Syntax(String),
    #[error("{0:?}: the range ends before it starts")]
    Reversed(String),
    #[error("{0:?}: the range mixes IPv4 and IPv6")]
    MixedFamilies(String),
}

/// An address as a number of its family (IPv4 in the low 32 bits).
pub fn to_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of `family` numbered `n` (the inverse of [`to_number`]).
pub fn from_number(family: IpFamily, n: u128) -> IpAddr {
    match family {
        // An IPv4 number never exceeds u32 (ranges are built from addresses).
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// An IPv4 address ending in `.0` or `.255`: some consumer routers and
/// firmwares drop traffic to them (smurf protection), so a pool can avoid
/// them (`avoidBuggyIPs`, as MetalLB calls it).
pub fn is_buggy(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(v4.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    family: IpFamily,
    start: u128,
    end: u128,
}

impl IpRange {
    /// The addresses from `start` to `end`, both included.
    ///
    /// # Errors
    /// When the families differ or `end` comes before `start`.
    pub fn new(start: IpAddr, end: IpAddr) -> Result<Self, AddressError> {
        let text = format!("{start}-{end}");
        if IpFamily::of(&start) != IpFamily::of(&end) {
            return Err(AddressError::MixedFamilies(text));
        }
        let (s, e) = (to_number(start), to_number(end));
        if e < s {
            return Err(AddressError::Reversed(text));
        }
        Ok(Self {
            family: IpFamily::of(&start),
            start: s,
            end: e,
        })
    }

    pub fn family(&self) -> IpFamily {
        self.family
    }

    pub fn first(&self) -> IpAddr {
        from_number(self.family, self.start)
    }

    pub fn last(&self) -> IpAddr {
        from_number(self.family, self.end)
    }

    /// First and last as numbers.
    pub fn bounds(&self) -> (u128, u128) {
        (self.start, self.end)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        IpFamily::of(&ip) == self.family && (self.start..=self.end).contains(&to_number(ip))
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.family == other.family && self.start <= other.end && other.start <= self.end
    }

    /// How many addresses it holds (saturating: `::/0` holds 2^128).
    pub fn size(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }

    /// How many of its addresses [`is_buggy`].
    pub fn buggy(&self) -> u128 {
        if self.family != IpFamily::V4 {
            return 0;
        }
        // Addresses x <= n with x % 256 == r.
        let upto = |n: u128, r: u128| if n < r { 0 } else { (n - r) / 256 + 1 };
        let count = |r: u128| {
            upto(self.end, r)
                - if self.start == 0 {
                    0
                } else {
                    upto(self.start - 1, r)
                }
        };
        count(0) + count(255)
    }
}

impl FromStr for IpRange {
    type Err = AddressError;

    /// `a.b.c.d/n` (host bits are ignored: `10.0.0.5/24` is `10.0.0.0/24`,
    /// as `net.ParseCIDR` reads it), `first-last` (spaces around the dash
    /// allowed), or one address.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let text = raw.trim();
        let syntax = || AddressError::Syntax(raw.to_string());
        if text.contains('/') {
            let net: IpNet = text.parse().map_err(|_| syntax())?;
            return Self::new(net.network(), net.broadcast());
        }
        if let Some((first, last)) = text.split_once('-') {
            let first: IpAddr = first.trim().parse().map_err(|_| syntax())?;
            let last: IpAddr = last.trim().parse().map_err(|_| syntax())?;
            return Self::new(first, last).map_err(|e| match e {
                AddressError::Reversed(_) => AddressError::Reversed(raw.to_string()),
                AddressError::MixedFamilies(_) => AddressError::MixedFamilies(raw.to_string()),
                other => other,
            });
        }
        let ip: IpAddr = text.parse().map_err(|_| syntax())?;
        Self::new(ip, ip)
    }
}

impl fmt::Display for IpRange {
    /// A CIDR when the range is exactly one prefix, else `first-last`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits: u32 = match self.family {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        };
        let span = self.end - self.start;
        let aligned = span.checked_add(1).is_none_or(u128::is_power_of_two)
            && (span == u128::MAX || self.start & span == 0);
        if aligned {
            let host_bits = 128 - span.leading_zeros();
            write!(f, "{}/{}", self.first(), bits - host_bits)
        } else {
            write!(f, "{}-{}", self.first(), self.last())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn blocks_parse_into_ranges() {
        /// First, last and size of a block that parses.
        type Parsed = Option<(&'static str, &'static str, u128)>;
        let rows: &[(&str, &str, Parsed)] = &[
            (
                "an IPv4 CIDR",
                "192.0.2.0/28",
                Some(("192.0.2.0", "192.0.2.15", 16)),
            ),
            (
                "host bits are dropped",
                "192.0.2.5/30",
                Some(("192.0.2.4", "192.0.2.7", 4)),
            ),
            (
                "an IPv4 range",
                "192.0.2.10-192.0.2.20",
                Some(("192.0.2.10", "192.0.2.20", 11)),
            ),
            (
                "spaces around the dash",
                " 192.0.2.10 - 192.0.2.11 ",
                Some(("192.0.2.10", "192.0.2.11", 2)),
            ),
            (
                "one address",
                "192.0.2.7",
                Some(("192.0.2.7", "192.0.2.7", 1)),
            ),
            (
                "an IPv6 CIDR",
                "2001:db8::/120",
                Some(("2001:db8::", "2001:db8::ff", 256)),
            ),
            (
                "an IPv6 range",
                "2001:db8::a-2001:db8::c",
                Some(("2001:db8::a", "2001:db8::c", 3)),
            ),
            (
                "all of IPv6 saturates",
                "::/0",
                Some(("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", u128::MAX)),
            ),
            ("garbage", "ten dot zero", None),
            ("a bad prefix length", "192.0.2.0/33", None),
            ("a reversed range", "192.0.2.20-192.0.2.10", None),
            ("a mixed range", "192.0.2.1-2001:db8::1", None),
            (
                "a range with three ends",
                "192.0.2.1-192.0.2.2-192.0.2.3",
                None,
            ),
        ];
        for (desc, text, want) in rows {
            let got = text.parse::<IpRange>();
            match want {
                Some((first, last, size)) => {
                    let range = got.unwrap_or_else(|e| panic!("{desc}: {e}"));
                    assert_eq!(range.first(), ip(first), "{desc}");
                    assert_eq!(range.last(), ip(last), "{desc}");
                    assert_eq!(range.size(), *size, "{desc}");
                }
                None => assert!(got.is_err(), "{desc}: {text} should be refused"),
            }
        }
        let reversed = "192.0.2.20-192.0.2.10".parse::<IpRange>();
        assert_eq!(
            reversed,
            Err(AddressError::Reversed("192.0.2.20-192.0.2.10".into()))
        );
    }

    #[test]
    fn buggy_addresses_are_counted_per_256() {
        let rows = [
            ("a /24 has a .0 and a .255", "10.0.0.0/24", 2),
            ("a /23 has two of each", "10.0.0.0/23", 4),
            ("a range inside one /24 has none", "10.0.0.1-10.0.0.254", 0),
            ("a range across a boundary", "10.0.0.250-10.0.1.5", 2),
            ("from address zero", "0.0.0.0-0.0.0.10", 1),
            ("IPv6 has none", "2001:db8::/120", 0),
        ];
        for (desc, text, want) in rows {
            let range: IpRange = text.parse().expect("range");
            assert_eq!(range.buggy(), want, "{desc}");
        }
        assert!(is_buggy(ip("10.0.0.0")) && is_buggy(ip("10.0.3.255")));
        assert!(!is_buggy(ip("10.0.0.1")) && !is_buggy(ip("2001:db8::ff")));
    }

    #[test]
    fn overlap_and_containment_respect_families() {
        let a: IpRange = "10.0.0.0/24".parse().expect("range");
        let b: IpRange = "10.0.0.255-10.0.1.3".parse().expect("range");
        let c: IpRange = "10.0.1.0/24".parse().expect("range");
        let v6: IpRange = "::a00:0/120".parse().expect("range");
        assert!(a.overlaps(&b) && b.overlaps(&a), "they share 10.0.0.255");
        assert!(!a.overlaps(&c), "adjacent is not overlapping");
        assert!(!a.overlaps(&v6), "the same numbers in another family");
        assert!(a.contains(ip("10.0.0.7")) && !a.contains(ip("::a00:7")));
    }

    #[test]
    fn ranges_print_as_cidrs_when_they_are_one() {
        let rows = [
            ("10.0.0.0/24", "10.0.0.0/24"),
            ("10.0.0.5", "10.0.0.5/32"),
            ("10.0.0.1-10.0.0.2", "10.0.0.1-10.0.0.2"),
            ("10.0.0.2-10.0.0.3", "10.0.0.2/31"),
            ("2001:db8::/64", "2001:db8::/64"),
            ("::/0", "::/0"),
        ];
        for (text, want) in rows {
            let range: IpRange = text.parse().expect("range");
            assert_eq!(range.to_string(), want, "{text}");
        }
    }
}
