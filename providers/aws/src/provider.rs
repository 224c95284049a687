//! The provider: configuration, the ensure flow (observe, plan, execute)
//! and the contract's entry points. Reads live in `read.rs` and
//! `network.rs`, security groups in `groups.rs`, the plan's calls in
//! `execute.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2 as ec2;
use aws_sdk_elasticloadbalancingv2 as elb;
use portico_provider::{
    Declined, LoadBalancerKey, LoadBalancerProvider, LoadBalancerSpec, LoadBalancerStatus, Notice,
    Prepared, ProviderError, ServiceAnnotations,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::adopt::{ADOPT_ANNOTATION, AdoptRef, Claim, claim};
use crate::counter::CallCounter;
use crate::desired::{Desired, TgProtocol};
use crate::groups::{BackendGroup, rule_description, shared_rule_description};
use crate::names::{self, owned_by};
use crate::network::Ec2Cache;
use crate::options::{AwsOptions, SubnetSelector};
use crate::plan::{
    Observed, ObservedLb, ObservedSecurity, OwnGroup, RuleScope, Step, plan, replacement,
};
use crate::security::{InstanceInfo, NodePortRange, Rule};

/// How the provider reaches AWS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsProviderConfig {
    /// Written into ownership tags; several clusters may share an account.
    pub cluster: portico_provider::ClusterName,
    /// Defaults to the SDK's region chain (`AWS_REGION`, profile, IMDS).
    #[serde(default)]
    pub region: Option<String>,
    /// An emulator (moto, LocalStack); `AWS_ENDPOINT_URL` works too.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Restrict subnet discovery to this VPC.
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// The cluster's NodePort range: the nodes accept it from the NLBs.
    #[serde(default)]
    pub node_port_range: NodePortRange,
}

impl AwsProviderConfig {
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: portico_provider::ClusterName::new(cluster),
            region: None,
            endpoint_url: None,
            vpc_id: None,
            node_port_range: NodePortRange::default(),
        }
    }
}

/// One Network Load Balancer per Service, instance targets on the NodePort.
#[derive(Debug, Clone)]
pub struct AwsProvider {
    pub(crate) config: AwsProviderConfig,
    pub(crate) elb: elb::Client,
    pub(crate) ec2: ec2::Client,
    calls: CallCounter,
    pub(crate) cache: Arc<Ec2Cache>,
    /// Ensures hold it shared; deleting the cluster's backend group holds it
    /// alone, so no ensure attaches the group while it goes.
    pub(crate) backend_lock: Arc<RwLock<()>>,
    /// What each key's last ensure noticed, until the controller takes it.
    notices: Arc<Mutex<HashMap<LoadBalancerKey, Vec<Notice>>>>,
}

pub(crate) type Result<T, E = ProviderError> = std::result::Result<T, E>;

/// The load balancer an ensure works on.
pub(crate) enum Found {
    /// Made by this ensure, with the desired tags.
    Created(ObservedLb),
    /// Already there: whose it is must be read from its tags.
    Existing(ObservedLb),
}

