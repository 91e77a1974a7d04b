//! `orch retry JOB --items` end to end with the real binaries: only the failed items of the
//! chosen kinds reach the handler again, every other result and error is kept, and the output
//! (read with pyarrow) and `_SUCCESS` are replaced with the merged result, each item once.
#![allow(clippy::unwrap_used)]

mod common;
use common::fixture;
use std::collections::BTreeSet;
use std::path::Path;

use common::{Scratch, read_output, text};

const ITEMS: u64 = 1_000;

/// Items the fixture fails permanently (ids divisible by 50) and transiently every time
/// (id % 70 == 3) while their switches are off.
fn permanent() -> BTreeSet<u64> {
    (0..ITEMS).filter(|i| i % 50 == 0).collect()
}
fn transient() -> BTreeSet<u64> {
    (0..ITEMS).filter(|i| i % 70 == 3).collect()
}

/// The ids the handler was given since the log was last taken, and an empty log.
fn take_log(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, "").unwrap();
    text.lines().map(|l| l.parse().unwrap()).collect()
}

fn success(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap()
}

#[test]
fn retry_items_runs_only_the_failed_items_of_a_kind_and_replaces_the_output() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", ITEMS);
    let log = s.path("handled.log");
    let switches = s.path("switches");
    std::fs::create_dir_all(&switches).unwrap();
    // Four tasks merged two by two: the retry re-runs a merge of more than one level.
    let job = s.write(
        "job.yaml",
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: redrive}}
spec:
  input: {{uri: in.jsonl}}
  batch: {{size: 250}}
  handler: {{exec: {{command: [python3, "{handler}", "{log}", "{switches}"]}}, concurrency: 4}}
  retry: {{maxAttempts: 2, backoff: {{initial: 10ms, factor: 2, max: 50ms}}}}
  tolerance: {{maxFailedItemsPercent: 100}}
  output: {{uri: out, fanIn: 2, formats: [parquet, sqlite]}}
  executor: {{local: {{parallelism: 2}}}}
"#,
            handler = fixture("redrivable.py"),
            log = log.display(),
            switches = switches.display(),
        ),
    );
    let job = job.to_str().unwrap();
    let out_dir = s.path("out");

    let run = s.orch(&["run", "--no-progress", job]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let first = read_output(&out_dir);
    first.assert_each_item_once(ITEMS);
    assert_eq!(first.error_kinds["permanent"], permanent().len() as u64);
    assert_eq!(first.error_kinds["transient"], transient().len() as u64);
    take_log(&log);

    // Nothing of a kind that did not fail: the job and its output stay as they are.
    let none = s.orch(&["retry", job, "--items", "--kind", "schema", "--no-progress"]);
    assert_eq!(none.status.code(), Some(0), "{}", text(&none));
    assert!(
        text(&none).contains("nothing to run again"),
        "{}",
        text(&none)
    );
    assert!(take_log(&log).is_empty());
    assert!(out_dir.join("_SUCCESS").exists());

    // The permanent failures are fixed: only they run again.
    std::fs::write(switches.join("permanent-fixed"), "").unwrap();
    let retried = s.orch(&[
        "retry",
        job,
        "--items",
        "--kind",
        "permanent",
        "--no-progress",
    ]);
    assert_eq!(retried.status.code(), Some(0), "{}", text(&retried));
    assert!(
        text(&retried).contains(&format!(
            "running again: {} item(s) of 4 task(s)",
            permanent().len()
        )),
        "{}",
        text(&retried)
    );
    let handled: BTreeSet<u64> = take_log(&log).into_iter().collect();
    assert_eq!(handled, permanent());
    let second = read_output(&out_dir);
    second.assert_each_item_once(ITEMS);
    assert_eq!(
        second.error_items.iter().copied().collect::<BTreeSet<_>>(),
        transient()
    );
    assert_eq!(second.error_kinds.get("permanent"), None);
    let marker = success(&out_dir);
    assert_eq!(marker["rows"], ITEMS - transient().len() as u64);
    assert_eq!(marker["items"]["ok"], ITEMS - transient().len() as u64);
    assert_eq!(marker["items"]["failed"], transient().len() as u64);
    let report = s.status(Path::new(job));
    assert_eq!(report["phase"], "succeeded");
    assert_eq!(report["items"]["failed"], transient().len() as u64);

    // Then every failed item: the transient ones, which now succeed.
    std::fs::write(switches.join("transient-fixed"), "").unwrap();
    let all = s.orch(&["retry", job, "--items", "--no-progress"]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all));
    let handled: BTreeSet<u64> = take_log(&log).into_iter().collect();
    assert_eq!(handled, transient());
    let last = read_output(&out_dir);
    last.assert_each_item_once(ITEMS);
    assert_eq!(last.error_rows, 0);
    assert_eq!(last.rows, ITEMS);
    let marker = success(&out_dir);
    assert_eq!(marker["rows"], ITEMS);
    assert_eq!(marker["items"]["failed"], 0);
    // The other formats were rebuilt from the same merge.
    let rows = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*), count(distinct _item) from results').fetchone())",
            out_dir.join("output.sqlite").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rows.stdout).trim(),
        format!("({ITEMS}, {ITEMS})"),
        "{}",
        text(&rows)
    );

    // Nothing failed any more.
    let nothing = s.orch(&["retry", job, "--items", "--no-progress"]);
    assert_eq!(nothing.status.code(), Some(0), "{}", text(&nothing));
    assert!(
        text(&nothing).contains("nothing to run again"),
        "{}",
        text(&nothing)
    );
}

