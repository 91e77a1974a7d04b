//! Declared output schema (`spec.output.schema`): handler results converted to fixed columns.
//!
//! Inference ([`crate::results`]) suits exploration, but output that feeds a warehouse or a
//! downstream job needs the same columns and types from every run, whatever the handler
//! happened to return for one batch. With a declared schema a task file holds exactly `_item`
//! plus the declared columns, in the declared order, each value converted to its column's
//! type. A row that does not fit is neither widened nor nulled: its item is left out of the
//! file and reported back ([`SchemaFailure`]) so the worker records it as an item error of kind
//! [`SCHEMA_ERROR_KIND`]. The merge then only checks that every task file has exactly this
//! schema (see [`crate::MergeOptions::schema`]), so nothing widens across tasks either.
//!
//! # Conversion rules
//!
//! A result object contributes its keys; any other result value (a scalar, an array) is the
//! single field `value`, as with inference. A declared field that is missing or `null` is a
//! null, unless the column is `nullable: false`, which makes the row fail. Fields that are not
//! declared are dropped (and reported once, in [`DeclaredWrite::dropped_fields`]).
//!
//! | column    | accepts                                                                    |
//! |-----------|----------------------------------------------------------------------------|
//! | `string`  | strings as they are; numbers and booleans as their JSON text (`12`, `true`) |
//! | `int64`   | integers in range; floats without a fraction (`3.0`); strings holding an integer |
//! | `float64` | any number (integers may round beyond 2^53); strings holding a finite number |
//! | `bool`    | booleans; the strings `"true"` and `"false"`                               |
//! | `json`    | any value, stored as its compact JSON text (a string keeps its quotes)     |
//!
//! Anything else fails: arrays and objects in a `string` column, a fraction or an
//! out-of-range number in an `int64` column, `"abc"` for a number. A failure message names the
//! column and the value's JSON type, never the value: it may be large or sensitive, and it
//! ends up in `errors.parquet` and logs.
//!
//! An item with several result rows is kept or dropped as a whole: if one of its rows fails,
//! none of them is written, so an item is either in the results or in the errors, never half.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use orch_core::spec::{ColumnType, OutputColumn};
use serde_json::{Map, Value};

use crate::Result;
use crate::checksum::FileInfo;
use crate::error::DataError;
use crate::item_errors::ItemError;
use crate::parquet_io::ParquetSink;
use crate::results::{CHUNK_ROWS, CHUNK_TEXT_BYTES, ITEM_COLUMN, ResultRow, VALUE_COLUMN};
use crate::schema::{ColumnSchema, TYPE_METADATA_KEY};

/// `kind` of an item error caused by a result that does not fit the declared schema.
pub const SCHEMA_ERROR_KIND: &str = "schema";

/// A validated `spec.output.schema` with its Arrow schema (`_item` first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredSchema {
    columns: Vec<OutputColumn>,
    arrow: SchemaRef,
}

impl DeclaredSchema {
    /// Checks the column names (job-file validation does too; this guards other callers) and
    /// builds the Arrow schema.
    pub fn new(columns: &[OutputColumn]) -> Result<Self> {
        let mut seen = HashSet::new();
        for (i, column) in columns.iter().enumerate() {
            let name = column.name.as_str();
            let reason = if name.is_empty() {
                "must not be empty".to_string()
            } else if name.starts_with('_') {
                format!("names starting with `_` are reserved for orch, got `{name}`")
            } else if !seen.insert(name) {
                format!("duplicate column \"{name}\"")
            } else {
                continue;
            };
            return Err(DataError::InvalidSpec {
                field: format!("spec.output.schema[{i}].name"),
                reason,
            });
        }
        let mut fields = Vec::with_capacity(columns.len() + 1);
        fields.push(Field::new(ITEM_COLUMN, DataType::UInt64, false));
        fields.extend(columns.iter().map(declared_field));
        Ok(DeclaredSchema {
            columns: columns.to_vec(),
            arrow: Arc::new(Schema::new(fields)),
        })
    }

