//! Cutting CSV input into batches without copying it (docs/job-spec.md, "Storage layout"), like [`crate::partition`]
//! does for JSONL.
//!
//! A batch is a byte range of the source, so every cut must fall on a record boundary. In CSV a
//! newline is not always one: a quoted field may hold `\n` or `\r\n`, and a quote is only
//! special at the start of a field (`"a""b"` is one field, `a"b` is a literal quote). Cutting at
//! raw newlines would split such a record across two workers and both would decode garbage, or
//! silently shift every later item's ordinal. The scanner here therefore follows the same
//! grammar as the `csv` crate that decodes the ranges ([`csv_items`]), so that the records the
//! partitioner counts are exactly the records a worker reads, whatever the cut points:
//!
//! - a quote at the start of a field opens a quoted field, inside which a doubled quote is a
//!   literal quote and anything else (delimiters, `\r`, `\n`) is data;
//! - outside quotes, `\n`, `\r` and `\r\n` each end a record (the `csv` crate's default
//!   terminator), and lines without any byte besides these are skipped, not items.
//!
//! Item ordinals are the 0-based index of data records (the header is not an item).
//!
//! Use: [`read_header`] on the start of the file gives the column names and where the data
//! starts; [`partition_csv`] streams the whole file once and returns the batches; a worker
//! calls [`csv_items`] on the bytes of its batch with the same header and options.

use std::io::Read;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::partition::{Batcher, DEFAULT_HARD_LIMIT, PartitionOptions, PartitionPlan};

const BOM: &[u8] = b"\xef\xbb\xbf";

/// The CSV dialect. Quotes are escaped by doubling them (`""`); there is no escape character
/// and no comment syntax, matching the `csv` crate's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// Field separator, `,` by default.
    pub delimiter: u8,
    /// Quote character, `"` by default.
    pub quote: u8,
    /// Whether the first record names the columns (true by default).
    pub has_header: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: b',',
            quote: b'"',
            has_header: true,
        }
    }
}

impl CsvOptions {
    /// Delimiter and quote must be distinct from each other and from the record terminators,
    /// or record boundaries would be ambiguous.
    fn check(&self) -> std::result::Result<(), String> {
        let terminator = |b: u8| b == b'\r' || b == b'\n';
        if self.delimiter == self.quote || terminator(self.delimiter) || terminator(self.quote) {
            return Err(format!(
                "CSV delimiter {:?} and quote {:?} must differ and be neither \\r nor \\n",
                char::from(self.delimiter),
                char::from(self.quote)
            ));
        }
        Ok(())
    }
}

