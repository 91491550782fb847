//! The pipeline's tasks for one attempt: segment scans feeding a bounded
//! channel, a pool of workers draining it, and the first error that stops
//! them all (scans stop starting pages, workers finish theirs).

use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, Mutex};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::plan::{Plan, Prepared};
use super::MAX_CONCURRENT_SCANS;
use crate::capacity::backoff::Backoff;
use crate::capacity::limiter::Budgets;
use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};
use crate::migration::{Migration, ScanOptions};
use crate::pipeline::diff::{Filter, Guard};
use crate::pipeline::inflight::InFlight;
use crate::pipeline::scan::{self, Page, ScanSpec, Scanner};
use crate::pipeline::worker::{self, Pool, Stop};
use crate::pipeline::write::Writer;
use crate::report::Stats;
use crate::state::checkpoint::{Ack, SegmentState};
use crate::state::deadletter::DeadLetter;
use crate::state::fence::Fence;
use crate::state::journal::Journal;

/// The channels and shared state the pipeline's tasks use.
pub(super) struct Pipes {
    pub shutdown: CancellationToken,
    pub stats: Arc<Stats>,
    pub dead_letter: Arc<DeadLetter>,
    /// Items of the run that failed in earlier attempts.
    pub failed_before: u64,
    pub budgets: Arc<Budgets>,
    pub acks: Option<mpsc::Sender<Ack>>,
    /// Where each of the run's segments starts (one per segment).
    pub starts: Vec<SegmentState>,
    /// In a run shared with `--join`: the segments this process claims, as it
    /// claims them (`starts` is then unused); the scans end when it closes.
    pub claims: Option<mpsc::Receiver<(u32, Option<Attrs>)>>,
    /// The lock's fence, which every data write attempt checks; `None` in dry runs.
    pub fence: Option<Fence>,
    /// Where writes are journaled before they are sent; `None` in dry runs
    /// and with `--no-journal`.
    pub journal: Option<Arc<Journal>>,
}

/// The scan options and what every write is conditioned on besides the
/// transform's reads: the version attribute (the plan's, else the
/// migration's), which a projected scan must then fetch, and the scan filter.
fn scan_and_guard(migration: &dyn Migration, plan: &Plan) -> (ScanOptions, Guard) {
    let mut options = migration.scan_options();
    let version = plan
        .version_attribute
        .clone()
        .or_else(|| migration.version_attribute().map(str::to_owned));
    if let (Some(attrs), Some(v)) = (options.projection.as_mut(), version.as_ref()) {
        if !attrs.contains(v) {
            attrs.push(v.clone());
        }
    }
    let filter = options
        .filter
        .as_deref()
        .map(|expr| Filter::new(expr, &options.filter_names, &options.filter_values));
    (options, Guard { version, filter })
}

/// Runs the pipeline until every segment is done, the shutdown token is
/// cancelled, or the first error.
///
/// # Errors
/// The first fatal error of a scan or a worker, the error budget, or a panic.
pub(super) async fn run(client: &Client, prepared: &Prepared, pipes: Pipes) -> Result<()> {
    debug_assert!(pipes.claims.is_some() || pipes.starts.len() == prepared.segments as usize);
    let plan = &prepared.plan;
    let (options, guard) = scan_and_guard(prepared.migration.as_ref(), plan);
    // The data path retries against a time budget, not a count.
    let backoff = Backoff {
        budget: Some(plan.retry_budget),
        ..plan.backoff
    };
    let pool = Arc::new(pool(client, prepared, &pipes, &options, guard, backoff));
    let scanner = Scanner {
        client: client.clone(),
        spec: Arc::new(ScanSpec {
            table: prepared.table.name.clone(),
            total_segments: prepared.segments,
            page_size: prepared.page_size,
            options,
            keys: prepared.table.keys.clone(),
        }),
        stats: pipes.stats.clone(),
        backoff,
        budgets: pipes.budgets.clone(),
        avg_item_bytes: prepared.avg_item_bytes,
        inflight: InFlight::new(plan.inflight_bytes),
    };
    // Memory is bounded by the in-flight byte budget every page holds from its
    // Scan until it is done; the channel's bound caps what a crash makes a
    // resume redo (queued pages are not acknowledged).
    let (tx, rx) = mpsc::channel(plan.workers.max(1));
    // Stops the scans: on shutdown, on a fatal error, on the error budget.
    let stop_scans = pipes.shutdown.child_token();
    let scans = match pipes.claims {
        Some(claims) => spawn_claimed_scans(scanner, claims, tx, stop_scans.clone()),
        None => spawn_scans(scanner, pipes.starts, tx, stop_scans.clone()),
    };
    let workers = spawn_workers(&pool, rx, plan.workers.max(1), &stop_scans);
    collect(workers, scans, &pool, &stop_scans).await
}