    /// The declared columns, without `_item`.
    pub fn columns(&self) -> &[OutputColumn] {
        &self.columns
    }

    /// The schema of every file written under this declaration: `_item`, then the columns.
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow
    }

    /// The schema as recorded in `_SUCCESS`, `_item` first; `json` columns say `json`.
    pub fn column_schemas(&self) -> Vec<ColumnSchema> {
        self.arrow
            .fields()
            .iter()
            .map(|f| ColumnSchema::from_field(f))
            .collect()
    }
}

/// The Arrow type a declared column is stored as (`json` is text).
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::String | ColumnType::Json => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
    }
}

fn declared_field(column: &OutputColumn) -> Field {
    let field = Field::new(&column.name, arrow_type(column.r#type), column.nullable);
    // Parquet has no JSON type; the mark keeps "this text is JSON" in the file's Arrow schema
    // and lets `_SUCCESS` report the declared type.
    if column.r#type == ColumnType::Json {
        field.with_metadata(HashMap::from([(
            TYPE_METADATA_KEY.to_owned(),
            ColumnType::Json.as_str().to_owned(),
        )]))
    } else {
        field
    }
}

/// A value converted for its column, still borrowing from the result: text is rendered
/// straight into the Arrow builder, so conversion itself allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Converted<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string stored as it is.
    Str(&'a str),
    /// A value stored as its compact JSON text.
    Json(&'a Value),
}

impl fmt::Display for Converted<'_> {
    /// The text a `string` or `json` column stores.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Converted::Null => Ok(()),
            Converted::Bool(b) => write!(f, "{b}"),
            Converted::Int(i) => write!(f, "{i}"),
            Converted::Float(x) => write!(f, "{x}"),
            Converted::Str(s) => f.write_str(s),
            Converted::Json(v) => write!(f, "{v}"),
        }
    }
}

/// Why a value does not fit its column. Holds the value's JSON type, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// `string`, `number`, `boolean`, `array` or `object`.
    pub found: &'static str,
    pub expected: ColumnType,
    /// More about why, when the JSON type alone does not say it.
    pub detail: Option<&'static str>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot convert a JSON {} to {}",
            self.found, self.expected
        )?;
        if let Some(detail) = self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// The JSON type of a value, as named in failure messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Converts one value to a column type (see the module docs for the rules). `null` converts
/// to [`Converted::Null`] for every type; whether that is allowed is the column's business.
pub fn convert(value: &Value, ty: ColumnType) -> std::result::Result<Converted<'_>, Mismatch> {
    let fail = |detail: Option<&'static str>| Mismatch {
        found: json_type(value),
        expected: ty,
        detail,
    };
    match (ty, value) {
        (_, Value::Null) => Ok(Converted::Null),
        (ColumnType::Json, v) => Ok(Converted::Json(v)),
        (ColumnType::String, Value::String(s)) => Ok(Converted::Str(s)),
        (ColumnType::String, v @ (Value::Number(_) | Value::Bool(_))) => Ok(Converted::Json(v)),
        (ColumnType::String, _) => Err(fail(Some(
            "declare the column as json to keep nested values",
        ))),
        (ColumnType::Int64, Value::Number(n)) => number_to_i64(n)
            .map(Converted::Int)
            .map_err(|d| fail(Some(d))),
        (ColumnType::Int64, Value::String(s)) => s
            .parse::<i64>()
            .map(Converted::Int)
            .map_err(|_| fail(Some("not an integer"))),
        (ColumnType::Float64, Value::Number(n)) => {
            n.as_f64().map(Converted::Float).ok_or_else(|| fail(None))
        }
        (ColumnType::Float64, Value::String(s)) => match s.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Converted::Float(x)),
            _ => Err(fail(Some("not a finite number"))),
        },
        (ColumnType::Bool, Value::Bool(b)) => Ok(Converted::Bool(*b)),
        (ColumnType::Bool, Value::String(s)) => match s.as_str() {
            "true" => Ok(Converted::Bool(true)),
            "false" => Ok(Converted::Bool(false)),
            _ => Err(fail(Some("only \"true\" and \"false\" convert"))),
        },
        _ => Err(fail(None)),
    }
}

