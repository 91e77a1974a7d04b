//! The behaviour every backend must show, as reusable test functions.
//!
//! The engine is written against the traits of `orch_core::backend`, not against SQLite or S3,
//! so each implementation must agree on the details the engine relies on (what a missing object
//! returns, that a stale version conflicts, that a delayed message stays hidden). These functions
//! state those details once; the embedded backends run them in `tests/contract_embedded.rs`, and
//! the cluster backends (S3, DynamoDB, SQS against a local emulator) run the same functions.
//!
//! Each call uses fresh random names (object prefix, job id, queue name), so the functions can
//! run repeatedly and concurrently against one shared backend. They panic with a message naming
//! the broken rule: this is test-support code.
//!
//! Contract details worth knowing when writing a new backend:
//! - `get_range` clamps the end to the object's size; a range starting at or past the end yields
//!   no bytes; a missing object is `NotFound`.
//! - `put_stream` writes nothing (and keeps an existing object) unless its source ends with
//!   `Ok(None)`.
//! - `list` is by plain string prefix (not by directory) and sorted by key.
//! - `delete_job` of a missing job is a successful no-op.
//! - `Queue::delete` with a stale receipt is a successful no-op; `Queue::extend` with one is a
//!   `Conflict`. The dead-letter queue of queue `q` is named `q-dlq`.
//! - `RateLimitStore::put_bucket` of version 0 creates (a second creation conflicts); of version
//!   N it replaces version N only; each write increments `writes` and `version`.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use orch_core::backend::{
    AuditLog, BackendError, ByteSource, Message, ObjectMeta, ObjectStore, Queue, RateLimitStore,
    StateStore, update_bucket,
};
use orch_core::history::{AttemptOutcome, AttemptRecord};
use orch_core::model::{
    AuditEntry, ErrorKind, JobPhase, JobRecord, SCHEMA_VERSION, TaskError, TaskKind, TaskRecord,
    TaskState,
};

/// A short random tag that keeps names of concurrent contract runs apart.
fn tag() -> String {
    format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

fn expect_ok<T>(what: &str, r: Result<T, BackendError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e}"))
}

