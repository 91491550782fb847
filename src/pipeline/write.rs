//! Applies a migration to one item: transform, plan the conditional write, send
//! it, and on a conflict re-read and re-apply (bounded). The only module that
//! writes data items (the schema step changes the table itself, in
//! `dynamo::schema`). In a dry run this module returns before any write is
//! built into a request, and a migration's transform never gets a client to
//! write with; the run skips the lock and every state write, and the schema
//! step only says what it would do.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use aws_sdk_dynamodb::Client;

use crate::capacity::backoff::{retry, Attempts, Backoff};
use crate::capacity::cost::{read_units, write_units, Consumed};
use crate::capacity::limiter::Budgets;
use crate::dynamo::classify::{AwsError, Call, Class};
use crate::dynamo::value::{item_size, value_size};
use crate::error::Error;
use crate::migration::{Attrs, Change, Item, Migration, RunFacts, TransformError};
use crate::pipeline::diff::{self, Expr, Planned};
use crate::report::{Sample, SampleChange, Stats};
use crate::state::deadletter::value_json;
use crate::state::journal;

/// The failure of a transform that returned an error.
pub(crate) fn transform_failed(e: TransformError) -> String {
    format!("transform failed: {e}")
}

/// How often a conflicting item is re-read and re-applied before it is dead-lettered.
pub const MAX_CONFLICT_RETRIES: u32 = 8;

/// What happened to one item.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Left as it was (or already as the transform wants it).
    Unchanged,
    /// Updated (or would be, in a dry run).
    Updated,
    /// Deleted (or would be).
    Deleted,
    /// Not written; the item's key and the reason go to the dead-letter file.
    Failed {
        /// The item's key attributes.
        key: Attrs,
        /// Why it was not written.
        reason: String,
    },
}

/// Applies one migration to items of one table.
pub struct Writer {
    /// The shared client.
    pub client: Client,
    /// Target table.
    pub table: String,
    /// Key attribute names.
    pub keys: Vec<String>,
    /// The migration.
    pub migration: Arc<dyn Migration>,
    /// When true, nothing is written.
    pub dry_run: bool,
    /// Retry policy for throttling and transient faults (with the run's
    /// `--retry-budget`: a write still throttled when it is spent is that
    /// item's failure).
    pub backoff: Backoff,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Projection for re-reads, matching the scan's.
    pub projection: Option<(String, HashMap<String, String>)>,
    /// Capacity budgets: writes charge the write budget, re-reads the read budget.
    pub budgets: Arc<Budgets>,
    /// What every write is conditioned on besides the transform's reads: the
    /// version attribute and the scan filter.
    pub guard: diff::Guard,
    /// Key attributes of the table's secondary indexes (for the `validate` checks).
    pub index_keys: Vec<crate::dynamo::table::IndexKey>,
    /// The run's lock: no write attempt is sent once it is not provably held,
    /// and attempts in flight are abandoned. `None` in dry runs.
    pub fence: Option<crate::state::fence::Fence>,
    /// Where each write's intent is recorded before it is sent (for
    /// `revert`); `None` in dry runs and with `--no-journal`.
    pub journal: Option<Arc<crate::state::journal::Journal>>,
}

/// One round of an item's write: what [`Writer::plan_round`] decided.
#[derive(Debug)]
pub enum Round {
    /// Nothing to send: the item's outcome.
    Done(ItemOutcome),
    /// A planned write to send.
    Send(Box<Outgoing>),
}

/// What sending one round came to.
enum Sent {
    /// The item's outcome.
    Done(ItemOutcome),
    /// A conflict: the next round for the item (`key`), journaled as `next_id`.
    Again {
        key: Attrs,
        next: Round,
        next_id: Option<u64>,
    },
}

/// A planned write of one item.
#[derive(Debug)]
pub struct Outgoing {
    key: Attrs,
    attrs: Attrs,
    planned: Planned,
    /// Its journal record, when the run keeps a journal.
    record: Option<journal::Record>,
}

