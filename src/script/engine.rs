//! One QuickJS engine: a runtime with its memory, stack and time limits, the
//! prelude, the module loader (the migrations folder only, plus the built-in
//! `"dynbulk"` module) and the call of a migration's transform on items.
//!
//! QuickJS's core has no file, network, process or timer API, and none is
//! added: a script can compute, log through dynbulk and nothing else. The
//! loader reads files only while migrations are loaded at start-up (from the
//! migrations folder); the worker threads' engines get the same sources from
//! memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rquickjs::context::EvalOptions;
use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::module::Declared;
use rquickjs::{Context, Ctx, Function, Module, Object, Persistent, Runtime, Value};

use super::guard;
use super::values::Shapes;
use crate::migration::{Attrs, Change, Item, RunFacts, TransformError};

/// The name of the built-in module.
pub const BUILTIN: &str = "dynbulk";

const BUILTIN_SOURCE: &str = "const d = globalThis[Symbol.for(\"dynbulk\")];\n\
export const DELETE = d.DELETE;\n\
export const NumberValue = d.NumberValue;\n";

const PRELUDE: &str = include_str!("prelude.js");

/// Per-item limits of a script transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// How long one transform call may run.
    pub timeout: Duration,
    /// The engine's memory limit, in bytes.
    pub memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(1),
            memory: 64 << 20,
        }
    }
}

/// Where modules come from: the migrations folder, read at load time into
/// `sources` (module name -> JavaScript, types stripped).
#[derive(Debug, Clone)]
pub struct Modules {
    /// The migrations folder as the user named it (module names start with it).
    pub dir: PathBuf,
    /// Its canonical path: nothing outside it is imported.
    pub root: PathBuf,
    /// Module name -> stripped source.
    pub sources: Arc<Mutex<HashMap<String, String>>>,
    /// True while loading at start-up: files may be read (and stripped).
    pub read_files: bool,
}

impl Modules {
    /// The module name of a file in the migrations folder.
    pub fn name_of(&self, file: &Path) -> String {
        normalize(&self.dir.join(file))
            .to_string_lossy()
            .into_owned()
    }
}

/// `a/./b/../c` -> `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

struct ScriptResolver(Modules);

impl Resolver for ScriptResolver {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        if name == BUILTIN {
            return Ok(BUILTIN.into());
        }
        let refuse = |why: &str| {
            Err(rquickjs::Error::new_resolving_message(
                base,
                name,
                format!("{base} imports {name:?}: {why}"),
            ))
        };
        let joined = if name.starts_with("./") || name.starts_with("../") {
            normalize(&Path::new(base).parent().unwrap_or(Path::new("")).join(name))
        } else if base.is_empty() {
            // dynbulk itself imports a migration file by its module name.
            normalize(Path::new(name))
        } else {
            return refuse(
                "a migration can import \"dynbulk\" and relative .ts/.js files of the migrations folder, nothing else",
            );
        };
        let candidates: Vec<PathBuf> = match joined.extension().and_then(|e| e.to_str()) {
            Some("ts") => vec![joined.clone()],
            // TypeScript's own convention: `./helper.js` names `helper.ts`.
            Some("js") => vec![joined.clone(), joined.with_extension("ts")],
            _ => vec![
                PathBuf::from(format!("{}.ts", joined.display())),
                PathBuf::from(format!("{}.js", joined.display())),
            ],
        };
        if !joined.starts_with(normalize(&self.0.dir)) {
            return refuse("only files inside the migrations folder can be imported");
        }
        for candidate in candidates {
            let key = candidate.to_string_lossy().into_owned();
            if self
                .0
                .sources
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&key)
            {
                return Ok(key);
            }
            if self.0.read_files && candidate.is_file() {
                let inside = candidate
                    .canonicalize()
                    .is_ok_and(|c| c.starts_with(&self.0.root));
                if !inside {
                    return refuse("only files inside the migrations folder can be imported");
                }
                return Ok(key);
            }
        }
        refuse("no such .ts or .js file in the migrations folder")
    }
}

struct ScriptLoader(Modules);

