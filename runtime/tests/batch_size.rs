//! Batches of a job that gives no `batch.size`: the input is shared out as about four batches
//! per worker of the executor, for JSONL (cut by bytes) and Parquet (rows from the file's bytes
//! per row), and a written size is kept as written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use orch_core::partition::{AUTO_BATCHES_PER_WORKER, PartitionPlan, PlanBudget};
use orch_core::spec::JobSpec;
use orch_embedded::EmbeddedPlatform;
use orch_runtime::input;

/// A job over `uri` with `batch` and `executor` as given.
fn spec(
    uri: &Path,
    format: &str,
    batch: serde_json::Value,
    executor: serde_json::Value,
) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "input": {"uri": uri.display().to_string(), "format": format},
        "batch": batch,
        "handler": {"builtin": {"name": "identity"}},
        "executor": executor,
    }))
    .unwrap()
}

/// The plan of a dry run (nothing stored).
async fn plan(spec: &JobSpec, store: &Path) -> PartitionPlan {
    let platform = EmbeddedPlatform::open(&store.display().to_string()).unwrap();
    let sources = input::sources(spec, platform.backends.locations.as_ref())
        .await
        .unwrap();
    input::plan(spec, &sources, None, &PlanBudget::default())
        .await
        .unwrap()
        .batches
}

/// `n` JSONL records of 100 bytes each.
fn records(n: u64) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{{\"id\": {i:>10}, \"pad\": \"{}\"}}\n", "x".repeat(70)))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsized_jsonl_makes_four_batches_per_worker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in.jsonl");
    // 40,000 records of 100 bytes: 4 MB, far above the smallest batch orch cuts.
    std::fs::write(&data, records(40_000)).unwrap();
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 4_000_000);
    let store = dir.path().join("store");

    for (executor, workers) in [
        (serde_json::json!({"local": {"parallelism": 3}}), 3),
        (serde_json::json!({"slurm": {"maxRunning": 2}}), 2),
        (serde_json::json!({"kubernetes": {"parallelism": 5}}), 5),
    ] {
        let p = plan(
            &spec(&data, "jsonl", serde_json::json!({}), executor),
            &store,
        )
        .await;
        let wanted = workers * AUTO_BATCHES_PER_WORKER as usize;
        // Cut at line ends, so the last batch may be a sliver of the share.
        assert!(
            p.batches.len() == wanted || p.batches.len() == wanted + 1,
            "{workers} workers: {} batches",
            p.batches.len()
        );
        assert_eq!(p.items, 40_000);
        assert_eq!(p.batches.iter().map(|b| b.items).sum::<u64>(), 40_000);
        let share = 4_000_000u64.div_ceil(wanted as u64);
        assert!(p.batches.iter().all(|b| b.bytes() <= share), "{workers}");
    }

    // A written size and maxBytes still decide.
    let written = spec(
        &data,
        "jsonl",
        serde_json::json!({"size": 1000}),
        serde_json::json!({"local": {"parallelism": 3}}),
    );
    assert_eq!(plan(&written, &store).await.batches.len(), 40);
    let capped = spec(
        &data,
        "jsonl",
        serde_json::json!({"maxBytes": "100Ki"}),
        serde_json::json!({"local": {"parallelism": 1}}),
    );
    let p = plan(&capped, &store).await;
    assert_eq!(p.batches.len(), 4_000_000usize.div_ceil(102_400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsized_parquet_rows_follow_the_files_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in.parquet");
    let rows: Vec<orch_data::ResultRow> = (0..200_000)
        .map(|i| orch_data::ResultRow {
            item: i,
            value: serde_json::json!({"n": i, "text": format!("row {i} of the input")}),
        })
        .collect();
    orch_data::write_results_parquet(&data, &rows).unwrap();
    let bytes = std::fs::metadata(&data).unwrap().len();
    // The shares of two workers must each be above the smallest batch for the count to show.
    assert!(bytes > 8 * (64 << 10), "{bytes}");
    let store = dir.path().join("store");

    let p = plan(
        &spec(
            &data,
            "parquet",
            serde_json::json!({}),
            serde_json::json!({"local": {"parallelism": 2}}),
        ),
        &store,
    )
    .await;
    let wanted = 2 * AUTO_BATCHES_PER_WORKER as usize;
    assert!(
        (wanted..=wanted + 1).contains(&p.batches.len()),
        "{} batches",
        p.batches.len()
    );
    assert_eq!(p.items, 200_000);
    assert_eq!(p.batches.iter().map(|b| b.items).sum::<u64>(), 200_000);
}
