//! Parquet as a job *input*: cutting a file into batches and reading one batch's records.
//!
//! Like JSONL and CSV input, Parquet input is never copied: a batch names a slice of
//! the original file, and each worker reads only that slice. For Parquet the natural slice is
//! the row group, the unit the format compresses and stores column by column, so
//! [`partition_parquet`] plans batches from the row-group sizes in the footer alone, without
//! decoding a single value, and [`read_parquet_rows`] decodes just the rows of one batch.
//!
//! **For Parquet, a [`Batch`]'s `start..end` is a range of ROWS, not bytes**: rows
//! `[start, end)` counted from 0 over the whole file, in row-group order. A byte range would be
//! meaningless, since a row's values are spread over one column chunk per column. Consequently
//! `items == end - start` and `first_item == start` (the item ordinal of a row *is* its row
//! index), and [`Batch::bytes`] returns the row count for these batches. Whoever reads a
//! manifest must know the input format to interpret the range.
//!
//! How batches are cut (`batch_size` rows at most per batch):
//! - consecutive row groups that fit together are packed into one batch, so small row groups
//!   (common in files written by streaming writers) do not turn into tiny tasks;
//! - a row group with more than `batch_size` rows gets its own batches, as equal as possible,
//!   rather than `batch_size`-row slices plus a small remainder that would be a straggler task.
//!
//! A batch therefore covers either whole row groups or part of exactly one, and never mixes a
//! partial row group with others: a worker fetches the column chunks of the row groups it
//! touches, and a partial group packed with neighbours would make two workers fetch it.
//!
//! Records are handed to handlers as JSON objects produced by arrow-json's writer, so the
//! Arrow type → JSON mapping is arrow-json's, not ours: column order kept, nulls as explicit
//! `null`, structs as objects, lists as arrays, maps with string keys as objects, dates and
//! timestamps as strings (e.g. `"2024-01-31"`, `"2024-01-31T12:00:00"`; a timestamp with a time
//! zone, named or an offset, in that zone with its offset: `"2024-01-31T07:00:00-05:00"`, and
//! `"2024-01-31T12:00:00Z"` for `UTC` — named zones need arrow's `chrono-tz` feature, which this
//! crate turns on), decimals as numbers,
//! non-finite floats as `null`, and **binary as a lowercase hex string** (`b"\x01\xff"` →
//! `"01ff"`). A column type arrow-json cannot encode (a map with non-string keys, say) fails the
//! read with an [`DataError::Arrow`] error naming the type.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_json::writer::{LineDelimited, Writer as JsonWriter};
use orch_core::model::Batch;
use orch_core::partition::{BatchSize, OverBudget, PartitionPlan};
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::file::FOOTER_SIZE;
use parquet::file::metadata::{
    FooterTail, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};
use sha2::Digest;

use crate::Result;
use crate::error::DataError;

/// The largest footer read to plan a Parquet input. The footer is held in memory whole, and
/// planning runs in a process shared by many jobs (the operator): a writer's footer is a few
/// KiB to a few MiB, so one this large is a broken or hostile file.
pub const MAX_FOOTER_BYTES: u64 = 64 << 20;

/// Plans the batches of the Parquet file at `path`; `source` (its URI) is copied into each
/// batch. See [`partition_parquet_ranges`].
pub fn partition_parquet(
    path: &Path,
    source: &str,
    batch_size: BatchSize,
) -> Result<PartitionPlan> {
    let mut file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| DataError::io("stat", path, e))?
        .len();
    let mut read = |range: Range<u64>| read_file_range(&mut file, range);
    partition_parquet_ranges(path, size, &mut read, source, batch_size, None)
}

