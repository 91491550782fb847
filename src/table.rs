//! What dynbulk needs to know about the target table, from DescribeTable.

use aws_sdk_dynamodb::types::{KeyType, TableStatus};
use aws_sdk_dynamodb::Client;

use crate::backoff::{retry, Attempts, Backoff};
use crate::error::{AwsError, Error, Result};

/// The target table's shape and size.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Table name.
    pub name: String,
    /// Key attribute names, partition key first.
    pub keys: Vec<String>,
    /// DynamoDB's item count estimate (updated about every six hours).
    pub item_count: u64,
    /// DynamoDB's size estimate in bytes.
    pub size_bytes: u64,
    /// Whether the table bills per request (on-demand).
    pub on_demand: bool,
    /// Provisioned read capacity units, if provisioned.
    pub read_capacity: Option<i64>,
    /// Provisioned write capacity units, if provisioned.
    pub write_capacity: Option<i64>,
    /// Table status (ACTIVE, UPDATING, ...).
    pub status: Option<TableStatus>,
    /// Global secondary index names.
    pub indexes: Vec<String>,
    /// DynamoDB's unique id of the table: differs if the table was deleted
    /// and created again under the same name.
    pub table_id: Option<String>,
}

/// Describes `table`.
///
/// # Errors
/// A missing table, denied access, an unreachable endpoint: each with a message
/// that says what to check.
pub async fn describe(client: &Client, table: &str) -> Result<TableInfo> {
    let out = retry(
        &Backoff {
            max_attempts: 2,
            ..Backoff::default()
        },
        &mut Attempts::default(),
        || async {
            client
                .describe_table()
                .table_name(table)
                .customize()
                .config_override(
                    aws_sdk_dynamodb::config::Builder::default().timeout_config(
                        // The first call of a run: an endpoint that accepts connections
                        // but never answers must fail in seconds, not hang.
                        aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                            .operation_attempt_timeout(std::time::Duration::from_secs(5))
                            .build(),
                    ),
                )
                .send()
                .await
                .map_err(AwsError::from_sdk)
        },
    )
    .await
    .map_err(|e| describe_error(client, table, e))?;
    let desc = out.table.ok_or_else(|| {
        Error::Usage(format!(
            "DescribeTable returned no description for table {table}"
        ))
    })?;
    let mut keys: Vec<(bool, String)> = desc
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.key_type() == &KeyType::Range,
                k.attribute_name().to_owned(),
            )
        })
        .collect();
    keys.sort();
    let on_demand = desc
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .map(|m| m.as_str() == "PAY_PER_REQUEST")
        .unwrap_or(false);
    let throughput = desc.provisioned_throughput();
    let read_capacity = throughput
        .and_then(|t| t.read_capacity_units())
        .filter(|c| *c > 0);
    let write_capacity = throughput
        .and_then(|t| t.write_capacity_units())
        .filter(|c| *c > 0);
    Ok(TableInfo {
        name: table.to_owned(),
        keys: keys.into_iter().map(|(_, n)| n).collect(),
        item_count: desc.item_count().unwrap_or(0).max(0) as u64,
        size_bytes: desc.table_size_bytes().unwrap_or(0).max(0) as u64,
        on_demand: on_demand || (read_capacity.is_none() && write_capacity.is_none()),
        read_capacity,
        write_capacity,
        status: desc.table_status().cloned(),
        table_id: desc.table_id().map(str::to_owned),
        indexes: desc
            .global_secondary_indexes()
            .iter()
            .filter_map(|g| g.index_name().map(str::to_owned))
            .collect(),
    })
}

fn describe_error(client: &Client, table: &str, e: AwsError) -> Error {
    let conf = client.config();
    let region = conf
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "?".into());
    let where_ = format!("region {region}");
    match e.code.as_deref() {
        Some("ResourceNotFoundException") => Error::Usage(format!(
            "table {table} does not exist ({where_}); check --table, --region and --endpoint-url"
        )),
        Some("AccessDeniedException") => Error::Usage(format!(
            "access to table {table} was denied ({where_}): {}; check the credentials' IAM permissions (dynamodb:DescribeTable, Scan, UpdateItem, DeleteItem, GetItem)",
            e.message
        )),
        Some("UnrecognizedClientException") | Some("InvalidSignatureException") | Some("ExpiredTokenException") => {
            Error::Usage(format!(
                "the AWS credentials were rejected ({where_}): {e}; check --profile, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or refresh your session"
            ))
        }
        _ if e.construction => Error::Usage(format!(
            "cannot sign requests to DynamoDB: {e}; configure credentials (--profile, AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )),
        _ if e.no_response => Error::Usage(format!(
            "cannot reach DynamoDB ({where_}) to describe table {table}: {e}; check --endpoint-url, --region and the network"
        )),
        _ => Error::aws(format!("describing table {table} ({where_})"), e),
    }
}
