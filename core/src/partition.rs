//! Cutting JSONL input into batches without copying it (docs/job-spec.md, "Storage layout").
//!
//! A batch is a byte range of the source: the partitioner only finds line boundaries (with
//! `memchr`) and writes a manifest, and each worker later reads just its range. Item ordinals
//! are the 0-based index of non-blank lines across the whole input, and [`jsonl_items`] is the
//! one definition of "an item" that the partitioner and the worker share.
//!
//! A [`PlanBudget`] bounds what planning one job may cost: the operator plans every tenant's
//! job in one process, so one job's huge (or decompressing) input must fail that job alone
//! instead of filling the operator's disk or memory.

use std::io::Read;

use crate::error::{Error, Result};
use crate::model::Batch;
use crate::quantity::format_bytes;

/// Records over this size are refused unless configured otherwise: a single line this large
/// is almost always a broken export rather than a record.
pub const DEFAULT_HARD_LIMIT: u64 = 100 << 20;

/// How to cut the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOptions {
    /// Items per batch (≥ 1).
    pub batch_size: u64,
    /// Bytes per batch; a batch holds at least one item even when that item is larger.
    pub max_bytes: u64,
    /// Largest record accepted.
    pub hard_limit: u64,
    /// Most batches this input may make (`None`: no limit): partitioning stops with
    /// [`OverBudget::Batches`] when one more would be emitted.
    pub max_batches: Option<u64>,
}

/// How many items a batch holds: `batch.size` as written, or, when the job gives none, sized
/// from the input so that every worker gets a few batches (docs/job-spec.md, "Batch size").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// `batch.size`: at most this many items.
    Items(u64),
    /// About this many bytes of input, and at most [`AUTO_MAX_ITEMS`] items.
    Bytes(u64),
}

/// Batches each worker gets when orch sizes them: more than one, so that a slow batch is
/// evened out by the others, and few, so that starting tasks costs little.
pub const AUTO_BATCHES_PER_WORKER: u64 = 4;
/// The smallest batch orch chooses (unless `batch.maxBytes` is smaller): below it, starting a
/// task costs more than its items.
pub const AUTO_MIN_BYTES: u64 = 64 << 10;
/// The most items of a batch orch sizes, so that one task (and a retry of it) stays bounded.
pub const AUTO_MAX_ITEMS: u64 = 100_000;
/// What compressed input is assumed to grow to when sizing batches, which are cut from the
/// decompressed bytes: a guess, since only the compressed size is known before reading.
pub const ASSUMED_COMPRESSION_RATIO: u64 = 4;

impl BatchSize {
    /// `written` (`batch.size`) when given; else batches of `input_bytes` shared out as
    /// [`AUTO_BATCHES_PER_WORKER`] per worker of `parallelism`, each at least
    /// [`AUTO_MIN_BYTES`] and at most `max_bytes` (`batch.maxBytes`).
    pub fn choose(
        written: Option<u64>,
        input_bytes: u64,
        parallelism: u32,
        max_bytes: u64,
    ) -> Self {
        match written {
            Some(items) => Self::Items(items),
            None => {
                let batches = u64::from(parallelism.max(1)) * AUTO_BATCHES_PER_WORKER;
                let share = input_bytes.div_ceil(batches).max(AUTO_MIN_BYTES);
                Self::Bytes(share.min(max_bytes.max(1)))
            }
        }
    }

    /// The options that cut a text input (JSONL, CSV) this way, under `batch.maxBytes`.
    pub fn text_options(self, max_bytes: u64, hard_limit: u64) -> PartitionOptions {
        let (batch_size, max_bytes) = match self {
            Self::Items(items) => (items, max_bytes),
            Self::Bytes(bytes) => (AUTO_MAX_ITEMS, bytes),
        };
        PartitionOptions {
            batch_size,
            max_bytes,
            hard_limit,
            max_batches: None,
        }
    }

    /// Rows per batch of a Parquet file of `rows` rows in `bytes` bytes (≥ 1).
    pub fn parquet_rows(self, rows: u64, bytes: u64) -> u64 {
        match self {
            Self::Items(items) => items.max(1),
            Self::Bytes(share) => {
                let rows =
                    (u128::from(rows) * u128::from(share)).div_ceil(u128::from(bytes.max(1)));
                u64::try_from(rows)
                    .unwrap_or(u64::MAX)
                    .clamp(1, AUTO_MAX_ITEMS)
            }
        }
    }
}

