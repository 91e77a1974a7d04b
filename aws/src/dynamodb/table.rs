//! Creating orch's table for development and tests (`orch init`; production creates it with
//! `infra/`) exactly as docs/aws.md ("DynamoDB: one table") describes it, and waiting until it
//! and its indexes are ACTIVE.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, IndexStatus, KeySchemaElement, KeyType,
    PointInTimeRecoverySpecification, Projection, ProjectionType, ScalarAttributeType,
    SseSpecification, SseType, TableStatus,
};
use orch_core::ErrorCategory;
use orch_core::backoff::Backoff;

use super::SERVICE;
use super::item::{GSI1PK, GSI1SK, GSI2PK, GSI2SK, INDEX_BY_STATE, INDEX_JOBS, PK, SK};
use crate::error::{AwsError, sdk_error};

/// How [`create_table_with`] sets up the table beyond its keys and indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOptions {
    /// Server-side encryption with this KMS key (ARN, id or alias); `None`: DynamoDB's
    /// AWS-managed key. docs/aws.md asks for the orch key, which Terraform passes.
    pub kms_key: Option<String>,
    /// Point-in-time recovery (docs/aws.md: on).
    pub point_in_time_recovery: bool,
    /// How long to wait for the table and its indexes to become ACTIVE.
    pub timeout: Duration,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            kms_key: None,
            point_in_time_recovery: true,
            timeout: Duration::from_secs(300),
        }
    }
}

/// Creates orch's table exactly as docs/aws.md describes it (on-demand billing, keys `pk`/`sk`,
/// GSIs `by-state` and `jobs`, encryption, point-in-time recovery) and waits until it and its
/// indexes are ACTIVE. An existing table with the same keys and indexes is accepted, so
/// `orch init` can run twice.
pub async fn create_table(client: &Client, name: &str) -> crate::Result<()> {
    create_table_with(client, name, &TableOptions::default()).await
}

/// [`create_table`] with options.
pub async fn create_table_with(
    client: &Client,
    name: &str,
    options: &TableOptions,
) -> crate::Result<()> {
    let invalid = |e: BuildError| AwsError::invalid(format!("table {name}"), e.to_string());
    let attribute = |attr: &str| {
        AttributeDefinition::builder()
            .attribute_name(attr)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(invalid)
    };
    let key_element = |attr: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(attr)
            .key_type(key_type)
            .build()
            .map_err(invalid)
    };
    let index = |index: &str, hash: &str, range: &str, projection: ProjectionType| {
        GlobalSecondaryIndex::builder()
            .index_name(index)
            .key_schema(key_element(hash, KeyType::Hash)?)
            .key_schema(key_element(range, KeyType::Range)?)
            .projection(Projection::builder().projection_type(projection).build())
            .build()
            .map_err(invalid)
    };
    let created = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(
            [PK, SK, GSI1PK, GSI1SK, GSI2PK, GSI2SK]
                .into_iter()
                .map(attribute)
                .collect::<crate::Result<Vec<_>>>()?,
        ))
        .key_schema(key_element(PK, KeyType::Hash)?)
        .key_schema(key_element(SK, KeyType::Range)?)
        .global_secondary_indexes(index(INDEX_BY_STATE, GSI1PK, GSI1SK, ProjectionType::All)?)
        .global_secondary_indexes(index(INDEX_JOBS, GSI2PK, GSI2SK, ProjectionType::KeysOnly)?)
        .sse_specification(
            SseSpecification::builder()
                .enabled(true)
                .sse_type(SseType::Kms)
                .set_kms_master_key_id(options.kms_key.clone())
                .build(),
        )
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_resource_in_use_exception()) =>
        {
            check_existing_table(client, name).await?;
        }
        Err(e) => return Err(sdk_error(SERVICE, "CreateTable", name, e)),
    }
    wait_until_active(client, name, options.timeout).await?;
    if options.point_in_time_recovery {
        let spec = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(invalid)?;
        client
            .update_continuous_backups()
            .table_name(name)
            .point_in_time_recovery_specification(spec)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "UpdateContinuousBackups", name, e))?;
    }
    Ok(())
}

/// An existing table is fine only if it has orch's keys and indexes: anything else would fail
/// later, on the first query, with a less helpful message.
async fn check_existing_table(client: &Client, name: &str) -> crate::Result<()> {
    let out = client
        .describe_table()
        .table_name(name)
        .send()
        .await
        .map_err(|e| sdk_error(SERVICE, "DescribeTable", name, e))?;
    let Some(table) = out.table else {
        return Err(AwsError::invalid(
            format!("table {name}"),
            "DescribeTable returned no table",
        ));
    };
    let keys = |schema: &[KeySchemaElement]| -> Vec<(String, String)> {
        schema
            .iter()
            .map(|k| (k.attribute_name.clone(), k.key_type.as_str().to_string()))
            .collect()
    };
    let want = |hash: &str, range: &str| {
        vec![
            (hash.to_string(), "HASH".to_string()),
            (range.to_string(), "RANGE".to_string()),
        ]
    };
    let index_keys = |index: &str| {
        table
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_name() == Some(index))
            .map(|i| keys(i.key_schema()))
    };
    let fits = keys(table.key_schema()) == want(PK, SK)
        && index_keys(INDEX_BY_STATE) == Some(want(GSI1PK, GSI1SK))
        && index_keys(INDEX_JOBS) == Some(want(GSI2PK, GSI2SK));
    if fits {
        Ok(())
    } else {
        Err(AwsError::invalid(
            format!("table {name}"),
            "exists without the keys and indexes of docs/aws.md (pk/sk, by-state, jobs)",
        ))
    }
}

/// Polls `DescribeTable` until the table and every index are ACTIVE.
async fn wait_until_active(client: &Client, name: &str, timeout: Duration) -> crate::Result<()> {
    const TABLE_POLL: Backoff =
        Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut polls = 1;
    loop {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "DescribeTable", name, e))?;
        if let Some(table) = out.table {
            let indexes_active = table
                .global_secondary_indexes()
                .iter()
                .all(|i| i.index_status() == Some(&IndexStatus::Active));
            if table.table_status() == Some(&TableStatus::Active) && indexes_active {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AwsError::Service {
                service: SERVICE,
                operation: "DescribeTable",
                resource: name.to_string(),
                code: "Timeout".into(),
                message: format!("the table did not become ACTIVE within {timeout:?}"),
                category: ErrorCategory::Transient,
                conflict: false,
            });
        }
        tokio::time::sleep(TABLE_POLL.delay(polls)).await;
        polls += 1;
    }
}
