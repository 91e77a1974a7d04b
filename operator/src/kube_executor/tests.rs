//! Tests of the Kubernetes executor: the pure parts (plans, names, manifests, state mapping)
//! on k8s-openapi objects, and the requests it makes, against a fake API server (tower-test)
//! that records each request and answers from a script.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use orch_core::ErrorCategory;
use orch_core::backend::{ExecFailure, ExecState, Executor};
use orch_core::model::{TaskGroup, TaskKind};
use orch_core::spec::{ImagePullPolicy, KubernetesExecutorSpec, Quantity, ResourcesSpec};
use serde_json::{Value, json};

use super::manifest::{self, MAX_COMPLETIONS, MAX_JOB_NAME, plan_jobs};
use super::state::{IndexSet, JobView, index_state, pod_state};
use super::*;

const JOB_ID: &str = "reviews-1a2b3c4d";

fn launch() -> KubeLaunch {
    KubeLaunch {
        namespace: "team-a".into(),
        owner: Some(OwnerReference {
            api_version: "orch.dev/v1alpha1".into(),
            kind: "OrchJob".into(),
            name: "reviews".into(),
            uid: "0b7c-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }),
        orch_job_name: "reviews".into(),
        job_id: JOB_ID.into(),
        storage: "s3://bucket/orch".into(),
        default_image: "registry.example/orch-worker:1.0".into(),
        worker_command: Vec::new(),
        resources: ResourcesSpec {
            cpus: 2,
            memory: "3Gi".into(),
            time: "45m".into(),
            partition: Some("short".into()),
            gres: Some("gpu:1".into()),
            ..ResourcesSpec::default()
        },
        scratch_bytes: 5 << 30,
        spec: KubernetesExecutorSpec {
            parallelism: 4,
            service_account_name: Some("orch-worker".into()),
            image_pull_policy: Some(ImagePullPolicy::IfNotPresent),
            node_selector: BTreeMap::from([("pool".into(), "batch".into())]),
            active_deadline: Some(Quantity::from("6h")),
            env_from_secrets: vec!["orch-aws".into()],
            ..KubernetesExecutorSpec::default()
        },
        environment: vec![
            ("AWS_REGION".into(), "eu-west-1".into()),
            ("ORCH_DYNAMODB_TABLE".into(), "orch-state".into()),
        ],
        secrets: Vec::new(),
    }
}

fn group(id: u32, kind: TaskKind, tasks: &[(u32, u32)]) -> TaskGroup {
    TaskGroup {
        job: JOB_ID.into(),
        id,
        tasks: tasks.to_vec(),
        kind,
        manifest_sha256: None,
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

// ---------------------------------------------------------------------------------------------
// Plans, names and ids.

#[test]
fn a_fresh_group_is_one_job_and_scattered_retries_are_one_job_per_run() {
    let fresh = group(
        0,
        TaskKind::Work,
        &(0..100).map(|t| (t, 1)).collect::<Vec<_>>(),
    );
    let jobs = plan_jobs("reviews", JOB_ID, &fresh);
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].offset, jobs[0].completions()), (0, 100));

    // Retries of tasks 5, 6, 7, 40 and 900 (listed out of order, 6 twice).
    let retries = group(
        3,
        TaskKind::Work,
        &[(40, 2), (5, 2), (6, 3), (7, 2), (900, 4), (6, 3)],
    );
    let jobs = plan_jobs("reviews", JOB_ID, &retries);
    let runs: Vec<(u32, Vec<(u32, u32)>)> =
        jobs.iter().map(|j| (j.offset, j.tasks.clone())).collect();
    assert_eq!(
        runs,
        vec![
            (5, vec![(5, 2), (6, 3), (7, 2)]),
            (40, vec![(40, 2)]),
            (900, vec![(900, 4)]),
        ]
    );
    // Index i of a Job is task offset + i.
    let ids: Vec<(u32, String)> = jobs.iter().flat_map(|j| j.ids()).collect();
    for (task, id) in &ids {
        let (job, index) = parse_executor_id(id).unwrap();
        let planned = jobs.iter().find(|j| j.name == job).unwrap();
        assert_eq!(planned.offset + index, *task);
        assert!(id.starts_with("k8s:"), "{id}");
    }
    assert_eq!(ids.len(), 5);
}

#[test]
fn very_large_runs_are_cut_at_the_completion_limit() {
    let n = MAX_COMPLETIONS + 10;
    let big = group(
        0,
        TaskKind::Work,
        &(0..n).map(|t| (t, 1)).collect::<Vec<_>>(),
    );
    let jobs = plan_jobs("reviews", JOB_ID, &big);
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].completions(), MAX_COMPLETIONS);
    assert_eq!(
        (jobs[1].offset, jobs[1].completions()),
        (MAX_COMPLETIONS, 10)
    );
}

