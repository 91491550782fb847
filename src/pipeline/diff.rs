//! Turns a transform's decision into a conditional write: pure logic, no I/O.
//!
//! An update becomes `SET`/`REMOVE` of the changed attributes only. Its
//! condition requires every attribute the transform read or wrote to still hold
//! the value seen in the scan (`#a = :v`, or `attribute_not_exists(#a)` when it
//! was absent) and the item to still exist. If the application wrote any of
//! those attributes in between, DynamoDB rejects the write with
//! ConditionalCheckFailed and the writer re-reads and re-applies.
//!
//! A [`Guard`] adds what is not tied to the transform's reads: the
//! migration's version attribute (conditioned on and incremented by every
//! write) and the scan filter (every write requires the item to still match
//! it).

use std::collections::{BTreeSet, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::dynamo::value::same_value;
use crate::migration::{Attrs, Change, Update};

/// A planned write for one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// Nothing to write: the transform kept the item or changed nothing.
    Unchanged,
    /// A conditional UpdateItem.
    Update(Expr),
    /// A conditional DeleteItem.
    Delete(Expr),
}

/// An update (possibly empty for deletes) and condition expression with their
/// placeholder maps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expr {
    /// `SET #n0 = :v0 REMOVE #n1`, empty for deletes.
    pub update: String,
    /// The condition every write carries.
    pub condition: String,
    /// `#nX` -> attribute name.
    pub names: HashMap<String, String>,
    /// `:vX` -> value.
    pub values: HashMap<String, AttributeValue>,
    /// The attributes set or removed (for reports and dry-run samples).
    pub changed: Vec<String>,
}

/// Why a change cannot be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The transform tried to set or remove a key attribute.
    #[error("the transform changes key attribute {0:?}; key attributes cannot be updated (delete and re-create the item in a migration of its own)")]
    KeyChange(String),
    /// The transform tried to set or remove the version attribute.
    #[error("the transform changes the version attribute {0:?}; dynbulk increments it on every write and the transform must leave it alone")]
    VersionChange(String),
    /// The version attribute holds something other than a number.
    #[error("the version attribute {0:?} is not a number on this item; it cannot be incremented")]
    VersionNotNumber(String),
}

/// What every write is conditioned on besides the attributes the transform
/// read or wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guard {
    /// The optimistic-locking version attribute: every write requires it to
    /// hold its scanned value (or to be absent, if it was) and increments it.
    pub version: Option<String>,
    /// The scan's filter: every write requires the item to still match it.
    pub filter: Option<Filter>,
}

/// A filter expression with its placeholders, renamed so that they cannot
/// collide with the `#nN`/`:vN` placeholders of a planned write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// The expression, e.g. `#dynbulk_f_s = :dynbulk_f_p`.
    pub expr: String,
    /// Name placeholders of `expr`.
    pub names: HashMap<String, String>,
    /// Value placeholders of `expr`.
    pub values: HashMap<String, AttributeValue>,
}

impl Filter {
    /// The filter of a migration's scan options, its placeholders renamed
    /// (`#s` -> `#dynbulk_f_s`, `:v` -> `:dynbulk_f_v`). DynamoDB expressions
    /// have no string literals (values are always placeholders), so every
    /// `#word`/`:word` token is a placeholder.
    pub fn new(
        expr: &str,
        names: &HashMap<String, String>,
        values: &HashMap<String, AttributeValue>,
    ) -> Self {
        Filter {
            expr: rename_placeholders(expr),
            names: names
                .iter()
                .map(|(k, v)| (rename_placeholders(k), v.clone()))
                .collect(),
            values: values
                .iter()
                .map(|(k, v)| (rename_placeholders(k), v.clone()))
                .collect(),
        }
    }
}

/// Prefix given to a filter's placeholders in write conditions.
const FILTER_PREFIX: &str = "dynbulk_f_";

