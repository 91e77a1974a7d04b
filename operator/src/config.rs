//! The operator's settings, and how they complete an `OrchJob`'s spec into the job the driver
//! runs: the default storage, and slurmrestd for Slurm jobs that name no transport of their
//! own. Both steps are pure, so they are tested without a cluster.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_core::FieldError;
use orch_core::load::LoadedJob;
use orch_core::platform::Platform;
use orch_core::spec::{OrchJobFile, SlurmTransport};

use crate::error::{Error, Result};
use orch_crd::OrchJob;

/// Settings of one operator process (flags and environment, see `main.rs`).
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Storage of jobs whose spec names none (`ORCH_STORAGE_URI`).
    pub storage_uri: Option<String>,
    /// slurmrestd for Slurm jobs that name no URL of their own (`ORCH_SLURM_URL`).
    pub slurm_url: Option<String>,
    /// File holding the JWT for slurmrestd (`--slurm-token-file`).
    pub slurm_token_file: Option<PathBuf>,
    /// Worker program (and leading args) for Slurm tasks and local workers.
    pub worker_command: Vec<String>,
    /// Image of worker pods (Kubernetes executor).
    pub worker_image: Option<String>,
    /// Command of worker pods; empty: the image's entrypoint.
    pub pod_worker_command: Vec<String>,
    /// Files on their way to or from S3, and local workers' logs.
    pub scratch: PathBuf,
    /// How long a job's lease in DynamoDB outlives a crashed operator.
    pub job_lease: Duration,
    /// Pause between two engine ticks of a job.
    pub tick: Duration,
    /// How often a running job's status is refreshed without a wake-up.
    pub status_interval: Duration,
}

/// The job the driver runs for `job`: the resource's name and spec, completed with the
/// operator's defaults, and checked by core's rules (the same as `orch validate`).
///
/// The rules run on the spec as written, so a file gets the same verdict here as from
/// `orch validate` and `orch submit` (a `tokenFile` on the commands transport is refused
/// everywhere, even where the operator's URL would have made it `rest`). Then the defaults are
/// filled in, and what is still missing is the operator's own gap, said as such; every problem
/// is reported at once.
pub fn prepare_job(job: &OrchJob, cfg: &OperatorConfig) -> Result<LoadedJob, Vec<FieldError>> {
    let as_written = OrchJobFile {
        api_version: orch_core::spec::API_VERSION.to_string(),
        kind: orch_core::spec::KIND.to_string(),
        metadata: orch_core::spec::ObjectMeta {
            name: job.metadata.name.clone().unwrap_or_default(),
            namespace: job.metadata.namespace.clone(),
            ..Default::default()
        },
        spec: job.spec.0.clone(),
    };
    let mut errors = orch_core::load::rules(&as_written);
    let mut file = as_written;
    let spec = &mut file.spec;
    if spec.storage.uri.is_none() {
        spec.storage.uri = cfg.storage_uri.clone();
    }
    // The operator's slurmrestd serves jobs that leave the transport open or ask for `rest`;
    // an explicit `transport: cli` is the user's choice and stays.
    if let (Some(slurm), Some(url)) = (spec.executor.slurm.as_mut(), &cfg.slurm_url)
        && slurm.url.is_none()
        && slurm.transport != Some(SlurmTransport::Cli)
    {
        slurm.transport = Some(SlurmTransport::Rest);
        slurm.url = Some(url.clone());
        if slurm.token_file.is_none() {
            slurm.token_file = cfg
                .slurm_token_file
                .as_ref()
                .map(|p| p.display().to_string());
        }
    }
    // The operator's defaults must pass the rules too (an unusable ORCH_STORAGE_URI, say). Run
    // again only on a spec that passed them as written, which would repeat its problems.
    if errors.is_empty() {
        errors = orch_core::load::rules(&file);
    }
    if file.spec.storage.uri.is_none() {
        errors.push(FieldError {
            path: "spec.storage.uri".into(),
            message: "not set, and the operator has no default storage (ORCH_STORAGE_URI / storage.uri in the chart)".into(),
        });
    }
    // Left to the operator, and this one has no default for it.
    for gap in orch_core::load::filled_by_operator(&file) {
        errors.push(FieldError {
            path: gap.path,
            message: "not set: the `rest` transport needs slurmrestd's URL (http://host:6820), and this operator has no default (--slurm-url / ORCH_SLURM_URL); set it in the job or in the operator".into(),
        });
    }
    if errors.is_empty() {
        Ok(LoadedJob {
            file,
            path: job_path(job),
            rate_limits: Vec::new(),
        })
    } else {
        Err(errors)
    }
}

/// What stands for the job file's path in messages: `namespace/name`.
pub fn job_path(job: &OrchJob) -> PathBuf {
    PathBuf::from(format!(
        "{}/{}",
        job.metadata.namespace.as_deref().unwrap_or("default"),
        job.metadata.name.as_deref().unwrap_or("")
    ))
}

