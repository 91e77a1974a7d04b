//! Creating a bucket for development and tests (`orch init --bucket`); production buckets come
//! from `infra/` (docs/aws.md, "Configuration").

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;

use super::keys::check_bucket;
use crate::error::{AwsError, sdk_error};

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
