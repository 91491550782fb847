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

use crate::capacity::backoff::Backoff;
use crate::capacity::limiter::{Budget, Budgets};
use crate::dynamo::value::Attrs;
use crate::dynamo::{schema, table};
use crate::error::Error;
use crate::metrics;
use crate::migration::Migration;
use crate::pipeline::inflight::InFlight;
use crate::pipeline::scan::{ScanSpec, Scanner};
use crate::pipeline::worker::{self, Pool, Stop};
use crate::pipeline::write::Writer;
use crate::report::{Capacity, Observer, Outcome, Progress, Report, Stats};
use crate::state::checkpoint::{self, Ack, RunState, SegmentState, Store};
use crate::state::deadletter::DeadLetter;
use crate::state::fence::Fence;
use crate::state::ledger::{Finished, Ledger, Status};
use crate::state::lock;

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
    /// Largest Scan `Limit`; pages are otherwise sized to about
    /// [`crate::pipeline::inflight::PAGE_BYTES`] from the items seen.
    pub page_size: Option<i32>,
    /// Bytes of scanned items held in memory at most (pages being scanned,
    /// queued, and worked on); [`crate::pipeline::inflight::BUDGET_BYTES`] by default.
    pub inflight_bytes: usize,
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
    /// Retry policy (delays; its `budget` is replaced by `retry_budget` on the data path).
    pub backoff: Backoff,
    /// How long an item write, a re-read or a scan page is retried while
    /// throttled or failing transiently; then the item is dead-lettered (a
    /// scan page stops the run, resumably).
    pub retry_budget: std::time::Duration,
    /// Read and write capacity limits.
    pub limits: Limits,
    /// Discard an unfinished run's checkpoints and start over.
    pub restart: bool,
    /// The optimistic-locking version attribute, overriding the migration's
    /// own ([`Migration::version_attribute`]).
    pub version_attribute: Option<String>,
    /// How long the run's lock lease lasts without a renewal; another runner
    /// takes the lock over after seeing it unrenewed this long.
    pub lease: std::time::Duration,
}

/// One capacity limit as the operator gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Not given: a share of a provisioned table's capacity; refused on on-demand tables.
    Auto,
    /// Units per second.
    Units(f64),
    /// No limit (explicitly asked for).
    Unlimited,
}

/// Read and write limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Read capacity units per second.
    pub read: Limit,
    /// Write capacity units per second.
    pub write: Limit,
}

/// Default `--retry-budget`: minutes, since a partition the application keeps
/// hot throttles for that long, and the limiter already slows the run.
pub const DEFAULT_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(300);

/// Share of a provisioned table's capacity used when no limit is given: the
/// application keeps the other half.
pub const DEFAULT_PROVISIONED_SHARE: f64 = 0.5;

impl Default for Plan {
    fn default() -> Self {
        Plan {
            segments: 4,
            workers: 8,
            item_concurrency: 8,
            page_size: None,
            inflight_bytes: crate::pipeline::inflight::BUDGET_BYTES,
            dry_run: false,
            rerun: false,
            max_errors: Some(1000),
            dead_letter: PathBuf::from("dynbulk-dead-letter.jsonl"),
            state_table: crate::state::store::DEFAULT_STATE_TABLE.into(),
            backoff: Backoff::default(),
            retry_budget: DEFAULT_RETRY_BUDGET,
            limits: Limits {
                read: Limit::Auto,
                write: Limit::Auto,
            },
            restart: false,
            version_attribute: None,
            lease: lock::DEFAULT_LEASE,
        }
    }
}