/// A scratch directory for local files, removed on drop (the contract lives outside dev-deps,
/// so no `tempfile`).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("orch-contract-{}", tag()));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Object store contract: round trips, overwrite, absence, ranges, listing, create-once, files
/// and prefix deletion.
pub async fn object_store_contract(store: &dyn ObjectStore) {
    let p = format!("contract/{}/", tag());
    let key = |k: &str| format!("{p}{k}");

    // Round trip, absence, overwrite.
    assert_eq!(
        expect_ok("get missing", store.get(&key("missing")).await),
        None,
        "a missing object must read as None"
    );
    expect_ok(
        "put",
        store.put(&key("a/one"), b"hello world".to_vec()).await,
    );
    assert_eq!(
        expect_ok("get", store.get(&key("a/one")).await).as_deref(),
        Some(&b"hello world"[..]),
        "put then get must round-trip"
    );
    expect_ok(
        "overwrite",
        store.put(&key("a/one"), b"HELLO".to_vec()).await,
    );
    assert_eq!(
        expect_ok("get", store.get(&key("a/one")).await).as_deref(),
        Some(&b"HELLO"[..]),
        "a put must replace the object"
    );
    expect_ok("put empty", store.put(&key("empty"), Vec::new()).await);
    assert_eq!(
        expect_ok("get empty", store.get(&key("empty")).await),
        Some(Vec::new()),
        "an empty object exists and is empty"
    );

    // Ranges.
    let digits = b"0123456789".to_vec();
    expect_ok("put digits", store.put(&key("digits"), digits).await);
    assert_eq!(
        expect_ok("range", store.get_range(&key("digits"), 2..5).await),
        b"234",
        "get_range must return exactly [start, end)"
    );
    assert_eq!(
        expect_ok("range", store.get_range(&key("digits"), 0..10).await),
        b"0123456789"
    );
    assert_eq!(
        expect_ok(
            "range past end",
            store.get_range(&key("digits"), 7..100).await
        ),
        b"789",
        "get_range must clamp the end to the object's size"
    );
    assert!(
        expect_ok(
            "range at end",
            store.get_range(&key("digits"), 10..20).await
        )
        .is_empty(),
        "a range starting at the end yields no bytes"
    );
    match store.get_range(&key("missing"), 0..1).await {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("get_range of a missing object must be NotFound, got {other:?}"),
    }

    // Listing: by string prefix, sorted, with sizes.
    expect_ok("put", store.put(&key("a/two"), b"22".to_vec()).await);
    expect_ok("put", store.put(&key("a/sub/three"), b"333".to_vec()).await);
    expect_ok("put", store.put(&key("ab"), b"4444".to_vec()).await);
    expect_ok("put", store.put(&key("b/five"), b"55555".to_vec()).await);
    let listed = expect_ok("list", store.list(&key("a/")).await);
    assert_eq!(
        listed,
        vec![
            ObjectMeta {
                key: key("a/one"),
                size: 5
            },
            ObjectMeta {
                key: key("a/sub/three"),
                size: 3
            },
            ObjectMeta {
                key: key("a/two"),
                size: 2
            },
        ],
        "list must return the objects under the prefix, recursively, sorted by key"
    );
    let keys: Vec<String> = expect_ok("list", store.list(&key("a")).await)
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        keys,
        vec![key("a/one"), key("a/sub/three"), key("a/two"), key("ab")],
        "list matches a plain string prefix, not only directories"
    );
    let all = expect_ok("list", store.list(&p).await);
    assert_eq!(all.len(), 7, "everything under the run's prefix: {all:?}");
    assert!(
        all.windows(2).all(|w| w[0].key < w[1].key),
        "list must be sorted by key"
    );
    assert!(
        expect_ok("list", store.list(&key("nothing/")).await).is_empty(),
        "listing an unused prefix is empty, not an error"
    );

    // Create once.
    assert!(
        expect_ok(
            "put_if_absent",
            store.put_if_absent(&key("once"), b"first".to_vec()).await
        ),
        "the first put_if_absent must create"
    );
    assert!(
        !expect_ok(
            "put_if_absent",
            store.put_if_absent(&key("once"), b"second".to_vec()).await
        ),
        "a second put_if_absent must report that the object exists"
    );
    assert_eq!(
        expect_ok("get", store.get(&key("once")).await).as_deref(),
        Some(&b"first"[..]),
        "a losing put_if_absent must not change the object"
    );
    let race = key("race");
    let (r1, r2, r3, r4) = tokio::join!(
        store.put_if_absent(&race, b"1".to_vec()),
        store.put_if_absent(&race, b"2".to_vec()),
        store.put_if_absent(&race, b"3".to_vec()),
        store.put_if_absent(&race, b"4".to_vec()),
    );
    let wins: Vec<bool> = [r1, r2, r3, r4]
        .into_iter()
        .map(|r| expect_ok("racing put_if_absent", r))
        .collect();
    assert_eq!(
        wins.iter().filter(|w| **w).count(),
        1,
        "exactly one of racing put_if_absent calls must win: {wins:?}"
    );

    // Local files both ways.
    let scratch = Scratch::new();
    let upload = scratch.0.join("upload.bin");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&upload, &payload).expect("write a scratch file");
    expect_ok("put_file", store.put_file(&key("file"), &upload).await);
    assert_eq!(
        expect_ok("get", store.get(&key("file")).await).as_deref(),
        Some(&payload[..]),
        "put_file must upload the file's bytes"
    );
    let download = scratch.0.join("nested/download.bin");
    assert!(
        expect_ok(
            "get_to_file",
            store.get_to_file(&key("file"), &download).await
        ),
        "get_to_file of an existing object returns true"
    );
    assert_eq!(
        std::fs::read(&download).expect("read the download"),
        payload,
        "get_to_file must write the object's bytes"
    );
    let absent = scratch.0.join("absent.bin");
    assert!(
        !expect_ok(
            "get_to_file missing",
            store.get_to_file(&key("missing"), &absent).await
        ),
        "get_to_file of a missing object returns false"
    );
    assert!(
        !absent.exists(),
        "get_to_file of a missing object must not create the file"
    );

    // Streams: the chunks in order; nothing visible unless the stream ended.
    let mut chunks = Chunks::of(vec![b"ab".to_vec(), Vec::new(), b"cde".to_vec()], true);
    expect_ok(
        "put_stream",
        store.put_stream(&key("stream"), &mut chunks).await,
    );
    assert_eq!(
        expect_ok("get", store.get(&key("stream")).await).as_deref(),
        Some(&b"abcde"[..]),
        "put_stream must write the chunks in order"
    );
    let mut nothing = Chunks::of(Vec::new(), true);
    expect_ok(
        "put_stream empty",
        store.put_stream(&key("stream-empty"), &mut nothing).await,
    );
    assert_eq!(
        expect_ok("get", store.get(&key("stream-empty")).await),
        Some(Vec::new()),
        "an empty stream makes an empty object"
    );
    let mut broken = Chunks::of(vec![b"new".to_vec()], false);
    assert!(
        store.put_stream(&key("stream"), &mut broken).await.is_err(),
        "put_stream of a stream that fails must fail"
    );
    assert_eq!(
        expect_ok("get", store.get(&key("stream")).await).as_deref(),
        Some(&b"abcde"[..]),
        "a failed put_stream must leave the object as it was"
    );
    let mut broken = Chunks::of(vec![b"new".to_vec()], false);
    assert!(
        store
            .put_stream(&key("stream-never"), &mut broken)
            .await
            .is_err()
    );
    assert_eq!(
        expect_ok("get", store.get(&key("stream-never")).await),
        None,
        "a failed put_stream must create nothing"
    );
    assert_eq!(
        expect_ok("list", store.list(&key("stream")).await)
            .into_iter()
            .map(|o| o.key)
            .collect::<Vec<_>>(),
        [key("stream"), key("stream-empty")],
        "a failed put_stream must leave nothing listed"
    );

    // Prefix deletion.
    expect_ok("delete_prefix", store.delete_prefix(&key("a/")).await);
    assert!(
        expect_ok("list", store.list(&key("a/")).await).is_empty(),
        "delete_prefix must remove everything under the prefix"
    );
    assert!(
        expect_ok("get", store.get(&key("ab")).await).is_some(),
        "delete_prefix(\"a/\") must not touch `ab`"
    );
    expect_ok(
        "delete_prefix missing",
        store.delete_prefix(&key("never/")).await,
    );
    expect_ok("delete_prefix all", store.delete_prefix(&p).await);
    assert!(
        expect_ok("list", store.list(&p).await).is_empty(),
        "delete_prefix of the run's prefix leaves nothing"
    );
}

/// A [`ByteSource`] of given chunks that ends (`Ok(None)`) or fails after them.
pub struct Chunks {
    chunks: std::collections::VecDeque<Vec<u8>>,
    ends: bool,
}

impl Chunks {
    /// `ends`: whether the source ends after its chunks (else it fails, as a producer that
    /// gave up does).
    pub fn of(chunks: Vec<Vec<u8>>, ends: bool) -> Self {
        Chunks {
            chunks: chunks.into(),
            ends,
        }
    }
}

#[async_trait::async_trait]
impl ByteSource for Chunks {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BackendError> {
        match self.chunks.pop_front() {
            Some(chunk) => Ok(Some(chunk)),
            None if self.ends => Ok(None),
            None => Err(BackendError::message(
                orch_core::ErrorCategory::Transient,
                "the producer gave up",
            )),
        }
    }
}

/// A job record with a minimal valid spec, for contract runs.
pub fn sample_job(id: &str, total_tasks: u32) -> JobRecord {
    let spec = serde_json::from_value(serde_json::json!({
        "apiVersion": "orch.dev/v1alpha1",
        "kind": "OrchJob",
        "metadata": {"name": "contract"},
        "spec": {
            "input": {"uri": "/data/in.jsonl"},
            "handler": {"builtin": {"name": "identity"}}
        }
    }))
    .expect("the sample spec is valid");
    JobRecord {
        schema_version: SCHEMA_VERSION,
        id: id.to_string(),
        phase: JobPhase::Running,
        spec,
        input_fingerprint: "sha256:contract".into(),
        total_tasks,
        total_items: u64::from(total_tasks) * 10,
        created_at: 1_000,
        updated_at: 1_000,
        finished_at: None,
        message: None,
        cancel_requested: false,
        next_group: 0,
        manifest_sha256: None,
        version: 0,
    }
}

