//! DynamoDB's attribute values as dynbulk uses them: the item type, sizes as
//! DynamoDB counts them (for capacity estimates and the 400 KB limit), and
//! equality as DynamoDB stores values (for the write guard and "did the
//! transform change this").

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::number::canonical;

/// A DynamoDB item as the SDK represents it.
pub type Attrs = HashMap<String, AttributeValue>;

/// An item's size as DynamoDB bills it: attribute names plus values.
pub fn item_size(item: &Attrs) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

/// One attribute value's size as DynamoDB bills it.
pub fn value_size(v: &AttributeValue) -> usize {
    use AttributeValue as V;
    match v {
        V::S(s) => s.len(),
        V::N(n) => n.len().div_ceil(2) + 1,
        V::B(b) => b.as_ref().len(),
        V::Bool(_) | V::Null(_) => 1,
        V::Ss(s) => s.iter().map(String::len).sum(),
        V::Ns(s) => s.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        V::Bs(s) => s.iter().map(|b| b.as_ref().len()).sum(),
        V::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        V::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        _ => 0,
    }
}

/// [`same_value`], or numbers (also inside lists and maps) that read as the
/// same f64: what a typed (serde) struct with f64 fields gives back for a
/// number it did not change. Used for updates computed from typed values, so
/// that digits an f64 cannot hold are never overwritten by the f64's text.
pub fn same_typed_value(old: &AttributeValue, new: &AttributeValue) -> bool {
    use AttributeValue as V;
    match (old, new) {
        (V::N(x), V::N(y)) => {
            same_value(old, new)
                || matches!((x.parse::<f64>(), y.parse::<f64>()), (Ok(a), Ok(b)) if a == b && a.is_finite())
        }
        (V::L(x), V::L(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_typed_value(a, b))
        }
        (V::M(x), V::M(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_typed_value(v, w)))
        }
        _ => same_value(old, new),
    }
}

/// Equality as DynamoDB stores values: numbers compare by value, since DynamoDB
/// normalizes them ("3.50" is stored and returned as "3.5"); lists and maps
/// compare element by element.
pub fn same_value(a: &AttributeValue, b: &AttributeValue) -> bool {
    use AttributeValue as V;
    match (a, b) {
        (V::N(x), V::N(y)) => canonical(x) == canonical(y),
        (V::Ns(x), V::Ns(y)) => {
            let mut x: Vec<_> = x.iter().map(|n| canonical(n)).collect();
            let mut y: Vec<_> = y.iter().map(|n| canonical(n)).collect();
            x.sort();
            y.sort();
            x == y
        }
        (V::Ss(x), V::Ss(y)) => {
            let (mut x, mut y) = (x.clone(), y.clone());
            x.sort();
            y.sort();
            x == y
        }
        (V::L(x), V::L(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b)),
        (V::M(x), V::M(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}
