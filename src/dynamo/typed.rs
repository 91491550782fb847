//! Typed access to an item ([`crate::migration::Item::parse`]): serde
//! deserialization that records what the type actually read.
//!
//! serde_dynamo does the conversions; this module wraps it so that the read
//! set holds every field name the type looked for (from serde's field list,
//! so an absent `Option` field or an absent alias guards the write with
//! `attribute_not_exists`) and every attribute whose value deserialization
//! consumed (an alias that was present, a `skip_serializing` field). Attributes
//! the type does not know, which serde skips with `IgnoredAny`, are not
//! recorded: the transform did not look at them.

use std::cell::RefCell;
use std::collections::{hash_map, BTreeSet};

use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde_dynamo::Error;

use crate::dynamo::value::Attrs;

/// Deserializes `attrs` into `T`, adding what `T` read to `read`.
///
/// # Errors
/// When the item does not match `T`'s shape.
pub(crate) fn from_item<T: DeserializeOwned>(
    attrs: &Attrs,
    read: &RefCell<BTreeSet<String>>,
) -> Result<T, Error> {
    T::deserialize(ItemDe { attrs, read })
}

/// The item as a whole: a map.
struct ItemDe<'a> {
    attrs: &'a Attrs,
    read: &'a RefCell<BTreeSet<String>>,
}

impl<'de> de::Deserializer<'de> for ItemDe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Entries {
            iter: self.attrs.iter(),
            value: None,
            read: self.read,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Every field the type looks for, present or not.
        self.read
            .borrow_mut()
            .extend(fields.iter().map(|f| (*f).to_owned()));
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map enum identifier
    }
}

/// The item's attributes, one at a time.
struct Entries<'a> {
    iter: hash_map::Iter<'a, String, AttributeValue>,
    value: Option<(&'a String, &'a AttributeValue)>,
    read: &'a RefCell<BTreeSet<String>>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((name, value)) => {
                self.value = Some((name, value));
                seed.deserialize(name.clone().into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (name, value) = self
            .value
            .take()
            .ok_or_else(|| <Error as de::Error>::custom("a value asked for before its key"))?;
        seed.deserialize(ValueDe {
            name,
            value,
            read: self.read,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// One attribute's value: serde_dynamo's deserializer, recording the name
/// unless the type skips the value.
struct ValueDe<'a> {
    name: &'a String,
    value: &'a AttributeValue,
    read: &'a RefCell<BTreeSet<String>>,
}

impl ValueDe<'_> {
    fn inner(self) -> serde_dynamo::Deserializer {
        self.read.borrow_mut().insert(self.name.clone());
        serde_dynamo::Deserializer::from_attribute_value(self.value.clone().into())
    }
}

macro_rules! forward {
    ($($method:ident ( $($arg:ident : $ty:ty),* );)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Error> {
                self.inner().$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for ValueDe<'_> {
    type Error = Error;

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // Skipped: an attribute the type does not have. Not a read.
        visitor.visit_unit()
    }

    forward! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    fn parse<T: DeserializeOwned>(attrs: &Attrs) -> (T, BTreeSet<String>) {
        let read = RefCell::new(BTreeSet::new());
        let v = from_item(attrs, &read).unwrap();
        (v, read.into_inner())
    }

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn absent_option_fields_are_recorded() {
        #[derive(serde::Deserialize)]
        struct Order {
            status: String,
            #[serde(default)]
            hold_until: Option<String>,
        }
        let attrs = HashMap::from([("status".into(), s("x")), ("other".into(), s("y"))]);
        let (o, read): (Order, _) = parse(&attrs);
        assert_eq!(o.status, "x");
        assert!(o.hold_until.is_none());
        assert_eq!(read, names(&["hold_until", "status"]));
    }

    #[test]
    fn aliases_present_or_absent_are_recorded() {
        #[derive(serde::Deserialize)]
        struct Order {
            #[serde(alias = "state", alias = "orderStatus")]
            status: String,
        }
        let attrs = HashMap::from([("state".into(), s("x"))]);
        let (o, read): (Order, _) = parse(&attrs);
        assert_eq!(o.status, "x");
        assert!(read.contains("state"), "{read:?}");
        assert!(read.contains("status"), "{read:?}");
        // serde's field list names aliases too, so an absent alias guards.
        assert!(read.contains("orderStatus"), "{read:?}");
    }

    #[test]
    fn skip_serializing_fields_are_recorded() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Order {
            status: String,
            #[serde(skip_serializing)]
            secret: String,
        }
        let attrs = HashMap::from([("status".into(), s("x")), ("secret".into(), s("y"))]);
        let (o, read): (Order, _) = parse(&attrs);
        assert_eq!(o.secret, "y");
        assert_eq!(read, names(&["secret", "status"]));
    }

    #[test]
    fn maps_and_flatten_record_what_they_consume() {
        let attrs = HashMap::from([("a".into(), s("1")), ("b".into(), s("2"))]);
        let (m, read): (HashMap<String, String>, _) = parse(&attrs);
        assert_eq!(m.len(), 2);
        assert_eq!(read, names(&["a", "b"]));

        #[derive(serde::Deserialize)]
        struct Order {
            a: String,
            #[serde(flatten)]
            rest: HashMap<String, String>,
        }
        let (o, read): (Order, _) = parse(&attrs);
        assert_eq!(o.a, "1");
        assert_eq!(o.rest.len(), 1);
        assert_eq!(read, names(&["a", "b"]));
    }
}
