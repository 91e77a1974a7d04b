//! The REST transport against a real slurmrestd: the one-node Slurm 22.05 cluster of
//! `tests/slurm/start.sh` (REST API v0.0.38). Runs when `ORCH_SLURM_ENV` names the env file
//! that script writes (`export SLURMRESTD_URL=…`, `export SLURM_JWT=…`); otherwise it prints
//! that it is skipped (and fails under `CI`).
//!
//! ```sh
//! bash tests/slurm/start.sh
//! ORCH_SLURM_ENV=/tmp/orch-slurm/env cargo test -p orch-slurm --test rest_live -- --nocapture
//! ```
//!
//! The cluster is expected to have partitions `debug` (30 min, the default) and `short`
//! (5 min). The token is written to a temporary file, so the file-based token path is the
//! one exercised. Jobs run as `root` unless `ORCH_SLURM_USER` says otherwise (the token
//! `start.sh` makes is root's).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orch_core::backend::ExecState;
use orch_slurm::rest::{ApiVersion, PlainHttp, RestApi, TokenSource};
use orch_slurm::state::exec_state;
use orch_slurm::{ArrayJob, ArraySubmission, SlurmApi};

fn unique_name() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("orch-rest-live-{}-{secs}", std::process::id())
}

fn array(
    name: &str,
    comment: &str,
    indices: Vec<u32>,
    script: &str,
    dir: &Path,
) -> ArraySubmission {
    ArraySubmission {
        name: name.into(),
        comment: comment.into(),
        indices,
        max_running: None,
        script: script.into(),
        cpus_per_task: 1,
        memory_mb: 50,
        time_minutes: 3,
        partition: Some("debug".into()),
        account: None,
        qos: None,
        gres: None,
        constraint: None,
        output: dir.join("task-%A_%a.log").display().to_string(),
        signal: "B:TERM@30".into(),
        extra: vec![],
        environment: vec![("ORCH_REST_LIVE".into(), "1".into())],
        workdir: dir.to_path_buf(),
    }
}

/// How long the tasks may wait in the queue on top of a step's timeout: the test cluster is
/// shared with other tests, and a task still pending because the node is busy says nothing
/// about the REST transport.
const QUEUE_ALLOWANCE: Duration = Duration::from_secs(480);

/// Polls `arrays(name)` until `done` holds for the array `id`, or panics after `timeout`
/// (plus the time every task spent pending, up to [`QUEUE_ALLOWANCE`]).
async fn wait_for(
    api: &RestApi,
    name: &str,
    id: u64,
    timeout: Duration,
    what: &str,
    done: impl Fn(&ArrayJob) -> bool,
) -> ArrayJob {
    let start = Instant::now();
    let mut queued = Duration::ZERO;
    let poll = Duration::from_secs(2);
    let mut last = None;
    loop {
        let arrays = api.arrays(name).await.unwrap();
        if let Some(a) = arrays.into_iter().find(|a| a.array_job_id == id) {
            if done(&a) {
                println!(
                    "rest_live: {what} after {:.0} s",
                    start.elapsed().as_secs_f64()
                );
                return a;
            }
            if a.tasks.iter().all(|t| t.state == "PENDING") {
                queued = (queued + poll).min(QUEUE_ALLOWANCE);
            }
            last = Some(a);
        }
        assert!(
            start.elapsed() < timeout + queued,
            "rest_live: no {what} within {timeout:?} (+{queued:?} queued); last seen: {last:#?}"
        );
        tokio::time::sleep(poll).await;
    }
}

fn ended(state: &str) -> bool {
    !matches!(
        exec_state(&orch_slurm::ArrayTask {
            index: 0,
            state: state.into(),
            exit_code: None,
            signal: None,
            reason: None,
        }),
        ExecState::Queued | ExecState::Running
    )
}

