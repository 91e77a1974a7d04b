//! Storage keys of the storage layout (docs/job-spec.md), built in one place so that every component agrees on them and no
//! key can escape the job's prefix: job ids are checked before they become keys.

use crate::model::TaskKind;

/// Checks that a job id is safe as a key segment (`[a-z0-9-]`, no dots or slashes).
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub fn job_prefix(job: &str) -> String {
    format!("jobs/{job}/")
}
pub fn job_manifest(job: &str) -> String {
    format!("jobs/{job}/job.json")
}
pub fn batches(job: &str) -> String {
    format!("jobs/{job}/batches.jsonl")
}
pub fn task_name(task: u32) -> String {
    format!("{task:06}")
}
pub fn attempt_prefix(job: &str, task: u32, attempt: u32) -> String {
    format!("jobs/{job}/results/{}/{attempt}/", task_name(task))
}
/// The result files of a task attempt, as its `_DONE` (and committed task row) name them.
pub const PART_FILE: &str = "part.parquet";
pub const ERRORS_FILE: &str = "errors.parquet";

pub fn part(job: &str, task: u32, attempt: u32) -> String {
    format!("{}{PART_FILE}", attempt_prefix(job, task, attempt))
}
pub fn errors(job: &str, task: u32, attempt: u32) -> String {
    format!("{}{ERRORS_FILE}", attempt_prefix(job, task, attempt))
}
pub fn done(job: &str, task: u32, attempt: u32) -> String {
    format!("{}_DONE", attempt_prefix(job, task, attempt))
}
pub fn checkpoint(job: &str, task: u32) -> String {
    format!("jobs/{job}/checkpoints/{}.sqlite", task_name(task))
}
/// The checkpoint of an item-level redrive of `task` that carries `from_attempt` over: a new
/// file per redrive, so it starts empty and resumes only the redrive's own items.
pub fn redrive_checkpoint(job: &str, task: u32, from_attempt: u32) -> String {
    format!(
        "jobs/{job}/checkpoints/{}.redrive-{from_attempt}.sqlite",
        task_name(task)
    )
}
/// The file name of one attempt's log, wherever the executor keeps it.
pub fn task_log_name(kind: TaskKind, task: u32, attempt: u32) -> String {
    match kind {
        TaskKind::Work => format!("{}.{attempt}.log", task_name(task)),
        TaskKind::Merge { level } => format!("merge-{level}-{}.{attempt}.log", task_name(task)),
        TaskKind::Final => format!("merge-final.{attempt}.log"),
    }
}
/// The job's task logs in its storage.
pub fn task_logs(job: &str) -> String {
    format!("jobs/{job}/logs")
}
/// One attempt's log in the job's storage, as one file (the local executor writes it there on
/// directory storage).
pub fn task_log(job: &str, kind: TaskKind, task: u32, attempt: u32) -> String {
    format!("{}/{}", task_logs(job), task_log_name(kind, task, attempt))
}
/// The parts of one attempt's log its worker stored itself, in order of their keys.
pub fn task_log_parts(job: &str, kind: TaskKind, task: u32, attempt: u32) -> String {
    format!("{}.parts/", task_log(job, kind, task, attempt))
}
pub fn task_log_part(job: &str, kind: TaskKind, task: u32, attempt: u32, part: u32) -> String {
    format!("{}{part:06}.log", task_log_parts(job, kind, task, attempt))
}
/// Working directory of the hierarchical merge: `<level>/<group>/` per merge group.
pub fn aggregate_dir(job: &str) -> String {
    format!("jobs/{job}/aggregate")
}
/// What the aggregation tasks merge, written by the coordinator before it starts them.
pub fn aggregate_plan(job: &str) -> String {
    format!("jobs/{job}/aggregate/plan.json")
}
/// Written by the final merge once the output files are complete; `_SUCCESS` is built from it.
pub fn aggregate_final(job: &str) -> String {
    format!("jobs/{job}/aggregate/final.json")
}
pub fn state_db() -> &'static str {
    "state.sqlite"
}
/// The rate-limit buckets of an embedded storage directory (every job on it shares them).
pub fn rate_limits_db() -> &'static str {
    "ratelimits.sqlite"
}
/// The operator's audit log of an embedded storage directory.
pub fn audit_db() -> &'static str {
    "audit.sqlite"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        assert_eq!(part("j-1", 7, 2), "jobs/j-1/results/000007/2/part.parquet");
        assert_eq!(done("j-1", 7, 2), "jobs/j-1/results/000007/2/_DONE");
        assert_eq!(checkpoint("j-1", 7), "jobs/j-1/checkpoints/000007.sqlite");
        assert!(valid_job_id("enrich-reviews-1a2b3c4d"));
        assert!(!valid_job_id("../etc"));
        assert!(!valid_job_id("a/b"));
        assert!(!valid_job_id(""));
    }
}
