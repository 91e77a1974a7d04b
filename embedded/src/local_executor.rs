//! The local executor: runs a task group as an "array" of `orch-worker` processes on this
//! machine, at most `parallelism` at a time, the way a Slurm array with `%N` would.
//!
//! A worker started for one task gets `ORCH_TASK_INDEX` (and `SLURM_ARRAY_TASK_ID`, so worker
//! code written for Slurm runs unchanged) and its task group, and appends its stdout/stderr to
//! the task log.
//!
//! With [`WorkerLaunch::keep_workers`], a work task goes instead to a worker kept for its job
//! (`orch-worker serve`): started for the first task, handed the next one on its stdin when it
//! answers, so that a task costs no process start, and the worker, not this process, opens the
//! task's log. Merges still get a process each; a kept worker that is idle while a merge waits
//! for a slot is let go (its stdin closed) to make room. A worker program that refuses
//! `serve` (an older or custom `orch-worker`) turns this off: one process per task again.
//! See docs/architecture.md ("How a worker is started").

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, ExecState, ExecStatus, Executor};
use orch_core::invocation::WorkerInvocation;
use orch_core::model::{TaskGroup, TaskKind};
use orch_core::owner::pid_on_this_host;
use rustix::process::{Pid, Signal, kill_process, test_kill_process};
use tokio::sync::Notify;

/// How long a cancelled worker may take to checkpoint and exit before it is killed.
const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn signal(pid: u32, sig: Signal) {
    let Some(target) = as_pid(pid) else { return };
    match kill_process(target, sig) {
        // Gone meanwhile: it ended on its own, which is what was asked.
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => tracing::warn!(pid, error = %e, "cannot signal the worker"),
    }
}

fn as_pid(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// Whether no process `pid` exists on this machine. A process we may not signal exists; so
/// does a recycled pid — then the lease decides, as it would have anyway.
fn process_gone(pid: u32) -> bool {
    as_pid(pid).is_some_and(|p| test_kill_process(p) == Err(rustix::io::Errno::SRCH))
}

/// How to start a worker for one task.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    /// Program and leading arguments, e.g. `["/usr/bin/orch-worker"]`.
    pub command: Vec<String>,
    /// Storage URI passed as `--storage`.
    pub storage: String,
    /// Directory for per-task logs (`<task>.<attempt>.log`).
    pub log_dir: PathBuf,
    /// Whether `log_dir` is the job's log directory in its storage (directory storage): the
    /// workers then store no copy of their log.
    pub log_in_storage: bool,
    /// Whether work tasks go to workers kept for the job (`orch-worker serve`) instead of a
    /// process each. Needs `log_in_storage`: a kept worker writes each task's log in place
    /// and stores no copy of it.
    pub keep_workers: bool,
}

/// The log of the kept workers between their tasks (their own start and end), in `log_dir`.
pub const KEPT_WORKERS_LOG: &str = "workers.log";

struct Queued {
    /// The executor id: the key of everything the executor tracks.
    id: String,
    job: String,
    group: u32,
    kind: TaskKind,
    task: u32,
    attempt: u32,
    manifest_sha256: Option<String>,
}

/// The executor id of one attempt: unique per kind, task and attempt, because several
/// attempts of a task can be alive at once (a hung one being stopped while its retry starts)
/// and a merge group shares its index with a batch. Work ids are derivable from the task and
/// attempt alone, so a caller that lost the id can still poll.
fn exec_id(kind: TaskKind, task: u32, attempt: u32) -> String {
    match kind {
        TaskKind::Work => format!("local:{task}:{attempt}"),
        TaskKind::Merge { level } => format!("local:merge{level}:{task}:{attempt}"),
        TaskKind::Final => format!("local:final:{task}:{attempt}"),
    }
}

