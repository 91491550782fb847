//! Migrations written in TypeScript or JavaScript, run by the stock binary.
//!
//! A migrations folder (`--migrations-dir`, `DYNBULK_MIGRATIONS_DIR`,
//! `./migrations`) holds `YYYYMMDD_description.ts|.js` ES modules whose
//! default export (or the old runner's `migration_YYYYMMDD_description`) is
//! `{ id?, description, table?, scan?, transform(item, ctx) }`. They are
//! loaded at start-up ([`load::load`]), listed beside the embedding crate's
//! Rust migrations and run by the same engine: a [`ScriptMigration`] is a
//! [`Migration`] whose transform runs on the script threads ([`pool`]).
//!
//! - `strip`: TypeScript -> JavaScript, positions kept.
//! - `engine`: one QuickJS engine (limits, loader, prelude, the transform call).
//! - `values`: attribute values <-> DocumentClient-shaped JS values, lossless numbers.
//! - `guard`: a transform's reads (the write's guard) and its decision.
//! - `pool`: the threads, one engine each.
//! - `load`: the folder's files -> migrations.
//!
//! The sandbox: QuickJS's core has no file, network or process API and none
//! is added; `Date.now()`/`new Date()` return the time the process loaded its
//! migrations (the same for every item), `Math.random()` throws (a transform
//! must decide the same way each time it sees an item: it runs again after a
//! write conflict). `console.log` and `ctx.log` go to dynbulk's log (target
//! `dynbulk::script`), at most 20 lines a second per script thread.

use futures::future::BoxFuture;
use std::sync::Arc;

use crate::migration::{
    Attrs, Change, Item, Migration, PageTransform, RunFacts, ScanOptions, TransformError,
};

mod engine;
mod guard;
pub mod load;
mod pool;
mod strip;
mod values;

pub use engine::Limits;
pub use load::Folder;

/// A migration loaded from a `.ts`/`.js` file.
pub struct ScriptMigration {
    // Leaked once per migration file and process: `Migration` hands out
    // `&'static str`, and a process loads a handful of migrations.
    id: &'static str,
    description: &'static str,
    table: Option<&'static str>,
    spec: load::Spec,
    pool: Arc<pool::Pool>,
}

impl ScriptMigration {
    fn new(spec: load::Spec, pool: Arc<pool::Pool>) -> Self {
        ScriptMigration {
            id: Box::leak(spec.id.clone().into_boxed_str()),
            description: Box::leak(spec.description.clone().into_boxed_str()),
            table: spec.table.clone().map(|t| &*Box::leak(t.into_boxed_str())),
            spec,
            pool,
        }
    }

    /// The file the migration comes from.
    pub fn file(&self) -> &str {
        &self.spec.entry.module
    }
}

impl Migration for ScriptMigration {
    fn id(&self) -> &'static str {
        self.id
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn table(&self) -> Option<&'static str> {
        self.table
    }
    fn scan_options(&self) -> ScanOptions {
        self.spec.scan.clone()
    }
    /// For callers outside a run (the run itself transforms whole pages on
    /// the script threads): the item goes to a script thread and this thread
    /// waits for it.
    fn transform(&self, item: &Item) -> Result<Change, TransformError> {
        let facts = RunFacts {
            table: self.table.unwrap_or_default().to_owned(),
            dry_run: true,
            keys: Vec::new(),
        };
        let mut out = futures::executor::block_on(self.pool.transform(
            self.spec.entry.clone(),
            self.spec.id.clone(),
            facts,
            vec![item.scanned().clone()],
        ));
        let (done, change) = out.pop().unwrap_or_else(|| {
            (
                Item::new(Attrs::new()),
                Err(TransformError::new("no result")),
            )
        });
        for name in done.read_set() {
            let _ = item.get(&name);
        }
        change
    }
    fn page_transform(&self) -> Option<&dyn PageTransform> {
        Some(self)
    }
}

