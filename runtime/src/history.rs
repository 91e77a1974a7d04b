//! Writing the attempt history (`orch_core::history`) from the worker and the driver.
//!
//! Every write here is best effort: the history tells people what happened, the task rows
//! decide what happens next. A store error is logged with the job, task and attempt, and the
//! caller goes on — a history write never fails a task or stops a driver.

use orch_core::backend::{ExecState, StateStore};
use orch_core::history::{AttemptOutcome, AttemptRecord};
use orch_core::model::{TaskRecord, now_ms};
use tracing::warn;

/// Writes `record`, logging rather than failing.
pub async fn put(state: &dyn StateStore, record: &AttemptRecord) {
    if let Err(e) = state.put_attempt(record).await {
        warn!(
            job = %record.job,
            task = record.task,
            attempt = record.attempt,
            outcome = %record.outcome,
            error = %e,
            "cannot record the attempt in the history; going on without"
        );
    }
}

/// The stored record of `row`'s current attempt, or a fresh one when there is none (or it
/// cannot be read).
async fn current(state: &dyn StateStore, row: &TaskRecord) -> AttemptRecord {
    match state.list_attempts(&row.job, Some(row.id)).await {
        Ok(records) => records
            .into_iter()
            .find(|r| r.attempt == row.attempt)
            .unwrap_or_else(|| AttemptRecord::of(row, now_ms())),
        Err(e) => {
            warn!(job = %row.job, task = row.id, attempt = row.attempt, error = %e, "cannot read the attempt history");
            AttemptRecord::of(row, now_ms())
        }
    }
}

/// The worker ended its attempt without committing (failed, interrupted), `row` being the task
/// row it is about to write: the record, from the row (its start and worker are there), before
/// the row, which may let the driver dispatch the next attempt. A committed attempt needs no
/// record: its row is one (`history::with_current`).
pub async fn ended_by_worker(state: &dyn StateStore, row: &TaskRecord, outcome: AttemptOutcome) {
    let now = now_ms();
    let mut record = AttemptRecord::of(row, now);
    record.end_by_worker(row, outcome, now);
    put(state, &record).await;
}

/// `row` is about to be reset for another run (`orch retry`): the record of its current
/// attempt, which only the row holds while it runs or once it committed, is stored first.
pub async fn keep_current(state: &dyn StateStore, row: &TaskRecord) {
    if let Some(record) = AttemptRecord::of_current(row) {
        put(state, &record).await;
    }
}

/// The attempt history of `job` (of one task when given): the stored records with those the
/// task `rows` are (running and committed attempts).
pub async fn attempts(
    state: &dyn StateStore,
    job: &str,
    task: Option<u32>,
    rows: &[TaskRecord],
) -> orch_core::backend::BackendResult<Vec<AttemptRecord>> {
    let records = state.list_attempts(job, task).await?;
    let rows = rows.iter().filter(|r| task.is_none_or(|t| r.id == t));
    Ok(orch_core::history::with_current(records, rows))
}

/// The driver wrote `row`, ending its attempt as lost or failed (`cancelled`: stopped with its
/// job), having seen `exec`: completes the attempt's record, or writes one for an attempt no
/// worker recorded (never started, or killed before it could).
pub async fn ended_by_driver(
    state: &dyn StateStore,
    row: &TaskRecord,
    exec: Option<&ExecState>,
    cancelled: bool,
) {
    if row.attempt == 0 {
        return;
    }
    let mut record = current(state, row).await;
    record.end_by_driver(row, exec, cancelled, now_ms());
    put(state, &record).await;
}
