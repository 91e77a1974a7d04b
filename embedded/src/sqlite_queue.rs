//! The embedded [`Queue`]: SQS-like delayed delivery and visibility timeouts in a SQLite file.
//!
//! The retry path needs a queue whose messages appear only after a backoff and come back when a
//! consumer dies without deleting them; in a cluster that is SQS, on one machine it is this table.
//! Several named queues may share one file (and one file may be shared by several processes), so
//! every statement is scoped by the queue's name.
//!
//! Semantics, matching SQS where it matters:
//! - [`Queue::receive`] hands out each visible message to one receiver, with a fresh receipt,
//!   and hides it for the visibility timeout; when that expires the message is delivered again
//!   with a new receipt and `receive_count + 1`.
//! - [`Queue::delete`] with a stale receipt (the message was redelivered or already deleted) is a
//!   successful no-op, as in SQS; the old holder cannot delete a redelivered message.
//! - [`Queue::extend`] with a stale receipt is a [`BackendError::Conflict`]: the caller has lost
//!   the message and should stop working on it.
//! - With [`SqliteQueue::with_max_receives`], a message that would be received more than `n`
//!   times is moved to the dead-letter queue `{name}-dlq` (in the same file) instead.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, Message, Queue};
use orch_core::model::now_ms;
use rusqlite::{TransactionBehavior, params};

use crate::sqlite_state::{Db, sql_error, to_i64};

const QUEUE_SCHEMA_VERSION: i64 = 1;

const QUEUE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id            TEXT PRIMARY KEY,
    queue         TEXT NOT NULL,
    body          TEXT NOT NULL,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    receipt       TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS messages_by_receipt ON messages (receipt);
";

/// Suffix of the dead-letter queue's name.
pub const DEAD_LETTER_SUFFIX: &str = "-dlq";

/// One named queue in a SQLite file.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    name: String,
    max_receives: Option<u32>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("path", &self.db.path())
            .field("name", &self.name)
            .field("max_receives", &self.max_receives)
            .finish()
    }
}

impl SqliteQueue {
    /// Opens the queue `name` in the database at `path` (created when missing).
    pub fn open(path: &Path, name: &str) -> BackendResult<Self> {
        if name.is_empty() {
            return Err(BackendError::message(
                ErrorCategory::Invalid,
                "a queue name must not be empty",
            ));
        }
        let db = Db::open(path, "queue", QUEUE_SCHEMA_VERSION, QUEUE_SCHEMA)?;
        Ok(SqliteQueue {
            db,
            name: name.to_string(),
            max_receives: None,
        })
    }

    /// Moves messages that would be received more than `n` times to the dead-letter queue
    /// ([`Self::dead_letter_name`]) instead of delivering them again. `n` is at least 1.
    pub fn with_max_receives(mut self, n: u32) -> Self {
        self.max_receives = Some(n.max(1));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `{name}-dlq`: open it with [`SqliteQueue::open`] to read what was dead-lettered.
    pub fn dead_letter_name(&self) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", self.name)
    }
}

