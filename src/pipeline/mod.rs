//! The data path of a run: segment scans feed pages into a bounded channel,
//! workers apply the transform to each item and write the difference back.
//!
//! - [`scan`]: segment tasks sending pages into the bounded channel.
//! - [`inflight`]: the bound on bytes of scanned items held in memory; page sizing.
//! - [`worker`]: the pool that applies transforms to pages and acknowledges them.
//! - [`write`](mod@write): one item's transform, conditional write, conflict re-read; dry run.
//! - `diff`: write planning, a change turned into SET/REMOVE and its condition.
//! - `validate`: a planned write checked against DynamoDB's limits before it is sent.

pub(crate) mod diff;
pub mod inflight;
pub mod scan;
pub(crate) mod validate;
pub mod worker;
pub mod write;
