//! The embedded [`StateStore`]: job and task rows in one SQLite file.
//!
//! In a standalone run the coordinator and every worker process open the same file (docs/architecture.md):
//! workers claim and commit their task attempts with conditional writes while the coordinator
//! dispatches and retries. SQLite in WAL mode gives that many-readers-one-writer access across
//! processes; the busy timeout makes a writer wait for the lock instead of failing at once.
//!
//! Each row keeps the whole record as JSON in `body` plus the columns that queries and the
//! optimistic lock need (`version`, `phase`, `state`, `attempt`). A conditional update is a single
//! `UPDATE … WHERE version = ?`, so it is atomic without an explicit transaction, and the
//! `version` inside `body` always equals the column.
//!
//! The helpers shared with the SQLite queue (opening a connection, error mapping, running
//! statements off the async workers) live here too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{
    BackendError, BackendResult, StateStore, TaskChanges, check_tasks_of, next_version,
};
use orch_core::history::AttemptRecord;
use orch_core::model::{JobRecord, TaskRecord};
use rusqlite::ffi::ErrorCode;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// How long a writer waits for another process's write lock before giving up (Transient).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Version of the tables this module creates; see [`Db::open`]. 2 added `tasks.seq`
/// ([`SqliteStateStore::open`] upgrades a version-1 file).
const STATE_SCHEMA_VERSION: i64 = 2;

const STATE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id      TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    phase   TEXT NOT NULL,
    body    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    job     TEXT NOT NULL,
    id      INTEGER NOT NULL,
    version INTEGER NOT NULL,
    state   TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    body    TEXT NOT NULL,
    -- The job's write counter at this row's last update (0 when created): the rows written
    -- after a point are `seq > point` (list_tasks_since).
    seq     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, id)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (job, state);
-- One row per attempt of a task (orch_core::history). Added without a schema version bump:
-- an older orch that opens the file simply never reads or writes it, and loses nothing.
CREATE TABLE IF NOT EXISTS attempts (
    job     TEXT NOT NULL,
    task    INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    -- 1 once the attempt has ended: put_attempt never replaces such a row with an unended one.
    ended   INTEGER NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (job, task, attempt)
);
";

/// Brings a version-1 file's tables to version 2 (and creates what version 2 adds): in one
/// IMMEDIATE transaction, so processes opening the file at once do it once.
const STATE_UPGRADE: &str = "
CREATE INDEX IF NOT EXISTS tasks_by_seq ON tasks (job, seq);
UPDATE orch_schema SET version = 2 WHERE component = 'state' AND version < 2;
";

