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
//! This runs once per task over up to millions of rows. A worker's results arrive as JSON text
//! ([`ResultRows::push_json`]): each row is cut into cells that borrow from that text (only
//! strings with escapes are decoded into their own buffer), all rows' cells in one vector, so
//! building a row costs no allocation of its own — not the map, key strings and value tree of a
//! `serde_json::Value`, which once cost more than the rest of the write. Then it makes exactly
//! two passes over the cells (infer, then build) and copies nothing but the values into Arrow
//! builders. Column lookups first try the position the key had in the previous row, which
//! is a hit for the usual uniformly shaped output, and fall back to a hash map. Arrays are
//! built and written in chunks so memory beyond the input stays bounded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, UInt64Array, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Number, Value};

use crate::Result;
use crate::checksum::FileInfo;
use crate::error::DataError;
use crate::parquet_io::ParquetSink;
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

/// One value of a result row, borrowed from the row's JSON text or from a `Value`.
#[derive(Debug, Clone)]
enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// A number that is not an `i64`; what it was written as, for a text column.
    Float(f64, NumberText<'a>),
    Str(Cow<'a, str>),
    /// An object or an array: stored as its compact JSON text.
    Nested(Nested<'a>),
}

#[derive(Debug, Clone, Copy)]
enum NumberText<'a> {
    Json(&'a str),
    Number(&'a Number),
}

#[derive(Debug, Clone, Copy)]
enum Nested<'a> {
    Json(&'a RawValue),
    Value(&'a Value),
}

impl<'a> Cell<'a> {
    fn of_value(v: &'a Value) -> Cell<'a> {
        match v {
            Value::Null => Cell::Null,
            Value::Bool(b) => Cell::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Cell::Int(i),
                None => Cell::Float(n.as_f64().unwrap_or(f64::NAN), NumberText::Number(n)),
            },
            Value::String(s) => Cell::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => Cell::Nested(Nested::Value(v)),
        }
    }

    /// The cell of one JSON value's text, typed exactly as [`Cell::of_value`] types the value
    /// `serde_json` parses from it.
    fn of_json(raw: &'a RawValue) -> std::result::Result<Cell<'a>, serde_json::Error> {
        let text = raw.get();
        Ok(match text.as_bytes().first() {
            Some(b'n') => Cell::Null,
            Some(b't') => Cell::Bool(true),
            Some(b'f') => Cell::Bool(false),
            Some(b'"') => match text.get(1..text.len() - 1) {
                Some(inner) if !inner.contains('\\') => Cell::Str(Cow::Borrowed(inner)),
                _ => Cell::Str(Cow::Owned(serde_json::from_str(text)?)),
            },
            Some(b'{' | b'[') => Cell::Nested(Nested::Json(raw)),
            // serde_json reads `-0` as a float, not as the integer 0.
            _ => match text.parse::<i64>() {
                Ok(i) if text != "-0" => Cell::Int(i),
                _ => Cell::Float(serde_json::from_str(text)?, NumberText::Json(text)),
            },
        })
    }
}

/// Result rows as cells: the (column, cell) pairs of every row in one vector, a row being a
/// range of it. A row that is not a JSON object is one cell without a column name (it goes to
/// [`VALUE_COLUMN`]). Cells borrow from the JSON text or the values the rows came from.
#[derive(Debug, Default)]
pub struct ResultRows<'a> {
    cells: Vec<(Option<Cow<'a, str>>, Cell<'a>)>,
    /// Each row's item ordinal and the end of its cells.
    rows: Vec<(u64, usize)>,
}

impl<'a> ResultRows<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds the rows of item `item`'s result, given as its JSON text: an object is one row, a
    /// list one row per element (none for an empty list), any other value one row holding it in
    /// [`VALUE_COLUMN`] — the rows the same result parsed as a `Value` gives with
    /// [`ResultRows::push_value`]. Fails, adding nothing, when the text is not JSON.
    pub fn push_json(
        &mut self,
        item: u64,
        json: &'a str,
    ) -> std::result::Result<(), serde_json::Error> {
        let (cells, rows) = (self.cells.len(), self.rows.len());
        let pushed = if json.trim_start().starts_with('[') {
            serde_json::from_str::<Vec<&'a RawValue>>(json).and_then(|elements| {
                elements
                    .into_iter()
                    .try_for_each(|element| self.push_json_row(item, element))
            })
        } else {
            serde_json::from_str::<&'a RawValue>(json).and_then(|raw| self.push_json_row(item, raw))
        };
        if pushed.is_err() {
            self.cells.truncate(cells);
            self.rows.truncate(rows);
        }
        pushed
    }

    fn push_json_row(
        &mut self,
        item: u64,
        raw: &'a RawValue,
    ) -> std::result::Result<(), serde_json::Error> {
        if raw.get().starts_with('{') {
            let start = self.cells.len();
            let mut de = serde_json::Deserializer::from_str(raw.get());
            ObjectCells {
                cells: &mut self.cells,
                start,
            }
            .deserialize(&mut de)?;
        } else {
            self.cells.push((None, Cell::of_json(raw)?));
        }
        self.rows.push((item, self.cells.len()));
        Ok(())
    }

    /// Adds the row of item `item` whose result is `value` (an object is one row with a column
    /// per key; any other value one row holding it in [`VALUE_COLUMN`]).
    pub fn push_value(&mut self, item: u64, value: &'a Value) {
        match value {
            Value::Object(map) => self.cells.extend(
                map.iter()
                    .map(|(key, v)| (Some(Cow::Borrowed(key.as_str())), Cell::of_value(v))),
            ),
            other => self.cells.push((None, Cell::of_value(other))),
        }
        self.rows.push((item, self.cells.len()));
    }

    fn item(&self, row: usize) -> u64 {
        self.rows[row].0
    }

    /// The (column, cell) pairs of row `row`.
    fn row(&self, row: usize) -> impl Iterator<Item = (&str, &Cell<'a>)> {
        let start = row.checked_sub(1).map_or(0, |before| self.rows[before].1);
        self.cells[start..self.rows[row].1]
            .iter()
            .map(|(key, cell)| (key.as_deref().unwrap_or(VALUE_COLUMN), cell))
    }
}

/// Reads one JSON object's members into cells, a key given twice keeping its first place and
/// its last value (as `serde_json::Value` with `preserve_order` does).
struct ObjectCells<'s, 'a> {
    cells: &'s mut Vec<(Option<Cow<'a, str>>, Cell<'a>)>,
    /// Where this object's cells start.
    start: usize,
}

impl<'de, 's> DeserializeSeed<'de> for ObjectCells<'s, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> std::result::Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, 's> Visitor<'de> for ObjectCells<'s, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> std::result::Result<(), M::Error> {
        use serde::de::Error as _;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let raw: &'de RawValue = map.next_value()?;
            let cell = Cell::of_json(raw).map_err(M::Error::custom)?;
            let members = &mut self.cells[self.start..];
            match members.iter_mut().find(|(k, _)| k.as_deref() == Some(&key)) {
                Some(member) => member.1 = cell,
                None => self.cells.push((Some(key), cell)),
            }
        }
        Ok(())
    }
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
    fn of(cell: &Cell<'_>) -> Kind {
        match cell {
            Cell::Null => Kind::Null,
            Cell::Bool(_) => Kind::Bool,
            Cell::Int(_) => Kind::Int,
            Cell::Float(..) => Kind::Float,
            Cell::Str(_) | Cell::Nested(_) => Kind::Str,
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
    fn observe(&mut self, cell: &Cell<'_>) {
        if let Cell::Str(s) = cell {
            self.text_bytes += s.len();
            self.text_values += 1;
        }
        if self.kind != Kind::Str {
            self.kind = self.kind.join(Kind::of(cell));
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
fn infer<'r>(rows: &'r ResultRows<'_>) -> Result<(Columns<'r>, Vec<ColumnInfo>)> {
    let mut cols = Columns::new();
    let mut infos: Vec<ColumnInfo> = Vec::new();
    for r in 0..rows.len() {
        let mut guess = 0;
        for (key, cell) in rows.row(r) {
            let (i, new) = cols.find_or_insert(key, guess);
            if new {
                // A reserved key can never become a column, so checking new columns catches
                // every occurrence without a compare per value.
                if key == ITEM_COLUMN {
                    return Err(DataError::ReservedColumn {
                        item: rows.item(r),
                        column: key.to_string(),
                    });
                }
                infos.push(ColumnInfo {
                    kind: Kind::Null,
                    text_bytes: 0,
                    text_values: 0,
                });
            }
            infos[i].observe(cell);
            guess = i + 1;
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
    /// column's type; the other arms are nulls.
    fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (ColumnBuilder::Null(n), _) => *n += 1,
            (ColumnBuilder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (ColumnBuilder::Int(b), Cell::Int(v)) => b.append_value(*v),
            (ColumnBuilder::Float(b), Cell::Float(v, _)) => b.append_value(*v),
            (ColumnBuilder::Float(b), Cell::Int(v)) => b.append_value(*v as f64),
            (ColumnBuilder::Str(b), cell) => match cell {
                Cell::Null => b.append_null(),
                Cell::Str(s) => b.append_value(s),
                Cell::Bool(true) => b.append_value("true"),
                Cell::Bool(false) => b.append_value("false"),
                // Formatted straight into the builder's value buffer: no temporary String.
                // Writing to a StringBuilder cannot fail. Numbers and nested values read as
                // `serde_json` prints them (its own number formatting, compact JSON).
                Cell::Int(v) => {
                    let _ = write!(b, "{v}");
                    b.append_value("");
                }
                Cell::Float(_, NumberText::Number(n)) => {
                    let _ = write!(b, "{n}");
                    b.append_value("");
                }
                Cell::Float(v, NumberText::Json(text)) => {
                    match serde_json::from_str::<Number>(text) {
                        Ok(n) => {
                            let _ = write!(b, "{n}");
                        }
                        Err(_) => {
                            let _ = write!(b, "{v}");
                        }
                    }
                    b.append_value("");
                }
                Cell::Nested(Nested::Value(v)) => {
                    let _ = write!(b, "{v}");
                    b.append_value("");
                }
                Cell::Nested(Nested::Json(raw)) => {
                    match serde_json::from_str::<Value>(raw.get()) {
                        Ok(v) => {
                            let _ = write!(b, "{v}");
                        }
                        Err(_) => b.write_str(raw.get()).unwrap_or(()),
                    }
                    b.append_value("");
                }
            },
            (builder, _) => builder.append_null(),
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
    rows: &ResultRows<'_>,
    first: usize,
    limits: ChunkLimits,
    path: &Path,
) -> Result<(RecordBatch, usize)> {
    let capacity = (rows.len() - first).min(limits.rows);
    let mut builders: Vec<ColumnBuilder> = infos
        .iter()
        .map(|info| ColumnBuilder::new(info, capacity, limits.text_bytes))
        .collect();
    let text_columns: Vec<usize> = (0..infos.len())
        .filter(|&i| infos[i].kind == Kind::Str)
        .collect();
    let ncols = builders.len();
    let mut taken = 0;
    for r in 0..(rows.len() - first).min(limits.rows.max(1)) {
        let mut guess = 0;
        let mut touched = 0;
        for (key, cell) in rows.row(first + r) {
            // Every key was registered in pass one.
            if let Some(i) = cols.find(key, guess) {
                builders[i].append(cell);
                guess = i + 1;
            }
            touched += 1;
        }
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
        (first..first + taken).map(|r| rows.item(r)),
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
    write_result_rows(path, &of_values(rows))
}

/// [`write_results_parquet`] for rows as cells (from the results' JSON text).
pub fn write_result_rows(path: &Path, rows: &ResultRows<'_>) -> Result<FileInfo> {
    write_results_chunked(path, rows, CHUNK_LIMITS)
}

fn of_values(rows: &[ResultRow]) -> ResultRows<'_> {
    let mut cells = ResultRows::new();
    for row in rows {
        cells.push_value(row.item, &row.value);
    }
    cells
}

fn write_results_chunked(
    path: &Path,
    rows: &ResultRows<'_>,
    limits: ChunkLimits,
) -> Result<FileInfo> {
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

    let mut sink = ParquetSink::create_task_result(path, schema.clone())?;
    let mut first = 0;
    while first < rows.len() {
        let (batch, taken) = build_batch(&schema, &cols, &infos, rows, first, limits, path)?;
        sink.write(&batch)?;
        first += taken;
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
            let info = write_results_chunked(&path, &of_values(&rows), limits).unwrap();
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
        let kind = |v: Value| Kind::of(&Cell::of_value(&v));
        assert_eq!(kind(json!(i64::MAX)), Kind::Int);
        assert_eq!(kind(json!(i64::MIN)), Kind::Int);
        assert_eq!(kind(json!(u64::MAX)), Kind::Float);
        assert_eq!(kind(json!(1.0)), Kind::Float);
        assert_eq!(kind(json!([1])), Kind::Str);
        let raw = |t: &str| RawValue::from_string(t.to_string()).unwrap();
        for (text, want) in [
            ("9223372036854775807", Kind::Int),
            ("-9223372036854775808", Kind::Int),
            ("9223372036854775808", Kind::Float),
            ("-0", Kind::Float),
            ("0", Kind::Int),
            ("1e2", Kind::Float),
            ("2.50", Kind::Float),
            ("\"x\"", Kind::Str),
            ("{}", Kind::Str),
            ("null", Kind::Null),
            ("false", Kind::Bool),
        ] {
            assert_eq!(
                Kind::of(&Cell::of_json(&raw(text)).unwrap()),
                want,
                "{text}"
            );
        }
    }

    /// Every row of the file, as (column, value printed) pairs, with the column types.
    fn contents(path: &Path) -> (Vec<(String, DataType)>, Vec<Vec<String>>) {
        let file = std::fs::File::open(path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let schema = arrow_array::RecordBatchReader::schema(&reader);
        let fields = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            for r in 0..batch.num_rows() {
                rows.push(
                    batch
                        .columns()
                        .iter()
                        .map(|c| arrow_cast::display::array_value_to_string(c, r).unwrap())
                        .collect(),
                );
            }
        }
        (fields, rows)
    }

    /// The file written from results' JSON text is the file written from the same results
    /// parsed as `Value`s (which is how results were written before): types, column order,
    /// and every value as printed, for results that stress each rule.
    #[test]
    fn rows_from_json_text_write_the_same_file_as_rows_from_values() {
        let results = [
            r#"{"b": 1, "a": "x", "n": null}"#,
            r#"{"a": "with \"escapes\" \u00e9", "b": 2.5, "c": true}"#,
            r#"{"c": false, "d": {"z": 1,  "y": [1, 2 , "q"]}, "b": -0}"#,
            r#"[{"a": "listed"}, {"b": 18446744073709551615}, 7, "s", [1, {"k": null}]]"#,
            r#"[]"#,
            r#"{"dup": 1, "e": 1e300, "dup": "later"}"#,
            r#"{"f": 1.0}"#,
            r#"{"f": 12, "g": -9223372036854775808, "h": 1E-7}"#,
            r#"{"i": 3, "mixed": 1}"#,
            r#"{"mixed": 2.25}"#,
            r#"{"mixed": "now text"}"#,
            r#"{"mixed": 18446744073709551616}"#,
            r#"  "scalar"  "#,
            r#"null"#,
            r#"{}"#,
        ];
        let values: Vec<Value> = results
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        let mut from_values = Vec::new();
        for (item, value) in values.iter().enumerate() {
            match value {
                Value::Array(elements) => from_values.extend(elements.iter().map(|v| ResultRow {
                    item: item as u64,
                    value: v.clone(),
                })),
                v => from_values.push(ResultRow {
                    item: item as u64,
                    value: v.clone(),
                }),
            }
        }
        let mut from_json = ResultRows::new();
        for (item, text) in results.iter().enumerate() {
            from_json.push_json(item as u64, text).unwrap();
        }
        assert_eq!(from_json.len(), from_values.len());
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        write_results_parquet(&a, &from_values).unwrap();
        write_result_rows(&b, &from_json).unwrap();
        let (want, got) = (contents(&a), contents(&b));
        assert_eq!(got.0, want.0);
        assert_eq!(got.1, want.1);
        // The rules hold: the duplicate key keeps its first place and its last value.
        let dup = want.0.iter().position(|(name, _)| name == "dup").unwrap();
        assert!(want.1.iter().any(|row| row[dup] == "later"));
    }

    #[test]
    fn text_that_is_not_json_adds_no_row() {
        let mut rows = ResultRows::new();
        rows.push_json(0, r#"{"a": 1}"#).unwrap();
        for bad in [r#"{"a": "#, "[1, ]", "nope", r#"[{"a": 1}, oops]"#, ""] {
            assert!(rows.push_json(1, bad).is_err(), "{bad}");
        }
        assert_eq!(rows.len(), 1);
        assert_eq!(rows.row(0).count(), 1);
    }
}