#[test]
fn job_names_are_deterministic_short_dns_labels_that_change_with_attempts() {
    let g = group(12, TaskKind::Work, &[(4000, 1), (4001, 1)]);
    let a = plan_jobs("reviews", JOB_ID, &g);
    let b = plan_jobs("reviews", JOB_ID, &g);
    assert_eq!(a, b, "the same group must get the same names");
    assert!(
        a[0].name.starts_with("reviews-work-g12-b4000-"),
        "{}",
        a[0].name
    );
    assert!(is_dns_label(&a[0].name), "{}", a[0].name);

    // Another attempt of the same tasks is another submission: another name.
    let again = plan_jobs(
        "reviews",
        JOB_ID,
        &group(12, TaskKind::Work, &[(4000, 2), (4001, 1)]),
    );
    assert_ne!(a[0].name, again[0].name);
    // Merge levels share group id 0: their kind and tasks keep them apart.
    let m1 = plan_jobs(
        "reviews",
        JOB_ID,
        &group(0, TaskKind::Merge { level: 1 }, &[(0, 1)]),
    );
    let m2 = plan_jobs(
        "reviews",
        JOB_ID,
        &group(0, TaskKind::Merge { level: 2 }, &[(0, 1)]),
    );
    let fin = plan_jobs("reviews", JOB_ID, &group(0, TaskKind::Final, &[(0, 1)]));
    assert!(
        m1[0].name.starts_with("reviews-merge1-g0-b0-"),
        "{}",
        m1[0].name
    );
    assert!(
        fin[0].name.starts_with("reviews-final-g0-b0-"),
        "{}",
        fin[0].name
    );
    assert_ne!(m1[0].name, m2[0].name);
    // Another orch job with the same OrchJob name (a new input) gets other names.
    let other = plan_jobs("reviews", "reviews-99999999", &g);
    assert_ne!(a[0].name, other[0].name);

    // A long OrchJob name is cut so that the whole stays a label value.
    let long = "a-very-long-orchjob-name-that-goes-on-and-on-for-fifty-chars";
    let huge = group(
        u32::MAX,
        TaskKind::Merge { level: u32::MAX },
        &[(u32::MAX - 1, 7)],
    );
    let name = &plan_jobs(long, "x", &huge)[0].name;
    assert!(
        name.len() <= MAX_JOB_NAME && is_dns_label(name),
        "{name} ({})",
        name.len()
    );
    assert!(
        name.contains("-merge4294967295-g4294967295-b4294967294-"),
        "{name}"
    );
    // A name that sanitises to nothing still gives a valid one.
    let name = &plan_jobs("--", "x", &g)[0].name;
    assert!(
        name.starts_with("orch-work-") && is_dns_label(name),
        "{name}"
    );
    let name = &plan_jobs("Team_Reviews.v2", "x", &g)[0].name;
    assert!(
        name.starts_with("team-reviews-v2-work-") && is_dns_label(name),
        "{name}"
    );
}

#[test]
fn executor_ids_round_trip_and_others_do_not_parse() {
    let id = manifest::executor_id("reviews-work-g1-b0-0123456789", 42);
    assert_eq!(id, "k8s:reviews-work-g1-b0-0123456789:42");
    assert_eq!(
        parse_executor_id(&id),
        Some(("reviews-work-g1-b0-0123456789", 42))
    );
    for bad in [
        "slurm:orch:work:g1:b0:abc:3",
        "k8s::3",
        "k8s:job:x",
        "k8s:job",
        "local:17",
    ] {
        assert_eq!(parse_executor_id(bad), None, "{bad}");
    }
}

#[test]
fn job_label_values_are_valid_for_any_id() {
    assert_eq!(manifest::job_label_value(JOB_ID), JOB_ID);
    let long = format!("{}-1a2b3c4d", "x".repeat(80));
    let v = manifest::job_label_value(&long);
    assert!(v.len() <= 63 && is_dns_label(&v), "{v}");
    assert_ne!(
        v,
        manifest::job_label_value(&format!("{}-ffffffff", "x".repeat(80)))
    );
    let v = manifest::job_label_value("Weird id/with spaces");
    assert!(v.len() <= 63, "{v}");
    assert_eq!(
        job_selector(JOB_ID),
        format!("app.kubernetes.io/managed-by=orch,orch.dev/job={JOB_ID}")
    );
}

#[test]
fn memory_is_written_in_the_largest_exact_unit() {
    assert_eq!(manifest::memory_quantity(3 << 30), "3Gi");
    assert_eq!(manifest::memory_quantity(1536 << 20), "1536Mi");
    assert_eq!(manifest::memory_quantity(1000), "1000");
    assert_eq!(manifest::memory_quantity(2048), "2Ki");
    assert_eq!(manifest::memory_quantity(1 << 40), "1Ti");
}

// ---------------------------------------------------------------------------------------------
// The Job manifest.

/// An executor on a fake API server that records requests and answers `404` to anything.
fn offline(launch: KubeLaunch) -> KubeExecutor {
    let (client, _) = fake_api(|_| (404, not_found()));
    KubeExecutor::new(client, launch).unwrap()
}