/// Reads the start of a CSV file: the column names, and the absolute byte offset where data
/// records start (after a UTF-8 BOM and the header record with its line ending). Blank lines
/// before the header are skipped.
///
/// When `has_header` is false the names are `c0, c1, …`, as many as the first record has
/// fields, and data starts at 0 (3 after a BOM). An empty file has no columns and no data.
///
/// Only the first record is read; it may be at most [`DEFAULT_HARD_LIMIT`] bytes (an unclosed
/// quote would otherwise swallow the whole file). Column names must be UTF-8 and unique, since
/// they become the keys of each item. This function does not know the input's URI, so its
/// errors name the input "CSV header"; callers with a URI at hand may want to re-wrap them.
pub fn read_header<R: Read>(mut reader: R, opts: &CsvOptions) -> Result<(Vec<String>, u64)> {
    const WHAT: &str = "CSV header";
    let input_error = |message: String| Error::Input {
        uri: WHAT.to_string(),
        message,
    };
    opts.check().map_err(input_error)?;

    // Everything read so far, from byte 0: the first record is parsed out of it once complete.
    let mut head: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut eof = false;
    let mut more = |head: &mut Vec<u8>, eof: &mut bool| -> Result<()> {
        let n = read_some(&mut reader, &mut buf).map_err(|e| Error::io(WHAT, e))?;
        head.extend_from_slice(&buf[..n]);
        *eof = n == 0;
        Ok(())
    };

    // The BOM can only be recognised once three bytes (or the end) are in.
    while head.len() < BOM.len() && !eof {
        more(&mut head, &mut eof)?;
    }
    let bom = if head.starts_with(BOM) { BOM.len() } else { 0 };

    let mut scanner = Scanner::new(opts);
    let mut pos = bom;
    let mut record_start = bom;
    // The first record as a byte range of `head`, and where the data after it starts.
    let (start, end, after) = loop {
        match scanner.next_end(&head, pos) {
            Some((end, false)) => {
                pos = end + 1;
                record_start = pos;
            }
            Some((end, true)) => {
                // A `\r\n` is one line ending: keep its `\n` out of the data region too.
                if head[end] == b'\r' && head.len() == end + 1 && !eof {
                    more(&mut head, &mut eof)?;
                }
                let after = if head[end] == b'\r' && head.get(end + 1) == Some(&b'\n') {
                    end + 2
                } else {
                    end + 1
                };
                break (record_start, end, after);
            }
            None if eof => {
                if scanner.in_record() {
                    break (record_start, head.len(), head.len());
                }
                // Nothing but blank lines: no columns, and no data to cut.
                let start = if opts.has_header { head.len() } else { bom };
                return Ok((Vec::new(), start as u64));
            }
            None => {
                pos = head.len();
                if head.len() - bom > DEFAULT_HARD_LIMIT as usize {
                    return Err(input_error(format!(
                        "the first record does not end within {DEFAULT_HARD_LIMIT} bytes \
                         (an unclosed quote?)"
                    )));
                }
                more(&mut head, &mut eof)?;
            }
        }
    };

    let record = match records(&head[start..end], opts).next() {
        Some(Ok(record)) => record,
        Some(Err(e)) => return Err(input_error(e.to_string())),
        None => return Err(input_error("no first record".to_string())),
    };
    if !opts.has_header {
        let names = (0..record.len()).map(|i| format!("c{i}")).collect();
        return Ok((names, bom as u64));
    }
    let mut names: Vec<String> = Vec::with_capacity(record.len());
    let mut seen = std::collections::HashMap::with_capacity(record.len());
    for (i, field) in record.iter().enumerate() {
        let name = std::str::from_utf8(field)
            .map_err(|e| input_error(format!("column {i}: the name is not UTF-8: {e}")))?;
        if let Some(j) = seen.insert(name, i) {
            // The name itself is input content: the positions say which columns to look at.
            return Err(input_error(format!(
                "columns {j} and {i} have the same name; names must be unique, as they \
                 become the keys of each item"
            )));
        }
        names.push(name.to_string());
    }
    Ok((names, after as u64))
}

/// Streams `reader` once and returns the batches of `source` (its URI, copied into each batch),
/// cut exactly like [`crate::partition::partition_jsonl`] cuts lines: at most
/// `batch_size` records or `max_bytes` bytes per batch, a single record larger than
/// `max_bytes` in a batch of its own, and a record over `hard_limit` refused with
/// [`Error::RecordTooLarge`] naming its ordinal (a quote that is never closed makes the rest
/// of the file one record, which usually ends up here).
///
/// `reader` yields the file **from its first byte**; the first `data_start` bytes (BOM and
/// header, as returned by [`read_header`]) are read past and belong to no batch. Batches are
/// absolute byte ranges of the file that together cover `data_start..` the end, and
/// [`PartitionPlan::bytes`] is the size of the whole file.
pub fn partition_csv<R: Read>(
    mut reader: R,
    source: &str,
    data_start: u64,
    opts: PartitionOptions,
    csv: &CsvOptions,
) -> Result<PartitionPlan> {
    csv.check().map_err(|message| Error::Input {
        uri: source.to_string(),
        message,
    })?;
    let mut cut = Cutter::new(source, opts, data_start, csv);
    let mut buf = vec![0u8; 8 << 20];
    let mut skipped = 0u64;
    loop {
        let n = read_some(&mut reader, &mut buf).map_err(|e| Error::io(source, e))?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if skipped < data_start {
            let skip = (data_start - skipped).min(n as u64) as usize;
            skipped += skip as u64;
            chunk = &chunk[skip..];
        }
        cut.feed(chunk)?;
    }
    if skipped < data_start {
        return Err(Error::Input {
            uri: source.to_string(),
            message: format!(
                "the input ends at byte {skipped}, before its data start at byte {data_start}"
            ),
        });
    }
    cut.finish()
}

