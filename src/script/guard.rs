//! One transform call and what it decided, with the reads that guard its write.
//!
//! The script gets the item behind a Proxy (the prelude's tracker): `get`,
//! `in` and property-descriptor lookups record the attribute name, present or
//! absent; enumeration (`Object.keys`, spread, `JSON.stringify`, `for...in`)
//! records every attribute; assignments and `delete` record the name
//! changed. The names read go into the [`Item`]'s read set exactly as a Rust
//! transform's `item.get(..)` would, so `diff::plan` conditions the write on
//! them.
//!
//! What changed is decided against the scanned `AttributeValue`s, never by a
//! round trip: only attributes the script assigned, deleted or read as an
//! object (which it may have mutated in place) are converted back, and one
//! that compares equal to its scanned value (numbers by value, sets in any
//! order) is not written.

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::AttributeValue;
use rquickjs::{Array, Ctx, Function, Object, Value};

use super::values::{define, from_js, to_js, Shapes};
use crate::migration::{Change, Item, TransformError, Update};

/// Everything one page's transform calls share.
pub struct Call<'a, 'js> {
    /// The engine's context.
    pub ctx: Ctx<'js>,
    /// Constructors for value conversion.
    pub shapes: Shapes<'js>,
    /// The prelude's `run`.
    pub run: Function<'js>,
    /// The prelude's `ownValue`.
    pub own_value: Function<'js>,
    /// The prelude's `absent` marker.
    pub absent: Value<'js>,
    /// The migration object (its `transform` is called as a method).
    pub migration: Object<'js>,
    /// The `ctx` argument.
    pub context: Object<'js>,
    /// The prelude's `reads`, `writes` and `result` (see its `run`).
    pub reads: Array<'js>,
    /// See `reads`.
    pub writes: Array<'js>,
    /// See `reads`.
    pub result: Array<'js>,
    /// The table's key attribute names: a change to one fails the item here,
    /// where the line that made it is known.
    pub keys: &'a [String],
}

impl<'a, 'js> Call<'a, 'js> {
    /// The calls of `migration` with the prelude's `internals`.
    ///
    /// # Errors
    /// When the prelude lacks a member (a bug) or the engine cannot allocate.
    pub fn new(
        ctx: &Ctx<'js>,
        internals: &Object<'js>,
        migration: Object<'js>,
        context: Object<'js>,
        keys: &'a [String],
    ) -> rquickjs::Result<Self> {
        Ok(Call {
            ctx: ctx.clone(),
            shapes: Shapes::of(ctx, internals)?,
            run: internals.get("run")?,
            own_value: internals.get("ownValue")?,
            absent: internals.get("absent")?,
            migration,
            context,
            reads: internals.get("reads")?,
            writes: internals.get("writes")?,
            result: internals.get("result")?,
            keys,
        })
    }
}

/// `message`, with the script's file:line from `stack` when there is one.
fn located(message: String, stack: Option<String>) -> TransformError {
    match stack.as_deref().and_then(location) {
        Some(at) => TransformError::new(format!("{message} (at {at})")),
        None => TransformError::new(message),
    }
}

/// True for values a script can change without assigning the attribute.
fn mutable_in_place(v: &AttributeValue) -> bool {
    use AttributeValue as V;
    matches!(
        v,
        V::M(_) | V::L(_) | V::Ss(_) | V::Ns(_) | V::Bs(_) | V::B(_)
    )
}

