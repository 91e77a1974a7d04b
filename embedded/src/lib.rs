//! `orch-embedded`: the backends of a job that lives on one machine, behind the core's ports.
//!
//! - [`fs_store`]: the object store on a directory (atomic writes, create-once);
//! - [`sqlite_state`]: the state store on SQLite (WAL, optimistic locking on `version`);
//! - [`sqlite_queue`]: the retry queue on SQLite (delays, visibility timeouts, dead letters);
//! - [`sqlite_ratelimit`]: the rate-limit buckets on SQLite, shared by every job on the storage;
//! - [`local_executor`]: worker processes as an array with bounded parallelism;
//! - [`platform`]: the four assembled for a storage directory ([`EmbeddedPlatform`]).
//!
//! Nothing here knows the driver: `orch-runtime` runs jobs against the ports, and
//! `orch-connect` decides when a job's storage is a directory. See docs/architecture.md.

pub mod fs_store;
pub mod local_executor;
pub mod platform;
pub mod sqlite_audit;
pub mod sqlite_queue;
pub mod sqlite_ratelimit;
pub mod sqlite_state;

pub use fs_store::FsStore;
pub use local_executor::{LocalExecutor, WorkerLaunch};
pub use platform::EmbeddedPlatform;
pub use sqlite_queue::SqliteQueue;
pub use sqlite_state::SqliteStateStore;
