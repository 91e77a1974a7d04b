//! Hierarchical, resumable merge: many result files reduced level by level to a few.
//!
//! One flat [`merge_results`] over ten thousand inputs is bounded in memory but all-or-nothing:
//! a crash near the end loses the whole merge. Here inputs are merged in groups of `fan_in`
//! (DESIGN §3, `jobs/J/aggregate/L/G`), each group's output is sealed by a `_DONE` marker
//! written last, and a rerun skips every group whose marker still matches both its inputs and
//! its output bytes. Each level feeds the next until at most `fan_in` files remain; the caller
//! merges those into the final output.
//!
//! Layout under `work_dir`: `<level>/<group:06>/part-00000.parquet` plus `<level>/<group:06>/_DONE`,
//! levels counted from 1. Because the merge is deterministic (same inputs, same bytes), a redone
//! group reproduces its old output exactly, so the groups of the next level that read it stay
//! valid.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Result;
use crate::atomic::write_json_atomic;
use crate::checksum::{FileInfo, verify_file};
use crate::error::DataError;
use crate::merge::{MergeOptions, merge_results, part_file_name};

/// Name of the marker sealing a finished group.
const DONE_FILE: &str = "_DONE";
/// Version of the `_DONE` contents; a marker of another version is treated as missing.
const DONE_VERSION: u32 = 1;

/// What a [`merge_hierarchical`] run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HierarchyStats {
    /// Groups merged in this run (new, or redone because their marker or output was bad).
    pub merged: usize,
    /// Groups skipped because a valid `_DONE` from an earlier run matched.
    pub skipped: usize,
    /// Levels processed (0 when the inputs were returned unchanged).
    pub levels: u32,
}

/// Contents of a group's `_DONE`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct GroupDone {
    version: u32,
    /// The group's output file, `part-00000.parquet`.
    output: FileInfo,
    /// How many inputs the group merged.
    inputs: usize,
    /// SHA-256 over the inputs' paths, sizes and (for intermediate files) checksums.
    inputs_sha256: String,
}

/// One file feeding a level: a caller's input, or an earlier level's verified output.
struct Node {
    path: PathBuf,
    /// Known for intermediate outputs; part of the group key so that a group whose input was
    /// rewritten with different bytes of the same size is still redone.
    sha256: Option<String>,
}

/// Merges `inputs` (task result Parquet files, in item order) level by level with fan-in
/// `fan_in` (≥ 2) under `work_dir`, and returns the at most `fan_in` files left, in order, for
/// the caller's final [`merge_results`], plus what this run did.
///
/// Level 1 merges consecutive groups of `fan_in` inputs, each into
/// `work_dir/1/<group:06>/part-00000.parquet` (a single file: no size-based rolling), then
/// writes `work_dir/1/<group:06>/_DONE` last: JSON with the output's [`FileInfo`] and a SHA-256
/// of the group's input paths and sizes. Level 2 merges the level-1 outputs the same way, and so
/// on. If `inputs.len() <= fan_in` the inputs are returned unchanged and nothing is written.
///
/// Resume: a group whose `_DONE` parses, names the same inputs and whose output matches the
/// recorded size and SHA-256 is skipped; any other group directory is deleted and merged
/// again. `progress(level, done_groups, total_groups)` is called after each group, skipped or
/// merged. Memory stays bounded because [`merge_results`] streams one batch at a time.
///
/// Group directories left over from an earlier run over a longer input list are not removed;
/// they are never read.
pub fn merge_hierarchical(
    inputs: &[PathBuf],
    work_dir: &Path,
    fan_in: usize,
    progress: &mut dyn FnMut(u32, usize, usize),
) -> Result<(Vec<PathBuf>, HierarchyStats)> {
    if fan_in < 2 {
        return Err(DataError::invalid(
            work_dir,
            format!("hierarchical merge needs a fan-in of at least 2, got {fan_in}"),
        ));
    }
    let mut stats = HierarchyStats::default();
    let mut current: Vec<Node> = inputs
        .iter()
        .map(|path| Node {
            path: path.clone(),
            sha256: None,
        })
        .collect();
    let opts = MergeOptions {
        target_file_bytes: u64::MAX,
        ..MergeOptions::default()
    };
    let mut level = 0u32;
    while current.len() > fan_in {
        level += 1;
        let level_dir = work_dir.join(level.to_string());
        let total = current.len().div_ceil(fan_in);
        let mut next = Vec::with_capacity(total);
        for (group, members) in current.chunks(fan_in).enumerate() {
            let group_dir = level_dir.join(format!("{group:06}"));
            let key = inputs_key(members)?;
            let output = match check_done(&group_dir, members.len(), &key) {
                Some(info) => {
                    stats.skipped += 1;
                    info
                }
                None => {
                    let info = merge_group(members, &group_dir, &opts, &key)?;
                    stats.merged += 1;
                    info
                }
            };
            next.push(Node {
                path: group_dir.join(part_file_name(0)),
                sha256: Some(output.sha256),
            });
            progress(level, group + 1, total);
        }
        tracing::info!(level, groups = total, "hierarchical merge level done");
        current = next;
    }
    stats.levels = level;
    Ok((current.into_iter().map(|n| n.path).collect(), stats))
}

