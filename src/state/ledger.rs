//! The ledger: which migrations were applied to which table, when, by whom,
//! with what result. Lives in the state table (created on first use, on-demand
//! billing), next to the data, so nothing needs installing.
//!
//! Layout: partition `ledger#<table>`, sort key `<migration id>`; one item per
//! migration per target table (the same migration is applied separately to
//! `orders-dev` and `orders-prod`). Entries are written under the run's lock,
//! fenced (see the `fence` module): a runner that lost the lock cannot
//! overwrite what the runner that took it over recorded.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, KeyType};
use aws_sdk_dynamodb::Client;

use crate::capacity::backoff::{retry, Attempts, Backoff};
use crate::dynamo::classify::{AwsError, Cause};
use crate::dynamo::table;
use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};
use crate::state::fence::{self, Fence};
use crate::state::replay::Position;
use crate::state::store::{check_layout, now, query_state, Counts, SCHEMA_VERSION};

/// A migration's status on one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Never run (no ledger entry).
    Pending,
    /// A run started and has not finished (running now, or died).
    InProgress,
    /// The last run completed; every item was processed.
    Applied,
    /// The last run processed every item but some failed (see its dead-letter file).
    Failed,
    /// The last run stopped before the end; its checkpoints are saved and
    /// `dynbulk run` resumes it.
    Stopped,
    /// `dynbulk revert` started and has not finished (running now, stopped,
    /// or died): the same revert command resumes it; `dynbulk run` applies
    /// the migration again.
    Reverting,
}

impl Status {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in_progress",
            Status::Applied => "applied",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
            Status::Reverting => "reverting",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Status::Pending,
            "in_progress" => Status::InProgress,
            "applied" => Status::Applied,
            "failed" => Status::Failed,
            "stopped" => Status::Stopped,
            "reverting" => Status::Reverting,
            _ => return None,
        })
    }
}

/// One ledger entry: a migration on a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Migration id.
    pub migration: String,
    /// Target table.
    pub table: String,
    /// Status.
    pub status: Status,
    /// Run start (RFC 3339).
    pub started_at: String,
    /// Run end (RFC 3339), if it ended.
    pub finished_at: Option<String>,
    /// `user@host` of the runner.
    pub runner: String,
    /// Counts of the last run.
    pub counts: Counts,
    /// What the schema step did.
    pub schema: Option<String>,
    /// How many runs this migration had on this table.
    pub runs: u64,
    /// The journals of the last run (absolute paths, on the machines that ran it).
    pub journals: Vec<String>,
}

/// How a run ended, as [`Ledger::finish`] records it.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    /// Target table.
    pub table: &'a str,
    /// Migration id.
    pub migration: &'a str,
    /// The status the run leaves the migration in.
    pub status: Status,
    /// `user@host` of the runner.
    pub runner: &'a str,
    /// When the run first started (RFC 3339).
    pub started_at: &'a str,
    /// How many runs this migration had on this table, this one included.
    pub runs: u64,
    /// The run's totals over all its attempts.
    pub counts: Counts,
    /// What the schema step did.
    pub schema: Option<&'a str>,
    /// The dead-letter files of every attempt.
    pub dead_letters: &'a [std::path::PathBuf],
    /// The journals of every attempt (what `dynbulk revert` reads).
    pub journals: &'a [std::path::PathBuf],
    /// The replays recorded between its attempts: kept, so that a replay
    /// resumed after the run ended is not counted again
    /// ([`Ledger::recover`]).
    pub replays: &'a [String],
    /// The run's id, for a run shared with `--join` (recorded once: see
    /// [`Ledger::finish_shared`]).
    pub run_id: Option<&'a str>,
}

/// What [`Ledger::recover`] did to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Failed items the entry counted before.
    pub before: u64,
    /// Failed items it counts now.
    pub after: u64,
    /// The migration's status now.
    pub status: Status,
    /// The replay had already been recorded (a resumed replay): nothing changed.
    pub already: bool,
}

/// The ledger in a state table.
#[derive(Clone)]
pub struct Ledger {
    client: Client,
    table: String,
}

