//! `orch status`: what a job is doing or did — tasks by state, items ok and failed, errors by
//! kind, where the output is — as a table for people or JSON for scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use orch_core::layout;
use orch_core::model::{JobRecord, TaskRecord, TaskState};
use orch_core::platform::Backends;
use orch_core::uri::Location;
use orch_runtime::aggregate::ResultState;
use orch_runtime::driver;
use serde::Serialize;

use crate::Failure;

#[derive(Args)]
pub struct StatusArgs {
    /// A job file, or a job id; without it, every job in the storage is listed.
    pub job: Option<String>,
    /// Storage directory (default: the job file's `storage.uri`, else ./.orch).
    #[arg(long)]
    pub storage: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Also check every committed task result against its `_DONE` checksums.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    job: String,
    phase: String,
    message: Option<String>,
    /// Work tasks by state.
    tasks: BTreeMap<String, u32>,
    /// Aggregation tasks (merge levels and the final merge) by state, once they exist.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    merge_tasks: BTreeMap<String, u32>,
    items: orch_core::engine::ItemCounts,
    items_total: u64,
    errors_by_kind: BTreeMap<String, u64>,
    /// The most frequent item error messages, most frequent first.
    top_errors: Vec<ErrorCount>,
    failed_tasks: Vec<FailedTask>,
    output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<Verification>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorCount {
    kind: String,
    message: String,
    items: u64,
}

/// How many distinct item error messages `orch status` lists.
const TOP_ERRORS: usize = 5;

/// Result discovery: committed task results checked against their `_DONE` markers.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Verification {
    verified: u32,
    problems: Vec<FailedTask>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedTask {
    task: u32,
    /// What an aggregation task does (`merge level 1`, `final merge`); absent for work.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    attempt: u32,
    /// Attempts that counted against `retry.maxAttempts`: a transient loss (preemption, a
    /// stop after progress, a coordinator restart) is retried without using one up.
    #[serde(skip_serializing_if = "Option::is_none")]
    counted_attempts: Option<u32>,
    state: String,
    error: String,
}

pub fn status(args: StatusArgs) -> Result<u8, Failure> {
    let hint = cluster_hint(args.job.as_deref());
    let (id, storage) = resolve(&args)?;
    let storage = storage.unwrap_or_else(|| orch_connect::DEFAULT_STORAGE.into());
    let root = Location::parse(&storage, &std::env::current_dir().unwrap_or_default())
        .map_err(Failure::usage)?;
    let rt = crate::runtime()?;
    // A directory without state is a mistake (a wrong --storage); opening it would create one.
    if let Location::Local(p) = &root
        && !p.join(layout::state_db()).exists()
    {
        return Err(Failure::usage(format!(
            "no orch state in {} (run a job first, or pass --storage){hint}",
            p.display()
        )));
    }
    let scratch = orch_connect::scratch_dir(&format!("orch-status-{}", std::process::id()));
    let backends = rt
        .block_on(orch_connect::open_backends(&root.to_uri(), scratch))
        .map_err(crate::run::port_failure)?;
    let Some(id) = id else {
        let jobs = rt
            .block_on(async {
                orch_core::backend::StateStore::list_jobs(backends.state.as_ref()).await
            })
            .map_err(orch_runtime::Error::from)?;
        if jobs.is_empty() {
            println!("no jobs");
        }
        for j in jobs {
            println!(
                "{:40} {:12} {} tasks, {} items",
                j.id,
                j.phase.as_str(),
                j.total_tasks,
                j.total_items
            );
        }
        return Ok(0);
    };
    let Some((job, tasks)) = rt.block_on(driver::load_status(&backends, &id))? else {
        return Err(Failure::usage(format!(
            "no job `{id}` in {} (a job is identified by its file and its input: if the input \
             changed since the run, `orch status` without arguments lists every job){hint}",
            crate::run::display_uri(&root.to_uri())
        )));
    };
    let mut report = rt.block_on(report(&backends, &job, &tasks));
    if args.verify {
        let found = rt.block_on(orch_runtime::aggregate::discover_results(
            &backends, &job, &tasks,
        ))?;
        let mut v = Verification {
            verified: 0,
            problems: Vec::new(),
        };
        for f in found {
            let (state, error) = match f.state {
                ResultState::Verified { .. } => {
                    v.verified += 1;
                    continue;
                }
                ResultState::Missing(m) => ("missing", m),
                ResultState::Corrupt(m) => ("corrupt", m),
            };
            v.problems.push(FailedTask {
                kind: None,
                task: f.task,
                attempt: f.attempt,
                counted_attempts: None,
                state: state.into(),
                error,
            });
        }
        report.results = Some(v);
    }
    match args.output {
        Format::Json => {
            let text = serde_json::to_string_pretty(&report).map_err(|e| Failure {
                code: 1,
                message: e.to_string(),
            })?;
            println!("{text}");
        }
        Format::Table => print_table(&report),
    }
    // A script checking results wants a failing exit code when something is wrong.
    let broken = report
        .results
        .as_ref()
        .is_some_and(|v| !v.problems.is_empty());
    Ok(if broken { 1 } else { 0 })
}

/// A job file resolves to its job id (same rule as `orch run`); anything else is an id.
fn resolve(args: &StatusArgs) -> Result<(Option<String>, Option<String>), Failure> {
    let Some(arg) = &args.job else {
        return Ok((None, args.storage.clone()));
    };
    let path = PathBuf::from(arg);
    if path.is_file() {
        let job = orch_core::load::load(&path)?;
        let storage = args.storage.clone().or(job.file.spec.storage.uri.clone());
        let id = crate::runtime()?.block_on(async {
            let locations = crate::run::input_locations(&job).await?;
            let sources = orch_runtime::input::sources(&job.file.spec, locations.as_ref()).await?;
            let fingerprint = orch_runtime::input::fingerprint(&sources)?;
            Ok::<_, Failure>(driver::job_id(&job, &fingerprint)?)
        })?;
        return Ok((Some(id), storage));
    }
    if !layout::valid_job_id(arg) {
        return Err(Failure::usage(format!(
            "`{arg}` is neither a job file nor a job id{}",
            cluster_hint(Some(arg))
        )));
    }
    Ok((Some(arg.clone()), args.storage.clone()))
}

/// Without a cluster flag `orch status NAME` reads the local stores, so a NAME that is no
/// local job may well be an OrchJob: the errors say how to ask the cluster. Only for an
/// argument that is no file and could be an OrchJob name.
fn cluster_hint(arg: Option<&str>) -> String {
    match arg {
        Some(name)
            if !std::path::Path::new(name).exists()
                && orch_core::k8s_name::is_dns_subdomain(name) =>
        {
            format!("; for an OrchJob in the cluster: `orch status oj/{name}`")
        }
        _ => String::new(),
    }
}

async fn report(backends: &Backends, job: &JobRecord, tasks: &[TaskRecord]) -> Report {
    let mut by_state: BTreeMap<String, u32> = TaskState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    let mut merge_tasks: BTreeMap<String, u32> = BTreeMap::new();
    for t in tasks {
        let counts = if t.kind.is_work() {
            &mut by_state
        } else {
            &mut merge_tasks
        };
        *counts.entry(t.state.as_str().into()).or_default() += 1;
    }
    let mut errors_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_message: BTreeMap<(String, String), u64> = BTreeMap::new();
    // Only tasks that report failed items have error rows worth reading (on S3, each file read
    // is a download).
    for t in tasks
        .iter()
        .filter(|t| t.state == TaskState::Succeeded && t.items_failed > 0)
    {
        let key = layout::errors(&job.id, t.id, t.attempt);
        let Ok((path, remote)) = backends.local_file(&key) else {
            continue;
        };
        if remote && !matches!(backends.objects.get_to_file(&key, &path).await, Ok(true)) {
            continue;
        }
        if let Ok(errors) = orch_data::read_errors_parquet(&path) {
            for e in errors {
                *errors_by_kind.entry(e.kind.clone()).or_default() += 1;
                *by_message.entry((e.kind, e.message)).or_default() += 1;
            }
        }
        if remote {
            std::fs::remove_file(&path).ok();
        }
    }
    let failed_tasks = tasks
        .iter()
        .filter(|t| t.last_error.is_some() && t.state != TaskState::Succeeded)
        .map(|t| FailedTask {
            task: t.id,
            kind: (!t.kind.is_work()).then(|| t.kind.to_string()),
            attempt: t.attempt,
            counted_attempts: Some(t.counted_attempts()),
            state: t.state.as_str().into(),
            error: t
                .last_error
                .as_ref()
                .map(|e| format!("{}: {}", e.kind.as_str(), e.message))
                .unwrap_or_default(),
        })
        .collect();
    Report {
        job: job.id.clone(),
        phase: job.phase.as_str().into(),
        message: job.message.clone(),
        tasks: by_state,
        merge_tasks,
        items: orch_core::engine::item_counts(tasks),
        items_total: job.total_items,
        errors_by_kind,
        top_errors: {
            let mut top: Vec<ErrorCount> = by_message
                .into_iter()
                .map(|((kind, message), items)| ErrorCount {
                    kind,
                    message,
                    items,
                })
                .collect();
            top.sort_by_key(|e| std::cmp::Reverse(e.items));
            top.truncate(TOP_ERRORS);
            top
        },
        failed_tasks,
        output: job.spec.spec.output.uri.clone(),
        results: None,
    }
}

fn print_table(r: &Report) {
    println!("job       {}", r.job);
    println!("phase     {}", r.phase);
    if let Some(m) = &r.message {
        println!("message   {m}");
    }
    let tasks: Vec<String> = r
        .tasks
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!("tasks     {}", tasks.join(", "));
    if !r.merge_tasks.is_empty() {
        let merges: Vec<String> = r
            .merge_tasks
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        println!("merging   {}", merges.join(", "));
    }
    println!(
        "items     {} total, {} ok, {} failed",
        r.items_total, r.items.ok, r.items.failed
    );
    if !r.errors_by_kind.is_empty() {
        let kinds: Vec<String> = r
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("errors    {}", kinds.join(", "));
    }
    for e in &r.top_errors {
        println!("  {} items ({}): {}", e.items, e.kind, e.message);
    }
    for t in r.failed_tasks.iter().take(10) {
        let counted = match t.counted_attempts {
            Some(n) if n != t.attempt => format!(", {n} counted"),
            _ => String::new(),
        };
        let kind = t
            .kind
            .as_deref()
            .map(|k| format!("{k}, "))
            .unwrap_or_default();
        println!(
            "  task {} ({kind}{}, attempt {}{counted}): {}",
            t.task, t.state, t.attempt, t.error
        );
    }
    if let Some(v) = &r.results {
        println!(
            "results   {} verified, {} with problems",
            v.verified,
            v.problems.len()
        );
        for p in v.problems.iter().take(20) {
            println!(
                "  task {} attempt {}: {} ({})",
                p.task, p.attempt, p.state, p.error
            );
        }
    }
    if let Some(o) = &r.output {
        println!("output    {}", crate::run::display_uri(o));
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_hint;

    #[test]
    fn a_name_that_could_be_an_orchjob_gets_the_cluster_hint() {
        assert_eq!(
            cluster_hint(Some("reviews")),
            "; for an OrchJob in the cluster: `orch status oj/reviews`"
        );
        assert_eq!(
            cluster_hint(Some("reviews.v2")),
            "; for an OrchJob in the cluster: `orch status oj/reviews.v2`"
        );
        // Not a Kubernetes name, no argument, or an existing path: no hint.
        assert_eq!(cluster_hint(Some("Reviews_1")), "");
        assert_eq!(cluster_hint(None), "");
        assert_eq!(cluster_hint(Some("dir/job.yaml")), "");
        // `cargo test` runs in the crate's directory, which has `src`.
        assert_eq!(cluster_hint(Some("src")), "");
    }
}
