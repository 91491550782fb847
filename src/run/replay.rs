//! `dynbulk replay`: applies each record's migration again to the items of
//! dead-letter files, once the cause of their failure is removed.
//!
//! For every key, the item is re-read (consistent, with the migration's
//! projection and scan filter) and goes through the same writer as a run:
//! transform, conditional write guarded by what the transform read, conflict
//! rounds, capacity budgets, retry budget. A key whose item no longer exists
//! is reported, never recreated. Items that fail again go to a new
//! dead-letter file. The writes are journaled like a run's, in a journal
//! named (before the first write) in the migration's unfinished run, if
//! there is one, else in its ledger entry, so that `dynbulk revert` undoes
//! them with the run's.
//!
//! Per (file, table, migration), under the migration's lock (a replay and a
//! run of the same migration never overlap): the records are replayed in
//! chunks, and after each chunk the position in the file is saved in the
//! state table (the failures of the chunk synced to disk first), so a replay
//! stopped at any instant resumes after its last finished chunk. A key that
//! appears twice in a file is replayed once. At the end the ledger's failed
//! count for the migration goes down by the items recovered and those that
//! no longer exist, once (see
//! [`crate::state::ledger::Ledger::recover`]); an unfinished run records
//! them too, so that its totals count them as settled when it completes
//! ([`crate::state::checkpoint::Store::record_replay`]). Then the position
//! is deleted.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::{pipeline, prepare};
use crate::capacity::limiter::{Budget, Budgets};
use crate::error::Error;
use crate::migration::Migration;
use crate::pipeline::write::{ItemOutcome, Writer};
use crate::report::{Outcome, Stats};
use crate::state::checkpoint::Store;
use crate::state::deadletter::{self, DeadLetter, Record};
use crate::state::fence::Fence;
use crate::state::journal::Journal;
use crate::state::ledger::{Ledger, Recovered};
use crate::state::lock;
use crate::state::replay::{Position, Rows};

/// Keys whose sample a report shows.
const SAMPLE: usize = 5;

/// What one file's records of one migration on one table came to.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// The dead-letter file (absolute).
    pub file: PathBuf,
    /// The table.
    pub table: String,
    /// The migration.
    pub migration: String,
    /// Nothing was written.
    pub dry_run: bool,
    /// This migration's records in the file.
    pub records: u64,
    /// The line this process started from (1 unless resumed).
    pub resumed_from: u64,
    /// The counts (over all attempts of this replay).
    pub position: Position,
    /// Keys of items that no longer exist, a few.
    pub gone_sample: Vec<String>,
    /// What the ledger entry became.
    pub ledger: Option<Recovered>,
    /// Where items that failed again went (when any did in this attempt).
    pub dead_letter: Option<PathBuf>,
    /// This attempt's journal (none in a dry run or with `--no-journal`),
    /// and whether the ledger or the unfinished run names it (what `dynbulk
    /// revert` reads without `--journal`).
    pub journal: Option<(PathBuf, bool)>,
    /// Done, done with failures, or stopped (position saved).
    pub outcome: Outcome,
}

/// A replay that did not complete: why, and the reports of what it did.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ReplayFailure {
    /// What stopped it.
    pub error: Error,
    /// The (file, migration) replays finished or started before it stopped.
    pub reports: Vec<ReplayReport>,
}

/// Where a replay of one file's records of one migration stands, after
/// each chunk, for a progress display (the engine never prints).
#[derive(Debug, Clone, Copy)]
pub struct ReplayProgress<'a> {
    /// The table.
    pub table: &'a str,
    /// The migration.
    pub migration: &'a str,
    /// Records of this migration in the file done so far.
    pub done: u64,
    /// Records of this migration in the file.
    pub records: u64,
}

