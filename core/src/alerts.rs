//! Job alerts: the rules that watch a running job and say when something needs a person — the
//! job stalled, too many items fail, a task failed for good, a limit killed a task — and when
//! it no longer does (docs/observability.md, "Alerts").
//!
//! This module decides; it sends nothing. [`AlertEngine::observe`] takes the time and the
//! job's rows, as the driver reads them on every tick, and returns the [`Notice`]s to send:
//! a rule's condition that becomes true gives one `firing` notice, and the same condition
//! clearing gives one `resolved` notice — never one per tick. Delivery (Slack, webhooks,
//! email, Kubernetes Events), the cap on notifications and secrets live in `orch-runtime`
//! and the operator, around this state machine, so that every rule is tested without a clock
//! or a network.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::model::{JobPhase, JobRecord, LimitHit, Millis, TaskRecord, TaskState};
use crate::spec::{AlertRulesSpec, JobSpec};

/// Default of `stalled.after`.
pub const DEFAULT_STALLED_AFTER: Duration = Duration::from_secs(15 * 60);
/// Default of `errorRate.percent`.
pub const DEFAULT_ERROR_RATE_PERCENT: f64 = 10.0;
/// Default of `errorRate.minItems`.
pub const DEFAULT_ERROR_RATE_MIN_ITEMS: u64 = 100;
/// Default of `rateLimitSaturated.percent`.
pub const DEFAULT_SATURATION_PERCENT: f64 = 90.0;
/// Default of `rateLimitSaturated.window`.
pub const DEFAULT_SATURATION_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Default of `throttle.max`: notifications per job per [`DEFAULT_THROTTLE_PER`].
pub const DEFAULT_THROTTLE_MAX: u32 = 20;
/// Default of `throttle.per`.
pub const DEFAULT_THROTTLE_PER: Duration = Duration::from_secs(3600);
/// A rule on a ratio (`errorRate`, `rateLimitSaturated`) that fired resolves once the ratio is
/// back to this share of its threshold or below, so that a ratio hovering at the threshold
/// does not fire and resolve on every tick.
pub const RESOLVE_BELOW: f64 = 0.8;

/// The rules, by their names in `spec.alerts.rules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AlertRule {
    Stalled,
    ErrorRate,
    TaskFailed,
    RateLimitSaturated,
    DeadLetters,
    LimitsHit,
    Finished,
}

impl AlertRule {
    pub const ALL: [AlertRule; 7] = [
        AlertRule::Stalled,
        AlertRule::ErrorRate,
        AlertRule::TaskFailed,
        AlertRule::RateLimitSaturated,
        AlertRule::DeadLetters,
        AlertRule::LimitsHit,
        AlertRule::Finished,
    ];

    /// The name in `spec.alerts.rules` and in every notice.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertRule::Stalled => "stalled",
            AlertRule::ErrorRate => "errorRate",
            AlertRule::TaskFailed => "taskFailed",
            AlertRule::RateLimitSaturated => "rateLimitSaturated",
            AlertRule::DeadLetters => "deadLetters",
            AlertRule::LimitsHit => "limitsHit",
            AlertRule::Finished => "finished",
        }
    }

    /// The same in CamelCase, for a Kubernetes Event's reason (`AlertStalled`).
    pub fn reason(self) -> &'static str {
        match self {
            AlertRule::Stalled => "AlertStalled",
            AlertRule::ErrorRate => "AlertErrorRate",
            AlertRule::TaskFailed => "AlertTaskFailed",
            AlertRule::RateLimitSaturated => "AlertRateLimitSaturated",
            AlertRule::DeadLetters => "AlertDeadLetters",
            AlertRule::LimitsHit => "AlertLimitsHit",
            AlertRule::Finished => "AlertFinished",
        }
    }
}

impl std::fmt::Display for AlertRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a notice opens or closes its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// How much a notice matters: `warning` for trouble, `info` for news (resolved, a job that
/// succeeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One thing to tell people about a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub rule: AlertRule,
    pub state: AlertState,
    pub severity: Severity,
    /// One sentence for people.
    pub summary: String,
    /// The figures behind it, by name (`idleSeconds`, `failedItems`, `tasks`…).
    pub details: Map<String, Value>,
    /// When the engine saw it.
    pub at: Millis,
}

/// `errorRate`'s parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorRate {
    pub percent: f64,
    pub min_items: u64,
}

/// `rateLimitSaturated`'s parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturation {
    pub percent: f64,
    pub window: Duration,
}

