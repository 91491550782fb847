//! `dynbulk verify`: proves a migration is complete. It is a dry run that the
//! ledger cannot skip: the whole table is scanned within the read limit, the
//! transform applied to every item, and nothing written (no item, no lock, no
//! ledger entry, no run state). What is left is the verdict: how many items
//! would still be updated or deleted, how many would fail, whether the
//! schema step is still to do, and an exit code a CI job can test.

use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::select::{endpoint_note, hold_metrics, targets, EXIT_INTERRUPTED};
use super::{progress, signal};
use super::{
    CapacityArgs, ConnectionArgs, ErrorArgs, ObservabilityArgs, StateArgs, ThroughputArgs,
};
use crate::dynamo::client;
use crate::error::Error;
use crate::migration::Migration;
use crate::report::{Outcome, Report};
use crate::run::{self, Failure, Limit, Limits, Plan};

/// Exit code of a verify that found items the migration would still change
/// (or fail on), or a schema step still to do: 1, 2, 3 and 130 keep the
/// meanings they have for `run`.
pub(super) const EXIT_WOULD_CHANGE: u8 = 4;

pub(super) const VERIFY_ABOUT: &str = "\
Prove a migration is complete: scan the table (within --rcu-limit), apply the
migration's transform to every item, and report how many items would still be
updated or deleted and how many would fail (the transform throws, or DynamoDB
would reject the write), with a sample of keys and diffs. Run it after a
backfill, in CI or by hand, and again whenever an old application version may
have written items of the old shape.

Sends no write of any kind: no item, no lock, no ledger entry, no run state.
Items that would fail are listed in the dead-letter file (a local file, as in
a dry run; --dead-letter). It verifies whatever the ledger says (an applied
migration is verified too) and scans the whole table whatever an unfinished
run's checkpoints say. A schema step not yet in place (an index, TTL) counts as
not complete. Without --migration, every migration is verified in id order,
each on its table.

Exit codes: 0 complete, no item would change; 4 not complete: some items would
still change or fail, or the schema step is still to do (run the migration,
or fix what makes items fail, then verify again; also when --max-errors
stopped the scan early); 2 fatal error or bad usage; 130 interrupted (nothing was
written; verify again).";

/// `dynbulk verify`: the selection, connection and scan flags of `run`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// State (the ledger is read, never written).
    #[command(flatten)]
    pub state: StateArgs,
    /// Verify only this migration (see `dynbulk list`); default: every one, in id order.
    #[arg(long, value_name = "ID")]
    pub migration: Option<String>,
    /// Target table, overriding the migration's own.
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// Throughput.
    #[command(flatten)]
    pub throughput: ThroughputArgs,
    /// Capacity (only reads are consumed).
    #[command(flatten)]
    pub capacity: CapacityArgs,
    /// Observability.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
    /// Errors: items that would fail.
    #[command(flatten)]
    pub errors: ErrorArgs,
}

impl VerifyArgs {
    /// Validates the arguments into a verify's plan.
    pub fn plan(&self) -> Plan {
        let limits = self.capacity.limits();
        Plan {
            segments: self.throughput.segments,
            workers: self.throughput.workers.into(),
            item_concurrency: self.throughput.item_concurrency.into(),
            page_size: self.throughput.page_size.map(|p| p as i32),
            dry_run: true,
            rerun: true,
            verify: true,
            max_errors: Some(self.errors.max_errors),
            dead_letter: self.errors.dead_letter(),
            state_table: self.state.state_table.clone(),
            retry_budget: self.errors.retry_budget,
            limits: Limits {
                // No write is sent: an on-demand table needs no write limit.
                write: match limits.write {
                    Limit::Auto => Limit::Unlimited,
                    given => given,
                },
                ..limits
            },
            ..Plan::default()
        }
    }
}

/// Verifies the selected migrations, each on its table, in id order.
pub(super) async fn command(
    args: VerifyArgs,
    migrations: &[Arc<dyn Migration>],
) -> anyhow::Result<u8> {
    let plan = args.plan();
    if let Some(addr) = args.observability.metrics_addr {
        crate::metrics::install(addr)?;
        eprintln!("serving Prometheus metrics at http://{addr}/metrics");
    }
    let targets = targets(args.migration.as_deref(), args.table.as_deref(), migrations)?;
    let client = client::build(&args.connection.connection())
        .await
        .map_err(|e| anyhow!(e))?;
    let endpoint = endpoint_note(&args.connection);
    let shutdown = CancellationToken::new();
    signal::stop_on_signals(shutdown.clone(), EXIT_INTERRUPTED);
    println!("VERIFY: every item is scanned and transformed; no write of any kind will be sent");
    let mut code = 0;
    for (migration, table) in targets {
        let id = migration.id().to_owned();
        let context = || format!("verifying migration {id} on table {table}{endpoint} failed");
        let prepared = run::prepare(&client, migration, &table, &plan)
            .await
            .with_context(context)?;
        print!("{prepared}");
        let (display, observer) = progress::Display::start(args.observability.progress, &id);
        let result = run::execute(&client, &prepared, shutdown.clone(), observer).await;
        display.finish();
        let (report, cut_short) = match result {
            Ok(report) => (report, false),
            Err(Failure {
                error: Error::ErrorBudget { .. },
                report: Some(report),
            }) => (*report, true),
            Err(failure) => {
                if let Some(report) = &failure.report {
                    print!("{report}");
                }
                hold_metrics(&args.observability).await;
                return Err(anyhow::Error::new(failure.error)).with_context(context);
            }
        };
        print!("{report}");
        if report.outcome == Outcome::Stopped && !cut_short {
            println!("interrupted: nothing was written; run the same command to verify again");
            hold_metrics(&args.observability).await;
            return Ok(EXIT_INTERRUPTED);
        }
        let verdict = Verdict::of(&report, cut_short.then_some(plan.max_errors).flatten());
        println!("{verdict}");
        if !verdict.complete() {
            code = EXIT_WOULD_CHANGE;
        }
    }
    hold_metrics(&args.observability).await;
    Ok(code)
}

