//! The `exec` handler against real Python processes (fixtures in `tests/fixtures/`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_core::ErrorCategory;
use orch_core::model::ErrorKind;
use orch_core::spec::EnvValue;
use orch_worker::handler::{
    Answer, ExecConfig, ExecHandler, Handler, HandlerError, ItemFailure, Outcome, PIPELINE_DEPTH,
    handler_env,
};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::task::JoinSet;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn config(script: &str) -> ExecConfig {
    let mut cfg = ExecConfig::new(vec!["python3".into(), script.into()], fixtures());
    cfg.timeout = Duration::from_secs(30);
    cfg
}

fn raw(value: Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(&value).unwrap()
}

fn ok(answer: Answer) -> Value {
    match answer.outcome {
        Outcome::Ok(result) => serde_json::from_str(result.get()).unwrap(),
        Outcome::Err(failure) => panic!("expected a result, got {failure:?}"),
    }
}

fn err(answer: Answer) -> ItemFailure {
    match answer.outcome {
        Outcome::Err(failure) => failure,
        Outcome::Ok(result) => panic!("expected a failure, got {}", result.get()),
    }
}

/// Runs all items at once, each on its own task; results in item order.
async fn call_all(handler: &Arc<ExecHandler>, items: Vec<Value>) -> Vec<Answer> {
    let mut set = JoinSet::new();
    for (index, item) in items.into_iter().enumerate() {
        let handler = handler.clone();
        set.spawn(async move { (index, handler.call(&raw(item)).await) });
    }
    let mut outcomes: Vec<Option<Answer>> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (index, outcome) = joined.unwrap();
        if outcomes.len() <= index {
            outcomes.resize_with(index + 1, || None);
        }
        outcomes[index] = Some(outcome);
    }
    outcomes.into_iter().map(Option::unwrap).collect()
}

/// Waits until the process answers, so that tests with short item timeouts do not count the
/// interpreter's start-up (slow on a loaded machine) against the item.
async fn warm_up(handler: &ExecHandler) {
    for _ in 0..50 {
        if handler.call(&raw(json!({"warm_up": true}))).await.is_ok() {
            return;
        }
    }
    panic!("the handler never answered");
}

