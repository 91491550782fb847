//! The state table's plumbing, shared by the ledger, the checkpoints and the
//! lock: its default name and layout version, the timestamps and runner
//! identity written into it, reading a whole partition, and the item counts
//! that run headers and ledger entries store.
//!
//! Layout: one table, key `pk` (string) + `sk` (string), on-demand billing;
//! partitions `ledger#<table>` (the ledger), `run#<table>#<migration>` (a
//! run's header and segment checkpoints) and `lock#<table>#<migration>` (the
//! run's lock).

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::capacity::backoff::{retry, Attempts, Backoff};
use crate::dynamo::classify::{AwsError, Cause};
use crate::dynamo::value::Attrs;

/// Default state table name.
pub const DEFAULT_STATE_TABLE: &str = "dynbulk-state";

/// The layout version this build writes and reads.
pub const SCHEMA_VERSION: &str = "1";

/// Every item of one state-table partition, strongly consistent, retried,
/// all pages. A missing state table reads as an empty partition.
pub(crate) async fn query_state(
    client: &Client,
    state_table: &str,
    pk: &str,
) -> std::result::Result<Vec<Attrs>, AwsError> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = retry(&Backoff::default(), &mut Attempts::default(), || {
            let req = client
                .query()
                .table_name(state_table)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", AttributeValue::S(pk.to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start.clone());
            async move { req.send().await.map_err(AwsError::from_sdk) }
        })
        .await;
        let page = match page {
            Ok(p) => p,
            Err(e) if e.cause() == Cause::MissingResource => return Ok(items),
            Err(e) => return Err(e),
        };
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// Item counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Items read.
    pub scanned: u64,
    /// Items updated.
    pub updated: u64,
    /// Items deleted.
    pub deleted: u64,
    /// Items left as they were.
    pub unchanged: u64,
    /// Items dead-lettered.
    pub failed: u64,
    /// Write conflicts with concurrent application writes (each resolved by re-reading).
    pub conflicts: u64,
    /// Throttled requests.
    pub throttled: u64,
    /// Transient faults.
    pub transient: u64,
}

impl Counts {
    /// Items modified: updated plus deleted.
    pub fn modified(&self) -> u64 {
        self.updated + self.deleted
    }
}

/// The counts a state-table item stores, by attribute name.
const STORED_COUNTS: [&str; 6] = [
    "scanned",
    "updated",
    "deleted",
    "unchanged",
    "failed",
    "conflicts",
];

impl Counts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Counts) {
        self.scanned += other.scanned;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
        self.failed += other.failed;
        self.conflicts += other.conflicts;
        self.throttled += other.throttled;
        self.transient += other.transient;
    }

    /// The larger of each count (stored counts only; throttles and faults are this one's).
    pub(crate) fn max(&self, other: &Counts) -> Counts {
        Counts {
            scanned: self.scanned.max(other.scanned),
            updated: self.updated.max(other.updated),
            deleted: self.deleted.max(other.deleted),
            unchanged: self.unchanged.max(other.unchanged),
            failed: self.failed.max(other.failed),
            conflicts: self.conflicts.max(other.conflicts),
            ..*self
        }
    }

    fn stored(&self) -> [u64; 6] {
        [
            self.scanned,
            self.updated,
            self.deleted,
            self.unchanged,
            self.failed,
            self.conflicts,
        ]
    }

    /// Writes the stored counts into a state-table item (a run header, a
    /// ledger entry); throttles and transient faults are not stored.
    pub(crate) fn store(&self, item: &mut Attrs) {
        for (name, v) in STORED_COUNTS.iter().zip(self.stored()) {
            item.insert((*name).into(), AttributeValue::N(v.to_string()));
        }
    }

    /// Reads the stored counts back, each with `get` (which decides what a
    /// missing or malformed number means for its caller).
    pub(crate) fn load<E>(mut get: impl FnMut(&str) -> Result<u64, E>) -> Result<Counts, E> {
        let mut v = [0; 6];
        for (slot, name) in v.iter_mut().zip(STORED_COUNTS) {
            *slot = get(name)?;
        }
        let [scanned, updated, deleted, unchanged, failed, conflicts] = v;
        Ok(Counts {
            scanned,
            updated,
            deleted,
            unchanged,
            failed,
            conflicts,
            throttled: 0,
            transient: 0,
        })
    }
}

/// Checks a state-table item's layout version: `Err(None)` when it has
/// none, `Err(Some(v))` when it has another one.
pub(crate) fn check_layout(item: &Attrs) -> Result<(), Option<String>> {
    match item
        .get("schema_version")
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
    {
        Some(SCHEMA_VERSION) => Ok(()),
        other => Err(other.map(str::to_owned)),
    }
}

/// The login name of this process's uid, from /etc/passwd (containers and
/// cron jobs often have no USER variable).
fn user_from_passwd() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()? == uid).then(|| name.to_owned())
    })
}

/// The current time, RFC 3339, seconds precision, UTC.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `user@host` of this process, for the ledger and (later) locks.
pub fn runner_identity() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_from_passwd)
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_stored_and_read_back_by_name() {
        let c = Counts {
            scanned: 10,
            updated: 4,
            deleted: 1,
            unchanged: 3,
            failed: 2,
            conflicts: 5,
            throttled: 7,
            transient: 8,
        };
        let mut item = Attrs::new();
        c.store(&mut item);
        assert_eq!(item["failed"], AttributeValue::N("2".into()));
        assert_eq!(
            item.len(),
            6,
            "throttles and transient faults are not stored"
        );
        let back = Counts::load(|k| {
            item[k]
                .as_n()
                .unwrap()
                .parse::<u64>()
                .map_err(|_| k.to_owned())
        })
        .unwrap();
        assert_eq!(
            back,
            Counts {
                throttled: 0,
                transient: 0,
                ..c
            }
        );
    }

    #[test]
    fn layout_versions_other_than_this_one_are_refused() {
        let mut item = Attrs::new();
        assert_eq!(check_layout(&item), Err(None));
        item.insert("schema_version".into(), AttributeValue::S("2".into()));
        assert_eq!(check_layout(&item), Err(Some("2".into())));
        item.insert(
            "schema_version".into(),
            AttributeValue::S(SCHEMA_VERSION.into()),
        );
        assert_eq!(check_layout(&item), Ok(()));
    }
}
