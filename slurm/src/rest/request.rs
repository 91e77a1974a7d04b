//! The bodies and paths of the requests that change something: the submission of an array
//! (whose shape differs between v0.0.38 and v0.0.40+) and the cancellation of tasks. The
//! allow-listed extra sbatch options and what the REST transport cannot send are in
//! docs/slurm.md ("Arrays", "Transports").

use serde_json::{Map, Value, json};

use super::ApiVersion;
use crate::error::{Result, SlurmError};
use crate::submission::{ArraySubmission, array_spec};

/// `PATH` of the tasks when the submission sets none: slurmrestd passes only the environment
/// it is given, and v0.0.38 refuses an empty one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A `--signal` value: `[B:]SIG[@seconds]`.
fn parse_signal(spec: &str) -> Result<(bool, String, u32)> {
    let bad = || {
        SlurmError::invalid(
            "spec.executor.slurm.checkpointGrace",
            format!("`--signal={spec}` cannot be expressed through slurmrestd"),
        )
    };
    let (batch, rest) = match spec.split_once(':') {
        Some(("B", rest)) => (true, rest),
        Some(_) => return Err(bad()),
        None => (false, spec),
    };
    let (signal, delay) = match rest.split_once('@') {
        Some((s, d)) => (s, d.parse::<u32>().map_err(|_| bad())?),
        None => (rest, 60),
    };
    if signal.is_empty() || !signal.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    Ok((batch, signal.to_string(), delay))
}

/// `{set, infinite, number}` as v0.0.40+ take numbers.
fn no_val(n: u64) -> Value {
    json!({ "set": true, "infinite": false, "number": n })
}

/// A size in MB from `--tmp`'s syntax (`500`, `10G`, `2048M`).
fn megabytes(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" => 1,
        "K" | "KB" => return Some(n.div_ceil(1024)),
        "G" | "GB" => 1024,
        "T" | "TB" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// sbatch's `--mail-type` names as v0.0.40+ flags.
fn mail_flags(value: &str) -> Option<Vec<&'static str>> {
    let mut out: Vec<&'static str> = Vec::new();
    for t in value.split(',') {
        let names: &[&'static str] = match t.trim().to_ascii_uppercase().as_str() {
            "NONE" => &[],
            "BEGIN" => &["BEGIN"],
            "END" => &["END"],
            "FAIL" => &["FAIL"],
            "REQUEUE" => &["REQUEUE"],
            "STAGE_OUT" => &["STAGE_OUT"],
            "ARRAY_TASKS" => &["ARRAY_TASKS"],
            "INVALID_DEPEND" => &["INVALID_DEPENDENCY"],
            "TIME_LIMIT" => &["TIME=100%"],
            "TIME_LIMIT_90" => &["TIME=90%"],
            "TIME_LIMIT_80" => &["TIME=80%"],
            "TIME_LIMIT_50" => &["TIME=50%"],
            "ALL" => &[
                "BEGIN",
                "END",
                "FAIL",
                "REQUEUE",
                "STAGE_OUT",
                "INVALID_DEPENDENCY",
            ],
            _ => return None,
        };
        for n in names {
            if !out.contains(n) {
                out.push(n);
            }
        }
    }
    Some(out)
}

