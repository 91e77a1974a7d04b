//! How orch tasks become Slurm arrays, as pure functions: cutting a task group into arrays
//! that fit `MaxArraySize`, the array's name and comment (its [`ArrayKey`]), the index list
//! (`0-99,120%8`), resources from the job spec, the allow-list of extra sbatch options, and the
//! batch script that starts the worker.
//!
//! Array indices must stay below `MaxArraySize`, while a job may have a million tasks; so an
//! array covers task ids `base..base + MaxArraySize` and its index is `task - base`. The worker
//! gets `--task-offset base` and adds `SLURM_ARRAY_TASK_ID`.

use std::fmt::Write as _;
use std::path::PathBuf;

use orch_core::invocation::WorkerInvocation;
use orch_core::model::{TaskGroup, TaskKind};
use orch_core::spec::ResourcesSpec;
use sha2::{Digest, Sha256};

use crate::api::ClusterInfo;
use crate::error::{Result, SlurmError};

/// One array as submitted: everything a transport needs, already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArraySubmission {
    /// `--job-name`: the orch job id (all arrays of a job share it, so one query finds them).
    pub name: String,
    /// `--comment`: the array's [`ArrayKey`].
    pub comment: String,
    /// Array indices, ascending.
    pub indices: Vec<u32>,
    /// `%N`: tasks of this array running at once.
    pub max_running: Option<u32>,
    /// The batch script.
    pub script: String,
    pub cpus_per_task: u32,
    pub memory_mb: u64,
    pub time_minutes: u64,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub gres: Option<String>,
    pub constraint: Option<String>,
    /// `--output` (and error) file pattern, with `%A` (array job id) and `%a` (index).
    pub output: String,
    /// `--signal`, e.g. `B:TERM@60`: the batch shell gets SIGTERM that long before the time
    /// limit, and the worker checkpoints.
    pub signal: String,
    /// Extra sbatch options from the allow-list, verbatim (`--exclusive`, `--mail-type=END`).
    pub extra: Vec<String>,
    /// Environment of the tasks (the REST API needs it explicitly; the commands add it to
    /// the submitter's).
    pub environment: Vec<(String, String)>,
    /// Working directory of the tasks.
    pub workdir: PathBuf,
}

impl ArraySubmission {
    /// `--array`'s value: the indices as ranges, plus `%N`.
    pub fn array_spec(&self) -> String {
        array_spec(&self.indices, self.max_running)
    }
}

/// `0-3,7,9-10` for `[0, 1, 2, 3, 7, 9, 10]`, with `%N` appended when given.
pub fn array_spec(indices: &[u32], max_running: Option<u32>) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    if let Some(n) = max_running {
        let _ = write!(out, "%{n}");
    }
    out
}

/// What an array is, written into its comment: the orch job, what its tasks do, the task
/// group, the first task id (index 0), and a digest of the (task, attempt) pairs it runs. A
/// coordinator that finds an array with the same key knows that exact submission happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArrayKey {
    pub kind: TaskKind,
    pub group: u32,
    pub base: u32,
    pub digest: String,
}

impl ArrayKey {
    pub fn new(kind: TaskKind, group: u32, base: u32, tasks: &[(u32, u32)]) -> Self {
        let mut h = Sha256::new();
        for (task, attempt) in tasks {
            h.update(format!("{task}:{attempt},").as_bytes());
        }
        ArrayKey {
            kind,
            group,
            base,
            digest: hex::encode(&h.finalize()[..6]),
        }
    }

    /// `orch:work:g12:b4000:3fa2…` (also the prefix of the executor ids of its tasks).
    pub fn comment(&self) -> String {
        let kind = match self.kind {
            TaskKind::Work => "work".to_string(),
            TaskKind::Merge { level } => format!("merge{level}"),
            TaskKind::Final => "final".to_string(),
        };
        format!("orch:{kind}:g{}:b{}:{}", self.group, self.base, self.digest)
    }

