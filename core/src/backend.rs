//! The ports of the engine: every side effect of orch goes through one of these traits, each
//! with an embedded implementation (filesystem, SQLite, local processes) and a cluster one
//! (S3, DynamoDB, SQS, Slurm). The core never names a concrete backend.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::ErrorCategory;
use crate::history::AttemptRecord;
use crate::model::{AuditEntry, JobRecord, TaskGroup, TaskRecord, TaskState};
use crate::ratelimit::Bucket;

/// The error every backend returns: a category for retry decisions, and a message that never
/// contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A conditional write lost: someone else changed the record first.
    #[error("conflict: {0} was changed concurrently")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{message}")]
    Other {
        category: ErrorCategory,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl BackendError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            BackendError::Conflict(_) => ErrorCategory::Transient,
            BackendError::NotFound(_) => ErrorCategory::Permanent,
            BackendError::Other { category, .. } => *category,
        }
    }

    pub fn other(
        category: ErrorCategory,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BackendError::Other {
            category,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn message(category: ErrorCategory, message: impl Into<String>) -> Self {
        BackendError::Other {
            category,
            message: message.into(),
            source: None,
        }
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, BackendError::Conflict(_))
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// The version a successful conditional write stores (`what` names the record in the error):
/// every StateStore bumps versions the same way.
pub fn next_version(what: &str, version: u64) -> BackendResult<u64> {
    version.checked_add(1).ok_or_else(|| {
        BackendError::message(
            ErrorCategory::Invalid,
            format!("{what}: version {version} cannot be incremented"),
        )
    })
}

/// Refuses task rows that belong to another job than `job` (what `create_job` and `add_tasks`
/// are given): every StateStore checks this the same way, before it writes anything.
pub fn check_tasks_of(job: &str, tasks: &[TaskRecord]) -> BackendResult<()> {
    match tasks.iter().find(|t| t.job != job) {
        Some(task) => Err(BackendError::message(
            ErrorCategory::Invalid,
            format!("task {} belongs to job {}, not {job}", task.id, task.job),
        )),
        None => Ok(()),
    }
}

/// An object listed under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// The bytes of an object written by [`ObjectStore::put_stream`], pulled a chunk at a time.
#[async_trait]
pub trait ByteSource: Send {
    /// The next chunk; `Ok(None)` once every byte was given. A source that cannot go on
    /// (its producer failed or gave up) returns an error, and nothing is written.
    async fn next_chunk(&mut self) -> BackendResult<Option<Vec<u8>>>;
}

/// Manifests, batches, results and checkpoints (S3 or a directory). Keys are `/`-separated and
/// relative to the store's root; writes are atomic (a reader sees the old or the new object).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    async fn put(&self, key: &str, data: Vec<u8>) -> BackendResult<()>;
    /// Uploads a local file.
    async fn put_file(&self, key: &str, path: &Path) -> BackendResult<()>;
    /// Writes the bytes of `data`, however many, without a local copy and in bounded memory
    /// (a part at a time). The object appears only once `data` has ended; an error of `data`
    /// or of the store leaves the key as it was. An object larger than one upload part may
    /// carry no whole-object checksum (S3 checks each part instead).
    async fn put_stream(&self, key: &str, data: &mut dyn ByteSource) -> BackendResult<()>;
    /// Creates the object only if it does not exist; `false` when it already did.
    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> BackendResult<bool>;
    async fn get(&self, key: &str) -> BackendResult<Option<Vec<u8>>>;
    async fn get_range(&self, key: &str, range: Range<u64>) -> BackendResult<Vec<u8>>;
    /// Downloads to a local file; `false` when the object does not exist.
    async fn get_to_file(&self, key: &str, path: &Path) -> BackendResult<bool>;
    async fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectMeta>>;
    async fn delete_prefix(&self, prefix: &str) -> BackendResult<()>;
    /// A local path for the key when the store is a filesystem, so callers can skip a copy.
    fn local_path(&self, key: &str) -> Option<PathBuf>;
}

/// Job and task rows with optimistic locking (DynamoDB or SQLite).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Creates the job row and all its task rows at once; conflict if the job exists.
    async fn create_job(&self, job: &JobRecord, tasks: &[TaskRecord]) -> BackendResult<()>;
    async fn get_job(&self, job: &str) -> BackendResult<Option<JobRecord>>;
    /// Adds task rows to an existing job (the aggregation tasks, created once the work has
    /// ended). A row whose id exists already is left as it is, so a driver that stopped
    /// half-way can add the same rows again; `NotFound` when the job does not exist.
    async fn add_tasks(&self, job: &str, tasks: &[TaskRecord]) -> BackendResult<()>;
    async fn list_jobs(&self) -> BackendResult<Vec<JobRecord>>;
    /// Writes `job` if the stored version equals `job.version`; returns the row as stored
    /// (version bumped).
    async fn update_job(&self, job: &JobRecord) -> BackendResult<JobRecord>;
    async fn list_tasks(&self, job: &str) -> BackendResult<Vec<TaskRecord>>;
    /// The task rows of `job` written after `cursor` (every row for `None`), with the cursor
    /// to pass next time: a coordinator that keeps the rows it has seen then reads only what
    /// changed on each tick. A store that does not track changes returns every row (`full`)
    /// whatever the cursor; this default does that with [`StateStore::list_tasks`].
    async fn list_tasks_since(&self, job: &str, cursor: Option<u64>) -> BackendResult<TaskChanges> {
        let _ = cursor;
        Ok(TaskChanges {
            tasks: self.list_tasks(job).await?,
            full: true,
            cursor: None,
        })
    }
    async fn get_task(&self, job: &str, task: u32) -> BackendResult<Option<TaskRecord>>;
    /// Writes `task` if the stored version equals `task.version`; returns the row as stored.
    async fn update_task(&self, task: &TaskRecord) -> BackendResult<TaskRecord>;
    /// A worker's claim of its task: the row becomes running, leased by the worker, if it is
    /// dispatched in the claim's task group. This default reads the row and writes it back
    /// (conditional on its version, again on a conflict); DynamoDB does it in one conditional
    /// write, without the read.
    async fn claim_task(&self, claim: &TaskClaim<'_>) -> BackendResult<Claimed> {
        claim_by_rewrite(self, claim).await
    }
    /// Removes the job row, its task rows and its attempt records.
    async fn delete_job(&self, job: &str) -> BackendResult<()>;
    /// Writes the record of one attempt, replacing the one stored under its (job, task,
    /// attempt), except that a record whose attempt has ended is never replaced by one whose
    /// attempt has not (a late start write of a worker the driver already declared lost): that
    /// write is dropped, and is not an error. Not conditional on versions: each fact of an
    /// attempt has one writer (`crate::history`). Workers call it, so on DynamoDB it is an
    /// `UpdateItem` like their other writes.
    async fn put_attempt(&self, record: &AttemptRecord) -> BackendResult<()>;
    /// The attempt records of `job` (of one task when given), sorted by task then attempt;
    /// empty for a job without any.
    async fn list_attempts(
        &self,
        job: &str,
        task: Option<u32>,
    ) -> BackendResult<Vec<AttemptRecord>>;
    /// The tasks of `job` in `state`, sorted by id: e.g. every running task, to check leases,
    /// without reading the others. This default filters [`StateStore::list_tasks`]; a store
    /// with an index on the state (DynamoDB's `by-state`) overrides it to read only those rows.
    /// Such an index may be eventually consistent, so a task changed a moment ago can still be
    /// listed in its old state: callers act on the result with conditional writes anyway.
    async fn list_tasks_in_state(
        &self,
        job: &str,
        state: TaskState,
    ) -> BackendResult<Vec<TaskRecord>> {
        let mut tasks = self.list_tasks(job).await?;
        tasks.retain(|t| t.state == state);
        Ok(tasks)
    }
}

