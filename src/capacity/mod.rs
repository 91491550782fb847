//! How fast a run may go: capacity budgets charged with what DynamoDB reports
//! consumed, and the retry policy for throttled and failing calls.
//!
//! - [`limiter`]: per-direction budgets (governor ceiling + adaptive working rate).
//! - `cost`: capacity units per read and write, and the Scan page size.
//! - [`backoff`]: jittered exponential retry against an attempt or time budget.
//! - [`share`]: one limit split among the live processes of a run shared with `--join`.

pub mod backoff;
pub(crate) mod cost;
pub mod limiter;
pub mod share;
