//! `orch logs`: the log of a task's attempts, or the errors of every task, from the job's
//! stores — the same command for a job that ran here or one whose logs are in its storage.
//! Which lines (`--since`, `--tail`) and where a log is live in `orch_runtime::logs`; this
//! module picks the attempts and prints. See docs/observability.md ("Task logs").

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;
use orch_core::history::{AttemptOutcome, AttemptRecord};
use orch_core::model::{TaskKind, TaskRecord};
use orch_core::platform::Backends;
use orch_runtime::logs::{AttemptLog, select_lines};

use crate::Failure;
use crate::status::{cluster_hint, local_log_dir, no_job, open_stores, resolve};

#[derive(Args)]
pub struct LogsArgs {
    /// A job file, or a job id.
    pub job: String,
    /// A task of the job (its number, as `orch status` shows it). Without it: every attempt
    /// that failed or was lost, each with its error and the end of its log.
    pub task: Option<u32>,
    /// Storage directory or URI (default: the job file's `storage.uri`, else ./.orch).
    #[arg(long)]
    pub storage: Option<String>,
    /// Only this attempt of the task (1 is the first).
    #[arg(long, value_name = "N", requires = "task")]
    pub attempt: Option<u32>,
    /// Only the last N lines of each log (without TASK: 10).
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only lines written in the last DURATION (`30s`, `10m`, `2h`), by their timestamps.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Keep printing as the log grows (and the task's next attempts as they start), until the
    /// task has ended; without TASK, each failed attempt as it fails, until the job has ended.
    #[arg(short, long)]
    pub follow: bool,
}

/// How often `--follow` looks again.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Lines of each failed attempt's log shown without TASK, unless `--tail` says otherwise.
const ERROR_TAIL: usize = 10;

/// Where to read logs from, and which lines.
struct Reader {
    backends: Backends,
    job: String,
    local_dir: Option<PathBuf>,
    since: Option<SystemTime>,
    tail: Option<usize>,
}

impl Reader {
    async fn text(&self, log: &AttemptLog) -> Result<Option<String>, Failure> {
        let bytes = log
            .read(
                self.backends.objects.as_ref(),
                &self.job,
                self.local_dir.as_deref(),
            )
            .await?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Prints the selected lines of `log`; returns how much of it there was (for `--follow`).
    async fn print(&self, log: &AttemptLog) -> Result<usize, Failure> {
        let Some(text) = self.text(log).await? else {
            // A successful attempt that logged only routine lines stores no copy.
            eprintln!(
                "(no log stored for task {} attempt {}: none yet, or it succeeded with routine lines only; the executor's log has them)",
                log.task, log.attempt
            );
            return Ok(0);
        };
        let complete = complete_len(&text);
        let mut out = std::io::stdout().lock();
        for line in select_lines(&text[..complete], self.since, self.tail) {
            writeln!(out, "{line}").map_err(stdout_failure)?;
        }
        Ok(complete)
    }

    /// Prints what was added to `log` after its first `from` bytes (complete lines only).
    async fn print_more(&self, log: &AttemptLog, from: usize) -> Result<usize, Failure> {
        let Some(text) = self.text(log).await? else {
            return Ok(from);
        };
        let complete = complete_len(&text);
        if complete <= from || !text.is_char_boundary(from) {
            return Ok(from.max(complete));
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&text.as_bytes()[from..complete])
            .and_then(|()| out.flush())
            .map_err(stdout_failure)?;
        Ok(complete)
    }
}

/// The length of `text` up to its last newline: a line still being written waits for its end.
fn complete_len(text: &str) -> usize {
    text.rfind('\n').map_or(0, |i| i + 1)
}

/// A reader that stopped reading (`orch logs … | head`) ends the command quietly, with success.
fn stdout_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Failure {
            code: 0,
            message: String::new(),
        };
    }
    Failure {
        code: 1,
        message: format!("cannot write to stdout: {e}"),
    }
}

pub fn logs(args: LogsArgs) -> Result<u8, Failure> {
    let hint = cluster_hint(Some(&args.job));
    let (id, storage) = resolve(Some(&args.job), args.storage.clone())?;
    let id = id.unwrap_or_default();
    let rt = crate::runtime()?;
    let (root, backends) = open_stores(&rt, storage, &hint)?;
    let local_dir = local_log_dir(&root).map(|dir| dir.join(&id));
    let since = args.since.map(|d| SystemTime::now() - d);
    rt.block_on(async {
        if backends
            .state
            .get_job(&id)
            .await
            .map_err(runtime_failure)?
            .is_none()
        {
            return Err(no_job(&id, &root, &hint));
        }
        let tail = match args.task {
            Some(_) => args.tail,
            None => Some(args.tail.unwrap_or(ERROR_TAIL)),
        };
        let reader = Reader {
            backends,
            job: id,
            local_dir,
            since,
            tail,
        };
        match args.task {
            Some(task) => task_logs(&reader, task, args.attempt, args.follow).await,
            None => error_logs(&reader, args.follow).await,
        }
    })?;
    Ok(0)
}

fn runtime_failure(e: orch_core::backend::BackendError) -> Failure {
    orch_runtime::Error::from(e).into()
}