/// State store contract: creation, reads, optimistic locking and deletion.
pub async fn state_store_contract(store: &dyn StateStore) {
    let id = format!("contract-{}", tag());
    // More tasks than DynamoDB writes in one batch (25) or one transaction (100).
    let n = 120u32;
    let job = sample_job(&id, n);
    let tasks: Vec<TaskRecord> = (0..n).map(|t| TaskRecord::new(&id, t, 10, 1_000)).collect();

    assert!(
        expect_ok("get_job missing", store.get_job(&id).await).is_none(),
        "a missing job reads as None"
    );
    expect_ok("create_job", store.create_job(&job, &tasks).await);
    assert_eq!(
        expect_ok("get_job", store.get_job(&id).await).as_ref(),
        Some(&job),
        "get_job must return the job as created"
    );
    assert!(
        expect_ok("list_jobs", store.list_jobs().await)
            .iter()
            .any(|j| j.id == id),
        "list_jobs must include the new job"
    );
    let listed = expect_ok("list_tasks", store.list_tasks(&id).await);
    assert_eq!(
        listed, tasks,
        "list_tasks must return all tasks, sorted by id"
    );
    assert!(
        expect_ok("get_task missing", store.get_task(&id, n + 5).await).is_none(),
        "a missing task reads as None"
    );

    // Creating again conflicts and leaves the job as it was.
    let mut again = job.clone();
    again.message = Some("second".into());
    match store.create_job(&again, &tasks[..1]).await {
        Err(e) if e.is_conflict() => {}
        other => panic!("creating an existing job must conflict, got {other:?}"),
    }
    assert_eq!(
        expect_ok("get_job", store.get_job(&id).await).as_ref(),
        Some(&job),
        "a conflicting create must not change the job"
    );

    // Conditional task updates.
    let mut task = expect_ok("get_task", store.get_task(&id, 7).await).expect("task 7 exists");
    assert_eq!(task.version, 0);
    let stale = task.clone();
    task.transition(TaskState::Dispatched, 2_000)
        .expect("pending → dispatched is allowed");
    task.attempt = 1;
    task.executor_id = Some("exec-7".into());
    let stored = expect_ok("update_task", store.update_task(&task).await);
    assert_eq!(stored.version, 1, "a successful update bumps the version");
    assert_eq!(stored.state, TaskState::Dispatched);
    let read = expect_ok("get_task", store.get_task(&id, 7).await).expect("task 7 exists");
    assert_eq!(read, stored, "get_task must return the row as stored");
    match store.update_task(&stale).await {
        Err(e) if e.is_conflict() => {}
        other => panic!("an update with a stale version must conflict, got {other:?}"),
    }
    assert_eq!(
        expect_ok("get_task", store.get_task(&id, 7).await).as_ref(),
        Some(&stored),
        "a conflicting update must not change the row"
    );
    let mut next = stored.clone();
    next.transition(TaskState::Running, 3_000)
        .expect("dispatched → running is allowed");
    next.lease_owner = Some("worker-a".into());
    let stored2 = expect_ok("update_task", store.update_task(&next).await);
    assert_eq!(stored2.version, 2);
    let mut ghost = TaskRecord::new(&id, n + 5, 1, 1_000);
    ghost.version = 0;
    match store.update_task(&ghost).await {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("updating a missing task must be NotFound, got {other:?}"),
    }
    let others = expect_ok("list_tasks", store.list_tasks(&id).await);
    assert!(
        others.iter().filter(|t| t.id != 7).all(|t| t.version == 0),
        "an update must touch only its own row"
    );

    // Conditional job updates.
    let mut j = expect_ok("get_job", store.get_job(&id).await).expect("job exists");
    let stale_job = j.clone();
    j.next_group = 3;
    j.phase = JobPhase::Aggregating;
    let stored_job = expect_ok("update_job", store.update_job(&j).await);
    assert_eq!(
        stored_job.version, 1,
        "a successful update bumps the version"
    );
    assert_eq!(
        expect_ok("get_job", store.get_job(&id).await).as_ref(),
        Some(&stored_job)
    );
    match store.update_job(&stale_job).await {
        Err(e) if e.is_conflict() => {}
        other => panic!("a job update with a stale version must conflict, got {other:?}"),
    }
    let missing = sample_job(&format!("contract-missing-{}", tag()), 0);
    match store.update_job(&missing).await {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("updating a missing job must be NotFound, got {other:?}"),
    }

    // Added rows (aggregation tasks) appear after the others; adding them again, as a driver
    // that stopped half-way does, changes nothing, even a row updated since.
    let added: Vec<TaskRecord> = (n..n + 3)
        .map(|t| TaskRecord {
            kind: TaskKind::Merge { level: 1 },
            ..TaskRecord::new(&id, t, 0, 3_000)
        })
        .collect();
    expect_ok("add_tasks", store.add_tasks(&id, &added).await);
    let mut first = expect_ok("get_task", store.get_task(&id, n).await).expect("an added task");
    assert_eq!(first, added[0], "get_task returns an added row as given");
    first
        .transition(TaskState::Dispatched, 3_500)
        .expect("pending → dispatched is allowed");
    let first = expect_ok("update_task", store.update_task(&first).await);
    expect_ok("add_tasks again", store.add_tasks(&id, &added).await);
    let listed = expect_ok("list_tasks", store.list_tasks(&id).await);
    assert_eq!(listed.len(), n as usize + 3, "add_tasks adds each row once");
    assert_eq!(
        listed[n as usize], first,
        "adding again leaves an existing row alone"
    );
    assert_eq!(&listed[n as usize + 1..], &added[1..]);
    match store
        .add_tasks(&format!("contract-missing-{}", tag()), &[])
        .await
    {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("adding tasks to a missing job must be NotFound, got {other:?}"),
    }

    // Deletion removes the job and its tasks; the id can then be reused.
    expect_ok("delete_job", store.delete_job(&id).await);
    assert!(expect_ok("get_job", store.get_job(&id).await).is_none());
    assert!(
        expect_ok("list_tasks", store.list_tasks(&id).await).is_empty(),
        "delete_job must remove the task rows"
    );
    assert!(
        !expect_ok("list_jobs", store.list_jobs().await)
            .iter()
            .any(|j| j.id == id)
    );
    expect_ok("delete_job missing", store.delete_job(&id).await);
    expect_ok(
        "create after delete",
        store.create_job(&job, &tasks[..2]).await,
    );
    assert_eq!(
        expect_ok("list_tasks", store.list_tasks(&id).await).len(),
        2,
        "a re-created job has only its new tasks"
    );
    expect_ok("delete_job", store.delete_job(&id).await);

    // Tasks by state: exactly the tasks in that state, sorted by id, and a task that moves
    // leaves its old state's list.
    let id = format!("contract-states-{}", tag());
    let n = 40u32;
    let tasks: Vec<TaskRecord> = (0..n).map(|t| TaskRecord::new(&id, t, 10, 1_000)).collect();
    expect_ok(
        "create_job",
        store.create_job(&sample_job(&id, n), &tasks).await,
    );
    for t in tasks.iter().filter(|t| t.id % 3 != 0) {
        let mut t = t.clone();
        t.transition(TaskState::Dispatched, 2_000)
            .expect("pending → dispatched is allowed");
        t.attempt = 1;
        let mut t = expect_ok("update_task", store.update_task(&t).await);
        if t.id % 3 == 2 {
            t.transition(TaskState::Running, 3_000)
                .expect("dispatched → running is allowed");
            t.lease_owner = Some("worker-s".into());
            t.lease_expiry = Some(60_000);
            let mut t = expect_ok("update_task", store.update_task(&t).await);
            if t.id % 2 == 0 {
                t.transition(TaskState::Succeeded, 4_000)
                    .expect("running → succeeded is allowed");
                t.lease_owner = None;
                t.lease_expiry = None;
                expect_ok("update_task", store.update_task(&t).await);
            }
        }
    }
    let all = expect_ok("list_tasks", store.list_tasks(&id).await);
    for state in TaskState::ALL {
        let expected: Vec<TaskRecord> = all.iter().filter(|t| t.state == state).cloned().collect();
        let got = tasks_in_state_settled(store, &id, state, &expected).await;
        assert_eq!(
            got, expected,
            "list_tasks_in_state({state}) must return exactly the {state} tasks, sorted by id"
        );
    }
    assert!(
        all.iter().any(|t| t.state == TaskState::Succeeded)
            && all.iter().any(|t| t.state == TaskState::Running)
            && all.iter().any(|t| t.state == TaskState::Dispatched)
            && all.iter().any(|t| t.state == TaskState::Pending),
        "the check above must cover several states"
    );
    assert!(
        expect_ok(
            "list_tasks_in_state missing",
            store
                .list_tasks_in_state(&format!("contract-missing-{}", tag()), TaskState::Pending)
                .await,
        )
        .is_empty(),
        "a missing job has no tasks in any state"
    );
    tasks_since_contract(store, &id, &all).await;
    attempts_contract(store, &id, &all).await;
    claim_contract(store, &id).await;
    expect_ok("delete_job", store.delete_job(&id).await);
    assert!(
        expect_ok("list_attempts", store.list_attempts(&id, None).await).is_empty(),
        "delete_job must remove the attempt records"
    );
    assert!(
        tasks_in_state_settled(store, &id, TaskState::Running, &[])
            .await
            .is_empty(),
        "delete_job must remove the task rows from every state"
    );
}

