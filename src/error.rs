//! The library's error type: what stopped a command or a run, each kind its
//! own variant with a message that says what failed and what to do.
//!
//! What a DynamoDB error *means* (throttle, transient, one item's failure,
//! fatal) is decided in one place, [`crate::dynamo::classify`]; this module
//! only carries the result.

use std::path::PathBuf;

pub use crate::dynamo::classify::AwsError;

/// What went wrong in a run, with enough context to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The arguments or the migration definition are wrong; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// DynamoDB cannot be reached, or will not accept these credentials.
    #[error("{0}")]
    Connection(String),
    /// Another live runner holds the run's lock (or it kept changing hands):
    /// this runner did not start.
    #[error("{0}")]
    Locked(String),
    /// More items failed than `--max-errors` allows (earlier attempts of the
    /// run included); the run stopped, resumably.
    #[error(
        "stopped: {failed} items of this run have failed (earlier attempts included), more than --max-errors allows; \
         see the dead-letter file {} and those of earlier attempts (the report lists them all), \
         fix the migration or the data, then run again (a higher --max-errors lets it go on past more failures)",
        dead_letter.display()
    )]
    ErrorBudget {
        /// Items of the run that failed.
        failed: u64,
        /// This attempt's dead-letter file.
        dead_letter: PathBuf,
    },
    /// DynamoDB did not finish a change in time (an index still building).
    #[error("{0}")]
    Timeout(String),
    /// One of the run's tasks panicked (a bug, in dynbulk or in a transform
    /// that escaped the per-item guard); the run stopped, resumably.
    #[error("{0}")]
    Panicked(String),
    /// Something dynbulk relies on did not hold (a bug, or a task that ended
    /// early because another one failed).
    #[error("{0}")]
    Internal(String),
    /// A DynamoDB call failed in a way that retrying will not fix.
    #[error("{context}: {source}")]
    Aws {
        /// What dynbulk was doing ("scanning segment 3 of table Orders").
        context: String,
        /// The call's error, boxed: SDK errors are large.
        #[source]
        source: Box<AwsError>,
    },
    /// The state table holds something this version cannot use.
    #[error("state table {table}: {message}")]
    State {
        /// Name of the state table.
        table: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// This runner can no longer prove it holds the run's lock (another
    /// runner took it over, or the lease could not be renewed in time), so it
    /// stopped writing at once. Whoever holds the lock now owns the run.
    #[error("{0}")]
    LockLost(String),
    /// Local I/O failed (dead-letter file, migration scaffolding).
    #[error("{context}: {source}")]
    Io {
        /// What dynbulk was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an AWS error with what dynbulk was doing when it happened.
    pub fn aws(context: impl Into<String>, source: AwsError) -> Self {
        Error::Aws {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error with what dynbulk was doing when it happened.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Convenience alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