/// A worker kept for the work tasks of one job.
struct Kept {
    pid: Option<u32>,
    job: String,
    manifest_sha256: Option<String>,
    /// Task lines to its stdin; `None` once it is let go (its stdin closes when the writer
    /// sees the channel end).
    lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// The attempt it was handed and has not answered yet.
    busy: Option<Queued>,
    /// Whether it has answered a task: a worker that exits with a usage error before its
    /// first answer does not know `serve` (an older or custom `orch-worker`).
    answered: bool,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Queued>,
    /// Ids in `queue`, so a poll of thousands of queued tasks is not quadratic.
    queued: HashSet<String>,
    /// Process id of each running attempt, by executor id.
    running: HashMap<String, Option<u32>>,
    finished: HashMap<String, ExecState>,
    /// Kept workers by a number of their own.
    kept: HashMap<u64, Kept>,
    next_kept: u64,
    /// Worker processes started for one task (merges, or every task without kept workers).
    single: usize,
    /// Set when the worker program refused `serve`: every task gets a process of its own.
    serve_refused: bool,
    /// Set on shutdown: queued workers are dropped and no new ones start.
    closed: bool,
}

impl Inner {
    fn processes(&self) -> usize {
        self.single + self.kept.len()
    }

    /// Lets the idle kept workers go (`only_idle`), or all of them: a worker's stdin closes,
    /// and it exits once its task, if any, is done.
    fn let_go(&mut self, only_idle: bool) {
        for kept in self.kept.values_mut() {
            if !only_idle || kept.busy.is_none() {
                kept.lines = None;
            }
        }
    }
}

struct Shared {
    launch: WorkerLaunch,
    parallelism: usize,
    inner: Mutex<Inner>,
    /// Signalled whenever a worker ends, so the driver reacts at once instead of at its next tick.
    changed: Notify,
}

/// Worker processes with bounded parallelism. A freed slot is refilled the moment a worker
/// exits (a waiter task per child), not at the driver's next poll.
pub struct LocalExecutor {
    shared: Arc<Shared>,
}

impl LocalExecutor {
    pub fn new(launch: WorkerLaunch, parallelism: usize) -> Self {
        LocalExecutor {
            shared: Arc::new(Shared {
                launch,
                parallelism: parallelism.max(1),
                inner: Mutex::new(Inner::default()),
                changed: Notify::new(),
            }),
        }
    }

    /// Starts no more workers: the queue is dropped; running workers are left to finish (on
    /// Ctrl-C they got the same signal and are checkpointing), kept ones then exit.
    pub fn close(&self) {
        if let Ok(mut inner) = lock(&self.shared) {
            inner.closed = true;
            inner.queue.clear();
            inner.queued.clear();
            inner.let_go(false);
        }
    }

    /// Waits until no worker process is left (used on shutdown after cancelling).
    pub async fn wait_idle(&self) {
        while self.running() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Number of worker processes alive right now, kept ones included.
    pub fn running(&self) -> usize {
        lock(&self.shared).map(|i| i.processes()).unwrap_or(0)
    }
}

/// Lets the kept workers go: each exits once its task is done, none waits for a task that
/// will never come.
impl Drop for LocalExecutor {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock(shared: &Shared) -> BackendResult<std::sync::MutexGuard<'_, Inner>> {
    shared.inner.lock().map_err(|_| {
        BackendError::message(
            ErrorCategory::Infrastructure,
            "local executor state poisoned",
        )
    })
}

/// Hands queued tasks to idle kept workers and starts workers while slots are free.
fn pump(shared: &Arc<Shared>, inner: &mut Inner) -> BackendResult<()> {
    while !inner.closed {
        let Some(q) = inner.queue.front() else {
            break;
        };
        let keep = shared.launch.keep_workers && !inner.serve_refused && q.kind.is_work();
        let idle = inner
            .kept
            .iter()
            .find(|(_, k)| {
                keep && k.busy.is_none()
                    && k.lines.is_some()
                    && k.job == q.job
                    && k.manifest_sha256 == q.manifest_sha256
            })
            .map(|(n, _)| *n);
        if idle.is_none() && inner.processes() >= shared.parallelism {
            // Every slot is taken: an idle kept worker that cannot take this task makes room.
            inner.let_go(true);
            break;
        }
        let Some(q) = inner.queue.pop_front() else {
            break;
        };
        inner.queued.remove(&q.id);
        match (idle, keep) {
            (Some(n), _) => hand_over(shared, inner, n, q),
            (None, true) => {
                let n = start_kept(shared, inner, &q)?;
                hand_over(shared, inner, n, q);
            }
            (None, false) => start_single(shared, inner, q)?,
        }
    }
    Ok(())
}

/// What a process's exit says of the attempt it ran.
fn exit_state(status: std::io::Result<std::process::ExitStatus>) -> ExecState {
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            ExecState::Exited {
                code: status.code(),
                signal: status.signal(),
            }
        }
        Err(e) => ExecState::Failed {
            reason: orch_core::backend::ExecFailure::Other,
            message: e.to_string(),
        },
    }
}

