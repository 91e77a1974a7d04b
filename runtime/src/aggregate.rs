//! Aggregation: every committed task result merged into the job's output, as executor tasks.
//!
//! The coordinator (this module's [`aggregate`]) verifies the task results against their
//! `_DONE` markers, writes the aggregation plan (`jobs/J/aggregate/plan.json`: which files, in
//! item order), and then runs the merge level by level through the same [`Executor`] as the
//! work: one task per merge group of `spec.output.fanIn` files, then one final task that writes
//! the output location. Workers run [`run_task`] (`orch-worker aggregate`). Only `_SUCCESS`
//! is written by the coordinator, last, from the final task's marker.
//!
//! Every group is sealed by a marker and checked before it is (re)started, so an aggregation
//! killed at any point resumes where it stopped and, the merge being deterministic, ends with
//! the same checksums as an uninterrupted one (see `orch_data::hierarchy`).
//!
//! On a remote store (S3) the merge reads and writes local files all the same: a merge task
//! downloads its group's members into its scratch directory (a mirror of the store's keys),
//! merges there, and uploads the group's part and then its `_DONE`; the final task uploads the
//! output files and then the final marker. Every download is checked against the sha256 the
//! object was written with. The coordinator then decides from the markers alone which groups
//! are done (an object that exists was uploaded whole, and only after its part), instead of
//! downloading outputs to check them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orch_core::backend::{ObjectStore, StateStore};
use orch_core::engine::{self, ItemCounts};
use orch_core::layout;
use orch_core::model::{
    DoneMarker, FileSum, JobRecord, SCHEMA_VERSION, TaskKind, TaskRecord, TaskState,
};
use orch_core::platform::Backends;
use orch_core::spec::{OutputFormat, OutputSpec};
use orch_core::uri::Location;
use orch_data::hierarchy::{DONE_FILE, group_dir_name};
use orch_data::{ExtraFormat, FinalMerge, FinalOutput, Hierarchy, part_file_name};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::error::{Error, Result};

/// Requests to a remote store in flight at once while checking or fetching many objects.
const CONCURRENT_REQUESTS: usize = 32;

/// `_SUCCESS` of the final output (docs/job-spec.md, "Storage layout"), written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuccessMarker {
    pub schema_version: u32,
    pub job: String,
    pub rows: u64,
    pub items: ItemCounts,
    pub error_rows: u64,
    pub schema: Vec<orch_data::ColumnSchema>,
    pub files: BTreeMap<String, orch_data::FileInfo>,
}

/// `jobs/J/aggregate/plan.json`: what the aggregation tasks merge. Keys are relative to the
/// storage root, so the plan means the same to every process that mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregationPlan {
    pub schema_version: u32,
    /// Verified task result files, in item order.
    pub inputs: Vec<String>,
    /// Per-task error files, plus one row per item of each failed task.
    pub errors: Vec<String>,
    /// The aggregation tasks, stage by stage (merge levels, then the final merge).
    #[serde(default)]
    pub stages: Vec<PlannedStage>,
}

/// The tasks of one aggregation stage: ids `first_task..first_task + groups`, task
/// `first_task + g` merging group `g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStage {
    pub kind: TaskKind,
    pub first_task: u32,
    pub groups: u32,
}

impl AggregationPlan {
    /// The stage and group of aggregation task `task`.
    pub fn stage_of(&self, task: u32) -> Option<(TaskKind, u32)> {
        self.stages.iter().find_map(|s| {
            let group = task.checked_sub(s.first_task)?;
            (group < s.groups).then_some((s.kind, group))
        })
    }
}

/// Where the aggregation is, for the progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregationProgress {
    /// The stage running: a merge level or the final merge.
    pub stage: TaskKind,
    /// Intermediate levels of this job's merge (0: the final merge reads task results).
    pub levels: u32,
    pub groups_done: u32,
    pub groups_total: u32,
}

