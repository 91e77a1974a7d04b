//! What an answer of slurmrestd means: the decoded answer, or which [`SlurmError`] — the token
//! refused, a transient failure worth trying again, or a lasting one. Error numbers are
//! Slurm's (`slurm_errno.h`); docs/slurm.md ("Transports") has the user's view.

use reqwest::StatusCode;
use serde_json::Value;
use tracing::warn;

use super::wire::{Answer, KillJobsResponse, RawError, RawNum};
use crate::error::{Result, SlurmError};

/// `ESLURM_ALREADY_DONE`, `ESLURM_INVALID_JOB_ID`: a task to cancel that already ended.
const GONE: [i64; 2] = [2021, 2017];
/// Error numbers of a hold/release that only hit tasks past pending.
pub(super) const HOLD_IGNORED: [i64; 6] = [2021, 2073, 2083, 2084, 2085, 2086];

pub(super) fn is_transient(e: &SlurmError) -> bool {
    matches!(
        e,
        SlurmError::Unreachable { .. }
            | SlurmError::Slurm {
                transient: true,
                ..
            }
    )
}

pub(super) fn is_gone(e: &SlurmError) -> bool {
    match e {
        SlurmError::Slurm { message, .. } => GONE
            .iter()
            .any(|c| message.contains(&format!("Slurm error {c}"))),
        _ => false,
    }
}

/// Slurm error numbers worth trying again: the controller unreachable or busy.
fn transient_number(n: i64) -> bool {
    matches!(n,
        11 /* EAGAIN */ | 110 /* ETIMEDOUT */ | 111 /* ECONNREFUSED */
        | 1001..=1004 /* SLURM_COMMUNICATIONS_* */
        | 1800..=1803 /* SLURMCTLD_COMMUNICATIONS_* */
        | 2007 /* ESLURM_ERROR_ON_DESC_TO_RECORD_COPY: try again */
        | 2027 /* ESLURM_IN_STANDBY_MODE */
        | 5000..=5005 /* SLURM_PROTOCOL_SOCKET_IMPL_* */
        | 7000 /* ESLURM_DB_CONNECTION */)
}

/// Slurm error numbers meaning the credential was refused.
fn auth_number(n: i64) -> bool {
    n == 1007 /* SLURM_PROTOCOL_AUTHENTICATION_ERROR */ || (6000..=6099).contains(&n)
}

fn transient_text(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "unable to contact slurm controller",
        "connection refused",
        "timed out",
        "try again",
        "communication connection failure",
        "slurmctld is not responding",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// Who was refused where, for the message of a refused token.
pub(super) struct Refused<'a> {
    pub(super) field: &'static str,
    pub(super) user: &'a str,
    pub(super) url: &'a str,
}

impl Refused<'_> {
    fn error(&self, detail: &str) -> SlurmError {
        SlurmError::invalid(
            self.field,
            format!(
                "slurmrestd at {} refused the token for user `{}` ({detail}); renew it \
                 (`scontrol token`) or check the user",
                self.url, self.user
            ),
        )
    }
}

/// The answer to a request, or the error it means: 401/403 → the token was refused; errors in
/// the body → [`SlurmError::Slurm`], transient when the controller was unreachable or busy or
/// the server failed (5xx, 429) without naming a lasting cause; a body that does not parse →
/// [`SlurmError::Decode`].
pub(super) fn interpret<T: Answer>(
    op: &str,
    status: StatusCode,
    body: &[u8],
    refused: &Refused<'_>,
) -> Result<T> {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(refused.error(&format!("HTTP {}", status.as_u16())));
    }
    let text = String::from_utf8_lossy(body);
    let parsed: Option<std::result::Result<T, serde_json::Error>> = if text.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_slice(body))
    };
    let retry_status = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error();
    match parsed {
        Some(Ok(answer)) => {
            let errors: Vec<&RawError> = answer
                .errors()
                .iter()
                .filter(|e| e.real() && !T::ignorable(e))
                .collect();
            if status.is_success() && errors.is_empty() {
                return Ok(answer);
            }
            if status.is_success() && answer.done_despite_errors() {
                warn!(op, errors = %messages(&errors), "Slurm accepted the request with errors");
                return Ok(answer);
            }
            if errors.iter().any(|e| e.number().is_some_and(auth_number)) {
                return Err(refused.error(&messages(&errors)));
            }
            let named_transient = errors
                .iter()
                .any(|e| e.number().is_some_and(transient_number) || transient_text(&e.text()));
            let all_lasting = !errors.is_empty()
                && errors
                    .iter()
                    .all(|e| e.number().is_some_and(|n| n > 0 && !transient_number(n)));
            let transient = named_transient
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE
                || status == StatusCode::BAD_GATEWAY
                || status == StatusCode::GATEWAY_TIMEOUT
                || (retry_status && !all_lasting);
            let mut message = if errors.is_empty() {
                format!("HTTP {status}")
            } else if status.is_success() {
                messages(&errors)
            } else {
                format!("HTTP {}: {}", status.as_u16(), messages(&errors))
            };
            if errors.iter().any(|e| e.number() == Some(-1)) {
                message.push_str(
                    " — slurmctld gave no reason; slurmrestd 22.05 answers this way when \
                     slurmctld refused the token",
                );
            }
            Err(SlurmError::Slurm {
                operation: op.to_string(),
                message,
                transient,
            })
        }
        Some(Err(e)) if status.is_success() => Err(SlurmError::Decode {
            operation: op.to_string(),
            message: e.to_string(),
        }),
        Some(Err(_)) => Err(SlurmError::Slurm {
            operation: op.to_string(),
            message: format!("HTTP {status}: {}", snippet(&text)),
            transient: retry_status || transient_text(&text),
        }),
        None if status.is_success() || status == StatusCode::NOT_MODIFIED => Ok(T::default()),
        None => Err(SlurmError::Slurm {
            operation: op.to_string(),
            message: format!("HTTP {status} with an empty body"),
            transient: retry_status,
        }),
    }
}

