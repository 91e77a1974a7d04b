//! The [`RateLimitStore`] contract on orch's table: one item per bucket (`pk`
//! `RATELIMIT#<key>`, `sk` `BUCKET`), its whole state in `body`, every write an `UpdateItem`
//! conditional on `version` (workers may not `PutItem`), listed through the `jobs` index under
//! its own partition. No refiller process: the shared rate is computed from timestamps in the
//! item (docs/rate-limits.md).

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, RateLimitStore};
use orch_core::ratelimit::Bucket;

use super::item::{
    BODY, GSI2PK, GSI2SK, Item, PK, VERSION, WRITE_ID, encode, get_s, is_own_write, key, n,
    new_write_id, s, version_of,
};
use super::{DynamoStateStore, SERVICE};
use crate::error::sdk_error;

/// `sk` of a bucket item.
const BUCKET_SK: &str = "BUCKET";
/// `gsi2pk` of every bucket item: their partition of the `jobs` index.
const BUCKETS_PARTITION: &str = "RATELIMITS";

fn bucket_pk(key: &str) -> String {
    format!("RATELIMIT#{key}")
}

fn decode(item: &Item) -> BackendResult<Bucket> {
    let what = get_s(item, PK).unwrap_or("a rate limit item").to_string();
    let body = get_s(item, BODY).ok_or_else(|| {
        BackendError::message(ErrorCategory::Permanent, format!("corrupt {what}: no body"))
    })?;
    let mut bucket: Bucket = serde_json::from_str(body)
        .map_err(|e| BackendError::other(ErrorCategory::Permanent, format!("corrupt {what}"), e))?;
    bucket.version = version_of(&what, item)?;
    Ok(bucket)
}

impl DynamoStateStore {
    async fn bucket_item(&self, key: &str) -> BackendResult<Option<Item>> {
        self.item(bucket_pk(key), BUCKET_SK).await
    }
}

#[async_trait]
impl RateLimitStore for DynamoStateStore {
    async fn get_bucket(&self, key_: &str) -> BackendResult<Option<Bucket>> {
        self.bucket_item(key_)
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    async fn put_bucket(&self, bucket: &Bucket) -> BackendResult<Bucket> {
        let mut stored = bucket.clone();
        stored.version = bucket.version + 1;
        stored.writes = bucket.writes + 1;
        let pk = bucket_pk(&bucket.key);
        let body = encode("rate limit bucket", &stored)?;
        let write_id = new_write_id();
        let condition = if bucket.version == 0 {
            "attribute_not_exists(#v)"
        } else {
            "#v = :expected"
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), BUCKET_SK.into())))
            .update_expression(
                "SET #body = :body, #v = :next, #g2pk = :g2pk, #g2sk = :g2sk, #w = :w",
            )
            .condition_expression(condition)
            .expression_attribute_names("#body", BODY)
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_names("#g2pk", GSI2PK)
            .expression_attribute_names("#g2sk", GSI2SK)
            .expression_attribute_names("#w", WRITE_ID)
            .expression_attribute_values(":body", s(body))
            .expression_attribute_values(":next", n(stored.version))
            .expression_attribute_values(":g2pk", s(BUCKETS_PARTITION))
            .expression_attribute_values(":g2sk", s(&bucket.key))
            .expression_attribute_values(":w", s(&write_id))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if bucket.version > 0 {
            update = update.expression_attribute_values(":expected", n(bucket.version));
        }
        match update.send().await {
            Ok(_) => Ok(stored),
            Err(e) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
                    e.as_service_error()
                {
                    if c.item()
                        .is_some_and(|item| is_own_write(item, &write_id, stored.version))
                    {
                        return Ok(stored);
                    }
                    return Err(BackendError::Conflict(format!(
                        "rate limit bucket {} at version {}",
                        bucket.key, bucket.version
                    )));
                }
                Err(sdk_error(SERVICE, "UpdateItem", format!("{} {pk}", self.table), e).into())
            }
        }
    }

    async fn list_buckets(&self) -> BackendResult<Vec<Bucket>> {
        self.index_partition_items("Query rate limits", BUCKETS_PARTITION)
            .await?
            .iter()
            .map(decode)
            .collect()
    }
}
