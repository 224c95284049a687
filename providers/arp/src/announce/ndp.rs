//! IPv6: neighbour advertisements for owned VIPs, as ICMPv6 messages (the
//! raw ICMPv6 socket in `super` adds the IPv6 header and the checksum).

use std::net::Ipv6Addr;

use pnet_datalink::MacAddr;
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, NdpOption, NdpOptionTypes, NeighborAdvertFlags,
    NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{Icmpv6Code, Icmpv6Types};

/// Neighbour advertisement with one target link-layer address option.
const ADVERT_LEN: usize = 24 + 8;

/// All-nodes multicast: where unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast group a solicitation for `vip` is sent to
/// (`ff02::1:ffXX:XXXX` from the VIP's last 24 bits): the speaker joins it
/// while it owns the VIP, so the NIC and bridges let those through.
pub fn solicited_node(vip: Ipv6Addr) -> Ipv6Addr {
    let o = vip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        (u16::from(o[14]) << 8) | u16::from(o[15]),
    )
}

/// The advertisement answering the ICMPv6 message `icmp` received from
/// `from`, when it is a neighbour solicitation for a VIP `owns` accepts:
/// `(message, destination)`. Duplicate address detection (from `::`) is
/// answered to all nodes, as RFC 4861 § 7.2.4 says.
pub fn advert_for(
    icmp: &[u8],
    from: Ipv6Addr,
    mac: MacAddr,
    owns: impl Fn(Ipv6Addr) -> bool,
) -> Option<(Vec<u8>, Ipv6Addr)> {
    let ns = NeighborSolicitPacket::new(icmp)?;
    if ns.get_icmpv6_type() != Icmpv6Types::NeighborSolicit || ns.get_icmpv6_code().0 != 0 {
        return None;
    }
    let target = ns.get_target_addr();
    if target.is_multicast() || !owns(target) {
        return None;
    }
    if from.is_unspecified() {
        Some((advert(target, mac, false), ALL_NODES))
    } else {
        Some((advert(target, mac, true), from))
    }
}

/// An unsolicited advertisement (override set) moving `vip` to `mac`, for
/// all nodes: IPv6's gratuitous ARP.
pub fn unsolicited(vip: Ipv6Addr, mac: MacAddr) -> Vec<u8> {
    advert(vip, mac, false)
}

fn advert(target: Ipv6Addr, mac: MacAddr, solicited: bool) -> Vec<u8> {
    let mut message = vec![0u8; ADVERT_LEN];
    if let Some(mut na) = MutableNeighborAdvertPacket::new(&mut message) {
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Code(0));
        let mut flags = NeighborAdvertFlags::Override;
        if solicited {
            flags |= NeighborAdvertFlags::Solicited;
        }
        na.set_flags(flags);
        na.set_target_addr(target);
        na.set_options(&[NdpOption {
            option_type: NdpOptionTypes::TargetLLAddr,
            length: 1,
            data: vec![mac.0, mac.1, mac.2, mac.3, mac.4, mac.5],
        }]);
    }
    message
}

/// A neighbour solicitation for `target` from `mac` (tests and probes).
pub fn solicitation(target: Ipv6Addr, mac: MacAddr) -> Vec<u8> {
    use pnet_packet::icmpv6::ndp::MutableNeighborSolicitPacket;
    let mut message = vec![0u8; ADVERT_LEN];
    if let Some(mut ns) = MutableNeighborSolicitPacket::new(&mut message) {
        ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
        ns.set_target_addr(target);
        ns.set_options(&[NdpOption {
            option_type: NdpOptionTypes::SourceLLAddr,
            length: 1,
            data: vec![mac.0, mac.1, mac.2, mac.3, mac.4, mac.5],
        }]);
    }
    message
}

/// `(target, advertised MAC)` of a neighbour advertisement, if it is one.
pub fn parse_advert(icmp: &[u8]) -> Option<(Ipv6Addr, MacAddr)> {
    use pnet_packet::icmpv6::ndp::NeighborAdvertPacket;
    let na = NeighborAdvertPacket::new(icmp)?;
    if na.get_icmpv6_type() != Icmpv6Types::NeighborAdvert {
        return None;
    }
    let option = na
        .get_options()
        .into_iter()
        .find(|o| o.option_type == NdpOptionTypes::TargetLLAddr && o.data.len() >= 6)?;
    let d = &option.data;
    Some((
        na.get_target_addr(),
        MacAddr(d[0], d[1], d[2], d[3], d[4], d[5]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0a);
    const CLIENT: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0c);

    fn vip() -> Ipv6Addr {
        "2001:db8::c8".parse().expect("vip")
    }

    fn client() -> Ipv6Addr {
        "2001:db8::1".parse().expect("client")
    }

    #[test]
    fn solicited_node_group_takes_the_last_24_bits() {
        let vip: Ipv6Addr = "2001:db8::12:3456:789a".parse().expect("vip");
        assert_eq!(
            solicited_node(vip),
            "ff02::1:ff56:789a".parse::<Ipv6Addr>().expect("group")
        );
    }

    #[test]
    fn answers_a_solicitation_for_an_owned_vip() {
        let (advert, to) = advert_for(&solicitation(vip(), CLIENT), client(), OURS, |ip| {
            ip == vip()
        })
        .expect("owned VIP answered");
        assert_eq!(to, client(), "back to the asker");
        assert_eq!(parse_advert(&advert), Some((vip(), OURS)));
        let flags = advert[4];
        assert_ne!(flags & NeighborAdvertFlags::Solicited, 0, "solicited");
        assert_ne!(flags & NeighborAdvertFlags::Override, 0, "override");
        assert_eq!(flags & NeighborAdvertFlags::Router, 0, "not a router");
    }

    #[test]
    fn duplicate_address_detection_is_answered_to_all_nodes() {
        let (advert, to) = advert_for(
            &solicitation(vip(), CLIENT),
            Ipv6Addr::UNSPECIFIED,
            OURS,
            |ip| ip == vip(),
        )
        .expect("answered");
        assert_eq!(to, ALL_NODES);
        assert_eq!(advert[4] & NeighborAdvertFlags::Solicited, 0);
    }

    #[test]
    fn stays_silent_for_everything_else() {
        let other: Ipv6Addr = "2001:db8::c9".parse().expect("other");
        let rows: [(&str, Vec<u8>); 3] = [
            ("a VIP we do not own", solicitation(other, CLIENT)),
            (
                "an advertisement, not a question",
                unsolicited(vip(), CLIENT),
            ),
            (
                "a truncated message",
                solicitation(vip(), CLIENT)[..10].to_vec(),
            ),
        ];
        for (desc, message) in rows {
            assert_eq!(
                advert_for(&message, client(), OURS, |ip| ip == vip()),
                None,
                "{desc}"
            );
        }
    }

    #[test]
    fn unsolicited_advert_overrides_caches() {
        let message = unsolicited(vip(), OURS);
        assert_eq!(parse_advert(&message), Some((vip(), OURS)));
        assert_eq!(message[4], NeighborAdvertFlags::Override);
    }
}