/// A worker's claim of task `task` of `job`, dispatched in task group `group`
/// ([`StateStore::claim_task`]).
#[derive(Debug, Clone, Copy)]
pub struct TaskClaim<'a> {
    pub job: &'a str,
    pub task: u32,
    pub group: u32,
    /// The claiming worker, `host:pid`.
    pub worker: &'a str,
    pub now: crate::model::Millis,
    pub lease_expiry: crate::model::Millis,
}

impl TaskClaim<'_> {
    /// Whether the claim can take `row`: dispatched, in the claim's group.
    pub fn applies_to(&self, row: &TaskRecord) -> bool {
        row.state == TaskState::Dispatched && row.group == Some(self.group)
    }

    /// What the claim changes in the row (the one place that says it): running, leased, and
    /// the attempt's start and worker, which make the row the attempt's history record.
    pub fn apply(&self, row: &mut TaskRecord) -> BackendResult<()> {
        row.transition(TaskState::Running, self.now)
            .map_err(|e| BackendError::message(ErrorCategory::Invalid, e.to_string()))?;
        row.lease_owner = Some(self.worker.to_string());
        row.lease_expiry = Some(self.lease_expiry);
        row.started_at = Some(self.now);
        row.worker = Some(self.worker.to_string());
        Ok(())
    }
}

