//! What dynbulk needs to know about the target table, from DescribeTable,
//! and whether it has point-in-time recovery (DescribeContinuousBackups).

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, PointInTimeRecoveryStatus,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;

use crate::capacity::backoff::{retry, Attempts, Backoff};
use crate::dynamo::classify::{AwsError, Cause};
use crate::error::{Error, Result};

/// The target table's shape and size.
#[derive(Debug, Clone, Default)]
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
    /// The key attributes of every global and local secondary index, with the
    /// type the table's AttributeDefinitions declare: a write that gives one
    /// of them another type is rejected by DynamoDB.
    pub index_keys: Vec<IndexKey>,
}

/// A scalar key type, as AttributeDefinitions declare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// String.
    S,
    /// Number.
    N,
    /// Binary.
    B,
}

/// One key attribute of a secondary index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKey {
    /// Index name.
    pub index: String,
    /// Attribute name.
    pub attribute: String,
    /// Declared type.
    pub scalar: Scalar,
    /// Partition key (else sort key): they have different size limits.
    pub partition: bool,
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
        Error::Internal(format!(
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
    let index_keys = index_keys(&desc);
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
        index_keys,
    })
}

/// The key attributes of every global and local secondary index, with the
/// type AttributeDefinitions declares for them.
fn index_keys(desc: &aws_sdk_dynamodb::types::TableDescription) -> Vec<IndexKey> {
    let declared = |name: &str| {
        desc.attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == name)
            .and_then(|d| match d.attribute_type() {
                ScalarAttributeType::S => Some(Scalar::S),
                ScalarAttributeType::N => Some(Scalar::N),
                ScalarAttributeType::B => Some(Scalar::B),
                _ => None,
            })
    };
    let index_key = |index: &str, k: &KeySchemaElement| {
        declared(k.attribute_name()).map(|scalar| IndexKey {
            index: index.to_owned(),
            attribute: k.attribute_name().to_owned(),
            scalar,
            partition: k.key_type() == &KeyType::Hash,
        })
    };
    let mut index_keys = Vec::new();
    for g in desc.global_secondary_indexes() {
        let name = g.index_name().unwrap_or_default();
        index_keys.extend(g.key_schema().iter().filter_map(|k| index_key(name, k)));
    }
    for l in desc.local_secondary_indexes() {
        let name = l.index_name().unwrap_or_default();
        index_keys.extend(l.key_schema().iter().filter_map(|k| index_key(name, k)));
    }
    index_keys
}

/// Whether a table has point-in-time recovery: the undo of last resort for a
/// migration gone wrong (a restore to any second of the last 35 days).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pitr {
    /// Enabled.
    On,
    /// Disabled.
    Off,
    /// Could not be found out; the reason says why (an endpoint that does not
    /// implement DescribeContinuousBackups, such as dynalite; access denied).
    Unknown(String),
}

impl std::fmt::Display for Pitr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pitr::On => write!(f, "on"),
            Pitr::Off => write!(f, "off"),
            Pitr::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// Asks DynamoDB whether `table` has point-in-time recovery. Never an error:
/// a status that cannot be read is [`Pitr::Unknown`], with the reason (the
/// check informs the operator; only `--require-pitr` makes it decide).
pub async fn pitr_status(client: &Client, table: &str) -> Pitr {
    let out = retry(
        &Backoff {
            max_attempts: 3,
            ..Backoff::default()
        },
        &mut Attempts::default(),
        || async {
            client
                .describe_continuous_backups()
                .table_name(table)
                .send()
                .await
                .map_err(AwsError::from_sdk)
        },
    )
    .await;
    match out {
        Ok(out) => {
            let status = out
                .continuous_backups_description()
                .and_then(|d| d.point_in_time_recovery_description())
                .and_then(|p| p.point_in_time_recovery_status());
            match status {
                Some(PointInTimeRecoveryStatus::Enabled) => Pitr::On,
                Some(PointInTimeRecoveryStatus::Disabled) => Pitr::Off,
                other => Pitr::Unknown(format!(
                    "DescribeContinuousBackups reported {}",
                    other.map_or("no status", |s| s.as_str())
                )),
            }
        }
        Err(e) => {
            tracing::debug!(table, error = %e, "point-in-time recovery status not readable");
            Pitr::Unknown(match (e.code.as_deref(), e.cause()) {
                // dynalite's answer, and that of any endpoint without the call.
                (Some("UnknownOperationException"), _) => {
                    "the endpoint does not implement DescribeContinuousBackups".to_owned()
                }
                (_, Cause::AccessDenied) => {
                    "access denied: allow dynamodb:DescribeContinuousBackups".to_owned()
                }
                _ => format!("DescribeContinuousBackups failed: {e}"),
            })
        }
    }
}

