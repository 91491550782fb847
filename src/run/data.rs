//! The data step of one attempt: start the checkpointer and the once-a-second
//! progress snapshot (metrics and the display), run the pipeline, wait for the
//! last checkpoints, and fill the report with what the attempt did.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pipeline::{self, Pipes};
use super::plan::Prepared;
use crate::capacity::limiter::{Budget, Budgets};
use crate::dynamo::value::Attrs;
use crate::error::Error;
use crate::metrics;
use crate::report::{Capacity, Observer, Progress, Report, Stats};
use crate::state::checkpoint::{self, Ack, RunState, SegmentState, Store};
use crate::state::deadletter::DeadLetter;
use crate::state::fence::Fence;
use crate::state::journal::Journal;
use crate::state::lease::Member;

/// What the data step needs besides the plan and the run's state.
pub(super) struct Step<'a> {
    pub shutdown: CancellationToken,
    /// The lock's fence; `None` in a dry run (no state is written).
    pub fence: Option<Fence>,
    pub store: &'a Store,
    pub labels: &'a metrics::RunLabels,
    pub observer: Option<Observer>,
    /// In a run shared with `--join`: this process's membership and the
    /// segments it claims (see `join`).
    pub shared: Option<Shared>,
}

/// What the data step of a process in a run shared with `--join` takes.
pub(super) struct Shared {
    pub member: Arc<Member>,
    pub claims: mpsc::Receiver<(u32, Option<Attrs>)>,
}

/// The checkpointer task: the final state and its count of state writes.
type Checkpointer = JoinHandle<Result<(RunState, u64), Error>>;

impl Step<'_> {
    /// Runs the data step; returns its result and the run's state after it
    /// (with the checkpoints the checkpointer saved).
    pub(super) async fn run(
        self,
        client: &Client,
        prepared: &Prepared,
        mut state: Option<RunState>,
        report: &mut Report,
    ) -> (Result<(), Error>, Option<RunState>) {
        let started = Instant::now();
        let stats = Arc::new(Stats::default());
        let dead_letter = Arc::new(DeadLetter::new(prepared.plan.dead_letter.clone()));
        let budgets = Arc::new(Budgets {
            read: Budget::new(prepared.read_limit),
            write: Budget::new(prepared.write_limit),
        });
        let (member, claims) = match self.shared {
            Some(Shared { member, claims }) => {
                // The run's limits are shared by its live processes.
                member.attach(budgets.clone());
                (Some(member), Some(claims))
            }
            None => (None, None),
        };
        let journal = match state.as_mut() {
            Some(st) => match open_journal(prepared, self.store, st, member.as_deref()).await {
                Ok(journal) => journal,
                Err(e) => return (Err(e), state),
            },
            None => None,
        };
        let (acks, checkpointer) = match state.clone() {
            Some(st) => {
                let (tx, task) =
                    spawn_checkpointer(self.store, st, &stats, &dead_letter, &journal, member);
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let snapshot = Snapshot {
            labels: self.labels.clone(),
            stats: stats.clone(),
            budgets: budgets.clone(),
            started,
            done_before: state.as_ref().map_or(0, |s| s.counts.scanned),
            segments_before: state.as_ref().map_or(0, |s| s.segments_done() as u64),
            segments_total: u64::from(prepared.segments),
            items_estimated: prepared.table.item_count,
            read_limit: prepared.read_limit,
            write_limit: prepared.write_limit,
        };
        let reporter = snapshot.every_second(self.observer.clone());
        let pipes = Pipes {
            shutdown: self.shutdown,
            stats: stats.clone(),
            dead_letter: dead_letter.clone(),
            failed_before: state.as_ref().map_or(0, |s| s.totals().failed),
            budgets: budgets.clone(),
            acks,
            starts: match &state {
                Some(st) => st.segments.clone(),
                None => vec![SegmentState::Start; prepared.segments as usize],
            },
            claims,
            fence: self.fence,
            journal,
        };
        let mut result = pipeline::run(client, prepared, pipes).await;
        // Every worker is done: the ack channel is closed, the checkpointer drains and ends.
        let state = match checkpointer {
            Some(task) => join_checkpointer(task, state, &mut result, report).await,
            None => state,
        };
        reporter.abort();
        let last = snapshot.take();
        if let Some(o) = &self.observer {
            o(&last);
        }
        report.capacity = Capacity {
            read_limit: prepared.read_limit,
            write_limit: prepared.write_limit,
            read_consumed: last.read_consumed,
            write_consumed: last.write_consumed,
            read_rate: last.read_rate,
            write_rate: last.write_rate,
            write_estimate: stats.write_estimate(),
            page_size: prepared.page_size,
        };
        report.counts = last.counts;
        report.samples = stats.samples();
        report.elapsed = started.elapsed();
        report.dead_letters = dead_letter_files(state.as_ref(), &dead_letter).await;
        report.journals = state
            .as_ref()
            .map(|s| s.journals.iter().map(PathBuf::from).collect())
            .unwrap_or_default();
        report.replays = state
            .as_ref()
            .map(|s| s.replayed.ids.clone())
            .unwrap_or_default();
        (result, state)
    }
}

/// Starts the checkpointer on the run's state; pages are acknowledged to it
/// through the returned sender.
fn spawn_checkpointer(
    store: &Store,
    state: RunState,
    stats: &Stats,
    dead_letter: &Arc<DeadLetter>,
    journal: &Option<Arc<Journal>>,
    member: Option<Arc<Member>>,
) -> (mpsc::Sender<Ack>, Checkpointer) {
    let (tx, rx) = mpsc::channel(1024);
    let task = checkpoint::checkpointer(
        store.clone(),
        state,
        rx,
        stats.checkpoint_saves.clone(),
        dead_letter.clone(),
        journal.clone(),
        member,
    );
    (tx, tokio::spawn(task))
}

/// This attempt's journal (none with `--no-journal`), named in the run's
/// state before any write is sent: a write whose record is in a file the
/// state does not name could never be reverted.
///
/// # Errors
/// When the journal's directory cannot be created or the state not written.
async fn open_journal(
    prepared: &Prepared,
    store: &Store,
    state: &mut RunState,
    member: Option<&Member>,
) -> Result<Option<Arc<Journal>>, Error> {
    let Some(dir) = prepared.plan.journal_dir() else {
        return Ok(None);
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::io(
            format!("creating the journal directory {}", dir.display()),
            e,
        )
    })?;
    let journal = Journal::new(Journal::file_in(
        &dir,
        &prepared.table.name,
        prepared.migration.id(),
    ));
    journal.create()?;
    let path = journal.path().to_string_lossy().into_owned();
    state.journals.push(path.clone());
    match member {
        Some(member) => member.name_journal(&path).await?,
        None => store.put_header(state).await?,
    }
    Ok(Some(Arc::new(journal)))
}

