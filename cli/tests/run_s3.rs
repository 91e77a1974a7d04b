//! `orch run` with input, storage and output on S3, end to end: the real `orch` (driver) and
//! `orch-worker` processes against moto's S3, DynamoDB and SQS over HTTP with the real SDK,
//! configured only through the environment; `orch init` creates the table, queues and bucket.
//! The example job (2,000 reviews through the Python handler, ~1 % failing on purpose) must end
//! with every item exactly once in the output — read back with pyarrow after a download with
//! the SDK, not with orch's code — and every task row in DynamoDB in its final state. The same
//! again through a proxy that injects 5 % 500/503 answers, 3 % connection resets and one
//! outage of a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use orch_testkit::fault_proxy;
use orch_testkit::moto;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use fault_proxy::{FaultProxy, Faults};
use orch_aws::config::{self, AwsSettings};
use orch_aws::dynamodb::{DynamoStateStore, Keys};
use orch_core::backend::StateStore;
use orch_core::model::{JobPhase, TaskState};

/// A secret that must never show up in anything orch prints.
const SECRET: &str = "run-s3-secret-Xq7Pz";
const ITEMS: u64 = 2000;

/// The names of one test's resources in the shared moto server.
struct Aws {
    endpoint: String,
    table: String,
    queue: String,
    bucket: String,
    scratch: common::Scratch,
}

impl Aws {
    fn new(prefix: &str) -> Aws {
        Aws {
            endpoint: moto::moto().endpoint.clone(),
            table: moto::unique(&format!("{prefix}-table")),
            queue: moto::unique(&format!("{prefix}-q")),
            bucket: moto::unique(&format!("{prefix}-bucket")),
            scratch: common::Scratch::new(),
        }
    }

