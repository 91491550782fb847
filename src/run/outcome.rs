//! How a run ended, decided from what happened: the report's outcome, the
//! ledger's status and the run-state metric's value. Pure functions.

use crate::report::Outcome;
use crate::state::ledger::Status;

/// What the data step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ending {
    /// A fatal error or the error budget stopped it.
    pub failed: bool,
    /// The shutdown token was cancelled (interrupt, or a lost lock).
    pub cancelled: bool,
    /// Every segment is done (always, without checkpoints: a dry run).
    pub all_done: bool,
    /// Items of the run that failed, earlier attempts included.
    pub item_failures: u64,
}

/// The run's outcome: stopped unless every segment finished without a fatal
/// error or an interrupt; done with failures when an item failed.
pub(super) fn outcome(end: Ending) -> Outcome {
    if end.failed || end.cancelled || !end.all_done {
        Outcome::Stopped
    } else if end.item_failures > 0 {
        Outcome::DoneWithFailures
    } else {
        Outcome::Done
    }
}

/// The ledger's status for a run that ended with `outcome`.
pub(super) fn ledger_status(outcome: Outcome) -> Status {
    match outcome {
        Outcome::Done | Outcome::Skipped => Status::Applied,
        Outcome::DoneWithFailures => Status::Failed,
        Outcome::Stopped => Status::Stopped,
    }
}

/// The value of the run-state metric at the end (see `metrics::STATES`).
pub(super) fn metric_state(failed: bool, outcome: Outcome) -> &'static str {
    match (failed, outcome) {
        (true, _) | (false, Outcome::DoneWithFailures) => "failed",
        (false, Outcome::Stopped) => "stopped",
        _ => "done",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: Ending = Ending {
        failed: false,
        cancelled: false,
        all_done: true,
        item_failures: 0,
    };

    #[test]
    fn a_run_is_done_only_when_every_segment_finished_uninterrupted() {
        assert_eq!(outcome(CLEAN), Outcome::Done);
        let failures = Ending {
            item_failures: 3,
            ..CLEAN
        };
        assert_eq!(outcome(failures), Outcome::DoneWithFailures);
        for stopped in [
            Ending {
                cancelled: true,
                ..CLEAN
            },
            Ending {
                all_done: false,
                ..CLEAN
            },
            Ending {
                failed: true,
                ..failures
            },
        ] {
            assert_eq!(outcome(stopped), Outcome::Stopped, "{stopped:?}");
        }
    }

    #[test]
    fn outcomes_map_to_ledger_statuses_and_metric_states() {
        assert_eq!(ledger_status(Outcome::Done), Status::Applied);
        assert_eq!(ledger_status(Outcome::Skipped), Status::Applied);
        assert_eq!(ledger_status(Outcome::DoneWithFailures), Status::Failed);
        assert_eq!(ledger_status(Outcome::Stopped), Status::Stopped);
        assert_eq!(metric_state(false, Outcome::Done), "done");
        assert_eq!(metric_state(false, Outcome::DoneWithFailures), "failed");
        assert_eq!(metric_state(false, Outcome::Stopped), "stopped");
        assert_eq!(metric_state(true, Outcome::Stopped), "failed");
    }
}
