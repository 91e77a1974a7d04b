//! Unit tests of cluster mode's pure parts: argument parsing, the status mode rule, patch
//! bodies, and how a status is shown. The API server side is in cli/tests/cluster.rs.

use clap::{CommandFactory, Parser};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use serde_json::json;

use super::render::{self, JobView, Outcome};
use super::*;
use crate::{Cli, Command};

fn parse(args: &[&str]) -> Cli {
    let mut argv = vec!["orch"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => panic!("{args:?} does not parse: {e}"),
    }
}

fn status_args(args: &[&str]) -> StatusArgs {
    let mut argv = vec!["status"];
    argv.extend_from_slice(args);
    match parse(&argv).command {
        Command::Status(s) => s,
        _ => panic!("not a status command"),
    }
}

#[test]
fn status_reads_local_stores_unless_told_otherwise() {
    for args in [
        &[][..],
        &["job.yaml"],
        &["reviews-sentiment-1a2b3c"],
        &["job.yaml", "-o", "json"],
        &["job.yaml", "--storage", "s3://b/orch", "--verify"],
    ] {
        assert_eq!(
            status_mode(&status_args(args), false),
            StatusMode::Local,
            "{args:?}"
        );
    }
}

#[test]
fn cluster_flags_typed_names_and_kubectl_select_the_cluster() {
    for args in [
        &["x", "--cluster"][..],
        &["--cluster"],
        &["x", "-n", "team-a"],
        &["x", "--namespace=team-a"],
        &["x", "--context", "prod"],
        &["x", "--kubeconfig", "/tmp/kc"],
        &["x", "--watch"],
        &["x", "-w"],
        &["orchjob/x"],
        &["oj/x"],
        &["OrchJob/x"],
        &["orchjobs.orch.dev/x"],
    ] {
        assert_eq!(
            status_mode(&status_args(args), false),
            StatusMode::Cluster,
            "{args:?}"
        );
    }
    assert_eq!(status_mode(&status_args(&["x"]), true), StatusMode::Cluster);
    assert_eq!(status_mode(&status_args(&[]), true), StatusMode::Cluster);
    // A path with a slash is a job file, not TYPE/NAME.
    assert_eq!(
        status_mode(&status_args(&["examples/job.yaml"]), false),
        StatusMode::Local
    );
}

#[test]
fn the_environment_does_not_change_the_mode() {
    // KUBECONFIG is read by kube when connecting, never by the mode rule: the rule is a pure
    // function of the arguments.
    let args = status_args(&["x"]);
    assert!(!args.kube.given());
    assert_eq!(status_mode(&args, false), StatusMode::Local);
}

#[test]
fn yaml_output_is_for_the_cluster() {
    let args = status_args(&["job.yaml", "-o", "yaml"]);
    let err = status(args, false).expect_err("yaml in local mode");
    assert_eq!(err.code, 2);
    assert!(err.message.contains("--cluster"), "{}", err.message);
}

#[test]
fn local_flags_are_refused_in_cluster_mode() {
    for args in [
        &["x", "--cluster", "--verify"][..],
        &["oj/x", "--storage", "d"],
        &["oj/x", "--task", "3"],
    ] {
        let err = status(status_args(args), false).expect_err("refused");
        assert_eq!(err.code, 2, "{args:?}");
        assert!(
            err.message.contains("--storage, --verify and --task"),
            "{}",
            err.message
        );
    }
}

#[test]
fn watch_needs_a_name() {
    let err = status(status_args(&["--watch"]), false).expect_err("refused");
    assert_eq!(err.code, 2);
    assert!(err.message.contains("name it"), "{}", err.message);
}

#[test]
fn names_and_typed_names() {
    for (arg, want) in [
        ("reviews", "reviews"),
        ("orchjob/reviews", "reviews"),
        ("oj/reviews", "reviews"),
        ("OJ/reviews", "reviews"),
        ("orchjobs/a.b-c", "a.b-c"),
        ("orchjob.orch.dev/x1", "x1"),
    ] {
        assert_eq!(parse_name(arg).map_err(|f| f.message), Ok(want.into()));
    }
    for (arg, says) in [
        ("pod/reviews", "OrchJobs only"),
        ("Reviews", "not an OrchJob name"),
        ("-x", "not an OrchJob name"),
        ("x-", "not an OrchJob name"),
        ("oj/", "not an OrchJob name"),
        ("a_b", "not an OrchJob name"),
        ("", "not an OrchJob name"),
    ] {
        let err = parse_name(arg).expect_err(arg);
        assert_eq!(err.code, 2, "{arg}");
        assert!(err.message.contains(says), "{arg}: {}", err.message);
    }
    assert!(parse_name(&"a".repeat(253)).is_ok());
    assert!(parse_name(&"a".repeat(254)).is_err());
}