/// A worker's claim: only of a task dispatched in the claim's group, once; the row it returns
/// is the row as stored (read back the same, and the next conditional write on it wins).
async fn claim_contract(store: &dyn StateStore, job: &str) {
    use orch_core::backend::{Claimed, TaskClaim};
    let mut row = expect_ok("get_task", store.get_task(job, 30).await).expect("task 30");
    row.state = TaskState::Dispatched;
    row.attempt += 1;
    row.group = Some(7);
    row.lease_owner = None;
    row.lease_expiry = None;
    let dispatched = expect_ok("update_task", store.update_task(&row).await);
    let claim = |group: u32, task: u32| TaskClaim {
        job,
        task,
        group,
        worker: "node-9:99",
        now: 9_000,
        lease_expiry: 39_000,
    };
    match expect_ok("claim_task", store.claim_task(&claim(6, 30)).await) {
        Claimed::No(Some(r)) => {
            assert_eq!(r, dispatched, "a claim of another group changes nothing")
        }
        other => panic!("a claim of another group must be refused with the row: {other:?}"),
    }
    let Claimed::Yes(claimed) = expect_ok("claim_task", store.claim_task(&claim(7, 30)).await)
    else {
        panic!("a claim of a task dispatched in its group must succeed");
    };
    let mut expected = dispatched.clone();
    claim(7, 30).apply(&mut expected).expect("apply");
    expected.version = claimed.version;
    assert_eq!(
        claimed, expected,
        "the claim changes what TaskClaim::apply says"
    );
    assert!(claimed.version > dispatched.version, "a claim is a write");
    assert_eq!(
        expect_ok("get_task", store.get_task(job, 30).await).as_ref(),
        Some(&claimed),
        "the claimed row reads back as the claim returned it"
    );
    assert!(
        matches!(
            expect_ok(
                "claim_task",
                store
                    .claim_task(&TaskClaim {
                        worker: "node-8:8",
                        ..claim(7, 30)
                    })
                    .await
            ),
            Claimed::No(Some(ref r)) if r.state == TaskState::Running
        ),
        "a task is claimed once (by another worker: the same one again is a retried request)"
    );
    assert_eq!(
        expect_ok("claim_task", store.claim_task(&claim(7, 9_999)).await),
        Claimed::No(None),
        "a missing task is no claim"
    );
    // The worker's next write (a heartbeat) on the claimed row wins, and keeps the claim.
    let mut beat = claimed.clone();
    beat.items_ok = 3;
    beat.lease_expiry = Some(40_000);
    let stored = expect_ok("update_task", store.update_task(&beat).await);
    let read = expect_ok("get_task", store.get_task(job, 30).await).expect("task 30");
    assert_eq!(read, stored);
    assert_eq!(
        (
            read.state,
            read.worker.as_deref(),
            read.started_at,
            read.lease_expiry
        ),
        (
            TaskState::Running,
            Some("node-9:99"),
            Some(9_000),
            Some(40_000)
        )
    );
}

