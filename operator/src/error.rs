//! The operator's one error type. Its [`ErrorCategory`] decides what the controller does with a
//! failed reconcile (requeue soon, later, or wait for a change) and labels the metrics.

use orch_core::ErrorCategory;
use orch_core::backend::BackendError;

/// What can go wrong while reconciling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The job's stores or executor failed.
    #[error(transparent)]
    Runtime(#[from] orch_runtime::Error),
    /// A store failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The operator's own configuration or an object it cannot work with.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// How to treat the error: `Invalid` waits for a change to the object, the others are
    /// retried with backoff.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Kube(kube::Error::Api(status)) => match status.code {
                400 | 404 | 422 => ErrorCategory::Invalid,
                403 => ErrorCategory::Permanent,
                _ => ErrorCategory::Transient,
            },
            Error::Kube(_) => ErrorCategory::Infrastructure,
            Error::Runtime(e) => e.category(),
            Error::Backend(e) => e.category(),
            Error::Invalid(_) => ErrorCategory::Invalid,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
