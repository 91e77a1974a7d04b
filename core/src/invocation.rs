//! How an executor starts `orch-worker`: its arguments, where it finds its task index, and the
//! variables passed on to it. Local processes, Slurm batch scripts and Kubernetes pods all build
//! the worker's command line here, and the worker crate parses what [`WorkerInvocation::args`]
//! builds with its own argument parser in a test, so the two cannot drift. See
//! docs/architecture.md ("How a worker is started").

use crate::model::TaskKind;

/// One `orch-worker` start, without the program (which each executor knows: a path on this
/// machine, the program as Slurm nodes see it, an image's entrypoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInvocation<'a> {
    pub kind: TaskKind,
    /// The job's storage URI (`--storage`).
    pub storage: &'a str,
    pub job: &'a str,
    /// The task group (the array submission) the task was dispatched in: a worker claims its
    /// task only for this group.
    pub group: u32,
    /// Added to the index found in [`TASK_INDEX_VARIABLES`]: index 0 of a Slurm array or an
    /// Indexed Job is task `task_offset`.
    pub task_offset: u32,
    /// The sha256 the job's `job.json` must have (`--manifest-sha256`), from the group.
    pub manifest_sha256: Option<&'a str>,
}

impl WorkerInvocation<'_> {
    /// `run --storage S --job J --group G --task-offset O` for work, `aggregate --level L
    /// --storage S --job J --group G --task-offset O` for a merge level and `aggregate --final …`
    /// for the final merge.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = match self.kind {
            TaskKind::Work => vec!["run".into()],
            TaskKind::Merge { level } => {
                vec!["aggregate".into(), "--level".into(), level.to_string()]
            }
            TaskKind::Final => vec!["aggregate".into(), "--final".into()],
        };
        args.extend([
            "--storage".into(),
            self.storage.to_string(),
            "--job".into(),
            self.job.to_string(),
        ]);
        args.extend([
            "--group".into(),
            self.group.to_string(),
            "--task-offset".into(),
            self.task_offset.to_string(),
        ]);
        if let Some(digest) = self.manifest_sha256 {
            args.extend(["--manifest-sha256".into(), digest.to_string()]);
        }
        args
    }
}

/// `serve --storage S --job J` (and `--manifest-sha256 D`): a worker kept for the work tasks of
/// one job, which runs the tasks it is handed on its stdin one after another, each a
/// [`ServedTask`] line, answers each with a [`ServedEnd`] line on its stdout, and ends at the end
/// of its input (or after the task a stop signal interrupted). The local executor keeps such
/// workers so that a task costs no process start.
pub fn serve_args(storage: &str, job: &str, manifest_sha256: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--storage".into(),
        storage.to_string(),
        "--job".into(),
        job.to_string(),
    ];
    if let Some(digest) = manifest_sha256 {
        args.extend(["--manifest-sha256".into(), digest.to_string()]);
    }
    args
}

/// One task handed to a serving worker (one JSON line on its stdin).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServedTask {
    pub group: u32,
    pub task: u32,
    /// The executor's id of the attempt, for the worker's log lines.
    pub executor: String,
    /// The task's log file, which the worker's (and its handler's) stderr is appended to while
    /// the task runs.
    pub log: std::path::PathBuf,
}

/// How a served task ended (one JSON line on the worker's stdout): the exit code a worker
/// started for that task alone would have ended with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServedEnd {
    pub executor: String,
    pub code: i32,
}

/// Where executors put the task index, in the order the worker reads them: the local executor,
/// a Slurm array, a Kubernetes Indexed Job.
pub const TASK_INDEX_VARIABLES: [&str; 3] = [
    "ORCH_TASK_INDEX",
    "SLURM_ARRAY_TASK_ID",
    "JOB_COMPLETION_INDEX",
];

/// Set (to `1`) by an executor whose log file of the worker already is in the job's storage
/// (the local executor on directory storage): the worker then stores no copy of its log.
pub const LOG_IN_STORAGE_VARIABLE: &str = "ORCH_LOG_IN_STORAGE";

/// Where the local executor puts the executor id of the attempt it starts.
pub const EXECUTOR_ID_VARIABLE: &str = "ORCH_EXECUTOR_ID";

/// The executor's name for this worker, for its log lines, from what each executor puts in the
/// environment (`lookup`, usually `|k| std::env::var(k).ok()`): the local executor's id, a
/// Slurm array task (`<array job>_<index>`, as `squeue` and `sacct` show it), a Kubernetes pod
/// (its name is the host name).
pub fn executor_id_from(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(id) = lookup(EXECUTOR_ID_VARIABLE) {
        return Some(id);
    }
    if let (Some(array), Some(index)) =
        (lookup("SLURM_ARRAY_JOB_ID"), lookup("SLURM_ARRAY_TASK_ID"))
    {
        return Some(format!("{array}_{index}"));
    }
    lookup("JOB_COMPLETION_INDEX")
        .and(lookup("HOSTNAME"))
        .map(|pod| format!("pod/{pod}"))
}

/// What a worker's environment can be built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerHost {
    /// A machine that shares the submitter's software and home directory (a Slurm node): the
    /// search paths, the home directory and the AWS profile files pass on too.
    SharedHost,
    /// A container with its own image (a Kubernetes pod): only orch's settings pass on.
    Container,
}

