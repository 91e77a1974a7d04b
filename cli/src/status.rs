//! `orch status`: what a job is doing or did — tasks by state, items ok and failed, errors by
//! kind, where the output is — as a table for people or JSON for scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use orch_core::history::{AttemptCounts, AttemptRecord};
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
    /// One task of the job: its row and every attempt it had.
    #[arg(long, value_name = "N")]
    pub task: Option<u32>,
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
    /// Every attempt of every task (the attempt history), by outcome.
    attempts: AttemptCounts,
    /// What failed for good, and the commands that run it again.
    dead_letter: DeadLetter,
    output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<Verification>,
}

/// Work that will not be tried again on its own: tasks out of attempts and failed items.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeadLetter {
    tasks: Vec<DeadTask>,
    /// Runs the failed tasks again, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_tasks: Option<String>,
    /// Failed items by error kind, each with the command that runs them again.
    items: Vec<DeadItems>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadTask {
    task: u32,
    attempts: u32,
    error: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadItems {
    kind: String,
    items: u64,
    retry: String,
}

/// `orch status JOB --task N`: one task's row and its attempts.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskReport {
    job: String,
    task: TaskRecord,
    attempts: Vec<AttemptRecord>,
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
    let (id, storage) = resolve(args.job.as_deref(), args.storage.clone())?;
    let rt = crate::runtime()?;
    let (root, backends) = open_stores(&rt, storage, &hint)?;
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
        return Err(no_job(&id, &root, &hint));
    };
    if let Some(n) = args.task {
        let last = tasks.iter().map(|t| t.id).max().unwrap_or(0);
        let Some(task) = tasks.into_iter().find(|t| t.id == n) else {
            return Err(Failure::usage(format!(
                "job {id} has no task {n} (its tasks are 0 to {last})"
            )));
        };
        let attempts = rt
            .block_on(orch_runtime::history::attempts(
                backends.state.as_ref(),
                &id,
                Some(n),
                std::slice::from_ref(&task),
            ))
            .map_err(orch_runtime::Error::from)?;
        let report = TaskReport {
            job: id,
            task,
            attempts,
        };
        match args.output {
            Format::Json => print_json(&report)?,
            Format::Table => print_task(&report),
        }
        return Ok(0);
    }
    let retry_target = retry_target(&args, &id);
    let mut report = rt.block_on(report(&backends, &job, &tasks, &retry_target));
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
        Format::Json => print_json(&report)?,
        Format::Table => print_table(&report),
    }
    // A script checking results wants a failing exit code when something is wrong.
    let broken = report
        .results
        .as_ref()
        .is_some_and(|v| !v.problems.is_empty());
    Ok(if broken { 1 } else { 0 })
}

fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure {
        code: 1,
        message: e.to_string(),
    })?;
    println!("{text}");
    Ok(())
}

/// What `orch retry` is given in the hints: the job as the user named it (a file resolves
/// again the same way), and the storage when they gave one.
fn retry_target(args: &StatusArgs, id: &str) -> String {
    let job = args.job.as_deref().unwrap_or(id);
    match &args.storage {
        Some(storage) => format!("{} --storage {}", shell_word(job), shell_word(storage)),
        None => shell_word(job),
    }
}

/// `word` as one shell word: quoted when it holds anything but plain path characters.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A job file resolves to its job id (same rule as `orch run`); anything else is an id.
/// The stores of `storage` (default `./.orch`) and where they are.
pub(crate) fn open_stores(
    rt: &tokio::runtime::Runtime,
    storage: Option<String>,
    hint: &str,
) -> Result<(Location, Backends), Failure> {
    let storage = storage.unwrap_or_else(|| orch_connect::DEFAULT_STORAGE.into());
    let root = Location::parse(&storage, &std::env::current_dir().unwrap_or_default())
        .map_err(Failure::usage)?;
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
    Ok((root, backends))
}

/// Where the local logs of jobs on `root` are, each job under its id: for S3 storage, where
/// `orch run` here had its workers write them; a directory storage holds its own.
pub(crate) fn local_log_dir(root: &Location) -> Option<PathBuf> {
    matches!(root, Location::S3 { .. }).then(orch_connect::local_log_root)
}

/// No job `id` in the stores at `root`.
pub(crate) fn no_job(id: &str, root: &Location, hint: &str) -> Failure {
    Failure::usage(format!(
        "no job `{id}` in {} (a job is identified by its file and its input: if the input \
         changed since the run, `orch status` without arguments lists every job){hint}",
        crate::run::display_uri(&root.to_uri())
    ))
}

