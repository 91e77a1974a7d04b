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
/// file of a directory (hidden ones and subdirectories skipped), or the matches of a glob
/// (`data/part-*.jsonl`, directories skipped), sorted by path so ordinals are stable from run to
/// run.
///
/// Regular files only (or symlinks to them): a device, a FIFO or a socket is refused, naming
/// it. Such a file has no size to cut into byte ranges, every reader would get other bytes, and
/// `/dev/zero` would never end; silently skipping one in a directory would silently lose its
/// items.
pub fn input_sources(path: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let text = path.to_string_lossy();
    let mut files = Vec::new();
    if text.contains(['*', '?', '[']) {
        let matches =
            glob::glob(&text).map_err(|e| format!("`{text}` is not a valid glob: {e}"))?;
        for m in matches.filter_map(|m| m.ok()) {
            if let Some(file) = data_file(m)? {
                files.push(file);
            }
        }
    } else if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !hidden && let Some(file) = data_file(entry.path())? {
                files.push(file);
            }
        }
    } else {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => files.push(path.to_path_buf()),
            Ok(m) => return Err(not_regular(path, &m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("cannot read `{}`: no such file", path.display()));
            }
            Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("`{}` matches no file", path.display()));
    }
    Ok(files)
}

/// A directory entry or glob match as input: `Some` for a regular file, `None` for what is
/// skipped (a directory, a dangling symlink), an error for a special file.
fn data_file(path: PathBuf) -> std::result::Result<Option<PathBuf>, String> {
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Some(path)),
        Ok(m) if m.is_dir() => Ok(None),
        Ok(m) => Err(not_regular(&path, &m)),
        Err(_) => Ok(None),
    }
}

/// Why a special file cannot be input, naming what it is.
fn not_regular(path: &Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    let through = if path.is_symlink() {
        " (through a symlink)"
    } else {
        ""
    };
    format!(
        "`{}` is {what}{through}: input must be regular files (a file, a directory of files or a glob)",
        path.display()
    )
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::input_sources;

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn input_is_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let refused = |path: &Path, what: &str| {
            let e = input_sources(path).unwrap_err();
            assert!(e.contains(what), "{}: {e}", path.display());
            assert!(e.contains("regular files"), "{e}");
        };
        refused(Path::new("/dev/zero"), "is a device");
        let fifo = d.join("in.jsonl");
        mkfifo(&fifo);
        refused(&fifo, "is a FIFO");
        let socket = d.join("sock.jsonl");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        refused(&socket, "is a socket");
        let link = d.join("zero.jsonl");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        refused(&link, "is a device (through a symlink)");
        // A glob reaching a special file is refused too, naming it.
        let e = input_sources(&d.join("*.jsonl")).unwrap_err();
        assert!(e.contains("in.jsonl") && e.contains("FIFO"), "{e}");

        // A directory of regular files (and a symlink to one) is one dataset; hidden entries
        // and subdirectories are skipped, a special file among the entries is refused.
        let data = d.join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("b.jsonl"), "{}\n").unwrap();
        std::fs::write(data.join("a.jsonl"), "{}\n").unwrap();
        std::os::unix::fs::symlink(data.join("a.jsonl"), data.join("c.jsonl")).unwrap();
        mkfifo(&data.join(".hidden-fifo"));
        assert_eq!(
            input_sources(&data).unwrap(),
            ["a.jsonl", "b.jsonl", "c.jsonl"].map(|f| data.join(f))
        );
        assert_eq!(
            input_sources(&data.join("a.jsonl")).unwrap(),
            [data.join("a.jsonl")]
        );
        mkfifo(&data.join("d.jsonl"));
        let e = input_sources(&data).unwrap_err();
        assert!(e.contains("d.jsonl") && e.contains("FIFO"), "{e}");

        let e = input_sources(&d.join("missing.jsonl")).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
    }
}
