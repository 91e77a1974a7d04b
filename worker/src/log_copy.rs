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
//! the copy, never of the executor's file.

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
        let real = File::from(rustix::io::dup(std::io::stderr())?);
        let restore = File::from(rustix::io::dup(&real)?);
        let (read, write) = rustix::pipe::pipe()?;
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

    /// Puts stderr back, lets the tee pass on everything written before, then stores the last
    /// part.
    pub async fn finish(mut self, store: &dyn ObjectStore, job: &str, task: u32) {
        if let Err(e) = rustix::stdio::dup2_stderr(&self.real) {
            tracing::warn!(error = %e, "cannot put stderr back");
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(tee) = self.tee.take() {
            let _ = tee.join();
        }
        self.parts.store(store, job, task).await;
    }
}

impl LogParts {
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
        match store.put(&key, bytes).await {
            Ok(()) => *stored += 1,
            // Said on stderr only: the copy is what would carry a log line, and it has failed.
            Err(e) => tracing::warn!(error = %e, key, "cannot store a part of this attempt's log"),
        }
    }
}

/// Copies `pipe` to `real` and to `pending` until `stop` is set and the pipe is empty.
fn tee(mut pipe: File, mut real: File, pending: &Mutex<Pending>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
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
