//! `orch run` with `executor: {slurm: …}` on a real one-node Slurm cluster (started by
//! `tests/slurm/start.sh`, which `.ci/run` runs; its environment file is named by
//! `ORCH_SLURM_ENV`). The real `orch` drives the job, Slurm starts the real `orch-worker` as
//! array tasks, and the output is read back with pyarrow; what Slurm did is checked with
//! `sacct`, not with orch's own code. Without `ORCH_SLURM_ENV` each test says it was skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use orch_testkit::fault_proxy::{FaultProxy, FaultStats, Faults};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct SlurmJob {
    env: HashMap<String, String>,
    scratch: common::Scratch,
}

impl SlurmJob {
    fn new(env: HashMap<String, String>) -> Self {
        SlurmJob {
            env,
            scratch: common::Scratch::new(),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.scratch.dir.path()).envs(&self.env);
        c
    }

    fn orch(&self, args: &[&str]) -> Command {
        let mut c = self.scratch.orch_cmd(args);
        c.envs(&self.env);
        c
    }

    /// A job file in the scratch directory; `executor` and `extra` are YAML lines under `spec`.
    fn job_file(&self, name: &str, items: u64, batch: u64, handler: &str, extra: &str) -> PathBuf {
        self.scratch.jsonl("input.jsonl", items);
        self.scratch.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: {name}}}\nspec:\n  \
                 input: {{uri: input.jsonl}}\n  batch: {{size: {batch}}}\n  handler: {handler}\n  \
                 output: {{uri: out/}}\n{extra}"
            ),
        )
    }

    /// `sacct` lines (`JobID|JobName|State|Comment`) of every array task named `name`, once
    /// accounting lists at least `expected` tasks (it runs a few seconds behind slurmctld).
    fn sacct(&self, name: &str, expected: usize) -> Vec<Vec<String>> {
        let started = Instant::now();
        loop {
            let rows = self.sacct_now(name);
            if rows.len() >= expected || started.elapsed() > Duration::from_secs(60) {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn sacct_now(&self, name: &str) -> Vec<Vec<String>> {
        let out = self
            .command("sacct")
            .args([
                "--noheader",
                "--parsable2",
                "--allocations",
                &format!("--name={name}"),
                "--format=JobID,JobName,State,Comment",
                "--starttime=now-1days",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "sacct: {}", common::text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }

    fn status(&self, job_file: &Path) -> serde_json::Value {
        let out = self
            .orch(&["status", job_file.to_str().unwrap(), "-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The user slurmrestd runs the tasks as (the test cluster's token is root's): orch takes no
/// default but `$USER` or `$LOGNAME`, which a CI container may lack.
fn slurm_user() -> String {
    std::env::var("ORCH_SLURM_USER").unwrap_or_else(|_| "root".into())
}

fn job_id(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no job id in {stdout}"))
        .to_string()
}

fn assert_exact(job: &SlurmJob, items: u64) {
    common::read_output(&job.scratch.path("out")).assert_each_item_once(items);
}

/// Every array of the job, by the comment orch gave it: no comment twice.
fn arrays_by_comment(rows: &[Vec<String>]) -> BTreeMap<String, usize> {
    let mut arrays: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        let array = row[0].split('_').next().unwrap().to_string();
        arrays.entry(row[3].clone()).or_default().insert(array);
    }
    arrays.into_iter().map(|(c, ids)| (c, ids.len())).collect()
}

fn ten_thousand_items(transport: &str) {
    let Some(env) = common::slurm_env() else {
        return;
    };
    let job = SlurmJob::new(env);
    let executor = match transport {
        "rest" => format!(
            "  executor: {{slurm: {{transport: rest, url: \"{}\", user: {}, maxRunning: 2}}}}\n",
            job.env["SLURMRESTD_URL"],
            slurm_user()
        ),
        _ => "  executor: {slurm: {transport: cli, maxRunning: 2}}\n".to_string(),
    };
    let file = job.job_file(
        &format!("slurm-{transport}"),
        10_000,
        500,
        "{builtin: {name: identity}}",
        &format!("{executor}  resources: {{memory: 500Mi, time: 10m}}\n"),
    );
    let out = job
        .orch(&["run", file.to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    assert_exact(&job, 10_000);
    // The arrays in Slurm's accounting carry the job's name, and every array task ran once.
    let id = job_id(&out);
    // 20 work tasks and the final merge.
    let rows = job.sacct(&id, 21);
    let tasks: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[3].starts_with("orch:work"))
        .collect();
    assert_eq!(tasks.len(), 20, "{rows:?}");
    assert!(
        rows.iter().all(|r| r[1] == id && r[2] == "COMPLETED"),
        "{rows:?}"
    );
    assert!(
        arrays_by_comment(&rows).values().all(|&n| n == 1),
        "{rows:?}"
    );
}

#[test]
fn ten_thousand_items_through_the_slurm_commands() {
    ten_thousand_items("cli");
}

#[test]
fn ten_thousand_items_through_slurmrestd() {
    ten_thousand_items("rest");
}

#[test]
fn memory_and_time_limits_are_named_and_retried() {
    let Some(env) = common::slurm_env() else {
        return;
    };
    let job = SlurmJob::new(env);
    // The handler's per-item timeout is longer than the task may run, so only the time
    // limit stops the slow item (an item timeout first would count as progress and make the
    // number of attempts depend on timing).
    // Every item of task 0 allocates far beyond the task's memory (the kernel kills the
    // handler, the biggest process of the task); item 20 sleeps past its task's time limit.
    job.scratch.write(
        "limits.py",
        "import json, sys, time\n\
         for line in sys.stdin:\n    \
             req = json.loads(line)\n    \
             if req['item']['id'] < 10:\n        \
                 hog = bytearray(800 * 1024 * 1024)\n        \
                 hog[::4096] = b'x' * len(hog[::4096])\n    \
             if req['item']['id'] == 20:\n        \
                 time.sleep(600)\n    \
             print(json.dumps({'id': req['id'], 'result': req['item']}), flush=True)\n",
    );
    let file = job.job_file(
        "slurm-limits",
        40,
        10,
        "{exec: {command: [python3, limits.py]}, timeout: 10m}",
        "  executor: {slurm: {transport: cli}}\n  resources: {memory: 200Mi, time: 1m}\n  \
         retry: {maxAttempts: 2, backoff: {initial: 1s}}\n  \
         tolerance: {maxFailedItemsPercent: 100}\n",
    );
    let out = job
        .orch(&["run", file.to_str().unwrap(), "--no-progress"])
        .env("ORCH_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    assert_exact(&job, 40);
    let report = job.status(&file);
    let failed = report["failedTasks"].as_array().unwrap();
    // The handler over its memory limit on every item of task 0: each item, run alone once it
    // took the handler down, kills it again, so the worker gives up on a handler that keeps
    // crashing without answering; the task fails after its attempts, named as out of memory
    // (Slurm's verdict), and its items are in errors.parquet.
    let oom = failed
        .iter()
        .find(|t| t["task"] == 0)
        .unwrap_or_else(|| panic!("task 0 is not among the failed: {report}"));
    assert!(
        oom["error"].as_str().unwrap().contains("out of memory"),
        "{oom}"
    );
    assert_eq!(oom["countedAttempts"], 2, "{oom}");
    // The task over its time limit: stopped, retried per retry.maxAttempts, then failed.
    let slow = failed
        .iter()
        .find(|t| t["task"] == 2)
        .unwrap_or_else(|| panic!("task 2 is not among the failed: {report}"));
    assert!(
        slow["error"].as_str().unwrap().contains("time limit"),
        "{slow}"
    );
    // Exactly retry.maxAttempts counted attempts. The in-flight items reach the handler in any
    // order, so items after 20 may be done before it blocks; a stop after such progress is
    // retried for free (it resumes from the checkpoint), which makes the attempt number depend
    // on timing but not the count. The driver's log (ORCH_LOG=info) names each retry.
    assert_eq!(slow["countedAttempts"], 2, "{slow}\n{}", common::text(&out));
    assert!(slow["attempt"].as_u64().unwrap() >= 2, "{slow}");
    assert_eq!(failed.len(), 2, "only those two tasks failed: {report}");

    // `orch logs` reads what the workers on the Slurm node stored of their logs: each attempt
    // of the task out of memory, with the worker's lines about its handler.
    let logs = job
        .orch(&["logs", file.to_str().unwrap(), "0"])
        .output()
        .unwrap();
    let printed = common::text(&logs);
    assert_eq!(logs.status.code(), Some(0), "{printed}");
    let stdout = String::from_utf8_lossy(&logs.stdout);
    let last = oom["attempt"].as_u64().unwrap();
    for attempt in 1..=last {
        assert!(
            stdout.contains(&format!("==> task 0 attempt {attempt} <==")),
            "{printed}"
        );
    }
    assert!(stdout.contains("handler process"), "{printed}");
}

/// Polls `squeue` until `pred` holds for this job's array tasks, or panics after `limit`.
fn wait_for_tasks(
    job: &SlurmJob,
    name: &str,
    limit: Duration,
    pred: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let started = Instant::now();
    loop {
        let out = job
            .command("squeue")
            .args([
                "--noheader",
                "--array",
                &format!("--name={name}"),
                "--format=%i|%T",
            ])
            .output()
            .unwrap();
        let tasks: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
            .collect();
        if pred(&tasks) {
            return tasks;
        }
        assert!(started.elapsed() < limit, "waited {limit:?}: {tasks:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn spawn_run(job: &SlurmJob, file: &Path) -> std::process::Child {
    job.orch(&["run", file.to_str().unwrap(), "--no-progress"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The Slurm job name of the orch job whose name starts with `prefix` (orch names its arrays
/// after the job id), and the `jobid_index` of one of its array tasks once one runs.
fn running_task(job: &SlurmJob, prefix: &str) -> (String, String) {
    let name = {
        let started = Instant::now();
        loop {
            let out = job
                .command("squeue")
                .args(["--noheader", "--format=%j"])
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&out.stdout).to_string();
            if let Some(n) = names.lines().find(|n| n.trim().starts_with(prefix)) {
                break n.trim().to_string();
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "no array appeared"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let running = wait_for_tasks(job, &name, Duration::from_secs(180), |t| {
        t.iter().any(|(_, s)| s == "RUNNING")
    });
    let victim = running
        .iter()
        .find(|(_, s)| s == "RUNNING")
        .unwrap()
        .0
        .clone();
    (name, victim)
}

/// Task rows of the job in the embedded state store, read with Python's sqlite3:
/// (task, attempt, free attempts, state).
fn task_rows(job: &SlurmJob) -> Vec<(u64, u64, u64, String)> {
    let script = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = [json.loads(b) for (b,) in db.execute("SELECT body FROM tasks")]
print(json.dumps([[r["id"], r["attempt"], r.get("freeAttempts", 0), r["state"]] for r in rows if "kind" not in r]))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            job.scratch.path(".orch/state.sqlite").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `scontrol requeue` of running array tasks (what preemption with `PreemptMode=REQUEUE`
/// does), at random moments: each stopped worker checkpoints, its task runs again as a new
/// attempt that does not count against `retry.maxAttempts` (1 here), the requeued Slurm task
/// finds its attempt gone and does nothing, only requeued tasks run again, and the output is
/// exact. `ORCH_CHAOS_REQUEUES` sets how many requeues (CI: 1); jobs follow one another, each
/// taking up to 8, until that many were made.
#[test]
fn scontrol_requeue_of_a_running_task_redoes_that_task_only() {
    let Some(env) = common::slurm_env() else {
        return;
    };
    let seed = common::chaos_seed();
    let wanted = common::setting("ORCH_CHAOS_REQUEUES", 1);
    eprintln!("chaos (requeue): ORCH_CHAOS_SEED={seed} ORCH_CHAOS_REQUEUES={wanted}");
    let mut rng = common::Rng::new(seed);
    let (mut made, mut jobs) = (0, 0);
    while made < wanted {
        assert!(
            jobs < wanted + 5,
            "{jobs} jobs ended before most requeues could land"
        );
        made += requeue_job(
            &SlurmJob::new(env.clone()),
            &mut rng,
            (wanted - made).min(8),
        );
        jobs += 1;
    }
    common::chaos_summary(
        "requeue",
        seed,
        &format!("{jobs} jobs, {made} scontrol requeue"),
    );
}

/// One job of 8 tasks of 10 s in which `requeues` running array tasks are requeued; returns
/// how many were (fewer when the job ends first), once the job is done and checked.
fn requeue_job(job: &SlurmJob, rng: &mut common::Rng, requeues: u64) -> u64 {
    let file = job.job_file(
        "slurm-requeue",
        160,
        20,
        "{builtin: {name: sleep, duration: 500ms}, concurrency: 1}",
        "  executor: {slurm: {transport: cli}}\n  resources: {memory: 200Mi, time: 5m}\n  \
         retry: {maxAttempts: 1}\n",
    );
    let mut run = spawn_run(job, &file);
    let (name, _) = running_task(job, "slurm-requeue");
    let mut victims = Vec::new();
    while (victims.len() as u64) < requeues && run.try_wait().unwrap().is_none() {
        // Some items in (of a task's 10 s), so that the checkpoint has something to resume from.
        std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
        let tasks = wait_for_tasks(job, &name, Duration::from_secs(180), |_| true);
        let running: Vec<&String> = tasks
            .iter()
            .filter(|(_, state)| state == "RUNNING")
            .map(|(id, _)| id)
            .collect();
        if running.is_empty() {
            continue;
        }
        let victim = running[rng.below(running.len() as u64) as usize].clone();
        let out = job
            .command("scontrol")
            .args(["requeue", &victim])
            .output()
            .unwrap();
        // The task may have ended between squeue and scontrol.
        if out.status.success() {
            victims.push(victim);
        }
    }
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    assert_exact(job, 160);
    let rows = task_rows(job);
    assert_eq!(rows.len(), 8, "{rows:?}");
    let again = rows.iter().filter(|r| r.1 > 1).count();
    assert!(
        again <= victims.len() && (again > 0 || victims.is_empty()),
        "only requeued tasks ran again: {rows:?}\n{victims:?}: {:?}\n{}",
        job.sacct_now(&name),
        common::text(&out)
    );
    for (_, attempt, free, state) in &rows {
        assert_eq!(state, "succeeded", "{rows:?}");
        // With maxAttempts 1, the job could only finish if the requeues cost no attempt.
        assert_eq!(attempt - free, 1, "{rows:?}");
    }
    victims.len() as u64
}

#[test]
fn scancel_of_one_array_task_retries_that_task_only() {
    let Some(env) = common::slurm_env() else {
        return;
    };
    let job = SlurmJob::new(env);
    let file = job.job_file(
        "slurm-scancel",
        80,
        20,
        "{builtin: {name: sleep, duration: 500ms}}",
        "  executor: {slurm: {transport: cli}}\n  resources: {memory: 200Mi, time: 5m}\n",
    );
    let run = spawn_run(&job, &file);
    let (name, victim) = running_task(&job, "slurm-scancel");
    let out = job.command("scancel").arg(&victim).output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    assert_exact(&job, 80);
    // The cancelled task's attempt shows in accounting; every other task ran once.
    let rows = job.sacct(&name, 6);
    let cancelled: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[2].starts_with("CANCELLED"))
        .collect();
    assert_eq!(cancelled.len(), 1, "{rows:?}");
    let work: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[3].starts_with("orch:work"))
        .collect();
    assert_eq!(work.len(), 5, "4 tasks and one retry: {rows:?}");
}

#[test]
fn a_restarted_coordinator_submits_no_array_twice() {
    let Some(env) = common::slurm_env() else {
        return;
    };
    let job = SlurmJob::new(env);
    let file = job.job_file(
        "slurm-restart",
        60,
        10,
        "{builtin: {name: sleep, duration: 300ms}}",
        "  executor: {slurm: {transport: cli, maxRunning: 2}}\n  resources: {memory: 200Mi, time: 5m}\n",
    );
    let mut first = job
        .orch(&["run", file.to_str().unwrap(), "--no-progress"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let name = loop {
        let out = job
            .command("squeue")
            .args(["--noheader", "--format=%j"])
            .output()
            .unwrap();
        if let Some(n) = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|n| n.trim().starts_with("slurm-restart"))
        {
            break n.trim().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no array appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The coordinator dies while its array is half done.
    wait_for_tasks(&job, &name, Duration::from_secs(60), |t| {
        t.iter().any(|(_, s)| s == "RUNNING")
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let second = job
        .orch(&["run", file.to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", common::text(&second));
    assert_exact(&job, 60);
    let rows = job.sacct(&name, 7);
    let arrays = arrays_by_comment(&rows);
    assert!(
        arrays.values().all(|&n| n == 1),
        "an array was submitted twice: {rows:?}"
    );
    let work: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[3].starts_with("orch:work"))
        .collect();
    assert_eq!(work.len(), 6, "each of the 6 tasks ran once: {rows:?}");
}

#[test]
fn bad_slurm_settings_fail_before_anything_is_submitted() {
    let Some(env) = common::slurm_env() else {
        return;
    };
    let job = SlurmJob::new(env);
    let cases = [
        (
            "unknown-partition",
            "  executor: {slurm: {}}\n  resources: {partition: nosuch}\n",
            "spec.resources.partition",
        ),
        (
            "over-time",
            "  executor: {slurm: {}}\n  resources: {partition: short, time: 10m}\n",
            "spec.resources.time",
        ),
        (
            "no-jwt",
            &format!(
                "  executor: {{slurm: {{transport: rest, url: \"{}\", user: {}, tokenFile: /nonexistent/jwt}}}}\n",
                job.env["SLURMRESTD_URL"],
                slurm_user()
            ),
            "tokenFile",
        ),
        // Neither `user` nor USER nor LOGNAME (removed below): no fallback to root.
        (
            "no-user",
            &format!(
                "  executor: {{slurm: {{transport: rest, url: \"{}\"}}}}\n",
                job.env["SLURMRESTD_URL"]
            ),
            "spec.executor.slurm.user",
        ),
        // The token would cross the network in clear.
        (
            "plain-http",
            &format!(
                "  executor: {{slurm: {{transport: rest, url: \"http://slurm.invalid:6820\", user: {}}}}}\n",
                slurm_user()
            ),
            "spec.executor.slurm.url",
        ),
    ];
    for (name, executor, field) in cases {
        let file = job.job_file(
            &format!("slurm-bad-{name}"),
            10,
            5,
            "{builtin: {name: identity}}",
            executor,
        );
        let out = job
            .orch(&["run", file.to_str().unwrap(), "--no-progress"])
            .env_remove("USER")
            .env_remove("LOGNAME")
            .output()
            .unwrap();
        let text = common::text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {text}");
        assert!(text.contains(field), "{name} names {field}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        let out = job
            .command("squeue")
            .args(["--noheader", "--format=%j"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&format!("slurm-bad-{name}")),
            "{name}: something was submitted"
        );
    }
}

/// slurmrestd behind the fault proxy: 10 % of its answers are 500/503 errors, 5 % of its
/// connections reset before an answer, 10 % of its requests held back up to 300 ms — on the
/// submissions, the polls and the cancels alike. Each job still ends with every item once, and
/// Slurm's accounting shows every task array submitted once and every array task completed.
/// A job makes a dozen requests, so jobs run until both an error and a reset were met and at
/// least `ORCH_CHAOS_REST_FAULTS` faults in all (CI: 2; a long run by hand: 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slurmrestd_errors_resets_and_latency_lose_and_duplicate_nothing() {
    let Some(env) = common::slurm_env() else {
        return;
    };
    let seed = common::chaos_seed();
    let wanted = common::setting("ORCH_CHAOS_REST_FAULTS", 2);
    eprintln!("chaos (slurmrestd): ORCH_CHAOS_SEED={seed} ORCH_CHAOS_REST_FAULTS={wanted}");
    let proxy = FaultProxy::start(
        &env["SLURMRESTD_URL"],
        Faults {
            seed,
            error_rate: 0.10,
            reset_rate: 0.05,
            latency_rate: 0.10,
            ..Faults::default()
        },
    )
    .await;
    let faults = |s: &FaultStats| s.errors + s.resets + s.delayed;
    let mut round = 0;
    while faults(&proxy.stats()) < wanted || proxy.stats().errors == 0 || proxy.stats().resets == 0
    {
        assert!(
            round < wanted + 20,
            "too few faults in {round} jobs: {:?}",
            proxy.stats()
        );
        let job = SlurmJob::new(env.clone());
        let name = format!("slurm-rest-faults-{round}");
        let file = job.job_file(
            &name,
            3_000,
            200,
            "{builtin: {name: identity}}",
            &format!(
                "  executor: {{slurm: {{transport: rest, url: \"{}\", user: {}, maxRunning: 3}}}}\n  \
                 resources: {{memory: 200Mi, time: 5m}}\n",
                proxy.endpoint,
                slurm_user()
            ),
        );
        let mut run = job.orch(&["run", file.to_str().unwrap(), "--no-progress"]);
        let out = tokio::task::spawn_blocking(move || run.output().unwrap())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
        assert_exact(&job, 3_000);
        let id = job_id(&out);
        // 15 work tasks and the final merge.
        let rows = job.sacct(&id, 16);
        assert_eq!(
            rows.iter()
                .filter(|r| r[3].starts_with("orch:work"))
                .count(),
            15,
            "{rows:?}"
        );
        assert!(rows.iter().all(|r| r[2] == "COMPLETED"), "{rows:?}");
        assert!(
            arrays_by_comment(&rows).values().all(|&n| n == 1),
            "an array submitted twice: {rows:?}"
        );
        round += 1;
    }
    let stats = proxy.stats();
    common::chaos_summary(
        "slurmrestd",
        seed,
        &format!(
            "{round} jobs, {} requests, {} faults ({} error \
         answers, {} resets, {} delayed)",
            stats.requests,
            faults(&stats),
            stats.errors,
            stats.resets,
            stats.delayed
        ),
    );
}
