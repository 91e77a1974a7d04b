//! Engine tests: hand-written scenarios, and a property test that runs the engine against a
//! simulated store, executor, queue and misbehaving workers (with coordinator restarts).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::model::{JobRecord, SCHEMA_VERSION, TaskRecord};
use crate::spec::OrchJobFile;

fn job_file(max_attempts: u32) -> OrchJobFile {
    let yaml = format!(
        r#"
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: t}}
spec:
  input: {{uri: /in.jsonl}}
  handler: {{builtin: {{name: identity}}}}
  retry: {{maxAttempts: {max_attempts}, backoff: {{initial: 2s, factor: 2, max: 10s}}}}
"#
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn job(max_attempts: u32, tasks: u32) -> JobRecord {
    JobRecord {
        schema_version: SCHEMA_VERSION,
        id: "t-1".into(),
        phase: JobPhase::Running,
        spec: job_file(max_attempts),
        input_fingerprint: "f".into(),
        total_tasks: tasks,
        total_items: u64::from(tasks) * 10,
        created_at: 0,
        updated_at: 0,
        finished_at: None,
        message: None,
        cancel_requested: false,
        next_group: 0,
        manifest_sha256: None,
        version: 1,
    }
}

fn tasks(n: u32) -> Vec<TaskRecord> {
    (0..n).map(|i| TaskRecord::new("t-1", i, 10, 0)).collect()
}

fn cfg(max_attempts: u32) -> EngineConfig {
    EngineConfig::from_spec(&job_file(max_attempts).spec)
}

fn observe<'a>(
    now: u64,
    job: &'a JobRecord,
    tasks: &'a [TaskRecord],
    exec: &'a HashMap<u32, ExecState>,
    due: &'a [DueRetry],
) -> Observation<'a> {
    Observation {
        now,
        job,
        tasks,
        exec,
        due_retries: due,
        gone_workers: &NONE_GONE,
    }
}

static NONE_GONE: std::sync::LazyLock<HashSet<u32>> = std::sync::LazyLock::new(HashSet::new);

#[test]
fn pending_tasks_are_dispatched_as_one_group() {
    let j = job(3, 4);
    let t = tasks(4);
    let d = decide(&cfg(3), observe(5, &j, &t, &HashMap::new(), &[]));
    assert_eq!(d.dispatches.len(), 1);
    let group = &d.dispatches[0];
    assert_eq!(group.tasks.len(), 4);
    assert!(
        group
            .tasks
            .iter()
            .all(|t| t.state == TaskState::Dispatched && t.attempt == 1)
    );
    assert_eq!(d.job.as_ref().unwrap().next_group, 1);
    assert!(!d.plan_aggregation);
}

#[test]
fn a_lost_attempt_is_retried_with_backoff_then_fails_at_max_attempts() {
    let c = cfg(2);
    let j = job(2, 1);
    let mut t = tasks(1);
    t[0].state = TaskState::Running;
    t[0].attempt = 1;
    let exec = HashMap::from([(
        0,
        ExecState::Exited {
            code: None,
            signal: Some(9),
        },
    )]);
    let d = decide(&c, observe(1000, &j, &t, &exec, &[]));
    let f = &d.failures[0];
    assert_eq!(f.task.state, TaskState::Retrying);
    let (req, delay) = f.retry.clone().unwrap();
    assert_eq!(req.attempt, 2);
    assert!((1000..=2000).contains(&delay), "delay {delay}");
    assert!(
        f.task
            .last_error
            .as_ref()
            .unwrap()
            .message
            .contains("signal 9")
    );

    t[0].attempt = 2;
    let d = decide(&c, observe(9000, &j, &t, &exec, &[]));
    assert_eq!(d.failures[0].task.state, TaskState::Failed);
    assert!(d.failures[0].retry.is_none());
}

