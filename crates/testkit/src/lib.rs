//! What Strata's tests, benches and workloads share, so each stage crate can be tested alone:
//! small fakes of the stages it talks to, fault decorators, a seeded generator and fixtures.
//!
//! This crate is not a stage and nothing in the commit path uses it. It depends only on
//! `strata-core`, so any stage crate can take it as a dev-dependency without pulling in a
//! sibling stage (the dependency rule). The `strata` binary's workloads use its generator, so
//! that a run replays from its seed.
//!
//! - [`MemoryLog`]: the log contract in memory (chain order, fencing, pull, pop), durable on
//!   acceptance, for the tests of the commit proxy and the storage servers.
//! - [`StepSequencer`]: versions one apart, with the real read version rule.
//! - [`ModelResolver`] over [`ConflictModel`]: conflict detection by brute force; the model is
//!   also what the real resolver is checked against.
//! - [`faults`]: decorators of every stage trait that fail, hang or delay an armed call.
//! - [`network`]: decorators that carry every call across a simulated network (delays, lost
//!   requests and answers, partitions, killed processes), seeded.
//! - [`rng`]: SplitMix64, a seeded generator whose sequence never changes.
//! - [`model`]: what a mutation does to a map, the reference state tests compare with.
//! - [`fixtures`]: small complete values (a system configuration).
//! - [`disk`]: the disk's fsync floor, which commit latency is measured against.
//! - [`certs`]: test certificates for TLS between processes.
//!
//! The fakes keep the contracts of `strata_core::traits` that their users rely on and none of
//! the performance: they take a lock per call and wake every waiter on every change.
//!
//! ```
//! use std::sync::Arc;
//! use strata_core::{Epoch, LogId, LogServer, Resolver, Sequencer, Version};
//! use strata_testkit::{MemoryLog, ModelResolver, StepSequencer};
//!
//! let sequencer: Arc<dyn Sequencer> = Arc::new(StepSequencer::new(Epoch(1), Version(0)));
//! let resolver: Arc<dyn Resolver> = Arc::new(ModelResolver::new(Epoch(1), Version(0)));
//! let log: Arc<dyn LogServer> = Arc::new(MemoryLog::new(LogId(0), Version(0)));
//! // ...hand them to the stage under test, e.g. a commit proxy.
//! # let _ = (sequencer, resolver, log);
//! ```

pub mod certs;
pub mod disk;
pub mod etcd;
pub mod faults;
pub mod fixtures;
mod gate;
mod log;
pub mod model;
pub mod network;
mod resolver;
pub mod rng;
mod sequencer;

pub use log::MemoryLog;
pub use resolver::{ConflictModel, ModelResolver};
pub use sequencer::StepSequencer;
