//! `orch-operator`: the `OrchJob` controller as a process. Flags match the Helm chart
//! (charts/orch-operator/templates/deployment.yaml); the work is in the library.
//!
//! Shutdown (SIGTERM, SIGINT, or a lost leader Lease) stops the controller, then every job
//! driver between two ticks — each releases its job's lease — then the leader Lease, so a
//! standby replica takes over at once. Workers and Slurm arrays are not touched: the next
//! leader finds them in the stores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
use kube::{Api, Client};
use orch_core::logging::LogFormat;
use orch_crd::{OrchPolicy, RateLimit, TaskGroup};
use orch_operator::Watched;
use orch_operator::config::OperatorConfig;
use orch_operator::controller::{Context, error_policy, reconcile};
use orch_operator::leader::LeaderElector;
use orch_operator::rate_limits;
use orch_operator::supervisor::Supervisors;
use orch_operator::telemetry::{self, Metrics};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "orch-operator",
    version,
    about = "Runs OrchJobs on Slurm (or Kubernetes) with AWS as the data plane"
)]
struct Args {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_bind_address: SocketAddr,
    /// Also write each driven job's figures as CloudWatch Embedded Metric Format lines to
    /// this file (appended), or to stdout with `-` (for the CloudWatch agent).
    #[arg(long, env = "ORCH_METRICS_EMF")]
    metrics_emf: Option<PathBuf>,
    /// Log lines as JSON (production) or text.
    #[arg(long, value_enum, default_value = "json", env = "ORCH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Run only while holding the leader Lease (for more than one replica).
    #[arg(long)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "orch-operator-leader")]
    leader_election_lease: String,
    /// The operator's namespace: its leader Lease, and the token Secrets policies name.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// How long the leader Lease outlives a leader that stopped renewing it.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    leader_election_duration: Duration,
    /// This replica's name in the Lease and in Events; default the pod's name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only these namespaces (repeat the flag, or separate them with commas), with
    /// RBAC by RoleBindings in each; default all namespaces.
    #[arg(long, value_delimiter = ',')]
    watch_namespace: Vec<String>,
    /// Storage of jobs whose spec names none (s3://bucket/prefix/).
    #[arg(long, env = "ORCH_STORAGE_URI")]
    storage_uri: Option<String>,
    /// slurmrestd URL for Slurm jobs that name none (https://slurm-head:6820; plain http only
    /// to a loopback address, with --slurm-allow-http-loopback).
    #[arg(long, env = "ORCH_SLURM_URL")]
    slurm_url: Option<String>,
    /// File holding the JWT for slurmrestd; read at each use, so a rotated token is picked up.
    #[arg(long, env = "ORCH_SLURM_TOKEN_FILE")]
    slurm_token_file: Option<PathBuf>,
    /// Allow plain http:// to slurmrestd on a loopback address (a sidecar, a port-forward).
    /// Any other http:// is refused: the token would cross the network in clear.
    #[arg(long)]
    slurm_allow_http_loopback: bool,
    /// Worker program on the Slurm nodes (and for local workers).
    #[arg(long, env = "ORCH_WORKER", default_value = "orch-worker")]
    worker: String,
    /// Image of worker pods (Kubernetes executor).
    #[arg(long, env = "ORCH_WORKER_IMAGE")]
    worker_image: Option<String>,
    /// Command of worker pods (program and leading arguments, space-separated); default the
    /// image's entrypoint.
    #[arg(long, env = "ORCH_WORKER_POD_COMMAND", value_delimiter = ' ')]
    worker_pod_command: Vec<String>,
    /// Local disk of each worker pod: its ephemeral-storage request and limit and the size
    /// limit of its /tmp, so that no pod fills its node's disk.
    #[arg(long, default_value = "10Gi", value_parser = parse_size)]
    worker_scratch_size: u64,
    /// OrchJobs reconciled at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// How long a job's lease in DynamoDB outlives an operator that died holding it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    job_lease: Duration,
    /// Pause between two engine ticks of a job.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// Status refresh of a running job when nothing woke the controller.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Serve the web dashboard of the jobs of the namespaces this operator serves (each from
    /// the storage its OrchPolicy names) on this address, read-only: changes to a job go
    /// through its OrchJob, where Kubernetes RBAC decides who may make them. Without it, no
    /// dashboard.
    #[arg(long, env = "ORCH_DASHBOARD_BIND_ADDRESS")]
    dashboard_bind_address: Option<SocketAddr>,
    /// Scratch space: files on their way to or from S3.
    #[arg(long, env = "ORCH_SCRATCH_DIR")]
    scratch_dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    // kube's TLS and the AWS SDK's each bring a rustls crypto provider; name one.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        warn!("a TLS crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "the operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    orch_core::quantity::parse_bytes(text)
}

