//! Extra output formats: `output.sqlite`, `output.jsonl` and `output.csv`.
//!
//! Parquet is orch's format of record, but not every consumer has a Parquet reader at hand:
//! SQLite opens from the standard library of most languages, JSON lines feed `jq` and
//! scripts, CSV feeds spreadsheets. `output.formats` asks for them (docs/job-spec.md, "Storage layout"). They are
//! derived from the *final* `part-NNNNN.parquet` files and `errors.parquet`, after the merge,
//! never from task files: so they cannot disagree with the Parquet output, and a job that does
//! not ask for them pays nothing.
//!
//! Each file is built by streaming the parts in order, one record batch at a time (at most
//! 8,192 rows, fewer when rows are wide), so memory does not grow with the output. Each is
//! written under a temporary name in the target directory, fsynced and renamed into place
//! (see [`crate::atomic`]), so neither a crash nor an error leaves a partial `output.*` behind;
//! an older file of the same name stays intact until the new one replaces it.
//!
//! # Values
//!
//! | Parquet | SQLite | JSON lines | CSV |
//! |---|---|---|---|
//! | `uint64` (`_item`) | `INTEGER` | number | digits |
//! | `int64` | `INTEGER` | number | digits |
//! | `float64` | `REAL` | number (`1.0`, `1e+300`) | the same text as in JSON |
//! | `bool` | `INTEGER` 0 or 1 | `true` / `false` | `true` / `false` |
//! | `string` | `TEXT` | string | text, quoted where needed |
//! | null | `NULL` | `null` | empty field |
//! | NaN, ±infinity | `NULL`, ±`Inf` | `null` | empty field |
//!
//! Nested objects and lists were stored as JSON text (see [`crate::results`]); every format
//! keeps them as that text (a JSON *string* in JSON lines) instead of re-parsing it, so a
//! value reads the same in every format and a column of conflicting types, which was stored
//! as text, stays one type. Types only files not written by orch can carry are handled too:
//! narrower integers and floats are widened, `uint64` values above `i64::MAX` become `REAL` in
//! SQLite (as orch's own inference turns such integers into floats), and anything else is
//! rendered as text by `arrow-cast`.
//!
//! # What each file holds
//!
//! - `output.sqlite`: table `results` with the parts' columns (`_item INTEGER NOT NULL`
//!   first), table `errors` (`_item`, `kind`, `message`, `attempts`, as in `errors.parquet`),
//!   an index on `_item` of each, and `orch_meta(key, value)` holding `schema_version` = `1`
//!   and `columns`, a JSON array giving each Parquet column's name, SQLite column and type.
//! - `output.jsonl`: one object per result row, keys in column order, `_item` first. A null
//!   is written as `null` rather than left out, so every line has the same keys and a
//!   missing key can never be mistaken for a dropped column.
//! - `output.csv`: a header of the column names, then one record per result row, as RFC 4180
//!   has it: `,` between fields, CRLF after each record, fields that hold `,` `"` CR or LF
//!   quoted with `"` doubled. A null is an empty field and an empty string is `""`, so readers
//!   that tell the two apart (PostgreSQL `COPY`, DuckDB) get nulls back as nulls.
//!
//! Failed items are in the SQLite file only. JSON lines and CSV hold results alone, and failed
//! items stay in `errors.parquet`: an error row has other columns than a result row, so mixing
//! them in would break CSV's single header and make every consumer sort the lines apart.
//!
//! # SQLite column names
//!
//! Column names come from user data and are taken as they are, quoted (`"` doubled), never
//! rejected. But SQLite compares column names ignoring ASCII case and cannot hold a NUL in
//! one, while the JSON keys `a` and `A` are two columns. So a NUL becomes U+FFFD, and a name
//! that clashes with an earlier one (`A` after `a`, or `_ITEM`) gets a suffix `_2`, `_3`, ...;
//! `orch_meta.columns` maps every Parquet name to its SQLite name.

mod csv;
mod jsonl;
mod sqlite;

use std::io;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow_cast::cast;
use arrow_schema::{DataType, Schema};

use crate::Result;
use crate::checksum::FileInfo;
use crate::error::DataError;
use crate::parquet_io::open_builder;
use crate::results::ITEM_COLUMN;

/// Rows per record batch read from a part: enough that per-batch costs vanish next to
/// per-row encoding, few enough to keep the memory of the one batch in flight small.
const MAX_BATCH_ROWS: usize = 8 * 1024;

/// An output format besides Parquet, as named in `output.formats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtraFormat {
    Sqlite,
    Jsonl,
    Csv,
}

impl ExtraFormat {
    pub const ALL: [ExtraFormat; 3] = [ExtraFormat::Sqlite, ExtraFormat::Jsonl, ExtraFormat::Csv];

