//! `orch run` end to end with the real binaries, a real Python handler and an independent
//! reader of the output (pyarrow): exactly-once output, item failures and tolerance, worker
//! crashes (`kill -9`), and a killed driver resuming.
#![allow(clippy::unwrap_used)]

mod common;
use common::fixture;
use std::time::{Duration, Instant};

use common::{Scratch, kill, read_output, text, workers_of};

fn job_yaml(name: &str, handler: &str, extra: &str) -> String {
    common::local_job_yaml(name, handler, 3, extra)
}

#[test]
fn identity_output_has_every_item_exactly_once() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5_000);
    let job = s.write(
        "job.yaml",
        &job_yaml("ident", "{builtin: {name: identity}}", ""),
    );
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.rows, 5_000);
    assert_eq!(seen.duplicates, 0);
    assert_eq!(seen.items, (0..5_000).collect::<Vec<_>>());
    assert_eq!(seen.error_rows, 0);
    assert_eq!(seen.columns, vec!["_item", "id", "text"]);

    // Two workers, kept for the job, ran its 20 tasks; each wrote every task's log itself.
    let id = s.status(&job)["job"].as_str().unwrap().to_string();
    let mut workers = std::collections::BTreeSet::new();
    for task in 0..20 {
        let log = std::fs::read_to_string(s.path(&format!(".orch/jobs/{id}/logs/{task:06}.1.log")))
            .unwrap();
        // Text lines say `worker=host:pid`, JSON lines `"worker":"host:pid"`.
        let named: Vec<String> = log
            .replace("\"worker\":\"", "worker=")
            .split("worker=")
            .skip(1)
            .filter_map(|rest| Some(rest.split([' ', '}', ',', ':', '"']).nth(1)?.to_string()))
            .collect();
        assert!(!named.is_empty(), "task {task}: {log}");
        workers.extend(named);
    }
    assert!(
        !workers.is_empty() && workers.len() <= 2,
        "worker pids {workers:?}"
    );
    let success: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("out/_SUCCESS")).unwrap()).unwrap();
    assert_eq!(success["rows"], 5_000);

    let report = s.status(&job);
    assert_eq!(report["phase"], "succeeded");
    assert_eq!(report["tasks"]["succeeded"], 20);
    assert_eq!(report["items"]["ok"], 5_000);
}

fn python_job(s: &Scratch, tolerance: f64) -> std::path::PathBuf {
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\"]}}, concurrency: 4}}",
        fixture("flaky.py")
    );
    s.write(
        "job.yaml",
        &job_yaml(
            "flaky",
            &handler,
            &format!("  tolerance: {{maxFailedItemsPercent: {tolerance}}}\n"),
        ),
    )
}

#[test]
fn permanent_failures_are_recorded_and_transient_ones_retried_within_tolerance() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 2_000);
    let job = python_job(&s, 1.0);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    let permanent: Vec<u64> = (0..2_000).filter(|i| i % 100 == 0).collect();
    let ok: Vec<u64> = (0..2_000).filter(|i| i % 100 != 0).collect();
    assert_eq!(seen.items, ok, "transient items must succeed on retry");
    assert_eq!(seen.duplicates, 0);
    assert_eq!(seen.error_items, permanent);
    assert_eq!(seen.error_kinds.get("permanent"), Some(&20));
    assert_eq!(seen.error_kinds.len(), 1);

    let status = s.orch(&["status", job.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(table.contains("permanent 20"), "{table}");
}

#[test]
fn failures_above_tolerance_fail_the_job_with_exit_1() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1_000);
    let job = python_job(&s, 0.5);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("above the tolerance"), "{all}");
    // The output is still complete and exact for what succeeded.
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.rows, 990);
    assert_eq!(seen.error_rows, 10);
    // ... but a job over its tolerance failed: no `_SUCCESS` tells a reader otherwise.
    assert!(!s.path("out/_SUCCESS").exists());
}

