//! Derives `statusCategory` from `status`, the reference migration.
//!
//! | status                 | statusCategory |
//! | ---------------------- | -------------- |
//! | pending, processing    | active         |
//! | shipped, delivered     | done           |
//! | cancelled, refunded    | closed         |
//! | any other string       | other          |
//! | missing or not a string| (unchanged)    |
//!
//! Idempotent: an item whose `statusCategory` already matches is left alone.

use dynbulk::prelude::*;

/// See the module docs.
pub struct AddStatusCategoryFields;

/// The category for a status, as the application's new version computes it.
pub fn category(status: &str) -> &'static str {
    match status {
        "pending" | "processing" => "active",
        "shipped" | "delivered" => "done",
        "cancelled" | "refunded" => "closed",
        _ => "other",
    }
}

impl Migration for AddStatusCategoryFields {
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
            // Nothing to derive from; the application sets both when it writes status.
            return Ok(Change::Keep);
        };
        Ok(Update::new().set("statusCategory", category(status)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, &str)]) -> Item {
        Item::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), AttributeValue::S(v.to_string())))
                .collect(),
        )
    }

    #[test]
    fn maps_every_status_family() {
        for (status, cat) in [
            ("pending", "active"),
            ("processing", "active"),
            ("shipped", "done"),
            ("delivered", "done"),
            ("cancelled", "closed"),
            ("refunded", "closed"),
            ("weird", "other"),
        ] {
            let change = AddStatusCategoryFields
                .transform(&item(&[("status", status)]))
                .unwrap();
            assert_eq!(
                change,
                Update::new().set("statusCategory", cat).into(),
                "{status}"
            );
        }
    }

    #[test]
    fn items_without_status_are_kept() {
        assert_eq!(
            AddStatusCategoryFields
                .transform(&item(&[("x", "1")]))
                .unwrap(),
            Change::Keep
        );
    }

    #[test]
    fn reads_status_so_the_write_is_guarded_on_it() {
        let it = item(&[("status", "pending")]);
        AddStatusCategoryFields.transform(&it).unwrap();
        assert!(it.read_set().contains("status"));
    }
}
