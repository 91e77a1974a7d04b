//! Parquet input: batches planned from the footer and the JSON records a worker reads for each,
//! on files written by arrow-rs's `ArrowWriter` and, independently, by pyarrow.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder};
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    StructArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use orch_core::partition::BatchSize;
use orch_data::{DataError, ErrorCategory, partition_parquet, read_parquet_rows};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Row-group sizes of the fixture file: uneven, including groups larger than some batch sizes
/// and a single-row group.
const GROUPS: [u64; 5] = [5, 1, 10, 2, 5];
const TOTAL: u64 = 23;

fn schema() -> SchemaRef {
    let info = Fields::from(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Utf8, true),
    ]);
    let item = Arc::new(Field::new_list_field(DataType::Int64, true));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new("name", DataType::Utf8, false),
        Field::new("flag", DataType::Boolean, false),
        Field::new("info", DataType::Struct(info), true),
        Field::new("tags", DataType::List(item), true),
        Field::new("blob", DataType::Binary, false),
    ]))
}

/// Rows `range` of the fixture, a deterministic function of the row index:
/// - `score` is null every third row, else `i / 2`;
/// - `name` of row 4 holds a newline and quotes (JSON escaping must keep it one line);
/// - `info` is null when `i % 5 == 4`, and its `b` is null on odd rows;
/// - `tags` is null when `i % 4 == 3`, else `[100 i, 100 i + 1, …]` with `i % 3` elements.
fn rows(range: std::ops::Range<u64>) -> RecordBatch {
    let ids: Vec<i64> = range.map(|i| i as i64).collect();
    let score: Float64Array = ids
        .iter()
        .map(|&i| (i % 3 != 0).then_some(i as f64 * 0.5))
        .collect();
    let name: StringArray = ids
        .iter()
        .map(|&i| match i {
            4 => Some("line\nbreak \"q\"".to_string()),
            i => Some(format!("row {i}")),
        })
        .collect();
    let flag: BooleanArray = ids.iter().map(|&i| Some(i % 2 == 0)).collect();
    let a: Int64Array = ids.iter().map(|&i| Some(i * 10)).collect();
    let b: StringArray = ids
        .iter()
        .map(|&i| (i % 2 == 0).then(|| format!("s{i}")))
        .collect();
    let DataType::Struct(info_fields) = schema().field(4).data_type().clone() else {
        unreachable!()
    };
    let info_nulls = ids.iter().map(|&i| i % 5 != 4).collect();
    let info = StructArray::new(
        info_fields,
        vec![Arc::new(a) as ArrayRef, Arc::new(b)],
        Some(info_nulls),
    );
    let mut tags = ListBuilder::new(Int64Builder::new());
    for &i in &ids {
        if i % 4 == 3 {
            tags.append_null();
        } else {
            tags.append_value((0..i % 3).map(|k| Some(i * 100 + k)));
        }
    }
    let blob_values: Vec<Vec<u8>> = ids.iter().map(|&i| vec![i as u8, 0xff]).collect();
    let blob = BinaryArray::from_iter_values(blob_values.iter());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(score),
        Arc::new(name),
        Arc::new(flag),
        Arc::new(info),
        Arc::new(tags.finish()),
        Arc::new(blob),
    ];
    RecordBatch::try_new(schema(), columns).unwrap()
}

/// Writes the fixture with row groups of sizes [`GROUPS`]: explicit flushes end the small
/// groups, and `max_row_group_size` cuts a 12-row write into 10 + 2.
fn write_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("input.parquet");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(10))
        .build();
    let mut writer =
        ArrowWriter::try_new(File::create(&path).unwrap(), schema(), Some(props)).unwrap();
    writer.write(&rows(0..5)).unwrap();
    writer.flush().unwrap();
    writer.write(&rows(5..6)).unwrap();
    writer.flush().unwrap();
    writer.write(&rows(6..18)).unwrap();
    writer.flush().unwrap();
    writer.write(&rows(18..23)).unwrap();
    writer.close().unwrap();
    path
}

