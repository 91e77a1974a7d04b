//! The driver behind `orch run` and the operator: partitions the input, creates the job in the
//! StateStore, then runs the engine's observe → decide → act loop against the job's
//! [`Platform`] and the executor its spec names until the job ends, and finally aggregates the
//! results. Both come in through the core's ports: this module never names a backend.
//!
//! All progress lives in the stores, so running the same job file again after a crash (of the
//! driver, a worker or the machine) resumes the job instead of starting over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use orch_core::backend::{ExecState, Executor, Queue, StateStore};
use orch_core::backoff::Backoff;
use orch_core::engine::{self, DueRetry, EngineConfig, ItemCounts, Observation, RetryRequest};
use orch_core::load::LoadedJob;
use orch_core::model::{
    Batch, JobManifest, JobPhase, JobRecord, SCHEMA_VERSION, TaskGroup, TaskRecord, TaskState,
    now_ms,
};
use orch_core::partition::PartitionPlan;
use orch_core::platform::{Backends, ExecutorFactory, JobLease, Locations, Platform};
use orch_core::{ErrorCategory, layout};
use serde::Serialize;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::aggregate::{self, AggregationProgress};
use crate::error::{Error, Result};
use crate::input::{self, InputPlan, PlanTarget};
use crate::task_cache::SharedTaskCache;

/// Bounds of the pause between two ticks' starts (see `Loop::drive`).
const MIN_TICK_SPACING: Duration = Duration::from_millis(25);
const MAX_TICK_SPACING: Duration = Duration::from_secs(2);

/// How long the driver keeps trying when the job's stores keep failing with errors that may
/// pass, before it gives up (the job stays resumable).
const STORE_OUTAGE_LIMIT: Duration = Duration::from_secs(300);

/// Waits between restarts of the loop while the stores fail.
const OUTAGE_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_millis(500), Duration::from_secs(15));

/// How long a retry message stays hidden after the driver received it.
const RETRY_VISIBILITY: Duration = Duration::from_secs(60);

/// A snapshot of progress for the progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub total_items: u64,
    pub done_items: u64,
    pub failed_items: u64,
    pub tasks_total: u32,
    pub tasks_done: u32,
    pub tasks_running: u32,
    pub aggregating: bool,
    /// The merge stage running, once aggregation has started.
    pub aggregation: Option<AggregationProgress>,
}

/// What the caller of [`run`] may tune.
pub struct RunOptions {
    /// Gives the job the executor its spec names.
    pub executors: Arc<dyn ExecutorFactory>,
    /// Pause between engine ticks.
    pub tick: Duration,
    /// Called after every tick.
    pub on_progress: Box<dyn Fn(&Progress) + Send + Sync>,
    /// Stops the run (the job stays resumable) when cancelled. Without one, Ctrl-C does.
    pub stop: Option<CancellationToken>,
    /// The job's id when the caller names jobs itself (the operator: one job per `OrchJob`,
    /// whatever later edits to its spec or input). Without one, the id comes from the spec and
    /// the input's fingerprint, so the same file over the same input resumes the same job.
    pub job_id: Option<String>,
    /// Where the driver keeps the job's task rows between ticks; a caller that also reads them
    /// (the operator's status) passes its own, so one copy serves both. Without one, the
    /// driver keeps a private one.
    pub task_cache: Option<SharedTaskCache>,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub job: JobRecord,
    pub counts: ItemCounts,
    pub plan: Option<PlanSummary>,
    pub resumed: bool,
}

/// The partition plan, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub batches: usize,
    pub items: u64,
    pub bytes: u64,
    pub largest_batch_bytes: u64,
    pub largest_batch_items: u64,
}

impl From<&PartitionPlan> for PlanSummary {
    fn from(p: &PartitionPlan) -> Self {
        let largest = p.largest_batch();
        PlanSummary {
            batches: p.batches.len(),
            items: p.items,
            bytes: p.bytes,
            largest_batch_bytes: largest.map(Batch::bytes).unwrap_or(0),
            largest_batch_items: p.batches.iter().map(|b| b.items).max().unwrap_or(0),
        }
    }
}

