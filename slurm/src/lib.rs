//! The Slurm bridge: orch tasks as Slurm job arrays, their states mirrored back.
//!
//! [`SlurmExecutor`] implements the core's `Executor` over a [`SlurmApi`], which has two
//! implementations: [`rest::RestApi`] (slurmrestd with a JWT, what an operator outside the
//! cluster uses) and [`cli::CliApi`] (`sbatch`, `squeue`, `sacct`, `scancel`, `scontrol` on a
//! login node). Everything that decides — how tasks are cut into arrays, what an array is
//! called, how a Slurm state maps to an orch one — is pure code in [`submission`] and
//! [`state`], tested without a cluster; the transports only move requests.
//!
//! Every array carries the orch job in its name and the task group in its comment, so a
//! coordinator that restarts finds the arrays it submitted instead of submitting them again
//! (docs/slurm.md).

pub mod api;
pub mod cli;
pub mod error;
pub mod executor;
pub mod rest;
pub mod state;
pub mod submission;

pub use api::{ArrayJob, ArrayTask, ClusterInfo, PartitionInfo, SlurmApi};
pub use error::{Result, SlurmError};
pub use executor::{SlurmExecutor, SlurmLaunch};
pub use rest::{PlainHttp, SharedToken, TokenSource};
pub use submission::ArraySubmission;

/// Connects to Slurm the way the spec's transport says and checks the job against the
/// cluster (see [`SlurmExecutor::connect`]). For `rest`, the token is the launch's when it
/// has one, else `spec.tokenFile`, else `SLURM_JWT`; a missing one fails here, before anything
/// is sent, as does a URL that `launch.plain_http` does not allow.
pub async fn connect(launch: SlurmLaunch) -> Result<SlurmExecutor> {
    let spec = &launch.spec;
    let api: std::sync::Arc<dyn SlurmApi> = match spec.effective_transport() {
        orch_core::spec::SlurmTransport::Cli => std::sync::Arc::new(cli::CliApi::new(None)),
        orch_core::spec::SlurmTransport::Rest => {
            let url = spec.url.clone().ok_or_else(|| {
                SlurmError::invalid("spec.executor.slurm.url", "the rest transport needs a URL")
            })?;
            let token = match (&launch.token, &spec.token_file) {
                (Some(token), _) => token.clone(),
                (None, Some(file)) => TokenSource::File(file.into()),
                (None, None) => TokenSource::Env,
            };
            std::sync::Arc::new(rest::RestApi::new(
                url,
                spec.user.clone(),
                token,
                launch.plain_http,
            )?)
        }
    };
    SlurmExecutor::connect(api, launch).await
}
