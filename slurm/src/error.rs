//! The error type of `orch-slurm`, with the category the engine retries by.

use orch_core::ErrorCategory;
use orch_core::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A job spec or cluster setting that cannot work (an unknown partition, a time limit over
    /// the partition's, a missing token): reported before anything is submitted.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Slurm refused or failed a request (`sbatch` exited non-zero, slurmrestd answered with
    /// errors). `transient` when trying again may help (slurmctld busy or restarting).
    #[error("{operation}: {message}")]
    Slurm {
        operation: String,
        message: String,
        transient: bool,
    },
    /// slurmctld or slurmrestd could not be reached.
    #[error("{operation}: cannot reach Slurm: {message}")]
    Unreachable { operation: String, message: String },
    /// An answer that does not parse.
    #[error("{operation}: unexpected answer from Slurm: {message}")]
    Decode { operation: String, message: String },
    /// A local file (token, script) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SlurmError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            SlurmError::Invalid { .. } => ErrorCategory::Invalid,
            SlurmError::Slurm {
                transient: true, ..
            }
            | SlurmError::Unreachable { .. } => ErrorCategory::Transient,
            SlurmError::Slurm { .. } | SlurmError::Decode { .. } => ErrorCategory::Permanent,
            SlurmError::Io { .. } => ErrorCategory::Infrastructure,
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SlurmError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<SlurmError> for BackendError {
    fn from(e: SlurmError) -> Self {
        BackendError::message(e.category(), format!("slurm: {e}"))
    }
}

pub type Result<T, E = SlurmError> = std::result::Result<T, E>;
