//! The worker's side of an item-level redrive (`orch retry --items`): the attempt runs only
//! the failed items the redrive selects and carries over everything else the attempt it
//! starts from committed, so the files it commits hold the whole batch again, each item once
//! (docs/reliability.md, "Redriving failed items").

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use orch_core::model::Redrive;
use orch_core::platform::Backends;
use orch_data::{FileInfo, ItemError, MergeOptions};

use crate::checkpoint::Tally;
use crate::error::{Error, Result};

/// What the attempt carries over from the one its redrive starts from.
pub(crate) struct Carried {
    /// That attempt's verified `part.parquet`: every item it finished ok.
    pub part: PathBuf,
    /// Its failed items the redrive leaves as they are.
    pub kept: Vec<ItemError>,
    /// The failed items to run again.
    pub redo: HashSet<u64>,
    /// Items it finished ok.
    pub ok: u64,
}

impl Carried {
    pub async fn load(
        backends: &Backends,
        job: &str,
        task: u32,
        redrive: &Redrive,
    ) -> Result<Self> {
        let from =
            orch_runtime::redrive::committed_attempt(backends, job, task, redrive.from_attempt)
                .await?;
        let errors = match from.errors.clone() {
            None => Vec::new(),
            Some(path) => {
                tokio::task::spawn_blocking(move || orch_data::read_errors_parquet(&path))
                    .await
                    .map_err(|e| Error::Setup(format!("reading carried errors failed: {e}")))??
            }
        };
        let (redo, kept): (Vec<ItemError>, Vec<ItemError>) =
            errors.into_iter().partition(|e| redrive.selects(&e.kind));
        Ok(Carried {
            part: from.part,
            kept,
            redo: redo.into_iter().map(|e| e.item).collect(),
            ok: from.marker.items_ok,
        })
    }

    /// Items finished by the attempt carried over (ok, and failed but not run again).
    pub fn tally(&self) -> Tally {
        let mut tally = Tally {
            ok: self.ok,
            ..Tally::default()
        };
        for e in &self.kept {
            tally.add_failed(&e.kind, 1);
        }
        tally
    }
}

/// Writes `part` as the carried-over results followed by `fresh` (this attempt's own results),
/// in one file under the schema of both, and removes `fresh`. Blocking.
pub(crate) fn merge_part(
    carried: &Path,
    fresh: &Path,
    part: &Path,
    opts: &MergeOptions,
) -> Result<FileInfo> {
    let dir = part.with_extension("merging");
    orch_data::atomic::remove_dir_if_present(&dir)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Setup(format!("cannot create {}: {e}", dir.display())))?;
    let opts = MergeOptions {
        // One file, however large: a task's output is one part.
        target_file_bytes: u64::MAX,
        ..opts.clone()
    };
    let merged =
        orch_data::merge_results(&[carried.to_path_buf(), fresh.to_path_buf()], &dir, &opts)?;
    let [(name, info)] = <[_; 1]>::try_from(merged.files)
        .map_err(|files| Error::Setup(format!("merging the redrive gave {} files", files.len())))?;
    std::fs::rename(dir.join(&name), part).map_err(|e| {
        Error::Setup(format!(
            "cannot move the merged part to {}: {e}",
            part.display()
        ))
    })?;
    orch_data::atomic::remove_dir_if_present(&dir)?;
    orch_data::atomic::remove_if_present(fresh)?;
    Ok(info)
}