/// Row-group sizes as the plain Parquet reader sees them, independent of the code under test.
fn row_groups(path: &Path) -> Vec<u64> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows() as u64)
        .collect()
}

/// Checks the structural promises of a plan and returns its ranges.
fn check_plan(path: &Path, groups: &[u64], size: u64) -> Vec<(u64, u64)> {
    let plan = partition_parquet(path, "file:///input.parquet", BatchSize::Items(size)).unwrap();
    let total: u64 = groups.iter().sum();
    assert_eq!(plan.items, total);
    assert_eq!(plan.bytes, std::fs::metadata(path).unwrap().len());
    let mut next = 0;
    for (i, b) in plan.batches.iter().enumerate() {
        assert_eq!(b.id as usize, i);
        assert_eq!(b.source, "file:///input.parquet");
        assert_eq!(b.start, next, "batches must be contiguous (size {size})");
        assert!(
            b.end > b.start && b.end - b.start <= size,
            "{b:?} (size {size})"
        );
        assert_eq!(b.items, b.end - b.start);
        assert_eq!(b.first_item, b.start);
        next = b.end;
    }
    assert_eq!(next, total, "batches must cover every row (size {size})");

    // A row group larger than the batch size is never inside a single batch.
    let mut group_start = 0;
    for &g in groups {
        if g > size {
            let group_end = group_start + g;
            let splits = plan
                .batches
                .iter()
                .filter(|b| b.start < group_end && group_start < b.end)
                .count();
            assert!(
                splits > 1,
                "group {group_start}..{group_end} not split at {size}"
            );
        }
        group_start += g;
    }
    plan.batches.iter().map(|b| (b.start, b.end)).collect()
}

fn parse(rows: &[String]) -> Vec<Value> {
    rows.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Files written by arrow-rs

#[test]
fn fixture_has_the_intended_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());
    assert_eq!(row_groups(&path), GROUPS);
}

#[test]
fn batches_cover_all_rows_within_size_and_split_large_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());
    assert_eq!(check_plan(&path, &GROUPS, 1).len(), TOTAL as usize);
    check_plan(&path, &GROUPS, 3);
    // Whole small groups are packed (5 + 1), the 10-row group is halved, 2 + 5 packed.
    assert_eq!(
        check_plan(&path, &GROUPS, 7),
        vec![(0, 6), (6, 11), (11, 16), (16, 23)]
    );
    assert_eq!(check_plan(&path, &GROUPS, 1000), vec![(0, TOTAL)]);
}

#[test]
fn every_row_is_read_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());
    let whole = read_parquet_rows(&path, 0, TOTAL).unwrap();
    assert_eq!(whole.len(), TOTAL as usize);
    // Independent of the range logic: row i of the file has id i.
    for (i, row) in parse(&whole).iter().enumerate() {
        assert_eq!(row["id"], i as u64, "{row}");
    }
    for size in [1, 2, 3, 4, 7, 11, 1000] {
        let plan = partition_parquet(&path, "src", BatchSize::Items(size)).unwrap();
        let mut concatenated = Vec::new();
        for b in &plan.batches {
            let rows = read_parquet_rows(&path, b.start, b.end).unwrap();
            assert_eq!(rows.len() as u64, b.items, "{b:?}");
            concatenated.extend(rows);
        }
        assert_eq!(concatenated, whole, "batch size {size}");
    }
    // Arbitrary ranges, including ones that straddle row groups and start mid-group.
    for (start, end) in [(3, 17), (5, 6), (6, 16), (15, 19), (22, 23), (0, 1)] {
        assert_eq!(
            read_parquet_rows(&path, start, end).unwrap(),
            whole[start as usize..end as usize]
        );
    }
    assert!(read_parquet_rows(&path, 9, 9).unwrap().is_empty());
}

