//! Where `dynbulk replay` stands in a dead-letter file: one state-table row
//! per (table, migration, file), so that a replay stopped at any instant
//! resumes after the last records it finished and never counts a recovered
//! item twice in the ledger.
//!
//! Layout: partition `replay#<table>#<migration>`, sort key the file's
//! absolute path. The row holds the next line to replay, what the lines
//! before it came to, and the replay's id (which the ledger remembers once
//! it has taken the replay's counts, see [`crate::state::ledger::Ledger::recover`]).
//! Written under the migration's lock, fenced like every state write; deleted
//! once the ledger has the counts.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::dynamo::classify::AwsError;
use crate::error::{Error, Result};
use crate::state::fence::{self, Fence};
use crate::state::store::{now, SCHEMA_VERSION};

/// What the records of one file before `next_line` came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// The replay's id: random, kept across resumes.
    pub id: String,
    /// The first line (1-based) not yet replayed.
    pub next_line: u64,
    /// Items written (updated) by the replay.
    pub updated: u64,
    /// Items deleted by the replay.
    pub deleted: u64,
    /// Items already as the migration wants them.
    pub unchanged: u64,
    /// Keys whose item no longer exists (or no longer matches the scan filter).
    pub gone: u64,
    /// Items that failed again (recorded in the replay's dead-letter file).
    pub failed: u64,
    /// Records skipped because their key was replayed earlier in the file.
    pub repeated: u64,
}

impl Position {
    /// A new replay from the first line.
    pub fn start() -> Self {
        Position {
            id: format!("{:016x}", rand::random::<u64>()),
            next_line: 1,
            ..Default::default()
        }
    }

    /// Items no longer failing: written, deleted, or already right.
    pub fn recovered(&self) -> u64 {
        self.updated + self.deleted + self.unchanged
    }
}

/// The replay rows of one migration on one table.
pub struct Rows {
    client: Client,
    state_table: String,
    pk: String,
}

const COUNTS: [&str; 6] = [
    "updated",
    "deleted",
    "unchanged",
    "gone",
    "failed",
    "repeated",
];

impl Rows {
    /// The rows of `migration` on `table` in `state_table`.
    pub fn new(client: Client, state_table: &str, table: &str, migration: &str) -> Self {
        Rows {
            client,
            state_table: state_table.to_owned(),
            pk: format!("replay#{table}#{migration}"),
        }
    }

    fn key(&self, file: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".into(), AttributeValue::S(self.pk.clone())),
            ("sk".into(), AttributeValue::S(file.to_owned())),
        ])
    }

    /// Where the replay of `file` stands, if one was started.
    ///
    /// # Errors
    /// When the state table cannot be read.
    pub async fn load(&self, file: &str) -> Result<Option<Position>> {
        let what = || {
            format!(
                "reading the replay position of {file} in state table {}",
                self.state_table
            )
        };
        let item = self
            .client
            .get_item()
            .table_name(&self.state_table)
            .set_key(Some(self.key(file)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws(what(), AwsError::from_sdk(e)))?
            .item;
        let Some(item) = item else { return Ok(None) };
        let n = |k: &str| {
            item.get(k)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let [updated, deleted, unchanged, gone, failed, repeated] = COUNTS.map(n);
        Ok(Some(Position {
            id: item
                .get("replay_id")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default(),
            next_line: n("next_line").max(1),
            updated,
            deleted,
            unchanged,
            gone,
            failed,
            repeated,
        }))
    }

    /// Saves where the replay of `file` stands, under `fence`.
    ///
    /// # Errors
    /// When the state table cannot be written, or the lock was lost.
    pub async fn save(&self, file: &str, at: &Position, fence: &Fence) -> Result<()> {
        let mut item = self.key(file);
        let n = |v: u64| AttributeValue::N(v.to_string());
        item.insert("replay_id".into(), AttributeValue::S(at.id.clone()));
        item.insert("next_line".into(), n(at.next_line));
        let values = [
            at.updated,
            at.deleted,
            at.unchanged,
            at.gone,
            at.failed,
            at.repeated,
        ];
        for (name, v) in COUNTS.into_iter().zip(values) {
            item.insert(name.into(), n(v));
        }
        item.insert("updated_at".into(), AttributeValue::S(now()));
        item.insert(
            "schema_version".into(),
            AttributeValue::S(SCHEMA_VERSION.into()),
        );
        let what = format!(
            "saving the replay position of {file} in state table {}",
            self.state_table
        );
        fence::put(&self.client, &self.state_table, item, fence, &what).await
    }

    /// Deletes the row of a finished replay of `file`.
    ///
    /// # Errors
    /// As [`Rows::save`].
    pub async fn delete(&self, file: &str, fence: &Fence) -> Result<()> {
        let what = format!(
            "deleting the replay position of {file} in state table {}",
            self.state_table
        );
        fence::delete(
            &self.client,
            &self.state_table,
            self.key(file),
            fence,
            &what,
        )
        .await
    }
}
