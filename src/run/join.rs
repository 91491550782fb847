//! A process's part in a run shared with `run --join`: join the run (or
//! start it), claim segments until none is left, and finish: the one process
//! whose ledger write lands records the run with every process's counts.
//!
//! Steps, in order: join the lock's session ([`lock::join`]); open the run's
//! state (create its header with the shared flags, or check ours against
//! them: a conflict is exit 2 naming the flag); become a member (heartbeat,
//! membership row); the schema step; the data step, fed by a claimer task
//! that leases free or expired segments one slot at a time; then, once every
//! segment is done, mark the header finished, write the ledger entry
//! (conditioned on not holding this run's id already) and, for the process
//! that wrote it, delete the run's state; last, leave (release leases, remove
//! the membership row).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use rand::seq::SliceRandom;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::attempt::{blank_report, schema_step, start_metrics};
use super::outcome::{self, Ending};
use super::plan::Prepared;
use super::resume::check_resumable;
use super::{data, Failure, MAX_CONCURRENT_SCANS};
use crate::dynamo::value::Attrs;
use crate::error::Error;
use crate::metrics;
use crate::report::{Observer, Outcome, Report};
use crate::state::checkpoint::{RunState, SegmentState, Store, FINISHED};
use crate::state::fence::Fence;
use crate::state::lease::{self, Member, Observed, SegmentLease};
use crate::state::ledger::{Finished, Ledger, Status};
use crate::state::lock::{self, judge, Verdict, Version};
use crate::state::store::{query_state, runner_identity, Counts};

/// The flags every process of a shared run must be given alike, as the run's
/// first process stored them in the header.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Settings {
    /// TotalSegments of a run this process starts.
    pub segments: u32,
    /// True when `--segments` was given: a run started with another count
    /// is then refused; without it, the run's own count is taken.
    pub segments_given: bool,
    /// Read limit, units per second; `None`: unlimited.
    pub read: Option<f64>,
    /// Write limit, units per second; `None`: unlimited.
    pub write: Option<f64>,
    /// The optimistic-locking attribute every write guards.
    pub version: Option<String>,
}

const READ_LIMIT: &str = "rcu_limit";
const WRITE_LIMIT: &str = "wcu_limit";
const VERSION: &str = "version_attribute";
const UNLIMITED: &str = "unlimited";

impl Settings {
    fn of(prepared: &Prepared) -> Self {
        Settings {
            segments: prepared.segments,
            segments_given: prepared.plan.segments.is_some(),
            read: prepared.read_limit,
            write: prepared.write_limit,
            version: prepared
                .plan
                .version_attribute
                .clone()
                .or_else(|| prepared.migration.version_attribute().map(str::to_owned)),
        }
    }

    /// The header attributes that store these settings (TotalSegments is the
    /// header's own `total_segments`).
    fn attrs(&self) -> Attrs {
        let limit = |l: Option<f64>| match l {
            Some(u) => AttributeValue::N(u.to_string()),
            None => AttributeValue::S(UNLIMITED.into()),
        };
        HashMap::from([
            (READ_LIMIT.into(), limit(self.read)),
            (WRITE_LIMIT.into(), limit(self.write)),
            (
                VERSION.into(),
                AttributeValue::S(self.version.clone().unwrap_or_default()),
            ),
        ])
    }

