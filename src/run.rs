//! One migration's run on one table: describe, consult the ledger, schema step,
//! then the pipeline (segment tasks -> bounded channel -> workers -> writes),
//! and record the result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_dynamodb::Client;
use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::deadletter::DeadLetter;
use crate::error::Error;
use crate::ledger::{self, Ledger, Status};
use crate::migration::Migration;
use crate::report::{Outcome, Report, Stats};
use crate::scan::{ScanSpec, Scanner};
use crate::worker::{self, Pool, Stop};
use crate::write::Writer;
use crate::{schema, table};

/// Scans running at once at most: beyond this, more segments only mean smaller
/// slices, not more parallelism (TotalSegments may be up to 1,000,000).
pub const MAX_CONCURRENT_SCANS: usize = 256;

/// Everything a run needs besides the migration and the table; validated by the CLI.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Parallel scan TotalSegments.
    pub segments: u32,
    /// Worker tasks applying the transform and writing.
    pub workers: usize,
    /// Items of one page each worker processes at once.
    pub item_concurrency: usize,
    /// Scan `Limit`; `None` for full 1 MB pages.
    pub page_size: Option<i32>,
    /// Send no write of any kind.
    pub dry_run: bool,
    /// Run even when the ledger says applied.
    pub rerun: bool,
    /// Stop once more than this many items failed.
    pub max_errors: Option<u64>,
    /// Dead-letter file.
    pub dead_letter: PathBuf,
    /// State table name.
    pub state_table: String,
    /// Retry policy.
    pub backoff: Backoff,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            segments: 4,
            workers: 8,
            item_concurrency: 8,
            page_size: None,
            dry_run: false,
            rerun: false,
            max_errors: Some(1000),
            dead_letter: PathBuf::from("dynbulk-dead-letter.jsonl"),
            state_table: ledger::DEFAULT_STATE_TABLE.into(),
            backoff: Backoff::default(),
        }
    }
}

/// A run that did not complete: why, and what it achieved before stopping.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    /// What stopped it.
    pub error: Error,
    /// What was done before, if the data step started.
    pub report: Option<Box<Report>>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            report: None,
        }
    }
}

/// Runs `migration` on `table`. `shutdown` stops it gracefully: no new scans,
/// in-flight pages finish; the report then says [`Outcome::Stopped`].
///
/// # Errors
/// A [`Failure`] when the run cannot start (missing table, bad state table) or
/// stops on a fatal error or the error budget; it carries the partial report.
pub async fn run(
    client: &Client,
    migration: Arc<dyn Migration>,
    table_name: &str,
    plan: &Plan,
    shutdown: CancellationToken,
) -> Result<Report, Failure> {
    let info = table::describe(client, table_name).await?;
    let ledger = Ledger::new(client.clone(), plan.state_table.clone());
    if !plan.dry_run {
        ledger.ensure().await?;
    } else {
        // Read-only check, so a dry run still reports a broken state table.
        ledger.exists().await?;
    }
    let entry = ledger.get(table_name, migration.id()).await?;
    let base_report = |outcome| Report {
        migration: migration.id().to_owned(),
        table: table_name.to_owned(),
        dry_run: plan.dry_run,
        outcome,
        counts: Default::default(),
        schema: None,
        samples: vec![],
        dead_letter: None,
        elapsed: Default::default(),
    };
    if let Some(e) = &entry {
        if e.status == Status::Applied && !plan.rerun {
            return Ok(base_report(Outcome::Skipped));
        }
    }
    let runner = ledger::runner_identity();
    let started_at = ledger::now();
    let runs = entry.as_ref().map(|e| e.runs).unwrap_or(0) + 1;
    if !plan.dry_run {
        ledger
            .begin(table_name, migration.id(), &runner, runs)
            .await?;
    }

    let mut report = base_report(Outcome::Done);
    if let Some(step) = migration.schema_step() {
        match schema::apply(client, table_name, &step, plan.dry_run).await {
            Ok(done) => {
                tracing::info!(table = table_name, migration = migration.id(), schema = %done, "schema step finished");
                report.schema = Some(done);
            }
            Err(error) => {
                report.outcome = Outcome::Stopped;
                report.schema = Some(format!("failed: {error}"));
                if !plan.dry_run {
                    ledger.finish(&report, &runner, &started_at, runs).await?;
                }
                return Err(Failure {
                    error,
                    report: Some(Box::new(report)),
                });
            }
        }
    }

    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let dead_letter = Arc::new(DeadLetter::new(plan.dead_letter.clone()));
    let result = pipeline(
        client,
        migration.clone(),
        &info,
        plan,
        shutdown.clone(),
        stats.clone(),
        dead_letter.clone(),
    )
    .await;

    report.counts = stats.counts();
    report.samples = stats.samples();
    report.elapsed = started.elapsed();
    if report.counts.failed > 0 {
        report.dead_letter = Some(dead_letter.path().to_owned());
    }
    let error = match result {
        Ok(()) if shutdown.is_cancelled() => {
            report.outcome = Outcome::Stopped;
            None
        }
        Ok(()) => {
            report.outcome = if report.counts.failed > 0 {
                Outcome::DoneWithFailures
            } else {
                Outcome::Done
            };
            None
        }
        Err(e) => {
            report.outcome = Outcome::Stopped;
            Some(e)
        }
    };
    if !plan.dry_run {
        if let Err(e) = ledger.finish(&report, &runner, &started_at, runs).await {
            return Err(Failure {
                error: e,
                report: Some(Box::new(report)),
            });
        }
    }
    match error {
        None => Ok(report),
        Some(error) => Err(Failure {
            error,
            report: Some(Box::new(report)),
        }),
    }
}