/// One item that hangs a sequential handler fails alone, with its timeout: the handler process is
/// restarted and the items queued behind it are sent again (they all used to time out, one
/// after the other).
#[test]
fn an_item_that_hangs_the_handler_fails_alone() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 200);
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\"]}}, concurrency: 4, timeout: 1s}}",
        fixture("hang_one.py")
    );
    let yaml = job_yaml(
        "hangs",
        &handler,
        "  tolerance: {maxFailedItemsPercent: 1}\n",
    )
    .replace("maxAttempts: 3", "maxAttempts: 2");
    let job = s.write("job.yaml", &yaml);
    let started = Instant::now();
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let seen = read_output(&s.path("out"));
    let ok: Vec<u64> = (0..200).filter(|i| *i != 10).collect();
    assert_eq!(seen.items, ok);
    assert_eq!(seen.duplicates, 0);
    assert_eq!(seen.error_items, vec![10]);
    assert_eq!(seen.error_kinds.get("transient"), Some(&1));
    // A hang guard only: it takes seconds (minutes before the fix).
    assert!(started.elapsed() < Duration::from_secs(120));
    // The task log says which item timed out, and that the handler was restarted.
    let logs: String = std::fs::read_dir(s.path(".orch/jobs"))
        .unwrap()
        .flat_map(|j| std::fs::read_dir(j.unwrap().path().join("logs")).unwrap())
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("handler item timed out"), "{logs}");
    assert!(logs.contains("restarting handler process"), "{logs}");
}

fn slow_job(s: &Scratch) -> std::path::PathBuf {
    s.jsonl("in.jsonl", 1_500);
    s.write(
        "job.yaml",
        &job_yaml(
            "slow",
            // 1.5 s per task of 250 items: longer than a worker's first checkpoint flush, which
            // comes a second into the task.
            "{builtin: {name: sleep, duration: 12ms}, concurrency: 2}",
            "",
        ),
    )
}

/// Starts `orch run` in the background, output captured.
fn spawn_run(s: &Scratch, job: &std::path::Path) -> std::process::Child {
    s.orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until some worker has checkpointed items, so a kill lands mid-batch.
fn wait_for_workers(s: &Scratch, child: &mut std::process::Child) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "orch ended too early");
        let pids = workers_of(&s.path(".orch"));
        let checkpointed = std::fs::read_dir(s.path(".orch/jobs"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_dir(e.ok()?.path().join("checkpoints")).ok())
            .is_some_and(|mut d| d.next().is_some());
        if !pids.is_empty() && checkpointed {
            std::thread::sleep(Duration::from_millis(1200));
            return workers_of(&s.path(".orch"));
        }
        assert!(Instant::now() < deadline, "no worker started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_killed_with_sigkill_is_retried_and_output_stays_exact() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    let job = slow_job(&s);
    let mut child = spawn_run(&s, &job);
    let pids = wait_for_workers(&s, &mut child);
    assert!(!pids.is_empty());
    kill(pids[0], "-KILL");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..1_500).collect::<Vec<_>>());
    assert_eq!(seen.duplicates, 0);
    let report = s.status(&job);
    assert_eq!(report["items"]["ok"], 1_500, "{report}");
    assert!(
        task_logs(&s).iter().any(|name| name.ends_with(".2.log")),
        "the killed task must have run a second attempt: {:?}",
        task_logs(&s)
    );
}

fn task_logs(s: &Scratch) -> Vec<String> {
    std::fs::read_dir(s.path(".orch/jobs"))
        .unwrap()
        .flat_map(|j| std::fs::read_dir(j.unwrap().path().join("logs")).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_worker_stopped_with_sigterm_checkpoints_and_the_retry_resumes() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    let job = slow_job(&s);
    let mut child = spawn_run(&s, &job);
    let pids = wait_for_workers(&s, &mut child);
    kill(pids[0], "-TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..1_500).collect::<Vec<_>>());
    // The task log of the stopped attempt says it checkpointed.
    let logs = std::fs::read_dir(s.path(".orch/jobs"))
        .unwrap()
        .flat_map(|j| std::fs::read_dir(j.unwrap().path().join("logs")).unwrap())
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(logs.contains("stop signal received"), "{logs}");
    assert!(logs.contains("resuming from the checkpoint"), "{logs}");
}

#[test]
fn a_killed_driver_resumes_the_job_on_the_next_run() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    let job = slow_job(&s);
    let mut child = spawn_run(&s, &job);
    wait_for_workers(&s, &mut child);
    kill(child.id(), "-KILL");
    child.wait().unwrap();
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("resumed"), "{all}");
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..1_500).collect::<Vec<_>>());
    assert_eq!(seen.duplicates, 0);
}

