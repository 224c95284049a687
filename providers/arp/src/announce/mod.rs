//! The announcer: owns every raw socket of the speaker. It answers ARP
//! requests and IPv6 neighbour solicitations for the VIPs it is told it
//! owns, sends gratuitous ARP / unsolicited neighbour advertisements when
//! it takes a VIP over, and is silent about every other address.
//!
//! No `unsafe` here: the ARP socket is an `AF_PACKET` socket created with
//! rustix (bound to the ARP ethertype, so the kernel hands over ARP frames
//! only, never the node's other traffic) and driven by `pnet_datalink`; the
//! NDP socket is a raw ICMPv6 socket from socket2, joined to the
//! solicited-node group of each owned IPv6 VIP.

pub mod arp;
pub mod ndp;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use pnet_datalink::{Channel, DataLinkSender, MacAddr};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;

/// When gratuitous announcements are repeated after a takeover: at once,
/// then again for a few seconds, so a lost frame or a neighbour that
/// ignored the first (Linux keeps a fresh entry for `locktime`, 1 s by
/// default) still moves. MetalLB repeats for 5 s too.
const GRATUITOUS_SCHEDULE: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_millis(1100),
    Duration::from_millis(2500),
    Duration::from_millis(5000),
];

/// The network interface the speaker announces on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name (`eth0`).
    pub name: String,
    /// Its index.
    pub index: u32,
    /// The MAC address announced for owned VIPs.
    pub mac: MacAddr,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

impl Interface {
    fn from_pnet(iface: pnet_datalink::NetworkInterface) -> Result<Interface, Error> {
        let mac = iface
            .mac
            .filter(|m| *m != MacAddr::zero())
            .ok_or_else(|| Error::Interface {
                name: iface.name.clone(),
                problem: "has no MAC address (ARP needs an Ethernet interface)".into(),
            })?;
        Ok(Interface {
            addresses: iface.ips.iter().map(|n| n.ip()).collect(),
            name: iface.name,
            index: iface.index,
            mac,
        })
    }

    /// The interface called `name`.
    pub fn named(name: &str) -> Result<Interface, Error> {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| Error::Interface {
                name: name.into(),
                problem: "no such interface in this network namespace".into(),
            })?;
        Interface::from_pnet(iface)
    }

    /// The interface that holds `address` (the node's own address, so the
    /// VIPs go out where the node's traffic goes).
    pub fn holding(address: IpAddr) -> Result<Interface, Error> {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.ips.iter().any(|n| n.ip() == address))
            .ok_or_else(|| Error::Interface {
                name: format!("<holding {address}>"),
                problem: "no interface holds the node's address; set --interface".into(),
            })?;
        Interface::from_pnet(iface)
    }
}

/// Counters of what the announcer sent.
#[derive(Debug, Clone, Default)]
pub struct AnnounceMetrics {
    replies: Family<Vec<(String, String)>, Counter>,
    gratuitous: Family<Vec<(String, String)>, Counter>,
    owned: Gauge,
}

impl AnnounceMetrics {
    /// Register under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_speaker_replies",
            "ARP replies and neighbour advertisements sent in answer to a question",
            self.replies.clone(),
        );
        registry.register(
            "portico_speaker_gratuitous",
            "Gratuitous ARP and unsolicited neighbour advertisements sent on takeover",
            self.gratuitous.clone(),
        );
        registry.register(
            "portico_speaker_announced_vips",
            "VIPs this speaker announces now",
            self.owned.clone(),
        );
    }

    fn family(ip: IpAddr) -> Vec<(String, String)> {
        let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
        vec![("family".into(), family.into())]
    }
}

/// The ARP socket's two halves (pnet splits sending from receiving).
type ArpChannel = (
    Box<dyn DataLinkSender>,
    Box<dyn pnet_datalink::DataLinkReceiver>,
);

struct Shared {
    iface: Interface,
    owned: RwLock<BTreeSet<IpAddr>>,
    arp_tx: Mutex<Box<dyn DataLinkSender>>,
    ndp: Option<tokio::net::UdpSocket>,
    metrics: AnnounceMetrics,
}