    /// `orch <args>` in the scratch directory with only the environment a user would set,
    /// talking to `endpoint` (moto, or a proxy in front of it).
    fn orch(&self, endpoint: &str, args: &[&str]) -> Command {
        let mut c = Command::new(common::orch());
        c.args(args)
            .current_dir(self.scratch.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ORCH_WORKER", common::worker())
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ORCH_DYNAMODB_TABLE", &self.table)
            .env("ORCH_SQS_QUEUE", &self.queue)
            .env("ORCH_SCRATCH", self.scratch.path("tmp"));
        c
    }

    /// Creates the table, queues and bucket with `orch init`, uploads the example's input and
    /// writes a job file that reads and writes S3 only.
    async fn prepare(&self) -> PathBuf {
        let out = self
            .orch(&self.endpoint, &["init", "--bucket", &self.bucket])
            .output()
            .unwrap();
        assert!(out.status.success(), "orch init: {}", common::text(&out));

        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/reviews-sentiment");
        let example = example.canonicalize().unwrap();
        let sdk = moto::sdk_config().await;
        let s3 = config::s3_client(&sdk, &AwsSettings::default());
        s3.put_object()
            .bucket(&self.bucket)
            .key("input/reviews.jsonl")
            .body(std::fs::read(example.join("reviews.jsonl")).unwrap().into())
            .send()
            .await
            .unwrap();
        // Eight batches; a fan-in of 3 gives one merge level (3 groups) before the final
        // merge, so remote merge groups are exercised too.
        let job = format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: reviews-s3}}
spec:
  input: {{uri: "s3://{bucket}/input/reviews.jsonl"}}
  batch: {{size: 250}}
  handler:
    exec: {{command: ["python3", "handler.py"], workdir: "{workdir}"}}
    concurrency: 4
    timeout: 30s
  retry: {{maxAttempts: 3, backoff: {{initial: 200ms, factor: 2, max: 5s}}}}
  tolerance: {{maxFailedItemsPercent: 2}}
  storage: {{uri: "s3://{bucket}/orch/"}}
  output: {{uri: "s3://{bucket}/out/", fanIn: 3, formats: [parquet, sqlite]}}
  executor: {{local: {{parallelism: 2}}}}
"#,
            bucket = self.bucket,
            workdir = example.display(),
        );
        self.scratch.write("job.yaml", &job)
    }

    /// Downloads every object under `out/` with the SDK into a local directory.
    async fn download_output(&self) -> (PathBuf, Vec<String>) {
        let sdk = moto::sdk_config().await;
        let s3 = config::s3_client(&sdk, &AwsSettings::default());
        let dir = self.scratch.path("downloaded");
        let names = moto::download_prefix(&s3, &self.bucket, "out/", &dir).await;
        (dir, names)
    }

    /// Checks the output, the rows in DynamoDB and `orch status`, after a successful run.
    async fn check_finished_job(&self, out: &Output, job_file: &Path) {
        let printed = common::text(out);
        assert_eq!(out.status.code(), Some(0), "{printed}");
        assert!(
            !printed.contains(SECRET),
            "a secret was printed:\n{printed}"
        );

        let (dir, names) = self.download_output().await;
        assert!(names.contains(&"_SUCCESS".to_string()), "{names:?}");
        assert!(names.contains(&"output.sqlite".to_string()), "{names:?}");
        let seen = common::read_output(&dir);
        assert_eq!(seen.rows + seen.error_rows, ITEMS, "{seen:?}");
        seen.assert_each_item_once(ITEMS);
        assert!(seen.error_rows > 0, "the example has failing items");
        assert_eq!(
            seen.error_kinds.keys().collect::<Vec<_>>(),
            vec!["permanent"],
            "{seen:?}"
        );

        // The job and every task row in DynamoDB, in their final state.
        let sdk = moto::sdk_config().await;
        let state = DynamoStateStore::new(
            config::dynamodb_client(&sdk),
            self.table.clone(),
            Keys::for_storage(&format!("s3://{}/orch/", self.bucket)).unwrap(),
        );
        let jobs = state.list_jobs().await.unwrap();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let job = &jobs[0];
        assert_eq!(job.phase, JobPhase::Succeeded, "{job:?}");
        let tasks = state.list_tasks(&job.id).await.unwrap();
        // Eight batches, then three merge groups and the final merge.
        assert_eq!(tasks.iter().filter(|t| t.kind.is_work()).count(), 8);
        assert_eq!(tasks.len(), 12, "{tasks:?}");
        for t in &tasks {
            assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
            assert_eq!(t.lease_expiry, None, "{t:?}");
        }
        let ok: u64 = tasks.iter().map(|t| t.items_ok).sum();
        let failed: u64 = tasks.iter().map(|t| t.items_failed).sum();
        assert_eq!((ok, failed), (seen.rows, seen.error_rows));

        // `orch status` reads the same job from S3 and DynamoDB, and verifies its results.
        let status = self
            .orch(
                &self.endpoint,
                &[
                    "status",
                    job_file.to_str().unwrap(),
                    "--verify",
                    "-o",
                    "json",
                ],
            )
            .output()
            .unwrap();
        assert_eq!(status.status.code(), Some(0), "{}", common::text(&status));
        let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(report["phase"], "succeeded", "{report}");
        assert_eq!(report["results"]["verified"], 8, "{report}");
        assert_eq!(
            report["errorsByKind"]["permanent"], seen.error_rows,
            "{report}"
        );
    }
}

