//! `dynbulk status`: each registered migration's state on its table, from the
//! ledger, the unfinished run's checkpoints and the lock.

use std::fmt::Write as _;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;

use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};
use crate::migration::Migration;
use crate::state::checkpoint::SegmentState;
use crate::state::checkpoint::{RunState, Store};
use crate::state::lease::{self, MemberInfo, SegmentLease};
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
    /// For a run shared with `--join`: its live members and each segment's lease.
    pub shared: Option<Shared>,
}

/// What `status` shows of a run shared with `--join`.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Members whose lease has not run out by their own clock (display only).
    pub members: Vec<MemberInfo>,
    /// Each segment's lease, if held.
    pub leases: Vec<Option<SegmentLease>>,
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
        let (items, run) = Store::new(client.clone(), ledger.table(), t, m.id())
            .load_items()
            .await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let holder = lock::holder(client, ledger.table(), t, m.id())
            .await?
            .filter(|h| h.expires_ms > now_ms);
        let shared = match (&run, &holder) {
            (Some(run), Some(h)) if h.mode.as_deref() == Some(lock::JOIN_MODE) => {
                let members = lease::members(client, ledger.table(), t, m.id())
                    .await?
                    .into_iter()
                    .filter(|m| m.expires_ms > now_ms)
                    .collect();
                Some(Shared {
                    members,
                    leases: leases(&items, run),
                })
            }
            _ => None,
        };
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
            shared,
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
        if let (Some(run), Some(shared)) = (&r.run, &r.shared) {
            render_shared(&mut out, run, shared);
        } else if let Some(h) = &r.holder {
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

/// Each segment's lease in a run's partition (rows of this run only).
fn leases(items: &[Attrs], run: &RunState) -> Vec<Option<SegmentLease>> {
    let mut out = vec![None; run.total_segments as usize];
    for item in items {
        let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok());
        let Some(i) = s("sk")
            .and_then(|sk| sk.strip_prefix("segment#"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if i < out.len() && s("run_id") == Some(&run.run_id) {
            out[i] = lease::decode_lease(item);
        }
    }
    out
}

/// Most segments listed one per line under a shared run.
const SEGMENT_LINES: usize = 50;

/// The live processes of a shared run, its segments done/leased/free, and
/// each unfinished segment's progress (a long pole shows as the segment
/// still leased when the others are done).
fn render_shared(out: &mut String, run: &RunState, shared: &Shared) {
    let _ = writeln!(
        out,
        "    shared run (--join): {} live process(es)",
        shared.members.len()
    );
    for m in &shared.members {
        let _ = writeln!(out, "      {} (pid {}) since {}", m.owner, m.pid, m.since);
    }
    let done = run.segments_done();
    let leased = shared.leases.iter().flatten().count();
    let free = run.segments.len() - done - leased;
    let _ = writeln!(
        out,
        "    segments: {done} done, {leased} leased, {free} free (of {})",
        run.total_segments
    );
    let unfinished: Vec<usize> = (0..run.segments.len())
        .filter(|i| run.segments[*i] != SegmentState::Done)
        .collect();
    for i in unfinished.iter().take(SEGMENT_LINES) {
        let scanned = run.segment_counts[*i].scanned;
        let place = match &run.segments[*i] {
            SegmentState::Start => "not started",
            _ => "checkpointed",
        };
        let who = match &shared.leases[*i] {
            Some(l) => format!("leased by {} (pid {})", l.owner, l.pid),
            None => "free".to_owned(),
        };
        let _ = writeln!(
            out,
            "      segment {i}: {scanned} items done, {place}, {who}"
        );
    }
    if unfinished.len() > SEGMENT_LINES {
        let _ = writeln!(
            out,
            "      ... and {} more",
            unfinished.len() - SEGMENT_LINES
        );
    }
}
