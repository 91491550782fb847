//! Capacity budgets: the operator's ceiling in capacity units per second,
//! enforced by `governor`, under an adaptive working rate that backs off when
//! DynamoDB throttles and grows back on success.
//!
//! Budgets are charged with what DynamoDB reports in `ConsumedCapacity`, not
//! with request counts: a call first acquires its estimated cost, and when the
//! response says what it really cost, the difference is carried as credit or
//! debt into the next acquisition. Over any window, units charged equal units
//! consumed, so the ceiling holds on what DynamoDB actually served.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::future::Future;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::dynamo::classify::{AwsError, Class};
use crate::metrics;

/// Consumed units are counted in thousandths, so half-unit reads add up exactly.
const MILLI: f64 = 1000.0;

/// Share of the ceiling that may be spent at once (the bucket's burst). Small,
/// so that any 10-second window stays within 5% of the ceiling.
const BURST_SHARE: f64 = 0.1;

/// How a ceiling maps onto governor's bucket, which counts whole cells and
/// replenishes one cell per whole number of nanoseconds.
///
/// A fixed cell of a thousandth of a unit breaks at high ceilings: at 700k
/// units/s the period is 1.43 ns, rounded to 1 ns (43% over the ceiling), and
/// above 2M units/s it rounds to 0 (governor refuses it). So the cell grows with
/// the ceiling: a thousandth of a unit (half-unit reads charged exactly) while
/// that keeps the period at or above one microsecond, else whatever size makes
/// the period exactly one microsecond. A period of at least 1000 ns is off by
/// at most 0.5 ns from its exact value: the effective rate is within 0.05% of
/// the ceiling at every ceiling the CLI accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cells {
    /// Capacity units one cell stands for.
    pub unit: f64,
    /// Time governor takes to replenish one cell.
    pub period: Duration,
    /// Cells the bucket holds: the largest charge it takes at once.
    pub burst: u32,
}

impl Cells {
    /// The finest cell: a thousandth of a unit.
    pub const FINEST: f64 = 0.001;
    /// Most cells replenished per second: one per microsecond.
    pub const MAX_PER_SEC: f64 = 1e6;

    /// The cells for a ceiling of `ceiling` units per second (positive).
    pub fn for_ceiling(ceiling: f64) -> Cells {
        let unit = (ceiling / Self::MAX_PER_SEC).max(Self::FINEST);
        let period = Duration::from_secs_f64(unit / ceiling);
        let burst_units = (ceiling * BURST_SHARE).max(1.0);
        let burst = (burst_units / unit).round().clamp(1.0, f64::from(u32::MAX)) as u32;
        Cells {
            unit,
            period: period.max(Duration::from_nanos(1)),
            burst,
        }
    }

    /// The governor quota these cells describe.
    pub fn quota(&self) -> Quota {
        Quota::with_period(self.period)
            .expect("period is at least 1 ns")
            .allow_burst(NonZeroU32::new(self.burst).expect("burst is at least 1"))
    }

    /// The rate governor will really enforce, units per second.
    pub fn effective_rate(&self) -> f64 {
        let ns = self.period.as_nanos() as f64;
        self.unit * 1e9 / ns
    }
}

/// The adaptive working rate: pure logic, no I/O, driven by explicit times.
///
/// A run starts in slow start, as TCP does: at [`Controller::START`] of the
/// ceiling, growing by what is served (so doubling every
/// [`Controller::DOUBLING`] while calls keep up with the rate, and not at all
/// while none are made) until it reaches the ceiling or sees its first
/// throttle. The rate grows only on calls it held back (they waited for
/// capacity): while the run asks for less than the rate, as TCP does when the
/// application is the limit (RFC 7661), it stays where it is, so it never
/// climbs far above what the table has been shown to serve and then meets the
/// table's limit at full speed when demand catches up. A table whose real capacity is below
/// the operator's limit is thus found from below, with a few throttles at the
/// crossing, instead of being hit at the full limit for the first seconds
/// (throttles the application sharing the table would see too).
///
/// On a throttle the rate drops to [`Controller::CUT`] times the rate
/// DynamoDB was actually serving (measured over the last seconds), at most once
/// per [`Controller::COOLDOWN`] (a burst of throttles from requests already in
/// flight is one signal). On success it grows by [`Controller::GROWTH`] of
/// itself per second, up to the ceiling. The rate thus settles just under
/// what the table gives: measured-based cuts keep utilization high, slow
/// growth keeps throttles rare.
#[derive(Debug, Clone)]
pub struct Controller {
    ceiling: f64,
    rate: f64,
    floor: f64,
    /// The served rate at the last throttle: the best estimate of capacity.
    capacity: Option<f64>,
    last_cut: Option<Instant>,
    last_update: Instant,
    /// Still ramping up from the start (no throttle seen, ceiling not reached).
    slow_start: bool,
}

