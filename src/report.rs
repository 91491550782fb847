//! Counting what a run did: live atomic counters shared by all tasks, and the
//! [`Report`] snapshot a run returns (also when it fails).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Live counters, shared by segment tasks and workers.
#[derive(Debug, Default)]
pub struct Stats {
    /// Items read by the scan.
    pub scanned: AtomicU64,
    /// Items updated (or that would be, in a dry run).
    pub updated: AtomicU64,
    /// Items deleted (or that would be).
    pub deleted: AtomicU64,
    /// Items the transform left as they were.
    pub unchanged: AtomicU64,
    /// Items that failed and went to the dead-letter file.
    pub failed: AtomicU64,
    /// Conditional writes rejected because the application changed the item.
    pub conflicts: AtomicU64,
    /// Throttled requests (each retried).
    pub throttled: AtomicU64,
    /// Transient faults (each retried).
    pub transient: AtomicU64,
    /// Scan pages read.
    pub pages: AtomicU64,
    /// Segments whose scan finished.
    pub segments_done: AtomicU64,
    /// Estimated write units of the planned writes, thousandths (dry runs report it).
    pub write_estimate_milli: AtomicU64,
    /// Checkpoint writes made so far.
    pub checkpoint_saves: std::sync::Arc<AtomicU64>,
    samples: Mutex<Vec<Sample>>,
}

/// A snapshot of a running migration, for progress displays.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Counts of this attempt.
    pub counts: Counts,
    /// Items already done by earlier attempts of this run.
    pub done_before: u64,
    /// Items in the table per DescribeTable (0 when unknown).
    pub items_estimated: u64,
    /// TotalSegments.
    pub segments_total: u64,
    /// Segments finished (earlier attempts included).
    pub segments_done: u64,
    /// Time since this attempt's data step started.
    pub elapsed: Duration,
    /// Read units consumed in this attempt.
    pub read_consumed: f64,
    /// Write units consumed in this attempt.
    pub write_consumed: f64,
    /// Read limit, units per second.
    pub read_limit: Option<f64>,
    /// Write limit, units per second.
    pub write_limit: Option<f64>,
    /// Working read rate.
    pub read_rate: Option<f64>,
    /// Working write rate.
    pub write_rate: Option<f64>,
}

impl Progress {
    /// Items that reached an outcome in this attempt.
    pub fn processed(&self) -> u64 {
        let c = &self.counts;
        c.updated + c.deleted + c.unchanged + c.failed
    }

    /// Items processed per second in this attempt.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.processed() as f64 / s
        } else {
            0.0
        }
    }

    /// Items done over the run (earlier attempts included).
    pub fn done(&self) -> u64 {
        self.done_before + self.processed()
    }

    /// Time left at the current rate, when the table's size is known.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        if self.items_estimated == 0 || rate <= 0.0 {
            return None;
        }
        let left = self.items_estimated.saturating_sub(self.done()) as f64;
        Some(Duration::from_secs_f64(left / rate))
    }
}

/// Receives a [`Progress`] about once a second while a run goes on.
pub type Observer = std::sync::Arc<dyn Fn(&Progress) + Send + Sync>;

/// How many sample diffs a run keeps for its report.
pub const MAX_SAMPLES: usize = 5;

/// One item's change, for dry-run output: key and changed attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The item's key, as DynamoDB JSON.
    pub key: String,
    /// `Delete`, or the changed attributes: (name, before, after) as DynamoDB JSON,
    /// `None` meaning absent.
    pub change: SampleChange,
}

/// What a sample shows.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleChange {
    /// The item is (or would be) deleted.
    Delete,
    /// Attributes before -> after.
    Update(Vec<(String, Option<String>, Option<String>)>),
}

impl Stats {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Keeps `sample` if fewer than [`MAX_SAMPLES`] are kept.
    pub fn offer_sample(&self, sample: impl FnOnce() -> Sample) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < MAX_SAMPLES {
            s.push(sample());
        }
    }

    /// A snapshot of the counts.
    pub fn counts(&self) -> Counts {
        Counts {
            scanned: self.scanned.load(Relaxed),
            updated: self.updated.load(Relaxed),
            deleted: self.deleted.load(Relaxed),
            unchanged: self.unchanged.load(Relaxed),
            failed: self.failed.load(Relaxed),
            conflicts: self.conflicts.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            transient: self.transient.load(Relaxed),
        }
    }

    /// Estimated write units of the planned writes.
    pub fn write_estimate(&self) -> f64 {
        self.write_estimate_milli.load(Relaxed) as f64 / 1000.0
    }

    /// The samples kept so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub use crate::state::store::Counts;

/// How a migration's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Already applied to this table; not run again.
    Skipped,
    /// Every item processed; none failed.
    Done,
    /// Every item processed; some failed (see the dead-letter file).
    DoneWithFailures,
    /// Stopped before the end (shutdown, error budget, fatal error).
    Stopped,
}

/// What one migration's run achieved. Returned on failure too.
#[derive(Debug, Clone)]
pub struct Report {
    /// Migration id.
    pub migration: String,
    /// Target table.
    pub table: String,
    /// Whether no write was sent.
    pub dry_run: bool,
    /// Whether this was `dynbulk verify` (a dry run that says so).
    pub verify: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// Item counts of this attempt.
    pub counts: Counts,
    /// Counts of the whole run over all its attempts (acknowledged pages), when checkpointed.
    pub total: Option<Counts>,
    /// State-table writes made for checkpoints (not charged to the data table's budget).
    pub state_writes: u64,
    /// What the schema step did, if the migration has one.
    pub schema: Option<String>,
    /// A few example changes.
    pub samples: Vec<Sample>,
    /// The dead-letter files of every attempt of the run that had a failure
    /// (earlier attempts' first), this one's included.
    pub dead_letters: Vec<PathBuf>,
    /// The journals of every attempt of the run that wrote (what `dynbulk
    /// revert` puts back).
    pub journals: Vec<PathBuf>,
    /// The replays recorded in the run's state between its attempts (their
    /// ids, which the ledger keeps so that none is counted twice).
    pub replays: Vec<String>,
    /// Wall-clock duration of the data step.
    pub elapsed: Duration,
    /// Capacity limits and use.
    pub capacity: Capacity,
}

