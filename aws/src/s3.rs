//! The S3 [`ObjectStore`]: manifests, batches, results, checkpoints and markers of a cluster run.
//!
//! In a cluster the workers, the coordinator and the operator share no filesystem, so the
//! objects `FsStore` keeps in a directory live in a bucket under a key prefix
//! (`storage.uri: s3://bucket/prefix/`, docs/aws.md). This store shows the same behaviour as the
//! embedded one (`orch_testkit::contract::object_store_contract`) with S3's own means:
//!
//! - **keys cannot escape the prefix.** Every full key is made by [`S3Store::full_key`] /
//!   [`S3Store::full_prefix`] (one function behind both), which refuses the keys `FsStore`
//!   refuses — empty, absolute, `.`/`..`/empty segments, backslashes, control characters — so a
//!   job id or a user-provided prefix can never name another job's objects, or objects outside
//!   orch's prefix that IAM might still allow.
//! - **writes are atomic** because S3 PUTs are; large files go up as multipart uploads, which
//!   become visible only when completed and are aborted on any failure (or cancellation).
//! - **create-once** (`put_if_absent`, for `_DONE` / `_SUCCESS`) is `If-None-Match: *`. A 412
//!   means someone else's object is there, except when the SDK retried our own successful
//!   PUT whose response was lost: every create carries a random writer token in its metadata,
//!   and a 412 whose object carries our token counts as our win. Multipart uploads carry a
//!   token too, for a completion whose outcome is unclear (a lost answer, or one we cannot
//!   read).
//! - **integrity:** every object carries the sha256 of its bytes as user metadata
//!   (`x-amz-meta-sha256`); whole-object reads verify it, so an object overwritten behind orch's
//!   back or corrupted fails loudly (Permanent) instead of feeding wrong bytes to a merge.
//!   Uploads also send `ChecksumAlgorithm::Sha256` (moto accepts it too), so S3 itself
//!   rejects bytes damaged in transit.
//! - **intermediate objects** (`jobs/J/aggregate/`, `checkpoints/`, `input/`) are tagged
//!   `orch-intermediate=true` when written, for the one lifecycle rule that expires them.
//! - **retries:** the SDK retries each call (standard mode, configured in `config.rs`). A
//!   response body that breaks after the headers arrived is outside the SDK's retry loop, so
//!   whole-object and ranged reads restart themselves a few times here.
//!
//! Every SDK error goes through [`crate::error::sdk_error`], which keeps the operation, the
//! `s3://bucket/key` and the service's error code and drops everything else (headers, request
//! details, credentials).

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, ObjectMeta, ObjectStore};
use orch_core::backoff::Backoff;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::error::{AwsError, sdk_error};

const MIB: u64 = 1024 * 1024;

/// Files at least this large are uploaded in parts: a single PUT of a large file is one long
/// request that a network blip forces to start over.
pub const MULTIPART_THRESHOLD: u64 = 16 * MIB;
/// Size of an upload part (the last one may be smaller).
pub const PART_SIZE: u64 = 8 * MIB;
/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part count; larger files get larger parts.
const MAX_PARTS: u64 = 10_000;
/// Parts in flight at once per upload.
pub const PART_CONCURRENCY: usize = 4;
/// Keys per ListObjectsV2 page (S3's maximum).
pub const LIST_PAGE_SIZE: i32 = 1000;
/// Keys per DeleteObjects call (S3's maximum).
const DELETE_BATCH: usize = 1000;
/// Attempts of a read whose body broke mid-stream, and rounds of a DeleteObjects whose keys
/// failed with a transient code. The SDK's own retries cover everything before the body.
const BODY_ATTEMPTS: u32 = 4;
/// Attempts of `put_if_absent` while S3 reports a concurrent conditional write (409).
const CONDITIONAL_ATTEMPTS: u32 = 5;
/// S3's longest key, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// Buffer of the local file writer in `get_to_file`: few, large writes to the disk.
const DOWNLOAD_BUFFER: usize = MIB as usize;

