//! The driver behind `orch run` and the operator: partitions the input, creates the job in the
//! StateStore, then runs the engine's observe → decide → act loop against the job's
//! [`Platform`] and the executor its spec names until the job ends, and finally aggregates the
//! results. Both come in through the core's ports: this module never names a backend.
//!
//! All progress lives in the stores, so running the same job file again after a crash (of the
//! driver, a worker or the machine) resumes the job instead of starting over.

use std::collections::{HashMap, HashSet};
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
use orch_core::partition::{PartitionPlan, PlanBudget};
use orch_core::platform::{Backends, ExecutorFactory, JobLease, Locations, Platform};
use orch_core::{ErrorCategory, layout};
use serde::Serialize;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::aggregate::{self, AggregationProgress};
use crate::control::{self, RetryChoice, RetrySummary};
use crate::error::{Error, Result};
use crate::history;
use crate::input::{self, InputPlan, PlanTarget};
use crate::task_cache::SharedTaskCache;

mod create;
mod tick;

use create::{create, new_job_record};
use tick::Loop;

/// Bounds of the pause between two ticks' starts (see `Loop::drive`).
const MIN_TICK_SPACING: Duration = Duration::from_millis(25);
const MAX_TICK_SPACING: Duration = Duration::from_secs(2);

/// How long the driver keeps trying when the job's stores keep failing with errors that may
/// pass, before it gives up (the job stays resumable).
const STORE_OUTAGE_LIMIT: Duration = Duration::from_secs(300);

/// Waits between restarts of the loop while the stores fail.
const OUTAGE_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_millis(500), Duration::from_secs(15));

/// How long the end of a run waits for its last alerts to be delivered (each delivery has its
/// own timeout, `alerts::DELIVERY_TIMEOUT`).
const ALERT_FLUSH: Duration = Duration::from_secs(15);
/// The same when the run stops on an error (Ctrl-C, a store outage): less.
const ALERT_FLUSH_ON_ERROR: Duration = Duration::from_secs(3);

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
    /// What planning the job may cost (input size, decompressed size, batches); passing it
    /// refuses the job. Resuming a job plans nothing, so the budget does not apply then.
    pub budget: PlanBudget,
    /// `orch retry`: the job must have run and ended; what this choice selects runs again
    /// (see [`control::retry`]) and the job is driven to its new end. Without one, a job that
    /// ended starts over.
    pub retry: Option<RetryChoice>,
    /// Where the job's metrics go (`orch run --metrics-addr`, the operator's `/metrics`).
    pub metrics: Option<crate::metrics::JobMetrics>,
    /// Where the job's figures go as CloudWatch EMF lines (`orch run --metrics-emf`).
    pub emf: Option<crate::metrics::EmfLines>,
    /// Where the job's alerts go besides its own channels (the operator's Kubernetes Events),
    /// and how `secretKeyRef`s are read (docs/observability.md, "Alerts").
    pub alerts: crate::alerts::AlertOptions,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub job: JobRecord,
    pub counts: ItemCounts,
    pub plan: Option<PlanSummary>,
    pub resumed: bool,
    /// What [`RunOptions::retry`] set going (no task: the job was left as it was).
    pub retried: Option<RetrySummary>,
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
    // Who is told about the job is no part of what it computes: editing its alerts resumes it.
    spec.spec.alerts = None;
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

/// Partitions the input within `budget` and reports the plan, writing nothing: `orch run
/// --dry-run`. Remote input is read by range, as for a run.
pub async fn dry_run(
    job: &LoadedJob,
    locations: &dyn Locations,
    budget: &PlanBudget,
) -> Result<RunOutcome> {
    let sources = input::sources(&job.file.spec, locations).await?;
    let fingerprint = input::fingerprint(&sources)?;
    let id = job_id(job, &fingerprint)?;
    let p = input::plan(&job.file.spec, &sources, None, budget)
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
        retried: None,
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
    // Every run (re)configures the buckets, so an edited RateLimit takes effect on resume.
    let rate_limits = crate::rate_limits::bind(job, id, backends.rate_limits.as_ref()).await?;
    let existing = backends.state.get_job(id).await?;
    let mut retried = None;
    let (record, resumed) = match (existing, opts.retry.as_ref()) {
        (Some(mut j), _) if !j.phase.is_terminal() => {
            info!(phase = %j.phase, "resuming the job");
            if j.spec.spec.suspend != job.file.spec.suspend {
                // Paused or resumed since the earlier run: the spec given now wins.
                j.spec.spec.suspend = job.file.spec.suspend;
                j = backends.state.update_job(&j).await?;
            }
            (j, true)
        }
        (Some(j), Some(choice)) => {
            let summary = control::retry(backends, &j, choice).await?;
            retried = Some(summary);
            if summary.tasks == 0 {
                let tasks = backends.state.list_tasks(id).await?;
                return Ok(RunOutcome {
                    counts: engine::item_counts(&tasks),
                    job: j,
                    plan: None,
                    resumed: true,
                    retried,
                });
            }
            let j = backends.state.get_job(id).await?.ok_or_else(|| {
                Error::Invalid(format!("job {id} disappeared from the state store"))
            })?;
            (j, true)
        }
        (None, Some(_)) => {
            return Err(Error::Invalid(format!(
                "job {id} has not run on this storage (or its input changed since): nothing to retry"
            )));
        }
        (other, None) => {
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
            (
                create(
                    job,
                    target,
                    sources,
                    fingerprint,
                    rate_limits.clone(),
                    &opts.budget,
                )
                .await?,
                false,
            )
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
    // The alerts of the file as given now, so that edited ones take effect on resume.
    let alerts = crate::alerts::JobAlerts::start(job, id, &opts.alerts).await;
    let mut loop_state = Loop {
        cfg,
        id: id.to_string(),
        platform,
        queue: queue.as_ref(),
        executor,
        lease,
        paused: false,
        rate_limits,
        manifest_sha256: record.manifest_sha256.clone(),
        alerts: Some(alerts),
        meter: match (&opts.metrics, &opts.emf) {
            (None, None) => None,
            (metrics, emf) => Some(
                metrics
                    .clone()
                    .unwrap_or_else(crate::metrics::JobMetrics::unregistered)
                    .job(id, emf.clone()),
            ),
        },
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
    let alerts = loop_state.alerts.take();
    let final_job = match result {
        Ok(job) => job,
        Err(e) => {
            if let Some(alerts) = alerts {
                alerts.finish(ALERT_FLUSH_ON_ERROR).await;
            }
            return Err(e);
        }
    };
    let tasks = backends.state.list_tasks(id).await?;
    if let Some(mut alerts) = alerts {
        // The job's end (however it ended): its last notices go out before the run returns.
        alerts.observe(now_ms(), &final_job, &tasks);
        alerts.finish(ALERT_FLUSH).await;
    }
    Ok(RunOutcome {
        counts: engine::item_counts(&tasks),
        job: final_job,
        plan: None,
        resumed,
        retried,
    })
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

/// What a job has done, from its rows: items finished (running tasks by their heartbeats) and
/// tasks by phase — what the progress bar, the metrics and the dashboard show.
pub fn progress(job: &JobRecord, tasks: &[TaskRecord]) -> Progress {
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