/// True while the process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn wait_until_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_items_each_get_their_own_result() {
    let mut cfg = config("echo.py");
    cfg.concurrency = 8;
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    let pid = handler.pid().unwrap();
    let items: Vec<Value> = (0..200)
        .map(|n| json!({"n": n, "text": "x".repeat(n % 13), "nested": {"k": [n, -(n as i64)]}}))
        .collect();
    let outcomes = call_all(&handler, items.clone()).await;
    for (item, outcome) in items.iter().zip(outcomes) {
        assert_eq!(&ok(outcome), item);
    }
    assert_eq!(handler.pid(), Some(pid), "no restart happened");
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_out_of_order_are_matched_by_id() {
    let mut cfg = config("out_of_order.py");
    cfg.concurrency = 4;
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    // Longer delays first, so that the process answers later items earlier.
    let items: Vec<Value> = (0..12)
        .map(|n| json!({"n": n, "delay_ms": 40 * (12 - n)}))
        .collect();
    let outcomes = call_all(&handler, items.clone()).await;
    let results: Vec<Value> = outcomes.into_iter().map(ok).collect();
    for (item, result) in items.iter().zip(&results) {
        assert_eq!(&result["item"], item);
    }
    let answered: Vec<u64> = results
        .iter()
        .map(|r| r["answered_as"].as_u64().unwrap())
        .collect();
    assert!(
        answered.windows(2).any(|w| w[0] > w[1]),
        "the process answered in order, the test proves nothing: {answered:?}"
    );
    let max_in_flight = results
        .iter()
        .map(|r| r["max_in_flight"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(max_in_flight <= 4, "concurrency exceeded: {max_in_flight}");
    assert!(max_in_flight >= 2, "requests were not concurrent");
    handler.shutdown().await;
}

#[tokio::test]
async fn error_responses_map_to_error_kinds() {
    let handler = ExecHandler::start(config("errors.py")).unwrap();
    let failure = err(handler
        .call(&raw(
            json!({"fail": "transient", "message": "rate limited"}),
        ))
        .await);
    assert_eq!(failure, ItemFailure::transient("rate limited"));
    let failure = err(handler
        .call(&raw(json!({"fail": "permanent", "message": "bad input"})))
        .await);
    assert_eq!(failure, ItemFailure::permanent("bad input"));
    let failure = err(handler
        .call(&raw(json!({"fail": "mysterious", "message": "what"})))
        .await);
    assert_eq!(failure, ItemFailure::permanent("what"));
    let failure = err(handler.call(&raw(json!({"bare_error": "oops"}))).await);
    assert_eq!(failure, ItemFailure::permanent("oops"));
    // A list result (several rows) comes back as the handler wrote it; the stray lines the
    // fixture printed at start were ignored.
    let result = ok(handler.call(&raw(json!({"a": 1}))).await);
    assert_eq!(result, json!([{"a": 1}, {"a": 1}]));
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_item_times_out_and_others_still_succeed() {
    let mut cfg = config("hang.py");
    cfg.timeout = Duration::from_secs(1);
    cfg.concurrency = 4;
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    warm_up(&handler).await;
    let started = Instant::now();
    let outcomes = call_all(
        &handler,
        vec![json!({"hang": true}), json!({"n": 1}), json!({"n": 2})],
    )
    .await;
    let mut outcomes = outcomes.into_iter();
    let failure = err(outcomes.next().unwrap());
    assert_eq!(failure, ItemFailure::transient("timed out after 1s"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(ok(outcomes.next().unwrap()), json!({"n": 1}));
    assert_eq!(ok(outcomes.next().unwrap()), json!({"n": 2}));
    // The timed-out slot was given back: a full set of concurrent calls still goes through.
    let items: Vec<Value> = (0..8).map(|n| json!({"n": n})).collect();
    for (item, outcome) in items.iter().zip(call_all(&handler, items.clone()).await) {
        assert_eq!(&ok(outcome), item);
    }
    handler.shutdown().await;
}

#[tokio::test]
async fn a_late_answer_is_not_taken_for_a_later_item() {
    let mut cfg = config("hang.py");
    cfg.timeout = Duration::from_secs(1);
    let handler = ExecHandler::start(cfg).unwrap();
    warm_up(&handler).await;
    let failure = err(handler.call(&raw(json!({"n": "held", "hang": true}))).await);
    assert_eq!(failure.kind, ErrorKind::Transient);
    // Were the process still the same, the fixture would answer the held item first, while
    // this call waits, and that late answer must not be handed to this call. The timeout
    // restarted the process, so the late answer cannot even come (the unit tests cover a late
    // answer within one process).
    let item = json!({"n": "next", "release": true});
    assert_eq!(ok(handler.call(&raw(item.clone())).await), item);
    assert_eq!(
        ok(handler.call(&raw(json!({"n": 3}))).await),
        json!({"n": 3})
    );
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_the_items_in_flight_and_the_process_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("crash.py");
    cfg.concurrency = 4;
    cfg.stderr_log = Some(dir.path().join("handler.log"));
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    let first = ok(handler.call(&raw(json!({"n": 0}))).await);
    let first_pid = first["pid"].as_u64().unwrap();

    let slow = {
        let handler = handler.clone();
        tokio::spawn(async move {
            handler
                .call(&raw(json!({"n": 1, "delay_ms": 20_000})))
                .await
        })
    };
    // Let the slow item reach the process before it crashes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crashed = err(handler.call(&raw(json!({"crash": true}))).await);
    assert_eq!(crashed.kind, ErrorKind::Infrastructure);
    assert_eq!(crashed.message, "handler process exited (exit status: 3)");
    let in_flight = err(slow.await.unwrap());
    assert_eq!(in_flight, crashed);

    let after = ok(handler.call(&raw(json!({"n": 2}))).await);
    assert_eq!(after["item"], json!({"n": 2}));
    let second_pid = after["pid"].as_u64().unwrap();
    assert_ne!(first_pid, second_pid, "a new process answered");
    assert!(!alive(u32::try_from(first_pid).unwrap()));
    handler.shutdown().await;
}

#[tokio::test]
async fn crashes_between_answers_do_not_add_up() {
    let mut cfg = config("crash.py");
    cfg.max_restarts = 1;
    let handler = ExecHandler::start(cfg).unwrap();
    for round in 0..4 {
        let crashed = err(handler.call(&raw(json!({"crash": true}))).await);
        assert_eq!(crashed.kind, ErrorKind::Infrastructure, "round {round}");
        let answer = ok(handler.call(&raw(json!({"round": round}))).await);
        assert_eq!(answer["item"]["round"], round);
    }
    handler.shutdown().await;
}

#[tokio::test]
async fn a_process_that_keeps_crashing_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("handler.log");
    let mut cfg = config("exit_at_start.py");
    cfg.max_restarts = 2;
    cfg.stderr_log = Some(log.clone());
    let handler = ExecHandler::start(cfg).unwrap();
    let mut given_up = None;
    for _ in 0..20 {
        let failure = err(handler.call(&raw(json!({"n": 1}))).await);
        assert_eq!(failure.kind, ErrorKind::Infrastructure);
        if failure.message.contains("keeps crashing") {
            given_up = Some(failure);
            break;
        }
        assert_eq!(failure.message, "handler process exited (exit status: 7)");
    }
    let given_up = given_up.expect("the handler never gave up");
    assert_eq!(given_up.message, "handler keeps crashing: exit status: 7");
    assert!(given_up.fatal, "giving up must end the attempt");

    // From now on calls fail at once, without starting processes.
    let started = Instant::now();
    let again = err(handler.call(&raw(json!({"n": 2}))).await);
    assert_eq!(again, given_up);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(handler.pid(), None);
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("exit_at_start starting").count(),
        3,
        "the first start and max_restarts restarts: {log}"
    );
    handler.shutdown().await;
}

#[tokio::test]
async fn start_fails_for_a_missing_program() {
    let cfg = ExecConfig::new(vec!["orch-no-such-program-42".into()], fixtures());
    let error = ExecHandler::start(cfg).unwrap_err();
    assert!(matches!(error, HandlerError::Spawn { .. }), "{error:?}");
    assert!(
        error.to_string().contains("`orch-no-such-program-42`"),
        "{error}"
    );
    assert_eq!(error.category(), ErrorCategory::Infrastructure);

    let cfg = ExecConfig::new(vec!["./echo.py.missing".into()], fixtures());
    let error = ExecHandler::start(cfg).unwrap_err();
    assert!(error.to_string().contains("./echo.py.missing"), "{error}");

    let cfg = ExecConfig::new(vec!["python3".into()], fixtures().join("no-such-dir"));
    let error = ExecHandler::start(cfg).unwrap_err();
    assert!(matches!(error, HandlerError::Workdir { .. }), "{error:?}");

    let error = ExecHandler::start(ExecConfig::new(vec![], fixtures())).unwrap_err();
    assert!(matches!(error, HandlerError::EmptyCommand));
    assert_eq!(error.category(), ErrorCategory::Invalid);
}

#[tokio::test]
async fn stderr_is_appended_to_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("task.log");
    std::fs::write(&log, "worker: earlier line\n").unwrap();
    let mut cfg = config("echo.py");
    cfg.stderr_log = Some(log.clone());
    let handler = ExecHandler::start(cfg).unwrap();
    let item = json!({"log": "hello from the handler"});
    assert_eq!(ok(handler.call(&raw(item.clone())).await), item);
    handler.shutdown().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text,
        "worker: earlier line\necho handler ready\nhello from the handler\n"
    );
}

#[tokio::test]
async fn env_and_workdir_reach_the_process() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("echo.py"), dir.path().join("echo.py")).unwrap();
    let mut cfg = ExecConfig::new(vec!["python3".into(), "echo.py".into()], dir.path());
    cfg.env.insert("ORCH_TEST_VALUE".into(), "forty-two".into());
    let handler = ExecHandler::start(cfg).unwrap();
    let result = ok(handler.call(&raw(json!({"env": "ORCH_TEST_VALUE"}))).await);
    assert_eq!(result["env"], "forty-two");
    assert_eq!(
        PathBuf::from(result["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        dir.path().canonicalize().unwrap()
    );
    handler.shutdown().await;
}

#[tokio::test]
async fn each_env_form_reaches_the_process() {
    let spec: BTreeMap<String, EnvValue> = serde_json::from_value(json!({
        "MODEL": "small",
        "FROM_WORKER": {"fromEnv": "ORCH_TEST_WORKER_VARIABLE"},
        "API_KEY": {"valueFrom": {"secretKeyRef": {"name": "api-creds", "key": "token"}}},
    }))
    .unwrap();
    // The worker's environment: the variable `fromEnv` names, and the one the operator sets
    // from the Secret.
    let worker = |name: &str| match name {
        "ORCH_TEST_WORKER_VARIABLE" => Some(OsString::from("from-the-worker")),
        "ORCH_SECRET_API_CREDS_TOKEN" => Some(OsString::from("sk-from-the-secret")),
        _ => None,
    };
    let mut cfg = config("echo.py");
    cfg.env = handler_env(&spec, worker).unwrap();
    // Debug output names the variables, never their values.
    let shown = format!("{cfg:?}");
    assert!(shown.contains("API_KEY"), "{shown}");
    assert!(
        !shown.contains("sk-from-the-secret") && !shown.contains("small"),
        "{shown}"
    );
    let handler = ExecHandler::start(cfg).unwrap();
    for (name, value) in [
        ("MODEL", "small"),
        ("FROM_WORKER", "from-the-worker"),
        ("API_KEY", "sk-from-the-secret"),
    ] {
        let result = ok(handler.call(&raw(json!({"env": name}))).await);
        assert_eq!(result["env"], value, "{name}");
    }
    handler.shutdown().await;

    // A variable the worker does not have stops the start, naming it and never a value.
    let only_secret = |name: &str| {
        (name == "ORCH_SECRET_API_CREDS_TOKEN").then(|| OsString::from("sk-from-the-secret"))
    };
    let e = handler_env(&spec, only_secret).unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Infrastructure);
    let text = e.to_string();
    assert!(
        text.contains("`FROM_WORKER`") && text.contains("`ORCH_TEST_WORKER_VARIABLE`"),
        "{text}"
    );
    assert!(!text.contains("sk-from"), "{text}");
    let e = handler_env(&spec, |_| None).unwrap_err().to_string();
    assert!(
        e.contains("`API_KEY`") && e.contains("`ORCH_SECRET_API_CREDS_TOKEN`"),
        "{e}"
    );
}

