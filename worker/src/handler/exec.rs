//! The `exec` handler: user code in any language, run as one long-lived process per worker that
//! speaks JSON lines on stdin/stdout (DESIGN §4).
//!
//! Why one long-lived process rather than one per item: interpreters and models take seconds to
//! start, and the per-item cost has to stay close to `parallel --pipe` (DESIGN §8). Why ids and
//! out-of-order answers: a handler may work on up to `concurrency` items at once (threads,
//! asyncio, a GPU batch), and must not be forced to answer in arrival order.
//!
//! Shape: one writer task owns stdin (so request lines never interleave, and many queued lines
//! are flushed with one write), one reader task owns stdout and completes the waiting call by
//! id, and one supervisor task owns the child and turns its exit into an infrastructure failure
//! of exactly the items that were in flight. A crashed process is started again lazily, by the
//! next call, after a short backoff; a process that keeps crashing without answering anything is
//! given up on, so that the worker fails the task and the engine retries it elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use orch_core::model::ErrorKind;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::{Handler, HandlerError, ItemFailure, Outcome};

/// How long `shutdown` lets the process exit on its own after closing its stdin.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// After the process closed its stdout it cannot answer anymore; give it this long to exit.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// After the process exited, answers may still sit in the pipe; read them for at most this long
/// (a grandchild that inherited stdout could keep the pipe open forever).
const DRAIN_GRACE: Duration = Duration::from_secs(1);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const PIPE_BUFFER: usize = 64 * 1024;

/// How to run an `exec` handler.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    /// Program and arguments. A bare program name is looked up in `PATH`, then in `workdir`; a
    /// relative path with a `/` is taken relative to `workdir`.
    pub command: Vec<String>,
    /// Added to the worker's environment.
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    /// Items in flight at once.
    pub concurrency: usize,
    /// Time limit for one item; an item over it fails as transient.
    pub timeout: Duration,
    /// The handler's stderr is appended here; `None` = inherit the worker's stderr.
    pub stderr_log: Option<PathBuf>,
    /// Consecutive crashes without any response in between after which the handler gives up.
    pub max_restarts: u32,
}

impl ExecConfig {
    /// A config with the spec's defaults: concurrency 4, timeout 60 s, 5 restarts.
    pub fn new(command: Vec<String>, workdir: impl Into<PathBuf>) -> Self {
        ExecConfig {
            command,
            env: BTreeMap::new(),
            workdir: workdir.into(),
            concurrency: 4,
            timeout: Duration::from_secs(60),
            stderr_log: None,
            max_restarts: 5,
        }
    }
}

/// A handler process speaking JSON lines; see the module docs.
pub struct ExecHandler {
    cfg: ExecConfig,
    program: OsString,
    permits: Semaphore,
    next_id: AtomicU64,
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
    Dead { reason: String, at: Instant },
    Fail(ItemFailure),
}

/// One running child process, as seen by callers.
struct Process {
    generation: u64,
    pid: Option<u32>,
    requests: mpsc::UnboundedSender<Msg>,
    link: Arc<Link>,
}

enum Msg {
    Line(Vec<u8>),
    /// Flush what is queued, then close stdin: the polite way to ask a handler to exit.
    Close,
}

/// What callers, the reader and the supervisor of one process share.
struct Link {
    state: Mutex<LinkState>,
    kill: Notify,
    /// Set when we asked the process to go: its exit is then not a crash.
    stopping: AtomicBool,
    exited: watch::Sender<bool>,
}