#[tokio::test]
async fn rest_api_against_the_test_cluster() {
    let Some(env) = orch_testkit::components::slurm_env() else {
        return;
    };
    let url = env
        .get("SLURMRESTD_URL")
        .expect("SLURMRESTD_URL in the env file")
        .clone();
    let token = env.get("SLURM_JWT").expect("SLURM_JWT in the env file");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("jwt");
    std::fs::write(&token_file, token).unwrap();
    let user = std::env::var("ORCH_SLURM_USER").unwrap_or_else(|_| "root".into());
    let api = RestApi::new(
        url,
        Some(user),
        TokenSource::File(token_file),
        PlainHttp::Loopback,
    )
    .unwrap();
    assert!(
        !format!("{api:?}").contains(token.as_str()),
        "no token in Debug"
    );

    // The version: 22.05 offers v0.0.38 only.
    assert_eq!(api.version().await.unwrap(), ApiVersion::V0_0_38);

    // Partitions.
    let info = api.cluster_info().await.unwrap();
    println!("rest_live: {info:?}");
    assert_eq!(info.max_array_size, 1001);
    let debug = info.partitions.iter().find(|p| p.name == "debug").unwrap();
    assert_eq!((debug.max_time_minutes, debug.default), (Some(30), true));
    let short = info.partitions.iter().find(|p| p.name == "short").unwrap();
    assert_eq!((short.max_time_minutes, short.default), (Some(5), false));

    // A 4-task array exiting with its index modulo 2.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let name = unique_name();
    let comment = "orch:work:g0:b0:0000live0001";
    let id = api
        .submit(&array(
            &name,
            comment,
            vec![0, 1, 2, 3],
            "#!/bin/sh\nexit $((SLURM_ARRAY_TASK_ID % 2))\n",
            &work,
        ))
        .await
        .unwrap();
    println!("rest_live: submitted array {id} ({name})");
    let done = wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(120),
        "all 4 tasks ended",
        |a| a.tasks.len() == 4 && a.tasks.iter().all(|t| ended(&t.state)),
    )
    .await;
    assert_eq!(done.comment, comment);
    assert_eq!(done.name, name);
    for task in &done.tasks {
        if task.index % 2 == 0 {
            assert_eq!(
                (task.state.as_str(), task.exit_code),
                ("COMPLETED", Some(0)),
                "{task:?}"
            );
        } else {
            assert_eq!(
                (task.state.as_str(), task.exit_code),
                ("FAILED", Some(1)),
                "{task:?}"
            );
            assert_eq!(
                exec_state(task),
                ExecState::Exited {
                    code: Some(1),
                    signal: None
                }
            );
        }
    }

    // Hold and release a pending array, then cancel one running index.
    let name = unique_name() + "-long";
    let mut long = array(
        &name,
        "orch:work:g1:b0:0000live0002",
        vec![0, 1, 2],
        "#!/bin/sh\nsleep 300\n",
        &work,
    );
    long.max_running = Some(1);
    let id = api.submit(&long).await.unwrap();
    println!("rest_live: submitted array {id} ({name}), one task at a time");
    api.hold(id).await.unwrap();
    let held = wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(60),
        "pending tasks held",
        |a| {
            a.tasks.iter().any(|t| {
                t.state == "PENDING" && t.reason.as_deref().is_some_and(|r| r.contains("Held"))
            })
        },
    )
    .await;
    println!("rest_live: held: {:?}", held.tasks);
    api.release(id).await.unwrap();
    let running = wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(180),
        "a task running after release",
        |a| a.tasks.iter().any(|t| t.state == "RUNNING"),
    )
    .await;
    let index = running
        .tasks
        .iter()
        .find(|t| t.state == "RUNNING")
        .unwrap()
        .index;
    api.cancel(id, &[index]).await.unwrap();
    let cancelled = wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(120),
        "the cancelled task CANCELLED",
        |a| {
            a.tasks
                .iter()
                .any(|t| t.index == index && t.state == "CANCELLED")
        },
    )
    .await;
    println!("rest_live: after cancelling {index}: {:?}", cancelled.tasks);
    // The rest of the array: gone (pending tasks cancelled while still collapsed leave no
    // record) or CANCELLED.
    api.cancel(id, &[]).await.unwrap();
    wait_for(
        &api,
        &name,
        id,
        Duration::from_secs(120),
        "the whole array cancelled",
        |a| a.tasks.iter().all(|t| ended(&t.state)),
    )
    .await;
    // Cancelling again is not an error.
    api.cancel(id, &[index]).await.unwrap();
}