/// What result discovery found for the committed attempt of one task.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultState {
    /// `_DONE` is there and every file matches its recorded size and sha256. A task without
    /// failed items writes no `errors.parquet`.
    Verified {
        part: String,
        errors: Option<String>,
    },
    Missing(String),
    Corrupt(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub task: u32,
    pub attempt: u32,
    pub state: ResultState,
}

/// Finds the committed result of every succeeded task and checks it against its `_DONE`
/// marker, so that nothing unverified reaches the final output: sizes and sha256 of local
/// files; sizes of remote objects (one listing), whose sha256 is checked when they are
/// downloaded.
pub async fn discover_results(
    backends: &Backends,
    job: &JobRecord,
    tasks: &[TaskRecord],
) -> Result<Vec<TaskResult>> {
    let (_, remote) = backends.local_root();
    let sizes: Arc<HashMap<String, u64>> = Arc::new(if remote {
        let prefix = format!("{}results/", layout::job_prefix(&job.id));
        backends
            .objects
            .list(&prefix)
            .await?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect()
    } else {
        HashMap::new()
    });
    // A committed row names its files (older rows do not): then `_DONE` need not be read.
    let succeeded: Vec<(u32, u32, Option<Arc<Committed>>)> = tasks
        .iter()
        .filter(|t| t.kind.is_work())
        .filter_map(|t| {
            let attempt = committed_attempt(t)?;
            let known = (attempt == t.attempt && !t.files.is_empty()).then(|| {
                Arc::new(Committed {
                    files: t.files.clone(),
                    items_failed: t.items_failed,
                })
            });
            Some((t.id, attempt, known))
        })
        .collect();
    let job_id: Arc<str> = Arc::from(job.id.as_str());
    let checked = concurrently(&succeeded, |(task, attempt, known)| {
        let (objects, job, sizes) = (backends.objects.clone(), job_id.clone(), sizes.clone());
        async move {
            let sizes = remote.then_some(&*sizes);
            let state = check_result(objects, &job, task, attempt, known, sizes).await?;
            Ok(TaskResult {
                task,
                attempt,
                state,
            })
        }
    })
    .await?;
    Ok(checked)
}

/// The attempt whose files are a work task's output: the one it committed, or, when every
/// attempt of an item-level redrive failed, the attempt the redrive started from (the
/// redrive changed nothing then). `None` when the task has no output.
fn committed_attempt(t: &TaskRecord) -> Option<u32> {
    match (t.state, &t.redrive) {
        (TaskState::Succeeded, _) => Some(t.attempt),
        (TaskState::Failed | TaskState::Cancelled, Some(r)) => Some(r.from_attempt),
        _ => None,
    }
}