    /// The first flag in which these settings differ from the run's header,
    /// as a message for the operator. Settings a header does not store (a run
    /// started without `--join`) are not compared.
    fn conflict(&self, header: &Attrs) -> Option<String> {
        let flag = |l: Option<f64>, name: &str| match l {
            Some(u) => format!("{name} {u}"),
            None => "--unlimited".to_owned(),
        };
        let limit = |k: &str| match header.get(k) {
            Some(AttributeValue::N(n)) => n.parse::<f64>().ok().map(Some),
            Some(AttributeValue::S(s)) if s == UNLIMITED => Some(None),
            _ => None,
        };
        let stored_segments = header
            .get("total_segments")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u32>().ok());
        let mut differs = Vec::new();
        let stored_segments = stored_segments.filter(|_| self.segments_given);
        if let Some(theirs) = stored_segments.filter(|t| *t != self.segments) {
            differs.push((
                format!("--segments {}", self.segments),
                format!("--segments {theirs}"),
            ));
        }
        for (key, mine, name) in [
            (READ_LIMIT, self.read, "--rcu-limit"),
            (WRITE_LIMIT, self.write, "--wcu-limit"),
        ] {
            if let Some(theirs) = limit(key).filter(|t| *t != mine) {
                differs.push((flag(mine, name), flag(theirs, name)));
            }
        }
        if let Some(AttributeValue::S(theirs)) = header.get(VERSION) {
            let mine = self.version.clone().unwrap_or_default();
            if *theirs != mine {
                let show = |v: &str| match v {
                    "" => "no --version-attribute".to_owned(),
                    v => format!("--version-attribute {v}"),
                };
                differs.push((show(&mine), show(theirs)));
            }
        }
        let (mine, theirs) = differs.into_iter().next()?;
        Some(format!(
            "this process was given {mine}, but the run in progress was started with {theirs}; \
             every process of a run shared with --join must be given the same flags \
             (or wait for the run to finish, or stop every process and run with --restart)"
        ))
    }
}

/// What a process sees of a shared run's segments in one read.
#[derive(Debug, Default, PartialEq)]
struct View {
    /// Every segment done, or the run finished (its header marked, or gone).
    complete: bool,
    /// Segments nobody holds, with what their rows held.
    free: Vec<(u32, Observed)>,
    /// Segments another member holds.
    leased: Vec<(u32, SegmentLease)>,
}

fn s_of<'a>(item: &'a Attrs, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// Reads a run's partition: which of its `total` segments are free, leased by
/// others, or done, for the member whose token is `me`.
fn view(items: &[Attrs], run_id: &str, total: u32, me: &str) -> View {
    let header = items.iter().find(|i| s_of(i, "sk") == Some("run"));
    let finished = match header {
        None => true,
        Some(h) => {
            s_of(h, "run_id") != Some(run_id)
                || matches!(h.get(FINISHED), Some(AttributeValue::Bool(true)))
        }
    };
    if finished {
        return View {
            complete: true,
            ..View::default()
        };
    }
    let rows: BTreeMap<u32, &Attrs> = items
        .iter()
        .filter_map(|i| {
            let n = s_of(i, "sk")?.strip_prefix("segment#")?.parse().ok()?;
            Some((n, i))
        })
        .collect();
    let mut v = View::default();
    let mut done = 0;
    for segment in 0..total {
        let Some(row) = rows.get(&segment) else {
            v.free.push((segment, Observed::Missing));
            continue;
        };
        let run = s_of(row, "run_id").unwrap_or_default();
        if run != run_id {
            v.free.push((segment, Observed::Foreign(run.to_owned())));
        } else if matches!(row.get("done"), Some(AttributeValue::Bool(true))) {
            done += 1;
        } else {
            match lease::decode_lease(row) {
                Some(l) if l.token == me => {}
                Some(l) => v.leased.push((segment, l)),
                None => v.free.push((segment, Observed::Free)),
            }
        }
    }
    v.complete = done == total;
    v
}

/// The run's state as this process opened it.
struct Opened {
    state: RunState,
    header: Attrs,
}