impl Writer {
    /// Processes one scanned item to its end state.
    ///
    /// # Errors
    /// Only errors that must stop the run (access denied, missing table, a
    /// re-read that keeps failing). Per-item problems, a write still throttled
    /// when its retry budget is spent included, come back as
    /// [`ItemOutcome::Failed`].
    pub async fn apply(&self, scanned: Attrs) -> Result<ItemOutcome, Error> {
        let (item, change) = self.transform(scanned).await;
        self.finish(item, change).await
    }

    /// Re-reads the item with `key` (consistent, with the scan's projection
    /// and filter) and processes it to its end state: `dynbulk replay`'s
    /// path for a dead-lettered key. `None` when the item no longer exists
    /// or no longer matches the scan filter (nothing is recreated).
    ///
    /// # Errors
    /// As [`Writer::apply`], and a re-read that keeps failing.
    pub async fn apply_key(&self, key: &Attrs) -> Result<Option<ItemOutcome>, Error> {
        let Some(item) = Box::pin(self.reread(key, 1024, "to replay it")).await? else {
            return Ok(None);
        };
        Box::pin(self.apply(item)).await.map(Some)
    }

    /// What a page transform needs to know about this run.
    pub fn facts(&self) -> RunFacts {
        RunFacts {
            table: self.table.clone(),
            dry_run: self.dry_run,
            keys: self.keys.clone(),
        }
    }