/// A run's plan after looking at the table: limits resolved, page size chosen,
/// cost estimated. Nothing has been written when this exists.
#[derive(Clone)]
pub struct Prepared {
    /// The migration.
    pub migration: Arc<dyn Migration>,
    /// The target table's description.
    pub table: table::TableInfo,
    /// Read ceiling, units per second; `None` is unlimited.
    pub read_limit: Option<f64>,
    /// Write ceiling, units per second; `None` is unlimited.
    pub write_limit: Option<f64>,
    /// How each limit was chosen, for the operator.
    pub limit_notes: Vec<String>,
    /// Scan `Limit`; `None` is 1 MB pages.
    pub page_size: Option<i32>,
    /// Average item size used for page sizing and estimates.
    pub avg_item_bytes: f64,
    /// TotalSegments.
    pub segments: u32,
    /// Estimated read units for the whole scan.
    pub read_estimate: f64,
    /// The unfinished run this one resumes, if any (read-only look, already validated).
    pub existing: Option<RunState>,
    /// With --restart: the stored state that could not be read and will be discarded.
    pub unreadable_state: Option<String>,
}

impl std::fmt::Display for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limit = |l: Option<f64>, unit: &str| match l {
            Some(v) => format!("{v:.0} {unit}/s"),
            None => "unlimited".to_owned(),
        };
        writeln!(
            f,
            "plan for {} on {}:",
            self.migration.id(),
            self.table.name
        )?;
        let billing = if self.table.on_demand {
            "on-demand"
        } else {
            "provisioned"
        };
        let known = self.table.item_count > 0;
        if known {
            writeln!(
                f,
                "  table:          ~{} items, ~{:.1} MB (DescribeTable, refreshed about every 6 h), {billing}",
                self.table.item_count,
                self.table.size_bytes as f64 / 1e6,
            )?;
        } else {
            writeln!(
                f,
                "  table:          size not known yet (DescribeTable reports 0 items; it refreshes about every 6 h), {billing}"
            )?;
        }
        match &self.existing {
            Some(run) => {
                writeln!(
                    f,
                    "  resuming:       run {} from its checkpoints: {}/{} segments done, {} items so far over {} attempt(s), started {}",
                    run.run_id,
                    run.segments_done(),
                    run.total_segments,
                    run.counts.scanned,
                    run.attempts,
                    run.started_at
                )?;
                if run.total_segments != self.segments {
                    writeln!(
                        f,
                        "                  TotalSegments stays {} for this run (a run's segments are fixed); --segments {} is ignored",
                        run.total_segments, self.segments
                    )?;
                }
            }
            None => writeln!(f, "  segments:       {}", self.segments)?,
        }
        match self.page_size {
            Some(p) => writeln!(
                f,
                "  page size:      {p} items (~{:.0} bytes per item)",
                self.avg_item_bytes
            )?,
            None => writeln!(
                f,
                "  page size:      ~{} KB (items per page follow the item size)",
                crate::pipeline::inflight::PAGE_BYTES / 1024
            )?,
        }
        writeln!(f, "  read limit:     {}", limit(self.read_limit, "RCU"))?;
        writeln!(f, "  write limit:    {}", limit(self.write_limit, "WCU"))?;
        for note in &self.limit_notes {
            writeln!(f, "                  {note}")?;
        }
        if known {
            write!(f, "  scan estimate:  ~{:.0} RCU", self.read_estimate)?;
            match self.read_limit {
                Some(l) => writeln!(
                    f,
                    ", ~{} at the read limit",
                    crate::util::human_duration(self.read_estimate / l)
                )?,
                None => writeln!(f)?,
            }
        } else {
            writeln!(
                f,
                "  scan estimate:  unknown until DescribeTable reports the table's size"
            )?;
        }
        Ok(())
    }
}