#[test]
fn a_due_retry_dispatches_the_next_attempt_and_stale_ones_are_acked() {
    let j = job(3, 2);
    let mut t = tasks(2);
    t[0].state = TaskState::Retrying;
    t[0].attempt = 1;
    t[0].retry_at = Some(100);
    t[1].state = TaskState::Succeeded;
    t[1].attempt = 1;
    let due = [
        DueRetry {
            request: RetryRequest {
                job: "t-1".into(),
                task: 0,
                attempt: 2,
            },
            receipt: "r0".into(),
        },
        DueRetry {
            request: RetryRequest {
                job: "t-1".into(),
                task: 1,
                attempt: 2,
            },
            receipt: "r1".into(),
        },
    ];
    let d = decide(&cfg(3), observe(200, &j, &t, &HashMap::new(), &due));
    assert_eq!(d.dispatches[0].tasks.len(), 1);
    assert_eq!(d.dispatches[0].tasks[0].id, 0);
    assert_eq!(d.dispatches[0].tasks[0].attempt, 2);
    let mut acks = d.acks.clone();
    acks.sort();
    assert_eq!(acks, vec!["r0".to_string(), "r1".to_string()]);
}

#[test]
fn a_retrying_task_waits_for_its_message_until_the_grace_period() {
    let c = cfg(3);
    let j = job(3, 1);
    let mut t = tasks(1);
    t[0].state = TaskState::Retrying;
    t[0].attempt = 1;
    t[0].retry_at = Some(1000);
    let none = HashMap::new();
    assert!(
        decide(&c, observe(2000, &j, &t, &none, &[]))
            .dispatches
            .is_empty()
    );
    let late = 1000 + c.retry_grace_ms;
    assert_eq!(
        decide(&c, observe(late, &j, &t, &none, &[]))
            .dispatches
            .len(),
        1
    );
}

#[test]
fn suspend_dispatches_nothing() {
    let mut j = job(3, 2);
    j.spec.spec.suspend = true;
    let d = decide(&cfg(3), observe(0, &j, &tasks(2), &HashMap::new(), &[]));
    assert!(d.dispatches.is_empty());
    assert!(!d.plan_aggregation);
}

#[test]
fn cancel_stops_running_tasks_and_ends_the_job() {
    let mut j = job(3, 2);
    j.cancel_requested = true;
    let mut t = tasks(2);
    t[0].state = TaskState::Running;
    t[0].executor_id = Some("pid-1".into());
    let d = decide(&cfg(3), observe(0, &j, &t, &HashMap::new(), &[]));
    assert_eq!(d.cancel, vec![(0, 0, Some("pid-1".to_string()))]);
    assert!(d.updates.iter().all(|u| u.state == TaskState::Cancelled));
    assert_eq!(d.job.unwrap().phase, JobPhase::Cancelled);
}

#[test]
fn expired_lease_counts_as_lost_and_unknown_dispatch_too() {
    let c = cfg(3);
    let j = job(3, 2);
    let mut t = tasks(2);
    t[0].state = TaskState::Running;
    t[0].attempt = 1;
    t[0].lease_expiry = Some(1000);
    t[1].state = TaskState::Dispatched;
    t[1].attempt = 1;
    let exec = HashMap::from([(0, ExecState::Running), (1, ExecState::Unknown)]);
    let d = decide(&c, observe(1000, &j, &t, &exec, &[]));
    assert_eq!(
        d.failures.len(),
        1,
        "unknown dispatched task is lost at once"
    );
    let d = decide(&c, observe(1001 + c.lease_grace_ms, &j, &t, &exec, &[]));
    assert_eq!(d.failures.len(), 2);
    assert_eq!(d.cancel, vec![(0, 1, None)], "the hung worker is stopped");
}

