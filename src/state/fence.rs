//! A runner's proof that it still holds its lock: the lock's epoch (a fencing
//! token) and the instant, on this process's monotonic clock, until which its
//! lease is known to be held.
//!
//! The lease is known held until its last successful renewal's send time plus
//! most of the lease ([`crate::state::lock::held_for`]): another runner takes the
//! lock over only after seeing it unchanged for a whole lease period (see
//! [`crate::state::lock`]), which starts after that renewal landed, so a holder that
//! stops at this instant has stopped before anyone else can start. After it, or once a
//! renewal is refused (the lock was taken over), [`Fence::held`] is false and
//! the runner sends nothing more: every state write and every data write
//! attempt checks it, and requests in flight are abandoned.
//!
//! State writes (run header, segment checkpoints, ledger entry) are fenced by
//! the epoch: each state item records the epoch of the runner that wrote it,
//! and each write is conditioned on the item not holding a newer one. A
//! transaction with a ConditionCheck on the lock item would say the same
//! thing, but not every DynamoDB-compatible endpoint has TransactWriteItems
//! (dynalite, the test endpoint, does not); the epoch condition has the
//! effect that matters: once the runner that took the lock over has written
//! an item, nothing the old holder sends, however late it arrives, can
//! overwrite it. The rows the new runner has not written yet are told apart
//! by their run id (see [`crate::state::checkpoint`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use tokio_util::sync::CancellationToken;

use crate::capacity::backoff::{retry, Attempts, Backoff};
use crate::dynamo::classify::{AwsError, Class};
use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};

/// The state-item attribute holding the epoch of the runner that wrote it.
pub const ATTRIBUTE: &str = "fence";

/// The condition of a fenced write: the item was never written under a
/// newer epoch (an equal one is our own earlier write, e.g. a retry).
const CONDITION: &str = "attribute_not_exists(#fence) OR #fence <= :fence";

/// A held lock's epoch and lease deadline; cheap to clone, shared by every
/// task of a run.
#[derive(Clone, Debug)]
pub struct Fence {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    epoch: u64,
    origin: Instant,
    /// Microseconds after `origin` until which the lease is held.
    until_us: AtomicU64,
    lost: CancellationToken,
}

impl Fence {
    /// A lease of lock epoch `epoch`, held until `until`.
    pub(crate) fn new(epoch: u64, until: Instant) -> Self {
        let origin = Instant::now();
        let fence = Fence {
            inner: Arc::new(Inner {
                epoch,
                origin,
                until_us: AtomicU64::new(0),
                lost: CancellationToken::new(),
            }),
        };
        fence.extend(until);
        fence
    }

    /// The lock's epoch: every acquisition of the lock gets a larger one.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Whether the lease is still provably held: not lost, and its deadline
    /// not passed on the monotonic clock. A lease seen past its deadline is
    /// lost for good, even if a renewal answered just before it is recorded
    /// an instant later.
    pub fn held(&self) -> bool {
        if self.inner.lost.is_cancelled() {
            return false;
        }
        if Instant::now() < self.until() {
            return true;
        }
        self.lose();
        false
    }

    /// Until when the lease is held, unless lost earlier.
    pub fn until(&self) -> Instant {
        self.inner.origin + Duration::from_micros(self.inner.until_us.load(Ordering::Acquire))
    }

    /// Moves the deadline to `until` (never backwards).
    pub(crate) fn extend(&self, until: Instant) {
        let us = until
            .saturating_duration_since(self.inner.origin)
            .as_micros()
            .min(u128::from(u64::MAX)) as u64;
        self.inner.until_us.fetch_max(us, Ordering::AcqRel);
    }

    /// Marks the lease lost: from now on nothing may be written under it.
    pub(crate) fn lose(&self) {
        self.inner.lost.cancel();
    }

    /// Fires when the lease is lost (taken over, or not renewed in time).
    pub fn lost(&self) -> CancellationToken {
        self.inner.lost.clone()
    }

