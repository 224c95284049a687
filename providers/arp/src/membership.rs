//! Which speakers are alive: SWIM gossip between speakers (`foca`) over UDP
//! on each node's address, with the Kubernetes view as the fallback.
//!
//! Gossip answers fast and without the API server: a killed speaker stops
//! acking probes, is suspected after one probe period and declared down
//! after the suspicion timeout (a few hundred milliseconds with the default
//! tuning), and every speaker hears of it at about the same time. For a node
//! gossip has never seen (a speaker that cannot gossip yet, or a firewall in
//! the way), the Kubernetes view decides: the node's speaker pod is ready.
//! Gossip's verdict always wins over Kubernetes, which notices a dead
//! process only tens of seconds later.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{Foca, Identity, OwnedNotification, PostcardCodec, State, Timer};
use rand_foca::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;

/// How gossip runs.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's name (the identity other speakers know it by).
    pub node: String,
    /// Where the UDP socket listens.
    pub bind: SocketAddr,
    /// The address other speakers reach this one at (the node address and
    /// gossip port).
    pub advertise: SocketAddr,
    /// One probe of a random member per period.
    pub probe_period: Duration,
    /// A probe unanswered after this is retried through other members.
    pub probe_rtt: Duration,
    /// A suspected member that does not refute within this is down.
    pub suspect_timeout: Duration,
    /// How often peers from the Kubernetes view that gossip does not know
    /// yet are invited (joins, healed partitions, restarted speakers).
    pub rejoin_interval: Duration,
}

impl GossipConfig {
    /// Timings that declare a killed speaker down in well under a second
    /// on a LAN: probe every 100 ms, indirect probes after 40 ms, down
    /// 200 ms after the suspicion.
    pub fn fast(node: String, bind: SocketAddr, advertise: SocketAddr) -> Self {
        GossipConfig {
            node,
            bind,
            advertise,
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(40),
            suspect_timeout: Duration::from_millis(200),
            rejoin_interval: Duration::from_millis(500),
        }
    }

    fn foca_config(&self) -> foca::Config {
        // LAN defaults sized for a few dozen speakers (how many times an
        // update is retransmitted); the timings are ours.
        let mut config = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(31));
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self.suspect_timeout;
        // Down members are remembered long enough for everyone to agree a
        // restarted speaker is a new incarnation, then forgotten.
        config.remove_down_after = Some(Duration::from_secs(600));
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.probe_period / 2,
            num_members: NonZeroUsize::MIN.saturating_add(2),
        });
        config
    }
}

/// A speaker in gossip: node name, address, and a start stamp so a
/// restarted speaker is a new member that wins over its dead predecessor.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct SpeakerId {
    node: String,
    addr: SocketAddr,
    bump: u64,
}

impl SpeakerId {
    /// Whom to invite at an address before knowing who is there: it
    /// answers with its real identity, which wins the address conflict.
    fn placeholder(addr: SocketAddr) -> Self {
        SpeakerId {
            node: String::new(),
            addr,
            bump: 0,
        }
    }
}

impl Identity for SpeakerId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(SpeakerId {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// What gossip says about each node it has heard of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberView {
    /// Nodes whose newest speaker is alive (or suspected, not yet down).
    pub alive: BTreeSet<String>,
    /// Nodes whose newest speaker was declared down.
    pub down: BTreeSet<String>,
}

impl MemberView {
    /// Gossip's verdict on `node`, `None` when gossip never heard of it.
    pub fn verdict(&self, node: &str) -> Option<bool> {
        if self.alive.contains(node) {
            Some(true)
        } else if self.down.contains(node) {
            Some(false)
        } else {
            None
        }
    }

    fn from_members<'a>(members: impl Iterator<Item = &'a foca::Member<SpeakerId>>) -> Self {
        let mut newest: BTreeMap<&str, (u64, State)> = BTreeMap::new();
        for member in members {
            let id = member.id();
            if id.node.is_empty() {
                continue;
            }
            let entry = newest.entry(&id.node).or_insert((id.bump, member.state()));
            if id.bump > entry.0 {
                *entry = (id.bump, member.state());
            }
        }
        let mut view = MemberView::default();
        for (node, (_, state)) in newest {
            match state {
                State::Alive | State::Suspect => view.alive.insert(node.to_string()),
                State::Down => view.down.insert(node.to_string()),
            };
        }
        view
    }
}

