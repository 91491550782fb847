//! Per-segment checkpoints and the acknowledgement watermark.
//!
//! A segment's checkpoint is the LastEvaluatedKey below which every item is
//! done. Workers acknowledge pages as they finish them (written or
//! dead-lettered), possibly out of order; the checkpointer moves a segment's
//! checkpoint to page k's LastEvaluatedKey only once pages 0..=k are all
//! acknowledged. After a crash at any instant, resuming from the checkpoints
//! skips nothing and redoes at most the pages that were in flight.
//!
//! State-table layout (partition `run#<table>#<migration>`):
//! - sort key `run`: the run header (id, TotalSegments, key schema, counts
//!   over all attempts, attempts, times, `dead_letters`: the dead-letter file
//!   of every attempt that had a failure);
//! - sort key `segment#<n>`: `done`, or `last_key` (a map: the checkpoint),
//!   `failed`: items of the segment's acknowledged pages that were
//!   dead-lettered, saved with the checkpoint itself so that the run's failure
//!   count never lags behind its checkpoints, and the run id it belongs to.
//!
//! Dead letters are durable before a checkpoint moves past them: each round,
//! the checkpointer syncs the dead-letter file and, when the file is new to
//! the run, names it in the header before it writes any segment. So are
//! journal records: the journal is synced in the same place, and it is named
//! in the header (`journals`) before the attempt's first write.
//!
//! Every row records the lock epoch of the runner that wrote it and every
//! write is fenced (see the `fence` module). A segment row of another run — one
//! a runner that had lost the lock wrote after the run was restarted — is
//! not a checkpoint of this run: loading ignores it, and that segment is
//! scanned from its start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use tokio::sync::mpsc;

use crate::dynamo::classify::AwsError;
use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};
use crate::state::deadletter::DeadLetter;
use crate::state::fence::{self, Fence};
use crate::state::journal::Journal;
use crate::state::lease::Member;
use crate::state::store::{check_layout, now, query_state, Counts, SCHEMA_VERSION};

/// The header attribute saying a run shared with `--join` is complete (its
/// ledger entry is being written and its rows deleted).
pub const FINISHED: &str = "finished";

/// Where one segment stands.
#[derive(Debug, Clone, PartialEq)]
pub enum SegmentState {
    /// Nothing acknowledged yet: start from the segment's beginning.
    Start,
    /// Everything below this key is done: resume after it.
    At(Attrs),
    /// The whole segment is done.
    Done,
}

/// An unfinished run, as stored.
#[derive(Debug, Clone)]
pub struct RunState {
    /// Run id (random, for logs).
    pub run_id: String,
    /// TotalSegments, fixed for the run's life.
    pub total_segments: u32,
    /// The table's key attribute names when the run started.
    pub keys: Vec<String>,
    /// The table's TableId when the run started, if DynamoDB gave one.
    pub table_id: Option<String>,
    /// Counts of acknowledged pages over all attempts.
    pub counts: Counts,
    /// Attempts so far (this one included once it starts).
    pub attempts: u64,
    /// When the run first started.
    pub started_at: String,
    /// When a checkpoint was last saved.
    pub checkpoint_at: Option<String>,
    /// Each segment's state.
    pub segments: Vec<SegmentState>,
    /// Items dead-lettered in each segment's acknowledged pages, over all attempts.
    pub segment_failed: Vec<u64>,
    /// Counts of each segment's acknowledged pages, as its row stores them
    /// (zero for rows written before rows carried counts).
    pub segment_counts: Vec<Counts>,
    /// The dead-letter file of every attempt that had a failure, in order of
    /// first use (absolute paths, on the machine that ran the attempt).
    pub dead_letters: Vec<String>,
    /// The journal of every attempt (and, with `--join`, every process) that
    /// wrote, named before its first write (absolute paths, on the machine
    /// that ran it).
    pub journals: Vec<String>,
    /// What replays of the run's dead letters made between its attempts.
    pub replayed: Replayed,
}

/// What `dynbulk replay` made of a run's dead-lettered items while the run
/// was unfinished (between two attempts): the run's totals count those
/// items as settled, not failed, when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// The replays recorded (their ids), each once.
    pub ids: Vec<String>,
    /// Failed items no longer failing: recovered, or no longer there.
    pub settled: u64,
    /// Items the replays updated.
    pub updated: u64,
    /// Items the replays deleted.
    pub deleted: u64,
    /// Items the replays found already right.
    pub unchanged: u64,
}

/// The header attributes of [`Replayed`]'s counts.
const REPLAYED: [&str; 4] = [
    "replay_settled",
    "replay_updated",
    "replay_deleted",
    "replay_unchanged",
];