#[tokio::test]
async fn the_job_manifest_has_the_shape_the_docs_promise() {
    let exec = offline(launch());
    let planned = exec.plan(&group(3, TaskKind::Work, &[(40, 1), (41, 1), (42, 2)]));
    assert_eq!(planned.len(), 1);
    let job = serde_json::to_value(exec.manifest(&planned[0])).unwrap();

    let meta = &job["metadata"];
    assert_eq!(meta["name"], json!(planned[0].name));
    assert_eq!(meta["namespace"], "team-a");
    let labels = json!({
        "app.kubernetes.io/managed-by": "orch",
        "orch.dev/job": JOB_ID,
        "orch.dev/group": "3",
        "orch.dev/kind": "work",
    });
    assert_eq!(meta["labels"], labels);
    assert_eq!(meta["annotations"]["orch.dev/job-id"], JOB_ID);
    assert_eq!(meta["annotations"]["orch.dev/task-offset"], "40");
    assert_eq!(
        meta["ownerReferences"],
        json!([{"apiVersion": "orch.dev/v1alpha1", "kind": "OrchJob", "name": "reviews",
                "uid": "0b7c-uid", "controller": true, "blockOwnerDeletion": true}])
    );

    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 3);
    assert_eq!(spec["parallelism"], 3, "never more than the completions");
    assert_eq!(spec["backoffLimitPerIndex"], 0);
    assert_eq!(spec["backoffLimit"], i32::MAX);
    assert!(spec.get("maxFailedIndexes").is_none());
    assert!(spec.get("podFailurePolicy").is_none());
    assert_eq!(spec["podReplacementPolicy"], "Failed");
    assert_eq!(spec["activeDeadlineSeconds"], 6 * 3600);
    assert_eq!(spec["ttlSecondsAfterFinished"], 86400);
    assert_eq!(spec["suspend"], false);
    assert!(
        spec.get("selector").is_none(),
        "the Job controller makes its own"
    );
    assert_eq!(spec["template"]["metadata"]["labels"], labels);

    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["activeDeadlineSeconds"], 45 * 60, "spec.resources.time");
    assert_eq!(pod["serviceAccountName"], "orch-worker");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(pod["nodeSelector"], json!({"pool": "batch"}));
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    // A bounded /tmp, and as much ephemeral storage requested: no pod fills its node's disk.
    assert_eq!(
        pod["volumes"],
        json!([{"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}}])
    );

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["name"], "worker");
    assert_eq!(c["image"], "registry.example/orch-worker:1.0");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert!(
        c.get("command").is_none(),
        "the image's entrypoint (orch-worker) runs"
    );
    assert_eq!(
        c["args"],
        json!([
            "run",
            "--storage",
            "s3://bucket/orch",
            "--job",
            JOB_ID,
            "--group",
            "3",
            "--task-offset",
            "40"
        ])
    );
    assert_eq!(
        c["env"],
        json!([{"name": "TMPDIR", "value": "/tmp"}, {"name": "HOME", "value": "/tmp"},
               {"name": "AWS_REGION", "value": "eu-west-1"},
               {"name": "ORCH_DYNAMODB_TABLE", "value": "orch-state"}])
    );
    let amounts =
        json!({"cpu": "2", "memory": "3Gi", "nvidia.com/gpu": "1", "ephemeral-storage": "5Gi"});
    assert_eq!(
        c["resources"],
        json!({"limits": amounts, "requests": amounts})
    );
    assert_eq!(
        c["securityContext"],
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
               "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "tmp", "mountPath": "/tmp"}])
    );
    assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
    // Credentials only by reference: the named Secret as envFrom, required.
    assert_eq!(
        c["envFrom"],
        json!([{"secretRef": {"name": "orch-aws", "optional": false}}])
    );
    // No credential value reaches the pod spec: plain variables only, none named like a secret.
    for var in c["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_ascii_uppercase();
        assert!(var.get("valueFrom").is_none(), "{var}");
        for word in ["SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "SESSION"] {
            assert!(!name.contains(word), "{name}");
        }
    }
}

#[tokio::test]
async fn the_handlers_secret_keys_are_set_by_reference() {
    let mut l = launch();
    l.secrets = vec![(
        "ORCH_SECRET_API_CREDS_TOKEN".into(),
        SecretKeyRef {
            name: "api-creds".into(),
            key: "token".into(),
        },
    )];
    let exec = offline(l);
    let work = exec.plan(&group(0, TaskKind::Work, &[(0, 1)]));
    let job = serde_json::to_value(exec.manifest(&work[0])).unwrap();
    let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
    let last = env.as_array().unwrap().last().unwrap();
    assert_eq!(
        last,
        &json!({"name": "ORCH_SECRET_API_CREDS_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "api-creds", "key": "token", "optional": false}}})
    );
}

#[tokio::test]
async fn an_exec_env_secret_reaches_the_pod_by_reference() {
    let handler: orch_core::spec::HandlerSpec = serde_json::from_value(json!({"exec": {
        "command": ["python3", "handler.py"],
        "env": {
            "MODEL": "small",
            "OPENAI_API_KEY": {"valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}}},
            "REGION": {"fromEnv": "AWS_REGION"},
        },
    }}))
    .unwrap();
    // What the controller hands the executor (controller.rs: `secret_env()`).
    let mut l = launch();
    l.secrets = handler.secret_env();
    let exec = offline(l);
    let work = exec.plan(&group(0, TaskKind::Work, &[(0, 1)]));
    let job = serde_json::to_value(exec.manifest(&work[0])).unwrap();
    let env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    let by_reference: Vec<&Value> = env
        .iter()
        .filter(|v| v.get("valueFrom").is_some())
        .collect();
    assert_eq!(
        by_reference,
        [&json!({"name": "ORCH_SECRET_OPENAI_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key", "optional": false}}})]
    );
    // Literals and the worker's own variables stay in the job spec the worker reads: the pod
    // spec gets no value of the handler's.
    for var in &env {
        assert_ne!(var["value"], "small", "{var}");
        assert_ne!(var["name"], "OPENAI_API_KEY", "{var}");
    }
}

#[tokio::test]
async fn merge_and_final_jobs_run_the_aggregate_command_and_a_command_can_be_set() {
    let mut l = launch();
    l.worker_command = vec!["/usr/bin/tini".into(), "--".into(), "orch-worker".into()];
    l.spec = KubernetesExecutorSpec {
        image: Some("example/custom:2".into()),
        ..KubernetesExecutorSpec::default()
    };
    l.resources = ResourcesSpec::default();
    let exec = offline(l);
    let merge = exec.plan(&group(
        0,
        TaskKind::Merge { level: 2 },
        &[(0, 1), (1, 1), (2, 1)],
    ));
    let job = serde_json::to_value(exec.manifest(&merge[0])).unwrap();
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["/usr/bin/tini", "--", "orch-worker"]));
    assert_eq!(
        c["args"],
        json!([
            "aggregate",
            "--level",
            "2",
            "--storage",
            "s3://bucket/orch",
            "--job",
            JOB_ID,
            "--group",
            "0",
            "--task-offset",
            "0"
        ])
    );
    assert_eq!(c["image"], "example/custom:2");
    assert!(c.get("imagePullPolicy").is_none());
    let amounts = json!({"cpu": "1", "memory": "2Gi", "ephemeral-storage": "5Gi"});
    assert_eq!(
        c["resources"],
        json!({"limits": amounts, "requests": amounts})
    );
    assert_eq!(job["metadata"]["labels"]["orch.dev/kind"], "merge2");
    assert_eq!(job["spec"]["parallelism"], 3);
    let pod = &job["spec"]["template"]["spec"];
    assert!(pod.get("nodeSelector").is_none() && pod.get("serviceAccountName").is_none());
    assert!(job["spec"].get("activeDeadlineSeconds").is_none());
    assert_eq!(pod["activeDeadlineSeconds"], 30 * 60);

    let fin = exec.plan(&group(0, TaskKind::Final, &[(0, 1)]));
    let job = serde_json::to_value(exec.manifest(&fin[0])).unwrap();
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["args"],
        json!([
            "aggregate",
            "--final",
            "--storage",
            "s3://bucket/orch",
            "--job",
            JOB_ID,
            "--group",
            "0",
            "--task-offset",
            "0"
        ])
    );
}

