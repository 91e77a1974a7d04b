//! Changes to a stored job made from outside its driver: pause and resume, cancel, run failed
//! tasks again, purge. The operator applies `OrchJob` changes through these; the running driver
//! sees them on its next tick, because it reads the job record every tick.
//!
//! Every write is conditional on the record's version, so a change racing the driver fails
//! with a conflict and is simply made again on the caller's next pass.

use orch_core::backend::{ObjectStore, StateStore};
use orch_core::layout;
use orch_core::model::{JobPhase, JobRecord, TaskState};
use tracing::info;

use crate::error::Result;

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

/// Makes an ended job's failed and cancelled tasks pending again, each with a full
/// `retry.maxAttempts` budget (earlier attempts stop counting; attempt numbers keep growing,
/// so no result of an earlier attempt is ever taken for a new one), and the job running again.
/// Succeeded tasks keep their results. Returns how many tasks will run again; 0 leaves the job
/// as it is.
pub async fn retry_failed(state: &dyn StateStore, job: &JobRecord) -> Result<u32> {
    if !matches!(job.phase, JobPhase::Failed | JobPhase::Cancelled) {
        return Ok(0);
    }
    let tasks = state.list_tasks(&job.id).await?;
    let again: Vec<_> = tasks
        .into_iter()
        .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Cancelled))
        .collect();
    // The job first: once it runs again, a crash halfway through the tasks below leaves
    // pending work, never a finished job with pending tasks.
    let mut next = job.clone();
    next.phase = JobPhase::Running;
    next.finished_at = None;
    next.message = None;
    next.cancel_requested = false;
    state.update_job(&next).await?;
    let now = orch_core::model::now_ms();
    for t in &again {
        let mut task = t.clone();
        task.state = TaskState::Pending;
        task.free_attempts = task.attempt;
        task.retry_at = None;
        task.lease_owner = None;
        task.lease_expiry = None;
        task.updated_at = now;
        state.update_task(&task).await?;
    }
    info!(job = %job.id, tasks = again.len(), "failed tasks queued again");
    Ok(again.len() as u32)
}

/// Deletes everything orch stored for a job (manifests, batches, results, logs under the
/// storage, its state rows), never its final output.
pub async fn purge(state: &dyn StateStore, objects: &dyn ObjectStore, job: &str) -> Result<()> {
    objects.delete_prefix(&layout::job_prefix(job)).await?;
    state.delete_job(job).await?;
    info!(job = %job, "job purged");
    Ok(())
}