impl Replayed {
    fn counts(&self) -> [u64; 4] {
        [self.settled, self.updated, self.deleted, self.unchanged]
    }
}

impl RunState {
    /// The run's counts over all attempts, with the items replays settled
    /// between attempts counted as what the replays made of them.
    pub fn totals(&self) -> Counts {
        let r = &self.replayed;
        Counts {
            updated: self.counts.updated + r.updated,
            deleted: self.counts.deleted + r.deleted,
            unchanged: self.counts.unchanged + r.unchanged,
            failed: self.counts.failed.saturating_sub(r.settled),
            ..self.counts
        }
    }

    /// Segments finished.
    pub fn segments_done(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| **s == SegmentState::Done)
            .count()
    }
}

/// A page a worker finished: every item written or dead-lettered.
#[derive(Debug)]
pub struct Ack {
    /// Segment.
    pub segment: u32,
    /// Page number within the segment, in this attempt.
    pub seq: u64,
    /// The page's LastEvaluatedKey; `None` for the segment's last page.
    pub last_key: Option<Attrs>,
    /// What happened to the page's items.
    pub counts: Counts,
}

/// Reads and writes run state in the state table.
#[derive(Clone)]
pub struct Store {
    client: Client,
    state_table: String,
    table: String,
    migration: String,
    fence: Option<Fence>,
}

impl Store {
    /// Run state of `migration` on `table`, in `state_table`; reads only
    /// until given the lock's `Fence` with [`Store::fenced`].
    pub fn new(client: Client, state_table: &str, table: &str, migration: &str) -> Self {
        Store {
            client,
            state_table: state_table.to_owned(),
            table: table.to_owned(),
            migration: migration.to_owned(),
            fence: None,
        }
    }

    /// The same store, writing under `fence`: every write it makes is
    /// refused once another runner has the lock.
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    fn fence(&self) -> Result<&Fence> {
        self.fence.as_ref().ok_or_else(|| {
            Error::Internal(format!(
                "run state of migration {} on table {} written without holding its lock",
                self.migration, self.table
            ))
        })
    }

