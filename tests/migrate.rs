//! The example migration end to end against the real endpoint: every item's
//! final state, segment counts, idempotence, dry run, other change kinds.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use common::sample::{self, KeyShape};
use common::*;
use dynbulk::migration::{Change, Item, Migration, TransformError, Update};
use dynbulk::report::Outcome;
use dynbulk::run::{self, Plan};
use tokio_util::sync::CancellationToken;

const ITEMS: u64 = 20_000;

fn plan(segments: u32, state: &TestTable) -> Plan {
    let dir = std::env::temp_dir();
    Plan {
        segments: Some(segments),
        dead_letter: dir.join(format!("{}.jsonl", unique("dl"))),
        ..test_plan(state)
    }
}

async fn segments_give_identical_correct_tables(shape: KeyShape) {
    let client = client();
    let state = TestTable::named("state");
    let mut results: Vec<BTreeMap<String, Attrs>> = Vec::new();
    let mut expected = BTreeMap::new();
    let mut tables = Vec::new();
    for segments in [1, 4, 16] {
        let (table, items) = sample_table(&format!("orders-s{segments}"), shape, ITEMS, 42).await;
        if expected.is_empty() {
            expected = items
                .iter()
                .map(|i| (key_string(i), expected_after_example(i)))
                .collect();
            let sizes: Vec<usize> = items
                .iter()
                .map(|i| i.get("notes").unwrap().as_s().unwrap().len())
                .collect();
            assert!(
                sizes.iter().any(|s| *s < 100),
                "the sample has ~100-byte items"
            );
            assert!(
                sizes.iter().any(|s| *s > 250_000),
                "the sample has ~300 KB items"
            );
            assert!(
                items.iter().any(|i| !i.contains_key("status")),
                "some items have no status"
            );
            assert!(
                items.iter().any(|i| i.contains_key("statusCategory")),
                "some are already migrated"
            );
        }
        let report = run::run(
            &client,
            Arc::new(StatusCategory),
            &table.name,
            &plan(segments, &state),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(report.outcome, Outcome::Done);
        assert_eq!(report.counts.scanned, ITEMS);
        assert_eq!(report.counts.failed, 0);
        let after = read_all(&client, &table.name).await;
        assert_eq!(
            after.len(),
            expected.len(),
            "segments={segments}: item count"
        );
        for (key, want) in &expected {
            assert_eq!(
                after.get(key),
                Some(want),
                "segments={segments}: item {key}"
            );
        }
        // What the report says was modified is what actually differs.
        let changed = items
            .iter()
            .filter(|i| expected_after_example(i) != **i)
            .count() as u64;
        assert_eq!(report.counts.updated, changed, "segments={segments}");
        results.push(after);
        tables.push(table);
    }
    assert_eq!(results[0], results[1], "1 vs 4 segments");
    assert_eq!(results[0], results[2], "1 vs 16 segments");

    // Idempotence: running again (forced past the ledger) modifies nothing.
    let again = run::run(
        &client,
        Arc::new(StatusCategory),
        &tables[1].name,
        &Plan {
            rerun: true,
            ..plan(4, &state)
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(again.counts.modified(), 0);
    assert_eq!(again.counts.unchanged, ITEMS);
    assert_eq!(read_all(&client, &tables[1].name).await, results[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn example_migration_composite_key_1_4_16_segments_identical_and_idempotent() {
    segments_give_identical_correct_tables(KeyShape::Composite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn example_migration_hash_key_1_4_16_segments_identical_and_idempotent() {
    segments_give_identical_correct_tables(KeyShape::Hash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completed_migration_is_not_run_again_without_rerun() {
    let client = client();
    let state = TestTable::named("state");
    let (table, _) = sample_table("orders", KeyShape::Composite, 500, 3).await;
    let first = run::run(
        &client,
        Arc::new(StatusCategory),
        &table.name,
        &plan(2, &state),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(first.outcome, Outcome::Done);
    // Break an item behind the ledger's back: a skipped run must not touch it.
    client
        .update_item()
        .table_name(&table.name)
        .key("pk", AttributeValue::S("customer#000000".into()))
        .key("sk", AttributeValue::S("order#00000000".into()))
        .update_expression("SET statusCategory = :x, #s = :s")
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":x", AttributeValue::S("wrong".into()))
        .expression_attribute_values(":s", AttributeValue::S("pending".into()))
        .send()
        .await
        .unwrap();
    let second = run::run(
        &client,
        Arc::new(StatusCategory),
        &table.name,
        &plan(2, &state),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(second.outcome, Outcome::Skipped);
    let items = read_all(&client, &table.name).await;
    assert_eq!(
        items["customer#000000|order#00000000"]["statusCategory"],
        AttributeValue::S("wrong".into())
    );
    // The ledger is per table: the same migration on another table still runs.
    let other = TestTable::named("orders-other");
    sample::create_table(&client, &other.name, KeyShape::Hash)
        .await
        .unwrap();
    sample::load(&client, &other.name, KeyShape::Hash, 100, 3)
        .await
        .unwrap();
    let r = run::run(
        &client,
        Arc::new(StatusCategory),
        &other.name,
        &plan(2, &state),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(r.counts.scanned, 100);
}

/// A typed (serde_dynamo) migration that deletes cancelled orders, rewrites
/// totals, and fails on purpose for some items.
struct TypedCleanup;

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    pk: String,
    sk: String,
    status: Option<String>,
    total: Option<f64>,
}

impl Migration for TypedCleanup {
    fn id(&self) -> &'static str {
        "20260101_typed_cleanup"
    }
    fn description(&self) -> &'static str {
        "test migration"
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        let order: Order = item.parse()?;
        match order.status.as_deref() {
            Some("cancelled") => Ok(Change::Delete),
            Some("on_hold") => Err(TransformError::new("on_hold orders need a human")),
            // A key change must be refused, not written.
            Some("refunded") => Ok(Update::new().set("sk", "moved").into()),
            _ => {
                let total = order.total.unwrap_or(0.0);
                let rounded = Order {
                    total: Some(total.round()),
                    ..order
                };
                Ok(item.update_from(&rounded)?.into())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_migration_deletes_updates_and_dead_letters_per_item_failures() {
    let client = client();
    let state = TestTable::named("state");
    let (table, items) = sample_table("orders-typed", KeyShape::Composite, 2_000, 9).await;
    let p = plan(4, &state);
    let result = run::run(
        &client,
        Arc::new(TypedCleanup),
        &table.name,
        &p,
        CancellationToken::new(),
    )
    .await;
    let report = result.unwrap();
    assert_eq!(report.outcome, Outcome::DoneWithFailures);

    let after = read_all(&client, &table.name).await;
    let status = |i: &Attrs| i.get("status").and_then(|v| v.as_s().ok()).cloned();
    let mut want_failed = 0;
    let mut want_deleted = 0;
    for before in &items {
        let key = key_string(before);
        match status(before).as_deref() {
            Some("cancelled") => {
                want_deleted += 1;
                assert!(!after.contains_key(&key), "{key} should be deleted");
            }
            Some("on_hold") | Some("refunded") => {
                want_failed += 1;
                assert_eq!(after.get(&key), Some(before), "{key} must be untouched");
            }
            _ if before.get("status").is_some_and(|s| s.as_s().is_err()) => {
                // status of the wrong type does not parse into Order: a transform error.
                want_failed += 1;
                assert_eq!(after.get(&key), Some(before), "{key} must be untouched");
            }
            _ => {
                let got = &after[&key];
                let total: f64 = before["total"].as_n().unwrap().parse().unwrap();
                let new_total: f64 = got["total"].as_n().unwrap().parse().unwrap();
                assert_eq!(new_total, total.round(), "{key}");
                assert_eq!(
                    got.get("notes"),
                    before.get("notes"),
                    "{key}: untouched attributes stay"
                );
            }
        }
    }
    assert_eq!(report.counts.deleted, want_deleted);
    assert_eq!(report.counts.failed, want_failed);
    let dl = std::fs::read_to_string(&p.dead_letter).unwrap();
    let lines: Vec<serde_json::Value> = dl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, want_failed);
    assert!(lines
        .iter()
        .all(|l| l["table"] == table.name.as_str() && l["migration"] == "20260101_typed_cleanup"));
    assert!(lines.iter().any(|l| l["error"]
        .as_str()
        .unwrap()
        .contains("key attribute \"sk\"")));
    assert!(lines
        .iter()
        .any(|l| l["error"].as_str().unwrap().contains("need a human")));
    let _ = std::fs::remove_file(&p.dead_letter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_budget_stops_the_run_cleanly() {
    let client = client();
    let state = TestTable::named("state");
    let (table, _) = sample_table("orders-budget", KeyShape::Composite, 3_000, 5).await;
    let p = Plan {
        max_errors: Some(10),
        workers: 1,
        item_concurrency: 1,
        page_size: Some(50),
        ..plan(1, &state)
    };
    let failure = run::run(
        &client,
        Arc::new(TypedCleanup),
        &table.name,
        &p,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        failure.error.to_string().contains("--max-errors"),
        "{}",
        failure.error
    );
    let report = failure.report.unwrap();
    assert_eq!(report.outcome, Outcome::Stopped);
    assert!(report.counts.failed > 10);
    assert!(report.counts.scanned < 3_000, "the run stopped early");
    let lines = std::fs::read_to_string(&p.dead_letter)
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(lines, report.counts.failed);
    let _ = std::fs::remove_file(&p.dead_letter);
}

/// The example transform behind a projected scan.
struct Projected(Vec<&'static str>);

impl Migration for Projected {
    fn id(&self) -> &'static str {
        "20260102_projected"
    }
    fn description(&self) -> &'static str {
        "test migration"
    }
    fn scan_options(&self) -> dynbulk::migration::ScanOptions {
        dynbulk::migration::ScanOptions {
            projection: Some(self.0.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        StatusCategory.transform(item)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projected_scan_writes_correctly_or_refuses_attributes_it_did_not_fetch() {
    let client = client();
    let state = TestTable::named("state");
    let (table, items) = sample_table("orders-projected", KeyShape::Composite, 1_000, 12).await;
    let before = read_all(&client, &table.name).await;

    // statusCategory is written but not fetched: refused per item, nothing written.
    let p = plan(2, &state);
    let r = run::run(
        &client,
        Arc::new(Projected(vec!["status"])),
        &table.name,
        &p,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(r.counts.failed > 0 && r.counts.updated == 0, "{r}");
    assert_eq!(read_all(&client, &table.name).await, before);
    let dl = std::fs::read_to_string(&p.dead_letter).unwrap();
    assert!(dl.contains("projection"), "{dl}");
    let _ = std::fs::remove_file(&p.dead_letter);

    // Both fetched: every item ends as the transform says, the rest untouched.
    let p = Plan {
        rerun: true,
        ..plan(2, &state)
    };
    let r = run::run(
        &client,
        Arc::new(Projected(vec!["status", "statusCategory"])),
        &table.name,
        &p,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.counts.failed, 0, "{r}");
    let after = read_all(&client, &table.name).await;
    for item in &items {
        assert_eq!(after[&key_string(item)], expected_after_example(item));
    }
}
