//! The local executor against a fake worker: a shell script standing in for `orch-worker` (the
//! PATH-shim approach of HyperQueue), so the test checks what the executor does — array
//! environment, bounded parallelism, exit reporting, cancel — and nothing else.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use orch_core::backend::{ExecState, Executor};
use orch_core::model::TaskGroup;
use orch_embedded::{LocalExecutor, WorkerLaunch};

const FAKE_WORKER: &str = r#"#!/bin/sh
# Records start and end (to the MARKS file) with the array index, then exits with index % 3.
echo "start $ORCH_TASK_INDEX $SLURM_ARRAY_TASK_ID $(date +%s%N)" >> "MARKS"
sleep 0.3
echo "end $ORCH_TASK_INDEX $(date +%s%N)" >> "MARKS"
exit $((ORCH_TASK_INDEX % 3))
"#;

/// A kept worker (`serve …`): answers each task line with the task's index % 3 as its code,
/// after marking its own pid, the task and its `MALLOC_ARENA_MAX`; task 4 kills its worker instead. A merge
/// (`aggregate …`) marks `single` and exits 0.
const FAKE_SERVING_WORKER: &str = r#"#!/bin/sh
if [ "$1" != serve ]; then echo "single $ORCH_TASK_INDEX" >> "MARKS"; exit 0; fi
while read -r line; do
    task=$(printf '%s' "$line" | sed 's/.*"task":\([0-9]*\).*/\1/')
    executor=$(printf '%s' "$line" | sed 's/.*"executor":"\([^"]*\)".*/\1/')
    log=$(printf '%s' "$line" | sed 's/.*"log":"\([^"]*\)".*/\1/')
    echo "kept $$ $task $MALLOC_ARENA_MAX" >> "MARKS"
    echo "task $task" >> "$log"
    [ "$task" = 4 ] && kill -9 $$
    sleep 0.1
    echo "{\"executor\":\"$executor\",\"code\":$((task % 3))}"
done
"#;

/// Writes `body` (with MARKS replaced) as an executable script in `dir`.
fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let marks = dir.join("marks");
    std::fs::write(&path, body.replace("MARKS", marks.to_str().unwrap())).unwrap();
    std::process::Command::new("chmod")
        .args(["+x", path.to_str().unwrap()])
        .status()
        .unwrap();
    path
}

fn work_group(tasks: u32) -> TaskGroup {
    TaskGroup {
        job: "j-1".into(),
        id: 0,
        tasks: (0..tasks).map(|t| (t, 1)).collect(),
        kind: Default::default(),
        manifest_sha256: None,
    }
}

fn executor(dir: &std::path::Path, parallelism: usize) -> LocalExecutor {
    let worker = script(dir, "fake-worker.sh", FAKE_WORKER);
    launch(dir, &worker, parallelism, false)
}

fn launch(
    dir: &std::path::Path,
    script: &std::path::Path,
    parallelism: usize,
    keep_workers: bool,
) -> LocalExecutor {
    LocalExecutor::new(
        WorkerLaunch {
            command: vec![script.display().to_string()],
            storage: format!("file://{}", dir.display()),
            log_dir: dir.join("logs"),
            log_in_storage: true,
            keep_workers,
        },
        parallelism,
    )
}

