//! The error type of the worker, with the category the engine uses to decide about retries.

use orch_core::ErrorCategory;
use orch_core::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] orch_core::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Runtime(#[from] orch_runtime::Error),
    #[error("result files: {0}")]
    Data(#[from] orch_data::DataError),
    #[error("handler: {0}")]
    Handler(#[from] crate::handler::HandlerError),
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A checkpoint file SQLite reads but orch cannot (written by a newer worker, or damaged).
    #[error("checkpoint {path} cannot be read: {reason}")]
    CheckpointDamaged { path: String, reason: String },
    #[error("{0}")]
    Setup(String),
    /// The node's scratch space is too short for a task (remote storage builds its files
    /// there): the attempt fails at once, to be retried, maybe elsewhere.
    #[error("{0}")]
    ScratchFull(String),
    /// The handler process keeps crashing: this attempt cannot go on.
    #[error("{0}")]
    HandlerGaveUp(String),
    /// Another attempt owns the task now; this worker's output must not be promoted.
    #[error("task {task} is no longer ours ({why}); stopping without committing")]
    LostLease { task: u32, why: String },
    /// Stopped by SIGTERM/SIGINT (preemption, scancel, the signal before a time limit).
    /// Whether items were done since the attempt started decides how the retry counts: with
    /// progress it resumes from the checkpoint for free; without, it uses an attempt, so a task
    /// whose item cannot finish before each stop (longer than its time limit) ends instead of
    /// going round forever.
    #[error("{}{}", if *near_time_limit { "stopped near its time limit (spec.resources.time)" } else { "stopped by a signal" }, if *progressed { "; progress is checkpointed" } else { " before finishing any item" })]
    Interrupted {
        progressed: bool,
        /// The stop is Slurm's checkpoint signal before the task's time limit
        /// (`ORCH_TASK_SIGNAL_AT`, set by the Slurm batch script).
        near_time_limit: bool,
    },
}

impl Error {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Core(e) => e.category(),
            Error::Backend(e) => e.category(),
            Error::Runtime(e) => e.category(),
            Error::Data(e) => e.category(),
            Error::Handler(_)
            | Error::HandlerGaveUp(_)
            | Error::Checkpoint { .. }
            | Error::CheckpointDamaged { .. }
            | Error::ScratchFull(_) => ErrorCategory::Infrastructure,
            Error::Setup(_) => ErrorCategory::Permanent,
            Error::LostLease { .. }
            | Error::Interrupted {
                progressed: true, ..
            } => ErrorCategory::Transient,
            Error::Interrupted {
                progressed: false, ..
            } => ErrorCategory::Infrastructure,
        }
    }

    /// The worker's exit code: 1 failed, 3 lost its lease, 130 interrupted.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::LostLease { .. } => 3,
            Error::Interrupted { .. } => 130,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
