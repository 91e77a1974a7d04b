//! How a task group becomes Kubernetes Jobs, as pure functions: cutting the group into runs of
//! consecutive task ids (an Indexed Job's indexes are `0..completions`, so each Job covers one
//! run and its worker adds `--task-offset`), the Jobs' deterministic names, labels and
//! executor ids, and the Job manifest itself.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use orch_core::invocation::WorkerInvocation;
use orch_core::model::{TaskGroup, TaskKind};
use orch_core::spec::{ImagePullPolicy, KubernetesExecutorSpec, ResourcesSpec, SecretKeyRef};
use sha2::{Digest, Sha256};

/// Longest Job name: Kubernetes copies it into a label of every pod, and label values stop at 63.
pub const MAX_JOB_NAME: usize = 63;
/// Most indexes of one Job. Above 100,000 completions Kubernetes asks more of a Job with
/// `backoffLimitPerIndex` (`maxFailedIndexes`, lower parallelism), so larger runs are cut.
pub const MAX_COMPLETIONS: u32 = 100_000;
/// The container's name in every worker pod.
pub const CONTAINER: &str = "worker";
/// User and group the worker runs as (those of orch's worker image).
pub const WORKER_UID: i64 = 65532;
/// How long a stopped worker has to checkpoint before it is killed.
pub const TERMINATION_GRACE_SECONDS: i64 = 30;
/// How long a finished Job (and its pods, with their logs) stays before Kubernetes deletes it.
pub const FINISHED_JOB_TTL_SECONDS: i32 = 24 * 3600;

/// Labels of every Job and pod orch creates.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "orch";
/// The orch job (its id, made a valid label value).
pub const JOB_LABEL: &str = "orch.dev/job";
/// The task group.
pub const GROUP_LABEL: &str = "orch.dev/group";
/// What the tasks do: `work`, `merge<level>` or `final`.
pub const KIND_LABEL: &str = "orch.dev/kind";
/// Annotation with the orch job id, whole.
pub const JOB_ID_ANNOTATION: &str = "orch.dev/job-id";
/// Annotation with the task id of index 0.
pub const TASK_OFFSET_ANNOTATION: &str = "orch.dev/task-offset";

/// `work`, `merge<level>` or `final`.
pub fn kind_word(kind: TaskKind) -> String {
    match kind {
        TaskKind::Work => "work".to_string(),
        TaskKind::Merge { level } => format!("merge{level}"),
        TaskKind::Final => "final".to_string(),
    }
}

fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
        h.update(b"\n");
    }
    h.finalize()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lowercase letters, digits and `-` of `text` (anything else becomes `-`), at most `max`
/// characters, without `-` at either end.
fn dns_label_part(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    cleaned.trim_matches('-').to_string()
}

/// The orch job id as a label value: itself when it is one (job ids are `name-<8 hex>`, at most
/// 59 characters), else a cut-down form with a digest of the whole id.
pub fn job_label_value(job_id: &str) -> String {
    if orch_core::k8s_name::is_label_name(job_id) {
        return job_id.to_string();
    }
    let hash = digest(&[job_id.as_bytes()]);
    let head = dns_label_part(job_id, 63 - hash.len() - 1);
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// The label selector of every Job and pod of one orch job.
pub fn job_selector(job_id: &str) -> String {
    format!(
        "{MANAGED_BY}={MANAGED_BY_VALUE},{JOB_LABEL}={}",
        job_label_value(job_id)
    )
}

/// One Kubernetes Job of a task group: consecutive tasks from `offset`, index `i` being task
/// `offset + i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    pub name: String,
    pub kind: TaskKind,
    pub group: u32,
    pub offset: u32,
    /// (task, attempt), task ids `offset, offset + 1, …`.
    pub tasks: Vec<(u32, u32)>,
    /// The group's `job.json` digest, for the workers' command line.
    pub manifest_sha256: Option<String>,
}

impl PlannedJob {
    /// The executor id of each task.
    pub fn ids(&self) -> impl Iterator<Item = (u32, String)> + '_ {
        self.tasks
            .iter()
            .map(|(task, _)| (*task, executor_id(&self.name, task - self.offset)))
    }

    pub fn completions(&self) -> u32 {
        self.tasks.len() as u32
    }
}

/// The name of one Job: `<orchjob name>-<kind>-g<group>-b<offset>-<digest>`, the digest over
/// the orch job id, kind, group, offset and every (task, attempt). The same submission always
/// gets the same name (so a second create finds it), a retry of the same tasks never does.
/// The OrchJob's name is shortened to keep the whole within [`MAX_JOB_NAME`].
pub fn job_name(
    orch_job_name: &str,
    job_id: &str,
    kind: TaskKind,
    group: u32,
    offset: u32,
    tasks: &[(u32, u32)],
) -> String {
    let kind = kind_word(kind);
    let pairs: String = tasks.iter().map(|(t, a)| format!("{t}:{a},")).collect();
    let hash = digest(&[
        job_id.as_bytes(),
        kind.as_bytes(),
        group.to_string().as_bytes(),
        offset.to_string().as_bytes(),
        pairs.as_bytes(),
    ]);
    let suffix = format!("{kind}-g{group}-b{offset}-{hash}");
    let room = MAX_JOB_NAME.saturating_sub(suffix.len() + 1);
    let head = dns_label_part(orch_job_name, room);
    let head = if head.is_empty() { "orch" } else { &head };
    format!("{head}-{suffix}")
}