/// Runs `f` over `items` with at most [`CONCURRENT_REQUESTS`] in flight; results in the order
/// of `items`.
async fn concurrently<T, R, F, Fut>(items: &[T], f: F) -> Result<Vec<R>>
where
    T: Clone,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R>> + Send + 'static,
{
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let mut running = JoinSet::new();
    let mut next = 0;
    while next < items.len() || !running.is_empty() {
        while next < items.len() && running.len() < CONCURRENT_REQUESTS {
            let fut = f(items[next].clone());
            let index = next;
            running.spawn(async move { (index, fut.await) });
            next += 1;
        }
        if let Some(joined) = running.join_next().await {
            let (index, result) =
                joined.map_err(|e| Error::Invalid(format!("a store request panicked: {e}")))?;
            out[index] = Some(result?);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// What a committed attempt's `_DONE` says of its files (or its task row, which says the same).
struct Committed {
    files: BTreeMap<String, FileSum>,
    items_failed: u64,
}

async fn check_result(
    objects: Arc<dyn ObjectStore>,
    job: &str,
    task: u32,
    attempt: u32,
    known: Option<Arc<Committed>>,
    remote_sizes: Option<&HashMap<String, u64>>,
) -> Result<ResultState> {
    let marker = match known {
        Some(known) => known,
        None => match objects.get(&layout::done(job, task, attempt)).await? {
            Some(bytes) => {
                match orch_core::model::decode_versioned::<DoneMarker>("_DONE marker", &bytes) {
                    Ok(m) => Arc::new(Committed {
                        files: m.files,
                        items_failed: m.items_failed,
                    }),
                    Err(e) => return Ok(ResultState::Corrupt(format!("unreadable _DONE: {e}"))),
                }
            }
            None => {
                return Ok(ResultState::Missing(
                    "committed but its _DONE marker is missing".into(),
                ));
            }
        },
    };
    let prefix = layout::attempt_prefix(job, task, attempt);
    let mut part = None;
    let mut errors = None;
    for (name, sum) in &marker.files {
        let key = format!("{prefix}{name}");
        let matches = match (remote_sizes, objects.local_path(&key)) {
            (Some(sizes), _) => match sizes.get(&key) {
                Some(&size) => size == sum.bytes,
                None => return Ok(ResultState::Missing(format!("{name} is missing"))),
            },
            // Hashing reads the whole file: off the async threads, which check other tasks'
            // results meanwhile.
            (None, Some(path)) => match blocking(move || orch_data::sha256_file(&path)).await {
                Ok((bytes, sha)) => bytes == sum.bytes && sha == sum.sha256,
                Err(e) => return Ok(ResultState::Missing(format!("{name}: {e}"))),
            },
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "{key}: the store has neither local files nor a listing"
                )));
            }
        };
        if !matches {
            return Ok(ResultState::Corrupt(format!(
                "{name} does not match the checksum in _DONE"
            )));
        }
        match name.as_str() {
            layout::PART_FILE => part = Some(key),
            layout::ERRORS_FILE => errors = Some(key),
            _ => {}
        }
    }
    if let Err(message) =
        orch_core::model::committed_errors_file(&marker.files, marker.items_failed)
    {
        return Ok(ResultState::Missing(format!("_DONE: {message}")));
    }
    Ok(match part {
        Some(part) => ResultState::Verified { part, errors },
        None => ResultState::Missing(format!("_DONE does not name {}", layout::PART_FILE)),
    })
}

/// The error kind and reason every item of a task that failed all its attempts (or was
/// cancelled) is recorded with in `errors.parquet`.
pub fn failed_task_error(t: &TaskRecord) -> (&'static str, String) {
    match (&t.last_error, t.state) {
        (_, TaskState::Cancelled) => ("cancelled", "the job was cancelled".to_string()),
        (Some(e), _) => (e.kind.as_str(), e.message.clone()),
        (None, _) => ("infrastructure", "unknown".to_string()),
    }
}

