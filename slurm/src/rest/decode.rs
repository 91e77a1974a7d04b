//! slurmrestd's answers turned into orch's types: the partitions of a cluster, and the arrays
//! of a job with one task per index, whatever the API version (docs/slurm.md, "States").

use std::collections::BTreeMap;

use tracing::warn;

use super::wire::{PartitionsResponse, RawExit, RawJob, RawNum, RawStates};
use crate::api::{ArrayJob, ArrayTask, MAX_ARRAY_INDEX, PartitionInfo};

/// Slurm's `NO_VAL`: a number that is not set.
const NO_VAL: i64 = 0xffff_fffe;

/// The partitions and their time limits. v0.0.40+ partitions carry no flags, so no partition
/// is known to be the default one there (the time-limit check then needs
/// `spec.resources.partition`).
pub(super) fn partitions(answer: &PartitionsResponse) -> Vec<PartitionInfo> {
    answer
        .partitions
        .iter()
        .filter_map(|p| {
            let name = p.name.clone().filter(|n| !n.is_empty())?;
            let time = p
                .maximums
                .as_ref()
                .and_then(|m| m.time.as_ref())
                .or(p.max_time_limit.as_ref());
            let max_time_minutes = match time {
                Some(t) if t.infinite() => None,
                Some(t) => t
                    .value()
                    .filter(|m| (0..NO_VAL).contains(m))
                    .and_then(|m| u64::try_from(m).ok()),
                None => None,
            };
            Some(PartitionInfo {
                name,
                max_time_minutes,
                default: p.flags.iter().any(|f| f.eq_ignore_ascii_case("default")),
            })
        })
        .collect()
}

/// Base job states; anything else in a v0.0.40+ state list is a flag.
const BASE_STATES: [&str; 12] = [
    "PENDING",
    "RUNNING",
    "SUSPENDED",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
];

/// The state of a record: the string (v0.0.38) or the first base state in the list.
fn job_state(states: Option<&RawStates>) -> String {
    let list = states.map(RawStates::list).unwrap_or_default();
    let upper: Vec<String> = list.iter().map(|s| s.trim().to_ascii_uppercase()).collect();
    upper
        .iter()
        .find(|s| BASE_STATES.contains(&s.as_str()))
        .or(upper.first())
        .cloned()
        .unwrap_or_else(|| "UNKNOWN".to_string())
}

/// States in which a task has not ended (its exit code means nothing yet).
fn not_ended(state: &str) -> bool {
    matches!(
        state.split([' ', '+']).next().unwrap_or_default(),
        "PENDING"
            | "RUNNING"
            | "SUSPENDED"
            | "CONFIGURING"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESV_DEL_HOLD"
            | "POWER_UP_NODE"
            | "SIGNALING"
            | "STOPPED"
            | "RESIZING"
    )
}

/// Array indices Slurm's task string names (`3-9%2`, `1,3,5-7`, `0-30:10`); `true` when
/// Slurm cut it short (`...`), in which case indices past the cut are missing.
pub(crate) fn expand_task_string(s: &str) -> (Vec<u32>, bool) {
    let s = s.split('%').next().unwrap_or_default().trim();
    let truncated = s.ends_with("...");
    let s = s.trim_end_matches('.');
    let mut tokens: Vec<&str> = s
        .split(',')
        .map(|t| t.trim().trim_start_matches('[').trim_end_matches(']'))
        .filter(|t| !t.is_empty())
        .collect();
    if truncated {
        // The last token may itself be cut (`12-1` of `12-15`).
        tokens.pop();
    }
    let mut out = Vec::new();
    for token in tokens {
        let (range, step) = match token.split_once(':') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)),
            None => (token, Some(1)),
        };
        let Some(step) = step else { continue };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (range.parse::<u32>(), range.parse::<u32>()),
        };
        let (Ok(first), Ok(last)) = (first, last) else {
            continue;
        };
        if last < first || last > MAX_ARRAY_INDEX {
            continue;
        }
        // Repeated ranges could still add up past any array: the rest is not expanded.
        let room = (MAX_ARRAY_INDEX as usize + 1).saturating_sub(out.len());
        out.extend((first..=last).step_by(step as usize).take(room));
    }
    (out, truncated)
}