/// Cuts a group into runs of consecutive task ids (at most [`MAX_COMPLETIONS`] each), one Job
/// per run. A fresh group is one run; retries scattered over the job give one Job per run of
/// neighbours. A task listed twice runs once.
pub fn plan_jobs(orch_job_name: &str, job_id: &str, group: &TaskGroup) -> Vec<PlannedJob> {
    let mut tasks = group.tasks.clone();
    tasks.sort_unstable();
    tasks.dedup_by_key(|(t, _)| *t);
    let mut runs: Vec<Vec<(u32, u32)>> = Vec::new();
    for pair in tasks {
        match runs.last_mut() {
            Some(run)
                if run.len() < MAX_COMPLETIONS as usize
                    && run
                        .last()
                        .is_some_and(|(t, _)| t.checked_add(1) == Some(pair.0)) =>
            {
                run.push(pair)
            }
            _ => runs.push(vec![pair]),
        }
    }
    runs.into_iter()
        .filter_map(|tasks| {
            let offset = tasks.first()?.0;
            Some(PlannedJob {
                name: job_name(orch_job_name, job_id, group.kind, group.id, offset, &tasks),
                kind: group.kind,
                group: group.id,
                offset,
                tasks,
                manifest_sha256: group.manifest_sha256.clone(),
            })
        })
        .collect()
}

/// The executor id of index `index` of Job `job`: `k8s:<job>:<index>`.
pub fn executor_id(job: &str, index: u32) -> String {
    format!("k8s:{job}:{index}")
}

/// The Job name and index of an executor id made by [`executor_id`].
pub fn parse_executor_id(id: &str) -> Option<(&str, u32)> {
    let (job, index) = id.strip_prefix("k8s:")?.rsplit_once(':')?;
    if job.is_empty() {
        return None;
    }
    Some((job, index.parse().ok()?))
}

/// A worker pod's local disk unless the operator says otherwise.
pub const DEFAULT_SCRATCH_BYTES: u64 = 10 << 30;

/// `spec.resources` in Kubernetes' terms, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResources {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub gpus: Option<u32>,
    /// The task's time limit: the pod's `activeDeadlineSeconds`.
    pub time_seconds: i64,
    /// Local disk of a worker (its `/tmp`): the `ephemeral-storage` request and limit, and the
    /// `emptyDir`'s `sizeLimit`, so one pod cannot fill its node's disk. The admin's
    /// (`--worker-scratch-size`), not the job's.
    pub scratch_bytes: u64,
}

impl PodResources {
    /// Reads `spec.resources`; `Err((field, reason))` for what a pod cannot have.
    pub fn of(resources: &ResourcesSpec) -> Result<Self, (String, String)> {
        let memory_bytes = resources
            .memory
            .as_bytes()
            .map_err(|e| ("spec.resources.memory".to_string(), e))?;
        if memory_bytes == 0 {
            return Err(("spec.resources.memory".into(), "must be more than 0".into()));
        }
        let time = resources
            .time
            .as_duration()
            .map_err(|e| ("spec.resources.time".to_string(), e))?;
        let gpus = KubernetesExecutorSpec::gpus(resources)
            .map_err(|e| ("spec.resources.gres".to_string(), e))?;
        Ok(PodResources {
            scratch_bytes: DEFAULT_SCRATCH_BYTES,
            cpus: resources.cpus.max(1),
            memory_bytes,
            gpus,
            time_seconds: i64::try_from(time.as_secs() + u64::from(time.subsec_nanos() > 0))
                .unwrap_or(i64::MAX)
                .max(1),
        })
    }

    /// Requests and limits alike: the pod gets what a Slurm task would (and the `Guaranteed`
    /// class); going over the memory is an OOM kill the executor reports as such.
    pub fn requirements(&self) -> ResourceRequirements {
        let mut amounts = BTreeMap::new();
        amounts.insert("cpu".to_string(), Quantity(self.cpus.to_string()));
        amounts.insert(
            "memory".to_string(),
            Quantity(memory_quantity(self.memory_bytes)),
        );
        amounts.insert(
            "ephemeral-storage".to_string(),
            Quantity(memory_quantity(self.scratch_bytes)),
        );
        if let Some(gpus) = self.gpus {
            amounts.insert("nvidia.com/gpu".to_string(), Quantity(gpus.to_string()));
        }
        ResourceRequirements {
            limits: Some(amounts.clone()),
            requests: Some(amounts),
            ..ResourceRequirements::default()
        }
    }
}