#[tokio::test]
async fn configured_variables_win_over_the_defaults() {
    let mut l = launch();
    l.environment = vec![("TMPDIR".into(), "/scratch".into())];
    let exec = offline(l);
    let planned = exec.plan(&group(0, TaskKind::Work, &[(0, 1)]));
    let job = serde_json::to_value(exec.manifest(&planned[0])).unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["env"],
        json!([{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/scratch"}])
    );
}

#[test]
fn specs_a_pod_cannot_have_are_refused_before_any_request() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let refused = |l: KubeLaunch| {
            let (client, _) = fake_api(|_| (404, not_found()));
            let e = KubeExecutor::new(client, l).unwrap_err();
            assert_eq!(e.category(), ErrorCategory::Invalid);
            e.to_string()
        };
        let mut l = launch();
        l.resources.memory = "lots".into();
        assert!(refused(l).starts_with("spec.resources.memory:"));
        let mut l = launch();
        l.resources.gres = Some("gpu:a100:2".into());
        assert!(refused(l).contains("nodeSelector"));
        let mut l = launch();
        l.default_image = String::new();
        assert!(refused(l).contains("ORCH_WORKER_IMAGE"));
        let mut l = launch();
        l.spec.active_deadline = Some("soon".into());
        assert!(refused(l).starts_with("spec.executor.kubernetes.activeDeadline:"));
    });
}

// ---------------------------------------------------------------------------------------------
// State mapping.

fn job_object(name: &str, offset: u32, completions: i32, status: Value) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "annotations": {"orch.dev/task-offset": offset.to_string()},
                     "labels": {"app.kubernetes.io/managed-by": "orch", "orch.dev/job": JOB_ID}},
        "spec": {"completions": completions, "completionMode": "Indexed",
                 "template": {"spec": {"containers": [{"name": "worker"}]}}},
        "status": status,
    }))
    .unwrap()
}

/// [`pod_object`] as the JSON a list of pods answers with.
fn pod_json(job: &str, index: u32, created: &str, status: Value) -> Value {
    serde_json::to_value(pod_object(job, index, created, status)).unwrap()
}

fn pod_object(job: &str, index: u32, created: &str, status: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{job}-{index}-{}", &created[17..19]),
            "creationTimestamp": created,
            "labels": {"batch.kubernetes.io/job-name": job, "orch.dev/job": JOB_ID},
            "annotations": {"batch.kubernetes.io/job-completion-index": index.to_string()},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": "u"}],
        },
        "spec": {"containers": [{"name": "worker"}]},
        "status": status,
    }))
    .unwrap()
}