#[tokio::test]
async fn shutdown_stops_the_process_and_later_calls_fail() {
    let handler = ExecHandler::start(config("echo.py")).unwrap();
    let pid = handler.pid().unwrap();
    assert!(alive(pid));
    handler.shutdown().await;
    assert!(!alive(pid), "shutdown returned before the process was gone");
    handler.shutdown().await;
    let failure = err(handler.call(&raw(json!({"n": 1}))).await);
    assert_eq!(
        failure,
        ItemFailure::infrastructure("handler was shut down")
    );
}

#[tokio::test]
async fn shutdown_kills_a_process_that_ignores_end_of_input() {
    let mut cfg = config("hang.py");
    cfg.command.push("--ignore-eof".into());
    let handler = ExecHandler::start(cfg).unwrap();
    assert_eq!(
        ok(handler.call(&raw(json!({"n": 1}))).await),
        json!({"n": 1})
    );
    let pid = handler.pid().unwrap();
    handler.shutdown().await;
    assert!(!alive(pid), "the stubborn process survived shutdown");
}

#[tokio::test]
async fn dropping_the_handler_kills_the_process() {
    let handler = ExecHandler::start(config("echo.py")).unwrap();
    assert_eq!(
        ok(handler.call(&raw(json!({"n": 1}))).await),
        json!({"n": 1})
    );
    let pid = handler.pid().unwrap();
    drop(handler);
    assert!(
        wait_until_dead(pid).await,
        "process {pid} outlived its handler"
    );
}

