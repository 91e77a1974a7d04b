//! A job's `job.json` as workers read it: checked against the hash the coordinator passes, and
//! kept in a directory the workers of one machine share, so that on remote storage only the
//! first task of a job on a machine downloads it (docs/aws.md).

use std::path::{Path, PathBuf};

use orch_core::backend::ObjectStore;
use orch_core::layout;
use orch_core::model::{JobManifest, decode_manifest};
use tracing::debug;

use crate::error::{Error, Result};

/// `job`'s manifest: from `cache` when a copy with the `expected` hash is there, else from the
/// store (then kept in `cache` for the next task of the job on this machine). Without a cache
/// or an expected hash, always from the store.
pub async fn load(
    objects: &dyn ObjectStore,
    job: &str,
    expected: Option<&str>,
    cache: Option<&Path>,
) -> Result<JobManifest> {
    let cache = cache
        .zip(expected)
        .and_then(|(dir, sha)| Some((dir, cache_file(dir, job, sha)?)));
    let cached = cache.as_ref().map(|(_, path)| path);
    if let Some(path) = cached
        && let Ok(bytes) = std::fs::read(path)
    {
        // A copy that does not hash right (a torn disk, a hand edit) is read again from the store.
        match decode_manifest(job, &bytes, expected) {
            Ok(manifest) => return Ok(manifest),
            Err(e) => debug!(path = %path.display(), error = %e, "ignoring the cached job.json"),
        }
    }
    let key = layout::job_manifest(job);
    let bytes = objects
        .get(&key)
        .await?
        .ok_or_else(|| Error::Invalid(format!("job manifest {key} is missing")))?;
    let manifest = decode_manifest(job, &bytes, expected)?;
    if let Some((dir, path)) = &cache {
        // Best effort: without the copy the next task downloads it again.
        let written = match std::fs::create_dir_all(dir) {
            Ok(()) => orch_data::atomic::write_bytes_atomic(path, &bytes)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            debug!(path = %path.display(), error = %e, "could not cache job.json");
        }
    }
    Ok(manifest)
}

/// Where the copy of `job`'s manifest of hash `sha256` is kept; `None` for a hash that is not
/// one (it names a file).
fn cache_file(dir: &Path, job: &str, sha256: &str) -> Option<PathBuf> {
    let valid = layout::valid_job_id(job)
        && sha256.len() == 64
        && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| dir.join(format!("{job}.{sha256}.json")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cached_copy_with_the_right_hash_is_read_and_any_other_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = orch_embedded::FsStore::new(dir.path().join("store")).unwrap();
        let job = orch_testkit::contract::sample_job("cached-1", 1);
        let manifest = JobManifest {
            schema_version: orch_core::model::SCHEMA_VERSION,
            id: job.id.clone(),
            spec: job.spec.clone(),
            input_fingerprint: "f".into(),
            total_items: 10,
            total_tasks: 1,
            columns: None,
            rate_limits: Vec::new(),
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let sha = orch_core::model::manifest_sha256(&bytes);
        store
            .put(&layout::job_manifest(&job.id), bytes)
            .await
            .unwrap();
        let cache = dir.path().join("cache");

        // The first read downloads and keeps a copy; the next one needs no store.
        let first = load(&store, &job.id, Some(&sha), Some(&cache))
            .await
            .unwrap();
        assert_eq!(first, manifest);
        let empty = orch_embedded::FsStore::new(dir.path().join("empty")).unwrap();
        let again = load(&empty, &job.id, Some(&sha), Some(&cache))
            .await
            .unwrap();
        assert_eq!(again, manifest);
        // A copy that does not hash right is not used.
        let copy = cache_file(&cache, &job.id, &sha).unwrap();
        std::fs::write(&copy, b"{\"schemaVersion\": 1}").unwrap();
        assert!(
            load(&empty, &job.id, Some(&sha), Some(&cache))
                .await
                .is_err()
        );
        assert_eq!(
            load(&store, &job.id, Some(&sha), Some(&cache))
                .await
                .unwrap(),
            manifest
        );
        // No hash to check against: no cache.
        assert!(load(&empty, &job.id, None, Some(&cache)).await.is_err());
        assert_eq!(cache_file(&cache, &job.id, "../../etc"), None);
    }
}