#[test]
fn dry_run_prints_the_plan_and_runs_nothing() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1_000);
    let job = s.write(
        "job.yaml",
        &job_yaml("plan", "{builtin: {name: identity}}", ""),
    );
    let out = s.orch(&["run", "--dry-run", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("batches        4"), "{all}");
    assert!(all.contains("items          1000"), "{all}");
    assert!(!s.path(".orch").exists(), "a dry run must not create state");
}

#[test]
fn ctrl_c_checkpoints_exits_130_and_the_next_run_resumes() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let s = Scratch::new();
    let job = slow_job(&s);
    // Its own process group, so that "Ctrl-C" reaches the driver and its workers as in a terminal.
    let mut child = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_for_workers(&s, &mut child);
    std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(130), "{all}");
    assert!(
        all.contains("run the same command again to resume"),
        "{all}"
    );
    let again = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..1_500).collect::<Vec<_>>());
    assert_eq!(seen.duplicates, 0);
}

#[test]
fn items_of_a_task_that_fails_all_attempts_are_in_errors_parquet() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1_000);
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\"]}}, concurrency: 2}}",
        fixture("crash_high.py")
    );
    let yaml = job_yaml("crashy", &handler, "").replace("maxAttempts: 3", "maxAttempts: 2");
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("task(s) failed after all attempts"), "{all}");
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..500).collect::<Vec<_>>());
    assert_eq!(seen.error_items, (500..1_000).collect::<Vec<_>>());
    // The output of a failed job is there to read, but not marked complete.
    assert!(!s.path("out/_SUCCESS").exists());
    let status = s.orch(&["status", job.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(table.contains("failed 2"), "{table}");
    assert!(table.contains("keeps crashing"), "{table}");
}

/// A handler process that dies on a few items every time, with 8 items in flight: only those
/// items fail (as infrastructure, after their attempts), never the items that happened to be in
/// flight beside them, and the job ends within its retry policy.
#[test]
fn items_in_flight_when_a_poison_item_kills_the_handler_are_not_charged() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 500);
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\"]}}, concurrency: 8}}",
        fixture("poison.py")
    );
    let job = s.write(
        "job.yaml",
        &job_yaml(
            "poison",
            &handler,
            "  tolerance: {maxFailedItemsPercent: 5}\n",
        ),
    );
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let poison: Vec<u64> = (0..500).filter(|i| i % 97 == 7).collect();
    let seen = read_output(&s.path("out"));
    seen.assert_each_item_once(500);
    assert_eq!(seen.error_items, poison, "{seen:?}");
    assert_eq!(seen.error_kinds["infrastructure"], poison.len() as u64);
}

#[test]
fn a_second_run_of_the_same_job_is_refused_while_the_first_runs() {
    let s = Scratch::new();
    let job = slow_job(&s);
    let mut first = spawn_run(&s, &job);
    wait_for_workers(&s, &mut first);
    let second = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&second);
    assert_eq!(second.status.code(), Some(2), "{all}");
    assert!(all.contains("already being run"), "{all}");
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_suspended_job_is_refused_instead_of_waiting_forever() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 10);
    let job = s.write(
        "job.yaml",
        &job_yaml("paused", "{builtin: {name: identity}}", "  suspend: true\n"),
    );
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("spec.suspend"), "{all}");
}