/// Records that attempt `id` ended in `state`.
fn ended(inner: &mut Inner, id: String, state: ExecState) {
    tracing::debug!(worker = %id, ?state, "worker ended");
    inner.running.remove(&id);
    inner.finished.insert(id, state);
}

/// Starts what can start now, and wakes the driver.
fn repump(shared: &Arc<Shared>, inner: &mut Inner) {
    if let Err(e) = pump(shared, inner) {
        tracing::error!(error = %e, "cannot start the next worker");
    }
    shared.changed.notify_one();
}

/// A process for task `q` alone.
fn start_single(shared: &Arc<Shared>, inner: &mut Inner, q: Queued) -> BackendResult<()> {
    let mut child = spawn(&shared.launch, &q)?;
    inner.running.insert(q.id.clone(), child.id());
    inner.single += 1;
    let waiter = shared.clone();
    let id = q.id;
    tokio::spawn(async move {
        let state = exit_state(child.wait().await);
        if let Ok(mut inner) = lock(&waiter) {
            inner.single -= 1;
            ended(&mut inner, id, state);
            repump(&waiter, &mut inner);
        }
    });
    Ok(())
}

/// Sends task `q` to kept worker `n`.
fn hand_over(shared: &Arc<Shared>, inner: &mut Inner, n: u64, q: Queued) {
    let line = orch_core::invocation::ServedTask {
        group: q.group,
        task: q.task,
        executor: q.id.clone(),
        log: task_log(&shared.launch, &q),
    };
    let Some(kept) = inner.kept.get_mut(&n) else {
        return;
    };
    let sent = serde_json::to_string(&line).ok().and_then(|mut line| {
        line.push('\n');
        kept.lines.as_ref()?.send(line).ok()
    });
    match sent {
        Some(()) => {
            let pid = kept.pid;
            inner.running.insert(q.id.clone(), pid);
            kept.busy = Some(q);
        }
        // Its stdin is gone (the worker is exiting): the task waits for the next one.
        None => {
            kept.lines = None;
            inner.queued.insert(q.id.clone());
            inner.queue.push_front(q);
        }
    }
}