/// An integer, or a float with no fraction inside the `i64` range.
fn number_to_i64(n: &serde_json::Number) -> std::result::Result<i64, &'static str> {
    // 2^63 as f64: the first value past `i64::MAX` (which itself is not representable).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err("out of the int64 range");
    }
    match n.as_f64() {
        Some(x) if x.fract() != 0.0 => Err("it has a fraction"),
        // In range and integral, so the cast is exact.
        Some(x) if (-LIMIT..LIMIT).contains(&x) => Ok(x as i64),
        _ => Err("out of the int64 range"),
    }
}

/// A result row's fields as the declared schema sees them.
#[derive(Clone, Copy)]
enum Fields<'a> {
    Object(&'a Map<String, Value>),
    /// A non-object result: one field named [`VALUE_COLUMN`].
    Single(&'a Value),
}

impl<'a> Fields<'a> {
    fn of(value: &'a Value) -> Self {
        match value {
            Value::Object(map) => Fields::Object(map),
            other => Fields::Single(other),
        }
    }

    fn get(self, name: &str) -> Option<&'a Value> {
        match self {
            Fields::Object(map) => map.get(name),
            Fields::Single(v) => (name == VALUE_COLUMN).then_some(v),
        }
    }

    fn len(self) -> usize {
        match self {
            Fields::Object(map) => map.len(),
            Fields::Single(_) => 1,
        }
    }

    fn names(self) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        match self {
            Fields::Object(map) => Box::new(map.keys().map(String::as_str)),
            Fields::Single(_) => Box::new(std::iter::once(VALUE_COLUMN)),
        }
    }
}

/// An item left out of a declared-schema file because one of its rows does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFailure {
    pub item: u64,
    /// The first declared column that did not fit.
    pub column: String,
    /// For `errors.parquet`: names the column and the value's JSON type, not the value.
    pub message: String,
}

impl SchemaFailure {
    /// The item error the worker records: kind [`SCHEMA_ERROR_KIND`], tried once (the handler
    /// succeeded; retrying would give the same result).
    pub fn into_item_error(self) -> ItemError {
        ItemError {
            item: self.item,
            kind: SCHEMA_ERROR_KIND.to_owned(),
            message: self.message,
            attempts: 1,
        }
    }
}

/// What [`write_results_parquet_declared`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredWrite {
    /// The written file; its rows are those of the items not in `failures`.
    pub file: FileInfo,
    /// One per item left out, in the order of the rows.
    pub failures: Vec<SchemaFailure>,
    /// Result fields that are not declared and were dropped, each once, in first-seen order.
    pub dropped_fields: Vec<String>,
}

/// Checks one row against the schema; the first failing column and the message, if any.
fn check_row(columns: &[OutputColumn], fields: Fields<'_>) -> Option<(usize, String)> {
    for (i, column) in columns.iter().enumerate() {
        let name = &column.name;
        let message = match fields.get(name) {
            None if !column.nullable => format!(
                "column \"{name}\" is declared nullable: false but the result has no such field"
            ),
            Some(Value::Null) if !column.nullable => {
                format!("column \"{name}\" is declared nullable: false but its value is null")
            }
            None => continue,
            Some(v) => match convert(v, column.r#type) {
                Ok(_) => continue,
                Err(m) => format!("column \"{name}\": {m}"),
            },
        };
        return Some((i, message));
    }
    None
}

