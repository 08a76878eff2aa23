//! The one builder of every object the operator writes, pure (no client): the worker pod of an
//! attempt ([`pod`]), the shard's Lease and the workers' ServiceAccount, Role and RoleBinding
//! ([`access`]), and the BackgroundJob a schedule starts ([`job`]). The controllers only send them.

pub mod access;
pub mod job;
pub mod pod;