/// The job id of a spec: its name plus a short hash of the spec and the input fingerprint, so
/// the same job file over the same input resumes the same job.
pub fn job_id(job: &LoadedJob, fingerprint: &str) -> Result<String> {
    let mut spec = job.file.clone();
    spec.spec.suspend = false;
    let json = serde_json::to_vec(&spec).map_err(|source| orch_core::Error::Decode {
        what: "job spec".into(),
        source,
    })?;
    let mut h = sha2::Sha256::new();
    h.update(&json);
    h.update(fingerprint.as_bytes());
    let hash = hex::encode(&h.finalize()[..4]);
    Ok(format!("{}-{hash}", job.file.metadata.name))
}

/// Partitions the input and reports the plan, writing nothing: `orch run --dry-run`. Remote
/// input is downloaded into `scratch` (and removed) to be partitioned.
pub async fn dry_run(
    job: &LoadedJob,
    locations: &dyn Locations,
    scratch: &std::path::Path,
) -> Result<RunOutcome> {
    let sources = input::sources(&job.file.spec, locations).await?;
    let fingerprint = input::fingerprint(&sources)?;
    let id = job_id(job, &fingerprint)?;
    let p = input::plan(&job.file.spec, &sources, scratch, None)
        .await?
        .batches;
    Ok(RunOutcome {
        job: new_job_record(job, &id, &fingerprint, &p, now_ms()),
        counts: ItemCounts {
            total: p.items,
            ..ItemCounts::default()
        },
        plan: Some(PlanSummary::from(&p)),
        resumed: false,
    })
}

/// Runs (or resumes) a job to its end on `platform`'s stores. A job whose spec says
/// `suspend: true` is planned (or resumed) but dispatches nothing until its stored record says
/// `suspend: false` again (the operator's pause); `orch run` refuses such a spec up front.
pub async fn run(job: &LoadedJob, platform: &dyn Platform, opts: RunOptions) -> Result<RunOutcome> {
    let sources = input::sources(&job.file.spec, platform.backends().locations.as_ref()).await?;
    let fingerprint = input::fingerprint(&sources)?;
    let id = match &opts.job_id {
        Some(id) => id.clone(),
        None => job_id(job, &fingerprint)?,
    };
    let span = info_span!("job", job = %id);
    run_job(job, platform, opts, id, fingerprint, sources)
        .instrument(span)
        .await
}

async fn run_job(
    job: &LoadedJob,
    platform: &dyn Platform,
    opts: RunOptions,
    id: String,
    fingerprint: String,
    sources: Vec<input::Source>,
) -> Result<RunOutcome> {
    // Not `from_port`: a job held by another driver is worth trying again later (the operator's
    // supervisor does), not a refused spec.
    let lease = platform.lock_job(&id).await?;
    let result = drive_locked(job, platform, &opts, &id, &fingerprint, &sources, &*lease).await;
    lease.release().await;
    result
}

