//! Parquet input: planning from the footer (`partition_parquet_ranges`, what `orch run` and the
//! operator do before any task) and a worker reading its rows (`read_parquet_rows`). A broken
//! or hostile file must give an error, never a panic; the rows a worker reads for a batch must
//! be as many as the plan says.
#![no_main]

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use orch_data::{partition_parquet_ranges, read_parquet_rows};

/// The reader takes a path: one file per fuzzing process, rewritten for each input.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("orch-fuzz-{}.parquet", std::process::id()))
    })
}

fuzz_target!(init: {
    // `read_parquet_rows` turns a panic of the parquet crate's page decoding into an error of
    // the file (see its comment); libfuzzer-sys's hook would abort on it before it is caught.
    // A panic that nothing catches still ends the input as a crash.
    let _ = std::panic::take_hook();
}, |data: &[u8]| {
    let name = Path::new("fuzz.parquet");
    let mut read = |range: Range<u64>| -> std::io::Result<Vec<u8>> {
        let start = usize::try_from(range.start).map_err(std::io::Error::other)?;
        let end = usize::try_from(range.end).map_err(std::io::Error::other)?;
        Ok(data.get(start..end).unwrap_or_default().to_vec())
    };
    let plan = partition_parquet_ranges(name, data.len() as u64, &mut read, "fuzz", orch_core::partition::BatchSize::Items(3), Some(64));
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    match plan {
        Ok(plan) => {
            // Rows are decoded for the first batches only: a footer may promise billions.
            for batch in plan.batches.iter().take(4) {
                if let Ok(rows) = read_parquet_rows(path, batch.start, batch.end) {
                    assert_eq!(rows.len() as u64, batch.items, "{batch:?}");
                }
            }
        }
        Err(_) => {
            // The worker's reader on its own, as if the file had changed after planning.
            let _ = read_parquet_rows(path, 0, 2);
        }
    }
});