#[test]
fn status_verify_finds_a_corrupt_task_result() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 600);
    let job = s.write(
        "job.yaml",
        &job_yaml("verify", "{builtin: {name: identity}}", ""),
    );
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ok = s.orch(&["status", "--verify", job.to_str().unwrap()]);
    let table = text(&ok);
    assert_eq!(ok.status.code(), Some(0), "{table}");
    assert!(table.contains("3 verified, 0 with problems"), "{table}");

    let part = std::fs::read_dir(s.path(".orch/jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("results/000001/1/part.parquet");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let bad = s.orch(&["status", "--verify", job.to_str().unwrap()]);
    let table = text(&bad);
    assert_eq!(bad.status.code(), Some(1), "{table}");
    assert!(table.contains("task 1 attempt 1: corrupt"), "{table}");
}

#[test]
fn csv_input_with_quoted_newlines_and_a_ragged_row() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    // BOM, CRLF endings, a quoted field holding a newline and a comma, a blank line, a ragged row.
    let csv = "\u{feff}id,name,note\r\n\
               1,alpha,\"plain\"\r\n\
               2,beta,\"two\r\nlines, and a comma\"\r\n\
               \r\n\
               3,gamma\r\n\
               4,\"de\"\"lta\",x\r\n\
               5,eps,\"last\"";
    s.write("in.csv", csv);
    let yaml = job_yaml("csv", "{builtin: {name: identity}}", "")
        .replace("in.jsonl", "in.csv")
        .replace("size: 250", "size: 2");
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    // One ragged row of five records is 20 % failed items, above the default tolerance of 0.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, vec![0, 1, 3, 4]);
    assert_eq!(seen.error_items, vec![2]);
    assert_eq!(seen.columns, vec!["_item", "id", "name", "note"]);
    let values = std::process::Command::new("python3")
        .args([
            "-c",
            "import pyarrow.parquet as pq, glob, json, sys; \
             t = pq.read_table(sorted(glob.glob(sys.argv[1] + '/part-*.parquet'))[0]); \
             print(json.dumps(t.to_pylist()))",
            s.path("out").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&values.stdout).unwrap();
    assert_eq!(rows[1]["note"], "two\r\nlines, and a comma");
    assert_eq!(rows[2]["name"], "de\"lta");
    assert_eq!(
        rows[0]["id"], "1",
        "CSV values reach the handler as strings"
    );
}

#[test]
fn sqlite_jsonl_and_csv_outputs_hold_the_same_rows() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 700);
    let yaml = job_yaml("formats", "{builtin: {name: identity}}", "").replace(
        "output: {uri: out}",
        "output: {uri: out, formats: [parquet, sqlite, jsonl, csv]}",
    );
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            r#"
import csv, json, sqlite3, sys
d = sys.argv[1]
db = sqlite3.connect(d + "/output.sqlite")
sq = [r[0] for r in db.execute("SELECT _item FROM results ORDER BY _item")]
idx = [r[1] for r in db.execute("PRAGMA index_list(results)")]
js = [json.loads(l)["_item"] for l in open(d + "/output.jsonl")]
cs = [int(r["_item"]) for r in csv.DictReader(open(d + "/output.csv", newline=""))]
text = db.execute("SELECT text FROM results WHERE _item = 5").fetchone()[0]
print(json.dumps({"sqlite": sq, "jsonl": js, "csv": cs, "indexed": len(idx) > 0, "text": text}))
"#,
            s.path("out").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let all: Vec<u64> = (0..700).collect();
    for format in ["sqlite", "jsonl", "csv"] {
        let items: Vec<u64> = serde_json::from_value(v[format].clone()).unwrap();
        assert_eq!(items, all, "{format}");
    }
    assert_eq!(v["indexed"], true);
    assert_eq!(v["text"], "item 5");
    let success: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("out/_SUCCESS")).unwrap()).unwrap();
    for f in ["output.sqlite", "output.jsonl", "output.csv"] {
        assert_eq!(success["files"][f]["rows"], 700, "{f}");
    }
}