fn read_file_range(file: &mut File, range: Range<u64>) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(range.start))?;
    let mut out = Vec::new();
    file.take(range.end.saturating_sub(range.start))
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Plans the batches of a Parquet file of `size` bytes that `read` gives ranges of (a local
/// file, or ranged GETs of an object); `name` names it in errors and `source` (its URI) is
/// copied into each batch. See the module documentation for how row groups become batches
/// and what the batches' ranges mean.
///
/// Only the footer is read: its last 8 bytes, then the footer they announce (at most
/// [`MAX_FOOTER_BYTES`]). `items` of the plan is the total row count and `bytes` the file
/// size. A file without rows has no batches. A `batch_size` of 0 items (refused by the job
/// spec) is treated as 1 rather than trusted. More than `max_batches` batches stop the plan with
/// [`OverBudget::Batches`].
///
/// A footer that does not decode is reported with a digest of the decoder's message, not the
/// message: it may quote the file's column names.
pub fn partition_parquet_ranges(
    name: &Path,
    size: u64,
    read: &mut dyn FnMut(Range<u64>) -> std::io::Result<Vec<u8>>,
    source: &str,
    batch_size: BatchSize,
    max_batches: Option<u64>,
) -> Result<PartitionPlan> {
    let tail_size = FOOTER_SIZE as u64;
    // The magic at the start ("PAR1") and the tail: anything shorter holds no footer.
    if size < tail_size + 4 {
        return Err(DataError::invalid(
            name,
            format!("not a Parquet file: {size} bytes are too few"),
        ));
    }
    let mut read_exact = |range: Range<u64>| -> Result<Vec<u8>> {
        let wanted = range.end - range.start;
        let bytes = read(range).map_err(|e| DataError::io("read", name, e))?;
        if bytes.len() as u64 != wanted {
            return Err(DataError::invalid(
                name,
                format!(
                    "the file changed while it was planned: {size} bytes listed, a read \
                     returned {} of {wanted}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    };
    let tail = read_exact(size - tail_size..size)?;
    let tail: [u8; FOOTER_SIZE] = tail
        .as_slice()
        .try_into()
        .map_err(|_| DataError::invalid(name, "the last bytes of the file cannot be read"))?;
    let footer = FooterTail::try_new(&tail).map_err(|_| {
        DataError::invalid(
            name,
            "not a Parquet file: it does not end with the Parquet magic",
        )
    })?;
    if footer.is_encrypted_footer() {
        return Err(DataError::invalid(
            name,
            "the Parquet footer is encrypted, which orch does not read",
        ));
    }
    let length = footer.metadata_length() as u64;
    if length > size - tail_size {
        return Err(DataError::invalid(
            name,
            format!("the Parquet footer claims {length} bytes, but the file has {size}"),
        ));
    }
    if length > MAX_FOOTER_BYTES {
        return Err(DataError::invalid(
            name,
            format!(
                "the Parquet footer is {length} bytes, more than the {MAX_FOOTER_BYTES} orch \
                 reads to plan a file"
            ),
        ));
    }
    let footer_start = size - tail_size - length;
    let bytes = read_exact(footer_start..size - tail_size)?;
    let metadata = ParquetMetaDataReader::decode_metadata(&bytes).map_err(|e| {
        let digest = hex::encode(&sha2::Sha256::digest(e.to_string().as_bytes())[..4]);
        DataError::invalid(
            name,
            format!(
                "the Parquet footer ({length} bytes at byte {footer_start}) does not decode \
                 (decoder error digest {digest})"
            ),
        )
    })?;
    let groups = row_group_rows(name, &metadata)?;
    let items = groups.iter().sum();
    let rows = batch_size.parquet_rows(items, size);
    let batches = plan_batches(name, source, &groups, rows, max_batches)?;
    Ok(PartitionPlan {
        batches,
        items,
        bytes: size,
    })
}

/// The records of rows `[start, end)` of the Parquet file at `path`, each as one compact JSON
/// object (see the module documentation for the type mapping), in row order.
///
/// Only the row groups overlapping the range are read, and a [`RowSelection`] skips the rows
/// outside it without materialising them (whole pages are skipped when the file has an offset
/// index). A range beyond the end of the file is an error rather than a short read: it means
/// the file changed since it was partitioned, and silently returning fewer rows would lose
/// items.
pub fn read_parquet_rows(path: &Path, start: u64, end: u64) -> Result<Vec<String>> {
    if start > end {
        return Err(DataError::invalid(
            path,
            format!("row range {start}..{end} is reversed"),
        ));
    }
    let file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
    // The offset index (when the writer stored one) lets the reader fetch only the pages that
    // hold selected rows; without it the reader still decodes only what the selection keeps.
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
        .map_err(|e| DataError::parquet(path, e))?;
    let groups = row_group_rows(path, builder.metadata())?;
    let total: u64 = groups.iter().sum();
    if end > total {
        return Err(DataError::invalid(
            path,
            format!(
                "rows {start}..{end} requested but the file has {total} rows \
                 (did it change since it was partitioned?)"
            ),
        ));
    }
    if start == end {
        return Ok(Vec::new());
    }

    // The row groups overlapping the range, and where the first of them starts in the file.
    let mut selected_groups = Vec::new();
    let mut first_group_start = None;
    let mut group_start = 0u64;
    for (index, &rows) in groups.iter().enumerate() {
        let group_end = group_start + rows;
        if group_start < end && start < group_end {
            selected_groups.push(index);
            first_group_start.get_or_insert(group_start);
        }
        group_start = group_end;
    }
    // `end > start` and `end <= total`, so at least one non-empty group overlaps.
    let skip = start - first_group_start.unwrap_or(start);
    let selection = RowSelection::from(vec![
        RowSelector::skip(to_usize(path, skip)?),
        RowSelector::select(to_usize(path, end - start)?),
    ]);
    let reader = builder
        .with_row_groups(selected_groups)
        .with_row_selection(selection)
        .build()
        .map_err(|e| DataError::parquet(path, e))?;

    // The parquet crate asserts rather than fails on some damaged pages (a dictionary-encoded
    // page with no dictionary, for one: found by fuzzing). The input is the user's file, so its
    // decoding is the trust boundary: a panic there is this file's error, not the worker's end.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut json = JsonRows::new(path);
        for batch in reader {
            let batch = batch.map_err(|e| DataError::arrow(path, e))?;
            json.push(&batch)?;
        }
        Ok::<_, DataError>(json.rows)
    }));
    let rows = match decoded {
        Ok(rows) => rows?,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no reason given".into());
            return Err(DataError::invalid(
                path,
                format!("corrupt data pages: the Parquet reader gave up ({why})"),
            ));
        }
    };
    let expected = end - start;
    if rows.len() as u64 != expected {
        // The selection should make this impossible; checking is cheap and an off-by-one
        // here would silently drop or duplicate items.
        return Err(DataError::invalid(
            path,
            format!(
                "read {} rows for range {start}..{end}, expected {expected}",
                rows.len()
            ),
        ));
    }
    Ok(rows)
}

/// Encodes record batches as one JSON text per row with arrow-json's writer.
struct JsonRows<'a> {
    path: &'a Path,
    writer: JsonWriter<Vec<u8>, LineDelimited>,
    rows: Vec<String>,
}

impl<'a> JsonRows<'a> {
    fn new(path: &'a Path) -> Self {
        let writer = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(Vec::new());
        JsonRows {
            path,
            writer,
            rows: Vec::new(),
        }
    }

    fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| DataError::arrow(self.path, e))?;
        // Taking the buffer after each batch keeps at most one batch of JSON text twice in
        // memory. Splitting on '\n' is exact: JSON escapes newlines inside strings, so the
        // writer's row terminators are the only raw newlines.
        let text = String::from_utf8(std::mem::take(self.writer.get_mut())).map_err(|e| {
            DataError::invalid(
                self.path,
                format!("JSON encoder produced invalid UTF-8: {e}"),
            )
        })?;
        self.rows
            .extend(text.split_terminator('\n').map(str::to_owned));
        Ok(())
    }
}