fn rename_placeholders(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len() + 16);
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if (c == '#' || c == ':')
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '_')
        {
            out.push_str(FILTER_PREFIX);
        }
    }
    out
}

/// Plans the write for `change` on an item scanned as `old`, given the table's
/// key attribute names, the attributes the transform read and the guard.
///
/// # Errors
/// [`PlanError::KeyChange`] when the change touches a key attribute with a
/// new value; [`PlanError::VersionChange`] / [`PlanError::VersionNotNumber`]
/// when the version attribute cannot be incremented.
///
/// Just over 80 lines: the update and delete cases build one expression with
/// one placeholder builder, and read best side by side.
pub fn plan(
    keys: &[String],
    old: &Attrs,
    read: &BTreeSet<String>,
    change: &Change,
    guard: &Guard,
) -> Result<Planned, PlanError> {
    let version = guard.version.as_ref();
    if !matches!(change, Change::Keep) {
        if let Some(v) = version {
            if old.get(v).is_some_and(|value| value.as_n().is_err()) {
                return Err(PlanError::VersionNotNumber(v.clone()));
            }
        }
    }
    match change {
        Change::Keep => Ok(Planned::Unchanged),
        Change::Delete => {
            let mut b = Builder::default();
            let guarded: BTreeSet<&String> = read.iter().chain(version).collect();
            b.condition(keys, old, guarded.into_iter());
            b.filter(guard.filter.as_ref());
            Ok(Planned::Delete(b.finish(String::new())))
        }
        Change::Update(update) => {
            let effective = effective(old, update);
            for name in effective.names() {
                if keys.iter().any(|k| k == name) {
                    return Err(PlanError::KeyChange(name.clone()));
                }
                if version == Some(name) {
                    return Err(PlanError::VersionChange(name.clone()));
                }
            }
            if effective.is_empty() {
                return Ok(Planned::Unchanged);
            }
            let mut b = Builder::default();
            let mut update_expr = String::with_capacity(16 * effective.set.len() + 8);
            for (i, (name, value)) in effective.set.iter().enumerate() {
                update_expr.push_str(if i == 0 { "SET " } else { ", " });
                let n = b.name(name);
                push_name(&mut update_expr, n);
                update_expr.push_str(" = ");
                let v = b.value(value.clone());
                push_value(&mut update_expr, v);
                b.changed.push(name.clone());
            }
            for (i, name) in effective.remove.iter().enumerate() {
                if i == 0 {
                    if !update_expr.is_empty() {
                        update_expr.push(' ');
                    }
                    update_expr.push_str("REMOVE ");
                } else {
                    update_expr.push_str(", ");
                }
                let n = b.name(name);
                push_name(&mut update_expr, n);
                b.changed.push(name.clone());
            }
            if let Some(v) = version {
                // ADD treats an absent attribute as 0.
                update_expr.push_str(" ADD ");
                let n = b.name(v);
                push_name(&mut update_expr, n);
                update_expr.push(' ');
                let one = b.value(AttributeValue::N("1".into()));
                push_value(&mut update_expr, one);
            }
            let guarded: BTreeSet<&String> = read
                .iter()
                .chain(effective.names())
                .chain(version)
                .collect();
            b.condition(keys, old, guarded.into_iter());
            b.filter(guard.filter.as_ref());
            Ok(Planned::Update(b.finish(update_expr)))
        }
    }
}

/// Drops the parts of an update that would not change anything: setting an
/// attribute to the value it has, removing one that is absent. What is left is
/// what gets written, so a re-run of an idempotent transform writes nothing.
pub fn effective(old: &Attrs, update: &Update) -> Update {
    let mut out = Update::new();
    for (name, value) in &update.set {
        if !old.get(name).is_some_and(|o| same_value(o, value)) {
            out.set.insert(name.clone(), value.clone());
        }
    }
    for name in &update.remove {
        if old.contains_key(name) {
            out.remove.insert(name.clone());
        }
    }
    out
}