fn terminated(exit: i32, reason: &str) -> Value {
    json!([{"name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit, "reason": reason}}}])
}

const T0: &str = "2026-01-01T00:00:00Z";
const T1: &str = "2026-01-01T00:00:10Z";

#[test]
fn index_sets_parse_as_kubernetes_writes_them() {
    let s = IndexSet::parse("0-2,5,7-9");
    for i in [0, 1, 2, 5, 7, 8, 9] {
        assert!(s.contains(i), "{i}");
    }
    for i in [3, 4, 6, 10, u32::MAX] {
        assert!(!s.contains(i), "{i}");
    }
    assert_eq!(s.len(), 7);
    assert!(IndexSet::parse("").is_empty());
    // Unsorted, overlapping or broken parts are tolerated.
    let s = IndexSet::parse("9,3-6,x,5-7,8-2");
    assert!(s.contains(7) && s.contains(3) && s.contains(9) && !s.contains(8));
}

#[test]
fn pods_map_to_exec_states() {
    let p = |status: Value| pod_state(&pod_object("j", 0, T0, status));
    assert_eq!(p(json!({"phase": "Pending"})), ExecState::Queued);
    assert_eq!(p(json!({})), ExecState::Queued);
    assert_eq!(p(json!({"phase": "Running"})), ExecState::Running);
    assert_eq!(
        p(json!({"phase": "Succeeded", "containerStatuses": terminated(0, "Completed")})),
        ExecState::Exited {
            code: Some(0),
            signal: None
        }
    );
    assert_eq!(
        p(json!({"phase": "Failed", "containerStatuses": terminated(3, "Error")})),
        ExecState::Exited {
            code: Some(3),
            signal: None
        }
    );
    assert!(matches!(
        p(json!({"phase": "Failed", "containerStatuses": terminated(137, "OOMKilled")})),
        ExecState::Failed {
            reason: ExecFailure::OutOfMemory,
            ..
        }
    ));
    assert!(matches!(
        p(json!({"phase": "Failed", "reason": "DeadlineExceeded",
                 "message": "Pod was active on the node longer than the specified deadline",
                 "containerStatuses": terminated(143, "Error")})),
        ExecState::Failed {
            reason: ExecFailure::TimeLimit,
            ..
        }
    ));
    match p(
        json!({"phase": "Failed", "containerStatuses": terminated(143, "Error"),
                   "conditions": [{"type": "DisruptionTarget", "status": "True",
                                   "reason": "PreemptionByScheduler",
                                   "message": "a higher priority pod"}]}),
    ) {
        ExecState::Failed {
            reason: ExecFailure::Preempted,
            message,
        } => {
            assert!(message.contains("PreemptionByScheduler"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p(json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"})),
        ExecState::Failed {
            reason: ExecFailure::NodeFailure,
            ..
        }
    ));
    assert!(matches!(
        p(json!({"phase": "Failed"})),
        ExecState::Failed {
            reason: ExecFailure::Other,
            ..
        }
    ));
    // A pod that can never start is a failure, not a queue.
    let stuck = json!({"phase": "Pending", "containerStatuses": [{"name": "worker", "image": "i",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}}]});
    match p(stuck.clone()) {
        ExecState::Failed {
            reason: ExecFailure::Other,
            message,
        } => {
            assert!(message.contains("InvalidImageName"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(stuck_reason(&pod_object("j", 0, T0, stuck)).is_some());
    // Pulling (even slowly, even backing off) is waiting.
    let pulling = json!({"phase": "Pending", "containerStatuses": [{"name": "worker", "image": "i",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff"}}}]});
    assert_eq!(p(pulling), ExecState::Queued);
}

#[test]
fn indexes_map_from_the_job_status_and_their_pods() {
    let job = JobView::of(&job_object(
        "j",
        10,
        6,
        json!({"completedIndexes": "0,2", "failedIndexes": "1,5"}),
    ))
    .unwrap();
    assert_eq!(job.offset, Some(10));
    assert_eq!(job.completions, 6);
    let ok = ExecState::Exited {
        code: Some(0),
        signal: None,
    };
    // Completed: its pod may be gone (or never listed: succeeded pods are not asked for).
    assert_eq!(index_state(&job, 0, &[]), ok);
    // Failed, pod gone: a failure all the same.
    assert!(matches!(
        index_state(&job, 1, &[]),
        ExecState::Failed {
            reason: ExecFailure::Other,
            ..
        }
    ));
    // Failed with its pod still there: the pod says why.
    let oom = pod_object(
        "j",
        5,
        T0,
        json!({"phase": "Failed",
        "containerStatuses": terminated(137, "OOMKilled")}),
    );
    assert!(matches!(
        index_state(&job, 5, &[&oom]),
        ExecState::Failed {
            reason: ExecFailure::OutOfMemory,
            ..
        }
    ));
    // No pod yet: waiting for a slot of the Job's parallelism.
    assert_eq!(index_state(&job, 3, &[]), ExecState::Queued);
    // A replacement (after a pause) speaks for the index, not the stopped pod before it.
    let old = pod_object(
        "j",
        4,
        T0,
        json!({"phase": "Failed",
        "containerStatuses": terminated(130, "Error")}),
    );
    let new = pod_object("j", 4, T1, json!({"phase": "Running"}));
    let both = [old.clone(), new];
    let pods = pods_by_slot(&both);
    let list = pods.get(&("j".to_string(), 4)).unwrap();
    assert_eq!(index_state(&job, 4, list), ExecState::Running);
    assert_eq!(
        index_state(&job, 4, &[&old]),
        ExecState::Exited {
            code: Some(130),
            signal: None
        }
    );

    // A Job past its own deadline: what did not finish hit the time limit.
    let late = JobView::of(&job_object(
        "late",
        0,
        3,
        json!({"completedIndexes": "0",
        "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline"}]}),
    ))
    .unwrap();
    assert!(late.finished && late.deadline_exceeded);
    assert_eq!(index_state(&late, 0, &[]), ok);
    let running = pod_object("late", 1, T0, json!({"phase": "Running"}));
    assert!(matches!(
        index_state(&late, 1, &[&running]),
        ExecState::Failed {
            reason: ExecFailure::TimeLimit,
            ..
        }
    ));
    assert!(matches!(
        index_state(&late, 2, &[]),
        ExecState::Failed {
            reason: ExecFailure::TimeLimit,
            ..
        }
    ));
    // A Job that ended without running an index (deleted pods, a failed Job).
    let ended = JobView::of(&job_object(
        "ended",
        0,
        2,
        json!({"completedIndexes": "0",
        "conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}]}),
    ))
    .unwrap();
    assert!(matches!(
        index_state(&ended, 1, &[]),
        ExecState::Failed {
            reason: ExecFailure::Other,
            ..
        }
    ));
}

#[test]
fn a_job_is_wholly_cancelled_when_nothing_else_of_it_is_left() {
    let job = JobView::of(&job_object(
        "j",
        0,
        5,
        json!({"completedIndexes": "0", "failedIndexes": "1"}),
    ))
    .unwrap();
    assert!(job.unfinished_within(&[2, 3, 4].into()));
    assert!(!job.unfinished_within(&[2, 3].into()));
}

// ---------------------------------------------------------------------------------------------
// Requests, against a fake API server.

/// One request the fake API server got.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

impl Call {
    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

type Calls = Arc<Mutex<Vec<Call>>>;

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
           "code": 404, "message": "not found"})
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": reason})
}

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})
}

/// A client whose requests go to `answer` (status code, JSON body), all recorded.
fn fake_api(
    answer: impl Fn(&Call) -> (u16, Value) + Send + Sync + 'static,
) -> (kube::Client, Calls) {
    let (service, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let query = parts
                .uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), decode(v))
                })
                .collect();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query,
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, reply) = answer(&call);
            seen.lock().unwrap().push(call);
            let response = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(
                    serde_json::to_vec(&reply).unwrap(),
                ))
                .unwrap();
            respond.send_response(response);
        }
    });
    (kube::Client::new(service, "default"), calls)
}

