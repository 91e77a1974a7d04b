use super::*;
use orch_core::model::{SCHEMA_VERSION, TaskError};

const T0: &str = "2026-11-26T10:00:00Z";
const T1: &str = "2026-11-26T10:01:00Z";
const T2: &str = "2026-11-26T10:02:00Z";
const T3: &str = "2026-11-26T10:03:00Z";
const T4: &str = "2026-11-26T10:04:00Z";
/// When the test job's record was created, before any of the times above (plus 123 ms, which
/// RFC 3339 to the second drops).
const CREATED_MS: u64 = 1_795_687_080_123;
const CREATED: &str = "2026-11-26T09:58:00Z";
/// When the test job's record says it finished, between T3 and T4.
const FINISHED_MS: u64 = 1_795_687_410_000;
const FINISHED: &str = "2026-11-26T10:03:30Z";

const EXAMPLE: &str = include_str!("../../../examples/reviews-sentiment/job.yaml");

fn file() -> OrchJobFile {
    serde_yaml::from_str(EXAMPLE).unwrap()
}

fn resource() -> OrchJob {
    serde_yaml::from_str(EXAMPLE).unwrap()
}

fn record(phase: model::JobPhase, message: Option<&str>) -> JobRecord {
    JobRecord {
        schema_version: SCHEMA_VERSION,
        id: "reviews-sentiment-1".into(),
        phase,
        spec: file(),
        input_fingerprint: "fp".into(),
        total_tasks: 4,
        total_items: 1000,
        created_at: CREATED_MS,
        updated_at: CREATED_MS,
        finished_at: None,
        message: message.map(str::to_string),
        cancel_requested: false,
        next_group: 0,
        manifest_sha256: None,
        version: 1,
    }
}

fn tasks(states: &[TaskState]) -> Vec<TaskRecord> {
    states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut t = TaskRecord::new("reviews-sentiment-1", i as u32, 250, 0);
            t.state = *s;
            if *s == TaskState::Succeeded {
                t.items_ok = 248;
                t.items_failed = 2;
            }
            t
        })
        .collect()
}