impl Controller {
    /// Where a run starts, as a share of the ceiling.
    pub const START: f64 = 0.1;
    /// During slow start the rate doubles this often while calls keep up with it.
    pub const DOUBLING: Duration = Duration::from_secs(1);
    /// Rate after a throttle, as a share of the measured served rate.
    pub const CUT: f64 = 0.95;
    /// Growth per second near the estimated capacity, as a share of the current rate.
    pub const GROWTH: f64 = 0.01;
    /// Growth per second when well below the estimated capacity (after a deep cut).
    pub const GROWTH_FAST: f64 = 0.05;
    /// Throttles closer together than this count once.
    pub const COOLDOWN: Duration = Duration::from_millis(300);

    /// A controller in slow start, at [`Controller::START`] of the ceiling.
    pub fn new(ceiling: f64, now: Instant) -> Self {
        let floor = (ceiling * 0.01).max(0.5).min(ceiling);
        Controller {
            ceiling,
            rate: (ceiling * Self::START).max(floor),
            floor,
            capacity: None,
            last_cut: None,
            last_update: now,
            slow_start: true,
        }
    }

    /// The current working rate, units per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// DynamoDB throttled a request; `served` is the rate it was serving
    /// (units per second over the last seconds).
    pub fn on_throttle(&mut self, now: Instant, served: f64) {
        if let Some(t) = self.last_cut {
            if now.saturating_duration_since(t) < Self::COOLDOWN {
                return;
            }
        }
        // What DynamoDB served is what the table gives, unless our own backoff
        // held demand down: never cut below half the current rate in one step.
        let mut base = served.min(self.rate).max(self.rate * 0.5);
        let first = self.capacity.is_none();
        self.capacity = Some(base);
        if self.slow_start || first {
            // The first throttle (in slow start, or after slow start reached
            // the ceiling): the rate doubled since the table last kept up, and
            // what it served just now includes its burst, so the capacity is
            // nearer half the rate (TCP halves too). Growth is fast back up to
            // the served estimate.
            base = served.min(self.rate * 0.5).max(self.rate * 0.25);
            self.slow_start = false;
        }
        self.rate = (base * Self::CUT).clamp(self.floor, self.ceiling);
        self.last_cut = Some(now);
        self.last_update = now;
    }

    /// A request succeeded, consuming `units`; `limited` says whether the
    /// rate held it back (it waited for capacity). Only such calls grow the
    /// rate: one the rate did not hold back says nothing about a higher one.
    pub fn on_success(&mut self, now: Instant, units: f64, limited: bool) {
        let dt = now
            .saturating_duration_since(self.last_update)
            .as_secs_f64();
        self.last_update = now;
        if !limited
            || self
                .last_cut
                .is_some_and(|t| now.saturating_duration_since(t) < Self::COOLDOWN)
        {
            return;
        }
        if self.slow_start {
            // `units` served are `units / rate` seconds of the current rate.
            let seconds = units.max(0.0) / self.rate;
            self.rate =
                (self.rate * 2f64.powf(seconds / Self::DOUBLING.as_secs_f64())).min(self.ceiling);
            self.slow_start = self.rate < self.ceiling;
            return;
        }
        let growth = match self.capacity {
            Some(c) if self.rate < c * 0.9 => Self::GROWTH_FAST,
            _ => Self::GROWTH,
        };
        self.rate = (self.rate * (1.0 + growth * dt)).min(self.ceiling);
    }
}

/// What a call did, for settling its charge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settle {
    /// It succeeded and DynamoDB reported this many units (or `None`: use the estimate).
    Served(Option<f64>),
    /// DynamoDB throttled it: nothing was consumed.
    Throttled,
    /// It failed otherwise; a rejected conditional write still consumed its estimate.
    Failed {
        /// Whether DynamoDB charged for it (conditional check failures are charged).
        charged: bool,
    },
}

