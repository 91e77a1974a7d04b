//! Result data of orch: handler output to Parquet, checksums, and aggregation.
//!
//! Workers turn each task's handler results (JSON values) into typed Parquet files plus an
//! error file; the aggregation step merges thousands of those into a few large output files
//! (docs/job-spec.md, "Storage layout"). This crate is that data plane, kept free of orchestration concerns so the
//! worker, the standalone driver and the operator share one implementation. It only touches
//! local paths; getting files to and from object storage is the caller's job.
//!
//! Modules, and why each exists:
//! - [`error`]: one error type with a [`ErrorCategory`] per failure, so callers can apply the
//!   retry policy without inspecting messages.
//! - [`checksum`]: sizes and SHA-256 for the `_DONE` / `_SUCCESS` markers, and re-checking them.
//! - [`atomic`]: temp-file + fsync + rename, so no reader ever sees a partial file.
//! - [`results`]: schema inference from JSON rows and the per-task result file.
//! - [`declared`]: the per-task result file under a declared schema (`spec.output.schema`):
//!   conversion to fixed column types, with the rows that do not fit reported as item errors.
//! - [`item_errors`]: the fixed-schema file of failed items.
//! - [`schema`]: unifying the schemas that tasks inferred independently.
//! - [`merge`]: bounded-memory streaming merge into rolling `part-NNNNN.parquet` files.
//! - [`hierarchy`]: resumable level-by-level merge of many files in groups, sealed by `_DONE`.
//! - [`parquet_input`]: Parquet as job input: row-group batches and one batch's rows as JSON.
//!
//! Every file written here starts with the `_item` column (`UInt64`): the input ordinal that
//! lets any consumer check that nothing was lost or duplicated.

pub mod atomic;
pub mod checksum;
pub mod declared;
pub mod error;
pub mod formats;
pub mod hierarchy;
pub mod item_errors;
pub mod merge;
pub mod parquet_input;
mod parquet_io;
pub mod results;
pub mod schema;

pub use atomic::{write_bytes_atomic, write_json_atomic};
pub use checksum::{FileInfo, sha256_file, verify_file};
pub use declared::{
    DeclaredSchema, DeclaredWrite, SCHEMA_ERROR_KIND, SchemaFailure, write_results_parquet_declared,
};
pub use error::{DataError, ErrorCategory};
pub use formats::{ExtraFormat, write_format};
pub use hierarchy::{
    FinalMerge, FinalOutput, GroupOutcome, Hierarchy, HierarchyStats, merge_hierarchical,
};
pub use item_errors::{
    ItemError, errors_schema, merge_errors, read_errors_parquet, write_errors_parquet,
};
pub use merge::{MergeOptions, MergeOutput, merge_results, part_file_name};
pub use parquet_input::{
    MAX_FOOTER_BYTES, partition_parquet, partition_parquet_ranges, read_parquet_rows,
};
pub use parquet_io::DEFAULT_ROW_GROUP_ROWS;
pub use results::{
    ITEM_COLUMN, ResultRow, ResultRows, VALUE_COLUMN, write_result_rows, write_results_parquet,
};
pub use schema::ColumnSchema;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, DataError>;
