//! The one error type of `orch-core`.
//!
//! Every error carries an [`ErrorCategory`] so that callers (the driver, the worker, later the
//! operator) can decide uniformly whether to retry, how to count it in metrics and which event
//! reason to emit, without matching on individual variants.

use std::path::PathBuf;

/// How an error should be treated by whoever observes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorCategory {
    /// Bad input from the user (job file, CLI flags): never retried, exit code 2.
    Invalid,
    /// May succeed when tried again (contention, lost lease, a service hiccup).
    Transient,
    /// Will fail the same way again (corrupt data, missing object).
    Permanent,
    /// Machine, process or service trouble: retry the task elsewhere.
    Infrastructure,
}

/// One problem found while validating a job spec: the field path and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.batch.size`.
    pub path: String,
    /// What is wrong, written for a person.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Errors of the core crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: malformed YAML{location}: {message}")]
    Yaml {
        file: PathBuf,
        location: String,
        message: String,
    },
    #[error("{file}: {count} problem(s) in the job spec:\n{}", list(.errors))]
    Invalid {
        file: PathBuf,
        count: usize,
        errors: Vec<FieldError>,
    },
    #[error("state transition of task {task} from {from} to {to} is not allowed")]
    Transition {
        task: u32,
        from: crate::model::TaskState,
        to: crate::model::TaskState,
    },
    #[error("input {uri}: {message}")]
    Input { uri: String, message: String },
    #[error(
        "input item {ordinal} (at byte {offset}) is {bytes} bytes, over the limit of {limit} bytes"
    )]
    RecordTooLarge {
        ordinal: u64,
        offset: u64,
        bytes: u64,
        limit: u64,
    },
    /// A limit of the job's planning budget (`partition::PlanBudget`).
    #[error(transparent)]
    OverBudget(#[from] crate::partition::OverBudget),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} has schema version {found}, this orch understands up to {supported}")]
    SchemaVersion {
        what: String,
        found: u32,
        supported: u32,
    },
    /// The `job.json` a worker read is not the one its submitter wrote: changed since, by
    /// someone who may write the storage but should not (docs/security.md).
    #[error(
        "job {job}: job.json has sha256 {found}, not the {expected} its submitter gave; \
         refusing to run a spec the driver did not write"
    )]
    ManifestMismatch {
        job: String,
        expected: String,
        found: String,
    },
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// The category used for retries, metrics and events.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Read { .. } | Error::Yaml { .. } | Error::Invalid { .. } => {
                ErrorCategory::Invalid
            }
            Error::Input { .. } | Error::RecordTooLarge { .. } | Error::OverBudget(_) => {
                ErrorCategory::Invalid
            }
            Error::Transition { .. }
            | Error::Decode { .. }
            | Error::SchemaVersion { .. }
            | Error::ManifestMismatch { .. } => ErrorCategory::Permanent,
            Error::Io { .. } => ErrorCategory::Infrastructure,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Whether `e`, or an error it was caused by, is a full disk (or an exhausted quota): not a
/// hiccup that passes by waiting, so whoever meets it stops and says so instead of retrying.
/// Stores report it as an [`std::io::Error`] of kind `StorageFull` or `QuotaExceeded` in the
/// chain of sources.
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        })
    })
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