fn init_logging(format: LogFormat) {
    orch_core::logging::init("info", format);
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));

    let emf = match &args.metrics_emf {
        Some(path) => Some(
            orch_runtime::metrics::EmfLines::open(path)
                .with_context(|| format!("--metrics-emf {}: cannot open it", path.display()))?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::default().with_emf(emf));
    let listener = tokio::net::TcpListener::bind(args.metrics_bind_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_bind_address))?;
    info!(address = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let http = tokio::spawn(telemetry::serve(
        listener,
        metrics.clone(),
        shutdown.clone(),
    ));

    let scratch = args
        .scratch_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("orch-operator"));
    let client = Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("cannot reach the Kubernetes API server")?;
    info!(server = %version.git_version, "connected to the API server");
    metrics.set_ready();

    // Policies first: until they are listed, every job would look ungoverned and be refused.
    // Listed before the election, so that a standby's dashboard knows the namespaces' storages.
    let (policies, policy_writer) = reflector::store::<OrchPolicy>();
    let policy_watch = reflector(
        policy_writer,
        watcher(
            Api::<OrchPolicy>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .for_each(|event| async move {
        if let Err(e) = event {
            warn!(error = %e, "watching OrchPolicies");
        }
    });
    tokio::spawn(policy_watch);
    // Every replica serves the dashboard (it only reads), the standbys too.
    if let Some(addr) = args.dashboard_bind_address {
        let storages = orch_operator::dashboard::NamespaceStorages::new(
            client.clone(),
            args.watch_namespace.clone(),
            policies.clone(),
            orch_core::policy::OperatorDefaults {
                storage_uri: args.storage_uri.clone(),
                slurm_url: None,
                slurm_token_file: None,
            },
            scratch.clone(),
        );
        serve_dashboard(addr, storages, shutdown.clone()).await?;
    }

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("orch-operator-{}", std::process::id()));
    let elector = args.leader_elect.then(|| {
        LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.leader_election_namespace),
            &args.leader_election_lease,
            &identity,
            args.leader_election_duration,
        )
    });
    if let Some(elector) = &elector {
        tokio::select! {
            r = elector.acquire() => r?,
            _ = shutdown.cancelled() => return finish(http).await,
        }
        metrics.leader.set(1);
    }

    let config = OperatorConfig {
        storage_uri: args.storage_uri.clone(),
        slurm_url: args.slurm_url.clone(),
        slurm_token_file: args.slurm_token_file.clone(),
        slurm_allow_http_loopback: args.slurm_allow_http_loopback,
        namespace: args.leader_election_namespace.clone(),
        worker_command: vec![args.worker.clone()],
        worker_image: args.worker_image.clone(),
        pod_worker_command: args.worker_pod_command.clone(),
        worker_scratch_bytes: args.worker_scratch_size,
        scratch,
        job_lease: args.job_lease,
        tick: args.tick,
        status_interval: args.status_interval,
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "orch-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    loop {
        tokio::select! {
            ready = policies.wait_until_ready() => {
                ready.context("the OrchPolicy watch ended")?;
                break;
            }
            _ = tokio::time::sleep(Duration::from_secs(10)) => warn!(
                "still waiting for the list of OrchPolicies (is the OrchPolicy CRD installed, and may this service account list them?)"
            ),
            _ = shutdown.cancelled() => return finish(http).await,
        }
    }
    info!(policies = policies.state().len(), "OrchPolicies listed");
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        Supervisors::default(),
        recorder,
        metrics.clone(),
        policies,
    ));
    // One API per watched namespace (all of them: one cluster-wide API).
    let scopes: Vec<Option<&str>> = if args.watch_namespace.is_empty() {
        vec![None]
    } else {
        args.watch_namespace
            .iter()
            .map(|ns| Some(ns.as_str()))
            .collect()
    };
    let lost_lease = CancellationToken::new();
    if let Some(elector) = elector.as_ref() {
        let (shutdown, lost_lease) = (shutdown.clone(), lost_lease.clone());
        let holder = elector.clone();
        tokio::spawn(async move {
            holder.hold().await;
            lost_lease.cancel();
            shutdown.cancel();
        });
    }

    let watched = if args.watch_namespace.is_empty() {
        "<all>".to_string()
    } else {
        args.watch_namespace.join(",")
    };
    info!(namespaces = %watched, "starting the OrchJob and RateLimit controllers");
    let stopped = || {
        let stop = shutdown.clone();
        async move { stop.cancelled().await }
    };
    let mut controllers = Vec::new();
    for namespace in scopes {
        let limits: Api<RateLimit> = scoped(&client, namespace);
        let jobs: Api<Watched> = scoped(&client, namespace);
        let groups: Api<TaskGroup> = scoped(&client, namespace);
        let rate_limit_controller = Controller::new(limits, watcher::Config::default())
            .graceful_shutdown_on(stopped())
            .run(
                rate_limits::reconcile,
                rate_limits::error_policy,
                ctx.clone(),
            )
            .for_each(|result| async move {
                if let Err(e) = result {
                    warn!(error = %e, "rate limit controller");
                }
            });
        let job_controller = Controller::new(jobs, watcher::Config::default())
            .owns(
                groups,
                watcher::Config::default().labels("app.kubernetes.io/managed-by=orch-operator"),
            )
            .with_config(controller::Config::default().concurrency(args.concurrency))
            .graceful_shutdown_on(stopped())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    warn!(error = %e, "controller");
                }
            });
        controllers.push(futures::future::join(job_controller, rate_limit_controller).boxed());
    }
    futures::future::join_all(controllers).await;

    info!("stopping the job drivers");
    ctx.supervisors.stop_all().await;
    if let Some(elector) = &elector {
        elector.release().await;
    }
    shutdown.cancel();
    finish(http).await?;
    if lost_lease.is_cancelled() {
        anyhow::bail!("lost the leader Lease");
    }
    Ok(())
}

/// The API of `K` in one namespace, or in all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts the read-only dashboard of the jobs of the namespaces this operator serves.
async fn serve_dashboard(
    addr: SocketAddr,
    storages: orch_operator::dashboard::NamespaceStorages,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the dashboard"))?;
    info!(address = %listener.local_addr()?, "serving the dashboard (read-only)");
    let dashboard = orch_dashboard::Dashboard::of_sources(Arc::new(storages), false, None);
    tokio::spawn(async move {
        let stopped = async move { shutdown.cancelled().await };
        if let Err(e) = orch_dashboard::serve(dashboard, listener, stopped).await {
            warn!(error = %e, "the dashboard stopped");
        }
    });
    Ok(())
}

async fn finish(http: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    http.await
        .context("the HTTP server task failed")?
        .context("the HTTP server failed")?;
    info!("stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGTERM (Kubernetes stopping the pod) or SIGINT.
async fn on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