    /// One item's transform: on the worker task, or on the migration's own
    /// threads when it has a [`Migration::page_transform`].
    pub(crate) async fn transform(&self, attrs: Attrs) -> (Item, Result<Change, String>) {
        if let Some(pages) = self.migration.page_transform() {
            let mut out = pages.transform_page(&self.facts(), vec![attrs]).await;
            return match out.pop() {
                Some((item, change)) => (item, change.map_err(transform_failed)),
                None => (
                    Item::new(Attrs::new()),
                    Err("transform failed: no result".into()),
                ),
            };
        }
        let item = Item::new(attrs);
        let change = match catch_unwind(AssertUnwindSafe(|| self.migration.transform(&item))) {
            Ok(change) => change.map_err(transform_failed),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(format!("transform panicked: {msg}"))
            }
        };
        (item, change)
    }

    /// Processes an item already transformed (by a page transform) to its
    /// end state; conflicts re-read and transform it again.
    ///
    /// # Errors
    /// As [`Writer::apply`].
    pub async fn apply_transformed(
        &self,
        item: Item,
        change: Result<Change, TransformError>,
    ) -> Result<ItemOutcome, Error> {
        self.finish(item, change.map_err(transform_failed)).await
    }

    /// Plans, validates and sends the change, and on a conflict re-reads,
    /// transforms again and goes round again (see [`Writer::send_rounds`]).
    async fn finish(
        &self,
        item: Item,
        change: Result<Change, String>,
    ) -> Result<ItemOutcome, Error> {
        let round = self.plan_round(item, change);
        let ids = self.journal_rounds(std::slice::from_ref(&round))?;
        self.send_rounds(round, ids[0]).await
    }

    /// One round's decision for a transformed item, before anything is sent:
    /// its outcome when there is nothing to send (kept, unchanged, failed,
    /// or a dry run's), else the planned write. No I/O.
    pub fn plan_round(&self, item: Item, change: Result<Change, String>) -> Round {
        // The key is extracted only where it is used (a write, a sample, a
        // failure): this runs for every item.
        let failed = |attrs: &Attrs, reason: String| {
            Round::Done(ItemOutcome::Failed {
                key: diff::key_of(&self.keys, attrs),
                reason,
            })
        };
        let change = match change {
            Ok(change) => change,
            Err(failure) => return failed(item.scanned(), failure),
        };
        let (attrs_now, read) = item.into_parts();
        if let Some(outside) = self.outside_projection(&read, &change) {
            // An attribute the scan did not fetch looks absent: a removal
            // would be skipped and a guard would fail forever.
            return failed(&attrs_now, format!(
                "the transform reads or writes attribute {outside:?}, which the migration's scan projection does not fetch; \
                 add it to scan_options().projection"
            ));
        }
        let planned = match diff::plan(&self.keys, &attrs_now, &read, &change, &self.guard) {
            Ok(p) => p,
            Err(e) => return failed(&attrs_now, e.to_string()),
        };
        if planned == Planned::Unchanged {
            return Round::Done(ItemOutcome::Unchanged);
        }
        // Before the dry-run return: a dry run reports these items too.
        if let Err(e) =
            crate::pipeline::validate::check(&self.index_keys, &attrs_now, &change, &planned)
        {
            return failed(&attrs_now, e.to_string());
        }
        if self.dry_run {
            return Round::Done(self.dry_run_outcome(&attrs_now, &change, planned));
        }
        let key = diff::key_of(&self.keys, &attrs_now);
        let record = self.journal.as_ref().map(|_| {
            intent(
                &key,
                &attrs_now,
                &change,
                &planned,
                self.guard.version.as_deref(),
            )
        });
        Round::Send(Box::new(Outgoing {
            key,
            attrs: attrs_now,
            planned,
            record,
        }))
    }

    /// Journals the intents of `rounds` (write-ahead: one compressed member
    /// handed to the operating system before any of them is sent); each
    /// round's intent number, `None` where it sends nothing or the run keeps
    /// no journal.
    ///
    /// # Errors
    /// When the journal cannot be written: the writes must then not be sent.
    pub fn journal_rounds(&self, rounds: &[Round]) -> Result<Vec<Option<u64>>, Error> {
        let records: Vec<&journal::Record> = rounds
            .iter()
            .filter_map(|r| match r {
                Round::Send(s) => s.record.as_ref(),
                Round::Done(_) => None,
            })
            .collect();
        let Some(journal) = self.journal.as_ref().filter(|_| !records.is_empty()) else {
            return Ok(vec![None; rounds.len()]);
        };
        let mut next = journal.append(&records)?;
        Ok(rounds
            .iter()
            .map(|r| match r {
                Round::Send(s) if s.record.is_some() => {
                    next += 1;
                    Some(next - 1)
                }
                _ => None,
            })
            .collect())
    }

    /// Sends a planned round (journaled as intent `id`) and, on a conflict,
    /// re-reads, transforms again and goes round again, at most
    /// [`MAX_CONFLICT_RETRIES`] times; each round's intent is journaled
    /// before it is sent, and one that definitely did not apply is noted so.
    ///
    /// # Errors
    /// As [`Writer::apply`].
    pub async fn send_rounds(
        &self,
        mut round: Round,
        mut id: Option<u64>,
    ) -> Result<ItemOutcome, Error> {
        let mut last_key = Attrs::new();
        for _ in 0..=MAX_CONFLICT_RETRIES {
            let outgoing = match round {
                Round::Done(outcome) => return Ok(outcome),
                Round::Send(send) => *send,
            };
            match self.send_round(outgoing, id).await? {
                Sent::Done(outcome) => return Ok(outcome),
                Sent::Again { key, next, next_id } => {
                    (last_key, round, id) = (key, next, next_id);
                }
            }
        }
        Ok(ItemOutcome::Failed {
            key: last_key,
            reason: format!(
                "the item changed under every one of {} attempts; it is being written concurrently",
                MAX_CONFLICT_RETRIES + 1
            ),
        })
    }

    /// Sends one round: its outcome, or on a conflict the next round (the
    /// item re-read, transformed and planned again, its intent journaled).
    ///
    /// # Errors
    /// As [`Writer::apply`].
    async fn send_round(&self, outgoing: Outgoing, id: Option<u64>) -> Result<Sent, Error> {
        let Outgoing {
            key,
            attrs: attrs_now,
            planned,
            ..
        } = outgoing;
        let not_applied = || {
            if let (Some(j), Some(id)) = (&self.journal, id) {
                j.not_applied(id);
            }
        };
        // Boxed, here and below: the SDK's request futures are large, and
        // inline they would make every item's future (moved into the
        // worker's FuturesUnordered for every item, written or not) as large.
        let sent = Box::pin(self.send(&key, &attrs_now, &planned)).await;
        let e = match sent {
            Ok(()) => {
                return Ok(Sent::Done(match planned {
                    Planned::Delete(_) => ItemOutcome::Deleted,
                    _ => ItemOutcome::Updated,
                }))
            }
            Err(e) => e,
        };
        // The lock is gone: the item is not this runner's to write any more.
        if let Some(fence) = self.fence.as_ref().filter(|f| !f.held()) {
            return Err(fence.lost_error(&format!(
                "writing item {} of table {}",
                crate::state::deadletter::to_json(&key),
                self.table
            )));
        }
        match e.class_for(Call::ItemWrite) {
            Class::ConditionFailed => {
                not_applied();
                Stats::inc(&self.stats.conflicts);
                let fresh =
                    Box::pin(self.reread(&key, item_size(&attrs_now), "after a write conflict"))
                        .await?;
                // Deleted by someone else in between, or no longer matching
                // the scan filter: nothing left to migrate.
                let Some(fresh) = fresh else {
                    return Ok(Sent::Done(ItemOutcome::Unchanged));
                };
                let (item, change) = Box::pin(self.transform(fresh)).await;
                let next = self.plan_round(item, change);
                let next_id = self.journal_rounds(std::slice::from_ref(&next))?[0];
                Ok(Sent::Again { key, next, next_id })
            }
            Class::Item => {
                not_applied();
                Ok(Sent::Done(ItemOutcome::Failed {
                    key,
                    reason: e.to_string(),
                }))
            }
            // `send` retried for the whole budget: a hot key, not the run's rate.
            Class::Throttle | Class::Transient => Ok(Sent::Done(ItemOutcome::Failed {
                key,
                reason: format!(
                    "still failing after retrying for {} (--retry-budget): {e}",
                    self.backoff
                        .budget
                        .map(|b| format!("{}s", b.as_secs_f64()))
                        .unwrap_or_else(|| format!("{} attempts", self.backoff.max_attempts))
                ),
            })),
            _ => Err(Error::aws(
                format!(
                    "writing item {} of table {} for migration {}",
                    crate::state::deadletter::to_json(&key),
                    self.table,
                    self.migration.id()
                ),
                e,
            )),
        }
    }

    /// A dry run's outcome for a planned write, with its sample and write
    /// estimate recorded for the dry-run report.
    fn dry_run_outcome(&self, attrs: &Attrs, change: &Change, planned: Planned) -> ItemOutcome {
        let key = || diff::key_of(&self.keys, attrs);
        match &planned {
            Planned::Update(e) => self
                .stats
                .offer_sample(|| sample_update(&key(), attrs, change, e)),
            Planned::Delete(_) => self.stats.offer_sample(|| Sample {
                key: crate::state::deadletter::to_json(&key()).to_string(),
                change: SampleChange::Delete,
            }),
            Planned::Unchanged => {}
        }
        let milli = write_estimate(attrs, &planned) * 1000.0;
        self.stats
            .write_estimate_milli
            .fetch_add(milli as u64, std::sync::atomic::Ordering::Relaxed);
        match planned {
            Planned::Delete(_) => ItemOutcome::Deleted,
            _ => ItemOutcome::Updated,
        }
    }

    /// The first attribute the transform touched that a projected scan did not fetch.
    fn outside_projection(
        &self,
        read: &std::collections::BTreeSet<String>,
        change: &Change,
    ) -> Option<String> {
        let (_, names) = self.projection.as_ref()?;
        let fetched = |a: &String| self.keys.contains(a) || names.values().any(|n| n == a);
        let written: Vec<&String> = match change {
            Change::Update(u) => u.names().collect(),
            _ => vec![],
        };
        read.iter().chain(written).find(|a| !fetched(a)).cloned()
    }

    /// Sends a planned write: conditional, retried, metered, fenced.
    async fn send(&self, key: &Attrs, old: &Attrs, planned: &Planned) -> Result<(), AwsError> {
        let mut attempts = Attempts::default();
        // UpdateItem is billed on the larger of the item before and after.
        let estimate = write_estimate(old, planned);
        let r = match planned {
            Planned::Unchanged => Ok(()),
            Planned::Update(e) => {
                let send = || {
                    let req = self
                        .client
                        .update_item()
                        .table_name(&self.table)
                        .set_key(Some(key.clone()))
                        .update_expression(&e.update)
                        .condition_expression(&e.condition)
                        .set_expression_attribute_names(Some(e.names.clone()))
                        .set_expression_attribute_values(non_empty(&e.values))
                        .return_consumed_capacity(ReturnConsumedCapacity::Total);
                    async move { req.send().await.map_err(AwsError::from_sdk) }
                };
                self.write("UpdateItem", estimate, &mut attempts, send)
                    .await
            }
            Planned::Delete(e) => {
                let send = || {
                    let req = self
                        .client
                        .delete_item()
                        .table_name(&self.table)
                        .set_key(Some(key.clone()))
                        .condition_expression(&e.condition)
                        .set_expression_attribute_names(Some(e.names.clone()))
                        .set_expression_attribute_values(non_empty(&e.values))
                        .return_consumed_capacity(ReturnConsumedCapacity::Total);
                    async move { req.send().await.map_err(AwsError::from_sdk) }
                };
                self.write("DeleteItem", estimate, &mut attempts, send)
                    .await
            }
        };
        self.count(attempts);
        r
    }

    /// One data write (`op`), retried on throttles and transient faults,
    /// charged to the write budget with what it consumed, fenced.
    async fn write<T, Fut>(
        &self,
        op: &'static str,
        estimate: f64,
        attempts: &mut Attempts,
        send: impl Fn() -> Fut,
    ) -> Result<(), AwsError>
    where
        T: Consumed,
        Fut: std::future::Future<Output = Result<T, AwsError>>,
    {
        retry(&self.backoff, attempts, || {
            self.fenced(
                self.budgets
                    .write
                    .call(op, estimate, Consumed::consumed_units, &send),
            )
        })
        .await
        .map(|_| ())
    }

    /// One write attempt, sent only while the run's lock is provably held.
    async fn fenced<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, AwsError>>,
    ) -> Result<T, AwsError> {
        match &self.fence {
            Some(fence) => fence.attempt(attempt).await,
            None => attempt.await,
        }
    }

    /// Reads the item's current version, strongly consistent. With a scan
    /// filter, an item that no longer matches it comes back as `None`, like
    /// a deleted one: it is no longer the migration's to change.
    async fn reread(
        &self,
        key: &Attrs,
        size_hint: usize,
        why: &str,
    ) -> Result<Option<Attrs>, Error> {
        let what = || {
            format!(
                "re-reading item {} of table {} {why}",
                crate::state::deadletter::to_json(key),
                self.table
            )
        };
        match &self.guard.filter {
            Some(filter) => self
                .reread_filtered(key, size_hint, filter)
                .await
                .map_err(|e| Error::aws(what(), e)),
            None => self
                .reread_item(key, size_hint)
                .await
                .map_err(|e| Error::aws(what(), e)),
        }
    }

    /// A consistent Query on the item's full key with the scan's filter.
    async fn reread_filtered(
        &self,
        key: &Attrs,
        size_hint: usize,
        filter: &diff::Filter,
    ) -> Result<Option<Attrs>, AwsError> {
        let mut names = filter.names.clone();
        let mut values = filter.values.clone();
        let mut conditions = Vec::new();
        for (i, (name, value)) in key.iter().enumerate() {
            // A prefix of dynbulk's own, apart from the filter's and the projection's.
            names.insert(format!("#dynbulk_k{i}"), name.clone());
            values.insert(format!(":dynbulk_k{i}"), value.clone());
            conditions.push(format!("#dynbulk_k{i} = :dynbulk_k{i}"));
        }
        let key_condition = conditions.join(" AND ");
        let projection = self.projection.as_ref().map(|(expr, pnames)| {
            names.extend(pnames.clone());
            expr.clone()
        });
        let mut attempts = Attempts::default();
        let estimate = read_units(size_hint, true);
        let r = retry(&self.backoff, &mut attempts, || {
            let req = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(&key_condition)
                .filter_expression(&filter.expr)
                .set_projection_expression(projection.clone())
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .consistent_read(true)
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            self.budgets.read.call(
                "Query",
                estimate,
                Consumed::consumed_units,
                move || async move { req.send().await.map_err(AwsError::from_sdk) },
            )
        })
        .await;
        self.count(attempts);
        Ok(r?.items.and_then(|items| items.into_iter().next()))
    }

    /// A consistent GetItem.
    async fn reread_item(&self, key: &Attrs, size_hint: usize) -> Result<Option<Attrs>, AwsError> {
        let mut attempts = Attempts::default();
        let estimate = read_units(size_hint, true);
        let r = retry(&self.backoff, &mut attempts, || {
            let mut req = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key.clone()))
                .consistent_read(true)
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            if let Some((expr, names)) = &self.projection {
                req = req
                    .projection_expression(expr)
                    .set_expression_attribute_names(Some(names.clone()));
            }
            self.budgets.read.call(
                "GetItem",
                estimate,
                Consumed::consumed_units,
                move || async move { req.send().await.map_err(AwsError::from_sdk) },
            )
        })
        .await;
        self.count(attempts);
        Ok(r?.item)
    }

    fn count(&self, attempts: Attempts) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats
            .throttled
            .fetch_add(attempts.throttled.into(), Relaxed);
        self.stats
            .transient
            .fetch_add(attempts.transient.into(), Relaxed);
    }
}