/// The rules of one job with every default applied: `None` or `false` is a rule turned off.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertConfig {
    pub stalled: Option<Duration>,
    pub error_rate: Option<ErrorRate>,
    pub task_failed: bool,
    /// Off for a job without `spec.rateLimit` (it never waits for tokens).
    pub rate_limit_saturated: Option<Saturation>,
    pub dead_letters: bool,
    pub limits_hit: bool,
    pub finished: bool,
    /// Items in flight per worker (`spec.handler.concurrency`): the waiting a worker can do.
    pub concurrency: u32,
    /// `spec.resources.memory` and `.time` as written, for the `limitsHit` message.
    pub memory: String,
    pub time: String,
}

impl AlertConfig {
    /// The rules of `spec`: its `spec.alerts.rules` over the defaults. A duration that does not
    /// parse keeps the default (validation has refused such a spec already).
    pub fn from_spec(spec: &JobSpec) -> AlertConfig {
        let empty = AlertRulesSpec::default();
        let rules = spec.alerts.as_ref().map_or(&empty, |a| &a.rules);
        let on = |enabled: Option<bool>, default: bool| enabled.unwrap_or(default);
        let duration = |q: Option<&crate::spec::Quantity>, default: Duration| {
            q.and_then(|q| q.as_duration().ok()).unwrap_or(default)
        };
        let stalled = rules.stalled.clone().unwrap_or_default();
        let error_rate = rules.error_rate.clone().unwrap_or_default();
        let saturated = rules.rate_limit_saturated.clone().unwrap_or_default();
        let toggle = |t: &Option<crate::spec::RuleToggleSpec>, default: bool| {
            on(t.as_ref().and_then(|t| t.enabled), default)
        };
        AlertConfig {
            stalled: on(stalled.enabled, true)
                .then(|| duration(stalled.after.as_ref(), DEFAULT_STALLED_AFTER)),
            error_rate: on(error_rate.enabled, true).then(|| ErrorRate {
                percent: error_rate.percent.unwrap_or(DEFAULT_ERROR_RATE_PERCENT),
                min_items: error_rate
                    .min_items
                    .unwrap_or(DEFAULT_ERROR_RATE_MIN_ITEMS)
                    .max(1),
            }),
            task_failed: toggle(&rules.task_failed, true),
            rate_limit_saturated: (on(saturated.enabled, false) && spec.rate_limit.is_some()).then(
                || Saturation {
                    percent: saturated.percent.unwrap_or(DEFAULT_SATURATION_PERCENT),
                    window: duration(saturated.window.as_ref(), DEFAULT_SATURATION_WINDOW),
                },
            ),
            dead_letters: toggle(&rules.dead_letters, false),
            limits_hit: toggle(&rules.limits_hit, true),
            finished: toggle(&rules.finished, false),
            concurrency: spec.handler.concurrency.max(1),
            memory: spec.resources.memory.to_string(),
            time: spec.resources.time.to_string(),
        }
    }
}

/// What one rule makes of one observation.
enum Check {
    /// The condition holds: fire (unless it fires already) with this notice.
    Holds(String, Map<String, Value>),
    /// The condition is over: resolve (if it fires) with this notice.
    Clear(String, Map<String, Value>),
    /// Nothing to change (a ratio between its threshold and its resolve level, too few items
    /// to judge, a rule turned off).
    Keep,
}

/// The state machine of one job's alerts: which conditions fire, and what it needs to
/// remember between ticks (the last progress, the rate-limit waits of the window). A new
/// driver starts a new one: a condition still true then fires again, once.
#[derive(Debug, Clone)]
pub struct AlertEngine {
    cfg: AlertConfig,
    firing: BTreeSet<AlertRule>,
    ended: bool,
    /// Each task as last read: its attempt, the items that attempt has done, and whether the
    /// task had ended; and when any of them last moved forward.
    progress: HashMap<u32, (u32, u64, bool)>,
    progressed_at: Option<Millis>,
    /// Rate-limit waiting: each task's attempt and its wait as last read, and per observation
    /// (time, wait added, waiting possible) over the window.
    waits: HashMap<u32, (u32, u64)>,
    samples: VecDeque<(Millis, u64, u64)>,
    last_seen: Option<Millis>,
    first_seen: Option<Millis>,
}

/// Item figures of a tick: finished tasks as the verdict counts them, running ones by their
/// heartbeats.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    done: u64,
    failed: u64,
    total: u64,
    running: u64,
}