#[test]
fn json_keeps_column_order_nulls_nesting_lists_and_hex_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());
    let rows = read_parquet_rows(&path, 0, 8).unwrap();
    assert_eq!(
        rows[0],
        r#"{"id":0,"score":null,"name":"row 0","flag":true,"info":{"a":0,"b":"s0"},"tags":[],"blob":"00ff"}"#
    );
    assert_eq!(
        rows[4],
        r#"{"id":4,"score":2.0,"name":"line\nbreak \"q\"","flag":true,"info":null,"tags":[400],"blob":"04ff"}"#
    );
    assert_eq!(
        rows[7],
        r#"{"id":7,"score":3.5,"name":"row 7","flag":false,"info":{"a":70,"b":null},"tags":null,"blob":"07ff"}"#
    );
    assert_eq!(
        rows[5],
        r#"{"id":5,"score":2.5,"name":"row 5","flag":false,"info":{"a":50,"b":null},"tags":[500,501],"blob":"05ff"}"#
    );
}

/// Timestamps with a named time zone (`UTC`, `America/New_York`: what pandas and pyarrow write
/// for zone-aware columns), with a fixed offset, and without a zone. The JSON value is the
/// instant in the column's zone, RFC 3339 with its offset (`Z` for UTC); a zone-less timestamp
/// stays as written.
#[test]
fn timestamps_with_named_time_zones_come_through_in_their_zone() {
    use arrow_array::TimestampMillisecondArray;
    use arrow_schema::TimeUnit;

    // 2024-01-31T12:00:00Z (winter: New York at -05:00), 2024-07-01T12:00:00.5Z (summer:
    // -04:00), and a null.
    let instants = [Some(1_706_702_400_000), Some(1_719_835_200_500), None];
    let zones = [
        ("utc", Some("UTC")),
        ("new_york", Some("America/New_York")),
        ("offset", Some("+05:30")),
        ("naive", None),
    ];
    let fields: Vec<Field> = zones
        .iter()
        .map(|(name, tz)| {
            Field::new(
                *name,
                DataType::Timestamp(TimeUnit::Millisecond, tz.map(Arc::from)),
                true,
            )
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let columns: Vec<ArrayRef> = zones
        .iter()
        .map(|(_, tz)| {
            let array = TimestampMillisecondArray::from(instants.to_vec());
            Arc::new(match tz {
                Some(tz) => array.with_timezone(*tz),
                None => array,
            }) as ArrayRef
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zoned.parquet");
    let mut writer =
        ArrowWriter::try_new(File::create(&path).unwrap(), schema.clone(), None).unwrap();
    writer
        .write(&RecordBatch::try_new(schema, columns).unwrap())
        .unwrap();
    writer.close().unwrap();

    let rows = read_parquet_rows(&path, 0, 3).unwrap();
    assert_eq!(
        rows,
        [
            r#"{"utc":"2024-01-31T12:00:00Z","new_york":"2024-01-31T07:00:00-05:00","offset":"2024-01-31T17:30:00+05:30","naive":"2024-01-31T12:00:00"}"#,
            r#"{"utc":"2024-07-01T12:00:00.500Z","new_york":"2024-07-01T08:00:00.500-04:00","offset":"2024-07-01T17:30:00.500+05:30","naive":"2024-07-01T12:00:00.500"}"#,
            r#"{"utc":null,"new_york":null,"offset":null,"naive":null}"#,
        ]
    );
}

#[test]
fn empty_file_has_no_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.parquet");
    let writer = ArrowWriter::try_new(File::create(&path).unwrap(), schema(), None).unwrap();
    writer.close().unwrap();
    let plan = partition_parquet(&path, "src", BatchSize::Items(5)).unwrap();
    assert!(plan.batches.is_empty());
    assert_eq!(plan.items, 0);
    assert_eq!(plan.bytes, std::fs::metadata(&path).unwrap().len());
    assert!(read_parquet_rows(&path, 0, 0).unwrap().is_empty());
    assert!(read_parquet_rows(&path, 0, 1).is_err());
}

#[test]
fn ranges_outside_the_file_are_errors_not_short_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());
    for (start, end) in [(20, 24), (23, 24), (5, 3)] {
        match read_parquet_rows(&path, start, end) {
            Err(e @ DataError::InvalidFile { .. }) => {
                assert_eq!(e.category(), ErrorCategory::Permanent);
            }
            other => panic!("{start}..{end}: expected InvalidFile, got {other:?}"),
        }
    }
}

#[test]
fn a_file_that_is_not_parquet_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 3] = [
        ("text.parquet", b"id,name\n1,a\n2,b\n3,c\n"),
        ("short.parquet", b"PAR1"),
        ("zero.parquet", b""),
    ];
    for (name, content) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let e = partition_parquet(&path, "src", BatchSize::Items(10)).unwrap_err();
        assert!(matches!(e, DataError::InvalidFile { .. }), "{name}: {e:?}");
        assert_eq!(e.category(), ErrorCategory::Permanent, "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
        let e = read_parquet_rows(&path, 0, 1).unwrap_err();
        assert!(matches!(e, DataError::Parquet { .. }), "{name}: {e:?}");
    }
    let missing = dir.path().join("missing.parquet");
    assert!(matches!(
        partition_parquet(&missing, "src", BatchSize::Items(10)),
        Err(DataError::Io { .. })
    ));
}