/// The stores of each storage URI in use, opened once.
pub struct Platforms {
    cfg: OperatorConfig,
    open: Mutex<HashMap<String, Arc<dyn Platform>>>,
}

impl Platforms {
    pub fn new(cfg: OperatorConfig) -> Self {
        Platforms {
            cfg,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The platform of `storage_uri` (a directory is useful for an operator run on a
    /// workstation only).
    pub async fn get(&self, storage_uri: &str) -> Result<Arc<dyn Platform>> {
        if let Some(p) = self.lock().get(storage_uri) {
            return Ok(p.clone());
        }
        let opts = orch_connect::PlatformOptions {
            scratch: self.cfg.scratch.join("scratch"),
            log_root: self.cfg.scratch.join("logs"),
            job_lease: Some(self.cfg.job_lease),
        };
        let platform = orch_connect::open_platform(storage_uri, &opts)
            .await
            .map_err(|e| Error::Runtime(orch_runtime::Error::from_port(e)))?;
        Ok(self
            .lock()
            .entry(storage_uri.to_string())
            .or_insert(platform)
            .clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Platform>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(slurm_url: Option<&str>) -> OperatorConfig {
        OperatorConfig {
            storage_uri: Some("s3://bucket/orch/".into()),
            slurm_url: slurm_url.map(str::to_string),
            slurm_token_file: Some(PathBuf::from("/var/run/slurm/jwt")),
            worker_command: vec!["orch-worker".into()],
            worker_image: None,
            pod_worker_command: Vec::new(),
            scratch: PathBuf::from("/tmp/orch-operator"),
            job_lease: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            status_interval: Duration::from_secs(10),
        }
    }

    fn job(executor: &str) -> OrchJob {
        serde_yaml::from_str(&format!(
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: j, namespace: team-a}}\n\
             spec:\n  input: {{uri: \"s3://b/in.jsonl\"}}\n  handler: {{builtin: {{name: identity}}}}\n  \
             executor: {executor}\n"
        ))
        .unwrap()
    }

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn a_slurm_job_without_url_gets_the_operators_slurmrestd() {
        for executor in ["{slurm: {transport: rest}}", "{slurm: {}}"] {
            let loaded = prepare_job(&job(executor), &config(Some("http://slurm:6820"))).unwrap();
            let slurm = loaded.file.spec.executor.slurm.unwrap();
            assert_eq!(
                slurm.effective_transport(),
                SlurmTransport::Rest,
                "{executor}"
            );
            assert_eq!(slurm.url.as_deref(), Some("http://slurm:6820"));
            assert_eq!(slurm.token_file.as_deref(), Some("/var/run/slurm/jwt"));
            assert_eq!(
                loaded.file.spec.storage.uri.as_deref(),
                Some("s3://bucket/orch/")
            );
        }
    }

    #[test]
    fn an_explicit_commands_transport_stays_with_the_commands() {
        let loaded = prepare_job(
            &job("{slurm: {transport: cli}}"),
            &config(Some("http://slurm:6820")),
        )
        .unwrap();
        let slurm = loaded.file.spec.executor.slurm.unwrap();
        assert_eq!(slurm.effective_transport(), SlurmTransport::Cli);
        assert_eq!(slurm.url, None);
        assert_eq!(slurm.token_file, None);
    }

    #[test]
    fn the_verdict_on_the_spec_is_orch_validates() {
        // Accepted by `orch validate` (the URL is left to the operator), and here.
        let rest = job("{slurm: {transport: rest}}");
        assert!(orch_core::load::rules(&file_of(&rest)).is_empty());
        assert!(prepare_job(&rest, &config(Some("http://slurm:6820"))).is_ok());
        // Refused by `orch validate` (`tokenFile` belongs to `rest`), and here too, although
        // the operator's URL would make the job `rest`.
        let cli_token = job("{slurm: {tokenFile: /run/jwt}}");
        let refused = orch_core::load::rules(&file_of(&cli_token));
        assert_eq!(paths(&refused), ["spec.executor.slurm"]);
        let errors = prepare_job(&cli_token, &config(Some("http://slurm:6820"))).unwrap_err();
        assert_eq!(errors, refused);
    }

    #[test]
    fn without_a_url_anywhere_the_operator_says_whose_it_is() {
        let errors = prepare_job(&job("{slurm: {transport: rest}}"), &config(None)).unwrap_err();
        assert_eq!(paths(&errors), ["spec.executor.slurm.url"]);
        assert!(errors[0].message.contains("--slurm-url"), "{}", errors[0]);
        // The commands transport needs none.
        assert!(prepare_job(&job("{slurm: {}}"), &config(None)).is_ok());
    }

    fn file_of(job: &OrchJob) -> OrchJobFile {
        OrchJobFile {
            api_version: orch_core::spec::API_VERSION.to_string(),
            kind: orch_core::spec::KIND.to_string(),
            metadata: orch_core::spec::ObjectMeta {
                name: job.metadata.name.clone().unwrap_or_default(),
                ..Default::default()
            },
            spec: job.spec.0.clone(),
        }
    }
}
