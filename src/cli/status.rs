//! `dynbulk status`: each registered migration's state on its table, from the
//! ledger, the unfinished run's checkpoints and the lock.

use std::fmt::Write as _;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;

use crate::error::{Error, Result};
use crate::migration::Migration;
use crate::state::checkpoint::{RunState, Store};
use crate::state::ledger::{Entry, Ledger, Status};
use crate::state::lock::{self, Holder};

/// One line of the status listing.
#[derive(Debug, Clone)]
pub struct Row {
    /// Migration id.
    pub migration: String,
    /// Table it applies to.
    pub table: String,
    /// Status on that table.
    pub status: Status,
    /// Ledger entry, if any run happened.
    pub entry: Option<Entry>,
    /// The unfinished run's checkpoints, if one exists.
    pub run: Option<RunState>,
    /// Who holds the run's lock now, if anyone.
    pub holder: Option<Holder>,
}

/// Reads the ledger, checkpoints and lock for every migration (on `table`, or
/// each migration's own table).
///
/// # Errors
/// When a migration has no table and none is given, or the state cannot be read.
pub async fn collect(
    client: &Client,
    ledger: &Ledger,
    migrations: &[Arc<dyn Migration>],
    table: Option<&str>,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for m in migrations {
        let t = table.or(m.table()).ok_or_else(|| {
            Error::Usage(format!("migration {} names no table; pass --table", m.id()))
        })?;
        let entry = ledger.get(t, m.id()).await?;
        let run = Store::new(client.clone(), ledger.table(), t, m.id())
            .load()
            .await?;
        let holder = lock::holder(client, ledger.table(), t, m.id())
            .await?
            .filter(|h| h.expires_ms > chrono::Utc::now().timestamp_millis());
        let mut status = entry.as_ref().map(|e| e.status).unwrap_or(Status::Pending);
        if status == Status::InProgress && holder.is_none() {
            // The ledger says running but nobody holds the lock: it died.
            status = Status::Stopped;
        }
        rows.push(Row {
            migration: m.id().to_owned(),
            table: t.to_owned(),
            status,
            entry,
            run,
            holder,
        });
    }
    Ok(rows)
}

/// Renders rows as an aligned table, with progress and lock lines under
/// unfinished runs.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let w = rows
        .iter()
        .map(|r| r.migration.len())
        .max()
        .unwrap_or(9)
        .max(9);
    let tw = rows.iter().map(|r| r.table.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "{:<w$}  {:<tw$}  {:<11}  {:<20}  {:<20}  {:>10}  {:>10}  {:>8}",
        "MIGRATION", "TABLE", "STATUS", "WHEN", "BY", "PROCESSED", "MODIFIED", "FAILED"
    );
    for r in rows {
        let (when, by, processed, modified, failed) = match (&r.entry, &r.run) {
            // An unfinished run: its totals over all attempts are in the checkpoints.
            (Some(e), Some(run)) => (
                run.checkpoint_at
                    .clone()
                    .unwrap_or_else(|| e.started_at.clone()),
                e.runner.clone(),
                run.counts.scanned.to_string(),
                run.counts.modified().to_string(),
                run.counts.failed.to_string(),
            ),
            (Some(e), None) => (
                e.finished_at
                    .clone()
                    .unwrap_or_else(|| e.started_at.clone()),
                e.runner.clone(),
                e.counts.scanned.to_string(),
                e.counts.modified().to_string(),
                e.counts.failed.to_string(),
            ),
            (None, _) => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<w$}  {:<tw$}  {:<11}  {:<20}  {:<20}  {:>10}  {:>10}  {:>8}",
            r.migration,
            r.table,
            r.status.as_str(),
            when,
            by,
            processed,
            modified,
            failed
        );
        if let Some(run) = &r.run {
            let _ = writeln!(
                out,
                "    unfinished run {}: {}/{} segments done, started {}, {} attempt(s), last checkpoint {}",
                run.run_id,
                run.segments_done(),
                run.total_segments,
                run.started_at,
                run.attempts,
                run.checkpoint_at.as_deref().unwrap_or("none yet")
            );
        }
        if let Some(h) = &r.holder {
            let until = chrono::DateTime::from_timestamp_millis(h.expires_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    lock held by {} (pid {}) since {}, lease until {until}",
                h.owner, h.pid, h.since
            );
        }
    }
    out
}