#[test]
fn a_glob_of_plain_gzip_and_zstd_files_is_one_dataset_with_stable_ordinals() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    use std::io::Write;
    let s = Scratch::new();
    let lines = |range: std::ops::Range<u64>| {
        range
            .map(|i| format!("{{\"id\": {i}}}\n"))
            .collect::<String>()
    };
    s.write("data/part-1.jsonl", &lines(0..100));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(lines(100..250).as_bytes()).unwrap();
    std::fs::write(s.path("data/part-2.jsonl.gz"), gz.finish().unwrap()).unwrap();
    let zst = zstd::encode_all(lines(250..300).as_bytes(), 3).unwrap();
    std::fs::write(s.path("data/part-3.jsonl.zst"), zst).unwrap();
    std::fs::write(s.path("data/.hidden"), "not input").unwrap();

    let yaml = job_yaml("many", "{builtin: {name: identity}}", "")
        .replace(
            "input: {uri: in.jsonl}",
            "input: {uri: \"data/part-*\", format: jsonl}",
        )
        .replace("size: 250", "size: 40");
    let job = s.write("job.yaml", &yaml);
    let dry = s.orch(&["run", "--dry-run", job.to_str().unwrap()]);
    assert!(text(&dry).contains("items          300"), "{}", text(&dry));
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ids = std::process::Command::new("python3")
        .args([
            "-c",
            "import pyarrow.dataset as ds, sys, json, glob; \
             t = ds.dataset(sorted(glob.glob(sys.argv[1] + '/part-*.parquet')), format='parquet'); \
             t = t.to_table().sort_by('_item'); \
             print(json.dumps([t.column('_item').to_pylist(), t.column('id').to_pylist()]))",
            s.path("out").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: (Vec<u64>, Vec<u64>) = serde_json::from_slice(&ids.stdout).unwrap();
    let all: Vec<u64> = (0..300).collect();
    assert_eq!(v.0, all, "ordinals run on across files");
    assert_eq!(v.1, all, "item n of the dataset is record n, in path order");
}

#[test]
fn parquet_input_by_row_groups_with_nested_lists_and_nulls() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            "import pyarrow as pa, pyarrow.parquet as pq, sys; \
             n = 1000; \
             t = pa.table({'id': list(range(n)), \
                           'name': [None if i % 10 == 0 else f'n{i}' for i in range(n)], \
                           'tags': [[i, i + 1] for i in range(n)], \
                           'meta': [{'k': i % 3} for i in range(n)]}); \
             pq.write_table(t, sys.argv[1], row_group_size=300)",
            s.path("in.parquet").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let yaml = job_yaml("pq", "{builtin: {name: identity}}", "")
        .replace("in.jsonl", "in.parquet")
        .replace("size: 250", "size: 200");
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..1000).collect::<Vec<_>>());
    let rows = std::process::Command::new("python3")
        .args([
            "-c",
            "import pyarrow.parquet as pq, glob, json, sys; \
             t = pq.read_table(sorted(glob.glob(sys.argv[1] + '/part-*.parquet'))[0]); \
             print(json.dumps(t.slice(0, 2).to_pylist()))",
            s.path("out").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&rows.stdout).unwrap();
    assert_eq!(rows[0]["id"], 0);
    assert_eq!(
        rows[0]["name"],
        serde_json::Value::Null,
        "nulls reach the handler"
    );
    assert_eq!(rows[1]["name"], "n1");
    assert_eq!(
        rows[1]["tags"], "[1,2]",
        "lists come through (stored as JSON text)"
    );
    assert_eq!(rows[1]["meta"], "{\"k\":1}");
}

