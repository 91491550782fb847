//! `dynbulk revert`: puts back what a run's writes changed, from its
//! journals, wherever the application has not written since.
//!
//! Each journal is read from its end to its start (a key journaled twice —
//! a conflict round, a resumed page — ends at its earliest previous values),
//! a group of records at a time; within a group, records of different keys
//! go out concurrently and those of one key in order. Each restore is
//! conditional: an update's attributes must still hold exactly what the run
//! wrote (and those it removed must still be absent), a deleted item must
//! still be absent. When the condition fails, a consistent read tells an
//! item already as before (an intent that never applied, or a record redone
//! after a crash: nothing to do) from one the application changed since the
//! run: that one is left alone and reported, with its key in a file next to
//! the journal.
//!
//! Resumable: after each group, the number of record groups done in each
//! journal is saved in the state table (partition `revert#<table>#<migration>`,
//! under the run's lock, fenced); a revert stopped at any instant and started
//! again redoes at most one group, whose restores then find their items
//! already as before. Capacity-limited through the same budgets and backoff
//! as runs.
//!
//! In the ledger, the migration is `reverting` while the revert goes on and
//! `pending` once every record was processed (the application's items
//! included: they are the application's now), so a later `dynbulk run`
//! applies it again; the run's checkpoints are deleted then, so that run
//! starts from the beginning.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use aws_sdk_dynamodb::Client;
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::plan::{resolve_limit, Limits};
use crate::capacity::backoff::{retry, Attempts, Backoff};
use crate::capacity::cost::{read_units, write_units, Consumed};
use crate::capacity::limiter::{Budget, Budgets};
use crate::dynamo::classify::{AwsError, Call, Class};
use crate::dynamo::table;
use crate::dynamo::value::{item_size, same_value, value_size, Attrs};
use crate::error::Error;
use crate::state::checkpoint::Store;
use crate::state::deadletter::{to_json, DeadLetter};
use crate::state::fence::{self, Fence};
use crate::state::journal::{self, Record};
use crate::state::ledger::{Entry, Ledger, Status};
use crate::state::lock;
use crate::state::store::now;

/// Records read and restored together between two checkpoints.
pub const GROUP_RECORDS: usize = 256;

/// What a revert is asked to do.
#[derive(Debug, Clone)]
pub struct RevertPlan {
    /// The reverted table.
    pub table: String,
    /// The migration whose run is reverted.
    pub migration: String,
    /// The journals to read; empty: those the ledger entry (and an
    /// unfinished run's state) names.
    pub journals: Vec<PathBuf>,
    /// State table name.
    pub state_table: String,
    /// Read and write capacity limits (reads: re-reads after a failed
    /// condition, and every read of a dry run).
    pub limits: Limits,
    /// Read and report, write nothing.
    pub dry_run: bool,
    /// Retry policy for throttles and transient faults.
    pub backoff: Backoff,
    /// Restores in flight at once.
    pub concurrency: usize,
    /// The lock's lease.
    pub lease: Duration,
    /// Refuse to write to a table whose point-in-time recovery is not known
    /// to be on (`--require-pitr`); a dry run never refuses.
    pub require_pitr: bool,
}

/// Receives a revert's counts so far after every group of records (about
/// 256), for a progress display. The engine never prints.
pub type RevertObserver = dyn Fn(&RevertCounts) + Send + Sync;

/// What happened to the records of a revert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevertCounts {
    /// Items put back (in a dry run: that would be).
    pub restored: u64,
    /// Items already as before the run (an intent that never applied, or a
    /// record done before a resume): nothing to do.
    pub already: u64,
    /// Items the application changed since the run: left alone, reported.
    pub changed: u64,
    /// Restores that kept failing (throttled, rejected): reported; the
    /// revert is then not complete.
    pub failed: u64,
    /// Intents the journal says were never applied: skipped.
    pub skipped: u64,
}

const COUNT_NAMES: [&str; 5] = ["restored", "already", "changed", "failed", "skipped"];

impl RevertCounts {
    fn fields(&mut self) -> [&mut u64; 5] {
        [
            &mut self.restored,
            &mut self.already,
            &mut self.changed,
            &mut self.failed,
            &mut self.skipped,
        ]
    }

