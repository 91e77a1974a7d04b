//! The node-local scratch space a worker builds files in (remote storage): checked before the
//! task is claimed, so a node whose disk is full fails the attempt at once — as an
//! infrastructure error, retried elsewhere — instead of after an hour of work; and watched
//! while the task runs, with a warning in the task's log when it runs low.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::warn;

/// Free space below which a task does not start: `ORCH_SCRATCH_MIN_FREE` (bytes, `512Mi`, …),
/// default 1 GiB.
pub fn min_free() -> u64 {
    std::env::var("ORCH_SCRATCH_MIN_FREE")
        .ok()
        .and_then(|v| orch_core::quantity::parse_bytes(&v).ok())
        .unwrap_or(1 << 30)
}

/// Bytes available to this user on the filesystem of `dir` (or of its nearest existing
/// ancestor: scratch directories are created later).
pub fn available(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let stat = rustix::fs::statvfs(existing).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `Err` with a message naming the directory when less than `min` bytes are free.
pub fn check(dir: &Path, min: u64) -> Result<(), String> {
    match available(dir) {
        Some(free) if free < min => Err(format!(
            "scratch space {} has {} MiB free, less than the {} MiB a task needs \
             (ORCH_SCRATCH_MIN_FREE)",
            dir.display(),
            free >> 20,
            min >> 20
        )),
        _ => Ok(()),
    }
}

/// Logs a warning each time the free space of `dir` falls below `min` while the task runs.
pub fn watch(dir: PathBuf, min: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut low = false;
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            let free = available(&dir);
            let now_low = free.is_some_and(|f| f < min);
            if now_low && !low {
                warn!(
                    dir = %dir.display(),
                    free_mib = free.unwrap_or(0) >> 20,
                    "scratch space is running low"
                );
            }
            low = now_low;
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let free = available(&dir.path().join("not/yet/created")).unwrap();
        assert!(free > 0);
        check(dir.path(), 1).unwrap();
        let e = check(dir.path(), u64::MAX).unwrap_err();
        assert!(e.contains("ORCH_SCRATCH_MIN_FREE"), "{e}");
    }
}