/// Attempt records: an upsert per (job, task, attempt), listed by task then attempt, of one
/// task or of the job, and never an ended record replaced by an unended one.
async fn attempts_contract(store: &dyn StateStore, job: &str, all: &[TaskRecord]) {
    assert!(
        expect_ok("list_attempts", store.list_attempts(job, None).await).is_empty(),
        "a job starts without attempt records"
    );
    let node = "node-1";
    // A record of a claimed attempt, as a worker of `node` started it at `at`.
    let started = |row: &TaskRecord, node: &str, at: u64| {
        let mut row = row.clone();
        row.started_at = Some(at);
        row.worker = Some(format!("{node}:7"));
        AttemptRecord::of(&row, at)
    };
    // Tasks 12 and 2 (12 sorts after 2 by number, before it as text), a merge task's kind.
    let mut t12 = all[12].clone();
    t12.attempt = 1;
    t12.lease_owner = Some("node-1:7".into());
    let first = started(&t12, node, 5_000);
    expect_ok("put_attempt", store.put_attempt(&first).await);
    let mut t2 = all[2].clone();
    t2.kind = TaskKind::Merge { level: 1 };
    t2.attempt = 1;
    let other = started(&t2, node, 5_000);
    expect_ok("put_attempt", store.put_attempt(&other).await);
    // The first attempt of 12 is lost, its second starts.
    let mut lost = first.clone();
    t12.last_error = Some(TaskError {
        kind: ErrorKind::Infrastructure,
        message: "worker was killed by signal 9".into(),
        attempt: 1,
        limit: None,
    });
    let exec = orch_core::backend::ExecState::Exited {
        code: None,
        signal: Some(9),
    };
    lost.end_by_driver(&t12, Some(&exec), false, 6_000);
    expect_ok("put_attempt", store.put_attempt(&lost).await);
    t12.attempt = 2;
    let second = started(&t12, "node-2", 7_000);
    expect_ok("put_attempt", store.put_attempt(&second).await);
    assert_eq!(
        expect_ok("list_attempts", store.list_attempts(job, Some(12)).await),
        [lost.clone(), second.clone()],
        "list_attempts(task) returns that task's records as written, by attempt"
    );
    assert_eq!(
        expect_ok("list_attempts", store.list_attempts(job, None).await),
        [other.clone(), lost.clone(), second.clone()],
        "list_attempts(None) returns every record of the job, by task then attempt"
    );
    assert!(
        expect_ok("list_attempts", store.list_attempts(job, Some(1)).await).is_empty(),
        "a task without attempts has no records (and 1 is no prefix of 12)"
    );
    // A late start write of the lost attempt is dropped; an end replaces an end.
    expect_ok("put_attempt", store.put_attempt(&first).await);
    let mut succeeded = second.clone();
    succeeded.end_by_worker(&t12, AttemptOutcome::Succeeded, 8_000);
    expect_ok("put_attempt", store.put_attempt(&succeeded).await);
    let mut amended = lost.clone();
    amended.exit_code = Some(137);
    expect_ok("put_attempt", store.put_attempt(&amended).await);
    assert_eq!(
        expect_ok("list_attempts", store.list_attempts(job, Some(12)).await),
        [amended, succeeded],
        "an ended record is replaced by an ended one only"
    );
}

/// `list_tasks_since`: from no cursor, every row; from a cursor, at least every row written
/// after it, as it is now — and, for a store that tracks changes (`full` false), no other.
async fn tasks_since_contract(store: &dyn StateStore, job: &str, all: &[TaskRecord]) {
    let first = expect_ok("list_tasks_since", store.list_tasks_since(job, None).await);
    assert_eq!(
        first.tasks, all,
        "list_tasks_since(None) must return every row, sorted by id"
    );
    let mut changed = all[0].clone();
    changed.items_ok += 1;
    let changed = expect_ok("update_task", store.update_task(&changed).await);
    let next = expect_ok(
        "list_tasks_since",
        store.list_tasks_since(job, first.cursor).await,
    );
    assert!(
        next.tasks.contains(&changed),
        "list_tasks_since(cursor) must return a row written after the cursor, as written"
    );
    assert!(
        next.tasks.windows(2).all(|w| w[0].id < w[1].id),
        "list_tasks_since must sort by id"
    );
    if next.full {
        assert_eq!(next.tasks.len(), all.len(), "a full answer has every row");
    } else {
        // Besides, at most the job's active rows (a store may read those every time).
        let active: Vec<u32> = expect_ok("list_tasks", store.list_tasks(job).await)
            .iter()
            .filter(|t| matches!(t.state, TaskState::Dispatched | TaskState::Running))
            .map(|t| t.id)
            .collect();
        assert!(
            next.tasks
                .iter()
                .all(|t| t.id == changed.id || active.contains(&t.id)),
            "a store that tracks changes returns only the rows written after the cursor \
             (and active ones): {:?}",
            next.tasks.iter().map(|t| t.id).collect::<Vec<_>>()
        );
    }
}

/// The rows of a job as a coordinator's cache keeps them: [`StateStore::list_tasks_since`]
/// applied as `orch_runtime::task_cache::TaskCache` applies it (`TaskChanges::apply_to`).
struct Rows {
    rows: Vec<TaskRecord>,
    cursor: Option<u64>,
}

impl Rows {
    /// One refresh; whether its answer was whole (`full`).
    async fn refresh(&mut self, store: &dyn StateStore, job: &str) -> bool {
        let changes = expect_ok(
            "list_tasks_since",
            store.list_tasks_since(job, self.cursor).await,
        );
        assert!(
            changes.tasks.windows(2).all(|w| w[0].id < w[1].id),
            "list_tasks_since must sort by id"
        );
        let full = changes.full;
        self.cursor = changes.cursor;
        changes.apply_to(&mut self.rows);
        full
    }

