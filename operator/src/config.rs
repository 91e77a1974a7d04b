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
pub fn prepare_job(job: &OrchJob, cfg: &OperatorConfig) -> Result<LoadedJob, Vec<FieldError>> {
    let mut spec = job.spec.0.clone();
    if spec.storage.uri.is_none() {
        spec.storage.uri = cfg.storage_uri.clone();
    }
    if let (Some(slurm), Some(url)) = (spec.executor.slurm.as_mut(), &cfg.slurm_url)
        && slurm.url.is_none()
    {
        slurm.transport = SlurmTransport::Rest;
        slurm.url = Some(url.clone());
        if slurm.token_file.is_none() {
            slurm.token_file = cfg
                .slurm_token_file
                .as_ref()
                .map(|p| p.display().to_string());
        }
    }
    let file = OrchJobFile {
        api_version: orch_core::spec::API_VERSION.to_string(),
        kind: orch_core::spec::KIND.to_string(),
        metadata: orch_core::spec::ObjectMeta {
            name: job.metadata.name.clone().unwrap_or_default(),
            namespace: job.metadata.namespace.clone(),
            ..Default::default()
        },
        spec,
    };
    let mut errors = orch_core::load::rules(&file);
    if file.spec.storage.uri.is_none() {
        errors.push(FieldError {
            path: "spec.storage.uri".into(),
            message: "not set, and the operator has no default storage (ORCH_STORAGE_URI / storage.uri in the chart)".into(),
        });
    }
    if errors.is_empty() {
        Ok(LoadedJob {
            file,
            path: job_path(job),
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