/// Every item of a task that failed all its attempts (or was cancelled) gets an error row, so
/// the output still accounts for each input item exactly once. Returns the file's key.
async fn failed_task_items(
    backends: &Backends,
    job: &JobRecord,
    tasks: &[TaskRecord],
) -> Result<Option<String>> {
    let mut rows = Vec::new();
    for t in tasks
        .iter()
        .filter(|t| t.kind.is_work() && committed_attempt(t).is_none() && t.state.is_terminal())
    {
        let batch = t.batch.as_ref().ok_or_else(|| Error::Integrity {
            task: t.id,
            attempt: t.attempt,
            message: "the task row has no batch".into(),
        })?;
        let (kind, why) = failed_task_error(t);
        let message = format!(
            "task {} failed after {} attempt(s): {why}",
            t.id,
            t.counted_attempts()
        );
        rows.extend(
            (batch.first_item..batch.first_item + batch.items).map(|item| orch_data::ItemError {
                item,
                kind: kind.to_string(),
                message: message.clone(),
                attempts: t.counted_attempts(),
            }),
        );
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let key = format!(
        "{}/failed-task-items.parquet",
        layout::aggregate_dir(&job.id)
    );
    let (path, remote) = backends.local_file(&key)?;
    orch_data::write_errors_parquet(&path, &rows)?;
    backends.publish(&key, &path, remote).await?;
    Ok(Some(key))
}

/// The output location, merge settings and extra formats of a spec.
#[derive(Clone)]
struct OutputSettings {
    /// Where the final merge writes: the output directory itself, or (for a remote output) a
    /// scratch directory whose files are uploaded after.
    out_dir: PathBuf,
    /// The store and key prefix (empty or ending in `/`) of a remote output.
    remote: Option<(Arc<dyn ObjectStore>, String)>,
    uri: String,
    fan_in: usize,
    merge: orch_data::MergeOptions,
    extra: Vec<ExtraFormat>,
}

impl OutputSettings {
    fn of(output: &OutputSpec, backends: &Backends, job: &str) -> Result<Self> {
        let uri = output
            .uri
            .clone()
            .ok_or_else(|| Error::Invalid("the job has no output location".into()))?;
        let (out_dir, remote) = match backends.locations.open(&uri)? {
            None => (Location::local_path(&uri).map_err(Error::Invalid)?, None),
            Some((store, key)) => {
                let prefix = if key.is_empty() || key.ends_with('/') {
                    key
                } else {
                    format!("{key}/")
                };
                (
                    backends.scratch.join(format!("output-{job}")),
                    Some((store, prefix)),
                )
            }
        };
        let merge = orch_data::MergeOptions::from_output_spec(output)?;
        let extra = output
            .formats
            .iter()
            .filter_map(|f| match f {
                OutputFormat::Parquet => None,
                OutputFormat::Sqlite => Some(ExtraFormat::Sqlite),
                OutputFormat::Jsonl => Some(ExtraFormat::Jsonl),
                OutputFormat::Csv => Some(ExtraFormat::Csv),
            })
            .collect();
        Ok(OutputSettings {
            out_dir,
            remote,
            uri,
            fan_in: output.fan_in.max(2) as usize,
            merge,
            extra,
        })
    }

    /// Writes one object of the output location (`_SUCCESS`).
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        match &self.remote {
            Some((store, prefix)) => store.put(&format!("{prefix}{name}"), bytes).await?,
            None => {
                orch_data::write_bytes_atomic(&self.out_dir.join(name), &bytes)?;
            }
        }
        Ok(())
    }

    /// Removes `_SUCCESS` and every file an earlier final merge may have left in a remote
    /// output, so a consumer never sees `_SUCCESS` next to the parts of another run. Done by
    /// the coordinator before the final task starts: workers are never granted deletes
    /// (docs/aws.md, IAM). A local output is cleared by the final merge itself.
    async fn clear_remote(&self) -> Result<()> {
        let Some((store, prefix)) = &self.remote else {
            return Ok(());
        };
        store.delete_prefix(&format!("{prefix}_SUCCESS")).await?;
        store.delete_prefix(&format!("{prefix}part-")).await?;
        store
            .delete_prefix(&format!("{prefix}{}", orch_data::hierarchy::ERRORS_FILE))
            .await?;
        for f in ExtraFormat::ALL {
            store
                .delete_prefix(&format!("{prefix}{}", f.file_name()))
                .await?;
        }
        Ok(())
    }

    /// Uploads the final merge's files (built in `out_dir`) to a remote output.
    async fn upload(&self, output: &FinalOutput) -> Result<()> {
        let Some((store, prefix)) = &self.remote else {
            return Ok(());
        };
        let names: Vec<String> = output.files.keys().cloned().collect();
        concurrently(&names, |name| {
            let (store, key, path) = (
                store.clone(),
                format!("{prefix}{name}"),
                self.out_dir.join(&name),
            );
            async move { Ok(store.put_file(&key, &path).await?) }
        })
        .await?;
        Ok(())
    }
}

/// The plan's files as local paths, and the merge's working directory.
#[derive(Clone)]
struct Resolved {
    inputs: Vec<PathBuf>,
    errors: Vec<PathBuf>,
    work_dir: PathBuf,
    marker: PathBuf,
}

impl Resolved {
    fn new(root: &Path, job: &str, plan: &AggregationPlan) -> Self {
        Resolved {
            inputs: plan.inputs.iter().map(|k| root.join(k)).collect(),
            errors: plan.errors.iter().map(|k| root.join(k)).collect(),
            work_dir: root.join(layout::aggregate_dir(job)),
            marker: root.join(layout::aggregate_final(job)),
        }
    }

