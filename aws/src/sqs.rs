//! The SQS [`Queue`]: orch's retry queue in a cluster (docs/aws.md, "SQS").
//!
//! A retry request waits out its backoff in the queue and comes back when a consumer dies
//! without deleting it; the embedded queue (`orch_embedded::sqlite_queue`) does the same on one
//! machine, and both pass `orch_testkit::contract::queue_contract`. What SQS needs on top:
//!
//! - **Delays over 15 minutes.** `DelaySeconds` stops at 900 s. A longer delay is sent with
//!   the longest allowed one and the message attribute `orch-not-before` (epoch ms). A receiver
//!   that gets such a message early does not return it: it sends it again with the rest of the
//!   delay (same body, same attributes, plus `orch-id`, the id `send` returned) and deletes the
//!   delivered copy. Callers never see a message before its time, and always under the id
//!   `send` gave them. (A receiver dying between the two steps leaves two copies: delivery is
//!   at least once, as with SQS itself.) The deadline is the sender's clock; receivers whose
//!   clocks run behind hold such a message that much longer.
//! - **Stale receipts.** Every delivery has its own receipt. The contract says that a receipt
//!   whose message was delivered again (or whose visibility ran out) can neither extend nor
//!   delete it: the holder has lost the message. SQS signals that only sometimes (and moto
//!   accepts old receipts), so this queue also remembers the deliveries it handed out — which
//!   receipt is the latest of each message and until when it is hidden — and answers from that
//!   first: `extend` with a superseded or expired receipt is a `Conflict`, `delete` with a
//!   superseded one is a no-op. Receipts from other processes go straight to SQS, whose
//!   `ReceiptHandleIsInvalid` / `MessageNotInflight` mean the same.
//! - **Batches.** SQS takes at most 10 messages per call; `receive` makes as many calls as
//!   `max` needs, and [`SqsQueue::send_batch`] / [`SqsQueue::delete_batch`] send and delete 10 at
//!   a time.
//! - **Long polling.** The first `ReceiveMessage` of a `receive` waits up to
//!   [`SqsQueue::with_wait_time`] (1 s by default) for a message, which also makes SQS consult
//!   all its servers instead of a sample; the coordinator calls `receive` in its loop, so the
//!   wait stays short.
//! - **Dead letters.** The redrive policy of the queue moves a message received
//!   `maxReceiveCount` times to `<name>-dlq` ([`create_queues`] sets both up); the receive count
//!   comes from `ApproximateReceiveCount`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{BuildError, ProvideErrorMetadata};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, Message, Queue};
use orch_core::model::now_ms;

use crate::dynamodb::{BatchRetry, retry_unprocessed};
use crate::error::{AwsError, sdk_error};

const SERVICE: &str = "SQS";

/// Suffix of the dead-letter queue's name (docs/aws.md: `<name>-dlq`).
pub const DEAD_LETTER_SUFFIX: &str = "-dlq";
/// The longest `DelaySeconds` SQS accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// The longest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
/// The longest long-poll wait SQS accepts.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Messages per SQS call.
pub const BATCH_MAX: usize = 10;

/// When a message sent with a longer delay than SQS allows may be delivered (epoch ms).
const NOT_BEFORE: &str = "orch-not-before";
/// The id `send` returned, on a message sent again by a receiver that got it early.
const ORIGINAL_ID: &str = "orch-id";

/// How long a finished delivery is remembered: long enough that a holder which outlived its
/// visibility timeout by this much still gets `Conflict` from this process, short enough to
/// keep the table small.
const REMEMBER: Duration = Duration::from_secs(15 * 60);
/// Remembered deliveries before expired ones are dropped.
const PRUNE_AT: usize = 1_024;

