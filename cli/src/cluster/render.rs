//! What `orch status` shows of an OrchJob: the status table, the one-line summaries of
//! `--watch`, the list of a namespace, and when a watched job has ended. Pure: the caller passes
//! the time.

use std::fmt::Write;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use orch_crd::{
    CANCEL_ANNOTATION, ConditionStatus, JobPhase, OrchJobStatus, PURGE_ANNOTATION,
    RETRY_ANNOTATION, TaskCounts,
};

use super::Request;

/// The current time.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// What `orch status` needs of an OrchJob.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub created: Option<Timestamp>,
    /// Set once the object is being deleted (it waits for its finalizers).
    pub deleting: Option<Timestamp>,
    pub finalizers: Vec<String>,
    /// `spec.suspend`.
    pub suspend: bool,
    /// The value of the retry annotation, if any.
    pub retry: Option<String>,
    /// Whether the cancel annotation is `"true"`.
    pub cancel: bool,
    /// Whether the purge annotation is `"true"`.
    pub purge: bool,
    /// The status, empty until the operator writes one.
    pub status: OrchJobStatus,
    /// Whether there is a status at all.
    pub has_status: bool,
}

impl JobView {
    pub fn from_object(obj: &DynamicObject) -> Result<JobView, String> {
        let meta = &obj.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
        let raw_status = obj.data.get("status").filter(|s| !s.is_null());
        let status = match raw_status {
            Some(s) => serde_json::from_value::<OrchJobStatus>(s.clone()).map_err(|e| {
                format!("the status of orchjob \"{name}\" is not in a shape this orch reads: {e}")
            })?,
            None => OrchJobStatus::default(),
        };
        Ok(JobView {
            namespace: meta.namespace.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            generation: meta.generation,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            deleting: meta.deletion_timestamp.as_ref().map(|t| t.0),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
            suspend: obj
                .data
                .pointer("/spec/suspend")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            retry: annotation(RETRY_ANNOTATION),
            cancel: annotation(CANCEL_ANNOTATION).is_some_and(|v| v == "true"),
            purge: annotation(PURGE_ANNOTATION).is_some_and(|v| v == "true"),
            has_status: raw_status.is_some(),
            status,
            name,
        })
    }

    /// A retry was asked for (a retry annotation) that the operator has not recorded yet.
    pub fn retry_pending(&self) -> bool {
        self.retry.is_some() && self.retry != self.status.retried
    }

    /// The status describes an older spec than the current one.
    fn stale(&self) -> bool {
        matches!(
            (self.status.observed_generation, self.generation),
            (Some(seen), Some(current)) if seen < current
        )
    }
}

/// How a watched job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// Whether the job has ended, as far as `orch status --watch` is concerned. A status written
/// for an older generation of the spec, or a `Failed` job with a retry request the operator
/// has not handled yet, has not ended: the operator is about to act on it.
pub fn outcome(v: &JobView) -> Option<Outcome> {
    if v.stale() {
        return None;
    }
    match v.status.phase? {
        // A retry of failed items may run a job that succeeded again (`orch retry --items`).
        JobPhase::Succeeded if !v.retry_pending() => Some(Outcome::Succeeded),
        JobPhase::Failed if !v.retry_pending() => Some(Outcome::Failed),
        _ => None,
    }
}

fn phase_name(p: JobPhase) -> &'static str {
    match p {
        JobPhase::Pending => "Pending",
        JobPhase::Running => "Running",
        JobPhase::Suspended => "Suspended",
        JobPhase::Succeeded => "Succeeded",
        JobPhase::Failed => "Failed",
    }
}

fn phase_of(v: &JobView) -> &'static str {
    v.status.phase.map(phase_name).unwrap_or("-")
}

/// `5s`, `3m20s`, `42m`, `5h10m`, `30h`, `3d4h`, `12d`: kubectl's habit for ages.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, days) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s.is_multiple_of(60) {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m.is_multiple_of(60) {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if days < 8 && h % 24 != 0 {
        format!("{days}d{}h", h % 24)
    } else {
        format!("{days}d")
    }
}