    /// Parses [`ArrayKey::comment`]; `None` for any other comment.
    pub fn parse(comment: &str) -> Option<Self> {
        let mut parts = comment.strip_prefix("orch:")?.split(':');
        let kind = match parts.next()? {
            "work" => TaskKind::Work,
            "final" => TaskKind::Final,
            other => TaskKind::Merge {
                level: other.strip_prefix("merge")?.parse().ok()?,
            },
        };
        let group = parts.next()?.strip_prefix('g')?.parse().ok()?;
        let base = parts.next()?.strip_prefix('b')?.parse().ok()?;
        let digest = parts.next()?.to_string();
        if parts.next().is_some() || digest.is_empty() {
            return None;
        }
        Some(ArrayKey {
            kind,
            group,
            base,
            digest,
        })
    }
}

/// The executor id of one task of an array: `slurm:<comment>:<task>`. Known before the array
/// is submitted, so the coordinator stores it with the dispatch and can always find the task's
/// array again.
pub fn executor_id(key: &ArrayKey, task: u32) -> String {
    format!("slurm:{}:{task}", key.comment())
}

/// The array key and task of an executor id made by [`executor_id`].
pub fn parse_executor_id(id: &str) -> Option<(ArrayKey, u32)> {
    let rest = id.strip_prefix("slurm:")?;
    let (comment, task) = rest.rsplit_once(':')?;
    Some((ArrayKey::parse(comment)?, task.parse().ok()?))
}

/// One array of a task group: its key and its (task, attempt) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedArray {
    pub key: ArrayKey,
    pub tasks: Vec<(u32, u32)>,
    /// The group's `job.json` digest, for the workers' command line.
    pub manifest_sha256: Option<String>,
}

impl PlannedArray {
    pub fn indices(&self) -> Vec<u32> {
        self.tasks.iter().map(|(t, _)| t - self.key.base).collect()
    }
}

/// Cuts a group into arrays whose indices (`task - base`) stay below `max_array_size`:
/// tasks in id order, a new array whenever the next task is too far from the first.
pub fn plan_arrays(group: &TaskGroup, max_array_size: u32) -> Vec<PlannedArray> {
    let mut tasks = group.tasks.clone();
    tasks.sort_unstable();
    tasks.dedup_by_key(|(t, _)| *t);
    let mut arrays: Vec<Vec<(u32, u32)>> = Vec::new();
    for pair in tasks {
        match arrays.last_mut() {
            Some(current) if pair.0 - current[0].0 < max_array_size.max(1) => current.push(pair),
            _ => arrays.push(vec![pair]),
        }
    }
    arrays
        .into_iter()
        .map(|tasks| PlannedArray {
            key: ArrayKey::new(group.kind, group.id, tasks[0].0, &tasks),
            tasks,
            manifest_sha256: group.manifest_sha256.clone(),
        })
        .collect()
}

/// sbatch options a job spec may add (`spec.executor.slurm.extraOptions`): ones that change
/// where or how politely tasks run, never what runs or as whom. Names ending in `=` take a
/// value.
const ALLOWED_OPTIONS: &[&str] = &[
    "--exclusive",
    "--requeue",
    "--no-requeue",
    "--mail-type=",
    "--mail-user=",
    "--reservation=",
    "--nice=",
    "--licenses=",
    "--hint=",
    "--cpu-freq=",
    "--tmp=",
    "--nodelist=",
    "--exclude=",
    "--cluster-constraint=",
];

/// Checks each extra option against [`ALLOWED_OPTIONS`] (values must not be empty or contain
/// whitespace or newlines, which a batch script header would misread).
pub fn check_extra_options(options: &[String]) -> Result<()> {
    for (i, option) in options.iter().enumerate() {
        let field = format!("spec.executor.slurm.extraOptions[{i}]");
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (format!("{name}="), Some(value)),
            None => (option.clone(), None),
        };
        if !ALLOWED_OPTIONS.contains(&name.as_str()) {
            let allowed: Vec<&str> = ALLOWED_OPTIONS
                .iter()
                .map(|o| o.trim_end_matches('='))
                .collect();
            return Err(SlurmError::invalid(
                field,
                format!(
                    "`{option}` is not an allowed sbatch option (allowed: {})",
                    allowed.join(", ")
                ),
            ));
        }
        if let Some(value) = value
            && (value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(SlurmError::invalid(
                field,
                format!("`{option}` needs a value without spaces"),
            ));
        }
    }
    Ok(())
}

/// Resources of one array task, from `spec.resources`, in Slurm's units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResources {
    pub cpus_per_task: u32,
    pub memory_mb: u64,
    pub time_minutes: u64,
}

