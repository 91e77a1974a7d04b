//! Rate limiting end to end: the real `orch` and `orch-worker` processes with the `http`
//! builtin against a local API that enforces its own token bucket and counts what it accepts
//! and refuses (`orch_testkit::limited_api`). The API is the referee: its own clock and its own
//! bucket of the RateLimit's rate and burst, not orch's bookkeeping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::{Scratch, read_output, text};
use orch_testkit::limited_api::{Limit, LimitedApi, Stats};

/// The job file: a RateLimit `api` beside an OrchJob calling `{url}/items/{id + offset}`.
fn job_file(
    name: &str,
    url: &str,
    rate: f64,
    burst: u32,
    batch: u64,
    processes: u32,
    id_field: &str,
) -> String {
    format!(
        r#"apiVersion: orch.dev/v1alpha1
kind: RateLimit
metadata: {{name: api}}
spec: {{rate: {rate}/s, burst: {burst}}}
---
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: {name}}}
spec:
  input: {{uri: {name}.jsonl}}
  batch: {{size: {batch}}}
  handler:
    builtin:
      name: http
      http: {{method: GET, url: "{url}/items/{{{id_field}}}"}}
    concurrency: 4
    timeout: 10s
  rateLimit: {{name: api}}
  retry: {{maxAttempts: 20, backoff: {{initial: 100ms, factor: 2, max: 2s}}}}
  output: {{uri: out-{name}}}
  executor: {{local: {{parallelism: {processes}}}}}
  storage: {{uri: .orch}}
"#
    )
}

/// `n` items whose `key` is `offset + i`.
fn input(s: &Scratch, name: &str, n: u64, offset: u64) {
    let body: String = (0..n)
        .map(|i| format!("{{\"id\": {i}, \"key\": {}}}\n", offset + i))
        .collect();
    s.write(&format!("{name}.jsonl"), &body);
}

/// Accepted requests in each whole 10 s window after the first, from the first arrival on,
/// up to 5 s before the last: when the workers run out of items (the run's last seconds) the
/// rate falls for lack of work, which says nothing about the limiter.
fn steady_windows(arrivals: &[f64]) -> Vec<usize> {
    let Some(&first) = arrivals.first() else {
        return Vec::new();
    };
    let last = arrivals.last().copied().unwrap_or(first);
    let mut out = Vec::new();
    let mut start = first + 10.0;
    while start + 10.0 <= last - 5.0 {
        out.push(
            arrivals
                .iter()
                .filter(|&&t| t >= start && t < start + 10.0)
                .count(),
        );
        start += 10.0;
    }
    out
}

fn assert_kept_the_rate(stats: &Stats, rate: f64, burst: u32) {
    let windows = steady_windows(&stats.arrivals);
    assert!(!windows.is_empty(), "the run was too short to judge");
    let expected = rate * 10.0;
    for w in &windows {
        assert!(
            (*w as f64 - expected).abs() <= expected * 0.03,
            "a 10 s window held {w} requests, expected {expected} ± 3 %: {windows:?}"
        );
    }
    assert_never_over(stats, rate, burst);
}

/// Never more than rate × window + burst in any 1 s or 10 s window, and no call refused.
fn assert_never_over(stats: &Stats, rate: f64, burst: u32) {
    assert_eq!(
        stats.rejected, 0,
        "the API refused requests; accepted per second: {:?}",
        stats.per_second
    );
    for window in [1.0, 10.0] {
        let most = stats.max_in_window(Duration::from_secs_f64(window));
        assert!(
            most as f64 <= rate * window + f64::from(burst),
            "{most} requests within {window} s"
        );
    }
}

/// `orch run FILE` in the scratch directory, on a thread of its own.
fn run_in_background(s: &Scratch, file: &std::path::Path) -> std::thread::JoinHandle<Output> {
    let mut cmd = s.orch_cmd(&["run", "--no-progress", file.to_str().unwrap()]);
    std::thread::spawn(move || cmd.output().unwrap())
}

