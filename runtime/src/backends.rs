//! The stores one process works against, whichever implementation they are.
//!
//! A driver, a worker and a merge task each get a [`Backends`]: the job's object store and
//! state store as trait objects, a node-local scratch directory, and a way to open input and
//! output locations outside the job's storage. The embedded backends (a directory, SQLite) and
//! the AWS ones (S3, DynamoDB) both produce one, so the code that runs a task never asks which
//! it has. Files are always built in a local directory first: the store's own one when it has
//! local paths (no copy), the scratch directory otherwise (then uploaded).

use std::path::PathBuf;
use std::sync::Arc;

use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, ObjectStore, StateStore};
use orch_core::uri::Location;

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
