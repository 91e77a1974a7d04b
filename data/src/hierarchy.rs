//! Hierarchical, resumable aggregation: many result files reduced level by level to a few,
//! then merged once into the final output.
//!
//! One flat [`merge_results`] over ten thousand inputs is bounded in memory but all-or-nothing:
//! a crash near the end loses the whole merge, and it runs in one process. Here inputs are
//! merged in groups of `fan_in` (docs/job-spec.md, "Storage layout", `jobs/J/aggregate/L/G`); each group is an
//! independent unit of work that a separate process (an executor task) can run, and its output
//! is sealed by a `_DONE` marker written last. A rerun skips every group whose marker still
//! matches both its inputs and its output bytes, and redoes any other. Each level feeds the
//! next until at most `fan_in` files remain; [`merge_final`] merges those into the output
//! location and seals it with its own marker, from which the caller writes `_SUCCESS`.
//!
//! Layout under `work_dir`: `<level>/<group:06>/part-00000.parquet` plus
//! `<level>/<group:06>/_DONE`, levels counted from 1. Because the merge is deterministic (same
//! inputs, same bytes), a redone group reproduces its old output exactly, so the groups of the
//! next level that read it stay valid, and a resumed aggregation ends with the same checksums
//! as an uninterrupted one.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Result;
use crate::atomic::write_json_atomic;
use crate::checksum::{FileInfo, verify_file};
use crate::error::DataError;
use crate::formats::{ExtraFormat, write_format};
use crate::item_errors::merge_errors;
use crate::merge::{MergeOptions, merge_results, part_file_name};
use crate::schema::ColumnSchema;

/// Name of the marker sealing a finished group.
pub const DONE_FILE: &str = "_DONE";
/// Version of the `_DONE` and final markers; a marker of another version is treated as missing.
const DONE_VERSION: u32 = 1;
/// Name of the merged errors file in the output location.
pub const ERRORS_FILE: &str = "errors.parquet";

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

/// What [`Hierarchy::merge_group`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOutcome {
    /// A valid `_DONE` of an earlier run matched: nothing was written.
    Skipped,
    Merged,
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

/// The shape of a hierarchical merge of `inputs` (task result Parquet files, in item order)
/// with fan-in `fan_in` under `work_dir`. Pure arithmetic plus marker checks: any process that
/// builds the same `Hierarchy` agrees on every group's members, so the coordinator can plan
/// and check groups while workers merge them.
#[derive(Debug, Clone, Copy)]
pub struct Hierarchy<'a> {
    inputs: &'a [PathBuf],
    work_dir: &'a Path,
    fan_in: usize,
    /// Row groups and declared schema of the job; intermediate files ignore its size target.
    opts: &'a MergeOptions,
}

impl<'a> Hierarchy<'a> {
    pub fn new(
        inputs: &'a [PathBuf],
        work_dir: &'a Path,
        fan_in: usize,
        opts: &'a MergeOptions,
    ) -> Result<Self> {
        if fan_in < 2 {
            return Err(DataError::invalid(
                work_dir,
                format!("hierarchical merge needs a fan-in of at least 2, got {fan_in}"),
            ));
        }
        Ok(Hierarchy {
            inputs,
            work_dir,
            fan_in,
            opts,
        })
    }

