//! The input of a job on S3 (moto over HTTP, the real SDK): which objects an `s3://` input URI
//! names — one object, the objects right under a prefix (hidden names skipped), or the keys
//! matching a glob — and how they are partitioned: batches keep the object's URI, except for
//! compressed objects, which are decompressed once into the job's storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use orch_testkit::moto;

use std::io::Write;

use orch_aws::config::{self, AwsSettings};
use orch_aws::{S3Locations, open_backends_with};
use orch_core::spec::JobSpec;
use orch_runtime::input::{self, PlanTarget, Source};

fn spec(uri: &str) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "input": {"uri": uri, "format": "jsonl"},
        "batch": {"size": 4},
        "handler": {"builtin": {"name": "identity"}}
    }))
    .unwrap()
}

fn lines(from: u64, n: u64) -> Vec<u8> {
    (from..from + n)
        .map(|i| format!("{{\"id\": {i}}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn uris(sources: &[Source]) -> Vec<String> {
    sources
        .iter()
        .map(|s| match s {
            Source::Remote { uri, .. } => uri.clone(),
            Source::Local(p) => panic!("a local source {}", p.display()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_prefixes_and_globs_are_listed_and_partitioned() {
    if !orch_testkit::components::moto() {
        return;
    }
    let sdk = moto::sdk_config().await;
    let client = config::s3_client(&sdk, &AwsSettings::default());
    let bucket = moto::unique("orch-input");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&lines(20, 6)).unwrap();
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("data/a.jsonl", lines(0, 10)),
        ("data/b.jsonl.gz", gz.finish().unwrap()),
        ("data/.hidden", b"not input\n".to_vec()),
        ("data/sub/c.jsonl", lines(100, 3)),
        ("data.jsonl.bak", b"a sibling sharing the prefix\n".to_vec()),
    ];
    for (key, body) in objects {
        client
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
    let locations = S3Locations::new(client.clone());
    let at = |key: &str| format!("s3://{bucket}/{key}");

    let one = input::sources(&spec(&at("data/a.jsonl")), &locations)
        .await
        .unwrap();
    assert_eq!(uris(&one), [at("data/a.jsonl")]);
    // A prefix, with or without its slash: the objects right under it, hidden ones skipped.
    for uri in [at("data"), at("data/")] {
        let dir = input::sources(&spec(&uri), &locations).await.unwrap();
        assert_eq!(
            uris(&dir),
            [at("data/a.jsonl"), at("data/b.jsonl.gz")],
            "{uri}"
        );
    }
    let glob = input::sources(&spec(&at("data/*/*.jsonl")), &locations)
        .await
        .unwrap();
    assert_eq!(uris(&glob), [at("data/sub/c.jsonl")]);
    let none = input::sources(&spec(&at("nothing/here")), &locations).await;
    let message = none.err().unwrap().to_string();
    assert!(message.contains("matches no object"), "{message}");

    // The fingerprint changes with the objects' sizes.
    let before = input::fingerprint(&one).unwrap();
    client
        .put_object()
        .bucket(&bucket)
        .key("data/a.jsonl")
        .body(lines(0, 11).into())
        .send()
        .await
        .unwrap();
    let again = input::sources(&spec(&at("data/a.jsonl")), &locations)
        .await
        .unwrap();
    assert_ne!(input::fingerprint(&again).unwrap(), before);

    // Partitioning the prefix: 11 + 6 items in batches of 4; the compressed object is
    // decompressed into the storage and its batches point there.
    let settings = AwsSettings {
        table: "unused-by-planning".into(),
        ..AwsSettings::default()
    };
    let scratch = tempfile::tempdir().unwrap();
    let storage = at("orch/");
    let backends =
        open_backends_with(&sdk, &settings, &storage, scratch.path().to_path_buf()).unwrap();
    let dir = input::sources(&spec(&at("data/")), &locations)
        .await
        .unwrap();
    let plan = input::plan(
        &spec(&at("data/")),
        &dir,
        scratch.path(),
        Some(PlanTarget {
            backends: &backends,
            storage_uri: &storage,
            job: "job-1",
        }),
    )
    .await
    .unwrap();
    let batches = &plan.batches;
    assert_eq!(batches.items, 17);
    let sources: Vec<(&str, u64, u64)> = batches
        .batches
        .iter()
        .map(|b| (b.source.as_str(), b.first_item, b.items))
        .collect();
    let decompressed = at("orch/jobs/job-1/input/00001-b.jsonl");
    assert_eq!(
        sources,
        [
            (at("data/a.jsonl").as_str(), 0, 4),
            (at("data/a.jsonl").as_str(), 4, 4),
            (at("data/a.jsonl").as_str(), 8, 3),
            (decompressed.as_str(), 11, 4),
            (decompressed.as_str(), 15, 2),
        ]
    );
    let stored = moto::get_object(&client, &bucket, "orch/jobs/job-1/input/00001-b.jsonl")
        .await
        .expect("the decompressed input");
    assert_eq!(stored, lines(20, 6));
    // Downloaded copies are gone once planned.
    let left: Vec<_> = std::fs::read_dir(scratch.path().join("input"))
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
