//! Segment tasks: one parallel-scan segment each, sending pages into the bounded
//! channel. The channel's bound is what keeps memory flat: a segment waits
//! when the workers are behind.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capacity::backoff::{retry, Attempts, Backoff};
use crate::capacity::cost::{bytes_per_rcu, Consumed, MAX_PAGE_BYTES};
use crate::capacity::limiter::Budgets;
use crate::dynamo::classify::AwsError;
use crate::dynamo::value::item_size;
use crate::error::{Error, Result};
use crate::migration::{Attrs, ScanOptions};
use crate::pipeline::inflight::{page_items, InFlight, ItemSize, Reservation};
use crate::report::Stats;

/// One Scan response from one segment, about [`crate::pipeline::inflight::PAGE_BYTES`].
#[derive(Debug)]
pub struct Page {
    /// Segment number, `0..total_segments`.
    pub segment: u32,
    /// Page number within the segment, from 0.
    pub seq: u64,
    /// The items.
    pub items: Vec<Attrs>,
    /// Where the next page starts; `None` on the segment's last page.
    pub last_key: Option<Attrs>,
    /// The page's bytes held against the run's in-flight budget, until the
    /// page is done with.
    pub reservation: Reservation,
}

/// What every segment task scans.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    /// Table name.
    pub table: String,
    /// TotalSegments of the run.
    pub total_segments: u32,
    /// Largest Scan `Limit` (the plan's page size); pages are otherwise sized
    /// to [`crate::pipeline::inflight::PAGE_BYTES`] from the items seen.
    pub page_size: Option<i32>,
    /// The migration's scan options.
    pub options: ScanOptions,
    /// Key attribute names (always projected).
    pub keys: Vec<String>,
}

/// What every segment task shares: the client, the scan, counters, retry policy.
#[derive(Clone)]
pub struct Scanner {
    /// The shared client.
    pub client: Client,
    /// What to scan.
    pub spec: Arc<ScanSpec>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Retry policy.
    pub backoff: Backoff,
    /// Capacity budgets (scans charge the read budget).
    pub budgets: Arc<Budgets>,
    /// Average item size in bytes, for the first page's size and cost.
    pub avg_item_bytes: f64,
    /// The run's bound on scanned bytes in memory.
    pub inflight: InFlight,
}

impl Scanner {
    /// Scans one segment from `start` to its end, sending each page to `tx`.
    /// Stops early, without error, when `cancel` fires or the receiver is gone.
    ///
    /// # Errors
    /// A scan call that fails with a non-retryable error, or keeps failing.
    pub async fn segment(
        &self,
        segment: u32,
        start: Option<Attrs>,
        tx: mpsc::Sender<Page>,
        cancel: CancellationToken,
    ) -> Result<()> {
        scan_segment(self, segment, start, tx, cancel).await
    }
}

/// One Scan call of `segment` from `start` (at most `limit` items, its cost
/// estimated at `estimate` units), through the read budget, retried on
/// throttles and transient faults (counted in the run's stats).
///
/// # Errors
/// A Scan that still fails after the retries, naming the segment and table.
async fn scan_page(
    scanner: &Scanner,
    segment: u32,
    start: &Option<Attrs>,
    (limit, estimate): (i32, f64),
    (projection, names): (&Option<String>, &HashMap<String, String>),
) -> Result<aws_sdk_dynamodb::operation::scan::ScanOutput> {
    let Scanner {
        client,
        spec,
        stats,
        backoff,
        budgets,
        ..
    } = scanner;
    let mut attempts = Attempts::default();
    let out = retry(backoff, &mut attempts, || {
        let req = client
            .scan()
            .table_name(&spec.table)
            .segment(segment as i32)
            .total_segments(spec.total_segments as i32)
            .consistent_read(spec.options.consistent_read)
            .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
            .limit(limit)
            .set_exclusive_start_key(start.clone())
            .set_projection_expression(projection.clone())
            .set_filter_expression(spec.options.filter.clone())
            .set_expression_attribute_names(if names.is_empty() {
                None
            } else {
                Some(names.clone())
            })
            .set_expression_attribute_values(if spec.options.filter_values.is_empty() {
                None
            } else {
                Some(spec.options.filter_values.clone())
            });
        budgets.read.call(
            "Scan",
            estimate,
            Consumed::consumed_units,
            move || async move { req.send().await.map_err(AwsError::from_sdk) },
        )
    })
    .await;
    stats.throttled.fetch_add(
        attempts.throttled.into(),
        std::sync::atomic::Ordering::Relaxed,
    );
    stats.transient.fetch_add(
        attempts.transient.into(),
        std::sync::atomic::Ordering::Relaxed,
    );
    out.map_err(|e| {
        Error::aws(
            format!(
                "scanning segment {segment} of {} of table {}",
                spec.total_segments, spec.table
            ),
            e,
        )
    })
}