#[derive(Default)]
struct LinkState {
    waiting: HashMap<u64, oneshot::Sender<Outcome>>,
    /// Set once the process has exited: why, and when (for the restart backoff).
    exit: Option<(String, Instant)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can panic while holding a lock, and the data stays consistent if it did.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    /// Registers a call; false when the process already exited (the request was not sent).
    fn insert(&self, id: u64, tx: oneshot::Sender<Outcome>) -> bool {
        let mut state = lock(&self.state);
        if state.exit.is_some() {
            return false;
        }
        state.waiting.insert(id, tx);
        true
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Outcome>> {
        lock(&self.state).waiting.remove(&id)
    }

    fn exit(&self) -> Option<(String, Instant)> {
        lock(&self.state).exit.clone()
    }

    /// Records the exit and hands back every call still waiting.
    fn close(&self, reason: String) -> HashMap<u64, oneshot::Sender<Outcome>> {
        let mut state = lock(&self.state);
        state.exit = Some((reason, Instant::now()));
        std::mem::take(&mut state.waiting)
    }
}

impl Process {
    /// Closes stdin, waits up to [`SHUTDOWN_GRACE`] for the exit, then kills.
    async fn stop(&self) {
        self.link.stopping.store(true, Ordering::SeqCst);
        // Fails only when the writer is gone already, and then stdin is closed anyway.
        let _ = self.requests.send(Msg::Close);
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

    fn kill_now(&self) {
        self.link.stopping.store(true, Ordering::SeqCst);
        self.link.kill.notify_one();
    }
}

/// Removes a call's entry if the call is dropped before it got its answer (its future
/// cancelled, or timed out), so that a late answer is recognized as such.
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
            permits: Semaphore::new(cfg.concurrency),
            program,
            next_id: AtomicU64::new(1),
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

