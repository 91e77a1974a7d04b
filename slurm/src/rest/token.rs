//! The JWT slurmrestd authenticates with: where it comes from (a file, read again when it
//! changes; `SLURM_JWT`; or a token the caller holds and replaces), and an expired one caught
//! before slurmctld sees it. The token is never logged, never put in an error message and
//! never shown by `Debug`. docs/slurm.md ("Transports") says how to set it up.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde_json::Value;
use tracing::info;

use crate::error::{Result, SlurmError};

/// Where the JWT comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the token (`spec.executor.slurm.tokenFile`), read again when it changes.
    File(PathBuf),
    /// The `SLURM_JWT` environment variable, read once.
    Env,
    /// A token the caller holds and may replace while the client lives (the operator reads it
    /// from a Kubernetes Secret and refreshes it); each request takes the current one.
    Shared(SharedToken),
}

impl TokenSource {
    /// The setting an error about the token points at.
    pub(super) fn field(&self) -> &'static str {
        match self {
            TokenSource::File(_) => "spec.executor.slurm.tokenFile",
            TokenSource::Env => "SLURM_JWT",
            TokenSource::Shared(_) => "spec.executor.slurm (token Secret)",
        }
    }
}

/// A slurmrestd token held in memory, shared between its owner (who replaces it with
/// [`SharedToken::set`]) and the clients using it; clones are handles on the same token.
/// Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SharedToken(Arc<RwLock<String>>);

impl SharedToken {
    pub fn new(token: impl Into<String>) -> Self {
        SharedToken(Arc::new(RwLock::new(token.into())))
    }

    /// Replaces the token: the next request of every client holding this handle sends it.
    pub fn set(&self, token: impl Into<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = token.into();
    }

    fn get(&self) -> String {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedToken(<redacted>)")
    }
}

/// Handles on the same token are equal, whatever it holds now.
impl PartialEq for SharedToken {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedToken {}

/// A token; its `Debug` shows nothing of it.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Base64url (or standard base64), padding optional.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Seconds since a JWT's `exp` claim passed; `None` when it has not, or the token is not a
/// JWT with an `exp` (then slurmctld decides).
fn expired_since(token: &Secret) -> Option<i64> {
    let payload = token.0.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&base64_decode(payload)?).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let ago = i64::try_from(now).ok()? - exp;
    (ago >= 0).then_some(ago)
}

struct Loaded {
    /// Modification time and size of the file it was read from.
    stamp: Option<(Option<SystemTime>, u64)>,
    token: Secret,
}

pub(super) struct TokenCache {
    pub(super) source: TokenSource,
    loaded: Mutex<Option<Loaded>>,
}

impl TokenCache {
    /// Reads the token now: a missing or empty one, or one whose JWT `exp` has passed, is
    /// [`SlurmError::Invalid`] before anything is sent.
    pub(super) fn new(source: TokenSource) -> Result<Self> {
        let cache = TokenCache {
            source,
            loaded: Mutex::new(None),
        };
        let token = cache.current()?;
        if let Some(ago) = expired_since(&token) {
            return Err(SlurmError::invalid(
                cache.source.field(),
                format!(
                    "the slurmrestd token expired {ago} s ago; make a fresh one \
                     (`scontrol token lifespan=…`)"
                ),
            ));
        }
        Ok(cache)
    }

    /// The token for a request: an expired one is refused here rather than by slurmctld
    /// (which slurmrestd 22.05 reports only as "Unspecified error" or a dropped connection).
    /// With a token file or a shared token that is a transient error: a fresh token may come
    /// any moment.
    pub(super) fn for_request(&self) -> Result<Secret> {
        let token = self.current()?;
        let waiting = |holder: String, ago: i64| SlurmError::Slurm {
            operation: "authenticate to slurmrestd".into(),
            message: format!(
                "the token {holder} expired {ago} s ago; waiting for a fresh one \
                 (`scontrol token lifespan=…`)"
            ),
            transient: true,
        };
        match (expired_since(&token), &self.source) {
            (None, _) => Ok(token),
            (Some(ago), TokenSource::File(path)) => {
                Err(waiting(format!("in {}", path.display()), ago))
            }
            (Some(ago), TokenSource::Shared(_)) => {
                Err(waiting("from the token Secret".to_string(), ago))
            }
            (Some(ago), TokenSource::Env) => Err(SlurmError::invalid(
                "SLURM_JWT",
                format!("the slurmrestd token expired {ago} s ago"),
            )),
        }
    }

