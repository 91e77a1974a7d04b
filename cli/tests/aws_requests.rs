//! What a task costs on AWS, pinned: every request `orch run` makes to S3, DynamoDB and SQS for
//! a job of one-item-per-line batches on S3 storage, recorded on the wire by moto's request
//! recorder (the real SDK over HTTP), classified by service, operation and object, and held to
//! the per-task budget of docs/benchmarks.md ("AWS requests per task"). Counts, not timings: a
//! change that adds a request to every task fails here. `bench/aws_requests.sh` prints the same
//! classification for any job size.
//!
//! Its own test binary on purpose: the binary's moto server then serves this test alone, so the
//! recording holds only its requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use orch_aws::config::{self, AwsSettings};
use orch_testkit::moto;

const TASKS: u64 = 24;
const ITEMS_PER_TASK: u64 = 5;

/// One recorded request: (service, operation, what it was about).
type Request = (&'static str, String, String);

/// The object class of an S3 key: digits become `N`, the job id `J`.
fn key_class(key: &str) -> String {
    let mut out = Vec::new();
    for (i, part) in key.split('/').enumerate() {
        if i == 2 && key.starts_with("orch/jobs/") {
            out.push("J".to_string());
        } else if part.bytes().any(|b| b.is_ascii_digit()) && part.contains('.') {
            let (stem, ext) = part.split_once('.').unwrap();
            let stem: String = stem
                .chars()
                .map(|c| if c.is_ascii_digit() { 'N' } else { c })
                .collect();
            out.push(format!(
                "{}.{ext}",
                stem.replace("NN", "N").replace("NN", "N")
            ));
        } else if part.bytes().all(|b| b.is_ascii_digit()) && !part.is_empty() {
            out.push("N".to_string());
        } else {
            out.push(part.to_string());
        }
    }
    out.join("/")
}

fn classify(rec: &serde_json::Value, bucket: &str, table: &str) -> Option<Request> {
    let headers: BTreeMap<String, String> = rec["headers"]
        .as_object()?
        .iter()
        .map(|(k, v)| (k.to_lowercase(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let method = rec["method"].as_str().unwrap_or_default();
    let url = rec["url"].as_str().unwrap_or_default();
    if let Some(target) = headers.get("x-amz-target") {
        let op = target.rsplit('.').next().unwrap_or(target).to_string();
        if target.starts_with("DynamoDB") {
            let body = rec["body"].as_str().unwrap_or_default();
            if !body.contains(table) {
                return None;
            }
            // Which kind of item: the sort key says (JOB, TASK#…, ATTEMPT#…, a lock, a bucket).
            let what = ["\"ATTEMPT#", "\"TASK#", "\"JOB\"", "LOCK", "RATELIMIT#"]
                .iter()
                .find(|m| body.contains(*m))
                .map_or("other", |m| m.trim_matches(|c| c == '"' || c == '#'));
            return Some(("DynamoDB", op, what.to_string()));
        }
        return Some(("SQS", op, String::new()));
    }
    let path = url.split("://").nth(1)?.split_once('/')?.1;
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let key = path.strip_prefix(&format!("{bucket}/"))?;
    let op = match method {
        "GET" if query.contains("list-type") => "ListObjectsV2",
        "GET" if headers.contains_key("range") => "GetObject (ranged)",
        "GET" => "GetObject",
        "PUT" => "PutObject",
        "HEAD" => "HeadObject",
        "DELETE" => "DeleteObject",
        "POST" => "PostObject",
        _ => "other",
    };
    Some(("S3", op.to_string(), key_class(key)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_aws_costs_its_budget_of_requests() {
    if !orch_testkit::components::moto() {
        return;
    }
    let endpoint = moto::moto().endpoint.clone();
    let (table, queue, bucket) = (
        moto::unique("req-table"),
        moto::unique("req-q"),
        moto::unique("req-bucket"),
    );
    let s = common::Scratch::new();
    let orch = |args: &[&str]| {
        let mut c = s.orch_cmd(args);
        c.env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ORCH_DYNAMODB_TABLE", &table)
            .env("ORCH_SQS_QUEUE", &queue)
            .env("ORCH_SCRATCH", s.path("tmp"));
        c
    };
    let init = orch(&["init", "--bucket", &bucket]).output().unwrap();
    assert!(init.status.success(), "{}", common::text(&init));
    let lines: String = (0..TASKS * ITEMS_PER_TASK)
        .map(|i| format!("{{\"id\":{i},\"text\":\"item {i}\"}}\n"))
        .collect();
    let sdk = moto::sdk_config().await;
    config::s3_client(&sdk, &AwsSettings::default())
        .put_object()
        .bucket(&bucket)
        .key("input/data.jsonl")
        .body(lines.into_bytes().into())
        .send()
        .await
        .unwrap();
    let job = s.write(
        "job.yaml",
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: aws-requests}}
spec:
  input: {{uri: "s3://{bucket}/input/data.jsonl"}}
  batch: {{size: {ITEMS_PER_TASK}}}
  handler: {{builtin: {{name: identity}}}}
  storage: {{uri: "s3://{bucket}/orch/"}}
  output: {{uri: "s3://{bucket}/out/"}}
  executor: {{local: {{parallelism: 2}}}}
"#
        ),
    );

    moto::recorder(&endpoint, "reset");
    moto::recorder(&endpoint, "start");
    let run = orch(&["run", "--no-progress", job.to_str().unwrap()])
        .output()
        .unwrap();
    moto::recorder(&endpoint, "stop");
    assert_eq!(run.status.code(), Some(0), "{}", common::text(&run));

    let mut counts: BTreeMap<Request, u64> = BTreeMap::new();
    for rec in moto::recording(&endpoint) {
        if let Some(r) = classify(&rec, &bucket, &table) {
            *counts.entry(r).or_default() += 1;
        }
    }
    let total: u64 = counts.values().sum();
    let table_text: String = counts
        .iter()
        .map(|((svc, op, what), n)| format!("  {svc:8} {op:22} {what:50} {n}\n"))
        .collect();
    let count = |svc: &str, op: &str, what: &str| {
        counts
            .iter()
            .filter(|((s, o, w), _)| *s == svc && o == op && w.contains(what))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    eprintln!("{total} requests for {TASKS} tasks:\n{table_text}");

    // The work of a task: its byte range of the input, its result file and `_DONE`, and the
    // merge's read of the result file; nothing for a file of no failed items, for a checkpoint
    // that cannot exist (a first attempt), or for a job.json this machine has read already.
    // (The driver reads the input's first bytes too, to check its format.)
    assert!(
        count("S3", "GetObject (ranged)", "input/") <= TASKS + 1,
        "{table_text}"
    );
    assert_eq!(
        count("S3", "PutObject", "/part.parquet"),
        TASKS,
        "{table_text}"
    );
    assert_eq!(count("S3", "PutObject", "/_DONE"), TASKS, "{table_text}");
    assert_eq!(
        count("S3", "PutObject", "errors.parquet"),
        1,
        "only the output's: {table_text}"
    );
    assert_eq!(count("S3", "GetObject", "/checkpoints/"), 0, "{table_text}");
    // The coordinator checks each result against its committed row, not its `_DONE`; a task
    // that succeeded quietly stores no copy of its log.
    assert_eq!(count("S3", "GetObject", "/_DONE"), 0, "{table_text}");
    assert_eq!(count("S3", "PutObject", "/logs/"), 0, "{table_text}");
    // A task row is written three times (dispatch, claim, commit) and never read on its own:
    // the claim is one conditional write that returns the row.
    assert_eq!(count("DynamoDB", "GetItem", "TASK"), 0, "{table_text}");
    assert!(
        count("DynamoDB", "UpdateItem", "TASK") <= 3 * TASKS + 8,
        "{table_text}"
    );
    // job.json: read once per machine, by each of the first workers that start together.
    assert!(count("S3", "GetObject", "/job.json") <= 2, "{table_text}");
    // The whole run, amortised over its tasks, within the budget.
    let per_task = total as f64 / TASKS as f64;
    assert!(
        per_task <= BUDGET_PER_TASK,
        "{per_task:.2} requests per task, budget {BUDGET_PER_TASK}:\n{table_text}"
    );
}

/// Requests per task of the job above, everything counted (the job's setup and aggregation are
/// spread over its tasks).
const BUDGET_PER_TASK: f64 = 9.5;
