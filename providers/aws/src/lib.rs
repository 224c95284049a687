//! The AWS provider of portico: one Network Load Balancer per Service of
//! type LoadBalancer, with its own security group and an instance target
//! group per Service port on the NodePort, converged by diff so that
//! re-ensuring an unchanged Service makes no mutating AWS call.
//!
//! - [`AwsProvider`] implements [`portico_provider::LoadBalancerProvider`].
//! - [`AwsOptions`] is the typed form of the
//!   `service.beta.kubernetes.io/aws-load-balancer-*` annotations.
//! - [`declined_for_aws_lb_controller`] answers the contract's `declines`:
//!   class-less Services the AWS Load Balancer Controller owns.
//! - [`CallCounter`] counts AWS calls by operation as Prometheus metrics
//!   ([`AwsProvider::register_metrics`]); tests and benchmarks read the same
//!   counts through [`AwsProvider::calls`] and, with `testing`, inject faults.
//!
//! The module split follows "decide, then act": [`options`], `names`,
//! `adopt`, `desired`, `security`, `subnets` and `plan` are pure; `read` and
//! `network` observe ELBv2 and EC2, `groups` reads and writes security
//! groups, `execute` carries the steps out, and `provider` runs the flow.

mod adopt;
mod counter;
mod desired;
mod errors;
mod execute;
mod groups;
mod names;
mod network;
pub mod options;
mod plan;
mod provider;
mod read;
mod security;
mod subnets;
#[cfg(test)]
mod test_fixtures;
#[cfg(feature = "testing")]
pub mod testing;

pub use adopt::{ADOPT_ANNOTATION, CLOUD_PROVIDER_AWS};
pub use counter::{CallCounter, CallStats, FaultInjection, FaultKind, is_read_only};
pub use errors::classify as classify_aws_error;
pub use names::{
    backend_group_name, cloud_provider_aws_name, load_balancer_name, ownership_tags,
    target_group_name,
};
pub use options::{AwsOptions, declined_for_aws_lb_controller};
pub use provider::{AwsPrepared, AwsProvider, AwsProviderConfig};
pub use security::NodePortRange;

const _: () = {
    const fn assert_provider<P: portico_provider::LoadBalancerProvider>() {}
    assert_provider::<AwsProvider>();
};