fn snippet(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn messages(errors: &[&RawError]) -> String {
    errors
        .iter()
        .map(|e| e.text())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Per-task failures of a v0.0.40+ bulk cancel, except tasks that had already ended.
pub(super) fn kill_failures(answer: &KillJobsResponse) -> Result<()> {
    let failed: Vec<String> = answer
        .status
        .iter()
        .filter_map(|s| {
            let e = s.error.as_ref()?;
            let code = e.code.as_ref().and_then(RawNum::value).unwrap_or(0);
            if code == 0 || GONE.contains(&code) {
                return None;
            }
            let id = match &s.step_id {
                Some(Value::String(id)) => id.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            Some(format!(
                "{id}: {} (Slurm error {code})",
                e.message
                    .as_deref()
                    .or(e.string.as_deref())
                    .unwrap_or("failed")
            ))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(SlurmError::Slurm {
            operation: "cancel Slurm array tasks".into(),
            message: failed.join("; "),
            transient: false,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use orch_core::ErrorCategory;

    use super::super::test_support::{REFUSED, fixture};
    use super::super::wire::{Generic, JobPostResponse, JobsResponse, SubmitResponse};
    use super::*;

    #[test]
    fn v0_0_38_error_answers() {
        let e = interpret::<SubmitResponse>(
            "submit",
            StatusCode::INTERNAL_SERVER_ERROR,
            fixture("v0.0.38", "rest_job_submit_error.json").as_bytes(),
            &REFUSED,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
        assert!(
            e.to_string()
                .contains("Invalid partition name specified (Slurm error 2000)"),
            "{e}"
        );
        // A successful hold of an array: slurmrestd 22.05 adds an error without a number.
        interpret::<JobPostResponse>(
            "hold",
            StatusCode::OK,
            fixture("v0.0.38", "rest_job_update_hold.json").as_bytes(),
            &REFUSED,
        )
        .unwrap();
        interpret::<Generic>(
            "cancel",
            StatusCode::OK,
            fixture("v0.0.38", "rest_job_cancel.json").as_bytes(),
            &REFUSED,
        )
        .unwrap();
        // The controller unreachable: worth trying again.
        let down = br#"{"errors": [{"description": "Failed while looking for jobs",
            "error_number": 1800, "error": "Unable to contact slurm controller (connect failure)",
            "source": "slurm_load_jobs"}]}"#;
        let e =
            interpret::<JobsResponse>("list", StatusCode::INTERNAL_SERVER_ERROR, down, &REFUSED)
                .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        // A credential slurmctld refused.
        let auth =
            br#"{"errors": [{"error_number": 1007, "error": "Protocol authentication error"}]}"#;
        let e =
            interpret::<JobsResponse>("list", StatusCode::INTERNAL_SERVER_ERROR, auth, &REFUSED)
                .unwrap_err();
        assert!(
            matches!(&e, SlurmError::Invalid { field, .. } if field == "spec.executor.slurm.tokenFile"),
            "{e}"
        );
        let e = interpret::<JobsResponse>("list", StatusCode::OK, b"<html>", &REFUSED).unwrap_err();
        assert!(matches!(e, SlurmError::Decode { .. }), "{e}");
        let e = interpret::<JobsResponse>(
            "list",
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
            &REFUSED,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        let e = interpret::<JobsResponse>(
            "list",
            StatusCode::NOT_FOUND,
            b"Unable to find query",
            &REFUSED,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
    }
}