    fn add(&mut self, other: &RevertCounts) {
        let mut other = *other;
        for (a, b) in self.fields().into_iter().zip(other.fields()) {
            *a += *b;
        }
    }
}

/// How a revert ended and what it did.
#[derive(Debug, Clone, Default)]
pub struct RevertReport {
    /// The reverted table.
    pub table: String,
    /// The migration.
    pub migration: String,
    /// Nothing was written.
    pub dry_run: bool,
    /// The journals read, in the order they were written.
    pub journals: Vec<PathBuf>,
    /// Counts over every attempt of this revert.
    pub counts: RevertCounts,
    /// Keys of items changed since the run (a few), or, in a dry run, of
    /// items that would be restored.
    pub samples: Vec<String>,
    /// The file listing every item not reverted (changed since the run, or failed).
    pub not_reverted: Option<PathBuf>,
    /// Journals that end in a torn record group (a crash cut them).
    pub torn: Vec<String>,
    /// Every record was processed.
    pub complete: bool,
    /// The ledger status the revert left.
    pub status: Option<Status>,
    /// Wall-clock time of this attempt.
    pub elapsed: Duration,
}

impl std::fmt::Display for RevertReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match (self.dry_run, self.complete) {
            (true, _) => "dry run, no writes sent",
            (false, true) => "reverted",
            (false, false) => "stopped before the end (run the same command again to resume)",
        };
        writeln!(f, "revert of {} on {}: {how}", self.migration, self.table)?;
        let c = &self.counts;
        let restored = if self.dry_run {
            "would be restored"
        } else {
            "restored"
        };
        writeln!(
            f,
            "  items:          {} {restored}, {} already as before the run, {} changed since the run (not reverted), {} failed, {} never applied",
            c.restored, c.already, c.changed, c.failed, c.skipped
        )?;
        if !self.samples.is_empty() {
            let what = if self.dry_run {
                "would restore:"
            } else {
                "changed since:"
            };
            for (i, key) in self.samples.iter().enumerate() {
                let label = if i == 0 { what } else { "" };
                writeln!(f, "  {label:<16}{key}")?;
            }
        }
        if let Some(p) = &self.not_reverted {
            writeln!(f, "  not reverted:   {}", p.display())?;
        }
        for t in &self.torn {
            writeln!(f, "  note:           {t}")?;
        }
        if let Some(s) = self.status {
            writeln!(f, "  ledger:         {}", s.as_str())?;
        }
        writeln!(f, "  elapsed:        {:.1}s", self.elapsed.as_secs_f64())
    }
}

/// What became of one record.
#[derive(Debug)]
enum Restore {
    Restored,
    Already,
    Changed(Attrs),
    Failed(Attrs, String),
}

/// Samples kept in the report.
const SAMPLES: usize = 10;

