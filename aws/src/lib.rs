//! `orch-aws`: the durable data plane of orch in a cluster (docs/aws.md).
//!
//! The same traits as the embedded backends (`orch_core::backend`), implemented with the real
//! AWS SDK, so the engine, the driver and the workers do not know which one they talk to:
//! - [`config`]: the SDK configuration — the standard credential chain and region, the
//!   standard endpoint variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, …) for moto,
//!   LocalStack or MinIO, and orch's own names (table, queue) with their defaults;
//! - [`s3`]: the S3 ObjectStore;
//! - [`dynamodb`]: the DynamoDB StateStore (one table, see docs/aws.md);
//! - [`sqs`]: the SQS retry Queue;
//! - [`error`]: the crate's error type and its mapping onto `BackendError` categories;
//! - [`backends`]: the three assembled into `orch_core::platform::Backends` for an
//!   `s3://bucket/prefix/` storage URI ([`open_backends`], [`open_queue`]).
//!
//! No credential ever appears in a log line or an error message: errors carry the operation,
//! the resource name and the service's error code, never request headers or configuration.

pub mod backends;
pub mod config;
pub mod dynamodb;
pub mod error;
pub mod lock;
pub mod platform;
pub mod s3;
pub mod sqs;

pub use backends::{S3Locations, open_backends, open_backends_with, open_queue, open_queue_with};
pub use config::AwsSettings;
pub use error::{AwsError, Result};
pub use platform::AwsPlatform;
