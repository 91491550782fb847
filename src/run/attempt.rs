//! One attempt of a run once its lock is held (in a dry run, without one):
//! the ledger's say, the run's state, the schema step, the data step, and the
//! record of how it ended. Each step is a function below, in that order.

use aws_sdk_dynamodb::Client;
use tokio_util::sync::CancellationToken;

use super::outcome::{self, Ending};
use super::plan::Prepared;
use super::{data, resume, Failure};
use crate::dynamo::schema::{self, SchemaStep};
use crate::error::Error;
use crate::metrics;
use crate::report::{Observer, Outcome, Report};
use crate::state::checkpoint::{RunState, SegmentState, Store};
use crate::state::fence::Fence;
use crate::state::ledger::{Finished, Ledger, Status};
use crate::state::store::{now, runner_identity};

/// Runs one attempt: see the module docs.
///
/// # Errors
/// A [`Failure`] (with the report once the ledger has the run) on a fatal
/// error, the error budget, or state that cannot be used.
pub(super) async fn run(
    client: &Client,
    prepared: &Prepared,
    shutdown: CancellationToken,
    ledger: &Ledger,
    fence: Option<&Fence>,
    observer: Option<Observer>,
) -> Result<Report, Failure> {
    let plan = &prepared.plan;
    let id = prepared.migration.id();
    let entry = ledger.get(&prepared.table.name, id).await?;
    if entry.as_ref().is_some_and(|e| e.status == Status::Applied) && !plan.rerun {
        return Ok(blank_report(prepared, Outcome::Skipped));
    }
    // State is written only under the lock (never in a dry run), fenced.
    let fence = fence.filter(|_| !plan.dry_run);
    let store = Store::new(client.clone(), &plan.state_table, &prepared.table.name, id);
    let (store, state) = match fence {
        Some(f) => {
            let store = store.fenced(f.clone());
            let state = begin(&store, prepared).await?;
            (store, Some(state))
        }
        None => (store, None),
    };
    // From here on the plan is this run's: a resumed run keeps its TotalSegments.
    let prepared = &*prepared.for_run(state.as_ref());
    let record = Record {
        ledger,
        fence,
        runner: runner_identity(),
        started_at: state
            .as_ref()
            .map(|s| s.started_at.clone())
            .unwrap_or_else(now),
        runs: entry.map(|e| e.runs).unwrap_or(0) + 1,
    };
    record.begin(prepared).await?;

    let mut report = blank_report(prepared, Outcome::Done);
    if let Some(step) = prepared.migration.schema_step() {
        if let Err(error) = schema_step(client, prepared, &step, &shutdown, &mut report).await {
            record.finish(&report).await?;
            return Err(Failure::with_report(error, report));
        }
        if report.outcome == Outcome::Stopped {
            record.finish(&report).await?;
            return Ok(report);
        }
    }

    let (labels, started_unix) = start_metrics(prepared);
    let data = data::Step {
        shutdown: shutdown.clone(),
        fence: fence.cloned(),
        store: &store,
        labels: &labels,
        observer,
        shared: None,
    };
    let (result, state) = data.run(client, prepared, state, &mut report).await;
    report.outcome = outcome::outcome(Ending {
        failed: result.is_err(),
        cancelled: shutdown.is_cancelled(),
        all_done: state.as_ref().is_none_or(all_done),
        item_failures: report.total.unwrap_or(report.counts).failed,
    });
    let state_label = outcome::metric_state(result.is_err(), report.outcome);
    metrics::run_state(&labels, state_label, started_unix);
    // A failure to record the end is what the caller hears first.
    match finish(&store, &record, &report).await.and(result) {
        Ok(()) => Ok(report),
        Err(error) => Err(Failure::with_report(error, report)),
    }
}

/// Exports the run's series at 0 and marks it running; the labels and the
/// start time serve the end's mark.
pub(super) fn start_metrics(prepared: &Prepared) -> (metrics::RunLabels, f64) {
    let labels = metrics::RunLabels {
        migration: prepared.migration.id().to_owned(),
        table: prepared.table.name.clone(),
    };
    let started_unix = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    metrics::zero(&labels);
    metrics::run_state(&labels, "running", started_unix);
    (labels, started_unix)
}