/// Runs this process's part of the shared run: see the module docs.
///
/// # Errors
/// As [`super::execute`]; a flag that differs from the run's is [`Error::Usage`].
pub(super) async fn execute(
    client: &Client,
    prepared: &Prepared,
    shutdown: CancellationToken,
    observer: Option<Observer>,
) -> Result<Report, Failure> {
    let plan = &prepared.plan;
    let (table, id) = (prepared.table.name.as_str(), prepared.migration.id());
    let ledger = Ledger::new(client.clone(), plan.state_table.clone());
    ledger.ensure().await?;
    let session = lock::join(client, &plan.state_table, table, id, plan.lease).await?;
    let fence = session.fence.clone();
    let store = Store::new(client.clone(), &plan.state_table, table, id).fenced(fence.clone());
    let opened = match open(prepared, &ledger, &store, &fence).await {
        Ok(Some(o)) => o,
        outcome => {
            lease::leave_session(client, &plan.state_table, &session, plan.lease).await;
            return match outcome {
                Ok(_) => Ok(blank_report(prepared, Outcome::Skipped)),
                Err(e) => Err(e.into()),
            };
        }
    };
    let slots = plan.workers.clamp(1, MAX_CONCURRENT_SCANS);
    let run_id = opened.state.run_id.clone();
    let member = Member::start(
        client,
        &plan.state_table,
        store.pk(),
        session,
        &run_id,
        plan.lease,
        slots,
        [prepared.read_limit, prepared.write_limit],
    )
    .await?;
    // Losing the membership (paused past the lease, or taken over) stops this process.
    let run_token = shutdown.child_token();
    let watch = {
        let lost = fence.lost();
        let run_token = run_token.clone();
        tokio::spawn(async move {
            lost.cancelled().await;
            run_token.cancel();
        })
    };
    let result = take_part(
        client, prepared, &store, &ledger, &member, opened, run_token, observer,
    )
    .await;
    watch.abort();
    member.leave().await;
    if fence.held() {
        return result;
    }
    super::lost_lock(
        result,
        &fence,
        &format!("the rest of this process's part in the run of migration {id} on table {table}"),
    )
}

/// Opens the shared run: joins the one in progress (its flags must be ours),
/// or creates it, the ledger then recording it in progress. `None` when the
/// ledger records the migration applied and no run is in progress (and no
/// `--rerun`).
async fn open(
    prepared: &Prepared,
    ledger: &Ledger,
    store: &Store,
    fence: &Fence,
) -> Result<Option<Opened>, Error> {
    let (table, id) = (prepared.table.name.as_str(), prepared.migration.id());
    let settings = Settings::of(prepared);
    let entry = ledger.get(table, id).await?;
    for _ in 0..5 {
        let (items, state) = store.load_items().await?;
        if let Some(state) = state {
            let header = items
                .into_iter()
                .find(|i| s_of(i, "sk") == Some("run"))
                .unwrap_or_default();
            if let Some(conflict) = settings.conflict(&header) {
                return Err(Error::Usage(conflict));
            }
            check_resumable(&state, prepared)?;
            return Ok(Some(Opened { state, header }));
        }
        if entry.as_ref().is_some_and(|e| e.status == Status::Applied) && !prepared.plan.rerun {
            return Ok(None);
        }
        let runs = entry.as_ref().map_or(0, |e| e.runs) + 1;
        let mut attrs = settings.attrs();
        attrs.insert("runs".into(), AttributeValue::N(runs.to_string()));
        let created = store
            .create_shared(
                settings.segments,
                &prepared.table.keys,
                prepared.table.table_id.clone(),
                attrs.clone(),
            )
            .await?;
        if let Some(state) = created {
            ledger
                .begin(table, id, &runner_identity(), runs, fence)
                .await?;
            tracing::info!(table, migration = id, run = %state.run_id, "started a run shared with --join");
            return Ok(Some(Opened {
                state,
                header: attrs,
            }));
        }
        // Another process created it a moment ago: join that one.
    }
    Err(Error::Internal(format!(
        "the run of migration {id} on table {table} kept appearing and disappearing while this process joined it"
    )))
}