/// 16 requests in flight in 4 worker processes against a RateLimit of 50/s: the API sees 50/s
/// within 3 % in every 10 s window after the first, never more than rate × window + burst,
/// refuses nothing, and every item is in the output once. The bucket is written about once
/// per 100 tokens while the workers run.
#[test]
fn sixteen_workers_in_four_processes_keep_the_apis_rate() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let (rate, burst) = (50.0, 20);
    let api = LimitedApi::start_background(Limit::new(rate, f64::from(burst)));
    let s = Scratch::new();
    let items = 1_600;
    input(&s, "steady", items, 0);
    // One task per process for the whole run: steady holders.
    let job = s.write(
        "job.yaml",
        &job_file("steady", api.url(), rate, burst, items / 4, 4, "key"),
    );
    let run = run_in_background(&s, &job);
    // Bucket writes against tokens, sampled while all four workers run.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = s.path(".orch");
    let sample = || {
        rt.block_on(async {
            let b = orch_connect::open_backends(storage.to_str().unwrap(), s.path("tmp"))
                .await
                .unwrap();
            let bucket = b.rate_limits.get_bucket("ns/default/api").await.unwrap();
            (bucket.map_or(0, |b| b.writes), api.stats().accepted)
        })
    };
    std::thread::sleep(Duration::from_secs(8));
    let (writes_before, tokens_before) = sample();
    std::thread::sleep(Duration::from_secs(16));
    let (writes_after, tokens_after) = sample();
    let out = run.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let stats = api.stats();
    assert_kept_the_rate(&stats, rate, burst);
    read_output(&s.path("out-steady")).assert_each_item_once(items);
    let (writes, tokens) = (writes_after - writes_before, tokens_after - tokens_before);
    assert!(tokens > 500, "{tokens} tokens in the sample");
    assert!(
        writes as f64 <= tokens as f64 / 50.0,
        "{writes} bucket writes for {tokens} tokens"
    );

    // Each task row says what its attempt took from the bucket (one token a request) and how
    // long its items waited: with 16 callers on 50 requests a second, most of the time.
    let (mut taken, mut waited_ms) = (0, 0);
    for task in 0..4 {
        let row = s.orch(&[
            "status",
            "-o",
            "json",
            "--task",
            &task.to_string(),
            job.to_str().unwrap(),
        ]);
        let row: serde_json::Value = serde_json::from_slice(&row.stdout).unwrap();
        taken += row["task"]["rateLimitTokens"].as_u64().unwrap_or(0);
        waited_ms += row["task"]["rateLimitWaitMs"].as_u64().unwrap_or(0);
    }
    assert_eq!(
        taken,
        stats.accepted + stats.rejected,
        "a token for each request"
    );
    assert!(waited_ms > 100_000, "items waited {waited_ms} ms in all");
}

/// Two `orch run` jobs on one storage (two processes each) share the bucket: together they keep
/// the rate within 3 % in every 10 s window after the first, never above rate × window + burst,
/// with no 429; each gets about half of it while both run; both finish exactly once.
#[test]
fn two_jobs_on_one_storage_share_the_bucket() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let (rate, burst) = (40.0, 16);
    let api = LimitedApi::start_background(Limit::new(rate, f64::from(burst)));
    let s = Scratch::new();
    let items = 600;
    input(&s, "left", items, 0);
    input(&s, "right", items, 1_000_000);
    let runs: Vec<_> = ["left", "right"]
        .iter()
        .map(|name| {
            let file = s.write(
                &format!("{name}.yaml"),
                &job_file(name, api.url(), rate, burst, items / 2, 2, "key"),
            );
            run_in_background(&s, &file)
        })
        .collect();
    for run in runs {
        let out = run.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let stats = api.stats();
    assert_kept_the_rate(&stats, rate, burst);
    // While both ran (the middle of the run), each had about half.
    let of_right = |id: &String| id.parse::<u64>().unwrap() >= 1_000_000;
    let both: Vec<(f64, bool)> = stats
        .arrivals
        .iter()
        .zip(&stats.ids)
        .map(|(t, id)| (*t, of_right(id)))
        .collect();
    let first = both.first().unwrap().0;
    let middle: Vec<bool> = both
        .iter()
        .filter(|(t, _)| *t >= first + 5.0 && *t < first + 12.0)
        .map(|(_, right)| *right)
        .collect();
    let right = middle.iter().filter(|r| **r).count() as f64;
    let share = right / middle.len() as f64;
    assert!(
        (0.4..=0.6).contains(&share),
        "the second job had {share:.2} of {} requests",
        middle.len()
    );
    for name in ["left", "right"] {
        read_output(&s.path(&format!("out-{name}"))).assert_each_item_once(items);
    }
}

