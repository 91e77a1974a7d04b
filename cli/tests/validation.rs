//! Bad job files: each gives a clear one-screen message naming the field or path, exit code 2,
//! and never a panic or a backtrace.
#![allow(clippy::unwrap_used)]

mod common;
use common::{Scratch, text};

const GOOD: &str = r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: demo}
spec:
  input: {uri: in.jsonl}
  batch: {size: 10}
  handler: {builtin: {name: identity}}
"#;

/// Runs `orch validate` on `yaml` and returns the output, asserting exit 2 and no panic.
fn rejected(yaml: &str) -> String {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5);
    let job = s.write("job.yaml", yaml);
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(!all.contains("RUST_BACKTRACE"), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).lines().count() < 25,
        "{all}"
    );
    all
}

#[test]
fn the_good_file_validates() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5);
    let job = s.write("job.yaml", GOOD);
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}

#[test]
fn unknown_field_is_named() {
    let all = rejected(&GOOD.replace("batch: {size: 10}", "batch: {size: 10, sise: 3}"));
    assert!(
        all.contains("spec.batch") && all.contains("`sise`"),
        "{all}"
    );
}

#[test]
fn wrong_type_is_named() {
    let all = rejected(&GOOD.replace("size: 10", "size: ten"));
    assert!(
        all.contains("spec.batch.size") && all.contains("wrong type"),
        "{all}"
    );
}

#[test]
fn batch_size_zero_states_the_rule() {
    let all = rejected(&GOOD.replace("size: 10", "size: 0"));
    assert!(all.contains("spec.batch.size: must be ≥ 1, got 0"), "{all}");
}

#[test]
fn missing_input_is_named() {
    let all = rejected(&GOOD.replace("  input: {uri: in.jsonl}\n", ""));
    assert!(all.contains("spec") && all.contains("\"input\""), "{all}");
}

#[test]
fn unreadable_input_names_the_path() {
    let all = rejected(&GOOD.replace("in.jsonl", "nowhere.jsonl"));
    assert!(
        all.contains("spec.input.uri") && all.contains("nowhere.jsonl"),
        "{all}"
    );
}

#[test]
fn handler_program_not_found_is_named() {
    let all = rejected(&GOOD.replace(
        "{builtin: {name: identity}}",
        "{exec: {command: [\"no-such-program-xyz\", \"x.py\"]}}",
    ));
    assert!(
        all.contains("spec.handler.exec.command[0]") && all.contains("no-such-program-xyz"),
        "{all}"
    );
}

#[test]
fn malformed_yaml_gives_the_line() {
    let all = rejected("apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nspec: {input: [\n");
    assert!(
        all.contains("malformed YAML") && all.contains("line"),
        "{all}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = GOOD
        .replace("size: 10", "size: 0")
        .replace("name: demo", "name: Demo_Job")
        .replace(
            "{builtin: {name: identity}}",
            "{builtin: {name: identity}, timeout: 0s}",
        );
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5);
    let job = s.write("job.yaml", &yaml);
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    // Schema errors come first; the name and timeout rules are checked once the schema holds.
    assert!(all.contains("spec.batch.size"), "{all}");
    let fixed = yaml.replace("size: 0", "size: 5");
    let job = s.write("job.yaml", &fixed);
    let all = text(&s.orch(&["validate", job.to_str().unwrap()]));
    assert!(
        all.contains("metadata.name") && all.contains("spec.handler.timeout"),
        "{all}"
    );
}