/// What planning one job may cost; `None` is no limit, and [`Default`] has none (`orch run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanBudget {
    /// The input's size as listed (the sum over its files), checked before any byte is read.
    pub max_input_bytes: Option<u64>,
    /// Bytes that compressed input files decompress to, all files together; counted while
    /// decompressing, which stops as soon as the limit is passed.
    pub max_decompressed_bytes: Option<u64>,
    /// Batches (tasks) of the whole input, counted as they are cut.
    pub max_batches: Option<u64>,
}

/// A limit of a job's [`PlanBudget`] that its input passes. The message names the limit and
/// the field it is about, never the input's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error(
        "the input is {}, more than {}, the limit of this job's budget (spec.input.uri)",
        format_bytes(*.total),
        format_bytes(*.max)
    )]
    InputBytes { total: u64, max: u64 },
    #[error(
        "the input decompresses to more than {}, the limit of this job's budget (spec.input.uri)",
        format_bytes(*.max)
    )]
    DecompressedBytes { max: u64 },
    #[error(
        "the input makes more than {max} batches, the limit of this job's budget \
         (spec.input.uri, spec.batch)"
    )]
    Batches { max: u64 },
}

/// The result of partitioning one input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionPlan {
    pub batches: Vec<Batch>,
    pub items: u64,
    pub bytes: u64,
}

impl PartitionPlan {
    /// The batch with the most bytes, for `--dry-run` summaries.
    pub fn largest_batch(&self) -> Option<&Batch> {
        self.batches.iter().max_by_key(|b| b.bytes())
    }
}

fn is_blank(segment: &[u8]) -> bool {
    segment.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// The items of a JSONL byte range: non-blank lines, without their line ending.
pub fn jsonl_items(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let (line, next) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !is_blank(line) {
                return Some(line);
            }
        }
    })
}

/// Streams `reader` once and returns the batches of `source` (its URI, copied into each batch).
pub fn partition_jsonl<R: Read>(
    mut reader: R,
    source: &str,
    opts: PartitionOptions,
) -> Result<PartitionPlan> {
    let mut cut = Cutter::new(source, opts);
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(source, e)),
        };
        cut.feed(&buf[..n])?;
    }
    cut.finish()
}

/// Turns a stream of record ends into batches. Shared by every byte-range format (JSONL here,
/// CSV in `csv_input`), so that the cutting rules — `batch.size`, `batch.maxBytes`, a lone
/// large record in a batch of its own, the hard limit — are the same for all of them.
pub(crate) struct Batcher<'a> {
    source: &'a str,
    opts: PartitionOptions,
    plan: PartitionPlan,
    record_start: u64,
    batch_start: u64,
    batch_items: u64,
}

impl<'a> Batcher<'a> {
    /// Records start at `start` (after a CSV header, say).
    pub(crate) fn new(source: &'a str, opts: PartitionOptions, start: u64) -> Self {
        Batcher {
            source,
            opts,
            plan: PartitionPlan::default(),
            record_start: start,
            batch_start: start,
            batch_items: 0,
        }
    }

    /// Called at the end of each record or blank line (`end` is exclusive, after the
    /// terminator); blank lines belong to a batch but are not items.
    pub(crate) fn end_record(&mut self, end: u64, is_record: bool) -> Result<()> {
        if is_record {
            let len = end - self.record_start;
            if len > self.opts.hard_limit {
                return Err(Error::RecordTooLarge {
                    ordinal: self.plan.items,
                    offset: self.record_start,
                    bytes: len,
                    limit: self.opts.hard_limit,
                });
            }
            let full = self.batch_items >= self.opts.batch_size
                || (self.batch_items > 0 && end - self.batch_start > self.opts.max_bytes);
            if full {
                self.close_batch(self.record_start)?;
            }
            self.batch_items += 1;
            self.plan.items += 1;
        }
        self.record_start = end;
        Ok(())
    }

    fn close_batch(&mut self, end: u64) -> Result<()> {
        if let Some(max) = self.opts.max_batches
            && self.plan.batches.len() as u64 >= max
        {
            return Err(OverBudget::Batches { max }.into());
        }
        let id = self.plan.batches.len() as u32;
        self.plan.batches.push(Batch {
            id,
            source: self.source.to_string(),
            start: self.batch_start,
            end,
            items: self.batch_items,
            first_item: self.plan.items - self.batch_items,
        });
        self.batch_start = end;
        self.batch_items = 0;
        Ok(())
    }

    /// The plan once the input ends at `offset` (the last record already ended).
    pub(crate) fn finish(mut self, offset: u64) -> Result<PartitionPlan> {
        if self.batch_items > 0 {
            self.close_batch(offset)?;
        } else if let Some(last) = self.plan.batches.last_mut() {
            // Trailing blank lines belong to the last batch, so the ranges cover the file.
            last.end = offset;
        }
        self.plan.bytes = offset;
        Ok(self.plan)
    }
}

