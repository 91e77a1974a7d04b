//! Where orch's AWS resources are and how to reach them (docs/aws.md, "Configuration").
//!
//! Credentials and region come from the standard AWS chain (environment, profile, SSO, IRSA,
//! instance metadata) and never from a job spec. Endpoints come from the standard variables
//! `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>` (read by the SDK itself), so the same
//! binary talks to AWS, moto, LocalStack or MinIO. Path-style S3 addressing is switched on
//! automatically for a custom S3 endpoint (few of them serve virtual-host buckets) and can be
//! forced either way with `ORCH_S3_FORCE_PATH_STYLE`.

use aws_config::{BehaviorVersion, SdkConfig};

use crate::error::{AwsError, Result};

/// Default DynamoDB table (`ORCH_DYNAMODB_TABLE`).
pub const DEFAULT_TABLE: &str = "orch";
/// Default SQS retry queue (`ORCH_SQS_QUEUE`); its dead-letter queue is `<name>-dlq`.
pub const DEFAULT_QUEUE: &str = "orch-retries";
/// Attempts per AWS call (the SDK's standard retry mode: exponential backoff with jitter on
/// throttling, 5xx and transport errors).
pub const MAX_ATTEMPTS: u32 = 6;

/// orch's own AWS settings, next to the SDK's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub table: String,
    pub queue: String,
    /// `None`: path-style exactly when a custom S3 endpoint is configured.
    pub force_path_style: Option<bool>,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            table: DEFAULT_TABLE.to_string(),
            queue: DEFAULT_QUEUE.to_string(),
            force_path_style: None,
        }
    }
}

impl AwsSettings {
    /// Reads `ORCH_DYNAMODB_TABLE`, `ORCH_SQS_QUEUE` and `ORCH_S3_FORCE_PATH_STYLE`.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`AwsSettings::from_env`], from any variable lookup (tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let non_empty = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let force_path_style = match non_empty("ORCH_S3_FORCE_PATH_STYLE").as_deref() {
            None => None,
            Some("true" | "1") => Some(true),
            Some("false" | "0") => Some(false),
            Some(other) => {
                return Err(AwsError::invalid(
                    "ORCH_S3_FORCE_PATH_STYLE",
                    format!("must be true or false, got {other:?}"),
                ));
            }
        };
        Ok(AwsSettings {
            table: non_empty("ORCH_DYNAMODB_TABLE").unwrap_or_else(|| DEFAULT_TABLE.into()),
            queue: non_empty("ORCH_SQS_QUEUE").unwrap_or_else(|| DEFAULT_QUEUE.into()),
            force_path_style,
        })
    }
}

/// The region the SDK finds in its standard places (`AWS_REGION`, a profile, an instance's
/// metadata), if any: without one no request can be signed.
pub async fn sdk_region() -> Option<String> {
    use aws_config::meta::region::ProvideRegion as _;
    aws_config::default_provider::region::default_provider()
        .region()
        .await
        .map(|r| r.to_string())
}

/// The SDK configuration from the standard chain, with orch's retry policy.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .load()
        .await
}

/// Whether a custom S3 endpoint is configured (the SDK reads these same variables).
fn custom_s3_endpoint(sdk: &SdkConfig) -> bool {
    sdk.endpoint_url().is_some()
        || ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

pub fn s3_client(sdk: &SdkConfig, settings: &AwsSettings) -> aws_sdk_s3::Client {
    let path_style = settings
        .force_path_style
        .unwrap_or_else(|| custom_s3_endpoint(sdk));
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub fn dynamodb_client(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(sdk)
}

pub fn sqs_client(sdk: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(sdk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let none = AwsSettings::from_lookup(|_| None).unwrap_or_default();
        assert_eq!(none, AwsSettings::default());
        let set = AwsSettings::from_lookup(|k| match k {
            "ORCH_DYNAMODB_TABLE" => Some("t1".into()),
            "ORCH_SQS_QUEUE" => Some("q1".into()),
            "ORCH_S3_FORCE_PATH_STYLE" => Some("false".into()),
            _ => None,
        });
        assert_eq!(
            set.ok(),
            Some(AwsSettings {
                table: "t1".into(),
                queue: "q1".into(),
                force_path_style: Some(false)
            })
        );
        let bad = AwsSettings::from_lookup(|k| {
            (k == "ORCH_S3_FORCE_PATH_STYLE").then(|| "maybe".to_string())
        });
        assert!(matches!(bad, Err(AwsError::Invalid { .. })));
    }
}
