//! The migrations compiled into this build, one file each, named
//! `YYYYMMDD_description.rs`. `dynbulk new <description>` adds a file and
//! registers it between the markers below; keep the markers.

use std::sync::Arc;

use crate::migration::Migration;

// dynbulk:modules:begin
#[path = "20241220_add_status_category_fields.rs"]
pub mod m20241220_add_status_category_fields;
// dynbulk:modules:end

/// Every registered migration, in id order.
pub fn all() -> Vec<Arc<dyn Migration>> {
    let mut all: Vec<Arc<dyn Migration>> = vec![
        // dynbulk:registry:begin
        Arc::new(m20241220_add_status_category_fields::AddStatusCategoryFields),
        // dynbulk:registry:end
    ];
    all.sort_by_key(|m| m.id());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_unique() {
        let all = all();
        for m in &all {
            assert!(crate::migration::valid_id(m.id()), "bad id {}", m.id());
        }
        let mut ids: Vec<_> = all.iter().map(|m| m.id()).collect();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "duplicate migration ids");
    }
}
