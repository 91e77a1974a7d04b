//! Failed items: `errors.parquet` per task attempt and in the final output.
//!
//! Failures are data too: `orch status` counts them by kind, `orch retry --items` re-runs
//! them, and the tolerance check (`maxFailedItemsPercent`) needs their number. Keeping them
//! in a fixed-schema Parquet file beside the results means the same atomic, checksummed path
//! and the same merge machinery serve both.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_cast::cast;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::Result;
use crate::checksum::FileInfo;
use crate::error::DataError;
use crate::parquet_io::{DEFAULT_ROW_GROUP_ROWS, ParquetSink, open_reader};
use crate::results::ITEM_COLUMN;

/// Rows per batch when reading error files; error rows are small.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// A failed item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ItemError {
    /// 0-based input ordinal of the item.
    pub item: u64,
    /// `"transient"`, `"permanent"`, `"rate_limited"` or `"infrastructure"` (an item error kind of
    /// the handler protocol; a retried kind is recorded once its attempts are spent), or
    /// `"schema"` for a result that does not fit the declared output schema
    /// ([`crate::SCHEMA_ERROR_KIND`]).
    pub kind: String,
    pub message: String,
    /// How many times the item was tried before it was recorded as failed.
    pub attempts: u32,
}

/// The fixed schema of error files: `_item UInt64, kind Utf8, message Utf8, attempts UInt32`,
/// all non-null.
pub fn errors_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(ITEM_COLUMN, DataType::UInt64, false),
                Field::new("kind", DataType::Utf8, false),
                Field::new("message", DataType::Utf8, false),
                Field::new("attempts", DataType::UInt32, false),
            ]))
        })
        .clone()
}

fn errors_batch(errors: &[ItemError], path: &Path) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(errors.iter().map(|e| e.item))),
        Arc::new(StringArray::from_iter_values(
            errors.iter().map(|e| e.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            errors.iter().map(|e| e.message.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(
            errors.iter().map(|e| e.attempts),
        )),
    ];
    RecordBatch::try_new(errors_schema(), columns).map_err(|e| DataError::arrow(path, e))
}

/// Writes failed items to `path` atomically (temporary file, fsync, rename). With no errors
/// the file is still a valid Parquet file carrying the schema, so "no errors" and "errors
/// file missing" stay distinguishable.
pub fn write_errors_parquet(path: &Path, errors: &[ItemError]) -> Result<FileInfo> {
    let mut sink = ParquetSink::create(path, errors_schema(), DEFAULT_ROW_GROUP_ROWS)?;
    if !errors.is_empty() {
        sink.write(&errors_batch(errors, path)?)?;
    }
    sink.finish()
}

/// Brings a batch read from an error file onto [`errors_schema`], by column name, so that
/// files written by other tools (say, with `Int64` attempts or large strings) still load.
pub(crate) fn conform_errors_batch(batch: &RecordBatch, path: &Path) -> Result<RecordBatch> {
    let schema = errors_schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = batch.column_by_name(field.name()).ok_or_else(|| {
            DataError::invalid(path, format!("errors file lacks column `{}`", field.name()))
        })?;
        let column = if column.data_type() == field.data_type() {
            column.clone()
        } else {
            cast(column, field.data_type()).map_err(|e| DataError::arrow(path, e))?
        };
        if column.null_count() > 0 {
            return Err(DataError::invalid(
                path,
                format!("errors file has nulls in column `{}`", field.name()),
            ));
        }
        columns.push(column);
    }
    RecordBatch::try_new(schema, columns).map_err(|e| DataError::arrow(path, e))
}

/// Reads an `errors.parquet` back (used by `orch status` for "errors by kind").
pub fn read_errors_parquet(path: &Path) -> Result<Vec<ItemError>> {
    let reader = open_reader(path, READ_BATCH_ROWS)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| DataError::arrow(path, e))?;
        let batch = conform_errors_batch(&batch, path)?;
        let (items, kinds, messages, attempts) = downcast_errors(&batch, path)?;
        out.reserve(batch.num_rows());
        for i in 0..batch.num_rows() {
            out.push(ItemError {
                item: items.value(i),
                kind: kinds.value(i).to_owned(),
                message: messages.value(i).to_owned(),
                attempts: attempts.value(i),
            });
        }
    }
    Ok(out)
}

type ErrorColumns<'a> = (
    &'a UInt64Array,
    &'a StringArray,
    &'a StringArray,
    &'a UInt32Array,
);

fn downcast_errors<'a>(batch: &'a RecordBatch, path: &Path) -> Result<ErrorColumns<'a>> {
    fn col<'a, T: 'static>(batch: &'a RecordBatch, i: usize, path: &Path) -> Result<&'a T> {
        batch
            .column(i)
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| DataError::invalid(path, format!("unexpected type of column {i}")))
    }
    Ok((
        col(batch, 0, path)?,
        col(batch, 1, path)?,
        col(batch, 2, path)?,
        col(batch, 3, path)?,
    ))
}

/// Concatenates error files, in the given order, into one `errors.parquet` (atomic). Streams
/// batch by batch, so memory does not grow with the number or size of inputs.
pub fn merge_errors(inputs: &[PathBuf], out_path: &Path) -> Result<FileInfo> {
    let mut sink = ParquetSink::create(out_path, errors_schema(), DEFAULT_ROW_GROUP_ROWS)?;
    for input in inputs {
        for batch in open_reader(input, READ_BATCH_ROWS)? {
            let batch = batch.map_err(|e| DataError::arrow(input, e))?;
            sink.write(&conform_errors_batch(&batch, input)?)?;
        }
    }
    sink.finish()
}