/// One resource's budget (reads or writes).
pub struct Budget {
    created: Instant,
    ceiling: Option<f64>,
    limiter: Option<DefaultDirectRateLimiter>,
    cells: Option<Cells>,
    state: Mutex<State>,
    consumed_milli: AtomicU64,
    throttles: AtomicU64,
    /// Calls wait for capacity one at a time, in arrival order (tokio's mutex
    /// is fair). See [`Budget::acquire`].
    queue: tokio::sync::Mutex<()>,
    /// This process's share of a ceiling shared with other processes
    /// (`run --join`), units per second: caps the working rate. Stored as f64
    /// bits; `u64::MAX` is no share (the whole ceiling).
    share: AtomicU64,
    /// Wakes calls waiting for a share above zero.
    share_changed: tokio::sync::Notify,
}

struct State {
    controller: Option<Controller>,
    /// Units carried over: positive is credit (estimates were high), negative is debt.
    balance: f64,
    /// Served units in the last seconds, for the measured rate.
    window: VecDeque<(Instant, f64)>,
    /// Outcomes of the last second's calls: throttled or not.
    outcomes: VecDeque<(Instant, bool)>,
}

/// Whether `throttled` of `total` recent calls is a capacity signal worth
/// cutting the rate for. An occasional throttle among many calls (a briefly
/// hot partition) is retried but does not slow the whole run; with few calls
/// every throttle counts.
pub fn significant(throttled: usize, total: usize) -> bool {
    total < 20 || throttled as f64 >= total as f64 * 0.01
}

/// Takes `cells` from the governor, in burst-sized steps (it refuses a
/// single charge above its burst: InsufficientCapacity). Returns the cells taken.
async fn take(
    limiter: &DefaultDirectRateLimiter,
    size: Cells,
    cells: u64,
    waited: &mut bool,
) -> u64 {
    let mut left = cells;
    while left > 0 {
        let step = left.min(u64::from(size.burst)) as u32;
        let n = NonZeroU32::new(step).expect("step is positive");
        if !matches!(limiter.check_n(n), Ok(Ok(()))) {
            *waited = true;
            if limiter.until_n_ready(n).await.is_err() {
                // Cannot happen: step <= burst. Fail open rather than hang.
                break;
            }
        }
        left -= u64::from(step);
    }
    cells - left
}

/// How far back the served rate is measured.
const WINDOW: Duration = Duration::from_secs(3);

impl Budget {
    /// A budget of `ceiling` units per second; `None` means unlimited (only counted).
    pub fn new(ceiling: Option<f64>) -> Self {
        let now = Instant::now();
        let ceiling = ceiling.filter(|c| *c > 0.0);
        let cells = ceiling.map(Cells::for_ceiling);
        let limiter = cells.map(|c| RateLimiter::direct(c.quota()));
        Budget {
            created: now,
            ceiling,
            limiter,
            cells,
            state: Mutex::new(State {
                controller: ceiling.map(|c| Controller::new(c, now)),
                balance: 0.0,
                window: VecDeque::new(),
                outcomes: VecDeque::new(),
            }),
            consumed_milli: AtomicU64::new(0),
            throttles: AtomicU64::new(0),
            queue: tokio::sync::Mutex::new(()),
            share: AtomicU64::new(u64::MAX),
            share_changed: tokio::sync::Notify::new(),
        }
    }

    /// Caps this budget at `units` per second, this process's share of a
    /// ceiling shared with other processes (`None`: the whole ceiling). At
    /// zero, calls wait until a share is given. The adaptive controller keeps
    /// working underneath: the rate used is the lower of the two.
    pub fn set_share(&self, units: Option<f64>) {
        let bits = units.map_or(u64::MAX, |u| u.max(0.0).to_bits());
        self.share.store(bits, Relaxed);
        self.share_changed.notify_waiters();
    }

