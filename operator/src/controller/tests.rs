//! Reconcile against a fake API server (tower-test): each scenario lists the requests the
//! controller must make, in order, and what the fake answers. No cluster, no stores beyond a
//! temporary directory.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

use super::*;
use crate::config::OperatorConfig;
use orch_crd::OrchJobSpec;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn config(storage: Option<String>) -> OperatorConfig {
    OperatorConfig {
        storage_uri: storage,
        slurm_url: None,
        slurm_token_file: None,
        slurm_allow_http_loopback: false,
        namespace: "orch-system".into(),
        worker_command: vec!["orch-worker".into()],
        worker_image: None,
        pod_worker_command: Vec::new(),
        worker_scratch_bytes: 1 << 30,
        scratch: std::env::temp_dir().join("orch-operator-unit"),
        job_lease: Duration::from_secs(60),
        tick: Duration::from_millis(100),
        // Zero: every reconcile of a scenario does the whole work (see `Context::too_soon`).
        status_interval: Duration::ZERO,
    }
}

fn context(storage: Option<String>) -> (Arc<Context>, Handle) {
    context_with(config(storage))
}

fn context_with(config: OperatorConfig) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "orch-operator".into(),
            instance: Some("unit".into()),
        },
    );
    let ctx = Context::new(
        client,
        config,
        Supervisors::default(),
        recorder,
        Arc::new(Metrics::default()),
        team_a_policy(),
    );
    (Arc::new(ctx), handle)
}

/// The policy of namespace `team-a`: storage under the operator's, data under `s3://b/team-a/`,
/// Slurm through the commands.
fn team_a_policy() -> Store<OrchPolicy> {
    let mut writer = kube::runtime::reflector::store::Writer::<OrchPolicy>::default();
    let spec: orch_crd::OrchPolicySpec = serde_json::from_value(json!({
        "namespaces": ["team-a"],
        "storage": {"dataPrefix": "s3://b/team-a/"},
        "slurm": {"transport": "cli"},
    }))
    .unwrap();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(OrchPolicy::new(
        "team-a", spec,
    )));
    writer.as_reader()
}

/// A job whose spec the schema accepts; `formats` decides whether core's rules do.
fn job(name: &str, formats: &str) -> OrchJob {
    let spec: OrchJobSpec = serde_json::from_value(json!({
        "input": {"uri": "s3://b/team-a/in.jsonl"},
        "handler": {"builtin": {"name": "identity"}},
        "batch": {"size": 10},
        "output": {"uri": "s3://b/team-a/out/", "formats": [formats]},
        "executor": {"slurm": {}},
    }))
    .unwrap();
    let mut j = OrchJob::new(name, spec);
    j.metadata.namespace = Some("team-a".into());
    j.metadata.uid = Some(format!("uid-{name}"));
    j.metadata.resource_version = Some("7".into());
    j.metadata.generation = Some(2);
    j
}

/// The next request: checks method and path, returns its JSON body and answers `reply`.
async fn expect(handle: &mut Handle, method: Method, path: &str, reply: Value) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
        .expect("the client is alive");
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or("").to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let mut body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    if let Value::Object(map) = &mut body {
        map.insert("__query".into(), Value::String(query));
    }
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

const JOBS: &str = "/apis/orch.dev/v1alpha1/namespaces/team-a/orchjobs";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