/// SHA-256 over each input's path, size and known checksum, in order.
fn inputs_key(members: &[Node]) -> Result<String> {
    let mut hasher = Sha256::new();
    for node in members {
        let size = fs::metadata(&node.path)
            .map_err(|e| DataError::io("stat", &node.path, e))?
            .len();
        hasher.update(node.path.to_string_lossy().as_bytes());
        hasher.update(b"\0");
        hasher.update(size.to_string().as_bytes());
        hasher.update(b"\0");
        hasher.update(node.sha256.as_deref().unwrap_or("").as_bytes());
        hasher.update(b"\n");
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The recorded output of a finished group, if its `_DONE` is intact and still applies.
fn check_done(group_dir: &Path, inputs: usize, key: &str) -> Option<FileInfo> {
    let done_path = group_dir.join(DONE_FILE);
    let text = match fs::read(&done_path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %done_path.display(), error = %e, "unreadable group marker; redoing group");
            return None;
        }
    };
    let done: GroupDone = match serde_json::from_slice(&text) {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(path = %done_path.display(), error = %e, "corrupt group marker; redoing group");
            return None;
        }
    };
    if done.version != DONE_VERSION || done.inputs != inputs || done.inputs_sha256 != key {
        tracing::info!(path = %done_path.display(), "group inputs changed; redoing group");
        return None;
    }
    let output = group_dir.join(part_file_name(0));
    if let Err(e) = verify_file(&output, &done.output) {
        tracing::warn!(path = %output.display(), error = %e, "group output does not match its marker; redoing group");
        return None;
    }
    Some(done.output)
}

/// Merges one group from scratch and seals it with `_DONE`.
fn merge_group(
    members: &[Node],
    group_dir: &Path,
    opts: &MergeOptions,
    key: &str,
) -> Result<FileInfo> {
    match fs::remove_dir_all(group_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(DataError::io("remove directory", group_dir, e)),
    }
    fs::create_dir_all(group_dir).map_err(|e| DataError::io("create directory", group_dir, e))?;
    let paths: Vec<PathBuf> = members.iter().map(|n| n.path.clone()).collect();
    let merged = merge_results(&paths, group_dir, opts)?;
    let output = match merged.files.as_slice() {
        [(name, info)] if *name == part_file_name(0) => info.clone(),
        files => {
            return Err(DataError::invalid(
                group_dir,
                format!("group merge produced {} files, expected one", files.len()),
            ));
        }
    };
    let done = GroupDone {
        version: DONE_VERSION,
        output: output.clone(),
        inputs: members.len(),
        inputs_sha256: key.to_owned(),
    };
    write_json_atomic(&group_dir.join(DONE_FILE), &done)?;
    Ok(output)
}