#[test]
fn transient_losses_retry_at_once_without_using_an_attempt() {
    let c = cfg(1);
    let j = job(1, 1);
    let mut t = tasks(1);
    t[0].state = TaskState::Running;
    t[0].attempt = 1;
    t[0].lease_owner = None;
    t[0].last_error = Some(TaskError {
        kind: ErrorKind::Transient,
        message: "stopped by a signal".into(),
        attempt: 1,
        limit: None,
    });
    // Slurm requeued it (preemption, `scontrol requeue`): queued again, the attempt is over
    // at once — the lease need not run out, and the requeued task is stopped.
    let requeued = HashMap::from([(0, ExecState::Queued)]);
    let d = decide(&c, observe(7, &j, &t, &requeued, &[]));
    assert_eq!(d.failures.len(), 1, "{d:?}");
    assert_eq!(d.cancel, vec![(0, 1, None)]);
    // Still running after it released its claim: its exit is still to come.
    let running = HashMap::from([(0, ExecState::Running)]);
    assert!(
        decide(&c, observe(7, &j, &t, &running, &[]))
            .failures
            .is_empty()
    );
    let d = decide(&c, observe(7, &j, &t, &HashMap::new(), &[]));
    let f = &d.failures[0];
    assert_eq!(
        f.task.state,
        TaskState::Retrying,
        "max_attempts is 1, yet it is retried"
    );
    assert_eq!(f.task.free_attempts, 1);
    assert_eq!(f.retry.as_ref().unwrap().1, 0, "no backoff");
    // Attempt 2 may start although maxAttempts is 1: attempt 1 did not count.
    let mut r = f.task.clone();
    r.version += 1;
    let due = [DueRetry {
        request: f.retry.clone().unwrap().0,
        receipt: "m".into(),
    }];
    let d = decide(&c, observe(8, &j, &[r], &HashMap::new(), &due));
    assert_eq!(d.dispatches[0].tasks[0].attempt, 2);
}

#[test]
fn a_limit_the_executor_saw_names_the_failure_and_uses_an_attempt() {
    let c = cfg(3);
    let j = job(3, 1);
    let mut t = tasks(1);
    t[0].state = TaskState::Running;
    t[0].attempt = 1;
    t[0].lease_owner = None;
    // The worker saw only the effect (a stop signal, a transient loss)...
    t[0].last_error = Some(TaskError {
        kind: ErrorKind::Transient,
        message: "stopped by a signal".into(),
        attempt: 1,
        limit: None,
    });
    // ...the executor saw the cause.
    let exec = HashMap::from([(
        0,
        ExecState::Failed {
            reason: ExecFailure::OutOfMemory,
            message: "Slurm: OUT_OF_MEMORY".into(),
        },
    )]);
    let d = decide(&c, observe(7, &j, &t, &exec, &[]));
    let error = d.failures[0].task.last_error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Infrastructure, "{error:?}");
    assert!(
        error.message.starts_with("out of memory") && error.message.contains("stopped by a signal"),
        "{error:?}"
    );
    assert_eq!(d.failures[0].task.free_attempts, 0, "it counts");
    assert_eq!(
        error.limit,
        Some(LimitHit::Memory),
        "marked, not left to the text"
    );
}

#[test]
fn only_limits_the_executor_reports_are_marked() {
    let c = cfg(3);
    let j = job(3, 1);
    let mut t = tasks(1);
    t[0].state = TaskState::Running;
    t[0].attempt = 1;
    for (reason, limit) in [
        (ExecFailure::TimeLimit, Some(LimitHit::Time)),
        (ExecFailure::OutOfMemory, Some(LimitHit::Memory)),
        (ExecFailure::NodeFailure, None),
        (ExecFailure::Other, None),
    ] {
        let exec = HashMap::from([(
            0,
            ExecState::Failed {
                reason,
                // A message that names a limit does not make one.
                message: "OOMKilled: out of memory".into(),
            },
        )]);
        let d = decide(&c, observe(7, &j, &t, &exec, &[]));
        let error = d.failures[0].task.last_error.clone().unwrap();
        assert_eq!(error.limit, limit, "{reason:?}: {error:?}");
    }
    // Nor does a worker's own error that merely says so.
    t[0].last_error = Some(TaskError {
        kind: ErrorKind::Infrastructure,
        message: "time limit reached".into(),
        attempt: 1,
        limit: None,
    });
    let exited = HashMap::from([(
        0,
        ExecState::Exited {
            code: Some(1),
            signal: None,
        },
    )]);
    let d = decide(&c, observe(7, &j, &t, &exited, &[]));
    assert_eq!(d.failures[0].task.last_error.clone().unwrap().limit, None);
}

