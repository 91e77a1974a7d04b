//! [`KubeExecutor`]: the core's `Executor` as Kubernetes Indexed Jobs (docs/kubernetes-executor.md).
//!
//! A task group becomes one `batch/v1` Job per run of consecutive task ids
//! ([`manifest::plan_jobs`]): index `i` of a Job is task `offset + i`, and the worker adds
//! `--task-offset` to `JOB_COMPLETION_INDEX`. Job names are derived from the orch job, the group
//! and its (task, attempt) pairs, so executor ids (`k8s:<job>:<index>`) are known before
//! submitting ([`Executor::planned_ids`]) and a second create of the same Job is an
//! `AlreadyExists`, not a second run: whatever crashes, nothing is submitted twice.
//!
//! A failed index is never run again by Kubernetes (`backoffLimitPerIndex: 0`): the engine
//! retries the task itself, as a new attempt in a new Job. Polling costs two LIST requests
//! (this job's Jobs and their unfinished pods, by label) at most once per query interval,
//! whatever the number of tasks.

pub mod manifest;
pub mod state;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, ExecState, ExecStatus, Executor};
use orch_core::model::TaskGroup;
use orch_core::spec::{KubernetesExecutorSpec, ResourcesSpec, SecretKeyRef};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use manifest::{JobTemplate, PlannedJob, PodResources, job_selector, parse_executor_id, plan_jobs};
use orch_core::invocation::WorkerHost;
use state::{JobView, index_state, is_alive, pods_by_slot, stuck_reason, views};

/// The operator's variable naming the default worker image.
pub const WORKER_IMAGE_VARIABLE: &str = "ORCH_WORKER_IMAGE";

/// The variables the operator passes on to its worker pods (orch's settings, never
/// credentials: pods get theirs from their service account or a Secret named in
/// `envFromSecrets`).
pub fn worker_environment() -> Vec<(String, String)> {
    orch_core::invocation::worker_environment(
        WorkerHost::Container,
        orch_core::invocation::this_process_setting,
    )
}

/// The shortest time between two queries of the API server for this job's Jobs and pods.
const DEFAULT_QUERY_INTERVAL: Duration = Duration::from_secs(2);
/// Objects per page of a LIST.
const PAGE_SIZE: u32 = 500;

/// Errors of the Kubernetes executor.
#[derive(Debug, thiserror::Error)]
pub enum KubeExecutorError {
    /// The spec cannot become a pod (a memory size that does not parse, no image).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The API server refused or failed a request.
    #[error("{operation}: {source}")]
    Api {
        operation: String,
        #[source]
        source: kube::Error,
    },
}

impl KubeExecutorError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            KubeExecutorError::Invalid { .. } => ErrorCategory::Invalid,
            KubeExecutorError::Api { source, .. } => api_error_category(source),
        }
    }

    fn api(operation: impl Into<String>, source: kube::Error) -> Self {
        KubeExecutorError::Api {
            operation: operation.into(),
            source,
        }
    }
}

