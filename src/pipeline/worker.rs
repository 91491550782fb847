//! The worker pool: takes pages off the bounded channel, applies the migration
//! to each item (a few items of a page at a time), records failures in the
//! dead-letter file and enforces the error budget.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::pipeline::scan::Page;
use crate::pipeline::write::{transform_failed, ItemOutcome, Round, Writer};
use crate::report::Counts;
use crate::report::Stats;
use crate::state::checkpoint::Ack;
use crate::state::deadletter::DeadLetter;

/// Why a worker stopped before the channel closed.
#[derive(Debug)]
pub enum Stop {
    /// More items failed than `--max-errors` allows.
    ErrorBudget(u64),
    /// An error that stops the run.
    Fatal(Error),
}

/// What every worker shares.
pub struct Pool {
    /// Writes items.
    pub writer: Arc<Writer>,
    /// Failure sink.
    pub dead_letter: Arc<DeadLetter>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Items of one page in flight at once, per worker.
    pub item_concurrency: usize,
    /// Stop when more than this many items of the run failed (all attempts).
    pub max_errors: Option<u64>,
    /// Items of the run that failed in earlier attempts.
    pub failed_before: u64,
    /// Where finished pages are acknowledged (the checkpointer); `None` in dry runs.
    pub acks: Option<mpsc::Sender<Ack>>,
}

/// Runs one worker until the channel is closed and drained, or until `stop`
/// fires: then it finishes the page in hand and takes no other. Pages left in
/// the channel are not acknowledged, so a resume scans them again; a graceful
/// stop therefore waits for one page per worker, not for the whole channel.
///
/// # Errors
/// [`Stop`] when the error budget is exceeded or an item hits a fatal error.
pub async fn work(
    pool: Arc<Pool>,
    rx: Arc<Mutex<mpsc::Receiver<Page>>>,
    stop: CancellationToken,
) -> std::result::Result<(), Stop> {
    loop {
        let page = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            page = async { rx.lock().await.recv().await } => page,
        };
        let Some(page) = page else { return Ok(()) };
        process_page(&pool, page).await?;
    }
}

/// Applies the migration to one page's items (a few at once), records
/// failures in the dead-letter file, acknowledges the page to the
/// checkpointer, and checks the error budget. The page's counts, its
/// reservation and its acknowledgement stay together here, so that a page
/// is acknowledged exactly once, after its last item.
async fn process_page(pool: &Pool, page: Page) -> std::result::Result<(), Stop> {
    let writer = &pool.writer;
    // Set on a fatal error in this page: items not started yet are skipped.
    let abort = std::sync::atomic::AtomicBool::new(false);
    let abort = &abort;
    let Page {
        segment,
        seq,
        items,
        last_key,
        // Held until the page is done: its bytes count against the budget.
        reservation: _held,
    } = page;
    let mut counts = Counts {
        scanned: items.len() as u64,
        ..Counts::default()
    };
    let rounds = plan_page(writer, items).await;
    let ids = writer.journal_rounds(&rounds).map_err(Stop::Fatal)?;
    let mut results = stream::iter(rounds.into_iter().zip(ids))
        .map(|(round, id)| async move {
            // After a fatal error in this page, only items already started
            // finish; the page is then not acknowledged, so a resume redoes it.
            // A graceful stop (Ctrl-C) finishes the page instead, so that it is
            // acknowledged and the run's totals stay exact.
            if abort.load(Relaxed) {
                return None;
            }
            let r = writer.send_rounds(round, id).await;
            if r.is_err() {
                abort.store(true, Relaxed);
            }
            Some(r)
        })
        .buffer_unordered(pool.item_concurrency.max(1));
    let mut fatal = None;
    let conflicts_before = pool.stats.conflicts.load(Relaxed);
    let mut skipped = 0u64;
    while let Some(result) = results.next().await {
        // Let the other in-flight items of the page finish before stopping.
        match result {
            None => skipped += 1,
            Some(Ok(outcome)) => {
                if let Err(e) = tally(pool, &mut counts, outcome).await {
                    fatal.get_or_insert(e);
                }
            }
            Some(Err(e)) => {
                fatal.get_or_insert(e);
            }
        }
    }
    if let Some(e) = fatal {
        return Err(Stop::Fatal(e));
    }
    drop(results);
    debug_assert_eq!(
        skipped, 0,
        "items are skipped only after a fatal error, returned above"
    );
    // Conflicts are counted globally; the page's share is approximate when
    // workers overlap, which only affects the reported conflict total.
    counts.conflicts = pool
        .stats
        .conflicts
        .load(Relaxed)
        .saturating_sub(conflicts_before);
    acknowledge(
        pool,
        Ack {
            segment,
            seq,
            last_key,
            counts,
        },
    )
    .await
}

