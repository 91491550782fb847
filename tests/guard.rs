//! The write guard covers every read: an application write that lands between
//! the scan and the migration's write, on anything the transform looked at
//! (including a lookup that found nothing), is never overwritten or deleted.
//!
//! The race is made deterministic: the migration's transform performs the
//! application's write itself, through its own client, the first time it sees
//! a chosen item, i.e. after the scan read the item and before dynbulk writes.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::types::AttributeValue;
use common::sample::{self, KeyShape};
use common::*;
use dynbulk::migration::{Change, Item, Migration, TransformError, Update};
use dynbulk::report::Outcome;
use dynbulk::run::{self, Plan};
use tokio_util::sync::CancellationToken;

fn plan(state: &TestTable) -> Plan {
    Plan {
        segments: Some(2),
        workers: 2,
        ..test_plan(state)
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.into())
}

fn key(i: u32) -> Attrs {
    HashMap::from([
        ("pk".to_string(), s(&format!("order#{i:03}"))),
        ("sk".to_string(), s("o")),
    ])
}

/// A composite-key table holding `items`.
async fn table_with(prefix: &str, items: &[Attrs]) -> TestTable {
    let client = client();
    let table = TestTable::named(prefix);
    sample::create_table(&client, &table.name, KeyShape::Composite)
        .await
        .unwrap();
    for item in items {
        client
            .put_item()
            .table_name(&table.name)
            .set_item(Some(item.clone()))
            .send()
            .await
            .unwrap();
    }
    table
}

/// An application write, sent from inside a (synchronous) transform: on a
/// thread of its own with its own runtime, and waited for.
fn app_update(
    table: &str,
    key: Attrs,
    update: &str,
    names: &[(&str, &str)],
    values: &[(&str, AttributeValue)],
) {
    let table = table.to_owned();
    let update = update.to_owned();
    let names: HashMap<String, String> = names
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let values: HashMap<String, AttributeValue> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            client()
                .update_item()
                .table_name(&table)
                .set_key(Some(key))
                .update_expression(update)
                .set_expression_attribute_names(if names.is_empty() { None } else { Some(names) })
                .set_expression_attribute_values(if values.is_empty() {
                    None
                } else {
                    Some(values)
                })
                .send()
                .await
                .expect("the application's write");
        });
    })
    .join()
    .unwrap();
}

/// Which items the application races, and which it already raced (each once).
struct Race {
    table: String,
    targets: HashSet<String>,
    done: Mutex<HashSet<String>>,
}

impl Race {
    fn new(table: &str, targets: impl IntoIterator<Item = u32>) -> Self {
        Race {
            table: table.to_owned(),
            targets: targets.into_iter().map(|i| key_string(&key(i))).collect(),
            done: Mutex::new(HashSet::new()),
        }
    }

    /// True the first time the transform sees a targeted item.
    fn first_sight(&self, item: &Item) -> Option<Attrs> {
        let k = HashMap::from([
            ("pk".to_string(), item.get("pk")?.clone()),
            ("sk".to_string(), item.get("sk")?.clone()),
        ]);
        let name = key_string(&k);
        (self.targets.contains(&name) && self.done.lock().unwrap().insert(name)).then_some(k)
    }
}

/// Deletes orders that are not on hold (have no `holdUntil`).
struct DeleteUnheld(Arc<Race>);

