//! What Kubernetes says about a task, as pure functions of the Job and pod objects: the index
//! sets of a Job's status, which pod is an index's, and the mapping to the engine's
//! [`ExecState`].

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use orch_core::backend::{ExecFailure, ExecState};

use super::manifest::{CONTAINER, TASK_OFFSET_ANNOTATION};

/// The annotation (and, since Kubernetes 1.28, label) with a pod's completion index.
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The label with a pod's Job name (older clusters: `job-name`).
pub const JOB_NAME_KEYS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];

/// Container waits that never pass on their own: the pod would stay pending forever.
const STUCK_WAITING: [&str; 3] = [
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
];

/// A set of indexes as Kubernetes writes it (`1,3-5,7`): sorted, disjoint ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSet(Vec<(u32, u32)>);

impl IndexSet {
    /// Parses `1,3-5,7`; parts that do not parse are skipped (an empty text is the empty set).
    pub fn parse(text: &str) -> Self {
        let mut ranges: Vec<(u32, u32)> = text
            .split(',')
            .filter_map(|part| {
                let part = part.trim();
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                        (a <= b).then_some((a, b))
                    }
                    None => part.parse().ok().map(|i| (i, i)),
                }
            })
            .collect();
        ranges.sort_unstable();
        // Merged, so that the range before an index is the only one that can hold it.
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        IndexSet(merged)
    }

    pub fn contains(&self, index: u32) -> bool {
        let i = self.0.partition_point(|(start, _)| *start <= index);
        i > 0 && self.0[i - 1].1 >= index
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|(a, b)| u64::from(b - a) + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What orch needs of one Job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobView {
    pub name: String,
    /// Task id of index 0.
    pub offset: Option<u32>,
    pub completions: u32,
    pub completed: IndexSet,
    pub failed: IndexSet,
    pub suspended: bool,
    /// `Complete` or `Failed`: no pod of it will start again.
    pub finished: bool,
    /// Failed as a whole past its `activeDeadlineSeconds`.
    pub deadline_exceeded: bool,
    /// Why the Job failed as a whole, when it did.
    pub failure: Option<String>,
}

impl JobView {
    pub fn of(job: &Job) -> Option<Self> {
        let name = job.metadata.name.clone()?;
        let offset = job
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TASK_OFFSET_ANNOTATION))
            .and_then(|v| v.parse().ok());
        let spec = job.spec.as_ref();
        let status = job.status.as_ref();
        let mut view = JobView {
            name,
            offset,
            completions: spec
                .and_then(|s| s.completions)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0),
            completed: IndexSet::parse(
                status
                    .and_then(|s| s.completed_indexes.as_deref())
                    .unwrap_or(""),
            ),
            failed: IndexSet::parse(
                status
                    .and_then(|s| s.failed_indexes.as_deref())
                    .unwrap_or(""),
            ),
            suspended: spec.and_then(|s| s.suspend).unwrap_or(false),
            ..JobView::default()
        };
        for c in status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]) {
            if c.status != "True" {
                continue;
            }
            match c.type_.as_str() {
                "Complete" | "Failed" | "FailureTarget" => {
                    view.finished |= c.type_ != "FailureTarget";
                    if c.type_ != "Complete" {
                        view.deadline_exceeded |= c.reason.as_deref() == Some("DeadlineExceeded");
                        view.failure = Some(
                            [c.reason.as_deref(), c.message.as_deref()]
                                .into_iter()
                                .flatten()
                                .collect::<Vec<_>>()
                                .join(": "),
                        );
                    }
                }
                _ => {}
            }
        }
        Some(view)
    }

    /// Whether every index this Job has not finished yet is among `indexes`.
    pub fn unfinished_within(&self, indexes: &std::collections::BTreeSet<u32>) -> bool {
        (0..self.completions)
            .filter(|i| !self.completed.contains(*i) && !self.failed.contains(*i))
            .all(|i| indexes.contains(&i))
    }
}

/// The Job name and completion index of a pod orch's Job made.
pub fn pod_slot(pod: &Pod) -> Option<(String, u32)> {
    let meta = &pod.metadata;
    let index = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_KEY))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(INDEX_KEY)))?
        .parse()
        .ok()?;
    let job = meta
        .owner_references
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .find(|o| o.kind == "Job")
        .map(|o| o.name.clone())
        .or_else(|| {
            let labels = meta.labels.as_ref()?;
            JOB_NAME_KEYS.iter().find_map(|k| labels.get(*k).cloned())
        })?;
    Some((job, index))
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Not ended and not being deleted.
pub fn is_alive(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), "Succeeded" | "Failed")
}

fn worker_status(pod: &Pod) -> Option<&ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_deref()?;
    statuses
        .iter()
        .find(|c| c.name == CONTAINER)
        .or_else(|| statuses.first())
}

