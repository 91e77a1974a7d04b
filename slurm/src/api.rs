//! What orch asks of Slurm, whichever way it reaches it: the [`SlurmApi`] trait and the types
//! that cross it. Both transports (REST and the commands) implement it, and the executor and
//! its tests see nothing else.

use async_trait::async_trait;

use crate::error::Result;
use crate::submission::ArraySubmission;

/// What the cluster allows, read once before the first submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `MaxArraySize`: array indices run from 0 to this minus one.
    pub max_array_size: u32,
    pub partitions: Vec<PartitionInfo>,
}

/// The largest array index Slurm can have: `MaxArraySize` is at most 4000001. The index lists
/// of squeue, sacct and slurmrestd are expanded up to it and no further, so that a corrupt or
/// hostile list (`0-4294967295`) cannot make orch allocate gigabytes.
pub(crate) const MAX_ARRAY_INDEX: u32 = 4_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub name: String,
    /// `MaxTime` in minutes; `None` when unlimited.
    pub max_time_minutes: Option<u64>,
    /// The partition jobs go to when they name none.
    pub default: bool,
}

/// One array of this orch job as Slurm reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayJob {
    /// `SLURM_ARRAY_JOB_ID`: the id of the whole array.
    pub array_job_id: u64,
    /// The job name (the orch job id).
    pub name: String,
    /// The comment orch gave it ([`crate::submission::ArrayKey`]).
    pub comment: String,
    pub tasks: Vec<ArrayTask>,
}

/// One array task. Pending tasks that Slurm still keeps as one record (`0-99%4`) are expanded,
/// one entry per index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayTask {
    pub index: u32,
    /// Slurm's state name, upper case, without flags: `PENDING`, `RUNNING`, `COMPLETED`,
    /// `FAILED`, `CANCELLED`, `TIMEOUT`, `NODE_FAIL`, `PREEMPTED`, `OUT_OF_MEMORY`,
    /// `BOOT_FAIL`, `DEADLINE`, …
    pub state: String,
    /// The batch script's exit code, when it ended.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Slurm's reason (why pending, or why it failed), if any.
    pub reason: Option<String>,
}

/// Slurm, as orch uses it.
#[async_trait]
pub trait SlurmApi: Send + Sync {
    /// `MaxArraySize` and the partitions with their time limits.
    async fn cluster_info(&self) -> Result<ClusterInfo>;
    /// Submits one array; returns its array job id.
    async fn submit(&self, array: &ArraySubmission) -> Result<u64>;
    /// Every array named `name` (an orch job's arrays share its id as their name) with the
    /// state of each task: one query for all of them, not one per task or per array. Arrays
    /// Slurm has forgotten (past `MinJobAge`, without accounting) are simply absent.
    async fn arrays(&self, name: &str) -> Result<Vec<ArrayJob>>;
    /// Cancels the given tasks of an array (all of them when `indices` is empty).
    async fn cancel(&self, array_job_id: u64, indices: &[u32]) -> Result<()>;
    /// Holds the array's pending tasks (a paused job); running ones go on.
    async fn hold(&self, array_job_id: u64) -> Result<()>;
    /// Releases held tasks.
    async fn release(&self, array_job_id: u64) -> Result<()>;
}
