//! Test fixtures against an AWS endpoint (moto by default; see
//! `scripts/moto.sh`, or LocalStack): a VPC with role-tagged subnets in two
//! zones and EC2 instances to use as targets, all unique to one harness so
//! tests can share the emulator. Used by this crate's tests and benchmark and
//! by portico's end-to-end test; compiled only with the `testing` feature.
//!
//! Setup failures panic: these are test fixtures, and a failed fixture call
//! is a failed test.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::{AwsProvider, AwsProviderConfig, FaultInjection, FaultKind};
use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2 as ec2;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_sdk_elasticloadbalancingv2 as elb;
use aws_sdk_elasticloadbalancingv2::error::ProvideErrorMetadata;
use portico_provider::conformance::{Faults, Harness, Observed, ObservedCheck};
use portico_provider::{ClusterName, LoadBalancerKey, Protocol, Target};
use tokio::sync::Mutex;

pub const REGION: &str = "us-east-1";
pub const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];

/// Whether the AWS tests must run: `PORTICO_REQUIRE_AWS` is set
/// (`scripts/test.sh` sets it) or `CI=true`. Then a missing emulator is a
/// failure, never a quiet skip.
fn required() -> bool {
    std::env::var_os("PORTICO_REQUIRE_AWS").is_some_and(|v| !v.is_empty())
        || std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The emulator's URL, or `None` (after saying so) when tests must skip.
///
/// # Panics
///
/// When `AWS_ENDPOINT_URL` is not set but the tests are [`required`].
pub fn endpoint() -> Option<String> {
    endpoint_from(std::env::var("AWS_ENDPOINT_URL").ok(), required())
}

fn endpoint_from(url: Option<String>, required: bool) -> Option<String> {
    match url {
        Some(url) if !url.is_empty() => Some(url),
        _ if required => panic!(
            "AWS_ENDPOINT_URL is not set, and the AWS tests must run here (PORTICO_REQUIRE_AWS or CI=true): start the emulator with `eval \"$(scripts/moto.sh start)\"`"
        ),
        _ => {
            eprintln!("skipped: AWS_ENDPOINT_URL not set (run scripts/moto.sh start)");
            None
        }
    }
}

/// Whether to skip a test that needs the emulator (never when the tests
/// are required: then it panics).
pub fn skip() -> bool {
    endpoint().is_none()
}

#[cfg(test)]
mod endpoint_tests {
    use super::endpoint_from;

    #[test]
    fn a_missing_emulator_skips_only_when_not_required() {
        let url = Some("http://127.0.0.1:5055".to_string());
        assert_eq!(endpoint_from(url.clone(), true), url);
        assert_eq!(endpoint_from(url.clone(), false), url);
        assert_eq!(endpoint_from(None, false), None);
        assert_eq!(endpoint_from(Some(String::new()), false), None);
        let required = std::panic::catch_unwind(|| endpoint_from(None, true));
        assert!(
            required.is_err(),
            "a required emulator that is missing fails"
        );
    }
}

/// Static test credentials and a short retry backoff: never the instance
/// metadata service, never real credentials.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(elb::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "portico-tests",
        ))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(10))
                .with_max_backoff(Duration::from_millis(200)),
        )
        .load()
        .await
}

#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub zone: String,
}

/// One test's private corner of the emulator, and a provider pointed at it.
#[derive(Debug)]
pub struct AwsHarness {
    pub provider: AwsProvider,
    pub cluster: ClusterName,
    pub ec2: ec2::Client,
    pub elb: elb::Client,
    pub vpc_id: String,
    pub subnets: Vec<(String, String)>,
    /// The nodes' cluster group (tagged `kubernetes.io/cluster/<cluster>`);
    /// instances also carry the VPC's default group, as EKS nodes carry more than one.
    pub node_group: String,
    default_group: Option<String>,
    sdk: SdkConfig,
    instances: Mutex<Vec<Instance>>,
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

impl AwsHarness {
    pub async fn start() -> Self {
        Self::with_options(true).await
    }

