//! dynbulk runs data migrations and backfills over large Amazon DynamoDB tables:
//! safely (conditional writes that never lose an application's update),
//! politely (within the capacity the operator grants) and in parallel
//! (segmented scans feeding a bounded worker pool).
//!
//! dynbulk is an engine; the migrations belong to the team that runs them. A
//! team's migrations crate implements [`Migration`](migration::Migration) for
//! each change, lists them in a [`Migrator`](migrator::Migrator), and its
//! `main` calls [`cli::run_cli`], which is the whole `dynbulk` command line
//! over that list. `dynbulk init --rust` scaffolds such a crate;
//! [`prelude`] has what a migration author and an embedding program need. A
//! program that drives runs itself calls [`run::run`] with a [`run::Plan`]
//! and gets a [`report::Report`].
//!
//! # Layout
//!
//! The public API:
//!
//! - [`prelude`]: what a migrations crate imports.
//! - [`cli`]: `run_cli`, the command line as a library call; clap definitions and their
//!   validation into a [`run::Plan`]; the progress display.
//! - [`migrator`]: the `Migrator` trait (a program's list of migrations) and its start-up check.
//! - [`migration`]: the `Migration` trait, `Item` (read-tracking), `Change`, `Update`, `Number`.
//! - [`run`]: one migration's run: ledger, schema step, the pipeline; the `Plan`.
//! - [`report`]: counters and the run report.
//! - [`error`]: the error type and the classification of AWS errors.
//! - [`client`]: the one shared DynamoDB client (SDK retries off).
//!
//! Engine internals, public because the integration tests and benches drive
//! them directly (not an API to build on; they change without notice):
//!
//! - [`scan`]: segment tasks sending pages into the bounded channel.
//! - [`inflight`]: the bound on bytes of scanned items held in memory; page sizing.
//! - [`worker`]: the pool that applies transforms to pages.
//! - [`write`](mod@write): one item's transform, conditional write, conflict re-read; dry run.
//! - [`backoff`]: jittered exponential retry; the one retry policy.
//! - [`limiter`]: capacity budgets (governor ceiling + adaptive working rate), page sizing.
//! - [`ledger`]: the state table's record of what ran where.
//! - [`checkpoint`]: per-segment checkpoints, the acknowledgement watermark, resume state.
//! - [`lock`]: one runner per migration and table (lease, heartbeat, takeover).
//! - [`deadletter`]: the JSON-lines file of failed items.
//! - [`metrics`]: Prometheus metric names, the exporter, snapshot publishing.
//!
//! Private to the crate:
//!
//! - `typed`: `Item::parse`'s serde deserializer, recording what the type read.
//! - `number`: `Number`, DynamoDB's 38-digit decimal kept as text (re-exported by `migration`).
//! - `diff`: pure change-to-expression logic (SET/REMOVE + condition).
//! - `validate`: a planned write checked against DynamoDB's limits before it is sent.
//! - `table`: DescribeTable facts about the target table.
//! - `schema`: idempotent schema steps (TTL, GSI).
//! - `fence`: a held lock's epoch and lease deadline, which state writes prove.
//! - `status`: the `dynbulk status` listing.
//! - `scaffold`: `dynbulk init --rust` (a migrations crate) and `dynbulk new` (a migration file).
//!
//! The stock binary (`src/bin/dynbulk.rs`) is `run_cli` over the built-in reference
//! migration; `dynbulk-sample-data` (`src/bin/`) generates the demo's and the
//! tests' sample orders.

#![warn(missing_docs)]

pub mod backoff;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod deadletter;
mod diff;
pub mod error;
mod fence;
pub mod inflight;
pub mod ledger;
pub mod limiter;
pub mod lock;
pub mod metrics;
pub mod migration;
pub mod migrator;
mod number;
pub mod report;
pub mod run;
mod scaffold;
pub mod scan;
mod schema;
mod status;
mod table;
mod typed;
mod validate;
pub mod worker;
pub mod write;

pub use error::{Error, Result};

pub mod prelude {
    //! What a migrations crate needs, in one import: `use dynbulk::prelude::*;`.
    //!
    //! For a migration author: [`Migration`] and the types its transform uses
    //! ([`Item`], [`Change`], [`Update`], [`TransformError`], [`Number`],
    //! [`AttributeValue`], [`ScanOptions`], [`SchemaStep`]). For the program that
    //! runs them: [`Migrator`] and [`run_cli`]; to drive runs without the command
    //! line, [`Plan`] with [`Limits`]/[`Limit`] for `dynbulk::run::run`, and the
    //! [`Report`] and [`Outcome`] it returns.

    pub use crate::cli::run_cli;
    pub use crate::migration::{
        Attrs, Change, Item, Migration, Number, ScanOptions, SchemaStep, TransformError, Update,
    };
    pub use crate::migrator::Migrator;
    pub use crate::report::{Outcome, Report};
    pub use crate::run::{Limit, Limits, Plan};
    pub use aws_sdk_dynamodb::types::AttributeValue;
}
