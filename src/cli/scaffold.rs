//! Scaffolding a team's migrations: a script folder or a Rust crate.
//!
//! `dynbulk init [DIR]` ([`init_script`]) writes a script migrations folder:
//! `dynbulk.d.ts` (the `Migration` type, `DELETE`, `NumberValue` and the item
//! value types, so editors and `tsc` check the migrations), a `tsconfig.json`
//! that includes it, and the reference migration
//! `20241220_add_status_category_fields.ts` as the example (the very file in
//! `migrations/` at the root of dynbulk's repository). `new <description>`
//! there ([`create_script`]) writes a dated `.ts` file from a template.
//!
//! `dynbulk init --rust [DIR]` ([`init_rust`]) writes a crate whose `main`
//! calls [`crate::cli::run_cli`] over its own list of migrations: Cargo.toml
//! (dynbulk at this version, or a path dependency), `src/main.rs`,
//! `src/migrations/mod.rs` (the list, between registry markers), and the
//! reference migration `20241220_add_status_category_fields` with its unit
//! tests as the example. `examples/migrations` in dynbulk's repository is
//! exactly that output (a test holds them equal).
//!
//! `new <description>` ([`create`]) writes a dated migration file from a
//! template into such a crate's `src/migrations/` and registers it in
//! `mod.rs` between the markers.
//!
//! The reference migration's source lives next to this file
//! (`scaffold/20241220_add_status_category_fields.rs`): the scaffolder writes
//! it and the stock binary compiles it in, and it stays inside dynbulk's own
//! package (a subdirectory with its own Cargo.toml, like the example crate,
//! is left out of a published package).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::migration::valid_id;

/// Turns "Add TTL to sessions" into `add_ttl_to_sessions`.
pub fn slug(description: &str) -> String {
    let mut out = String::new();
    for c in description.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

/// The id of a migration created on `date` for `description`, and its slug.
fn new_id(description: &str, date: chrono::NaiveDate) -> Result<(String, String)> {
    let slug = slug(description);
    if slug.is_empty() {
        return Err(Error::Usage(format!(
            "the description {description:?} has no letters or digits to name the migration; pass words such as \"add ttl to sessions\""
        )));
    }
    let id = format!("{}_{}", date.format("%Y%m%d"), slug);
    if !valid_id(&id) {
        return Err(Error::Usage(format!(
            "{id:?} is not a valid migration id (YYYYMMDD_description)"
        )));
    }
    Ok((id, slug))
}

/// Whether `dir` is a Rust migrations folder (it has the `mod.rs` that lists
/// the migrations) rather than a script one.
pub fn is_rust_folder(dir: &Path) -> bool {
    dir.join("mod.rs").is_file()
}

/// Creates `<dir>/<date>_<slug>.rs` and registers it in `<dir>/mod.rs`.
/// Returns the new file's path.
///
/// # Errors
/// When the description gives no usable name, the migration exists already,
/// or `mod.rs` lacks the registry markers.
pub fn create(dir: &Path, description: &str, date: chrono::NaiveDate) -> Result<PathBuf> {
    let (id, slug) = new_id(description, date)?;
    let mod_rs = dir.join("mod.rs");
    let registry = std::fs::read_to_string(&mod_rs).map_err(|e| {
        Error::io(
            format!(
                "reading {} (run `new` from the root of your migrations crate, which `dynbulk init --rust` \
                 creates, or pass --dir to its migrations folder)",
                mod_rs.display()
            ),
            e,
        )
    })?;
    let file = dir.join(format!("{id}.rs"));
    if file.exists() || registry.contains(&format!("m{id}")) {
        return Err(Error::Usage(format!(
            "migration {id} already exists in {}",
            dir.display()
        )));
    }
    let module = format!("m{id}");
    let ty = type_name(&slug);
    let registry = insert_before(
        &registry,
        "// dynbulk:modules:end",
        &format!("#[path = \"{id}.rs\"]\npub mod {module};"),
        &mod_rs,
    )?;
    let registry = insert_before(
        &registry,
        "// dynbulk:registry:end",
        &format!("Arc::new({module}::{ty}),"),
        &mod_rs,
    )?;
    let text = TEMPLATE
        .replace("{ID}", &id)
        .replace("{TYPE}", &ty)
        .replace("{DESCRIPTION}", description.trim());
    std::fs::write(&file, text).map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
    std::fs::write(&mod_rs, registry)
        .map_err(|e| Error::io(format!("writing {}", mod_rs.display()), e))?;
    Ok(file)
}

/// Inserts `insert` (lines, without indentation) before the line whose
/// trimmed text is `marker`, indented as that line is.
fn insert_before(text: &str, marker: &str, insert: &str, path: &Path) -> Result<String> {
    let mut at = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == marker {
            at = Some((offset, &line[..line.len() - line.trim_start().len()]));
            break;
        }
        offset += line.len();
    }
    let (at, indent) = at.ok_or_else(|| {
        Error::Usage(format!(
            "{} has no `{marker}` marker; restore it so new migrations can be registered",
            path.display(),
        ))
    })?;
    let lines: String = insert.lines().map(|l| format!("{indent}{l}\n")).collect();
    Ok(format!("{}{}{}", &text[..at], lines, &text[at..]))
}

