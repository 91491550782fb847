//! Capacity utilization through the fault-injecting proxy, against the real
//! endpoint in DYNAMODB_ENDPOINT (scripts/bench-capacity.sh starts dynalite).
//! Not a criterion bench: it reports, for (a) limit below capacity and
//! (b) capacity below limit, over the steady state (from 5 s after the first
//! write to 2 s before the last):
//!
//! - utilization = write units served / (min(limit, capacity) x seconds),
//! - the share of write requests throttled.
//!
//! With BENCH_TIMELINE set it also prints the write units served and the
//! requests throttled in each second of each run.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/proxy/mod.rs"]
mod proxy;

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use common::sample::{self, KeyShape};
use common::*;
use dynbulk::run::{self, Limit, Limits, Plan};
use proxy::{Config, Kind, Proxy};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

const ITEMS: u64 = 6_000;

async fn scenario(name: &str, limit: f64, capacity: f64) {
    let client = client();
    let table = TestTable::named("bench-capacity");
    let state = TestTable::named("bench-state");
    sample::create_table(&client, &table.name, KeyShape::Composite)
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let items: Vec<Attrs> = (0..ITEMS)
        .map(|i| {
            let mut item = sample::item(KeyShape::Composite, i, ITEMS, &mut rng);
            item.insert(
                "notes".into(),
                AttributeValue::S("n".repeat(rng.random_range(400..800))),
            );
            item
        })
        .collect();
    sample::put_all(&client, &table.name, &items).await.unwrap();

    let mut config = Config::new(&table.name);
    config.write_capacity = Some(capacity);
    config.read_capacity = Some(10_000.0);
    let proxy = Proxy::start(&endpoint(), config).await;
    let report = run::run(
        &client_for(&proxy.url),
        Arc::new(StatusCategory),
        &table.name,
        &Plan {
            segments: Some(8),
            limits: Limits {
                read: Limit::Units(1_000.0),
                write: Limit::Units(limit),
            },
            state_table: state.name.clone(),
            dead_letter: std::env::temp_dir().join(format!("{}.jsonl", unique("dl"))),
            ..Plan::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let stats = proxy.stats();
    let first = stats
        .timeline
        .iter()
        .find(|(_, k, _)| *k == Kind::Write)
        .map(|(t, _, _)| *t)
        .unwrap();
    let (from, to) = (first + 5.0, stats.last(Kind::Write) - 2.0);
    let served = stats.units_between(Kind::Write, from, to);
    let target = limit.min(capacity);
    let utilization = served / (target * (to - from));
    if std::env::var_os("BENCH_TIMELINE").is_some() {
        let mut t = first;
        while t < stats.last(Kind::Write) {
            let (r, th) = stats.requests_between(Kind::Write, t, t + 1.0);
            println!(
                "  t+{:>4.0}s served {:>6.1} units/s, {r} requests, {th} throttled",
                t - first,
                stats.units_between(Kind::Write, t, t + 1.0)
            );
            t += 1.0;
        }
    }
    let (requests, throttled) = stats.requests_between(Kind::Write, from, to);
    let (all, all_throttled) = stats.requests_between(Kind::Write, 0.0, f64::MAX);
    println!(
        "{name}: write limit {limit}/s, capacity {capacity}/s: steady state {:.1} s, utilization {:.1}%, \
         throttled {:.2}% of {requests} requests ({:.2}% of {all} over the whole run); working rate at the end {:.1}/s; {} items updated",
        to - from,
        utilization * 100.0,
        100.0 * throttled as f64 / requests.max(1) as f64,
        100.0 * all_throttled as f64 / all.max(1) as f64,
        report.capacity.write_rate.unwrap_or(0.0),
        report.counts.updated,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        scenario("(a) limit below capacity", 100.0, 300.0).await;
        scenario("(b) capacity below limit", 300.0, 100.0).await;
    });
}