/// Reverts the run of `plan.migration` on `plan.table` from its journals.
/// `shutdown` stops it after the group of records in flight, with its
/// checkpoint saved.
///
/// # Errors
/// [`Error::Usage`] when there is no journal to read; a journal that cannot
/// be read; errors that stop runs (access denied, a lost lock, a state write
/// that fails). The report of what was done is then lost, but the
/// checkpoints are not: the same command resumes.
pub async fn revert(
    client: &Client,
    plan: &RevertPlan,
    shutdown: CancellationToken,
    observer: Option<&RevertObserver>,
) -> Result<RevertReport, Error> {
    let started = Instant::now();
    let info = table::describe(client, &plan.table).await?;
    if plan.require_pitr && !plan.dry_run {
        table::require_pitr(&plan.table, &table::pitr_status(client, &plan.table).await)?;
    }
    let (read_limit, _) = resolve_limit(
        plan.limits.read,
        &info,
        info.read_capacity,
        "RCU",
        "--rcu-limit",
    )?;
    let (write_limit, _) = resolve_limit(
        plan.limits.write,
        &info,
        info.write_capacity,
        "WCU",
        "--wcu-limit",
    )?;
    let ledger = Ledger::new(client.clone(), plan.state_table.clone());
    let entry = ledger.get(&plan.table, &plan.migration).await?;
    let store = Store::new(
        client.clone(),
        &plan.state_table,
        &plan.table,
        &plan.migration,
    );
    let journals = journals(plan, entry.as_ref(), &store).await?;
    let lock = if plan.dry_run {
        None
    } else {
        ledger.ensure().await?;
        Some(
            lock::acquire(
                client,
                &plan.state_table,
                &plan.table,
                &plan.migration,
                plan.lease,
            )
            .await?,
        )
    };
    let fence = lock.as_ref().map(|l| l.fence.clone());
    let reverter = Reverter {
        client: client.clone(),
        table: plan.table.clone(),
        partition_key: info.keys.first().cloned().unwrap_or_default(),
        budgets: Budgets {
            read: Budget::new(read_limit),
            write: Budget::new(write_limit),
        },
        backoff: plan.backoff,
        dry_run: plan.dry_run,
        fence: fence.clone(),
    };
    let result = Attempt {
        plan,
        reverter: &reverter,
        ledger: &ledger,
        entry: entry.as_ref(),
        store: store.clone(),
        journals: &journals,
        fence: fence.as_ref(),
        shutdown,
        observer,
    }
    .run()
    .await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let mut report = result?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The journals to revert: the plan's, else those the ledger entry names,
/// then those an unfinished run's state names (a run killed before it
/// recorded its end), each once.
///
/// # Errors
/// [`Error::Usage`] when there are none.
async fn journals(
    plan: &RevertPlan,
    entry: Option<&Entry>,
    store: &Store,
) -> Result<Vec<PathBuf>, Error> {
    if !plan.journals.is_empty() {
        return Ok(plan.journals.clone());
    }
    let mut files: Vec<String> = entry.map(|e| e.journals.clone()).unwrap_or_default();
    if let Some(state) = store.load().await? {
        for j in state.journals {
            if !files.contains(&j) {
                files.push(j);
            }
        }
    }
    if files.is_empty() {
        let why = match entry {
            None => "the ledger has no run of it on this table".to_owned(),
            Some(e) if e.status == Status::Pending => {
                "it is pending: never run, or already reverted".to_owned()
            }
            Some(_) => "its run kept no journal (it was run with --no-journal, or by a dynbulk without journals)".to_owned(),
        };
        return Err(Error::Usage(format!(
            "no journal to revert migration {} on table {} from: {why}. \
             A run made with --no-journal cannot be reverted; pass --journal PATH to name journal files yourself",
            plan.migration, plan.table
        )));
    }
    Ok(files.into_iter().map(PathBuf::from).collect())
}

/// Restores items: conditional writes through the capacity budgets.
struct Reverter {
    client: Client,
    table: String,
    partition_key: String,
    budgets: Budgets,
    backoff: Backoff,
    dry_run: bool,
    fence: Option<Fence>,
}

impl Reverter {
    /// Restores one record's previous values (in a dry run: reads and tells).
    async fn restore(&self, record: &Record) -> Result<Restore, Error> {
        let key = record.key().cloned().unwrap_or_default();
        if self.dry_run {
            let now = self.read(&key, record).await?;
            return Ok(match judge(record, now.as_ref()) {
                Judgement::AsWritten => Restore::Restored,
                Judgement::AsBefore => Restore::Already,
                Judgement::Changed => Restore::Changed(key),
            });
        }
        let sent = match record {
            Record::Update { before, after, .. } => self.put_back(&key, before, after).await,
            Record::Delete { item, .. } => self.recreate(item).await,
            Record::NotApplied(_) => return Ok(Restore::Already),
        };
        let e = match sent {
            Ok(()) => return Ok(Restore::Restored),
            Err(e) => e,
        };
        if let Some(fence) = self.fence.as_ref().filter(|f| !f.held()) {
            return Err(fence.lost_error(&format!(
                "restoring item {} of table {}",
                to_json(&key),
                self.table
            )));
        }
        match e.class_for(Call::ItemWrite) {
            Class::ConditionFailed => {
                let now = self.read(&key, record).await?;
                Ok(match judge(record, now.as_ref()) {
                    Judgement::AsBefore => Restore::Already,
                    // Written again between the write and the read: the
                    // application's now, as any other change.
                    Judgement::AsWritten | Judgement::Changed => Restore::Changed(key),
                })
            }
            Class::Item | Class::Throttle | Class::Transient => {
                Ok(Restore::Failed(key, e.to_string()))
            }
            _ => Err(Error::aws(
                format!("restoring item {} of table {}", to_json(&key), self.table),
                e,
            )),
        }
    }

    /// UpdateItem: sets each attribute back (removes the ones the run added),
    /// on condition that the item exists and holds what the run wrote.
    async fn put_back(
        &self,
        key: &Attrs,
        before: &std::collections::BTreeMap<String, Option<AttributeValue>>,
        after: &std::collections::BTreeMap<String, Option<AttributeValue>>,
    ) -> Result<(), AwsError> {
        let e = restore_expression(&self.partition_key, before, after);
        let estimate = write_units(
            before.values().flatten().map(value_size).sum::<usize>()
                + after.values().flatten().map(value_size).sum::<usize>()
                + 1024,
        );
        let send = || {
            let req = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key.clone()))
                .update_expression(&e.update)
                .condition_expression(&e.condition)
                .set_expression_attribute_names(Some(e.names.clone()))
                .set_expression_attribute_values((!e.values.is_empty()).then(|| e.values.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            async move { req.send().await.map_err(AwsError::from_sdk) }
        };
        self.write("UpdateItem", estimate, send).await
    }

    /// PutItem of a deleted item, on condition that it is still absent.
    async fn recreate(&self, item: &Attrs) -> Result<(), AwsError> {
        let send = || {
            let req = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", &self.partition_key)
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            async move { req.send().await.map_err(AwsError::from_sdk) }
        };
        self.write("PutItem", write_units(item_size(item)), send)
            .await
    }

    async fn write<T, Fut>(
        &self,
        op: &'static str,
        estimate: f64,
        send: impl Fn() -> Fut,
    ) -> Result<(), AwsError>
    where
        T: Consumed,
        Fut: std::future::Future<Output = Result<T, AwsError>>,
    {
        retry(&self.backoff, &mut Attempts::default(), || {
            let call = self
                .budgets
                .write
                .call(op, estimate, Consumed::consumed_units, &send);
            async {
                match &self.fence {
                    Some(fence) => fence.attempt(call).await,
                    None => call.await,
                }
            }
        })
        .await
        .map(|_| ())
    }

    /// The item as it is now (consistent read).
    async fn read(&self, key: &Attrs, record: &Record) -> Result<Option<Attrs>, Error> {
        let size = match record {
            Record::Delete { item, .. } => item_size(item),
            _ => 1024,
        };
        retry(&self.backoff, &mut Attempts::default(), || {
            let req = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key.clone()))
                .consistent_read(true)
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            self.budgets.read.call(
                "GetItem",
                read_units(size, true),
                Consumed::consumed_units,
                move || async move { req.send().await.map_err(AwsError::from_sdk) },
            )
        })
        .await
        .map(|out| out.item)
        .map_err(|e| {
            Error::aws(
                format!("reading item {} of table {}", to_json(key), self.table),
                e,
            )
        })
    }
}

