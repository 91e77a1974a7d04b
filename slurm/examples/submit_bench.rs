//! Benchmark driver for `bench/slurm_submit.sh`: submits N tasks (default 100 000) to a real
//! Slurm cluster through orch's [`SlurmExecutor`] over each transport (`rest`, `cli`), and the
//! same tasks the ways a researcher would without orch — one `sbatch --array` per
//! `MaxArraySize` tasks ("plain arrays"), and one `sbatch` per task ("naive", measured on a
//! smaller count and extrapolated) — and prints what each cost: wall time, submit calls, and
//! slurmctld's load (its CPU time from `/proc`, `sdiag` counters).
//!
//! ```text
//! cargo run --release -p orch-slurm --example submit_bench -- --reservation NAME \
//!     [--tasks 100000] [--naive 1000] [--transports rest,cli] [--no-peers]
//! ```
//!
//! Needs the Slurm commands and the cluster's variables (`SLURM_CONF`; `SLURMRESTD_URL` and
//! `SLURM_JWT` for rest; `ORCH_SLURM_DIR` for the daemons' pid files, default
//! `/tmp/orch-slurm`), as `tests/slurm/start.sh` writes them; run on the slurmctld host.
//!
//! **The tasks never run.** Every submission names a reservation that starts a day later
//! (`bench/slurm_submit.sh` creates it and deletes it at the end), so all tasks stay pending
//! (reason `Reservation`) until they are cancelled: what is measured is the submission path
//! — arrays cut, sbatch/REST calls, slurmctld taking the job records — not task execution.
//! orch gets the reservation through `spec.executor.slurm.extraOptions: [--reservation=…]`,
//! which is on the allow-list, so orch's side is the executor's own unchanged code path
//! (`SlurmExecutor::connect`, `Executor::submit`, `poll`, `cancel`); the peers pass the same
//! `--reservation`. (`--hold` would do the same for the commands, but it is not on the
//! allow-list and slurmrestd's submit as orch builds it has no field for it.)
//!
//! Per approach: submission; then, for orch, one `poll` of all N tasks (one `arrays(name)`
//! query of Slurm plus the mapping to task states, which must say every task is queued), the
//! query alone, its payload (the `squeue`/`sacct` output with `CliApi`'s arguments, or the
//! REST jobs listing), then `cancel` of every task and the wait until Slurm lists none pending.
//! slurmctld's CPU time and the sdiag counters are differences over each phase; `sdiag` is
//! also sampled once a second for the peak server thread count and agent queue size (its own
//! `REQUEST_STATS_INFO` calls are left out of the RPC time). The cluster may be shared: other
//! clients' RPCs in the same seconds count too.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use orch_core::backend::{ExecState, Executor};
use orch_core::model::{TaskGroup, TaskKind};
use orch_core::spec::{ResourcesSpec, SlurmExecutorSpec, SlurmTransport};
use orch_slurm::cli::CliApi;
use orch_slurm::rest::{PlainHttp, RestApi, TokenSource};
use orch_slurm::submission::{WorkerCommand, parse_executor_id};
use orch_slurm::{SlurmApi, SlurmExecutor, SlurmLaunch};

type BoxResult<T> = Result<T, Box<dyn Error>>;

/// The tasks' limits: small, and under the test cluster's shortest partition limit.
const TIME: &str = "5m";
const MEMORY: &str = "100Mi";
/// How long cancelled tasks may take to leave the queue.
const GONE_TIMEOUT: Duration = Duration::from_secs(600);

// `CliApi`'s query, for measuring its payload (slurm/src/cli.rs: SQUEUE_FORMAT, SACCT_FORMAT,
// squeue_args, sacct_args).
const SQUEUE_FORMAT: &str =
    "ArrayJobID:|,ArrayTaskID:|,StateCompact:|,Reason:|,exit_code:|,Name:|,Comment:";
const SACCT_FORMAT: &str = "JobID,JobName,State,ExitCode,Reason,Comment,SubmitLine";

struct Args {
    tasks: u32,
    naive: u32,
    transports: Vec<SlurmTransport>,
    reservation: String,
    peers: bool,
}

fn usage() -> String {
    "usage: submit_bench --reservation NAME [--tasks N] [--naive M] [--transports rest,cli] \
     [--no-peers]"
        .to_string()
}

