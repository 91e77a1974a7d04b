//! The attempt history end to end: `orch run` with real workers, one of them `kill -9`ed, then
//! `orch status JOB --task N` (table and JSON) and the job's attempt counts and dead letters.
#![allow(clippy::unwrap_used)]

mod common;
use common::fixture;
use std::time::{Duration, Instant};

use common::{Scratch, kill, local_job_yaml, task_of, text, workers_of};

/// `orch status JOB --task N -o json`.
fn task_status(s: &Scratch, job: &std::path::Path, task: u32) -> serde_json::Value {
    let out = s.orch(&[
        "status",
        "-o",
        "json",
        "--task",
        &task.to_string(),
        job.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A worker that has claimed its task (its start is in the history) and done some of its
/// items, but not all (250 items of 10 ms, two at a time, take it over a second): its pid and
/// task.
fn claimed_worker(s: &Scratch, child: &mut std::process::Child) -> (u32, u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "orch ended too early");
        let found = workers_of(&s.path(".orch"))
            .into_iter()
            .find_map(|pid| Some((pid, task_of(pid)?)));
        if let Some((pid, _)) = found {
            std::thread::sleep(Duration::from_millis(400));
            // A worker kept for the job may have gone on to its next task meanwhile.
            if let Some(task) = task_of(pid) {
                return (pid, task);
            }
        }
        assert!(Instant::now() < deadline, "no worker started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_killed_with_sigkill_leaves_a_lost_attempt_with_its_signal_then_a_succeeded_one() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1_500);
    let job = s.write(
        "job.yaml",
        &local_job_yaml(
            "killed",
            "{builtin: {name: sleep, duration: 10ms}, concurrency: 2}",
            3,
            "",
        ),
    );
    let mut child = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (pid, task) = claimed_worker(&s, &mut child);
    kill(pid, "-KILL");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let report = task_status(&s, &job, task);
    assert_eq!(report["task"]["state"], "succeeded", "{report:#}");
    let attempts = report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{report:#}");
    let (lost, ok) = (&attempts[0], &attempts[1]);
    assert_eq!(lost["attempt"], 1);
    assert_eq!(lost["outcome"], "lost", "{report:#}");
    assert_eq!(lost["signal"], 9, "{report:#}");
    assert_eq!(lost["error"]["kind"], "infrastructure");
    assert_eq!(
        lost["error"]["message"], "worker was killed by signal 9",
        "{report:#}"
    );
    // The worker's own facts: it claimed the attempt on this machine, under its pid.
    assert!(lost["startedAt"].as_u64().unwrap() <= lost["endedAt"].as_u64().unwrap());
    assert!(lost["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(
        lost["worker"]
            .as_str()
            .is_some_and(|w| w.ends_with(&format!(":{pid}"))),
        "{report:#}"
    );
    assert!(lost["executorId"].as_str().is_some(), "{report:#}");
    assert_eq!(ok["attempt"], 2);
    assert_eq!(ok["outcome"], "succeeded", "{report:#}");
    assert_eq!(ok["itemsOk"], 250);
    assert!(ok.get("signal").is_none() && ok.get("error").is_none());

    // The table says the same.
    let table = s.orch(&["status", "--task", &task.to_string(), job.to_str().unwrap()]);
    let table = text(&table);
    for needle in [
        "ATTEMPT",
        "lost",
        "signal 9",
        "succeeded",
        "250 ok, 0 failed",
    ] {
        assert!(table.contains(needle), "{needle}: {table}");
    }

    // The job counts every attempt: one per task and merge task, plus the lost one.
    let status = s.status(&job);
    assert_eq!(status["attempts"]["lost"], 1, "{status:#}");
    assert_eq!(status["attempts"]["running"], 0, "{status:#}");
    let succeeded = status["attempts"]["succeeded"].as_u64().unwrap();
    assert!(succeeded >= 7, "6 work tasks and a final merge: {status:#}");
    assert_eq!(status["attempts"]["total"], succeeded + 1, "{status:#}");
    assert!(status["deadLetter"]["tasks"].as_array().unwrap().is_empty());
}

/// `orch run` and its workers killed together (a `kill -9` of the process group, a crash of
/// the terminal): the next `orch run` on this machine sees their processes are gone and ends
/// their attempts at once instead of waiting out their leases.
#[test]
fn a_rerun_ends_at_once_the_attempts_of_workers_killed_with_their_driver() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1_500);
    let job = s.write(
        "job.yaml",
        &local_job_yaml(
            "killed-together",
            "{builtin: {name: sleep, duration: 10ms}, concurrency: 2}",
            3,
            "",
        ),
    );
    let mut child = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let (pid, task) = claimed_worker(&s, &mut child);
    std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    child.wait().unwrap();

    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = task_status(&s, &job, task);
    assert_eq!(report["task"]["state"], "succeeded", "{report:#}");
    let lost = &report["attempts"][0];
    assert_eq!(lost["outcome"], "lost", "{report:#}");
    assert_eq!(lost["error"]["kind"], "infrastructure", "{report:#}");
    let message = lost["error"]["message"].as_str().unwrap();
    // Had the rerun waited for the lease, the loss would read "stopped renewing its lease".
    assert!(
        message.contains(&format!(":{pid} is no longer running")),
        "{report:#}"
    );
    assert_eq!(report["attempts"][1]["outcome"], "succeeded", "{report:#}");
}

#[test]
fn a_task_out_of_attempts_is_dead_lettered_with_its_failed_attempts_and_the_retry_command() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1_000);
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\"]}}, concurrency: 2}}",
        fixture("crash_high.py")
    );
    let job = s.write("job.yaml", &local_job_yaml("crashy", &handler, 2, ""));
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Items 500 and up crash the handler: tasks 2 and 3 fail twice, on purpose (the worker
    // gives up and says why), each attempt with the worker's exit code.
    let report = task_status(&s, &job, 2);
    assert_eq!(report["task"]["state"], "failed", "{report:#}");
    let attempts = report["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{report:#}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], n + 1);
        assert_eq!(a["outcome"], "failed", "{report:#}");
        assert_eq!(a["exitCode"], 1, "{report:#}");
        assert!(
            a["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("keeps crashing")),
            "{report:#}"
        );
    }

    let status = s.status(&job);
    assert_eq!(status["attempts"]["failed"], 4, "{status:#}");
    let dead = status["deadLetter"]["tasks"].as_array().unwrap();
    let ids: Vec<u64> = dead.iter().map(|t| t["task"].as_u64().unwrap()).collect();
    assert_eq!(ids, [2, 3], "{status:#}");
    assert_eq!(dead[0]["attempts"], 2);
    let retry = format!("orch retry {}", job.to_str().unwrap());
    assert_eq!(status["deadLetter"]["retryTasks"], retry.as_str());

    let table = s.orch(&["status", job.to_str().unwrap()]);
    let table = text(&table);
    for needle in [
        ", 4 failed",
        "dead-lettered",
        "task 2 failed after 2 attempt(s): infrastructure:",
        &format!("run the failed tasks again: {retry}"),
    ] {
        assert!(table.contains(needle), "{needle}: {table}");
    }

    // An unknown task is a usage error naming the range.
    let none = s.orch(&["status", "--task", "99", job.to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert!(text(&none).contains("has no task 99"), "{}", text(&none));
}

#[test]
fn failed_items_are_dead_lettered_by_kind_with_the_item_retry_command() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 500);
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\"]}}, concurrency: 2}}",
        fixture("flaky.py")
    );
    let yaml = local_job_yaml("flaky", &handler, 3, "").replace(
        "  executor:",
        "  tolerance: {maxFailedItemsPercent: 50}\n  executor:",
    );
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status = s.status(&job);
    let items = status["deadLetter"]["items"].as_array().unwrap();
    let permanent = items
        .iter()
        .find(|i| i["kind"] == "permanent")
        .unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(permanent["items"], 5, "ids 0, 100, …, 400: {status:#}");
    assert_eq!(
        permanent["retry"],
        format!(
            "orch retry {} --items --kind permanent",
            job.to_str().unwrap()
        )
        .as_str()
    );
}
