//! A task attempt's log: where it is and which of its lines a reader asked for. `orch logs`
//! reads through here, so the places a log can be and the meaning of `--since` and `--tail`
//! are decided once. See docs/observability.md ("Task logs").
//!
//! An attempt's log is what its worker writes to stderr: its own log lines and its handler's
//! stderr. It is read from the job's storage: one file (`jobs/J/logs/<name>`, where
//! the local executor writes it on directory storage) or the parts the worker stored itself
//! (`jobs/J/logs/<name>.parts/`, every other executor and storage); failing both, from the
//! directory where the workers started on this machine wrote it.

use std::path::Path;
use std::time::SystemTime;

use orch_core::backend::ObjectStore;
use orch_core::layout;
use orch_core::model::TaskKind;

use crate::error::Result;

/// One attempt of one task, as its log is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLog {
    pub kind: TaskKind,
    pub task: u32,
    pub attempt: u32,
}

impl AttemptLog {
    /// The attempt's log as written so far; `None` when there is none (yet) in either place.
    pub async fn read(
        &self,
        store: &dyn ObjectStore,
        job: &str,
        local_dir: Option<&Path>,
    ) -> Result<Option<Vec<u8>>> {
        let key = layout::task_log(job, self.kind, self.task, self.attempt);
        if let Some(bytes) = store.get(&key).await? {
            return Ok(Some(bytes));
        }
        let mut parts = store
            .list(&layout::task_log_parts(
                job,
                self.kind,
                self.task,
                self.attempt,
            ))
            .await?;
        if !parts.is_empty() {
            parts.sort_by(|a, b| a.key.cmp(&b.key));
            let mut log = Vec::new();
            for part in parts {
                // A part is never replaced; one gone meanwhile (the job purged) is skipped.
                log.extend(store.get(&part.key).await?.unwrap_or_default());
            }
            return Ok(Some(log));
        }
        let Some(dir) = local_dir else {
            return Ok(None);
        };
        let path = dir.join(layout::task_log_name(self.kind, self.task, self.attempt));
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::Error::Invalid(format!(
                "cannot read the log {}: {e}",
                path.display()
            ))),
        }
    }
}

/// The time a log line was written, when it carries one: text lines start with an RFC 3339
/// timestamp, JSON lines have a `timestamp` field. A handler's own stderr lines carry none.
pub fn line_time(line: &str) -> Option<SystemTime> {
    let line = line.trim_start();
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return humantime::parse_rfc3339_weak(value.get("timestamp")?.as_str()?).ok();
    }
    let first = line.split_whitespace().next()?;
    // Cheap refusal before parsing: a timestamp starts with a four-digit year and a dash.
    if first.len() < 20 || first.as_bytes().get(4) != Some(&b'-') {
        return None;
    }
    humantime::parse_rfc3339_weak(first).ok()
}

/// The lines of `text` a reader asked for: those written at or after `since` (a line without
/// a time of its own goes with the line before it, as a handler's traceback goes with the error
/// logged before it), then the last `tail` of them.
pub fn select_lines(text: &str, since: Option<SystemTime>, tail: Option<usize>) -> Vec<&str> {
    let mut keep = since.is_none();
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let (Some(since), Some(at)) = (since, line_time(line)) {
            keep = at >= since;
        }
        if keep {
            lines.push(line);
        }
    }
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LOG: &str = "\
2026-12-07T04:00:00.000000Z  INFO orch_worker: claimed task=3 attempt=1
2026-12-07T04:05:00.000000Z  WARN orch_worker: item failed id=7
Traceback (most recent call last):
  ValueError: bad record
{\"timestamp\":\"2026-12-07T04:10:00.000000Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"committed\"}}
";

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339_weak(rfc3339).unwrap()
    }

    #[test]
    fn text_and_json_lines_have_times_and_handler_lines_have_none() {
        let lines: Vec<&str> = LOG.lines().collect();
        assert_eq!(line_time(lines[0]), Some(at("2026-12-07T04:00:00Z")));
        assert_eq!(line_time(lines[2]), None);
        assert_eq!(line_time(lines[4]), Some(at("2026-12-07T04:10:00Z")));
        assert_eq!(line_time("2026 was a year"), None);
    }

    #[test]
    fn since_keeps_a_traceback_with_the_line_it_follows() {
        let since = Some(at("2026-12-07T04:04:00Z"));
        let lines = select_lines(LOG, since, None);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].contains("item failed") && lines[2].contains("ValueError"));
        let later = Some(at("2026-12-07T04:06:00Z"));
        assert_eq!(select_lines(LOG, later, None).len(), 1);
        let all = select_lines(
            LOG,
            Some(at("2026-12-07T04:00:00Z") - Duration::from_secs(1)),
            None,
        );
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn tail_keeps_the_last_lines_after_since() {
        assert_eq!(select_lines(LOG, None, Some(2)).len(), 2);
        assert_eq!(select_lines(LOG, None, Some(0)), Vec::<&str>::new());
        assert_eq!(select_lines(LOG, None, Some(99)).len(), 5);
        let since = Some(at("2026-12-07T04:04:00Z"));
        assert_eq!(
            select_lines(LOG, since, Some(1))[0],
            LOG.lines().last().unwrap()
        );
    }
}