#[test]
fn a_released_claim_is_retried_without_waiting_for_the_lease() {
    let c = cfg(3);
    let j = job(3, 1);
    let mut t = tasks(1);
    t[0].state = TaskState::Running;
    t[0].attempt = 1;
    t[0].lease_owner = None;
    t[0].lease_expiry = Some(0);
    let unknown = HashMap::from([(0, ExecState::Unknown)]);
    let d = decide(&c, observe(1, &j, &t, &unknown, &[]));
    assert_eq!(d.failures.len(), 1);
    // While the process is still alive (finishing its checkpoint) the engine waits for it.
    let running = HashMap::from([(0, ExecState::Running)]);
    assert!(
        decide(&c, observe(1, &j, &t, &running, &[]))
            .failures
            .is_empty()
    );
}

#[test]
fn a_gone_worker_of_an_earlier_coordinator_is_lost_without_waiting_for_the_lease() {
    let c = cfg(3);
    let j = job(3, 1);
    let mut t = tasks(1);
    t[0].state = TaskState::Running;
    t[0].attempt = 1;
    t[0].lease_owner = Some("host-a:42".into());
    t[0].lease_expiry = Some(1_000_000);
    let unknown = HashMap::from([(0, ExecState::Unknown)]);
    let gone = HashSet::from([0]);
    let mut o = observe(1, &j, &t, &unknown, &[]);
    assert!(decide(&c, o).failures.is_empty(), "alive: its lease holds");
    o.gone_workers = &gone;
    let d = decide(&c, o);
    let error = d.failures[0].task.last_error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Infrastructure);
    assert!(error.message.contains("host-a:42"), "{error:?}");
    // An executor that still runs the attempt knows better than a guess about its owner.
    let running = HashMap::from([(0, ExecState::Running)]);
    let mut o = observe(1, &j, &t, &running, &[]);
    o.gone_workers = &gone;
    assert!(decide(&c, o).failures.is_empty());
}

#[test]
fn all_terminal_means_aggregate_and_verdict_follows_tolerance() {
    let mut j = job(3, 2);
    let mut t = tasks(2);
    for task in &mut t {
        task.state = TaskState::Succeeded;
        task.attempt = 1;
        task.items_ok = 9;
        task.items_failed = 1;
    }
    let c = cfg(3);
    let d = decide(&c, observe(0, &j, &t, &HashMap::new(), &[]));
    assert!(d.plan_aggregation);
    assert!(!d.finish);
    assert_eq!(d.job.as_ref().unwrap().phase, JobPhase::Aggregating);

    assert_eq!(verdict(&c, &j, &t, 1).phase, JobPhase::Failed);
    j.spec.spec.tolerance.max_failed_items_percent = 10.0;
    let c = EngineConfig::from_spec(&j.spec.spec);
    let done = verdict(&c, &j, &t, 1);
    assert_eq!(done.phase, JobPhase::Succeeded, "{:?}", done.message);
}

fn merge_task(id: u32, kind: TaskKind) -> TaskRecord {
    TaskRecord {
        kind,
        ..TaskRecord::new("t-1", id, 0, 0)
    }
}

/// Two work tasks done, then two merge groups of level 1, one of level 2 and the final merge.
fn aggregating() -> (JobRecord, Vec<TaskRecord>) {
    let mut j = job(2, 2);
    j.phase = JobPhase::Aggregating;
    let mut t = tasks(2);
    for task in &mut t {
        task.state = TaskState::Succeeded;
        task.attempt = 1;
        task.items_ok = 10;
    }
    t.extend([
        merge_task(2, TaskKind::Merge { level: 1 }),
        merge_task(3, TaskKind::Merge { level: 1 }),
        merge_task(4, TaskKind::Merge { level: 2 }),
        merge_task(5, TaskKind::Final),
    ]);
    (j, t)
}

