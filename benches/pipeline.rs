//! The pipeline itself (transform + diff + bounded channel + worker pool), fed
//! from memory, with the dry-run writer as the sink: no network, no DynamoDB.
//! Reported in items per second (criterion's throughput).
//!
//! Groups: `pipeline` without a metrics recorder; `pipeline_metrics` with the
//! Prometheus recorder installed and a snapshot published ten times a second
//! (a real run publishes once a second), which is all the metrics work the
//! item path does; their ratio is the pipeline's metrics overhead. And
//! `request_metrics`: the cost of recording one request's latency, throttle
//! and retry metrics, to set against a DynamoDB request's milliseconds.
//! `transform`: the reference migration as Rust and as its TypeScript twin
//! (migrations/, the repository's reference), through the same pipeline: the script path's
//! cost against the Rust path's.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::SeedableRng;
use tokio::sync::{mpsc, Mutex};

use dynbulk::capacity::limiter::{Budget, Budgets};
use dynbulk::metrics;
use dynbulk::migration::{Attrs, Migration};
use dynbulk::pipeline::inflight::{InFlight, BUDGET_BYTES};
use dynbulk::pipeline::scan::Page;
use dynbulk::pipeline::worker::{self, Pool};
use dynbulk::pipeline::write::Writer;
use dynbulk::report::{Progress, Stats};
use dynbulk::state::deadletter::DeadLetter;

// The sample generator and the tests' own migration (the engine ships none).
#[allow(dead_code)]
#[path = "../src/bin/dynbulk-sample-data/sample.rs"]
mod sample;
#[path = "../tests/common/status_category.rs"]
mod status_category;

use sample::KeyShape;
use status_category::StatusCategory;

// The allocator of the dynbulk binary (src/bin/dynbulk.rs), so that the
// figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ITEMS: u64 = 20_000;
const PAGE: usize = 100;

fn offline_client() -> aws_sdk_dynamodb::Client {
    // Never called: the dry-run writer sends nothing.
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("x", "x", None, None, "bench"))
        .endpoint_url("http://127.0.0.1:9")
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

fn items() -> Vec<Attrs> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    (0..ITEMS)
        .map(|i| {
            let mut item = sample::item(KeyShape::Composite, i, ITEMS, &mut rng);
            // Keep items small so the bench measures the pipeline, not memcpy of notes.
            item.remove("notes");
            item
        })
        .collect()
}

async fn one_pass(
    items: Vec<Attrs>,
    client: aws_sdk_dynamodb::Client,
    workers: usize,
    with_metrics: bool,
) {
    one_pass_with(
        items,
        client,
        workers,
        with_metrics,
        Arc::new(StatusCategory),
    )
    .await
}

async fn one_pass_with(
    items: Vec<Attrs>,
    client: aws_sdk_dynamodb::Client,
    workers: usize,
    with_metrics: bool,
    migration: Arc<dyn Migration>,
) {
    let stats = Arc::new(Stats::default());
    let budgets = Arc::new(Budgets {
        read: Budget::new(None),
        write: Budget::new(None),
    });
    let writer = Arc::new(Writer {
        client,
        table: "bench".into(),
        keys: vec!["pk".into(), "sk".into()],
        migration,
        dry_run: true,
        backoff: Default::default(),
        stats: stats.clone(),
        projection: None,
        budgets: budgets.clone(),
        guard: Default::default(),
        index_keys: vec![],
        fence: None,
        journal: None,
    });
    let pool = Arc::new(Pool {
        writer,
        dead_letter: Arc::new(DeadLetter::new(
            std::env::temp_dir().join("dynbulk-bench-dl.jsonl"),
        )),
        stats: stats.clone(),
        item_concurrency: 8,
        max_errors: None,
        failed_before: 0,
        acks: None,
    });
    let publisher = with_metrics.then(|| {
        let stats = stats.clone();
        let budgets = budgets.clone();
        tokio::spawn(async move {
            let labels = metrics::RunLabels {
                migration: "bench".into(),
                table: "bench".into(),
            };
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let progress = Progress {
                    counts: stats.counts(),
                    items_estimated: ITEMS,
                    segments_total: 1,
                    read_consumed: budgets.read.consumed(),
                    write_consumed: budgets.write.consumed(),
                    read_limit: budgets.read.ceiling(),
                    write_limit: budgets.write.ceiling(),
                    read_rate: budgets.read.rate(),
                    write_rate: budgets.write.rate(),
                    ..Progress::default()
                };
                metrics::publish(&labels, &progress, 0);
            }
        })
    });
    let (tx, rx) = mpsc::channel(workers);
    let rx = Arc::new(Mutex::new(rx));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(worker::work(
                pool.clone(),
                rx.clone(),
                tokio_util::sync::CancellationToken::new(),
            ))
        })
        .collect();
    let budget = InFlight::new(BUDGET_BYTES);
    let mut it = items.into_iter();
    let mut seq = 0;
    loop {
        let chunk: Vec<_> = it.by_ref().take(PAGE).collect();
        if chunk.is_empty() {
            break;
        }
        tx.send(Page {
            segment: 0,
            seq,
            items: chunk,
            last_key: None,
            reservation: budget.reserve(0.0).await,
        })
        .await
        .unwrap();
        seq += 1;
    }
    drop(tx);
    for h in handles {
        h.await.unwrap().map_err(|_| "worker stopped").unwrap();
    }
    if let Some(p) = publisher {
        p.abort();
    }
    assert_eq!(stats.counts().updated + stats.counts().unchanged, ITEMS);
}

