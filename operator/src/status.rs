//! The Kubernetes-free core of the `OrchJob` controller: pure functions from what the
//! StateStore holds (core's [`JobRecord`] and [`TaskRecord`]s) to an [`OrchJobStatus`].
//!
//! No kube client, no I/O, no clock: the caller passes the time (RFC 3339) and the previous
//! status, so every transition is a unit test. Conditions follow the Kubernetes convention:
//! `lastTransitionTime` changes only when a condition's `status` changes.

use orch_core::engine;
use orch_core::error::FieldError;
use orch_core::model::{self, JobRecord, TaskRecord, TaskState};
use orch_core::spec::{API_VERSION, KIND, ObjectMeta, OrchJobFile};

use orch_crd::{
    AttemptCounts, ConditionStatus, ItemCounts, JobCondition, JobConditionType, JobPhase, OrchJob,
    OrchJobStatus, TaskCounts,
};

/// Longest condition message, in bytes: keeps the status a few KB whatever the job says.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Field errors listed in an `InvalidSpec` message; the rest are counted.
pub const MAX_LISTED_ERRORS: usize = 5;

/// Condition reasons, for machines (see docs/operator.md, "Status and conditions").
pub mod reason {
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const AGGREGATING: &str = "Aggregating";
    pub const SUSPENDED: &str = "Suspended";
    pub const COMPLETED: &str = "Completed";
    pub const FAILED: &str = "Failed";
    pub const CANCELLED: &str = "Cancelled";
    pub const PAUSED: &str = "Paused";
    pub const RESUMED: &str = "Resumed";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const TOO_MANY_FAILED_ITEMS: &str = "TooManyFailedItems";
    pub const AGGREGATION_FAILED: &str = "AggregationFailed";
    pub const JOB_FAILED: &str = "JobFailed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const RATE_LIMIT_MISSING: &str = "RateLimitMissing";
    pub const POLICY_DENIED: &str = orch_core::policy::POLICY_DENIED;
    pub const CONCURRENCY_LIMIT: &str = "ConcurrencyLimit";
}

