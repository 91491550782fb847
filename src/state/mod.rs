//! What dynbulk keeps about runs, in the state table next to the data (and the
//! dead-letter file on disk).
//!
//! - [`store`]: the state table's plumbing: name, layout version, timestamps, runner
//!   identity, partition reads, the stored item counts.
//! - [`ledger`]: which migrations ran where, when, by whom, with what result.
//! - [`checkpoint`]: per-segment checkpoints, the acknowledgement watermark, resume state.
//! - [`lock`]: one runner per migration and table (lease, heartbeat, takeover).
//! - `fence`: a held lock's epoch and lease deadline, which every state write proves.
//! - [`lease`]: a run shared with `run --join`: membership and segment leases.
//! - [`deadletter`]: the JSON-lines file of failed items (written by runs, read by `replay`).
//! - [`replay`]: where `dynbulk replay` stands in each dead-letter file.
//! - [`journal`]: the compressed record of what every write changed, for `revert`.

pub mod checkpoint;
pub mod deadletter;
pub(crate) mod fence;
pub mod journal;
pub mod lease;
pub mod ledger;
pub mod lock;
pub mod replay;
pub mod store;