async fn drive_locked(
    job: &LoadedJob,
    platform: &dyn Platform,
    opts: &RunOptions,
    id: &str,
    fingerprint: &str,
    sources: &[input::Source],
    lease: &dyn JobLease,
) -> Result<RunOutcome> {
    let backends = platform.backends();
    let existing = backends.state.get_job(id).await?;
    let (record, resumed) = match existing {
        Some(mut j) if !j.phase.is_terminal() => {
            info!(phase = %j.phase, "resuming the job");
            if j.spec.spec.suspend != job.file.spec.suspend {
                // Paused or resumed since the earlier run: the spec given now wins.
                j.spec.spec.suspend = job.file.spec.suspend;
                j = backends.state.update_job(&j).await?;
            }
            (j, true)
        }
        other => {
            if other.is_some() {
                info!("the job ran before; starting it again");
                backends.state.delete_job(id).await?;
                backends
                    .objects
                    .delete_prefix(&layout::job_prefix(id))
                    .await?;
            }
            let target = PlanTarget {
                backends,
                storage_uri: &platform.storage_uri(),
                job: id,
            };
            (create(job, target, sources, fingerprint).await?, false)
        }
    };
    let queue = platform.retry_queue(&record).await?;
    let executor = opts
        .executors
        .executor(&record, platform)
        .await
        .map_err(Error::from_port)?;
    let executor = executor.as_ref();
    let cfg = EngineConfig::from_spec(&record.spec.spec);
    let mut loop_state = Loop {
        cfg,
        id: id.to_string(),
        platform,
        queue: queue.as_ref(),
        executor,
        lease,
        paused: false,
    };
    let stopped = async {
        match &opts.stop {
            Some(token) => token.cancelled().await,
            None => {
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
        }
    };
    let result = tokio::select! {
        r = loop_state.drive_through_outages(opts) => r,
        _ = stopped => Err(Error::Interrupted),
    };
    if result.is_err() {
        // On Ctrl-C local workers got the same SIGINT and checkpoint; on any other error of the
        // driver they are left to finish their attempt. Start no new ones and give the running
        // ones a moment. (Slurm arrays go on on the cluster; the next `orch run` finds them.)
        executor.shutdown(Duration::from_secs(10)).await;
    }
    let final_job = result?;
    let tasks = backends.state.list_tasks(id).await?;
    Ok(RunOutcome {
        counts: engine::item_counts(&tasks),
        job: final_job,
        plan: None,
        resumed,
    })
}

fn new_job_record(
    job: &LoadedJob,
    id: &str,
    fingerprint: &str,
    plan: &PartitionPlan,
    now: u64,
) -> JobRecord {
    JobRecord {
        schema_version: SCHEMA_VERSION,
        id: id.to_string(),
        phase: JobPhase::Running,
        spec: job.file.clone(),
        input_fingerprint: fingerprint.to_string(),
        total_tasks: plan.batches.len() as u32,
        total_items: plan.items,
        created_at: now,
        updated_at: now,
        finished_at: None,
        message: None,
        cancel_requested: false,
        next_group: 0,
        version: 0,
    }
}

async fn create(
    job: &LoadedJob,
    target: PlanTarget<'_>,
    sources: &[input::Source],
    fingerprint: &str,
) -> Result<JobRecord> {
    let started = std::time::Instant::now();
    let (backends, id) = (target.backends, target.job);
    // Compressed input is decompressed into the job's storage, where workers read ranges.
    let InputPlan {
        batches: p,
        columns,
    } = input::plan(&job.file.spec, sources, &backends.scratch, Some(target)).await?;
    info!(
        batches = p.batches.len(),
        items = p.items,
        bytes = p.bytes,
        ms = started.elapsed().as_millis() as u64,
        "partitioned the input"
    );
    let now = now_ms();
    let record = new_job_record(job, id, fingerprint, &p, now);
    let mut manifest = Vec::with_capacity(p.batches.len() * 96);
    for b in &p.batches {
        serde_json::to_writer(&mut manifest, b).map_err(|source| orch_core::Error::Decode {
            what: "batch manifest".into(),
            source,
        })?;
        manifest.push(b'\n');
    }
    backends.objects.put(&layout::batches(id), manifest).await?;
    let snapshot = JobManifest {
        schema_version: SCHEMA_VERSION,
        id: id.to_string(),
        spec: job.file.clone(),
        input_fingerprint: fingerprint.to_string(),
        total_items: p.items,
        total_tasks: p.batches.len() as u32,
        columns,
    };
    let bytes =
        serde_json::to_vec_pretty(&snapshot).map_err(|source| orch_core::Error::Decode {
            what: "job manifest".into(),
            source,
        })?;
    backends
        .objects
        .put(&layout::job_manifest(id), bytes)
        .await?;
    let tasks: Vec<TaskRecord> = p
        .batches
        .iter()
        .map(|b| TaskRecord {
            batch: Some(b.clone()),
            ..TaskRecord::new(id, b.id, b.items, now)
        })
        .collect();
    backends.state.create_job(&record, &tasks).await?;
    Ok(backends.state.get_job(id).await?.unwrap_or(record))
}

struct Loop<'a> {
    cfg: EngineConfig,
    id: String,
    platform: &'a dyn Platform,
    queue: &'a dyn Queue,
    executor: &'a dyn Executor,
    lease: &'a dyn JobLease,
    /// Whether the executor was told to pause (the job's `spec.suspend`).
    paused: bool,
}