/// What a verify found for one migration on one table.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    migration: String,
    table: String,
    scanned: u64,
    updates: u64,
    deletes: u64,
    /// Items whose transform fails or whose write DynamoDB would reject:
    /// not migrated, so the migration is not complete on them either.
    fails: u64,
    /// The schema step's dry-run answer when it is still to do.
    schema_pending: Option<String>,
    /// `--max-errors` stopped the scan early: the counts are a lower bound.
    stopped_at_errors: Option<u64>,
}

impl Verdict {
    fn of(report: &Report, stopped_at_errors: Option<u64>) -> Self {
        let c = &report.counts;
        Verdict {
            migration: report.migration.clone(),
            table: report.table.clone(),
            scanned: c.scanned,
            updates: c.updated,
            deletes: c.deleted,
            fails: c.failed,
            // A dry run's schema step says "would ..." for what it would do,
            // and "already ..." when it is in place (`dynamo::schema::apply`).
            schema_pending: report.schema.clone().filter(|s| s.starts_with("would ")),
            stopped_at_errors,
        }
    }

    fn complete(&self) -> bool {
        self.updates + self.deletes + self.fails == 0
            && self.schema_pending.is_none()
            && self.stopped_at_errors.is_none()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (id, table) = (&self.migration, &self.table);
        if self.complete() {
            return write!(
                f,
                "verified {id} on {table}: complete, no item would change ({} items scanned)",
                self.scanned
            );
        }
        let changes = self.updates + self.deletes;
        write!(
            f,
            "verified {id} on {table}: NOT complete: {changes} items would still change \
             ({} updates, {} deletes), {} would fail",
            self.updates, self.deletes, self.fails
        )?;
        if let Some(step) = &self.schema_pending {
            write!(f, "; schema step: {step}")?;
        }
        if let Some(max) = self.stopped_at_errors {
            write!(
                f,
                "; stopped early, past --max-errors {max} failing items (the counts cover only what was scanned)"
            )?;
        }
        if changes > 0 || self.schema_pending.is_some() {
            write!(
                f,
                "; run it: dynbulk run --migration {id} --table {table} (--rerun if the ledger says applied)"
            )?;
        }
        if self.fails > 0 {
            write!(f, "; the items that would fail are in the dead-letter file")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(updates: u64, deletes: u64, fails: u64) -> Verdict {
        Verdict {
            migration: "20250101_x".into(),
            table: "orders".into(),
            scanned: 100,
            updates,
            deletes,
            fails,
            schema_pending: None,
            stopped_at_errors: None,
        }
    }

    #[test]
    fn complete_only_when_nothing_would_change_fail_or_stay_to_do() {
        assert!(verdict(0, 0, 0).complete());
        assert!(verdict(0, 0, 0)
            .to_string()
            .contains("complete, no item would change (100 items scanned)"));
        for v in [verdict(1, 0, 0), verdict(0, 1, 0), verdict(0, 0, 1)] {
            assert!(!v.complete(), "{v:?}");
            assert!(v.to_string().contains("NOT complete"), "{v}");
        }
        let v = Verdict {
            schema_pending: Some("would enable TTL on expiresAt".into()),
            ..verdict(0, 0, 0)
        };
        assert!(!v.complete());
        assert!(
            v.to_string().contains("schema step: would enable TTL"),
            "{v}"
        );
        let v = Verdict {
            stopped_at_errors: Some(10),
            ..verdict(0, 0, 11)
        };
        assert!(!v.complete());
        assert!(v.to_string().contains("--max-errors 10"), "{v}");
    }

    #[test]
    fn the_verdict_counts_updates_and_deletes_as_changes() {
        let text = verdict(10, 2, 3).to_string();
        assert!(
            text.contains("12 items would still change (10 updates, 2 deletes), 3 would fail"),
            "{text}"
        );
        assert!(text.contains("dynbulk run --migration 20250101_x --table orders"));
    }

    #[test]
    fn a_verify_plan_is_a_dry_run_the_ledger_cannot_skip() {
        use clap::Parser;
        let cli = super::super::Cli::try_parse_from([
            "dynbulk",
            "verify",
            "--migration",
            "20250101_x",
            "--rcu-limit",
            "100",
        ])
        .unwrap();
        let super::super::Command::Verify(args) = cli.command else {
            panic!("expected verify")
        };
        let plan = args.plan();
        assert!(plan.verify && plan.dry_run && plan.rerun);
        assert!(!plan.join && !plan.restart);
        assert_eq!(plan.limits.read, Limit::Units(100.0));
        // No write is sent: no write limit is needed, even on on-demand tables.
        assert_eq!(plan.limits.write, Limit::Unlimited);
    }
}
