//! The operator's settings, and how an `OrchJob`'s spec becomes the job the driver runs: core's
//! rules, then the namespace's `OrchPolicy` (`orch_core::policy`), which refuses what the admin
//! does not allow and fills in what the admin chooses. Both steps are pure, so they are tested
//! without a cluster (docs/security.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_core::FieldError;
use orch_core::load::LoadedJob;
use orch_core::platform::Platform;
use orch_core::policy::{self, JobLimits, PolicySpec, SlurmToken};
use orch_core::spec::OrchJobFile;

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
    /// Whether plain `http://` to slurmrestd on a loopback address is allowed
    /// (`--slurm-allow-http-loopback`); any other `http://` is always refused.
    pub slurm_allow_http_loopback: bool,
    /// The operator's own namespace, where the token Secrets that policies name live.
    pub namespace: String,
    /// Worker program (and leading args) for Slurm tasks and local workers.
    pub worker_command: Vec<String>,
    /// Image of worker pods (Kubernetes executor).
    pub worker_image: Option<String>,
    /// Command of worker pods; empty: the image's entrypoint.
    pub pod_worker_command: Vec<String>,
    /// Local disk of each worker pod (`--worker-scratch-size`).
    pub worker_scratch_bytes: u64,
    /// Files on their way to or from S3, and local workers' logs.
    pub scratch: PathBuf,
    /// How long a job's lease in DynamoDB outlives a crashed operator.
    pub job_lease: Duration,
    /// Pause between two engine ticks of a job.
    pub tick: Duration,
    /// How often a running job's status is refreshed without a wake-up.
    pub status_interval: Duration,
}

/// Why the operator does not run a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// core's rules refuse the spec (what `orch validate` says too): `InvalidSpec`.
    Invalid(Vec<FieldError>),
    /// The namespace's `OrchPolicy` refuses it, or none governs the namespace: `PolicyDenied`.
    Denied(Vec<FieldError>),
}

impl Refusal {
    pub fn errors(&self) -> &[FieldError] {
        match self {
            Refusal::Invalid(e) | Refusal::Denied(e) => e,
        }
    }
}

/// A job the operator may run: the spec completed with its policy's choices, and what of the
/// policy the driver needs besides the spec.
#[derive(Debug, Clone)]
pub struct PreparedJob {
    pub loaded: LoadedJob,
    /// The policy that allowed it.
    pub policy: String,
    /// The policy's token Secret for slurmrestd, when it names one.
    pub slurm_token: Option<SlurmToken>,
    pub limits: JobLimits,
}

/// The job the driver runs for `job`, if the rules and its namespace's policy let it run.
///
/// The rules run on the spec as written, so a file gets the same verdict here as from
/// `orch validate` and `orch submit`; then the namespace's policy decides and fills in what
/// the admin chooses (storage, Slurm endpoint, user and token, default partition…), and the
/// rules run again on the result (a policy's own value may be unusable). Every problem is
/// reported at once.
pub fn prepare_job(
    job: &OrchJob,
    cfg: &OperatorConfig,
    policies: &[(String, PolicySpec)],
) -> Result<PreparedJob, Refusal> {
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
    let errors = orch_core::load::rules(&as_written);
    if !errors.is_empty() {
        return Err(Refusal::Invalid(errors));
    }
    let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
    let (name, policy) = governing(job, policies).map_err(|e| Refusal::Denied(vec![e]))?;
    let governed = policy::govern(
        &as_written.spec,
        namespace,
        name,
        policy,
        &cfg.policy_defaults(),
    )
    .map_err(Refusal::Denied)?;
    let file = OrchJobFile {
        spec: governed.spec,
        ..as_written
    };
    // The policy's own values must pass the rules too (an unusable URL, say): the admin's
    // problem, said as the policy's.
    let errors: Vec<FieldError> = orch_core::load::rules(&file)
        .into_iter()
        .map(|e| FieldError {
            message: format!("as completed by OrchPolicy `{name}`: {}", e.message),
            ..e
        })
        .collect();
    if !errors.is_empty() {
        return Err(Refusal::Denied(errors));
    }
    Ok(PreparedJob {
        loaded: LoadedJob {
            file,
            path: job_path(job),
            rate_limits: Vec::new(),
        },
        policy: governed.policy,
        slurm_token: governed.slurm_token,
        limits: governed.limits,
    })
}

/// The job storage of `job`'s namespace, as its policy says; `None` when no single policy
/// governs the namespace.
pub fn namespace_storage(
    job: &OrchJob,
    cfg: &OperatorConfig,
    policies: &[(String, PolicySpec)],
) -> Option<String> {
    let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
    let (_, policy) = governing(job, policies).ok()?;
    policy::storage_uri(namespace, policy, &cfg.policy_defaults())
}

/// The one policy that governs `job`'s namespace, with its name.
pub fn governing<'a>(
    job: &OrchJob,
    policies: &'a [(String, PolicySpec)],
) -> Result<(&'a str, &'a PolicySpec), FieldError> {
    let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
    policy::select(policies.iter().map(|(n, p)| (n.as_str(), p)), namespace)
}

/// What stands for the job file's path in messages: `namespace/name`.
pub fn job_path(job: &OrchJob) -> PathBuf {
    PathBuf::from(format!(
        "{}/{}",
        job.metadata.namespace.as_deref().unwrap_or("default"),
        job.metadata.name.as_deref().unwrap_or("")
    ))
}

