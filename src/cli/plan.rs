//! The plan `dynbulk run` prints before it starts: the table, resume or new
//! run, page size, limits and how they were chosen, point-in-time recovery,
//! the scan's estimate.

use std::fmt;

use crate::dynamo::table::Pitr;
use crate::run::Prepared;
use crate::util::human_duration;

/// The printed plan, one line per fact in the order shown. One function on
/// purpose (about 110 lines): it reads as the output it prints, and splitting
/// it would scatter that layout over helpers.
impl fmt::Display for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = |l: Option<f64>, unit: &str| match l {
            Some(v) => format!("{v:.0} {unit}/s"),
            None => "unlimited".to_owned(),
        };
        writeln!(
            f,
            "plan for {} on {}:",
            self.migration.id(),
            self.table.name
        )?;
        let billing = if self.table.on_demand {
            "on-demand"
        } else {
            "provisioned"
        };
        let known = self.table.item_count > 0;
        if known {
            writeln!(
                f,
                "  table:          ~{} items, ~{:.1} MB (DescribeTable, refreshed about every 6 h), {billing}",
                self.table.item_count,
                self.table.size_bytes as f64 / 1e6,
            )?;
        } else {
            writeln!(
                f,
                "  table:          size not known yet (DescribeTable reports 0 items; it refreshes about every 6 h), {billing}"
            )?;
        }
        match &self.existing {
            Some(run) => {
                writeln!(
                    f,
                    "  resuming:       run {} from its checkpoints: {}/{} segments done, {} items so far over {} attempt(s), started {}",
                    run.run_id,
                    run.segments_done(),
                    run.total_segments,
                    run.counts.scanned,
                    run.attempts,
                    run.started_at
                )?;
                if let Some(given) = self.plan.segments.filter(|s| *s != run.total_segments) {
                    writeln!(
                        f,
                        "                  TotalSegments stays {} for this run (a run's segments are fixed); --segments {given} is ignored",
                        run.total_segments
                    )?;
                }
            }
            None if self.plan.segments.is_some() => {
                writeln!(f, "  segments:       {}", self.segments)?
            }
            None => writeln!(
                f,
                "  segments:       {} (default: one per {} MiB of the table, at least {}; --segments to choose)",
                self.segments,
                crate::run::plan::SEGMENT_BYTES >> 20,
                if self.plan.join { 8 * self.plan.workers } else { 4 }
            )?,
        }
        match self.page_size {
            Some(p) => writeln!(
                f,
                "  page size:      {p} items (~{:.0} bytes per item)",
                self.avg_item_bytes
            )?,
            None => writeln!(
                f,
                "  page size:      ~{} KB (items per page follow the item size)",
                crate::pipeline::inflight::PAGE_BYTES / 1024
            )?,
        }
        writeln!(f, "  read limit:     {}", limit(self.read_limit, "RCU"))?;
        if self.plan.verify {
            writeln!(f, "  write limit:    none needed: verify sends no write")?;
        } else {
            writeln!(f, "  write limit:    {}", limit(self.write_limit, "WCU"))?;
        }
        for note in &self.limit_notes {
            writeln!(f, "                  {note}")?;
        }
        match &self.pitr {
            Some(Pitr::Off) => writeln!(
                f,
                "  point-in-time recovery: off (no restore to a moment before this run; --require-pitr refuses such a table)"
            )?,
            Some(status) => writeln!(f, "  point-in-time recovery: {status}")?,
            None => {}
        }
        if known {
            write!(f, "  scan estimate:  ~{:.0} RCU", self.read_estimate)?;
            match self.read_limit {
                Some(l) => writeln!(
                    f,
                    ", ~{} at the read limit",
                    human_duration(self.read_estimate / l)
                )?,
                None => writeln!(f)?,
            }
        } else {
            writeln!(
                f,
                "  scan estimate:  unknown until DescribeTable reports the table's size"
            )?;
        }
        Ok(())
    }
}