    fn final_merge<'a>(
        &'a self,
        settings: &'a OutputSettings,
        final_inputs: &'a [PathBuf],
    ) -> FinalMerge<'a> {
        FinalMerge {
            inputs: final_inputs,
            errors: &self.errors,
            out_dir: &settings.out_dir,
            extra: &settings.extra,
            opts: &settings.merge,
            marker: &self.marker,
        }
    }
}

/// Stores the aggregation tasks of a new plan. Rows of an earlier plan (a job run again by
/// `orch retry`, whose merge rows were reset to pending) are taken over by id: the new plan
/// may merge more results than the old one — failed tasks that now succeeded — so a row that
/// was the final merge may now be a merge group, and the plan has more rows, never fewer (the
/// groups of each level grow with the results merged). Rows new to the plan are added.
pub async fn store_planned(
    state: &dyn StateStore,
    job: &str,
    existing: &[TaskRecord],
    planned: &[TaskRecord],
) -> Result<()> {
    let old: HashMap<u32, &TaskRecord> = existing
        .iter()
        .filter(|t| !t.kind.is_work())
        .map(|t| (t.id, t))
        .collect();
    if let Some(left) = old.keys().find(|id| !planned.iter().any(|p| p.id == **id)) {
        return Err(Error::Invalid(format!(
            "aggregation task {left} of an earlier plan is not in the new one"
        )));
    }
    for p in planned {
        if let Some(row) = old.get(&p.id)
            && row.kind != p.kind
        {
            if row.state != TaskState::Pending {
                return Err(Error::Invalid(format!(
                    "aggregation task {} is {} as a {}, not pending: it cannot become a {}",
                    p.id, row.state, row.kind, p.kind
                )));
            }
            let mut row = (*row).clone();
            row.kind = p.kind;
            state.update_task(&row).await?;
        }
    }
    let new: Vec<TaskRecord> = planned
        .iter()
        .filter(|p| !old.contains_key(&p.id))
        .cloned()
        .collect();
    state.add_tasks(job, &new).await?;
    Ok(())
}

/// Plans the aggregation of a job whose work tasks have all ended: verifies every committed
/// result against its `_DONE`, writes the plan (`jobs/J/aggregate/plan.json`), clears what an
/// earlier final merge may have left in a remote output, and returns the aggregation tasks to
/// create: one per merge group of each level, then the final merge, numbered after the last
/// work task. The engine dispatches them stage by stage, with the same leases, retries and
/// backoff as work. A result that fails its check is an [`Error::Integrity`].
pub async fn plan(
    backends: &Backends,
    job: &JobRecord,
    tasks: &[TaskRecord],
) -> Result<Vec<TaskRecord>> {
    let mut plan = AggregationPlan {
        schema_version: SCHEMA_VERSION,
        inputs: Vec::new(),
        errors: Vec::new(),
        stages: Vec::new(),
    };
    for found in discover_results(backends, job, tasks).await? {
        match found.state {
            ResultState::Verified { part, errors } => {
                plan.inputs.push(part);
                plan.errors.extend(errors);
            }
            ResultState::Missing(message) | ResultState::Corrupt(message) => {
                return Err(Error::Integrity {
                    task: found.task,
                    attempt: found.attempt,
                    message,
                });
            }
        }
    }
    if let Some(key) = failed_task_items(backends, job, tasks).await? {
        plan.errors.push(key);
    }
    let settings = OutputSettings::of(&job.spec.spec.output, backends, &job.id)?;
    let (root, _) = backends.local_root();
    let resolved = Resolved::new(&root, &job.id, &plan);
    let levels = Hierarchy::new(
        &resolved.inputs,
        &resolved.work_dir,
        settings.fan_in,
        &settings.merge,
    )?
    .levels();
    let mut next = tasks
        .iter()
        .filter(|t| t.kind.is_work())
        .map(|t| t.id + 1)
        .max()
        .unwrap_or(0)
        .max(job.total_tasks);
    let stages = levels
        .iter()
        .enumerate()
        .map(|(index, &groups)| {
            (
                TaskKind::Merge {
                    level: index as u32 + 1,
                },
                groups as u32,
            )
        })
        .chain([(TaskKind::Final, 1)]);
    for (kind, groups) in stages {
        plan.stages.push(PlannedStage {
            kind,
            first_task: next,
            groups,
        });
        next += groups;
    }
    let bytes = serde_json::to_vec(&plan).map_err(|source| orch_core::Error::Decode {
        what: "aggregation plan".into(),
        source,
    })?;
    backends
        .objects
        .put(&layout::aggregate_plan(&job.id), bytes)
        .await?;
    settings.clear_remote().await?;
    let now = orch_core::model::now_ms();
    let merges: Vec<TaskRecord> = plan
        .stages
        .iter()
        .flat_map(|s| {
            (s.first_task..s.first_task + s.groups).map(|id| TaskRecord {
                kind: s.kind,
                ..TaskRecord::new(&job.id, id, 0, now)
            })
        })
        .collect();
    info!(
        inputs = plan.inputs.len(),
        levels = levels.len(),
        tasks = merges.len(),
        "aggregation planned"
    );
    Ok(merges)
}

