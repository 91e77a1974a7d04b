//! The slurmrestd API versions [`RestApi`](super::RestApi) speaks, and how the one a server
//! offers is chosen: the newest supported version named by its OpenAPI description. Which
//! versions are tested how is in docs/slurm.md ("Transports").

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::error::{Result, SlurmError};

/// The slurmrestd API versions [`RestApi`](super::RestApi) speaks, in two shapes:
///
/// * **v0.0.38** (Slurm 22.05 – 23.11): the submit body is `{script, job}` with `environment`
///   as a map and sbatch-like option names (`signal: "TERM@60"`, `gres`, `exclusive`);
///   answers carry plain numbers, `job_state` as a string and `exit_code` as the raw wait
///   status.
/// * **v0.0.40, v0.0.41, v0.0.42** (Slurm 23.11 to 25.11, each release serving two or three
///   of them): the script goes inside `job`, `environment` is a list of `K=V`, numbers are
///   `{set, infinite, number}` objects, `job_state` is a list of a base state plus flags,
///   `exit_code` is `{status, return_code, signal: {id, name}}`, and `--signal` becomes
///   `kill_warning_signal` / `kill_warning_delay` / `kill_warning_flags`.
///
/// v0.0.39 (Slurm 23.02) is not used: that release also serves v0.0.38.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiVersion {
    V0_0_38,
    V0_0_40,
    V0_0_41,
    V0_0_42,
}

impl ApiVersion {
    /// Oldest first.
    pub const SUPPORTED: [ApiVersion; 4] = [
        ApiVersion::V0_0_38,
        ApiVersion::V0_0_40,
        ApiVersion::V0_0_41,
        ApiVersion::V0_0_42,
    ];

    /// `v0.0.41`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V0_0_38 => "v0.0.38",
            ApiVersion::V0_0_40 => "v0.0.40",
            ApiVersion::V0_0_41 => "v0.0.41",
            ApiVersion::V0_0_42 => "v0.0.42",
        }
    }

    pub(super) fn from_minor(minor: u32) -> Option<Self> {
        ApiVersion::SUPPORTED
            .into_iter()
            .find(|v| v.as_str().strip_prefix("v0.0.") == Some(&minor.to_string()))
    }

    /// v0.0.40 and later: numbers as objects, `environment` as a list, the script in `job`.
    pub(super) fn modern(self) -> bool {
        self != ApiVersion::V0_0_38
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApiVersion {
    type Err = SlurmError;

    fn from_str(s: &str) -> Result<Self> {
        s.strip_prefix("v0.0.")
            .and_then(|m| m.parse().ok())
            .and_then(ApiVersion::from_minor)
            .ok_or_else(|| {
                SlurmError::invalid(
                    "slurmrestd API version",
                    format!("`{s}` is not one orch speaks (v0.0.38, v0.0.40, v0.0.41, v0.0.42)"),
                )
            })
    }
}

/// `v0.0.NN` minors named by the paths of an OpenAPI description, ascending.
pub(super) fn offered_versions<'a>(paths: impl Iterator<Item = &'a str>) -> BTreeSet<u32> {
    paths
        .filter_map(|p| {
            let rest = p.strip_prefix("/slurm/v0.0.")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::fixture;
    use super::super::wire::OpenApiDoc;
    use super::*;

    #[test]
    fn versions_parse_and_negotiation_picks_the_newest_supported() {
        assert_eq!(
            "v0.0.41".parse::<ApiVersion>().unwrap(),
            ApiVersion::V0_0_41
        );
        assert!("v0.0.39".parse::<ApiVersion>().is_err());
        let doc: OpenApiDoc =
            serde_json::from_str(&fixture("v0.0.38", "rest_openapi_v3_paths.json")).unwrap();
        let offered = offered_versions(doc.paths.keys().map(String::as_str));
        assert_eq!(offered.into_iter().collect::<Vec<_>>(), [38]);
        let doc: OpenApiDoc =
            serde_json::from_str(&fixture("v0.0.41", "openapi_v3_paths.json")).unwrap();
        let offered = offered_versions(doc.paths.keys().map(String::as_str));
        assert_eq!(offered.iter().copied().collect::<Vec<_>>(), [39, 40, 41]);
        let best = offered
            .iter()
            .rev()
            .find_map(|m| ApiVersion::from_minor(*m));
        assert_eq!(best, Some(ApiVersion::V0_0_41));
    }
}