impl Ledger {
    /// A ledger in `state_table`. Nothing is sent until it is used.
    pub fn new(client: Client, state_table: impl Into<String>) -> Self {
        Ledger {
            client,
            table: state_table.into(),
        }
    }

    /// The state table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether the state table exists, checking that it has the layout this build uses.
    ///
    /// # Errors
    /// When the table exists with another key schema, or DynamoDB cannot be asked.
    pub async fn exists(&self) -> Result<bool> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        match out {
            Ok(out) => {
                let keys: Vec<(String, KeyType)> = out
                    .table
                    .map(|t| {
                        t.key_schema()
                            .iter()
                            .map(|k| (k.attribute_name().to_owned(), k.key_type().clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let expected = vec![
                    ("pk".to_string(), KeyType::Hash),
                    ("sk".to_string(), KeyType::Range),
                ];
                if keys != expected {
                    return Err(Error::State {
                        table: self.table.clone(),
                        message: format!(
                            "exists but is not a dynbulk state table (key schema {keys:?}, expected pk HASH + sk RANGE); pass another --state-table"
                        ),
                    });
                }
                Ok(true)
            }
            Err(e) => {
                let e = AwsError::from_sdk(e);
                if e.cause() == Cause::MissingResource {
                    Ok(false)
                } else {
                    Err(Error::aws(
                        format!("describing state table {}", self.table),
                        e,
                    ))
                }
            }
        }
    }

    /// Creates the state table if it is missing (on-demand billing) and waits until it is active.
    ///
    /// # Errors
    /// When the table cannot be created or does not become active.
    pub async fn ensure(&self) -> Result<()> {
        if self.exists().await? {
            return self.wait_active().await;
        }
        tracing::info!(table = %self.table, "creating the state table (on-demand billing)");
        if let Err(e) = table::create_on_demand(&self.client, &self.table, &["pk", "sk"]).await {
            // Another runner created it at the same moment: fine.
            if e.cause() != Cause::ResourceInUse {
                return Err(Error::aws(
                    format!("creating state table {}", self.table),
                    e,
                ));
            }
        }
        self.wait_active().await
    }

    async fn wait_active(&self) -> Result<()> {
        let active = table::wait_active(&self.client, &self.table, Duration::from_secs(60))
            .await
            .map_err(|e| Error::aws(format!("describing state table {}", self.table), e))?;
        if active {
            return Ok(());
        }
        Err(Error::State {
            table: self.table.clone(),
            message: "did not become ACTIVE within 60 seconds".into(),
        })
    }

    /// The entry of `migration` on `table`, if any. A missing state table means no entries.
    ///
    /// # Errors
    /// When the entry cannot be read or was written by an incompatible version.
    pub async fn get(&self, table: &str, migration: &str) -> Result<Option<Entry>> {
        let out = retry(&Backoff::default(), &mut Attempts::default(), || async {
            self.client
                .get_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(partition(table)))
                .key("sk", AttributeValue::S(migration.to_owned()))
                .consistent_read(true)
                .send()
                .await
                .map_err(AwsError::from_sdk)
        })
        .await;
        let out = match out {
            Ok(o) => o,
            Err(e) if e.cause() == Cause::MissingResource => return Ok(None),
            Err(e) => {
                return Err(Error::aws(
                    format!("reading the ledger in state table {}", self.table),
                    e,
                ))
            }
        };
        out.item.map(|i| self.decode(&i)).transpose()
    }

    /// Records that a run of `migration` on `table` started, under the run's lock.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn begin(
        &self,
        table: &str,
        migration: &str,
        runner: &str,
        runs: u64,
        fence: &Fence,
    ) -> Result<()> {
        let mut item = self.base(table, migration);
        item.insert("status".into(), s(Status::InProgress.as_str()));
        item.insert("started_at".into(), s(&now()));
        item.insert("runner".into(), s(runner));
        item.insert("runs".into(), n(runs));
        self.put(item, fence).await
    }

    /// Records how a run ended, under the run's lock.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn finish(&self, run: &Finished<'_>, fence: &Fence) -> Result<()> {
        self.put(self.finished_item(run), fence).await
    }