/// The API lowers its limit mid-run and answers 429 with `Retry-After`: orch lowers the shared
/// rate and, within 30 s, keeps under the new limit (few refusals in the last part of the run),
/// and every item ends up in the output once.
#[test]
fn a_lowered_api_limit_is_followed_and_nothing_is_lost() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let (rate, burst) = (40.0, 16);
    let api = LimitedApi::start_background(Limit::new(rate, f64::from(burst)));
    let s = Scratch::new();
    let items = 1_400;
    input(&s, "lowered", items, 0);
    let job = s.write(
        "job.yaml",
        &job_file("lowered", api.url(), rate, burst, items / 4, 4, "key"),
    );
    let run = run_in_background(&s, &job);
    std::thread::sleep(Duration::from_secs(6));
    api.set_limit(rate / 2.0, 4.0, Some(Duration::from_secs(1)));
    let lowered_at = api.stats().arrivals.last().copied().unwrap_or(0.0);
    let out = run.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    read_output(&s.path("out-lowered")).assert_each_item_once(items);

    let stats = api.stats();
    assert!(
        stats.rejected > 0,
        "the lower limit was never hit: {stats:?}"
    );
    // After 30 s, the rate the API accepts is at most the new limit, and orch uses most of it.
    let settled = lowered_at + 30.0;
    let last = stats.arrivals.last().copied().unwrap();
    assert!(last > settled + 5.0, "the run ended too soon to judge");
    let after: Vec<f64> = stats
        .arrivals
        .iter()
        .copied()
        .filter(|t| *t >= settled)
        .collect();
    let accepted_rate = after.len() as f64 / (last - settled);
    assert!(
        accepted_rate <= rate / 2.0 * 1.05 && accepted_rate >= rate / 2.0 * 0.5,
        "{accepted_rate:.1}/s accepted after the limit fell to {}/s",
        rate / 2.0
    );
    let ids: std::collections::BTreeSet<&String> = stats.ids.iter().collect();
    assert_eq!(ids.len() as u64, items, "every item accepted once");
}

/// The worker processes of this test's job: `orch-worker run` with `job_prefix` in their
/// arguments.
fn workers_of(job_prefix: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_worker = args.first().is_some_and(|a| a.ends_with("orch-worker"));
        if is_worker && args.iter().any(|a| a.starts_with(job_prefix)) {
            out.push(pid);
        }
    }
    out
}

/// Workers killed with SIGKILL while they hold leases: their shares only run out, so the API
/// never sees more than its limit, refuses nothing, and the job still ends with every item
/// exactly once (the killed workers' tasks run again).
#[test]
fn workers_killed_holding_leases_never_make_the_rate_overshoot() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let (rate, burst) = (40.0, 16);
    let api = LimitedApi::start_background(Limit::new(rate, f64::from(burst)));
    let s = Scratch::new();
    let items = 1_200;
    input(&s, "killed", items, 0);
    let job = s.write(
        "job.yaml",
        &job_file("killed", api.url(), rate, burst, 300, 4, "key"),
    );
    let run = run_in_background(&s, &job);
    std::thread::sleep(Duration::from_secs(8));
    let workers = workers_of("killed-");
    assert!(workers.len() >= 2, "workers running: {workers:?}");
    for pid in &workers[..2] {
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }
    let out = run.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    read_output(&s.path("out-killed")).assert_each_item_once(items);
    let stats = api.stats();
    assert_never_over(&stats, rate, burst);
}

/// Costs known after the call: a Python handler calls the API and reports 9 tokens of usage
/// beyond the 1 each item takes, so at 100 tokens/s the API sees about 10 calls a second.
#[test]
fn usage_reported_after_the_call_is_charged() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let api = LimitedApi::start_background(Limit::unlimited());
    let s = Scratch::new();
    let items = 300;
    input(&s, "usage", items, 0);
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    s.write(
        "handler.py",
        &format!(
            "import sys, urllib.request\nsys.path.insert(0, {python:?})\n\
             from orch_handler import handler, Result\n\
             @handler(concurrency=4)\n\
             def call(item):\n\
             \x20   urllib.request.urlopen('{url}/items/%d' % item['key']).read()\n\
             \x20   return Result({{'id': item['id']}}, usage={{'api': 9}})\n",
            python = python.to_str().unwrap(),
            url = api.url()
        ),
    );
    let yaml = job_file("usage", api.url(), 100.0, 10, 150, 2, "key").replace(
        "    builtin:\n      name: http\n      http: {method: GET, url: \"URL/items/{key}\"}\n"
            .replace("URL", api.url())
            .as_str(),
        "    exec: {command: [python3, handler.py]}\n",
    );
    assert!(yaml.contains("handler.py"), "{yaml}");
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    read_output(&s.path("out-usage")).assert_each_item_once(items);
    let stats = api.stats();
    let windows = steady_windows(&stats.arrivals);
    assert!(!windows.is_empty(), "too short to judge: {stats:?}");
    for w in &windows {
        assert!((90..=110).contains(w), "calls per 10 s: {windows:?}");
    }
}

