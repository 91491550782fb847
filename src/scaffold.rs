//! `dynbulk new <description>`: writes a dated migration file from a template
//! and registers it in `migrations/mod.rs` between the registry markers.

use std::path::{Path, PathBuf};

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

/// Creates `<dir>/<date>_<slug>.rs` and registers it in `<dir>/mod.rs`.
/// Returns the new file's path.
///
/// # Errors
/// When the description gives no usable name, the migration exists already,
/// or `mod.rs` lacks the registry markers.
pub fn create(dir: &Path, description: &str, date: chrono::NaiveDate) -> Result<PathBuf> {
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
    let mod_rs = dir.join("mod.rs");
    let registry = std::fs::read_to_string(&mod_rs).map_err(|e| {
        Error::io(
            format!(
                "reading {} (run `dynbulk new` from the dynbulk source tree, or pass --dir to the migrations folder)",
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
        &format!("#[path = \"{id}.rs\"]\npub mod {module};\n"),
        &mod_rs,
    )?;
    let registry = insert_before(
        &registry,
        "        // dynbulk:registry:end",
        &format!("        Arc::new({module}::{ty}),\n"),
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

fn insert_before(text: &str, marker: &str, insert: &str, path: &Path) -> Result<String> {
    let at = text.find(marker).ok_or_else(|| {
        Error::Usage(format!(
            "{} has no `{}` marker; restore it so new migrations can be registered",
            path.display(),
            marker.trim()
        ))
    })?;
    Ok(format!("{}{}{}", &text[..at], insert, &text[at..]))
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

const TEMPLATE: &str = r#"//! {DESCRIPTION}
//!
//! Transforms must be idempotent: run on their own output, they change nothing.

use crate::migration::{Change, Item, Migration, TransformError, Update};

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
    fn transform_is_idempotent() {
        let item = Item::new(Default::default());
        let change = {TYPE}.transform(&item).unwrap();
        assert!(matches!(change, Change::Keep | Change::Update(_)));
        let _ = Update::new();
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_snake_case() {
        assert_eq!(slug("Add TTL to sessions!"), "add_ttl_to_sessions");
        assert_eq!(slug("  --  "), "");
    }

    #[test]
    fn creates_file_and_registers_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mod.rs"),
            "// dynbulk:modules:begin\n// dynbulk:modules:end\nvec![\n        // dynbulk:registry:begin\n        // dynbulk:registry:end\n];\n",
        )
        .unwrap();
        let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        let file = create(dir.path(), "Backfill order totals", date).unwrap();
        assert_eq!(
            file.file_name().unwrap(),
            "20261124_backfill_order_totals.rs"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"20261124_backfill_order_totals\""));
        assert!(text.contains("pub struct BackfillOrderTotals;"));
        let reg = std::fs::read_to_string(dir.path().join("mod.rs")).unwrap();
        assert!(reg.contains("#[path = \"20261124_backfill_order_totals.rs\"]\npub mod m20261124_backfill_order_totals;\n// dynbulk:modules:end"));
        assert!(reg.contains("Arc::new(m20261124_backfill_order_totals::BackfillOrderTotals),\n        // dynbulk:registry:end"));
        let again = create(dir.path(), "Backfill order totals", date).unwrap_err();
        assert!(again.to_string().contains("already exists"));
    }
}
