//! `orch`: run, validate and inspect batch jobs. Thin: parsing and presentation only; the work
//! happens in `orch-core` and `orch-runtime`.
//!
//! Exit codes (docs/job-spec.md): 0 success, 1 job failed, 2 usage or validation error, 130 interrupted.
//!
//! The same binary is the kubectl plugin: run as `kubectl-orch` (by kubectl, through the
//! `kubectl-orch` shim or a symlink) it names itself `kubectl orch` and `status` reads the cluster.

mod cluster;
mod dashboard;
mod init;
mod logs;
mod metrics;
mod retry;
mod run;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "orch",
    version,
    about = "Run one function over millions of records: partition, dispatch, retry, aggregate.",
    long_about = "orch turns one YAML job file (an OrchJob) into a whole batch run: it cuts the \
input into batches, runs your handler on every item with retries and checkpoints, and merges \
every task's output into Parquet files you can trust — each input item exactly once.\n\n\
Start with:  orch validate job.yaml   then   orch run job.yaml\n\
In a cluster with orch-operator:  orch submit job.yaml   then   orch status NAME --watch",
    after_help = "Exit codes: 0 success, 1 job failed (or the cluster could not be reached), 2 invalid \
job file or usage, 130 interrupted.\n\
Cluster commands use the kubeconfig (KUBECONFIG, --kubeconfig, --context, -n); see \
docs/cli-cluster.md.\n\
Logs: ORCH_LOG=debug for more detail, --log-format json (ORCH_LOG_FORMAT) for JSON lines."
)]
struct Cli {
    /// Show progress details (info logs) on stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Log lines as text or JSON (passed on to the workers `orch run` starts).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "ORCH_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: orch_core::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job here, to the end, with a progress bar (resumes an interrupted run).
    #[command(
        long_about = "Run a job on this machine, to the end, with a progress bar.\n\n\
Running the same job file again over the same input resumes an interrupted run (after Ctrl-C, \
a crash or a reboot); a run that already finished starts over. State lives in the job's \
storage directory (default ./.orch).",
        after_help = "Examples:\n  orch run examples/reviews-sentiment/job.yaml\n  orch run --dry-run job.yaml"
    )]
    Run(run::RunArgs),
    /// Check a job file (schema, rules, input readable, handler found) without running it.
    Validate {
        /// The job file.
        file: PathBuf,
        /// Print the job as it will run: `extends` merged, defaults filled in, paths absolute.
        #[arg(long)]
        show: bool,
    },
    /// Create or update an OrchJob in the cluster from a job file (server-side apply).
    #[command(
        long_about = "Check a job file as `orch validate` does (schema and rules; exit 2 with \
every problem and its field path), then create the OrchJob in the cluster, or update it: \
server-side apply with field manager `orch`, so submitting the same file again changes nothing. \
`extends` is merged in; everything else is sent as written (relative paths are the workers' to \
resolve). The namespace is the file's metadata.namespace, else -n, else the context's.",
        after_help = "Examples:\n  orch submit job.yaml\n  orch submit job.yaml --dry-run -n team-a"
    )]
    Submit(cluster::SubmitArgs),
    /// Show a job's state: from the local stores, or of an OrchJob in the cluster.
    #[command(
        long_about = "Show a job's state: phase, tasks, items ok and failed, errors, output.\n\n\
Local stores (what `orch run` wrote, in a directory or S3): give a job file or a job id.\n\
An OrchJob in the cluster: give its name with --cluster, -n, --context, --kubeconfig or \
--watch, or write it orchjob/NAME (oj/NAME); `kubectl orch status` always reads the cluster.",
        after_help = "Examples:\n  orch status examples/reviews-sentiment/job.yaml\n  \
orch status reviews-sentiment --watch\n  orch status oj/reviews-sentiment -o yaml\n  \
orch status --cluster -n team-a\n\n\
--watch exits 0 when the job succeeds and 1 when it fails, as `orch run` does."
    )]
    Status(cluster::StatusArgs),
    /// Pause an OrchJob: no new tasks, no new tokens (sets spec.suspend).
    Pause(cluster::NameArgs),
    /// Resume a paused OrchJob (clears spec.suspend).
    Resume(cluster::NameArgs),
    /// Print a task's log (every attempt), or every failed attempt's error and log end.
    #[command(
        long_about = "Print the log of a task's attempts: the worker's own lines and its \
handler's stderr. Without TASK, every attempt that failed or was lost, each with its error and \
the last lines of its log. Reads the job's storage (and, for S3 storage, the logs `orch run` \
kept in ./.orch/logs).",
        after_help = "Examples:\n  orch logs job.yaml            every failed attempt, with its error\n  \
orch logs job.yaml 3 -f       task 3's log, as it grows, until the task ends\n  \
orch logs job.yaml 3 --attempt 1 --tail 50 --since 10m"
    )]
    Logs(logs::LogsArgs),
    /// Serve the web dashboard of a storage's jobs (progress, tasks, errors, logs) locally.
    #[command(
        long_about = "Serve the web dashboard of every job in a storage: progress, throughput and \
ETA, tasks by state, failed items by error kind with samples, rate-limit use, each task's \
attempts and logs. The page updates itself every 2 seconds. On a loopback address it also offers \
pause, resume, cancel and retry (the same changes as the orch commands); elsewhere, or with \
--read-only, it only shows.",
        after_help = "Examples:\n  orch dashboard                       ./.orch on http://127.0.0.1:8080/\n  \
orch dashboard --storage s3://bucket/orch --addr 127.0.0.1:9000"
    )]
    Dashboard(dashboard::DashboardArgs),
    /// Run an ended job's failed tasks, or only its failed items (--items), again.
    #[command(
        long_about = "Run an ended job's failed work again and replace its output with the merged \
result. Without --items, tasks that failed all their attempts run again whole; with --items, \
only failed items run again (all, or those of each --kind), every result and every other error \
is kept, and the output and errors.parquet are replaced, with _SUCCESS written anew when the job \
succeeds.\n\n\
A job file (or a job id with --storage) names a job `orch run` ran: it is driven here to its new \
end, with a progress bar, as `orch run` would. Otherwise the argument is an OrchJob: the \
operator runs the retry, asked through the annotations orch.dev/retry and orch.dev/retry-items.",
        after_help = "Examples:\n  orch retry job.yaml --items\n  \
orch retry job.yaml --items --kind transient --kind rate_limited\n  \
orch retry reviews-1a2b3c4d --storage ./.orch --items\n  orch retry oj/reviews --items -n team-a"
    )]
    Retry(retry::RetryArgs),
    /// Cancel an OrchJob: running tasks stop, it ends Failed (annotation orch.dev/cancel).
    Cancel(cluster::NameArgs),
    /// Delete an OrchJob and its artifacts, after confirmation; waits until it is gone.
    #[command(
        long_about = "Delete an OrchJob and the job's artifacts: manifests, batches, task \
results and state (never the final output). Marks it with the annotation \
orch.dev/purge-on-delete, deletes it, and waits until the operator's finalizer has cleaned up \
and the object is gone. Asks first on a terminal; --yes is required when stdin is not one."
    )]
    Purge(cluster::PurgeArgs),
    /// Create the AWS table and queues (and a bucket) orch needs: for development and tests.
    #[command(
        long_about = "Create the AWS resources of docs/aws.md: the DynamoDB table \
(ORCH_DYNAMODB_TABLE, default orch), the SQS retry queue and its dead-letter queue \
(ORCH_SQS_QUEUE, default orch-retries) and, with --bucket, an S3 bucket with versioning on and \
public access blocked. Resources that already exist are kept, so it can run again.\n\n\
This is for development and tests (moto, LocalStack, a sandbox account). Production creates \
these resources with the Terraform in infra/, whose roles may not create them.",
        after_help = "Credentials and region come from the standard AWS chain; AWS_ENDPOINT_URL \
points at an emulator.\n\nExamples:\n  AWS_ENDPOINT_URL=http://localhost:5000 orch init --bucket dev-orch"
    )]
    Init(init::InitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// An error to show to a person, with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<orch_core::Error> for Failure {
    fn from(e: orch_core::Error) -> Self {
        let code = if e.category() == orch_core::ErrorCategory::Invalid {
            2
        } else {
            1
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<orch_runtime::Error> for Failure {
    fn from(e: orch_runtime::Error) -> Self {
        let code = match e {
            orch_runtime::Error::Interrupted => 130,
            _ if e.category() == orch_core::ErrorCategory::Invalid => 2,
            _ => 1,
        };
        let mut message = e.to_string();
        if e.is_disk_full() {
            message.push_str(
                "\nthe disk is full: free some space (or give the storage more), then run the \
                 same command again: the job resumes where it stopped",
            );
        }
        Failure { code, message }
    }
}

fn init_logging(verbose: bool, format: orch_core::logging::LogFormat) {
    // kube's client logs each failed request as an error; orch reports it in one line of its
    // own, so kube stays quiet unless ORCH_LOG asks for it.
    let default = if verbose {
        "info,kube_client=off"
    } else {
        "warn,kube_client=off"
    };
    orch_core::logging::init(default, format);
}

/// Whether this process runs as the kubectl plugin (`kubectl orch` runs `kubectl-orch`).
fn invoked_as_kubectl_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("kubectl-orch"))
}

fn main() -> ExitCode {
    let kubectl = invoked_as_kubectl_plugin(std::env::args_os().next().as_deref());
    let mut command = Cli::command();
    if kubectl {
        command = command.bin_name("kubectl orch");
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.verbose, cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate { file, show } => run::validate(&file, show),
        Command::Submit(args) => cluster::submit(args, kubectl),
        Command::Status(args) => cluster::status(args, kubectl),
        Command::Logs(args) => logs::logs(args),
        Command::Dashboard(args) => dashboard::dashboard(args),
        Command::Pause(args) => cluster::request(cluster::Request::Pause, args),
        Command::Resume(args) => cluster::request(cluster::Request::Resume, args),
        Command::Retry(args) => retry::retry(args, kubectl),
        Command::Cancel(args) => cluster::request(cluster::Request::Cancel, args),
        Command::Purge(args) => cluster::purge(args),
        Command::Init(args) => init::init(args),
        Command::Completion { shell } => {
            let name = if kubectl { "kubectl-orch" } else { "orch" };
            clap_complete::generate(shell, &mut Cli::command(), name, &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

/// A single-threaded async runtime for one command (the AWS and Kubernetes calls of
/// `init`, `status` and the cluster verbs).
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot start the async runtime: {e}"),
        })
}
