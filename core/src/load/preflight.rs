//! Checks of a loaded job against the machine it is about to run on: the local input is
//! readable and the handler program is found, before `orch run` starts anything
//! (docs/job-spec.md, "Validation"). Also how a local input's files and a program are found,
//! which the driver and the CLI share.

use std::path::{Path, PathBuf};

use super::{LoadedJob, field, invalid};
use crate::error::Result;
use crate::uri::Location;

/// Checks that need the filesystem: the input is readable and the handler program exists.
/// Run by `orch validate` and before `orch run` starts anything.
pub fn preflight(job: &LoadedJob) -> Result<()> {
    let mut errors = Vec::new();
    let s = &job.file.spec;
    if let Ok(Location::Local(p)) = Location::parse(&s.input.uri, Path::new("/")) {
        match input_sources(&p) {
            Ok(files) => {
                for f in files {
                    if let Err(e) = std::fs::File::open(&f) {
                        errors.push(field(
                            "spec.input.uri",
                            format!("cannot read `{}`: {e}", f.display()),
                        ));
                    }
                }
            }
            Err(e) => errors.push(field("spec.input.uri", e)),
        }
    }
    if let Some(exec) = &s.handler.exec
        && let Some(program) = exec.command.first()
    {
        let workdir = PathBuf::from(exec.workdir.as_deref().unwrap_or("."));
        if !workdir.is_dir() {
            errors.push(field(
                "spec.handler.exec.workdir",
                format!("`{}` is not a directory", workdir.display()),
            ));
        } else if find_program(program, &workdir).is_none() {
            errors.push(field(
                "spec.handler.exec.command[0]",
                format!(
                    "program `{program}` not found in PATH or in `{}`",
                    workdir.display()
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(&job.path, errors))
    }
}

/// The files of a local input, in the order their items are numbered: the file itself, every
/// file of a directory (hidden ones skipped), or the matches of a glob (`data/part-*.jsonl`),
/// sorted by path so ordinals are stable from run to run.
pub fn input_sources(path: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let text = path.to_string_lossy();
    let mut files: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
        let matches =
            glob::glob(&text).map_err(|e| format!("`{text}` is not a valid glob: {e}"))?;
        matches
            .filter_map(|m| m.ok())
            .filter(|p| p.is_file())
            .collect()
    } else if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect()
    } else if path.exists() {
        vec![path.to_path_buf()]
    } else {
        return Err(format!("cannot read `{}`: no such file", path.display()));
    };
    files.sort();
    if files.is_empty() {
        return Err(format!("`{}` matches no file", path.display()));
    }
    Ok(files)
}

/// Resolves a program the way the worker will start it: a name with a `/` is relative to
/// `workdir`, a bare name is looked up in `PATH`.
pub fn find_program(program: &str, workdir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = workdir.join(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| executable(p))
    })
}
