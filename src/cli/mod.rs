//! The command line as a library call: [`run_cli`] runs every command and
//! flag of the stock `dynbulk` binary over the migrations its caller lists,
//! so a team's own migrations crate gets the whole CLI from a one-line `main`
//! (the sea-orm-migration pattern). Here too: the clap definitions, and the
//! validation step that turns raw arguments into a [`Plan`] (ripgrep's
//! two-step parse); everything downstream takes the plan, never raw arguments.
//!
//! This module is the command line's front end, so unlike the engine it
//! prints for the user (reports, progress) and, on a second interrupt,
//! exits the process at once.
//!
//! - this file: the clap definitions, `run`'s flags in groups flattened into
//!   it (connection, state, throughput, capacity, observability, errors), and
//!   their validation into a [`Plan`].
//! - `dispatch`: each command carried out, and its exit code.
//! - `plan`: the plan `run` prints before it starts.
//! - `progress`: the progress bar or log line.
//! - `signal`: Ctrl-C and SIGTERM.
//! - `status`: the `status` listing.
//! - `verify`: `verify`, a scan that proves nothing is left to change.
//! - `revert`: `revert`'s flags, confirmation and report.
//! - `scaffold`: `init --rust` (a migrations crate) and `new` (a migration file).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use verify::VerifyArgs;

use crate::dynamo::client::Connection;
use crate::migrator::{self, Migrator};
use crate::run::{Limit, Limits, Plan};
use crate::state::store::DEFAULT_STATE_TABLE;

mod dispatch;
mod plan;
mod progress;
mod revert;
mod scaffold;
mod select;
mod signal;
mod status;
mod verify;

/// Runs the whole dynbulk command line (`run`, `status`, `list`, `new`, with
/// every flag, output and exit code of the stock `dynbulk` binary) over
/// `migrator`'s migrations, reading the process's arguments. A migrations
/// crate's `main` is this one call:
///
/// ```no_run
/// # use std::sync::Arc;
/// # use dynbulk::prelude::*;
/// # struct Migrations;
/// # impl Migrator for Migrations {
/// #     fn migrations(&self) -> Vec<Arc<dyn Migration>> { vec![] }
/// # }
/// fn main() -> std::process::ExitCode {
///     dynbulk::cli::run_cli(Migrations)
/// }
/// ```
///
/// The migrations are checked first: an id that is not
/// `YYYYMMDD_description`, or one that two migrations share, ends the
/// program with exit code 2 and a message naming the id, before any command
/// runs. Exit codes: 0 done; 1 done but some items failed; 2 fatal error or
/// bad usage; 3 lost the lock to another runner; 4 (`verify`) items would
/// still change; 130 interrupted.
pub fn run_cli(migrator: impl Migrator) -> ExitCode {
    crate::pipeline::inflight::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // What clap's own `exit` does (help and version to stdout with
            // code 0, usage errors to stderr with code 2), without exiting.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(select::EXIT_FATAL));
        }
    };
    // Script migrations join the embedding program's for the commands that
    // run or show migrations; a broken script stops those before anything is
    // read or written (and leaves `init` and `new` usable).
    let mut migrations = migrator.migrations();
    if matches!(
        cli.command,
        Command::Run(_)
            | Command::Verify(_)
            | Command::Status(_)
            | Command::List
            | Command::Replay(_)
            | Command::Revert(_)
    ) {
        match crate::script::migrations(&cli.script_folder(), cli.script_limits()) {
            Ok(scripts) => migrations.extend(scripts),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(select::EXIT_FATAL);
            }
        }
    }
    match migrator::checked(&migrations) {
        Ok(migrations) => dispatch::main(cli, migrations),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(select::EXIT_FATAL)
        }
    }
}