impl<'js> Call<'_, 'js> {
    /// Runs the transform on `item`, recording its reads in the item.
    ///
    /// # Errors
    /// The outer error is a JavaScript exception (thrown by the script, its
    /// time or memory limit); the inner one a decision that cannot be
    /// written (a bad return value, a value DynamoDB cannot store).
    pub fn transform(&self, item: &Item) -> rquickjs::Result<Result<Change, TransformError>> {
        let scanned = item.scanned();
        let target = Object::new(self.ctx.clone())?;
        for (name, value) in scanned {
            define(&target, name, to_js(&self.ctx, &self.shapes, value)?)?;
        }
        let code: i32 =
            self.run
                .call((self.migration.clone(), target.clone(), self.context.clone()))?;
        let (status, enumerated, marked) = (code & 3, code & 4 != 0, code & 8 != 0);
        let result = &self.result;
        let mut candidates = BTreeSet::new();
        let mut read = Vec::with_capacity(self.reads.len());
        for name in self.reads.iter::<String>() {
            let name = name?;
            if scanned.get(&name).is_some_and(mutable_in_place) {
                candidates.insert(name.clone());
            }
            read.push(name);
        }
        item.note_reads(read);
        if enumerated {
            for (name, value) in item.attrs() {
                if mutable_in_place(value) {
                    candidates.insert(name.clone());
                }
            }
        }
        match status {
            0 => {}
            1 => return Ok(Ok(Change::Delete)),
            _ => {
                let what: String = result.get(4)?;
                let defined: String = result.get(6)?;
                let message = format!(
                    "transform returned {what}; return nothing (or the item) to apply its changes, or DELETE to delete it"
                );
                return Ok(Err(TransformError::new(if defined.is_empty() {
                    message
                } else {
                    format!("{message} (transform at {defined})")
                })));
            }
        }
        for name in self.writes.iter::<String>() {
            candidates.insert(name?);
        }
        // Where a marked write happened (see the prelude's `mark`).
        let stacks: Option<Object> = if marked { result.get(5)? } else { None };
        self.changes(&target, scanned, candidates, stacks)
    }

    /// The update that makes the scanned item what `target` became, over the
    /// attributes that may have changed (`candidates`); `stacks` are the
    /// stacks of marked writes, by attribute name.
    fn changes(
        &self,
        target: &Object<'js>,
        scanned: &crate::migration::Attrs,
        candidates: BTreeSet<String>,
        stacks: Option<Object<'js>>,
    ) -> rquickjs::Result<Result<Change, TransformError>> {
        let stack_of = |name: &str| {
            stacks
                .as_ref()
                .and_then(|o| o.get::<_, Option<String>>(name).ok().flatten())
        };
        let mut update = Update::new();
        for name in candidates {
            let now: Value = self.own_value.call((target.clone(), name.as_str()))?;
            let before = scanned.get(&name);
            if now.as_symbol().is_some() && now == self.absent {
                if before.is_some() {
                    if self.keys.contains(&name) {
                        return Ok(Err(key_change(&name, stack_of(&name))));
                    }
                    update.remove.insert(name);
                }
                continue;
            }
            let mut path = name.clone();
            let value = match from_js(&self.shapes, &now, &mut path) {
                Ok(v) => v,
                Err(e) => return Ok(Err(located(e, stack_of(&name)))),
            };
            if !before.is_some_and(|b| crate::dynamo::value::same_value(b, &value)) {
                if self.keys.contains(&name) {
                    return Ok(Err(key_change(&name, stack_of(&name))));
                }
                update.set.insert(name, value);
            }
        }
        Ok(Ok(if update.is_empty() {
            Change::Keep
        } else {
            Change::Update(update)
        }))
    }
}

/// The failure of a transform that changed key attribute `name`.
fn key_change(name: &str, stack: Option<String>) -> TransformError {
    located(
        format!(
            "the transform changes key attribute {name:?}; key attributes cannot be updated (delete and re-create the item in a migration of its own)"
        ),
        stack,
    )
}

/// The first `file:line` of a QuickJS stack trace outside dynbulk's prelude.
pub fn location(stack: &str) -> Option<String> {
    for line in stack.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("at ") else {
            continue;
        };
        let place = match (rest.rfind('('), rest.ends_with(')')) {
            (Some(open), true) => &rest[open + 1..rest.len() - 1],
            _ => rest,
        };
        if place.starts_with('<') {
            continue;
        }
        // file:line:column -> file:line
        let mut parts = place.rsplitn(3, ':');
        let (Some(_col), Some(line_no), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if line_no.bytes().all(|b| b.is_ascii_digit()) && !line_no.is_empty() {
            return Some(format!("{file}:{line_no}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_frame_in_a_user_file_is_named() {
        let stack = "    at <anonymous> (<dynbulk>:3:9)\n    at transform (migrations/20250101_a.ts:7:13)\n    at run (<dynbulk>:90:20)\n";
        assert_eq!(
            location(stack).as_deref(),
            Some("migrations/20250101_a.ts:7")
        );
        assert_eq!(
            location("    at migrations/x.js:2:5\n").as_deref(),
            Some("migrations/x.js:2")
        );
        assert_eq!(location(""), None);
    }
}
