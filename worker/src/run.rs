//! One worker run: claim the task's attempt, read the batch's byte range, run every item not
//! yet in the checkpoint through the handler (with item retries and `concurrency` in flight),
//! then write `part.parquet`, `errors.parquet` and `_DONE`, and commit the attempt.
//!
//! The commit is a conditional write naming the attempt and task group, so output of an attempt
//! that lost its lease is never promoted. SIGTERM/SIGINT stop new items, let in-flight ones
//! finish briefly, flush the checkpoint and exit, so the next attempt resumes.

use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use orch_core::backend::{Claimed, StateStore, TaskClaim};
use orch_core::csv_input::csv_items;
use orch_core::engine::EngineConfig;
use orch_core::history::AttemptOutcome;
use orch_core::layout;
use orch_core::model::{
    Batch, DoneMarker, ErrorKind, FileSum, JobManifest, SCHEMA_VERSION, TaskError, TaskRecord,
    TaskState, now_ms,
};
use orch_core::owner::this_process;
use orch_core::partition::jsonl_items;
use orch_core::platform::Backends;
use orch_core::spec::{BuiltinName, InputFormat, JobSpec};
use orch_core::uri::Location;
use serde_json::value::RawValue;
use std::panic::AssertUnwindSafe;
use tracing::{debug, info, warn};

use crate::checkpoint::{Checkpoint, Finished, Tally};
use crate::error::{Error, Result};
use crate::handler::{
    ExecConfig, ExecHandler, Handler, HttpConfig, HttpHandler, Identity, ItemFailure, Outcome,
    Sleep, handler_env,
};
use crate::redrive::{self, Carried};
use crate::throttle::{Limiter, LimiterFigures, Throttled};

/// How long a claim is valid without renewal.
const LEASE: Duration = Duration::from_secs(30);
/// Heartbeat: progress into the task row, lease renewal, checkpoint flush.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long in-flight items may finish after a stop signal.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Which task this process runs.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub storage: String,
    pub job: String,
    pub task: u32,
    pub group: u32,
    /// What `job.json` must hash to (`--manifest-sha256`), when the submitter said.
    pub manifest_sha256: Option<String>,
    /// A directory the workers of this machine share, where a `job.json` checked against
    /// `manifest_sha256` is kept, so that only the first task of a job on the machine
    /// downloads it. `None`: always read it from the store (a local store's file).
    pub manifest_cache: Option<PathBuf>,
}

/// Set by the signal handler; checked between items.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs the task against `backends`; returns the committed row.
pub async fn run(backends: &Backends, args: &WorkerArgs, stop: StopFlag) -> Result<TaskRecord> {
    if !layout::valid_job_id(&args.job) {
        return Err(Error::Setup(format!("invalid job id `{}`", args.job)));
    }
    let manifest = orch_runtime::manifest::load(
        backends.objects.as_ref(),
        &args.job,
        args.manifest_sha256.as_deref(),
        args.manifest_cache.as_deref(),
    )
    .await?;
    let worker_id = this_process();
    let mut row = claim(backends.state.as_ref(), args, &worker_id).await?;
    if !row.kind.is_work() {
        return Err(Error::Setup(format!(
            "task {} is a {} task: run it with `orch-worker aggregate`",
            args.task, row.kind
        )));
    }
    let batch = match row.batch.clone() {
        Some(b) => b,
        None => {
            return Err(Error::Setup(format!(
                "task {} has no batch in its row",
                args.task
            )));
        }
    };
    info!(items = batch.items, bytes = batch.bytes(), "claimed");
    let result = work(backends, &manifest, &batch, &mut row, &worker_id, &stop).await;
    match result {
        Ok(row) => Ok(row),
        Err(e) => {
            if !matches!(e, Error::LostLease { .. }) {
                record_failure(backends.state.as_ref(), args, &e).await;
            }
            Err(e)
        }
    }
}

/// Whether the stop is Slurm's checkpoint signal before the time limit: it is due at
/// `ORCH_TASK_SIGNAL_AT` (epoch seconds, exported by the Slurm batch script), and Slurm may
/// send it up to a minute early.
fn near_time_limit() -> bool {
    std::env::var("ORCH_TASK_SIGNAL_AT")
        .ok()
        .and_then(|at| at.parse::<u64>().ok())
        .is_some_and(|at| now_ms() / 1000 + 90 >= at)
}

/// Dispatched → running, only for the attempt of our task group.
pub(crate) async fn claim(
    state: &dyn StateStore,
    args: &WorkerArgs,
    worker: &str,
) -> Result<TaskRecord> {
    let now = now_ms();
    let claim = TaskClaim {
        job: &args.job,
        task: args.task,
        group: args.group,
        worker,
        now,
        lease_expiry: now + LEASE.as_millis() as u64,
    };
    match state.claim_task(&claim).await? {
        Claimed::Yes(stored) => {
            // From here on, the worker's lines and its log's copy name the attempt.
            tracing::Span::current().record("attempt", stored.attempt);
            crate::log_copy::claimed(stored.kind, stored.attempt);
            Ok(stored)
        }
        Claimed::No(None) => Err(Error::Setup(format!("task {} does not exist", args.task))),
        Claimed::No(Some(row)) => Err(Error::LostLease {
            task: args.task,
            why: format!("it is {} in group {:?}", row.state, row.group),
        }),
    }
}

