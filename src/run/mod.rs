//! One migration's run on one table (the orchestration): prepare the plan
//! against the table, take the lock, then one attempt: the ledger's say,
//! resume or start the run's state, the schema step, the data step (the
//! pipeline), and the record of how it ended.
//!
//! - [`plan`]: the [`Plan`] a caller gives, the [`Prepared`] plan after
//!   looking at the table (limits resolved, page size, estimate).
//! - `prepare`: looks at the table and makes the [`Prepared`] plan.
//! - `resume`: resume or start, and the checks stored state must pass.
//! - `attempt`: one attempt's steps, in order.
//! - `join`: a process's part in a run shared with `--join` (join or start,
//!   claim segments, finish once).
//! - `data`: the data step: checkpointer, progress snapshots, the pipeline, the report.
//! - `pipeline`: the scan and worker tasks and how the first error stops them.
//! - `outcome`: how the run ended: outcome, ledger status, run-state metric.
//! - [`replay`](replay()): `dynbulk replay`, the migration applied again to the keys of
//!   dead-letter files, with the run's writer, resumable, recorded in the ledger.
//! - [`revert`]: `dynbulk revert`: a run's journals put back where the
//!   application has not written since.

use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::migration::Migration;
use crate::report::{Observer, Report};
use crate::state::ledger::Ledger;
use crate::state::lock;

mod attempt;
mod data;
mod join;
mod outcome;
mod pipeline;
pub mod plan;
mod prepare;
mod replay;
mod resume;
pub mod revert;

pub use plan::{
    JournalPlace, Limit, Limits, Plan, Prepared, DEFAULT_PROVISIONED_SHARE, DEFAULT_RETRY_BUDGET,
};
pub use prepare::prepare;
pub use replay::{replay, ReplayFailure, ReplayObserver, ReplayProgress, ReplayReport};

/// Scans running at once at most: beyond this, more segments only mean smaller
/// slices, not more parallelism (TotalSegments may be up to 1,000,000).
pub const MAX_CONCURRENT_SCANS: usize = 256;

/// A run that did not complete: why, and what it achieved before stopping.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    /// What stopped it.
    pub error: Error,
    /// What was done before, if the data step started.
    pub report: Option<Box<Report>>,
}

impl Failure {
    /// A failure after the data step started, with what it achieved.
    pub fn with_report(error: Error, report: Report) -> Self {
        Failure {
            error,
            report: Some(Box::new(report)),
        }
    }
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
/// in-flight pages finish; the report then says [`Outcome::Stopped`](crate::report::Outcome::Stopped).
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
    execute(client, &prepared, shutdown, None).await
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
    shutdown: CancellationToken,
    observer: Option<Observer>,
) -> Result<Report, Failure> {
    let plan = &prepared.plan;
    let migration = prepared.migration.clone();
    let table_name = prepared.table.name.as_str();
    let ledger = Ledger::new(client.clone(), plan.state_table.clone());
    if plan.dry_run {
        return attempt::run(client, prepared, shutdown, &ledger, None, observer).await;
    }
    if plan.join {
        return join::execute(client, prepared, shutdown, observer).await;
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
    let result = attempt::run(
        client,
        prepared,
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
    lost_lock(
        result,
        &fence,
        &format!(
            "the rest of the run of migration {} on table {table_name}",
            migration.id()
        ),
    )
}

/// The outcome of a run whose lock (or lease) was lost: whatever else went
/// wrong, that is why it ended; what it achieved is kept. `what` names what
/// could not be done (see [`crate::state::fence::Fence::lost_error`]).
fn lost_lock(
    result: Result<Report, Failure>,
    fence: &crate::state::fence::Fence,
    what: &str,
) -> Result<Report, Failure> {
    let (error, report) = match result {
        Ok(report) => (None, Some(Box::new(report))),
        Err(f) => (Some(f.error), f.report),
    };
    let error = match error {
        Some(e @ Error::LockLost(_)) => e,
        _ => fence.lost_error(what),
    };
    Err(Failure { error, report })
}
