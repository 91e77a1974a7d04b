//! The operator installed the way users install it: `helm install` of `charts/orch-operator`
//! into the Kubernetes API emulator with RBAC enforced (`--rbac`: https, bearer tokens, the RBAC
//! authorizer). The emulator serves the chart's built-in kinds and runs its Deployment
//! (`--run-deployments`): the pod is the locally built `orch-operator` (the chart's image is
//! mapped to it, as the image's entrypoint), with the arguments, environment and volumes the
//! chart rendered and a kubeconfig holding its ServiceAccount's token, so every request it makes
//! goes through the chart's RBAC. An `OrchJob` of a tenant namespace runs as Indexed Jobs whose
//! pods the emulator also runs (`--run-jobs`: the worker image mapped to `orch-worker`), on
//! moto's S3, DynamoDB and SQS.
//!
//! Skipped (visibly; a failure under CI) without kubectl, helm (`bash charts/test.sh`
//! installs it), moto or pyarrow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use orch_aws::config::{self, AwsSettings};
use orch_testkit::kube_emulator::{Extra, KubeEmulator, Options};
use orch_testkit::{components, moto};

const RELEASE: &str = "orch";
const NAMESPACE: &str = "orch-system";
const TENANT: &str = "team-a";
/// Names the chart's image gets; the emulator runs the local binaries for them.
const OPERATOR_IMAGE: &str = "orch-e2e.local/orch-operator";
const WORKER_IMAGE: &str = "orch-e2e.local/orch-worker";
/// The AWS credentials Secret the chart's pod reads (through `extraEnv`).
const AWS_SECRET: &str = "orch-operator-aws";
const ITEMS: u64 = 120;

/// What the emulator (and so the pods it runs) must not inherit from this process: every pod
/// gets its AWS settings from the chart (the operator) or from the operator (the workers), and
/// its credentials from a Secret.
const NOT_INHERITED: [&str; 14] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "ORCH_DYNAMODB_TABLE",
    "ORCH_SQS_QUEUE",
    "ORCH_STORAGE_URI",
    "ORCH_LOG",
    "KUBECONFIG",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of the workspace next to `orch` (`cargo build -p orch-operator -p orch-worker`, or
/// `cargo test --workspace`, builds it there).
fn sibling(name: &str) -> PathBuf {
    let path = common::orch().with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build it (cargo build -p orch-operator -p orch-worker --bins) or run `cargo test --workspace`",
        path.display()
    );
    path
}

struct Installed {
    emulator: KubeEmulator,
    kubectl: PathBuf,
    helm: PathBuf,
    scratch: common::Scratch,
    logs: PathBuf,
    bucket: String,
    metrics_port: u16,
}