#[test]
fn aggregation_runs_stage_by_stage_and_ends_with_the_final_merge() {
    let c = cfg(2);
    let (j, mut t) = aggregating();
    let d = decide(&c, observe(0, &j, &t, &HashMap::new(), &[]));
    assert!(!d.plan_aggregation && !d.finish);
    assert_eq!(d.dispatches.len(), 1);
    assert_eq!(d.dispatches[0].kind, TaskKind::Merge { level: 1 });
    let ids: Vec<u32> = d.dispatches[0].tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, [2, 3], "only the first level runs");

    // One group of level 1 still running: level 2 waits.
    t[2].state = TaskState::Succeeded;
    t[3].state = TaskState::Running;
    t[3].attempt = 1;
    let running = HashMap::from([(3, ExecState::Running)]);
    let d = decide(&c, observe(1, &j, &t, &running, &[]));
    assert!(d.dispatches.is_empty(), "{:?}", d.dispatches);

    t[3].state = TaskState::Succeeded;
    let d = decide(&c, observe(2, &j, &t, &HashMap::new(), &[]));
    assert_eq!(d.dispatches[0].kind, TaskKind::Merge { level: 2 });
    assert_eq!(d.dispatches[0].tasks[0].id, 4);

    t[4].state = TaskState::Succeeded;
    let d = decide(&c, observe(3, &j, &t, &HashMap::new(), &[]));
    assert_eq!(d.dispatches[0].kind, TaskKind::Final);

    t[5].state = TaskState::Succeeded;
    let d = decide(&c, observe(4, &j, &t, &HashMap::new(), &[]));
    assert!(d.finish && !d.plan_aggregation && d.dispatches.is_empty());
}

/// After `orch retry` a job runs again with its merge tasks reset to pending: once the work is
/// done, the aggregation is planned anew (the plan names the new attempts' files) before any
/// merge task starts; a redriven task that failed all its attempts counts as the attempt it
/// started from.
#[test]
fn a_retried_job_plans_its_aggregation_again_before_merging() {
    let c = cfg(2);
    let (mut j, mut t) = aggregating();
    j.phase = JobPhase::Running;
    t[1].state = TaskState::Running;
    t[1].attempt = 2;
    let running = HashMap::from([(1, ExecState::Running)]);
    let d = decide(&c, observe(0, &j, &t, &running, &[]));
    assert!(
        d.dispatches.is_empty() && !d.plan_aggregation && !d.finish,
        "{d:?}"
    );

    t[1].state = TaskState::Succeeded;
    let d = decide(&c, observe(1, &j, &t, &HashMap::new(), &[]));
    assert!(d.plan_aggregation, "{d:?}");
    assert!(d.dispatches.is_empty(), "no merge before the plan: {d:?}");
    assert_eq!(d.job.map(|j| j.phase), Some(JobPhase::Aggregating));

    j.phase = JobPhase::Aggregating;
    let d = decide(&c, observe(2, &j, &t, &HashMap::new(), &[]));
    assert!(!d.plan_aggregation);
    assert_eq!(d.dispatches[0].kind, TaskKind::Merge { level: 1 });

    t[1].state = TaskState::Failed;
    t[1].items_ok = 0;
    t[1].redrive = Some(crate::model::Redrive {
        from_attempt: 1,
        kinds: Vec::new(),
        items_ok: 7,
        items_failed: 3,
    });
    let counts = item_counts(&t);
    assert_eq!((counts.total, counts.ok, counts.failed), (20, 17, 3));
}