/// A handler written with python/orch_handler.py, which batches its answers: the worker's
/// batched requests and its batched reads must still pair every answer with its own item.
fn orch_handler_script(dir: &std::path::Path) -> ExecConfig {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python");
    let script = format!(
        "import sys\nsys.path.insert(0, {python:?})\n\
         from orch_handler import handler, Permanent\n\
         @handler\n\
         def work(item):\n    \
             if item['n'] % 97 == 0:\n        raise Permanent(f\"no {{item['n']}}\")\n    \
             return {{'n': item['n'], 'text': item['text'].upper()}}\n",
        python = python.to_string_lossy(),
    );
    std::fs::write(dir.join("handler.py"), script).unwrap();
    let mut cfg = ExecConfig::new(vec!["python3".into(), "handler.py".into()], dir);
    cfg.timeout = Duration::from_secs(30);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_python_handler_answers_every_item_as_its_own() {
    let dir = tempfile::tempdir().unwrap();
    for concurrency in [1, 32] {
        let mut cfg = orch_handler_script(dir.path());
        cfg.concurrency = concurrency;
        let handler = Arc::new(ExecHandler::start(cfg).unwrap());
        let pid = handler.pid().unwrap();
        let count = if concurrency == 1 { 100 } else { 3000 };
        let items: Vec<Value> = (0..count)
            .map(|n| json!({"n": n, "text": format!("item-{n}-{}", "x".repeat(n % 11))}))
            .collect();
        let outcomes = call_all(&handler, items.clone()).await;
        for (item, outcome) in items.iter().zip(outcomes) {
            let n = item["n"].as_u64().unwrap();
            if n % 97 == 0 {
                assert_eq!(err(outcome), ItemFailure::permanent(format!("no {n}")));
            } else {
                let expected = json!({
                    "n": n,
                    "text": item["text"].as_str().unwrap().to_uppercase(),
                });
                assert_eq!(ok(outcome), expected, "concurrency {concurrency}");
            }
        }
        assert_eq!(handler.pid(), Some(pid), "no restart happened");
        handler.shutdown().await;
    }
}

/// The result a `sequential.py` item gets: the item, and which process answered it.
fn echoed(answer: Answer) -> (Value, u64) {
    let result = ok(answer);
    (result["item"].clone(), result["pid"].as_u64().unwrap())
}

/// A sequential handler stuck on one item used to hold up every request queued behind it: they
/// all timed out, and so did every later item sent to the stuck process. Now the timeout kills
/// the process and the other items in flight go to a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_item_fails_alone_and_the_items_behind_it_are_sent_again() {
    let mut cfg = config("sequential.py");
    cfg.timeout = Duration::from_secs(2);
    cfg.concurrency = 4;
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    warm_up(&handler).await;
    let first_pid = handler.pid().unwrap();
    let items: Vec<Value> = (0..50)
        .map(|n| {
            if n == 10 {
                json!({"n": n, "hang": true})
            } else {
                json!({"n": n})
            }
        })
        .collect();
    let started = Instant::now();
    let outcomes = call_all(&handler, items.clone()).await;
    let mut pids = std::collections::BTreeSet::new();
    for (n, (item, outcome)) in items.iter().zip(outcomes).enumerate() {
        if n == 10 {
            assert_eq!(err(outcome), ItemFailure::transient("timed out after 2s"));
        } else {
            let (echo, pid) = echoed(outcome);
            assert_eq!(&echo, item);
            pids.insert(pid);
        }
    }
    // A guard against hanging, far above the few seconds this takes (50 × 2 s before the fix).
    assert!(started.elapsed() < Duration::from_secs(40));
    assert!(
        pids.len() >= 2 && !alive(first_pid),
        "the stuck process was replaced: {pids:?}"
    );
    handler.shutdown().await;
}

