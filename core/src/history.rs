//! Attempt history: one record per attempt of every task, kept in the StateStore next to the
//! task rows (docs/reliability.md, "Attempt history").
//!
//! A task row only holds its *current* attempt; once a task is retried, what happened to the
//! attempts before (which node, which signal, how far it got) would be gone. These records keep
//! it, for `orch status JOB --task N` and the job's counts of lost and failed attempts.
//!
//! The task row is the record of its current attempt: the claim writes the start and the
//! worker into it, the commit the end and the counts ([`AttemptRecord::of`], [`with_current`]),
//! so an attempt that succeeds costs no write of its own. A record is stored for an attempt
//! only when it ends otherwise, before the next dispatch replaces it in the row; each fact has
//! one owner, the one process that knows it:
//! - the worker, when the attempt ends on its terms without committing (failed, interrupted),
//!   because only it knows that moment and why;
//! - the driver, when it writes a lost or failed attempt into the task row (a `kill -9`, an
//!   executor failure, an expired lease, a worker that failed on purpose), or cancels a running
//!   one: only it sees exit codes and signals, and only it sees an attempt whose worker never
//!   started or never got to say anything.
//!
//! The outcome is written by whoever won the conditional write of the task row that ended the
//! attempt, so two writers never disagree on it. Writes are best effort: a record that could
//! not be written never fails a task (the task rows stay the truth about the job).

use serde::{Deserialize, Serialize};

use crate::backend::ExecState;
use crate::model::{Millis, SCHEMA_VERSION, TaskError, TaskKind, TaskRecord, TaskState};

/// How an attempt ended, or that it has not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// Claimed by a worker, no end recorded yet.
    Running,
    /// Committed: its output is the task's.
    Succeeded,
    /// The worker gave up on purpose and said why (a handler that keeps crashing, a bad
    /// manifest, a storage error).
    Failed,
    /// The worker was stopped by a signal (preemption, Ctrl-C, a time limit's warning) and
    /// checkpointed.
    Interrupted,
    /// Ended without the worker saying so: killed, out of memory, its node lost, its lease
    /// expired, or it never started. Seen only by the driver.
    Lost,
    /// Stopped because the job was cancelled.
    Cancelled,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 6] = [
        AttemptOutcome::Running,
        AttemptOutcome::Succeeded,
        AttemptOutcome::Failed,
        AttemptOutcome::Interrupted,
        AttemptOutcome::Lost,
        AttemptOutcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }

    /// Whether the attempt is over: a store never replaces an ended record with one that is not
    /// (see [`crate::backend::StateStore::put_attempt`]).
    pub fn has_ended(self) -> bool {
        self != AttemptOutcome::Running
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt of one task, as the StateStore keeps it: keyed by (job, task, attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub schema_version: u32,
    pub job: String,
    pub task: u32,
    #[serde(default, skip_serializing_if = "TaskKind::is_work")]
    pub kind: TaskKind,
    /// 1-based, as in the task row.
    pub attempt: u32,
    /// When a worker claimed it; absent when no worker ever did (or its record was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    /// The executor's id (process key, Slurm `jobid_index`, pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<String>,
    /// The host the worker ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The worker's claim (`host:pid`), as in the task row's `leaseOwner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub outcome: AttemptOutcome,
    /// The worker process's exit code, when the executor reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the worker process, when the executor reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why it did not succeed: the error the task row recorded for this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// Items finished ok and failed by this attempt (the last progress published when it did
    /// not commit).
    #[serde(default)]
    pub items_ok: u64,
    #[serde(default)]
    pub items_failed: u64,
    pub updated_at: Millis,
}

impl AttemptRecord {
    /// The record of `row`'s current attempt as the row tells it: its start and worker once a
    /// worker claimed it, no end yet.
    pub fn of(row: &TaskRecord, now: Millis) -> Self {
        AttemptRecord {
            schema_version: SCHEMA_VERSION,
            job: row.job.clone(),
            task: row.id,
            kind: row.kind,
            attempt: row.attempt,
            started_at: row.started_at,
            ended_at: None,
            executor_id: row.executor_id.clone(),
            // The worker is `host:pid`.
            node: row
                .worker
                .as_deref()
                .and_then(|w| w.rsplit_once(':'))
                .map(|(host, _)| host.to_string()),
            worker: row.worker.clone(),
            outcome: AttemptOutcome::Running,
            exit_code: None,
            signal: None,
            error: None,
            items_ok: 0,
            items_failed: 0,
            updated_at: now,
        }
    }

    /// The record the row is of its current attempt, when a worker claimed it and it is
    /// running or committed; `None` otherwise (an attempt that ended another way has a stored
    /// record, one not claimed yet has none).
    pub fn of_current(row: &TaskRecord) -> Option<Self> {
        row.started_at?;
        let mut record = AttemptRecord::of(row, row.updated_at);
        match row.state {
            TaskState::Running => {
                // Its progress so far.
                record.items_ok = row.items_ok;
                record.items_failed = row.items_failed;
            }
            TaskState::Succeeded => {
                record.end_by_worker(row, AttemptOutcome::Succeeded, row.updated_at);
            }
            _ => return None,
        }
        Some(record)
    }

    /// The worker ended its attempt itself: `row` is the task row as it wrote it (its counts,
    /// its error for this attempt).
    pub fn end_by_worker(&mut self, row: &TaskRecord, outcome: AttemptOutcome, now: Millis) {
        self.outcome = outcome;
        self.ended_at = Some(now);
        self.items_ok = row.items_ok;
        self.items_failed = row.items_failed;
        self.executor_id = self.executor_id.take().or_else(|| row.executor_id.clone());
        self.error = row.last_error.clone().filter(|e| e.attempt == self.attempt);
        self.updated_at = now;
    }

    /// The driver wrote `row` ending this attempt (lost, failed or cancelled), having seen
    /// `exec` from the executor. An end the worker recorded keeps its outcome and time: the
    /// driver adds what only it knows (exit code, signal, the error as the row records it).
    pub fn end_by_driver(
        &mut self,
        row: &TaskRecord,
        exec: Option<&ExecState>,
        cancelled: bool,
        now: Millis,
    ) {
        if !self.outcome.has_ended() {
            self.outcome = if cancelled {
                AttemptOutcome::Cancelled
            } else if matches!(
                exec,
                Some(ExecState::Failed {
                    reason: crate::backend::ExecFailure::Preempted,
                    ..
                })
            ) {
                AttemptOutcome::Interrupted
            } else {
                AttemptOutcome::Lost
            };
            self.ended_at = Some(now);
            // The last progress the worker published in the row.
            self.items_ok = row.items_ok;
            self.items_failed = row.items_failed;
        }
        if let Some(ExecState::Exited { code, signal }) = exec {
            self.exit_code = *code;
            self.signal = *signal;
        }
        self.executor_id = self.executor_id.take().or_else(|| row.executor_id.clone());
        if let Some(e) = row
            .last_error
            .as_ref()
            .filter(|e| e.attempt == self.attempt)
        {
            self.error = Some(e.clone());
        }
        self.updated_at = now;
    }

    /// How long it ran, when both ends are known.
    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.ended_at?.saturating_sub(self.started_at?))
    }
}