impl Loader for ScriptLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, Declared>> {
        if name == BUILTIN {
            return Module::declare(ctx.clone(), BUILTIN, BUILTIN_SOURCE);
        }
        let known = self
            .0
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        let source = match known {
            Some(s) => s,
            None if self.0.read_files => {
                let text = std::fs::read_to_string(name).map_err(|e| {
                    rquickjs::Error::new_loading_message(name, format!("cannot read {name}: {e}"))
                })?;
                let js = if name.ends_with(".ts") {
                    super::strip::strip(name, &text).map_err(|e| {
                        rquickjs::Error::new_loading_message(name, format!("{name}:{e}"))
                    })?
                } else {
                    text
                };
                self.0
                    .sources
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_owned(), js.clone());
                js
            }
            None => {
                return Err(rquickjs::Error::new_loading_message(
                    name,
                    "not loaded at start-up",
                ))
            }
        };
        Module::declare(ctx.clone(), name, source)
    }
}

/// Log lines a script may write per second per engine; the rest are counted
/// and reported as suppressed.
const LOG_LINES_PER_SECOND: u32 = 20;

#[derive(Default)]
struct LogState {
    migration: String,
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogState {
    fn log(&mut self, line: &str) {
        let now = Instant::now();
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            if self.suppressed > 0 {
                tracing::info!(target: "dynbulk::script", migration = %self.migration, suppressed = self.suppressed, "script log lines suppressed (more than {LOG_LINES_PER_SECOND} a second)");
            }
            self.window = Some(now);
            self.lines = 0;
            self.suppressed = 0;
        }
        if self.lines < LOG_LINES_PER_SECOND {
            self.lines += 1;
            tracing::info!(target: "dynbulk::script", migration = %self.migration, "{line}");
        } else {
            self.suppressed += 1;
        }
    }
}

/// A migration's module as loaded in one engine.
struct Loaded {
    migration: Persistent<Object<'static>>,
    /// The `ctx` argument for one run's table and dry-run flag.
    context: Option<(RunFacts, Persistent<Object<'static>>)>,
}

/// Which export of which module is the migration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The module name (the file's path).
    pub module: String,
    /// `default`, or the old runner's `migration_<id>`.
    pub export: String,
}

/// One engine. Not `Send`: it lives and dies on one thread.
pub struct Engine {
    // Persistent values are dropped before the context and runtime they belong to.
    loaded: HashMap<Entry, Loaded>,
    internals: Persistent<Object<'static>>,
    log: Rc<RefCell<LogState>>,
    context: Context,
    runtime: Runtime,
    deadline: Arc<AtomicU64>,
    interrupted: Arc<AtomicBool>,
    epoch: Instant,
    limits: Limits,
}

