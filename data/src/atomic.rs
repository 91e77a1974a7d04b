//! Atomic file creation: write to a temporary file next to the target, fsync, rename.
//!
//! A worker can die at any byte. Readers of the storage layout (the aggregator, `orch status`,
//! users pointing DuckDB at the output directory) must never see a half-written file under its
//! final name, so every file this crate produces goes through `AtomicFile`. The temporary
//! lives in the same directory (a rename across file systems is not atomic) and its name starts
//! with a dot and does not end in `.parquet`, so globbing readers skip it. If the writer is
//! dropped before `AtomicFile::commit`, the temporary is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Result;
use crate::checksum::HashingWriter;
use crate::error::DataError;

/// Large enough that the kernel sees few, large writes even though the Parquet writer emits
/// page-sized chunks.
const WRITE_BUFFER: usize = 1 << 20;

/// Distinguishes temporaries of concurrent writers to the same target within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The writer handed to encoders: buffered, and hashing what reaches the file.
pub(crate) type FileSink = HashingWriter<BufWriter<File>>;

/// A temporary file that becomes `path` on [`commit`](AtomicFile::commit), or disappears.
pub(crate) struct AtomicFile {
    tmp_path: PathBuf,
    final_path: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary (and the target's parent directories) and returns the guard plus
    /// the writer for the contents.
    pub(crate) fn create(path: &Path) -> Result<(AtomicFile, FileSink)> {
        let file_name = path
            .file_name()
            .ok_or_else(|| DataError::invalid(path, "target path has no file name"))?;
        let dir = parent_dir(path);
        fs::create_dir_all(dir).map_err(|e| DataError::io("create directory", dir, e))?;
        // pid + counter separate writers on this host; the clock's nanoseconds make a clash
        // with a writer on another host sharing the directory (NFS, Lustre) unlikely, and
        // `create_new` turns any remaining clash into an error rather than shared bytes.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp_name = format!(
            ".{}.tmp-{}-{}-{nanos:08x}",
            file_name.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let tmp_path = dir.join(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| DataError::io("create", &tmp_path, e))?;
        let guard = AtomicFile {
            tmp_path,
            final_path: path.to_path_buf(),
            committed: false,
        };
        let sink = HashingWriter::new(BufWriter::with_capacity(WRITE_BUFFER, file));
        Ok((guard, sink))
    }

    /// Flushes and fsyncs the contents, renames them into place and fsyncs the directory so
    /// the rename itself survives a crash. Returns `(bytes, sha256)` of the file.
    pub(crate) fn commit(mut self, sink: FileSink) -> Result<(u64, String)> {
        let (buffered, bytes, sha256) = sink.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| DataError::io("write", &self.tmp_path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| DataError::io("fsync", &self.tmp_path, e))?;
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path)
            .map_err(|e| DataError::io("rename", &self.final_path, e))?;
        self.committed = true;
        sync_dir(parent_dir(&self.final_path))?;
        Ok((bytes, sha256))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the original error is what matters to the caller, and a leftover
            // dot-file is harmless to readers.
            if let Err(e) = fs::remove_file(&self.tmp_path) {
                tracing::debug!(path = %self.tmp_path.display(), error = %e, "could not remove temporary file");
            }
        }
    }
}

/// Writes `bytes` to `path` atomically; returns the file's size and SHA-256.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(u64, String)> {
    let (guard, mut sink) = AtomicFile::create(path)?;
    sink.write_all(bytes)
        .map_err(|e| DataError::io("write", &guard.tmp_path, e))?;
    guard.commit(sink)
}

/// Serialises `value` as pretty JSON and writes it to `path` atomically; meant for the
/// `_DONE` / `_SUCCESS` markers, which must never be observed half-written.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push(b'\n');
    write_bytes_atomic(path, &text).map(|_| ())
}

/// Removes a file; one that is not there is already removed.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// Removes a directory and everything in it; one that is not there is already removed.
pub fn remove_dir_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::io("remove", path, e)),
        _ => Ok(()),
    }
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| DataError::io("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| DataError::io("fsync directory", dir, e))
}

#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<()> {
    // Directories cannot be opened for fsync on this platform; the rename is as durable as
    // the file system makes it.
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_renames_and_reports_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/file.bin");
        let (bytes, sha) = write_bytes_atomic(&p, b"payload").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"payload");
        assert_eq!((bytes, sha), crate::sha256_file(&p).unwrap());
        assert_eq!(names(&dir.path().join("sub/dir")), vec!["file.bin"]);
    }

    #[test]
    fn dropped_writer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        {
            let (_guard, mut sink) = AtomicFile::create(&p).unwrap();
            sink.write_all(b"partial").unwrap();
            sink.flush().unwrap();
            assert_eq!(names(dir.path()).len(), 1);
        }
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn overwrite_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("_DONE");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"b": 2})).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"b": 2}));
        assert_eq!(names(dir.path()), vec!["_DONE"]);
    }
}