/// Renews the lease and publishes progress; fails if the attempt is no longer ours.
pub(crate) async fn heartbeat(
    state: &dyn StateStore,
    row: &mut TaskRecord,
    tally: &Tally,
) -> Result<()> {
    loop {
        let mut next = row.clone();
        tally.publish_in(&mut next);
        next.lease_expiry = Some(now_ms() + LEASE.as_millis() as u64);
        next.updated_at = now_ms();
        match state.update_task(&next).await {
            Ok(stored) => {
                *row = stored;
                return Ok(());
            }
            Err(e) if e.is_conflict() => {
                let current = state.get_task(&row.job, row.id).await?;
                match current {
                    Some(c)
                        if c.state == TaskState::Running
                            && c.attempt == row.attempt
                            && c.group == row.group =>
                    {
                        // What only this worker writes while it runs stays as it set it.
                        let mut c = c;
                        c.checkpoint_stored |= row.checkpoint_stored;
                        c.files = std::mem::take(&mut row.files);
                        c.output_bytes = row.output_bytes;
                        c.rate_limit_tokens = row.rate_limit_tokens;
                        c.rate_limit_wait_ms = row.rate_limit_wait_ms;
                        *row = c;
                    }
                    other => {
                        return Err(Error::LostLease {
                            task: row.id,
                            why: other
                                .map(|c| format!("it is {} at attempt {}", c.state, c.attempt))
                                .unwrap_or_else(|| "it was deleted".into()),
                        });
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Claims the task only to end the attempt at once with `e`: a worker that finds its node
/// unfit for the task (its scratch disk full) says why in the task row and the attempt
/// history, where `orch status` shows it, rather than in an exit code alone.
pub async fn refuse(state: &dyn StateStore, args: &WorkerArgs, e: &Error) {
    if claim(state, args, &this_process()).await.is_ok() {
        record_failure(state, args, e).await;
    }
}

/// Says why the attempt ends and releases the claim, so the engine retries the task at once
/// instead of waiting for the lease to run out.
pub(crate) async fn record_failure(state: &dyn StateStore, args: &WorkerArgs, e: &Error) {
    // Best effort: the engine falls back to the exit code and the lease when this write fails.
    if let Ok(Some(mut row)) = state.get_task(&args.job, args.task).await
        && row.group == Some(args.group)
        && row.state == TaskState::Running
    {
        row.lease_owner = None;
        row.last_error = Some(TaskError {
            kind: match e.category() {
                orch_core::ErrorCategory::Permanent | orch_core::ErrorCategory::Invalid => {
                    ErrorKind::Permanent
                }
                orch_core::ErrorCategory::Transient => ErrorKind::Transient,
                orch_core::ErrorCategory::Infrastructure => ErrorKind::Infrastructure,
            },
            message: e.to_string(),
            attempt: row.attempt,
            // Slurm's warning before the time limit stopped it: the limit is what ended it.
            limit: matches!(
                e,
                Error::Interrupted {
                    near_time_limit: true,
                    ..
                }
            )
            .then_some(orch_core::model::LimitHit::Time),
        });
        // The history first: once the row is written the driver may complete the record, and
        // it keeps an end the worker wrote.
        let outcome = match e {
            Error::Interrupted { .. } => AttemptOutcome::Interrupted,
            _ => AttemptOutcome::Failed,
        };
        orch_runtime::history::ended_by_worker(state, &row, outcome).await;
        if let Err(err) = state.update_task(&row).await {
            debug!(error = %err, "could not record the failure in the task row");
        }
    }
}

/// The handler of the spec. An exec handler's stderr is the worker's own, which the executor
/// sends to the task log (a file locally, Slurm's per-task output on a cluster).
fn make_handler(spec: &JobSpec) -> Result<Arc<dyn Handler>> {
    let h = &spec.handler;
    if let Some(exec) = &h.exec {
        let cfg = ExecConfig {
            command: exec.command.clone(),
            env: handler_env(&exec.env, |k| std::env::var_os(k))?,
            workdir: PathBuf::from(exec.workdir.as_deref().unwrap_or(".")),
            concurrency: h.concurrency as usize,
            timeout: h.timeout.as_duration().map_err(Error::Setup)?,
            stderr_log: None,
            max_restarts: 5,
            max_answer_bytes: exec
                .max_answer_bytes()
                .ok()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    Error::Setup("spec.handler.exec.maxAnswerBytes is not a valid size".into())
                })?,
        };
        return Ok(Arc::new(ExecHandler::start(cfg)?));
    }
    let Some(builtin) = &h.builtin else {
        return Err(Error::Setup("the job has no handler".into()));
    };
    match builtin.name {
        BuiltinName::Identity => Ok(Arc::new(Identity)),
        BuiltinName::Sleep => Ok(Arc::new(Sleep {
            duration: builtin
                .duration
                .as_ref()
                .map(|d| d.as_duration())
                .transpose()
                .map_err(Error::Setup)?
                .unwrap_or(Duration::from_millis(1)),
        })),
        BuiltinName::Http => {
            let Some(http) = &builtin.http else {
                return Err(Error::Setup(
                    "the http builtin needs spec.handler.builtin.http".into(),
                ));
            };
            Ok(Arc::new(HttpHandler::start(HttpConfig {
                spec: http.clone(),
                concurrency: h.concurrency as usize,
                timeout: h.timeout.as_duration().map_err(Error::Setup)?,
            })?))
        }
    }
}

/// A local path of a Parquet input file: the file itself, or a copy in scratch of the object
/// (the Parquet reader needs random access to the footer and the row groups).
async fn parquet_source(backends: &Backends, uri: &str) -> Result<PathBuf> {
    let Some((store, key)) = backends.locations.open(uri)? else {
        return Location::local_path(uri).map_err(Error::Setup);
    };
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    uri.hash(&mut hasher);
    let path = backends
        .scratch
        .join("input")
        .join(format!("{:016x}.parquet", hasher.finish()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Setup(format!("cannot create {}: {e}", dir.display())))?;
    }
    if !store.get_to_file(&key, &path).await? {
        return Err(Error::Setup(format!("the input {uri} does not exist")));
    }
    Ok(path)
}

/// Reads the batch's byte range of the input: from the file, or a ranged GET of the object.
async fn read_range(backends: &Backends, batch: &Batch) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    if let Some((store, key)) = backends.locations.open(&batch.source)? {
        return Ok(store.get_range(&key, batch.start..batch.end).await?);
    }
    let path = Location::local_path(&batch.source).map_err(Error::Setup)?;
    let io = |e: std::io::Error| Error::Setup(format!("cannot read {}: {e}", path.display()));
    let mut f = std::fs::File::open(&path).map_err(io)?;
    f.seek(SeekFrom::Start(batch.start)).map_err(io)?;
    let mut buf = vec![0u8; batch.bytes() as usize];
    f.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

/// An item waiting for its next try.
struct Delayed {
    at: Instant,
    ordinal: u64,
    attempts: u32,
    item: Box<RawValue>,
    /// It crashed the handler process on its own: its next tries run alone too.
    alone: bool,
}
impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.ordinal == o.ordinal
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    // Reversed: BinaryHeap is a max-heap and the earliest item must come first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at).then(o.ordinal.cmp(&self.ordinal))
    }
}

/// What an attempt has finished so far, and where that goes: the checkpoint (durable) and the
/// task row (progress, lease).
struct Ledger<'a> {
    ckpt: Checkpoint,
    tally: Tally,
    /// What the attempt's rate limits gave, published with the progress.
    throttle: Option<Arc<LimiterFigures>>,
    backends: &'a Backends,
    row: &'a mut TaskRecord,
}

impl Ledger<'_> {
    fn record(&mut self, ordinal: u64, finished: Finished) -> Result<()> {
        self.tally.add(&finished);
        self.ckpt.record(ordinal, finished);
        Ok(())
    }

    /// Flushes the checkpoint, then renews the lease and publishes progress.
    async fn beat(&mut self) -> Result<()> {
        *self.row = self.start_beat()?.await?;
        Ok(())
    }

    /// Flushes the checkpoint and returns the write that renews the lease and publishes
    /// progress, on a copy of the row: it may run beside the items' calls. Its output is the
    /// row as stored, which the caller puts back in place.
    fn start_beat(&mut self) -> Result<BoxFuture<'static, Result<TaskRecord>>> {
        self.ckpt.flush()?;
        if let Some(figures) = &self.throttle {
            figures.publish_in(self.row);
        }
        let (state, mut row, tally) = (
            self.backends.state.clone(),
            self.row.clone(),
            self.tally.clone(),
        );
        Ok(async move {
            heartbeat(state.as_ref(), &mut row, &tally).await?;
            Ok(row)
        }
        .boxed())
    }
}

