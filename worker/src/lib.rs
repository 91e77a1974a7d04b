//! `orch-worker`: runs one task of a job — one batch of items — through a handler.
//!
//! - [`run`]: claim → read the batch range → items through the handler (retries, concurrency,
//!   checkpoints) → result files + `_DONE` → commit;
//! - [`handler`]: builtins, the `exec` JSON-lines protocol, and the [`handler::Handler`] trait
//!   for teams that link their own native handler into a worker binary;
//! - [`throttle`]: the worker's leases on the job's rate-limit buckets, and the handler
//!   decorator that spends them;
//! - [`checkpoint`]: item progress in SQLite, for resume after a kill or preemption;
//! - [`log_copy`]: the worker's copy of its own log in the job's storage.

pub mod checkpoint;
pub mod error;
pub mod handler;
#[cfg(test)]
mod history_tests;
pub mod log_copy;
pub mod merge;
mod redrive;
pub mod run;
pub mod scratch;
pub mod throttle;

pub use error::{Error, Result};

/// Logs to stderr the way every orch binary does (`ORCH_LOG`, default `info`; JSON lines in
/// production).
pub fn init_logging(format: orch_core::logging::LogFormat) {
    orch_core::logging::init("info", format);
}