/// The journal record of a planned write: for an update, each attribute it
/// sets or removes (and the version attribute it increments) before and
/// after; for a delete, the whole item as scanned.
fn intent(
    key: &Attrs,
    old: &Attrs,
    change: &Change,
    planned: &Planned,
    version: Option<&str>,
) -> journal::Record {
    match (planned, change) {
        (Planned::Update(_), Change::Update(update)) => {
            let effective = diff::effective(old, update);
            let mut before = std::collections::BTreeMap::new();
            let mut after = std::collections::BTreeMap::new();
            for (name, value) in &effective.set {
                before.insert(name.clone(), old.get(name).cloned());
                after.insert(name.clone(), Some(value.clone()));
            }
            for name in &effective.remove {
                before.insert(name.clone(), old.get(name).cloned());
                after.insert(name.clone(), None);
            }
            // ADD 1 (an absent version counts as 0); a version that is not a
            // whole number is left out: revert then neither checks nor restores it.
            if let Some(v) = version {
                let now = match old.get(v) {
                    None => Some(0i128),
                    Some(AttributeValue::N(n)) => n.parse::<i128>().ok(),
                    Some(_) => None,
                };
                if let Some(n) = now {
                    before.insert(v.to_owned(), old.get(v).cloned());
                    after.insert(v.to_owned(), Some(AttributeValue::N((n + 1).to_string())));
                }
            }
            journal::Record::Update {
                key: key.clone(),
                before,
                after,
            }
        }
        _ => journal::Record::Delete {
            key: key.clone(),
            item: old.clone(),
        },
    }
}