/// A footer the decoder rejects with a message naming a column: planning reports a digest of
/// that message, not the column's name (input content), and reads ranges only.
#[test]
fn a_footer_that_does_not_decode_is_reported_without_its_column_names() {
    const MARKER: &str = "SECRETMARKER7f3a";
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new(
        MARKER,
        DataType::FixedSizeBinary(16),
        false,
    )]));
    let values = arrow_array::FixedSizeBinaryArray::try_from_iter([[7u8; 16]].into_iter()).unwrap();
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values) as ArrayRef]).unwrap();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    // The schema element of the column: compact thrift `type` (FIXED_LEN_BYTE_ARRAY), then
    // `type_length` 16 (zigzag 0x20), `repetition_type`, then the name. A length of -1 (zigzag
    // 0x01) makes the decoder refuse the element, naming it.
    let name_at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
        .unwrap();
    let length_at = name_at - 5;
    assert_eq!(
        bytes[length_at - 1..length_at + 1],
        [0x15, 0x20],
        "fixture layout"
    );
    bytes[length_at] = 0x01;
    let path = dir.path().join("bad.parquet");
    std::fs::write(&path, &bytes).unwrap();
    let raw = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&File::open(&path).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        raw.contains(MARKER),
        "the decoder's own message names it: {raw}"
    );

    let e = partition_parquet(&path, "src", BatchSize::Items(10)).unwrap_err();
    assert!(matches!(e, DataError::InvalidFile { .. }), "{e:?}");
    let message = e.to_string();
    assert!(message.contains("does not decode"), "{message}");
    assert!(!message.contains(MARKER), "{message}");

    // Through ranges: only the tail and the footer are read.
    let mut reads = Vec::new();
    let size = bytes.len() as u64;
    let mut read = |r: std::ops::Range<u64>| {
        reads.push(r.clone());
        Ok(bytes[r.start as usize..r.end as usize].to_vec())
    };
    let e = orch_data::partition_parquet_ranges(
        &path,
        size,
        &mut read,
        "src",
        BatchSize::Items(10),
        None,
    )
    .unwrap_err();
    assert!(!e.to_string().contains(MARKER));
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0], size - 8..size);
    assert_eq!(reads[1].end, size - 8);
}

// ---------------------------------------------------------------------------------------------
// A file written by pyarrow: a second, independent writer

