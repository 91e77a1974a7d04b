//! `CliApi` against the real one-node test cluster (tests/slurm/start.sh). Runs when
//! `ORCH_SLURM_ENV` names the cluster's env file (`export K=V` lines: `SLURM_CONF`, …), as CI
//! sets it; otherwise each test says it is skipped (and fails under `CI`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use orch_slurm::cli::CliApi;
use orch_slurm::{ArrayJob, ArraySubmission, ArrayTask, SlurmApi};

/// The variables of the cluster's env file, or `None` when the tests are off (skipped
/// visibly; a failure under CI).
fn cluster() -> Option<Vec<(String, String)>> {
    Some(orch_testkit::components::slurm_env()?.into_iter().collect())
}

fn api(vars: &[(String, String)]) -> CliApi {
    vars.iter()
        .fold(CliApi::new(None), |api, (k, v)| api.with_env(k, v))
}

/// A job name no other test uses.
fn unique_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("orch-cli-live-{what}-{}-{nanos}", std::process::id())
}

/// Cancels the arrays named `name` when the test ends, passed or not.
struct Cleanup {
    name: String,
    vars: Vec<(String, String)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("scancel")
            .arg(format!("--name={}", self.name))
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .status();
    }
}

fn submission(
    name: &str,
    dir: &Path,
    array: Vec<u32>,
    max_running: Option<u32>,
    script: &str,
) -> ArraySubmission {
    ArraySubmission {
        name: name.to_string(),
        comment: format!("orch:work:g0:b0:{}", &name[name.len() - 6..]),
        indices: array,
        max_running,
        script: script.to_string(),
        cpus_per_task: 1,
        memory_mb: 50,
        time_minutes: 2,
        partition: Some("debug".into()),
        account: Some("orch".into()),
        qos: None,
        gres: None,
        constraint: None,
        output: dir.join("task-%A_%a.log").display().to_string(),
        signal: "B:TERM@30".into(),
        extra: vec!["--no-requeue".into()],
        environment: vec![("ORCH_CLI_LIVE".into(), "a,b=c d".into())],
        workdir: dir.to_path_buf(),
    }
}

fn terminal(task: &ArrayTask) -> bool {
    !matches!(
        task.state.split([' ', '+']).next().unwrap_or_default(),
        "PENDING" | "RUNNING" | "COMPLETING" | "CONFIGURING" | "REQUEUED" | "SUSPENDED"
    )
}