    /// Number of groups of each intermediate level, level 1 first; empty when the inputs are
    /// few enough (≤ `fan_in`) for the final merge alone.
    pub fn levels(&self) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut files = self.inputs.len();
        while files > self.fan_in {
            files = files.div_ceil(self.fan_in);
            sizes.push(files);
        }
        sizes
    }

    fn group_dir(&self, level: u32, group: usize) -> PathBuf {
        self.work_dir.join(group_dir_name(level, group))
    }

    /// The directories, relative to the work directory, of the earlier-level groups whose
    /// outputs group `group` of `level` reads (none for level 1, which reads the inputs), and
    /// the range of inputs a level-1 group reads. For a caller that must fetch a group's
    /// members before merging it (a remote store mirrored into scratch space).
    pub fn member_dirs(&self, level: u32, group: usize) -> (Vec<String>, std::ops::Range<usize>) {
        let first = group * self.fan_in;
        if level <= 1 {
            return (
                Vec::new(),
                first..(first + self.fan_in).min(self.inputs.len()),
            );
        }
        let levels = self.levels();
        let below = levels.get(level as usize - 2).copied().unwrap_or(0);
        let dirs = (first..(first + self.fan_in).min(below))
            .map(|g| group_dir_name(level - 1, g))
            .collect();
        (dirs, 0..0)
    }

    /// The files the final merge reads, in order: the last level's outputs, or the inputs
    /// when there are no levels.
    pub fn final_inputs(&self) -> Vec<PathBuf> {
        let levels = self.levels();
        match levels.last() {
            None => self.inputs.to_vec(),
            Some(&groups) => (0..groups)
                .map(|g| {
                    self.group_dir(levels.len() as u32, g)
                        .join(part_file_name(0))
                })
                .collect(),
        }
    }

    /// The members of one group. Level 1 reads caller inputs; a later level reads the outputs
    /// of the level before, which must be sealed already (their checksums enter the key).
    fn members(&self, level: u32, group: usize) -> Result<Vec<Node>> {
        let levels = self.levels();
        let groups = level
            .checked_sub(1)
            .and_then(|i| levels.get(i as usize))
            .copied()
            .ok_or_else(|| {
                DataError::invalid(
                    self.work_dir,
                    format!(
                        "level {level} does not exist (this merge has {} levels)",
                        levels.len()
                    ),
                )
            })?;
        if group >= groups {
            return Err(DataError::invalid(
                self.work_dir,
                format!("level {level} has {groups} groups; there is no group {group}"),
            ));
        }
        let first = group * self.fan_in;
        if level == 1 {
            let end = (first + self.fan_in).min(self.inputs.len());
            return Ok(self.inputs[first..end]
                .iter()
                .map(|path| Node {
                    path: path.clone(),
                    sha256: None,
                })
                .collect());
        }
        let below = levels[level as usize - 2];
        (first..(first + self.fan_in).min(below))
            .map(|g| {
                let dir = self.group_dir(level - 1, g);
                let done = read_done(&dir).ok_or_else(|| {
                    DataError::invalid(
                        &dir,
                        format!("level {} group {g} is not merged yet", level - 1),
                    )
                })?;
                Ok(Node {
                    path: dir.join(part_file_name(0)),
                    sha256: Some(done.output.sha256),
                })
            })
            .collect()
    }

    /// Whether the group's `_DONE` is intact, names the group's current inputs and matches its
    /// output bytes (so the group can be skipped).
    pub fn group_done(&self, level: u32, group: usize) -> Result<bool> {
        let members = self.members(level, group)?;
        let key = inputs_key(&members, self.work_dir)?;
        Ok(check_done(&self.group_dir(level, group), members.len(), &key).is_some())
    }

    /// Merges one group unless a valid `_DONE` says it is done; a group with a missing, stale
    /// or corrupt marker or output is deleted and merged again.
    pub fn merge_group(&self, level: u32, group: usize) -> Result<GroupOutcome> {
        let members = self.members(level, group)?;
        let key = inputs_key(&members, self.work_dir)?;
        let dir = self.group_dir(level, group);
        if check_done(&dir, members.len(), &key).is_some() {
            return Ok(GroupOutcome::Skipped);
        }
        merge_group(&members, &dir, &key, self.opts)?;
        Ok(GroupOutcome::Merged)
    }
}

impl Hierarchy<'_> {
    /// Makes sure the member groups of `group` at `level` (of level `level - 1`) are intact,
    /// merging again any whose marker or output was damaged since it was sealed; returns how
    /// many were. Level 1 reads task results, which need no repair.
    pub fn repair_members(&self, level: u32, group: usize) -> Result<usize> {
        if level <= 1 {
            return Ok(0);
        }
        let below = self.levels()[level as usize - 2];
        let first = group * self.fan_in;
        self.repair(level - 1, first..(first + self.fan_in).min(below))
    }

    /// [`Hierarchy::repair_members`] for the final merge: the groups of the last level.
    pub fn repair_last_level(&self) -> Result<usize> {
        let levels = self.levels();
        match levels.last() {
            None => Ok(0),
            Some(&groups) => self.repair(levels.len() as u32, 0..groups),
        }
    }

    fn repair(&self, level: u32, groups: std::ops::Range<usize>) -> Result<usize> {
        let mut merged = 0;
        for g in groups {
            if self.merge_group(level, g)? == GroupOutcome::Merged {
                tracing::warn!(
                    level,
                    group = g,
                    "a sealed merge group was damaged; merged it again"
                );
                merged += 1;
            }
        }
        Ok(merged)
    }
}

/// The directory of a group relative to the work directory: `<level>/<group:06>`. Holds
/// [`part_file_name`]`(0)` and [`DONE_FILE`].
pub fn group_dir_name(level: u32, group: usize) -> String {
    format!("{level}/{group:06}")
}

