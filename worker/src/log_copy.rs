//! The worker's copy of its own log in the job's storage, so that `orch logs` reads one place
//! for every executor: a Slurm node's log directory or a pod's log is not where the person
//! asking is. See docs/observability.md ("Task logs").
//!
//! Everything written to this process's stderr — its log lines, and its handler's stderr,
//! which inherits the descriptor — passes through a pipe: a thread writes it on to the real
//! stderr (the executor's log file stays whole) and keeps it for the copy. Every few seconds,
//! and when the attempt ends, what came since is stored as the next part of the attempt's log
//! (`jobs/J/logs/<name>.parts/<n>.log`): object stores have no append, and a part at a time
//! keeps each upload small. A worker killed with `kill -9` loses at most the last seconds of
//! the copy (and what was still in the pipe). An attempt that succeeds within the first
//! period with nothing but the worker's routine lines (no warning, no word from its handler)
//! stores no copy: on a job of many short tasks that is one upload per task saved, and the
//! executor's log still has those lines.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use orch_core::backend::ObjectStore;
use orch_core::layout;
use orch_core::model::TaskKind;

/// How often the new lines are stored.
pub const COPY_EVERY: Duration = Duration::from_secs(5);
/// Unsent bytes kept at most; a handler that writes more between two copies loses the rest
/// from the copy (the executor's file has everything), and the copy says how much.
const MAX_PENDING: usize = 16 << 20;

/// The attempt this process claimed: parts are stored only once it is known.
static CLAIMED: OnceLock<(TaskKind, u32)> = OnceLock::new();

/// Records the attempt the worker claimed (the first claim of the process counts).
pub fn claimed(kind: TaskKind, attempt: u32) {
    let _ = CLAIMED.set((kind, attempt));
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped: usize,
}

/// The tee of this process's stderr; [`LogCopy::parts`] stores what it keeps.
pub struct LogCopy {
    /// The stderr this process was given, put back in place by [`LogCopy::finish`].
    real: File,
    stop: Arc<AtomicBool>,
    tee: Option<std::thread::JoinHandle<()>>,
    parts: LogParts,
}

/// Stores what the tee kept as the next part of the attempt's log; clones share the parts.
#[derive(Clone)]
pub struct LogParts {
    pending: Arc<Mutex<Pending>>,
    /// The number of the last part stored, held while a part is stored so that parts are
    /// numbered in the order of their lines.
    stored: Arc<tokio::sync::Mutex<u32>>,
}

impl LogCopy {
    /// Puts the tee in front of stderr. On error stderr is left as it was.
    pub fn start() -> std::io::Result<LogCopy> {
        // Close-on-exec, all but fd 2 itself: the handler inherits only stderr, so a process
        // it leaves behind cannot hold the pipe's read end or the real stderr open.
        let real = File::from(rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 3)?);
        let restore = File::from(rustix::io::fcntl_dupfd_cloexec(&real, 3)?);
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Non-blocking, so that the thread sees an empty pipe and can end once asked to.
        rustix::io::ioctl_fionbio(&read, true)?;
        rustix::stdio::dup2_stderr(&write)?;
        drop(write);
        let parts = LogParts {
            pending: Arc::default(),
            stored: Arc::default(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let spawned = std::thread::Builder::new().name("log-copy".into()).spawn({
            let pending = parts.pending.clone();
            let stop = stop.clone();
            move || tee(File::from(read), real, &pending, &stop)
        });
        let tee = match spawned {
            Ok(tee) => tee,
            Err(e) => {
                rustix::stdio::dup2_stderr(&restore)?;
                return Err(e);
            }
        };
        Ok(LogCopy {
            real: restore,
            stop,
            tee: Some(tee),
            parts,
        })
    }

    pub fn parts(&self) -> LogParts {
        self.parts.clone()
    }

    /// Puts stderr back, lets the tee pass on what was written before (for [`DRAIN_AT_MOST`]),
    /// then, with `store_last`, stores the last part (for [`LAST_PART_AT_MOST`]) — unless the
    /// attempt `succeeded`, stored no part yet and logged nothing but routine lines.
    pub async fn finish(
        mut self,
        store: &dyn ObjectStore,
        job: &str,
        task: u32,
        store_last: bool,
        succeeded: bool,
    ) {
        let tee = self.stop_tee();
        if let Some(tee) = tee {
            let _ = tokio::task::spawn_blocking(move || tee.join()).await;
        }
        if !store_last || (succeeded && self.parts.only_routine().await) {
            return;
        }
        let last = self.parts.store(store, job, task);
        if tokio::time::timeout(LAST_PART_AT_MOST, last).await.is_err() {
            tracing::warn!("the last part of this attempt's log was not stored in time");
        }
    }

    /// Puts stderr back and asks the tee to end; the tee, to join, if it still runs.
    fn stop_tee(&mut self) -> Option<std::thread::JoinHandle<()>> {
        if let Err(e) = rustix::stdio::dup2_stderr(&self.real) {
            tracing::warn!(error = %e, "cannot put stderr back");
        }
        self.stop.store(true, Ordering::SeqCst);
        self.tee.take()
    }
}

/// A worker that ends without [`LogCopy::finish`] (a panic unwinding) still gets its stderr
/// back, with what the tee held passed on, so its last words reach the executor's log.
impl Drop for LogCopy {
    fn drop(&mut self) {
        if let Some(tee) = self.stop_tee() {
            let _ = tee.join();
        }
    }
}

/// How long the tee goes on passing on what is in the pipe once asked to end: a process the
/// handler left behind that keeps writing must not hold the worker.
const DRAIN_AT_MOST: Duration = Duration::from_secs(2);
/// How long the worker waits for the last part of its log to be stored.
const LAST_PART_AT_MOST: Duration = Duration::from_secs(30);

impl LogParts {
    /// Nothing was stored yet and what is pending holds only the worker's own routine lines.
    async fn only_routine(&self) -> bool {
        let stored = self.stored.lock().await;
        *stored == 0
            && self
                .pending
                .lock()
                .is_ok_and(|p| p.dropped == 0 && routine(&p.bytes))
    }