async fn work(
    backends: &Backends,
    manifest: &JobManifest,
    batch: &Batch,
    row: &mut TaskRecord,
    worker_id: &str,
    stop: &StopFlag,
) -> Result<TaskRecord> {
    let (spec, columns) = (&manifest.spec.spec, manifest.columns.as_deref());
    let rate_limits = &manifest.rate_limits;
    let job = row.job.clone();
    let task = row.id;
    let started = Instant::now();
    // An item-level redrive runs only the items it selects, with a checkpoint of its own.
    let (carried, ckpt_key) = match &row.redrive {
        Some(r) => {
            let carried = Carried::load(backends, &job, task, r).await?;
            info!(
                from_attempt = r.from_attempt,
                items = carried.redo.len(),
                "redriving failed items"
            );
            (
                Some(carried),
                layout::redrive_checkpoint(&job, task, r.from_attempt),
            )
        }
        None => (None, layout::checkpoint(&job, task)),
    };
    // A remote store's checkpoint is fetched to scratch, and sent back whenever the attempt
    // ends without committing, so the next attempt resumes wherever it runs. The task row
    // says whether one was ever sent (the checkpoint is the task's, whichever attempt sent it,
    // so the attempt number cannot tell).
    let (ckpt_path, remote_ckpt) = backends.local_file(&ckpt_key)?;
    if remote_ckpt {
        // No local leftover (nor its log) mixes with what is downloaded; a GET that finds
        // nothing writes nothing.
        Checkpoint::remove_local(&ckpt_path)?;
        if row.checkpoint_stored {
            backends.objects.get_to_file(&ckpt_key, &ckpt_path).await?;
        }
    }
    let mut ckpt = Checkpoint::open(&ckpt_path)?;
    if row.rerun_failed_items {
        let forgotten = ckpt.forget_failures()?;
        if forgotten > 0 {
            info!(
                items = forgotten,
                "running the checkpoint's failed items again (orch retry)"
            );
        }
    }
    let done = ckpt.done();
    if !done.is_empty() {
        info!(resumed = done.len(), "resuming from the checkpoint");
    }
    let mut resumed = ckpt.tally();
    if let Some(c) = &carried {
        resumed.extend(&c.tally());
    }
    let wanted = |o: &u64| !done.contains(o) && carried.as_ref().is_none_or(|c| c.redo.contains(o));
    // Checked before any item runs: a schema the data layer refuses should not cost a batch.
    let declared = spec
        .output
        .schema
        .as_deref()
        .map(orch_data::DeclaredSchema::new)
        .transpose()?;
    // Parquet batches are row ranges read through the Parquet reader; the others are byte
    // ranges of the file.
    let parquet = spec.input.format == Some(InputFormat::Parquet);
    let data = if parquet {
        Vec::new()
    } else {
        read_range(backends, batch).await?
    };
    let mut handler = make_handler(spec)?;
    let mut throttle = None;
    if !rate_limits.is_empty() {
        let limiter = Limiter::start(rate_limits, backends.rate_limits.clone(), &job, worker_id);
        throttle = Some(limiter.figures());
        handler = Arc::new(Throttled {
            inner: handler,
            limiter: Arc::new(limiter),
        });
    }
    let cfg = EngineConfig::from_spec(spec);
    let first = batch.first_item;
    let items: Box<dyn Iterator<Item = (u64, Decoded)> + '_> = match (&spec.input.format, columns) {
        (Some(InputFormat::Parquet), _) => {
            let path = parquet_source(backends, &batch.source).await?;
            let rows = orch_data::read_parquet_rows(&path, batch.start, batch.end)?;
            Box::new(
                rows.into_iter()
                    .enumerate()
                    .map(move |(i, json)| (first + i as u64, json))
                    .filter(|(o, _)| wanted(o))
                    .map(|(o, json)| {
                        let raw = RawValue::from_string(json)
                            .map_err(|e| format!("cannot encode the row: {e}"));
                        (o, raw)
                    }),
            )
        }
        (Some(InputFormat::Csv), Some(columns)) => {
            let csv = spec.input.csv.clone().unwrap_or_default().options();
            Box::new(
                csv_items(&data, columns, &csv)
                    .enumerate()
                    .map(move |(i, record)| (first + i as u64, record))
                    .filter(|(o, _)| wanted(o))
                    .map(|(o, record)| (o, record.and_then(|r| to_raw(&r)))),
            )
        }
        (Some(InputFormat::Csv), None) => {
            return Err(Error::Setup("CSV input but job.json has no columns".into()));
        }
        _ => Box::new(
            jsonl_items(&data)
                .enumerate()
                .map(move |(i, line)| (first + i as u64, line))
                .filter(|(o, _)| wanted(o))
                .map(|(o, line)| (o, parse_item(line))),
        ),
    };
    let mut ledger = Ledger {
        ckpt,
        tally: resumed.clone(),
        throttle,
        backends,
        row,
    };

    // Identity answers synchronously: skip the per-item task machinery.
    let sync = rate_limits.is_empty()
        && matches!(
            spec.handler.builtin.as_ref().map(|b| b.name),
            Some(BuiltinName::Identity)
        );
    let outcome = if sync {
        run_sync(&*handler, items, &mut ledger, stop).await
    } else {
        let concurrency = spec.handler.concurrency as usize;
        run_async(handler.clone(), items, &cfg, concurrency, &mut ledger, stop).await
    };
    handler.shutdown().await;
    let unfinished = outcome.is_err() || stop.is_stopped();
    // What the next attempt resumes from. A task that finished before its first flush needs
    // no file at all: its results go from memory to the result files.
    if unfinished || ledger.ckpt.is_stored() {
        ledger.ckpt.flush()?;
    }
    if remote_ckpt && unfinished {
        ledger.ckpt.seal()?;
        // The row says so before the upload: a flag without a checkpoint costs the next
        // attempt one GET that finds nothing, a checkpoint without the flag would be ignored.
        if !ledger.row.checkpoint_stored {
            ledger.row.checkpoint_stored = true;
            if let Err(e) = heartbeat(backends.state.as_ref(), ledger.row, &ledger.tally).await {
                debug!(error = %e, "could not mark the checkpoint in the task row");
            }
        }
        backends.objects.put_file(&ckpt_key, &ckpt_path).await?;
        info!("checkpoint uploaded");
    }
    outcome?;
    info!(
        ok = ledger.tally.ok,
        failed = ledger.tally.failed_total(),
        ms = started.elapsed().as_millis() as u64,
        "items done"
    );
    if stop.is_stopped() {
        return Err(Error::Interrupted {
            progressed: ledger.tally.total() > resumed.total(),
            near_time_limit: near_time_limit(),
        });
    }
    if let Some(figures) = &ledger.throttle {
        figures.publish_in(ledger.row);
    }
    finish(
        backends,
        batch,
        ledger.row,
        worker_id,
        &mut ledger.ckpt,
        carried.as_ref(),
        declared,
    )
    .await
}