fn type_name(slug: &str) -> String {
    let mut out: String = slug
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'M');
    }
    out
}

/// A new migration: keeps every item until its author writes the transform.
const TEMPLATE: &str = r#"//! {DESCRIPTION}
//!
//! Transforms must be idempotent: run on their own output, they change nothing.

use dynbulk::prelude::*;

/// {DESCRIPTION}
pub struct {TYPE};

impl Migration for {TYPE} {
    fn id(&self) -> &'static str {
        "{ID}"
    }

    fn description(&self) -> &'static str {
        "{DESCRIPTION}"
    }

    fn table(&self) -> Option<&'static str> {
        // The table this migration targets; `--table` overrides it.
        None
    }

    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        // Every attribute read through `item` guards the write against
        // concurrent application updates. Typed access: `item.parse::<T>()`.
        let _ = item;
        Ok(Change::Keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_item_is_kept() {
        let item = Item::new(Attrs::new());
        assert_eq!({TYPE}.transform(&item).unwrap(), Change::Keep);
    }
}
"#;

/// What `dynbulk init --rust` writes, besides the example migration.
const CRATE_MANIFEST: &str = r#"[package]
name = "{NAME}"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
# The engine and its whole command line: `cargo run -- --help`.
dynbulk = {DYNBULK}

# The AWS SDK is large: debug builds leave out its debug info.
[profile.dev.package."*"]
debug = false
"#;

const CRATE_GITIGNORE: &str = "/target\n";

const CRATE_MAIN: &str = r#"//! This team's DynamoDB migrations, run with dynbulk's whole command line:
//!
//! ```text
//! cargo run -- list                          the migrations in src/migrations
//! cargo run -- run --dry-run                 what every pending one would change
//! cargo run -- run --segments 16             apply every pending migration
//! cargo run -- status                        what ran on each table, when, by whom
//! cargo run -- new "backfill order totals"   a new migration file, dated today
//! ```

mod migrations;

fn main() -> std::process::ExitCode {
    dynbulk::cli::run_cli(migrations::Migrations)
}
"#;

const CRATE_MIGRATIONS: &str = r#"//! The migrations of this crate, one file each, named
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
"#;

/// The reference migration, written as the new crate's example.
const REFERENCE_MIGRATION: (&str, &str) = (
    "20241220_add_status_category_fields.rs",
    include_str!("scaffold/20241220_add_status_category_fields.rs"),
);

/// What `dynbulk init` writes into a script migrations folder.
const SCRIPT_FILES: [(&str, &str); 3] = [
    ("dynbulk.d.ts", include_str!("scaffold/dynbulk.d.ts")),
    ("tsconfig.json", include_str!("scaffold/tsconfig.json")),
    (
        "20241220_add_status_category_fields.ts",
        include_str!("../../migrations/20241220_add_status_category_fields.ts"),
    ),
];

/// A new script migration: leaves every item as it is until its author
/// writes the transform.
const SCRIPT_TEMPLATE: &str = include_str!("scaffold/template.ts");

/// Writes the script flavour's files into `dir` (created if missing; it may
/// hold other files, such as migrations ported from another runner) and
/// returns them, in order.
///
/// # Errors
/// When one of the files to write exists already (nothing is written then),
/// or a write fails.
pub fn init_script(dir: &Path) -> Result<Vec<PathBuf>> {
    refuse_existing(SCRIPT_FILES.iter().map(|(f, _)| dir.join(f)))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut written = Vec::new();
    for (file, text) in SCRIPT_FILES {
        let path = dir.join(file);
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        written.push(path);
    }
    Ok(written)
}

