//! Uploads of large files, and of streams of unknown length, in parts. Writes are atomic
//! because S3 PUTs are; a multipart upload becomes visible only when completed, and is aborted
//! on any failure (or cancellation), so no invisible parts stay behind and cost money.

use std::path::{Path, PathBuf};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, ByteSource};
use tokio::task::JoinSet;

use super::checksum::SHA256_METADATA;
use super::conditional::{WRITER_METADATA, writer_token};
use super::keys::tagging_for;
use super::{S3Store, io_error};
use crate::error::{AwsError, sdk_error};

/// S3's largest part count; larger files get larger parts.
const MAX_PARTS: u64 = 10_000;

impl S3Store {
    /// Uploads a local file of `size` bytes in parts; the upload is aborted on any failure,
    /// and when this future is dropped before it finishes.
    pub(super) async fn put_multipart(
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
            return Err(missing_upload_id(self.uri(full)));
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

    /// Uploads the rest of a stream whose first `pending` bytes (at least one part) are in
    /// memory, a part at a time with up to `part_concurrency` parts in flight, so at most
    /// `part_concurrency + 1` parts are held. Its sha256 is not known when the upload starts,
    /// so the object carries none (each part is checked by S3). Aborted on any failure, of the
    /// stream or of S3, and when this future is dropped.
    pub(super) async fn put_stream_multipart(
        &self,
        relative: &str,
        full: &str,
        pending: Vec<u8>,
        data: &mut dyn ByteSource,
    ) -> Result<(), BackendError> {
        let token = writer_token();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .metadata(WRITER_METADATA, &token)
            .set_tagging(tagging_for(relative))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| sdk_error("s3", "CreateMultipartUpload", self.uri(full), e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(missing_upload_id(self.uri(full)).into());
        };
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full.to_string(),
            upload_id: Some(upload_id.clone()),
        };
        let result = self
            .stream_parts_and_complete(full, &upload_id, pending, data)
            .await;
        let unclear = match &result {
            Err(StreamFailure::Store(e)) if completion_unclear(e) => {
                self.written_by(full, &token).await?
            }
            _ => false,
        };
        guard.upload_id = None;
        match result {
            Ok(()) => Ok(()),
            Err(_) if unclear => Ok(()),
            Err(e) => {
                self.abort_multipart(full, &upload_id).await;
                Err(match e {
                    StreamFailure::Data(e) => e,
                    StreamFailure::Store(e) => e.into(),
                })
            }
        }
    }

    async fn stream_parts_and_complete(
        &self,
        full: &str,
        upload_id: &str,
        mut pending: Vec<u8>,
        data: &mut dyn ByteSource,
    ) -> Result<(), StreamFailure> {
        let part_size = usize::try_from(self.options.part_size).unwrap_or(usize::MAX);
        let mut parts = Vec::new();
        let mut running: JoinSet<Result<CompletedPart, AwsError>> = JoinSet::new();
        let mut number = 0u64;
        let mut ended = false;
        loop {
            while !ended && pending.len() < part_size {
                match data.next_chunk().await.map_err(StreamFailure::Data)? {
                    Some(chunk) => pending.extend_from_slice(&chunk),
                    None => ended = true,
                }
            }
            let body = if pending.len() > part_size {
                let rest = pending.split_off(part_size);
                std::mem::replace(&mut pending, rest)
            } else {
                std::mem::take(&mut pending)
            };
            if body.is_empty() {
                break;
            }
            if number >= MAX_PARTS {
                return Err(StreamFailure::Store(AwsError::invalid(
                    self.uri(full),
                    format!(
                        "a streamed object is at most {MAX_PARTS} parts of {} bytes",
                        self.options.part_size
                    ),
                )));
            }
            number += 1;
            while running.len() >= self.options.part_concurrency {
                parts.push(joined(running.join_next().await, full)?);
            }
            running.spawn(send_part(
                self.client.clone(),
                self.bucket.clone(),
                full.to_string(),
                upload_id.to_string(),
                // At most MAX_PARTS, so it fits an i32.
                i32::try_from(number).unwrap_or(i32::MAX),
                ByteStream::from(body),
            ));
            if ended && pending.is_empty() {
                break;
            }
        }
        while !running.is_empty() {
            parts.push(joined(running.join_next().await, full)?);
        }
        self.complete_multipart(full, upload_id, parts)
            .await
            .map_err(StreamFailure::Store)
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
        self.complete_multipart(full, upload_id, parts).await
    }

    /// Makes the object of `upload_id` from its `parts` (in any order: S3 wants them sorted).
    async fn complete_multipart(
        &self,
        full: &str,
        upload_id: &str,
        mut parts: Vec<CompletedPart>,
    ) -> Result<(), AwsError> {
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
}

fn missing_upload_id(resource: String) -> AwsError {
    AwsError::Service {
        service: "s3",
        operation: "CreateMultipartUpload",
        resource,
        code: "MissingUploadId".into(),
        message: "the response has no upload id".into(),
        category: ErrorCategory::Permanent,
        conflict: false,
    }
}

/// Why a streamed upload stopped: its source, or S3.
enum StreamFailure {
    Data(BackendError),
    Store(AwsError),
}

/// The part a finished upload task produced.
fn joined(
    next: Option<Result<Result<CompletedPart, AwsError>, tokio::task::JoinError>>,
    full: &str,
) -> Result<CompletedPart, StreamFailure> {
    match next {
        Some(Ok(Ok(part))) => Ok(part),
        Some(Ok(Err(e))) => Err(StreamFailure::Store(e)),
        Some(Err(e)) => Err(StreamFailure::Store(AwsError::Io {
            path: full.to_string(),
            source: std::io::Error::other(format!("upload task failed: {e}")),
        })),
        None => Err(StreamFailure::Store(AwsError::Io {
            path: full.to_string(),
            source: std::io::Error::other("no upload task to wait for"),
        })),
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
    send_part(client, bucket, key, upload_id, number, body).await
}

/// Uploads part `number` of an upload with `body`, a body the SDK can send again on a retry.
async fn send_part(
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    number: i32,
    body: ByteStream,
) -> Result<CompletedPart, AwsError> {
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