    /// An UpdateItem of the run's header, to be given its expression.
    fn header_update(
        &self,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.state_table)
            .key("pk", AttributeValue::S(self.pk()))
            .key("sk", AttributeValue::S("run".into()))
    }

    pub(crate) fn pk(&self) -> String {
        format!("run#{}#{}", self.table, self.migration)
    }

    fn bad(&self, what: String) -> Error {
        Error::State {
            table: self.state_table.clone(),
            message: format!(
                "the checkpoint of migration {} on table {} {what}. Nothing was written to {}. \
                 If the state was edited by hand or written by another dynbulk version, fix or upgrade; \
                 to start the migration over from the beginning, run with --restart",
                self.migration, self.table, self.table
            ),
        }
    }

    /// Loads the unfinished run, if any. Segment rows of another run are
    /// ignored (logged): their segments are scanned from the start.
    ///
    /// # Errors
    /// When the state cannot be read or does not decode; never guesses.
    pub async fn load(&self) -> Result<Option<RunState>> {
        Ok(self.load_items().await?.1)
    }

    /// The run's partition as stored, and the run decoded from it (as [`Store::load`]).
    ///
    /// # Errors
    /// As [`Store::load`].
    pub(crate) async fn load_items(&self) -> Result<(Vec<Attrs>, Option<RunState>)> {
        let items = query_state(&self.client, &self.state_table, &self.pk())
            .await
            .map_err(|e| {
                Error::aws(
                    format!("reading checkpoints in state table {}", self.state_table),
                    e,
                )
            })?;
        let decoded = decode(&items).map_err(|what| self.bad(what))?;
        for row in &decoded.foreign {
            tracing::warn!(
                table = %self.table,
                migration = %self.migration,
                segment = %row.segment,
                row_run = row.run.as_deref().unwrap_or("none"),
                run = %decoded.state.as_ref().map(|s| s.run_id.as_str()).unwrap_or_default(),
                "ignoring a checkpoint that belongs to another run (written by a runner that had lost the lock); the segment is scanned from its start"
            );
        }
        Ok((items, decoded.state))
    }

    /// Creates the header of a new run.
    ///
    /// # Errors
    /// When the state table cannot be written.
    pub async fn create(
        &self,
        total_segments: u32,
        keys: &[String],
        table_id: Option<String>,
    ) -> Result<RunState> {
        let run_id = format!("{:016x}", rand::random::<u64>());
        let state = RunState {
            run_id,
            total_segments,
            keys: keys.to_vec(),
            table_id,
            counts: Counts::default(),
            attempts: 0,
            started_at: now(),
            checkpoint_at: None,
            segments: vec![SegmentState::Start; total_segments as usize],
            segment_failed: vec![0; total_segments as usize],
            segment_counts: vec![Counts::default(); total_segments as usize],
            dead_letters: Vec::new(),
            journals: Vec::new(),
            replayed: Replayed::default(),
        };
        self.put_header(&state).await?;
        Ok(state)
    }

    /// Creates the header of a new run shared with `--join`, unless another
    /// process created one first: `settings` (the flags every process must
    /// share, by attribute name) are stored in it, and `None` says the run
    /// exists already (load it and join it).
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn create_shared(
        &self,
        total_segments: u32,
        keys: &[String],
        table_id: Option<String>,
        settings: Attrs,
    ) -> Result<Option<RunState>> {
        let fence = self.fence()?.clone();
        let mut state = RunState {
            run_id: format!("{:016x}", rand::random::<u64>()),
            total_segments,
            keys: keys.to_vec(),
            table_id,
            counts: Counts::default(),
            attempts: 1,
            started_at: now(),
            checkpoint_at: None,
            segments: vec![SegmentState::Start; total_segments as usize],
            segment_failed: vec![0; total_segments as usize],
            segment_counts: vec![Counts::default(); total_segments as usize],
            dead_letters: Vec::new(),
            journals: Vec::new(),
            replayed: Replayed::default(),
        };
        let mut item = self.header_item(&state, &state.counts);
        item.extend(settings);
        item.insert(
            fence::ATTRIBUTE.into(),
            AttributeValue::N(fence.epoch().to_string()),
        );
        let send = || {
            let req = self
                .client
                .put_item()
                .table_name(&self.state_table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(#sk)")
                .expression_attribute_names("#sk", "sk");
            async move {
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(crate::dynamo::classify::AwsError::from_sdk)
            }
        };
        let what = format!(
            "creating the run's header in state table {}",
            self.state_table
        );
        match fence::attempt(&fence, &what, send).await? {
            Some(()) => {
                state.attempts = 1;
                Ok(Some(state))
            }
            None => Ok(None),
        }
    }

    /// Writes the header (counts, attempts, times).
    ///
    /// # Errors
    /// When the state table cannot be written.
    pub async fn put_header(&self, state: &RunState) -> Result<()> {
        self.put_header_counting(state, &state.counts).await
    }

    /// Names `journal` (a replay's, made while this run is unfinished) in
    /// the run's header, once, after the journals of its attempts so far: a
    /// revert undoes them in the order they were written. `false` when there
    /// is no unfinished run.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn name_journal(&self, journal: &str) -> Result<bool> {
        if self.unfinished().await?.is_none() {
            return Ok(false);
        }
        fence::append_once(
            &self.client,
            &self.state_table,
            HashMap::from([
                ("pk".to_owned(), AttributeValue::S(self.pk())),
                ("sk".to_owned(), AttributeValue::S("run".into())),
            ]),
            ("journals", journal),
            self.fence()?,
            &format!("naming a journal in state table {}", self.state_table),
        )
        .await
    }

    /// Records what a replay of the run's dead letters made of them while
    /// the run is unfinished, once per replay (the header keeps its id), so
    /// that the run's totals count the items it settled as not failing.
    /// Only failures the run counted can be settled: what a replay settles
    /// beyond them (a file replayed twice, a file of another run) is not
    /// recorded. `false` when there is no unfinished run.
    ///
    /// # Errors
    /// When the state table cannot be read or written, or the lock was lost.
    pub async fn record_replay(&self, replay: &crate::state::replay::Position) -> Result<bool> {
        let fence = self.fence()?;
        let what = format!(
            "recording a replay in the run's state in state table {}",
            self.state_table
        );
        // Under the lock nothing else writes the header; a refused condition
        // is this replay's own earlier write, seen on the next read.
        for _ in 0..3 {
            let Some(run) = self.unfinished().await? else {
                return Ok(false);
            };
            if run.replayed.ids.contains(&replay.id) {
                return Ok(true);
            }
            let before = run.replayed.settled;
            let mut left = run.counts.failed.saturating_sub(before);
            let mut take = |n: u64| {
                let t = n.min(left);
                left -= t;
                t
            };
            let (u, d, c) = (
                take(replay.updated),
                take(replay.deleted),
                take(replay.unchanged),
            );
            let settled = u + d + c + take(replay.gone);
            let send = || {
                let n = |v: u64| AttributeValue::N(v.to_string());
                let req = self
                    .header_update()
                    .update_expression(
                        "SET #fence = :fence ADD #replays :ids, #s :s, #u :u, #d :d, #c :c",
                    )
                    .condition_expression(format!(
                        "attribute_exists(#pk) AND attribute_not_exists(#finished) \
                         AND (attribute_not_exists(#replays) OR NOT contains(#replays, :id)) \
                         AND (attribute_not_exists(#s) OR #s = :before) AND ({})",
                        fence::UPDATE_CONDITION
                    ))
                    .expression_attribute_names("#pk", "pk")
                    .expression_attribute_names("#finished", FINISHED)
                    .expression_attribute_names("#fence", fence::ATTRIBUTE)
                    .expression_attribute_names("#replays", "replays")
                    .expression_attribute_names("#s", REPLAYED[0])
                    .expression_attribute_names("#u", REPLAYED[1])
                    .expression_attribute_names("#d", REPLAYED[2])
                    .expression_attribute_names("#c", REPLAYED[3])
                    .expression_attribute_values(":fence", n(fence.epoch()))
                    .expression_attribute_values(
                        ":ids",
                        AttributeValue::Ss(vec![replay.id.clone()]),
                    )
                    .expression_attribute_values(":id", AttributeValue::S(replay.id.clone()))
                    .expression_attribute_values(":before", n(before))
                    .expression_attribute_values(":s", n(settled))
                    .expression_attribute_values(":u", n(u))
                    .expression_attribute_values(":d", n(d))
                    .expression_attribute_values(":c", n(c));
                async move { req.send().await.map(|_| ()).map_err(AwsError::from_sdk) }
            };
            if fence::attempt(fence, &what, send).await?.is_some() {
                return Ok(true);
            }
        }
        // Refused three times: another writer (a newer runner's epoch).
        fence.lose();
        Err(fence.lost_error(&what))
    }

    /// The run, unless there is none or it is finished (a `--join` run whose
    /// end is recorded in the ledger, its state not deleted yet).
    async fn unfinished(&self) -> Result<Option<RunState>> {
        let (items, state) = self.load_items().await?;
        let finished = items.iter().any(|i| {
            i.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("run")
                && i.contains_key(FINISHED)
        });
        Ok(state.filter(|_| !finished))
    }

    /// Writes the header with `counts` in place of the state's own.
    async fn put_header_counting(&self, state: &RunState, counts: &Counts) -> Result<()> {
        let item = self.header_item(state, counts);
        self.put(item).await
    }

    /// The header item of `state` with `counts`.
    fn header_item(&self, state: &RunState, counts: &Counts) -> Attrs {
        let mut item: Attrs = HashMap::from([
            ("pk".into(), AttributeValue::S(self.pk())),
            ("sk".into(), AttributeValue::S("run".into())),
            (
                "schema_version".into(),
                AttributeValue::S(SCHEMA_VERSION.into()),
            ),
            ("run_id".into(), AttributeValue::S(state.run_id.clone())),
            (
                "total_segments".into(),
                AttributeValue::N(state.total_segments.to_string()),
            ),
            (
                "keys".into(),
                AttributeValue::L(
                    state
                        .keys
                        .iter()
                        .map(|k| AttributeValue::S(k.clone()))
                        .collect(),
                ),
            ),
            (
                "attempts".into(),
                AttributeValue::N(state.attempts.to_string()),
            ),
            (
                "started_at".into(),
                AttributeValue::S(state.started_at.clone()),
            ),
        ]);
        if let Some(id) = &state.table_id {
            item.insert("table_id".into(), AttributeValue::S(id.clone()));
        }
        if let Some(t) = &state.checkpoint_at {
            item.insert("checkpoint_at".into(), AttributeValue::S(t.clone()));
        }
        if !state.dead_letters.is_empty() {
            item.insert(
                "dead_letters".into(),
                AttributeValue::L(
                    state
                        .dead_letters
                        .iter()
                        .map(|p| AttributeValue::S(p.clone()))
                        .collect(),
                ),
            );
        }
        if !state.journals.is_empty() {
            item.insert(
                "journals".into(),
                AttributeValue::L(
                    state
                        .journals
                        .iter()
                        .map(|p| AttributeValue::S(p.clone()))
                        .collect(),
                ),
            );
        }
        counts.store(&mut item);
        if !state.replayed.ids.is_empty() {
            item.insert(
                "replays".into(),
                AttributeValue::Ss(state.replayed.ids.clone()),
            );
            for (name, v) in REPLAYED.iter().zip(state.replayed.counts()) {
                item.insert((*name).into(), AttributeValue::N(v.to_string()));
            }
        }
        item
    }

    async fn put(&self, item: Attrs) -> Result<()> {
        fence::put(
            &self.client,
            &self.state_table,
            item,
            self.fence()?,
            &format!("saving checkpoints in state table {}", self.state_table),
        )
        .await
    }

    async fn put_segment(
        &self,
        segment: u32,
        run_id: &str,
        state: &SegmentState,
        counts: &Counts,
    ) -> Result<()> {
        let mut item: Attrs = HashMap::from([
            ("pk".into(), AttributeValue::S(self.pk())),
            ("sk".into(), AttributeValue::S(format!("segment#{segment}"))),
            ("run_id".into(), AttributeValue::S(run_id.to_owned())),
        ]);
        counts.store(&mut item);
        match state {
            SegmentState::Start => return Ok(()),
            SegmentState::Done => {
                item.insert("done".into(), AttributeValue::Bool(true));
            }
            SegmentState::At(key) => {
                item.insert("last_key".into(), AttributeValue::M(key.clone()));
            }
        }
        self.put(item).await
    }

    /// Marks the header of run `run_id` finished (a run shared with `--join`,
    /// every segment done): from now on no process claims its segments, even
    /// while its rows are being deleted. `false` when the header is gone or
    /// belongs to another run.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn mark_finished(&self, run_id: &str) -> Result<bool> {
        let fence = self.fence()?;
        let send = || {
            let req = self
                .header_update()
                .update_expression("SET #finished = :yes")
                .condition_expression(format!("#run = :run AND ({})", fence::UPDATE_CONDITION))
                .expression_attribute_names("#finished", FINISHED)
                .expression_attribute_names("#run", "run_id")
                .expression_attribute_names("#fence", fence::ATTRIBUTE)
                .expression_attribute_values(":yes", AttributeValue::Bool(true))
                .expression_attribute_values(":run", AttributeValue::S(run_id.to_owned()))
                .expression_attribute_values(
                    ":fence",
                    AttributeValue::N(fence.epoch().to_string()),
                );
            async move {
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(crate::dynamo::classify::AwsError::from_sdk)
            }
        };
        let what = format!(
            "marking the run finished in state table {}",
            self.state_table
        );
        Ok(fence::attempt(fence, &what, send).await?.is_some())
    }

    /// Deletes the run's header and checkpoints (after success, or on --restart).
    ///
    /// # Errors
    /// When the state table cannot be read or written, or the lock was lost.
    pub async fn delete(&self) -> Result<()> {
        let fence = self.fence()?;
        let mut keys: Vec<Attrs> = query_state(&self.client, &self.state_table, &self.pk())
            .await
            .map_err(|e| Error::aws("reading checkpoints to delete", e))?
            .into_iter()
            .map(|item| {
                item.into_iter()
                    .filter(|(k, _)| k == "pk" || k == "sk")
                    .collect()
            })
            .collect();
        // Segment rows first, the header last: a crash in between leaves a
        // header with fewer checkpoints (those segments are scanned again, and
        // idempotent transforms leave them as they are), never checkpoints
        // without a header.
        keys.sort_by_key(|k| sk(k) == Some("run"));
        for key in keys {
            fence::delete(
                &self.client,
                &self.state_table,
                key,
                fence,
                "deleting checkpoints",
            )
            .await?;
        }
        Ok(())
    }
}