/// The schema step, the data step with its claimer, and the finish.
#[allow(clippy::too_many_arguments)]
async fn take_part(
    client: &Client,
    prepared: &Prepared,
    store: &Store,
    ledger: &Ledger,
    member: &Arc<Member>,
    opened: Opened,
    run_token: CancellationToken,
    observer: Option<Observer>,
) -> Result<Report, Failure> {
    let Opened { state, header } = opened;
    let prepared = &*prepared.for_run(Some(&state));
    let mut report = blank_report(prepared, Outcome::Done);
    if let Some(step) = prepared.migration.schema_step() {
        if let Err(error) = schema_step(client, prepared, &step, &run_token, &mut report).await {
            return Err(Failure::with_report(error, report));
        }
        if report.outcome == Outcome::Stopped {
            return Ok(report);
        }
    }
    let (labels, started_unix) = start_metrics(prepared);
    // This process's own counts; the segment rows carry every process's.
    let local = RunState {
        counts: Counts {
            failed: state.counts.failed,
            ..Counts::default()
        },
        segments: vec![SegmentState::Start; state.total_segments as usize],
        segment_failed: vec![0; state.total_segments as usize],
        segment_counts: vec![Counts::default(); state.total_segments as usize],
        ..state.clone()
    };
    let (claims_tx, claims_rx) = mpsc::channel(MAX_CONCURRENT_SCANS);
    let stop_claims = run_token.child_token();
    let claimer = tokio::spawn(claim_segments(
        member.clone(),
        client.clone(),
        prepared.plan.state_table.clone(),
        store.pk(),
        state.total_segments,
        claims_tx,
        stop_claims.clone(),
    ));
    let step = data::Step {
        shutdown: run_token.clone(),
        fence: Some(member.fence().clone()),
        store,
        labels: &labels,
        observer,
        shared: Some(data::Shared {
            member: member.clone(),
            claims: claims_rx,
        }),
    };
    let (mut result, _) = step.run(client, prepared, Some(local), &mut report).await;
    stop_claims.cancel();
    let complete = match claimer.await {
        Ok(Ok(complete)) => complete,
        Ok(Err(e)) => {
            result = result.and(Err(e));
            false
        }
        Err(join) => {
            result = result.and(Err(Error::Panicked(format!(
                "the segment claimer panicked: {join}"
            ))));
            false
        }
    };
    report.total = None;
    report.outcome = outcome::outcome(Ending {
        failed: result.is_err(),
        cancelled: run_token.is_cancelled(),
        all_done: complete,
        item_failures: report.counts.failed,
    });
    let state_label = outcome::metric_state(result.is_err(), report.outcome);
    metrics::run_state(&labels, state_label, started_unix);
    if let Err(error) = result {
        return Err(Failure::with_report(error, report));
    }
    if complete && !run_token.is_cancelled() {
        if let Err(error) =
            finish(store, ledger, member.fence(), &state, &header, &mut report).await
        {
            return Err(Failure::with_report(error, report));
        }
    }
    Ok(report)
}

/// Every segment is done: marks the header finished, records the run in the
/// ledger once (with every process's counts, from the segment rows), and the
/// process whose record landed deletes the run's state. The report gets the
/// run's totals.
async fn finish(
    store: &Store,
    ledger: &Ledger,
    fence: &Fence,
    state: &RunState,
    header: &Attrs,
    report: &mut Report,
) -> Result<(), Error> {
    let (items, loaded) = store.load_items().await?;
    let ours = loaded.filter(|s| s.run_id == state.run_id);
    let Some(run) = ours else {
        // Finished and deleted by another process: the ledger has the totals.
        let entry = ledger.get(&report.table, &report.migration).await?;
        report.total = entry.map(|e| e.counts);
        return Ok(());
    };
    if !store.mark_finished(&run.run_id).await? {
        let entry = ledger.get(&report.table, &report.migration).await?;
        report.total = entry.map(|e| e.counts);
        return Ok(());
    }
    let header = items
        .iter()
        .find(|i| s_of(i, "sk") == Some("run"))
        .unwrap_or(header);
    let runs = header
        .get("runs")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let dead_letters: Vec<std::path::PathBuf> = run
        .dead_letters
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    let runner = runner_identity();
    let record = Finished {
        table: &report.table,
        migration: &report.migration,
        status: if run.totals().failed > 0 {
            Status::Failed
        } else {
            Status::Applied
        },
        runner: &runner,
        started_at: &run.started_at,
        runs,
        counts: run.totals(),
        schema: report.schema.as_deref(),
        dead_letters: &dead_letters,
        journals: &run
            .journals
            .iter()
            .map(std::path::PathBuf::from)
            .collect::<Vec<_>>(),
        replays: &run.replayed.ids,
        run_id: Some(&run.run_id),
    };
    let recorded = ledger.finish_shared(&record, fence).await?;
    if recorded {
        tracing::info!(table = %report.table, migration = %report.migration, run = %run.run_id, "recorded the shared run in the ledger; deleting its state");
        store.delete().await?;
    }
    report.total = Some(run.totals());
    report.dead_letters = dead_letters;
    report.journals = run.journals.iter().map(std::path::PathBuf::from).collect();
    report.replays = run.replayed.ids.clone();
    Ok(())
}

