//! `orch run` and `orch validate`: load and check a job file, then drive it to its end with a
//! progress bar and a summary a person can act on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orch_core::load::{self, LoadedJob};
use orch_core::model::JobPhase;
use orch_core::model::TaskKind;
use orch_core::partition::{AUTO_BATCHES_PER_WORKER, AUTO_MAX_ITEMS, BatchSize, PlanBudget};
use orch_executors::{Executors, PlainHttp};
use orch_runtime::control::RetryChoice;
use orch_runtime::driver::{self, Progress, RunOptions};

use crate::Failure;

#[derive(Args)]
pub struct RunArgs {
    /// The job file (an OrchJob in YAML).
    pub file: PathBuf,
    /// Validate and partition only: print the plan (batches, items, bytes), run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not draw a progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// The worker program; default: `orch-worker` next to this `orch`, then in PATH.
    #[arg(long, env = "ORCH_WORKER")]
    pub worker: Option<PathBuf>,
    /// Serve the job's metrics for Prometheus on http://HOST:PORT/metrics while it runs.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Append the job's figures as CloudWatch Embedded Metric Format lines to FILE (`-`:
    /// stdout): at the start, every minute, and at the end.
    #[arg(long, value_name = "FILE")]
    pub metrics_emf: Option<PathBuf>,
}

pub(crate) fn load_checked(file: &Path) -> Result<LoadedJob, Failure> {
    let job = load::load(file)?;
    load::preflight(&job)?;
    Ok(job)
}

/// Local Parquet input whose footer does not read (a truncated file, another format under a
/// `.parquet` name) is refused by `orch validate` as `orch run` refuses it while planning: only
/// the footers are read.
fn parquet_footers(job: &LoadedJob) -> Result<(), Failure> {
    let s = &job.file.spec;
    let format = s.input.format.or_else(|| load::infer_format(&s.input.uri));
    if format != Some(orch_core::spec::InputFormat::Parquet) {
        return Ok(());
    }
    let Ok(orch_core::uri::Location::Local(path)) =
        orch_core::uri::Location::parse(&s.input.uri, Path::new("/"))
    else {
        return Ok(());
    };
    for file in load::input_sources(&path).unwrap_or_default() {
        let source = file.display().to_string();
        if let Err(e) = orch_data::parquet_input::partition_parquet(
            &file,
            &source,
            BatchSize::Items(s.batch.size.unwrap_or(AUTO_MAX_ITEMS)),
        ) {
            return Err(Failure {
                code: 2,
                message: format!("{}: spec.input.uri: {e}", job.path.display()),
            });
        }
    }
    Ok(())
}

/// What is missing for this process to reach the job's data in S3, naming the first field
/// that puts it there; `Ok(None)` when nothing is (or nothing is in S3).
fn aws_gap(job: &LoadedJob, runtime: &tokio::runtime::Runtime) -> Option<String> {
    let s = &job.file.spec;
    let uses = [
        ("spec.storage.uri", s.storage.uri.as_deref().unwrap_or("")),
        ("spec.input.uri", s.input.uri.as_str()),
        ("spec.output.uri", s.output.uri.as_deref().unwrap_or("")),
    ];
    let (field, _) = uses.iter().find(|(_, uri)| orch_connect::is_s3(uri))?;
    runtime
        .block_on(orch_connect::aws_unconfigured())
        .map(|why| format!("{field}: in S3, but {why}"))
}

pub fn validate(file: &Path, show: bool) -> Result<u8, Failure> {
    let job = load_checked(file)?;
    parquet_footers(&job)?;
    // Valid for the operator, which fills these in; `orch run` would refuse them, so say so.
    for note in load::filled_by_operator(&job.file) {
        eprintln!("note: {note}");
    }
    // The file may be meant for another machine or the operator: a note, not an error.
    if let Some(gap) = aws_gap(&job, &crate::runtime()?) {
        eprintln!("note: {gap} here (`orch run` on this machine would refuse it)");
    }
    if show {
        let yaml = serde_yaml::to_string(&job.file).map_err(|e| Failure {
            code: 1,
            message: format!("cannot print the job: {e}"),
        })?;
        print!("{yaml}");
        return Ok(0);
    }
    let s = &job.file.spec;
    let handler = match (&s.handler.exec, &s.handler.builtin) {
        (Some(e), _) => format!("exec {}", e.command.join(" ")),
        (_, Some(b)) => format!("builtin {:?}", b.name).to_lowercase(),
        _ => "none".into(),
    };
    println!("{} is valid", file.display());
    println!("  job      {}", job.file.metadata.name);
    println!("  input    {}", s.input.uri);
    match s.batch.size {
        Some(items) => println!("  batches  of {items} items, at most {}", s.batch.max_bytes),
        None => println!(
            "  batches  sized from the input, {AUTO_BATCHES_PER_WORKER} per worker, at most {}",
            s.batch.max_bytes
        ),
    }
    println!(
        "  handler  {handler} ({} in flight, {} per item)",
        s.handler.concurrency, s.handler.timeout
    );
    println!("  retry    {} attempts", s.retry.max_attempts);
    for r in s.rate_limit.iter().flat_map(|r| r.as_slice()) {
        let written = match job.rate_limits.iter().find(|d| d.metadata.name == r.name) {
            Some(d) => format!(
                "{}, burst {}, {:?} scope",
                d.spec.rate, d.spec.burst, d.spec.scope
            )
            .to_lowercase(),
            None => "not in this file: the storage's or the cluster's".into(),
        };
        println!(
            "  limit    {} ({written}), {} token(s) per item",
            r.name, r.tokens_per_item
        );
    }
    println!("  output   {}", s.output.uri.as_deref().unwrap_or("-"));
    Ok(0)
}

