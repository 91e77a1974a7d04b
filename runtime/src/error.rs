//! The error type of `orch-runtime`: what can stop the standalone driver, with the category
//! that decides the exit code and whether a retry can help.

use orch_core::ErrorCategory;
use orch_core::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] orch_core::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Reading or writing data files: Parquet input, results, the output.
    #[error("{0}")]
    Data(#[from] orch_data::DataError),
    /// A result file does not match the checksum its `_DONE` marker recorded.
    #[error("task {task} attempt {attempt}: {message}")]
    Integrity {
        task: u32,
        attempt: u32,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted; run the same command again to resume")]
    Interrupted,
    /// An alert channel that cannot be set up (its secret not where the spec says, a value
    /// that is no URL). Logged; the channel is left out, the job goes on.
    #[error("alert channel {channel}: {message}")]
    AlertSetup { channel: String, message: String },
    /// A notification a channel did not take. Logged; never fails the job.
    #[error("alert channel {channel}: {message}")]
    AlertDelivery { channel: String, message: String },
}

impl Error {
    /// A port's error as the driver reports it: one the port calls `Invalid` (a job already run
    /// by another driver, an executor section this process cannot serve, a partition the
    /// cluster does not have) refuses the job; anything else may pass and is retried.
    pub fn from_port(e: BackendError) -> Self {
        match e.category() {
            ErrorCategory::Invalid => Error::Invalid(e.to_string()),
            _ => Error::Backend(e),
        }
    }

    /// Whether a full disk (or quota) caused this error: the run stops, and once there is
    /// space again the same command resumes it.
    pub fn is_disk_full(&self) -> bool {
        orch_core::error::is_disk_full(self)
    }

    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Core(e) => e.category(),
            Error::Backend(e) => e.category(),
            Error::Data(e) => e.category(),
            Error::Integrity { .. } => ErrorCategory::Permanent,
            Error::Invalid(_) => ErrorCategory::Invalid,
            Error::Interrupted => ErrorCategory::Transient,
            Error::AlertSetup { .. } => ErrorCategory::Invalid,
            Error::AlertDelivery { .. } => ErrorCategory::Transient,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