/// Transforms and plans every item of a page before any is sent, so that
/// the page's journal records go out together, before its writes. A
/// migration with its own transform threads (a script) gets the whole page
/// at once, off this task; the others transform item by item here.
async fn plan_page(writer: &Writer, items: Vec<crate::dynamo::value::Attrs>) -> Vec<Round> {
    match writer.migration.page_transform() {
        Some(pages) => pages
            .transform_page(&writer.facts(), items)
            .await
            .into_iter()
            .map(|(item, change)| writer.plan_round(item, change.map_err(transform_failed)))
            .collect(),
        None => {
            let mut rounds = Vec::with_capacity(items.len());
            for attrs in items {
                let (item, change) = writer.transform(attrs).await;
                rounds.push(writer.plan_round(item, change));
            }
            rounds
        }
    }
}

/// Counts one item's outcome, in the page's counts and the run's; a failed
/// item goes to the dead-letter file.
///
/// # Errors
/// When the dead-letter file cannot be written.
async fn tally(pool: &Pool, counts: &mut Counts, outcome: ItemOutcome) -> Result<()> {
    let stats = &pool.stats;
    match outcome {
        ItemOutcome::Unchanged => {
            counts.unchanged += 1;
            Stats::inc(&stats.unchanged)
        }
        ItemOutcome::Updated => {
            counts.updated += 1;
            Stats::inc(&stats.updated)
        }
        ItemOutcome::Deleted => {
            counts.deleted += 1;
            Stats::inc(&stats.deleted)
        }
        ItemOutcome::Failed { key, reason } => {
            counts.failed += 1;
            Stats::inc(&stats.failed);
            let writer = &pool.writer;
            tracing::warn!(table = %writer.table, migration = writer.migration.id(), key = %crate::state::deadletter::to_json(&key), error = %reason, "item failed; recorded in the dead-letter file");
            record(pool, &key, &reason).await?;
        }
    }
    Ok(())
}

/// Acknowledges a finished page to the checkpointer (none in dry runs), then
/// checks the run's error budget.
///
/// # Errors
/// [`Stop::Fatal`] when the checkpointer has stopped; [`Stop::ErrorBudget`]
/// when the run's failures now exceed `--max-errors`.
async fn acknowledge(pool: &Pool, ack: Ack) -> std::result::Result<(), Stop> {
    let page_failed = ack.counts.failed;
    if let Some(acks) = &pool.acks {
        if acks.send(ack).await.is_err() {
            return Err(Stop::Fatal(Error::Internal(
                "the checkpointer stopped; checkpoints can no longer be saved".into(),
            )));
        }
    }
    // The budget is the run's, over all its attempts. A resume whose earlier
    // attempts already spent it stops at its first new failure, not before
    // doing anything: raising --max-errors is how to let it go further.
    if let Some(max) = pool.max_errors.filter(|_| page_failed > 0) {
        let failed = pool.failed_before + pool.stats.failed.load(Relaxed);
        if failed > max {
            return Err(Stop::ErrorBudget(failed));
        }
    }
    Ok(())
}

async fn record(pool: &Pool, key: &crate::dynamo::value::Attrs, reason: &str) -> Result<()> {
    pool.dead_letter
        .record(&pool.writer.table, pool.writer.migration.id(), key, reason)
        .await
}