async fn wait_all_exited(
    ex: &LocalExecutor,
    tasks: &[(u32, u32, Option<String>)],
) -> Vec<ExecState> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states: Vec<ExecState> = ex
            .poll(tasks)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.state)
            .collect();
        if states.iter().all(|s| matches!(s, ExecState::Exited { .. })) {
            return states;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not finish: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn runs_an_array_with_bounded_parallelism_and_reports_exits() {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let ex = executor(dir.path(), 2);
    let ids = ex.submit(&work_group(6)).await.unwrap();
    assert_eq!(ids.len(), 6);
    let tasks: Vec<(u32, u32, Option<String>)> = (0..6).map(|t| (t, 1, None)).collect();
    let first = ex.poll(&tasks).await.unwrap();
    assert_eq!(
        first
            .iter()
            .filter(|s| s.state == ExecState::Running)
            .count(),
        2,
        "{first:?}"
    );
    assert_eq!(
        first
            .iter()
            .filter(|s| s.state == ExecState::Queued)
            .count(),
        4
    );

    let states = wait_all_exited(&ex, &tasks).await;
    for (t, s) in states.iter().enumerate() {
        assert_eq!(
            *s,
            ExecState::Exited {
                code: Some(t as i32 % 3),
                signal: None
            }
        );
    }
    // Never more than two at once, and each saw its index under both variable names.
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut events: Vec<(u128, i32)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[0] {
            "start" => {
                assert_eq!(f[1], f[2], "ORCH_TASK_INDEX and SLURM_ARRAY_TASK_ID differ");
                events.push((f[3].parse().unwrap(), 1));
            }
            _ => events.push((f[2].parse().unwrap(), -1)),
        }
    }
    events.sort();
    let mut running = 0;
    let mut peak = 0;
    for (_, delta) in events {
        running += delta;
        peak = peak.max(running);
    }
    assert_eq!(peak, 2);
    // An attempt the executor never ran is unknown to it.
    let other = ex.poll(&[(0, 2, None)]).await.unwrap();
    assert_eq!(other[0].state, ExecState::Unknown);
}

#[tokio::test]
async fn cancel_stops_running_and_queued_workers() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path(), 1);
    let group = TaskGroup {
        job: "j-1".into(),
        id: 3,
        tasks: vec![(0, 1), (1, 1)],
        kind: Default::default(),
        manifest_sha256: None,
    };
    ex.submit(&group).await.unwrap();
    ex.cancel(&[(0, 1, None), (1, 1, None)]).await.unwrap();
    let s = ex.poll(&[(0, 1, None), (1, 1, None)]).await.unwrap();
    assert_eq!(
        s[1].state,
        ExecState::Unknown,
        "a cancelled queued task never starts"
    );
    let states = wait_all_exited(&ex, &[(0, 1, None)]).await;
    assert_eq!(
        states[0],
        ExecState::Exited {
            code: None,
            signal: Some(15)
        }
    );
}

#[tokio::test]
async fn kept_workers_run_task_after_task_and_a_crash_ends_only_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let worker = script(dir.path(), "fake-serving-worker.sh", FAKE_SERVING_WORKER);
    let ex = launch(dir.path(), &worker, 2, true);
    ex.submit(&work_group(10)).await.unwrap();
    let tasks: Vec<(u32, u32, Option<String>)> = (0..10).map(|t| (t, 1, None)).collect();
    let states = wait_all_exited(&ex, &tasks).await;
    for (t, s) in states.iter().enumerate() {
        let want = if t == 4 {
            ExecState::Exited {
                code: None,
                signal: Some(9),
            }
        } else {
            ExecState::Exited {
                code: Some(t as i32 % 3),
                signal: None,
            }
        };
        assert_eq!(*s, want, "task {t}");
    }
    // Ten tasks in two kept workers, plus the one started after the crash; each task once,
    // and its log written by the worker.
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut pids = std::collections::HashSet::new();
    let mut seen = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], "kept", "{text}");
        assert_eq!(f[3], "1", "one malloc arena: {text}");
        pids.insert(f[1].to_string());
        seen.push(f[2].parse::<u32>().unwrap());
    }
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_eq!(pids.len(), 3, "{text}");
    for t in 0..10 {
        let log = dir.path().join(format!("logs/{t:06}.1.log"));
        let log = std::fs::read_to_string(&log).unwrap();
        assert_eq!(log, format!("task {t}\n"));
    }

    // A merge waits for a slot: the idle kept workers are let go to make room.
    assert_eq!(ex.running(), 2);
    let merge = TaskGroup {
        job: "j-1".into(),
        id: 1,
        tasks: vec![(0, 1)],
        kind: orch_core::model::TaskKind::Final,
        manifest_sha256: None,
    };
    let ids = ex.submit(&merge).await.unwrap();
    let merged = [(0, 1, Some(ids[0].1.clone()))];
    let states = wait_all_exited(&ex, &merged).await;
    assert_eq!(
        states[0],
        ExecState::Exited {
            code: Some(0),
            signal: None
        }
    );
    assert!(
        std::fs::read_to_string(&marks)
            .unwrap()
            .contains("single 0")
    );
    ex.close();
    tokio::time::timeout(Duration::from_secs(10), ex.wait_idle())
        .await
        .expect("the kept workers exit once let go");
}

