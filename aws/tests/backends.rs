//! `open_backends_with` against a real moto server (tests/common): the assembled `Backends` of an
//! `s3://bucket/prefix/` storage URI — objects under the prefix, state in the table, scratch
//! files uploaded on publish — and `S3Locations` for locations outside the storage, plus
//! `create_bucket`, the helper behind `orch init --bucket`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orch_testkit::moto;

use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use orch_aws::config::{self, AwsSettings};
use orch_aws::dynamodb::create_table;
use orch_aws::s3::{BucketSetup, create_bucket};
use orch_aws::{S3Locations, open_backends_with, open_queue_with};
use orch_core::ErrorCategory;
use orch_core::model::TaskRecord;
use orch_testkit::contract::sample_job;

async fn s3_client() -> aws_sdk_s3::Client {
    config::s3_client(&moto::sdk_config().await, &AwsSettings::default())
}

async fn fresh_bucket(client: &aws_sdk_s3::Client) -> String {
    let bucket = moto::unique("orch-backends");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    bucket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_backends_puts_objects_under_the_prefix_and_state_in_the_table() {
    if !orch_testkit::components::moto() {
        return;
    }
    let sdk = moto::sdk_config().await;
    let client = s3_client().await;
    let bucket = fresh_bucket(&client).await;
    let settings = AwsSettings {
        table: moto::unique("orch-backends-table"),
        ..AwsSettings::default()
    };
    create_table(&config::dynamodb_client(&sdk), &settings.table)
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let backends = open_backends_with(
        &sdk,
        &settings,
        &format!("s3://{bucket}/some/prefix/"),
        scratch.path().to_path_buf(),
    )
    .unwrap();

    // Objects land under the prefix, and nowhere else.
    backends
        .objects
        .put("jobs/j1/batches.json", b"[1,2]".to_vec())
        .await
        .unwrap();
    assert_eq!(
        moto::get_object(&client, &bucket, "some/prefix/jobs/j1/batches.json").await,
        Some(b"[1,2]".to_vec())
    );
    assert_eq!(
        moto::get_object(&client, &bucket, "jobs/j1/batches.json").await,
        None
    );
    assert_eq!(
        backends.objects.get("jobs/j1/batches.json").await.unwrap(),
        Some(b"[1,2]".to_vec())
    );

    // State goes to the configured table.
    let tasks: Vec<TaskRecord> = (0..3)
        .map(|t| TaskRecord::new("j1", t, 10, 1_000))
        .collect();
    backends
        .state
        .create_job(&sample_job("j1", 3), &tasks)
        .await
        .unwrap();
    assert_eq!(
        backends
            .state
            .get_job("j1")
            .await
            .unwrap()
            .map(|j| j.total_tasks),
        Some(3)
    );
    assert_eq!(backends.state.list_tasks("j1").await.unwrap().len(), 3);
    let raw = config::dynamodb_client(&sdk)
        .scan()
        .table_name(&settings.table)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.count(), 4, "one job item and three task items");

    // Files are built in the scratch directory and uploaded by publish.
    let key = "jobs/j1/results/000001/1/part.parquet";
    let (path, remote) = backends.local_file(key).unwrap();
    assert!(remote, "an S3 store has no local paths");
    assert_eq!(path, scratch.path().join(key));
    assert!(
        path.parent().unwrap().is_dir(),
        "the parent directory exists"
    );
    std::fs::write(&path, b"parquet bytes").unwrap();
    assert_eq!(
        moto::get_object(&client, &bucket, &format!("some/prefix/{key}")).await,
        None
    );
    backends.publish(key, &path, remote).await.unwrap();
    assert_eq!(
        moto::get_object(&client, &bucket, &format!("some/prefix/{key}")).await,
        Some(b"parquet bytes".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_open_s3_uris_in_any_bucket_and_leave_local_paths_alone() {
    if !orch_testkit::components::moto() {
        return;
    }
    let sdk = moto::sdk_config().await;
    let client = s3_client().await;
    let storage = fresh_bucket(&client).await;
    let other = fresh_bucket(&client).await;
    let body: Vec<u8> = (0..100u8).collect();
    client
        .put_object()
        .bucket(&other)
        .key("data/in.jsonl")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let backends = open_backends_with(
        &sdk,
        &AwsSettings::default(),
        &format!("s3://{storage}/orch/"),
        scratch.path().to_path_buf(),
    )
    .unwrap();

    let (store, key) = backends
        .locations
        .open(&format!("s3://{other}/data/in.jsonl"))
        .unwrap()
        .expect("an s3:// URI opens as a store");
    assert_eq!(key, "data/in.jsonl");
    assert_eq!(store.get_range(&key, 10..20).await.unwrap(), body[10..20]);
    assert_eq!(store.get(&key).await.unwrap(), Some(body.clone()));

    // An output prefix keeps its trailing slash, and names join onto it in the same store.
    let (out, prefix) = backends
        .locations
        .open(&format!("s3://{other}/results/"))
        .unwrap()
        .unwrap();
    assert_eq!(prefix, "results/");
    out.put(&format!("{prefix}part-0.parquet"), b"p".to_vec())
        .await
        .unwrap();
    assert_eq!(
        moto::get_object(&client, &other, "results/part-0.parquet").await,
        Some(b"p".to_vec())
    );

    // Local paths are the caller's to read.
    assert!(backends.locations.open("/local/path").unwrap().is_none());
    assert!(
        backends
            .locations
            .open("file:///local/in.jsonl")
            .unwrap()
            .is_none()
    );

    // Bad URIs are Invalid, before any request.
    for bad in [
        "s3://Bad_Bucket/x",
        "s3://ab/x",
        "s3://bucket/a/../b",
        "s3://bucket/a//b",
        "gs://bucket/x",
    ] {
        let err = match backends.locations.open(bad) {
            Err(e) => e,
            Ok(_) => panic!("{bad} opened"),
        };
        assert_eq!(err.category(), ErrorCategory::Invalid, "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_keep_one_store_per_bucket() {
    if !orch_testkit::components::moto() {
        return;
    }
    let locations = S3Locations::new(s3_client().await);
    let (a, _) = locations.open_s3("s3://bucket-one/a.jsonl").unwrap();
    let (b, _) = locations.open_s3("s3://bucket-one/dir/b.jsonl").unwrap();
    let (c, _) = locations.open_s3("s3://bucket-two/c.jsonl").unwrap();
    assert!(Arc::ptr_eq(&a, &b), "the same bucket reuses its store");
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(a.prefix(), "", "stores are rooted at the bucket");
    assert_eq!(c.bucket(), "bucket-two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_storage_uris_are_invalid() {
    if !orch_testkit::components::moto() {
        return;
    }
    let sdk = moto::sdk_config().await;
    let scratch = tempfile::tempdir().unwrap();
    for bad in [
        "s3://Not_A_Bucket/prefix/",
        "s3://x/prefix/",
        "s3://bucket/a/../b/",
        "/local/storage",
    ] {
        let err = open_backends_with(
            &sdk,
            &AwsSettings::default(),
            bad,
            scratch.path().to_path_buf(),
        )
        .err()
        .unwrap_or_else(|| panic!("{bad} opened"));
        assert_eq!(err.category(), ErrorCategory::Invalid, "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_queue_finds_the_configured_queue() {
    if !orch_testkit::components::moto() {
        return;
    }
    let sdk = moto::sdk_config().await;
    let settings = AwsSettings {
        queue: moto::unique("orch-backends-q"),
        ..AwsSettings::default()
    };
    let missing = open_queue_with(&sdk, &settings).await.unwrap_err();
    assert_eq!(missing.category(), ErrorCategory::Invalid, "{missing}");
    orch_aws::sqs::create_queues(&config::sqs_client(&sdk), &settings.queue, 5)
        .await
        .unwrap();
    let queue = open_queue_with(&sdk, &settings).await.unwrap();
    assert_eq!(queue.name(), settings.queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_bucket_is_idempotent_and_sets_versioning_and_public_access_blocks() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = s3_client().await;
    let name = moto::unique("orch-init-bucket");
    let first = create_bucket(&client, &name).await.unwrap();
    assert_eq!(
        first,
        BucketSetup {
            created: true,
            versioning: true,
            public_access_blocked: true
        }
    );
    let second = create_bucket(&client, &name).await.unwrap();
    assert!(!second.created);
    // Some moto versions answer GetBucketVersioning with the root element
    // `GetBucketVersioningResponse`, which the SDK refuses to decode; the status is then read
    // from the raw answer.
    let status = match client.get_bucket_versioning().bucket(&name).send().await {
        Ok(out) => out.status().map(|s| s.as_str().to_string()),
        Err(e) => {
            let body = e
                .raw_response()
                .and_then(|r| r.body().bytes())
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            body.contains("<Status>Enabled</Status>")
                .then(|| "Enabled".to_string())
        }
    };
    assert_eq!(status.as_deref(), Some("Enabled"));
    let block = client
        .get_public_access_block()
        .bucket(&name)
        .send()
        .await
        .unwrap();
    let conf = block.public_access_block_configuration().unwrap();
    assert_eq!(
        (
            conf.block_public_acls(),
            conf.ignore_public_acls(),
            conf.block_public_policy(),
            conf.restrict_public_buckets()
        ),
        (Some(true), Some(true), Some(true), Some(true))
    );
    let bad = create_bucket(&client, "Bad_Name").await.unwrap_err();
    assert_eq!(bad.category(), ErrorCategory::Invalid);
}
