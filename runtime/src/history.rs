//! Writing the attempt history (`orch_core::history`) from the worker and the driver.
//!
//! Every write here is best effort: the history tells people what happened, the task rows
//! decide what happens next. A store error is logged with the job, task and attempt, and the
//! caller goes on — a history write never fails a task or stops a driver.

use orch_core::backend::{ExecState, StateStore};
use orch_core::history::{AttemptOutcome, AttemptRecord};
use orch_core::model::{TaskRecord, TaskState, now_ms};
use orch_core::owner::hostname;
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

/// A worker claimed `row` (as the claim stored it): its start, node and ids.
pub async fn started(state: &dyn StateStore, row: &TaskRecord) {
    put(state, &AttemptRecord::started(row, hostname(), now_ms())).await;
}

/// The worker ended its attempt itself, `row` being its write of the task row that ends it
/// (the commit, or the failure it records). Its start is read back rather than carried through
/// the worker's code: one more read per attempt, and the claim stays the only place that knows
/// about starts.
pub async fn ended_by_worker(state: &dyn StateStore, row: &TaskRecord, outcome: AttemptOutcome) {
    let mut record = current(state, row).await;
    record.end_by_worker(row, outcome, now_ms());
    put(state, &record).await;
}

/// Closes what the history of a job that ended left open: an attempt its task row committed
/// but whose worker died before it recorded its success. One read of the job's history, at its
/// end; the task rows (`tasks`) say which attempts committed.
pub async fn close_committed(state: &dyn StateStore, job: &str, tasks: &[TaskRecord]) {
    let records = match state.list_attempts(job, None).await {
        Ok(records) => records,
        Err(e) => {
            warn!(%job, error = %e, "cannot read the attempt history to close it");
            return;
        }
    };
    for mut record in records.into_iter().filter(|r| !r.outcome.has_ended()) {
        if let Some(row) = tasks.iter().find(|t| {
            t.id == record.task && t.attempt == record.attempt && t.state == TaskState::Succeeded
        }) {
            record.end_by_worker(row, AttemptOutcome::Succeeded, row.updated_at);
            put(state, &record).await;
        }
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use orch_embedded::SqliteStateStore;
    use orch_testkit::contract::sample_job;

    /// A worker killed between its commit and its `succeeded` record leaves the record
    /// `running`; the end of the job closes it from the task row. Records the rows do not
    /// vouch for (another attempt, a task not done) stay as they are.
    #[tokio::test]
    async fn the_end_of_a_job_closes_committed_attempts_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(&dir.path().join("s.sqlite")).unwrap();
        let mut rows: Vec<TaskRecord> = (0..2).map(|i| TaskRecord::new("j", i, 10, 1)).collect();
        store.create_job(&sample_job("j", 2), &rows).await.unwrap();
        for row in &mut rows {
            row.attempt = 1;
            put(&store, &AttemptRecord::started(row, "node1", 10)).await;
        }
        rows[0].state = TaskState::Succeeded;
        rows[0].items_ok = 9;
        rows[0].items_failed = 1;
        rows[0].updated_at = 50;
        rows[1].state = TaskState::Running;

        close_committed(&store, "j", &rows).await;
        let records = store.list_attempts("j", None).await.unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(records[0].outcome, AttemptOutcome::Succeeded);
        assert_eq!(records[0].ended_at, Some(50));
        assert_eq!((records[0].items_ok, records[0].items_failed), (9, 1));
        assert_eq!(records[0].node.as_deref(), Some("node1"));
        assert_eq!(records[1].outcome, AttemptOutcome::Running);
    }
}
