//! `orch-worker`: the process that runs one array task. Started by an executor (local
//! processes, Slurm, Kubernetes), never by hand in normal use.

use clap::{Parser, Subcommand};
use orch_core::logging::LogFormat;
use orch_core::model::TaskKind;
use orch_core::platform::Backends;
use orch_worker::log_copy::{COPY_EVERY, LogCopy};
use orch_worker::run::{StopFlag, WorkerArgs};
use tracing::Instrument;

#[derive(Parser)]
#[command(
    name = "orch-worker",
    version,
    about = "Runs one task of an orch job (started by an executor)"
)]
struct Cli {
    /// Log lines as text or JSON (the executor passes on its driver's choice).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "ORCH_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the task named by --task, ORCH_TASK_INDEX, SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX.
    Run {
        #[command(flatten)]
        target: TaskTarget,
    },
    /// Run the work tasks of one job handed over stdin, one JSON line each, answering each on
    /// stdout, until stdin ends (the local executor's kept workers; directory storage only).
    Serve {
        /// Storage URI of the job (file:///…).
        #[arg(long)]
        storage: String,
        /// Job id.
        #[arg(long)]
        job: String,
        /// The sha256 the job's job.json must have.
        #[arg(long)]
        manifest_sha256: Option<String>,
    },
    /// Run an aggregation task: merge one group of one level (--level), or merge the last
    /// level into the job's output (--final), as the job's aggregation plan says.
    Aggregate {
        /// Merge level (1 merges task results).
        #[arg(
            long,
            required_unless_present = "final_merge",
            conflicts_with = "final_merge"
        )]
        level: Option<u32>,
        /// Run the final merge into the output location.
        #[arg(long = "final")]
        final_merge: bool,
        #[command(flatten)]
        target: TaskTarget,
    },
}

/// Which task of which job, as every executor's command line names it.
#[derive(clap::Args)]
struct TaskTarget {
    /// Storage URI of the job (file:///…, s3://…).
    #[arg(long)]
    storage: String,
    /// Job id.
    #[arg(long)]
    job: String,
    /// Task group (array submission) this process belongs to.
    #[arg(long)]
    group: u32,
    /// Task index; defaults to ORCH_TASK_INDEX, then SLURM_ARRAY_TASK_ID, then
    /// JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs).
    #[arg(long)]
    task: Option<u32>,
    /// Added to the index from the environment: index 0 of a Slurm array or Kubernetes
    /// Indexed Job is this task (array indices must stay below the cluster's
    /// MaxArraySize; an Indexed Job covers a contiguous run of tasks).
    #[arg(long, default_value_t = 0)]
    task_offset: u32,
    /// The sha256 the job's job.json must have: the task refuses to run any other spec.
    #[arg(long)]
    manifest_sha256: Option<String>,
}

/// Stops a background task when the owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The task index from the environment (local executor, Slurm array, Kubernetes Indexed Job),
/// plus `offset`.
fn task_from_env(offset: u32) -> Option<u32> {
    task_from(|k| std::env::var(k).ok(), offset)
}

/// [`task_from_env`] over any lookup of variables.
fn task_from(var: impl Fn(&str) -> Option<String>, offset: u32) -> Option<u32> {
    orch_core::invocation::TASK_INDEX_VARIABLES
        .iter()
        .find_map(|k| var(k)?.parse::<u32>().ok())
        .and_then(|index| index.checked_add(offset))
}

/// What Slurm says about the allocation this worker runs in, for the logs: which array task
/// this is and what it was given.
fn log_slurm_allocation() {
    let vars = [
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_JOB_ID",
        "SLURM_CPUS_PER_TASK",
        "SLURM_MEM_PER_NODE",
        "SLURM_MEM_PER_CPU",
        "SLURMD_NODENAME",
        "TMPDIR",
    ];
    let found: Vec<String> = vars
        .iter()
        .filter_map(|k| Some(format!("{k}={}", std::env::var(k).ok()?)))
        .collect();
    if std::env::var_os("SLURM_JOB_ID").is_some() {
        tracing::info!(allocation = %found.join(" "), "running in a Slurm allocation");
    }
}