/// Starts a kept worker for the job of `q`; returns its number.
fn start_kept(shared: &Arc<Shared>, inner: &mut Inner, q: &Queued) -> BackendResult<u64> {
    let launch = &shared.launch;
    let (program, args) = launch
        .command
        .split_first()
        .ok_or_else(|| BackendError::message(ErrorCategory::Invalid, "empty worker command"))?;
    let log = open_log(&launch.log_dir.join(KEPT_WORKERS_LOG))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .args(orch_core::invocation::serve_args(
            &launch.storage,
            &q.job,
            q.manifest_sha256.as_deref(),
        ))
        .env(
            orch_core::logging::FORMAT_VARIABLE,
            orch_core::logging::chosen().as_str(),
        )
        // One malloc arena: a worker that runs batch after batch on several threads otherwise
        // keeps each thread's arena at its largest batch (peak RSS 54 → 152 MiB over 1M items
        // in batches of 50,000; 55 with one arena, and no slower). A value set by the user wins.
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "1".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| {
            BackendError::other(
                ErrorCategory::Infrastructure,
                format!("cannot start worker `{program}`"),
                e,
            )
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let n = inner.next_kept;
    inner.next_kept += 1;
    inner.kept.insert(
        n,
        Kept {
            pid: child.id(),
            job: q.job.clone(),
            manifest_sha256: q.manifest_sha256.clone(),
            lines: Some(tx),
            busy: None,
            answered: false,
        },
    );
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(line) = rx.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            // Dropping stdin closes it: the worker exits after its task.
        });
    }
    let stdout = child.stdout.take();
    let waiter = shared.clone();
    tokio::spawn(async move {
        if let Some(stdout) = stdout {
            use tokio::io::AsyncBufReadExt;
            let mut answers = tokio::io::BufReader::new(stdout).lines();
            loop {
                let answer = match answers.next_line().await {
                    Ok(Some(answer)) => answer,
                    Ok(None) => break,
                    // Not what `serve` writes: its answers cannot be trusted any more.
                    Err(e) => {
                        tracing::warn!(worker = n, error = %e, "cannot read a kept worker's answers; killing it");
                        if let Some(pid) = child.id() {
                            signal(pid, Signal::KILL);
                        }
                        break;
                    }
                };
                let Ok(end) = serde_json::from_str::<orch_core::invocation::ServedEnd>(&answer)
                else {
                    tracing::warn!(worker = n, "a kept worker wrote what is not an answer");
                    continue;
                };
                if let Ok(mut inner) = lock(&waiter) {
                    if let Some(kept) = inner.kept.get_mut(&n)
                        && kept.busy.as_ref().is_some_and(|q| q.id == end.executor)
                    {
                        kept.busy = None;
                        kept.answered = true;
                    }
                    let state = ExecState::Exited {
                        code: Some(end.code),
                        signal: None,
                    };
                    ended(&mut inner, end.executor, state);
                    repump(&waiter, &mut inner);
                }
            }
        }
        // No more answers: nothing more is handed to it.
        if let Ok(mut inner) = lock(&waiter)
            && let Some(kept) = inner.kept.get_mut(&n)
        {
            kept.lines = None;
        }
        let state = exit_state(child.wait().await);
        if let Ok(mut inner) = lock(&waiter) {
            let Some(kept) = inner.kept.remove(&n) else {
                return;
            };
            let refused = !kept.answered
                && state
                    == ExecState::Exited {
                        code: Some(2),
                        signal: None,
                    };
            if refused && !inner.serve_refused {
                tracing::warn!(
                    "the worker program does not run kept workers (`orch-worker serve`): one process per task from now on"
                );
                inner.serve_refused = true;
            }
            if let Some(q) = kept.busy {
                // A worker that ends cleanly without answering never started the task (it
                // was stopped while waiting, or the task came after its stop): it waits for
                // the next worker. Otherwise the task ends with the process (killed, crashed).
                let unstarted = refused
                    || state
                        == ExecState::Exited {
                            code: Some(0),
                            signal: None,
                        };
                if unstarted {
                    inner.running.remove(&q.id);
                    inner.queued.insert(q.id.clone());
                    inner.queue.push_front(q);
                } else {
                    ended(&mut inner, q.id, state);
                }
            }
            repump(&waiter, &mut inner);
        }
    });
    Ok(n)
}

/// The log file of the attempt `q`.
fn task_log(launch: &WorkerLaunch, q: &Queued) -> PathBuf {
    launch
        .log_dir
        .join(orch_core::layout::task_log_name(q.kind, q.task, q.attempt))
}

/// Opens `path` for appending, creating it and its directory.
fn open_log(path: &std::path::Path) -> BackendResult<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            BackendError::other(
                ErrorCategory::Infrastructure,
                "cannot create the log directory",
                e,
            )
        })?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            BackendError::other(ErrorCategory::Infrastructure, "cannot open the task log", e)
        })
}