fn sk(item: &Attrs) -> Option<&str> {
    item.get("sk")
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// A run's partition, decoded: the run (if any) and the segment rows that
/// belong to another run.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub state: Option<RunState>,
    pub foreign: Vec<ForeignRow>,
}

/// A segment row another run wrote (a runner that had lost the lock, after
/// the run was restarted): not a checkpoint of this run.
#[derive(Debug, PartialEq)]
pub(crate) struct ForeignRow {
    /// The row's segment number, as stored.
    pub segment: String,
    /// The run id the row carries.
    pub run: Option<String>,
}

/// Decodes a run's partition (the header and its segment rows). The error
/// says what does not decode, to follow "the checkpoint of migration M on
/// table T".
pub(crate) fn decode(items: &[Attrs]) -> std::result::Result<Decoded, String> {
    let Some(header) = items.iter().find(|i| sk(i) == Some("run")) else {
        if items.is_empty() {
            return Ok(Decoded {
                state: None,
                foreign: vec![],
            });
        }
        return Err("has segment checkpoints but no run header".into());
    };
    let mut state = decode_header(header)?;
    // Rows written before runs were fenced carry no run id; they are this
    // run's only when its header is from that time too.
    let legacy = !header.contains_key(fence::ATTRIBUTE);
    let mut foreign = Vec::new();
    for item in items {
        let Some(num) = sk(item).and_then(|sk| sk.strip_prefix("segment#")) else {
            continue;
        };
        let row_run = item.get("run_id").and_then(|v| v.as_s().ok());
        let ours = match row_run {
            Some(id) => *id == state.run_id,
            None => legacy,
        };
        if !ours {
            foreign.push(ForeignRow {
                segment: num.to_owned(),
                run: row_run.cloned(),
            });
            continue;
        }
        decode_segment(item, num, &mut state)?;
    }
    // The segment rows' counts are saved with their checkpoints; the
    // header's may lag by one round (or be all there is, from a version
    // that did not count per segment), or be missing (a run shared with
    // --join keeps its counts on the segment rows only).
    let mut sum = Counts::default();
    for c in &state.segment_counts {
        sum.add(c);
    }
    sum.failed = sum.failed.max(state.segment_failed.iter().sum());
    state.counts = state.counts.max(&sum);
    Ok(Decoded {
        state: Some(state),
        foreign,
    })
}