/// User metadata holding the hex sha256 of the object's bytes (`x-amz-meta-sha256`).
pub const SHA256_METADATA: &str = "sha256";
/// User metadata holding the random token of the `put_if_absent` call that created the object.
const WRITER_METADATA: &str = "orch-writer";
/// The tag of objects that only matter while a job runs (docs/aws.md, "S3 layout").
pub const INTERMEDIATE_TAG: (&str, &str) = ("orch-intermediate", "true");
/// Subdirectories of `jobs/J/` whose objects carry [`INTERMEDIATE_TAG`].
const INTERMEDIATE_DIRS: &[&str] = &["aggregate", "checkpoints", "input"];
/// Marker inside the names of `FsStore`'s temporary files; such keys are refused here too, so
/// a key valid on one backend is valid on the other. Also used for our own download files.
const TMP_MARKER: &str = ".tmp-";

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

    /// The full S3 key of an object, or `Invalid` for a key that is not a plain relative path.
    pub fn full_key(&self, key: &str) -> Result<String, AwsError> {
        self.resolve(key, Relative::Key)
    }

    /// The full S3 prefix of a listing or deletion; the relative prefix may be empty or end in
    /// a partial name.
    pub fn full_prefix(&self, prefix: &str) -> Result<String, AwsError> {
        self.resolve(prefix, Relative::Prefix)
    }

    /// The one place where full keys are made (see the module docs).
    fn resolve(&self, relative: &str, kind: Relative) -> Result<String, AwsError> {
        let what = || match kind {
            Relative::Key => format!("object key {relative:?}"),
            Relative::Prefix => format!("key prefix {relative:?}"),
        };
        check_relative(relative, kind).map_err(|why| AwsError::invalid(what(), why))?;
        let full = format!("{}{relative}", self.prefix);
        if full.len() > MAX_KEY_BYTES {
            return Err(AwsError::invalid(
                what(),
                format!("the full key is longer than S3's {MAX_KEY_BYTES} bytes"),
            ));
        }
        Ok(full)
    }

    /// The relative key of a listed full key; `None` for keys outside the prefix (which a
    /// listing under the prefix never returns).
    fn relative<'k>(&self, full: &'k str) -> Option<&'k str> {
        full.strip_prefix(self.prefix.as_str())
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

    /// Whether the object at `full` was created by the write that carried `token`.
    async fn written_by(&self, full: &str, token: &str) -> Result<bool, AwsError> {
        Ok(self
            .head(full)
            .await?
            .is_some_and(|m| m.get(WRITER_METADATA).map(String::as_str) == Some(token)))
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

    /// Starts a GET of the whole object (headers read, body not yet): `None` when absent.
    async fn open_object(
        &self,
        full: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, AwsError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if is_no_such_key(&e) => Ok(None),
            Err(e) => Err(sdk_error("s3", "GetObject", self.uri(full), e)),
        }
    }

    /// One whole-object read: `None` when absent.
    async fn get_once(&self, full: &str) -> Result<Option<Vec<u8>>, AwsError> {
        let Some(out) = self.open_object(full).await? else {
            return Ok(None);
        };
        let expected = expected_sha256(out.metadata());
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| body_error("GetObject", self.uri(full), &e))?
            .to_vec();
        if let Some(expected) = expected {
            verify_sha256(
                &self.uri(full),
                &expected,
                &hex::encode(Sha256::digest(&bytes)),
            )?;
        }
        Ok(Some(bytes))
    }

    /// One ranged read of a non-empty range: `None` when the object is absent.
    async fn get_range_once(
        &self,
        full: &str,
        range: &Range<u64>,
    ) -> Result<Option<Vec<u8>>, AwsError> {
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .range(header)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_no_such_key(&e) => return Ok(None),
            // 416: the range starts at or past the end of an existing object; the contract
            // says that reads as no bytes.
            Err(e) if is_invalid_range(&e) => return Ok(Some(Vec::new())),
            Err(e) => return Err(sdk_error("s3", "GetObject", self.uri(full), e)),
        };
        let whole_object = out.content_range().is_none();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| body_error("GetObject", self.uri(full), &e))?
            .to_vec();
        if whole_object {
            // A server that ignores `Range` answers 200 with the whole object: cut it here, so
            // callers get the contract's bytes either way.
            let start = usize::try_from(range.start).unwrap_or(usize::MAX);
            let end = usize::try_from(range.end).unwrap_or(usize::MAX);
            return Ok(Some(
                bytes
                    .get(start.min(bytes.len())..end.min(bytes.len()))
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
            ));
        }
        Ok(Some(bytes))
    }

    /// One download into a temporary file next to `dest`, renamed over `dest` once complete
    /// and verified: a reader of `dest` never sees a partial or unverified file.
    async fn download_once(&self, full: &str, dest: &Path) -> Result<bool, AwsError> {
        // Start the GET before creating anything locally, so that a missing object leaves no
        // trace at the destination.
        let Some(out) = self.open_object(full).await? else {
            return Ok(false);
        };
        let expected = expected_sha256(out.metadata());
        let (tmp, file) = create_tmp(dest).await?;
        let written = stream_to_file(out.body, file, &tmp, &self.uri(full)).await;
        let result = match written {
            Ok(actual) => match expected {
                Some(expected) => verify_sha256(&self.uri(full), &expected, &actual),
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            discard(&tmp).await;
            return Err(e);
        }
        if let Err(e) = tokio::fs::rename(&tmp, dest).await {
            discard(&tmp).await;
            return Err(io_error(dest, e));
        }
        Ok(true)
    }

    /// Uploads a local file of `size` bytes in parts; the upload is aborted on any failure,
    /// and when this future is dropped before it finishes.
    async fn put_multipart(
        &self,
        relative: &str,
        full: &str,
        path: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<(), AwsError> {
        let token = writer_token();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .metadata(SHA256_METADATA, sha256)
            .metadata(WRITER_METADATA, &token)
            .set_tagging(tagging_for(relative))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| sdk_error("s3", "CreateMultipartUpload", self.uri(full), e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(AwsError::Service {
                service: "s3",
                operation: "CreateMultipartUpload",
                resource: self.uri(full),
                code: "MissingUploadId".into(),
                message: "the response has no upload id".into(),
                category: ErrorCategory::Permanent,
                conflict: false,
            });
        };
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full.to_string(),
            upload_id: Some(upload_id.clone()),
        };
        let result = self
            .upload_parts_and_complete(full, &upload_id, path, size)
            .await;
        match result {
            Ok(()) => {
                guard.upload_id = None;
                Ok(())
            }
            // The completion's outcome is unknown, and the object tells whether it was ours.
            Err(e) if completion_unclear(&e) && self.written_by(full, &token).await? => {
                guard.upload_id = None;
                Ok(())
            }
            Err(e) => {
                // Abort here rather than in the guard, so the parts are gone when we return.
                guard.upload_id = None;
                self.abort_multipart(full, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn upload_parts_and_complete(
        &self,
        full: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
    ) -> Result<(), AwsError> {
        let part_size = self.options.part_size.max(size.div_ceil(MAX_PARTS));
        let count = size.div_ceil(part_size).max(1);
        let mut parts = Vec::new();
        let mut running: JoinSet<Result<CompletedPart, AwsError>> = JoinSet::new();
        let mut next = 0u64;
        while next < count || !running.is_empty() {
            while next < count && running.len() < self.options.part_concurrency {
                let offset = next * part_size;
                let length = part_size.min(size - offset);
                // Part numbers start at 1 and stay ≤ MAX_PARTS, so they fit an i32.
                let number = i32::try_from(next + 1).unwrap_or(i32::MAX);
                running.spawn(upload_part(
                    self.client.clone(),
                    self.bucket.clone(),
                    full.to_string(),
                    upload_id.to_string(),
                    path.to_path_buf(),
                    number,
                    offset,
                    length,
                ));
                next += 1;
            }
            match running.join_next().await {
                Some(Ok(Ok(part))) => parts.push(part),
                // Dropping `running` cancels the other parts; the caller aborts the upload.
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => {
                    return Err(AwsError::Io {
                        path: path.display().to_string(),
                        source: std::io::Error::other(format!("upload task failed: {e}")),
                    });
                }
                None => break,
            }
        }
        parts.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("s3", "CompleteMultipartUpload", self.uri(full), e))?;
        Ok(())
    }

    /// Best effort: a failed abort leaves parts that the bucket's
    /// `AbortIncompleteMultipartUpload` lifecycle rule removes later.
    async fn abort_multipart(&self, full: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .send()
            .await
        {
            let e = sdk_error("s3", "AbortMultipartUpload", self.uri(full), e);
            tracing::warn!(error = %e, "cannot abort a failed multipart upload");
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

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> BackendResult<bool> {
        let full = self.full_key(key)?;
        let sha256 = hex::encode(Sha256::digest(&data));
        let token = writer_token();
        let mut attempt = 1;
        loop {
            let sent = self
                .put_request(key, &full, &sha256)
                .metadata(WRITER_METADATA, &token)
                .if_none_match("*")
                .body(ByteStream::from(data.clone()))
                .send()
                .await;
            let err = match sent {
                Ok(_) => return Ok(true),
                Err(e) => sdk_error("s3", "PutObject", self.uri(&full), e),
            };
            match service_code(&err) {
                // Another conditional write on the key is in flight (AWS answers 409): wait
                // for it to settle; the next try then sees its object (412) or wins.
                Some("ConditionalRequestConflict") if attempt < CONDITIONAL_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                _ if err.is_conflict() => {
                    // The object exists. It is ours when an earlier attempt of this very call
                    // succeeded but its response was lost and the SDK sent it again.
                    return Ok(self.written_by(&full, &token).await?);
                }
                _ => return Err(err.into()),
            }
        }
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

/// Whether a relative path names one object or starts a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relative {
    Key,
    /// May be empty, and its last segment may be empty or partial.
    Prefix,
}

/// The rules of `FsStore`'s `check_key` / `check_prefix`, plus control characters (which S3
/// accepts but which make keys unprintable and XML listings fragile).
fn check_relative(relative: &str, kind: Relative) -> Result<(), &'static str> {
    if relative.is_empty() {
        return match kind {
            Relative::Key => Err("is empty"),
            Relative::Prefix => Ok(()),
        };
    }
    if relative.starts_with('/') {
        return Err("is absolute");
    }
    if relative.contains('\\') {
        return Err("contains a backslash");
    }
    if relative.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    let segments: Vec<&str> = relative.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "" if i == last && kind == Relative::Prefix => {}
            "" => return Err("has an empty path segment"),
            "." | ".." => return Err("has a `.` or `..` path segment"),
            s if s.starts_with('.') && s.contains(TMP_MARKER) => {
                return Err("has a segment named like a temporary file (`.name.tmp-…`)");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Splits `s3://bucket[/prefix]` into a valid bucket name and a prefix that is empty or ends
/// with `/`.
pub fn parse_s3_uri(uri: &str) -> Result<(String, String), AwsError> {
    let what = || format!("S3 URI {uri:?}");
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| AwsError::invalid(what(), "must start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    check_bucket(bucket).map_err(|why| AwsError::invalid(what(), format!("bucket name {why}")))?;
    if prefix.is_empty() {
        return Ok((bucket.to_string(), String::new()));
    }
    // `s3://b/p` and `s3://b/p/` mean the same prefix.
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    check_relative(trimmed, Relative::Key)
        .map_err(|why| AwsError::invalid(what(), format!("prefix {why}")))?;
    if trimmed.len() + 1 > MAX_KEY_BYTES {
        return Err(AwsError::invalid(what(), "prefix is too long"));
    }
    Ok((bucket.to_string(), format!("{trimmed}/")))
}

/// S3's rules for general purpose bucket names.
fn check_bucket(name: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&name.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("may contain only lowercase letters, digits, `.` and `-`");
    }
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(name.as_bytes().first()) || !alnum(name.as_bytes().last()) {
        return Err("must begin and end with a letter or digit");
    }
    if name.contains("..") {
        return Err("must not contain two adjacent periods");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("must not be an IP address");
    }
    if ["xn--", "sthree-", "amzn-s3-demo-"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return Err("uses a reserved prefix");
    }
    if ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"]
        .iter()
        .any(|s| name.ends_with(s))
    {
        return Err("uses a reserved suffix");
    }
    Ok(())
}

/// `jobs/J/aggregate/…`, `jobs/J/checkpoints/…` and `jobs/J/input/…` (docs/aws.md).
pub fn is_intermediate(relative: &str) -> bool {
    let mut parts = relative.splitn(4, '/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("jobs"), Some(job), Some(dir), Some(rest))
            if !job.is_empty() && !rest.is_empty() && INTERMEDIATE_DIRS.contains(&dir)
    )
}

/// The `tagging` parameter (URL query syntax) of a write to `relative`.
fn tagging_for(relative: &str) -> Option<String> {
    is_intermediate(relative).then(|| format!("{}={}", INTERMEDIATE_TAG.0, INTERMEDIATE_TAG.1))
}

fn is_no_such_key(
    e: &SdkError<aws_sdk_s3::operation::get_object::GetObjectError, HttpResponse>,
) -> bool {
    e.as_service_error().is_some_and(|s| s.is_no_such_key())
}

fn is_invalid_range(
    e: &SdkError<aws_sdk_s3::operation::get_object::GetObjectError, HttpResponse>,
) -> bool {
    e.code() == Some("InvalidRange") || e.raw_response().is_some_and(|r| r.status().as_u16() == 416)
}

fn service_code(e: &AwsError) -> Option<&str> {
    match e {
        AwsError::Service { code, .. } => Some(code),
        _ => None,
    }
}

/// The code of a response body that broke after the headers arrived; such reads are retried.
const BODY_ERROR_CODE: &str = "ResponseBodyBroken";

fn body_error(operation: &'static str, resource: String, e: &dyn std::error::Error) -> AwsError {
    AwsError::Service {
        service: "s3",
        operation,
        resource,
        code: BODY_ERROR_CODE.into(),
        message: format!("the response body could not be read: {e}"),
        category: ErrorCategory::Transient,
        conflict: false,
    }
}

/// Runs a read again while its response body breaks off mid-stream (a reset connection): the
/// SDK retried everything up to the headers, not the body.
async fn retry_body<T, F, Fut>(mut read: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let mut attempt = 1;
    loop {
        match read().await {
            Err(e) if service_code(&e) == Some(BODY_ERROR_CODE) && attempt < BODY_ATTEMPTS => {
                tracing::debug!(error = %e, "read broke off; reading again");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether a failed CompleteMultipartUpload may have completed after all:
/// - `NoSuchUpload`: the SDK retried a completion whose first try succeeded but whose response
///   was lost, and the upload is gone because it became the object;
/// - a 2xx answer the SDK could not read (`sdk_error` then names the status as the code): the
///   server completed and said so in a form we do not understand — moto before 5.2.5 answers
///   with the root element `CompleteMultipartUploadResponse` (getmoto/moto#10055).
fn completion_unclear(e: &AwsError) -> bool {
    matches!(
        e,
        AwsError::Service { operation: "CompleteMultipartUpload", code, .. }
            if code == "NoSuchUpload" || code.starts_with("HTTP 2")
    )
}

/// A random token naming one write, stored as [`WRITER_METADATA`].
fn writer_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
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

fn expected_sha256(metadata: Option<&HashMap<String, String>>) -> Option<String> {
    metadata
        .and_then(|m| m.get(SHA256_METADATA))
        .map(|s| s.trim().to_ascii_lowercase())
}

/// A mismatch means the stored bytes are not the ones orch wrote; reading again would
/// return the same bytes, so the error is Permanent.
fn verify_sha256(resource: &str, expected: &str, actual: &str) -> Result<(), AwsError> {
    if expected == actual {
        return Ok(());
    }
    Err(AwsError::Service {
        service: "s3",
        operation: "GetObject",
        resource: resource.to_string(),
        code: "ChecksumMismatch".into(),
        message: format!(
            "the object's sha256 is {actual}, its x-amz-meta-sha256 says {expected}: it was changed or damaged outside orch"
        ),
        category: ErrorCategory::Permanent,
        conflict: false,
    })
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

/// The hex sha256 of a local file, read in blocks off the async workers.
async fn sha256_file(path: &Path) -> BackendResult<String> {
    let owned = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read;
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; MIB as usize];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| {
        BackendError::other(
            ErrorCategory::Infrastructure,
            "hashing task did not complete",
            e,
        )
    })?;
    hashed.map_err(|e| local_file_error(path, e))
}

#[allow(clippy::too_many_arguments)]
async fn upload_part(
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    path: PathBuf,
    number: i32,
    offset: u64,
    length: u64,
) -> Result<CompletedPart, AwsError> {
    // A file-backed body: the SDK re-reads the range from disk when it retries the part, and
    // no part is ever held in memory whole.
    let body = ByteStream::read_from()
        .path(&path)
        .offset(offset)
        .length(Length::Exact(length))
        .build()
        .await
        .map_err(|e| io_error(&path, std::io::Error::other(e.to_string())))?;
    let resource = format!("s3://{bucket}/{key} part {number}");
    let out = client
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .part_number(number)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .body(body)
        .send()
        .await
        .map_err(|e| sdk_error("s3", "UploadPart", resource, e))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(out.e_tag().map(str::to_string))
        .set_checksum_sha256(out.checksum_sha256().map(str::to_string))
        .build())
}

/// Aborts a multipart upload whose future was dropped before it finished (a cancelled task),
/// so that no invisible parts stay behind and cost money.
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    /// `None` once the upload completed or was aborted explicitly.
    upload_id: Option<String>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id);
        runtime.spawn(async move {
            let _ = request.send().await;
        });
    }
}

/// A fresh temporary file next to `dest` (its directory created), named like `FsStore`'s so
/// that tools treat both alike.
async fn create_tmp(dest: &Path) -> Result<(PathBuf, tokio::fs::File), AwsError> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| io_error(&dir, e))?;
    let name: String = dest
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(64).collect())
        .unwrap_or_default();
    loop {
        let tmp = dir.join(format!(".{name}{TMP_MARKER}{:016x}", fastrand::u64(..)));
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&tmp, e)),
        }
    }
}