#[tokio::test]
async fn a_worker_program_without_serve_gets_a_process_per_task() {
    let dir = tempfile::tempdir().unwrap();
    // As an older orch-worker: `serve` is a usage error (clap's exit code 2).
    let old = script(
        dir.path(),
        "old-worker.sh",
        "#!/bin/sh\n[ \"$1\" = serve ] && exit 2\necho \"single $ORCH_TASK_INDEX\" >> \"MARKS\"\nexit 0\n",
    );
    let ex = launch(dir.path(), &old, 2, true);
    ex.submit(&work_group(4)).await.unwrap();
    let tasks: Vec<(u32, u32, Option<String>)> = (0..4).map(|t| (t, 1, None)).collect();
    for s in wait_all_exited(&ex, &tasks).await {
        assert_eq!(
            s,
            ExecState::Exited {
                code: Some(0),
                signal: None
            }
        );
    }
    let marks = std::fs::read_to_string(dir.path().join("marks")).unwrap();
    let mut ran: Vec<&str> = marks.lines().collect();
    ran.sort();
    assert_eq!(ran, ["single 0", "single 1", "single 2", "single 3"]);
}

#[tokio::test]
async fn a_task_its_worker_never_started_goes_to_the_next_worker() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("stopped-once");
    // The first kept worker ends cleanly without answering (as one stopped while its task was
    // on the way); the next one runs the task.
    let body = FAKE_SERVING_WORKER.replacen(
        "while read -r line; do",
        &format!(
            "if [ ! -e {0} ]; then touch {0}; exit 0; fi\nwhile read -r line; do",
            flag.display()
        ),
        1,
    );
    let worker = script(dir.path(), "stops-once.sh", &body);
    let ex = launch(dir.path(), &worker, 1, true);
    ex.submit(&work_group(3)).await.unwrap();
    let tasks: Vec<(u32, u32, Option<String>)> = (0..3).map(|t| (t, 1, None)).collect();
    let states = wait_all_exited(&ex, &tasks).await;
    for (t, s) in states.iter().enumerate() {
        assert_eq!(
            *s,
            ExecState::Exited {
                code: Some(t as i32 % 3),
                signal: None
            },
            "task {t}"
        );
    }
    let marks = std::fs::read_to_string(dir.path().join("marks")).unwrap();
    let ran: Vec<&str> = marks
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(ran, ["0", "1", "2"], "each task once: {marks}");
}

#[test]
fn a_worker_of_this_host_is_gone_only_once_its_process_is() {
    use orch_core::owner::{hostname, this_process};
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path(), 1);
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let owner = format!("{}:{}", hostname(), child.id());
    assert!(!ex.worker_gone(&owner), "alive");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ex.worker_gone(&owner), "reaped: no such process");
    assert!(!ex.worker_gone(&this_process()));
    // Another machine's worker, or an owner that is not `host:pid`: the lease decides.
    let elsewhere = format!("not-{}:{}", hostname(), child.id());
    assert!(!ex.worker_gone(&elsewhere));
    assert!(!ex.worker_gone("garbage"));
}