/// Write units a planned write will cost at most. UpdateItem is billed on the
/// larger of the item before and after: the item as it was plus every value
/// set is an upper bound; the difference comes back as credit.
fn write_estimate(old: &Attrs, planned: &Planned) -> f64 {
    let added: usize = match planned {
        Planned::Update(e) => e.values.values().map(value_size).sum(),
        _ => 0,
    };
    write_units(item_size(old) + added)
}

fn non_empty(values: &HashMap<String, AttributeValue>) -> Option<HashMap<String, AttributeValue>> {
    if values.is_empty() {
        None
    } else {
        Some(values.clone())
    }
}

/// Before -> after of each changed attribute, values shortened for display.
fn sample_update(key: &Attrs, old: &Attrs, change: &Change, e: &Expr) -> Sample {
    let after = match change {
        Change::Update(u) => u,
        _ => unreachable!("only updates are sampled here"),
    };
    let show = |v: Option<&AttributeValue>| {
        v.map(|v| {
            let s = value_json(v).to_string();
            if s.len() > 80 {
                format!(
                    "{}...",
                    &s[..s
                        .char_indices()
                        .take(77)
                        .last()
                        .map(|(i, c)| i + c.len_utf8())
                        .unwrap_or(0)]
                )
            } else {
                s
            }
        })
    };
    let changes = e
        .changed
        .iter()
        .map(|name| (name.clone(), show(old.get(name)), show(after.set.get(name))))
        .collect();
    Sample {
        key: crate::state::deadletter::to_json(key).to_string(),
        change: SampleChange::Update(changes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.into())
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    #[test]
    fn an_update_journals_each_changed_attribute_before_and_after_and_the_version() {
        let keys = vec!["pk".to_string()];
        let old: Attrs = HashMap::from([
            ("pk".into(), s("a")),
            ("x".into(), n("1")),
            ("gone".into(), s("old")),
            ("same".into(), s("kept")),
            ("v".into(), n("41")),
        ]);
        let update = crate::migration::Update {
            set: BTreeMap::from([
                ("x".into(), n("2")),
                ("new".into(), s("added")),
                ("same".into(), s("kept")),
            ]),
            remove: BTreeSet::from(["gone".into(), "absent".into()]),
        };
        let change = Change::Update(update);
        let guard = diff::Guard {
            version: Some("v".into()),
            filter: None,
        };
        let planned = diff::plan(&keys, &old, &BTreeSet::new(), &change, &guard).unwrap();
        let key = diff::key_of(&keys, &old);
        let journal::Record::Update {
            key: k,
            before,
            after,
        } = intent(&key, &old, &change, &planned, Some("v"))
        else {
            panic!("an update journals an update");
        };
        assert_eq!(k, key);
        // Only what the write changes: not "same" (unchanged), not "absent".
        assert_eq!(
            before,
            BTreeMap::from([
                ("x".into(), Some(n("1"))),
                ("new".into(), None),
                ("gone".into(), Some(s("old"))),
                ("v".into(), Some(n("41"))),
            ])
        );
        assert_eq!(
            after,
            BTreeMap::from([
                ("x".into(), Some(n("2"))),
                ("new".into(), Some(s("added"))),
                ("gone".into(), None),
                ("v".into(), Some(n("42"))),
            ])
        );
    }

    #[test]
    fn a_delete_journals_the_whole_item() {
        let keys = vec!["pk".to_string()];
        let old: Attrs = HashMap::from([("pk".into(), s("a")), ("x".into(), n("1"))]);
        let planned = diff::plan(
            &keys,
            &old,
            &BTreeSet::new(),
            &Change::Delete,
            &diff::Guard::default(),
        )
        .unwrap();
        let key = diff::key_of(&keys, &old);
        assert_eq!(
            intent(&key, &old, &Change::Delete, &planned, None),
            journal::Record::Delete {
                key,
                item: old.clone()
            }
        );
    }
}