#[test]
fn many_task_results_are_merged_level_by_level() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 2_000);
    let yaml = job_yaml("levels", "{builtin: {name: identity}}", "")
        .replace("size: 250", "size: 50")
        .replace("output: {uri: out}", "output: {uri: out, fanIn: 3}");
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", "-v", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("aggregation planned"), "{all}");
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..2_000).collect::<Vec<_>>());
    assert_eq!(seen.duplicates, 0);
    let job_dir = std::fs::read_dir(s.path(".orch/jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // 40 results at fan-in 3: 40 → 14 → 5 → 2 files, so three levels with _DONE markers, each
    // group merged by a worker process of its own (its log is the proof). Aggregation tasks
    // are numbered after the 40 work tasks: level 1 is 40..54, level 2 54..59, level 3 59..61,
    // the final merge 61.
    let mut task = 40;
    for (level, groups) in [(1, 14), (2, 5), (3, 2)] {
        for g in 0..groups {
            let group = job_dir.join(format!("aggregate/{level}/{g:06}"));
            assert!(group.join("_DONE").is_file(), "level {level} group {g}");
            let log = job_dir.join(format!("logs/merge-{level}-{task:06}.1.log"));
            assert!(log.is_file(), "no merge task log {}", log.display());
            task += 1;
        }
    }
    assert!(job_dir.join("logs/merge-final.1.log").is_file());
    // They show in `orch status` like any task.
    let report = s.status(&job);
    assert_eq!(report["mergeTasks"]["succeeded"], 22, "{report}");
    assert_eq!(report["tasks"]["succeeded"], 40, "{report}");
}

/// The final merge cannot write its output (the output directory is a file): it is retried with
/// backoff like any task, then the job fails naming it, and `orch status` shows its attempts.
#[test]
fn a_final_merge_that_keeps_failing_is_retried_then_fails_the_job() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 600);
    let job = s.write(
        "job.yaml",
        &job_yaml("stuck", "{builtin: {name: identity}}", ""),
    );
    std::fs::write(s.path("out"), "a file where a directory should be").unwrap();
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("aggregation failed: final merge task 3 failed after 3 attempt(s)"),
        "{all}"
    );
    // Three attempts, each in a process (and a log) of its own.
    for attempt in 1..=3 {
        let log = job_dir(&s).join(format!("logs/merge-final.{attempt}.log"));
        assert!(
            log.is_file(),
            "no log of attempt {attempt}: {}",
            log.display()
        );
    }
    let report = s.status(&job);
    assert_eq!(report["phase"], "failed", "{report}");
    assert_eq!(report["tasks"]["succeeded"], 3, "{report}");
    assert_eq!(report["mergeTasks"]["failed"], 1, "{report}");
    let task = &report["failedTasks"][0];
    assert_eq!(task["kind"], "final merge", "{report}");
    assert_eq!(task["attempt"], 3, "{report}");
    let table = text(&s.orch(&["status", job.to_str().unwrap()]));
    assert!(table.contains("merging   failed 1"), "{table}");
    assert!(
        table.contains("task 3 (final merge, failed, attempt 3)"),
        "{table}"
    );
}

/// A cancel while the final merge waits for its retry: the merge is not attempted again, the
/// job ends cancelled at once (not after its backoff), and `orch status` shows the merge task
/// cancelled after its one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_aggregation_stops_the_merge_tasks() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 600);
    let yaml = job_yaml("cancelled", "{builtin: {name: identity}}", "").replace(
        "backoff: {initial: 50ms, factor: 2, max: 1s}",
        "backoff: {initial: 10m, factor: 2, max: 10m}",
    );
    let job = s.write("job.yaml", &yaml);
    std::fs::write(s.path("out"), "a file where a directory should be").unwrap();
    let mut run = s.orch_cmd(&["run", "--no-progress", job.to_str().unwrap()]);
    let run = tokio::task::spawn_blocking(move || run.output().unwrap());

    let storage = s.path(".orch");
    let backends = loop {
        // The driver creates the store; until then there is nothing to open.
        if storage.join(orch_core::layout::state_db()).exists()
            && let Ok(b) =
                orch_connect::open_backends(storage.to_str().unwrap(), s.path("tmp")).await
        {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    common::cancel_while_the_final_merge_waits(backends.state.as_ref()).await;
    let out = run.await.unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("cancelled"), "{all}");
    assert!(job_dir(&s).join("logs/merge-final.1.log").is_file());
    assert!(
        !job_dir(&s).join("logs/merge-final.2.log").exists(),
        "{all}"
    );

    let report = s.status(&job);
    assert_eq!(report["phase"], "cancelled", "{report}");
    assert_eq!(report["tasks"]["succeeded"], 3, "{report}");
    assert_eq!(report["mergeTasks"]["cancelled"], 1, "{report}");
}

#[test]
fn output_target_file_size_rolls_part_files() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 3_000);
    let yaml = job_yaml("roll", "{builtin: {name: identity}}", "").replace(
        "output: {uri: out}",
        "output: {uri: out, targetFileSize: 8Ki}",
    );
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let parts = std::fs::read_dir(s.path("out"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("part-")
        })
        .count();
    assert!(parts > 1, "expected several part files, got {parts}");
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..3_000).collect::<Vec<_>>());
}