    /// Refreshes until the rows are the job's rows as stored, for a few seconds at most (an
    /// index of the active rows may lag its table); panics naming `what` otherwise.
    async fn settle(&mut self, store: &dyn StateStore, job: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.refresh(store, job).await;
            let stored = expect_ok("list_tasks", store.list_tasks(job).await);
            if self.rows == stored {
                return;
            }
            if Instant::now() > deadline {
                let differ: Vec<String> = stored
                    .iter()
                    .filter(|s| !self.rows.contains(s))
                    .map(|s| format!("{} ({}, v{})", s.id, s.state, s.version))
                    .collect();
                panic!("list_tasks_since missed {what}: rows {differ:?} differ from the store's");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `list_tasks_since` with two writers, as a coordinator meets it: `store` is the driver's
/// (it dispatches, fails and cancels rows, adds rows), `other` another process on the same
/// state: a worker claiming, heartbeating and committing dispatched rows, then an `orch
/// retry` that resets an ended row between two writes of the job record (`control::retry`).
/// Refreshes from the cursors `store` hands out must come to every row as stored.
pub async fn tasks_since_two_writers_contract(store: &dyn StateStore, other: &dyn StateStore) {
    use orch_core::backend::{Claimed, TaskClaim};
    let job = format!("contract-since-{}", tag());
    let n = 30u32;
    let tasks: Vec<TaskRecord> = (0..n)
        .map(|t| TaskRecord::new(&job, t, 10, 1_000))
        .collect();
    expect_ok(
        "create_job",
        store.create_job(&sample_job(&job, n), &tasks).await,
    );
    let mut rows = Rows {
        rows: Vec::new(),
        cursor: None,
    };
    rows.settle(store, &job, "the first read").await;

    // The driver dispatches six rows.
    for t in &tasks[..6] {
        let mut t = t.clone();
        t.transition(TaskState::Dispatched, 2_000)
            .expect("pending → dispatched is allowed");
        t.attempt = 1;
        t.group = Some(1);
        expect_ok("update_task", store.update_task(&t).await);
    }
    rows.settle(store, &job, "rows this store dispatched").await;

    // A worker (another store) claims 0, 1 and 2, commits 0, heartbeats 1; 2 is claimed and
    // committed between two refreshes, and 5 claimed only.
    let claim = |task: u32| TaskClaim {
        job: &job,
        task,
        group: 1,
        worker: "node-1:1",
        now: 3_000,
        lease_expiry: 33_000,
    };
    let mut claimed = Vec::new();
    for id in [0, 1, 2, 5] {
        match expect_ok("claim_task", other.claim_task(&claim(id)).await) {
            Claimed::Yes(row) => claimed.push(row),
            no => panic!("a claim of a dispatched row must succeed: {no:?}"),
        }
    }
    let mut done = claimed[0].clone();
    done.transition(TaskState::Succeeded, 4_000)
        .expect("running → succeeded is allowed");
    done.items_ok = 10;
    done.lease_expiry = None;
    expect_ok("commit", other.update_task(&done).await);
    let mut beat = claimed[1].clone();
    beat.items_ok = 4;
    beat.lease_expiry = Some(63_000);
    expect_ok("heartbeat", other.update_task(&beat).await);
    let mut quick = claimed[2].clone();
    quick
        .transition(TaskState::Succeeded, 4_000)
        .expect("running → succeeded is allowed");
    quick.lease_expiry = None;
    expect_ok("commit", other.update_task(&quick).await);
    rows.settle(store, &job, "a worker's claims, heartbeat and commits")
        .await;

    // The worker of 5 commits; the driver takes 3 for lost (retrying), cancels pending 10,
    // adds two rows (the aggregation's) — all between the same two refreshes.
    let mut five = claimed[3].clone();
    five.transition(TaskState::Succeeded, 5_000)
        .expect("running → succeeded is allowed");
    five.lease_expiry = None;
    expect_ok("commit", other.update_task(&five).await);
    let mut lost = expect_ok("get_task", store.get_task(&job, 3).await).expect("task 3");
    lost.transition(TaskState::Retrying, 5_000)
        .expect("dispatched → retrying is allowed");
    expect_ok("update_task", store.update_task(&lost).await);
    let mut cancelled = expect_ok("get_task", store.get_task(&job, 10).await).expect("task 10");
    cancelled
        .transition(TaskState::Cancelled, 5_000)
        .expect("pending → cancelled is allowed");
    expect_ok("update_task", store.update_task(&cancelled).await);
    let added: Vec<TaskRecord> = (n..n + 2)
        .map(|t| TaskRecord {
            kind: TaskKind::Merge { level: 1 },
            ..TaskRecord::new(&job, t, 0, 5_000)
        })
        .collect();
    expect_ok("add_tasks", store.add_tasks(&job, &added).await);
    rows.settle(
        store,
        &job,
        "a commit, and rows this store failed, cancelled and added",
    )
    .await;

    // A writer the driver does not know of (the previous driver, whose lease this one took
    // over) cancels pending 11; the driver's own write of its stale copy loses its condition.
    // The conflict may be dropped by its caller: the refresh must read the row anyway.
    let mut stale = expect_ok("get_task", store.get_task(&job, 11).await).expect("task 11");
    let mut gone = stale.clone();
    gone.transition(TaskState::Cancelled, 5_500)
        .expect("pending → cancelled is allowed");
    let gone = expect_ok("update_task", other.update_task(&gone).await);
    stale
        .transition(TaskState::Dispatched, 5_500)
        .expect("pending → dispatched is allowed");
    stale.attempt = 1;
    stale.group = Some(1);
    match store.update_task(&stale).await {
        Err(BackendError::Conflict(_)) => {}
        other => panic!("a write of a stale row must conflict: {other:?}"),
    }
    rows.settle(
        store,
        &job,
        "a row another writer changed under a conflicting write",
    )
    .await;
    assert_eq!(
        rows.rows.iter().find(|r| r.id == 11),
        Some(&gone),
        "the other writer's row"
    );

    // `orch retry` from elsewhere: the job record, the reset of an ended row, the record again.
    let record = expect_ok("get_job", other.get_job(&job).await).expect("the job");
    let record = expect_ok("update_job", other.update_job(&record).await);
    rows.settle(store, &job, "a job record written elsewhere")
        .await;
    let mut reset = expect_ok("get_task", other.get_task(&job, 0).await).expect("task 0");
    reset.state = TaskState::Pending;
    reset.free_attempts = reset.attempt;
    expect_ok("update_task", other.update_task(&reset).await);
    expect_ok("update_job", other.update_job(&record).await);
    rows.settle(
        store,
        &job,
        "a row reset elsewhere, then the job record written",
    )
    .await;
    // And its own job writes do not hide another's, nor cost a full read.
    let record = expect_ok("get_job", store.get_job(&job).await).expect("the job");
    expect_ok("update_job", store.update_job(&record).await);
    let tracks = rows.cursor.is_some();
    let full = rows.refresh(store, &job).await;
    assert!(
        !(tracks && full),
        "a store that tracks changes must not read everything again after its own job write"
    );
    rows.settle(store, &job, "nothing new").await;
    expect_ok("delete_job", store.delete_job(&job).await);
}

/// `list_tasks_in_state`, asked again for a few seconds until it returns `expected`: an index
/// on the state may lag its table (DynamoDB's GSIs are eventually consistent). Returns the last
/// answer.
async fn tasks_in_state_settled(
    store: &dyn StateStore,
    job: &str,
    state: TaskState,
    expected: &[TaskRecord],
) -> Vec<TaskRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = expect_ok(
            "list_tasks_in_state",
            store.list_tasks_in_state(job, state).await,
        );
        if got == expected || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the queue contract asks a factory for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue's name; unique per contract run.
    pub name: String,
    /// Dead-letter after this many receives, into the queue named `{name}-dlq`.
    pub max_receives: Option<u32>,
}

/// Queue contract: delays, visibility timeouts and redelivery, delete, extend, dead-letter.
///
/// `make` opens (creating if needed) the queue described by its argument; it is called for the
/// dead-letter queue too (`{name}-dlq`, no `max_receives`). `tick` is the shortest delay and
/// visibility the backend honours exactly: 300 ms suits the embedded queue, whole seconds suit
/// SQS. Waits are polls bounded by a few ticks, so slow backends do not make the suite flaky.
pub async fn queue_contract<F, Fut>(make: F, tick: Duration)
where
    F: Fn(QueueSpec) -> Fut,
    Fut: Future<Output = Box<dyn Queue>>,
{
    let name = format!("contract-{}", tag());
    let spec = |suffix: &str, max_receives| QueueSpec {
        name: format!("{name}-{suffix}"),
        max_receives,
    };
    let patience = tick * 8 + Duration::from_secs(2);
    let long = tick * 20 + Duration::from_secs(30);

    // Delay: not visible before it, visible after it.
    let q = make(spec("delay", None)).await;
    let before_send = Instant::now();
    let id = expect_ok("send", q.send("delayed", tick).await);
    let early = expect_ok("receive", q.receive(10, long).await);
    // Only meaningful when the receive surely ran before the delay was over.
    if before_send.elapsed() < tick {
        assert!(
            early.is_empty(),
            "a delayed message must not be visible before its delay: {early:?}"
        );
    }
    let got = receive_within(&*q, 10, long, patience).await;
    // Slack for clocks of millisecond resolution.
    assert!(
        before_send.elapsed() + Duration::from_millis(10) >= tick,
        "the delayed message arrived after {:?}, before its delay {tick:?}",
        before_send.elapsed()
    );
    assert_eq!(got.len(), 1, "one message was sent: {got:?}");
    assert_eq!(got[0].id, id, "the message id is the one send returned");
    assert_eq!(got[0].body, "delayed");
    assert_eq!(got[0].receive_count, 1, "first delivery counts 1");
    expect_ok("delete", q.delete(&got[0].receipt).await);

    // Batches: at most `max`, each message once.
    let q = make(spec("batch", None)).await;
    for i in 0..3 {
        expect_ok("send", q.send(&format!("m{i}"), Duration::ZERO).await);
    }
    let first = receive_within(&*q, 2, long, patience).await;
    assert!(
        !first.is_empty() && first.len() <= 2,
        "receive(2) returns 1..=2 messages: {first:?}"
    );
    let mut bodies: Vec<String> = first.iter().map(|m| m.body.clone()).collect();
    let deadline = Instant::now() + patience;
    while bodies.len() < 3 && Instant::now() < deadline {
        let more = expect_ok("receive", q.receive(2, long).await);
        bodies.extend(more.iter().map(|m| m.body.clone()));
        for m in &more {
            expect_ok("delete", q.delete(&m.receipt).await);
        }
    }
    for m in &first {
        expect_ok("delete", q.delete(&m.receipt).await);
    }
    bodies.sort();
    assert_eq!(
        bodies,
        ["m0", "m1", "m2"],
        "every message is received exactly once while hidden"
    );

    // Visibility timeout: hidden, then redelivered with a new receipt and count 2; a stale
    // receipt neither deletes nor extends; the current one deletes.
    let q = make(spec("visibility", None)).await;
    expect_ok("send", q.send("work", Duration::ZERO).await);
    let before_first = Instant::now();
    let first = receive_within(&*q, 1, tick, patience).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    let hidden = expect_ok("receive", q.receive(1, long).await);
    // Only meaningful when the second receive surely ran inside the timeout; on a machine so
    // slow that it did not, what it received is the redelivery.
    if before_first.elapsed() < tick {
        assert!(
            hidden.is_empty(),
            "a received message must stay hidden during its visibility timeout: {hidden:?}"
        );
    }
    let second = if hidden.is_empty() {
        receive_within(&*q, 1, long, patience).await
    } else {
        hidden
    };
    assert_eq!(
        second.len(),
        1,
        "the message must come back after the timeout"
    );
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].receive_count, 2, "a redelivery counts 2");
    assert_ne!(
        second[0].receipt, first[0].receipt,
        "a redelivery has a new receipt"
    );
    expect_ok(
        "delete with a stale receipt",
        q.delete(&first[0].receipt).await,
    );
    match q.extend(&first[0].receipt, tick).await {
        Err(e) if e.is_conflict() => {}
        other => panic!("extend with a stale receipt must conflict, got {other:?}"),
    }
    expect_ok("delete", q.delete(&second[0].receipt).await);
    expect_ok("delete twice", q.delete(&second[0].receipt).await);
    tokio::time::sleep(tick * 2).await;
    let after_delete = expect_ok("receive", q.receive(10, long).await);
    assert!(
        after_delete.is_empty(),
        "a deleted message must never come back: {after_delete:?}"
    );

