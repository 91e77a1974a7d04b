//! The JSON API the page polls: what it reads from the stores for each view, and the actions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use orch_core::history::AttemptRecord;
use orch_core::layout;
use orch_core::model::{JobRecord, TaskRecord, TaskState, now_ms};
use orch_core::platform::Backends;
use orch_runtime::control::{self, RetryChoice};
use orch_runtime::logs::{AttemptLog, select_lines};
use orch_runtime::task_cache::TaskCache;
use orch_runtime::{driver, history};
use serde::{Deserialize, Serialize};

use crate::view::{self, JobSummary, RateLimitUse, Sample, Timeline};
use crate::{Dashboard, DashboardError, Source};

type Result<T> = std::result::Result<T, DashboardError>;

/// What the server remembers of a job it was asked about.
pub(crate) struct Watched {
    pub(crate) seen: Instant,
    rows: TaskCache,
    timeline: Timeline,
    /// The attempt history as last read, and when.
    history: Option<(Instant, Vec<AttemptRecord>)>,
    /// The summary of a job that had ended when it was made, with the record's version: it
    /// changes only when the record does (a retry).
    ended: Option<(u64, JobSummary)>,
}

/// How often the attempt history of a running job is read again for the curve (the server's
/// own observations fill in between).
const HISTORY_EVERY: Duration = Duration::from_secs(60);
/// Points of the throughput curve sent to the page.
const CURVE_POINTS: usize = 300;
/// Sample failed items per request.
const MAX_SAMPLES: usize = 200;
/// Tasks listed with their error on a job's page.
const FAILED_TASKS_SHOWN: usize = 50;
/// Lines of a log sent when the page does not say.
const DEFAULT_LOG_TAIL: usize = 500;

impl Watched {
    pub(crate) fn new(now: Instant) -> Self {
        Watched {
            seen: now,
            rows: TaskCache::default(),
            timeline: Timeline::default(),
            history: None,
            ended: None,
        }
    }

    /// Reads what changed in the job's rows and returns its summary. The rows of a job that
    /// ended are kept only for its page (`keep_rows`): a jobs list of many ended jobs would
    /// otherwise hold every row of every job.
    async fn look(
        &mut self,
        source: &Source,
        job: &JobRecord,
        keep_rows: bool,
    ) -> Result<JobSummary> {
        self.seen = Instant::now();
        // An ended job's rows change only with its record (a retry): the summary made at its
        // end stands, and so do its rows once read.
        if let Some((version, summary)) = &self.ended
            && *version == job.version
            && (!keep_rows || !self.rows.rows().is_empty())
        {
            return Ok(summary.clone());
        }
        let tasks = self
            .rows
            .refresh(source.backends.state.as_ref(), &job.id)
            .await?;
        let progress = driver::progress(job, tasks);
        let (_, wait_ms) = view::rate_limit_totals(tasks);
        self.timeline.observe(Sample {
            at: now_ms(),
            items_done: progress.done_items,
            tasks_running: progress.tasks_running,
            wait_ms,
        });
        let rate = if job.phase.is_terminal() {
            view::whole_run_rate(job, progress.done_items)
        } else {
            self.timeline.items_per_second()
        };
        let mut summary = JobSummary::new(job, &progress, rate);
        summary.namespace = source.label.clone();
        if job.phase.is_terminal() {
            self.ended = Some((job.version, summary.clone()));
            if !keep_rows {
                self.rows = TaskCache::default();
            }
        }
        Ok(summary)
    }

    /// Reads the attempt history when it is missing or stale (see [`HISTORY_EVERY`]).
    async fn read_history(&mut self, source: &Source, job: &JobRecord) {
        let stale = match &self.history {
            None => true,
            Some((at, _)) => !job.phase.is_terminal() && at.elapsed() > HISTORY_EVERY,
        };
        if stale {
            // Best effort: a curve from the server's own observations beats no page. The rows
            // are the records of their running and committed attempts.
            let state = source.backends.state.as_ref();
            let records = match history::attempts(state, &job.id, None, self.rows.rows()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot read the attempt history");
                    Vec::new()
                }
            };
            self.history = Some((Instant::now(), records));
        }
    }
}