fn parse_args() -> BoxResult<Args> {
    let mut args = Args {
        tasks: 100_000,
        naive: 1000,
        transports: vec![SlurmTransport::Rest, SlurmTransport::Cli],
        reservation: String::new(),
        peers: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--tasks" => args.tasks = value()?.parse()?,
            "--naive" => args.naive = value()?.parse()?,
            "--reservation" => args.reservation = value()?,
            "--transports" => {
                args.transports = value()?
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(|t| match t {
                        "cli" => Ok(SlurmTransport::Cli),
                        "rest" => Ok(SlurmTransport::Rest),
                        other => Err(format!("unknown transport `{other}`")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--no-peers" => args.peers = false,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{}", usage()).into()),
        }
    }
    if args.reservation.is_empty() {
        return Err(format!(
            "--reservation is required: a reservation that starts later keeps the tasks \
             pending (bench/slurm_submit.sh creates one)\n{}",
            usage()
        )
        .into());
    }
    if args.tasks == 0 {
        return Err("--tasks must be at least 1".into());
    }
    Ok(args)
}

fn transport_name(t: SlurmTransport) -> &'static str {
    match t {
        SlurmTransport::Cli => "cli",
        SlurmTransport::Rest => "rest",
    }
}

// ---- slurmctld's load ----------------------------------------------------------------------

/// The daemons measured, by their pid files under `ORCH_SLURM_DIR/run`.
struct Daemons {
    slurmctld: u32,
    slurmrestd: Option<u32>,
    clock_ticks: f64,
}