/// Whether `node`'s speaker is alive: this speaker always is; otherwise
/// gossip decides, and for nodes gossip never heard of, whether Kubernetes
/// shows a ready speaker pod there.
pub fn speaker_alive(
    me: &str,
    node: &str,
    gossip: &MemberView,
    ready_in_kubernetes: &BTreeSet<String>,
) -> bool {
    node == me
        || gossip
            .verdict(node)
            .unwrap_or_else(|| ready_in_kubernetes.contains(node))
}

/// Gossip running in the background.
#[derive(Debug)]
pub struct Membership {
    /// The latest view; changes whenever a member comes or goes.
    pub view: watch::Receiver<MemberView>,
    /// The task; it ends (after leaving the cluster) when `shutdown` fires.
    pub task: tokio::task::JoinHandle<()>,
}

/// Bind the gossip socket and start gossiping. `peers` is the Kubernetes
/// view of where other speakers listen; they are invited until they join.
pub async fn start(
    config: GossipConfig,
    peers: watch::Receiver<BTreeSet<SocketAddr>>,
    shutdown: CancellationToken,
) -> Result<Membership, Error> {
    let socket = UdpSocket::bind(config.bind)
        .await
        .map_err(|source| Error::GossipBind {
            addr: config.bind,
            source,
        })?;
    let bump = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        .max(1);
    let me = SpeakerId {
        node: config.node.clone(),
        addr: config.advertise,
        bump,
    };
    let foca = Foca::new(
        me,
        config.foca_config(),
        rand_foca::make_rng::<StdRng>(),
        PostcardCodec,
    );
    let (view_tx, view) = watch::channel(MemberView::default());
    info!(node = %config.node, bind = %config.bind, advertise = %config.advertise, "gossip started");
    let task = tokio::spawn(
        Gossip {
            foca,
            socket: Arc::new(socket),
            runtime: foca::AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            view_tx,
            config,
        }
        .run(peers, shutdown),
    );
    Ok(Membership { view, task })
}

type SpeakerFoca = Foca<SpeakerId, PostcardCodec, StdRng, foca::NoCustomBroadcast>;

struct Gossip {
    foca: SpeakerFoca,
    socket: Arc<UdpSocket>,
    runtime: foca::AccumulatingRuntime<SpeakerId>,
    /// Timers foca asked for, earliest first; the sequence number keeps
    /// timers due at the same instant in the order foca submitted them.
    timers: BinaryHeap<Reverse<(Instant, u64, TimerSlot)>>,
    seq: u64,
    view_tx: watch::Sender<MemberView>,
    config: GossipConfig,
}

/// `Timer` without `Ord` requirements on our side: ordered by the heap key only.
struct TimerSlot(Timer<SpeakerId>);

