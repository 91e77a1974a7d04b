//! [`SlurmExecutor`]: the core's `Executor` as Slurm job arrays, over either transport.
//!
//! A task group becomes one array per `MaxArraySize` span of task ids ([`plan_arrays`]); each
//! array is named after the orch job and carries its [`ArrayKey`] as comment. Executor ids are
//! derived from that key, so they are known before submitting ([`Executor::planned_ids`]): the
//! coordinator records them with the dispatch, and whatever happens between the submission
//! and that record, a restarted coordinator looks the array up by key rather than submitting it
//! again. `submit` itself skips arrays whose key Slurm already has.
//!
//! Polling asks Slurm once for every array of the job (one `squeue`/`sacct` or one REST call),
//! at most once per `min_query_interval`, whatever the number of tasks.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_core::backend::{BackendResult, ExecState, ExecStatus, Executor};
use orch_core::model::TaskGroup;
use orch_core::spec::{ResourcesSpec, SlurmExecutorSpec};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::api::{ArrayJob, ClusterInfo, SlurmApi};
use crate::error::Result;
use crate::rest::{PlainHttp, TokenSource};
use crate::state::exec_state;
use crate::submission::{
    ArrayKey, ArraySubmission, PlannedArray, TaskResources, WorkerCommand, batch_script,
    check_against_cluster, check_extra_options, executor_id, parse_executor_id, plan_arrays,
};

/// Everything about how this job's tasks run, fixed for the executor's life.
#[derive(Debug, Clone)]
pub struct SlurmLaunch {
    pub worker: WorkerCommand,
    pub resources: ResourcesSpec,
    pub spec: SlurmExecutorSpec,
    /// Where array tasks write their logs (`<dir>/<kind>-%A_%a.log`).
    pub log_dir: PathBuf,
    /// Working directory of the tasks.
    pub workdir: PathBuf,
    /// Variables the tasks need (storage endpoints, log settings), never secrets.
    pub environment: Vec<(String, String)>,
    /// Whether the rest transport may use plain http (to a loopback host only).
    pub plain_http: PlainHttp,
    /// The rest transport's token, instead of `spec.tokenFile` or `SLURM_JWT` (a coordinator
    /// that holds the token itself, such as the operator).
    pub token: Option<TokenSource>,
}

/// The shortest time between two queries of Slurm for this job's arrays.
const DEFAULT_QUERY_INTERVAL: Duration = Duration::from_secs(2);
/// Reads of the cluster's limits at the start of a job, each with the client's own retries:
/// slurmrestd restarting or a few answers lost in a row must not fail an `orch run` that has
/// not started anything yet (about half a minute in all before it gives up).
const CONNECT_ATTEMPTS: u32 = 5;
const CONNECT_BACKOFF: orch_core::backoff::Backoff =
    orch_core::backoff::Backoff::doubling(Duration::from_secs(1), Duration::from_secs(8));

struct Snapshot {
    at: Instant,
    arrays: HashMap<String, ArrayJob>,
}

pub struct SlurmExecutor {
    api: Arc<dyn SlurmApi>,
    launch: SlurmLaunch,
    task_resources: TaskResources,
    cluster: ClusterInfo,
    min_query_interval: Duration,
    /// The last answer about this job's arrays, by comment.
    snapshot: Mutex<Option<Snapshot>>,
}

impl std::fmt::Debug for SlurmExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmExecutor")
            .field("job", &self.launch.worker.job)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The cluster's limits, tried again on a transient failure up to [`CONNECT_ATTEMPTS`] times.