/// One SQLite connection shared by the handle's clones, used from blocking threads.
///
/// A connection per handle (not per call) keeps the prepared-statement cache warm; the mutex is
/// held only for the few statements of one operation.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Db {
    /// Opens (creating when missing) the database at `path` in WAL mode and creates the tables
    /// of `component` with `schema`. A file whose `component` tables were written by a newer
    /// orch (a higher `version`) is refused rather than misread.
    pub(crate) fn open(
        path: &Path,
        component: &str,
        version: i64,
        schema: &str,
    ) -> BackendResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                BackendError::other(
                    ErrorCategory::Infrastructure,
                    format!("cannot create directory {}: {e}", dir.display()),
                    e,
                )
            })?;
        }
        let at = |what: &str| format!("{what} {}", path.display());
        let conn = Connection::open(path).map_err(|e| sql_error(&at("open"), e))?;
        // The timeout first: switching to WAL needs a lock another process may hold.
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_error(&at("configure"), e))?;
        // SQLite answers "busy" to a journal-mode change without calling the busy handler when
        // another connection is creating the same file, so this one waits by itself.
        let started = std::time::Instant::now();
        let mode: String = loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
                Ok(mode) => break mode,
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == ErrorCode::DatabaseBusy && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(5 + fastrand::u64(..20)));
                }
                Err(e) => return Err(sql_error(&at("switch to WAL"), e)),
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            // Some network filesystems cannot do WAL's shared memory; SQLite then keeps its
            // rollback journal, which is slower under contention but still correct.
            tracing::warn!(path = %path.display(), mode, "SQLite could not enable WAL mode");
        }
        // NORMAL in WAL mode: a power loss may drop the last commits but never corrupts.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| sql_error(&at("configure"), e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS orch_schema (
                 component TEXT PRIMARY KEY,
                 version   INTEGER NOT NULL
             );",
        )
        .map_err(|e| sql_error(&at("create tables in"), e))?;
        conn.execute(
            "INSERT OR IGNORE INTO orch_schema (component, version) VALUES (?1, ?2)",
            params![component, version],
        )
        .map_err(|e| sql_error(&at("create tables in"), e))?;
        let found: i64 = conn
            .query_row(
                "SELECT version FROM orch_schema WHERE component = ?1",
                params![component],
                |row| row.get(0),
            )
            .map_err(|e| sql_error(&at("read"), e))?;
        if found > version {
            return Err(BackendError::message(
                ErrorCategory::Permanent,
                format!(
                    "{}: the {component} tables have schema version {found}, this orch \
                     understands up to {version}",
                    path.display()
                ),
            ));
        }
        conn.execute_batch(schema)
            .map_err(|e| sql_error(&at("create tables in"), e))?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on a blocking thread: a statement may wait up to the busy
    /// timeout for another process, which must not stall the async workers.
    pub(crate) async fn run<T, F>(&self, f: F) -> BackendResult<T>
    where
        F: FnOnce(&mut Connection) -> BackendResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while the lock was held cannot leave a transaction open (its guard rolls
            // back on unwind), so a poisoned connection is still usable.
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| {
            BackendError::other(
                ErrorCategory::Infrastructure,
                "SQLite task did not complete",
                e,
            )
        })?
    }
}

/// Maps a SQLite error: lock contention may pass, a corrupt file will not, the rest is trouble
/// with the machine (disk full, I/O error, permissions).
pub(crate) fn sql_error(what: &str, e: rusqlite::Error) -> BackendError {
    let category = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorCategory::Transient,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => ErrorCategory::Permanent,
        _ => ErrorCategory::Infrastructure,
    };
    if e.sqlite_error_code() == Some(ErrorCode::DiskFull) {
        // Said as an I/O error of its kind, so that `orch_core::error::is_disk_full` sees it.
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, e);
        return BackendError::other(category, format!("SQLite: cannot {what}: {full}"), full);
    }
    BackendError::other(category, format!("SQLite: cannot {what}: {e}"), e)
}

pub(crate) fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// A value too large for SQLite's signed 64-bit integers.
pub(crate) fn to_i64(what: &str, value: u64) -> BackendResult<i64> {
    i64::try_from(value).map_err(|_| {
        BackendError::message(
            ErrorCategory::Invalid,
            format!("{what} {value} does not fit in a SQLite integer"),
        )
    })
}

fn version_from_column(what: &str, value: i64) -> BackendResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(what, format!("negative version {value}")))
}

fn corrupt(what: &str, why: impl std::fmt::Display) -> BackendError {
    BackendError::message(
        ErrorCategory::Permanent,
        format!("corrupt state row {what}: {why}"),
    )
}

pub(crate) fn encode<T: serde::Serialize>(what: &str, record: &T) -> BackendResult<String> {
    serde_json::to_string(record).map_err(|e| {
        BackendError::other(ErrorCategory::Permanent, format!("cannot encode {what}"), e)
    })
}

/// Decodes a job row; the column's version is authoritative.
fn decode_job(id: &str, body: &str, version: i64) -> BackendResult<JobRecord> {
    let what = format!("job {id}");
    let mut job: JobRecord =
        orch_core::model::decode_versioned(&what, body.as_bytes()).map_err(|e| {
            BackendError::other(
                ErrorCategory::Permanent,
                format!("corrupt state row {what}"),
                e,
            )
        })?;
    job.version = version_from_column(&what, version)?;
    Ok(job)
}

