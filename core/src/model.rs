//! The domain model: jobs, batches, tasks, task groups and attempts, and the task state machine.
//!
//! These records are what the StateStore persists and what the engine reasons about. They are
//! plain data with a schema version so that a newer orch can read what an older one wrote.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::OrchJobFile;

/// Version of the persisted records and manifests; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch. The engine takes time as an input, never reads a clock.
pub type Millis = u64;

/// The current wall-clock time in milliseconds (for drivers; the engine never calls it).
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// State of one task (one batch). See [`TaskState::can_become`] for the allowed transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created, never dispatched.
    Pending,
    /// Handed to the executor for attempt `attempt`; no worker has claimed it yet.
    Dispatched,
    /// A worker claimed the attempt and holds its lease.
    Running,
    /// Committed: the output of `attempt` is the task's output. Terminal.
    Succeeded,
    /// Attempts exhausted. Terminal.
    Failed,
    /// Waiting for its backoff before the next attempt.
    Retrying,
    /// The job was cancelled. Terminal.
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Dispatched,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Retrying,
        TaskState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// The transitions of the task state machine:
    /// pending → dispatched → running → succeeded | failed | retrying | cancelled, where a
    /// dispatched task may also be lost before it runs, and retrying leads to the next dispatch.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Pending, Dispatched | Cancelled)
                | (Dispatched, Running | Retrying | Failed | Cancelled)
                | (Running, Succeeded | Failed | Retrying | Cancelled)
                | (Retrying, Dispatched | Failed | Cancelled)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Dispatched => "dispatched",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Retrying => "retrying",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task state `{s}`"))
    }
}

/// Phase of a whole job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobPhase {
    /// Tasks exist; the engine dispatches and tracks them.
    Running,
    /// Every task is terminal; results are being merged.
    Aggregating,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobPhase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Running => "running",
            JobPhase::Aggregating => "aggregating",
            JobPhase::Succeeded => "succeeded",
            JobPhase::Failed => "failed",
            JobPhase::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Class of an error, for items and tasks (docs/job-spec.md, "Handlers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Retry with backoff.
    Transient,
    /// Record and move on.
    Permanent,
    /// Worker, node or service trouble: retry the task elsewhere.
    Infrastructure,
    /// An external API refused the call for its rate: retried like `transient` (never
    /// permanent), after the wait the API asked for when it said one.
    RateLimited,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Infrastructure => "infrastructure",
            ErrorKind::RateLimited => "rate_limited",
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
    /// The attempt that failed.
    pub attempt: u32,
    /// The resource limit that ended the attempt, when one did: a mark set by whoever saw the
    /// limit itself (the executor's report of an out-of-memory kill or a time limit, a worker
    /// stopped by Slurm's warning before its time limit), so nothing has to be read out of
    /// `message`. The `limitsHit` alert reads it (docs/observability.md, "Alerts").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitHit>,
}

/// A resource limit of a task (`spec.resources`) that ended an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitHit {
    /// `spec.resources.memory`: the worker was killed out of memory.
    Memory,
    /// `spec.resources.time` (or the Kubernetes `activeDeadline`): it ran out of time.
    Time,
}

impl LimitHit {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::Memory => "memory",
            LimitHit::Time => "time",
        }
    }
}

/// The job row of the StateStore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub schema_version: u32,
    /// `name-uid`.
    pub id: String,
    pub phase: JobPhase,
    /// The spec snapshot the job runs with (paths absolute).
    pub spec: OrchJobFile,
    pub input_fingerprint: String,
    pub total_tasks: u32,
    pub total_items: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// Why the job ended as it did, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Set by `orch cancel`; the engine cancels what runs.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Next task-group id to hand out.
    #[serde(default)]
    pub next_group: u32,
    /// [`manifest_sha256`] of the job's `job.json`, given to its workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    /// Optimistic-locking version, bumped by every write.
    pub version: u64,
}

