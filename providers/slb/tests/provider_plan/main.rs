//! The provider's plan, pure functions: given what the cloud holds and what
//! the spec asks, which calls, in which order, or which refusal.
//!
//! - `listeners`: groups, backends and listeners on one balancer.
//! - `balancer`: which balancer, its own attributes, the ACL, and delete.

mod balancer;
mod listeners;
mod support;