/// The items of a CSV byte range (a batch from [`partition_csv`]): each record as a JSON
/// object keyed by the header's names, in column and record order, blank lines skipped.
///
/// Every value is a JSON string, empty fields included: CSV has no types, and guessing them
/// (is `007` a number? is `true`?) would differ from batch to batch and lose data. Handlers
/// convert what they need.
///
/// A record whose field count differs from the header's, or with a field that is not UTF-8,
/// is an `Err` with a message for that item only (a permanent item error); the following
/// records are still decoded.
pub fn csv_items<'a>(
    data: &'a [u8],
    header: &'a [String],
    opts: &CsvOptions,
) -> impl Iterator<Item = std::result::Result<Map<String, Value>, String>> + use<'a> {
    let mut records = records(data, opts);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        match records.next()? {
            Ok(record) => Some(to_object(&record, header)),
            Err(e) => {
                // Only reading can fail, never parsing, and a slice does not fail to read; if it
                // ever did, the reader's position would be unknown, so stop rather than loop.
                failed = true;
                Some(Err(format!("cannot read CSV: {e}")))
            }
        }
    })
}

fn to_object(
    record: &csv::ByteRecord,
    header: &[String],
) -> std::result::Result<Map<String, Value>, String> {
    if record.len() != header.len() {
        return Err(format!(
            "expected {} fields (as many as the header has columns), found {}",
            header.len(),
            record.len()
        ));
    }
    let mut object = Map::with_capacity(header.len());
    for (column, (name, field)) in header.iter().zip(record.iter()).enumerate() {
        // The column's position, not its name: a header is input content.
        let value =
            std::str::from_utf8(field).map_err(|e| format!("field {column} is not UTF-8: {e}"))?;
        object.insert(name.clone(), Value::String(value.to_string()));
    }
    Ok(object)
}

/// The records of `data`, which starts at a record boundary, as the `csv` crate reads them
/// with the dialect the scanner follows (spelled out, as the scanner depends on it).
fn records<'a>(
    data: &'a [u8],
    opts: &CsvOptions,
) -> csv::ByteRecordsIntoIter<std::io::Chain<&'static [u8], &'a [u8]>> {
    // `csv` drops a UTF-8 BOM at the start of what it reads. Only the file's own start may
    // carry one (and `read_header` already skips it); a batch that happens to begin with
    // U+FEFF holds it as data, as reading the whole file would. A leading blank line, which
    // `csv` skips, moves the reader off "the start".
    let prefix: &'static [u8] = if data.starts_with(BOM) { b"\n" } else { b"" };
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(opts.delimiter)
        .quote(opts.quote)
        .quoting(true)
        .double_quote(true)
        .escape(None)
        .comment(None)
        .terminator(csv::Terminator::CRLF)
        .from_reader(prefix.chain(data))
        .into_byte_records()
}

/// `Read::read`, retried on interruption.
fn read_some<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn is_terminator(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Where the scanner is in the CSV grammar. These are the states of `csv-core`'s parser (with
/// double-quote escaping, no escape character, no comments, CR/LF/CRLF terminators), minus
/// what only matters for field contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No byte of the current record yet: a terminator here ends a blank line.
    StartRecord,
    /// At the start of a field: a quote opens a quoted field.
    StartField,
    /// In an unquoted field: quotes are literal; only delimiters and terminators matter.
    InField,
    /// In a quoted field: everything up to the next quote is data, newlines included.
    InQuoted,
    /// Just after a quote in a quoted field: a second quote is an escaped quote (back to
    /// `InQuoted`); anything else ends the quoting.
    QuoteInQuoted,
}