/// Polls `arrays(name)` until `done` holds for the array `id`.
async fn wait_for(
    api: &CliApi,
    name: &str,
    id: u64,
    limit: Duration,
    what: &str,
    done: impl Fn(&ArrayJob) -> bool,
) -> ArrayJob {
    let started = Instant::now();
    loop {
        let arrays = api.arrays(name).await.unwrap();
        if let Some(array) = arrays.into_iter().find(|a| a.array_job_id == id) {
            if done(&array) {
                return array;
            }
            assert!(
                started.elapsed() < limit,
                "waited {limit:?} for {what}: {:?}",
                array.tasks
            );
        } else {
            assert!(started.elapsed() < limit, "array {id} never appeared");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn cluster_info_live() {
    let Some(vars) = cluster() else {
        return;
    };
    let info = api(&vars).cluster_info().await.unwrap();
    assert_eq!(info.max_array_size, 1001);
    let parts: Vec<(&str, Option<u64>, bool)> = info
        .partitions
        .iter()
        .map(|p| (p.name.as_str(), p.max_time_minutes, p.default))
        .collect();
    assert_eq!(
        parts,
        [("debug", Some(30), true), ("short", Some(5), false)]
    );
}

#[tokio::test]
async fn an_array_runs_to_its_exit_codes_live() {
    let Some(vars) = cluster() else {
        return;
    };
    let api = api(&vars);
    let name = unique_name("exit");
    let _cleanup = Cleanup {
        name: name.clone(),
        vars: vars.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let script = "#!/bin/sh\necho $SLURM_ARRAY_TASK_ID; echo \"$ORCH_CLI_LIVE\" >&2; exit $(( SLURM_ARRAY_TASK_ID % 2 ))\n";
    let sub = submission(&name, dir.path(), vec![0, 1, 2, 3], None, script);
    let id = api.submit(&sub).await.unwrap();
    let array = wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(120),
        "all tasks to end",
        |a| a.tasks.len() == 4 && a.tasks.iter().all(terminal),
    )
    .await;
    assert_eq!(array.name, name);
    assert_eq!(array.comment, sub.comment);
    for t in &array.tasks {
        if t.index % 2 == 0 {
            assert_eq!(
                (t.state.as_str(), t.exit_code),
                ("COMPLETED", Some(0)),
                "{t:?}"
            );
        } else {
            assert_eq!(
                (t.state.as_str(), t.exit_code),
                ("FAILED", Some(1)),
                "{t:?}"
            );
        }
        assert_eq!(t.signal, None, "{t:?}");
        // --output and --error in one file under --chdir; the variable reached the task
        // through sbatch's environment, comma and all.
        let log =
            std::fs::read_to_string(dir.path().join(format!("task-{id}_{}.log", t.index))).unwrap();
        assert_eq!(log, format!("{}\na,b=c d\n", t.index), "task {}", t.index);
    }
}

#[tokio::test]
async fn hold_release_and_cancel_live() {
    let Some(vars) = cluster() else {
        return;
    };
    let api = api(&vars);
    let name = unique_name("hold");
    let _cleanup = Cleanup {
        name: name.clone(),
        vars: vars.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    // One task at a time, each long: the others stay pending.
    let sub = submission(
        &name,
        dir.path(),
        vec![0, 1, 2, 3],
        Some(1),
        "#!/bin/sh\nsleep 100\n",
    );
    let id = api.submit(&sub).await.unwrap();
    api.hold(id).await.unwrap();
    let held = |t: &ArrayTask| t.state == "PENDING" && t.reason.as_deref() == Some("JobHeldAdmin");
    // Every task is held, except one that started before the hold.
    wait_for(&api, &name, id, Duration::from_secs(30), "the hold", |a| {
        a.tasks.len() == 4
            && a.tasks.iter().all(|t| held(t) || t.state == "RUNNING")
            && a.tasks.iter().filter(|t| held(t)).count() >= 3
    })
    .await;
    // Holding again (and holding an array with running tasks) is no error.
    api.hold(id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let array = wait_for(&api, &name, id, Duration::from_secs(5), "", |_| true).await;
    assert!(
        array.tasks.iter().filter(|t| t.index > 0).all(held),
        "held tasks must not start: {:?}",
        array.tasks
    );

    api.release(id).await.unwrap();
    wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(30),
        "the release",
        |a| a.tasks.iter().all(|t| !held(t)),
    )
    .await;

    // Cancelling one pending task: Slurm drops it from the array, the API reports it
    // cancelled; the others go on.
    api.cancel(id, &[2]).await.unwrap();
    let array = wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(30),
        "task 2 cancelled",
        |a| {
            a.tasks
                .iter()
                .any(|t| t.index == 2 && t.state.starts_with("CANCELLED"))
        },
    )
    .await;
    assert!(
        array
            .tasks
            .iter()
            .filter(|t| t.index != 2)
            .all(|t| !terminal(t)),
        "{:?}",
        array.tasks
    );

    // Cancelling the rest, running or not.
    api.cancel(id, &[]).await.unwrap();
    let array = wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(60),
        "all cancelled",
        |a| a.tasks.len() == 4 && a.tasks.iter().all(terminal),
    )
    .await;
    assert!(
        array.tasks.iter().all(|t| t.state.starts_with("CANCELLED")),
        "{:?}",
        array.tasks
    );
    // Cancelling, holding and releasing an ended array is no error either.
    api.cancel(id, &[0, 1]).await.unwrap();
    api.hold(id).await.unwrap();
    api.release(id).await.unwrap();
}

#[tokio::test]
async fn a_bad_partition_is_invalid_live() {
    let Some(vars) = cluster() else {
        return;
    };
    let api = api(&vars);
    let name = unique_name("bad");
    let _cleanup = Cleanup {
        name: name.clone(),
        vars: vars.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sub = submission(&name, dir.path(), vec![0], None, "#!/bin/sh\ntrue\n");
    sub.partition = Some("nosuch".into());
    let e = api.submit(&sub).await.unwrap_err();
    assert_eq!(e.category(), orch_core::ErrorCategory::Invalid, "{e}");
    assert!(e.to_string().contains("spec.resources.partition"), "{e}");
    assert!(api.arrays(&name).await.unwrap().is_empty());
}
