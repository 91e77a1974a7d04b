//! The worker's part of the attempt history: its claim and its commit are recorded in the task
//! row alone (no history write on the way to success), its own failures in a record; and a
//! history out of order changes nothing of the task's run.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use orch_core::backend::StateStore;
use orch_core::history::AttemptOutcome;
use orch_core::model::{JobPhase, JobRecord, SCHEMA_VERSION, TaskRecord, TaskState};
use orch_testkit::no_history::NoHistory;

use crate::checkpoint::Tally;
use crate::error::Error;
use crate::run::{WorkerArgs, claim, commit, record_failure};

async fn store(dir: &std::path::Path) -> Arc<dyn StateStore> {
    let uri = dir.to_str().unwrap();
    orch_connect::open_backends(uri, dir.join("scratch"))
        .await
        .unwrap()
        .state
}

/// A job of `n` tasks, each dispatched (attempt 1, group 0) as the driver leaves them.
async fn dispatched_job(state: &dyn StateStore, n: u32) -> WorkerArgs {
    let job = JobRecord {
        schema_version: SCHEMA_VERSION,
        id: "hist-1".into(),
        phase: JobPhase::Running,
        spec: serde_json::from_value(serde_json::json!({
            "apiVersion": "orch.dev/v1alpha1",
            "kind": "OrchJob",
            "metadata": {"name": "hist"},
            "spec": {"input": {"uri": "/in.jsonl"}, "handler": {"builtin": {"name": "identity"}}}
        }))
        .unwrap(),
        input_fingerprint: "fp".into(),
        total_tasks: n,
        total_items: u64::from(n) * 10,
        created_at: 1,
        updated_at: 1,
        finished_at: None,
        message: None,
        cancel_requested: false,
        next_group: 1,
        manifest_sha256: None,
        version: 0,
    };
    let tasks: Vec<TaskRecord> = (0..n)
        .map(|i| {
            let mut t = TaskRecord::new("hist-1", i, 10, 1);
            t.state = TaskState::Dispatched;
            t.attempt = 1;
            t.group = Some(0);
            t.executor_id = Some(format!("t{i}a1"));
            t
        })
        .collect();
    state.create_job(&job, &tasks).await.unwrap();
    WorkerArgs {
        storage: String::new(),
        job: "hist-1".into(),
        task: 0,
        group: 0,
        manifest_sha256: None,
        manifest_cache: None,
    }
}

#[tokio::test]
async fn the_worker_records_its_claim_its_commit_and_its_own_failures() {
    let dir = tempfile::tempdir().unwrap();
    let state = store(dir.path()).await;
    let args = dispatched_job(state.as_ref(), 4).await;

    let history = |row: TaskRecord| {
        let state = state.clone();
        async move {
            orch_runtime::history::attempts(state.as_ref(), "hist-1", Some(row.id), &[row])
                .await
                .unwrap()
        }
    };
    let mut row = claim(state.as_ref(), &args, "host-a:42").await.unwrap();
    let started = history(row.clone()).await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].outcome, AttemptOutcome::Running);
    assert_eq!(started[0].worker.as_deref(), Some("host-a:42"));
    assert_eq!(started[0].executor_id.as_deref(), Some("t0a1"));
    assert!(started[0].node.as_deref().is_some_and(|n| !n.is_empty()));
    let committed = commit(state.as_ref(), &mut row, &Tally::of(9, 1))
        .await
        .unwrap();
    // Claimed and committed without a history write: the row is the record.
    assert!(
        state
            .list_attempts("hist-1", None)
            .await
            .unwrap()
            .is_empty()
    );
    let done = history(committed).await;
    assert_eq!(done[0].outcome, AttemptOutcome::Succeeded);
    assert_eq!((done[0].items_ok, done[0].items_failed), (9, 1));
    assert_eq!(done[0].started_at, started[0].started_at);
    assert!(done[0].ended_at >= done[0].started_at);

    // Task 1 gives up, task 2 is stopped by a signal, task 3 by Slurm's warning before its
    // time limit: each says so, with its error; only the last marks a limit (the alerts read
    // the mark, never the message).
    for (task, error, outcome, limit) in [
        (
            1,
            Error::HandlerGaveUp("the handler keeps crashing near its time limit".into()),
            AttemptOutcome::Failed,
            None,
        ),
        (
            2,
            Error::Interrupted {
                progressed: true,
                near_time_limit: false,
            },
            AttemptOutcome::Interrupted,
            None,
        ),
        (
            3,
            Error::Interrupted {
                progressed: true,
                near_time_limit: true,
            },
            AttemptOutcome::Interrupted,
            Some(orch_core::model::LimitHit::Time),
        ),
    ] {
        let args = WorkerArgs {
            task,
            ..args.clone()
        };
        claim(state.as_ref(), &args, "host-a:43").await.unwrap();
        record_failure(state.as_ref(), &args, &error).await;
        let records = state.list_attempts("hist-1", Some(task)).await.unwrap();
        assert_eq!(records[0].outcome, outcome);
        assert_eq!(
            records[0].error.as_ref().unwrap().message,
            error.to_string()
        );
        // The claim is released after the record is written.
        let row = state.get_task("hist-1", task).await.unwrap().unwrap();
        assert_eq!(row.lease_owner, None);
        assert_eq!(row.last_error.as_ref().unwrap().limit, limit, "task {task}");
    }
}

#[tokio::test]
async fn a_history_out_of_order_fails_no_task() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Arc::new(NoHistory::new(store(dir.path()).await));
    let args = dispatched_job(broken.as_ref(), 2).await;
    let mut row = claim(broken.as_ref(), &args, "host-b:1").await.unwrap();
    let stored = commit(broken.as_ref(), &mut row, &Tally::of(10, 0))
        .await
        .unwrap();
    assert_eq!(stored.state, TaskState::Succeeded);
    let args = WorkerArgs { task: 1, ..args };
    claim(broken.as_ref(), &args, "host-b:2").await.unwrap();
    record_failure(broken.as_ref(), &args, &Error::Setup("bad".into())).await;
    let row = broken.get_task("hist-1", 1).await.unwrap().unwrap();
    assert_eq!(row.last_error.unwrap().message, "bad");
    assert!(broken.refused.load(Ordering::SeqCst) >= 1);
}