#[tokio::test]
async fn an_invalid_spec_gets_the_finalizer_an_event_and_a_failed_status() {
    let (ctx, mut api) = context(Some("/tmp/unused".into()));
    let job = job("bad", "sqlite");
    let reply = serde_json::to_value(&job).unwrap();
    let object = Arc::new(DeserializeGuard(Ok(job)));
    let reconciling = tokio::spawn(reconcile(object, ctx));

    let finalizer = expect(
        &mut api,
        Method::PATCH,
        &format!("{JOBS}/bad"),
        reply.clone(),
    )
    .await;
    assert_eq!(
        finalizer["metadata"]["finalizers"],
        json!(["orch.dev/cleanup"])
    );
    // Optimistic concurrency: the patch names the version it was computed from.
    assert_eq!(finalizer["metadata"]["resourceVersion"], "7");

    let event = expect(&mut api, Method::POST, EVENTS, json!({})).await;
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("spec.output.formats"),
        "{event}"
    );

    let status = expect(
        &mut api,
        Method::PATCH,
        &format!("{JOBS}/bad/status"),
        reply,
    )
    .await;
    assert!(
        status["__query"]
            .as_str()
            .unwrap()
            .contains("fieldManager=orch-operator")
    );
    assert!(status["__query"].as_str().unwrap().contains("force=true"));
    let s = &status["status"];
    assert_eq!(s["phase"], "Failed");
    assert_eq!(s["observedGeneration"], 2);
    let failed = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap();
    assert_eq!(
        (failed["status"].as_str(), failed["reason"].as_str()),
        (Some("True"), Some("InvalidSpec"))
    );

    let action = reconciling.await.unwrap().unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_job_its_policy_refuses_fails_policy_denied_with_the_field_and_the_rule() {
    let storage = tempfile::tempdir().unwrap();
    let (ctx, mut api) = context(Some(storage.path().display().to_string()));
    // Valid for `orch validate`, but the partition is not the policy's (it lists none), and
    // the output lies under another tenant's prefix.
    let mut job = job("greedy", "parquet");
    job.spec.0.resources.partition = Some("all-nodes".into());
    job.spec.0.output.uri = Some("s3://b/team-b/out/".into());
    job.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let (action, requests) = serve(&mut api, &ctx, &job).await;
    assert_eq!(action, Action::await_change());
    let events = events(&requests);
    assert_eq!(events.len(), 1, "{requests:?}");
    assert_eq!(events[0]["reason"], "PolicyDenied");
    assert_eq!(events[0]["type"], "Warning");
    let note = events[0]["note"].as_str().unwrap();
    for part in [
        "spec.output.uri: refused by OrchPolicy `team-a`",
        "s3://b/team-a/",
        "spec.resources.partition: refused by OrchPolicy `team-a`",
    ] {
        assert!(note.contains(part), "{part} not in {note}");
    }
    let (_, _, status) = requests
        .iter()
        .find(|(m, p, _)| m == Method::PATCH && p == &format!("{JOBS}/greedy/status"))
        .unwrap();
    let s = &status["status"];
    assert_eq!(s["phase"], "Failed");
    let failed = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap();
    assert_eq!(failed["reason"], "PolicyDenied");
    assert_eq!(failed["message"].as_str(), Some(note));
    // Nothing ran.
    assert!(ctx.supervisors.snapshot(&job.uid().unwrap()).is_none());
}

#[tokio::test]
async fn a_namespace_no_policy_governs_runs_nothing() {
    let storage = tempfile::tempdir().unwrap();
    let (ctx, mut api) = context(Some(storage.path().display().to_string()));
    let mut job = job("stray", "parquet");
    job.metadata.namespace = Some("team-z".into());
    job.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let (_, requests) = serve(&mut api, &ctx, &job).await;
    let events: Vec<_> = requests
        .iter()
        .filter(|(m, p, _)| m == Method::POST && p.ends_with("/namespaces/team-z/events"))
        .collect();
    assert_eq!(events.len(), 1, "{requests:?}");
    assert_eq!(events[0].2["reason"], "PolicyDenied");
    assert!(
        events[0].2["note"]
            .as_str()
            .unwrap()
            .contains("no OrchPolicy governs namespace `team-z`")
    );
    assert!(ctx.supervisors.snapshot(&job.uid().unwrap()).is_none());
}

#[tokio::test]
async fn an_invalid_status_already_written_is_not_written_or_announced_again() {
    let (ctx, mut api) = context(Some("/tmp/unused".into()));
    let mut job = job("bad", "sqlite");
    job.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let errors = prepare_job(&job, &ctx.config, &ctx.policy_list())
        .unwrap_err()
        .errors()
        .to_vec();
    job.status = Some(validation_failure(2, "2026-11-26T00:00:00Z", &errors));
    let object = Arc::new(DeserializeGuard(Ok(job)));
    let action = reconcile(object, ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    // Not one request (the client is gone or silent).
    let next = tokio::time::timeout(Duration::from_millis(200), api.next_request()).await;
    assert!(matches!(next, Err(_) | Ok(None)), "a request was made");
}

#[tokio::test]
async fn deleting_a_job_that_never_ran_only_removes_the_finalizer() {
    let storage = tempfile::tempdir().unwrap();
    let (ctx, mut api) = context(Some(storage.path().display().to_string()));
    let mut job = job("gone", "parquet");
    job.metadata.finalizers = Some(vec!["other.io/keep".into(), FINALIZER.into()]);
    job.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let reply = serde_json::to_value(&job).unwrap();
    let reconciling = tokio::spawn(reconcile(Arc::new(DeserializeGuard(Ok(job))), ctx));
    let patch = expect(&mut api, Method::PATCH, &format!("{JOBS}/gone"), reply).await;
    // Only ours goes; another controller's finalizer stays.
    assert_eq!(patch["metadata"]["finalizers"], json!(["other.io/keep"]));
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::await_change());
}