    /// The name used in `output.formats`.
    pub fn name(self) -> &'static str {
        match self {
            ExtraFormat::Sqlite => "sqlite",
            ExtraFormat::Jsonl => "jsonl",
            ExtraFormat::Csv => "csv",
        }
    }

    /// The file [`write_format`] writes under the output directory.
    pub fn file_name(self) -> &'static str {
        match self {
            ExtraFormat::Sqlite => "output.sqlite",
            ExtraFormat::Jsonl => "output.jsonl",
            ExtraFormat::Csv => "output.csv",
        }
    }
}

/// Writes `out_dir/output.sqlite`, `output.jsonl` or `output.csv` from the final parts (read
/// in the given order) and the final `errors.parquet`; see the module docs for the contents.
///
/// Streams one record batch at a time and writes the file atomically (temporary in `out_dir`,
/// fsync, rename). `errors` is read for SQLite only. All parts must have the columns of the
/// first, `_item` first, as the parts of one merge do; with no parts the output has `_item`
/// alone. Returns the file name and its [`FileInfo`], whose `rows` counts result rows.
pub fn write_format(
    format: ExtraFormat,
    parts: &[PathBuf],
    errors: &Path,
    out_dir: &Path,
) -> Result<(String, FileInfo)> {
    let name = format.file_name();
    let path = out_dir.join(name);
    let info = match format {
        ExtraFormat::Sqlite => sqlite::write(parts, errors, &path)?,
        ExtraFormat::Jsonl => jsonl::write(parts, &path)?,
        ExtraFormat::Csv => csv::write(parts, &path)?,
    };
    tracing::debug!(
        file = name,
        rows = info.rows,
        bytes = info.bytes,
        "wrote output format"
    );
    Ok((name.to_owned(), info))
}

/// A column of the output, as the first part declares it.
struct Column {
    name: String,
    data_type: DataType,
}

impl Column {
    fn kind(&self) -> Kind {
        Kind::of(&self.data_type)
    }
}

/// The value types the writers know; every Arrow type is brought onto one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    UInt,
    Int,
    Float,
    Bool,
    Text,
}

impl Kind {
    fn of(data_type: &DataType) -> Kind {
        match data_type {
            DataType::UInt64 => Kind::UInt,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Kind::Int,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Kind::Float,
            DataType::Boolean => Kind::Bool,
            _ => Kind::Text,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::UInt => DataType::UInt64,
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Bool => DataType::Boolean,
            Kind::Text => DataType::Utf8,
        }
    }
}

