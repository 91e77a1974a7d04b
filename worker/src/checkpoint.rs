//! Item-level progress of one task in a SQLite file, so that a worker killed mid-batch (or
//! preempted, or moved to another node) resumes where it stopped instead of redoing the batch.
//!
//! Rows are keyed by item ordinal and written in batched transactions: a crash loses at most
//! the last uncommitted chunk, and because the final files are built only from this table (and
//! the items recorded since its last transaction), an item is never both redone and kept twice.
//!
//! The file is created by the first transaction, not when the attempt starts: a task that
//! finishes before its first flush (a second, or 2,000 items) never creates it, which saves a
//! short task the file's creation and its half-dozen `fsync`s — most of a small task's cost.
//! What such a task would lose on a crash is what any task loses: the items since the last
//! transaction.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One finished item.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// The handler's result JSON (an object, or a list = several rows).
    Ok(String),
    Failed {
        kind: String,
        message: String,
        attempts: u32,
    },
}

/// Items finished ok, and failed by the kind of their errors: what a worker publishes in its
/// task row (`items_ok`, `items_failed`, `items_failed_by_kind`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: u64,
    pub failed: BTreeMap<String, u64>,
}

impl Tally {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed_total()
    }

    pub fn add(&mut self, finished: &Finished) {
        match finished {
            Finished::Ok(_) => self.ok += 1,
            Finished::Failed { kind, .. } => self.add_failed(kind, 1),
        }
    }

    pub fn add_failed(&mut self, kind: &str, n: u64) {
        if n > 0 {
            *self.failed.entry(kind.to_string()).or_default() += n;
        }
    }

    pub fn extend(&mut self, other: &Tally) {
        self.ok += other.ok;
        for (kind, n) in &other.failed {
            self.add_failed(kind, *n);
        }
    }

    /// `ok` items, and `failed` of kind `permanent`.
    #[cfg(test)]
    pub fn of(ok: u64, failed: u64) -> Tally {
        let mut tally = Tally {
            ok,
            ..Tally::default()
        };
        tally.add_failed("permanent", failed);
        tally
    }

    /// `row` showing these counts.
    pub fn publish_in(&self, row: &mut orch_core::model::TaskRecord) {
        row.items_ok = self.ok;
        row.items_failed = self.failed_total();
        row.items_failed_by_kind = self.failed.clone();
    }
}