/// Finds record boundaries in a stream fed in arbitrary chunks: the state carries over, so a
/// chunk may end anywhere (inside quotes, between `\r` and `\n`, between two quotes).
struct Scanner {
    delimiter: u8,
    quote: u8,
    state: State,
}

impl Scanner {
    fn new(opts: &CsvOptions) -> Self {
        Scanner {
            delimiter: opts.delimiter,
            quote: opts.quote,
            state: State::StartRecord,
        }
    }

    /// Whether bytes of an unfinished record have been seen (at the end of input, that record
    /// ends there).
    fn in_record(&self) -> bool {
        self.state != State::StartRecord
    }

    /// Scans `chunk[from..]` for the next terminator outside quotes. Returns its index and
    /// whether it ended a record (false: a blank line), or `None` when the chunk is used up.
    fn next_end(&mut self, chunk: &[u8], from: usize) -> Option<(usize, bool)> {
        let mut i = from;
        while i < chunk.len() {
            match self.state {
                State::StartRecord => {
                    if is_terminator(chunk[i]) {
                        return Some((i, false));
                    }
                    // Not consumed: the byte is the start of the first field.
                    self.state = State::StartField;
                }
                // A field start and a quote inside quotes lead to the same states: a quote is
                // (re)entering quotes, and anything else is unquoted.
                State::StartField | State::QuoteInQuoted => {
                    let b = chunk[i];
                    if is_terminator(b) {
                        self.state = State::StartRecord;
                        return Some((i, true));
                    }
                    self.state = if b == self.quote {
                        State::InQuoted
                    } else if b == self.delimiter {
                        State::StartField
                    } else {
                        State::InField
                    };
                    i += 1;
                }
                State::InField => {
                    let k = memchr::memchr3(self.delimiter, b'\r', b'\n', &chunk[i..])?;
                    if chunk[i + k] == self.delimiter {
                        self.state = State::StartField;
                        i += k + 1;
                    } else {
                        self.state = State::StartRecord;
                        return Some((i + k, true));
                    }
                }
                State::InQuoted => {
                    let k = memchr::memchr(self.quote, &chunk[i..])?;
                    self.state = State::QuoteInQuoted;
                    i += k + 1;
                }
            }
        }
        None
    }
}

/// CSV: records end where the quote-aware scanner says; batching is `partition::Batcher`'s.
struct Cutter<'a> {
    batcher: Batcher<'a>,
    scanner: Scanner,
    /// Absolute offset of the next byte to be fed.
    offset: u64,
}

