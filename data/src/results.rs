//! Task results: handler output (JSON values) to a typed Parquet file.
//!
//! Handlers speak JSON (docs/job-spec.md, "Handlers") but consumers want typed columns, so each task infers a
//! schema from its own rows and writes `results/T/A/part.parquet`. Tasks infer independently;
//! [`crate::merge_results`] later unifies their schemas with the same lattice.
//!
//! Inference is the default. A job that declares its columns (`spec.output.schema`) writes
//! with [`crate::write_results_parquet_declared`] instead, which converts to the declared
//! types and reports the rows that do not fit (see [`crate::declared`]).
//!
//! # Schema inference rules
//!
//! - The first column is `_item` (`UInt64`, non-null): the row's 0-based input ordinal.
//!   A result object that itself has a key `_item` is rejected ([`DataError::ReservedColumn`])
//!   rather than silently renamed or dropped.
//! - A row whose value is a JSON object contributes one column per key. A row whose value is
//!   anything else (a scalar or an array) is stored in a single column named `value`.
//! - Columns appear in first-seen order: the order of keys in the first row that has them, then
//!   new keys of later rows. (With serde_json's default map, an object's keys iterate sorted;
//!   with its `preserve_order` feature, in document order.)
//! - Each column's type is the join of its values' types over all rows:
//!   - `null` and missing keys do not constrain the type; a column with only nulls is `Utf8`
//!     ("string") full of nulls, its field marked [`crate::schema::NULL_ONLY_METADATA_KEY`]
//!     so that the merge can still give it another task's type;
//!   - booleans give `Boolean`; JSON integers that fit `i64` give `Int64`; other numbers
//!     (fractions, or integers above `i64::MAX`) give `Float64`;
//!   - `Int64` joined with `Float64` gives `Float64` (integers are converted, possibly rounding
//!     beyond 2^53);
//!   - any other mix gives `Utf8`: strings are stored as they are, every other value as its
//!     compact JSON text (`true`, `12`, `{"a":1}`);
//!   - objects and arrays always give `Utf8` holding their compact JSON text.
//! - All result columns are nullable; a missing key or a JSON `null` is a null.
//!
//! # Cost
//!
//! This runs once per task over up to millions of rows, so it makes exactly two passes over
//! the borrowed rows (infer, then build) and copies nothing but the values into Arrow
//! builders. Column lookups first try the position the key had in the previous row, which
//! is a hit for the usual uniformly shaped output, and fall back to a hash map. Arrays are
//! built and written in chunks so memory beyond the input stays bounded.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, UInt64Array, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;

use crate::Result;
use crate::checksum::FileInfo;
use crate::error::DataError;
use crate::parquet_io::{DEFAULT_ROW_GROUP_ROWS, ParquetSink};
use crate::schema::null_only_field;

/// Name of the ordinal column every orch output file starts with.
pub const ITEM_COLUMN: &str = "_item";
/// Column holding results that are not JSON objects.
pub const VALUE_COLUMN: &str = "value";

/// Rows per Arrow batch handed to the Parquet writer; bounds the builders' memory while
/// keeping per-batch overhead negligible.
pub(crate) const CHUNK_ROWS: usize = 64 * 1024;
/// Text bytes after which a batch is cut short. Bounds memory for large results, and keeps
/// string builders far from their 2 GiB (`i32` offset) limit, where Arrow would panic.
pub(crate) const CHUNK_TEXT_BYTES: usize = 256 << 20;

/// One output row: the 0-based input ordinal and the handler's result object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResultRow {
    pub item: u64,
    pub value: Value,
}

/// Inferred type of one result column: a point in the lattice described in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::String(_) | Value::Array(_) | Value::Object(_) => Kind::Str,
        }
    }

    fn join(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Null, x) | (x, Kind::Null) => x,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Str,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Null | Kind::Str => DataType::Utf8,
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
        }
    }
}

/// Column names, their first-seen order and a lookup that is cheap for uniform rows.
struct Columns<'a> {
    names: Vec<&'a str>,
    index: HashMap<&'a str, usize>,
}