/// Whole seconds, rounded up: a message must never become visible earlier than asked.
fn ceil_secs(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One delivery this queue handed out.
#[derive(Debug)]
struct Delivery {
    /// SQS's message id.
    message: String,
    /// When its visibility timeout ends (measured from before the request, so never later
    /// than SQS's own).
    hidden_until: Instant,
    /// The message was delivered again, with another receipt.
    superseded: bool,
}

#[derive(Debug, Default)]
struct Deliveries {
    by_receipt: HashMap<String, Delivery>,
    /// Message id → its latest receipt.
    latest: HashMap<String, String>,
}

impl Deliveries {
    fn record(&mut self, message: &str, receipt: &str, hidden_until: Instant) {
        if let Some(old) = self.latest.insert(message.to_string(), receipt.to_string())
            && let Some(d) = self.by_receipt.get_mut(&old)
        {
            d.superseded = true;
        }
        self.by_receipt.insert(
            receipt.to_string(),
            Delivery {
                message: message.to_string(),
                hidden_until,
                superseded: false,
            },
        );
        if self.by_receipt.len() > PRUNE_AT {
            let now = Instant::now();
            self.by_receipt
                .retain(|_, d| d.hidden_until + REMEMBER > now);
            let by_receipt = &self.by_receipt;
            self.latest.retain(|_, r| by_receipt.contains_key(r));
        }
    }

    fn forget(&mut self, receipt: &str) {
        if let Some(d) = self.by_receipt.remove(receipt)
            && self.latest.get(&d.message).is_some_and(|r| r == receipt)
        {
            self.latest.remove(&d.message);
        }
    }
}

/// One SQS queue (standard), as orch's retry queue.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    name: String,
    url: String,
    max_delay: Duration,
    wait: Duration,
    backoff: BatchRetry,
    deliveries: Arc<Mutex<Deliveries>>,
}

impl SqsQueue {
    /// The existing queue `name` (see [`create_queues`]).
    pub async fn open(client: Client, name: &str) -> BackendResult<Self> {
        let url = queue_url(&client, name).await?;
        Ok(SqsQueue {
            client,
            name: name.to_string(),
            url,
            max_delay: MAX_DELAY,
            wait: Duration::from_secs(1),
            backoff: BatchRetry::default(),
            deliveries: Arc::default(),
        })
    }

