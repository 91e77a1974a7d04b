//! The one place that decides how orch's Parquet files are written and opened.
//!
//! Task results, error files and merged parts must share compression, row-group policy and
//! the atomic-rename discipline; keeping the writer set-up here means a change (say, zstd)
//! is made once and applies to every file orch produces.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::Result;
use crate::atomic::{AtomicFile, FileSink};
use crate::checksum::FileInfo;
use crate::error::DataError;

/// Default maximum rows per row group: large row groups make scans fast, and readers of
/// result files (DuckDB, Spark, pandas) handle 1M-row groups comfortably.
/// Defined by the job spec's default of `output.rowGroupRows`, so the two cannot drift apart.
pub const DEFAULT_ROW_GROUP_ROWS: usize = orch_core::spec::DEFAULT_ROW_GROUP_ROWS as usize;

/// A Parquet file being written under a temporary name; [`ParquetSink::finish`] publishes it.
pub(crate) struct ParquetSink {
    // Declared before `guard` so that on an early drop the file handle closes before the guard
    // deletes the temporary.
    writer: ArrowWriter<FileSink>,
    guard: AtomicFile,
    path: PathBuf,
    rows: u64,
}

impl ParquetSink {
    /// A file users read: the job's output, merged parts, error files.
    pub(crate) fn create(path: &Path, schema: SchemaRef, row_group_rows: usize) -> Result<Self> {
        Self::with_properties(path, schema, row_group_rows, true)
    }

    /// One task's results, read once by the merge, which encodes the output anew: without
    /// dictionary encoding, whose interning of every value is about a tenth of a no-op task's
    /// CPU and buys nothing in a file that is decoded once.
    pub(crate) fn create_task_result(path: &Path, schema: SchemaRef) -> Result<Self> {
        Self::with_properties(path, schema, DEFAULT_ROW_GROUP_ROWS, false)
    }

    fn with_properties(
        path: &Path,
        schema: SchemaRef,
        row_group_rows: usize,
        dictionary: bool,
    ) -> Result<Self> {
        let (guard, sink) = AtomicFile::create(path)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(dictionary)
            .set_max_row_group_row_count(Some(row_group_rows.max(1)))
            .build();
        let writer = ArrowWriter::try_new(sink, schema, Some(props))
            .map_err(|e| DataError::parquet(path, e))?;
        Ok(ParquetSink {
            writer,
            guard,
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| DataError::parquet(&self.path, e))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Bytes already on disk plus the encoder's estimate for the open row group.
    ///
    /// `bytes_written` alone stays near zero until a row group is flushed, which with
    /// 1M-row groups would let a file grow far past any size target.
    pub(crate) fn estimated_bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Writes the footer, fsyncs and renames the file into place.
    pub(crate) fn finish(self) -> Result<FileInfo> {
        let ParquetSink {
            writer,
            guard,
            path,
            rows,
        } = self;
        // `into_inner` flushes the last row group and writes the footer exactly once
        // (calling `finish` first would write a second footer).
        let sink = writer
            .into_inner()
            .map_err(|e| DataError::parquet(&path, e))?;
        let (bytes, sha256) = guard.commit(sink)?;
        Ok(FileInfo {
            rows,
            bytes,
            sha256,
        })
    }
}

/// Opens a Parquet file for reading in batches of about `batch_rows` rows.
pub(crate) fn open_reader(path: &Path, batch_rows: usize) -> Result<ParquetRecordBatchReader> {
    let builder = open_builder(path)?;
    builder
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| DataError::parquet(path, e))
}

/// Opens a Parquet file and reads its footer.
pub(crate) fn open_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| DataError::parquet(path, e))
}

/// Record-batch size in bytes that readers aim for, so that memory stays bounded whatever the
/// row width.
pub(crate) const TARGET_BATCH_BYTES: u64 = 16 << 20;

/// Rows per record batch for a file, from the uncompressed sizes in its footer: about
/// [`TARGET_BATCH_BYTES`] of data, at most `max_rows` rows.
pub(crate) fn batch_rows_for(
    metadata: &parquet::file::metadata::ParquetMetaData,
    max_rows: usize,
) -> usize {
    let (bytes, rows) = metadata
        .row_groups()
        .iter()
        .fold((0u64, 0u64), |(b, r), rg| {
            (
                b + u64::try_from(rg.total_byte_size()).unwrap_or(0),
                r + u64::try_from(rg.num_rows()).unwrap_or(0),
            )
        });
    let per_row = bytes.checked_div(rows).unwrap_or(1).max(1);
    usize::try_from(TARGET_BATCH_BYTES / per_row)
        .unwrap_or(max_rows)
        .clamp(1, max_rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow_array::StringArray;
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    /// Whether every column chunk of the file at `path` has a dictionary page.
    fn dictionary_pages(path: &Path) -> Vec<bool> {
        let builder = open_builder(path).unwrap();
        builder
            .metadata()
            .row_groups()
            .iter()
            .flat_map(|g| g.columns().iter())
            .map(|c| c.dictionary_page_offset().is_some())
            .collect()
    }

    #[test]
    fn task_results_skip_the_dictionary_that_output_files_keep() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let values: Vec<&str> = (0..1000).map(|i| ["a", "b"][i % 2]).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])
            .unwrap();
        let write = |sink: Result<ParquetSink>| {
            let mut sink = sink.unwrap();
            sink.write(&batch).unwrap();
            sink.finish().unwrap();
        };
        let (task, output) = (
            dir.path().join("task.parquet"),
            dir.path().join("out.parquet"),
        );
        write(ParquetSink::create_task_result(&task, schema.clone()));
        write(ParquetSink::create(&output, schema, DEFAULT_ROW_GROUP_ROWS));
        assert_eq!(dictionary_pages(&task), vec![false]);
        assert_eq!(dictionary_pages(&output), vec![true]);
    }
}
