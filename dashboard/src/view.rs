//! What the pages show, computed from a job's rows: pure functions, no I/O, so that what a
//! number on the page means is decided (and tested) here once.

use std::collections::{BTreeMap, VecDeque};

use orch_core::history::{AttemptOutcome, AttemptRecord};
use orch_core::model::{JobRecord, Millis, TaskRecord, TaskState};
use orch_runtime::driver::Progress;
use serde::Serialize;

/// One line of the jobs list, and the head of a job's page.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub id: String,
    pub name: String,
    /// The namespace of the job's storage, where the server shows several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    pub suspended: bool,
    pub cancel_requested: bool,
    pub items_total: u64,
    /// Items finished, ok or failed (running tasks by their last heartbeat).
    pub items_done: u64,
    pub items_failed: u64,
    pub tasks_total: u32,
    pub tasks_done: u32,
    pub tasks_running: u32,
    /// Over the last minute the server watched, or the whole run once it ended.
    pub items_per_second: f64,
    /// At that rate; absent when nothing moves or the job has ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    pub aggregating: bool,
}

impl JobSummary {
    pub fn new(job: &JobRecord, progress: &Progress, items_per_second: f64) -> Self {
        let remaining = progress.total_items.saturating_sub(progress.done_items);
        let ended = job.phase.is_terminal();
        JobSummary {
            id: job.id.clone(),
            name: job.spec.metadata.name.clone(),
            namespace: None,
            phase: job.phase.as_str().to_string(),
            message: job.message.clone(),
            created_at: job.created_at,
            finished_at: job.finished_at,
            suspended: job.spec.spec.suspend,
            cancel_requested: job.cancel_requested,
            items_total: progress.total_items,
            items_done: progress.done_items,
            items_failed: progress.failed_items,
            tasks_total: progress.tasks_total,
            tasks_done: progress.tasks_done,
            tasks_running: progress.tasks_running,
            items_per_second,
            eta_seconds: (!ended && items_per_second > 0.0 && remaining > 0)
                .then(|| (remaining as f64 / items_per_second).ceil() as u64),
            aggregating: progress.aggregating,
        }
    }
}

/// The letter of a task's state in [`task_grid`], in the order of [`TaskState::ALL`].
pub fn state_letter(state: TaskState) -> char {
    match state {
        TaskState::Pending => 'p',
        TaskState::Dispatched => 'd',
        TaskState::Running => 'r',
        TaskState::Succeeded => 's',
        TaskState::Failed => 'f',
        TaskState::Retrying => 'y',
        TaskState::Cancelled => 'c',
    }
}

/// Every work task's state as one letter, task 0 first: 100,000 tasks are 100 KB, drawn on a
/// canvas by the page. A task id with no row (never expected) shows as pending.
pub fn task_grid(tasks: &[TaskRecord]) -> String {
    let work = tasks.iter().filter(|t| t.kind.is_work());
    let len = work.clone().map(|t| t.id as usize + 1).max().unwrap_or(0);
    let mut grid = vec![b'p'; len];
    for t in work {
        grid[t.id as usize] = state_letter(t.state) as u8;
    }
    // Only ASCII letters were written.
    String::from_utf8(grid).unwrap_or_default()
}

/// Work tasks by state (every state present, 0 when none).
pub fn tasks_by_state(tasks: &[TaskRecord]) -> BTreeMap<&'static str, u32> {
    let mut by: BTreeMap<&'static str, u32> =
        TaskState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for t in tasks.iter().filter(|t| t.kind.is_work()) {
        *by.entry(t.state.as_str()).or_default() += 1;
    }
    by
}

/// Failed items by error kind as the workers published them, plus every item of a task that
/// failed as a whole (under `task`).
pub fn errors_by_kind(tasks: &[TaskRecord]) -> BTreeMap<String, u64> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.kind.is_work()) {
        if t.state == TaskState::Failed {
            *by.entry("task".into()).or_default() += t.items;
            continue;
        }
        for (kind, n) in &t.items_failed_by_kind {
            *by.entry(kind.clone()).or_default() += n;
        }
    }
    by.retain(|_, n| *n > 0);
    by
}

/// What the job took from its rate limits, from the task rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitUse {
    pub tokens: u64,
    pub wait_ms: u64,
    /// Share of the running workers' time spent waiting for tokens over the last minute the
    /// server watched (0 to 1); absent before two observations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_share: Option<f64>,
}

pub fn rate_limit_totals(tasks: &[TaskRecord]) -> (u64, u64) {
    tasks.iter().fold((0, 0), |(tokens, wait), t| {
        (tokens + t.rate_limit_tokens, wait + t.rate_limit_wait_ms)
    })
}

