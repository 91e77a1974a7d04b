//! The rules one by one: each fires once when its condition begins, resolves once when it ends,
//! follows its overrides, and stays quiet when turned off.

use super::*;
use crate::model::{ErrorKind, JobRecord, SCHEMA_VERSION, TaskError, TaskRecord};
use crate::spec::OrchJobFile;

const S: u64 = 1000;
const MIN: u64 = 60 * S;

fn file(alerts: &str) -> OrchJobFile {
    let yaml = format!(
        r#"
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: t}}
spec:
  input: {{uri: /in.jsonl}}
  handler: {{builtin: {{name: identity}}, concurrency: 2}}
  rateLimit: {{name: api}}
{alerts}
"#
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn job(alerts: &str, items: u64) -> JobRecord {
    JobRecord {
        schema_version: SCHEMA_VERSION,
        id: "t-1".into(),
        phase: JobPhase::Running,
        spec: file(alerts),
        input_fingerprint: "f".into(),
        total_tasks: 1,
        total_items: items,
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

fn engine(j: &JobRecord) -> AlertEngine {
    AlertEngine::new(AlertConfig::from_spec(&j.spec.spec))
}

/// `n` tasks of `items` items each, all running with nothing done.
fn running(n: u32, items: u64) -> Vec<TaskRecord> {
    (0..n)
        .map(|i| {
            let mut t = TaskRecord::new("t-1", i, items, 0);
            t.state = TaskState::Running;
            t.attempt = 1;
            t
        })
        .collect()
}

fn states(notices: &[Notice]) -> Vec<(AlertRule, AlertState)> {
    notices.iter().map(|n| (n.rule, n.state)).collect()
}

fn error(attempt: u32, limit: Option<LimitHit>) -> TaskError {
    TaskError {
        kind: ErrorKind::Infrastructure,
        message: "out of memory: OOMKilled".into(),
        attempt,
        limit,
    }
}

#[test]
fn the_defaults() {
    let cfg = AlertConfig::from_spec(&file("").spec);
    assert_eq!(cfg.stalled, Some(DEFAULT_STALLED_AFTER));
    assert_eq!(
        cfg.error_rate,
        Some(ErrorRate {
            percent: 10.0,
            min_items: 100
        })
    );
    assert!(cfg.task_failed && cfg.limits_hit);
    assert!(!cfg.dead_letters && !cfg.finished);
    assert_eq!(cfg.rate_limit_saturated, None, "off unless asked for");
}

#[test]
fn a_stalled_job_fires_once_then_resolves_when_items_finish_again() {
    let j = job("  alerts: {rules: {stalled: {after: 2m}}}", 100);
    let mut e = engine(&j);
    let mut t = running(1, 100);
    t[0].items_ok = 5;
    assert!(e.observe(0, &j, &t).is_empty());
    assert!(e.observe(MIN, &j, &t).is_empty(), "not yet 2 minutes");
    let fired = e.observe(2 * MIN, &j, &t);
    assert_eq!(states(&fired), [(AlertRule::Stalled, AlertState::Firing)]);
    assert_eq!(fired[0].details["idleSeconds"], 120);
    assert!(
        fired[0].summary.contains("5 of 100"),
        "{}",
        fired[0].summary
    );
    // Still stalled: nothing more.
    assert!(e.observe(3 * MIN, &j, &t).is_empty());
    assert!(e.observe(30 * MIN, &j, &t).is_empty());
    t[0].items_ok = 6;
    let resolved = e.observe(31 * MIN, &j, &t);
    assert_eq!(
        states(&resolved),
        [(AlertRule::Stalled, AlertState::Resolved)]
    );
    assert_eq!(resolved[0].severity, Severity::Info);
    // And it can stall again, once.
    assert!(e.observe(32 * MIN, &j, &t).is_empty());
    assert_eq!(e.observe(33 * MIN, &j, &t).len(), 1);
}

#[test]
fn a_task_ending_is_progress_and_fewer_items_after_a_retry_is_not() {
    let j = job("  alerts: {rules: {stalled: {after: 1m}}}", 20);
    let mut e = engine(&j);
    let mut t = running(2, 10);
    t[0].items_ok = 8;
    e.observe(0, &j, &t);
    // The attempt was lost and its heartbeat count starts over: not progress.
    t[0].items_ok = 0;
    t[0].attempt = 2;
    assert_eq!(e.observe(MIN, &j, &t).len(), 1, "stalled");
    // A task that ends is progress, even without items (a failed merge, a lost batch).
    t[1].state = TaskState::Failed;
    t[1].items = 0;
    let n = e.observe(MIN + S, &j, &t);
    assert!(n.contains(&Notice {
        rule: AlertRule::Stalled,
        state: AlertState::Resolved,
        severity: Severity::Info,
        summary: n[0].summary.clone(),
        details: n[0].details.clone(),
        at: MIN + S,
    }));
}

#[test]
fn a_retry_redoing_items_below_the_old_count_is_progress() {
    let j = job("  alerts: {rules: {stalled: {after: 1m}}}", 100);
    let mut e = engine(&j);
    let mut t = running(1, 100);
    t[0].items_ok = 80;
    assert!(e.observe(0, &j, &t).is_empty());
    // The attempt ran out of memory; the next one starts over from zero: not progress yet.
    t[0].items_ok = 0;
    t[0].attempt = 2;
    assert!(e.observe(30 * S, &j, &t).is_empty());
    // It redoes the items the lost attempt had done, far below the old 80, one tick at a
    // time: each increase is progress, so the job never counts as stalled.
    for (tick, done) in (1..=10u64).zip((5..=50u64).step_by(5)) {
        t[0].items_ok = done;
        let n = e.observe(30 * S + tick * 50 * S, &j, &t);
        assert!(n.is_empty(), "{done} items of attempt 2: {n:?}");
    }
    // Counted per attempt: standing still for a minute below the old count is a stall.
    let n = e.observe(30 * S + 10 * 50 * S + MIN, &j, &t);
    assert_eq!(states(&n), [(AlertRule::Stalled, AlertState::Firing)]);
    // And moving again, still below 80, resolves it.
    t[0].items_ok = 51;
    let n = e.observe(30 * S + 10 * 50 * S + 2 * MIN, &j, &t);
    assert_eq!(states(&n), [(AlertRule::Stalled, AlertState::Resolved)]);
}

#[test]
fn a_paused_job_is_not_stalled_and_its_clock_starts_again_on_resume() {
    let mut j = job("  alerts: {rules: {stalled: {after: 1m}}}", 10);
    let mut e = engine(&j);
    let t = running(1, 10);
    e.observe(0, &j, &t);
    j.spec.spec.suspend = true;
    assert!(e.observe(5 * MIN, &j, &t).is_empty());
    j.spec.spec.suspend = false;
    assert!(e.observe(5 * MIN + 30 * S, &j, &t).is_empty());
    assert_eq!(states(&e.observe(6 * MIN, &j, &t)).len(), 1);
}

#[test]
fn a_stalled_job_that_ends_resolves() {
    let mut j = job("  alerts: {rules: {stalled: {after: 1m}}}", 10);
    let mut e = engine(&j);
    let t = running(1, 10);
    e.observe(0, &j, &t);
    assert_eq!(e.observe(MIN, &j, &t).len(), 1);
    j.phase = JobPhase::Cancelled;
    let n = e.observe(2 * MIN, &j, &t);
    assert_eq!(states(&n), [(AlertRule::Stalled, AlertState::Resolved)]);
    assert!(n[0].summary.contains("cancelled"), "{}", n[0].summary);
    assert!(
        e.observe(3 * MIN, &j, &t).is_empty(),
        "nothing after the end"
    );
}

#[test]
fn the_error_rate_needs_min_items_fires_above_and_resolves_well_below() {
    let j = job(
        "  alerts: {rules: {errorRate: {percent: 10, minItems: 50}}}",
        1000,
    );
    let mut e = engine(&j);
    let mut t = running(1, 1000);
    // 40 % failed, but only 20 items finished: too few to judge.
    t[0].items_ok = 12;
    t[0].items_failed = 8;
    assert!(e.observe(0, &j, &t).is_empty());
    t[0].items_ok = 40;
    t[0].items_failed = 10;
    let n = e.observe(S, &j, &t);
    assert_eq!(states(&n), [(AlertRule::ErrorRate, AlertState::Firing)]);
    assert_eq!(n[0].details["failedItems"], 10);
    assert_eq!(n[0].details["finishedItems"], 50);
    assert_eq!(n[0].details["percent"], 20.0);
    // 9 %: under the threshold, above its resolve level (8 %): it keeps firing, silently.
    t[0].items_ok = 100;
    t[0].items_failed = 10;
    assert!(e.observe(2 * S, &j, &t).is_empty());
    // 5 %: resolved.
    t[0].items_ok = 190;
    assert_eq!(
        states(&e.observe(3 * S, &j, &t)),
        [(AlertRule::ErrorRate, AlertState::Resolved)]
    );
}

#[test]
fn the_error_rate_default_fires_above_ten_percent_of_a_hundred() {
    let j = job("", 1000);
    let mut e = engine(&j);
    let mut t = running(1, 1000);
    t[0].items_ok = 80;
    t[0].items_failed = 19;
    assert!(e.observe(0, &j, &t).is_empty(), "99 finished");
    t[0].items_ok = 89;
    t[0].items_failed = 11;
    assert_eq!(
        states(&e.observe(S, &j, &t)),
        [(AlertRule::ErrorRate, AlertState::Firing)]
    );
}

#[test]
fn a_failed_task_fires_once_with_its_error_and_resolves_when_run_again() {
    let j = job("", 30);
    let mut e = engine(&j);
    let mut t = running(3, 10);
    assert!(e.observe(0, &j, &t).is_empty());
    t[1].state = TaskState::Failed;
    t[1].attempt = 3;
    t[1].last_error = Some(TaskError {
        kind: ErrorKind::Permanent,
        message: "handler keeps crashing".into(),
        attempt: 3,
        limit: None,
    });
    let n = e.observe(S, &j, &t);
    assert!(states(&n).contains(&(AlertRule::TaskFailed, AlertState::Firing)));
    let failed = n.iter().find(|n| n.rule == AlertRule::TaskFailed).unwrap();
    assert!(
        failed.summary.contains("task 1 failed after 3 attempt")
            && failed.summary.contains("handler keeps crashing"),
        "{}",
        failed.summary
    );
    // A second task failing is the same condition: no second notice.
    t[2].state = TaskState::Failed;
    assert!(
        !states(&e.observe(2 * S, &j, &t)).contains(&(AlertRule::TaskFailed, AlertState::Firing))
    );
    // `orch retry`: the tasks run again.
    t[1].state = TaskState::Pending;
    t[2].state = TaskState::Pending;
    assert!(
        states(&e.observe(3 * S, &j, &t)).contains(&(AlertRule::TaskFailed, AlertState::Resolved))
    );
}

#[test]
fn limits_are_read_from_the_mark_not_the_message() {
    let j = job("", 20);
    let mut e = engine(&j);
    let mut t = running(2, 10);
    // The message says "out of memory", but nothing marked a limit.
    t[0].last_error = Some(error(1, None));
    assert!(e.observe(0, &j, &t).is_empty());
    t[0].state = TaskState::Retrying;
    t[0].last_error = Some(error(1, Some(LimitHit::Memory)));
    let n = e.observe(S, &j, &t);
    assert_eq!(states(&n), [(AlertRule::LimitsHit, AlertState::Firing)]);
    assert!(
        n[0].summary.contains("task 0 attempt 1 ran out of memory")
            && n[0].summary.contains("spec.resources.memory: 2Gi"),
        "{}",
        n[0].summary
    );
    // Another hit while it fires: nothing.
    t[1].last_error = Some(error(1, Some(LimitHit::Time)));
    assert!(e.observe(2 * S, &j, &t).is_empty());
    // Both succeed on their next attempt: resolved.
    t[0].state = TaskState::Succeeded;
    t[1].state = TaskState::Succeeded;
    let n = e.observe(3 * S, &j, &t);
    assert_eq!(states(&n), [(AlertRule::LimitsHit, AlertState::Resolved)]);
}

#[test]
fn dead_letters_are_off_by_default_and_fire_on_failed_items_when_on() {
    let mut t = running(1, 10);
    t[0].state = TaskState::Succeeded;
    t[0].items_ok = 9;
    t[0].items_failed = 1;
    let quiet = job("", 10);
    assert!(engine(&quiet).observe(0, &quiet, &t).is_empty());
    let j = job("  alerts: {rules: {deadLetters: {enabled: true}}}", 10);
    let mut e = engine(&j);
    let n = e.observe(0, &j, &t);
    assert_eq!(states(&n), [(AlertRule::DeadLetters, AlertState::Firing)]);
    assert_eq!(n[0].details["failedItems"], 1);
    // `orch retry --items` fixed it.
    t[0].items_ok = 10;
    t[0].items_failed = 0;
    assert_eq!(
        states(&e.observe(S, &j, &t)),
        [(AlertRule::DeadLetters, AlertState::Resolved)]
    );
}

#[test]
fn finished_is_off_by_default_and_says_how_the_job_ended_when_on() {
    let mut t = running(1, 10);
    t[0].state = TaskState::Succeeded;
    t[0].items_ok = 10;
    let mut quiet = job("", 10);
    quiet.phase = JobPhase::Succeeded;
    assert!(engine(&quiet).observe(0, &quiet, &t).is_empty());
    let mut j = job("  alerts: {rules: {finished: {enabled: true}}}", 10);
    let mut e = engine(&j);
    assert!(e.observe(0, &j, &t).is_empty(), "not ended yet");
    j.phase = JobPhase::Succeeded;
    let n = e.observe(S, &j, &t);
    assert_eq!(states(&n), [(AlertRule::Finished, AlertState::Firing)]);
    assert_eq!(n[0].severity, Severity::Info);
    assert!(
        n[0].summary.contains("succeeded: 10 items ok, 0 failed"),
        "{}",
        n[0].summary
    );
    assert!(e.observe(2 * S, &j, &t).is_empty(), "once");
}

#[test]
fn rate_limit_saturation_is_measured_over_a_full_window() {
    let j = job(
        "  alerts: {rules: {rateLimitSaturated: {enabled: true, percent: 50, window: 1m}}}",
        100,
    );
    let mut e = engine(&j);
    // One worker, concurrency 2: 2 item-seconds of possible waiting per second.
    let mut t = running(1, 100);
    e.observe(0, &j, &t);
    let mut wait = 0;
    let mut fired = Vec::new();
    for second in 1..=90u64 {
        wait += 1800; // 90 % of the 2000 ms possible each second
        t[0].rate_limit_wait_ms = wait;
        let n = e.observe(second * S, &j, &t);
        if !n.is_empty() {
            fired.push((second, states(&n)));
        }
    }
    assert_eq!(
        fired,
        [(
            60,
            vec![(AlertRule::RateLimitSaturated, AlertState::Firing)]
        )],
        "once, when a whole window was seen"
    );
    // A new attempt's count starts from zero; it waits only a little.
    t[0].attempt = 2;
    t[0].rate_limit_wait_ms = 0;
    let mut resolved = Vec::new();
    for second in 91..=200u64 {
        t[0].rate_limit_wait_ms += 100;
        let n = e.observe(second * S, &j, &t);
        resolved.extend(states(&n));
    }
    assert_eq!(
        resolved,
        [(AlertRule::RateLimitSaturated, AlertState::Resolved)]
    );
}

#[test]
fn rate_limit_saturation_needs_a_rate_limit() {
    let yaml = r#"
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: t}
spec:
  input: {uri: /in.jsonl}
  handler: {builtin: {name: identity}}
  alerts: {rules: {rateLimitSaturated: {enabled: true}}}
"#;
    let f: OrchJobFile = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(AlertConfig::from_spec(&f.spec).rate_limit_saturated, None);
}

#[test]
fn disabled_rules_stay_quiet() {
    let j = job(
        "  alerts: {rules: {stalled: {enabled: false}, errorRate: {enabled: false}, taskFailed: {enabled: false}, limitsHit: {enabled: false}}}",
        1000,
    );
    let mut e = engine(&j);
    let mut t = running(2, 500);
    t[0].items_failed = 500;
    t[0].state = TaskState::Failed;
    t[0].last_error = Some(error(3, Some(LimitHit::Memory)));
    for minute in 0..120 {
        assert!(
            e.observe(minute * MIN, &j, &t).is_empty(),
            "minute {minute}"
        );
    }
}

#[test]
fn a_healthy_job_sends_nothing_from_start_to_end() {
    let mut j = job("", 1000);
    let mut e = engine(&j);
    let mut t = running(4, 250);
    let mut sent = Vec::new();
    for step in 0..=250u64 {
        for task in &mut t {
            task.items_ok = step.min(task.items);
            if step == 250 {
                task.state = TaskState::Succeeded;
            }
        }
        // One failed item in a thousand.
        t[0].items_failed = u64::from(step > 100);
        sent.extend(e.observe(step * S, &j, &t));
    }
    j.phase = JobPhase::Succeeded;
    sent.extend(e.observe(251 * S, &j, &t));
    assert!(sent.is_empty(), "{sent:?}");
}