    /// The token now: the file is read again when its modification time or size changed.
    fn current(&self) -> Result<Secret> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match &self.source {
            TokenSource::Env => {
                if let Some(l) = loaded.as_ref() {
                    return Ok(l.token.clone());
                }
                let token = std::env::var("SLURM_JWT").unwrap_or_default();
                let token = token.trim();
                if token.is_empty() {
                    return Err(SlurmError::invalid(
                        "SLURM_JWT",
                        "no slurmrestd token: SLURM_JWT is not set (or empty) and \
                         spec.executor.slurm.tokenFile names no file",
                    ));
                }
                let token = Secret(token.to_string());
                *loaded = Some(Loaded {
                    stamp: None,
                    token: token.clone(),
                });
                Ok(token)
            }
            TokenSource::Shared(shared) => {
                let token = shared.get();
                let token = token.trim();
                if token.is_empty() {
                    return Err(SlurmError::invalid(
                        self.source.field(),
                        "the slurmrestd token held for this cluster is empty",
                    ));
                }
                Ok(Secret(token.to_string()))
            }
            TokenSource::File(path) => {
                let unreadable = |e: std::io::Error| {
                    SlurmError::invalid(
                        "spec.executor.slurm.tokenFile",
                        format!(
                            "cannot read the slurmrestd token file {}: {e}",
                            path.display()
                        ),
                    )
                };
                let meta = std::fs::metadata(path).map_err(unreadable)?;
                let stamp = (meta.modified().ok(), meta.len());
                if let Some(l) = loaded.as_ref()
                    && l.stamp == Some(stamp)
                {
                    return Ok(l.token.clone());
                }
                let text = std::fs::read_to_string(path).map_err(unreadable)?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(SlurmError::invalid(
                        "spec.executor.slurm.tokenFile",
                        format!("the slurmrestd token file {} is empty", path.display()),
                    ));
                }
                if loaded.is_some() {
                    info!(file = %path.display(), "slurmrestd token file changed; using the new token");
                }
                let token = Secret(token.to_string());
                *loaded = Some(Loaded {
                    stamp: Some(stamp),
                    token: token.clone(),
                });
                Ok(token)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use orch_core::ErrorCategory;

    use super::super::{PlainHttp, RestApi};
    use super::*;

    #[test]
    fn the_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        std::fs::write(&path, "first-token\n").unwrap();
        let cache = TokenCache::new(TokenSource::File(path.clone())).unwrap();
        assert_eq!(cache.current().unwrap().0, "first-token");
        std::fs::write(&path, "second-token-longer\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(cache.current().unwrap().0, "second-token-longer");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(cache.current(), Err(SlurmError::Invalid { .. })));
    }

    /// A JWT-shaped token with this `exp` (not signed: only orch's expiry check reads it).
    fn jwt(exp: i64) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let payload = format!(r#"{{"exp":{exp},"iat":1,"sun":"alice"}}"#);
        let mut encoded = String::new();
        for chunk in payload.as_bytes().chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                encoded.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{encoded}.c2ln")
    }

    #[test]
    fn an_expired_token_is_caught_before_slurmctld_sees_it() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(expired_since(&Secret(jwt(now + 3600))), None);
        assert!(expired_since(&Secret(jwt(now - 100))).is_some_and(|ago| ago >= 100));
        assert_eq!(expired_since(&Secret("not-a-jwt".into())), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        std::fs::write(&path, jwt(now - 100)).unwrap();
        match RestApi::new(
            "https://slurm:6820",
            Some("alice".into()),
            TokenSource::File(path.clone()),
            PlainHttp::Refused,
        ) {
            Err(SlurmError::Invalid { field, reason }) => {
                assert_eq!(field, "spec.executor.slurm.tokenFile");
                assert!(reason.contains("expired"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Expiring while in use: transient, until a fresh token is written.
        std::fs::write(&path, jwt(now + 3600)).unwrap();
        let cache = TokenCache::new(TokenSource::File(path.clone())).unwrap();
        std::fs::write(&path, jwt(now - 5)).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        let e = cache.for_request().unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        assert!(!e.to_string().contains("eyJ"), "{e}");
    }

    #[test]
    fn a_shared_token_is_replaceable_and_never_shows() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let first = jwt(now + 3600);
        let shared = SharedToken::new(first.clone());
        assert_eq!(format!("{shared:?}"), "SharedToken(<redacted>)");
        let source = TokenSource::Shared(shared.clone());
        let debug = format!("{source:?}");
        assert!(
            !debug.contains("eyJ") && debug.contains("<redacted>"),
            "{debug}"
        );
        assert_eq!(source, TokenSource::Shared(shared.clone()), "same handle");
        assert_ne!(source, TokenSource::Shared(SharedToken::new(first.clone())));

        let cache = TokenCache::new(source).unwrap();
        assert_eq!(cache.for_request().unwrap().0, first);
        // The owner replaces it through any clone of the handle; the next request has it.
        let second = jwt(now + 7200);
        shared.clone().set(format!("{second}\n"));
        assert_eq!(cache.for_request().unwrap().0, second);

        // Expiring while in use: transient, until the owner sets a fresh one.
        shared.set(jwt(now - 5));
        let e = cache.for_request().unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        assert!(!e.to_string().contains("eyJ"), "{e}");
        shared.set(second.clone());
        assert_eq!(cache.for_request().unwrap().0, second);

        // Expired or empty from the start: refused before anything is sent.
        for bad in [jwt(now - 100), " \n".to_string()] {
            match TokenCache::new(TokenSource::Shared(SharedToken::new(bad))) {
                Err(SlurmError::Invalid { field, reason }) => {
                    assert_eq!(field, "spec.executor.slurm (token Secret)");
                    assert!(!reason.contains("eyJ"), "{reason}");
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("accepted"),
            }
        }
    }
}