/// The fields for the extra sbatch options, or which one the REST API cannot express.
fn extra_fields(version: ApiVersion, extra: &[String], job: &mut Map<String, Value>) -> Result<()> {
    for (i, option) in extra.iter().enumerate() {
        let field = format!("spec.executor.slurm.extraOptions[{i}]");
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option.as_str(), None),
        };
        let cannot = |why: &str| {
            SlurmError::invalid(
                field.clone(),
                format!(
                    "`{option}` cannot be sent through slurmrestd {version}{why}; use \
                     spec.executor.slurm.transport: cli, or drop it"
                ),
            )
        };
        let needs = || cannot(": it needs a value");
        if value.is_some_and(str::is_empty) {
            return Err(needs());
        }
        let modern = version.modern();
        let (key, v): (&str, Value) = match (name, value) {
            ("--exclusive", None) if modern => ("shared", json!(["none"])),
            ("--exclusive", None) => ("exclusive", json!("exclusive")),
            ("--requeue", None) => ("requeue", json!(true)),
            ("--no-requeue", None) if modern => ("requeue", json!(false)),
            ("--no-requeue", None) => ("no_requeue", json!(true)),
            ("--mail-type", Some(v)) if modern => (
                "mail_type",
                json!(mail_flags(v).ok_or_else(|| cannot(": unknown mail type"))?),
            ),
            ("--mail-type", Some(v)) => ("mail_type", json!(v)),
            ("--mail-user", Some(v)) => ("mail_user", json!(v)),
            ("--reservation", Some(v)) => ("reservation", json!(v)),
            ("--nice", Some(v)) => (
                "nice",
                json!(
                    v.parse::<i64>()
                        .map_err(|_| cannot(": --nice takes a number"))?
                ),
            ),
            ("--licenses", Some(v)) => ("licenses", json!(v)),
            ("--hint", Some(_)) if modern => {
                return Err(cannot(": v0.0.40+ has no field for --hint"));
            }
            ("--hint", Some(v)) => ("cpu_binding_hint", json!(v)),
            ("--cpu-freq", Some(v)) => ("cpu_frequency", json!(v)),
            ("--tmp", Some(v)) if modern => (
                "temporary_disk_per_node",
                json!(megabytes(v).ok_or_else(|| cannot(": --tmp takes a size like 10G"))?),
            ),
            ("--tmp", Some(v)) => ("temporary_disk_per_node", json!(v)),
            ("--nodelist", Some(v)) if modern => ("required_nodes", json!(v)),
            ("--nodelist", Some(v)) => ("nodelist", json!(v)),
            ("--exclude", Some(v)) if modern => ("excluded_nodes", json!(v)),
            ("--exclude", Some(v)) => ("exclude_nodes", json!(v)),
            ("--cluster-constraint", Some(v)) => ("cluster_constraint", json!(v)),
            (
                "--mail-type"
                | "--mail-user"
                | "--reservation"
                | "--nice"
                | "--licenses"
                | "--hint"
                | "--cpu-freq"
                | "--tmp"
                | "--nodelist"
                | "--exclude"
                | "--cluster-constraint",
                None,
            ) => return Err(needs()),
            _ => return Err(cannot("")),
        };
        job.insert(key.to_string(), v);
    }
    Ok(())
}

