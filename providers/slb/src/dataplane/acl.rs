//! Source-address access control of a listener.

use std::net::IpAddr;

use crate::forwarding::AccessControl;

/// May a client at `source` use the listener?
pub(crate) fn permits(access: &AccessControl, source: IpAddr) -> bool {
    // A v4 client reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
    let source = source.to_canonical();
    match access {
        AccessControl::AllowAll => true,
        AccessControl::AllowOnly(ranges) => ranges.iter().any(|r| r.contains(&source)),
        AccessControl::Deny(ranges) => !ranges.iter().any(|r| r.contains(&source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter()
            .map(|n| n.parse().expect("test network parses"))
            .collect()
    }

    #[test]
    fn access_table() {
        let cases = [
            ("allow all", AccessControl::AllowAll, "10.1.2.3", true),
            (
                "allow-only inside",
                AccessControl::AllowOnly(nets(&["127.0.0.1/32", "10.0.0.0/8"])),
                "10.1.2.3",
                true,
            ),
            (
                "allow-only outside",
                AccessControl::AllowOnly(nets(&["127.0.0.1/32"])),
                "127.0.0.2",
                false,
            ),
            (
                "allow-only empty list admits nobody",
                AccessControl::AllowOnly(vec![]),
                "127.0.0.1",
                false,
            ),
            (
                "deny inside",
                AccessControl::Deny(nets(&["127.0.0.2/32"])),
                "127.0.0.2",
                false,
            ),
            (
                "deny outside",
                AccessControl::Deny(nets(&["127.0.0.2/32"])),
                "127.0.0.1",
                true,
            ),
            (
                "v4-mapped v6 source matches v4 range",
                AccessControl::AllowOnly(nets(&["127.0.0.0/8"])),
                "::ffff:127.0.0.5",
                true,
            ),
        ];
        for (desc, access, source, want) in cases {
            let source: IpAddr = source.parse().expect("test address parses");
            assert_eq!(permits(&access, source), want, "{desc}");
        }
    }
}
