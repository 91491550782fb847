//! One run shared by K = 1, 2 and 4 processes of the dynbulk binary
//! (`run --join`) against the real endpoint in DYNAMODB_ENDPOINT
//! (scripts/bench-join.sh starts dynalite), through the fault-injecting proxy
//! enforcing a write capacity. The run's --wcu-limit is that capacity: the
//! processes share one budget, so adding processes must not slow the run, and
//! the run must not take much longer than the capacity allows.
//!
//! Not a criterion bench: for each K it prints the wall time from the first
//! process's start to the last one's exit, the capacity bound (write units
//! the run consumed / capacity), their ratio (target <= 1.1), and the busiest
//! 10 s window against the capacity. Wall times from one run: the ratio, not
//! the seconds, is the figure. BENCH_ITEMS sets the table's size (default
//! 20,000: a 75 s run; start-up costs each process a few seconds, which a
//! much shorter run's ratio shows).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/proxy/mod.rs"]
mod proxy;

use std::time::Instant;

use common::*;
use proxy::{Config, Kind, Proxy};

/// Write units per second the proxy serves, and the run's limit.
const CAPACITY: f64 = 200.0;

fn items() -> u64 {
    std::env::var("BENCH_ITEMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

async fn scenario(k: usize) {
    let n = items();
    let (table, items) = small_items_table(&format!("bench-join-{k}"), n, 7).await;
    let state = TestTable::named("bench-join-state");
    let proxy = Proxy::start(
        &endpoint(),
        Config {
            write_capacity: Some(CAPACITY),
            ..Config::new(&table.name)
        },
    )
    .await;
    let limit = CAPACITY.to_string();
    let args = [
        "run",
        "--join",
        "--endpoint-url",
        &proxy.url,
        "--table",
        &table.name,
        "--state-table",
        &state.name,
        "--rcu-limit",
        "100000",
        "--wcu-limit",
        &limit,
        "--progress",
        "off",
    ];
    let started = Instant::now();
    let children: Vec<_> = (0..k)
        .map(|_| spawn_dynbulk(&args, &[("DYNBULK_LOG", "warn")]))
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let (code, out, err) = output(child);
        assert_eq!(code, Some(0), "process {i} of {k}\n{out}\n{err}");
    }
    let wall = started.elapsed().as_secs_f64();
    assert_migrated(&table.name, &items).await;
    let stats = proxy.stats();
    let units = stats.total(Kind::Write).units;
    let bound = units / CAPACITY;
    let busiest = stats.max_window(Kind::Write, 10.0) / (CAPACITY * 10.0);
    println!(
        "K={k}: {n} items, {units:.0} WCU at {CAPACITY} WCU/s: wall {wall:.1} s, capacity bound {bound:.1} s, \
         ratio {:.2}; busiest 10 s at {:.0}% of capacity",
        wall / bound,
        busiest * 100.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for k in [1, 2, 4] {
        scenario(k).await;
    }
}