impl Shared {
    fn owns(&self, ip: IpAddr) -> bool {
        self.owned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&ip)
    }

    fn send_frame(&self, frame: &[u8]) {
        let mut tx = self.arp_tx.lock().unwrap_or_else(PoisonError::into_inner);
        match tx.send_to(frame, None) {
            Some(Ok(())) => {}
            Some(Err(err)) => warn!(error = %err, iface = %self.iface.name, "ARP send failed"),
            None => warn!(iface = %self.iface.name, "ARP frame larger than the send buffer"),
        }
    }

    async fn send_ndp(&self, message: &[u8], to: Ipv6Addr) {
        let Some(socket) = &self.ndp else { return };
        let scope = if to.is_multicast() || to.is_unicast_link_local() {
            self.iface.index
        } else {
            0
        };
        if let Err(err) = socket
            .send_to(message, SocketAddrV6::new(to, 0, 0, scope))
            .await
        {
            warn!(error = %err, %to, iface = %self.iface.name, "NDP send failed");
        }
    }

    async fn announce_once(&self, vip: IpAddr) {
        match vip {
            IpAddr::V4(v4) => self.send_frame(&arp::gratuitous(v4, self.iface.mac)),
            IpAddr::V6(v6) => {
                self.send_ndp(&ndp::unsolicited(v6, self.iface.mac), ndp::ALL_NODES)
                    .await
            }
        }
        self.metrics
            .gratuitous
            .get_or_create(&AnnounceMetrics::family(vip))
            .inc();
    }
}

/// Answers for the VIPs it owns on one interface. Dropping it stops the
/// answering thread and task.
pub struct Announcer {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("iface", &self.shared.iface)
            .field("owned", &self.owned())
            .finish()
    }
}

impl Announcer {
    /// Open the sockets on `iface` and start answering (for nothing yet).
    /// Must run inside a tokio runtime.
    pub fn start(iface: Interface, metrics: AnnounceMetrics) -> Result<Announcer, Error> {
        let (arp_tx, arp_rx) = open_arp(&iface)?;
        let ndp = match open_ndp(&iface) {
            Ok(socket) => Some(socket),
            Err(err) => {
                warn!(error = %err, iface = %iface.name, "no IPv6 neighbour discovery: IPv6 VIPs will not be announced");
                None
            }
        };
        let shared = Arc::new(Shared {
            iface,
            owned: RwLock::new(BTreeSet::new()),
            arp_tx: Mutex::new(arp_tx),
            ndp,
            metrics,
        });
        let stop = CancellationToken::new();
        {
            let (answering, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("arp-answer".into())
                .spawn(move || answer_arp(&answering, arp_rx, &stop))
                .map_err(|e| Error::Interface {
                    name: shared.iface.name.clone(),
                    problem: format!("cannot start the thread answering ARP: {e}"),
                })?;
        }
        if shared.ndp.is_some() {
            tokio::spawn(answer_ndp(shared.clone(), stop.clone()));
        }
        info!(iface = %shared.iface.name, mac = %shared.iface.mac, "announcer ready");
        Ok(Announcer { shared, stop })
    }

    /// The interface announced on.
    pub fn interface(&self) -> &Interface {
        &self.shared.iface
    }

    /// The VIPs answered for now.
    pub fn owned(&self) -> BTreeSet<IpAddr> {
        self.shared
            .owned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Answer for exactly `vips` from now on. VIPs new to the set are taken
    /// over: gratuitous announcements go out at once and are repeated for
    /// a few seconds while the VIP stays owned. Returns (taken, released).
    pub fn set_owned(&self, vips: BTreeSet<IpAddr>) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let (taken, released) = {
            let mut owned = self
                .shared
                .owned
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let taken: Vec<IpAddr> = vips.difference(&owned).copied().collect();
            let released: Vec<IpAddr> = owned.difference(&vips).copied().collect();
            *owned = vips;
            self.shared.metrics.owned.set(owned.len() as i64);
            (taken, released)
        };
        for vip in &released {
            info!(%vip, iface = %self.shared.iface.name, "stopped announcing");
            if let (IpAddr::V6(v6), Some(socket)) = (vip, &self.shared.ndp) {
                let group = ndp::solicited_node(*v6);
                // Other owned VIPs may share the group.
                if !self
                    .owned()
                    .iter()
                    .any(|o| matches!(o, IpAddr::V6(x) if ndp::solicited_node(*x) == group))
                    && let Err(err) = socket.leave_multicast_v6(&group, self.shared.iface.index)
                {
                    debug!(error = %err, %group, "leave solicited-node group");
                }
            }
        }
        for vip in &taken {
            info!(%vip, iface = %self.shared.iface.name, mac = %self.shared.iface.mac, "announcing");
            if let IpAddr::V6(v6) = vip {
                if let Some(socket) = &self.shared.ndp {
                    let group = ndp::solicited_node(*v6);
                    if let Err(err) = socket.join_multicast_v6(&group, self.shared.iface.index)
                        && err.raw_os_error() != Some(98)
                    {
                        warn!(error = %err, %group, "join solicited-node group");
                    }
                } else {
                    warn!(%vip, "cannot announce an IPv6 VIP without neighbour discovery");
                }
            }
            tokio::spawn(gratuitous_burst(
                self.shared.clone(),
                *vip,
                self.stop.clone(),
            ));
        }
        (taken, released)
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn gratuitous_burst(shared: Arc<Shared>, vip: IpAddr, stop: CancellationToken) {
    let start = tokio::time::Instant::now();
    for at in GRATUITOUS_SCHEDULE {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(start + at) => {}
        }
        if !shared.owns(vip) {
            return;
        }
        shared.announce_once(vip).await;
    }
}

fn open_arp(iface: &Interface) -> Result<ArpChannel, Error> {
    let raw_err = |source| Error::RawSocket {
        what: "ARP",
        interface: iface.name.clone(),
        source,
    };
    // Created here so it carries the ARP ethertype: pnet would open an
    // ETH_P_ALL socket and copy every frame of the node to this process.
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::PACKET,
        rustix::net::SocketType::RAW,
        Some(rustix::net::eth::ARP),
    )
    .map_err(|e| raw_err(e.into()))?;
    let config = pnet_datalink::Config {
        // Bound with the ARP ethertype; frames stay whole (SOCK_RAW).
        channel_type: pnet_datalink::ChannelType::Layer3(0x0806),
        read_timeout: Some(Duration::from_millis(100)),
        write_timeout: Some(Duration::from_millis(100)),
        promiscuous: false,
        socket_fd: Some(socket.into_raw_fd()),
        ..pnet_datalink::Config::default()
    };
    let pnet_iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.index == iface.index)
        .ok_or_else(|| Error::Interface {
            name: iface.name.clone(),
            problem: "disappeared".into(),
        })?;
    match pnet_datalink::channel(&pnet_iface, config).map_err(raw_err)? {
        Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => Err(Error::Interface {
            name: iface.name.clone(),
            problem: "not an Ethernet interface".into(),
        }),
    }
}

