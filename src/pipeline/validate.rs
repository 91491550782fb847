//! Checks a planned write against DynamoDB's documented limits before it is
//! sent: pure logic, no I/O, run in the write planning path so that a dry run
//! reports these items too.
//!
//! An item whose write breaks a limit is that item's failure: it goes to the
//! dead-letter file with the reason and the run goes on. What cannot be known
//! before sending (an item collection over 10 GB, a limit this module does not
//! model) comes back from DynamoDB as an error that [`crate::error::classify`]
//! also makes the item's failure.
//!
//! The limits are DynamoDB's documented constraints ("Constraints in Amazon
//! DynamoDB": items, data types, expression parameters); local emulators
//! enforce only some of them (dynalite 4 checks sets and numbers, not
//! expression size or operator counts), so dynbulk checks them all itself.

use aws_sdk_dynamodb::types::AttributeValue;

use crate::dynamo::number::{decimal, problem as number_problem};
use crate::dynamo::table::{IndexKey, Scalar};
use crate::dynamo::value::{item_size, value_size};
use crate::migration::{Attrs, Change};
use crate::pipeline::diff::Planned;

/// Largest item DynamoDB stores, attribute names included: 400 KB.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// Longest expression string (update and condition each): 4 KB.
pub const MAX_EXPRESSION_BYTES: usize = 4 * 1024;
/// Most operators or functions in one expression.
pub const MAX_OPERATORS: usize = 300;
/// Most bytes of all expression attribute names and values together: 2 MB.
pub const MAX_SUBSTITUTION_BYTES: usize = 2 * 1024 * 1024;
/// Levels lists and maps may nest.
pub const MAX_DEPTH: usize = 32;
/// Longest partition key value (of a table or an index), in bytes.
pub const MAX_PARTITION_KEY_BYTES: usize = 2048;
/// Longest sort key value, in bytes.
pub const MAX_SORT_KEY_BYTES: usize = 1024;

/// Why DynamoDB would reject a planned write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// A value the transform sets cannot be stored.
    #[error("the transform sets attribute {attribute:?} to a value DynamoDB rejects: {problem}")]
    Value {
        /// Attribute name.
        attribute: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The same attribute is both set and removed.
    #[error("the transform both sets and removes attribute {0:?}")]
    SetAndRemove(String),
    /// An expression string is longer than DynamoDB accepts.
    #[error("the write's {which} expression would be {bytes} bytes, over DynamoDB's limit of {MAX_EXPRESSION_BYTES} (the transform reads or writes {attributes} attributes: every one is part of the write's guard; read fewer attributes for this item)")]
    ExpressionSize {
        /// `update` or `condition`.
        which: &'static str,
        /// Its length.
        bytes: usize,
        /// Attributes it names.
        attributes: usize,
    },
    /// An expression has more operators and functions than DynamoDB accepts.
    #[error("the write's {which} expression would have {count} operators, over DynamoDB's limit of {MAX_OPERATORS} (the transform reads or writes {attributes} attributes: every one is part of the write's guard; read fewer attributes for this item)")]
    Operators {
        /// `update` or `condition`.
        which: &'static str,
        /// Operators and functions counted.
        count: usize,
        /// Attributes it names.
        attributes: usize,
    },
    /// Expression attribute names and values are too large together.
    #[error("the write's expression attribute names and values would total {0} bytes, over DynamoDB's limit of {MAX_SUBSTITUTION_BYTES}")]
    Substitutions(usize),
    /// The item would be larger than DynamoDB stores.
    #[error("the item would be {0} bytes after the update, over DynamoDB's limit of {MAX_ITEM_BYTES} bytes (400 KB)")]
    ItemSize(usize),
    /// A secondary index key would get a value its index cannot hold.
    #[error("attribute {attribute:?} is a key of index {index}: {problem}")]
    IndexKey {
        /// Attribute name.
        attribute: String,
        /// Index name.
        index: String,
        /// What is wrong.
        problem: String,
    },
}