/// Run data migrations and backfills over large DynamoDB tables: parallel
/// segmented scans, conditional writes that never lose an application's update,
/// a ledger of what ran where.
#[derive(Debug, Parser)]
#[command(name = "dynbulk", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// More log output: -v info, -vv debug, -vvv trace (logs go to stderr).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// The folder of TypeScript/JavaScript migrations (YYYYMMDD_description.ts|.js);
    /// without it, ./migrations if it exists.
    #[arg(
        long,
        env = "DYNBULK_MIGRATIONS_DIR",
        value_name = "DIR",
        global = true,
        help_heading = "Scripts"
    )]
    pub migrations_dir: Option<PathBuf>,

    /// How long a script's transform may run on one item before the item fails.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION", global = true, help_heading = "Scripts")]
    pub script_timeout: std::time::Duration,

    /// Memory limit of each script engine (one per script thread): the item
    /// that exceeds it fails.
    #[arg(long, default_value = "64MiB", value_parser = parse_size, value_name = "SIZE", global = true, help_heading = "Scripts")]
    pub script_memory: usize,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Where script migrations are looked for.
    pub fn script_folder(&self) -> crate::script::Folder {
        match &self.migrations_dir {
            Some(dir) => crate::script::Folder::Given(dir.clone()),
            None => crate::script::Folder::Default(PathBuf::from("migrations")),
        }
    }

    /// The per-item limits of script transforms.
    pub fn script_limits(&self) -> crate::script::Limits {
        crate::script::Limits {
            timeout: self.script_timeout,
            memory: self.script_memory,
        }
    }
}

/// Parses `64MiB`, `512KiB`, `1GiB` (`M`, `MB` and the like are read as
/// binary units too; a bare number is bytes); at least 1 MiB.
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size; use e.g. 64MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {text:?}; use KiB, MiB or GiB"
            ))
        }
    };
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes < 1 << 20 {
        return Err(format!(
            "{text:?} is too small: a script engine needs at least 1MiB"
        ));
    }
    Ok(bytes)
}

const EXAMPLES: &str = "\
Examples:
  dynbulk list                                   show the migrations of this build and of ./migrations
  dynbulk run --dry-run                          what every pending migration would change
  dynbulk run --segments 16                      apply every pending migration
  dynbulk run --migration 20241220_add_status_category_fields --table orders-dev
  dynbulk verify --migration 20241220_add_status_category_fields --table orders-dev
                                                 prove nothing is left to change (exit 4 if something is)
  dynbulk status --table orders-dev              what ran on orders-dev, when, by whom
  dynbulk init --rust migrations                 create a migrations crate in ./migrations
  dynbulk new \"backfill order totals\"            add src/migrations/YYYYMMDD_backfill_order_totals.rs
                                                 (from a migrations crate's root)

Exit codes: 0 done; 1 done but some items failed (see the dead-letter file);
2 fatal error or bad usage; 3 lost the lock to another runner (stopped
writing at once); 4 verify: some items would still change or fail;
130 interrupted.";

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressChoice {
    /// A bar when stdout is a terminal, log lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// Always log lines (stderr, every 10 s).
    Log,
    /// Nothing.
    Off,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
// Parsed once per process: the size of `run`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run pending migrations (all of them in id order, or the one given by --migration).
    Run(RunArgs),
    /// Prove a migration is complete: scan the table, apply the transform to
    /// every item and write nothing; exit 4 if any item would still change.
    #[command(long_about = verify::VERIFY_ABOUT)]
    Verify(VerifyArgs),
    /// Show each migration's status on its table: applied, pending, failed or in progress.
    Status(StatusArgs),
    /// Undo a run: put back, from its journal, the values its writes changed,
    /// wherever the application has not written since (those items are
    /// reported, not reverted). Resumable; asks first unless --yes.
    Revert(revert::RevertArgs),
    /// List the migrations of this build and of the migrations folder (--migrations-dir).
    List,
    /// Create a new migration file dated today: a TypeScript file in the
    /// migrations folder, or, from a Rust migrations crate's root, a Rust file
    /// registered in src/migrations/mod.rs.
    New(NewArgs),
    /// Set up migrations in your repository: a TypeScript migrations folder
    /// (dynbulk.d.ts for editors, a tsconfig.json and an example), or with
    /// --rust a migrations crate (Cargo.toml, a main calling dynbulk's command
    /// line, the migrations list and an example).
    Init(InitArgs),
    /// Apply the migration again to the items of dead-letter files, once what
    /// made them fail is fixed: each key is re-read (consistent read) and
    /// written under the same guard and capacity limits as a run; an item
    /// that no longer exists is reported, not recreated; items that fail
    /// again go to a new dead-letter file. Resumable (the position in each
    /// file is saved in the state table); the ledger's failed count for the
    /// migration goes down by the items recovered. Exit codes as for run.
    Replay(ReplayArgs),
}

/// Where and as whom to connect (as in the AWS CLI; the standard AWS_* environment works too).
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// AWS profile from ~/.aws/config (default: AWS_PROFILE, then "default").
    #[arg(long, help_heading = "Connection")]
    pub profile: Option<String>,
    /// AWS region (default: AWS_REGION, then the profile's region).
    #[arg(long, help_heading = "Connection")]
    pub region: Option<String>,
    /// DynamoDB endpoint, e.g. http://localhost:8000 for DynamoDB Local
    /// (default: AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL, then AWS).
    #[arg(long, value_name = "URL", help_heading = "Connection")]
    pub endpoint_url: Option<String>,
}