/// Merges `inputs` level by level in this process (see [`Hierarchy`]) and returns the at most
/// `fan_in` files left, in order, for the caller's final merge, plus what this run did.
/// `progress(level, done_groups, total_groups)` is called after each group, skipped or merged.
/// If `inputs.len() <= fan_in` the inputs are returned unchanged and nothing is written.
///
/// Group directories left over from an earlier run over a longer input list are not removed;
/// they are never read.
pub fn merge_hierarchical(
    inputs: &[PathBuf],
    work_dir: &Path,
    fan_in: usize,
    progress: &mut dyn FnMut(u32, usize, usize),
) -> Result<(Vec<PathBuf>, HierarchyStats)> {
    let opts = MergeOptions::default();
    let hierarchy = Hierarchy::new(inputs, work_dir, fan_in, &opts)?;
    let mut stats = HierarchyStats::default();
    for (index, &groups) in hierarchy.levels().iter().enumerate() {
        let level = index as u32 + 1;
        for group in 0..groups {
            match hierarchy.merge_group(level, group)? {
                GroupOutcome::Skipped => stats.skipped += 1,
                GroupOutcome::Merged => stats.merged += 1,
            }
            progress(level, group + 1, groups);
        }
        tracing::info!(level, groups, "hierarchical merge level done");
        stats.levels = level;
    }
    Ok((hierarchy.final_inputs(), stats))
}

/// SHA-256 over each input's path, size and known checksum, in order.
fn inputs_key(members: &[Node], work_dir: &Path) -> Result<String> {
    // Paths enter the key relative to the job's directory (the parent of the work directory),
    // so the key survives a moved storage root or a merge run from a copy in scratch space.
    let base = work_dir.parent().unwrap_or(work_dir);
    let mut hasher = Sha256::new();
    for node in members {
        let name = node.path.strip_prefix(base).unwrap_or(&node.path);
        hash_file_identity(&mut hasher, &node.path, name, node.sha256.as_deref())?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hashes a file's name (as given), its size (read from `path`) and its checksum if known.
fn hash_file_identity(
    hasher: &mut Sha256,
    path: &Path,
    name: &Path,
    sha256: Option<&str>,
) -> Result<()> {
    let size = fs::metadata(path)
        .map_err(|e| DataError::io("stat", path, e))?
        .len();
    hasher.update(name.to_string_lossy().as_bytes());
    hasher.update(b"\0");
    hasher.update(size.to_string().as_bytes());
    hasher.update(b"\0");
    hasher.update(sha256.unwrap_or("").as_bytes());
    hasher.update(b"\n");
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable marker; redoing its merge");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "corrupt marker; redoing its merge");
            None
        }
    }
}

fn read_done(group_dir: &Path) -> Option<GroupDone> {
    read_json::<GroupDone>(&group_dir.join(DONE_FILE)).filter(|d| d.version == DONE_VERSION)
}

/// The recorded output of a finished group, if its `_DONE` is intact and still applies.
fn check_done(group_dir: &Path, inputs: usize, key: &str) -> Option<FileInfo> {
    let done = read_done(group_dir)?;
    if done.inputs != inputs || done.inputs_sha256 != key {
        tracing::info!(path = %group_dir.display(), "group inputs changed; redoing group");
        return None;
    }
    let output = group_dir.join(part_file_name(0));
    if let Err(e) = verify_file(&output, &done.output) {
        tracing::warn!(path = %output.display(), error = %e, "group output does not match its marker; redoing group");
        return None;
    }
    Some(done.output)
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io("remove directory", dir, e)),
    }
}

/// Merges one group from scratch into a single file and seals it with `_DONE`.
fn merge_group(
    members: &[Node],
    group_dir: &Path,
    key: &str,
    opts: &MergeOptions,
) -> Result<FileInfo> {
    remove_dir_if_present(group_dir)?;
    fs::create_dir_all(group_dir).map_err(|e| DataError::io("create directory", group_dir, e))?;
    let paths: Vec<PathBuf> = members.iter().map(|n| n.path.clone()).collect();
    // Intermediate files are never rolled by size: one per group keeps the next level's
    // arithmetic simple, and the final merge sizes the output files.
    let opts = MergeOptions {
        target_file_bytes: u64::MAX,
        ..opts.clone()
    };
    let merged = merge_results(&paths, group_dir, &opts)?;
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

/// What the final merge wrote into the output location; the caller's `_SUCCESS` is built
/// from it. Stored as JSON (the final marker) so a resumed aggregation can skip the final
/// merge when its output is intact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalOutput {
    version: u32,
    /// Every file written, by name relative to the output location.
    pub files: BTreeMap<String, FileInfo>,
    /// Result rows over all parts.
    pub rows: u64,
    /// Rows of `errors.parquet`.
    pub error_rows: u64,
    /// The schema of the parts, `_item` first.
    pub schema: Vec<ColumnSchema>,
    inputs_sha256: String,
}