async fn task_row(reader: &Reader, task: u32) -> Result<TaskRecord, Failure> {
    let state = reader.backends.state.as_ref();
    if let Some(row) = state
        .get_task(&reader.job, task)
        .await
        .map_err(runtime_failure)?
    {
        return Ok(row);
    }
    let last = state
        .list_tasks(&reader.job)
        .await
        .map_err(runtime_failure)?
        .iter()
        .map(|t| t.id)
        .max()
        .unwrap_or(0);
    Err(Failure::usage(format!(
        "job {} has no task {task} (its tasks are 0 to {last})",
        reader.job
    )))
}

/// The attempts of `row`'s task that have a log or are under way: those in the history, and
/// the row's current one (recorded in the history only once its worker claims it).
async fn attempts_of(reader: &Reader, row: &TaskRecord) -> Result<Vec<u32>, Failure> {
    let mut attempts: Vec<u32> = reader
        .backends
        .state
        .list_attempts(&reader.job, Some(row.id))
        .await
        .map_err(runtime_failure)?
        .iter()
        .map(|a| a.attempt)
        .collect();
    if row.attempt > 0 {
        attempts.push(row.attempt);
    }
    attempts.sort_unstable();
    attempts.dedup();
    Ok(attempts)
}

fn header(task: u32, attempt: u32, what: &str) -> Result<(), Failure> {
    writeln!(
        std::io::stdout().lock(),
        "==> task {task} attempt {attempt}{what} <=="
    )
    .map_err(stdout_failure)
}

async fn task_logs(
    reader: &Reader,
    task: u32,
    only: Option<u32>,
    follow: bool,
) -> Result<(), Failure> {
    let mut row = task_row(reader, task).await?;
    let log_of = |row: &TaskRecord, attempt| AttemptLog {
        kind: row.kind,
        task,
        attempt,
    };
    let attempts = attempts_of(reader, &row).await?;
    let shown: Vec<u32> = match only {
        Some(n) if !attempts.contains(&n) => {
            return Err(Failure::usage(match (attempts.first(), attempts.last()) {
                (Some(first), Some(last)) => {
                    format!("task {task} has no attempt {n} (its attempts are {first} to {last})")
                }
                _ => format!("task {task} has not been attempted yet"),
            }));
        }
        Some(n) => vec![n],
        None => attempts,
    };
    let many = shown.len() > 1 || follow;
    let mut printed = (0, 0);
    for &attempt in &shown {
        if many {
            header(task, attempt, "")?;
        }
        printed = (attempt, reader.print(&log_of(&row, attempt)).await?);
    }
    if !follow {
        return Ok(());
    }
    if shown.is_empty() {
        eprintln!("(task {task} has not started yet: waiting)");
    }
    // Follows the attempt last shown; with no attempt given, the task's next ones too.
    loop {
        let ended = row.state.is_terminal() || only.is_some_and(|n| row.attempt > n);
        if ended {
            // A worker stores the last part of its log just after its commit: one more look.
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
        let (attempt, from) = printed;
        if attempt > 0 {
            printed.1 = reader.print_more(&log_of(&row, attempt), from).await?;
        }
        if ended {
            return Ok(());
        }
        if only.is_none() && row.attempt > attempt {
            header(task, row.attempt, "")?;
            printed = (row.attempt, 0);
            continue;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
        row = task_row(reader, task).await?;
    }
}

/// Without TASK: each failed or lost attempt of the job, its error, the end of its log.
async fn error_logs(reader: &Reader, follow: bool) -> Result<(), Failure> {
    let state = reader.backends.state.as_ref();
    let mut seen = std::collections::HashSet::new();
    loop {
        let job_ended = !follow
            || state
                .get_job(&reader.job)
                .await
                .map_err(runtime_failure)?
                .is_none_or(|j| j.phase.is_terminal());
        let mut failed: Vec<AttemptRecord> = state
            .list_attempts(&reader.job, None)
            .await
            .map_err(runtime_failure)?
            .into_iter()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Failed | AttemptOutcome::Lost))
            .filter(|a| seen.insert((a.task, a.attempt)))
            .collect();
        failed.sort_by_key(|a| (a.ended_at, a.task, a.attempt));
        if !follow && failed.is_empty() && seen.is_empty() {
            eprintln!("no attempt of job {} failed", reader.job);
        }
        for a in &failed {
            let error = a
                .error
                .as_ref()
                .map(|e| format!(": {} ({})", e.message, e.kind.as_str()))
                .unwrap_or_default();
            header(
                a.task,
                a.attempt,
                &format!(", {}{}{error}", kind_label(a.kind), a.outcome),
            )?;
            reader
                .print(&AttemptLog {
                    kind: a.kind,
                    task: a.task,
                    attempt: a.attempt,
                })
                .await?;
        }
        if job_ended {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// Merge tasks are named as such in a header; work tasks need no label.
fn kind_label(kind: TaskKind) -> String {
    match kind {
        TaskKind::Work => String::new(),
        TaskKind::Merge { level } => format!("merge level {level}, "),
        TaskKind::Final => "final merge, ".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::complete_len;

    #[test]
    fn a_line_still_being_written_is_not_complete() {
        assert_eq!(complete_len("a\nb\npartial"), 4);
        assert_eq!(complete_len("a\n"), 2);
        assert_eq!(complete_len("partial"), 0);
    }
}
