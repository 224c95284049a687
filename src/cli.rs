//! Command-line interface: flags and environment variables (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

#[derive(Debug, Parser)]
#[command(
    name = "portico",
    version,
    about = "Kubernetes load balancers for Services of type LoadBalancer: SLB-style cloud, AWS NLB, bare metal"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PORTICO_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller against a cluster.
    // A flag given twice takes its last value, so a chart's extraArgs can
    // override what the chart sets.
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
    /// Run the SLB-style mock cloud (API + data plane) on its own.
    SlbServer(SlbServerArgs),
    /// Run the whole path on this machine with no cluster and no cloud account.
    #[cfg(feature = "demo")]
    Demo(portico_demo::DemoArgs),
    /// Announce bare-metal VIPs from this node with ARP/NDP (the arp
    /// provider's DaemonSet; host network, NET_RAW and NET_ADMIN).
    #[command(args_override_self = true)]
    Speaker(Box<portico_arp::speaker::SpeakerArgs>),
}

impl Command {
    /// The log filter unless `RUST_LOG` says otherwise.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Run(_) | Command::SlbServer(_) | Command::Speaker(_) => "info,kube=warn",
            // The demo narrates on stdout; its logs stay quiet.
            #[cfg(feature = "demo")]
            Command::Demo(_) => "warn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// SLB-style cloud (the built-in mock cloud, embedded unless --slb-endpoint is given).
    Slb,
    /// AWS Network Load Balancers.
    Aws,
    /// Bare metal: addresses from IPPools, announced by the speakers (ARP/NDP).
    Arp,
}

impl ProviderKind {
    /// The `spec.loadBalancerClass` answered to when none is configured.
    pub fn default_class(self) -> String {
        match self {
            ProviderKind::Slb => crate::config::DEFAULT_CLASS.to_string(),
            ProviderKind::Aws => "portico.io/aws".to_string(),
            ProviderKind::Arp => portico_arp::provider::DEFAULT_CLASS.to_string(),
        }
    }

    /// Whether Services without a class are claimed when the flag is not
    /// given: on AWS the cluster usually has a cloud controller of its own
    /// (EKS's) serving them, so portico waits to be asked by class; on bare
    /// metal the speakers announce only Services of their class, so an
    /// address given to a class-less Service would never be announced.
    pub fn claims_classless_by_default(self) -> bool {
        match self {
            ProviderKind::Slb => true,
            ProviderKind::Aws | ProviderKind::Arp => false,
        }
    }
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration such as 30s or 10m: {e}"))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kubeconfig to use; otherwise KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Which cloud builds the balancers.
    #[arg(long, value_enum, default_value_t = ProviderKind::Slb, env = "PORTICO_PROVIDER")]
    pub provider: ProviderKind,
    /// Cluster identity written into ownership tags; by default derived from
    /// the kube-system namespace's UID, so two clusters sharing a cloud
    /// account never take each other's balancers for their own.
    #[arg(long, env = "PORTICO_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// The spec.loadBalancerClass this controller answers to.
    /// Default: `portico.io/<provider>` (`portico.io/slb`, `portico.io/aws`, `portico.io/arp`).
    #[arg(long, env = "PORTICO_LOAD_BALANCER_CLASS")]
    pub load_balancer_class: Option<String>,
    /// Also take Services without a loadBalancerClass (be the cluster's
    /// default). Default per provider: slb yes; aws no (EKS's own cloud
    /// controller already serves class-less Services); arp no (the speakers
    /// announce Services of their class only).
    #[arg(long, action = clap::ArgAction::Set, env = "PORTICO_CLAIM_CLASSLESS")]
    pub claim_classless: Option<bool>,
    /// Concurrent reconciles (upstream's service controller uses 1).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024), env = "PORTICO_WORKERS")]
    pub workers: u16,
    /// How often every managed Service is re-ensured (repairs cloud drift).
    #[arg(long, default_value = "10m", value_parser = parse_duration, env = "PORTICO_RESYNC")]
    pub resync: Duration,
    /// Node changes within this window are handled together.
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "PORTICO_NODE_DEBOUNCE")]
    pub node_debounce: Duration,
    /// Delete balancers of this cluster whose Service is gone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "PORTICO_GC")]
    pub gc: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:10258", env = "PORTICO_HTTP_ADDR")]
    pub http_addr: SocketAddr,
    /// Take part in leader election (several replicas; only the leader acts).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "PORTICO_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, default_value = "kube-system", env = "PORTICO_LEASE_NAMESPACE")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (defaults to POD_NAME or the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[command(flatten)]
    pub slb: SlbArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args, Clone)]