#[test]
fn verbs_parse_with_the_kube_flags() {
    match parse(&["submit", "job.yaml", "--dry-run", "-n", "team-a"]).command {
        Command::Submit(a) => {
            assert!(a.dry_run && !a.force_conflicts);
            assert_eq!(a.file.to_str(), Some("job.yaml"));
            assert_eq!(a.kube.namespace.as_deref(), Some("team-a"));
        }
        _ => panic!("not submit"),
    }
    match parse(&[
        "retry",
        "oj/x",
        "--items",
        "--kind",
        "transient",
        "--context",
        "prod",
    ])
    .command
    {
        Command::Retry(a) => {
            assert_eq!(a.job, "oj/x");
            assert!(a.items);
            assert_eq!(a.kinds, ["transient"]);
            assert_eq!(a.kube.context.as_deref(), Some("prod"));
        }
        _ => panic!("not retry"),
    }
    for verb in ["pause", "resume", "cancel"] {
        match parse(&[verb, "oj/x", "--context", "prod", "--kubeconfig", "/k"]).command {
            Command::Pause(a) | Command::Resume(a) | Command::Cancel(a) => {
                assert_eq!(a.name, "oj/x");
                assert_eq!(a.kube.context.as_deref(), Some("prod"));
                assert_eq!(
                    a.kube.kubeconfig.as_deref(),
                    Some(std::path::Path::new("/k"))
                );
            }
            _ => panic!("not {verb}"),
        }
    }
    match parse(&["purge", "x"]).command {
        Command::Purge(a) => {
            assert!(!a.yes);
            assert_eq!(a.timeout, Duration::from_secs(300));
        }
        _ => panic!("not purge"),
    }
    match parse(&["purge", "x", "--yes", "--timeout", "90s"]).command {
        Command::Purge(a) => {
            assert!(a.yes);
            assert_eq!(a.timeout, Duration::from_secs(90));
        }
        _ => panic!("not purge"),
    }
    assert!(Cli::try_parse_from(["orch", "purge", "x", "--timeout", "soon"]).is_err());
    assert!(Cli::try_parse_from(["orch", "status", "x", "-o", "wide"]).is_err());
}

#[test]
fn kubectl_plugin_name_and_usage() {
    use std::ffi::OsStr;
    assert!(crate::invoked_as_kubectl_plugin(Some(OsStr::new(
        "/usr/local/bin/kubectl-orch"
    ))));
    assert!(crate::invoked_as_kubectl_plugin(Some(OsStr::new(
        "kubectl-orch"
    ))));
    assert!(!crate::invoked_as_kubectl_plugin(Some(OsStr::new(
        "/usr/bin/orch"
    ))));
    assert!(!crate::invoked_as_kubectl_plugin(None));
    let mut cmd = Cli::command().bin_name("kubectl orch");
    let usage = cmd.render_usage().to_string();
    assert!(usage.contains("kubectl orch"), "{usage}");
    let err = cmd
        .try_get_matches_from_mut(["kubectl-orch", "status", "--help"])
        .expect_err("help");
    assert!(
        err.to_string().contains("Usage: kubectl orch status"),
        "{err}"
    );
}

#[test]
fn patch_bodies_touch_one_field() {
    assert_eq!(patch::suspend(true), json!({"spec": {"suspend": true}}));
    assert_eq!(patch::suspend(false), json!({"spec": {"suspend": false}}));
    assert_eq!(
        patch::annotation(CANCEL_ANNOTATION, "true"),
        json!({"metadata": {"annotations": {"orch.dev/cancel": "true"}}})
    );
    assert_eq!(
        patch::annotation(PURGE_ANNOTATION, "true"),
        json!({"metadata": {"annotations": {"orch.dev/purge-on-delete": "true"}}})
    );
}