impl Installed {
    fn command(&self, program: &Path, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .env("KUBECONFIG", &self.emulator.kubeconfig)
            .env("KUBECACHEDIR", self.scratch.path("kube-cache"))
            .env("HELM_CACHE_HOME", self.scratch.path("helm/cache"))
            .env("HELM_CONFIG_HOME", self.scratch.path("helm/config"))
            .env("HELM_DATA_HOME", self.scratch.path("helm/data"))
            .output()
            .unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.command(&self.kubectl, args)
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            common::text(&out),
            self.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).unwrap()
    }

    fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.command(&self.helm, args);
        assert!(
            out.status.success(),
            "helm {args:?}: {}\n{}",
            common::text(&out),
            self.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Installed) -> bool) {
        let started = Instant::now();
        while !ok(self) {
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {what}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The operator's pods (the chart's selector labels), oldest first.
    fn operator_pods(&self) -> Vec<serde_json::Value> {
        let pods = self.json(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/name=orch-operator,app.kubernetes.io/instance={RELEASE}"),
        ]);
        pods["items"].as_array().cloned().unwrap_or_default()
    }

    /// Everything the emulator's kubelet logged for a pod (stdout and stderr).
    fn pod_log(&self, namespace: &str, pod: &str) -> String {
        ["stdout", "stderr"]
            .iter()
            .map(|ext| {
                std::fs::read_to_string(self.logs.join(format!("{namespace}_{pod}.{ext}")))
                    .unwrap_or_default()
            })
            .collect()
    }

    fn operator_logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(&self.logs)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{NAMESPACE}_")))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|n| {
                format!(
                    "--- {n}\n{}",
                    std::fs::read_to_string(self.logs.join(n)).unwrap_or_default()
                )
            })
            .collect()
    }

    fn diagnostics(&self) -> String {
        let objects = self
            .kubectl(&["get", "deploy,rs,pods,jobs,orchjobs", "-A", "-o", "wide"])
            .stdout;
        format!(
            "--- objects\n{}\n--- operator logs\n{}\n--- emulator log (tail)\n{}",
            String::from_utf8_lossy(&objects),
            tail(&self.operator_logs(), 80),
            tail(
                &std::fs::read_to_string(self.scratch.path("emulator.log")).unwrap_or_default(),
                40
            )
        )
    }

    /// The requests of `user` the emulator refused (its `--verbose` log, from byte `from`).
    fn refused(&self, user: &str, from: usize) -> Vec<String> {
        let log = std::fs::read_to_string(self.scratch.path("emulator.log")).unwrap_or_default();
        log.get(from..)
            .unwrap_or("")
            .lines()
            .filter(|l| {
                l.ends_with(&format!(" user={user}"))
                    && (l.contains("\" 403 ") || l.contains("\" 401 "))
            })
            .map(str::to_string)
            .collect()
    }

    fn emulator_log_len(&self) -> usize {
        std::fs::metadata(self.scratch.path("emulator.log")).map_or(0, |m| m.len() as usize)
    }

    /// A request made with the operator ServiceAccount's own token (TokenRequest, as
    /// `kubectl create token` asks for it).
    fn as_operator(&self, token: &str, args: &[&str]) -> Output {
        let mut all = vec!["--token", token];
        all.extend(args);
        self.kubectl(&all)
    }
}