/// A claim as a read of the row and a conditional write of it (again on a conflict).
pub async fn claim_by_rewrite<S: StateStore + ?Sized>(
    state: &S,
    claim: &TaskClaim<'_>,
) -> BackendResult<Claimed> {
    loop {
        let Some(mut row) = state.get_task(claim.job, claim.task).await? else {
            return Ok(Claimed::No(None));
        };
        if !claim.applies_to(&row) {
            return Ok(Claimed::No(Some(row)));
        }
        claim.apply(&mut row)?;
        match state.update_task(&row).await {
            Ok(stored) => return Ok(Claimed::Yes(stored)),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What a [`TaskClaim`] came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// The row as the claim stored it.
    Yes(TaskRecord),
    /// Not claimable: the row as it is (not dispatched in that group), or no such task.
    No(Option<TaskRecord>),
}

/// What [`StateStore::list_tasks_since`] found.
#[derive(Debug, Clone, Default)]
pub struct TaskChanges {
    /// Sorted by id.
    pub tasks: Vec<TaskRecord>,
    /// The rows are all of the job's rows, not only the changed ones.
    pub full: bool,
    /// Where the next call starts; `None` when the store does not track changes.
    pub cursor: Option<u64>,
}

impl TaskChanges {
    /// Brings `rows` (a job's rows as last known, sorted by id) up to date: all of them for a
    /// full answer, else each changed row replacing its older copy — never a newer one, which
    /// a store whose reads may lag (an index) can return after the write that replaced it.
    pub fn apply_to(self, rows: &mut Vec<TaskRecord>) {
        if self.full {
            *rows = self.tasks;
            return;
        }
        for row in self.tasks {
            match rows.binary_search_by_key(&row.id, |r| r.id) {
                Ok(i) if row.version >= rows[i].version => rows[i] = row,
                Ok(_) => {}
                Err(i) => rows.insert(i, row),
            }
        }
    }
}

/// A received message; `receipt` names this delivery for delete and visibility changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
}

/// A queue with delayed delivery and visibility timeouts (SQS or SQLite): the retry queue.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Enqueues `body`, visible after `delay`.
    async fn send(&self, body: &str, delay: Duration) -> BackendResult<String>;
    /// Up to `max` visible messages, hidden from other receivers for `visibility`.
    async fn receive(&self, max: usize, visibility: Duration) -> BackendResult<Vec<Message>>;
    async fn delete(&self, receipt: &str) -> BackendResult<()>;
    /// Keeps a message hidden while it is being handled.
    async fn extend(&self, receipt: &str, visibility: Duration) -> BackendResult<()>;
}

/// The operator's append-only record of what it did on tenants' behalf (SQLite under the
/// storage directory, or items of the DynamoDB table): entries are added, never changed or
/// removed — not even by a purge of their job (docs/security.md).
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Adds `entry` after every earlier one.
    async fn append(&self, entry: &AuditEntry) -> BackendResult<()>;
    /// The entries of `namespace`, oldest first.
    async fn entries(&self, namespace: &str) -> BackendResult<Vec<AuditEntry>>;
}

/// Where rate-limit buckets live (SQLite under the storage directory, or one DynamoDB item
/// per bucket): shared by every worker process and every job on the same storage.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    async fn get_bucket(&self, key: &str) -> BackendResult<Option<Bucket>>;
    /// Writes `bucket` if the stored one still has `bucket.version` (0: none stored yet), else
    /// fails with [`BackendError::Conflict`]. Returns it as stored (new version, `writes` + 1).
    async fn put_bucket(&self, bucket: &Bucket) -> BackendResult<Bucket>;
    async fn list_buckets(&self) -> BackendResult<Vec<Bucket>>;
}

