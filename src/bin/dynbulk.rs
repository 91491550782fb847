//! The stock `dynbulk` binary: the whole command line ([`dynbulk::cli::run_cli`])
//! over the script migrations of the migrations folder (`./migrations`, or
//! `--migrations-dir`), with no Rust migrations of its own. From a checkout's
//! root that folder holds the reference migration
//! `20241220_add_status_category_fields.ts`. A team that writes its
//! migrations in Rust keeps them in its own crate (`dynbulk init --rust`),
//! whose `main` is this same one call over its own list.

use std::process::ExitCode;
use std::sync::Arc;

use dynbulk::prelude::*;

// mimalloc: every item is a few dozen small allocations made on one thread
// (scan, script) and freed on another (the workers), the pattern where the
// system allocator spends most (a quarter of the workers' CPU in the
// pipeline bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    dynbulk::cli::run_cli(Vec::<Arc<dyn Migration>>::new())
}