fn figures(job: &JobRecord, tasks: &[TaskRecord]) -> Figures {
    let finished = crate::engine::item_counts(tasks);
    let mut f = Figures {
        done: finished.ok + finished.failed,
        failed: finished.failed,
        total: job.total_items,
        ..Figures::default()
    };
    for t in tasks {
        if t.kind.is_work() && t.state == TaskState::Running {
            f.running += 1;
            f.done += t.items_ok + t.items_failed;
            f.failed += t.items_failed;
        }
    }
    f
}

fn details(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A duration to the second, as people read it (`3m 12s`).
fn human(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// A task's error message, cut short for a one-line summary.
fn short(message: &str) -> String {
    const MAX: usize = 300;
    if message.chars().count() <= MAX {
        message.to_string()
    } else {
        let cut: String = message.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// Task ids for a summary: the first few, then how many more.
fn ids(ids: &[u32]) -> String {
    const SHOWN: usize = 5;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

impl AlertEngine {
    pub fn new(cfg: AlertConfig) -> AlertEngine {
        AlertEngine {
            cfg,
            firing: BTreeSet::new(),
            ended: false,
            progress: HashMap::new(),
            progressed_at: None,
            waits: HashMap::new(),
            samples: VecDeque::new(),
            last_seen: None,
            first_seen: None,
        }
    }

    pub fn config(&self) -> &AlertConfig {
        &self.cfg
    }

    /// The conditions that fire now.
    pub fn firing(&self) -> impl Iterator<Item = AlertRule> + '_ {
        self.firing.iter().copied()
    }

    /// One tick: the job's row and its task rows at `now`. Returns what changed: conditions
    /// that began (`firing`) and ended (`resolved`). Once the job has ended (its phase
    /// terminal), the notices of its end are returned once and nothing after.
    pub fn observe(&mut self, now: Millis, job: &JobRecord, tasks: &[TaskRecord]) -> Vec<Notice> {
        if self.ended {
            return Vec::new();
        }
        let f = figures(job, tasks);
        let ended = job.phase.is_terminal();
        let mut out = Vec::new();
        let checks = [
            (AlertRule::Stalled, self.stalled(now, job, tasks, &f)),
            (AlertRule::ErrorRate, self.error_rate(&f)),
            (AlertRule::TaskFailed, self.task_failed(tasks)),
            (
                AlertRule::RateLimitSaturated,
                self.saturation(now, ended, tasks, &f),
            ),
            (AlertRule::DeadLetters, self.dead_letters(tasks)),
            (AlertRule::LimitsHit, self.limits_hit(tasks)),
        ];
        for (rule, check) in checks {
            match check {
                Check::Holds(summary, details) if self.firing.insert(rule) => out.push(Notice {
                    rule,
                    state: AlertState::Firing,
                    severity: Severity::Warning,
                    summary,
                    details,
                    at: now,
                }),
                Check::Clear(summary, details) if self.firing.remove(&rule) => out.push(Notice {
                    rule,
                    state: AlertState::Resolved,
                    severity: Severity::Info,
                    summary,
                    details,
                    at: now,
                }),
                _ => {}
            }
        }
        if ended {
            self.ended = true;
            if self.cfg.finished {
                out.push(self.finished(now, job, &f));
            }
        }
        out
    }

    /// Whether any task moved forward since the last look: an attempt did more items than
    /// when last read (a new attempt counts from zero, so a retry that redoes the items of
    /// the attempt it replaces is progress, while its reset to zero is not), or a task ended.
    fn moved(&mut self, tasks: &[TaskRecord]) -> bool {
        let mut moved = false;
        for t in tasks {
            let done = t.items_ok + t.items_failed;
            let ended = t.state.is_terminal();
            let (before, was_ended) = match self.progress.get(&t.id) {
                Some((attempt, done, ended)) if *attempt == t.attempt => (*done, *ended),
                Some((_, _, ended)) => (0, *ended),
                None => (0, false),
            };
            moved |= done > before || (ended && !was_ended);
            self.progress.insert(t.id, (t.attempt, done, ended));
        }
        moved
    }

    fn stalled(
        &mut self,
        now: Millis,
        job: &JobRecord,
        tasks: &[TaskRecord],
        f: &Figures,
    ) -> Check {
        let grew = self.moved(tasks);
        if grew || self.progressed_at.is_none() {
            self.progressed_at = Some(now);
        }
        let Some(after) = self.cfg.stalled else {
            return Check::Keep;
        };
        let figures =
            json!({"doneItems": f.done, "totalItems": f.total, "runningTasks": f.running});
        if job.phase.is_terminal() {
            return Check::Clear(format!("the job ended ({})", job.phase), details(figures));
        }
        if job.spec.spec.suspend {
            // Paused: nothing is meant to move. The clock starts again on resume.
            self.progressed_at = Some(now);
            return Check::Clear("the job was paused".into(), details(figures));
        }
        let idle = now.saturating_sub(self.progressed_at.unwrap_or(now));
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        if idle >= after_ms {
            let mut d = details(figures);
            d.insert("idleSeconds".into(), json!(idle / 1000));
            d.insert("afterSeconds".into(), json!(after_ms / 1000));
            Check::Holds(
                format!(
                    "no item has finished and no task has ended for {} ({} of {} items done, {} task(s) running)",
                    human(idle),
                    f.done,
                    f.total,
                    f.running
                ),
                d,
            )
        } else {
            Check::Clear(
                format!(
                    "the job is moving again ({} of {} items done)",
                    f.done, f.total
                ),
                details(figures),
            )
        }
    }

    fn error_rate(&self, f: &Figures) -> Check {
        let Some(rule) = self.cfg.error_rate else {
            return Check::Keep;
        };
        if f.done < rule.min_items {
            return Check::Keep;
        }
        let rate = percent(f.failed, f.done);
        let d = details(json!({
            "failedItems": f.failed,
            "finishedItems": f.done,
            "percent": (rate * 100.0).round() / 100.0,
            "thresholdPercent": rule.percent,
        }));
        if rate > rule.percent {
            Check::Holds(
                format!(
                    "{rate:.1} % of the finished items failed ({} of {}), above {} %",
                    f.failed, f.done, rule.percent
                ),
                d,
            )
        } else if rate <= rule.percent * RESOLVE_BELOW {
            Check::Clear(
                format!(
                    "{rate:.1} % of the finished items failed ({} of {}), back under {} %",
                    f.failed, f.done, rule.percent
                ),
                d,
            )
        } else {
            Check::Keep
        }
    }

    fn task_failed(&self, tasks: &[TaskRecord]) -> Check {
        if !self.cfg.task_failed {
            return Check::Keep;
        }
        let failed: Vec<&TaskRecord> = tasks
            .iter()
            .filter(|t| t.state == TaskState::Failed)
            .collect();
        let Some(first) = failed.first() else {
            return Check::Clear(
                "no task is failed any more (they run again)".into(),
                Map::new(),
            );
        };
        let numbers: Vec<u32> = failed.iter().map(|t| t.id).collect();
        let error = first
            .last_error
            .as_ref()
            .map(|e| format!(" ({}): {}", e.kind.as_str(), short(&e.message)))
            .unwrap_or_default();
        let summary = if failed.len() == 1 {
            format!(
                "task {} failed after {} attempt(s){error}",
                first.id, first.attempt
            )
        } else {
            format!(
                "{} tasks failed after their last attempt (tasks {}); task {}{error}",
                failed.len(),
                ids(&numbers),
                first.id
            )
        };
        Check::Holds(
            summary,
            details(json!({"tasks": numbers, "failedTasks": failed.len()})),
        )
    }

    fn dead_letters(&self, tasks: &[TaskRecord]) -> Check {
        if !self.cfg.dead_letters {
            return Check::Keep;
        }
        let failed_tasks = tasks
            .iter()
            .filter(|t| t.kind.is_work() && t.state == TaskState::Failed)
            .count();
        // Items of finished tasks only: a running task may still retry its failures.
        let failed_items = crate::engine::item_counts(tasks).failed;
        let d = details(json!({"failedTasks": failed_tasks, "failedItems": failed_items}));
        if failed_tasks == 0 && failed_items == 0 {
            Check::Clear("no dead-lettered work is left".into(), d)
        } else {
            Check::Holds(
                format!(
                    "dead-lettered work: {failed_tasks} task(s) out of attempts, {failed_items} failed item(s); `orch retry` runs them again"
                ),
                d,
            )
        }
    }

    fn limits_hit(&self, tasks: &[TaskRecord]) -> Check {
        if !self.cfg.limits_hit {
            return Check::Keep;
        }
        // A task whose last failure was a limit, and that has not succeeded since.
        let hit: Vec<(&TaskRecord, u32, LimitHit)> = tasks
            .iter()
            .filter(|t| !matches!(t.state, TaskState::Succeeded | TaskState::Cancelled))
            .filter_map(|t| {
                let e = t.last_error.as_ref()?;
                Some((t, e.attempt, e.limit?))
            })
            .collect();
        let Some((first, attempt, limit)) = hit.first() else {
            return Check::Clear(
                "every task that hit a limit has since succeeded".into(),
                Map::new(),
            );
        };
        let what = |limit: LimitHit| match limit {
            LimitHit::Memory => format!(
                "ran out of memory (spec.resources.memory: {})",
                self.cfg.memory
            ),
            LimitHit::Time => format!(
                "reached its time limit (spec.resources.time: {})",
                self.cfg.time
            ),
        };
        let numbers: Vec<u32> = hit.iter().map(|(t, _, _)| t.id).collect();
        let memory = hit
            .iter()
            .filter(|(_, _, l)| *l == LimitHit::Memory)
            .count();
        let summary = if hit.len() == 1 {
            format!("task {} attempt {attempt} {}", first.id, what(*limit))
        } else {
            format!(
                "{} tasks were stopped by a limit (tasks {}; {memory} out of memory, {} out of time); task {} attempt {attempt} {}",
                hit.len(),
                ids(&numbers),
                hit.len() - memory,
                first.id,
                what(*limit)
            )
        };
        Check::Holds(
            summary,
            details(json!({
                "tasks": numbers,
                "memory": memory,
                "time": hit.len() - memory,
            })),
        )
    }

    fn saturation(&mut self, now: Millis, ended: bool, tasks: &[TaskRecord], f: &Figures) -> Check {
        let Some(rule) = self.cfg.rate_limit_saturated else {
            return Check::Keep;
        };
        // The waiting added since the last look: a new attempt starts its count from zero.
        let mut added = 0u64;
        for t in tasks.iter().filter(|t| t.kind.is_work()) {
            let before = match self.waits.get(&t.id) {
                Some((attempt, wait)) if *attempt == t.attempt => *wait,
                _ => 0,
            };
            added += t.rate_limit_wait_ms.saturating_sub(before);
            self.waits.insert(t.id, (t.attempt, t.rate_limit_wait_ms));
        }
        let first_seen = *self.first_seen.get_or_insert(now);
        if let Some(last) = self.last_seen.replace(now) {
            // What could have waited since the last look: every item slot of every running
            // worker.
            let possible = now
                .saturating_sub(last)
                .saturating_mul(f.running)
                .saturating_mul(u64::from(self.cfg.concurrency));
            self.samples.push_back((now, added, possible));
        }
        let window = u64::try_from(rule.window.as_millis()).unwrap_or(u64::MAX);
        while self
            .samples
            .front()
            .is_some_and(|(at, _, _)| now.saturating_sub(*at) > window)
        {
            self.samples.pop_front();
        }
        let (waited, possible) = self
            .samples
            .iter()
            .fold((0u64, 0u64), |(w, p), (_, a, b)| (w + a, p + b));
        let share = percent(waited, possible).min(100.0);
        let d = details(json!({
            "percent": (share * 10.0).round() / 10.0,
            "thresholdPercent": rule.percent,
            "windowSeconds": window / 1000,
        }));
        if ended {
            return Check::Clear("the job ended".into(), d);
        }
        if now.saturating_sub(first_seen) < window || possible == 0 {
            return Check::Keep;
        }
        if share > rule.percent {
            Check::Holds(
                format!(
                    "items spent {share:.0} % of their time waiting for rate-limit tokens over the last {}, above {} %: the rate limit holds the job back",
                    human(window),
                    rule.percent
                ),
                d,
            )
        } else if share <= rule.percent * RESOLVE_BELOW {
            Check::Clear(
                format!(
                    "items spent {share:.0} % of their time waiting for rate-limit tokens over the last {}",
                    human(window)
                ),
                d,
            )
        } else {
            Check::Keep
        }
    }

    fn finished(&self, now: Millis, job: &JobRecord, f: &Figures) -> Notice {
        let ok = job.phase == JobPhase::Succeeded;
        let message = job
            .message
            .as_deref()
            .map(|m| format!(": {}", short(m)))
            .unwrap_or_default();
        Notice {
            rule: AlertRule::Finished,
            state: AlertState::Firing,
            severity: if ok {
                Severity::Info
            } else {
                Severity::Warning
            },
            summary: format!(
                "the job {}: {} items ok, {} failed{message}",
                job.phase,
                f.done.saturating_sub(f.failed),
                f.failed
            ),
            details: details(json!({
                "phase": job.phase.as_str(),
                "okItems": f.done.saturating_sub(f.failed),
                "failedItems": f.failed,
                "totalItems": f.total,
            })),
            at: now,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
