//! orch's Kubernetes operator: the custom resources (`OrchJob`, `TaskGroup`, `RateLimit`) and
//! their CRDs, generated from the Rust types, and the `OrchJob` controller that runs each job
//! with the same engine as `orch run`, against the AWS stores and the Slurm bridge.
//!
//! - [`crd`]: the resources; [`status`]: the pure status of a job from its stored state;
//! - [`config`]: the operator's settings, and the job the driver runs for a resource;
//! - [`controller`]: reconcile (finalizer, validation, pause/cancel/retry, status, Events);
//! - [`supervisor`]: one background driver per running job;
//! - [`taskgroups`]: the `TaskGroup` children of a job;
//! - [`leader`]: leader election on a Lease; [`telemetry`]: metrics and health endpoints.
//!
//! The binary (`main.rs`) is a thin shell: flags, logging, leader election, the controller
//! loop and graceful shutdown.

pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod kube_executor;
pub mod leader;
pub mod status;
pub mod supervisor;
pub mod taskgroups;
pub mod telemetry;

pub use error::{Error, Result};

/// What the controller watches: `OrchJob`s, with those it cannot read kept as errors instead
/// of stalling the watch.
pub type Watched = kube::core::DeserializeGuard<crd::OrchJob>;

/// All CRDs as one multi-document YAML stream (what `crdgen` prints and `crds/` holds).
pub fn crds_yaml() -> Result<String, Box<dyn std::error::Error>> {
    let mut out = String::new();
    for crd in crd::all_crds()? {
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// One CRD as a YAML document (starting with `---`), as checked in under `crds/`.
pub fn crd_yaml(crd: &crd::Crd) -> Result<String, serde_yaml::Error> {
    Ok(format!("---\n{}", serde_yaml::to_string(crd)?))
}