/// One column of a record batch, after [`normalize`].
#[derive(Clone, Copy)]
enum Cells<'a> {
    UInt(&'a UInt64Array),
    Int(&'a Int64Array),
    Float(&'a Float64Array),
    Bool(&'a BooleanArray),
    Text(&'a StringArray),
}

/// One value of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell<'a> {
    Null,
    UInt(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(&'a str),
}

impl<'a> Cells<'a> {
    fn new(array: &'a ArrayRef, path: &Path) -> Result<Self> {
        let cells = match array.data_type() {
            DataType::UInt64 => array.as_primitive_opt::<UInt64Type>().map(Cells::UInt),
            DataType::Int64 => array.as_primitive_opt::<Int64Type>().map(Cells::Int),
            DataType::Float64 => array.as_primitive_opt::<Float64Type>().map(Cells::Float),
            DataType::Boolean => array.as_boolean_opt().map(Cells::Bool),
            DataType::Utf8 => array.as_string_opt::<i32>().map(Cells::Text),
            _ => None,
        };
        cells.ok_or_else(|| {
            DataError::invalid(
                path,
                format!("unexpected column type {}", array.data_type()),
            )
        })
    }

    fn get(self, row: usize) -> Cell<'a> {
        match self {
            Cells::UInt(a) if a.is_valid(row) => Cell::UInt(a.value(row)),
            Cells::Int(a) if a.is_valid(row) => Cell::Int(a.value(row)),
            Cells::Float(a) if a.is_valid(row) => Cell::Float(a.value(row)),
            Cells::Bool(a) if a.is_valid(row) => Cell::Bool(a.value(row)),
            Cells::Text(a) if a.is_valid(row) => Cell::Text(a.value(row)),
            _ => Cell::Null,
        }
    }
}

/// Brings every column of `batch` onto its [`Kind`]'s Arrow type.
fn normalize(batch: &RecordBatch, path: &Path) -> Result<Vec<ArrayRef>> {
    batch
        .columns()
        .iter()
        .map(|array| {
            let target = Kind::of(array.data_type()).data_type();
            if array.data_type() == &target {
                Ok(array.clone())
            } else {
                cast(array, &target).map_err(|e| DataError::arrow(path, e))
            }
        })
        .collect()
}

/// The output's columns: the first part's, or `_item` alone when there are no parts.
fn output_columns(parts: &[PathBuf]) -> Result<Vec<Column>> {
    let Some(first) = parts.first() else {
        return Ok(vec![Column {
            name: ITEM_COLUMN.to_owned(),
            data_type: DataType::UInt64,
        }]);
    };
    let builder = open_builder(first)?;
    let schema = builder.schema();
    match schema.fields().first() {
        Some(f) if f.name() == ITEM_COLUMN && f.data_type() == &DataType::UInt64 => {}
        _ => {
            return Err(DataError::invalid(
                first,
                format!("a result part must start with the uint64 column `{ITEM_COLUMN}`"),
            ));
        }
    }
    Ok(schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().clone(),
        })
        .collect())
}

/// Every output row is shaped by the first part's columns, so a part with other columns
/// (from another merge) cannot be written faithfully: refuse it rather than misalign values.
fn check_columns(schema: &Schema, columns: &[Column], path: &Path) -> Result<()> {
    let here: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let there: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    if here == there {
        return Ok(());
    }
    let at = here
        .iter()
        .zip(&there)
        .position(|(a, b)| a != b)
        .unwrap_or(here.len().min(there.len()));
    Err(DataError::invalid(
        path,
        format!(
            "columns differ from the first part's: column {at} is {:?} here, {:?} there",
            here.get(at).copied().unwrap_or("(none)"),
            there.get(at).copied().unwrap_or("(none)")
        ),
    ))
}

/// Feeds every row of the parts, in order, to `sink` one record batch at a time: `sink` gets
/// the batch's columns (in output column order) and its number of rows. Returns the rows
/// read, checked against each part's footer so a truncated part cannot pass unnoticed.
fn for_each_batch(
    parts: &[PathBuf],
    columns: &[Column],
    mut sink: impl FnMut(&[Cells<'_>], usize) -> Result<()>,
) -> Result<u64> {
    let mut total = 0u64;
    for part in parts {
        let builder = open_builder(part)?;
        check_columns(builder.schema(), columns, part)?;
        let promised = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let batch_rows = crate::parquet_io::batch_rows_for(builder.metadata(), MAX_BATCH_ROWS);
        let reader = builder
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| DataError::parquet(part, e))?;
        let mut read = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| DataError::arrow(part, e))?;
            if batch.num_rows() == 0 {
                continue;
            }
            let arrays = normalize(&batch, part)?;
            let cells = arrays
                .iter()
                .map(|a| Cells::new(a, part))
                .collect::<Result<Vec<_>>>()?;
            sink(&cells, batch.num_rows())?;
            read += batch.num_rows() as u64;
        }
        if read != promised {
            return Err(DataError::invalid(
                part,
                format!("footer promises {promised} rows, read {read}"),
            ));
        }
        total += read;
    }
    Ok(total)
}

/// Appends a number the way JSON writes it: integers as digits, finite floats as their
/// shortest round-trip text with a `.0` or an exponent (`1.0`, `1e+300`) so they read back as
/// floats. Returns false, appending nothing, for a cell that is not a number or not finite.
fn push_number(out: &mut Vec<u8>, cell: Cell<'_>) -> io::Result<bool> {
    match cell {
        Cell::UInt(v) => serde_json::to_writer(&mut *out, &v)?,
        Cell::Int(v) => serde_json::to_writer(&mut *out, &v)?,
        Cell::Float(v) if v.is_finite() => serde_json::to_writer(&mut *out, &v)?,
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn number(cell: Cell<'_>) -> Option<String> {
        let mut out = Vec::new();
        push_number(&mut out, cell)
            .unwrap()
            .then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn numbers_read_back_with_their_type() {
        assert_eq!(
            number(Cell::UInt(u64::MAX)).unwrap(),
            "18446744073709551615"
        );
        assert_eq!(number(Cell::Int(i64::MIN)).unwrap(), "-9223372036854775808");
        assert_eq!(number(Cell::Float(2.0)).unwrap(), "2.0");
        assert_eq!(number(Cell::Float(1e300)).unwrap(), "1e+300");
        assert_eq!(number(Cell::Float(-0.1)).unwrap(), "-0.1");
        assert_eq!(number(Cell::Float(f64::NAN)), None);
        assert_eq!(number(Cell::Float(f64::NEG_INFINITY)), None);
        assert_eq!(number(Cell::Text("1")), None);
        assert_eq!(number(Cell::Null), None);
    }

    #[test]
    fn kinds_cover_foreign_types() {
        assert_eq!(Kind::of(&DataType::UInt32), Kind::Int);
        assert_eq!(Kind::of(&DataType::Float32), Kind::Float);
        assert_eq!(Kind::of(&DataType::LargeUtf8), Kind::Text);
        assert_eq!(Kind::of(&DataType::Date32), Kind::Text);
        assert_eq!(Kind::of(&DataType::Null), Kind::Text);
    }

    #[test]
    fn format_names() {
        let names: Vec<_> = ExtraFormat::ALL.iter().map(|f| f.file_name()).collect();
        assert_eq!(names, ["output.sqlite", "output.jsonl", "output.csv"]);
        assert_eq!(ExtraFormat::Jsonl.name(), "jsonl");
    }
}
