//! Applies a migration's schema step idempotently: look first, change only what
//! is missing, wait until the table is usable again. An interrupt stops it
//! before it changes anything, or stops the wait for a new index (DynamoDB goes
//! on building it; the next run finds it and waits for it again).

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndexUpdate,
    KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use tokio_util::sync::CancellationToken;

use crate::dynamo::classify::AwsError;
use crate::dynamo::table;
use crate::error::{Error, Result};

/// Declarative, idempotent schema changes run before the data step. dynbulk
/// checks the table's current description first and does nothing when the
/// change is already there.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SchemaStep {
    /// Turn on TTL on the given attribute.
    EnableTtl {
        /// Attribute that holds the expiry time (epoch seconds).
        attribute: String,
    },
    /// Add a global secondary index (projection ALL) and wait until it is active.
    AddGlobalSecondaryIndex {
        /// Index name.
        name: String,
        /// Partition key attribute (string type).
        hash_key: String,
        /// Optional sort key attribute (string type).
        range_key: Option<String>,
    },
}

/// Applies `step` to `table` unless it is already in place; returns what was
/// done, for the ledger. In a dry run, only says what would be done. Once
/// `shutdown` is cancelled it sends no change and stops waiting; the caller
/// checks `shutdown` and does not go on to the data step.
///
/// # Errors
/// When the change is refused or the table does not become active.
pub async fn apply(
    client: &Client,
    table_name: &str,
    step: &SchemaStep,
    dry_run: bool,
    shutdown: &CancellationToken,
) -> Result<String> {
    match step {
        SchemaStep::EnableTtl { attribute } => {
            enable_ttl(client, table_name, attribute, dry_run, shutdown).await
        }
        SchemaStep::AddGlobalSecondaryIndex {
            name,
            hash_key,
            range_key,
        } => {
            let info = table::describe(client, table_name).await?;
            if info.indexes.iter().any(|i| i == name) {
                return Ok(format!("index {name} already exists"));
            }
            if dry_run {
                return Ok(format!("would add global secondary index {name}"));
            }
            if shutdown.is_cancelled() {
                return Ok(format!(
                    "interrupted before adding global secondary index {name}"
                ));
            }
            let mut keys = vec![(hash_key.clone(), KeyType::Hash)];
            if let Some(r) = range_key {
                keys.push((r.clone(), KeyType::Range));
            }
            add_index(client, &info, name, &keys).await?;
            wait_for_index(client, table_name, name, shutdown).await
        }
    }
}

/// Turns TTL on for `attribute` unless it already is.
async fn enable_ttl(
    client: &Client,
    table_name: &str,
    attribute: &str,
    dry_run: bool,
    shutdown: &CancellationToken,
) -> Result<String> {
    let out = client
        .describe_time_to_live()
        .table_name(table_name)
        .send()
        .await
        .map_err(|e| {
            Error::aws(
                format!("reading TTL settings of table {table_name}"),
                AwsError::from_sdk(e),
            )
        })?;
    let current = out.time_to_live_description();
    let on = current
        .and_then(|d| d.time_to_live_status())
        .map(|s| matches!(s.as_str(), "ENABLED" | "ENABLING"))
        .unwrap_or(false);
    if on && current.and_then(|d| d.attribute_name()) == Some(attribute) {
        return Ok(format!("TTL on {attribute} already enabled"));
    }
    if dry_run {
        return Ok(format!("would enable TTL on {attribute}"));
    }
    if shutdown.is_cancelled() {
        return Ok(format!("interrupted before enabling TTL on {attribute}"));
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(attribute)
        .build()
        .expect("fields are set");
    client
        .update_time_to_live()
        .table_name(table_name)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| {
            Error::aws(
                format!("enabling TTL on table {table_name}"),
                AwsError::from_sdk(e),
            )
        })?;
    Ok(format!("enabled TTL on {attribute}"))
}

/// Asks DynamoDB to add the index `name` (string keys, projection ALL; on a
/// provisioned table with the table's capacity).
async fn add_index(
    client: &Client,
    info: &table::TableInfo,
    name: &str,
    keys: &[(String, KeyType)],
) -> Result<()> {
    let mut create = CreateGlobalSecondaryIndexAction::builder()
        .index_name(name)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        );
    for (k, t) in keys {
        create = create.key_schema(
            KeySchemaElement::builder()
                .attribute_name(k)
                .key_type(t.clone())
                .build()
                .expect("name and type are set"),
        );
    }
    if !info.on_demand {
        create = create.provisioned_throughput(
            aws_sdk_dynamodb::types::ProvisionedThroughput::builder()
                .read_capacity_units(info.read_capacity.unwrap_or(5))
                .write_capacity_units(info.write_capacity.unwrap_or(5))
                .build()
                .expect("both units are set"),
        );
    }
    let create = create.build().expect("name, keys and projection are set");
    let mut req = client
        .update_table()
        .table_name(&info.name)
        .global_secondary_index_updates(
            GlobalSecondaryIndexUpdate::builder().create(create).build(),
        );
    for (k, _) in keys {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(k)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("set"),
        );
    }
    req.send().await.map_err(|e| {
        Error::aws(
            format!("adding index {name} to table {}", info.name),
            AwsError::from_sdk(e),
        )
    })?;
    Ok(())
}

/// Waits (up to an hour) until the new index is ACTIVE, or until `shutdown`.
async fn wait_for_index(
    client: &Client,
    table_name: &str,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<String> {
    for _ in 0..3600 {
        let out = client
            .describe_table()
            .table_name(table_name)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    format!("describing table {table_name}"),
                    AwsError::from_sdk(e),
                )
            })?;
        let active = out
            .table
            .map(|t| {
                t.global_secondary_indexes().iter().any(|g| {
                    g.index_name() == Some(name)
                        && g.index_status().map(|s| s.as_str()) == Some("ACTIVE")
                })
            })
            .unwrap_or(false);
        if active {
            return Ok(format!("added global secondary index {name}"));
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                return Ok(format!(
                    "interrupted while DynamoDB builds global secondary index {name}; \
                     the next run waits for it"
                ));
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    Err(Error::Timeout(format!(
        "index {name} on table {table_name} did not become ACTIVE within an hour; run again once it is"
    )))
}
