//! The S3 [`ObjectStore`]: manifests, batches, results, checkpoints and markers of a cluster run.
//!
//! In a cluster the workers, the coordinator and the operator share no filesystem, so the
//! objects `FsStore` keeps in a directory live in a bucket under a key prefix
//! (`storage.uri: s3://bucket/prefix/`, docs/aws.md). This store shows the same behaviour as the
//! embedded one (`orch_testkit::contract::object_store_contract`) with S3's own means, one
//! submodule each: keys that cannot escape the prefix (`keys`), atomic multipart uploads
//! (`multipart`), create-once (`conditional`), sha256 verification (`checksum`), reads that
//! restart a broken body (`read`); and [`create_bucket`] for development (`bucket`).
//!
//! The SDK retries each call (standard mode, configured in `config.rs`). Every SDK error goes
//! through [`crate::error::sdk_error`], which keeps the operation, the `s3://bucket/key` and the
//! service's error code and drops everything else (headers, request details, credentials).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, Delete, ObjectIdentifier};
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, ByteSource, ObjectMeta, ObjectStore};
use orch_core::backoff::Backoff;
use sha2::{Digest, Sha256};

use crate::error::{AwsError, sdk_error};

mod bucket;
mod checksum;
mod conditional;
mod keys;
mod multipart;
mod read;

pub use bucket::{BucketSetup, create_bucket};
pub use checksum::SHA256_METADATA;
use checksum::sha256_file;
use keys::tagging_for;
pub use keys::{INTERMEDIATE_TAG, is_intermediate, parse_s3_uri};
use read::retry_body;

const MIB: u64 = 1024 * 1024;

/// Files at least this large are uploaded in parts: a single PUT of a large file is one long
/// request that a network blip forces to start over.
pub const MULTIPART_THRESHOLD: u64 = 16 * MIB;
/// Size of an upload part (the last one may be smaller).
pub const PART_SIZE: u64 = 8 * MIB;
/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// Parts in flight at once per upload.
pub const PART_CONCURRENCY: usize = 4;
/// Keys per ListObjectsV2 page (S3's maximum).
pub const LIST_PAGE_SIZE: i32 = 1000;
/// Keys per DeleteObjects call (S3's maximum).
const DELETE_BATCH: usize = 1000;
/// Attempts of a read whose body broke mid-stream, and rounds of a DeleteObjects whose keys
/// failed with a transient code. The SDK's own retries cover everything before the body.
const BODY_ATTEMPTS: u32 = 4;

/// Tunables of an [`S3Store`]; the defaults suit AWS, tests shrink them to stay fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Files of at least this many bytes are uploaded in parts.
    pub multipart_threshold: u64,
    /// Bytes per part; at least [`MIN_PART_SIZE`].
    pub part_size: u64,
    /// Parts uploaded at once.
    pub part_concurrency: usize,
    /// Keys per ListObjectsV2 page (1..=1000).
    pub list_page_size: i32,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            multipart_threshold: MULTIPART_THRESHOLD,
            part_size: PART_SIZE,
            part_concurrency: PART_CONCURRENCY,
            list_page_size: LIST_PAGE_SIZE,
        }
    }
}

impl S3Options {
    fn validate(&self) -> Result<(), AwsError> {
        if self.part_size < MIN_PART_SIZE {
            return Err(AwsError::invalid(
                "S3 part size",
                format!(
                    "{} bytes is below S3's minimum of {MIN_PART_SIZE}",
                    self.part_size
                ),
            ));
        }
        if self.multipart_threshold < self.part_size {
            return Err(AwsError::invalid(
                "S3 multipart threshold",
                "must be at least the part size",
            ));
        }
        if self.part_concurrency == 0 {
            return Err(AwsError::invalid(
                "S3 part concurrency",
                "must be at least 1",
            ));
        }
        if !(1..=LIST_PAGE_SIZE).contains(&self.list_page_size) {
            return Err(AwsError::invalid(
                "S3 list page size",
                format!("must be 1..={LIST_PAGE_SIZE}"),
            ));
        }
        Ok(())
    }
}

/// An object store in an S3 bucket under a key prefix. Keys given to the trait are relative to
/// the prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty or ending with `/`.
    prefix: String,
    options: S3Options,
}

impl S3Store {
    /// A store for `uri` (`s3://bucket` or `s3://bucket/prefix/`) with the default options.
    pub fn new(client: Client, uri: &str) -> Result<Self, AwsError> {
        Self::with_options(client, uri, S3Options::default())
    }