/// Time from `then` to `now` (zero if `then` is in the future: clocks disagree).
fn since(then: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or_default()
}

fn age(then: Option<Timestamp>, now: Timestamp) -> String {
    then.map(|t| human_duration(since(t, now)))
        .unwrap_or_else(|| "-".into())
}

fn parse_time(text: &str) -> Option<Timestamp> {
    text.parse().ok()
}

/// `2025-06-01T10:00:00Z (5m ago)`, or the text as written if it is not a timestamp.
fn when(text: &str, now: Timestamp) -> String {
    match parse_time(text) {
        Some(t) => format!("{text} ({} ago)", human_duration(since(t, now))),
        None => text.to_string(),
    }
}

/// `3/8 done, 1 failed (2 running, 1 retrying, 1 pending)`.
fn tasks_line(t: &TaskCounts) -> String {
    let mut line = format!("{}/{} done", t.succeeded, t.total);
    if t.failed > 0 {
        let _ = write!(line, ", {} failed", t.failed);
    }
    let rest: Vec<String> = [
        ("running", t.running),
        ("dispatched", t.dispatched),
        ("retrying", t.retrying),
        ("pending", t.pending),
        ("cancelled", t.cancelled),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{n} {what}"))
    .collect();
    if !rest.is_empty() {
        let _ = write!(line, " ({})", rest.join(", "));
    }
    line
}

fn items_line(v: &JobView) -> Option<String> {
    let i = v.status.items?;
    Some(format!(
        "{} ok, {} failed, {} retrying (of {})",
        i.ok, i.failed, i.retrying, i.total
    ))
}

/// What was asked of the job and not visible in its phase yet.
fn requests(v: &JobView) -> Vec<String> {
    let mut out = Vec::new();
    if v.suspend {
        out.push("paused (spec.suspend: true)".to_string());
    }
    if let Some(r) = &v.retry {
        if v.retry_pending() {
            out.push(format!("retry {r} (not handled yet)"));
        } else {
            out.push(format!("retry {r} (handled)"));
        }
    }
    if v.cancel {
        out.push("cancel".to_string());
    }
    if v.purge {
        out.push("purge on delete".to_string());
    }
    out
}

/// The status of one OrchJob for a person.
pub fn table(v: &JobView, now: Timestamp) -> String {
    let mut out = String::new();
    let s = &v.status;
    let mut row = |key: &str, value: &str| {
        let _ = writeln!(out, "{:<12} {value}", format!("{key}:"));
    };
    row("Name", &v.name);
    row("Namespace", &v.namespace);
    if !v.has_status {
        row(
            "Phase",
            "- (no status yet: no operator has reported on this job; is orch-operator running?)",
        );
    } else {
        let mut phase = phase_of(v).to_string();
        if v.stale() {
            phase.push_str(" (for an older spec: the operator has not caught up yet)");
        }
        row("Phase", &phase);
    }
    if let Some(t) = &s.tasks {
        row("Tasks", &tasks_line(t));
    }
    if let Some(items) = items_line(v) {
        row("Items", &items);
    }
    if let Some(a) = &s.attempts {
        let mut line = a.total.to_string();
        if a.again > 0 {
            let _ = write!(
                line,
                " ({} ran again, {} of them not counted against retry.maxAttempts)",
                a.again, a.not_counted
            );
        }
        row("Attempts", &line);
    }
    if let Some(t) = &s.start_time {
        row("Started", &when(t, now));
    }
    if let Some(t) = &s.completion_time {
        let mut line = when(t, now);
        if let (Some(start), Some(end)) =
            (s.start_time.as_deref().and_then(parse_time), parse_time(t))
        {
            let _ = write!(line, ", ran {}", human_duration(since(start, end)));
        }
        row("Completed", &line);
    }
    if let Some(o) = &s.output {
        row("Output", o);
    }
    if let Some(id) = &s.job_id {
        row("Job id", id);
    }
    let asked = requests(v);
    if !asked.is_empty() {
        row("Requested", &asked.join(", "));
    }
    if let Some(d) = v.deleting {
        let waiting = if v.finalizers.is_empty() {
            String::new()
        } else {
            format!(", waiting for {}", v.finalizers.join(", "))
        };
        row(
            "Deleting",
            &format!("since {} ago{waiting}", human_duration(since(d, now))),
        );
    }
    row("Age", &age(v.created, now));
    if !s.conditions.is_empty() {
        let _ = writeln!(out, "Conditions:");
        let rows: Vec<[String; 5]> = s
            .conditions
            .iter()
            .map(|c| {
                [
                    format!("{:?}", c.r#type),
                    match c.status {
                        ConditionStatus::True => "True",
                        ConditionStatus::False => "False",
                        ConditionStatus::Unknown => "Unknown",
                    }
                    .to_string(),
                    c.reason.clone().unwrap_or_else(|| "-".into()),
                    age(c.last_transition_time.as_deref().and_then(parse_time), now),
                    c.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let header = ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"].map(String::from);
        out.push_str(&columns(&header, &rows, "  "));
    }
    out
}

/// Rows in aligned columns (the last one unpadded), each line starting with `indent`.
fn columns<const N: usize>(header: &[String; N], rows: &[[String; N]], indent: &str) -> String {
    let mut widths = header.each_ref().map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(header).chain(rows) {
        out.push_str(indent);
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}

/// The OrchJobs of a namespace, one per line.
pub fn list(views: &[JobView], now: Timestamp) -> String {
    let header = [
        "NAME", "PHASE", "TASKS", "ITEMS OK", "FAILED", "RETRYING", "AGE",
    ]
    .map(String::from);
    let rows: Vec<[String; 7]> = views
        .iter()
        .map(|v| {
            let s = &v.status;
            let items = s.items.unwrap_or_default();
            let has_items = s.items.is_some();
            let count = |n: u64| {
                if has_items {
                    n.to_string()
                } else {
                    "-".to_string()
                }
            };
            [
                v.name.clone(),
                phase_of(v).to_string(),
                s.tasks
                    .map(|t| format!("{}/{}", t.succeeded, t.total))
                    .unwrap_or_else(|| "-".into()),
                count(items.ok),
                count(items.failed),
                count(items.retrying),
                age(v.created, now),
            ]
        })
        .collect();
    columns(&header, &rows, "")
}

/// One line per change under `--watch`: phase, tasks and items.
pub fn summary(v: &JobView) -> String {
    let s = &v.status;
    if !v.has_status {
        return "no status yet (waiting for the operator)".to_string();
    }
    let mut line = phase_of(v).to_string();
    if let Some(t) = &s.tasks {
        let _ = write!(line, "  tasks {}", tasks_line(t));
    }
    if let Some(i) = &s.items {
        let _ = write!(
            line,
            "  items {} ok, {} failed, {} retrying",
            i.ok, i.failed, i.retrying
        );
    }
    let asked = requests(v);
    if !asked.is_empty() {
        let _ = write!(line, "  [{}]", asked.join(", "));
    }
    line
}

/// A remark on a request the job's phase makes moot or slow, for stderr.
pub fn request_note(what: Request, v: &JobView) -> Option<String> {
    if !v.has_status {
        return Some(
            "no operator has reported on this job yet: the request waits for one".to_string(),
        );
    }
    let phase = v.status.phase?;
    let ended = matches!(phase, JobPhase::Succeeded | JobPhase::Failed);
    match what {
        Request::Pause | Request::Resume | Request::Cancel if ended => Some(format!(
            "the job has already ended ({}): the request changes nothing",
            phase_name(phase)
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (600, "10m"),
            (2 * 3600 + 59 * 60, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 10 * 60, "5h10m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (12 * 86400 + 5 * 3600, "12d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), want, "{secs}s");
        }
    }

    #[test]
    fn columns_align_and_do_not_pad_the_last() {
        let header = ["A", "LONGER"].map(String::from);
        let rows = vec![["wide-cell".to_string(), "x".to_string()]];
        assert_eq!(
            columns(&header, &rows, "  "),
            "  A          LONGER\n  wide-cell  x\n"
        );
    }
}