/// A handler stuck on every item: each item fails with its own timeout, none hangs the test and
/// none is sent again forever; kills after timeouts are no crashes, so the handler never gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_stuck_on_every_item_fails_each_with_its_timeout() {
    let mut cfg = config("sequential.py");
    cfg.timeout = Duration::from_secs(1);
    cfg.concurrency = 3;
    cfg.max_restarts = 1;
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    warm_up(&handler).await;
    let started = Instant::now();
    let items: Vec<Value> = (0..5).map(|n| json!({"n": n, "hang": true})).collect();
    for outcome in call_all(&handler, items).await {
        let failure = err(outcome);
        assert_eq!(failure.kind, ErrorKind::Transient, "{failure:?}");
        assert!(!failure.fatal, "{failure:?}");
        assert!(
            failure.message == "timed out after 1s" || failure.message.contains("restarted"),
            "{failure:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(40));
    // Still usable.
    assert_eq!(
        echoed(handler.call(&raw(json!({"n": 9}))).await).0,
        json!({"n": 9})
    );
    handler.shutdown().await;
}

/// Answers for ids nobody asked for, a second answer for the same id, lines that are not JSON:
/// the item without an answer of its own fails with a timeout, the others all get theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_duplicate_ids_and_garbage_lines_affect_only_their_own_items() {
    let mut cfg = config("sequential.py");
    cfg.timeout = Duration::from_secs(2);
    cfg.concurrency = 4;
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    warm_up(&handler).await;
    let kind_of = |n: usize| match n {
        5 => Some("unknown_id"),
        12 => Some("duplicate"),
        20 => Some("garbage"),
        27 => Some("noise"),
        _ => None,
    };
    let items: Vec<Value> = (0..40)
        .map(|n| match kind_of(n) {
            Some(key) => json!({"n": n, key: true}),
            None => json!({"n": n}),
        })
        .collect();
    let outcomes = call_all(&handler, items.clone()).await;
    for (n, (item, outcome)) in items.iter().zip(outcomes).enumerate() {
        match kind_of(n) {
            Some("unknown_id" | "garbage") => {
                assert_eq!(
                    err(outcome),
                    ItemFailure::transient("timed out after 2s"),
                    "{n}"
                );
            }
            _ => assert_eq!(&echoed(outcome).0, item, "{n}"),
        }
    }
    handler.shutdown().await;
}