/// Row counts of the file's row groups, from its footer, once the footer is known to be one
/// the reader can use: the parquet crate panics on a column chunk with a negative offset or
/// size, so such a footer (a damaged or hostile file) is refused here, as an error naming it.
fn row_group_rows(path: &Path, metadata: &ParquetMetaData) -> Result<Vec<u64>> {
    // The row groups' counts, not the file-level `num_rows`, are what the reader decodes and
    // what selections are relative to, so they are the single source of truth here.
    metadata
        .row_groups()
        .iter()
        .enumerate()
        .map(|(index, group)| {
            for (column, chunk) in group.columns().iter().enumerate() {
                let start = chunk
                    .dictionary_page_offset()
                    .unwrap_or(chunk.data_page_offset());
                if start < 0 || chunk.compressed_size() < 0 {
                    return Err(DataError::invalid(
                        path,
                        format!(
                            "corrupt footer: row group {index}, column {column} has a negative \
                             offset or size"
                        ),
                    ));
                }
            }
            u64::try_from(group.num_rows()).map_err(|_| {
                DataError::invalid(
                    path,
                    format!("row group {index} has {} rows", group.num_rows()),
                )
            })
        })
        .collect()
}

fn to_usize(path: &Path, n: u64) -> Result<usize> {
    usize::try_from(n)
        .map_err(|_| DataError::invalid(path, format!("{n} rows do not fit in memory")))
}