    /// Records how a run shared with `--join` ended, once: every process that
    /// sees the run complete tries, and the write is conditioned on the entry
    /// not holding this run's id already. `true` for the one process whose
    /// write recorded it.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost (a newer
    /// runner wrote the entry).
    pub async fn finish_shared(&self, run: &Finished<'_>, fence: &Fence) -> Result<bool> {
        let run_id = run.run_id.unwrap_or_default().to_owned();
        let mut item = self.finished_item(run);
        item.insert(fence::ATTRIBUTE.into(), n(fence.epoch()));
        let send = || {
            let req = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .condition_expression(format!(
                    "(attribute_not_exists(#run) OR #run <> :run) AND ({})",
                    fence::UPDATE_CONDITION
                ))
                .expression_attribute_names("#run", "run_id")
                .expression_attribute_names("#fence", fence::ATTRIBUTE)
                .expression_attribute_values(":run", s(&run_id))
                .expression_attribute_values(":fence", n(fence.epoch()));
            async move { req.send().await.map(|_| ()).map_err(AwsError::from_sdk) }
        };
        let what = format!("writing the ledger in state table {}", self.table);
        if fence::attempt(fence, &what, send).await?.is_some() {
            return Ok(true);
        }
        // Refused: recorded by another process, or written by a newer runner.
        let recorded = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&partition(run.table)))
            .key("sk", s(run.migration))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws(what.clone(), AwsError::from_sdk(e)))?
            .item
            .and_then(|i| i.get("run_id").and_then(|v| v.as_s().ok()).cloned());
        if recorded.as_deref() == Some(run_id.as_str()) {
            return Ok(false);
        }
        fence.lose();
        Err(fence.lost_error(&what))
    }

    /// Takes what a replay of dead letters recovered into the entry of
    /// `migration` on `table`: its failed count goes down by the items
    /// recovered and by those that no longer exist (nothing is left to
    /// migrate for them), not below zero; the updates, deletes and unchanged
    /// items are added, and a `failed` migration with nothing left failing
    /// becomes `applied` when its run is `finished` (a run stopped part way
    /// stays failed until it is resumed and completes). Once per replay: the entry remembers the replay's
    /// id, so a replay resumed after a crash that had already recorded
    /// itself changes nothing. `None` when there is no entry.
    ///
    /// # Errors
    /// When the state table cannot be read or written, or the lock was lost.
    ///
    /// About 80 lines on purpose: one read-decide-write round under the
    /// lock, and the condition it writes must match the entry it read.
    pub async fn recover(
        &self,
        table: &str,
        migration: &str,
        replay: &Position,
        finished: bool,
        fence: &Fence,
    ) -> Result<Option<Recovered>> {
        let what = format!(
            "recording a replay in the ledger in state table {}",
            self.table
        );
        // Under the lock nothing else writes the entry; a refused condition
        // is this replay's own earlier write, seen again on the next read.
        for _ in 0..3 {
            let Some(item) = self.raw(table, migration).await? else {
                return Ok(None);
            };
            let entry = self.decode(&item)?;
            let before = entry.counts.failed;
            let done = item
                .get("replays")
                .and_then(|v| v.as_ss().ok())
                .is_some_and(|ids| ids.contains(&replay.id));
            if done {
                return Ok(Some(Recovered {
                    before,
                    after: before,
                    status: entry.status,
                    already: true,
                }));
            }
            let after = before.saturating_sub(replay.recovered() + replay.gone);
            let status = match entry.status {
                Status::Failed if after == 0 && finished => Status::Applied,
                other => other,
            };
            let send = || {
                let req = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(&partition(table)))
                    .key("sk", s(migration))
                    .update_expression(
                        "SET #failed = :after, #status = :status, #fence = :fence \
                         ADD #updated :u, #deleted :d, #unchanged :c, #replays :ids",
                    )
                    .condition_expression(format!(
                        "#failed = :before AND (attribute_not_exists(#replays) OR NOT contains(#replays, :id)) AND ({})",
                        fence::UPDATE_CONDITION
                    ))
                    .expression_attribute_names("#failed", "failed")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_names("#fence", fence::ATTRIBUTE)
                    .expression_attribute_names("#updated", "updated")
                    .expression_attribute_names("#deleted", "deleted")
                    .expression_attribute_names("#unchanged", "unchanged")
                    .expression_attribute_names("#replays", "replays")
                    .expression_attribute_values(":after", n(after))
                    .expression_attribute_values(":before", n(before))
                    .expression_attribute_values(":status", s(status.as_str()))
                    .expression_attribute_values(":fence", n(fence.epoch()))
                    .expression_attribute_values(":u", n(replay.updated))
                    .expression_attribute_values(":d", n(replay.deleted))
                    .expression_attribute_values(":c", n(replay.unchanged))
                    .expression_attribute_values(":ids", AttributeValue::Ss(vec![replay.id.clone()]))
                    .expression_attribute_values(":id", s(&replay.id));
                async move { req.send().await.map(|_| ()).map_err(AwsError::from_sdk) }
            };
            if fence::attempt(fence, &what, send).await?.is_some() {
                return Ok(Some(Recovered {
                    before,
                    after,
                    status,
                    already: false,
                }));
            }
        }
        // Refused three times: another writer (a newer runner's epoch).
        fence.lose();
        Err(fence.lost_error(&what))
    }

    /// The entry as stored, strongly consistent.
    async fn raw(&self, table: &str, migration: &str) -> Result<Option<Attrs>> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&partition(table)))
            .key("sk", s(migration))
            .consistent_read(true)
            .send()
            .await
            .map(|o| o.item)
            .map_err(|e| {
                Error::aws(
                    format!("reading the ledger in state table {}", self.table),
                    AwsError::from_sdk(e),
                )
            })
    }

    fn finished_item(&self, run: &Finished<'_>) -> Attrs {
        let mut item = self.base(run.table, run.migration);
        item.insert("status".into(), s(run.status.as_str()));
        item.insert("started_at".into(), s(run.started_at));
        item.insert("finished_at".into(), s(&now()));
        item.insert("runner".into(), s(run.runner));
        item.insert("runs".into(), n(run.runs));
        run.counts.store(&mut item);
        if let Some(schema) = run.schema {
            item.insert("schema".into(), s(schema));
        }
        // The run's state (which names them too) is deleted once it completes.
        if !run.dead_letters.is_empty() {
            item.insert(
                "dead_letters".into(),
                AttributeValue::L(
                    run.dead_letters
                        .iter()
                        .map(|p| s(&p.to_string_lossy()))
                        .collect(),
                ),
            );
        }
        if !run.journals.is_empty() {
            item.insert(
                "journals".into(),
                AttributeValue::L(
                    run.journals
                        .iter()
                        .map(|p| s(&p.to_string_lossy()))
                        .collect(),
                ),
            );
        }
        if let Some(id) = run.run_id {
            item.insert("run_id".into(), s(id));
        }
        if !run.replays.is_empty() {
            item.insert("replays".into(), AttributeValue::Ss(run.replays.to_vec()));
        }
        item
    }

    /// Names `journal` (a replay's) among the entry's journals, once, so
    /// that `dynbulk revert` undoes its writes too. `false` when there is no
    /// entry for the migration on `table`.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn name_journal(
        &self,
        table: &str,
        migration: &str,
        journal: &str,
        fence: &Fence,
    ) -> Result<bool> {
        fence::append_once(
            &self.client,
            &self.table,
            HashMap::from([
                ("pk".to_owned(), s(&partition(table))),
                ("sk".to_owned(), s(migration)),
            ]),
            ("journals", journal),
            fence,
            &format!(
                "naming a journal in the ledger in state table {}",
                self.table
            ),
        )
        .await
    }

    /// Records that a revert of the run `entry` records started: the entry
    /// keeps its run's fields and journals (a resumed revert reads them),
    /// with status `reverting`. `journals` are the files being reverted.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn reverting(
        &self,
        table: &str,
        migration: &str,
        entry: Option<&Entry>,
        journals: &[String],
        fence: &Fence,
    ) -> Result<()> {
        let mut item = self.revert_item(table, migration, entry, Status::Reverting);
        if !journals.is_empty() {
            item.insert(
                "journals".into(),
                AttributeValue::L(journals.iter().map(|j| s(j)).collect()),
            );
        }
        self.put(item, fence).await
    }

    /// Records a finished revert: the migration is pending again (a later
    /// `dynbulk run` applies it again); the journals, spent, are no longer
    /// named; `reverted` items were put back.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn reverted(
        &self,
        table: &str,
        migration: &str,
        entry: Option<&Entry>,
        reverted: u64,
        fence: &Fence,
    ) -> Result<()> {
        let mut item = self.revert_item(table, migration, entry, Status::Pending);
        item.insert("reverted_at".into(), s(&now()));
        item.insert("reverted".into(), n(reverted));
        self.put(item, fence).await
    }

    fn revert_item(
        &self,
        table: &str,
        migration: &str,
        entry: Option<&Entry>,
        status: Status,
    ) -> Attrs {
        let mut item = self.base(table, migration);
        item.insert("status".into(), s(status.as_str()));
        if let Some(e) = entry {
            item.insert("started_at".into(), s(&e.started_at));
            if let Some(t) = &e.finished_at {
                item.insert("finished_at".into(), s(t));
            }
            item.insert("runner".into(), s(&e.runner));
            item.insert("runs".into(), n(e.runs));
            e.counts.store(&mut item);
            if let Some(schema) = &e.schema {
                item.insert("schema".into(), s(schema));
            }
        }
        item
    }

    /// Every entry for `table`.
    ///
    /// # Errors
    /// When the ledger cannot be read or holds entries from an incompatible version.
    pub async fn entries(&self, table: &str) -> Result<Vec<Entry>> {
        query_state(&self.client, &self.table, &partition(table))
            .await
            .map_err(|e| {
                Error::aws(
                    format!("reading the ledger in state table {}", self.table),
                    e,
                )
            })?
            .iter()
            .map(|item| self.decode(item))
            .collect()
    }

    fn base(&self, table: &str, migration: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".into(), s(&partition(table))),
            ("sk".into(), s(migration)),
            ("table".into(), s(table)),
            ("migration".into(), s(migration)),
            ("schema_version".into(), s(SCHEMA_VERSION)),
        ])
    }

    async fn put(&self, item: Attrs, fence: &Fence) -> Result<()> {
        fence::put(
            &self.client,
            &self.table,
            item,
            fence,
            &format!("writing the ledger in state table {}", self.table),
        )
        .await
    }

    fn decode(&self, item: &HashMap<String, AttributeValue>) -> Result<Entry> {
        let bad = |what: &str| {
            Error::State {
            table: self.table.clone(),
            message: format!(
                "a ledger entry {what}; it was written by an incompatible dynbulk version or edited by hand. \
                 Upgrade dynbulk, or point --state-table at a new table"
            ),
        }
        };
        let get_s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        let get_n = |k: &str| {
            item.get(k)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        check_layout(item).map_err(|version| match version {
            Some(v) => bad(&format!(
                "has layout version {v:?}, this build reads {SCHEMA_VERSION:?}"
            )),
            None => bad("has no layout version"),
        })?;
        let status = get_s("status")
            .and_then(|s| Status::parse(&s))
            .ok_or_else(|| bad("has no valid status"))?;
        Ok(Entry {
            migration: get_s("migration").ok_or_else(|| bad("has no migration id"))?,
            table: get_s("table").ok_or_else(|| bad("has no table"))?,
            status,
            started_at: get_s("started_at").unwrap_or_default(),
            finished_at: get_s("finished_at"),
            runner: get_s("runner").unwrap_or_default(),
            counts: Counts::load(|k| Ok::<_, Error>(get_n(k)))?,
            schema: get_s("schema"),
            runs: get_n("runs"),
            journals: match item.get("journals") {
                Some(AttributeValue::L(l)) => l
                    .iter()
                    .map(|v| v.as_s().ok().cloned())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("has malformed journal file names"))?,
                _ => Vec::new(),
            },
        })
    }
}

fn partition(table: &str) -> String {
    format!("ledger#{table}")
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