/// Conflicts, throttling, server errors and an unreachable server may pass; a refusal
/// (forbidden: the operator's role lacks a verb; invalid: a manifest the server will not take)
/// will not.
fn api_error_category(e: &kube::Error) -> ErrorCategory {
    match e {
        kube::Error::Api(status) => match status.code {
            409 | 429 => ErrorCategory::Transient,
            code if code >= 500 => ErrorCategory::Transient,
            400 | 422 => ErrorCategory::Invalid,
            _ => ErrorCategory::Permanent,
        },
        _ => ErrorCategory::Transient,
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

impl From<KubeExecutorError> for BackendError {
    fn from(e: KubeExecutorError) -> Self {
        let category = e.category();
        BackendError::other(category, format!("kubernetes: {e}"), e)
    }
}

/// Everything about how one orch job's tasks run, fixed for the executor's life.
#[derive(Debug, Clone)]
pub struct KubeLaunch {
    /// Namespace of the OrchJob; its Jobs and pods go there.
    pub namespace: String,
    /// The OrchJob as owner of every Job (see [`owner_reference`]), so that deleting it deletes
    /// them. `None` leaves Jobs unowned (tests).
    pub owner: Option<OwnerReference>,
    /// The OrchJob's name: the start of every Job name.
    pub orch_job_name: String,
    /// The orch job id (`name-<8 hex>`) the workers work on.
    pub job_id: String,
    /// Storage URI of the job as the workers reach it (`s3://bucket/prefix`).
    pub storage: String,
    /// Image when `spec.executor.kubernetes.image` is not set: the operator's
    /// [`WORKER_IMAGE_VARIABLE`].
    pub default_image: String,
    /// Program and leading arguments of the worker container (its `command`); the worker's
    /// own arguments (`run …` / `aggregate …`) follow as `args`. Empty: the image's
    /// entrypoint, which in orch's worker image is `tini -- orch-worker`.
    pub worker_command: Vec<String>,
    /// The job's `spec.resources`.
    pub resources: ResourcesSpec,
    /// Local disk of each worker pod (`ephemeral-storage`, the `/tmp` emptyDir's limit).
    pub scratch_bytes: u64,
    /// The job's `spec.executor.kubernetes`.
    pub spec: KubernetesExecutorSpec,
    /// Variables for the workers (see [`worker_environment`]); never credentials.
    pub environment: Vec<(String, String)>,
    /// Secret keys the handler reads, by the variable each becomes in the worker container
    /// (`spec.handler.secret_env()`): set by reference (`valueFrom.secretKeyRef`), never by
    /// value.
    pub secrets: Vec<(String, SecretKeyRef)>,
}

/// The owner reference of the OrchJob (or any resource) the Jobs belong to: the controller
/// reference, so Kubernetes deletes the Jobs with it.
pub fn owner_reference<K: kube::Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// What one pair of LIST requests saw.
struct Snapshot {
    at: Instant,
    jobs: BTreeMap<String, JobView>,
    pods: Vec<Pod>,
}

/// The Executor of `executor.kubernetes` (module docs).
pub struct KubeExecutor {
    jobs: Api<Job>,
    pods: Api<Pod>,
    template: JobTemplate,
    selector: String,
    min_query_interval: Duration,
    snapshot: Mutex<Option<Snapshot>>,
    /// Indexes (Job name, index) cancelled while their Job goes on: a pod the Job starts for
    /// one later is deleted when a poll sees it.
    cancelled: StdMutex<HashSet<(String, u32)>>,
    /// The job is paused: Jobs are created suspended.
    paused: AtomicBool,
}

impl std::fmt::Debug for KubeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeExecutor")
            .field("namespace", &self.template.namespace)
            .field("job", &self.template.job_id)
            .field("image", &self.template.image)
            .finish_non_exhaustive()
    }
}