fn cond(s: &OrchJobStatus, t: JobConditionType) -> Option<&JobCondition> {
    s.conditions.iter().find(|c| c.r#type == t)
}

fn is(s: &OrchJobStatus, t: JobConditionType, status: ConditionStatus, why: &str) {
    let c = cond(s, t).unwrap_or_else(|| panic!("no {t:?} condition in {s:?}"));
    assert_eq!(c.status, status, "{t:?}");
    assert_eq!(c.reason.as_deref(), Some(why), "{t:?}");
    assert!(c.message.as_deref().is_some_and(|m| !m.is_empty()), "{t:?}");
}

fn ltt(s: &OrchJobStatus, t: JobConditionType) -> &str {
    cond(s, t).unwrap().last_transition_time.as_deref().unwrap()
}

use ConditionStatus::{False, True};
use JobConditionType::{Complete, Failed, Progressing, Suspended};
use TaskState as S;

#[test]
fn pending_running_aggregating_succeeded() {
    // No job record yet.
    let s0 = job_status(None, &[], 1, None, T0);
    assert_eq!(s0.phase, Some(JobPhase::Pending));
    is(&s0, Progressing, False, "Pending");
    assert_eq!(s0.start_time, None);
    assert_eq!(s0.completion_time, None);
    assert!(cond(&s0, Suspended).is_none());

    // Planned, nothing dispatched: running, started when its record was created.
    let job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Pending; 4]);
    let s1 = job_status(Some(&job), &t, 1, Some(&s0), T1);
    assert_eq!(s1.phase, Some(JobPhase::Running));
    is(&s1, Progressing, True, "Running");
    assert_eq!(ltt(&s1, Progressing), T1, "False → True is a transition");
    assert_eq!(s1.start_time.as_deref(), Some(CREATED));
    assert_eq!(s1.tasks.unwrap().pending, 4);
    assert_eq!(s1.items.unwrap().total, 1000);

    // Tasks under way: startTime unchanged, Progressing keeps its time.
    let t = tasks(&[S::Running, S::Retrying, S::Succeeded, S::Pending]);
    let s2 = job_status(Some(&job), &t, 1, Some(&s1), T2);
    assert_eq!(s2.start_time.as_deref(), Some(CREATED));
    assert_eq!(ltt(&s2, Progressing), T1);
    let c = s2.tasks.unwrap();
    assert_eq!(
        (c.total, c.pending, c.running, c.retrying, c.succeeded),
        (4, 1, 1, 1, 1)
    );
    let i = s2.items.unwrap();
    assert_eq!((i.total, i.ok, i.failed, i.retrying), (1000, 248, 2, 250));

    // Aggregating: still progressing (same status, so same time), start time kept.
    let job = record(model::JobPhase::Aggregating, None);
    let t = tasks(&[S::Succeeded; 4]);
    let s3 = job_status(Some(&job), &t, 1, Some(&s2), T3);
    assert_eq!(s3.phase, Some(JobPhase::Running));
    is(&s3, Progressing, True, "Aggregating");
    assert_eq!(ltt(&s3, Progressing), T1);
    assert_eq!(s3.start_time.as_deref(), Some(CREATED));
    assert_eq!(s3.completion_time, None);
    assert_eq!(s3.output, None);

    // Succeeded.
    let job = record(
        model::JobPhase::Succeeded,
        Some("992 of 1000 items succeeded, 8 failed (0.80 %)"),
    );
    let s4 = job_status(Some(&job), &t, 1, Some(&s3), T4);
    assert_eq!(s4.phase, Some(JobPhase::Succeeded));
    is(&s4, Progressing, False, "Completed");
    is(&s4, Complete, True, "Succeeded");
    assert!(cond(&s4, Failed).is_none());
    assert_eq!(ltt(&s4, Progressing), T4);
    assert_eq!(ltt(&s4, Complete), T4);
    assert_eq!(s4.start_time.as_deref(), Some(CREATED));
    // A record without its finish time: when the operator saw the end.
    assert_eq!(s4.completion_time.as_deref(), Some(T4));
    assert_eq!(s4.output.as_deref(), Some("out/"));
    let i = s4.items.unwrap();
    assert_eq!((i.ok, i.failed), (992, 8));

    // Reconciling again later changes nothing: every time is kept.
    let again = job_status(Some(&job), &t, 1, Some(&s4), "2026-11-26T11:00:00Z");
    assert_eq!(again, s4);
}

#[test]
fn running_to_failed_with_too_many_failed_items() {
    let job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Running, S::Failed, S::Succeeded, S::Succeeded]);
    let s1 = job_status(Some(&job), &t, 1, None, T1);
    is(&s1, Progressing, True, "Running");
    assert_eq!(s1.items.unwrap().failed, 250 + 2 + 2);

    let job = record(
        model::JobPhase::Failed,
        Some(
            "254 of 1000 items failed (25.40 %), above the tolerance of 2 %; 1 task(s) failed after all attempts, first: task 1 (boom)",
        ),
    );
    let s2 = job_status(Some(&job), &t, 1, Some(&s1), T2);
    assert_eq!(s2.phase, Some(JobPhase::Failed));
    is(&s2, Progressing, False, "Failed");
    is(&s2, Failed, True, "TooManyFailedItems");
    assert!(cond(&s2, Complete).is_none());
    assert!(
        cond(&s2, Failed)
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("above the tolerance")
    );
    assert_eq!(s2.completion_time.as_deref(), Some(T2));
    assert_eq!(s2.start_time.as_deref(), Some(CREATED));
    assert_eq!(s2.output, None);
}

#[test]
fn failure_reasons_follow_the_message_category() {
    let t = tasks(&[S::Succeeded; 4]);
    let job = record(
        model::JobPhase::Failed,
        Some("final merge failed after all attempts"),
    );
    is(
        &job_status(Some(&job), &t, 1, None, T1),
        Failed,
        True,
        "AggregationFailed",
    );
    let job = record(model::JobPhase::Failed, Some("something else"));
    is(
        &job_status(Some(&job), &t, 1, None, T1),
        Failed,
        True,
        "JobFailed",
    );
}

