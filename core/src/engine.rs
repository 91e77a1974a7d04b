//! The engine: an I/O-free state machine that both drivers (`orch run`, the operator) run.
//!
//! Each tick the driver *observes* (job row, task rows, what the executor knows, retry messages
//! that came due), calls [`decide`], and *acts* on the returned [`Decision`]. The engine holds
//! no memory between ticks: everything it needs is in the persisted rows, so a restarted
//! coordinator continues where the old one stopped and can never dispatch a committed task
//! again (only `pending` and `retrying` tasks are ever dispatched).
//!
//! Order in which a driver applies a decision, and why:
//! 1. `job` (conditional): it allocates task-group ids; if it conflicts, drop the rest and
//!    observe again.
//! 2. `dispatches`: write each task row (conditional), then submit only the rows that were
//!    written, so a worker always finds its attempt in the store before it starts.
//! 3. `failures`: write the row, and enqueue the retry message only if the write succeeded.
//! 4. `updates`, `cancel`, `acks`, and finally `aggregate`.
//!
//! Drivers must poll the executor *before* reading task rows: a worker commits its row before
//! it exits, so "exited" together with a row that is not `succeeded` really means a lost attempt.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{ExecFailure, ExecState};
use crate::backoff::Backoff;
use crate::model::{
    ErrorKind, JobPhase, JobRecord, LimitHit, Millis, TaskError, TaskKind, TaskRecord, TaskState,
};
use crate::spec::JobSpec;

/// Retry and lease policy, derived from the spec once.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub max_attempts: u32,
    /// Waits between a task's attempts (`retry.backoff`).
    pub backoff: Backoff,
    pub jitter: bool,
    /// How long past its lease expiry a running task is given before it counts as lost.
    pub lease_grace_ms: u64,
    /// How long past `retry_at` a retrying task waits for its queue message before the engine
    /// dispatches it anyway (covers a message lost between the row write and the send).
    pub retry_grace_ms: u64,
    pub max_failed_items_percent: f64,
}

impl EngineConfig {
    pub fn from_spec(spec: &JobSpec) -> Self {
        let ms = |q: &crate::spec::Quantity, default: u64| {
            q.as_duration()
                .map(|d| d.as_millis() as u64)
                .unwrap_or(default)
        };
        EngineConfig {
            max_attempts: spec.retry.max_attempts.max(1),
            backoff: Backoff {
                initial: Duration::from_millis(ms(&spec.retry.backoff.initial, 10_000)),
                factor: spec.retry.backoff.factor,
                max: Duration::from_millis(ms(&spec.retry.backoff.max, 600_000)),
            },
            jitter: spec.retry.backoff.jitter,
            lease_grace_ms: 10_000,
            retry_grace_ms: 60_000,
            max_failed_items_percent: spec.tolerance.max_failed_items_percent,
        }
    }

