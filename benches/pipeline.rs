//! The pipeline itself (transform + diff + bounded channel + worker pool), fed
//! from memory, with the dry-run writer as the sink: no network, no DynamoDB.
//! Reported in items per second (criterion's throughput).

use std::sync::Arc;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::SeedableRng;
use tokio::sync::{mpsc, Mutex};

use dynbulk::deadletter::DeadLetter;
use dynbulk::limiter::{Budget, Budgets};
use dynbulk::migrations::m20241220_add_status_category_fields::AddStatusCategoryFields;
use dynbulk::report::Stats;
use dynbulk::sample::{self, KeyShape};
use dynbulk::scan::Page;
use dynbulk::worker::{self, Pool};
use dynbulk::write::Writer;

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

fn pipeline(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let items: Vec<_> = (0..ITEMS)
        .map(|i| {
            let mut item = sample::item(KeyShape::Composite, i, ITEMS, &mut rng);
            // Keep items small so the bench measures the pipeline, not memcpy of notes.
            item.remove("notes");
            item
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = offline_client();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    for workers in [1usize, 4, 8] {
        group.bench_with_input(
            BenchmarkId::new("workers", workers),
            &workers,
            |b, &workers| {
                b.to_async(&runtime).iter(|| {
                    let items = items.clone();
                    let client = client.clone();
                    async move {
                        let stats = Arc::new(Stats::default());
                        let writer = Arc::new(Writer {
                            client,
                            table: "bench".into(),
                            keys: vec!["pk".into(), "sk".into()],
                            migration: Arc::new(AddStatusCategoryFields),
                            dry_run: true,
                            backoff: Default::default(),
                            stats: stats.clone(),
                            projection: None,
                            budgets: Arc::new(Budgets {
                                read: Budget::new(None),
                                write: Budget::new(None),
                            }),
                        });
                        let pool = Arc::new(Pool {
                            writer,
                            dead_letter: Arc::new(DeadLetter::new(
                                std::env::temp_dir().join("dynbulk-bench-dl.jsonl"),
                            )),
                            stats: stats.clone(),
                            item_concurrency: 8,
                            max_errors: None,
                            acks: None,
                        });
                        let (tx, rx) = mpsc::channel(workers * 2);
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
                            })
                            .await
                            .unwrap();
                            seq += 1;
                        }
                        drop(tx);
                        for h in handles {
                            h.await.unwrap().map_err(|_| "worker stopped").unwrap();
                        }
                        assert_eq!(stats.counts().updated + stats.counts().unchanged, ITEMS);
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