/// The job `id` and the storage it is in.
async fn stored_job(d: &Dashboard, id: &str) -> Result<(Arc<Source>, JobRecord)> {
    if !layout::valid_job_id(id) {
        return Err(DashboardError::NoJob(id.to_string()));
    }
    let mut trouble = None;
    for source in d.sources.current().await {
        match source.backends.state.get_job(id).await {
            Ok(Some(job)) => return Ok((source, job)),
            Ok(None) => {}
            Err(e) => trouble = Some(e),
        }
    }
    // Not found anywhere: a storage that could not be read may have it.
    Err(trouble.map_or_else(|| DashboardError::NoJob(id.to_string()), Into::into))
}

/// The key of a job in the server's memory: storages of different namespaces may hold the
/// same id.
fn watch_key(source: &Source, id: &str) -> String {
    format!("{}/{id}", source.label.as_deref().unwrap_or_default())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobsPage {
    jobs: Vec<JobSummary>,
    actions: bool,
}

pub(crate) async fn jobs(State(d): State<Arc<Dashboard>>) -> Result<Json<JobsPage>> {
    let sources = d.sources.current().await;
    let mut jobs = Vec::new();
    for source in &sources {
        let records = match source.backends.state.list_jobs().await {
            Ok(records) => records,
            // One storage that cannot be read does not hide the others' jobs.
            Err(e) if sources.len() > 1 => {
                tracing::warn!(source = ?source.label, error = %e, "cannot list the jobs");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for job in &records {
            let watched = d.watched(&watch_key(source, &job.id));
            let mut w = watched.lock().await;
            jobs.push(w.look(source, job, false).await?);
        }
    }
    jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    Ok(Json(JobsPage {
        jobs,
        actions: d.actions,
    }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobPage {
    job: JobSummary,
    actions: bool,
    handler: String,
    executor: String,
    output: Option<String>,
    tasks_by_state: BTreeMap<&'static str, u32>,
    /// One letter per work task (see [`view::task_grid`]).
    grid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregation: Option<Aggregation>,
    /// `[time, items done]`.
    curve: Vec<(u64, u64)>,
    errors_by_kind: BTreeMap<String, u64>,
    failed_tasks: Vec<FailedTask>,
    rate_limit: RateLimitUse,
    buckets: Vec<BucketView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Aggregation {
    stage: String,
    groups_done: u32,
    groups_total: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedTask {
    task: u32,
    state: &'static str,
    attempt: u32,
    kind: &'static str,
    error: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BucketView {
    key: String,
    rate: f64,
    current_rate: f64,
    burst: u32,
    holders: usize,
    used: u64,
    /// The API pushed back (or holders waited) within the last minute.
    throttled_recently: bool,
    paused_until: Option<u64>,
}

pub(crate) async fn job(
    State(d): State<Arc<Dashboard>>,
    Path(id): Path<String>,
) -> Result<Json<JobPage>> {
    let (source, job) = stored_job(&d, &id).await?;
    let buckets = buckets(&source, &job).await;
    let watched = d.watched(&watch_key(&source, &id));
    let mut w = watched.lock().await;
    let summary = w.look(&source, &job, true).await?;
    w.read_history(&source, &job).await;
    let tasks = w.rows.rows();
    let progress = driver::progress(&job, tasks);
    let (tokens, wait_ms) = view::rate_limit_totals(tasks);
    let history = w.history.as_ref().map_or(&[][..], |(_, h)| h.as_slice());
    let curve = view::done_curve(&job, history, &w.timeline, CURVE_POINTS);
    let spec = &job.spec.spec;
    Ok(Json(JobPage {
        actions: d.actions,
        handler: handler_summary(spec),
        executor: executor_summary(&spec.executor).to_string(),
        output: spec.output.uri.clone(),
        tasks_by_state: view::tasks_by_state(tasks),
        grid: view::task_grid(tasks),
        aggregation: progress
            .aggregation
            .filter(|_| !job.phase.is_terminal())
            .map(|a| Aggregation {
                stage: a.stage.to_string(),
                groups_done: a.groups_done,
                groups_total: a.groups_total,
            }),
        curve,
        errors_by_kind: view::errors_by_kind(tasks),
        failed_tasks: failed_tasks(tasks),
        rate_limit: RateLimitUse {
            tokens,
            wait_ms,
            waiting_share: w.timeline.waiting_share(),
        },
        buckets,
        job: summary,
    }))
}

fn handler_summary(spec: &orch_core::spec::JobSpec) -> String {
    let h = &spec.handler;
    if let Some(exec) = &h.exec {
        return exec.command.join(" ");
    }
    if let Some(builtin) = &h.builtin {
        // The builtin's name as the job file spells it.
        let name = serde_json::to_value(builtin.name).unwrap_or_default();
        return format!("builtin {}", name.as_str().unwrap_or_default());
    }
    String::new()
}

fn executor_summary(executor: &orch_core::spec::ExecutorSpec) -> &'static str {
    if executor.slurm.is_some() {
        "slurm"
    } else if executor.kubernetes.is_some() {
        "kubernetes"
    } else {
        "local"
    }
}

fn failed_tasks(tasks: &[TaskRecord]) -> Vec<FailedTask> {
    tasks
        .iter()
        .filter(|t| t.state != TaskState::Succeeded)
        .filter_map(|t| {
            let e = t.last_error.as_ref()?;
            Some(FailedTask {
                task: t.id,
                state: t.state.as_str(),
                attempt: t.attempt,
                kind: e.kind.as_str(),
                error: e.message.clone(),
            })
        })
        .take(FAILED_TASKS_SHOWN)
        .collect()
}

/// The buckets of the job's `spec.rateLimit`, as stored now.
async fn buckets(source: &Source, job: &JobRecord) -> Vec<BucketView> {
    let keys = orch_runtime::rate_limits::possible_keys(&job.spec, &job.id);
    if keys.is_empty() {
        return Vec::new();
    }
    let all = match source.backends.rate_limits.list_buckets().await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "cannot read the rate-limit buckets");
            return Vec::new();
        }
    };
    let now = now_ms();
    all.into_iter()
        .filter(|b| keys.contains(&b.key))
        .map(|b| BucketView {
            rate: b.rate,
            current_rate: b.current_rate(now),
            burst: b.burst,
            holders: b.live(now).count(),
            used: b.used,
            throttled_recently: b.throttled_at + 60_000 > now,
            paused_until: (b.paused_until > now).then_some(b.paused_until),
            key: b.key,
        })
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct ErrorsQuery {
    kind: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorSamples {
    samples: Vec<ErrorSample>,
    /// More failed items of that kind exist than were sent.
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorSample {
    task: u32,
    attempt: u32,
    item: u64,
    kind: String,
    message: String,
    attempts: u32,
}

/// Sample failed items, from the `errors.parquet` of the committed attempts that recorded
/// some (of the kind asked for): read only until there are enough.
pub(crate) async fn errors(
    State(d): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    Query(q): Query<ErrorsQuery>,
) -> Result<Json<ErrorSamples>> {
    let (source, job) = stored_job(&d, &id).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_SAMPLES);
    let tasks = source.backends.state.list_tasks(&job.id).await?;
    let mut samples = Vec::new();
    let mut truncated = false;
    let wanted = |t: &&TaskRecord| {
        t.kind.is_work()
            && t.state == TaskState::Succeeded
            && match &q.kind {
                Some(kind) => t.items_failed_by_kind.get(kind).is_some_and(|n| *n > 0),
                None => t.items_failed > 0,
            }
    };
    for t in tasks.iter().filter(wanted) {
        if samples.len() >= limit {
            truncated = true;
            break;
        }
        let key = layout::errors(&job.id, t.id, t.attempt);
        for e in read_errors(&source.backends, &key).await? {
            if q.kind.as_ref().is_some_and(|k| *k != e.kind) {
                continue;
            }
            if samples.len() >= limit {
                truncated = true;
                break;
            }
            samples.push(ErrorSample {
                task: t.id,
                attempt: t.attempt,
                item: e.item,
                kind: e.kind,
                message: e.message,
                attempts: e.attempts,
            });
        }
    }
    Ok(Json(ErrorSamples { samples, truncated }))
}

async fn read_errors(backends: &Backends, key: &str) -> Result<Vec<orch_data::ItemError>> {
    /// Downloads of one key by requests at the same time each get their own file.
    static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (mut path, remote) = backends.local_file(key)?;
    if remote {
        let n = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        path.set_extension(format!("{n}.parquet"));
        if !backends.objects.get_to_file(key, &path).await? {
            return Ok(Vec::new());
        }
    }
    // Decoding is blocking work: off the runtime that serves the pages (and, in the
    // operator, drives the jobs).
    let read = tokio::task::spawn_blocking({
        let path = path.clone();
        move || orch_data::read_errors_parquet(&path)
    })
    .await;
    if remote {
        std::fs::remove_file(&path).ok();
    }
    match read {
        Ok(Ok(errors)) => Ok(errors),
        Ok(Err(e)) => Err(DashboardError::Unreadable(format!("{key}: {e}"))),
        Err(e) => Err(DashboardError::Unreadable(format!("{key}: {e}"))),
    }
}

/// Task `n` of the job `id`, with the job and its storage.
async fn stored_task(
    d: &Dashboard,
    id: &str,
    n: u32,
) -> Result<(Arc<Source>, JobRecord, TaskRecord)> {
    let (source, job) = stored_job(d, id).await?;
    let task = source
        .backends
        .state
        .get_task(&job.id, n)
        .await?
        .ok_or_else(|| DashboardError::NoTask {
            job: id.to_string(),
            task: n,
        })?;
    Ok((source, job, task))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TaskPage {
    task: TaskRecord,
    attempts: Vec<AttemptRecord>,
}

pub(crate) async fn task(
    State(d): State<Arc<Dashboard>>,
    Path((id, n)): Path<(String, u32)>,
) -> Result<Json<TaskPage>> {
    let (source, job, task) = stored_task(&d, &id, n).await?;
    let state = source.backends.state.as_ref();
    let attempts = history::attempts(state, &job.id, Some(n), std::slice::from_ref(&task)).await?;
    Ok(Json(TaskPage { task, attempts }))
}

#[derive(Deserialize)]
pub(crate) struct LogQuery {
    attempt: Option<u32>,
    tail: Option<usize>,
}

/// The end of an attempt's log (the current attempt when none is asked for), as text.
pub(crate) async fn log(
    State(d): State<Arc<Dashboard>>,
    Path((id, n)): Path<(String, u32)>,
    Query(q): Query<LogQuery>,
) -> Result<impl IntoResponse> {
    let (source, job, task) = stored_task(&d, &id, n).await?;
    let log = AttemptLog {
        kind: task.kind,
        task: n,
        attempt: q.attempt.unwrap_or(task.attempt),
    };
    let local = d.local_logs.as_ref().map(|dir| dir.join(&job.id));
    let text = match log
        .read(source.backends.objects.as_ref(), &job.id, local.as_deref())
        .await?
    {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let tail = q.tail.unwrap_or(DEFAULT_LOG_TAIL);
            let mut out = select_lines(&text, None, Some(tail)).join("\n");
            out.push('\n');
            out
        }
        None => String::new(),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActionDone {
    changed: bool,
    message: String,
}

/// The header every action must carry: a page of another site cannot send it without the
/// browser asking this server first (which it never allows), so a visited page cannot act.
pub const ACTION_HEADER: &str = "x-orch-action";

pub(crate) async fn act(
    State(d): State<Arc<Dashboard>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ActionDone>> {
    if !d.actions {
        return Err(DashboardError::ReadOnly);
    }
    if !headers.contains_key(ACTION_HEADER) {
        return Err(DashboardError::Refused(format!(
            "an action needs the {ACTION_HEADER} header"
        )));
    }
    let (source, job) = stored_job(&d, &id).await?;
    let state = source.backends.state.as_ref();
    let (changed, message) = match action.as_str() {
        "pause" => {
            let changed = control::set_suspend(state, &job, true).await?;
            (
                changed,
                "paused: no new tasks start; running ones finish".to_string(),
            )
        }
        "resume" => {
            let changed = control::set_suspend(state, &job, false).await?;
            (changed, "resumed".to_string())
        }
        "cancel" => {
            let changed = control::request_cancel(state, &job).await?;
            (
                changed,
                "cancel requested: the job's driver stops its tasks".to_string(),
            )
        }
        "retry" => {
            let summary = control::retry(&source.backends, &job, &RetryChoice::Tasks).await?;
            (
                summary.tasks > 0,
                format!(
                    "{} tasks ({} items) will run again once the job is driven \
                     (`orch run` of its file, or the operator)",
                    summary.tasks, summary.items
                ),
            )
        }
        other => {
            return Err(DashboardError::Refused(format!(
                "no action `{other}` (pause, resume, cancel, retry)"
            )));
        }
    };
    tracing::info!(job = %id, action, changed, "dashboard action");
    Ok(Json(ActionDone { changed, message }))
}