fn open_ndp(iface: &Interface) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(iface.name.as_bytes()))?;
    // RFC 4861: neighbour discovery messages carry hop limit 255, and
    // receivers drop anything else (proof it was not routed).
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_multicast_if_v6(iface.index)?;
    socket.set_multicast_loop_v6(false)?;
    socket.set_nonblocking(true)?;
    // tokio's UdpSocket drives any datagram socket; for a raw ICMPv6 socket
    // recv_from/send_to are the same system calls, and the kernel adds the
    // IPv6 header and the ICMPv6 checksum.
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))
}

fn answer_arp(
    shared: &Shared,
    mut rx: Box<dyn pnet_datalink::DataLinkReceiver>,
    stop: &CancellationToken,
) {
    while !stop.is_cancelled() {
        let frame = match rx.next() {
            Ok(frame) => frame,
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(err) => {
                warn!(error = %err, iface = %shared.iface.name, "ARP receive failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let owns = |ip: Ipv4Addr| shared.owns(IpAddr::V4(ip));
        if let Some(reply) = arp::reply_to(frame, shared.iface.mac, owns) {
            shared.send_frame(&reply);
            shared
                .metrics
                .replies
                .get_or_create(&AnnounceMetrics::family(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
                .inc();
        }
    }
    debug!(iface = %shared.iface.name, "ARP answering stopped");
}

async fn answer_ndp(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(socket) = &shared.ndp else { return };
    let mut buf = vec![0u8; 1500];
    loop {
        let (len, from) = tokio::select! {
            _ = stop.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(err) => {
                    warn!(error = %err, iface = %shared.iface.name, "NDP receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let IpAddr::V6(from) = from.ip() else {
            continue;
        };
        let owns = |ip: Ipv6Addr| shared.owns(IpAddr::V6(ip));
        if let Some((advert, to)) = ndp::advert_for(&buf[..len], from, shared.iface.mac, owns) {
            shared.send_ndp(&advert, to).await;
            shared
                .metrics
                .replies
                .get_or_create(&AnnounceMetrics::family(IpAddr::V6(Ipv6Addr::UNSPECIFIED)))
                .inc();
        }
    }
}
