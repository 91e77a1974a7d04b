//! The job lock in DynamoDB: only one `orch run` drives a job whose storage is on S3.
//!
//! The embedded backends keep a job's state on one machine, where a file lock
//! (`Embedded::lock_job` in `runtime/src/driver.rs`) is enough. With the state in DynamoDB two
//! laptops or login nodes can open the same job, and two drivers of one job would dispatch its
//! tasks twice and race on every record. So a driver first takes this lock: one item in orch's
//! table (docs/aws.md), `pk` = the job's (`<bucket>/<prefix>JOB#<job>`, see [`Keys`]), `sk = LOCK`,
//! with
//! - `owner` (S): `<host>:<pid>:<random token>` — who holds it, for messages, and a token no
//!   other holder shares (no credential or configuration ever goes in);
//! - `expiresAt` (N, ms since the epoch): the end of the lease;
//! - `acquiredAt` (N, ms): when the holder took it.
//!
//! [`JobLock::acquire`] writes the item if there is none or its lease has expired (a holder
//! that died leaves its item behind; the lease frees the job without anyone's help). While the
//! [`JobLock`] lives, a background task renews the lease every third of its length, on the
//! condition that the item is still ours; if it finds the lock taken by someone else it says so
//! through [`JobLock::lost`] and stops. [`JobLock::release`] deletes the item (only if it is
//! still ours); dropping the lock without releasing it stops the renewals and the lease
//! runs out on its own.
//!
//! Expiry compares the clocks of different machines: a lease should be much longer than their
//! skew (tens of seconds against the few seconds of skew NTP leaves at worst).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use orch_core::ErrorCategory;
use orch_core::model::{Millis, now_ms};
use orch_core::owner::hostname;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::dynamodb::{Item, Keys};
use crate::error::{AwsError, sdk_error};

const SERVICE: &str = "DynamoDB";
const PK: &str = "pk";
const SK: &str = "sk";
/// `sk` of the lock item.
pub const LOCK_SK: &str = "LOCK";
const OWNER: &str = "owner";
const EXPIRES_AT: &str = "expiresAt";
const ACQUIRED_AT: &str = "acquiredAt";

/// The `code` of the error [`JobLock::acquire`] returns when another holder has the job (see
/// [`is_held_elsewhere`]).
pub const HELD_CODE: &str = "JobLockHeld";

