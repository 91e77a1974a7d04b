//! What the driver needs from the place a job's storage lives, besides its stores.
//!
//! A job on a directory runs against the embedded backends (a file lock, a SQLite queue, logs
//! next to the data); a job on `s3://` against the AWS ones (a lease in DynamoDB, the SQS retry
//! queue, logs on the machine running `orch`). The driver sees only this trait, so the engine
//! loop, the input planning and the aggregation are the same code for both; `orch-aws`
//! implements it for AWS without `orch-runtime` depending on the AWS SDK.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use orch_core::backend::Queue;
use orch_core::model::JobRecord;

use crate::backends::Backends;
use crate::error::Result;

/// Proof that this process is the one driver of a job, held for the whole run.
#[async_trait]
pub trait JobLease: Send + Sync {
    /// Whether another driver has taken the job over (a lease that expired unrenewed); the
    /// driver then stops at once instead of racing it.
    fn lost(&self) -> bool {
        false
    }
    /// Gives the job up for the next driver.
    async fn release(self: Box<Self>);
}

/// The backends of one storage location, as the driver uses them.
#[async_trait]
pub trait Platform: Send + Sync {
    fn backends(&self) -> &Backends;
    /// The storage URI workers are started with.
    fn storage_uri(&self) -> String;
    /// Where the workers of `job` started on this machine write their logs.
    fn log_dir(&self, job: &str) -> PathBuf;
    /// Makes sure only one driver runs `job`: a second `orch run` fails at once instead of
    /// racing the first.
    async fn lock_job(&self, job: &str) -> Result<Box<dyn JobLease>>;
    /// The retry queue of one run of `job`.
    async fn retry_queue(&self, job: &JobRecord) -> Result<Arc<dyn Queue>>;
}
