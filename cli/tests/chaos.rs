//! Chaos on `orch run`: real jobs while `kill -9` lands at random moments on workers and on the
//! driver itself (which is then started again, as a user would), with a recorded seed. After
//! every job the output is read with pyarrow, not with orch: every input item exactly once,
//! nothing in `errors.parquet`, and `_SUCCESS` counting every row.
//!
//! CI runs a short version; a long one is run by hand and its figures go in
//! docs/reliability.md:
//!
//! ```text
//! ORCH_CHAOS_TRIALS=40 ORCH_CHAOS_SEED=7 cargo test -p orch-cli --test chaos -- --nocapture
//! ```
//!
//! `ORCH_CHAOS_SEED` replays a run (the same faults at the same points of the schedule; the
//! processes' own timing still varies). Needs pyarrow (skipped without it; a failure under CI).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Rng, Scratch, chaos_seed, kill, read_output, setting, text, workers_of};

const ITEMS: u64 = 1_200;

fn spawn_run(s: &Scratch, job: &Path) -> Child {
    s.orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Faults injected in one trial.
#[derive(Debug, Default)]
struct Faults {
    workers: u64,
    drivers: u64,
}

/// One job under `faults` random `kill -9`s; returns what was injected once the job is done
/// and its output checked.
fn trial(rng: &mut Rng, faults: u64) -> Faults {
    let s = Scratch::new();
    s.jsonl("in.jsonl", ITEMS);
    let job = s.write(
        "job.yaml",
        "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {name: chaos}\nspec:\n  \
         input: {uri: in.jsonl}\n  batch: {size: 40}\n  \
         handler: {builtin: {name: sleep, duration: 20ms}, concurrency: 2}\n  \
         retry: {maxAttempts: 10, backoff: {initial: 20ms, factor: 2, max: 200ms}}\n  \
         output: {uri: out, fanIn: 4}\n  executor: {local: {parallelism: 3}}\n",
    );
    let storage = s.path(".orch");
    let mut injected = Faults::default();
    let mut driver = spawn_run(&s, &job);
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the job did not finish within 10 minutes ({injected:?})"
        );
        if let Some(status) = driver.try_wait().unwrap() {
            let out = driver.wait_with_output().unwrap();
            if status.success() {
                break;
            }
            // Only a driver we killed may end without success; it is started again.
            panic!("orch run failed on its own: {}", text(&out));
        }
        if injected.workers + injected.drivers >= faults {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        // Three kills in four hit a worker (of this driver or one it left behind), the
        // fourth the driver.
        if rng.below(4) < 3 {
            let pids = workers_of(&storage);
            if pids.is_empty() {
                continue;
            }
            kill(pids[rng.below(pids.len() as u64) as usize], "-KILL");
            injected.workers += 1;
        } else {
            kill(driver.id(), "-KILL");
            driver.wait().unwrap();
            injected.drivers += 1;
            driver = spawn_run(&s, &job);
        }
    }
    assert_databases_intact(&storage);
    let seen = read_output(&s.path("out"));
    assert_eq!(
        seen.items,
        (0..ITEMS).collect::<Vec<_>>(),
        "items lost or out of place ({injected:?})"
    );
    assert_eq!(seen.duplicates, 0, "items duplicated ({injected:?})");
    assert_eq!(seen.error_rows, 0, "items failed ({injected:?})");
    let success: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("out/_SUCCESS")).unwrap()).unwrap();
    assert_eq!(success["rows"], ITEMS, "{success}");
    injected
}

/// Every SQLite database under the storage (job and task rows, the retry queue, rate-limit
/// buckets, checkpoints, the audit log) passes `PRAGMA integrity_check`, run by Python's
/// sqlite3 rather than by orch; returns how many were checked.
fn assert_databases_intact(storage: &Path) -> usize {
    let script = r#"
import glob, json, sqlite3, sys
found = {}
for path in glob.glob(sys.argv[1] + "/**/*.sqlite", recursive=True):
    db = sqlite3.connect(path, timeout=30)
    found[path] = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
print(json.dumps(found))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, storage.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let found: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).unwrap();
    for (path, verdict) in &found {
        assert_eq!(verdict, "ok", "{path}");
    }
    assert!(!found.is_empty(), "no database under {}", storage.display());
    found.len()
}