impl TaskResources {
    pub fn of(resources: &ResourcesSpec) -> Result<Self> {
        let bytes = resources
            .memory
            .as_bytes()
            .map_err(|e| SlurmError::invalid("spec.resources.memory", e))?;
        let time = resources
            .time
            .as_duration()
            .map_err(|e| SlurmError::invalid("spec.resources.time", e))?;
        Ok(TaskResources {
            cpus_per_task: resources.cpus.max(1),
            memory_mb: bytes.div_ceil(1024 * 1024).max(1),
            time_minutes: time.as_secs().div_ceil(60).max(1),
        })
    }
}

/// Checks the spec against the cluster before anything is submitted: the partition exists
/// (or a default one does) and the time limit fits under its `MaxTime`.
pub fn check_against_cluster(resources: &ResourcesSpec, cluster: &ClusterInfo) -> Result<()> {
    let time = TaskResources::of(resources)?.time_minutes;
    let partition = match &resources.partition {
        Some(name) => cluster
            .partitions
            .iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = cluster.partitions.iter().map(|p| p.name.as_str()).collect();
                SlurmError::invalid(
                    "spec.resources.partition",
                    format!(
                        "the cluster has no partition `{name}` (it has: {})",
                        known.join(", ")
                    ),
                )
            })?,
        None => match cluster.partitions.iter().find(|p| p.default) {
            Some(p) => p,
            None => return Ok(()),
        },
    };
    if let Some(max) = partition.max_time_minutes
        && time > max
    {
        return Err(SlurmError::invalid(
            "spec.resources.time",
            format!(
                "{} ({time} min) is over partition `{}`'s limit of {max} min",
                resources.time, partition.name
            ),
        ));
    }
    Ok(())
}

/// What the batch script starts: the worker, with the storage and job it works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The worker program as the nodes see it.
    pub program: String,
    pub storage: String,
    pub job: String,
}

