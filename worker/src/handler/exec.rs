//! The `exec` handler: user code in any language, run as one long-lived process per worker that
//! speaks JSON lines on stdin/stdout (docs/job-spec.md, "Handlers").
//!
//! Why one long-lived process rather than one per item: interpreters and models take seconds to
//! start, and the per-item cost has to stay close to `parallel --pipe` (docs/benchmarks.md). Why ids and
//! out-of-order answers: a handler may work on up to `concurrency` items at once (threads,
//! asyncio, a GPU batch), and must not be forced to answer in arrival order. Why a pipeline: a
//! handler that announces it starts requests in arrival order (`{"pipeline": true}`) gets more
//! requests queued than it works on, so that a sequential one does not pay a round trip between
//! two processes per item; which calls it works on is then known without asking (the first
//! `concurrency` unanswered), and only their time counts towards the timeout.
//!
//! Shape: calls append their request lines to one shared buffer, and one writer task owns stdin
//! and writes whatever has gathered in one `write` (so lines never interleave, and a window of
//! requests costs one system call, not one each). One reader task owns stdout and completes
//! every answer that one read brought in, by id, under one lock. One supervisor task owns the
//! child, fails items whose time is up (one timer for all of them, not one per item), and turns
//! the child's exit into an infrastructure failure of exactly the items that were in flight.
//! The per-item cost matters because it is paid millions of times: with a cheap Python function
//! the exec path once cost more CPU than the function itself (docs/benchmarks.md).
//!
//! A crashed process is started again lazily, by the next call, after a short backoff; a
//! process that keeps crashing without answering anything is given up on, so that the worker
//! fails the task and the engine retries it elsewhere.
//!
//! An item past its timeout fails, and the process is killed and started again: a sequential
//! handler stuck on one item would otherwise hold up every request queued behind it, and each
//! of them would time out in turn. The other items in flight were not at fault, so their calls
//! send them again, to the new process, with fresh deadlines. Such a kill is not a crash (it
//! does not count towards giving up): each one ends an item attempt, which the worker's retry
//! policy bounds, and a call is sent again at most [`MAX_RESENDS`] times.
//!
//! Every process has its own ids and its own table of calls waiting for an answer, and only its
//! own reader delivers into that table: an answer that a killed process still wrote can never
//! reach a call that was sent again to its successor.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use orch_core::backoff::Backoff;
use orch_core::model::ErrorKind;
use orch_core::spec::{EnvValue, secret_env_var};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, warn};

use super::{Answer, Handler, HandlerError, ItemFailure, Outcome, Usage};

/// How long `shutdown` lets the process exit on its own after closing its stdin.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// After the process closed its stdout it cannot answer anymore; give it this long to exit.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// After the process exited, answers may still sit in the pipe; read them for at most this long
/// (a grandchild that inherited stdout could keep the pipe open forever).
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Waits before a crashed handler process is started again.
const RESTART_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
const PIPE_BUFFER: usize = 64 * 1024;
/// How many times one call is sent again because the process was restarted under it (after
/// another item timed out) before it fails. Each restart ends another item's attempt, so this
/// is only a backstop; a sequential handler needs one re-send per stuck item queued ahead.
const MAX_RESENDS: u32 = 5;
/// The default of [`ExecConfig::max_answer_bytes`] (the spec's `handler.exec.maxAnswerBytes`).
pub const DEFAULT_MAX_ANSWER_BYTES: usize = orch_core::spec::DEFAULT_MAX_ANSWER_BYTES as usize;
/// How much of an over-long answer line is kept to find its id.
const LONG_LINE_PREFIX: usize = 64;
/// How many requests, beyond `concurrency`, wait on the stdin of a handler that announced it
/// takes them in order (`{"pipeline": true}`): enough that a fast sequential handler always
/// finds its next request already read, and answers a whole read of them in one write.
pub const PIPELINE_DEPTH: usize = 256;

/// How to run an `exec` handler.
#[derive(Clone, PartialEq)]
pub struct ExecConfig {
    /// Program and arguments. A bare program name is looked up in `PATH`, then in `workdir`; a
    /// relative path with a `/` is taken relative to `workdir`.
    pub command: Vec<String>,
    /// Added to the worker's environment (see [`handler_env`]). Values may be secrets: never
    /// shown, `Debug` lists the names only.
    pub env: BTreeMap<String, OsString>,
    pub workdir: PathBuf,
    /// Items in flight at once.
    pub concurrency: usize,
    /// Time limit for one item; an item over it fails as transient.
    pub timeout: Duration,
    /// The handler's stderr is appended here; `None` = inherit the worker's stderr.
    pub stderr_log: Option<PathBuf>,
    /// Consecutive crashes without any response in between after which the handler gives up.
    pub max_restarts: u32,
    /// The longest stdout line (one answer) read; a longer one is thrown away as it comes, so
    /// that a runaway handler cannot grow the worker without bound.
    pub max_answer_bytes: usize,
}

impl std::fmt::Debug for ExecConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecConfig")
            .field("command", &self.command)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("workdir", &self.workdir)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("stderr_log", &self.stderr_log)
            .field("max_restarts", &self.max_restarts)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .finish()
    }
}

