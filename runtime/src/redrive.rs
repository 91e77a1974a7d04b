//! Item-level redrive (`orch retry JOB --items`): the committed output of a task attempt, read
//! back so that a later attempt can run again only the items it recorded as failed and carry
//! everything else over. Both sides use it: the coordinator, to choose which tasks have items
//! to run again, and the worker, to build the redriven attempt's files (docs/reliability.md,
//! "Redriving failed items").

use std::path::PathBuf;

use orch_core::layout;
use orch_core::model::{DoneMarker, FileSum, committed_errors_file};
use orch_core::platform::Backends;

use crate::error::{Error, Result};

/// The verified files of one committed attempt, as local paths.
#[derive(Debug, Clone)]
pub struct CommittedAttempt {
    pub marker: DoneMarker,
    pub part: PathBuf,
    /// `None`: the attempt had no failed item, and wrote no `errors.parquet`.
    pub errors: Option<PathBuf>,
}

/// The `_DONE` marker of `attempt` of `task`.
pub async fn done_marker(
    backends: &Backends,
    job: &str,
    task: u32,
    attempt: u32,
) -> Result<DoneMarker> {
    let key = layout::done(job, task, attempt);
    let bytes = backends
        .objects
        .get(&key)
        .await?
        .ok_or_else(|| Error::Integrity {
            task,
            attempt,
            message: "committed but its _DONE marker is missing".into(),
        })?;
    Ok(orch_core::model::decode_versioned("_DONE marker", &bytes)?)
}

/// One file the marker names, brought to a local path (downloaded from a remote store) and
/// checked against the size and sha256 the marker recorded.
async fn verified_file(backends: &Backends, marker: &DoneMarker, name: &str) -> Result<PathBuf> {
    let (task, attempt) = (marker.task, marker.attempt);
    let integrity = |message: String| Error::Integrity {
        task,
        attempt,
        message,
    };
    let sum: &FileSum = marker
        .files
        .get(name)
        .ok_or_else(|| integrity(format!("_DONE does not name {name}")))?;
    let key = format!(
        "{}{name}",
        layout::attempt_prefix(&marker.job, task, attempt)
    );
    let (path, remote) = backends.local_file(&key)?;
    if remote && !backends.objects.get_to_file(&key, &path).await? {
        return Err(integrity(format!("{name} is missing")));
    }
    let expected = orch_data::FileInfo {
        rows: sum.rows,
        bytes: sum.bytes,
        sha256: sum.sha256.clone(),
    };
    let checked = path.clone();
    tokio::task::spawn_blocking(move || orch_data::verify_file(&checked, &expected))
        .await
        .map_err(|e| Error::Invalid(format!("checking {name} panicked: {e}")))?
        .map_err(|e| integrity(e.to_string()))?;
    Ok(path)
}

/// The verified `errors.parquet` of the attempt `marker` describes; `None` when the attempt
/// had no failed item, which writes none.
async fn verified_errors(backends: &Backends, marker: &DoneMarker) -> Result<Option<PathBuf>> {
    match committed_errors_file(&marker.files, marker.items_failed) {
        Ok(None) => Ok(None),
        Ok(Some(_)) => verified_file(backends, marker, layout::ERRORS_FILE)
            .await
            .map(Some),
        Err(message) => Err(Error::Integrity {
            task: marker.task,
            attempt: marker.attempt,
            message: format!("_DONE: {message}"),
        }),
    }
}

/// The failed items `attempt` of `task` recorded, read from its verified `errors.parquet`.
pub async fn committed_errors(
    backends: &Backends,
    job: &str,
    task: u32,
    attempt: u32,
) -> Result<Vec<orch_data::ItemError>> {
    let marker = done_marker(backends, job, task, attempt).await?;
    let Some(path) = verified_errors(backends, &marker).await? else {
        return Ok(Vec::new());
    };
    Ok(
        tokio::task::spawn_blocking(move || orch_data::read_errors_parquet(&path))
            .await
            .map_err(|e| Error::Invalid(format!("reading errors panicked: {e}")))??,
    )
}

/// Both result files of `attempt` of `task`, verified, for the attempt that carries them over.
pub async fn committed_attempt(
    backends: &Backends,
    job: &str,
    task: u32,
    attempt: u32,
) -> Result<CommittedAttempt> {
    let marker = done_marker(backends, job, task, attempt).await?;
    let part = verified_file(backends, &marker, layout::PART_FILE).await?;
    let errors = verified_errors(backends, &marker).await?;
    Ok(CommittedAttempt {
        marker,
        part,
        errors,
    })
}