#[test]
fn running_to_cancelled() {
    let job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Running, S::Pending, S::Succeeded, S::Succeeded]);
    let s1 = job_status(Some(&job), &t, 1, None, T1);
    let job = record(model::JobPhase::Cancelled, Some("cancelled on request"));
    let t = tasks(&[S::Cancelled, S::Cancelled, S::Succeeded, S::Succeeded]);
    let s2 = job_status(Some(&job), &t, 1, Some(&s1), T2);
    assert_eq!(s2.phase, Some(JobPhase::Failed));
    is(&s2, Progressing, False, "Cancelled");
    is(&s2, Failed, True, "Cancelled");
    assert_eq!(s2.tasks.unwrap().cancelled, 2);
    assert_eq!(s2.completion_time.as_deref(), Some(T2));
}

#[test]
fn suspended_and_resumed() {
    let mut job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Running, S::Pending, S::Pending, S::Pending]);
    let s1 = job_status(Some(&job), &t, 1, None, T1);
    assert!(
        cond(&s1, Suspended).is_none(),
        "no Suspended before a suspend"
    );

    job.spec.spec.suspend = true;
    let s2 = job_status(Some(&job), &t, 2, Some(&s1), T2);
    assert_eq!(s2.phase, Some(JobPhase::Suspended));
    is(&s2, Suspended, True, "Paused");
    is(&s2, Progressing, False, "Suspended");
    assert_eq!(ltt(&s2, Suspended), T2);
    assert_eq!(ltt(&s2, Progressing), T2);

    // Still suspended: no transition, times kept.
    let s3 = job_status(Some(&job), &t, 2, Some(&s2), T3);
    assert_eq!(ltt(&s3, Suspended), T2);
    assert_eq!(ltt(&s3, Progressing), T2);

    job.spec.spec.suspend = false;
    let s4 = job_status(Some(&job), &t, 3, Some(&s3), T4);
    assert_eq!(s4.phase, Some(JobPhase::Running));
    is(&s4, Suspended, False, "Resumed");
    is(&s4, Progressing, True, "Running");
    assert_eq!(ltt(&s4, Suspended), T4);
    assert_eq!(ltt(&s4, Progressing), T4);
    assert_eq!(s4.start_time.as_deref(), Some(CREATED));

    // Resumed and still running: times kept.
    let s5 = job_status(Some(&job), &t, 3, Some(&s4), "2026-11-26T10:05:00Z");
    assert_eq!(ltt(&s5, Suspended), T4);
    assert_eq!(ltt(&s5, Progressing), T4);
}

/// The times are the job's own, from its record: not when an operator first looked at the
/// object (a restarted operator, or one that saw the job late, must not move them).
#[test]
fn start_and_completion_times_are_the_records() {
    let mut job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Pending; 4]);
    // First looked at long after the job started, e.g. by a new operator replica.
    let s1 = job_status(Some(&job), &t, 1, None, T3);
    assert_eq!(s1.start_time.as_deref(), Some(CREATED));
    // A status written by an operator that used its own clock is corrected.
    let mut stale = s1.clone();
    stale.start_time = Some(T1.into());
    let s2 = job_status(Some(&job), &t, 1, Some(&stale), T3);
    assert_eq!(s2.start_time.as_deref(), Some(CREATED));
    // The end is when the record says the job finished, whenever the operator notices.
    job.phase = model::JobPhase::Succeeded;
    job.finished_at = Some(FINISHED_MS);
    let t = tasks(&[S::Succeeded; 4]);
    let s3 = job_status(Some(&job), &t, 1, Some(&s2), T4);
    assert_eq!(s3.completion_time.as_deref(), Some(FINISHED));
    assert_eq!(s3.start_time.as_deref(), Some(CREATED));
    // Not a time: the previous status stands in.
    assert_eq!(rfc3339(u64::MAX), None);
    assert_eq!(rfc3339(CREATED_MS).as_deref(), Some(CREATED));
}

