//! Starts the Kubernetes API emulator (`kube_emulator.py`, next to this file) for the Rust
//! tests of the CLI and the operator, which include this file with `#[path]`: one place that
//! knows its command line and its `READY <port>` handshake.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running emulator and the kubeconfig that points at it; stopped when dropped.
pub struct KubeEmulator {
    child: Child,
    pub kubeconfig: PathBuf,
}

/// How to start the emulator.
#[derive(Default)]
pub struct Options {
    /// Run the pods of Indexed Jobs as local processes (`--run-jobs`), logging to this directory.
    pub run_jobs: Option<PathBuf>,
    /// The environment of the emulator, and so of the pods it runs.
    pub env: Vec<(OsString, OsString)>,
    /// Variables of this process the emulator (and its pods) must not inherit.
    pub env_remove: Vec<OsString>,
}

/// What [`KubeEmulator::start_with`] adds to [`Options`] (apart, so that the tests' complete
/// `Options { .. }` literals stay complete).
#[derive(Default)]
pub struct Extra {
    /// Run Deployments (their ReplicaSets and pods) as local processes (`--run-deployments`),
    /// logging to the `run_jobs` directory when there is one.
    pub run_deployments: bool,
    /// Containers without a command whose image starts with the prefix run the program (the
    /// image's entrypoint) with their args (`--image PREFIX=PROGRAM`).
    pub images: Vec<(String, PathBuf)>,
    /// Serve https, authenticate bearer tokens and enforce RBAC (`--rbac`); the kubeconfig
    /// stays an admin.
    pub rbac: bool,
    /// The emulator's own stderr (tracebacks, `--verbose` request lines) goes to this file.
    pub log: Option<PathBuf>,
    /// Log every request, with its user (`--verbose`, into `log`).
    pub verbose: bool,
}

impl KubeEmulator {
    /// Starts the emulator on a free port; it writes `kubeconfig` and is ready on return.
    pub fn start(kubeconfig: &Path, options: Options) -> KubeEmulator {
        KubeEmulator::start_with(kubeconfig, options, Extra::default())
    }

    /// As [`KubeEmulator::start`], with RBAC, Deployments, image mappings or a log.
    pub fn start_with(kubeconfig: &Path, options: Options, extra: Extra) -> KubeEmulator {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/kube-emulator/kube_emulator.py");
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .args(["--port", "0", "--kubeconfig"])
            .arg(kubeconfig)
            .envs(options.env);
        for name in options.env_remove {
            command.env_remove(name);
        }
        if let Some(logs) = options.run_jobs {
            command.arg("--run-jobs").arg("--job-logs").arg(logs);
        }
        if extra.run_deployments {
            command.arg("--run-deployments");
        }
        for (prefix, program) in &extra.images {
            let mut arg = OsString::from(format!("{prefix}="));
            arg.push(program);
            command.arg("--image").arg(arg);
        }
        if extra.rbac {
            command.arg("--rbac");
        }
        if extra.verbose {
            command.arg("--verbose");
        }
        let stderr = match &extra.log {
            Some(path) => {
                Stdio::from(std::fs::File::create(path).expect("the emulator's log file"))
            }
            None => Stdio::null(),
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {}: {e}", script.display()));
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut ready)
            .expect("the emulator's first line");
        assert!(ready.starts_with("READY "), "the emulator said {ready:?}");
        KubeEmulator {
            child,
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// A kube client for the emulator, as a program reading the kubeconfig gets it.
    pub async fn client(&self) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("a config from the kubeconfig");
        kube::Client::try_from(config).expect("a client")
    }
}

impl Drop for KubeEmulator {
    /// SIGTERM first: the emulator stops the processes it runs (SIGTERM, then SIGKILL), which
    /// SIGKILL would leave running; SIGKILL if it has not exited 15 s later.
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let termed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