/// Renewals are never closer together than this, whatever the lease.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// Whether `err`, from [`JobLock::acquire`], means that another `orch run` holds the job's
/// lock (and not that DynamoDB could not be asked). Its category is `Invalid`, as for the file
/// lock of the embedded backends: retrying at once will not help, the user has to wait or
/// stop the other run.
pub fn is_held_elsewhere(err: &AwsError) -> bool {
    matches!(err, AwsError::Service { code, .. } if code == HELD_CODE)
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn lock_key(pk: &str) -> Item {
    Item::from([(PK.to_string(), s(pk)), (SK.to_string(), s(LOCK_SK))])
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// A fresh `owner`: host, process and 128 random bits, so no two acquisitions share one.
fn new_owner() -> String {
    format!(
        "{}:{}:{:032x}",
        hostname(),
        std::process::id(),
        fastrand::u128(..)
    )
}

/// The holder named for people: `host <h>, pid <p>` (the token means nothing to them).
fn describe_owner(owner: &str) -> String {
    let mut parts = owner.splitn(3, ':');
    match (parts.next(), parts.next()) {
        (Some(host), Some(pid)) if !host.is_empty() => format!("host {host}, pid {pid}"),
        _ => "an unknown holder".to_string(),
    }
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn utc(ms: Millis) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn check_job_id(job: &str) -> Result<(), AwsError> {
    if job.is_empty() || job.contains('#') {
        return Err(AwsError::invalid(
            format!("job id {job:?}"),
            "must be non-empty and must not contain '#'",
        ));
    }
    Ok(())
}

/// What the renewal task shares with the holder.
#[derive(Debug)]
struct Shared {
    /// The end of the lease as last written (ms).
    expires_at: AtomicU64,
}

/// The lock of one job, held until [`JobLock::release`] or drop (see the module docs).
#[derive(Debug)]
pub struct JobLock {
    client: Client,
    table: String,
    job: String,
    pk: String,
    owner: String,
    shared: Arc<Shared>,
    lost: watch::Receiver<bool>,
    renewer: JoinHandle<()>,
}

impl JobLock {
    /// Takes the lock of `job` in `table` for `lease`, and keeps renewing it in the background
    /// (every `lease / 3`) until released or dropped. Needs a Tokio runtime.
    ///
    /// Fails with an error for which [`is_held_elsewhere`] is true (category `Invalid`) when
    /// another holder's lease has not expired yet; its message names that holder's host and
    /// process and says until when its lease lasts. Other failures are DynamoDB's, categorised
    /// as everywhere in this crate.
    pub async fn acquire(
        client: Client,
        table: String,
        keys: &Keys,
        job: &str,
        lease: Duration,
    ) -> Result<JobLock, AwsError> {
        check_job_id(job)?;
        let pk = keys.job_pk(job);
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        if lease_ms == 0 {
            return Err(AwsError::invalid(
                format!("lock of job {job}"),
                "the lease must last at least a millisecond",
            ));
        }
        let owner = new_owner();
        let now = now_ms();
        let expires_at = now.saturating_add(lease_ms);
        let resource = format!("{table} {pk}/{LOCK_SK}");
        let mut item = lock_key(&pk);
        item.insert(OWNER.into(), s(&owner));
        item.insert(EXPIRES_AT.into(), n(expires_at));
        item.insert(ACQUIRED_AT.into(), n(now));
        let put = client
            .put_item()
            .table_name(&table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk) OR #exp < :now")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#exp", EXPIRES_AT)
            .expression_attribute_values(":now", n(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        if let Err(e) = put {
            let Some(PutItemError::ConditionalCheckFailedException(failed)) = e.as_service_error()
            else {
                return Err(sdk_error(SERVICE, "PutItem", resource, e));
            };
            let existing = failed.item();
            // The SDK retried our put after its answer was lost: the item it finds is ours.
            let ours = existing.is_some_and(|i| get_s(i, OWNER) == Some(owner.as_str()));
            if !ours {
                return Err(held(job, resource, existing, now));
            }
        }
        let shared = Arc::new(Shared {
            expires_at: AtomicU64::new(expires_at),
        });
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew_until_lost(
            Renewal {
                client: client.clone(),
                table: table.clone(),
                job: job.to_string(),
                pk: pk.clone(),
                owner: owner.clone(),
                lease,
                shared: Arc::clone(&shared),
            },
            lost_tx,
        ));
        tracing::debug!(job, owner = %owner, expires_at = %utc(expires_at), "job lock acquired");
        Ok(JobLock {
            client,
            table,
            job: job.to_string(),
            pk,
            owner,
            shared,
            lost,
            renewer,
        })
    }

    /// The job this lock is for.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// This holder's `owner` value (`<host>:<pid>:<token>`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The end of the lease as last written (ms since the epoch). If renewals keep failing
    /// (DynamoDB unreachable) this stays behind, and after it passes another `orch run` may
    /// take the job.
    pub fn expires_at(&self) -> Millis {
        self.shared.expires_at.load(Ordering::SeqCst)
    }

    /// Whether a renewal found the lock taken by someone else (the lease had run out, and
    /// another `orch run` acquired it, or the item was removed): the holder must stop driving
    /// the job. Once true, it stays true and renewals stop.
    pub fn lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// A receiver that changes to `true` when the lock is lost, for a holder that wants to
    /// wait for that (`changed().await`) rather than poll [`JobLock::lost`].
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stops the renewals and deletes the item if it is still ours. Never fails: a lock that
    /// cannot be deleted (DynamoDB unreachable) expires with its lease; one already taken by
    /// someone else is left to them. Both are logged.
    pub async fn release(mut self) {
        self.renewer.abort();
        // Wait until the renewal task is gone, so no renewal of ours starts after the delete.
        // (One already sent could still arrive later: it needs `owner = :me` on an existing
        // item, so it cannot bring the deleted lock back.)
        let _ = (&mut self.renewer).await;
        let resource = format!("{} {}/{LOCK_SK}", self.table, self.pk);
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(lock_key(&self.pk)))
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_values(":me", s(&self.owner))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match deleted {
            Ok(_) => tracing::debug!(job = %self.job, "job lock released"),
            Err(e) => match e.as_service_error() {
                Some(DeleteItemError::ConditionalCheckFailedException(failed)) => {
                    match failed.item().and_then(|i| get_s(i, OWNER)) {
                        // Gone: removed by a retry of this very delete, or after it expired.
                        None => tracing::debug!(job = %self.job, "job lock already gone"),
                        Some(other) => tracing::warn!(
                            job = %self.job,
                            holder = %describe_owner(other),
                            "job lock was taken over by another `orch run` before it was released"
                        ),
                    }
                }
                _ => {
                    let e = sdk_error(SERVICE, "DeleteItem", resource, e);
                    tracing::warn!(
                        job = %self.job,
                        error = %e,
                        expires_at = %utc(self.expires_at()),
                        "cannot release the job lock; it expires with its lease"
                    );
                }
            },
        }
    }
}

impl Drop for JobLock {
    /// Stops the renewals; without [`JobLock::release`] the lease runs out on its own.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// The error of an acquisition that found the lock held (see [`is_held_elsewhere`]).
fn held(job: &str, resource: String, existing: Option<&Item>, now: Millis) -> AwsError {
    let holder = existing
        .and_then(|i| get_s(i, OWNER))
        .map_or_else(|| "an unknown holder".to_string(), describe_owner);
    let until = match existing.and_then(|i| get_n(i, EXPIRES_AT)) {
        Some(at) => format!(
            "; its lease lasts until {} (in {} s) unless that run renews it",
            utc(at),
            at.saturating_sub(now).div_ceil(1000)
        ),
        None => String::new(),
    };
    AwsError::Service {
        service: SERVICE,
        operation: "PutItem",
        resource,
        code: HELD_CODE.to_string(),
        message: format!(
            "job {job} is already being run by another `orch run` ({holder}){until}; wait for \
             it to finish, or stop it"
        ),
        category: ErrorCategory::Invalid,
        conflict: false,
    }
}

/// What the renewal task needs.
struct Renewal {
    client: Client,
    table: String,
    job: String,
    pk: String,
    owner: String,
    lease: Duration,
    shared: Arc<Shared>,
}

/// How one renewal ended, short of success.
enum Failed {
    /// Someone else holds the lock now (their `owner`), or it is gone (`None`).
    Lost(Option<String>),
    /// DynamoDB could not be asked; try again at the next renewal.
    Error(AwsError),
}

impl Renewal {
    /// Pushes the lease to `expires_at`, if the lock is still ours.
    async fn renew(&self, now: Millis, expires_at: Millis) -> Result<(), Failed> {
        let renewed = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(lock_key(&self.pk)))
            .update_expression("SET #exp = :exp, #renewed = :now")
            // Also false on a missing item, so a renewal never re-creates a released lock.
            .condition_expression("#owner = :me")
            .expression_attribute_names("#exp", EXPIRES_AT)
            .expression_attribute_names("#renewed", "renewedAt")
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_values(":exp", n(expires_at))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":me", s(&self.owner))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match renewed {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    Err(Failed::Lost(
                        failed
                            .item()
                            .and_then(|i| get_s(i, OWNER))
                            .map(str::to_string),
                    ))
                }
                _ => {
                    let resource = format!("{} {}/{LOCK_SK}", self.table, self.pk);
                    Err(Failed::Error(sdk_error(SERVICE, "UpdateItem", resource, e)))
                }
            },
        }
    }
}

