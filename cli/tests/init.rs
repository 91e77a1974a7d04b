//! `orch init` end to end: the real `orch` binary against a moto server started by the test
//! (the harness of `orch_testkit::moto`), configured only through the environment a developer would set. What it created
//! is checked with the SDK, independently of orch's own code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orch_testkit::moto;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use orch_aws::config::{self, AwsSettings};

const SECRET: &str = "init-test-secret-Zq81x";

/// `orch init` with a clean environment: only the variables given here, so nothing of the
/// machine's AWS setup (profiles, a real region, instance metadata) takes part.
fn orch_init(endpoint: &str, table: &str, queue: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orch"))
        .arg("init")
        .args(args)
        .env_clear()
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ORCH_DYNAMODB_TABLE", table)
        .env("ORCH_SQS_QUEUE", queue)
        .output()
        .expect("orch runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn key_schema(keys: &[aws_sdk_dynamodb::types::KeySchemaElement]) -> Vec<(String, &'static str)> {
    keys.iter()
        .map(|k| {
            let kind = match k.key_type() {
                aws_sdk_dynamodb::types::KeyType::Hash => "HASH",
                aws_sdk_dynamodb::types::KeyType::Range => "RANGE",
                other => panic!("unexpected key type {other:?}"),
            };
            (k.attribute_name().to_string(), kind)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_creates_the_table_the_queues_and_the_bucket_and_runs_again() {
    if !orch_testkit::components::moto() {
        return;
    }
    let endpoint = moto::moto().endpoint.clone();
    let table = moto::unique("orch-init-table");
    let queue = moto::unique("orch-init-q");
    let bucket = moto::unique("orch-init-bucket");

    let first = orch_init(&endpoint, &table, &queue, &["--bucket", &bucket]);
    let (stdout, stderr) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{stdout}\n{stderr}");
    for what in [
        format!("DynamoDB table {table}"),
        format!("SQS queue {queue}"),
        format!("S3 bucket {bucket}"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&what) && l.ends_with(": created")),
            "{what} created:\n{stdout}"
        );
    }

    let sdk = moto::sdk_config().await;
    // The table, with the keys and indexes of docs/aws.md.
    let described = config::dynamodb_client(&sdk)
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let t = described.table().unwrap();
    let pk_sk = |h: &str, r: &str| vec![(h.to_string(), "HASH"), (r.to_string(), "RANGE")];
    assert_eq!(key_schema(t.key_schema()), pk_sk("pk", "sk"));
    let index = |name: &str| {
        let i = t
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_name() == Some(name))
            .unwrap_or_else(|| panic!("index {name} exists"));
        (
            key_schema(i.key_schema()),
            i.projection()
                .and_then(|p| p.projection_type())
                .map(|p| p.as_str().to_string()),
        )
    };
    assert_eq!(
        index("by-state"),
        (pk_sk("gsi1pk", "gsi1sk"), Some("ALL".to_string()))
    );
    assert_eq!(
        index("jobs"),
        (pk_sk("gsi2pk", "gsi2sk"), Some("KEYS_ONLY".to_string()))
    );

    // Both queues, the main one redriving to the dead-letter queue after 5 receives.
    let sqs = config::sqs_client(&sdk);
    let dlq_url = sqs
        .get_queue_url()
        .queue_name(format!("{queue}-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let url = sqs
        .get_queue_url()
        .queue_name(&queue)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let redrive: serde_json::Value = serde_json::from_str(
        &attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy],
    )
    .unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    // SQS answers the count as a string, moto as given: compare the number either way.
    let count = &redrive["maxReceiveCount"];
    assert!(
        count == 5 || count == "5",
        "maxReceiveCount is {count}, not 5"
    );

    // The bucket.
    config::s3_client(&sdk, &AwsSettings::default())
        .head_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();

    // Again: nothing to create, success.
    let second = orch_init(&endpoint, &table, &queue, &["--bucket", &bucket]);
    let (stdout, stderr) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.ends_with(": already exists"))
            .count(),
        3,
        "{stdout}"
    );
    assert!(!stdout.contains(": created"), "{stdout}");
    assert!(stdout.contains("everything already exists"), "{stdout}");
}

#[test]
fn init_against_a_closed_port_fails_quickly_naming_the_endpoint_and_no_secret() {
    if !orch_testkit::components::moto() {
        return;
    }
    // A port that was free a moment ago: nothing listens there, connections are refused.
    let port = moto::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = orch_init(
        &endpoint,
        "orch",
        "orch-retries",
        &["--bucket", "orch-init-x"],
    );
    let elapsed = started.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?} to give up"
    );
    assert!(stderr.contains("DynamoDB"), "names the service: {stderr}");
    assert!(stderr.contains(&endpoint), "names the endpoint: {stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the secret key leaked:\n{stdout}\n{stderr}"
    );
}

#[test]
fn init_refuses_an_invalid_bucket_name_before_any_request() {
    if !orch_testkit::components::moto() {
        return;
    }
    let out = orch_init(
        "http://127.0.0.1:9",
        "orch",
        "orch-retries",
        &["--bucket", "Not_A_Bucket"],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Not_A_Bucket"), "{stderr}");
}

#[test]
fn help_says_it_is_for_development_and_points_production_to_infra() {
    if !orch_testkit::components::moto() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["init", "--help"])
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("development and tests"), "{stdout}");
    assert!(stdout.contains("infra/"), "{stdout}");
}