/// A paused job that is resumed and then cancelled did not end "while suspended": the
/// `Suspended` condition says how and when it ended.
#[test]
fn resumed_then_cancelled_says_so() {
    let mut job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Running, S::Pending, S::Pending, S::Pending]);
    let s1 = job_status(Some(&job), &t, 1, None, T1);
    job.spec.spec.suspend = true;
    let s2 = job_status(Some(&job), &t, 2, Some(&s1), T2);
    is(&s2, Suspended, True, "Paused");
    job.spec.spec.suspend = false;
    let s3 = job_status(Some(&job), &t, 3, Some(&s2), T3);
    is(&s3, Suspended, False, "Resumed");

    job.phase = model::JobPhase::Cancelled;
    job.message = Some("cancelled on request".into());
    let t = tasks(&[S::Cancelled, S::Cancelled, S::Cancelled, S::Cancelled]);
    let s4 = job_status(Some(&job), &t, 3, Some(&s3), T4);
    is(&s4, Suspended, False, "Cancelled");
    let message = cond(&s4, Suspended).unwrap().message.clone().unwrap();
    assert_eq!(message, "the job was cancelled after it was resumed");
    assert_eq!(ltt(&s4, Suspended), T3, "still False: no transition");
    is(&s4, Failed, True, "Cancelled");
    // Said once and kept, even if spec.suspend is edited after the end.
    job.spec.spec.suspend = true;
    let s5 = job_status(Some(&job), &t, 4, Some(&s4), "2026-11-26T10:05:00Z");
    assert_eq!(
        cond(&s5, Suspended),
        cond(&s4, Suspended)
            .map(|c| {
                let mut c = c.clone();
                c.observed_generation = Some(4);
                c
            })
            .as_ref()
    );
}

#[test]
fn paused_then_ended_says_it_ended_while_paused() {
    let mut job = record(model::JobPhase::Running, None);
    job.spec.spec.suspend = true;
    let t = tasks(&[S::Running, S::Pending, S::Pending, S::Pending]);
    let s1 = job_status(Some(&job), &t, 2, None, T1);
    is(&s1, Suspended, True, "Paused");
    job.phase = model::JobPhase::Cancelled;
    let s2 = job_status(Some(&job), &t, 2, Some(&s1), T2);
    is(&s2, Suspended, False, "Cancelled");
    assert_eq!(
        cond(&s2, Suspended).unwrap().message.as_deref(),
        Some("the job was cancelled while paused (spec.suspend was true)")
    );
    job.phase = model::JobPhase::Succeeded;
    let s3 = job_status(Some(&job), &t, 2, Some(&s1), T2);
    is(&s3, Suspended, False, "Completed");
    // Never paused: no Suspended condition at the end either.
    let plain = record(model::JobPhase::Succeeded, None);
    assert!(cond(&job_status(Some(&plain), &t, 1, None, T1), Suspended).is_none());
}

/// `Progressing`'s message counts what `status.tasks` counts, state by state: a dispatched
/// task (submitted, its worker not started) is not called running.
#[test]
fn the_progress_message_and_the_task_counts_agree() {
    let job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Dispatched, S::Dispatched, S::Pending, S::Succeeded]);
    let s = job_status(Some(&job), &t, 1, None, T1);
    let counts = s.tasks.unwrap();
    assert_eq!((counts.running, counts.dispatched), (0, 2));
    let message = cond(&s, Progressing).unwrap().message.clone().unwrap();
    assert_eq!(message, "1 of 4 tasks succeeded: 2 dispatched, 1 pending");
    assert!(!message.contains("running"), "{message}");
    let t = tasks(&[S::Running, S::Retrying, S::Failed, S::Succeeded]);
    let s = job_status(Some(&job), &t, 1, None, T1);
    assert_eq!(
        cond(&s, Progressing).unwrap().message.as_deref(),
        Some("1 of 4 tasks succeeded: 1 running, 1 retrying, 1 failed")
    );
}

