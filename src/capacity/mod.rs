//! How fast a run may go: capacity budgets charged with what DynamoDB reports
//! consumed, and the retry policy for throttled and failing calls.
//!
//! - [`limiter`]: per-direction budgets (governor ceiling + adaptive working rate).
//! - [`backoff`]: jittered exponential retry against an attempt or time budget.

pub mod backoff;
pub mod limiter;