fn main() {
    let cli = Cli::parse();
    orch_worker::init_logging(cli.log_format);
    // Before the first line is written; not needed where the executor's log file is in the
    // job's storage already.
    // A kept worker (`serve`) writes each task's log in the storage itself.
    let log_copy = if matches!(cli.command, Command::Serve { .. })
        || std::env::var_os(orch_core::invocation::LOG_IN_STORAGE_VARIABLE).is_some()
    {
        None
    } else {
        LogCopy::start()
            .inspect_err(|e| eprintln!("orch-worker: no copy of this log in the storage: {e}"))
            .ok()
    };
    log_slurm_allocation();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orch-worker: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match cli.command {
        Command::Run { target } => run_task(&runtime, target, TaskKind::Work, log_copy),
        Command::Serve {
            storage,
            job,
            manifest_sha256,
        } => runtime.block_on(serve(storage, job, manifest_sha256)),
        Command::Aggregate {
            level,
            final_merge,
            target,
        } => {
            let stage = match level {
                Some(level) if !final_merge => TaskKind::Merge { level },
                _ => TaskKind::Final,
            };
            run_task(&runtime, target, stage, log_copy)
        }
    };
    std::process::exit(code);
}

/// Sets `stop` on SIGTERM or SIGINT: the running task checkpoints and ends.
fn stop_on_signal(stop: &StopFlag) {
    let on_signal = stop.clone();
    tokio::spawn(
        async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stop signal received: checkpointing");
            on_signal.stop();
        }
        .in_current_span(),
    );
}

/// Runs the tasks handed on stdin (`orch_core::invocation::ServedTask`), one at a time, with
/// the stores opened once, each task's log lines (and its handler's stderr) appended to the
/// task's own log file; answers each with its exit code on stdout. A stop signal ends the
/// task it interrupts and then the worker. The exit code is 0 unless the input is not what
/// the executor writes (2) or the stores cannot be opened (1).
async fn serve(storage: String, job: String, manifest_sha256: Option<String>) -> i32 {
    use orch_core::invocation::{ServedEnd, ServedTask};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    // The worker's own stderr, for lines between tasks, while fd 2 is a task's log.
    let home = match rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 3) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("orch-worker: cannot keep stderr: {e}");
            return 1;
        }
    };
    let stop = StopFlag::default();
    stop_on_signal(&stop);
    let scratch_name = format!("orch-{job}-serve-{}", std::process::id());
    let backends = match open_storage(&storage, scratch_name).await {
        Ok(backends) => backends,
        Err(message) => {
            tracing::error!(error = %message, "cannot open the job's storage");
            return 1;
        }
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    loop {
        let next = tokio::select! {
            next = lines.next_line() => next,
            // Stopped while waiting for a task: nothing to checkpoint.
            () = stopped(&stop) => return 0,
        };
        let line = match next {
            Ok(Some(line)) => line,
            Ok(None) => return 0,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the next task");
                return 1;
            }
        };
        let served: ServedTask = match serde_json::from_str(&line) {
            Ok(task) => task,
            Err(e) => {
                tracing::error!(error = %e, "not a task line");
                return 2;
            }
        };
        let code = match to_task_log(&served.log) {
            Err(e) => {
                tracing::error!(log = %served.log.display(), error = %e, "cannot open the task's log");
                1
            }
            Ok(()) => {
                let args = WorkerArgs {
                    storage: storage.clone(),
                    job: job.clone(),
                    task: served.task,
                    group: served.group,
                    manifest_sha256: manifest_sha256.clone(),
                    manifest_cache: None,
                };
                let span = tracing::info_span!(
                    "worker",
                    job = %args.job,
                    task = args.task,
                    attempt = tracing::field::Empty,
                    worker = %orch_core::owner::this_process(),
                    executor = %served.executor,
                );
                attempt(&backends, &args, TaskKind::Work, stop.clone())
                    .instrument(span)
                    .await
            }
        };
        if let Err(e) = rustix::stdio::dup2_stderr(&home) {
            eprintln!("orch-worker: cannot restore stderr: {e}");
        }
        let end = ServedEnd {
            executor: served.executor,
            code,
        };
        let mut answer = serde_json::to_string(&end).unwrap_or_default();
        answer.push('\n');
        if out.write_all(answer.as_bytes()).await.is_err() || out.flush().await.is_err() {
            // The executor is gone: nobody would hear of the next task either.
            return 1;
        }
        if stop.is_stopped() {
            return 0;
        }
    }
}

