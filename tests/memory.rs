//! Memory stays flat: the items a run holds (scanned, not yet written) stay
//! within its in-flight byte budget whatever the table's size, because every
//! page reserves its bytes before it is scanned and keeps them until its last
//! item is written. Before, pages of up to 1 MB were held by every segment,
//! the channel and the workers, so a run held its whole table once the
//! writes were slower than the scan.

mod common;
mod proxy;

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;

use common::*;
use dynbulk::pipeline::inflight::PAGE_BYTES;
use dynbulk::report::Outcome;
use dynbulk::run::{self, Limit, Limits, Plan};
use proxy::{Config, Kind, Proxy};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// A table of `n` orders with a status and no status category, with notes of
/// 400-800 bytes: the example migration writes every one.
async fn items_to_write(prefix: &str, n: u64) -> (TestTable, Vec<Attrs>) {
    use common::sample::{self, KeyShape};
    let client = client();
    let table = TestTable::named(prefix);
    sample::create_table(&client, &table.name, KeyShape::Composite)
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut items = Vec::new();
    let mut i = 0;
    while items.len() < n as usize {
        let mut item = sample::item(KeyShape::Composite, i, n, &mut rng);
        i += 1;
        if !item.contains_key("status") {
            continue;
        }
        item.remove("statusCategory");
        let len = rng.random_range(400..800);
        item.insert("notes".into(), AttributeValue::S("n".repeat(len)));
        items.push(item);
    }
    sample::put_all(&client, &table.name, &items).await.unwrap();
    (table, items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn items_held_stay_within_the_inflight_budget_when_writes_are_slower_than_the_scan() {
    // ~2.2 MB of items of 500-900 bytes, every one of them to be written (so
    // that the proxy's writes count the items done); writes limited, reads
    // not, so the scan could run far ahead of the writes.
    let n = 3_000;
    let (table, items) = items_to_write("orders-memory", n).await;
    let state = TestTable::named("state");
    let proxy = Proxy::start(&endpoint(), Config::new(&table.name)).await;
    let (segments, budget) = (4u32, 128 * 1024);
    let report = run::run(
        &client_for(&proxy.url),
        Arc::new(StatusCategory),
        &table.name,
        &Plan {
            segments: Some(segments),
            inflight_bytes: budget,
            limits: Limits {
                read: Limit::Unlimited,
                write: Limit::Units(300.0),
            },
            ..test_plan(&state)
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Done, "{report}");
    assert_migrated(&table.name, &items).await;

    // Items scanned and not yet written, at every moment the proxy saw.
    let stats = proxy.stats();
    let mut events: Vec<(f64, i64)> = stats
        .scan_pages
        .iter()
        .map(|(t, n)| (*t, *n as i64))
        .chain(
            stats
                .timeline
                .iter()
                .filter(|(_, k, _)| *k == Kind::Write)
                .map(|(t, _, _)| (*t, -1)),
        )
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let scanned: i64 = stats.scan_pages.iter().map(|(_, n)| *n as i64).sum();
    assert_eq!(scanned, n as i64, "every item scanned once");
    let (mut held, mut most) = (0i64, 0i64);
    for (_, d) in events {
        held += d;
        most = most.max(held);
    }
    // The budget, plus what a page can hold beyond its estimate, in the
    // smallest items of the table (500 bytes).
    let bound = ((budget + segments as usize * PAGE_BYTES) / 500) as i64;
    println!("at most {most} items held (bound {bound}, table {n})");
    assert!(
        most <= bound,
        "{most} items were held at once, more than the budget allows ({bound})"
    );
}