/// The handler's variables from the spec's `exec.env`: a literal as written, `fromEnv` and
/// `valueFrom.secretKeyRef` read through `lookup` (the worker's environment) from the variable
/// named, or from `ORCH_SECRET_<NAME>_<KEY>` ([`secret_env_var`], which the operator sets from
/// the Secret). A variable that is not set fails the start, naming it and never a value.
pub fn handler_env(
    spec: &BTreeMap<String, EnvValue>,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<BTreeMap<String, OsString>, HandlerError> {
    spec.iter()
        .map(|(name, value)| {
            let variable = match value {
                EnvValue::Literal(text) => return Ok((name.clone(), OsString::from(text))),
                EnvValue::Ref(_) => match (value.from_env(), value.secret_key_ref()) {
                    (Some(variable), None) => variable.to_string(),
                    (None, Some(secret)) => secret_env_var(secret),
                    _ => {
                        return Err(HandlerError::ExecEnv {
                            name: name.clone(),
                            why: "set exactly one of `fromEnv` and `valueFrom`".into(),
                        });
                    }
                },
            };
            match lookup(&variable) {
                Some(found) => Ok((name.clone(), found)),
                None => Err(HandlerError::ExecEnv {
                    name: name.clone(),
                    why: format!("reads the environment variable `{variable}`, which is not set"),
                }),
            }
        })
        .collect()
}

impl ExecConfig {
    /// A config with the spec's defaults: concurrency 4, timeout 60 s, 5 restarts, answers of at
    /// most 64 MiB.
    pub fn new(command: Vec<String>, workdir: impl Into<PathBuf>) -> Self {
        ExecConfig {
            command,
            env: BTreeMap::new(),
            workdir: workdir.into(),
            concurrency: 4,
            timeout: Duration::from_secs(60),
            stderr_log: None,
            max_restarts: 5,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// A handler process speaking JSON lines; see the module docs.
pub struct ExecHandler {
    cfg: ExecConfig,
    program: OsString,
    window: Arc<Window>,
    /// Crashes since the last response of any process; shared with the supervisors.
    crashes: Arc<AtomicU32>,
    slot: Mutex<Slot>,
    /// Serializes restarts, so that callers finding a dead process start one new process.
    restart: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

impl std::fmt::Debug for ExecHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecHandler")
            .field("command", &self.cfg.command)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

enum Slot {
    Running(Arc<Process>),
    /// Starting a new process failed; the next call tries again after a backoff.
    Dead {
        reason: String,
        at: Instant,
    },
    GivenUp(String),
    Shutdown,
}

/// What a call finds in the slot.
enum Current {
    Live(Arc<Process>),
    /// Being killed for a restart: wait for its exit, then start the next one.
    Ending(Arc<Process>),
    Dead {
        reason: String,
        at: Instant,
    },
    Fail(ItemFailure),
}

/// How many calls may be sent at once: `concurrency`, and [`PIPELINE_DEPTH`] more once the
/// handler announced a pipeline. Shared by every process of the handler (a restarted process is
/// the same program): the announcement is taken once.
struct Window {
    permits: Semaphore,
    concurrency: usize,
    pipelined: AtomicBool,
}

impl Window {
    fn new(concurrency: usize) -> Window {
        Window {
            permits: Semaphore::new(concurrency),
            concurrency,
            pipelined: AtomicBool::new(false),
        }
    }

    fn size(&self) -> usize {
        if self.pipelined.load(Ordering::Relaxed) {
            self.concurrency + PIPELINE_DEPTH
        } else {
            self.concurrency
        }
    }

    fn open(&self) {
        if !self.pipelined.swap(true, Ordering::SeqCst) {
            debug!(
                depth = PIPELINE_DEPTH,
                "handler takes requests in order; queuing more on its stdin"
            );
            self.permits.add_permits(PIPELINE_DEPTH);
        }
    }
}

/// One running child process, as seen by callers.
struct Process {
    generation: u64,
    pid: Option<u32>,
    link: Arc<Link>,
}

/// What callers, the writer, the reader and the supervisor of one process share.
struct Link {
    state: Mutex<LinkState>,
    /// Request lines not yet written, and whether stdin should be closed after them. Apart from
    /// `state` so that appending a request never waits for the reader delivering answers.
    outbox: Mutex<Outbox>,
    /// Wakes the writer; notified whenever the outbox goes from empty to not empty, or closes.
    wake_writer: Notify,
    kill: Notify,
    /// Set when we asked the process to go: its exit is then not a crash.
    stopping: AtomicBool,
    exited: watch::Sender<bool>,
    /// How many requests the handler works on at once; more may wait queued (a pipeline).
    concurrency: usize,
    timeout: Duration,
}

/// Which calls the handler is working on: it starts requests in the order it reads them, at
/// most `concurrency` at a time, so those are the first `concurrency` unanswered ones; the
/// others wait queued in its stdin, and their time does not count yet.
#[derive(Default)]
struct LinkState {
    /// Calls waiting for their answer, by id. Ids are handed out in send order and calls are
    /// started in id order, each with the same timeout, so the first entry is always the next to
    /// time out: one timer in the supervisor serves them all.
    waiting: BTreeMap<u64, Waiting>,
    /// How many entries of `waiting` are started (all those with an id below `queued_from`).
    started: usize,
    /// The first id not started yet.
    queued_from: u64,
    /// The last id handed out. A fresh id per attempt: an answer to an earlier, timed-out attempt
    /// of the same item must not be taken for this one.
    last_id: u64,
    /// Set once the process has exited: why, and when (for the restart backoff).
    exit: Option<(String, Instant)>,
    /// Set when the process is to be killed and replaced; no call is sent to it from then on.
    restart: Option<Restart>,
}

/// Why a live process is killed and replaced.
#[derive(Clone, Debug)]
enum Restart {
    /// An item timed out: the process may be stuck on it, with the other items queued behind.
    /// Not the process's fault as far as we know, so the others are sent again.
    TimedOut(Duration),
    /// It broke the protocol (why): counted as a crash, and the items in flight fail.
    Protocol(String),
}

/// What a call is told: its answer, or to send its item again to the next process.
#[derive(Debug)]
enum Reply {
    Answer(Answer),
    /// The process was killed after another item timed out; says why.
    Resend(String),
}

impl From<Outcome> for Reply {
    fn from(outcome: Outcome) -> Self {
        Reply::Answer(outcome.into())
    }
}

struct Waiting {
    tx: oneshot::Sender<Reply>,
    /// Set once the handler works on it; `None` while it waits queued behind others.
    deadline: Option<Instant>,
}

impl LinkState {
    /// Removes a call, and starts the queued ones its slot makes room for.
    fn remove(
        &mut self,
        id: u64,
        now: Instant,
        concurrency: usize,
        timeout: Duration,
    ) -> Option<Waiting> {
        let waiting = self.waiting.remove(&id)?;
        if id < self.queued_from {
            self.started = self.started.saturating_sub(1);
        }
        while self.started < concurrency {
            let Some((&next, queued)) = self.waiting.range_mut(self.queued_from..).next() else {
                break;
            };
            queued.deadline = Some(deadline_after(now, timeout));
            self.started += 1;
            self.queued_from = next + 1;
        }
        Some(waiting)
    }
}

/// Where a process is in its life, as a call sees it.
enum Status {
    Up,
    Ending,
    Exited(String, Instant),
}

#[derive(Default)]
struct Outbox {
    lines: Vec<u8>,
    close: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can panic while holding a lock, and the data stays consistent if it did.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    fn new(concurrency: usize, timeout: Duration) -> Link {
        Link {
            concurrency,
            timeout,
            state: Mutex::new(LinkState::default()),
            outbox: Mutex::new(Outbox::default()),
            wake_writer: Notify::new(),
            kill: Notify::new(),
            stopping: AtomicBool::new(false),
            exited: watch::channel(false).0,
        }
    }

    /// Registers a call and queues its request line; its id, or None when the process already
    /// exited or is being replaced (then nothing was sent).
    fn send(&self, item: &RawValue, tx: oneshot::Sender<Reply>) -> Option<u64> {
        let id = {
            let mut state = lock(&self.state);
            if state.exit.is_some() || state.restart.is_some() {
                return None;
            }
            state.last_id += 1;
            let id = state.last_id;
            // Fewer started than the handler works on means nothing is queued: it starts now.
            let deadline = (state.started < self.concurrency).then(|| {
                state.started += 1;
                state.queued_from = id + 1;
                deadline_after(Instant::now(), self.timeout)
            });
            state.waiting.insert(id, Waiting { tx, deadline });
            id
        };
        let was_empty = {
            let mut outbox = lock(&self.outbox);
            let was_empty = outbox.lines.is_empty();
            push_request(&mut outbox.lines, id, item);
            was_empty
        };
        // A non-empty outbox already has a wake-up pending: the writer takes it all at once.
        if was_empty {
            self.wake_writer.notify_one();
        }
        Some(id)
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        lock(&self.state)
            .remove(id, Instant::now(), self.concurrency, self.timeout)
            .map(|waiting| waiting.tx)
    }

    /// Hands each answer to its call, looking them all up under one lock; clears `answers`.
    /// `ready` is scratch space, kept by the caller so that it is not allocated per read.
    fn deliver(
        &self,
        answers: &mut Vec<(u64, Answer)>,
        ready: &mut Vec<(oneshot::Sender<Reply>, Answer)>,
    ) {
        {
            let now = Instant::now();
            let mut state = lock(&self.state);
            for (id, outcome) in answers.drain(..) {
                match state.remove(id, now, self.concurrency, self.timeout) {
                    Some(waiting) => ready.push((waiting.tx, outcome)),
                    None => debug!(
                        id,
                        "answer for an id that is not pending (timed out?); ignored"
                    ),
                }
            }
        }
        // Outside the lock: completing a call may wake a thread.
        for (tx, outcome) in ready.drain(..) {
            // Fails only if the call is gone, in which case nobody wants the answer.
            let _ = tx.send(Reply::Answer(outcome));
        }
    }

    /// Fails the calls whose deadline has passed, as transient; returns when to look again and
    /// how many timed out.
    fn expire(&self, now: Instant) -> (Instant, usize) {
        let timeout = self.timeout;
        let mut expired = Vec::new();
        let next = {
            let mut state = lock(&self.state);
            loop {
                let first = state
                    .waiting
                    .first_key_value()
                    .map(|(id, w)| (*id, w.deadline));
                match first {
                    Some((id, Some(deadline))) if deadline <= now => {
                        // The calls it makes room for start now: a sweep that comes late does
                        // not count the delay against them.
                        if let Some(waiting) = state.remove(id, now, self.concurrency, timeout) {
                            expired.push((id, waiting.tx));
                        }
                    }
                    Some((_, Some(deadline))) => break deadline,
                    // Nothing started (a queued first entry cannot be: it would have started).
                    // A call made from now on is due no earlier than this.
                    _ => break deadline_after(now, timeout),
                }
            }
        };
        let count = expired.len();
        for (id, tx) in expired {
            // Warned, not debugged: a task log must show which items ran out of time. The id is
            // the request's (`{"id": N, ...}` on the handler's stdin), which the handler's own
            // log can name; the handler does not know the item's ordinal.
            warn!(id, timeout = %human(timeout), "handler item timed out");
            let _ = tx.send(
                Outcome::Err(ItemFailure::transient(format!(
                    "timed out after {}",
                    human(timeout)
                )))
                .into(),
            );
        }
        (next, count)
    }

    fn exit(&self) -> Option<(String, Instant)> {
        lock(&self.state).exit.clone()
    }

    fn status(&self) -> Status {
        let state = lock(&self.state);
        match (&state.exit, &state.restart) {
            (Some((reason, at)), _) => Status::Exited(reason.clone(), *at),
            (None, Some(_)) => Status::Ending,
            (None, None) => Status::Up,
        }
    }

    /// Has the supervisor kill the process and tell the calls in flight what to do; the first
    /// reason given is the one that counts. Ignored once the process is stopping or gone.
    fn request_restart(&self, why: Restart) {
        {
            let mut state = lock(&self.state);
            if state.exit.is_some() || state.restart.is_some() {
                return;
            }
            state.restart = Some(why);
        }
        self.kill.notify_one();
    }

    fn restart_reason(&self) -> Option<Restart> {
        lock(&self.state).restart.clone()
    }

    /// True once we asked the process to go, for whatever reason: its pipes closing is expected.
    fn ending(&self) -> bool {
        self.stopping.load(Ordering::SeqCst) || lock(&self.state).restart.is_some()
    }

    /// Records the exit and hands back every call still waiting.
    fn close(&self, reason: String) -> BTreeMap<u64, Waiting> {
        let mut state = lock(&self.state);
        state.exit = Some((reason, Instant::now()));
        state.started = 0;
        std::mem::take(&mut state.waiting)
    }

    /// Asks the writer to write what is queued, then close stdin and end.
    fn close_stdin(&self) {
        lock(&self.outbox).close = true;
        self.wake_writer.notify_one();
    }
}

/// `now + timeout`, for any timeout a spec can hold (a year at most, so it cannot overflow).
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(timeout.min(LONGEST)).unwrap_or(now)
}

impl Process {
    /// Closes stdin, waits up to [`SHUTDOWN_GRACE`] for the exit, then kills.
    async fn stop(&self) {
        self.link.stopping.store(true, Ordering::SeqCst);
        self.link.close_stdin();
        let mut exited = self.link.exited.subscribe();
        if tokio::time::timeout(SHUTDOWN_GRACE, exited.wait_for(|done| *done))
            .await
            .is_err()
        {
            warn!(
                generation = self.generation,
                pid = self.pid,
                "handler process did not exit within {} of closing its stdin; killing it",
                human(SHUTDOWN_GRACE)
            );
            self.link.kill.notify_one();
            // An error means the supervisor is gone, and with it the child (kill_on_drop).
            let _ = exited.wait_for(|done| *done).await;
        }
    }

    /// Returns once the supervisor has published the exit.
    async fn wait_for_exit(&self) {
        let mut exited = self.link.exited.subscribe();
        // An error means the supervisor is gone, and the exit with it.
        let _ = exited.wait_for(|done| *done).await;
    }

    fn kill_now(&self) {
        self.link.stopping.store(true, Ordering::SeqCst);
        self.link.kill.notify_one();
    }
}

/// Removes a call's entry if the call is dropped before it got its answer (its future
/// cancelled), so that a late answer is recognized as such.
struct WaitGuard<'a> {
    link: &'a Link,
    id: u64,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.link.take(self.id);
        }
    }
}

impl ExecHandler {
    /// Starts the handler process. Must be called inside a Tokio runtime.
    ///
    /// Fails when the command is empty, the program cannot be started (not found, not
    /// executable) or the stderr log cannot be opened: those would fail every item alike.
    pub fn start(cfg: ExecConfig) -> Result<ExecHandler, HandlerError> {
        let Some(first) = cfg.command.first() else {
            return Err(HandlerError::EmptyCommand);
        };
        if cfg.concurrency == 0 {
            return Err(HandlerError::ZeroConcurrency);
        }
        if !cfg.workdir.is_dir() {
            return Err(HandlerError::Workdir {
                path: cfg.workdir.clone(),
            });
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(HandlerError::Spawn {
                program: first.clone(),
                source: std::io::Error::other("ExecHandler::start needs a Tokio runtime"),
            });
        }
        let program = resolve_program(first, &cfg.workdir, &cfg.env);
        let handler = ExecHandler {
            window: Arc::new(Window::new(cfg.concurrency)),
            program,
            crashes: Arc::new(AtomicU32::new(0)),
            slot: Mutex::new(Slot::Shutdown),
            restart: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
            cfg,
        };
        let process = handler.spawn()?;
        *lock(&handler.slot) = Slot::Running(process);
        Ok(handler)
    }

    /// The pid of the current process, if one is running.
    pub fn pid(&self) -> Option<u32> {
        match &*lock(&self.slot) {
            Slot::Running(process) if process.link.exit().is_none() => process.pid,
            _ => None,
        }
    }

    fn spawn(&self) -> Result<Arc<Process>, HandlerError> {
        let cfg = &self.cfg;
        let name = cfg.command.first().cloned().unwrap_or_default();
        let stderr = match &cfg.stderr_log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .map_err(|source| HandlerError::StderrLog {
                    path: path.clone(),
                    source,
                })?,
            None => Stdio::inherit(),
        };
        let mut child = Command::new(&self.program)
            .args(cfg.command.iter().skip(1))
            .envs(&cfg.env)
            .current_dir(&cfg.workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HandlerError::Spawn {
                program: name.clone(),
                source,
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(HandlerError::Spawn {
                program: name,
                source: std::io::Error::other("no pipes to the child process"),
            });
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let pid = child.id();
        info!(generation, pid, program = %name, "handler process started");

        let link = Arc::new(Link::new(cfg.concurrency, cfg.timeout));
        // The loops log in the span of whoever started the process (a worker's attempt).
        tokio::spawn(
            write_loop(stdin, link.clone(), self.window.clone(), generation).in_current_span(),
        );
        let reader = tokio::spawn(
            read_loop(
                stdout,
                link.clone(),
                self.window.clone(),
                self.crashes.clone(),
                cfg.max_answer_bytes,
            )
            .in_current_span(),
        );
        tokio::spawn(
            supervise(
                child,
                reader,
                link.clone(),
                self.crashes.clone(),
                generation,
            )
            .in_current_span(),
        );
        Ok(Arc::new(Process {
            generation,
            pid,
            link,
        }))
    }

    fn current(&self) -> Current {
        match &*lock(&self.slot) {
            Slot::Running(process) => match process.link.status() {
                Status::Up => Current::Live(process.clone()),
                Status::Ending => Current::Ending(process.clone()),
                Status::Exited(reason, at) => Current::Dead { reason, at },
            },
            Slot::Dead { reason, at } => Current::Dead {
                reason: reason.clone(),
                at: *at,
            },
            Slot::GivenUp(message) => Current::Fail(ItemFailure::fatal(message.clone())),
            Slot::Shutdown => Current::Fail(shut_down()),
        }
    }

    /// The live process, starting a new one when the last one died.
    async fn process(&self) -> Result<Arc<Process>, ItemFailure> {
        match self.current() {
            Current::Live(process) => return Ok(process),
            Current::Ending(process) => process.wait_for_exit().await,
            _ => {}
        }
        let _restarting = self.restart.lock().await;
        // Another caller may have restarted it while we waited for the lock.
        let (reason, died_at) = loop {
            match self.current() {
                Current::Live(process) => return Ok(process),
                Current::Ending(process) => process.wait_for_exit().await,
                Current::Fail(failure) => return Err(failure),
                Current::Dead { reason, at } => break (reason, at),
            }
        };
        let crashes = self.crashes.load(Ordering::SeqCst);
        if crashes > self.cfg.max_restarts {
            let message = format!("handler keeps crashing: {reason}");
            error!(
                crashes,
                max_restarts = self.cfg.max_restarts,
                %reason,
                "handler process keeps crashing without answering; giving up"
            );
            let mut slot = lock(&self.slot);
            if !matches!(*slot, Slot::Shutdown) {
                *slot = Slot::GivenUp(message.clone());
            }
            return Err(ItemFailure::fatal(message));
        }
        let delay = backoff(crashes).saturating_sub(died_at.elapsed());
        info!(
            crashes,
            delay_ms = delay.as_millis() as u64,
            %reason,
            "restarting handler process"
        );
        tokio::time::sleep(delay).await;
        match self.spawn() {
            Ok(process) => {
                let mut slot = lock(&self.slot);
                if matches!(*slot, Slot::Shutdown) {
                    // Shut down while we slept: the new process must not outlive the handler.
                    drop(slot);
                    process.kill_now();
                    return Err(shut_down());
                }
                *slot = Slot::Running(process.clone());
                Ok(process)
            }
            Err(err) => {
                // Counts as a crash, so that a program gone for good ends in "keeps crashing".
                self.crashes.fetch_add(1, Ordering::SeqCst);
                warn!(error = %err, "cannot restart handler process");
                let reason = err.to_string();
                let mut slot = lock(&self.slot);
                if !matches!(*slot, Slot::Shutdown) {
                    *slot = Slot::Dead {
                        reason: reason.clone(),
                        at: Instant::now(),
                    };
                }
                Err(ItemFailure::infrastructure(reason))
            }
        }
    }

    async fn run(&self, item: &RawValue) -> Answer {
        let mut resends = 0;
        loop {
            let process = match self.process().await {
                Ok(process) => process,
                Err(failure) => return Outcome::Err(failure).into(),
            };
            let (tx, rx) = oneshot::channel();
            let Some(id) = process.link.send(item, tx) else {
                // It died before we sent anything: the item is untouched, use the next process.
                continue;
            };
            let mut guard = WaitGuard {
                link: &process.link,
                id,
                armed: true,
            };
            // The answer comes from the reader, the supervisor's deadline sweep (timed out) or
            // the supervisor at the exit (infrastructure, or send it again), whichever takes the
            // entry first.
            let reply = rx.await;
            guard.armed = false;
            match reply {
                Ok(Reply::Answer(answer)) => return answer,
                Ok(Reply::Resend(reason)) => {
                    resends += 1;
                    if resends > MAX_RESENDS {
                        warn!(
                            resends = MAX_RESENDS,
                            "handler process restarted too often under one item; failing it"
                        );
                        return Outcome::Err(ItemFailure::transient(format!(
                            "handler process was restarted {MAX_RESENDS} times before it \
                             answered (last: {reason})"
                        )))
                        .into();
                    }
                    debug!(
                        generation = process.generation,
                        id, "sending the item again to the next handler process"
                    );
                }
                // Dropped unanswered: only when the runtime shuts down.
                Err(_) => {
                    return Outcome::Err(ItemFailure::infrastructure(
                        "handler process went away without answering",
                    ))
                    .into();
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for ExecHandler {
    async fn call(&self, item: &RawValue) -> Answer {
        let Ok(_permit) = self.window.permits.acquire().await else {
            return Outcome::Err(shut_down()).into();
        };
        self.run(item).await
    }

    fn window(&self) -> Option<usize> {
        Some(self.window.size())
    }

    async fn shutdown(&self) {
        // Calls waiting for a slot fail now instead of starting a new process.
        self.window.permits.close();
        let previous = std::mem::replace(&mut *lock(&self.slot), Slot::Shutdown);
        if let Slot::Running(process) = previous {
            info!(
                generation = process.generation,
                pid = process.pid,
                "stopping handler process"
            );
            process.stop().await;
        }
    }
}

impl Drop for ExecHandler {
    fn drop(&mut self) {
        let slot = self.slot.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Slot::Running(process) = std::mem::replace(slot, Slot::Shutdown) {
            process.kill_now();
        }
    }
}

fn shut_down() -> ItemFailure {
    ItemFailure::infrastructure("handler was shut down")
}

/// Appends `{"id":17,"item":<item>}\n`, built by hand: the item is already JSON text.
fn push_request(out: &mut Vec<u8>, id: u64, item: &RawValue) {
    let item = item.get().as_bytes();
    out.reserve(item.len() + 32);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"id\":{id},\"item\":");
    let start = out.len();
    out.extend_from_slice(item);
    // Raw newlines in valid JSON can only be whitespace between tokens (inside strings they are
    // escaped), so blanking them keeps the item intact and the protocol one line per request.
    if item.iter().any(|b| *b == b'\n' || *b == b'\r') {
        for byte in &mut out[start..] {
            if *byte == b'\n' || *byte == b'\r' {
                *byte = b' ';
            }
        }
    }
    out.extend_from_slice(b"}\n");
}

async fn write_loop(
    mut stdin: impl AsyncWrite + Unpin,
    link: Arc<Link>,
    window: Arc<Window>,
    generation: u64,
) {
    // Two buffers swapped under the lock: calls append to one while this task writes the other,
    // and neither is allocated again once grown.
    let mut batch = Vec::with_capacity(PIPE_BUFFER);
    let result = loop {
        link.wake_writer.notified().await;
        // While the window is not full, calls that are ready to run (the next items after a
        // batch of answers) get to queue their requests first, so that they go out in the same
        // write. A full window (always, at concurrency 1 without a pipeline) cannot grow: write
        // it at once.
        if lock(&link.state).waiting.len() < window.size() {
            tokio::task::yield_now().await;
        }
        let close = {
            let mut outbox = lock(&link.outbox);
            std::mem::swap(&mut outbox.lines, &mut batch);
            outbox.close
        };
        if !batch.is_empty() {
            if let Err(err) = stdin.write_all(&batch).await {
                break Err(err);
            }
            batch.clear();
        }
        if close {
            break stdin.flush().await;
        }
    };
    // Dropping `stdin` closes it: the handler sees end of input and should exit.
    if let Err(err) = result {
        if link.ending() || link.exit().is_some() {
            debug!(generation, error = %err, "handler stdin closed");
        } else {
            // Requests can no longer reach the process, so the items sent to it would only
            // time out: end it, and its supervisor fails them now and lets the next call
            // start a new process.
            warn!(generation, error = %err, "cannot write to handler stdin; stopping the process");
            link.kill.notify_one();
        }
    }
}

async fn read_loop(
    mut stdout: impl AsyncRead + Unpin,
    link: Arc<Link>,
    window: Arc<Window>,
    crashes: Arc<AtomicU32>,
    max_line: usize,
) {
    // Every complete line a read brings in is handled before the next read, and their calls
    // are completed under one lock: answers written in batches are taken in batches.
    let mut buf: Vec<u8> = Vec::with_capacity(PIPE_BUFFER);
    let mut answers = Vec::new();
    let mut ready = Vec::new();
    // Set while the rest of a line over `max_line` is read and thrown away: it is never held.
    let mut discarding = false;
    loop {
        if buf.capacity() - buf.len() < PIPE_BUFFER / 4 {
            // Room for a read; a line longer than the buffer makes it grow, doubling, but never
            // past what a line at the limit needs (a longer one is noticed within a read).
            // Here `buf.len() <= max_line`: a longer partial line is being thrown away.
            let room = max_line
                .saturating_add(PIPE_BUFFER)
                .saturating_sub(buf.len());
            buf.reserve_exact(
                buf.capacity()
                    .clamp(PIPE_BUFFER / 4, room.max(PIPE_BUFFER / 4)),
            );
        }
        // What is left from the last read is part of a line: no newline in it.
        let old_len = buf.len();
        let read = match stdout.read_buf(&mut buf).await {
            Ok(read) => read,
            Err(err) => {
                warn!(error = %err, "cannot read handler stdout");
                0
            }
        };
        let eof = read == 0;
        // Where the lines to handle start: after the end of a line being thrown away.
        let mut start = 0;
        if discarding {
            match memchr::memchr(b'\n', &buf) {
                Some(end) => {
                    start = end + 1;
                    discarding = false;
                }
                None => {
                    buf.clear();
                    if eof {
                        return;
                    }
                    continue;
                }
            }
        }
        // At the end, a last line without a newline still counts. Otherwise only the new bytes
        // are searched, so that a long line read in small pieces does not cost time quadratic
        // in its length.
        let complete = if eof {
            buf.len()
        } else {
            let from = old_len.max(start);
            memchr::memrchr(b'\n', &buf[from..]).map_or(start, |last| from + last + 1)
        };
        if complete > start {
            for line in buf[start..complete].split(|b| *b == b'\n') {
                if line.len() > max_line {
                    long_line(line, max_line, &link, &mut answers);
                } else {
                    match parse_response(line) {
                        Some(Line::Answer(id, answer)) => answers.push((id, answer)),
                        Some(Line::Pipeline) => window.open(),
                        None => {}
                    }
                }
            }
        }
        if !eof {
            buf.drain(..complete);
            // Past the limit, but not before its first LONG_LINE_PREFIX bytes are in: the id is
            // looked for there, and with fewer (a limit under that size) whether it is found
            // would depend on where the pipe cut the line (found by the exec_answers fuzz target).
            if buf.len() > max_line.max(LONG_LINE_PREFIX) {
                // Over the limit before its end: keep its start (to find the id), throw away the
                // rest as it comes, and give the memory back.
                long_line(&buf, max_line, &link, &mut answers);
                buf.clear();
                buf.shrink_to(PIPE_BUFFER);
                discarding = true;
            }
        }
        if !answers.is_empty() {
            // Any answer proves the process works: crashes are counted from here on again.
            if crashes.load(Ordering::Relaxed) != 0 {
                crashes.store(0, Ordering::SeqCst);
            }
            link.deliver(&mut answers, &mut ready);
        }
        if eof {
            return;
        }
    }
}

/// A stdout line over `handler.exec.maxAnswerBytes` (only its start is looked at): the item it
/// answers fails, when the line starts with its id; otherwise the process broke the protocol
/// and is restarted.
fn long_line(line: &[u8], max_line: usize, link: &Link, answers: &mut Vec<(u64, Answer)>) {
    let limit = human_bytes(max_line);
    match leading_id(&line[..line.len().min(LONG_LINE_PREFIX)]) {
        Some(id) => {
            warn!(
                id,
                limit = %limit,
                "handler answer longer than handler.exec.maxAnswerBytes; the item fails"
            );
            let failure = ItemFailure::permanent(format!(
                "handler answer is longer than handler.exec.maxAnswerBytes ({limit})"
            ));
            answers.push((id, Outcome::Err(failure).into()));
        }
        None => {
            warn!(
                limit = %limit,
                "handler wrote a stdout line longer than handler.exec.maxAnswerBytes that does \
                 not start with an id; restarting the process"
            );
            link.request_restart(Restart::Protocol(format!(
                "it wrote a stdout line longer than handler.exec.maxAnswerBytes ({limit}) that \
                 does not start with an `id`"
            )));
        }
    }
}

/// The id of a line that starts `{"id": 17,` (blanks allowed), as handlers written with
/// `json.dumps({"id": ..., "result": ...})` or python/orch_handler.py put it.
fn leading_id(line: &[u8]) -> Option<u64> {
    let rest = line.trim_ascii_start().strip_prefix(b"{")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"id\"")?;
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // The number must be whole: followed by a separator, not cut off by the prefix.
    match rest.get(digits) {
        Some(b',' | b'}' | b' ' | b'\t' | b'\r' | b'\n') if digits > 0 => {
            std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    /// Tokens the call consumed, by rate limit name; on results and errors alike.
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    /// `true` on the line (without an id) by which a handler announces a pipeline.
    #[serde(default)]
    pipeline: Option<bool>,
}

/// What one stdout line of a handler says.
#[derive(Debug)]
enum Line {
    /// The answer to the request with this id.
    Answer(u64, Answer),
    /// `{"pipeline": true}`: it starts requests in the order it reads them, at most
    /// `concurrency` at a time, so more may be queued on its stdin.
    Pipeline,
}

/// `"result": null` is an answer (the worker decides what a null row means), unlike a missing
/// `result`; plain `Option` would turn both into `None`.
fn present<'de, D: Deserializer<'de>>(de: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(de).map(Some)
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
    /// Seconds the API asked to wait before the next try.
    #[serde(default, rename = "retryAfter")]
    retry_after: Option<serde_json::Value>,
}

/// What one stdout line says; None for a blank line or one that is neither an answer nor the
/// pipeline announcement (warned about, then ignored).
fn parse_response(line: &[u8]) -> Option<Line> {
    let text = line.trim_ascii();
    if text.is_empty() {
        return None;
    }
    // Only lengths are logged: a stray line may well be item content, which can be sensitive.
    let response: Response<'_> = match serde_json::from_slice(text) {
        Ok(response) => response,
        Err(err) => {
            warn!(
                len = text.len(),
                error = %err,
                "handler wrote a stdout line that is not a JSON response; ignored"
            );
            return None;
        }
    };
    let Some(id) = response.id else {
        if response.pipeline == Some(true) {
            return Some(Line::Pipeline);
        }
        warn!(
            len = text.len(),
            "handler wrote a stdout line without an id; ignored"
        );
        return None;
    };
    let outcome = match (response.error, response.result) {
        (Some(error), _) => Outcome::Err(item_failure(error)),
        (None, Some(result)) => Outcome::Ok(result.to_owned()),
        (None, None) => Outcome::Err(ItemFailure::permanent(
            "handler response has neither `result` nor `error`",
        )),
    };
    let answer = match response.usage.map(parse_usage) {
        None => outcome.into(),
        Some(Ok(usage)) => Answer { outcome, usage },
        // The tokens cannot be charged, so the answer cannot be trusted to be accounted for:
        // the item fails visibly rather than letting a handler bug hide spending.
        Some(Err(problem)) => Outcome::Err(ItemFailure::permanent(problem)).into(),
    };
    Some(Line::Answer(id, answer))
}

/// `{"<limit name>": n, ...}` with non-negative integer counts, or why not.
fn parse_usage(usage: &RawValue) -> Result<Usage, String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(usage.get())
        .map_err(|_| {
            "handler response has a `usage` that is not an object of counts by rate limit name"
                .to_string()
        })?;
    let mut out = Usage::with_capacity(map.len());
    for (name, value) in map {
        if name.is_empty() {
            return Err("handler response `usage` has an empty rate limit name".into());
        }
        match value.as_u64() {
            Some(n) => out.push((name, n)),
            None => {
                return Err(format!(
                    "handler response `usage.{name}` must be a non-negative integer, got {value}"
                ));
            }
        }
    }
    Ok(out)
}

fn item_failure(error: &RawValue) -> ItemFailure {
    if let Ok(body) = serde_json::from_str::<ErrorBody>(error.get()) {
        let kind = match body.kind.as_deref() {
            Some("transient") => ErrorKind::Transient,
            Some("permanent") => ErrorKind::Permanent,
            Some("rate_limited") => ErrorKind::RateLimited,
            other => {
                // Unknown kinds are not retried: retrying blindly could repeat side effects.
                debug!(kind = ?other, "handler error without a known kind; taken as permanent");
                ErrorKind::Permanent
            }
        };
        let message = body
            .message
            .unwrap_or_else(|| "handler reported an error without a message".to_owned());
        let retry_after = body.retry_after.as_ref().and_then(retry_after_seconds);
        return ItemFailure::new(kind, message).with_retry_after(retry_after);
    }
    // Lenient: `"error": "message"` is a common slip in hand-written handlers.
    match serde_json::from_str::<String>(error.get()) {
        Ok(message) => ItemFailure::permanent(message),
        Err(_) => ItemFailure::permanent(
            "handler reported an error that is neither an object nor a string",
        ),
    }
}

/// `retryAfter`: seconds as a non-negative number. Anything else is ignored with a warning
/// (the failure keeps its kind: a malformed hint must not turn a retry into a lost item).
fn retry_after_seconds(value: &serde_json::Value) -> Option<Duration> {
    // Capped at a day: a wait longer than that is a bug, and it must fit a Duration.
    const LONGEST: f64 = 24.0 * 3600.0;
    match value.as_f64() {
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            Some(Duration::from_secs_f64(secs.min(LONGEST)))
        }
        _ if value.is_null() => None,
        _ => {
            warn!(%value, "handler error has a `retryAfter` that is not a non-negative number of seconds; ignored");
            None
        }
    }
}

async fn supervise(
    mut child: Child,
    mut reader: JoinHandle<()>,
    link: Arc<Link>,
    crashes: Arc<AtomicU32>,
    generation: u64,
) {
    enum Ended {
        Exited(std::io::Result<ExitStatus>),
        StdoutClosed,
        Kill,
    }
    let pid = child.id();
    // The time the sweep is due, rather than the time it runs: a wake-up that comes late (a
    // loaded machine) must not fail, with the item at the earliest deadline, the items sent
    // just after it, which a sequential handler has not even looked at yet. Those are sent
    // again to the next process instead.
    let mut due = Instant::now();
    let ended = loop {
        // The item timeouts: wake at the earliest deadline only, which, with answers flowing,
        // is about once per timeout period rather than once per item.
        let (next, timed_out) = link.expire(due);
        if timed_out > 0 && !link.ending() {
            warn!(
                generation,
                pid,
                timed_out,
                timeout = %human(link.timeout),
                "handler item timed out; restarting the handler process, the other items in \
                 flight go to the new one"
            );
            link.request_restart(Restart::TimedOut(link.timeout));
            // At once, not through the select below: its timer may be due too, and another
            // sweep would fail the items queued behind the stuck one, which are to be sent again.
            break Ended::Kill;
        }
        tokio::select! {
            status = child.wait() => break Ended::Exited(status),
            _ = &mut reader => break Ended::StdoutClosed,
            () = link.kill.notified() => break Ended::Kill,
            () = tokio::time::sleep_until(next.into()) => due = next,
        }
    };
    let status = match ended {
        Ended::Exited(status) => {
            // Answers written just before the exit are still in the pipe: deliver them before
            // failing whatever is left.
            if tokio::time::timeout(DRAIN_GRACE, &mut reader)
                .await
                .is_err()
            {
                reader.abort();
            }
            status
        }
        Ended::StdoutClosed => match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
            Ok(status) => status,
            Err(_) => kill(&mut child).await,
        },
        Ended::Kill => {
            let status = kill(&mut child).await;
            if tokio::time::timeout(DRAIN_GRACE, &mut reader)
                .await
                .is_err()
            {
                reader.abort();
            }
            status
        }
    };
    let stopping = link.stopping.load(Ordering::SeqCst);
    // A shutdown overrides a restart: nothing is sent again after it.
    let restart = if stopping {
        None
    } else {
        link.restart_reason()
    };
    let reason = match (status, &restart) {
        (_, Some(Restart::TimedOut(timeout))) => {
            format!("killed after an item timed out after {}", human(*timeout))
        }
        (_, Some(Restart::Protocol(why))) => format!("killed: {why}"),
        // Nobody here sent that SIGKILL: on a cluster it is the kernel's out-of-memory killer
        // enforcing the task's memory limit (the handler, the biggest process, goes first).
        (Ok(status), None) if status.signal() == Some(9) && !stopping => format!(
            "{status}: killed by SIGKILL, most likely out of memory (it needs more than \
             spec.resources.memory)"
        ),
        (Ok(status), None) => status.to_string(),
        (Err(err), None) => format!("cannot wait for it: {err}"),
    };
    // Counted before the exit is published, so that a caller seeing the exit sees the count.
    // A kill after a timeout is no crash: the process may be fine, and the timed-out item's
    // attempt already paid for it.
    let consecutive = if stopping || matches!(restart, Some(Restart::TimedOut(_))) {
        crashes.load(Ordering::SeqCst)
    } else {
        crashes.fetch_add(1, Ordering::SeqCst) + 1
    };
    let waiting = link.close(reason.clone());
    if stopping {
        info!(generation, pid, %reason, in_flight = waiting.len(), "handler process stopped");
    } else {
        let what = if restart.is_some() {
            "killed to be restarted"
        } else {
            "exited unexpectedly"
        };
        warn!(
            generation,
            pid,
            %reason,
            in_flight = waiting.len(),
            consecutive_crashes = consecutive,
            "handler process {what}"
        );
    }
    let message = format!("handler process exited ({reason})");
    // Only the calls it had started can have made it die; those queued behind them were not
    // looked at yet, and go to the next process as they are.
    let started = waiting.values().filter(|w| w.deadline.is_some()).count();
    let shared = started > 1;
    for (_, waiting) in waiting {
        let reply = match &restart {
            _ if waiting.deadline.is_none() && !stopping => Reply::Resend(reason.clone()),
            Some(Restart::TimedOut(_)) => Reply::Resend(reason.clone()),
            // The process broke the protocol: which item made it do so is unknown, so none is
            // sent again blindly; they fail as transient and the worker's retries decide.
            Some(Restart::Protocol(why)) => Outcome::Err(ItemFailure::transient(format!(
                "handler process was restarted: {why}"
            )))
            .into(),
            None => Outcome::Err(ItemFailure {
                shared_crash: shared,
                ..ItemFailure::infrastructure(message.clone())
            })
            .into(),
        };
        let _ = waiting.tx.send(reply);
    }
    // Nothing more goes to this process: let the writer end (and drop its end of the pipe).
    link.close_stdin();
    link.exited.send_replace(true);
}

async fn kill(child: &mut Child) -> std::io::Result<ExitStatus> {
    // Fails only when the process is already gone, which `wait` then reports.
    let _ = child.start_kill();
    child.wait().await
}

/// 100 ms · 2^(n-1), at most 2 s.
fn backoff(crashes: u32) -> Duration {
    RESTART_BACKOFF.delay(crashes)
}

/// Finds the program the way the spec promises: `PATH` first, then the working directory.
fn resolve_program(program: &str, workdir: &Path, env: &BTreeMap<String, OsString>) -> OsString {
    let path = Path::new(program);
    if path.is_absolute() {
        return program.into();
    }
    if program.contains('/') {
        // Relative to the child's working directory, not the worker's: std leaves this
        // platform-specific, so make it explicit.
        return workdir.join(path).into_os_string();
    }
    let search = env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    if std::env::split_paths(&search).any(|dir| dir.join(program).is_file()) {
        return program.into();
    }
    let local = workdir.join(program);
    if local.is_file() {
        return local.into_os_string();
    }
    // Not found anywhere: spawning reports it with the name the user wrote.
    program.into()
}

/// `64Mi`, `512Ki`, `1000`: how users write sizes in the job spec.
fn human_bytes(bytes: usize) -> String {
    const MI: usize = 1024 * 1024;
    if bytes >= MI && bytes.is_multiple_of(MI) {
        format!("{}Mi", bytes / MI)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// `60s`, `300ms`: how users write durations in the job spec.
fn human(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{duration:?}")
    }
}

/// What the reader of a handler's stdout made of some output (see [`read_answers`]).
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct ReadAnswers {
    /// For each call `1..=calls`, the answer it got (its `Debug` text), or `None`.
    pub answers: Vec<Option<String>>,
    /// Why the process would be restarted (it broke the protocol), if it would be.
    pub restart: Option<String>,
}

/// Runs the real stdout reader of an `exec` handler over `stdout`, handed to it `chunk` bytes
/// per read (at least 1), with `calls` calls waiting for their answers (ids `1..=calls`) and
/// lines over `max_line` bytes refused. For the fuzz target of the exec protocol (fuzz/): the
/// answers must not depend on how the output was cut into reads, and nothing a handler writes
/// may make the reader panic.
#[doc(hidden)]
pub fn read_answers(
    stdout: &[u8],
    chunk: usize,
    max_line: usize,
    calls: u64,
) -> std::io::Result<ReadAnswers> {
    /// Output that comes in reads of at most `chunk` bytes, as from a pipe.
    struct Chunked<'a> {
        data: &'a [u8],
        chunk: usize,
    }
    impl AsyncRead for Chunked<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.chunk.min(self.data.len()).min(buf.remaining());
            let (now, rest) = self.data.split_at(n);
            buf.put_slice(now);
            self.data = rest;
            std::task::Poll::Ready(Ok(()))
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let link = Arc::new(Link::new(
        usize::try_from(calls).unwrap_or(usize::MAX),
        Duration::from_secs(3600),
    ));
    let mut receivers = Vec::new();
    let item = RawValue::from_string("{}".into()).map_err(std::io::Error::other)?;
    for _ in 0..calls {
        let (tx, rx) = oneshot::channel();
        link.send(&item, tx);
        receivers.push(rx);
    }
    let reader = Chunked {
        data: stdout,
        chunk: chunk.max(1),
    };
    runtime.block_on(read_loop(
        reader,
        link.clone(),
        Arc::new(Window::new(1)),
        Arc::new(AtomicU32::new(0)),
        max_line,
    ));
    let answers = receivers
        .into_iter()
        .map(|mut rx| match rx.try_recv() {
            Ok(Reply::Answer(answer)) => Some(format!("{answer:?}")),
            Ok(Reply::Resend(why)) => Some(format!("resend: {why}")),
            Err(_) => None,
        })
        .collect();
    let restart = link.restart_reason().map(|r| format!("{r:?}"));
    Ok(ReadAnswers { answers, restart })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    impl Reply {
        fn answer(self) -> Answer {
            match self {
                Reply::Answer(answer) => answer,
                Reply::Resend(why) => panic!("told to send again: {why}"),
            }
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn request_lines_are_single_lines() {
        let item = raw("{\n  \"a\": \"x\\ny\",\r\n  \"b\": 1\n}");
        let mut out = b"{\"id\":6,\"item\":{}}\n".to_vec();
        push_request(&mut out, 7, &item);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 2);
        let (first, second) = text.trim_end().split_once('\n').unwrap();
        assert_eq!(
            first, r#"{"id":6,"item":{}}"#,
            "the earlier line is untouched"
        );
        let value: serde_json::Value = serde_json::from_str(second).unwrap();
        assert_eq!(value["id"], 7);
        assert_eq!(value["item"]["a"], "x\ny");
        assert_eq!(value["item"]["b"], 1);
    }

    #[test]
    fn error_bodies() {
        let f = item_failure(&raw(r#"{"kind":"transient","message":"busy"}"#));
        assert_eq!(f, ItemFailure::transient("busy"));
        let f = item_failure(&raw(r#"{"kind":"weird","message":"m"}"#));
        assert_eq!(f, ItemFailure::permanent("m"));
        let f = item_failure(&raw(r#""just text""#));
        assert_eq!(f, ItemFailure::permanent("just text"));
        let f = item_failure(&raw("42"));
        assert_eq!(f.kind, ErrorKind::Permanent);
    }

    #[test]
    fn rate_limited_errors_carry_the_wait_they_asked_for() {
        let f = item_failure(&raw(
            r#"{"kind":"rate_limited","message":"slow down","retryAfter":2.5}"#,
        ));
        assert_eq!(f.kind, ErrorKind::RateLimited);
        assert_eq!(f.message, "slow down");
        assert_eq!(f.retry_after, Some(Duration::from_millis(2500)));
        // Any kind may say how long to wait.
        let f = item_failure(&raw(r#"{"kind":"transient","message":"m","retryAfter":1}"#));
        assert_eq!(
            f,
            ItemFailure::transient("m").with_retry_after(Some(Duration::from_secs(1)))
        );
        // A malformed hint is dropped; the kind stays.
        for bad in [r#""2""#, "-1", "null", "[]"] {
            let f = item_failure(&raw(&format!(
                r#"{{"kind":"rate_limited","message":"m","retryAfter":{bad}}}"#
            )));
            assert_eq!(f, ItemFailure::rate_limited("m"), "{bad}");
        }
        // A silly wait is capped at a day.
        let f = item_failure(&raw(
            r#"{"kind":"transient","message":"m","retryAfter":1e300}"#,
        ));
        assert_eq!(f.retry_after, Some(Duration::from_secs(24 * 3600)));
    }

    #[test]
    fn usage_is_read_from_results_and_errors() {
        let got = answers(&[
            br#"{"id":1,"result":{"a":1},"usage":{"openai":1234,"other":0}}"#,
            br#"{"id":2,"error":{"kind":"rate_limited","message":"m"},"usage":{"openai":7}}"#,
            br#"{"id":3,"result":{},"usage":null}"#,
            br#"{"id":4,"result":{}}"#,
        ]);
        let [(1, a), (2, b), (3, c), (4, d)] = <[_; 4]>::try_from(got).unwrap() else {
            panic!("ids out of order");
        };
        assert!(a.is_ok());
        assert_eq!(a.usage, vec![("openai".into(), 1234), ("other".into(), 0)]);
        match b.outcome {
            Outcome::Err(f) => assert_eq!(f.kind, ErrorKind::RateLimited),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(b.usage, vec![("openai".into(), 7)]);
        for answer in [c, d] {
            assert!(answer.is_ok());
            assert!(answer.usage.is_empty() && answer.usage.capacity() == 0);
        }
    }

    #[test]
    fn bad_usage_makes_the_item_a_permanent_error_naming_the_problem() {
        for (usage, expect) in [
            (r#"{"openai":-1}"#, "usage.openai"),
            (r#"{"openai":1.5}"#, "usage.openai"),
            (r#"{"openai":"3"}"#, "usage.openai"),
            (r#"[1]"#, "not an object"),
            (r#"7"#, "not an object"),
            (r#"{"":1}"#, "empty rate limit name"),
        ] {
            let line = format!(r#"{{"id":9,"result":{{}},"usage":{usage}}}"#);
            let got = answers(&[line.as_bytes()]);
            assert_eq!(got.len(), 1, "{usage}");
            let (id, answer) = got.into_iter().next().unwrap();
            assert_eq!(id, 9);
            assert!(answer.usage.is_empty());
            match answer.outcome {
                Outcome::Err(f) => {
                    assert_eq!(f.kind, ErrorKind::Permanent, "{usage}");
                    assert!(f.message.contains(expect), "{usage}: {}", f.message);
                }
                other => panic!("{usage}: unexpected {other:?}"),
            }
        }
    }

    fn answers(lines: &[&[u8]]) -> Vec<(u64, Answer)> {
        lines
            .iter()
            .filter_map(|line| match parse_response(line) {
                Some(Line::Answer(id, answer)) => Some((id, answer)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn responses_are_matched_by_id() {
        let link = Link::new(64, Duration::from_secs(60));
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        assert_eq!(link.send(&raw("{}"), tx1), Some(1));
        assert_eq!(link.send(&raw("{}"), tx2), Some(2));
        assert_eq!(link.send(&raw("{}"), tx3), Some(3));
        assert!(
            answers(&[b"not json\n", b"{\"result\":{}}\n", b"  \n"]).is_empty(),
            "no answers among garbage, id-less and blank lines"
        );
        let mut got = answers(&[
            b"{\"id\":2,\"result\":null}\n",
            b"{\"id\":1,\"result\":[{\"x\":1}],\"error\":null}\r\n",
            b"{\"id\":3}\n",
            b"{\"id\":99,\"result\":{}}\n",
        ]);
        assert_eq!(got.len(), 4);
        link.deliver(&mut got, &mut Vec::new());
        assert!(got.is_empty());
        match rx1.try_recv().unwrap().answer().outcome {
            Outcome::Ok(result) => assert_eq!(result.get(), r#"[{"x":1}]"#),
            other => panic!("unexpected {other:?}"),
        }
        match rx2.try_recv().unwrap().answer().outcome {
            Outcome::Ok(result) => assert_eq!(result.get(), "null"),
            other => panic!("unexpected {other:?}"),
        }
        match rx3.try_recv().unwrap().answer().outcome {
            Outcome::Err(failure) => assert_eq!(failure.kind, ErrorKind::Permanent),
            other => panic!("unexpected {other:?}"),
        }
        let (tx4, _rx4) = oneshot::channel();
        assert_eq!(link.close("exit status: 1".into()).len(), 0);
        assert_eq!(
            link.send(&raw("{}"), tx4),
            None,
            "no registration after the exit"
        );
    }

    #[test]
    fn only_calls_past_their_deadline_expire() {
        let timeout = Duration::from_millis(500);
        let link = Link::new(64, timeout);
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        let id1 = link.send(&raw("1"), tx1).unwrap();
        let id2 = link.send(&raw("2"), tx2).unwrap();
        let sent = Instant::now();
        let id3 = link.send(&raw("3"), tx3).unwrap();
        let deadline = |id: u64| lock(&link.state).waiting[&id].deadline.unwrap();
        assert!(deadline(id1) <= deadline(id2) && deadline(id2) <= deadline(id3));

        // Nothing is due yet: the sweep sleeps until the first deadline.
        let early = deadline(id1) - Duration::from_millis(1);
        assert_eq!(link.expire(early), (deadline(id1), 0));
        assert!(rx1.try_recv().is_err());

        // The first two are due: they fail as transient; the third is next.
        assert_eq!(link.expire(deadline(id2)), (deadline(id3), 2));
        for rx in [&mut rx1, &mut rx2] {
            match rx.try_recv().unwrap().answer().outcome {
                Outcome::Err(failure) => {
                    assert_eq!(failure, ItemFailure::transient("timed out after 500ms"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(rx3.try_recv().is_err());
        // A late answer for an expired call is dropped; the third still gets its own.
        let mut got = answers(&[
            format!("{{\"id\":{id1},\"result\":1}}").as_bytes(),
            format!("{{\"id\":{id3},\"result\":3}}").as_bytes(),
        ]);
        link.deliver(&mut got, &mut Vec::new());
        match rx3.try_recv().unwrap().answer().outcome {
            Outcome::Ok(result) => assert_eq!(result.get(), "3"),
            other => panic!("unexpected {other:?}"),
        }
        // Nothing waiting: look again one timeout from now at the latest.
        let now = sent + Duration::from_secs(3);
        assert_eq!(link.expire(now), (now + timeout, 0));
    }

    #[test]
    fn queued_calls_start_their_clock_when_a_slot_frees() {
        let timeout = Duration::from_millis(500);
        let link = Link::new(2, timeout);
        let mut receivers = Vec::new();
        for n in 1..=5 {
            let (tx, rx) = oneshot::channel();
            assert_eq!(link.send(&raw("{}"), tx), Some(n));
            receivers.push(rx);
        }
        let deadline = |id: u64| lock(&link.state).waiting.get(&id).and_then(|w| w.deadline);
        // The handler works on two at a time: the others wait, off the clock.
        let first = deadline(1).unwrap();
        assert!(deadline(2).is_some());
        assert_eq!((deadline(3), deadline(4), deadline(5)), (None, None, None));
        // A sweep at the first deadline fails only the first; the third starts in its place.
        assert_eq!(link.expire(first).1, 1);
        assert!(deadline(3).is_some_and(|d| d >= first + timeout));
        assert_eq!(deadline(4), None);
        // An answer, or a call given up on, makes room in the same way.
        link.deliver(&mut answers(&[br#"{"id":2,"result":2}"#]), &mut Vec::new());
        assert!(deadline(4).is_some());
        assert!(link.take(3).is_some());
        assert!(deadline(5).is_some());
        // A queued call that goes away leaves the started ones as they are.
        let (tx, _rx) = oneshot::channel();
        assert_eq!(link.send(&raw("{}"), tx), Some(6));
        assert_eq!(deadline(6), None);
        assert!(link.take(6).is_some());
        let (tx, _rx) = oneshot::channel();
        assert_eq!(link.send(&raw("{}"), tx), Some(7));
        assert_eq!(deadline(7), None, "two are still started");
    }

    #[test]
    fn a_handler_announces_a_pipeline_on_a_line_of_its_own() {
        assert!(matches!(
            parse_response(br#"{"pipeline": true}"#),
            Some(Line::Pipeline)
        ));
        assert!(parse_response(br#"{"pipeline": false}"#).is_none());
        // On an answer it is just an unknown field.
        assert!(matches!(
            parse_response(br#"{"id": 3, "result": 1, "pipeline": true}"#),
            Some(Line::Answer(3, _))
        ));
    }

    /// An `AsyncWrite` that records each write it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_requests_go_out_in_one_write() {
        let link = Arc::new(Link::new(64, Duration::from_secs(60)));
        let mut receivers = Vec::new();
        for n in 0..10 {
            let (tx, rx) = oneshot::channel();
            link.send(&raw(&format!("{{\"n\":{n}}}")), tx).unwrap();
            receivers.push(rx);
        }
        let recorder = Recorder::default();
        let writer = tokio::spawn(write_loop(
            recorder.clone(),
            link.clone(),
            Arc::new(Window::new(16)),
            1,
        ));
        link.close_stdin();
        writer.await.unwrap();
        let writes = recorder.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 1, "one write for the whole window");
        let text = String::from_utf8(writes.concat()).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    }

    /// Found by the exec_answers fuzz target: with `maxAnswerBytes` under the prefix the id is
    /// looked for in, an over-long answer read in small pieces was judged before its id had
    /// arrived, so its item was not failed but the process restarted instead.
    #[test]
    fn an_over_long_answer_fails_its_item_however_the_reads_cut_it() {
        let stdout = b"{\"id\":1,\"result\":\"a long answer over the limit\"}\n\
            {\"id\":2,\"result\":1}\nxxxxxxxxxxxxxxxxxxxxxxxxxx\n";
        let whole = read_answers(stdout, usize::MAX, 4, 8).unwrap();
        assert!(whole.answers[0].as_ref().unwrap().contains("longer than"));
        assert!(whole.answers[1].as_ref().unwrap().contains("longer than"));
        assert!(
            whole.restart.is_some(),
            "the line without an id restarts it"
        );
        for chunk in 1..=64 {
            assert_eq!(
                read_answers(stdout, chunk, 4, 8).unwrap(),
                whole,
                "chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn answers_split_across_reads_are_put_together() {
        let link = Arc::new(Link::new(64, Duration::from_secs(60)));
        let mut receivers = Vec::new();
        let long = "y".repeat(3 * PIPE_BUFFER);
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            link.send(&raw("{}"), tx).unwrap();
            receivers.push(rx);
        }
        // Bytes come in pieces of 7 that cut lines anywhere; one answer is longer than the
        // read buffer; the last one has no newline before the end of output.
        let output = format!(
            "{{\"id\":2,\"result\":{{\"a\":\"x\"}}}}\nnot an answer\n\
             {{\"id\":1,\"result\":\"{long}\"}}\n\n\
             {{\"id\":3,\"error\":{{\"kind\":\"transient\",\"message\":\"later\"}}}}\n\
             {{\"id\":4,\"result\":[]}}"
        );
        let (mut ours, theirs) = tokio::io::duplex(7);
        let feeder = tokio::spawn(async move {
            ours.write_all(output.as_bytes()).await.unwrap();
        });
        let crashes = Arc::new(AtomicU32::new(2));
        read_loop(
            theirs,
            link.clone(),
            Arc::new(Window::new(1)),
            crashes.clone(),
            DEFAULT_MAX_ANSWER_BYTES,
        )
        .await;
        feeder.await.unwrap();
        assert_eq!(
            crashes.load(Ordering::SeqCst),
            0,
            "answers reset the crash count"
        );
        let mut outcomes = Vec::new();
        for mut rx in receivers {
            outcomes.push(rx.try_recv().unwrap().answer().outcome);
        }
        match &outcomes[0] {
            Outcome::Ok(result) => assert_eq!(result.get(), format!("\"{long}\"")),
            other => panic!("unexpected {other:?}"),
        }
        match &outcomes[1] {
            Outcome::Ok(result) => assert_eq!(result.get(), r#"{"a":"x"}"#),
            other => panic!("unexpected {other:?}"),
        }
        match &outcomes[2] {
            Outcome::Err(failure) => assert_eq!(failure, &ItemFailure::transient("later")),
            other => panic!("unexpected {other:?}"),
        }
        match &outcomes[3] {
            Outcome::Ok(result) => assert_eq!(result.get(), "[]"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_id_of_a_long_line_is_read_from_its_start() {
        assert_eq!(leading_id(br#"{"id":17,"result":"xxxx"#), Some(17));
        assert_eq!(leading_id(b"  { \"id\" :\t9 , \"error\""), Some(9));
        assert_eq!(leading_id(br#"{"id":3}"#), Some(3));
        for no in [
            &br#"{"result":"x","id":4}"#[..],
            br#"{"id":"4","result""#,
            br#"{"id":-4,"#,
            br#"{"id":12345"#,
            br#"["id",1]"#,
            b"",
        ] {
            assert_eq!(leading_id(no), None, "{}", String::from_utf8_lossy(no));
        }
        assert_eq!(human_bytes(64 * 1024 * 1024), "64Mi");
        assert_eq!(human_bytes(512 * 1024), "512Ki");
        assert_eq!(human_bytes(1000), "1000");
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_thrown_away_and_fail_their_item() {
        let link = Arc::new(Link::new(64, Duration::from_secs(60)));
        let mut receivers = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            link.send(&raw("{}"), tx).unwrap();
            receivers.push(rx);
        }
        let long = "y".repeat(5000);
        // Item 1's answer is over the limit (and comes in pieces); an answer just under it
        // passes; a long line without a leading id breaks the protocol; answers after the long
        // lines are still read.
        let under = "z".repeat(1000 - r#"{"id":2,"result":""}"#.len());
        let output = format!(
            "{{\"id\":1,\"result\":\"{long}\"}}\n{{\"id\":2,\"result\":\"{under}\"}}\n\
             {{\"result\":\"{long}\",\"id\":3}}\n{{\"id\":3,\"result\":3}}\n\
             {{\"id\":4,\"result\":\"{long}\"}}"
        );
        let (mut ours, theirs) = tokio::io::duplex(7);
        let feeder = tokio::spawn(async move {
            ours.write_all(output.as_bytes()).await.unwrap();
        });
        read_loop(
            theirs,
            link.clone(),
            Arc::new(Window::new(1)),
            Arc::new(AtomicU32::new(0)),
            1000,
        )
        .await;
        feeder.await.unwrap();
        let mut outcomes = Vec::new();
        for mut rx in receivers {
            outcomes.push(rx.try_recv().unwrap().answer().outcome);
        }
        let too_long = ItemFailure::permanent(
            "handler answer is longer than handler.exec.maxAnswerBytes (1000)",
        );
        match &outcomes[0] {
            Outcome::Err(failure) => assert_eq!(failure, &too_long),
            other => panic!("unexpected {other:?}"),
        }
        match &outcomes[1] {
            Outcome::Ok(result) => assert_eq!(result.get(), format!("\"{under}\"")),
            other => panic!("unexpected {other:?}"),
        }
        match &outcomes[2] {
            Outcome::Ok(result) => assert_eq!(result.get(), "3"),
            other => panic!("unexpected {other:?}"),
        }
        // The last line ends with the output, still over the limit.
        match &outcomes[3] {
            Outcome::Err(failure) => assert_eq!(failure, &too_long),
            other => panic!("unexpected {other:?}"),
        }
        match link.restart_reason() {
            Some(Restart::Protocol(why)) => assert!(why.contains("maxAnswerBytes (1000)"), "{why}"),
            other => panic!("no restart asked for: {other:?}"),
        }
        let (tx, _rx) = oneshot::channel();
        assert_eq!(
            link.send(&raw("{}"), tx),
            None,
            "nothing goes to a dying process"
        );
    }

    #[test]
    fn answers_of_a_replaced_process_never_reach_its_successor() {
        let timeout = Duration::from_secs(60);
        let old = Link::new(64, Duration::from_secs(60));
        let (tx, _rx) = oneshot::channel();
        assert_eq!(old.send(&raw("1"), tx), Some(1));
        old.request_restart(Restart::TimedOut(timeout));
        let in_flight = old.close("killed".into());
        assert_eq!(in_flight.len(), 1);
        // The item goes to the next process, which numbers its requests anew.
        let new = Link::new(64, Duration::from_secs(60));
        let (tx, mut rx) = oneshot::channel();
        assert_eq!(new.send(&raw("1"), tx), Some(1));
        // What the killed process still wrote is read by its own reader, into its own table.
        old.deliver(
            &mut answers(&[br#"{"id":1,"result":"stale"}"#]),
            &mut Vec::new(),
        );
        assert!(rx.try_recv().is_err(), "a stale answer was delivered");
        new.deliver(
            &mut answers(&[br#"{"id":1,"result":"fresh"}"#]),
            &mut Vec::new(),
        );
        match rx.try_recv().unwrap().answer().outcome {
            Outcome::Ok(result) => assert_eq!(result.get(), r#""fresh""#),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(6), Duration::from_secs(2));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn durations_read_like_the_spec() {
        assert_eq!(human(Duration::from_secs(60)), "60s");
        assert_eq!(human(Duration::from_millis(300)), "300ms");
    }

    #[test]
    fn programs_resolve_against_the_workdir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("handler.sh"), "").unwrap();
        let env = BTreeMap::new();
        assert_eq!(
            resolve_program("./handler.sh", dir.path(), &env),
            dir.path().join("./handler.sh").into_os_string()
        );
        assert_eq!(
            resolve_program("handler.sh", dir.path(), &env),
            dir.path().join("handler.sh").into_os_string()
        );
        assert_eq!(
            resolve_program("sh", dir.path(), &env),
            OsString::from("sh")
        );
        assert_eq!(
            resolve_program("/bin/sh", dir.path(), &env),
            OsString::from("/bin/sh")
        );
    }
}
