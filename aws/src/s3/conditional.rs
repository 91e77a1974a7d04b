//! Create-once (`put_if_absent`, for `_DONE` / `_SUCCESS`) with `If-None-Match: *`. A 412
//! means someone else's object is there, except when the SDK retried our own successful PUT
//! whose response was lost: every create carries a random writer token in its metadata, and a
//! 412 whose object carries our token counts as our win. Multipart uploads carry a token too,
//! for a completion whose outcome is unclear (docs/aws.md, "S3 layout").

use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};

use super::{S3Store, backoff, service_code};
use crate::error::{AwsError, sdk_error};

/// Attempts of `put_if_absent` while S3 reports a concurrent conditional write (409).
const CONDITIONAL_ATTEMPTS: u32 = 5;
/// User metadata holding the random token of the `put_if_absent` call that created the object.
pub(super) const WRITER_METADATA: &str = "orch-writer";

impl S3Store {
    /// `put_if_absent` of `key` at its full key `full`: `true` when this call created the
    /// object.
    pub(super) async fn create_once(
        &self,
        key: &str,
        full: &str,
        data: Vec<u8>,
    ) -> Result<bool, AwsError> {
        let sha256 = hex::encode(Sha256::digest(&data));
        let token = writer_token();
        let mut attempt = 1;
        loop {
            let sent = self
                .put_request(key, full, &sha256)
                .metadata(WRITER_METADATA, &token)
                .if_none_match("*")
                .body(ByteStream::from(data.clone()))
                .send()
                .await;
            let err = match sent {
                Ok(_) => return Ok(true),
                Err(e) => sdk_error("s3", "PutObject", self.uri(full), e),
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
                    return self.written_by(full, &token).await;
                }
                _ => return Err(err),
            }
        }
    }

    /// Whether the object at `full` was created by the write that carried `token`.
    pub(super) async fn written_by(&self, full: &str, token: &str) -> Result<bool, AwsError> {
        Ok(self
            .head(full)
            .await?
            .is_some_and(|m| m.get(WRITER_METADATA).map(String::as_str) == Some(token)))
    }
}

/// A random token naming one write, stored as [`WRITER_METADATA`].
pub(super) fn writer_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