/// A final merge that cannot write its output (the output directory is a file) on S3 storage:
/// the final task is retried with backoff like any task, its attempts show in DynamoDB and in
/// `orch status`, and the job ends failed with the task named, instead of aggregating forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_merge_that_keeps_failing_fails_the_job_after_its_attempts() {
    if !orch_testkit::components::moto() {
        return;
    }
    let aws = Aws::new("merge-fails");
    let job_file = aws.prepare().await;
    let blocked = aws
        .scratch
        .write("blocked", "a file where a directory should be");
    let yaml = std::fs::read_to_string(&job_file).unwrap().replace(
        &format!(
            "output: {{uri: \"s3://{}/out/\", fanIn: 3, formats: [parquet, sqlite]}}",
            aws.bucket
        ),
        &format!("output: {{uri: \"{}/out\", fanIn: 3}}", blocked.display()),
    );
    assert!(yaml.contains("blocked/out"), "{yaml}");
    std::fs::write(&job_file, yaml).unwrap();

    let out = run_job(&aws, &aws.endpoint, &job_file).await;
    let printed = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("aggregation failed: final merge task"),
        "{printed}"
    );

    let sdk = moto::sdk_config().await;
    let state = DynamoStateStore::new(
        config::dynamodb_client(&sdk),
        aws.table.clone(),
        Keys::for_storage(&format!("s3://{}/orch/", aws.bucket)).unwrap(),
    );
    let job = &state.list_jobs().await.unwrap()[0];
    assert_eq!(job.phase, JobPhase::Failed, "{job:?}");
    let tasks = state.list_tasks(&job.id).await.unwrap();
    let last = tasks
        .iter()
        .find(|t| t.kind == orch_core::model::TaskKind::Final)
        .expect("a final merge task");
    assert_eq!(last.state, TaskState::Failed, "{last:?}");
    assert_eq!(last.counted_attempts(), 3, "{last:?}");
    // The merge levels before it succeeded.
    assert!(
        tasks
            .iter()
            .filter(|t| matches!(t.kind, orch_core::model::TaskKind::Merge { .. }))
            .all(|t| t.state == TaskState::Succeeded),
        "{tasks:?}"
    );

    let status = aws
        .orch(
            &aws.endpoint,
            &["status", job_file.to_str().unwrap(), "-o", "json"],
        )
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["mergeTasks"]["failed"], 1, "{report}");
    assert_eq!(report["mergeTasks"]["succeeded"], 3, "{report}");
    let failed = report["failedTasks"].as_array().unwrap();
    assert!(
        failed
            .iter()
            .any(|t| t["kind"] == "final merge" && t["attempt"] == 3),
        "{report}"
    );

    // `orch logs` names each failed attempt of the final merge and shows the end of its log,
    // from the copy each worker stored in S3: not from where `orch run` kept their logs here.
    let here = aws.scratch.path(".orch/logs");
    assert!(
        here.is_dir(),
        "orch run kept the workers' logs in {}",
        here.display()
    );
    std::fs::remove_dir_all(&here).unwrap();
    let logs = aws
        .orch(&aws.endpoint, &["logs", job_file.to_str().unwrap()])
        .output()
        .unwrap();
    let printed = common::text(&logs);
    assert_eq!(logs.status.code(), Some(0), "{printed}");
    let stdout = String::from_utf8_lossy(&logs.stdout);
    for attempt in 1..=3 {
        assert!(
            stdout.contains(&format!(
                "==> task {} attempt {attempt}, final merge, failed: ",
                last.id
            )),
            "{printed}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| !l.starts_with("==> ") && l.contains("blocked")),
        "the log's end names the path that cannot be written: {printed}"
    );
}

/// A cancel while the final merge (on S3 storage) waits for its retry: no second attempt, the
/// job ends cancelled in DynamoDB with its final merge task cancelled after one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_aggregation_stops_the_merge_tasks() {
    if !orch_testkit::components::moto() {
        return;
    }
    let aws = Aws::new("merge-cancel");
    let job_file = aws.prepare().await;
    let blocked = aws
        .scratch
        .write("blocked", "a file where a directory should be");
    let yaml = std::fs::read_to_string(&job_file)
        .unwrap()
        .replace(
            &format!(
                "output: {{uri: \"s3://{}/out/\", fanIn: 3, formats: [parquet, sqlite]}}",
                aws.bucket
            ),
            &format!("output: {{uri: \"{}/out\", fanIn: 3}}", blocked.display()),
        )
        .replace(
            "backoff: {initial: 200ms, factor: 2, max: 5s}",
            "backoff: {initial: 10m, factor: 2, max: 10m}",
        );
    assert!(
        yaml.contains("blocked/out") && yaml.contains("10m"),
        "{yaml}"
    );
    std::fs::write(&job_file, yaml).unwrap();

    let run = tokio::spawn({
        let mut cmd = aws.orch(
            &aws.endpoint,
            &["run", job_file.to_str().unwrap(), "--no-progress"],
        );
        async move { tokio::task::spawn_blocking(move || cmd.output().unwrap()).await }
    });
    let sdk = moto::sdk_config().await;
    let state = DynamoStateStore::new(
        config::dynamodb_client(&sdk),
        aws.table.clone(),
        Keys::for_storage(&format!("s3://{}/orch/", aws.bucket)).unwrap(),
    );
    let id = common::cancel_while_the_final_merge_waits(&state).await;
    let out = run.await.unwrap().unwrap();
    let printed = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("cancelled"), "{printed}");

    let job = state.get_job(&id).await.unwrap().expect("the job");
    assert_eq!(job.phase, JobPhase::Cancelled, "{job:?}");
    let tasks = state.list_tasks(&id).await.unwrap();
    let last = tasks
        .iter()
        .find(|t| t.kind == orch_core::model::TaskKind::Final)
        .expect("a final merge task");
    assert_eq!(last.state, TaskState::Cancelled, "{last:?}");
    assert_eq!(last.counted_attempts(), 1, "{last:?}");
}

