//! The provider against recorded AWS answers, for what moto gets wrong:
//! network balancers' ARNs say `net/` (moto writes `app/`), a taken name is
//! refused, DescribeTags fails for a balancer deleted since it was listed,
//! unknown instances and bad names are rejected, new targets start
//! `initial`, every listing pages, and an adoption by a `net/` ARN finds
//! only a network balancer no one else owns.
//!
//! A fake ELBv2/EC2 endpoint on loopback answers the real SDK over HTTP in
//! the Query protocol, with the XML shapes of ELBv2 API 2015-12-01 and EC2
//! 2016-11-15, and records every request. No emulator needed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use fake::{Call, Reply, error, members, ok, paged};
use portico_aws::testing::{REGION, sdk_config};
use portico_aws::{
    ADOPT_ANNOTATION, AwsProvider, AwsProviderConfig, load_balancer_name, ownership_tags,
    target_group_name,
};
use portico_provider::testing::EnsureSpec;
use portico_provider::{
    Annotations, ClusterName, Listener, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec,
    Protocol, ProviderError, Target, short_hash,
};

/// The fake endpoint: an axum server on 127.0.0.1:0 that hands each request
/// (`Action` and parameters of the form body) to a script and records it.
mod fake {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, MutexGuard};

    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::routing::post;
    use axum::{Form, Router};

    const ELB_NS: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";
    const EC2_NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
    const REQUEST_ID: &str = "5d6e1c2a-7f1b-4c1e-9d2b-3f0a9e8b7c6d";

    /// One request as the endpoint received it.
    #[derive(Debug, Clone)]
    pub struct Call {
        pub action: String,
        pub params: BTreeMap<String, String>,
        /// How many requests of the same action came before this one.
        pub nth: usize,
    }

    impl Call {
        pub fn param(&self, name: &str) -> Option<&str> {
            self.params.get(name).map(String::as_str)
        }

        /// A list parameter (`Names.member.1`, `Names.member.2`, ...) in order.
        pub fn list(&self, name: &str) -> Vec<String> {
            (1..)
                .map_while(|i| self.params.get(&format!("{name}.member.{i}")).cloned())
                .collect()
        }

        pub fn is_mutation(&self) -> bool {
            !self.action.starts_with("Describe")
        }
    }

    /// An HTTP status and an XML body.
    #[derive(Debug, Clone)]
    pub struct Reply(StatusCode, String);

    type Script = dyn Fn(&Call) -> Reply + Send + Sync;

    struct Shared {
        script: Box<Script>,
        calls: Mutex<Vec<Call>>,
    }

    impl Shared {
        fn calls(&self) -> MutexGuard<'_, Vec<Call>> {
            self.calls.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    pub struct Endpoint {
        pub url: String,
        shared: Arc<Shared>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Drop for Endpoint {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    impl Endpoint {
        pub async fn start(script: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> Self {
            let shared = Arc::new(Shared {
                script: Box::new(script),
                calls: Mutex::new(Vec::new()),
            });
            let app = Router::new()
                .route("/", post(answer))
                .with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let url = format!("http://{}", listener.local_addr().expect("local address"));
            let server = tokio::spawn(async move {
                axum::serve(listener, app).await.expect("fake endpoint");
            });
            Self {
                url,
                shared,
                server,
            }
        }

        pub fn calls(&self) -> Vec<Call> {
            self.shared.calls().clone()
        }

        pub fn calls_of(&self, action: &str) -> Vec<Call> {
            self.calls()
                .into_iter()
                .filter(|c| c.action == action)
                .collect()
        }

        /// The actions of every mutating request, in order.
        pub fn mutations(&self) -> Vec<String> {
            self.calls()
                .into_iter()
                .filter(Call::is_mutation)
                .map(|c| c.action)
                .collect()
        }
    }

    async fn answer(
        State(shared): State<Arc<Shared>>,
        Form(form): Form<Vec<(String, String)>>,
    ) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
        let params: BTreeMap<String, String> = form.into_iter().collect();
        let action = params.get("Action").cloned().unwrap_or_default();
        let call = {
            let mut calls = shared.calls();
            let nth = calls.iter().filter(|c| c.action == action).count();
            let call = Call {
                action,
                params,
                nth,
            };
            calls.push(call.clone());
            call
        };
        let Reply(status, body) = (shared.script)(&call);
        (status, [(header::CONTENT_TYPE, "text/xml")], body)
    }

    /// ELBv2's answer to `action`, `result` inside `<{action}Result>`.
    pub fn ok(action: &str, result: &str) -> Reply {
        Reply(
            StatusCode::OK,
            format!(
                r#"<{action}Response xmlns="{ELB_NS}"><{action}Result>{result}</{action}Result><ResponseMetadata><RequestId>{REQUEST_ID}</RequestId></ResponseMetadata></{action}Response>"#
            ),
        )
    }

    /// EC2's answer to `action`: no Result wrapper, a lowercase `requestId`.
    pub fn ec2_ok(action: &str, body: &str) -> Reply {
        Reply(
            StatusCode::OK,
            format!(
                r#"<{action}Response xmlns="{EC2_NS}"><requestId>{REQUEST_ID}</requestId>{body}</{action}Response>"#
            ),
        )
    }

    /// An ELBv2 error as AWS sends it: HTTP 400 from the `Sender`.
    pub fn error(code: &str, message: &str) -> Reply {
        Reply(
            StatusCode::BAD_REQUEST,
            format!(
                r#"<ErrorResponse xmlns="{ELB_NS}"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{REQUEST_ID}</RequestId></ErrorResponse>"#
            ),
        )
    }

    /// Each item in `<member>`, ELBv2's list element.
    pub fn members(items: impl IntoIterator<Item = String>) -> String {
        items
            .into_iter()
            .map(|i| format!("<member>{i}</member>"))
            .collect()
    }

    /// One page of at most `page` of `items` as list `name`, from the
    /// request's `Marker`, with `NextMarker` when more follow.
    pub fn paged(call: &Call, name: &str, items: &[String], page: usize) -> Reply {
        let start = call.param("Marker").map_or(0, |m| {
            m.trim_start_matches("page-").parse().expect("our marker")
        });
        let end = (start + page).min(items.len());
        let next = if end < items.len() {
            format!("<NextMarker>page-{end}</NextMarker>")
        } else {
            String::new()
        };
        let list = members(items[start..end].iter().cloned());
        ok(&call.action, &format!("<{name}>{list}</{name}>{next}"))
    }
}

const CLUSTER: &str = "recorded";
const VPC: &str = "vpc-0a1b2c3d4e5f60718";
const ARN: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012";
/// DescribeTags takes at most this many ARNs.
const TAGS_LIMIT: usize = 20;

fn key(name: &str) -> LoadBalancerKey {
    LoadBalancerKey::new(
        ClusterName::new(CLUSTER),
        "shop",
        name,
        format!("uid-{name}"),
    )
}

fn xml(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("<{k}>{v}</{k}>"))
        .collect()
}

/// A target group of a recorded balancer: TCP, health check on the traffic port.
#[derive(Debug, Clone)]
struct Group {
    name: String,
    port: u16,
    node_port: u16,
    targets: Vec<String>,
    /// What DescribeTargetHealth says of every target.
    state: &'static str,
}

impl Group {
    fn arn(&self) -> String {
        format!(
            "{ARN}:targetgroup/{}/{}",
            self.name,
            short_hash(&[&self.name], 16)
        )
    }

    fn member(&self, lb_arn: &str) -> String {
        let (arn, port) = (self.arn(), self.node_port.to_string());
        xml(&[
            ("TargetGroupArn", &arn),
            ("TargetGroupName", &self.name),
            ("Protocol", "TCP"),
            ("Port", &port),
            ("VpcId", VPC),
            ("HealthCheckProtocol", "HTTP"),
            ("HealthCheckPort", "10256"),
            ("HealthCheckPath", "/healthz"),
            ("Matcher", &xml(&[("HttpCode", "200-399")])),
            ("HealthCheckEnabled", "true"),
            ("HealthCheckIntervalSeconds", "10"),
            ("HealthCheckTimeoutSeconds", "6"),
            ("HealthyThresholdCount", "2"),
            ("UnhealthyThresholdCount", "2"),
            ("TargetType", "instance"),
            ("LoadBalancerArns", &members([lb_arn.to_string()])),
            ("IpAddressType", "ipv4"),
        ])
    }

    fn listener(&self, lb: &Lb) -> String {
        let (tg, port) = (self.arn(), self.port.to_string());
        let arn = format!(
            "{ARN}:listener/net/{}/{}/{}",
            lb.name,
            lb.hash(),
            short_hash(&[&port], 16)
        );
        let forward = xml(&[
            ("Type", "forward"),
            ("TargetGroupArn", &tg),
            (
                "ForwardConfig",
                &xml(&[(
                    "TargetGroups",
                    &members([xml(&[("TargetGroupArn", &tg), ("Weight", "1")])]),
                )]),
            ),
        ]);
        xml(&[
            ("ListenerArn", &arn),
            ("LoadBalancerArn", &lb.arn()),
            ("Port", &port),
            ("Protocol", "TCP"),
            ("DefaultActions", &members([forward])),
        ])
    }

    /// DescribeTargetHealth's descriptions; a `Reason` for every state but healthy.
    fn health(&self) -> String {
        let reason = match self.state {
            "initial" => "Elb.RegistrationInProgress",
            "unhealthy" => "Target.FailedHealthChecks",
            "unused" => "Target.NotInUse",
            "unavailable" => "Target.HealthCheckDisabled",
            _ => "",
        };
        let port = self.node_port.to_string();
        let pairs = [("State", self.state), ("Reason", reason)];
        let state = xml(if reason.is_empty() {
            &pairs[..1]
        } else {
            &pairs
        });
        members(self.targets.iter().map(|id| {
            xml(&[
                ("Target", &xml(&[("Id", id), ("Port", &port)])),
                ("HealthCheckPort", &port),
                ("TargetHealth", &state),
            ])
        }))
    }
}

/// A load balancer as DescribeLoadBalancers and DescribeTags report it.
#[derive(Debug, Clone)]
struct Lb {
    name: String,
    /// `Type`: `network`, `application` or `gateway`.
    kind: &'static str,
    scheme: &'static str,
    /// `None`: deleted since it was listed, so DescribeTags answers
    /// `LoadBalancerNotFound` for it (moto answers with tags).
    tags: Option<BTreeMap<String, String>>,
    groups: Vec<Group>,
}

impl Lb {
    /// Someone's balancer, with no listeners.
    fn other(name: &str, kind: &'static str, tags: &[(&str, &str)]) -> Self {
        Self {
            name: name.to_string(),
            kind,
            scheme: "internet-facing",
            tags: Some(
                tags.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            groups: Vec::new(),
        }
    }

    /// The balancer portico made for `key`: TCP `ports` (port, nodePort),
    /// each group with `targets` in health `state`.
    fn ours(
        key: &LoadBalancerKey,
        ports: &[(u16, u16)],
        targets: &[&str],
        state: &'static str,
    ) -> Self {
        Self {
            name: load_balancer_name(key),
            kind: "network",
            scheme: "internet-facing",
            tags: Some(ownership_tags(key)),
            groups: ports
                .iter()
                .map(|&(port, node_port)| Group {
                    name: target_group_name(key, port, "TCP", node_port),
                    port,
                    node_port,
                    targets: targets.iter().map(|t| t.to_string()).collect(),
                    state,
                })
                .collect(),
        }
    }

    fn hash(&self) -> String {
        short_hash(&[&self.name, self.kind], 16)
    }

    /// Portico's own group of a balancer it made (tagged as the balancer
    /// is), with the rules a Cluster-policy Service's TCP ports need.
    fn own_group(&self) -> Option<SecurityGroup> {
        let tags = self.tags.clone()?;
        (self.kind == "network" && tags.contains_key("portico.io/service-uid")).then(|| {
            SecurityGroup {
                id: format!("sg-0{}", &self.hash()[..16]),
                tags,
                rules: self
                    .groups
                    .iter()
                    .map(|g| ("tcp", g.port, g.port, "0.0.0.0/0".to_string()))
                    .collect(),
            }
        })
    }

    /// The groups the balancer carries: its own and the cluster's backend group.
    fn security_groups(&self) -> Vec<String> {
        let own = self.own_group().map(|g| g.id);
        let backend = own.is_some().then(|| BACKEND_GROUP.to_string());
        own.into_iter().chain(backend).collect()
    }

    /// `net/`, `app/` or `gwy/` after `loadbalancer/`, as real AWS writes it.
    fn arn(&self) -> String {
        let short = match self.kind {
            "network" => "net",
            "gateway" => "gwy",
            _ => "app",
        };
        format!("{ARN}:loadbalancer/{short}/{}/{}", self.name, self.hash())
    }

    fn member(&self) -> String {
        let (arn, hash) = (self.arn(), self.hash());
        let dns = format!("{}-{}.elb.{REGION}.amazonaws.com", self.name, &hash[..10]);
        let zone = xml(&[("ZoneName", "us-east-1a"), ("SubnetId", "subnet-0a")]);
        xml(&[
            ("LoadBalancerArn", &arn),
            ("DNSName", &dns),
            ("CanonicalHostedZoneId", "Z26RNL4JYFTOTI"),
            ("CreatedTime", "2025-05-01T12:00:00.000Z"),
            ("LoadBalancerName", &self.name),
            ("Scheme", self.scheme),
            ("VpcId", VPC),
            ("State", &xml(&[("Code", "active")])),
            ("Type", self.kind),
            ("AvailabilityZones", &members([zone])),
            ("SecurityGroups", &members(self.security_groups())),
            ("IpAddressType", "ipv4"),
        ])
    }
}

/// An account's recorded answers: ELBv2 reads over `lbs`, EC2 subnets
/// tagged for discovery, CreateLoadBalancer as AWS answers it (refusing a
/// taken name), every list in pages of `page`. Anything else is an error,
/// so an unexpected call fails the test.
#[derive(Debug, Clone)]
struct Account {
    lbs: Vec<Lb>,
    page: usize,
}

impl Account {
    fn new(lbs: Vec<Lb>) -> Self {
        Self { lbs, page: 400 }
    }

    fn lb(&self, arn: Option<&str>) -> Option<&Lb> {
        self.lbs.iter().find(|lb| Some(lb.arn().as_str()) == arn)
    }

    fn group(&self, arn: &str) -> Option<(&Lb, &Group)> {
        self.lbs
            .iter()
            .flat_map(|lb| lb.groups.iter().map(move |g| (lb, g)))
            .find(|(_, g)| g.arn() == arn)
    }

    fn reply(&self, c: &Call) -> Reply {
        let lb_gone = || {
            error(
                "LoadBalancerNotFound",
                "One or more load balancers not found",
            )
        };
        let tg_gone = || error("TargetGroupNotFound", "One or more target groups not found");
        match c.action.as_str() {
            "DescribeLoadBalancers" => {
                let names = c.list("Names");
                let arns = c.list("LoadBalancerArns");
                let all: Vec<String> = self
                    .lbs
                    .iter()
                    .filter(|lb| names.is_empty() || names.contains(&lb.name))
                    .filter(|lb| arns.is_empty() || arns.contains(&lb.arn()))
                    .map(Lb::member)
                    .collect();
                if all.is_empty() && !(names.is_empty() && arns.is_empty()) {
                    return lb_gone();
                }
                paged(c, "LoadBalancers", &all, self.page)
            }
            "DescribeListeners" => match self.lb(c.param("LoadBalancerArn")) {
                Some(lb) => {
                    let all: Vec<String> = lb.groups.iter().map(|g| g.listener(lb)).collect();
                    paged(c, "Listeners", &all, self.page)
                }
                None => lb_gone(),
            },
            "DescribeTargetGroups" => {
                let all: Vec<String> = match c.param("LoadBalancerArn") {
                    Some(arn) => match self.lb(Some(arn)) {
                        Some(lb) => lb.groups.iter().map(|g| g.member(arn)).collect(),
                        None => return lb_gone(),
                    },
                    None => self
                        .lbs
                        .iter()
                        .flat_map(|lb| lb.groups.iter().map(|g| g.member(&lb.arn())))
                        .collect(),
                };
                paged(c, "TargetGroups", &all, self.page)
            }
            "DescribeTargetHealth" => match self.group(c.param("TargetGroupArn").unwrap_or("")) {
                Some((_, g)) => ok(
                    &c.action,
                    &format!(
                        "<TargetHealthDescriptions>{}</TargetHealthDescriptions>",
                        g.health()
                    ),
                ),
                None => tg_gone(),
            },
            "DescribeTags" => self.tags(c),
            "DescribeSubnets" => subnets(),
            "DescribeAvailabilityZones" => zones(c),
            "DescribeInstances" => instances(c),
            "DescribeSecurityGroups" => self.security_groups(c),
            "CreateSecurityGroup" => fake::ec2_ok(
                &c.action,
                &format!(
                    "<return>true</return><groupId>sg-0{}</groupId>",
                    short_hash(&[c.param("GroupName").unwrap_or_default()], 16)
                ),
            ),
            "AuthorizeSecurityGroupIngress" | "RevokeSecurityGroupIngress" => {
                fake::ec2_ok(&c.action, "<return>true</return>")
            }
            "CreateLoadBalancer" => {
                let name = c.param("Name").unwrap_or_default();
                if self.lbs.iter().any(|lb| lb.name == name) {
                    return error(
                        "DuplicateLoadBalancerName",
                        &format!(
                            "A load balancer with the same name '{name}' exists, but with different settings"
                        ),
                    );
                }
                let lb = Lb::other(name, "network", &[]);
                ok(
                    &c.action,
                    &format!("<LoadBalancers>{}</LoadBalancers>", members([lb.member()])),
                )
            }
            other => error(
                "InvalidAction",
                &format!("the recording has no answer to {other}"),
            ),
        }
    }

    /// DescribeTags as AWS answers it: at most 20 ARNs, and
    /// `LoadBalancerNotFound` for the whole call if one balancer is gone.
    fn tags(&self, c: &Call) -> Reply {
        let arns = c.list("ResourceArns");
        if arns.len() > TAGS_LIMIT {
            return error(
                "ValidationError",
                "1 validation error detected: Value at 'resourceArns' failed to satisfy constraint: Member must have length less than or equal to 20",
            );
        }
        let mut out = Vec::new();
        for arn in &arns {
            let owner = self
                .lb(Some(arn))
                .or_else(|| self.group(arn).map(|(lb, _)| lb));
            let Some(tags) = owner.and_then(|lb| lb.tags.as_ref()) else {
                return error(
                    "LoadBalancerNotFound",
                    &format!("Load balancer '{arn}' not found"),
                );
            };
            let tags = members(tags.iter().map(|(k, v)| xml(&[("Key", k), ("Value", v)])));
            out.push(xml(&[("ResourceArn", arn), ("Tags", &tags)]));
        }
        ok(
            &c.action,
            &format!("<TagDescriptions>{}</TagDescriptions>", members(out)),
        )
    }
}

/// A security group as DescribeSecurityGroups reports it.
#[derive(Debug, Clone)]
struct SecurityGroup {
    id: String,
    tags: BTreeMap<String, String>,
    /// (protocol, from port, to port, peer: a CIDR or a group id)
    rules: Vec<(&'static str, u16, u16, String)>,
}

impl SecurityGroup {
    fn item(&self) -> String {
        let permissions: String = self
            .rules
            .iter()
            .map(|(proto, from, to, peer)| {
                let (from, to) = (from.to_string(), to.to_string());
                let peers = if peer.starts_with("sg-") {
                    (
                        "groups",
                        format!(
                            "<item>{}</item>",
                            xml(&[("groupId", peer), ("userId", "123456789012")])
                        ),
                    )
                } else {
                    (
                        "ipRanges",
                        format!("<item>{}</item>", xml(&[("cidrIp", peer)])),
                    )
                };
                format!(
                    "<item>{}</item>",
                    xml(&[
                        ("ipProtocol", proto),
                        ("fromPort", &from),
                        ("toPort", &to),
                        (peers.0, &peers.1),
                    ])
                )
            })
            .collect();
        let tags: String = self
            .tags
            .iter()
            .map(|(k, v)| format!("<item>{}</item>", xml(&[("key", k), ("value", v)])))
            .collect();
        format!(
            "<item>{}</item>",
            xml(&[
                ("ownerId", "123456789012"),
                ("groupId", &self.id),
                ("groupName", &self.id),
                ("groupDescription", "recorded"),
                ("vpcId", VPC),
                ("ipPermissions", &permissions),
                ("tagSet", &tags),
            ])
        )
    }
}

/// The nodes' cluster group.
const NODE_GROUP: &str = "sg-0a1b2c3d4e5f6node";
/// The cluster's backend group, there while it has a balancer.
const BACKEND_GROUP: &str = "sg-0backend000000000";

/// EC2 filters of a request: name → values.
fn ec2_filters(c: &Call) -> BTreeMap<String, Vec<String>> {
    (1..)
        .map_while(|i| {
            let name = c.param(&format!("Filter.{i}.Name"))?.to_string();
            let values = (1..)
                .map_while(|j| c.param(&format!("Filter.{i}.Value.{j}")).map(String::from))
                .collect();
            Some((name, values))
        })
        .collect()
}

/// Every node runs in the VPC with the cluster group.
fn instances(c: &Call) -> Reply {
    let ids = ec2_filters(c).remove("instance-id").unwrap_or_default();
    let items: String = ids
        .iter()
        .map(|id| {
            let groups = format!(
                "<item>{}</item>",
                xml(&[("groupId", NODE_GROUP), ("groupName", "nodes")])
            );
            format!(
                "<item>{}</item>",
                xml(&[("instanceId", id), ("vpcId", VPC), ("groupSet", &groups)])
            )
        })
        .collect();
    fake::ec2_ok(
        "DescribeInstances",
        &format!(
            "<reservationSet><item><reservationId>r-0recorded</reservationId><instancesSet>{items}</instancesSet></item></reservationSet>"
        ),
    )
}

impl Account {
    /// The groups of the account: each balancer's own group, the cluster's
    /// backend group while it has a balancer, and the nodes' cluster group
    /// holding the shared rules for the backend group.
    fn groups(&self) -> Vec<SecurityGroup> {
        let mut all: Vec<SecurityGroup> = self.lbs.iter().filter_map(Lb::own_group).collect();
        let mut node_rules = Vec::new();
        if !all.is_empty() {
            let b = BACKEND_GROUP.to_string();
            node_rules.extend([
                ("tcp", 30000, 32767, b.clone()),
                ("udp", 30000, 32767, b.clone()),
                ("tcp", 10256, 10256, b.clone()),
            ]);
            all.push(SecurityGroup {
                id: b,
                tags: [
                    ("portico.io/cluster", "recorded"),
                    ("kubernetes.io/cluster/recorded", "owned"),
                    ("portico.io/security-group-role", "backend"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                rules: Vec::new(),
            });
        }
        all.push(SecurityGroup {
            id: NODE_GROUP.to_string(),
            tags: [(
                "kubernetes.io/cluster/recorded".to_string(),
                "owned".to_string(),
            )]
            .into(),
            rules: node_rules,
        });
        all
    }

    /// DescribeSecurityGroups by the filters portico uses.
    fn security_groups(&self, c: &Call) -> Reply {
        let filters = ec2_filters(c);
        let matching: String = self
            .groups()
            .iter()
            .filter(|g| {
                filters.iter().all(|(name, values)| match name.as_str() {
                    "group-id" | "group-name" => values.contains(&g.id),
                    "vpc-id" => values.iter().any(|v| v == VPC),
                    "ip-permission.group-id" => g.rules.iter().any(|r| values.contains(&r.3)),
                    tag if tag.starts_with("tag:") => {
                        g.tags.get(&tag[4..]).is_some_and(|v| values.contains(v))
                    }
                    _ => false,
                })
            })
            .map(SecurityGroup::item)
            .collect();
        fake::ec2_ok(
            "DescribeSecurityGroups",
            &format!("<securityGroupInfo>{matching}</securityGroupInfo>"),
        )
    }
}

/// Two public subnets of the VPC, tagged for this cluster.
fn subnets() -> Reply {
    let item = |id: &str, zone: &str, cidr: &str| {
        let tags = [
            ("kubernetes.io/role/elb", "1"),
            ("kubernetes.io/cluster/recorded", "shared"),
        ]
        .iter()
        .map(|(k, v)| format!("<item>{}</item>", xml(&[("key", k), ("value", v)])))
        .collect::<String>();
        format!(
            "<item>{}</item>",
            xml(&[
                ("subnetId", id),
                ("state", "available"),
                ("vpcId", VPC),
                ("cidrBlock", cidr),
                ("availabilityZone", zone),
                ("tagSet", &tags),
            ])
        )
    };
    fake::ec2_ok(
        "DescribeSubnets",
        &format!(
            "<subnetSet>{}{}{}</subnetSet>",
            item("subnet-0a", "us-east-1a", "10.0.0.0/24"),
            item("subnet-0b", "us-east-1b", "10.0.1.0/24"),
            // Tagged like the others, but in a Local Zone: never an NLB's.
            item("subnet-0l", "us-east-1-bos-1a", "10.0.2.0/24")
        ),
    )
}

/// The zones of the subnets: two regular ones and a Local Zone (moto
/// reports every zone as regular).
fn zones(c: &Call) -> Reply {
    let names = ec2_filters(c).remove("zone-name").unwrap_or_default();
    let items: String = names
        .iter()
        .map(|name| {
            let kind = if name.starts_with("us-east-1-") {
                "local-zone"
            } else {
                "availability-zone"
            };
            format!(
                "<item>{}</item>",
                xml(&[
                    ("zoneName", name),
                    ("zoneType", kind),
                    ("zoneState", "available"),
                    ("regionName", REGION),
                ])
            )
        })
        .collect();
    fake::ec2_ok(
        "DescribeAvailabilityZones",
        &format!("<availabilityZoneInfo>{items}</availabilityZoneInfo>"),
    )
}

/// The fake endpoint answering from `account` where `script` does not, and
/// a provider pointed at it.
async fn serve(
    account: Account,
    script: impl Fn(&Call) -> Option<Reply> + Send + Sync + 'static,
) -> (fake::Endpoint, AwsProvider) {
    let aws = fake::Endpoint::start(move |c| script(c).unwrap_or_else(|| account.reply(c))).await;
    let mut config = AwsProviderConfig::new(CLUSTER);
    config.region = Some(REGION.into());
    config.endpoint_url = Some(aws.url.clone());
    config.vpc_id = Some(VPC.into());
    let provider = AwsProvider::from_sdk_config(config, &sdk_config(&aws.url).await);
    (aws, provider)
}

fn no_script(_: &Call) -> Option<Reply> {
    None
}

/// A spec for `key`: TCP `ports` (port, nodePort) on nodes running `instances`.
fn spec(key: &LoadBalancerKey, ports: &[(u16, u16)], instances: &[&str]) -> LoadBalancerSpec {
    let mut s = LoadBalancerSpec::new(key.clone());
    s.listeners = ports
        .iter()
        .map(|&(port, node_port)| Listener {
            port,
            protocol: Protocol::Tcp,
            node_port,
            name: None,
        })
        .collect();
    s.targets = instances
        .iter()
        .enumerate()
        .map(|(i, id)| Target {
            node_name: format!("node-{i}"),
            addresses: Vec::new(),
            provider_id: Some(format!("aws:///us-east-1a/{id}")),
            labels: BTreeMap::new(),
        })
        .collect();
    s
}

async fn timed<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("timed out")
}

const NODES: [&str; 2] = ["i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60002"];

#[tokio::test]
async fn list_owned_pages_batches_tags_and_keeps_owned_network_balancers() {
    struct Case {
        desc: &'static str,
        lbs: Vec<Lb>,
        page: usize,
        owned: Vec<LoadBalancerKey>,
        /// DescribeTags calls made.
        tag_calls: usize,
    }
    let many: Vec<LoadBalancerKey> = (0..25).map(|i| key(&format!("web-{i:02}"))).collect();
    let other_cluster = |i: usize| {
        let mut k = key(&format!("elsewhere-{i:02}"));
        k.cluster = ClusterName::new("another-cluster");
        Lb::ours(&k, &[], &[], "healthy")
    };
    let vanished = Lb {
        tags: None,
        ..Lb::ours(&key("deleted-meanwhile"), &[], &[], "healthy")
    };
    let mut alb_with_our_tags = Lb::ours(&key("alb"), &[], &[], "healthy");
    alb_with_our_tags.kind = "application";
    let mut gwlb_with_our_tags = Lb::ours(&key("gwlb"), &[], &[], "healthy");
    gwlb_with_our_tags.kind = "gateway";
    let cases = vec![
        Case {
            desc: "owned balancers on all of five pages; 45 k8s- names tagged in batches of 20",
            lbs: (0..25)
                .flat_map(|i| {
                    let mut lbs = vec![Lb::ours(&many[i], &[], &[], "healthy")];
                    if i < 20 {
                        lbs.push(other_cluster(i));
                    }
                    if i < 5 {
                        lbs.push(Lb::other(&format!("team-{i}-alb"), "application", &[]));
                    }
                    lbs
                })
                .collect(),
            page: 10,
            owned: many.clone(),
            tag_calls: 3,
        },
        Case {
            desc: "only network balancers (net/ ARN, Type network) carrying this cluster's tags",
            lbs: vec![
                Lb::ours(&key("nlb"), &[], &[], "healthy"),
                alb_with_our_tags,
                gwlb_with_our_tags,
                other_cluster(0),
                Lb::other("k8s-untagged0000000000000000000", "network", &[]),
            ],
            page: 2,
            owned: vec![key("nlb")],
            tag_calls: 1,
        },
        Case {
            desc: "a balancer named by its Service (load-balancer-name) is listed by its tags",
            lbs: vec![
                Lb {
                    name: "web-prod".into(),
                    ..Lb::ours(&key("named"), &[], &[], "healthy")
                },
                Lb::other("someone-elses", "network", &[("team", "payments")]),
                Lb::ours(&key("generated"), &[], &[], "healthy"),
            ],
            page: 400,
            owned: vec![key("named"), key("generated")],
            tag_calls: 1,
        },
        Case {
            desc: "a balancer deleted between DescribeLoadBalancers and DescribeTags is left out",
            lbs: vec![
                Lb::ours(&key("a"), &[], &[], "healthy"),
                vanished,
                Lb::ours(&key("b"), &[], &[], "healthy"),
            ],
            page: 400,
            owned: vec![key("a"), key("b")],
            // The batch fails; then each of its 3 ARNs alone.
            tag_calls: 4,
        },
    ];
    for case in cases {
        let account = Account {
            lbs: case.lbs.clone(),
            page: case.page,
        };
        let (aws, provider) = serve(account, no_script).await;
        let mut owned = timed(provider.list_owned())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.desc));
        owned.sort();
        let mut want = case.owned.clone();
        want.sort();
        assert_eq!(owned, want, "{}", case.desc);

        let pages = aws.calls_of("DescribeLoadBalancers");
        assert_eq!(
            pages.len(),
            case.lbs.len().div_ceil(case.page),
            "{}: one call per page",
            case.desc
        );
        let tag_calls = aws.calls_of("DescribeTags");
        assert_eq!(
            tag_calls.len(),
            case.tag_calls,
            "{}: DescribeTags calls",
            case.desc
        );
        let tagged: BTreeSet<String> = tag_calls
            .iter()
            .inspect(|c| {
                let n = c.list("ResourceArns").len();
                assert!((1..=TAGS_LIMIT).contains(&n), "{}: {n} ARNs", case.desc);
            })
            .flat_map(|c| c.list("ResourceArns"))
            .collect();
        for lb in case
            .lbs
            .iter()
            .filter(|lb| lb.kind == "network" && lb.name.starts_with("k8s-"))
        {
            assert!(
                tagged.contains(&lb.arn()),
                "{}: {} not tagged",
                case.desc,
                lb.name
            );
        }
        assert!(
            aws.mutations().is_empty(),
            "{}: {:?}",
            case.desc,
            aws.mutations()
        );
    }
}

#[tokio::test]
async fn steady_state_is_found_across_pages_whatever_the_target_health() {
    let k = key("steady");
    let ports = [(80, 30080), (443, 30443), (8080, 30808)];
    for state in ["initial", "unhealthy", "healthy", "unused", "unavailable"] {
        let account = Account {
            // One listener and one target group per page.
            page: 1,
            ..Account::new(vec![Lb::ours(&k, &ports, &NODES, state)])
        };
        let (aws, provider) = serve(account, no_script).await;
        let s = spec(&k, &ports, &NODES);
        for round in 0..2 {
            let status = timed(provider.ensure_spec(&s))
                .await
                .unwrap_or_else(|e| panic!("{state}, round {round}: {e}"));
            assert_eq!(status.ingress[0].ports.len(), ports.len(), "{state}");
        }
        assert_eq!(
            aws.mutations(),
            Vec::<String>::new(),
            "targets {state}: no change"
        );
        // Two ensures, each reading three pages of target groups and listeners.
        assert_eq!(aws.calls_of("DescribeTargetGroups").len(), 6, "{state}");
        assert_eq!(aws.calls_of("DescribeListeners").len(), 6, "{state}");
        assert_eq!(aws.calls_of("DescribeTargetHealth").len(), 6, "{state}");

        let mut registry = prometheus_client::registry::Registry::default();
        provider.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                r#"portico_aws_calls_total{operation="DescribeTargetHealth",kind="read"} 6"#
            ),
            "calls counted by operation for Prometheus:\n{text}"
        );
        assert!(!text.contains(r#"kind="mutating""#), "{text}");

        let got = timed(provider.get(&k)).await.expect("get").expect("found");
        let ports_seen: Vec<u16> = got.ingress[0].ports.iter().map(|p| p.port).collect();
        assert_eq!(
            ports_seen,
            vec![80, 443, 8080],
            "{state}: get reads every page"
        );
    }
}

#[tokio::test]
async fn a_name_taken_by_someone_else_is_a_conflict_never_an_adoption() {
    struct Case {
        desc: &'static str,
        lb: Lb,
        script: fn(&Call) -> Option<Reply>,
        /// The error message names the cause.
        says: &'static [&'static str],
        mutations: &'static [&'static str],
    }
    let k = key("taken");
    let name = load_balancer_name(&k);
    let theirs = [("team", "payments")];
    let mut alb = Lb::ours(&k, &[], &[], "healthy");
    alb.kind = "application";
    let internal = Lb {
        scheme: "internal",
        ..Lb::other(&name, "network", &theirs)
    };
    let cases = [
        Case {
            desc: "someone's NLB got the name between our lookup and CreateLoadBalancer",
            lb: Lb::other(&name, "network", &theirs),
            script: |c| {
                (c.action == "DescribeLoadBalancers" && c.nth == 0).then(|| {
                    error(
                        "LoadBalancerNotFound",
                        "One or more load balancers not found",
                    )
                })
            },
            says: &["tags do not name this Service"],
            mutations: &[
                "CreateSecurityGroup",
                "CreateSecurityGroup",
                "CreateLoadBalancer",
            ],
        },
        Case {
            desc: "an application load balancer has the name (even with our tags)",
            lb: alb,
            script: no_script,
            says: &["DuplicateLoadBalancerName", "not a network load balancer"],
            mutations: &[
                "CreateSecurityGroup",
                "CreateSecurityGroup",
                "CreateLoadBalancer",
            ],
        },
        Case {
            desc: "someone's NLB of another scheme has the name: not deleted to be replaced",
            lb: internal,
            script: no_script,
            says: &["tags do not name this Service"],
            mutations: &[],
        },
    ];
    for case in cases {
        let (aws, provider) = serve(Account::new(vec![case.lb.clone()]), case.script).await;
        let err = timed(provider.ensure_spec(&spec(&k, &[(80, 30080)], &NODES)))
            .await
            .expect_err(case.desc);
        assert!(
            matches!(err, ProviderError::Conflict { .. }),
            "{}: {err:?}",
            case.desc
        );
        assert_eq!(
            err.retry_floor(),
            std::time::Duration::ZERO,
            "{}: retried with plain backoff",
            case.desc
        );
        for words in case.says {
            assert!(err.to_string().contains(words), "{}: {err}", case.desc);
        }
        assert!(err.to_string().contains(&name), "{}: {err}", case.desc);
        assert_eq!(aws.mutations(), case.mutations, "{}", case.desc);
    }
}

