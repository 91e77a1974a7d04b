//! `orch-executors`: the one place that turns a job's `executor` section into the executor its
//! workers run on: `local` gives worker processes on this machine, `slurm` job arrays (through
//! the Slurm commands or slurmrestd, checked against the cluster before anything runs), and
//! `kubernetes` the Indexed Jobs executor that only the operator can supply.
//!
//! The driver asks through the core's `ExecutorFactory`, so it never names an executor; the
//! worker never links this crate (it starts no workers). See docs/architecture.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, Executor};
use orch_core::invocation::{WorkerHost, worker_environment, worker_variables};
use orch_core::model::JobRecord;
use orch_core::platform::{ExecutorFactory, Platform};
use orch_core::spec::{HandlerSpec, SlurmExecutorSpec};
use orch_embedded::{LocalExecutor, WorkerLaunch};
/// The types of the Slurm settings below, so that callers need not link `orch-slurm`.
pub use orch_slurm::{PlainHttp, SharedToken, TokenSource};

/// The executors of one process: `orch run` on a workstation or login node, or the operator
/// (which adds its Kubernetes executor and its Slurm settings). [`Executors::new`] gives the
/// cautious defaults; set the fields that differ (`Executors { kubernetes: …, ..Executors::new(w) }`).
#[derive(Clone, Default)]
pub struct Executors {
    /// Program (and leading args) of the worker on this machine; the Slurm tasks run
    /// `executor.slurm.worker` when the spec names one, else this program.
    pub worker_command: Vec<String>,
    /// The executor of jobs with `executor.kubernetes`; only a caller with a Kubernetes client
    /// (the operator) has one.
    pub kubernetes: Option<Arc<dyn Executor>>,
    /// Whether Slurm tasks get the variables the handler reads from the worker's environment
    /// (`fromEnv`, `ORCH_SECRET_…`) with this process's values: true for `orch run`, whose
    /// environment is its user's; false for the operator, whose environment (its credentials)
    /// must never reach a tenant's job by a name the job chose.
    pub pass_handler_environment: bool,
    /// Whether slurmrestd may be reached over plain http to a loopback host. Default
    /// `Refused`: https only. `orch run` allows loopback (its user runs their own machine);
    /// the operator only when its administrator says so.
    pub slurm_plain_http: PlainHttp,
    /// The slurmrestd token, used instead of the spec's `tokenFile` or `SLURM_JWT` (the
    /// operator's, read from a Secret and refreshed). `None`: the spec says.
    pub slurm_token: Option<TokenSource>,
}

impl std::fmt::Debug for Executors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executors")
            .field("worker_command", &self.worker_command)
            .field("kubernetes", &self.kubernetes.is_some())
            .field("pass_handler_environment", &self.pass_handler_environment)
            .field("slurm_plain_http", &self.slurm_plain_http)
            .field("slurm_token", &self.slurm_token)
            .finish()
    }
}

impl Executors {
    /// Local processes and Slurm arrays, with `worker_command` as the worker, for the user
    /// running this process (`orch run`); slurmrestd over https only, its token as the spec
    /// says.
    pub fn new(worker_command: Vec<String>) -> Self {
        Executors {
            worker_command,
            pass_handler_environment: true,
            ..Executors::default()
        }
    }
}

#[async_trait]
impl ExecutorFactory for Executors {
    async fn executor(
        &self,
        job: &JobRecord,
        platform: &dyn Platform,
    ) -> BackendResult<Arc<dyn Executor>> {
        let section = &job.spec.spec.executor;
        if let Some(slurm) = &section.slurm {
            return Ok(Arc::new(self.slurm(job, slurm, platform).await?));
        }
        if section.kubernetes.is_some() {
            return self.kubernetes.clone().ok_or_else(|| {
                BackendError::message(
                    ErrorCategory::Invalid,
                    "executor.kubernetes runs under the operator only (kubectl apply or `orch submit`); use `local` or `slurm` with `orch run`",
                )
            });
        }
        Ok(Arc::new(self.local(job, platform)))
    }
}