#[test]
fn retry_values_are_rfc3339_with_nanoseconds_and_new_each_time() {
    let t: Timestamp = "2025-06-01T10:00:00.5Z".parse().expect("timestamp");
    assert_eq!(patch::retry_value(t), "2025-06-01T10:00:00.500000000Z");
    let t: Timestamp = "2025-06-01T10:00:00Z".parse().expect("timestamp");
    assert_eq!(patch::retry_value(t), "2025-06-01T10:00:00.000000000Z");
    let a = patch::retry_value(render::now());
    let b = patch::retry_value(render::now());
    assert_ne!(a, b);
    assert!(a.parse::<Timestamp>().is_ok(), "{a}");
    let body = patch::annotation(RETRY_ANNOTATION, &a);
    assert_eq!(body["metadata"]["annotations"]["orch.dev/retry"], a);
}

fn object(extra: serde_json::Value) -> DynamicObject {
    let mut base = json!({
        "apiVersion": "orch.dev/v1alpha1",
        "kind": "OrchJob",
        "metadata": {
            "name": "reviews", "namespace": "team-a", "uid": "u-1", "generation": 2,
            "creationTimestamp": "2025-06-01T09:00:00Z"
        },
        "spec": {"input": {"uri": "s3://b/in.jsonl"}, "handler": {"builtin": {"name": "identity"}}}
    });
    orch_core::load::deep_merge(&mut base, extra);
    serde_json::from_value(base).expect("a DynamicObject")
}

fn view(extra: serde_json::Value) -> JobView {
    JobView::from_object(&object(extra)).expect("readable")
}