impl KubeExecutor {
    /// Checks the spec (resources, image, deadline) so that a job whose pods cannot be built
    /// fails before anything is created. Makes no request.
    pub fn new(client: kube::Client, launch: KubeLaunch) -> Result<Self, KubeExecutorError> {
        let invalid =
            |(field, reason): (String, String)| KubeExecutorError::Invalid { field, reason };
        let resources = PodResources {
            scratch_bytes: launch.scratch_bytes,
            ..PodResources::of(&launch.resources).map_err(invalid)?
        };
        let image = launch
            .spec
            .image
            .clone()
            .filter(|i| !i.trim().is_empty())
            .unwrap_or_else(|| launch.default_image.clone());
        if image.trim().is_empty() {
            return Err(invalid((
                "spec.executor.kubernetes.image".into(),
                format!("no worker image: set it, or {WORKER_IMAGE_VARIABLE} for the operator"),
            )));
        }
        let job_deadline_seconds = match &launch.spec.active_deadline {
            Some(q) => {
                let d = q
                    .as_duration()
                    .map_err(|e| invalid(("spec.executor.kubernetes.activeDeadline".into(), e)))?;
                Some(i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX))
            }
            None => None,
        };
        let template = JobTemplate {
            namespace: launch.namespace.clone(),
            owner: launch.owner,
            orch_job_name: launch.orch_job_name,
            job_id: launch.job_id.clone(),
            storage: launch.storage,
            image,
            command: launch.worker_command,
            environment: launch.environment,
            secrets: launch.secrets,
            resources,
            spec: launch.spec,
            job_deadline_seconds,
        };
        Ok(KubeExecutor {
            jobs: Api::namespaced(client.clone(), &launch.namespace),
            pods: Api::namespaced(client, &launch.namespace),
            selector: job_selector(&launch.job_id),
            template,
            min_query_interval: DEFAULT_QUERY_INTERVAL,
            snapshot: Mutex::new(None),
            cancelled: StdMutex::new(HashSet::new()),
            paused: AtomicBool::new(false),
        })
    }

    /// Queries the API server at most this often (tests use a short interval).
    pub fn with_query_interval(mut self, interval: Duration) -> Self {
        self.min_query_interval = interval;
        self
    }

    /// The Jobs a group becomes (names, offsets, tasks), without creating them.
    pub fn plan(&self, group: &TaskGroup) -> Vec<PlannedJob> {
        plan_jobs(&self.template.orch_job_name, &self.template.job_id, group)
    }

    /// The manifest of one planned Job.
    pub fn manifest(&self, planned: &PlannedJob) -> Job {
        self.template
            .job(planned, self.paused.load(Ordering::SeqCst))
    }

    /// The label selector of this job's Jobs and pods.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Every object of `api` with this job's labels (and `fields`), page by page.
    async fn list_all<K>(
        &self,
        what: &str,
        api: &Api<K>,
        fields: Option<&str>,
    ) -> Result<Vec<K>, KubeExecutorError>
    where
        K: Clone + DeserializeOwned + std::fmt::Debug,
    {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = ListParams::default()
                .labels(&self.selector)
                .limit(PAGE_SIZE);
            if let Some(fields) = fields {
                params = params.fields(fields);
            }
            if let Some(t) = &token {
                params = params.continue_token(t);
            }
            let page = api
                .list(&params)
                .await
                .map_err(|e| KubeExecutorError::api(format!("list {what}"), e))?;
            items.extend(page.items);
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(items);
            }
        }
    }

    /// This job's Jobs and unfinished pods: the last answer if younger than `max_age`, else a
    /// new one. A new answer also deletes pods that must not run (of cancelled indexes, or
    /// stuck pending).
    async fn observe(&self, max_age: Duration) -> Result<(), KubeExecutorError> {
        let mut snapshot = self.snapshot.lock().await;
        if let Some(s) = snapshot.as_ref()
            && s.at.elapsed() < max_age
        {
            return Ok(());
        }
        let jobs = self.list_all("Jobs", &self.jobs, None).await?;
        // Succeeded pods are left out: their indexes are in the Job's completedIndexes.
        let pods = self
            .list_all("pods", &self.pods, Some("status.phase!=Succeeded"))
            .await?;
        let fresh = Snapshot {
            at: Instant::now(),
            jobs: views(&jobs),
            pods,
        };
        self.delete_unwanted_pods(&fresh).await;
        *snapshot = Some(fresh);
        Ok(())
    }

    async fn delete_unwanted_pods(&self, snapshot: &Snapshot) {
        let unwanted: Vec<(String, String)> = {
            let cancelled = match self.cancelled.lock() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            snapshot
                .pods
                .iter()
                .filter(|p| is_alive(p))
                .filter_map(|p| {
                    let name = p.metadata.name.clone()?;
                    let slot = state::pod_slot(p)?;
                    if cancelled.contains(&slot) {
                        Some((name, "its index was cancelled".to_string()))
                    } else {
                        stuck_reason(p).map(|why| (name, why))
                    }
                })
                .collect()
        };
        for (name, why) in unwanted {
            info!(pod = %name, reason = %why, "deleting pod");
            self.delete_pod(&name).await;
        }
    }

    async fn delete_pod(&self, name: &str) {
        match self.pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => warn!(pod = %name, error = %e, "cannot delete pod"),
        }
    }

    async fn forget_snapshot(&self) {
        *self.snapshot.lock().await = None;
    }

    /// Sets `spec.suspend` of every unfinished Job of this job that has the other value.
    async fn suspend_all(&self, suspend: bool) -> Result<(), KubeExecutorError> {
        self.paused.store(suspend, Ordering::SeqCst);
        let jobs = self.list_all("Jobs", &self.jobs, None).await?;
        let patch = serde_json::json!({"spec": {"suspend": suspend}});
        for view in views(&jobs).values() {
            if view.finished || view.suspended == suspend {
                continue;
            }
            match self
                .jobs
                .patch(&view.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => debug!(job = %view.name, suspend, "patched spec.suspend"),
                Err(e) if is_status(&e, 404) => {}
                Err(e) => {
                    return Err(KubeExecutorError::api(
                        format!("suspend Job {}", view.name),
                        e,
                    ));
                }
            }
        }
        self.forget_snapshot().await;
        Ok(())
    }
}

#[async_trait]
impl Executor for KubeExecutor {
    async fn submit(&self, group: &TaskGroup) -> BackendResult<Vec<(u32, String)>> {
        let planned = self.plan(group);
        let mut ids = Vec::with_capacity(group.tasks.len());
        for job in &planned {
            let manifest = self.manifest(job);
            match self.jobs.create(&PostParams::default(), &manifest).await {
                Ok(_) => info!(
                    job = %job.name,
                    tasks = job.tasks.len(),
                    offset = job.offset,
                    "created Kubernetes Job"
                ),
                Err(e) if is_status(&e, 409) => info!(
                    job = %job.name,
                    "Kubernetes Job already exists; not creating it again"
                ),
                Err(e) => {
                    return Err(
                        KubeExecutorError::api(format!("create Job {}", job.name), e).into(),
                    );
                }
            }
            ids.extend(job.ids());
        }
        // The next poll must see the new Jobs.
        self.forget_snapshot().await;
        Ok(ids)
    }