/// Takes back what the aggregation of an ended job produced, before its work runs again
/// (`orch retry`): `_SUCCESS` in the output location, so no reader takes the output for
/// complete while it changes, and the merge groups, plan and final marker under the job's
/// storage, so the next aggregation merges everything anew instead of finding groups already
/// done. The output files themselves stay until the next final merge replaces them.
pub async fn withdraw_output(backends: &Backends, job: &JobRecord) -> Result<()> {
    let settings = OutputSettings::of(&job.spec.spec.output, backends, &job.id)?;
    match &settings.remote {
        Some((store, prefix)) => store.delete_prefix(&format!("{prefix}_SUCCESS")).await?,
        None => orch_data::atomic::remove_if_present(&settings.out_dir.join("_SUCCESS"))?,
    }
    let dir = layout::aggregate_dir(&job.id);
    backends.objects.delete_prefix(&format!("{dir}/")).await?;
    let (root, remote) = backends.local_root();
    if remote {
        // The coordinator's mirror of a remote store's merge files.
        orch_data::atomic::remove_dir_if_present(&root.join(&dir))?;
    }
    Ok(())
}

/// Ends the aggregation once the final merge committed: checks its marker against the output
/// and, when the job `succeeded`, writes `_SUCCESS` last. A job that failed (tasks out of
/// attempts, more failed items than its tolerance) keeps its output and `errors.parquet`
/// without the marker that tells readers the output is complete.
pub async fn finish(
    backends: &Backends,
    job: &JobRecord,
    tasks: &[TaskRecord],
    succeeded: bool,
) -> Result<()> {
    let started = std::time::Instant::now();
    let settings = OutputSettings::of(&job.spec.spec.output, backends, &job.id)?;
    let (root, remote) = backends.local_root();
    let output = if remote {
        remote_final_output(backends, &job.id).await?
    } else {
        let plan: AggregationPlan = read_versioned(
            backends.objects.as_ref(),
            &layout::aggregate_plan(&job.id),
            "aggregation plan",
        )
        .await?;
        let (resolved, settings) = (Resolved::new(&root, &job.id, &plan), settings.clone());
        blocking(move || {
            let hierarchy = Hierarchy::new(
                &resolved.inputs,
                &resolved.work_dir,
                settings.fan_in,
                &settings.merge,
            )?;
            resolved
                .final_merge(&settings, &hierarchy.final_inputs())
                .done()
        })
        .await?
    };
    let output = output.ok_or_else(|| {
        Error::Invalid("the final merge task committed without a valid output marker".into())
    })?;
    if !succeeded {
        info!(rows = output.rows, output = %settings.uri, "aggregated; no _SUCCESS: the job failed");
        return Ok(());
    }
    write_success(job, tasks, &settings, output, started).await
}

