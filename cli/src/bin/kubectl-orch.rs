//! `kubectl-orch`, the kubectl plugin: `kubectl orch ARGS` runs `kubectl-orch ARGS` from PATH.
//! This runs the `orch` installed next to it (else the one in PATH) with the same arguments and
//! the program name `kubectl-orch`, under which `orch` calls itself `kubectl orch` and its
//! `status` reads the cluster. A symlink `kubectl-orch -> orch` does the same without this shim.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn orch() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("orch")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("orch"))
}

fn main() -> ExitCode {
    let orch = orch();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Only returns on failure.
    let e = Command::new(&orch).arg0("kubectl-orch").args(args).exec();
    eprintln!(
        "error: kubectl-orch cannot start `{}`: {e} (install orch next to kubectl-orch or in \
         PATH)",
        orch.display()
    );
    ExitCode::from(1)
}