impl Executors {
    /// Worker processes on this machine (`executor.local`), as many at once as the spec's
    /// `parallelism`, else as this machine has cores.
    fn local(&self, job: &JobRecord, platform: &dyn Platform) -> LocalExecutor {
        let parallelism = job
            .spec
            .spec
            .executor
            .local
            .clone()
            .unwrap_or_default()
            .effective_parallelism() as usize;
        let log_dir = platform.log_dir(&job.id);
        let log_in_storage = platform
            .backends()
            .objects
            .local_path(&orch_core::layout::task_logs(&job.id))
            .is_some_and(|stored| stored == log_dir);
        LocalExecutor::new(
            WorkerLaunch {
                command: self.worker_command.clone(),
                storage: platform.storage_uri(),
                log_dir,
                log_in_storage,
                // A kept worker writes each task's log where it is kept: in the storage.
                keep_workers: log_in_storage,
            },
            parallelism,
        )
    }

    /// Slurm job arrays (`executor.slurm`), checked against the cluster before anything runs.
    async fn slurm(
        &self,
        job: &JobRecord,
        spec: &SlurmExecutorSpec,
        platform: &dyn Platform,
    ) -> BackendResult<orch_slurm::SlurmExecutor> {
        let io = |path: &Path, e: std::io::Error| {
            BackendError::other(
                ErrorCategory::Infrastructure,
                format!("cannot create {}", path.display()),
                e,
            )
        };
        let cwd = std::env::current_dir().map_err(|e| io(Path::new("."), e))?;
        let log_dir = slurm_log_dir(&cwd, spec, platform, &job.id);
        std::fs::create_dir_all(&log_dir).map_err(|e| io(&log_dir, e))?;
        let program = spec
            .worker
            .clone()
            .or_else(|| self.worker_command.first().cloned())
            .ok_or_else(|| {
                BackendError::message(
                    ErrorCategory::Invalid,
                    "no worker program for the Slurm tasks (spec.executor.slurm.worker)",
                )
            })?;
        let launch = orch_slurm::SlurmLaunch {
            worker: orch_slurm::submission::WorkerCommand {
                program,
                storage: platform.storage_uri(),
                job: job.id.clone(),
            },
            resources: job.spec.spec.resources.clone(),
            spec: spec.clone(),
            log_dir,
            workdir: cwd,
            // All the tasks get of this process's environment, by either transport: orch's
            // settings, and the variables the handler reads from the worker's environment.
            environment: worker_environment(
                WorkerHost::SharedHost,
                orch_core::invocation::this_process_setting,
            )
            .into_iter()
            .chain(handler_environment(&job.spec.spec.handler, |k| {
                std::env::var(k)
                    .ok()
                    .filter(|_| self.pass_handler_environment)
            }))
            .collect(),
            plain_http: self.slurm_plain_http,
            token: self.slurm_token.clone(),
        };
        orch_slurm::connect(launch)
            .await
            .map_err(BackendError::from)
    }
}

/// The variables the handler reads from the worker's environment
/// (`HandlerSpec::env_passed_from_worker`: `fromEnv`, Secret variables) that `lookup` knows,
/// with their values: Slurm tasks get no others by name. Those orch passes anyway are left out.
fn handler_environment(
    handler: &HandlerSpec,
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    handler
        .env_passed_from_worker()
        .into_iter()
        .filter(|name| !worker_variables(WorkerHost::SharedHost).any(|k| k == name))
        .filter_map(|name| {
            let value = lookup(&name)?;
            Some((name, value))
        })
        .collect()
}

/// Where the Slurm tasks of `job` write their logs: `executor.slurm.logDir/<job>` (relative to
/// the working directory), else the platform's log directory of the job.
fn slurm_log_dir(
    cwd: &Path,
    spec: &SlurmExecutorSpec,
    platform: &dyn Platform,
    job: &str,
) -> PathBuf {
    match &spec.log_dir {
        Some(dir) => cwd.join(dir).join(job),
        None => platform.log_dir(job),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_cautious_and_debug_shows_no_token() {
        let executors = Executors::new(vec!["orch-worker".into()]);
        assert_eq!(executors.slurm_plain_http, PlainHttp::Refused);
        assert!(executors.slurm_token.is_none() && executors.kubernetes.is_none());
        let executors = Executors {
            slurm_token: Some(TokenSource::Shared(SharedToken::new("eyJ.c2VjcmV0.c2ln"))),
            ..executors
        };
        let debug = format!("{executors:?}");
        assert!(
            !debug.contains("c2VjcmV0") && debug.contains("SharedToken(<redacted>)"),
            "{debug}"
        );
    }
}