        let link = Arc::new(Link {
            state: Mutex::new(LinkState::default()),
            kill: Notify::new(),
            stopping: AtomicBool::new(false),
            exited: watch::channel(false).0,
        });
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(stdin, queue, link.clone(), generation));
        let reader = tokio::spawn(read_loop(stdout, link.clone(), self.crashes.clone()));
        tokio::spawn(supervise(
            child,
            reader,
            link.clone(),
            self.crashes.clone(),
            generation,
        ));
        Ok(Arc::new(Process {
            generation,
            pid,
            requests,
            link,
        }))
    }

    fn current(&self) -> Current {
        match &*lock(&self.slot) {
            Slot::Running(process) => match process.link.exit() {
                None => Current::Live(process.clone()),
                Some((reason, at)) => Current::Dead { reason, at },
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
        if let Current::Live(process) = self.current() {
            return Ok(process);
        }
        let _restarting = self.restart.lock().await;
        // Another caller may have restarted it while we waited for the lock.
        let (reason, died_at) = match self.current() {
            Current::Live(process) => return Ok(process),
            Current::Fail(failure) => return Err(failure),
            Current::Dead { reason, at } => (reason, at),
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

    async fn run(&self, item: &RawValue) -> Outcome {
        loop {
            let process = match self.process().await {
                Ok(process) => process,
                Err(failure) => return Outcome::Err(failure),
            };
            // A fresh id per attempt: an answer to an earlier, timed-out attempt of the same
            // item must not be taken for this one.
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, mut rx) = oneshot::channel();
            if !process.link.insert(id, tx) {
                // It died before we sent anything: the item is untouched, use the next process.
                continue;
            }
            let mut guard = WaitGuard {
                link: &process.link,
                id,
                armed: true,
            };
            // A send error means the writer is gone; the process is going down and its
            // supervisor answers `rx` with the exit status.
            let _ = process.requests.send(Msg::Line(request_line(id, item)));
            let outcome = match tokio::time::timeout(self.cfg.timeout, &mut rx).await {
                Ok(Ok(outcome)) => outcome,
                // The supervisor vanished without answering: only when the runtime shuts down.
                Ok(Err(_)) => Outcome::Err(ItemFailure::infrastructure(
                    "handler process went away without answering",
                )),
                Err(_) => {
                    if process.link.take(id).is_none() {
                        // The answer raced the deadline; it is in the channel, or will be.
                        if let Ok(outcome) = rx.try_recv() {
                            guard.armed = false;
                            return outcome;
                        }
                    }
                    debug!(
                        id,
                        generation = process.generation,
                        "handler item timed out"
                    );
                    Outcome::Err(ItemFailure::transient(format!(
                        "timed out after {}",
                        human(self.cfg.timeout)
                    )))
                }
            };
            guard.armed = false;
            return outcome;
        }
    }
}

#[async_trait::async_trait]
impl Handler for ExecHandler {
    async fn call(&self, item: &RawValue) -> Outcome {
        let Ok(_permit) = self.permits.acquire().await else {
            return Outcome::Err(shut_down());
        };
        self.run(item).await
    }

    async fn shutdown(&self) {
        // Calls waiting for a slot fail now instead of starting a new process.
        self.permits.close();
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

/// `{"id":17,"item":<item>}\n`, built by hand: the item is already JSON text.
fn request_line(id: u64, item: &RawValue) -> Vec<u8> {
    let item = item.get().as_bytes();
    let mut line = Vec::with_capacity(item.len() + 32);
    // Writing into a Vec cannot fail.
    let _ = write!(line, "{{\"id\":{id},\"item\":");
    let start = line.len();
    line.extend_from_slice(item);
    // Raw newlines in valid JSON can only be whitespace between tokens (inside strings they are
    // escaped), so blanking them keeps the item intact and the protocol one line per request.
    if item.iter().any(|b| *b == b'\n' || *b == b'\r') {
        for byte in &mut line[start..] {
            if *byte == b'\n' || *byte == b'\r' {
                *byte = b' ';
            }
        }
    }
    line.extend_from_slice(b"}\n");
    line
}

async fn write_loop(
    stdin: ChildStdin,
    mut queue: mpsc::UnboundedReceiver<Msg>,
    link: Arc<Link>,
    generation: u64,
) {
    let mut out = BufWriter::with_capacity(PIPE_BUFFER, stdin);
    let mut result = Ok(());
    'queue: while let Some(first) = queue.recv().await {
        // Write everything queued, then flush once: one system call for many small requests.
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => {
                    if let Err(err) = out.write_all(&line).await {
                        result = Err(err);
                        break 'queue;
                    }
                }
                Msg::Close => break 'queue,
            }
            next = queue.try_recv().ok();
        }
        if let Err(err) = out.flush().await {
            result = Err(err);
            break;
        }
    }
    let result = match result {
        Ok(()) => out.flush().await,
        Err(err) => Err(err),
    };
    // Dropping `out` closes stdin: the handler sees end of input and should exit.
    if let Err(err) = result {
        if link.stopping.load(Ordering::SeqCst) || link.exit().is_some() {
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

async fn read_loop(stdout: ChildStdout, link: Arc<Link>, crashes: Arc<AtomicU32>) {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER, stdout);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => handle_line(&line, &link, &crashes),
            Err(err) => {
                warn!(error = %err, "cannot read handler stdout");
                return;
            }
        }
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
}

fn handle_line(line: &[u8], link: &Link, crashes: &AtomicU32) {
    let text = line.trim_ascii();
    if text.is_empty() {
        return;
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
            return;
        }
    };
    let Some(id) = response.id else {
        warn!(
            len = text.len(),
            "handler wrote a stdout line without an id; ignored"
        );
        return;
    };
    // Any answer proves the process works: crashes are counted from here on again.
    if crashes.load(Ordering::Relaxed) != 0 {
        crashes.store(0, Ordering::SeqCst);
    }
    let outcome = match (response.error, response.result) {
        (Some(error), _) => Outcome::Err(item_failure(error)),
        (None, Some(result)) => Outcome::Ok(result.to_owned()),
        (None, None) => Outcome::Err(ItemFailure::permanent(
            "handler response has neither `result` nor `error`",
        )),
    };
    match link.take(id) {
        Some(tx) => {
            // Fails only if the call is gone, in which case nobody wants the answer.
            let _ = tx.send(outcome);
        }
        None => debug!(
            id,
            "answer for an id that is not pending (timed out?); ignored"
        ),
    }
}

fn item_failure(error: &RawValue) -> ItemFailure {
    if let Ok(body) = serde_json::from_str::<ErrorBody>(error.get()) {
        let kind = match body.kind.as_deref() {
            Some("transient") => ErrorKind::Transient,
            Some("permanent") => ErrorKind::Permanent,
            other => {
                // Unknown kinds are not retried: retrying blindly could repeat side effects.
                debug!(kind = ?other, "handler error without a known kind; taken as permanent");
                ErrorKind::Permanent
            }
        };
        let message = body
            .message
            .unwrap_or_else(|| "handler reported an error without a message".to_owned());
        return ItemFailure::new(kind, message);
    }
    // Lenient: `"error": "message"` is a common slip in hand-written handlers.
    match serde_json::from_str::<String>(error.get()) {
        Ok(message) => ItemFailure::permanent(message),
        Err(_) => ItemFailure::permanent(
            "handler reported an error that is neither an object nor a string",
        ),
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
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status),
        _ = &mut reader => Ended::StdoutClosed,
        () = link.kill.notified() => Ended::Kill,
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
    let reason = match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("cannot wait for it: {err}"),
    };
    let stopping = link.stopping.load(Ordering::SeqCst);
    // Counted before the exit is published, so that a caller seeing the exit sees the count.
    let consecutive = if stopping {
        0
    } else {
        crashes.fetch_add(1, Ordering::SeqCst) + 1
    };
    let waiting = link.close(reason.clone());
    if stopping {
        info!(generation, pid, %reason, in_flight = waiting.len(), "handler process stopped");
    } else {
        warn!(
            generation,
            pid,
            %reason,
            in_flight = waiting.len(),
            consecutive_crashes = consecutive,
            "handler process exited unexpectedly"
        );
    }
    let message = format!("handler process exited ({reason})");
    for (_, tx) in waiting {
        let _ = tx.send(Outcome::Err(ItemFailure::infrastructure(message.clone())));
    }
    link.exited.send_replace(true);
}