/// Percent-decoding of a query value (`%2C` → `,`, `+` → space).
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

const JOBS: &str = "/apis/batch/v1/namespaces/team-a/jobs";
const PODS: &str = "/api/v1/namespaces/team-a/pods";

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": if kind == "JobList" { "batch/v1" } else { "v1" }, "kind": kind,
           "metadata": {"resourceVersion": "7"}, "items": items})
}

/// A fake cluster: the Jobs and pods it lists, shared with the test.
#[derive(Clone, Default)]
struct World {
    jobs: Arc<Mutex<Vec<Value>>>,
    pods: Arc<Mutex<Vec<Value>>>,
}

impl World {
    /// Answers LISTs from the world, creates Jobs into it, deletes and patches succeed.
    fn serve(&self) -> impl Fn(&Call) -> (u16, Value) + Send + Sync + 'static {
        let world = self.clone();
        move |call: &Call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", JOBS) => (200, list("JobList", world.jobs.lock().unwrap().clone())),
            ("GET", PODS) => (200, list("PodList", world.pods.lock().unwrap().clone())),
            ("POST", JOBS) => {
                let name = call.body["metadata"]["name"].clone();
                let mut jobs = world.jobs.lock().unwrap();
                if jobs.iter().any(|j| j["metadata"]["name"] == name) {
                    (409, status(409, "AlreadyExists"))
                } else {
                    jobs.push(call.body.clone());
                    (201, call.body.clone())
                }
            }
            ("DELETE", _) => (200, success()),
            ("PATCH", path) => {
                let name = path.rsplit('/').next().unwrap_or("");
                (
                    200,
                    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}}),
                )
            }
            _ => (404, not_found()),
        }
    }

    fn job_status(&self, name: &str, status: Value) {
        for j in self.jobs.lock().unwrap().iter_mut() {
            if j["metadata"]["name"] == name {
                j["status"] = status.clone();
            }
        }
    }
}

fn executor(world: &World) -> (KubeExecutor, Calls) {
    let (client, calls) = fake_api(world.serve());
    let exec = KubeExecutor::new(client, launch())
        .unwrap()
        .with_query_interval(Duration::from_secs(3600));
    (exec, calls)
}

fn take(calls: &Calls) -> Vec<Call> {
    std::mem::take(&mut *calls.lock().unwrap())
}

#[tokio::test]
async fn submit_creates_one_job_per_run_with_the_planned_ids_and_is_idempotent() {
    let world = World::default();
    let (exec, calls) = executor(&world);
    let g = group(5, TaskKind::Work, &[(0, 1), (1, 1), (2, 1), (7, 2)]);
    let planned = exec.planned_ids(&g).unwrap();
    let ids = exec.submit(&g).await.unwrap();
    assert_eq!(ids, planned);
    assert_eq!(ids.len(), 4);
    let got = take(&calls);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|c| c.is("POST", JOBS)));
    assert_eq!(got[0].body["spec"]["completions"], 3);
    assert_eq!(got[1].body["spec"]["completions"], 1);
    assert_eq!(
        got[1].body["metadata"]["annotations"]["orch.dev/task-offset"],
        "7"
    );
    assert_eq!(
        got[1].body["spec"]["template"]["spec"]["containers"][0]["args"][8],
        "7"
    );

    // A coordinator that restarts and submits the same group again: AlreadyExists, same ids,
    // no second Job.
    assert_eq!(exec.submit(&g).await.unwrap(), ids);
    assert_eq!(take(&calls).len(), 2);
    assert_eq!(world.jobs.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_create_is_an_error_with_its_category() {
    let (client, _) = fake_api(|c| {
        if c.method == "POST" {
            (403, status(403, "Forbidden"))
        } else {
            (404, not_found())
        }
    });
    let exec = KubeExecutor::new(client, launch()).unwrap();
    let e = exec
        .submit(&group(0, TaskKind::Work, &[(0, 1)]))
        .await
        .unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Permanent);
    assert!(
        e.to_string().contains("create Job reviews-work-g0-b0-"),
        "{e}"
    );

    let (client, _) = fake_api(|_| (503, status(503, "ServiceUnavailable")));
    let exec = KubeExecutor::new(client, launch()).unwrap();
    let e = exec
        .submit(&group(0, TaskKind::Work, &[(0, 1)]))
        .await
        .unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Transient);
}