/// A driver's refusal that names its field is listed under that field, once: not
/// `spec: spec.input.uri: …`.
#[test]
fn a_driver_refusal_is_listed_under_its_own_field() {
    let e = rejection("spec.input.uri: `s3://b/in/*.jsonl` matches no object");
    assert_eq!(e.path, "spec.input.uri");
    assert_eq!(
        e.to_string(),
        "spec.input.uri: `s3://b/in/*.jsonl` matches no object"
    );
    let s = validation_failure(1, T1, &[e]);
    let message = cond(&s, Failed).unwrap().message.clone().unwrap();
    assert!(
        message.ends_with("): spec.input.uri: `s3://b/in/*.jsonl` matches no object"),
        "{message}"
    );
    // Final: waiting for completionTime ends here too.
    assert_eq!(s.completion_time.as_deref(), Some(T1));
    assert!(!message.contains("spec: spec"), "{message}");
    // A message without a field is about the spec as a whole.
    let e = rejection("no worker program for the Slurm tasks");
    assert_eq!(e.to_string(), "spec: no worker program for the Slurm tasks");
    let e = rejection("spec: already prefixed");
    assert_eq!(e.to_string(), "spec: already prefixed");
}

#[test]
fn last_transition_time_changes_only_when_the_status_does() {
    let job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Running; 4]);
    let s1 = job_status(Some(&job), &t, 1, None, T1);
    // Same status, different reason and message: the time stays.
    let job = record(model::JobPhase::Aggregating, None);
    let s2 = job_status(Some(&job), &t, 1, Some(&s1), T2);
    assert_ne!(
        cond(&s1, Progressing).unwrap().reason,
        cond(&s2, Progressing).unwrap().reason
    );
    assert_eq!(ltt(&s2, Progressing), T1);
    // A previous condition without a time gets `now`.
    let mut s3 = s2.clone();
    s3.conditions[0].last_transition_time = None;
    let s4 = job_status(Some(&job), &t, 1, Some(&s3), T3);
    assert_eq!(ltt(&s4, Progressing), T3);
}

#[test]
fn observed_generation_follows_generation() {
    let job = record(model::JobPhase::Running, None);
    let t = tasks(&[S::Running; 4]);
    let s1 = job_status(Some(&job), &t, 1, None, T1);
    assert_eq!(s1.observed_generation, Some(1));
    let s2 = job_status(Some(&job), &t, 7, Some(&s1), T2);
    assert_eq!(s2.observed_generation, Some(7));
    assert!(
        s2.conditions
            .iter()
            .all(|c| c.observed_generation == Some(7))
    );
    assert_eq!(ltt(&s2, Progressing), T1);
    let bad = validation_failure(
        9,
        T3,
        &[FieldError {
            path: "a".into(),
            message: "b".into(),
        }],
    );
    assert_eq!(bad.observed_generation, Some(9));
    assert!(
        bad.conditions
            .iter()
            .all(|c| c.observed_generation == Some(9))
    );
}

#[test]
fn a_valid_resource_validates() {
    validate(&resource()).unwrap();
}

#[test]
fn invalid_spec_the_schema_accepts() {
    // An int-or-string quantity: any string passes the CRD schema, core's rules parse it.
    let mut job = resource();
    job.spec.0.batch.max_bytes = "lots".into();
    job.spec.0.retry.backoff.initial = "soon".into();
    // The checked-in CRD's schema accepts the spec...
    let crd: serde_json::Value =
        serde_yaml::from_str(include_str!("../../../crds/orch.dev_orchjobs.yaml")).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let spec = serde_json::to_value(&job.spec).unwrap();
    assert!(jsonschema::validator_for(schema).unwrap().is_valid(&spec));
    // ...core's semantic rules do not.
    let errors = validate(&job).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"spec.batch.maxBytes"), "{paths:?}");
    assert!(paths.contains(&"spec.retry.backoff.initial"), "{paths:?}");

    let s = validation_failure(2, T1, &errors);
    assert_eq!(s.phase, Some(JobPhase::Failed));
    is(&s, Failed, True, "InvalidSpec");
    is(&s, Progressing, False, "InvalidSpec");
    assert_eq!(ltt(&s, Failed), T1);
    let m = cond(&s, Failed).unwrap().message.clone().unwrap();
    assert!(m.contains("spec.batch.maxBytes: "), "{m}");
    assert!(m.starts_with("the spec is invalid (2 problems)"), "{m}");
    assert_eq!(s.tasks, None);

    // Fixed in a new generation: the conditions flip, with new times.
    let job = record(model::JobPhase::Running, None);
    let s2 = job_status(Some(&job), &tasks(&[S::Running; 4]), 3, Some(&s), T2);
    assert!(cond(&s2, Failed).is_none());
    is(&s2, Progressing, True, "Running");
    assert_eq!(ltt(&s2, Progressing), T2);
    assert_eq!(s2.observed_generation, Some(3));
}

