//! Prometheus metrics: the names (one constant each, described once), the
//! exporter, and the only calls to the `metrics` macros.
//!
//! Hot paths do not touch the recorder per item: workers count in the run's
//! atomic `Stats`, and [`publish`] copies a snapshot into the metrics once a
//! second (and at the end). Per-request metrics (latency, throttles, retries)
//! are recorded where the request is made ([`crate::capacity::limiter::Budget::call`]).
//!
//! Labels come from small fixed sets: `migration`, `table`, `kind`
//! (read/write), `op` (the DynamoDB operation), `outcome`, `code`, `reason`,
//! `state`. Never item keys, never segment numbers.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::error::{Error, Result};
use crate::report::Progress;

/// Items read by the scan.
pub const ITEMS_SCANNED: &str = "dynbulk_items_scanned_total";
/// Items by outcome: updated, deleted, unchanged, failed.
pub const ITEMS: &str = "dynbulk_items_total";
/// Conditional writes rejected because the application changed the item.
pub const CONFLICTS: &str = "dynbulk_write_conflicts_total";
/// Capacity units consumed, as DynamoDB reported them, by kind.
pub const CONSUMED: &str = "dynbulk_consumed_capacity_units_total";
/// The operator's limit in units per second, by kind.
pub const LIMIT: &str = "dynbulk_capacity_limit_units";
/// The adaptive working rate in units per second, by kind.
pub const RATE: &str = "dynbulk_capacity_rate_units";
/// Throttled requests by operation and error code.
pub const THROTTLED: &str = "dynbulk_throttled_requests_total";
/// Retried requests by operation and reason (throttle, transient).
pub const RETRIES: &str = "dynbulk_retries_total";
/// Request latency by operation.
pub const LATENCY: &str = "dynbulk_request_duration_seconds";
/// Segments by state: total, completed.
pub const SEGMENTS: &str = "dynbulk_segments";
/// Items in the table according to DescribeTable (the progress denominator).
pub const ITEMS_ESTIMATED: &str = "dynbulk_items_estimated";
/// Checkpoint writes to the state table.
pub const CHECKPOINTS: &str = "dynbulk_checkpoint_saves_total";
/// When the run started, Unix seconds.
pub const RUN_START: &str = "dynbulk_run_start_time_seconds";
/// 1 for the run's current state (running, stopped, done, failed), 0 for the others.
pub const RUN_STATE: &str = "dynbulk_run_state";

/// Latency buckets, seconds: DynamoDB answers in single-digit milliseconds
/// when healthy; throttling and retries push into the hundreds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Run states for [`RUN_STATE`].
pub const STATES: &[&str] = &["running", "stopped", "done", "failed"];

/// Every DynamoDB operation dynbulk meters (the `op` label of [`THROTTLED`],
/// [`RETRIES`] and [`LATENCY`]); [`request`] checks it in debug builds.
pub const OPS: &[&str] = &[
    "Scan",
    "UpdateItem",
    "DeleteItem",
    "GetItem",
    "Query",
    "PutItem",
];

/// Reasons a request is retried (the `reason` label of [`RETRIES`]).
pub const RETRY_REASONS: &[&str] = &["throttle", "transient"];

/// Item outcomes (the `outcome` label of [`ITEMS`]).
pub const OUTCOMES: &[&str] = &["updated", "deleted", "unchanged", "failed"];

/// Capacity kinds (the `kind` label of [`CONSUMED`]).
pub const KINDS: &[&str] = &["read", "write"];

/// The `code` label of [`THROTTLED`]: DynamoDB's throttling codes, and
/// `throttled` for a throttle that came without one (HTTP 429).
fn throttle_codes() -> impl Iterator<Item = &'static str> {
    crate::dynamo::classify::THROTTLE_CODES
        .iter()
        .copied()
        .chain(std::iter::once(NO_CODE))
}

/// The throttle code the limiter records when the response carried none.
const NO_CODE: &str = "throttled";

/// Installs the Prometheus exporter serving `/metrics` on `addr`.
///
/// # Errors
/// When the address cannot be bound or a recorder is already installed.
pub fn install(addr: SocketAddr) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(LATENCY.into()),
            LATENCY_BUCKETS,
        )
        .map_err(|e| Error::Usage(format!("metrics buckets: {e}")))?
        .install()
        .map_err(|e| {
            Error::Usage(format!(
                "cannot serve metrics on {addr}: {e}; pick another --metrics-addr"
            ))
        })?;
    describe();
    Ok(())
}

/// HELP text for every metric.
pub fn describe() {
    describe_counter!(ITEMS_SCANNED, Unit::Count, "Items read by the scan.");
    describe_counter!(
        ITEMS,
        Unit::Count,
        "Items processed, by outcome (updated, deleted, unchanged, failed)."
    );
    describe_counter!(CONFLICTS, Unit::Count, "Conditional writes rejected because the application changed the item; each is re-read and re-applied.");
    describe_counter!(CONSUMED, Unit::Count, "Capacity units consumed as DynamoDB reported them (ConsumedCapacity), by kind (read, write).");
    describe_gauge!(
        LIMIT,
        Unit::Count,
        "The operator's capacity limit in units per second, by kind; absent when unlimited."
    );
    describe_gauge!(RATE, Unit::Count, "The adaptive working rate in units per second, by kind (below the limit after throttling).");
    describe_counter!(
        THROTTLED,
        Unit::Count,
        "Requests DynamoDB throttled, by operation and error code."
    );
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Requests retried, by operation and reason (throttle, transient)."
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "DynamoDB request latency by operation, one attempt each."
    );
    describe_gauge!(
        SEGMENTS,
        Unit::Count,
        "Scan segments by state (total, completed)."
    );
    describe_gauge!(
        ITEMS_ESTIMATED,
        Unit::Count,
        "Items in the table according to DescribeTable (updated about every six hours)."
    );
    describe_counter!(
        CHECKPOINTS,
        Unit::Count,
        "Checkpoint writes to the state table."
    );
    describe_gauge!(RUN_START, Unit::Seconds, "When the run started, Unix time.");
    describe_gauge!(
        RUN_STATE,
        Unit::Count,
        "1 for the run's current state (running, stopped, done, failed), 0 for the others."
    );
}