/// What the final merge reads and writes.
#[derive(Debug, Clone)]
pub struct FinalMerge<'a> {
    /// Result files, in item order ([`Hierarchy::final_inputs`]).
    pub inputs: &'a [PathBuf],
    /// Per-task error files, merged into `errors.parquet`.
    pub errors: &'a [PathBuf],
    pub out_dir: &'a Path,
    /// Formats written besides the Parquet parts.
    pub extra: &'a [ExtraFormat],
    pub opts: &'a MergeOptions,
    /// Where the [`FinalOutput`] marker goes (outside `out_dir`, which consumers read).
    pub marker: &'a Path,
}

impl FinalMerge<'_> {
    fn key(&self) -> Result<String> {
        let mut hasher = Sha256::new();
        for path in self.inputs.iter().chain(self.errors) {
            hash_file_identity(&mut hasher, path, path, None)?;
        }
        hasher.update(self.out_dir.to_string_lossy().as_bytes());
        for f in self.extra {
            hasher.update(b"\0");
            hasher.update(f.name().as_bytes());
        }
        hasher.update(
            format!(
                "\0{}\0{}",
                self.opts.target_file_bytes, self.opts.row_group_rows
            )
            .as_bytes(),
        );
        Ok(hex::encode(hasher.finalize()))
    }

    /// The recorded output, if the final marker applies to these inputs and every file it
    /// names is intact.
    pub fn done(&self) -> Result<Option<FinalOutput>> {
        let Some(done) = read_json::<FinalOutput>(self.marker) else {
            return Ok(None);
        };
        if done.version != DONE_VERSION || done.inputs_sha256 != self.key()? {
            return Ok(None);
        }
        for (name, info) in &done.files {
            if let Err(e) = verify_file(&self.out_dir.join(name), info) {
                tracing::warn!(file = %name, error = %e, "final output does not match its marker; merging again");
                return Ok(None);
            }
        }
        Ok(Some(done))
    }

    /// Replaces the output location's files with the merge of the inputs: rolling parts,
    /// `errors.parquet`, the extra formats; then writes the marker. The caller writes
    /// `_SUCCESS` after this returns; any `_SUCCESS` of an earlier run is removed first so a
    /// consumer never sees it next to parts of another run.
    pub fn run(&self) -> Result<FinalOutput> {
        let key = self.key()?;
        match fs::remove_file(self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataError::io("remove", self.marker, e)),
        }
        fs::create_dir_all(self.out_dir)
            .map_err(|e| DataError::io("create directory", self.out_dir, e))?;
        remove_previous_output(self.out_dir)?;
        let merged = merge_results(self.inputs, self.out_dir, self.opts)?;
        let errors_path = self.out_dir.join(ERRORS_FILE);
        let errors = merge_errors(self.errors, &errors_path)?;
        let parts: Vec<PathBuf> = merged
            .files
            .iter()
            .map(|(name, _)| self.out_dir.join(name))
            .collect();
        let mut files: BTreeMap<String, FileInfo> = merged.files.iter().cloned().collect();
        files.insert(ERRORS_FILE.into(), errors.clone());
        for &format in self.extra {
            let (name, info) = write_format(format, &parts, &errors_path, self.out_dir)?;
            files.insert(name, info);
        }
        let done = FinalOutput {
            version: DONE_VERSION,
            files,
            rows: merged.rows,
            error_rows: errors.rows,
            schema: merged.schema,
            inputs_sha256: key,
        };
        write_json_atomic(self.marker, &done)?;
        Ok(done)
    }
}

/// Removes `_SUCCESS` and every file an earlier final merge may have written.
fn remove_previous_output(out: &Path) -> Result<()> {
    let remove = |path: &Path| match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io("remove", path, e)),
    };
    remove(&out.join("_SUCCESS"))?;
    for entry in fs::read_dir(out).map_err(|e| DataError::io("list", out, e))? {
        let entry = entry.map_err(|e| DataError::io("list", out, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = (name.starts_with("part-") && name.ends_with(".parquet"))
            || name == ERRORS_FILE
            || ExtraFormat::ALL
                .iter()
                .any(|f| f.file_name() == name.as_ref());
        if ours {
            remove(&entry.path())?;
        }
    }
    Ok(())
}
