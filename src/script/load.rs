//! Finding and loading the script migrations of a folder: every
//! `YYYYMMDD_description.ts|.js` file is stripped (TypeScript), compiled and
//! evaluated once at start-up in a loader engine, and its migration object
//! read: id (must match the file name), description, table, scan options,
//! transform. Any problem is an error naming the file (and line) before any
//! command touches a table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rquickjs::{Array, Object, Value};

use super::engine::{Engine, Entry, Limits, Modules};
use super::pool::Pool;
use super::values::from_js;
use super::ScriptMigration;
use crate::migration::{valid_id, ScanOptions};

/// Where to look for script migrations.
#[derive(Debug, Clone, PartialEq)]
pub enum Folder {
    /// `./migrations`, the default: absent means no script migrations.
    Default(PathBuf),
    /// Named by `--migrations-dir` or `DYNBULK_MIGRATIONS_DIR`: must exist.
    Given(PathBuf),
}

/// A migration file name's id: `20241220_add_x.ts` -> `20241220_add_x`;
/// `None` for files that are not migrations (helpers, `.d.ts`).
pub fn id_of(file_name: &str) -> Option<&str> {
    if file_name.ends_with(".d.ts") {
        return None;
    }
    let stem = file_name
        .strip_suffix(".ts")
        .or_else(|| file_name.strip_suffix(".js"))?;
    // A file is a migration when it starts with a date; helpers do not.
    let date = stem.get(..9)?;
    (date.as_bytes()[..8].iter().all(u8::is_ascii_digit) && date.ends_with('_')).then_some(stem)
}

