//! The [`Platform`] of a job stored in a directory: the directory as object store, SQLite for
//! the state and the retry queue, a file lock as the job lock, and worker logs next to the data
//! (`jobs/<job>/logs/`). This is what `orch run` uses on a laptop. See docs/architecture.md.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, Queue};
use orch_core::layout;
use orch_core::model::JobRecord;
use orch_core::platform::{Backends, JobLease, LocalLocations, Platform};
use orch_core::uri::Location;

use crate::fs_store::FsStore;
use crate::sqlite_audit::SqliteAuditLog;
use crate::sqlite_queue::SqliteQueue;
use crate::sqlite_ratelimit::SqliteRateLimitStore;
use crate::sqlite_state::SqliteStateStore;

/// The embedded backends of one storage directory.
pub struct EmbeddedPlatform {
    pub root: PathBuf,
    pub backends: Backends,
}

impl EmbeddedPlatform {
    /// Opens (creating if needed) the backends under a local storage URI (`file://…` or a
    /// path).
    pub fn open(storage_uri: &str) -> BackendResult<Self> {
        let root = Location::local_path(storage_uri)
            .map_err(|reason| BackendError::message(ErrorCategory::Invalid, reason))?;
        // Scratch space is under the storage directory: files are built in place and nothing
        // needs uploading.
        let backends = Backends {
            objects: Arc::new(FsStore::new(&root)?),
            state: Arc::new(SqliteStateStore::open(&root.join(layout::state_db()))?),
            rate_limits: Arc::new(SqliteRateLimitStore::open(
                &root.join(layout::rate_limits_db()),
            )?),
            audit: Arc::new(SqliteAuditLog::open(&root.join(layout::audit_db()))?),
            scratch: root.join("scratch"),
            locations: Arc::new(LocalLocations),
        };
        Ok(EmbeddedPlatform { root, backends })
    }

    /// Makes sure only one driver runs a job: a second `orch run` of the same job fails at once
    /// instead of racing the first. The lock is released when the returned file is dropped
    /// (also when the process dies).
    fn lock_file(&self, job: &str) -> BackendResult<std::fs::File> {
        let dir = self.root.join("locks");
        let io = |e: std::io::Error| {
            BackendError::other(
                ErrorCategory::Infrastructure,
                format!("cannot lock the job in {}", dir.display()),
                e,
            )
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let path = dir.join(format!("{job}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(BackendError::message(
                ErrorCategory::Invalid,
                format!(
                    "job {job} is already being run by another `orch run` (lock {})",
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

/// A held `flock` on `locks/<job>.lock`; the kernel releases it when the process dies.
struct FileLease(#[allow(dead_code)] std::fs::File);

#[async_trait]
impl JobLease for FileLease {
    async fn release(self: Box<Self>) {}
}

#[async_trait]
impl Platform for EmbeddedPlatform {
    fn backends(&self) -> &Backends {
        &self.backends
    }

    fn storage_uri(&self) -> String {
        Location::Local(self.root.clone()).to_uri()
    }

    fn log_dir(&self, job: &str) -> PathBuf {
        self.root.join(layout::task_logs(job))
    }

    async fn lock_job(&self, job: &str) -> BackendResult<Box<dyn JobLease>> {
        Ok(Box::new(FileLease(self.lock_file(job)?)))
    }

    /// The retry queue of one run of a job (a job run again starts with an empty queue, so no
    /// message of the earlier run can skip a backoff).
    async fn retry_queue(&self, job: &JobRecord) -> BackendResult<Arc<dyn Queue>> {
        Ok(Arc::new(SqliteQueue::open(
            &self.root.join("queue.sqlite"),
            &format!("retries-{}-{}", job.id, job.created_at),
        )?))
    }
}
