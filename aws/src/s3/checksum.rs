//! Integrity: every object carries the sha256 of its bytes as user metadata
//! (`x-amz-meta-sha256`); whole-object reads verify it, so an object overwritten behind orch's
//! back or corrupted fails loudly (Permanent) instead of feeding wrong bytes to a merge.
//! Uploads also send `ChecksumAlgorithm::Sha256` (moto accepts it too), so S3 itself rejects
//! bytes damaged in transit.

use std::collections::HashMap;
use std::path::Path;

use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult};
use sha2::{Digest, Sha256};

use super::{MIB, local_file_error};
use crate::error::AwsError;

/// User metadata holding the hex sha256 of the object's bytes (`x-amz-meta-sha256`).
pub const SHA256_METADATA: &str = "sha256";

pub(super) fn expected_sha256(metadata: Option<&HashMap<String, String>>) -> Option<String> {
    metadata
        .and_then(|m| m.get(SHA256_METADATA))
        .map(|s| s.trim().to_ascii_lowercase())
}

/// A mismatch means the stored bytes are not the ones orch wrote; reading again would
/// return the same bytes, so the error is Permanent.
pub(super) fn verify_sha256(resource: &str, expected: &str, actual: &str) -> Result<(), AwsError> {
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

/// The hex sha256 of a local file, read in blocks off the async workers.
pub(super) async fn sha256_file(path: &Path) -> BackendResult<String> {
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
