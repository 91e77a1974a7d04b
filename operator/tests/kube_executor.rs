//! The Kubernetes executor against the API emulator (tests/kube-emulator; no API server can be
//! installed here, tests/README.md) started with `--run-jobs`: it runs each pod of an Indexed Job as a
//! local process — the container's command and args — with `JOB_COMPLETION_INDEX` set.
//!
//! The worker is a stand-in shell script (the executor's program is configurable) that reads
//! its arguments as `orch-worker` would, computes its task id from `--task-offset` and the
//! index, and records in the "storage" directory that it started and that it ran. It can be
//! held (a `hold` or `hold-<task>` file) and made to fail (`fail-<task>`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};
use orch_core::backend::{ExecState, Executor};
use orch_core::model::{TaskGroup, TaskKind};
use orch_core::spec::{KubernetesExecutorSpec, ResourcesSpec};
use orch_operator::kube_executor::manifest::{job_selector, parse_executor_id};
use orch_operator::kube_executor::{KubeExecutor, KubeLaunch};
use orch_testkit::kube_emulator::{KubeEmulator, Options};

const JOB_ID: &str = "emu-0badc0de";

const WORKER: &str = r#"#!/bin/sh
# Stand-in for orch-worker: `run|aggregate … --storage DIR … --task-offset N`, index from
# JOB_COMPLETION_INDEX.
verb=$1
dir=
offset=0
while [ $# -gt 0 ]; do
  case "$1" in
    --storage) dir=$2; shift ;;
    --task-offset) offset=$2; shift ;;
  esac
  shift
done
task=$((offset + JOB_COMPLETION_INDEX))
echo "$verb" >> "$dir/started-$task"
while [ -f "$dir/hold" ] || [ -f "$dir/hold-$task" ]; do sleep 0.05; done
if [ -f "$dir/fail-$task" ]; then exit 3; fi
echo "$verb" >> "$dir/ran-$task"
"#;

/// The emulator and a scratch directory; both go away when dropped (in that order).
struct Emulator {
    _emulator: KubeEmulator,
    dir: tempfile::TempDir,
    client: kube::Client,
}

impl Emulator {
    async fn start() -> Emulator {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("storage")).unwrap();
        std::fs::write(dir.path().join("worker.sh"), WORKER).unwrap();
        let emulator = KubeEmulator::start(
            &dir.path().join("kubeconfig"),
            Options {
                run_jobs: Some(dir.path().join("logs")),
                ..Options::default()
            },
        );
        let client = emulator.client().await;
        Emulator {
            _emulator: emulator,
            dir,
            client,
        }
    }

    fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn executor(&self, parallelism: u32) -> KubeExecutor {
        let launch = KubeLaunch {
            namespace: "default".into(),
            owner: None,
            orch_job_name: "emu".into(),
            job_id: JOB_ID.into(),
            storage: self.storage().display().to_string(),
            default_image: "example.invalid/orch-worker:test".into(),
            worker_command: vec![
                "/bin/sh".into(),
                self.dir.path().join("worker.sh").display().to_string(),
            ],
            resources: ResourcesSpec::default(),
            scratch_bytes: 1 << 30,
            spec: KubernetesExecutorSpec {
                parallelism,
                ..KubernetesExecutorSpec::default()
            },
            environment: vec![("ORCH_LOG".into(), "debug".into())],
            secrets: Vec::new(),
        };
        KubeExecutor::new(self.client.clone(), launch)
            .unwrap()
            .with_query_interval(Duration::from_millis(100))
    }

    /// Lines of `<storage>/<what>-<task>` (how often the task started or ran, and as what).
    fn lines(&self, what: &str, task: u32) -> Vec<String> {
        std::fs::read_to_string(self.storage().join(format!("{what}-{task}")))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn touch(&self, file: &str) {
        std::fs::write(self.storage().join(file), "").unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.storage().join(file)).unwrap();
    }

    async fn jobs(&self) -> Vec<Job> {
        Api::<Job>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default().labels(&job_selector(JOB_ID)))
            .await
            .unwrap()
            .items
    }

    async fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn group(id: u32, tasks: &[u32]) -> TaskGroup {
    TaskGroup {
        job: JOB_ID.into(),
        id,
        tasks: tasks.iter().map(|t| (*t, 1)).collect(),
        kind: TaskKind::Work,
        manifest_sha256: None,
    }
}

