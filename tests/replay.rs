//! `dynbulk replay` through the real binary against the real endpoint: the
//! dead-letter file of a real failing run is replayed once the migration is
//! fixed, and the table and the ledger are read back.

mod common;
mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::sample::{self, KeyShape};
use common::*;
use dynbulk::state::ledger::{Ledger, Status};
use proxy::{Config, Proxy};

const ID: &str = "20250301_migrate_legacy";

/// The migration as first written: it refuses legacy items (the bug).
const BUGGY: &str = r#"export default {
  description: "marks every item migrated",
  transform(item: { pk: string; kind?: string; [k: string]: unknown }) {
    if (item.kind === "legacy") throw new Error(`cannot migrate legacy item ${item.pk} yet`);
    item.migrated = "yes";
  },
};
"#;

/// The fixed migration.
const FIXED: &str = r#"export default {
  description: "marks every item migrated",
  transform(item: { pk: string; kind?: string; [k: string]: unknown }) {
    item.migrated = "yes";
  },
};
"#;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A migrations folder holding the migration's `source`.
fn folder(source: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_migration(dir.path(), source);
    dir
}

fn write_migration(dir: &Path, source: &str) {
    std::fs::write(dir.join(format!("{ID}.ts")), source).unwrap();
}

/// A hash-keyed table of `ok` plain items and `legacy` legacy ones.
async fn table(prefix: &str, ok: usize, legacy: usize) -> TestTable {
    let client = client();
    let table = TestTable::named(prefix);
    sample::create_table(&client, &table.name, KeyShape::Hash)
        .await
        .unwrap();
    let mut items: Vec<Attrs> = Vec::new();
    for i in 0..ok {
        items.push(Attrs::from([("pk".into(), s(&format!("ok#{i:04}")))]));
    }
    for i in 0..legacy {
        items.push(Attrs::from([
            ("pk".into(), s(&format!("legacy#{i:04}"))),
            ("kind".into(), s("legacy")),
        ]));
    }
    sample::put_all(&client, &table.name, &items).await.unwrap();
    table
}