/// Where the aggregation of a job stands, from its task rows: the earliest stage not done and
/// its groups; `None` before the aggregation tasks exist.
pub fn progress(tasks: &[TaskRecord]) -> Option<AggregationProgress> {
    let merges: Vec<&TaskRecord> = tasks.iter().filter(|t| !t.kind.is_work()).collect();
    let stage = merges
        .iter()
        .filter(|t| !t.state.is_terminal())
        .map(|t| t.kind)
        .min_by_key(|k| k.stage())
        .or_else(|| merges.first().map(|_| TaskKind::Final))?;
    let levels = merges
        .iter()
        .filter_map(|t| match t.kind {
            TaskKind::Merge { level } => Some(level),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let of_stage = merges.iter().filter(|t| t.kind == stage);
    Some(AggregationProgress {
        stage,
        levels,
        groups_done: of_stage
            .clone()
            .filter(|t| t.state == TaskState::Succeeded)
            .count() as u32,
        groups_total: of_stage.count() as u32,
    })
}

/// Whether merge group `group` of `level` has its `_DONE` in the remote store (uploaded after
/// its part, so it vouches for it).
async fn remote_group_done(backends: &Backends, job: &str, level: u32, group: u32) -> Result<bool> {
    let key = format!(
        "{}/{}/{DONE_FILE}",
        layout::aggregate_dir(job),
        group_dir_name(level, group as usize)
    );
    Ok(backends
        .objects
        .list(&key)
        .await?
        .iter()
        .any(|o| o.key == key))
}

/// The final marker in the remote store, which the final task uploads after the output.
async fn remote_final_output(backends: &Backends, job: &str) -> Result<Option<FinalOutput>> {
    let Some(bytes) = backends.objects.get(&layout::aggregate_final(job)).await? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(output) => Ok(Some(output)),
        Err(e) => {
            warn!(error = %e, "unreadable final marker; merging again");
            Ok(None)
        }
    }
}

async fn write_success(
    job: &JobRecord,
    tasks: &[TaskRecord],
    settings: &OutputSettings,
    output: FinalOutput,
    started: std::time::Instant,
) -> Result<()> {
    let marker = SuccessMarker {
        schema_version: SCHEMA_VERSION,
        job: job.id.clone(),
        rows: output.rows,
        items: engine::item_counts(tasks),
        error_rows: output.error_rows,
        schema: output.schema,
        files: output.files,
    };
    let bytes = serde_json::to_vec_pretty(&marker).map_err(|source| orch_core::Error::Decode {
        what: "_SUCCESS".into(),
        source,
    })?;
    settings.put("_SUCCESS", bytes).await?;
    info!(
        rows = marker.rows,
        files = marker.files.len(),
        output = %settings.uri,
        ms = started.elapsed().as_millis() as u64,
        "aggregated"
    );
    Ok(())
}

/// Runs CPU- and disk-bound merge code off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> orch_data::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Invalid(format!("aggregation task panicked: {e}")))?
        .map_err(Error::from)
}