/// Cuts row groups of the given sizes into batches of at most `batch_size` (≥ 1) rows, and at
/// most `max_batches` batches.
fn plan_batches(
    path: &Path,
    source: &str,
    groups: &[u64],
    batch_size: u64,
    max_batches: Option<u64>,
) -> Result<Vec<Batch>> {
    let mut batches = Vec::new();
    let mut push = |start: u64, end: u64| -> Result<()> {
        if let Some(max) = max_batches
            && batches.len() as u64 >= max
        {
            return Err(OverBudget::Batches { max }.into());
        }
        let id = u32::try_from(batches.len())
            .map_err(|_| DataError::invalid(path, format!("more than {} batches", u32::MAX)))?;
        batches.push(Batch {
            id,
            source: source.to_string(),
            start,
            end,
            items: end - start,
            first_item: start,
        });
        Ok(())
    };

    // The open batch of packed whole row groups starts at `open`; `row` is the next row.
    let mut open = 0u64;
    let mut row = 0u64;
    for &rows in groups {
        if rows > batch_size {
            if row > open {
                push(open, row)?;
            }
            let pieces = rows.div_ceil(batch_size);
            let (base, longer) = (rows / pieces, rows % pieces);
            for piece in 0..pieces {
                let len = base + u64::from(piece < longer);
                push(row, row + len)?;
                row += len;
            }
            open = row;
        } else {
            if row - open + rows > batch_size {
                push(open, row)?;
                open = row;
            }
            row += rows;
        }
    }
    if row > open {
        push(open, row)?;
    }
    Ok(batches)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ranges(groups: &[u64], size: u64) -> Vec<(u64, u64)> {
        plan_batches(Path::new("mem"), "mem", groups, size, None)
            .unwrap()
            .iter()
            .map(|b| (b.start, b.end))
            .collect()
    }

    #[test]
    fn packs_small_groups_and_splits_large_ones_evenly() {
        assert_eq!(
            ranges(&[2, 2, 3, 10, 1], 5),
            vec![(0, 4), (4, 7), (7, 12), (12, 17), (17, 18)]
        );
        // 10 rows at most 7 per batch: 5 + 5, not 7 + 3.
        assert_eq!(ranges(&[10], 7), vec![(0, 5), (5, 10)]);
        assert_eq!(ranges(&[11], 7), vec![(0, 6), (6, 11)]);
        assert_eq!(ranges(&[3, 0, 4], 7), vec![(0, 7)]);
        assert!(ranges(&[], 3).is_empty());
        assert!(ranges(&[0, 0], 3).is_empty());
    }

    #[test]
    fn the_batch_budget_stops_the_plan() {
        let plan = |max| plan_batches(Path::new("mem"), "mem", &[10, 10, 10], 5, Some(max));
        assert_eq!(plan(6).unwrap().len(), 6);
        match plan(5) {
            Err(DataError::OverBudget(OverBudget::Batches { max: 5 })) => {}
            other => panic!("expected the batch budget, got {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn batches_are_contiguous_bounded_and_respect_row_groups(
            groups in proptest::collection::vec(0u64..40, 0..30),
            size in 1u64..25,
        ) {
            let batches = plan_batches(Path::new("mem"), "src", &groups, size, None).unwrap();
            let total: u64 = groups.iter().sum();
            // Row-group boundaries, to check that a batch never straddles a partial group.
            let mut bounds = vec![0u64];
            for g in &groups {
                bounds.push(bounds[bounds.len() - 1] + g);
            }
            let mut next = 0;
            for (i, b) in batches.iter().enumerate() {
                prop_assert_eq!(b.id as usize, i);
                prop_assert_eq!(b.start, next);
                prop_assert!(b.end > b.start && b.end - b.start <= size);
                prop_assert_eq!(b.items, b.end - b.start);
                prop_assert_eq!(b.first_item, b.start);
                prop_assert_eq!(b.source.as_str(), "src");
                let whole = bounds.contains(&b.start) && bounds.contains(&b.end);
                let inside_one = bounds.iter().all(|&x| x <= b.start || x >= b.end);
                prop_assert!(whole || inside_one);
                next = b.end;
            }
            prop_assert_eq!(next, total);
        }
    }
}