    /// This process's share of a shared ceiling, if one is set.
    pub fn share(&self) -> Option<f64> {
        match self.share.load(Relaxed) {
            u64::MAX => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// The controller's rate under the share, if any.
    fn capped(&self, rate: f64) -> f64 {
        self.share().map_or(rate, |s| rate.min(s))
    }

    /// The operator's ceiling, units per second.
    pub fn ceiling(&self) -> Option<f64> {
        self.ceiling
    }

    /// The current working rate (ramping up from a tenth of the ceiling at the
    /// start), under this process's share of a shared ceiling.
    pub fn rate(&self) -> Option<f64> {
        let rate = self.lock().controller.as_ref().map(Controller::rate);
        rate.map(|r| self.capped(r))
    }

    /// Units consumed so far, as DynamoDB reported them.
    pub fn consumed(&self) -> f64 {
        self.consumed_milli.load(Relaxed) as f64 / MILLI
    }

    /// Throttled calls seen.
    pub fn throttles(&self) -> u64 {
        self.throttles.load(Relaxed)
    }

    /// The burst: the largest charge the bucket can take at once, in units.
    pub fn burst(&self) -> Option<f64> {
        self.cells.map(|c| f64::from(c.burst) * c.unit)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `estimate` units may be spent at the working rate. Returns
    /// the governor cells (of [`Cells::unit`] each, scaled by ceiling/rate) taken.
    pub async fn acquire(&self, estimate: f64) -> u64 {
        self.admit(estimate).await.0
    }

    /// [`Budget::acquire`], also saying whether the rate held the call back
    /// (it waited for its turn or for capacity).
    async fn admit(&self, estimate: f64) -> (u64, bool) {
        let (Some(limiter), Some(size), Some(ceiling)) = (&self.limiter, self.cells, self.ceiling)
        else {
            return (0, false);
        };
        // Calls take their turn in arrival order, and are priced when their
        // turn comes, not when they arrive. Governor alone admits a charge
        // only once the bucket holds all of it, so a large charge (a call
        // priced during slow start at several times its units, a large item)
        // would wait for a nearly full bucket, which never comes while small
        // charges keep draining it at the full rate: starved calls held their
        // worker slots and the run fell short of its limit. And a call that
        // waited while slow start raised the rate pays the rate of its turn,
        // not the lower one of its arrival.
        let mut waited = false;
        let _turn = match self.queue.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                waited = true;
                self.queue.lock().await
            }
        };
        // A process given no share of a shared ceiling yet waits for one.
        loop {
            let changed = self.share_changed.notified();
            if self.share().is_none_or(|s| s > 0.0) {
                break;
            }
            waited = true;
            changed.await;
        }
        let (mut cells, units, mut rate) = {
            let mut st = self.lock();
            let rate = self.capped(st.controller.as_ref().map_or(ceiling, Controller::rate));
            let scale = ceiling / rate.max(1e-9);
            let need = estimate - st.balance;
            st.balance = (st.balance - estimate).max(0.0);
            if need <= 0.0 {
                return (0, waited);
            }
            let cells = (need * scale / size.unit).ceil();
            // A cell can stand for many units at high ceilings: what the last
            // cell covers beyond `need` is credit, not lost.
            st.balance += cells * size.unit / scale - need;
            (cells as u64, need, rate)
        };
        let mut taken = take(limiter, size, cells, &mut waited).await;
        // The working rate was cut while this call waited (a throttle): it was
        // admitted at the old, higher rate, so it pays the difference at the
        // new one before it is sent. Otherwise every call waiting at the cut
        // (a whole pool's worth) would still go out at the old rate, into a
        // table that just said it is full.
        for _ in 0..8 {
            let now = self.rate().unwrap_or(rate);
            // A share taken away altogether (its process has nothing left to
            // scan) leaves nothing to price at: the call goes at the old rate.
            if now >= rate * 0.999 || now <= 0.0 {
                break;
            }
            cells = (units * (ceiling / now.max(1e-9) - ceiling / rate) / size.unit).ceil() as u64;
            taken += take(limiter, size, cells, &mut waited).await;
            rate = now;
        }
        (taken, waited)
    }

    /// Records what a call really cost and what it says about capacity.
    pub fn settle(&self, estimate: f64, outcome: Settle) {
        self.settle_call(estimate, outcome, true);
    }

    /// [`Budget::settle`] for a call the rate did or did not hold back
    /// (`limited`): only held-back calls that succeed grow the rate.
    fn settle_call(&self, estimate: f64, outcome: Settle, limited: bool) {
        let now = Instant::now();
        let actual = match outcome {
            Settle::Served(units) => units.unwrap_or(estimate),
            Settle::Throttled => 0.0,
            Settle::Failed { charged } => {
                if charged {
                    estimate
                } else {
                    0.0
                }
            }
        };
        self.consumed_milli
            .fetch_add((actual * MILLI).round() as u64, Relaxed);
        let mut st = self.lock();
        // What the acquisition did not cover is debt; what it overpaid is credit,
        // bounded so that a run of overestimates cannot save up a burst.
        // A throttled call earns no credit: its slot was used, and handing the
        // units back would let retries rush the table that just said no.
        let cap = self.burst().unwrap_or(0.0);
        let spent = if outcome == Settle::Throttled {
            estimate
        } else {
            actual
        };
        st.balance = (st.balance + estimate - spent).clamp(-1e9, cap);
        if actual > 0.0 {
            st.window.push_back((now, actual));
        }
        while st
            .window
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW)
        {
            st.window.pop_front();
        }
        // Early in a run the window is not full yet: divide by the time covered.
        let span = now
            .saturating_duration_since(self.created)
            .min(WINDOW)
            .as_secs_f64()
            .max(0.1);
        let served = st.window.iter().map(|(_, u)| u).sum::<f64>() / span;
        if !matches!(outcome, Settle::Failed { .. }) {
            st.outcomes.push_back((now, outcome == Settle::Throttled));
        }
        while st
            .outcomes
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > Duration::from_secs(1))
        {
            st.outcomes.pop_front();
        }
        let recent = st.outcomes.len();
        let recent_throttled = st.outcomes.iter().filter(|(_, t)| *t).count();
        match outcome {
            Settle::Throttled => {
                self.throttles.fetch_add(1, Relaxed);
                if let Some(c) = st.controller.as_mut() {
                    if significant(recent_throttled, recent) {
                        c.on_throttle(now, served);
                    }
                }
            }
            Settle::Served(_) => {
                if let Some(c) = st.controller.as_mut() {
                    c.on_success(now, actual, limited);
                }
            }
            Settle::Failed { .. } => {}
        }
    }
}

