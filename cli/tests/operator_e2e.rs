//! The operator end to end: the real `orch-operator` binary reconciles `OrchJob`s applied with
//! the real `kubectl` against the Kubernetes API emulator (tests/kube-emulator; no API server
//! can be installed on these machines, tests/README.md), runs them as arrays on the real one-node
//! Slurm cluster, with moto's S3 and DynamoDB as the data plane. What happened is checked
//! outside orch: objects with kubectl, arrays with `sacct`/`squeue`, output with pyarrow after
//! a download with the SDK.
//!
//! Each test says it was skipped when Slurm (`ORCH_SLURM_ENV`) or kubectl (`ORCH_KUBECTL`) is
//! missing; `.ci/run` provides both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use orch_testkit::moto;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use orch_aws::config::{self, AwsSettings};
use orch_testkit::kube_emulator::{KubeEmulator, Options};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubectl_path() -> Option<PathBuf> {
    orch_testkit::components::kubectl()
}

/// moto's credentials as a profile file in the scratch directory, for workers that get
/// credentials only by reference (Slurm tasks).
const AWS_CREDENTIALS_FILE: &str = "aws-credentials";

/// AWS credentials in the environment. Worker pods must not inherit any from the emulator:
/// theirs come from the Secret their job names in `envFromSecrets`, as in a cluster without
/// cloud identity.
const AWS_CREDENTIAL_VARIABLES: [&str; 6] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

/// The emulator; with `pods` (the environment workers get, besides their pod's), it runs
/// Indexed Jobs' pods as local processes, without any AWS credentials of this process.
fn start_emulator(dir: &Path, pods: Option<Vec<(String, String)>>) -> KubeEmulator {
    let options = match pods {
        Some(env) => Options {
            run_jobs: Some(dir.join("pod-logs")),
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            env_remove: AWS_CREDENTIAL_VARIABLES.iter().map(Into::into).collect(),
        },
        None => Options::default(),
    };
    KubeEmulator::start(&dir.join("kubeconfig"), options)
}

/// One test's world: emulator, AWS names in the shared moto, the Slurm environment, and the
/// operators it started.
struct World {
    emulator: KubeEmulator,
    kubectl: PathBuf,
    slurm: HashMap<String, String>,
    endpoint: String,
    table: String,
    queue: String,
    bucket: String,
    /// The AWS secret key of everyone in this world (moto checks none): a value unique to the
    /// world, so that a test can look for it where it must never appear.
    canary: String,
    scratch: common::Scratch,
    /// The operators started, by identity, in the order they started.
    operators: Vec<(String, Child)>,
}

impl World {
    /// A world with Slurm (skipped without it).
    async fn new(prefix: &str) -> Option<World> {
        let slurm = common::slurm_env()?;
        World::build(prefix, slurm, false).await
    }

    /// A world of pods (see [`World::with_pods`]) with `items` of input, an operator running,
    /// and the Secret `orch-aws` that gives the pods AWS keys (`secret` as the secret key).
    async fn pods_at_work(prefix: &str, items: u64, secret: &str) -> Option<World> {
        let mut world = World::with_pods(prefix).await?;
        world.put_input(items).await;
        world.start_operator("op-a");
        world.create_secret(
            "orch-aws",
            &[
                ("AWS_ACCESS_KEY_ID", "pods"),
                ("AWS_SECRET_ACCESS_KEY", secret),
            ],
        );
        Some(world)
    }

    /// A world whose emulator runs Indexed Jobs as local processes, without Slurm.
    async fn with_pods(prefix: &str) -> Option<World> {
        World::build(prefix, HashMap::new(), true).await
    }

    async fn build(prefix: &str, slurm: HashMap<String, String>, pods: bool) -> Option<World> {
        let kubectl = kubectl_path()?;
        if !orch_testkit::components::moto() || !orch_testkit::components::python_module("pyarrow")
        {
            return None;
        }
        let scratch = common::Scratch::new();
        let mut world = World {
            emulator: start_emulator(scratch.dir.path(), None),
            kubectl,
            slurm,
            endpoint: moto::moto().endpoint.clone(),
            table: moto::unique(&format!("{prefix}-table")),
            queue: moto::unique(&format!("{prefix}-q")),
            bucket: moto::unique(&format!("{prefix}-bucket")),
            canary: moto::unique("orch-canary-7Qx"),
            scratch,
            operators: Vec::new(),
        };
        world.scratch.write(
            AWS_CREDENTIALS_FILE,
            &format!(
                "[default]\naws_access_key_id = testing\naws_secret_access_key = {}\n",
                world.canary
            ),
        );
        if pods {
            // Pods need the AWS settings (endpoint, region, table, queue): restart the emulator
            // with them and --run-jobs — but not the credentials, which only a Secret gives.
            let settings = world
                .aws_env()
                .into_iter()
                .filter(|(k, _)| !AWS_CREDENTIAL_VARIABLES.contains(&k.as_str()))
                .collect();
            world.emulator = start_emulator(world.scratch.dir.path(), Some(settings));
        }
        let out = world
            .with_aws(Command::new(common::orch()))
            .args(["init", "--bucket", &world.bucket])
            .output()
            .unwrap();
        assert!(out.status.success(), "orch init: {}", common::text(&out));
        let crds = repo().join("crds");
        for crd in [
            "orch.dev_orchjobs.yaml",
            "orch.dev_taskgroups.yaml",
            "orch.dev_ratelimits.yaml",
            "orch.dev_orchpolicies.yaml",
        ] {
            world.kubectl_ok(&["apply", "-f", crds.join(crd).to_str().unwrap()]);
        }
        // The admin's policy for the tests' namespace: Slurm through the commands on this
        // host, pods that may read the AWS Secret, alerts to the webhook of `alert-hook`; data
        // under s3://<bucket>/default/.
        let policy = world.scratch.write(
            "policy.yaml",
            "apiVersion: orch.dev/v1alpha1\nkind: OrchPolicy\nmetadata: {name: e2e}\n\
             spec:\n  namespaces: [default]\n  slurm: {transport: cli}\n  \
             kubernetes: {secrets: [orch-aws, alert-hook]}\n",
        );
        world.kubectl_ok(&["apply", "-f", policy.to_str().unwrap()]);
        Some(world)
    }