/// The run header, with every segment at its start.
fn decode_header(header: &Attrs) -> std::result::Result<RunState, String> {
    check_layout(header).map_err(|version| match version {
        Some(v) => format!("has layout version {v:?}; this dynbulk reads {SCHEMA_VERSION:?}"),
        None => "has no layout version".to_owned(),
    })?;
    let s = |k: &str| header.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |k: &str| -> std::result::Result<u64, String> {
        match header.get(k) {
            None => Ok(0),
            Some(v) => v
                .as_n()
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("has a malformed {k}")),
        }
    };
    let strings = |k: &str, what: &str| -> std::result::Result<Option<Vec<String>>, String> {
        match header.get(k) {
            None => Ok(None),
            Some(AttributeValue::L(l)) => l
                .iter()
                .map(|v| v.as_s().ok().cloned())
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| format!("has malformed {what}")),
            Some(_) => Err(format!("has malformed {what}")),
        }
    };
    let total_segments = n("total_segments")?;
    if !(1..=1_000_000).contains(&total_segments) {
        return Err(format!("has an invalid TotalSegments {total_segments}"));
    }
    let keys = match header.get("keys") {
        Some(AttributeValue::L(_)) => strings("keys", "key names")?.unwrap_or_default(),
        _ => return Err("has no key schema".into()),
    };
    Ok(RunState {
        run_id: s("run_id").unwrap_or_default(),
        total_segments: total_segments as u32,
        keys,
        table_id: s("table_id"),
        counts: Counts::load(n)?,
        attempts: n("attempts")?,
        started_at: s("started_at").unwrap_or_default(),
        checkpoint_at: s("checkpoint_at"),
        segments: vec![SegmentState::Start; total_segments as usize],
        segment_failed: vec![0; total_segments as usize],
        segment_counts: vec![Counts::default(); total_segments as usize],
        dead_letters: strings("dead_letters", "dead-letter file names")?.unwrap_or_default(),
        journals: strings("journals", "journal file names")?.unwrap_or_default(),
        replayed: Replayed {
            ids: match header.get("replays") {
                None => Vec::new(),
                Some(AttributeValue::Ss(ids)) => ids.clone(),
                Some(_) => return Err("has malformed replay ids".into()),
            },
            settled: n(REPLAYED[0])?,
            updated: n(REPLAYED[1])?,
            deleted: n(REPLAYED[2])?,
            unchanged: n(REPLAYED[3])?,
        },
    })
}