impl Migration for DeleteUnheld {
    fn id(&self) -> &'static str {
        "20260101_delete_unheld"
    }
    fn description(&self) -> &'static str {
        "test migration: delete orders without a hold"
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        if item.attrs().contains_key("holdUntil") {
            return Ok(Change::Keep);
        }
        if let Some(k) = self.0.first_sight(item) {
            // The application puts the order on hold after the scan read it.
            app_update(
                &self.0.table,
                k,
                "SET holdUntil = :h",
                &[],
                &[(":h", s("2030-01-01"))],
            );
        }
        Ok(Change::Delete)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_set_between_scan_and_delete_survives_a_lookup_that_missed() {
    let state = TestTable::named("state");
    let items: Vec<Attrs> = (0..40)
        .map(|i| {
            let mut item = key(i);
            if i % 2 == 1 {
                item.insert("holdUntil".into(), s("2029-01-01"));
            }
            item
        })
        .collect();
    let table = table_with("guard-hold", &items).await;
    // Every fourth order without a hold is put on hold while the migration runs.
    let raced: Vec<u32> = (0..40).filter(|i| i % 4 == 0).collect();
    let race = Arc::new(Race::new(&table.name, raced.iter().copied()));
    let report = run::run(
        &client(),
        Arc::new(DeleteUnheld(race.clone())),
        &table.name,
        &plan(&state),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Done);
    assert_eq!(
        race.done.lock().unwrap().len(),
        raced.len(),
        "every race ran"
    );

    let after = read_all(&client(), &table.name).await;
    for i in 0..40 {
        let k = key_string(&key(i));
        match (i % 2, i % 4) {
            (1, _) => assert_eq!(after[&k]["holdUntil"], s("2029-01-01"), "{k}"),
            (_, 0) => assert_eq!(
                after.get(&k).map(|a| &a["holdUntil"]),
                Some(&s("2030-01-01")),
                "{k}: put on hold during the run, it must not be deleted"
            ),
            _ => assert!(!after.contains_key(&k), "{k} should be deleted"),
        }
    }
}

/// Counts an order's attributes by reading the whole item; the application
/// uses `version` for optimistic locking.
struct CountAttributes(Arc<Race>);

const COUNTED: &str = "attrCount";