    /// `discoverable`: tag the subnets for discovery (else tests must name them).
    pub async fn with_options(discoverable: bool) -> Self {
        let endpoint = endpoint().expect("AWS_ENDPOINT_URL");
        let sdk = sdk_config(&endpoint).await;
        let uid = uuid::Uuid::new_v4().simple().to_string();
        let cluster = ClusterName::new(format!("c-{}", &uid[..10]));
        let ec2 = ec2::Client::new(&sdk);
        let elb = elb::Client::new(&sdk);

        let octet = u8::from_str_radix(&uid[..2], 16).unwrap_or(1);
        let vpc = ec2
            .create_vpc()
            .cidr_block(format!("10.{octet}.0.0/16"))
            .send()
            .await
            .expect("create vpc");
        let vpc_id = vpc
            .vpc()
            .and_then(|v| v.vpc_id())
            .expect("vpc id")
            .to_string();
        let mut subnets = Vec::new();
        for (i, zone) in ZONES.iter().enumerate() {
            let mut tags = vec![tag("Name", &format!("{cluster}-public-{i}"))];
            if discoverable {
                tags.push(tag("kubernetes.io/role/elb", "1"));
                tags.push(tag(&format!("kubernetes.io/cluster/{cluster}"), "shared"));
            }
            let out = ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(format!("10.{octet}.{i}.0/24"))
                .availability_zone(*zone)
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Subnet)
                        .set_tags(Some(tags))
                        .build(),
                )
                .send()
                .await
                .expect("create subnet");
            let id = out
                .subnet()
                .and_then(|s| s.subnet_id())
                .expect("subnet id")
                .to_string();
            subnets.push((id, zone.to_string()));
        }
        let node_group = ec2
            .create_security_group()
            .group_name(format!("{cluster}-nodes"))
            .description("the nodes' cluster group")
            .vpc_id(&vpc_id)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::SecurityGroup)
                    .tags(tag(&format!("kubernetes.io/cluster/{cluster}"), "owned"))
                    .build(),
            )
            .send()
            .await
            .expect("create node group")
            .group_id()
            .expect("group id")
            .to_string();
        let default_group = ec2
            .describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
            .filters(
                Filter::builder()
                    .name("group-name")
                    .values("default")
                    .build(),
            )
            .send()
            .await
            .expect("default group")
            .security_groups()
            .first()
            .and_then(|g| g.group_id())
            .map(String::from);
        let mut config = AwsProviderConfig::new(cluster.as_str());
        config.region = Some(REGION.into());
        config.endpoint_url = Some(endpoint);
        config.vpc_id = Some(vpc_id.clone());
        let provider = AwsProvider::from_sdk_config(config, &sdk.clone());
        Self {
            provider,
            cluster,
            ec2,
            elb,
            vpc_id,
            subnets,
            node_group,
            default_group,
            sdk,
            instances: Mutex::new(Vec::new()),
        }
    }

    /// Make sure at least `n` instances exist, spread over both zones.
    pub async fn instances(&self, n: usize) -> Vec<(String, String)> {
        let mut have = self.instances.lock().await;
        while have.len() < n {
            let zone_idx = have.len() % 2;
            let (subnet, zone) = &self.subnets[zone_idx];
            let missing = n - have.len();
            let count = missing.div_ceil(2).max(1).min(missing);
            let out = self
                .ec2
                .run_instances()
                .image_id("ami-12c6146b")
                .instance_type(ec2::types::InstanceType::T3Micro)
                .subnet_id(subnet)
                .security_group_ids(&self.node_group)
                .set_security_group_ids(Some(
                    std::iter::once(self.node_group.clone())
                        .chain(self.default_group.clone())
                        .collect(),
                ))
                .min_count(count as i32)
                .max_count(count as i32)
                .send()
                .await
                .expect("run instances");
            for i in out.instances() {
                have.push(Instance {
                    id: i.instance_id().expect("instance id").to_string(),
                    zone: zone.clone(),
                });
            }
        }
        have.iter()
            .take(n)
            .map(|i| (i.id.clone(), i.zone.clone()))
            .collect()
    }

    pub async fn target_list(&self, n: usize) -> Vec<Target> {
        self.instances(n)
            .await
            .into_iter()
            .enumerate()
            .map(|(i, (id, zone))| Target {
                node_name: format!("node-{i:04}"),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    0,
                    (i / 250) as u8,
                    (i % 250) as u8 + 1,
                ))],
                provider_id: Some(format!("aws:///{zone}/{id}")),
                labels: BTreeMap::new(),
            })
            .collect()
    }

    /// Target groups (name → arn) whose tags say they belong to this cluster's Service `uid`.
    pub async fn groups_tagged(&self, uid: &str) -> Vec<String> {
        let groups = self
            .elb
            .describe_target_groups()
            .send()
            .await
            .expect("describe target groups");
        let mut out = Vec::new();
        for g in groups.target_groups() {
            let Some(arn) = g.target_group_arn() else {
                continue;
            };
            let tags = self
                .elb
                .describe_tags()
                .resource_arns(arn)
                .send()
                .await
                .expect("describe tags");
            let ours = tags.tag_descriptions().iter().any(|d| {
                d.tags()
                    .iter()
                    .any(|t| t.key() == Some("portico.io/service-uid") && t.value() == Some(uid))
            });
            if ours {
                out.push(arn.to_string());
            }
        }
        out
    }

    /// Whether the security group `id` exists.
    pub async fn security_group_exists(&self, id: &str) -> bool {
        let out = self
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("group-id").values(id).build())
            .send()
            .await
            .expect("describe security groups");
        !out.security_groups().is_empty()
    }

    /// Another provider on this harness's cluster, its configuration edited
    /// by `edit` (e.g. no `vpc_id`, to discover it).
    pub fn provider_with(&self, edit: impl FnOnce(&mut AwsProviderConfig)) -> AwsProvider {
        let mut config = self.provider.config().clone();
        edit(&mut config);
        AwsProvider::from_sdk_config(config, &self.sdk)
    }

    /// Make subnet `index` public: an internet gateway on the VPC and a
    /// route table sending 0.0.0.0/0 to it, associated with the subnet.
    pub async fn make_public(&self, index: usize) {
        let igw = self
            .ec2
            .create_internet_gateway()
            .send()
            .await
            .expect("create internet gateway")
            .internet_gateway()
            .and_then(|g| g.internet_gateway_id())
            .expect("igw id")
            .to_string();
        self.ec2
            .attach_internet_gateway()
            .internet_gateway_id(&igw)
            .vpc_id(&self.vpc_id)
            .send()
            .await
            .expect("attach internet gateway");
        let table = self
            .ec2
            .create_route_table()
            .vpc_id(&self.vpc_id)
            .send()
            .await
            .expect("create route table")
            .route_table()
            .and_then(|t| t.route_table_id())
            .expect("route table id")
            .to_string();
        self.ec2
            .create_route()
            .route_table_id(&table)
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id(&igw)
            .send()
            .await
            .expect("create route");
        self.ec2
            .associate_route_table()
            .route_table_id(&table)
            .subnet_id(&self.subnets[index].0)
            .send()
            .await
            .expect("associate route table");
    }

    pub fn subnet_filter(&self) -> Filter {
        Filter::builder()
            .name("vpc-id")
            .values(&self.vpc_id)
            .build()
    }
}

