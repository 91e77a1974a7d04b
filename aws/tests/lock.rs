//! The DynamoDB job lock against a real moto server: one holder at a time, release, expiry of
//! an abandoned lease, renewal past the first lease, a stolen lock reported as lost, and that
//! the lock item stays out of the StateStore's reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use orch_testkit::moto;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use orch_aws::dynamodb::{DynamoStateStore, Keys, create_table};
use orch_aws::lock::{JobLock, is_held_elsewhere};
use orch_core::ErrorCategory;
use orch_core::backend::StateStore;
use orch_core::model::{TaskRecord, now_ms};
use orch_testkit::contract::sample_job;

/// A client and a fresh table of its own.
async fn fresh_table() -> (Client, String) {
    let client = Client::new(&moto::sdk_config().await);
    let table = moto::unique("orch-lock");
    create_table(&client, &table).await.unwrap();
    (client, table)
}

async fn lock_item(
    client: &Client,
    table: &str,
    job: &str,
) -> Option<HashMap<String, AttributeValue>> {
    client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("JOB#{job}")))
        .key("sk", AttributeValue::S("LOCK".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item[name].as_n().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_acquire_fails_while_the_lock_is_held() {
    if !orch_testkit::components::moto() {
        return;
    }
    let (client, table) = fresh_table().await;
    let lease = Duration::from_secs(30);
    let held = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j1", lease)
        .await
        .unwrap();
    assert!(!held.lost());
    assert_eq!(held.job(), "j1");

    let item = lock_item(&client, &table, "j1").await.unwrap();
    assert_eq!(item["owner"].as_s().unwrap(), held.owner());
    let expires = number(&item, "expiresAt");
    let acquired = number(&item, "acquiredAt");
    assert_eq!(expires, acquired + 30_000);
    assert_eq!(held.expires_at(), expires);

    let err = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j1", lease)
        .await
        .unwrap_err();
    assert!(is_held_elsewhere(&err), "{err}");
    assert_eq!(err.category(), ErrorCategory::Invalid);
    let text = err.to_string();
    assert!(
        text.contains("job j1 is already being run by another `orch run` (host "),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(text.contains("its lease lasts until "), "{text}");
    // The random token is not shown; only host and pid.
    let token = held.owner().rsplit(':').next().unwrap();
    assert!(!text.contains(token), "{text}");

    // Other jobs are not affected.
    let other = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j2", lease)
        .await
        .unwrap();
    other.release().await;
    held.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_succeeds_after_release() {
    if !orch_testkit::components::moto() {
        return;
    }
    let (client, table) = fresh_table().await;
    let lease = Duration::from_secs(30);
    let first = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
        .await
        .unwrap();
    first.release().await;
    assert!(lock_item(&client, &table, "j").await.is_none());

    let second = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
        .await
        .unwrap();
    assert!(!second.lost());
    second.release().await;
    assert!(lock_item(&client, &table, "j").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_succeeds_after_an_abandoned_lease_expires() {
    if !orch_testkit::components::moto() {
        return;
    }
    let (client, table) = fresh_table().await;
    let lease = Duration::from_secs(1);
    let abandoned = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
        .await
        .unwrap();
    let owner = abandoned.owner().to_string();
    // Dropped without release, like a driver that died: renewals stop, the item stays.
    drop(abandoned);
    let err = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
        .await
        .unwrap_err();
    assert!(is_held_elsewhere(&err), "{err}");

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let item = lock_item(&client, &table, "j").await.unwrap();
    assert_eq!(item["owner"].as_s().unwrap(), &owner, "nobody renewed it");
    assert!(number(&item, "expiresAt") < now_ms());

    let next = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
        .await
        .unwrap();
    assert_ne!(next.owner(), owner);
    let item = lock_item(&client, &table, "j").await.unwrap();
    assert_eq!(item["owner"].as_s().unwrap(), next.owner());
    next.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_the_lock_past_its_first_lease() {
    if !orch_testkit::components::moto() {
        return;
    }
    let (client, table) = fresh_table().await;
    let lease = Duration::from_secs(1);
    let held = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
        .await
        .unwrap();
    let first_expiry = held.expires_at();
    // Three leases long: without renewals the lock would have expired twice over.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let err = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
            .await
            .unwrap_err();
        assert!(is_held_elsewhere(&err), "{err}");
    }
    assert!(!held.lost());
    assert!(now_ms() > first_expiry + 1_000);
    let item = lock_item(&client, &table, "j").await.unwrap();
    assert_eq!(item["owner"].as_s().unwrap(), held.owner());
    assert!(number(&item, "expiresAt") > now_ms());
    assert!(held.expires_at() > first_expiry);
    held.release().await;
    assert!(lock_item(&client, &table, "j").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_lock_is_reported_as_lost_and_left_to_the_thief() {
    if !orch_testkit::components::moto() {
        return;
    }
    let (client, table) = fresh_table().await;
    let lease = Duration::from_millis(900);
    let held = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
        .await
        .unwrap();
    let mut signal = held.lost_signal();
    // Another holder overwrites the item directly.
    let now = now_ms();
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("JOB#j".into()))
        .item("sk", AttributeValue::S("LOCK".into()))
        .item("owner", AttributeValue::S("elsewhere:1:feed".into()))
        .item("expiresAt", AttributeValue::N((now + 60_000).to_string()))
        .item("acquiredAt", AttributeValue::N(now.to_string()))
        .send()
        .await
        .unwrap();
    // The next renewal (within lease / 3) finds it.
    tokio::time::timeout(Duration::from_secs(5), signal.changed())
        .await
        .expect("the loss is reported within a few renewals")
        .unwrap();
    assert!(*signal.borrow());
    assert!(held.lost());

    // Release leaves the thief's lock alone.
    held.release().await;
    let item = lock_item(&client, &table, "j").await.unwrap();
    assert_eq!(item["owner"].as_s().unwrap(), "elsewhere:1:feed");
    let err = JobLock::acquire(client.clone(), table.clone(), &Keys::default(), "j", lease)
        .await
        .unwrap_err();
    assert!(is_held_elsewhere(&err), "{err}");
    assert!(err.to_string().contains("host elsewhere, pid 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_item_is_invisible_to_the_state_store() {
    if !orch_testkit::components::moto() {
        return;
    }
    let (client, table) = fresh_table().await;
    let store = DynamoStateStore::new(client.clone(), table.clone(), Keys::default());
    let job = sample_job("locked", 3);
    let tasks: Vec<TaskRecord> = (0..3)
        .map(|t| TaskRecord::new("locked", t, 10, 1_000))
        .collect();
    store.create_job(&job, &tasks).await.unwrap();
    let held = JobLock::acquire(
        client.clone(),
        table.clone(),
        &Keys::default(),
        "locked",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(store.list_tasks("locked").await.unwrap().len(), 3);
    assert_eq!(store.get_job("locked").await.unwrap().unwrap().id, "locked");
    let ids: Vec<String> = store
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, ["locked"]);
    assert!(store.list_incomplete_jobs().await.unwrap().is_empty());
    held.release().await;
}

#[tokio::test]
async fn bad_job_ids_and_leases_are_refused() {
    if !orch_testkit::components::moto() {
        return;
    }
    let (client, table) = fresh_table().await;
    for job in ["", "a#b"] {
        let err = JobLock::acquire(
            client.clone(),
            table.clone(),
            &Keys::default(),
            job,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Invalid);
        assert!(!is_held_elsewhere(&err));
    }
    let err = JobLock::acquire(
        client.clone(),
        table.clone(),
        &Keys::default(),
        "j",
        Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Invalid);
}
