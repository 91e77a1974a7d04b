//! The Slurm commands as a [`SlurmApi`]: for users on a login node, where `sbatch`,
//! `squeue`, `sacct`, `scancel` and `scontrol` work and `SLURM_CONF` (inherited) says which
//! cluster they talk to.
//!
//! Every operation is a fixed, small number of commands, run without a shell and each under a
//! timeout:
//!
//! | operation        | commands |
//! |------------------|----------|
//! | [`cluster_info`] | `scontrol show config`, `scontrol --oneliner --all show partition` |
//! | [`submit`]       | `sbatch --parsable … --export=NIL,<names>` (script on stdin, the tasks' variables in its environment, passed on by name) |
//! | [`arrays`]       | `squeue --array --me --states=all --name=…` and `sacct --allocations --name=…` (at once, whatever the number of arrays and tasks) |
//! | [`cancel`]       | `scancel <id>_[<indices>]` or `scancel <id>` |
//! | [`hold`]/[`release`] | `scontrol hold <id>` / `scontrol release <id>` |
//!
//! What the test cluster (Slurm 22.05) showed, and what follows from it:
//!
//! - `squeue` is what slurmctld knows now; `sacct` lags a second or two behind and lists
//!   pending tasks late or not at all. So `squeue`'s record of a task wins, and `sacct` adds
//!   the tasks slurmctld has forgotten (past `MinJobAge`). squeue's `exit_code` is the raw
//!   wait status (`768` for exit 3, `9` for SIGKILL), sacct's is `3:0` / `0:9`.
//! - A plain time window (`sacct -S …`) leaves out tasks whose eligible time Slurm cleared —
//!   those running while their array was held — even after they end; a window with an
//!   explicit state list and end time finds them.
//! - sacct has the comment only once a task ended (and only with
//!   `AccountingStoreFlags=job_comment`); the stored submit line always has `--comment=…`.
//! - Cancelling a pending task removes it from the array without any record; this API
//!   remembers what it cancelled and reports those tasks `CANCELLED`.
//! - `scontrol hold|release` of an array with ended tasks exits 1 (`Job has already finished`)
//!   though it held the pending ones: that is no error, nor is an array Slurm forgot.
//! - Where accounting is disabled, the first `sacct` says so and later calls use `squeue`
//!   alone.
//! - `--export=NIL,FOO` gives the task `FOO` with its value from sbatch's environment, commas
//!   and `=` included (`a,b=c`), which `--export=FOO=a,b=c` cannot carry; nothing else of the
//!   submitter's environment reaches the task (Slurm sets `HOME`, `USER`, `TMPDIR`, … itself),
//!   except every `SLURM_*` variable, which Slurm always copies: so `sbatch` runs without
//!   `SLURM_JWT`, which would otherwise sit in every task's environment and in the job record.
//!
//! Failures are classified from the commands' messages: an unreachable or busy slurmctld (or
//! slurmdbd) is transient, as is a command that does not answer within the timeout; a request
//! Slurm rejects for a spec reason (an unknown partition, a time limit over the partition's)
//! is [`SlurmError::Invalid`]; output that does not parse is [`SlurmError::Decode`].
//!
//! [`cluster_info`]: SlurmApi::cluster_info
//! [`submit`]: SlurmApi::submit
//! [`arrays`]: SlurmApi::arrays
//! [`cancel`]: SlurmApi::cancel
//! [`hold`]: SlurmApi::hold
//! [`release`]: SlurmApi::release

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::backend::ExecState;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{debug, warn};

use crate::api::{ArrayJob, ArrayTask, ClusterInfo, MAX_ARRAY_INDEX, PartitionInfo, SlurmApi};
use crate::error::{Result, SlurmError};
use crate::state::exec_state;
use crate::submission::{ArraySubmission, array_spec};

/// How long one command may take before it counts as a transient failure. (An `sbatch` that
/// timed out may still have submitted its array; the executor looks for it by comment before
/// submitting again.)
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How far back `sacct` looks (its own default is midnight, which loses the tasks of a job
/// that runs over it).
pub const DEFAULT_ACCOUNTING_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The separator of `squeue`'s and `sacct`'s fields. The only free-text field that may hold
/// it (the comment, or sacct's submit line) comes last.
const SEP: char = '|';

/// `squeue` fields: array job id, task id (or a range while pending), state, reason, exit
/// code, name, comment.
const SQUEUE_FORMAT: &str =
    "ArrayJobID:|,ArrayTaskID:|,StateCompact:|,Reason:|,exit_code:|,Name:|,Comment:";

/// `sacct` fields, in this order.
const SACCT_FORMAT: &str = "JobID,JobName,State,ExitCode,Reason,Comment,SubmitLine";

/// The Slurm commands, run as the user orch runs as.
pub struct CliApi {
    bin_dir: Option<PathBuf>,
    timeout: Duration,
    accounting_window: Duration,
    env: Vec<(OsString, OsString)>,
    /// Set once `sacct` said accounting is disabled (or is not installed).
    no_accounting: AtomicBool,
    /// Indices this API cancelled, by array: Slurm forgets pending ones it cancels.
    cancelled: Mutex<HashMap<u64, BTreeSet<u32>>>,
}

impl std::fmt::Debug for CliApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliApi")
            .field("bin_dir", &self.bin_dir)
            .field("timeout", &self.timeout)
            .field("no_accounting", &self.no_accounting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for CliApi {
    fn default() -> Self {
        CliApi::new(None)
    }
}

/// What a command printed and how it ended.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    /// stderr, or stdout when stderr is empty, on one line.
    fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            format!("exited with {}", self.status)
        } else {
            lines.join("; ")
        }
    }
}

impl CliApi {
    /// The commands from `bin_dir` (default: found on `PATH`), with the environment orch runs
    /// in (`SLURM_CONF` among it).
    pub fn new(bin_dir: Option<PathBuf>) -> Self {
        CliApi {
            bin_dir,
            timeout: DEFAULT_TIMEOUT,
            accounting_window: DEFAULT_ACCOUNTING_WINDOW,
            env: Vec::new(),
            no_accounting: AtomicBool::new(false),
            cancelled: Mutex::new(HashMap::new()),
        }
    }

    /// How long one command may take ([`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How far back `sacct` looks ([`DEFAULT_ACCOUNTING_WINDOW`]).
    pub fn with_accounting_window(mut self, window: Duration) -> Self {
        self.accounting_window = window;
        self
    }

    /// Sets a variable for every command (e.g. `SLURM_CONF` of another cluster), over the
    /// inherited environment.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Whether `sacct` was found unusable (accounting disabled), so `arrays` uses `squeue`
    /// alone.
    pub fn accounting_disabled(&self) -> bool {
        self.no_accounting.load(Ordering::Relaxed)
    }

    fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Runs `program args…` with `stdin` (or none) and extra variables; the output whatever
    /// the exit status. Errors: not found (permanent), no answer within the timeout
    /// (transient), other spawn failures.
    async fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
        vars: &[(String, String)],
    ) -> Result<Output> {
        let path = self.program(program);
        let mut command = Command::new(&path);
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Variables that would change what squeue and sacct print (SQUEUE_FORMAT2, …).
        if program == "squeue" || program == "sacct" {
            for (key, _) in std::env::vars_os() {
                let k = key.to_string_lossy();
                if k.starts_with("SQUEUE_") || k.starts_with("SACCT_") {
                    command.env_remove(&key);
                }
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.envs(vars.iter().map(|(k, v)| (k, v)));
        // sbatch copies every SLURM_* variable into the job, whatever --export says, and the
        // job must carry no credential; sbatch itself authenticates as the user (munge).
        if program == "sbatch" {
            command.env_remove("SLURM_JWT");
        }
        debug!(program = %path.display(), ?args, "running a Slurm command");

        let mut child = spawn(&mut command).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SlurmError::Slurm {
                    operation: program.to_string(),
                    message: format!(
                        "`{}` not found: the Slurm commands must be installed (or their \
                         directory given)",
                        path.display()
                    ),
                    transient: false,
                }
            } else {
                SlurmError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        let input = child.stdin.take();
        let script = stdin.unwrap_or_default().to_string();
        let work = async move {
            let write = async move {
                if let Some(mut input) = input {
                    input.write_all(script.as_bytes()).await?;
                    input.shutdown().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let (written, output) = tokio::join!(write, child.wait_with_output());
            let output = output?;
            // A command that exits without reading its input (an early error) closes the pipe;
            // its own message says more than the broken pipe.
            if let Err(e) = written
                && output.status.success()
            {
                return Err(e);
            }
            Ok(output)
        };
        let output = match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(|source| SlurmError::Io {
                path: path.clone(),
                source,
            })?,
            Err(_) => {
                return Err(SlurmError::Slurm {
                    operation: program.to_string(),
                    message: format!(
                        "no answer within {} s (slurmctld busy or unreachable?)",
                        self.timeout.as_secs_f64()
                    ),
                    transient: true,
                });
            }
        };
        Ok(Output {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// [`CliApi::run`], and a non-zero exit is an error classified by [`failure`].
    async fn run_ok(
        &self,
        operation: &str,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
        vars: &[(String, String)],
    ) -> Result<Output> {
        let output = self.run(program, args, stdin, vars).await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(failure(operation, &output.message()))
        }
    }

    /// The `squeue` records of arrays named `name`.
    async fn squeue(&self, name: &str) -> Result<Vec<Record>> {
        let output = self
            .run_ok(
                "squeue",
                "squeue",
                &squeue_args(name),
                None,
                &[("SLURM_BITSTR_LEN".into(), "0".into())],
            )
            .await?;
        parse_squeue(&output.stdout)
    }

    /// The `sacct` records of arrays named `name`; `None` when accounting is disabled.
    async fn sacct(&self, name: &str) -> Result<Option<Vec<Record>>> {
        if self.accounting_disabled() {
            return Ok(None);
        }
        let args = sacct_args(name, self.accounting_window);
        let vars = [("SLURM_BITSTR_LEN".to_string(), "0".to_string())];
        let output = match self.run("sacct", &args, None, &vars).await {
            Ok(output) => output,
            Err(SlurmError::Slurm {
                transient: false,
                message,
                ..
            }) if message.contains("not found") => {
                warn!("sacct is not installed: array states come from squeue alone");
                self.no_accounting.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if !output.status.success() {
            let message = output.message();
            if accounting_is_disabled(&message) {
                warn!(%message, "Slurm accounting is disabled: array states come from squeue alone (tasks past MinJobAge are not found)");
                self.no_accounting.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            return Err(failure("sacct", &message));
        }
        parse_sacct(&output.stdout).map(Some)
    }

    /// `scontrol <verb> <id>`, where a job that no longer has tasks to act on is no error.
    async fn scontrol_job(&self, verb: &str, array_job_id: u64) -> Result<()> {
        let args = vec![verb.to_string(), array_job_id.to_string()];
        let output = self.run("scontrol", &args, None, &[]).await?;
        if output.status.success() {
            return Ok(());
        }
        let message = output.message();
        if nothing_to_do(&message) {
            debug!(array_job_id, %message, "scontrol {verb}: nothing to do");
            return Ok(());
        }
        Err(failure(
            &format!("scontrol {verb} {array_job_id}"),
            &message,
        ))
    }
}

/// Spawns, retrying briefly on "Text file busy": a freshly written program (a wrapper
/// script) may still be open for writing in a child another thread is forking.
async fn spawn(command: &mut Command) -> std::io::Result<tokio::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

#[async_trait]
impl SlurmApi for CliApi {
    async fn cluster_info(&self) -> Result<ClusterInfo> {
        let config = self
            .run_ok(
                "scontrol show config",
                "scontrol",
                &["show".into(), "config".into()],
                None,
                &[],
            )
            .await?;
        let max_array_size = parse_max_array_size(&config.stdout)?;
        let partitions = self
            .run_ok(
                "scontrol show partition",
                "scontrol",
                &[
                    "--oneliner".into(),
                    "--all".into(),
                    "show".into(),
                    "partition".into(),
                ],
                None,
                &[],
            )
            .await?;
        Ok(ClusterInfo {
            max_array_size,
            partitions: parse_partitions(&partitions.stdout)?,
        })
    }

    async fn submit(&self, array: &ArraySubmission) -> Result<u64> {
        let output = self
            .run_ok(
                "sbatch",
                "sbatch",
                &sbatch_args(array)?,
                Some(&array.script),
                &array.environment,
            )
            .await?;
        let id = parse_sbatch(&output.stdout)?;
        if !output.stderr.trim().is_empty() {
            warn!(array = id, message = %output.message(), "sbatch warned");
        }
        Ok(id)
    }

    async fn arrays(&self, name: &str) -> Result<Vec<ArrayJob>> {
        let (live, accounted) = tokio::join!(self.squeue(name), self.sacct(name));
        let live = live?;
        let accounted = accounted?.unwrap_or_default();
        let cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
        Ok(merge(name, accounted, live, &cancelled))
    }

    async fn cancel(&self, array_job_id: u64, indices: &[u32]) -> Result<()> {
        let mut sorted = indices.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let target = if sorted.is_empty() {
            array_job_id.to_string()
        } else {
            format!("{array_job_id}_[{}]", array_spec(&sorted, None))
        };
        let output = self
            .run("scancel", std::slice::from_ref(&target), None, &[])
            .await?;
        let message = output.message();
        if !output.status.success() {
            if !nothing_to_do(&message) {
                return Err(failure(&format!("scancel {target}"), &message));
            }
            debug!(%target, %message, "scancel: nothing left to cancel");
        }
        self.cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(array_job_id)
            .or_default()
            .extend(sorted);
        Ok(())
    }

    async fn hold(&self, array_job_id: u64) -> Result<()> {
        self.scontrol_job("hold", array_job_id).await
    }

    async fn release(&self, array_job_id: u64) -> Result<()> {
        self.scontrol_job("release", array_job_id).await
    }
}

// ---- command lines -------------------------------------------------------------------------

/// sbatch's arguments for one array. The tasks' variables go into sbatch's environment and
/// `--export=NIL,<names>` passes those, and only those, on by name: values may hold commas,
/// which `--export=K=V` cannot, and the rest of the submitter's environment (credentials
/// among it) stays out of the tasks and of Slurm's records.
fn sbatch_args(a: &ArraySubmission) -> Result<Vec<String>> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", a.name),
        format!("--comment={}", a.comment),
        format!("--array={}", a.array_spec()),
        format!("--cpus-per-task={}", a.cpus_per_task),
        format!("--mem={}M", a.memory_mb),
        format!("--time={}", a.time_minutes),
    ];
    for (option, value) in [
        ("--partition", &a.partition),
        ("--account", &a.account),
        ("--qos", &a.qos),
        ("--gres", &a.gres),
        ("--constraint", &a.constraint),
    ] {
        if let Some(value) = value {
            args.push(format!("{option}={value}"));
        }
    }
    args.extend([
        format!("--output={}", a.output),
        format!("--error={}", a.output),
        format!("--signal={}", a.signal),
        format!("--chdir={}", a.workdir.display()),
        export_option(&a.environment)?,
    ]);
    args.extend(a.extra.iter().cloned());
    Ok(args)
}

/// `--export=NIL,<name>,…` for these variables (`--export=NIL` for none). A name that is not
/// `[A-Za-z_][A-Za-z0-9_]*` is refused: in the list it could add a `K=V` or another keyword.
fn export_option(environment: &[(String, String)]) -> Result<String> {
    let mut option = "--export=NIL".to_string();
    for (name, _) in environment {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(SlurmError::invalid(
                "the tasks' environment",
                format!(
                    "`{name}` is not a variable name sbatch --export can pass on \
                     ([A-Za-z_][A-Za-z0-9_]*)"
                ),
            ));
        }
        option.push(',');
        option.push_str(name);
    }
    Ok(option)
}

fn squeue_args(name: &str) -> Vec<String> {
    vec![
        "--noheader".into(),
        "--array".into(),
        "--me".into(),
        "--states=all".into(),
        format!("--name={name}"),
        format!("--Format={SQUEUE_FORMAT}"),
    ]
}

fn sacct_args(name: &str, window: Duration) -> Vec<String> {
    vec![
        "--noheader".into(),
        "--parsable2".into(),
        "--allocations".into(),
        format!("--starttime=now-{}minutes", window.as_secs().div_ceil(60)),
        "--endtime=now".into(),
        // With a state list, records whose eligible time Slurm cleared (tasks running when
        // their array was held) are found too; a plain time window leaves them out.
        "--state=BF,CA,CD,DL,F,NF,OOM,PD,PR,R,RQ,RS,RV,S,TO".into(),
        format!("--name={name}"),
        format!("--format={SACCT_FORMAT}"),
    ]
}

// ---- classification ------------------------------------------------------------------------

/// Messages of an unreachable, busy or restarting slurmctld or slurmdbd: trying again helps.
const TRANSIENT: &[&str] = &[
    "socket timed out",
    "unable to contact slurm controller",
    "resource temporarily unavailable",
    "temporarily unable to accept job",
    "connection refused",
    "connection reset",
    "communication connection failure",
    "zero bytes were transmitted or received",
    "slurmctld is not responding",
    "problem talking to the database",
    "slurmdbd is down",
    "unable to connect to slurmdbd",
    "slurm backup controller in standby mode",
    "transport endpoint is not connected",
    "no route to host",
];

/// sbatch rejections caused by the job spec: the message part and the spec field.
const INVALID: &[(&str, &str)] = &[
    ("invalid partition", "spec.resources.partition"),
    ("invalid account", "spec.resources.account"),
    ("invalid qos", "spec.resources.qos"),
    ("invalid generic resource", "spec.resources.gres"),
    ("invalid gres", "spec.resources.gres"),
    ("invalid feature specification", "spec.resources.constraint"),
    ("requested time limit is invalid", "spec.resources.time"),
    ("invalid time limit", "spec.resources.time"),
    (
        "memory required by task is not available",
        "spec.resources.memory",
    ),
    (
        "more processors requested than permitted",
        "spec.resources.cpus",
    ),
    (
        "requested node configuration is not available",
        "spec.resources",
    ),
    ("invalid job array specification", "spec.executor.slurm"),
    ("invalid directive", "spec.executor.slurm.extraOptions"),
    ("unrecognized option", "spec.executor.slurm.extraOptions"),
    ("invalid option", "spec.executor.slurm.extraOptions"),
];

/// The error for a command that exited non-zero with `message`.
fn failure(operation: &str, message: &str) -> SlurmError {
    let lower = message.to_ascii_lowercase();
    if TRANSIENT.iter().any(|t| lower.contains(t)) {
        return SlurmError::Slurm {
            operation: operation.to_string(),
            message: message.to_string(),
            transient: true,
        };
    }
    if operation == "sbatch"
        && let Some((_, field)) = INVALID.iter().find(|(m, _)| lower.contains(m))
    {
        return SlurmError::invalid(*field, format!("Slurm refused the array: {message}"));
    }
    SlurmError::Slurm {
        operation: operation.to_string(),
        message: message.to_string(),
        transient: false,
    }
}

fn accounting_is_disabled(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("accounting storage is disabled")
        || lower.contains("slurm accounting is disabled")
        || lower.contains("accounting_storage/none")
}

/// Whether every line of a failed scancel/scontrol says only that some tasks are past what
/// the command does (ended, forgotten) or that others went fine: `scontrol hold 79` on an
/// array with ended tasks exits 1 with `79_0-3: Job has already finished` and
/// `79_4-5,7: No error`. For cancel, hold and release, nothing is left to do.
fn nothing_to_do(message: &str) -> bool {
    const BENIGN: &[&str] = &[
        "no error",
        "already completing or completed",
        "job has already finished",
        "invalid job id specified",
        "job is no longer pending execution",
    ];
    let mut lines = message
        .split(['\n', ';'])
        .map(|l| l.trim().to_ascii_lowercase())
        .filter(|l| !l.is_empty())
        .peekable();
    lines.peek().is_some() && lines.all(|l| BENIGN.iter().any(|b| l.contains(b)))
}

// ---- parsing -------------------------------------------------------------------------------

fn decode(operation: &str, message: impl Into<String>) -> SlurmError {
    SlurmError::Decode {
        operation: operation.to_string(),
        message: message.into(),
    }
}

/// A Slurm time limit in minutes, rounded up: `UNLIMITED`/`INFINITE` → `None`; otherwise
/// `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
pub fn parse_slurm_time(text: &str) -> std::result::Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("UNLIMITED")
        || t.eq_ignore_ascii_case("INFINITE")
        || t.eq_ignore_ascii_case("Partition_Limit")
        || t.eq_ignore_ascii_case("NONE")
    {
        return Ok(None);
    }
    let bad = || format!("`{text}` is not a Slurm time");
    let number = |s: &str| -> std::result::Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, t),
    };
    let parts = rest
        .split(':')
        .map(number)
        .collect::<std::result::Result<Vec<u64>, String>>()?;
    let (h, m, s) = match (days, parts.as_slice()) {
        (None, [m]) => (0, *m, 0),
        (None, [m, s]) => (0, *m, *s),
        (None, [h, m, s]) | (Some(_), [h, m, s]) => (*h, *m, *s),
        (Some(_), [h]) => (*h, 0, 0),
        (Some(_), [h, m]) => (*h, *m, 0),
        _ => return Err(bad()),
    };
    let seconds = days
        .unwrap_or(0)
        .checked_mul(86_400)
        .and_then(|d| d.checked_add(h.checked_mul(3600)?))
        .and_then(|x| x.checked_add(m.checked_mul(60)?))
        .and_then(|x| x.checked_add(s))
        .ok_or_else(bad)?;
    Ok(Some(seconds.div_ceil(60)))
}

/// `MaxArraySize = 1001` from `scontrol show config`.
fn parse_max_array_size(config: &str) -> Result<u32> {
    for line in config.lines() {
        if let Some((key, value)) = line.split_once('=')
            && key.trim() == "MaxArraySize"
        {
            return value.trim().parse().map_err(|_| {
                decode(
                    "scontrol show config",
                    format!("MaxArraySize `{}` is not a number", value.trim()),
                )
            });
        }
    }
    Err(decode(
        "scontrol show config",
        "no MaxArraySize in the configuration",
    ))
}

/// `scontrol --oneliner show partition`: one partition a line, `Key=Value` words.
fn parse_partitions(text: &str) -> Result<Vec<PartitionInfo>> {
    let op = "scontrol show partition";
    let mut partitions = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: BTreeMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let name = fields
            .get("PartitionName")
            .ok_or_else(|| decode(op, format!("no PartitionName in `{line}`")))?;
        let max_time = match fields.get("MaxTime") {
            Some(t) => parse_slurm_time(t).map_err(|e| decode(op, format!("{name}: {e}")))?,
            None => None,
        };
        partitions.push(PartitionInfo {
            name: name.to_string(),
            max_time_minutes: max_time,
            default: fields
                .get("Default")
                .is_some_and(|d| d.eq_ignore_ascii_case("YES")),
        });
    }
    Ok(partitions)
}

