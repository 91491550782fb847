//! Creates a table of generated orders for trying dynbulk on a local endpoint:
//! `dynbulk-sample-data --table orders --items 20000 --endpoint-url http://localhost:8000`.

use anyhow::{anyhow, Context};
use clap::Parser;

use dynbulk::cli::ConnectionArgs;

mod sample;

use sample::KeyShape;

/// Create a table of generated sample orders for the example migration.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Table to create (it must not exist, unless --replace).
    #[arg(long, default_value = "orders")]
    table: String,
    /// Delete the table first if it exists (for a local endpoint you try
    /// things on: everything in the table is lost).
    #[arg(long)]
    replace: bool,
    /// Also delete this table first if it exists, e.g. the state table a demo
    /// uses, so that its ledger starts empty (repeatable).
    #[arg(long, value_name = "NAME")]
    drop: Vec<String>,
    /// Number of items.
    #[arg(long, default_value_t = 20_000)]
    items: u64,
    /// Key shape: pk + sk, or pk only.
    #[arg(long)]
    hash_only: bool,
    /// Random seed (the same seed gives the same items).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = dynbulk::dynamo::client::build(&args.connection.connection())
        .await
        .map_err(|e| anyhow!(e))?;
    let shape = if args.hash_only {
        KeyShape::Hash
    } else {
        KeyShape::Composite
    };
    let mut drop = args.drop.clone();
    if args.replace {
        drop.push(args.table.clone());
    }
    for table in &drop {
        if delete_if_exists(&client, table).await? {
            println!("deleted table {table}");
        }
    }
    sample::create_table(&client, &args.table, shape)
        .await
        .with_context(|| {
            format!(
                "creating sample table {} (delete it first if it exists)",
                args.table
            )
        })?;
    sample::load(&client, &args.table, shape, args.items, args.seed).await?;
    println!(
        "created table {} with {} sample orders",
        args.table, args.items
    );
    Ok(())
}

/// Deletes `table` and waits until it is gone; `false` when it did not exist.
async fn delete_if_exists(client: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<bool> {
    match client.delete_table().table_name(table).send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(false)
        }
        Err(e) => {
            return Err(anyhow!(
                "deleting table {table}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            ))
        }
    }
    for _ in 0..600 {
        match client.describe_table().table_name(table).send().await {
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return Ok(true)
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    Err(anyhow!(
        "table {table} was still there 60 s after its deletion"
    ))
}
