//! Resumable runs with the real binary: SIGKILL at random moments, SIGTERM,
//! one runner per migration, and state that must not be trusted.

mod common;
mod proxy;

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use dynbulk::state::ledger::Ledger;
use proxy::{Config, Kind, Proxy};
use rand::{Rng, SeedableRng};

const MIGRATION: &str = "20241220_add_status_category_fields";

fn spawn(args: &[&str]) -> Child {
    spawn_dynbulk(args, &[])
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

const SEGMENTS: u64 = 8;
const WORKERS: u64 = 8;
const PAGE: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_then_resume_skips_nothing() {
    const ITEMS: u64 = 30_000;
    let (table, items) = small_items_table("orders-kill", ITEMS, 21).await;
    let state = TestTable::named("state");
    let proxy = Proxy::start(&endpoint(), Config::new(&table.name)).await;
    let seed: u64 = std::env::var("DYNBULK_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("kill seed: {seed} (replay with DYNBULK_KILL_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (segments, workers, page) = (SEGMENTS.to_string(), WORKERS.to_string(), PAGE.to_string());
    let args = [
        "run",
        "--endpoint-url",
        &proxy.url,
        "--table",
        &table.name,
        "--state-table",
        &state.name,
        "--segments",
        &segments,
        "--workers",
        &workers,
        "--page-size",
        &page,
        "--rcu-limit",
        "100000",
        // Slow enough that ten kills land before the end.
        "--wcu-limit",
        "1000",
    ];
    let mut kills = 0u32;
    let mut starts = Vec::new();
    let mut finished = None;
    while kills < 12 {
        proxy.set_epoch(kills);
        starts.push(proxy.now());
        let mut child = spawn(&args);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if let Some(status) = child.try_wait().unwrap() {
            finished = Some((status.code(), output(child)));
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    if finished.is_none() {
        proxy.set_epoch(kills);
        starts.push(proxy.now());
        let (code, stdout, stderr) = output(spawn(&args));
        assert_eq!(code, Some(0), "final run\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("resuming:"),
            "the final run resumed: {stdout}"
        );
    }
    assert!(
        kills >= 10,
        "only {kills} kills landed before the run finished; slow the run down"
    );
    assert_migrated(&table.name, &items).await;

    // Items scanned again after each kill: those of pages in flight when it hit.
    let stats = proxy.stats();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut per_epoch: HashMap<u32, (u64, u64)> = HashMap::new();
    for (epoch, key) in &stats.scanned {
        let e = per_epoch.entry(*epoch).or_default();
        e.0 += 1;
        if !seen.insert(key.as_str()) {
            e.1 += 1;
        }
    }
    assert_eq!(seen.len() as u64, ITEMS, "every item was scanned");
    let again: Vec<u64> = (1..=kills)
        .map(|e| per_epoch.get(&e).map(|p| p.1).unwrap_or(0))
        .collect();
    let mean = again.iter().sum::<u64>() as f64 / again.len() as f64;
    let max = *again.iter().max().unwrap();
    // In flight at a kill: pages in the channel (one per worker), pages being
    // written (one per worker), and per segment: the page its task holds while
    // the channel is full, the Scan answer on its way, and the pages
    // acknowledged while the checkpointer was saving the previous round; plus
    // pages finished behind a slower earlier page of their segment (at most
    // one per worker in practice).
    let bound = (WORKERS + WORKERS + 3 * SEGMENTS + WORKERS) * PAGE;
    println!("items processed again per kill: {again:?}; mean {mean:.0}, max {max}, bound {bound}");
    assert!(
        max <= bound,
        "a kill made {max} items be processed again, more than the in-flight bound {bound}"
    );

    // Time from start to first write on each resume.
    let mut firsts = Vec::new();
    for w in starts.windows(2).map(|w| w[1]).chain(std::iter::empty()) {
        if let Some((t, _, _)) = stats
            .timeline
            .iter()
            .find(|(t, k, _)| *k == Kind::Write && *t >= w)
        {
            firsts.push(t - w);
        }
    }
    if !firsts.is_empty() {
        let mean = firsts.iter().sum::<f64>() / firsts.len() as f64;
        let max = firsts.iter().cloned().fold(0.0, f64::max);
        println!(
            "start to first write on resume: mean {:.0} ms, max {:.0} ms over {} resumes",
            mean * 1e3,
            max * 1e3,
            firsts.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_with_exit_130_and_resume_completes() {
    let (table, items) = small_items_table("orders-term", 12_000, 22).await;
    let state = TestTable::named("state");
    let needed = items
        .iter()
        .filter(|i| expected_after_example(i) != **i)
        .count() as u64;
    let args = [
        "run",
        "--table",
        &table.name,
        "--state-table",
        &state.name,
        "--segments",
        "4",
        "--rcu-limit",
        "100000",
        "--wcu-limit",
        "1500",
    ];
    let child = spawn(&args);
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&child, "-TERM");
    let (code, first, stderr) = output(child);
    assert_eq!(code, Some(130), "{first}\n{stderr}");
    assert!(
        first.contains("run the same command again to resume"),
        "{first}"
    );
    assert!(
        count(&first, "updated") > 0 && count(&first, "updated") < needed,
        "stopped mid-run: {first}"
    );

    let out = dynbulk()
        .args([
            "status",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.contains("stopped") && status.contains("unfinished run"),
        "{status}"
    );

    // --restart without --yes and without a terminal to ask on: refused, nothing changed.
    let mut restart = args.to_vec();
    restart.push("--restart");
    let (code, _, stderr) = output(spawn(&restart));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");

    let (code, second, stderr) = output(spawn(&args));
    assert_eq!(code, Some(0), "{second}\n{stderr}");
    assert!(second.contains("resuming:"), "{second}");
    assert_eq!(
        count(&first, "updated") + count(&second, "updated"),
        needed,
        "total modified across both attempts = items that needed it"
    );
    assert_migrated(&table.name, &items).await;
    let out = dynbulk()
        .args([
            "status",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = status.lines().find(|l| l.starts_with(MIGRATION)).unwrap();
    assert!(line.contains("applied"), "{status}");
    assert!(
        line.contains(&format!(" {needed} ")),
        "status shows the run's total modified: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_per_migration_and_takeover_after_the_holder_dies() {
    let (table, items) = small_items_table("orders-lock", 8_000, 23).await;
    let state = TestTable::named("state");
    let slow = [
        "run",
        "--table",
        &table.name,
        "--state-table",
        &state.name,
        "--rcu-limit",
        "100000",
        "--wcu-limit",
        "200",
    ];
    let holder = spawn(&slow);
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if dynbulk::state::lock::holder(&client, &state.name, &table.name, MIGRATION)
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first runner never took the lock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, stderr) = output(spawn(&slow));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("already being run by"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", holder.id())),
        "names the holder: {stderr}"
    );

    let mut holder = holder;
    holder.kill().unwrap();
    holder.wait().unwrap();
    let fast = [
        "run",
        "--table",
        &table.name,
        "--state-table",
        &state.name,
        "--rcu-limit",
        "100000",
        "--wcu-limit",
        "100000",
    ];
    let (code, stdout, stderr) = output(spawn(&fast));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("took over the lock"),
        "the takeover is logged: {stderr}"
    );
    assert_migrated(&table.name, &items).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_mismatched_state_is_refused_with_exit_2_and_no_write() {
    let (table, _) = small_items_table("orders-badstate", 300, 24).await;
    let state = TestTable::named("state");
    let client = client();
    Ledger::new(client.clone(), state.name.clone())
        .ensure()
        .await
        .unwrap();
    let before = read_all(&client, &table.name).await;
    let pk = format!("run#{}#{MIGRATION}", table.name);
    let header = |version: &str, keys: &[&str]| -> Attrs {
        HashMap::from([
            ("pk".into(), AttributeValue::S(pk.clone())),
            ("sk".into(), AttributeValue::S("run".into())),
            ("schema_version".into(), AttributeValue::S(version.into())),
            ("run_id".into(), AttributeValue::S("r1".into())),
            ("total_segments".into(), AttributeValue::N("4".into())),
            (
                "keys".into(),
                AttributeValue::L(
                    keys.iter()
                        .map(|k| AttributeValue::S(k.to_string()))
                        .collect(),
                ),
            ),
            (
                "started_at".into(),
                AttributeValue::S("2026-01-01T00:00:00Z".into()),
            ),
        ])
    };
    let put = |item: Attrs| {
        let client = client.clone();
        let state = state.name.clone();
        async move {
            client
                .put_item()
                .table_name(&state)
                .set_item(Some(item))
                .send()
                .await
                .unwrap();
        }
    };
    let run = || {
        dynbulk()
            .args([
                "run",
                "--unlimited",
                "--table",
                &table.name,
                "--state-table",
                &state.name,
            ])
            .output()
            .unwrap()
    };
    let check = |out: std::process::Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
        assert!(stderr.contains("--restart"), "says what to do: {stderr}");
    };

    // Written by an incompatible version.
    put(header("99", &["pk", "sk"])).await;
    check(run(), "layout version \"99\"");
    // A checkpoint that does not decode.
    put(header("1", &["pk", "sk"])).await;
    put(HashMap::from([
        ("pk".into(), AttributeValue::S(pk.clone())),
        ("sk".into(), AttributeValue::S("segment#2".into())),
        ("last_key".into(), AttributeValue::S("garbage".into())),
    ]))
    .await;
    check(run(), "segment 2 does not decode");
    // A run that started on another key schema.
    put(HashMap::from([
        ("pk".into(), AttributeValue::S(pk.clone())),
        ("sk".into(), AttributeValue::S("segment#2".into())),
        ("done".into(), AttributeValue::Bool(true)),
    ]))
    .await;
    put(header("1", &["id"])).await;
    check(run(), "key");
    assert_eq!(
        read_all(&client, &table.name).await,
        before,
        "the table was touched"
    );

    // A run that started on another table of the same name (deleted and re-created).
    let mut other = header("1", &["pk", "sk"]);
    other.insert(
        "table_id".into(),
        AttributeValue::S("00000000-other-table".into()),
    );
    put(other).await;
    check(run(), "TableId");
    assert_eq!(
        read_all(&client, &table.name).await,
        before,
        "the table was touched"
    );

    // What the messages suggest works, even on state that does not decode:
    // --restart --yes discards it and runs.
    put(HashMap::from([
        ("pk".into(), AttributeValue::S(pk.clone())),
        ("sk".into(), AttributeValue::S("segment#2".into())),
        ("last_key".into(), AttributeValue::S("garbage".into())),
    ]))
    .await;
    let out = dynbulk()
        .args([
            "run",
            "--unlimited",
            "--restart",
            "--yes",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (key, item) in read_all(&client, &table.name).await {
        assert_eq!(item, expected_after_example(&before[&key]), "{key}");
    }
}