/// `--parsable`: `12345` or `12345;cluster`.
fn parse_sbatch(stdout: &str) -> Result<u64> {
    let line = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    let id = line.split(';').next().unwrap_or_default();
    id.parse()
        .map_err(|_| decode("sbatch", format!("no job id in `{}`", stdout.trim())))
}

/// sacct's `N:S` → (exit code, signal); signal 0 is none. squeue's `exit_code` is the raw
/// wait status instead (`256` for exit 1, `9` for SIGKILL), decoded the same way.
fn parse_exit_code(text: &str) -> (Option<i32>, Option<i32>) {
    let text = text.trim();
    let (code, signal) = match text.split_once(':') {
        Some((code, signal)) => (code.trim().parse().ok(), signal.trim().parse().ok()),
        None => match text.parse::<i32>() {
            Ok(status) => (Some((status >> 8) & 0xff), Some(status & 0x7f)),
            Err(_) => (None, None),
        },
    };
    (code, signal.filter(|s| *s != 0))
}

/// Array indices of a task id field: `7`, or a pending range `[3-9%2]`, `1,4-6`, `0-10:2`.
/// `None` when the field is not an array index (`N/A`, a plain job), or names an index past
/// [`MAX_ARRAY_INDEX`] or more indices than an array can have. A range cut short by Slurm
/// (`…`) keeps what it lists.
fn parse_indices(text: &str) -> Option<Vec<u32>> {
    let t = text.trim().trim_start_matches('[').trim_end_matches(']');
    let t = t.split('%').next().unwrap_or_default();
    if t.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for part in t.split(',') {
        let part = part.trim();
        if part.ends_with("...") || part.ends_with('…') {
            warn!(field = text, "Slurm shortened an array index list");
            break;
        }
        let (range, step) = match part.split_once(':') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
                if b < a || b > MAX_ARRAY_INDEX {
                    return None;
                }
                out.extend((a..=b).step_by(step as usize));
            }
            None => out.push(range.parse().ok().filter(|i| *i <= MAX_ARRAY_INDEX)?),
        }
        // Repeated ranges could still add up past any array (found by the slurm_cli fuzz target).
        if out.len() > MAX_ARRAY_INDEX as usize + 1 {
            return None;
        }
    }
    Some(out)
}

