//! The answers of slurmrestd as they come over the wire. One set of types reads every
//! supported version: a number may come plain or as a `{set, infinite, number}` object, a state
//! as a string or a list, an exit code as a wait status or an object, so a field that changed
//! shape between versions still reads (docs/slurm.md, "Transports").

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `null` as the type's default (slurmrestd writes `null` for unset lists and strings).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// A decoded answer, with the errors and warnings every slurmrestd answer may carry.
pub(super) trait Answer: DeserializeOwned + Default {
    fn errors(&self) -> &[RawError];

    /// An error entry that reports nothing wrong.
    fn ignorable(_error: &RawError) -> bool {
        false
    }

    /// Whether the request took effect although errors came with it.
    fn done_despite_errors(&self) -> bool {
        false
    }
}

macro_rules! answer {
    ($t:ty) => {
        impl Answer for $t {
            fn errors(&self) -> &[RawError] {
                &self.errors
            }
        }
    };
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawError {
    #[serde(default)]
    pub(super) error: Option<Value>,
    #[serde(default)]
    pub(super) error_number: Option<RawNum>,
    #[serde(default)]
    pub(super) error_code: Option<RawNum>,
    /// v0.0.38 partitions.
    #[serde(default)]
    pub(super) errno: Option<RawNum>,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) source: Option<String>,
}

impl RawError {
    pub(super) fn number(&self) -> Option<i64> {
        self.error_number
            .as_ref()
            .or(self.error_code.as_ref())
            .or(self.errno.as_ref())
            .and_then(RawNum::value)
    }

    /// An entry with error number 0 reports success (v0.0.38 adds one after some updates).
    pub(super) fn real(&self) -> bool {
        self.number() != Some(0)
    }

    pub(super) fn text(&self) -> String {
        let error = match &self.error {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let mut parts: Vec<String> = Vec::new();
        if let Some(d) = self.description.as_deref().filter(|d| !d.is_empty()) {
            parts.push(d.to_string());
        }
        if !error.is_empty() && !parts.iter().any(|p| p == &error) {
            parts.push(error);
        }
        let mut text = if parts.is_empty() {
            "unspecified error".to_string()
        } else {
            parts.join(": ")
        };
        if let Some(n) = self.number() {
            text.push_str(&format!(" (Slurm error {n})"));
        }
        if let Some(s) = self.source.as_deref().filter(|s| !s.is_empty()) {
            text.push_str(&format!(" [{s}]"));
        }
        text
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct RawWarning {
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) source: Option<String>,
}

impl RawWarning {
    pub(super) fn text(&self) -> String {
        format!(
            "{} {}",
            self.description.as_deref().unwrap_or_default(),
            self.source.as_deref().unwrap_or_default()
        )
    }
}

/// A number as any version writes it: plain, `{set, infinite, number}`, or a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawNum {
    Int(i64),
    UInt(u64),
    Float(f64),
    Object {
        #[serde(default)]
        set: Option<bool>,
        #[serde(default)]
        infinite: Option<bool>,
        #[serde(default)]
        number: Option<Value>,
    },
    Text(String),
}

impl RawNum {
    /// The value when set and finite.
    pub(super) fn value(&self) -> Option<i64> {
        match self {
            RawNum::Int(n) => Some(*n),
            RawNum::UInt(n) => i64::try_from(*n).ok(),
            RawNum::Float(f) => Some(*f as i64),
            RawNum::Object {
                set,
                infinite,
                number,
            } => {
                if *infinite == Some(true) || *set == Some(false) {
                    return None;
                }
                number.as_ref().and_then(Value::as_i64)
            }
            RawNum::Text(s) => s.trim().parse().ok(),
        }
    }

    pub(super) fn infinite(&self) -> bool {
        match self {
            RawNum::Object { infinite, .. } => *infinite == Some(true),
            RawNum::Text(s) => {
                let s = s.trim().to_ascii_lowercase();
                s == "infinity" || s == "infinite" || s == "unlimited"
            }
            _ => false,
        }
    }
}

/// A state as a string (v0.0.38) or a list of a base state and flags (v0.0.40+).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStates {
    One(String),
    Many(Vec<String>),
}

