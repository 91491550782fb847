//! `dynbulk revert` against the real endpoint, through the real binary: a
//! script migration updates, strips and deletes items of every value type;
//! the revert puts every item back exactly as it was before the run, except
//! those an application wrote since, which keep the application's values and
//! are reported. Killed runs and killed reverts, resumed, end the same way.

mod common;
mod proxy;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use rand::Rng;

use common::sample::{self, KeyShape};
use common::*;
use proxy::{Config, Faults, KeyFault, Proxy};

const ID: &str = "20250101_reshape";

/// Updates (adds an attribute, replaces a string, turns a big number into a
/// string), strips attributes (a number, a binary, a set) and deletes, by the
/// item's number; every fourth item is left alone. Maps and lists are only
/// put back whole (deleted items): dynalite cannot evaluate `=` on a map or
/// a list, which a write guarded on one needs (DynamoDB can).
const MIGRATION: &str = r##"import { DELETE } from "dynbulk";
export default {
  description: "reshape items",
  transform(item) {
    const i = Number(item.pk.split("#")[1]);
    switch (i % 4) {
      case 0: item.migrated = "yes"; item.big = "replaced"; item.s = "changed"; return;
      case 1: delete item.small; delete item.bin; delete item.ns; return;
      case 2: return DELETE;
      default: return;
    }
  },
};
"##;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.into())
}

fn b(v: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(v))
}

/// Item `i`: every DynamoDB type, big exact numbers, empty strings in maps.
fn item(i: usize) -> Attrs {
    Attrs::from([
        ("pk".into(), s(&format!("r#{i}"))),
        ("s".into(), s(&format!("text {i}"))),
        (
            "big".into(),
            n(&format!("1234567890123456789012345678.90123456{}", i % 10)),
        ),
        ("small".into(), n("-0.000000000000000000000000000001")),
        ("bin".into(), b(&[0, 255, i as u8, 10, 13])),
        ("flag".into(), AttributeValue::Bool(i.is_multiple_of(2))),
        ("nothing".into(), AttributeValue::Null(true)),
        (
            "ss".into(),
            AttributeValue::Ss(vec!["a".into(), format!("b{i}")]),
        ),
        (
            "ns".into(),
            AttributeValue::Ns(vec![
                "1".into(),
                "99999999999999999999999999999999999999".into(),
            ]),
        ),
        (
            "bs".into(),
            AttributeValue::Bs(vec![Blob::new(vec![1]), Blob::new(vec![2, 3])]),
        ),
        (
            "m".into(),
            AttributeValue::M(Attrs::from([
                ("empty".into(), s("")),
                (
                    "deep".into(),
                    AttributeValue::L(vec![
                        AttributeValue::M(Attrs::from([
                            ("x".into(), s("")),
                            ("y".into(), n("0.10")),
                        ])),
                        AttributeValue::L(vec![]),
                        AttributeValue::Null(true),
                    ]),
                ),
            ])),
        ),
    ])
}

/// A table of `count` items of every type, a state table, a migrations
/// folder and a directory for dead letters and journals.
struct Setup {
    table: TestTable,
    state: TestTable,
    scripts: tempfile::TempDir,
    files: tempfile::TempDir,
}

async fn setup(prefix: &str, count: usize) -> Setup {
    let client = client();
    let table = TestTable::named(prefix);
    sample::create_table(&client, &table.name, KeyShape::Hash)
        .await
        .unwrap();
    let items: Vec<Attrs> = (0..count).map(item).collect();
    sample::put_all(&client, &table.name, &items).await.unwrap();
    let scripts = tempfile::tempdir().unwrap();
    std::fs::write(scripts.path().join(format!("{ID}.js")), MIGRATION).unwrap();
    Setup {
        table,
        state: TestTable::named("state"),
        scripts,
        files: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = dynbulk();
        // The default: next to the dead-letter file.
        cmd.env_remove("DYNBULK_JOURNAL_DIR")
            .arg("--migrations-dir")
            .arg(self.scripts.path())
            .args(args)
            .args(["--migration", ID, "--table", &self.table.name])
            .args(["--state-table", &self.state.name]);
        cmd
    }

    fn run_args(&self) -> Vec<String> {
        let dl = self.files.path().join("dl.jsonl");
        [
            "run",
            "--progress",
            "off",
            "--page-size",
            "25",
            "--dead-letter",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dl.to_string_lossy().into_owned()])
        .collect()
    }

    fn run(&self, extra: &[&str]) -> Output {
        let mut args = self.run_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        logged(self.command(&args).output().unwrap())
    }

    fn revert(&self, extra: &[&str]) -> Output {
        let mut args = vec!["revert", "--yes"];
        args.extend(extra);
        logged(self.command(&args).output().unwrap())
    }

    fn journals(&self) -> Vec<std::path::PathBuf> {
        files_starting(self.files.path(), "dynbulk-journal-")
    }

    async fn ledger_status(&self) -> String {
        let item = client()
            .get_item()
            .table_name(&self.state.name)
            .key("pk", s(&format!("ledger#{}", self.table.name)))
            .key("sk", s(ID))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .expect("a ledger entry");
        item["status"].as_s().unwrap().clone()
    }
}