/// One record of squeue or sacct: an array job id and one or more of its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    array_job_id: u64,
    indices: Vec<u32>,
    name: String,
    comment: String,
    state: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: Option<String>,
}

fn reason(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty() && t != "None" && t != "(null)").then(|| t.to_string())
}

/// The comment, or `n/a`-like placeholders as empty.
fn comment(text: &str) -> String {
    let t = text.trim();
    if t == "(null)" || t.eq_ignore_ascii_case("N/A") {
        String::new()
    } else {
        t.to_string()
    }
}

/// `squeue --Format=ArrayJobID:|,ArrayTaskID:|,StateCompact:|,…`. Plain jobs with the same name
/// (task id `N/A`) are left out.
fn parse_squeue(text: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.splitn(7, SEP).collect();
        let [job, task, state, why, exit, name, note] = f.as_slice() else {
            return Err(decode("squeue", format!("unexpected line `{line}`")));
        };
        let array_job_id = job
            .trim()
            .parse()
            .map_err(|_| decode("squeue", format!("array job id `{job}` in `{line}`")))?;
        let Some(indices) = parse_indices(task) else {
            continue;
        };
        let (exit_code, signal) = parse_exit_code(exit);
        records.push(Record {
            array_job_id,
            indices,
            name: name.trim().to_string(),
            comment: comment(note),
            state: long_state(state.trim()),
            exit_code,
            signal,
            reason: reason(why),
        });
    }
    Ok(records)
}

/// squeue's compact state codes as the long names sacct and the REST API use.
fn long_state(code: &str) -> String {
    match code {
        "BF" => "BOOT_FAIL",
        "CA" => "CANCELLED",
        "CD" => "COMPLETED",
        "CF" => "CONFIGURING",
        "CG" => "COMPLETING",
        "DL" => "DEADLINE",
        "F" => "FAILED",
        "NF" => "NODE_FAIL",
        "OOM" => "OUT_OF_MEMORY",
        "PD" => "PENDING",
        "PR" => "PREEMPTED",
        "R" => "RUNNING",
        "RD" => "RESV_DEL_HOLD",
        "RF" => "REQUEUE_FED",
        "RH" => "REQUEUE_HOLD",
        "RQ" => "REQUEUED",
        "RS" => "RESIZING",
        "RV" => "REVOKED",
        "SI" => "SIGNALING",
        "SE" => "SPECIAL_EXIT",
        "SO" => "STAGE_OUT",
        "ST" => "STOPPED",
        "S" => "SUSPENDED",
        "TO" => "TIMEOUT",
        other => other,
    }
    .to_string()
}

/// `sacct --parsable2 --format=JobID,JobName,State,ExitCode,Reason,Comment,SubmitLine`.
/// Records that are not array tasks (`12345` alone) are left out.
fn parse_sacct(text: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.splitn(7, SEP).collect();
        let [id, name, state, exit, why, note, submit_line] = f.as_slice() else {
            return Err(decode("sacct", format!("unexpected line `{line}`")));
        };
        let Some((job, task)) = id.trim().split_once('_') else {
            continue;
        };
        let array_job_id = job
            .parse()
            .map_err(|_| decode("sacct", format!("job id `{id}` in `{line}`")))?;
        let Some(indices) = parse_indices(task) else {
            continue;
        };
        // The comment reaches slurmdbd only when a task starts, and only with
        // AccountingStoreFlags=job_comment; the submit line is always there.
        let mut note = comment(note);
        if note.is_empty() {
            note = option_of_submit_line(submit_line, "--comment").unwrap_or_default();
        }
        let (exit_code, signal) = parse_exit_code(exit);
        let state = state.trim().to_string();
        // sacct keeps the last reason a task waited for (`JobArrayTaskLimit`) after it ended.
        let pending = first_word(&state) == "PENDING";
        records.push(Record {
            array_job_id,
            indices,
            name: name.trim().to_string(),
            comment: note,
            state,
            exit_code,
            signal,
            reason: reason(why).filter(|_| pending),
        });
    }
    Ok(records)
}

/// The value of `option` (`--comment=X` or `--comment X`) in a stored sbatch command line.
fn option_of_submit_line(line: &str, option: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if let Some(value) = word
            .strip_prefix(option)
            .and_then(|rest| rest.strip_prefix('='))
        {
            return Some(value.to_string());
        }
        if word == option {
            return words.next().map(str::to_string);
        }
    }
    None
}