fn at(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

#[test]
fn table_of_a_running_job() {
    let v = view(json!({"status": {
        "phase": "Running",
        "observedGeneration": 2,
        "tasks": {"total": 8, "pending": 1, "running": 2, "retrying": 1, "succeeded": 3, "failed": 1},
        "items": {"total": 2000, "ok": 750, "failed": 3, "retrying": 10},
        "attempts": {"total": 9, "again": 3, "notCounted": 1},
        "startTime": "2025-06-01T10:00:00Z",
        "jobId": "reviews-1a2b3c",
        "conditions": [
            {"type": "Progressing", "status": "True", "reason": "Running",
             "message": "3 of 8 tasks done", "lastTransitionTime": "2025-06-01T10:00:00Z"},
            {"type": "Suspended", "status": "False", "reason": "Resumed",
             "lastTransitionTime": "2025-06-01T10:02:00Z"}
        ]
    }}));
    let text = render::table(&v, at("2025-06-01T10:05:00Z"));
    let want = "\
Name:        reviews
Namespace:   team-a
Phase:       Running
Tasks:       3/8 done, 1 failed (2 running, 1 retrying, 1 pending)
Items:       750 ok, 3 failed, 10 retrying (of 2000)
Attempts:    9 (3 ran again, 1 of them not counted against retry.maxAttempts)
Started:     2025-06-01T10:00:00Z (5m ago)
Job id:      reviews-1a2b3c
Age:         65m
Conditions:
  TYPE         STATUS  REASON   AGE  MESSAGE
  Progressing  True    Running  5m   3 of 8 tasks done
  Suspended    False   Resumed  3m
";
    assert_eq!(text, want);
    assert_eq!(render::outcome(&v), None);
    assert_eq!(
        render::summary(&v),
        "Running  tasks 3/8 done, 1 failed (2 running, 1 retrying, 1 pending)  \
         items 750 ok, 3 failed, 10 retrying"
    );
}

#[test]
fn table_of_a_finished_job_and_of_requests() {
    let v = view(json!({
        "metadata": {"annotations": {
            "orch.dev/retry": "2025-06-01T11:00:00.000000001Z",
            "orch.dev/cancel": "true"
        }},
        "spec": {"suspend": true},
        "status": {
            "phase": "Succeeded",
            "tasks": {"total": 8, "succeeded": 8},
            "items": {"total": 2000, "ok": 2000},
            "startTime": "2025-06-01T10:00:00Z",
            "completionTime": "2025-06-01T10:12:30Z",
            "output": "s3://b/out/reviews/",
            "retried": "2025-06-01T11:00:00.000000001Z",
            "conditions": [{"type": "Complete", "status": "True", "reason": "Succeeded"}]
        }
    }));
    let text = render::table(&v, at("2025-06-01T12:00:00Z"));
    for line in [
        "Phase:       Succeeded\n",
        "Tasks:       8/8 done\n",
        "Completed:   2025-06-01T10:12:30Z (107m ago), ran 12m\n",
        "Output:      s3://b/out/reviews/\n",
        "Requested:   paused (spec.suspend: true), retry 2025-06-01T11:00:00.000000001Z \
         (handled), cancel\n",
        "  Complete  True    Succeeded  -\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    assert_eq!(render::outcome(&v), Some(Outcome::Succeeded));
}

#[test]
fn a_job_without_status_says_so() {
    let v = view(json!({}));
    let text = render::table(&v, at("2025-06-01T09:00:30Z"));
    assert!(text.contains("Phase:       - (no status yet"), "{text}");
    assert!(text.contains("Age:         30s"), "{text}");
    assert_eq!(render::outcome(&v), None);
    assert!(render::request_note(Request::Pause, &v).is_some());
}

#[test]
fn when_a_watched_job_has_ended() {
    let failed = json!({"status": {"phase": "Failed", "observedGeneration": 2}});
    assert_eq!(
        render::outcome(&view(failed.clone())),
        Some(Outcome::Failed)
    );
    // Status of an older spec (e.g. just resumed or fixed): not ended yet.
    let mut stale = failed.clone();
    stale["status"]["observedGeneration"] = json!(1);
    assert_eq!(render::outcome(&view(stale)), None);
    // A retry the operator has not handled: not ended yet; once handled, it is.
    let mut retry = failed.clone();
    retry["metadata"] = json!({"annotations": {"orch.dev/retry": "t2"}});
    retry["status"]["retried"] = json!("t1");
    assert_eq!(render::outcome(&view(retry.clone())), None);
    retry["status"]["retried"] = json!("t2");
    assert_eq!(render::outcome(&view(retry)), Some(Outcome::Failed));
    // A succeeded job may run again for a retry of its failed items: ended once it is handled.
    let mut ok = json!({"metadata": {"annotations": {"orch.dev/retry": "t3"}},
        "status": {"phase": "Succeeded", "retried": "t2"}});
    assert_eq!(render::outcome(&view(ok.clone())), None);
    ok["status"]["retried"] = json!("t3");
    assert_eq!(render::outcome(&view(ok)), Some(Outcome::Succeeded));
    for phase in ["Pending", "Running", "Suspended"] {
        let v = view(json!({"status": {"phase": phase}}));
        assert_eq!(render::outcome(&v), None, "{phase}");
    }
}

#[test]
fn notes_on_requests_a_finished_job_ignores() {
    let done = view(json!({"status": {"phase": "Succeeded"}}));
    for r in [Request::Pause, Request::Resume, Request::Cancel] {
        let note = render::request_note(r, &done).expect("a note");
        assert!(note.contains("already ended (Succeeded)"), "{note}");
    }
    assert_eq!(render::request_note(Request::Retry, &done), None);
    let running = view(json!({"status": {"phase": "Running"}}));
    assert_eq!(render::request_note(Request::Pause, &running), None);
}

#[test]
fn an_unreadable_status_is_an_error_not_a_panic() {
    let obj = object(json!({"status": {"phase": "Exploded"}}));
    let err = JobView::from_object(&obj).expect_err("unknown phase");
    assert!(err.contains("orchjob \"reviews\""), "{err}");
}

#[test]
fn list_of_a_namespace() {
    let a = view(
        json!({"status": {"phase": "Running", "tasks": {"total": 8, "succeeded": 3},
        "items": {"total": 10, "ok": 5, "failed": 1, "retrying": 2}}}),
    );
    let mut b = view(json!({}));
    b.name = "second-job".into();
    let text = render::list(&[a, b], at("2025-06-01T11:00:00Z"));
    assert_eq!(
        text,
        "\
NAME        PHASE    TASKS  ITEMS OK  FAILED  RETRYING  AGE
reviews     Running  3/8    5         1       2         120m
second-job  -        -      -         -       -         120m
"
    );
}

#[test]
fn deleting_shows_the_finalizers() {
    let v = view(json!({"metadata": {
        "deletionTimestamp": "2025-06-01T10:00:00Z",
        "finalizers": ["orch.dev/cleanup"],
        "annotations": {"orch.dev/purge-on-delete": "true"}
    }}));
    let text = render::table(&v, at("2025-06-01T10:00:10Z"));
    assert!(
        text.contains("Deleting:    since 10s ago, waiting for orch.dev/cleanup"),
        "{text}"
    );
    assert!(text.contains("Requested:   purge on delete"), "{text}");
}