impl AwsProvider {
    /// Credentials and region from the SDK's default chain (environment,
    /// profile, web identity/IRSA, instance metadata), with the config's
    /// overrides; the SDK retries throttling and 5xx itself (standard mode).
    pub async fn new(config: AwsProviderConfig) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk = loader.load().await;
        Self::from_sdk_config(config, &sdk)
    }

    /// Use an SDK configuration built elsewhere (tests pass static
    /// credentials and a short retry backoff).
    pub fn from_sdk_config(config: AwsProviderConfig, sdk: &SdkConfig) -> Self {
        let calls = CallCounter::new();
        let mut elb_conf = elb::config::Builder::from(sdk).interceptor(calls.clone());
        let mut ec2_conf = ec2::config::Builder::from(sdk).interceptor(calls.clone());
        if let Some(url) = &config.endpoint_url {
            elb_conf = elb_conf.endpoint_url(url.clone());
            ec2_conf = ec2_conf.endpoint_url(url.clone());
        }
        Self {
            config,
            elb: elb::Client::from_conf(elb_conf.build()),
            ec2: ec2::Client::from_conf(ec2_conf.build()),
            calls,
            cache: Default::default(),
            backend_lock: Default::default(),
            notices: Default::default(),
        }
    }

    pub fn config(&self) -> &AwsProviderConfig {
        &self.config
    }

    /// The AWS calls this provider made (and, with `testing`, the fault injector).
    pub fn calls(&self) -> &CallCounter {
        &self.calls
    }

    /// Register the provider's metrics (AWS calls by operation) in `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.calls.register(registry);
    }

    /// Keep `notice` for the controller (see `take_notices`).
    pub(crate) fn notice(&self, key: &LoadBalancerKey, notice: Notice) {
        let mut notices = self.notices.lock().unwrap_or_else(|e| e.into_inner());
        notices.entry(key.clone()).or_default().push(notice);
    }

    /// How a rule in `scope` is described for `key`.
    pub(crate) fn describe_rule(&self, key: &LoadBalancerKey, scope: RuleScope) -> String {
        match scope {
            RuleScope::Service => rule_description(key),
            RuleScope::Cluster => shared_rule_description(&self.config.cluster),
        }
    }

    async fn ensure_inner(&self, prepared: &Prepared<AwsPrepared>) -> Result<LoadBalancerStatus> {
        let spec = &prepared.spec;
        let AwsPrepared {
            options: opts,
            desired,
        } = &prepared.options;
        let _shared = self.backend_lock.read().await;
        // Only what this ensure notices is reported.
        self.take_notices(&spec.key);
        let (mut existing, named_by_opt_in) = self.find_wanted(desired).await?;
        // The opt-in, when it names the NLB found.
        let adopt = desired.adopt.as_ref().filter(|_| named_by_opt_in);
        match (&existing, &desired.adopt) {
            (None, Some(wanted)) => {
                return Err(ProviderError::NotFound {
                    what: format!(
                        "no network load balancer {wanted} to adopt ({ADOPT_ANNOTATION}; classic and application load balancers cannot be adopted): remove the annotation to have portico create one"
                    ),
                });
            }
            (None, None) => {
                // The Service's NLB under another name (`load-balancer-name`
                // set, changed or removed, or an adoption undone): AWS cannot
                // rename one, so it is replaced, deleted first as for a scheme
                // change (the new NLB takes over its target groups' names).
                for old in self.lbs_of(&spec.key, &desired.name).await? {
                    info!(old = %old.name, new = %desired.name, "the load balancer's name changed: replacing it");
                    self.delete_lb(&spec.key, &old).await?;
                }
            }
            (Some(_), _) => {}
        }
        if let Some(lb) = &existing
            && let Some(reason) = replacement(lb, desired)
        {
            // Only ours may be deleted: check the tags before replacing.
            let tags = self.tags(std::slice::from_ref(&lb.arn)).await?;
            match claim(&spec.key, adopt, &lb.name, tags.get(&lb.arn)) {
                Claim::Ours => {}
                Claim::Adopt => {
                    return Err(ProviderError::Conflict {
                        message: format!(
                            "load balancer {} cannot be adopted: {reason} (annotate the scheme it has)",
                            lb.name
                        ),
                    });
                }
                Claim::Refuse(message) => return Err(ProviderError::Conflict { message }),
            }
            info!(%reason, "replacing the load balancer");
            self.delete_lb(&spec.key, lb).await?;
            existing = None;
        }
        // The nodes' instances: for the VPC of a new NLB, and for the groups
        // to open (both read once and then cached).
        let discover_vpc = existing.is_none()
            && self.config.vpc_id.is_none()
            && opts.subnets == SubnetSelector::Discover;
        let instances = if discover_vpc || desired.security.shared_backend() {
            let ids = desired
                .groups
                .first()
                .map(|g| g.targets.clone())
                .unwrap_or_default();
            self.instances(&ids).await?
        } else {
            Vec::new()
        };
        let (lb, mut observed, start) = match existing {
            Some(lb) => self.observe_claimed(&spec.key, lb, adopt, desired).await?,
            None => {
                let (found, start) = self.create(&spec.key, desired, opts, &instances).await?;
                match found {
                    Found::Created(lb) => {
                        let observed =
                            Observed::fresh(lb.clone(), desired.tags.clone(), Default::default());
                        (lb, observed, Some(start))
                    }
                    Found::Existing(lb) => {
                        let (lb, observed, _) =
                            self.observe_claimed(&spec.key, lb, None, desired).await?;
                        (lb, observed, Some(start))
                    }
                }
            }
        };
        observed.security = self
            .observe_security(&spec.key, &lb, desired, &instances, start)
            .await?;
        let steps = plan(&observed, desired);
        if steps.is_empty() {
            debug!("load balancer up to date");
        } else {
            info!(
                steps = steps.len(),
                ops = ?steps.iter().map(Step::operation).collect::<Vec<_>>(),
                "converging load balancer"
            );
        }
        self.execute(&spec.key, &lb, desired, steps).await?;
        Ok(desired.status(&lb.dns_name))
    }

    /// What AWS has for `lb`, once its tags say it is `key`'s, or, with the
    /// Service's opt-in (`adopt`), that it is no one else's: then it is
    /// adopted, tagged by the plan as any drift of tags is, and converged in
    /// place. The Service's NLBs elsewhere (made before the opt-in) go
    /// first: their target groups have the names the adopted NLB's get.
    async fn observe_claimed(
        &self,
        key: &LoadBalancerKey,
        lb: ObservedLb,
        adopt: Option<&AdoptRef>,
        desired: &Desired,
    ) -> Result<(ObservedLb, Observed, Option<SecurityStart>)> {
        let observed = self.observe(key, lb.clone(), desired).await?;
        match claim(key, adopt, &lb.name, Some(&observed.tags)) {
            Claim::Ours => Ok((lb, observed, None)),
            Claim::Refuse(message) => Err(ProviderError::Conflict { message }),
            Claim::Adopt => {
                info!(name = %lb.name, dns_name = %lb.dns_name, "adopting the load balancer: it keeps its name and address");
                let others = self.lbs_of(key, &lb.name).await?;
                if others.is_empty() {
                    return Ok((lb, observed, None));
                }
                for old in &others {
                    info!(old = %old.name, "deleting this Service's previous load balancer");
                    self.delete_lb(key, old).await?;
                }
                let observed = self.observe(key, lb.clone(), desired).await?;
                Ok((lb, observed, None))
            }
        }
    }

    /// A new NLB: its subnets (and so its VPC), its own security group
    /// (found again after an interrupted ensure, else created), the
    /// cluster's backend group and the user's groups, then the NLB itself.
    async fn create(
        &self,
        key: &LoadBalancerKey,
        desired: &Desired,
        opts: &AwsOptions,
        instances: &[InstanceInfo],
    ) -> Result<(Found, SecurityStart)> {
        let vpc = match &opts.subnets {
            SubnetSelector::Discover => Some(self.vpc(instances)?),
            SubnetSelector::Listed(_) => self.config.vpc_id.clone(),
        };
        let (subnet_ids, vpc) = self
            .resolve_subnets(opts, vpc.as_deref(), &self.cluster_keys(instances))
            .await?;
        let own = if desired.security.own_group {
            Some(match self.own_group(key).await? {
                Some(own) => (own, false),
                None => (self.create_own_group(key, &vpc, &desired.tags).await?, true),
            })
        } else {
            None
        };
        let user_groups = self
            .user_groups(&desired.security.user_groups, Some(&vpc))
            .await?;
        let backend = if desired.security.shared_backend() {
            Some(self.backend_group(&vpc).await?)
        } else {
            None
        };
        let mut groups = user_groups.clone();
        groups.extend(own.iter().map(|(g, _)| g.id.clone()));
        groups.extend(backend.iter().map(|b| b.id.clone()));
        let found = self.create_lb(desired, opts, &subnet_ids, &groups).await?;
        let start = SecurityStart {
            brand_new: own.as_ref().is_some_and(|(_, new)| *new),
            own: own.map(|(g, _)| g),
            backend,
            user_groups,
        };
        Ok((found, start))
    }

    /// The security groups around `lb`: its own group (made now if the
    /// Service newly wants one), the user's groups as ids, the rules that
    /// name the own group, and the cluster groups of the targets.
    async fn observe_security(
        &self,
        key: &LoadBalancerKey,
        lb: &ObservedLb,
        desired: &Desired,
        instances: &[InstanceInfo],
        start: Option<SecurityStart>,
    ) -> Result<ObservedSecurity> {
        let want = &desired.security;
        if lb.security_groups.is_empty() {
            if want.own_group || !want.user_groups.is_empty() {
                warn!(
                    name = %lb.name,
                    "this load balancer was created without security groups and AWS cannot add any: \
                     source ranges and node rules are not managed for it (delete the Service's \
                     load balancer to have it made again with them)"
                );
            }
            return Ok(ObservedSecurity::default());
        }
        let vpc = lb.vpc_id.as_deref();
        let (mut own, brand_new, backend, user_groups) = match start {
            Some(s) => (s.own, s.brand_new, s.backend, s.user_groups),
            None => {
                let backend = async {
                    match vpc {
                        Some(vpc) if want.shared_backend() => {
                            self.backend_group(vpc).await.map(Some)
                        }
                        _ => Ok(None),
                    }
                };
                let (own, users, backend) = tokio::try_join!(
                    self.own_group(key),
                    self.user_groups(&want.user_groups, vpc),
                    backend
                )?;
                (own, false, backend, users)
            }
        };
        let mut brand_new = brand_new;
        if own.is_none()
            && want.own_group
            && let Some(vpc) = vpc
        {
            own = Some(self.create_own_group(key, vpc, &desired.tags).await?);
            brand_new = true;
        }
        // One read for the rules naming either group (a group made just
        // now has none yet).
        let mut peers: Vec<&str> = Vec::new();
        peers.extend(own.as_ref().filter(|_| !brand_new).map(|g| g.id.as_str()));
        peers.extend(backend.as_ref().filter(|b| !b.new).map(|b| b.id.as_str()));
        let node_groups = async {
            if want.shared_backend() {
                self.node_groups(instances).await
            } else {
                Ok(Default::default())
            }
        };
        let (mut rules, node_groups) = tokio::try_join!(self.rules_naming(&peers), node_groups)?;
        let mut foreign_rules: BTreeMap<String, BTreeSet<Rule>> = BTreeMap::new();
        let mut ours_of = |peer: Option<&str>| {
            let by_holder = peer.and_then(|p| rules.remove(p)).unwrap_or_default();
            by_holder
                .into_iter()
                .map(|(holder, naming)| {
                    foreign_rules
                        .entry(holder.clone())
                        .or_default()
                        .extend(naming.foreign.into_keys());
                    (holder, naming.ours)
                })
                .filter(|(_, ours)| !ours.is_empty())
                .collect::<BTreeMap<_, _>>()
        };
        let node_rules = ours_of(own.as_ref().map(|g| g.id.as_str()));
        let shared_rules = ours_of(backend.as_ref().map(|b| b.id.as_str()));
        foreign_rules.retain(|_, r| !r.is_empty());
        Ok(ObservedSecurity {
            own,
            user_groups,
            node_rules,
            backend: backend.map(|b| b.id),
            shared_rules,
            foreign_rules,
            node_groups,
        })
    }
}

