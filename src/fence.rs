//! A runner's proof that it still holds its lock: the lock's epoch (a fencing
//! token) and the instant, on this process's monotonic clock, until which its
//! lease is known to be held.
//!
//! The lease is known held until its last successful renewal's send time plus
//! the lease, minus one heartbeat: another runner takes the lock over only
//! after seeing it unchanged for a whole lease period (see [`crate::lock`]),
//! which starts after that renewal landed, so a holder that stops at this
//! instant has stopped before anyone else can start. After it, or once a
//! renewal is refused (the lock was taken over), [`Fence::held`] is false and
//! the runner sends nothing more.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

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
    /// not passed on the monotonic clock.
    pub fn held(&self) -> bool {
        !self.inner.lost.is_cancelled() && Instant::now() < self.until()
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
}

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
        assert!(!past.lost().is_cancelled());
    }
}