impl OperatorConfig {
    /// What this operator supplies where a policy leaves a choice open.
    pub fn policy_defaults(&self) -> policy::OperatorDefaults {
        policy::OperatorDefaults {
            storage_uri: self.storage_uri.clone(),
            slurm_url: self.slurm_url.clone(),
            slurm_token_file: self
                .slurm_token_file
                .as_ref()
                .map(|p| p.display().to_string()),
        }
    }
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
    use orch_core::spec::SlurmTransport;

    fn config(slurm_url: Option<&str>) -> OperatorConfig {
        OperatorConfig {
            storage_uri: Some("s3://bucket/orch/".into()),
            slurm_url: slurm_url.map(str::to_string),
            slurm_token_file: Some(PathBuf::from("/var/run/slurm/jwt")),
            slurm_allow_http_loopback: false,
            namespace: "orch-system".into(),
            worker_command: vec!["orch-worker".into()],
            worker_image: None,
            pod_worker_command: Vec::new(),
            worker_scratch_bytes: 1 << 30,
            scratch: PathBuf::from("/tmp/orch-operator"),
            job_lease: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            status_interval: Duration::from_secs(10),
        }
    }

    fn job(executor: &str) -> OrchJob {
        serde_yaml::from_str(&format!(
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {{name: j, namespace: team-a}}\n\
             spec:\n  input: {{uri: \"s3://bucket/team-a/in.jsonl\"}}\n  handler: {{builtin: {{name: identity}}}}\n  \
             executor: {executor}\n"
        ))
        .unwrap()
    }

    fn policies(yaml: &str) -> Vec<(String, PolicySpec)> {
        vec![("team-a".into(), serde_yaml::from_str(yaml).unwrap())]
    }

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn a_slurm_job_gets_the_operators_slurmrestd_and_the_policys_user() {
        let allowed = policies("namespaces: [team-a]\nslurm: {user: alice}");
        for executor in ["{slurm: {transport: rest}}", "{slurm: {}}"] {
            let prepared = prepare_job(
                &job(executor),
                &config(Some("https://slurm:6820")),
                &allowed,
            )
            .unwrap();
            let slurm = prepared.loaded.file.spec.executor.slurm.unwrap();
            assert_eq!(
                slurm.effective_transport(),
                SlurmTransport::Rest,
                "{executor}"
            );
            assert_eq!(slurm.url.as_deref(), Some("https://slurm:6820"));
            assert_eq!(slurm.user.as_deref(), Some("alice"));
            assert_eq!(slurm.token_file.as_deref(), Some("/var/run/slurm/jwt"));
            assert_eq!(
                prepared.loaded.file.spec.storage.uri.as_deref(),
                Some("s3://bucket/orch/team-a/")
            );
            assert_eq!(prepared.policy, "team-a");
        }
    }

    #[test]
    fn the_verdict_on_the_spec_is_orch_validates_before_the_policys() {
        let allowed = policies("namespaces: [team-a]\nslurm: {user: alice}");
        // Refused by `orch validate` (`tokenFile` belongs to `rest`): InvalidSpec, whatever
        // the policy says.
        let cli_token = job("{slurm: {tokenFile: /run/jwt}}");
        let refused = orch_core::load::rules(&file_of(&cli_token));
        assert_eq!(paths(&refused), ["spec.executor.slurm"]);
        assert_eq!(
            prepare_job(&cli_token, &config(Some("https://slurm:6820")), &allowed).unwrap_err(),
            Refusal::Invalid(refused)
        );
        // Valid, but the admin's to choose: PolicyDenied.
        let chosen = job("{slurm: {url: \"https://attacker:6820\", user: root}}");
        let Refusal::Denied(errors) =
            prepare_job(&chosen, &config(Some("https://slurm:6820")), &allowed).unwrap_err()
        else {
            panic!("not a policy denial")
        };
        assert_eq!(
            paths(&errors),
            ["spec.executor.slurm.url", "spec.executor.slurm.user"]
        );
    }

    #[test]
    fn a_namespace_without_a_policy_runs_nothing() {
        let other = vec![(
            "team-b".to_string(),
            serde_yaml::from_str("namespaces: [team-b]\nslurm: {user: bob}").unwrap(),
        )];
        for policies in [Vec::new(), other] {
            let Refusal::Denied(errors) = prepare_job(
                &job("{slurm: {}}"),
                &config(Some("https://s:6820")),
                &policies,
            )
            .unwrap_err() else {
                panic!("not a policy denial")
            };
            assert_eq!(paths(&errors), ["metadata.namespace"]);
        }
    }

    #[test]
    fn the_policys_own_unusable_values_are_said_as_the_policys() {
        let bad = policies(
            "namespaces: [team-a]\nslurm: {user: alice}\nstorage: {uri: \"ftp://x/\", dataPrefix: \"s3://bucket/team-a/\"}",
        );
        let Refusal::Denied(errors) =
            prepare_job(&job("{slurm: {}}"), &config(Some("https://s:6820")), &bad).unwrap_err()
        else {
            panic!("not a policy denial")
        };
        assert_eq!(paths(&errors), ["spec.storage.uri"]);
        assert!(
            errors[0]
                .message
                .contains("as completed by OrchPolicy `team-a`"),
            "{errors:?}"
        );
    }

    #[test]
    fn the_namespace_storage_is_the_policys() {
        let allowed = policies("namespaces: [team-a]\nslurm: {user: alice}");
        assert_eq!(
            namespace_storage(&job("{slurm: {}}"), &config(None), &allowed).as_deref(),
            Some("s3://bucket/orch/team-a/")
        );
        assert_eq!(
            namespace_storage(&job("{slurm: {}}"), &config(None), &[]),
            None
        );
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