/// Arrays of `name` from both sources: sacct's records first, squeue's over them (slurmctld's
/// live state is newer than what reached slurmdbd), both expanded to one task per index.
///
/// A task cancelled while pending leaves no record at all: scancel just takes its index out
/// of the array's pending record. So indices that `cancelled` lists (this API cancelled them)
/// and that no record has are reported `CANCELLED`. (The indices an array was submitted with,
/// from sacct's submit line, cannot stand in for that list: a time-window `sacct` misses some
/// ended tasks, those whose array was held while they ran.)
fn merge(
    name: &str,
    accounted: Vec<Record>,
    live: Vec<Record>,
    cancelled: &HashMap<u64, BTreeSet<u32>>,
) -> Vec<ArrayJob> {
    struct Acc {
        name: String,
        comment: String,
        tasks: BTreeMap<u32, ArrayTask>,
    }
    let mut arrays: BTreeMap<u64, Acc> = BTreeMap::new();
    for (from_squeue, record) in accounted
        .into_iter()
        .map(|r| (false, r))
        .chain(live.into_iter().map(|r| (true, r)))
    {
        if record.name != name {
            continue;
        }
        let acc = arrays.entry(record.array_job_id).or_insert_with(|| Acc {
            name: record.name.clone(),
            comment: String::new(),
            tasks: BTreeMap::new(),
        });
        if acc.comment.is_empty() || (from_squeue && !record.comment.is_empty()) {
            acc.comment.clone_from(&record.comment);
        }
        for index in &record.indices {
            let mut task = ArrayTask {
                index: *index,
                state: record.state.clone(),
                exit_code: record.exit_code,
                signal: record.signal,
                reason: record.reason.clone(),
            };
            if matches!(exec_state(&task), ExecState::Queued | ExecState::Running) {
                // `0:0` while it has not ended is no exit code.
                task.exit_code = None;
                task.signal = None;
            }
            if let Some(old) = acc.tasks.get(index)
                && task.exit_code.is_none()
                && old.exit_code.is_some()
                && first_word(&old.state) == first_word(&task.state)
            {
                task.exit_code = old.exit_code;
                task.signal = old.signal;
            }
            acc.tasks.insert(*index, task);
        }
    }
    arrays
        .into_iter()
        .map(|(array_job_id, mut acc)| {
            for index in cancelled.get(&array_job_id).into_iter().flatten() {
                acc.tasks.entry(*index).or_insert_with(|| ArrayTask {
                    index: *index,
                    state: "CANCELLED".into(),
                    exit_code: None,
                    signal: None,
                    reason: None,
                });
            }
            ArrayJob {
                array_job_id,
                name: acc.name,
                comment: acc.comment,
                tasks: acc.tasks.into_values().collect(),
            }
        })
        .collect()
}

fn first_word(state: &str) -> &str {
    state.split([' ', '+']).next().unwrap_or_default()
}