impl RawStates {
    pub(super) fn list(&self) -> Vec<String> {
        match self {
            RawStates::One(s) => vec![s.clone()],
            RawStates::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawSignal {
    #[serde(default)]
    pub(super) id: Option<RawNum>,
}

/// An exit code: the raw wait status (v0.0.38) or `{status, return_code, signal}` (v0.0.40+).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawExit {
    Status(i64),
    Verbose {
        #[serde(default)]
        status: Option<RawStates>,
        #[serde(default)]
        return_code: Option<RawNum>,
        #[serde(default)]
        signal: Option<RawSignal>,
    },
}

impl RawExit {
    /// (exit code, signal).
    pub(super) fn decode(&self) -> (Option<i32>, Option<i32>) {
        match self {
            RawExit::Status(status) => wait_status(*status),
            RawExit::Verbose {
                status,
                return_code,
                signal,
            } => {
                let flags = status.as_ref().map(RawStates::list).unwrap_or_default();
                if flags.iter().any(|f| f.eq_ignore_ascii_case("PENDING")) {
                    return (None, None);
                }
                let code = return_code
                    .as_ref()
                    .and_then(RawNum::value)
                    .and_then(|c| i32::try_from(c).ok());
                let signal = signal
                    .as_ref()
                    .and_then(|s| s.id.as_ref())
                    .and_then(RawNum::value)
                    .and_then(|c| i32::try_from(c).ok())
                    .filter(|s| *s > 0);
                (if signal.is_some() { None } else { code }, signal)
            }
        }
    }
}

/// A wait status as `waitpid` gives it: exit code in bits 8–15, else the signal in bits 0–6.
pub(super) fn wait_status(status: i64) -> (Option<i32>, Option<i32>) {
    if !(0..0xffff_fffe).contains(&status) {
        return (None, None);
    }
    let signal = (status & 0x7f) as i32;
    if signal == 0 {
        (Some(((status >> 8) & 0xff) as i32), None)
    } else {
        (None, Some(signal))
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct RawJob {
    #[serde(default)]
    pub(super) array_job_id: Option<RawNum>,
    #[serde(default)]
    pub(super) array_task_id: Option<RawNum>,
    #[serde(default)]
    pub(super) array_task_string: Option<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) comment: Option<String>,
    #[serde(default)]
    pub(super) job_state: Option<RawStates>,
    #[serde(default)]
    pub(super) exit_code: Option<RawExit>,
    #[serde(default)]
    pub(super) state_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Generic {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) errors: Vec<RawError>,
}
answer!(Generic);

#[derive(Debug, Default, Deserialize)]
pub(super) struct OpenApiDoc {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) paths: BTreeMap<String, IgnoredAny>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) errors: Vec<RawError>,
}
answer!(OpenApiDoc);

#[derive(Debug, Default, Deserialize)]
pub(super) struct JobsResponse {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) jobs: Vec<RawJob>,
    #[serde(default)]
    pub(super) last_update: Option<RawNum>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) errors: Vec<RawError>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) warnings: Vec<RawWarning>,
}
answer!(JobsResponse);

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawMaximums {
    #[serde(default)]
    pub(super) time: Option<RawNum>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawPartition {
    #[serde(default)]
    pub(super) name: Option<String>,
    /// v0.0.38: minutes, -1 when unlimited.
    #[serde(default)]
    pub(super) max_time_limit: Option<RawNum>,
    /// v0.0.40+: `maximums.time`.
    #[serde(default)]
    pub(super) maximums: Option<RawMaximums>,
    /// v0.0.38: includes `default`; absent in v0.0.40+.
    #[serde(default, deserialize_with = "nullable")]
    pub(super) flags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PartitionsResponse {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) partitions: Vec<RawPartition>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) errors: Vec<RawError>,
}
answer!(PartitionsResponse);

#[derive(Debug, Default, Deserialize)]
pub(super) struct SubmitResponse {
    #[serde(default)]
    pub(super) job_id: Option<RawNum>,
    #[serde(default)]
    pub(super) job_submit_user_msg: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) errors: Vec<RawError>,
}

impl Answer for SubmitResponse {
    fn errors(&self) -> &[RawError] {
        &self.errors
    }

    /// A job id with errors: slurmctld queued the job and said why it may wait (e.g.
    /// "Requested partition configuration not available now"), as sbatch reports it.
    fn done_despite_errors(&self) -> bool {
        self.job_id
            .as_ref()
            .and_then(RawNum::value)
            .is_some_and(|id| id > 0)
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawKillError {
    #[serde(default)]
    pub(super) string: Option<String>,
    #[serde(default)]
    pub(super) code: Option<RawNum>,
    #[serde(default)]
    pub(super) message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawKillStatus {
    #[serde(default)]
    pub(super) error: Option<RawKillError>,
    #[serde(default)]
    pub(super) step_id: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct KillJobsResponse {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) status: Vec<RawKillStatus>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) errors: Vec<RawError>,
}
answer!(KillJobsResponse);

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawPostResult {
    #[serde(default)]
    pub(super) job_id: Option<RawNum>,
    #[serde(default)]
    pub(super) error: Option<Value>,
    #[serde(default)]
    pub(super) error_code: Option<RawNum>,
    #[serde(default)]
    pub(super) why: Option<String>,
}

impl RawPostResult {
    pub(super) fn code(&self) -> Option<i64> {
        self.error_code
            .as_ref()
            .and_then(RawNum::value)
            .filter(|c| *c != 0)
    }

    pub(super) fn text(&self) -> String {
        let id = self
            .job_id
            .as_ref()
            .and_then(RawNum::value)
            .map(|i| i.to_string())
            .unwrap_or_default();
        let error = match &self.error {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        format!(
            "job {id}: {error} {} (Slurm error {})",
            self.why.as_deref().unwrap_or_default(),
            self.code().unwrap_or_default()
        )
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct JobPostResponse {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) results: Vec<RawPostResult>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) errors: Vec<RawError>,
}

impl Answer for JobPostResponse {
    fn errors(&self) -> &[RawError] {
        &self.errors
    }

    /// slurmrestd 22.05 answers every successful update of an array with an error entry
    /// without a number, "job array update from … failed".
    fn ignorable(error: &RawError) -> bool {
        error.number().is_none()
            && error
                .description
                .as_deref()
                .is_some_and(|d| d.starts_with("job array update from"))
    }
}