/// Nanoseconds since the engine's epoch; 0 means no deadline.
fn nanos(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Engine {
    /// A new engine over `modules`, with the clock frozen at `now_ms`.
    ///
    /// # Errors
    /// When QuickJS cannot start (out of memory).
    pub fn new(modules: Modules, limits: Limits, now_ms: f64) -> Result<Engine, String> {
        let runtime = Runtime::new().map_err(|e| e.to_string())?;
        runtime.set_memory_limit(limits.memory);
        // Deep recursion is a RangeError, well before the thread's 8 MiB stack.
        runtime.set_max_stack_size(1 << 20);
        let deadline = Arc::new(AtomicU64::new(0));
        let interrupted = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        {
            let deadline = deadline.clone();
            let interrupted = interrupted.clone();
            runtime.set_interrupt_handler(Some(Box::new(move || {
                let d = deadline.load(Relaxed);
                if d != 0 && nanos(epoch) > d {
                    interrupted.store(true, Relaxed);
                    true
                } else {
                    false
                }
            })));
        }
        runtime.set_loader(ScriptResolver(modules.clone()), ScriptLoader(modules));
        let context = Context::full(&runtime).map_err(|e| e.to_string())?;
        let log = Rc::new(RefCell::new(LogState::default()));
        let internals = context.with(|ctx| -> Result<_, String> {
            let mut options = EvalOptions::default();
            options.global = true;
            options.strict = true;
            options.filename = Some("<dynbulk>".into());
            let setup: Function = ctx
                .eval_with_options(PRELUDE, options)
                .map_err(|e| describe_error(&ctx, e, &interrupted, limits))?;
            let log = log.clone();
            let native_log = Function::new(ctx.clone(), move |line: String| {
                log.borrow_mut().log(&line);
            })
            .map_err(|e| e.to_string())?;
            let internals: Object = setup
                .call((now_ms, native_log))
                .map_err(|e| describe_error(&ctx, e, &interrupted, limits))?;
            Ok(Persistent::save(&ctx, internals))
        })?;
        Ok(Engine {
            loaded: HashMap::new(),
            internals,
            log,
            context,
            runtime,
            deadline,
            interrupted,
            epoch,
            limits,
        })
    }

    fn arm(&self, timeout: Duration) {
        self.interrupted.store(false, Relaxed);
        let at =
            nanos(self.epoch).saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        self.deadline.store(at, Relaxed);
    }

    fn disarm(&self) {
        self.deadline.store(0, Relaxed);
    }

    /// Imports `entry`'s module (and what it imports) and returns the
    /// migration object, loading it once per engine.
    ///
    /// # Errors
    /// The module's syntax error, a failed import or a throw at top level, with
    /// the file:line; a missing export.
    pub fn load(&mut self, entry: &Entry) -> Result<(), String> {
        if self.loaded.contains_key(entry) {
            return Ok(());
        }
        // Top-level code gets ten transforms' time.
        self.arm(self.limits.timeout * 10);
        let limits = self.limits;
        let interrupted = self.interrupted.clone();
        let result = self.context.with(|ctx| -> Result<_, String> {
            let fail = |e| describe_error(&ctx, e, &interrupted, limits);
            let promise = Module::import(&ctx, entry.module.as_str()).map_err(fail)?;
            let namespace: Object = promise.finish().map_err(fail)?;
            let value: Value = namespace.get(entry.export.as_str()).map_err(fail)?;
            let Some(migration) = value.into_object() else {
                return Err(format!(
                    "{} has no export named {}",
                    entry.module, entry.export
                ));
            };
            Ok(Persistent::save(&ctx, migration))
        });
        self.disarm();
        let migration = result?;
        self.loaded.insert(
            entry.clone(),
            Loaded {
                migration,
                context: None,
            },
        );
        Ok(())
    }

    /// Runs `f` with the loaded migration object of `entry` (see [`Engine::load`]).
    pub fn with_migration<R>(
        &mut self,
        entry: &Entry,
        f: impl for<'js> FnOnce(&Ctx<'js>, Object<'js>, &Shapes<'js>) -> R,
    ) -> Result<R, String> {
        self.load(entry)?;
        let migration = self.loaded[entry].migration.clone();
        let internals = self.internals.clone();
        self.context.with(|ctx| {
            let migration = migration.restore(&ctx).map_err(|e| e.to_string())?;
            let internals = internals.restore(&ctx).map_err(|e| e.to_string())?;
            let shapes = Shapes::of(&ctx, &internals).map_err(|e| e.to_string())?;
            Ok(f(&ctx, migration, &shapes))
        })
    }

    /// Applies the transform of `entry` to each item of a page, in order.
    /// A failed item comes back as a [`TransformError`] naming the script's
    /// message and file:line; the others with their reads recorded.
    ///
    /// Just under 90 lines: everything happens inside one `Context::with`
    /// (its handles cannot leave it), where the page's call is set up once
    /// and each item is run under its own deadline.
    pub fn transform_page(
        &mut self,
        entry: &Entry,
        id: &str,
        facts: &RunFacts,
        items: Vec<Attrs>,
    ) -> Vec<(Item, Result<Change, TransformError>)> {
        if let Err(e) = self.load(entry) {
            let e = TransformError::new(format!("cannot load the migration: {e}"));
            return items
                .into_iter()
                .map(|a| (Item::new(a), Err(e.clone())))
                .collect();
        }
        self.log.borrow_mut().migration = id.to_owned();
        let limits = self.limits;
        let loaded = self.loaded.get_mut(entry).expect("loaded above");
        let migration = loaded.migration.clone();
        let internals = self.internals.clone();
        let known_context = loaded
            .context
            .as_ref()
            .filter(|(f, _)| f == facts)
            .map(|(_, c)| c.clone());
        let interrupted = self.interrupted.clone();
        let deadline = self.deadline.clone();
        let epoch = self.epoch;
        let (out, new_context) = self.context.with(|ctx| {
            let setup = || -> rquickjs::Result<_> {
                let internals = internals.restore(&ctx)?;
                let (context, new_context) = match known_context {
                    Some(c) => (c.restore(&ctx)?, None),
                    None => {
                        let make: Function = internals.get("context")?;
                        let c: Object =
                            make.call((facts.table.as_str(), facts.dry_run, facts.keys.clone()))?;
                        let saved = Persistent::save(&ctx, c.clone());
                        (c, Some(saved))
                    }
                };
                let migration = migration.restore(&ctx)?;
                let call = guard::Call::new(&ctx, &internals, migration, context, &facts.keys)?;
                Ok((call, new_context))
            };
            let (call, new_context) = match setup() {
                Ok(s) => s,
                Err(e) => {
                    let e = TransformError::new(describe_error(&ctx, e, &interrupted, limits));
                    let out = items
                        .into_iter()
                        .map(|a| (Item::new(a), Err(e.clone())))
                        .collect();
                    return (out, None);
                }
            };
            let out = items
                .into_iter()
                .map(|attrs| {
                    let item = Item::new(attrs);
                    interrupted.store(false, Relaxed);
                    let at = nanos(epoch).saturating_add(
                        u64::try_from(limits.timeout.as_nanos()).unwrap_or(u64::MAX),
                    );
                    deadline.store(at, Relaxed);
                    let result = call
                        .transform(&item)
                        .map_err(|e| {
                            TransformError::new(describe_error(&ctx, e, &interrupted, limits))
                        })
                        .and_then(|r| r);
                    deadline.store(0, Relaxed);
                    (item, result)
                })
                .collect::<Vec<_>>();
            (out, new_context)
        });
        if let Some(c) = new_context {
            if let Some(loaded) = self.loaded.get_mut(entry) {
                loaded.context = Some((facts.clone(), c));
            }
        }
        // Free what a failed item left behind (an out-of-memory one above all).
        if out.iter().any(|(_, r)| r.is_err()) {
            self.runtime.run_gc();
        }
        out
    }
}