impl<'a> Columns<'a> {
    fn new() -> Self {
        Columns {
            names: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Finds a known column, trying `guess` (the slot after the previous key's column) first.
    fn find(&self, key: &str, guess: usize) -> Option<usize> {
        match self.names.get(guess) {
            Some(name) if *name == key => Some(guess),
            _ => self.index.get(key).copied(),
        }
    }

    fn find_or_insert(&mut self, key: &'a str, guess: usize) -> (usize, bool) {
        if let Some(i) = self.find(key, guess) {
            return (i, false);
        }
        let i = self.names.len();
        self.names.push(key);
        self.index.insert(key, i);
        (i, true)
    }
}

/// What pass one learns about a column.
struct ColumnInfo {
    kind: Kind,
    /// Bytes of string values seen, to size string builders without regrowth.
    text_bytes: usize,
    text_values: usize,
}

impl ColumnInfo {
    fn observe(&mut self, v: &Value) {
        if let Value::String(s) = v {
            self.text_bytes += s.len();
            self.text_values += 1;
        }
        if self.kind != Kind::Str {
            self.kind = self.kind.join(Kind::of(v));
        }
    }

    /// Estimated bytes per non-null string value; JSON text of non-strings is guessed short.
    fn avg_text_len(&self) -> usize {
        self.text_bytes
            .checked_div(self.text_values)
            .unwrap_or(16)
            .max(1)
    }
}

/// Pass one: column order and types.
fn infer<'a>(rows: &'a [ResultRow]) -> Result<(Columns<'a>, Vec<ColumnInfo>)> {
    let mut cols = Columns::new();
    let mut infos: Vec<ColumnInfo> = Vec::new();
    for row in rows {
        match &row.value {
            Value::Object(map) => {
                let mut guess = 0;
                for (key, v) in map {
                    let (i, new) = cols.find_or_insert(key.as_str(), guess);
                    if new {
                        // A reserved key can never become a column, so checking new columns
                        // catches every occurrence without a compare per value.
                        if key == ITEM_COLUMN {
                            return Err(DataError::ReservedColumn {
                                item: row.item,
                                column: key.clone(),
                            });
                        }
                        infos.push(ColumnInfo {
                            kind: Kind::Null,
                            text_bytes: 0,
                            text_values: 0,
                        });
                    }
                    infos[i].observe(v);
                    guess = i + 1;
                }
            }
            other => {
                let guess = cols.names.len();
                let (i, new) = cols.find_or_insert(VALUE_COLUMN, guess);
                if new {
                    infos.push(ColumnInfo {
                        kind: Kind::Null,
                        text_bytes: 0,
                        text_values: 0,
                    });
                }
                infos[i].observe(other);
            }
        }
    }
    Ok((cols, infos))
}

/// An Arrow builder per inferred column type.
enum ColumnBuilder {
    Null(usize),
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
}

impl ColumnBuilder {
    fn new(info: &ColumnInfo, rows: usize, max_text_bytes: usize) -> Self {
        match info.kind {
            Kind::Null => ColumnBuilder::Null(0),
            Kind::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            Kind::Int => ColumnBuilder::Int(Int64Builder::with_capacity(rows)),
            Kind::Float => ColumnBuilder::Float(Float64Builder::with_capacity(rows)),
            Kind::Str => ColumnBuilder::Str(StringBuilder::with_capacity(
                rows,
                rows.saturating_mul(info.avg_text_len()).min(max_text_bytes),
            )),
        }
    }

    fn len(&self) -> usize {
        match self {
            ColumnBuilder::Null(n) => *n,
            ColumnBuilder::Bool(b) => b.len(),
            ColumnBuilder::Int(b) => b.len(),
            ColumnBuilder::Float(b) => b.len(),
            ColumnBuilder::Str(b) => b.len(),
        }
    }

    /// Bytes of text held so far (0 for non-text columns).
    fn text_len(&self) -> usize {
        match self {
            ColumnBuilder::Str(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Null(n) => *n += 1,
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int(b) => b.append_null(),
            ColumnBuilder::Float(b) => b.append_null(),
            ColumnBuilder::Str(b) => b.append_null(),
        }
    }

    /// Appends one value. Pass one saw exactly these values, so each value fits its
    /// column's type; the `None` arms are nulls.
    fn append(&mut self, v: &Value) {
        match self {
            ColumnBuilder::Null(n) => *n += 1,
            ColumnBuilder::Bool(b) => b.append_option(v.as_bool()),
            ColumnBuilder::Int(b) => b.append_option(v.as_i64()),
            ColumnBuilder::Float(b) => b.append_option(v.as_f64()),
            ColumnBuilder::Str(b) => match v {
                Value::Null => b.append_null(),
                Value::String(s) => b.append_value(s),
                Value::Bool(true) => b.append_value("true"),
                Value::Bool(false) => b.append_value("false"),
                other => {
                    // Formats straight into the builder's value buffer: no temporary String.
                    // Writing to a StringBuilder cannot fail.
                    let _ = write!(b, "{other}");
                    b.append_value("");
                }
            },
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Null(n) => new_null_array(&DataType::Utf8, *n),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int(b) => Arc::new(b.finish()),
            ColumnBuilder::Float(b) => Arc::new(b.finish()),
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
        }
    }
}

/// Where pass two cuts batches.
#[derive(Debug, Clone, Copy)]
struct ChunkLimits {
    rows: usize,
    text_bytes: usize,
}

const CHUNK_LIMITS: ChunkLimits = ChunkLimits {
    rows: CHUNK_ROWS,
    text_bytes: CHUNK_TEXT_BYTES,
};

/// Pass two for the next batch: builds from the start of `rows` until the row or text limit,
/// and returns the batch with the number of rows it holds (at least one).
fn build_batch(
    schema: &SchemaRef,
    cols: &Columns<'_>,
    infos: &[ColumnInfo],
    rows: &[ResultRow],
    limits: ChunkLimits,
    path: &Path,
) -> Result<(RecordBatch, usize)> {
    let capacity = rows.len().min(limits.rows);
    let mut builders: Vec<ColumnBuilder> = infos
        .iter()
        .map(|info| ColumnBuilder::new(info, capacity, limits.text_bytes))
        .collect();
    let text_columns: Vec<usize> = (0..infos.len())
        .filter(|&i| infos[i].kind == Kind::Str)
        .collect();
    let ncols = builders.len();
    let mut taken = 0;
    for (r, row) in rows.iter().take(limits.rows.max(1)).enumerate() {
        let touched = match &row.value {
            Value::Object(map) => {
                let mut guess = 0;
                for (key, v) in map {
                    // Every key was registered in pass one.
                    if let Some(i) = cols.find(key, guess) {
                        builders[i].append(v);
                        guess = i + 1;
                    }
                }
                map.len()
            }
            other => {
                if let Some(i) = cols.find(VALUE_COLUMN, 0) {
                    builders[i].append(other);
                }
                1
            }
        };
        if touched < ncols {
            for b in builders.iter_mut().filter(|b| b.len() == r) {
                b.append_null();
            }
        }
        taken = r + 1;
        if !text_columns.is_empty()
            && text_columns
                .iter()
                .map(|&i| builders[i].text_len())
                .sum::<usize>()
                >= limits.text_bytes
        {
            break;
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(ncols + 1);
    arrays.push(Arc::new(UInt64Array::from_iter_values(
        rows[..taken].iter().map(|r| r.item),
    )));
    arrays.extend(builders.iter_mut().map(ColumnBuilder::finish));
    let batch =
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| DataError::arrow(path, e))?;
    Ok((batch, taken))
}

/// Writes task results as Parquet with a schema inferred from the rows (see the module docs
/// for the rules), atomically: temporary file in the same directory, fsync, rename. Parent
/// directories are created. Rows are written in the order given.
pub fn write_results_parquet(path: &Path, rows: &[ResultRow]) -> Result<FileInfo> {
    write_results_chunked(path, rows, CHUNK_LIMITS)
}

fn write_results_chunked(path: &Path, rows: &[ResultRow], limits: ChunkLimits) -> Result<FileInfo> {
    let (cols, infos) = infer(rows)?;
    let mut fields = Vec::with_capacity(cols.names.len() + 1);
    fields.push(Field::new(ITEM_COLUMN, DataType::UInt64, false));
    fields.extend(
        cols.names
            .iter()
            .zip(&infos)
            .map(|(name, info)| match info.kind {
                Kind::Null => null_only_field(name),
                kind => Field::new(*name, kind.data_type(), true),
            }),
    );
    let schema: SchemaRef = Arc::new(Schema::new(fields));

    let mut sink = ParquetSink::create(path, schema.clone(), DEFAULT_ROW_GROUP_ROWS)?;
    let mut rest = rows;
    while !rest.is_empty() {
        let (batch, taken) = build_batch(&schema, &cols, &infos, rest, limits, path)?;
        sink.write(&batch)?;
        rest = &rest[taken..];
    }
    sink.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::json;

    #[test]
    fn batches_are_cut_by_rows_and_by_text_and_still_line_up() {
        let rows: Vec<ResultRow> = (0..50u64)
            .map(|i| ResultRow {
                item: i,
                value: match i % 5 {
                    0 => json!({"n": i}),
                    1 => json!({"s": "0123456789"}),
                    2 => json!({"n": i, "s": {"nested": i}}),
                    3 => json!(null),
                    _ => json!({"other": true}),
                },
            })
            .collect();
        for limits in [
            ChunkLimits {
                rows: 1,
                text_bytes: 1,
            },
            ChunkLimits {
                rows: 7,
                text_bytes: 25,
            },
            ChunkLimits {
                rows: 1000,
                text_bytes: 1,
            },
            CHUNK_LIMITS,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.parquet");
            let info = write_results_chunked(&path, &rows, limits).unwrap();
            assert_eq!(info.rows, 50);
            let file = std::fs::File::open(&path).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .with_batch_size(1000)
                .build()
                .unwrap();
            let batch = reader.map(|b| b.unwrap()).next().unwrap();
            assert_eq!(batch.num_rows(), 50, "{limits:?}");
            let n = batch.column_by_name("n").unwrap();
            let n = n.as_any().downcast_ref::<Int64Array>().unwrap();
            let s = batch.column_by_name("s").unwrap();
            let s = s.as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..50usize {
                let want_n = matches!(i % 5, 0 | 2).then_some(i as i64);
                assert_eq!(
                    n.is_valid(i).then(|| n.value(i)),
                    want_n,
                    "{limits:?} row {i}"
                );
                let want_s = match i % 5 {
                    1 => Some("0123456789".to_string()),
                    2 => Some(format!("{{\"nested\":{i}}}")),
                    _ => None,
                };
                let got_s = s.is_valid(i).then(|| s.value(i).to_string());
                assert_eq!(got_s, want_s, "{limits:?} row {i}");
            }
        }
    }

    #[test]
    fn join_lattice() {
        use Kind::*;
        assert_eq!(Null.join(Int), Int);
        assert_eq!(Int.join(Null), Int);
        assert_eq!(Int.join(Float), Float);
        assert_eq!(Float.join(Int), Float);
        assert_eq!(Bool.join(Int), Str);
        assert_eq!(Int.join(Str), Str);
        assert_eq!(Bool.join(Bool), Bool);
        assert_eq!(Null.join(Null), Null);
    }

    #[test]
    fn kinds_of_numbers() {
        assert_eq!(Kind::of(&serde_json::json!(i64::MAX)), Kind::Int);
        assert_eq!(Kind::of(&serde_json::json!(i64::MIN)), Kind::Int);
        assert_eq!(Kind::of(&serde_json::json!(u64::MAX)), Kind::Float);
        assert_eq!(Kind::of(&serde_json::json!(1.0)), Kind::Float);
        assert_eq!(Kind::of(&serde_json::json!([1])), Kind::Str);
    }
}