/// Renews the lease every `lease / 3` until the lock is found taken (then says so through
/// `lost` and ends) or the task is aborted. A renewal that fails or takes longer than the
/// period is tried again at the next one.
async fn renew_until_lost(renewal: Renewal, lost: watch::Sender<bool>) {
    let period = (renewal.lease / 3).max(MIN_PERIOD);
    let lease_ms = u64::try_from(renewal.lease.as_millis()).unwrap_or(u64::MAX);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let job = renewal.job.as_str();
    loop {
        ticks.tick().await;
        let now = now_ms();
        let expires_at = now.saturating_add(lease_ms);
        let failure = match tokio::time::timeout(period, renewal.renew(now, expires_at)).await {
            Ok(Ok(())) => {
                renewal
                    .shared
                    .expires_at
                    .store(expires_at, Ordering::SeqCst);
                continue;
            }
            Ok(Err(Failed::Lost(by))) => {
                let holder = by.as_deref().map_or_else(
                    || "nobody (the lock item is gone)".to_string(),
                    describe_owner,
                );
                tracing::warn!(
                    job,
                    holder = %holder,
                    "job lock lost: another `orch run` took the job over; this one must stop \
                     driving it"
                );
                lost.send_replace(true);
                return;
            }
            Ok(Err(Failed::Error(e))) => e.to_string(),
            Err(_) => format!("no answer within {period:?}"),
        };
        let held_until = renewal.shared.expires_at.load(Ordering::SeqCst);
        if now_ms() >= held_until {
            tracing::warn!(
                job,
                error = %failure,
                expired_at = %utc(held_until),
                "cannot renew the job lock and its lease has run out: another `orch run` may \
                 take the job over; retrying"
            );
        } else {
            tracing::warn!(
                job,
                error = %failure,
                expires_at = %utc(held_until),
                "cannot renew the job lock; retrying at the next renewal"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_epoch_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn owners_are_unique_and_name_host_and_pid() {
        let (a, b) = (new_owner(), new_owner());
        assert_ne!(a, b);
        let pid = std::process::id().to_string();
        assert_eq!(
            describe_owner(&a),
            format!("host {}, pid {pid}", hostname())
        );
        assert!(!hostname().contains(':'));
        assert_eq!(describe_owner("garbage"), "an unknown holder");
    }

    #[test]
    fn held_errors_are_invalid_and_recognisable() {
        let existing = Item::from([
            (OWNER.to_string(), s("box:42:abc")),
            (EXPIRES_AT.to_string(), n(10_500)),
        ]);
        let e = held("j", "t JOB#j/LOCK".into(), Some(&existing), 1_000);
        assert!(is_held_elsewhere(&e));
        assert!(!e.is_conflict());
        assert_eq!(e.category(), ErrorCategory::Invalid);
        let text = e.to_string();
        assert!(
            text.contains("another `orch run` (host box, pid 42)"),
            "{text}"
        );
        assert!(text.contains("1970-01-01T00:00:10Z (in 10 s)"), "{text}");
        assert!(!text.contains("abc"), "{text}");
        assert!(!is_held_elsewhere(&AwsError::invalid("x", "y")));
        assert!(check_job_id("a#b").is_err());
        assert!(check_job_id("").is_err());
    }
}
