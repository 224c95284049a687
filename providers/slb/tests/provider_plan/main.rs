//! The provider's plan, pure functions: given what the cloud holds and what
//! the spec asks, which calls, in which order, or which refusal.
//!
//! - `listeners`: groups, backends and listeners on one balancer.
//! - `balancer`: which balancer, and what may change on it in place.
//! - `acl`: portico's ACL from the source ranges, or the user's.
//! - `delete`: what goes, and what is given back.

mod acl;
mod balancer;
mod delete;
mod listeners;
mod support;
