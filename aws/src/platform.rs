//! The driver's [`Platform`] for a job whose storage is on S3: S3 + DynamoDB stores, a lease
//! in DynamoDB as the job lock, the SQS retry queue, and worker logs on the machine running
//! `orch` (workers started by the local executor run there).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use orch_core::backend::{BackendError, BackendResult, Queue};
use orch_core::model::JobRecord;
use orch_core::platform::{Backends, JobLease, Platform};

use crate::config::{self, AwsSettings};
use crate::dynamodb::{Driving, DynamoStateStore, Keys};
use crate::error::Result;
use crate::lock::JobLock;

/// How long a driver's lease on a job lasts without renewal: a driver that dies leaves the
/// job to the next `orch run` after this long.
const LEASE: Duration = Duration::from_secs(60);

/// The AWS stores of one `s3://` storage URI, for `orch run`.
pub struct AwsPlatform {
    backends: Backends,
    /// `backends.state`, told which jobs this platform drives (`DynamoStateStore::drive`).
    state: Arc<DynamoStateStore>,
    storage_uri: String,
    keys: Keys,
    sdk: SdkConfig,
    settings: AwsSettings,
    log_root: PathBuf,
    lease: Duration,
}

impl AwsPlatform {
    /// Opens the stores of `storage_uri` with configuration from the environment
    /// (docs/aws.md). Files on their way to or from S3 go under `scratch`; workers' logs
    /// under `log_root/<job>/`.
    pub async fn open(storage_uri: &str, scratch: PathBuf, log_root: PathBuf) -> Result<Self> {
        let settings = AwsSettings::from_env()?;
        let sdk = config::load_sdk_config().await;
        let (backends, state) =
            crate::backends::open_stores_with(&sdk, &settings, storage_uri, scratch)?;
        Ok(AwsPlatform {
            backends,
            state,
            storage_uri: storage_uri.to_string(),
            keys: Keys::for_storage(storage_uri)?,
            sdk,
            settings,
            log_root,
            lease: LEASE,
        })
    }

    /// How long the job lease outlives a driver that died without releasing it (default
    /// 60 s): the operator shortens it so that a new leader takes jobs over sooner.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
}

/// The job lock, and with it the state store's knowledge that this process drives the job:
/// its task cache then reads only what changed on each tick (docs/aws.md).
struct DynamoLease(JobLock, Driving);

#[async_trait]
impl JobLease for DynamoLease {
    fn lost(&self) -> bool {
        self.0.lost()
    }

    async fn release(self: Box<Self>) {
        let DynamoLease(lock, driving) = *self;
        // No longer the driver before another may become it.
        drop(driving);
        lock.release().await;
    }
}

#[async_trait]
impl Platform for AwsPlatform {
    fn backends(&self) -> &Backends {
        &self.backends
    }

    fn storage_uri(&self) -> String {
        self.storage_uri.clone()
    }

    fn log_dir(&self, job: &str) -> PathBuf {
        self.log_root.join(job)
    }

    async fn lock_job(&self, job: &str) -> BackendResult<Box<dyn JobLease>> {
        let lock = JobLock::acquire(
            config::dynamodb_client(&self.sdk),
            self.settings.table.clone(),
            &self.keys,
            job,
            self.lease,
        )
        .await
        .map_err(BackendError::from)?;
        Ok(Box::new(DynamoLease(lock, self.state.drive(job))))
    }

    async fn retry_queue(&self, _job: &JobRecord) -> BackendResult<Arc<dyn Queue>> {
        // One queue for every job: messages carry their job, and the driver hands those of
        // other jobs back.
        let queue = crate::open_queue_with(&self.sdk, &self.settings).await?;
        Ok(Arc::new(queue))
    }
}