/// Writes 7 rows in row groups of 3 with one data page per row and a page index, so that
/// selections start and end mid-group and mid-column-chunk. Prints the row-group sizes.
const WRITE_PYARROW: &str = r#"
import datetime, sys
import pyarrow as pa, pyarrow.parquet as pq
n = 7
table = pa.table({
    'id': pa.array(range(n), pa.int64()),
    'score': pa.array([None if i % 3 == 0 else i / 4 for i in range(n)], pa.float64()),
    'name': pa.array([f'n{i}' if i != 2 else None for i in range(n)], pa.string()),
    'user': pa.array([None if i == 1 else {'name': f'u{i}', 'age': i * 10, 'tags': ['x'] * (i % 2)}
                      for i in range(n)],
                     pa.struct([('name', pa.string()), ('age', pa.int32()), ('tags', pa.list_(pa.string()))])),
    'nums': pa.array([None if i == 3 else [i, None, -i] for i in range(n)], pa.list_(pa.int64())),
    'day': pa.array([datetime.date(2024, 1, 1 + i) for i in range(n)], pa.date32()),
    'at': pa.array([datetime.datetime(2024, 1, 1, 12, 0, i) for i in range(n)], pa.timestamp('ms')),
    'raw': pa.array([bytes([i, 0xab]) for i in range(n)], pa.binary()),
})
pq.write_table(table, sys.argv[1], row_group_size=3, data_page_size=1, write_batch_size=1,
               write_page_index=True)
print([pq.ParquetFile(sys.argv[1]).metadata.row_group(g).num_rows
       for g in range(pq.ParquetFile(sys.argv[1]).metadata.num_row_groups)])
"#;

/// Zone-aware timestamp columns as pandas writes them through pyarrow (nanoseconds, `UTC`) and
/// as pyarrow does for a named zone (microseconds, `America/New_York`), with a null.
const WRITE_PYARROW_ZONED: &str = r#"
import datetime, sys
import pyarrow as pa, pyarrow.parquet as pq
utc = datetime.timezone.utc
at = [datetime.datetime(2024, 1, 31, 12, 0, 0, tzinfo=utc),
      datetime.datetime(2024, 7, 1, 12, 0, 0, 250000, tzinfo=utc), None]
table = pa.table({
    'id': pa.array([0, 1, 2], pa.int64()),
    'created': pa.array(at, pa.timestamp('ns', tz='UTC')),
    'local': pa.array(at, pa.timestamp('us', tz='America/New_York')),
})
pq.write_table(table, sys.argv[1])
print(pq.read_schema(sys.argv[1]).field('local').type)
"#;

#[test]
fn reads_zone_aware_timestamps_written_by_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zoned.parquet");
    let output = Command::new("python3")
        .arg("-c")
        .arg(WRITE_PYARROW_ZONED)
        .arg(&path)
        .output()
        .expect("python3 with pyarrow is needed to write the cross-check file");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // pyarrow keeps the zone in the file (the Arrow schema in its metadata).
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "timestamp[us, tz=America/New_York]"
    );
    assert_eq!(check_plan(&path, &[3], 2), [(0, 2), (2, 3)]);
    let rows = read_parquet_rows(&path, 0, 3).unwrap();
    assert_eq!(
        rows,
        [
            r#"{"id":0,"created":"2024-01-31T12:00:00Z","local":"2024-01-31T07:00:00-05:00"}"#,
            r#"{"id":1,"created":"2024-07-01T12:00:00.250Z","local":"2024-07-01T08:00:00.250-04:00"}"#,
            r#"{"id":2,"created":null,"local":null}"#,
        ]
    );
    assert_eq!(read_parquet_rows(&path, 1, 2).unwrap(), rows[1..2]);
}

