//! `orch-runtime`: runs a job over the core's ports, whichever backends are behind them.
//!
//! - [`input`]: the job's input files (one, a directory or a glob; compressed ones decompressed
//!   into storage) cut into batches;
//! - [`driver`]: the observe → decide → act loop of one job, used by `orch run` and the
//!   operator; it gets its platform and its executor through the core's traits;
//! - [`alerts`]: delivery of the job's alerts (Slack, webhooks, email, a caller's own sinks),
//!   capped, best effort, off the driver's tick;
//! - [`aggregate`]: result discovery and the merge of every task's output (coordinator side and
//!   the `orch-worker aggregate` side);
//! - [`control`]: pause, resume, cancel, retry and purge of a stored job from outside its
//!   driver (the operator's `OrchJob` changes);
//! - [`history`]: the attempt history, written best effort by workers and the driver;
//! - [`manifest`]: a job's `job.json` as workers read it, cached per machine;
//! - [`redrive`]: a committed attempt's files read back for `orch retry --items`;
//! - [`rate_limits`]: a job's `spec.rateLimit` bound to its shared buckets when it starts;
//! - [`task_cache`]: a job's task rows kept in memory between ticks.
//!
//! The backends themselves live in `orch-embedded`, `orch-aws` and `orch-slurm`; this crate
//! never names one. See docs/architecture.md.

pub mod aggregate;
pub mod alerts;
pub mod control;
pub mod driver;
pub mod error;
pub mod history;
pub mod input;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod rate_limits;
pub mod redrive;
pub mod task_cache;

pub use error::{Error, Result};
