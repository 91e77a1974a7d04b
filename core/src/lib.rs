//! `orch-core`: the Kubernetes-free heart of orch.
//!
//! - [`spec`] and [`load`]: the job spec (an `OrchJob` resource) and how a file becomes one;
//! - [`template`]: the `{field}` templates of the `http` builtin handler;
//! - [`model`]: jobs, tasks, batches, task groups, attempts and the task state machine;
//! - [`partition`]: cutting JSONL input into byte-range batches without copying it;
//! - [`engine`]: the I/O-free state machine (observe → decide → actions) both drivers run;
//! - [`alerts`]: the alert rules over a job's rows, and the notices they give (I/O-free too);
//! - [`backend`]: the traits every side effect goes through, and [`platform`]: the stores of one
//!   process and what a driver needs besides them;
//! - [`ratelimit`]: the shared token bucket's leases and the pacer that spends them;
//! - [`invocation`]: how every executor starts `orch-worker` (arguments, environment);
//! - [`layout`]: the storage keys of the storage layout (docs/job-spec.md).

pub mod alerts;
pub mod backend;
pub mod backoff;
pub mod csv_input;
pub mod engine;
pub mod error;
pub mod history;
pub mod invocation;
pub mod k8s_name;
pub mod layout;
pub mod load;
pub mod logging;
pub mod model;
pub mod owner;
pub mod partition;
pub mod platform;
pub mod policy;
pub mod quantity;
pub mod ratelimit;
pub mod spec;
pub mod template;
pub mod uri;

pub use error::{Error, ErrorCategory, FieldError, Result};
