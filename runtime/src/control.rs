//! Changes to a stored job made from outside its driver: pause and resume, cancel, run failed
//! tasks or items again, purge. The operator applies `OrchJob` changes through these; the running driver
//! sees them on its next tick, because it reads the job record every tick.
//!
//! Every write is conditional on the record's version, so a change racing the driver fails
//! with a conflict and is simply made again on the caller's next pass.

use orch_core::backend::{ObjectStore, StateStore};
use orch_core::layout;
use orch_core::model::{JobPhase, JobRecord, Redrive, TaskRecord, TaskState};
use orch_core::platform::Backends;
use tracing::info;

use crate::error::Result;
use crate::{aggregate, redrive};

/// Sets the stored `spec.suspend` of a job that has not ended. Returns whether it changed.
pub async fn set_suspend(state: &dyn StateStore, job: &JobRecord, suspend: bool) -> Result<bool> {
    if job.phase.is_terminal() || job.spec.spec.suspend == suspend {
        return Ok(false);
    }
    let mut next = job.clone();
    next.spec.spec.suspend = suspend;
    state.update_job(&next).await?;
    Ok(true)
}

/// Asks the driver to cancel a job that has not ended: it stops the running tasks, starts no
/// new ones and ends the job `cancelled`. Returns whether the request is new.
pub async fn request_cancel(state: &dyn StateStore, job: &JobRecord) -> Result<bool> {
    if job.phase.is_terminal() || job.cancel_requested {
        return Ok(false);
    }
    let mut next = job.clone();
    next.cancel_requested = true;
    state.update_job(&next).await?;
    Ok(true)
}

/// What `orch retry` runs again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryChoice {
    /// Every task that failed all its attempts or was cancelled, whole.
    Tasks,
    /// Only failed items (`--items`): those of the given error kinds, or all when empty —
    /// inside tasks that committed, and every item of tasks that did not.
    Items { kinds: Vec<String> },
}

impl RetryChoice {
    fn selects(&self, kind: &str) -> bool {
        match self {
            RetryChoice::Tasks => true,
            RetryChoice::Items { kinds } => orch_core::model::kind_chosen(kinds, kind),
        }
    }
}

/// What [`retry`] set going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetrySummary {
    /// Tasks that run again.
    pub tasks: u32,
    /// Items they run again (whole tasks count all their items).
    pub items: u64,
}