fn spawn(launch: &WorkerLaunch, q: &Queued) -> BackendResult<tokio::process::Child> {
    let (program, args) = launch
        .command
        .split_first()
        .ok_or_else(|| BackendError::message(ErrorCategory::Invalid, "empty worker command"))?;
    let log = open_log(&task_log(launch, q))?;
    let log2 = log.try_clone().map_err(|e| {
        BackendError::other(ErrorCategory::Infrastructure, "cannot open the task log", e)
    })?;
    let task = q.task.to_string();
    let invocation = WorkerInvocation {
        kind: q.kind,
        storage: &launch.storage,
        job: &q.job,
        group: q.group,
        task_offset: 0,
        manifest_sha256: q.manifest_sha256.as_deref(),
    };
    // The worker inherits this process's environment; it adds the index, its id, and the log format
    // this process was given (a flag is not in the environment).
    tokio::process::Command::new(program)
        .args(args)
        .args(invocation.args())
        .env("ORCH_TASK_INDEX", &task)
        .env("SLURM_ARRAY_TASK_ID", &task)
        .env(orch_core::invocation::EXECUTOR_ID_VARIABLE, &q.id)
        .envs(
            launch
                .log_in_storage
                .then_some((orch_core::invocation::LOG_IN_STORAGE_VARIABLE, "1")),
        )
        .env(
            orch_core::logging::FORMAT_VARIABLE,
            orch_core::logging::chosen().as_str(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
        .map_err(|e| {
            BackendError::other(
                ErrorCategory::Infrastructure,
                format!("cannot start worker `{program}`"),
                e,
            )
        })
}

#[async_trait]
impl Executor for LocalExecutor {
    /// Ids follow from the kind, task and attempt alone.
    fn planned_ids(&self, group: &TaskGroup) -> Option<Vec<(u32, String)>> {
        Some(
            group
                .tasks
                .iter()
                .map(|&(task, attempt)| (task, exec_id(group.kind, task, attempt)))
                .collect(),
        )
    }

    /// Workers run on this machine: a `host:pid` owner of this host whose process is gone
    /// has ended (the pid of one of ours that is still running is not gone).
    fn worker_gone(&self, owner: &str) -> bool {
        pid_on_this_host(owner).is_some_and(process_gone)
    }

    /// Closes the queue and waits up to `grace` for the running workers to end.
    async fn shutdown(&self, grace: std::time::Duration) {
        self.close();
        tokio::time::timeout(grace, self.wait_idle()).await.ok();
    }

    /// Wakes when a worker has ended since the last call (at once if one did).
    async fn wait_change(&self, timeout: std::time::Duration) {
        tokio::time::timeout(timeout, self.shared.changed.notified())
            .await
            .ok();
    }

    async fn submit(&self, group: &TaskGroup) -> BackendResult<Vec<(u32, String)>> {
        let mut inner = lock(&self.shared)?;
        let mut ids = Vec::with_capacity(group.tasks.len());
        for &(task, attempt) in &group.tasks {
            let id = exec_id(group.kind, task, attempt);
            ids.push((task, id.clone()));
            inner.queued.insert(id.clone());
            inner.queue.push_back(Queued {
                id,
                job: group.job.clone(),
                group: group.id,
                kind: group.kind,
                task,
                attempt,
                manifest_sha256: group.manifest_sha256.clone(),
            });
        }
        pump(&self.shared, &mut inner)?;
        Ok(ids)
    }

    async fn poll(&self, tasks: &[(u32, u32, Option<String>)]) -> BackendResult<Vec<ExecStatus>> {
        let inner = lock(&self.shared)?;
        Ok(tasks
            .iter()
            .map(|(task, attempt, id)| {
                let (task, attempt) = (*task, *attempt);
                let key = id
                    .clone()
                    .unwrap_or_else(|| exec_id(TaskKind::Work, task, attempt));
                let state = if inner.running.contains_key(&key) {
                    ExecState::Running
                } else if inner.queued.contains(&key) {
                    ExecState::Queued
                } else {
                    inner
                        .finished
                        .get(&key)
                        .cloned()
                        .unwrap_or(ExecState::Unknown)
                };
                ExecStatus {
                    task,
                    attempt,
                    state,
                }
            })
            .collect())
    }

    async fn cancel(&self, attempts: &[(u32, u32, Option<String>)]) -> BackendResult<()> {
        let mut inner = lock(&self.shared)?;
        let keys: HashSet<String> = attempts
            .iter()
            .map(|(task, attempt, id)| {
                id.clone()
                    .unwrap_or_else(|| exec_id(TaskKind::Work, *task, *attempt))
            })
            .collect();
        inner.queue.retain(|q| !keys.contains(&q.id));
        inner.queued.retain(|id| !keys.contains(id));
        for key in keys {
            let Some(Some(pid)) = inner.running.get(&key).copied() else {
                continue;
            };
            // A kept worker stops after this task: it gets no other.
            for kept in inner.kept.values_mut() {
                if kept.busy.as_ref().is_some_and(|q| q.id == key) {
                    kept.lines = None;
                }
            }
            // SIGTERM so the worker checkpoints; SIGKILL if it is still there after a grace
            // period (a hung handler). `kill` avoids unsafe libc calls.
            signal(pid, Signal::TERM);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(KILL_GRACE).await;
                let alive = lock(&shared)
                    .map(|i| i.running.get(&key) == Some(&Some(pid)))
                    .unwrap_or(false);
                if alive {
                    tracing::warn!(worker = %key, pid, "worker ignored SIGTERM; killing it");
                    signal(pid, Signal::KILL);
                }
            });
        }
        Ok(())
    }
}
