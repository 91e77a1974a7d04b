//! The local executor: runs a task group as an "array" of `orch-worker` processes on this
//! machine, at most `parallelism` at a time, the way a Slurm array with `%N` would.
//!
//! Each worker gets `ORCH_TASK_INDEX` (and `SLURM_ARRAY_TASK_ID`, so worker code written for
//! Slurm runs unchanged) and its task group, and appends its stdout/stderr to the task log.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, ExecState, ExecStatus, Executor};
use orch_core::model::TaskGroup;

/// How to start a worker for one task.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    /// Program and leading arguments, e.g. `["/usr/bin/orch-worker"]`.
    pub command: Vec<String>,
    /// Storage URI passed as `--storage`.
    pub storage: String,
    /// Directory for per-task logs (`<task>.<attempt>.log`).
    pub log_dir: PathBuf,
}

struct Queued {
    job: String,
    group: u32,
    task: u32,
    attempt: u32,
}

struct Running {
    attempt: u32,
    pid: Option<u32>,
    child: tokio::process::Child,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Queued>,
    running: HashMap<u32, Running>,
    finished: HashMap<u32, (u32, ExecState)>,
}

/// Worker processes with bounded parallelism.
pub struct LocalExecutor {
    launch: WorkerLaunch,
    parallelism: usize,
    inner: Mutex<Inner>,
}

impl LocalExecutor {
    pub fn new(launch: WorkerLaunch, parallelism: usize) -> Self {
        LocalExecutor {
            launch,
            parallelism: parallelism.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> BackendResult<std::sync::MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| {
            BackendError::message(
                ErrorCategory::Infrastructure,
                "local executor state poisoned",
            )
        })
    }

    /// Reaps finished workers and starts queued ones while slots are free.
    fn pump(&self, inner: &mut Inner) -> BackendResult<()> {
        let mut ended = Vec::new();
        for (task, run) in inner.running.iter_mut() {
            match run.child.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    ended.push((
                        *task,
                        run.attempt,
                        ExecState::Exited {
                            code: status.code(),
                            signal: status.signal(),
                        },
                    ));
                }
                Ok(None) => {}
                Err(e) => ended.push((
                    *task,
                    run.attempt,
                    ExecState::Failed {
                        reason: orch_core::backend::ExecFailure::Other,
                        message: e.to_string(),
                    },
                )),
            }
        }
        for (task, attempt, state) in ended {
            inner.running.remove(&task);
            tracing::debug!(task, attempt, ?state, "worker ended");
            inner.finished.insert(task, (attempt, state));
        }
        while inner.running.len() < self.parallelism {
            let Some(q) = inner.queue.pop_front() else {
                break;
            };
            let child = self.spawn(&q)?;
            inner.running.insert(
                q.task,
                Running {
                    attempt: q.attempt,
                    pid: child.id(),
                    child,
                },
            );
        }
        Ok(())
    }

    fn spawn(&self, q: &Queued) -> BackendResult<tokio::process::Child> {
        let (program, args) =
            self.launch.command.split_first().ok_or_else(|| {
                BackendError::message(ErrorCategory::Invalid, "empty worker command")
            })?;
        std::fs::create_dir_all(&self.launch.log_dir).map_err(|e| {
            BackendError::other(
                ErrorCategory::Infrastructure,
                "cannot create the log directory",
                e,
            )
        })?;
        let log_path = self
            .launch
            .log_dir
            .join(format!("{:06}.{}.log", q.task, q.attempt));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| {
                BackendError::other(ErrorCategory::Infrastructure, "cannot open the task log", e)
            })?;
        let log2 = log.try_clone().map_err(|e| {
            BackendError::other(ErrorCategory::Infrastructure, "cannot open the task log", e)
        })?;
        let task = q.task.to_string();
        tokio::process::Command::new(program)
            .args(args)
            .args(["run", "--storage", &self.launch.storage, "--job", &q.job])
            .args(["--group", &q.group.to_string()])
            .env("ORCH_TASK_INDEX", &task)
            .env("SLURM_ARRAY_TASK_ID", &task)
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

    /// Waits until no worker runs any more (used on shutdown after cancelling).
    pub async fn wait_idle(&self) {
        loop {
            let busy = match self.lock() {
                Ok(mut inner) => {
                    let _ = self.pump(&mut inner);
                    !inner.running.is_empty()
                }
                Err(_) => false,
            };
            if !busy {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Number of worker processes alive right now.
    pub fn running(&self) -> usize {
        self.lock().map(|i| i.running.len()).unwrap_or(0)
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    async fn submit(&self, group: &TaskGroup) -> BackendResult<Vec<(u32, String)>> {
        let mut inner = self.lock()?;
        let mut ids = Vec::with_capacity(group.tasks.len());
        for &(task, attempt) in &group.tasks {
            inner.finished.remove(&task);
            inner.queue.push_back(Queued {
                job: group.job.clone(),
                group: group.id,
                task,
                attempt,
            });
            ids.push((task, format!("local:{}:{task}", group.id)));
        }
        self.pump(&mut inner)?;
        Ok(ids)
    }

    async fn poll(&self, tasks: &[(u32, u32, Option<String>)]) -> BackendResult<Vec<ExecStatus>> {
        let mut inner = self.lock()?;
        self.pump(&mut inner)?;
        Ok(tasks
            .iter()
            .map(|&(task, attempt, _)| {
                let state = if inner
                    .running
                    .get(&task)
                    .is_some_and(|r| r.attempt == attempt)
                {
                    ExecState::Running
                } else if inner
                    .queue
                    .iter()
                    .any(|q| q.task == task && q.attempt == attempt)
                {
                    ExecState::Queued
                } else {
                    match inner.finished.get(&task) {
                        Some((a, s)) if *a == attempt => s.clone(),
                        _ => ExecState::Unknown,
                    }
                };
                ExecStatus {
                    task,
                    attempt,
                    state,
                }
            })
            .collect())
    }

    async fn cancel(&self, executor_ids: &[String]) -> BackendResult<()> {
        let tasks: Vec<u32> = executor_ids
            .iter()
            .filter_map(|id| id.rsplit(':').next()?.parse().ok())
            .collect();
        let mut inner = self.lock()?;
        inner.queue.retain(|q| !tasks.contains(&q.task));
        for task in tasks {
            if let Some(run) = inner.running.get_mut(&task) {
                // SIGTERM first so the worker checkpoints; `kill` avoids unsafe libc calls.
                match run.pid {
                    Some(pid) => {
                        let _ = std::process::Command::new("kill")
                            .args(["-TERM", &pid.to_string()])
                            .status();
                    }
                    None => {
                        let _ = run.child.start_kill();
                    }
                }
            }
        }
        Ok(())
    }
}