/// `kill -9` of the driver and every worker at once, many times, at short random intervals
/// while 100 small tasks commit their rows, queue messages and checkpoints: after each round
/// every SQLite database passes `PRAGMA integrity_check`, and the job, resumed, ends with every
/// item once. `ORCH_CHAOS_SQLITE_ROUNDS` sets the rounds (CI: 15).
#[test]
fn kill_9_during_sqlite_commits_leaves_every_database_intact() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let seed = chaos_seed();
    let rounds = setting("ORCH_CHAOS_SQLITE_ROUNDS", 15);
    eprintln!("chaos (sqlite): ORCH_CHAOS_SEED={seed} ORCH_CHAOS_SQLITE_ROUNDS={rounds}");
    let mut rng = Rng::new(seed);
    const N: u64 = 2_000;
    let s = Scratch::new();
    s.jsonl("in.jsonl", N);
    let job = s.write(
        "job.yaml",
        "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {name: commits}\nspec:\n  \
         input: {uri: in.jsonl}\n  batch: {size: 20}\n  \
         handler: {builtin: {name: sleep, duration: 2ms}, concurrency: 4}\n  \
         retry: {maxAttempts: 10, backoff: {initial: 20ms, factor: 2, max: 200ms}}\n  \
         output: {uri: out, fanIn: 8}\n  executor: {local: {parallelism: 4}}\n",
    );
    let storage = s.path(".orch");
    let (mut killed, mut checked) = (0u64, 0usize);
    let mut driver = spawn_run(&s, &job);
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(30 + rng.below(270)));
        if driver.try_wait().unwrap().is_some() {
            break;
        }
        kill(driver.id(), "-KILL");
        for pid in workers_of(&storage) {
            kill(pid, "-KILL");
            killed += 1;
        }
        driver.wait().unwrap();
        killed += 1;
        checked += assert_databases_intact(&storage);
        driver = spawn_run(&s, &job);
    }
    let out = driver.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    checked += assert_databases_intact(&storage);
    let seen = read_output(&s.path("out"));
    seen.assert_each_item_once(N);
    assert_eq!(seen.error_rows, 0);
    common::chaos_summary(
        "sqlite",
        seed,
        &format!(
            "{killed} processes killed with kill -9, \
         {checked} integrity checks ok"
        ),
    );
}

#[test]
fn kill_9_of_workers_and_driver_loses_and_duplicates_nothing() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let seed = chaos_seed();
    let trials = setting("ORCH_CHAOS_TRIALS", 2);
    let faults = setting("ORCH_CHAOS_FAULTS", 5);
    // Printed first, so a failure can be replayed.
    eprintln!(
        "chaos: ORCH_CHAOS_SEED={seed} ORCH_CHAOS_TRIALS={trials} ORCH_CHAOS_FAULTS={faults}"
    );
    let mut rng = Rng::new(seed);
    let mut total = Faults::default();
    for _ in 0..trials {
        let f = trial(&mut rng, faults);
        total.workers += f.workers;
        total.drivers += f.drivers;
    }
    common::chaos_summary(
        "workers",
        seed,
        &format!(
            "{trials} jobs of {ITEMS} items, {} faults ({} worker kill -9, {} \
         driver kill -9)",
            total.workers + total.drivers,
            total.workers,
            total.drivers
        ),
    );
}

/// Workers frozen past their lease (SIGSTOP) while their driver dies: the next driver gives
/// each task to a new attempt once the lease has run out, and when the frozen workers wake
/// (SIGCONT) after the reassignment they find their tasks no longer their own and stop without
/// committing; the output holds the new attempts' results, each item once, and the aggregation
/// reads none of the frozen attempts' files. Each round freezes every worker of a job of up to
/// 8 tasks; `ORCH_CHAOS_ZOMBIES` sets how many zombies in all (CI: 2, one round). The lease is
/// 30 s and the engine waits 10 s more, so a round takes about a minute.
#[test]
fn a_worker_frozen_past_its_lease_never_commits_once_its_task_moved_on() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let wanted = setting("ORCH_CHAOS_ZOMBIES", 2);
    eprintln!("chaos (zombie): ORCH_CHAOS_ZOMBIES={wanted}");
    let (mut zombies, mut rounds) = (0, 0);
    while zombies < wanted {
        zombies += zombie_round((wanted - zombies).min(8));
        rounds += 1;
    }
    common::chaos_summary(
        "zombie",
        "-",
        &format!(
            "{rounds} jobs, {zombies} workers frozen past their lease and \
         woken after their tasks moved on, none committed"
        ),
    );
}

