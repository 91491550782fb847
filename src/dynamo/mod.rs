//! The DynamoDB edge: the client, what a table looks like, schema changes, and
//! DynamoDB's value types.
//!
//! - [`classify`]: what a DynamoDB error means (throttle, transient, item, fatal; its cause).
//! - [`client`]: the one shared DynamoDB client (SDK retries off).
//! - [`table`]: DescribeTable facts about the target table; creating a table and
//!   waiting until it is active.
//! - `schema`: `SchemaStep` and its idempotent application (TTL, GSI).
//! - `value`: the item type, sizes as DynamoDB counts them, equality as it stores values.
//! - `number`: `Number`, DynamoDB's 38-digit decimal kept as text.
//! - `typed`: `Item::parse`'s serde deserializer, recording what the type read.

pub mod classify;
pub mod client;
pub(crate) mod number;
pub(crate) mod schema;
pub mod table;
pub(crate) mod typed;
pub(crate) mod value;