/// The script's error as one line: its message and where it was thrown
/// (file:line), or what limit stopped it.
pub fn describe_error(
    ctx: &Ctx<'_>,
    e: rquickjs::Error,
    interrupted: &AtomicBool,
    limits: Limits,
) -> String {
    if interrupted.swap(false, Relaxed) {
        let _ = ctx.catch();
        return format!(
            "the script ran longer than its time limit of {:?} (--script-timeout)",
            limits.timeout
        );
    }
    if !matches!(e, rquickjs::Error::Exception) {
        return e.to_string();
    }
    let thrown = ctx.catch();
    let (message, stack) = match thrown.as_object() {
        Some(o) if thrown.is_error() => (
            o.get::<_, Option<String>>("message")
                .ok()
                .flatten()
                .unwrap_or_default(),
            o.get::<_, Option<String>>("stack")
                .ok()
                .flatten()
                .unwrap_or_default(),
        ),
        _ => {
            let text = ctx
                .globals()
                .get::<_, Function>("String")
                .and_then(|s| s.call::<_, String>((thrown.clone(),)))
                .unwrap_or_else(|_| "an exception".into());
            (text, String::new())
        }
    };
    let name = thrown
        .as_object()
        .filter(|_| thrown.is_error())
        .and_then(|o| o.get::<_, Option<String>>("name").ok().flatten());
    if message.contains("out of memory") || thrown.is_null() {
        return format!(
            "the script ran out of its memory limit of {} MiB (--script-memory)",
            limits.memory >> 20
        );
    }
    let message = match name {
        Some(n) if n != "Error" => format!("{n}: {message}"),
        _ => message,
    };
    match guard::location(&stack) {
        Some(at) => format!("{message} (at {at})"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(
            normalize(Path::new("m/./a/../b.ts")),
            PathBuf::from("m/b.ts")
        );
        assert_eq!(normalize(Path::new("./m/b.ts")), PathBuf::from("m/b.ts"));
    }
}