impl Daemons {
    fn find() -> BoxResult<Self> {
        let dir = PathBuf::from(
            std::env::var("ORCH_SLURM_DIR").unwrap_or_else(|_| "/tmp/orch-slurm".into()),
        )
        .join("run");
        let pid = |name: &str| -> Option<u32> {
            std::fs::read_to_string(dir.join(format!("{name}.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let slurmctld =
            pid("slurmctld").ok_or_else(|| format!("no pid in {}/slurmctld.pid", dir.display()))?;
        let clock_ticks = command_output(Command::new("getconf").arg("CLK_TCK"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        let d = Daemons {
            slurmctld,
            slurmrestd: pid("slurmrestd"),
            clock_ticks,
        };
        d.cpu(d.slurmctld)
            .ok_or_else(|| format!("slurmctld (pid {slurmctld}) is not running"))?;
        Ok(d)
    }

    /// A process's CPU time (user + system, all threads) in seconds.
    fn cpu(&self, pid: u32) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name in parentheses; utime and stime are fields 14, 15.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / self.clock_ticks)
    }
}

/// What `sdiag` says: the two gauges, and (count, total µs) per RPC type.
#[derive(Debug, Clone, Default)]
struct Sdiag {
    server_threads: u64,
    agent_queue: u64,
    rpcs: BTreeMap<String, (u64, u64)>,
}

fn sdiag() -> BoxResult<Sdiag> {
    let text = command_output(&mut Command::new("sdiag"))?;
    let mut s = Sdiag::default();
    let mut in_rpcs = false;
    for line in text.lines() {
        let gauge = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(v) = gauge("Server thread count:") {
            s.server_threads = v;
        } else if let Some(v) = gauge("Agent queue size:") {
            s.agent_queue = v;
        } else if line.starts_with("Remote Procedure Call statistics by message type") {
            in_rpcs = true;
        } else if line.starts_with("Remote Procedure Call statistics by user") {
            in_rpcs = false;
        } else if in_rpcs {
            let mut words = line.split_whitespace();
            let Some(name) = words.next() else { continue };
            let mut count = None;
            let mut total = None;
            for w in words {
                if let Some(v) = w.strip_prefix("count:") {
                    count = v.parse().ok();
                } else if let Some(v) = w.strip_prefix("total_time:") {
                    total = v.parse().ok();
                }
            }
            if let (Some(c), Some(t)) = (count, total) {
                s.rpcs.insert(name.to_string(), (c, t));
            }
        }
    }
    Ok(s)
}

/// What one phase cost.
#[derive(Debug, Clone, Default)]
struct Measure {
    wall: f64,
    ctld_cpu: f64,
    restd_cpu: Option<f64>,
    submit_rpcs: u64,
    job_info_rpcs: u64,
    /// slurmctld's time in RPC handlers (all types but sdiag's own), seconds.
    rpc_time: f64,
    max_threads: u64,
    max_agent_queue: u64,
}

/// Measures from [`Probe::start`] to [`Probe::stop`].
struct Probe<'a> {
    daemons: &'a Daemons,
    t0: Instant,
    ctld0: f64,
    restd0: Option<f64>,
    sdiag0: Sdiag,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<(u64, u64)>,
}

impl<'a> Probe<'a> {
    fn start(daemons: &'a Daemons) -> BoxResult<Self> {
        let sdiag0 = sdiag()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let first = (sdiag0.server_threads, sdiag0.agent_queue);
        let sampler = std::thread::spawn(move || {
            let (mut threads, mut queue) = first;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(s) = sdiag() {
                    threads = threads.max(s.server_threads);
                    queue = queue.max(s.agent_queue);
                }
                for _ in 0..10 {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            (threads, queue)
        });
        Ok(Probe {
            daemons,
            ctld0: daemons.cpu(daemons.slurmctld).unwrap_or(f64::NAN),
            restd0: daemons.slurmrestd.and_then(|p| daemons.cpu(p)),
            sdiag0,
            stop,
            sampler,
            t0: Instant::now(),
        })
    }

    fn stop(self) -> BoxResult<Measure> {
        let wall = self.t0.elapsed().as_secs_f64();
        let d = self.daemons;
        let ctld1 = d.cpu(d.slurmctld).unwrap_or(f64::NAN);
        let restd1 = d.slurmrestd.and_then(|p| d.cpu(p));
        self.stop.store(true, Ordering::Relaxed);
        let (max_threads, max_agent_queue) = self.sampler.join().unwrap_or((0, 0));
        let s1 = sdiag()?;
        let delta = |name: &str| {
            let before = self.sdiag0.rpcs.get(name).copied().unwrap_or_default();
            let after = s1.rpcs.get(name).copied().unwrap_or_default();
            (
                after.0.saturating_sub(before.0),
                after.1.saturating_sub(before.1),
            )
        };
        let rpc_us: u64 = s1
            .rpcs
            .keys()
            .filter(|k| k.as_str() != "REQUEST_STATS_INFO")
            .map(|k| delta(k).1)
            .sum();
        Ok(Measure {
            wall,
            ctld_cpu: ctld1 - self.ctld0,
            restd_cpu: restd1.zip(self.restd0).map(|(b, a)| b - a),
            submit_rpcs: delta("REQUEST_SUBMIT_BATCH_JOB").0,
            job_info_rpcs: delta("REQUEST_JOB_INFO").0,
            rpc_time: rpc_us as f64 / 1e6,
            max_threads: max_threads.max(s1.server_threads),
            max_agent_queue: max_agent_queue.max(s1.agent_queue),
        })
    }
}

// ---- commands ------------------------------------------------------------------------------

/// A command's stdout; an error with its stderr when it fails.
fn command_output(command: &mut Command) -> BoxResult<String> {
    let out = command.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed ({}): {}",
            command,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `sbatch --parsable ARGS`: the job id.
fn sbatch(args: &[String]) -> BoxResult<u64> {
    let out = command_output(Command::new("sbatch").arg("--parsable").args(args))?;
    let id = out.trim().split(';').next().unwrap_or_default();
    Ok(id.parse().map_err(|_| format!("sbatch printed `{out}`"))?)
}

/// Waits until Slurm lists no pending or running job named `name`.
fn wait_gone(name: &str) -> BoxResult<()> {
    let start = Instant::now();
    loop {
        let out = command_output(Command::new("squeue").args([
            "--noheader",
            "--states=PD,R,CG,CF,S,RQ,RS,RH,SE",
            &format!("--name={name}"),
            "--format=%i",
        ]))?;
        if out.trim().is_empty() {
            return Ok(());
        }
        if start.elapsed() > GONE_TIMEOUT {
            return Err(format!("jobs named {name} still queued after {GONE_TIMEOUT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Job records slurmctld keeps under `name` (a pending array is one record).
fn job_records(name: &str) -> BoxResult<usize> {
    let out = command_output(Command::new("squeue").args([
        "--noheader",
        "--states=all",
        &format!("--name={name}"),
        "--format=%i",
    ]))?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Cancels every job of the names it holds when dropped, whatever happened.
struct Cleanup {
    names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("scancel")
                .arg(format!("--name={name}"))
                .stdin(Stdio::null())
                .status();
        }
    }
}

fn unique_name(what: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("orchbench-{what}-{}-{secs}", std::process::id())
}

// ---- orch ----------------------------------------------------------------------------------

struct OrchRun {
    transport: SlurmTransport,
    arrays: usize,
    submit: Measure,
    poll: Measure,
    query_wall: f64,
    query_arrays: usize,
    query_tasks: usize,
    payload_bytes: usize,
    payload_what: String,
    records: usize,
    cancel: Measure,
}

async fn rest_jobs_listing(api: &RestApi, url: &str) -> BoxResult<(usize, usize)> {
    let version = api.version().await?;
    let user = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into());
    let token = std::env::var("SLURM_JWT").map_err(|_| "SLURM_JWT is not set")?;
    let body = reqwest::Client::new()
        .get(format!(
            "{}/slurm/{}/jobs/",
            url.trim_end_matches('/'),
            version.as_str()
        ))
        .header("X-SLURM-USER-NAME", user)
        .header("X-SLURM-USER-TOKEN", token)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let records = serde_json::from_slice::<serde_json::Value>(&body)?
        .get("jobs")
        .and_then(|j| j.as_array().map(Vec::len))
        .unwrap_or_default();
    Ok((body.len(), records))
}

fn cli_payload(name: &str) -> BoxResult<usize> {
    let squeue = command_output(Command::new("squeue").args([
        "--noheader",
        "--array",
        "--me",
        "--states=all",
        &format!("--name={name}"),
        &format!("--Format={SQUEUE_FORMAT}"),
    ]))?;
    let sacct = command_output(Command::new("sacct").args([
        "--noheader",
        "--parsable2",
        "--allocations",
        "--starttime=now-10080minutes",
        "--endtime=now",
        "--state=BF,CA,CD,DL,F,NF,OOM,PD,PR,R,RQ,RS,RV,S,TO",
        &format!("--name={name}"),
        &format!("--format={SACCT_FORMAT}"),
    ]))?;
    Ok(squeue.len() + sacct.len())
}

async fn run_orch(
    transport: SlurmTransport,
    args: &Args,
    max_array_size: u32,
    dir: &Path,
    daemons: &Daemons,
    cleanup: &mut Cleanup,
) -> BoxResult<OrchRun> {
    let name = unique_name(&format!("orch-{}", transport_name(transport)));
    cleanup.names.push(name.clone());
    let url = std::env::var("SLURMRESTD_URL").ok();
    let rest = match transport {
        SlurmTransport::Rest => Some(Arc::new(
            RestApi::new(
                url.clone().ok_or("SLURMRESTD_URL is not set")?,
                None,
                TokenSource::Env,
                PlainHttp::Loopback,
            )?
            .with_max_array_size(max_array_size),
        )),
        SlurmTransport::Cli => None,
    };
    let api: Arc<dyn SlurmApi> = match &rest {
        Some(r) => r.clone(),
        None => Arc::new(CliApi::new(None)),
    };
    let launch = SlurmLaunch {
        worker: WorkerCommand {
            program: dir.join("worker.sh").display().to_string(),
            storage: format!("file://{}", dir.join("storage").display()),
            job: name.clone(),
        },
        resources: ResourcesSpec {
            time: TIME.into(),
            memory: MEMORY.into(),
            ..ResourcesSpec::default()
        },
        spec: SlurmExecutorSpec {
            transport: Some(transport),
            url: url.clone(),
            extra_options: vec![format!("--reservation={}", args.reservation)],
            ..SlurmExecutorSpec::default()
        },
        log_dir: dir.join("logs"),
        workdir: dir.to_path_buf(),
        environment: Vec::new(),
        plain_http: PlainHttp::Loopback,
        token: None,
    };
    let executor = SlurmExecutor::connect(api.clone(), launch).await?;
    let group = TaskGroup {
        job: name.clone(),
        id: 0,
        tasks: (0..args.tasks).map(|t| (t, 1)).collect(),
        kind: TaskKind::Work,
        manifest_sha256: None,
    };
    let planned = executor
        .planned_ids(&group)
        .ok_or("the executor plans no ids")?;
    let arrays = planned
        .iter()
        .filter_map(|(_, id)| parse_executor_id(id).map(|(key, _)| key.comment()))
        .collect::<BTreeSet<_>>()
        .len();
    eprintln!(
        "orch/{}: submitting {} tasks as {arrays} arrays (job {name})",
        transport_name(transport),
        args.tasks
    );

    let probe = Probe::start(daemons)?;
    let ids = executor.submit(&group).await?;
    let submit = probe.stop()?;
    if ids != planned {
        return Err("submit returned other executor ids than planned".into());
    }

    let tasks: Vec<(u32, u32, Option<String>)> =
        ids.into_iter().map(|(t, id)| (t, 1, Some(id))).collect();
    let probe = Probe::start(daemons)?;
    let states = executor.poll(&tasks).await?;
    let poll = probe.stop()?;
    let queued = states
        .iter()
        .filter(|s| s.state == ExecState::Queued)
        .count();

    let t = Instant::now();
    let found = api.arrays(&name).await?;
    let query_wall = t.elapsed().as_secs_f64();
    let query_tasks = found.iter().map(|a| a.tasks.len()).sum();
    let (payload_bytes, payload_what) = match &rest {
        Some(r) => {
            let (bytes, records) = rest_jobs_listing(r, url.as_deref().unwrap_or_default()).await?;
            (
                bytes,
                format!("GET jobs/: {records} job records (every job slurmctld has)"),
            )
        }
        None => (
            cli_payload(&name)?,
            "squeue --array (one line per task) + sacct".to_string(),
        ),
    };
    let records = job_records(&name)?;

    eprintln!(
        "orch/{}: cancelling {} tasks",
        transport_name(transport),
        tasks.len()
    );
    let probe = Probe::start(daemons)?;
    executor.cancel(&tasks).await?;
    wait_gone(&name)?;
    let cancel = probe.stop()?;

    if queued != tasks.len() {
        return Err(format!(
            "orch/{}: poll saw {queued} of {} tasks queued",
            transport_name(transport),
            tasks.len()
        )
        .into());
    }
    Ok(OrchRun {
        transport,
        arrays,
        submit,
        poll,
        query_wall,
        query_arrays: found.len(),
        query_tasks,
        payload_bytes,
        payload_what,
        records,
        cancel,
    })
}

// ---- peers ---------------------------------------------------------------------------------

struct PeerRun {
    calls: u64,
    submit: Measure,
    records: usize,
    cancel: Measure,
}

/// The sbatch options both peers use: what orch's submissions carry, less the comment and
/// signal (a researcher's script would not bother).
fn peer_options(name: &str, reservation: &str, dir: &Path, log: &str) -> Vec<String> {
    vec![
        format!("--job-name={name}"),
        format!("--reservation={reservation}"),
        format!("--time={}", TIME.trim_end_matches('m')),
        "--mem=100M".into(),
        "--cpus-per-task=1".into(),
        format!("--output={}", dir.join("logs").join(log).display()),
        format!("--chdir={}", dir.display()),
    ]
}

/// `sbatch --array=0-K task.sh BASE` per `max_array_size` tasks, one after the other.
fn run_plain_arrays(
    n: u32,
    max_array_size: u32,
    reservation: &str,
    dir: &Path,
    daemons: &Daemons,
    cleanup: &mut Cleanup,
) -> BoxResult<PeerRun> {
    let name = unique_name("plain-arrays");
    cleanup.names.push(name.clone());
    let script = dir.join("array_task.sh").display().to_string();
    let mut calls = 0;
    eprintln!("plain arrays: submitting {n} tasks");
    let probe = Probe::start(daemons)?;
    let mut base = 0;
    while base < n {
        let len = (n - base).min(max_array_size);
        let mut a = peer_options(&name, reservation, dir, "array-%A_%a.log");
        a.push(format!("--array=0-{}", len - 1));
        a.push(script.clone());
        a.push(base.to_string());
        sbatch(&a)?;
        calls += 1;
        base += len;
    }
    let submit = probe.stop()?;
    let records = job_records(&name)?;
    let probe = Probe::start(daemons)?;
    command_output(Command::new("scancel").arg(format!("--name={name}")))?;
    wait_gone(&name)?;
    let cancel = probe.stop()?;
    Ok(PeerRun {
        calls,
        submit,
        records,
        cancel,
    })
}

/// One `sbatch task.sh I` per task, one after the other: the loop a researcher writes.
fn run_naive(
    n: u32,
    reservation: &str,
    dir: &Path,
    daemons: &Daemons,
    cleanup: &mut Cleanup,
) -> BoxResult<PeerRun> {
    let name = unique_name("naive");
    cleanup.names.push(name.clone());
    let script = dir.join("one_task.sh").display().to_string();
    eprintln!("one sbatch per task: submitting {n} tasks");
    let probe = Probe::start(daemons)?;
    for i in 0..n {
        let mut a = peer_options(&name, reservation, dir, "one-%j.log");
        a.push(script.clone());
        a.push(i.to_string());
        sbatch(&a)?;
    }
    let submit = probe.stop()?;
    let records = job_records(&name)?;
    let probe = Probe::start(daemons)?;
    command_output(Command::new("scancel").arg(format!("--name={name}")))?;
    wait_gone(&name)?;
    let cancel = probe.stop()?;
    Ok(PeerRun {
        calls: u64::from(n),
        submit,
        records,
        cancel,
    })
}

// ---- report --------------------------------------------------------------------------------

fn write_scripts(dir: &Path) -> BoxResult<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::create_dir_all(dir.join("storage"))?;
    for (file, text) in [
        // orch's batch script execs this with the worker's arguments.
        ("worker.sh", "#!/bin/sh\nexit 0\n"),
        // The peers' scripts: the task id from the argument (plus the array index).
        (
            "array_task.sh",
            "#!/bin/sh\nexec ./worker.sh --task $(($1 + SLURM_ARRAY_TASK_ID))\n",
        ),
        ("one_task.sh", "#!/bin/sh\nexec ./worker.sh --task \"$1\"\n"),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn per_task_ms(m: &Measure, tasks: u64) -> f64 {
    m.wall * 1000.0 / tasks as f64
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.2}"))
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let daemons = Daemons::find()?;
    let dir = tempfile::Builder::new()
        .prefix("orch-submit-bench.")
        .tempdir()?;
    write_scripts(dir.path())?;
    let cluster = CliApi::new(None).cluster_info().await?;
    let max = cluster.max_array_size;
    println!(
        "cluster: MaxArraySize={max}, slurmctld pid {}, slurmrestd pid {}, reservation {}",
        daemons.slurmctld,
        daemons
            .slurmrestd
            .map_or_else(|| "–".into(), |p| p.to_string()),
        args.reservation
    );

    let mut cleanup = Cleanup { names: Vec::new() };
    let mut orch = Vec::new();
    for &t in &args.transports {
        orch.push(run_orch(t, &args, max, dir.path(), &daemons, &mut cleanup).await?);
    }
    let (plain, naive) = if args.peers {
        let plain = run_plain_arrays(
            args.tasks,
            max,
            &args.reservation,
            dir.path(),
            &daemons,
            &mut cleanup,
        )?;
        let naive_n = args.naive.min(args.tasks);
        let naive = (naive_n > 0)
            .then(|| {
                run_naive(
                    naive_n,
                    &args.reservation,
                    dir.path(),
                    &daemons,
                    &mut cleanup,
                )
            })
            .transpose()?;
        (Some(plain), naive.map(|r| (naive_n, r)))
    } else {
        (None, None)
    };
    drop(cleanup);

    let n = u64::from(args.tasks);
    println!("\n## Submitting {n} tasks (held by a future reservation, then cancelled)\n");
    println!(
        "| approach | tasks | submit calls | wall | slurmctld CPU s | per-task ms | job records |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &orch {
        println!(
            "| orch, {} transport ({} arrays) | {n} | {} + 1 lookup | {:.2} s | {:.2} | {:.3} | {} |",
            transport_name(r.transport),
            r.arrays,
            r.arrays,
            r.submit.wall,
            r.submit.ctld_cpu,
            per_task_ms(&r.submit, n),
            r.records,
        );
    }
    if let Some(p) = &plain {
        println!(
            "| plain `sbatch --array=0-{}` (no orch) | {n} | {} | {:.2} s | {:.2} | {:.3} | {} |",
            max - 1,
            p.calls,
            p.submit.wall,
            p.submit.ctld_cpu,
            per_task_ms(&p.submit, n),
            p.records,
        );
    }
    if let Some((m, r)) = &naive {
        let m = u64::from(*m);
        println!(
            "| one `sbatch` per task, measured | {m} | {} | {:.2} s | {:.2} | {:.3} | {} |",
            r.calls,
            r.submit.wall,
            r.submit.ctld_cpu,
            per_task_ms(&r.submit, m),
            r.records,
        );
        let scale = n as f64 / m as f64;
        println!(
            "| one `sbatch` per task, extrapolated ×{scale:.0} | {n} | {n} | {:.0} s ({:.1} min) | {:.1} | {:.3} | {n} |",
            r.submit.wall * scale,
            r.submit.wall * scale / 60.0,
            r.submit.ctld_cpu * scale,
            per_task_ms(&r.submit, m),
        );
    }

    println!(
        "\n### slurmctld during submission (sdiag differences; peaks sampled once a second)\n"
    );
    println!(
        "| approach | REQUEST_SUBMIT_BATCH_JOB | REQUEST_JOB_INFO | RPC time s | max server threads | max agent queue | slurmrestd CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let load_row = |label: String, m: &Measure, restd: bool| {
        println!(
            "| {label} | {} | {} | {:.3} | {} | {} | {} |",
            m.submit_rpcs,
            m.job_info_rpcs,
            m.rpc_time,
            m.max_threads,
            m.max_agent_queue,
            if restd {
                opt_s(m.restd_cpu)
            } else {
                "–".into()
            },
        );
    };
    for r in &orch {
        load_row(
            format!("orch, {}", transport_name(r.transport)),
            &r.submit,
            r.transport == SlurmTransport::Rest,
        );
    }
    if let Some(p) = &plain {
        load_row("plain arrays".into(), &p.submit, false);
    }
    if let Some((m, r)) = &naive {
        load_row(format!("one sbatch per task ({m})"), &r.submit, false);
    }

    if !orch.is_empty() {
        println!("\n### orch: polling all {n} tasks, and cancelling them\n");
        println!(
            "| transport | poll of {n} tasks | of which the arrays() query | arrays / tasks found | payload | slurmctld CPU s (poll) | cancel + wait until gone | slurmctld CPU s (cancel) |"
        );
        println!("|---|---:|---:|---:|---|---:|---:|---:|");
        for r in &orch {
            println!(
                "| {} | {:.2} s | {:.2} s | {} / {} | {:.1} MB ({}) | {:.2} | {:.2} s | {:.2} |",
                transport_name(r.transport),
                r.poll.wall,
                r.query_wall,
                r.query_arrays,
                r.query_tasks,
                r.payload_bytes as f64 / 1e6,
                r.payload_what,
                r.poll.ctld_cpu,
                r.cancel.wall,
                r.cancel.ctld_cpu,
            );
        }
        if let Some(p) = &plain {
            println!(
                "\nplain arrays: `scancel --name` + wait {:.2} s, slurmctld CPU {:.2} s",
                p.cancel.wall, p.cancel.ctld_cpu
            );
        }
        if let Some((m, r)) = &naive {
            println!(
                "one sbatch per task ({m}): `scancel --name` + wait {:.2} s, slurmctld CPU {:.2} s",
                r.cancel.wall, r.cancel.ctld_cpu
            );
        }
    }

    println!();
    for r in &orch {
        let t = transport_name(r.transport);
        if let Some((m, naive)) = &naive {
            let extrapolated = naive.submit.wall * n as f64 / f64::from(*m);
            println!(
                "ratio: one sbatch per task (extrapolated) / orch {t} = {:.0}× wall",
                extrapolated / r.submit.wall
            );
        }
        if let Some(p) = &plain {
            println!(
                "ratio: orch {t} / plain arrays = {:.2}× wall; slurmctld CPU {:.2} s vs {:.2} s \
                 (/proc counts 10 ms ticks)",
                r.submit.wall / p.submit.wall,
                r.submit.ctld_cpu,
                p.submit.ctld_cpu,
            );
        }
    }
    Ok(())
}
