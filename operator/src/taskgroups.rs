//! The `TaskGroup` children of an `OrchJob`: one per executor submission (a Slurm array, an
//! Indexed Job), built from the job's task rows, owned by the `OrchJob` so that deleting the
//! job deletes them. Pure, so the shapes are tested without a cluster.
//!
//! A task belongs to the group of its current attempt: a task retried in a later submission
//! leaves its first group, whose counts then shrink; a group left with no task keeps the
//! object last written.

use std::collections::BTreeMap;

use kube::Resource;
use kube::api::ObjectMeta;
use orch_core::model::TaskRecord;

use crate::status::task_counts;
use orch_crd::{ExecutorRange, OrchJob, TaskGroup, TaskGroupKind, TaskGroupSpec, TaskGroupStatus};

/// Label naming the `OrchJob` a `TaskGroup` belongs to.
pub const JOB_LABEL: &str = "orch.dev/job";

/// Most executor ids listed one by one; longer groups must form a range.
const MAX_LISTED_IDS: usize = 100;

/// The desired `TaskGroup`s of `job` from its tasks, with their statuses.
pub fn desired(job: &OrchJob, tasks: &[TaskRecord]) -> Vec<(TaskGroup, TaskGroupStatus)> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut groups: BTreeMap<u32, Vec<&TaskRecord>> = BTreeMap::new();
    for t in tasks {
        if let Some(g) = t.group {
            groups.entry(g).or_default().push(t);
        }
    }
    let owner = job.controller_owner_ref(&());
    groups
        .into_iter()
        .map(|(group, members)| {
            let ids: Vec<String> = members
                .iter()
                .filter_map(|t| t.executor_id.clone())
                .collect();
            let (executor_ids, executor_range) = executor_ids(ids);
            // A group is dispatched for one stage: its first task says which.
            let stage = members.first().map(|t| t.kind).unwrap_or_default();
            let (kind, word, level) = match stage {
                orch_core::model::TaskKind::Work => (TaskGroupKind::Work, "work", None),
                orch_core::model::TaskKind::Merge { level } => {
                    (TaskGroupKind::Merge, "merge", Some(level))
                }
                orch_core::model::TaskKind::Final => (TaskGroupKind::Final, "final", None),
            };
            let mut tg = TaskGroup::new(
                &object_name(&name, group),
                TaskGroupSpec {
                    job: name.clone(),
                    group: format!("{word}-{group}"),
                    kind,
                    level,
                    tasks: members.len() as u32,
                    executor_ids,
                    executor_range,
                },
            );
            tg.metadata = ObjectMeta {
                name: tg.metadata.name.take(),
                namespace: job.metadata.namespace.clone(),
                labels: Some(
                    [
                        (JOB_LABEL.to_string(), name.clone()),
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            "orch-operator".to_string(),
                        ),
                    ]
                    .into(),
                ),
                owner_references: owner.clone().map(|o| vec![o]),
                ..ObjectMeta::default()
            };
            let status = TaskGroupStatus {
                tasks: Some(task_counts(members.iter().copied())),
                observed_generation: Some(1),
            };
            (tg, status)
        })
        .collect()
}

/// `<job>-g<group>`, within the 253 characters of an object name.
fn object_name(job: &str, group: u32) -> String {
    let suffix = format!("-g{group}");
    let keep = 253 - suffix.len();
    let base: String = job.chars().take(keep).collect();
    format!("{base}{suffix}")
}