impl ConnectionArgs {
    /// The connection settings.
    pub fn connection(&self) -> Connection {
        Connection {
            profile: self.profile.clone(),
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
        }
    }
}

/// Where the ledger lives.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// DynamoDB table holding the ledger (created on first use, on-demand billing).
    #[arg(long, env = "DYNBULK_STATE_TABLE", default_value = DEFAULT_STATE_TABLE, value_name = "NAME", help_heading = "State")]
    pub state_table: String,
}

/// `dynbulk run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// State.
    #[command(flatten)]
    pub state: StateArgs,

    /// Run only this migration (see `dynbulk list`).
    #[arg(long, value_name = "ID")]
    pub migration: Option<String>,
    /// Target table, overriding the migration's own.
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// Scan and transform, print what would change, and send no write of any kind.
    #[arg(long)]
    pub dry_run: bool,
    /// Run migrations the ledger already records as applied on this table.
    #[arg(long)]
    pub rerun: bool,
    /// Discard an unfinished run's checkpoints and start over from the beginning
    /// (asks for confirmation unless --yes).
    #[arg(long)]
    pub restart: bool,
    /// Share the run with every process given this same command: start it if
    /// none is in progress, else join it; each process leases segments in the
    /// state table (run K copies on K machines).
    #[arg(long, conflicts_with = "restart")]
    pub join: bool,
    /// Do not ask for confirmation (for --restart in scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// A number attribute the application uses for optimistic locking: every
    /// write is conditioned on it and increments it (overrides the migration's own).
    #[arg(long, value_name = "NAME")]
    pub version_attribute: Option<String>,

    /// Throughput.
    #[command(flatten)]
    pub throughput: ThroughputArgs,
    /// Capacity.
    #[command(flatten)]
    pub capacity: CapacityArgs,
    /// Observability.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
    /// Errors.
    #[command(flatten)]
    pub errors: ErrorArgs,
    /// Refuse to write to a table whose point-in-time recovery is not known to
    /// be on (off, or unknown to the endpoint): exit 2, nothing written. A
    /// dry run never refuses.
    #[arg(long)]
    pub require_pitr: bool,
    /// The journal.
    #[command(flatten)]
    pub journal: JournalArgs,
    /// The run's lock lease (for tests: a few seconds keeps takeover tests short).
    #[arg(long, hide = true, env = "DYNBULK_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub lease: std::time::Duration,
}

/// How much runs at once: segments, workers, items per worker, page size.
#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// Parallel scan segments (DynamoDB TotalSegments), 1 to 1000000.
    /// Default: one per 256 MiB of the table (DescribeTable's size), at least
    /// 4; with --join at least 8 x --workers (64), so that every process has
    /// several to claim. A resumed or joined run keeps the count it started with.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1_000_000), help_heading = "Throughput")]
    pub segments: Option<u32>,
    /// Worker tasks applying the transform and writing, 1 to 1024.
    #[arg(long, allow_negative_numbers = true, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024), help_heading = "Throughput")]
    pub workers: u16,
    /// Items of a page each worker writes at once, 1 to 256.
    #[arg(long, allow_negative_numbers = true, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256), help_heading = "Throughput")]
    pub item_concurrency: u16,
    /// Scan page size (Limit), 1 to 10000; default: derived from --rcu-limit and the item size.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=10_000), help_heading = "Throughput")]
    pub page_size: Option<u32>,
}

/// The capacity a run may consume.
#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    /// Read capacity units per second the run may consume (ConsumedCapacity).
    /// Default: half of a provisioned table's read capacity; required for on-demand tables.
    #[arg(long, value_name = "RCU", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=10_000_000), help_heading = "Capacity")]
    pub rcu_limit: Option<u32>,
    /// Write capacity units per second the run may consume.
    /// Default: half of a provisioned table's write capacity; required for on-demand tables.
    #[arg(long, value_name = "WCU", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=10_000_000), help_heading = "Capacity")]
    pub wcu_limit: Option<u32>,
    /// No capacity limits at all: only for local endpoints and tables no one else uses.
    #[arg(long, conflicts_with_all = ["rcu_limit", "wcu_limit"], help_heading = "Capacity")]
    pub unlimited: bool,
}