/// A restore's UpdateItem expressions.
#[derive(Debug, PartialEq)]
struct RestoreExpr {
    update: String,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

/// `SET` each attribute that had a value back to it, `REMOVE` each the run
/// added; on condition that the item exists (its partition key) and every
/// attribute holds what the run wrote, or is absent where the run removed it.
fn restore_expression(
    partition_key: &str,
    before: &std::collections::BTreeMap<String, Option<AttributeValue>>,
    after: &std::collections::BTreeMap<String, Option<AttributeValue>>,
) -> RestoreExpr {
    let mut names = HashMap::from([("#k".to_owned(), partition_key.to_owned())]);
    let mut values = HashMap::new();
    let mut sets = Vec::new();
    let mut removes = Vec::new();
    let mut conditions = vec!["attribute_exists(#k)".to_owned()];
    for (i, (name, was)) in before.iter().enumerate() {
        names.insert(format!("#a{i}"), name.clone());
        match was {
            Some(v) => {
                values.insert(format!(":b{i}"), v.clone());
                sets.push(format!("#a{i} = :b{i}"));
            }
            None => removes.push(format!("#a{i}")),
        }
        match after.get(name) {
            Some(Some(v)) => {
                values.insert(format!(":w{i}"), v.clone());
                conditions.push(format!("#a{i} = :w{i}"));
            }
            Some(None) => conditions.push(format!("attribute_not_exists(#a{i})")),
            None => {}
        }
    }
    let mut update = String::new();
    if !sets.is_empty() {
        update.push_str("SET ");
        update.push_str(&sets.join(", "));
    }
    if !removes.is_empty() {
        if !update.is_empty() {
            update.push(' ');
        }
        update.push_str("REMOVE ");
        update.push_str(&removes.join(", "));
    }
    RestoreExpr {
        update,
        condition: conditions.join(" AND "),
        names,
        values,
    }
}

/// Where an item stands against a record.
#[derive(Debug, PartialEq)]
enum Judgement {
    /// It holds what the run wrote: a restore applies.
    AsWritten,
    /// It holds what it held before the run: nothing to do.
    AsBefore,
    /// Something else: the application changed it since the run.
    Changed,
}

/// Pure: `now` (the item, `None` if absent) against `record`.
fn judge(record: &Record, now: Option<&Attrs>) -> Judgement {
    let holds =
        |item: &Attrs, values: &std::collections::BTreeMap<String, Option<AttributeValue>>| {
            values.iter().all(|(name, v)| match (item.get(name), v) {
                (Some(a), Some(b)) => same_value(a, b),
                (None, None) => true,
                _ => false,
            })
        };
    match (record, now) {
        (Record::Update { after, before, .. }, Some(item)) => {
            if holds(item, after) {
                Judgement::AsWritten
            } else if holds(item, before) {
                Judgement::AsBefore
            } else {
                Judgement::Changed
            }
        }
        (Record::Delete { .. }, None) => Judgement::AsWritten,
        (Record::Delete { item: old, .. }, Some(item)) => {
            let same = item.len() == old.len()
                && old
                    .iter()
                    .all(|(k, v)| item.get(k).is_some_and(|w| same_value(v, w)));
            if same {
                Judgement::AsBefore
            } else {
                Judgement::Changed
            }
        }
        (Record::Update { .. }, None) | (Record::NotApplied(_), _) => Judgement::Changed,
    }
}

/// One attempt of a revert, once the lock is held (in a dry run, without).
struct Attempt<'a> {
    plan: &'a RevertPlan,
    reverter: &'a Reverter,
    ledger: &'a Ledger,
    entry: Option<&'a Entry>,
    store: Store,
    journals: &'a [PathBuf],
    fence: Option<&'a Fence>,
    shutdown: CancellationToken,
    observer: Option<&'a RevertObserver>,
}

