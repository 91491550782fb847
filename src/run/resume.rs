//! Resume or start: what a run does with the state an earlier attempt left,
//! and the checks that state must pass before its checkpoints are trusted.

use super::plan::Prepared;
use crate::error::Error;
use crate::state::checkpoint::{RunState, Store};

/// What to do with the run's stored state, as read under the lock.
#[derive(Debug)]
pub(super) enum Resume {
    /// Go on from this unfinished run's checkpoints.
    Continue(Box<RunState>),
    /// `--restart`: delete the stored state (readable or not), then start a new run.
    Discard,
    /// No unfinished run: start a new one.
    Start,
}

/// Decides from the state load's result: an unreadable state stops the run
/// unless `--restart` discards it, as it discards a readable one.
///
/// # Errors
/// The load's error, unless `restart` and it is about the state's content.
pub(super) fn choose(
    loaded: Result<Option<RunState>, Error>,
    restart: bool,
) -> Result<Resume, Error> {
    match loaded {
        Err(Error::State { .. }) | Ok(Some(_)) if restart => Ok(Resume::Discard),
        Err(e) => Err(e),
        Ok(Some(state)) => Ok(Resume::Continue(Box::new(state))),
        Ok(None) => Ok(Resume::Start),
    }
}

/// Loads the run's state under the lock (what `prepare` saw may have moved
/// since) and resumes it, or discards it and creates a new run's header.
///
/// # Errors
/// State that cannot be read or written, or that no longer fits the table.
pub(super) async fn open(store: &Store, prepared: &Prepared) -> Result<RunState, Error> {
    let table = &prepared.table;
    match choose(store.load().await, prepared.plan.restart)? {
        Resume::Continue(state) => {
            check_resumable(&state, prepared)?;
            return Ok(*state);
        }
        Resume::Discard => {
            tracing::warn!(
                table = %table.name,
                migration = prepared.migration.id(),
                "discarding the unfinished run's checkpoints (--restart)"
            );
            store.delete().await?;
        }
        Resume::Start => {}
    }
    store
        .create(prepared.segments, &table.keys, table.table_id.clone())
        .await
}

/// Refuses to resume a run whose stored state no longer fits the table.
pub(super) fn check_resumable(state: &RunState, prepared: &Prepared) -> Result<(), Error> {
    let state_table = &prepared.plan.state_table;
    if state.keys != prepared.table.keys {
        return Err(Error::State {
            table: state_table.clone(),
            message: format!(
                "the unfinished run of {} on {} started when the table's key was {:?}; it is now {:?}. \
                 Its checkpoints cannot be used on the new key schema and nothing was written. \
                 Run with --restart to start over",
                prepared.migration.id(),
                prepared.table.name,
                state.keys,
                prepared.table.keys
            ),
        });
    }
    if let (Some(then), Some(now)) = (&state.table_id, &prepared.table.table_id) {
        if then != now {
            return Err(Error::State {
                table: state_table.clone(),
                message: format!(
                    "the unfinished run of {} started on another table named {} (TableId {then}; the table now has {now}: \
                     it was deleted and created again). Its checkpoints do not apply and nothing was written. \
                     Run with --restart to start over",
                    prepared.migration.id(),
                    prepared.table.name
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::checkpoint::SegmentState;

    fn state() -> RunState {
        RunState {
            run_id: "r1".into(),
            total_segments: 2,
            keys: vec!["pk".into()],
            table_id: None,
            counts: Default::default(),
            attempts: 1,
            started_at: String::new(),
            checkpoint_at: None,
            segments: vec![SegmentState::Start; 2],
            segment_failed: vec![0; 2],
            segment_counts: vec![Default::default(); 2],
            dead_letters: vec![],
            journals: vec![],
            replayed: Default::default(),
        }
    }

    fn unreadable() -> Error {
        Error::State {
            table: "dynbulk-state".into(),
            message: "does not decode".into(),
        }
    }

    #[test]
    fn an_unfinished_run_is_continued_and_none_means_a_new_one() {
        assert!(
            matches!(choose(Ok(Some(state())), false), Ok(Resume::Continue(s)) if s.run_id == "r1")
        );
        assert!(matches!(choose(Ok(None), false), Ok(Resume::Start)));
        assert!(matches!(choose(Ok(None), true), Ok(Resume::Start)));
    }

    #[test]
    fn restart_discards_state_readable_or_not() {
        assert!(matches!(
            choose(Ok(Some(state())), true),
            Ok(Resume::Discard)
        ));
        assert!(matches!(
            choose(Err(unreadable()), true),
            Ok(Resume::Discard)
        ));
    }

    #[test]
    fn unreadable_state_stops_the_run_without_restart_and_other_errors_always() {
        assert!(matches!(
            choose(Err(unreadable()), false),
            Err(Error::State { .. })
        ));
        let io = || Error::Internal("state table unreachable".into());
        assert!(matches!(choose(Err(io()), true), Err(Error::Internal(_))));
    }
}