async fn kill(child: &mut Child) -> std::io::Result<ExitStatus> {
    // Fails only when the process is already gone, which `wait` then reports.
    let _ = child.start_kill();
    child.wait().await
}

/// 100 ms · 2^(n-1), at most 2 s.
fn backoff(crashes: u32) -> Duration {
    let exponent = crashes.saturating_sub(1).min(16);
    BACKOFF_BASE
        .saturating_mul(1u32 << exponent)
        .min(BACKOFF_MAX)
}

/// Finds the program the way the spec promises: `PATH` first, then the working directory.
fn resolve_program(program: &str, workdir: &Path, env: &BTreeMap<String, String>) -> OsString {
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
        .map(OsString::from)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn request_lines_are_single_lines() {
        let item = raw("{\n  \"a\": \"x\\ny\",\r\n  \"b\": 1\n}");
        let line = String::from_utf8(request_line(7, &item)).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
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
    fn responses_are_matched_by_id() {
        let link = Link {
            state: Mutex::new(LinkState::default()),
            kill: Notify::new(),
            stopping: AtomicBool::new(false),
            exited: watch::channel(false).0,
        };
        let crashes = AtomicU32::new(3);
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        assert!(link.insert(1, tx1));
        assert!(link.insert(2, tx2));
        assert!(link.insert(3, tx3));
        handle_line(b"not json\n", &link, &crashes);
        handle_line(b"{\"result\":{}}\n", &link, &crashes);
        assert_eq!(crashes.load(Ordering::SeqCst), 3, "no valid answer yet");
        handle_line(b"{\"id\":2,\"result\":null}\n", &link, &crashes);
        handle_line(
            b"{\"id\":1,\"result\":[{\"x\":1}],\"error\":null}\r\n",
            &link,
            &crashes,
        );
        handle_line(b"{\"id\":3}\n", &link, &crashes);
        handle_line(b"{\"id\":99,\"result\":{}}\n", &link, &crashes);
        assert_eq!(crashes.load(Ordering::SeqCst), 0);
        match rx1.try_recv().unwrap() {
            Outcome::Ok(result) => assert_eq!(result.get(), r#"[{"x":1}]"#),
            other => panic!("unexpected {other:?}"),
        }
        match rx2.try_recv().unwrap() {
            Outcome::Ok(result) => assert_eq!(result.get(), "null"),
            other => panic!("unexpected {other:?}"),
        }
        match rx3.try_recv().unwrap() {
            Outcome::Err(failure) => assert_eq!(failure.kind, ErrorKind::Permanent),
            other => panic!("unexpected {other:?}"),
        }
        let (tx4, _rx4) = oneshot::channel();
        assert_eq!(link.close("exit status: 1".into()).len(), 0);
        assert!(!link.insert(4, tx4), "no registration after the exit");
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