/// Receives a replay's [`ReplayProgress`] after every chunk.
pub type ReplayObserver = dyn Fn(&ReplayProgress<'_>) + Send + Sync;

/// A file's records, by the migration (and table) they name.
type Groups = Vec<(Arc<dyn Migration>, Group)>;

/// One migration's records of one file.
struct Group {
    table: String,
    migration: String,
    records: Vec<Record>,
}

/// Replays every record of `files`, file by file, each file's migrations in
/// the order they first appear in it. `migrations` are this build's (the
/// records name theirs by id); `plan` gives the capacity limits, the retry
/// budget, the dead-letter file for items that fail again, the state table
/// and the dry run; `concurrency` keys are replayed at once.
///
/// # Errors
/// A [`ReplayFailure`] for an unreadable file or record, a migration this
/// build does not have, a fatal error (the table, access), a lost lock; it
/// carries what was done before.
pub async fn replay(
    client: &Client,
    files: &[PathBuf],
    migrations: &[Arc<dyn Migration>],
    plan: &Plan,
    concurrency: usize,
    shutdown: CancellationToken,
    observer: Option<&ReplayObserver>,
) -> Result<Vec<ReplayReport>, ReplayFailure> {
    let mut reports = Vec::new();
    let dead_letter = Arc::new(DeadLetter::new(plan.dead_letter.clone()));
    for file in files {
        let fail = |error, reports| ReplayFailure { error, reports };
        let (path, groups) = match read(file, migrations) {
            Ok(g) => g,
            Err(e) => return Err(fail(e, reports)),
        };
        for (migration, group) in groups {
            if shutdown.is_cancelled() {
                // The rest is not started: the caller sees the token cancelled.
                return Ok(reports);
            }
            let one = One {
                client,
                plan,
                file: &path,
                migration,
                concurrency: concurrency.max(1),
                dead_letter: dead_letter.clone(),
                shutdown: shutdown.clone(),
                observer,
            };
            match one.run(group).await {
                Ok(r) => reports.push(r),
                Err((error, report)) => {
                    reports.extend(report);
                    return Err(fail(error, reports));
                }
            }
        }
    }
    Ok(reports)
}

/// Reads a dead-letter file into its migrations' groups. A last line cut
/// short (no newline: the writer died mid-line) is skipped with a warning;
/// any other bad line is an error naming it.
fn read(file: &Path, migrations: &[Arc<dyn Migration>]) -> Result<(PathBuf, Groups), Error> {
    let path = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading dead-letter file {}", path.display()), e))?;
    let mut groups: Groups = Vec::new();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, raw) in lines.iter().enumerate() {
        let line = i as u64 + 1;
        let body = raw.trim();
        if body.is_empty() {
            continue;
        }
        let record = match deadletter::parse_record(line, body) {
            Ok(r) => r,
            Err(e) if i + 1 == lines.len() && !raw.ends_with('\n') => {
                tracing::warn!(file = %path.display(), line, error = %e, "skipped the last line of the dead-letter file: it was cut short");
                continue;
            }
            Err(e) => {
                return Err(Error::Usage(format!(
                    "line {line} of {} is not a dead-letter record ({e}); replay takes the JSON-lines files `dynbulk run` writes",
                    path.display()
                )))
            }
        };
        if let Some((_, g)) = groups
            .iter_mut()
            .find(|(_, g)| g.table == record.table && g.migration == record.migration)
        {
            g.records.push(record);
            continue;
        }
        let Some(migration) = migrations.iter().find(|m| m.id() == record.migration) else {
            let known: Vec<&str> = migrations.iter().map(|m| m.id()).collect();
            return Err(Error::Usage(format!(
                "line {line} of {} names migration {:?}, which is not among this build's migrations ({}); \
                 pass the --migrations-dir that holds it, or run the binary of the crate that has it",
                path.display(),
                record.migration,
                known.join(", ")
            )));
        };
        groups.push((
            migration.clone(),
            Group {
                table: record.table.clone(),
                migration: record.migration.clone(),
                records: vec![record],
            },
        ));
    }
    Ok((path, groups))
}

/// The replay of one migration's records of one file.
struct One<'a> {
    client: &'a Client,
    plan: &'a Plan,
    file: &'a Path,
    migration: Arc<dyn Migration>,
    concurrency: usize,
    dead_letter: Arc<DeadLetter>,
    shutdown: CancellationToken,
    observer: Option<&'a ReplayObserver>,
}

/// A failure, with the report of what the replay of the group did before it.
type Failed = (Error, Option<ReplayReport>);

