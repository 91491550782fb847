//! This team's DynamoDB migrations, run with dynbulk's whole command line:
//!
//! ```text
//! cargo run -- list                          the migrations in src/migrations
//! cargo run -- run --dry-run                 what every pending one would change
//! cargo run -- run --segments 16             apply every pending migration
//! cargo run -- status                        what ran on each table, when, by whom
//! cargo run -- new "backfill order totals"   a new migration file, dated today
//! ```

mod migrations;

fn main() -> std::process::ExitCode {
    dynbulk::cli::run_cli(migrations::Migrations)
}