/// User + system CPU time of the whole process so far.
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn pipeline(c: &mut Criterion) {
    let items = items();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = offline_client();
    for (group_name, with_metrics) in [("pipeline", false), ("pipeline_metrics", true)] {
        if with_metrics {
            // A recorder without an HTTP listener: the cost of recording, not of serving.
            let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
            metrics::describe();
        }
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(ITEMS));
        group.sample_size(30);
        for workers in [1usize, 8] {
            group.bench_with_input(
                BenchmarkId::new("workers", workers),
                &workers,
                |b, &workers| {
                    b.to_async(&runtime)
                        .iter(|| one_pass(items.clone(), client.clone(), workers, with_metrics))
                },
            );
        }
        group.finish();
    }
    let script = dynbulk::script::migrations(
        &dynbulk::script::Folder::Given(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations").into()),
        dynbulk::script::Limits::default(),
    )
    .expect("the TypeScript twin loads")
    .pop()
    .unwrap();
    // Items per second per core: the process's CPU time (all threads: the
    // runtime's and the script threads'), not wall time. The two paths take
    // turns, a pass each per round, so that a noisy neighbour hits both; the
    // figures are the median and the best round (the best is the cost when
    // nothing else ran). BENCH_ROUNDS sets the rounds (default 10).
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let paths = [
        ("rust", Arc::new(StatusCategory) as Arc<dyn Migration>),
        ("script", script.clone()),
    ];
    for (_, migration) in &paths {
        runtime.block_on(one_pass_with(
            items.clone(),
            client.clone(),
            8,
            false,
            migration.clone(),
        ));
    }
    let mut per_item = vec![Vec::new(); paths.len()];
    for _ in 0..rounds {
        for ((_, migration), times) in paths.iter().zip(per_item.iter_mut()) {
            // The input is copied before the clock starts: the figure is
            // the pipeline's CPU, not the bench's copying.
            let input = items.clone();
            let before = cpu_seconds();
            runtime.block_on(one_pass_with(
                input,
                client.clone(),
                8,
                false,
                migration.clone(),
            ));
            times.push((cpu_seconds() - before) / ITEMS as f64);
        }
    }
    let mut medians = Vec::new();
    for ((name, _), times) in paths.iter().zip(per_item.iter_mut()) {
        times.sort_by(f64::total_cmp);
        let (median, best) = (times[times.len() / 2], times[0]);
        medians.push(median);
        println!(
            "transform/{name}: {:.0} items/s per core ({:.2} us CPU per item, median of {rounds} passes); best pass {:.0} items/s per core ({:.2} us)",
            1.0 / median,
            median * 1e6,
            1.0 / best,
            best * 1e6
        );
    }
    println!(
        "transform/script vs rust: {:.2}x the CPU per item (medians)",
        medians[1] / medians[0]
    );
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    for (name, migration) in [
        ("rust", Arc::new(StatusCategory) as Arc<dyn Migration>),
        ("script", script),
    ] {
        group.bench_function(BenchmarkId::new(name, 8), |b| {
            b.to_async(&runtime)
                .iter(|| one_pass_with(items.clone(), client.clone(), 8, false, migration.clone()))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("request_metrics");
    group.throughput(Throughput::Elements(1));
    group.bench_function("latency_and_retry", |b| {
        b.iter(|| {
            metrics::request("UpdateItem", Duration::from_micros(2500));
            metrics::retry("UpdateItem", "throttle");
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