/// Pass one: which items fail, and which fields are not declared.
fn check_rows<'a>(
    columns: &[OutputColumn],
    rows: &'a [ResultRow],
) -> (Vec<SchemaFailure>, HashSet<u64>, Vec<String>) {
    let declared: HashSet<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let mut failures = Vec::new();
    let mut failed = HashSet::new();
    let mut dropped: Vec<String> = Vec::new();
    let mut dropped_seen: HashSet<&'a str> = HashSet::new();
    for row in rows {
        let fields = Fields::of(&row.value);
        // Counting the declared fields present is cheap; only a row with more fields than that
        // has undeclared ones worth a scan.
        let present = columns
            .iter()
            .filter(|c| fields.get(&c.name).is_some())
            .count();
        if fields.len() > present {
            for name in fields.names() {
                if !declared.contains(name) && dropped_seen.insert(name) {
                    dropped.push(name.to_owned());
                }
            }
        }
        if failed.contains(&row.item) {
            continue;
        }
        if let Some((i, message)) = check_row(columns, fields) {
            failed.insert(row.item);
            failures.push(SchemaFailure {
                item: row.item,
                column: columns[i].name.clone(),
                message,
            });
        }
    }
    (failures, failed, dropped)
}

/// An Arrow builder for a declared column.
enum Builder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

impl Builder {
    fn new(ty: ColumnType, rows: usize) -> Self {
        match ty {
            ColumnType::String | ColumnType::Json => {
                Builder::Str(StringBuilder::with_capacity(rows, rows.saturating_mul(16)))
            }
            ColumnType::Int64 => Builder::Int(Int64Builder::with_capacity(rows)),
            ColumnType::Float64 => Builder::Float(Float64Builder::with_capacity(rows)),
            ColumnType::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
        }
    }

    /// Appends a converted value. [`convert`] returns the variant of its column's type, so the
    /// last arm (a null) is only reached for nulls.
    fn append(&mut self, value: Converted<'_>) {
        match (self, value) {
            (Builder::Str(b), Converted::Str(s)) => b.append_value(s),
            (Builder::Str(b), v @ Converted::Json(_)) => {
                // Formats straight into the builder's value buffer; writing to a
                // StringBuilder cannot fail.
                let _ = write!(b, "{v}");
                b.append_value("");
            }
            (Builder::Int(b), Converted::Int(i)) => b.append_value(i),
            (Builder::Float(b), Converted::Float(x)) => b.append_value(x),
            (Builder::Bool(b), Converted::Bool(x)) => b.append_value(x),
            (Builder::Str(b), _) => b.append_null(),
            (Builder::Int(b), _) => b.append_null(),
            (Builder::Float(b), _) => b.append_null(),
            (Builder::Bool(b), _) => b.append_null(),
        }
    }