/// The claimer: one slot at a time, reads the run's segments and claims a
/// free one (at random, so that processes rarely collide) or one whose lease
/// it has seen unchanged for a whole lease period, and hands it to the scans.
/// `true` once every segment is done (the run complete); `false` when stopped.
///
/// # Errors
/// When the state table cannot be read or written, or the fence is lost.
async fn claim_segments(
    member: Arc<Member>,
    client: Client,
    state_table: String,
    run_pk: String,
    total: u32,
    tx: mpsc::Sender<(u32, Option<Attrs>)>,
    stop: CancellationToken,
) -> Result<bool, Error> {
    let mut watches: HashMap<u32, Option<(Version, Instant)>> = HashMap::new();
    // Often enough to see a renewal within a heartbeat or so.
    let poll = (member.lease() / 5).max(Duration::from_millis(50));
    loop {
        let mut slot = tokio::select! {
            s = member.slot() => Some(s),
            _ = stop.cancelled() => return Ok(false),
        };
        loop {
            if stop.is_cancelled() {
                return Ok(false);
            }
            let items = query_state(&client, &state_table, &run_pk)
                .await
                .map_err(|e| {
                    Error::aws(format!("reading the run's segments in {state_table}"), e)
                })?;
            let view = view(&items, member.run_id(), total, member.token());
            if view.complete {
                return Ok(true);
            }
            let mut candidates = view.free;
            candidates.shuffle(&mut rand::rng());
            let now = Instant::now();
            let leased: HashSet<u32> = view.leased.iter().map(|(s, _)| *s).collect();
            watches.retain(|s, _| leased.contains(s));
            for (segment, l) in view.leased {
                let period = member.lease().max(Duration::from_millis(l.lease_ms));
                let w = watches.entry(segment).or_default();
                match judge(w, l.version(), now, period) {
                    Verdict::Alive => *w = Some((l.version(), now)),
                    Verdict::Expired => candidates.push((segment, Observed::Expired(l))),
                    Verdict::Wait => {}
                }
            }
            let mut claimed = None;
            for (segment, observed) in candidates {
                let permit = slot.take().expect("a slot is in hand while claiming");
                match member.claim(segment, &observed, permit).await? {
                    Ok(c) => {
                        claimed = Some((segment, c, observed));
                        break;
                    }
                    Err(back) => slot = Some(back),
                }
            }
            if let Some((segment, c, observed)) = claimed {
                watches.remove(&segment);
                if let Observed::Expired(l) = &observed {
                    tracing::warn!(segment, previous = %l.owner, pid = l.pid, "took over a segment: its holder did not renew its lease for a whole lease period");
                } else {
                    tracing::info!(segment, "claimed a segment");
                }
                if tx.send((segment, c.last_key)).await.is_err() {
                    return Ok(false);
                }
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.cancelled() => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(segment: u32, run: &str, done: bool, token: Option<&str>) -> Attrs {
        let mut r = HashMap::from([
            (
                "sk".to_string(),
                AttributeValue::S(format!("segment#{segment}")),
            ),
            ("run_id".to_string(), AttributeValue::S(run.into())),
        ]);
        if done {
            r.insert("done".into(), AttributeValue::Bool(true));
        }
        if let Some(t) = token {
            r.insert("token".into(), AttributeValue::S(t.into()));
            r.insert("owner".into(), AttributeValue::S("u@h".into()));
            r.insert("beat".into(), AttributeValue::N("4".into()));
        }
        r
    }

    fn header(run: &str) -> Attrs {
        HashMap::from([
            ("sk".to_string(), AttributeValue::S("run".into())),
            ("run_id".to_string(), AttributeValue::S(run.into())),
            ("total_segments".to_string(), AttributeValue::N("5".into())),
        ])
    }

    #[test]
    fn a_view_tells_free_leased_and_done_segments_apart() {
        let items = vec![
            header("r"),
            row(0, "r", true, None),
            row(1, "r", false, Some("them")),
            row(2, "r", false, Some("me")),
            row(3, "old", true, None),
            // segment 4 has no row yet
        ];
        let v = view(&items, "r", 5, "me");
        assert!(!v.complete);
        assert_eq!(
            v.free,
            vec![(3, Observed::Foreign("old".into())), (4, Observed::Missing)]
        );
        assert_eq!(v.leased.len(), 1);
        assert_eq!(v.leased[0].0, 1);
        assert_eq!(v.leased[0].1.beat, 4);
        // A released row, not done, is free.
        let v = view(&[header("r"), row(0, "r", false, None)], "r", 1, "me");
        assert_eq!(v.free, vec![(0, Observed::Free)]);
    }

    #[test]
    fn a_run_is_complete_when_every_segment_is_done_or_its_header_finished_or_gone() {
        let all = vec![
            header("r"),
            row(0, "r", true, None),
            row(1, "r", true, None),
        ];
        assert!(view(&all, "r", 2, "me").complete);
        let mut finished = header("r");
        finished.insert(FINISHED.into(), AttributeValue::Bool(true));
        assert!(view(&[finished, row(0, "r", false, None)], "r", 2, "me").complete);
        assert!(view(&[], "r", 2, "me").complete, "deleted by the finisher");
        assert!(
            view(&[header("r2")], "r", 2, "me").complete,
            "our run is over: another one started"
        );
    }

    fn settings() -> Settings {
        Settings {
            segments: 12,
            segments_given: true,
            read: Some(500.0),
            write: None,
            version: None,
        }
    }

    #[test]
    fn a_joiner_without_segments_takes_the_runs_count() {
        let mut h = settings().attrs();
        h.insert("total_segments".into(), AttributeValue::N("12".into()));
        let defaulted = Settings {
            segments: 64,
            segments_given: false,
            ..settings()
        };
        assert_eq!(defaulted.conflict(&h), None);
    }

    #[test]
    fn a_joiner_whose_flags_differ_is_told_which_flag() {
        let mut h = settings().attrs();
        h.insert("total_segments".into(), AttributeValue::N("12".into()));
        assert_eq!(settings().conflict(&h), None);
        let segments = Settings {
            segments: 4,
            ..settings()
        };
        let e = segments.conflict(&h).unwrap();
        assert!(
            e.contains("--segments 4") && e.contains("started with --segments 12"),
            "{e}"
        );
        let read = Settings {
            read: Some(100.0),
            ..settings()
        };
        assert!(read.conflict(&h).unwrap().contains(
            "given --rcu-limit 100, but the run in progress was started with --rcu-limit 500"
        ));
        let write = Settings {
            write: Some(50.0),
            ..settings()
        };
        assert!(write
            .conflict(&h)
            .unwrap()
            .contains("started with --unlimited"));
        let version = Settings {
            version: Some("rev".into()),
            ..settings()
        };
        assert!(version
            .conflict(&h)
            .unwrap()
            .contains("--version-attribute rev"));
        // A run started without --join stores no limits: only TotalSegments is compared.
        let plain = HashMap::from([("total_segments".to_string(), AttributeValue::N("12".into()))]);
        assert_eq!(read.conflict(&plain), None);
    }
}
