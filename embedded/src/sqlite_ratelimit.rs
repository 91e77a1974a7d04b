//! Rate-limit buckets in a SQLite file under the storage directory, shared by every worker
//! process and every job on that storage: each bucket is one row, written with a conditional
//! update on its version (docs/rate-limits.md).

use std::path::Path;

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, RateLimitStore};
use orch_core::ratelimit::Bucket;
use rusqlite::{OptionalExtension, params};

use crate::sqlite_state::{Db, encode, sql_error, to_i64};

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS buckets (
    key     TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    body    TEXT NOT NULL
);
";

/// The buckets of one storage directory.
#[derive(Clone)]
pub struct SqliteRateLimitStore {
    db: Db,
}

impl std::fmt::Debug for SqliteRateLimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRateLimitStore")
            .field("path", &self.db.path())
            .finish()
    }
}

impl SqliteRateLimitStore {
    /// Opens (creating when missing) the bucket database at `path`; any number of processes
    /// may open it at once.
    pub fn open(path: &Path) -> BackendResult<Self> {
        Ok(SqliteRateLimitStore {
            db: Db::open(path, "ratelimits", SCHEMA_VERSION, SCHEMA)?,
        })
    }
}

fn decode(key: &str, body: &str, version: i64) -> BackendResult<Bucket> {
    let mut bucket: Bucket = serde_json::from_str(body).map_err(|e| {
        BackendError::other(
            ErrorCategory::Permanent,
            format!("corrupt rate limit bucket {key}"),
            e,
        )
    })?;
    bucket.version = u64::try_from(version).map_err(|_| {
        BackendError::message(
            ErrorCategory::Permanent,
            format!("corrupt rate limit bucket {key}: negative version"),
        )
    })?;
    Ok(bucket)
}

#[async_trait]
impl RateLimitStore for SqliteRateLimitStore {
    async fn get_bucket(&self, key: &str) -> BackendResult<Option<Bucket>> {
        let key = key.to_string();
        self.db
            .run(move |conn| {
                let row: Option<(String, i64)> = conn
                    .prepare_cached("SELECT body, version FROM buckets WHERE key = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .map_err(|e| sql_error("read a rate limit bucket", e))?;
                row.map(|(body, version)| decode(&key, &body, version))
                    .transpose()
            })
            .await
    }

    async fn put_bucket(&self, bucket: &Bucket) -> BackendResult<Bucket> {
        let mut stored = bucket.clone();
        stored.version = bucket.version + 1;
        stored.writes = bucket.writes + 1;
        self.db
            .run(move |conn| {
                let body = encode("rate limit bucket", &stored)?;
                let version = to_i64("bucket version", stored.version)?;
                let changed = if stored.version == 1 {
                    conn.prepare_cached(
                        "INSERT INTO buckets (key, version, body) VALUES (?1, ?2, ?3)
                         ON CONFLICT (key) DO NOTHING",
                    )
                    .and_then(|mut stmt| stmt.execute(params![stored.key, version, body]))
                } else {
                    conn.prepare_cached(
                        "UPDATE buckets SET version = ?2, body = ?3 WHERE key = ?1 AND version = ?4",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![stored.key, version, body, version - 1])
                    })
                }
                .map_err(|e| sql_error("write a rate limit bucket", e))?;
                if changed == 1 {
                    Ok(stored)
                } else {
                    Err(BackendError::Conflict(format!(
                        "rate limit bucket {} at version {}",
                        stored.key,
                        version - 1
                    )))
                }
            })
            .await
    }

    async fn list_buckets(&self) -> BackendResult<Vec<Bucket>> {
        self.db
            .run(|conn| {
                let rows: Vec<(String, String, i64)> = conn
                    .prepare_cached("SELECT key, body, version FROM buckets ORDER BY key")
                    .and_then(|mut stmt| {
                        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                            .collect()
                    })
                    .map_err(|e| sql_error("list rate limit buckets", e))?;
                rows.iter()
                    .map(|(key, body, version)| decode(key, body, *version))
                    .collect()
            })
            .await
    }
}