    /// Delay before attempt `failed_attempt + 1`: exponential, capped, and with jitter drawn
    /// deterministically from the task and attempt, so the engine stays a pure function.
    pub fn backoff_ms(&self, job: &str, task: u32, failed_attempt: u32) -> u64 {
        let delay = if self.jitter {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (job, task, failed_attempt).hash(&mut h);
            let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
            self.backoff.delay_jittered(failed_attempt, unit)
        } else {
            self.backoff.delay(failed_attempt)
        };
        u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The body of a retry-queue message: start `attempt` of `task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRequest {
    pub job: String,
    pub task: u32,
    pub attempt: u32,
}

/// A retry message that came due, with its receipt for acknowledging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRetry {
    pub request: RetryRequest,
    pub receipt: String,
}

/// Everything the engine looks at in one tick.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub now: Millis,
    pub job: &'a JobRecord,
    pub tasks: &'a [TaskRecord],
    /// What the executor knows of each task's current attempt; absent = not asked.
    pub exec: &'a HashMap<u32, ExecState>,
    pub due_retries: &'a [DueRetry],
    /// Running tasks whose worker (the lease owner) is known to be gone although the executor
    /// has no record of it: a worker of an earlier coordinator on this machine whose process
    /// no longer exists. Its lease need not run out.
    pub gone_workers: &'a HashSet<u32>,
}

/// Tasks dispatched together as one task group (one array submission).
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub group: u32,
    /// What every task of the group does (one stage is dispatched at a time).
    pub kind: TaskKind,
    /// The rows to write (state `dispatched`, next attempt), conditional on their versions.
    pub tasks: Vec<TaskRecord>,
}

/// A lost or failed attempt: the row to write and, with attempts left, the retry to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub task: TaskRecord,
    pub retry: Option<(RetryRequest, u64)>,
}

/// What the driver should do after one tick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub job: Option<JobRecord>,
    pub dispatches: Vec<Dispatch>,
    pub failures: Vec<Failure>,
    pub updates: Vec<TaskRecord>,
    /// Attempts to stop: task, attempt and executor id when known.
    pub cancel: Vec<(u32, u32, Option<String>)>,
    /// Receipts of retry messages to delete.
    pub acks: Vec<String>,
    /// Every work task has ended and no aggregation task exists yet: verify the results, write
    /// the aggregation plan and create its tasks (the driver's I/O). The engine then
    /// dispatches them stage by stage like any task.
    pub plan_aggregation: bool,
    /// The final merge committed: write `_SUCCESS`, then end the job with [`verdict`].
    pub finish: bool,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.job.is_none()
            && self.dispatches.is_empty()
            && self.failures.is_empty()
            && self.updates.is_empty()
            && self.cancel.is_empty()
            && self.acks.is_empty()
            && !self.plan_aggregation
            && !self.finish
    }
}

/// One tick of the engine.
pub fn decide(cfg: &EngineConfig, obs: Observation<'_>) -> Decision {
    let mut d = Decision::default();
    let job = obs.job;
    if job.phase.is_terminal() {
        d.acks = obs.due_retries.iter().map(|r| r.receipt.clone()).collect();
        return d;
    }
    if job.cancel_requested {
        cancel(obs, &mut d, "cancelled on request".into());
        return d;
    }
    // A merge task out of attempts fails the job: its output cannot be complete.
    if let Some(t) = obs
        .tasks
        .iter()
        .find(|t| !t.kind.is_work() && t.state == TaskState::Failed)
    {
        let why = t
            .last_error
            .as_ref()
            .map(|e| e.message.as_str())
            .unwrap_or("no reason recorded");
        cancel(
            obs,
            &mut d,
            format!(
                "aggregation failed: {} task {} failed after {} attempt(s): {why}",
                t.kind,
                t.id,
                t.counted_attempts()
            ),
        );
        if let Some(j) = d.job.as_mut() {
            j.phase = JobPhase::Failed;
        }
        return d;
    }

    let mut changed = false;
    for t in obs.tasks {
        if let Some(reason) = lost(cfg, obs, t) {
            // A hung process still holds a slot (and may wake up): stop it.
            if matches!(
                obs.exec.get(&t.id),
                Some(ExecState::Running | ExecState::Queued)
            ) {
                d.cancel.push((t.id, t.attempt, t.executor_id.clone()));
            }
            d.failures.push(fail(cfg, obs.now, t, reason));
            changed = true;
        }
    }

    let mut due: HashMap<u32, &DueRetry> = HashMap::new();
    for r in obs.due_retries {
        if r.request.job != job.id {
            d.acks.push(r.receipt.clone());
            continue;
        }
        match obs.tasks.iter().find(|t| t.id == r.request.task) {
            Some(t) if t.state == TaskState::Retrying && t.attempt + 1 == r.request.attempt => {
                due.insert(t.id, r);
            }
            // Stale: the task moved on (dispatched by the grace rule, cancelled, …).
            _ => d.acks.push(r.receipt.clone()),
        }
    }

    // Only the earliest stage with unfinished tasks runs: a merge level reads what the level
    // before it wrote.
    let stage = obs
        .tasks
        .iter()
        .filter(|t| !t.state.is_terminal())
        .map(|t| t.kind.stage())
        .min();
    // Merge tasks run what the aggregation plan says, so a job running again after a retry
    // (its merge tasks reset by `orch retry`) plans the aggregation anew before they start.
    let planned = job.phase == JobPhase::Aggregating;
    if !job.spec.spec.suspend
        && let Some(stage) = stage
        && (stage == 0 || planned)
    {
        let group = job.next_group;
        let mut tasks = Vec::new();
        let mut kind = TaskKind::Work;
        for t in obs.tasks.iter().filter(|t| t.kind.stage() == stage) {
            kind = t.kind;
            let start = match t.state {
                TaskState::Pending => true,
                TaskState::Retrying => {
                    if let Some(r) = due.remove(&t.id) {
                        d.acks.push(r.receipt.clone());
                        true
                    } else {
                        t.retry_at
                            .is_none_or(|at| obs.now >= at.saturating_add(cfg.retry_grace_ms))
                    }
                }
                _ => false,
            };
            if start && t.counted_attempts() < cfg.max_attempts {
                let mut next = t.clone();
                next.state = TaskState::Dispatched;
                next.attempt = t.attempt + 1;
                next.group = Some(group);
                next.executor_id = None;
                next.lease_owner = None;
                next.lease_expiry = None;
                next.started_at = None;
                next.worker = None;
                next.retry_at = None;
                next.items_ok = 0;
                next.items_failed = 0;
                next.items_failed_by_kind.clear();
                next.rate_limit_tokens = 0;
                next.rate_limit_wait_ms = 0;
                next.output_bytes = 0;
                next.files.clear();
                next.updated_at = obs.now;
                tasks.push(next);
            }
        }
        if !tasks.is_empty() {
            let mut j = job.clone();
            j.next_group = group + 1;
            j.updated_at = obs.now;
            d.job = Some(j);
            d.dispatches.push(Dispatch { group, kind, tasks });
            changed = true;
        }
    }

    if !changed && stage.is_none_or(|s| s > 0) {
        match obs.tasks.iter().find(|t| t.kind == TaskKind::Final) {
            Some(last) if last.state == TaskState::Succeeded => d.finish = true,
            Some(_) if planned => {}
            _ => {
                if job.phase != JobPhase::Aggregating {
                    let mut j = job.clone();
                    j.phase = JobPhase::Aggregating;
                    j.updated_at = obs.now;
                    d.job = Some(j);
                }
                d.plan_aggregation = true;
            }
        }
    }
    d
}

/// Why the current attempt of `t` is lost, if it is.
fn lost(cfg: &EngineConfig, obs: Observation<'_>, t: &TaskRecord) -> Option<TaskError> {
    if !matches!(t.state, TaskState::Dispatched | TaskState::Running) {
        return None;
    }
    let infra = |message: String| TaskError {
        kind: ErrorKind::Infrastructure,
        message,
        attempt: t.attempt,
        limit: None,
    };
    // A worker that failed on purpose wrote why; prefer its words over an exit code.
    let worker_said = t
        .last_error
        .as_ref()
        .filter(|e| e.attempt == t.attempt)
        .cloned();
    let lease_expired = t
        .lease_expiry
        .is_some_and(|exp| obs.now > exp.saturating_add(cfg.lease_grace_ms));
    match obs.exec.get(&t.id) {
        Some(ExecState::Exited { code, signal }) => Some(worker_said.unwrap_or_else(|| {
            infra(match (code, signal) {
                (_, Some(sig)) => format!("worker was killed by signal {sig}"),
                (Some(0), None) => "worker exited without committing its output".into(),
                (Some(code), None) => format!("worker exited with code {code}"),
                (None, None) => "worker exited".into(),
            })
        })),
        Some(ExecState::Failed {
            reason: ExecFailure::Preempted,
            message,
        }) => Some(worker_said.unwrap_or_else(|| TaskError {
            kind: ErrorKind::Transient,
            message: format!("preempted: {message}"),
            attempt: t.attempt,
            limit: None,
        })),
        Some(ExecState::Failed { reason, message }) => {
            let what = match reason {
                ExecFailure::OutOfMemory => "out of memory",
                ExecFailure::TimeLimit => "time limit reached",
                ExecFailure::NodeFailure => "node failure",
                ExecFailure::Cancelled => "cancelled outside orch",
                ExecFailure::Preempted | ExecFailure::Other => "executor failure",
            };
            let limit = match reason {
                ExecFailure::OutOfMemory => Some(LimitHit::Memory),
                ExecFailure::TimeLimit => Some(LimitHit::Time),
                _ => None,
            };
            let error = match (reason, worker_said) {
                // The executor saw the cause (a limit, a node), the worker only the effect (its
                // handler killed, a stop signal): the cause names the failure, and it counts.
                (
                    ExecFailure::OutOfMemory | ExecFailure::TimeLimit | ExecFailure::NodeFailure,
                    Some(worker),
                ) => infra(format!("{what}: {message} (the worker said: {})", worker.message)),
                (_, Some(worker)) => worker,
                (_, None) => infra(format!("{what}: {message}")),
            };
            Some(TaskError {
                limit: limit.or(error.limit),
                ..error
            })
        }
        Some(ExecState::Unknown) if t.state == TaskState::Dispatched => Some(TaskError {
            kind: ErrorKind::Transient,
            message: "the executor has no record of this attempt (coordinator restarted before it started)"
                .into(),
            attempt: t.attempt,
            limit: None,
        }),
        // A worker that ended on purpose released its claim: no need to wait for the lease
        // once its process is gone (while it is alive, its exit code is still to come). Queued
        // again is gone too: Slurm requeued the task (preemption, `scontrol requeue`), and its
        // next start finds its attempt over.
        Some(ExecState::Unknown | ExecState::Queued) | None
            if t.state == TaskState::Running && t.lease_owner.is_none() =>
        {
            Some(worker_said.unwrap_or_else(|| infra("worker released its claim".into())))
        }
        Some(ExecState::Unknown) | None
            if t.state == TaskState::Running && obs.gone_workers.contains(&t.id) =>
        {
            Some(worker_said.unwrap_or_else(|| {
                infra(format!(
                    "worker {} is no longer running (it was started by an earlier coordinator)",
                    t.lease_owner.as_deref().unwrap_or("?")
                ))
            }))
        }
        Some(ExecState::Unknown | ExecState::Running | ExecState::Queued) | None
            if lease_expired =>
        {
            Some(worker_said.unwrap_or_else(|| infra("worker stopped renewing its lease".into())))
        }
        _ => None,
    }
}

/// Transient losses (a worker stopped by a signal, preemption, a coordinator restart) are
/// retried at once without using up an attempt, at most this many times per task.
pub const MAX_FREE_ATTEMPTS: u32 = 20;

fn fail(cfg: &EngineConfig, now: Millis, t: &TaskRecord, error: TaskError) -> Failure {
    let mut next = t.clone();
    next.updated_at = now;
    next.lease_owner = None;
    next.lease_expiry = None;
    let free = error.kind == ErrorKind::Transient && t.free_attempts < MAX_FREE_ATTEMPTS;
    next.last_error = Some(error);
    if free {
        next.free_attempts += 1;
        next.state = TaskState::Retrying;
        next.retry_at = Some(now);
        return Failure {
            task: next,
            retry: Some((
                RetryRequest {
                    job: t.job.clone(),
                    task: t.id,
                    attempt: t.attempt + 1,
                },
                0,
            )),
        };
    }
    if t.counted_attempts() >= cfg.max_attempts {
        next.state = TaskState::Failed;
        Failure {
            task: next,
            retry: None,
        }
    } else {
        let delay = cfg.backoff_ms(&t.job, t.id, t.counted_attempts());
        next.state = TaskState::Retrying;
        next.retry_at = Some(now.saturating_add(delay));
        Failure {
            task: next,
            retry: Some((
                RetryRequest {
                    job: t.job.clone(),
                    task: t.id,
                    attempt: t.attempt + 1,
                },
                delay,
            )),
        }
    }
}

/// Stops every unfinished task and ends the job `Cancelled` with `message` (a caller that ends
/// it otherwise changes the phase).
fn cancel(obs: Observation<'_>, d: &mut Decision, message: String) {
    for t in obs.tasks.iter().filter(|t| !t.state.is_terminal()) {
        if matches!(t.state, TaskState::Dispatched | TaskState::Running) {
            d.cancel.push((t.id, t.attempt, t.executor_id.clone()));
        }
        let mut next = t.clone();
        next.state = TaskState::Cancelled;
        next.updated_at = obs.now;
        d.updates.push(next);
    }
    d.acks = obs.due_retries.iter().map(|r| r.receipt.clone()).collect();
    let mut j = obs.job.clone();
    j.phase = JobPhase::Cancelled;
    j.finished_at = Some(obs.now);
    j.updated_at = obs.now;
    j.message = Some(message);
    d.job = Some(j);
}

/// Item totals of a finished job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemCounts {
    pub total: u64,
    pub ok: u64,
    /// Items recorded as failed by workers, plus every item of a failed task.
    pub failed: u64,
}

pub fn item_counts(tasks: &[TaskRecord]) -> ItemCounts {
    let mut c = ItemCounts::default();
    for t in tasks.iter().filter(|t| t.kind.is_work()) {
        c.total += t.items;
        match t.state {
            TaskState::Succeeded => {
                c.ok += t.items_ok;
                c.failed += t.items_failed;
            }
            // A redrive that failed leaves the attempt it started from as the task's output.
            TaskState::Failed | TaskState::Cancelled => match &t.redrive {
                Some(r) => {
                    c.ok += r.items_ok;
                    c.failed += r.items_failed;
                }
                None => c.failed += t.items,
            },
            _ => {}
        }
    }
    c
}

/// The job's end after aggregation: succeeded unless more items failed than tolerated.
pub fn verdict(
    cfg: &EngineConfig,
    job: &JobRecord,
    tasks: &[TaskRecord],
    now: Millis,
) -> JobRecord {
    let c = item_counts(tasks);
    let percent = if c.total == 0 {
        0.0
    } else {
        c.failed as f64 * 100.0 / c.total as f64
    };
    let failed_tasks: Vec<&TaskRecord> = tasks
        .iter()
        .filter(|t| t.kind.is_work() && t.state == TaskState::Failed)
        .collect();
    let mut j = job.clone();
    j.updated_at = now;
    j.finished_at = Some(now);
    if percent > cfg.max_failed_items_percent {
        j.phase = JobPhase::Failed;
        let mut msg = format!(
            "{} of {} items failed ({percent:.2} %), above the tolerance of {} %",
            c.failed, c.total, cfg.max_failed_items_percent
        );
        if let Some(t) = failed_tasks.first() {
            let why = t
                .last_error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or("unknown");
            msg.push_str(&format!(
                "; {} task(s) failed after all attempts, first: task {} ({why})",
                failed_tasks.len(),
                t.id
            ));
        }
        j.message = Some(msg);
    } else {
        j.phase = JobPhase::Succeeded;
        j.message = Some(format!(
            "{} of {} items succeeded, {} failed ({percent:.2} %)",
            c.ok, c.total, c.failed
        ));
    }
    j
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