impl Budget {
    /// Makes one metered call: acquires `estimate`, runs `call`, settles with the
    /// units the response reports (`units`), or with what the error implies.
    ///
    /// # Errors
    /// The call's own error, unchanged (the caller's retry loop decides).
    pub async fn call<T, Fut>(
        &self,
        op: &'static str,
        estimate: f64,
        units: impl FnOnce(&T) -> Option<f64>,
        call: impl FnOnce() -> Fut,
    ) -> Result<T, AwsError>
    where
        Fut: Future<Output = Result<T, AwsError>>,
    {
        let (_, limited) = self.admit(estimate).await;
        let started = std::time::Instant::now();
        let r = call().await;
        metrics::request(op, started.elapsed());
        let outcome = match &r {
            Ok(out) => Settle::Served(units(out)),
            Err(e) => match e.class() {
                Class::Throttle => {
                    metrics::throttled(op, e.code.as_deref().unwrap_or("throttled"));
                    metrics::retry(op, "throttle");
                    Settle::Throttled
                }
                Class::Transient => {
                    metrics::retry(op, "transient");
                    Settle::Failed { charged: false }
                }
                // DynamoDB charges a write whose condition failed.
                Class::ConditionFailed => Settle::Failed { charged: true },
                _ => Settle::Failed { charged: false },
            },
        };
        self.settle_call(estimate, outcome, limited);
        r
    }
}

/// Read and write budgets of a run.
pub struct Budgets {
    /// Read capacity (Scan, GetItem).
    pub read: Budget,
    /// Write capacity (UpdateItem, DeleteItem).
    pub write: Budget,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_cuts_to_a_share_of_the_served_rate_once_per_cooldown() {
        let t0 = Instant::now();
        let mut c = Controller::steady(180.0, t0);
        // The first throttle, even after slow start reached the ceiling,
        // halves at most: what was served includes the table's burst.
        c.on_throttle(t0, 100.0);
        assert!((c.rate() - 85.5).abs() < 1e-9, "{}", c.rate());
        // More throttles from requests already in flight: one signal.
        c.on_throttle(t0 + Duration::from_millis(100), 50.0);
        assert!((c.rate() - 85.5).abs() < 1e-9);
        c.on_throttle(t0 + Duration::from_secs(2), 80.0);
        assert!((c.rate() - 76.0).abs() < 1e-9, "{}", c.rate());
        // A served rate far below the working rate (our own backoff held demand
        // down) cuts at most by half.
        c.on_throttle(t0 + Duration::from_secs(4), 10.0);
        assert!((c.rate() - 76.0 * 0.5 * 0.95).abs() < 1e-9, "{}", c.rate());
    }