#[test]
fn jsonl_edge_cases_blank_lines_crlf_no_final_newline_and_invalid_json() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.write(
        "in.jsonl",
        "{\"id\": 0}\r\n\r\n   \n{\"id\": 1}\n{not json\n{\"id\": 3}\r\n\n{\"id\": 4}",
    );
    let yaml = job_yaml("edges", "{builtin: {name: identity}}", "")
        .replace("size: 250", "size: 2")
        .replace(
            "  output: {uri: out}",
            "  tolerance: {maxFailedItemsPercent: 25}\n  output: {uri: out}",
        );
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, vec![0, 1, 3, 4], "blank lines are not items");
    assert_eq!(seen.error_items, vec![2]);
    assert_eq!(seen.error_kinds.get("permanent"), Some(&1));
    let messages = std::process::Command::new("python3")
        .args([
            "-c",
            "import pyarrow.parquet as pq, sys; \
             print(pq.read_table(sys.argv[1]).column('message')[0])",
            s.path("out/errors.parquet").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&messages.stdout).contains("invalid JSON"),
        "{}",
        text(&messages)
    );
}

#[test]
fn a_record_over_max_record_bytes_is_a_clear_error_naming_its_ordinal() {
    let s = Scratch::new();
    let big = format!("{{\"id\": 1, \"blob\": \"{}\"}}\n", "x".repeat(5_000));
    s.write("in.jsonl", &format!("{{\"id\": 0}}\n{big}{{\"id\": 2}}\n"));
    let yaml = job_yaml("skew", "{builtin: {name: identity}}", "").replace(
        "batch: {size: 250}",
        "batch: {size: 250, maxRecordBytes: 4Ki}",
    );
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("input item 1") && all.contains("over the limit"),
        "{all}"
    );
    assert!(!all.contains("panicked"), "{all}");
}

/// The job directory (there is one job per scratch storage).
fn job_dir(s: &Scratch) -> std::path::PathBuf {
    std::fs::read_dir(s.path(".orch/jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

fn success_files(out: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("_SUCCESS")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::json!({"files": v["files"], "rows": v["rows"], "schema": v["schema"]})
}

#[test]
fn aggregation_killed_with_sigkill_resumes_to_the_same_checksums() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    use std::os::unix::process::CommandExt;
    // 200 task results at fan-in 2: 100 → 50 → 25 → 13 → 7 → 4 → 2, about 200 merge tasks.
    let job_text = job_yaml("agg", "{builtin: {name: identity}}", "")
        .replace("size: 250", "size: 1")
        .replace("output: {uri: out}", "output: {uri: out, fanIn: 2}");
    let clean = Scratch::new();
    clean.jsonl("in.jsonl", 200);
    let job = clean.write("job.yaml", &job_text);
    let out = clean.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let expected = success_files(&clean.path("out"));

    let s = Scratch::new();
    s.jsonl("in.jsonl", 200);
    let job = s.write("job.yaml", &job_text);
    // Its own process group, so that the kill takes the driver and its merge workers at once.
    let mut child = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        assert!(child.try_wait().unwrap().is_none(), "orch ended too early");
        if let Ok(mut jobs) = std::fs::read_dir(s.path(".orch/jobs"))
            && let Some(Ok(dir)) = jobs.next()
            && dir.path().join("aggregate/1/000040/_DONE").is_file()
        {
            break dir.path().join("aggregate/1/000000/_DONE");
        }
        assert!(Instant::now() < deadline, "aggregation never got going");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    child.wait().unwrap();
    assert!(
        !s.path("out/_SUCCESS").exists(),
        "the kill came too late to interrupt the aggregation"
    );
    let first_sealed = std::fs::metadata(&first).unwrap().modified().unwrap();
    // A group output damaged while nobody ran must be merged again, not trusted.
    let damaged = job_dir(&s).join("aggregate/1/000001/part-00000.parquet");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();

    let again = s.orch(&["run", "--no-progress", "-v", job.to_str().unwrap()]);
    let all = text(&again);
    assert_eq!(again.status.code(), Some(0), "{all}");
    assert_eq!(success_files(&s.path("out")), expected);
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        first_sealed,
        "a group done before the kill was merged again"
    );
    // The level-2 task that reads it merged it again first.
    let logs: String = std::fs::read_dir(job_dir(&s).join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("merge-2-")
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        logs.contains("a sealed merge group was damaged; merged it again"),
        "{logs}"
    );
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.items, (0..200).collect::<Vec<_>>());
}