    /// Stores what was written since the last part, once the attempt is known.
    pub async fn store(&self, store: &dyn ObjectStore, job: &str, task: u32) {
        let Some(&(kind, attempt)) = CLAIMED.get() else {
            return;
        };
        let mut stored = self.stored.lock().await;
        let (mut bytes, dropped) = match self.pending.lock() {
            Ok(mut p) => (std::mem::take(&mut p.bytes), std::mem::take(&mut p.dropped)),
            Err(_) => return,
        };
        if dropped > 0 {
            bytes.extend_from_slice(
                format!("[orch: {dropped} bytes of log not copied: see the executor's log]\n")
                    .as_bytes(),
            );
        }
        if bytes.is_empty() {
            return;
        }
        let key = layout::task_log_part(job, kind, task, attempt, *stored + 1);
        match store.put(&key, bytes.clone()).await {
            Ok(()) => *stored += 1,
            Err(e) => {
                // Kept for the next part, ahead of what came since (as far as the cap allows).
                if let Ok(mut p) = self.pending.lock()
                    && bytes.len() + p.bytes.len() <= MAX_PENDING
                {
                    bytes.append(&mut p.bytes);
                    p.bytes = bytes;
                }
                tracing::warn!(error = %e, key, "cannot store a part of this attempt's log; will try again");
            }
        }
    }
}

/// Whether every line of `log` is one of orch's own at info level or below (text or JSON
/// format): no warning, no error, nothing the handler wrote.
fn routine(log: &[u8]) -> bool {
    const ROUTINE: [&[u8]; 6] = [
        b" INFO ",
        b" DEBUG ",
        b" TRACE ",
        b"\"level\":\"INFO\"",
        b"\"level\":\"DEBUG\"",
        b"\"level\":\"TRACE\"",
    ];
    log.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .all(|line| {
            ROUTINE
                .iter()
                .any(|mark| memchr::memmem::find(line, mark).is_some())
        })
}

/// Copies `pipe` to `real` and to `pending` until `stop` is set and the pipe is empty (or
/// [`DRAIN_AT_MOST`] after `stop`, whichever comes first).
fn tee(mut pipe: File, mut real: File, pending: &Mutex<Pending>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    let mut stop_seen: Option<std::time::Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let since = *stop_seen.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > DRAIN_AT_MOST {
                return;
            }
        }
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let _ = real.write_all(&buf[..n]);
                if let Ok(mut p) = pending.lock() {
                    if p.bytes.len() + n <= MAX_PENDING {
                        p.bytes.extend_from_slice(&buf[..n]);
                    } else {
                        p.dropped += n;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::routine;

    #[test]
    fn only_the_workers_own_info_lines_are_routine() {
        let info = "2026-12-07T10:00:00Z  INFO worker{job=j task=0}: orch_worker::run: claimed items=5\n\
                    2026-12-07T10:00:01Z  INFO worker{job=j task=0}: orch_worker::run: committed ok=5\n";
        assert!(routine(info.as_bytes()));
        assert!(routine(b""));
        let json = r#"{"timestamp":"t","level":"INFO","fields":{"message":"claimed"}}"#;
        assert!(routine(json.as_bytes()));
        for notable in [
            format!("{info}2026-12-07T10:00:02Z  WARN worker: orch_worker::run: slow\n"),
            format!("{info}Traceback (most recent call last):\n"),
            format!("{info}{}\n", r#"{"level":"ERROR","fields":{}}"#),
            "printed by the handler\n".to_string(),
        ] {
            assert!(!routine(notable.as_bytes()), "{notable}");
        }
    }
}