    #[test]
    fn the_rate_grows_only_on_calls_it_held_back() {
        // A run asking for less than the rate says nothing about a higher
        // one: neither slow start nor later growth raises the rate on it.
        let t0 = Instant::now();
        let mut c = Controller::new(100.0, t0);
        c.on_success(t0 + Duration::from_secs(1), 50.0, false);
        assert_eq!(c.rate(), 10.0);
        c.on_success(t0 + Duration::from_secs(2), 10.0, true);
        assert!((c.rate() - 20.0).abs() < 1e-9, "{}", c.rate());
        let mut c = Controller::steady(100.0, t0);
        c.on_throttle(t0, 60.0);
        let cut = c.rate();
        c.on_success(t0 + Duration::from_secs(10), 1.0, false);
        assert_eq!(c.rate(), cut);
        c.on_success(t0 + Duration::from_secs(11), 1.0, true);
        assert!(c.rate() > cut);
    }

    #[test]
    fn success_grows_slowly_back_to_the_ceiling() {
        let t0 = Instant::now();
        let mut c = Controller::steady(100.0, t0);
        c.on_throttle(t0, 50.0);
        let start = c.rate();
        c.on_success(t0 + Duration::from_secs(2), 1.0, true);
        c.on_success(t0 + Duration::from_secs(12), 1.0, true);
        assert!(
            c.rate() > start * 1.09 && c.rate() < start * 1.13,
            "{}",
            c.rate()
        );
        for s in 13..1000 {
            c.on_success(t0 + Duration::from_secs(s), 1.0, true);
        }
        assert_eq!(c.rate(), 100.0);
    }

    #[test]
    fn rate_never_drops_below_the_floor() {
        let t0 = Instant::now();
        let mut c = Controller::new(100.0, t0);
        for s in 0..50 {
            c.on_throttle(t0 + Duration::from_secs(2 * s), 0.0);
        }
        assert!(c.rate() >= 1.0 - 1e-9, "{}", c.rate());
    }

    impl Budget {
        /// A budget past slow start, working at its ceiling.
        fn steady(ceiling: f64) -> Self {
            let b = Budget::new(Some(ceiling));
            b.lock().controller = Some(Controller::steady(ceiling, Instant::now()));
            b
        }
    }

    impl Controller {
        /// A controller past slow start, at the ceiling.
        fn steady(ceiling: f64, now: Instant) -> Self {
            let mut c = Controller::new(ceiling, now);
            c.rate = ceiling;
            c.slow_start = false;
            c
        }
    }

    /// What [`simulate`] saw: after `warmup` seconds, and over the whole run.
    struct Sim {
        utilization: f64,
        share_steady: f64,
        share_whole: f64,
        /// Seconds until the rate first reached the ceiling, if it did.
        reached: Option<f64>,
    }

    /// A run of `seconds` against a table with `capacity` units/s and a
    /// bucket of one second of capacity, with calls of one unit sent at the
    /// controller's rate from t = 0.
    fn simulate(ceiling: f64, capacity: f64, seconds: f64, warmup: f64) -> Sim {
        let t0 = Instant::now();
        let mut c = Controller::new(ceiling, t0);
        let mut bucket = capacity;
        let (mut served, mut sent, mut throttled) = (0.0, 0u64, 0u64);
        let (mut sent_all, mut throttled_all) = (0u64, 0u64);
        let mut reached = None;
        let mut window: VecDeque<(f64, f64)> = VecDeque::new();
        let step = 0.01; // 10 ms
        let mut debt = 0.0;
        for i in 0..(seconds / step) as u64 {
            let t = i as f64 * step;
            let now = t0 + Duration::from_secs_f64(t);
            bucket = (bucket + capacity * step).min(capacity);
            debt += c.rate() * step;
            if reached.is_none() && c.rate() >= ceiling {
                reached = Some(t);
            }
            while debt >= 1.0 {
                debt -= 1.0;
                sent_all += 1;
                if t > warmup {
                    sent += 1;
                }
                if bucket > 0.0 {
                    bucket -= 1.0;
                    if t > warmup {
                        served += 1.0;
                    }
                    window.push_back((t, 1.0));
                    c.on_success(now, 1.0, true);
                } else {
                    throttled_all += 1;
                    if t > warmup {
                        throttled += 1;
                    }
                    while window.front().is_some_and(|(w, _)| t - w > 3.0) {
                        window.pop_front();
                    }
                    let span = t.clamp(0.1, 3.0);
                    let rate = window.iter().map(|(_, u)| u).sum::<f64>() / span;
                    c.on_throttle(now, rate);
                }
            }
        }
        Sim {
            utilization: served / (capacity.min(ceiling) * (seconds - warmup)),
            share_steady: throttled as f64 / sent.max(1) as f64,
            share_whole: throttled_all as f64 / sent_all.max(1) as f64,
            reached,
        }
    }