#[test]
fn a_failed_merge_task_is_retried_with_backoff_then_fails_the_job() {
    let c = cfg(2);
    let (j, mut t) = aggregating();
    for task in &mut t[2..4] {
        task.state = TaskState::Succeeded;
        task.attempt = 1;
    }
    t[4].state = TaskState::Running;
    t[4].attempt = 1;
    let crashed = HashMap::from([(
        4,
        ExecState::Exited {
            code: Some(1),
            signal: None,
        },
    )]);
    let d = decide(&c, observe(10, &j, &t, &crashed, &[]));
    assert_eq!(d.failures.len(), 1);
    let retry = &d.failures[0];
    assert_eq!(retry.task.state, TaskState::Retrying);
    assert!(
        retry
            .retry
            .as_ref()
            .is_some_and(|(r, delay)| r.task == 4 && *delay > 0)
    );

    // Out of attempts: the task fails, and with it the job; the rest is cancelled.
    t[4].state = TaskState::Failed;
    t[4].attempt = 2;
    t[4].last_error = Some(TaskError {
        kind: ErrorKind::Infrastructure,
        message: "worker exited with code 1".into(),
        attempt: 2,
        limit: None,
    });
    let d = decide(&c, observe(20, &j, &t, &HashMap::new(), &[]));
    let ended = d.job.expect("the job ends");
    assert_eq!(ended.phase, JobPhase::Failed);
    let message = ended.message.unwrap_or_default();
    assert!(
        message.starts_with("aggregation failed: merge level 2 task 4"),
        "{message}"
    );
    assert!(message.contains("worker exited with code 1"), "{message}");
    assert_eq!(d.updates.len(), 1, "the final merge is cancelled");
    assert_eq!(d.updates[0].state, TaskState::Cancelled);
    assert!(d.dispatches.is_empty());
}

#[test]
fn a_cancel_during_aggregation_stops_the_merge_tasks() {
    let c = cfg(2);
    let (mut j, mut t) = aggregating();
    t[2].state = TaskState::Running;
    t[2].attempt = 1;
    t[2].executor_id = Some("local:merge1:2:1".into());
    j.cancel_requested = true;
    let d = decide(&c, observe(0, &j, &t, &HashMap::new(), &[]));
    assert_eq!(d.cancel, [(2, 1, Some("local:merge1:2:1".into()))]);
    assert_eq!(d.updates.len(), 4, "every aggregation task is cancelled");
    assert_eq!(d.job.unwrap().phase, JobPhase::Cancelled);
}

#[test]
fn a_paused_job_dispatches_no_merge_task() {
    let c = cfg(2);
    let (mut j, t) = aggregating();
    j.spec.spec.suspend = true;
    let d = decide(&c, observe(0, &j, &t, &HashMap::new(), &[]));
    assert!(d.dispatches.is_empty() && !d.finish && !d.plan_aggregation);
}

#[test]
fn an_aggregating_job_without_its_tasks_is_planned_again() {
    let c = cfg(2);
    let (j, t) = aggregating();
    let d = decide(&c, observe(0, &j, &t[..2], &HashMap::new(), &[]));
    assert!(d.plan_aggregation);
    assert!(d.job.is_none(), "the phase is already Aggregating");
}

#[test]
fn backoff_grows_and_is_capped() {
    let mut c = cfg(10);
    c.jitter = false;
    assert_eq!(c.backoff_ms("j", 0, 1), 2000);
    assert_eq!(c.backoff_ms("j", 0, 2), 4000);
    assert_eq!(c.backoff_ms("j", 0, 9), 10_000);
}

#[test]
fn the_state_machine_allows_only_its_transitions() {
    use TaskState::*;
    assert!(Pending.can_become(Dispatched));
    assert!(Running.can_become(Succeeded));
    assert!(Retrying.can_become(Dispatched));
    for s in TaskState::ALL {
        if s.is_terminal() {
            for n in TaskState::ALL {
                assert!(!s.can_become(n), "{s} → {n}");
            }
        }
    }
    assert!(!Pending.can_become(Succeeded));
    assert!(!Dispatched.can_become(Pending));
    let mut t = TaskRecord::new("j", 0, 1, 0);
    assert!(t.transition(Succeeded, 1).is_err());
    assert!(t.transition(Dispatched, 1).is_ok());
}