#[tokio::test]
async fn aws_rejecting_the_spec_is_an_invalid_spec_error_retried_slowly() {
    struct Case {
        desc: &'static str,
        lbs: Vec<Lb>,
        spec: LoadBalancerSpec,
        /// The call AWS rejects, its code and message.
        fails: (&'static str, &'static str, &'static str),
        /// A parameter the rejected call carried, and its value.
        sent: (&'static str, String),
        mutations: &'static [&'static str],
    }
    let k = key("rejected");
    let cases = [
        Case {
            desc: "a target group for a new port that AWS does not validate (moto validates no name)",
            lbs: vec![Lb::ours(&k, &[(80, 30080)], &NODES, "healthy")],
            spec: spec(&k, &[(80, 30080), (443, 30443)], &NODES),
            fails: (
                "CreateTargetGroup",
                "ValidationError",
                "Target group name can only contain characters that are alphanumeric characters or hyphens(-)",
            ),
            sent: ("Name", target_group_name(&k, 443, "TCP", 30443)),
            // The own group opens the new port first; the nodes' shared rules cover it.
            mutations: &["AuthorizeSecurityGroupIngress", "CreateTargetGroup"],
        },
        Case {
            desc: "the target group of a new balancer",
            lbs: vec![],
            spec: spec(&k, &[(80, 30080)], &NODES),
            fails: (
                "CreateTargetGroup",
                "ValidationError",
                "Health check interval must be greater than the timeout.",
            ),
            sent: ("Name", target_group_name(&k, 80, "TCP", 30080)),
            mutations: &[
                "CreateSecurityGroup",
                "CreateSecurityGroup",
                "CreateLoadBalancer",
                "AuthorizeSecurityGroupIngress",
                "AuthorizeSecurityGroupIngress",
                "CreateTargetGroup",
            ],
        },
    ];
    for case in cases {
        let (action, code, message) = case.fails;
        let (aws, provider) = serve(Account::new(case.lbs.clone()), move |c| {
            (c.action == action).then(|| error(code, message))
        })
        .await;
        let err = timed(provider.ensure_spec(&case.spec))
            .await
            .expect_err(case.desc);
        assert!(
            matches!(err, ProviderError::InvalidSpec { .. }),
            "{}: {err:?}",
            case.desc
        );
        assert_eq!(
            err.retry_floor(),
            std::time::Duration::from_secs(30),
            "{}: the controller retries a cloud's refusal, slowly",
            case.desc
        );
        for words in [action, code, message] {
            assert!(err.to_string().contains(words), "{}: {err}", case.desc);
        }
        assert_eq!(aws.mutations(), case.mutations, "{}", case.desc);
        let rejected = aws.calls_of(action);
        assert_eq!(rejected.len(), 1, "{}: not retried", case.desc);
        let (param, value) = &case.sent;
        assert_eq!(
            rejected[0].param(param),
            Some(value.as_str()),
            "{}",
            case.desc
        );
    }
}

#[tokio::test]
async fn a_new_nlb_never_gets_a_local_zone_subnet() {
    // moto reports every zone as a regular one; AWS tells Local Zones apart.
    let k = key("zones");
    let (aws, provider) = serve(Account::new(vec![]), |c| {
        (c.action == "CreateTargetGroup").then(|| error("ValidationError", "stop here"))
    })
    .await;
    let _ = timed(provider.ensure_spec(&spec(&k, &[(80, 30080)], &NODES))).await;
    let created = aws.calls_of("CreateLoadBalancer");
    assert_eq!(created.len(), 1);
    assert_eq!(
        (1..)
            .map_while(|i| created[0].param(&format!("SubnetMappings.member.{i}.SubnetId")))
            .collect::<Vec<_>>(),
        ["subnet-0a", "subnet-0b"],
        "the Local Zone's subnet is left out"
    );
    assert_eq!(aws.calls_of("DescribeAvailabilityZones").len(), 1);
}

/// Instance ids of a RegisterTargets call, in order.
fn registered_ids(call: &Call) -> Vec<String> {
    (1..)
        .map_while(|i| {
            call.param(&format!("Targets.member.{i}.Id"))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn an_instance_aws_refuses_does_not_hold_back_the_others() {
    // AWS refuses stopped or terminated instances (moto registers anything);
    // the Node may outlive its instance for a while.
    let k = key("refused");
    let stopped = "i-0deadbeef00000000";
    let (aws, provider) = serve(
        Account::new(vec![Lb::ours(&k, &[(80, 30080)], &NODES[..1], "healthy")]),
        move |c| {
            if c.action != "RegisterTargets" {
                return None;
            }
            Some(if registered_ids(c).iter().any(|id| id == stopped) {
                error(
                    "InvalidTarget",
                    "The following targets are not in a running state and cannot be registered: 'i-0deadbeef00000000'",
                )
            } else {
                ok("RegisterTargets", "")
            })
        },
    )
    .await;
    let status =
        timed(provider.ensure_spec(&spec(&k, &[(80, 30080)], &[NODES[0], NODES[1], stopped])))
            .await
            .expect("the other nodes are served");
    assert_eq!(status.ingress.len(), 1);
    let calls: Vec<Vec<String>> = aws
        .calls_of("RegisterTargets")
        .iter()
        .map(registered_ids)
        .collect();
    let (new, stopped) = (NODES[1].to_string(), stopped.to_string());
    assert_eq!(
        calls,
        vec![
            vec![new.clone(), stopped.clone()],
            vec![new],
            vec![stopped.clone()]
        ],
        "one batch, then one by one after the refusal"
    );
    // The controller turns this into a Warning Event naming the instance.
    let notices = provider.take_notices(&k);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].reason, "TargetRefused");
    assert!(
        notices[0].message.contains(&stopped) && !notices[0].message.contains(NODES[1]),
        "{}",
        notices[0].message
    );
    assert!(provider.take_notices(&k).is_empty(), "taken once");
}

#[tokio::test]
async fn a_draining_target_still_wanted_is_registered_again() {
    // A node that left and came back within the deregistration delay: AWS
    // still lists it, as draining. moto never reports draining.
    let k = key("draining");
    let (aws, provider) = serve(
        Account::new(vec![Lb::ours(&k, &[(80, 30080)], &NODES, "draining")]),
        |c| (c.action == "RegisterTargets").then(|| ok("RegisterTargets", "")),
    )
    .await;
    timed(provider.ensure_spec(&spec(&k, &[(80, 30080)], &NODES)))
        .await
        .expect("ensure");
    let calls: Vec<Vec<String>> = aws
        .calls_of("RegisterTargets")
        .iter()
        .map(registered_ids)
        .collect();
    assert_eq!(
        calls,
        vec![NODES.iter().map(|n| n.to_string()).collect::<Vec<_>>()],
        "draining is not registered"
    );
    assert!(aws.calls_of("DeregisterTargets").is_empty());
}

#[tokio::test]
async fn at_the_target_quota_room_is_made_before_registering() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let k = key("quota");
    let replaced = ["i-0a1b2c3d4e5f60003", "i-0a1b2c3d4e5f60004"];
    let deregistered = Arc::new(AtomicBool::new(false));
    let seen = deregistered.clone();
    let (aws, provider) = serve(
        Account::new(vec![Lb::ours(&k, &[(80, 30080)], &NODES, "healthy")]),
        move |c| match c.action.as_str() {
            "DeregisterTargets" => {
                seen.store(true, Ordering::SeqCst);
                Some(ok("DeregisterTargets", ""))
            }
            // The group is full until the old targets leave.
            "RegisterTargets" if !seen.load(Ordering::SeqCst) => Some(error(
                "TooManyTargets",
                "You've reached the limit on the number of targets per target group",
            )),
            "RegisterTargets" => Some(ok("RegisterTargets", "")),
            _ => None,
        },
    )
    .await;
    timed(provider.ensure_spec(&spec(&k, &[(80, 30080)], &replaced)))
        .await
        .expect("room is made, then the new nodes register");
    assert!(deregistered.load(Ordering::SeqCst));
    let order: Vec<String> = aws
        .mutations()
        .into_iter()
        .filter(|a| a.ends_with("Targets"))
        .collect();
    assert_eq!(
        order,
        ["RegisterTargets", "DeregisterTargets", "RegisterTargets"],
        "register first; at the quota, deregister and register again"
    );
}

#[tokio::test]
async fn adopting_by_a_net_arn_takes_only_a_network_balancer_no_one_else_owns() {
    let api = key("api");
    let theirs = Lb {
        name: "legacy-api".into(),
        ..Lb::ours(&api, &[(80, 30080)], &NODES, "healthy")
    };
    let alb = Lb::other("legacy-alb", "application", &[]);
    let cases = [
        (
            "another portico Service's NLB by its net/ ARN",
            theirs.arn(),
            "conflict",
            "Service shop/api",
        ),
        (
            "an application load balancer's ARN",
            alb.arn(),
            "not found",
            "no network load balancer",
        ),
        (
            "an ARN no balancer has",
            format!("{ARN}:loadbalancer/net/legacy-gone/0123456789abcdef"),
            "not found",
            "legacy-gone",
        ),
    ];
    for (desc, arn, kind, says) in cases {
        let (aws, provider) =
            serve(Account::new(vec![theirs.clone(), alb.clone()]), no_script).await;
        let mut s = spec(&key("adopter"), &[(80, 30080)], &NODES);
        s.annotations = Annotations::new(BTreeMap::from([(
            ADOPT_ANNOTATION.to_string(),
            arn.clone(),
        )]));
        let err = timed(provider.ensure_spec(&s)).await.expect_err(desc);
        assert_eq!(err.metric_label().replace('_', " "), kind, "{desc}: {err}");
        assert!(err.to_string().contains(says), "{desc}: {err}");
        assert!(
            aws.calls_of("DescribeLoadBalancers")
                .iter()
                .any(|c| c.list("LoadBalancerArns") == vec![arn.clone()]),
            "{desc}: looked up by ARN"
        );
        assert_eq!(aws.mutations(), Vec::<String>::new(), "{desc}");
    }
}
