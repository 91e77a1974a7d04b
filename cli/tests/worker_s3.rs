//! The real `orch-worker` against S3 and DynamoDB (moto over HTTP, the real SDK): a job laid
//! out in the bucket and the table the way a coordinator lays it out, two array tasks run as
//! separate processes configured only by the environment, then the stores are checked with
//! orch's own S3/DynamoDB clients and the result files read back with pyarrow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use orch_testkit::moto;

use std::process::Command;

use orch_aws::config::{self, AwsSettings};
use orch_aws::dynamodb::{DynamoStateStore, Keys, create_table};
use orch_aws::s3::{S3Store, create_bucket};
use orch_core::backend::{ObjectStore, StateStore};
use orch_core::layout;
use orch_core::model::{
    Batch, JobManifest, JobPhase, JobRecord, SCHEMA_VERSION, TaskRecord, TaskState,
};

const ITEMS: u64 = 100;

/// A job laid out in a bucket and a table of its own, its two tasks dispatched in group 0.
struct Fixture {
    settings: AwsSettings,
    storage: String,
    job_id: &'static str,
    batches: [Batch; 2],
    objects: S3Store,
    state: DynamoStateStore,
    scratch: tempfile::TempDir,
}

impl Fixture {
    /// `orch-worker run` for `task` of task group `group`, as Slurm would start it.
    fn worker(&self, task: u32, group: u32) -> Command {
        let mut c = Command::new(common::worker());
        c.args([
            "run",
            "--storage",
            &self.storage,
            "--job",
            self.job_id,
            "--group",
            &group.to_string(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SLURM_ARRAY_TASK_ID", task.to_string())
        .env("AWS_ENDPOINT_URL", &moto::moto().endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("ORCH_DYNAMODB_TABLE", &self.settings.table)
        .env("ORCH_SCRATCH", self.scratch.path());
        c
    }
}

/// What the coordinator writes before it dispatches: the input, job.json, the job and task
/// rows; `handler` is the spec's.
async fn lay_out(handler: serde_json::Value) -> Fixture {
    let sdk = moto::sdk_config().await;
    let settings = AwsSettings {
        table: moto::unique("orch-worker-table"),
        ..AwsSettings::default()
    };
    let bucket = moto::unique("orch-worker-bucket");
    let s3 = config::s3_client(&sdk, &settings);
    create_bucket(&s3, &bucket).await.unwrap();
    create_table(&config::dynamodb_client(&sdk), &settings.table)
        .await
        .unwrap();

    // The input, one object; two batches split at a line boundary.
    let mut input = String::new();
    let mut offsets = Vec::new();
    for i in 0..ITEMS {
        offsets.push(input.len() as u64);
        input.push_str(&format!("{{\"id\": {i}, \"text\": \"item {i}\"}}\n"));
    }
    let data = S3Store::new(s3.clone(), &format!("s3://{bucket}/")).unwrap();
    data.put("input/in.jsonl", input.clone().into_bytes())
        .await
        .unwrap();
    let source = format!("s3://{bucket}/input/in.jsonl");
    let split = offsets[60];
    let batches = [
        Batch {
            id: 0,
            source: source.clone(),
            start: 0,
            end: split,
            items: 60,
            first_item: 0,
        },
        Batch {
            id: 1,
            source: source.clone(),
            start: split,
            end: input.len() as u64,
            items: ITEMS - 60,
            first_item: 60,
        },
    ];

    // What the coordinator writes before it dispatches: job.json, the job and task rows.
    let job_id = "s3-worker-0001";
    let storage = format!("s3://{bucket}/orch/");
    let objects = S3Store::new(s3.clone(), &storage).unwrap();
    let spec = serde_json::from_value(serde_json::json!({
        "apiVersion": "orch.dev/v1alpha1",
        "kind": "OrchJob",
        "metadata": {"name": "s3-worker"},
        "spec": {
            "input": {"uri": source, "format": "jsonl"},
            "handler": handler
        }
    }))
    .unwrap();
    let manifest = JobManifest {
        schema_version: SCHEMA_VERSION,
        id: job_id.into(),
        spec,
        input_fingerprint: "test".into(),
        total_items: ITEMS,
        total_tasks: 2,
        columns: None,
        rate_limits: Vec::new(),
    };
    objects
        .put(
            &layout::job_manifest(job_id),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .await
        .unwrap();
    let job = JobRecord {
        schema_version: SCHEMA_VERSION,
        id: job_id.into(),
        phase: JobPhase::Running,
        spec: manifest.spec.clone(),
        input_fingerprint: "test".into(),
        total_tasks: 2,
        total_items: ITEMS,
        created_at: 1,
        updated_at: 1,
        finished_at: None,
        message: None,
        cancel_requested: false,
        next_group: 1,
        manifest_sha256: None,
        version: 0,
    };
    let tasks: Vec<TaskRecord> = batches
        .iter()
        .map(|b| TaskRecord {
            state: TaskState::Dispatched,
            attempt: 1,
            group: Some(0),
            batch: Some(b.clone()),
            ..TaskRecord::new(job_id, b.id, b.items, 1)
        })
        .collect();
    let state = DynamoStateStore::new(
        config::dynamodb_client(&sdk),
        settings.table.clone(),
        Keys::for_storage(&storage).unwrap(),
    );
    state.create_job(&job, &tasks).await.unwrap();
    Fixture {
        settings,
        storage,
        job_id,
        batches,
        objects,
        state,
        scratch: tempfile::tempdir().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_read_their_range_from_s3_and_commit_to_dynamodb() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    if !orch_testkit::components::moto() {
        return;
    }
    let fx = lay_out(serde_json::json!({"builtin": {"name": "identity"}})).await;
    let Fixture {
        job_id,
        batches,
        objects,
        state,
        scratch,
        ..
    } = &fx;

    // The array: one worker process per task, as Slurm would start them.
    for task in 0..2u32 {
        let out = fx.worker(task, 0).output().unwrap();
        assert!(out.status.success(), "task {task}: {}", common::text(&out));
    }

    // Committed in DynamoDB, with the counts of each batch.
    for (task, batch) in batches.iter().enumerate() {
        let row = state.get_task(job_id, task as u32).await.unwrap().unwrap();
        assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
        assert_eq!((row.items_ok, row.items_failed), (batch.items, 0));
        assert_eq!(row.lease_expiry, None);
    }
    // Results and markers in S3, and exactly the items of each range in the part files.
    let local = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for task in 0..2u32 {
        for key in [layout::part(job_id, task, 1), layout::done(job_id, task, 1)] {
            assert!(
                objects.get(&key).await.unwrap().is_some(),
                "{key} is missing"
            );
        }
        // No failed item, no errors file to upload (and for the merge to read).
        let errors = layout::errors(job_id, task, 1);
        assert!(objects.get(&errors).await.unwrap().is_none(), "{errors}");
        let path = local.path().join(format!("part-{task}.parquet"));
        assert!(
            objects
                .get_to_file(&layout::part(job_id, task, 1), &path)
                .await
                .unwrap()
        );
        let out = Command::new("python3")
            .args([
                "-c",
                "import pyarrow.parquet as pq, sys; \
                 print(' '.join(map(str, pq.read_table(sys.argv[1]).column('_item').to_pylist())))",
                path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::text(&out));
        seen.extend(
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .map(|s| s.parse::<u64>().unwrap()),
        );
    }
    assert_eq!(seen, (0..ITEMS).collect::<Vec<_>>());
    // A committed worker leaves no scratch behind.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

/// A worker stopped half-way on S3 storage says so in its task row before it sends its
/// checkpoint, and only then does the next attempt download one: it resumes where the first
/// stopped, while a first attempt asks for no checkpoint at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_marks_its_checkpoint_and_the_next_attempt_resumes_from_it() {
    if !orch_testkit::components::moto() {
        return;
    }
    let fx = lay_out(
        serde_json::json!({"builtin": {"name": "sleep", "duration": "20ms"}, "concurrency": 1}),
    )
    .await;
    let (job_id, state) = (fx.job_id, &fx.state);
    let ckpt = layout::checkpoint(job_id, 0);

    let mut first = fx
        .worker(0, 0)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped once its progress shows in the row (heartbeats come every second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row = state.get_task(job_id, 0).await.unwrap().unwrap();
        assert!(!row.checkpoint_stored, "{row:?}");
        if row.items_ok > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {row:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    common::kill(first.id(), "-TERM");
    let out = tokio::task::spawn_blocking(move || {
        first.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut err).unwrap();
        err
    })
    .await
    .unwrap();
    let row = state.get_task(job_id, 0).await.unwrap().unwrap();
    assert!(row.checkpoint_stored, "{row:?}\n{out}");
    assert!(fx.objects.get(&ckpt).await.unwrap().is_some(), "{out}");
    let stopped_at = row.items_ok;
    assert!(stopped_at > 0 && stopped_at < 60, "{row:?}");

    // The coordinator's retry: attempt 2 in group 1; the flag stays with the task.
    let mut retry = row.clone();
    retry.state = TaskState::Dispatched;
    retry.attempt = 2;
    retry.group = Some(1);
    retry.lease_owner = None;
    retry.lease_expiry = None;
    retry.last_error = None;
    retry.items_ok = 0;
    state.update_task(&retry).await.unwrap();
    let first_log = out;
    let out = fx.worker(0, 1).output().unwrap();
    let text = format!("{first_log}\n---- the retry:\n{}", common::text(&out));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("resuming from the checkpoint"), "{text}");
    let row = state.get_task(job_id, 0).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.attempt, row.items_ok),
        (TaskState::Succeeded, 2, 60)
    );
}