/// orch's settings a worker needs wherever it runs: where the stores are, how to log, how much
/// scratch space it needs. Never credentials: those come by reference (an instance or pod role,
/// a profile file, a Secret named in `envFromSecrets`).
const SETTINGS: &[&str] = &[
    "ORCH_LOG",
    "ORCH_LOG_FORMAT",
    "ORCH_DYNAMODB_TABLE",
    "ORCH_SQS_QUEUE",
    "ORCH_S3_FORCE_PATH_STYLE",
    "ORCH_SCRATCH_MIN_FREE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_SQS",
];

/// Added on a [`WorkerHost::SharedHost`] (a Slurm node, which gets nothing else of the
/// submitter's environment): the handler's search paths (`LD_LIBRARY_PATH` for the libraries of
/// a `module load` or conda setup), the home directory, the worker's scratch directory (which
/// a pod's image decides instead), and where the AWS SDK finds its profile files (which is how
/// workers on such hosts get their credentials when the node has no instance role: by
/// reference to a file, never by value).
const SHARED_HOST: &[&str] = &[
    "PATH",
    "LD_LIBRARY_PATH",
    "ORCH_SCRATCH",
    "LANG",
    "PYTHONPATH",
    "HOME",
    "USER",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

/// The names [`worker_environment`] passes on for `host`.
pub fn worker_variables(host: WorkerHost) -> impl Iterator<Item = &'static str> {
    let extra: &[&str] = match host {
        WorkerHost::SharedHost => SHARED_HOST,
        WorkerHost::Container => &[],
    };
    SETTINGS.iter().chain(extra).copied()
}

/// The value of setting `name` in this process, as passed on to its workers: its environment,
/// except the log format, which is the one this process logs in (its `--log-format` flag
/// included), so that workers log like the process that started them.
pub fn this_process_setting(name: &str) -> Option<String> {
    if name == crate::logging::FORMAT_VARIABLE {
        return Some(crate::logging::chosen().as_str().to_string());
    }
    std::env::var(name).ok()
}

/// The variables passed on to a worker on `host`, as (name, value) pairs of those `lookup`
/// knows (usually this process's environment: `|k| std::env::var(k).ok()`): all a Slurm task
/// or a pod gets of it. Local worker processes inherit the whole environment and need none.
pub fn worker_environment(
    host: WorkerHost,
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    worker_variables(host)
        .filter_map(|k| Some((k.to_string(), lookup(k)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executor_id_comes_from_whichever_executor_started_the_worker() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            executor_id_from(env(&[
                ("ORCH_EXECUTOR_ID", "local:3:1"),
                ("SLURM_ARRAY_TASK_ID", "3")
            ])),
            Some("local:3:1".into())
        );
        assert_eq!(
            executor_id_from(env(&[
                ("SLURM_ARRAY_JOB_ID", "41"),
                ("SLURM_ARRAY_TASK_ID", "3")
            ])),
            Some("41_3".into())
        );
        assert_eq!(
            executor_id_from(env(&[
                ("JOB_COMPLETION_INDEX", "3"),
                ("HOSTNAME", "j-3-abc")
            ])),
            Some("pod/j-3-abc".into())
        );
        assert_eq!(executor_id_from(env(&[("HOSTNAME", "laptop")])), None);
    }

    #[test]
    fn each_kind_has_its_subcommand_and_names_its_group() {
        let base = WorkerInvocation {
            kind: TaskKind::Work,
            storage: "s3://b/p/",
            job: "j-1",
            group: 3,
            task_offset: 7,
            manifest_sha256: None,
        };
        assert_eq!(
            base.args().join(" "),
            "run --storage s3://b/p/ --job j-1 --group 3 --task-offset 7"
        );
        let merge = WorkerInvocation {
            kind: TaskKind::Merge { level: 2 },
            ..base
        };
        assert_eq!(
            merge.args().join(" "),
            "aggregate --level 2 --storage s3://b/p/ --job j-1 --group 3 --task-offset 7"
        );
        let last = WorkerInvocation {
            kind: TaskKind::Final,
            ..base
        };
        assert_eq!(
            last.args().join(" "),
            "aggregate --final --storage s3://b/p/ --job j-1 --group 3 --task-offset 7"
        );
        let pinned = WorkerInvocation {
            manifest_sha256: Some("ab12"),
            ..base
        };
        assert_eq!(
            pinned.args().join(" "),
            "run --storage s3://b/p/ --job j-1 --group 3 --task-offset 7 --manifest-sha256 ab12"
        );
    }

    #[test]
    fn containers_get_settings_only_and_shared_hosts_also_their_home_and_paths() {
        let lookup = |k: &str| Some(format!("v-{k}"));
        let pod: Vec<String> = worker_environment(WorkerHost::Container, lookup)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(pod.contains(&"ORCH_SCRATCH_MIN_FREE".to_string()));
        assert!(!pod.contains(&"HOME".to_string()));
        assert!(!pod.contains(&"PATH".to_string()));
        let node = worker_environment(WorkerHost::SharedHost, lookup);
        for name in [
            "ORCH_SCRATCH_MIN_FREE",
            "HOME",
            "PATH",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            assert!(
                node.iter()
                    .any(|(k, v)| k == name && *v == format!("v-{name}"))
            );
        }
        // Never a credential by value.
        for (k, _) in &node {
            assert!(
                !k.contains("SECRET")
                    && !k.contains("SESSION_TOKEN")
                    && k != "AWS_ACCESS_KEY_ID"
                    && k != "SLURM_JWT"
            );
        }
        assert!(worker_environment(WorkerHost::SharedHost, |_| None).is_empty());
    }
}