    /// A client whose ceiling is 3C: the rate settles near C, few throttles.
    #[test]
    fn settles_near_capacity_when_capacity_is_below_the_ceiling() {
        let sim = simulate(300.0, 100.0, 300.0, 60.0);
        assert!(sim.utilization > 0.95, "utilization {}", sim.utilization);
        assert!(
            sim.share_steady < 0.02,
            "throttled share {}",
            sim.share_steady
        );
    }

    /// Slow start: over a 30 s run, startup included, a table at a third of
    /// the ceiling sees at most 2% of requests throttled (starting at the
    /// ceiling, about 7% were).
    #[test]
    fn slow_start_keeps_startup_throttles_rare() {
        let sim = simulate(300.0, 100.0, 30.0, 0.0);
        assert!(
            sim.share_whole <= 0.02,
            "throttled share {}",
            sim.share_whole
        );
        assert!(sim.utilization > 0.85, "utilization {}", sim.utilization);
    }

    /// Below capacity, slow start reaches the ceiling within a few seconds and
    /// never throttles.
    #[test]
    fn slow_start_reaches_a_ceiling_below_capacity() {
        let sim = simulate(100.0, 300.0, 30.0, 5.0);
        let reached = sim.reached.expect("the rate reaches the ceiling");
        assert!(reached <= 4.0, "reached the ceiling after {reached} s");
        assert_eq!(sim.share_whole, 0.0);
        assert!(sim.utilization > 0.99, "utilization {}", sim.utilization);
    }

    #[test]
    fn slow_start_ends_at_the_first_throttle() {
        let t0 = Instant::now();
        let mut c = Controller::new(1000.0, t0);
        assert_eq!(c.rate(), 100.0);
        // Growth follows what is served, not the clock: idle time adds nothing.
        c.on_success(t0 + Duration::from_secs(5), 100.0, true);
        assert!((c.rate() - 200.0).abs() < 1e-6, "{}", c.rate());
        c.on_success(t0 + Duration::from_secs(6), 200.0, true);
        assert!((c.rate() - 400.0).abs() < 1e-6, "{}", c.rate());
        // Out of slow start at half the rate (the served rate is higher: it
        // includes the table's burst), growing fast back toward what was served.
        c.on_throttle(t0 + Duration::from_secs(2), 300.0);
        assert!((c.rate() - 190.0).abs() < 1e-6, "{}", c.rate());
        c.on_success(t0 + Duration::from_secs(3), 190.0, true);
        assert!((c.rate() - 199.5).abs() < 1e-6, "{}", c.rate());
        // A later throttle cuts as before, and growth near it is slow.
        c.on_throttle(t0 + Duration::from_secs(4), 210.0);
        assert!((c.rate() - 189.525).abs() < 1e-6, "{}", c.rate());
        c.on_success(t0 + Duration::from_secs(5), 190.0, true);
        assert!(c.rate() < 191.5, "{}", c.rate());
    }

    #[test]
    fn sporadic_throttles_among_many_calls_do_not_cut_the_rate() {
        assert!(!significant(1, 500), "one throttle in 500 calls");
        assert!(significant(5, 500), "1% of calls throttled");
        assert!(significant(1, 10), "with few calls every throttle counts");
    }

    /// Every ceiling from 1 unit/s to the CLI's maximum gets a period of at
    /// least a microsecond and an enforced rate within 0.1% of the ceiling.
    #[test]
    fn cells_keep_the_enforced_rate_at_the_ceiling_up_to_the_cli_maximum() {
        let mut ceilings: Vec<f64> = vec![1.0, 3.0, 500.0, 999.0, 1001.0, 700_000.0];
        ceilings.extend((0..=1000).map(|i| 1.0 + i as f64 * 9_999.999));
        ceilings.extend([2_000_000.0, 9_999_999.0, 10_000_000.0]);
        for c in ceilings {
            let cells = Cells::for_ceiling(c);
            assert!(cells.period >= Duration::from_micros(1) || cells.unit == Cells::FINEST);
            let err = (cells.effective_rate() - c).abs() / c;
            assert!(
                err < 0.001,
                "ceiling {c}: enforced {}",
                cells.effective_rate()
            );
            let burst = f64::from(cells.burst) * cells.unit;
            assert!(
                (burst - (c * BURST_SHARE).max(1.0)).abs() <= cells.unit,
                "{c}"
            );
            Budget::new(Some(c));
        }
    }