#[tokio::test]
async fn poll_lists_jobs_and_pods_once_by_label_whatever_the_number_of_tasks() {
    let world = World::default();
    let (exec, calls) = executor(&world);
    let g = group(
        1,
        TaskKind::Work,
        &(100..106).map(|t| (t, 1)).collect::<Vec<_>>(),
    );
    let ids = exec.submit(&g).await.unwrap();
    let name = parse_executor_id(&ids[0].1).unwrap().0.to_string();
    world.job_status(
        &name,
        json!({"completedIndexes": "0", "failedIndexes": "2"}),
    );
    *world.pods.lock().unwrap() = vec![
        pod_json(&name, 1, T0, json!({"phase": "Running"})),
        pod_json(
            &name,
            2,
            T0,
            json!({"phase": "Failed",
            "containerStatuses": terminated(137, "OOMKilled")}),
        ),
        pod_json(&name, 3, T0, json!({"phase": "Pending"})),
        pod_json(
            &name,
            4,
            T0,
            json!({"phase": "Failed",
            "containerStatuses": terminated(1, "Error")}),
        ),
    ];
    take(&calls);
    let mut asked: Vec<(u32, u32, Option<String>)> = ids
        .iter()
        .map(|(t, id)| (*t, 1, Some(id.clone())))
        .collect();
    asked.push((200, 1, Some(format!("k8s:{name}-gone:0"))));
    asked.push((201, 1, None));
    // An id whose index is another task's says nothing about this one.
    asked.push((300, 1, Some(ids[0].1.clone())));
    let states: Vec<(u32, ExecState)> = exec
        .poll(&asked)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.task, s.state))
        .collect();
    assert_eq!(
        states[0],
        (
            100,
            ExecState::Exited {
                code: Some(0),
                signal: None
            }
        )
    );
    assert_eq!(states[1], (101, ExecState::Running));
    assert!(matches!(
        states[2],
        (
            102,
            ExecState::Failed {
                reason: ExecFailure::OutOfMemory,
                ..
            }
        )
    ));
    assert_eq!(states[3], (103, ExecState::Queued));
    assert_eq!(
        states[4],
        (
            104,
            ExecState::Exited {
                code: Some(1),
                signal: None
            }
        )
    );
    assert_eq!(states[5], (105, ExecState::Queued));
    assert_eq!(states[6], (200, ExecState::Unknown), "Job gone");
    assert_eq!(states[7], (201, ExecState::Unknown), "no id");
    assert_eq!(states[8], (300, ExecState::Unknown), "someone else's id");

    let got = take(&calls);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].is("GET", JOBS));
    assert_eq!(got[0].query["labelSelector"], job_selector(JOB_ID));
    assert!(got[1].is("GET", PODS));
    assert_eq!(got[1].query["labelSelector"], job_selector(JOB_ID));
    assert_eq!(got[1].query["fieldSelector"], "status.phase!=Succeeded");
    assert!(got.iter().all(|c| c.query.contains_key("limit")));

    // Within the query interval the answer is reused.
    exec.poll(&asked).await.unwrap();
    assert!(take(&calls).is_empty());
    // Nothing asked, nothing requested.
    assert!(exec.poll(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn lists_follow_continue_tokens() {
    let pages = Arc::new(Mutex::new(0));
    let seen = pages.clone();
    let (client, calls) = fake_api(move |c| {
        if c.path == JOBS && !c.query.contains_key("continue") {
            *seen.lock().unwrap() += 1;
            let mut page = list(
                "JobList",
                vec![serde_json::to_value(job_object("a", 0, 1, json!({}))).unwrap()],
            );
            page["metadata"]["continue"] = json!("next-page");
            (200, page)
        } else if c.path == JOBS {
            (
                200,
                list(
                    "JobList",
                    vec![
                        serde_json::to_value(job_object(
                            "b",
                            1,
                            1,
                            json!({"completedIndexes": "0"}),
                        ))
                        .unwrap(),
                    ],
                ),
            )
        } else {
            (200, list("PodList", vec![]))
        }
    });
    let exec = KubeExecutor::new(client, launch()).unwrap();
    let states = exec
        .poll(&[
            (0, 1, Some("k8s:a:0".into())),
            (1, 1, Some("k8s:b:0".into())),
        ])
        .await
        .unwrap();
    assert_eq!(states[0].state, ExecState::Queued);
    assert_eq!(
        states[1].state,
        ExecState::Exited {
            code: Some(0),
            signal: None
        }
    );
    let got = take(&calls);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].query["continue"], "next-page");
}