/// Two `orch run` processes with their storage in different S3 prefixes and the buckets in one
/// DynamoDB table (moto): the bucket is one item, shared; the API sees its rate and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_separate_s3_roots_share_a_bucket_in_dynamodb() {
    use orch_core::backend::RateLimitStore;
    use orch_testkit::moto;
    if !orch_testkit::components::moto() || !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let (rate, burst) = (30.0, 12);
    let api = LimitedApi::start(Limit::new(rate, f64::from(burst))).await;
    let s = Scratch::new();
    let (table, queue, bucket) = (
        moto::unique("rl-table"),
        moto::unique("rl-q"),
        moto::unique("rl-bucket"),
    );
    // One request at a time: moto's conditional writes are not atomic, and two workers racing
    // for the bucket could both win (orch_testkit::serial_proxy).
    let serial = orch_testkit::serial_proxy::SerialProxy::start(&moto::moto().endpoint).await;
    let env = [
        ("AWS_ENDPOINT_URL", serial.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("ORCH_DYNAMODB_TABLE", table.clone()),
        ("ORCH_SQS_QUEUE", queue.clone()),
        ("ORCH_SCRATCH", s.path("tmp").to_string_lossy().into_owned()),
    ];
    let orch = |args: &[&str]| {
        let mut c = s.orch_cmd(args);
        c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        c
    };
    let init = orch(&["init", "--bucket", &bucket]).output().unwrap();
    assert!(init.status.success(), "{}", text(&init));
    // moto's request recorder: the bucket's writes as they went over the wire.
    let endpoint = moto::moto().endpoint.clone();
    bucket_writes_on_the_wire(&endpoint, &table, "reset");
    bucket_writes_on_the_wire(&endpoint, &table, "start");
    let items = 450;
    let runs: Vec<_> = ["left", "right"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            input(&s, name, items, i as u64 * 1_000_000);
            let yaml = job_file(name, api.url(), rate, burst, 150, 2, "key").replace(
                "storage: {uri: .orch}",
                &format!("storage: {{uri: \"s3://{bucket}/root-{name}/\"}}"),
            );
            let file = s.write(&format!("{name}.yaml"), &yaml);
            let mut cmd = orch(&["run", "--no-progress", file.to_str().unwrap()]);
            std::thread::spawn(move || cmd.output().unwrap())
        })
        .collect();
    for run in runs {
        let out = tokio::task::spawn_blocking(move || run.join().unwrap())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    for name in ["left", "right"] {
        read_output(&s.path(&format!("out-{name}"))).assert_each_item_once(items);
    }
    let stats = api.stats();
    assert_never_over(&stats, rate, burst);
    // One bucket item for both, written far less often than tokens were taken.
    let sdk = moto::sdk_config().await;
    let store = orch_aws::dynamodb::DynamoStateStore::new(
        orch_aws::config::dynamodb_client(&sdk),
        table.clone(),
        Default::default(),
    );
    let shared = store
        .get_bucket("ns/default/api")
        .await
        .unwrap()
        .expect("the bucket");
    bucket_writes_on_the_wire(&endpoint, &table, "stop");
    let on_the_wire = bucket_writes_on_the_wire(&endpoint, &table, "count");
    // Every counted write went over the wire (the recording also holds the SDK's retries of a
    // lost answer and the writes that lost their condition, so it may count more).
    assert!(
        on_the_wire >= shared.writes,
        "{on_the_wire} < {}",
        shared.writes
    );
    assert!(
        on_the_wire * 10 <= 2 * items,
        "{on_the_wire} bucket writes for {} tokens",
        2 * items
    );
}

/// Drives moto's request recorder (`reset`, `start`, `stop`), or (`count`) counts the
/// recorded `UpdateItem` requests on rate-limit bucket items of `table`.
fn bucket_writes_on_the_wire(endpoint: &str, table: &str, action: &str) -> u64 {
    let script = r#"
import base64, json, sys, urllib.request
endpoint, table, action = sys.argv[1:4]
base = endpoint + "/moto-api/recorder/"
if action != "count":
    req = urllib.request.Request(base + action + "-recording", data=b"", method="POST")
    urllib.request.urlopen(req, timeout=60).read()
    print(0)
    sys.exit()
text = urllib.request.urlopen(base + "download-recording", timeout=120).read().decode()
n = 0
for line in text.splitlines():
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    headers = {k.lower(): v for k, v in rec.get("headers", {}).items()}
    if headers.get("x-amz-target") != "DynamoDB_20120810.UpdateItem":
        continue
    body = rec.get("body") or ""
    if rec.get("body_encoded"):
        body = base64.b64decode(body).decode()
    doc = json.loads(body or "{}")
    pk = doc.get("Key", {}).get("pk", {}).get("S", "")
    if doc.get("TableName") == table and pk.startswith("RATELIMIT#"):
        n += 1
print(n)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, endpoint, table, action])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
