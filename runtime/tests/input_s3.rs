//! The input of a job on S3 (moto over HTTP, the real SDK): which objects an `s3://` input URI
//! names — one object, the objects right under a prefix (hidden names skipped), or the keys
//! matching a glob — and how they are partitioned, by ranged reads: batches keep the object's
//! URI, except for compressed objects, which are decompressed once into the job's storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use orch_testkit::moto;

use std::io::Write;

use orch_aws::config::{self, AwsSettings};
use orch_aws::{S3Locations, open_backends_with};
use orch_core::partition::PlanBudget;
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
        Some(PlanTarget {
            backends: &backends,
            storage_uri: &storage,
            job: "job-1",
        }),
        &PlanBudget::default(),
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
    // Objects are read by range and the decompressed one is streamed to the storage: nothing
    // of the input ever lands in the scratch directory.
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

fn spec_as(uri: &str, format: &str, size: u64) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "input": {"uri": uri, "format": format},
        "batch": {"size": size},
        "handler": {"builtin": {"name": "identity"}}
    }))
    .unwrap()
}

/// Objects larger than a ranged read (many chunks), a Parquet object (its footer by range) and
/// a compressed object over the job's budget: planned with nothing written to the scratch
/// directory, and the refused one leaves no object and no open upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_parquet_objects_are_planned_by_ranges_within_the_budget() {
    if !orch_testkit::components::moto() {
        return;
    }
    let sdk = moto::sdk_config().await;
    let client = config::s3_client(&sdk, &AwsSettings::default());
    let bucket = moto::unique("orch-ranges");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let at = |key: &str| format!("s3://{bucket}/{key}");
    let put = |key: &'static str, body: Vec<u8>| {
        let client = client.clone();
        let bucket = bucket.clone();
        async move {
            client
                .put_object()
                .bucket(&bucket)
                .key(key)
                .body(body.into())
                .send()
                .await
                .unwrap();
        }
    };
    // Over 6 MiB: read in chunks of 64 KiB doubling up to 4 MiB.
    let big = lines(0, 500_000);
    assert!(big.len() > 6 << 20);
    put("in/big.jsonl", big.clone()).await;
    let parquet_dir = tempfile::tempdir().unwrap();
    let parquet = parquet_dir.path().join("t.parquet");
    let rows: Vec<orch_data::ResultRow> = (0..25)
        .map(|i| orch_data::ResultRow {
            item: i,
            value: serde_json::json!({"n": i}),
        })
        .collect();
    orch_data::write_results_parquet(&parquet, &rows).unwrap();
    put("in/t.parquet", std::fs::read(&parquet).unwrap()).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&lines(0, 20_000)).unwrap();
    put("in/bomb.jsonl.gz", gz.finish().unwrap()).await;

    let locations = S3Locations::new(client.clone());
    let settings = AwsSettings {
        table: "unused-by-planning".into(),
        ..AwsSettings::default()
    };
    let scratch = tempfile::tempdir().unwrap();
    let storage = at("orch/");
    let backends =
        open_backends_with(&sdk, &settings, &storage, scratch.path().to_path_buf()).unwrap();
    let plan = |spec: JobSpec, budget: PlanBudget| {
        let locations = &locations;
        let backends = &backends;
        let storage = &storage;
        async move {
            let sources = input::sources(&spec, locations).await?;
            input::plan(
                &spec,
                &sources,
                Some(PlanTarget {
                    backends,
                    storage_uri: storage,
                    job: "job-2",
                }),
                &budget,
            )
            .await
        }
    };

    let planned = plan(
        spec_as(&at("in/big.jsonl"), "jsonl", 100_000),
        PlanBudget::default(),
    )
    .await
    .unwrap();
    assert_eq!(planned.batches.items, 500_000);
    assert_eq!(planned.batches.bytes, big.len() as u64);
    let ends: Vec<u64> = planned.batches.batches.iter().map(|b| b.end).collect();
    assert_eq!(ends.last(), Some(&(big.len() as u64)));
    assert_eq!(ends.len(), 5);
    assert!(
        planned
            .batches
            .batches
            .iter()
            .all(|b| b.source == at("in/big.jsonl"))
    );

    let planned = plan(
        spec_as(&at("in/t.parquet"), "parquet", 10),
        PlanBudget::default(),
    )
    .await
    .unwrap();
    assert_eq!(planned.batches.items, 25);
    assert_eq!(planned.batches.batches.len(), 3);

    let budget = PlanBudget {
        max_decompressed_bytes: Some(10_000),
        ..PlanBudget::default()
    };
    let refused = plan(spec_as(&at("in/bomb.jsonl.gz"), "jsonl", 100), budget).await;
    match refused {
        Err(orch_runtime::Error::Invalid(message)) => {
            assert!(message.contains("decompresses to more than"), "{message}")
        }
        other => panic!("expected the budget to refuse the plan, got {other:?}"),
    }
    let stored = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("orch/jobs/job-2/")
        .send()
        .await
        .unwrap();
    assert!(stored.contents().is_empty(), "{:?}", stored.contents());
    let uploads = client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty());

    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing of the input in scratch: {left:?}");
}