/// The status of an `OrchJob` whose spec passed validation: phase, counts, times, output and
/// conditions, from the job record (`None` before the controller created it), its tasks, the
/// resource's `metadata.generation`, the status last written, and the time now.
pub fn job_status(
    job: Option<&JobRecord>,
    tasks: &[TaskRecord],
    generation: i64,
    previous: Option<&OrchJobStatus>,
    now: &str,
) -> OrchJobStatus {
    let core_phase = job.map(|j| j.phase);
    let terminal = core_phase.is_some_and(model::JobPhase::is_terminal);
    let suspend = job.is_some_and(|j| j.spec.spec.suspend);
    let phase = match core_phase {
        None => JobPhase::Pending,
        Some(model::JobPhase::Succeeded) => JobPhase::Succeeded,
        Some(model::JobPhase::Failed | model::JobPhase::Cancelled) => JobPhase::Failed,
        Some(model::JobPhase::Running | model::JobPhase::Aggregating) if suspend => {
            JobPhase::Suspended
        }
        Some(model::JobPhase::Running | model::JobPhase::Aggregating) => JobPhase::Running,
    };

    // The job's tasks are its batches; aggregation tasks show in its TaskGroups and conditions.
    let mut counts = task_counts(tasks.iter().filter(|t| t.kind.is_work()));
    if let Some(j) = job {
        counts.total = counts.total.max(j.total_tasks);
    }
    let core_items = engine::item_counts(tasks);
    let items = ItemCounts {
        total: core_items.total.max(job.map_or(0, |j| j.total_items)),
        ok: core_items.ok,
        failed: core_items.failed,
        retrying: tasks
            .iter()
            .filter(|t| t.state == TaskState::Retrying)
            .map(|t| t.items)
            .sum(),
    };

    // The job's own times, from its record: it started when the record was created (input
    // planned, tasks created) and ended when the record says so — not when an operator first
    // or last looked, which after a restart or a slow watch can be much later. The previous
    // status (or now) stands in only for a record without the time.
    let start_time = job
        .and_then(|j| rfc3339(j.created_at))
        .or_else(|| previous.and_then(|p| p.start_time.clone()));
    let completion_time = terminal.then(|| {
        job.and_then(|j| j.finished_at)
            .and_then(rfc3339)
            .or_else(|| previous.and_then(|p| p.completion_time.clone()))
            .unwrap_or_else(|| now.to_string())
    });
    let output = match (job, core_phase) {
        (Some(j), Some(model::JobPhase::Succeeded)) => j.spec.spec.output.uri.clone(),
        _ => None,
    };

    let message = job.and_then(|j| j.message.clone()).unwrap_or_default();
    let mut conditions = Vec::new();
    let (progressing, progressing_reason, progressing_message) = match core_phase {
        None => (
            ConditionStatus::False,
            reason::PENDING,
            "waiting for the controller to plan the job's tasks".to_string(),
        ),
        Some(model::JobPhase::Running | model::JobPhase::Aggregating) if suspend => (
            ConditionStatus::False,
            reason::SUSPENDED,
            "spec.suspend is true: no new tasks are dispatched".to_string(),
        ),
        Some(model::JobPhase::Running) => (
            ConditionStatus::True,
            reason::RUNNING,
            progress_message(&counts),
        ),
        Some(model::JobPhase::Aggregating) => (
            ConditionStatus::True,
            reason::AGGREGATING,
            "every task is done; merging the results".to_string(),
        ),
        Some(model::JobPhase::Succeeded) => {
            (ConditionStatus::False, reason::COMPLETED, message.clone())
        }
        Some(model::JobPhase::Failed) => (ConditionStatus::False, reason::FAILED, message.clone()),
        Some(model::JobPhase::Cancelled) => {
            (ConditionStatus::False, reason::CANCELLED, message.clone())
        }
    };
    conditions.push(condition(
        JobConditionType::Progressing,
        progressing,
        progressing_reason,
        &progressing_message,
    ));

    let previous_suspended = previous.and_then(|p| {
        p.conditions
            .iter()
            .find(|c| c.r#type == JobConditionType::Suspended)
    });
    match (core_phase, previous_suspended) {
        (Some(_), _) if suspend && !terminal => conditions.push(condition(
            JobConditionType::Suspended,
            ConditionStatus::True,
            reason::PAUSED,
            "spec.suspend is true: running tasks finish, no new ones start",
        )),
        (Some(phase), previous) if terminal && (suspend || previous.is_some()) => {
            conditions.push(suspension_at_the_end(phase, suspend, previous));
        }
        (_, Some(_)) => conditions.push(condition(
            JobConditionType::Suspended,
            ConditionStatus::False,
            reason::RESUMED,
            "spec.suspend is false: dispatching again",
        )),
        _ => {}
    }

    match core_phase {
        Some(model::JobPhase::Succeeded) => conditions.push(condition(
            JobConditionType::Complete,
            ConditionStatus::True,
            reason::SUCCEEDED,
            &message,
        )),
        Some(p @ (model::JobPhase::Failed | model::JobPhase::Cancelled)) => {
            conditions.push(condition(
                JobConditionType::Failed,
                ConditionStatus::True,
                failure_reason(p, &message),
                &message,
            ))
        }
        _ => {}
    }

    OrchJobStatus {
        phase: Some(phase),
        conditions: stamp(conditions, previous, generation, now),
        tasks: Some(counts),
        items: Some(items),
        attempts: Some(attempt_counts(tasks.iter().filter(|t| t.kind.is_work()))),
        start_time,
        completion_time,
        output,
        observed_generation: Some(generation),
        job_id: job.map(|j| j.id.clone()),
        retried: previous.and_then(|p| p.retried.clone()),
    }
}

/// `Suspended=False` of a job that ended after it had been paused: how it ended (reason
/// `Completed`, `Failed` or `Cancelled`, as `Progressing`), and whether that was while paused
/// (the record's `spec.suspend` still true) or after a resume. Said once, in the first status
/// after the end, and then kept: `spec.suspend` edited after the end changes nothing that
/// happened.
fn suspension_at_the_end(
    phase: model::JobPhase,
    suspend: bool,
    previous: Option<&JobCondition>,
) -> JobCondition {
    let (why, ended) = match phase {
        model::JobPhase::Succeeded => (reason::COMPLETED, "succeeded"),
        model::JobPhase::Cancelled => (reason::CANCELLED, "was cancelled"),
        _ => (reason::FAILED, "failed"),
    };
    let ended_reasons = [reason::COMPLETED, reason::CANCELLED, reason::FAILED];
    if let Some(before) = previous
        && before.status == ConditionStatus::False
        && before
            .reason
            .as_deref()
            .is_some_and(|r| ended_reasons.contains(&r))
    {
        // Already said once the job ended.
        return condition(
            JobConditionType::Suspended,
            ConditionStatus::False,
            before.reason.as_deref().unwrap_or(why),
            before.message.as_deref().unwrap_or_default(),
        );
    }
    let when = if suspend {
        "while paused (spec.suspend was true)"
    } else {
        "after it was resumed"
    };
    condition(
        JobConditionType::Suspended,
        ConditionStatus::False,
        why,
        &format!("the job {ended} {when}"),
    )
}

/// `Progressing`'s message while the job runs, from the same counts as `status.tasks`, each
/// named as its field there, so the two never disagree (`dispatched` is not `running`).
fn progress_message(counts: &TaskCounts) -> String {
    let mut message = format!("{} of {} tasks succeeded", counts.succeeded, counts.total);
    let others: Vec<String> = [
        ("running", counts.running),
        ("dispatched", counts.dispatched),
        ("retrying", counts.retrying),
        ("pending", counts.pending),
        ("failed", counts.failed),
        ("cancelled", counts.cancelled),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(state, n)| format!("{n} {state}"))
    .collect();
    if !others.is_empty() {
        message.push_str(": ");
        message.push_str(&others.join(", "));
    }
    message
}

/// A time of the StateStore (milliseconds since the epoch) in RFC 3339 to the second, the way
/// the controller writes `now`; `None` for a time that is no instant.
pub fn rfc3339(ms: model::Millis) -> Option<String> {
    let ms = i64::try_from(ms).ok()?;
    let t = k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok()?;
    Some(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The status of an `OrchJob` that the CRD schema accepted but orch's semantic rules refuse
/// (see [`validate`]): phase Failed, `Failed=True` with reason `InvalidSpec` and the first
/// [`MAX_LISTED_ERRORS`] problems as `field: reason`, `Progressing=False`, and
/// `completionTime` — set whenever the phase is final, so that waiting for it
/// (`kubectl wait --for=jsonpath='{.status.completionTime}'`) ends on every outcome.
pub fn validation_failure(generation: i64, now: &str, errors: &[FieldError]) -> OrchJobStatus {
    refused(
        reason::INVALID_SPEC,
        "the spec is invalid",
        "fix the spec; nothing runs until it is valid",
        generation,
        now,
        errors,
    )
}

/// The status of a job its namespace's `OrchPolicy` refuses (or that no policy governs):
/// `Failed` with reason `PolicyDenied`, each refused field with the rule.
pub fn policy_denial(generation: i64, now: &str, errors: &[FieldError]) -> OrchJobStatus {
    refused(
        reason::POLICY_DENIED,
        "the namespace's policy refuses the job",
        "change what the policy refuses, or ask a cluster admin; nothing runs until it is allowed",
        generation,
        now,
        errors,
    )
}

fn refused(
    why: &str,
    lead: &str,
    hint: &str,
    generation: i64,
    now: &str,
    errors: &[FieldError],
) -> OrchJobStatus {
    let mut message = format!(
        "{lead} ({} problem{}): ",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    let listed: Vec<String> = errors
        .iter()
        .take(MAX_LISTED_ERRORS)
        .map(|e| e.to_string())
        .collect();
    message.push_str(&listed.join("; "));
    if errors.len() > MAX_LISTED_ERRORS {
        message.push_str(&format!("; and {} more", errors.len() - MAX_LISTED_ERRORS));
    }
    let conditions = vec![
        condition(
            JobConditionType::Progressing,
            ConditionStatus::False,
            why,
            hint,
        ),
        condition(
            JobConditionType::Failed,
            ConditionStatus::True,
            why,
            &message,
        ),
    ];
    OrchJobStatus {
        phase: Some(JobPhase::Failed),
        conditions: stamp(conditions, None, generation, now),
        completion_time: Some(now.to_string()),
        observed_generation: Some(generation),
        ..OrchJobStatus::default()
    }
}

/// The status of a job that waits because its namespace runs as many jobs as its policy
/// allows: `Pending`, saying so.
pub fn waiting_for_quota(
    running: usize,
    policy: &str,
    generation: i64,
    previous: Option<&OrchJobStatus>,
    now: &str,
) -> OrchJobStatus {
    let mut status = job_status(None, &[], generation, previous, now);
    let message = format!(
        "waiting: the namespace runs {running} job(s), as many as OrchPolicy `{policy}` allows \
         (limits.maxConcurrentJobs); the job starts when one ends"
    );
    status.conditions = stamp(
        vec![condition(
            JobConditionType::Progressing,
            ConditionStatus::False,
            reason::CONCURRENCY_LIMIT,
            &message,
        )],
        previous,
        generation,
        now,
    );
    status
}

/// The status of a job that has not started because a `RateLimit` it names does not exist
/// (yet) in its namespace: `Pending`, with a condition naming what is missing.
pub fn waiting_for_rate_limits(
    missing: &[String],
    namespace: &str,
    generation: i64,
    previous: Option<&OrchJobStatus>,
    now: &str,
) -> OrchJobStatus {
    let mut status = job_status(None, &[], generation, previous, now);
    let names: Vec<String> = missing.iter().map(|n| format!("`{n}`")).collect();
    let message = format!(
        "waiting for RateLimit {} in namespace {namespace}: the job starts once it exists \
         (kubectl apply -f a RateLimit of that name)",
        names.join(", ")
    );
    status.conditions = stamp(
        vec![condition(
            JobConditionType::Progressing,
            ConditionStatus::False,
            reason::RATE_LIMIT_MISSING,
            &message,
        )],
        previous,
        generation,
        now,
    );
    status
}

/// The driver's refusal of a job (a problem only running it revealed) as a field error. Such
/// messages usually name their field already (`spec.input.uri: … matches no object`): that
/// field is the path, so the status does not say `spec: spec.input.uri: …`. Any other message
/// is about the spec as a whole.
pub fn rejection(message: &str) -> FieldError {
    if let Some((path, rest)) = message.split_once(": ")
        && (path == "spec" || path.starts_with("spec."))
        && !path.contains(char::is_whitespace)
    {
        return FieldError {
            path: path.to_string(),
            message: rest.to_string(),
        };
    }
    FieldError {
        path: "spec".into(),
        message: message.to_string(),
    }
}

/// Core's semantic rules (what `orch validate` checks beyond the schema) on the resource's
/// spec, as the job file `metadata.name` + spec would be.
pub fn validate(job: &OrchJob) -> Result<(), Vec<FieldError>> {
    let file = OrchJobFile {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        metadata: ObjectMeta {
            name: job.metadata.name.clone().unwrap_or_default(),
            namespace: job.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        spec: job.spec.0.clone(),
    };
    let errors = orch_core::load::rules(&file);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Tasks per state.
pub fn task_counts<'a>(tasks: impl IntoIterator<Item = &'a TaskRecord>) -> TaskCounts {
    let mut c = TaskCounts::default();
    for t in tasks {
        c.total = c.total.saturating_add(1);
        let slot = match t.state {
            TaskState::Pending => &mut c.pending,
            TaskState::Dispatched => &mut c.dispatched,
            TaskState::Running => &mut c.running,
            TaskState::Retrying => &mut c.retrying,
            TaskState::Succeeded => &mut c.succeeded,
            TaskState::Failed => &mut c.failed,
            TaskState::Cancelled => &mut c.cancelled,
        };
        *slot = slot.saturating_add(1);
    }
    c
}

/// Attempts of `tasks`, from their rows (the attempt history holds the details; this needs no
/// read of it).
pub fn attempt_counts<'a>(tasks: impl IntoIterator<Item = &'a TaskRecord>) -> AttemptCounts {
    let mut c = AttemptCounts::default();
    for t in tasks {
        c.total = c.total.saturating_add(t.attempt);
        c.again = c.again.saturating_add(t.attempt.saturating_sub(1));
        c.not_counted = c.not_counted.saturating_add(t.free_attempts);
    }
    c
}

/// The reason of `Failed=True`, from the job's phase and the category of its message.
fn failure_reason(phase: model::JobPhase, message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if phase == model::JobPhase::Cancelled {
        reason::CANCELLED
    } else if m.contains("above the tolerance") {
        reason::TOO_MANY_FAILED_ITEMS
    } else if m.contains("aggregat") || m.contains("merge") {
        reason::AGGREGATION_FAILED
    } else {
        reason::JOB_FAILED
    }
}

fn condition(
    r#type: JobConditionType,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) -> JobCondition {
    JobCondition {
        r#type,
        status,
        reason: Some(reason.to_string()),
        message: (!message.is_empty()).then(|| bounded(message)),
        last_transition_time: None,
        observed_generation: None,
    }
}

/// Sets each condition's generation and `lastTransitionTime`: the previous time when the
/// previous status had the same condition with the same status, `now` otherwise.
fn stamp(
    mut conditions: Vec<JobCondition>,
    previous: Option<&OrchJobStatus>,
    generation: i64,
    now: &str,
) -> Vec<JobCondition> {
    for c in &mut conditions {
        let kept = previous
            .and_then(|p| p.conditions.iter().find(|o| o.r#type == c.r#type))
            .filter(|o| o.status == c.status)
            .and_then(|o| o.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or_else(|| now.to_string()));
        c.observed_generation = Some(generation);
    }
    conditions
}

/// `text` cut to at most [`MAX_MESSAGE_LEN`] bytes (on a character boundary), marked with `…`.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_LEN {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE_LEN - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