/// The `http` builtin against an API that enforces its own rate limit: requests over it are
/// answered 429 with a short `Retry-After`, retried as `rate_limited`, and every item ends up
/// in the output exactly once, each accepted by the API exactly once.
#[test]
fn the_http_builtin_retries_rate_limited_requests_until_every_item_is_done() {
    use orch_testkit::limited_api::{Limit, LimitedApi};
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    // Two workers of 8 requests in flight against a bucket of 2: the first requests of each
    // worker are sure to exceed it.
    let api = LimitedApi::start_background(Limit {
        rate: 150.0,
        burst: 2.0,
        retry_after: Some(Duration::from_millis(50)),
    });
    let s = Scratch::new();
    let items = 300;
    s.jsonl("in.jsonl", items);
    let job = s.write(
        "job.yaml",
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: http-limited}}
spec:
  input: {{uri: in.jsonl}}
  batch: {{size: 100}}
  handler:
    builtin:
      name: http
      http:
        method: POST
        url: "{url}/items/{{id}}"
        headers:
          X-Plain: {{value: "yes"}}
        body: {{text: "{{text}}", n: "{{id}}"}}
        resultPointer: /body
    concurrency: 8
    timeout: 10s
  retry: {{maxAttempts: 60, backoff: {{initial: 10ms, factor: 1.5, max: 200ms}}}}
  output: {{uri: out}}
  executor: {{local: {{parallelism: 2}}}}
"#,
            url = api.url()
        ),
    );
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    seen.assert_each_item_once(items);
    assert_eq!(seen.error_rows, 0, "{seen:?}");
    assert_eq!(seen.columns, vec!["_item", "text", "n"]);

    let stats = api.stats();
    let mut ids: Vec<u64> = stats.ids.iter().map(|id| id.parse().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..items).collect::<Vec<_>>(),
        "each item accepted once"
    );
    assert!(stats.rejected > 0, "the limit was never hit: {stats:?}");
}

/// Handler code that rewrites its job's `job.json` (as code with write access to the storage
/// could) changes nothing that runs: every later task checks the spec against the digest the
/// driver gave it and refuses, naming the mismatch; no task runs the changed spec.
#[test]
fn a_rewritten_job_json_is_refused_by_every_later_task() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 500);
    let handler = format!(
        "{{exec: {{command: [\"python3\", \"{}\", \"{}\"]}}}}",
        fixture("rewrite_spec.py"),
        s.path(".orch").display()
    );
    let yaml = job_yaml("tampered", &handler, "")
        .replace("maxAttempts: 3", "maxAttempts: 2")
        .replace("parallelism: 2", "parallelism: 1");
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let logs: String = std::fs::read_dir(s.path(".orch/jobs"))
        .unwrap()
        .flat_map(|j| std::fs::read_dir(j.unwrap().path().join("logs")).unwrap())
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("not the") && logs.contains("its submitter gave"),
        "{logs}"
    );
    let report = s.status(&job);
    assert_eq!(report["tasks"]["succeeded"], 1, "{report}");
    assert_eq!(report["tasks"]["failed"], 1, "{report}");
}

/// A `.parquet` input that is not Parquet, or is cut short, is refused before anything runs:
/// exit 2, naming the file, from `orch validate` as from `orch run`.
#[test]
fn a_truncated_or_foreign_parquet_input_is_refused_naming_the_file() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            "import pyarrow as pa, pyarrow.parquet as pq, sys; \
             pq.write_table(pa.table({'id': list(range(100))}), sys.argv[1]); \
             data = open(sys.argv[1], 'rb').read(); \
             open(sys.argv[1], 'wb').write(data[: len(data) // 2])",
            s.path("cut.parquet").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    s.write("foreign.parquet", "id,text\n1,not parquet at all\n");
    for name in ["cut.parquet", "foreign.parquet"] {
        let yaml = job_yaml("pq", "{builtin: {name: identity}}", "").replace("in.jsonl", name);
        let job = s.write("job.yaml", &yaml);
        for verb in [&["validate"][..], &["run", "--no-progress"]] {
            let out = s.orch(&[verb, &[job.to_str().unwrap()]].concat());
            let all = text(&out);
            assert_eq!(out.status.code(), Some(2), "{verb:?} {name}: {all}");
            assert!(all.contains(name), "{verb:?} {name}: {all}");
            assert!(!all.contains("aggregation"), "{verb:?} {name}: {all}");
        }
    }
}