    /// The longest delay given to SQS itself, 1 s to 900 s (the default); longer delays are
    /// carried by the message (see the module docs). Tests lower it to see that path without
    /// waiting 15 minutes.
    pub fn with_max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max.clamp(Duration::from_secs(1), MAX_DELAY);
        self
    }

    /// How long a `receive` waits for a first message when none is visible (long polling),
    /// whole seconds up to 20; zero asks once and returns.
    pub fn with_wait_time(mut self, wait: Duration) -> Self {
        self.wait = wait.min(MAX_WAIT);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `<name>-dlq`.
    pub fn dead_letter_name(&self) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", self.name)
    }

    /// `DelaySeconds` and, past the longest one, the `orch-not-before` deadline.
    fn plan_delay(&self, delay: Duration) -> (i32, Option<u64>) {
        if delay <= self.max_delay {
            (ceil_secs(delay), None)
        } else {
            (
                ceil_secs(self.max_delay),
                Some(now_ms().saturating_add(millis(delay))),
            )
        }
    }

    /// Sends `(body, delay)` messages 10 per call; returns their ids in order. Entries SQS
    /// fails for its own reasons (throttling, internal errors) are sent again with backoff;
    /// one it refuses (the sender's fault: too large, bad characters) fails the call.
    pub async fn send_batch(&self, messages: &[(&str, Duration)]) -> BackendResult<Vec<String>> {
        let mut ids: Vec<Option<String>> = vec![None; messages.len()];
        for (chunk_no, chunk) in messages.chunks(BATCH_MAX).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (body, delay))| {
                    let (delay_seconds, not_before) = self.plan_delay(*delay);
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id((chunk_no * BATCH_MAX + i).to_string())
                        .message_body(*body)
                        .delay_seconds(delay_seconds);
                    if let Some(at) = not_before {
                        entry = entry.message_attributes(NOT_BEFORE, number(at)?);
                    }
                    entry
                        .build()
                        .map_err(|e| build_error("SendMessageBatch", e))
                })
                .collect::<BackendResult<Vec<_>>>()?;
            let sent = retry_unprocessed("SendMessageBatch", entries, self.backoff, |entries| {
                let client = self.client.clone();
                let url = self.url.clone();
                let name = self.name.clone();
                async move {
                    let out = client
                        .send_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries.clone()))
                        .send()
                        .await
                        .map_err(|e| sdk_error(SERVICE, "SendMessageBatch", &name, e))?;
                    let done: Vec<(String, String)> = out
                        .successful
                        .into_iter()
                        .map(|s| (s.id, s.message_id))
                        .collect();
                    let failed = batch_failures(&name, "SendMessageBatch", out.failed)?;
                    let rest = entries
                        .into_iter()
                        .filter(|e| failed.contains(e.id()))
                        .collect();
                    Ok((done, rest))
                }
            })
            .await?;
            for (entry, message_id) in sent {
                if let Some(slot) = entry.parse::<usize>().ok().and_then(|i| ids.get_mut(i)) {
                    *slot = Some(message_id);
                }
            }
        }
        ids.into_iter()
            .map(|id| {
                id.ok_or_else(|| {
                    BackendError::message(
                        ErrorCategory::Transient,
                        format!(
                            "SQS SendMessageBatch {}: an entry got no message id",
                            self.name
                        ),
                    )
                })
            })
            .collect()
    }

    /// Deletes by receipt, 10 per call, with [`Queue::delete`]'s rules: a superseded or unknown
    /// receipt is a no-op.
    pub async fn delete_batch(&self, receipts: &[&str]) -> BackendResult<()> {
        let current: Vec<&str> = {
            let deliveries = self.lock();
            receipts
                .iter()
                .copied()
                .filter(|r| !deliveries.by_receipt.get(*r).is_some_and(|d| d.superseded))
                .collect()
        };
        for chunk in current.chunks(BATCH_MAX) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*receipt)
                        .build()
                        .map_err(|e| build_error("DeleteMessageBatch", e))
                })
                .collect::<BackendResult<Vec<_>>>()?;
            retry_unprocessed("DeleteMessageBatch", entries, self.backoff, |entries| {
                let client = self.client.clone();
                let url = self.url.clone();
                let name = self.name.clone();
                async move {
                    let out = client
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries.clone()))
                        .send()
                        .await
                        .map_err(|e| sdk_error(SERVICE, "DeleteMessageBatch", &name, e))?;
                    // A stale receipt is not an error here (see `delete`).
                    let failed: Vec<_> = out
                        .failed
                        .into_iter()
                        .filter(|f| !is_stale_receipt_code(&f.code, f.message.as_deref()))
                        .collect();
                    let failed = batch_failures(&name, "DeleteMessageBatch", failed)?;
                    let rest = entries
                        .into_iter()
                        .filter(|e| failed.contains(e.id()))
                        .collect();
                    Ok((Vec::<()>::new(), rest))
                }
            })
            .await?;
            let mut deliveries = self.lock();
            for receipt in chunk {
                deliveries.forget(receipt);
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Deliveries> {
        // The table is only ever updated by simple inserts and removes; one left half-way by a
        // panic elsewhere is still consistent enough to use.
        self.deliveries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends a message that arrived before its `orch-not-before` again with the rest of its
    /// delay, then deletes the delivered copy. Failures are logged: the copy then comes back
    /// after its visibility timeout and is handled again.
    async fn postpone(&self, m: &aws_sdk_sqs::types::Message, id: &str, not_before: u64) {
        let remaining = Duration::from_millis(not_before.saturating_sub(now_ms()));
        let delay = ceil_secs(remaining.min(self.max_delay));
        let attributes = number(not_before).and_then(|nb| {
            let original = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(id)
                .build()
                .map_err(|e| build_error("SendMessage", e))?;
            Ok((nb, original))
        });
        let sent = match attributes {
            Ok((nb, original)) => self
                .client
                .send_message()
                .queue_url(&self.url)
                .message_body(m.body().unwrap_or_default())
                .delay_seconds(delay)
                .message_attributes(NOT_BEFORE, nb)
                .message_attributes(ORIGINAL_ID, original)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| BackendError::from(sdk_error(SERVICE, "SendMessage", &self.name, e))),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(queue = %self.name, message = id, error = %e, "cannot postpone an early message");
            return;
        }
        if let Some(receipt) = m.receipt_handle()
            && let Err(e) = self.delete(receipt).await
        {
            tracing::warn!(queue = %self.name, message = id, error = %e, "cannot delete a postponed message's early copy");
        }
    }
}