/// An input record as the handler will see it (JSON), or why it cannot be one (a permanent
/// error of that item: invalid JSON, a ragged CSV row). Public (hidden) for the fuzz targets.
#[doc(hidden)]
pub type Decoded = std::result::Result<Box<RawValue>, String>;

/// A CSV record as the item handed to the handler. Public (hidden) for the fuzz targets.
#[doc(hidden)]
pub fn to_raw(record: &serde_json::Map<String, serde_json::Value>) -> Decoded {
    serde_json::value::to_raw_value(record).map_err(|e| format!("cannot encode the record: {e}"))
}

/// A JSONL line as the item handed to the handler. Public (hidden) for the fuzz targets.
#[doc(hidden)]
pub fn parse_item(line: &[u8]) -> Decoded {
    let text = std::str::from_utf8(line).map_err(|e| format!("invalid UTF-8: {e}"))?;
    serde_json::from_str::<Box<RawValue>>(text).map_err(|e| format!("invalid JSON: {e}"))
}

/// A result's JSON text, taken over without a copy (it is kept for every item of the batch).
fn owned_text(result: Box<RawValue>) -> String {
    Box::<str>::from(result).into()
}

fn permanent(message: String) -> Finished {
    Finished::Failed {
        kind: ErrorKind::Permanent.as_str().into(),
        message,
        attempts: 1,
    }
}