/// Pods by (Job name, index), newest first.
pub fn pods_by_slot(pods: &[Pod]) -> HashMap<(String, u32), Vec<&Pod>> {
    let mut slots: HashMap<(String, u32), Vec<&Pod>> = HashMap::new();
    for pod in pods {
        if let Some(slot) = pod_slot(pod) {
            slots.entry(slot).or_default().push(pod);
        }
    }
    for list in slots.values_mut() {
        list.sort_by(|a, b| {
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp)
        });
    }
    slots
}

/// The pod that speaks for an index: a live one if there is one (a replacement), else the
/// newest.
pub fn current_pod<'a>(pods: &[&'a Pod]) -> Option<&'a Pod> {
    pods.iter()
        .find(|p| is_alive(p))
        .or_else(|| pods.first())
        .copied()
}

/// A pending pod that cannot start (a bad image name, a config error): reported as failed,
/// and deleted by the executor so that its index ends.
pub fn stuck_reason(pod: &Pod) -> Option<String> {
    if phase(pod) != "Pending" {
        return None;
    }
    let waiting = worker_status(pod)?.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    STUCK_WAITING.contains(&reason).then(|| {
        format!(
            "{reason}: {}",
            waiting
                .message
                .as_deref()
                .unwrap_or("the container cannot start")
        )
    })
}

/// The state of one pod.
pub fn pod_state(pod: &Pod) -> ExecState {
    let status = pod.status.as_ref();
    let reason = status.and_then(|s| s.reason.as_deref());
    let message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
    match phase(pod) {
        "Pending" => match stuck_reason(pod) {
            Some(message) => ExecState::Failed {
                reason: ExecFailure::Other,
                message,
            },
            None => ExecState::Queued,
        },
        "Succeeded" => ExecState::Exited {
            code: Some(0),
            signal: None,
        },
        "Failed" => failed_pod_state(pod, reason, message),
        // "Running", and "Unknown" (its node stopped reporting): the worker's lease decides.
        _ => ExecState::Running,
    }
}

fn failed_pod_state(pod: &Pod, reason: Option<&str>, message: &str) -> ExecState {
    let failed = |reason, message: String| ExecState::Failed { reason, message };
    if reason == Some("DeadlineExceeded") {
        return failed(
            ExecFailure::TimeLimit,
            format!("the pod ran past spec.resources.time ({message})"),
        );
    }
    let terminated = worker_status(pod)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    if let Some(t) = terminated
        && t.reason.as_deref() == Some("OOMKilled")
    {
        return failed(
            ExecFailure::OutOfMemory,
            format!(
                "the worker container went over spec.resources.memory (exit code {})",
                t.exit_code
            ),
        );
    }
    let disruption = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[])
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    if let Some(c) = disruption {
        let why = [c.reason.as_deref(), c.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        return failed(ExecFailure::Preempted, why);
    }
    if reason == Some("Evicted") {
        return failed(ExecFailure::NodeFailure, format!("evicted: {message}"));
    }
    match terminated {
        Some(t) => ExecState::Exited {
            code: Some(t.exit_code),
            signal: t.signal.filter(|s| *s != 0),
        },
        None => failed(
            ExecFailure::Other,
            if message.is_empty() {
                "the pod failed before its worker started".to_string()
            } else {
                message.to_string()
            },
        ),
    }
}

/// The state of index `index` of a Job, from the Job's status and the index's pods (newest
/// first). The status wins for finished indexes (their pods may be gone); a Job past its
/// deadline has every unfinished index at its time limit; an index without a pod waits.
pub fn index_state(job: &JobView, index: u32, pods: &[&Pod]) -> ExecState {
    if job.completed.contains(index) {
        return ExecState::Exited {
            code: Some(0),
            signal: None,
        };
    }
    let pod = current_pod(pods).map(pod_state);
    if job.failed.contains(index) {
        return match pod {
            Some(state @ (ExecState::Exited { .. } | ExecState::Failed { .. })) => state,
            _ => ExecState::Failed {
                reason: ExecFailure::Other,
                message: format!("index {index} of Kubernetes Job {} failed", job.name),
            },
        };
    }
    if job.deadline_exceeded {
        return ExecState::Failed {
            reason: ExecFailure::TimeLimit,
            message: format!(
                "Kubernetes Job {} ran past spec.executor.kubernetes.activeDeadline",
                job.name
            ),
        };
    }
    match pod {
        Some(state) => state,
        None if job.finished => ExecState::Failed {
            reason: ExecFailure::Other,
            message: format!(
                "Kubernetes Job {} ended without running index {index}{}",
                job.name,
                job.failure
                    .as_deref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            ),
        },
        None => ExecState::Queued,
    }
}

/// Jobs by name.
pub fn views(jobs: &[Job]) -> BTreeMap<String, JobView> {
    jobs.iter()
        .filter_map(JobView::of)
        .map(|v| (v.name.clone(), v))
        .collect()
}
