//! Leader election with a `coordination.k8s.io/v1` Lease, so that two replicas can run and
//! only one reconciles.
//!
//! The leader renews the Lease every [`LeaderElector::renew_every`]; a replica takes it over
//! when its `renewTime` is older than `leaseDurationSeconds`. Every write is an update on the
//! `resourceVersion` read just before, so two candidates never both win: the loser gets a
//! conflict. A leader that cannot renew in time stops leading (the caller shuts down) rather
//! than risk two leaders. On a clean shutdown the leader empties `holderIdentity`, so the
//! standby takes over at once.
//!
//! The verbs used are get, create and update on the one Lease (the chart's Role).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tracing::{info, warn};

use crate::error::{Error, Result};

/// One candidate for the leader Lease.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease: Duration,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease: Duration) -> Self {
        LeaderElector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            lease,
        }
    }

    /// How often the leader renews: a third of the lease, so two renewals may fail in a row.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) -> Result<()> {
        let mut waiting_logged = false;
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return Ok(());
                }
                Ok(false) => {
                    if !waiting_logged {
                        info!(lease = %self.name, "another replica leads; waiting");
                        waiting_logged = true;
                    }
                }
                Err(e) => warn!(error = %e, "leader election failed; trying again"),
            }
            tokio::time::sleep(self.renew_every()).await;
        }
    }

    /// Keeps the Lease; returns when it was lost (not renewed within the lease duration, or
    /// taken by another replica).
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every()).await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "another replica took the leader Lease");
                    return;
                }
                Err(e) => warn!(error = %e, "renewing the leader Lease failed"),
            }
            // Stop a little before the others may take over.
            if last_renewed.elapsed() + self.renew_every() / 2 > self.lease {
                warn!(lease = %self.name, "could not renew the leader Lease in time");
                return;
            }
        }
    }

    /// Gives the Lease up (best effort), so the standby need not wait for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader Lease"),
            Err(e) => warn!(error = %e, "releasing the leader Lease failed"),
        }
    }

    /// One round: take or renew the Lease when it is ours, free or expired. Returns whether
    /// this candidate holds it now.
    async fn try_acquire(&self) -> Result<bool> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::Kube(e)),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && !free_or_expired(&current, now) {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { current.acquire_time } else { None };
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::Kube(e)),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// Whether nobody holds the Lease, or its holder let it run out.
fn free_or_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return true;
    }
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    let expires = renewed.0.as_millisecond() + i64::from(seconds) * 1000;
    now.as_millisecond() > expires
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn held(holder: &str, renewed_ms_ago: i64, seconds: i32, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(
                Timestamp::from_millisecond(now.as_millisecond() - renewed_ms_ago).unwrap(),
            )),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_renewed_lease_is_not_free() {
        let now = Timestamp::now();
        assert!(!free_or_expired(&held("a", 5_000, 15, now), now));
    }

    #[test]
    fn a_lease_not_renewed_for_its_duration_is_free() {
        let now = Timestamp::now();
        assert!(free_or_expired(&held("a", 15_001, 15, now), now));
    }

    #[test]
    fn a_lease_without_holder_is_free() {
        let now = Timestamp::now();
        assert!(free_or_expired(&held("", 0, 15, now), now));
        assert!(free_or_expired(&LeaseSpec::default(), now));
    }
}
