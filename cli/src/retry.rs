//! `orch retry`: runs an ended job's failed work again — its failed tasks whole, or with
//! `--items` only its failed items (all, or those of some error kinds), every other result
//! kept — and replaces the output with the merged result. A job of this machine's stores (what
//! `orch run` wrote) is driven here to its new end, as `orch run` would; an OrchJob is retried
//! by the operator, asked through its annotations (docs/reliability.md, "Redriving failed
//! items").

use std::path::{Path, PathBuf};

use clap::Args;
use orch_core::layout;
use orch_core::load::LoadedJob;
use orch_crd::RETRY_ALL_ITEMS;
use orch_runtime::control::RetryChoice;

use crate::Failure;
use crate::cluster::{self, KubeArgs, NameArgs, Request};
use crate::run::{self, Drive};

/// The error kinds an item can be recorded with: the handler protocol's four, `schema` (a
/// result that does not fit `spec.output.schema`) and `cancelled` (an item of a cancelled task).
const ITEM_ERROR_KINDS: [&str; 6] = [
    "transient",
    "permanent",
    "rate_limited",
    "infrastructure",
    "schema",
    "cancelled",
];

#[derive(Args)]
pub struct RetryArgs {
    /// A job file or, with --storage, a job id: a job `orch run` ran on this machine's stores.
    /// Otherwise an OrchJob in the cluster: `NAME` or `orchjob/NAME` (also `oj/NAME`).
    pub job: String,
    /// Run again only failed items, keeping every result and every other error; without it,
    /// tasks that failed all their attempts run again whole.
    #[arg(long)]
    pub items: bool,
    /// With --items: only items that failed with this error kind (repeat it for several):
    /// transient, permanent, rate_limited, infrastructure, schema, cancelled.
    #[arg(long = "kind", value_name = "KIND", requires = "items")]
    pub kinds: Vec<String>,
    /// The storage directory or s3:// URI of a job given by id (default: the job file's
    /// `storage.uri`, else ./.orch).
    #[arg(long)]
    pub storage: Option<String>,
    /// Do not draw a progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// The worker program; default: `orch-worker` next to this `orch`, then in PATH.
    #[arg(long, env = "ORCH_WORKER")]
    pub worker: Option<PathBuf>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

pub fn retry(args: RetryArgs, kubectl: bool) -> Result<u8, Failure> {
    if let Some(kind) = args
        .kinds
        .iter()
        .find(|k| !ITEM_ERROR_KINDS.contains(&k.as_str()))
    {
        return Err(Failure::usage(format!(
            "--kind {kind}: not an error kind; use one of {}",
            ITEM_ERROR_KINDS.join(", ")
        )));
    }
    let choice = if args.items {
        RetryChoice::Items {
            kinds: args.kinds.clone(),
        }
    } else {
        RetryChoice::Tasks
    };
    let file = Path::new(&args.job);
    if !kubectl && file.is_file() {
        let job = run::load_checked(file)?;
        orch_core::load::standalone_gaps(&job)?;
        return run::drive(&job, local(&args, choice, None));
    }
    if !kubectl && let Some(storage) = &args.storage {
        let job = stored_job(&args.job, storage)?;
        return run::drive(&job, local(&args, choice, Some(args.job.clone())));
    }
    let items = args.items.then(|| {
        if args.kinds.is_empty() {
            RETRY_ALL_ITEMS.to_string()
        } else {
            args.kinds.join(",")
        }
    });
    let name = NameArgs {
        name: args.job,
        kube: args.kube,
    };
    cluster::request_for(Request::Retry, name, items)
}

fn local(args: &RetryArgs, choice: RetryChoice, job_id: Option<String>) -> Drive {
    Drive {
        dry_run: false,
        no_progress: args.no_progress,
        worker: args.worker.clone(),
        retry: Some(choice),
        metrics_addr: None,
        metrics_emf: None,
        job_id,
        named: args.job.clone(),
    }
}

/// A job of `storage` named by id, as its driver needs it: the spec it ran with, stored in its
/// record.
fn stored_job(id: &str, storage: &str) -> Result<LoadedJob, Failure> {
    if !layout::valid_job_id(id) {
        return Err(Failure::usage(format!(
            "`{id}` is neither a job file nor a job id"
        )));
    }
    let root =
        orch_core::uri::Location::parse(storage, &std::env::current_dir().unwrap_or_default())
            .map_err(Failure::usage)?;
    if let orch_core::uri::Location::Local(p) = &root
        && !p.join(layout::state_db()).exists()
    {
        return Err(Failure::usage(format!(
            "no orch state in {} (check --storage)",
            p.display()
        )));
    }
    let scratch = orch_connect::scratch_dir(&format!("orch-retry-{}", std::process::id()));
    let rt = crate::runtime()?;
    let record = rt.block_on(async {
        let backends = orch_connect::open_backends(&root.to_uri(), scratch)
            .await
            .map_err(run::port_failure)?;
        backends.state.get_job(id).await.map_err(run::port_failure)
    })?;
    let Some(record) = record else {
        return Err(Failure::usage(format!(
            "no job {id} in {storage} (`orch status --storage {storage}` lists them)"
        )));
    };
    let mut file = record.spec;
    file.spec.storage.uri = Some(root.to_uri());
    Ok(LoadedJob {
        file,
        path: PathBuf::from(storage),
        rate_limits: Vec::new(),
    })
}
