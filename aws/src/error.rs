//! The error type of `orch-aws`, and the one place where SDK errors become orch categories.
//!
//! Throttling, 5xx and network trouble are `Transient` (the SDK has already retried them with
//! backoff and jitter by the time they reach us); a lost condition is a `Conflict`, which the
//! engine expects as part of optimistic locking; missing resources and access denials are
//! configuration problems that no retry fixes. Messages name the operation, the resource and
//! the service's error code — never request headers, credentials or configuration values.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use orch_core::ErrorCategory;
use orch_core::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// A call to an AWS service failed.
    #[error("{service} {operation} {resource}: {code}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Service {
        service: &'static str,
        operation: &'static str,
        resource: String,
        /// The service's error code (`SlowDown`, `ConditionalCheckFailedException`, …) or the
        /// kind of transport failure.
        code: String,
        message: String,
        category: ErrorCategory,
        /// The write lost its condition (`If-None-Match`, a DynamoDB condition expression).
        conflict: bool,
    },
    /// Bad configuration or input at the edge (an invalid key, bucket name or setting).
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// A stored item or message does not decode.
    #[error("{what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl AwsError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            AwsError::Service { category, .. } => *category,
            AwsError::Invalid { .. } => ErrorCategory::Invalid,
            AwsError::Decode { .. } => ErrorCategory::Permanent,
            AwsError::Io { .. } => ErrorCategory::Infrastructure,
        }
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, AwsError::Service { conflict: true, .. })
    }

    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        AwsError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

impl From<AwsError> for BackendError {
    fn from(e: AwsError) -> Self {
        if e.is_conflict() {
            return BackendError::Conflict(e.to_string());
        }
        let category = e.category();
        BackendError::other(category, e.to_string(), e)
    }
}

pub type Result<T, E = AwsError> = std::result::Result<T, E>;

/// Error codes that mean "slow down / try again" on any of the three services.
const THROTTLING: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "TransactionConflictException",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Error codes of a lost write condition.
const CONFLICT: &[&str] = &[
    "PreconditionFailed",
    "ConditionalCheckFailedException",
    "ConditionalRequestConflict",
];

/// Error codes of a missing or inaccessible resource: configuration, not chance.
const CONFIGURATION: &[&str] = &[
    "NoSuchBucket",
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
];

/// Turns an SDK error into an [`AwsError`] with its category. Works for every SDK client: they
/// share the smithy error and response types.
pub(crate) fn sdk_error<E>(
    service: &'static str,
    operation: &'static str,
    resource: impl Into<String>,
    err: SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let (code, message, category, conflict) = match &err {
        SdkError::DispatchFailure(_) => (
            "DispatchFailure".to_string(),
            "cannot reach the service".to_string(),
            ErrorCategory::Transient,
            false,
        ),
        SdkError::TimeoutError(_) => (
            "Timeout".to_string(),
            "the request timed out".to_string(),
            ErrorCategory::Transient,
            false,
        ),
        SdkError::ResponseError(_) => (
            "ResponseError".to_string(),
            "the response could not be read".to_string(),
            ErrorCategory::Transient,
            false,
        ),
        SdkError::ConstructionFailure(_) => (
            "ConstructionFailure".to_string(),
            "the request could not be built".to_string(),
            ErrorCategory::Invalid,
            false,
        ),
        _ => {
            let code = err
                .code()
                .map(str::to_string)
                .or_else(|| status.map(|s| format!("HTTP {s}")))
                .unwrap_or_else(|| "Unknown".to_string());
            let message = err.message().unwrap_or_default().to_string();
            let conflict = CONFLICT.contains(&code.as_str()) || status == Some(412);
            let category = if conflict || THROTTLING.contains(&code.as_str()) {
                ErrorCategory::Transient
            } else if CONFIGURATION.contains(&code.as_str()) {
                ErrorCategory::Invalid
            } else {
                match status {
                    Some(429) | Some(500..=599) => ErrorCategory::Transient,
                    Some(403) | Some(404) => ErrorCategory::Invalid,
                    _ => ErrorCategory::Permanent,
                }
            };
            (code, message, category, conflict)
        }
    };
    AwsError::Service {
        service,
        operation,
        resource: resource.into(),
        code,
        message,
        category,
        conflict,
    }
}
