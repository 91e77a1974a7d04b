//! One background driver per `OrchJob` that this operator runs.
//!
//! A job runs for hours, a reconcile for milliseconds, so the reconciler does not run the job:
//! it starts a supervisor, which runs the same driver as `orch run` (`orch_runtime::driver`)
//! against the job's stores until the job ends, and restarts it with backoff when it fails
//! (a store outage, another operator still holding the job's lease after a crash). The
//! reconciler reads progress from the stores, never from the supervisor, so a restarted
//! operator sees exactly what the one before it saw.
//!
//! The reconciler looks at a running job every `--status-interval`; a supervisor's own state
//! (finished, refused, failing) is read then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_core::backoff::Backoff;
use orch_core::load::LoadedJob;
use orch_core::partition::PlanBudget;
use orch_core::platform::Platform;
use orch_executors::Executors;
use orch_runtime::driver::{self, RunOptions};
use orch_runtime::task_cache::SharedTaskCache;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// Pauses between two attempts to run a job whose driver failed.
const RESTART_BACKOFF: Backoff = Backoff::doubling(Duration::from_secs(2), Duration::from_secs(60));

/// How a supervised run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// The driver is running (or waiting to run again after a failure).
    Running,
    /// The driver returned: the job ended (the stores say how).
    Finished,
    /// The driver refused the job (a problem only running it revealed, e.g. an unknown Slurm
    /// partition); it is not retried until the spec changes.
    Rejected(String),
}

/// What the reconciler can read about a supervised run.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: RunState,
    /// The spec generation the run was started for.
    pub generation: i64,
    /// The driver's last failure, while it waits to run again.
    pub last_error: Option<String>,
}

struct Supervised {
    /// `namespace/name` of the `OrchJob`.
    object: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Mutex<Snapshot>>,
}

/// Everything a supervisor needs to run one job.
pub struct Launch {
    pub job: LoadedJob,
    /// The job's id in the stores (one per `OrchJob`).
    pub job_id: String,
    pub generation: i64,
    pub platform: Arc<dyn Platform>,
    /// The executors the job may run on (its spec picks one).
    pub executors: Arc<Executors>,
    pub tick: Duration,
    /// The job's task rows, shared with the status refresh.
    pub task_cache: SharedTaskCache,
    /// What planning the job may cost; passing it refuses the job.
    pub budget: PlanBudget,
    /// Where the driver's job metrics go (the operator's `/metrics`).
    pub metrics: orch_runtime::metrics::JobMetrics,
    /// Where the driver's figures go as CloudWatch EMF lines, if anywhere.
    pub emf: Option<orch_runtime::metrics::EmfLines>,
    /// The job's alerts as Events on its `OrchJob`, and its alert Secrets.
    pub alerts: orch_runtime::alerts::AlertOptions,
}

/// The supervisors of this operator, by `OrchJob` uid.
#[derive(Default)]
pub struct Supervisors {
    running: Mutex<HashMap<String, Supervised>>,
}

impl Supervisors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Supervised>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The run of `uid`, if one was started.
    pub fn snapshot(&self, uid: &str) -> Option<Snapshot> {
        self.lock().get(uid).map(|s| read(&s.shared).clone())
    }

    /// How many drivers run now.
    pub fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| read(&s.shared).state == RunState::Running)
            .count()
    }

    /// Starts a supervisor for `uid` unless one runs (a finished or rejected one is replaced).
    pub fn ensure(&self, uid: &str, object: &str, launch: impl FnOnce() -> Launch) {
        // Without a limit there is always room.
        let _ = self.ensure_within(uid, object, None, launch);
    }

    /// [`Supervisors::ensure`], unless `limit` = (namespace, n) and n drivers of that
    /// namespace run already: then nothing starts and the count is returned. Counted and
    /// started under one lock, so concurrent reconciles cannot both take the last place.
    pub fn ensure_within(
        &self,
        uid: &str,
        object: &str,
        limit: Option<(&str, u32)>,
        launch: impl FnOnce() -> Launch,
    ) -> Result<(), usize> {
        let mut running = self.lock();
        if running
            .get(uid)
            .is_some_and(|s| read(&s.shared).state == RunState::Running)
        {
            return Ok(());
        }
        if let Some((namespace, max)) = limit {
            let prefix = format!("{namespace}/");
            let in_namespace = running
                .values()
                .filter(|s| {
                    s.object.starts_with(&prefix) && read(&s.shared).state == RunState::Running
                })
                .count();
            if in_namespace >= max as usize {
                return Err(in_namespace);
            }
        }
        let launch = launch();
        let shared = Arc::new(Mutex::new(Snapshot {
            state: RunState::Running,
            generation: launch.generation,
            last_error: None,
        }));
        let stop = CancellationToken::new();
        let span = info_span!("supervisor", object = %object, job = %launch.job_id);
        let task = tokio::spawn(supervise(launch, shared.clone(), stop.clone()).instrument(span));
        running.insert(
            uid.to_string(),
            Supervised {
                stop,
                task,
                shared,
                object: object.to_string(),
            },
        );
        Ok(())
    }

    /// Stops the supervisor of `uid` and waits until its driver let go of the job (released
    /// its lease), so that another driver can take the job at once.
    pub async fn stop(&self, uid: &str) {
        let supervised = self.lock().remove(uid);
        if let Some(s) = supervised {
            s.stop.cancel();
            s.task.await.ok();
        }
    }

    /// Stops every supervisor (graceful shutdown): drivers stop between ticks and release
    /// their leases; workers and Slurm arrays go on and are found again by the next operator.
    pub async fn stop_all(&self) {
        let all: Vec<Supervised> = self.lock().drain().map(|(_, s)| s).collect();
        for s in &all {
            s.stop.cancel();
        }
        for s in all {
            s.task.await.ok();
        }
    }
}

fn read(shared: &Mutex<Snapshot>) -> std::sync::MutexGuard<'_, Snapshot> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

async fn supervise(launch: Launch, shared: Arc<Mutex<Snapshot>>, stop: CancellationToken) {
    let mut failures = 0;
    loop {
        let opts = RunOptions {
            executors: launch.executors.clone(),
            tick: launch.tick,
            on_progress: Box::new(|_| {}),
            stop: Some(stop.clone()),
            job_id: Some(launch.job_id.clone()),
            task_cache: Some(launch.task_cache.clone()),
            budget: launch.budget,
            retry: None,
            metrics: Some(launch.metrics.clone()),
            emf: launch.emf.clone(),
            alerts: launch.alerts.clone(),
        };
        info!("starting the job's driver");
        let result = driver::run(&launch.job, launch.platform.as_ref(), opts).await;
        if stop.is_cancelled() {
            info!("driver stopped");
            return;
        }
        match result {
            Ok(outcome) => {
                info!(job = %outcome.job.id, phase = %outcome.job.phase, "driver finished");
                read(&shared).state = RunState::Finished;
                return;
            }
            Err(orch_runtime::Error::Invalid(message)) => {
                warn!(%message, "the driver refused the job");
                read(&shared).state = RunState::Rejected(message);
                return;
            }
            Err(e) => {
                failures += 1;
                warn!(error = %e, category = ?e.category(), retry_in_s = RESTART_BACKOFF.delay(failures).as_secs(), "the job's driver failed; running it again");
                read(&shared).last_error = Some(e.to_string());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART_BACKOFF.delay(failures)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
