//! `orch-worker`: runs one task of a job — one batch of items — through a handler.
//!
//! - [`run`]: claim → read the batch range → items through the handler (retries, concurrency,
//!   checkpoints) → result files + `_DONE` → commit;
//! - [`handler`]: builtins, the `exec` JSON-lines protocol, and the [`handler::Handler`] trait
//!   for teams that link their own native handler into a worker binary;
//! - [`checkpoint`]: item progress in SQLite, for resume after a kill or preemption.

pub mod checkpoint;
pub mod error;
pub mod handler;
pub mod run;
pub mod scratch;

pub use error::{Error, Result};

/// Logs to stderr: JSON when `ORCH_LOG_FORMAT=json` (production), text otherwise; the level
/// comes from `ORCH_LOG` (default `info`).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ORCH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ORCH_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}
