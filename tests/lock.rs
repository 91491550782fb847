//! The lock, with real processes: liveness is judged by watching the lease
//! on the acquirer's own monotonic clock, never by comparing wall clocks.
//! Clocks are skewed through the proxy, which shifts every time a runner
//! writes to the state table.

mod common;
mod proxy;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use dynbulk::ledger::{Ledger, Status};
use proxy::{Config, Proxy};

const MIGRATION: &str = "20241220_add_status_category_fields";

/// A short lease keeps takeovers quick: one heartbeat a second.
const LEASE: &str = "3s";

const HOUR_MS: i64 = 3_600_000;

fn spawn(args: &[&str]) -> Child {
    dynbulk()
        .args(args)
        .env("DYNBULK_LEASE", LEASE)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn output(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
async fn wait_for_holder(state: &str, table: &str) -> dynbulk::lock::Holder {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = dynbulk::lock::holder(&client(), state, table, MIGRATION)
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

/// Waits until the run has saved a checkpoint of some segment.
async fn wait_for_checkpoint(state: &str, table: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run_rows(state, table)
        .await
        .iter()
        .any(|r| sk(r).starts_with("segment#"))
    {
        assert!(Instant::now() < deadline, "no checkpoint was saved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let behind = Proxy::start(
        &endpoint(),
        Config {
            clock_skew_ms: -HOUR_MS,
            ..Config::new(&table.name)
        },
    )
    .await;
    let holder = spawn(&run_args(&behind.url, &table.name, &state.name, "150"));
    let h = wait_for_holder(&state.name, &table.name).await;
    assert!(
        h.expires_ms < now_ms() - HOUR_MS / 2,
        "the recorded expiry is in the past by this clock: {} vs {}",
        h.expires_ms,
        now_ms()
    );

    let direct = endpoint();
    let (code, _, stderr) = output(spawn(&run_args(
        &direct,
        &table.name,
        &state.name,
        "100000",
    )));
    assert_eq!(code, Some(2), "the second runner is refused: {stderr}");
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
    let entry = Ledger::new(client(), state.name.clone())
        .get(&table.name, MIGRATION)
        .await
        .unwrap()
        .expect("a ledger entry");
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
    let ahead = Proxy::start(
        &endpoint(),
        Config {
            clock_skew_ms: HOUR_MS,
            ..Config::new(&table.name)
        },
    )
    .await;
    let mut holder = spawn(&run_args(&ahead.url, &table.name, &state.name, "150"));
    wait_for_checkpoint(&state.name, &table.name).await;
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
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
    let dead = dynbulk::lock::holder(&client(), &state.name, &table.name, MIGRATION)
        .await
        .unwrap()
        .expect("the dead holder's lock");
    assert!(
        dead.expires_ms > now_ms() + HOUR_MS / 2,
        "the recorded expiry is in the future by this clock"
    );

    let direct = endpoint();
    let (code, stdout, stderr) = output(spawn(&run_args(
        &direct,
        &table.name,
        &state.name,
        "100000",
    )));
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
    let entry = Ledger::new(client(), state.name.clone())
        .get(&table.name, MIGRATION)
        .await
        .unwrap()
        .expect("a ledger entry");
    assert_eq!(entry.status, Status::Applied);
    assert_eq!(entry.runs, 2);
    let lock = lock_item(&state.name, &table.name)
        .await
        .expect("the lock item stays");
    assert_eq!(n(&lock, "epoch"), Some(2), "taken twice: {lock:?}");
    assert!(!lock.contains_key("token"), "and released: {lock:?}");
}
