//! Errors of the data layer and how the rest of orch should react to them.
//!
//! Every error carries enough context (the file path, the column) to be actionable in a task log
//! without a backtrace, and [`DataError::category`] maps it onto the core's retry categories: a
//! full disk or a vanished mount is the node's fault (retry the task elsewhere), a corrupt or
//! inconsistent file will be just as corrupt on the next attempt.

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;

use arrow_schema::ArrowError;
pub use orch_core::ErrorCategory;
use parquet::errors::ParquetError;

/// Everything that can go wrong while writing, reading, checking or merging result files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "rename", ...), for the log line.
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The Parquet library rejected a file we read or failed while writing one.
    #[error("parquet {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: ParquetError,
    },
    /// An Arrow computation (array construction, cast) failed.
    #[error("arrow {}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: ArrowError,
    },
    /// JSON (de)serialisation failed.
    #[error("json {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Input files disagree on a column in a way that cannot be unified.
    #[error("schema conflict in {}, column `{column}`: {detail}", path.display())]
    SchemaConflict {
        path: PathBuf,
        column: String,
        detail: String,
    },
    /// A handler result uses a column name that orch reserves for itself.
    #[error("item {item}: result key `{column}` is reserved by orch")]
    ReservedColumn { item: u64, column: String },
    /// A setting of the job's output spec that the data layer cannot use (normally caught
    /// earlier, by job-file validation).
    #[error("{field}: {reason}")]
    InvalidSpec { field: String, reason: String },
    /// A file is readable but does not hold what orch wrote there (missing column, nulls, ...).
    #[error("invalid file {}: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },
    /// Planning a Parquet input passed a limit of the job's budget.
    #[error(transparent)]
    OverBudget(#[from] orch_core::partition::OverBudget),
    /// A file's contents do not match the checksum or size recorded when it was written.
    #[error(
        "checksum mismatch for {}: expected {expected_bytes} bytes sha256 {expected_sha256}, \
         found {actual_bytes} bytes sha256 {actual_sha256}",
        path.display()
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected_bytes: u64,
        expected_sha256: String,
        actual_bytes: u64,
        actual_sha256: String,
    },
}

impl DataError {
    /// How the caller should react: retry now, give up on the item, or move the task elsewhere.
    pub fn category(&self) -> ErrorCategory {
        match self {
            DataError::Io { source, .. } => io_category(source),
            // The Parquet and Arrow libraries wrap I/O failures in their own error types; those
            // are still the disk's fault, not the data's.
            DataError::Parquet { source, .. } => chained_io_category(source),
            DataError::Arrow { source, .. } => match source {
                ArrowError::IoError(_, e) => io_category(e),
                other => chained_io_category(other),
            },
            DataError::Json { source, .. } => match source.io_error_kind() {
                Some(kind) => io_kind_category(kind),
                None => ErrorCategory::Permanent,
            },
            DataError::SchemaConflict { .. }
            | DataError::ReservedColumn { .. }
            | DataError::InvalidSpec { .. }
            | DataError::InvalidFile { .. }
            | DataError::ChecksumMismatch { .. } => ErrorCategory::Permanent,
            DataError::OverBudget(_) => ErrorCategory::Invalid,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DataError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, source: ParquetError) -> Self {
        DataError::Parquet {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn arrow(path: impl Into<PathBuf>, source: ArrowError) -> Self {
        DataError::Arrow {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        DataError::InvalidFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

fn io_kind_category(kind: io::ErrorKind) -> ErrorCategory {
    match kind {
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            ErrorCategory::Transient
        }
        // A truncated file reads as an unexpected EOF: the bytes are wrong, not the machine.
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => ErrorCategory::Permanent,
        _ => ErrorCategory::Infrastructure,
    }
}

fn io_category(e: &io::Error) -> ErrorCategory {
    io_kind_category(e.kind())
}

/// Looks for an `io::Error` anywhere in the source chain; without one the data is at fault.
fn chained_io_category(e: &(dyn StdError + 'static)) -> ErrorCategory {
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            return io_category(io_err);
        }
        if let Some(ParquetError::External(inner)) = err.downcast_ref::<ParquetError>() {
            // `ParquetError::External` does not expose its box through `source()`.
            if let Some(io_err) = inner.downcast_ref::<io::Error>() {
                return io_category(io_err);
            }
        }
        current = err.source();
    }
    ErrorCategory::Permanent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_infrastructure_unless_transient_or_truncation() {
        let e = DataError::io("write", "/x", io::Error::other("disk full"));
        assert_eq!(e.category(), ErrorCategory::Infrastructure);
        let e = DataError::io("read", "/x", io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(e.category(), ErrorCategory::Transient);
        let e = DataError::io("read", "/x", io::Error::from(io::ErrorKind::UnexpectedEof));
        assert_eq!(e.category(), ErrorCategory::Permanent);
    }

    #[test]
    fn wrapped_io_errors_keep_their_category() {
        let pe = ParquetError::from(io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(
            DataError::parquet("/x", pe).category(),
            ErrorCategory::Infrastructure
        );
        let pe = ParquetError::General("bad magic".into());
        assert_eq!(
            DataError::parquet("/x", pe).category(),
            ErrorCategory::Permanent
        );
        let ae = ArrowError::IoError("w".into(), io::Error::other("EIO"));
        assert_eq!(
            DataError::arrow("/x", ae).category(),
            ErrorCategory::Infrastructure
        );
    }

    #[test]
    fn data_errors_are_permanent() {
        let e = DataError::ChecksumMismatch {
            path: "/x".into(),
            expected_bytes: 1,
            expected_sha256: "a".into(),
            actual_bytes: 1,
            actual_sha256: "b".into(),
        };
        assert_eq!(e.category(), ErrorCategory::Permanent);
        assert_eq!(e.category(), ErrorCategory::Permanent);
        assert_eq!(
            serde_json::to_string(&ErrorCategory::Infrastructure).ok(),
            Some("\"infrastructure\"".to_string())
        );
    }
}
