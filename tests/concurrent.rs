//! No lost updates: the application keeps writing while the migration runs.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use common::sample::{self, KeyShape, STATUSES};
use common::*;
use dynbulk::report::Outcome;
use dynbulk::run::{self, Plan};
use futures::stream::{self, StreamExt};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

const ITEMS: u64 = 20_000;
const APP_WRITES: usize = 4_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_application_writes_are_never_lost() {
    let client = client();
    let state = TestTable::named("state");
    let (table, items) = sample_table("orders-live", KeyShape::Composite, ITEMS, 77).await;

    // The application's new version: writes status together with the matching
    // statusCategory, plus attributes of its own. Keys are written in a random
    // order across the table; some keys twice.
    let seed: u64 = rand::rng().random();
    println!("application writer seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut keys: Vec<Attrs> = items
        .iter()
        .map(|i| {
            i.iter()
                .filter(|(k, _)| *k == "pk" || *k == "sk")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect();
    keys.shuffle(&mut rng);
    let mut plan_writes: Vec<(Attrs, String, u64)> = Vec::new();
    for (n, key) in keys.iter().take(APP_WRITES * 3 / 4).enumerate() {
        let status = STATUSES[rng.random_range(0..STATUSES.len())].to_owned();
        plan_writes.push((key.clone(), status, n as u64));
        if n % 3 == 0 {
            let status = STATUSES[rng.random_range(0..STATUSES.len())].to_owned();
            plan_writes.push((key.clone(), status, n as u64 + 1_000_000));
        }
    }
    let app_client = client.clone();
    let table_name = table.name.clone();
    let migration_done = Arc::new(AtomicBool::new(false));
    let done = migration_done.clone();
    // One writer task per key bucket so each key's writes stay in order.
    let app = tokio::spawn(async move {
        let mut last: HashMap<String, (String, u64)> = HashMap::new();
        let mut ordered = plan_writes;
        // All first writes, then all second writes: a key's two writes are
        // thousands of positions apart, never in flight together.
        ordered.sort_by_key(|(_, _, n)| (*n >= 1_000_000, *n % 1_000_000));
        let results: Vec<(String, String, u64)> = stream::iter(ordered.into_iter().enumerate())
            .map(|(i, (key, status, version))| {
                let c = app_client.clone();
                let t = table_name.clone();
                let done = done.clone();
                async move {
                    // Spread the writes over the migration's run.
                    if !done.load(Ordering::Relaxed) && i % 4 == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                    c.update_item()
                        .table_name(&t)
                        .set_key(Some(key.clone()))
                        .update_expression(
                            "SET #s = :s, statusCategory = :c, appVersion = :v, touchedBy = :t",
                        )
                        .expression_attribute_names("#s", "status")
                        .expression_attribute_values(":s", AttributeValue::S(status.clone()))
                        .expression_attribute_values(
                            ":c",
                            AttributeValue::S(sample::category(&status).into()),
                        )
                        .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
                        .expression_attribute_values(":t", AttributeValue::S("app-v2".into()))
                        .send()
                        .await
                        .expect("application write");
                    (key_string(&key), status, version)
                }
            })
            .buffered(8)
            .collect()
            .await;
        for (key, status, version) in results {
            let e = last.entry(key).or_insert((status.clone(), version));
            if version >= e.1 {
                *e = (status, version);
            }
        }
        last
    });

    let report = run::run(
        &client,
        Arc::new(StatusCategory),
        &table.name,
        &Plan {
            segments: Some(8),
            page_size: Some(100),
            ..test_plan(&state)
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    migration_done.store(true, Ordering::Relaxed);
    let last = app.await.unwrap();
    assert_eq!(report.outcome, Outcome::Done);
    assert_eq!(report.counts.failed, 0);
    println!(
        "conflicts resolved by re-reading: {} (of {} application writes)",
        report.counts.conflicts,
        last.len()
    );

    let after = read_all(&client, &table.name).await;
    assert_eq!(after.len() as u64, ITEMS);
    // Every application write is still there, with its own attributes.
    for (key, (status, version)) in &last {
        let item = &after[key];
        assert_eq!(
            item["status"],
            AttributeValue::S(status.clone()),
            "{key}: the application's status was lost"
        );
        assert_eq!(
            item["appVersion"],
            AttributeValue::N(version.to_string()),
            "{key}: appVersion lost"
        );
        assert_eq!(
            item["touchedBy"],
            AttributeValue::S("app-v2".into()),
            "{key}"
        );
    }
    // Every item's category matches its final status; untouched items are as the transform says.
    let before: HashMap<String, &Attrs> = items.iter().map(|i| (key_string(i), i)).collect();
    for (key, item) in &after {
        if let Some(AttributeValue::S(status)) = item.get("status") {
            assert_eq!(
                item.get("statusCategory"),
                Some(&AttributeValue::S(sample::category(status).into())),
                "{key}: statusCategory does not match status"
            );
        }
        if !last.contains_key(key) {
            assert_eq!(*item, expected_after_example(before[key]), "{key}");
        }
    }
}
