//! Benchmark driver for `bench/partition.sh`: partitions one JSONL file exactly as `orch run`
//! does (docs/job-spec.md, "Storage layout": find line boundaries, write a manifest of byte ranges, copy nothing) and
//! prints what it did and how long it took.
//!
//!     cargo run --release -p orch-core --example partition_bench -- FILE BATCH [MANIFEST]
//!
//! The timing covers opening the file, the `memchr` pass and serializing the manifest (one JSON
//! line per batch, as the driver stores it) to MANIFEST when given. Output is one line:
//! `batches=… items=… bytes=… manifest_bytes=… seconds=…`.

use std::error::Error;
use std::fs::File;
use std::io::Write;
use std::time::Instant;

use orch_core::partition::{DEFAULT_HARD_LIMIT, PartitionOptions, partition_jsonl};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (file, batch, manifest) = match args.as_slice() {
        [file, batch] => (file, batch, None),
        [file, batch, manifest] => (file, batch, Some(manifest)),
        _ => return Err("usage: partition_bench FILE BATCH [MANIFEST]".into()),
    };
    let opts = PartitionOptions {
        batch_size: batch.parse()?,
        // The job spec's defaults (batch.maxBytes 64Mi, batch.maxRecordBytes 100Mi).
        max_bytes: 64 << 20,
        hard_limit: DEFAULT_HARD_LIMIT,
        max_batches: None,
    };

    let start = Instant::now();
    let plan = partition_jsonl(File::open(file)?, file, opts)?;
    let mut manifest_bytes = 0usize;
    if let Some(path) = manifest {
        let mut out = Vec::with_capacity(plan.batches.len() * 96);
        for b in &plan.batches {
            serde_json::to_writer(&mut out, b)?;
            out.push(b'\n');
        }
        manifest_bytes = out.len();
        let mut f = File::create(path)?;
        f.write_all(&out)?;
        f.sync_all()?;
    }
    let seconds = start.elapsed().as_secs_f64();

    println!(
        "batches={} items={} bytes={} manifest_bytes={manifest_bytes} seconds={seconds:.3}",
        plan.batches.len(),
        plan.items,
        plan.bytes,
    );
    Ok(())
}
