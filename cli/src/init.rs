//! `orch init`: creates the AWS resources of docs/aws.md — the DynamoDB table, the SQS retry
//! queue with its dead-letter queue and, on request, an S3 bucket — so that a developer or a
//! test can point orch at moto, LocalStack or a sandbox account with one command. Production
//! creates the same resources with `infra/` (Terraform), whose roles are not allowed to create
//! tables or queues.
//!
//! Every step accepts what already exists, so `orch init` can run again; it says for each
//! resource whether it created or found it. Errors name the service, the resource and, when the
//! service cannot be reached, the endpoint — never credentials.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_sdk_dynamodb::config::ProvideCredentials;
use clap::Args;
use orch_aws::config::{self, AwsSettings};
use orch_aws::{AwsError, dynamodb, s3, sqs};

use crate::Failure;

/// docs/aws.md: a message moves to the dead-letter queue after this many receives.
const MAX_RECEIVE_COUNT: u32 = 5;
/// Attempts per call: fewer than a worker's (`config::MAX_ATTEMPTS`), so a wrong endpoint is
/// reported within seconds rather than after half a minute of backoff.
const INIT_ATTEMPTS: u32 = 3;

#[derive(Args)]
pub struct InitArgs {
    /// Also create this S3 bucket (versioning on, public access blocked), in the configured
    /// region.
    #[arg(long, value_name = "NAME")]
    pub bucket: Option<String>,
}

pub fn init(args: InitArgs) -> Result<u8, Failure> {
    let settings = AwsSettings::from_env().map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(bucket) = &args.bucket {
        s3::parse_s3_uri(&format!("s3://{bucket}")).map_err(|e| {
            let reason = match e {
                AwsError::Invalid { reason, .. } => reason,
                other => other.to_string(),
            };
            Failure::usage(format!("--bucket {bucket:?}: {reason}"))
        })?;
    }
    crate::runtime()?.block_on(init_all(&settings, args.bucket.as_deref()))
}

async fn init_all(settings: &AwsSettings, bucket: Option<&str>) -> Result<u8, Failure> {
    let sdk = config::load_sdk_config()
        .await
        .to_builder()
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(INIT_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .build();
    if sdk.region().is_none() {
        return Err(Failure::usage(
            "no AWS region is configured: set AWS_REGION (or a region in your AWS profile)",
        ));
    }
    // Without this check, missing credentials surface as a failure to send the first request,
    // which reads like an unreachable endpoint.
    let credentials = match sdk.credentials_provider() {
        Some(provider) => provider.provide_credentials().await.is_ok(),
        None => false,
    };
    if !credentials {
        return Err(Failure::usage(
            "no AWS credentials: the standard chain (environment, profile, SSO, instance \
             metadata) found none; for moto or LocalStack set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY to any value",
        ));
    }
    let fail = |e: AwsError| failure(e, &sdk);
    let mut created = 0;

    let table = &settings.table;
    let dynamo = config::dynamodb_client(&sdk);
    // Whether it existed only decides what is printed; a failed look is left to CreateTable,
    // whose error names the problem.
    let existed = dynamo
        .describe_table()
        .table_name(table)
        .send()
        .await
        .is_ok();
    dynamodb::create_table(&dynamo, table).await.map_err(fail)?;
    report(
        &mut created,
        existed,
        &format!("DynamoDB table {table} (keys pk/sk, indexes by-state and jobs)"),
    );

    let queue = &settings.queue;
    let dlq = format!("{queue}{}", sqs::DEAD_LETTER_SUFFIX);
    let sqs_client = config::sqs_client(&sdk);
    let mut existed = true;
    for name in [queue, &dlq] {
        existed &= sqs_client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .is_ok();
    }
    sqs::create_queues(&sqs_client, queue, MAX_RECEIVE_COUNT)
        .await
        .map_err(fail)?;
    report(
        &mut created,
        existed,
        &format!(
            "SQS queue {queue} and dead-letter queue {dlq} (maxReceiveCount {MAX_RECEIVE_COUNT})"
        ),
    );

    if let Some(bucket) = bucket {
        let setup = s3::create_bucket(&config::s3_client(&sdk, settings), bucket)
            .await
            .map_err(fail)?;
        let mut what = format!("S3 bucket {bucket}");
        if !setup.versioning {
            what.push_str(" (this endpoint does not support versioning)");
        }
        if !setup.public_access_blocked {
            what.push_str(" (this endpoint does not support public access blocks)");
        }
        report(&mut created, !setup.created, &what);
    }

    if created == 0 {
        println!("everything already exists; nothing to do");
    }
    Ok(0)
}

fn report(created: &mut u32, existed: bool, what: &str) {
    if existed {
        println!("{what}: already exists");
    } else {
        *created += 1;
        println!("{what}: created");
    }
}

/// Every failure of `init` exits 1; one that is about reaching the service names the endpoint,
/// the likeliest thing to be wrong.
fn failure(e: AwsError, sdk: &SdkConfig) -> Failure {
    let mut message = e.to_string();
    if let AwsError::Service { service, code, .. } = &e
        && matches!(code.as_str(), "DispatchFailure" | "Timeout")
    {
        message = format!(
            "cannot reach {service} at {}: {message}",
            endpoint(service, sdk)
        );
    }
    Failure { code: 1, message }
}

/// The endpoint the SDK uses for `service`, by the same precedence as the SDK: the service's
/// variable, then `AWS_ENDPOINT_URL`, then the shared configuration, else AWS itself. Any
/// user:password in the URL is left out.
fn endpoint(service: &str, sdk: &SdkConfig) -> String {
    let from_env = |k: String| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    from_env(format!(
        "AWS_ENDPOINT_URL_{}",
        service.to_ascii_uppercase().replace('-', "_")
    ))
    .or_else(|| from_env("AWS_ENDPOINT_URL".into()))
    .or_else(|| sdk.endpoint_url().map(str::to_string))
    .map(|url| without_userinfo(&url))
    .unwrap_or_else(|| {
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
        format!("the AWS endpoint of region {region}")
    })
}

fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_shown_without_userinfo() {
        assert_eq!(
            without_userinfo("http://user:secret@localhost:4566/x"),
            "http://localhost:4566/x"
        );
        assert_eq!(
            without_userinfo("http://127.0.0.1:5000"),
            "http://127.0.0.1:5000"
        );
        assert_eq!(without_userinfo("host:1"), "host:1");
    }
}