/// What creating an NLB already learned about its security groups.
struct SecurityStart {
    own: Option<OwnGroup>,
    /// The own group was made just now: nothing can refer to it yet.
    brand_new: bool,
    backend: Option<BackendGroup>,
    user_groups: Vec<String>,
}

/// What `prepare` reads from a spec: the annotations, and the NLB they ask
/// for (computed once, used by `ensure`).
#[derive(Debug, Clone)]
pub struct AwsPrepared {
    options: AwsOptions,
    desired: Desired,
}

#[async_trait]
impl LoadBalancerProvider for AwsProvider {
    type Options = AwsPrepared;

    fn name(&self) -> &str {
        "aws"
    }

    fn prepare(&self, spec: LoadBalancerSpec) -> Result<Prepared<AwsPrepared>> {
        let options = AwsOptions::parse(&spec)?;
        let mut desired = Desired::new(&spec, &options)?;
        desired.security.node_port_range = self.config.node_port_range;
        let mut unenforced = crate::options::unimplemented_notes(&spec.annotations);
        unenforced.extend(crate::desired::unenforced_ranges(&spec, &options));
        Ok(Prepared {
            spec,
            options: AwsPrepared { options, desired },
            unenforced,
        })
    }

    fn declines(&self, annotations: &ServiceAnnotations) -> Option<Declined> {
        crate::options::declined_for_aws_lb_controller(annotations)
    }