/// Waits for the checkpointer: its final state and write count go into the
/// report; its failure (or panic) joins the pipeline's result, and the state
/// stays as the attempt began.
async fn join_checkpointer(
    task: Checkpointer,
    state: Option<RunState>,
    result: &mut Result<(), Error>,
    report: &mut Report,
) -> Option<RunState> {
    match task.await {
        Ok(Ok((final_state, writes))) => {
            report.state_writes = writes;
            report.total = Some(final_state.totals());
            return Some(final_state);
        }
        Ok(Err(e)) => {
            *result = std::mem::replace(result, Ok(())).and(Err(e));
        }
        Err(join) => {
            let e = Error::Panicked(format!("the checkpointer panicked: {join}"));
            *result = std::mem::replace(result, Ok(())).and(Err(e));
        }
    }
    state
}

/// The run's progress at one moment, published to the metrics and handed to
/// the observer (the progress display).
struct Snapshot {
    labels: metrics::RunLabels,
    stats: Arc<Stats>,
    budgets: Arc<Budgets>,
    started: Instant,
    /// Items done by earlier attempts of the run.
    done_before: u64,
    /// Segments done by earlier attempts of the run.
    segments_before: u64,
    segments_total: u64,
    items_estimated: u64,
    read_limit: Option<f64>,
    write_limit: Option<f64>,
}

impl Snapshot {
    /// Takes a snapshot and publishes it to the metrics.
    fn take(&self) -> Progress {
        let (stats, budgets) = (&self.stats, &self.budgets);
        let progress = Progress {
            counts: stats.counts(),
            done_before: self.done_before,
            items_estimated: self.items_estimated,
            segments_total: self.segments_total,
            segments_done: self.segments_before + stats.segments_done.load(Relaxed),
            elapsed: self.started.elapsed(),
            read_consumed: budgets.read.consumed(),
            write_consumed: budgets.write.consumed(),
            read_limit: self.read_limit,
            write_limit: self.write_limit,
            read_rate: budgets.read.rate(),
            write_rate: budgets.write.rate(),
        };
        let saves = stats.checkpoint_saves.load(Relaxed);
        metrics::publish(&self.labels, &progress, saves);
        progress
    }

    /// A task that takes a snapshot a second and hands it to `observer`.
    fn every_second(&self, observer: Option<Observer>) -> JoinHandle<()> {
        let snapshot = Snapshot {
            labels: self.labels.clone(),
            stats: self.stats.clone(),
            budgets: self.budgets.clone(),
            ..*self
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let p = snapshot.take();
                if let Some(o) = &observer {
                    o(&p);
                }
            }
        })
    }
}

/// The dead-letter files of the run: those its state names (earlier attempts,
/// and this one once a checkpoint covered a failure), then this attempt's if
/// it holds records the state does not know of yet (pages not acknowledged,
/// a dry run).
async fn dead_letter_files(state: Option<&RunState>, current: &DeadLetter) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = state
        .map(|s| s.dead_letters.iter().map(PathBuf::from).collect())
        .unwrap_or_default();
    if current.has_records().await && !files.iter().any(|f| f == current.path()) {
        files.push(current.path().to_owned());
    }
    files
}