/// Capacity limits and what was used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capacity {
    /// Read ceiling (units/s); `None` unlimited.
    pub read_limit: Option<f64>,
    /// Write ceiling (units/s); `None` unlimited.
    pub write_limit: Option<f64>,
    /// Read units consumed (as DynamoDB reported them).
    pub read_consumed: f64,
    /// Write units consumed.
    pub write_consumed: f64,
    /// Working read rate at the end (below the ceiling after throttling).
    pub read_rate: Option<f64>,
    /// Working write rate at the end.
    pub write_rate: Option<f64>,
    /// Estimated write units of the planned writes (what a dry run would cost to apply).
    pub write_estimate: f64,
    /// Largest Scan page size used; `None`: pages of about 64 KB.
    pub page_size: Option<i32>,
}

/// The printed report, one line per fact in the order shown. One function on
/// purpose (about 115 lines): it reads as the output it prints, and splitting
/// it would scatter that layout over helpers.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        let how = match (self.outcome, self.dry_run) {
            (Outcome::Skipped, _) => "already applied, skipped (pass --rerun to run it again)",
            (_, true) if self.verify => "verified, no writes sent",
            (_, true) => "dry run, no writes sent",
            (Outcome::Done, _) => "done",
            (Outcome::DoneWithFailures, _) => "done, some items failed",
            (Outcome::Stopped, _) => "stopped before the end",
        };
        writeln!(f, "{} on {}: {}", self.migration, self.table, how)?;
        if self.outcome == Outcome::Skipped {
            return Ok(());
        }
        if let Some(s) = &self.schema {
            writeln!(f, "  schema step:    {s}")?;
        }
        let (u, d) = if self.dry_run {
            ("would update", "would delete")
        } else {
            ("updated", "deleted")
        };
        writeln!(f, "  items scanned:  {}", c.scanned)?;
        writeln!(f, "  {u}:{:w$}{}", "", c.updated, w = 15 - u.len())?;
        writeln!(f, "  {d}:{:w$}{}", "", c.deleted, w = 15 - d.len())?;
        writeln!(f, "  unchanged:      {}", c.unchanged)?;
        writeln!(f, "  errors:         {}", c.failed)?;
        writeln!(f, "  conflicts:      {}", c.conflicts)?;
        writeln!(f, "  throttled:      {}", c.throttled)?;
        writeln!(f, "  retried faults: {}", c.transient)?;
        let cap = &self.capacity;
        let per_sec = |units: f64| {
            let s = self.elapsed.as_secs_f64();
            if s > 0.0 {
                units / s
            } else {
                0.0
            }
        };
        let limit = |l: Option<f64>| {
            l.map(|v| format!("limit {v:.0}/s"))
                .unwrap_or_else(|| "unlimited".into())
        };
        writeln!(
            f,
            "  read capacity:  {:.1} RCU ({:.1}/s, {})",
            cap.read_consumed,
            per_sec(cap.read_consumed),
            limit(cap.read_limit)
        )?;
        if self.dry_run {
            write!(
                f,
                "  write estimate: ~{:.0} WCU to apply",
                cap.write_estimate
            )?;
            match cap.write_limit {
                Some(l) => writeln!(
                    f,
                    ", ~{} at {l:.0} WCU/s",
                    crate::util::human_duration(cap.write_estimate / l)
                )?,
                None => writeln!(f)?,
            }
        } else {
            writeln!(
                f,
                "  write capacity: {:.1} WCU ({:.1}/s, {})",
                cap.write_consumed,
                per_sec(cap.write_consumed),
                limit(cap.write_limit)
            )?;
        }
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            c.scanned as f64 / secs
        } else {
            0.0
        };
        writeln!(f, "  duration:       {secs:.1}s ({rate:.0} items/s)")?;
        if let Some(t) = &self.total {
            writeln!(
                f,
                "  run total:      {} scanned, {} updated, {} deleted, {} unchanged, {} failed (all attempts)",
                t.scanned, t.updated, t.deleted, t.unchanged, t.failed
            )?;
        }
        if self.state_writes > 0 {
            writeln!(
                f,
                "  checkpoints:    {} state-table writes",
                self.state_writes
            )?;
        }
        for (i, p) in self.dead_letters.iter().enumerate() {
            let label = if i == 0 { "dead letters:" } else { "" };
            writeln!(f, "  {label:<16}{}", p.display())?;
        }
        for (i, p) in self.journals.iter().enumerate() {
            let label = if i == 0 { "journal:" } else { "" };
            writeln!(f, "  {label:<16}{}", p.display())?;
        }
        if self.dry_run && !self.samples.is_empty() {
            writeln!(f, "  sample changes:")?;
            for s in &self.samples {
                match &s.change {
                    SampleChange::Delete => writeln!(f, "    {}: delete", s.key)?,
                    SampleChange::Update(attrs) => {
                        writeln!(f, "    {}:", s.key)?;
                        for (name, before, after) in attrs {
                            writeln!(
                                f,
                                "      {name}: {} -> {}",
                                before.as_deref().unwrap_or("(absent)"),
                                after.as_deref().unwrap_or("(removed)")
                            )?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