    /// Drives governor itself on a fake clock for 10 s: what it admits is the
    /// ceiling, within 0.5%, at low and at very high ceilings.
    #[test]
    fn governor_admits_the_ceiling_on_a_fake_clock() {
        use governor::clock::FakeRelativeClock;
        for c in [1.0, 500.0, 700_000.0, 2_000_000.0, 10_000_000.0] {
            let cells = Cells::for_ceiling(c);
            let clock = FakeRelativeClock::default();
            let limiter = RateLimiter::direct_with_clock(cells.quota(), clock.clone());
            let drain = || {
                let mut taken = 0u64;
                let mut n = cells.burst;
                while n > 0 {
                    match limiter.check_n(NonZeroU32::new(n).unwrap()) {
                        Ok(Ok(())) => taken += u64::from(n),
                        _ => n /= 2,
                    }
                }
                taken
            };
            drain(); // the initial burst
            let (step, steps) = (Duration::from_millis(50), 200);
            let mut taken = 0;
            for _ in 0..steps {
                clock.advance(step);
                taken += drain();
            }
            let rate = taken as f64 * cells.unit / (step.as_secs_f64() * f64::from(steps));
            assert!(
                (rate - c).abs() / c < 0.005,
                "ceiling {c}/s: governor admitted {rate}/s"
            );
        }
    }

    #[tokio::test]
    async fn a_charge_smaller_than_a_cell_is_carried_as_credit() {
        // 10M units/s: a cell is 10 units; ten 1-unit charges take one cell.
        let b = Budget::steady(10_000_000.0);
        let taken: u64 = futures::future::join_all((0..10).map(|_| b.acquire(1.0)))
            .await
            .into_iter()
            .sum();
        assert_eq!(taken, 1);
    }

    #[tokio::test]
    async fn a_share_caps_the_rate_and_a_zero_share_waits_for_one() {
        let b = Budget::steady(100.0);
        assert_eq!(b.rate(), Some(100.0));
        b.set_share(Some(25.0));
        assert_eq!(b.rate(), Some(25.0), "the lower of the rate and the share");
        b.set_share(Some(0.0));
        let waiting = b.acquire(1.0);
        let mut waiting = std::pin::pin!(waiting);
        let pending = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(pending.is_err(), "no share: the call waits");
        b.set_share(Some(50.0));
        let cells = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a share given: the call goes");
        // Priced at the share: one unit at 50/s of a 100/s ceiling is two units' cells.
        let units = cells as f64 * Cells::for_ceiling(100.0).unit;
        assert!((units - 2.0).abs() < 1e-9, "{units}");
        b.set_share(None);
        assert_eq!(b.rate(), Some(100.0));
    }

    #[tokio::test]
    async fn unlimited_budget_counts_without_waiting() {
        let b = Budget::new(None);
        b.acquire(1e9).await;
        b.settle(1.0, Settle::Served(Some(2.5)));
        b.settle(1.0, Settle::Throttled);
        assert_eq!(b.consumed(), 2.5);
        assert_eq!(b.throttles(), 1);
        assert_eq!(b.rate(), None);
    }

    #[tokio::test]
    async fn a_large_charge_is_not_starved_by_small_ones_behind_it() {
        // 100 units/s, burst 10. The bucket is emptied; then a charge of the
        // whole burst arrives before ten small ones. Governor alone admits
        // each small one as soon as half a unit is back, so the bucket is
        // never full and the large one waited for all of them (and, with
        // more coming, for ever); in arrival order it goes first.
        let b = Budget::steady(100.0);
        b.acquire(10.0).await;
        let done = AtomicU64::new(0);
        let finish = |estimate: f64| {
            let (b, done) = (&b, &done);
            async move {
                b.acquire(estimate).await;
                done.fetch_add(1, Relaxed)
            }
        };
        let large = finish(10.0);
        let small = (0..10).map(|_| finish(0.5));
        let (large, small) = futures::join!(large, futures::future::join_all(small));
        assert_eq!(
            large, 0,
            "the large charge finished after {large} small ones"
        );
        assert_eq!(small.len(), 10);
    }

    #[tokio::test]
    async fn charges_above_the_burst_are_taken_in_steps() {
        // 1000 units/s, burst 100: a 250-unit charge must not be refused.
        let b = Budget::steady(1000.0);
        assert_eq!(b.burst(), Some(100.0));
        assert_eq!(b.acquire(250.0).await, 250_000);
    }
}