impl<'a> Cutter<'a> {
    fn new(source: &'a str, opts: PartitionOptions, data_start: u64, csv: &CsvOptions) -> Self {
        Cutter {
            batcher: Batcher::new(source, opts, data_start),
            scanner: Scanner::new(csv),
            offset: data_start,
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        let mut pos = 0;
        while let Some((end, is_record)) = self.scanner.next_end(chunk, pos) {
            self.batcher
                .end_record(self.offset + end as u64 + 1, is_record)?;
            pos = end + 1;
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<PartitionPlan> {
        if self.scanner.in_record() {
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

    /// A reader that hands out chunks of the given sizes in turn (at least one byte each), to
    /// put chunk boundaries inside quotes, between `\r` and `\n`, and so on.
    struct Trickle<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        next: usize,
    }

    impl<'a> Trickle<'a> {
        fn new(data: &'a [u8], sizes: Vec<usize>) -> Self {
            Trickle {
                data,
                sizes,
                next: 0,
            }
        }
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let size = self.sizes[self.next % self.sizes.len()].max(1);
            self.next += 1;
            let n = size.min(self.data.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    type Item = std::result::Result<Map<String, Value>, String>;

    /// Header, partition and items of `data` read in one go.
    fn decode(
        data: &[u8],
        csv: &CsvOptions,
        o: PartitionOptions,
    ) -> (Vec<String>, PartitionPlan, Vec<Item>) {
        let (header, start) = read_header(data, csv).unwrap();
        let plan = partition_csv(data, "mem", start, o, csv).unwrap();
        let items = plan
            .batches
            .iter()
            .flat_map(|b| csv_items(&data[b.start as usize..b.end as usize], &header, csv))
            .collect();
        (header, plan, items)
    }

    fn object(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn bom_and_crlf_header_are_not_data() {
        let data = "\u{feff}a,b\r\n1,2\r\n".as_bytes();
        let (header, start) = read_header(data, &CsvOptions::default()).unwrap();
        assert_eq!(header, ["a", "b"]);
        assert_eq!(start, 3 + 5);
        let (_, plan, items) = decode(data, &CsvOptions::default(), opts(10, 1 << 20));
        assert_eq!(plan.batches.len(), 1);
        assert_eq!(plan.batches[0].start, 8);
        assert_eq!(plan.bytes, data.len() as u64);
        assert_eq!(items, vec![Ok(object(&[("a", "1"), ("b", "2")]))]);
    }

    #[test]
    fn quoted_newline_at_any_chunk_boundary_stays_in_its_record() {
        let data = b"a,b\n\"x\r\n\"\"y\",2\n3,4\n";
        let csv = CsvOptions::default();
        for split in 1..data.len() {
            let reader = Trickle::new(data, vec![split, data.len()]);
            let (header, start) = read_header(Trickle::new(data, vec![split, 1]), &csv).unwrap();
            assert_eq!((header, start), (vec!["a".to_string(), "b".to_string()], 4));
            let plan = partition_csv(reader, "mem", start, opts(1, 1 << 20), &csv).unwrap();
            assert_eq!(plan.items, 2, "split at {split}");
            let ranges: Vec<_> = plan.batches.iter().map(|b| (b.start, b.end)).collect();
            assert_eq!(ranges, [(4, 15), (15, 19)], "split at {split}");
        }
        let (_, _, items) = decode(data, &csv, opts(1, 1 << 20));
        assert_eq!(items[0], Ok(object(&[("a", "x\r\n\"y"), ("b", "2")])));
    }

    #[test]
    fn a_ragged_row_is_an_item_error_and_decoding_goes_on() {
        let data = b"a,b\n1,2\n3,4,5\n6\n7,8\n";
        let (_, plan, items) = decode(data, &CsvOptions::default(), opts(10, 1 << 20));
        assert_eq!(plan.items, 4);
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], Ok(object(&[("a", "1"), ("b", "2")])));
        assert_eq!(
            items[1],
            Err("expected 2 fields (as many as the header has columns), found 3".to_string())
        );
        assert!(items[2].as_ref().unwrap_err().contains("found 1"));
        assert_eq!(items[3], Ok(object(&[("a", "7"), ("b", "8")])));
    }

    #[test]
    fn record_over_the_hard_limit_names_its_ordinal() {
        let data = b"a\nshort\n\"a quoted\nrecord that is long\"\nx\n";
        let o = PartitionOptions {
            hard_limit: 12,
            ..opts(10, 100)
        };
        let (_, start) = read_header(&data[..], &CsvOptions::default()).unwrap();
        match partition_csv(&data[..], "mem", start, o, &CsvOptions::default()) {
            Err(Error::RecordTooLarge {
                ordinal, offset, ..
            }) => assert_eq!((ordinal, offset), (1, 8)),
            other => panic!("expected RecordTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn max_bytes_splits_and_a_huge_record_gets_its_own_batch() {
        let data = format!("h\n1\n\"{}\"\n2\n", "y".repeat(100));
        let (_, plan, items) = decode(data.as_bytes(), &CsvOptions::default(), opts(100, 20));
        assert_eq!(plan.batches.len(), 3);
        assert_eq!(plan.batches[1].items, 1);
        assert!(plan.batches[1].bytes() > 20);
        assert_eq!(items.len(), 3);
    }

    #[test]
    fn header_less_mode_names_columns_by_position() {
        let csv = CsvOptions {
            has_header: false,
            ..CsvOptions::default()
        };
        let data = b"\n1,2\n3,4";
        let (header, start) = read_header(&data[..], &csv).unwrap();
        assert_eq!(
            (header, start),
            (vec!["c0".to_string(), "c1".to_string()], 0)
        );
        let (_, plan, items) = decode(data, &csv, opts(1, 1 << 20));
        assert_eq!(plan.batches.len(), 2);
        assert_eq!(plan.batches[0].start, 0);
        assert_eq!(plan.batches[1].end, data.len() as u64);
        assert_eq!(
            items,
            [
                Ok(object(&[("c0", "1"), ("c1", "2")])),
                Ok(object(&[("c0", "3"), ("c1", "4")]))
            ]
        );
        let bom = "\u{feff}1,2\n".as_bytes();
        assert_eq!(read_header(bom, &csv).unwrap().1, 3);
    }

    #[test]
    fn semicolon_delimiter() {
        let csv = CsvOptions {
            delimiter: b';',
            ..CsvOptions::default()
        };
        let data = b"name;note\n\"Doe; J.\";\"a, b\"\n";
        let (header, _, items) = decode(data, &csv, opts(10, 1 << 20));
        assert_eq!(header, ["name", "note"]);
        assert_eq!(
            items,
            [Ok(object(&[("name", "Doe; J."), ("note", "a, b")]))]
        );
    }

    #[test]
    fn header_only_and_empty_files_have_no_batches() {
        for data in [&b"a,b\n"[..], b"a,b", b"a,b\r\n\r\n\n", b"", b"\n\r\n"] {
            let (_, plan, items) = decode(data, &CsvOptions::default(), opts(5, 100));
            assert_eq!((plan.batches.len(), plan.items), (0, 0), "{data:?}");
            assert!(items.is_empty());
        }
        assert_eq!(
            read_header(&b""[..], &CsvOptions::default()).unwrap(),
            (vec![], 0)
        );
    }

    #[test]
    fn a_lone_cr_ends_a_record_as_in_the_csv_crate() {
        let (_, plan, items) = decode(b"a\r1\r\r2", &CsvOptions::default(), opts(1, 1 << 20));
        assert_eq!(plan.items, 2);
        assert_eq!(
            items,
            [Ok(object(&[("a", "1")])), Ok(object(&[("a", "2")]))]
        );
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_is_literal() {
        // Toggling "in quotes" at every quote would join these two records.
        let data = b"a,b\nx\"y,\"z\"\n1,2\n";
        let (_, plan, items) = decode(data, &CsvOptions::default(), opts(1, 1 << 20));
        assert_eq!(plan.items, 2);
        assert_eq!(items[0], Ok(object(&[("a", "x\"y"), ("b", "z")])));
        assert_eq!(items[1], Ok(object(&[("a", "1"), ("b", "2")])));
    }

    #[test]
    fn a_batch_starting_with_a_bom_keeps_it_as_data() {
        let data = "a\n1\n\u{feff}2\n".as_bytes();
        let (_, plan, items) = decode(data, &CsvOptions::default(), opts(1, 1 << 20));
        assert_eq!(plan.batches[1].start, 4);
        assert_eq!(items[1], Ok(object(&[("a", "\u{feff}2")])));
    }

    #[test]
    fn bad_headers_and_options_are_refused() {
        let csv = CsvOptions::default();
        let err = read_header(&b"a,b,a\n1,2,3\n"[..], &csv).unwrap_err();
        assert!(
            err.to_string()
                .contains("columns 0 and 2 have the same name"),
            "{err}"
        );
        assert!(read_header(&b"\xff\n"[..], &csv).is_err());
        let same = CsvOptions {
            quote: b',',
            ..CsvOptions::default()
        };
        assert!(read_header(&b"a\n"[..], &same).is_err());
        assert!(matches!(
            partition_csv(&b"a\n"[..], "mem", 0, opts(1, 1), &same),
            Err(Error::Input { .. })
        ));
    }

    /// Errors end up in logs and in the operator's status, read by people who may not see
    /// the input: none of them may quote it.
    #[test]
    fn errors_about_the_header_or_a_record_do_not_quote_the_input() {
        const MARKER: &str = "SECRET-MARKER-7f3a";
        let csv = CsvOptions::default();
        let twice = format!("{MARKER},b,{MARKER}\n1,2,3\n");
        let err = read_header(twice.as_bytes(), &csv).unwrap_err().to_string();
        assert!(err.contains("columns 0 and 2"), "{err}");
        assert!(!err.contains(MARKER), "{err}");

        let data = format!("a\n\"{MARKER} {MARKER}\"\n");
        let o = PartitionOptions {
            hard_limit: 8,
            ..opts(10, 100)
        };
        let err = partition_csv(data.as_bytes(), "mem", 2, o, &csv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("item 0"), "{err}");
        assert!(!err.contains(MARKER), "{err}");

        let header = vec![MARKER.to_string()];
        let item = csv_items(b"\xff\n", &header, &csv).next().unwrap();
        let err = item.unwrap_err();
        assert!(err.contains("field 0 is not UTF-8"), "{err}");
        assert!(!err.contains(MARKER), "{err}");
    }

    #[test]
    fn a_reader_shorter_than_the_data_start_is_refused() {
        let err = partition_csv(&b"a,b"[..], "mem", 4, opts(1, 1), &CsvOptions::default());
        assert!(matches!(err, Err(Error::Input { .. })), "{err:?}");
    }

    /// The records of the whole file as the `csv` crate reads them, header included.
    fn reference(data: &[u8], csv: &CsvOptions) -> Vec<csv::ByteRecord> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(csv.delimiter)
            .quote(csv.quote)
            .from_reader(data)
            .into_byte_records()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Partitions `data` read in chunks of `sizes`, checks the plan's shape and returns each
    /// batch's records decoded on their own.
    fn batched_records(
        data: &[u8],
        csv: &CsvOptions,
        o: PartitionOptions,
        sizes: &[usize],
    ) -> std::result::Result<(Vec<String>, Vec<csv::ByteRecord>), TestCaseError> {
        let (header, start) = read_header(Trickle::new(data, sizes.to_vec()), csv).unwrap();
        let reader = Trickle::new(data, sizes.iter().rev().copied().collect());
        let plan = partition_csv(reader, "mem", start, o, csv).unwrap();
        prop_assert_eq!(plan.bytes, data.len() as u64);
        let mut next_start = start;
        let mut got = Vec::new();
        for b in &plan.batches {
            prop_assert_eq!(b.start, next_start);
            prop_assert!(b.items >= 1 && b.items <= o.batch_size);
            prop_assert_eq!(b.first_item as usize, got.len());
            let records: Vec<_> = records(&data[b.start as usize..b.end as usize], csv)
                .map(|r| r.unwrap())
                .collect();
            prop_assert_eq!(records.len() as u64, b.items);
            got.extend(records);
            next_start = b.end;
        }
        if !plan.batches.is_empty() {
            prop_assert_eq!(next_start, data.len() as u64);
        }
        prop_assert_eq!(plan.items as usize, got.len());
        Ok((header, got))
    }

    /// A field and whether to quote it even when it needs no quotes.
    fn field() -> impl Strategy<Value = (String, bool)> {
        let text = prop_oneof![
            Just(String::new()),
            "[a-z ]{1,6}",
            "[a-z,\"\n ]{0,8}",
            "[a-z\r\n\"]{0,6}".prop_map(|s| s.replace('\r', "\r\n")),
        ];
        (text, any::<bool>())
    }

    fn write_field(out: &mut String, (text, quote): &(String, bool)) {
        if *quote || text.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&text.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(text);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn tables_decode_the_same_in_batches_as_whole(
            columns in 1usize..5,
            names in proptest::collection::vec(field(), 5),
            rows in proptest::collection::vec(proptest::collection::vec(field(), 5), 0..25),
            endings in proptest::collection::vec(0u8..8, 26),
            bom in any::<bool>(),
            trailing in any::<bool>(),
            has_header in any::<bool>(),
            size in 1u64..6,
            max_bytes in 1u64..120,
            sizes in proptest::collection::vec(1usize..9, 1..8),
        ) {
            // Mostly LF or CRLF, sometimes with a blank line after it.
            let ending = |i: usize| match endings[i] {
                0..=2 => "\n",
                3..=5 => "\r\n",
                6 => "\n\n",
                _ => "\r\n\r\n",
            };
            let mut text = String::new();
            if bom { text.push('\u{feff}'); }
            let mut lines: Vec<Vec<(String, bool)>> = Vec::new();
            if has_header {
                // Made unique by their position, as names must be.
                lines.push(names[..columns]
                    .iter()
                    .enumerate()
                    .map(|(i, (t, q))| (format!("{t}{i}"), *q))
                    .collect());
            }
            lines.extend(rows.iter().map(|r| r[..columns].to_vec()));
            for (i, line) in lines.iter().enumerate() {
                for (j, f) in line.iter().enumerate() {
                    if j > 0 { text.push(','); }
                    write_field(&mut text, f);
                }
                if i + 1 < lines.len() || trailing { text.push_str(ending(i)); }
            }
            let data = text.as_bytes();
            let csv = CsvOptions { has_header, ..CsvOptions::default() };
            let o = opts(size, max_bytes);
            let expected = reference(data, &csv);

            let (header, start) = read_header(Trickle::new(data, sizes.clone()), &csv).unwrap();
            let data_records = if has_header && !expected.is_empty() {
                let names: Vec<&[u8]> = expected[0].iter().collect();
                let ours: Vec<&[u8]> = header.iter().map(|h| h.as_bytes()).collect();
                prop_assert_eq!(ours, names);
                &expected[1..]
            } else {
                &expected[..]
            };
            let (_, got) = batched_records(data, &csv, o, &sizes)?;
            prop_assert_eq!(&got[..], data_records);

            let plan = partition_csv(Trickle::new(data, sizes), "mem", start, o, &csv).unwrap();
            let items: Vec<_> = plan
                .batches
                .iter()
                .flat_map(|b| csv_items(&data[b.start as usize..b.end as usize], &header, &csv))
                .collect();
            prop_assert_eq!(items.len(), data_records.len());
            for (item, record) in items.iter().zip(data_records) {
                // A one-column row with an empty unquoted field is a blank line, so skipped;
                // every row that is read has the header's width.
                let want: Map<String, Value> = header
                    .iter()
                    .zip(record.iter())
                    .map(|(h, f)| (h.clone(), Value::String(String::from_utf8(f.to_vec()).unwrap())))
                    .collect();
                prop_assert_eq!(item, &Ok(want));
            }
        }

        /// Arbitrary bytes of the CSV alphabet (unbalanced quotes, quotes mid-field, lone
        /// `\r`, stray BOMs): whatever the `csv` crate makes of them, the batches agree.
        #[test]
        fn any_byte_soup_splits_into_the_records_the_csv_crate_reads(
            tokens in proptest::collection::vec(
                prop_oneof![
                    Just("a"), Just("b"), Just(","), Just(";"), Just("\""), Just("\"\""),
                    Just("\n"), Just("\r"), Just("\r\n"), Just(" "), Just("\u{feff}"),
                ],
                0..80,
            ),
            header_line in prop_oneof![Just(""), Just("h,i\n"), Just("\"h\n\",i\r\n"), Just("\u{feff}h;i\r")],
            semicolon in any::<bool>(),
            size in 1u64..5,
            max_bytes in 1u64..40,
            sizes in proptest::collection::vec(1usize..6, 1..6),
        ) {
            let text = format!("{header_line}{}", tokens.concat());
            let data = text.as_bytes();
            let csv = CsvOptions {
                delimiter: if semicolon { b';' } else { b',' },
                has_header: !header_line.is_empty(),
                ..CsvOptions::default()
            };
            let expected = reference(data, &csv);
            let skip = usize::from(csv.has_header && !expected.is_empty());
            let (_, got) = batched_records(data, &csv, opts(size, max_bytes), &sizes)?;
            prop_assert_eq!(&got[..], &expected[skip..]);
        }
    }
}
