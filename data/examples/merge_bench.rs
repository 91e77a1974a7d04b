//! Benchmark driver for `bench/merge.sh`: the aggregation step of `orch run`, alone.
//!
//!     cargo run --release -p orch-data --example merge_bench -- INDIR OUTDIR
//!
//! Merges every `INDIR/*.parquet` (in name order, as the driver passes task results in task
//! order) into `OUTDIR/part-NNNNN.parquet` with the default options, then every
//! `INDIR/errors/*.parquet` (none is fine) into `OUTDIR/errors.parquet`, exactly the two calls
//! the driver makes before writing `_SUCCESS`. Output is one line:
//! `inputs=… rows=… parts=… out_bytes=… error_rows=… seconds=…`.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use orch_data::{MergeOptions, merge_errors, merge_results};

fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [indir, outdir] = args.as_slice() else {
        return Err("usage: merge_bench INDIR OUTDIR".into());
    };
    let (indir, outdir) = (Path::new(indir), Path::new(outdir));

    let start = Instant::now();
    let inputs = parquet_files(indir)?;
    let errors = parquet_files(&indir.join("errors"))?;
    fs::create_dir_all(outdir)?;
    let merged = merge_results(&inputs, outdir, &MergeOptions::default())?;
    let errs = merge_errors(&errors, &outdir.join("errors.parquet"))?;
    let seconds = start.elapsed().as_secs_f64();

    println!(
        "inputs={} rows={} parts={} out_bytes={} error_rows={} seconds={seconds:.3}",
        inputs.len(),
        merged.rows,
        merged.files.len(),
        merged.files.iter().map(|(_, f)| f.bytes).sum::<u64>(),
        errs.rows,
    );
    Ok(())
}