    pub fn with_options(client: Client, uri: &str, options: S3Options) -> Result<Self, AwsError> {
        options.validate()?;
        let (bucket, prefix) = parse_s3_uri(uri)?;
        Ok(S3Store {
            client,
            bucket,
            prefix,
            options,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix: empty or ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn uri(&self, full: &str) -> String {
        format!("s3://{}/{full}", self.bucket)
    }

    /// A PutObject of `full` with orch's metadata and tags; the caller adds the body.
    fn put_request(
        &self,
        relative: &str,
        full: &str,
        sha256: &str,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .metadata(SHA256_METADATA, sha256)
            .set_tagging(tagging_for(relative))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
    }

    async fn put_body(
        &self,
        relative: &str,
        full: &str,
        sha256: &str,
        body: ByteStream,
    ) -> Result<(), AwsError> {
        self.put_request(relative, full, sha256)
            .body(body)
            .send()
            .await
            .map_err(|e| sdk_error("s3", "PutObject", self.uri(full), e))?;
        Ok(())
    }

    /// The user metadata of `full`, `None` when it does not exist (HeadObject).
    async fn head(&self, full: &str) -> Result<Option<HashMap<String, String>>, AwsError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.metadata().cloned().unwrap_or_default())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(sdk_error("s3", "HeadObject", self.uri(full), e)),
        }
    }