/// Writes placeholder `#n<i>`.
fn push_name(out: &mut String, i: usize) {
    out.push_str("#n");
    push_index(out, i);
}

/// Writes placeholder `:v<i>`.
fn push_value(out: &mut String, i: usize) {
    out.push_str(":v");
    push_index(out, i);
}

fn push_index(out: &mut String, i: usize) {
    if i >= 10 {
        push_index(out, i / 10);
    }
    out.push(char::from(b'0' + (i % 10) as u8));
}

fn placeholder(write: fn(&mut String, usize), i: usize) -> String {
    let mut s = String::with_capacity(4);
    write(&mut s, i);
    s
}

/// Builds one write's expressions. Placeholders are numbered in order of
/// first use: `#n<i>` names `names[i]`, `:v<i>` is `values[i]`. This runs
/// for every item (dry runs included), so it writes each expression into one
/// string and keeps the placeholders in vectors (a write has a handful).
#[derive(Default)]
struct Builder {
    names: Vec<String>,
    values: Vec<AttributeValue>,
    condition: String,
    changed: Vec<String>,
    filter: Option<Filter>,
}

impl Builder {
    /// The placeholder index of attribute `name`.
    fn name(&mut self, name: &str) -> usize {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i;
        }
        self.names.push(name.to_owned());
        self.names.len() - 1
    }

    /// The placeholder index of a new value.
    fn value(&mut self, value: AttributeValue) -> usize {
        self.values.push(value);
        self.values.len() - 1
    }

    fn and(&mut self) {
        if !self.condition.is_empty() {
            self.condition.push_str(" AND ");
        }
    }

    /// The item must still exist (its first key attribute is present) and every
    /// guarded attribute must hold its scanned value.
    fn condition<'a>(
        &mut self,
        keys: &[String],
        old: &Attrs,
        guarded: impl Iterator<Item = &'a String>,
    ) {
        if let Some(k) = keys.first() {
            let n = self.name(k);
            self.and();
            self.condition.push_str("attribute_exists(");
            push_name(&mut self.condition, n);
            self.condition.push(')');
        }
        for name in guarded {
            if keys.iter().any(|k| k == name) {
                continue; // the key addresses the item; it cannot differ
            }
            let n = self.name(name);
            self.and();
            match old.get(name) {
                Some(v) => {
                    let v = self.value(v.clone());
                    push_name(&mut self.condition, n);
                    self.condition.push_str(" = ");
                    push_value(&mut self.condition, v);
                }
                None => {
                    self.condition.push_str("attribute_not_exists(");
                    push_name(&mut self.condition, n);
                    self.condition.push(')');
                }
            }
        }
    }

    /// The item must still match the scan filter.
    fn filter(&mut self, filter: Option<&Filter>) {
        if let Some(f) = filter {
            self.and();
            self.condition.push('(');
            self.condition.push_str(&f.expr);
            self.condition.push(')');
            self.filter = Some(f.clone());
        }
    }

    fn finish(self, update: String) -> Expr {
        let extra = self.filter.as_ref();
        let mut names =
            HashMap::with_capacity(self.names.len() + extra.map_or(0, |f| f.names.len()));
        for (i, name) in self.names.into_iter().enumerate() {
            names.insert(placeholder(push_name, i), name);
        }
        let mut values =
            HashMap::with_capacity(self.values.len() + extra.map_or(0, |f| f.values.len()));
        for (i, value) in self.values.into_iter().enumerate() {
            values.insert(placeholder(push_value, i), value);
        }
        if let Some(f) = self.filter {
            names.extend(f.names);
            values.extend(f.values);
        }
        Expr {
            update,
            condition: self.condition,
            names,
            values,
            changed: self.changed,
        }
    }
}