fn build_error(what: &str, e: BuildError) -> BackendError {
    AwsError::invalid(what, e.to_string()).into()
}

fn number(value: u64) -> BackendResult<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .map_err(|e| build_error("message attribute", e))
}

/// The ids of batch entries to send again; an error if SQS refused one for good.
fn batch_failures(
    queue: &str,
    operation: &str,
    failed: Vec<aws_sdk_sqs::types::BatchResultErrorEntry>,
) -> BackendResult<HashSet<String>> {
    if let Some(f) = failed.iter().find(|f| f.sender_fault) {
        return Err(BackendError::message(
            ErrorCategory::Invalid,
            format!(
                "SQS {operation} {queue}: entry {} refused: {}{}",
                f.id,
                f.code,
                f.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(failed.into_iter().map(|f| f.id).collect())
}

/// SQS's ways of saying "this receipt no longer names a delivery you hold".
fn is_stale_receipt_code(code: &str, message: Option<&str>) -> bool {
    matches!(
        code,
        "ReceiptHandleIsInvalid"
            | "MessageNotInflight"
            | "AWS.SimpleQueueService.MessageNotInflight"
    ) || (code == "InvalidParameterValue"
        && message.is_some_and(|m| {
            m.contains("ReceiptHandle") || m.contains("not available for visibility timeout")
        }))
}

async fn queue_url(client: &Client, name: &str) -> BackendResult<String> {
    let out = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| sdk_error(SERVICE, "GetQueueUrl", name, e))?;
    out.queue_url.ok_or_else(|| {
        BackendError::message(
            ErrorCategory::Permanent,
            format!("SQS GetQueueUrl {name}: no URL in the answer"),
        )
    })
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: &str, delay: Duration) -> BackendResult<String> {
        let (delay_seconds, not_before) = self.plan_delay(delay);
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay_seconds);
        if let Some(at) = not_before {
            request = request.message_attributes(NOT_BEFORE, number(at)?);
        }
        let out = request
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "SendMessage", &self.name, e))?;
        out.message_id.ok_or_else(|| {
            BackendError::message(
                ErrorCategory::Transient,
                format!("SQS SendMessage {}: no message id in the answer", self.name),
            )
        })
    }

    async fn receive(&self, max: usize, visibility: Duration) -> BackendResult<Vec<Message>> {
        let visibility = visibility.min(MAX_VISIBILITY);
        let mut out: Vec<Message> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut wait = self.wait;
        while out.len() < max {
            let want = (max - out.len()).min(BATCH_MAX);
            let asked_at = Instant::now();
            let answer = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(i32::try_from(want).unwrap_or(1))
                .visibility_timeout(ceil_secs(visibility))
                .wait_time_seconds(ceil_secs(wait))
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_attribute_names(NOT_BEFORE)
                .message_attribute_names(ORIGINAL_ID)
                .send()
                .await
                .map_err(|e| sdk_error(SERVICE, "ReceiveMessage", &self.name, e))?;
            // Only the first call waits: after it, take what is there and return.
            wait = Duration::ZERO;
            let messages = answer.messages.unwrap_or_default();
            let got = messages.len();
            let mut progress = false;
            for m in &messages {
                let (Some(message_id), Some(receipt)) = (m.message_id(), m.receipt_handle()) else {
                    continue;
                };
                let attribute = |name: &str| {
                    m.message_attributes()
                        .and_then(|a| a.get(name))
                        .and_then(|v| v.string_value())
                };
                let id = attribute(ORIGINAL_ID).unwrap_or(message_id).to_string();
                if let Some(not_before) = attribute(NOT_BEFORE).and_then(|v| v.parse::<u64>().ok())
                    && not_before > now_ms()
                {
                    self.postpone(m, &id, not_before).await;
                    progress = true;
                    continue;
                }
                // With a zero visibility a message is still visible to the next call.
                if !seen.insert(message_id.to_string()) {
                    continue;
                }
                progress = true;
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                self.lock()
                    .record(message_id, receipt, asked_at + visibility);
                out.push(Message {
                    id,
                    receipt: receipt.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receive_count,
                });
            }
            // Fewer than asked: the queue has no more visible messages right now.
            if !progress || got < want {
                break;
            }
        }
        Ok(out)
    }

    async fn delete(&self, receipt: &str) -> BackendResult<()> {
        if self
            .lock()
            .by_receipt
            .get(receipt)
            .is_some_and(|d| d.superseded)
        {
            // The message was delivered again: its new holder decides (see the module docs).
            return Ok(());
        }
        let deleted = self
            .client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await;
        if let Err(e) = deleted
            && !is_stale_receipt_code(e.code().unwrap_or_default(), e.message())
        {
            return Err(sdk_error(SERVICE, "DeleteMessage", &self.name, e).into());
        }
        self.lock().forget(receipt);
        Ok(())
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> BackendResult<()> {
        let lost = || {
            BackendError::Conflict(format!(
                "receipt of queue {} (message redelivered or deleted)",
                self.name
            ))
        };
        let now = Instant::now();
        if self
            .lock()
            .by_receipt
            .get(receipt)
            .is_some_and(|d| d.superseded || d.hidden_until <= now)
        {
            return Err(lost());
        }
        let visibility = visibility.min(MAX_VISIBILITY);
        let changed = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(ceil_secs(visibility))
            .send()
            .await;
        match changed {
            Ok(_) => {
                if let Some(d) = self.lock().by_receipt.get_mut(receipt) {
                    d.hidden_until = now + visibility;
                }
                Ok(())
            }
            Err(e) if is_stale_receipt_code(e.code().unwrap_or_default(), e.message()) => {
                Err(lost())
            }
            Err(e) => Err(sdk_error(SERVICE, "ChangeMessageVisibility", &self.name, e).into()),
        }
    }
}