/// The writer and the worker pool, over the run's shared state.
fn pool(
    client: &Client,
    prepared: &Prepared,
    pipes: &Pipes,
    options: &ScanOptions,
    guard: Guard,
    backoff: Backoff,
) -> Pool {
    let writer = Arc::new(Writer {
        journal: pipes.journal.clone(),
        ..writer(
            client,
            prepared,
            options,
            guard,
            backoff,
            (pipes.stats.clone(), pipes.budgets.clone()),
            pipes.fence.clone(),
        )
    });
    Pool {
        writer,
        dead_letter: pipes.dead_letter.clone(),
        stats: pipes.stats.clone(),
        item_concurrency: prepared.plan.item_concurrency,
        max_errors: prepared.plan.max_errors,
        failed_before: pipes.failed_before,
        acks: pipes.acks.clone(),
    }
}

/// The writer of a prepared migration: its scan's projection for re-reads,
/// `guard` on every write, the run's counters and budgets.
fn writer(
    client: &Client,
    prepared: &Prepared,
    options: &ScanOptions,
    guard: Guard,
    backoff: Backoff,
    (stats, budgets): (Arc<Stats>, Arc<Budgets>),
    fence: Option<Fence>,
) -> Writer {
    let info = &prepared.table;
    let projection = options
        .projection
        .as_ref()
        .map(|attrs| scan::projection_expr(&info.keys, attrs));
    Writer {
        client: client.clone(),
        table: info.name.clone(),
        keys: info.keys.clone(),
        migration: prepared.migration.clone(),
        dry_run: prepared.plan.dry_run,
        backoff,
        stats,
        projection,
        budgets,
        guard,
        index_keys: info.index_keys.clone(),
        fence,
        journal: None,
    }
}

/// The writer a run of `prepared` would use (same guard, projection,
/// retry budget), for writes outside a scan: `dynbulk replay`, journaling
/// to `journal`.
pub(super) fn writer_for(
    client: &Client,
    prepared: &Prepared,
    (stats, budgets): (Arc<Stats>, Arc<Budgets>),
    fence: Option<Fence>,
    journal: Option<Arc<Journal>>,
) -> Writer {
    let plan = &prepared.plan;
    let (options, guard) = scan_and_guard(prepared.migration.as_ref(), plan);
    let backoff = Backoff {
        budget: Some(plan.retry_budget),
        ..plan.backoff
    };
    Writer {
        journal,
        ..writer(
            client,
            prepared,
            &options,
            guard,
            backoff,
            (stats, budgets),
            fence,
        )
    }
}

/// Scans every segment not yet done from where it stands, at most
/// [`MAX_CONCURRENT_SCANS`] at once; the first error stops the others.
fn spawn_scans(
    scanner: Scanner,
    starts: Vec<SegmentState>,
    tx: mpsc::Sender<Page>,
    stop: CancellationToken,
) -> JoinHandle<Result<()>> {
    let concurrency = starts.len().clamp(1, MAX_CONCURRENT_SCANS);
    // Done segments are skipped; the others start at their checkpoint.
    let todo: Vec<(u32, Option<Attrs>)> = starts
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            SegmentState::Done => None,
            SegmentState::Start => Some((i as u32, None)),
            SegmentState::At(k) => Some((i as u32, Some(k))),
        })
        .collect();
    tokio::spawn(async move {
        let scanner = &scanner;
        let mut scans = stream::iter(todo)
            .map(|(segment, start)| scanner.segment(segment, start, tx.clone(), stop.clone()))
            .buffer_unordered(concurrency);
        while let Some(r) = scans.next().await {
            if let Err(e) = r {
                stop.cancel();
                return Err(e);
            }
            if stop.is_cancelled() {
                break;
            }
        }
        Ok(())
    })
}