/// Runs the binary with the migrations folder `dir` against `endpoint`.
fn dynbulk_at(endpoint: &str, dir: &Path, args: &[&str]) -> Output {
    let out = dynbulk()
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("DYNBULK_LEASE", "3s")
        .arg("--migrations-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "{args:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The keys (`pk`) of a dead-letter file, each once.
fn dead_keys(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["migration"], ID, "{l}");
            v["key"]["pk"]["S"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn ledger(state: &str, table: &str) -> dynbulk::state::ledger::Entry {
    Ledger::new(client(), state.to_owned())
        .get(table, ID)
        .await
        .unwrap()
        .expect("a ledger entry")
}

/// The `pk`s of the items of `table` without `migrated = yes`, and the items.
async fn unmigrated(table: &str) -> (BTreeSet<String>, usize) {
    let all = read_all(&client(), table).await;
    let not: BTreeSet<String> = all
        .values()
        .filter(|i| i.get("migrated") != Some(&s("yes")))
        .map(|i| i["pk"].as_s().unwrap().clone())
        .collect();
    (not, all.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_recovers_the_dead_letters_of_a_failing_run_once_the_cause_is_fixed() {
    let table = table("replay", 90, 30).await;
    let state = TestTable::named("state");
    let dir = folder(BUGGY);
    let files = tempfile::tempdir().unwrap();
    let dead = files.path().join("run.jsonl");
    let dead_str = dead.to_str().unwrap();
    let common = ["--table", &table.name, "--state-table", &state.name];
    let limits = ["--rcu-limit", "1000", "--wcu-limit", "1000"];

    // A real run fails on the 30 legacy items.
    let mut args = vec!["run", "--migration", ID, "--progress", "off"];
    args.extend(common);
    args.extend(limits);
    args.extend(["--dead-letter", dead_str]);
    let out = dynbulk_at(&endpoint(), dir.path(), &args);
    assert_eq!(out.status.code(), Some(1));
    let legacy: BTreeSet<String> = (0..30).map(|i| format!("legacy#{i:04}")).collect();
    assert_eq!(dead_keys(&dead), legacy);
    let entry = ledger(&state.name, &table.name).await;
    assert_eq!(
        (entry.status, entry.counts.failed, entry.counts.updated),
        (Status::Failed, 30, 90)
    );

    // Replayed before the fix: every item fails again, into a new file; the
    // ledger and the legacy items are as they were.
    let again = files.path().join("again.jsonl");
    let replay = |dead_letter: &Path, extra: &[&str]| {
        let mut args = vec!["replay", dead_str, "--state-table", &state.name];
        args.extend(limits);
        args.extend(["--dead-letter", dead_letter.to_str().unwrap()]);
        args.extend(extra);
        dynbulk_at(&endpoint(), dir.path(), &args)
    };
    let out = replay(&again, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(dead_keys(&again), legacy);
    assert_eq!(count(&stdout(&out), "failed again"), 30);
    let entry = ledger(&state.name, &table.name).await;
    assert_eq!((entry.status, entry.counts.failed), (Status::Failed, 30));
    assert_eq!(unmigrated(&table.name).await, (legacy.clone(), 120));

    // The application deletes one legacy item; the migration is fixed.
    client()
        .delete_item()
        .table_name(&table.name)
        .key("pk", s("legacy#0000"))
        .send()
        .await
        .unwrap();
    write_migration(dir.path(), FIXED);

    // A dry run writes nothing.
    let unused = files.path().join("unused.jsonl");
    let out = replay(&unused, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(count(&stdout(&out), "recovered"), 29);
    let mut left = legacy.clone();
    left.remove("legacy#0000");
    assert_eq!(unmigrated(&table.name).await, (left.clone(), 119));
    assert_eq!(ledger(&state.name, &table.name).await.counts.failed, 30);

    // The replay recovers every item that still exists; the deleted one is
    // reported, not recreated; the ledger follows.
    let out = replay(&unused, &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert_eq!(count(&text, "recovered"), 29);
    assert_eq!(count(&text, "no longer there"), 1);
    assert!(text.contains(r#"{"pk":{"S":"legacy#0000"}}"#), "{text}");
    assert!(!unused.exists(), "nothing failed, so no dead-letter file");
    assert_eq!(unmigrated(&table.name).await, (BTreeSet::new(), 119));
    let entry = ledger(&state.name, &table.name).await;
    assert_eq!(entry.status, Status::Applied, "{entry:?}");
    assert_eq!(
        (entry.counts.failed, entry.counts.updated),
        (0, 119),
        "{entry:?}"
    );
    assert!(
        query_partition(&state.name, &format!("replay#{}#{ID}", table.name))
            .await
            .is_empty(),
        "a finished replay's position is deleted"
    );
    assert!(text.contains("journal:"), "{text}");

    // Revert undoes the replay's writes with the run's: every item is as
    // before the run (the deleted one stays deleted).
    let mut args = vec!["revert", "--migration", ID, "--yes"];
    args.extend(common);
    args.extend(limits);
    let out = dynbulk_at(&endpoint(), dir.path(), &args);
    assert_eq!(out.status.code(), Some(0));
    assert_as_before_the_run(&table.name, 90, 1..30).await;
    let entry = ledger(&state.name, &table.name).await;
    assert_eq!(entry.status, Status::Pending, "{entry:?}");
}

/// Asserts that `table` holds exactly the items [`table`] made: `ok` plain
/// ones and the legacy ones numbered `legacy`, none migrated.
async fn assert_as_before_the_run(table: &str, ok: usize, legacy: std::ops::Range<usize>) {
    let pk = |i: &Attrs| i["pk"].as_s().unwrap().clone();
    let mut before: BTreeMap<String, Attrs> = (0..ok)
        .map(|i| Attrs::from([("pk".into(), s(&format!("ok#{i:04}")))]))
        .map(|i| (pk(&i), i))
        .collect();
    before.extend(legacy.map(|i| {
        let item = Attrs::from([
            ("pk".into(), s(&format!("legacy#{i:04}"))),
            ("kind".into(), s("legacy")),
        ]);
        (pk(&item), item)
    }));
    let now: BTreeMap<String, Attrs> = read_all(&client(), table)
        .await
        .into_values()
        .map(|i| (pk(&i), i))
        .collect();
    let wrong: Vec<(&String, Option<&Attrs>)> = before
        .keys()
        .chain(now.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| now.get(*k) != before.get(*k))
        .map(|k| (k, now.get(k)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} items are not as before the run: {wrong:?}",
        wrong.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_between_two_attempts_of_a_run_is_reverted_with_the_run() {
    let table = table("replay-mid", 200, 40).await;
    let state = TestTable::named("state");
    let dir = folder(BUGGY);
    let files = tempfile::tempdir().unwrap();
    let dead = files.path().join("run.jsonl");
    let dead_str = dead.to_str().unwrap();
    let common = ["--table", &table.name, "--state-table", &state.name];
    let limits = ["--rcu-limit", "1000", "--wcu-limit", "1000"];
    let mut run = vec!["run", "--migration", ID, "--progress", "off"];
    run.extend(common);
    run.extend(limits);

    // The first attempt stops on its error budget: the run is unfinished.
    let mut first = run.clone();
    first.extend(["--max-errors", "3", "--segments", "1", "--workers", "1"]);
    first.extend(["--dead-letter", dead_str]);
    let out = dynbulk_at(&endpoint(), dir.path(), &first);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stopped: more than --max-errors"
    );
    let header = format!("run#{}#{ID}", table.name);
    assert!(
        !query_partition(&state.name, &header).await.is_empty(),
        "the stopped run keeps its state"
    );
    let failed = dead_keys(&dead);
    assert!(failed.len() > 3, "{failed:?}");

    // Fixed, its dead letters are replayed before the run is resumed.
    write_migration(dir.path(), FIXED);
    let mut replay = vec!["replay", dead_str, "--state-table", &state.name];
    replay.extend(limits);
    let unused = files.path().join("replay.jsonl");
    replay.extend(["--dead-letter", unused.to_str().unwrap()]);
    let out = dynbulk_at(&endpoint(), dir.path(), &replay);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(count(&stdout(&out), "recovered"), failed.len() as u64);
    assert!(
        stdout(&out).contains("dynbulk revert undoes these writes"),
        "the replay's journal is named"
    );
    let entry = ledger(&state.name, &table.name).await;
    assert_eq!(
        (entry.status, entry.counts.failed),
        (Status::Stopped, 0),
        "the run is unfinished: stopped, not applied: {entry:?}"
    );
    // Replayed again by mistake: every item is already right, and the run
    // must not count them twice.
    let out = dynbulk_at(&endpoint(), dir.path(), &replay);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(&format!("already right {})", failed.len())),
        "{}",
        stdout(&out)
    );

    // The resumed run finishes; its ledger entry names every journal.
    let second_dead = files.path().join("second.jsonl");
    let mut second = run.clone();
    second.extend(["--dead-letter", second_dead.to_str().unwrap()]);
    let out = dynbulk_at(&endpoint(), dir.path(), &second);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(unmigrated(&table.name).await, (BTreeSet::new(), 240));
    let entry = ledger(&state.name, &table.name).await;
    assert_eq!(entry.status, Status::Applied, "{entry:?}");
    assert_eq!(
        (
            entry.counts.failed,
            entry.counts.updated,
            entry.counts.unchanged
        ),
        (0, 240, 0),
        "the replayed items count as updated, once: {entry:?}"
    );
    assert_eq!(
        entry.journals.len(),
        4,
        "two attempts and the two replays: {entry:?}"
    );

    // Revert undoes the first attempt, the replay and the second attempt.
    let mut revert = vec!["revert", "--migration", ID, "--yes"];
    revert.extend(common);
    revert.extend(limits);
    assert_eq!(
        dynbulk_at(&endpoint(), dir.path(), &revert).status.code(),
        Some(0)
    );
    assert_as_before_the_run(&table.name, 200, 0..40).await;
}

/// The items of one partition of the state table.
async fn query_partition(state: &str, pk: &str) -> Vec<Attrs> {
    client()
        .query()
        .table_name(state)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", s(pk))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_mid_file_resumes_and_the_ledger_counts_each_item_once() {
    const LEGACY: usize = 240;
    let table = table("replay-kill", 10, LEGACY).await;
    let state = TestTable::named("state");
    let dir = folder(BUGGY);
    let files = tempfile::tempdir().unwrap();
    let dead = files.path().join("run.jsonl");
    let dead_str = dead.to_str().unwrap();
    let limits = ["--rcu-limit", "1000", "--wcu-limit", "1000"];
    let mut args = vec!["run", "--migration", ID, "--progress", "off"];
    args.extend(["--table", &table.name, "--state-table", &state.name]);
    args.extend(limits);
    args.extend(["--dead-letter", dead_str]);
    assert_eq!(
        dynbulk_at(&endpoint(), dir.path(), &args).status.code(),
        Some(1)
    );
    assert_eq!(dead_keys(&dead).len(), LEGACY);
    write_migration(dir.path(), FIXED);

    // Through a proxy that serves 20 writes a second, the replay takes about
    // 12 s; it is killed once its position has moved.
    let proxy = Proxy::start(
        &endpoint(),
        Config {
            write_capacity: Some(20.0),
            ..Config::new(&table.name)
        },
    )
    .await;
    let again = files.path().join("again.jsonl");
    let replay_args = [
        "--migrations-dir",
        dir.path().to_str().unwrap(),
        "replay",
        dead_str,
        "--state-table",
        &state.name,
        "--workers",
        "2",
        "--rcu-limit",
        "1000",
        "--wcu-limit",
        "20",
        "--dead-letter",
        again.to_str().unwrap(),
        "--endpoint-url",
        &proxy.url,
    ];
    let mut child = spawn_dynbulk(&replay_args, &[("DYNBULK_LEASE", "3s")]);
    let pk = format!("replay#{}#{ID}", table.name);
    let deadline = Instant::now() + Duration::from_secs(120);
    let moved = |rows: &[Attrs]| {
        rows.iter().any(|r| {
            r.get("next_line")
                .and_then(|v| v.as_n().ok())
                .is_some_and(|n| n.parse::<u64>().unwrap() > 1)
        })
    };
    while !moved(&query_partition(&state.name, &pk).await) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay ended before its position moved"
        );
        assert!(
            Instant::now() < deadline,
            "the replay's position never moved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL: no position saved beyond the last chunk
    child.wait().unwrap();
    let (_, missing) = unmigrated(&table.name).await;
    assert_eq!(missing, LEGACY + 10);
    assert!(
        unmigrated(&table.name).await.0.len() < LEGACY,
        "the killed replay had recovered some items"
    );
    assert_eq!(
        ledger(&state.name, &table.name).await.counts.failed,
        LEGACY as u64,
        "the ledger takes a replay's counts only when it finishes"
    );

    // The same command resumes after the last saved chunk and finishes.
    let (code, out, err) = output(spawn_dynbulk(
        &replay_args,
        &[("DYNBULK_LEASE", "3s"), ("DYNBULK_PROGRESS_EVERY", "1ms")],
    ));
    assert_eq!(code, Some(0), "{out}\n{err}");
    println!("{out}");
    assert!(out.contains("resumed at line:"), "{out}");
    // Its progress lines go to standard error, the last at the file's end.
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert_eq!(
        progress.last().copied(),
        Some(
            format!(
                "progress: replay of {ID} on {}: {LEGACY} of {LEGACY} records",
                table.name
            )
            .as_str()
        ),
        "{err}"
    );
    assert_eq!(count(&out, "recovered"), LEGACY as u64, "{out}");
    assert_eq!(
        unmigrated(&table.name).await,
        (BTreeSet::new(), LEGACY + 10)
    );
    let entry = ledger(&state.name, &table.name).await;
    assert_eq!(entry.status, Status::Applied, "{entry:?}");
    assert_eq!(entry.counts.failed, 0, "{entry:?}");
    // Each legacy item counted once: written by one of the two processes, or
    // found already right by the second (written by the first after its last
    // saved position).
    assert_eq!(
        entry.counts.updated + entry.counts.unchanged,
        10 + LEGACY as u64,
        "{entry:?}"
    );
    assert!(query_partition(&state.name, &pk).await.is_empty());
}