/// The checkpoint file of a task.
pub struct Checkpoint {
    path: PathBuf,
    /// `None` until the file exists: opened at once when an earlier attempt left one, created
    /// by the first flush otherwise.
    conn: Option<rusqlite::Connection>,
    pending: Vec<(u64, Finished)>,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let mut checkpoint = Checkpoint {
            path: path.to_path_buf(),
            conn: None,
            pending: Vec::new(),
        };
        let exists = std::fs::exists(path)
            .map_err(|e| Error::Setup(format!("cannot look for {}: {e}", path.display())))?;
        if exists {
            checkpoint.connect()?;
        }
        Ok(checkpoint)
    }

    /// The connection, opening (creating) the file first if needed.
    fn connect(&mut self) -> Result<&mut rusqlite::Connection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let path = &self.path;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::Setup(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let conn = rusqlite::Connection::open(path).map_err(self.err())?;
                conn.execute_batch(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
                     CREATE TABLE IF NOT EXISTS items(
                        ordinal INTEGER PRIMARY KEY,
                        kind TEXT,
                        payload TEXT NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 1);",
                )
                .map_err(self.err())?;
                conn
            }
        };
        Ok(self.conn.insert(conn))
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| Error::Checkpoint {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Forgets the failed items of earlier attempts, so that this one runs them again.
    pub fn forget_failures(&mut self) -> Result<usize> {
        self.flush()?;
        let Some(conn) = &self.conn else {
            return Ok(0);
        };
        let forgotten = conn
            .execute("DELETE FROM items WHERE kind IS NOT NULL", [])
            .map_err(self.err())?;
        Ok(forgotten)
    }

    /// Ordinals already finished by earlier attempts.
    pub fn done(&self) -> Result<HashSet<u64>> {
        let Some(conn) = &self.conn else {
            return Ok(HashSet::new());
        };
        let mut stmt = conn
            .prepare("SELECT ordinal FROM items")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(self.err())?;
        let mut done = HashSet::new();
        for r in rows {
            done.insert(r.map_err(self.err())? as u64);
        }
        Ok(done)
    }

    /// Items finished ok and failed (by kind), by earlier attempts.
    pub fn tally(&self) -> Result<Tally> {
        let Some(conn) = &self.conn else {
            return Ok(Tally::default());
        };
        let mut stmt = conn
            .prepare("SELECT kind, count(*) FROM items GROUP BY kind")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(self.err())?;
        let mut tally = Tally::default();
        for row in rows {
            match row.map_err(self.err())? {
                (None, n) => tally.ok += n,
                (Some(kind), n) => tally.add_failed(&kind, n),
            }
        }
        Ok(tally)
    }

    pub fn record(&mut self, ordinal: u64, item: Finished) {
        self.pending.push((ordinal, item));
    }

    /// Whether the file exists (an earlier attempt's, or created by a flush).
    pub fn is_stored(&self) -> bool {
        self.conn.is_some()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Flushes, then moves the write-ahead log into the database file, so that the file alone
    /// holds every finished item: what is uploaded for the next attempt to resume from.
    pub fn seal(&mut self) -> Result<()> {
        self.flush()?;
        // Even with nothing recorded: the file is what is uploaded.
        let busy: i64 = self
            .connect()?
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(self.err())?;
        if busy != 0 {
            // Another connection holds the log (none should): the file alone would miss items.
            return Err(Error::Setup(format!(
                "cannot move the checkpoint's log into {}: it is busy",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Removes a local checkpoint with its write-ahead log and shared-memory files: a log left
    /// beside a database it does not belong to (a downloaded one) would be replayed into it.
    pub fn remove_local(path: &Path) -> Result<()> {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            orch_data::atomic::remove_if_present(Path::new(&file))?;
        }
        Ok(())
    }

    /// Makes everything recorded so far durable, in one transaction.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.path.display().to_string();
        let err = |source| Error::Checkpoint {
            path: path.clone(),
            source,
        };
        self.connect()?;
        let Some(conn) = &mut self.conn else {
            return Ok(());
        };
        let tx = conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO items(ordinal, kind, payload, attempts) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for (ordinal, item) in &self.pending {
                let o = *ordinal as i64;
                match item {
                    Finished::Ok(json) => stmt.execute(rusqlite::params![o, None::<&str>, json, 1]),
                    Finished::Failed {
                        kind,
                        message,
                        attempts,
                    } => stmt.execute(rusqlite::params![o, kind, message, attempts]),
                }
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        self.pending.clear();
        Ok(())
    }

    /// Every finished item in ordinal order: those in the file and those recorded since its
    /// last transaction, the later record of an item winning.
    pub fn all(&mut self) -> Result<Vec<(u64, Finished)>> {
        let mut all = self.stored()?;
        if !self.pending.is_empty() {
            all.append(&mut std::mem::take(&mut self.pending));
            // Stable: of the records of one item, the last one stays last.
            all.sort_by_key(|(ordinal, _)| *ordinal);
            let mut kept: Vec<(u64, Finished)> = Vec::with_capacity(all.len());
            for record in all {
                match kept.last_mut() {
                    Some(last) if last.0 == record.0 => *last = record,
                    _ => kept.push(record),
                }
            }
            all = kept;
        }
        Ok(all)
    }

    fn stored(&self) -> Result<Vec<(u64, Finished)>> {
        let Some(conn) = &self.conn else {
            return Ok(Vec::new());
        };
        let mut stmt = conn
            .prepare("SELECT ordinal, kind, payload, attempts FROM items ORDER BY ordinal")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                let ordinal = r.get::<_, i64>(0)? as u64;
                let kind: Option<String> = r.get(1)?;
                let payload: String = r.get(2)?;
                let attempts: i64 = r.get(3)?;
                Ok((
                    ordinal,
                    match kind {
                        None => Finished::Ok(payload),
                        Some(kind) => Finished::Failed {
                            kind,
                            message: payload,
                            attempts: attempts as u32,
                        },
                    },
                ))
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_keeps_one_row_per_item() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut c = Checkpoint::open(&path).unwrap();
        c.record(3, Finished::Ok("{\"a\":1}".into()));
        c.record(
            1,
            Finished::Failed {
                kind: "permanent".into(),
                message: "bad".into(),
                attempts: 2,
            },
        );
        c.flush().unwrap();
        c.record(5, Finished::Ok("{}".into()));
        drop(c); // not flushed: lost, as after a kill -9
        let mut c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.done().unwrap(), HashSet::from([1, 3]));
        let tally = c.tally().unwrap();
        assert_eq!(tally.ok, 1);
        assert_eq!(tally.failed, BTreeMap::from([("permanent".to_string(), 1)]));
        c.record(3, Finished::Ok("{\"a\":2}".into()));
        c.flush().unwrap();
        let all = c.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, 1);
        assert_eq!(all[1], (3, Finished::Ok("{\"a\":2}".into())));
    }

    #[test]
    fn the_file_is_created_by_the_first_flush_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.sqlite");
        let mut c = Checkpoint::open(&path).unwrap();
        c.record(2, Finished::Ok("2".into()));
        c.record(1, Finished::Ok("1".into()));
        assert!(c.done().unwrap().is_empty());
        // A task that ends here never wrote a file; its results come from memory.
        assert_eq!(
            c.all().unwrap(),
            vec![(1, Finished::Ok("1".into())), (2, Finished::Ok("2".into()))]
        );
        assert!(!path.exists() && !c.is_stored());
        c.record(3, Finished::Ok("3".into()));
        c.flush().unwrap();
        assert!(path.exists() && c.is_stored());
        assert_eq!(
            Checkpoint::open(&path).unwrap().done().unwrap(),
            HashSet::from([3])
        );
    }

    #[test]
    fn items_recorded_since_the_last_flush_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut c = Checkpoint::open(&path).unwrap();
        c.record(1, Finished::Ok("old".into()));
        c.record(4, Finished::Ok("4".into()));
        c.flush().unwrap();
        c.record(1, Finished::Ok("new".into()));
        c.record(0, Finished::Ok("0".into()));
        let all: Vec<(u64, Finished)> = c.all().unwrap();
        assert_eq!(
            all,
            vec![
                (0, Finished::Ok("0".into())),
                (1, Finished::Ok("new".into())),
                (4, Finished::Ok("4".into())),
            ]
        );
    }

    #[test]
    fn sealing_an_empty_checkpoint_leaves_a_file_to_upload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut c = Checkpoint::open(&path).unwrap();
        c.seal().unwrap();
        assert!(path.exists());
        assert!(Checkpoint::open(&path).unwrap().done().unwrap().is_empty());
    }
}