/// A local URI as the plain path a person would type; other URIs unchanged.
pub fn display_uri(uri: &str) -> &str {
    let uri = uri.strip_prefix("file://").unwrap_or(uri);
    if uri.len() > 1 {
        uri.trim_end_matches('/')
    } else {
        uri
    }
}

fn worker_command(explicit: Option<PathBuf>) -> Result<Vec<String>, Failure> {
    if let Some(p) = explicit {
        return Ok(vec![p.display().to_string()]);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("orch-worker")))
        .filter(|p| p.is_file());
    let found = sibling.or_else(|| load::find_program("orch-worker", Path::new(".")));
    match found {
        Some(p) => Ok(vec![p.display().to_string()]),
        None => Err(Failure::usage(
            "cannot find the `orch-worker` program next to `orch` or in PATH; build it with \
             `cargo build --release` or set ORCH_WORKER",
        )),
    }
}

/// The scratch directory of this process for `what`, for files on their way to or from S3.
fn scratch_dir(what: &str) -> PathBuf {
    orch_connect::scratch_dir(&format!("orch-{what}-{}", std::process::id()))
}

fn remove_scratch(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the scratch directory");
    }
}

/// A port's error (opening stores) as `orch` reports it.
pub fn port_failure(e: orch_core::backend::BackendError) -> Failure {
    orch_runtime::Error::from_port(e).into()
}

/// How this process opens the job's input.
pub async fn input_locations(
    job: &LoadedJob,
) -> Result<Box<dyn orch_core::platform::Locations>, Failure> {
    orch_connect::locations(&job.file.spec.input.uri)
        .await
        .map_err(port_failure)
}

/// Partitions the input and reports the plan; nothing is written to the job's storage.
async fn dry_run(job: &LoadedJob) -> Result<driver::RunOutcome, Failure> {
    let locations = input_locations(job).await?;
    Ok(driver::dry_run(job, locations.as_ref(), &PlanBudget::default()).await?)
}

/// Runs the job on the platform its `storage.uri` names (default `.orch`).
async fn run_on_storage(job: &LoadedJob, opts: RunOptions) -> Result<driver::RunOutcome, Failure> {
    let storage = job
        .file
        .spec
        .storage
        .uri
        .clone()
        .unwrap_or_else(|| orch_connect::DEFAULT_STORAGE.into());
    // Downloads and uploads of S3 storage pass through a scratch directory of this run;
    // workers' logs stay on this machine, next to where a directory storage would be.
    let scratch = scratch_dir("driver");
    let platform = orch_connect::open_platform(
        &storage,
        &orch_connect::PlatformOptions {
            scratch: scratch.clone(),
            log_root: orch_connect::local_log_root(),
            job_lease: None,
        },
    )
    .await
    .map_err(port_failure)?;
    let outcome = driver::run(job, platform.as_ref(), opts).await;
    remove_scratch(&scratch);
    Ok(outcome?)
}

pub fn run(args: RunArgs) -> Result<u8, Failure> {
    let job = load_checked(&args.file)?;
    if !args.dry_run {
        // A field left to the operator (a `rest` transport's URL) has no default here.
        load::standalone_gaps(&job)?;
    }
    drive(
        &job,
        Drive {
            dry_run: args.dry_run,
            no_progress: args.no_progress,
            worker: args.worker,
            retry: None,
            metrics_addr: args.metrics_addr,
            metrics_emf: args.metrics_emf,
            job_id: None,
            named: args.file.display().to_string(),
        },
    )
}

/// How [`drive`] runs a job.
pub struct Drive {
    pub dry_run: bool,
    pub no_progress: bool,
    pub worker: Option<PathBuf>,
    /// `orch retry`: what runs again of the ended job.
    pub retry: Option<RetryChoice>,
    /// Where to serve the job's metrics, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where to append the job's figures as EMF lines, if anywhere (`-`: stdout).
    pub metrics_emf: Option<PathBuf>,
    /// The stored job's id, when it was named by id rather than by its file.
    pub job_id: Option<String>,
    /// How the user named the job, for the commands the summary suggests.
    pub named: String,
}