/// One segment row of the run, `segment#<num>`, into `state`.
fn decode_segment(
    item: &Attrs,
    num: &str,
    state: &mut RunState,
) -> std::result::Result<(), String> {
    let i: usize = num
        .parse()
        .ok()
        .filter(|i| *i < state.segments.len())
        .ok_or_else(|| format!("has a checkpoint for an unknown segment {num:?}"))?;
    let keys = &state.keys;
    state.segments[i] = match (item.get("done"), item.get("last_key")) {
        (Some(AttributeValue::Bool(true)), _) => SegmentState::Done,
        (_, Some(AttributeValue::M(key))) => {
            if keys.iter().any(|k| !key.contains_key(k)) || key.len() != keys.len() {
                return Err(format!(
                    "for segment {i} does not decode: its key does not match the key schema {keys:?}"
                ));
            }
            SegmentState::At(key.clone())
        }
        // A segment claimed in a run shared with --join, before its first
        // checkpoint (or released then): at its start.
        (None, None) if item.contains_key("run_id") => SegmentState::Start,
        _ => return Err(format!("for segment {i} does not decode")),
    };
    state.segment_counts[i] = Counts::load(|k| match item.get(k) {
        None => Ok(0),
        Some(v) => v
            .as_n()
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("for segment {i} has a malformed {k} count")),
    })?;
    state.segment_failed[i] = match item.get("failed") {
        None => 0,
        Some(v) => v
            .as_n()
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("for segment {i} has a malformed failed count"))?,
    };
    Ok(())
}

/// Pure watermark logic: which segment states follow from the acks so far.
#[derive(Debug)]
pub struct Watermark {
    next: Vec<u64>,
    pending: Vec<BTreeMap<u64, Ack>>,
}