#[test]
fn run_refuses_bad_files_with_exit_2_too() {
    let s = Scratch::new();
    let job = s.write("job.yaml", &GOOD.replace("size: 10", "size: 0"));
    let out = s.orch(&["run", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// A Slurm job on slurmrestd that leaves the URL to the operator (which fills in its
/// `--slurm-url`) is valid, as the operator and `orch submit` find it; `orch validate` says who
/// fills it in, and only `orch run`, which has nobody to, refuses it.
#[test]
fn a_slurm_url_left_to_the_operator_is_valid_but_not_runnable_here() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5);
    let job = s.write(
        "job.yaml",
        &format!("{GOOD}  executor: {{slurm: {{transport: rest}}}}\n"),
    );
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is valid"),
        "{all}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("note: spec.executor.slurm.url: not set")
            && stderr.contains("--slurm-url")
            && stderr.contains("`orch run` has none"),
        "{all}"
    );

    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("spec.executor.slurm.url: not set"), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    // Nothing was started.
    assert!(!s.path(".orch/jobs").exists(), "{all}");

    // With the URL in the file there is nothing to say.
    let job = s.write(
        "job.yaml",
        &format!("{GOOD}  executor: {{slurm: {{transport: rest, url: \"http://127.0.0.1:9\"}}}}\n"),
    );
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("note:"), "{}", text(&out));
}

#[test]
fn extends_deep_merges_a_base_file() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5);
    s.write(
        "base.yaml",
        "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nspec:\n  batch: {size: 7, maxBytes: 1Mi}\n  handler: {builtin: {name: identity}}\n",
    );
    let job = s.write(
        "job.yaml",
        "extends: base.yaml\nmetadata: {name: child}\nspec:\n  input: {uri: in.jsonl}\n  batch: {size: 3}\n",
    );
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("batches  of 3 items, at most 1Mi"), "{all}");

    // Without a size anywhere, orch sizes the batches from the input.
    s.write(
        "base.yaml",
        "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nspec:\n  handler: {builtin: {name: identity}}\n",
    );
    let job = s.write(
        "job.yaml",
        "extends: base.yaml\nmetadata: {name: child}\nspec:\n  input: {uri: in.jsonl}\n",
    );
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("batches  sized from the input, 4 per worker, at most 64Mi"),
        "{all}"
    );
}