/// Looks at the table and resolves limits, page size and estimates. Sends no write.
///
/// # Errors
/// A missing or unreachable table; an on-demand table without explicit limits.
pub async fn prepare(
    client: &Client,
    migration: Arc<dyn Migration>,
    table_name: &str,
    plan: &Plan,
) -> Result<Prepared, Error> {
    let info = table::describe(client, table_name).await?;
    let mut notes = Vec::new();
    let resolve = |limit: Limit,
                   provisioned: Option<i64>,
                   unit: &str,
                   flag: &str,
                   notes: &mut Vec<String>| {
        match limit {
            Limit::Units(u) => Ok(Some(u)),
            Limit::Unlimited => Ok(None),
            Limit::Auto => match provisioned {
                Some(p) if !info.on_demand => {
                    let v = (p as f64 * DEFAULT_PROVISIONED_SHARE).max(1.0);
                    notes.push(format!(
                        "{unit}: {:.0}% of the table's provisioned {p} {unit} (pass {flag} to change)",
                        DEFAULT_PROVISIONED_SHARE * 100.0
                    ));
                    Ok(Some(v))
                }
                _ => Err(Error::Usage(format!(
                    "table {table_name} is on-demand (PAY_PER_REQUEST), so dynbulk cannot derive a safe rate from it; \
                     pass --rcu-limit and --wcu-limit (capacity units per second), or --unlimited for a table nobody else uses"
                ))),
            },
        }
    };
    let read_limit = resolve(
        plan.limits.read,
        info.read_capacity,
        "RCU",
        "--rcu-limit",
        &mut notes,
    )?;
    let write_limit = resolve(
        plan.limits.write,
        info.write_capacity,
        "WCU",
        "--wcu-limit",
        &mut notes,
    )?;
    let options = migration.scan_options();
    let avg_item_bytes = if info.item_count > 0 && info.size_bytes > 0 {
        info.size_bytes as f64 / info.item_count as f64
    } else {
        // DescribeTable's counts lag by hours; until they exist, assume 1 KB.
        1024.0
    };
    let page_size = plan.page_size.or_else(|| {
        crate::capacity::cost::page_limit(read_limit, avg_item_bytes, options.consistent_read)
    });
    let read_estimate =
        info.size_bytes as f64 / crate::capacity::cost::bytes_per_rcu(options.consistent_read);
    let ledger = Ledger::new(client.clone(), plan.state_table.clone());
    let mut unreadable_state = None;
    let existing = if ledger.exists().await? {
        let loaded = Store::new(
            client.clone(),
            &plan.state_table,
            table_name,
            migration.id(),
        )
        .load()
        .await;
        match loaded {
            Ok(existing) => existing,
            // --restart is the way out of state that does not decode.
            Err(e @ Error::State { .. }) if plan.restart => {
                unreadable_state = Some(e.to_string());
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    Ok(Prepared {
        migration,
        table: info,
        read_limit,
        write_limit,
        limit_notes: notes,
        page_size,
        avg_item_bytes,
        segments: plan.segments,
        read_estimate,
        existing,
        unreadable_state,
    })
    .and_then(|p| {
        if let Some(run) = &p.existing {
            if !plan.restart {
                check_resumable(run, &p, &plan.state_table)?;
            }
        }
        Ok(p)
    })
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
    let prepared = prepare(client, migration, table_name, plan).await?;
    execute(client, &prepared, plan, shutdown, None).await
}

/// Runs a prepared migration: lock, ledger, checkpoints, schema step, data
/// step, ledger again. Resumes an unfinished run from its checkpoints.
///
/// # Errors
/// As [`run`].
/// `observer`, if given, receives a progress snapshot about once a second.
pub async fn execute(
    client: &Client,
    prepared: &Prepared,
    plan: &Plan,
    shutdown: CancellationToken,
    observer: Option<Observer>,
) -> Result<Report, Failure> {
    let migration = prepared.migration.clone();
    let table_name = prepared.table.name.as_str();
    let ledger = Ledger::new(client.clone(), plan.state_table.clone());
    if plan.dry_run {
        return execute_unlocked(client, prepared, plan, shutdown, &ledger, None, observer).await;
    }
    ledger.ensure().await?;
    let lock = lock::acquire(
        client,
        &plan.state_table,
        table_name,
        migration.id(),
        plan.lease,
    )
    .await?;
    // Losing the lock (another runner took it over) stops this run.
    let run_token = shutdown.child_token();
    let watch = {
        let lost = lock.fence.lost();
        let run_token = run_token.clone();
        tokio::spawn(async move {
            lost.cancelled().await;
            run_token.cancel();
        })
    };
    let result = execute_unlocked(
        client,
        prepared,
        plan,
        run_token,
        &ledger,
        Some(&lock.fence),
        observer,
    )
    .await;
    watch.abort();
    let fence = lock.fence.clone();
    let lost = !fence.held();
    lock.release().await;
    if !lost {
        return result;
    }
    // Whatever else went wrong, the run ended because it lost its lock.
    let (error, report) = match result {
        Ok(report) => (None, Some(Box::new(report))),
        Err(f) => (Some(f.error), f.report),
    };
    let error = match error {
        Some(e @ Error::LockLost(_)) => e,
        _ => fence.lost_error(&format!(
            "the rest of the run of migration {} on table {table_name}",
            migration.id()
        )),
    };
    Err(Failure { error, report })
}

async fn execute_unlocked(
    client: &Client,
    prepared: &Prepared,
    plan: &Plan,
    shutdown: CancellationToken,
    ledger: &Ledger,
    fence: Option<&Fence>,
    observer: Option<Observer>,
) -> Result<Report, Failure> {
    let migration = prepared.migration.clone();
    let table_name = prepared.table.name.as_str();
    let entry = ledger.get(table_name, migration.id()).await?;
    let base_report = |outcome| Report {
        migration: migration.id().to_owned(),
        table: table_name.to_owned(),
        dry_run: plan.dry_run,
        outcome,
        counts: Default::default(),
        total: None,
        schema: None,
        samples: vec![],
        dead_letters: vec![],
        elapsed: Default::default(),
        capacity: Default::default(),
        state_writes: 0,
    };
    if let Some(e) = &entry {
        if e.status == Status::Applied && !plan.rerun {
            return Ok(base_report(Outcome::Skipped));
        }
    }
    let runner = crate::state::store::runner_identity();
    let runs = entry.as_ref().map(|e| e.runs).unwrap_or(0) + 1;

    // Checkpoints: resume the unfinished run, or start a new one. Read again
    // under the lock: what `prepare` saw may have moved since.
    let store = Store::new(
        client.clone(),
        &plan.state_table,
        table_name,
        migration.id(),
    );
    // State is written only under the lock (never in a dry run), fenced.
    let store = match fence {
        Some(f) if !plan.dry_run => store.fenced(f.clone()),
        _ => store,
    };
    let fence = fence.filter(|_| !plan.dry_run);
    let mut state = if fence.is_none() {
        None
    } else {
        let existing = match store.load().await {
            Err(Error::State { .. }) if plan.restart => Some(None),
            other => other?.map(Some),
        };
        match existing {
            Some(_) if plan.restart => {
                tracing::warn!(
                    table = table_name,
                    migration = migration.id(),
                    "discarding the unfinished run's checkpoints (--restart)"
                );
                store.delete().await?;
                Some(
                    store
                        .create(
                            plan.segments,
                            &prepared.table.keys,
                            prepared.table.table_id.clone(),
                        )
                        .await?,
                )
            }
            Some(Some(st)) => {
                check_resumable(&st, prepared, &plan.state_table)?;
                Some(st)
            }
            Some(None) => unreachable!("unreadable state only passes with --restart"),
            None => Some(
                store
                    .create(
                        plan.segments,
                        &prepared.table.keys,
                        prepared.table.table_id.clone(),
                    )
                    .await?,
            ),
        }
    };
    if let Some(st) = state.as_mut() {
        st.attempts += 1;
        store.put_header(st).await?;
    }
    let started_at = state
        .as_ref()
        .map(|s| s.started_at.clone())
        .unwrap_or_else(crate::state::store::now);
    if let Some(fence) = fence {
        ledger
            .begin(table_name, migration.id(), &runner, runs, fence)
            .await?;
    }

    let mut report = base_report(Outcome::Done);
    if let Some(step) = migration.schema_step() {
        // An interrupt before or during the schema step ends the run there: no
        // table change, no wait for an index, no data step.
        let applied = if shutdown.is_cancelled() {
            Ok("not applied: interrupted before the schema step".to_owned())
        } else {
            schema::apply(client, table_name, &step, plan.dry_run, &shutdown).await
        };
        match applied {
            Ok(done) if shutdown.is_cancelled() => {
                tracing::info!(table = table_name, migration = migration.id(), schema = %done, "interrupted before the data step");
                report.outcome = Outcome::Stopped;
                report.schema = Some(done);
                if let Some(fence) = fence {
                    finish(ledger, &report, &runner, &started_at, runs, fence).await?;
                }
                return Ok(report);
            }
            Ok(done) => {
                tracing::info!(table = table_name, migration = migration.id(), schema = %done, "schema step finished");
                report.schema = Some(done);
            }
            Err(error) => {
                report.outcome = Outcome::Stopped;
                report.schema = Some(format!("failed: {error}"));
                if let Some(fence) = fence {
                    finish(ledger, &report, &runner, &started_at, runs, fence).await?;
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
    let budgets = Arc::new(Budgets {
        read: Budget::new(prepared.read_limit),
        write: Budget::new(prepared.write_limit),
    });
    let starts: Vec<SegmentState> = match &state {
        Some(st) => st.segments.clone(),
        None => vec![SegmentState::Start; plan.segments as usize],
    };
    let (acks, checkpointer) = match state.clone() {
        Some(st) => {
            let (tx, rx) = mpsc::channel(1024);
            let task = tokio::spawn(checkpoint::checkpointer(
                store.clone(),
                st,
                rx,
                stats.checkpoint_saves.clone(),
                dead_letter.clone(),
            ));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    // Metrics and progress: a snapshot a second, and one at the end.
    let labels = metrics::RunLabels {
        migration: migration.id().to_owned(),
        table: table_name.to_owned(),
    };
    let started_unix = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    metrics::zero(&labels);
    metrics::run_state(&labels, "running", started_unix);
    let done_before = state.as_ref().map(|s| s.counts.scanned).unwrap_or(0);
    let segments_before = state
        .as_ref()
        .map(|s| s.segments_done() as u64)
        .unwrap_or(0);
    let segments_total = state
        .as_ref()
        .map(|s| s.total_segments)
        .unwrap_or(plan.segments) as u64;
    let snapshot = {
        let stats = stats.clone();
        let budgets = budgets.clone();
        let labels = labels.clone();
        let items_estimated = prepared.table.item_count;
        let read_limit = prepared.read_limit;
        let write_limit = prepared.write_limit;
        move || {
            let segments_done = segments_before
                + stats
                    .segments_done
                    .load(std::sync::atomic::Ordering::Relaxed);
            let progress = Progress {
                counts: stats.counts(),
                done_before,
                items_estimated,
                segments_total,
                segments_done,
                elapsed: started.elapsed(),
                read_consumed: budgets.read.consumed(),
                write_consumed: budgets.write.consumed(),
                read_limit,
                write_limit,
                read_rate: budgets.read.rate(),
                write_rate: budgets.write.rate(),
            };
            let saves = stats
                .checkpoint_saves
                .load(std::sync::atomic::Ordering::Relaxed);
            metrics::publish(&labels, &progress, saves);
            progress
        }
    };
    let reporter = {
        let snapshot = snapshot.clone();
        let observer = observer.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let p = snapshot();
                if let Some(o) = &observer {
                    o(&p);
                }
            }
        })
    };
    let result = pipeline(
        client,
        prepared,
        plan,
        Pipes {
            shutdown: shutdown.clone(),
            stats: stats.clone(),
            dead_letter: dead_letter.clone(),
            failed_before: state.as_ref().map(|s| s.counts.failed).unwrap_or(0),
            budgets: budgets.clone(),
            acks,
            starts,
            fence: fence.cloned(),
        },
    )
    .await;
    // Every worker is done: the ack channel is closed, the checkpointer drains and ends.
    let mut result = result;
    if let Some(task) = checkpointer {
        match task.await {
            Ok(Ok((final_state, writes))) => {
                report.state_writes = writes;
                report.total = Some(final_state.counts);
                state = Some(final_state);
            }
            Ok(Err(e)) => {
                result = result.and(Err(e));
            }
            Err(join) => {
                result = result.and(Err(Error::Panicked(format!(
                    "the checkpointer panicked: {join}"
                ))));
            }
        }
    }
    report.capacity = Capacity {
        read_limit: prepared.read_limit,
        write_limit: prepared.write_limit,
        read_consumed: budgets.read.consumed(),
        write_consumed: budgets.write.consumed(),
        read_rate: budgets.read.rate(),
        write_rate: budgets.write.rate(),
        write_estimate: stats.write_estimate(),
        page_size: prepared.page_size,
    };
    reporter.abort();
    let last = snapshot();
    if let Some(o) = &observer {
        o(&last);
    }
    report.counts = stats.counts();
    report.samples = stats.samples();
    report.elapsed = started.elapsed();
    report.dead_letters = dead_letter_files(state.as_ref(), &dead_letter).await;
    let all_done = state
        .as_ref()
        .map(|st| st.segments.iter().all(|s| *s == SegmentState::Done))
        .unwrap_or(true);
    let error = match result {
        Ok(()) if shutdown.is_cancelled() || !all_done => {
            report.outcome = Outcome::Stopped;
            None
        }
        Ok(()) => {
            let failed = report
                .total
                .map(|t| t.failed)
                .unwrap_or(report.counts.failed);
            report.outcome = if failed > 0 {
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
    metrics::run_state(
        &labels,
        match (&error, report.outcome) {
            (Some(_), _) => "failed",
            (None, Outcome::Stopped) => "stopped",
            (None, Outcome::DoneWithFailures) => "failed",
            _ => "done",
        },
        started_unix,
    );
    if let Some(fence) = fence {
        let finished = async {
            if matches!(report.outcome, Outcome::Done | Outcome::DoneWithFailures) {
                // The run is complete: its checkpoints have no further use.
                store.delete().await?;
            }
            finish(ledger, &report, &runner, &started_at, runs, fence).await
        };
        if let Err(e) = finished.await {
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

/// The ledger's status for a run that ended with `outcome`.
fn ledger_status(outcome: Outcome) -> Status {
    match outcome {
        Outcome::Done | Outcome::Skipped => Status::Applied,
        Outcome::DoneWithFailures => Status::Failed,
        Outcome::Stopped => Status::Stopped,
    }
}

/// Records in the ledger how the run ended: its totals over all its attempts
/// when it was checkpointed, else this attempt's.
async fn finish(
    ledger: &Ledger,
    report: &Report,
    runner: &str,
    started_at: &str,
    runs: u64,
    fence: &Fence,
) -> Result<(), Error> {
    let run = Finished {
        table: &report.table,
        migration: &report.migration,
        status: ledger_status(report.outcome),
        runner,
        started_at,
        runs,
        counts: report.total.unwrap_or(report.counts),
        schema: report.schema.as_deref(),
        dead_letters: &report.dead_letters,
    };
    ledger.finish(&run, fence).await
}

/// The dead-letter files of the run: those its state names (earlier attempts,
/// and this one once a checkpoint covered a failure), then this attempt's if
/// it holds records the state does not know of yet (pages not acknowledged,
/// a dry run).
async fn dead_letter_files(state: Option<&RunState>, current: &DeadLetter) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = state
        .map(|s| s.dead_letters.iter().map(PathBuf::from).collect())
        .unwrap_or_default();
    if current.has_records().await && !files.iter().any(|f| f == current.path()) {
        files.push(current.path().to_owned());
    }
    files
}

/// Refuses to resume a run whose stored state no longer fits the table.
fn check_resumable(state: &RunState, prepared: &Prepared, state_table: &str) -> Result<(), Error> {
    if state.keys != prepared.table.keys {
        return Err(Error::State {
            table: state_table.to_owned(),
            message: format!(
                "the unfinished run of {} on {} started when the table's key was {:?}; it is now {:?}. \
                 Its checkpoints cannot be used on the new key schema and nothing was written. \
                 Run with --restart to start over",
                prepared.migration.id(),
                prepared.table.name,
                state.keys,
                prepared.table.keys
            ),
        });
    }
    if let (Some(then), Some(now)) = (&state.table_id, &prepared.table.table_id) {
        if then != now {
            return Err(Error::State {
                table: state_table.to_owned(),
                message: format!(
                    "the unfinished run of {} started on another table named {} (TableId {then}; the table now has {now}: \
                     it was deleted and created again). Its checkpoints do not apply and nothing was written. \
                     Run with --restart to start over",
                    prepared.migration.id(),
                    prepared.table.name
                ),
            });
        }
    }
    Ok(())
}

/// The channels and shared state the pipeline's tasks use.
struct Pipes {
    shutdown: CancellationToken,
    stats: Arc<Stats>,
    dead_letter: Arc<DeadLetter>,
    /// Items of the run that failed in earlier attempts.
    failed_before: u64,
    budgets: Arc<Budgets>,
    acks: Option<mpsc::Sender<Ack>>,
    starts: Vec<SegmentState>,
    /// The lock's fence, which every data write attempt checks; `None` in dry runs.
    fence: Option<Fence>,
}

/// The scan options and what every write is conditioned on besides the
/// transform's reads: the version attribute (the plan's, else the
/// migration's), which a projected scan must then fetch, and the scan filter.
fn scan_and_guard(
    migration: &dyn Migration,
    plan: &Plan,
) -> (crate::migration::ScanOptions, crate::pipeline::diff::Guard) {
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
    let filter = options.filter.as_deref().map(|expr| {
        crate::pipeline::diff::Filter::new(expr, &options.filter_names, &options.filter_values)
    });
    (options, crate::pipeline::diff::Guard { version, filter })
}

async fn pipeline(
    client: &Client,
    prepared: &Prepared,
    plan: &Plan,
    pipes: Pipes,
) -> Result<(), Error> {
    let Pipes {
        shutdown,
        stats,
        dead_letter,
        failed_before,
        budgets,
        acks,
        starts,
        fence,
    } = pipes;
    let migration = prepared.migration.clone();
    let info = &prepared.table;
    let (options, guard) = scan_and_guard(migration.as_ref(), plan);
    let spec = Arc::new(ScanSpec {
        table: info.name.clone(),
        total_segments: starts.len() as u32,
        page_size: prepared.page_size,
        options: options.clone(),
        keys: info.keys.clone(),
    });
    let data_backoff = Backoff {
        budget: Some(plan.retry_budget),
        ..plan.backoff
    };
    let projection = options
        .projection
        .as_ref()
        .map(|attrs| crate::pipeline::scan::projection_expr(&info.keys, attrs));
    let writer = Arc::new(Writer {
        client: client.clone(),
        table: info.name.clone(),
        keys: info.keys.clone(),
        migration,
        dry_run: plan.dry_run,
        backoff: data_backoff,
        stats: stats.clone(),
        projection,
        budgets: budgets.clone(),
        guard,
        index_keys: info.index_keys.clone(),
        fence,
    });
    let pool = Arc::new(Pool {
        writer,
        dead_letter,
        stats: stats.clone(),
        item_concurrency: plan.item_concurrency,
        max_errors: plan.max_errors,
        failed_before,
        acks,
    });

    // Memory is bounded by the in-flight byte budget every page holds from its
    // Scan until it is done; the channel's bound caps what a crash makes a
    // resume redo (queued pages are not acknowledged).
    let (tx, rx) = mpsc::channel(plan.workers.max(1));
    let rx = Arc::new(Mutex::new(rx));
    // Stops the scans: on shutdown, on a fatal error, on the error budget.
    let stop_scans = shutdown.child_token();

    let scanner = {
        let scanner = Scanner {
            client: client.clone(),
            spec,
            stats: stats.clone(),
            backoff: data_backoff,
            budgets,
            avg_item_bytes: prepared.avg_item_bytes,
            inflight: InFlight::new(plan.inflight_bytes),
        };
        let stop = stop_scans.clone();
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
    };

    let mut workers = JoinSet::new();
    for _ in 0..plan.workers.max(1) {
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
    // Only the workers hold the receiver now: if they all end, the scans'
    // sends fail instead of waiting on a full channel.
    drop(rx);

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
    match scanner.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            first_error.get_or_insert(e);
        }
        Err(join) => {
            first_error.get_or_insert(Error::Panicked(format!("the scan task panicked: {join}")));
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::{Change, Item, ScanOptions, TransformError};

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