pub(crate) async fn cluster_info(
    api: &dyn SlurmApi,
    backoff: orch_core::backoff::Backoff,
) -> Result<ClusterInfo> {
    let mut attempt = 1;
    loop {
        match api.cluster_info().await {
            Err(e)
                if attempt < CONNECT_ATTEMPTS
                    && e.category() == orch_core::ErrorCategory::Transient =>
            {
                warn!(attempt, error = %e, "cannot read the Slurm cluster's limits yet; trying again");
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl SlurmExecutor {
    /// Reads the cluster's limits and checks the job against them — partition, time limit,
    /// extra options — so that a job that cannot run fails before anything is submitted.
    pub async fn connect(api: Arc<dyn SlurmApi>, launch: SlurmLaunch) -> Result<Self> {
        check_extra_options(&launch.spec.extra_options)?;
        let task_resources = TaskResources::of(&launch.resources)?;
        let cluster = cluster_info(api.as_ref(), CONNECT_BACKOFF).await?;
        check_against_cluster(&launch.resources, &cluster)?;
        info!(
            max_array_size = cluster.max_array_size,
            partitions = cluster.partitions.len(),
            "connected to Slurm"
        );
        Ok(SlurmExecutor {
            api,
            launch,
            task_resources,
            cluster,
            min_query_interval: DEFAULT_QUERY_INTERVAL,
            snapshot: Mutex::new(None),
        })
    }

    /// Queries Slurm at most this often (tests use a short interval).
    pub fn with_query_interval(mut self, interval: Duration) -> Self {
        self.min_query_interval = interval;
        self
    }

    pub fn cluster(&self) -> &ClusterInfo {
        &self.cluster
    }

    fn job(&self) -> &str {
        &self.launch.worker.job
    }

    /// This job's arrays by comment: the last answer if younger than `max_age`, else a new
    /// query.
    async fn arrays(&self, max_age: Duration) -> Result<HashMap<String, ArrayJob>> {
        let mut snapshot = self.snapshot.lock().await;
        if let Some(s) = snapshot.as_ref()
            && s.at.elapsed() < max_age
        {
            return Ok(s.arrays.clone());
        }
        let arrays: HashMap<String, ArrayJob> = self
            .api
            .arrays(self.job())
            .await?
            .into_iter()
            .map(|a| (a.comment.clone(), a))
            .collect();
        *snapshot = Some(Snapshot {
            at: Instant::now(),
            arrays: arrays.clone(),
        });
        Ok(arrays)
    }

    fn submission(&self, array: &PlannedArray) -> ArraySubmission {
        let r = &self.launch.resources;
        let kind = match array.key.kind {
            orch_core::model::TaskKind::Work => "task".to_string(),
            orch_core::model::TaskKind::Merge { level } => format!("merge{level}"),
            orch_core::model::TaskKind::Final => "final".to_string(),
        };
        // A grace as long as the time limit would stop every task as it starts: at most half.
        let grace = self
            .launch
            .spec
            .checkpoint_grace
            .as_duration()
            .map(|d| d.as_secs())
            .unwrap_or(60)
            .min(self.task_resources.time_minutes * 30)
            .max(1);
        ArraySubmission {
            name: self.job().to_string(),
            comment: array.key.comment(),
            indices: array.indices(),
            max_running: self.launch.spec.max_running,
            script: batch_script(
                &self.launch.worker,
                array,
                (self.task_resources.time_minutes * 60).saturating_sub(grace),
            ),
            cpus_per_task: self.task_resources.cpus_per_task,
            memory_mb: self.task_resources.memory_mb,
            time_minutes: self.task_resources.time_minutes,
            partition: r.partition.clone(),
            account: r.account.clone(),
            qos: r.qos.clone(),
            gres: r.gres.clone(),
            constraint: r.constraint.clone(),
            output: self
                .launch
                .log_dir
                .join(format!("{kind}-b{}-%A_%a.log", array.key.base))
                .display()
                .to_string(),
            signal: format!("B:TERM@{grace}"),
            extra: self.launch.spec.extra_options.clone(),
            environment: self.launch.environment.clone(),
            workdir: self.launch.workdir.clone(),
        }
    }

    /// Holds the pending tasks of every array of the job (a paused job); running tasks go on.
    pub async fn hold_all(&self) -> Result<()> {
        for array in self.arrays(Duration::ZERO).await?.values() {
            self.api.hold(array.array_job_id).await?;
        }
        Ok(())
    }

    /// Releases what [`SlurmExecutor::hold_all`] held.
    pub async fn release_all(&self) -> Result<()> {
        for array in self.arrays(Duration::ZERO).await?.values() {
            self.api.release(array.array_job_id).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Executor for SlurmExecutor {
    async fn submit(&self, group: &TaskGroup) -> BackendResult<Vec<(u32, String)>> {
        let planned = plan_arrays(group, self.cluster.max_array_size);
        // Fresh: an array submitted by a coordinator that died a moment ago must be seen.
        let existing = self.arrays(Duration::ZERO).await?;
        let mut ids = Vec::with_capacity(group.tasks.len());
        let mut submitted = Vec::new();
        for array in &planned {
            let comment = array.key.comment();
            if let Some(found) = existing.get(&comment) {
                info!(array = found.array_job_id, %comment, "array already submitted; not submitting it again");
            } else {
                let id = self.api.submit(&self.submission(array)).await?;
                info!(array = id, %comment, tasks = array.tasks.len(), "submitted array");
                submitted.push(id);
            }
            ids.extend(
                array
                    .tasks
                    .iter()
                    .map(|(task, _)| (*task, executor_id(&array.key, *task))),
            );
        }
        if !submitted.is_empty() {
            // The next poll must see the new arrays.
            *self.snapshot.lock().await = None;
        }
        Ok(ids)
    }

    async fn poll(&self, tasks: &[(u32, u32, Option<String>)]) -> BackendResult<Vec<ExecStatus>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let arrays = self.arrays(self.min_query_interval).await?;
        Ok(tasks
            .iter()
            .map(|(task, attempt, id)| {
                let state = id
                    .as_deref()
                    .and_then(parse_executor_id)
                    .filter(|(_, t)| t == task)
                    .and_then(|(key, _)| {
                        let array = arrays.get(&key.comment())?;
                        let index = task.checked_sub(key.base)?;
                        array.tasks.iter().find(|t| t.index == index)
                    })
                    .map(exec_state)
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
        let mut by_array: BTreeMap<String, (ArrayKey, Vec<u32>)> = BTreeMap::new();
        for (task, _, id) in attempts {
            if let Some((key, t)) = id.as_deref().and_then(parse_executor_id)
                && t == *task
            {
                let base = key.base;
                by_array
                    .entry(key.comment())
                    .or_insert_with(|| (key, Vec::new()))
                    .1
                    .push(task - base);
            }
        }
        if by_array.is_empty() {
            return Ok(());
        }
        let arrays = self.arrays(Duration::ZERO).await?;
        for (comment, (_, indices)) in by_array {
            match arrays.get(&comment) {
                Some(array) => {
                    let mut indices = indices;
                    indices.sort_unstable();
                    indices.dedup();
                    if let Err(e) = self.api.cancel(array.array_job_id, &indices).await {
                        warn!(array = array.array_job_id, error = %e, "scancel failed");
                    }
                }
                None => warn!(%comment, "no such array to cancel"),
            }
        }
        *self.snapshot.lock().await = None;
        Ok(())
    }

    async fn wait_change(&self, timeout: Duration) {
        // Slurm tells nobody when a task ends: look again after the query interval.
        tokio::time::sleep(timeout.max(self.min_query_interval / 2)).await;
    }

    async fn pause(&self) -> BackendResult<()> {
        Ok(self.hold_all().await?)
    }

    async fn resume(&self) -> BackendResult<()> {
        Ok(self.release_all().await?)
    }

    fn planned_ids(&self, group: &TaskGroup) -> Option<Vec<(u32, String)>> {
        Some(
            plan_arrays(group, self.cluster.max_array_size)
                .iter()
                .flat_map(|a| a.tasks.iter().map(|(t, _)| (*t, executor_id(&a.key, *t))))
                .collect(),
        )
    }
}
