//! Checksums and sizes of written files.
//!
//! Effectively-once output (docs/architecture.md) needs a way to tell a complete file from a torn or
//! tampered one after the fact: `_DONE` and `_SUCCESS` record a [`FileInfo`] per file, and the
//! aggregation step re-checks it with [`verify_file`] before trusting a task's output. Our own
//! writers hash the bytes on their way to disk (`HashingWriter`) so that producing the
//! checksum never costs a second read of a freshly written file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::Result;
use crate::error::DataError;

/// Checksums and sizes of a written file; goes into `_DONE`/`_SUCCESS` markers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileInfo {
    /// Data rows in the file (Parquet rows; 0 for files that are not tables).
    pub rows: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

const READ_BUFFER: usize = 1 << 20;

/// Size and SHA-256 (lowercase hex) of a file, read in 1 MiB chunks so memory stays flat for
/// files of any size.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DataError::io("read", path, e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// Checks a file's size and SHA-256 against what was recorded when it was written.
///
/// `expected.rows` is not checked here: it needs the file's format, and a file with the right
/// hash necessarily has the right row count.
pub fn verify_file(path: &Path, expected: &FileInfo) -> Result<()> {
    let (bytes, sha256) = sha256_file(path)?;
    if bytes != expected.bytes || !sha256.eq_ignore_ascii_case(&expected.sha256) {
        return Err(DataError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected_bytes: expected.bytes,
            expected_sha256: expected.sha256.clone(),
            actual_bytes: bytes,
            actual_sha256: sha256,
        });
    }
    Ok(())
}

/// A writer that hashes and counts every byte on its way through.
///
/// The Parquet writer only ever appends (no seeks), so the running hash equals the hash of
/// the finished file.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Returns the inner writer, the byte count and the lowercase-hex digest.
    pub(crate) fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Only what the inner writer accepted is part of the file.
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let (bytes, sha) = sha256_file(&p).unwrap();
        assert_eq!(bytes, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sha256_spans_buffer_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let data: Vec<u8> = (0..(READ_BUFFER * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let (bytes, sha) = sha256_file(&p).unwrap();
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(sha, hex::encode(Sha256::digest(&data)));
    }

    #[test]
    fn hashing_writer_matches_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (buf, bytes, sha) = w.finish();
        assert_eq!(bytes, 11);
        assert_eq!(sha, hex::encode(Sha256::digest(&buf)));
    }

    #[test]
    fn verify_detects_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let (bytes, sha256) = sha256_file(&p).unwrap();
        let info = FileInfo {
            rows: 0,
            bytes,
            sha256,
        };
        verify_file(&p, &info).unwrap();
        std::fs::write(&p, b"two").unwrap();
        let err = verify_file(&p, &info).unwrap_err();
        assert!(matches!(err, DataError::ChecksumMismatch { .. }), "{err}");
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = sha256_file(Path::new("/nonexistent/orch-data-test")).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
    }
}
