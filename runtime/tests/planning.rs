//! Planning a job within its budget, on the embedded backends: each limit of a `PlanBudget`
//! (input bytes, decompressed bytes, batches) refuses the job with a message naming the limit,
//! leaves nothing behind that the next run would trip on, and no planning error quotes the
//! input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, Executor};
use orch_core::model::JobRecord;
use orch_core::partition::PlanBudget;
use orch_core::platform::{ExecutorFactory, Platform};
use orch_core::spec::JobSpec;
use orch_embedded::EmbeddedPlatform;
use orch_runtime::Error;
use orch_runtime::driver::{self, RunOptions};
use orch_runtime::input::{self, PlanTarget};

const MARKER: &str = "SECRET-MARKER-7f3a";

fn spec(uri: &Path, extra: serde_json::Value) -> JobSpec {
    let mut value = serde_json::json!({
        "input": {"uri": uri.display().to_string(), "format": "jsonl"},
        "batch": {"size": 2},
        "handler": {"builtin": {"name": "identity"}}
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            value[k.as_str()] = v;
        }
    }
    serde_json::from_value(value).unwrap()
}

/// `n` JSONL records, each carrying the marker (input content that no error may quote).
fn lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{{\"id\": {i}, \"secret\": \"{MARKER}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Every file under `dir`, relative, recursively (empty directories are not files).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn invalid_message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Invalid(message)) => {
            assert!(!message.contains(MARKER), "{message}");
            message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn plan_into(
    platform: &EmbeddedPlatform,
    spec: &JobSpec,
    job: &str,
    budget: PlanBudget,
) -> Result<input::InputPlan, Error> {
    let sources = input::sources(spec, platform.backends.locations.as_ref()).await?;
    let storage = platform.storage_uri();
    input::plan(
        spec,
        &sources,
        Some(PlanTarget {
            backends: &platform.backends,
            storage_uri: &storage,
            job,
        }),
        &budget,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_input_bytes_budget_is_checked_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.jsonl"), lines(3)).unwrap();
    std::fs::write(data.join("b.jsonl"), lines(4)).unwrap();
    let total = (lines(3).len() + lines(4).len()) as u64;
    let platform = EmbeddedPlatform::open(&dir.path().join("store").display().to_string()).unwrap();
    let spec = spec(&data, serde_json::json!({}));

    let budget = PlanBudget {
        max_input_bytes: Some(total - 1),
        ..PlanBudget::default()
    };
    let message = invalid_message(plan_into(&platform, &spec, "j", budget).await);
    assert!(
        message.contains(&format!(
            "the input is {total} bytes, more than {} bytes",
            total - 1
        )),
        "{message}"
    );
    assert!(message.contains("spec.input.uri"), "{message}");

    let budget = PlanBudget {
        max_input_bytes: Some(total),
        ..PlanBudget::default()
    };
    let plan = plan_into(&platform, &spec, "j", budget).await.unwrap();
    assert_eq!(plan.batches.items, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_stops_at_the_budget_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir(&data).unwrap();
    // About 50 KiB that compress to little: a small bomb.
    let plain = lines(1000);
    std::fs::write(data.join("a.jsonl"), lines(2)).unwrap();
    std::fs::write(data.join("b.jsonl.gz"), gzip(&plain)).unwrap();
    let store = dir.path().join("store");
    let platform = EmbeddedPlatform::open(&store.display().to_string()).unwrap();
    let spec = spec(&data, serde_json::json!({}));

    let budget = PlanBudget {
        max_decompressed_bytes: Some(4096),
        ..PlanBudget::default()
    };
    let message = invalid_message(plan_into(&platform, &spec, "j", budget).await);
    assert_eq!(
        message,
        "the input decompresses to more than 4 KiB, the limit of this job's budget \
         (spec.input.uri)"
    );
    // The upload of the decompressed file was abandoned: no object, no temporary file.
    let left: Vec<String> = files_under(&store)
        .into_iter()
        .filter(|f| f.starts_with("jobs/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A dry run (no storage) stops the same way.
    let sources = input::sources(&spec, platform.backends.locations.as_ref())
        .await
        .unwrap();
    let dry = input::plan(&spec, &sources, None, &budget).await;
    invalid_message(dry);

    // Within the budget: decompressed into the storage, batches point there.
    let budget = PlanBudget {
        max_decompressed_bytes: Some(plain.len() as u64),
        ..PlanBudget::default()
    };
    let plan = plan_into(&platform, &spec, "j", budget).await.unwrap();
    assert_eq!(plan.batches.items, 1002);
    let stored = store.join("jobs/j/input/00001-b.jsonl");
    assert_eq!(std::fs::read(&stored).unwrap(), plain);
    assert!(
        plan.batches.batches[1]
            .source
            .ends_with("/jobs/j/input/00001-b.jsonl")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_budget_counts_the_whole_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir(&data).unwrap();
    // 6 + 5 items in batches of 2: 3 + 3 batches.
    std::fs::write(data.join("a.jsonl"), lines(6)).unwrap();
    std::fs::write(data.join("b.jsonl"), lines(5)).unwrap();
    let platform = EmbeddedPlatform::open(&dir.path().join("store").display().to_string()).unwrap();
    let spec = spec(&data, serde_json::json!({}));
    let budget = |max| PlanBudget {
        max_batches: Some(max),
        ..PlanBudget::default()
    };
    let message = invalid_message(plan_into(&platform, &spec, "j", budget(5)).await);
    assert!(message.contains("more than 5 batches"), "{message}");
    let plan = plan_into(&platform, &spec, "j", budget(6)).await.unwrap();
    assert_eq!(plan.batches.batches.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planning_errors_name_files_counts_and_digests_not_content() {
    let dir = tempfile::tempdir().unwrap();
    let platform = EmbeddedPlatform::open(&dir.path().join("store").display().to_string()).unwrap();

    // CSV files whose headers differ.
    let csv = dir.path().join("csv");
    std::fs::create_dir(&csv).unwrap();
    std::fs::write(csv.join("a.csv"), format!("id,{MARKER}\n1,2\n")).unwrap();
    std::fs::write(csv.join("b.csv"), format!("id,{MARKER}x,z\n1,2,3\n")).unwrap();
    let spec_csv = spec(
        &csv,
        serde_json::json!({"input": {
            "uri": csv.display().to_string(), "format": "csv"
        }}),
    );
    let message =
        invalid_message(plan_into(&platform, &spec_csv, "j", PlanBudget::default()).await);
    assert!(message.contains("b.csv has 3 columns"), "{message}");
    assert!(message.contains("a.csv, has 2"), "{message}");
    assert!(message.contains("header digest"), "{message}");

    // A corrupt compressed file: refused, without its bytes.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let mut gz = gzip(&lines(50));
    let middle = gz.len() / 2;
    gz.truncate(middle);
    gz.extend_from_slice(MARKER.as_bytes());
    std::fs::write(bad.join("x.jsonl.gz"), gz).unwrap();
    let spec_bad = spec(&bad, serde_json::json!({}));
    let err = plan_into(&platform, &spec_bad, "j", PlanBudget::default())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert_eq!(err.category(), ErrorCategory::Invalid, "{message}");
    assert!(message.contains("cannot decompress"), "{message}");
    assert!(!message.contains(MARKER), "{message}");
}

/// Stops the run once the job exists: the executor is asked for only after the job's record
/// is created.
struct StopAtExecutor;

#[async_trait]
impl ExecutorFactory for StopAtExecutor {
    async fn executor(
        &self,
        _job: &JobRecord,
        _platform: &dyn Platform,
    ) -> BackendResult<Arc<dyn Executor>> {
        Err(BackendError::message(
            ErrorCategory::Invalid,
            "the test stops once the job exists",
        ))
    }
}

fn run_options(budget: PlanBudget) -> RunOptions {
    RunOptions {
        executors: Arc::new(StopAtExecutor),
        tick: Duration::from_millis(50),
        on_progress: Box::new(|_| {}),
        stop: None,
        job_id: Some("budget-job".into()),
        task_cache: None,
        budget,
        retry: None,
        metrics: None,
        emf: None,
        alerts: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_budget_fails_alone_and_runs_once_the_budget_allows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir(&data).unwrap();
    // The first file is decompressed and stored before the second passes the budget.
    std::fs::write(data.join("a.jsonl.gz"), gzip(&lines(10))).unwrap();
    std::fs::write(data.join("b.jsonl.gz"), gzip(&lines(500))).unwrap();
    let store = dir.path().join("store");
    let job_file = dir.path().join("job.yaml");
    std::fs::write(
        &job_file,
        format!(
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: budget}}\n\
             spec:\n  input: {{uri: {}, format: jsonl}}\n  batch: {{size: 100}}\n  \
             handler: {{builtin: {{name: identity}}}}\n  storage: {{uri: {}}}\n",
            data.display(),
            store.display()
        ),
    )
    .unwrap();
    let job = orch_core::load::load(&job_file).unwrap();
    let platform = EmbeddedPlatform::open(&store.display().to_string()).unwrap();
    let budget = PlanBudget {
        max_decompressed_bytes: Some(lines(10).len() as u64 + 100),
        ..PlanBudget::default()
    };

    let refused = driver::run(&job, &platform, run_options(budget)).await;
    let message = invalid_message(refused.map(|o| o.job.id));
    assert!(message.contains("decompresses to more than"), "{message}");
    let state = platform.backends.state.clone();
    assert!(state.get_job("budget-job").await.unwrap().is_none());
    let left: Vec<String> = files_under(&store.join("jobs"));
    assert!(left.is_empty(), "a refused plan leaves no object: {left:?}");
    assert!(
        files_under(&platform.backends.scratch).is_empty(),
        "nothing in scratch"
    );

    // The next run (the budget raised) plans from scratch and creates the job.
    let stopped = driver::run(&job, &platform, run_options(PlanBudget::default())).await;
    let message = invalid_message(stopped.map(|o| o.job.id));
    assert!(
        message.contains("the test stops once the job exists"),
        "{message}"
    );
    let record = state.get_job("budget-job").await.unwrap().expect("the job");
    assert_eq!(record.total_items, 510);
    assert_eq!(record.total_tasks, 6);
}
