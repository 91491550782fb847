//! One run shared by three real processes (`run --join`) against the real
//! endpoint through the capacity-limited proxy: segments are leased in the
//! state table, a killed process's segments are taken over from their
//! checkpoints, a paused one cannot move a checkpoint it no longer holds,
//! the ledger records the run once with every process's counts, and the
//! run's capacity limit is one budget shared by the processes, also while
//! processes join and leave.

mod common;
mod proxy;

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use dynbulk::state::ledger::{Ledger, Status};
use proxy::{Config, Proxy};

const MIGRATION: &str = "20241220_add_status_category_fields";

/// Short enough that takeovers come within seconds, long enough that a busy
/// machine's slow answers do not lose a lease (a heartbeat every 2.7 s).
const LEASE: &str = "8s";

/// One three-process run at a time: six debug-build processes at once on a
/// small machine starve each other's heartbeats.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const ITEMS: u64 = 3_000;

fn join_args(endpoint: &str, table: &str, state: &str) -> Vec<String> {
    [
        "run",
        "--join",
        "--endpoint-url",
        endpoint,
        "--table",
        table,
        "--state-table",
        state,
        "--rcu-limit",
        "100000",
        "--wcu-limit",
        "100000",
        // Two segments held at a time per process: all three hold two from
        // the start, so a dead process's segments are taken over mid-run.
        "--segments",
        "6",
        "--workers",
        "2",
        "--page-size",
        "40",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn spawn(args: &[String]) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Info logs (joins, claims, takeovers) are in a failed test's output.
    spawn_dynbulk(
        &args,
        &[
            ("DYNBULK_LEASE", LEASE),
            ("DYNBULK_LOG", "warn,dynbulk=info"),
        ],
    )
}

/// A proxy that serves the data table slowly enough for a run of ~20 s.
async fn slow_proxy(table: &str) -> Proxy {
    let config = Config {
        write_capacity: Some(120.0),
        ..Config::new(table)
    };
    Proxy::start(&endpoint(), config).await
}

/// The run's state rows, by sort key.
async fn run_rows(state: &str, table: &str) -> HashMap<String, Attrs> {
    client()
        .query()
        .table_name(state)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", AttributeValue::S(format!("run#{table}#{MIGRATION}")))
        .consistent_read(true)
        .send()
        .await
        .map(|o| o.items.unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|r| (s(&r, "sk").unwrap_or_default().to_owned(), r))
        .collect()
}

fn s<'a>(item: &'a Attrs, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn n(item: &Attrs, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// The segment rows `pid` holds a lease on, with their lease tokens.
fn held_by(rows: &HashMap<String, Attrs>, pid: u32) -> HashMap<String, String> {
    rows.iter()
        .filter(|(sk, r)| sk.starts_with("segment#") && n(r, "pid") == Some(i64::from(pid)))
        .filter_map(|(sk, r)| Some((sk.clone(), s(r, "token")?.to_owned())))
        .collect()
}

/// Waits until one of `children` holds a segment whose checkpoint it has
/// saved (it is mid-run, with work of its own to take over); returns which,
/// and its segment rows with their lease tokens.
async fn wait_until_one_is_mid_run(
    state: &str,
    table: &str,
    children: &mut [Child],
) -> (usize, HashMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = run_rows(state, table).await;
        for (i, child) in children.iter_mut().enumerate() {
            let held = held_by(&rows, child.id());
            let saved = held
                .iter()
                .any(|(sk, token)| s(&rows[sk], "saved_by") == Some(token.as_str()));
            if saved {
                return (i, held);
            }
            if let Some(status) = child.try_wait().unwrap() {
                let (_, out, err) = output_of(child);
                panic!("a process ended ({status}) before any held a checkpointed segment\n{out}\n{err}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "no process ever held a checkpointed segment"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn output_of(child: &mut Child) -> (Option<i32>, String, String) {
    let mut out = String::new();
    let mut err = String::new();
    if let Some(o) = child.stdout.as_mut() {
        let _ = std::io::Read::read_to_string(o, &mut out);
    }
    if let Some(e) = child.stderr.as_mut() {
        let _ = std::io::Read::read_to_string(e, &mut err);
    }
    (child.wait().ok().and_then(|s| s.code()), out, err)
}

/// Waits until none of `segments` is leased under the tokens it had (each
/// taken over by another process, or done); returns the rows then.
async fn wait_for_takeover(
    state: &str,
    table: &str,
    segments: &HashMap<String, String>,
) -> HashMap<String, Attrs> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = run_rows(state, table).await;
        let still = segments
            .iter()
            .filter(|(sk, token)| rows.get(*sk).and_then(|r| s(r, "token")) == Some(token.as_str()))
            .count();
        if still == 0 {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{still} segments were never taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids of the run's membership rows.
async fn member_pids(state: &str, table: &str) -> Vec<u32> {
    client()
        .query()
        .table_name(state)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", AttributeValue::S(format!("lock#{table}#{MIGRATION}")))
        .consistent_read(true)
        .send()
        .await
        .map(|o| o.items.unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .filter(|r| s(r, "sk").is_some_and(|sk| sk.starts_with("member#")))
        .filter_map(|r| n(r, "pid"))
        .map(|p| p as u32)
        .collect()
}

async fn ledger_entry(state: &str, table: &str) -> dynbulk::state::ledger::Entry {
    Ledger::new(client(), state.to_owned())
        .get(table, MIGRATION)
        .await
        .unwrap()
        .expect("a ledger entry")
}

/// The run is recorded once, applied, with every item counted exactly once
/// over all processes (the rows' counts follow their checkpoints, so pages a
/// killed process had not checkpointed are counted by whoever redid them),
/// and its state is gone.
async fn assert_recorded_once(state: &str, table: &str) {
    let entry = ledger_entry(state, table).await;
    assert_eq!(entry.status, Status::Applied, "{entry:?}");
    assert_eq!(entry.runs, 1, "one run: {entry:?}");
    let c = entry.counts;
    assert_eq!(c.scanned, ITEMS, "{entry:?}");
    assert_eq!(c.updated + c.deleted + c.unchanged, ITEMS, "{entry:?}");
    assert_eq!(c.failed, 0, "{entry:?}");
    assert!(
        run_rows(state, table).await.is_empty(),
        "the finished run's state is deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_a_run_and_a_killed_ones_segments_are_taken_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (table, items) = small_items_table("orders-join", ITEMS, 41).await;
    let state = TestTable::named("state");
    let proxy = slow_proxy(&table.name).await;
    let args = join_args(&proxy.url, &table.name, &state.name);
    let mut procs: Vec<Child> = (0..3).map(|_| spawn(&args)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while member_pids(&state.name, &table.name).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the three processes never all joined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (victim, held) = wait_until_one_is_mid_run(&state.name, &table.name, &mut procs).await;
    let mut b = procs.remove(victim);
    let (a, c) = (procs.remove(0), procs.remove(0));
    // `status` shows the run in progress: its processes and segments.
    let (code, out, err) = output(spawn(
        &[
            "status",
            "--endpoint-url",
            &proxy.url,
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ]
        .map(str::to_owned),
    ));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("in_progress"), "{out}");
    assert!(
        out.contains("shared run (--join): 3 live process(es)"),
        "{out}"
    );
    assert!(out.contains(&format!("(pid {})", b.id())), "{out}");
    assert!(out.contains("leased by"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("segments:") && l.contains("(of 6)")),
        "{out}"
    );
    b.kill().unwrap(); // SIGKILL: no lease released, no checkpoint saved
    b.wait().unwrap();
    // Its segments are taken over by the others, from their checkpoints;
    // the killed process, restarted with the same command once the first
    // is, joins again.
    let first: HashMap<String, String> = held
        .iter()
        .take(1)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    wait_for_takeover(&state.name, &table.name, &first).await;
    let b2 = spawn(&args);
    let rows = wait_for_takeover(&state.name, &table.name, &held).await;
    let others = [a.id(), c.id(), b2.id()].map(i64::from);
    for sk in held.keys() {
        let row = &rows[sk];
        let done = row.get("done") == Some(&AttributeValue::Bool(true));
        assert!(
            done || others.contains(&n(row, "pid").unwrap_or(0)),
            "{sk} went to another process: {row:?}"
        );
    }
    let mut errs = Vec::new();
    for (name, child) in [("a", a), ("c", c), ("b restarted", b2)] {
        let (code, out, err) = output(child);
        assert_eq!(code, Some(0), "{name}\n{out}\n{err}");
        errs.push(err);
    }
    assert!(
        errs[2].contains("joined the run in progress"),
        "the restarted process joined the run: {}",
        errs[2]
    );
    assert_migrated(&table.name, &items).await;
    assert_recorded_once(&state.name, &table.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_paused_past_its_lease_cannot_move_a_checkpoint_it_no_longer_holds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (table, items) = small_items_table("orders-pause", ITEMS, 42).await;
    let state = TestTable::named("state");
    let proxy = slow_proxy(&table.name).await;
    let args = join_args(&proxy.url, &table.name, &state.name);
    let mut procs: Vec<Child> = (0..3).map(|_| spawn(&args)).collect();
    let (victim, held) = wait_until_one_is_mid_run(&state.name, &table.name, &mut procs).await;
    let p = procs.remove(victim);
    let (a, c) = (procs.remove(0), procs.remove(0));
    let pid = p.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let before = wait_for_takeover(&state.name, &table.name, &held).await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let (code, out, err) = output(p);
    let after = run_rows(&state.name, &table.name).await;

    // What the paused process had in hand when it woke: nothing it sends
    // lands on a segment it held.
    assert_eq!(code, Some(3), "it stops: it lost its leases\n{out}\n{err}");
    let token = held.values().next().expect("it held a segment");
    for sk in held.keys() {
        let b = &before[sk];
        let Some(a) = after.get(sk) else { continue };
        assert_ne!(s(a, "token"), Some(token.as_str()), "{sk}: {a:?}");
        if s(a, "saved_by") == Some(token.as_str()) {
            // Its last checkpoint, saved before the takeover, and no later one.
            assert_eq!(
                (a.get("last_key"), a.get("checkpoint_at")),
                (b.get("last_key"), b.get("checkpoint_at")),
                "{sk} was moved by the paused process after it was taken over"
            );
        }
    }

    for (name, child) in [("a", a), ("c", c)] {
        let (code, out, err) = output(child);
        assert_eq!(code, Some(0), "{name}\n{out}\n{err}");
    }
    assert_migrated(&table.name, &items).await;
    assert_recorded_once(&state.name, &table.name).await;
}

/// The processes together, in any 10-second window of writes through
/// `proxy`: within the run's limit (`limit` WCU/s) + 5%, and at 90% of it or
/// more in the busiest one.
fn assert_busiest_window_near(proxy: &Proxy, limit: f64) {
    let stats = proxy.stats();
    let busiest = stats.max_window(proxy::Kind::Write, 10.0);
    println!(
        "busiest 10 s: {busiest} WCU of {}; whole run: {} WCU in {:.1} s",
        limit * 10.0,
        stats.total(proxy::Kind::Write).units,
        stats.last(proxy::Kind::Write)
    );
    assert!(
        busiest <= limit * 10.0 * 1.05,
        "{busiest} WCU in 10 s against a limit of {limit}/s"
    );
    assert!(
        busiest >= limit * 10.0 * 0.9,
        "{busiest} WCU in the busiest 10 s against a limit of {limit}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_one_capacity_limit() {
    const MANY: u64 = 4_500;
    const LIMIT: f64 = 150.0;
    let _one = ONE_AT_A_TIME.lock().await;
    let (table, items) = small_items_table("orders-budget", MANY, 43).await;
    let state = TestTable::named("state");
    // No capacity limit at the proxy: only the processes' shared budget
    // holds them back, and the proxy counts what each window served.
    let proxy = Proxy::start(&endpoint(), Config::new(&table.name)).await;
    let mut args = join_args(&proxy.url, &table.name, &state.name);
    let wcu = args.iter().position(|a| a == "--wcu-limit").unwrap() + 1;
    args[wcu] = format!("{LIMIT}");
    let runs: Vec<Child> = (0..3).map(|_| spawn(&args)).collect();
    for (i, child) in runs.into_iter().enumerate() {
        let (code, out, err) = output(child);
        assert_eq!(code, Some(0), "process {i}\n{out}\n{err}");
    }
    assert_migrated(&table.name, &items).await;
    assert_busiest_window_near(&proxy, LIMIT);
}

/// Waits until the proxy has served `units` WCU of writes to the data table,
/// failing if a process ends first.
async fn wait_for_writes(proxy: &Proxy, units: f64, children: &mut [&mut Child]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while proxy.stats().total(proxy::Kind::Write).units < units {
        for child in children.iter_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                let (_, out, err) = output_of(child);
                panic!("a process ended ({status}) before {units} WCU were written\n{out}\n{err}");
            }
        }
        assert!(Instant::now() < deadline, "{units} WCU never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_capacity_limit_holds_while_processes_join_and_leave() {
    const MANY: u64 = 6_000;
    const LIMIT: f64 = 150.0;
    let _one = ONE_AT_A_TIME.lock().await;
    let (table, items) = small_items_table("orders-churn", MANY, 45).await;
    let state = TestTable::named("state");
    let proxy = Proxy::start(&endpoint(), Config::new(&table.name)).await;
    let mut args = join_args(&proxy.url, &table.name, &state.name);
    let wcu = args.iter().position(|a| a == "--wcu-limit").unwrap() + 1;
    args[wcu] = format!("{LIMIT}");
    // Enough segments that a late joiner still finds free ones.
    let segments = args.iter().position(|a| a == "--segments").unwrap() + 1;
    args[segments] = "24".into();
    // One process starts alone; a second and a third join while it runs;
    // the second leaves with Ctrl-C (its leases and membership released),
    // the third is killed (its share and segments held until its lease
    // expires); the first finishes the run.
    let total = MANY as f64;
    let mut a = spawn(&args);
    wait_for_writes(&proxy, total * 0.15, &mut [&mut a]).await;
    let mut b = spawn(&args);
    wait_for_writes(&proxy, total * 0.30, &mut [&mut a, &mut b]).await;
    let mut c = spawn(&args);
    wait_for_writes(&proxy, total * 0.45, &mut [&mut a, &mut b, &mut c]).await;
    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(b.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let (code, out, err) = output(b);
    assert_eq!(code, Some(130), "{out}\n{err}");
    wait_for_writes(&proxy, total * 0.60, &mut [&mut a, &mut c]).await;
    c.kill().unwrap();
    c.wait().unwrap();
    let (code, out, err) = output(a);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_migrated(&table.name, &items).await;
    let entry = ledger_entry(&state.name, &table.name).await;
    assert_eq!(entry.status, Status::Applied, "{entry:?}");
    assert_eq!(entry.runs, 1, "one run: {entry:?}");
    assert_eq!(entry.counts.scanned, MANY, "{entry:?}");
    assert_busiest_window_near(&proxy, LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_process_saves_its_checkpoints_and_releases_its_leases() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (table, items) = small_items_table("orders-int", ITEMS, 44).await;
    let state = TestTable::named("state");
    let proxy = slow_proxy(&table.name).await;
    let args = join_args(&proxy.url, &table.name, &state.name);
    let mut procs: Vec<Child> = (0..2).map(|_| spawn(&args)).collect();
    let (victim, held) = wait_until_one_is_mid_run(&state.name, &table.name, &mut procs).await;
    let stopped = procs.remove(victim);
    let other = procs.remove(0);
    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(stopped.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let (code, out, err) = output(stopped);
    assert_eq!(code, Some(130), "{out}\n{err}");
    // Its leases are released at once, its checkpoints kept: the rows it
    // held are free (or already taken by the other process), none lost its
    // progress.
    let rows = run_rows(&state.name, &table.name).await;
    for (sk, token) in &held {
        let Some(row) = rows.get(sk) else { continue };
        assert_ne!(
            s(row, "token"),
            Some(token.as_str()),
            "{sk} still leased: {row:?}"
        );
        if s(row, "saved_by") == Some(token.as_str()) {
            let done = row.get("done") == Some(&AttributeValue::Bool(true));
            assert!(
                done || row.contains_key("last_key"),
                "{sk} kept its checkpoint: {row:?}"
            );
        }
    }
    let (code, out, err) = output(other);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_migrated(&table.name, &items).await;
    assert_recorded_once(&state.name, &table.name).await;
}