/// The ids as a range `<prefix><first>..=<last>` when they are one (a Slurm array), else
/// listed — up to [`MAX_LISTED_IDS`], so the object stays small.
fn executor_ids(mut ids: Vec<String>) -> (Option<Vec<String>>, Option<ExecutorRange>) {
    if ids.is_empty() {
        return (None, None);
    }
    ids.sort_by_key(|id| split_index(id).map(|(_, n)| n));
    let parsed: Option<Vec<(&str, u32)>> = ids.iter().map(|id| split_index(id)).collect();
    if let Some(parsed) = parsed
        && parsed.len() > 1
    {
        let (prefix, first) = parsed[0];
        let contiguous = parsed
            .iter()
            .enumerate()
            .all(|(i, (p, n))| *p == prefix && *n == first + i as u32);
        if contiguous {
            let last = first + parsed.len() as u32 - 1;
            return (
                None,
                Some(ExecutorRange {
                    prefix: prefix.to_string(),
                    first,
                    last,
                }),
            );
        }
    }
    ids.truncate(MAX_LISTED_IDS);
    (Some(ids), None)
}

/// `("slurm:orch:work:g0:b0:ab12:", 17)` for `slurm:orch:work:g0:b0:ab12:17`.
fn split_index(id: &str) -> Option<(&str, u32)> {
    let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let (prefix, n) = id.split_at(id.len() - digits);
    Some((prefix, n.parse().ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use orch_core::model::TaskState;

    fn job() -> OrchJob {
        let spec: orch_crd::OrchJobSpec = serde_json::from_value(serde_json::json!({
            "input": {"uri": "s3://b/in.jsonl"},
            "handler": {"builtin": {"name": "identity"}},
            "batch": {"size": 10},
            "output": {"uri": "s3://b/out/"}
        }))
        .unwrap();
        let mut j = OrchJob::new("reviews", spec);
        j.metadata.namespace = Some("team-a".into());
        j.metadata.uid = Some("1234".into());
        j
    }

    fn task(id: u32, group: u32, state: TaskState, exec: &str) -> TaskRecord {
        TaskRecord {
            state,
            group: Some(group),
            executor_id: Some(exec.into()),
            attempt: 1,
            ..TaskRecord::new("reviews-x", id, 10, 0)
        }
    }

    #[test]
    fn one_group_per_submission_with_a_range_and_counts() {
        let tasks = vec![
            task(0, 0, TaskState::Succeeded, "slurm:orch:work:g0:b0:ab:0"),
            task(1, 0, TaskState::Running, "slurm:orch:work:g0:b0:ab:1"),
            task(2, 0, TaskState::Running, "slurm:orch:work:g0:b0:ab:2"),
            task(3, 1, TaskState::Dispatched, "k8s:reviews-work-g1:0"),
            task(4, 1, TaskState::Dispatched, "k8s:reviews-work-g1:7"),
        ];
        let groups = desired(&job(), &tasks);
        assert_eq!(groups.len(), 2);
        let (g0, s0) = &groups[0];
        assert_eq!(g0.metadata.name.as_deref(), Some("reviews-g0"));
        assert_eq!(g0.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(g0.spec.tasks, 3);
        assert_eq!(
            g0.spec.executor_range,
            Some(ExecutorRange {
                prefix: "slurm:orch:work:g0:b0:ab:".into(),
                first: 0,
                last: 2
            })
        );
        assert_eq!(g0.spec.executor_ids, None);
        let counts = s0.tasks.unwrap();
        assert_eq!((counts.succeeded, counts.running), (1, 2));
        let owner = &g0.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("OrchJob", "1234")
        );
        assert_eq!(owner.controller, Some(true));
        // Not contiguous: listed.
        let (g1, _) = &groups[1];
        assert_eq!(
            g1.spec.executor_ids.as_deref(),
            Some(
                &[
                    "k8s:reviews-work-g1:0".to_string(),
                    "k8s:reviews-work-g1:7".to_string()
                ][..]
            )
        );
        assert_eq!(g1.spec.executor_range, None);
    }

    #[test]
    fn tasks_never_dispatched_make_no_group() {
        let mut t = task(0, 0, TaskState::Pending, "x");
        t.group = None;
        assert!(desired(&job(), &[t]).is_empty());
    }

    #[test]
    fn long_names_are_cut_to_fit() {
        let name = object_name(&"a".repeat(300), 12);
        assert_eq!(name.len(), 253);
        assert!(name.ends_with("-g12"));
    }
}