async fn pipeline(
    client: &Client,
    migration: Arc<dyn Migration>,
    info: &table::TableInfo,
    plan: &Plan,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
    dead_letter: Arc<DeadLetter>,
) -> Result<(), Error> {
    let options = migration.scan_options();
    let spec = Arc::new(ScanSpec {
        table: info.name.clone(),
        total_segments: plan.segments,
        page_size: plan.page_size,
        options: options.clone(),
        keys: info.keys.clone(),
    });
    let projection = options
        .projection
        .as_ref()
        .map(|attrs| crate::scan::projection_expr(&info.keys, attrs));
    let writer = Arc::new(Writer {
        client: client.clone(),
        table: info.name.clone(),
        keys: info.keys.clone(),
        migration,
        dry_run: plan.dry_run,
        backoff: plan.backoff,
        stats: stats.clone(),
        projection,
    });
    let pool = Arc::new(Pool {
        writer,
        dead_letter,
        stats: stats.clone(),
        item_concurrency: plan.item_concurrency,
        max_errors: plan.max_errors,
    });

    // Pages in the channel are at most 1 MB each: the bound caps memory.
    let (tx, rx) = mpsc::channel(plan.workers.max(1) * 2);
    let rx = Arc::new(Mutex::new(rx));
    // Stops the scans: on shutdown, on a fatal error, on the error budget.
    let stop_scans = shutdown.child_token();

    let scanner = {
        let scanner = Scanner {
            client: client.clone(),
            spec,
            stats: stats.clone(),
            backoff: plan.backoff,
        };
        let stop = stop_scans.clone();
        let concurrency = (plan.segments as usize).min(MAX_CONCURRENT_SCANS);
        let total = plan.segments;
        tokio::spawn(async move {
            let scanner = &scanner;
            let mut scans = stream::iter(0..total)
                .map(|segment| scanner.segment(segment, None, tx.clone(), stop.clone()))
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
    };

    let mut workers = JoinSet::new();
    for _ in 0..plan.workers.max(1) {
        let pool = pool.clone();
        let rx = rx.clone();
        let stop = stop_scans.clone();
        workers.spawn(async move {
            let r = worker::work(pool, rx.clone()).await;
            if r.is_err() {
                stop.cancel();
                // Keep draining so segment tasks blocked on a full channel see
                // the cancellation and end; drained pages are not processed.
                while rx.lock().await.recv().await.is_some() {}
            }
            r
        });
    }

    let mut first_error: Option<Error> = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(Stop::Fatal(e))) => {
                first_error.get_or_insert(e);
            }
            Ok(Err(Stop::ErrorBudget(n))) => {
                first_error.get_or_insert(Error::Usage(format!(
                    "stopped: {n} items failed, more than --max-errors allows; see the dead-letter file {} and fix the migration or the data, then run again",
                    pool.dead_letter.path().display()
                )));
            }
            Err(join) => {
                first_error.get_or_insert(Error::Usage(format!("a worker task panicked: {join}")));
            }
        }
    }
    match scanner.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            first_error.get_or_insert(e);
        }
        Err(join) => {
            first_error.get_or_insert(Error::Usage(format!("the scan task panicked: {join}")));
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
