//! The dashboard's one error type: what a request could not do, with its category (for the
//! log) and the HTTP status the page gets.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orch_core::backend::BackendError;
use orch_core::error::ErrorCategory;

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("no job `{0}` in this storage")]
    NoJob(String),
    #[error("job {job} has no task {task}")]
    NoTask { job: String, task: u32 },
    #[error(
        "this dashboard is read-only (start it with actions allowed to pause, resume, cancel or retry)"
    )]
    ReadOnly,
    #[error("{0}")]
    Refused(String),
    #[error("cannot read {0}")]
    Unreadable(String),
    #[error(transparent)]
    Runtime(#[from] orch_runtime::Error),
    #[error(transparent)]
    Store(#[from] BackendError),
}

impl DashboardError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            DashboardError::NoJob(_)
            | DashboardError::NoTask { .. }
            | DashboardError::ReadOnly
            | DashboardError::Refused(_) => ErrorCategory::Invalid,
            DashboardError::Unreadable(_) => ErrorCategory::Permanent,
            DashboardError::Runtime(e) => e.category(),
            DashboardError::Store(e) => e.category(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            DashboardError::NoJob(_) | DashboardError::NoTask { .. } => StatusCode::NOT_FOUND,
            DashboardError::ReadOnly => StatusCode::FORBIDDEN,
            DashboardError::Refused(_) => StatusCode::BAD_REQUEST,
            _ => match self.category() {
                // A concurrent change (the driver wrote the job first): try again.
                ErrorCategory::Transient => StatusCode::CONFLICT,
                ErrorCategory::Invalid => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, category = ?self.category(), "dashboard request failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