/// Where a revert stands: record groups done per journal (from its end) and
/// the counts so far.
#[derive(Debug, Clone, Default, PartialEq)]
struct Progress {
    done: Vec<u64>,
    counts: RevertCounts,
}

impl Attempt<'_> {
    fn pk(&self) -> String {
        format!("revert#{}#{}", self.plan.table, self.plan.migration)
    }

    fn names(&self) -> Vec<String> {
        self.journals
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    /// Runs the attempt: ledger, each journal from its end, the ledger again.
    async fn run(self) -> Result<RevertReport, Error> {
        let mut progress = self.load().await?;
        if let Some(fence) = self.fence {
            let names = self.names();
            self.ledger
                .reverting(
                    &self.plan.table,
                    &self.plan.migration,
                    self.entry,
                    &names,
                    fence,
                )
                .await?;
        }
        let not_reverted = DeadLetter::new(not_reverted_file(
            self.journals,
            &self.plan.table,
            &self.plan.migration,
        ));
        let mut report = RevertReport {
            table: self.plan.table.clone(),
            migration: self.plan.migration.clone(),
            dry_run: self.plan.dry_run,
            journals: self.journals.to_vec(),
            ..RevertReport::default()
        };
        let mut stopped = false;
        for j in (0..self.journals.len()).rev() {
            if !self
                .journal(j, &mut progress, &not_reverted, &mut report)
                .await?
            {
                stopped = true;
                break;
            }
        }
        report.counts = progress.counts;
        report.complete = !stopped && progress.counts.failed == 0;
        if not_reverted.has_records().await {
            not_reverted.sync().await?;
            report.not_reverted = Some(not_reverted.path().to_owned());
        }
        if let (Some(fence), true) = (self.fence, report.complete) {
            self.finish(fence, &progress).await?;
            report.status = Some(Status::Pending);
        } else if let Some(fence) = self.fence {
            if !stopped {
                // Every record was tried, some failed: the next attempt
                // goes through them all again (the restored ones are then
                // already as before).
                self.forget(fence).await?;
            }
            report.status = Some(Status::Reverting);
        }
        Ok(report)
    }

    /// Reverts journal `j` from where its checkpoint stands; `false` when
    /// stopped by the shutdown before its start.
    async fn journal(
        &self,
        j: usize,
        progress: &mut Progress,
        not_reverted: &DeadLetter,
        report: &mut RevertReport,
    ) -> Result<bool, Error> {
        let path = &self.journals[j];
        let index = journal::index(path).map_err(|e| match e {
            Error::Io { .. } if !path.exists() => Error::Usage(format!(
                "journal {} does not exist on this machine: with --join on several machines each keeps its own \
                 journal; collect them and pass each with --journal PATH",
                path.display()
            )),
            e => e,
        })?;
        if let Some(t) = &index.torn {
            report.torn.push(format!("{}: {t}", path.display()));
        }
        let members = &index.members;
        let mut done = progress.done[j] as usize;
        while done < members.len() {
            if self.shutdown.is_cancelled() {
                return Ok(false);
            }
            let mut records = Vec::new();
            while done < members.len() && records.len() < GROUP_RECORDS {
                let (offset, first) = members[members.len() - 1 - done];
                let mut member = journal::read_member(path, offset, first)?;
                member.reverse();
                records.extend(member);
                done += 1;
            }
            let counts = self
                .group(records, &index.not_applied, not_reverted, report)
                .await?;
            progress.counts.add(&counts);
            progress.done[j] = done as u64;
            self.save(progress).await?;
            if let Some(observe) = self.observer {
                observe(&progress.counts);
            }
        }
        Ok(true)
    }

    /// Restores one group of records (in reverse journal order): keys
    /// concurrently, each key's records in order.
    async fn group(
        &self,
        records: Vec<(u64, Record)>,
        not_applied: &std::collections::HashSet<u64>,
        not_reverted: &DeadLetter,
        report: &mut RevertReport,
    ) -> Result<RevertCounts, Error> {
        let mut counts = RevertCounts::default();
        let mut by_key: Vec<Vec<Record>> = Vec::new();
        let mut slot: HashMap<String, usize> = HashMap::new();
        for (id, record) in records {
            if not_applied.contains(&id) {
                counts.skipped += 1;
                continue;
            }
            let k = record
                .key()
                .map(|k| to_json(k).to_string())
                .unwrap_or_default();
            let i = *slot.entry(k).or_insert_with(|| {
                by_key.push(Vec::new());
                by_key.len() - 1
            });
            by_key[i].push(record);
        }
        let reverter = self.reverter;
        let mut results = stream::iter(by_key)
            .map(|records| async move {
                let mut out = Vec::with_capacity(records.len());
                for r in &records {
                    out.push(reverter.restore(r).await?);
                }
                Ok::<_, Error>(out)
            })
            .buffer_unordered(self.plan.concurrency.max(1));
        let mut fatal = None;
        while let Some(r) = results.next().await {
            match r {
                Ok(outcomes) => {
                    for o in outcomes {
                        self.count(o, &mut counts, not_reverted, report).await?;
                    }
                }
                Err(e) => {
                    fatal.get_or_insert(e);
                }
            }
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(counts),
        }
    }

    async fn count(
        &self,
        outcome: Restore,
        counts: &mut RevertCounts,
        not_reverted: &DeadLetter,
        report: &mut RevertReport,
    ) -> Result<(), Error> {
        let (table, id) = (&self.plan.table, &self.plan.migration);
        match outcome {
            Restore::Restored => counts.restored += 1,
            Restore::Already => counts.already += 1,
            Restore::Changed(key) => {
                counts.changed += 1;
                if report.samples.len() < SAMPLES {
                    report.samples.push(to_json(&key).to_string());
                }
                if !self.plan.dry_run {
                    not_reverted
                        .record(table, id, &key, "changed since the run, not reverted")
                        .await?;
                }
            }
            Restore::Failed(key, why) => {
                counts.failed += 1;
                tracing::warn!(table = %table, migration = %id, key = %to_json(&key), error = %why, "item not restored");
                if !self.plan.dry_run {
                    not_reverted
                        .record(table, id, &key, &format!("not restored: {why}"))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The saved progress of this revert, when it is of these journals;
    /// else a start from the end of each.
    async fn load(&self) -> Result<Progress, Error> {
        let fresh = Progress {
            done: vec![0; self.journals.len()],
            counts: RevertCounts::default(),
        };
        if self.fence.is_none() {
            return Ok(fresh);
        }
        let items = crate::state::store::query_state(
            &self.reverter.client,
            &self.plan.state_table,
            &self.pk(),
        )
        .await
        .map_err(|e| {
            Error::aws(
                format!(
                    "reading the revert's checkpoint in state table {}",
                    self.plan.state_table
                ),
                e,
            )
        })?;
        let Some(item) = items.first() else {
            return Ok(fresh);
        };
        Ok(decode_progress(item, &self.names()).unwrap_or(fresh))
    }

    /// Saves where the revert stands.
    async fn save(&self, progress: &Progress) -> Result<(), Error> {
        let Some(fence) = self.fence else {
            return Ok(());
        };
        let mut item = encode_progress(progress, &self.names());
        item.insert("pk".into(), AttributeValue::S(self.pk()));
        item.insert("sk".into(), AttributeValue::S("revert".into()));
        item.insert("saved_at".into(), AttributeValue::S(now()));
        fence::put(
            &self.reverter.client,
            &self.plan.state_table,
            item,
            fence,
            &format!(
                "saving the revert's checkpoint in state table {}",
                self.plan.state_table
            ),
        )
        .await
    }

    /// Every record processed: the ledger says pending, the run's
    /// checkpoints (a next run must start from the beginning) and the
    /// revert's own are deleted.
    async fn finish(&self, fence: &Fence, progress: &Progress) -> Result<(), Error> {
        self.store.clone().fenced(fence.clone()).delete().await?;
        self.ledger
            .reverted(
                &self.plan.table,
                &self.plan.migration,
                self.entry,
                progress.counts.restored,
                fence,
            )
            .await?;
        self.forget(fence).await
    }

    /// Deletes the revert's checkpoint.
    async fn forget(&self, fence: &Fence) -> Result<(), Error> {
        let key = HashMap::from([
            ("pk".to_owned(), AttributeValue::S(self.pk())),
            ("sk".to_owned(), AttributeValue::S("revert".into())),
        ]);
        fence::delete(
            &self.reverter.client,
            &self.plan.state_table,
            key,
            fence,
            "deleting the revert's checkpoint",
        )
        .await
    }
}

/// The file of items not reverted: next to the last journal.
fn not_reverted_file(journals: &[PathBuf], table: &str, migration: &str) -> PathBuf {
    let dir = journals
        .last()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join(format!(
        "dynbulk-not-reverted-{table}-{migration}-{}.jsonl",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ))
}

fn encode_progress(progress: &Progress, journals: &[String]) -> Attrs {
    let mut item = HashMap::from([
        (
            "journals".to_owned(),
            AttributeValue::L(
                journals
                    .iter()
                    .map(|j| AttributeValue::S(j.clone()))
                    .collect(),
            ),
        ),
        (
            "done".to_owned(),
            AttributeValue::L(
                progress
                    .done
                    .iter()
                    .map(|d| AttributeValue::N(d.to_string()))
                    .collect(),
            ),
        ),
    ]);
    let mut counts = progress.counts;
    for (name, v) in COUNT_NAMES.iter().zip(counts.fields()) {
        item.insert((*name).to_owned(), AttributeValue::N(v.to_string()));
    }
    item
}

/// The progress saved in `item`, if it is a revert of exactly `journals`.
fn decode_progress(item: &Attrs, journals: &[String]) -> Option<Progress> {
    let list = |k: &str| match item.get(k) {
        Some(AttributeValue::L(l)) => Some(l),
        _ => None,
    };
    let saved: Vec<String> = list("journals")?
        .iter()
        .map(|v| v.as_s().ok().cloned())
        .collect::<Option<_>>()?;
    if saved != journals {
        return None;
    }
    let done: Vec<u64> = list("done")?
        .iter()
        .map(|v| v.as_n().ok().and_then(|n| n.parse().ok()))
        .collect::<Option<_>>()?;
    if done.len() != journals.len() {
        return None;
    }
    let mut counts = RevertCounts::default();
    for (name, v) in COUNT_NAMES.iter().zip(counts.fields()) {
        *v = item.get(*name)?.as_n().ok()?.parse().ok()?;
    }
    Some(Progress { done, counts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.into())
    }

    fn update() -> Record {
        Record::Update {
            key: HashMap::from([("pk".into(), AttributeValue::S("a".into()))]),
            before: BTreeMap::from([("x".into(), Some(n("1"))), ("y".into(), None)]),
            after: BTreeMap::from([("x".into(), Some(n("2"))), ("y".into(), Some(n("3")))]),
        }
    }

    #[test]
    fn a_restore_sets_back_removes_what_the_run_added_and_requires_what_it_wrote() {
        let Record::Update { before, after, .. } = update() else {
            unreachable!()
        };
        let e = restore_expression("pk", &before, &after);
        assert_eq!(e.update, "SET #a0 = :b0 REMOVE #a1");
        assert_eq!(
            e.condition,
            "attribute_exists(#k) AND #a0 = :w0 AND #a1 = :w1"
        );
        assert_eq!(e.values[":b0"], n("1"));
        assert_eq!(e.values[":w1"], n("3"));
        // An attribute the run removed must still be absent.
        let after = BTreeMap::from([("x".into(), None)]);
        let before = BTreeMap::from([("x".into(), Some(n("1")))]);
        let e = restore_expression("pk", &before, &after);
        assert_eq!(e.update, "SET #a0 = :b0");
        assert_eq!(
            e.condition,
            "attribute_exists(#k) AND attribute_not_exists(#a0)"
        );
    }

    #[test]
    fn an_item_is_judged_as_written_as_before_or_changed() {
        let r = update();
        let item = |x: &str, y: Option<&str>| {
            let mut m: Attrs = HashMap::from([
                ("pk".into(), AttributeValue::S("a".into())),
                ("x".into(), n(x)),
            ]);
            if let Some(y) = y {
                m.insert("y".into(), n(y));
            }
            m
        };
        assert_eq!(judge(&r, Some(&item("2", Some("3")))), Judgement::AsWritten);
        assert_eq!(judge(&r, Some(&item("1", None))), Judgement::AsBefore);
        assert_eq!(judge(&r, Some(&item("2", Some("4")))), Judgement::Changed);
        assert_eq!(judge(&r, None), Judgement::Changed);
        let old = item("1", None);
        let d = Record::Delete {
            key: HashMap::new(),
            item: old.clone(),
        };
        assert_eq!(judge(&d, None), Judgement::AsWritten);
        assert_eq!(judge(&d, Some(&old)), Judgement::AsBefore);
        assert_eq!(judge(&d, Some(&item("1", Some("9")))), Judgement::Changed);
    }

    #[test]
    fn progress_round_trips_and_belongs_to_its_journals() {
        let p = Progress {
            done: vec![3, 0],
            counts: RevertCounts {
                restored: 5,
                already: 1,
                changed: 2,
                failed: 0,
                skipped: 4,
            },
        };
        let names = vec!["/a".to_owned(), "/b".to_owned()];
        let item = encode_progress(&p, &names);
        assert_eq!(decode_progress(&item, &names), Some(p));
        assert_eq!(decode_progress(&item, &names[..1]), None);
    }
}
