//! Stopping before the data step: an interrupt that arrives before or during
//! the schema step sends no table change, does not wait for an index build,
//! and writes no item; the ledger says stopped. (`main` maps the Stopped
//! outcome to exit code 130; the registered migrations have no schema step, so
//! this is tested through the library, as `main` calls it.)

mod common;
mod proxy;

use std::sync::Arc;
use std::time::Duration;

use common::sample::{self, KeyShape};
use common::*;
use dynbulk::migration::{Change, Item, Migration, SchemaStep, TransformError};
use dynbulk::report::{Outcome, Report};
use dynbulk::run::{self, Failure, Plan};
use dynbulk::state::ledger::{Ledger, Status};
use proxy::{Config, Proxy, Stats};
use tokio_util::sync::CancellationToken;

/// The example migration with a schema step: an index on `status`.
struct WithIndex;

const INDEX: &str = "byStatus";

impl Migration for WithIndex {
    fn id(&self) -> &'static str {
        "20250101_index_then_categories"
    }
    fn description(&self) -> &'static str {
        "Adds an index on status, then the example's category fields."
    }
    fn schema_step(&self) -> Option<SchemaStep> {
        Some(SchemaStep::AddGlobalSecondaryIndex {
            name: INDEX.into(),
            hash_key: "status".into(),
            range_key: None,
        })
    }
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        StatusCategory.transform(item)
    }
}

/// A provisioned table of `n` sample orders (dynalite refuses a new index on an
/// on-demand table: it wants ProvisionedThroughput, which DynamoDB forbids there).
async fn provisioned_table(prefix: &str, n: u64, seed: u64) -> (TestTable, Vec<Attrs>) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, KeySchemaElement, KeyType, ProvisionedThroughput, ScalarAttributeType,
    };
    let client = client();
    let table = TestTable::named(prefix);
    let mut req = client
        .create_table()
        .table_name(&table.name)
        .provisioned_throughput(
            ProvisionedThroughput::builder()
                .read_capacity_units(1000)
                .write_capacity_units(1000)
                .build()
                .unwrap(),
        );
    for (name, key) in [("pk", KeyType::Hash), ("sk", KeyType::Range)] {
        req = req
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(key)
                    .build()
                    .unwrap(),
            );
    }
    req.send().await.unwrap();
    while !table_active(&table.name).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = sample::load(&client, &table.name, KeyShape::Composite, n, seed)
        .await
        .unwrap();
    (table, items)
}

async fn table_active(table: &str) -> bool {
    let out = client()
        .describe_table()
        .table_name(table)
        .send()
        .await
        .unwrap();
    out.table()
        .and_then(|t| t.table_status())
        .map(|s| s.as_str())
        == Some("ACTIVE")
}

fn plan(state: &TestTable) -> Plan {
    Plan {
        segments: Some(2),
        ..test_plan(state)
    }
}

async fn indexes(table: &str) -> Vec<String> {
    let out = client()
        .describe_table()
        .table_name(table)
        .send()
        .await
        .unwrap();
    out.table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|g| g.index_name().map(str::to_owned))
        .collect()
}

async fn ledger_status(state: &TestTable, table: &str) -> Option<Status> {
    Ledger::new(client(), state.name.clone())
        .get(table, WithIndex.id())
        .await
        .unwrap()
        .map(|e| e.status)
}

fn stopped(result: Result<Report, Failure>) -> Report {
    match result {
        Ok(report) => report,
        Err(f) => panic!("run failed: {}", f.error),
    }
}

/// Runs `WithIndex` through a proxy in front of the endpoint; `interrupt`
/// decides when to cancel. The run must end within a minute.
async fn run_interrupted<F, Fut>(
    table: &TestTable,
    state: &TestTable,
    interrupt: F,
) -> (Report, Stats)
where
    F: FnOnce(Arc<Proxy>, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let proxy = Arc::new(Proxy::start(&endpoint(), Config::new(&table.name)).await);
    let client = client_for(&proxy.url);
    let plan = plan(state);
    let prepared = run::prepare(&client, Arc::new(WithIndex), &table.name, &plan)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { run::execute(&client, &prepared, shutdown, None).await })
    };
    interrupt(proxy.clone(), shutdown).await;
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends promptly after the interrupt")
        .unwrap();
    (stopped(result), proxy.stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_before_the_schema_step_sends_no_table_change_and_writes_nothing() {
    let (table, _) = provisioned_table("orders-stop", 200, 3).await;
    let state = TestTable::named("state");
    let before = read_all(&client(), &table.name).await;
    // Ctrl-C arrived while the run was being prepared.
    let (report, stats) = run_interrupted(&table, &state, |_, shutdown| async move {
        shutdown.cancel();
    })
    .await;

    assert_eq!(report.outcome, Outcome::Stopped);
    assert_eq!(
        stats.table_ops.get("UpdateTable"),
        None,
        "no schema change sent"
    );
    assert!(indexes(&table.name).await.is_empty());
    assert_eq!(
        read_all(&client(), &table.name).await,
        before,
        "no item written"
    );
    assert_eq!(
        ledger_status(&state, &table.name).await,
        Some(Status::Stopped)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_while_an_index_builds_stops_the_wait_and_the_run() {
    // dynalite accepts the new index but never builds it: the run waits.
    let (table, _) = provisioned_table("orders-stop-gsi", 200, 4).await;
    let state = TestTable::named("state");
    let before = read_all(&client(), &table.name).await;
    // Ctrl-C once the index was asked for.
    let (report, _) = run_interrupted(&table, &state, |proxy, shutdown| async move {
        while !proxy.stats().table_ops.contains_key("UpdateTable") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
    })
    .await;

    assert_eq!(report.outcome, Outcome::Stopped);
    assert!(
        report
            .schema
            .as_deref()
            .unwrap_or("")
            .contains("interrupted"),
        "{:?}",
        report.schema
    );
    assert_eq!(
        read_all(&client(), &table.name).await,
        before,
        "no item written"
    );
    assert_eq!(
        ledger_status(&state, &table.name).await,
        Some(Status::Stopped)
    );
}