    /// What a user (or a worker) of this world's AWS needs in its environment. Slurm tasks get
    /// no credentials by value, only the file named here, as on a real cluster.
    fn aws_env(&self) -> Vec<(String, String)> {
        let credentials = self.scratch.path(AWS_CREDENTIALS_FILE);
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", self.canary.as_str()),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("ORCH_DYNAMODB_TABLE", self.table.as_str()),
            ("ORCH_SQS_QUEUE", self.queue.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with_aws(&self, mut c: Command) -> Command {
        c.current_dir(self.scratch.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .envs(self.aws_env());
        c
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.emulator.kubeconfig)
            .output()
            .unwrap()
    }

    /// A Secret in `default` with these keys, its values passed in files, so that none is on
    /// a command line.
    fn create_secret(&self, name: &str, pairs: &[(&str, &str)]) {
        let mut args = vec![
            "create".to_string(),
            "secret".into(),
            "generic".into(),
            name.into(),
        ];
        for (key, value) in pairs {
            let file = self.scratch.write(&format!("secret-{name}-{key}"), value);
            args.push(format!("--from-file={key}={}", file.display()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.kubectl_ok(&args);
    }

    /// `orch <args>` against this world's cluster, as a user with its kubeconfig.
    fn orch(&self, args: &[&str]) -> Output {
        Command::new(common::orch())
            .args(args)
            .env("KUBECONFIG", &self.emulator.kubeconfig)
            .output()
            .unwrap()
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            common::text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts an operator (leader election on, short leases so a successor takes over fast);
    /// returns the port of its /healthz, /readyz and /metrics.
    fn start_operator(&mut self, identity: &str) -> u16 {
        self.start_operator_with(identity, &[])
    }

    /// [`World::start_operator`] with more flags.
    fn start_operator_with(&mut self, identity: &str, extra: &[&str]) -> u16 {
        let port = moto::free_port();
        let log = std::fs::File::create(self.scratch.path(&format!("{identity}.log"))).unwrap();
        let mut c = self.with_aws(Command::new(common::orch().with_file_name("orch-operator")));
        c.envs(&self.slurm)
            .env("KUBECONFIG", &self.emulator.kubeconfig)
            .env("ORCH_STORAGE_URI", format!("s3://{}/orch/", self.bucket))
            .env("ORCH_WORKER", common::worker())
            .env("ORCH_WORKER_IMAGE", "orch-worker:e2e")
            .env("ORCH_WORKER_POD_COMMAND", common::worker())
            .env("ORCH_LOG", "info")
            .args(
                (!extra.iter().any(|a| a.starts_with("--log-format")))
                    .then_some("--log-format=text"),
            )
            .args([
                &format!("--metrics-bind-address=127.0.0.1:{port}"),
                "--leader-elect",
                "--leader-election-namespace=default",
                "--leader-election-duration=3s",
                "--job-lease=5s",
                "--tick=300ms",
                "--status-interval=1s",
                &format!("--identity={identity}"),
            ])
            .arg(format!(
                "--scratch-dir={}",
                self.scratch.path(identity).display()
            ))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log);
        self.operators.push((
            identity.to_string(),
            c.spawn().expect("orch-operator starts"),
        ));
        port
    }

    /// Sends `signal` to the operator `identity` and waits for it to end (its log stays in
    /// [`World::operators_logs`]).
    fn kill_operator(&mut self, identity: &str, signal: &str) -> std::process::ExitStatus {
        let (_, child) = self
            .operators
            .iter_mut()
            .find(|(id, _)| id == identity)
            .unwrap_or_else(|| panic!("no operator {identity}"));
        common::kill(child.id(), signal);
        child.wait().unwrap()
    }

    fn operator_log(&self, identity: &str) -> String {
        std::fs::read_to_string(self.scratch.path(&format!("{identity}.log"))).unwrap_or_default()
    }

    async fn put_input(&self, items: u64) {
        let sdk = moto::sdk_config().await;
        let s3 = config::s3_client(&sdk, &AwsSettings::default());
        let body: String = (0..items)
            .map(|i| format!("{{\"id\": {i}, \"text\": \"item {i}\"}}\n"))
            .collect();
        s3.put_object()
            .bucket(&self.bucket)
            .key("default/input/items.jsonl")
            .body(body.into_bytes().into())
            .send()
            .await
            .unwrap();
    }

    /// An OrchJob on Slurm (commands on this host; tasks get the AWS settings and the
    /// credentials file by name).
    fn job_yaml(&self, name: &str, batch: u64, sleep: &str, extra: &str) -> PathBuf {
        self.scratch.write(
            &format!("{name}.yaml"),
            &format!(
                r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: {name}}}
spec:
  input: {{uri: "s3://{bucket}/default/input/items.jsonl"}}
  batch: {{size: {batch}}}
  handler: {{builtin: {{name: sleep, duration: {sleep}}}}}
  output: {{uri: "s3://{bucket}/default/out-{name}/"}}
  resources: {{memory: 200Mi, time: 10m}}
  executor: {{slurm: {{transport: cli, maxRunning: 4}}}}
{extra}"#,
                bucket = self.bucket
            ),
        )
    }

    fn get(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.kubectl_ok(&["get", "orchjob", name, "-o", "json"])).unwrap()
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&World) -> bool) {
        let started = Instant::now();
        while !ok(self) {
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {what}; operator logs:\n{}",
                self.operators_logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn operators_logs(&self) -> String {
        self.operators
            .iter()
            .map(|(id, _)| format!("--- {id}\n{}", tail(&self.operator_log(id), 60)))
            .collect()
    }

    fn condition(&self, name: &str, kind: &str) -> Option<(String, String)> {
        let job = self.get(name);
        job["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            })
    }

    fn slurm(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .envs(&self.slurm)
            .output()
            .unwrap();
        assert!(out.status.success(), "{program}: {}", common::text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `JobID|State|Comment` of every array task of the orch job `id` in accounting.
    fn sacct(&self, id: &str) -> Vec<Vec<String>> {
        self.slurm(
            "sacct",
            &[
                "--noheader",
                "--parsable2",
                "--allocations",
                &format!("--name={id}"),
                "--format=JobID,State,Comment",
                "--starttime=now-1days",
            ],
        )
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
    }

    /// `JobID State Reason` of the orch job's tasks Slurm still has.
    fn squeue(&self, id: &str) -> Vec<String> {
        self.slurm(
            "squeue",
            &[
                "--noheader",
                "--array",
                &format!("--name={id}"),
                "--format=%i %T %r",
            ],
        )
        .lines()
        .map(str::to_string)
        .collect()
    }

    async fn output_dir(&self, name: &str) -> PathBuf {
        let sdk = moto::sdk_config().await;
        let s3 = config::s3_client(&sdk, &AwsSettings::default());
        let dir = self.scratch.path(&format!("downloaded-{name}"));
        moto::download_prefix(&s3, &self.bucket, &format!("default/out-{name}/"), &dir).await;
        dir
    }

    async fn keys_under(&self, prefix: &str) -> usize {
        let sdk = moto::sdk_config().await;
        let s3 = config::s3_client(&sdk, &AwsSettings::default());
        s3.list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap()
            .key_count()
            .unwrap_or(0) as usize
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, op) in &mut self.operators {
            op.kill().ok();
            op.wait().ok();
        }
    }
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body, or `None` while nothing
/// listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

fn lease_holder(world: &World) -> String {
    let lease: serde_json::Value = serde_json::from_str(&world.kubectl_ok(&[
        "get",
        "lease",
        "orch-operator-leader",
        "-o",
        "json",
    ]))
    .unwrap();
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every array of the job by the comment orch gave it, with how many Slurm arrays carried it.
fn arrays_by_comment(rows: &[Vec<String>]) -> BTreeMap<String, usize> {
    let mut arrays: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        let array = row[0].split('_').next().unwrap().to_string();
        arrays.entry(row[2].clone()).or_default().insert(array);
    }
    arrays.into_iter().map(|(c, ids)| (c, ids.len())).collect()
}

const ITEMS: u64 = 400;

/// kubectl apply → arrays in Slurm → `kubectl get orchjobs` shows progress → the operator is
/// killed with SIGKILL mid-job and a second one takes over → `kubectl wait` for Complete →
/// every item exactly once, and no array submitted twice.
#[tokio::test(flavor = "multi_thread")]
async fn apply_run_on_slurm_survive_kill_9_and_complete() {
    let Some(mut world) = World::new("e2e").await else {
        return;
    };
    world.put_input(ITEMS).await;
    world.start_operator("op-a");
    // 20 tasks of 20 items at 30 ms: each task takes ~0.6 s, four at a time.
    let file = world.job_yaml("reviews", 20, "30ms", "");
    let applied = world.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(
        applied.contains("orchjob.orch.dev/reviews created"),
        "{applied}"
    );

    world.wait_for("the job to run", Duration::from_secs(60), |w| {
        w.get("reviews")["status"]["phase"] == "Running"
    });
    let id = world.get("reviews")["status"]["jobId"]
        .as_str()
        .unwrap()
        .to_string();
    world.wait_for("arrays in Slurm", Duration::from_secs(60), |w| {
        !w.sacct(&id).is_empty()
    });
    // The finalizer is on, and `kubectl get orchjobs` prints the printer columns.
    assert_eq!(
        world.get("reviews")["metadata"]["finalizers"][0],
        "orch.dev/cleanup"
    );
    let table = world.kubectl_ok(&["get", "orchjobs"]);
    let header = table.lines().next().unwrap();
    for column in ["NAME", "PHASE", "DONE", "TOTAL", "FAILED", "AGE"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        table.contains("reviews") && table.contains("Running"),
        "{table}"
    );
    assert!(table.lines().nth(1).unwrap().contains(" 20 "), "{table}");

    // SIGKILL: no lease released, no driver stopped cleanly.
    world.wait_for("some tasks done", Duration::from_secs(120), |w| {
        w.get("reviews")["status"]["tasks"]["succeeded"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    });
    world.kill_operator("op-a", "-KILL");
    // The successor also serves the dashboard of the storage (read-only), logs JSON and
    // writes the job's figures as CloudWatch EMF lines.
    let dashboard_port = moto::free_port();
    let emf = world.scratch.path("op-b.emf");
    world.start_operator_with(
        "op-b",
        &[
            &format!("--dashboard-bind-address=127.0.0.1:{dashboard_port}"),
            "--log-format=json",
            &format!("--metrics-emf={}", emf.display()),
        ],
    );

    let waited = world.kubectl(&[
        "wait",
        "--for=condition=Complete",
        "orchjob/reviews",
        "--timeout=240s",
    ]);
    assert!(
        waited.status.success(),
        "kubectl wait: {}\n{}",
        common::text(&waited),
        world.operators_logs()
    );
    assert!(
        world
            .operator_log("op-b")
            .contains("starting the job's driver"),
        "the second operator took the job over:\n{}",
        world.operators_logs()
    );

    // Status: counts and output.
    let job = world.get("reviews");
    let status = &job["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["tasks"]["succeeded"], 20, "{status}");
    assert_eq!(status["items"]["ok"], ITEMS, "{status}");
    assert_eq!(status["observedGeneration"], job["metadata"]["generation"]);
    assert!(
        status["output"].as_str().unwrap().ends_with("out-reviews/"),
        "{status}"
    );
    // TaskGroups: children of the job, counting every task, the final merge's too. Their
    // status is written by the operator's next refresh, which may come just after the job's.
    let grouped = || {
        let groups: serde_json::Value =
            serde_json::from_str(&world.kubectl_ok(&["get", "taskgroups", "-o", "json"])).unwrap();
        let groups = groups["items"].as_array().unwrap();
        assert!(!groups.is_empty());
        let mut grouped = HashMap::new();
        for g in groups {
            assert_eq!(g["metadata"]["ownerReferences"][0]["kind"], "OrchJob");
            assert_eq!(g["spec"]["job"], "reviews");
            *grouped
                .entry(g["spec"]["kind"].as_str().unwrap().to_string())
                .or_insert(0) += g["status"]["tasks"]["succeeded"].as_u64().unwrap_or(0);
        }
        grouped
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut counts = grouped();
    while counts.get("final") != Some(&1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        counts = grouped();
    }
    assert_eq!(counts.get("work"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("final"), Some(&1), "{counts:?}");
    // Events tell the story.
    let events = world.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"]);
    for reason in ["Started", "Completed"] {
        assert!(
            events.contains(&format!("\"reason\": \"{reason}\"")),
            "{events}"
        );
    }

    // Every line of the JSON operator is a JSON object, and no line speaks of the job
    // without naming it: in its fields or in a span (the job's driver runs in one naming the
    // job and its OrchJob).
    let mut naming = 0;
    for line in world.operator_log("op-b").lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        let mut ids = v["fields"].as_object().cloned().unwrap_or_default();
        for span in v["spans"].as_array().into_iter().flatten() {
            ids.extend(span.as_object().cloned().unwrap_or_default());
        }
        if ids.get("job").and_then(|j| j.as_str()) == Some(id.as_str()) {
            naming += 1;
            assert_eq!(
                ids.get("object").and_then(|o| o.as_str()),
                Some("default/reviews"),
                "{line}"
            );
        } else {
            assert!(
                !line.contains(&id),
                "a line about the job without its id: {line}"
            );
        }
    }
    assert!(naming >= 3, "{naming} lines name the job");
    // EMF lines of the job, the last one (at its end) with every item done.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&emf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().expect("EMF lines of the driven job");
    assert!(last["_aws"]["CloudWatchMetrics"].is_array(), "{last}");
    assert_eq!(last["Job"], id.as_str(), "{last}");
    assert_eq!(last["ItemsOk"], ITEMS, "{last}");
    // The operator's dashboard shows the job as it ended, and offers no actions.
    let (code, body) = http_get(dashboard_port, "/api/jobs").expect("the dashboard answers");
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["actions"], false, "{page}");
    let shown = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .unwrap_or_else(|| {
            panic!(
                "job {id} is not on the dashboard: {page}\n{}",
                world.operator_log("op-b")
            )
        });
    assert_eq!(shown["phase"], "succeeded", "{shown}");
    assert_eq!(shown["itemsDone"], ITEMS, "{shown}");
    // Every item exactly once, read by pyarrow.
    common::read_output(&world.output_dir("reviews").await).assert_each_item_once(ITEMS);
    // Slurm's view: every work array task ran and completed, no array twice. Its accounting
    // (slurmdbd) records a task some moments after the task ended, so the last one to end may
    // not be in `sacct` yet when the job completes.
    let completed_work = |rows: &[Vec<String>]| -> BTreeSet<String> {
        rows.iter()
            .filter(|r| r[2].starts_with("orch:work") && r[1] == "COMPLETED")
            .map(|r| r[0].clone())
            .collect()
    };
    world.wait_for(
        "Slurm's accounting of every work task",
        Duration::from_secs(60),
        |w| completed_work(&w.sacct(&id)).len() >= 20,
    );
    let rows = world.sacct(&id);
    let done = completed_work(&rows);
    assert!(done.len() >= 20, "{rows:?}");
    assert!(
        arrays_by_comment(&rows).values().all(|&n| n == 1),
        "an array was submitted twice: {rows:?}"
    );

    // Delete with purge: the finalizer cleans up, the children go with the job.
    world.kubectl_ok(&[
        "annotate",
        "orchjob/reviews",
        "orch.dev/purge-on-delete=true",
    ]);
    world.kubectl_ok(&["delete", "orchjob", "reviews", "--timeout=60s"]);
    let left = world.kubectl_ok(&["get", "orchjobs,taskgroups", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
    assert_eq!(
        world.keys_under(&format!("orch/default/jobs/{id}/")).await,
        0
    );
    assert!(
        world.keys_under("default/out-reviews/").await > 0,
        "purge keeps the output"
    );
}

/// The leading operator `kill -9`ed again and again at random moments (while the job plans,
/// works or aggregates), a new standby started after each kill so that one always waits: each
/// job still completes with every item once, and Slurm's accounting shows no array submitted
/// twice. `ORCH_CHAOS_OPERATOR_KILLS` sets the kills (CI: 3); jobs follow one another until
/// that many were made.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_and_its_standby_under_repeated_kill_9_lose_nothing() {
    let seed = common::chaos_seed();
    let wanted = common::setting("ORCH_CHAOS_OPERATOR_KILLS", 3);
    eprintln!("chaos (operator): ORCH_CHAOS_SEED={seed} ORCH_CHAOS_OPERATOR_KILLS={wanted}");
    let mut rng = common::Rng::new(seed);
    let Some(mut world) = World::new("e2e-opchaos").await else {
        return;
    };
    world.put_input(ITEMS).await;
    let mut alive = vec!["op-1".to_string(), "op-2".to_string()];
    for id in &alive {
        world.start_operator(id);
    }
    let (mut kills, mut jobs, mut started) = (0u64, 0u64, 2u64);
    while kills < wanted {
        jobs += 1;
        let name = format!("chaos-{jobs}");
        let file = world.job_yaml(&name, 20, "30ms", "");
        world.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
        let began = Instant::now();
        loop {
            assert!(
                began.elapsed() < Duration::from_secs(600),
                "{name} did not complete within 10 minutes ({kills} kills)\n{}",
                world.operators_logs()
            );
            std::thread::sleep(Duration::from_millis(1000 + rng.below(4000)));
            let phase = world.get(&name)["status"]["phase"].clone();
            assert_ne!(phase, "Failed", "{}", world.operators_logs());
            if phase == "Succeeded" {
                break;
            }
            // The Lease may still name a leader killed a moment ago: wait for the next one.
            let leader = lease_holder(&world);
            if kills >= wanted || !alive.contains(&leader) {
                continue;
            }
            world.kill_operator(&leader, "-KILL");
            alive.retain(|id| *id != leader);
            kills += 1;
            started += 1;
            let standby = format!("op-{started}");
            world.start_operator(&standby);
            alive.push(standby);
        }
        let status = world.get(&name)["status"].clone();
        assert_eq!(status["tasks"]["succeeded"], 20, "{status}");
        assert_eq!(status["items"]["ok"], ITEMS, "{status}");
        common::read_output(&world.output_dir(&name).await).assert_each_item_once(ITEMS);
        let rows = world.sacct(status["jobId"].as_str().unwrap());
        assert!(
            arrays_by_comment(&rows).values().all(|&n| n == 1),
            "an array was submitted twice: {rows:?}"
        );
    }
    common::chaos_summary(
        "operator",
        seed,
        &format!(
            "{jobs} jobs of {ITEMS} items, {kills} kill -9 of the \
         leading operator"
        ),
    );
}

/// Pause holds the job's pending array tasks in Slurm and starts nothing new; resume releases
/// them and the job completes. Cancel stops a running job: `Failed` with reason `Cancelled`,
/// nothing of it left in Slurm.
#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_and_cancel() {
    let Some(mut world) = World::new("e2e-pause").await else {
        return;
    };
    world.put_input(ITEMS).await;
    world.start_operator("op-a");
    // 40 tasks of 10 items at 100 ms: ~1 s each, two at a time.
    let extra = "";
    let file = world.job_yaml("paused", 10, "100ms", extra);
    world.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    world.wait_for("the job to run", Duration::from_secs(60), |w| {
        w.get("paused")["status"]["tasks"]["running"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let id = world.get("paused")["status"]["jobId"]
        .as_str()
        .unwrap()
        .to_string();

    world.kubectl_ok(&[
        "patch",
        "orchjob",
        "paused",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    world.wait_for("Suspended=True", Duration::from_secs(30), |w| {
        w.condition("paused", "Suspended") == Some(("True".into(), "Paused".into()))
    });
    world.wait_for(
        "pending tasks held in Slurm",
        Duration::from_secs(30),
        |w| {
            let q = w.squeue(&id);
            q.iter().any(|l| l.contains("PENDING"))
                && q.iter()
                    .all(|l| !l.contains("PENDING") || l.contains("Held"))
        },
    );
    assert_eq!(world.get("paused")["status"]["phase"], "Suspended");
    // Once the running ones finish, nothing runs while paused.
    // (The status follows the stores a moment later than Slurm: wait for both.)
    world.wait_for("running tasks to finish", Duration::from_secs(60), |w| {
        w.squeue(&id).iter().all(|l| !l.contains("RUNNING"))
            && w.get("paused")["status"]["tasks"]["running"] == 0
    });
    std::thread::sleep(Duration::from_secs(2));
    let done_while_paused = world.get("paused")["status"]["tasks"]["succeeded"].clone();
    std::thread::sleep(Duration::from_secs(3));
    assert!(world.squeue(&id).iter().all(|l| !l.contains("RUNNING")));
    assert_eq!(
        world.get("paused")["status"]["tasks"]["succeeded"],
        done_while_paused
    );

    world.kubectl_ok(&[
        "patch",
        "orchjob",
        "paused",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    world.wait_for("work again", Duration::from_secs(60), |w| {
        w.get("paused")["status"]["tasks"]["succeeded"] != done_while_paused
    });
    assert_eq!(
        world.condition("paused", "Suspended"),
        Some(("False".into(), "Resumed".into()))
    );

    // Cancel mid-run.
    world.kubectl_ok(&["annotate", "orchjob/paused", "orch.dev/cancel=true"]);
    let waited = world.kubectl(&[
        "wait",
        "--for=condition=Failed",
        "orchjob/paused",
        "--timeout=120s",
    ]);
    assert!(
        waited.status.success(),
        "{}\n{}",
        common::text(&waited),
        world.operators_logs()
    );
    assert_eq!(
        world.condition("paused", "Failed"),
        Some(("True".into(), "Cancelled".into()))
    );
    world.wait_for(
        "Slurm to have nothing of the job",
        Duration::from_secs(60),
        |w| w.squeue(&id).is_empty(),
    );
    let events = world.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"]);
    for reason in ["Paused", "Resumed", "Cancelling", "Submitted"] {
        assert!(
            events.contains(&format!("\"reason\": \"{reason}\"")),
            "{events}"
        );
    }
    // The same actions, append-only in the audit log, in order, with the allowing policy.
    let store = orch_aws::dynamodb::DynamoStateStore::new(
        aws_sdk_dynamodb::Client::new(&moto::sdk_config().await),
        &world.table,
        Default::default(),
    );
    let entries = orch_core::backend::AuditLog::entries(&store, "default")
        .await
        .unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .filter(|e| e.name == "paused")
        .map(|e| e.action.as_str())
        .collect();
    let position = |action: &str| {
        actions
            .iter()
            .position(|a| *a == action)
            .unwrap_or_else(|| panic!("{action} not audited: {actions:?}"))
    };
    assert!(position("Submitted") < position("Paused"), "{actions:?}");
    assert!(position("Paused") < position("Resumed"), "{actions:?}");
    assert!(position("Resumed") < position("Cancelling"), "{actions:?}");
    assert!(
        entries
            .iter()
            .filter(|e| e.name == "paused")
            .all(|e| e.policy == "e2e" && e.job == id && !e.uid.is_empty()),
        "{entries:?}"
    );
}

/// The schema refuses a bad field with its path; a spec the schema accepts but orch's rules
/// refuse ends `Failed` with reason `InvalidSpec` and an Event, and deleting it is immediate.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_jobs_are_refused_or_failed_with_the_reason() {
    let Some(mut world) = World::new("e2e-invalid").await else {
        return;
    };
    let leader_port = world.start_operator("op-a");
    let bad = world.job_yaml("bad-size", 0, "1ms", "");
    let out = world.kubectl(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("spec.batch.size"),
        "{}",
        common::text(&out)
    );

    // Passes the schema, fails the rules: parquet missing from the output formats.
    let file = world.scratch.write(
        "rules.yaml",
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: rules}}
spec:
  input: {{uri: "s3://{b}/default/input/items.jsonl"}}
  batch: {{size: 10}}
  handler: {{builtin: {{name: identity}}}}
  output: {{uri: "s3://{b}/default/out-rules/", formats: [sqlite]}}
"#,
            b = world.bucket
        ),
    );
    world.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    world.wait_for("Failed=True", Duration::from_secs(30), |w| {
        w.condition("rules", "Failed") == Some(("True".into(), "InvalidSpec".into()))
    });
    let job = world.get("rules");
    let message = job["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("spec.output.formats"), "{message}");
    let events = world.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"]);
    assert!(events.contains("\"reason\": \"InvalidSpec\""), "{events}");
    world.kubectl_ok(&["delete", "orchjob", "rules", "--timeout=30s"]);

    // Health and metrics of the leader; a standby is ready too, and leads once the leader
    // shuts down (SIGTERM: a clean exit that hands the Lease over).
    let (code, body) = http_get(leader_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("orch_operator_reconciles_total{outcome=\"ok\"}"),
        "{body}"
    );
    assert!(body.contains("orch_operator_leader 1"), "{body}");
    assert!(
        body.contains("orch_operator_jobs{phase=\"Failed\"}"),
        "{body}"
    );
    let standby_port = world.start_operator("op-b");
    world.wait_for("the standby to be ready", Duration::from_secs(30), |_| {
        http_get(standby_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(http_get(standby_port, "/healthz").unwrap().0, 200);
    assert_eq!(lease_holder(&world), "op-a");
    let (_, standby_metrics) = http_get(standby_port, "/metrics").unwrap();
    assert!(
        standby_metrics.contains("orch_operator_leader 0"),
        "{standby_metrics}"
    );

    let exit = world.kill_operator("op-a", "-TERM");
    assert!(exit.success(), "{exit:?}\n{}", world.operators_logs());
    assert!(
        world
            .operator_log("op-a")
            .contains("released the leader Lease")
    );
    world.wait_for("the standby to lead", Duration::from_secs(10), |w| {
        lease_holder(w) == "op-b"
    });
}

/// Without Slurm: the Kubernetes executor's Indexed Jobs (the emulator runs their pods as local
/// processes), driven with the CLI's cluster verbs. The workers' AWS credentials come only from
/// the Secret the job names in `envFromSecrets` (the emulator has none to pass on), and never
/// appear in the Jobs, the OrchJob or the operator's log. A handler that cannot start makes
/// every task fail: `orch status --watch` exits 1 (and a `kubectl wait` for `completionTime`
/// ends); once it can start, `orch retry` runs the failed tasks again and `orch status --watch`
/// exits 0 with every item exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn indexed_jobs_fail_then_orch_retry_completes_them() {
    const N: u64 = 200;
    // moto checks no signature: any secret key works, and this one is easy to look for.
    const POD_SECRET: &str = "e2e-pod-secret-q7Zx";
    let Some(world) = World::pods_at_work("e2e-k8s", N, POD_SECRET).await else {
        return;
    };
    let marker = world.scratch.path("handler-may-start");
    let handler = world.scratch.write(
        "handler.py",
        "import os, sys\n\
         sys.path.insert(0, sys.argv[1])\n\
         if not os.path.exists(sys.argv[2]):\n    sys.exit(3)\n\
         from orch_handler import handler\n\
         @handler\ndef echo(item):\n    return item\n",
    );
    // The job's alerts also go to a webhook whose URL (a credential) is in a Secret.
    const HOOK_SECRET: &str = "e2e-alert-hook-T0k3n";
    let hooks = common::Hooks::start();
    world.create_secret(
        "alert-hook",
        &[("url", hooks.url(&format!("/hooks/{HOOK_SECRET}")).as_str())],
    );
    let file = world.scratch.write(
        "retried.yaml",
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: retried}}
spec:
  input: {{uri: "s3://{bucket}/default/input/items.jsonl"}}
  batch: {{size: 50}}
  handler:
    exec: {{command: [python3, "{handler}", "{python}", "{marker}"]}}
  retry: {{maxAttempts: 1}}
  output: {{uri: "s3://{bucket}/default/out-retried/"}}
  executor: {{kubernetes: {{parallelism: 2, envFromSecrets: [orch-aws]}}}}
  alerts:
    channels:
      - webhook: {{url: {{secretKeyRef: {{name: alert-hook, key: url}}}}}}
"#,
            bucket = world.bucket,
            handler = handler.display(),
            python = repo().join("python").canonicalize().unwrap().display(),
            marker = marker.display(),
        ),
    );
    let orch = |args: &[&str]| world.orch(args);
    let submitted = orch(&["submit", file.to_str().unwrap()]);
    assert!(submitted.status.success(), "{}", common::text(&submitted));

    let watched = orch(&["status", "retried", "--watch"]);
    assert_eq!(
        watched.status.code(),
        Some(1),
        "{}\n{}",
        common::text(&watched),
        world.operators_logs()
    );
    let status = world.get("retried")["status"].clone();
    assert_eq!(status["tasks"]["failed"], 4, "{status}");
    // The job's alerts (default rules, no channel in the spec) became Events on the OrchJob:
    // the failed tasks, as one Warning, sent once (delivered after the end, so waited for).
    let task_failed = |world: &World| -> Vec<serde_json::Value> {
        let events: serde_json::Value =
            serde_json::from_str(&world.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"]))
                .unwrap();
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "AlertTaskFailed")
            .cloned()
            .collect()
    };
    world.wait_for("the AlertTaskFailed Event", Duration::from_secs(30), |w| {
        !task_failed(w).is_empty()
    });
    let alerts = task_failed(&world);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["type"], "Warning", "{alerts:#?}");
    assert_eq!(alerts[0]["regarding"]["kind"], "OrchJob", "{alerts:#?}");
    assert_eq!(alerts[0]["regarding"]["name"], "retried", "{alerts:#?}");
    // It names the first failed task(s) and the error: "task 0 failed after 1 attempt(s)
    // (infrastructure): handler keeps crashing…" (or "2 tasks failed…", as they fail).
    let note = alerts[0]["note"].as_str().unwrap();
    assert!(
        note.contains("failed after") && note.contains("handler keeps crashing"),
        "{alerts:#?}"
    );
    // The webhook the Secret names got the same notices, as JSON, each once: the failed tasks,
    // and the error rate (every item of a task failed for good counts as failed).
    world.wait_for("the webhook's notices", Duration::from_secs(30), |_| {
        hooks.received().len() >= 2
    });
    let got = hooks.received();
    let mut rules: Vec<(String, String)> = got
        .iter()
        .map(|(_, b)| (b["rule"].to_string(), b["state"].to_string()))
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            ("\"errorRate\"".to_string(), "\"firing\"".to_string()),
            ("\"taskFailed\"".to_string(), "\"firing\"".to_string()),
        ],
        "{got:#?}"
    );
    for (path, body) in &got {
        assert_eq!(path, &format!("/hooks/{HOOK_SECRET}"));
        assert_eq!(body["name"], "retried", "{body}");
        assert_eq!(body["namespace"], "default", "{body}");
    }
    let task_failed_body = &got
        .iter()
        .find(|(_, b)| b["rule"] == "taskFailed")
        .unwrap()
        .1;
    assert_eq!(task_failed_body["summary"].as_str(), Some(note), "{got:#?}");
    // The ended job (failed) ends a wait for completionTime at once, as docs/operator.md says.
    world.kubectl_ok(&[
        "wait",
        "--for=jsonpath={.status.completionTime}",
        "orchjob/retried",
        "--timeout=20s",
    ]);
    // The tasks ran as Indexed Jobs owned by the OrchJob.
    let jobs: serde_json::Value =
        serde_json::from_str(&world.kubectl_ok(&["get", "jobs", "-o", "json"])).unwrap();
    let jobs = jobs["items"].as_array().unwrap().clone();
    assert!(!jobs.is_empty());
    for j in &jobs {
        assert_eq!(j["spec"]["completionMode"], "Indexed", "{j}");
        assert_eq!(
            j["metadata"]["ownerReferences"][0]["kind"], "OrchJob",
            "{j}"
        );
        assert_eq!(
            j["spec"]["template"]["spec"]["containers"][0]["envFrom"],
            serde_json::json!([{"secretRef": {"name": "orch-aws", "optional": false}}]),
            "{j}"
        );
    }

    std::fs::write(&marker, "").unwrap();
    let retried = orch(&["retry", "retried"]);
    assert!(retried.status.success(), "{}", common::text(&retried));
    let watched = orch(&["status", "retried", "--watch"]);
    assert_eq!(
        watched.status.code(),
        Some(0),
        "{}\n{}",
        common::text(&watched),
        world.operators_logs()
    );
    let job = world.get("retried");
    assert_eq!(job["status"]["tasks"]["succeeded"], 4, "{job}");
    assert!(job["status"]["retried"].is_string(), "{job}");
    let events = world.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"]);
    assert!(events.contains("\"reason\": \"Retrying\""), "{events}");
    common::read_output(&world.output_dir("retried").await).assert_each_item_once(N);
    // The Secret's values are in the Secret only.
    for kind in [
        "jobs",
        "pods",
        "orchjobs",
        "taskgroups",
        "events.events.k8s.io",
    ] {
        let objects = world.kubectl_ok(&["get", kind, "-o", "json"]);
        assert!(!objects.contains(POD_SECRET), "{kind}: {objects}");
        assert!(!objects.contains(HOOK_SECRET), "{kind}: {objects}");
    }
    assert!(!world.operator_log("op-a").contains(POD_SECRET));
    assert!(!world.operator_log("op-a").contains(HOOK_SECRET));
    // New attempts ran in new Indexed Jobs; the first ones are still there, untouched.
    let after: serde_json::Value =
        serde_json::from_str(&world.kubectl_ok(&["get", "jobs", "-o", "json"])).unwrap();
    assert!(after["items"].as_array().unwrap().len() > jobs.len());
}

/// Item-level redrive through the operator: a job whose handler fails some items permanently
/// succeeds with them in `errors.parquet`; once they can succeed, `orch retry NAME --items`
/// (the annotations `orch.dev/retry` and `orch.dev/retry-items`) runs only those items again,
/// `orch status --watch` waits for the new end, and the output in S3 holds every item once with
/// no error left.
#[tokio::test(flavor = "multi_thread")]
async fn orch_retry_items_redrives_failed_items_of_a_succeeded_job() {
    const N: u64 = 200;
    let Some(world) = World::pods_at_work("e2e-redrive", N, "pods").await else {
        return;
    };
    let fixed = world.scratch.path("items-fixed");
    let handler = world.scratch.write(
        "handler.py",
        "import os, sys\n\
         sys.path.insert(0, sys.argv[1])\n\
         from orch_handler import handler, Permanent\n\
         @handler\ndef echo(item):\n    \
         if item['id'] % 25 == 0 and not os.path.exists(sys.argv[2]):\n        \
         raise Permanent('not yet')\n    return item\n",
    );
    let file = world.scratch.write(
        "redrive.yaml",
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: redrive}}
spec:
  input: {{uri: "s3://{bucket}/default/input/items.jsonl"}}
  batch: {{size: 50}}
  handler:
    exec: {{command: [python3, "{handler}", "{python}", "{fixed}"]}}
  tolerance: {{maxFailedItemsPercent: 50}}
  output: {{uri: "s3://{bucket}/default/out-redrive/"}}
  executor: {{kubernetes: {{parallelism: 2, envFromSecrets: [orch-aws]}}}}
"#,
            bucket = world.bucket,
            handler = handler.display(),
            python = repo().join("python").canonicalize().unwrap().display(),
            fixed = fixed.display(),
        ),
    );
    let orch = |args: &[&str]| world.orch(args);
    let submitted = orch(&["submit", file.to_str().unwrap()]);
    assert!(submitted.status.success(), "{}", common::text(&submitted));
    let watched = orch(&["status", "redrive", "--watch"]);
    assert_eq!(
        watched.status.code(),
        Some(0),
        "{}\n{}",
        common::text(&watched),
        world.operators_logs()
    );
    let first = common::read_output(&world.output_dir("redrive").await);
    first.assert_each_item_once(N);
    assert_eq!(first.error_rows, N / 25);

    std::fs::write(&fixed, "").unwrap();
    let retried = orch(&["retry", "redrive", "--items", "--kind", "permanent"]);
    assert!(retried.status.success(), "{}", common::text(&retried));
    let watched = orch(&["status", "redrive", "--watch"]);
    assert_eq!(
        watched.status.code(),
        Some(0),
        "{}\n{}",
        common::text(&watched),
        world.operators_logs()
    );
    let job = world.get("redrive");
    assert!(job["status"]["retried"].is_string(), "{job}");
    let events = world.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"]);
    assert!(
        events.contains(&format!("{} failed item(s) of 4 task(s) run again", N / 25)),
        "{events}"
    );
    std::fs::remove_dir_all(world.scratch.path("downloaded-redrive")).unwrap();
    let last = common::read_output(&world.output_dir("redrive").await);
    last.assert_each_item_once(N);
    assert_eq!(last.error_rows, 0, "{last:?}");
    assert_eq!(last.rows, N);
}

/// Pods evicted mid-task (deleted, as a drain or an eviction does: SIGTERM, then SIGKILL after
/// the grace period), at random moments: each worker checkpoints, its task runs again as a new
/// attempt that costs none of `retry.maxAttempts` (1 here), only evicted tasks run again, and
/// the output is exact. `ORCH_CHAOS_EVICTIONS` sets the evictions (CI: 1); jobs follow one
/// another, each taking up to 3, until that many were made.
#[tokio::test(flavor = "multi_thread")]
async fn an_evicted_pod_redoes_its_task_only() {
    const N: u64 = 100;
    let seed = common::chaos_seed();
    let wanted = common::setting("ORCH_CHAOS_EVICTIONS", 1);
    eprintln!("chaos (eviction): ORCH_CHAOS_SEED={seed} ORCH_CHAOS_EVICTIONS={wanted}");
    let mut rng = common::Rng::new(seed);
    let Some(world) = World::pods_at_work("e2e-evict", N, "pods").await else {
        return;
    };
    let (mut made, mut again, mut jobs) = (0, 0, 0);
    while made < wanted {
        assert!(
            jobs < wanted + 5,
            "{jobs} jobs ended before most evictions could land"
        );
        jobs += 1;
        let name = format!("evicted-{jobs}");
        let (evicted, ran_again) =
            eviction_job(&world, &name, &mut rng, (wanted - made).min(3)).await;
        made += evicted;
        again += ran_again;
    }
    // An eviction may land just after its task committed: not every one makes a task run again.
    assert!(again > 0, "no evicted task ran again");
    common::chaos_summary(
        "eviction",
        seed,
        &format!(
            "{jobs} jobs, {made} pods evicted ({again} tasks ran \
         again)"
        ),
    );
}

/// One job of 4 tasks of 7.5 s on pods, of which `evictions` running ones are deleted; returns
/// how many were (fewer when the job ends first) and how many tasks ran again, once the job is
/// done and checked.
async fn eviction_job(
    world: &World,
    name: &str,
    rng: &mut common::Rng,
    evictions: u64,
) -> (u64, u64) {
    const N: u64 = 100;
    let file = world.scratch.write(
        &format!("{name}.yaml"),
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: {name}}}
spec:
  input: {{uri: "s3://{bucket}/default/input/items.jsonl"}}
  batch: {{size: 25}}
  handler: {{builtin: {{name: sleep, duration: 300ms}}, concurrency: 1}}
  retry: {{maxAttempts: 1}}
  output: {{uri: "s3://{bucket}/default/out-{name}/"}}
  executor: {{kubernetes: {{parallelism: 2, envFromSecrets: [orch-aws]}}}}
"#,
            bucket = world.bucket,
        ),
    );
    let submitted = world.orch(&["submit", file.to_str().unwrap()]);
    assert!(submitted.status.success(), "{}", common::text(&submitted));
    world.wait_for("the job's id", Duration::from_secs(60), |w| {
        w.get(name)["status"]["jobId"].is_string()
    });
    let selector = format!(
        "orch.dev/job={}",
        world.get(name)["status"]["jobId"].as_str().unwrap()
    );
    let started = Instant::now();
    let mut evicted = Vec::new();
    while (evicted.len() as u64) < evictions {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no pod to evict: {}",
            world.operators_logs()
        );
        // A few items into its task, so that the checkpoint has something to resume from.
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
        if world.get(name)["status"]["phase"] == "Succeeded" {
            break;
        }
        let pods: serde_json::Value = serde_json::from_str(
            &world.kubectl_ok(&["get", "pods", "-l", &selector, "-o", "json"]),
        )
        .unwrap();
        let running: Vec<String> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .filter(|p| !evicted.contains(p))
            .collect();
        if running.is_empty() {
            continue;
        }
        let victim = running[rng.below(running.len() as u64) as usize].clone();
        world.kubectl_ok(&["delete", "pod", &victim, "--wait=false"]);
        evicted.push(victim);
    }
    let watched = world.orch(&["status", name, "--watch"]);
    assert_eq!(
        watched.status.code(),
        Some(0),
        "{}\n{}",
        common::text(&watched),
        world.operators_logs()
    );
    let job = world.get(name);
    assert_eq!(job["status"]["tasks"]["succeeded"], 4, "{job}");
    common::read_output(&world.output_dir(name).await).assert_each_item_once(N);
    // Only evicted tasks ran again (finished Indexed Jobs may be gone by now: the task rows
    // count), none of it against retry.maxAttempts.
    let attempts = &job["status"]["attempts"];
    let again = attempts["again"].as_u64().unwrap();
    assert!(again <= evicted.len() as u64, "{attempts}: {evicted:?}");
    assert_eq!(attempts["total"], 4 + again, "{attempts}");
    assert_eq!(attempts["notCounted"], again, "{attempts}");
    (evicted.len() as u64, again)
}

/// The live shares of a bucket in this world's table, by job.
async fn shares(world: &World, key: &str) -> BTreeMap<String, f64> {
    use orch_core::backend::RateLimitStore;
    let sdk = moto::sdk_config().await;
    let store = orch_aws::dynamodb::DynamoStateStore::new(
        config::dynamodb_client(&sdk),
        world.table.clone(),
        Default::default(),
    );
    let mut out = BTreeMap::new();
    if let Some(bucket) = store.get_bucket(key).await.unwrap() {
        for lease in bucket.live(orch_core::model::now_ms()) {
            *out.entry(lease.job.clone()).or_insert(0.0) += lease.rate;
        }
    }
    out
}

/// Two OrchJobs naming a RateLimit that does not exist yet wait (`RateLimitMissing`); once it
/// is applied with kubectl they run on Slurm sharing it: the RateLimit's status
/// names both, the bucket in DynamoDB splits the rate between them, pausing one gives its share
/// to the other, and both end with every item exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_jobs_share_a_rate_limit_and_a_pause_hands_over_its_share() {
    let Some(mut world) = World::new("e2e-rl").await else {
        return;
    };
    // Long enough (80 s at half the rate) that neither job ends before the pause below, however
    // slowly the steps before it go.
    const RL_ITEMS: u64 = 800;
    world.put_input(RL_ITEMS).await;
    world.start_operator("op-a");
    let limit = world.scratch.write(
        "limit.yaml",
        "apiVersion: orch.dev/v1alpha1\nkind: RateLimit\nmetadata: {name: shared}\n\
         spec: {rate: 20/s, burst: 8}\n",
    );
    let extra = "  rateLimit: {name: shared}\n";
    for name in ["rl-a", "rl-b"] {
        // One array task at a time per job, so that both jobs run at once on the test node
        // (two slots), each with one worker of four items in flight.
        let file = world.job_yaml(name, 100, "10ms", extra);
        let yaml = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, yaml.replace("maxRunning: 4", "maxRunning: 1")).unwrap();
        world.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    }
    // Applied before their RateLimit: they wait, saying why.
    world.wait_for("RateLimitMissing", Duration::from_secs(30), |w| {
        w.condition("rl-a", "Progressing") == Some(("False".into(), "RateLimitMissing".into()))
    });
    assert_eq!(world.get("rl-a")["status"]["phase"], "Pending");
    world.kubectl_ok(&["apply", "-f", limit.to_str().unwrap()]);
    world.wait_for("both jobs to run", Duration::from_secs(90), |w| {
        ["rl-a", "rl-b"]
            .iter()
            .all(|n| w.get(n)["status"]["phase"] == "Running")
    });
    let id = |name: &str| {
        world.get(name)["status"]["jobId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (id("rl-a"), id("rl-b"));
    let key = "ns/default/shared";

    // Both hold a share, about half each, never more than the rate in all.
    let started = Instant::now();
    loop {
        let now = shares(&world, key).await;
        let total: f64 = now.values().sum();
        assert!(total <= 20.0 + 1e-6, "{now:?}");
        let half = |j: &str| now.get(j).is_some_and(|r| (8.0..=12.0).contains(r));
        if half(&a) && half(&b) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no even split: {now:?}\n{}",
            world.operators_logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The RateLimit's status says so.
    world.wait_for("the RateLimit status", Duration::from_secs(40), |w| {
        let rl: serde_json::Value =
            serde_json::from_str(&w.kubectl_ok(&["get", "rl", "shared", "-o", "json"])).unwrap();
        let jobs = rl["status"]["jobs"].as_array().cloned().unwrap_or_default();
        rl["status"]["effectiveRate"] == 20.0 && jobs.len() == 2
    });
    let table = world.kubectl_ok(&["get", "rl", "shared"]);
    assert!(
        table.contains("EFFECTIVE") && table.contains("USAGE"),
        "{table}"
    );

    // Pause one: the other gets the whole rate.
    world.kubectl_ok(&[
        "patch",
        "orchjob",
        "rl-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    let started = Instant::now();
    loop {
        let now = shares(&world, key).await;
        if !now.contains_key(&a) && now.get(&b).is_some_and(|r| *r > 18.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the paused job's share did not move: {now:?}\n{}",
            world.operators_logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    world.kubectl_ok(&[
        "patch",
        "orchjob",
        "rl-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    for name in ["rl-a", "rl-b"] {
        let waited = world.kubectl(&[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("orchjob/{name}"),
            "--timeout=180s",
        ]);
        assert!(
            waited.status.success(),
            "{}\n{}",
            common::text(&waited),
            world.operators_logs()
        );
        common::read_output(&world.output_dir(name).await).assert_each_item_once(RL_ITEMS);
    }
}

/// A tenant who may create OrchJobs tries to take what only the cluster admin chooses: each
/// attempt ends `Failed`/`PolicyDenied` naming the field and the rule, with an Event; the
/// tenant's own "slurmrestd" receives nothing, and no driver runs. (The emulator runs no CEL:
/// this is the operator's own check, which a real API server's CEL rules precede.)
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_tenants_choices_are_refused_policy_denied() {
    let Some(mut world) = World::with_pods("e2e-hostile").await else {
        return;
    };
    world.put_input(10).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    world.start_operator("op-a");
    let b = world.bucket.clone();
    let input = format!("input: {{uri: \"s3://{b}/default/input/items.jsonl\"}}");
    let cases = [
        (
            "swap",
            "default",
            format!(
                "{input}\n  executor: {{slurm: {{transport: rest, url: \"https://127.0.0.1:{port}\", \
                 tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token, user: root}}}}"
            ),
            "spec.executor.slurm.url",
        ),
        (
            "local-file",
            "default",
            "input: {uri: \"file:///var/run/secrets/kubernetes.io/serviceaccount/token\", format: csv}\n  \
             executor: {slurm: {}}"
                .to_string(),
            "spec.input.uri",
        ),
        (
            "partition",
            "default",
            format!("{input}\n  executor: {{slurm: {{}}}}\n  resources: {{partition: debug}}"),
            "spec.resources.partition",
        ),
        (
            "secret",
            "default",
            format!("{input}\n  executor: {{kubernetes: {{envFromSecrets: [operator-creds]}}}}"),
            "spec.executor.kubernetes.envFromSecrets",
        ),
        (
            "image",
            "default",
            format!("{input}\n  executor: {{kubernetes: {{image: \"evil.example/miner:1\"}}}}"),
            "spec.executor.kubernetes.image",
        ),
        (
            "prefix",
            "default",
            format!(
                "{input}\n  executor: {{slurm: {{}}}}\n  output: {{uri: \"s3://{b}/team-b/out/\"}}"
            ),
            "spec.output.uri",
        ),
        ("local", "default", input.clone(), "spec.executor.local"),
        (
            "stray",
            "team-x",
            format!("{input}\n  executor: {{slurm: {{}}}}"),
            "metadata.namespace",
        ),
    ];
    world.kubectl_ok(&["create", "namespace", "team-x"]);
    for (name, namespace, spec, _) in &cases {
        let file = world.scratch.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
                 spec:\n  {spec}\n  handler: {{builtin: {{name: identity}}}}\n"
            ),
        );
        world.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    }
    for (name, namespace, _, field) in &cases {
        let get = |w: &World| -> serde_json::Value {
            let out = w.kubectl_ok(&["get", "orchjob", name, "-n", namespace, "-o", "json"]);
            serde_json::from_str(&out).unwrap()
        };
        let failed = |job: &serde_json::Value| {
            job["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Failed").cloned())
        };
        world.wait_for(
            &format!("{name} to be refused"),
            Duration::from_secs(30),
            |w| failed(&get(w)).is_some(),
        );
        let condition = failed(&get(&world)).unwrap();
        assert_eq!(condition["reason"], "PolicyDenied", "{name}: {condition}");
        let message = condition["message"].as_str().unwrap();
        assert!(message.contains(&format!("{field}: ")), "{name}: {message}");
        assert_eq!(get(&world)["status"]["phase"], "Failed");
        let events =
            world.kubectl_ok(&["get", "events.events.k8s.io", "-n", namespace, "-o", "json"]);
        let events: serde_json::Value = serde_json::from_str(&events).unwrap();
        assert!(
            events["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| { e["regarding"]["name"] == *name && e["reason"] == "PolicyDenied" }),
            "{name}: no PolicyDenied Event"
        );
    }
    // Each denial is in the audit log of the namespace's storage (the operator's own for the
    // namespace no policy names), with the policy that refused it.
    let store = orch_aws::dynamodb::DynamoStateStore::new(
        aws_sdk_dynamodb::Client::new(&moto::sdk_config().await),
        &world.table,
        Default::default(),
    );
    for (name, namespace, _, _) in &cases {
        let entries = orch_core::backend::AuditLog::entries(&store, namespace)
            .await
            .unwrap();
        let entry = entries
            .iter()
            .find(|e| e.name == *name)
            .unwrap_or_else(|| panic!("{name}: not audited: {entries:?}"));
        assert_eq!(entry.action, "PolicyDenied");
        let policy = if *namespace == "default" { "e2e" } else { "" };
        assert_eq!(entry.policy, policy, "{entry:?}");
    }
    // Nothing connected to the tenant's endpoint; no driver started; the operator's log
    // says why, without the token file's content.
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    let log = world.operator_log("op-a");
    assert!(log.contains("PolicyDenied"), "{log}");
    assert!(!log.contains("starting the job's driver"), "{log}");
}

/// One tenant's input decompresses to 2 GiB while its policy allows 64 MiB: its driver stops
/// decompressing at the limit, and the job alone ends `Failed` with the limit named (never
/// the input's content), its stored partial input removed. Meanwhile another tenant's job
/// completes, and the operator that planned both stays up and ready.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_input_fails_alone_while_another_tenants_job_completes() {
    let Some(mut world) = World::with_pods("e2e-budget").await else {
        return;
    };
    const N: u64 = 40;
    world.put_input(N).await;
    // 2 GiB of JSON lines as 128 gzip members of the same 16 MiB: built in a moment, and a
    // decoder cannot tell it from one stream.
    let line = b"{\"id\": 0, \"text\": \"the same line again\"}\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(16 << 20).collect();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &chunk).unwrap();
    let member = encoder.finish().unwrap();
    let bomb: Vec<u8> = member.repeat(128);
    let sdk = moto::sdk_config().await;
    config::s3_client(&sdk, &AwsSettings::default())
        .put_object()
        .bucket(&world.bucket)
        .key("team-bomb/input/items.jsonl.gz")
        .body(bomb.into())
        .send()
        .await
        .unwrap();
    world.kubectl_ok(&["create", "namespace", "team-bomb"]);
    let policy = world.scratch.write(
        "bomb-policy.yaml",
        "apiVersion: orch.dev/v1alpha1\nkind: OrchPolicy\nmetadata: {name: bomb}\n\
         spec:\n  namespaces: [team-bomb]\n  kubernetes: {secrets: [orch-aws]}\n  \
         limits: {maxDecompressedBytes: 64Mi}\n",
    );
    world.kubectl_ok(&["apply", "-f", policy.to_str().unwrap()]);
    world.create_secret(
        "orch-aws",
        &[
            ("AWS_ACCESS_KEY_ID", "pods"),
            ("AWS_SECRET_ACCESS_KEY", "pods"),
        ],
    );
    let port = world.start_operator("op-a");
    let b = world.bucket.clone();
    let job = |name: &str, namespace: &str, input: &str, output: &str| {
        world.scratch.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\n\
                 metadata: {{name: {name}, namespace: {namespace}}}\n\
                 spec:\n  input: {{uri: \"{input}\"}}\n  batch: {{size: 10}}\n  \
                 handler: {{builtin: {{name: identity}}}}\n  output: {{uri: \"{output}\"}}\n  \
                 executor: {{kubernetes: {{parallelism: 2, envFromSecrets: [orch-aws]}}}}\n"
            ),
        )
    };
    let bomb = job(
        "bomb",
        "team-bomb",
        &format!("s3://{b}/team-bomb/input/items.jsonl.gz"),
        &format!("s3://{b}/team-bomb/out/"),
    );
    let fine = job(
        "fine",
        "default",
        &format!("s3://{b}/default/input/items.jsonl"),
        &format!("s3://{b}/default/out-fine/"),
    );
    world.kubectl_ok(&["apply", "-f", bomb.to_str().unwrap()]);
    world.kubectl_ok(&["apply", "-f", fine.to_str().unwrap()]);

    let phase = |w: &World, name: &str, namespace: &str| -> serde_json::Value {
        let out = w.kubectl_ok(&["get", "orchjob", name, "-n", namespace, "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone()
    };
    world.wait_for("the oversized job to fail", Duration::from_secs(120), |w| {
        phase(w, "bomb", "team-bomb")["phase"] == "Failed"
    });
    world.wait_for(
        "the other tenant's job to succeed",
        Duration::from_secs(120),
        |w| phase(w, "fine", "default")["phase"] == "Succeeded",
    );
    let status = phase(&world, "bomb", "team-bomb");
    let failed = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap_or_else(|| panic!("no Failed condition: {status}"));
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains("the input decompresses to more than 64 MiB"),
        "{failed}"
    );
    assert!(!message.contains("the same line again"), "{failed}");
    assert_eq!(
        world.keys_under("orch/team-bomb/").await,
        0,
        "the partial input it stored is removed"
    );
    common::read_output(&world.output_dir("fine").await).assert_each_item_once(N);
    // The operator that planned both is the one still serving.
    assert!(world.operators[0].1.try_wait().unwrap().is_none());
    assert_eq!(http_get(port, "/readyz").map(|(code, _)| code), Some(200));
    // Its /metrics has the series of the job it drove, as `orch run --metrics-addr` serves
    // them, agreeing with the OrchJob's status.
    let fine = phase(&world, "fine", "default");
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let series = format!(
        "orch_job_tasks{{orch_job=\"{}\",stage=\"work\",state=\"succeeded\"}} {}",
        fine["jobId"].as_str().unwrap(),
        fine["tasks"]["succeeded"]
    );
    assert!(metrics.contains(&series), "{series} not in {metrics}");
    let log = world.operator_log("op-a");
    assert!(!log.contains("the same line again"), "{}", tail(&log, 40));
}

/// What a look at this machine's processes found: those whose command line holds one of the
/// secrets, or whose environment does among the workers of the job `tasks_of` (their
/// environment is what Slurm gave them); and how many such workers it saw.
fn processes_holding(secrets: &[&str], tasks_of: &str) -> (Vec<String>, usize) {
    let mut found = Vec::new();
    let mut tasks = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (found, tasks);
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        for secret in secrets {
            if cmdline.contains(secret) {
                found.push(format!("{pid} argv: {cmdline}"));
            }
        }
        // Pods get their Secrets as environment variables by design; Slurm tasks get none.
        if cmdline.contains("orch-worker") && cmdline.contains(tasks_of) {
            tasks += 1;
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let environ = String::from_utf8_lossy(&environ);
            for secret in secrets {
                if environ.contains(secret) {
                    found.push(format!("{pid} environment of: {cmdline}"));
                }
            }
        }
    }
    (found, tasks)
}

/// Every file under `dir` (recursively) whose bytes hold one of `secrets`.
fn files_holding(dir: &Path, secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, secrets));
        } else if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            found.extend(
                secrets
                    .iter()
                    .filter(|s| text.contains(*s))
                    .map(|_| path.display().to_string()),
            );
        }
    }
    found
}