/// Runs `orch run` off the async threads, so that a proxy served by this runtime keeps going.
async fn run_job(aws: &Aws, endpoint: &str, job_file: &Path) -> Output {
    let mut cmd = aws.orch(
        endpoint,
        &["run", job_file.to_str().unwrap(), "--no-progress"],
    );
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runs_on_s3_dynamodb_and_sqs() {
    if !orch_testkit::components::moto() || !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let aws = Aws::new("orch-run");
    let job_file = aws.prepare().await;
    let out = run_job(&aws, &aws.endpoint, &job_file).await;
    aws.check_finished_job(&out, &job_file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_survives_errors_resets_and_an_outage_of_the_aws_endpoints() {
    if !orch_testkit::components::moto() || !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let aws = Aws::new("orch-faults");
    let job_file = aws.prepare().await;
    let proxy = std::sync::Arc::new(FaultProxy::start(&aws.endpoint, Faults::default()).await);
    // One outage of three seconds, once the job is under way.
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outage = tokio::spawn({
        let (proxy, finished) = (proxy.clone(), finished.clone());
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = proxy.stats().resets;
            proxy.set_outage(true);
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.set_outage(false);
            let refused = proxy.stats().resets - before;
            (refused, finished.load(std::sync::atomic::Ordering::SeqCst))
        }
    });
    let out = run_job(&aws, &proxy.endpoint, &job_file).await;
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    let (refused, finished_before_the_outage_ended) = outage.await.unwrap();
    assert!(
        !finished_before_the_outage_ended && refused > 0,
        "the outage hit the running job ({refused} connections refused): {}",
        common::text(&out)
    );
    let stats = proxy.stats();
    assert!(
        stats.errors > 0 && stats.resets > refused,
        "faults were injected: {stats:?}"
    );
    aws.check_finished_job(&out, &job_file).await;
}

/// Chaos on the AWS data plane: the example on S3, DynamoDB and SQS through the fault proxy
/// (5 % errors, 3 % resets, 5 % slow answers), while `kill -9` lands at seeded random moments
/// on workers — during their work, their uploads, between a result upload and its `_DONE`,
/// during the merges — and once on the driver, which is started again as soon as its DynamoDB
/// job lease lets it. The output, read with pyarrow, holds every item once.
/// `ORCH_CHAOS_S3_KILLS` sets the worker kills per job (CI: 6), `ORCH_CHAOS_S3_TRIALS` the
/// jobs (CI: 1); `ORCH_CHAOS_SEED` replays a schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_workers_and_driver_on_a_faulty_aws_endpoint_loses_nothing() {
    if !orch_testkit::components::moto() || !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let seed = common::chaos_seed();
    let kills = common::setting("ORCH_CHAOS_S3_KILLS", 6);
    let trials = common::setting("ORCH_CHAOS_S3_TRIALS", 1);
    eprintln!(
        "chaos (s3): ORCH_CHAOS_SEED={seed} ORCH_CHAOS_S3_KILLS={kills} ORCH_CHAOS_S3_TRIALS={trials}"
    );
    let mut rng = common::Rng::new(seed);
    let (mut workers_killed, mut drivers_killed, mut errors, mut resets) = (0, 0, 0, 0);
    for trial in 0..trials {
        let (workers, driver, stats) = s3_kill_trial(&mut rng, kills, seed + trial).await;
        workers_killed += workers;
        drivers_killed += u64::from(driver);
        errors += stats.errors;
        resets += stats.resets;
    }
    common::chaos_summary(
        "s3",
        seed,
        &format!(
            "{trials} jobs, {} faults ({workers_killed} worker kill -9, \
         {drivers_killed} driver kill -9) with {errors} error answers and {resets} resets from \
         the proxy",
            workers_killed + drivers_killed
        ),
    );
}

/// One job of [`kill_9_of_workers_and_driver_on_a_faulty_aws_endpoint_loses_nothing`], checked
/// once it is done: the worker kills made, whether the driver was killed, what the proxy did.
async fn s3_kill_trial(
    rng: &mut common::Rng,
    kills: u64,
    proxy_seed: u64,
) -> (u64, bool, fault_proxy::FaultStats) {
    let aws = Aws::new("orch-chaos");
    let job_file = aws.prepare().await;
    // A kill -9 uses up an attempt: enough of them for every kill to land on one task.
    let spec = std::fs::read_to_string(&job_file).unwrap();
    std::fs::write(
        &job_file,
        spec.replace("maxAttempts: 3", &format!("maxAttempts: {}", kills + 3)),
    )
    .unwrap();
    let proxy = FaultProxy::start(
        &aws.endpoint,
        Faults {
            seed: proxy_seed,
            ..Faults::default()
        },
    )
    .await;
    let storage = format!("s3://{}/orch/", aws.bucket);
    let spawn = || {
        aws.orch(
            &proxy.endpoint,
            &["run", job_file.to_str().unwrap(), "--no-progress"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (mut workers_killed, mut driver_killed) = (0u64, false);
    let mut driver = spawn();
    let started = std::time::Instant::now();
    let out = loop {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the job did not finish within 15 minutes"
        );
        if let Some(status) = driver.try_wait().unwrap() {
            let out = driver.wait_with_output().unwrap();
            let printed = common::text(&out);
            if status.success() {
                break out;
            }
            // A driver started again while the killed one's lease still holds is refused;
            // it is started again until the lease runs out.
            assert!(printed.contains("already being run"), "{printed}");
            tokio::time::sleep(Duration::from_secs(2)).await;
            driver = spawn();
            continue;
        }
        tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
        if workers_killed >= kills && driver_killed {
            continue;
        }
        if workers_killed < kills && (driver_killed || rng.below(kills + 1) > 0) {
            let pids = common::workers_of_storage(&storage);
            if let Some(&pid) = pids.get(rng.below(pids.len() as u64) as usize) {
                common::kill(pid, "-KILL");
                workers_killed += 1;
            }
        } else if !driver_killed {
            common::kill(driver.id(), "-KILL");
            driver.wait().unwrap();
            driver_killed = true;
            driver = spawn();
        }
    };
    let stats = proxy.stats();
    assert!(stats.errors > 0 && stats.resets > 0, "{stats:?}");
    aws.check_finished_job(&out, &job_file).await;
    (workers_killed, driver_killed, stats)
}

/// A worker node whose scratch disk is full (S3 storage builds every file in scratch first):
/// each attempt fails at once, before it claims its task, with an error naming the scratch
/// directory and `ORCH_SCRATCH_MIN_FREE`, so the job fails within its retry policy instead of
/// failing hours into the work; once the disk has room, `orch retry` runs the failed tasks and
/// the output is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scratch_disk_fails_attempts_clearly_and_a_retry_completes_the_job() {
    if !orch_testkit::components::moto() || !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let Some(disk) = common::SmallDisk::mount(256 << 10) else {
        return;
    };
    let aws = Aws::new("orch-scratch");
    let job_file = aws.prepare().await;
    let spec = std::fs::read_to_string(&job_file).unwrap();
    std::fs::write(&job_file, spec.replace("maxAttempts: 3", "maxAttempts: 2")).unwrap();
    let run = |args: &[&str]| {
        let mut c = aws.orch(&aws.endpoint, args);
        c.env("ORCH_SCRATCH", disk.dir.path())
            .env("ORCH_SCRATCH_MIN_FREE", "1Mi");
        c
    };
    let mut cmd = run(&["run", job_file.to_str().unwrap(), "--no-progress"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    let status = run(&["status", job_file.to_str().unwrap(), "-o", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["phase"], "failed", "{report}");
    let reasons = report["deadLetter"]["tasks"].to_string();
    assert!(
        reasons.contains("scratch space") && reasons.contains("ORCH_SCRATCH_MIN_FREE"),
        "{report}"
    );

    disk.resize(64 << 20);
    let mut cmd = run(&["retry", job_file.to_str().unwrap()]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    aws.check_finished_job(&out, &job_file).await;
}