#[tokio::test]
async fn an_unreadable_object_is_reported_and_skipped() {
    let (ctx, mut api) = context(None);
    let raw = json!({
        "apiVersion": "orch.dev/v1alpha1",
        "kind": "OrchJob",
        "metadata": {"name": "broken", "namespace": "team-a", "uid": "u1"},
        "spec": {"batch": "not an object"},
    });
    let guard: Watched = serde_json::from_value(raw).unwrap();
    assert!(guard.0.is_err());
    let reconciling = tokio::spawn(reconcile(Arc::new(guard), ctx));
    let event = expect(&mut api, Method::POST, EVENTS, json!({})).await;
    assert_eq!(event["reason"], "Unreadable");
    assert_eq!(event["regarding"]["name"], "broken");
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::await_change());
}

#[test]
fn job_ids_follow_the_object_not_its_spec() {
    let a = job("reviews", "parquet");
    let mut b = a.clone();
    b.spec.0.batch.size = Some(99);
    assert_eq!(job_id(&a), job_id(&b));
    let mut c = a.clone();
    c.metadata.uid = Some("another".into());
    assert_ne!(job_id(&a), job_id(&c));
    assert!(job_id(&a).starts_with("reviews-"));
}

/// Reconciles `job`, answering every request with the object itself until the reconcile
/// ends: for scenarios where what was asked matters, not the order. Returns the action and
/// the requests (method, path, body).
async fn serve(
    handle: &mut Handle,
    ctx: &Arc<Context>,
    job: &OrchJob,
) -> (Action, Vec<(Method, String, Value)>) {
    let reply = serde_json::to_vec(job).unwrap();
    let mut reconciling = tokio::spawn(reconcile(
        Arc::new(DeserializeGuard(Ok(job.clone()))),
        ctx.clone(),
    ));
    let mut requests = Vec::new();
    loop {
        tokio::select! {
            done = &mut reconciling => return (done.unwrap().unwrap(), requests),
            next = handle.next_request() => {
                let (request, send) = next.expect("the client is alive");
                let method = request.method().clone();
                let path = request.uri().path().to_string();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                requests.push((method, path, body));
                send.send_response(Response::builder().body(Body::from(reply.clone())).unwrap());
            }
        }
    }
}

fn events(requests: &[(Method, String, Value)]) -> Vec<&Value> {
    requests
        .iter()
        .filter(|(m, p, _)| m == Method::POST && p == EVENTS)
        .map(|(_, _, body)| body)
        .collect()
}

/// A job started with a valid spec (its record in the stores), then edited (generation 2)
/// into a spec the rules refuse: the object as the operator then sees it.
async fn started_then_refused(ctx: &Context, name: &str) -> OrchJob {
    started(
        ctx,
        &job(name, "parquet"),
        orch_core::model::JobPhase::Running,
    )
    .await;
    let mut edited = job(name, "sqlite");
    edited.metadata.finalizers = Some(vec![FINALIZER.into()]);
    edited
}