    // Extend keeps a message hidden past its original timeout.
    let q = make(spec("extend", None)).await;
    expect_ok("send", q.send("slow", Duration::ZERO).await);
    let got = receive_within(&*q, 1, tick, patience).await;
    assert_eq!(got.len(), 1);
    expect_ok("extend", q.extend(&got[0].receipt, long).await);
    tokio::time::sleep(tick * 2).await;
    let during = expect_ok("receive", q.receive(1, long).await);
    assert!(
        during.is_empty(),
        "an extended message must stay hidden: {during:?}"
    );
    expect_ok("delete", q.delete(&got[0].receipt).await);

    // Dead-letter after max receives.
    let q = make(spec("poison", Some(2))).await;
    let dlq = make(QueueSpec {
        name: format!("{name}-poison-dlq"),
        max_receives: None,
    })
    .await;
    let id = expect_ok("send", q.send("poison", Duration::ZERO).await);
    for n in 1..=2 {
        let got = receive_within(&*q, 1, Duration::ZERO, patience).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].receive_count, n, "delivery {n}");
    }
    let third = expect_ok("receive", q.receive(1, Duration::ZERO).await);
    assert!(
        third.is_empty(),
        "a message received max_receives times must not be delivered again: {third:?}"
    );
    let dead = receive_within(&*dlq, 1, long, patience).await;
    assert_eq!(
        dead.len(),
        1,
        "the message must reach the dead-letter queue"
    );
    assert_eq!(dead[0].id, id, "the dead letter keeps its id");
    assert_eq!(dead[0].body, "poison");
    expect_ok("delete dead letter", dlq.delete(&dead[0].receipt).await);
}