    fn selects_targets_by_node_labels(&self, annotations: &ServiceAnnotations) -> bool {
        annotations.contains_key(crate::options::TARGET_NODE_LABELS)
    }

    async fn ensure(&self, prepared: &Prepared<AwsPrepared>) -> Result<LoadBalancerStatus> {
        let key = &prepared.spec.key;
        let span = info_span!("aws.ensure", service = %key, uid = %key.uid);
        self.ensure_inner(prepared).instrument(span).await
    }

    fn take_notices(&self, key: &LoadBalancerKey) -> Vec<Notice> {
        let mut notices = self.notices.lock().unwrap_or_else(|e| e.into_inner());
        notices.remove(key).unwrap_or_default()
    }

    async fn get(&self, key: &LoadBalancerKey) -> Result<Option<LoadBalancerStatus>> {
        let span = info_span!("aws.get", service = %key, uid = %key.uid);
        async {
            let generated = names::load_balancer_name(key);
            let lb = match self.find_lb(&generated).await? {
                Some(lb) => lb,
                // Named by the Service (`load-balancer-name`), or gone.
                None => match self.lbs_of(key, &generated).await?.into_iter().next() {
                    Some(lb) => lb,
                    None => return Ok(None),
                },
            };
            let listeners = self.listeners(&lb.arn).await?;
            let mut ports: Vec<(u16, TgProtocol)> = listeners
                .iter()
                .map(|l| {
                    let p = match l.protocol.as_str() {
                        "UDP" => TgProtocol::Udp,
                        "TCP_UDP" => TgProtocol::TcpUdp,
                        "TLS" => TgProtocol::Tls,
                        _ => TgProtocol::Tcp,
                    };
                    (l.port, p)
                })
                .collect();
            ports.sort();
            ports.dedup_by_key(|(port, _)| *port);
            Ok(Some(crate::desired::status(&lb.dns_name, &ports)))
        }
        .instrument(span)
        .await
    }