/// Quotes a word for a POSIX shell.
fn sh_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The batch script of one array: `exec`s the worker, so Slurm's signals (`--signal=B:TERM`,
/// preemption, scancel) reach it directly and its exit code is the task's. It first exports
/// `ORCH_TASK_SIGNAL_AT` (epoch seconds at which Slurm's checkpoint signal is due: the start
/// plus `signal_after_secs`), so a worker stopped by a signal can tell the approaching time
/// limit from a preemption.
pub fn batch_script(
    worker: &WorkerCommand,
    array: &PlannedArray,
    signal_after_secs: u64,
) -> String {
    let (kind, group, base) = (array.key.kind, array.key.group, array.key.base);
    let invocation = WorkerInvocation {
        kind,
        storage: &worker.storage,
        job: &worker.job,
        group,
        task_offset: base,
        manifest_sha256: array.manifest_sha256.as_deref(),
    };
    let args: Vec<String> = std::iter::once(worker.program.clone())
        .chain(invocation.args())
        .collect();
    let command: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
    format!(
        "#!/bin/sh\n# orch job {job}, {kind}, group {group}, tasks from {base}\n\
         ORCH_TASK_SIGNAL_AT=$(( $(date +%s) + {signal_after_secs} ))\n\
         export ORCH_TASK_SIGNAL_AT\nexec {}\n",
        command.join(" "),
        job = worker.job,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::PartitionInfo;

    #[test]
    fn array_specs_compress_runs() {
        assert_eq!(array_spec(&[0, 1, 2, 3, 7, 9, 10], None), "0-3,7,9-10");
        assert_eq!(array_spec(&[5], Some(2)), "5%2");
        assert_eq!(array_spec(&[], None), "");
    }

    #[test]
    fn groups_are_cut_below_max_array_size() {
        let group = TaskGroup {
            job: "j".into(),
            id: 3,
            tasks: (0..2500).map(|t| (t, 1)).collect(),
            kind: TaskKind::Work,
            manifest_sha256: None,
        };
        let arrays = plan_arrays(&group, 1001);
        let bases: Vec<u32> = arrays.iter().map(|a| a.key.base).collect();
        assert_eq!(bases, [0, 1001, 2002]);
        assert!(arrays.iter().all(|a| a.indices().iter().all(|&i| i < 1001)));
        let total: usize = arrays.iter().map(|a| a.tasks.len()).sum();
        assert_eq!(total, 2500);
        // Scattered retries far apart land in separate arrays with small indices.
        let retries = TaskGroup {
            tasks: vec![(5, 2), (4000, 3), (4500, 2)],
            ..group
        };
        let arrays = plan_arrays(&retries, 1001);
        assert_eq!(arrays.len(), 2);
        assert_eq!(arrays[1].indices(), [0, 500]);
    }

    #[test]
    fn keys_and_executor_ids_round_trip_and_differ_by_attempt() {
        let a = ArrayKey::new(TaskKind::Merge { level: 2 }, 0, 10, &[(10, 1), (11, 1)]);
        assert_eq!(ArrayKey::parse(&a.comment()), Some(a.clone()));
        let id = executor_id(&a, 11);
        assert_eq!(parse_executor_id(&id), Some((a.clone(), 11)));
        let b = ArrayKey::new(TaskKind::Merge { level: 2 }, 0, 10, &[(10, 2), (11, 1)]);
        assert_ne!(a.comment(), b.comment());
        assert_eq!(ArrayKey::parse("someone else's comment"), None);
        assert_eq!(ArrayKey::parse("orch:work:g1:b2:abc:extra"), None);
    }

    #[test]
    fn extra_options_come_from_the_allow_list() {
        check_extra_options(&["--exclusive".into(), "--mail-type=END".into()]).unwrap();
        for bad in [
            "--wrap=rm -rf /",
            "--uid=0",
            "--mail-type=",
            "--export=ALL",
            "-A x",
        ] {
            let e = check_extra_options(&[bad.into()]).unwrap_err();
            assert!(e.to_string().contains("extraOptions[0]"), "{bad}: {e}");
        }
    }

    #[test]
    fn partitions_and_time_limits_are_checked() {
        let cluster = ClusterInfo {
            max_array_size: 1001,
            partitions: vec![
                PartitionInfo {
                    name: "debug".into(),
                    max_time_minutes: Some(30),
                    default: true,
                },
                PartitionInfo {
                    name: "short".into(),
                    max_time_minutes: Some(5),
                    default: false,
                },
            ],
        };
        let mut r = ResourcesSpec::default();
        check_against_cluster(&r, &cluster).unwrap();
        r.time = "31m".into();
        let e = check_against_cluster(&r, &cluster).unwrap_err().to_string();
        assert!(
            e.contains("spec.resources.time") && e.contains("debug"),
            "{e}"
        );
        r.time = "5m".into();
        r.partition = Some("short".into());
        check_against_cluster(&r, &cluster).unwrap();
        r.partition = Some("gpu".into());
        let e = check_against_cluster(&r, &cluster).unwrap_err().to_string();
        assert!(
            e.contains("no partition `gpu`") && e.contains("debug, short"),
            "{e}"
        );
    }

    #[test]
    fn scripts_exec_the_worker_with_quoted_arguments() {
        let worker = WorkerCommand {
            program: "/opt/orch bin/orch-worker".into(),
            storage: "file:///shared/.orch".into(),
            job: "reviews-1a2b".into(),
        };
        let array = |kind, group, base: u32, digest: Option<&str>| PlannedArray {
            key: ArrayKey::new(kind, group, base, &[(base, 1)]),
            tasks: vec![(base, 1)],
            manifest_sha256: digest.map(str::to_string),
        };
        let s = batch_script(&worker, &array(TaskKind::Work, 7, 1001, None), 1800);
        assert!(
            s.contains("ORCH_TASK_SIGNAL_AT=$(( $(date +%s) + 1800 ))"),
            "{s}"
        );
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(
            s.contains("exec '/opt/orch bin/orch-worker' run --storage file:///shared/.orch --job reviews-1a2b --group 7 --task-offset 1001"),
            "{s}"
        );
        let s = batch_script(&worker, &array(TaskKind::Final, 0, 0, Some("ab12")), 1800);
        assert!(s.contains("aggregate --final --storage"), "{s}");
        assert!(s.contains(" --manifest-sha256 ab12\n"), "{s}");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn resources_in_slurm_units() {
        let r = ResourcesSpec {
            memory: "1500Mi".into(),
            time: "90s".into(),
            ..ResourcesSpec::default()
        };
        let t = TaskResources::of(&r).unwrap();
        assert_eq!((t.cpus_per_task, t.memory_mb, t.time_minutes), (1, 1500, 2));
    }
}
