//! Cluster mode end to end: the real `orch` binary (and `kubectl orch`) against the Kubernetes
//! API emulator (tests/kube-emulator; no API server can be installed here, tests/README.md), through
//! a kubeconfig, as a user runs it.
//!
//! No operator runs: jobs never progress by themselves. The test plays the operator where a
//! command waits for one: it writes statuses through the status subresource and removes the
//! finalizer, with its own kube client, and checks what `orch` did with that client too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use orch_crd::OrchJob;
use serde_json::{Value, json};

use orch_testkit::kube_emulator::{KubeEmulator, Options};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The emulator with the OrchJob CRD installed, and a scratch directory; the emulator stops
/// when dropped.
struct Cluster {
    _emulator: KubeEmulator,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    client: kube::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let emulator = KubeEmulator::start(&kubeconfig, Options::default());
        let client = emulator.client().await;
        let cluster = Cluster {
            _emulator: emulator,
            dir,
            kubeconfig,
            client,
        };
        cluster.install_crd().await;
        cluster
    }

    /// The checked-in CRD, as `kubectl apply -f crds/orch.dev_orchjobs.yaml` would create it.
    async fn install_crd(&self) {
        let text = std::fs::read_to_string(repo().join("crds/orch.dev_orchjobs.yaml")).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        Api::<CustomResourceDefinition>::all(self.client.clone())
            .create(&PostParams::default(), &crd)
            .await
            .unwrap();
    }

    fn jobs(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<OrchJob>(&()),
        )
    }

    async fn get(&self, name: &str) -> Option<Value> {
        self.jobs("default")
            .get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    /// What the operator does: writes the status through the status subresource.
    async fn write_status(&self, name: &str, status: Value) {
        self.jobs("default")
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    async fn merge(&self, name: &str, patch: Value) {
        self.jobs("default")
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A valid job file named `name` in the scratch directory.
    fn job_file(&self, name: &str, extra_spec: &str) -> PathBuf {
        let path = self.path(&format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: {name}}}\n\
                 spec:\n  input: {{uri: \"s3://data/{name}.jsonl\"}}\n  batch: {{size: 250}}\n  \
                 handler: {{builtin: {{name: identity}}}}\n  output: {{uri: \"s3://data/out/\"}}\n\
                 {extra_spec}"
            ),
        )
        .unwrap();
        path
    }

    fn orch_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_orch"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("ORCH_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        c
    }

    /// Runs `orch` to its end (stdin is not a terminal).
    fn orch(&self, args: &[&str]) -> Output {
        let out = self.orch_cmd(args).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "orch {args:?} panicked: {}",
            text(&out)
        );
        out
    }

    /// Runs `orch`, expecting exit `code`; returns stdout.
    fn orch_exit(&self, code: i32, args: &[&str]) -> String {
        let out = self.orch(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "orch {args:?}: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Submits a fresh job file named `name`.
    fn submitted(&self, name: &str) {
        let file = self.job_file(name, "");
        self.orch_exit(0, &["submit", file.to_str().unwrap()]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running `orch` whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `what`.
    fn wait_line(&mut self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l.contains(what)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {what:?} in {:?}", self.seen),
            }
        }
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; returns the code, all stdout and stderr.
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!(
                    "orch did not end in {timeout:?}; stdout so far: {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).ok();
        }
        (status.code(), self.seen.join("\n"), err)
    }
}

/// Every field of `expected` is in `actual` with the same value (the API server adds the
/// schema's defaults, e.g. zero task counts).
fn assert_contains(actual: &Value, expected: &Value, at: &str) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (k, v) in e {
                let child = a.get(k).unwrap_or(&Value::Null);
                assert_contains(child, v, &format!("{at}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{at}: {actual} vs {expected}");
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_contains(a, e, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(actual, expected, "{at}"),
    }
}

fn succeeded_status() -> Value {
    json!({
        "phase": "Succeeded",
        "observedGeneration": 1,
        "jobId": "done-job-1a2b3c",
        "tasks": {"total": 8, "succeeded": 8},
        "items": {"total": 2000, "ok": 1990, "failed": 10, "retrying": 0},
        "startTime": "2025-06-01T10:00:00Z",
        "completionTime": "2025-06-01T10:12:00Z",
        "output": "s3://data/out/done-job/",
        "conditions": [
            {"type": "Progressing", "status": "False", "reason": "Completed",
             "message": "all tasks done", "lastTransitionTime": "2025-06-01T10:12:00Z"},
            {"type": "Complete", "status": "True", "reason": "Succeeded",
             "message": "1990 items ok, 10 failed", "lastTransitionTime": "2025-06-01T10:12:00Z"}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_creates_then_reapplies_idempotently_and_dry_run_creates_nothing() {
    let c = Cluster::start().await;
    let file = repo().join("examples/reviews-sentiment/job.yaml");
    let file = file.to_str().unwrap();

    // Server dry run: the object as it would be stored, and nothing stored.
    let out = c.orch_exit(0, &["submit", file, "--dry-run"]);
    assert!(
        out.starts_with("# orchjob.orch.dev/reviews-sentiment created (server dry run)\n"),
        "{out}"
    );
    let shown: Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(shown["kind"], "OrchJob");
    assert_eq!(shown["spec"]["batch"]["size"], 250);
    assert!(shown["metadata"].get("managedFields").is_none(), "{out}");
    assert_eq!(c.get("reviews-sentiment").await, None);

    let out = c.orch(&["submit", file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "orchjob.orch.dev/reviews-sentiment created\n"
    );
    assert!(
        stderr(&out).contains("orch status reviews-sentiment --watch"),
        "{}",
        text(&out)
    );
    // Relative paths are sent as written, with a warning.
    assert!(
        stderr(&out).contains("spec.input.uri `reviews.jsonl` is relative"),
        "{}",
        text(&out)
    );
    let job = c.get("reviews-sentiment").await.expect("created");
    assert_eq!(job["spec"]["input"]["uri"], "reviews.jsonl");
    assert_eq!(job["spec"]["batch"]["size"], 250);
    assert_eq!(job["spec"]["tolerance"]["maxFailedItemsPercent"], 2);
    assert_eq!(job["spec"]["handler"]["exec"]["command"][0], "python3");
    let managers: Vec<(&str, &str)> = job["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(managers, [("orch", "Apply")]);

    // The same file again changes nothing.
    let out = c.orch_exit(0, &["submit", file]);
    assert_eq!(out, "orchjob.orch.dev/reviews-sentiment unchanged\n");
    let again = c.get("reviews-sentiment").await.unwrap();
    assert_eq!(
        again["metadata"]["resourceVersion"],
        job["metadata"]["resourceVersion"]
    );
    assert_eq!(again["metadata"]["generation"], 1);

    // An edited file updates the object; a dry run of the edit does not.
    let edited = c.path("edited.yaml");
    let text_of = std::fs::read_to_string(file)
        .unwrap()
        .replace("batch: {size: 250}", "batch: {size: 500}");
    std::fs::write(&edited, text_of).unwrap();
    let edited = edited.to_str().unwrap();
    let out = c.orch_exit(0, &["submit", edited, "--dry-run"]);
    assert!(out.contains("configured (server dry run)"), "{out}");
    assert_eq!(
        c.get("reviews-sentiment").await.unwrap()["spec"]["batch"]["size"],
        250
    );
    let out = c.orch_exit(0, &["submit", edited]);
    assert_eq!(out, "orchjob.orch.dev/reviews-sentiment configured\n");
    let job = c.get("reviews-sentiment").await.unwrap();
    assert_eq!(job["spec"]["batch"]["size"], 500);
    assert_eq!(job["metadata"]["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_merges_extends_and_honours_the_namespace() {
    let c = Cluster::start().await;
    let file = repo().join("examples/identity-bench/job.yaml");
    let out = c.orch(&["submit", file.to_str().unwrap(), "-n", "kube-public"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains("orch status identity-bench --watch -n kube-public"),
        "{}",
        text(&out)
    );
    let job = c
        .jobs("kube-public")
        .get("identity-bench")
        .await
        .map(|o| serde_json::to_value(o).unwrap())
        .unwrap();
    // From the job file, merged over examples/base.yaml.
    assert_eq!(job["spec"]["batch"]["size"], 50000);
    assert_eq!(job["spec"]["batch"]["maxBytes"], "64Mi");
    assert_eq!(job["spec"]["retry"]["maxAttempts"], 3);
    assert_eq!(job["spec"]["resources"]["time"], "2h");
    assert!(job["spec"]["resources"].get("partition").is_none(), "{job}");
    assert_eq!(job["metadata"]["labels"]["team"], "data-platform");
    assert_eq!(c.get("identity-bench").await, None);

    // The file's namespace is used; a different -n is refused.
    let file = c.job_file("placed", "");
    let text_of = std::fs::read_to_string(&file).unwrap().replace(
        "metadata: {name: placed}",
        "metadata: {name: placed, namespace: kube-system}",
    );
    std::fs::write(&file, text_of).unwrap();
    let f = file.to_str().unwrap();
    c.orch_exit(0, &["submit", f]);
    assert!(
        c.jobs("kube-system")
            .get_opt("placed")
            .await
            .unwrap()
            .is_some()
    );
    let out = c.orch(&["submit", f, "-n", "default"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("-n says `default`"), "{}", text(&out));

    // A namespace that does not exist.
    let out = c.orch(&[
        "submit",
        c.job_file("lost", "").to_str().unwrap(),
        "-n",
        "nowhere",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(stderr(&out), "error: namespace \"nowhere\" not found\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_job_file_exits_2_with_the_field_path_and_creates_nothing() {
    let c = Cluster::start().await;
    let file = c.job_file("bad", "  retry: {maxAttempts: 0}\n");
    let text_of = std::fs::read_to_string(&file)
        .unwrap()
        .replace("batch: {size: 250}", "batch: {size: 0}");
    std::fs::write(&file, text_of).unwrap();
    for extra in [&[][..], &["--dry-run"]] {
        let mut args = vec!["submit", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = c.orch(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = stderr(&out);
        assert!(err.contains("spec.batch.size"), "{err}");
        assert!(err.contains("spec.retry.maxAttempts"), "{err}");
    }
    assert!(
        c.jobs("default")
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// A Slurm job that leaves slurmrestd's URL to the operator: `orch submit` accepts it, as the
/// operator does (it fills in its `--slurm-url`), notes that, and sends it as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_leaves_a_slurm_url_to_the_operator() {
    let c = Cluster::start().await;
    let file = c.job_file("on-slurm", "  executor: {slurm: {transport: rest}}\n");
    let out = c.orch(&["submit", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains("note: spec.executor.slurm.url: not set"),
        "{}",
        text(&out)
    );
    let job = c.get("on-slurm").await.expect("created");
    assert_eq!(job["spec"]["executor"]["slurm"]["transport"], "rest");
    assert!(
        job["spec"]["executor"]["slurm"].get("url").is_none(),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_with_another_manager_is_refused_unless_forced() {
    let c = Cluster::start().await;
    let file = c.job_file("shared", "");
    let body = json!({
        "apiVersion": "orch.dev/v1alpha1", "kind": "OrchJob",
        "metadata": {"name": "shared", "namespace": "default"},
        "spec": {"input": {"uri": "s3://data/shared.jsonl"}, "batch": {"size": 100},
                 "handler": {"builtin": {"name": "identity"}}}
    });
    c.jobs("default")
        .patch(
            "shared",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    let f = file.to_str().unwrap();
    let out = c.orch(&["submit", f]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).starts_with("error: conflict: ") && stderr(&out).contains("--force-conflicts"),
        "{}",
        text(&out)
    );
    assert_eq!(c.get("shared").await.unwrap()["spec"]["batch"]["size"], 100);
    let out = c.orch_exit(0, &["submit", f, "--force-conflicts"]);
    assert_eq!(out, "orchjob.orch.dev/shared configured\n");
    assert_eq!(c.get("shared").await.unwrap()["spec"]["batch"]["size"], 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_flip_spec_suspend() {
    let c = Cluster::start().await;
    c.submitted("flip");
    assert_eq!(
        c.orch_exit(0, &["pause", "flip"]),
        "orchjob.orch.dev/flip paused (spec.suspend: true)\n"
    );
    assert_eq!(c.get("flip").await.unwrap()["spec"]["suspend"], true);
    assert_eq!(
        c.orch_exit(0, &["resume", "orchjob/flip"]),
        "orchjob.orch.dev/flip resumed (spec.suspend: false)\n"
    );
    let job = c.get("flip").await.unwrap();
    assert_eq!(job["spec"]["suspend"], false);
    // The rest of the spec is untouched.
    assert_eq!(job["spec"]["batch"]["size"], 250);
    // On a finished job the request is made, with a note that it changes nothing.
    c.write_status("flip", json!({"phase": "Succeeded"})).await;
    let out = c.orch(&["pause", "oj/flip"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains("already ended (Succeeded)"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_sets_a_new_value_each_time_and_cancel_sets_true() {
    let c = Cluster::start().await;
    c.submitted("again");
    let mut values = Vec::new();
    for _ in 0..2 {
        let out = c.orch_exit(0, &["retry", "again"]);
        assert!(
            out.starts_with("orchjob.orch.dev/again retry requested (orch.dev/retry="),
            "{out}"
        );
        let job = c.get("again").await.unwrap();
        let value = job["metadata"]["annotations"]["orch.dev/retry"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(out.contains(&value), "{out} / {value}");
        // RFC 3339 with nanoseconds.
        let fraction = value
            .split('.')
            .nth(1)
            .and_then(|f| f.strip_suffix('Z'))
            .unwrap_or_default();
        assert_eq!(fraction.len(), 9, "{value}");
        assert!(
            value.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
            "{value}"
        );
        values.push(value);
    }
    assert_ne!(values[0], values[1]);
    assert!(
        job_annotation(&c, "again", "orch.dev/retry-items")
            .await
            .is_null()
    );

    // --items asks for failed items only, with the kinds chosen; a plain retry again clears it.
    let out = c.orch_exit(
        0,
        &[
            "retry",
            "again",
            "--items",
            "--kind",
            "transient",
            "--kind",
            "schema",
        ],
    );
    assert!(
        out.contains("orch.dev/retry-items=transient,schema"),
        "{out}"
    );
    assert_eq!(
        job_annotation(&c, "again", "orch.dev/retry-items").await,
        "transient,schema"
    );
    c.orch_exit(0, &["retry", "again", "--items"]);
    assert_eq!(
        job_annotation(&c, "again", "orch.dev/retry-items").await,
        "*"
    );
    c.orch_exit(0, &["retry", "again"]);
    assert!(
        job_annotation(&c, "again", "orch.dev/retry-items")
            .await
            .is_null()
    );
    let refused = c.orch(&["retry", "again", "--items", "--kind", "bogus"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        stderr(&refused).contains("--kind bogus: not an error kind"),
        "{}",
        text(&refused)
    );
    let values = [
        values[0].clone(),
        job_annotation(&c, "again", "orch.dev/retry")
            .await
            .as_str()
            .unwrap()
            .to_string(),
    ];

    assert_eq!(
        c.orch_exit(0, &["cancel", "again"]),
        "orchjob.orch.dev/again cancel requested (orch.dev/cancel=true)\n"
    );
    let job = c.get("again").await.unwrap();
    assert_eq!(job["metadata"]["annotations"]["orch.dev/cancel"], "true");
    assert_eq!(job["metadata"]["annotations"]["orch.dev/retry"], values[1]);
    // Annotations do not change the spec's generation.
    assert_eq!(job["metadata"]["generation"], 1);
}

async fn job_annotation(c: &Cluster, name: &str, key: &str) -> Value {
    c.get(name).await.unwrap()["metadata"]["annotations"][key].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_the_operator_wrote() {
    let c = Cluster::start().await;
    c.submitted("done-job");
    // Before any operator: a job without status.
    let out = c.orch_exit(0, &["status", "done-job", "--cluster"]);
    assert!(out.contains("Phase:       - (no status yet"), "{out}");

    c.write_status("done-job", succeeded_status()).await;
    let out = c.orch_exit(0, &["status", "done-job", "--cluster", "-o", "json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_contains(&shown["status"], &succeeded_status(), "status");
    assert_eq!(shown["metadata"]["name"], "done-job");
    assert!(shown["metadata"].get("managedFields").is_none());

    let out = c.orch_exit(0, &["status", "oj/done-job", "-o", "yaml"]);
    let shown: Value = serde_yaml::from_str(&out).unwrap();
    assert_contains(&shown["status"], &succeeded_status(), "status");

    let out = c.orch_exit(0, &["status", "orchjob/done-job"]);
    for line in [
        "Name:        done-job\n",
        "Namespace:   default\n",
        "Phase:       Succeeded\n",
        "Tasks:       8/8 done\n",
        "Items:       1990 ok, 10 failed, 0 retrying (of 2000)\n",
        "Started:     2025-06-01T10:00:00Z (",
        ", ran 12m\n",
        "Output:      s3://data/out/done-job/\n",
        "Job id:      done-job-1a2b3c\n",
        "  Complete     True    Succeeded",
        "1990 items ok, 10 failed\n",
    ] {
        assert!(out.contains(line), "{line:?} not in\n{out}");
    }

    // The namespace's list, and an empty namespace.
    c.submitted("other-job");
    let out = c.orch_exit(0, &["status", "--cluster"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(
        lines[1].starts_with("done-job ") && lines[1].contains("Succeeded"),
        "{out}"
    );
    assert!(lines[2].starts_with("other-job "), "{out}");
    let out = c.orch_exit(0, &["status", "-n", "kube-public"]);
    assert_eq!(out, "no OrchJobs in namespace kube-public\n");

    // Watching a job that has ended returns at once, with its exit code.
    let out = c.orch_exit(0, &["status", "done-job", "--watch"]);
    assert!(out.contains("Phase:       Succeeded"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_the_job_to_its_end() {
    let c = Cluster::start().await;
    for (name, end, code) in [("fails", "Failed", 1), ("works", "Succeeded", 0)] {
        c.submitted(name);
        c.write_status(
            name,
            json!({"phase": "Running", "tasks": {"total": 4, "running": 4},
                   "items": {"total": 40}}),
        )
        .await;
        let mut watch = Running::start(c.orch_cmd(&["status", name, "--watch"]));
        watch.wait_line(
            "Running  tasks 0/4 done (4 running)",
            Duration::from_secs(30),
        );
        c.write_status(
            name,
            json!({"tasks": {"running": 2, "succeeded": 2}, "items": {"ok": 20}}),
        )
        .await;
        watch.wait_line("tasks 2/4 done (2 running)", Duration::from_secs(30));
        assert!(watch.still_running());
        c.write_status(
            name,
            json!({"phase": end, "tasks": {"running": 0, "succeeded": 3, "failed": 1}}),
        )
        .await;
        let (exit, out, err) = watch.finish(Duration::from_secs(30));
        assert_eq!(exit, Some(code), "{name}: {out}\n{err}");
        assert!(out.contains(&format!("Phase:       {end}")), "{out}");
        assert!(!err.contains("panicked"), "{err}");
    }

    // A Failed job with a retry the operator has not handled yet is not over.
    c.submitted("retried");
    c.write_status("retried", json!({"phase": "Failed", "retried": "r1"}))
        .await;
    c.merge(
        "retried",
        json!({"metadata": {"annotations": {"orch.dev/retry": "r2"}}}),
    )
    .await;
    let mut watch = Running::start(c.orch_cmd(&["status", "retried", "-w"]));
    watch.wait_line("Failed", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert!(watch.still_running(), "ended before the retry was handled");
    c.write_status("retried", json!({"phase": "Running", "retried": "r2"}))
        .await;
    watch.wait_line("Running", Duration::from_secs(30));
    c.write_status("retried", json!({"phase": "Succeeded"}))
        .await;
    let (exit, out, err) = watch.finish(Duration::from_secs(30));
    assert_eq!(exit, Some(0), "{out}\n{err}");

    // Deleted while watched.
    c.submitted("vanishes");
    let mut watch = Running::start(c.orch_cmd(&["status", "vanishes", "--watch"]));
    watch.wait_line("no status yet", Duration::from_secs(30));
    c.jobs("default")
        .delete("vanishes", &Default::default())
        .await
        .unwrap();
    let (exit, out, err) = watch.finish(Duration::from_secs(30));
    assert_eq!(exit, Some(1), "{out}\n{err}");
    assert!(
        err.contains("orchjob.orch.dev/vanishes was deleted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_marks_deletes_and_waits_for_the_finalizer() {
    let c = Cluster::start().await;
    c.submitted("old");
    // The operator's finalizer.
    c.merge(
        "old",
        json!({"metadata": {"finalizers": ["orch.dev/cleanup"]}}),
    )
    .await;

    // Without --yes and without a terminal: refused, nothing changed.
    let out = c.orch(&["purge", "old"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("--yes"), "{}", text(&out));
    let job = c.get("old").await.unwrap();
    assert!(job["metadata"].get("deletionTimestamp").is_none());
    assert!(job["metadata"].get("annotations").is_none(), "{job}");

    let mut purge = Running::start(c.orch_cmd(&["purge", "old", "--yes", "--timeout", "60s"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = c
            .get("old")
            .await
            .expect("still there: the finalizer holds it");
        if job["metadata"].get("deletionTimestamp").is_some() {
            assert_eq!(
                job["metadata"]["annotations"]["orch.dev/purge-on-delete"],
                "true"
            );
            break;
        }
        assert!(Instant::now() < deadline, "purge did not delete: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        purge.still_running(),
        "purge returned before the finalizer was removed"
    );
    // The operator has cleaned up: it removes its finalizer, the object goes.
    c.merge("old", json!({"metadata": {"finalizers": null}}))
        .await;
    let (exit, out, err) = purge.finish(Duration::from_secs(30));
    assert_eq!(exit, Some(0), "{out}\n{err}");
    assert_eq!(out, "orchjob.orch.dev/old purged");
    assert!(err.contains("waiting until the operator cancels"), "{err}");
    assert_eq!(c.get("old").await, None);

    // Nobody removes the finalizer: purge gives up after its timeout, exit 1.
    c.submitted("stuck");
    c.merge(
        "stuck",
        json!({"metadata": {"finalizers": ["orch.dev/cleanup"]}}),
    )
    .await;
    let out = c.orch(&["purge", "stuck", "--yes", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("still being deleted after")
            && stderr(&out).contains("waiting for orch.dev/cleanup"),
        "{}",
        text(&out)
    );

    // Without finalizers the object goes at once.
    c.submitted("plain");
    assert_eq!(
        c.orch_exit(0, &["purge", "plain", "-y"]),
        "orchjob.orch.dev/plain purged\n"
    );
    assert_eq!(c.get("plain").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_exit_2_with_the_not_found_message() {
    let c = Cluster::start().await;
    for args in [
        &["status", "nope", "--cluster"][..],
        &["status", "oj/nope", "--watch"],
        &["pause", "nope"],
        &["resume", "nope"],
        &["retry", "nope"],
        &["cancel", "nope"],
        &["purge", "nope", "--yes"],
        &["purge", "nope"],
    ] {
        let out = c.orch(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert_eq!(
            stderr(&out),
            "error: orchjob \"nope\" not found in namespace \"default\"\n",
            "{args:?}"
        );
    }
    let out = c.orch(&["pause", "nope", "-n", "kube-system"]);
    assert_eq!(
        stderr(&out),
        "error: orchjob \"nope\" not found in namespace \"kube-system\"\n"
    );
    // Not an OrchJob reference at all.
    let out = c.orch(&["cancel", "pod/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crd_the_message_says_so() {
    let c = Cluster::start().await;
    let crds = Api::<CustomResourceDefinition>::all(c.client.clone());
    crds.delete("orchjobs.orch.dev", &Default::default())
        .await
        .unwrap();
    let out = c.orch(&["status", "x", "--cluster"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("is the OrchJob CRD installed?"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn an_unreachable_api_server_is_one_line_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: gone\n\
             clusters: [{{name: gone, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: gone, context: {{cluster: gone, user: u, namespace: team-a}}}}]\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_orch"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for args in [
        &["status", "x", "--cluster"][..],
        &["pause", "x"],
        &["status", "--cluster"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "error: cannot reach the API server at http://127.0.0.1:{port} (context `gone`): "
            )),
            "{err}"
        );
        assert!(err.to_lowercase().contains("connection refused"), "{err}");
    }
    // An unknown context is a usage error that names the known ones.
    let out = run(&["status", "x", "--context", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("no context `nope` in the kubeconfig (it has: gone)"));
    // --kubeconfig wins over KUBECONFIG.
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["status", "x", "--kubeconfig"])
        .arg(dir.path().join("missing"))
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot read the kubeconfig"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_orch_runs_the_plugin() {
    let Some(kubectl) = orch_testkit::components::kubectl() else {
        return;
    };
    let c = Cluster::start().await;
    c.submitted("plugged");
    c.write_status("plugged", succeeded_status()).await;
    // Both ways to install the plugin: the kubectl-orch shim next to orch, and a symlink
    // named kubectl-orch to orch itself.
    let shim = c.path("shim");
    let link = c.path("link");
    for (dir, target) in [
        (&shim, env!("CARGO_BIN_EXE_kubectl-orch")),
        (&link, env!("CARGO_BIN_EXE_orch")),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        std::os::unix::fs::symlink(target, dir.join("kubectl-orch")).unwrap();
        let mut paths = vec![dir.clone()];
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(paths).unwrap();
        let run = |args: &[&str]| {
            Command::new(&kubectl)
                .args(args)
                .env("PATH", &path)
                .env("KUBECONFIG", &c.kubeconfig)
                .env_remove("RUST_BACKTRACE")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let how = dir.file_name().unwrap().to_string_lossy().into_owned();
        let out = run(&["orch", "status", "plugged"]);
        assert_eq!(out.status.code(), Some(0), "{how}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Phase:       Succeeded"), "{how}: {stdout}");
        let out = run(&["orch", "status", "--help"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("Usage: kubectl orch status"),
            "{how}: {}",
            text(&out)
        );
        let out = run(&["orch", "status", "missing"]);
        assert_eq!(out.status.code(), Some(2), "{how}: {}", text(&out));
        let out = run(&["orch", "pause", "plugged"]);
        assert_eq!(out.status.code(), Some(0), "{how}: {}", text(&out));
    }
    assert_eq!(c.get("plugged").await.unwrap()["spec"]["suspend"], true);
}

/// `script` (util-linux) runs a command on a pseudo-terminal: purge's question, answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        orch_testkit::components::missing(
            "`script` (util-linux), to give orch a terminal",
            "apt-get install util-linux",
        );
        return;
    }
    let c = Cluster::start().await;
    c.submitted("asked");
    let answer = |reply: &str| {
        let mut child = Command::new("script")
            .args([
                "-qec",
                &format!("{} purge asked", env!("CARGO_BIN_EXE_orch")),
            ])
            .arg("/dev/null")
            .env("KUBECONFIG", &c.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(reply.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = answer("n\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Delete orchjob asked in namespace default and its artifacts")
            && said.contains("[y/N]")
            && said.contains("not purged"),
        "{said}"
    );
    assert!(c.get("asked").await.is_some());
    let out = answer("y\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("orchjob.orch.dev/asked purged"),
        "{}",
        text(&out)
    );
    assert_eq!(c.get("asked").await, None);
}
