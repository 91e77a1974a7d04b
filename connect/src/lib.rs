//! `orch-connect`: the one place that decides where a job's data lives. A storage URI on
//! `s3://` opens the AWS data plane (S3, DynamoDB, SQS); anything else is a directory with the
//! embedded backends (SQLite, local files). The CLI (`orch run`, `orch status`), the worker and
//! the operator all open their stores here, so the rule cannot differ between them.
//!
//! The executor is chosen elsewhere (`orch-executors`): the worker opens stores but never
//! starts other workers, and must not link the Slurm client. See docs/architecture.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use orch_core::backend::BackendResult;
use orch_core::platform::{Backends, LocalLocations, Locations, Platform};
use orch_embedded::EmbeddedPlatform;

/// Where `orch run` keeps a job whose spec names no `storage.uri`.
pub const DEFAULT_STORAGE: &str = ".orch";

/// Whether `uri` is in S3 (and files for it pass through a scratch directory).
pub fn is_s3(uri: &str) -> bool {
    uri.starts_with("s3://")
}

/// A directory of this process for files on their way to or from S3: under `ORCH_SCRATCH`,
/// else `TMPDIR` (which Slurm points at node-local disk), named `name`.
pub fn scratch_dir(name: &str) -> PathBuf {
    std::env::var_os("ORCH_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(name)
}

/// Why this process could not use the AWS data plane, if it could not: orch's own settings
/// (`ORCH_DYNAMODB_TABLE`, `ORCH_SQS_QUEUE`, `ORCH_S3_FORCE_PATH_STYLE`) that do not parse, or
/// no region for the SDK. `orch validate` and `orch run` ask before a job that uses S3 starts,
/// so that the first error is not a request that cannot be signed.
pub async fn aws_unconfigured() -> Option<String> {
    if let Err(e) = orch_aws::config::AwsSettings::from_env() {
        return Some(e.to_string());
    }
    match orch_aws::config::sdk_region().await {
        Some(_) => None,
        None => Some(
            "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION), or `region` in the profile \
             of ~/.aws/config"
                .into(),
        ),
    }
}

/// How a driver's platform is opened, where it matters (S3 only: a directory keeps everything,
/// logs included, under itself).
#[derive(Debug, Clone)]
pub struct PlatformOptions {
    /// Files on their way to or from S3.
    pub scratch: PathBuf,
    /// Where workers started on this machine write their logs: `<log_root>/<job>/`.
    pub log_root: PathBuf,
    /// How long a job's lease in DynamoDB outlives a driver that died holding it; `None` for
    /// the default (60 s).
    pub job_lease: Option<Duration>,
}

/// Where `orch run` on S3 storage has the workers it starts write their logs:
/// `.orch/logs/<job>/` in the directory it was started in (`orch logs` reads them there).
pub fn local_log_root() -> PathBuf {
    std::env::current_dir()
        .unwrap_or_default()
        .join(DEFAULT_STORAGE)
        .join("logs")
}

/// The platform a driver runs a job on, for its storage URI.
pub async fn open_platform(
    storage_uri: &str,
    opts: &PlatformOptions,
) -> BackendResult<Arc<dyn Platform>> {
    if is_s3(storage_uri) {
        let mut platform =
            orch_aws::AwsPlatform::open(storage_uri, opts.scratch.clone(), opts.log_root.clone())
                .await?;
        if let Some(lease) = opts.job_lease {
            platform = platform.with_lease(lease);
        }
        return Ok(Arc::new(platform));
    }
    Ok(Arc::new(EmbeddedPlatform::open(storage_uri)?))
}

/// The stores of a process that works on a job without driving it (a worker, a merge task,
/// `orch status`); `scratch` is used for S3 only.
pub async fn open_backends(storage_uri: &str, scratch: PathBuf) -> BackendResult<Backends> {
    if is_s3(storage_uri) {
        return Ok(orch_aws::open_backends(storage_uri, scratch).await?);
    }
    Ok(EmbeddedPlatform::open(storage_uri)?.backends)
}

/// How a process that has no job storage open reads `uri` (a dry run's input): through S3 for
/// `s3://`, directly otherwise.
pub async fn locations(uri: &str) -> BackendResult<Box<dyn Locations>> {
    if is_s3(uri) {
        return Ok(Box::new(orch_aws::S3Locations::from_env().await?));
    }
    Ok(Box::new(LocalLocations))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_opens_the_embedded_platform_with_logs_under_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().join("store").display().to_string();
        let opts = PlatformOptions {
            scratch: dir.path().join("scratch"),
            log_root: dir.path().join("elsewhere"),
            job_lease: None,
        };
        let platform = open_platform(&uri, &opts).await.unwrap();
        assert!(platform.storage_uri().starts_with("file://"));
        assert_eq!(
            platform.log_dir("j-1"),
            dir.path().join("store/jobs/j-1/logs")
        );
        // The embedded state store, created in the directory itself; nothing in the S3 scratch.
        assert!(
            dir.path()
                .join("store")
                .join(orch_core::layout::state_db())
                .is_file()
        );
        assert!(!opts.scratch.exists());
        let backends = open_backends(&uri, dir.path().join("unused"))
            .await
            .unwrap();
        assert!(backends.objects.local_path("jobs").is_some());
        assert!(
            locations("/data/in.jsonl")
                .await
                .unwrap()
                .open("/data/in.jsonl")
                .unwrap()
                .is_none()
        );
    }
}