fn files_starting(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

fn logged(out: Output) -> Output {
    eprintln!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `item` as an application would (a plain PutItem).
async fn app_put(table: &str, item: Attrs) {
    client()
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn revert_restores_every_item_exactly_except_those_the_application_wrote_since() {
    let t = setup("revert", 120).await;
    let before = read_all(&client(), &t.table.name).await;
    assert_eq!(t.run(&["--unlimited"]).status.code(), Some(0));
    let after_run = read_all(&client(), &t.table.name).await;
    assert_eq!(after_run.len(), 90, "a quarter of the items deleted");
    assert_ne!(after_run["r#0"], before["r#0"]);
    assert!(!after_run["r#1"].contains_key("small"));
    let journals = t.journals();
    assert_eq!(journals.len(), 1, "one journal for one process");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&journals[0])
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    // The application writes after the run: an updated item, a stripped
    // one, a deleted one (re-created), and one the run left alone.
    let mut app = Vec::new();
    let mut a = after_run["r#4"].clone();
    a.insert("migrated".into(), s("by the application"));
    app.push(a);
    let mut a = after_run["r#5"].clone();
    a.insert("small".into(), n("7"));
    app.push(a);
    app.push(Attrs::from([
        ("pk".into(), s("r#6")),
        ("s".into(), s("new")),
    ]));
    let mut a = after_run["r#7"].clone();
    a.insert("s".into(), s("touched"));
    app.push(a);
    for item in &app {
        app_put(&t.table.name, item.clone()).await;
    }

    let out = t.revert(&["--unlimited"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "some items changed since the run"
    );
    let text = stdout(&out);
    assert!(text.contains("87 restored"), "{text}");
    assert!(text.contains("3 changed since the run"), "{text}");

    let now = read_all(&client(), &t.table.name).await;
    let mut want = before.clone();
    for item in &app {
        want.insert(key_string(item), item.clone());
    }
    assert_eq!(now.len(), want.len());
    for (k, v) in &want {
        assert_eq!(now.get(k), Some(v), "item {k}");
    }
    // The three the revert left alone are listed in a file next to the journal.
    let listed = files_starting(t.files.path(), "dynbulk-not-reverted-");
    assert_eq!(listed.len(), 1);
    let lines = std::fs::read_to_string(&listed[0]).unwrap();
    let mut keys: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]["pk"]["S"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["r#4", "r#5", "r#6"]);
    assert_eq!(t.ledger_status().await, "pending");
    // A later run applies the migration again, from the beginning.
    assert_eq!(t.run(&["--unlimited"]).status.code(), Some(0));
    let again = read_all(&client(), &t.table.name).await;
    assert_eq!(again["r#0"], after_run["r#0"]);
    assert!(!again.contains_key("r#2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_revert_writes_nothing() {
    let t = setup("revert-dry", 40).await;
    assert_eq!(t.run(&["--unlimited"]).status.code(), Some(0));
    let after_run = read_all(&client(), &t.table.name).await;
    let out = t.revert(&["--unlimited", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("30 would be restored"),
        "{}",
        stdout(&out)
    );
    assert_eq!(read_all(&client(), &t.table.name).await, after_run);
    assert_eq!(t.ledger_status().await, "applied");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revert_killed_at_a_random_instant_and_started_again_ends_the_same() {
    let t = setup("revert-kill", 240).await;
    let before = read_all(&client(), &t.table.name).await;
    assert_eq!(t.run(&["--unlimited"]).status.code(), Some(0));
    let mut killed = false;
    for _ in 0..6 {
        // 180 restores at 60 WCU/s: about three seconds.
        let mut child = t
            .command(&["revert", "--yes", "--wcu-limit", "60", "--rcu-limit", "100"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = rand::rng().random_range(300..2500);
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL: no checkpoint saved, lock held
            child.wait().unwrap();
            killed = true;
            break;
        }
        // Finished before the kill: apply the migration again and retry.
        assert_eq!(t.run(&["--unlimited"]).status.code(), Some(0));
    }
    assert!(killed, "no kill landed while the revert ran");
    let out = t.revert(&["--unlimited"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_all(&client(), &t.table.name).await, before);
    assert_eq!(t.ledger_status().await, "pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_mid_way_resumed_and_reverted_leaves_every_item_as_before_the_run() {
    let t = setup("revert-run-kill", 240).await;
    let before = read_all(&client(), &t.table.name).await;
    let mut args = t.run_args();
    args.extend(["--wcu-limit", "60", "--rcu-limit", "200"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = t
        .command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed at a random instant once its writes have begun.
    while read_all(&client(), &t.table.name).await == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended without writing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..1000))).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the kill"
    );
    child.kill().unwrap(); // SIGKILL mid-run: writes acknowledged, checkpoints behind
    child.wait().unwrap();
    assert_eq!(t.run(&["--unlimited"]).status.code(), Some(0));
    let out = t.revert(&["--unlimited"]);
    assert_eq!(out.status.code(), Some(0));
    let now = read_all(&client(), &t.table.name).await;
    let diff: BTreeMap<_, _> = before
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(*v))
        .collect();
    assert!(
        diff.is_empty(),
        "not restored: {:?}",
        diff.keys().collect::<Vec<_>>()
    );
    assert_eq!(now.len(), before.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_without_a_journal_leaves_none_and_cannot_be_reverted() {
    let t = setup("revert-none", 20).await;
    assert_eq!(
        t.run(&["--unlimited", "--no-journal"]).status.code(),
        Some(0)
    );
    assert!(t.journals().is_empty());
    let after_run = read_all(&client(), &t.table.name).await;
    let out = t.revert(&["--unlimited"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no journal") && err.contains("--no-journal"),
        "{err}"
    );
    assert_eq!(read_all(&client(), &t.table.name).await, after_run);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_revert_retries_within_its_limit_and_restores_everything() {
    let t = setup("revert-throttle", 80).await;
    let before = read_all(&client(), &t.table.name).await;
    assert_eq!(t.run(&["--unlimited"]).status.code(), Some(0));
    let seed = rand::rng().random();
    eprintln!("proxy seed {seed}");
    let proxy = Proxy::start(
        &endpoint(),
        Config {
            write_capacity: Some(30.0),
            faults: Faults {
                throttling: 0.02,
                ..Faults::default()
            },
            key_faults: vec![KeyFault::hot("r#0", 4), KeyFault::hot("r#2", 4)],
            seed,
            ..Config::new(&t.table.name)
        },
    )
    .await;
    // A limit above what the table gives: the proxy throttles the rest.
    let out = logged(
        t.command(&[
            "revert",
            "--yes",
            "--wcu-limit",
            "100",
            "--rcu-limit",
            "100",
        ])
        .env("AWS_ENDPOINT_URL", &proxy.url)
        .env("DYNBULK_PROGRESS_EVERY", "1ms")
        .output()
        .unwrap(),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_all(&client(), &t.table.name).await, before);
    // Its progress goes to standard error; the last line has the report's counts.
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("progress: revert of {ID} on {}: ", t.table.name)))
        .unwrap_or_else(|| panic!("no progress line in:\n{err}"));
    let restored = stdout(&out)
        .lines()
        .find_map(|l| l.trim().strip_prefix("items:"))
        .and_then(|l| l.trim().split(' ').next().map(str::to_owned))
        .expect("the report's items line");
    assert!(last.contains(&format!("({restored} restored, ")), "{last}");
    let stats = proxy.stats();
    let throttled: u64 = ["UpdateItem", "PutItem"]
        .iter()
        .filter_map(|op| stats.ops.get(*op))
        .map(|o| o.throttled)
        .sum();
    assert!(throttled > 0, "{:?}", stats.ops);
    assert_eq!(stats.key_faults.get("r#0"), Some(&4));
    assert_eq!(stats.key_faults.get("r#2"), Some(&4));
}
