//! `dynbulk revert`: its flags, the confirmation, and the report.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{parse_duration, signal, CapacityArgs, ConnectionArgs, StateArgs};
use crate::dynamo::client;
use crate::migration::Migration;
use crate::run::revert::{self, RevertPlan};

/// `dynbulk revert`.
#[derive(Debug, Args)]
pub struct RevertArgs {
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// State.
    #[command(flatten)]
    pub state: StateArgs,
    /// The migration whose last run is reverted.
    #[arg(long, value_name = "ID")]
    pub migration: String,
    /// The table, when not the migration's own.
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// Journal files to read (repeat for several, e.g. one per machine of a
    /// run shared with --join); default: those the ledger names.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub journal: Vec<PathBuf>,
    /// Read the items and say what would be restored; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (in scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Restores in flight at once, 1 to 1024.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024), help_heading = "Throughput")]
    pub concurrency: u16,
    /// Capacity.
    #[command(flatten)]
    pub capacity: CapacityArgs,
    /// How long a restore that keeps being throttled or failing transiently
    /// is retried before it is reported as failed, e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_duration, help_heading = "Errors")]
    pub retry_budget: std::time::Duration,
    /// Refuse to write to a table whose point-in-time recovery is not known to
    /// be on (off, or unknown to the endpoint): exit 2, nothing written. A
    /// dry run never refuses.
    #[arg(long)]
    pub require_pitr: bool,
    /// The lock's lease (for tests).
    #[arg(long, hide = true, env = "DYNBULK_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub lease: std::time::Duration,
}

impl RevertArgs {
    fn plan(&self, table: String) -> RevertPlan {
        RevertPlan {
            table,
            migration: self.migration.clone(),
            journals: self
                .journal
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                .collect(),
            state_table: self.state.state_table.clone(),
            limits: self.capacity.limits(),
            dry_run: self.dry_run,
            backoff: crate::capacity::backoff::Backoff {
                budget: Some(self.retry_budget),
                ..Default::default()
            },
            concurrency: self.concurrency.into(),
            lease: self.lease,
            require_pitr: self.require_pitr,
        }
    }
}

/// Runs `revert`; the exit code: 0 every item put back (or already as
/// before), 1 some changed since the run or failed (listed in a file), 130
/// interrupted (resumable), 3 lost the lock.
pub(super) async fn command(
    args: RevertArgs,
    migrations: &[Arc<dyn Migration>],
) -> anyhow::Result<u8> {
    let table = match &args.table {
        Some(t) => t.clone(),
        None => migrations
            .iter()
            .find(|m| m.id() == args.migration)
            .and_then(|m| m.table().map(str::to_owned))
            .ok_or_else(|| {
                anyhow!(
                    "migration {} names no table here (or is unknown to this build); pass --table NAME",
                    args.migration
                )
            })?,
    };
    let plan = args.plan(table.clone());
    let client = client::build(&args.connection.connection())
        .await
        .map_err(|e| anyhow!(e))?;
    if plan.dry_run {
        println!("DRY RUN: no write of any kind will be sent");
    } else {
        confirm(&args, &table)?;
    }
    let shutdown = CancellationToken::new();
    signal::stop_on_signals(shutdown.clone(), super::select::EXIT_INTERRUPTED);
    let context = || {
        format!(
            "revert of migration {} on table {table} failed",
            args.migration
        )
    };
    let lines = super::progress::Lines::new();
    let label = format!("revert of {} on {table}", args.migration);
    let observer = move |c: &revert::RevertCounts| {
        lines.print(|| {
            format!(
                "{label}: {} records done ({} restored, {} already as before, {} changed since the run, {} failed)",
                c.restored + c.already + c.changed + c.failed + c.skipped,
                c.restored,
                c.already,
                c.changed,
                c.failed
            )
        })
    };
    let report = match revert::revert(&client, &plan, shutdown.clone(), Some(&observer)).await {
        Ok(r) => r,
        Err(crate::Error::LockLost(why)) => {
            eprintln!("error: {}: lost the lock: {why}", context());
            return Ok(super::select::EXIT_LOCK_LOST);
        }
        Err(e) => return Err(anyhow::Error::new(e)).with_context(context),
    };
    print!("{report}");
    if shutdown.is_cancelled() && !report.complete {
        return Ok(super::select::EXIT_INTERRUPTED);
    }
    let c = report.counts;
    Ok(if c.changed > 0 || c.failed > 0 {
        super::select::EXIT_ITEM_FAILURES
    } else {
        0
    })
}

/// Revert writes over the table: ask, unless `--yes`.
fn confirm(args: &RevertArgs, table: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if args.yes {
        return Ok(());
    }
    let question = format!(
        "put back the values the run of {} changed on table {table}, wherever the application has not written since?",
        args.migration
    );
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} Pass --yes to confirm (standard input is not a terminal, so dynbulk cannot ask)");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not reverted; nothing was changed")
    }
}
