//! `orch run --metrics-addr`: `/metrics` scraped over HTTP while a job runs, each scrape checked
//! against the task rows `orch status` reads just before and just after it.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Scratch, fixture, kill, task_of, text, workers_of};

/// One GET of `/metrics`; `None` once nothing listens any more.
fn scrape(port: u16) -> Option<String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Some(body.to_string())
}

/// The value of the sample `name` whose labels include every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let matches = n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_scrape_during_a_job_agrees_with_its_task_rows() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1_500);
    let job = s.write(
        "job.yaml",
        r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: scraped}
spec:
  input: {uri: in.jsonl}
  batch: {size: 250}
  handler: {exec: {command: [python3, HANDLER]}, concurrency: 2}
  retry: {maxAttempts: 3, backoff: {initial: 50ms, factor: 2, max: 1s}}
  tolerance: {maxFailedItemsPercent: 5}
  output: {uri: out}
  executor: {local: {parallelism: 2}}
"#
        .replace("HANDLER", &fixture("flaky.py"))
        .as_str(),
    );
    let job = job.to_str().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = s
        .orch_cmd(&["run", "--no-progress", "--metrics-addr", &addr, job])
        // Ids divisible by 100 fail for good (15 of them), others at the ends of each hundred
        // fail once; 8 ms an item.
        .env("ORCH_TEST_SLEEP", "0.008")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let succeeded = |status: &serde_json::Value| status["tasks"]["succeeded"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut scrapes, mut mid_run, mut killed, mut lost_seen) = (0, false, false, false);
    let mut history: Vec<(Instant, serde_json::Value)> = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the job did not end");
        if run.try_wait().unwrap().is_some() {
            break;
        }
        // Nothing listens yet, or the driver has not had its first tick (no series yet).
        let Some(metrics) = scrape(port).filter(|m| m.contains("orch_job_tasks")) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let after = s.status(std::path::Path::new(job));
        history.push((Instant::now(), after.clone()));
        // The driver reads the rows on every tick (100 ms): rows read a second before the
        // scrape are no newer than what it shows.
        let before = history
            .iter()
            .rev()
            .find(|(at, _)| at.elapsed() > Duration::from_secs(1) + Duration::from_millis(200))
            .map(|(_, status)| status.clone())
            .unwrap_or_default();
        let id = after["job"].as_str().unwrap();
        let work = |state: &str| {
            sample(
                &metrics,
                "orch_job_tasks",
                &[("orch_job", id), ("stage", "work"), ("state", state)],
            )
            .unwrap_or_else(|| panic!("no orch_job_tasks for {state}: {metrics}"))
        };
        let states = [
            "pending",
            "dispatched",
            "running",
            "succeeded",
            "failed",
            "retrying",
            "cancelled",
        ];
        assert_eq!(
            states.iter().map(|st| work(st)).sum::<f64>(),
            6.0,
            "{metrics}"
        );
        assert_eq!(
            sample(
                &metrics,
                "orch_job_items",
                &[("orch_job", id), ("state", "planned")]
            ),
            Some(1_500.0)
        );
        let scraped = work("succeeded") as u64;
        assert!(
            succeeded(&before) <= scraped && scraped <= succeeded(&after),
            "{scraped} succeeded tasks scraped between rows read a second before ({before}) and \
             just after ({after})"
        );
        let started =
            sample(&metrics, "orch_job_attempts_total", &[("orch_job", id)]).unwrap_or(0.0);
        assert!(started as u64 >= scraped, "{metrics}");
        let permanent = sample(
            &metrics,
            "orch_job_items_failed",
            &[("orch_job", id), ("kind", "permanent")],
        );
        assert!(permanent.unwrap_or(0.0) <= 15.0, "{metrics}");
        scrapes += 1;
        mid_run |= scraped > 0 && scraped < 6;
        if sample(
            &metrics,
            "orch_job_attempts_lost_total",
            &[("orch_job", id), ("kind", "infrastructure")],
        ) >= Some(1.0)
        {
            lost_seen = true;
            assert!(
                sample(&metrics, "orch_job_retries_total", &[("orch_job", id)]) >= Some(1.0),
                "{metrics}"
            );
        }
        // Once a task is done, a worker killed well before the end of its task: a lost
        // attempt and its retry appear.
        if !killed && scraped >= 1 {
            for pid in workers_of(&s.path(".orch")) {
                let Some(task) = task_of(pid) else { continue };
                let row = s.orch(&["status", "-o", "json", "--task", &task.to_string(), job]);
                let row: serde_json::Value = serde_json::from_slice(&row.stdout).unwrap();
                if row["task"]["state"] == "running" && row["task"]["itemsOk"].as_u64() < Some(150)
                {
                    kill(pid, "-KILL");
                    killed = true;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        scrapes >= 3 && mid_run,
        "{scrapes} scrapes, one mid-run: {mid_run}"
    );
    assert!(
        killed && lost_seen,
        "the killed worker's attempt was counted as lost"
    );
    assert!(scrape(port).is_none(), "the endpoint ends with the run");
    // What the gauge by kind is read from: each row's failed items by kind, which add up to
    // the errors the tasks' result files hold.
    let status = s.status(std::path::Path::new(job));
    assert_eq!(status["errorsByKind"]["permanent"], 15, "{status}");
    let mut by_kind = std::collections::BTreeMap::<String, u64>::new();
    let id = status["job"].as_str().unwrap();
    for task in 0..6 {
        let row = s.orch(&["status", "-o", "json", "--task", &task.to_string(), job]);
        let row: serde_json::Value = serde_json::from_slice(&row.stdout).unwrap();
        for (kind, n) in row["task"]["itemsFailedByKind"].as_object().unwrap() {
            *by_kind.entry(kind.clone()).or_default() += n.as_u64().unwrap();
        }
        // The bytes it says it wrote are those of the result files of its committed attempt
        // (a task without failed items writes no errors file).
        let attempt = row["task"]["attempt"].as_u64().unwrap();
        let dir = s.path(&format!(".orch/jobs/{id}/results/{task:06}/{attempt}"));
        assert!(dir.join("part.parquet").exists());
        assert_eq!(
            dir.join("errors.parquet").exists(),
            row["task"]["itemsFailed"].as_u64().unwrap() > 0,
            "task {task}"
        );
        let on_disk: u64 = ["part.parquet", "errors.parquet"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum();
        assert_eq!(row["task"]["outputBytes"], on_disk, "task {task}");
    }
    assert_eq!(
        by_kind,
        [("permanent".to_string(), 15)].into(),
        "{by_kind:?}"
    );
}

/// `--metrics-emf FILE`: CloudWatch Embedded Metric Format lines, each valid against the
/// format's schema with every metric and dimension it names present, the last one agreeing
/// with the job's rows.
#[test]
fn emf_lines_are_valid_cloudwatch_records_that_end_with_the_jobs_figures() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 600);
    let job = s.write(
        "job.yaml",
        r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: emf}
spec:
  input: {uri: in.jsonl}
  batch: {size: 100}
  handler: {builtin: {name: identity}}
  output: {uri: out}
  executor: {local: {parallelism: 2}}
"#,
    );
    let job = job.to_str().unwrap();
    let emf = s.path("emf.jsonl");
    let out = s.orch(&[
        "run",
        "--no-progress",
        "--metrics-emf",
        emf.to_str().unwrap(),
        job,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let schema_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schema/cloudwatch-emf.schema.json"
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&emf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() >= 2,
        "a line at the start and one at the end: {lines:?}"
    );
    for record in &lines {
        let errors: Vec<String> = validator
            .iter_errors(record)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}: {record}");
        for directive in record["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(directive["Namespace"], "orch");
            for set in directive["Dimensions"].as_array().unwrap() {
                for dimension in set.as_array().unwrap() {
                    let key = dimension.as_str().unwrap();
                    assert!(record[key].is_string(), "dimension {key} missing: {record}");
                }
            }
            for metric in directive["Metrics"].as_array().unwrap() {
                let name = metric["Name"].as_str().unwrap();
                assert!(record[name].is_number(), "metric {name} missing: {record}");
            }
        }
    }
    let status = s.status(std::path::Path::new(job));
    let last = lines.last().unwrap();
    assert_eq!(last["Job"], status["job"]);
    assert_eq!(last["ItemsOk"], status["items"]["ok"]);
    assert_eq!(last["ItemsPlanned"], 600);
    assert_eq!(last["TasksSucceeded"], 6);
    assert_eq!(last["AttemptsLost"], 0);
}