/// The attributes of the retry queue: 4 days of retention and 5 minutes of visibility, as
/// `infra/modules/sqs` sets them (its comments say why).
const MAIN_RETENTION_SECS: &str = "345600";
const VISIBILITY_SECS: &str = "300";
/// 14 days, the maximum: longer than the main queue's, since a standard queue keeps a message's
/// original enqueue time when it moves it to the DLQ.
const DLQ_RETENTION_SECS: &str = "1209600";

/// Creates the queue `name` and its dead-letter queue `<name>-dlq`, with the redrive policy
/// that moves a message there after `max_receive_count` receives (docs/aws.md: 5), and returns
/// the queue's URL. Both use SQS-managed encryption (Terraform sets the orch KMS key instead).
/// Existing queues are accepted and get the redrive policy, so `orch init` may run twice.
pub async fn create_queues(
    client: &Client,
    name: &str,
    max_receive_count: u32,
) -> crate::Result<String> {
    let dlq_name = format!("{name}{DEAD_LETTER_SUFFIX}");
    let dlq_url = create_or_get(
        client,
        &dlq_name,
        &[
            (
                QueueAttributeName::MessageRetentionPeriod,
                DLQ_RETENTION_SECS,
            ),
            (QueueAttributeName::SqsManagedSseEnabled, "true"),
        ],
    )
    .await?;
    let attrs = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| sdk_error(SERVICE, "GetQueueAttributes", &dlq_name, e))?;
    let dlq_arn = attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .ok_or_else(|| AwsError::invalid(format!("queue {dlq_name}"), "no QueueArn attribute"))?
        .clone();
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.max(1),
    })
    .to_string();
    let url = create_or_get(
        client,
        name,
        &[
            (
                QueueAttributeName::MessageRetentionPeriod,
                MAIN_RETENTION_SECS,
            ),
            (QueueAttributeName::VisibilityTimeout, VISIBILITY_SECS),
            (QueueAttributeName::SqsManagedSseEnabled, "true"),
        ],
    )
    .await?;
    // Set apart from the creation so an existing queue gets it too.
    client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .map_err(|e| sdk_error(SERVICE, "SetQueueAttributes", name, e))?;
    Ok(url)
}