/// Checks the write planned for `change` on an item scanned as `old`, given
/// the key attributes of the table's secondary indexes.
///
/// # Errors
/// [`Invalid`] with the first problem found; the item is then not written.
pub fn check(
    index_keys: &[IndexKey],
    old: &Attrs,
    change: &Change,
    planned: &Planned,
) -> Result<(), Invalid> {
    let expr = match planned {
        Planned::Unchanged => return Ok(()),
        Planned::Update(e) | Planned::Delete(e) => e,
    };
    if let Change::Update(u) = change {
        // An attribute both changed and removed would be two overlapping paths.
        if let Some(name) = duplicate(expr.changed.iter()) {
            return Err(Invalid::SetAndRemove(name.clone()));
        }
        let mut size = item_size(old) as i64;
        for name in &expr.changed {
            if let Some(before) = old.get(name) {
                size -= (name.len() + value_size(before)) as i64;
            }
            let Some(value) = u.set.get(name) else {
                continue; // removed
            };
            size += (name.len() + value_size(value)) as i64;
            if let Some(problem) = value_problem(value, 0) {
                return Err(Invalid::Value {
                    attribute: name.clone(),
                    problem,
                });
            }
            for k in index_keys.iter().filter(|k| k.attribute == *name) {
                if let Some(problem) = index_key_problem(k, value) {
                    return Err(Invalid::IndexKey {
                        attribute: name.clone(),
                        index: k.index.clone(),
                        problem,
                    });
                }
            }
        }
        if size > MAX_ITEM_BYTES as i64 {
            return Err(Invalid::ItemSize(size as usize));
        }
    }
    let attributes = expr.names.len();
    for (which, text, update) in [
        ("update", &expr.update, true),
        ("condition", &expr.condition, false),
    ] {
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(Invalid::ExpressionSize {
                which,
                bytes: text.len(),
                attributes,
            });
        }
        let count = operators(text, update);
        if count > MAX_OPERATORS {
            return Err(Invalid::Operators {
                which,
                count,
                attributes,
            });
        }
    }
    let substitutions: usize = expr
        .names
        .iter()
        .map(|(p, n)| p.len() + n.len())
        .chain(expr.values.iter().map(|(p, v)| p.len() + value_size(v)))
        .sum();
    if substitutions > MAX_SUBSTITUTION_BYTES {
        return Err(Invalid::Substitutions(substitutions));
    }
    Ok(())
}

/// What DynamoDB would reject in `v`, nested `depth` levels deep.
fn value_problem(v: &AttributeValue, depth: usize) -> Option<String> {
    use AttributeValue as V;
    match v {
        V::S(_) | V::B(_) | V::Bool(_) | V::Null(true) => None,
        V::Null(false) => Some("a NULL value must be true".into()),
        V::N(n) => number_problem(n),
        V::Ss(s) if s.is_empty() => {
            Some("an empty string set (sets cannot be empty; remove the attribute instead)".into())
        }
        V::Ns(s) if s.is_empty() => {
            Some("an empty number set (sets cannot be empty; remove the attribute instead)".into())
        }
        V::Bs(s) if s.is_empty() => {
            Some("an empty binary set (sets cannot be empty; remove the attribute instead)".into())
        }
        V::Ss(s) => {
            duplicate(s.iter().cloned()).map(|d| format!("a string set holding {d:?} twice"))
        }
        V::Bs(s) => duplicate(s.iter().map(|b| b.as_ref().to_vec()))
            .map(|_| "a binary set holding the same value twice".into()),
        V::Ns(s) => s
            .iter()
            .find_map(|n| number_problem(n).map(|p| format!("in a number set: {p}")))
            .or_else(|| {
                duplicate(
                    s.iter()
                        .map(|n| decimal(n).map(|d| (d.negative, d.digits, d.exponent))),
                )
                .map(|_| "a number set holding the same number twice".into())
            }),
        V::L(_) | V::M(_) if depth + 1 > MAX_DEPTH => Some(format!(
            "lists and maps nested more than {MAX_DEPTH} levels deep"
        )),
        V::L(l) => l.iter().find_map(|e| value_problem(e, depth + 1)),
        V::M(m) => m.iter().find_map(|(k, e)| {
            value_problem(e, depth + 1).map(|p| format!("in map key {k:?}: {p}"))
        }),
        _ => Some("a value of a type this dynbulk does not know".into()),
    }
}

fn duplicate<T: Ord>(items: impl Iterator<Item = T>) -> Option<T> {
    let mut seen = std::collections::BTreeSet::new();
    for i in items {
        if seen.contains(&i) {
            return Some(i);
        }
        seen.insert(i);
    }
    None
}

/// What index `k` would reject as its key value `v`.
fn index_key_problem(k: &IndexKey, v: &AttributeValue) -> Option<String> {
    let declared = match k.scalar {
        Scalar::S => "a string (S)",
        Scalar::N => "a number (N)",
        Scalar::B => "binary (B)",
    };
    let bytes = match (k.scalar, v) {
        (Scalar::S, AttributeValue::S(s)) => s.len(),
        (Scalar::B, AttributeValue::B(b)) => b.as_ref().len(),
        (Scalar::N, AttributeValue::N(_)) => return None,
        _ => {
            return Some(format!(
                "the table declares it {declared}, the transform sets {}",
                type_name(v)
            ))
        }
    };
    let max = if k.partition {
        MAX_PARTITION_KEY_BYTES
    } else {
        MAX_SORT_KEY_BYTES
    };
    if bytes == 0 {
        Some("a key value cannot be empty".into())
    } else if bytes > max {
        Some(format!(
            "a {bytes}-byte value is over the key limit of {max} bytes"
        ))
    } else {
        None
    }
}