/// The stored `records` of a job (or of some of its tasks) together with the attempts its task
/// `rows` are the record of (running and committed ones, see [`AttemptRecord::of_current`]),
/// sorted by task then attempt. A stored record still `running` for an attempt its row
/// committed (written by an older worker that died before it recorded its end) is replaced by
/// the row's.
pub fn with_current<'a>(
    mut records: Vec<AttemptRecord>,
    rows: impl IntoIterator<Item = &'a TaskRecord>,
) -> Vec<AttemptRecord> {
    let stored: std::collections::HashMap<(u32, u32), usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.task, r.attempt), i))
        .collect();
    for row in rows {
        let Some(current) = AttemptRecord::of_current(row) else {
            continue;
        };
        match stored.get(&(row.id, row.attempt)) {
            None => records.push(current),
            Some(&i) if !records[i].outcome.has_ended() => records[i] = current,
            Some(_) => {}
        }
    }
    records.sort_by_key(|r| (r.task, r.attempt));
    records
}

/// Attempt counts of a job, by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptCounts {
    pub total: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub interrupted: u64,
    pub lost: u64,
    pub cancelled: u64,
}

impl AttemptCounts {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a AttemptRecord>) -> Self {
        let mut c = AttemptCounts::default();
        for r in records {
            c.total += 1;
            *match r.outcome {
                AttemptOutcome::Running => &mut c.running,
                AttemptOutcome::Succeeded => &mut c.succeeded,
                AttemptOutcome::Failed => &mut c.failed,
                AttemptOutcome::Interrupted => &mut c.interrupted,
                AttemptOutcome::Lost => &mut c.lost,
                AttemptOutcome::Cancelled => &mut c.cancelled,
            } += 1;
        }
        c
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::ExecFailure;
    use crate::model::{ErrorKind, TaskState};