/// Runs `job` here to its end (or, for a retry, to its new end) with a progress bar, and
/// prints the summary: `orch run` and the local `orch retry`.
pub fn drive(job: &LoadedJob, how: Drive) -> Result<u8, Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot start the async runtime: {e}"),
        })?;
    if let Some(gap) = aws_gap(job, &runtime) {
        return Err(Failure {
            code: 2,
            message: format!("{}: {gap}", job.path.display()),
        });
    }
    if job.file.spec.suspend && !how.dry_run {
        return Err(Failure {
            code: 2,
            message: "spec.suspend is true: the job is paused and `orch run` would wait forever; set it to false to run".into(),
        });
    }
    let worker = if how.dry_run {
        Vec::new()
    } else {
        worker_command(how.worker)?
    };
    let bar = ProgressBar::with_draw_target(
        Some(0),
        if how.no_progress {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:12} [{bar:30}] {pos}/{len} items  {rate}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} items/s", state.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let shown = bar.clone();
    let last = Arc::new(Mutex::new(Progress::default()));
    let last_seen = last.clone();
    let on_progress = move |p: &Progress| {
        shown.set_length(p.total_items);
        shown.set_position(p.done_items);
        shown.set_message(if let Some(a) = p.aggregation {
            match a.stage {
                TaskKind::Merge { level } => format!(
                    "merging level {level}/{}: {}/{} groups",
                    a.levels, a.groups_done, a.groups_total
                ),
                _ => "final merge".to_string(),
            }
        } else if p.aggregating {
            "aggregating".to_string()
        } else {
            format!("{}/{} tasks", p.tasks_done, p.tasks_total)
        });
        if let Ok(mut l) = last_seen.lock() {
            *l = *p;
        }
    };
    let metrics = match how.metrics_addr {
        Some(addr) if !how.dry_run => Some(runtime.block_on(crate::metrics::serve(addr))?),
        _ => None,
    };
    let emf = match &how.metrics_emf {
        Some(path) if !how.dry_run => Some(crate::metrics::emf_lines(path)?),
        _ => None,
    };
    let started = Instant::now();
    let whole_tasks = matches!(how.retry, Some(RetryChoice::Tasks));
    let opts = RunOptions {
        // A laptop or login-node user is their own administrator: a slurmrestd on this
        // machine may be plain http.
        executors: Arc::new(Executors {
            slurm_plain_http: PlainHttp::Loopback,
            ..Executors::new(worker)
        }),
        tick: Duration::from_millis(100),
        on_progress: Box::new(on_progress),
        stop: None,
        job_id: how.job_id,
        task_cache: None,
        // `orch run` plans on the user's own machine: no limit but the machine's.
        budget: PlanBudget::default(),
        retry: how.retry,
        metrics,
        emf,
        alerts: Default::default(),
    };
    let outcome = runtime.block_on(async {
        if how.dry_run {
            dry_run(job).await
        } else {
            run_on_storage(job, opts).await
        }
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    if let Some(plan) = &outcome.plan {
        println!("plan for {} (dry run, nothing was started)", outcome.job.id);
        println!("  items          {}", plan.items);
        println!("  bytes          {}", plan.bytes);
        println!("  batches        {}", plan.batches);
        println!(
            "  largest batch  {} items, {} bytes",
            plan.largest_batch_items, plan.largest_batch_bytes
        );
        return Ok(0);
    }
    let named = &how.named;
    match outcome.retried {
        Some(r) if r.tasks == 0 => {
            println!(
                "job {} ({}): nothing to run again — no failed {} of that choice",
                outcome.job.id,
                outcome.job.phase,
                if whole_tasks { "task" } else { "item" }
            );
            return Ok(0);
        }
        Some(r) => eprintln!("running again: {} item(s) of {} task(s)", r.items, r.tasks),
        None => {}
    }
    let secs = started.elapsed().as_secs_f64();
    let c = outcome.counts;
    let rate = if secs > 0.0 {
        c.total as f64 / secs
    } else {
        0.0
    };
    let job = &outcome.job;
    let output = display_uri(job.spec.spec.output.uri.as_deref().unwrap_or("-"));
    let verb = if outcome.resumed { "resumed and " } else { "" };
    match job.phase {
        JobPhase::Succeeded => {
            println!(
                "job {} {verb}succeeded: {} items ok, {} failed, in {secs:.1}s ({rate:.0} items/s)",
                job.id, c.ok, c.failed
            );
            println!("output: {output}");
            if c.failed > 0 {
                println!("failed items: {output}/errors.parquet (see `orch status {named}`)");
            }
            Ok(0)
        }
        phase => {
            println!(
                "job {} {phase}: {}",
                job.id,
                job.message.as_deref().unwrap_or("no reason recorded")
            );
            println!("details: orch status {named}");
            Ok(1)
        }
    }
}