#[test]
fn reads_a_file_written_by_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.parquet");
    let output = Command::new("python3")
        .arg("-c")
        .arg(WRITE_PYARROW)
        .arg(&path)
        .output()
        .expect("python3 with pyarrow is needed to write the cross-check file");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let groups: Vec<u64> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(groups, [3, 3, 1]);
    assert_eq!(row_groups(&path), groups);
    // The point of the page settings: several pages per column chunk, with an offset index.
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Required);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new_with_options(File::open(&path).unwrap(), options)
            .unwrap();
    let index = builder.metadata().page_index().unwrap();
    assert_eq!(index.num_data_pages(0, 0), Some(3));

    for size in [1, 2, 3, 4, 100] {
        check_plan(&path, &groups, size);
    }
    let whole = read_parquet_rows(&path, 0, 7).unwrap();
    let expected = [
        r#"{"id":0,"score":null,"name":"n0","user":{"name":"u0","age":0,"tags":[]},"nums":[0,null,0],"day":"2024-01-01","at":"2024-01-01T12:00:00","raw":"00ab"}"#,
        r#"{"id":1,"score":0.25,"name":"n1","user":null,"nums":[1,null,-1],"day":"2024-01-02","at":"2024-01-01T12:00:01","raw":"01ab"}"#,
        r#"{"id":2,"score":0.5,"name":null,"user":{"name":"u2","age":20,"tags":[]},"nums":[2,null,-2],"day":"2024-01-03","at":"2024-01-01T12:00:02","raw":"02ab"}"#,
        r#"{"id":3,"score":null,"name":"n3","user":{"name":"u3","age":30,"tags":["x"]},"nums":null,"day":"2024-01-04","at":"2024-01-01T12:00:03","raw":"03ab"}"#,
        r#"{"id":4,"score":1.0,"name":"n4","user":{"name":"u4","age":40,"tags":[]},"nums":[4,null,-4],"day":"2024-01-05","at":"2024-01-01T12:00:04","raw":"04ab"}"#,
        r#"{"id":5,"score":1.25,"name":"n5","user":{"name":"u5","age":50,"tags":["x"]},"nums":[5,null,-5],"day":"2024-01-06","at":"2024-01-01T12:00:05","raw":"05ab"}"#,
        r#"{"id":6,"score":null,"name":"n6","user":{"name":"u6","age":60,"tags":[]},"nums":[6,null,-6],"day":"2024-01-07","at":"2024-01-01T12:00:06","raw":"06ab"}"#,
    ];
    assert_eq!(whole, expected);
    // Every range, so that selections start and stop on every page and group boundary.
    for start in 0..=7u64 {
        for end in start..=7u64 {
            assert_eq!(
                read_parquet_rows(&path, start, end).unwrap(),
                whole[start as usize..end as usize],
                "{start}..{end}"
            );
        }
    }
    // The nulls are JSON nulls, not missing keys.
    let parsed = parse(&whole);
    assert!(parsed[2].as_object().unwrap().contains_key("name"));
    assert_eq!(parsed[1]["user"], Value::Null);
}

/// Found by the `parquet` fuzz target: a footer whose column chunk has a negative offset made
/// the parquet crate panic while a worker read its rows. It is refused, as a corrupt footer
/// naming the file, by planning and by the reader alike.
#[test]
fn a_footer_with_a_negative_column_offset_is_an_error_not_a_panic() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/negative-column-offset.parquet");
    let planned = partition_parquet(&path, "fixture", BatchSize::Items(3));
    let message = planned.unwrap_err().to_string();
    assert!(message.contains("corrupt footer"), "{message}");
    assert!(
        message.contains("negative-column-offset.parquet"),
        "{message}"
    );
    for (start, end) in [(0, 2), (0, 3), (3, 6)] {
        let read = read_parquet_rows(&path, start, end);
        assert!(read.is_err(), "rows {start}..{end}: {read:?}");
    }
}

/// Found by the `parquet` fuzz target: a dictionary-encoded page in a file without its
/// dictionary made the parquet crate's decoder panic. The worker's reader makes it an error
/// of the file.
#[test]
fn a_page_without_its_dictionary_is_an_error_not_a_panic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dictionary-page-missing.parquet");
    let mut failed = 0;
    if let Ok(plan) = partition_parquet(&path, "fixture", BatchSize::Items(3)) {
        for batch in plan.batches.iter().take(4) {
            match read_parquet_rows(&path, batch.start, batch.end) {
                Ok(rows) => assert_eq!(rows.len() as u64, batch.items),
                Err(e) => {
                    failed += 1;
                    assert!(
                        e.to_string().contains("dictionary-page-missing.parquet"),
                        "{e}"
                    );
                }
            }
        }
    }
    failed += usize::from(read_parquet_rows(&path, 0, 2).is_err());
    assert!(failed > 0, "the damaged pages were read");
}