impl Watermark {
    /// For `segments` segments, each starting at page 0.
    pub fn new(segments: usize) -> Self {
        Watermark {
            next: vec![0; segments],
            pending: (0..segments).map(|_| BTreeMap::new()).collect(),
        }
    }

    /// Takes one ack; returns the acks (in page order) whose pages are now
    /// contiguous from the segment's checkpoint, i.e. the ones to apply.
    pub fn ack(&mut self, ack: Ack) -> Vec<Ack> {
        let s = ack.segment as usize;
        self.pending[s].insert(ack.seq, ack);
        let mut ready = Vec::new();
        while let Some(a) = self.pending[s].remove(&self.next[s]) {
            self.next[s] += 1;
            ready.push(a);
        }
        ready
    }
}

/// Saves checkpoints as pages complete. Coalesces: after taking every ack
/// already queued, it writes each segment whose watermark moved once, then
/// the header; so the state-table cost is at most one write per segment per
/// round, never more than one per page.
///
/// Before any segment write of a round, the dead-letter records written so
/// far are synced to disk (workers write a page's records before they
/// acknowledge it), and a dead-letter file not yet named in the run's header
/// is named there first. A checkpoint therefore never moves past a failure
/// that is not on disk, in a file the run's state names.
///
/// In a run shared with `--join` (`shared` is this process's membership),
/// `state` holds this process's counts only (each segment's from zero):
/// segments are saved under their leases with the counts of every holder
/// (see [`crate::state::lease::Member::save`]), the dead-letter file is
/// appended to the header's list, and the header is not rewritten.
///
/// Returns the counts of the acknowledged pages (added to `state.counts`) and
/// the number of state-table writes made.
///
/// # Errors
/// When checkpoints cannot be saved, or dead letters cannot be synced: the
/// run must stop rather than go on without a way to resume.
///
/// One loop on purpose (about 90 lines): the order inside a round (take
/// acks, sync dead letters and the journal, then save) is what makes a
/// checkpoint never pass an unsynced record; split, that order would be
/// spread over helpers.
pub async fn checkpointer(
    store: Store,
    mut state: RunState,
    mut rx: mpsc::Receiver<Ack>,
    saves: Arc<std::sync::atomic::AtomicU64>,
    dead_letter: Arc<DeadLetter>,
    journal: Option<Arc<Journal>>,
    shared: Option<Arc<Member>>,
) -> Result<(RunState, u64)> {
    let mut mark = Watermark::new(state.total_segments as usize);
    // Segments that start in the middle have their resume key already saved.
    let mut writes = 0;
    let file = dead_letter.path().to_string_lossy().into_owned();
    while let Some(first) = rx.recv().await {
        let counts_before = state.counts;
        let mut dirty = BTreeSet::new();
        let mut take = |ack: Ack, state: &mut RunState, dirty: &mut BTreeSet<u32>| {
            for a in mark.ack(ack) {
                state.counts.add(&a.counts);
                state.segment_failed[a.segment as usize] += a.counts.failed;
                state.segment_counts[a.segment as usize].add(&a.counts);
                state.segments[a.segment as usize] = match a.last_key {
                    Some(k) => SegmentState::At(k),
                    None => SegmentState::Done,
                };
                dirty.insert(a.segment);
            }
        };
        take(first, &mut state, &mut dirty);
        while let Ok(more) = rx.try_recv() {
            take(more, &mut state, &mut dirty);
        }
        if dirty.is_empty() {
            continue;
        }
        let named = state.dead_letters.contains(&file);
        dead_letter.sync().await?;
        // The acknowledged pages' journal records: handed to the operating
        // system before their writes were sent, on disk before the checkpoint
        // moves past them.
        if let Some(journal) = &journal {
            journal.sync().await?;
        }
        if !named && dead_letter.has_records().await {
            // Named before any checkpoint moves past its records; the counts
            // stay those already covered by saved checkpoints.
            state.dead_letters.push(file.clone());
            match &shared {
                Some(member) => member.name_dead_letter(&file).await?,
                None => store.put_header_counting(&state, &counts_before).await?,
            }
            writes += 1;
            saves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for s in &dirty {
            let i = *s as usize;
            match &shared {
                Some(member) => {
                    let mut counts = member.base(*s);
                    counts.add(&state.segment_counts[i]);
                    let last_key = match &state.segments[i] {
                        SegmentState::At(k) => Some(k),
                        _ => None,
                    };
                    member.save(*s, last_key, &counts).await?;
                }
                None => {
                    store
                        .put_segment(
                            *s,
                            &state.run_id,
                            &state.segments[i],
                            &state.segment_counts[i],
                        )
                        .await?;
                }
            }
            writes += 1;
            saves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        state.checkpoint_at = Some(now());
        if shared.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        store.put_header(&state).await?;
        writes += 1;
        saves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Bound the cost when pages complete very fast: at most ~20 rounds a second.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((state, writes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(segment: u32, seq: u64, key: Option<&str>) -> Ack {
        Ack {
            segment,
            seq,
            last_key: key.map(|k| HashMap::from([("pk".to_string(), AttributeValue::S(k.into()))])),
            counts: Counts {
                scanned: 1,
                ..Counts::default()
            },
        }
    }

    #[test]
    fn watermark_waits_for_earlier_pages() {
        let mut w = Watermark::new(2);
        assert!(
            w.ack(ack(0, 1, Some("b"))).is_empty(),
            "page 1 done before page 0: no move"
        );
        assert!(w.ack(ack(0, 2, Some("c"))).is_empty());
        let ready = w.ack(ack(0, 0, Some("a")));
        assert_eq!(
            ready.iter().map(|a| a.seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        // Segments are independent.
        assert_eq!(w.ack(ack(1, 0, None)).len(), 1);
        assert_eq!(w.ack(ack(0, 3, None)).len(), 1);
    }

    fn header(run: &str) -> Attrs {
        let mut h = HashMap::from([
            ("sk".to_string(), AttributeValue::S("run".into())),
            (
                "schema_version".to_string(),
                AttributeValue::S(SCHEMA_VERSION.into()),
            ),
            ("run_id".to_string(), AttributeValue::S(run.into())),
            ("total_segments".to_string(), AttributeValue::N("3".into())),
            (
                "keys".to_string(),
                AttributeValue::L(vec![AttributeValue::S("pk".into())]),
            ),
            ("failed".to_string(), AttributeValue::N("1".into())),
            (fence::ATTRIBUTE.to_string(), AttributeValue::N("4".into())),
        ]);
        h.insert("scanned".into(), AttributeValue::N("40".into()));
        h
    }

    fn row(segment: u32, run: &str, at: Option<&str>, failed: u64) -> Attrs {
        let mut r = HashMap::from([
            (
                "sk".to_string(),
                AttributeValue::S(format!("segment#{segment}")),
            ),
            ("run_id".to_string(), AttributeValue::S(run.into())),
            ("failed".to_string(), AttributeValue::N(failed.to_string())),
        ]);
        match at {
            Some(k) => r.insert(
                "last_key".into(),
                AttributeValue::M(HashMap::from([(
                    "pk".to_string(),
                    AttributeValue::S(k.into()),
                )])),
            ),
            None => r.insert("done".into(), AttributeValue::Bool(true)),
        };
        r
    }

    #[test]
    fn a_run_decodes_from_its_header_and_own_segment_rows() {
        assert!(decode(&[]).unwrap().state.is_none());
        let items = vec![
            header("r1"),
            row(0, "r1", None, 2),
            row(1, "r1", Some("k7"), 1),
            row(2, "r0", Some("k9"), 5),
        ];
        let decoded = decode(&items).unwrap();
        let state = decoded.state.unwrap();
        assert_eq!(state.total_segments, 3);
        assert_eq!(state.counts.scanned, 40);
        assert_eq!(state.segments[0], SegmentState::Done);
        assert!(
            matches!(&state.segments[1], SegmentState::At(k) if k["pk"] == AttributeValue::S("k7".into()))
        );
        // Another run's row is no checkpoint of this one: its segment starts over.
        assert_eq!(state.segments[2], SegmentState::Start);
        assert_eq!(
            decoded.foreign,
            vec![ForeignRow {
                segment: "2".into(),
                run: Some("r0".into())
            }]
        );
        // Failures saved with the checkpoints count even when the header lags.
        assert_eq!(state.segment_failed, vec![2, 1, 0]);
        assert_eq!(state.counts.failed, 3);
    }

    #[test]
    fn state_that_does_not_fit_is_refused_not_guessed() {
        let no_header = decode(&[row(0, "r1", None, 0)]).unwrap_err();
        assert_eq!(no_header, "has segment checkpoints but no run header");
        let unknown = decode(&[header("r1"), row(7, "r1", None, 0)]).unwrap_err();
        assert!(unknown.contains("unknown segment \"7\""), "{unknown}");
        let mut wrong_key = row(1, "r1", Some("k"), 0);
        wrong_key.insert(
            "last_key".into(),
            AttributeValue::M(HashMap::from([(
                "id".to_string(),
                AttributeValue::S("k".into()),
            )])),
        );
        let e = decode(&[header("r1"), wrong_key]).unwrap_err();
        assert!(e.contains("does not match the key schema"), "{e}");
        let mut old = header("r1");
        old.insert("schema_version".into(), AttributeValue::S("99".into()));
        assert!(decode(&[old])
            .unwrap_err()
            .contains("layout version \"99\""));
    }
}
