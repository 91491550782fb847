//! What several commands share: the exit codes, which migrations a command
//! acts on, the endpoint note of error messages, and holding /metrics open
//! at the end. Below `dispatch` and the command modules, so they import it
//! and not each other.

use std::sync::Arc;

use anyhow::anyhow;

use super::{ConnectionArgs, ObservabilityArgs};
use crate::migration::Migration;

/// Done, but some items failed (their keys are in the dead-letter files).
pub(super) const EXIT_ITEM_FAILURES: u8 = 1;
/// Fatal error or bad usage.
pub(super) const EXIT_FATAL: u8 = 2;
/// Lost the lock (or a lease) to another runner.
pub(super) const EXIT_LOCK_LOST: u8 = 3;
/// Interrupted with checkpoints saved.
pub(super) const EXIT_INTERRUPTED: u8 = 130;

/// Picks the migrations to run: one by id, or all in id order.
fn selected(
    all: &[Arc<dyn Migration>],
    id: Option<&str>,
) -> anyhow::Result<Vec<Arc<dyn Migration>>> {
    match id {
        None => Ok(all.to_vec()),
        Some(id) => all
            .iter()
            .find(|m| m.id() == id)
            .cloned()
            .map(|m| vec![m])
            .ok_or_else(|| {
                let known: Vec<_> = all.iter().map(|m| m.id()).collect();
                anyhow!(
                "unknown migration {id:?}; registered migrations: {}. `dynbulk list` shows them",
                known.join(", ")
            )
            }),
    }
}

/// The migrations to run (`migration`, else all), each with its table
/// (`table`, else its own): resolved before anything is touched.
pub(super) fn targets(
    migration: Option<&str>,
    table: Option<&str>,
    migrations: &[Arc<dyn Migration>],
) -> anyhow::Result<Vec<(Arc<dyn Migration>, String)>> {
    selected(migrations, migration)?
        .into_iter()
        .map(|m| {
            let table = table
                .map(str::to_owned)
                .or_else(|| m.table().map(str::to_owned))
                .ok_or_else(|| anyhow!("migration {} names no table; pass --table NAME", m.id()))?;
            Ok((m, table))
        })
        .collect()
}

/// " at <endpoint>" for error messages, when one is configured.
pub(super) fn endpoint_note(connection: &ConnectionArgs) -> String {
    connection
        .endpoint_url
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_DYNAMODB").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .map(|e| format!(" at {e}"))
        .unwrap_or_default()
}

/// Keeps the process (and its /metrics endpoint) alive for `--metrics-hold`.
pub(super) async fn hold_metrics(observability: &ObservabilityArgs) {
    if observability.metrics_addr.is_some() && observability.metrics_hold > 0 {
        tokio::time::sleep(std::time::Duration::from_secs(observability.metrics_hold)).await;
    }
}
