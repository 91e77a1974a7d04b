//! The embedded [`ObjectStore`]: a directory on a local or shared filesystem.
//!
//! Standalone runs (`orch run`) and Slurm clusters without S3 keep manifests, batches, results
//! and checkpoints under `storage.uri`, which is just a directory. Workers on other nodes see the
//! same directory through a shared filesystem, so everything here must stay correct when several
//! processes write at once:
//!
//! - a reader sees either the old or the new object, never a torn one: every write goes to a
//!   temporary file in the target's directory, is fsynced and then renamed over the target (and
//!   the directory is fsynced so the rename survives a crash);
//! - [`ObjectStore::put_if_absent`] publishes with `link(2)`, which fails when the target exists,
//!   so exactly one of several racing creators wins (the commit marker protocol relies on it);
//! - keys are checked before they touch the filesystem: no key can name anything outside the
//!   root, whatever a job id or a user-provided prefix contains.
//!
//! Temporary files are named `.{name}.tmp-{random}`; [`ObjectStore::list`] skips them and keys of
//! that shape are refused, so a half-written object never shows up as an object.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, ByteSource, ObjectMeta, ObjectStore};

/// Marker inside the names of temporary files (see the module docs).
const TMP_MARKER: &str = ".tmp-";

/// Longest part of the target's name kept in a temporary file's name, so that the temporary
/// name stays below the usual 255-byte limit of a file name.
const TMP_NAME_KEEP: usize = 64;

/// An object store rooted at a directory. Keys are `/`-separated paths relative to the root.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Opens (and creates, when missing) the store at `root`.
    ///
    /// The root is made absolute so that [`ObjectStore::local_path`] hands out paths that other
    /// processes with another working directory (workers) can use.
    pub fn new(root: impl Into<PathBuf>) -> BackendResult<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_error("create the store root", &root, e))?;
        let root =
            fs::canonicalize(&root).map_err(|e| io_error("resolve the store root", &root, e))?;
        Ok(FsStore { root })
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of an object, after checking that the key is a plain relative path.
    pub fn path_of(&self, key: &str) -> BackendResult<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Refuses keys that could escape the root or be confused with something else: empty, absolute,
/// empty / `.` / `..` segments, backslashes (a separator elsewhere), NUL, and names of the shape
/// of our temporary files.
fn check_key(key: &str) -> BackendResult<()> {
    if key.is_empty() {
        return Err(invalid_key(key, "is empty"));
    }
    check_chars(key)?;
    for segment in key.split('/') {
        check_segment(key, segment, false)?;
    }
    Ok(())
}

/// Like [`check_key`] for a prefix: it may be empty and may end with `/` or a partial name.
fn check_prefix(prefix: &str) -> BackendResult<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_chars(prefix)?;
    let segments: Vec<&str> = prefix.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        // The part after the last `/` is a partial name and may be empty.
        check_segment(prefix, segment, i == last)?;
    }
    Ok(())
}

fn check_chars(key: &str) -> BackendResult<()> {
    if key.starts_with('/') {
        return Err(invalid_key(key, "is absolute"));
    }
    if key.contains('\\') {
        return Err(invalid_key(key, "contains a backslash"));
    }
    if key.contains('\0') {
        return Err(invalid_key(key, "contains a NUL character"));
    }
    Ok(())
}

fn check_segment(key: &str, segment: &str, may_be_empty: bool) -> BackendResult<()> {
    match segment {
        "" if may_be_empty => Ok(()),
        "" => Err(invalid_key(key, "has an empty path segment")),
        "." | ".." => Err(invalid_key(key, "has a `.` or `..` path segment")),
        s if is_tmp_name(s) => Err(invalid_key(
            key,
            "has a segment named like a temporary file (`.name.tmp-…`)",
        )),
        _ => Ok(()),
    }
}

fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TMP_MARKER)
}

fn invalid_key(key: &str, why: &str) -> BackendError {
    BackendError::message(
        ErrorCategory::Invalid,
        format!("invalid object key {key:?}: {why}"),
    )
}