/// Returns once `stop` is set.
async fn stopped(stop: &StopFlag) {
    while !stop.is_stopped() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Points this process's stderr (its log lines, and the stderr its handler inherits) at the
/// end of the task log `path`.
fn to_task_log(path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    rustix::stdio::dup2_stderr(&log)?;
    Ok(())
}

/// The job's stores (credentials and endpoints of S3 storage come from the environment,
/// docs/aws.md). Files for a remote store are built in a scratch directory of this process
/// named `scratch_name`.
async fn open_storage(storage: &str, scratch_name: String) -> Result<Backends, String> {
    orch_connect::open_backends(storage, orch_connect::scratch_dir(&scratch_name))
        .await
        .map_err(|e| e.to_string())
}

/// Scratch of a remote store holds copies only. (A failed work task keeps its scratch, with the
/// checkpoint, for whoever debugs it.)
fn remove_scratch(storage: &str, backends: &Backends) {
    if orch_connect::is_s3(storage)
        && let Err(e) = std::fs::remove_dir_all(&backends.scratch)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "cannot remove the scratch directory");
    }
}

/// Runs task `task` of `job`: a work task (`stage` Work) or an aggregation task.
fn run_task(
    runtime: &tokio::runtime::Runtime,
    target: TaskTarget,
    stage: TaskKind,
    log_copy: Option<LogCopy>,
) -> i32 {
    let Some(task) = target.task.or_else(|| task_from_env(target.task_offset)) else {
        eprintln!(
            "orch-worker: no task index (--task, ORCH_TASK_INDEX, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)"
        );
        return 2;
    };
    // Only a remote store's job.json costs a request.
    let manifest_cache =
        orch_connect::is_s3(&target.storage).then(|| orch_connect::scratch_dir("orch-manifests"));
    let args = WorkerArgs {
        storage: target.storage,
        job: target.job,
        task,
        group: target.group,
        manifest_sha256: target.manifest_sha256,
        manifest_cache,
    };
    // Every line of the worker carries its job, task, worker and executor ids; the attempt is
    // added once the claim has told it.
    let span = tracing::info_span!(
        "worker",
        job = %args.job,
        task,
        attempt = tracing::field::Empty,
        worker = %orch_core::owner::this_process(),
        executor = orch_core::invocation::executor_id_from(|k| std::env::var(k).ok()),
    );
    let work = async move {
        let stop = StopFlag::default();
        stop_on_signal(&stop);
        let scratch_name = format!("orch-{}-{}-{}", args.job, args.task, std::process::id());
        let backends = match open_storage(&args.storage, scratch_name).await {
            Ok(backends) => backends,
            Err(message) => {
                tracing::error!(error = %message, "cannot open the job's storage");
                return 1;
            }
        };
        let Some(copy) = log_copy else {
            return attempt(&backends, &args, stage, stop).await;
        };
        // The log's copy: a part every few seconds, the last one once the attempt has ended.
        let (done, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let every = tokio::spawn({
            let (parts, objects, job) = (copy.parts(), backends.objects.clone(), args.job.clone());
            async move {
                let mut tick = tokio::time::interval(COPY_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => parts.store(objects.as_ref(), &job, task).await,
                        _ = &mut stopped => return,
                    }
                }
            }
            .in_current_span()
        });
        let code = attempt(&backends, &args, stage, stop).await;
        let _ = done.send(());
        let _ = every.await;
        // The final merge's commit can end the job, and a purge may remove its files at once:
        // a part stored after it would be left behind. Its last lines stay in the executor's
        // log only.
        let store_last = !(stage == TaskKind::Final && code == 0);
        copy.finish(
            backends.objects.as_ref(),
            &args.job,
            task,
            store_last,
            code == 0,
        )
        .await;
        code
    };
    runtime.block_on(work.instrument(span))
}