/// Runs an ended job's failed work again, as new attempts, and the job with it: whole failed
/// and cancelled tasks, or (item-level redrive) only the failed items of a choice of error
/// kinds, whose tasks then carry over everything else their committed attempt wrote. Each
/// task run again gets a full `retry.maxAttempts` budget (earlier attempts stop counting;
/// attempt numbers keep growing, so no file of an earlier attempt is ever taken for a new
/// one). The aggregation runs again too, so the output and its `errors.parquet` are replaced
/// with the merged result and `_SUCCESS` is written anew — or not at all if the job fails.
///
/// The order of the writes keeps the output honest through a crash at any point: `_SUCCESS`
/// goes first (nobody reads a complete-looking output that is about to change), then the
/// aggregation is reset, then the job runs again, then the tasks are queued, and last the job
/// record is written once more for the coordinators that read only what changed (see
/// `touch_job`); a crash before the tasks are queued re-aggregates what was there, and the
/// same retry can be asked again. A summary with no task leaves the job as it is.
pub async fn retry(
    backends: &Backends,
    job: &JobRecord,
    choice: &RetryChoice,
) -> Result<RetrySummary> {
    let ended = match choice {
        RetryChoice::Tasks => matches!(job.phase, JobPhase::Failed | JobPhase::Cancelled),
        RetryChoice::Items { .. } => job.phase.is_terminal(),
    };
    if !ended {
        return Ok(RetrySummary::default());
    }
    let state = backends.state.as_ref();
    let tasks = state.list_tasks(&job.id).await?;
    let mut again = Vec::new();
    let mut summary = RetrySummary::default();
    for t in tasks.iter().filter(|t| t.kind.is_work()) {
        let (next, items) = match t.state {
            TaskState::Failed | TaskState::Cancelled => {
                // A failed redrive runs the same items again.
                let (kind, _) = aggregate::failed_task_error(t);
                if t.redrive.is_none() && !choice.selects(kind) {
                    continue;
                }
                let items = t.redrive.as_ref().map_or(t.items, |r| r.items_failed);
                let mut next = t.clone();
                // What is asked is the task again: its failed items too, not only what its
                // checkpoint has not finished.
                next.rerun_failed_items = true;
                (next, items)
            }
            TaskState::Succeeded if t.items_failed > 0 => {
                let RetryChoice::Items { kinds } = choice else {
                    continue;
                };
                let errors = redrive::committed_errors(backends, &job.id, t.id, t.attempt).await?;
                let redrive = Redrive {
                    from_attempt: t.attempt,
                    kinds: kinds.clone(),
                    items_ok: t.items_ok,
                    items_failed: t.items_failed,
                };
                let items = errors.iter().filter(|e| redrive.selects(&e.kind)).count() as u64;
                if items == 0 {
                    continue;
                }
                let mut next = t.clone();
                next.redrive = Some(redrive);
                // A redrive keeps its progress in a checkpoint of its own, none stored yet.
                next.checkpoint_stored = false;
                (next, items)
            }
            _ => continue,
        };
        summary.tasks += 1;
        summary.items += items;
        again.push(next);
    }
    if again.is_empty() {
        return Ok(summary);
    }
    aggregate::withdraw_output(backends, job).await?;
    let now = orch_core::model::now_ms();
    let fresh = |t: &TaskRecord| {
        let mut t = t.clone();
        t.state = TaskState::Pending;
        t.free_attempts = t.attempt;
        t.retry_at = None;
        t.lease_owner = None;
        t.lease_expiry = None;
        t.updated_at = now;
        t
    };
    for merge in tasks.iter().filter(|t| !t.kind.is_work()) {
        crate::history::keep_current(state, merge).await;
        state.update_task(&fresh(merge)).await?;
    }
    let mut next = job.clone();
    next.phase = JobPhase::Running;
    next.finished_at = None;
    next.message = None;
    next.cancel_requested = false;
    state.update_job(&next).await?;
    for t in &again {
        crate::history::keep_current(state, t).await;
        state.update_task(&fresh(t)).await?;
    }
    touch_job(state, &job.id).await?;
    info!(
        job = %job.id,
        tasks = summary.tasks,
        items = summary.items,
        ?choice,
        "queued again"
    );
    Ok(summary)
}

/// Writes the job record again, unchanged but for its version, after task rows were written
/// from outside the job's driver: a coordinator that reads only the rows changed since its
/// last look (DynamoDB, docs/aws.md) knows of a write outside its active tasks only by a
/// newer job record read before its rows. The write before the resets does not do: a look
/// between it and the resets sees the new record and only some of the rows. Made again on a
/// conflict (the driver wrote the job meanwhile), since the rows are written already. Should
/// this process die before it, a coordinator that started meanwhile may miss some resets
/// until it reads everything again (at its next start, or the next retry).
/// Gives up after [`TOUCH_TRIES`] conflicts in a row (the driver writes the job record a few
/// times a minute at most, so that many means something keeps writing it): the conflict is
/// returned, the resets are done, and asking the same retry again writes the record again.
async fn touch_job(state: &dyn StateStore, job: &str) -> Result<()> {
    let mut tries = 0;
    loop {
        let Some(current) = state.get_job(job).await? else {
            return Ok(());
        };
        match state.update_job(&current).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() && tries + 1 < TOUCH_TRIES => {
                tries += 1;
                tokio::time::sleep(TOUCH_BACKOFF.delay(tries)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Conflicts [`touch_job`] takes before it gives up, and its waits between them.
const TOUCH_TRIES: u32 = 10;
const TOUCH_BACKOFF: orch_core::backoff::Backoff = orch_core::backoff::Backoff::doubling(
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(500),
);

/// Deletes everything orch stored for a job (manifests, batches, results, logs under the
/// storage, its state rows), never its final output.
pub async fn purge(state: &dyn StateStore, objects: &dyn ObjectStore, job: &str) -> Result<()> {
    objects.delete_prefix(&layout::job_prefix(job)).await?;
    state.delete_job(job).await?;
    info!(job = %job, "job purged");
    Ok(())
}