/// Maps an I/O error: a key colliding with a directory (or a file used as a directory) will
/// fail the same way again; anything else is trouble with the machine or the filesystem.
fn io_error(what: &str, path: &Path, e: io::Error) -> BackendError {
    let category = match e.kind() {
        io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => ErrorCategory::Permanent,
        _ => ErrorCategory::Infrastructure,
    };
    BackendError::other(
        category,
        format!("cannot {what} {}: {e}", path.display()),
        e,
    )
}

/// Errors that mean "there is no object at this key": a key naming a directory or passing
/// through a file is simply absent, as it would be in S3.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory
    )
}

/// Runs blocking filesystem work off the async workers.
async fn blocking<T, F>(f: F) -> BackendResult<T>
where
    F: FnOnce() -> BackendResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        BackendError::other(
            ErrorCategory::Infrastructure,
            "filesystem task did not complete",
            e,
        )
    })?
}

/// A fresh, unused temporary file next to `target`, opened for writing.
fn create_tmp(target: &Path) -> io::Result<(PathBuf, File)> {
    let dir = target.parent().unwrap_or_else(|| Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let keep: String = name.chars().take(TMP_NAME_KEEP).collect();
    loop {
        let tmp = dir.join(format!(".{keep}{TMP_MARKER}{:016x}", fastrand::u64(..)));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            // Another writer drew the same name: draw again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Creates the target's directory and a temporary file in it. A concurrent `delete_prefix` may
/// prune the directory between the two steps, so a vanished directory is created again.
fn prepare_tmp(target: &Path) -> io::Result<(PathBuf, File)> {
    let dir = target.parent().unwrap_or_else(|| Path::new("."));
    let mut tries = 0;
    loop {
        fs::create_dir_all(dir)?;
        match create_tmp(target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

/// Makes a rename or link in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a temporary file after a failure; the original error is what matters.
fn discard(tmp: &Path) {
    if let Err(e) = fs::remove_file(tmp) {
        tracing::debug!(path = %tmp.display(), error = %e, "cannot remove temporary file");
    }
}

/// A temporary file that is removed when this guard drops, unless it was published (`None`).
struct PendingTmp(Option<PathBuf>);

impl Drop for PendingTmp {
    fn drop(&mut self) {
        if let Some(tmp) = self.0.take() {
            discard(&tmp);
        }
    }
}

/// Writes a temporary file with `fill`, fsyncs it, and publishes it at `target` with `publish`
/// (rename to replace, link to create only). Returns what `publish` returned.
fn write_then<T>(
    target: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
    publish: impl FnOnce(&Path, &Path) -> io::Result<T>,
) -> io::Result<T> {
    let (tmp, mut file) = prepare_tmp(target)?;
    let written = fill(&mut file).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        discard(&tmp);
        return Err(e);
    }
    let published = publish(&tmp, target);
    if published.is_err() {
        discard(&tmp);
    }
    let result = published?;
    if let Some(dir) = target.parent() {
        sync_dir(dir)?;
    }
    Ok(result)
}

/// Atomically replaces `target` with the bytes `fill` writes.
fn write_atomic(target: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    write_then(target, fill, |tmp, target| fs::rename(tmp, target))
}

/// Atomically creates `target` unless it exists; `false` when it did.
fn create_atomic(target: &Path, data: &[u8]) -> io::Result<bool> {
    write_then(
        target,
        |f| f.write_all(data),
        |tmp, target| {
            // link(2) fails with EEXIST when the target exists: the one atomic "create if
            // absent" that also publishes a complete file. The temporary name goes away either
            // way.
            let linked = fs::hard_link(tmp, target);
            discard(tmp);
            match linked {
                Ok(()) => Ok(true),
                // A directory is not an object: report the collision instead of "exists",
                // which `get` (None) would then contradict.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && target.is_dir() => Err(
                    io::Error::new(io::ErrorKind::IsADirectory, "the key names a directory"),
                ),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        },
    )
}

/// Copies the contents of `source` into `file`.
fn copy_into(source: &Path, file: &mut File) -> io::Result<()> {
    let mut src = File::open(source)?;
    io::copy(&mut src, file)?;
    Ok(())
}

fn read_range(path: &Path, range: Range<u64>) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let end = range.end.min(size);
    if range.start >= end {
        return Ok(Vec::new());
    }
    let len = usize::try_from(end - range.start)
        .map_err(|_| io::Error::other("range does not fit in memory"))?;
    file.seek(SeekFrom::Start(range.start))?;
    let mut buf = vec![0; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// The objects below `dir` (relative key `base`), recursively. Entries that vanish while we walk
/// (a concurrent delete) are skipped, not errors.
fn walk(dir: &Path, base: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_absent(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // A name that is not UTF-8 cannot be a key: it was not written through the store.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_tmp_name(&name) {
            continue;
        }
        let key = format!("{base}{name}");
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file_type.is_dir() {
            // Descend only where keys can still match the prefix.
            let dir_key = format!("{key}/");
            if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                walk(&entry.path(), &dir_key, prefix, out)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            let size = match entry.metadata() {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(ObjectMeta { key, size });
        }
    }
    Ok(())
}

/// Splits a prefix into its directory part (up to and including the last `/`) and the partial
/// name after it.
fn split_prefix(prefix: &str) -> (&str, &str) {
    match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix),
    }
}

fn delete_under(root: &Path, prefix: &str) -> io::Result<()> {
    let (dir_key, partial) = split_prefix(prefix);
    let dir = root.join(dir_key);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if is_absent(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    // Every key under an entry whose name starts with the partial name matches the prefix, and
    // every matching key lies under such an entry: removing those entries is exactly the
    // prefix's objects (temporary files of in-flight writes included).
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !entry.file_name().to_string_lossy().starts_with(partial) {
            continue;
        }
        let is_dir = match entry.file_type() {
            Ok(t) => t.is_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let removed = if is_dir {
            fs::remove_dir_all(entry.path())
        } else {
            fs::remove_file(entry.path())
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // Object stores have no directories: prune the ones the delete left empty, up to the root.
    // `remove_dir` fails on a non-empty directory, which is where pruning stops.
    let mut current = dir.as_path();
    while current != root && current.starts_with(root) {
        if fs::remove_dir(current).is_err() {
            break;
        }
        match current.parent() {
            Some(parent) => current = parent,
            None => break,
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put(&self, key: &str, data: Vec<u8>) -> BackendResult<()> {
        let path = self.path_of(key)?;
        blocking(move || {
            write_atomic(&path, |f| f.write_all(&data)).map_err(|e| io_error("write", &path, e))
        })
        .await
    }

    async fn put_file(&self, key: &str, source: &Path) -> BackendResult<()> {
        let path = self.path_of(key)?;
        let source = source.to_path_buf();
        blocking(move || {
            // Check the source first so that a missing local file is reported as such, not as
            // a failure of the store.
            fs::metadata(&source).map_err(|e| {
                BackendError::other(
                    ErrorCategory::Permanent,
                    format!("cannot read local file {}: {e}", source.display()),
                    e,
                )
            })?;
            write_atomic(&path, |f| copy_into(&source, f)).map_err(|e| io_error("write", &path, e))
        })
        .await
    }

    async fn put_stream(&self, key: &str, data: &mut dyn ByteSource) -> BackendResult<()> {
        let path = self.path_of(key)?;
        let target = path.clone();
        let (tmp, file) = blocking(move || {
            prepare_tmp(&target).map_err(|e| io_error("create a temporary file for", &target, e))
        })
        .await?;
        // Removes the temporary file unless it was published, whatever ends this future
        // early: an error of the source, of the disk, or the caller dropping it.
        let mut pending = PendingTmp(Some(tmp.clone()));
        let mut file = file;
        while let Some(chunk) = data.next_chunk().await? {
            let at = tmp.clone();
            file = blocking(move || {
                file.write_all(&chunk)
                    .map_err(|e| io_error("write", &at, e))?;
                Ok(file)
            })
            .await?;
        }
        let at = tmp.clone();
        blocking(move || {
            file.sync_all().map_err(|e| io_error("write", &at, e))?;
            drop(file);
            fs::rename(&at, &path).map_err(|e| io_error("write", &path, e))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir).map_err(|e| io_error("write", dir, e))?;
            }
            Ok(())
        })
        .await?;
        pending.0 = None;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> BackendResult<bool> {
        let path = self.path_of(key)?;
        blocking(move || create_atomic(&path, &data).map_err(|e| io_error("create", &path, e)))
            .await
    }

    async fn get(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        let path = self.path_of(key)?;
        blocking(move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_error("read", &path, e)),
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> BackendResult<Vec<u8>> {
        let path = self.path_of(key)?;
        if range.start > range.end {
            return Err(BackendError::message(
                ErrorCategory::Invalid,
                format!("invalid range {range:?} of object {key:?}"),
            ));
        }
        let key = key.to_string();
        blocking(move || match read_range(&path, range) {
            Ok(bytes) => Ok(bytes),
            Err(e) if is_absent(&e) => Err(BackendError::NotFound(key)),
            Err(e) => Err(io_error("read", &path, e)),
        })
        .await
    }

    async fn get_to_file(&self, key: &str, dest: &Path) -> BackendResult<bool> {
        let path = self.path_of(key)?;
        let dest = dest.to_path_buf();
        blocking(move || {
            // Open the object before creating anything at the destination, so that a missing
            // object leaves no trace there.
            let mut src = match File::open(&path) {
                Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => f,
                Ok(_) => return Ok(false),
                Err(e) if is_absent(&e) => return Ok(false),
                Err(e) => return Err(io_error("read", &path, e)),
            };
            write_atomic(&dest, |f| io::copy(&mut src, f).map(|_| ()))
                .map_err(|e| io_error("write local file", &dest, e))?;
            Ok(true)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            let (dir_key, _) = split_prefix(&prefix);
            let dir = root.join(dir_key);
            walk(&dir, dir_key, &prefix, &mut out).map_err(|e| io_error("list", &dir, e))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> BackendResult<()> {
        check_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            delete_under(&root, &prefix)
                .map_err(|e| io_error("delete under", &root.join(&prefix), e))
        })
        .await
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        // A key that could escape the root has no local path; the error surfaces on use.
        self.path_of(key).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Component;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path().join("root")).unwrap();
        (dir, store)
    }

    #[test]
    fn rejects_keys_that_could_escape() {
        let (_dir, store) = store();
        for key in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
            "a/.b.tmp-0123",
        ] {
            let err = store.path_of(key).unwrap_err();
            assert_eq!(err.category(), ErrorCategory::Invalid, "{key:?}");
            assert!(store.local_path(key).is_none(), "{key:?}");
        }
        for key in ["a", "jobs/j-1/results/000001/1/_DONE", ".hidden", "a..b/c"] {
            assert!(store.path_of(key).is_ok(), "{key:?}");
        }
        for prefix in ["", "jobs/", "jobs/j", "a/b/"] {
            assert!(check_prefix(prefix).is_ok(), "{prefix:?}");
        }
        for prefix in ["/", "../", "a/../", "a//", "a/..", "x\\"] {
            assert!(check_prefix(prefix).is_err(), "{prefix:?}");
        }
    }

    /// Lexically, with no filesystem access: a resolved key is the root plus normal segments.
    fn stays_inside(root: &Path, path: &Path) -> bool {
        path.strip_prefix(root).is_ok_and(|rest| {
            rest.components().count() > 0
                && rest.components().all(|c| matches!(c, Component::Normal(_)))
        })
    }

    proptest! {
        #[test]
        fn no_key_resolves_outside_the_root(key in "([a-z.]{0,3}|/|\\\\|\\x00|\\.\\.){0,8}") {
            let root = PathBuf::from("/srv/orch-root");
            let store = FsStore { root: root.clone() };
            if let Ok(path) = store.path_of(&key) {
                prop_assert!(stays_inside(&root, &path), "{key:?} → {}", path.display());
            }
        }

        #[test]
        fn no_arbitrary_string_resolves_outside_the_root(key in any::<String>()) {
            let root = PathBuf::from("/srv/orch-root");
            let store = FsStore { root: root.clone() };
            if let Ok(path) = store.path_of(&key) {
                prop_assert!(stays_inside(&root, &path), "{key:?} → {}", path.display());
            }
        }
    }

    #[tokio::test]
    async fn writes_leave_no_temporary_files() {
        let (_dir, store) = store();
        store.put("a/b", b"1".to_vec()).await.unwrap();
        store.put("a/b", b"2".to_vec()).await.unwrap();
        assert!(store.put_if_absent("a/c", b"3".to_vec()).await.unwrap());
        assert!(!store.put_if_absent("a/c", b"4".to_vec()).await.unwrap());
        let names: Vec<String> = fs::read_dir(store.root().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["b", "c"]);
    }

    #[tokio::test]
    async fn list_skips_temporary_files_and_directories_are_not_objects() {
        let (_dir, store) = store();
        store.put("x/y/z", b"abc".to_vec()).await.unwrap();
        fs::write(store.root().join("x/.z.tmp-deadbeef"), b"partial").unwrap();
        let listed = store.list("").await.unwrap();
        assert_eq!(
            listed,
            [ObjectMeta {
                key: "x/y/z".into(),
                size: 3
            }]
        );
        assert_eq!(store.get("x/y").await.unwrap(), None);
        assert_eq!(store.get("x/y/z/w").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_one_racing_creator_wins() {
        let (_dir, store) = store();
        let store = Arc::new(store);
        for round in 0..20 {
            let key = format!("race/{round}/_DONE");
            let mut handles = Vec::new();
            for writer in 0..8u8 {
                let store = Arc::clone(&store);
                let key = key.clone();
                handles.push(tokio::spawn(async move {
                    store.put_if_absent(&key, vec![writer; 1000]).await.unwrap()
                }));
            }
            let mut winners = Vec::new();
            for (writer, handle) in handles.into_iter().enumerate() {
                if handle.await.unwrap() {
                    winners.push(writer as u8);
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
            let stored = store.get(&key).await.unwrap().unwrap();
            assert_eq!(stored, vec![winners[0]; 1000]);
        }
    }

    #[test]
    fn racing_threads_on_create_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/_DONE");
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let target = &target;
                    s.spawn(move || create_atomic(target, &[i; 64]).unwrap())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn readers_never_see_a_torn_object() {
        let (_dir, store) = store();
        let store = Arc::new(store);
        let big_a = vec![b'a'; 1 << 20];
        let big_b = vec![b'b'; 1 << 20];
        store.put("obj", big_a.clone()).await.unwrap();
        let writer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..20 {
                    let data = if i % 2 == 0 {
                        big_b.clone()
                    } else {
                        big_a.clone()
                    };
                    store.put("obj", data).await.unwrap();
                }
            })
        };
        while !writer.is_finished() {
            let got = store.get("obj").await.unwrap().unwrap();
            assert_eq!(got.len(), 1 << 20);
            assert!(got.iter().all(|&b| b == got[0]), "torn read");
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn delete_prefix_prunes_empty_directories() {
        let (_dir, store) = store();
        store.put("jobs/j1/a/b", b"1".to_vec()).await.unwrap();
        store.put("jobs/j2/a", b"1".to_vec()).await.unwrap();
        store.delete_prefix("jobs/j1/").await.unwrap();
        assert!(!store.root().join("jobs/j1").exists());
        assert!(store.root().join("jobs/j2/a").exists());
        store.delete_prefix("jobs/").await.unwrap();
        assert!(!store.root().join("jobs").exists());
        assert!(store.root().exists(), "the root itself stays");
        store.delete_prefix("").await.unwrap();
        assert!(store.root().exists());
    }

    #[tokio::test]
    async fn local_path_points_into_the_root() {
        let (_dir, store) = store();
        store.put("a/b.txt", b"hi".to_vec()).await.unwrap();
        let path = store.local_path("a/b.txt").unwrap();
        assert!(path.is_absolute());
        assert_eq!(fs::read(path).unwrap(), b"hi");
    }

    #[tokio::test]
    async fn put_file_of_a_missing_source_is_permanent() {
        let (dir, store) = store();
        let err = store
            .put_file("k", &dir.path().join("missing"))
            .await
            .unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Permanent);
        assert_eq!(store.get("k").await.unwrap(), None);
    }
}