/// Creates a queue with `attributes`; an existing queue of that name (whatever its attributes,
/// e.g. Terraform's KMS encryption) is taken as it is.
async fn create_or_get(
    client: &Client,
    name: &str,
    attributes: &[(QueueAttributeName, &str)],
) -> crate::Result<String> {
    let mut request = client.create_queue().queue_name(name);
    for (k, v) in attributes {
        request = request.attributes(k.clone(), *v);
    }
    match request.send().await {
        Ok(out) => out.queue_url.ok_or_else(|| {
            AwsError::invalid(format!("queue {name}"), "CreateQueue returned no URL")
        }),
        Err(e) if matches!(e.code(), Some("QueueAlreadyExists" | "QueueNameExists")) => {
            let out = client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| sdk_error(SERVICE, "GetQueueUrl", name, e))?;
            out.queue_url.ok_or_else(|| {
                AwsError::invalid(format!("queue {name}"), "GetQueueUrl returned no URL")
            })
        }
        Err(e) => Err(sdk_error(SERVICE, "CreateQueue", name, e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1_000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1_001)), 2);
    }

    #[test]
    fn a_later_delivery_supersedes_the_earlier_receipt() {
        let mut d = Deliveries::default();
        let later = Instant::now() + Duration::from_secs(60);
        d.record("m", "r1", later);
        d.record("m", "r2", later);
        assert!(d.by_receipt["r1"].superseded);
        assert!(!d.by_receipt["r2"].superseded);
        d.forget("r2");
        assert!(!d.latest.contains_key("m"));
        d.forget("r1");
        assert!(d.by_receipt.is_empty());
    }

    #[test]
    fn old_deliveries_are_pruned() {
        let mut d = Deliveries::default();
        let past = Instant::now().checked_sub(REMEMBER * 2).unwrap();
        for i in 0..=PRUNE_AT {
            d.record(&format!("m{i}"), &format!("r{i}"), past);
        }
        d.record("fresh", "rf", Instant::now() + Duration::from_secs(60));
        assert_eq!(d.by_receipt.len(), 1);
        assert_eq!(d.latest.len(), 1);
    }

    #[test]
    fn stale_receipt_codes() {
        assert!(is_stale_receipt_code("ReceiptHandleIsInvalid", None));
        assert!(is_stale_receipt_code("MessageNotInflight", None));
        assert!(is_stale_receipt_code(
            "InvalidParameterValue",
            Some(
                "Value x for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change."
            )
        ));
        assert!(!is_stale_receipt_code(
            "InvalidParameterValue",
            Some("Total VisibilityTimeout for the message is beyond the limit")
        ));
        assert!(!is_stale_receipt_code("AccessDenied", None));
    }
}
