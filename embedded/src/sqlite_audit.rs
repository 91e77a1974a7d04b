//! The operator's audit log in a SQLite file under the storage directory: one row per entry,
//! insert-only — triggers refuse every update and delete, so not even a bug of ours rewrites
//! history (docs/security.md).

use std::path::Path;

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{AuditLog, BackendError, BackendResult};
use orch_core::model::AuditEntry;
use rusqlite::params;

use crate::sqlite_state::{Db, encode, sql_error, to_i64};

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    at        INTEGER NOT NULL,
    body      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_namespace ON audit (namespace, at, seq);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// The audit log of one storage directory.
#[derive(Clone)]
pub struct SqliteAuditLog {
    db: Db,
}

impl std::fmt::Debug for SqliteAuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAuditLog")
            .field("path", &self.db.path())
            .finish()
    }
}

impl SqliteAuditLog {
    /// Opens (creating when missing) the audit database at `path`.
    pub fn open(path: &Path) -> BackendResult<Self> {
        Ok(SqliteAuditLog {
            db: Db::open(path, "audit", SCHEMA_VERSION, SCHEMA)?,
        })
    }
}

#[async_trait]
impl AuditLog for SqliteAuditLog {
    async fn append(&self, entry: &AuditEntry) -> BackendResult<()> {
        let entry = entry.clone();
        self.db
            .run(move |conn| {
                let body = encode("audit entry", &entry)?;
                let at = to_i64("audit time", entry.at)?;
                conn.prepare_cached("INSERT INTO audit (namespace, at, body) VALUES (?1, ?2, ?3)")
                    .and_then(|mut stmt| stmt.execute(params![entry.namespace, at, body]))
                    .map_err(|e| sql_error("append to the audit log", e))?;
                Ok(())
            })
            .await
    }

    async fn entries(&self, namespace: &str) -> BackendResult<Vec<AuditEntry>> {
        let namespace = namespace.to_string();
        self.db
            .run(move |conn| {
                let bodies: Vec<String> = conn
                    .prepare_cached("SELECT body FROM audit WHERE namespace = ?1 ORDER BY at, seq")
                    .and_then(|mut stmt| {
                        stmt.query_map(params![namespace], |r| r.get(0))?.collect()
                    })
                    .map_err(|e| sql_error("read the audit log", e))?;
                bodies
                    .iter()
                    .map(|body| {
                        serde_json::from_str(body).map_err(|e| {
                            BackendError::other(
                                ErrorCategory::Permanent,
                                "corrupt audit entry".to_string(),
                                e,
                            )
                        })
                    })
                    .collect()
            })
            .await
    }
}
