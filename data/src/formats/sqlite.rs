//! `output.sqlite`: tables `results`, `errors` and `orch_meta`.
//!
//! SQLite writes pages in place and needs a path it can reopen, so this file cannot go through
//! the streaming [`crate::atomic::AtomicFile`]. [`TempDb`] gives it the same discipline by
//! hand: a fresh file next to the target, fsynced and renamed only once complete, removed
//! otherwise.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::ffi::ErrorCode;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, Statement};

use super::{Cell, Cells, Column, Kind, for_each_batch, normalize, output_columns};
use crate::Result;
use crate::atomic::{parent_dir, sync_dir};
use crate::checksum::{FileInfo, sha256_file};
use crate::error::DataError;
use crate::item_errors::conform_errors_batch;
use crate::parquet_io::open_reader;
use crate::schema::type_name;

/// `orch_meta.schema_version`: bumped when the tables change shape.
const SCHEMA_VERSION: &str = "1";
/// SQLite's page cache while building, in KiB. The default 2 MiB makes large builds re-read
/// pages; 16 MiB keeps the index's right edge and the table's last pages resident.
const CACHE_KIB: u32 = 16 * 1024;
/// Rows per batch read from `errors.parquet`.
const ERROR_BATCH_ROWS: usize = 8 * 1024;

/// Distinguishes temporaries of concurrent writers to the same target within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) fn write(parts: &[PathBuf], errors: &Path, path: &Path) -> Result<FileInfo> {
    let columns = output_columns(parts)?;
    let tmp = TempDb::create(path)?;
    let rows = build(&tmp.path, parts, &columns, errors, path)?;
    tmp.publish(rows)
}

/// Fills the empty database at `db`; `path` (the target) names it in errors.
fn build(
    db: &Path,
    parts: &[PathBuf],
    columns: &[Column],
    errors: &Path,
    path: &Path,
) -> Result<u64> {
    let sql = |e| sqlite_error(path, e);
    let mut conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    // No journal and no syncs: nobody sees the file before it is complete, and a failed build
    // is deleted rather than rolled back. Publishing fsyncs the finished file once.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -{CACHE_KIB};"
    ))
    .map_err(sql)?;
    let names = sqlite_names(columns);
    let tx = conn.transaction().map_err(sql)?;
    tx.execute_batch(&schema_sql(columns, &names))
        .map_err(sql)?;
    tx.execute(
        "INSERT INTO orch_meta (key, value) VALUES ('schema_version', ?1), ('columns', ?2)",
        (SCHEMA_VERSION, columns_json(columns, &names)),
    )
    .map_err(sql)?;

    let placeholders = vec!["?"; columns.len()].join(", ");
    let mut insert = tx
        .prepare(&format!("INSERT INTO results VALUES ({placeholders})"))
        .map_err(sql)?;
    let rows = for_each_batch(parts, columns, |cells, rows| {
        insert_rows(&mut insert, cells, rows).map_err(sql)
    })?;
    drop(insert);

    let mut insert = tx
        .prepare("INSERT INTO errors VALUES (?, ?, ?, ?)")
        .map_err(sql)?;
    for batch in open_reader(errors, ERROR_BATCH_ROWS)? {
        let batch = batch.map_err(|e| DataError::arrow(errors, e))?;
        let arrays = normalize(&conform_errors_batch(&batch, errors)?, errors)?;
        let cells = arrays
            .iter()
            .map(|a| Cells::new(a, errors))
            .collect::<Result<Vec<_>>>()?;
        insert_rows(&mut insert, &cells, batch.num_rows()).map_err(sql)?;
    }
    drop(insert);

    tx.commit().map_err(sql)?;
    conn.close().map_err(|(_, e)| sql(e))?;
    Ok(rows)
}

fn insert_rows(
    insert: &mut Statement<'_>,
    cells: &[Cells<'_>],
    rows: usize,
) -> rusqlite::Result<()> {
    for row in 0..rows {
        for (i, column) in cells.iter().enumerate() {
            insert.raw_bind_parameter(i + 1, sql_value(column.get(row)))?;
        }
        insert.raw_execute()?;
    }
    Ok(())
}

fn sql_value(cell: Cell<'_>) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match cell {
        Cell::Null => ValueRef::Null,
        Cell::UInt(v) => match i64::try_from(v) {
            Ok(v) => ValueRef::Integer(v),
            // SQLite integers are signed. Text would not help: the column's INTEGER affinity
            // turns it into REAL anyway. So REAL it is, as orch's own inference does.
            Err(_) => ValueRef::Real(v as f64),
        },
        Cell::Int(v) => ValueRef::Integer(v),
        // SQLite would store NaN as NULL anyway; saying so keeps the mapping explicit.
        Cell::Float(v) if v.is_nan() => ValueRef::Null,
        Cell::Float(v) => ValueRef::Real(v),
        Cell::Bool(b) => ValueRef::Integer(i64::from(b)),
        Cell::Text(s) => ValueRef::Text(s.as_bytes()),
    })
}

/// A double-quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// SQLite names for the columns, distinct as SQLite compares them (see the module docs of
/// [`crate::formats`]); names that need no change are kept.
fn sqlite_names(columns: &[Column]) -> Vec<String> {
    let mut taken = HashSet::with_capacity(columns.len());
    columns
        .iter()
        .map(|column| {
            // SQL text ends at a NUL byte, even inside quotes.
            let base = column.name.replace('\0', "\u{FFFD}");
            let mut name = base.clone();
            let mut n = 1u64;
            // SQLite's identifier comparison folds ASCII letters only.
            while !taken.insert(name.to_ascii_lowercase()) {
                n += 1;
                name = format!("{base}_{n}");
            }
            name
        })
        .collect()
}