/// The worker side (`orch-worker aggregate`): runs aggregation task `task` of `job` — one
/// merge group of one level, or the final merge — as the plan says, and returns what it was.
/// Idempotent: a group already done is left alone (on a remote store, one whose `_DONE` is
/// there).
pub async fn run_task(
    backends: &Backends,
    job: &str,
    task: u32,
    manifest_sha256: Option<&str>,
    manifest_cache: Option<&Path>,
) -> Result<TaskKind> {
    let objects = backends.objects.as_ref();
    let manifest = crate::manifest::load(objects, job, manifest_sha256, manifest_cache).await?;
    let plan: AggregationPlan =
        read_versioned(objects, &layout::aggregate_plan(job), "aggregation plan").await?;
    let (stage, group) = plan.stage_of(task).ok_or_else(|| {
        Error::Invalid(format!(
            "task {task} is not an aggregation task of job {job}'s plan"
        ))
    })?;
    let settings = OutputSettings::of(&manifest.spec.spec.output, backends, job)?;
    let (root, remote) = backends.local_root();
    let resolved = Resolved::new(&root, job, &plan);
    let started = std::time::Instant::now();
    let aggregate_dir = layout::aggregate_dir(job);
    let hierarchy = Hierarchy::new(
        &resolved.inputs,
        &resolved.work_dir,
        settings.fan_in,
        &settings.merge,
    )?;
    match stage {
        TaskKind::Merge { level }
            if remote && remote_group_done(backends, job, level, group).await? =>
        {
            info!(level, group, "merge group already done");
        }
        TaskKind::Merge { level } => {
            if remote {
                let (dirs, inputs) = hierarchy.member_dirs(level, group as usize);
                let mut keys: Vec<String> = plan.inputs[inputs].to_vec();
                for dir in dirs {
                    keys.push(format!("{aggregate_dir}/{dir}/{DONE_FILE}"));
                    keys.push(format!("{aggregate_dir}/{dir}/{}", part_file_name(0)));
                }
                fetch(backends, &keys).await?;
            }
            let (resolved, settings) = (resolved.clone(), settings.clone());
            let outcome = blocking(move || {
                let hierarchy = Hierarchy::new(
                    &resolved.inputs,
                    &resolved.work_dir,
                    settings.fan_in,
                    &settings.merge,
                )?;
                // A member sealed earlier may have been damaged since (a disk, a person): it
                // is merged again rather than trusted. Remote members were just downloaded and
                // checked against their sha256.
                if !remote {
                    hierarchy.repair_members(level, group as usize)?;
                }
                hierarchy.merge_group(level, group as usize)
            })
            .await?;
            if remote {
                // The part first, its marker last: a `_DONE` in the store vouches for the part.
                let dir = format!("{aggregate_dir}/{}", group_dir_name(level, group as usize));
                for name in [part_file_name(0), DONE_FILE.to_string()] {
                    let key = format!("{dir}/{name}");
                    backends.objects.put_file(&key, &root.join(&key)).await?;
                }
            }
            info!(
                level,
                group,
                ?outcome,
                ms = started.elapsed().as_millis() as u64,
                "merge group"
            );
        }
        _ => {
            let inputs = hierarchy.final_inputs();
            if remote {
                let keys: Vec<String> = inputs
                    .iter()
                    .chain(&resolved.errors)
                    .filter_map(|p| p.strip_prefix(&root).ok())
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                fetch(backends, &keys).await?;
            }
            let output = {
                let (resolved, settings) = (resolved.clone(), settings.clone());
                blocking(move || {
                    if !remote {
                        Hierarchy::new(
                            &resolved.inputs,
                            &resolved.work_dir,
                            settings.fan_in,
                            &settings.merge,
                        )?
                        .repair_last_level()?;
                    }
                    resolved.final_merge(&settings, &inputs).run()
                })
                .await?
            };
            settings.upload(&output).await?;
            if remote {
                let key = layout::aggregate_final(job);
                backends.objects.put_file(&key, &resolved.marker).await?;
            }
            info!(
                rows = output.rows,
                files = output.files.len(),
                ms = started.elapsed().as_millis() as u64,
                "final merge"
            );
        }
    }
    Ok(stage)
}

/// Downloads objects of a remote store to their mirror paths under the scratch directory
/// (each checked against the sha256 it was written with).
async fn fetch(backends: &Backends, keys: &[String]) -> Result<()> {
    concurrently(keys, |key| {
        let objects = backends.objects.clone();
        let local = backends.local_file(&key);
        async move {
            let (path, _) = local?;
            if objects.get_to_file(&key, &path).await? {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "{key} is missing from the job's storage"
                )))
            }
        }
    })
    .await?;
    Ok(())
}

async fn read_versioned<T: serde::de::DeserializeOwned>(
    objects: &dyn ObjectStore,
    key: &str,
    what: &str,
) -> Result<T> {
    let bytes = objects
        .get(key)
        .await?
        .ok_or_else(|| Error::Invalid(format!("{what} {key} is missing")))?;
    Ok(orch_core::model::decode_versioned(what, &bytes)?)
}
