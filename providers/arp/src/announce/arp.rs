//! IPv4: ARP replies for owned VIPs and gratuitous ARP, as Ethernet frames.
//! Pure functions over bytes; the socket lives in `super`.

use std::net::Ipv4Addr;

use pnet_datalink::MacAddr;
use pnet_packet::Packet;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};

const ETHERNET_HEADER: usize = 14;
const ARP_IPV4: usize = 28;
/// An ARP frame: Ethernet header + ARP for IPv4 over Ethernet.
pub const FRAME_LEN: usize = ETHERNET_HEADER + ARP_IPV4;

/// The reply to `frame` when it is an ARP request for a VIP `owns` accepts,
/// sent from `mac`; `None` for anything else (other VIPs, replies, our own
/// frames, malformed packets).
pub fn reply_to(frame: &[u8], mac: MacAddr, owns: impl Fn(Ipv4Addr) -> bool) -> Option<Vec<u8>> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp || eth.get_source() == mac {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_operation() != ArpOperations::Request
        || arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
    {
        return None;
    }
    let vip = arp.get_target_proto_addr();
    // A gratuitous request from someone else claiming the VIP is not a question.
    if vip == arp.get_sender_proto_addr() || !owns(vip) {
        return None;
    }
    Some(frame_of(
        arp.get_sender_hw_addr(),
        mac,
        ArpFields {
            operation: ArpOperations::Reply,
            sender_hw: mac,
            sender_ip: vip,
            target_hw: arp.get_sender_hw_addr(),
            target_ip: arp.get_sender_proto_addr(),
        },
    ))
}

/// A gratuitous ARP announcing that `vip` is at `mac`: a broadcast request
/// with sender and target address both the VIP, the form every OS updates
/// its cache from (and that is not mistaken for an answer to a question).
pub fn gratuitous(vip: Ipv4Addr, mac: MacAddr) -> Vec<u8> {
    frame_of(
        MacAddr::broadcast(),
        mac,
        ArpFields {
            operation: ArpOperations::Request,
            sender_hw: mac,
            sender_ip: vip,
            target_hw: MacAddr::zero(),
            target_ip: vip,
        },
    )
}

struct ArpFields {
    operation: pnet_packet::arp::ArpOperation,
    sender_hw: MacAddr,
    sender_ip: Ipv4Addr,
    target_hw: MacAddr,
    target_ip: Ipv4Addr,
}

fn frame_of(destination: MacAddr, source: MacAddr, fields: ArpFields) -> Vec<u8> {
    let mut frame = vec![0u8; FRAME_LEN];
    if let Some(mut eth) = MutableEthernetPacket::new(&mut frame) {
        eth.set_destination(destination);
        eth.set_source(source);
        eth.set_ethertype(EtherTypes::Arp);
    }
    if let Some(mut arp) = MutableArpPacket::new(&mut frame[ETHERNET_HEADER..]) {
        arp.set_hardware_type(ArpHardwareTypes::Ethernet);
        arp.set_protocol_type(EtherTypes::Ipv4);
        arp.set_hw_addr_len(6);
        arp.set_proto_addr_len(4);
        arp.set_operation(fields.operation);
        arp.set_sender_hw_addr(fields.sender_hw);
        arp.set_sender_proto_addr(fields.sender_ip);
        arp.set_target_hw_addr(fields.target_hw);
        arp.set_target_proto_addr(fields.target_ip);
    }
    frame
}

/// An ARP request for `target` from `sender` (tests and probes use it).
pub fn request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    frame_of(
        MacAddr::broadcast(),
        sender_mac,
        ArpFields {
            operation: ArpOperations::Request,
            sender_hw: sender_mac,
            sender_ip,
            target_hw: MacAddr::zero(),
            target_ip: target,
        },
    )
}

/// `(sender MAC, sender IP)` of an ARP reply frame, `None` for anything else.
pub fn parse_reply(frame: &[u8]) -> Option<(MacAddr, Ipv4Addr)> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    (arp.get_operation() == ArpOperations::Reply)
        .then(|| (arp.get_sender_hw_addr(), arp.get_sender_proto_addr()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0a);
    const CLIENT: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0c);

    fn vip() -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 200)
    }

    fn client_ip() -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 1)
    }

    fn owns_vip(ip: Ipv4Addr) -> bool {
        ip == vip()
    }

    #[test]
    fn answers_a_request_for_an_owned_vip_to_the_asker() {
        let reply = reply_to(&request(CLIENT, client_ip(), vip()), OURS, owns_vip)
            .expect("an owned VIP is answered");
        let eth = EthernetPacket::new(&reply).expect("ethernet");
        assert_eq!(eth.get_destination(), CLIENT, "unicast back to the asker");
        assert_eq!(eth.get_source(), OURS);
        let arp = ArpPacket::new(eth.payload()).expect("arp");
        assert_eq!(arp.get_operation(), ArpOperations::Reply);
        assert_eq!(arp.get_sender_hw_addr(), OURS);
        assert_eq!(arp.get_sender_proto_addr(), vip());
        assert_eq!(arp.get_target_hw_addr(), CLIENT);
        assert_eq!(arp.get_target_proto_addr(), client_ip());
        assert_eq!(parse_reply(&reply), Some((OURS, vip())));
    }

    #[test]
    fn stays_silent_for_everything_else() {
        let other_vip = Ipv4Addr::new(192, 0, 2, 201);
        let mut reply_frame = request(CLIENT, client_ip(), vip());
        if let Some(mut arp) = MutableArpPacket::new(&mut reply_frame[ETHERNET_HEADER..]) {
            arp.set_operation(ArpOperations::Reply);
        }
        let rows: [(&str, Vec<u8>); 6] = [
            (
                "a VIP we do not own",
                request(CLIENT, client_ip(), other_vip),
            ),
            (
                "our own request looping back",
                request(OURS, client_ip(), vip()),
            ),
            ("a reply, not a question", reply_frame),
            (
                "someone's gratuitous ARP for the VIP",
                gratuitous(vip(), CLIENT),
            ),
            (
                "a truncated frame",
                request(CLIENT, client_ip(), vip())[..20].to_vec(),
            ),
            ("not ARP at all", {
                let mut f = request(CLIENT, client_ip(), vip());
                f[12] = 0x08;
                f[13] = 0x00;
                f
            }),
        ];
        for (desc, frame) in rows {
            assert_eq!(reply_to(&frame, OURS, owns_vip), None, "{desc}");
        }
    }

    #[test]
    fn gratuitous_arp_is_a_broadcast_with_the_vip_on_both_sides() {
        let frame = gratuitous(vip(), OURS);
        let eth = EthernetPacket::new(&frame).expect("ethernet");
        assert_eq!(eth.get_destination(), MacAddr::broadcast());
        let arp = ArpPacket::new(eth.payload()).expect("arp");
        assert_eq!(arp.get_sender_proto_addr(), vip());
        assert_eq!(arp.get_target_proto_addr(), vip());
        assert_eq!(arp.get_sender_hw_addr(), OURS);
        assert_eq!(parse_reply(&frame), None, "not mistaken for an answer");
    }
}