/// One job of `tasks` tasks, all of whose first workers are frozen; returns how many were.
fn zombie_round(tasks: u64) -> u64 {
    const PER_TASK: u64 = 60;
    let n = tasks * PER_TASK;
    let s = Scratch::new();
    s.jsonl("in.jsonl", n);
    let job = s.write(
        "job.yaml",
        &format!(
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: frozen}}\nspec:\n  \
             input: {{uri: in.jsonl}}\n  batch: {{size: {PER_TASK}}}\n  \
             handler: {{builtin: {{name: sleep, duration: 100ms}}, concurrency: 1}}\n  \
             retry: {{maxAttempts: 3, backoff: {{initial: 20ms, factor: 2, max: 200ms}}}}\n  \
             output: {{uri: out}}\n  executor: {{local: {{parallelism: {tasks}}}}}\n"
        ),
    );
    let storage = s.path(".orch");
    let wait_for = |what: &str, limit: Duration, mut found: Box<dyn FnMut() -> bool + '_>| {
        let started = Instant::now();
        while !found() {
            assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut first = spawn_run(&s, &job);
    wait_for(
        "a worker per task",
        Duration::from_secs(60),
        Box::new(|| workers_of(&storage).len() as u64 >= tasks),
    );
    // A few items in, so the frozen attempts have work they could still commit.
    std::thread::sleep(Duration::from_millis(1500));
    let frozen = workers_of(&storage);
    for &pid in &frozen {
        kill(pid, "-STOP");
    }
    kill(first.id(), "-KILL");
    first.wait().unwrap();

    let second = spawn_run(&s, &job);
    wait_for(
        "second attempts after the lease ran out",
        Duration::from_secs(120),
        Box::new(|| workers_of(&storage).iter().any(|pid| !frozen.contains(pid))),
    );
    for &pid in &frozen {
        kill(pid, "-CONT");
    }
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The woken workers gave up on their own.
    wait_for(
        "the frozen workers to end",
        Duration::from_secs(30),
        Box::new(|| !workers_of(&storage).iter().any(|pid| frozen.contains(pid))),
    );

    let seen = read_output(&s.path("out"));
    seen.assert_each_item_once(n);
    assert_eq!(seen.error_rows, 0);
    let status = s.status(&job);
    assert_eq!(status["tasks"]["succeeded"], tasks, "{status}");
    // Each frozen attempt's log says it lost its task; only later attempts committed.
    let job_dir = std::fs::read_dir(storage.join("jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let plan = std::fs::read_to_string(job_dir.join("aggregate/plan.json")).unwrap();
    for task in 0..tasks {
        let log = std::fs::read_to_string(job_dir.join(format!("logs/{task:06}.1.log")))
            .unwrap_or_else(|e| panic!("task {task}'s first attempt: {e}"));
        assert!(log.contains("no longer ours"), "{log}");
        assert!(!log.contains("committed"), "{log}");
        assert!(!plan.contains(&format!("results/{task:06}/1/")), "{plan}");
    }
    frozen.len() as u64
}

/// The disk under the storage (state, queue, task files, checkpoints) and the output fills up
/// at a random point of the job — during the work, the merges or the final output: `orch run`
/// stops at once with an error that says the disk is full and how to go on (no retry loop, no
/// panic), every database stays intact, and once the disk has room the same command resumes
/// the job to an exact output. `ORCH_CHAOS_DISK_TRIALS` sets how many jobs (CI: 1).
#[test]
fn a_full_disk_stops_the_run_with_a_clear_error_and_the_resumed_run_is_exact() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let seed = chaos_seed();
    let trials = setting("ORCH_CHAOS_DISK_TRIALS", 1);
    eprintln!("chaos (disk): ORCH_CHAOS_SEED={seed} ORCH_CHAOS_DISK_TRIALS={trials}");
    let mut rng = Rng::new(seed);
    // Items of 300 random hex digits (they do not compress): the job writes several MiB in
    // all (task results, merge groups, the output), more than the disk is given.
    const N: u64 = 3_000;
    let input = Scratch::new();
    let mut lines = String::new();
    for i in 0..N {
        let text: String = (0..300)
            .map(|_| char::from_digit(rng.below(16) as u32, 16).unwrap())
            .collect();
        lines.push_str(&format!("{{\"id\": {i}, \"text\": \"{text}\"}}\n"));
    }
    let input_file = input.write("in.jsonl", &lines);
    let mut stopped_at = Vec::new();
    for _ in 0..trials {
        // From early in the work to the final output (the whole job writes about 6 MiB).
        let size = 700 * 1024 + rng.below(4096 * 1024);
        let Some(disk) = common::SmallDisk::mount(size) else {
            return;
        };
        let s = Scratch {
            dir: tempfile::tempdir_in(disk.dir.path()).unwrap(),
        };
        let job = s.write(
            "job.yaml",
            &format!(
                "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: full}}\nspec:\n  \
                 input: {{uri: {}}}\n  batch: {{size: 100}}\n  \
                 handler: {{builtin: {{name: identity}}}}\n  \
                 output: {{uri: out, fanIn: 4}}\n  executor: {{local: {{parallelism: 2}}}}\n",
                input_file.display()
            ),
        );
        let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
        let printed = text(&out);
        assert_eq!(out.status.code(), Some(1), "{size} bytes: {printed}");
        assert!(
            printed.contains("the disk is full") && printed.contains("run the same command again"),
            "{printed}"
        );
        assert!(
            !printed.contains("panicked") && !printed.contains("trying again"),
            "{printed}"
        );
        // (A reader of a database in WAL mode needs room for its shared memory file too.)
        disk.resize(64 << 20);
        assert_databases_intact(&s.path(".orch"));
        let status = s.status(&job);
        stopped_at.push(format!(
            "{} KiB: {} items ok, {} merges done",
            size / 1024,
            status["items"]["ok"].as_u64().unwrap_or(0),
            status["mergeTasks"]["succeeded"].as_u64().unwrap_or(0)
        ));

        let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("resumed and succeeded"),
            "{}",
            text(&out)
        );
        assert_databases_intact(&s.path(".orch"));
        let seen = read_output(&s.path("out"));
        seen.assert_each_item_once(N);
        assert_eq!(seen.error_rows, 0);
        let success: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.path("out/_SUCCESS")).unwrap()).unwrap();
        assert_eq!(success["rows"], N, "{success}");
    }
    common::chaos_summary(
        "disk",
        seed,
        &format!("{trials} full disks ({})", stopped_at.join(", ")),
    );
}
