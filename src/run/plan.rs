//! What a run is asked to do ([`Plan`], from the command line or a program)
//! and what it will do once the table has been looked at ([`Prepared`], made
//! by `prepare`): the limits resolved, the page size chosen, the scan's cost
//! estimated, and the unfinished run it resumes. Everything downstream takes
//! the [`Prepared`] plan.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::capacity::backoff::Backoff;
use crate::dynamo::table::{Pitr, TableInfo};
use crate::error::Error;
use crate::migration::Migration;
use crate::state::checkpoint::RunState;
use crate::state::lock;

/// Everything a run needs besides the migration and the table; validated by the CLI.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Parallel scan TotalSegments; `None`: [`default_segments`] for the
    /// table's size.
    pub segments: Option<u32>,
    /// Worker tasks applying the transform and writing.
    pub workers: usize,
    /// Items of one page each worker processes at once.
    pub item_concurrency: usize,
    /// Largest Scan `Limit`; pages are otherwise sized to about
    /// [`crate::pipeline::inflight::PAGE_BYTES`] from the items seen.
    pub page_size: Option<i32>,
    /// Bytes of scanned items held in memory at most (pages being scanned,
    /// queued, and worked on); [`crate::pipeline::inflight::BUDGET_BYTES`] by default.
    pub inflight_bytes: usize,
    /// Send no write of any kind.
    pub dry_run: bool,
    /// Run even when the ledger says applied.
    pub rerun: bool,
    /// Stop once more than this many items failed.
    pub max_errors: Option<u64>,
    /// Dead-letter file.
    pub dead_letter: PathBuf,
    /// Where the journal of what every write changed goes (for `dynbulk revert`).
    pub journal: JournalPlace,
    /// State table name.
    pub state_table: String,
    /// Retry policy (delays; its `budget` is replaced by `retry_budget` on the data path).
    pub backoff: Backoff,
    /// How long an item write, a re-read or a scan page is retried while
    /// throttled or failing transiently; then the item is dead-lettered (a
    /// scan page stops the run, resumably).
    pub retry_budget: std::time::Duration,
    /// Read and write capacity limits.
    pub limits: Limits,
    /// Discard an unfinished run's checkpoints and start over.
    pub restart: bool,
    /// The optimistic-locking version attribute, overriding the migration's
    /// own ([`Migration::version_attribute`]).
    pub version_attribute: Option<String>,
    /// How long the run's lock lease lasts without a renewal; another runner
    /// takes the lock over after seeing it unrenewed this long.
    pub lease: std::time::Duration,
    /// Share the run with other processes given the same command (`--join`):
    /// start it if none is in progress, else join it; segments are leased.
    pub join: bool,
    /// Verify instead of run (`dynbulk verify`): scan the whole table and
    /// apply the transform to report what would still change, whatever the
    /// ledger says (an applied migration is verified too) and whatever an
    /// unfinished run's checkpoints say. Implies `dry_run`: no write of any
    /// kind, no lock, no state.
    pub verify: bool,
    /// Refuse to write to a table whose point-in-time recovery is not known
    /// to be on (`--require-pitr`); a dry run never refuses.
    pub require_pitr: bool,
}

/// Where a run keeps its journal: one file per process and attempt, named
/// in the run's state before its first write.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalPlace {
    /// In the dead-letter file's directory (the default).
    NextToDeadLetter,
    /// In this directory (`--journal DIR`).
    Dir(PathBuf),
    /// No journal (`--no-journal`): the run cannot be reverted.
    Off,
}

impl Plan {
    /// The directory of the run's journal; `None` without one.
    pub fn journal_dir(&self) -> Option<PathBuf> {
        match &self.journal {
            JournalPlace::Off => None,
            JournalPlace::Dir(dir) => Some(dir.clone()),
            JournalPlace::NextToDeadLetter => Some(
                self.dead_letter
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_owned),
            ),
        }
    }
}

/// One capacity limit as the operator gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Not given: a share of a provisioned table's capacity; refused on on-demand tables.
    Auto,
    /// Units per second.
    Units(f64),
    /// No limit (explicitly asked for).
    Unlimited,
}

/// Read and write limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Read capacity units per second.
    pub read: Limit,
    /// Write capacity units per second.
    pub write: Limit,
}

/// Default `--retry-budget`: minutes, since a partition the application keeps
/// hot throttles for that long, and the limiter already slows the run.
pub const DEFAULT_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(300);

