//! One parsed command line, carried out: install logging, call the engine,
//! print results, map them to an exit code (0 done, 1 item failures, 2 fatal
//! or bad usage, 3 lost the lock, 4 `verify` found items left to change,
//! 130 interrupted). What the stock binary's
//! `main` did before the command line became [`super::run_cli`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use tokio_util::sync::CancellationToken;

use super::select::{
    endpoint_note, hold_metrics, targets, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_ITEM_FAILURES,
    EXIT_LOCK_LOST,
};
use super::{progress, signal};
use super::{scaffold, status, verify};
use super::{Cli, Command, InitArgs, LogFormat, NewArgs};
use super::{ReplayArgs, RunArgs, StatusArgs};
use crate::dynamo::client;
use crate::migration::Migration;
use crate::report::Outcome;
use crate::run;
use crate::state::ledger;

/// Runs `cli` over `migrations` (already checked, in id order).
pub(super) fn main(mut cli: Cli, migrations: Vec<Arc<dyn Migration>>) -> ExitCode {
    init_logging(cli.verbose, cli.log_format);
    // `new` writes into the script folder the global flag (or its environment
    // variable) names, unless it is given its own --dir.
    if let Command::New(args) = &mut cli.command {
        if args.dir.is_none() && !scaffold::is_rust_folder(&crate_folder()) {
            args.dir = cli.migrations_dir.clone();
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    match runtime.block_on(dispatch(cli.command, &migrations)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        // The SDK's config loader warns about every source it tries (IMDS on a
        // laptop, say); the errors that matter reach the user through dynbulk.
        // What scripts log (ctx.log, console.log) is shown like the old runner's console.
        0 => "warn,aws_config=error,dynbulk::script=info",
        1 => "info,aws_config=warn,dynbulk=info",
        2 => "info,dynbulk=debug",
        _ => "debug,dynbulk=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DYNBULK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(command: Command, migrations: &[Arc<dyn Migration>]) -> anyhow::Result<u8> {
    match command {
        Command::Run(args) => run_command(args, migrations).await,
        Command::Verify(args) => verify::command(args, migrations).await,
        Command::Status(args) => status_command(args, migrations).await,
        Command::Revert(args) => super::revert::command(args, migrations).await,
        Command::List => {
            for m in migrations {
                println!(
                    "{}  {}  {}",
                    m.id(),
                    m.table().unwrap_or("(--table)"),
                    m.description()
                );
            }
            Ok(0)
        }
        Command::New(args) => new_command(args),
        Command::Init(args) => init_command(args),
        Command::Replay(args) => replay_command(args, migrations).await,
    }
}

/// The migrations folder of a Rust migrations crate, from its root.
fn crate_folder() -> PathBuf {
    Path::new("src").join("migrations")
}

/// `new`: a Rust file registered in a crate's list when the folder is a Rust
/// one (explicitly, or src/migrations of the crate we are in), else a
/// TypeScript file in the script migrations folder (--dir, else
/// --migrations-dir or DYNBULK_MIGRATIONS_DIR, else ./migrations).
fn new_command(args: NewArgs) -> anyhow::Result<u8> {
    let description = args.description.join(" ");
    let today = chrono::Local::now().date_naive();
    let dir = args.dir.unwrap_or_else(|| {
        let crate_folder = crate_folder();
        if scaffold::is_rust_folder(&crate_folder) {
            crate_folder
        } else {
            PathBuf::from("migrations")
        }
    });
    if scaffold::is_rust_folder(&dir) {
        let file = scaffold::create(&dir, &description, today)?;
        println!("created {}", file.display());
        println!(
            "registered it in {}; build again to include it",
            dir.join("mod.rs").display()
        );
    } else {
        let file = scaffold::create_script(&dir, &description, today)?;
        println!("created {}", file.display());
        println!(
            "write its transform, then try it: dynbulk run --migration {} --dry-run",
            file.file_stem().unwrap_or_default().to_string_lossy()
        );
    }
    Ok(0)
}

fn init_command(args: InitArgs) -> anyhow::Result<u8> {
    if !args.rust {
        for file in scaffold::init_script(&args.dir)? {
            println!("created {}", file.display());
        }
        println!(
            "next: dynbulk list, then dynbulk run --migration 20241220_add_status_category_fields --dry-run; \
             `dynbulk new \"what it does\"` adds a migration{}",
            if args.dir == Path::new("migrations") {
                String::new()
            } else {
                format!(" (pass --migrations-dir {} or set DYNBULK_MIGRATIONS_DIR)", args.dir.display())
            }
        );
        return Ok(0);
    }
    let dependency = match args.dynbulk_path {
        Some(path) => scaffold::Dependency::Path(path),
        None => scaffold::Dependency::Released,
    };
    for file in scaffold::init_rust(&args.dir, &dependency)? {
        println!("created {}", file.display());
    }
    println!(
        "next: cd {} && cargo run -- list; `cargo run -- new \"what it does\"` adds a migration",
        args.dir.display()
    );
    Ok(0)
}

async fn run_command(args: RunArgs, migrations: &[Arc<dyn Migration>]) -> anyhow::Result<u8> {
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
    if plan.dry_run {
        println!("DRY RUN: no write of any kind will be sent");
    }
    let mut code = 0;
    for (migration, table) in targets {
        let id = migration.id().to_owned();
        let context = || format!("migration {id} on table {table}{endpoint} failed");
        let prepared = run::prepare(&client, migration, &table, &plan)
            .await
            .with_context(context)?;
        print!("{prepared}");
        if plan.restart && !plan.dry_run {
            if let Some(what) = discarded_by_restart(&prepared) {
                confirm_restart(&args, &what)?;
            }
        }
        let (display, observer) = progress::Display::start(args.observability.progress, &id);
        let result = run::execute(&client, &prepared, shutdown.clone(), observer).await;
        display.finish();
        match result {
            Ok(report) => {
                print!("{report}");
                match report.outcome {
                    Outcome::Done | Outcome::Skipped => {}
                    Outcome::DoneWithFailures => code = code.max(EXIT_ITEM_FAILURES),
                    Outcome::Stopped => {
                        println!(
                            "interrupted with checkpoints saved; run the same command again to resume \
                             (`dynbulk status --table {table}` shows progress)"
                        );
                        hold_metrics(&args.observability).await;
                        return Ok(EXIT_INTERRUPTED);
                    }
                }
            }
            Err(failure) => {
                if let Some(report) = &failure.report {
                    print!("{report}");
                }
                hold_metrics(&args.observability).await;
                if let crate::Error::LockLost(why) = &failure.error {
                    eprintln!(
                        "error: {}: lost the lock: {why}. The runner that holds it now owns the run; \
                         `dynbulk status --table {table}` shows who",
                        context()
                    );
                    return Ok(EXIT_LOCK_LOST);
                }
                return Err(anyhow::Error::new(failure.error)).with_context(context);
            }
        }
    }
    hold_metrics(&args.observability).await;
    Ok(code)
}

/// What `--restart` would throw away, if anything, for the operator to confirm.
fn discarded_by_restart(prepared: &run::Prepared) -> Option<String> {
    let (id, table) = (prepared.migration.id(), &prepared.table.name);
    match (&prepared.existing, &prepared.unreadable_state) {
        (Some(existing), _) => Some(format!(
            "the checkpoints of the unfinished run of {id} on {table} ({}/{} segments done, {} items processed)",
            existing.segments_done(),
            existing.total_segments,
            existing.counts.scanned
        )),
        (None, Some(problem)) => Some(format!(
            "the unreadable run state of {id} on {table} ({problem})"
        )),
        (None, None) => None,
    }
}

/// `--restart` throws away progress: ask, unless `--yes`.
fn confirm_restart(args: &RunArgs, what: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if args.yes {
        return Ok(());
    }
    let question = format!("discard {what} and start over?");
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
        anyhow::bail!("not restarted; nothing was changed")
    }
}

/// `replay`: every dead-letter file given, reported per file and migration.
async fn replay_command(args: ReplayArgs, migrations: &[Arc<dyn Migration>]) -> anyhow::Result<u8> {
    let plan = args.plan();
    let client = client::build(&args.connection.connection())
        .await
        .map_err(|e| anyhow!(e))?;
    let shutdown = CancellationToken::new();
    signal::stop_on_signals(shutdown.clone(), EXIT_INTERRUPTED);
    if plan.dry_run {
        println!("DRY RUN: no write of any kind will be sent");
    }
    let lines = super::progress::Lines::new();
    let observer = move |p: &run::ReplayProgress<'_>| {
        lines.print(|| {
            format!(
                "replay of {} on {}: {} of {} records",
                p.migration, p.table, p.done, p.records
            )
        })
    };
    let result = run::replay(
        &client,
        &args.files,
        migrations,
        &plan,
        args.workers.into(),
        shutdown.clone(),
        Some(&observer),
    )
    .await;
    let (reports, error) = match result {
        Ok(reports) => (reports, None),
        Err(failure) => (failure.reports, Some(failure.error)),
    };
    for report in &reports {
        print!("{report}");
    }
    match error {
        Some(crate::Error::LockLost(why)) => {
            eprintln!("error: replay stopped: lost the lock: {why}");
            Ok(EXIT_LOCK_LOST)
        }
        Some(e) => {
            Err(anyhow::Error::new(e)
                .context("replay failed; run the same command again to resume"))
        }
        None if shutdown.is_cancelled()
            || reports.iter().any(|r| r.outcome == Outcome::Stopped) =>
        {
            println!("interrupted with the position in each file saved; run the same command again to resume");
            Ok(EXIT_INTERRUPTED)
        }
        None if reports
            .iter()
            .any(|r| r.outcome == Outcome::DoneWithFailures) =>
        {
            Ok(EXIT_ITEM_FAILURES)
        }
        None => Ok(0),
    }
}

async fn status_command(args: StatusArgs, migrations: &[Arc<dyn Migration>]) -> anyhow::Result<u8> {
    let client = client::build(&args.connection.connection())
        .await
        .map_err(|e| anyhow!(e))?;
    let ledger = ledger::Ledger::new(client.clone(), args.state.state_table.clone());
    let rows = status::collect(&client, &ledger, migrations, args.table.as_deref()).await?;
    print!("{}", status::render(&rows));
    Ok(0)
}