fn decode_task(job: &str, id: i64, body: &str, version: i64) -> BackendResult<TaskRecord> {
    let what = format!("task {job}/{id}");
    let mut task: TaskRecord = serde_json::from_str(body).map_err(|e| {
        BackendError::other(
            ErrorCategory::Permanent,
            format!("corrupt state row {what}"),
            e,
        )
    })?;
    task.version = version_from_column(&what, version)?;
    Ok(task)
}

/// Job and task rows in a SQLite file shared by the coordinator and the workers.
#[derive(Clone)]
pub struct SqliteStateStore {
    db: Db,
}

impl std::fmt::Debug for SqliteStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStateStore")
            .field("path", &self.db.path())
            .finish()
    }
}

impl SqliteStateStore {
    /// Opens (creating when missing) the state database at `path`. Any number of processes may
    /// open the same file at once.
    pub fn open(path: &Path) -> BackendResult<Self> {
        let db = Db::open(path, "state", STATE_SCHEMA_VERSION, STATE_SCHEMA)?;
        let mut conn = db.conn.lock().unwrap_or_else(|e| e.into_inner());
        let at = |what: &str| format!("{what} {}", path.display());
        let txn = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(&at("upgrade"), e))?;
        let has_seq: bool = txn
            .query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('tasks') WHERE name = 'seq'",
                [],
                |row| row.get(0),
            )
            .map_err(|e| sql_error(&at("upgrade"), e))?;
        if !has_seq {
            txn.execute_batch("ALTER TABLE tasks ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;")
                .map_err(|e| sql_error(&at("upgrade"), e))?;
        }
        txn.execute_batch(STATE_UPGRADE)
            .map_err(|e| sql_error(&at("upgrade"), e))?;
        txn.commit().map_err(|e| sql_error(&at("upgrade"), e))?;
        drop(conn);
        Ok(SqliteStateStore { db })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn create_job(&self, job: &JobRecord, tasks: &[TaskRecord]) -> BackendResult<()> {
        check_tasks_of(&job.id, tasks)?;
        let job = job.clone();
        let tasks = tasks.to_vec();
        self.db
            .run(move |conn| {
                let job_body = encode("job", &job)?;
                let job_version = to_i64("job version", job.version)?;
                // IMMEDIATE: take the write lock up front, so the job and its tasks appear
                // together and a racing creator waits instead of failing half-way.
                let txn = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error("begin a transaction", e))?;
                match txn.execute(
                    "INSERT INTO jobs (id, version, phase, body) VALUES (?1, ?2, ?3, ?4)",
                    params![job.id, job_version, job.phase.as_str(), job_body],
                ) {
                    Ok(_) => {}
                    Err(e) if is_constraint(&e) => {
                        return Err(BackendError::Conflict(format!("job {}", job.id)));
                    }
                    Err(e) => return Err(sql_error("insert the job row", e)),
                }
                {
                    let mut insert = txn
                        .prepare(
                            "INSERT INTO tasks (job, id, version, state, attempt, body)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )
                        .map_err(|e| sql_error("prepare the task insert", e))?;
                    for task in &tasks {
                        let body = encode("task", task)?;
                        let version = to_i64("task version", task.version)?;
                        match insert.execute(params![
                            task.job,
                            task.id,
                            version,
                            task.state.as_str(),
                            task.attempt,
                            body
                        ]) {
                            Ok(_) => {}
                            Err(e) if is_constraint(&e) => {
                                return Err(BackendError::message(
                                    ErrorCategory::Invalid,
                                    format!("job {}: task id {} given twice", job.id, task.id),
                                ));
                            }
                            Err(e) => return Err(sql_error("insert a task row", e)),
                        }
                    }
                }
                txn.commit().map_err(|e| sql_error("commit the new job", e))
            })
            .await
    }

    async fn add_tasks(&self, job: &str, tasks: &[TaskRecord]) -> BackendResult<()> {
        check_tasks_of(job, tasks)?;
        let job = job.to_string();
        let tasks = tasks.to_vec();
        self.db
            .run(move |conn| {
                let txn = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error("begin a transaction", e))?;
                let exists = txn
                    .query_row("SELECT 1 FROM jobs WHERE id = ?1", params![job], |_| Ok(()))
                    .optional()
                    .map_err(|e| sql_error("read the job row", e))?;
                if exists.is_none() {
                    return Err(BackendError::NotFound(format!("job {job}")));
                }
                {
                    // New rows are numbered like every write (`seq`), so a reader that keeps
                    // a cursor sees them.
                    let mut insert = txn
                        .prepare(
                            "INSERT OR IGNORE INTO tasks (job, id, version, state, attempt, body, seq)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                                     (SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks WHERE job = ?1))",
                        )
                        .map_err(|e| sql_error("prepare the task insert", e))?;
                    for task in &tasks {
                        let body = encode("task", task)?;
                        let version = to_i64("task version", task.version)?;
                        insert
                            .execute(params![
                                task.job,
                                task.id,
                                version,
                                task.state.as_str(),
                                task.attempt,
                                body
                            ])
                            .map_err(|e| sql_error("insert a task row", e))?;
                    }
                }
                txn.commit().map_err(|e| sql_error("commit the new tasks", e))
            })
            .await
    }

    async fn get_job(&self, job: &str) -> BackendResult<Option<JobRecord>> {
        let id = job.to_string();
        self.db
            .run(move |conn| {
                let row = conn
                    .prepare_cached("SELECT body, version FROM jobs WHERE id = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![id], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                        })
                        .optional()
                    })
                    .map_err(|e| sql_error("read a job row", e))?;
                row.map(|(body, version)| decode_job(&id, &body, version))
                    .transpose()
            })
            .await
    }

    async fn list_jobs(&self) -> BackendResult<Vec<JobRecord>> {
        self.db
            .run(|conn| {
                let rows = conn
                    .prepare_cached("SELECT id, body, version FROM jobs ORDER BY id")
                    .and_then(|mut stmt| {
                        stmt.query_map([], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, i64>(2)?,
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(|e| sql_error("list jobs", e))?;
                rows.iter()
                    .map(|(id, body, version)| decode_job(id, body, *version))
                    .collect()
            })
            .await
    }

    async fn update_job(&self, job: &JobRecord) -> BackendResult<JobRecord> {
        let mut stored = job.clone();
        stored.version = next_version(&format!("job {}", job.id), job.version)?;
        self.db
            .run(move |conn| {
                let body = encode("job", &stored)?;
                let expected = to_i64("job version", stored.version - 1)?;
                let changed = conn
                    .prepare_cached(
                        "UPDATE jobs SET version = version + 1, phase = ?1, body = ?2
                         WHERE id = ?3 AND version = ?4",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![stored.phase.as_str(), body, stored.id, expected])
                    })
                    .map_err(|e| sql_error("update a job row", e))?;
                if changed == 1 {
                    return Ok(stored);
                }
                let exists = conn
                    .query_row(
                        "SELECT 1 FROM jobs WHERE id = ?1",
                        params![stored.id],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(|e| sql_error("read a job row", e))?
                    .is_some();
                Err(if exists {
                    BackendError::Conflict(format!("job {} at version {expected}", stored.id))
                } else {
                    BackendError::NotFound(format!("job {}", stored.id))
                })
            })
            .await
    }

    async fn list_tasks(&self, job: &str) -> BackendResult<Vec<TaskRecord>> {
        let job = job.to_string();
        self.db
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, body, version FROM tasks WHERE job = ?1 ORDER BY id",
                    )
                    .map_err(|e| sql_error("list tasks", e))?;
                let rows = stmt
                    .query_map(params![job], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    })
                    .map_err(|e| sql_error("list tasks", e))?;
                let mut tasks = Vec::new();
                for row in rows {
                    let (id, body, version) = row.map_err(|e| sql_error("list tasks", e))?;
                    tasks.push(decode_task(&job, id, &body, version)?);
                }
                Ok(tasks)
            })
            .await
    }

    async fn list_tasks_since(&self, job: &str, cursor: Option<u64>) -> BackendResult<TaskChanges> {
        let job = job.to_string();
        self.db
            .run(move |conn| {
                let after = match cursor {
                    Some(c) => to_i64("task cursor", c)?,
                    None => -1,
                };
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, body, version, seq FROM tasks WHERE job = ?1 AND seq > ?2
                         ORDER BY id",
                    )
                    .map_err(|e| sql_error("list changed tasks", e))?;
                let rows = stmt
                    .query_map(params![job, after], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(|e| sql_error("list changed tasks", e))?;
                let mut tasks = Vec::new();
                let mut last = cursor.unwrap_or(0);
                for row in rows {
                    let (id, body, version, seq) =
                        row.map_err(|e| sql_error("list changed tasks", e))?;
                    tasks.push(decode_task(&job, id, &body, version)?);
                    last = last.max(u64::try_from(seq).unwrap_or(0));
                }
                Ok(TaskChanges {
                    tasks,
                    full: cursor.is_none(),
                    cursor: Some(last),
                })
            })
            .await
    }

    async fn get_task(&self, job: &str, task: u32) -> BackendResult<Option<TaskRecord>> {
        let job = job.to_string();
        self.db
            .run(move |conn| {
                let row = conn
                    .prepare_cached("SELECT body, version FROM tasks WHERE job = ?1 AND id = ?2")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![job, task], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                        })
                        .optional()
                    })
                    .map_err(|e| sql_error("read a task row", e))?;
                row.map(|(body, version)| decode_task(&job, i64::from(task), &body, version))
                    .transpose()
            })
            .await
    }

    async fn update_task(&self, task: &TaskRecord) -> BackendResult<TaskRecord> {
        let mut stored = task.clone();
        stored.version = next_version(&format!("task {}/{}", task.job, task.id), task.version)?;
        self.db
            .run(move |conn| {
                let body = encode("task", &stored)?;
                let expected = to_i64("task version", stored.version - 1)?;
                let changed = conn
                    .prepare_cached(
                        "UPDATE tasks SET version = version + 1, state = ?1, attempt = ?2, body = ?3,
                             seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks WHERE job = ?4)
                         WHERE job = ?4 AND id = ?5 AND version = ?6",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            stored.state.as_str(),
                            stored.attempt,
                            body,
                            stored.job,
                            stored.id,
                            expected
                        ])
                    })
                    .map_err(|e| sql_error("update a task row", e))?;
                if changed == 1 {
                    return Ok(stored);
                }
                let exists = conn
                    .query_row(
                        "SELECT 1 FROM tasks WHERE job = ?1 AND id = ?2",
                        params![stored.job, stored.id],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(|e| sql_error("read a task row", e))?
                    .is_some();
                let name = format!("task {}/{}", stored.job, stored.id);
                Err(if exists {
                    BackendError::Conflict(format!("{name} at version {expected}"))
                } else {
                    BackendError::NotFound(name)
                })
            })
            .await
    }

    async fn delete_job(&self, job: &str) -> BackendResult<()> {
        let job = job.to_string();
        self.db
            .run(move |conn| {
                let txn = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| sql_error("begin a transaction", e))?;
                txn.execute("DELETE FROM tasks WHERE job = ?1", params![job])
                    .map_err(|e| sql_error("delete task rows", e))?;
                txn.execute("DELETE FROM attempts WHERE job = ?1", params![job])
                    .map_err(|e| sql_error("delete attempt rows", e))?;
                txn.execute("DELETE FROM jobs WHERE id = ?1", params![job])
                    .map_err(|e| sql_error("delete the job row", e))?;
                txn.commit().map_err(|e| sql_error("commit the delete", e))
            })
            .await
    }

    async fn put_attempt(&self, record: &AttemptRecord) -> BackendResult<()> {
        let record = record.clone();
        self.db
            .run(move |conn| {
                let body = encode("attempt", &record)?;
                conn.prepare_cached(
                    "INSERT INTO attempts (job, task, attempt, ended, body) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (job, task, attempt) DO UPDATE
                         SET ended = excluded.ended, body = excluded.body
                         WHERE excluded.ended = 1 OR attempts.ended = 0",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        record.job,
                        record.task,
                        record.attempt,
                        record.outcome.has_ended(),
                        body
                    ])
                })
                .map_err(|e| sql_error("write an attempt row", e))?;
                Ok(())
            })
            .await
    }

    async fn list_attempts(
        &self,
        job: &str,
        task: Option<u32>,
    ) -> BackendResult<Vec<AttemptRecord>> {
        let job = job.to_string();
        self.db
            .run(move |conn| {
                // NULL for every task.
                let task = task.map(i64::from);
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT task, attempt, body FROM attempts
                         WHERE job = ?1 AND (?2 IS NULL OR task = ?2) ORDER BY task, attempt",
                    )
                    .map_err(|e| sql_error("list attempts", e))?;
                let rows = stmt
                    .query_map(params![job, task], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, String>(2)?,
                        ))
                    })
                    .map_err(|e| sql_error("list attempts", e))?;
                let mut records = Vec::new();
                for row in rows {
                    let (task, attempt, body) = row.map_err(|e| sql_error("list attempts", e))?;
                    let what = format!("attempt {job}/{task}/{attempt}");
                    records.push(
                        orch_core::model::decode_versioned(&what, body.as_bytes()).map_err(
                            |e| {
                                BackendError::other(
                                    ErrorCategory::Permanent,
                                    format!("corrupt state row {what}"),
                                    e,
                                )
                            },
                        )?,
                    );
                }
                Ok(records)
            })
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use orch_core::model::{JobPhase, TaskState};

    use super::*;

    #[test]
    fn a_full_disk_is_said_as_such_and_other_errors_are_not() {
        let full = sql_error(
            "update a task row",
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ),
        );
        assert!(orch_core::error::is_disk_full(&full), "{full}");
        assert_eq!(full.category(), ErrorCategory::Infrastructure);
        assert!(
            full.to_string()
                .starts_with("SQLite: cannot update a task row: "),
            "{full}"
        );
        let busy = sql_error(
            "update a task row",
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        );
        assert!(!orch_core::error::is_disk_full(&busy), "{busy}");
        // A file write that met ENOSPC is found the same way, wrapped in another error.
        let wrapped = orch_core::Error::Io {
            path: "/storage/state.sqlite".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert!(orch_core::error::is_disk_full(&wrapped));
    }

    fn job(id: &str, tasks: u32) -> JobRecord {
        let spec = serde_json::from_value(serde_json::json!({
            "apiVersion": "orch.dev/v1alpha1",
            "kind": "OrchJob",
            "metadata": {"name": "t"},
            "spec": {"input": {"uri": "/in.jsonl"}, "handler": {"builtin": {"name": "identity"}}}
        }))
        .unwrap();
        JobRecord {
            schema_version: orch_core::model::SCHEMA_VERSION,
            id: id.to_string(),
            phase: JobPhase::Running,
            spec,
            input_fingerprint: "fp".into(),
            total_tasks: tasks,
            total_items: u64::from(tasks) * 10,
            created_at: 1,
            updated_at: 1,
            finished_at: None,
            message: None,
            cancel_requested: false,
            next_group: 0,
            manifest_sha256: None,
            version: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_conditional_updates_from_two_handles_have_one_winner_per_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let a = SqliteStateStore::open(&path).unwrap();
        let b = SqliteStateStore::open(&path).unwrap();
        a.create_job(&job("race", 1), &[TaskRecord::new("race", 0, 10, 1)])
            .await
            .unwrap();

        let wins = Arc::new(AtomicU64::new(0));
        let conflicts = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for worker in 0..8 {
            let store = if worker % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let wins = Arc::clone(&wins);
            let conflicts = Arc::clone(&conflicts);
            handles.push(tokio::spawn(async move {
                for _ in 0..40 {
                    let mut task = store.get_task("race", 0).await.unwrap().unwrap();
                    // A read-modify-write that loses an increment if two writers both win.
                    task.items_ok += 1;
                    match store.update_task(&task).await {
                        Ok(stored) => {
                            assert_eq!(stored.version, task.version + 1);
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.is_conflict() => {
                            conflicts.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        let wins = wins.load(Ordering::SeqCst);
        let final_task = b.get_task("race", 0).await.unwrap().unwrap();
        assert_eq!(final_task.version, wins);
        assert_eq!(final_task.items_ok, wins, "an update was lost");
        assert_eq!(wins + conflicts.load(Ordering::SeqCst), 8 * 40);
    }

    #[tokio::test]
    async fn creates_a_hundred_thousand_tasks_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(&dir.path().join("s.sqlite")).unwrap();
        let n = 100_000;
        let tasks: Vec<TaskRecord> = (0..n).map(|i| TaskRecord::new("big", i, 50, 1)).collect();
        let started = std::time::Instant::now();
        store.create_job(&job("big", n), &tasks).await.unwrap();
        let created = started.elapsed();
        let listed = store.list_tasks("big").await.unwrap();
        assert_eq!(listed.len(), n as usize);
        assert!(listed.windows(2).all(|w| w[0].id < w[1].id));
        // Generous bound: this is a smoke check against per-row transactions (minutes), not a
        // benchmark.
        assert!(created < Duration::from_secs(30), "took {created:?}");
        store.delete_job("big").await.unwrap();
        assert!(store.list_tasks("big").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stored_body_version_matches_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = SqliteStateStore::open(&path).unwrap();
        store
            .create_job(&job("v", 1), &[TaskRecord::new("v", 0, 1, 1)])
            .await
            .unwrap();
        let mut task = store.get_task("v", 0).await.unwrap().unwrap();
        task.transition(TaskState::Dispatched, 2).unwrap();
        store.update_task(&task).await.unwrap();
        let conn = Connection::open(&path).unwrap();
        let (body, version, state): (String, i64, String) = conn
            .query_row(
                "SELECT body, version, state FROM tasks WHERE job = 'v' AND id = 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let decoded: TaskRecord = serde_json::from_str(&body).unwrap();
        assert_eq!(version, 1);
        assert_eq!(decoded.version, 1);
        assert_eq!(state, "dispatched");
    }

    #[tokio::test]
    async fn corrupt_bodies_are_permanent_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = SqliteStateStore::open(&path).unwrap();
        store
            .create_job(&job("c", 1), &[TaskRecord::new("c", 0, 1, 1)])
            .await
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE tasks SET body = '{not json' WHERE job = 'c'", [])
            .unwrap();
        conn.execute("UPDATE jobs SET body = '[]' WHERE id = 'c'", [])
            .unwrap();
        let err = store.get_task("c", 0).await.unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Permanent);
        let err = store.get_job("c").await.unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Permanent);
    }

    #[tokio::test]
    async fn refuses_tasks_of_another_job_and_duplicate_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(&dir.path().join("s.sqlite")).unwrap();
        let err = store
            .create_job(&job("x", 1), &[TaskRecord::new("y", 0, 1, 1)])
            .await
            .unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Invalid);
        let err = store
            .create_job(
                &job("x", 2),
                &[TaskRecord::new("x", 0, 1, 1), TaskRecord::new("x", 0, 1, 1)],
            )
            .await
            .unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Invalid);
        // Nothing of the failed creation remains.
        assert!(store.get_job("x").await.unwrap().is_none());
        assert!(store.list_tasks("x").await.unwrap().is_empty());
    }

    #[test]
    fn many_processes_may_open_a_new_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.sqlite");
        let stores: Vec<SqliteStateStore> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| SqliteStateStore::open(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(stores.len(), 8);
    }

    #[test]
    fn refuses_a_file_from_a_newer_orch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        drop(SqliteStateStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE orch_schema SET version = 99 WHERE component = 'state'",
            [],
        )
        .unwrap();
        let err = SqliteStateStore::open(&path).unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Permanent);
    }

    /// Changes one task row through the store, as a worker or the driver does.
    async fn touch(store: &SqliteStateStore, job: &str, id: u32) {
        let mut task = store.get_task(job, id).await.unwrap().unwrap();
        task.items_ok += 1;
        store.update_task(&task).await.unwrap();
    }

    fn ids(changes: &TaskChanges) -> Vec<u32> {
        changes.tasks.iter().map(|t| t.id).collect()
    }

    #[tokio::test]
    async fn tasks_since_a_cursor_are_the_rows_written_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = SqliteStateStore::open(&path).unwrap();
        // Another process's handle writes too: the counter lives in the file.
        let other = SqliteStateStore::open(&path).unwrap();
        let tasks: Vec<TaskRecord> = (0..5).map(|i| TaskRecord::new("j", i, 10, 1)).collect();
        store.create_job(&job("j", 5), &tasks).await.unwrap();
        store
            .create_job(&job("k", 1), &[TaskRecord::new("k", 0, 10, 1)])
            .await
            .unwrap();

        let all = store.list_tasks_since("j", None).await.unwrap();
        assert!(all.full);
        assert_eq!(ids(&all), [0, 1, 2, 3, 4]);
        let none = store.list_tasks_since("j", all.cursor).await.unwrap();
        assert!(!none.full);
        assert_eq!(ids(&none), Vec::<u32>::new());
        assert_eq!(none.cursor, all.cursor);

        touch(&store, "j", 3).await;
        touch(&other, "j", 1).await;
        touch(&other, "k", 0).await; // another job's write is not this job's change
        let changed = store.list_tasks_since("j", none.cursor).await.unwrap();
        assert_eq!(ids(&changed), [1, 3]);
        assert_eq!(changed.tasks[0].items_ok, 1);

        // A row written twice comes once, as it is now.
        touch(&store, "j", 3).await;
        touch(&store, "j", 3).await;
        let again = store.list_tasks_since("j", changed.cursor).await.unwrap();
        assert_eq!(ids(&again), [3]);
        assert_eq!(again.tasks[0].items_ok, 3);
        assert!(again.cursor > changed.cursor);
    }

    #[test]
    fn a_version_1_file_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE orch_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
                 INSERT INTO orch_schema VALUES ('state', 1);
                 CREATE TABLE jobs (id TEXT PRIMARY KEY, version INTEGER NOT NULL,
                                    phase TEXT NOT NULL, body TEXT NOT NULL);
                 CREATE TABLE tasks (job TEXT NOT NULL, id INTEGER NOT NULL,
                                     version INTEGER NOT NULL, state TEXT NOT NULL,
                                     attempt INTEGER NOT NULL, body TEXT NOT NULL,
                                     PRIMARY KEY (job, id));",
            )
            .unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = SqliteStateStore::open(&path).unwrap();
            store
                .create_job(
                    &job("old", 2),
                    &[
                        TaskRecord::new("old", 0, 10, 1),
                        TaskRecord::new("old", 1, 10, 1),
                    ],
                )
                .await
                .unwrap();
            let all = store.list_tasks_since("old", None).await.unwrap();
            touch(&store, "old", 1).await;
            let changed = store.list_tasks_since("old", all.cursor).await.unwrap();
            assert_eq!(ids(&changed), [1]);
        });
        // Opened again (another process), nothing to do twice.
        drop(SqliteStateStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row(
                "SELECT version FROM orch_schema WHERE component = 'state'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 2);
    }
}
