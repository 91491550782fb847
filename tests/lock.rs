//! The lock, with real processes: liveness is judged by watching the lease
//! on the acquirer's own monotonic clock, never by comparing wall clocks.
//! Clocks are skewed through the proxy, which shifts every time a runner
//! writes to the state table.

mod common;
mod proxy;

use std::process::Child;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use dynbulk::state::ledger::{Ledger, Status};
use proxy::{Config, Proxy};

const MIGRATION: &str = "20241220_add_status_category_fields";

/// A short lease keeps takeovers quick (a heartbeat every 1.7 s), yet long
/// enough that a busy machine's slow answers do not lose it.
const LEASE: &str = "5s";

const HOUR_MS: i64 = 3_600_000;

fn spawn(args: &[&str]) -> Child {
    spawn_dynbulk(args, &[("DYNBULK_LEASE", LEASE)])
}

fn run_args<'a>(endpoint: &'a str, table: &'a str, state: &'a str, wcu: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--endpoint-url",
        endpoint,
        "--table",
        table,
        "--state-table",
        state,
        "--rcu-limit",
        "100000",
        "--wcu-limit",
        wcu,
        // Small pages: checkpoints come early and often.
        "--page-size",
        "50",
    ]
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The lock item as stored (held or not).
async fn lock_item(state: &str, table: &str) -> Option<Attrs> {
    client()
        .get_item()
        .table_name(state)
        .key("pk", AttributeValue::S(format!("lock#{table}#{MIGRATION}")))
        .key("sk", AttributeValue::S("lock".into()))
        .consistent_read(true)
        .send()
        .await
        .ok()
        .and_then(|o| o.item)
}

