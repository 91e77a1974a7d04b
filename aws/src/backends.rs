//! The AWS [`Backends`] of one process: what a worker, the driver or a merge task gets when the
//! job's `storage.uri` is `s3://bucket/prefix/` (docs/aws.md, "Configuration").
//!
//! The code that runs tasks sees `Backends` without knowing which stores are behind it, and
//! never links the AWS SDK. So the assembly of the AWS stores lives here: S3 for the job's objects, DynamoDB for its state, and [`S3Locations`]
//! for input and output locations outside the storage prefix. The retry queue is opened
//! separately ([`open_queue`]): only the driver uses it.
//!
//! Nothing here talks to AWS yet: clients are built, and the first request happens when a store
//! is used. A missing table or bucket therefore shows up as the first call's error, which names
//! the resource.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use orch_core::backend::{BackendError, BackendResult, ObjectStore};
use orch_core::platform::{Backends, Locations};
use orch_core::uri::Location;

use crate::config::{self, AwsSettings};
use crate::dynamodb::{DynamoStateStore, Keys};
use crate::error::{AwsError, Result};
use crate::s3::{S3Store, parse_s3_uri};
use crate::sqs::SqsQueue;

/// The backends of an `s3://bucket/prefix/` storage URI, with the SDK configuration and orch's
/// settings from the environment (docs/aws.md, "Configuration").
pub async fn open_backends(storage_uri: &str, scratch: PathBuf) -> Result<Backends> {
    let settings = AwsSettings::from_env()?;
    let sdk = config::load_sdk_config().await;
    open_backends_with(&sdk, &settings, storage_uri, scratch)
}

/// [`open_backends`] with a given SDK configuration and settings (tests, and callers that
/// already loaded them).
pub fn open_backends_with(
    sdk: &SdkConfig,
    settings: &AwsSettings,
    storage_uri: &str,
    scratch: PathBuf,
) -> Result<Backends> {
    Ok(open_stores_with(sdk, settings, storage_uri, scratch)?.0)
}

/// [`open_backends_with`], and the state store behind `Backends::state` (the platform tells
/// it which jobs it drives).
pub(crate) fn open_stores_with(
    sdk: &SdkConfig,
    settings: &AwsSettings,
    storage_uri: &str,
    scratch: PathBuf,
) -> Result<(Backends, Arc<DynamoStateStore>)> {
    let s3 = config::s3_client(sdk, settings);
    let objects = S3Store::new(s3.clone(), storage_uri)?;
    let state = DynamoStateStore::new(
        config::dynamodb_client(sdk),
        settings.table.clone(),
        Keys::for_storage(storage_uri)?,
    );
    // One S3 client for the storage and every other bucket: clients are cheap to clone and
    // share their connection pool.
    let locations = S3Locations::new(s3);
    let state = Arc::new(state);
    let backends = Backends {
        objects: Arc::new(objects),
        state: state.clone(),
        // Buckets and the audit log are items of the same table.
        rate_limits: state.clone(),
        audit: state.clone(),
        scratch,
        locations: Arc::new(locations),
    };
    Ok((backends, state))
}

/// The retry queue named by `ORCH_SQS_QUEUE` (default `orch-retries`), which must exist
/// (`orch init` or `infra/` create it).
pub async fn open_queue() -> BackendResult<SqsQueue> {
    let settings = AwsSettings::from_env()?;
    let sdk = config::load_sdk_config().await;
    open_queue_with(&sdk, &settings).await
}

/// [`open_queue`] with a given SDK configuration and settings.
pub async fn open_queue_with(sdk: &SdkConfig, settings: &AwsSettings) -> BackendResult<SqsQueue> {
    SqsQueue::open(config::sqs_client(sdk), &settings.queue).await
}

fn bucket_root(bucket: &str) -> String {
    format!("s3://{bucket}/")
}

/// Opens `s3://bucket/key` locations (a job's input and output) as a store rooted at the
/// bucket, `s3://bucket/`, and the full key. Rooting at the bucket rather than at the key's
/// parent keeps one store (and its client) per bucket however many files a job reads, and
/// lets the caller derive sibling keys (the parts of an output prefix) with the same store.
/// The key is the location's path as written, validated like every key of `S3Store` (no
/// empty, `.` or `..` segments); a trailing `/` (an output prefix) and an empty key (the
/// bucket itself) are allowed, since callers join names onto them.
///
/// All buckets are reached with the client of the storage, hence in its region: a bucket in
/// another region answers with a redirect error that names it.
pub struct S3Locations {
    client: aws_sdk_s3::Client,
    /// One store per bucket, so a worker that opens its input for every batch does not build
    /// a new store each time.
    stores: Mutex<HashMap<String, Arc<S3Store>>>,
}

impl std::fmt::Debug for S3Locations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Locations").finish_non_exhaustive()
    }
}

impl S3Locations {
    /// Locations reached with the SDK configuration and settings from the environment (a
    /// process that reads `s3://` input without opening a job's storage: a dry run, `orch
    /// status` of a job file).
    pub async fn from_env() -> Result<Self> {
        let settings = AwsSettings::from_env()?;
        let sdk = config::load_sdk_config().await;
        Ok(S3Locations::new(config::s3_client(&sdk, &settings)))
    }

    pub fn new(client: aws_sdk_s3::Client) -> Self {
        S3Locations {
            client,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// The cached store of `bucket` (validated), built on first use.
    fn store(&self, bucket: &str) -> Result<Arc<S3Store>> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = stores.get(bucket) {
            return Ok(store.clone());
        }
        let store = Arc::new(S3Store::new(self.client.clone(), &bucket_root(bucket))?);
        stores.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    /// The store and key of an `s3://` URI.
    pub fn open_s3(&self, uri: &str) -> Result<(Arc<S3Store>, String)> {
        // parse_s3_uri checks the bucket name and the key's segments; it returns the key as a
        // prefix (with a `/` appended), so the key itself is taken from the URI.
        let (bucket, _) = parse_s3_uri(uri)?;
        let key = uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, key)| key.to_string())
            .unwrap_or_default();
        let store = self.store(&bucket)?;
        store.full_prefix(&key)?;
        Ok((store, key))
    }
}

impl Locations for S3Locations {
    fn open(&self, uri: &str) -> BackendResult<Option<(Arc<dyn ObjectStore>, String)>> {
        if uri.starts_with("s3://") {
            let (store, key) = self.open_s3(uri)?;
            return Ok(Some((store as Arc<dyn ObjectStore>, key)));
        }
        match Location::local_path(uri) {
            Ok(_) => Ok(None),
            Err(reason) => Err(BackendError::from(AwsError::invalid(uri, reason))),
        }
    }
}