/// Metrics and the progress display.
#[derive(Debug, Clone, Args)]
pub struct ObservabilityArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464 (off unless given;
    /// use a loopback address unless the network in between is trusted).
    #[arg(long, value_name = "ADDR", help_heading = "Observability")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Keep serving metrics this many seconds after the last migration, so a
    /// scraper sees the final values.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "SECS",
        help_heading = "Observability"
    )]
    pub metrics_hold: u64,
    /// Progress display: a bar on a terminal and a log line every 10 s otherwise (auto), or force one.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        value_name = "MODE",
        help_heading = "Observability"
    )]
    pub progress: ProgressChoice,
}

/// Failed items: the error budget, the retry budget, the dead-letter file.
#[derive(Debug, Clone, Args)]
pub struct ErrorArgs {
    /// Stop the run once more than N items have failed.
    #[arg(
        long,
        default_value_t = 1000,
        value_name = "N",
        allow_negative_numbers = true,
        help_heading = "Errors"
    )]
    pub max_errors: u64,
    /// How long an item write that keeps being throttled (a hot key) or failing
    /// transiently is retried before the item is dead-lettered, e.g. 90s, 5m, 1h.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_duration, help_heading = "Errors")]
    pub retry_budget: std::time::Duration,
    /// Where failed items go (JSON lines: table, key, migration, error);
    /// default: dynbulk-dead-letter-<time>.jsonl in the current directory.
    #[arg(long, value_name = "PATH", help_heading = "Errors")]
    pub dead_letter: Option<PathBuf>,
}

/// The journal of what every write changed, which `dynbulk revert` puts back.
#[derive(Debug, Clone, Args)]
pub struct JournalArgs {
    /// The directory of the journal of every write (one compressed file per
    /// process and attempt, readable by its owner only); default: the
    /// dead-letter file's directory.
    #[arg(
        long,
        env = "DYNBULK_JOURNAL_DIR",
        value_name = "DIR",
        help_heading = "Journal"
    )]
    pub journal: Option<PathBuf>,
    /// Keep no journal: these writes cannot be reverted with `dynbulk revert`
    /// (wins over --journal).
    #[arg(long, help_heading = "Journal")]
    pub no_journal: bool,
}

impl JournalArgs {
    fn place(&self) -> crate::run::JournalPlace {
        match (&self.journal, self.no_journal) {
            (_, true) => crate::run::JournalPlace::Off,
            (Some(dir), false) => crate::run::JournalPlace::Dir(dir.clone()),
            (None, false) => crate::run::JournalPlace::NextToDeadLetter,
        }
    }
}

impl CapacityArgs {
    fn limits(&self) -> Limits {
        let c = self;
        let one = |v: Option<u32>| match (v, c.unlimited) {
            (_, true) => Limit::Unlimited,
            (Some(u), false) => Limit::Units(f64::from(u)),
            (None, false) => Limit::Auto,
        };
        Limits {
            read: one(self.rcu_limit),
            write: one(self.wcu_limit),
        }
    }
}

impl ErrorArgs {
    /// The dead-letter file: the one given, else a new one named after the time.
    fn dead_letter(&self) -> PathBuf {
        self.dead_letter.clone().unwrap_or_else(|| {
            PathBuf::from(format!(
                "dynbulk-dead-letter-{}.jsonl",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ))
        })
    }
}

impl RunArgs {
    /// Validates the arguments into a plan.
    pub fn plan(&self) -> Plan {
        let dead_letter = self.errors.dead_letter();
        Plan {
            segments: self.throughput.segments,
            workers: self.throughput.workers.into(),
            item_concurrency: self.throughput.item_concurrency.into(),
            page_size: self.throughput.page_size.map(|p| p as i32),
            inflight_bytes: crate::pipeline::inflight::BUDGET_BYTES,
            dry_run: self.dry_run,
            rerun: self.rerun,
            max_errors: Some(self.errors.max_errors),
            dead_letter,
            journal: self.journal.place(),
            state_table: self.state.state_table.clone(),
            backoff: Default::default(),
            retry_budget: self.errors.retry_budget,
            limits: self.capacity.limits(),
            restart: self.restart,
            version_attribute: self.version_attribute.clone(),
            lease: self.lease,
            join: self.join,
            verify: false,
            require_pitr: self.require_pitr,
        }
    }
}

