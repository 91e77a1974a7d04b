//! `orch-worker`: the process that runs one array task. Started by an executor (local
//! processes, Slurm, Kubernetes), never by hand in normal use.

use clap::{Parser, Subcommand};
use orch_worker::run::{StopFlag, WorkerArgs};

#[derive(Parser)]
#[command(
    name = "orch-worker",
    version,
    about = "Runs one task of an orch job (started by an executor)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the task named by --task, ORCH_TASK_INDEX or SLURM_ARRAY_TASK_ID.
    Run {
        /// Storage URI of the job (file:///…).
        #[arg(long)]
        storage: String,
        /// Job id.
        #[arg(long)]
        job: String,
        /// Task group (array submission) this process belongs to.
        #[arg(long)]
        group: u32,
        /// Task index; defaults to ORCH_TASK_INDEX, then SLURM_ARRAY_TASK_ID.
        #[arg(long)]
        task: Option<u32>,
    },
}

fn task_from_env() -> Option<u32> {
    ["ORCH_TASK_INDEX", "SLURM_ARRAY_TASK_ID"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

fn main() {
    orch_worker::init_logging();
    let Cli {
        command:
            Command::Run {
                storage,
                job,
                group,
                task,
            },
    } = Cli::parse();
    let Some(task) = task.or_else(task_from_env) else {
        eprintln!("orch-worker: no task index (--task, ORCH_TASK_INDEX or SLURM_ARRAY_TASK_ID)");
        std::process::exit(2);
    };
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
    let args = WorkerArgs {
        storage,
        job,
        task,
        group,
    };
    let code = runtime.block_on(async move {
        let stop = StopFlag::default();
        let on_signal = stop.clone();
        tokio::spawn(async move {
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
        });
        match orch_worker::run::run(&args, stop).await {
            Ok(_) => 0,
            Err(e) => {
                tracing::error!(error = %e, category = ?e.category(), "task attempt ended without commit");
                e.exit_code()
            }
        }
    });
    std::process::exit(code);
}
