//! dynbulk runs data migrations and backfills over large Amazon DynamoDB tables:
//! safely (conditional writes that never lose an application's update),
//! politely (within the capacity the operator grants) and in parallel
//! (segmented scans feeding a bounded worker pool).
//!
//! A [`migration::Migration`] names a table and transforms one item at a time;
//! [`run::run`] applies it to every item of the table and returns a
//! [`report::Report`].
//!
//! # Layout
//!
//! - [`cli`]: clap definitions and their validation into a [`run::Plan`].
//! - [`client`]: the one shared DynamoDB client (SDK retries off).
//! - [`migration`]: the `Migration` trait, `Item` (read-tracking), `Change`, `Update`.
//! - `typed`: `Item::parse`'s serde deserializer, recording what the type read.
//! - [`number`]: `Number`, DynamoDB's 38-digit decimal kept as text.
//! - [`migrations`]: the migrations compiled into this build (top-level `migrations/`).
//! - [`run`]: one migration's run: ledger, schema step, the pipeline.
//! - [`scan`]: segment tasks sending pages into the bounded channel.
//! - [`inflight`]: the bound on bytes of scanned items held in memory; page sizing.
//! - [`worker`]: the pool that applies transforms to pages.
//! - [`write`]: one item's transform, conditional write, conflict re-read; dry run.
//! - [`diff`]: pure change-to-expression logic (SET/REMOVE + condition).
//! - [`validate`]: a planned write checked against DynamoDB's limits before it is sent.
//! - [`backoff`]: jittered exponential retry; the one retry policy.
//! - [`limiter`]: capacity budgets (governor ceiling + adaptive working rate), page sizing.
//! - [`error`]: the error type and the classification of AWS errors.
//! - [`table`]: DescribeTable facts about the target table.
//! - [`schema`]: idempotent schema steps (TTL, GSI).
//! - [`ledger`]: the state table's record of what ran where.
//! - [`checkpoint`]: per-segment checkpoints, the acknowledgement watermark, resume state.
//! - [`lock`]: one runner per migration and table (lease, heartbeat, takeover).
//! - [`fence`]: a held lock's epoch and lease deadline, which state writes prove.
//! - [`status`]: the `dynbulk status` listing.
//! - [`deadletter`]: the JSON-lines file of failed items.
//! - [`report`]: counters and the run report.
//! - [`metrics`]: Prometheus metric names, the exporter, snapshot publishing.
//! - [`scaffold`]: `dynbulk new`.
//! - [`sample`]: generated sample orders for the demo and the tests.

pub mod backoff;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod deadletter;
pub mod diff;
pub mod error;
pub mod fence;
pub mod inflight;
pub mod ledger;
pub mod limiter;
pub mod lock;
pub mod metrics;
pub mod migration;
#[path = "../migrations/mod.rs"]
pub mod migrations;
pub mod number;
pub mod report;
pub mod run;
pub mod sample;
pub mod scaffold;
pub mod scan;
pub mod schema;
pub mod status;
pub mod table;
mod typed;
pub mod validate;
pub mod worker;
pub mod write;

pub use error::{Error, Result};