#[tokio::test]
async fn cancelling_a_whole_job_deletes_it_in_the_background() {
    let world = World::default();
    let (exec, calls) = executor(&world);
    let ids = exec
        .submit(&group(0, TaskKind::Work, &[(0, 1), (1, 1), (2, 1)]))
        .await
        .unwrap();
    let name = parse_executor_id(&ids[0].1).unwrap().0.to_string();
    // Index 0 is done; cancelling 1 and 2 leaves the Job nothing to run.
    world.job_status(&name, json!({"completedIndexes": "0"}));
    take(&calls);
    let attempts: Vec<(u32, u32, Option<String>)> = ids[1..]
        .iter()
        .map(|(t, id)| (*t, 1, Some(id.clone())))
        .collect();
    exec.cancel(&attempts).await.unwrap();
    let got = take(&calls);
    let deletes: Vec<&Call> = got.iter().filter(|c| c.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{got:?}");
    assert_eq!(deletes[0].path, format!("{JOBS}/{name}"));
    assert_eq!(deletes[0].body["propagationPolicy"], "Background");
    // Attempts without ids (never submitted) cost nothing.
    exec.cancel(&[(9, 1, None)]).await.unwrap();
    assert!(take(&calls).is_empty());
}

#[tokio::test]
async fn cancelling_some_indexes_deletes_their_pods_and_later_ones() {
    let world = World::default();
    let (exec, calls) = executor(&world);
    let ids = exec
        .submit(&group(0, TaskKind::Work, &[(0, 1), (1, 1), (2, 1), (3, 1)]))
        .await
        .unwrap();
    let name = parse_executor_id(&ids[0].1).unwrap().0.to_string();
    let pod = |index: u32, phase: &str| pod_json(&name, index, T0, json!({"phase": phase}));
    *world.pods.lock().unwrap() = vec![pod(0, "Running"), pod(1, "Running")];
    take(&calls);
    // Cancel task 1 (running) and task 3 (no pod yet); 0 and 2 go on.
    exec.cancel(&[
        (1, 1, Some(ids[1].1.clone())),
        (3, 1, Some(ids[3].1.clone())),
    ])
    .await
    .unwrap();
    let got = take(&calls);
    let deletes: Vec<String> = got
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path.clone())
        .collect();
    let pod1 = pod(1, "Running")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(deletes, vec![format!("{PODS}/{pod1}")], "{got:?}");

    // Later the Job starts a pod for index 3: the next poll deletes it.
    *world.pods.lock().unwrap() = vec![pod(0, "Running"), pod(3, "Pending")];
    let states = exec.poll(&[(0, 1, Some(ids[0].1.clone()))]).await.unwrap();
    assert_eq!(states[0].state, ExecState::Running);
    let pod3 = pod(3, "Pending")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let deletes: Vec<String> = take(&calls)
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(deletes, vec![format!("{PODS}/{pod3}")]);
}

#[tokio::test]
async fn pause_suspends_unfinished_jobs_and_resume_releases_them() {
    let world = World::default();
    let (exec, calls) = executor(&world);
    let a = exec
        .submit(&group(0, TaskKind::Work, &[(0, 1)]))
        .await
        .unwrap();
    let b = exec
        .submit(&group(1, TaskKind::Work, &[(1, 1)]))
        .await
        .unwrap();
    let c = exec
        .submit(&group(2, TaskKind::Work, &[(2, 1)]))
        .await
        .unwrap();
    let name = |ids: &Vec<(u32, String)>| parse_executor_id(&ids[0].1).unwrap().0.to_string();
    world.job_status(
        &name(&c),
        json!({"completedIndexes": "0", "conditions": [{"type": "Complete", "status": "True"}]}),
    );
    take(&calls);
    exec.pause().await.unwrap();
    let got = take(&calls);
    let patches: Vec<&Call> = got.iter().filter(|c| c.method == "PATCH").collect();
    let paths: Vec<String> = patches.iter().map(|c| c.path.clone()).collect();
    assert_eq!(
        paths,
        vec![
            format!("{JOBS}/{}", name(&a)),
            format!("{JOBS}/{}", name(&b))
        ],
        "the finished Job is left alone"
    );
    for p in &patches {
        assert_eq!(p.body, json!({"spec": {"suspend": true}}));
        assert_eq!(p.content_type, "application/merge-patch+json");
    }
    // A Job created while paused starts suspended.
    exec.submit(&group(3, TaskKind::Work, &[(3, 1)]))
        .await
        .unwrap();
    let got = take(&calls);
    assert_eq!(got[0].body["spec"]["suspend"], true);

    for j in world.jobs.lock().unwrap().iter_mut() {
        if j["metadata"]["name"] != json!(name(&c)) {
            j["spec"]["suspend"] = json!(true);
        }
    }
    exec.resume().await.unwrap();
    let got = take(&calls);
    let patches: Vec<&Call> = got.iter().filter(|c| c.method == "PATCH").collect();
    assert_eq!(patches.len(), 3, "{got:?}");
    assert!(
        patches
            .iter()
            .all(|p| p.body == json!({"spec": {"suspend": false}}))
    );
    exec.submit(&group(4, TaskKind::Work, &[(4, 1)]))
        .await
        .unwrap();
    assert_eq!(take(&calls)[0].body["spec"]["suspend"], false);
}

#[test]
fn api_errors_are_categorised() {
    let api = |code: u16| {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("x", "y").with_code(code),
        ))
    };
    assert_eq!(api_error_category(&api(409)), ErrorCategory::Transient);
    assert_eq!(api_error_category(&api(429)), ErrorCategory::Transient);
    assert_eq!(api_error_category(&api(500)), ErrorCategory::Transient);
    assert_eq!(api_error_category(&api(422)), ErrorCategory::Invalid);
    assert_eq!(api_error_category(&api(403)), ErrorCategory::Permanent);
    assert_eq!(api_error_category(&api(404)), ErrorCategory::Permanent);
}
