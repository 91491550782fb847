//! The DynamoDB edge: the client, what a table looks like, schema changes, and
//! DynamoDB's value types.
//!
//! - [`client`]: the one shared DynamoDB client (SDK retries off).
//! - `table`: DescribeTable facts about the target table.
//! - `schema`: idempotent schema steps (TTL, GSI).
//! - `number`: `Number`, DynamoDB's 38-digit decimal kept as text.
//! - `typed`: `Item::parse`'s serde deserializer, recording what the type read.

pub mod client;
pub(crate) mod number;
pub(crate) mod schema;
pub(crate) mod table;
pub(crate) mod typed;