/// Streams a body into `file` chunk by chunk, hashing as it goes; returns the hex sha256.
async fn stream_to_file(
    mut body: ByteStream,
    file: tokio::fs::File,
    tmp: &Path,
    resource: &str,
) -> Result<String, AwsError> {
    let mut writer = tokio::io::BufWriter::with_capacity(DOWNLOAD_BUFFER, file);
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| body_error("GetObject", resource.to_string(), &e))?;
        hasher.update(&chunk);
        writer
            .write_all(&chunk)
            .await
            .map_err(|e| io_error(tmp, e))?;
    }
    writer.flush().await.map_err(|e| io_error(tmp, e))?;
    writer
        .into_inner()
        .sync_all()
        .await
        .map_err(|e| io_error(tmp, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Removes a temporary file after a failure; the original error is what matters.
async fn discard(tmp: &Path) {
    let _ = tokio::fs::remove_file(tmp).await;
}

/// What [`create_bucket`] found and set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSetup {
    /// The bucket was created by this call (else it existed, owned by the caller).
    pub created: bool,
    /// Versioning is on; `false` when the endpoint does not implement it (some emulators).
    pub versioning: bool,
    /// All four public access blocks are on; `false` when the endpoint does not implement them.
    pub public_access_blocked: bool,
}

/// Creates the bucket `name` for development and tests (`orch init --bucket`; production
/// buckets come from `infra/`), in the client's region, then turns versioning on and blocks
/// public access — on an existing bucket of the caller too, so a second run changes nothing and
/// succeeds. An endpoint that does not implement versioning or public access blocks (MinIO,
/// older emulators answer `NotImplemented`) gets the bucket without them, reported in the
/// result. A bucket name owned by someone else is an error.
pub async fn create_bucket(client: &Client, name: &str) -> Result<BucketSetup, AwsError> {
    use aws_sdk_s3::types::{
        BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
        PublicAccessBlockConfiguration, VersioningConfiguration,
    };
    check_bucket(name)
        .map_err(|why| AwsError::invalid(format!("bucket name {name:?}"), why.to_string()))?;
    let uri = format!("s3://{name}");
    let exists = match client.head_bucket().bucket(name).send().await {
        Ok(_) => true,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => false,
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => false,
        Err(e) => return Err(sdk_error("s3", "HeadBucket", uri, e)),
    };
    let mut created = false;
    if !exists {
        // us-east-1 is S3's default and must not be named as a location constraint.
        let constraint = client
            .config()
            .region()
            .map(|r| r.as_ref().to_string())
            .filter(|r| r != "us-east-1")
            .map(|r| {
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(r.as_str()))
                    .build()
            });
        match client
            .create_bucket()
            .bucket(name)
            .set_create_bucket_configuration(constraint)
            .send()
            .await
        {
            Ok(_) => created = true,
            // Created by a concurrent run of ours between the HEAD and here.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) => {}
            Err(e) => return Err(sdk_error("s3", "CreateBucket", uri, e)),
        }
    }
    let unsupported = |code: Option<&str>, status: Option<u16>| {
        code == Some("NotImplemented") || status == Some(501)
    };
    let versioning = match client
        .put_bucket_versioning()
        .bucket(name)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) if unsupported(e.code(), e.raw_response().map(|r| r.status().as_u16())) => false,
        Err(e) => return Err(sdk_error("s3", "PutBucketVersioning", uri, e)),
    };
    let public_access_blocked = match client
        .put_public_access_block()
        .bucket(name)
        .public_access_block_configuration(
            PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .ignore_public_acls(true)
                .block_public_policy(true)
                .restrict_public_buckets(true)
                .build(),
        )
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) if unsupported(e.code(), e.raw_response().map(|r| r.status().as_u16())) => false,
        Err(e) => return Err(sdk_error("s3", "PutPublicAccessBlock", uri, e)),
    };
    Ok(BucketSetup {
        created,
        versioning,
        public_access_blocked,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        assert_eq!(
            parse_s3_uri("s3://my-bucket").unwrap(),
            ("my-bucket".into(), String::new())
        );
        assert_eq!(
            parse_s3_uri("s3://my-bucket/").unwrap(),
            ("my-bucket".into(), String::new())
        );
        assert_eq!(
            parse_s3_uri("s3://my.bucket/a/b").unwrap(),
            ("my.bucket".into(), "a/b/".into())
        );
        assert_eq!(
            parse_s3_uri("s3://b12/orch/").unwrap(),
            ("b12".into(), "orch/".into())
        );
        for bad in [
            "my-bucket",
            "s3:/my-bucket",
            "https://my-bucket/x",
            "s3://",
            "s3://ab",
            "s3://My-Bucket",
            "s3://-bucket",
            "s3://bucket-",
            "s3://a..b",
            "s3://192.168.1.1",
            "s3://xn--bucket",
            "s3://bucket-s3alias",
            "s3://under_score",
            "s3://bucket//",
            "s3://bucket/a//b/",
            "s3://bucket/../x",
            "s3://bucket/a/./b",
            "s3://bucket/a\\b",
            "s3://bucket/a\nb",
            "s3://bucket//x",
        ] {
            let err = parse_s3_uri(bad).unwrap_err();
            assert_eq!(err.category(), ErrorCategory::Invalid, "{bad:?}");
        }
        let long = format!("s3://{}", "a".repeat(64));
        assert!(parse_s3_uri(&long).is_err());
        let max = format!("s3://{}", "a".repeat(63));
        assert!(parse_s3_uri(&max).is_ok());
    }

    #[test]
    fn relative_keys_and_prefixes() {
        for bad in [
            "",
            "/a",
            "a//b",
            "a/",
            "..",
            "../a",
            "a/..",
            "a/./b",
            ".",
            "a\\b",
            "a\0b",
            "a\u{7f}b",
            "a/.b.tmp-12",
        ] {
            assert!(check_relative(bad, Relative::Key).is_err(), "{bad:?}");
        }
        for good in [
            "a",
            ".hidden",
            "a..b/c",
            "jobs/j-1/results/000001/1/_DONE",
            "ü/ß",
        ] {
            assert!(check_relative(good, Relative::Key).is_ok(), "{good:?}");
        }
        for good in ["", "a/", "jobs/j", "a/b/"] {
            assert!(check_relative(good, Relative::Prefix).is_ok(), "{good:?}");
        }
        for bad in ["/", "../", "a//", "a/..", "x\\"] {
            assert!(check_relative(bad, Relative::Prefix).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn intermediate_keys() {
        for yes in [
            "jobs/j1/aggregate/0/1.parquet",
            "jobs/j1/checkpoints/000001.sqlite",
            "jobs/j1/input/000003.jsonl",
        ] {
            assert!(is_intermediate(yes), "{yes}");
        }
        for no in [
            "jobs/j1/results/000001/1/part.parquet",
            "jobs/j1/job.json",
            "jobs/j1/aggregate",
            "jobs/j1/aggregate/",
            "jobs//aggregate/x",
            "other/j1/aggregate/x",
            "jobs/aggregate/x",
        ] {
            assert!(!is_intermediate(no), "{no}");
        }
    }
}
