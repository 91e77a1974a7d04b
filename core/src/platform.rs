//! The place a job's data lives, as the code that runs a job sees it: the stores of one process
//! ([`Backends`]), the locations outside the job's storage ([`Locations`]), and what a driver
//! needs besides its stores ([`Platform`]: a job lock, the retry queue, a log directory).
//!
//! A job on a directory runs against the embedded implementations (`orch-embedded`), a job on
//! `s3://` against the AWS ones (`orch-aws`); `orch-connect` is the one place that picks. The
//! driver, the workers and the merge tasks see only these types, so they are the same code for
//! both. Files are always built in a local directory first: the store's own one when it has
//! local paths (no copy), the scratch directory otherwise (then uploaded). See
//! docs/architecture.md.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{
    AuditLog, BackendError, BackendResult, Executor, ObjectStore, Queue, RateLimitStore, StateStore,
};
use crate::error::ErrorCategory;
use crate::model::JobRecord;
use crate::uri::Location;

/// Opens locations that are not the job's storage: the input, the output.
pub trait Locations: Send + Sync {
    /// The store holding `uri` and the key of `uri` in it; `None` for a local path, which the
    /// caller reads or writes directly.
    fn open(&self, uri: &str) -> BackendResult<Option<(Arc<dyn ObjectStore>, String)>>;
}

/// The locations of a machine without cloud credentials: local paths only.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalLocations;

impl Locations for LocalLocations {
    fn open(&self, uri: &str) -> BackendResult<Option<(Arc<dyn ObjectStore>, String)>> {
        match Location::local_path(uri) {
            Ok(_) => Ok(None),
            Err(_) => Err(BackendError::message(
                ErrorCategory::Invalid,
                format!(
                    "{uri} is not a local path, and this process has no S3 access (storage.uri is local)"
                ),
            )),
        }
    }
}

/// The stores of one process.
#[derive(Clone)]
pub struct Backends {
    pub objects: Arc<dyn ObjectStore>,
    pub state: Arc<dyn StateStore>,
    /// The rate-limit buckets of this storage.
    pub rate_limits: Arc<dyn RateLimitStore>,
    /// The operator's audit log of this storage.
    pub audit: Arc<dyn AuditLog>,
    /// Node-local directory for files on their way to or from a remote store.
    pub scratch: PathBuf,
    pub locations: Arc<dyn Locations>,
}

impl Backends {
    /// Where to build (or find) the object `key` as a local file: the store's own path when it
    /// has one, else a path under the scratch directory mirroring the key. The parent
    /// directory exists on return. The second value says whether the file must be uploaded
    /// (and, for reading, downloaded first).
    pub fn local_file(&self, key: &str) -> BackendResult<(PathBuf, bool)> {
        let (path, remote) = match self.objects.local_path(key) {
            Some(path) => (path, false),
            None => (self.scratch.join(key), true),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                BackendError::other(
                    ErrorCategory::Infrastructure,
                    format!("cannot create {}", dir.display()),
                    e,
                )
            })?;
        }
        Ok((path, remote))
    }

    /// The directory every key resolves under as a local file ([`Backends::local_file`]): the
    /// store's own root, or the scratch directory that mirrors a remote store. `true` for a
    /// mirror (files there must be downloaded before reading and uploaded after writing).
    pub fn local_root(&self) -> (PathBuf, bool) {
        // Any valid key's path, minus the key, is the root.
        match self.objects.local_path("jobs") {
            Some(path) => (path.parent().map(PathBuf::from).unwrap_or(path), false),
            None => (self.scratch.clone(), true),
        }
    }

    /// Makes the object `key` (built at `path` by [`Backends::local_file`]) visible in the
    /// store: a no-op for a local store, an upload for a remote one.
    pub async fn publish(
        &self,
        key: &str,
        path: &std::path::Path,
        remote: bool,
    ) -> BackendResult<()> {
        if remote {
            self.objects.put_file(key, path).await?;
        }
        Ok(())
    }
}

/// Proof that this process is the one driver of a job, held for the whole run.
#[async_trait]
pub trait JobLease: Send + Sync {
    /// Whether another driver has taken the job over (a lease that expired unrenewed); the
    /// driver then stops at once instead of racing it.
    fn lost(&self) -> bool {
        false
    }
    /// Gives the job up for the next driver.
    async fn release(self: Box<Self>);
}

/// The backends of one storage location, as the driver uses them.
#[async_trait]
pub trait Platform: Send + Sync {
    fn backends(&self) -> &Backends;
    /// The storage URI workers are started with.
    fn storage_uri(&self) -> String;
    /// Where the workers of `job` started on this machine write their logs.
    fn log_dir(&self, job: &str) -> PathBuf;
    /// Makes sure only one driver runs `job`: a second `orch run` fails at once instead of
    /// racing the first (an error of category `Invalid`).
    async fn lock_job(&self, job: &str) -> BackendResult<Box<dyn JobLease>>;
    /// The retry queue of one run of `job`.
    async fn retry_queue(&self, job: &JobRecord) -> BackendResult<Arc<dyn Queue>>;
}

/// Gives a job the executor its spec's `executor` section names: local processes, Slurm
/// arrays, Kubernetes Indexed Jobs. The driver asks once per run, after the job's record
/// exists; `orch-executors` implements it for what a workstation or a Slurm login node can
/// run, and the operator adds Kubernetes.
#[async_trait]
pub trait ExecutorFactory: Send + Sync {
    /// The executor of `job`, whose workers use `platform`'s storage. A section this factory
    /// cannot serve is an error of category `Invalid` that says where it can run.
    async fn executor(
        &self,
        job: &JobRecord,
        platform: &dyn Platform,
    ) -> BackendResult<Arc<dyn Executor>>;
}
