//! Shared helpers of the CLI end-to-end tests: a scratch directory with a job file, the real
//! `orch` and `orch-worker` binaries, and an independent reader (pyarrow) of the output.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The test Slurm cluster's environment (`SLURM_CONF`, `SLURMRESTD_URL`, `SLURM_JWT`, …), or
/// `None` (the caller returns: skipped visibly, a failure under CI) when no cluster runs.
/// The end-to-end tests on it also read their output with pyarrow, so that is checked too.
pub fn slurm_env() -> Option<std::collections::HashMap<String, String>> {
    let env = orch_testkit::components::slurm_env()?;
    orch_testkit::components::python_module("pyarrow").then_some(env)
}

pub fn orch() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_orch"))
}

/// `orch-worker` is built by `cargo test --workspace` into the same directory as `orch`.
pub fn worker() -> PathBuf {
    let w = orch().with_file_name("orch-worker");
    assert!(
        w.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`",
        w.display()
    );
    w
}

/// The path of a file under `cli/tests/fixtures/` (test handlers, inputs).
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `n` JSONL records `{"id": i, "text": "item i"}`.
    pub fn jsonl(&self, name: &str, n: u64) -> PathBuf {
        let mut s = String::with_capacity(n as usize * 32);
        for i in 0..n {
            s.push_str(&format!("{{\"id\": {i}, \"text\": \"item {i}\"}}\n"));
        }
        self.write(name, &s)
    }

    /// Runs `orch` with the scratch dir as working directory (so `.orch/` lands there).
    pub fn orch(&self, args: &[&str]) -> Output {
        self.orch_cmd(args).output().unwrap()
    }

    /// `orch status -o json` of the job file `job`, parsed (exit 0 asserted).
    pub fn status(&self, job: &Path) -> serde_json::Value {
        let out = self.orch(&["status", "-o", "json", job.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn orch_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(orch());
        c.args(args)
            .current_dir(self.dir.path())
            .env("ORCH_WORKER", worker())
            .env_remove("ORCH_LOG");
        c
    }
}

/// Pids of the `orch-worker` processes (work or merge tasks) whose storage is the directory
/// `dir`.
pub fn workers_of(dir: &Path) -> Vec<u32> {
    workers_of_storage(&format!("file://{}", dir.display()))
}

/// Pids of the `orch-worker` processes whose `--storage` is `uri`.
pub fn workers_of_storage(uri: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("orch-worker .*--storage {uri}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Sends `signal` (`-KILL`, `-TERM`, …) to `pid`.
/// A job over `in.jsonl` (batches of 250) run by two local workers at a time, with quick
/// retries, writing to `out`; `extra` is more of its spec (indented lines), or empty.
pub fn local_job_yaml(name: &str, handler: &str, max_attempts: u32, extra: &str) -> String {
    format!(
        r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: {name}}}
spec:
  input: {{uri: in.jsonl}}
  batch: {{size: 250}}
  handler: {handler}
  retry: {{maxAttempts: {max_attempts}, backoff: {{initial: 50ms, factor: 2, max: 1s}}}}
  output: {{uri: out}}
  executor: {{local: {{parallelism: 2}}}}
{extra}"#
    )
}

/// The work task a local worker runs now, if any.
pub fn task_of(pid: u32) -> Option<u32> {
    // A worker's stderr is the log of the task it runs (`<task:06>.<attempt>.log`), whether it
    // was started for that task or is kept for the job's tasks.
    let log = std::fs::read_link(format!("/proc/{pid}/fd/2")).ok()?;
    let name = log.file_name()?.to_str()?;
    let (task, rest) = name.split_once('.')?;
    rest.ends_with(".log").then_some(())?;
    task.parse().ok()
}

pub fn kill(pid: u32, signal: &str) {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What an independent reader sees in an output directory.
#[derive(Debug, serde::Deserialize)]
pub struct Seen {
    pub rows: u64,
    pub distinct_items: u64,
    pub duplicates: u64,
    pub min_item: Option<u64>,
    pub max_item: Option<u64>,
    pub items: Vec<u64>,
    pub error_rows: u64,
    pub error_items: Vec<u64>,
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    pub columns: Vec<String>,
}

/// Reads `part-*.parquet` and `errors.parquet` with pyarrow, not with orch's own code.
pub fn read_output(dir: &Path) -> Seen {
    let script = r#"
import glob, json, sys, collections
import pyarrow.parquet as pq
d = sys.argv[1]
items, columns = [], []
for f in sorted(glob.glob(d + "/part-*.parquet")):
    t = pq.read_table(f)
    columns = t.column_names
    items += t.column("_item").to_pylist()
e = pq.read_table(d + "/errors.parquet")
kinds = collections.Counter(e.column("kind").to_pylist())
print(json.dumps({
  "rows": len(items), "distinct_items": len(set(items)),
  "duplicates": len(items) - len(set(items)),
  "min_item": min(items) if items else None, "max_item": max(items) if items else None,
  "items": sorted(set(items)), "error_rows": e.num_rows,
  "error_items": sorted(e.column("_item").to_pylist()), "error_kinds": kinds,
  "columns": columns}))
"#;
    let out = Command::new("python3")
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .expect("python3 with pyarrow is needed to read the output independently");
    assert!(
        out.status.success(),
        "pyarrow reader failed: {}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

impl Seen {
    /// Every input item `0..items` is in the output exactly once: as a result row or as an
    /// error row, never both, never twice.
    pub fn assert_each_item_once(&self, items: u64) {
        assert_eq!(self.duplicates, 0, "{self:?}");
        let mut all: Vec<u64> = self
            .items
            .iter()
            .chain(&self.error_items)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..items).collect::<Vec<_>>(),
            "each item exactly once"
        );
    }
}

/// One column of a Parquet file as pyarrow sees it.
#[derive(Debug, PartialEq, serde::Deserialize)]
pub struct SeenColumn {
    pub name: String,
    /// pyarrow's type name: `uint64`, `int64`, `double`, `string`, `bool`, ...
    pub r#type: String,
    pub nullable: bool,
}

/// A Parquet file's schema and row-group sizes, read with pyarrow.
#[derive(Debug, serde::Deserialize)]
pub struct SeenFile {
    pub columns: Vec<SeenColumn>,
    pub row_groups: Vec<u64>,
}

/// Reads a Parquet file's footer with pyarrow (`ParquetFile(...).metadata.row_group(i)`).
pub fn parquet_file(path: &Path) -> SeenFile {
    let script = r#"
import json, sys
import pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
schema = f.schema_arrow
print(json.dumps({
  "columns": [{"name": c.name, "type": str(c.type), "nullable": c.nullable} for c in schema],
  "row_groups": [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)],
}))
"#;
    let out = Command::new("python3")
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .expect("python3 with pyarrow is needed to read the output independently");
    assert!(
        out.status.success(),
        "pyarrow reader failed: {}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `part-*.parquet` files of an output directory, sorted.
pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("part-") && n.ends_with(".parquet"))
        })
        .collect();
    parts.sort();
    parts
}

/// Waits until the job's final merge task has failed once and waits for its retry, then asks
/// for a cancel the way the operator does (a flag on the stored job, seen by the running
/// driver). Returns the job's id.
pub async fn cancel_while_the_final_merge_waits(
    state: &dyn orch_core::backend::StateStore,
) -> String {
    use orch_core::model::{TaskKind, TaskState};
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the final merge never failed a first time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Some(job) = state.list_jobs().await.unwrap().into_iter().next() else {
            continue;
        };
        let tasks = state.list_tasks(&job.id).await.unwrap();
        let waiting = tasks.iter().any(|t| {
            t.kind == TaskKind::Final && t.state == TaskState::Retrying && t.counted_attempts() == 1
        });
        // A write racing the driver's is refused (versioned): ask again on the next pass.
        if waiting
            && orch_runtime::control::request_cancel(state, &job)
                .await
                .is_ok()
        {
            return job.id;
        }
    }
}

/// A small deterministic generator (xorshift64*): the schedule of faults is a function of the
/// seed alone.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of a chaos run: `ORCH_CHAOS_SEED`, else the clock (tests print it, so that a
/// failure can be replayed).
pub fn chaos_seed() -> u64 {
    setting(
        "ORCH_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
    )
}

/// A tmpfs of its own, mounted for one test and unmounted when dropped (the test runs as root;
/// without the right to mount, the test is skipped — a failure under CI).
pub struct SmallDisk {
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { dir }),
            Ok(o) => {
                orch_testkit::components::missing(
                    "the right to mount a tmpfs",
                    &format!("run the tests as root: {}", text(&o)),
                );
                None
            }
            Err(e) => {
                orch_testkit::components::missing("mount", &e.to_string());
                None
            }
        }
    }

    pub fn resize(&self, bytes: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The last word of a chaos scenario, in the one shape `tests/chaos/run.sh` reads back:
/// `chaos (SCENARIO): seed SEED: what was injected, 0 items lost, 0 duplicated` (printed once
/// the scenario's checks passed; a loss or a duplicate fails the test before).
pub fn chaos_summary(scenario: &str, seed: impl std::fmt::Display, injected: &str) {
    eprintln!("chaos ({scenario}): seed {seed}: {injected}, 0 items lost, 0 duplicated");
}

/// A webhook receiver for the alert tests: every POST it gets (path, JSON body), in order,
/// each answered `200 ok`.
pub struct Hooks {
    pub port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Hooks {
    pub fn start() -> Hooks {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if let Some(request) = read_request(conn) {
                    seen.lock().unwrap().push(request);
                }
            }
        });
        Hooks { port, bodies }
    }

    /// The URL of a path on this server (a path may stand for a token).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<(String, serde_json::Value)> {
        self.bodies.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request: its path and JSON body; answered `200 ok`, then closed.
fn read_request(mut conn: std::net::TcpStream) -> Option<(String, serde_json::Value)> {
    use std::io::{BufRead, Read, Write};
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    let mut reader = std::io::BufReader::new(conn.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_string();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .ok()?;
    Some((path, serde_json::from_slice(&body).ok()?))
}
