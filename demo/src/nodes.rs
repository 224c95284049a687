//! Simulated nodes for the demo: each node has its own loopback address and
//! answers every NodePort of every Service with its own name, standing in for
//! kube-proxy (TCP: a one-line HTTP response; UDP: a datagram back; the
//! healthCheckNodePort answers `/healthz` with 200).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};

/// A simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    pub name: String,
    pub ip: IpAddr,
}

impl SimNode {
    /// The Node object: Ready, its address as InternalIP, and the hostname
    /// label kubelet sets.
    pub fn object(&self) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some([("kubernetes.io/hostname".into(), self.name.clone())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: self.ip.to_string(),
                }]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

/// kube-proxy's part in the demo: NodePort listeners on every node.
#[derive(Debug)]
pub struct KubeProxySim {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl KubeProxySim {
    /// Watch Services and keep a listener on `node.ip:nodePort` for each
    /// NodePort (and health-check port) of each Service, on every node.
    pub fn start(client: Client, nodes: Vec<SimNode>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(client, nodes, stop.clone()));
        Self { task, stop }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn wanted_ports(services: &BTreeMap<String, Arc<Service>>) -> BTreeSet<(u16, Proto)> {
    let mut out = BTreeSet::new();
    for svc in services.values() {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        for p in spec.ports.iter().flatten() {
            let proto = if p.protocol.as_deref() == Some("UDP") {
                Proto::Udp
            } else {
                Proto::Tcp
            };
            if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
                out.insert((np, proto));
            }
        }
        if let Some(hc) = spec
            .health_check_node_port
            .and_then(|n| u16::try_from(n).ok())
        {
            out.insert((hc, Proto::Tcp));
        }
    }
    out
}

async fn run(client: Client, nodes: Vec<SimNode>, stop: CancellationToken) {
    let api: Api<Service> = Api::all(client);
    let mut services: BTreeMap<String, Arc<Service>> = BTreeMap::new();
    let mut listeners: BTreeMap<(u16, Proto), Vec<CancellationToken>> = BTreeMap::new();
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = stream.next() => event,
        };
        match event {
            None => break,
            Some(Err(err)) => {
                debug!(error = %err, "service watch error");
                continue;
            }
            Some(Ok(WatchEvent::Apply(svc) | WatchEvent::InitApply(svc))) => {
                services.insert(
                    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()),
                    Arc::new(svc),
                );
            }
            Some(Ok(WatchEvent::Delete(svc))) => {
                services.remove(&format!(
                    "{}/{}",
                    svc.namespace().unwrap_or_default(),
                    svc.name_any()
                ));
            }
            Some(Ok(WatchEvent::Init)) => services.clear(),
            Some(Ok(WatchEvent::InitDone)) => {}
        }
        let wanted = wanted_ports(&services);
        listeners.retain(|key, tokens| {
            let keep = wanted.contains(key);
            if !keep {
                tokens.iter().for_each(CancellationToken::cancel);
            }
            keep
        });
        for key in wanted {
            if listeners.contains_key(&key) {
                continue;
            }
            let mut tokens = Vec::new();
            for node in &nodes {
                let token = stop.child_token();
                let addr = SocketAddr::new(node.ip, key.0);
                match key.1 {
                    Proto::Tcp => match TcpListener::bind(addr).await {
                        Ok(l) => {
                            tokio::spawn(serve_tcp(l, node.name.clone(), token.clone()));
                        }
                        Err(err) => warn!(%addr, error = %err, "node port unavailable"),
                    },
                    Proto::Udp => match UdpSocket::bind(addr).await {
                        Ok(s) => {
                            tokio::spawn(serve_udp(s, node.name.clone(), token.clone()));
                        }
                        Err(err) => warn!(%addr, error = %err, "node port unavailable"),
                    },
                }
                tokens.push(token);
            }
            listeners.insert(key, tokens);
        }
    }
    for token in listeners.values().flatten() {
        token.cancel();
    }
}

async fn serve_tcp(listener: TcpListener, node: String, stop: CancellationToken) {
    let body: Arc<str> = Arc::from(format!("hello from {node}\n"));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            // Read the request head (or whatever arrives first), answer, close.
            let mut buf = [0u8; 2048];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn serve_udp(socket: UdpSocket, node: String, stop: CancellationToken) {
    let reply = format!("hello from {node}\n");
    let mut buf = [0u8; 2048];
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        if let Ok((_, from)) = received {
            let _ = socket.send_to(reply.as_bytes(), from).await;
        }
    }
}

/// The shared tally of which node answered, for the demo's traffic report.
#[derive(Debug, Default, Clone)]
pub struct Tally(Arc<Mutex<BTreeMap<String, usize>>>);

impl Tally {
    pub fn add(&self, node: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_default() += 1;
    }

    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
