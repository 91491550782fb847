//! Preparing a run: look at the table (and its point-in-time recovery),
//! resolve the plan against it, and look (read-only) for an unfinished run to
//! resume. Sends no write.

use std::borrow::Cow;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;

use super::plan::{avg_item_bytes, resolve_limit, Plan, Prepared};
use super::resume::check_resumable;
use crate::capacity::cost;
use crate::dynamo::table;
use crate::error::Error;
use crate::migration::Migration;
use crate::state::checkpoint::{RunState, Store};
use crate::state::ledger::Ledger;

/// Looks at the table and resolves limits, page size and estimates. Sends no write.
///
/// # Errors
/// A missing or unreachable table; an on-demand table without explicit limits;
/// an unfinished run whose state is unreadable (unless `--restart`) or no
/// longer fits the table; with `require_pitr`, a run that would write to a
/// table whose point-in-time recovery is not known to be on.
pub async fn prepare(
    client: &Client,
    migration: Arc<dyn Migration>,
    table_name: &str,
    plan: &Plan,
) -> Result<Prepared, Error> {
    let verified = verify_plan(plan);
    let plan: &Plan = &verified;
    let info = table::describe(client, table_name).await?;
    let segments = plan
        .segments
        .unwrap_or_else(|| super::plan::default_segments(info.size_bytes, plan.join, plan.workers));
    let (read_limit, read_note) = resolve_limit(
        plan.limits.read,
        &info,
        info.read_capacity,
        "RCU",
        "--rcu-limit",
    )?;
    let (write_limit, write_note) = resolve_limit(
        plan.limits.write,
        &info,
        info.write_capacity,
        "WCU",
        "--wcu-limit",
    )?;
    let consistent = migration.scan_options().consistent_read;
    let avg_item_bytes = avg_item_bytes(&info);
    let page_size = plan
        .page_size
        .or_else(|| cost::page_limit(read_limit, avg_item_bytes, consistent));
    let read_estimate = info.size_bytes as f64 / cost::bytes_per_rcu(consistent);
    // A verify scans the whole table whatever a run left, and writes nothing
    // that recovery would protect.
    let (existing, unreadable_state) = if plan.verify {
        (None, None)
    } else {
        look_for_unfinished(client, &migration, table_name, plan).await?
    };
    let pitr = if plan.verify {
        None
    } else {
        Some(table::pitr_status(client, table_name).await)
    };
    if let Some(status) = pitr.as_ref().filter(|_| plan.require_pitr && !plan.dry_run) {
        table::require_pitr(table_name, status)?;
    }
    let prepared = Prepared {
        plan: plan.clone(),
        migration,
        table: info,
        read_limit,
        write_limit,
        limit_notes: read_note.into_iter().chain(write_note).collect(),
        page_size,
        avg_item_bytes,
        segments,
        read_estimate,
        existing,
        unreadable_state,
        pitr,
    };
    if let Some(run) = &prepared.existing {
        if !plan.restart {
            check_resumable(run, &prepared)?;
        }
    }
    Ok(prepared)
}

/// The plan as a verify runs it: a dry run that the ledger's "applied" does
/// not skip. Other plans as given.
fn verify_plan(plan: &Plan) -> Cow<'_, Plan> {
    if !plan.verify {
        return Cow::Borrowed(plan);
    }
    Cow::Owned(Plan {
        dry_run: true,
        rerun: true,
        restart: false,
        join: false,
        ..plan.clone()
    })
}

/// A read-only look for an unfinished run of the migration on the table: the
/// run, or with `--restart` the reason its state could not be read.
async fn look_for_unfinished(
    client: &Client,
    migration: &Arc<dyn Migration>,
    table_name: &str,
    plan: &Plan,
) -> Result<(Option<RunState>, Option<String>), Error> {
    let ledger = Ledger::new(client.clone(), plan.state_table.clone());
    if !ledger.exists().await? {
        return Ok((None, None));
    }
    let store = Store::new(
        client.clone(),
        &plan.state_table,
        table_name,
        migration.id(),
    );
    match store.load().await {
        Ok(existing) => Ok((existing, None)),
        // --restart is the way out of state that does not decode.
        Err(e @ Error::State { .. }) if plan.restart => Ok((None, Some(e.to_string()))),
        Err(e) => Err(e),
    }
}