/// A sequential handler that dies on one item every time: that item fails as infrastructure
/// naming the exit, each time it is tried, and every other item succeeds.
#[tokio::test]
async fn a_handler_that_crashes_on_one_item_fails_only_that_item() {
    let mut cfg = config("sequential.py");
    cfg.concurrency = 1;
    cfg.max_restarts = 2;
    let handler = ExecHandler::start(cfg).unwrap();
    // More tries of the bad item than `max_restarts`: the answers between them prove the process
    // works, so it is never given up.
    for n in 0..20 {
        if n % 4 == 1 {
            let failure = err(handler.call(&raw(json!({"n": n, "crash": true}))).await);
            assert_eq!(
                failure,
                ItemFailure::infrastructure("handler process exited (exit status: 3)")
            );
        } else {
            let item = json!({"n": n});
            assert_eq!(echoed(handler.call(&raw(item.clone())).await).0, item);
        }
    }
    handler.shutdown().await;
}

/// What `pipelined.py` answered for each item: how many requests waited queued behind it
/// when it started, and the pid of the process that answered.
fn backlog_and_pid(answer: Answer) -> (u64, u64) {
    let result = ok(answer);
    (
        result["backlog"].as_u64().unwrap(),
        result["pid"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_handler_that_announces_a_pipeline_gets_requests_queued() {
    let mut cfg = config("pipelined.py");
    cfg.concurrency = 1;
    // Shorter than the whole run, longer than each item: queued items are not on the clock.
    cfg.timeout = Duration::from_millis(900);
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    warm_up(&handler).await;
    assert_eq!(handler.window(), Some(1 + PIPELINE_DEPTH));
    let items = (0..8).map(|n| json!({"n": n, "sleep_ms": 300})).collect();
    let answers = call_all(&handler, items).await;
    let backlogs: Vec<u64> = answers
        .into_iter()
        .map(|answer| backlog_and_pid(answer).0)
        .collect();
    // Every item ran (none timed out though they took 2.4 s in all), and items waited queued on
    // the handler's stdin while it worked on another.
    assert!(backlogs.iter().any(|b| *b >= 2), "backlogs {backlogs:?}");
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_does_not_announce_a_pipeline_gets_concurrency_requests_at_most() {
    let mut cfg = config("pipelined.py");
    cfg.concurrency = 2;
    cfg.env.insert("NO_PIPELINE".into(), "1".into());
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    warm_up(&handler).await;
    assert_eq!(handler.window(), Some(2));
    let items = (0..12).map(|n| json!({"n": n, "sleep_ms": 20})).collect();
    for answer in call_all(&handler, items).await {
        // With two in flight, at most one waits while the other runs.
        assert!(backlog_and_pid(answer).0 <= 1);
    }
    handler.shutdown().await;
}

// On one thread, calls spawned in order are sent in order.
#[tokio::test]
async fn a_crash_charges_the_item_being_worked_on_and_sends_the_queued_ones_again() {
    let mut cfg = config("pipelined.py");
    cfg.concurrency = 1;
    let handler = Arc::new(ExecHandler::start(cfg).unwrap());
    warm_up(&handler).await;
    let first = backlog_and_pid(handler.call(&raw(json!({"n": 0}))).await).1;
    let mut items = vec![json!({"n": 1, "sleep_ms": 200}), json!({"crash": true})];
    items.extend((2..10).map(|n| json!({"n": n})));
    let mut answers = call_all(&handler, items).await.into_iter();
    // The item before the crash was answered by the first process.
    assert_eq!(backlog_and_pid(answers.next().unwrap()).1, first);
    // The handler works on one item at a time: the crash is that item's own, not shared.
    assert_eq!(
        err(answers.next().unwrap()),
        ItemFailure::infrastructure("handler process exited (exit status: 3)")
    );
    // The items queued behind it were not looked at: the next process answers them.
    for answer in answers {
        assert_ne!(backlog_and_pid(answer).1, first);
    }
    handler.shutdown().await;
}

/// Peak resident memory of this test process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// An answer over `max_answer_bytes` is thrown away as it comes, never held: its item fails as
/// permanent when the line starts with its id, and the process goes on; without a leading id the
/// process is restarted and its items in flight fail as transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_size_limit_fails_its_item_without_being_held() {
    let mut cfg = config("sequential.py");
    cfg.max_answer_bytes = 1024 * 1024;
    let handler = ExecHandler::start(cfg).unwrap();
    let (_, pid) = echoed(handler.call(&raw(json!({"n": 0}))).await);
    // 256 MiB without a newline; the worker used to keep all of it.
    let huge = 256 * 1024 * 1024;
    let failure = err(handler.call(&raw(json!({"huge": huge}))).await);
    assert_eq!(
        failure,
        ItemFailure::permanent("handler answer is longer than handler.exec.maxAnswerBytes (1Mi)")
    );
    assert!(
        peak_rss() < 160 * 1024 * 1024,
        "the long line was held: peak {} MiB",
        peak_rss() >> 20
    );
    // Just under the limit passes; the same process answers.
    let under = 1024 * 1024 - r#"{"id": 3, "result": ""}"#.len();
    match handler.call(&raw(json!({"huge": under}))).await.outcome {
        Outcome::Ok(result) => assert_eq!(result.get().len(), under + 2),
        Outcome::Err(failure) => panic!("{failure:?}"),
    }
    assert_eq!(echoed(handler.call(&raw(json!({"n": 1}))).await).1, pid);

    // The id at the end of the line: which item it answers cannot be known.
    let failure = err(handler
        .call(&raw(json!({"huge": 2 * 1024 * 1024, "id_last": true})))
        .await);
    assert_eq!(failure.kind, ErrorKind::Transient, "{failure:?}");
    assert!(
        failure.message.contains("maxAnswerBytes (1Mi)") && failure.message.contains("restarted"),
        "{failure:?}"
    );
    let (_, after) = echoed(handler.call(&raw(json!({"n": 2}))).await);
    assert_ne!(after, pid, "the process was restarted");
    handler.shutdown().await;
}