fn type_name(v: &AttributeValue) -> &'static str {
    use AttributeValue as V;
    match v {
        V::S(_) => "a string (S)",
        V::N(_) => "a number (N)",
        V::B(_) => "binary (B)",
        V::Bool(_) => "a boolean (BOOL)",
        V::Null(_) => "NULL",
        V::Ss(_) => "a string set (SS)",
        V::Ns(_) => "a number set (NS)",
        V::Bs(_) => "a binary set (BS)",
        V::L(_) => "a list (L)",
        V::M(_) => "a map (M)",
        _ => "an unknown type",
    }
}

/// Operators and functions in an expression, counted as DynamoDB documents
/// them: comparators, `AND`/`OR`/`NOT`, `BETWEEN`, `IN`, `+`/`-` and every
/// function call. In an update expression the `=` of a `SET` action assigns
/// and is not an operator ("SET a = :v1 + :v2 + :v3 contains two + operators").
pub fn operators(expr: &str, update: bool) -> usize {
    let b = expr.as_bytes();
    let mut count = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'<' | b'>' => {
                count += 1;
                i += if matches!(b.get(i + 1), Some(b'=' | b'>')) {
                    2
                } else {
                    1
                };
            }
            b'=' => {
                count += usize::from(!update);
                i += 1;
            }
            b'+' | b'-' => {
                count += 1;
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'#' | b':') => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'#' | b':' | b'.'))
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = b[i..].iter().find(|c| !c.is_ascii_whitespace());
                let function = next == Some(&b'(') && !word.starts_with(['#', ':']);
                let keyword = ["AND", "OR", "NOT", "BETWEEN", "IN"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k));
                count += usize::from(function || keyword);
            }
            _ => i += 1,
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::migration::Update;
    use crate::pipeline::diff::{plan, Guard};

    fn keys() -> Vec<String> {
        vec!["pk".into()]
    }

    fn item() -> Attrs {
        HashMap::from([
            ("pk".into(), AttributeValue::S("a".into())),
            ("status".into(), AttributeValue::S("pending".into())),
        ])
    }

    fn check_set(name: &str, v: AttributeValue) -> Result<(), Invalid> {
        check_with(&[], name, v)
    }

    fn check_with(index_keys: &[IndexKey], name: &str, v: AttributeValue) -> Result<(), Invalid> {
        let change = Change::Update(Update::new().set(name, v));
        let planned = plan(
            &keys(),
            &item(),
            &BTreeSet::new(),
            &change,
            &Guard::default(),
        )
        .unwrap();
        check(index_keys, &item(), &change, &planned)
    }

    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.into())
    }

    #[test]
    fn ordinary_values_pass() {
        for v in [
            n("42"),
            n("-0.5"),
            n("1E+125"),
            n("9.9999999999999999999999999999999999999E+125"),
            n("1E-130"),
            n("-1e-130"),
            n("0.000"),
            n("12345678901234567890123456789012345678"),
            n("1234567890123456789012345678901234567800000"),
            AttributeValue::S(String::new()),
            AttributeValue::Ss(vec!["a".into(), "b".into()]),
            AttributeValue::Ns(vec!["1".into(), "2".into()]),
            AttributeValue::Null(true),
        ] {
            assert_eq!(check_set("x", v.clone()), Ok(()), "{v:?}");
        }
    }

    #[test]
    fn values_dynamodb_rejects_are_invalid() {
        for v in [
            AttributeValue::Ss(vec![]),
            AttributeValue::Ns(vec![]),
            AttributeValue::Bs(vec![]),
            AttributeValue::Ss(vec!["a".into(), "a".into()]),
            AttributeValue::Ns(vec!["1".into(), "1.0".into()]),
            n("NaN"),
            n("inf"),
            n("Infinity"),
            n("-Infinity"),
            n(""),
            n("1e"),
            n("0x10"),
            // 39 significant digits
            n("123456789012345678901234567890123456789"),
            n("1E+126"),
            n("1E-131"),
            AttributeValue::Null(false),
            AttributeValue::L(vec![AttributeValue::Ns(vec![])]),
            AttributeValue::M(HashMap::from([("k".into(), n("NaN"))])),
        ] {
            assert!(
                matches!(check_set("x", v.clone()), Err(Invalid::Value { .. })),
                "{v:?}"
            );
        }
    }

    #[test]
    fn nesting_beyond_32_levels_is_invalid() {
        let nest =
            |levels: usize| (0..levels).fold(n("1"), |inner, _| AttributeValue::L(vec![inner]));
        assert_eq!(check_set("x", nest(MAX_DEPTH)), Ok(()));
        assert!(check_set("x", nest(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn index_keys_must_have_the_declared_type_and_fit() {
        let gsi = [IndexKey {
            index: "byOwner".into(),
            attribute: "owner".into(),
            scalar: Scalar::S,
            partition: true,
        }];
        assert_eq!(
            check_with(&gsi, "owner", AttributeValue::S("bob".into())),
            Ok(())
        );
        for bad in [
            n("7"),
            AttributeValue::S(String::new()),
            AttributeValue::S("x".repeat(MAX_PARTITION_KEY_BYTES + 1)),
        ] {
            assert!(
                matches!(
                    check_with(&gsi, "owner", bad.clone()),
                    Err(Invalid::IndexKey { .. })
                ),
                "{bad:?}"
            );
        }
        // Other attributes are not index keys.
        assert_eq!(check_with(&gsi, "other", n("7")), Ok(()));
    }

    #[test]
    fn an_item_over_400_kb_after_the_update_is_invalid() {
        let big = AttributeValue::S("x".repeat(MAX_ITEM_BYTES));
        assert!(matches!(check_set("notes", big), Err(Invalid::ItemSize(_))));
        let fits = AttributeValue::S("x".repeat(MAX_ITEM_BYTES - 100));
        assert_eq!(check_set("notes", fits), Ok(()));
    }

    fn wide_item(attrs: usize) -> Attrs {
        let mut old = item();
        for i in 0..attrs {
            old.insert(format!("attribute{i:03}"), n("1"));
        }
        old
    }

    #[test]
    fn a_guard_over_the_expression_limits_is_invalid() {
        // The transform read every attribute of a wide item: each one is in the guard.
        for (attrs, ok) in [(100, true), (300, false)] {
            let old = wide_item(attrs);
            let read: BTreeSet<String> = old.keys().cloned().collect();
            let change = Change::Update(Update::new().set("status", "done"));
            let planned = plan(&keys(), &old, &read, &change, &Guard::default()).unwrap();
            let r = check(&[], &old, &change, &planned);
            assert_eq!(r.is_ok(), ok, "{attrs} attributes: {r:?}");
        }
    }

    #[test]
    fn operators_are_counted_as_dynamodb_documents_them() {
        assert_eq!(operators("SET #a = :v1 + :v2 + :v3", true), 2);
        assert_eq!(operators("SET #a = :v0, #b = :v1 REMOVE #c", true), 0);
        assert_eq!(
            operators(
                "attribute_exists(#n0) AND #n1 = :v0 AND attribute_not_exists(#n2)",
                false
            ),
            5
        );
        assert_eq!(operators("#a <> :b OR NOT (#c >= :d)", false), 4);
        assert_eq!(operators("#a BETWEEN :x AND :y", false), 2);
        // 160 guarded attributes: 160 comparators, 160 ANDs, 1 function.
        let old = wide_item(159);
        let read: BTreeSet<String> = old.keys().cloned().collect();
        let planned = plan(&keys(), &old, &read, &Change::Delete, &Guard::default()).unwrap();
        let Planned::Delete(e) = &planned else {
            panic!()
        };
        assert_eq!(operators(&e.condition, false), 160 + 160 + 1);
        assert!(matches!(
            check(&[], &old, &Change::Delete, &planned),
            Err(Invalid::Operators { .. })
        ));
    }

    #[test]
    fn set_and_remove_of_one_attribute_is_invalid() {
        // The fields are public, so an update can hold a name in both.
        let mut u = Update::new().set("status", "done");
        u.remove.insert("status".into());
        let change = Change::Update(u);
        let planned = plan(
            &keys(),
            &item(),
            &BTreeSet::new(),
            &change,
            &Guard::default(),
        )
        .unwrap();
        assert_eq!(
            check(&[], &item(), &change, &planned),
            Err(Invalid::SetAndRemove("status".into()))
        );
        // Removing an absent attribute is dropped from the write: no overlap.
        let mut u = Update::new().set("x", "1");
        u.remove.insert("x".into());
        let change = Change::Update(u);
        let planned = plan(
            &keys(),
            &item(),
            &BTreeSet::new(),
            &change,
            &Guard::default(),
        )
        .unwrap();
        assert_eq!(check(&[], &item(), &change, &planned), Ok(()));
    }
}
