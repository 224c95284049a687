//! EC2: the subnets of a new NLB.

use aws_sdk_ec2 as ec2;
use portico_provider::{Annotations, ProviderError};

use crate::errors::from_sdk;
use crate::names;
use crate::options::{AwsOptions, Scheme, SubnetSelector};
use crate::provider::{AwsProvider, Result};
use crate::subnets::{self, SubnetInfo};

impl AwsProvider {
    pub(crate) async fn describe_subnets(
        &self,
        ids: Option<Vec<String>>,
        filters: Vec<ec2::types::Filter>,
    ) -> Result<Vec<SubnetInfo>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .ec2
                .describe_subnets()
                .set_subnet_ids(ids.clone())
                .set_filters(Some(filters.clone()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| match from_sdk("ec2:DescribeSubnets", e) {
                    ProviderError::NotFound { what } => ProviderError::invalid(
                        Annotations::field(&format!("{}subnets", crate::options::PREFIX)),
                        what,
                    ),
                    other => other,
                })?;
            for s in page.subnets() {
                let (Some(id), Some(az), Some(vpc)) =
                    (s.subnet_id(), s.availability_zone(), s.vpc_id())
                else {
                    continue;
                };
                out.push(SubnetInfo {
                    id: id.to_string(),
                    az: az.to_string(),
                    vpc_id: vpc.to_string(),
                    tags: s
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                        .collect(),
                });
            }
            token = page.next_token().map(String::from);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    fn filter(name: &str, values: impl IntoIterator<Item = String>) -> ec2::types::Filter {
        ec2::types::Filter::builder()
            .name(name)
            .set_values(Some(values.into_iter().collect()))
            .build()
    }

    /// Subnet ids for a new NLB: the annotation's, in its order, or one
    /// per zone discovered by tags.
    pub(crate) async fn resolve_subnets(&self, opts: &AwsOptions) -> Result<Vec<String>> {
        let field = Annotations::field(&format!("{}subnets", crate::options::PREFIX));
        let vpc_filter: Vec<_> = self
            .config
            .vpc_id
            .iter()
            .map(|v| Self::filter("vpc-id", [v.clone()]))
            .collect();
        match &opts.subnets {
            SubnetSelector::Listed(items) => {
                let (ids, tag_names): (Vec<String>, Vec<String>) = items
                    .iter()
                    .cloned()
                    .partition(|s| s.starts_with("subnet-"));
                let mut found = Vec::new();
                if !ids.is_empty() {
                    found.extend(self.describe_subnets(Some(ids), Vec::new()).await?);
                }
                if !tag_names.is_empty() {
                    let mut filters = vpc_filter.clone();
                    filters.push(Self::filter("tag:Name", tag_names));
                    found.extend(self.describe_subnets(None, filters).await?);
                }
                let mut out = Vec::new();
                for item in items {
                    let mut matching: Vec<&SubnetInfo> = found
                        .iter()
                        .filter(|s| s.id == *item || s.tags.get("Name") == Some(item))
                        .collect();
                    matching.sort_by(|a, b| a.id.cmp(&b.id));
                    match matching.first() {
                        Some(s) => out.push(s.id.clone()),
                        None => {
                            return Err(ProviderError::invalid(
                                field,
                                format!("subnet {item:?} not found (by id or Name tag)"),
                            ));
                        }
                    }
                }
                Ok(out)
            }
            SubnetSelector::Discover => {
                let role = subnets::role_tag(opts.scheme);
                let mut filters = vpc_filter;
                filters.push(Self::filter("tag-key", [role.to_string()]));
                let all = self.describe_subnets(None, filters).await?;
                let chosen = subnets::choose(&all, &self.config.cluster, opts.scheme);
                if chosen.is_empty() {
                    return Err(ProviderError::invalid(
                        field,
                        format!(
                            "no subnet found for a{} load balancer: tag subnets with {role}=1 (and {}=owned|shared), or list them in this annotation",
                            if opts.scheme == Scheme::Internal {
                                "n internal"
                            } else {
                                "n internet-facing"
                            },
                            names::cluster_tag(&self.config.cluster)
                        ),
                    ));
                }
                Ok(chosen.into_iter().map(|s| s.id).collect())
            }
        }
    }
}