impl Loop<'_> {
    /// [`Loop::drive`], started again after a store error that may pass (a network outage, a
    /// throttled service): everything the loop knows is in the stores, so a new start picks up
    /// where the failed one stopped. Gives up when the stores stay unreachable for
    /// [`STORE_OUTAGE_LIMIT`].
    async fn drive_through_outages(&mut self, opts: &RunOptions) -> Result<JobRecord> {
        let mut outage_since: Option<std::time::Instant> = None;
        let mut failures = 0;
        loop {
            let started = std::time::Instant::now();
            let error = match self.drive(opts).await {
                Err(Error::Backend(e))
                    if matches!(
                        e.category(),
                        ErrorCategory::Transient | ErrorCategory::Infrastructure
                    ) =>
                {
                    e
                }
                other => return other,
            };
            // A start that ran a while before failing ends the previous outage.
            if started.elapsed() > STORE_OUTAGE_LIMIT / 4 {
                outage_since = None;
                failures = 0;
            }
            let since = *outage_since.get_or_insert(started);
            if since.elapsed() > STORE_OUTAGE_LIMIT {
                return Err(Error::Backend(error));
            }
            failures += 1;
            let pause = OUTAGE_BACKOFF.delay(failures);
            warn!(error = %error, retry_in_ms = pause.as_millis() as u64, "the job's stores failed; trying again");
            tokio::time::sleep(pause).await;
        }
    }

    async fn drive(&mut self, opts: &RunOptions) -> Result<JobRecord> {
        let state = &self.platform.backends().state;
        let cache = opts.task_cache.clone().unwrap_or_default();
        cache.lock().await.refresh(state.as_ref(), &self.id).await?;
        loop {
            let tick_started = std::time::Instant::now();
            if self.lease.lost() {
                return Err(Error::Invalid(format!(
                    "another `orch run` took job {} over (this run's lease expired); stopping",
                    self.id
                )));
            }
            // Executor first, rows second: a worker commits before it exits (engine docs). The
            // attempts to ask about come from the previous read; a task dispatched since then
            // is simply asked about on the next tick.
            let active: Vec<(u32, u32, Option<String>)> = cache
                .lock()
                .await
                .rows()
                .iter()
                .filter(|t| matches!(t.state, TaskState::Dispatched | TaskState::Running))
                .map(|t| (t.id, t.attempt, t.executor_id.clone()))
                .collect();
            let mut polled: HashMap<u32, ExecState> = self
                .executor
                .poll(&active)
                .await?
                .into_iter()
                .map(|s| (s.task, s.state))
                .collect();
            let job = state.get_job(&self.id).await?.ok_or_else(|| {
                Error::Invalid(format!("job {} disappeared from the state store", self.id))
            })?;
            if job.phase.is_terminal() {
                return Ok(job);
            }
            if job.spec.spec.suspend != self.paused {
                if job.spec.spec.suspend {
                    info!("the job was paused: holding tasks that have not started");
                    self.executor.pause().await?;
                } else {
                    info!("the job was resumed");
                    self.executor.resume().await?;
                }
                self.paused = job.spec.spec.suspend;
            }
            let now = now_ms();
            let retry_due = cache
                .lock()
                .await
                .refresh(state.as_ref(), &self.id)
                .await?
                .iter()
                .any(|t| t.state == TaskState::Retrying && t.retry_at.is_none_or(|at| at <= now));
            // The queue is asked only when a retry is due: most ticks of a healthy job then cost
            // no queue call at all (on SQS, each one is a request and a long-poll wait). The
            // rows are not locked meanwhile: the operator's status reads them too.
            let due = if retry_due {
                self.due_retries().await?
            } else {
                Vec::new()
            };
            let rows = cache.lock().await;
            let tasks = rows.rows();
            // A polled attempt that has moved on (retried meanwhile) says nothing about the
            // current one.
            let current = |id: &u32| {
                tasks
                    .binary_search_by_key(id, |t| t.id)
                    .ok()
                    .map(|i| tasks[i].attempt)
            };
            let exec: HashMap<u32, ExecState> = active
                .iter()
                .filter(|(id, attempt, _)| current(id) == Some(*attempt))
                .filter_map(|(id, _, _)| Some((*id, polled.remove(id)?)))
                .collect();
            let decision = engine::decide(
                &self.cfg,
                Observation {
                    now,
                    job: &job,
                    tasks,
                    exec: &exec,
                    due_retries: &due,
                },
            );
            let shown = progress(&job, tasks);
            drop(rows);
            (opts.on_progress)(&shown);
            if decision.plan_aggregation || decision.finish {
                let job = match decision.job.clone() {
                    Some(j) => match state.update_job(&j).await {
                        Ok(stored) => stored,
                        // Someone changed the job meanwhile (e.g. a cancel): decide again.
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(e.into()),
                    },
                    None => job,
                };
                let tasks = state.list_tasks(&self.id).await?;
                let backends = self.platform.backends();
                let ended = if decision.plan_aggregation {
                    match aggregate::plan(backends, &job, &tasks).await {
                        Ok(merges) => {
                            state.add_tasks(&self.id, &merges).await?;
                            continue;
                        }
                        Err(e) => e,
                    }
                } else {
                    match aggregate::finish(backends, &job, &tasks).await {
                        Ok(()) => {
                            let done = engine::verdict(&self.cfg, &job, &tasks, now_ms());
                            return self.end(done).await;
                        }
                        Err(e) => e,
                    }
                };
                // Trouble that may pass leaves the job resumable; anything else (a result
                // that fails its checksum, an unusable output location) ends it.
                if matches!(
                    ended.category(),
                    ErrorCategory::Infrastructure | ErrorCategory::Transient
                ) {
                    return Err(ended);
                }
                let mut failed = engine::verdict(&self.cfg, &job, &tasks, now_ms());
                failed.phase = JobPhase::Failed;
                failed.message = Some(format!("aggregation failed: {ended}"));
                return self.end(failed).await;
            }
            let idle = decision.is_empty();
            self.apply(decision).await?;
            if idle {
                // Wake early when a worker ends; otherwise look again after one tick.
                let work = tick_started.elapsed();
                self.executor.wait_change(opts.tick).await;
                // A tick still looks at every task (in memory), so with thousands of short
                // tasks ending one by one the coordinator would spend a core on ticks. Spacing
                // ticks by fifty times their own cost keeps it near 2 % of a core at any job
                // size; every pending task is already dispatched, so a later look only
                // delays the progress shown, and small jobs still tick every 25 ms.
                let floor = (work * 50).clamp(MIN_TICK_SPACING, MAX_TICK_SPACING);
                if let Some(rest) = floor.checked_sub(tick_started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        }
    }

    /// Writes the job's end and says so.
    async fn end(&self, done: JobRecord) -> Result<JobRecord> {
        let done = finish_job(self.platform.backends().state.as_ref(), done).await?;
        info!(
            phase = %done.phase,
            message = done.message.as_deref().unwrap_or(""),
            coordinator_cpu_ms = own_cpu_ms(),
            "job finished"
        );
        Ok(done)
    }

    async fn due_retries(&self) -> Result<Vec<DueRetry>> {
        let mut due = Vec::new();
        for m in self.queue.receive(100, RETRY_VISIBILITY).await? {
            match serde_json::from_str::<RetryRequest>(&m.body) {
                // A queue shared by several jobs (SQS): another driver's message goes back at
                // once instead of being deleted.
                Ok(request) if request.job != self.id => {
                    self.queue.extend(&m.receipt, Duration::ZERO).await?;
                }
                Ok(request) => due.push(DueRetry {
                    request,
                    receipt: m.receipt,
                }),
                Err(e) => {
                    warn!(error = %e, "dropping an unreadable retry message");
                    self.queue.delete(&m.receipt).await?;
                }
            }
        }
        Ok(due)
    }

    async fn apply(&mut self, d: engine::Decision) -> Result<()> {
        let state = &self.platform.backends().state;
        if let Some(job) = &d.job {
            match state.update_job(job).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        for dispatch in d.dispatches {
            let mut group = TaskGroup {
                job: self.id.clone(),
                id: dispatch.group,
                tasks: Vec::new(),
                kind: dispatch.kind,
            };
            // Ids known beforehand go into the dispatch write itself (see
            // `Executor::planned_ids`): a task is never seen dispatched without its id, and a
            // restarted driver finds what was submitted.
            let planned: HashMap<u32, String> = self
                .executor
                .planned_ids(&TaskGroup {
                    tasks: dispatch.tasks.iter().map(|t| (t.id, t.attempt)).collect(),
                    ..group.clone()
                })
                .map(|ids| ids.into_iter().collect())
                .unwrap_or_default();
            let mut written = Vec::new();
            for mut t in dispatch.tasks {
                t.executor_id = planned.get(&t.id).cloned();
                match state.update_task(&t).await {
                    Ok(stored) => {
                        group.tasks.push((stored.id, stored.attempt));
                        written.push(stored);
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if group.tasks.is_empty() {
                continue;
            }
            match self.executor.planned_ids(&group) {
                // A row lost to a concurrent write changes the group, and with it the ids
                // (a Slurm array's key covers its tasks): record those of the group submitted.
                Some(ids) if written.len() < planned.len() => {
                    record_executor_ids(state.as_ref(), written, ids).await?;
                    self.executor.submit(&group).await?;
                }
                Some(_) => {
                    self.executor.submit(&group).await?;
                }
                None => {
                    let ids = self.executor.submit(&group).await?;
                    record_executor_ids(state.as_ref(), written, ids).await?;
                }
            }
        }
        for f in d.failures {
            match state.update_task(&f.task).await {
                Ok(stored) => {
                    if let Some(err) = &stored.last_error {
                        // A retry is routine (info); a task out of attempts is not (warn).
                        if stored.state == TaskState::Failed {
                            warn!(task = stored.id, attempt = err.attempt, kind = err.kind.as_str(), error = %err.message, "task failed after all its attempts");
                        } else {
                            info!(task = stored.id, attempt = err.attempt, kind = err.kind.as_str(), error = %err.message, "task attempt lost; retrying");
                        }
                    }
                    if let Some((req, delay)) = f.retry {
                        let body = serde_json::to_string(&req).map_err(|source| {
                            orch_core::Error::Decode {
                                what: "retry request".into(),
                                source,
                            }
                        })?;
                        self.queue.send(&body, Duration::from_millis(delay)).await?;
                    }
                }
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        for u in d.updates {
            if let Err(e) = state.update_task(&u).await
                && !e.is_conflict()
            {
                return Err(e.into());
            }
        }
        if !d.cancel.is_empty() {
            self.executor.cancel(&d.cancel).await?;
        }
        for receipt in d.acks {
            self.queue.delete(&receipt).await?;
        }
        Ok(())
    }
}

/// Stores each task's executor id in its row. A worker may already have claimed the row; then
/// it keeps its state (the conflict is not an error).
async fn record_executor_ids(
    state: &dyn StateStore,
    written: Vec<TaskRecord>,
    ids: Vec<(u32, String)>,
) -> Result<()> {
    let mut ids: HashMap<u32, String> = ids.into_iter().collect();
    for mut t in written {
        if let Some(eid) = ids.remove(&t.id) {
            t.executor_id = Some(eid);
            if let Err(e) = state.update_task(&t).await
                && !e.is_conflict()
            {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// CPU time this process has used (user + system), from `/proc/self/stat`; 0 where that is
/// not available. Logged at the end of a job: the coordinator's own cost, without its workers.
fn own_cpu_ms() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may contain spaces, so split after its ')').
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3. Linux reports
    // them in clock ticks of USER_HZ, which is 100 on every mainstream configuration.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks * 10
}

/// Writes the job's end, re-reading it when a concurrent change (a cancel request) won the
/// race; a job cancelled meanwhile stays cancelled.
async fn finish_job(state: &dyn StateStore, mut done: JobRecord) -> Result<JobRecord> {
    loop {
        match state.update_job(&done).await {
            Ok(stored) => return Ok(stored),
            Err(e) if e.is_conflict() => {
                let Some(current) = state.get_job(&done.id).await? else {
                    return Err(Error::Invalid(format!("job {} disappeared", done.id)));
                };
                if current.phase.is_terminal() {
                    return Ok(current);
                }
                done = JobRecord {
                    phase: done.phase,
                    message: done.message,
                    finished_at: done.finished_at,
                    updated_at: done.updated_at,
                    ..current
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn progress(job: &JobRecord, tasks: &[TaskRecord]) -> Progress {
    // Finished tasks count as the verdict counts them; running ones by their heartbeats.
    let finished = engine::item_counts(tasks);
    let work: Vec<&TaskRecord> = tasks.iter().filter(|t| t.kind.is_work()).collect();
    let running: Vec<&&TaskRecord> = work
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .collect();
    let running_failed: u64 = running.iter().map(|t| t.items_failed).sum();
    Progress {
        total_items: job.total_items,
        done_items: finished.ok
            + finished.failed
            + running.iter().map(|t| t.items_ok).sum::<u64>()
            + running_failed,
        failed_items: finished.failed + running_failed,
        tasks_total: work.len() as u32,
        tasks_done: work.iter().filter(|t| t.state.is_terminal()).count() as u32,
        tasks_running: running.len() as u32,
        aggregating: job.phase == JobPhase::Aggregating,
        aggregation: aggregate::progress(tasks),
    }
}

/// Reads a job's state for `orch status`.
pub async fn load_status(
    backends: &Backends,
    id: &str,
) -> Result<Option<(JobRecord, Vec<TaskRecord>)>> {
    let Some(job) = backends.state.get_job(id).await? else {
        return Ok(None);
    };
    let tasks = backends.state.list_tasks(id).await?;
    Ok(Some((job, tasks)))
}