/// What the Slurm commands' output parses to, through the same functions [`CliApi`] uses; for
/// the fuzz targets (fuzz/), which feed them arbitrary text. Each part is an `Err` when its
/// output does not parse.
#[doc(hidden)]
pub fn parse_outputs(
    name: &str,
    sbatch: &str,
    squeue: &str,
    sacct: &str,
    config: &str,
    partitions: &str,
) -> (Result<u64>, Result<Vec<ArrayJob>>, Result<ClusterInfo>) {
    let submitted = parse_sbatch(sbatch);
    let arrays = parse_squeue(squeue).and_then(|live| {
        let accounted = parse_sacct(sacct)?;
        Ok(merge(name, accounted, live, &HashMap::new()))
    });
    let cluster = parse_max_array_size(config).and_then(|max_array_size| {
        Ok(ClusterInfo {
            max_array_size,
            partitions: parse_partitions(partitions)?,
        })
    });
    (submitted, arrays, cluster)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use orch_core::ErrorCategory;

    use super::*;

    /// A directory of fake Slurm commands: each records its arguments, stdin and environment
    /// (`<name>.args.<n>`, `.stdin.<n>`, `.env.<n>` for its n-th call) and prints
    /// `<name>.out.<n>` or `<name>.out`, `<name>.err` on stderr, exits with `<name>.rc`, or
    /// sleeps `<name>.sleep` seconds.
    struct Fake {
        dir: tempfile::TempDir,
    }

    const SHIM: &str = r#"#!/bin/sh
d=$(dirname "$0"); n=$(basename "$0")
i=$(( $(cat "$d/$n.calls" 2>/dev/null || echo 0) + 1 )); echo $i > "$d/$n.calls"
for a in "$@"; do printf '%s\n' "$a"; done > "$d/$n.args.$i"
cat > "$d/$n.stdin.$i"
env > "$d/$n.env.$i"
if [ -f "$d/$n.out.$i" ]; then cat "$d/$n.out.$i"; elif [ -f "$d/$n.out" ]; then cat "$d/$n.out"; fi
if [ -f "$d/$n.err" ]; then cat "$d/$n.err" >&2; fi
if [ -f "$d/$n.sleep" ]; then exec sleep "$(cat "$d/$n.sleep")"; fi
exit "$(cat "$d/$n.rc" 2>/dev/null || echo 0)"
"#;

    impl Fake {
        fn new() -> Self {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            for name in ["sbatch", "squeue", "sacct", "scancel", "scontrol"] {
                let path = dir.path().join(name);
                std::fs::write(&path, SHIM).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            Fake { dir }
        }

        fn path(&self, file: &str) -> PathBuf {
            self.dir.path().join(file)
        }

        fn api(&self) -> CliApi {
            CliApi::new(Some(self.dir.path().to_path_buf()))
        }

        fn set(&self, file: &str, text: &str) -> &Self {
            std::fs::write(self.path(file), text).unwrap();
            self
        }

        fn calls(&self, name: &str) -> usize {
            std::fs::read_to_string(self.path(&format!("{name}.calls")))
                .map(|s| s.trim().parse().unwrap())
                .unwrap_or(0)
        }

        fn args(&self, name: &str, call: usize) -> Vec<String> {
            std::fs::read_to_string(self.path(&format!("{name}.args.{call}")))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }

        fn read(&self, file: &str) -> String {
            std::fs::read_to_string(self.path(file)).unwrap()
        }
    }

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cli")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn submission() -> ArraySubmission {
        ArraySubmission {
            name: "reviews-1a2b".into(),
            comment: "orch:work:g3:b1001:0123456789ab".into(),
            indices: vec![0, 1, 2, 3, 7, 9, 10],
            max_running: Some(4),
            script: "#!/bin/sh\nexec orch-worker run\n".into(),
            cpus_per_task: 2,
            memory_mb: 1536,
            time_minutes: 90,
            partition: Some("short".into()),
            account: Some("orch".into()),
            qos: Some("normal".into()),
            gres: Some("gpu:1".into()),
            constraint: Some("avx2&ib".into()),
            output: "/shared/logs/task-b1001-%A_%a.log".into(),
            signal: "B:TERM@60".into(),
            extra: vec!["--exclusive".into(), "--mail-type=END".into()],
            environment: vec![
                ("ORCH_LOG".into(), "info,orch_worker=debug".into()),
                ("AWS_ENDPOINT_URL".into(), "http://s3.local:9000".into()),
            ],
            workdir: "/shared/work dir".into(),
        }
    }

    /// Found by the slurm_cli fuzz target: `0-4294967295` was expanded into 4 billion indices
    /// (16 GiB). A range past any array, or ranges adding up past one, are not array indices.
    #[test]
    fn an_index_range_past_any_array_is_refused_without_allocating_it() {
        assert_eq!(parse_indices("0-4294967295"), None);
        assert_eq!(parse_indices("4000001"), None);
        let repeated = ["0-4000000"; 3].join(",");
        assert_eq!(parse_indices(&repeated), None);
        assert_eq!(
            parse_indices("3999999-4000000"),
            Some(vec![3_999_999, 4_000_000])
        );
        let line = "1|0-4294967295|R|None|0|orch-job|x\n";
        let (_, arrays, _) = parse_outputs("orch-job", "", line, "", "", "");
        assert_eq!(arrays.unwrap(), Vec::new());
    }

    #[tokio::test]
    async fn sbatch_gets_every_option_and_the_script_on_stdin() {
        let fake = Fake::new();
        fake.set("sbatch.out", "4242;orch\n");
        let id = fake.api().submit(&submission()).await.unwrap();
        assert_eq!(id, 4242);
        assert_eq!(
            fake.args("sbatch", 1),
            [
                "--parsable",
                "--job-name=reviews-1a2b",
                "--comment=orch:work:g3:b1001:0123456789ab",
                "--array=0-3,7,9-10%4",
                "--cpus-per-task=2",
                "--mem=1536M",
                "--time=90",
                "--partition=short",
                "--account=orch",
                "--qos=normal",
                "--gres=gpu:1",
                "--constraint=avx2&ib",
                "--output=/shared/logs/task-b1001-%A_%a.log",
                "--error=/shared/logs/task-b1001-%A_%a.log",
                "--signal=B:TERM@60",
                "--chdir=/shared/work dir",
                "--export=NIL,ORCH_LOG,AWS_ENDPOINT_URL",
                "--exclusive",
                "--mail-type=END",
            ]
        );
        assert_eq!(
            fake.read("sbatch.stdin.1"),
            "#!/bin/sh\nexec orch-worker run\n"
        );
        // The tasks' variables reach sbatch through its environment, commas and all.
        let env = fake.read("sbatch.env.1");
        assert!(
            env.lines().any(|l| l == "ORCH_LOG=info,orch_worker=debug"),
            "{env}"
        );
        assert!(
            env.lines()
                .any(|l| l == "AWS_ENDPOINT_URL=http://s3.local:9000")
        );

        // Optional options are left out when unset; a bare id parses too.
        let fake = Fake::new();
        fake.set("sbatch.out", &fixture("cliapi_sbatch.txt"));
        let minimal = ArraySubmission {
            partition: None,
            account: None,
            qos: None,
            gres: None,
            constraint: None,
            extra: vec![],
            max_running: None,
            ..submission()
        };
        assert_eq!(fake.api().submit(&minimal).await.unwrap(), 118);
        let args = fake.args("sbatch", 1);
        assert!(args.contains(&"--array=0-3,7,9-10".to_string()), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("--partition")
            || a.starts_with("--account")
            || a.starts_with("--qos")
            || a.starts_with("--gres")
            || a.starts_with("--constraint")));
        assert_eq!(
            args.last().map(String::as_str),
            Some("--export=NIL,ORCH_LOG,AWS_ENDPOINT_URL")
        );
    }

    #[tokio::test]
    async fn sbatch_exports_the_tasks_variables_by_name_and_nothing_else() {
        // No variables: nothing of the submitter's environment.
        let fake = Fake::new();
        fake.set("sbatch.out", "7\n");
        let api = fake.api().with_env("SLURM_JWT", "eyJ.secret.jwt");
        let bare = ArraySubmission {
            environment: vec![],
            ..submission()
        };
        assert_eq!(api.submit(&bare).await.unwrap(), 7);
        let args = fake.args("sbatch", 1);
        assert!(args.contains(&"--export=NIL".to_string()), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("--export=ALL")));
        // Slurm copies SLURM_* into the job whatever --export says: sbatch never gets the
        // token, while the other commands keep it.
        assert!(!fake.read("sbatch.env.1").contains("SLURM_JWT"));
        api.arrays("j").await.unwrap();
        assert!(
            fake.read("squeue.env.1")
                .contains("SLURM_JWT=eyJ.secret.jwt")
        );

        // A name that could smuggle a value or a keyword into the list is refused, unsent.
        for bad in ["A=B", "ALL,X", "1PATH", "", "PATH ", "ÄPFEL"] {
            let fake = Fake::new();
            let sub = ArraySubmission {
                environment: vec![("ORCH_LOG".into(), "info".into()), (bad.into(), "v".into())],
                ..submission()
            };
            match fake.api().submit(&sub).await {
                Err(SlurmError::Invalid { reason, .. }) => {
                    assert!(reason.contains("not a variable name"), "{reason}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
            assert_eq!(fake.calls("sbatch"), 0);
        }
        assert_eq!(
            export_option(&[("_X1".into(), "a,b=c".into()), ("y".into(), String::new())]).unwrap(),
            "--export=NIL,_X1,y"
        );
    }

    #[tokio::test]
    async fn sbatch_refusals_are_classified() {
        // Recorded on the test cluster (cliapi_capture.sh).
        let invalid_partition = fixture("cliapi_sbatch_invalid_partition.stderr");
        let unreachable = fixture("cliapi_sbatch_unreachable.stderr");
        for (stderr, category, field) in [
            (
                invalid_partition.as_str(),
                ErrorCategory::Invalid,
                Some("spec.resources.partition"),
            ),
            (unreachable.as_str(), ErrorCategory::Transient, None),
            (
                "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
                ErrorCategory::Invalid,
                Some("spec.resources.time"),
            ),
            (
                "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
                ErrorCategory::Transient,
                None,
            ),
            (
                "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying\nsbatch: error: Batch job submission failed: Resource temporarily unavailable",
                ErrorCategory::Transient,
                None,
            ),
            (
                "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
                ErrorCategory::Permanent,
                None,
            ),
        ] {
            let fake = Fake::new();
            fake.set("sbatch.err", stderr).set("sbatch.rc", "1");
            let e = fake.api().submit(&submission()).await.unwrap_err();
            assert_eq!(e.category(), category, "{stderr}: {e}");
            if let Some(field) = field {
                assert!(e.to_string().starts_with(field), "{e}");
            }
            assert!(e.to_string().contains("Batch job submission failed"), "{e}");
        }
        // Output without a job id.
        let fake = Fake::new();
        fake.set("sbatch.out", "Submitted batch job\n");
        let e = fake.api().submit(&submission()).await.unwrap_err();
        assert!(matches!(e, SlurmError::Decode { .. }), "{e}");
    }

    const FIXTURE_JOB: &str = "orch-cli-fixture-1795709880";

    fn task(
        index: u32,
        state: &str,
        exit: Option<(i32, Option<i32>)>,
        reason: Option<&str>,
    ) -> ArrayTask {
        ArrayTask {
            index,
            state: state.into(),
            exit_code: exit.map(|(c, _)| c),
            signal: exit.and_then(|(_, s)| s),
            reason: reason.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn cluster_info_from_scontrol() {
        let fake = Fake::new();
        fake.set(
            "scontrol.out.1",
            &fixture("cliapi_scontrol_show_config.txt"),
        )
        .set(
            "scontrol.out.2",
            &fixture("cliapi_scontrol_show_partition.txt"),
        );
        let info = fake.api().cluster_info().await.unwrap();
        assert_eq!(
            info,
            ClusterInfo {
                max_array_size: 1001,
                partitions: vec![
                    PartitionInfo {
                        name: "debug".into(),
                        max_time_minutes: Some(30),
                        default: true,
                    },
                    PartitionInfo {
                        name: "short".into(),
                        max_time_minutes: Some(5),
                        default: false,
                    },
                ],
            }
        );
        assert_eq!(fake.args("scontrol", 1), ["show", "config"]);
        assert_eq!(
            fake.args("scontrol", 2),
            ["--oneliner", "--all", "show", "partition"]
        );

        let fake = Fake::new();
        fake.set("scontrol.out.1", "MaxArraySize = 40001\n").set(
            "scontrol.out.2",
            "PartitionName=long Default=NO MaxTime=UNLIMITED State=UP\n\
             PartitionName=week Default=YES MaxTime=7-00:00:00 State=UP\n",
        );
        let info = fake.api().cluster_info().await.unwrap();
        assert_eq!(info.max_array_size, 40001);
        assert_eq!(info.partitions[0].max_time_minutes, None);
        assert_eq!(info.partitions[1].max_time_minutes, Some(7 * 1440));
        assert!(info.partitions[1].default);

        let fake = Fake::new();
        fake.set("scontrol.out.1", "Configuration data as of now\n");
        let e = fake.api().cluster_info().await.unwrap_err();
        assert!(matches!(e, SlurmError::Decode { .. }), "{e}");
    }

    /// Recorded (cliapi_capture.sh): an array `0-7%2` whose task 0 exited 0, 1 exited 3, 2
    /// was killed by SIGKILL, 3 was cancelled while running, 4 and 5 run, 6 was cancelled
    /// while pending (Slurm keeps no record of it) and 7 waits.
    #[tokio::test]
    async fn arrays_merge_squeue_over_sacct_with_exit_codes() {
        let fake = Fake::new();
        fake.set("squeue.out", &fixture("cliapi_squeue.txt"))
            .set("sacct.out", &fixture("cliapi_sacct.txt"));
        let api = fake.api();
        let arrays = api.arrays(FIXTURE_JOB).await.unwrap();
        assert_eq!(arrays.len(), 1, "{arrays:?}");
        let array = &arrays[0];
        assert_eq!(array.array_job_id, 118);
        assert_eq!(array.name, FIXTURE_JOB);
        assert_eq!(array.comment, "orch:work:g0:b0:0123456789ab");
        assert_eq!(
            array.tasks,
            [
                task(0, "COMPLETED", Some((0, None)), None),
                task(1, "FAILED", Some((3, None)), Some("NonZeroExitCode")),
                task(2, "FAILED", Some((0, Some(9))), Some("JobLaunchFailure")),
                task(3, "CANCELLED", Some((0, Some(15))), None),
                task(4, "RUNNING", None, None),
                task(5, "RUNNING", None, None),
                task(7, "PENDING", None, Some("JobArrayTaskLimit")),
            ]
        );
        // One squeue and one sacct, with the formats the parsers expect.
        assert_eq!((fake.calls("squeue"), fake.calls("sacct")), (1, 1));
        assert_eq!(
            fake.args("squeue", 1),
            [
                "--noheader",
                "--array",
                "--me",
                "--states=all",
                &format!("--name={FIXTURE_JOB}"),
                "--Format=ArrayJobID:|,ArrayTaskID:|,StateCompact:|,Reason:|,exit_code:|,Name:|,Comment:",
            ]
        );
        assert_eq!(
            fake.args("sacct", 1),
            [
                "--noheader",
                "--parsable2",
                "--allocations",
                "--starttime=now-10080minutes",
                "--endtime=now",
                "--state=BF,CA,CD,DL,F,NF,OOM,PD,PR,R,RQ,RS,RV,S,TO",
                &format!("--name={FIXTURE_JOB}"),
                "--format=JobID,JobName,State,ExitCode,Reason,Comment,SubmitLine",
            ]
        );
        for name in ["squeue", "sacct"] {
            let env = fake.read(&format!("{name}.env.1"));
            assert!(env.lines().any(|l| l == "SLURM_BITSTR_LEN=0"), "{name}");
        }

        // Task 6, cancelled by this API while pending, is reported cancelled.
        api.cancel(118, &[6]).await.unwrap();
        assert_eq!(fake.args("scancel", 1), ["118_[6]"]);
        let arrays = api.arrays(FIXTURE_JOB).await.unwrap();
        let six = arrays[0].tasks.iter().find(|t| t.index == 6).unwrap();
        assert_eq!(six.state, "CANCELLED");
        assert!(matches!(
            exec_state(six),
            ExecState::Failed {
                reason: orch_core::backend::ExecFailure::Cancelled,
                ..
            }
        ));

        // Other names (another job, a prefix) are not this job's.
        assert!(api.arrays("orch-cli-fixture").await.unwrap().is_empty());
    }

    /// After MinJobAge slurmctld forgets ended tasks: sacct alone has them, and its submit line
    /// has the comment where the comment field is empty (not stored until the task ends, or
    /// never without AccountingStoreFlags=job_comment).
    #[tokio::test]
    async fn ended_arrays_come_from_sacct_alone() {
        let fake = Fake::new();
        fake.set("squeue.out", "")
            .set("sacct.out", &fixture("cliapi_sacct_cancelled.txt"));
        let arrays = fake.api().arrays(FIXTURE_JOB).await.unwrap();
        let array = &arrays[0];
        assert_eq!(array.comment, "orch:work:g0:b0:0123456789ab");
        let states: Vec<(u32, &str, Option<i32>, Option<i32>)> = array
            .tasks
            .iter()
            .map(|t| (t.index, t.state.as_str(), t.exit_code, t.signal))
            .collect();
        assert_eq!(
            states,
            [
                (0, "COMPLETED", Some(0), None),
                (1, "FAILED", Some(3), None),
                (2, "FAILED", Some(0), Some(9)),
                (3, "CANCELLED by 0", Some(0), None),
                (4, "CANCELLED by 0", Some(0), None),
                (5, "CANCELLED by 0", Some(0), None),
                (7, "CANCELLED by 0", Some(0), None),
            ]
        );
        // The reason a task last waited for is not why it ended.
        assert!(array.tasks.iter().all(|t| t.reason.is_none()), "{array:?}");

        // Comments from the submit line of records without one.
        let records = parse_sacct(&fixture("cliapi_sacct.txt")).unwrap();
        assert!(records.iter().any(|r| r.indices == [4]));
        assert!(
            records
                .iter()
                .all(|r| r.comment == "orch:work:g0:b0:0123456789ab")
        );
    }

    /// Pending tasks Slurm keeps as one record: sacct's `45_[4-7%2]` (as recorded by the other
    /// fixtures, sacct.txt), squeue's `0-5%2` without `--array`. squeue's state of a task wins
    /// over sacct's (slurmdbd lags behind slurmctld).
    #[tokio::test]
    async fn collapsed_pending_records_expand_and_squeue_wins() {
        let fake = Fake::new();
        fake.set(
            "sacct.out",
            "45_0|j|COMPLETED|0:0|None|orch:work:g0:b0:aa|sbatch --comment=orch:work:g0:b0:aa\n\
             45_3|j|RUNNING|0:0|None||sbatch --parsable --comment=orch:work:g0:b0:aa --array=0-7%2\n\
             45_[4-7%2]|j|PENDING|0:0|JobArrayTaskLimit||sbatch --comment=orch:work:g0:b0:aa\n\
             46|j|COMPLETED|0:0|None||sbatch --wrap=true\n",
        )
        .set(
            "squeue.out",
            "45|3|CD|None|0|j|orch:work:g0:b0:aa\n\
             45|4-5%2|PD|Priority|0|j|orch:work:g0:b0:aa\n\
             47|N/A|CD|None|0|j|\n\
             48|[1,3-4]|PD|JobHeldAdmin|0|j|orch:merge1:g0:b0:bb\n",
        );
        let arrays = fake.api().arrays("j").await.unwrap();
        type Summary<'a> = (u64, &'a str, Vec<(u32, &'a str, Option<&'a str>)>);
        let summary: Vec<Summary> = arrays
            .iter()
            .map(|a| {
                (
                    a.array_job_id,
                    a.comment.as_str(),
                    a.tasks
                        .iter()
                        .map(|t| (t.index, t.state.as_str(), t.reason.as_deref()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    45,
                    "orch:work:g0:b0:aa",
                    vec![
                        (0, "COMPLETED", None),
                        (3, "COMPLETED", None),
                        (4, "PENDING", Some("Priority")),
                        (5, "PENDING", Some("Priority")),
                        (6, "PENDING", Some("JobArrayTaskLimit")),
                        (7, "PENDING", Some("JobArrayTaskLimit")),
                    ]
                ),
                (
                    48,
                    "orch:merge1:g0:b0:bb",
                    vec![
                        (1, "PENDING", Some("JobHeldAdmin")),
                        (3, "PENDING", Some("JobHeldAdmin")),
                        (4, "PENDING", Some("JobHeldAdmin")),
                    ]
                ),
            ]
        );
        // squeue's exit code: squeue says `0` for a task sacct says ended with 0:0.
        assert_eq!(arrays[0].tasks[1].exit_code, Some(0));
    }

    #[tokio::test]
    async fn without_accounting_squeue_alone_is_asked() {
        let fake = Fake::new();
        fake.set("squeue.out", &fixture("cliapi_squeue.txt"))
            .set("sacct.err", &fixture("cliapi_sacct_disabled.stderr"))
            .set("sacct.rc", "1");
        let api = fake.api();
        assert!(!api.accounting_disabled());
        for _ in 0..3 {
            let arrays = api.arrays(FIXTURE_JOB).await.unwrap();
            assert_eq!(arrays[0].tasks.len(), 7);
        }
        assert!(api.accounting_disabled());
        assert_eq!((fake.calls("squeue"), fake.calls("sacct")), (3, 1));

        // Other sacct failures are errors (a task slurmctld forgot would look lost).
        let fake = Fake::new();
        fake.set("squeue.out", "")
            .set(
                "sacct.err",
                "sacct: error: Problem talking to the database: Connection refused",
            )
            .set("sacct.rc", "1");
        let api = fake.api();
        let e = api.arrays("j").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        assert!(!api.accounting_disabled());
        fake.set("sacct.err", "sacct: error: Unknown arguments")
            .set("sacct.rc", "1");
        let e = api.arrays("j").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_controller_is_transient() {
        let fake = Fake::new();
        fake.set("squeue.err", &fixture("cliapi_squeue_unreachable.stderr"))
            .set("squeue.rc", "1");
        let e = fake.api().arrays("j").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        assert!(
            e.to_string().contains("Unable to contact slurm controller"),
            "{e}"
        );
        for message in [
            "slurm_load_jobs error: Socket timed out on send/recv operation",
            "slurm_load_jobs error: Resource temporarily unavailable",
        ] {
            fake.set("squeue.err", message);
            let e = fake.api().arrays("j").await.unwrap_err();
            assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        }
        fake.set("squeue.err", "squeue: error: Invalid user: nobody2");
        let e = fake.api().arrays("j").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
        // Garbage on stdout.
        let fake = Fake::new();
        fake.set("squeue.out", "JOBID PARTITION NAME\n");
        let e = fake.api().arrays("j").await.unwrap_err();
        assert!(matches!(e, SlurmError::Decode { .. }), "{e}");
    }

    #[tokio::test]
    async fn cancel_hold_and_release_commands() {
        let fake = Fake::new();
        let api = fake.api();
        api.cancel(12, &[9, 1, 2, 3, 5, 3]).await.unwrap();
        api.cancel(12, &[]).await.unwrap();
        assert_eq!(fake.args("scancel", 1), ["12_[1-3,5,9]"]);
        assert_eq!(fake.args("scancel", 2), ["12"]);
        api.hold(12).await.unwrap();
        api.release(12).await.unwrap();
        assert_eq!(fake.args("scontrol", 1), ["hold", "12"]);
        assert_eq!(fake.args("scontrol", 2), ["release", "12"]);

        // Held (recorded): the pending task waits with JobHeldAdmin, the running ones go on.
        fake.set("squeue.out", &fixture("cliapi_squeue_held.txt"))
            .set("sacct.out", "");
        let arrays = api.arrays(FIXTURE_JOB).await.unwrap();
        let tasks = &arrays[0].tasks;
        let seven = tasks.iter().find(|t| t.index == 7).unwrap();
        assert_eq!(
            (seven.state.as_str(), seven.reason.as_deref()),
            ("PENDING", Some("JobHeldAdmin"))
        );
        assert_eq!(exec_state(seven), ExecState::Queued);
        let running: Vec<u32> = tasks
            .iter()
            .filter(|t| exec_state(t) == ExecState::Running)
            .map(|t| t.index)
            .collect();
        assert_eq!(running, [4, 5]);

        // `scontrol hold` of an array with ended tasks exits 1, yet held the pending ones
        // (recorded); an array Slurm forgot has nothing to hold.
        fake.set("scontrol.err", &fixture("cliapi_scontrol_hold_stderr.txt"))
            .set("scontrol.rc", "1");
        api.hold(110).await.unwrap();
        api.release(110).await.unwrap();
        fake.set(
            "scontrol.err",
            "Invalid job id specified for job 99999\nslurm_suspend error: Invalid job id specified",
        );
        api.hold(99999).await.unwrap();
        // A real refusal among them is an error.
        fake.set(
            "scontrol.err",
            "110_0-3: Job has already finished\n110_4: Access/permission denied",
        );
        let e = api.hold(110).await.unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
        fake.set(
            "scancel.err",
            "scancel: error: Unable to contact slurm controller (connect failure)",
        )
        .set("scancel.rc", "1");
        let e = api.cancel(12, &[1]).await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_transient_and_a_missing_one_permanent() {
        let fake = Fake::new();
        fake.set("squeue.sleep", "30");
        let api = fake.api().with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let e = api.arrays("j").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        assert!(e.to_string().contains("no answer within"), "{e}");

        let empty = tempfile::tempdir().unwrap();
        let api = CliApi::new(Some(empty.path().to_path_buf()));
        let e = api.cluster_info().await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn slurm_times_in_minutes() {
        for (text, minutes) in [
            ("UNLIMITED", None),
            ("INFINITE", None),
            ("30", Some(30)),
            ("30:00", Some(30)),
            ("30:01", Some(31)),
            ("00:30:00", Some(30)),
            ("1:00:00", Some(60)),
            ("1-00:00:00", Some(1440)),
            ("2-12", Some(2 * 1440 + 12 * 60)),
            ("1-2:30", Some(1440 + 150)),
            ("0:45", Some(1)),
            ("0", Some(0)),
        ] {
            assert_eq!(parse_slurm_time(text), Ok(minutes), "{text}");
        }
        for bad in ["", "abc", "1:2:3:4", "-5", "1-", "1-2:3:4:5", "1.5", "1:-2"] {
            assert!(parse_slurm_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_lists_expand() {
        assert_eq!(parse_indices("7"), Some(vec![7]));
        assert_eq!(parse_indices("[3-9%2]"), Some(vec![3, 4, 5, 6, 7, 8, 9]));
        assert_eq!(parse_indices("[1,4-6]"), Some(vec![1, 4, 5, 6]));
        assert_eq!(parse_indices("0-10:5"), Some(vec![0, 5, 10]));
        assert_eq!(parse_indices("N/A"), None);
        assert_eq!(parse_indices("[1-3,5..."), Some(vec![1, 2, 3]));
    }

    #[test]
    fn exit_codes_split_into_code_and_signal() {
        assert_eq!(parse_exit_code("0:0"), (Some(0), None));
        assert_eq!(parse_exit_code("1:0"), (Some(1), None));
        assert_eq!(parse_exit_code("0:15"), (Some(0), Some(15)));
        assert_eq!(parse_exit_code("137:9"), (Some(137), Some(9)));
        assert_eq!(parse_exit_code(""), (None, None));
        // squeue's exit_code is the wait status.
        assert_eq!(parse_exit_code("0"), (Some(0), None));
        assert_eq!(parse_exit_code("768"), (Some(3), None));
        assert_eq!(parse_exit_code("9"), (Some(0), Some(9)));
        assert_eq!(parse_exit_code("15"), (Some(0), Some(15)));
    }
}