impl Migration for CountAttributes {
    fn id(&self) -> &'static str {
        "20260101_count_attributes"
    }
    fn description(&self) -> &'static str {
        "test migration: record how many attributes an order has"
    }
    fn version_attribute(&self) -> Option<&str> {
        Some("version")
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        let count = item
            .attrs()
            .keys()
            .filter(|k| *k != COUNTED && *k != "version")
            .count() as i64;
        if let Some(k) = self.0.first_sight(item) {
            // The application adds an attribute the transform could not name
            // in a condition, and bumps the version as it always does.
            app_update(
                &self.0.table,
                k,
                "SET giftWrap = :t ADD #v :one",
                &[("#v", "version")],
                &[(":t", AttributeValue::Bool(true)), (":one", n("1"))],
            );
        }
        Ok(Update::new().set(COUNTED, count).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_bump_on_an_unread_attribute_makes_the_migration_reapply() {
    let state = TestTable::named("state");
    let items: Vec<Attrs> = (0..30)
        .map(|i| {
            let mut item = key(i);
            item.insert("status".into(), s("pending"));
            // Some orders were never written by the versioned application.
            if i % 3 != 0 {
                item.insert("version".into(), n(&format!("{}", i + 10)));
            }
            item
        })
        .collect();
    let table = table_with("guard-version", &items).await;
    let raced: Vec<u32> = (0..30).filter(|i| i % 2 == 0).collect();
    let race = Arc::new(Race::new(&table.name, raced.iter().copied()));
    let report = run::run(
        &client(),
        Arc::new(CountAttributes(race.clone())),
        &table.name,
        &plan(&state),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Done);
    assert_eq!(
        race.done.lock().unwrap().len(),
        raced.len(),
        "every race ran"
    );

    let after = read_all(&client(), &table.name).await;
    let before: BTreeMap<String, &Attrs> = items.iter().map(|i| (key_string(i), i)).collect();
    for (k, item) in &after {
        let counted = item
            .keys()
            .filter(|a| *a != COUNTED && *a != "version")
            .count();
        assert_eq!(
            item[COUNTED],
            n(&counted.to_string()),
            "{k}: the count covers the attribute the application added"
        );
        let was: u64 = before[k]
            .get("version")
            .map(|v| v.as_n().unwrap().parse().unwrap())
            .unwrap_or(0);
        let raced = item.contains_key("giftWrap");
        let want = was + u64::from(raced) + 1;
        assert_eq!(
            item["version"],
            n(&want.to_string()),
            "{k}: the migration's write increments the version"
        );
    }
    assert_eq!(
        after
            .values()
            .filter(|i| i.contains_key("giftWrap"))
            .count(),
        raced.len()
    );
}

/// The typed twin of [`DeleteUnheld`]: the hold is an optional field that is
/// absent from the item and skipped when serialized.
struct DeleteUnheldTyped(Arc<Race>);

#[derive(serde::Deserialize, serde::Serialize)]
struct Order {
    pk: String,
    sk: String,
    #[serde(rename = "holdUntil", skip_serializing_if = "Option::is_none")]
    hold_until: Option<String>,
}

impl Migration for DeleteUnheldTyped {
    fn id(&self) -> &'static str {
        "20260101_delete_unheld_typed"
    }
    fn description(&self) -> &'static str {
        "test migration: delete orders without a hold, typed"
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        let order: Order = item.parse()?;
        if order.hold_until.is_some() {
            return Ok(Change::Keep);
        }
        if let Some(k) = self.0.first_sight(item) {
            app_update(
                &self.0.table,
                k,
                "SET holdUntil = :h",
                &[],
                &[(":h", s("2030-01-01"))],
            );
        }
        Ok(Change::Delete)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_set_between_scan_and_delete_survives_an_absent_optional_field() {
    let state = TestTable::named("state");
    let items: Vec<Attrs> = (0..20).map(key).collect();
    let table = table_with("guard-typed", &items).await;
    let raced: Vec<u32> = (0..20).filter(|i| i % 2 == 0).collect();
    let race = Arc::new(Race::new(&table.name, raced.iter().copied()));
    let report = run::run(
        &client(),
        Arc::new(DeleteUnheldTyped(race.clone())),
        &table.name,
        &plan(&state),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Done);
    assert_eq!(
        race.done.lock().unwrap().len(),
        raced.len(),
        "every race ran"
    );
    let after = read_all(&client(), &table.name).await;
    for i in 0..20 {
        let k = key_string(&key(i));
        if i % 2 == 0 {
            assert_eq!(
                after.get(&k).map(|a| &a["holdUntil"]),
                Some(&s("2030-01-01")),
                "{k}: put on hold during the run, it must not be deleted"
            );
        } else {
            assert!(!after.contains_key(&k), "{k} should be deleted");
        }
    }
}

/// Gives pending orders a priority, without reading `status`: the scan filter
/// selects them.
struct PrioritizePending(Arc<Race>);

impl Migration for PrioritizePending {
    fn id(&self) -> &'static str {
        "20260101_prioritize_pending"
    }
    fn description(&self) -> &'static str {
        "test migration: pending orders get a priority"
    }
    fn scan_options(&self) -> dynbulk::migration::ScanOptions {
        dynbulk::migration::ScanOptions {
            // Placeholders shaped like dynbulk's own, to prove they cannot collide.
            filter: Some("#n0 = :v0".into()),
            filter_names: HashMap::from([("#n0".into(), "status".into())]),
            filter_values: HashMap::from([(":v0".into(), s("pending"))]),
            ..Default::default()
        }
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        if let Some(k) = self.0.first_sight(item) {
            let i: u32 = item.get_s("pk").unwrap()["order#".len()..].parse().unwrap();
            if i.is_multiple_of(3) {
                // The customer cancels the order after the scan selected it.
                app_update(
                    &self.0.table,
                    k,
                    "SET #s = :c",
                    &[("#s", "status")],
                    &[(":c", s("cancelled"))],
                );
            } else {
                // A conflict on an order that still matches: re-read and re-applied.
                app_update(
                    &self.0.table,
                    k,
                    "SET priority = :l",
                    &[],
                    &[(":l", s("low"))],
                );
            }
        }
        Ok(Update::new().set("priority", "high").into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_cancelled_between_scan_and_write_gets_no_priority() {
    let state = TestTable::named("state");
    let items: Vec<Attrs> = (0..30)
        .map(|i| {
            let mut item = key(i);
            let status = if i % 3 == 2 { "shipped" } else { "pending" };
            item.insert("status".into(), s(status));
            item
        })
        .collect();
    let table = table_with("guard-filter", &items).await;
    let raced: Vec<u32> = (0..30).filter(|i| i % 3 == 0 || i % 6 == 4).collect();
    let race = Arc::new(Race::new(&table.name, raced.iter().copied()));
    let report = run::run(
        &client(),
        Arc::new(PrioritizePending(race.clone())),
        &table.name,
        &plan(&state),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Done);
    assert_eq!(
        race.done.lock().unwrap().len(),
        raced.len(),
        "every race ran"
    );
    let after = read_all(&client(), &table.name).await;
    for i in 0..30 {
        let k = key_string(&key(i));
        let item = &after[&k];
        match i % 3 {
            0 => {
                assert_eq!(item["status"], s("cancelled"), "{k}");
                assert!(
                    !item.contains_key("priority"),
                    "{k}: cancelled during the run, it must get no priority"
                );
            }
            1 => assert_eq!(item.get("priority"), Some(&s("high")), "{k}"),
            _ => assert!(!item.contains_key("priority"), "{k}: never pending"),
        }
    }
    // The cancelled orders were re-read, no longer matched, and were left alone.
    assert_eq!(report.counts.updated, 10);
    assert_eq!(report.counts.unchanged, 10);
    assert_eq!(report.counts.conflicts, 15);
}

/// A typed migration over orders with an f64 total: derives a category and,
/// for orders marked `round`, rounds the total.
struct TypedTotals;

#[derive(serde::Deserialize, serde::Serialize)]
struct PricedOrder {
    pk: String,
    sk: String,
    status: String,
    total: f64,
    category: Option<String>,
}

impl Migration for TypedTotals {
    fn id(&self) -> &'static str {
        "20260101_typed_totals"
    }
    fn description(&self) -> &'static str {
        "test migration: typed round trip of f64 totals"
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        let order: PricedOrder = item.parse()?;
        let total = if order.status == "round" {
            order.total.round()
        } else {
            order.total
        };
        let new = PricedOrder {
            category: Some(format!("c-{}", order.status)),
            total,
            ..order
        };
        Ok(item.update_from(&new)?.into())
    }
}

const TENTH: &str = "0.1000000000000000000000000000000000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_number_an_f64_cannot_hold_keeps_its_exact_text_through_a_typed_transform() {
    let state = TestTable::named("state");
    let totals = [TENTH, "12345678901234567890.123456789", "2.5", "7"];
    let items: Vec<Attrs> = (0..8)
        .map(|i| {
            let mut item = key(i);
            item.insert("total".into(), n(totals[i as usize % 4]));
            let status = if i >= 4 { "round" } else { "open" };
            item.insert("status".into(), s(status));
            item
        })
        .collect();
    let table = table_with("guard-numbers", &items).await;
    let report = run::run(
        &client(),
        Arc::new(TypedTotals),
        &table.name,
        &plan(&state),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Done);
    let after = read_all(&client(), &table.name).await;
    for (i, before) in items.iter().enumerate() {
        let k = key_string(before);
        let got = &after[&k];
        assert_eq!(
            got["category"],
            s(&format!("c-{}", before["status"].as_s().unwrap()))
        );
        let want = match i {
            // Unchanged in value: the exact text stays, whatever an f64 made of it.
            0..4 => totals[i],
            // Rounding changed these: the new value is written.
            4 => "0",
            6 => "3",
            // Rounding a number beyond f64's precision gives the same f64: no
            // change an f64 can express, so the exact text stays.
            5 => totals[1],
            _ => "7",
        };
        assert_eq!(got["total"], n(want), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_attribute_flag_makes_the_binary_increment_it_on_every_write() {
    let state = TestTable::named("state");
    let items: Vec<Attrs> = (0..12)
        .map(|i| {
            let mut item = key(i);
            // Items without status are kept by the reference migration: no write.
            if i % 3 != 0 {
                item.insert("status".into(), s("pending"));
            }
            if i % 2 == 0 {
                item.insert("rev".into(), n("5"));
            }
            item
        })
        .collect();
    let table = table_with("guard-flag", &items).await;
    let dead_letter = std::env::temp_dir().join(format!("{}.jsonl", unique("dl")));
    let out = dynbulk()
        .args([
            "run",
            "--migration",
            "20241220_add_status_category_fields",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
            "--unlimited",
            "--progress",
            "off",
            "--version-attribute",
            "rev",
            "--dead-letter",
        ])
        .arg(&dead_letter)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = read_all(&client(), &table.name).await;
    for before in &items {
        let k = key_string(before);
        let got = &after[&k];
        let written = before.contains_key("status");
        let want_rev = match (before.get("rev"), written) {
            (Some(_), true) => Some(n("6")),
            (None, true) => Some(n("1")),
            (rev, false) => rev.cloned(),
        };
        assert_eq!(got.get("rev"), want_rev.as_ref(), "{k}");
        assert_eq!(
            got.get("statusCategory"),
            written.then(|| s("active")).as_ref(),
            "{k}"
        );
    }
}