/// JSONL: records are lines; a line of only whitespace is blank.
struct Cutter<'a> {
    batcher: Batcher<'a>,
    /// Absolute offset of the next byte to be fed.
    offset: u64,
    line_has_content: bool,
}

impl<'a> Cutter<'a> {
    fn new(source: &'a str, opts: PartitionOptions) -> Self {
        Cutter {
            batcher: Batcher::new(source, opts, 0),
            offset: 0,
            line_has_content: false,
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        let mut pos = 0usize;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            if !self.line_has_content && !is_blank(&chunk[pos..nl]) {
                self.line_has_content = true;
            }
            let line_end = self.offset + nl as u64 + 1;
            self.batcher.end_record(line_end, self.line_has_content)?;
            self.line_has_content = false;
            pos = nl + 1;
        }
        if !self.line_has_content && !is_blank(&chunk[pos..]) {
            self.line_has_content = true;
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<PartitionPlan> {
        if self.line_has_content {
            self.batcher.end_record(self.offset, true)?;
        }
        self.batcher.finish(self.offset)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts(size: u64, max_bytes: u64) -> PartitionOptions {
        PartitionOptions {
            batch_size: size,
            max_bytes,
            hard_limit: DEFAULT_HARD_LIMIT,
            max_batches: None,
        }
    }

    fn plan(data: &[u8], o: PartitionOptions) -> PartitionPlan {
        partition_jsonl(data, "mem", o).unwrap()
    }

    #[test]
    fn cuts_by_count() {
        let data = b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n";
        let p = plan(data, opts(2, 1 << 20));
        assert_eq!(p.items, 3);
        assert_eq!(p.batches.len(), 2);
        assert_eq!((p.batches[0].start, p.batches[0].end), (0, 16));
        assert_eq!(p.batches[1].first_item, 2);
        assert_eq!(p.batches[1].end, data.len() as u64);
    }

    #[test]
    fn blank_lines_crlf_and_no_trailing_newline() {
        let data = b"\n{\"a\":1}\r\n\r\n  \n{\"a\":2}";
        let p = plan(data, opts(1, 1 << 20));
        assert_eq!(p.items, 2);
        let items: Vec<&[u8]> = p
            .batches
            .iter()
            .flat_map(|b| jsonl_items(&data[b.start as usize..b.end as usize]))
            .collect();
        assert_eq!(items, vec![&b"{\"a\":1}"[..], &b"{\"a\":2}"[..]]);
    }

    #[test]
    fn unsized_batches_share_the_input_between_the_workers() {
        // 8 MiB over 4 workers: 16 batches of 512 KiB.
        let size = BatchSize::choose(None, 8 << 20, 4, 64 << 20);
        assert_eq!(size, BatchSize::Bytes(512 << 10));
        let o = size.text_options(64 << 20, DEFAULT_HARD_LIMIT);
        assert_eq!((o.batch_size, o.max_bytes), (AUTO_MAX_ITEMS, 512 << 10));
        // Small input is not cut below the floor; large input not above batch.maxBytes.
        assert_eq!(
            BatchSize::choose(None, 1000, 64, 64 << 20),
            BatchSize::Bytes(AUTO_MIN_BYTES)
        );
        assert_eq!(
            BatchSize::choose(None, 1 << 40, 2, 64 << 20),
            BatchSize::Bytes(64 << 20)
        );
        // A maxBytes under the floor wins; a written size is kept as written.
        assert_eq!(
            BatchSize::choose(None, 1 << 30, 1, 1000),
            BatchSize::Bytes(1000)
        );
        assert_eq!(
            BatchSize::choose(Some(7), 1 << 30, 1, 1000),
            BatchSize::Items(7)
        );
        let o = BatchSize::Items(7).text_options(1000, 5);
        assert_eq!((o.batch_size, o.max_bytes, o.hard_limit), (7, 1000, 5));
    }

    #[test]
    fn parquet_rows_follow_the_files_bytes_per_row() {
        // 1 MiB shares of a 10 MiB file of 1M rows: about 100k rows each.
        assert_eq!(
            BatchSize::Bytes(1 << 20).parquet_rows(1_000_000, 10 << 20),
            100_000
        );
        assert_eq!(
            BatchSize::Bytes(1 << 19).parquet_rows(1_000_000, 10 << 20),
            50_000
        );
        // Never 0, never over the cap, whatever the file claims.
        assert_eq!(BatchSize::Bytes(1).parquet_rows(1, u64::MAX), 1);
        assert_eq!(
            BatchSize::Bytes(u64::MAX).parquet_rows(u64::MAX, 1),
            AUTO_MAX_ITEMS
        );
        assert_eq!(BatchSize::Items(0).parquet_rows(10, 10), 1);
        assert_eq!(BatchSize::Items(3).parquet_rows(10, 10), 3);
    }

    #[test]
    fn max_bytes_splits_and_a_huge_record_gets_its_own_batch() {
        let big = format!("{{\"x\":\"{}\"}}\n", "y".repeat(100));
        let data = format!("{{}}\n{big}{{}}\n");
        let p = plan(data.as_bytes(), opts(100, 20));
        assert_eq!(p.batches.len(), 3);
        assert_eq!(p.batches[1].items, 1);
        assert!(p.batches[1].bytes() > 20);
    }

    #[test]
    fn record_over_the_hard_limit_names_its_ordinal() {
        let data = b"{}\n{\"long\":\"xxxxxxxxxxxxxxxx\"}\n";
        let o = PartitionOptions {
            hard_limit: 10,
            ..opts(10, 100)
        };
        match partition_jsonl(&data[..], "mem", o) {
            Err(Error::RecordTooLarge { ordinal, .. }) => assert_eq!(ordinal, 1),
            other => panic!("expected RecordTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn the_batch_budget_stops_the_cut_at_the_first_batch_too_many() {
        let data = b"{}\n{}\n{}\n{}\n{}\n";
        let o = PartitionOptions {
            max_batches: Some(2),
            ..opts(2, 1 << 20)
        };
        // 5 items in batches of 2 make 3 batches.
        match partition_jsonl(&data[..], "mem", o) {
            Err(Error::OverBudget(OverBudget::Batches { max: 2 })) => {}
            other => panic!("expected the batch budget, got {other:?}"),
        }
        let o = PartitionOptions {
            max_batches: Some(3),
            ..o
        };
        assert_eq!(
            partition_jsonl(&data[..], "mem", o).unwrap().batches.len(),
            3
        );
        let message = OverBudget::Batches { max: 2 }.to_string();
        assert!(message.contains("more than 2 batches"), "{message}");
    }

    #[test]
    fn budget_messages_name_the_limit_in_readable_units() {
        let message = OverBudget::DecompressedBytes { max: 2 << 30 }.to_string();
        assert_eq!(
            message,
            "the input decompresses to more than 2 GiB, the limit of this job's budget \
             (spec.input.uri)"
        );
        let message = OverBudget::InputBytes {
            total: 3 << 30,
            max: 1 << 30,
        }
        .to_string();
        assert!(
            message.starts_with("the input is 3 GiB, more than 1 GiB"),
            "{message}"
        );
    }

    #[test]
    fn empty_input_has_no_batches() {
        assert_eq!(plan(b"", opts(5, 100)).batches.len(), 0);
        assert_eq!(plan(b"\n\n", opts(5, 100)).items, 0);
    }

    /// A reader that hands out tiny chunks, to exercise lines split across reads.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(self.0.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    proptest! {
        #[test]
        fn batches_cover_the_input_and_every_item_once(
            lines in proptest::collection::vec("[ a-z{}\":0-9]{0,30}", 0..60),
            crlf in any::<bool>(),
            trailing in any::<bool>(),
            size in 1u64..7,
            max_bytes in 1u64..80,
            chunk in 1usize..17,
        ) {
            let sep = if crlf { "\r\n" } else { "\n" };
            let mut text = lines.join(sep);
            if trailing { text.push_str(sep); }
            let data = text.as_bytes();
            let p = partition_jsonl(Trickle(data, chunk), "mem", opts(size, max_bytes)).unwrap();
            let expected: Vec<&[u8]> = jsonl_items(data).collect();
            prop_assert_eq!(p.items as usize, expected.len());
            let mut next_start = 0;
            let mut got = Vec::new();
            for b in &p.batches {
                prop_assert_eq!(b.start, next_start);
                prop_assert!(b.items >= 1 && b.items <= size);
                prop_assert_eq!(b.first_item as usize, got.len());
                let items: Vec<&[u8]> = jsonl_items(&data[b.start as usize..b.end as usize]).collect();
                prop_assert_eq!(items.len() as u64, b.items);
                if b.items > 1 {
                    // Only a single-item batch may exceed max_bytes (a skewed record).
                    let content_end = b.start + items.iter().map(|i| i.len() as u64).sum::<u64>();
                    prop_assert!(content_end - b.start <= max_bytes + (b.end - b.start));
                }
                got.extend(items);
                next_start = b.end;
            }
            if !p.batches.is_empty() { prop_assert_eq!(next_start, data.len() as u64); }
            prop_assert_eq!(got, expected);
        }
    }
}
