//! The migrations of this crate, one file each, named
//! `YYYYMMDD_description.rs`; they run in id order. `cargo run -- new
//! <description>` adds a file dated today and registers it between the
//! markers below; keep the markers.

use std::sync::Arc;

use dynbulk::prelude::*;

// dynbulk:modules:begin
#[path = "20241220_add_status_category_fields.rs"]
pub mod m20241220_add_status_category_fields;
// dynbulk:modules:end

/// Every migration of this crate; `main` hands them to dynbulk's command line,
/// which checks their ids (well formed, unique) before anything runs.
pub struct Migrations;

impl Migrator for Migrations {
    fn migrations(&self) -> Vec<Arc<dyn Migration>> {
        vec![
            // dynbulk:registry:begin
            Arc::new(m20241220_add_status_category_fields::AddStatusCategoryFields),
            // dynbulk:registry:end
        ]
    }
}
