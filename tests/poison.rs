//! A poison item never blocks a run: items whose write DynamoDB would reject
//! (content over its limits, a hot key throttled for minutes) are
//! dead-lettered, every other item is migrated, and the run ends as it does
//! for item failures; resumes do not die on them.

mod common;
mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use common::*;
use dynbulk::capacity::backoff::Backoff;
use dynbulk::migration::{Change, Item, Migration, TransformError, Update};
use dynbulk::report::Outcome;
use dynbulk::run::{self, Plan};
use proxy::{Config, KeyFault, Proxy};
use tokio_util::sync::CancellationToken;

/// Ordinary items per table.
const ORDINARY: usize = 60;

fn plan(state: &TestTable, dead_letter: &Path) -> Plan {
    Plan {
        segments: Some(2),
        workers: 2,
        item_concurrency: 4,
        page_size: Some(10),
        dead_letter: dead_letter.to_owned(),
        // Short delays: retries are what is tested, not their length.
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(20),
            ..Backoff::default()
        },
        ..test_plan(state)
    }
}

fn dead_letter_path() -> PathBuf {
    std::env::temp_dir().join(format!("{}.jsonl", unique("poison-dl")))
}

/// A table keyed by `pk` (S) with a global secondary index on `owner` (S).
async fn table_with_index(prefix: &str) -> TestTable {
    let client = client();
    let table = TestTable::named(prefix);
    let def = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let hash = |name: &str| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(KeyType::Hash)
            .build()
            .unwrap()
    };
    client
        .create_table()
        .table_name(&table.name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(def("pk"))
        .attribute_definitions(def("owner"))
        .key_schema(hash("pk"))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("byOwner")
                .key_schema(hash("owner"))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    table
}

/// `ORDINARY` ordinary items plus the given extra ones, written to `table`.
async fn load(table: &str, extra: &[Attrs]) -> Vec<Attrs> {
    let mut items: Vec<Attrs> = (0..ORDINARY)
        .map(|i| {
            HashMap::from([
                ("pk".into(), AttributeValue::S(format!("order#{i:04}"))),
                ("owner".into(), AttributeValue::S(format!("owner{}", i % 7))),
                ("n".into(), AttributeValue::N(i.to_string())),
            ])
        })
        .collect();
    items.extend(extra.iter().cloned());
    sample::put_all(&client(), table, &items).await.unwrap();
    items
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// Marks every item `migrated`, except the poison items, whose transform
/// yields a write DynamoDB rejects; the poison's kind is its key's prefix.
struct Poison;

impl Migration for Poison {
    fn id(&self) -> &'static str {
        "20250101_poison"
    }
    fn description(&self) -> &'static str {
        "marks items; some items' changes cannot be stored"
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        let pk = item.get_s("pk").unwrap_or_default().to_owned();
        if item.get("migrated").is_some() {
            return Ok(Change::Keep);
        }
        let mark = Update::new().set("migrated", "yes");
        let poisoned = match pk.split('#').next().unwrap_or_default() {
            "emptyset" => mark.set("tags", AttributeValue::Ss(vec![])),
            "digits39" => mark.set(
                "total",
                AttributeValue::N("123456789012345678901234567890123456789".into()),
            ),
            "nan" => mark.set("score", f64::NAN),
            "gsitype" => mark.set("owner", AttributeValue::N("7".into())),
            "wide" => {
                // Reads the whole item: every attribute joins the guard.
                let n = item.attrs().len();
                mark.set("width", n as i64)
            }
            _ => mark,
        };
        Ok(poisoned.into())
    }
}

/// The poison items: keys and contents.
fn poison_items() -> Vec<Attrs> {
    let mut out = Vec::new();
    for kind in ["emptyset", "digits39", "nan", "gsitype"] {
        out.push(HashMap::from([
            ("pk".into(), s(&format!("{kind}#1"))),
            ("owner".into(), s("ann")),
        ]));
    }
    // 300 attributes read whole: a guard over 4 KB and 300 operators.
    let mut wide: Attrs = (0..300)
        .map(|i| (format!("field{i:03}"), AttributeValue::N(i.to_string())))
        .collect();
    wide.insert("pk".into(), s("wide#1"));
    out.push(wide);
    out
}