#[async_trait]
impl Harness for AwsHarness {
    type Provider = AwsProvider;

    fn provider(&self) -> &AwsProvider {
        &self.provider
    }

    fn cluster(&self) -> ClusterName {
        self.cluster.clone()
    }

    async fn targets(&self, n: usize) -> Vec<Target> {
        self.target_list(n).await
    }

    fn target_id(&self, target: &Target) -> String {
        target
            .provider_id
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .unwrap_or(&target.node_name)
            .to_string()
    }

    async fn observe(&self, key: &LoadBalancerKey) -> Option<Observed> {
        let name = crate::load_balancer_name(key);
        let found = match self.elb.describe_load_balancers().names(&name).send().await {
            Ok(out) => out,
            Err(e) if e.code() == Some("LoadBalancerNotFound") => return None,
            Err(e) => panic!("describe load balancer {name}: {e:?}"),
        };
        let lb = found.load_balancers().first()?;
        let arn = lb
            .load_balancer_arn()
            .expect("an NLB has an ARN")
            .to_string();
        let groups = lb.security_groups().to_vec();
        let listeners = self
            .elb
            .describe_listeners()
            .load_balancer_arn(&arn)
            .send()
            .await
            .expect("describe listeners");
        let mut seen = Observed::default();
        for listener in listeners.listeners() {
            let port = u16::try_from(listener.port().expect("a listener port")).expect("a port");
            let protocols = match listener.protocol().map(|p| p.as_str()) {
                Some("UDP") => vec![Protocol::Udp],
                Some("TCP_UDP") => vec![Protocol::Tcp, Protocol::Udp],
                _ => vec![Protocol::Tcp],
            };
            let group_arn = listener
                .default_actions()
                .iter()
                .find_map(|a| a.target_group_arn())
                .expect("a listener forwards to a target group");
            let groups = self
                .elb
                .describe_target_groups()
                .target_group_arns(group_arn)
                .send()
                .await
                .expect("describe target group");
            let group = groups
                .target_groups()
                .first()
                .expect("the listener's target group");
            let health = self
                .elb
                .describe_target_health()
                .target_group_arn(group_arn)
                .send()
                .await
                .expect("describe target health");
            for protocol in &protocols {
                seen.listeners.insert((port, *protocol));
                for description in health.target_health_descriptions() {
                    let draining = description
                        .target_health()
                        .and_then(|h| h.state())
                        .is_some_and(|s| s.as_str() == "draining");
                    let Some(target) = description.target().filter(|_| !draining) else {
                        continue;
                    };
                    let node_port = target
                        .port()
                        .or(group.port())
                        .and_then(|p| u16::try_from(p).ok())
                        .expect("a target port");
                    seen.routes.insert((
                        port,
                        *protocol,
                        target.id().expect("a target id").to_string(),
                        node_port,
                    ));
                }
            }
            let check_protocol = group
                .health_check_protocol()
                .map(|p| p.as_str().to_string());
            let check_port = group.health_check_port().unwrap_or("traffic-port");
            seen.health_checks
                .insert(match (check_protocol.as_deref(), check_port) {
                    (Some("TCP"), "traffic-port") => ObservedCheck::TrafficPort,
                    (Some("HTTP"), port) if port.parse::<u16>().is_ok() => ObservedCheck::Http {
                        port: port.parse().unwrap_or_default(),
                        path: group.health_check_path().unwrap_or("/").to_string(),
                    },
                    (protocol, port) => ObservedCheck::Other(format!("{protocol:?} on {port}")),
                });
        }
        // Who may connect: the CIDRs the NLB's security groups admit.
        if !groups.is_empty() {
            let described = self
                .ec2
                .describe_security_groups()
                .set_group_ids(Some(groups))
                .send()
                .await
                .expect("describe the NLB's security groups");
            let mut ranges = std::collections::BTreeSet::new();
            for p in described
                .security_groups()
                .iter()
                .flat_map(|g| g.ip_permissions())
            {
                let v4 = p.ip_ranges().iter().filter_map(|r| r.cidr_ip());
                let v6 = p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6());
                ranges.extend(v4.chain(v6).filter_map(|c| c.parse::<ipnet::IpNet>().ok()));
            }
            seen.source_ranges = Some(ranges);
        }
        Some(seen)
    }

    async fn mutating_calls(&self) -> u64 {
        self.provider.calls().stats().mutations
    }

    async fn set_faults(&self, faults: Faults) -> bool {
        self.provider
            .calls()
            .set_faults((faults.fail_every > 0).then_some(FaultInjection {
                every: faults.fail_every,
                kind: if faults.throttle {
                    FaultKind::Throttling
                } else {
                    FaultKind::ServiceUnavailable
                },
            }));
        true
    }
}

/// A test against the AWS endpoint in `AWS_ENDPOINT_URL` on a fresh
/// [`AwsHarness`] (its own VPC, node group and cluster name): skipped when
/// no endpoint is set (see [`skip`]), failed after 300 s (moto slows down
/// as its state grows, and CI runs many tests beside it).
///
/// ```text
/// aws_test!(my_test, |h: AwsHarness| async move { /* ... */ });
/// ```
#[macro_export]
macro_rules! aws_test {
    ($name:ident, $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if $crate::testing::skip() {
                return;
            }
            ::tokio::time::timeout(::std::time::Duration::from_secs(300), async {
                let h = $crate::testing::AwsHarness::start().await;
                #[allow(clippy::redundant_closure_call)]
                ($body)(h).await
            })
            .await
            .expect("timed out");
        }
    };
}
