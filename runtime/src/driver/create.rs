//! Creating a job: its record, the batch manifest and one task row per batch, written once
//! when a job file is first run (docs/architecture.md).

use super::*;

pub(super) fn new_job_record(
    job: &LoadedJob,
    id: &str,
    fingerprint: &str,
    plan: &PartitionPlan,
    now: u64,
) -> JobRecord {
    JobRecord {
        schema_version: SCHEMA_VERSION,
        id: id.to_string(),
        phase: JobPhase::Running,
        spec: job.file.clone(),
        input_fingerprint: fingerprint.to_string(),
        total_tasks: plan.batches.len() as u32,
        total_items: plan.items,
        created_at: now,
        updated_at: now,
        finished_at: None,
        message: None,
        cancel_requested: false,
        next_group: 0,
        manifest_sha256: None,
        version: 0,
    }
}

/// Plans the job within `budget`, then writes what it is made of, in this order: the
/// decompressed input (while planning), the batch manifest, the spec snapshot, and last the job
/// row with its task rows in one transaction. Only the row makes the job exist: a driver that
/// stops before it (a crash, a budget passed) leaves no job, and the next run plans again and
/// overwrites the same keys. A failed plan removes the decompressed input it stored.
pub(super) async fn create(
    job: &LoadedJob,
    target: PlanTarget<'_>,
    sources: &[input::Source],
    fingerprint: &str,
    rate_limits: Vec<orch_core::model::LimitBinding>,
    budget: &PlanBudget,
) -> Result<JobRecord> {
    let started = std::time::Instant::now();
    let (backends, id) = (target.backends, target.job);
    // Compressed input is decompressed into the job's storage, where workers read ranges.
    let planned = input::plan(&job.file.spec, sources, Some(target), budget).await;
    let InputPlan {
        batches: p,
        columns,
    } = match planned {
        Ok(plan) => plan,
        Err(e) => {
            if let Err(cleanup) = backends
                .objects
                .delete_prefix(&input::decompressed_prefix(id))
                .await
            {
                warn!(error = %cleanup, "cannot remove the decompressed input of a failed plan");
            }
            return Err(e);
        }
    };
    info!(
        batches = p.batches.len(),
        items = p.items,
        bytes = p.bytes,
        ms = started.elapsed().as_millis() as u64,
        "partitioned the input"
    );
    let now = now_ms();
    let mut record = new_job_record(job, id, fingerprint, &p, now);
    let mut manifest = Vec::with_capacity(p.batches.len() * 96);
    for b in &p.batches {
        serde_json::to_writer(&mut manifest, b).map_err(|source| orch_core::Error::Decode {
            what: "batch manifest".into(),
            source,
        })?;
        manifest.push(b'\n');
    }
    backends.objects.put(&layout::batches(id), manifest).await?;
    let snapshot = JobManifest {
        schema_version: SCHEMA_VERSION,
        id: id.to_string(),
        spec: job.file.clone(),
        input_fingerprint: fingerprint.to_string(),
        total_items: p.items,
        total_tasks: p.batches.len() as u32,
        columns,
        rate_limits,
    };
    let bytes =
        serde_json::to_vec_pretty(&snapshot).map_err(|source| orch_core::Error::Decode {
            what: "job manifest".into(),
            source,
        })?;
    record.manifest_sha256 = Some(orch_core::model::manifest_sha256(&bytes));
    backends
        .objects
        .put(&layout::job_manifest(id), bytes)
        .await?;
    let tasks: Vec<TaskRecord> = p
        .batches
        .iter()
        .map(|b| TaskRecord {
            batch: Some(b.clone()),
            ..TaskRecord::new(id, b.id, b.items, now)
        })
        .collect();
    backends.state.create_job(&record, &tasks).await?;
    Ok(backends.state.get_job(id).await?.unwrap_or(record))
}