/// A tight loop for handlers that answer synchronously (identity): no task per item.
async fn run_sync(
    handler: &dyn Handler,
    items: impl Iterator<Item = (u64, Decoded)>,
    ledger: &mut Ledger<'_>,
    stop: &StopFlag,
) -> Result<()> {
    let mut last_beat = Instant::now();
    for (ordinal, decoded) in items {
        let finished = match decoded {
            Err(message) => permanent(message),
            Ok(item) => match handler.call_sync(&item).map(|answer| answer.outcome) {
                Some(Outcome::Ok(result)) => Finished::Ok(owned_text(result)),
                Some(Outcome::Err(f)) => Finished::Failed {
                    kind: f.kind.as_str().into(),
                    message: f.message,
                    attempts: 1,
                },
                None => permanent("handler gave no answer".into()),
            },
        };
        ledger.record(ordinal, finished)?;
        if last_beat.elapsed() >= HEARTBEAT {
            ledger.beat().await?;
            last_beat = Instant::now();
            if stop.is_stopped() {
                break;
            }
        }
    }
    Ok(())
}

/// Items through an async handler: `concurrency` in flight, item retries on a timer heap so a
/// waiting item never holds a slot.
///
/// A handler process that dies with several items in flight does not say which one killed it.
/// Charging the try to all of them would let one poison item use up the attempts of every item
/// that happened to be in flight beside it, so none is charged: they run again one at a time,
/// nothing else in flight, until each has its own answer. One that crashes the process alone is
/// charged, and its later tries run alone too, so it cannot take others down with it again.
async fn run_async(
    handler: Arc<dyn Handler>,
    mut items: impl Iterator<Item = (u64, Decoded)>,
    cfg: &EngineConfig,
    concurrency: usize,
    ledger: &mut Ledger<'_>,
    stop: &StopFlag,
) -> Result<()> {
    let concurrency = concurrency.max(1);
    // More calls open than the handler works on only when it takes them queued (an exec
    // pipeline); a throttled handler does not forward this, so tokens are never taken ahead.
    let window = || handler.window().unwrap_or(concurrency).max(1);
    // The calls are futures of this loop, not tasks: no spawn, no cross-thread wake-up and no
    // span to enter per item; a panic in a handler is caught and fails the attempt.
    let mut inflight: FuturesUnordered<ItemCall> = FuturesUnordered::new();
    // A heartbeat runs beside the calls, on a copy of the row: an item's call is never held up
    // by a slow write of the task row.
    let mut beating: Option<BoxFuture<'static, Result<TaskRecord>>> = None;
    let mut delayed: BinaryHeap<Delayed> = BinaryHeap::new();
    // Items to run alone: (ordinal, the try to run again or the next one, item).
    let mut alone: std::collections::VecDeque<(u64, u32, Box<RawValue>)> = Default::default();
    // An item runs alone now: nothing else starts until it ends.
    let mut isolating = false;
    let mut exhausted = false;
    // The first beat a period after the claim, not at once: a short task then costs no write
    // between its claim and its commit.
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    let spawn =
        |set: &mut FuturesUnordered<ItemCall>, ordinal: u64, attempts: u32, item: Box<RawValue>| {
            let h = handler.clone();
            set.push(
                AssertUnwindSafe(async move {
                    // The usage of the answer is for a throttling handler that wraps this one.
                    let out = h.call(&item).await.outcome;
                    (ordinal, attempts, item, out)
                })
                .catch_unwind()
                .boxed(),
            );
        };
    let result = loop {
        if stop.is_stopped() && stop_deadline.is_none() {
            info!(
                in_flight = inflight.len(),
                "stopping: letting in-flight items finish"
            );
            stop_deadline = Some(tokio::time::Instant::now() + STOP_GRACE);
        }
        if isolating && inflight.is_empty() {
            isolating = false;
        }
        while stop_deadline.is_none() && inflight.len() < window() && !isolating {
            if !alone.is_empty() {
                // Waits for the items in flight to end, then runs by itself.
                if inflight.is_empty()
                    && let Some((ordinal, attempts, item)) = alone.pop_front()
                {
                    spawn(&mut inflight, ordinal, attempts, item);
                    isolating = true;
                }
                break;
            }
            if delayed.peek().is_some_and(|d| d.at <= Instant::now()) {
                if let Some(d) = delayed.pop() {
                    if d.alone {
                        alone.push_back((d.ordinal, d.attempts + 1, d.item));
                    } else {
                        spawn(&mut inflight, d.ordinal, d.attempts + 1, d.item);
                    }
                }
                continue;
            }
            if exhausted {
                break;
            }
            match items.next() {
                None => exhausted = true,
                Some((ordinal, decoded)) => match decoded {
                    Ok(item) => spawn(&mut inflight, ordinal, 1, item),
                    Err(message) => ledger.record(ordinal, permanent(message))?,
                },
            }
        }
        if inflight.is_empty()
            && (stop_deadline.is_some() || (exhausted && delayed.is_empty() && alone.is_empty()))
        {
            break Ok(());
        }
        let next_delayed = delayed
            .peek()
            .map(|d| tokio::time::Instant::from_std(d.at))
            .filter(|_| {
                stop_deadline.is_none()
                    && inflight.len() < window()
                    && !isolating
                    && alone.is_empty()
            });
        tokio::select! {
            joined = inflight.next(), if !inflight.is_empty() => {
                let Some(joined) = joined else { continue };
                let (ordinal, attempts, item, outcome) = joined.map_err(|panic| {
                    Error::Setup(format!("the handler panicked: {}", panic_message(&*panic)))
                })?;
                match outcome {
                    Outcome::Ok(result) => {
                        ledger.record(ordinal, Finished::Ok(owned_text(result)))?;
                    }
                    Outcome::Err(ItemFailure { kind, message, fatal, retry_after, shared_crash }) => {
                        if fatal {
                            break Err(Error::HandlerGaveUp(message));
                        }
                        if shared_crash && stop_deadline.is_none() {
                            debug!(ordinal, "in flight when the handler process died; it runs again alone");
                            alone.push_back((ordinal, attempts, item));
                            continue;
                        }
                        // A crash with nothing else in flight is this item's own doing.
                        let crashed_alone = kind == ErrorKind::Infrastructure && isolating;
                        let retryable = kind != ErrorKind::Permanent;
                        if retryable && attempts < cfg.max_attempts && stop_deadline.is_none() {
                            // Never sooner than the API asked (Retry-After).
                            let backoff = Duration::from_millis(cfg.backoff_ms(&ledger.row.job, ordinal as u32, attempts));
                            let delay = retry_delay(backoff, retry_after);
                            debug!(ordinal, attempts, delay_ms = delay.as_millis() as u64, kind = kind.as_str(), "item will be retried");
                            delayed.push(Delayed {
                                at: Instant::now() + delay,
                                ordinal,
                                attempts,
                                item,
                                alone: crashed_alone,
                            });
                        } else if retryable && stop_deadline.is_some() {
                            // Not finished: the next attempt does it again.
                        } else {
                            let f = Finished::Failed { kind: kind.as_str().into(), message, attempts };
                            ledger.record(ordinal, f)?;
                        }
                    }
                }
            }
            _ = sleep_until_opt(next_delayed) => {}
            _ = beat.tick(), if beating.is_none() => beating = Some(ledger.start_beat()?),
            stored = finish_opt(&mut beating) => {
                beating = None;
                *ledger.row = stored?;
            }
            _ = sleep_until_opt(stop_deadline) => {
                warn!(abandoned = inflight.len(), "in-flight items did not finish in time; the next attempt redoes them");
                inflight.clear();
                break Ok(());
            }
            _ = wait_for_stop(stop), if stop_deadline.is_none() => {}
        }
    };
    // The row must be the one stored last, for the commit's conditional write.
    if let Some(pending) = beating {
        *ledger.row = pending.await?;
    }
    result
}

