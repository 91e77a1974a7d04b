#![allow(clippy::unwrap_used)]
use orch_data::*;
use serde_json::json;
use std::time::Instant;
fn main() {
    let n = 1_000_000u64;
    let rows: Vec<ResultRow> = (0..n)
        .map(|i| ResultRow { item: i, value: json!({"id": i, "score": (i as f64) * 0.5, "label": format!("label-{}", i % 100), "ok": i % 3 == 0, "meta": {"k": i % 7}}) })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let info = write_results_parquet(&dir.path().join("p.parquet"), &rows).unwrap();
    println!("write 1M: {:?} {:?}", t.elapsed(), info.bytes);
    let mut inputs = vec![];
    for f in 0..100u64 {
        let p = dir.path().join(format!("in{f}.parquet"));
        write_results_parquet(
            &p,
            &rows[(f * 10_000) as usize..((f + 1) * 10_000) as usize],
        )
        .unwrap();
        inputs.push(p);
    }
    let t = Instant::now();
    let out = merge_results(&inputs, &dir.path().join("out"), &MergeOptions::default()).unwrap();
    println!(
        "merge 100x10k: {:?} files {} rows {}",
        t.elapsed(),
        out.files.len(),
        out.rows
    );
    let t = Instant::now();
    let out = merge_results(
        &inputs,
        &dir.path().join("out2"),
        &MergeOptions {
            target_file_bytes: 4 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    println!(
        "merge 4MiB target: {:?} files {:?}",
        t.elapsed(),
        out.files
            .iter()
            .map(|(_, i)| (i.rows, i.bytes))
            .collect::<Vec<_>>()
    );
}