/// Table bytes per scan segment when `--segments` is not given.
pub const SEGMENT_BYTES: u64 = 256 << 20;

/// Most segments the default gives (a 25 TB table); `--segments` may ask
/// for up to DynamoDB's 1,000,000.
pub const MAX_DEFAULT_SEGMENTS: u64 = 100_000;

/// TotalSegments when `--segments` is not given: one segment per
/// [`SEGMENT_BYTES`] of the table (DescribeTable's size), so that the longest
/// segment is a small part of a large table; at least 4; and in a run shared
/// with `--join`, at least 8 x `workers` (each process scans up to `workers`
/// segments at once, so 4 processes have two rounds each to claim and a
/// process that finishes early finds more work).
pub fn default_segments(table_bytes: u64, join: bool, workers: usize) -> u32 {
    let by_size = table_bytes.div_ceil(SEGMENT_BYTES);
    let floor = if join { 8 * workers as u64 } else { 4 };
    by_size.max(floor).min(MAX_DEFAULT_SEGMENTS.max(floor)) as u32
}

/// Share of a provisioned table's capacity used when no limit is given: the
/// application keeps the other half.
pub const DEFAULT_PROVISIONED_SHARE: f64 = 0.5;

impl Default for Plan {
    fn default() -> Self {
        Plan {
            segments: None,
            workers: 8,
            item_concurrency: 8,
            page_size: None,
            inflight_bytes: crate::pipeline::inflight::BUDGET_BYTES,
            dry_run: false,
            rerun: false,
            max_errors: Some(1000),
            dead_letter: PathBuf::from("dynbulk-dead-letter.jsonl"),
            journal: JournalPlace::NextToDeadLetter,
            state_table: crate::state::store::DEFAULT_STATE_TABLE.into(),
            backoff: Backoff::default(),
            retry_budget: DEFAULT_RETRY_BUDGET,
            limits: Limits {
                read: Limit::Auto,
                write: Limit::Auto,
            },
            restart: false,
            version_attribute: None,
            lease: lock::DEFAULT_LEASE,
            join: false,
            verify: false,
            require_pitr: false,
        }
    }
}

/// A run's plan after looking at the table: limits resolved, page size chosen,
/// cost estimated. Nothing has been written when this exists.
#[derive(Clone)]
pub struct Prepared {
    /// The operator's plan this was prepared from.
    pub plan: Plan,
    /// The migration.
    pub migration: Arc<dyn Migration>,
    /// The target table's description.
    pub table: TableInfo,
    /// Read ceiling, units per second; `None` is unlimited.
    pub read_limit: Option<f64>,
    /// Write ceiling, units per second; `None` is unlimited.
    pub write_limit: Option<f64>,
    /// How each limit was chosen, for the operator.
    pub limit_notes: Vec<String>,
    /// Scan `Limit`; `None` is 1 MB pages.
    pub page_size: Option<i32>,
    /// Average item size used for page sizing and estimates.
    pub avg_item_bytes: f64,
    /// TotalSegments of a new run (the plan's); a resumed run keeps its own.
    pub segments: u32,
    /// Estimated read units for the whole scan.
    pub read_estimate: f64,
    /// The unfinished run this one resumes, if any (read-only look, already validated).
    pub existing: Option<RunState>,
    /// With --restart: the stored state that could not be read and will be discarded.
    pub unreadable_state: Option<String>,
    /// The table's point-in-time recovery; `None` when not looked up (a verify).
    pub pitr: Option<Pitr>,
}

impl Prepared {
    /// The plan for the run whose state is `state`: a resumed run keeps the
    /// TotalSegments it started with, whatever the plan asked for.
    pub fn for_run(&self, state: Option<&RunState>) -> Cow<'_, Prepared> {
        match state {
            Some(st) if st.total_segments != self.segments => Cow::Owned(Prepared {
                segments: st.total_segments,
                ..self.clone()
            }),
            _ => Cow::Borrowed(self),
        }
    }
}