    fn text_len(&self) -> usize {
        match self {
            Builder::Str(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Pass two for the next batch: converts rows from `rows` until the row or text limit.
fn build_batch<'a>(
    schema: &DeclaredSchema,
    rows: &mut std::iter::Peekable<impl Iterator<Item = &'a ResultRow>>,
    limits: (usize, usize),
    path: &Path,
) -> Result<RecordBatch> {
    let (max_rows, max_text) = limits;
    let columns = schema.columns();
    let mut builders: Vec<Builder> = columns
        .iter()
        .map(|c| Builder::new(c.r#type, max_rows.min(4096)))
        .collect();
    let has_text = builders.iter().any(|b| matches!(b, Builder::Str(_)));
    let mut items = Vec::new();
    while items.len() < max_rows.max(1) {
        let Some(row) = rows.next() else { break };
        let fields = Fields::of(&row.value);
        for (column, builder) in columns.iter().zip(builders.iter_mut()) {
            let value = match fields.get(&column.name) {
                None => Converted::Null,
                Some(v) => convert(v, column.r#type).map_err(|m| {
                    // Pass one checked every kept row with the same function.
                    DataError::invalid(
                        path,
                        format!(
                            "item {}: column \"{}\" changed its verdict: {m}",
                            row.item, column.name
                        ),
                    )
                })?,
            };
            builder.append(value);
        }
        items.push(row.item);
        if has_text && builders.iter().map(Builder::text_len).sum::<usize>() >= max_text {
            break;
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(builders.len() + 1);
    arrays.push(Arc::new(UInt64Array::from(items)));
    arrays.extend(builders.iter_mut().map(Builder::finish));
    RecordBatch::try_new(schema.arrow_schema().clone(), arrays)
        .map_err(|e| DataError::arrow(path, e))
}

/// Writes task results under a declared schema (see the module docs for the rules),
/// atomically like [`crate::write_results_parquet`]. Items with a row that does not fit are
/// left out and returned in [`DeclaredWrite::failures`]; the caller records them as item
/// errors. The file always has the declared schema, even with no rows.
pub fn write_results_parquet_declared(
    path: &Path,
    rows: &[ResultRow],
    schema: &DeclaredSchema,
) -> Result<DeclaredWrite> {
    write_declared_chunked(path, rows, schema, (CHUNK_ROWS, CHUNK_TEXT_BYTES))
}

fn write_declared_chunked(
    path: &Path,
    rows: &[ResultRow],
    schema: &DeclaredSchema,
    limits: (usize, usize),
) -> Result<DeclaredWrite> {
    let (failures, failed, dropped_fields) = check_rows(schema.columns(), rows);
    let mut kept = rows
        .iter()
        .filter(|r| failed.is_empty() || !failed.contains(&r.item))
        .peekable();
    let mut sink = ParquetSink::create_task_result(path, schema.arrow_schema().clone())?;
    while kept.peek().is_some() {
        let batch = build_batch(schema, &mut kept, limits, path)?;
        sink.write(&batch)?;
    }
    Ok(DeclaredWrite {
        file: sink.finish()?,
        failures,
        dropped_fields,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::json;

    fn column(name: &str, ty: ColumnType) -> OutputColumn {
        OutputColumn {
            name: name.into(),
            r#type: ty,
            nullable: true,
        }
    }

    #[test]
    fn batches_cut_by_rows_and_text_line_up() {
        let schema = DeclaredSchema::new(&[
            column("n", ColumnType::Int64),
            column("s", ColumnType::Json),
        ])
        .unwrap();
        let rows: Vec<ResultRow> = (0..40u64)
            .map(|i| ResultRow {
                item: i,
                value: if i % 3 == 0 {
                    json!({"n": i, "s": {"k": i}})
                } else {
                    json!({"n": i})
                },
            })
            .collect();
        for limits in [(1, 1), (7, 10), (1000, 1), (CHUNK_ROWS, CHUNK_TEXT_BYTES)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.parquet");
            let w = write_declared_chunked(&path, &rows, &schema, limits).unwrap();
            assert_eq!(w.file.rows, 40);
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                    .unwrap()
                    .with_batch_size(1000)
                    .build()
                    .unwrap();
            let batch = reader.map(|b| b.unwrap()).next().unwrap();
            let n = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let s = batch
                .column(2)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            for i in 0..40usize {
                assert_eq!(n.value(i), i as i64, "{limits:?}");
                let want = (i % 3 == 0).then(|| format!("{{\"k\":{i}}}"));
                assert_eq!(
                    s.is_valid(i).then(|| s.value(i).to_string()),
                    want,
                    "{limits:?}"
                );
            }
        }
    }

    #[test]
    fn int64_limits() {
        let n = |v: Value| convert(&v, ColumnType::Int64).map(|c| format!("{c:?}"));
        assert_eq!(n(json!(i64::MIN)), Ok(format!("Int({})", i64::MIN)));
        // -2^63 is the smallest i64 and exact as a float; 2^63 is one past the largest.
        let two_63 = 2f64.powi(63);
        assert_eq!(n(json!(-two_63)), Ok(format!("Int({})", i64::MIN)));
        assert!(n(json!(two_63)).is_err());
        assert!(n(json!(u64::MAX)).is_err());
        assert_eq!(n(json!(1e3)), Ok("Int(1000)".into()));
    }
}