/// Polls until at least one message arrives or `patience` runs out (then returns empty).
async fn receive_within(
    q: &dyn Queue,
    max: usize,
    visibility: Duration,
    patience: Duration,
) -> Vec<Message> {
    let deadline = Instant::now() + patience;
    loop {
        let got = expect_ok("receive", q.receive(max, visibility).await);
        if !got.is_empty() || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Rate-limit store contract: creation once, conditional replacement by version, the write
/// count, listing, and concurrent read-modify-write updates that lose nothing.
pub async fn rate_limit_store_contract(store: &dyn RateLimitStore) {
    use orch_core::ratelimit::{Bucket, LeaseRequest};
    let key = format!("ns/contract/{}", tag());
    assert!(expect_ok("get a missing bucket", store.get_bucket(&key).await).is_none());

    let created = expect_ok(
        "create",
        store.put_bucket(&Bucket::new(&key, 10.0, 4, 1_000)).await,
    );
    assert_eq!((created.version, created.writes), (1, 1), "{created:?}");
    match store.put_bucket(&Bucket::new(&key, 99.0, 1, 1_000)).await {
        Err(BackendError::Conflict(_)) => {}
        other => panic!("a second creation must conflict, got {other:?}"),
    }
    let read = expect_ok("read", store.get_bucket(&key).await).expect("the bucket");
    assert_eq!(read, created, "a bucket reads back as written");

    let mut next = read.clone();
    next.configure(20.0, 8, 2_000);
    let stored = expect_ok("replace", store.put_bucket(&next).await);
    assert_eq!((stored.version, stored.writes, stored.rate), (2, 2, 20.0));
    // The version just replaced is stale now.
    match store.put_bucket(&next).await {
        Err(BackendError::Conflict(_)) => {}
        other => panic!("a stale version must conflict, got {other:?}"),
    }

    // Eight holders granting at once through read-modify-write: every lease lands.
    let holders: Vec<String> = (0..8).map(|i| format!("w{i}")).collect();
    let grants = holders.iter().map(|h| {
        let key = key.clone();
        async move {
            let req = LeaseRequest {
                holder: h.clone(),
                job: "j".into(),
                weight: 1,
                demand: None,
                used: 3,
                throttled: false,
            };
            expect_ok(
                "grant",
                update_bucket(store, &key, None, |b| b.grant(&req, 3_000)).await,
            )
        }
    });
    futures::future::join_all(grants).await;
    let after = expect_ok("read", store.get_bucket(&key).await).expect("the bucket");
    assert_eq!(after.leases.len(), 8, "{after:?}");
    assert_eq!(
        after.used, 24,
        "every holder's usage counted once: {after:?}"
    );
    assert_eq!(after.writes, after.version, "{after:?}");

    let listed = expect_ok("list", store.list_buckets().await);
    assert!(listed.iter().any(|b| b.key == key), "{listed:?}");
    // Updating a bucket that does not exist, without a way to make it, is NotFound.
    match update_bucket(store, &format!("{key}-missing"), None, |_| ()).await {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Audit log contract: entries come back per namespace, exactly as appended, oldest first
/// (by their time: replicas append with their own clocks); appending the same entry twice
/// keeps both (an audit log records, it does not deduplicate).
pub async fn audit_log_contract(log: &dyn AuditLog) {
    let entry = |at: u64, namespace: &str, action: &str| AuditEntry {
        at,
        namespace: namespace.into(),
        name: "reviews".into(),
        uid: "0b8e-uid".into(),
        job: "reviews-1a2b3c4d".into(),
        policy: "team-a".into(),
        action: action.into(),
        detail: format!("{action} at {at}"),
    };
    let namespace = format!("contract-{}", std::process::id());
    assert!(log.entries(&namespace).await.unwrap().is_empty());
    let written = [
        entry(1_000, &namespace, "Submitted"),
        entry(2_000, &namespace, "Paused"),
        entry(1_500, &namespace, "Resumed"),
        entry(1_500, &namespace, "Resumed"),
    ];
    let elsewhere = entry(1_200, &format!("{namespace}-b"), "PolicyDenied");
    log.append(&written[0]).await.unwrap();
    log.append(&elsewhere).await.unwrap();
    for e in &written[1..] {
        log.append(e).await.unwrap();
    }
    let mut oldest_first = written.to_vec();
    oldest_first.sort_by_key(|e| e.at);
    assert_eq!(log.entries(&namespace).await.unwrap(), oldest_first);
    assert_eq!(
        log.entries(&format!("{namespace}-b")).await.unwrap(),
        [elsewhere]
    );
}
