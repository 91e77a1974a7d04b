//! What a coordinator's refresh of a job's rows asks DynamoDB, recorded on the wire by moto's
//! request recorder: after the first full read, a refresh reads the job item, the job's
//! active tasks from the `by-state` index and, by key, the rows that left them — never the
//! job's partition (docs/aws.md, "What a coordinator reads per tick"). Counts, not timings.
//!
//! Its own test binary on purpose: the binary's moto server then serves this test alone, so the
//! recording holds only its requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_dynamodb::Client;
use orch_aws::dynamodb::{DynamoStateStore, Keys, create_table};
use orch_core::backend::{Claimed, StateStore, TaskClaim};
use orch_core::model::{TaskRecord, TaskState};
use orch_testkit::contract::sample_job;
use orch_testkit::moto;

/// The DynamoDB requests recorded: (operation, request body as JSON).
fn recorded(endpoint: &str) -> Vec<(String, serde_json::Value)> {
    moto::recording(endpoint)
        .into_iter()
        .filter_map(|rec| {
            let headers = rec["headers"].as_object()?;
            let target = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target"))?
                .1
                .as_str()?;
            let op = target.strip_prefix("DynamoDB_20120810.")?.to_string();
            let body = serde_json::from_str(rec["body"].as_str()?).ok()?;
            Some((op, body))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_reads_the_active_tasks_and_the_rows_that_changed() {
    if !orch_testkit::components::moto() {
        return;
    }
    const TASKS: u32 = 300;
    let endpoint = moto::moto().endpoint.clone();
    let client = Client::new(&moto::sdk_config().await);
    let table = moto::unique("refresh");
    create_table(&client, &table).await.unwrap();
    let keys = Keys::for_storage("s3://bucket/orch/").unwrap();
    let driver = DynamoStateStore::new(client.clone(), &table, keys.clone());
    let worker = DynamoStateStore::new(client, &table, keys.clone());
    let job = "refreshed";
    let tasks: Vec<TaskRecord> = (0..TASKS).map(|t| TaskRecord::new(job, t, 10, 1)).collect();
    driver
        .create_job(&sample_job(job, TASKS), &tasks)
        .await
        .unwrap();
    let _driving = driver.drive(job);

    // The first read is whole; the driver dispatches ten rows and reads them back.
    let first = driver.list_tasks_since(job, None).await.unwrap();
    assert!(first.full);
    assert_eq!(first.tasks.len(), TASKS as usize);
    for t in &tasks[..10] {
        let mut t = t.clone();
        t.transition(TaskState::Dispatched, 2).unwrap();
        t.attempt = 1;
        t.group = Some(1);
        driver.update_task(&t).await.unwrap();
    }
    let dispatched = driver.list_tasks_since(job, first.cursor).await.unwrap();
    assert!(!dispatched.full);
    assert_eq!(dispatched.tasks.len(), 10);

    // Three rows change: a worker claims and commits 3 and 7 (they leave the active set),
    // and the driver cancels pending 200.
    let mut changed = Vec::new();
    for id in [3, 7] {
        let claim = TaskClaim {
            job,
            task: id,
            group: 1,
            worker: "node:1",
            now: 3,
            lease_expiry: 30_003,
        };
        let Claimed::Yes(mut row) = worker.claim_task(&claim).await.unwrap() else {
            panic!("claim of task {id}");
        };
        row.transition(TaskState::Succeeded, 4).unwrap();
        row.lease_expiry = None;
        changed.push(worker.update_task(&row).await.unwrap());
    }
    let mut cancelled = tasks[200].clone();
    cancelled.transition(TaskState::Cancelled, 4).unwrap();
    changed.push(driver.update_task(&cancelled).await.unwrap());

    moto::recorder(&endpoint, "reset");
    moto::recorder(&endpoint, "start");
    let next = driver
        .list_tasks_since(job, dispatched.cursor)
        .await
        .unwrap();
    moto::recorder(&endpoint, "stop");

    assert!(!next.full);
    for row in &changed {
        assert!(next.tasks.contains(row), "{} missing: {next:?}", row.id);
    }
    // The eight rows still dispatched, and the three that changed.
    assert_eq!(next.tasks.len(), 11, "{next:?}");

    let requests = recorded(&endpoint);
    let ops: Vec<&str> = requests.iter().map(|(op, _)| op.as_str()).collect();
    let summary = format!("{ops:?}");
    // The job item, once (nobody read it for this store since the last refresh).
    assert_eq!(
        ops.iter().filter(|op| **op == "GetItem").count(),
        1,
        "{summary}"
    );
    // One query, of the index's partition of the job's active tasks; none of the job's own.
    let queries: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|(op, _)| op == "Query")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(queries.len(), 1, "{summary}");
    assert_eq!(queries[0]["IndexName"], "by-state", "{:?}", queries[0]);
    assert_eq!(
        queries[0]["ExpressionAttributeValues"][":pk"]["S"],
        "bucket/orch/JOB#refreshed#active"
    );
    // The rows that left the index, by key; the driver's own write is known without a read.
    let batches: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|(op, _)| op == "BatchGetItem")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(batches.len(), 1, "{summary}");
    let asked = &batches[0]["RequestItems"][table.as_str()];
    assert_eq!(asked["ConsistentRead"], true);
    let mut keys: Vec<&str> = asked["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["sk"]["S"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["TASK#000003", "TASK#000007"]);
    assert_eq!(requests.len(), 3, "nothing else: {summary}");

    // Nothing changed: the job item and the index, and no read by key.
    moto::recorder(&endpoint, "reset");
    moto::recorder(&endpoint, "start");
    let quiet = driver.list_tasks_since(job, next.cursor).await.unwrap();
    moto::recorder(&endpoint, "stop");
    assert!(!quiet.full);
    assert_eq!(quiet.tasks.len(), 8);
    let ops: Vec<String> = recorded(&endpoint).into_iter().map(|(op, _)| op).collect();
    assert_eq!(ops, ["GetItem", "Query"]);
}
