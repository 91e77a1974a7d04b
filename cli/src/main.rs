//! `orch`: run, validate and inspect batch jobs. Thin: parsing and presentation only; the work
//! happens in `orch-core` and `orch-runtime`.
//!
//! Exit codes (DESIGN §6): 0 success, 1 job failed, 2 usage or validation error, 130 interrupted.

mod init;
mod run;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "orch",
    version,
    about = "Run one function over millions of records: partition, dispatch, retry, aggregate.",
    long_about = "orch turns one YAML job file (an OrchJob) into a whole batch run: it cuts the \
input into batches, runs your handler on every item with retries and checkpoints, and merges \
every task's output into Parquet files you can trust — each input item exactly once.\n\n\
Start with:  orch validate job.yaml   then   orch run job.yaml",
    after_help = "Exit codes: 0 success, 1 job failed, 2 invalid job file or usage, 130 interrupted.\n\
Logs: ORCH_LOG=debug for more detail, ORCH_LOG_FORMAT=json for JSON lines."
)]
struct Cli {
    /// Show progress details (info logs) on stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
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
    /// Show a job's state: tasks by state, items ok/failed, errors by kind, output.
    Status(status::StatusArgs),
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
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if verbose { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("ORCH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if std::env::var("ORCH_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate { file, show } => run::validate(&file, show),
        Command::Status(args) => status::status(args),
        Command::Init(args) => init::init(args),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "orch", &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
