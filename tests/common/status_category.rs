//! The tests' and benches' own migration: the twin of the reference migration
//! `20241220_add_status_category_fields` (same id, same transform, mapping
//! from the sample generator), so runs in-process and runs of the stock
//! binary share expectations and ledger rows. The engine ships no migration.

use dynbulk::migration::{Change, Item, Migration, TransformError, Update};

use super::sample::category;

/// Derives `statusCategory` from a string `status`; keeps items without one.
pub struct StatusCategory;

impl Migration for StatusCategory {
    fn id(&self) -> &'static str {
        "20241220_add_status_category_fields"
    }

    fn description(&self) -> &'static str {
        "Add statusCategory (active/done/closed/other) derived from status"
    }

    fn table(&self) -> Option<&'static str> {
        Some("orders")
    }

    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        let Some(status) = item.get_s("status") else {
            return Ok(Change::Keep);
        };
        Ok(Update::new().set("statusCategory", category(status)).into())
    }
}
