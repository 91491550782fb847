//! `dynbulk status`: each registered migration's state on its table, from the ledger.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ledger::{Entry, Ledger, Status};
use crate::migration::Migration;

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
}

/// Reads the ledger for every migration (on `table`, or each migration's own table).
///
/// # Errors
/// When a migration has no table and none is given, or the ledger cannot be read.
pub async fn collect(
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
        rows.push(Row {
            migration: m.id().to_owned(),
            table: t.to_owned(),
            status: entry.as_ref().map(|e| e.status).unwrap_or(Status::Pending),
            entry,
        });
    }
    Ok(rows)
}

/// Renders rows as an aligned table.
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
        let (when, by, processed, modified, failed) = match &r.entry {
            Some(e) => (
                e.finished_at
                    .clone()
                    .unwrap_or_else(|| e.started_at.clone()),
                e.runner.clone(),
                e.counts.scanned.to_string(),
                e.counts.modified().to_string(),
                e.counts.failed.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
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
    }
    out
}