#[test]
fn records_round_trip_through_json_with_a_schema_version() {
    let j = job(3, 1);
    let bytes = serde_json::to_vec(&j).unwrap();
    let back: JobRecord = crate::model::decode_versioned("job", &bytes).unwrap();
    assert_eq!(back, j);
    let mut future = serde_json::to_value(&j).unwrap();
    future["schemaVersion"] = serde_json::json!(SCHEMA_VERSION + 1);
    let err = crate::model::decode_versioned::<JobRecord>("job", future.to_string().as_bytes());
    assert!(err.is_err());
    let t = TaskRecord::new("j", 3, 7, 9);
    let back: TaskRecord = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
}

// ---- simulation --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Succeed,
    CrashBeforeClaim,
    CrashAfterClaim,
    /// Claims, stops renewing its lease, and tries to commit much later.
    Hang,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        5 => Just(Behaviour::Succeed),
        1 => Just(Behaviour::CrashBeforeClaim),
        1 => Just(Behaviour::CrashAfterClaim),
        1 => Just(Behaviour::Hang),
    ]
}

struct Worker {
    task: u32,
    attempt: u32,
    behaviour: Behaviour,
    step: u32,
}

struct Sim {
    now: u64,
    job: JobRecord,
    tasks: Vec<TaskRecord>,
    /// The executor's memory: task → (attempt, state). Lost on a coordinator restart.
    exec: HashMap<u32, (u32, ExecState)>,
    queue: Vec<(RetryRequest, u64, String)>,
    workers: Vec<Worker>,
    commits: HashMap<u32, Vec<u32>>,
    dispatched_succeeded: bool,
    receipts: u64,
}

impl Sim {
    fn cas(&mut self, new: TaskRecord) -> bool {
        let row = &mut self.tasks[new.id as usize];
        if row.version != new.version {
            return false;
        }
        *row = new;
        row.version += 1;
        true
    }

    fn step_workers(&mut self) {
        let now = self.now;
        let mut workers = std::mem::take(&mut self.workers);
        workers.retain_mut(|w| {
            let row = self.tasks[w.task as usize].clone();
            let mine = row.attempt == w.attempt;
            let exit = |sim: &mut Sim, code: Option<i32>, signal: Option<i32>| {
                if sim.exec.get(&w.task).is_some_and(|(a, _)| *a == w.attempt) {
                    sim.exec
                        .insert(w.task, (w.attempt, ExecState::Exited { code, signal }));
                }
            };
            w.step += 1;
            match (w.behaviour, w.step) {
                (Behaviour::CrashBeforeClaim, _) => {
                    exit(self, None, Some(9));
                    false
                }
                (_, 1) => {
                    if mine && row.state == TaskState::Dispatched {
                        let mut r = row;
                        r.state = TaskState::Running;
                        r.lease_expiry = Some(now + 5_000);
                        self.cas(r);
                        if let Some((a, s)) = self.exec.get_mut(&w.task)
                            && *a == w.attempt
                        {
                            *s = ExecState::Running;
                        }
                        true
                    } else {
                        exit(self, Some(1), None);
                        false
                    }
                }
                (Behaviour::CrashAfterClaim, _) => {
                    exit(self, None, Some(9));
                    false
                }
                (Behaviour::Hang, s) if s < 40 => true,
                (_, _) => {
                    // Commit names the attempt: only the current, running attempt may commit.
                    if mine && row.state == TaskState::Running {
                        let mut r = row;
                        r.state = TaskState::Succeeded;
                        r.items_ok = r.items;
                        if self.cas(r) {
                            self.commits.entry(w.task).or_default().push(w.attempt);
                        }
                    }
                    exit(self, Some(0), None);
                    false
                }
            }
        });
        self.workers.append(&mut workers);
    }