/// Bytes in the largest binary unit that divides them (`2Gi`, `1536Mi`, `1000`).
pub fn memory_quantity(bytes: u64) -> String {
    for (unit, size) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Everything the Jobs of one orch job share, resolved.
#[derive(Debug, Clone)]
pub struct JobTemplate {
    pub namespace: String,
    pub owner: Option<OwnerReference>,
    pub orch_job_name: String,
    pub job_id: String,
    pub storage: String,
    pub image: String,
    /// The container's `command`; empty: the image's entrypoint.
    pub command: Vec<String>,
    pub environment: Vec<(String, String)>,
    /// Secret keys set by reference, by variable name (the `http` handler's `secretRef`s).
    pub secrets: Vec<(String, SecretKeyRef)>,
    pub resources: PodResources,
    pub spec: KubernetesExecutorSpec,
    /// The Job-wide `activeDeadlineSeconds` (from `spec.activeDeadline`).
    pub job_deadline_seconds: Option<i64>,
}

impl JobTemplate {
    fn labels(&self, planned: &PlannedJob) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
            (JOB_LABEL.to_string(), job_label_value(&self.job_id)),
            (GROUP_LABEL.to_string(), planned.group.to_string()),
            (KIND_LABEL.to_string(), kind_word(planned.kind)),
        ])
    }

    /// The variables of the worker container: `TMPDIR` and `HOME` on the writable `/tmp`, then
    /// the configured ones (which win over those two), then the handler's Secret keys, by
    /// reference (the kubelet reads the Secret; its value is never in the Job).
    fn env(&self) -> Vec<EnvVar> {
        let ours = [("TMPDIR", "/tmp"), ("HOME", "/tmp")];
        let var = |name: &str, value: &str| EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        };
        ours.iter()
            .filter(|(name, _)| !self.environment.iter().any(|(n, _)| n == name))
            .map(|(name, value)| var(name, value))
            .chain(
                self.environment
                    .iter()
                    .map(|(name, value)| var(name, value)),
            )
            .chain(self.secrets.iter().map(|(name, secret)| EnvVar {
                name: name.clone(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: secret.key.clone(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            }))
            .collect()
    }

    /// The Job of one planned run; `suspend` when the orch job is paused.
    pub fn job(&self, planned: &PlannedJob, suspend: bool) -> Job {
        let labels = self.labels(planned);
        let annotations = BTreeMap::from([
            (JOB_ID_ANNOTATION.to_string(), self.job_id.clone()),
            (
                TASK_OFFSET_ANNOTATION.to_string(),
                planned.offset.to_string(),
            ),
        ]);
        let completions = i32::try_from(planned.completions()).unwrap_or(i32::MAX);
        let parallelism = i32::try_from(self.spec.parallelism.max(1))
            .unwrap_or(i32::MAX)
            .min(completions);
        let runtime_default = || {
            Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            })
        };
        let container = Container {
            name: CONTAINER.into(),
            image: Some(self.image.clone()),
            image_pull_policy: self
                .spec
                .image_pull_policy
                .map(|p: ImagePullPolicy| p.as_str().to_string()),
            command: (!self.command.is_empty()).then(|| self.command.clone()),
            args: Some(
                WorkerInvocation {
                    kind: planned.kind,
                    storage: &self.storage,
                    job: &self.job_id,
                    group: planned.group,
                    task_offset: planned.offset,
                    manifest_sha256: planned.manifest_sha256.as_deref(),
                }
                .args(),
            ),
            env: Some(self.env()),
            env_from: (!self.spec.env_from_secrets.is_empty()).then(|| {
                self.spec
                    .env_from_secrets
                    .iter()
                    .map(|name| EnvFromSource {
                        secret_ref: Some(SecretEnvSource {
                            name: name.clone(),
                            optional: Some(false),
                        }),
                        ..EnvFromSource::default()
                    })
                    .collect()
            }),
            resources: Some(self.resources.requirements()),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                seccomp_profile: runtime_default(),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            }]),
            // A failed worker's last log lines become the pod's termination message.
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Container::default()
        };
        let pod = PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(self.resources.time_seconds),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            service_account_name: self.spec.service_account_name.clone(),
            // Workers talk to the job's storage, never to the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            node_selector: (!self.spec.node_selector.is_empty())
                .then(|| self.spec.node_selector.clone()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                seccomp_profile: runtime_default(),
                ..PodSecurityContext::default()
            }),
            volumes: Some(vec![Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(memory_quantity(self.resources.scratch_bytes))),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        };
        Job {
            metadata: ObjectMeta {
                name: Some(planned.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels.clone()),
                annotations: Some(annotations.clone()),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                completion_mode: Some("Indexed".into()),
                completions: Some(completions),
                parallelism: Some(parallelism),
                // The engine retries tasks itself (as new attempts, in new Jobs): a failed index
                // is reported, never run again, and does not stop the other indexes.
                backoff_limit_per_index: Some(0),
                backoff_limit: Some(i32::MAX),
                max_failed_indexes: None,
                // A replacement pod (after a pause) starts only once the old one is gone.
                pod_replacement_policy: Some("Failed".into()),
                active_deadline_seconds: self.job_deadline_seconds,
                ttl_seconds_after_finished: Some(FINISHED_JOB_TTL_SECONDS),
                suspend: Some(suspend),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        annotations: Some(annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}
