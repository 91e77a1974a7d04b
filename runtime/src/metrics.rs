//! Per-job metrics of a driver, for Prometheus: what a scrape of `orch run --metrics-addr`
//! shows. Workers live for one task, so their figures reach the driver through the task rows
//! it reads on every tick (items done and failed, states); what the driver does itself —
//! attempts it starts, losses and retries, submissions to the executor — it counts as it does
//! it. Durations are as the driver sees them, to within one tick. The same figures can also go
//! out as CloudWatch Embedded Metric Format lines ([`EmfLines`]), for AWS users whose log
//! agent turns them into CloudWatch metrics. See docs/observability.md ("Metrics").

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_core::model::{ErrorKind, TaskRecord, TaskState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::driver::Progress;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job id: `orch_job`, since Prometheus keeps `job` for its scrape job.
    pub orch_job: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub orch_job: String,
    /// `work` or `merge` (merge levels and the final merge).
    pub stage: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ItemLabels {
    pub orch_job: String,
    /// `ok`, `failed` (done) or `planned` (every item of the job).
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ItemErrorLabels {
    pub orch_job: String,
    /// The kind of the items' errors (`transient`, `permanent`, `rate_limited`, `schema`…).
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub orch_job: String,
    /// The error kind of the attempt's loss (`transient`, `infrastructure`…).
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubmitLabels {
    pub orch_job: String,
    /// `ok` or `error`.
    pub outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every job's series, registered once; clones share them.
#[derive(Clone)]
pub struct JobMetrics {
    tasks: Family<TaskLabels, Gauge>,
    items: Family<ItemLabels, Gauge>,
    items_failed: Family<ItemErrorLabels, Gauge>,
    items_per_second: Family<JobLabels, FloatGauge>,
    input_bytes_done: Family<JobLabels, Gauge>,
    output_bytes: Family<JobLabels, Gauge>,
    attempts: Family<JobLabels, Counter>,
    attempts_lost: Family<ErrorLabels, Counter>,
    retries: Family<JobLabels, Counter>,
    task_seconds: Family<JobLabels, Histogram>,
    queue_seconds: Family<JobLabels, Histogram>,
    submit_seconds: Family<SubmitLabels, Histogram>,
    merge_tasks_done: Family<JobLabels, Gauge>,
    ratelimit_tokens: Family<JobLabels, Counter>,
    ratelimit_wait: Family<JobLabels, Counter<f64, AtomicU64>>,
}

fn seconds_histogram() -> Histogram {
    // 0.1 s to about 15 hours.
    Histogram::new(exponential_buckets(0.1, 2.5, 14))
}

fn submit_histogram() -> Histogram {
    // 5 ms to about 40 s: an sbatch, a slurmrestd call or a Kubernetes Job creation.
    Histogram::new(exponential_buckets(0.005, 2.5, 11))
}

impl JobMetrics {
    /// The series, registered in `registry` as `orch_job_*` (under the registry's prefix).
    pub fn register(registry: &mut Registry) -> JobMetrics {
        let m = JobMetrics {
            tasks: Family::default(),
            items: Family::default(),
            items_failed: Family::default(),
            items_per_second: Family::default(),
            input_bytes_done: Family::default(),
            output_bytes: Family::default(),
            attempts: Family::default(),
            attempts_lost: Family::default(),
            retries: Family::default(),
            task_seconds: Family::new_with_constructor(seconds_histogram),
            queue_seconds: Family::new_with_constructor(seconds_histogram),
            submit_seconds: Family::new_with_constructor(submit_histogram),
            merge_tasks_done: Family::default(),
            ratelimit_tokens: Family::default(),
            ratelimit_wait: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("orch_job");
        r.register("tasks", "Tasks by stage and state", m.tasks.clone());
        r.register(
            "items",
            "Items done ok or failed (running tasks by their last heartbeat), and planned",
            m.items.clone(),
        );
        r.register(
            "items_failed",
            "Items failed, by the kind of their errors (a task failed for good: all its items, \
             under the kind of its error)",
            m.items_failed.clone(),
        );
        r.register(
            "items_per_second",
            "Items done per second over the last minute",
            m.items_per_second.clone(),
        );
        r.register_with_unit(
            "input_done",
            "Input bytes of the work tasks that succeeded",
            Unit::Bytes,
            m.input_bytes_done.clone(),
        );
        r.register_with_unit(
            "output",
            "Bytes of the result files the work tasks that succeeded committed",
            Unit::Bytes,
            m.output_bytes.clone(),
        );
        r.register("attempts", "Task attempts started", m.attempts.clone());
        r.register(
            "attempts_lost",
            "Task attempts that ended without success, by error kind",
            m.attempts_lost.clone(),
        );
        r.register(
            "retries",
            "Task attempts that will be tried again",
            m.retries.clone(),
        );
        r.register_with_unit(
            "task_duration",
            "From a task's start to its success, per succeeded task",
            Unit::Seconds,
            m.task_seconds.clone(),
        );
        r.register_with_unit(
            "queue_wait",
            "From a task's dispatch to its start on a worker",
            Unit::Seconds,
            m.queue_seconds.clone(),
        );
        r.register_with_unit(
            "submit_duration",
            "Submissions of task groups to the executor, by outcome",
            Unit::Seconds,
            m.submit_seconds.clone(),
        );
        r.register(
            "merge_tasks_done",
            "Aggregation tasks ended",
            m.merge_tasks_done.clone(),
        );
        r.register(
            "ratelimit_tokens",
            "Tokens the job's workers took from its rate limits (every bucket together)",
            m.ratelimit_tokens.clone(),
        );
        r.register_with_unit(
            "ratelimit_wait",
            "Time the job's items waited for rate-limit tokens, added up over items",
            Unit::Seconds,
            m.ratelimit_wait.clone(),
        );
        m
    }

    /// Series registered nowhere: for a driver that only writes [`EmfLines`].
    pub fn unregistered() -> JobMetrics {
        JobMetrics::register(&mut Registry::default())
    }

    /// What one driver records for `job`, and writes as EMF lines to `emf` if given.
    pub fn job(&self, job: &str, emf: Option<EmfLines>) -> JobMeter {
        JobMeter {
            metrics: self.clone(),
            job: job.to_string(),
            seen: HashMap::new(),
            done: VecDeque::new(),
            failed_kinds: Default::default(),
            lost_kinds: Default::default(),
            ended: false,
            figures: Figures::default(),
            emf,
        }
    }
}

/// Where CloudWatch Embedded Metric Format lines go (a file, stdout), and how often: one line
/// per job at its first tick, then every `every`, and at its end. Clones share the writer.
#[derive(Clone)]
pub struct EmfLines {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    every: Duration,
    last: Option<Instant>,
}

/// How often EMF lines are written while a job runs: CloudWatch's standard resolution.
pub const EMF_EVERY: Duration = Duration::from_secs(60);

impl EmfLines {
    /// Lines appended to the file `path` (created if missing), or written to stdout for `-`,
    /// every [`EMF_EVERY`].
    pub fn open(path: &std::path::Path) -> std::io::Result<EmfLines> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        Ok(EmfLines::new(out, EMF_EVERY))
    }

    pub fn new(out: Box<dyn Write + Send>, every: Duration) -> EmfLines {
        EmfLines {
            out: Arc::new(Mutex::new(out)),
            every,
            last: None,
        }
    }
}

/// The CloudWatch namespace of orch's EMF metrics.
pub const EMF_NAMESPACE: &str = "orch";

/// The latest figures of a job, as EMF writes them.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    items_ok: u64,
    items_failed: u64,
    items_planned: u64,
    items_per_second: f64,
    tasks_running: u64,
    tasks_succeeded: u64,
    tasks_failed: u64,
    attempts_lost: u64,
    retries: u64,
}

/// When the driver first saw the current attempt of a task dispatched, and running.
struct Seen {
    attempt: u32,
    dispatched: Option<Instant>,
    running: Option<Instant>,
    state: TaskState,
    /// The attempt's rate-limit figures as last counted.
    tokens: u64,
    wait_ms: u64,
}

impl Seen {
    /// A new attempt, first seen in `state` (`dispatched` when the driver saw it dispatched).
    fn attempt(attempt: u32, state: TaskState, dispatched: Option<Instant>) -> Seen {
        Seen {
            attempt,
            dispatched,
            running: None,
            state,
            tokens: 0,
            wait_ms: 0,
        }
    }
}

/// A driver's recorder for its job.
pub struct JobMeter {
    metrics: JobMetrics,
    job: String,
    seen: HashMap<u32, Seen>,
    /// Items done at each observation of the last minute.
    done: VecDeque<(Instant, u64)>,
    /// Every kind of item error seen, so that a kind whose items were retried away shows 0.
    failed_kinds: std::collections::BTreeSet<String>,
    /// Every kind of attempt loss counted (for the removal of the job's series).
    lost_kinds: std::collections::BTreeSet<&'static str>,
    /// The job ended under this driver: its series outlive the driver.
    ended: bool,
    figures: Figures,
    emf: Option<EmfLines>,
}

/// The window of `orch_job_items_per_second`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

impl JobMeter {
    fn job_labels(&self) -> JobLabels {
        JobLabels {
            orch_job: self.job.clone(),
        }
    }

    /// One tick's rows and the progress shown from them.
    pub fn observe(&mut self, tasks: &[TaskRecord], progress: &Progress) {
        self.observe_at(Instant::now(), tasks, progress);
    }

    fn observe_at(&mut self, now: Instant, tasks: &[TaskRecord], progress: &Progress) {
        let m = self.metrics.clone();
        let mut by_state: HashMap<(&'static str, &'static str), i64> = HashMap::new();
        let mut input_done = 0u64;
        let mut output = 0u64;
        let mut merges_done = 0i64;
        let mut failed: HashMap<&str, u64> = HashMap::new();
        for t in tasks.iter().filter(|t| t.kind.is_work()) {
            match t.state {
                TaskState::Succeeded | TaskState::Running => {
                    for (kind, n) in &t.items_failed_by_kind {
                        *failed.entry(kind).or_default() += n;
                    }
                }
                TaskState::Failed => {
                    let kind = t.last_error.as_ref().map_or("unknown", |e| e.kind.as_str());
                    *failed.entry(kind).or_default() += t.items;
                }
                _ => {}
            }
        }
        self.failed_kinds
            .extend(failed.keys().map(|k| (*k).to_string()));
        for kind in &self.failed_kinds {
            m.items_failed
                .get_or_create(&ItemErrorLabels {
                    orch_job: self.job.clone(),
                    kind: kind.clone(),
                })
                .set(
                    i64::try_from(failed.get(kind.as_str()).copied().unwrap_or(0))
                        .unwrap_or(i64::MAX),
                );
        }
        for t in tasks {
            let stage = if t.kind.is_work() { "work" } else { "merge" };
            *by_state.entry((stage, t.state.as_str())).or_default() += 1;
            if t.kind.is_work() && t.state == TaskState::Succeeded {
                input_done += t.batch.as_ref().map_or(0, |b| b.bytes());
                output += t.output_bytes;
            }
            if !t.kind.is_work() && t.state.is_terminal() {
                merges_done += 1;
            }
            self.transition(now, t);
        }
        for stage in ["work", "merge"] {
            for state in TaskState::ALL {
                let n = by_state.get(&(stage, state.as_str())).copied().unwrap_or(0);
                m.tasks
                    .get_or_create(&TaskLabels {
                        orch_job: self.job.clone(),
                        stage: stage.into(),
                        state: state.as_str().into(),
                    })
                    .set(n);
            }
        }
        let done = progress.done_items;
        for (state, n) in [
            ("ok", done - progress.failed_items.min(done)),
            ("failed", progress.failed_items),
            ("planned", progress.total_items),
        ] {
            m.items
                .get_or_create(&ItemLabels {
                    orch_job: self.job.clone(),
                    state: state.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let job = self.job_labels();
        m.input_bytes_done
            .get_or_create(&job)
            .set(i64::try_from(input_done).unwrap_or(i64::MAX));
        m.merge_tasks_done.get_or_create(&job).set(merges_done);
        m.output_bytes
            .get_or_create(&job)
            .set(i64::try_from(output).unwrap_or(i64::MAX));
        self.done.push_back((now, done));
        while self
            .done
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.done.pop_front();
        }
        let rate = match (self.done.front(), self.done.back()) {
            (Some((t0, d0)), Some((t1, d1))) if t1 > t0 => {
                d1.saturating_sub(*d0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        m.items_per_second.get_or_create(&job).set(rate);
        let count = |state: &str| by_state.get(&("work", state)).copied().unwrap_or(0) as u64;
        self.figures = Figures {
            items_ok: done - progress.failed_items.min(done),
            items_failed: progress.failed_items,
            items_planned: progress.total_items,
            items_per_second: rate,
            tasks_running: count("running"),
            tasks_succeeded: count("succeeded"),
            tasks_failed: count("failed"),
            ..self.figures
        };
        if let Some(emf) = &self.emf
            && emf
                .last
                .is_none_or(|at| now.duration_since(at) >= emf.every)
        {
            self.write_emf(now);
        }
    }

    /// The job has ended: its last figures go out at once.
    pub fn ended(&mut self, tasks: &[TaskRecord], progress: &Progress) {
        self.ended = true;
        let now = Instant::now();
        self.observe_at(now, tasks, progress);
        if self.emf.as_ref().is_some_and(|e| e.last != Some(now)) {
            self.write_emf(now);
        }
    }

    fn write_emf(&mut self, now: Instant) {
        let Some(emf) = &mut self.emf else { return };
        emf.last = Some(now);
        let line = emf_line(&self.job, &self.figures, orch_core::model::now_ms());
        let written = emf
            .out
            .lock()
            .map_err(|_| std::io::Error::other("a writer panicked"))
            .and_then(|mut out| {
                writeln!(out, "{line}")?;
                out.flush()
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write the EMF metrics");
        }
    }

    /// Queue wait and duration from what the driver saw of the task's current attempt.
    fn transition(&mut self, now: Instant, t: &TaskRecord) {
        // A task found already under way (a resumed run, a new leader) has no known start,
        // and what its attempt took before this driver counted is not counted again.
        let seen = self.seen.entry(t.id).or_insert_with(|| Seen {
            tokens: t.rate_limit_tokens,
            wait_ms: t.rate_limit_wait_ms,
            ..Seen::attempt(t.attempt, t.state, None)
        });
        if seen.attempt != t.attempt {
            let dispatched = (t.state == TaskState::Dispatched).then_some(now);
            *seen = Seen::attempt(t.attempt, t.state, dispatched);
        }
        let unchanged = seen.state == t.state
            && t.rate_limit_tokens <= seen.tokens
            && t.rate_limit_wait_ms <= seen.wait_ms;
        if unchanged {
            // Most tasks, most ticks: no label to build, nothing to record.
            return;
        }
        let job = JobLabels {
            orch_job: self.job.clone(),
        };
        // Workers publish their attempt's running totals: what grew since the last look.
        if t.rate_limit_tokens > seen.tokens || t.rate_limit_wait_ms > seen.wait_ms {
            let tokens = t.rate_limit_tokens.saturating_sub(seen.tokens);
            let wait_ms = t.rate_limit_wait_ms.saturating_sub(seen.wait_ms);
            self.metrics
                .ratelimit_tokens
                .get_or_create(&job)
                .inc_by(tokens);
            self.metrics
                .ratelimit_wait
                .get_or_create(&job)
                .inc_by(wait_ms as f64 / 1000.0);
            seen.tokens = seen.tokens.max(t.rate_limit_tokens);
            seen.wait_ms = seen.wait_ms.max(t.rate_limit_wait_ms);
        }
        if seen.state != t.state {
            if t.state == TaskState::Running || t.state == TaskState::Succeeded {
                if let Some(at) = seen.dispatched.take() {
                    self.metrics
                        .queue_seconds
                        .get_or_create(&job)
                        .observe(now.duration_since(at).as_secs_f64());
                }
                if seen.running.is_none() && seen.state == TaskState::Dispatched {
                    seen.running = Some(now);
                }
            }
            if t.state == TaskState::Succeeded
                && let Some(at) = seen.running.take()
            {
                self.metrics
                    .task_seconds
                    .get_or_create(&job)
                    .observe(now.duration_since(at).as_secs_f64());
            }
            seen.state = t.state;
        }
    }

    /// The driver started these attempts.
    pub fn dispatched(&mut self, tasks: &[TaskRecord]) {
        self.dispatched_at(Instant::now(), tasks);
    }

    fn dispatched_at(&mut self, now: Instant, tasks: &[TaskRecord]) {
        self.metrics
            .attempts
            .get_or_create(&self.job_labels())
            .inc_by(tasks.len() as u64);
        for t in tasks {
            self.seen.insert(
                t.id,
                Seen::attempt(t.attempt, TaskState::Dispatched, Some(now)),
            );
        }
    }

    /// An attempt ended without success; `retried` when the task will be tried again.
    pub fn lost(&mut self, kind: ErrorKind, retried: bool) {
        self.lost_kinds.insert(kind.as_str());
        self.figures.attempts_lost += 1;
        self.figures.retries += u64::from(retried);
        self.metrics
            .attempts_lost
            .get_or_create(&ErrorLabels {
                orch_job: self.job.clone(),
                kind: kind.as_str().into(),
            })
            .inc();
        if retried {
            self.metrics.retries.get_or_create(&self.job_labels()).inc();
        }
    }

    /// A task group went to the executor (or failed to), taking `took`.
    pub fn submitted(&self, took: Duration, ok: bool) {
        self.metrics
            .submit_seconds
            .get_or_create(&SubmitLabels {
                orch_job: self.job.clone(),
                outcome: if ok { "ok" } else { "error" }.into(),
            })
            .observe(took.as_secs_f64());
    }
}

/// A driver that stops before its job ended (a replica that lost the lead, a shutdown) takes
/// the job's series with it: the driver that goes on serves them, and a sum over replicas
/// does not count the job twice. An ended job's series stay, showing how it ended.
impl Drop for JobMeter {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let m = &self.metrics;
        let job = self.job_labels();
        for stage in ["work", "merge"] {
            for state in TaskState::ALL {
                m.tasks.remove(&TaskLabels {
                    orch_job: self.job.clone(),
                    stage: stage.into(),
                    state: state.as_str().into(),
                });
            }
        }
        for state in ["ok", "failed", "planned"] {
            m.items.remove(&ItemLabels {
                orch_job: self.job.clone(),
                state: state.into(),
            });
        }
        for kind in &self.failed_kinds {
            m.items_failed.remove(&ItemErrorLabels {
                orch_job: self.job.clone(),
                kind: kind.clone(),
            });
        }
        for kind in &self.lost_kinds {
            m.attempts_lost.remove(&ErrorLabels {
                orch_job: self.job.clone(),
                kind: (*kind).into(),
            });
        }
        for outcome in ["ok", "error"] {
            m.submit_seconds.remove(&SubmitLabels {
                orch_job: self.job.clone(),
                outcome: outcome.into(),
            });
        }
        m.items_per_second.remove(&job);
        m.input_bytes_done.remove(&job);
        m.output_bytes.remove(&job);
        m.attempts.remove(&job);
        m.retries.remove(&job);
        m.task_seconds.remove(&job);
        m.queue_seconds.remove(&job);
        m.merge_tasks_done.remove(&job);
        m.ratelimit_tokens.remove(&job);
        m.ratelimit_wait.remove(&job);
    }
}

/// One EMF record: the figures at the root, named in `_aws.CloudWatchMetrics`, with the job
/// as the dimension.
fn emf_line(job: &str, f: &Figures, timestamp_ms: u64) -> serde_json::Value {
    let counts = [
        ("ItemsOk", f.items_ok),
        ("ItemsFailed", f.items_failed),
        ("ItemsPlanned", f.items_planned),
        ("TasksRunning", f.tasks_running),
        ("TasksSucceeded", f.tasks_succeeded),
        ("TasksFailed", f.tasks_failed),
        ("AttemptsLost", f.attempts_lost),
        ("Retries", f.retries),
    ];
    let mut metrics: Vec<serde_json::Value> = counts
        .iter()
        .map(|(name, _)| serde_json::json!({"Name": name, "Unit": "Count"}))
        .collect();
    metrics.push(serde_json::json!({"Name": "ItemsPerSecond", "Unit": "Count/Second"}));
    let mut record = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": EMF_NAMESPACE,
                "Dimensions": [["Job"]],
                "Metrics": metrics,
            }],
        },
        "Job": job,
        "ItemsPerSecond": f.items_per_second,
    });
    for (name, value) in counts {
        record[name] = value.into();
    }
    record
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }

    #[test]
    fn queue_wait_and_duration_follow_what_the_driver_saw_of_each_attempt() {
        let mut registry = Registry::default();
        let mut meter = JobMetrics::register(&mut registry).job("j", None);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut row = TaskRecord::new("j", 0, 100, 0);
        row.attempt = 1;
        row.state = TaskState::Dispatched;
        meter.dispatched_at(t0, std::slice::from_ref(&row));
        let progress = |done| Progress {
            total_items: 100,
            done_items: done,
            tasks_total: 1,
            ..Progress::default()
        };
        row.state = TaskState::Running;
        row.rate_limit_tokens = 40;
        row.rate_limit_wait_ms = 1_500;
        meter.observe_at(at(2), std::slice::from_ref(&row), &progress(0));
        row.rate_limit_tokens = 100;
        row.rate_limit_wait_ms = 2_000;
        row.state = TaskState::Succeeded;
        row.output_bytes = 4_096;
        row.items_failed_by_kind = [("permanent".to_string(), 3)].into();
        meter.observe_at(at(12), std::slice::from_ref(&row), &progress(100));
        let out = text(&registry);
        assert_eq!(value(&out, r#"orch_job_attempts_total{orch_job="j"}"#), 1.0);
        assert_eq!(
            value(&out, r#"orch_job_queue_wait_seconds_count{orch_job="j"}"#),
            1.0
        );
        assert_eq!(
            value(&out, r#"orch_job_queue_wait_seconds_sum{orch_job="j"}"#),
            2.0
        );
        assert_eq!(
            value(&out, r#"orch_job_task_duration_seconds_sum{orch_job="j"}"#),
            10.0
        );
        // 100 items in the 10 s between the two observations.
        assert_eq!(
            value(&out, r#"orch_job_items_per_second{orch_job="j"}"#),
            10.0
        );
        assert_eq!(
            value(
                &out,
                r#"orch_job_tasks{orch_job="j",stage="work",state="succeeded"}"#
            ),
            1.0
        );
        assert_eq!(
            value(&out, r#"orch_job_items{orch_job="j",state="ok"}"#),
            100.0
        );
        assert_eq!(
            value(
                &out,
                r#"orch_job_items_failed{orch_job="j",kind="permanent"}"#
            ),
            3.0
        );
        assert_eq!(
            value(&out, r#"orch_job_output_bytes{orch_job="j"}"#),
            4_096.0
        );
        // Running totals of the attempt, counted once each.
        assert_eq!(
            value(&out, r#"orch_job_ratelimit_tokens_total{orch_job="j"}"#),
            100.0
        );
        assert_eq!(
            value(
                &out,
                r#"orch_job_ratelimit_wait_seconds_total{orch_job="j"}"#
            ),
            2.0
        );

        // A retried attempt starts its own clock; a loss counts by kind, with its retry.
        meter.lost(ErrorKind::Infrastructure, true);
        let out = text(&registry);
        assert_eq!(
            value(
                &out,
                r#"orch_job_attempts_lost_total{orch_job="j",kind="infrastructure"}"#
            ),
            1.0
        );
        assert_eq!(value(&out, r#"orch_job_retries_total{orch_job="j"}"#), 1.0);

        // A driver that stops before its job ended takes the job's series with it.
        drop(meter);
        assert!(!text(&registry).contains(r#"orch_job="j""#));
    }
}
