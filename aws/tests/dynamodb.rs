//! The DynamoDB StateStore against a real moto server: the backend contract, batching and
//! pagination at scale, the `by-state` index, leases, optimistic locking under a race, half-done
//! creations and deletions, the table helper, and a run through a fault-injecting proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use orch_testkit::{fault_proxy, moto};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, BillingMode, ProjectionType};
use fault_proxy::{FaultProxy, Faults};
use orch_aws::dynamodb::{DynamoStateStore, IncompleteJob, Keys, create_table};
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, StateStore};
use orch_core::model::{Batch, TaskRecord, TaskState};
use orch_testkit::contract::{sample_job, state_store_contract, tasks_since_two_writers_contract};
use orch_testkit::serial_proxy::SerialProxy;

async fn client() -> Client {
    Client::new(&moto::sdk_config().await)
}

/// A store over a fresh table of its own.
async fn fresh_store() -> DynamoStateStore {
    let client = client().await;
    let table = moto::unique("orch-state");
    create_table(&client, &table).await.unwrap();
    DynamoStateStore::new(client, table, Keys::default())
}

fn tasks(job: &str, n: u32) -> Vec<TaskRecord> {
    (0..n).map(|t| TaskRecord::new(job, t, 10, 1_000)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meets_the_state_store_contract() {
    if !orch_testkit::components::moto() {
        return;
    }
    let store = fresh_store().await;
    state_store_contract(&store).await;
    // Twice on the same table: the contract must not depend on a fresh backend.
    state_store_contract(&store).await;
}

/// The contract again with a store that drives its jobs, so that `list_tasks_since` reads
/// only what changed; and with a second store on the table (a worker, `orch retry`) writing
/// between its refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driving_store_meets_the_contract_and_sees_every_writer() {
    if !orch_testkit::components::moto() {
        return;
    }
    let driver = fresh_store().await.driving_every_job();
    state_store_contract(&driver).await;
    let other = DynamoStateStore::new(driver.client().clone(), driver.table(), Keys::default());
    tasks_since_two_writers_contract(&driver, &other).await;
    // The same through `drive`, the platform's way: a store that does not drive the job reads
    // everything and hands out no cursor.
    let store = DynamoStateStore::new(driver.client().clone(), driver.table(), Keys::default());
    store
        .create_job(&sample_job("driven", 3), &tasks("driven", 3))
        .await
        .unwrap();
    let undriven = store.list_tasks_since("driven", None).await.unwrap();
    assert!(undriven.full && undriven.cursor.is_none());
    let driving = store.drive("driven");
    let first = store.list_tasks_since("driven", None).await.unwrap();
    assert!(first.full && first.cursor.is_some());
    let next = store
        .list_tasks_since("driven", first.cursor)
        .await
        .unwrap();
    assert!(!next.full && next.tasks.is_empty(), "{next:?}");
    drop(driving);
    let after = store.list_tasks_since("driven", next.cursor).await.unwrap();
    assert!(after.full && after.cursor.is_none());
    tasks_since_two_writers_contract(&other.clone().driving_every_job(), &store).await;
}

/// Two storages (two tenants of one operator) in one table: each store sees only its own jobs,
/// the same job id in both is two jobs, and every partition key of one begins with its
/// storage, which is what an IAM `dynamodb:LeadingKeys` condition holds a tenant's workers to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storages_sharing_a_table_keep_their_jobs_apart() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = client().await;
    let table = moto::unique("orch-tenants");
    create_table(&client, &table).await.unwrap();
    let store = |storage: &str| {
        let keys = Keys::for_storage(storage).unwrap();
        DynamoStateStore::new(client.clone(), &table, keys)
    };
    let a = store("s3://bucket/orch/team-a/");
    let b = store("s3://bucket/orch/team-b/");
    state_store_contract(&a).await;
    a.create_job(&sample_job("same", 3), &tasks("same", 3))
        .await
        .unwrap();
    b.create_job(&sample_job("same", 2), &tasks("same", 2))
        .await
        .unwrap();
    assert_eq!(a.list_tasks("same").await.unwrap().len(), 3);
    assert_eq!(b.list_tasks("same").await.unwrap().len(), 2);
    let ids = |jobs: Vec<orch_core::model::JobRecord>| -> Vec<String> {
        jobs.into_iter().map(|j| j.id).collect()
    };
    assert_eq!(ids(b.list_jobs().await.unwrap()), vec!["same".to_string()]);
    assert!(ids(a.list_jobs().await.unwrap()).contains(&"same".to_string()));
    b.delete_job("same").await.unwrap();
    assert_eq!(a.list_tasks("same").await.unwrap().len(), 3);

    let items = client.scan().table_name(&table).send().await.unwrap();
    for item in items.items() {
        let pk = item["pk"].as_s().unwrap();
        assert!(pk.starts_with("bucket/orch/team-a/"), "{pk}");
        for index_key in ["gsi1pk", "gsi2pk"] {
            if let Some(value) = item.get(index_key) {
                assert!(
                    value.as_s().unwrap().starts_with("bucket/orch/team-a/"),
                    "{item:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meets_the_rate_limit_store_contract() {
    if !orch_testkit::components::moto() {
        return;
    }
    // Through the one-request-at-a-time proxy: the contract races writers on one bucket, and
    // moto's conditional writes are not atomic (orch_testkit::serial_proxy).
    let serial = SerialProxy::start(&moto::moto().endpoint).await;
    let table = moto::unique("orch-rl");
    create_table(&client().await, &table).await.unwrap();
    let store = DynamoStateStore::new(
        Client::new(&moto::sdk_config_for(&serial.endpoint).await),
        &table,
        Keys::default(),
    );
    orch_testkit::contract::rate_limit_store_contract(&store).await;
    orch_testkit::contract::rate_limit_store_contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meets_the_audit_log_contract_and_a_purge_leaves_the_history() {
    if !orch_testkit::components::moto() {
        return;
    }
    let store = fresh_store().await;
    orch_testkit::contract::audit_log_contract(&store).await;
    // The entries live apart from the job's partition: deleting the job keeps them.
    let job = sample_job("audited", 2);
    store.create_job(&job, &tasks("audited", 2)).await.unwrap();
    let entry = orch_core::model::AuditEntry {
        at: 5,
        namespace: "team-audit".into(),
        name: "audited".into(),
        uid: "u".into(),
        job: "audited".into(),
        policy: "p".into(),
        action: "Purged".into(),
        detail: "the job's artifacts were deleted".into(),
    };
    orch_core::backend::AuditLog::append(&store, &entry)
        .await
        .unwrap();
    store.delete_job("audited").await.unwrap();
    assert_eq!(
        orch_core::backend::AuditLog::entries(&store, "team-audit")
            .await
            .unwrap(),
        [entry]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_thousands_of_tasks_in_batches_and_reads_them_back_page_by_page() {
    if !orch_testkit::components::moto() {
        return;
    }
    let store = fresh_store().await;
    let id = "many-tasks";
    let n = 1_234u32;
    // About 1 KB per task: the whole job is over 1 MB, which is where DynamoDB (and moto)
    // cut a query page by themselves.
    let tasks: Vec<TaskRecord> = tasks(id, n)
        .into_iter()
        .map(|mut t| {
            t.batch = Some(Batch {
                id: t.id,
                source: format!("s3://bucket/input/{}", "x".repeat(1_000)),
                start: u64::from(t.id) * 100,
                end: u64::from(t.id) * 100 + 100,
                items: 10,
                first_item: u64::from(t.id) * 10,
            });
            t
        })
        .collect();
    store.create_job(&sample_job(id, n), &tasks).await.unwrap();

    // The size-limited pages really happen: one raw query does not return everything.
    let first_page = store
        .client()
        .query()
        .table_name(store.table())
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("JOB#{id}")))
        .send()
        .await
        .unwrap();
    assert!(
        first_page.last_evaluated_key.is_some() && first_page.items().len() < n as usize,
        "expected moto to cut the first page at 1 MB, got {} items",
        first_page.items().len()
    );

    assert_eq!(store.list_tasks(id).await.unwrap(), tasks);
    // Small pages (many round trips), through the table and through the index.
    let paged = store.clone().with_page_size(97);
    assert_eq!(paged.list_tasks(id).await.unwrap(), tasks);
    assert_eq!(
        paged
            .list_tasks_in_state(id, TaskState::Pending)
            .await
            .unwrap(),
        tasks
    );
    assert!(paged.list_jobs().await.unwrap().iter().any(|j| j.id == id));

    // Deletion goes through the same batches.
    paged.delete_job(id).await.unwrap();
    assert!(store.list_tasks(id).await.unwrap().is_empty());
    assert!(store.get_job(id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_by_state_and_leases_follow_every_write() {
    if !orch_testkit::components::moto() {
        return;
    }
    let store = fresh_store().await;
    let id = "states";
    store
        .create_job(&sample_job(id, 30), &tasks(id, 30))
        .await
        .unwrap();
    let mut expected: HashMap<TaskState, Vec<u32>> = HashMap::new();
    for t in store.list_tasks(id).await.unwrap() {
        let mut t = t;
        let target = match t.id % 5 {
            0 => TaskState::Pending,
            1 => TaskState::Dispatched,
            2 | 3 => TaskState::Running,
            _ => TaskState::Succeeded,
        };
        if target != TaskState::Pending {
            t.transition(TaskState::Dispatched, 2_000).unwrap();
            t = store.update_task(&t).await.unwrap();
        }
        if matches!(target, TaskState::Running | TaskState::Succeeded) {
            t.transition(TaskState::Running, 3_000).unwrap();
            t.lease_owner = Some("w".into());
            // Tasks 2, 7, 12, … hold a lease that expired at 5 000; 3, 8, … one until 50 000.
            t.lease_expiry = Some(if t.id % 5 == 2 { 5_000 } else { 50_000 });
            t = store.update_task(&t).await.unwrap();
        }
        if target == TaskState::Succeeded {
            t.transition(TaskState::Succeeded, 4_000).unwrap();
            t.lease_owner = None;
            t.lease_expiry = None;
            store.update_task(&t).await.unwrap();
        }
        expected.entry(target).or_default().push(t.id);
    }
    for state in TaskState::ALL {
        let got: Vec<u32> = store
            .list_tasks_in_state(id, state)
            .await
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(
            got,
            expected.get(&state).cloned().unwrap_or_default(),
            "{state}"
        );
    }

    // `leaseExpiry` is on the item exactly while the record has a lease.
    let lease_of = |task: u32| {
        let store = store.clone();
        async move {
            let item = store
                .client()
                .get_item()
                .table_name(store.table())
                .key("pk", AttributeValue::S(format!("JOB#{id}")))
                .key("sk", AttributeValue::S(format!("TASK#{task:06}")))
                .send()
                .await
                .unwrap()
                .item
                .unwrap();
            item.get("leaseExpiry")
                .map(|v| v.as_n().unwrap().parse::<u64>().unwrap())
        }
    };
    assert_eq!(lease_of(2).await, Some(5_000));
    assert_eq!(lease_of(3).await, Some(50_000));
    assert_eq!(lease_of(4).await, None, "a finished task has no lease");
    assert_eq!(lease_of(0).await, None, "a pending task has no lease");

    let expired: Vec<u32> = store
        .expired_leases(id, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(expired, [2, 7, 12, 17, 22, 27]);
    assert_eq!(store.expired_leases(id, 60_000).await.unwrap().len(), 12);
    assert!(store.expired_leases(id, 1_000).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_racing_from_the_same_version_have_exactly_one_winner() {
    if !orch_testkit::components::moto() {
        return;
    }
    // moto's conditional writes are not atomic under concurrency: one request at a time (see
    // orch_testkit::serial_proxy).
    let serial = SerialProxy::start(&moto::moto().endpoint).await;
    let via_proxy = || async { Client::new(&moto::sdk_config_for(&serial.endpoint).await) };
    let table = moto::unique("orch-race");
    create_table(&client().await, &table).await.unwrap();
    let a = DynamoStateStore::new(via_proxy().await, &table, Keys::default());
    // A second client: separate connections, as a second process would have.
    let b = DynamoStateStore::new(via_proxy().await, &table, Keys::default());
    let id = "race";
    a.create_job(&sample_job(id, 1), &tasks(id, 1))
        .await
        .unwrap();

    // Pairs from one version: exactly one wins, and the winner's write is what is stored.
    for round in 0..10u64 {
        let base = a.get_task(id, 0).await.unwrap().unwrap();
        let mut x = base.clone();
        x.items_ok = 1_000 + round;
        let mut y = base.clone();
        y.items_ok = 2_000 + round;
        let (rx, ry) = tokio::join!(a.update_task(&x), b.update_task(&y));
        let winner = match (rx, ry) {
            (Ok(w), Err(e)) | (Err(e), Ok(w)) => {
                assert!(e.is_conflict(), "the loser must see a conflict: {e}");
                w
            }
            other => panic!("exactly one of two racing updates must win: {other:?}"),
        };
        assert_eq!(winner.version, base.version + 1);
        assert_eq!(a.get_task(id, 0).await.unwrap().unwrap(), winner);
    }

    // Many read-modify-write loops: no increment is lost.
    let wins = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for worker in 0..6 {
        let store = if worker % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        let wins = Arc::clone(&wins);
        handles.push(tokio::spawn(async move {
            for _ in 0..10 {
                let mut t = store.get_task("race", 0).await.unwrap().unwrap();
                t.items_failed += 1;
                match store.update_task(&t).await {
                    Ok(_) => {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let last = a.get_task(id, 0).await.unwrap().unwrap();
    let wins = wins.load(Ordering::SeqCst);
    assert!(wins > 0);
    assert_eq!(last.items_failed, wins, "an update was lost");
    assert_eq!(last.version, 10 + wins);

    // Jobs race the same way.
    let job = a.get_job(id).await.unwrap().unwrap();
    let mut x = job.clone();
    x.next_group = 1;
    let mut y = job.clone();
    y.next_group = 2;
    let (rx, ry) = tokio::join!(a.update_job(&x), b.update_job(&y));
    assert!(
        rx.is_ok() != ry.is_ok(),
        "exactly one job update wins: {rx:?} {ry:?}"
    );
    assert!(rx.err().or(ry.err()).unwrap().is_conflict());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_created_job_is_invisible_detectable_and_removable() {
    if !orch_testkit::components::moto() {
        return;
    }
    let store = fresh_store().await;
    let id = "half";
    let job = sample_job(id, 3);
    // What a creator that died after its first batch leaves: the marked job item and some tasks.
    let mut item = HashMap::from([
        ("pk".to_string(), AttributeValue::S(format!("JOB#{id}"))),
        ("sk".to_string(), AttributeValue::S("JOB".into())),
        ("version".to_string(), AttributeValue::N("0".into())),
        ("phase".to_string(), AttributeValue::S("running".into())),
        (
            "body".to_string(),
            AttributeValue::S(serde_json::to_string(&job).unwrap()),
        ),
        ("gsi2pk".to_string(), AttributeValue::S("JOBS".into())),
        (
            "gsi2sk".to_string(),
            AttributeValue::S(format!("{:013}#{id}", job.created_at)),
        ),
        (
            "incomplete".to_string(),
            AttributeValue::S("creating".into()),
        ),
    ]);
    store
        .client()
        .put_item()
        .table_name(store.table())
        .set_item(Some(item.clone()))
        .send()
        .await
        .unwrap();
    // …and its first task.
    let task = TaskRecord::new(id, 0, 10, 1_000);
    store
        .client()
        .put_item()
        .table_name(store.table())
        .item("pk", AttributeValue::S(format!("JOB#{id}")))
        .item("sk", AttributeValue::S("TASK#000000".into()))
        .item("version", AttributeValue::N("0".into()))
        .item("state", AttributeValue::S("pending".into()))
        .item(
            "body",
            AttributeValue::S(serde_json::to_string(&task).unwrap()),
        )
        .item("gsi1pk", AttributeValue::S(format!("JOB#{id}#pending")))
        .item("gsi1sk", AttributeValue::S("TASK#000000".into()))
        .send()
        .await
        .unwrap();

    assert!(store.get_job(id).await.unwrap().is_none());
    assert!(!store.list_jobs().await.unwrap().iter().any(|j| j.id == id));
    assert_eq!(
        store.list_incomplete_jobs().await.unwrap(),
        [IncompleteJob {
            id: id.into(),
            deleting: false
        }]
    );
    match store.create_job(&job, &tasks(id, 3)).await {
        Err(BackendError::Conflict(m)) => assert!(m.contains("did not finish"), "{m}"),
        other => panic!("creating over a half-created job must conflict: {other:?}"),
    }
    match store.update_job(&job).await {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("updating a half-created job must be NotFound: {other:?}"),
    }
    store.delete_job(id).await.unwrap();
    assert!(store.list_incomplete_jobs().await.unwrap().is_empty());
    assert!(store.list_tasks(id).await.unwrap().is_empty());
    store.create_job(&job, &tasks(id, 3)).await.unwrap();
    assert_eq!(store.get_job(id).await.unwrap(), Some(job.clone()));
    assert_eq!(store.list_tasks(id).await.unwrap().len(), 3);

    // A deletion that died half-way: invisible too, and delete_job finishes it.
    item.insert("incomplete".into(), AttributeValue::S("deleting".into()));
    store
        .client()
        .put_item()
        .table_name(store.table())
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
    assert!(store.get_job(id).await.unwrap().is_none());
    assert_eq!(
        store.list_incomplete_jobs().await.unwrap(),
        [IncompleteJob {
            id: id.into(),
            deleting: true
        }]
    );
    store.delete_job(id).await.unwrap();
    assert!(store.list_tasks(id).await.unwrap().is_empty());
    assert!(store.list_incomplete_jobs().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_that_fails_half_way_leaves_nothing_behind() {
    if !orch_testkit::components::moto() {
        return;
    }
    let store = fresh_store().await;
    let id = "too-big";
    let mut tasks = tasks(id, 80);
    // The last batch holds an item over DynamoDB's 400 KB limit: the first batches are written,
    // then the write fails.
    tasks[79].executor_id = Some("x".repeat(500_000));
    let err = store
        .create_job(&sample_job(id, 80), &tasks)
        .await
        .unwrap_err();
    assert!(!err.is_conflict(), "{err}");
    assert!(store.get_job(id).await.unwrap().is_none());
    assert!(store.list_tasks(id).await.unwrap().is_empty());
    assert!(store.list_incomplete_jobs().await.unwrap().is_empty());
    // Invalid input is refused before anything is written.
    let err = store
        .create_job(&sample_job("bad#id", 0), &[])
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Invalid);
    let err = store
        .create_job(&sample_job("dup", 2), &[tasks[0].clone(), tasks[0].clone()])
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Invalid);
}

#[tokio::test]
async fn create_table_makes_the_documented_table_and_may_run_twice() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = client().await;
    let table = moto::unique("orch-table");
    create_table(&client, &table).await.unwrap();
    create_table(&client, &table).await.unwrap();
    let desc = client
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    assert_eq!(
        desc.billing_mode_summary().and_then(|b| b.billing_mode()),
        Some(&BillingMode::PayPerRequest)
    );
    let keys = |schema: &[aws_sdk_dynamodb::types::KeySchemaElement]| {
        schema
            .iter()
            .map(|k| format!("{}:{}", k.attribute_name(), k.key_type().as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(desc.key_schema()), ["pk:HASH", "sk:RANGE"]);
    let mut indexes: Vec<(String, Vec<String>, Option<ProjectionType>)> = desc
        .global_secondary_indexes()
        .iter()
        .map(|i| {
            (
                i.index_name().unwrap().to_string(),
                keys(i.key_schema()),
                i.projection().and_then(|p| p.projection_type()).cloned(),
            )
        })
        .collect();
    indexes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        indexes,
        [
            (
                "by-state".to_string(),
                vec!["gsi1pk:HASH".to_string(), "gsi1sk:RANGE".to_string()],
                Some(ProjectionType::All)
            ),
            (
                "jobs".to_string(),
                vec!["gsi2pk:HASH".to_string(), "gsi2sk:RANGE".to_string()],
                Some(ProjectionType::KeysOnly)
            ),
        ]
    );
    assert!(desc.sse_description().is_some(), "encryption is on");
    let backups = client
        .describe_continuous_backups()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let pitr = backups
        .continuous_backups_description()
        .and_then(|d| d.point_in_time_recovery_description())
        .and_then(|p| p.point_in_time_recovery_status())
        .map(|s| s.as_str().to_string());
    assert_eq!(pitr.as_deref(), Some("ENABLED"));

    // A table of the same name with other keys is refused, not used.
    let other = moto::unique("orch-other");
    client
        .create_table()
        .table_name(&other)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let err = create_table(&client, &other).await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Invalid, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_5xx_answers_and_connection_resets() {
    if !orch_testkit::components::moto() {
        return;
    }
    let proxy = FaultProxy::start(
        &moto::moto().endpoint,
        Faults {
            error_rate: 0.08,
            reset_rate: 0.05,
            ..Faults::default()
        },
    )
    .await;
    let sdk = moto::sdk_config_for(&proxy.endpoint).await;
    // orch's retry policy (config::MAX_ATTEMPTS), as `load_sdk_config` sets it.
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .retry_config(
            aws_sdk_dynamodb::config::retry::RetryConfig::standard()
                .with_max_attempts(orch_aws::config::MAX_ATTEMPTS),
        )
        .build();
    let faulty = Client::from_conf(conf);
    let table = moto::unique("orch-faults");
    // The table itself is made directly, so the test is about the store's calls.
    create_table(&client().await, &table).await.unwrap();
    let store = DynamoStateStore::new(faulty, &table, Keys::default());

    let id = "faulty";
    let job = sample_job(id, 200);
    let created = tasks(id, 200);
    store.create_job(&job, &created).await.unwrap();
    assert_eq!(store.get_job(id).await.unwrap(), Some(job.clone()));
    assert_eq!(store.list_tasks(id).await.unwrap(), created);
    for t in 0..20 {
        let mut task = store.get_task(id, t).await.unwrap().unwrap();
        task.transition(TaskState::Dispatched, 2_000).unwrap();
        let stored = store.update_task(&task).await.unwrap();
        assert_eq!(stored.version, 1);
    }
    assert_eq!(
        store
            .list_tasks_in_state(id, TaskState::Dispatched)
            .await
            .unwrap()
            .len(),
        20
    );
    let mut j = store.get_job(id).await.unwrap().unwrap();
    j.next_group = 1;
    assert_eq!(store.update_job(&j).await.unwrap().version, 1);
    assert!(store.list_jobs().await.unwrap().iter().any(|j| j.id == id));
    store.delete_job(id).await.unwrap();
    assert!(store.list_tasks(id).await.unwrap().is_empty());
    assert!(store.get_job(id).await.unwrap().is_none());

    let stats = proxy.stats();
    assert!(
        stats.errors + stats.resets > 0,
        "no fault was injected, the test proved nothing: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_whose_answer_was_lost_are_not_conflicts() {
    if !orch_testkit::components::moto() {
        return;
    }
    // The proxy forwards every request but now and then resets the connection instead of
    // answering: the SDK retries a write that already took effect, and its condition then
    // fails against the write itself.
    let proxy = FaultProxy::start(
        &moto::moto().endpoint,
        Faults {
            error_rate: 0.0,
            reset_rate: 0.0,
            drop_response_rate: 0.15,
            ..Faults::default()
        },
    )
    .await;
    let sdk = moto::sdk_config_for(&proxy.endpoint).await;
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .retry_config(
            aws_sdk_dynamodb::config::retry::RetryConfig::standard()
                .with_max_attempts(orch_aws::config::MAX_ATTEMPTS),
        )
        .build();
    let table = moto::unique("orch-lost-answers");
    create_table(&client().await, &table).await.unwrap();
    let store = DynamoStateStore::new(Client::from_conf(conf), &table, Keys::default());

    let id = "lost";
    let job = sample_job(id, 60);
    store.create_job(&job, &tasks(id, 60)).await.unwrap();
    assert_eq!(store.get_job(id).await.unwrap(), Some(job.clone()));
    for t in 0..30 {
        let mut task = store.get_task(id, t).await.unwrap().unwrap();
        task.transition(TaskState::Dispatched, 2_000).unwrap();
        task.attempt = 1;
        let stored = store.update_task(&task).await.unwrap();
        assert_eq!(stored.version, 1);
        assert_eq!(store.get_task(id, t).await.unwrap().unwrap(), stored);
    }
    let mut j = job.clone();
    for group in 1..=10 {
        j.next_group = group;
        j = store.update_job(&j).await.unwrap();
    }
    assert_eq!(j.version, 10);
    assert_eq!(store.get_job(id).await.unwrap(), Some(j));
    store.delete_job(id).await.unwrap();
    assert!(store.get_job(id).await.unwrap().is_none());
    assert!(store.list_tasks(id).await.unwrap().is_empty());
    assert!(store.list_incomplete_jobs().await.unwrap().is_empty());

    let stats = proxy.stats();
    assert!(
        stats.dropped_responses > 5,
        "too few lost answers to prove anything: {stats:?}"
    );
}

/// Answers every `BatchGetItem` as IAM does for a role without `dynamodb:BatchGetItem` (a
/// deployment from before the coordinator's role got it), and counts them. The response hook
/// no longer sees the request: the one sent marks the next answer (the test's client sends its
/// `BatchGetItem`s alone).
#[derive(Debug, Clone, Default)]
struct DenyBatchGet {
    asked: Arc<AtomicU64>,
    to_deny: Arc<AtomicU64>,
}

impl aws_sdk_dynamodb::config::Intercept for DenyBatchGet {
    fn name(&self) -> &'static str {
        "DenyBatchGet"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let batch_get = context
            .request()
            .headers()
            .get("x-amz-target")
            .is_some_and(|t| t.ends_with(".BatchGetItem"));
        if batch_get {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.to_deny.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let deny = self
            .to_deny
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if deny {
            let response = context.response_mut();
            *response.status_mut() = 400u16.try_into()?;
            response.headers_mut().remove("content-length");
            *response.body_mut() = concat!(
                r#"{"__type":"com.amazon.coral.service#AccessDeniedException","#,
                r#""message":"User: arn:aws:sts::123456789012:assumed-role/orch/x is not "#,
                r#"authorized to perform: dynamodb:BatchGetItem"}"#
            )
            .into();
        }
        Ok(())
    }
}

/// A coordinator whose role lacks `dynamodb:BatchGetItem` keeps driving: the refused
/// `BatchGetItem` is asked once, the rows that left the active set come with `GetItem`s, and
/// every refresh after that goes straight to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_without_batch_get_reads_rows_one_by_one() {
    if !orch_testkit::components::moto() {
        return;
    }
    let plain = fresh_store().await;
    let denied = DenyBatchGet::default();
    let conf = aws_sdk_dynamodb::config::Builder::from(&moto::sdk_config().await)
        .interceptor(denied.clone())
        .build();
    let driver = DynamoStateStore::new(Client::from_conf(conf), plain.table(), Keys::default());
    let job = "no-batch-get";
    let n = 20;
    driver
        .create_job(&sample_job(job, n), &tasks(job, n))
        .await
        .unwrap();
    let _driving = driver.drive(job);
    let first = driver.list_tasks_since(job, None).await.unwrap();
    assert!(first.full);
    for id in 0..6 {
        let mut t = driver.get_task(job, id).await.unwrap().unwrap();
        t.transition(TaskState::Dispatched, 2_000).unwrap();
        t.attempt = 1;
        t.group = Some(1);
        driver.update_task(&t).await.unwrap();
    }
    let mut cursor = driver
        .list_tasks_since(job, first.cursor)
        .await
        .unwrap()
        .cursor;
    // A worker (a role of its own) ends rows between refreshes: they leave the index, and the
    // driver reads them by key.
    for round in 0..2u32 {
        let mut ended = Vec::new();
        for id in [round * 2, round * 2 + 1] {
            let claim = orch_core::backend::TaskClaim {
                job,
                task: id,
                group: 1,
                worker: "node:1",
                now: 3_000,
                lease_expiry: 33_000,
            };
            let orch_core::backend::Claimed::Yes(mut row) = plain.claim_task(&claim).await.unwrap()
            else {
                panic!("claim of task {id}");
            };
            row.transition(TaskState::Succeeded, 4_000).unwrap();
            row.lease_expiry = None;
            ended.push(plain.update_task(&row).await.unwrap());
        }
        // The active rows the index still shows are read again next time: a few tries.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let next = driver.list_tasks_since(job, cursor).await.unwrap();
            assert!(!next.full, "{next:?}");
            cursor = next.cursor;
            if ended.iter().all(|r| next.tasks.contains(r)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "rows ended: {next:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        denied.asked.load(Ordering::SeqCst),
        1,
        "a refused BatchGetItem is not asked again"
    );
    // And the whole contract of a driver with the other writers, on GetItems.
    tasks_since_two_writers_contract(&driver.clone().driving_every_job(), &plain).await;
    assert_eq!(denied.asked.load(Ordering::SeqCst), 1);
}