/// Scans one segment from `start` to its end (or until `cancel`), page by
/// page: reserve in-flight bytes, take read capacity, Scan ([`scan_page`]),
/// size the next page from what came back, send the page on. The start key,
/// the cost estimate, the item-size average and the reservation carry from
/// one page to the next.
async fn scan_segment(
    scanner: &Scanner,
    segment: u32,
    start: Option<Attrs>,
    tx: mpsc::Sender<Page>,
    cancel: CancellationToken,
) -> Result<()> {
    let Scanner {
        spec,
        stats,
        avg_item_bytes,
        inflight,
        ..
    } = scanner;
    let per_rcu = bytes_per_rcu(spec.options.consistent_read);
    let mut size = ItemSize::new(*avg_item_bytes);
    // The first page's cost is estimated from the item size; later pages
    // from what the previous page of this segment really cost.
    let mut estimate = (f64::from(page_items(size.avg(), spec.page_size)) * size.avg() / per_rcu)
        .min(MAX_PAGE_BYTES / per_rcu)
        .max(0.5);
    let mut start = start;
    let mut seq = 0;
    let (projection, mut names) = projection(spec);
    names.extend(spec.options.filter_names.clone());
    loop {
        // The page's bytes are reserved before it is asked for, so the
        // pages in flight (waiting for the channel, in it, with the workers)
        // stay within the run's budget whatever the table's size.
        let limit = page_items(size.avg(), spec.page_size);
        let mut reservation = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            r = inflight.reserve(f64::from(limit) * size.avg()) => r,
        };
        let out = scan_page(
            scanner,
            segment,
            &start,
            (limit, estimate),
            (&projection, &names),
        )
        .await?;
        if let Some(units) = out.consumed_units() {
            estimate = units.max(0.5);
        }
        let items = out.items.unwrap_or_default();
        let bytes: usize = items.iter().map(item_size).sum();
        size.observe(items.len(), bytes);
        reservation.settle(bytes);
        let last_key = out.last_evaluated_key.filter(|k| !k.is_empty());
        stats
            .scanned
            .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Stats::inc(&stats.pages);
        let done = last_key.is_none();
        let page = Page {
            segment,
            seq,
            items,
            last_key: last_key.clone(),
            reservation,
        };
        tokio::select! {
            sent = tx.send(page) => if sent.is_err() { return Ok(()) },
            _ = cancel.cancelled() => return Ok(()),
        }
        if done {
            Stats::inc(&stats.segments_done);
            return Ok(());
        }
        seq += 1;
        start = last_key;
    }
}

/// The projection expression (keys always included) and its name placeholders.
fn projection(spec: &ScanSpec) -> (Option<String>, HashMap<String, String>) {
    match &spec.options.projection {
        Some(attrs) => {
            let (expr, names) = projection_expr(&spec.keys, attrs);
            (Some(expr), names)
        }
        None => (None, HashMap::new()),
    }
}

/// A projection expression for `attrs` plus the key attributes, with `#pN`
/// placeholders (attribute names may be reserved words).
pub fn projection_expr(keys: &[String], attrs: &[String]) -> (String, HashMap<String, String>) {
    let mut all: Vec<&String> = keys.iter().collect();
    for a in attrs {
        if !all.contains(&a) {
            all.push(a);
        }
    }
    let mut names = HashMap::new();
    let mut parts = Vec::new();
    for (i, a) in all.into_iter().enumerate() {
        // A prefix of dynbulk's own, so a migration's filter names cannot collide.
        let p = format!("#dynbulk_p{i}");
        names.insert(p.clone(), a.clone());
        parts.push(p);
    }
    (parts.join(", "), names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_always_includes_keys() {
        let spec = ScanSpec {
            table: "t".into(),
            total_segments: 1,
            page_size: None,
            options: ScanOptions {
                projection: Some(vec!["status".into(), "pk".into()]),
                ..Default::default()
            },
            keys: vec!["pk".into(), "sk".into()],
        };
        let (expr, names) = projection(&spec);
        assert_eq!(
            expr.as_deref(),
            Some("#dynbulk_p0, #dynbulk_p1, #dynbulk_p2")
        );
        assert_eq!(names["#dynbulk_p0"], "pk");
        assert_eq!(names["#dynbulk_p1"], "sk");
        assert_eq!(names["#dynbulk_p2"], "status");
    }
}