/// Exports every counter of a run whose label values are known in advance at
/// 0, as Prometheus recommends: a dashboard then shows "0 throttles", not
/// "No data", and `rate()` sees the first increment. Counters without run
/// labels (throttles, retries) are shared by the migrations of one process,
/// so they are registered (incremented by 0), never reset.
pub fn zero(labels: &RunLabels) {
    let base = [
        ("migration", labels.migration.clone()),
        ("table", labels.table.clone()),
    ];
    let with = |name: &'static str, value: &'static str| {
        let mut l = base.to_vec();
        l.push((name, value.to_owned()));
        l
    };
    counter!(ITEMS_SCANNED, &base).increment(0);
    for outcome in OUTCOMES {
        counter!(ITEMS, &with("outcome", outcome)).increment(0);
    }
    counter!(CONFLICTS, &base).increment(0);
    for kind in KINDS {
        counter!(CONSUMED, &with("kind", kind)).increment(0);
    }
    counter!(CHECKPOINTS, &base).increment(0);
    for op in OPS {
        for code in throttle_codes() {
            counter!(THROTTLED, "op" => *op, "code" => code).increment(0);
        }
        for reason in RETRY_REASONS {
            counter!(RETRIES, "op" => *op, "reason" => *reason).increment(0);
        }
    }
}

/// One DynamoDB request attempt finished after `elapsed`.
pub fn request(op: &'static str, elapsed: Duration) {
    debug_assert!(
        OPS.contains(&op),
        "{op} is missing from metrics::OPS, so its series are not exported at 0"
    );
    histogram!(LATENCY, "op" => op).record(elapsed.as_secs_f64());
}

/// DynamoDB throttled a request.
pub fn throttled(op: &'static str, code: &str) {
    // Codes come from DynamoDB's fixed set of throttling errors.
    counter!(THROTTLED, "op" => op, "code" => code.to_owned()).increment(1);
}

/// A request will be retried.
pub fn retry(op: &'static str, reason: &'static str) {
    counter!(RETRIES, "op" => op, "reason" => reason).increment(1);
}

/// A run's labels and static facts, for [`publish`].
#[derive(Debug, Clone)]
pub struct RunLabels {
    /// Migration id.
    pub migration: String,
    /// Target table.
    pub table: String,
}

/// Copies a snapshot of the run into the metrics (absolute values, so calling
/// it often or rarely gives the same series): the progress snapshot the
/// display gets, and the checkpoint writes so far.
pub fn publish(labels: &RunLabels, progress: &Progress, checkpoint_saves: u64) {
    let l = |extra: (&'static str, &'static str)| {
        [
            ("migration", labels.migration.clone()),
            ("table", labels.table.clone()),
            (extra.0, extra.1.to_owned()),
        ]
    };
    let base = [
        ("migration", labels.migration.clone()),
        ("table", labels.table.clone()),
    ];
    let c = &progress.counts;
    counter!(ITEMS_SCANNED, &base).absolute(c.scanned);
    for (outcome, v) in [
        ("updated", c.updated),
        ("deleted", c.deleted),
        ("unchanged", c.unchanged),
        ("failed", c.failed),
    ] {
        counter!(ITEMS, &l(("outcome", outcome))).absolute(v);
    }
    counter!(CONFLICTS, &base).absolute(c.conflicts);
    for (kind, consumed, limit, rate) in [
        (
            "read",
            progress.read_consumed,
            progress.read_limit,
            progress.read_rate,
        ),
        (
            "write",
            progress.write_consumed,
            progress.write_limit,
            progress.write_rate,
        ),
    ] {
        counter!(CONSUMED, &l(("kind", kind))).absolute(consumed.round() as u64);
        if let Some(limit) = limit {
            gauge!(LIMIT, &l(("kind", kind))).set(limit);
        }
        if let Some(rate) = rate {
            gauge!(RATE, &l(("kind", kind))).set(rate);
        }
    }
    gauge!(SEGMENTS, &l(("state", "total"))).set(progress.segments_total as f64);
    gauge!(SEGMENTS, &l(("state", "completed"))).set(progress.segments_done as f64);
    gauge!(ITEMS_ESTIMATED, &base).set(progress.items_estimated as f64);
    counter!(CHECKPOINTS, &base).absolute(checkpoint_saves);
}

/// Marks the run's state (and its start time once).
pub fn run_state(labels: &RunLabels, state: &'static str, started_unix: f64) {
    let base = [
        ("migration", labels.migration.clone()),
        ("table", labels.table.clone()),
    ];
    gauge!(RUN_START, &base).set(started_unix);
    for s in STATES {
        let v = if *s == state { 1.0 } else { 0.0 };
        gauge!(
            RUN_STATE,
            &[
                ("migration", labels.migration.clone()),
                ("table", labels.table.clone()),
                ("state", (*s).to_owned())
            ]
        )
        .set(v);
    }
}