    async fn delete(&self, key: &LoadBalancerKey) -> Result<()> {
        let span = info_span!("aws.delete", service = %key, uid = %key.uid);
        async {
            let generated = names::load_balancer_name(key);
            let mut lbs = Vec::new();
            if let Some(lb) = self.find_lb(&generated).await? {
                let tags = self.tags(std::slice::from_ref(&lb.arn)).await?;
                match tags.get(&lb.arn) {
                    // Deleted since it was found.
                    None => {}
                    Some(t) if !owned_by(key, t) => {
                        warn!(name = %lb.name, "not deleting a load balancer whose tags do not name this Service");
                    }
                    Some(_) => lbs.push(lb),
                }
            }
            if lbs.is_empty() {
                // Named by the Service (`load-balancer-name`), or gone.
                lbs = self.lbs_of(key, &generated).await?;
            }
            if lbs.is_empty() {
                // The balancer is gone; its target groups may not be (interrupted delete).
                self.sweep_groups(key).await?;
            }
            for lb in &lbs {
                info!(name = %lb.name, "deleting network load balancer");
                self.delete_lb(key, lb).await?;
            }
            // Then: the NLB held its own group until it was deleted.
            self.delete_own_group(key).await?;
            // Last: the cluster's backend group, once no NLB carries it.
            self.release_unused_backend_groups().await
        }
        .instrument(span)
        .await
    }

    async fn list_owned(&self) -> Result<Vec<LoadBalancerKey>> {
        let span = info_span!("aws.list_owned", cluster = %self.config.cluster);
        async {
            // Every NLB's tags: one named by its Service (`load-balancer-name`,
            // adopted) is owned as much as one under a generated name.
            let (lbs, group_keys) =
                tokio::try_join!(self.owned_lbs(|_| true), self.keys_of_owned_groups())?;
            let mut keys: Vec<LoadBalancerKey> = lbs.into_iter().map(|(_, key)| key).collect();
            // A security group whose NLB is gone (an interrupted delete) is owned too.
            keys.extend(group_keys);
            keys.sort();
            keys.dedup();
            Ok(keys)
        }
        .instrument(span)
        .await
    }
}