/// The attempt itself, once the stores are open: the exit code of the worker.
async fn attempt(backends: &Backends, args: &WorkerArgs, stage: TaskKind, stop: StopFlag) -> i32 {
    // Remote storage builds every file in scratch first: a full disk should fail the
    // attempt now (and be retried, maybe on another node), not after the work is done.
    let _watch = if orch_connect::is_s3(&args.storage) {
        let min = orch_worker::scratch::min_free();
        if let Err(message) = orch_worker::scratch::check(&backends.scratch, min) {
            let e = orch_worker::Error::ScratchFull(message);
            tracing::error!(error = %e, "not starting the task");
            orch_worker::run::refuse(backends.state.as_ref(), args, &e).await;
            return e.exit_code();
        }
        Some(AbortOnDrop(orch_worker::scratch::watch(
            backends.scratch.clone(),
            min,
        )))
    } else {
        None
    };
    let result = match stage {
        TaskKind::Work => orch_worker::run::run(backends, args, stop).await,
        _ => orch_worker::merge::run(backends, args, stage).await,
    };
    match result {
        Ok(_) => {
            remove_scratch(&args.storage, backends);
            0
        }
        Err(e) => {
            tracing::error!(error = %e, category = ?e.category(), "task attempt ended without commit");
            // A merge keeps nothing worth resuming from in its scratch.
            if stage != TaskKind::Work {
                remove_scratch(&args.storage, backends);
            }
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use orch_core::invocation::WorkerInvocation;

    use super::*;

    /// Every executor builds the worker's command line with `WorkerInvocation`: what it builds
    /// must parse here into the same task, for every kind.
    #[test]
    fn the_executors_command_line_parses_into_the_same_task() {
        for kind in [
            TaskKind::Work,
            TaskKind::Merge { level: 3 },
            TaskKind::Final,
        ] {
            let invocation = WorkerInvocation {
                kind,
                storage: "s3://bucket/prefix with space/",
                job: "reviews-1a2b3c4d",
                group: 9,
                task_offset: 4000,
                manifest_sha256: Some("ab12"),
            };
            let argv = std::iter::once("orch-worker".to_string()).chain(invocation.args());
            let parsed = match Cli::try_parse_from(argv) {
                Ok(cli) => cli.command,
                Err(e) => panic!("{kind}: {e}"),
            };
            let target = match (kind, parsed) {
                (TaskKind::Work, Command::Run { target }) => target,
                (
                    TaskKind::Merge { .. } | TaskKind::Final,
                    Command::Aggregate {
                        level,
                        final_merge,
                        target,
                    },
                ) => {
                    match kind {
                        TaskKind::Merge { level: l } => {
                            assert_eq!((level, final_merge), (Some(l), false))
                        }
                        _ => assert_eq!((level, final_merge), (None, true)),
                    }
                    target
                }
                (kind, _) => panic!("{kind}: parsed into the wrong subcommand"),
            };
            assert_eq!(target.storage, invocation.storage);
            assert_eq!(target.job, invocation.job);
            assert_eq!(target.group, 9);
            assert_eq!(target.task, None, "the index comes from the environment");
            assert_eq!(target.task_offset, 4000);
            assert_eq!(target.manifest_sha256.as_deref(), Some("ab12"));
        }
    }

    /// What the local executor starts for a kept worker parses into `serve` with its values.
    #[test]
    fn the_kept_workers_command_line_parses_into_serve() {
        let args = orch_core::invocation::serve_args("file:///data/.orch", "j-1", Some("ab12"));
        let argv = std::iter::once("orch-worker".to_string()).chain(args);
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Serve {
                storage,
                job,
                manifest_sha256,
            }) => {
                assert_eq!(storage, "file:///data/.orch");
                assert_eq!(job, "j-1");
                assert_eq!(manifest_sha256.as_deref(), Some("ab12"));
            }
            Ok(_) => panic!("parsed into another subcommand"),
            Err(e) => panic!("{e}"),
        }
    }

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_task_index_comes_from_the_first_executor_variable_plus_the_offset() {
        assert_eq!(
            task_from(lookup(&[("JOB_COMPLETION_INDEX", "7")]), 0),
            Some(7)
        );
        assert_eq!(
            task_from(lookup(&[("JOB_COMPLETION_INDEX", "7")]), 4000),
            Some(4007)
        );
        assert_eq!(
            task_from(
                lookup(&[("SLURM_ARRAY_TASK_ID", "2"), ("JOB_COMPLETION_INDEX", "7")]),
                10
            ),
            Some(12)
        );
        assert_eq!(
            task_from(
                lookup(&[("ORCH_TASK_INDEX", "1"), ("JOB_COMPLETION_INDEX", "7")]),
                0
            ),
            Some(1)
        );
        assert_eq!(task_from(lookup(&[]), 3), None);
        assert_eq!(task_from(lookup(&[("JOB_COMPLETION_INDEX", "x")]), 0), None);
        assert_eq!(
            task_from(lookup(&[("JOB_COMPLETION_INDEX", "1")]), u32::MAX),
            None
        );
    }
}