/// Waits until some runner holds the lock, and says who.
async fn wait_for_holder(state: &str, table: &str) -> dynbulk::state::lock::Holder {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = dynbulk::state::lock::holder(&client(), state, table, MIGRATION)
            .await
            .unwrap()
        {
            return h;
        }
        assert!(Instant::now() < deadline, "no runner took the lock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The run's state rows (header `run`, then `segment#N`), as stored.
async fn run_rows(state: &str, table: &str) -> Vec<Attrs> {
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
}

fn sk(item: &Attrs) -> &str {
    item.get("sk")
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .unwrap_or("")
}

/// Waits until the run of `runner` has saved a checkpoint of some segment.
async fn wait_for_checkpoint(state: &str, table: &str, runner: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_rows(state, table)
        .await
        .iter()
        .any(|r| sk(r).starts_with("segment#"))
    {
        if runner.try_wait().unwrap().is_some() {
            let mut err = String::new();
            std::io::Read::read_to_string(runner.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the runner ended before its first checkpoint: {err}");
        }
        assert!(Instant::now() < deadline, "no checkpoint was saved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A proxy in front of the endpoint that makes the holder's wall clock
/// `skew_ms` off from everyone else's.
async fn skewed_proxy(table: &str, skew_ms: i64) -> Proxy {
    let config = Config {
        clock_skew_ms: skew_ms,
        ..Config::new(table)
    };
    Proxy::start(&endpoint(), config).await
}

/// The migration's ledger entry on `table`, which must exist.
async fn ledger_entry(state: &str, table: &str) -> dynbulk::state::ledger::Entry {
    Ledger::new(client(), state.to_owned())
        .get(table, MIGRATION)
        .await
        .unwrap()
        .expect("a ledger entry")
}

fn n(item: &Attrs, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_whose_clock_says_its_lease_expired_is_not_taken_over() {
    let (table, items) = small_items_table("orders-behind", 2_000, 31).await;
    let state = TestTable::named("state");
    // The holder's wall clock is an hour behind: every expiry it records is
    // an hour in the past by everyone else's.
    let behind = skewed_proxy(&table.name, -HOUR_MS).await;
    let holder = spawn(&run_args(&behind.url, &table.name, &state.name, "150"));
    let h = wait_for_holder(&state.name, &table.name).await;
    assert!(
        h.expires_ms < now_ms() - HOUR_MS / 2,
        "the recorded expiry is in the past by this clock: {} vs {}",
        h.expires_ms,
        now_ms()
    );

    let direct = endpoint();
    let (code, _, stderr) = output(spawn(&run_args(&direct, &table.name, &state.name, "2000")));
    if code != Some(2) {
        let (_, _, holder_err) = output(holder);
        panic!("the second runner was not refused ({code:?}): {stderr}\nthe holder: {holder_err}");
    }
    assert!(stderr.contains("already being run by"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", holder.id())),
        "names the holder: {stderr}"
    );

    let (code, stdout, stderr) = output(holder);
    assert_eq!(
        code,
        Some(0),
        "the holder kept its lock and finished\n{stdout}\n{stderr}"
    );
    assert_migrated(&table.name, &items).await;
    let entry = ledger_entry(&state.name, &table.name).await;
    assert_eq!(entry.status, Status::Applied);
    assert_eq!(entry.runs, 1, "no second run ever started");
    let lock = lock_item(&state.name, &table.name)
        .await
        .expect("the lock item stays");
    assert_eq!(
        n(&lock, "epoch"),
        Some(1),
        "the lock was taken once: {lock:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_taken_over_after_one_observed_lease_period_whatever_its_clock_says() {
    let (table, items) = small_items_table("orders-dead", 2_000, 32).await;
    let state = TestTable::named("state");
    // The holder's wall clock is an hour ahead: the expiry it records stays
    // in the future by everyone else's for an hour after it dies.
    let ahead = skewed_proxy(&table.name, HOUR_MS).await;
    let mut holder = spawn(&run_args(&ahead.url, &table.name, &state.name, "150"));
    wait_for_checkpoint(&state.name, &table.name, &mut holder).await;
    holder.kill().unwrap(); // SIGKILL
    let (code, _, stderr) = output(holder);
    assert_eq!(code, None, "killed while it ran: {stderr}");
    // As if it ran on another machine: nothing here can tell whether its
    // process is alive, so only watching its lease can.
    client()
        .update_item()
        .table_name(&state.name)
        .key(
            "pk",
            AttributeValue::S(format!("lock#{}#{MIGRATION}", table.name)),
        )
        .key("sk", AttributeValue::S("lock".into()))
        .update_expression("SET #host = :h, #owner = :o REMOVE boot_id, pid_ns")
        .expression_attribute_names("#host", "host")
        .expression_attribute_names("#owner", "owner")
        .expression_attribute_values(":h", AttributeValue::S("worker-7".into()))
        .expression_attribute_values(":o", AttributeValue::S("ci@worker-7".into()))
        .send()
        .await
        .unwrap();
    let dead = dynbulk::state::lock::holder(&client(), &state.name, &table.name, MIGRATION)
        .await
        .unwrap()
        .expect("the dead holder's lock");
    assert!(
        dead.expires_ms > now_ms() + HOUR_MS / 2,
        "the recorded expiry is in the future by this clock"
    );

    let direct = endpoint();
    let (code, stdout, stderr) =
        output(spawn(&run_args(&direct, &table.name, &state.name, "2000")));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("took over the lock") && stderr.contains("whole lease period"),
        "taken over after watching it unrenewed for a lease period: {stderr}"
    );
    assert!(
        stdout.contains("resuming:"),
        "the dead run is resumed: {stdout}"
    );
    assert_migrated(&table.name, &items).await;
    let entry = ledger_entry(&state.name, &table.name).await;
    assert_eq!(entry.status, Status::Applied);
    assert_eq!(entry.runs, 2);
    let lock = lock_item(&state.name, &table.name)
        .await
        .expect("the lock item stays");
    assert_eq!(n(&lock, "epoch"), Some(2), "taken twice: {lock:?}");
    assert!(!lock.contains_key("token"), "and released: {lock:?}");
}

/// The items of each of `total` parallel-scan segments, in scan order.
async fn segments_of(table: &str, total: i32) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for segment in 0..total {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let page = client()
                .scan()
                .table_name(table)
                .segment(segment)
                .total_segments(total)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            keys.extend(page.items().iter().map(key_string));
            start = page.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                break;
            }
        }
        out.push(keys);
    }
    out
}

fn s<'a>(item: &'a Attrs, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_cut_off_past_its_lease_writes_nothing_into_the_run_that_took_over() {
    const ITEMS: u64 = 3_000;
    let (table, items) = small_items_table("orders-cut", ITEMS, 33).await;
    let state = TestTable::named("state");
    let to_a = Proxy::start(&endpoint(), Config::new(&table.name)).await;
    let to_b = Proxy::start(&endpoint(), Config::new(&table.name)).await;
    let header = |rows: &[Attrs]| rows.iter().find(|r| sk(r) == "run").cloned();
    let segment_rows = |rows: &[Attrs]| -> Vec<Attrs> {
        rows.iter()
            .filter(|r| sk(r).starts_with("segment#"))
            .cloned()
            .collect()
    };

    // A: the default 4 segments, slowly.
    let mut a = spawn(&run_args(&to_a.url, &table.name, &state.name, "100"));
    wait_for_checkpoint(&state.name, &table.name, &mut a).await;
    let run_a = header(&run_rows(&state.name, &table.name).await)
        .and_then(|h| s(&h, "run_id").map(str::to_owned))
        .expect("A's run header");

    // A is cut off; B restarts the migration with 8 segments once A's lease is gone.
    to_a.cut();
    let mut b_args = run_args(&to_b.url, &table.name, &state.name, "100");
    b_args.extend(["--restart", "--yes", "--segments", "8"]);
    let mut b = spawn(&b_args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_b = loop {
        let rows = run_rows(&state.name, &table.name).await;
        if let Some(id) = header(&rows).and_then(|h| s(&h, "run_id").map(str::to_owned)) {
            if id != run_a && !segment_rows(&rows).is_empty() {
                break id;
            }
        }
        if b.try_wait().unwrap().is_some() {
            // Refused while the lock still looked held: try again.
            let (code, _, stderr) = output(b);
            assert_eq!(code, Some(2), "{stderr}");
            assert!(stderr.contains("already being run by"), "{stderr}");
            b = spawn(&b_args);
        }
        assert!(Instant::now() < deadline, "B never took the run over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // B is cut off for good (what it wrote is its run's state), and A comes
    // back: what it had sent arrives late, and it tries to go on.
    to_b.drop_held();
    to_a.restore();
    let (a_code, a_out, a_err) = output(a);
    b.kill().unwrap();
    b.wait().unwrap();

    let rows = run_rows(&state.name, &table.name).await;
    let head = header(&rows).expect("B's run header");
    assert_eq!(
        s(&head, "run_id"),
        Some(run_b.as_str()),
        "the header is B's: {head:?}"
    );
    assert_eq!(n(&head, "total_segments"), Some(8), "{head:?}");
    let b_epoch = n(&head, "fence").expect("the header records its writer's epoch");
    for row in segment_rows(&rows) {
        let run = s(&row, "run_id").expect("a segment row says whose run it is");
        if run == run_b {
            assert_eq!(
                n(&row, "fence"),
                Some(b_epoch),
                "a row of B's run was written by A: {row:?}"
            );
        } else {
            assert_eq!(run, run_a, "{row:?}");
        }
    }
    let entry = client()
        .get_item()
        .table_name(&state.name)
        .key("pk", AttributeValue::S(format!("ledger#{}", table.name)))
        .key("sk", AttributeValue::S(MIGRATION.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("a ledger entry");
    assert_eq!(
        (s(&entry, "status"), n(&entry, "fence")),
        (Some("in_progress"), Some(b_epoch)),
        "the ledger entry is B's: {entry:?}"
    );
    assert_eq!(a_code, Some(3), "A says it lost the lock\n{a_out}\n{a_err}");
    assert!(a_err.contains("lost the lock"), "{a_err}");

    // What B's own checkpoints cover; the resume must scan everything else.
    let members = segments_of(&table.name, 8).await;
    let mut covered = std::collections::HashSet::new();
    for row in segment_rows(&rows) {
        if s(&row, "run_id") != Some(run_b.as_str()) {
            continue;
        }
        let segment: usize = sk(&row)["segment#".len()..].parse().unwrap();
        let keys = &members[segment];
        let upto = match row.get("last_key") {
            Some(AttributeValue::M(last)) => {
                let last = key_string(last);
                keys.iter()
                    .position(|k| *k == last)
                    .expect("checkpoint key in its segment")
                    + 1
            }
            _ => keys.len(),
        };
        covered.extend(keys[..upto].iter().cloned());
    }
    let resume = Proxy::start(&endpoint(), Config::new(&table.name)).await;
    let (code, stdout, stderr) = output(spawn(&run_args(
        &resume.url,
        &table.name,
        &state.name,
        "2000",
    )));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("resuming:       run {run_b}")) && stdout.contains("/8 segments"),
        "B's run is resumed: {stdout}"
    );
    let scanned: std::collections::HashSet<String> =
        resume.stats().scanned.into_iter().map(|(_, k)| k).collect();
    let skipped: Vec<&String> = members
        .iter()
        .flatten()
        .filter(|k| !covered.contains(*k) && !scanned.contains(*k))
        .collect();
    assert!(
        skipped.is_empty(),
        "{} items B had not checkpointed were not scanned by the resume, e.g. {:?}",
        skipped.len(),
        skipped.first()
    );
    assert_migrated(&table.name, &items).await;
}