/// One item's call as the item loop holds it: the item's ordinal, its try and the item with
/// the outcome, or the panic of the handler.
type ItemCall = BoxFuture<'static, std::thread::Result<(u64, u32, Box<RawValue>, Outcome)>>;

/// What a caught panic says.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// The output of `future` once it is done; never, while there is none.
async fn finish_opt<T>(future: &mut Option<BoxFuture<'static, T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The wait before an item's next try: the backoff, or longer when the API asked for longer.
fn retry_delay(backoff: Duration, retry_after: Option<Duration>) -> Duration {
    retry_after.map_or(backoff, |asked| asked.max(backoff))
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_for_stop(stop: &StopFlag) {
    while !stop.is_stopped() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes the result files and `_DONE`, then commits the attempt.
async fn finish(
    backends: &Backends,
    batch: &Batch,
    row: &mut TaskRecord,
    worker_id: &str,
    ckpt: &mut Checkpoint,
    carried: Option<&Carried>,
    declared: Option<orch_data::DeclaredSchema>,
) -> Result<TaskRecord> {
    let (job, task, attempt) = (row.job.clone(), row.id, row.attempt);
    let started = Instant::now();
    // Results stay the JSON text the handler gave until the writer cuts them into rows.
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut tally = Tally::default();
    for (ordinal, f) in ckpt.take_all() {
        tally.add(&f);
        match f {
            Finished::Ok(json) => results.push((ordinal, json)),
            Finished::Failed {
                kind,
                message,
                attempts,
            } => {
                errors.push(orch_data::ItemError {
                    item: ordinal,
                    kind,
                    message,
                    attempts,
                });
            }
        }
    }
    if let Some(c) = carried {
        tally.extend(&c.tally());
        errors.extend(c.kept.iter().cloned());
        errors.sort_by_key(|e| e.item);
    }
    if tally.total() != batch.items {
        return Err(Error::Setup(format!(
            "the batch has {} items but {} finished",
            batch.items,
            tally.total()
        )));
    }
    let carried_part = carried.map(|c| c.part.clone());
    let part_key = layout::part(&job, task, attempt);
    let errors_key = layout::errors(&job, task, attempt);
    let (part_path, remote) = backends.local_file(&part_key)?;
    let (errors_path, _) = backends.local_file(&errors_key)?;
    let (part_file, errors_file) = (part_path.clone(), errors_path.clone());
    let (part, errs, misfits, dropped) = tokio::task::spawn_blocking(move || {
        // A redrive writes its own results beside the part, then merges both into it.
        let fresh_path = match &carried_part {
            Some(_) => part_path.with_extension("fresh.parquet"),
            None => part_path.clone(),
        };
        let not_json = |ordinal: u64, e: serde_json::Error| {
            Error::Setup(format!(
                "checkpointed result of item {ordinal} is not JSON: {e}"
            ))
        };
        // With a declared schema, items whose results do not fit it become item errors of
        // kind `schema`, so the part file is written first and the errors file after it.
        let (mut part, misfits, dropped) = match &declared {
            None => {
                let mut rows = orch_data::ResultRows::new();
                for (ordinal, json) in &results {
                    rows.push_json(*ordinal, json)
                        .map_err(|e| not_json(*ordinal, e))?;
                }
                (
                    orch_data::write_result_rows(&fresh_path, &rows)?,
                    0,
                    Vec::new(),
                )
            }
            Some(schema) => {
                let mut rows = Vec::new();
                for (ordinal, json) in &results {
                    match serde_json::from_str(json).map_err(|e| not_json(*ordinal, e))? {
                        serde_json::Value::Array(values) => {
                            rows.extend(values.into_iter().map(|value| orch_data::ResultRow {
                                item: *ordinal,
                                value,
                            }))
                        }
                        value => rows.push(orch_data::ResultRow {
                            item: *ordinal,
                            value,
                        }),
                    }
                }
                let w = orch_data::write_results_parquet_declared(&fresh_path, &rows, schema)?;
                let misfits = w.failures.len() as u64;
                errors.extend(w.failures.into_iter().map(|f| f.into_item_error()));
                errors.sort_by_key(|e| e.item);
                (w.file, misfits, w.dropped_fields)
            }
        };
        if let Some(carried_part) = &carried_part {
            let opts = orch_data::MergeOptions {
                schema: declared.clone(),
                ..orch_data::MergeOptions::default()
            };
            part = redrive::merge_part(carried_part, &fresh_path, &part_path, &opts)?;
        }
        // No failed item, no errors file: nothing to upload, nothing for the merge to read.
        let errs = if errors.is_empty() {
            None
        } else {
            Some(orch_data::write_errors_parquet(&errors_path, &errors)?)
        };
        Ok::<_, Error>((part, errs, misfits, dropped))
    })
    .await
    .map_err(|e| Error::Setup(format!("writing results failed: {e}")))??;
    for field in &dropped {
        warn!(field = %field, "result field is not in spec.output.schema; dropped");
    }
    if misfits > 0 {
        warn!(
            items = misfits,
            "results that do not fit spec.output.schema recorded as item errors of kind schema"
        );
        tally.ok = tally.ok.saturating_sub(misfits);
        tally.add_failed(orch_data::SCHEMA_ERROR_KIND, misfits);
    }
    info!(
        rows = part.rows,
        bytes = part.bytes,
        ms = started.elapsed().as_millis() as u64,
        "result files written"
    );
    backends.publish(&part_key, &part_file, remote).await?;
    if errs.is_some() {
        backends.publish(&errors_key, &errors_file, remote).await?;
    }
    let sum = |f: &orch_data::FileInfo| FileSum {
        rows: f.rows,
        bytes: f.bytes,
        sha256: f.sha256.clone(),
    };
    let marker = DoneMarker {
        schema_version: SCHEMA_VERSION,
        job: job.clone(),
        task,
        attempt,
        worker: worker_id.to_string(),
        items: batch.items,
        items_ok: tally.ok,
        items_failed: tally.failed_total(),
        files: std::iter::once((layout::PART_FILE.to_string(), sum(&part)))
            .chain(
                errs.iter()
                    .map(|e| (layout::ERRORS_FILE.to_string(), sum(e))),
            )
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&marker).map_err(|source| orch_core::Error::Decode {
        what: "_DONE".into(),
        source,
    })?;
    backends
        .objects
        .put(&layout::done(&job, task, attempt), bytes)
        .await?;
    row.output_bytes = part.bytes + errs.as_ref().map_or(0, |e| e.bytes);
    row.files = marker.files;
    commit(backends.state.as_ref(), row, &tally).await
}

/// The conditional write that names this attempt: running → succeeded, with the final counts.
/// A conflict (our own heartbeat raced it) is re-read; a lost claim is [`Error::LostLease`].
pub(crate) async fn commit(
    state: &dyn StateStore,
    row: &mut TaskRecord,
    tally: &Tally,
) -> Result<TaskRecord> {
    loop {
        let mut next = row.clone();
        next.transition(TaskState::Succeeded, now_ms())?;
        tally.publish_in(&mut next);
        next.lease_expiry = None;
        match state.update_task(&next).await {
            Ok(stored) => {
                // The committed row is the attempt's history record: nothing more to write.
                info!(ok = tally.ok, failed = tally.failed_total(), "committed");
                return Ok(stored);
            }
            Err(e) if e.is_conflict() => heartbeat(state, row, tally).await?,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The fence: a worker that slept past its lease (SIGSTOP, a long GC, a frozen VM) while
    /// its task went to another attempt can neither renew its claim nor commit when it wakes,
    /// before or after the new attempt commits; only the new attempt's output is the task's.
    #[tokio::test]
    async fn a_zombie_attempt_cannot_renew_or_commit_once_its_task_went_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().display());
        let backends = orch_connect::open_backends(&uri, dir.path().join("scratch"))
            .await
            .unwrap();
        let state = backends.state.as_ref();
        let job = orch_testkit::contract::sample_job("zombie", 1);
        state
            .create_job(&job, &[TaskRecord::new("zombie", 0, 10, 0)])
            .await
            .unwrap();
        // The coordinator dispatches attempt `attempt` in task group `group`.
        let dispatch = |attempt: u32, group: u32| async move {
            let mut t = state.get_task("zombie", 0).await.unwrap().unwrap();
            t.state = TaskState::Dispatched;
            t.attempt = attempt;
            t.group = Some(group);
            t.lease_owner = None;
            t.lease_expiry = None;
            state.update_task(&t).await.unwrap();
        };
        let args = |group: u32| WorkerArgs {
            storage: uri.clone(),
            job: "zombie".into(),
            task: 0,
            group,
            manifest_sha256: None,
            manifest_cache: None,
        };
        dispatch(1, 0).await;
        let mut zombie = claim(state, &args(0), "zombie").await.unwrap();
        heartbeat(state, &mut zombie, &Tally::of(3, 0))
            .await
            .unwrap();
        // Its lease ran out: the task is retried as attempt 2, which another worker claims.
        dispatch(2, 1).await;
        let mut live = claim(state, &args(1), "live").await.unwrap();

        let lost = |r: Result<()>| matches!(r, Err(Error::LostLease { .. }));
        assert!(lost(heartbeat(state, &mut zombie, &Tally::of(5, 0)).await));
        assert!(lost(
            commit(state, &mut zombie, &Tally::of(10, 0))
                .await
                .map(|_| ())
        ));
        let committed = commit(state, &mut live, &Tally::of(9, 1)).await.unwrap();
        assert_eq!(
            (committed.attempt, committed.state),
            (2, TaskState::Succeeded)
        );
        assert!(lost(
            commit(state, &mut zombie, &Tally::of(10, 0))
                .await
                .map(|_| ())
        ));
        // A zombie of the dispatch before its claim cannot claim either.
        assert!(lost(claim(state, &args(0), "zombie").await.map(|_| ())));
        let row = state.get_task("zombie", 0).await.unwrap().unwrap();
        assert_eq!(
            (
                row.attempt,
                row.state,
                row.items_ok,
                row.lease_owner.as_deref()
            ),
            (2, TaskState::Succeeded, 9, Some("live"))
        );
    }

    /// The item loop holds the calls as futures of its own, not tasks: a handler that panics
    /// must still end the attempt with an error saying so, not take the worker down.
    #[tokio::test]
    async fn a_handler_that_panics_fails_the_attempt_with_its_message() {
        struct Panics;
        #[async_trait::async_trait]
        impl Handler for Panics {
            async fn call(&self, item: &RawValue) -> crate::handler::Answer {
                if item.get() == "2" {
                    panic!("boom on item 2");
                }
                Outcome::Ok(item.to_owned()).into()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().display());
        let backends = orch_connect::open_backends(&uri, dir.path().join("scratch"))
            .await
            .unwrap();
        let mut row = TaskRecord::new("panics", 0, 4, 0);
        let mut ledger = Ledger {
            ckpt: Checkpoint::open(&dir.path().join("c.sqlite")).unwrap(),
            tally: Tally::default(),
            throttle: None,
            backends: &backends,
            row: &mut row,
        };
        let items = (0..4u64).map(|o| (o, Ok(RawValue::from_string(o.to_string()).unwrap())));
        let spec = orch_testkit::contract::sample_job("panics", 4).spec.spec;
        let outcome = run_async(
            Arc::new(Panics),
            items,
            &EngineConfig::from_spec(&spec),
            1,
            &mut ledger,
            &StopFlag::default(),
        )
        .await;
        match outcome {
            Err(Error::Setup(message)) => {
                assert_eq!(message, "the handler panicked: boom on item 2")
            }
            other => panic!("expected the panic as an error, got {other:?}"),
        }
        // The items before it were recorded.
        assert_eq!(ledger.tally.ok, 2);
    }

    #[test]
    fn a_retry_waits_the_longer_of_the_backoff_and_what_the_api_asked() {
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(ms(100), None), ms(100));
        assert_eq!(retry_delay(ms(100), Some(ms(2500))), ms(2500));
        assert_eq!(retry_delay(ms(800), Some(ms(50))), ms(800));
        assert_eq!(retry_delay(ms(100), Some(Duration::ZERO)), ms(100));
    }
}