/// One task row of the StateStore: one batch and its current attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub job: String,
    /// Equals the batch id for work; aggregation tasks come after the last batch.
    pub id: u32,
    /// What the task does: run the handler over a batch, or merge results (created when every
    /// work task has ended, and dispatched stage by stage).
    #[serde(default, skip_serializing_if = "TaskKind::is_work")]
    pub kind: TaskKind,
    pub state: TaskState,
    /// The current attempt, 1-based; 0 before the first dispatch.
    pub attempt: u32,
    /// Attempts that ended through no fault of the task (see `engine::MAX_FREE_ATTEMPTS`);
    /// they do not count against `retry.maxAttempts`.
    #[serde(default)]
    pub free_attempts: u32,
    /// Items in the batch.
    pub items: u64,
    /// Items finished so far in the current attempt (progress), then the final count.
    #[serde(default)]
    pub items_ok: u64,
    #[serde(default)]
    pub items_failed: u64,
    /// `items_failed` by the kind of the items' errors (`transient`, `permanent`,
    /// `rate_limited`, `schema`…), as the worker last published them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub items_failed_by_kind: std::collections::BTreeMap<String, u64>,
    /// Tokens the current attempt took from its rate limits (all of its buckets together).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limit_tokens: u64,
    /// How long the current attempt's items waited for those tokens, added up over items.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limit_wait_ms: u64,
    /// Bytes of the result files (`part.parquet`, `errors.parquet`) the attempt committed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_bytes: u64,
    /// The task group (array submission) of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Executor's id of the current attempt (process id, Slurm `jobid_index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expiry: Option<Millis>,
    /// When a worker claimed the current attempt, and which (`host:pid`): kept after the lease
    /// ends, until the next dispatch, so that the row itself is the history record of its
    /// current attempt (`history::AttemptRecord::of`) and a successful attempt costs no
    /// history write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When the next attempt may start (state `retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<TaskError>,
    /// The task's batch, so a worker needs only its own row rather than the whole manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// Set by `orch retry --items`: the attempts from now on re-run only some failed items of
    /// a committed attempt and carry the rest of its output over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<Redrive>,
    /// The result files the current attempt committed, as its `_DONE` names them (sizes and
    /// sha256): the coordinator checks a result against its row, without reading `_DONE`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files: std::collections::BTreeMap<String, FileSum>,
    /// An attempt that ended without committing sent its checkpoint to remote storage (set
    /// before the upload, kept across attempts): only then does a worker download one to
    /// resume from, so a first attempt costs no request for a checkpoint that cannot exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint_stored: bool,
    /// Set by a whole-task `orch retry`: the next attempts resume from the checkpoint's
    /// successful items only, and run its failed items again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rerun_failed_items: bool,
    pub updated_at: Millis,
    pub version: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TaskRecord {
    pub fn new(job: &str, id: u32, items: u64, now: Millis) -> Self {
        TaskRecord {
            job: job.to_string(),
            id,
            kind: TaskKind::Work,
            state: TaskState::Pending,
            attempt: 0,
            free_attempts: 0,
            items,
            items_ok: 0,
            items_failed: 0,
            items_failed_by_kind: Default::default(),
            rate_limit_tokens: 0,
            rate_limit_wait_ms: 0,
            output_bytes: 0,
            group: None,
            executor_id: None,
            lease_owner: None,
            lease_expiry: None,
            started_at: None,
            worker: None,
            retry_at: None,
            last_error: None,
            batch: None,
            redrive: None,
            files: Default::default(),
            checkpoint_stored: false,
            rerun_failed_items: false,
            updated_at: now,
            version: 0,
        }
    }

    /// Attempts that count against `retry.maxAttempts`.
    pub fn counted_attempts(&self) -> u32 {
        self.attempt.saturating_sub(self.free_attempts)
    }

    /// Moves to `next`, refusing transitions the state machine does not allow.
    pub fn transition(&mut self, next: TaskState, now: Millis) -> Result<()> {
        if !self.state.can_become(next) {
            return Err(Error::Transition {
                task: self.id,
                from: self.state,
                to: next,
            });
        }
        self.state = next;
        self.updated_at = now;
        Ok(())
    }
}

/// An item-level redrive of a task (`orch retry --items`): its next attempts run again the
/// items that `from_attempt` recorded as failed — all of them, or those of `kinds` — and keep
/// everything else that attempt committed (its results and its other errors), so the task's
/// output stays whole and every item in it exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redrive {
    /// The committed attempt whose output is carried over.
    pub from_attempt: u32,
    /// The error kinds to run again; empty means every failed item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// What `from_attempt` committed: its counts stand for the task if every attempt of the
    /// redrive fails, and its output then stays the task's output.
    pub items_ok: u64,
    pub items_failed: u64,
}

impl Redrive {
    /// Whether an item that failed with `kind` is run again.
    pub fn selects(&self, kind: &str) -> bool {
        kind_chosen(&self.kinds, kind)
    }
}

/// Whether a choice of error `kinds` (empty: every kind) takes `kind`.
pub fn kind_chosen(kinds: &[String], kind: &str) -> bool {
    kinds.is_empty() || kinds.iter().any(|k| k == kind)
}

/// One batch of the manifest: a byte range of one source object (docs/job-spec.md, "Storage layout").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    pub id: u32,
    /// URI of the source object.
    pub source: String,
    /// Range `[start, end)` of the source: bytes for JSONL and CSV, rows for Parquet.
    pub start: u64,
    pub end: u64,
    pub items: u64,
    /// Ordinal of the batch's first item in the whole input.
    pub first_item: u64,
}

impl Batch {
    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
}

/// One array submission: the tasks dispatched together, as the executor knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskGroup {
    pub job: String,
    pub id: u32,
    /// Task ids (array indices) with the attempt each runs.
    pub tasks: Vec<(u32, u32)>,
    /// What the tasks do; their index means a batch for work and a merge group otherwise.
    #[serde(default)]
    pub kind: TaskKind,
    /// The job's [`JobRecord::manifest_sha256`]: the tasks run only that `job.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
}