/// Reads a bucket, changes it with `change` and writes it back, again on a concurrent write.
/// `create` makes it when it does not exist; without it a missing bucket is `NotFound`.
pub async fn update_bucket<T>(
    store: &dyn RateLimitStore,
    key: &str,
    create: Option<&(dyn Fn() -> Bucket + Sync)>,
    mut change: impl FnMut(&mut Bucket) -> T,
) -> BackendResult<(Bucket, T)> {
    loop {
        let mut bucket = match (store.get_bucket(key).await?, create) {
            (Some(b), _) => b,
            (None, Some(create)) => create(),
            (None, None) => return Err(BackendError::NotFound(format!("rate limit bucket {key}"))),
        };
        let out = change(&mut bucket);
        match store.put_bucket(&bucket).await {
            Ok(stored) => return Ok((stored, out)),
            Err(BackendError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What the executor knows of one task it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecState {
    /// Waiting for a slot (array task pending).
    Queued,
    Running,
    /// The worker process ended.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The executor ended it for a reason of its own.
    Failed {
        reason: ExecFailure,
        message: String,
    },
    /// This executor has no record of the id (e.g. it was started by a previous coordinator).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecFailure {
    OutOfMemory,
    TimeLimit,
    NodeFailure,
    Cancelled,
    Preempted,
    Other,
}

/// The state of one task's current attempt as reported by the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStatus {
    pub task: u32,
    pub attempt: u32,
    pub state: ExecState,
}

/// Runs workers: local processes, Slurm arrays or Kubernetes Indexed Jobs.
#[async_trait]
pub trait Executor: Send + Sync {
    /// Starts the group's tasks (an array); returns the executor id of each task.
    async fn submit(&self, group: &TaskGroup) -> BackendResult<Vec<(u32, String)>>;
    /// The state of every task this executor was given, for the given attempts.
    async fn poll(&self, tasks: &[(u32, u32, Option<String>)]) -> BackendResult<Vec<ExecStatus>>;
    /// Stops the given attempts (task, attempt, executor id when known); best effort.
    async fn cancel(&self, attempts: &[(u32, u32, Option<String>)]) -> BackendResult<()>;
    /// Returns when a task may have changed state, at the latest after `timeout`. Executors
    /// that hear of exits at once (local processes) return early, so the coordinator reacts
    /// without waiting out its poll interval; others just wait.
    async fn wait_change(&self, timeout: Duration);
    /// The executor ids `submit` will give the tasks of `group`, when the executor can tell
    /// before submitting (Slurm names its arrays after the group). The coordinator records them
    /// before it submits, so that after a crash between the submission and its record it still
    /// finds the tasks instead of submitting them again.
    fn planned_ids(&self, _group: &TaskGroup) -> Option<Vec<(u32, String)>> {
        None
    }
    /// The job was paused (`spec.suspend`): tasks not started yet should wait (Slurm holds
    /// pending array tasks). Running ones go on. Executors that start nothing on their own
    /// need do nothing: the engine dispatches no new task while the job is paused.
    async fn pause(&self) -> BackendResult<()> {
        Ok(())
    }
    /// Undoes [`Executor::pause`].
    async fn resume(&self) -> BackendResult<()> {
        Ok(())
    }
    /// The worker `owner` (a task row's lease owner, `host:pid`) is known to have ended
    /// although this executor never started it: a process of this machine that no longer
    /// exists. A coordinator restarted on the machine of its predecessor then takes back the
    /// attempts whose workers died with it at once, instead of waiting out their leases.
    /// Executors whose workers run elsewhere cannot tell, and say no.
    fn worker_gone(&self, _owner: &str) -> bool {
        false
    }
    /// The driver is stopping (Ctrl-C, an error): start no more workers, and give those running
    /// on this machine up to `grace` to checkpoint and end. Executors whose workers run
    /// elsewhere (Slurm arrays, Indexed Jobs) leave them running: the next driver finds them.
    async fn shutdown(&self, _grace: Duration) {}
}
