//! `orch-runtime`: the adapters around `orch-core` that run a job on one machine.
//!
//! - [`backends`]: the stores of one process as trait objects (embedded or AWS), with scratch
//!   space for files on their way to a remote store;
//! - [`fs_store`], [`sqlite_state`], [`sqlite_queue`]: the embedded backends behind the core's
//!   traits (a directory, SQLite files);
//! - [`input`]: the job's input files (one, a directory or a glob; compressed ones decompressed
//!   into storage) cut into batches;
//! - [`local_executor`]: worker processes as an array with bounded parallelism;
//! - [`driver`]: the standalone driver, which runs the engine's observe → decide → act loop
//!   against those backends (`orch run`);
//! - [`control`]: pause, resume, cancel, retry and purge of a stored job from outside its
//!   driver (the operator's `OrchJob` changes);
//! - [`contract`]: the behaviour every backend implementation must show, as reusable tests.

pub mod aggregate;
pub mod backends;
pub mod contract;
pub mod control;
pub mod driver;
pub mod error;
pub mod fs_store;
pub mod input;
pub mod local_executor;
pub mod platform;
pub mod sqlite_queue;
pub mod sqlite_state;
pub mod task_cache;

pub use error::{Error, Result};
