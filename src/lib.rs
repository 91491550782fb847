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
//! The folders stack: the command line (`cli`) drives runs (`run`), a run drives
//! the `pipeline`, `state` and `capacity`, and those talk to DynamoDB through
//! `dynamo`; the migration API and the plain types (`report`, `error`, `util`)
//! are used at every level. Imports point down that stack, with no circles.
//!
//! - [`prelude`]: what a migrations crate imports.
//! - [`migration`]: the `Migration` trait, `Item` (read-tracking), `Change`, `Update`, `Number`.
//! - [`migrator`]: the `Migrator` trait (a program's list of migrations) and its start-up check.
//! - [`cli`]: `run_cli`, the command line as a library call: clap argument groups,
//!   their validation into a [`run::Plan`], dispatch of each command, the progress
//!   display, `status`, `verify`, and the scaffolds of `init --rust` and `new`.
//! - [`run`]: one migration's run (orchestration): the `Plan` and the prepared plan,
//!   resume or start, one attempt's steps (ledger, lock, schema step, data step,
//!   record of the end), a process's part in a run shared with `--join`, the
//!   pipeline's tasks, the pure decisions (limits, resume, outcome),
//!   `replay` of dead-lettered keys through the run's writer, and `revert` of a
//!   run from its journals.
//! - [`script`]: TypeScript/JavaScript migrations from the migrations folder, loaded
//!   at start-up and run beside the Rust ones on sandboxed QuickJS engines (one per
//!   script thread); TypeScript is type-stripped in-process.
//! - [`pipeline`]: the data path: segment scans, the in-flight byte budget, the
//!   worker pool, one item's conditional write, write planning (`diff`, `validate`).
//! - [`state`]: the state table: its plumbing (`store`: layout, timestamps, counts,
//!   partition reads), the ledger, checkpoints and the watermark, the lock and its
//!   fence, a shared run's membership and segment leases, where a replay stands
//!   in each dead-letter file; the dead-letter file (written and read back) and
//!   the journal of what every write changed (written ahead of the writes).
//! - [`capacity`]: capacity budgets (governor ceiling + adaptive working rate), the
//!   cost model (units per read and write, Scan page size), backoff, and each
//!   process's share of a run's limits when the run is shared (`--join`).
//! - [`dynamo`]: the DynamoDB edge: the shared client, the classification of its
//!   errors, table description, schema steps, attribute values (sizes, equality),
//!   numbers and the typed deserializer.
//! - [`report`]: counters and the run report; [`metrics`]: Prometheus names, the
//!   exporter, snapshot publishing; [`error`]: the error type; `util`: duration
//!   formatting.
//!
//! The public API is [`prelude`], [`cli`], [`migrator`], [`migration`], [`run`],
//! [`report`] and [`error`]. The engine modules under [`pipeline`], [`state`],
//! [`capacity`] and [`dynamo`] are public where the integration tests and benches
//! drive them directly; they are not an API to build on and change without notice.
//!
//! The stock binary (`src/bin/dynbulk.rs`) is `run_cli` over the built-in reference
//! migration; `dynbulk-sample-data` (`src/bin/`) generates the demo's and the
//! tests' sample orders.

#![warn(missing_docs)]

pub mod capacity;
pub mod cli;
pub mod dynamo;
pub mod error;
pub mod metrics;
pub mod migration;
pub mod migrator;
pub mod pipeline;
pub mod report;
pub mod run;
pub mod script;
pub mod state;
mod util;

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