fn schema_sql(columns: &[Column], names: &[String]) -> String {
    let definitions: Vec<String> = columns
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (column, name))| {
            let decl = match column.kind() {
                Kind::UInt | Kind::Int | Kind::Bool => "INTEGER",
                Kind::Float => "REAL",
                Kind::Text => "TEXT",
            };
            // Column 0 is `_item`, checked when the columns were read.
            let not_null = if i == 0 { " NOT NULL" } else { "" };
            format!("{} {decl}{not_null}", quote(name))
        })
        .collect();
    // The indexes exist before the rows: parts arrive ordered by `_item`, so every insert
    // appends at the index's right edge, which is cheaper than sorting all keys afterwards
    // and never spills a sort to the temporary directory.
    format!(
        "CREATE TABLE orch_meta (key TEXT PRIMARY KEY, value TEXT);
         CREATE TABLE results ({});
         CREATE TABLE errors (_item INTEGER NOT NULL, kind TEXT NOT NULL, \
             message TEXT NOT NULL, attempts INTEGER NOT NULL);
         CREATE INDEX results_item ON results (_item);
         CREATE INDEX errors_item ON errors (_item);",
        definitions.join(", ")
    )
}

/// `orch_meta.columns`: each Parquet column's name, its SQLite name and its type.
fn columns_json(columns: &[Column], names: &[String]) -> String {
    let entries: Vec<serde_json::Value> = columns
        .iter()
        .zip(names)
        .map(|(column, name)| {
            serde_json::json!({
                "name": column.name,
                "column": name,
                "type": type_name(&column.data_type),
            })
        })
        .collect();
    serde_json::Value::Array(entries).to_string()
}

/// Reports a SQLite failure as an I/O error of the target, of a kind that yields the right
/// [`crate::ErrorCategory`]: a full disk or failing I/O is the machine's fault, anything else
/// (a value too big, too many columns) fails the same way on every machine.
fn sqlite_error(path: &Path, e: rusqlite::Error) -> DataError {
    let kind = match e.sqlite_error_code() {
        Some(
            ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly
            | ErrorCode::OutOfMemory
            | ErrorCode::NoLargeFileSupport
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::FileLockingProtocolFailed,
        ) => io::ErrorKind::Other,
        _ => io::ErrorKind::InvalidData,
    };
    DataError::io("build sqlite", path, io::Error::new(kind, e))
}

/// The database under construction: a new file next to the target, deleted unless
/// [`TempDb::publish`] renames it into place.
struct TempDb {
    path: PathBuf,
    target: PathBuf,
    published: bool,
}

impl TempDb {
    fn create(target: &Path) -> Result<TempDb> {
        let file_name = target
            .file_name()
            .ok_or_else(|| DataError::invalid(target, "target path has no file name"))?;
        let dir = parent_dir(target);
        fs::create_dir_all(dir).map_err(|e| DataError::io("create directory", dir, e))?;
        // The same naming as `AtomicFile`: a dot-file not ending in `.sqlite`, so readers
        // globbing the output skip it; pid, counter and clock keep concurrent writers apart.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(
            ".{}.tmp-{}-{}-{nanos:08x}",
            file_name.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // `create_new`: an empty file is a valid empty database, and SQLite must never open
        // someone else's file by a clash of names.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| DataError::io("create", &path, e))?;
        Ok(TempDb {
            path,
            target: target.to_path_buf(),
            published: false,
        })
    }

    /// Fsyncs the finished database, checksums it and renames it into place.
    fn publish(mut self, rows: u64) -> Result<FileInfo> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| DataError::io("open", &self.path, e))?;
        file.sync_all()
            .map_err(|e| DataError::io("fsync", &self.path, e))?;
        drop(file);
        // Pages were written in place, so unlike the streamed formats the checksum takes a
        // read of the finished file.
        let (bytes, sha256) = sha256_file(&self.path)?;
        fs::rename(&self.path, &self.target)
            .map_err(|e| DataError::io("rename", &self.target, e))?;
        self.published = true;
        sync_dir(parent_dir(&self.target))?;
        Ok(FileInfo {
            rows,
            bytes,
            sha256,
        })
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if !self.published
            && let Err(e) = fs::remove_file(&self.path)
        {
            // Best effort: the build's own error is what matters to the caller, and a
            // leftover dot-file is harmless to readers.
            tracing::debug!(path = %self.path.display(), error = %e, "could not remove temporary database");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_schema::DataType;

    fn cols(names: &[&str]) -> Vec<Column> {
        names
            .iter()
            .map(|n| Column {
                name: (*n).to_owned(),
                data_type: DataType::Utf8,
            })
            .collect()
    }

    #[test]
    fn names_that_sqlite_would_confuse_get_suffixes() {
        let names = sqlite_names(&cols(&[
            "_item", "a", "A", "a_2", "_ITEM", "nul\0", "É", "é",
        ]));
        assert_eq!(
            names,
            [
                "_item",
                "a",
                "A_2",
                "a_2_2",
                "_ITEM_2",
                "nul\u{FFFD}",
                "É",
                "é"
            ]
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote(r#"we"ird col"#), r#""we""ird col""#);
        assert_eq!(quote(""), r#""""#);
    }

    #[test]
    fn error_kinds_follow_the_cause() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert_eq!(
            sqlite_error(Path::new("x"), full).category(),
            crate::ErrorCategory::Infrastructure
        );
        let too_big = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
            None,
        );
        assert_eq!(
            sqlite_error(Path::new("x"), too_big).category(),
            crate::ErrorCategory::Permanent
        );
    }
}
