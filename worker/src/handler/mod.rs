//! Handlers: the function the worker runs on every item.
//!
//! Why one trait: the worker's retry, checkpoint and result logic must not care whether an item
//! is answered by a builtin, by an external process speaking JSON lines (docs/job-spec.md, "Handlers") or by a native
//! Rust handler that a team links into its own worker binary. All three implement [`Handler`] and
//! report per-item failures as an [`Outcome`] carrying an [`ErrorKind`], so that the worker
//! decides retries from the kind alone (and the wait an API asked for, [`ItemFailure::retry_after`]).
//! An [`Answer`] also carries the [`Usage`] a call reports (tokens it consumed, by rate limit
//! name): a limit paid after the fact can only be charged once the answer is in.
//!
//! Items and results stay as raw JSON text ([`RawValue`]) end to end: the worker never needs to
//! look inside an item, and not building a `serde_json::Value` tree per item keeps the per-item
//! overhead small (docs/benchmarks.md).

mod builtin;
mod exec;
mod http;

use std::path::PathBuf;
use std::time::Duration;

use orch_core::ErrorCategory;
use orch_core::model::ErrorKind;
use serde_json::value::RawValue;

pub use builtin::{Identity, Sleep};
pub use exec::{ExecConfig, ExecHandler, PIPELINE_DEPTH, handler_env};
#[doc(hidden)]
pub use exec::{ReadAnswers, read_answers};
pub use http::{HttpConfig, HttpHandler};

/// Why one item failed. The worker retries, records or escalates it according to `kind`.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemFailure {
    pub kind: ErrorKind,
    pub message: String,
    /// The handler cannot go on (e.g. its process keeps crashing): the worker ends the attempt
    /// instead of retrying the item.
    pub fatal: bool,
    /// How long the API asked to wait before the next try (`Retry-After`, an exec handler's
    /// `retryAfter`): a retry waits at least this long, longer if the backoff says so.
    pub retry_after: Option<Duration>,
    /// The handler process died with other items in flight: which of them made it die is
    /// unknown, so the try is not charged to this item; the worker runs it again alone.
    pub shared_crash: bool,
}

impl ItemFailure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ItemFailure {
            kind,
            message: message.into(),
            fatal: false,
            retry_after: None,
            shared_crash: false,
        }
    }

    /// The API refused for its rate; retried like a transient failure.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RateLimited, message)
    }

    /// The same failure, to be retried no sooner than `wait` from now (when `Some`).
    pub fn with_retry_after(self, wait: Option<Duration>) -> Self {
        ItemFailure {
            retry_after: wait,
            ..self
        }
    }

    /// An infrastructure failure that ends the attempt.
    pub fn fatal(message: impl Into<String>) -> Self {
        ItemFailure {
            fatal: true,
            ..Self::infrastructure(message)
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    pub fn infrastructure(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Infrastructure, message)
    }
}

impl std::fmt::Display for ItemFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// The answer of a handler for one item.
#[derive(Debug)]
pub enum Outcome {
    /// The result JSON: an object becomes one output row, a list becomes several rows.
    Ok(Box<RawValue>),
    Err(ItemFailure),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

/// Tokens one call consumed, by the name of the rate limit they count against (an exec
/// handler's `"usage": {"openai": 1234}`). Usually empty, and an empty `Vec` does not allocate:
/// the identity hot path pays nothing for it.
pub type Usage = Vec<(String, u64)>;

/// What a call gives back: its [`Outcome`] and the [`Usage`] it reported (on results and on
/// errors alike: a refused call may still have cost tokens).
#[derive(Debug)]
pub struct Answer {
    pub outcome: Outcome,
    pub usage: Usage,
}

impl Answer {
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl From<Outcome> for Answer {
    fn from(outcome: Outcome) -> Self {
        Answer {
            outcome,
            usage: Usage::new(),
        }
    }
}

/// The function run on every item.
#[async_trait::async_trait]
pub trait Handler: Send + Sync {
    /// Runs one item. `item` is valid JSON. Must never panic; failures are [`Outcome::Err`].
    async fn call(&self, item: &RawValue) -> Answer;

    /// Stops whatever the handler started (kills the process); idempotent.
    async fn shutdown(&self) {}

    /// How many calls the item loop may have open at once, when that is not
    /// `handler.concurrency`: an exec handler that announced a pipeline takes more requests
    /// queued than it works on. Asked again as the loop goes (the announcement comes after the
    /// start). Default `None`.
    fn window(&self) -> Option<usize> {
        None
    }

    /// `Some(result)` when the handler can answer synchronously without awaiting (identity): lets
    /// the worker run a tight loop with no async overhead. Default `None`.
    fn call_sync(&self, _item: &RawValue) -> Option<Answer> {
        None
    }
}

/// Why a handler could not be started. Per-item trouble is never a `HandlerError`: it is an
/// [`Outcome::Err`].
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("handler command is empty")]
    EmptyCommand,
    #[error("handler concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("handler working directory {} is not a directory", path.display())]
    Workdir { path: PathBuf },
    #[error("cannot open handler stderr log {}: {source}", path.display())]
    StderrLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start handler program `{program}`: {}", spawn_reason(source))]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// A bad `http` handler setting (template, header). Names the setting, never a header
    /// value: those may be secrets.
    #[error("http handler: {0}")]
    HttpSpec(String),
    /// A header's `fromEnv` or `secretRef` variable is not set in the worker's environment.
    #[error(
        "http handler: header `{header}` reads the environment variable `{variable}`, which is not set"
    )]
    MissingEnv { header: String, variable: String },
    #[error("http handler: cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// A variable of `exec.env` that cannot be set: its reference is malformed, or the
    /// variable it reads is not set in the worker's environment. Names them, never a value.
    #[error("exec handler: env `{name}` {why}")]
    ExecEnv { name: String, why: String },
}

fn spawn_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            format!("not found in PATH or the working directory ({err})")
        }
        std::io::ErrorKind::PermissionDenied => format!("not executable ({err})"),
        _ => err.to_string(),
    }
}

impl HandlerError {
    /// The category used for retries, metrics and events.
    pub fn category(&self) -> ErrorCategory {
        match self {
            HandlerError::EmptyCommand
            | HandlerError::ZeroConcurrency
            | HandlerError::HttpSpec(_) => ErrorCategory::Invalid,
            // A secret missing on this node (a Slurm node without the variable exported) may
            // be present on another.
            HandlerError::MissingEnv { .. }
            | HandlerError::ExecEnv { .. }
            | HandlerError::HttpClient(_) => ErrorCategory::Infrastructure,
            // A program or directory missing on this node may be present on another one (a
            // missing module, an unmounted file system): let the task be retried elsewhere.
            HandlerError::Workdir { .. }
            | HandlerError::StderrLog { .. }
            | HandlerError::Spawn { .. } => ErrorCategory::Infrastructure,
        }
    }
}