/// The arrays named `name` in a jobs listing: records grouped by `array_job_id`, a record
/// with `array_task_id` being one task, a still-collapsed pending record expanded to one task
/// per index of its `array_task_string`. Slurm's library in slurmrestd shortens that string
/// to 64 characters (`0,3,7,...`) unless slurmrestd runs with `SLURM_BITSTR_LEN=0`; indices past
/// the cut are then not reported (a warning says so). Arrays orch submits are mostly contiguous
/// ranges (`0-999`), which never get cut.
pub(super) fn arrays_from_jobs(name: &str, jobs: &[RawJob]) -> Vec<ArrayJob> {
    struct Building {
        comment: String,
        tasks: BTreeMap<u32, (bool, ArrayTask)>,
    }
    let mut arrays: BTreeMap<u64, Building> = BTreeMap::new();
    for job in jobs {
        if job.name.as_deref() != Some(name) {
            continue;
        }
        let Some(array_id) = job
            .array_job_id
            .as_ref()
            .and_then(RawNum::value)
            .filter(|id| *id > 0 && *id < NO_VAL)
            .and_then(|id| u64::try_from(id).ok())
        else {
            continue;
        };
        let state = job_state(job.job_state.as_ref());
        let (exit_code, signal) = if not_ended(&state) {
            (None, None)
        } else {
            job.exit_code
                .as_ref()
                .map(RawExit::decode)
                .unwrap_or_default()
        };
        let reason = job
            .state_reason
            .clone()
            .filter(|r| !r.is_empty() && r != "None");
        let task = |index: u32| ArrayTask {
            index,
            state: state.clone(),
            exit_code,
            signal,
            reason: reason.clone(),
        };
        let building = arrays.entry(array_id).or_insert_with(|| Building {
            comment: String::new(),
            tasks: BTreeMap::new(),
        });
        if building.comment.is_empty()
            && let Some(c) = job.comment.as_deref()
        {
            building.comment = c.to_string();
        }
        let task_id = job
            .array_task_id
            .as_ref()
            .and_then(RawNum::value)
            .filter(|i| (0..NO_VAL).contains(i))
            .and_then(|i| u32::try_from(i).ok());
        if let Some(index) = task_id {
            building.tasks.insert(index, (true, task(index)));
        } else if let Some(s) = job.array_task_string.as_deref().filter(|s| !s.is_empty()) {
            let (indices, truncated) = expand_task_string(s);
            if truncated {
                warn!(
                    array = array_id,
                    tasks = s,
                    "slurmrestd cut the list of pending array tasks short; tasks past the cut are \
                     not reported (run slurmrestd with SLURM_BITSTR_LEN=0 to get the whole list)"
                );
            }
            for index in indices {
                building
                    .tasks
                    .entry(index)
                    .or_insert_with(|| (false, task(index)));
            }
        }
    }
    arrays
        .into_iter()
        .map(|(array_job_id, b)| ArrayJob {
            array_job_id,
            name: name.to_string(),
            comment: b.comment,
            tasks: b.tasks.into_values().map(|(_, t)| t).collect(),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use orch_core::ErrorCategory;
    use reqwest::StatusCode;

    use super::super::interpret::{HOLD_IGNORED, interpret, kill_failures};
    use super::super::test_support::{REFUSED, fixture};
    use super::super::wire::{
        Generic, JobPostResponse, JobsResponse, KillJobsResponse, RawPostResult, SubmitResponse,
        wait_status,
    };
    use super::*;

    #[test]
    fn v0_0_38_answers_recorded_from_slurm_22_05() {
        let answer: PartitionsResponse =
            serde_json::from_str(&fixture("v0.0.38", "rest_partitions.json")).unwrap();
        assert_eq!(
            partitions(&answer),
            [
                PartitionInfo {
                    name: "debug".into(),
                    max_time_minutes: Some(30),
                    default: true
                },
                PartitionInfo {
                    name: "short".into(),
                    max_time_minutes: Some(5),
                    default: false
                },
            ]
        );
        let answer: SubmitResponse =
            serde_json::from_str(&fixture("v0.0.38", "rest_job_submit.json")).unwrap();
        assert_eq!(answer.job_id.and_then(|n| n.value()), Some(31));

        let jobs: JobsResponse =
            serde_json::from_str(&fixture("v0.0.38", "rest_jobs.json")).unwrap();
        let arrays = arrays_from_jobs("reviews-1a2b", &jobs.jobs);
        assert_eq!(arrays.len(), 2);
        let done = &arrays[0];
        assert_eq!(done.array_job_id, 31);
        assert_eq!(done.comment, "orch:work:g0:b0:0123456789ab");
        let summary: Vec<(u32, &str, Option<i32>, Option<i32>)> = done
            .tasks
            .iter()
            .map(|t| (t.index, t.state.as_str(), t.exit_code, t.signal))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "COMPLETED", Some(0), None),
                (1, "FAILED", Some(1), None),
                (2, "COMPLETED", Some(0), None),
                (3, "FAILED", Some(1), None),
                (4, "COMPLETED", Some(0), None),
                (5, "FAILED", None, Some(15)),
            ]
        );
        assert_eq!(done.tasks[1].reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(done.tasks[0].reason, None);
        let mixed = &arrays[1];
        assert_eq!(mixed.array_job_id, 53);
        let summary: Vec<(u32, &str)> = mixed
            .tasks
            .iter()
            .map(|t| (t.index, t.state.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "RUNNING"),
                (1, "PENDING"),
                (2, "PENDING"),
                (3, "PENDING"),
                (7, "PENDING"),
                (9, "PENDING"),
                (10, "PENDING"),
                (11, "PENDING"),
                (12, "PENDING"),
            ]
        );
        assert!(mixed.tasks.iter().all(|t| t.exit_code.is_none()));
        assert_eq!(mixed.tasks[1].reason.as_deref(), Some("Resources"));
        assert!(arrays_from_jobs("nobody", &jobs.jobs).is_empty());
    }

    /// The recordings of `tests/slurm/README.md` (another test's arrays, same cluster).
    #[test]
    fn v0_0_38_answers_recorded_for_the_cli_and_rest_demos() {
        let summary = |a: &ArrayJob| -> Vec<(u32, String, Option<i32>, Option<i32>)> {
            a.tasks
                .iter()
                .map(|t| (t.index, t.state.clone(), t.exit_code, t.signal))
                .collect()
        };
        let s = |state: &str| state.to_string();
        let jobs: JobsResponse =
            serde_json::from_str(&fixture("v0.0.38", "jobs_array.json")).unwrap();
        let rest = arrays_from_jobs("orch-rest-demo", &jobs.jobs);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].comment, "orch run=rest-demo batch=0");
        assert_eq!(
            summary(&rest[0]),
            [
                (0, s("COMPLETED"), Some(0), None),
                (1, s("FAILED"), Some(3), None),
                (2, s("RUNNING"), None, None),
                (3, s("PENDING"), None, None),
                (4, s("PENDING"), None, None),
                (5, s("PENDING"), None, None),
            ]
        );
        // A whole pending array cancelled leaves one CANCELLED record for the rest.
        let demo = arrays_from_jobs("orch-demo", &jobs.jobs);
        assert_eq!(demo.len(), 2);
        assert_eq!(demo[0].tasks.len(), 10);
        assert!(demo[0].tasks[2..].iter().all(|t| t.state == "CANCELLED"));
        assert_eq!(demo[1].tasks.len(), 9);
        assert_eq!(demo[1].tasks[7].exit_code, Some(3));
        let canc = arrays_from_jobs("canc", &jobs.jobs);
        let indices: Vec<u32> = canc[0].tasks.iter().map(|t| t.index).collect();
        assert_eq!(indices, [0, 1, 2, 3, 5]);
        assert_eq!(canc[0].tasks[0].signal, Some(15));
        assert!(
            arrays_from_jobs("oom", &jobs.jobs).is_empty(),
            "not an array"
        );

        let jobs: JobsResponse =
            serde_json::from_str(&fixture("v0.0.38", "job_array_cancelled.json")).unwrap();
        let cli = arrays_from_jobs("orch-cli-demo", &jobs.jobs);
        assert_eq!(
            summary(&cli[0]),
            [
                (0, s("COMPLETED"), Some(0), None),
                (1, s("FAILED"), Some(3), None),
                (2, s("CANCELLED"), None, Some(15)),
                (3, s("RUNNING"), None, None),
                (4, s("RUNNING"), None, None),
                (5, s("PENDING"), None, None),
                (7, s("PENDING"), None, None),
            ],
            "task 6, cancelled while pending, is gone"
        );

        let parts: PartitionsResponse =
            serde_json::from_str(&fixture("v0.0.38", "partitions.json")).unwrap();
        assert_eq!(partitions(&parts).len(), 2);
        // Queued although slurmctld says it may wait: the job id counts.
        let queued = interpret::<SubmitResponse>(
            "submit",
            StatusCode::OK,
            fixture("v0.0.38", "job_submit_partition_time_limit.json").as_bytes(),
            &REFUSED,
        )
        .unwrap();
        assert_eq!(queued.job_id.and_then(|n| n.value()), Some(27));
        let e = interpret::<SubmitResponse>(
            "submit",
            StatusCode::BAD_REQUEST,
            fixture("v0.0.38", "job_submit_error_environment.json").as_bytes(),
            &REFUSED,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
        assert!(e.to_string().contains("environment must be set"), "{e}");
        interpret::<Generic>(
            "cancel",
            StatusCode::OK,
            fixture("v0.0.38", "job_delete_response.json").as_bytes(),
            &REFUSED,
        )
        .unwrap();
    }

    #[test]
    fn v0_0_40_and_v0_0_41_answers_written_from_the_schema() {
        for version in ["v0.0.40", "v0.0.41"] {
            let answer: PartitionsResponse =
                serde_json::from_str(&fixture(version, "partitions.json")).unwrap();
            let parts = partitions(&answer);
            let summary: Vec<(&str, Option<u64>, bool)> = parts
                .iter()
                .map(|p| (p.name.as_str(), p.max_time_minutes, p.default))
                .collect();
            assert_eq!(
                summary,
                [
                    ("debug", Some(30), false),
                    ("short", Some(5), false),
                    ("long", None, false)
                ],
                "{version}"
            );
            let answer: SubmitResponse =
                serde_json::from_str(&fixture(version, "job_submit.json")).unwrap();
            assert_eq!(answer.job_id.and_then(|n| n.value()), Some(160));

            let jobs: JobsResponse = serde_json::from_str(&fixture(version, "jobs.json")).unwrap();
            assert_eq!(
                jobs.last_update.as_ref().and_then(RawNum::value),
                Some(1735725641)
            );
            let arrays = arrays_from_jobs("reviews-1a2b", &jobs.jobs);
            let ids: Vec<u64> = arrays.iter().map(|a| a.array_job_id).collect();
            assert_eq!(
                ids,
                [120, 130],
                "{version}: the non-array job is not an array"
            );
            let first: Vec<(u32, &str, Option<i32>, Option<i32>)> = arrays[0]
                .tasks
                .iter()
                .map(|t| (t.index, t.state.as_str(), t.exit_code, t.signal))
                .collect();
            assert_eq!(
                first,
                [
                    (0, "COMPLETED", Some(0), None),
                    (1, "FAILED", Some(1), None),
                    (2, "CANCELLED", None, Some(9)),
                    (3, "RUNNING", None, None),
                    (4, "PENDING", None, None),
                    (5, "PENDING", None, None),
                    (6, "PENDING", None, None),
                    (7, "PENDING", None, None),
                    (8, "PENDING", None, None),
                    (9, "PENDING", None, None),
                ],
                "{version}"
            );
            assert_eq!(
                arrays[0].tasks[4].reason.as_deref(),
                Some("JobArrayTaskLimit")
            );
            let second: Vec<(u32, &str, Option<i32>)> = arrays[1]
                .tasks
                .iter()
                .map(|t| (t.index, t.state.as_str(), t.exit_code))
                .collect();
            assert_eq!(
                second,
                [(0, "COMPLETED", Some(0)), (1, "OUT_OF_MEMORY", Some(137))]
            );

            let unchanged: JobsResponse =
                serde_json::from_str(&fixture(version, "jobs_unchanged.json")).unwrap();
            assert!(unchanged.jobs.is_empty());
            assert!(
                unchanged.warnings[0]
                    .text()
                    .to_ascii_lowercase()
                    .contains("no job changes")
            );

            let kill: KillJobsResponse =
                serde_json::from_str(&fixture(version, "kill_jobs.json")).unwrap();
            let e = kill_failures(&kill).unwrap_err().to_string();
            assert!(
                e.contains("120_5") && e.contains("2002") && !e.contains("120_0"),
                "{e}"
            );

            let refused = interpret::<SubmitResponse>(
                "submit",
                StatusCode::INTERNAL_SERVER_ERROR,
                fixture(version, "job_submit_error.json").as_bytes(),
                &REFUSED,
            )
            .unwrap_err();
            assert_eq!(refused.category(), ErrorCategory::Permanent, "{refused}");
            assert!(
                refused.to_string().contains("Invalid partition"),
                "{refused}"
            );

            let update: JobPostResponse =
                serde_json::from_str(&fixture(version, "job_update.json")).unwrap();
            assert!(
                update
                    .results
                    .iter()
                    .filter_map(RawPostResult::code)
                    .all(|c| HOLD_IGNORED.contains(&c))
            );
        }
    }

    #[test]
    fn repeated_task_ranges_expand_to_no_more_than_an_array_can_hold() {
        let repeated = vec!["0-4000000"; 300].join(",");
        let (indices, truncated) = expand_task_string(&repeated);
        assert_eq!(indices.len(), MAX_ARRAY_INDEX as usize + 1);
        assert!(!truncated);
        assert_eq!(expand_task_string("0-4000001").0, Vec::<u32>::new());
    }

    #[test]
    fn task_strings_and_wait_statuses() {
        assert_eq!(expand_task_string("3-9%2"), ((3..=9).collect(), false));
        assert_eq!(expand_task_string("1,3,5-7"), (vec![1, 3, 5, 6, 7], false));
        assert_eq!(expand_task_string("0-30:10"), (vec![0, 10, 20, 30], false));
        assert_eq!(expand_task_string("[4-5]"), (vec![4, 5], false));
        // Cut by slurmrestd at 64 characters (SLURM_BITSTR_LEN): the partial last entry is dropped.
        let (indices, truncated) =
            expand_task_string("1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31,33,35,37,39,41,...");
        assert!(truncated);
        assert_eq!(indices.last(), Some(&39));
        assert_eq!(wait_status(256), (Some(1), None));
        assert_eq!(wait_status(0), (Some(0), None));
        assert_eq!(wait_status(15), (None, Some(15)));
        assert_eq!(wait_status(0xffff_fffe), (None, None));
        assert_eq!(
            job_state(Some(&RawStates::Many(vec![
                "COMPLETING".into(),
                "COMPLETED".into()
            ]))),
            "COMPLETED"
        );
        assert_eq!(
            job_state(Some(&RawStates::One("pending".into()))),
            "PENDING"
        );
        assert_eq!(job_state(None), "UNKNOWN");
    }
}