    async fn poll(&self, tasks: &[(u32, u32, Option<String>)]) -> BackendResult<Vec<ExecStatus>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.observe(self.min_query_interval).await?;
        let snapshot = self.snapshot.lock().await;
        let Some(snapshot) = snapshot.as_ref() else {
            return Ok(Vec::new());
        };
        let slots = pods_by_slot(&snapshot.pods);
        Ok(tasks
            .iter()
            .map(|(task, attempt, id)| {
                let state = id
                    .as_deref()
                    .and_then(parse_executor_id)
                    .and_then(|(job, index)| {
                        let view = snapshot.jobs.get(job)?;
                        // An id that names another task is not this task's.
                        (view.offset?.checked_add(index)? == *task).then_some(())?;
                        let pods = slots
                            .get(&(job.to_string(), index))
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        Some(index_state(view, index, pods))
                    })
                    .unwrap_or(ExecState::Unknown);
                ExecStatus {
                    task: *task,
                    attempt: *attempt,
                    state,
                }
            })
            .collect())
    }

    async fn cancel(&self, attempts: &[(u32, u32, Option<String>)]) -> BackendResult<()> {
        let mut by_job: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for (_, _, id) in attempts {
            if let Some((job, index)) = id.as_deref().and_then(parse_executor_id) {
                by_job.entry(job.to_string()).or_default().insert(index);
            }
        }
        if by_job.is_empty() {
            return Ok(());
        }
        self.observe(Duration::ZERO).await?;
        let (whole, partial): (Vec<String>, Vec<(String, BTreeSet<u32>)>) = {
            let snapshot = self.snapshot.lock().await;
            let Some(snapshot) = snapshot.as_ref() else {
                return Ok(());
            };
            let mut whole = Vec::new();
            let mut partial = Vec::new();
            for (job, indexes) in by_job {
                match snapshot.jobs.get(&job) {
                    // Nothing of the Job is left to run but what is cancelled: delete it all.
                    Some(view) if view.unfinished_within(&indexes) => whole.push(job),
                    Some(_) => partial.push((job, indexes)),
                    None => debug!(%job, "no such Kubernetes Job to cancel"),
                }
            }
            (whole, partial)
        };
        for job in whole {
            match self.jobs.delete(&job, &DeleteParams::background()).await {
                Ok(_) => info!(%job, "deleted Kubernetes Job (cancelled)"),
                Err(e) if is_status(&e, 404) => {}
                Err(e) => warn!(%job, error = %e, "cannot delete Kubernetes Job"),
            }
        }
        if !partial.is_empty() {
            // The Job goes on for its other indexes. A cancelled index's pod is deleted: with
            // `backoffLimitPerIndex: 0` its index then fails and is not started again. An index
            // without a pod yet is remembered, and its pod deleted when one shows up.
            let pods: Vec<Pod> = {
                let snapshot = self.snapshot.lock().await;
                snapshot
                    .as_ref()
                    .map(|s| s.pods.clone())
                    .unwrap_or_default()
            };
            let slots = pods_by_slot(&pods);
            let mut doomed = Vec::new();
            {
                let mut cancelled = match self.cancelled.lock() {
                    Ok(c) => c,
                    Err(poisoned) => poisoned.into_inner(),
                };
                for (job, indexes) in &partial {
                    for index in indexes {
                        let slot = (job.clone(), *index);
                        if let Some(list) = slots.get(&slot) {
                            doomed.extend(
                                list.iter()
                                    .filter(|p| is_alive(p))
                                    .filter_map(|p| p.metadata.name.clone()),
                            );
                        }
                        cancelled.insert(slot);
                    }
                }
            }
            for pod in doomed {
                info!(%pod, "deleting pod (cancelled)");
                self.delete_pod(&pod).await;
            }
        }
        self.forget_snapshot().await;
        Ok(())
    }

    async fn wait_change(&self, timeout: Duration) {
        // Polled, not watched: look again after the query interval.
        tokio::time::sleep(timeout.max(self.min_query_interval / 2)).await;
    }

    fn planned_ids(&self, group: &TaskGroup) -> Option<Vec<(u32, String)>> {
        Some(self.plan(group).iter().flat_map(PlannedJob::ids).collect())
    }

    /// Suspends the job's unfinished Jobs: Kubernetes starts none of their pods until resumed.
    /// Unlike a Slurm hold this also stops their running pods (SIGTERM: the worker checkpoints
    /// and releases its task, which is retried after the resume).
    async fn pause(&self) -> BackendResult<()> {
        Ok(self.suspend_all(true).await?)
    }

    async fn resume(&self) -> BackendResult<()> {
        Ok(self.suspend_all(false).await?)
    }
}
