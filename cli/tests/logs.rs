//! `orch logs` on the embedded backends: the errors of a job's failed attempts with the end of
//! their logs, one task's attempts with `--attempt`, `--tail` and `--since`, `--follow` on a
//! running task, and the errors a person gets for a task or attempt that does not exist.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::{Scratch, fixture, local_job_yaml, text};

fn stdout(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Items 500 and up crash the handler: task 2 (items 500..600) fails both its attempts.
fn crashing_job(s: &Scratch) -> std::path::PathBuf {
    s.jsonl("in.jsonl", 600);
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\"]}}, concurrency: 2}}",
        fixture("crash_high.py")
    );
    let job = s.write("job.yaml", &local_job_yaml("crashy-logs", &handler, 2, ""));
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    job
}

#[test]
fn the_errors_of_failed_attempts_and_one_tasks_log_are_printed() {
    let s = Scratch::new();
    let job = crashing_job(&s);
    let job = job.to_str().unwrap();

    // Every failed attempt: its header with the error, then the end of its log.
    let errors = stdout(&s.orch(&["logs", job]));
    let headers: Vec<&str> = errors.lines().filter(|l| l.starts_with("==> ")).collect();
    assert_eq!(
        headers,
        [
            "==> task 2 attempt 1, failed: handler keeps crashing: exit status: 3 (infrastructure) <==",
            "==> task 2 attempt 2, failed: handler keeps crashing: exit status: 3 (infrastructure) <==",
        ],
        "{errors}"
    );
    assert_eq!(
        errors.lines().count(),
        2 + 2 * 10,
        "10 lines each: {errors}"
    );
    assert!(
        errors.contains("handler process keeps crashing without answering; giving up"),
        "{errors}"
    );

    // On directory storage the local executor's file is the stored log: no copy beside it.
    let logs_dir = std::fs::read_dir(s.path(".orch/jobs"))
        .unwrap()
        .next()
        .unwrap();
    let stored: Vec<String> = std::fs::read_dir(logs_dir.unwrap().path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(stored.iter().all(|n| n.ends_with(".log")), "{stored:?}");

    // One task, every attempt, then one attempt's last line.
    let task = stdout(&s.orch(&["logs", job, "2"]));
    assert!(task.starts_with("==> task 2 attempt 1 <==\n"), "{task}");
    assert!(task.contains("\n==> task 2 attempt 2 <==\n"), "{task}");
    let last = stdout(&s.orch(&["logs", job, "2", "--attempt", "2", "--tail", "1"]));
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.contains("task attempt ended without commit"), "{last}");

    // A healthy task's log is all there; `--since` keeps lines by their time.
    let healthy = stdout(&s.orch(&["logs", job, "0"]));
    assert!(healthy.contains("claimed items=250"), "{healthy}");
    let recent = stdout(&s.orch(&["logs", job, "0", "--since", "1h"]));
    assert_eq!(recent, healthy);
    std::thread::sleep(Duration::from_millis(1100));
    let none = stdout(&s.orch(&["logs", job, "0", "--since", "1s"]));
    assert_eq!(none, "", "every line is older than a second");

    // What does not exist is named, with what does.
    let missing = s.orch(&["logs", job, "9"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("has no task 9 (its tasks are 0 to 3)"));
    let missing = s.orch(&["logs", job, "0", "--attempt", "3"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("task 0 has no attempt 3 (its attempts are 1 to 1)"));
    let missing = s.orch(&["logs", "no-such-job"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
}

#[test]
fn follow_prints_a_running_tasks_lines_as_they_come_and_ends_with_the_task() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1_000);
    let job = s.write(
        "job.yaml",
        &local_job_yaml(
            "followed",
            "{builtin: {name: sleep, duration: 20ms}, concurrency: 1}",
            2,
            "",
        ),
    );
    let job = job.to_str().unwrap();
    let mut run = s
        .orch_cmd(&["run", "--no-progress", job])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The job exists once `orch status` finds it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.orch(&["status", job]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the job never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Task 3 starts last (two at a time, 5 s each): followed before it has begun.
    let mut follow = s
        .orch_cmd(&["logs", job, "3", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "==> task 3 attempt 1 <==");
    let claimed = lines.next().unwrap().unwrap();
    assert!(claimed.contains("claimed items=250"), "{claimed}");
    assert!(
        run.try_wait().unwrap().is_none(),
        "the task's first lines came only after the job had ended"
    );
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = follow.wait().unwrap();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("items done ok=250")),
        "followed to the task's end: {rest:?}"
    );
    assert!(run.wait().unwrap().success());
    // What was followed is the log as stored, from its first line on.
    let stored = stdout(&s.orch(&["logs", job, "3"]));
    let followed: Vec<String> = std::iter::once(claimed).chain(rest).collect();
    assert_eq!(stored.lines().collect::<Vec<_>>(), followed);
}

/// `--log-format json` on `orch run` reaches its workers: every line of the driver and of each
/// attempt's log is a JSON object naming the job; the workers' lines name their task, attempt,
/// worker and executor too, and the driver's lines about a task name it and its attempt.
#[test]
fn json_log_lines_carry_the_ids_of_the_job_task_attempt_worker_and_executor() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 600);
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\"]}}, concurrency: 2}}",
        fixture("crash_high.py")
    );
    let job = s.write("job.yaml", &local_job_yaml("json-logs", &handler, 2, ""));
    let out = s
        .orch_cmd(&[
            "--log-format",
            "json",
            "-v",
            "run",
            "--no-progress",
            job.to_str().unwrap(),
        ])
        .env_remove("ORCH_LOG_FORMAT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let id = s.status(&job)["job"].as_str().unwrap().to_string();
    let parse = |line: &str| -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    // The ids of every span a line is in, inner ones last.
    let ids = |v: &serde_json::Value| {
        let mut all = serde_json::Map::new();
        for s in v["spans"].as_array().unwrap() {
            all.extend(s.as_object().unwrap().clone());
        }
        all
    };

    let driver = String::from_utf8(out.stderr).unwrap();
    let mut about_tasks = 0;
    for line in driver.lines() {
        let v = parse(line);
        assert_eq!(ids(&v)["job"], id.as_str(), "{line}");
        if v["fields"].get("task").is_some() {
            about_tasks += 1;
            assert!(v["fields"]["attempt"].is_u64(), "{line}");
        }
    }
    assert!(
        about_tasks >= 2,
        "the lost and the failed attempt: {driver}"
    );

    let logs = std::fs::read_dir(s.path(&format!(".orch/jobs/{id}/logs"))).unwrap();
    let mut lines = 0;
    for log in logs {
        let path = log.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // `000002.1.log` is task 2, attempt 1; the final merge is task 3.
        let (task, attempt) = match name.split('.').collect::<Vec<_>>()[..] {
            // The kept workers' own lines between tasks (none here).
            ["workers", "log"] => continue,
            ["merge-final", a, "log"] => (3, a.parse::<u64>().unwrap()),
            [t, a, "log"] => (t.parse::<u64>().unwrap(), a.parse::<u64>().unwrap()),
            _ => panic!("unexpected log {name}"),
        };
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            lines += 1;
            let span = ids(&parse(line));
            assert_eq!(span["job"], id.as_str(), "{name}: {line}");
            assert_eq!(span["task"], task, "{name}: {line}");
            assert_eq!(span["attempt"], attempt, "{name}: {line}");
            assert!(
                span["worker"].as_str().is_some_and(|w| w.contains(':')),
                "{line}"
            );
            assert_eq!(
                span["executor"],
                if task == 3 {
                    format!("local:final:3:{attempt}")
                } else {
                    format!("local:{task}:{attempt}")
                },
                "{name}: {line}"
            );
        }
    }
    assert!(lines > 20, "{lines} lines");
}
