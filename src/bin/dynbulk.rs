//! The stock `dynbulk` binary: the whole command line ([`dynbulk::cli::run_cli`])
//! over the migrations built into it, which for now is the reference migration
//! `20241220_add_status_category_fields` (the one `dynbulk init --rust`
//! scaffolds, and examples/migrations holds). A team's migrations live in its
//! own crate, whose `main` is this same one call over its own list.

use std::process::ExitCode;
use std::sync::Arc;

use dynbulk::prelude::*;

#[path = "../cli/scaffold/20241220_add_status_category_fields.rs"]
mod m20241220_add_status_category_fields;

/// The migrations built into the stock binary.
struct BuiltIn;

impl Migrator for BuiltIn {
    fn migrations(&self) -> Vec<Arc<dyn Migration>> {
        vec![Arc::new(
            m20241220_add_status_category_fields::AddStatusCategoryFields,
        )]
    }
}

fn main() -> ExitCode {
    dynbulk::cli::run_cli(BuiltIn)
}