/// The dead-letter records of `paths`: key (`pk`) -> errors.
fn dead_letters(paths: &[PathBuf]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in paths {
        let Ok(text) = std::fs::read_to_string(p) else {
            continue;
        };
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let pk = v["key"]["pk"]["S"].as_str().unwrap().to_owned();
            out.entry(pk)
                .or_default()
                .push(v["error"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// Every ordinary item is marked; every item in `untouched` is as it was.
async fn assert_migrated_except(table: &str, items: &[Attrs], untouched: &BTreeSet<String>) {
    let after = read_all(&client(), table).await;
    assert_eq!(after.len(), items.len());
    for before in items {
        let key = key_string(before);
        let now = &after[&key];
        if untouched.contains(&key) {
            assert_eq!(now, before, "{key} must be left as it was");
        } else {
            let mut want = before.clone();
            want.insert("migrated".into(), s("yes"));
            assert_eq!(now, &want, "{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn items_dynamodb_would_reject_are_dead_lettered_in_dry_runs_runs_and_resumes() {
    let client = client();
    let state = TestTable::named("state");
    let table = table_with_index("poison").await;
    let poison = poison_items();
    let items = load(&table.name, &poison).await;
    let poison_keys: BTreeSet<String> = poison.iter().map(key_string).collect();
    let before = read_all(&client, &table.name).await;

    // A dry run reports the poison items as failures and writes nothing.
    let dl0 = dead_letter_path();
    let report = run::run(
        &client,
        Arc::new(Poison),
        &table.name,
        &Plan {
            dry_run: true,
            ..plan(&state, &dl0)
        },
        CancellationToken::new(),
    )
    .await
    .expect("a dry run with poison items completes");
    assert_eq!(report.counts.failed, poison.len() as u64, "{report}");
    assert_eq!(report.counts.updated, ORDINARY as u64);
    assert_eq!(read_all(&client, &table.name).await, before);
    let _ = std::fs::remove_file(&dl0);

    // A run that stops at its first failure (--max-errors 0) acknowledges the
    // page that held it; a resume goes on past every poison item.
    let dl1 = dead_letter_path();
    let first = run::run(
        &client,
        Arc::new(Poison),
        &table.name,
        &Plan {
            max_errors: Some(0),
            ..plan(&state, &dl1)
        },
        CancellationToken::new(),
    )
    .await;
    let failure = first.expect_err("the error budget of 0 stops the run");
    assert!(
        failure.error.to_string().contains("--max-errors"),
        "stopped by the error budget, not by a fatal error: {}",
        failure.error
    );
    let report = run::run(
        &client,
        Arc::new(Poison),
        &table.name,
        &plan(&state, &dl1),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|f| panic!("the resume completes: {}", f.error));
    assert_eq!(report.outcome, Outcome::DoneWithFailures, "{report}");
    assert_eq!(
        report.total.expect("checkpointed").failed,
        poison.len() as u64,
        "{report}"
    );
    assert_migrated_except(&table.name, &items, &poison_keys).await;
    let dead = dead_letters(std::slice::from_ref(&dl1));
    assert_eq!(
        dead.keys().cloned().collect::<BTreeSet<_>>(),
        poison_keys,
        "every poison item and nothing else is dead-lettered"
    );
    let reason = |k: &str| dead[k].join(" | ");
    assert!(
        reason("emptyset#1").contains("empty string set"),
        "{}",
        reason("emptyset#1")
    );
    assert!(
        reason("digits39#1").contains("39 significant digits"),
        "{}",
        reason("digits39#1")
    );
    assert!(reason("nan#1").contains("NaN"), "{}", reason("nan#1"));
    assert!(
        reason("gsitype#1").contains("byOwner"),
        "{}",
        reason("gsitype#1")
    );
    assert!(
        reason("wide#1").contains("expression"),
        "{}",
        reason("wide#1")
    );
    let _ = std::fs::remove_file(&dl1);
}

/// Content errors only DynamoDB can see (an item collection over 10 GB, a
/// limit dynbulk does not model) come back as errors on the item's write:
/// the item is dead-lettered and the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_errors_returned_for_an_item_write_dead_letter_that_item() {
    let state = TestTable::named("state");
    let table = table_with_index("rejected").await;
    let items = load(&table.name, &[]).await;
    let rejected = [
        (
            "order#0003",
            "ValidationException",
            "Invalid UpdateExpression: Expression size has exceeded the maximum allowed size; expression size: 4200",
        ),
        (
            "order#0017",
            "ValidationException",
            "One or more parameter values were invalid: Type mismatch for Index Key owner Expected: S Actual: N IndexName: byOwner",
        ),
        (
            "order#0042",
            "ItemCollectionSizeLimitExceededException",
            "Item collection size limit exceeded",
        ),
    ];
    let mut config = Config::new(&table.name);
    config.key_faults = rejected
        .iter()
        .map(|(key, code, message)| KeyFault {
            key: (*key).to_owned(),
            code,
            message,
            times: u32::MAX,
        })
        .collect();
    let proxy = Proxy::start(&endpoint(), config).await;
    let dl = dead_letter_path();
    let report = run::run(
        &client_for(&proxy.url),
        Arc::new(Poison),
        &table.name,
        &plan(&state, &dl),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|f| panic!("the run completes: {}", f.error));
    assert_eq!(report.outcome, Outcome::DoneWithFailures, "{report}");
    assert_eq!(report.counts.failed, 3, "{report}");
    let keys: BTreeSet<String> = rejected.iter().map(|(k, _, _)| (*k).to_owned()).collect();
    assert_migrated_except(&table.name, &items, &keys).await;
    let dead = dead_letters(std::slice::from_ref(&dl));
    assert_eq!(dead.keys().cloned().collect::<BTreeSet<_>>(), keys);
    assert!(dead["order#0042"][0].contains("ItemCollectionSizeLimitExceededException"));
    let _ = std::fs::remove_file(&dl);
}

/// A partition the application keeps hot throttles one item's writes far
/// longer than 12 attempts: the item is retried against the time budget and
/// written once the throttling stops; the run does not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_throttled_for_longer_than_12_attempts_is_written_once_it_cools() {
    let state = TestTable::named("state");
    let table = table_with_index("hot").await;
    let items = load(&table.name, &[]).await;
    let hot = "order#0005";
    let mut config = Config::new(&table.name);
    config.key_faults = vec![KeyFault::hot(hot, 40)];
    let proxy = Proxy::start(&endpoint(), config).await;
    let dl = dead_letter_path();
    // The plan's default retry budget (minutes); short delays keep the test quick.
    let report = run::run(
        &client_for(&proxy.url),
        Arc::new(Poison),
        &table.name,
        &plan(&state, &dl),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|f| panic!("a hot key must not end the run: {}", f.error));
    assert_eq!(report.outcome, Outcome::Done, "{report}");
    assert_eq!(
        proxy.stats().key_faults[hot],
        40,
        "the key was hot for 40 writes"
    );
    assert_migrated_except(&table.name, &items, &BTreeSet::new()).await;
    assert!(!dl.exists(), "nothing was dead-lettered");
}

/// A key hot for longer than `--retry-budget`: the real binary dead-letters
/// that item, migrates every other one and exits 1 (item failures), not 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_hot_past_the_retry_budget_is_dead_lettered_and_the_run_goes_on() {
    let (table, items) = small_items_table("hot-cli", 200, 9).await;
    let state = TestTable::named("state");
    // An item the example migration changes.
    let hot_item = items
        .iter()
        .find(|i| expected_after_example(i) != **i)
        .expect("some item needs migrating")
        .clone();
    let hot = key_string(&hot_item);
    let mut config = Config::new(&table.name);
    config.key_faults = vec![KeyFault::hot(&hot, u32::MAX)];
    let proxy = Proxy::start(&endpoint(), config).await;
    let dir = tempfile::tempdir().unwrap();
    let dl = dir.path().join("dead.jsonl");
    let mut cmd = dynbulk();
    cmd.env("AWS_ENDPOINT_URL", &proxy.url)
        .args([
            "run",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
            "--unlimited",
            "--progress",
            "off",
            // At the default delays (25 ms doubling to 5 s), 12 attempts take
            // at most 21.4 s: 25 s of budget makes at least 13.
            "--retry-budget",
            "25s",
            "--dead-letter",
        ])
        .arg(&dl);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(count(&stdout, "errors"), 1, "{stdout}");
    let throttled = proxy.stats().key_faults[&hot];
    assert!(
        throttled > 12,
        "retried past the old 12 attempts: {throttled} throttles"
    );
    let text = std::fs::read_to_string(&dl).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("--retry-budget"),
        "{text}"
    );
    let after = read_all(&client(), &table.name).await;
    assert_eq!(after.len(), items.len());
    for before in &items {
        let key = key_string(before);
        let want = if key == hot {
            before.clone()
        } else {
            expected_after_example(before)
        };
        assert_eq!(after[&key], want, "{key}");
    }
}

/// The keys (`pk|sk`) of the records in one dead-letter file, in file order.
fn records(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let part = |name: &str| v["key"][name]["S"].as_str().unwrap().to_owned();
            format!("{}|{}", part("pk"), part("sk"))
        })
        .collect()
}

/// The example migration's id (the one the binary runs).
const EXAMPLE: &str = "20241220_add_status_category_fields";

/// Dead letters belong to the run, not to one attempt: a run stopped by
/// `--max-errors` and resumed twice, each time with another `--dead-letter`
/// path, spends one error budget over all its attempts, names every file in
/// its state, its final report and the ledger, counts every failure, and
/// every poison item is in exactly one of the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_and_the_error_budget_span_every_attempt_of_a_run() {
    const POISON: usize = 10;
    let client = client();
    let (table, items) = small_items_table("dl-attempts", 120, 41).await;
    let state = TestTable::named("state");
    // Items the example migration changes, whose writes DynamoDB rejects.
    let poison: BTreeSet<String> = items
        .iter()
        .filter(|i| expected_after_example(i) != **i)
        .map(key_string)
        .take(POISON)
        .collect();
    assert_eq!(poison.len(), POISON);
    let mut config = Config::new(&table.name);
    config.key_faults = poison
        .iter()
        .map(|key| KeyFault {
            key: key.clone(),
            code: "ValidationException",
            message: "One or more parameter values were invalid: An AttributeValue may not contain an empty string",
            times: u32::MAX,
        })
        .collect();
    let proxy = Proxy::start(&endpoint(), config).await;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["first", "second", "third"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.jsonl")))
        .collect();
    // One item at a time, in scan order: each attempt stops right after the
    // failure that exceeds the budget.
    let attempt = |file: &Path, max_errors: u64| {
        let mut cmd = dynbulk();
        cmd.env("AWS_ENDPOINT_URL", &proxy.url)
            .args(["run", "--table", &table.name, "--state-table", &state.name])
            .args(["--unlimited", "--progress", "off", "--segments", "1"])
            .args([
                "--workers",
                "1",
                "--item-concurrency",
                "1",
                "--page-size",
                "1",
            ])
            .args(["--max-errors", &max_errors.to_string(), "--dead-letter"])
            .arg(file);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let header = || async {
        let pk = format!("run#{}#{EXAMPLE}", table.name);
        client
            .get_item()
            .table_name(&state.name)
            .key("pk", s(&pk))
            .key("sk", s("run"))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .expect("the unfinished run's header")
    };
    let names = |item: &Attrs, attr: &str| -> Vec<String> {
        match item.get(attr) {
            Some(AttributeValue::L(l)) => l.iter().map(|v| v.as_s().unwrap().clone()).collect(),
            other => panic!("{attr} is not a list of file names: {other:?}"),
        }
    };
    let number = |item: &Attrs, attr: &str| -> u64 { item[attr].as_n().unwrap().parse().unwrap() };
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();

    // Attempt 1: --max-errors 2 stops it at its third failure.
    let (code, stdout, stderr) = attempt(&files[0], 2).await;
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("--max-errors"), "{stderr}");
    let h = header().await;
    assert_eq!(names(&h, "dead_letters"), vec![path(&files[0])], "{h:?}");
    assert_eq!(number(&h, "failed"), 3, "{h:?}");

    // Attempt 2: --max-errors 4 counts the 3 failures before: it stops at
    // the run's fifth failure, two more (not five).
    let (code, stdout, stderr) = attempt(&files[1], 4).await;
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stdout.contains("resuming:"), "{stdout}");
    let h = header().await;
    assert_eq!(
        names(&h, "dead_letters"),
        vec![path(&files[0]), path(&files[1])],
        "{h:?}"
    );
    assert_eq!(number(&h, "failed"), 5, "{h:?}");
    assert_eq!(records(&files[1]).len(), 2);

    // Attempt 3 completes; its report names every file and counts every failure.
    let (code, stdout, stderr) = attempt(&files[2], 1000).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert_eq!(count(&stdout, "errors"), 5, "{stdout}");
    assert!(stdout.contains(", 10 failed (all attempts)"), "{stdout}");
    let listed: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("dead letters:"))
        .take(3)
        .map(|l| l.trim_start().trim_start_matches("dead letters:").trim())
        .collect();
    assert_eq!(
        listed,
        files
            .iter()
            .map(|f| f.to_str().unwrap())
            .collect::<Vec<_>>(),
        "{stdout}"
    );
    // The run's state is gone once it completed; the ledger keeps the files.
    let ledger = client
        .get_item()
        .table_name(&state.name)
        .key("pk", s(&format!("ledger#{}", table.name)))
        .key("sk", s(EXAMPLE))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        names(&ledger, "dead_letters"),
        files.iter().map(path).collect::<Vec<_>>()
    );
    assert_eq!(number(&ledger, "failed"), POISON as u64);

    // Every poison item is in exactly one file, nothing else is; the files
    // are readable by their owner only.
    let mut seen = Vec::new();
    for (file, want) in files.iter().zip([3, 2, 5]) {
        let keys = records(file);
        assert_eq!(keys.len(), want, "{}", file.display());
        seen.extend(keys);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{} is {mode:o}", file.display());
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        poison.iter().cloned().collect::<Vec<_>>(),
        "each poison item once, in one of the files"
    );
    let after = read_all(&client, &table.name).await;
    assert_eq!(after.len(), items.len());
    for before in &items {
        let key = key_string(before);
        let expected = if poison.contains(&key) {
            before.clone()
        } else {
            expected_after_example(before)
        };
        assert_eq!(after[&key], expected, "{key}");
    }
}