/// The report of a run that has done nothing yet.
pub(super) fn blank_report(prepared: &Prepared, outcome: Outcome) -> Report {
    Report {
        migration: prepared.migration.id().to_owned(),
        table: prepared.table.name.clone(),
        dry_run: prepared.plan.dry_run,
        verify: prepared.plan.verify,
        outcome,
        counts: Default::default(),
        total: None,
        schema: None,
        samples: vec![],
        dead_letters: vec![],
        journals: vec![],
        replays: vec![],
        elapsed: Default::default(),
        capacity: Default::default(),
        state_writes: 0,
    }
}

/// Opens the run's state under the lock (resumed or new) and counts this attempt.
async fn begin(store: &Store, prepared: &Prepared) -> Result<RunState, Error> {
    let mut state = resume::open(store, prepared).await?;
    state.attempts += 1;
    store.put_header(&state).await?;
    Ok(state)
}

fn all_done(state: &RunState) -> bool {
    state.segments.iter().all(|s| *s == SegmentState::Done)
}

/// The schema step. An interrupt before or during it ends the run there: no
/// table change, no wait for an index, no data step (the report then says
/// [`Outcome::Stopped`]).
///
/// # Errors
/// The step's own error; the report then says it failed.
pub(super) async fn schema_step(
    client: &Client,
    prepared: &Prepared,
    step: &SchemaStep,
    shutdown: &CancellationToken,
    report: &mut Report,
) -> Result<(), Error> {
    let (table, id) = (prepared.table.name.as_str(), prepared.migration.id());
    let applied = if shutdown.is_cancelled() {
        Ok("not applied: interrupted before the schema step".to_owned())
    } else {
        schema::apply(client, table, step, prepared.plan.dry_run, shutdown).await
    };
    match applied {
        Ok(done) if shutdown.is_cancelled() => {
            tracing::info!(table, migration = id, schema = %done, "interrupted before the data step");
            report.outcome = Outcome::Stopped;
            report.schema = Some(done);
            Ok(())
        }
        Ok(done) => {
            tracing::info!(table, migration = id, schema = %done, "schema step finished");
            report.schema = Some(done);
            Ok(())
        }
        Err(error) => {
            report.outcome = Outcome::Stopped;
            report.schema = Some(format!("failed: {error}"));
            Err(error)
        }
    }
}

/// The run's ledger entry, written only under the lock.
struct Record<'a> {
    ledger: &'a Ledger,
    fence: Option<&'a Fence>,
    runner: String,
    started_at: String,
    /// Runs of this migration on this table, this one included.
    runs: u64,
}

impl Record<'_> {
    async fn begin(&self, prepared: &Prepared) -> Result<(), Error> {
        let Some(fence) = self.fence else {
            return Ok(());
        };
        let (table, id) = (prepared.table.name.as_str(), prepared.migration.id());
        self.ledger
            .begin(table, id, &self.runner, self.runs, fence)
            .await
    }

    /// Records how the run ended: its totals over all its attempts when it
    /// was checkpointed, else this attempt's.
    async fn finish(&self, report: &Report) -> Result<(), Error> {
        let Some(fence) = self.fence else {
            return Ok(());
        };
        let run = Finished {
            table: &report.table,
            migration: &report.migration,
            status: outcome::ledger_status(report.outcome),
            runner: &self.runner,
            started_at: &self.started_at,
            runs: self.runs,
            counts: report.total.unwrap_or(report.counts),
            schema: report.schema.as_deref(),
            dead_letters: &report.dead_letters,
            journals: &report.journals,
            replays: &report.replays,
            run_id: None,
        };
        self.ledger.finish(&run, fence).await
    }
}

/// After the data step: a complete run's checkpoints have no further use and
/// are deleted; then the ledger records the end.
async fn finish(store: &Store, record: &Record<'_>, report: &Report) -> Result<(), Error> {
    if record.fence.is_none() {
        return Ok(());
    }
    if matches!(report.outcome, Outcome::Done | Outcome::DoneWithFailures) {
        store.delete().await?;
    }
    record.finish(report).await
}