pub struct SlbArgs {
    /// URL of a running mock cloud (`portico slb-server`); without it the cloud runs embedded.
    #[arg(long, env = "PORTICO_SLB_ENDPOINT")]
    pub slb_endpoint: Option<String>,
    /// VIP range of the embedded cloud (default inside 127.0.0.0/8: reachable from this host only).
    #[arg(long, default_value = "127.240.0.0/16", env = "PORTICO_SLB_VIP_RANGE")]
    pub slb_vip_range: IpNet,
    /// State file of the embedded cloud (keeps balancers across restarts).
    #[arg(long, env = "PORTICO_SLB_STATE")]
    pub slb_state: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct AwsArgs {
    /// AWS region (otherwise AWS_REGION or the profile's).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// Endpoint override for an emulator (moto, LocalStack).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// Only discover subnets in this VPC.
    #[arg(long, env = "PORTICO_AWS_VPC_ID")]
    pub aws_vpc_id: Option<String>,
    /// The cluster's NodePort range (kube-apiserver's --service-node-port-range):
    /// the nodes' security groups let the NLBs reach it.
    #[arg(
        long,
        default_value = "30000-32767",
        env = "PORTICO_AWS_NODE_PORT_RANGE"
    )]
    pub aws_node_port_range: portico_aws::NodePortRange,
}

#[derive(Debug, Args)]
pub struct SlbServerArgs {
    /// Address of the cloud API.
    #[arg(long, default_value = "127.0.0.1:8480")]
    pub listen: SocketAddr,
    /// State file: everything the API acknowledged survives restarts.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Where balancer VIPs come from.
    #[arg(long, default_value = "127.240.0.0/16")]
    pub vip_range: IpNet,
    /// Address of the data plane's /metrics.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ControllerConfig;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["portico", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Run(args) => *args,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_agree_with_the_controller_config() {
        let args = run_args(&[]);
        assert_eq!(
            args.node_debounce,
            ControllerConfig::default().node_debounce,
            "one node-debounce default"
        );
        assert!(args.gc, "orphan collection is on by default");
        assert_eq!(args.cluster_name, None, "identity derived from the cluster");
    }

    #[test]
    fn claiming_classless_services_defaults_per_provider() {
        let cases = [
            ("slb: the laptop/kind default", ProviderKind::Slb, true),
            (
                "aws: EKS's own controller serves class-less Services",
                ProviderKind::Aws,
                false,
            ),
            (
                "arp: the speakers announce their class only",
                ProviderKind::Arp,
                false,
            ),
        ];
        for (desc, provider, want) in cases {
            assert_eq!(provider.claims_classless_by_default(), want, "{desc}");
        }
        let args = run_args(&[
            "--provider",
            "aws",
            "--claim-classless",
            "true",
            "--gc",
            "false",
        ]);
        assert_eq!(args.claim_classless, Some(true), "the flag wins");
        assert!(!args.gc);
    }

    #[test]
    fn speaker_takes_its_node_and_interface() {
        let cli = Cli::try_parse_from([
            "portico",
            "speaker",
            "--node-name",
            "worker-1",
            "--interface",
            "eth1",
            "--gossip-port",
            "7947",
            "--http-addr",
            "127.0.0.1:7473",
        ])
        .expect("parses");
        let Command::Speaker(args) = cli.command else {
            panic!("expected speaker, got {:?}", cli.command);
        };
        assert_eq!(args.node_name, "worker-1");
        assert_eq!(args.interface.as_deref(), Some("eth1"));
        assert_eq!(args.gossip_port, 7947);
        assert_eq!(
            args.http_addr.0,
            Some("127.0.0.1:7473".parse().expect("addr"))
        );
        let missing = Cli::try_parse_from(["portico", "speaker"]);
        if std::env::var_os("NODE_NAME").is_none() {
            assert!(missing.is_err(), "the node name is required");
        }
    }

    #[test]
    fn the_arp_provider_answers_to_its_own_class() {
        let args = run_args(&["--provider", "arp"]);
        assert_eq!(args.provider, ProviderKind::Arp);
        assert_eq!(args.provider.default_class(), "portico.io/arp");
    }
}