impl PartialEq for TimerSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TimerSlot {}
impl PartialOrd for TimerSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Gossip {
    async fn run(
        mut self,
        mut peers: watch::Receiver<BTreeSet<SocketAddr>>,
        shutdown: CancellationToken,
    ) {
        let mut buf = vec![0u8; 1500];
        let mut invite = tokio::time::interval(self.config.rejoin_interval);
        invite.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, _from)) => {
                        if let Err(err) = self.foca.handle_data(&buf[..len], &mut self.runtime) {
                            debug!(error = %err, "gossip: ignored a datagram");
                        }
                    }
                    Err(err) => warn!(error = %err, "gossip: receive failed"),
                },
                _ = sleep_until_opt(next_timer) => {
                    if let Some(Reverse((_, _, TimerSlot(timer)))) = self.timers.pop()
                        && let Err(err) = self.foca.handle_timer(timer, &mut self.runtime)
                    {
                        debug!(error = %err, "gossip: timer");
                    }
                }
                _ = invite.tick() => self.invite(&peers.borrow()),
                changed = peers.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.invite(&peers.borrow_and_update());
                }
            }
            self.drain().await;
        }
        // Tell the others at once instead of letting them time out.
        if let Err(err) = self.foca.leave_cluster(&mut self.runtime) {
            debug!(error = %err, "gossip: leave");
        }
        self.drain().await;
        info!("gossip stopped");
    }

    /// Invite every peer address not yet an active member.
    fn invite(&mut self, peers: &BTreeSet<SocketAddr>) {
        let active: BTreeSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for addr in peers {
            if *addr == self.config.advertise || active.contains(addr) {
                continue;
            }
            if let Err(err) = self
                .foca
                .announce(SpeakerId::placeholder(*addr), &mut self.runtime)
            {
                debug!(error = %err, %addr, "gossip: announce");
            }
        }
    }

    /// Carry out what foca asked for: send, schedule, and publish a new view.
    async fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            if let Err(err) = self.socket.send_to(&data, to.addr).await {
                debug!(error = %err, to = %to.addr, "gossip: send failed");
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.seq += 1;
            self.timers
                .push(Reverse((now + after, self.seq, TimerSlot(timer))));
        }
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    info!(node = %id.node, addr = %id.addr, "gossip: speaker up");
                    changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    info!(node = %id.node, addr = %id.addr, "gossip: speaker down");
                    changed = true;
                }
                OwnedNotification::Rename(old, new) => {
                    debug!(old = ?old, new = ?new, "gossip: renamed");
                    changed = true;
                }
                OwnedNotification::Defunct => {
                    warn!("gossip: declared down by the others; rejoining as a new incarnation");
                    changed = true;
                }
                other => debug!(notification = ?other, "gossip"),
            }
        }
        if changed {
            let view = MemberView::from_members(self.foca.iter_membership_state());
            self.view_tx.send_if_modified(|current| {
                let differs = *current != view;
                *current = view;
                differs
            });
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gossip_wins_and_kubernetes_decides_only_what_gossip_never_saw() {
        let gossip = MemberView {
            alive: set(&["b"]),
            down: set(&["c"]),
        };
        let kube_ready = set(&["c", "d"]);
        let rows = [
            ("this speaker is alive whatever anyone says", "me", true),
            ("gossip says alive, Kubernetes has no pod", "b", true),
            (
                "gossip says down, Kubernetes still shows the pod ready",
                "c",
                false,
            ),
            ("gossip never saw it, its pod is ready", "d", true),
            ("gossip never saw it, no ready pod", "e", false),
        ];
        for (desc, node, want) in rows {
            assert_eq!(
                speaker_alive("me", node, &gossip, &kube_ready),
                want,
                "{desc}"
            );
        }
    }

    #[test]
    fn the_newest_incarnation_of_a_node_decides() {
        let addr: SocketAddr = "192.0.2.1:7946".parse().expect("addr");
        let id = |node: &str, bump| SpeakerId {
            node: node.into(),
            addr,
            bump,
        };
        let members = [
            foca::Member::down(id("a", 1)),
            foca::Member::alive(id("a", 2)),
            foca::Member::alive(id("b", 5)),
            foca::Member::down(id("b", 6)),
            foca::Member::alive(SpeakerId::placeholder(addr)),
        ];
        let view = MemberView::from_members(members.iter());
        assert_eq!(view.verdict("a"), Some(true), "restarted speaker is alive");
        assert_eq!(view.verdict("b"), Some(false), "newest incarnation died");
        assert_eq!(view.verdict(""), None, "placeholders are nobody");
        assert_eq!(view.verdict("z"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_speakers_on_loopback_see_each_other_and_notice_a_death() {
        let timeout = Duration::from_secs(10);
        let shutdown: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        // Bind on port 0 is not possible (the advertised address must be
        // known up front): pick free ports by binding and releasing them.
        let addrs: Vec<SocketAddr> = (0..3)
            .map(|_| {
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.local_addr())
                    .expect("free port")
            })
            .collect();
        let (_peers_tx, peers) = watch::channel(addrs.iter().copied().collect());
        let mut members = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let config = GossipConfig::fast(format!("node-{i}"), *addr, *addr);
            members.push(
                start(config, peers.clone(), shutdown[i].clone())
                    .await
                    .expect("gossip starts"),
            );
        }
        let everyone = |v: &MemberView, n: usize| v.alive.len() == n;
        let mut view0 = members[0].view.clone();
        tokio::time::timeout(timeout, view0.wait_for(|v| everyone(v, 2)))
            .await
            .expect("node-0 sees both others in time")
            .expect("gossip running");
        // A crash, not a goodbye: abort the task without leaving.
        members[2].task.abort();
        tokio::time::timeout(timeout, view0.wait_for(|v| v.down.contains("node-2")))
            .await
            .expect("node-0 declares node-2 down in time")
            .expect("gossip running");
        assert!(view0.borrow().alive.contains("node-1"));
        for s in &shutdown {
            s.cancel();
        }
    }
}
