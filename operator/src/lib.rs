//! orch's Kubernetes operator: the `OrchJob` controller that runs each job with the same driver
//! as `orch run`, against the AWS stores and the Slurm bridge (or Indexed Jobs). The resources
//! themselves are in `orch-crd`.
//!
//! - [`status`]: the pure status of a job from its stored state;
//! - [`config`]: the operator's settings, and the job the driver runs for a resource;
//! - [`controller`]: reconcile (finalizer, validation, pause/cancel/retry, status, Events);
//! - [`supervisor`]: one background driver per running job;
//! - [`rate_limits`]: the `RateLimit` controller (buckets and their status) and the lookup of
//!   the RateLimits a job names;
//! - [`taskgroups`]: the `TaskGroup` children of a job;
//! - [`alerts`]: a job's alerts as Kubernetes Events, and its alert Secrets read from its
//!   namespace;
//! - [`leader`]: leader election on a Lease; [`telemetry`]: metrics and health endpoints.
//!
//! The binary (`main.rs`) is a thin shell: flags, logging, leader election, the controller
//! loop and graceful shutdown.

pub mod alerts;
pub mod config;
pub mod controller;
pub mod dashboard;
pub mod error;
pub mod kube_executor;
pub mod leader;
pub mod rate_limits;
pub mod status;
pub mod supervisor;
pub mod taskgroups;
pub mod telemetry;

pub use error::{Error, Result};

/// What the controller watches: `OrchJob`s, with those it cannot read kept as errors instead
/// of stalling the watch.
pub type Watched = kube::core::DeserializeGuard<orch_crd::OrchJob>;