/// One observation of a job by the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Millis,
    pub items_done: u64,
    pub tasks_running: u32,
    pub wait_ms: u64,
}

/// How many observations of a job the server keeps (at most one a second: 20 minutes of
/// one-second samples, or a long run at the spacing pages poll it).
const MAX_SAMPLES: usize = 1200;
/// Observations closer than this to the last one are not kept.
const MIN_SPACING_MS: Millis = 1000;
/// The window of the current rate.
const RATE_WINDOW_MS: Millis = 60_000;

/// A job's progress over time: the finished attempts' history first (so that a page opened
/// late, or after the end, still has a curve), then what the server saw itself.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    samples: VecDeque<Sample>,
}

impl Timeline {
    pub fn observe(&mut self, mut s: Sample) {
        if let Some(last) = self.samples.back() {
            // A retry resets its task's count: the curve stays at its highest rather than
            // dipping (and a rate is never taken over a fall).
            s.items_done = s.items_done.max(last.items_done);
            s.wait_ms = s.wait_ms.max(last.wait_ms);
            if s.at < last.at + MIN_SPACING_MS {
                return;
            }
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Items per second over the last minute of observations; 0 before two.
    pub fn items_per_second(&self) -> f64 {
        let Some(last) = self.samples.back() else {
            return 0.0;
        };
        let Some(first) = self
            .samples
            .iter()
            .find(|s| s.at + RATE_WINDOW_MS >= last.at)
        else {
            return 0.0;
        };
        per_second(
            last.items_done.saturating_sub(first.items_done),
            last.at.saturating_sub(first.at),
        )
    }

    /// Share of the running workers' time spent waiting for tokens, over the last minute.
    pub fn waiting_share(&self) -> Option<f64> {
        let last = self.samples.back()?;
        let first = self
            .samples
            .iter()
            .find(|s| s.at + RATE_WINDOW_MS >= last.at)?;
        let span = last.at.checked_sub(first.at).filter(|d| *d > 0)?;
        let workers = u64::from(last.tasks_running.max(first.tasks_running));
        if workers == 0 {
            return None;
        }
        let waited = last.wait_ms.saturating_sub(first.wait_ms);
        Some((waited as f64 / (span * workers) as f64).min(1.0))
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }
}

fn per_second(items: u64, ms: Millis) -> f64 {
    if ms == 0 {
        0.0
    } else {
        items as f64 * 1000.0 / ms as f64
    }
}

/// Points of the "items done" curve the page draws: `(time, items done)`, from the attempt
/// history (each committed attempt adds its items at its end) together with the server's own
/// observations (which also count the items of running tasks), made monotonic, up to the
/// job's end when it has ended, at most `max_points` of them (evenly thinned).
pub fn done_curve(
    job: &JobRecord,
    attempts: &[AttemptRecord],
    timeline: &Timeline,
    max_points: usize,
) -> Vec<(Millis, u64)> {
    let mut ends: Vec<(Millis, u64)> = attempts
        .iter()
        .filter(|a| matches!(a.outcome, AttemptOutcome::Succeeded))
        .filter_map(|a| Some((a.ended_at?, a.items_ok + a.items_failed)))
        .collect();
    ends.sort_unstable();
    let mut points = vec![(job.created_at, 0)];
    let mut done = 0;
    for (at, items) in ends {
        done += items;
        points.push((at, done));
    }
    let end = job.finished_at.unwrap_or(Millis::MAX);
    points.extend(
        timeline
            .samples()
            .filter(|s| s.at <= end)
            .map(|s| (s.at, s.items_done)),
    );
    points.sort_unstable();
    let mut most = 0;
    for p in &mut points {
        most = most.max(p.1);
        p.1 = most;
    }
    if let Some(finished) = job.finished_at
        && points.last().is_some_and(|p| p.0 < finished)
    {
        points.push((finished, most));
    }
    thin(points, max_points)
}

/// At most `max` points, the first and last kept.
fn thin(points: Vec<(Millis, u64)>, max: usize) -> Vec<(Millis, u64)> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let step = (points.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|i| points[((i as f64 * step).round() as usize).min(points.len() - 1)])
        .collect()
}

/// Items per second over the whole run of a job that ended.
pub fn whole_run_rate(job: &JobRecord, items_done: u64) -> f64 {
    match job.finished_at {
        Some(end) => per_second(items_done, end.saturating_sub(job.created_at)),
        None => 0.0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use orch_core::model::TaskKind;

    use super::*;

    fn task(id: u32, state: TaskState) -> TaskRecord {
        let mut t = TaskRecord::new("j", id, 10, 0);
        t.state = state;
        t
    }

    #[test]
    fn the_grid_has_one_letter_per_work_task_in_id_order() {
        let mut merge = task(3, TaskState::Running);
        merge.kind = TaskKind::Final;
        let tasks = vec![
            task(0, TaskState::Succeeded),
            task(2, TaskState::Failed),
            task(1, TaskState::Running),
            merge,
        ];
        assert_eq!(task_grid(&tasks), "srf");
        assert_eq!(tasks_by_state(&tasks)["running"], 1);
        assert_eq!(tasks_by_state(&tasks)["pending"], 0);
    }

    #[test]
    fn errors_count_item_kinds_and_whole_failed_tasks() {
        let mut ok = task(0, TaskState::Succeeded);
        ok.items_failed_by_kind.insert("permanent".into(), 2);
        ok.items_failed_by_kind.insert("schema".into(), 0);
        let failed = task(1, TaskState::Failed);
        let by = errors_by_kind(&[ok, failed]);
        assert_eq!(by.get("permanent"), Some(&2));
        assert_eq!(by.get("task"), Some(&10));
        assert!(!by.contains_key("schema"));
    }

    fn sample(at: Millis, done: u64, running: u32, wait: u64) -> Sample {
        Sample {
            at,
            items_done: done,
            tasks_running: running,
            wait_ms: wait,
        }
    }

    #[test]
    fn the_rate_is_over_the_last_minute_and_samples_are_spaced() {
        let mut t = Timeline::default();
        t.observe(sample(0, 0, 2, 0));
        t.observe(sample(500, 50, 2, 0)); // too soon: dropped
        t.observe(sample(100_000, 1000, 2, 0));
        t.observe(sample(130_000, 1600, 2, 30_000));
        t.observe(sample(160_000, 2200, 2, 60_000));
        assert_eq!(t.samples().count(), 4);
        // Window: 100 s to 160 s, 1200 items in 60 s.
        assert!((t.items_per_second() - 20.0).abs() < 1e-9);
        // 60 s of waiting over 60 s of two workers.
        assert!((t.waiting_share().unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_retry_that_resets_a_count_neither_dips_the_curve_nor_breaks_the_rate() {
        let mut t = Timeline::default();
        t.observe(sample(0, 80, 1, 0));
        t.observe(sample(1_000, 100, 1, 0));
        // A task's retry started again from 0: fewer items done than before.
        t.observe(sample(2_000, 50, 1, 0));
        t.observe(sample(3_000, 130, 1, 0));
        let points: Vec<u64> = t.samples().map(|s| s.items_done).collect();
        assert_eq!(points, vec![80, 100, 100, 130]);
        assert!((t.items_per_second() - 50.0 / 3.0).abs() < 1e-9);
    }

    fn committed(ended: Millis, items: u64) -> AttemptRecord {
        AttemptRecord {
            schema_version: 1,
            job: "j".into(),
            task: 0,
            kind: TaskKind::Work,
            attempt: 1,
            started_at: None,
            ended_at: Some(ended),
            executor_id: None,
            node: None,
            worker: None,
            outcome: AttemptOutcome::Succeeded,
            exit_code: None,
            signal: None,
            error: None,
            items_ok: items,
            items_failed: 0,
            updated_at: ended,
        }
    }

    #[test]
    fn the_curve_merges_history_and_observations_and_stops_at_the_end() {
        let mut job = orch_testkit::contract::sample_job("j", 2);
        let attempts = vec![committed(3_000, 10), committed(2_000, 10)];
        let mut t = Timeline::default();
        assert_eq!(
            done_curve(&job, &attempts, &t, 100),
            vec![(1_000, 0), (2_000, 10), (3_000, 20)]
        );
        // Observations count running tasks' items too; a later, lower history point does
        // not make the curve go down.
        t.observe(sample(2_500, 15, 1, 0));
        t.observe(sample(5_000, 30, 1, 0));
        assert_eq!(
            done_curve(&job, &attempts, &t, 100),
            vec![
                (1_000, 0),
                (2_000, 10),
                (2_500, 15),
                (3_000, 20),
                (5_000, 30)
            ]
        );
        // Looked at long after its end: nothing after the end, which is the last point.
        job.finished_at = Some(4_000);
        t.observe(sample(90_000, 30, 0, 0));
        assert_eq!(
            done_curve(&job, &attempts, &t, 100).last(),
            Some(&(4_000, 20))
        );
    }

    #[test]
    fn thinning_keeps_both_ends() {
        let points: Vec<(Millis, u64)> = (0..1000).map(|i| (i, i)).collect();
        let thinned = thin(points, 10);
        assert_eq!(thinned.len(), 10);
        assert_eq!(thinned[0], (0, 0));
        assert_eq!(thinned[9], (999, 999));
    }
}
