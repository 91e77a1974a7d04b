//! Reads of whole objects, ranges and downloads to a file. The SDK retries each call up to the
//! response headers; a body that breaks off after them is outside its retry loop, so these
//! reads restart themselves a few times here. Whole-object reads verify the object's sha256
//! (see `checksum`), and a download becomes visible at its destination only complete and
//! verified.

use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use orch_core::ErrorCategory;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::checksum::{expected_sha256, verify_sha256};
use super::keys::TMP_MARKER;
use super::{BODY_ATTEMPTS, MIB, S3Store, backoff, io_error, service_code};
use crate::error::{AwsError, sdk_error};

/// Buffer of the local file writer in `get_to_file`: few, large writes to the disk.
const DOWNLOAD_BUFFER: usize = MIB as usize;

impl S3Store {
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
    pub(super) async fn get_once(&self, full: &str) -> Result<Option<Vec<u8>>, AwsError> {
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
    pub(super) async fn get_range_once(
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
    pub(super) async fn download_once(&self, full: &str, dest: &Path) -> Result<bool, AwsError> {
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
pub(super) async fn retry_body<T, F, Fut>(mut read: F) -> Result<T, AwsError>
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