#[test]
fn validation_failure_lists_five_errors_and_counts_the_rest() {
    let errors: Vec<FieldError> = (0..12)
        .map(|i| FieldError {
            path: format!("spec.f{i}"),
            message: "x".repeat(1000),
        })
        .collect();
    let s = validation_failure(1, T1, &errors);
    let m = cond(&s, Failed).unwrap().message.clone().unwrap();
    assert!(m.len() <= MAX_MESSAGE_LEN, "{}", m.len());
    assert!(m.starts_with("the spec is invalid (12 problems): spec.f0: "));
    let few = validation_failure(1, T1, &errors[..7]);
    let short: Vec<FieldError> = errors
        .iter()
        .map(|e| FieldError {
            path: e.path.clone(),
            message: "bad".into(),
        })
        .collect();
    let m = cond(&validation_failure(1, T1, &short), Failed)
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(m.ends_with("spec.f4: bad; and 7 more"), "{m}");
    assert!(!m.contains("spec.f5"), "{m}");
    assert_eq!(few.phase, Some(JobPhase::Failed));
}

#[test]
fn status_of_a_million_tasks_is_under_4_kb() {
    let mut job = record(
        model::JobPhase::Failed,
        Some(&format!(
            "{} above the tolerance of 2 %",
            "a very long reason ".repeat(1000)
        )),
    );
    job.total_tasks = 1_000_000;
    job.total_items = 250_000_000;
    let mut t = TaskRecord::new("", 0, 250, 0);
    t.state = TaskState::Failed;
    let mut tasks = vec![t; 1_000_000];
    for (i, t) in tasks.iter_mut().enumerate() {
        t.id = i as u32;
        if i % 3 == 0 {
            t.state = TaskState::Succeeded;
        }
    }
    // One task with a huge error: the status does not copy it.
    tasks[1].last_error = Some(TaskError {
        kind: model::ErrorKind::Permanent,
        message: "x".repeat(100_000),
        attempt: 3,
        limit: None,
    });
    let s = job_status(Some(&job), &tasks, i64::MAX, None, T1);
    assert_eq!(s.tasks.unwrap().total, 1_000_000);
    let bytes = serde_json::to_vec(&s).unwrap();
    assert!(bytes.len() < 4096, "{} bytes", bytes.len());
}

#[test]
fn messages_are_cut_on_a_character_boundary() {
    let long = "é".repeat(MAX_MESSAGE_LEN);
    let b = bounded(&long);
    assert!(b.len() <= MAX_MESSAGE_LEN);
    assert!(b.ends_with('…'));
    assert_eq!(bounded("short"), "short");
}

#[test]
fn attempts_count_runs_again_and_those_that_cost_no_attempt() {
    let job = record(model::JobPhase::Running, None);
    let mut t = tasks(&[S::Succeeded, S::Running, S::Retrying, S::Pending]);
    // Task 0 ran once; task 1 was evicted once and runs again free; task 2 failed twice.
    t[0].attempt = 1;
    t[1].attempt = 2;
    t[1].free_attempts = 1;
    t[2].attempt = 3;
    // An aggregation task's attempts are not the job's work.
    let mut merge = TaskRecord::new("reviews-sentiment-1", 9, 0, 0);
    merge.kind = model::TaskKind::Final;
    merge.attempt = 2;
    t.push(merge);
    let s = job_status(Some(&job), &t, 1, None, T1);
    assert_eq!(
        s.attempts,
        Some(AttemptCounts {
            total: 6,
            again: 3,
            not_counted: 1
        })
    );
}