impl One<'_> {
    /// Prepares, takes the lock, replays, records; releases the lock whatever happens.
    async fn run(self, group: Group) -> Result<ReplayReport, Failed> {
        let (client, plan) = (self.client, self.plan);
        let prepared = prepare(client, self.migration.clone(), &group.table, plan)
            .await
            .map_err(|e| (e, None))?;
        if plan.dry_run {
            return self.replay(&prepared, group, None).await;
        }
        let ledger = Ledger::new(client.clone(), plan.state_table.clone());
        ledger.ensure().await.map_err(|e| (e, None))?;
        let lock = lock::acquire(
            client,
            &plan.state_table,
            &group.table,
            &group.migration,
            plan.lease,
        )
        .await
        .map_err(|e| (e, None))?;
        let fence = lock.fence.clone();
        let result = self.replay(&prepared, group, Some(&fence)).await;
        lock.release().await;
        result
    }

    /// Replays the group's records from where an earlier attempt stopped.
    async fn replay(
        &self,
        prepared: &super::Prepared,
        group: Group,
        fence: Option<&Fence>,
    ) -> Result<ReplayReport, Failed> {
        let file = self.file.to_string_lossy().into_owned();
        let rows = Rows::new(
            self.client.clone(),
            &self.plan.state_table,
            &group.table,
            &group.migration,
        );
        let mut at = match fence {
            Some(_) => rows.load(&file).await.map_err(|e| (e, None))?,
            None => None,
        }
        .filter(|p| !p.id.is_empty())
        .unwrap_or_else(Position::start);
        let budgets = Arc::new(Budgets {
            read: Budget::new(prepared.read_limit),
            write: Budget::new(prepared.write_limit),
        });
        let journal = self
            .open_journal(&group, fence)
            .await
            .map_err(|e| (e, None))?;
        let writer = pipeline::writer_for(
            self.client,
            prepared,
            (Arc::new(Stats::default()), budgets),
            fence.cloned(),
            journal.as_ref().map(|(j, _)| j.clone()),
        );
        let mut report = ReplayReport {
            file: self.file.to_owned(),
            table: group.table.clone(),
            migration: group.migration.clone(),
            dry_run: self.plan.dry_run,
            records: group.records.len() as u64,
            resumed_from: at.next_line,
            position: at.clone(),
            gone_sample: Vec::new(),
            ledger: None,
            dead_letter: None,
            journal: journal.map(|(j, named)| (j.path().to_owned(), named)),
            outcome: Outcome::Done,
        };
        // Keys replayed by earlier attempts are not replayed (or counted) again.
        let mut seen: HashSet<String> = group
            .records
            .iter()
            .filter(|r| r.line < at.next_line)
            .map(|r| deadletter::to_json(&r.key).to_string())
            .collect();
        let todo: Vec<&Record> = group
            .records
            .iter()
            .filter(|r| r.line >= at.next_line)
            .collect();
        let done_before = group.records.len() - todo.len();
        for (i, chunk) in todo.chunks(self.concurrency * 4).enumerate() {
            if self.shutdown.is_cancelled() {
                report.outcome = Outcome::Stopped;
                break;
            }
            let result = self
                .chunk(&writer, chunk, &mut seen, &mut at, &mut report)
                .await;
            report.position = at.clone();
            if let Err(e) = result {
                return Err((e, Some(report)));
            }
            if let Some(fence) = fence {
                rows.save(&file, &at, fence)
                    .await
                    .map_err(|e| (e, Some(report.clone())))?;
            }
            if self.plan.max_errors.is_some_and(|max| at.failed > max) {
                let error = Error::ErrorBudget {
                    failed: at.failed,
                    dead_letter: self.dead_letter.path().to_owned(),
                };
                return Err((error, Some(report)));
            }
            if let Some(observe) = self.observer {
                let done = done_before + (i + 1) * self.concurrency * 4;
                observe(&ReplayProgress {
                    table: &group.table,
                    migration: &group.migration,
                    done: done.min(group.records.len()) as u64,
                    records: group.records.len() as u64,
                });
            }
        }
        if report.outcome == Outcome::Stopped {
            return Ok(report);
        }
        if at.failed > 0 {
            report.outcome = Outcome::DoneWithFailures;
        }
        if let Some(fence) = fence {
            // A run stopped part way (its error budget, say) and not resumed
            // yet: its totals count the settled items as not failing.
            let unfinished = Store::new(
                self.client.clone(),
                &self.plan.state_table,
                &group.table,
                &group.migration,
            )
            .fenced(fence.clone())
            .record_replay(&at)
            .await
            .map_err(|e| (e, Some(report.clone())))?;
            let ledger = Ledger::new(self.client.clone(), self.plan.state_table.clone());
            report.ledger = ledger
                .recover(&group.table, &group.migration, &at, !unfinished, fence)
                .await
                .map_err(|e| (e, Some(report.clone())))?;
            rows.delete(&file, fence)
                .await
                .map_err(|e| (e, Some(report.clone())))?;
        }
        Ok(report)
    }

    /// This attempt's journal (none in a dry run or with `--no-journal`),
    /// created and named before any write is sent: in the header of the
    /// migration's unfinished run when there is one (after the journals of
    /// its attempts so far, so that revert undoes them in the order they
    /// were written), else in its ledger entry. `true` with it when either
    /// names it.
    ///
    /// # Errors
    /// When the journal cannot be created or the state table not written.
    async fn open_journal(
        &self,
        group: &Group,
        fence: Option<&Fence>,
    ) -> Result<Option<(Arc<Journal>, bool)>, Error> {
        let (Some(fence), Some(dir)) = (fence, self.plan.journal_dir()) else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::io(
                format!("creating the journal directory {}", dir.display()),
                e,
            )
        })?;
        let journal = Journal::new(Journal::file_in(&dir, &group.table, &group.migration));
        journal.create()?;
        journal.sync().await?;
        let path = journal.path().to_string_lossy().into_owned();
        let state_table = &self.plan.state_table;
        let run = Store::new(
            self.client.clone(),
            state_table,
            &group.table,
            &group.migration,
        )
        .fenced(fence.clone());
        let named = run.name_journal(&path).await?
            || Ledger::new(self.client.clone(), state_table.clone())
                .name_journal(&group.table, &group.migration, &path, fence)
                .await?;
        Ok(Some((Arc::new(journal), named)))
    }

    /// Replays one chunk of records, `concurrency` keys at once, and records
    /// the failures (synced to disk before the position may move past them).
    async fn chunk(
        &self,
        writer: &Writer,
        chunk: &[&Record],
        seen: &mut HashSet<String>,
        at: &mut Position,
        report: &mut ReplayReport,
    ) -> Result<(), Error> {
        let mut keys = Vec::with_capacity(chunk.len());
        for record in chunk {
            let shown = deadletter::to_json(&record.key).to_string();
            if seen.insert(shown.clone()) {
                keys.push((record, shown));
            } else {
                at.repeated += 1;
            }
        }
        let outcomes: Vec<_> =
            stream::iter(keys)
                .map(|(record, shown)| async move {
                    (record, shown, writer.apply_key(&record.key).await)
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
        let mut first_error = None;
        for (record, shown, outcome) in outcomes {
            match outcome {
                Ok(None) => {
                    at.gone += 1;
                    if report.gone_sample.len() < SAMPLE {
                        report.gone_sample.push(shown);
                    }
                }
                Ok(Some(ItemOutcome::Unchanged)) => at.unchanged += 1,
                Ok(Some(ItemOutcome::Updated)) => at.updated += 1,
                Ok(Some(ItemOutcome::Deleted)) => at.deleted += 1,
                Ok(Some(ItemOutcome::Failed { key, reason })) => {
                    at.failed += 1;
                    self.dead_letter
                        .record(&record.table, &record.migration, &key, &reason)
                        .await?;
                    report.dead_letter = Some(self.dead_letter.path().to_owned());
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        self.dead_letter.sync().await?;
        // Write-ahead: the position never moves past writes whose journal
        // records are not on disk.
        if let Some(journal) = &writer.journal {
            journal.sync().await?;
        }
        at.next_line = chunk.last().map_or(at.next_line, |r| r.line + 1);
        Ok(())
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.position;
        let would = if self.dry_run {
            " (dry run: would be)"
        } else {
            ""
        };
        writeln!(
            f,
            "replay of {} on table {} from {}{would}",
            self.migration,
            self.table,
            self.file.display()
        )?;
        if self.resumed_from > 1 {
            writeln!(f, "  resumed at line:   {}", self.resumed_from)?;
        }
        writeln!(f, "  records:           {}", self.records)?;
        writeln!(
            f,
            "  recovered:         {} (updated {}, deleted {}, already right {})",
            p.recovered(),
            p.updated,
            p.deleted,
            p.unchanged
        )?;
        writeln!(
            f,
            "  no longer there:   {} (deleted since, or no longer matching the scan filter: not recreated)",
            p.gone
        )?;
        for key in &self.gone_sample {
            writeln!(f, "    {key}")?;
        }
        writeln!(f, "  failed again:      {}", p.failed)?;
        if p.repeated > 0 {
            writeln!(f, "  repeated keys:     {} (replayed once)", p.repeated)?;
        }
        if let Some(path) = &self.dead_letter {
            writeln!(f, "  dead letters:      {}", path.display())?;
        }
        match &self.journal {
            Some((path, true)) => writeln!(
                f,
                "  journal:           {} (dynbulk revert undoes these writes with the run's)",
                path.display()
            )?,
            Some((path, false)) => writeln!(
                f,
                "  journal:           {} (no run of this migration on this table is recorded: \
                 to undo these writes, dynbulk revert --journal {})",
                path.display(),
                path.display()
            )?,
            None => {}
        }
        match (&self.ledger, self.dry_run) {
            (_, true) => {}
            (Some(l), false) if l.already => writeln!(
                f,
                "  ledger:            already recorded this replay ({} failed)",
                l.after
            )?,
            (Some(l), false) => writeln!(
                f,
                "  ledger:            failed {} -> {}, status {}",
                l.before,
                l.after,
                l.status.as_str()
            )?,
            (None, false) if self.outcome != Outcome::Stopped => writeln!(
                f,
                "  ledger:            no entry for this migration on this table (nothing to update)"
            )?,
            (None, false) => {}
        }
        if self.outcome == Outcome::Stopped {
            writeln!(
                f,
                "  stopped at line {}; run the same command again to resume",
                p.next_line
            )?;
        }
        Ok(())
    }
}