/// Loads the script migrations of `folder`, in id order.
///
/// # Errors
/// A missing folder that was named explicitly; a file whose name is not a
/// valid id, whose code does not compile, strip or evaluate (with its
/// file:line), or whose export is not a migration.
pub fn load(folder: &Folder, limits: Limits) -> Result<Vec<ScriptMigration>, String> {
    let dir = match folder {
        Folder::Default(d) if !d.is_dir() => return Ok(Vec::new()),
        Folder::Default(d) => d,
        Folder::Given(d) if !d.is_dir() => {
            return Err(format!(
            "the migrations folder {} does not exist (--migrations-dir / DYNBULK_MIGRATIONS_DIR)",
            d.display()
        ))
        }
        Folder::Given(d) => d,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the migrations folder {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = id_of(&name) {
            if !valid_id(id) {
                return Err(format!(
                    "{}: {id:?} is not YYYYMMDD_description (a real date, then lowercase letters, digits and underscores)",
                    dir.join(&name).display()
                ));
            }
            files.push((id.to_owned(), name));
        }
    }
    files.sort();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let root = dir
        .canonicalize()
        .map_err(|e| format!("cannot read the migrations folder {}: {e}", dir.display()))?;
    let modules = Modules {
        dir: dir.clone(),
        root,
        sources: Arc::new(Mutex::new(HashMap::new())),
        read_files: true,
    };
    let now_ms = (chrono::Utc::now().timestamp_millis()) as f64;
    let mut engine = Engine::new(modules.clone(), limits, now_ms)?;
    let mut specs = Vec::new();
    for (id, name) in &files {
        let module = modules.name_of(Path::new(name));
        specs.push(read_spec(&mut engine, id, &module)?);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = Arc::new(Pool::new(modules, limits, now_ms, threads));
    Ok(specs
        .into_iter()
        .map(|spec| ScriptMigration::new(spec, pool.clone()))
        .collect())
}

/// What a script migration declares.
#[derive(Debug, Clone)]
pub struct Spec {
    /// From the file name.
    pub id: String,
    /// The module and export holding the migration object.
    pub entry: Entry,
    /// `description`.
    pub description: String,
    /// `table`, if any.
    pub table: Option<String>,
    /// `scan`.
    pub scan: ScanOptions,
}

fn read_spec(engine: &mut Engine, id: &str, module: &str) -> Result<Spec, String> {
    let named = format!("migration_{id}");
    // Which export: the default one, else the old runner's named one.
    let mut entry = Entry {
        module: module.to_owned(),
        export: "default".into(),
    };
    if let Err(e) = engine.load(&entry) {
        if !e.contains("has no export named default") {
            return Err(e);
        }
        entry.export = named.clone();
        engine.load(&entry).map_err(|_| {
            format!("{module} exports no migration: `export default {{ ... }}` (or the old runner's `export const {named} = {{ ... }}`)")
        })?;
    }
    engine
        .with_migration(&entry, |_ctx, m, shapes| -> Result<Spec, String> {
            let bad = |what: &str| format!("{module}: the migration's {what}");
            let get = |k: &str| m.get::<_, Value>(k).map_err(|e| bad(&format!("{k}: {e}")));
            let string = |k: &str| -> Result<Option<String>, String> {
                let v = get(k)?;
                if v.is_undefined() {
                    return Ok(None);
                }
                v.as_string()
                    .and_then(|s| s.to_string().ok())
                    .map(Some)
                    .ok_or_else(|| bad(&format!("{k} must be a string")))
            };
            if let Some(declared) = string("id")? {
                if declared != id {
                    return Err(format!(
                        "{module}: the migration declares id {declared:?} but its file name says {id:?}; they must match"
                    ));
                }
            }
            let description = string("description")?.ok_or_else(|| bad("description is missing"))?;
            let table = string("table")?;
            if !get("transform")?.is_function() {
                return Err(bad("transform must be a function: transform(item, ctx) { ... }"));
            }
            let scan = get("scan")?;
            let scan = match scan.as_object() {
                None if scan.is_undefined() => ScanOptions::default(),
                None => return Err(bad("scan must be an object")),
                Some(o) => scan_options(o, shapes).map_err(|e| bad(&format!("scan.{e}")))?,
            };
            Ok(Spec {
                id: id.to_owned(),
                entry: entry.clone(),
                description,
                table,
                scan,
            })
        })?
}

fn scan_options<'js>(
    o: &Object<'js>,
    shapes: &super::values::Shapes<'js>,
) -> Result<ScanOptions, String> {
    let mut options = ScanOptions::default();
    let projection: Value = o.get("projection").map_err(|e| e.to_string())?;
    if !projection.is_undefined() {
        let array: Array = projection
            .into_array()
            .ok_or("projection must be an array of attribute names")?;
        let names = array
            .iter::<String>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "projection must be an array of attribute names")?;
        options.projection = Some(names);
    }
    let filter: Option<String> = o.get("filter").map_err(|_| "filter must be a string")?;
    options.filter = filter;
    let names: Option<Object> = o.get("names").map_err(|_| "names must be an object")?;
    if let Some(names) = names {
        for pair in names.props::<String, String>() {
            let (k, v) = pair.map_err(|_| "names must map placeholders to attribute names")?;
            options.filter_names.insert(k, v);
        }
    }
    let values: Option<Object> = o.get("values").map_err(|_| "values must be an object")?;
    if let Some(values) = values {
        for pair in values.props::<String, Value>() {
            let (k, v) = pair.map_err(|e| format!("values: {e}"))?;
            let mut path = format!("values[{k:?}]");
            let value = from_js(shapes, &v, &mut path)?;
            options.filter_values.insert(k, value);
        }
    }
    let consistent: Option<bool> = o
        .get("consistentRead")
        .map_err(|_| "consistentRead must be a boolean")?;
    options.consistent_read = consistent.unwrap_or(false);
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_files_are_told_from_helpers_by_their_date() {
        assert_eq!(id_of("20241220_add_x.ts"), Some("20241220_add_x"));
        assert_eq!(id_of("20241220_add_x.js"), Some("20241220_add_x"));
        assert_eq!(id_of("20241220_Bad.ts"), Some("20241220_Bad"));
        assert_eq!(id_of("helpers.ts"), None);
        assert_eq!(id_of("dynbulk.d.ts"), None);
        assert_eq!(id_of("20241220_x.d.ts"), None);
        assert_eq!(id_of("README.md"), None);
    }
}