    /// The record of `r`'s attempt as a worker of `node` claimed it at `at`.
    fn started(r: &TaskRecord, node: &str, at: Millis) -> AttemptRecord {
        let mut r = r.clone();
        r.started_at = Some(at);
        r.worker = Some(format!("{node}:42"));
        AttemptRecord::of(&r, at)
    }

    fn row(attempt: u32) -> TaskRecord {
        let mut t = TaskRecord::new("j", 3, 10, 1);
        t.state = TaskState::Running;
        t.attempt = attempt;
        t.executor_id = Some("t3a2".into());
        t.lease_owner = Some("host-a:42".into());
        t
    }

    #[test]
    fn a_killed_worker_is_lost_with_its_signal_and_keeps_its_start() {
        let r = row(2);
        let mut rec = started(&r, "host-a", 100);
        assert_eq!(rec.outcome, AttemptOutcome::Running);
        let mut lost = r.clone();
        lost.state = TaskState::Retrying;
        lost.items_ok = 4;
        lost.last_error = Some(TaskError {
            kind: ErrorKind::Infrastructure,
            message: "worker was killed by signal 9".into(),
            attempt: 2,
            limit: None,
        });
        let exec = ExecState::Exited {
            code: None,
            signal: Some(9),
        };
        rec.end_by_driver(&lost, Some(&exec), false, 500);
        assert_eq!(rec.outcome, AttemptOutcome::Lost);
        assert_eq!((rec.exit_code, rec.signal), (None, Some(9)));
        assert_eq!((rec.started_at, rec.ended_at), (Some(100), Some(500)));
        assert_eq!(rec.duration_ms(), Some(400));
        assert_eq!(rec.node.as_deref(), Some("host-a"));
        assert_eq!(rec.worker.as_deref(), Some("host-a:42"));
        assert_eq!(rec.items_ok, 4);
        assert_eq!(rec.error.unwrap().message, "worker was killed by signal 9");
    }

    #[test]
    fn the_driver_adds_the_exit_code_to_an_end_the_worker_recorded() {
        let mut r = row(1);
        let mut rec = started(&r, "n", 10);
        r.items_failed = 2;
        r.last_error = Some(TaskError {
            kind: ErrorKind::Transient,
            message: "stopped by a signal".into(),
            attempt: 1,
            limit: None,
        });
        rec.end_by_worker(&r, AttemptOutcome::Interrupted, 20);
        let exec = ExecState::Exited {
            code: Some(130),
            signal: None,
        };
        rec.end_by_driver(&r, Some(&exec), false, 90);
        assert_eq!(rec.outcome, AttemptOutcome::Interrupted);
        assert_eq!(rec.ended_at, Some(20), "the worker's end time stays");
        assert_eq!(rec.exit_code, Some(130));
        assert_eq!(rec.items_failed, 2);
    }

    #[test]
    fn an_attempt_no_worker_claimed_gets_a_record_from_the_driver() {
        let mut r = row(1);
        r.state = TaskState::Dispatched;
        r.lease_owner = None;
        let mut rec = AttemptRecord::of(&r, 5);
        rec.end_by_driver(&r, Some(&ExecState::Unknown), false, 5);
        assert_eq!(rec.outcome, AttemptOutcome::Lost);
        assert_eq!(rec.started_at, None);
        assert_eq!(rec.duration_ms(), None);
        let preempted = ExecState::Failed {
            reason: ExecFailure::Preempted,
            message: "p".into(),
        };
        let mut rec = AttemptRecord::of(&r, 5);
        rec.end_by_driver(&r, Some(&preempted), false, 5);
        assert_eq!(rec.outcome, AttemptOutcome::Interrupted);
        let mut rec = AttemptRecord::of(&r, 5);
        rec.end_by_driver(&r, None, true, 5);
        assert_eq!(rec.outcome, AttemptOutcome::Cancelled);
    }

    #[test]
    fn records_are_versioned_camel_case_and_old_ones_read() {
        let rec = started(&row(1), "n", 1);
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["schemaVersion"], SCHEMA_VERSION);
        assert_eq!(json["startedAt"], 1);
        assert_eq!(json["outcome"], "running");
        // A minimal record (what an older writer left: no optional field) reads.
        let old =
            r#"{"schemaVersion":1,"job":"j","task":0,"attempt":1,"outcome":"lost","updatedAt":1}"#;
        let read: AttemptRecord =
            crate::model::decode_versioned("attempt", old.as_bytes()).unwrap();
        assert_eq!(read.outcome, AttemptOutcome::Lost);
        assert_eq!(read.kind, TaskKind::Work);
        let counts = AttemptCounts::of([&rec, &read]);
        assert_eq!((counts.total, counts.running, counts.lost), (2, 1, 1));
    }
}