/// The secrets of a whole run — the AWS secret key of the operator, of the Slurm tasks (a
/// profile file) and of the worker pods (a Secret), the slurmrestd token (a Secret the policy
/// names; the operator gets no token of its own), and a handler's API key (a Secret named in
/// `exec.env`) — reach what needs them: jobs on Slurm over slurmrestd and in pods both
/// succeed, and the handler sees its key. None of them appears in any status, Event or other
/// object, operator or task log, stored object (job.json, results, logs), process argument,
/// Slurm task environment, or Slurm's saved job state. (Pods get their Secrets as
/// environment variables: that is how Kubernetes hands them over.)
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_of_the_run_leaks_anywhere() {
    let Some(mut slurm) = common::slurm_env() else {
        return;
    };
    let token = slurm.remove("SLURM_JWT").expect("the cluster's token");
    let url = slurm.remove("SLURMRESTD_URL").expect("slurmrestd");
    let Some(mut world) = World::build("e2e-canary", slurm, true).await else {
        return;
    };
    const N: u64 = 40;
    let api_key = format!("{}-api", world.canary);
    let canary = world.canary.clone();
    let secrets = [canary.as_str(), token.as_str(), api_key.as_str()];
    world.put_input(N).await;
    for (name, pairs) in [
        ("slurm-jwt", vec![("token", token.as_str())]),
        (
            "orch-aws",
            vec![
                ("AWS_ACCESS_KEY_ID", "pods"),
                ("AWS_SECRET_ACCESS_KEY", canary.as_str()),
            ],
        ),
        ("handler-creds", vec![("API_KEY", api_key.as_str())]),
    ] {
        world.create_secret(name, &pairs);
    }
    let policy = world.scratch.write(
        "canary-policy.yaml",
        &format!(
            "apiVersion: orch.dev/v1alpha1\nkind: OrchPolicy\nmetadata: {{name: e2e}}\n\
             spec:\n  namespaces: [default]\n  \
             slurm: {{transport: rest, url: \"{url}\", tokenSecret: {{name: slurm-jwt, key: token}}, user: root}}\n  \
             kubernetes: {{secrets: [orch-aws, handler-creds]}}\n"
        ),
    );
    world.kubectl_ok(&["apply", "-f", policy.to_str().unwrap()]);
    world.start_operator_with("op-a", &["--slurm-allow-http-loopback"]);

    let handler = world.scratch.write(
        "canary_handler.py",
        "import os, sys\n\
         sys.path.insert(0, sys.argv[1])\n\
         from orch_handler import handler\n\
         @handler\ndef check(item):\n    \
         return {\"id\": item[\"id\"], \"has_key\": os.environ.get(\"API_KEY\", \"\").endswith(\"-api\")}\n",
    );
    let b = world.bucket.clone();
    let rest = world.scratch.write(
        "on-slurm.yaml",
        &format!(
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: on-slurm}}\n\
             spec:\n  input: {{uri: \"s3://{b}/default/input/items.jsonl\"}}\n  batch: {{size: 10}}\n  \
             handler: {{builtin: {{name: sleep, duration: 200ms}}}}\n  output: {{uri: \"s3://{b}/default/out-on-slurm/\"}}\n  \
             resources: {{memory: 200Mi, time: 10m}}\n  executor: {{slurm: {{maxRunning: 4}}}}\n"
        ),
    );
    let pods = world.scratch.write(
        "in-pods.yaml",
        &format!(
            r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: in-pods}}
spec:
  input: {{uri: "s3://{b}/default/input/items.jsonl"}}
  batch: {{size: 10}}
  handler:
    exec:
      command: [python3, "{handler}", "{python}"]
      env:
        API_KEY: {{valueFrom: {{secretKeyRef: {{name: handler-creds, key: API_KEY}}}}}}
  output: {{uri: "s3://{b}/default/out-in-pods/"}}
  executor: {{kubernetes: {{parallelism: 2, envFromSecrets: [orch-aws]}}}}
"#,
            handler = handler.display(),
            python = repo().join("python").canonicalize().unwrap().display(),
        ),
    );
    world.kubectl_ok(&["apply", "-f", rest.to_str().unwrap()]);
    world.kubectl_ok(&["apply", "-f", pods.to_str().unwrap()]);
    // While they run: no process of this machine holds a secret in its arguments, and no task
    // in its environment. (The Slurm tasks sleep 200 ms per item, 2 s each, so that a look
    // every few hundred milliseconds sees them.)
    // Nor does Slurm's saved state of the jobs while they are there: what each array was
    // submitted with, its environment and script (removed when the job ends).
    let statesave = Path::new(&world.slurm["ORCH_SLURM_DIR"]).join("spool/ctld");
    let mut seen = Vec::new();
    let mut saved_environments = 0;
    let mut slurm_tasks = 0;
    world.wait_for("both jobs to succeed", Duration::from_secs(240), |w| {
        let (found, tasks) = processes_holding(&secrets, "--job on-slurm-");
        seen.extend(found);
        slurm_tasks += tasks;
        seen.extend(files_holding(&statesave, &secrets));
        saved_environments += files_holding(&statesave, &[w.table.as_str()]).len();
        ["on-slurm", "in-pods"].iter().all(|name| {
            let phase = w.get(name)["status"]["phase"].clone();
            assert_ne!(phase, "Failed", "{name}: {}", w.get(name));
            phase == "Succeeded"
        })
    });
    assert!(
        seen.is_empty(),
        "secrets in processes or Slurm's state:\n{}",
        seen.join("\n")
    );
    assert!(slurm_tasks > 0, "no Slurm task was seen running");
    assert!(
        saved_environments > 0,
        "no job environment seen in {}",
        statesave.display()
    );
    common::read_output(&world.output_dir("on-slurm").await).assert_each_item_once(N);
    let dir = world.output_dir("in-pods").await;
    common::read_output(&dir).assert_each_item_once(N);
    // The handler got its key (by reference), and said so without returning it.
    let has_key = Command::new("python3")
        .arg("-c")
        .arg(
            "import glob, sys, pyarrow.parquet as pq\n\
             parts = sorted(glob.glob(sys.argv[1] + '/part-*.parquet'))\n\
             keys = [k for p in parts for k in pq.read_table(p).column('has_key').to_pylist()]\n\
             print(len(keys) > 0 and all(keys))",
        )
        .arg(&dir)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&has_key.stdout).trim().to_string();
    assert_eq!(answer, "True", "{}", common::text(&has_key));
    // The jobs ran on slurmrestd with the policy's token: the arrays are in Slurm.
    let id = world.get("on-slurm")["status"]["jobId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!world.sacct(&id).is_empty(), "no array of {id} in sacct");

    // Objects: every kind the operator writes or reads, but the Secrets themselves.
    let mut leaks = Vec::new();
    for kind in [
        "orchjobs",
        "taskgroups",
        "orchpolicies",
        "events",
        "events.events.k8s.io",
        "jobs",
        "pods",
        "configmaps",
        "leases",
    ] {
        let objects = world.kubectl_ok(&["get", kind, "-A", "-o", "json"]);
        leaks.extend(
            secrets
                .iter()
                .filter(|s| objects.contains(*s))
                .map(|_| format!("kubectl get {kind}")),
        );
    }
    // Logs: the operator's, the pods', the Slurm tasks' (in the operator's scratch directory).
    let text = world.operator_log("op-a");
    leaks.extend(
        secrets
            .iter()
            .filter(|s| text.contains(*s))
            .map(|_| "op-a.log".to_string()),
    );
    for dir in ["pod-logs", "op-a"] {
        leaks.extend(files_holding(&world.scratch.path(dir), &secrets));
    }
    // Stored objects: job.json, batches, results, markers, logs, of both jobs.
    let sdk = moto::sdk_config().await;
    let s3 = config::s3_client(&sdk, &AwsSettings::default());
    let mut pages = s3
        .list_objects_v2()
        .bucket(&world.bucket)
        .into_paginator()
        .send();
    let mut manifests = 0;
    while let Some(page) = pages.next().await {
        for object in page.unwrap().contents() {
            let key = object.key().unwrap();
            let body = moto::get_object(&s3, &world.bucket, key)
                .await
                .expect("a listed object");
            let text = String::from_utf8_lossy(&body);
            manifests += usize::from(key.ends_with("/job.json"));
            leaks.extend(
                secrets
                    .iter()
                    .filter(|s| text.contains(*s))
                    .map(|_| format!("s3://{}/{key}", world.bucket)),
            );
        }
    }
    assert_eq!(manifests, 2, "both jobs' job.json were looked at");
    leaks.extend(files_holding(&statesave, &secrets));
    assert!(leaks.is_empty(), "secrets found in:\n{}", leaks.join("\n"));
}