/// The job id `job` names (a job file, or an id) and the storage to read it from: `storage`,
/// else the job file's `storage.uri`.
pub(crate) fn resolve(
    job: Option<&str>,
    storage: Option<String>,
) -> Result<(Option<String>, Option<String>), Failure> {
    let Some(arg) = job else {
        return Ok((None, storage));
    };
    let path = PathBuf::from(arg);
    if path.is_file() {
        let job = orch_core::load::load(&path)?;
        let storage = storage.or(job.file.spec.storage.uri.clone());
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
    Ok((Some(arg.to_string()), storage))
}

/// Without a cluster flag `orch status NAME` reads the local stores, so a NAME that is no
/// local job may well be an OrchJob: the errors say how to ask the cluster. Only for an
/// argument that is no file and could be an OrchJob name.
pub(crate) fn cluster_hint(arg: Option<&str>) -> String {
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

/// A task's last error as `orch status` shows it: `kind: message`.
fn last_error(t: &TaskRecord) -> String {
    t.last_error
        .as_ref()
        .map(|e| format!("{}: {}", e.kind.as_str(), e.message))
        .unwrap_or_default()
}

async fn report(
    backends: &Backends,
    job: &JobRecord,
    tasks: &[TaskRecord],
    retry_target: &str,
) -> Report {
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
            error: last_error(t),
        })
        .collect();
    // Best effort like the history itself: a status without counts beats no status.
    let attempts = match orch_runtime::history::attempts(
        backends.state.as_ref(),
        &job.id,
        None,
        tasks,
    )
    .await
    {
        Ok(records) => AttemptCounts::of(&records),
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "cannot read the attempt history");
            AttemptCounts::default()
        }
    };
    let dead_tasks: Vec<DeadTask> = tasks
        .iter()
        .filter(|t| t.kind.is_work() && t.state == TaskState::Failed)
        .map(|t| DeadTask {
            task: t.id,
            attempts: t.attempt,
            error: last_error(t),
        })
        .collect();
    let dead_letter = DeadLetter {
        retry_tasks: (!dead_tasks.is_empty()).then(|| format!("orch retry {retry_target}")),
        tasks: dead_tasks,
        items: errors_by_kind
            .iter()
            .map(|(kind, items)| DeadItems {
                kind: kind.clone(),
                items: *items,
                retry: format!(
                    "orch retry {retry_target} --items --kind {}",
                    shell_word(kind)
                ),
            })
            .collect(),
    };
    Report {
        attempts,
        dead_letter,
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
    let a = &r.attempts;
    if a.total > 0 {
        let mut parts = vec![format!("{} total", a.total)];
        for (n, what) in [
            (a.succeeded, "succeeded"),
            (a.running, "running"),
            (a.lost, "lost"),
            (a.failed, "failed"),
            (a.interrupted, "interrupted"),
            (a.cancelled, "cancelled"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        println!("attempts  {}", parts.join(", "));
    }
    let dl = &r.dead_letter;
    if !dl.tasks.is_empty() || !dl.items.is_empty() {
        println!("dead-lettered");
        for t in dl.tasks.iter().take(10) {
            println!(
                "  task {} failed after {} attempt(s): {}",
                t.task, t.attempts, t.error
            );
        }
        if dl.tasks.len() > 10 {
            println!("  … and {} more task(s)", dl.tasks.len() - 10);
        }
        if let Some(cmd) = &dl.retry_tasks {
            println!("  run the failed tasks again: {cmd}");
        }
        for i in &dl.items {
            println!(
                "  {} failed item(s) of kind {}: {}",
                i.items, i.kind, i.retry
            );
        }
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

fn print_task(r: &TaskReport) {
    let t = &r.task;
    println!("job       {}", r.job);
    println!("task      {} ({})", t.id, t.kind);
    println!("state     {}", t.state);
    println!(
        "attempt   {} ({} counted against retry.maxAttempts)",
        t.attempt,
        t.counted_attempts()
    );
    println!(
        "items     {} total, {} ok, {} failed",
        t.items, t.items_ok, t.items_failed
    );
    if let Some(e) = &t.last_error {
        println!(
            "error     {}: {} (attempt {})",
            e.kind.as_str(),
            e.message,
            e.attempt
        );
    }
    if r.attempts.is_empty() {
        println!("attempts  none recorded");
        return;
    }
    let rows: Vec<[String; 9]> = r.attempts.iter().map(attempt_row).collect();
    let header = [
        "ATTEMPT", "STARTED", "DURATION", "NODE", "EXECUTOR", "OUTCOME", "EXIT", "ITEMS", "ERROR",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 9]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == cells.len() - 1 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    println!();
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
}

/// One line of the attempts table; `-` for what is not known.
fn attempt_row(a: &AttemptRecord) -> [String; 9] {
    let dash = || "-".to_string();
    [
        a.attempt.to_string(),
        a.started_at.map(render_time).unwrap_or_else(dash),
        a.duration_ms()
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(dash),
        a.node.clone().unwrap_or_else(dash),
        a.executor_id.clone().unwrap_or_else(dash),
        a.outcome.to_string(),
        match (a.exit_code, a.signal) {
            (_, Some(sig)) => format!("signal {sig}"),
            (Some(code), None) => format!("code {code}"),
            (None, None) => dash(),
        },
        format!("{} ok, {} failed", a.items_ok, a.items_failed),
        a.error
            .as_ref()
            .map(|e| format!("{}: {}", e.kind.as_str(), e.message))
            .unwrap_or_else(dash),
    ]
}

/// Milliseconds since the epoch as UTC RFC 3339, to the second.
fn render_time(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::{cluster_hint, render_time, shell_word};

    #[test]
    fn times_are_utc_and_words_quoted_for_the_shell() {
        assert_eq!(render_time(1_709_210_096_789), "2024-02-29T12:34:56Z");
        assert_eq!(shell_word("jobs/a.yaml"), "jobs/a.yaml");
        assert_eq!(shell_word("my job.yaml"), "'my job.yaml'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

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
