//! The backend contract (`orch_testkit::contract`) against the embedded backends, each in a
//! fresh temporary directory.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use orch_core::backend::Queue;
use orch_embedded::FsStore;
use orch_embedded::SqliteQueue;
use orch_embedded::SqliteStateStore;
use orch_testkit::contract::{self, QueueSpec};

#[tokio::test]
async fn fs_store_meets_the_object_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path().join("objects")).unwrap();
    contract::object_store_contract(&store).await;
    // Twice on the same root: the contract must not depend on a fresh backend.
    contract::object_store_contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_state_store_meets_the_state_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStateStore::open(&dir.path().join("state.sqlite")).unwrap();
    contract::state_store_contract(&store).await;
    contract::state_store_contract(&store).await;
}

/// The driver's store and another process's (a worker, `orch retry`) on one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_changes_since_a_cursor_cover_every_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let store = SqliteStateStore::open(&path).unwrap();
    let other = SqliteStateStore::open(&path).unwrap();
    contract::tasks_since_two_writers_contract(&store, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rate_limit_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ratelimits.sqlite");
    let store = orch_embedded::sqlite_ratelimit::SqliteRateLimitStore::open(&path).unwrap();
    contract::rate_limit_store_contract(&store).await;
    // A second handle on the same file (another process) sees the same buckets.
    let other = orch_embedded::sqlite_ratelimit::SqliteRateLimitStore::open(&path).unwrap();
    contract::rate_limit_store_contract(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_log_meets_the_contract_and_refuses_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sqlite");
    let log = orch_embedded::sqlite_audit::SqliteAuditLog::open(&path).unwrap();
    contract::audit_log_contract(&log).await;
    // Not even a direct write may change or remove what is there.
    let conn = rusqlite::Connection::open(&path).unwrap();
    for sql in ["UPDATE audit SET body = '{}'", "DELETE FROM audit"] {
        let e = conn.execute(sql, []).unwrap_err();
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_meets_the_queue_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let make = |spec: QueueSpec| {
        let path = path.clone();
        async move {
            let mut queue = SqliteQueue::open(&path, &spec.name).unwrap();
            if let Some(n) = spec.max_receives {
                queue = queue.with_max_receives(n);
            }
            Box::new(queue) as Box<dyn Queue>
        }
    };
    contract::queue_contract(make, Duration::from_millis(300)).await;
}