/// One limit as the run applies it: units per second (`None`: unlimited),
/// and a note for the operator when it was derived from the table.
///
/// # Errors
/// [`Error::Usage`] for an on-demand table (or one without provisioned
/// capacity) when the operator gave no limit: there is no safe rate to derive.
pub fn resolve_limit(
    limit: Limit,
    table: &TableInfo,
    provisioned: Option<i64>,
    unit: &str,
    flag: &str,
) -> Result<(Option<f64>, Option<String>), Error> {
    match limit {
        Limit::Units(u) => Ok((Some(u), None)),
        Limit::Unlimited => Ok((None, None)),
        Limit::Auto => match provisioned {
            Some(p) if !table.on_demand => {
                let v = (p as f64 * DEFAULT_PROVISIONED_SHARE).max(1.0);
                let note = format!(
                    "{unit}: {:.0}% of the table's provisioned {p} {unit} (pass {flag} to change)",
                    DEFAULT_PROVISIONED_SHARE * 100.0
                );
                Ok((Some(v), Some(note)))
            }
            _ => Err(Error::Usage(format!(
                "table {} is on-demand (PAY_PER_REQUEST), so dynbulk cannot derive a safe rate from it; \
                 pass --rcu-limit and --wcu-limit (capacity units per second), or --unlimited for a table nobody else uses",
                table.name
            ))),
        },
    }
}

/// The average item size, from DescribeTable's counts; 1 KB until they exist
/// (DynamoDB refreshes them about every six hours).
pub fn avg_item_bytes(table: &TableInfo) -> f64 {
    if table.item_count > 0 && table.size_bytes > 0 {
        table.size_bytes as f64 / table.item_count as f64
    } else {
        1024.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(on_demand: bool, items: u64, bytes: u64) -> TableInfo {
        TableInfo {
            name: "orders".into(),
            on_demand,
            item_count: items,
            size_bytes: bytes,
            ..TableInfo::default()
        }
    }

    #[test]
    fn an_explicit_limit_is_used_as_given_and_unlimited_is_none() {
        let t = table(true, 0, 0);
        assert_eq!(
            resolve_limit(Limit::Units(250.0), &t, None, "RCU", "--rcu-limit").unwrap(),
            (Some(250.0), None)
        );
        assert_eq!(
            resolve_limit(Limit::Unlimited, &t, None, "RCU", "--rcu-limit").unwrap(),
            (None, None)
        );
    }

    #[test]
    fn no_limit_is_half_the_provisioned_capacity_and_says_so() {
        let t = table(false, 0, 0);
        let (limit, note) =
            resolve_limit(Limit::Auto, &t, Some(300), "WCU", "--wcu-limit").unwrap();
        assert_eq!(limit, Some(150.0));
        assert_eq!(
            note.unwrap(),
            "WCU: 50% of the table's provisioned 300 WCU (pass --wcu-limit to change)"
        );
        // Never below one unit per second.
        let (limit, _) = resolve_limit(Limit::Auto, &t, Some(1), "WCU", "--wcu-limit").unwrap();
        assert_eq!(limit, Some(1.0));
    }

    #[test]
    fn no_limit_on_an_on_demand_table_is_refused() {
        let t = table(true, 0, 0);
        let e = resolve_limit(Limit::Auto, &t, Some(300), "RCU", "--rcu-limit").unwrap_err();
        assert!(matches!(e, Error::Usage(_)));
        assert!(e.to_string().contains("table orders is on-demand"), "{e}");
    }

    #[test]
    fn the_average_item_is_1_kb_until_describe_table_counts_exist() {
        assert_eq!(avg_item_bytes(&table(false, 0, 0)), 1024.0);
        assert_eq!(avg_item_bytes(&table(false, 100, 0)), 1024.0);
        assert_eq!(avg_item_bytes(&table(false, 100, 50_000)), 500.0);
    }

    #[test]
    fn default_segments_grow_with_the_table_and_with_join() {
        const GIB: u64 = 1 << 30;
        // Small tables: the old default, or enough for several processes.
        assert_eq!(default_segments(0, false, 8), 4);
        assert_eq!(default_segments(GIB, false, 8), 4);
        assert_eq!(default_segments(0, true, 8), 64);
        assert_eq!(default_segments(0, true, 2), 16);
        // One per 256 MiB beyond that: 400 GB (400 million 1 KB items) is 1,600.
        assert_eq!(default_segments(400 * GIB, false, 8), 1_600);
        assert_eq!(default_segments(400 * GIB, true, 8), 1_600);
        assert_eq!(default_segments(256 * (1 << 20) + 1, false, 1), 4);
        // Capped for huge tables (--segments may still ask for more).
        assert_eq!(default_segments(1 << 50, false, 8), 100_000);
    }
}