/// Scans each segment claimed (`--join`) as it arrives, from its checkpoint;
/// ends when the claims end or on `stop` (the scans in flight see it too).
/// The claimer bounds how many segments are held, hence scanned, at once.
fn spawn_claimed_scans(
    scanner: Scanner,
    claims: mpsc::Receiver<(u32, Option<Attrs>)>,
    tx: mpsc::Sender<Page>,
    stop: CancellationToken,
) -> JoinHandle<Result<()>> {
    let claims = stream::unfold(
        claims,
        |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
    );
    tokio::spawn(async move {
        let scanner = &scanner;
        let mut scans = std::pin::pin!(claims
            .map(|(segment, start)| scanner.segment(segment, start, tx.clone(), stop.clone()))
            .buffer_unordered(MAX_CONCURRENT_SCANS));
        loop {
            let next = tokio::select! {
                next = scans.next() => next,
                _ = stop.cancelled() => return Ok(()),
            };
            match next {
                None => return Ok(()),
                Some(Err(e)) => {
                    stop.cancel();
                    return Err(e);
                }
                Some(Ok(())) => {}
            }
        }
    })
}

/// `n` workers on the channel; one that stops on an error stops the scans.
fn spawn_workers(
    pool: &Arc<Pool>,
    rx: mpsc::Receiver<Page>,
    n: usize,
    stop_scans: &CancellationToken,
) -> JoinSet<std::result::Result<(), Stop>> {
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = JoinSet::new();
    for _ in 0..n {
        let pool = pool.clone();
        let rx = rx.clone();
        let stop = stop_scans.clone();
        workers.spawn(async move {
            let r = worker::work(pool, rx, stop.clone()).await;
            if r.is_err() {
                // Scans stop, the other workers finish their page and stop.
                stop.cancel();
            }
            r
        });
    }
    // Only the workers hold the receiver once this returns: if they all end,
    // the scans' sends fail instead of waiting on a full channel.
    workers
}

/// Waits for every worker, then the scans; the first error is the result.
async fn collect(
    mut workers: JoinSet<std::result::Result<(), Stop>>,
    scans: JoinHandle<Result<()>>,
    pool: &Pool,
    stop_scans: &CancellationToken,
) -> Result<()> {
    let mut first_error: Option<Error> = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(Stop::Fatal(e))) => {
                first_error.get_or_insert(e);
            }
            Ok(Err(Stop::ErrorBudget(n))) => {
                first_error.get_or_insert(Error::ErrorBudget {
                    failed: n,
                    dead_letter: pool.dead_letter.path().to_owned(),
                });
            }
            Err(join) => {
                // Stop the scans, or they would wait forever on a full channel.
                stop_scans.cancel();
                first_error
                    .get_or_insert(Error::Panicked(format!("a worker task panicked: {join}")));
            }
        }
    }
    match scans.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            first_error.get_or_insert(e);
        }
        Err(join) => {
            first_error.get_or_insert(Error::Panicked(format!("the scan task panicked: {join}")));
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::{Change, Item, Migration, ScanOptions, TransformError};
    use crate::run::Plan;

    struct Projected;

    impl Migration for Projected {
        fn id(&self) -> &'static str {
            "20260101_projected"
        }
        fn description(&self) -> &'static str {
            "test"
        }
        fn scan_options(&self) -> ScanOptions {
            ScanOptions {
                projection: Some(vec!["status".into()]),
                filter: Some("#s = :p".into()),
                filter_names: [("#s".to_string(), "status".to_string())].into(),
                filter_values: [(
                    ":p".to_string(),
                    aws_sdk_dynamodb::types::AttributeValue::S("pending".into()),
                )]
                .into(),
                ..Default::default()
            }
        }
        fn version_attribute(&self) -> Option<&str> {
            Some("version")
        }
        fn transform(&self, _: &Item) -> Result<Change, TransformError> {
            Ok(Change::Keep)
        }
    }

    #[test]
    fn the_version_attribute_is_fetched_and_guarded_and_the_flag_wins() {
        let (options, guard) = scan_and_guard(&Projected, &Plan::default());
        assert_eq!(guard.version.as_deref(), Some("version"));
        assert_eq!(
            options.projection,
            Some(vec!["status".to_string(), "version".to_string()])
        );
        let filter = guard.filter.unwrap();
        assert_eq!(filter.expr, "#dynbulk_f_s = :dynbulk_f_p");
        assert_eq!(filter.names["#dynbulk_f_s"], "status");

        let plan = Plan {
            version_attribute: Some("rev".into()),
            ..Plan::default()
        };
        let (options, guard) = scan_and_guard(&Projected, &plan);
        assert_eq!(guard.version.as_deref(), Some("rev"));
        assert_eq!(
            options.projection,
            Some(vec!["status".to_string(), "rev".to_string()])
        );
    }
}
