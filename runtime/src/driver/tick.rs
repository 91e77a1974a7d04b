//! The loop that drives a created job: observe the stores and the executor, let the engine
//! decide, carry out its decision, until the job ends (docs/architecture.md).

use super::*;

pub(super) struct Loop<'a> {
    pub(super) cfg: EngineConfig,
    pub(super) id: String,
    pub(super) platform: &'a dyn Platform,
    pub(super) queue: &'a dyn Queue,
    pub(super) executor: &'a dyn Executor,
    pub(super) lease: &'a dyn JobLease,
    /// Whether the executor was told to pause (the job's `spec.suspend`).
    pub(super) paused: bool,
    /// The job's rate-limit buckets, where a pause is marked for its workers.
    pub(super) rate_limits: Vec<orch_core::model::LimitBinding>,
    /// Given to every task group: the digest its workers check `job.json` against.
    pub(super) manifest_sha256: Option<String>,
    pub(super) meter: Option<crate::metrics::JobMeter>,
    /// The job's alert rules and their delivery (taken at the end, for the job's last word).
    pub(super) alerts: Option<crate::alerts::JobAlerts>,
}

impl Loop<'_> {
    /// [`Loop::drive`], started again after a store error that may pass (a network outage, a
    /// throttled service): everything the loop knows is in the stores, so a new start picks up
    /// where the failed one stopped. Gives up when the stores stay unreachable for
    /// [`STORE_OUTAGE_LIMIT`].
    pub(super) async fn drive_through_outages(&mut self, opts: &RunOptions) -> Result<JobRecord> {
        let mut outage_since: Option<std::time::Instant> = None;
        let mut failures = 0;
        // One cache for every start: a start after an outage goes on from its cursor (a store
        // that tracks changes keeps what each cursor needs; one abandoned per restart would
        // cost a full read, and memory until the store lets it go).
        let cache = opts.task_cache.clone().unwrap_or_default();
        loop {
            let started = std::time::Instant::now();
            let error = match self.drive(opts, &cache).await {
                // A full disk does not pass by waiting: stop and say so at once.
                Err(Error::Backend(e))
                    if matches!(
                        e.category(),
                        ErrorCategory::Transient | ErrorCategory::Infrastructure
                    ) && !orch_core::error::is_disk_full(&e) =>
                {
                    e
                }
                other => return other,
            };
            // A start that ran a while before failing ends the previous outage.
            if started.elapsed() > STORE_OUTAGE_LIMIT / 4 {
                outage_since = None;
                failures = 0;
            }
            let since = *outage_since.get_or_insert(started);
            if since.elapsed() > STORE_OUTAGE_LIMIT {
                return Err(Error::Backend(error));
            }
            failures += 1;
            let pause = OUTAGE_BACKOFF.delay(failures);
            warn!(error = %error, retry_in_ms = pause.as_millis() as u64, "the job's stores failed; trying again");
            tokio::time::sleep(pause).await;
        }
    }

    async fn drive(&mut self, opts: &RunOptions, cache: &SharedTaskCache) -> Result<JobRecord> {
        let state = &self.platform.backends().state;
        cache.lock().await.refresh(state.as_ref(), &self.id).await?;
        loop {
            let tick_started = std::time::Instant::now();
            if self.lease.lost() {
                return Err(Error::Invalid(format!(
                    "another `orch run` took job {} over (this run's lease expired); stopping",
                    self.id
                )));
            }
            // Executor first, rows second: a worker commits before it exits (engine docs). The
            // attempts to ask about come from the previous read; a task dispatched since then
            // is simply asked about on the next tick.
            let active: Vec<(u32, u32, Option<String>)> = cache
                .lock()
                .await
                .rows()
                .iter()
                .filter(|t| matches!(t.state, TaskState::Dispatched | TaskState::Running))
                .map(|t| (t.id, t.attempt, t.executor_id.clone()))
                .collect();
            let mut polled: HashMap<u32, ExecState> = self
                .executor
                .poll(&active)
                .await?
                .into_iter()
                .map(|s| (s.task, s.state))
                .collect();
            let job = state.get_job(&self.id).await?.ok_or_else(|| {
                Error::Invalid(format!("job {} disappeared from the state store", self.id))
            })?;
            // Ended while paused: its mark leaves the buckets too.
            let suspend = job.spec.spec.suspend && !job.phase.is_terminal();
            if suspend != self.paused {
                if suspend {
                    info!("the job was paused: holding tasks that have not started");
                    self.executor.pause().await?;
                } else if !job.phase.is_terminal() {
                    info!("the job was resumed");
                    self.executor.resume().await?;
                }
                let store = self.platform.backends().rate_limits.clone();
                crate::rate_limits::set_paused(
                    store.as_ref(),
                    &self.rate_limits,
                    &self.id,
                    suspend,
                )
                .await?;
                self.paused = suspend;
            }
            if job.phase.is_terminal() {
                return Ok(job);
            }
            let now = now_ms();
            let retry_due = cache
                .lock()
                .await
                .refresh(state.as_ref(), &self.id)
                .await?
                .iter()
                .any(|t| t.state == TaskState::Retrying && t.retry_at.is_none_or(|at| at <= now));
            // The queue is asked only when a retry is due: most ticks of a healthy job then cost
            // no queue call at all (on SQS, each one is a request and a long-poll wait). The
            // rows are not locked meanwhile: the operator's status reads them too.
            let due = if retry_due {
                self.due_retries().await?
            } else {
                Vec::new()
            };
            let rows = cache.lock().await;
            let tasks = rows.rows();
            // A polled attempt that has moved on (retried meanwhile) says nothing about the
            // current one.
            let current = |id: &u32| {
                tasks
                    .binary_search_by_key(id, |t| t.id)
                    .ok()
                    .map(|i| tasks[i].attempt)
            };
            let exec: HashMap<u32, ExecState> = active
                .iter()
                .filter(|(id, attempt, _)| current(id) == Some(*attempt))
                .filter_map(|(id, _, _)| Some((*id, polled.remove(id)?)))
                .collect();
            // Workers the executor never started (an earlier `orch run` did) whose process is
            // gone: asked only of running rows the executor knows nothing of, rare after a
            // restart and never otherwise.
            let gone_workers: HashSet<u32> = tasks
                .iter()
                .filter(|t| {
                    t.state == TaskState::Running
                        && matches!(exec.get(&t.id), Some(ExecState::Unknown) | None)
                })
                .filter(|t| {
                    t.lease_owner
                        .as_deref()
                        .is_some_and(|o| self.executor.worker_gone(o))
                })
                .map(|t| t.id)
                .collect();
            let decision = engine::decide(
                &self.cfg,
                Observation {
                    now,
                    job: &job,
                    tasks,
                    exec: &exec,
                    due_retries: &due,
                    gone_workers: &gone_workers,
                },
            );
            let shown = progress(&job, tasks);
            if let Some(meter) = &mut self.meter {
                meter.observe(tasks, &shown);
            }
            if let Some(alerts) = &mut self.alerts {
                alerts.observe(now, &job, tasks);
            }
            drop(rows);
            (opts.on_progress)(&shown);
            if decision.plan_aggregation || decision.finish {
                let job = match decision.job.clone() {
                    Some(j) => match state.update_job(&j).await {
                        Ok(stored) => stored,
                        // Someone changed the job meanwhile (e.g. a cancel): decide again.
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(e.into()),
                    },
                    None => job,
                };
                let tasks = state.list_tasks(&self.id).await?;
                let backends = self.platform.backends();
                let ended = if decision.plan_aggregation {
                    match aggregate::plan(backends, &job, &tasks).await {
                        Ok(merges) => {
                            aggregate::store_planned(state.as_ref(), &self.id, &tasks, &merges)
                                .await?;
                            continue;
                        }
                        Err(e) => e,
                    }
                } else {
                    let done = engine::verdict(&self.cfg, &job, &tasks, now_ms());
                    let succeeded = done.phase == JobPhase::Succeeded;
                    match aggregate::finish(backends, &job, &tasks, succeeded).await {
                        Ok(()) => return self.end(done, &tasks).await,
                        Err(e) => e,
                    }
                };
                // Trouble that may pass leaves the job resumable; anything else (a result
                // that fails its checksum, an unusable output location) ends it.
                if matches!(
                    ended.category(),
                    ErrorCategory::Infrastructure | ErrorCategory::Transient
                ) {
                    return Err(ended);
                }
                let mut failed = engine::verdict(&self.cfg, &job, &tasks, now_ms());
                failed.phase = JobPhase::Failed;
                failed.message = Some(format!("aggregation failed: {ended}"));
                return self.end(failed, &tasks).await;
            }
            let idle = decision.is_empty();
            self.apply(decision, &exec).await?;
            if idle {
                // Wake early when a worker ends; otherwise look again after one tick.
                let work = tick_started.elapsed();
                self.executor.wait_change(opts.tick).await;
                // A tick still looks at every task (in memory), so with thousands of short
                // tasks ending one by one the coordinator would spend a core on ticks. Spacing
                // ticks by fifty times their own cost keeps it near 2 % of a core at any job
                // size; every pending task is already dispatched, so a later look only
                // delays the progress shown, and small jobs still tick every 25 ms.
                let floor = (work * 50).clamp(MIN_TICK_SPACING, MAX_TICK_SPACING);
                if let Some(rest) = floor.checked_sub(tick_started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        }
    }

    /// Writes the job's end and says so; `tasks` are its rows as the end was decided on.
    async fn end(&mut self, done: JobRecord, tasks: &[TaskRecord]) -> Result<JobRecord> {
        let state = self.platform.backends().state.as_ref();
        let done = finish_job(state, done).await?;
        if let Some(meter) = &mut self.meter {
            meter.ended(tasks, &progress(&done, tasks));
        }
        info!(
            phase = %done.phase,
            message = done.message.as_deref().unwrap_or(""),
            coordinator_cpu_ms = own_cpu_ms(),
            "job finished"
        );
        Ok(done)
    }

    async fn due_retries(&self) -> Result<Vec<DueRetry>> {
        let mut due = Vec::new();
        for m in self.queue.receive(100, RETRY_VISIBILITY).await? {
            match serde_json::from_str::<RetryRequest>(&m.body) {
                // A queue shared by several jobs (SQS): another driver's message goes back at
                // once instead of being deleted.
                Ok(request) if request.job != self.id => {
                    self.queue.extend(&m.receipt, Duration::ZERO).await?;
                }
                Ok(request) => due.push(DueRetry {
                    request,
                    receipt: m.receipt,
                }),
                Err(e) => {
                    warn!(error = %e, "dropping an unreadable retry message");
                    self.queue.delete(&m.receipt).await?;
                }
            }
        }
        Ok(due)
    }

    /// Carries out `d`; `exec` is what the executor said of each task's current attempt (for
    /// the attempt history of the attempts `d` ends).
    async fn apply(&mut self, d: engine::Decision, exec: &HashMap<u32, ExecState>) -> Result<()> {
        let state = &self.platform.backends().state;
        if let Some(job) = &d.job {
            match state.update_job(job).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        for dispatch in d.dispatches {
            let mut group = TaskGroup {
                job: self.id.clone(),
                id: dispatch.group,
                tasks: Vec::new(),
                kind: dispatch.kind,
                manifest_sha256: self.manifest_sha256.clone(),
            };
            // Ids known beforehand go into the dispatch write itself (see
            // `Executor::planned_ids`): a task is never seen dispatched without its id, and a
            // restarted driver finds what was submitted.
            let planned: HashMap<u32, String> = self
                .executor
                .planned_ids(&TaskGroup {
                    tasks: dispatch.tasks.iter().map(|t| (t.id, t.attempt)).collect(),
                    ..group.clone()
                })
                .map(|ids| ids.into_iter().collect())
                .unwrap_or_default();
            let mut written = Vec::new();
            for mut t in dispatch.tasks {
                t.executor_id = planned.get(&t.id).cloned();
                match state.update_task(&t).await {
                    Ok(stored) => {
                        group.tasks.push((stored.id, stored.attempt));
                        written.push(stored);
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if group.tasks.is_empty() {
                continue;
            }
            if let Some(meter) = &mut self.meter {
                meter.dispatched(&written);
            }
            let submitted = std::time::Instant::now();
            let submit = async {
                match self.executor.planned_ids(&group) {
                    // A row lost to a concurrent write changes the group, and with it the ids
                    // (a Slurm array's key covers its tasks): record those of the group
                    // submitted.
                    Some(ids) if written.len() < planned.len() => {
                        record_executor_ids(state.as_ref(), written, ids).await?;
                        self.executor.submit(&group).await?;
                    }
                    Some(_) => {
                        self.executor.submit(&group).await?;
                    }
                    None => {
                        let ids = self.executor.submit(&group).await?;
                        record_executor_ids(state.as_ref(), written, ids).await?;
                    }
                }
                Ok::<(), Error>(())
            }
            .await;
            if let Some(meter) = &self.meter {
                meter.submitted(submitted.elapsed(), submit.is_ok());
            }
            submit?;
        }
        for f in d.failures {
            match state.update_task(&f.task).await {
                Ok(stored) => {
                    // Only the write that ended the attempt completes its record.
                    history::ended_by_driver(state.as_ref(), &stored, exec.get(&stored.id), false)
                        .await;
                    if let (Some(meter), Some(err)) = (&mut self.meter, &stored.last_error) {
                        meter.lost(err.kind, f.retry.is_some());
                    }
                    if let Some(err) = &stored.last_error {
                        // A retry is routine (info); a task out of attempts is not (warn).
                        if stored.state == TaskState::Failed {
                            warn!(task = stored.id, attempt = err.attempt, kind = err.kind.as_str(), error = %err.message, "task failed after all its attempts");
                        } else {
                            info!(task = stored.id, attempt = err.attempt, kind = err.kind.as_str(), error = %err.message, "task attempt lost; retrying");
                        }
                    }
                    if let Some((req, delay)) = f.retry {
                        let body = serde_json::to_string(&req).map_err(|source| {
                            orch_core::Error::Decode {
                                what: "retry request".into(),
                                source,
                            }
                        })?;
                        self.queue.send(&body, Duration::from_millis(delay)).await?;
                    }
                }
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        for u in d.updates {
            match state.update_task(&u).await {
                Ok(stored) => {
                    // An attempt stopped with its job (the engine's cancel): its end.
                    if stored.state == TaskState::Cancelled
                        && d.cancel
                            .iter()
                            .any(|(id, attempt, _)| (*id, *attempt) == (stored.id, stored.attempt))
                    {
                        history::ended_by_driver(
                            state.as_ref(),
                            &stored,
                            exec.get(&stored.id),
                            true,
                        )
                        .await;
                    }
                }
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !d.cancel.is_empty() {
            self.executor.cancel(&d.cancel).await?;
        }
        for receipt in d.acks {
            self.queue.delete(&receipt).await?;
        }
        Ok(())
    }
}

/// Stores each task's executor id in its row. A worker may already have claimed the row; then
/// it keeps its state (the conflict is not an error).
async fn record_executor_ids(
    state: &dyn StateStore,
    written: Vec<TaskRecord>,
    ids: Vec<(u32, String)>,
) -> Result<()> {
    let mut ids: HashMap<u32, String> = ids.into_iter().collect();
    for mut t in written {
        if let Some(eid) = ids.remove(&t.id) {
            t.executor_id = Some(eid);
            if let Err(e) = state.update_task(&t).await
                && !e.is_conflict()
            {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// CPU time this process has used (user + system), from `/proc/self/stat`; 0 where that is
/// not available. Logged at the end of a job: the coordinator's own cost, without its workers.
fn own_cpu_ms() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may contain spaces, so split after its ')').
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3. Linux reports
    // them in clock ticks of USER_HZ, which is 100 on every mainstream configuration.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks * 10
}