/// What the tasks of a group do. Aggregation runs through the same executor as the work, so
/// a big merge lands on the cluster (a Slurm array) rather than in the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum TaskKind {
    /// Run the handler over a batch.
    #[default]
    Work,
    /// Merge one group of `spec.output.fanIn` files of the previous level (level 1 merges
    /// task results).
    Merge { level: u32 },
    /// Merge the last level into the output location (the only task of its group).
    Final,
}

impl TaskKind {
    pub fn is_work(&self) -> bool {
        *self == TaskKind::Work
    }

    /// The order in which the stages of a job run: work first, then each merge level, then the
    /// final merge. A stage starts when every task of the stages before it has ended.
    pub fn stage(self) -> u32 {
        match self {
            TaskKind::Work => 0,
            TaskKind::Merge { level } => level,
            TaskKind::Final => u32::MAX,
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskKind::Work => f.write_str("work"),
            TaskKind::Merge { level } => write!(f, "merge level {level}"),
            TaskKind::Final => f.write_str("final merge"),
        }
    }
}

/// One attempt of a task, as a worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub task: u32,
    pub number: u32,
}

/// `jobs/J/job.json`: what a worker needs to run any task of the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobManifest {
    pub schema_version: u32,
    pub id: String,
    pub spec: OrchJobFile,
    pub input_fingerprint: String,
    pub total_items: u64,
    pub total_tasks: u32,
    /// Column names of CSV input, read once by the partitioner for every worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// The buckets the job's `spec.rateLimit` resolved to when it was created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<LimitBinding>,
}

/// One action the operator took on a tenant's behalf (an array submitted, a pause, a policy
/// denial…), kept append-only in the job storage's audit log (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// When, in milliseconds since the epoch.
    pub at: u64,
    /// The `OrchJob`'s namespace, name and uid.
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The engine's job id.
    pub job: String,
    /// The `OrchPolicy` that allowed (or refused) it; empty when none governs the namespace.
    pub policy: String,
    /// What was done: the reason of the Event published with it (`Submitted`, `Paused`,
    /// `Resumed`, `Retrying`, `Cancelling`, `Purged`, `PolicyDenied`).
    pub action: String,
    /// A sentence: what, how many, which executor ids. Never a secret or input data.
    pub detail: String,
}

/// One `spec.rateLimit` entry, resolved: the bucket it takes tokens from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitBinding {
    /// The `RateLimit`'s name (what handlers report `usage` under).
    pub name: String,
    /// The bucket's key (its scope resolved).
    pub key: String,
    pub tokens_per_item: u32,
    pub weight: u32,
}

/// `_DONE` of a task attempt, written after its files: what they hold and their checksums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DoneMarker {
    pub schema_version: u32,
    pub job: String,
    pub task: u32,
    pub attempt: u32,
    pub worker: String,
    pub items: u64,
    pub items_ok: u64,
    pub items_failed: u64,
    /// File name → checksum and rows.
    pub files: std::collections::BTreeMap<String, FileSum>,
}

/// Rows, bytes and sha256 of a file named in a marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// The errors file a committed attempt names among its `files`: none when it had no failed
/// item (it writes none then); an error when it counts failed items but names none.
pub fn committed_errors_file(
    files: &std::collections::BTreeMap<String, FileSum>,
    items_failed: u64,
) -> std::result::Result<Option<&FileSum>, String> {
    match files.get(crate::layout::ERRORS_FILE) {
        None if items_failed > 0 => Err(format!(
            "it counts {items_failed} failed items but names no {}",
            crate::layout::ERRORS_FILE
        )),
        found => Ok(found),
    }
}

/// The digest that pins a job's `job.json`: the driver records it in the job's record when it
/// writes the file and gives it to every worker on its command line, so a worker runs only the
/// bytes the driver wrote.
pub fn manifest_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Decodes `job.json` of `job`, its bytes checked against `expected` first when given.
pub fn decode_manifest(job: &str, bytes: &[u8], expected: Option<&str>) -> Result<JobManifest> {
    if let Some(expected) = expected {
        let found = manifest_sha256(bytes);
        if found != expected {
            return Err(Error::ManifestMismatch {
                job: job.to_string(),
                expected: expected.to_string(),
                found,
            });
        }
    }
    decode_versioned("job.json", bytes)
}

/// Decodes a versioned JSON record, refusing versions newer than this build understands.
pub fn decode_versioned<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: u32,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        what: what.to_string(),
        source,
    })?;
    if probe.schema_version > SCHEMA_VERSION {
        return Err(Error::SchemaVersion {
            what: what.to_string(),
            found: probe.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        what: what.to_string(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn error_kinds_are_written_as_the_protocol_names_them() {
        for kind in [
            ErrorKind::Transient,
            ErrorKind::Permanent,
            ErrorKind::Infrastructure,
            ErrorKind::RateLimited,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
        }
        assert_eq!(ErrorKind::RateLimited.as_str(), "rate_limited");
    }
}