/// The `--require-pitr` check before a command mutates `table`: `Ok` only
/// when point-in-time recovery is known to be on.
///
/// # Errors
/// [`Error::Usage`] naming the table, its status, how to turn recovery on
/// and the flag, when it is off or unknown.
pub fn require_pitr(table: &str, status: &Pitr) -> Result<()> {
    let what = match status {
        Pitr::On => return Ok(()),
        Pitr::Off => "is off, and --require-pitr refuses to write to a table without it".to_owned(),
        Pitr::Unknown(why) => format!(
            "cannot be confirmed ({why}), and --require-pitr refuses to write to a table \
             unless it is known to be on"
        ),
    };
    Err(Error::Usage(format!(
        "table {table} was not changed: its point-in-time recovery {what}. \
         Turn it on with `aws dynamodb update-continuous-backups --table-name {table} \
         --point-in-time-recovery-specification PointInTimeRecoveryEnabled=true` \
         (with the same --region/--profile), or run without --require-pitr"
    )))
}

/// Creates an on-demand table whose key attributes are strings: `keys[0]` the
/// partition key, `keys[1]` (if any) the sort key. Returns once DynamoDB has
/// accepted it; [`wait_active`] waits until it can be used.
///
/// # Errors
/// DynamoDB's refusal (a table of that name exists: [`Cause::ResourceInUse`]).
pub async fn create_on_demand(
    client: &Client,
    table: &str,
    keys: &[&str],
) -> std::result::Result<(), AwsError> {
    let mut req = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for (i, k) in keys.iter().enumerate() {
        let key_type = if i == 0 {
            KeyType::Hash
        } else {
            KeyType::Range
        };
        req = req
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*k)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("name and type are set"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*k)
                    .key_type(key_type)
                    .build()
                    .expect("name and type are set"),
            );
    }
    req.send().await.map(|_| ()).map_err(AwsError::from_sdk)
}

/// Waits until `table` is ACTIVE, looking every 100 ms for at most `within`;
/// `Ok(false)` when it did not become active in that time.
///
/// # Errors
/// When DescribeTable fails.
pub async fn wait_active(
    client: &Client,
    table: &str,
    within: Duration,
) -> std::result::Result<bool, AwsError> {
    let step = Duration::from_millis(100);
    for _ in 0..within.as_millis().div_ceil(step.as_millis()) {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(AwsError::from_sdk)?;
        if out.table.and_then(|t| t.table_status) == Some(TableStatus::Active) {
            return Ok(true);
        }
        tokio::time::sleep(step).await;
    }
    Ok(false)
}

fn describe_error(client: &Client, table: &str, e: AwsError) -> Error {
    let conf = client.config();
    let region = conf
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "?".into());
    let where_ = format!("region {region}");
    match e.cause() {
        Cause::MissingResource => Error::Usage(format!(
            "table {table} does not exist ({where_}); check --table, --region and --endpoint-url"
        )),
        Cause::AccessDenied => Error::Connection(format!(
            "access to table {table} was denied ({where_}): {}; check the credentials' IAM permissions (dynamodb:DescribeTable, Scan, UpdateItem, DeleteItem, GetItem)",
            e.message
        )),
        Cause::BadCredentials => {
            Error::Connection(format!(
                "the AWS credentials were rejected ({where_}): {e}; check --profile, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or refresh your session"
            ))
        }
        _ if e.construction => Error::Connection(format!(
            "cannot sign requests to DynamoDB: {e}; configure credentials (--profile, AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )),
        _ if e.no_response => Error::Connection(format!(
            "cannot reach DynamoDB ({where_}) to describe table {table}: {e}; check --endpoint-url, --region and the network"
        )),
        _ => Error::aws(format!("describing table {table} ({where_})"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_pitr_passes_only_when_recovery_is_known_to_be_on() {
        assert!(require_pitr("orders", &Pitr::On).is_ok());
        for status in [Pitr::Off, Pitr::Unknown("no such call".into())] {
            let e = require_pitr("orders", &status).unwrap_err();
            assert!(matches!(e, Error::Usage(_)));
            let text = e.to_string();
            for needle in [
                "table orders was not changed",
                "aws dynamodb update-continuous-backups --table-name orders",
                "PointInTimeRecoveryEnabled=true",
                "--require-pitr",
            ] {
                assert!(text.contains(needle), "{needle:?} in {text}");
            }
        }
        let unknown = require_pitr("orders", &Pitr::Unknown("no such call".into()))
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("cannot be confirmed (no such call)"),
            "{unknown}"
        );
    }
}