/// The record `orch run` or the supervisor writes when a job starts, from `job`'s spec.
async fn started(ctx: &Context, job: &OrchJob, phase: orch_core::model::JobPhase) {
    let loaded = prepare_job(job, &ctx.config, &ctx.policy_list())
        .unwrap()
        .loaded;
    let storage = loaded.file.spec.storage.uri.clone().unwrap();
    let platform = ctx.platforms.get(&storage).await.unwrap();
    let mut record = orch_testkit::contract::sample_job(&job_id(job), 0);
    record.phase = phase;
    record.spec = loaded.file;
    platform
        .backends()
        .state
        .create_job(&record, &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refused_edit_of_a_started_job_is_reported_and_the_job_runs_on() {
    let storage = tempfile::tempdir().unwrap();
    let (ctx, mut api) = context(Some(storage.path().display().to_string()));
    let edited = started_then_refused(&ctx, "edited").await;
    let uid = edited.uid().unwrap();

    let (action, requests) = serve(&mut api, &ctx, &edited).await;
    let events = events(&requests);
    let refused = events
        .iter()
        .find(|e| e["reason"] == "SpecChangeRefused")
        .unwrap_or_else(|| panic!("no SpecChangeRefused event: {events:?}"));
    assert_eq!(refused["type"], "Warning");
    let note = refused["note"].as_str().unwrap();
    assert!(note.contains("spec.output.formats"), "{note}");
    assert!(
        !events.iter().any(|e| e["reason"] == "InvalidSpec"),
        "{events:?}"
    );
    let status = requests
        .iter()
        .find(|(_, p, _)| p == &format!("{JOBS}/edited/status"))
        .map(|(_, _, body)| &body["status"])
        .expect("a status write");
    assert_ne!(status["phase"], "Failed", "{status}");
    assert_eq!(status["observedGeneration"], 2);
    // The driver runs on (with the spec it started with), and the job is looked at again.
    assert!(ctx.supervisors.snapshot(&uid).is_some());
    assert_ne!(action, Action::await_change());

    // Reconciled again with that status: no second Event for the same generation.
    let mut seen = edited.clone();
    seen.status = Some(serde_json::from_value(status.clone()).unwrap());
    let (_, again) = serve(&mut api, &ctx, &seen).await;
    assert!(
        !self::events(&again)
            .iter()
            .any(|e| e["reason"] == "SpecChangeRefused"),
        "{again:?}"
    );
    ctx.supervisors.stop(&uid).await;
}

#[tokio::test]
async fn deleting_a_started_job_whose_spec_is_now_refused_cancels_it() {
    let storage = tempfile::tempdir().unwrap();
    let (ctx, mut api) = context(Some(storage.path().display().to_string()));
    let mut edited = started_then_refused(&ctx, "doomed").await;
    edited.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let uid = edited.uid().unwrap();

    let (action, requests) = serve(&mut api, &ctx, &edited).await;
    // Cancelled first, finalizer kept until the driver has stopped the tasks.
    assert!(
        events(&requests)
            .iter()
            .any(|e| e["reason"] == "Cancelling"),
        "{requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|(m, p, _)| m == Method::PATCH && p == &format!("{JOBS}/doomed")),
        "the finalizer went early: {requests:?}"
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let platform = ctx
        .platforms
        .get(&format!("{}/team-a/", storage.path().display()))
        .await
        .unwrap();
    let record = platform
        .backends()
        .state
        .get_job(&job_id(&edited))
        .await
        .unwrap()
        .unwrap();
    assert!(record.cancel_requested);
    ctx.supervisors.stop(&uid).await;
}

#[tokio::test]
async fn a_reconcile_our_own_writes_trigger_waits_for_the_status_interval() {
    let storage = tempfile::tempdir().unwrap();
    let mut cfg = config(Some(storage.path().display().to_string()));
    cfg.status_interval = Duration::from_secs(30);
    let (ctx, mut api) = context_with(cfg);
    let mut job = job("steady", "sqlite"); // refused: a reconcile writes an Event and a status
    job.metadata.finalizers = Some(vec![FINALIZER.into()]);

    let (_, requests) = serve(&mut api, &ctx, &job).await;
    assert!(!requests.is_empty(), "the first reconcile does the work");

    // The watch brings the object back with the status just written: nothing to do yet.
    let mut echoed = job.clone();
    echoed.metadata.resource_version = Some("8".into());
    echoed.status = Some(OrchJobStatus::default());
    let (action, requests) = serve(&mut api, &ctx, &echoed).await;
    assert!(requests.is_empty(), "{requests:?}");
    assert!(
        action != Action::await_change() && action != Action::requeue(Duration::ZERO),
        "{action:?}"
    );

    // A change the reconcile acts on (an annotation: cancel, retry) is acted on at once.
    let mut annotated = job.clone();
    annotated.metadata.annotations = Some([(CANCEL_ANNOTATION.to_string(), "true".into())].into());
    let (_, requests) = serve(&mut api, &ctx, &annotated).await;
    assert!(
        !requests.is_empty(),
        "an annotation change waits for nothing"
    );
}

#[test]
fn the_retry_items_annotation_chooses_what_runs_again() {
    assert_eq!(retry_choice(None), RetryChoice::Tasks);
    assert_eq!(retry_choice(Some(" ")), RetryChoice::Tasks);
    assert_eq!(
        retry_choice(Some("*")),
        RetryChoice::Items { kinds: vec![] }
    );
    assert_eq!(
        retry_choice(Some("transient, rate_limited,")),
        RetryChoice::Items {
            kinds: vec!["transient".into(), "rate_limited".into()]
        }
    );
}