/// Parses `500ms`, `90s`, `5m`, `1h` (a bare number is seconds); between
/// 1 ms and 24 h.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; use e.g. 90s, 5m or 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit {u:?} in {text:?}; use ms, s, m or h")),
    };
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("{text:?} is out of range: 1ms to 24h"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `dynbulk replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Dead-letter files written by `dynbulk run` (JSON lines: table,
    /// migration, key, error); each record is replayed with the migration it names.
    #[arg(required = true, value_name = "DEAD_LETTER_FILE")]
    pub files: Vec<PathBuf>,
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// State.
    #[command(flatten)]
    pub state: StateArgs,
    /// Re-read and transform, print what would change, and send no write of any kind.
    #[arg(long)]
    pub dry_run: bool,
    /// Keys replayed at once, 1 to 1024.
    #[arg(long, allow_negative_numbers = true, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024), help_heading = "Throughput")]
    pub workers: u16,
    /// Capacity.
    #[command(flatten)]
    pub capacity: CapacityArgs,
    /// Errors.
    #[command(flatten)]
    pub errors: ErrorArgs,
    /// Journal.
    #[command(flatten)]
    pub journal: JournalArgs,
    /// The migration's lock lease (as for run).
    #[arg(long, hide = true, env = "DYNBULK_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub lease: std::time::Duration,
}

impl ReplayArgs {
    /// The plan a replay's writes follow: limits, retry budget, dead-letter
    /// file, state table, dry run (scan settings do not apply).
    pub fn plan(&self) -> Plan {
        Plan {
            segments: Some(1),
            workers: self.workers.into(),
            item_concurrency: 1,
            page_size: None,
            inflight_bytes: crate::pipeline::inflight::BUDGET_BYTES,
            dry_run: self.dry_run,
            rerun: false,
            max_errors: Some(self.errors.max_errors),
            dead_letter: self.errors.dead_letter(),
            journal: self.journal.place(),
            state_table: self.state.state_table.clone(),
            backoff: Default::default(),
            retry_budget: self.errors.retry_budget,
            limits: self.capacity.limits(),
            restart: false,
            version_attribute: None,
            lease: self.lease,
            join: false,
            verify: false,
            require_pitr: false,
        }
    }
}

/// `dynbulk status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Connection.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// State.
    #[command(flatten)]
    pub state: StateArgs,
    /// Show status on this table instead of each migration's own.
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
}

/// `dynbulk new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// What the migration does, in a few words ("backfill order totals").
    #[arg(required = true, num_args = 1..)]
    pub description: Vec<String>,
    /// The migrations folder. Default: src/migrations in a Rust migrations
    /// crate (a folder with the mod.rs that lists them gets a Rust file),
    /// otherwise the script migrations folder (DYNBULK_MIGRATIONS_DIR, else
    /// ./migrations), which gets a .ts file.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `dynbulk init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Scaffold a Rust migrations crate instead of a TypeScript folder.
    #[arg(long)]
    pub rust: bool,
    /// Where to create the folder or crate (created if missing; no file it
    /// writes may exist).
    #[arg(default_value = "migrations", value_name = "DIR")]
    pub dir: PathBuf,
    /// With --rust: depend on the dynbulk source tree at DIR instead of the
    /// released version (for work from a checkout).
    #[arg(long, value_name = "DIR", requires = "rust")]
    pub dynbulk_path: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn retry_budget_takes_a_duration() {
        use std::time::Duration;
        let budget = |args: &[&str]| {
            let mut all = vec!["dynbulk", "run"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Run(r)) => Ok(r.plan().retry_budget),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(budget(&[]), Ok(Duration::from_secs(300)));
        assert_eq!(
            budget(&["--retry-budget", "90s"]),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            budget(&["--retry-budget", "2m"]),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(
            budget(&["--retry-budget", "1h"]),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(
            budget(&["--retry-budget", "250ms"]),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            budget(&["--retry-budget", "45"]),
            Ok(Duration::from_secs(45))
        );
        for bad in ["0s", "5x", "m", "-1s", "48h"] {
            assert!(budget(&["--retry-budget", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn segments_out_of_range_are_rejected() {
        assert!(Cli::try_parse_from(["dynbulk", "run", "--segments", "0"]).is_err());
        assert!(Cli::try_parse_from(["dynbulk", "run", "--segments", "1000001"]).is_err());
        assert!(Cli::try_parse_from(["dynbulk", "run", "--segments", "1000000"]).is_ok());
    }

    #[test]
    fn version_attribute_flag_reaches_the_plan() {
        let cli = Cli::try_parse_from(["dynbulk", "run", "--version-attribute", "rev"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.plan().version_attribute.as_deref(), Some("rev"));
    }
}
