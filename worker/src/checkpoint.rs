//! Item-level progress of one task in a SQLite file, so that a worker killed mid-batch (or
//! preempted, or moved to another node) resumes where it stopped instead of redoing the batch
//! (docs/architecture.md, "Worker").
//!
//! Each flush appends the items finished since the last one as one row, a *chunk*: one
//! transaction and one row whatever the number of items, so that recording an item costs a
//! copy of its result, not a SQLite insert. A crash loses at most the items since the last
//! flush, and because the final files are built only from what is recorded here, an item is
//! never both redone and kept twice. Files of older workers (a row per item, table `items`) are
//! read as well.
//!
//! The file is created by the first flush, not when the attempt starts: a task that finishes
//! before its first heartbeat never creates it, which saves a short task the file's creation
//! and its half-dozen `fsync`s — most of a small task's cost.

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

/// The checkpoint file of a task, and every item finished so far (earlier attempts' too): the
/// file is only written, except when an attempt opens it.
pub struct Checkpoint {
    path: PathBuf,
    /// `None` until the file exists: opened at once when an earlier attempt left one, created
    /// by the first flush otherwise.
    conn: Option<rusqlite::Connection>,
    /// In the order recorded; a later record of an item replaces an earlier one.
    items: Vec<(u64, Finished)>,
    /// How many of `items` (the first ones) the file holds.
    flushed: usize,
}

/// The first byte of a chunk: how the rest is encoded.
const CHUNK_FORMAT: u8 = 1;
const TAG_OK: u8 = 0;
const TAG_FAILED: u8 = 1;

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let mut checkpoint = Checkpoint {
            path: path.to_path_buf(),
            conn: None,
            items: Vec::new(),
            flushed: 0,
        };
        let exists = std::fs::exists(path)
            .map_err(|e| Error::Setup(format!("cannot look for {}: {e}", path.display())))?;
        if exists {
            checkpoint.connect()?;
            checkpoint.items = checkpoint.stored()?;
            checkpoint.flushed = checkpoint.items.len();
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
                     CREATE TABLE IF NOT EXISTS chunks(seq INTEGER PRIMARY KEY, data BLOB NOT NULL);",
                )
                .map_err(self.err())?;
                conn
            }
        };
        Ok(self.conn.insert(conn))
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> Error + use<> {
        let path = self.path.display().to_string();
        move |source| Error::Checkpoint {
            path: path.clone(),
            source,
        }
    }

    /// Forgets the failed items of earlier attempts, so that this one runs them again: the
    /// file is rewritten with the others.
    pub fn forget_failures(&mut self) -> Result<usize> {
        self.flush()?;
        let mut kept = latest(std::mem::take(&mut self.items));
        let before = kept.len();
        kept.retain(|(_, f)| matches!(f, Finished::Ok(_)));
        let forgotten = before - kept.len();
        self.items = kept;
        self.flushed = self.items.len();
        if forgotten == 0 {
            return Ok(0);
        }
        let chunk = encode(&self.items);
        let err = self.err();
        let conn = self.connect()?;
        let tx = conn.transaction().map_err(&err)?;
        tx.execute("DELETE FROM chunks", []).map_err(&err)?;
        if legacy_table(&tx).map_err(&err)? {
            tx.execute("DELETE FROM items", []).map_err(&err)?;
        }
        tx.execute("INSERT INTO chunks(data) VALUES (?1)", [chunk])
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(forgotten)
    }

    /// Ordinals finished so far.
    pub fn done(&self) -> HashSet<u64> {
        self.items.iter().map(|(ordinal, _)| *ordinal).collect()
    }

    /// Items finished ok and failed (by kind) so far.
    pub fn tally(&self) -> Tally {
        // The last record of each item, without copying any result.
        let mut last = std::collections::HashMap::with_capacity(self.items.len());
        for (ordinal, f) in &self.items {
            last.insert(*ordinal, f);
        }
        let mut tally = Tally::default();
        for f in last.into_values() {
            tally.add(f);
        }
        tally
    }

    pub fn record(&mut self, ordinal: u64, item: Finished) {
        self.items.push((ordinal, item));
    }

    /// Whether the file exists (an earlier attempt's, or created by a flush).
    pub fn is_stored(&self) -> bool {
        self.conn.is_some()
    }

    /// Items recorded since the last flush.
    pub fn pending(&self) -> usize {
        self.items.len() - self.flushed
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

    /// Makes everything recorded so far durable: one chunk, in one transaction.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let chunk = encode(&self.items[self.flushed..]);
        let err = self.err();
        self.connect()?
            .execute("INSERT INTO chunks(data) VALUES (?1)", [chunk])
            .map_err(err)?;
        self.flushed = self.items.len();
        Ok(())
    }

    /// Every finished item in ordinal order, the later record of an item winning, taken out:
    /// what the attempt's result files are built from. The file keeps them.
    pub fn take_all(&mut self) -> Vec<(u64, Finished)> {
        self.flushed = 0;
        latest(std::mem::take(&mut self.items))
    }

    /// What the file holds, in the order it was written: an older worker's rows first.
    fn stored(&self) -> Result<Vec<(u64, Finished)>> {
        let Some(conn) = &self.conn else {
            return Ok(Vec::new());
        };
        let err = self.err();
        let mut items = Vec::new();
        if legacy_table(conn).map_err(&err)? {
            let mut stmt = conn
                .prepare("SELECT ordinal, kind, payload, attempts FROM items ORDER BY ordinal")
                .map_err(&err)?;
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
                .map_err(&err)?;
            for row in rows {
                items.push(row.map_err(&err)?);
            }
        }
        let mut stmt = conn
            .prepare("SELECT seq, data FROM chunks ORDER BY seq")
            .map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let seq: i64 = row.get(0).map_err(&err)?;
            let data = row
                .get_ref(1)
                .map_err(&err)?
                .as_blob()
                .map_err(|e| err(e.into()))?;
            decode(data, &mut items).map_err(|reason| Error::CheckpointDamaged {
                path: self.path.display().to_string(),
                reason: format!("chunk {seq}: {reason}"),
            })?;
        }
        Ok(items)
    }
}