/// Creates `<dir>/<date>_<slug>.ts` from the template. Returns its path.
///
/// # Errors
/// When the description gives no usable name, `dir` does not exist, or a
/// migration of that id (`.ts` or `.js`) exists already.
pub fn create_script(dir: &Path, description: &str, date: chrono::NaiveDate) -> Result<PathBuf> {
    let (id, _) = new_id(description, date)?;
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "no migrations folder at {}: run `dynbulk init` to create one, or pass --dir",
            dir.display()
        )));
    }
    let file = dir.join(format!("{id}.ts"));
    for existing in [file.clone(), dir.join(format!("{id}.js"))] {
        if existing.exists() {
            return Err(Error::Usage(format!(
                "migration {id} already exists: {}",
                existing.display()
            )));
        }
    }
    let description = description.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = SCRIPT_TEMPLATE
        .replace("{ID}", &id)
        .replace(
            "\"{DESCRIPTION}\"",
            &serde_json::to_string(&description).expect("a string serializes"),
        )
        .replace("{DESCRIPTION}", &description);
    std::fs::write(&file, text).map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
    Ok(file)
}

/// Refuses to go on when any of `files` exists: `init` only creates files.
fn refuse_existing(files: impl IntoIterator<Item = PathBuf>) -> Result<()> {
    let existing: Vec<String> = files
        .into_iter()
        .filter(|f| f.exists())
        .map(|f| f.display().to_string())
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{} already exists; `init` only creates new files (pick another directory)",
        existing.join(", ")
    )))
}

/// Which dynbulk the new crate depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// This version, from the registry.
    Released,
    /// The dynbulk source tree at this path (absolute, or relative to the
    /// current directory).
    Path(PathBuf),
}

/// Creates a migrations crate in `dir` (created if missing) and returns the
/// files written, in order. A relative [`Dependency::Path`] is rewritten
/// relative to the new crate, as Cargo reads it.
///
/// # Errors
/// When one of the files to write exists already (nothing is written then),
/// the dependency path holds no Cargo.toml, or a write fails.
pub fn init_rust(dir: &Path, dynbulk: &Dependency) -> Result<Vec<PathBuf>> {
    let migrations = Path::new("src").join("migrations");
    let files = [
        (PathBuf::from("Cargo.toml"), None),
        (PathBuf::from(".gitignore"), Some(CRATE_GITIGNORE)),
        (Path::new("src").join("main.rs"), Some(CRATE_MAIN)),
        (migrations.join("mod.rs"), Some(CRATE_MIGRATIONS)),
        (
            migrations.join(REFERENCE_MIGRATION.0),
            Some(REFERENCE_MIGRATION.1),
        ),
    ];
    refuse_existing(files.iter().map(|(f, _)| dir.join(f)))?;
    if let Dependency::Path(p) = dynbulk {
        if !p.join("Cargo.toml").is_file() {
            return Err(Error::Usage(format!(
                "--dynbulk-path {}: no Cargo.toml there; pass the root of a dynbulk checkout",
                p.display()
            )));
        }
    }
    let mkdir = |d: &Path| {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("creating {}", d.display()), e))
    };
    mkdir(&dir.join(&migrations))?;
    let manifest = CRATE_MANIFEST
        .replace("{NAME}", &package_name(dir)?)
        .replace("{DYNBULK}", &dependency(dir, dynbulk)?);
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text.unwrap_or(&manifest))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        written.push(path);
    }
    Ok(written)
}

