//! Sample data for the example migration: orders with every kind of `status`
//! (some missing, some already migrated), sizes from ~100 bytes to ~300 KB.
//! Used by `dynbulk-sample-data` (the demo) and by the tests and benches (which
//! include this file); deterministic per seed. Not part of the engine: it owns
//! its own status mapping, the one the application's new version (and the
//! reference migration) uses.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use futures::stream::{self, StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};

use anyhow::{anyhow, bail, Result};
use dynbulk::capacity::backoff::{retry, Attempts, Backoff};
use dynbulk::dynamo::table;
use dynbulk::error::AwsError;
use dynbulk::migration::Attrs;

/// The statuses the sample uses, including ones the mapping does not know.
pub const STATUSES: &[&str] = &[
    "pending",
    "processing",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
    "on_hold",
    "",
];

/// The category for a status, as the application's new version computes it
/// (and as the reference migration `20241220_add_status_category_fields`
/// derives it): some sample items already have it.
pub fn category(status: &str) -> &'static str {
    match status {
        "pending" | "processing" => "active",
        "shipped" | "delivered" => "done",
        "cancelled" | "refunded" => "closed",
        _ => "other",
    }
}

/// Key shape of a sample table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyShape {
    /// `pk` (S) only.
    Hash,
    /// `pk` (S) + `sk` (S).
    Composite,
}

impl KeyShape {
    /// Key attribute names.
    pub fn keys(self) -> Vec<String> {
        match self {
            KeyShape::Hash => vec!["pk".into()],
            KeyShape::Composite => vec!["pk".into(), "sk".into()],
        }
    }
}

/// Item number `i` of a sample of `n` items generated from `seed`.
pub fn item(shape: KeyShape, i: u64, n: u64, rng: &mut impl Rng) -> Attrs {
    let mut item = HashMap::new();
    match shape {
        KeyShape::Hash => {
            item.insert("pk".into(), AttributeValue::S(format!("order#{i:08}")));
        }
        KeyShape::Composite => {
            let customers = (n / 8).max(1);
            item.insert(
                "pk".into(),
                AttributeValue::S(format!("customer#{:06}", i % customers)),
            );
            item.insert("sk".into(), AttributeValue::S(format!("order#{i:08}")));
        }
    }
    let roll = rng.random_range(0..100);
    if roll >= 8 {
        let status = STATUSES[rng.random_range(0..STATUSES.len())];
        item.insert("status".into(), AttributeValue::S(status.into()));
        if roll < 25 {
            // Already migrated by the application's new version.
            item.insert(
                "statusCategory".into(),
                AttributeValue::S(category(status).into()),
            );
        } else if roll < 28 {
            // A stale category from an older mapping: the migration fixes it.
            item.insert("statusCategory".into(), AttributeValue::S("legacy".into()));
        }
    } else if roll < 2 {
        // status of the wrong type: the migration leaves it alone.
        item.insert("status".into(), AttributeValue::N("3".into()));
    }
    // Numbers in DynamoDB's normalized form (no trailing zeros), as read back.
    let total = format!("{}.{}", rng.random_range(1..5000), rng.random_range(1..10));
    item.insert("total".into(), AttributeValue::N(total));
    // Sizes: most items small, a few large (up to ~300 KB).
    let size = match rng.random_range(0..1000) {
        0..=4 => rng.random_range(100_000..300_000),
        5..=49 => rng.random_range(4_000..40_000),
        _ => rng.random_range(20..1_000),
    };
    item.insert("notes".into(), AttributeValue::S(filler(size, rng)));
    item
}

fn filler(len: usize, rng: &mut impl Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz ";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Creates `table` (on-demand) with the given key shape and waits until it is active.
///
/// # Errors
/// When the table cannot be created (for instance, it exists).
pub async fn create_table(client: &Client, table: &str, shape: KeyShape) -> Result<()> {
    let keys = shape.keys();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    table::create_on_demand(client, table, &keys)
        .await
        .map_err(|e| anyhow!("creating table {table}: {e}"))?;
    let active = table::wait_active(client, table, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!("describing table {table}: {e}"))?;
    if !active {
        bail!("table {table} did not become ACTIVE");
    }
    Ok(())
}

/// Generates `n` items from `seed` and writes them with BatchWriteItem (25 per
/// call, unprocessed items retried with backoff). Returns the items written.
///
/// # Errors
/// When a batch keeps failing.
pub async fn load(
    client: &Client,
    table: &str,
    shape: KeyShape,
    n: u64,
    seed: u64,
) -> Result<Vec<Attrs>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let items: Vec<Attrs> = (0..n).map(|i| item(shape, i, n, &mut rng)).collect();
    put_all(client, table, &items).await?;
    Ok(items)
}

/// Writes `items` with BatchWriteItem, 8 batches in flight.
///
/// # Errors
/// When a batch keeps failing.
pub async fn put_all(client: &Client, table: &str, items: &[Attrs]) -> Result<()> {
    stream::iter(items.chunks(25))
        .map(|chunk| put_batch(client, table, chunk))
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn put_batch(client: &Client, table: &str, chunk: &[Attrs]) -> Result<()> {
    let mut pending: Vec<WriteRequest> = chunk
        .iter()
        .map(|i| {
            WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .set_item(Some(i.clone()))
                        .build()
                        .expect("item is set"),
                )
                .build()
        })
        .collect();
    let policy = Backoff::default();
    let mut round = 0;
    while !pending.is_empty() {
        let out = retry(&policy, &mut Attempts::default(), || {
            let req = client
                .batch_write_item()
                .request_items(table, pending.clone());
            async move { req.send().await.map_err(AwsError::from_sdk) }
        })
        .await
        .map_err(|e| anyhow!("loading sample items into {table}: {e}"))?;
        pending = out
            .unprocessed_items
            .and_then(|mut u| u.remove(table))
            .unwrap_or_default();
        if !pending.is_empty() {
            // UnprocessedItems is throttling: back off before re-sending.
            round += 1;
            if round > policy.max_attempts {
                bail!(
                    "{} sample items stayed unprocessed in {table}",
                    pending.len()
                );
            }
            tokio::time::sleep(policy.delay(round, &mut rand::rng())).await;
        }
    }
    Ok(())
}