/// Extracts the key attributes of an item.
pub fn key_of(keys: &[String], item: &Attrs) -> Attrs {
    keys.iter()
        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    fn keys() -> Vec<String> {
        vec!["pk".into(), "sk".into()]
    }

    fn item() -> Attrs {
        HashMap::from([
            ("pk".into(), s("a")),
            ("sk".into(), s("1")),
            ("status".into(), s("pending")),
        ])
    }

    #[test]
    fn update_sets_only_what_changed_and_guards_what_was_read() {
        let read = BTreeSet::from(["status".to_string()]);
        let change = Change::Update(
            Update::new()
                .set("statusCategory", "active")
                .set("status", "pending"),
        );
        let Planned::Update(e) = plan(&keys(), &item(), &read, &change, &Guard::default()).unwrap()
        else {
            panic!("expected an update")
        };
        assert_eq!(e.changed, vec!["statusCategory".to_string()]);
        assert_eq!(e.update, "SET #n0 = :v0");
        assert_eq!(e.names["#n0"], "statusCategory");
        assert_eq!(
            e.condition,
            "attribute_exists(#n1) AND #n2 = :v1 AND attribute_not_exists(#n0)"
        );
        assert_eq!(e.names["#n2"], "status");
        assert_eq!(e.values[":v1"], s("pending"));
    }

    #[test]
    fn an_update_that_changes_nothing_is_unchanged() {
        let change = Change::Update(Update::new().set("status", "pending").remove("absent"));
        assert_eq!(
            plan(
                &keys(),
                &item(),
                &BTreeSet::new(),
                &change,
                &Guard::default()
            )
            .unwrap(),
            Planned::Unchanged
        );
    }

    #[test]
    fn changing_a_key_is_refused() {
        let change = Change::Update(Update::new().set("sk", "2"));
        assert_eq!(
            plan(
                &keys(),
                &item(),
                &BTreeSet::new(),
                &change,
                &Guard::default()
            ),
            Err(PlanError::KeyChange("sk".into()))
        );
        // Setting a key to the value it has is harmless and allowed.
        let same = Change::Update(Update::new().set("sk", "1"));
        assert_eq!(
            plan(&keys(), &item(), &BTreeSet::new(), &same, &Guard::default()).unwrap(),
            Planned::Unchanged
        );
    }

    #[test]
    fn deletes_are_conditional_on_what_was_read() {
        let read = BTreeSet::from(["status".to_string()]);
        let Planned::Delete(e) =
            plan(&keys(), &item(), &read, &Change::Delete, &Guard::default()).unwrap()
        else {
            panic!("expected a delete")
        };
        assert_eq!(e.condition, "attribute_exists(#n0) AND #n1 = :v0");
        assert!(e.update.is_empty());
    }

    #[test]
    fn numbers_compare_by_value() {
        let n = |v: &str| AttributeValue::N(v.into());
        assert!(same_value(&n("3.50"), &n("3.5")));
        assert!(same_value(&n("0042"), &n("42")));
        assert!(same_value(&n("4.2e1"), &n("42")));
        assert!(same_value(&n("1.0"), &n("1")));
        assert!(same_value(&n("1e0"), &n("1")));
        assert!(same_value(&n("-0.0"), &n("0")));
        assert!(!same_value(&n("42"), &n("4.2")));
        assert!(!same_value(&n("-1"), &n("1")));
        let mut old = item();
        old.insert("total".into(), n("10"));
        let change = Change::Update(Update::new().set("total", AttributeValue::N("10.00".into())));
        assert_eq!(
            plan(&keys(), &old, &BTreeSet::new(), &change, &Guard::default()).unwrap(),
            Planned::Unchanged
        );
    }

    #[test]
    fn the_version_attribute_is_conditioned_on_and_incremented() {
        let guard = Guard {
            version: Some("version".into()),
            filter: None,
        };
        let mut old = item();
        old.insert("version".into(), AttributeValue::N("7".into()));
        let change = Change::Update(Update::new().set("x", "1"));
        let Planned::Update(e) = plan(&keys(), &old, &BTreeSet::new(), &change, &guard).unwrap()
        else {
            panic!("expected an update")
        };
        assert_eq!(e.update, "SET #n0 = :v0 ADD #n1 :v1");
        assert_eq!(e.names["#n1"], "version");
        assert_eq!(e.values[":v1"], AttributeValue::N("1".into()));
        assert_eq!(
            e.condition,
            "attribute_exists(#n2) AND #n1 = :v2 AND attribute_not_exists(#n0)"
        );
        assert_eq!(e.values[":v2"], AttributeValue::N("7".into()));
        // Absent: the write requires it still absent (ADD starts it at 1).
        let Planned::Delete(e) =
            plan(&keys(), &item(), &BTreeSet::new(), &Change::Delete, &guard).unwrap()
        else {
            panic!("expected a delete")
        };
        assert_eq!(
            e.condition,
            "attribute_exists(#n0) AND attribute_not_exists(#n1)"
        );
        // Nothing to write: the version is not bumped.
        assert_eq!(
            plan(&keys(), &old, &BTreeSet::new(), &Change::Keep, &guard).unwrap(),
            Planned::Unchanged
        );
        // The transform may not set it; it must be a number.
        let set_version = Change::Update(Update::new().set("version", 8));
        assert_eq!(
            plan(&keys(), &old, &BTreeSet::new(), &set_version, &guard),
            Err(PlanError::VersionChange("version".into()))
        );
        old.insert("version".into(), s("seven"));
        assert_eq!(
            plan(&keys(), &old, &BTreeSet::new(), &change, &guard),
            Err(PlanError::VersionNotNumber("version".into()))
        );
    }

    #[test]
    fn the_scan_filter_joins_the_condition_under_its_own_placeholders() {
        let filter = Filter::new(
            "#n0 = :v0 AND attribute_exists(#x) AND size(total) > :v10",
            &HashMap::from([("#n0".into(), "status".into()), ("#x".into(), "x".into())]),
            &HashMap::from([
                (":v0".into(), s("pending")),
                (":v10".into(), AttributeValue::N("1".into())),
            ]),
        );
        assert_eq!(
            filter.expr,
            "#dynbulk_f_n0 = :dynbulk_f_v0 AND attribute_exists(#dynbulk_f_x) AND size(total) > :dynbulk_f_v10"
        );
        let guard = Guard {
            version: None,
            filter: Some(filter),
        };
        let change = Change::Update(Update::new().set("priority", "high"));
        let Planned::Update(e) = plan(&keys(), &item(), &BTreeSet::new(), &change, &guard).unwrap()
        else {
            panic!("expected an update")
        };
        assert_eq!(
            e.condition,
            "attribute_exists(#n1) AND attribute_not_exists(#n0) AND (#dynbulk_f_n0 = :dynbulk_f_v0 AND attribute_exists(#dynbulk_f_x) AND size(total) > :dynbulk_f_v10)"
        );
        assert_eq!(e.names["#n0"], "priority");
        assert_eq!(e.names["#dynbulk_f_n0"], "status");
        assert_eq!(e.values[":v0"], s("high"));
        assert_eq!(e.values[":dynbulk_f_v0"], s("pending"));
        let Planned::Delete(e) =
            plan(&keys(), &item(), &BTreeSet::new(), &Change::Delete, &guard).unwrap()
        else {
            panic!("expected a delete")
        };
        assert!(e.condition.ends_with("AND (#dynbulk_f_n0 = :dynbulk_f_v0 AND attribute_exists(#dynbulk_f_x) AND size(total) > :dynbulk_f_v10)"));
    }

    #[test]
    fn remove_produces_remove_clause() {
        let change = Change::Update(Update::new().remove("status").set("x", "1"));
        let Planned::Update(e) = plan(
            &keys(),
            &item(),
            &BTreeSet::new(),
            &change,
            &Guard::default(),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.update, "SET #n0 = :v0 REMOVE #n1");
    }
}