/// The package name for a crate in `dir`: its folder name, as Cargo accepts it.
fn package_name(dir: &Path) -> Result<String> {
    let abs = std::path::absolute(dir)
        .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
    let folder = abs
        .components()
        .rev()
        .find_map(|c| match c {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    let name = slug(&folder).replace('_', "-");
    Ok(match name.chars().next() {
        None => "migrations".to_owned(),
        Some(c) if c.is_ascii_digit() => format!("migrations-{name}"),
        Some(_) => name,
    })
}

/// The dependency line's value for dynbulk, in TOML.
fn dependency(crate_dir: &Path, dynbulk: &Dependency) -> Result<String> {
    let path = match dynbulk {
        Dependency::Released => return Ok(format!("\"{}\"", env!("CARGO_PKG_VERSION"))),
        Dependency::Path(p) if p.is_absolute() => p.clone(),
        Dependency::Path(p) => {
            let canonical = |d: &Path| {
                d.canonicalize()
                    .map_err(|e| Error::io(format!("resolving {}", d.display()), e))
            };
            relative(&canonical(p)?, &canonical(crate_dir)?)
        }
    };
    let text = path
        .to_string_lossy()
        .replace('\\', "/")
        .replace('"', "\\\"");
    Ok(format!("{{ path = \"{text}\" }}"))
}

/// `target` relative to `base` (both absolute and canonical).
fn relative(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_snake_case() {
        assert_eq!(slug("Add TTL to sessions!"), "add_ttl_to_sessions");
        assert_eq!(slug("  --  "), "");
    }

    #[test]
    fn new_creates_a_file_and_registers_it_in_a_scaffolded_crate() {
        let dir = tempfile::tempdir().unwrap();
        init_rust(dir.path(), &Dependency::Released).unwrap();
        let migrations = dir.path().join("src").join("migrations");
        let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        let file = create(&migrations, "Backfill order totals", date).unwrap();
        assert_eq!(
            file.file_name().unwrap(),
            "20261124_backfill_order_totals.rs"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"20261124_backfill_order_totals\""));
        assert!(text.contains("pub struct BackfillOrderTotals;"));
        assert!(text.contains("use dynbulk::prelude::*;"));
        let reg = std::fs::read_to_string(migrations.join("mod.rs")).unwrap();
        assert!(reg.contains("pub mod m20241220_add_status_category_fields;\n#[path = \"20261124_backfill_order_totals.rs\"]\npub mod m20261124_backfill_order_totals;\n// dynbulk:modules:end"), "{reg}");
        assert!(reg.contains("            Arc::new(m20241220_add_status_category_fields::AddStatusCategoryFields),\n            Arc::new(m20261124_backfill_order_totals::BackfillOrderTotals),\n            // dynbulk:registry:end"), "{reg}");
        let again = create(&migrations, "Backfill order totals", date).unwrap_err();
        assert!(again.to_string().contains("already exists"));
    }

    #[test]
    fn a_registry_without_markers_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mod.rs"), "// no markers\n").unwrap();
        let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        let err = create(dir.path(), "x", date).unwrap_err().to_string();
        assert!(err.contains("dynbulk:modules:end"), "{err}");
        assert!(!dir.path().join("20261124_x.rs").exists());
    }

    #[test]
    fn init_writes_a_crate_depending_on_this_version() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("Team Migrations");
        let files = init_rust(&dir, &Dependency::Released).unwrap();
        assert_eq!(files.len(), 5);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("name = \"team-migrations\"\n"),
            "{manifest}"
        );
        assert!(
            manifest.contains(&format!("dynbulk = \"{}\"\n", env!("CARGO_PKG_VERSION"))),
            "{manifest}"
        );
        let example = dir
            .join("src")
            .join("migrations")
            .join("20241220_add_status_category_fields.rs");
        assert_eq!(
            std::fs::read_to_string(example).unwrap(),
            REFERENCE_MIGRATION.1
        );
        // A second init into the same place writes nothing.
        std::fs::write(dir.join("src").join("main.rs"), "// mine\n").unwrap();
        let err = init_rust(&dir, &Dependency::Released).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("src").join("main.rs")).unwrap(),
            "// mine\n"
        );
    }

    #[test]
    fn a_path_dependency_is_written_relative_to_the_new_crate() {
        let root = tempfile::tempdir().unwrap();
        let checkout = root.path().join("dynbulk");
        std::fs::create_dir_all(&checkout).unwrap();
        std::fs::write(checkout.join("Cargo.toml"), "").unwrap();
        let dir = root.path().join("repo").join("migrations");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            dependency(&dir, &Dependency::Path(checkout.clone())).unwrap(),
            format!("{{ path = \"{}\" }}", checkout.display())
        );
        assert_eq!(
            relative(
                &checkout.canonicalize().unwrap(),
                &dir.canonicalize().unwrap()
            ),
            Path::new("../../dynbulk")
        );
        let missing = init_rust(
            &root.path().join("other"),
            &Dependency::Path(root.path().join("nowhere")),
        )
        .unwrap_err();
        assert!(missing.to_string().contains("no Cargo.toml"), "{missing}");
    }

    #[test]
    fn package_names_come_from_the_folder() {
        assert_eq!(
            package_name(Path::new("/x/Team Migrations")).unwrap(),
            "team-migrations"
        );
        assert_eq!(
            package_name(Path::new("/x/2025")).unwrap(),
            "migrations-2025"
        );
        assert_eq!(package_name(Path::new("/x/--")).unwrap(), "migrations");
    }
}