    /// The error for `what` not being done because the lease is not held.
    pub fn lost_error(&self, what: &str) -> Error {
        Error::LockLost(format!(
            "{what} was not done: this runner can no longer prove it holds the lock \
             (lease epoch {}; taken over, or not renewed in time), so it stopped writing at once",
            self.epoch()
        ))
    }

    /// Runs one attempt of a write unless the lease is no longer held; an
    /// attempt in flight when the lease is lost is abandoned. The error then
    /// is fatal to [`retry`], so no further attempt is made.
    pub async fn attempt<T, Fut>(&self, send: Fut) -> std::result::Result<T, AwsError>
    where
        Fut: std::future::Future<Output = std::result::Result<T, AwsError>>,
    {
        let lost = self.lost();
        let mut send = std::pin::pin!(send);
        loop {
            if !self.held() {
                return Err(not_held());
            }
            // The deadline may move on (a renewal) while the attempt is in flight.
            let deadline = tokio::time::Instant::from_std(self.until());
            tokio::select! {
                r = &mut send => return r,
                _ = lost.cancelled() => return Err(not_held()),
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// The error of an attempt refused for want of a lease: no code DynamoDB
/// uses, no response, so [`crate::error::classify`] calls it fatal.
fn not_held() -> AwsError {
    AwsError {
        code: Some("DynbulkLeaseNotHeld".into()),
        status: None,
        message: "the lock's lease is no longer held".into(),
        no_response: false,
        construction: false,
    }
}

/// Writes one state-table item under `fence`: it records the writer's epoch,
/// is refused when a newer runner wrote the item, and is not sent (or is
/// abandoned) once the lease is not held. Throttling and transient faults
/// are retried.
///
/// # Errors
/// [`Error::LockLost`] when fenced off; [`Error::Aws`] (with `what`) otherwise.
pub(crate) async fn put(
    client: &Client,
    state_table: &str,
    mut item: Attrs,
    fence: &Fence,
    what: &str,
) -> Result<()> {
    item.insert(
        ATTRIBUTE.into(),
        AttributeValue::N(fence.epoch().to_string()),
    );
    let epoch = AttributeValue::N(fence.epoch().to_string());
    let send = || {
        let req = client
            .put_item()
            .table_name(state_table)
            .set_item(Some(item.clone()))
            .condition_expression(CONDITION)
            .expression_attribute_names("#fence", ATTRIBUTE)
            .expression_attribute_values(":fence", epoch.clone());
        async move { req.send().await.map(|_| ()).map_err(AwsError::from_sdk) }
    };
    conditional(fence, what, send).await
}

/// Deletes one state-table item under `fence`, unless a newer runner wrote it.
///
/// # Errors
/// As [`put`].
pub(crate) async fn delete(
    client: &Client,
    state_table: &str,
    key: Attrs,
    fence: &Fence,
    what: &str,
) -> Result<()> {
    let epoch = AttributeValue::N(fence.epoch().to_string());
    let send = || {
        let req = client
            .delete_item()
            .table_name(state_table)
            .set_key(Some(key.clone()))
            .condition_expression(CONDITION)
            .expression_attribute_names("#fence", ATTRIBUTE)
            .expression_attribute_values(":fence", epoch.clone());
        async move { req.send().await.map(|_| ()).map_err(AwsError::from_sdk) }
    };
    conditional(fence, what, send).await
}

/// Appends `value` to the string list `attribute` of the existing state
/// item `key`, once, under `fence`. `false` when there is no such item
/// (nothing is written).
///
/// # Errors
/// [`Error::LockLost`] when fenced off (a newer runner wrote the item);
/// [`Error::Aws`] (with `what`) otherwise.
pub(crate) async fn append_once(
    client: &Client,
    state_table: &str,
    key: Attrs,
    (attribute, value): (&str, &str),
    fence: &Fence,
    what: &str,
) -> Result<bool> {
    let value = AttributeValue::S(value.to_owned());
    let send = || {
        let req = client
            .update_item()
            .table_name(state_table)
            .set_key(Some(key.clone()))
            .update_expression("SET #l = list_append(if_not_exists(#l, :empty), :v), #fence = :fence")
            .condition_expression(format!(
                "attribute_exists(#pk) AND (attribute_not_exists(#l) OR NOT contains(#l, :one)) AND ({CONDITION})"
            ))
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#l", attribute)
            .expression_attribute_names("#fence", ATTRIBUTE)
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":v", AttributeValue::L(vec![value.clone()]))
            .expression_attribute_values(":one", value.clone())
            .expression_attribute_values(":fence", AttributeValue::N(fence.epoch().to_string()));
        async move { req.send().await.map(|_| ()).map_err(AwsError::from_sdk) }
    };
    if attempt(fence, what, send).await?.is_some() {
        return Ok(true);
    }
    // Refused: no such item, the value is there already (a retry whose
    // first send landed), or a newer runner wrote the item.
    let item = client
        .get_item()
        .table_name(state_table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| Error::aws(what.to_owned(), AwsError::from_sdk(e)))?
        .item;
    let Some(item) = item else { return Ok(false) };
    let named = matches!(item.get(attribute), Some(AttributeValue::L(l)) if l.contains(&value));
    let newer = matches!(item.get(ATTRIBUTE), Some(AttributeValue::N(e)) if e.parse::<u64>().map_or(true, |e| e > fence.epoch()));
    if named && !newer {
        return Ok(true);
    }
    fence.lose();
    Err(fence.lost_error(what))
}

/// Sends one fenced state write (`send` builds and sends it), retried on
/// throttles and transient faults while the lease is held; a refused
/// condition means a newer runner wrote the item, and the lock is lost.
async fn conditional<Fut>(fence: &Fence, what: &str, send: impl Fn() -> Fut) -> Result<()>
where
    Fut: std::future::Future<Output = std::result::Result<(), AwsError>>,
{
    match attempt(fence, what, send).await? {
        Some(()) => Ok(()),
        None => {
            // Another runner holds the lock now: ours is gone for good.
            fence.lose();
            Err(Error::LockLost(format!(
                "{what} was refused: a runner that took the lock over after this one (lease epoch {}) \
                 has written it; this runner stopped writing at once",
                fence.epoch()
            )))
        }
    }
}

/// Sends one conditional state write under `fence` (`send` builds and sends
/// it, its condition including the fence's), retried on throttles and
/// transient faults while the lease is held. `None` when its condition was
/// refused: the caller says what that means (the lease stays held).
///
/// # Errors
/// [`Error::LockLost`] when the lease is not held; [`Error::Aws`] (with `what`) otherwise.
pub(crate) async fn attempt<T, Fut>(
    fence: &Fence,
    what: &str,
    send: impl Fn() -> Fut,
) -> Result<Option<T>>
where
    Fut: std::future::Future<Output = std::result::Result<T, AwsError>>,
{
    let r = retry(&Backoff::default(), &mut Attempts::default(), || {
        fence.attempt(send())
    })
    .await;
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.class() == Class::ConditionFailed => Ok(None),
        Err(_) if !fence.held() => Err(fence.lost_error(what)),
        Err(e) => Err(Error::aws(what.to_owned(), e)),
    }
}

/// The fencing condition for an update expression that names `#fence` and
/// `:fence` (see [`ATTRIBUTE`]).
pub(crate) const UPDATE_CONDITION: &str = CONDITION;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_until_the_deadline_or_until_lost() {
        let fence = Fence::new(7, Instant::now() + Duration::from_secs(60));
        assert_eq!(fence.epoch(), 7);
        assert!(fence.held());
        fence.extend(Instant::now());
        assert!(fence.held(), "a deadline never moves backwards");
        fence.lose();
        assert!(!fence.held());
        assert!(fence.lost().is_cancelled());

        let past = Fence::new(1, Instant::now());
        assert!(!past.held(), "a deadline that has passed is not held");
        assert!(past.lost().is_cancelled(), "and the lease is lost for good");
        past.extend(Instant::now() + Duration::from_secs(60));
        assert!(!past.held());
    }
}