/// `items` in ordinal order, one record per item: the last one recorded.
fn latest(mut items: Vec<(u64, Finished)>) -> Vec<(u64, Finished)> {
    // Stable: of the records of one item, the last one stays last.
    items.sort_by_key(|(ordinal, _)| *ordinal);
    let mut kept: Vec<(u64, Finished)> = Vec::with_capacity(items.len());
    for record in items {
        match kept.last_mut() {
            Some(last) if last.0 == record.0 => *last = record,
            _ => kept.push(record),
        }
    }
    kept
}

/// Whether the file has the per-item table of older workers.
fn legacy_table(conn: &rusqlite::Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'items'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// A chunk: [`CHUNK_FORMAT`], then per item its ordinal (u64), a tag, for a failure its
/// attempts (u32) and kind, then the result or message; strings as a u32 length and UTF-8,
/// numbers little-endian.
fn encode(items: &[(u64, Finished)]) -> Vec<u8> {
    let size: usize = items
        .iter()
        .map(|(_, f)| match f {
            Finished::Ok(json) => 13 + json.len(),
            Finished::Failed { kind, message, .. } => 21 + kind.len() + message.len(),
        })
        .sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(CHUNK_FORMAT);
    let put_str = |out: &mut Vec<u8>, s: &str| {
        // Longer strings than 4 GiB are no item's (the record limit is far below).
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    for (ordinal, f) in items {
        out.extend_from_slice(&ordinal.to_le_bytes());
        match f {
            Finished::Ok(json) => {
                out.push(TAG_OK);
                put_str(&mut out, json);
            }
            Finished::Failed {
                kind,
                message,
                attempts,
            } => {
                out.push(TAG_FAILED);
                out.extend_from_slice(&attempts.to_le_bytes());
                put_str(&mut out, kind);
                put_str(&mut out, message);
            }
        }
    }
    out
}

/// Appends the items of chunk `data` to `items`; what is wrong with it otherwise.
fn decode(data: &[u8], items: &mut Vec<(u64, Finished)>) -> std::result::Result<(), String> {
    let (&format, mut rest) = data.split_first().ok_or("empty")?;
    if format != CHUNK_FORMAT {
        return Err(format!("format {format} is not one this worker reads"));
    }
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], String> {
        if rest.len() < n {
            return Err("cut short".into());
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn number<const N: usize>(rest: &mut &[u8]) -> std::result::Result<[u8; N], String> {
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(take(rest, N)?);
        Ok(bytes)
    }
    fn text(rest: &mut &[u8]) -> std::result::Result<String, String> {
        let len = u32::from_le_bytes(number(rest)?) as usize;
        let bytes = take(rest, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }
    while !rest.is_empty() {
        let ordinal = u64::from_le_bytes(number(&mut rest)?);
        let finished = match take(&mut rest, 1)?[0] {
            TAG_OK => Finished::Ok(text(&mut rest)?),
            TAG_FAILED => {
                let attempts = u32::from_le_bytes(number(&mut rest)?);
                let kind = text(&mut rest)?;
                Finished::Failed {
                    kind,
                    message: text(&mut rest)?,
                    attempts,
                }
            }
            tag => return Err(format!("item {ordinal} has the unknown tag {tag}")),
        };
        items.push((ordinal, finished));
    }
    Ok(())
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
        assert_eq!(c.done(), HashSet::from([1, 3]));
        let tally = c.tally();
        assert_eq!(tally.ok, 1);
        assert_eq!(tally.failed, BTreeMap::from([("permanent".to_string(), 1)]));
        c.record(3, Finished::Ok("{\"a\":2}".into()));
        c.flush().unwrap();
        let all = c.take_all();
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
        assert_eq!(c.done(), HashSet::from([1, 2]));
        // A task that ends here never wrote a file; its results come from memory.
        assert_eq!(
            c.take_all(),
            vec![(1, Finished::Ok("1".into())), (2, Finished::Ok("2".into()))]
        );
        assert!(!path.exists() && !c.is_stored());
        c.record(3, Finished::Ok("3".into()));
        c.flush().unwrap();
        assert!(path.exists() && c.is_stored());
        assert_eq!(Checkpoint::open(&path).unwrap().done(), HashSet::from([3]));
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
        let all: Vec<(u64, Finished)> = c.take_all();
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
        assert!(Checkpoint::open(&path).unwrap().done().is_empty());
    }

    fn failed(kind: &str, message: &str, attempts: u32) -> Finished {
        Finished::Failed {
            kind: kind.into(),
            message: message.into(),
            attempts,
        }
    }

    #[test]
    fn each_flush_is_one_chunk_and_forgetting_failures_rewrites_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut c = Checkpoint::open(&path).unwrap();
        for i in 0..1000 {
            c.record(i, Finished::Ok(format!("{{\"n\":{i}}}")));
        }
        c.record(1000, failed("transient", "timed out", 3));
        c.flush().unwrap();
        c.record(1001, failed("permanent", "bad input", 1));
        c.flush().unwrap();
        let chunks = |path: &Path| -> i64 {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(chunks(&path), 2);
        drop(c);

        let mut c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.done().len(), 1002);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.forget_failures().unwrap(), 2);
        assert_eq!(chunks(&path), 1);
        drop(c);
        let mut c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.tally(), Tally::of(1000, 0));
        let all = c.take_all();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[999], (999, Finished::Ok("{\"n\":999}".into())));
    }

    #[test]
    fn a_file_of_an_older_worker_is_read_and_extended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        // A row per item, as workers before chunks wrote them.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE items(ordinal INTEGER PRIMARY KEY, kind TEXT, payload TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 1);
             INSERT INTO items VALUES (0, NULL, '{\"a\":0}', 1), (2, 'permanent', 'no', 2);",
        )
        .unwrap();
        drop(conn);
        let mut c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.done(), HashSet::from([0, 2]));
        c.record(1, Finished::Ok("{\"a\":1}".into()));
        c.flush().unwrap();
        drop(c);
        let mut c = Checkpoint::open(&path).unwrap();
        assert_eq!(
            c.take_all(),
            vec![
                (0, Finished::Ok("{\"a\":0}".into())),
                (1, Finished::Ok("{\"a\":1}".into())),
                (2, failed("permanent", "no", 2)),
            ]
        );
        let mut c = Checkpoint::open(&path).unwrap();
        assert_eq!(c.forget_failures().unwrap(), 1);
        assert_eq!(
            Checkpoint::open(&path).unwrap().done(),
            HashSet::from([0, 1])
        );
    }

    #[test]
    fn a_damaged_chunk_is_an_error_naming_it_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut c = Checkpoint::open(&path).unwrap();
        c.record(7, failed("permanent", "x", 1));
        c.flush().unwrap();
        drop(c);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let data: Vec<u8> = conn
            .query_row("SELECT data FROM chunks", [], |r| r.get(0))
            .unwrap();
        // Every cut of a valid chunk, and an unknown format, are refused.
        for bad in (1..data.len())
            .map(|n| data[..n].to_vec())
            .chain([vec![9u8], vec![]])
        {
            if bad.len() == 1 && bad[0] == CHUNK_FORMAT {
                continue; // a chunk without items is valid
            }
            conn.execute("UPDATE chunks SET data = ?1", [&bad]).unwrap();
            match Checkpoint::open(&path) {
                Err(Error::CheckpointDamaged { reason, .. }) => {
                    assert!(reason.starts_with("chunk 1: "), "{reason}")
                }
                other => panic!("{} bytes: {:?}", bad.len(), other.map(|_| ())),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn chunks_decode_to_what_was_encoded(
            items in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::option::of(("[a-z]{0,8}", proptest::prelude::any::<u32>())), ".{0,40}"),
                0..20,
            )
        ) {
            let items: Vec<(u64, Finished)> = items
                .into_iter()
                .map(|(ordinal, failure, text)| match failure {
                    None => (ordinal, Finished::Ok(text)),
                    Some((kind, attempts)) => (ordinal, failed(&kind, &text, attempts)),
                })
                .collect();
            let mut decoded = Vec::new();
            decode(&encode(&items), &mut decoded).unwrap();
            proptest::prop_assert_eq!(decoded, items);
        }
    }
}