/// `--gres` as v0.0.40+'s `tres_per_node`: `gpu:2,mps:10` → `gres/gpu:2,gres/mps:10`.
fn tres_per_node(gres: &str) -> String {
    gres.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| {
            if let Some(rest) = g.strip_prefix("gres:") {
                format!("gres/{rest}")
            } else if g.starts_with("gres/") {
                g.to_string()
            } else {
                format!("gres/{g}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The body of `POST /slurm/<version>/job/submit` for one array.
pub(crate) fn submit_body(version: ApiVersion, a: &ArraySubmission) -> Result<Value> {
    let mut job = Map::new();
    let mut put = |k: &str, v: Value| {
        job.insert(k.to_string(), v);
    };
    put("name", json!(a.name));
    put("comment", json!(a.comment));
    put("array", json!(a.array_spec()));
    put("cpus_per_task", json!(a.cpus_per_task));
    put(
        "current_working_directory",
        json!(a.workdir.display().to_string()),
    );
    put("standard_output", json!(a.output));
    put("standard_error", json!(a.output));
    for (key, value) in [
        ("partition", &a.partition),
        ("account", &a.account),
        ("qos", &a.qos),
        ("constraints", &a.constraint),
    ] {
        if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
            put(key, json!(v));
        }
    }
    let mut environment: Vec<(String, String)> = a.environment.clone();
    if !environment.iter().any(|(k, _)| k == "PATH") {
        environment.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if version.modern() {
        put("script", json!(a.script));
        put("memory_per_node", no_val(a.memory_mb));
        put("time_limit", no_val(a.time_minutes));
        if let Some(g) = a.gres.as_deref().filter(|g| !g.is_empty()) {
            put("tres_per_node", json!(tres_per_node(g)));
        }
        let (batch, signal, delay) = parse_signal(&a.signal)?;
        put("kill_warning_signal", json!(signal));
        put("kill_warning_delay", no_val(u64::from(delay)));
        if batch {
            put("kill_warning_flags", json!(["BATCH_JOB"]));
        }
        put(
            "environment",
            Value::Array(
                environment
                    .iter()
                    .map(|(k, v)| Value::String(format!("{k}={v}")))
                    .collect(),
            ),
        );
    } else {
        put("memory_per_node", json!(a.memory_mb));
        put("time_limit", json!(a.time_minutes));
        if let Some(g) = a.gres.as_deref().filter(|g| !g.is_empty()) {
            put("gres", json!(g));
        }
        // slurmrestd 22.05 parses `--signal` as a daemon that is not sbatch, which ignores
        // `B:` and then fails on it: the signal can only go to the job's steps.
        let (_, signal, delay) = parse_signal(&a.signal)?;
        put("signal", json!(format!("{signal}@{delay}")));
        put(
            "environment",
            Value::Object(
                environment
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    extra_fields(version, &a.extra, &mut job)?;
    Ok(if version.modern() {
        json!({ "job": job })
    } else {
        json!({ "script": a.script, "job": job })
    })
}

/// One cancel request: a path under `/slurm/<version>/` and maybe a body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CancelRequest {
    pub path: String,
    pub body: Option<Value>,
}

/// The requests that cancel these tasks of an array (all of them when `indices` is empty).
/// A whole array is one `DELETE job/<id>`. Some tasks are, on v0.0.38, one
/// `DELETE job/<id>_<first>-<last>` per run of consecutive indices, and on v0.0.40+ a single
/// `DELETE jobs/` with the task ids in the body (the single-job `DELETE` there ignores the task
/// id before Slurm 24.11 and would cancel the whole array).
pub(crate) fn cancel_requests(
    version: ApiVersion,
    array_job_id: u64,
    indices: &[u32],
) -> Vec<CancelRequest> {
    let mut indices = indices.to_vec();
    indices.sort_unstable();
    indices.dedup();
    if indices.is_empty() {
        return vec![CancelRequest {
            path: format!("job/{array_job_id}"),
            body: None,
        }];
    }
    if version.modern() {
        let jobs: Vec<String> = indices
            .iter()
            .map(|i| format!("{array_job_id}_{i}"))
            .collect();
        return vec![CancelRequest {
            path: "jobs/".into(),
            body: Some(json!({ "jobs": jobs, "signal": "KILL" })),
        }];
    }
    // One request per run of indices (`12_0-3`, `12_7`): slurmctld takes a range after the
    // `_`, but slurmrestd 22.05 refuses a `,` (or an encoded `[`) in the path.
    array_spec(&indices, None)
        .split(',')
        .map(|range| CancelRequest {
            path: format!("job/{array_job_id}_{range}"),
            body: None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::submission;
    use super::*;

    #[test]
    fn submit_body_v0_0_38() {
        let body = submit_body(ApiVersion::V0_0_38, &submission()).unwrap();
        assert_eq!(
            body,
            json!({
                "script": "#!/bin/sh\nexec orch-worker run\n",
                "job": {
                    "name": "reviews-1a2b",
                    "comment": "orch:work:g3:b1001:0123456789ab",
                    "array": "0-3,7,9-10%4",
                    "cpus_per_task": 2,
                    "current_working_directory": "/shared/work",
                    "standard_output": "/shared/logs/task-b1001-%A_%a.log",
                    "standard_error": "/shared/logs/task-b1001-%A_%a.log",
                    "partition": "debug",
                    "account": "orch",
                    "constraints": "avx2",
                    "memory_per_node": 1500,
                    "time_limit": 20,
                    "gres": "gpu:1",
                    "signal": "TERM@60",
                    "environment": {"ORCH_LOG": "info", "PATH": DEFAULT_PATH},
                }
            })
        );
    }

    #[test]
    fn submit_body_v0_0_40_and_later() {
        let mut sub = submission();
        sub.environment
            .push(("PATH".into(), "/opt/orch/bin:/usr/bin".into()));
        for version in [
            ApiVersion::V0_0_40,
            ApiVersion::V0_0_41,
            ApiVersion::V0_0_42,
        ] {
            let body = submit_body(version, &sub).unwrap();
            assert!(
                body.get("script").is_none(),
                "{version}: the script goes in job"
            );
            let job = &body["job"];
            assert_eq!(job["script"], json!("#!/bin/sh\nexec orch-worker run\n"));
            assert_eq!(job["array"], json!("0-3,7,9-10%4"));
            assert_eq!(
                job["memory_per_node"],
                json!({"set": true, "infinite": false, "number": 1500})
            );
            assert_eq!(
                job["time_limit"],
                json!({"set": true, "infinite": false, "number": 20})
            );
            assert_eq!(job["tres_per_node"], json!("gres/gpu:1"));
            assert!(job.get("gres").is_none());
            assert_eq!(job["kill_warning_signal"], json!("TERM"));
            assert_eq!(
                job["kill_warning_delay"],
                json!({"set": true, "infinite": false, "number": 60})
            );
            assert_eq!(job["kill_warning_flags"], json!(["BATCH_JOB"]));
            assert_eq!(
                job["environment"],
                json!(["ORCH_LOG=info", "PATH=/opt/orch/bin:/usr/bin"])
            );
            assert_eq!(job["constraints"], json!("avx2"));
            assert!(job.get("qos").is_none());
        }
        assert_eq!(
            tres_per_node("gpu:a100:2, mps:10,gres:shard:1"),
            "gres/gpu:a100:2,gres/mps:10,gres/shard:1"
        );
    }

    #[test]
    fn extra_options_map_to_fields_or_are_refused() {
        let mut sub = submission();
        sub.extra = vec![
            "--exclusive".into(),
            "--no-requeue".into(),
            "--mail-type=END,TIME_LIMIT_90".into(),
            "--mail-user=ops@example.invalid".into(),
            "--reservation=r1".into(),
            "--nice=10".into(),
            "--licenses=matlab:1".into(),
            "--cpu-freq=high".into(),
            "--tmp=10G".into(),
            "--nodelist=n[1-2]".into(),
            "--exclude=n3".into(),
            "--cluster-constraint=fast".into(),
        ];
        let old = submit_body(ApiVersion::V0_0_38, &sub).unwrap();
        let job = &old["job"];
        assert_eq!(job["exclusive"], json!("exclusive"));
        assert_eq!(job["no_requeue"], json!(true));
        assert_eq!(job["mail_type"], json!("END,TIME_LIMIT_90"));
        assert_eq!(job["nice"], json!(10));
        assert_eq!(job["temporary_disk_per_node"], json!("10G"));
        assert_eq!(job["nodelist"], json!("n[1-2]"));
        assert_eq!(job["exclude_nodes"], json!("n3"));
        let new = submit_body(ApiVersion::V0_0_41, &sub).unwrap();
        let job = &new["job"];
        assert_eq!(job["shared"], json!(["none"]));
        assert_eq!(job["requeue"], json!(false));
        assert_eq!(job["mail_type"], json!(["END", "TIME=90%"]));
        assert_eq!(job["mail_user"], json!("ops@example.invalid"));
        assert_eq!(job["reservation"], json!("r1"));
        assert_eq!(job["licenses"], json!("matlab:1"));
        assert_eq!(job["cpu_frequency"], json!("high"));
        assert_eq!(job["temporary_disk_per_node"], json!(10240));
        assert_eq!(job["required_nodes"], json!("n[1-2]"));
        assert_eq!(job["excluded_nodes"], json!("n3"));
        assert_eq!(job["cluster_constraint"], json!("fast"));

        sub.extra = vec!["--exclusive".into(), "--hint=nomultithread".into()];
        assert_eq!(
            submit_body(ApiVersion::V0_0_38, &sub).unwrap()["job"]["cpu_binding_hint"],
            json!("nomultithread")
        );
        match submit_body(ApiVersion::V0_0_40, &sub).unwrap_err() {
            SlurmError::Invalid { field, reason } => {
                assert_eq!(field, "spec.executor.slurm.extraOptions[1]");
                assert!(
                    reason.contains("--hint") && reason.contains("v0.0.40"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        sub.extra = vec!["--uid=0".into()];
        assert!(matches!(
            submit_body(ApiVersion::V0_0_38, &sub),
            Err(SlurmError::Invalid { .. })
        ));
        sub.extra = vec!["--mail-type=SOMETIMES".into()];
        assert!(submit_body(ApiVersion::V0_0_42, &sub).is_err());
    }

    #[test]
    fn cancel_requests_per_version() {
        assert_eq!(
            cancel_requests(ApiVersion::V0_0_38, 53, &[]),
            [CancelRequest {
                path: "job/53".into(),
                body: None
            }]
        );
        let paths: Vec<String> =
            cancel_requests(ApiVersion::V0_0_38, 53, &[12, 0, 1, 2, 3, 7, 9, 10, 11, 3])
                .into_iter()
                .map(|r| r.path)
                .collect();
        assert_eq!(paths, ["job/53_0-3", "job/53_7", "job/53_9-12"]);
        assert_eq!(
            cancel_requests(ApiVersion::V0_0_41, 53, &[7, 1]),
            [CancelRequest {
                path: "jobs/".into(),
                body: Some(json!({"jobs": ["53_1", "53_7"], "signal": "KILL"}))
            }]
        );
    }
}