/// The checkpointer puts dead letters on disk before it saves a checkpoint
/// past them, and names their file in the run's header. When the file cannot
/// be synced (its directory was removed), it stops without moving the
/// checkpoint: a resume redoes that page rather than lose the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_never_moves_past_dead_letters_not_on_disk() {
    use dynbulk::report::Counts;
    use dynbulk::state::checkpoint::{checkpointer, Ack, SegmentState, Store};
    use dynbulk::state::deadletter::DeadLetter;

    let client = client();
    let state = TestTable::named("state");
    dynbulk::state::ledger::Ledger::new(client.clone(), state.name.clone())
        .ensure()
        .await
        .unwrap();
    let key: Attrs = HashMap::from([("pk".into(), s("order#0001"))]);
    let ack = || Ack {
        segment: 0,
        seq: 0,
        last_key: Some(key.clone()),
        counts: Counts {
            scanned: 1,
            failed: 1,
            ..Counts::default()
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let save = |store: Store, dl: Arc<DeadLetter>| {
        let ack = ack();
        async move {
            let run = store.create(1, &["pk".to_string()], None).await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(ack).await.unwrap();
            drop(tx);
            checkpointer(store, run, rx, Default::default(), dl, None, None).await
        }
    };

    // The usual case: synced, named, counted with the checkpoint.
    // State is written under the run's lock.
    let lock = dynbulk::state::lock::acquire(
        &client,
        &state.name,
        "orders",
        "20250101_synced",
        dynbulk::state::lock::DEFAULT_LEASE,
    )
    .await
    .unwrap();
    let store = Store::new(client.clone(), &state.name, "orders", "20250101_synced")
        .fenced(lock.fence.clone());
    let dl = Arc::new(DeadLetter::new(dir.path().join("synced.jsonl")));
    dl.record("orders", "20250101_synced", &key, "boom")
        .await
        .unwrap();
    let (saved, _) = save(store.clone(), dl.clone()).await.unwrap();
    assert!(dl.is_synced().await);
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(loaded.segments, vec![SegmentState::At(key.clone())]);
    assert_eq!(loaded.segment_failed, vec![1]);
    assert_eq!(loaded.counts.failed, 1);
    assert_eq!(loaded.dead_letters, saved.dead_letters);
    assert_eq!(
        loaded.dead_letters,
        vec![dl.path().to_string_lossy().into_owned()]
    );

    // The record reached the operating system, but its new file's directory is gone.
    // State is written under the run's lock.
    let lock = dynbulk::state::lock::acquire(
        &client,
        &state.name,
        "orders",
        "20250101_lost",
        dynbulk::state::lock::DEFAULT_LEASE,
    )
    .await
    .unwrap();
    let store = Store::new(client.clone(), &state.name, "orders", "20250101_lost")
        .fenced(lock.fence.clone());
    let gone = dir.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let dl = Arc::new(DeadLetter::new(gone.join("lost.jsonl")));
    dl.record("orders", "20250101_lost", &key, "boom")
        .await
        .unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    let error = save(store.clone(), dl)
        .await
        .expect_err("the dead letter cannot be made durable");
    assert!(error.to_string().contains("lost.jsonl"), "{error}");
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(
        loaded.segments,
        vec![SegmentState::Start],
        "the checkpoint moved"
    );
    assert_eq!(loaded.counts.failed, 0);
    assert!(loaded.dead_letters.is_empty());
}