/// 128 random bits as hex: message ids and receipts that no two senders or receivers share.
fn random_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// `now + d` in milliseconds, saturating instead of overflowing on absurd durations.
fn after(now: u64, d: Duration) -> i64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    i64::try_from(now.saturating_add(ms)).unwrap_or(i64::MAX)
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, body: &str, delay: Duration) -> BackendResult<String> {
        let id = random_id();
        let queue = self.name.clone();
        let body = body.to_string();
        let visible_at = after(now_ms(), delay);
        let ret = id.clone();
        self.db
            .run(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO messages (id, queue, body, visible_at, receive_count, receipt)
                     VALUES (?1, ?2, ?3, ?4, 0, NULL)",
                )
                .and_then(|mut stmt| stmt.execute(params![id, queue, body, visible_at]))
                .map_err(|e| sql_error("enqueue a message", e))?;
                Ok(())
            })
            .await?;
        Ok(ret)
    }

    async fn receive(&self, max: usize, visibility: Duration) -> BackendResult<Vec<Message>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let queue = self.name.clone();
        let dead_letter = self.dead_letter_name();
        let max_receives = self.max_receives;
        self.db
            .run(move |conn| {
                // IMMEDIATE: select and claim under the write lock, so two receivers (threads or
                // processes) never take the same message.
                let txn = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error("begin a transaction", e))?;
                let now = now_ms();
                let now_i = to_i64("time", now)?;
                let hidden_until = after(now, visibility);
                let mut out: Vec<Message> = Vec::new();
                let mut claimed: HashSet<String> = HashSet::new();
                // Dead-lettered messages leave the queue, so refill until `max` or empty. With a
                // zero visibility a claimed message is still visible: select enough rows to see
                // past the ones claimed in this call, and skip those.
                loop {
                    let limit = to_i64("batch size", max as u64)?;
                    let candidates: Vec<(String, String, i64)> = txn
                        .prepare_cached(
                            // rowid breaks ties in send order.
                            "SELECT id, body, receive_count FROM messages
                             WHERE queue = ?1 AND visible_at <= ?2
                             ORDER BY visible_at, rowid LIMIT ?3",
                        )
                        .and_then(|mut stmt| {
                            stmt.query_map(params![queue, now_i, limit], |row| {
                                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                            })?
                            .collect()
                        })
                        .map_err(|e| sql_error("select messages", e))?;
                    let fresh: Vec<_> = candidates
                        .into_iter()
                        .filter(|(id, _, _)| !claimed.contains(id))
                        .take(max - out.len())
                        .collect();
                    if fresh.is_empty() {
                        break;
                    }
                    for (id, body, count) in fresh {
                        let count = u32::try_from(count).unwrap_or(u32::MAX).saturating_add(1);
                        if max_receives.is_some_and(|n| count > n) {
                            txn.prepare_cached(
                                "UPDATE messages SET queue = ?1, visible_at = ?2, receipt = NULL
                                 WHERE id = ?3",
                            )
                            .and_then(|mut stmt| stmt.execute(params![dead_letter, now_i, id]))
                            .map_err(|e| sql_error("dead-letter a message", e))?;
                            tracing::warn!(
                                queue = %queue,
                                message = %id,
                                receives = count - 1,
                                "message moved to the dead-letter queue"
                            );
                            continue;
                        }
                        let receipt = random_id();
                        txn.prepare_cached(
                            "UPDATE messages
                             SET visible_at = ?1, receive_count = ?2, receipt = ?3
                             WHERE id = ?4",
                        )
                        .and_then(|mut stmt| {
                            stmt.execute(params![hidden_until, count, receipt, id])
                        })
                        .map_err(|e| sql_error("claim a message", e))?;
                        claimed.insert(id.clone());
                        out.push(Message {
                            id,
                            receipt,
                            body,
                            receive_count: count,
                        });
                    }
                    if out.len() >= max {
                        break;
                    }
                }
                txn.commit().map_err(|e| sql_error("commit a receive", e))?;
                Ok(out)
            })
            .await
    }

    async fn delete(&self, receipt: &str) -> BackendResult<()> {
        let queue = self.name.clone();
        let receipt = receipt.to_string();
        self.db
            .run(move |conn| {
                // Zero rows is fine: the receipt is stale (see the module docs).
                conn.prepare_cached("DELETE FROM messages WHERE queue = ?1 AND receipt = ?2")
                    .and_then(|mut stmt| stmt.execute(params![queue, receipt]))
                    .map_err(|e| sql_error("delete a message", e))?;
                Ok(())
            })
            .await
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> BackendResult<()> {
        let queue = self.name.clone();
        let receipt = receipt.to_string();
        self.db
            .run(move |conn| {
                let hidden_until = after(now_ms(), visibility);
                let changed = conn
                    .prepare_cached(
                        "UPDATE messages SET visible_at = ?1 WHERE queue = ?2 AND receipt = ?3",
                    )
                    .and_then(|mut stmt| stmt.execute(params![hidden_until, queue, receipt]))
                    .map_err(|e| sql_error("extend a message's visibility", e))?;
                if changed == 0 {
                    return Err(BackendError::Conflict(format!(
                        "receipt {receipt} of queue {queue} (message redelivered or deleted)"
                    )));
                }
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_receivers_never_share_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite");
        let sender = SqliteQueue::open(&path, "work").unwrap();
        for i in 0..200 {
            sender.send(&format!("m{i}"), Duration::ZERO).await.unwrap();
        }
        let mut handles = Vec::new();
        for _ in 0..6 {
            // Separate handles: separate connections, as separate processes would have.
            let queue = Arc::new(SqliteQueue::open(&path, "work").unwrap());
            handles.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = queue.receive(7, Duration::from_secs(60)).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|m| m.body));
                }
            }));
        }
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.unwrap());
        }
        let unique: HashSet<&String> = all.iter().collect();
        assert_eq!(all.len(), 200);
        assert_eq!(unique.len(), 200);
    }

    #[tokio::test]
    async fn queues_sharing_a_file_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite");
        let a = SqliteQueue::open(&path, "a").unwrap();
        let b = SqliteQueue::open(&path, "b").unwrap();
        a.send("for a", Duration::ZERO).await.unwrap();
        assert!(
            b.receive(10, Duration::from_secs(5))
                .await
                .unwrap()
                .is_empty()
        );
        let got = a.receive(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1);
        // A receipt of `a` means nothing to `b`.
        b.delete(&got[0].receipt).await.unwrap();
        assert!(
            b.extend(&got[0].receipt, Duration::from_secs(1))
                .await
                .unwrap_err()
                .is_conflict()
        );
        a.extend(&got[0].receipt, Duration::from_secs(1))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn zero_visibility_delivers_each_message_once_per_receive() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(&dir.path().join("q.sqlite"), "z").unwrap();
        q.send("one", Duration::ZERO).await.unwrap();
        q.send("two", Duration::ZERO).await.unwrap();
        let got = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|m| m.receive_count == 1));
        // Still visible: the next receive redelivers both.
        let again = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|m| m.receive_count == 2));
    }

    #[tokio::test]
    async fn dead_letters_only_what_exceeds_max_receives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite");
        let q = SqliteQueue::open(&path, "p").unwrap().with_max_receives(1);
        q.send("poison", Duration::ZERO).await.unwrap();
        assert_eq!(q.receive(10, Duration::ZERO).await.unwrap().len(), 1);
        q.send("fresh", Duration::ZERO).await.unwrap();
        // The poison message is moved; the fresh one is still delivered in the same call.
        let got = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "fresh");
        let dlq = SqliteQueue::open(&path, &q.dead_letter_name()).unwrap();
        let dead = dlq.receive(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "poison");
    }

    #[tokio::test]
    async fn delivers_in_send_order() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(&dir.path().join("q.sqlite"), "fifo").unwrap();
        for i in 0..5 {
            q.send(&i.to_string(), Duration::ZERO).await.unwrap();
        }
        let got: Vec<String> = q
            .receive(10, Duration::from_secs(5))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        // Sends within one millisecond share `visible_at`; rowid keeps their order.
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted);
    }
}