impl PageTransform for ScriptMigration {
    fn transform_page(
        &self,
        run: &RunFacts,
        items: Vec<Attrs>,
    ) -> BoxFuture<'static, Vec<(Item, Result<Change, TransformError>)>> {
        let pool = self.pool.clone();
        let (entry, id, facts) = (self.spec.entry.clone(), self.spec.id.clone(), run.clone());
        Box::pin(async move { pool.transform(entry, id, facts, items).await })
    }
}

/// Loads the script migrations of `folder` as [`Migration`]s, in id order.
///
/// # Errors
/// See [`load::load`]: the message names the file (and line).
pub fn migrations(folder: &Folder, limits: Limits) -> Result<Vec<Arc<dyn Migration>>, String> {
    Ok(load::load(folder, limits)?
        .into_iter()
        .map(|m| Arc::new(m) as Arc<dyn Migration>)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::path::Path;

    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::AttributeValue as V;

    use super::engine::{Engine, Entry, Limits, Modules};
    use crate::migration::{Attrs, Change, Item, RunFacts, TransformError};

    const BIG: &str = "1.2345678901234567890123456789012345678";

    /// Transforms `items` with the default export of `source` in a fresh engine.
    fn transform(source: &str, items: Vec<Attrs>) -> Vec<(Item, Result<Change, TransformError>)> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("20250101_t.js"), source).unwrap();
        let modules = Modules {
            dir: dir.path().to_owned(),
            root: dir.path().canonicalize().unwrap(),
            sources: Default::default(),
            read_files: true,
        };
        let entry = Entry {
            module: modules.name_of(Path::new("20250101_t.js")),
            export: "default".into(),
        };
        let mut engine = Engine::new(modules, Limits::default(), 0.0).unwrap();
        let facts = RunFacts {
            table: "t".into(),
            dry_run: false,
            keys: vec!["pk".into()],
        };
        engine.transform_page(&entry, "20250101_t", &facts, items)
    }

    fn every_type() -> Attrs {
        HashMap::from([
            ("pk".to_string(), V::S("k".into())),
            ("s".to_string(), V::S("naïve 🚀".into())),
            ("empty".to_string(), V::S(String::new())),
            ("n".to_string(), V::N("12.50".into())),
            ("big".to_string(), V::N(BIG.into())),
            ("null".to_string(), V::Null(true)),
            ("bool".to_string(), V::Bool(false)),
            ("b".to_string(), V::B(Blob::new(vec![0u8, 255]))),
            ("ss".to_string(), V::Ss(vec!["a".into(), "b".into()])),
            ("ns".to_string(), V::Ns(vec!["1".into(), BIG.into()])),
            (
                "bs".to_string(),
                V::Bs(vec![Blob::new(vec![1u8]), Blob::new(vec![2u8])]),
            ),
            (
                "l".to_string(),
                V::L(vec![
                    V::N(BIG.into()),
                    V::Null(true),
                    V::L(vec![]),
                    V::B(Blob::new(vec![3u8])),
                ]),
            ),
            (
                "m".to_string(),
                V::M(HashMap::from([
                    (
                        "deep".to_string(),
                        V::M(HashMap::from([("x".to_string(), V::N("3".into()))])),
                    ),
                    ("empty".to_string(), V::M(HashMap::new())),
                    ("名前".to_string(), V::Ss(vec!["z".into()])),
                ])),
            ),
        ])
    }

    #[test]
    fn every_type_round_trips_through_js_and_only_copies_are_written() {
        let item = every_type();
        let out = transform(
            "export default { description: 'd', transform(item) { for (const k of Object.keys(item)) if (k !== 'pk') item['copy_' + k] = item[k]; } };",
            vec![item.clone()],
        );
        let (done, change) = &out[0];
        let Ok(Change::Update(update)) = change else {
            panic!("{change:?}")
        };
        assert!(update.remove.is_empty());
        assert_eq!(update.set.len(), item.len() - 1, "{update:?}");
        for (name, value) in &update.set {
            let original = &item[name.strip_prefix("copy_").expect("only copies are set")];
            assert!(
                crate::dynamo::value::same_value(original, value),
                "{name}: {value:?} vs {original:?}"
            );
        }
        assert_eq!(update.set["copy_big"], V::N(BIG.into()));
        assert_eq!(
            done.read_set(),
            item.keys().cloned().collect::<BTreeSet<_>>()
        );
    }

    #[test]
    fn absent_attributes_looked_up_are_reads_and_nested_changes_are_found() {
        let item = HashMap::from([
            ("pk".to_string(), V::S("k".into())),
            (
                "address".to_string(),
                V::M(HashMap::from([("city".to_string(), V::S("A".into()))])),
            ),
            ("other".to_string(), V::S("o".into())),
        ]);
        let out = transform(
            "export default { description: 'd', transform(item) { if ('holdUntil' in item || item.x !== undefined || item.toString === undefined) return; item.address.city = 'B'; } };",
            vec![item],
        );
        let (done, change) = &out[0];
        let Ok(Change::Update(update)) = change else {
            panic!("{change:?}")
        };
        assert_eq!(
            update.set["address"],
            V::M(HashMap::from([("city".to_string(), V::S("B".into()))]))
        );
        assert_eq!(update.set.len(), 1);
        assert_eq!(
            done.read_set(),
            BTreeSet::from(["address", "holdUntil", "x"].map(String::from)),
            "an Object.prototype member is not an attribute read"
        );
    }

    #[test]
    fn the_clock_is_frozen_and_randomness_refused() {
        let item = HashMap::from([("pk".to_string(), V::S("k".into()))]);
        let out = transform(
            "export default { description: 'd', transform(item) { item.t = Date.now() + new Date().getTime(); if (item.pk === 'r') Math.random(); } };",
            vec![item, HashMap::from([("pk".to_string(), V::S("r".into()))])],
        );
        let Ok(Change::Update(update)) = &out[0].1 else {
            panic!("{:?}", out[0].1)
        };
        assert_eq!(
            update.set["t"],
            V::N("0".into()),
            "the engine's clock was set to 0"
        );
        let e = out[1].1.as_ref().unwrap_err();
        assert!(
            e.0.contains("Math.random") && e.0.contains("20250101_t.js:1"),
            "{e}"
        );
    }

    #[test]
    fn an_item_kept_by_the_script_cannot_be_used_for_a_later_item() {
        let item = |pk: &str| HashMap::from([("pk".to_string(), V::S(pk.into()))]);
        let out = transform(
            "let kept; export default { description: 'd', transform(item) { \
               if (kept === undefined) { kept = item; item.a = 1; return; } \
               item.b = kept.pk; } };",
            vec![item("first"), item("second"), item("third")],
        );
        assert!(matches!(&out[0].1, Ok(Change::Update(_))), "{:?}", out[0].1);
        for (_, later) in &out[1..] {
            let e = later.as_ref().unwrap_err();
            assert!(
                e.0.contains("transform has returned") && e.0.contains("20250101_t.js:1"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_attribute_named_proto_is_an_attribute() {
        let item = HashMap::from([
            ("pk".to_string(), V::S("k".into())),
            ("__proto__".to_string(), V::S("x".into())),
            (
                "m".to_string(),
                V::M(HashMap::from([("__proto__".to_string(), V::S("z".into()))])),
            ),
        ]);
        let out = transform(
            "export default { description: 'd', transform(item) { item.seen = item['__proto__']; item.m.y = 1; } };",
            vec![item],
        );
        let Ok(Change::Update(update)) = &out[0].1 else {
            panic!("{:?}", out[0].1)
        };
        assert_eq!(update.set["seen"], V::S("x".into()));
        assert_eq!(
            update.set["m"],
            V::M(HashMap::from([
                ("__proto__".to_string(), V::S("z".into())),
                ("y".to_string(), V::N("1".into())),
            ]))
        );
        assert!(!update.set.contains_key("__proto__"), "{update:?}");
    }
}