#[test]
fn a_job_that_never_ran_or_a_bad_kind_is_refused_with_exit_2() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 10);
    let job = s.write(
        "job.yaml",
        r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: never}
spec:
  input: {uri: in.jsonl}
  handler: {builtin: {name: identity}}
  output: {uri: out}
"#,
    );
    let job = job.to_str().unwrap();
    let bad = s.orch(&["retry", job, "--items", "--kind", "oops"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("--kind oops: not an error kind"),
        "{}",
        text(&bad)
    );
    let kind_alone = s.orch(&["retry", job, "--kind", "permanent"]);
    assert_eq!(kind_alone.status.code(), Some(2), "{}", text(&kind_alone));
    let never = s.orch(&["retry", job, "--items", "--no-progress"]);
    assert_eq!(never.status.code(), Some(2), "{}", text(&never));
    assert!(
        text(&never).contains("has not run on this storage"),
        "{}",
        text(&never)
    );
}

/// A job whose every task failed has nothing to merge, so its aggregation plan is the final
/// merge alone; once `orch retry` has run the tasks again, the plan merges all of them in
/// levels (fan-in 3), and its rows take over the earlier plan's by id: the final merge's row
/// becomes a merge group. Every aggregation task succeeds, and after a redrive of the items
/// the crashing handler was charged with, the output is exact.
#[test]
fn a_retry_after_every_task_failed_merges_under_a_new_plan() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    const N: u64 = 80;
    let s = Scratch::new();
    s.jsonl("in.jsonl", N);
    let marker = s.path("handler-may-start");
    let handler = s.write(
        "handler.py",
        "import json, os, sys\n\
         if not os.path.exists(sys.argv[1]):\n    sys.exit(3)\n\
         for line in sys.stdin:\n    req = json.loads(line)\n    \
         sys.stdout.write(json.dumps({'id': req['id'], 'result': req['item']}) + '\\n')\n    \
         sys.stdout.flush()\n",
    );
    let job = s.write(
        "job.yaml",
        &format!(
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: replan}}\nspec:\n  \
             input: {{uri: in.jsonl}}\n  batch: {{size: 10}}\n  \
             handler: {{exec: {{command: [python3, \"{}\", \"{}\"]}}}}\n  \
             retry: {{maxAttempts: 1}}\n  output: {{uri: out, fanIn: 3}}\n",
            handler.display(),
            marker.display()
        ),
    );
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(s.status(&job)["tasks"]["failed"], 8);

    std::fs::write(&marker, "").unwrap();
    let out = s.orch(&["retry", job.to_str().unwrap()]);
    let status = s.status(&job);
    // Three merge groups of level 1, then the final merge, all done under the new plan.
    assert_eq!(
        status["mergeTasks"]["succeeded"],
        4,
        "{}\n{status}",
        text(&out)
    );
    assert_eq!(status["tasks"]["succeeded"], 8, "{status}");
    // The tasks resumed from their checkpoints, which kept the items the crashing handler
    // was charged with (one per crash, run alone) as failed: those take a redrive.
    if out.status.code() != Some(0) {
        assert!(
            status["errorsByKind"]["infrastructure"].as_u64() > Some(0),
            "{status}"
        );
        let out = s.orch(&["retry", job.to_str().unwrap(), "--items"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            text(&out),
            s.status(&job)
        );
    }
    let seen = read_output(&s.path("out"));
    seen.assert_each_item_once(N);
    assert_eq!(seen.error_rows, 0);
    assert_eq!(success(&s.path("out"))["rows"], N);
}