impl Installed {
    /// `kubectl auth can-i` as the operator (`token`): each (verb, resource, namespace) is
    /// answered `yes` or `no` as given.
    fn assert_can_i(&self, token: &str, cases: &[(&str, &str, Option<&str>, &str)]) {
        for (verb, resource, namespace, want) in cases {
            let mut args = vec!["auth", "can-i", verb, resource];
            if let Some(ns) = namespace {
                args.extend(["-n", ns]);
            }
            let answer = self.as_operator(token, &args);
            assert_eq!(
                String::from_utf8_lossy(&answer.stdout).trim(),
                *want,
                "can-i {verb} {resource} in {namespace:?}: {}",
                common::text(&answer)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `GET path` on 127.0.0.1:`port`: the status code, or `None` while nothing listens.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// helm install → the operator runs as the chart's Deployment with the chart's RBAC → an
/// OrchJob of a tenant namespace succeeds on the Kubernetes executor → the operator's token
/// reads no Secret and writes no OrchPolicy, and the operator logged no `forbidden` → helm
/// upgrade rolls the pod → helm uninstall stops the operator.
#[tokio::test(flavor = "multi_thread")]
async fn helm_install_runs_the_operator_with_the_charts_rbac() {
    let Some(kubectl) = components::kubectl() else {
        return;
    };
    let Some(helm) = components::helm() else {
        return;
    };
    if !components::moto() || !components::python_module("pyarrow") {
        return;
    }
    let operator = sibling("orch-operator");
    let worker = sibling("orch-worker");
    let endpoint = moto::moto().endpoint.clone();
    let bucket = moto::unique("helm-bucket");
    let table = moto::unique("helm-table");
    let queue = moto::unique("helm-q");
    let scratch = common::Scratch::new();
    let logs = scratch.path("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();

    // The stores, as an admin creates them (orch init).
    let aws = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("ORCH_DYNAMODB_TABLE", table.as_str()),
        ("ORCH_SQS_QUEUE", queue.as_str()),
    ];
    let init = Command::new(common::orch())
        .args(["init", "--bucket", &bucket])
        .current_dir(scratch.dir.path())
        .envs(aws)
        .output()
        .unwrap();
    assert!(init.status.success(), "orch init: {}", common::text(&init));

    let emulator = KubeEmulator::start_with(
        &scratch.path("kubeconfig"),
        Options {
            run_jobs: Some(logs.clone()),
            env: Vec::new(),
            env_remove: NOT_INHERITED.iter().map(Into::into).collect(),
        },
        Extra {
            run_deployments: true,
            images: vec![
                (OPERATOR_IMAGE.to_string(), operator),
                (WORKER_IMAGE.to_string(), worker),
            ],
            rbac: true,
            log: Some(scratch.path("emulator.log")),
            verbose: true,
        },
    );
    let metrics_port = moto::free_port();
    let world = Installed {
        emulator,
        kubectl,
        helm,
        scratch,
        logs,
        bucket,
        metrics_port,
    };

    // helm install, with values as a user writes them. The operator's AWS credentials: the
    // chart takes none as a value (IRSA in production); here they come from a Secret through
    // extraEnv's secretKeyRef, created after the install, as a kubelet would wait for it.
    let moto_port = endpoint.rsplit(':').next().unwrap().trim_end_matches('/');
    let values = world.scratch.write(
        "values.yaml",
        &format!(
            r#"image: {{repository: {OPERATOR_IMAGE}, tag: e2e, pullPolicy: Never}}
replicas: 1
leaderElection: {{enabled: true}}
logFormat: text
logLevel: info
storage: {{uri: "s3://{bucket}/orch/"}}
aws:
  region: us-east-1
  dynamodbTable: {table}
  sqsQueue: {queue}
  endpointUrl: "{endpoint}"
  s3ForcePathStyle: "true"
worker: {{image: {{repository: {WORKER_IMAGE}, tag: e2e}}}}
metrics: {{port: {metrics_port}}}
networkPolicy:
  enabled: true
  apiServer: {{cidrs: [127.0.0.1/32]}}
  aws: {{cidrs: [127.0.0.1/32], extraPorts: [{moto_port}]}}
extraEnv:
  - name: AWS_ACCESS_KEY_ID
    valueFrom: {{secretKeyRef: {{name: {AWS_SECRET}, key: AWS_ACCESS_KEY_ID}}}}
  - name: AWS_SECRET_ACCESS_KEY
    valueFrom: {{secretKeyRef: {{name: {AWS_SECRET}, key: AWS_SECRET_ACCESS_KEY}}}}
  - name: AWS_EC2_METADATA_DISABLED
    value: "true"
"#,
            bucket = world.bucket,
        ),
    );
    let chart = repo().join("charts/orch-operator");
    let installed = world.helm_ok(&[
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        NAMESPACE,
        "--create-namespace",
        "-f",
        values.to_str().unwrap(),
    ]);
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let release = world.helm_ok(&["status", RELEASE, "-n", NAMESPACE, "-o", "json"]);
    assert!(release.contains("\"status\":\"deployed\""), "{release}");
    // Helm installed the CRDs of the chart's crds/, and the chart's objects, as the emulator
    // stored them (defaults of the real server's types applied).
    for crd in ["orchjobs", "taskgroups", "ratelimits", "orchpolicies"] {
        world.kubectl_ok(&["get", "crd", &format!("{crd}.orch.dev")]);
    }
    let fullname = format!("{RELEASE}-orch-operator");
    let deployment = world.json(&["get", "deployment", &fullname, "-n", NAMESPACE]);
    assert_eq!(deployment["spec"]["replicas"], 1, "{deployment}");
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    world.kubectl_ok(&["get", "serviceaccount", &fullname, "-n", NAMESPACE]);
    world.kubectl_ok(&[
        "get",
        "service",
        &format!("{fullname}-metrics"),
        "-n",
        NAMESPACE,
    ]);
    world.kubectl_ok(&["get", "networkpolicy", &fullname, "-n", NAMESPACE]);
    world.kubectl_ok(&["get", "clusterrole,clusterrolebinding", &fullname]);
    world.kubectl_ok(&[
        "get",
        "role,rolebinding",
        &format!("{fullname}-leader-election"),
        "-n",
        NAMESPACE,
    ]);

    // Until its Secret exists, the pod waits (CreateContainerConfigError), as on a cluster.
    world.wait_for(
        "the pod to wait for its Secret",
        Duration::from_secs(30),
        |w| {
            w.operator_pods().first().is_some_and(|p| {
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "CreateContainerConfigError"
            })
        },
    );
    world.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        AWS_SECRET,
        "-n",
        NAMESPACE,
        "--from-literal=AWS_ACCESS_KEY_ID=testing",
        "--from-literal=AWS_SECRET_ACCESS_KEY=testing",
    ]);
    world.wait_for(
        "the Deployment to be available",
        Duration::from_secs(90),
        |w| {
            let d = w.json(&["get", "deployment", &fullname, "-n", NAMESPACE]);
            d["status"]["availableReplicas"] == 1 && d["status"]["readyReplicas"] == 1
        },
    );
    let pods = world.operator_pods();
    assert_eq!(pods.len(), 1, "one replica");
    let pod = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(pods[0]["status"]["phase"], "Running");
    assert_eq!(pods[0]["spec"]["serviceAccountName"], fullname.as_str());
    // The readiness probe the chart declares answered (the pod is Ready), and answers here too.
    assert_eq!(http_status(world.metrics_port, "/readyz"), Some(200));
    // Leader election with the chart's Role (create, get/update of the one Lease by name),
    // under the identity the chart gives (POD_NAME from the downward API).
    world.wait_for(
        "the operator to hold the Lease",
        Duration::from_secs(30),
        |w| {
            w.kubectl(&[
                "get",
                "lease",
                "orch-operator-leader",
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .stdout
                == pod.as_bytes()
        },
    );

    // A tenant: its namespace, the admin's OrchPolicy, the workers' AWS Secret, the input.
    world.kubectl_ok(&["create", "namespace", TENANT]);
    let policy = world.scratch.write(
        "policy.yaml",
        &format!(
            "apiVersion: orch.dev/v1alpha1\nkind: OrchPolicy\nmetadata: {{name: {TENANT}}}\n\
             spec:\n  namespaces: [{TENANT}]\n  kubernetes: {{secrets: [orch-aws]}}\n"
        ),
    );
    world.kubectl_ok(&["apply", "-f", policy.to_str().unwrap()]);
    world.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "orch-aws",
        "-n",
        TENANT,
        "--from-literal=AWS_ACCESS_KEY_ID=testing",
        "--from-literal=AWS_SECRET_ACCESS_KEY=testing",
    ]);
    let sdk = moto::sdk_config().await;
    let s3 = config::s3_client(&sdk, &AwsSettings::default());
    let body: String = (0..ITEMS)
        .map(|i| format!("{{\"id\": {i}, \"text\": \"item {i}\"}}\n"))
        .collect();
    s3.put_object()
        .bucket(&world.bucket)
        .key(format!("{TENANT}/input/items.jsonl"))
        .body(body.into_bytes().into())
        .send()
        .await
        .unwrap();
    let job = world.scratch.write(
        "job.yaml",
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: hello, namespace: {TENANT}}}
spec:
  input: {{uri: "s3://{bucket}/{TENANT}/input/items.jsonl"}}
  batch: {{size: 30}}
  handler: {{builtin: {{name: identity}}}}
  output: {{uri: "s3://{bucket}/{TENANT}/out/"}}
  executor: {{kubernetes: {{parallelism: 2, envFromSecrets: [orch-aws]}}}}
"#,
            bucket = world.bucket
        ),
    );
    world.kubectl_ok(&["apply", "-f", job.to_str().unwrap()]);
    world.wait_for("the OrchJob to succeed", Duration::from_secs(240), |w| {
        let job = w.json(&["get", "orchjob", "hello", "-n", TENANT]);
        let phase = job["status"]["phase"].as_str().unwrap_or("").to_string();
        assert_ne!(phase, "Failed", "{job}\n{}", w.diagnostics());
        phase == "Succeeded"
    });
    let job = world.json(&["get", "orchjob", "hello", "-n", TENANT]);
    assert_eq!(job["status"]["items"]["ok"], ITEMS, "{job}");
    // Its tasks ran as Indexed Jobs in the tenant's namespace, their pods as orch-worker.
    let jobs = world.json(&["get", "jobs", "-n", TENANT]);
    let jobs = jobs["items"].as_array().unwrap();
    assert!(!jobs.is_empty());
    for j in jobs {
        assert_eq!(
            j["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("{WORKER_IMAGE}:e2e"),
            "{j}"
        );
    }
    let dir = world.scratch.path("downloaded");
    moto::download_prefix(&s3, &world.bucket, &format!("{TENANT}/out/"), &dir).await;
    common::read_output(&dir).assert_each_item_once(ITEMS);

    // Everything the operator asked for so far, the chart's RBAC allowed (the emulator's log
    // has every request with its user): a missing rule would show as a 403 here, even where the
    // operator swallows the error.
    let sa = format!("system:serviceaccount:{NAMESPACE}:{fullname}");
    let refused = world.refused(&sa, 0);
    assert!(
        refused.is_empty(),
        "the chart's RBAC refused the operator:\n{}",
        refused.join("\n")
    );

    // RBAC holds: with its own token the operator reads no Secret (of another namespace, nor
    // its own), writes no OrchPolicy; what it needs, it may.
    let token = world
        .kubectl_ok(&["create", "token", &fullname, "-n", NAMESPACE])
        .trim()
        .to_string();
    let denied = world.as_operator(&token, &["get", "secret", "orch-aws", "-n", TENANT]);
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains(&format!(
            "secrets \"orch-aws\" is forbidden: User \"{sa}\" cannot get resource \"secrets\" in API group \"\" in the namespace \"{TENANT}\""
        )),
        "{}",
        common::text(&denied)
    );
    let denied = world.as_operator(&token, &["get", "secret", AWS_SECRET, "-n", NAMESPACE]);
    assert!(
        stderr(&denied).contains("is forbidden"),
        "{}",
        common::text(&denied)
    );
    let denied = world.as_operator(&token, &["get", "secrets", "-A"]);
    assert!(
        stderr(&denied)
            .contains("cannot list resource \"secrets\" in API group \"\" at the cluster scope"),
        "{}",
        common::text(&denied)
    );
    let other = world.scratch.write(
        "other-policy.yaml",
        "apiVersion: orch.dev/v1alpha1\nkind: OrchPolicy\nmetadata: {name: sneaky}\n\
         spec:\n  namespaces: [default]\n  kubernetes: {}\n",
    );
    let denied = world.as_operator(&token, &["apply", "-f", other.to_str().unwrap()]);
    assert!(
        stderr(&denied).contains(&format!(
            "orchpolicies.orch.dev is forbidden: User \"{sa}\" cannot create resource \"orchpolicies\" in API group \"orch.dev\" at the cluster scope"
        )),
        "{}",
        common::text(&denied)
    );
    let denied = world.as_operator(
        &token,
        &[
            "patch",
            "orchpolicy",
            TENANT,
            "--type=merge",
            "-p",
            r#"{"spec":{"namespaces":["team-a","default"]}}"#,
        ],
    );
    assert!(
        stderr(&denied).contains(&format!(
            "orchpolicies.orch.dev \"{TENANT}\" is forbidden: User \"{sa}\" cannot patch resource \"orchpolicies\""
        )),
        "{}",
        common::text(&denied)
    );
    let denied = world.as_operator(&token, &["delete", "orchpolicy", TENANT]);
    assert!(stderr(&denied).contains("cannot delete resource \"orchpolicies\""));
    world.assert_can_i(
        &token,
        &[
            ("create", "orchpolicies", None, "no"),
            ("list", "orchpolicies", None, "yes"),
            ("patch", "orchjobs/status", Some(TENANT), "yes"),
            ("create", "jobs.batch", Some(TENANT), "yes"),
            ("get", "secrets", Some(NAMESPACE), "no"),
            (
                "update",
                "leases/orch-operator-leader",
                Some(NAMESPACE),
                "yes",
            ),
            ("update", "leases/another-lease", Some(NAMESPACE), "no"),
        ],
    );
    // The operator did everything above under the chart's RBAC and was refused nothing.
    let log = world.pod_log(NAMESPACE, &pod);
    assert!(log.contains("connected to the API server"), "{log}");
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused something it needs (a rule missing from the chart's RBAC):\n{log}"
    );

    // helm upgrade to the namespaced mode (watchNamespaces): the pod template changes, so the
    // Deployment rolls (maxSurge 0, maxUnavailable 1) to a new pod, which takes the Lease over
    // once the old one released it — and now has a Role in the tenant's namespace instead of
    // the cluster-wide rules.
    let before_upgrade = world.emulator_log_len();
    world.helm_ok(&[
        "upgrade",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        NAMESPACE,
        "-f",
        values.to_str().unwrap(),
        "--set",
        &format!("watchNamespaces={{{TENANT}}}"),
    ]);
    world.wait_for("the rollout to a new pod", Duration::from_secs(90), |w| {
        let pods = w.operator_pods();
        pods.len() == 1
            && pods[0]["metadata"]["name"] != pod.as_str()
            && pods[0]["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    });
    let new_pod = world.operator_pods()[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    world.wait_for(
        "the new pod to hold the Lease",
        Duration::from_secs(60),
        |w| {
            w.kubectl(&[
                "get",
                "lease",
                "orch-operator-leader",
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .stdout
                == new_pod.as_bytes()
        },
    );
    let pid: u32 = world.operator_pods()[0]["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("emulator://")
        .parse()
        .unwrap();
    assert!(process_alive(pid));
    // The controllers' rules are a Role in the tenant's namespace; cluster-wide, the operator
    // may now read OrchPolicies only.
    assert!(
        !world
            .kubectl(&["get", "clusterrole", &fullname])
            .status
            .success()
    );
    world.kubectl_ok(&["get", "role,rolebinding", &fullname, "-n", TENANT]);
    world.assert_can_i(
        &token,
        &[
            ("list", "orchjobs", None, "no"),
            ("list", "orchjobs", Some("default"), "no"),
            ("list", "orchjobs", Some(TENANT), "yes"),
            ("create", "jobs.batch", Some(TENANT), "yes"),
            ("create", "jobs.batch", Some("default"), "no"),
            ("list", "orchpolicies", None, "yes"),
        ],
    );
    // A new job of the tenant runs under those Roles alone; one in a namespace the operator
    // no longer watches is left alone (the admin's policy would allow it).
    let policy = world.scratch.write(
        "default-policy.yaml",
        "apiVersion: orch.dev/v1alpha1\nkind: OrchPolicy\nmetadata: {name: default-ns}\n\
         spec:\n  namespaces: [default]\n  kubernetes: {secrets: [orch-aws]}\n",
    );
    world.kubectl_ok(&["apply", "-f", policy.to_str().unwrap()]);
    let again = std::fs::read_to_string(world.scratch.path("job.yaml"))
        .unwrap()
        .replace("name: hello,", "name: again,")
        .replace("/out/", "/out-again/");
    let again = world.scratch.write("again.yaml", &again);
    world.kubectl_ok(&["apply", "-f", again.to_str().unwrap()]);
    let unwatched = std::fs::read_to_string(world.scratch.path("job.yaml"))
        .unwrap()
        .replace(
            &format!("name: hello, namespace: {TENANT}"),
            "name: unwatched, namespace: default",
        )
        .replace(&format!("/{TENANT}/"), "/default/");
    let unwatched = world.scratch.write("unwatched.yaml", &unwatched);
    world.kubectl_ok(&["apply", "-f", unwatched.to_str().unwrap()]);
    world.wait_for(
        "the tenant's new job to succeed",
        Duration::from_secs(240),
        |w| {
            let job = w.json(&["get", "orchjob", "again", "-n", TENANT]);
            let phase = job["status"]["phase"].as_str().unwrap_or("").to_string();
            assert_ne!(phase, "Failed", "{job}\n{}", w.diagnostics());
            phase == "Succeeded"
        },
    );
    let unwatched = world.json(&["get", "orchjob", "unwatched", "-n", "default"]);
    assert!(unwatched["status"].is_null(), "{unwatched}");
    assert!(unwatched["metadata"]["finalizers"].is_null(), "{unwatched}");
    let log = world.pod_log(NAMESPACE, &new_pod);
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    let refused = world.refused(&sa, before_upgrade);
    assert!(
        refused.is_empty(),
        "the chart's namespaced RBAC refused the operator:\n{}",
        refused.join("\n")
    );

    // helm uninstall: the Deployment goes, and with it the pod and the operator process.
    world.helm_ok(&["uninstall", RELEASE, "-n", NAMESPACE]);
    world.wait_for("the operator to stop", Duration::from_secs(45), |w| {
        w.operator_pods().is_empty() && !process_alive(pid)
    });
    // The CRDs stay (helm never deletes crds/), and so do the jobs.
    world.kubectl_ok(&["get", "orchjob", "hello", "-n", TENANT]);
}