/// `orch status NAME` reads the local stores unless told otherwise; a NAME that is no local job
/// gets an error that says how to ask the cluster for the OrchJob of that name.
#[test]
fn status_of_an_unknown_name_points_at_the_cluster() {
    let s = Scratch::new();
    // No local state at all.
    let out = s.orch(&["status", "reviews"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("orch status oj/reviews"), "{all}");
    // Local state, but no job of that id.
    s.jsonl("in.jsonl", 5);
    let job = s.write("job.yaml", GOOD);
    let run = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let out = s.orch(&["status", "reviews"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("no job `reviews`"), "{all}");
    assert!(all.contains("orch status oj/reviews"), "{all}");
    // A name that is no job id either.
    let out = s.orch(&["status", "reviews.v2"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("orch status oj/reviews.v2"), "{all}");
}

/// A job file must not carry a secret by value: `orch validate` and `orch run` refuse a
/// secret-looking literal, naming the field and the way to pass it by reference, and never show
/// the value.
#[test]
fn a_secret_by_value_is_refused_without_showing_it() {
    const VALUE: &str = "sk-live-do-not-print-0123456789";
    let exec = GOOD.replace(
        "handler: {builtin: {name: identity}}",
        &format!(
            "handler:\n    exec:\n      command: [./h.py]\n      env: {{MODEL: small, OPENAI_API_KEY: {VALUE}}}"
        ),
    );
    let http = GOOD.replace(
        "handler: {builtin: {name: identity}}",
        &format!(
            "handler:\n    builtin:\n      name: http\n      http:\n        url: \"http://127.0.0.1:9/{{id}}\"\n        headers: {{Authorization: {{value: \"Bearer {VALUE}\"}}}}"
        ),
    );
    for (yaml, path) in [
        (&exec, "spec.handler.exec.env.OPENAI_API_KEY"),
        (
            &http,
            "spec.handler.builtin.http.headers.Authorization.value",
        ),
    ] {
        let all = rejected(yaml);
        assert!(all.contains(path) && all.contains("fromEnv"), "{all}");
        assert!(!all.contains(VALUE), "{all}");

        let s = Scratch::new();
        s.jsonl("in.jsonl", 5);
        let job = s.write("job.yaml", yaml);
        let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{all}");
        assert!(all.contains(path) && !all.contains(VALUE), "{all}");
        assert!(!s.path(".orch/jobs").exists(), "{all}");
    }
    // The same variable by reference is fine.
    let all = rejected(&exec.replace(VALUE, "{fromEnv: OPENAI_KEY}"));
    assert!(
        all.contains("spec.handler.exec.command[0]") && !all.contains("exec.env"),
        "only the missing program is left: {all}"
    );
}

/// `orch run` with `input` set to `uri`; its output, after at most a minute (a run that opened
/// a FIFO to read it would wait forever).
fn run_with_input(s: &Scratch, uri: &str) -> std::process::Output {
    let job = s.write(
        "job.yaml",
        &GOOD.replace(
            "input: {uri: in.jsonl}",
            &format!("input: {{uri: \"{uri}\", format: jsonl}}"),
        ),
    );
    let mut child = s
        .orch_cmd(&["run", "--no-progress", job.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("orch run {uri} still runs after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn run_reads_regular_files_only() {
    let s = Scratch::new();
    let fifo = s.path("pipe.jsonl");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for (uri, what) in [("/dev/zero", "is a device"), ("pipe.jsonl", "is a FIFO")] {
        let out = run_with_input(&s, uri);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{uri}: {all}");
        assert!(
            all.contains("spec.input.uri") && all.contains(what),
            "{all}"
        );
        assert!(!s.path(".orch/jobs").exists(), "{all}");
    }
    // A directory whose entries are regular files stays one dataset.
    s.jsonl("data/a.jsonl", 3);
    s.jsonl("data/b.jsonl", 2);
    let out = run_with_input(&s, "data");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A job file may come through a pipe (relative paths are then the working directory's); a
/// device is refused.
#[test]
fn a_job_file_may_be_a_pipe_but_not_a_device() {
    use std::io::Write as _;
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5);
    let mut child = s
        .orch_cmd(&["validate", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(GOOD.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!("{}", s.path("in.jsonl").display())),
        "{all}"
    );

    let out = s.orch(&["validate", "/dev/zero"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("a device, not a job file"), "{all}");
}

/// Data in S3 needs this machine's AWS configuration: without a region, `orch run` stops at
/// once naming the field (exit 2), and `orch validate` — the file may be meant for elsewhere —
/// accepts it with a note.
#[test]
fn s3_data_without_an_aws_region_is_named_before_anything_starts() {
    let s = Scratch::new();
    let job = s.write(
        "job.yaml",
        &GOOD.replace("{uri: in.jsonl}", "{uri: \"s3://some-bucket/in.jsonl\"}"),
    );
    let without_aws = |verb: &[&str]| {
        let mut c = s.orch_cmd(&[verb, &[job.to_str().unwrap()]].concat());
        for k in ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"] {
            c.env_remove(k);
        }
        c.env("AWS_CONFIG_FILE", s.path("no-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", s.path("no-credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    };
    let run = without_aws(&["run", "--no-progress"]);
    let all = text(&run);
    assert_eq!(run.status.code(), Some(2), "{all}");
    assert!(
        all.contains("spec.input.uri: in S3, but no AWS region"),
        "{all}"
    );
    let validate = without_aws(&["validate"]);
    let all = text(&validate);
    assert_eq!(validate.status.code(), Some(0), "{all}");
    assert!(
        all.contains("note: spec.input.uri: in S3, but no AWS region"),
        "{all}"
    );
}

/// A key given twice, a byte order mark, a backoff cap below its start and a giant batch:
/// each caught by `orch validate` (the BOM skipped), none accepted silently.
#[test]
fn repeated_keys_backoff_caps_and_giant_batches_are_refused() {
    let twice = rejected(&format!("{GOOD}  batch: {{size: 20}}\n"));
    assert!(twice.contains("the key `batch` is given twice"), "{twice}");
    let backoff = rejected(&format!(
        "{GOOD}  retry: {{backoff: {{initial: 10s, max: 2s}}}}\n"
    ));
    assert!(backoff.contains("spec.retry.backoff.max"), "{backoff}");
    let giant = rejected(&GOOD.replace("size: 10", "size: 18446744073709551615"));
    assert!(giant.contains("spec.batch.size"), "{giant}");
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5);
    let job = s.write("job.yaml", &format!("\u{feff}{GOOD}"));
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
