//! Batch writes: `BatchWriteItem`s of 25, a few in flight at once, and the retry of the items
//! DynamoDB leaves unprocessed ([`retry_unprocessed`] with [`BatchRetry`], which the SQS queue
//! uses for its batches too). The SDK retries whole failed calls itself; partial success is
//! ours to handle.

use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{DeleteRequest, PutRequest, WriteRequest};
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult};
use orch_core::backoff::Backoff;

use super::item::{Item, build_error};
use super::{DynamoStateStore, SERVICE};
use crate::error::sdk_error;

/// DynamoDB's limit per `BatchWriteItem`.
const BATCH_WRITE_MAX: usize = 25;
/// `BatchWriteItem` requests in flight at once while creating or deleting a job: enough to
/// write 100k tasks in tens of seconds rather than minutes, few enough not to trip the
/// per-partition write limit (all tasks of a job share one partition key).
const WRITE_CONCURRENCY: usize = 4;

/// Exponential backoff with jitter for the items a batch call leaves unprocessed (the SDK
/// retries whole failed calls itself; partial success is ours to handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRetry {
    /// The first wait; each further round waits up to twice as long.
    pub base: Duration,
    /// No single wait exceeds this.
    pub cap: Duration,
    /// Calls in all, the first included, before giving up with a transient error.
    pub max_calls: u32,
}

impl Default for BatchRetry {
    /// About a minute of patience in all: throttling of a hot partition clears in seconds.
    fn default() -> Self {
        BatchRetry {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(10),
            max_calls: 12,
        }
    }
}

impl BatchRetry {
    /// The wait before call `round + 1` (round 1 = the first retry): doubling from `base` up
    /// to `cap`, with equal jitter, so waits grow but concurrent writers spread out.
    pub fn delay(&self, round: u32) -> Duration {
        Backoff::doubling(self.base, self.cap).delay_jittered(round, fastrand::f64())
    }
}

/// Calls `call` with `items` until it leaves none unprocessed, waiting per `backoff` between
/// rounds; collects what the calls return. `call` answers with its results and the items it
/// did not process.
pub async fn retry_unprocessed<T, R, F, Fut>(
    what: &str,
    mut items: Vec<T>,
    backoff: BatchRetry,
    mut call: F,
) -> BackendResult<Vec<R>>
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = BackendResult<(Vec<R>, Vec<T>)>>,
{
    let mut results = Vec::new();
    let mut calls = 0u32;
    while !items.is_empty() {
        if calls > 0 {
            if calls >= backoff.max_calls {
                return Err(BackendError::message(
                    ErrorCategory::Transient,
                    format!(
                        "{what}: {} items still unprocessed after {calls} calls",
                        items.len()
                    ),
                ));
            }
            tokio::time::sleep(backoff.delay(calls)).await;
        }
        calls += 1;
        let (mut got, rest) = call(items).await?;
        results.append(&mut got);
        items = rest;
    }
    Ok(results)
}

impl DynamoStateStore {
    /// Writes (puts or deletes) in `BatchWriteItem`s of 25, a few in flight at once, each
    /// retrying its unprocessed items. After the first failure no new batch starts, but those
    /// in flight are waited for rather than aborted: an aborted request may still land on the
    /// server later, after a cleanup that ran in the meantime, and leave items behind.
    pub(super) async fn write_batches(&self, requests: Vec<WriteRequest>) -> BackendResult<()> {
        let mut chunks = requests.into_iter().peekable();
        let mut running = tokio::task::JoinSet::new();
        let mut first_error: Option<BackendError> = None;
        loop {
            while first_error.is_none()
                && running.len() < WRITE_CONCURRENCY
                && chunks.peek().is_some()
            {
                let chunk: Vec<WriteRequest> = chunks.by_ref().take(BATCH_WRITE_MAX).collect();
                let client = self.client.clone();
                let table = self.table.clone();
                let backoff = self.backoff;
                running.spawn(async move { batch_write(&client, &table, chunk, backoff).await });
            }
            let error = match running.join_next().await {
                None => return first_error.map_or(Ok(()), Err),
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => e,
                Some(Err(e)) => BackendError::other(
                    ErrorCategory::Infrastructure,
                    "a BatchWriteItem task did not complete",
                    e,
                ),
            };
            first_error.get_or_insert(error);
        }
    }
}

pub(super) fn put_request(item: Item) -> BackendResult<WriteRequest> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| build_error("PutRequest", e))?;
    Ok(WriteRequest::builder().put_request(put).build())
}

pub(super) fn delete_request(key: Item) -> BackendResult<WriteRequest> {
    let delete = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(|e| build_error("DeleteRequest", e))?;
    Ok(WriteRequest::builder().delete_request(delete).build())
}

/// One `BatchWriteItem` of at most 25 requests, with its unprocessed items retried.
async fn batch_write(
    client: &Client,
    table: &str,
    requests: Vec<WriteRequest>,
    backoff: BatchRetry,
) -> BackendResult<()> {
    retry_unprocessed("BatchWriteItem", requests, backoff, |requests| async move {
        let mut out = client
            .batch_write_item()
            .request_items(table, requests)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "BatchWriteItem", table, e))?;
        let rest = out
            .unprocessed_items
            .as_mut()
            .and_then(|u| u.remove(table))
            .unwrap_or_default();
        Ok((Vec::<()>::new(), rest))
    })
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick() -> BatchRetry {
        BatchRetry {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            max_calls: 5,
        }
    }

    #[tokio::test]
    async fn unprocessed_items_are_retried_until_done() {
        let calls = AtomicU32::new(0);
        let got = retry_unprocessed("test", (0..10).collect(), quick(), |items: Vec<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                // Process the first half of what is asked each time (as a throttled table does).
                let (done, rest) = items.split_at(items.len().div_ceil(2));
                Ok((done.to_vec(), rest.to_vec()))
            }
        })
        .await
        .unwrap();
        let mut got = got;
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        // 10 → 5 → 2 → 1 → 0 left.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn gives_up_after_max_calls_with_a_transient_error() {
        let calls = AtomicU32::new(0);
        let err = retry_unprocessed("stuck", vec![1, 2, 3], quick(), |items: Vec<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok((Vec::<()>::new(), items)) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(err.category(), ErrorCategory::Transient);
        assert!(
            err.to_string().contains("3 items still unprocessed"),
            "{err}"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_under_its_cap() {
        let b = BatchRetry {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_calls: 10,
        };
        for _ in 0..100 {
            let first = b.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = b.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = b.delay(40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
