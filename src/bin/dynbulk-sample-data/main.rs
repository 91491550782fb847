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
    /// Table to create (it must not exist).
    #[arg(long, default_value = "orders")]
    table: String,
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
