//! `dynbulk verify` through the real binary against the real endpoint: it
//! counts exactly the items the migration would still change (checked against
//! the table read back), exits 4 before a run, 0 after it and 4 again once an
//! "old application" writes old-shape items; it verifies a migration the
//! ledger records as applied; it sends no write of any kind (the table, the
//! ledger and the state table read back unchanged). The stock binary runs the
//! TypeScript reference migration (`migrations/`) and script migrations
//! written here; the Rust twin is verified in tests/migrations_crate.rs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use common::sample::{self, KeyShape};
use common::*;

const REFERENCE: &str = "20241220_add_status_category_fields";
const EXIT_WOULD_CHANGE: i32 = 4;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dynbulk <command> --migration <id> --table <table>` with the test's state
/// table, no capacity limit, no progress display.
fn dynbulk_on(command: &str, id: &str, table: &str, state: &str, extra: &[&str]) -> Output {
    let out = dynbulk()
        .args([command, "--migration", id, "--table", table])
        .args(["--state-table", state, "--unlimited", "--progress", "off"])
        .args(["--segments", "4"])
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!("dynbulk {command} -> {:?}\n{stdout}\n{stderr}", out.status);
    out
}

/// Items the reference migration would still change: a string `status`
/// whose `statusCategory` is missing or wrong.
fn needing_the_change(items: &BTreeMap<String, Attrs>) -> u64 {
    items
        .values()
        .filter(|i| match i.get("status") {
            Some(AttributeValue::S(status)) => {
                i.get("statusCategory") != Some(&AttributeValue::S(sample::category(status).into()))
            }
            _ => false,
        })
        .count() as u64
}

/// Every item of the state table (ledger, run headers, segment rows, lock),
/// or `None` when the table does not exist.
async fn state_rows(client: &Client, state: &str) -> Option<BTreeMap<String, Attrs>> {
    if !table_exists(client, state).await {
        return None;
    }
    let mut rows = BTreeMap::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(state)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        for item in page.items() {
            let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
            rows.insert(format!("{:?}|{:?}", s("pk"), s("sk")), item.clone());
        }
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return Some(rows);
        }
    }
}

/// Runs verify and checks it left the table and the state table as they were.
async fn verify_writing_nothing(id: &str, table: &str, state: &str) -> Output {
    let client = client();
    let (before, state_before) = (
        read_all(&client, table).await,
        state_rows(&client, state).await,
    );
    let out = dynbulk_on("verify", id, table, state, &[]);
    assert_eq!(
        read_all(&client, table).await,
        before,
        "verify changed the table"
    );
    assert_eq!(
        state_rows(&client, state).await,
        state_before,
        "verify wrote to the state table (or created it)"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counts_what_is_left_before_a_run_nothing_after_it_and_old_shape_writes_again() {
    let client = client();
    let (table, _) = sample_table("orders-verify", KeyShape::Composite, 2_000, 21).await;
    let state = TestTable::named("state");

    // Before the run: the count is what the table needs, and nothing is
    // written, not even the state table.
    let need = needing_the_change(&read_all(&client, &table.name).await);
    assert!(
        need > 500,
        "the sample needs the change on most items: {need}"
    );
    let out = verify_writing_nothing(REFERENCE, &table.name, &state.name).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_WOULD_CHANGE),
        "{stdout}\n{stderr}"
    );
    assert_eq!(count(&stdout, "would update"), need, "{stdout}");
    assert_eq!(count(&stdout, "would delete"), 0);
    assert_eq!(count(&stdout, "errors"), 0);
    assert!(
        stdout.contains(&format!("NOT complete: {need} items would still change")),
        "{stdout}"
    );
    assert!(
        stdout.contains("sample changes:") && stdout.contains("statusCategory: (absent) -> "),
        "{stdout}"
    );
    assert!(!table_exists(&client, &state.name).await);
    // No write limit was given (none is needed) and the plan says why.
    assert!(
        stdout.contains("write limit:    none needed: verify sends no write"),
        "{stdout}"
    );
    assert!(
        stdout.contains(": verified, no writes sent") && !stdout.contains("dry run"),
        "the report says verify, not dry run: {stdout}"
    );

    // The run, then verify: complete, with the ledger saying applied (so
    // verify did not skip: it scanned every item).
    let out = dynbulk_on("run", REFERENCE, &table.name, &state.name, &[]);
    assert_eq!(out.status.code(), Some(0));
    let items = read_all(&client, &table.name).await;
    assert_eq!(needing_the_change(&items), 0);
    let ledger = dynbulk::state::ledger::Ledger::new(client.clone(), state.name.clone());
    let applied = ledger.get(&table.name, REFERENCE).await.unwrap().unwrap();
    assert_eq!(applied.status, dynbulk::state::ledger::Status::Applied);
    let out = verify_writing_nothing(REFERENCE, &table.name, &state.name).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(count(&stdout, "items scanned"), items.len() as u64);
    assert_eq!(count(&stdout, "would update"), 0);
    assert!(
        stdout.contains("complete, no item would change"),
        "{stdout}"
    );

    // An old application version keeps writing the old shape: new orders
    // without statusCategory, and migrated ones put back whole without it.
    let mut old_shape: Vec<Attrs> = (0..40)
        .map(|i| {
            let mut item = Attrs::new();
            item.insert(
                "pk".into(),
                AttributeValue::S(format!("customer#old{i:03}")),
            );
            item.insert("sk".into(), AttributeValue::S(format!("order#old{i:05}")));
            item.insert("status".into(), AttributeValue::S("shipped".into()));
            item
        })
        .collect();
    old_shape.extend(
        items
            .values()
            .filter(|i| i.contains_key("statusCategory"))
            .take(25)
            .map(|i| {
                let mut i = i.clone();
                i.remove("statusCategory");
                i
            }),
    );
    sample::put_all(&client, &table.name, &old_shape)
        .await
        .unwrap();
    let after_app = read_all(&client, &table.name).await;
    assert_eq!(needing_the_change(&after_app), 65);
    let out = verify_writing_nothing(REFERENCE, &table.name, &state.name).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_WOULD_CHANGE),
        "{stdout}\n{stderr}"
    );
    assert_eq!(count(&stdout, "would update"), 65, "{stdout}");
    assert_eq!(count(&stdout, "items scanned"), after_app.len() as u64);
    // The ledger still says what the run recorded.
    let still = ledger.get(&table.name, REFERENCE).await.unwrap().unwrap();
    assert_eq!(still.status, dynbulk::state::ledger::Status::Applied);
    assert_eq!(still.counts, applied.counts);
}

/// A migrations folder holding `files` (name, source).
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in files {
        std::fs::write(dir.path().join(name), source).unwrap();
    }
    dir
}

/// `verify` of the migrations in `dir` on `table`: one (`--migration`) or all.
fn verify_in(
    dir: &Path,
    id: Option<&str>,
    table: &str,
    state: &str,
    dead_letter: &Path,
    extra: &[&str],
) -> Output {
    let out = dynbulk()
        .arg("--migrations-dir")
        .arg(dir)
        .args(["verify", "--table", table])
        .args(id.map(|id| ["--migration", id]).iter().flatten())
        .args(["--state-table", state, "--unlimited", "--progress", "off"])
        .arg("--dead-letter")
        .arg(dead_letter)
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!("dynbulk verify -> {:?}\n{stdout}\n{stderr}", out.status);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_whose_transform_fails_or_deletes_is_not_complete_and_all_are_verified_in_id_order(
) {
    let client = client();
    let table = TestTable::named("verify-script");
    sample::create_table(&client, &table.name, KeyShape::Hash)
        .await
        .unwrap();
    let item = |pk: &str, kind: &str| {
        let mut i = Attrs::new();
        i.insert("pk".into(), AttributeValue::S(pk.into()));
        i.insert("kind".into(), AttributeValue::S(kind.into()));
        i
    };
    let mut items: Vec<Attrs> = (0..30).map(|i| item(&format!("ok{i}"), "ok")).collect();
    items.extend((0..4).map(|i| item(&format!("bad{i}"), "bad")));
    items.extend((0..3).map(|i| item(&format!("gone{i}"), "gone")));
    sample::put_all(&client, &table.name, &items).await.unwrap();
    let dir = folder(&[
        (
            "20250301_drop_gone.js",
            r#"import { DELETE } from "dynbulk";
export default {
  description: "delete gone items; bad items cannot be migrated",
  transform(item) {
    if (item.kind === "bad") throw new Error("cannot migrate " + item.pk);
    if (item.kind === "gone") return DELETE;
  },
};
"#,
        ),
        (
            "20250302_keep.js",
            "export default { description: \"keeps everything\", transform(item) {} };\n",
        ),
    ]);
    let state = TestTable::named("state");
    let dead_letter = dead_letter_file();
    let before = read_all(&client, &table.name).await;

    let out = verify_in(
        dir.path(),
        Some("20250301_drop_gone"),
        &table.name,
        &state.name,
        &dead_letter,
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_WOULD_CHANGE),
        "{stdout}\n{stderr}"
    );
    assert_eq!(count(&stdout, "would delete"), 3, "{stdout}");
    assert_eq!(count(&stdout, "errors"), 4, "{stdout}");
    assert_eq!(count(&stdout, "unchanged"), 30, "{stdout}");
    assert!(
        stdout.contains("3 items would still change (0 updates, 3 deletes), 4 would fail"),
        "{stdout}"
    );
    assert_eq!(read_all(&client, &table.name).await, before);
    assert!(!table_exists(&client, &state.name).await);
    // The items that would fail are named in the dead-letter file (local).
    let failed = std::fs::read_to_string(&dead_letter).unwrap();
    assert_eq!(failed.lines().count(), 4, "{failed}");
    assert!(
        failed.lines().all(|l| l.contains("cannot migrate bad")),
        "{failed}"
    );
    let _ = std::fs::remove_file(&dead_letter);

    // Only unchanged items left: complete.
    let out = verify_in(
        dir.path(),
        Some("20250302_keep"),
        &table.name,
        &state.name,
        &dead_letter,
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(count(&stdout, "unchanged"), before.len() as u64);
    assert!(!dead_letter.exists());

    // --max-errors stops the scan early: not complete, whatever is left.
    let out = verify_in(
        dir.path(),
        Some("20250301_drop_gone"),
        &table.name,
        &state.name,
        &dead_letter,
        &["--max-errors", "1", "--segments", "1", "--workers", "1"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_WOULD_CHANGE),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("past --max-errors 1"), "{stdout}");
    let _ = std::fs::remove_file(&dead_letter);

    // Without --migration: every one, in id order; one incomplete is exit 4.
    let out = verify_in(
        dir.path(),
        None,
        &table.name,
        &state.name,
        &dead_letter,
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_WOULD_CHANGE),
        "{stdout}\n{stderr}"
    );
    let verdicts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("verified "))
        .collect();
    assert_eq!(verdicts.len(), 2, "{stdout}");
    assert!(
        verdicts[0].starts_with(&format!(
            "verified 20250301_drop_gone on {}: NOT complete",
            table.name
        )),
        "{stdout}"
    );
    assert!(
        verdicts[1].starts_with(&format!(
            "verified 20250302_keep on {}: complete",
            table.name
        )),
        "{stdout}"
    );
    assert_eq!(read_all(&client, &table.name).await, before);
    assert!(!table_exists(&client, &state.name).await);
    let _ = std::fs::remove_file(&dead_letter);
}

#[test]
fn verify_help_teaches_what_it_checks_and_its_exit_codes() {
    let out = dynbulk().args(["verify", "--help"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for needle in [
        "Sends no write of any kind",
        "whatever the ledger says",
        "every migration is verified in id order",
        "Exit codes: 0 complete",
        "4 not complete",
        "--rcu-limit",
        "--max-errors",
    ] {
        assert!(stdout.contains(needle), "{needle:?} in:\n{stdout}");
    }
    let out = dynbulk().arg("--help").output().unwrap();
    let (stdout, _) = text(&out);
    assert!(stdout.contains("verify"), "{stdout}");
    assert!(
        stdout.contains("4 verify: some items would still change"),
        "{stdout}"
    );
}
