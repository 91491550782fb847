//! The bound on scanned data held in memory.
//!
//! A Scan page can be up to 1 MB, and decoded into attribute values it takes
//! several times that. Counting pages is therefore no bound at all: with many
//! segments each holding a page while it waits for the channel, plus the
//! channel, plus the pages the workers are on, a run held tens of MB of raw
//! items (hundreds of MB decoded) once its table was larger than that.
//! Instead, every page holds a [`Reservation`] of bytes against one
//! [`InFlight`] budget from before its Scan is sent until its last item is
//! written; a segment whose next page does not fit waits. Pages are asked
//! for by item count (`Limit`) sized to [`PAGE_BYTES`] from the sizes seen so
//! far, so a reservation is close to what the page turns out to hold.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The target size of one Scan page, in bytes of item data.
pub const PAGE_BYTES: usize = 64 * 1024;

/// Bytes of scanned item data a run holds at most (plus at most one page per
/// segment of overshoot when a page holds more than was reserved).
pub const BUDGET_BYTES: usize = 4 * 1024 * 1024;

/// The largest `Limit` asked for, whatever the items' size.
const MAX_PAGE_ITEMS: i32 = 10_000;

/// Permits are KiB, so that a budget of any useful size fits a semaphore.
const UNIT: usize = 1024;

/// The run's budget of bytes in flight, shared by every segment.
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    total: u32,
}

/// Bytes of one page held against the budget; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl InFlight {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `bytes` (capped at the whole budget, at least one unit) are
    /// free and holds them.
    pub async fn reserve(&self, bytes: f64) -> Reservation {
        let units = units(bytes).min(self.total);
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the in-flight semaphore is never closed");
        Reservation { permit }
    }

    /// Bytes free now (for tests and the bench).
    pub fn available(&self) -> usize {
        self.permits.available_permits() * UNIT
    }
}

impl Reservation {
    /// Adjusts the reservation to the `bytes` the page really holds: a
    /// surplus is released at once; a shortfall is not waited for (the page
    /// is already in memory, and waiting could deadlock the pipeline), so a
    /// page may overshoot the budget by what it holds beyond its estimate.
    pub fn settle(&mut self, bytes: usize) {
        let keep = units(bytes as f64) as usize;
        let held = self.permit.num_permits();
        if keep < held {
            // Dropping the split-off part returns it to the budget.
            drop(self.permit.split(held - keep));
        }
    }
}

fn units(bytes: f64) -> u32 {
    let units = (bytes.max(0.0) / UNIT as f64).ceil();
    if units >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        (units as u32).max(1)
    }
}

/// Keeps glibc's allocator from holding on to freed page buffers.
///
/// Scan responses are read into buffers of 64-256 KB. glibc serves blocks
/// that large with mmap at first, but every time one is freed it raises its
/// mmap threshold to that size, after which such buffers come from the heap
/// arenas and fragment them: the process's resident size kept growing with the
/// number of pages read (33 MB after 10k items, 39 MB after 100k) while the
/// live heap stayed at 18 MB. A fixed threshold (which also turns the dynamic
/// adjustment off) keeps them mmapped and returned on free: 29 and 31 MB.
/// Called once by [`crate::cli::run_cli`]; a no-op elsewhere than glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before the
    // runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, PAGE_BYTES as libc::c_int);
    }
}

/// The Scan `Limit` for a page of about [`PAGE_BYTES`], given the average
/// item size seen so far, never above `cap` (the plan's page size).
pub fn page_items(avg_item_bytes: f64, cap: Option<i32>) -> i32 {
    let items = (PAGE_BYTES as f64 / avg_item_bytes.max(1.0)).floor();
    let items = if items >= f64::from(MAX_PAGE_ITEMS) {
        MAX_PAGE_ITEMS
    } else {
        (items as i32).max(1)
    };
    cap.map_or(items, |c| items.min(c.max(1)))
}

/// A segment's running estimate of its items' size: it rises at once to a
/// larger page average (a reservation must not be short twice), and falls
/// halfway toward a smaller one.
#[derive(Debug, Clone, Copy)]
pub struct ItemSize {
    avg: f64,
}

impl ItemSize {
    /// Starts from the table's average (DescribeTable), or 1 KB when unknown.
    pub fn new(table_avg: f64) -> Self {
        Self {
            avg: if table_avg.is_finite() && table_avg > 0.0 {
                table_avg
            } else {
                1024.0
            },
        }
    }

    /// The current estimate, in bytes.
    pub fn avg(&self) -> f64 {
        self.avg
    }

    /// Takes in a page of `items` items holding `bytes` bytes.
    pub fn observe(&mut self, items: usize, bytes: usize) {
        if items == 0 {
            return;
        }
        let page = bytes as f64 / items as f64;
        self.avg = if page > self.avg {
            page
        } else {
            (self.avg + page) / 2.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_items_targets_page_bytes_within_the_cap() {
        assert_eq!(page_items(400.0, None), 163);
        assert_eq!(page_items(400.0, Some(100)), 100);
        assert_eq!(page_items(1.0, None), MAX_PAGE_ITEMS);
        assert_eq!(page_items(400_000.0, None), 1);
        assert_eq!(page_items(0.0, None), MAX_PAGE_ITEMS);
    }

    #[test]
    fn item_size_rises_at_once_and_falls_halfway() {
        let mut s = ItemSize::new(0.0);
        assert_eq!(s.avg(), 1024.0);
        s.observe(10, 40_000);
        assert_eq!(s.avg(), 4000.0);
        s.observe(10, 20_000);
        assert_eq!(s.avg(), 3000.0);
        s.observe(0, 0);
        assert_eq!(s.avg(), 3000.0);
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_wait_for_the_budget_and_settle_to_what_a_page_holds() {
        let budget = InFlight::new(100 * UNIT);
        let mut a = budget.reserve(60.0 * UNIT as f64).await;
        assert_eq!(budget.available(), 40 * UNIT);
        // More than is free: waits until `a` gives some back.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(50.0 * UNIT as f64).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        a.settle(10 * UNIT);
        let b = waiting.await.unwrap();
        assert_eq!(budget.available(), 40 * UNIT);
        // A page larger than its reservation keeps what it has: no wait.
        a.settle(90 * UNIT);
        assert_eq!(budget.available(), 40 * UNIT);
        // More than the whole budget is capped, so it cannot wait forever.
        drop((a, b));
        let c = budget.reserve(1e12).await;
        assert_eq!(budget.available(), 0);
        drop(c);
        assert_eq!(budget.available(), 100 * UNIT);
    }
}