    /// The full keys under a full prefix, with sizes, page by page.
    async fn list_full(&self, full_prefix: &str) -> Result<Vec<(String, u64)>, AwsError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(full_prefix)
            .into_paginator()
            .page_size(self.options.list_page_size)
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| sdk_error("s3", "ListObjectsV2", self.uri(full_prefix), e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    let size = object.size().and_then(|s| u64::try_from(s).ok());
                    out.push((key.to_string(), size.unwrap_or(0)));
                }
            }
        }
        Ok(out)
    }

    /// Deletes one batch of at most [`DELETE_BATCH`] full keys; keys that failed with a
    /// transient code are tried again, the others reported.
    async fn delete_batch(&self, full_prefix: &str, keys: &[String]) -> Result<(), AwsError> {
        let mut pending: Vec<String> = keys.to_vec();
        let mut round = 1;
        loop {
            let objects = pending
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AwsError::invalid("DeleteObjects request", e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| AwsError::invalid("DeleteObjects request", e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sdk_error("s3", "DeleteObjects", self.uri(full_prefix), e))?;
            let failed = out.errors();
            if failed.is_empty() {
                return Ok(());
            }
            let all_transient = failed
                .iter()
                .all(|e| delete_error_category(e.code()) == ErrorCategory::Transient);
            if all_transient && round < BODY_ATTEMPTS {
                pending = failed
                    .iter()
                    .filter_map(|e| e.key().map(str::to_string))
                    .collect();
                tokio::time::sleep(backoff(round)).await;
                round += 1;
                continue;
            }
            let first = &failed[0];
            let shown: Vec<String> = failed
                .iter()
                .take(5)
                .map(|e| {
                    format!(
                        "{} ({})",
                        e.key().unwrap_or("?"),
                        e.code().unwrap_or("unknown error")
                    )
                })
                .collect();
            return Err(AwsError::Service {
                service: "s3",
                operation: "DeleteObjects",
                resource: self.uri(full_prefix),
                code: first.code().unwrap_or("Unknown").to_string(),
                message: format!(
                    "{} of {} objects could not be deleted: {}{}",
                    failed.len(),
                    pending.len(),
                    shown.join(", "),
                    if failed.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    }
                ),
                category: delete_error_category(first.code()),
                conflict: false,
            });
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Vec<u8>) -> BackendResult<()> {
        let full = self.full_key(key)?;
        let sha256 = hex::encode(Sha256::digest(&data));
        self.put_body(key, &full, &sha256, ByteStream::from(data))
            .await?;
        Ok(())
    }

    async fn put_file(&self, key: &str, path: &Path) -> BackendResult<()> {
        let full = self.full_key(key)?;
        // Check the source first so that a missing local file is reported as such, not as a
        // failure of the store (as FsStore does).
        let metadata = tokio::fs::metadata(path)
            .await
            .map_err(|e| local_file_error(path, e))?;
        if !metadata.is_file() {
            return Err(BackendError::message(
                ErrorCategory::Permanent,
                format!("cannot upload {}: not a regular file", path.display()),
            ));
        }
        let size = metadata.len();
        let sha256 = sha256_file(path).await?;
        if size < self.options.multipart_threshold {
            // `from_path` reopens the file on a retry, so the SDK can resend the body.
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| local_file_error(path, std::io::Error::other(e.to_string())))?;
            self.put_body(key, &full, &sha256, body).await?;
        } else {
            self.put_multipart(key, &full, path, size, &sha256).await?;
        }
        Ok(())
    }

    async fn put_stream(&self, key: &str, data: &mut dyn ByteSource) -> BackendResult<()> {
        let full = self.full_key(key)?;
        let part_size = usize::try_from(self.options.part_size).unwrap_or(usize::MAX);
        // A stream that ends within one part is one PutObject with its sha256, as `put` makes.
        let mut first = Vec::new();
        while first.len() < part_size {
            match data.next_chunk().await? {
                Some(chunk) => first.extend_from_slice(&chunk),
                None => return self.put(key, first).await,
            }
        }
        self.put_stream_multipart(key, &full, first, data).await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> BackendResult<bool> {
        let full = self.full_key(key)?;
        Ok(self.create_once(key, &full, data).await?)
    }

    async fn get(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        let full = self.full_key(key)?;
        Ok(retry_body(|| self.get_once(&full)).await?)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> BackendResult<Vec<u8>> {
        let full = self.full_key(key)?;
        if range.start > range.end {
            return Err(BackendError::message(
                ErrorCategory::Invalid,
                format!("invalid range {range:?} of object {key:?}"),
            ));
        }
        if range.start == range.end {
            // `bytes=a-(a-1)` is no valid range (S3 would send the whole object): an empty
            // range only needs to know that the object exists.
            return match self.head(&full).await? {
                Some(_) => Ok(Vec::new()),
                None => Err(BackendError::NotFound(self.uri(&full))),
            };
        }
        match retry_body(|| self.get_range_once(&full, &range)).await? {
            Some(bytes) => Ok(bytes),
            None => Err(BackendError::NotFound(self.uri(&full))),
        }
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> BackendResult<bool> {
        let full = self.full_key(key)?;
        Ok(retry_body(|| self.download_once(&full, path)).await?)
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectMeta>> {
        let full_prefix = self.full_prefix(prefix)?;
        let mut out: Vec<ObjectMeta> = self
            .list_full(&full_prefix)
            .await?
            .into_iter()
            .filter_map(|(key, size)| {
                self.relative(&key).map(|k| ObjectMeta {
                    key: k.to_string(),
                    size,
                })
            })
            .collect();
        // S3 lists in UTF-8 byte order already; sorting keeps the contract whatever the
        // server (emulators) does.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_prefix(&self, prefix: &str) -> BackendResult<()> {
        let full_prefix = self.full_prefix(prefix)?;
        let keys: Vec<String> = self
            .list_full(&full_prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        for batch in keys.chunks(DELETE_BATCH) {
            self.delete_batch(&full_prefix, batch).await?;
        }
        Ok(())
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}

fn service_code(e: &AwsError) -> Option<&str> {
    match e {
        AwsError::Service { code, .. } => Some(code),
        _ => None,
    }
}

/// The wait before our own retry `attempt` (the SDK's are separate): 200 ms doubling up to
/// 6.4 s, with equal jitter.
fn backoff(attempt: u32) -> Duration {
    Backoff::doubling(Duration::from_millis(200), Duration::from_millis(6400))
        .delay_jittered(attempt, fastrand::f64())
}

/// Per-key DeleteObjects failures: S3's retryable codes, then configuration problems.
fn delete_error_category(code: Option<&str>) -> ErrorCategory {
    match code {
        Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
            ErrorCategory::Transient
        }
        Some("AccessDenied") => ErrorCategory::Invalid,
        _ => ErrorCategory::Permanent,
    }
}

fn io_error(path: &Path, source: std::io::Error) -> AwsError {
    AwsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A local file to upload is missing or unreadable: the caller's mistake, no retry fixes it.
fn local_file_error(path: &Path, e: std::io::Error) -> BackendError {
    BackendError::other(
        ErrorCategory::Permanent,
        format!("cannot read local file {}: {e}", path.display()),
        e,
    )
}