    fn tick(&mut self, cfg: &EngineConfig, next: &mut impl Iterator<Item = Behaviour>) -> bool {
        self.step_workers();
        let exec: HashMap<u32, ExecState> = self
            .tasks
            .iter()
            .filter(|t| matches!(t.state, TaskState::Dispatched | TaskState::Running))
            .map(|t| {
                let s = match self.exec.get(&t.id) {
                    Some((a, s)) if *a == t.attempt => s.clone(),
                    _ => ExecState::Unknown,
                };
                (t.id, s)
            })
            .collect();
        let due: Vec<DueRetry> = self
            .queue
            .iter_mut()
            .filter(|(_, at, _)| *at <= self.now)
            .map(|(req, at, receipt)| {
                *at += 30_000;
                DueRetry {
                    request: req.clone(),
                    receipt: receipt.clone(),
                }
            })
            .collect();
        let tasks = self.tasks.clone();
        let d = decide(cfg, observe(self.now, &self.job, &tasks, &exec, &due));
        if let Some(j) = d.job {
            self.job = j;
        }
        for dispatch in d.dispatches {
            for t in dispatch.tasks {
                let before = self.tasks[t.id as usize].state;
                if before == TaskState::Succeeded {
                    self.dispatched_succeeded = true;
                }
                let (id, attempt) = (t.id, t.attempt);
                if self.cas(t) {
                    self.exec.insert(id, (attempt, ExecState::Queued));
                    self.workers.push(Worker {
                        task: id,
                        attempt,
                        behaviour: next.next().unwrap_or(Behaviour::Succeed),
                        step: 0,
                    });
                }
            }
        }
        for f in d.failures {
            if self.cas(f.task)
                && let Some((req, delay)) = f.retry
            {
                self.receipts += 1;
                self.queue
                    .push((req, self.now + delay, format!("r{}", self.receipts)));
            }
        }
        for u in d.updates {
            self.cas(u);
        }
        self.queue.retain(|(_, _, r)| !d.acks.contains(r));
        if d.plan_aggregation {
            // What the driver does: create the aggregation tasks after the last work task.
            let n = self.tasks.len() as u32;
            self.tasks.extend([
                merge_task(n, TaskKind::Merge { level: 1 }),
                merge_task(n + 1, TaskKind::Merge { level: 1 }),
                merge_task(n + 2, TaskKind::Final),
            ]);
        }
        if d.finish {
            self.job = verdict(cfg, &self.job, &self.tasks, self.now);
            return true;
        }
        self.now += 1_000;
        self.job.phase.is_terminal()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn every_task_ends_once_within_its_attempts_and_restarts_never_redispatch_committed_work(
        n in 1u32..12,
        max_attempts in 1u32..5,
        outcomes in proptest::collection::vec(behaviour(), 0..80),
        restarts in proptest::collection::vec(0u64..60, 0..4),
    ) {
        let cfg = cfg(max_attempts);
        let mut sim = Sim {
            now: 0,
            job: job(max_attempts, n),
            tasks: tasks(n),
            exec: HashMap::new(),
            queue: Vec::new(),
            workers: Vec::new(),
            commits: HashMap::new(),
            dispatched_succeeded: false,
            receipts: 0,
        };
        let mut next = outcomes.into_iter();
        let mut done = false;
        for tick in 0..3_000u64 {
            if restarts.contains(&tick) {
                // A new coordinator: a fresh executor that knows nothing of earlier attempts.
                sim.exec.clear();
            }
            if sim.tick(&cfg, &mut next) {
                done = true;
                break;
            }
            for t in &sim.tasks {
                prop_assert!(
                    t.counted_attempts() <= max_attempts,
                    "task {} counted attempts {}", t.id, t.counted_attempts()
                );
                prop_assert!(t.free_attempts <= MAX_FREE_ATTEMPTS);
            }
        }
        prop_assert!(done, "job did not finish: {:?}", sim.tasks);
        prop_assert!(!sim.dispatched_succeeded, "a committed task was dispatched again");
        prop_assert!(sim.job.phase.is_terminal());
        for t in &sim.tasks {
            prop_assert!(t.state.is_terminal(), "task {} ended {}", t.id, t.state);
            let commits = sim.commits.get(&t.id).map(Vec::len).unwrap_or(0);
            match t.state {
                TaskState::Succeeded => prop_assert_eq!(commits, 1),
                _ => prop_assert_eq!(commits, 0),
            }
        }
    }
}