fn asked(ids: &[(u32, String)]) -> Vec<(u32, u32, Option<String>)> {
    ids.iter()
        .map(|(t, id)| (*t, 1, Some(id.clone())))
        .collect()
}

fn finished(state: &ExecState) -> bool {
    matches!(state, ExecState::Exited { .. } | ExecState::Failed { .. })
}

/// Polls until every asked task has ended; their states by task.
async fn poll_until_done(
    exec: &KubeExecutor,
    asked: &[(u32, u32, Option<String>)],
    timeout: Duration,
) -> Vec<(u32, ExecState)> {
    let start = Instant::now();
    loop {
        let states: Vec<(u32, ExecState)> = exec
            .poll(asked)
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.task, s.state))
            .collect();
        if states.iter().all(|(_, s)| finished(s)) {
            return states;
        }
        assert!(
            start.elapsed() < timeout,
            "tasks still not done after {timeout:?}: {states:?}"
        );
        exec.wait_change(Duration::from_millis(100)).await;
    }
}

const ZERO: ExecState = ExecState::Exited {
    code: Some(0),
    signal: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_runs_once_with_its_own_id_and_exits_are_reported() {
    let emu = Emulator::start().await;
    let exec = emu.executor(3);
    emu.touch("fail-11");
    let mut ids = exec.submit(&group(0, &[0, 1, 2, 3, 4, 5])).await.unwrap();
    // Scattered retries: two Jobs (10-11 and 20).
    ids.extend(exec.submit(&group(1, &[20, 11, 10])).await.unwrap());
    assert_eq!(emu.jobs().await.len(), 3);

    let states = poll_until_done(&exec, &asked(&ids), Duration::from_secs(60)).await;
    for (task, state) in &states {
        if *task == 11 {
            assert_eq!(
                *state,
                ExecState::Exited {
                    code: Some(3),
                    signal: None
                }
            );
        } else {
            assert_eq!(*state, ZERO, "task {task}");
        }
    }
    for task in [0, 1, 2, 3, 4, 5, 10, 20] {
        assert_eq!(emu.lines("started", task), ["run"], "task {task}");
        assert_eq!(emu.lines("ran", task), ["run"], "task {task}");
    }
    assert_eq!(emu.lines("started", 11), ["run"]);
    assert!(emu.lines("ran", 11).is_empty());
    // Nothing ran that was not asked for.
    for task in [6, 7, 8, 9, 12, 19, 21] {
        assert!(emu.lines("started", task).is_empty(), "task {task}");
    }

    // A restarted coordinator submitting the same group again creates nothing and runs
    // nothing twice.
    let again = exec.submit(&group(0, &[0, 1, 2, 3, 4, 5])).await.unwrap();
    assert_eq!(again, ids[..6]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(emu.jobs().await.len(), 3);
    assert_eq!(emu.lines("started", 0), ["run"]);

    // The final merge runs `aggregate`.
    let ids = exec
        .submit(&TaskGroup {
            job: JOB_ID.into(),
            id: 0,
            tasks: vec![(0, 1)],
            kind: TaskKind::Final,
            manifest_sha256: None,
        })
        .await
        .unwrap();
    let states = poll_until_done(&exec, &asked(&ids), Duration::from_secs(30)).await;
    assert_eq!(states[0].1, ZERO);
    assert_eq!(emu.lines("ran", 0), ["run", "aggregate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_job_starts_nothing_until_resumed() {
    let emu = Emulator::start().await;
    let exec = emu.executor(1);
    emu.touch("hold");
    let ids = exec.submit(&group(0, &[0, 1, 2])).await.unwrap();
    emu.wait_for("task 0 to start", Duration::from_secs(30), |e| {
        !e.lines("started", 0).is_empty()
    })
    .await;

    exec.pause().await.unwrap();
    let jobs = emu.jobs().await;
    assert!(
        jobs.iter()
            .all(|j| j.spec.as_ref().unwrap().suspend == Some(true))
    );
    // The Job controller acts on the suspension in its own time, as on a cluster: wait until
    // it says so and its pod is gone before letting go of the worker.
    let start = Instant::now();
    loop {
        let jobs = emu.jobs().await;
        let stopped = jobs.iter().all(|j| {
            let status = j.status.as_ref();
            let suspended = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Suspended" && c.status == "True")
            });
            suspended
                && status
                    .is_some_and(|s| s.active.unwrap_or(0) == 0 && s.terminating.unwrap_or(0) == 0)
        });
        if stopped {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the Job was not suspended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let go of the worker: a running worker would now finish, and the Job would start the
    // next index. Suspended, neither happens.
    emu.remove("hold");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        emu.lines("ran", 0).is_empty(),
        "the running pod was stopped"
    );
    assert!(emu.lines("started", 1).is_empty() && emu.lines("started", 2).is_empty());
    let states = exec.poll(&asked(&ids)).await.unwrap();
    assert!(
        states.iter().skip(1).all(|s| s.state == ExecState::Queued),
        "{states:?}"
    );
    // A group submitted while paused waits too.
    let later = exec.submit(&group(1, &[7])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(emu.lines("started", 7).is_empty());

    exec.resume().await.unwrap();
    let mut all = asked(&ids);
    all.extend(asked(&later));
    let states = poll_until_done(&exec, &all, Duration::from_secs(60)).await;
    assert!(states.iter().all(|(_, s)| *s == ZERO), "{states:?}");
    // Task 0 started again after the resume (its first pod was stopped before it ran).
    assert_eq!(emu.lines("started", 0), ["run", "run"]);
    for task in [0, 1, 2, 7] {
        assert_eq!(emu.lines("ran", task), ["run"], "task {task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_everything_deletes_the_job_and_its_pods() {
    let emu = Emulator::start().await;
    let exec = emu.executor(2);
    emu.touch("hold");
    let ids = exec.submit(&group(0, &[0, 1, 2])).await.unwrap();
    emu.wait_for("two tasks to start", Duration::from_secs(30), |e| {
        !e.lines("started", 0).is_empty() && !e.lines("started", 1).is_empty()
    })
    .await;
    exec.cancel(&asked(&ids)).await.unwrap();
    let start = Instant::now();
    while !emu.jobs().await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the Job is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let states = exec.poll(&asked(&ids)).await.unwrap();
    assert!(
        states.iter().all(|s| s.state == ExecState::Unknown),
        "{states:?}"
    );
    // The pods' processes were stopped: letting go of them runs nothing.
    emu.remove("hold");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for task in [0, 1, 2] {
        assert!(emu.lines("ran", task).is_empty(), "task {task}");
    }
    assert!(emu.lines("started", 2).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_some_indexes_stops_them_and_the_job_goes_on() {
    let emu = Emulator::start().await;
    let exec = emu.executor(1);
    emu.touch("hold-0");
    emu.touch("hold-2");
    let ids = exec.submit(&group(0, &[0, 1, 2])).await.unwrap();
    emu.wait_for("task 0 to start", Duration::from_secs(30), |e| {
        !e.lines("started", 0).is_empty()
    })
    .await;
    // Task 0 runs (held), task 2 has no pod yet: cancel both; task 1 goes on.
    exec.cancel(&[asked(&ids)[0].clone(), asked(&ids)[2].clone()])
        .await
        .unwrap();
    let states = poll_until_done(&exec, &asked(&ids), Duration::from_secs(60)).await;
    assert_eq!(states[1], (1, ZERO));
    assert!(
        !matches!(states[0].1, ExecState::Exited { code: Some(0), .. }),
        "{states:?}"
    );
    assert!(
        !matches!(states[2].1, ExecState::Exited { code: Some(0), .. }),
        "{states:?}"
    );
    assert!(emu.lines("ran", 0).is_empty() && emu.lines("ran", 2).is_empty());
    assert_eq!(emu.lines("ran", 1), ["run"]);
    // The Job still exists (it ran task 1), its cancelled indexes failed.
    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 1);
    let name = parse_executor_id(&ids[0].1).unwrap().0;
    assert_eq!(jobs[0].metadata.name.as_deref(), Some(name));
    let status = jobs[0].status.clone().unwrap();
    assert_eq!(status.completed_indexes.as_deref(), Some("1"));
    assert_eq!(status.failed_indexes.as_deref(), Some("0,2"));
}
