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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use orch_core::spec::{ResourcesSpec, SlurmExecutorSpec, SlurmTransport};

    use super::*;

    fn launch(url: String, plain_http: PlainHttp, token: Option<TokenSource>) -> SlurmLaunch {
        SlurmLaunch {
            worker: submission::WorkerCommand {
                program: "orch-worker".into(),
                storage: "file:///shared/s".into(),
                job: "j".into(),
            },
            resources: ResourcesSpec::default(),
            spec: SlurmExecutorSpec {
                transport: Some(SlurmTransport::Rest),
                url: Some(url),
                token_file: Some("/nonexistent/jwt".into()),
                user: Some("alice".into()),
                ..SlurmExecutorSpec::default()
            },
            log_dir: "/shared/logs".into(),
            workdir: "/shared".into(),
            environment: Vec::new(),
            plain_http,
            token,
        }
    }

    /// What `connect` fails with (nothing listens at the URL).
    async fn failure(launch: SlurmLaunch) -> SlurmError {
        match connect(launch).await {
            Err(e) => e,
            Ok(_) => panic!("connected to nothing"),
        }
    }

    #[tokio::test]
    async fn connect_passes_the_launch_settings_to_the_rest_client() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let shared = || Some(TokenSource::Shared(SharedToken::new("eyJ.c2VjcmV0.c2ln")));

        // The launch's token replaces the spec's tokenFile: the client gets as far as the network.
        let e = failure(launch(url.clone(), PlainHttp::Loopback, shared())).await;
        assert!(matches!(e, SlurmError::Unreachable { .. }), "{e}");
        // Without one, the spec's tokenFile is read (and is missing).
        let e = failure(launch(url.clone(), PlainHttp::Loopback, None)).await;
        assert!(
            matches!(&e, SlurmError::Invalid { field, .. } if field == "spec.executor.slurm.tokenFile"),
            "{e}"
        );
        // Plain http refused by the launch, before any token is read.
        let e = failure(launch(url, PlainHttp::Refused, shared())).await;
        assert!(
            matches!(&e, SlurmError::Invalid { field, .. } if field == "spec.executor.slurm.url"),
            "{e}"
        );
    }
}
