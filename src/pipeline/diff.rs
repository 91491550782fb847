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
            Ok(Planned::Delete(b.finish()))
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
            let mut sets = Vec::new();
            for (name, value) in &effective.set {
                let n = b.name(name);
                let v = b.value(value.clone());
                sets.push(format!("{n} = {v}"));
                b.changed.push(name.clone());
            }
            let mut removes = Vec::new();
            for name in &effective.remove {
                removes.push(b.name(name));
                b.changed.push(name.clone());
            }
            let mut update_expr = String::new();
            if !sets.is_empty() {
                update_expr.push_str("SET ");
                update_expr.push_str(&sets.join(", "));
            }
            if !removes.is_empty() {
                if !update_expr.is_empty() {
                    update_expr.push(' ');
                }
                update_expr.push_str("REMOVE ");
                update_expr.push_str(&removes.join(", "));
            }
            if let Some(v) = version {
                // ADD treats an absent attribute as 0.
                let n = b.name(v);
                let one = b.value(AttributeValue::N("1".into()));
                update_expr.push_str(&format!(" ADD {n} {one}"));
            }
            let guarded: BTreeSet<&String> = read
                .iter()
                .chain(effective.names())
                .chain(version)
                .collect();
            b.condition(keys, old, guarded.into_iter());
            b.filter(guard.filter.as_ref());
            let mut expr = b.finish();
            expr.update = update_expr;
            Ok(Planned::Update(expr))
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

#[derive(Default)]
struct Builder {
    names: HashMap<String, String>,
    by_name: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    conditions: Vec<String>,
    changed: Vec<String>,
}

impl Builder {
    fn name(&mut self, name: &str) -> String {
        if let Some(p) = self.by_name.get(name) {
            return p.clone();
        }
        let p = format!("#n{}", self.by_name.len());
        self.by_name.insert(name.to_owned(), p.clone());
        self.names.insert(p.clone(), name.to_owned());
        p
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), value);
        p
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
            self.conditions.push(format!("attribute_exists({n})"));
        }
        for name in guarded {
            if keys.iter().any(|k| k == name) {
                continue; // the key addresses the item; it cannot differ
            }
            let n = self.name(name);
            match old.get(name) {
                Some(v) => {
                    let v = self.value(v.clone());
                    self.conditions.push(format!("{n} = {v}"));
                }
                None => self.conditions.push(format!("attribute_not_exists({n})")),
            }
        }
    }

    /// The item must still match the scan filter.
    fn filter(&mut self, filter: Option<&Filter>) {
        if let Some(f) = filter {
            self.conditions.push(format!("({})", f.expr));
            self.names.extend(f.names.clone());
            self.values.extend(f.values.clone());
        }
    }

    fn finish(self) -> Expr {
        Expr {
            update: String::new(),
            condition: self.conditions.join(" AND "),
            names: self.names,
            values: self.values,
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
