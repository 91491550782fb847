//! Retry with jittered exponential backoff.
//!
//! The SDK's own retries are disabled (see [`crate::dynamo::client`]). Scan
//! pages, item writes and re-reads, DescribeTable of the target table, ledger
//! reads, state-table queries and fenced state writes go through [`retry`],
//! which retries throttling and transient faults and returns anything else at
//! once. dynbulk's own calls give up after a number of attempts; the data path
//! (item writes, re-reads, scan pages) gives up after a time budget
//! (`--retry-budget`), because a partition the application keeps hot can
//! throttle one item for minutes.
//!
//! Not every call retries here: the lock (`state::lock`) paces its claims and
//! renewals by the lease instead, and creating the state table and the schema
//! step send once and then poll until the table or index is active.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::dynamo::classify::{AwsError, Class};

/// Backoff schedule: "full jitter" exponential backoff (AWS architecture blog),
/// `sleep = random(0, min(cap, base * 2^attempt))`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay ceiling.
    pub base: Duration,
    /// Largest delay ceiling.
    pub cap: Duration,
    /// Attempts in all, the first included, before giving up (when there is
    /// no `budget`).
    pub max_attempts: u32,
    /// Retry for this long from the first attempt, however many attempts
    /// that takes, instead of `max_attempts`.
    pub budget: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            cap: Duration::from_secs(5),
            max_attempts: 12,
            budget: None,
        }
    }
}

impl Backoff {
    /// The ceiling of the delay before retry number `attempt` (1 = first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// A jittered delay before retry number `attempt`, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_micros() as u64;
        Duration::from_micros(rng.random_range(0..=ceiling.max(1)))
    }
}

/// What happened across the attempts of one call.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attempts {
    /// Responses that were throttling errors.
    pub throttled: u32,
    /// Transient faults.
    pub transient: u32,
}

/// Runs `op` until it succeeds, fails with an error that retrying cannot fix,
/// or runs out of attempts (or of its time budget, when the policy has one).
/// Throttling and transient errors are retried after a jittered delay; the
/// counts go to `attempts` (and to metrics by the caller).
///
/// # Errors
/// The last error when it is not retryable or when attempts or the budget are
/// exhausted; such an error is still classed throttle or transient.
pub async fn retry<T, F, Fut>(
    policy: &Backoff,
    attempts: &mut Attempts,
    mut op: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                match e.class() {
                    Class::Throttle => attempts.throttled += 1,
                    Class::Transient => attempts.transient += 1,
                    _ => return Err(e),
                }
                let mut delay = policy.delay(attempt, &mut rand::rng());
                match policy.budget {
                    Some(budget) => {
                        let left = budget.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            return Err(e);
                        }
                        // One more attempt at the budget's end, not after it.
                        delay = delay.min(left);
                    }
                    None if attempt >= policy.max_attempts => return Err(e),
                    None => {}
                }
                tracing::debug!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "retrying after a retryable error");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
            max_attempts: 5,
            budget: None,
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(10));
        assert_eq!(b.ceiling(2), Duration::from_millis(20));
        assert_eq!(b.ceiling(4), Duration::from_millis(80));
        assert_eq!(b.ceiling(5), Duration::from_millis(100));
        assert_eq!(b.ceiling(60), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<_> = (0..50).map(|_| b.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= b.ceiling(3)));
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter must vary");
    }

    fn err(code: &str) -> AwsError {
        AwsError {
            code: Some(code.into()),
            status: Some(400),
            message: String::new(),
            no_response: false,
            construction: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_throttles_then_succeeds() {
        let mut n = 0;
        let mut a = Attempts::default();
        let r = retry(&Backoff::default(), &mut a, || {
            n += 1;
            let fail = n < 4;
            async move {
                if fail {
                    Err(err("ProvisionedThroughputExceededException"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 4);
        assert_eq!(a.throttled, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_errors_are_not_retried() {
        let mut n = 0;
        let mut a = Attempts::default();
        let r: Result<(), _> = retry(&Backoff::default(), &mut a, || {
            n += 1;
            async { Err(err("ResourceNotFoundException")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let mut n = 0;
        let mut a = Attempts::default();
        let policy = Backoff {
            max_attempts: 3,
            ..Backoff::default()
        };
        let r: Result<(), _> = retry(&policy, &mut a, || {
            n += 1;
            async { Err(err("ThrottlingException")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_budget_retries_throttles_past_max_attempts_until_it_is_spent() {
        let policy = Backoff {
            budget: Some(Duration::from_secs(600)),
            ..Backoff::default()
        };
        // Throttled for 40 attempts (the attempt count alone would stop at 12), then served.
        let mut n = 0;
        let mut a = Attempts::default();
        let r = retry(&policy, &mut a, || {
            n += 1;
            let fail = n <= 40;
            async move {
                if fail {
                    Err(err("ProvisionedThroughputExceededException"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 41);
        assert_eq!(a.throttled, 40);

        // Throttled for ever: gives up once the budget is spent, not before.
        let policy = Backoff {
            budget: Some(Duration::from_secs(60)),
            ..Backoff::default()
        };
        let start = tokio::time::Instant::now();
        let mut n = 0;
        let r: Result<(), _> = retry(&policy, &mut Attempts::default(), || {
            n += 1;
            async { Err(err("ThrottlingException")) }
        })
        .await;
        assert_eq!(r.unwrap_err().class(), Class::Throttle);
        let spent = start.elapsed();
        assert!(spent >= Duration::from_secs(60), "{spent:?}");
        assert!(spent < Duration::from_secs(61), "{spent:?}");
        assert!(n > 12, "{n} attempts");
    }
}
