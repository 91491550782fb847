//! DynamoDB attribute values to JavaScript values and back, in the shapes the
//! AWS DocumentClient uses: strings, numbers, booleans, `null`, arrays,
//! plain objects, `Set`s of strings, numbers or binary, and `Uint8Array` for
//! binary.
//!
//! Numbers are lossless. A DynamoDB number becomes a JS number only when the
//! number reads back as the same decimal value; otherwise (more digits than a
//! double holds, or out of its range) it becomes a `NumberValue` that keeps
//! the text (comparable through `valueOf`, printable through `toString`,
//! written back unchanged). A JS number written by a script is stored as its
//! shortest exact decimal text; NaN and the infinities fail the item.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use rquickjs::{Array, Constructor, Ctx, Function, Object, TypedArray, Value};

use crate::dynamo::number::{canonical, problem};

/// The constructors a conversion needs, looked up once per engine.
#[derive(Clone)]
pub struct Shapes<'js> {
    /// `Set`.
    pub set: Constructor<'js>,
    /// `String` (a BigInt's decimal text).
    pub string: Function<'js>,
    /// dynbulk's `NumberValue`.
    pub number_value: Constructor<'js>,
    /// `(set) => Array.from(set)`.
    pub set_values: Function<'js>,
    /// `Object.prototype`: a plain object's prototype.
    pub object_proto: Object<'js>,
}

impl<'js> Shapes<'js> {
    /// The constructors, from the global object and the prelude's `internals`.
    ///
    /// # Errors
    /// When the prelude lacks a member (a bug).
    pub fn of(ctx: &Ctx<'js>, internals: &Object<'js>) -> rquickjs::Result<Self> {
        let globals = ctx.globals();
        let object: Object = globals.get("Object")?;
        Ok(Shapes {
            set: globals.get("Set")?,
            string: globals.get("String")?,
            number_value: internals.get("NumberValue")?,
            set_values: internals.get("setValues")?,
            object_proto: object.get("prototype")?,
        })
    }
}

/// Why a JS value cannot be stored.
pub type ValueError = String;

/// The JS number for DynamoDB number text, when it is exactly that number.
pub fn exact_f64(text: &str) -> Option<f64> {
    // Integers up to 2^53 are exact: the common case, without formatting.
    if let Ok(i) = text.parse::<i64>() {
        return (i.unsigned_abs() <= 1 << 53).then_some(i as f64);
    }
    // A plain decimal of at most 15 digits is exact too: a double holds any
    // 15 significant digits (DBL_DIG), so it reads back as the same decimal.
    if plain_decimal_digits(text).is_some_and(|d| d <= 15) {
        return text.parse().ok();
    }
    let v: f64 = text.parse().ok()?;
    let back = crate::dynamo::number::Number::from_f64(v)?;
    (canonical(back.as_str()) == canonical(text)).then_some(v)
}

/// The number of digits of `-123.45`-shaped text (no exponent); `None` for
/// any other shape.
fn plain_decimal_digits(text: &str) -> Option<usize> {
    let mut digits = 0;
    let mut dot = false;
    for b in text.strip_prefix('-').unwrap_or(text).bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' if !dot => dot = true,
            _ => return None,
        }
    }
    (digits > 0).then_some(digits)
}

/// Gives `object` an own, ordinary (writable, enumerable, configurable)
/// property `name`. Defined, not assigned: an assignment would look for a
/// setter up the prototype chain on every attribute, and an attribute named
/// `__proto__` would change the object's prototype instead of being one.
///
/// # Errors
/// Only when the engine cannot allocate.
pub fn define<'js>(object: &Object<'js>, name: &str, value: Value<'js>) -> rquickjs::Result<()> {
    object.prop(
        name,
        rquickjs::object::Property::from(value)
            .writable()
            .enumerable()
            .configurable(),
    )
}

/// An attribute value as a JS value.
///
/// # Errors
/// Only when the engine cannot allocate (its memory limit).
pub fn to_js<'js>(
    ctx: &Ctx<'js>,
    shapes: &Shapes<'js>,
    v: &AttributeValue,
) -> rquickjs::Result<Value<'js>> {
    use AttributeValue as V;
    Ok(match v {
        V::S(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        V::N(n) => number_to_js(ctx, shapes, n)?,
        V::Bool(b) => Value::new_bool(ctx.clone(), *b),
        V::Null(_) => Value::new_null(ctx.clone()),
        V::B(b) => TypedArray::<u8>::new_copy(ctx.clone(), b.as_ref())?.into_value(),
        V::L(list) => {
            let array = Array::new(ctx.clone())?;
            for (i, v) in list.iter().enumerate() {
                array.set(i, to_js(ctx, shapes, v)?)?;
            }
            array.into_value()
        }
        V::M(map) => {
            let object = Object::new(ctx.clone())?;
            for (k, v) in map {
                define(&object, k, to_js(ctx, shapes, v)?)?;
            }
            object.into_value()
        }
        V::Ss(items) => {
            let array = Array::new(ctx.clone())?;
            for (i, s) in items.iter().enumerate() {
                array.set(i, s.as_str())?;
            }
            shapes.set.construct((array,))?
        }
        V::Ns(items) => {
            let array = Array::new(ctx.clone())?;
            for (i, n) in items.iter().enumerate() {
                array.set(i, number_to_js(ctx, shapes, n)?)?;
            }
            shapes.set.construct((array,))?
        }
        V::Bs(items) => {
            let array = Array::new(ctx.clone())?;
            for (i, b) in items.iter().enumerate() {
                array.set(i, TypedArray::<u8>::new_copy(ctx.clone(), b.as_ref())?)?;
            }
            shapes.set.construct((array,))?
        }
        // A type newer than this build: hand the script its text form.
        other => rquickjs::String::from_str(ctx.clone(), &format!("{other:?}"))?.into_value(),
    })
}

fn number_to_js<'js>(
    ctx: &Ctx<'js>,
    shapes: &Shapes<'js>,
    n: &str,
) -> rquickjs::Result<Value<'js>> {
    match exact_f64(n) {
        Some(v) => Ok(Value::new_number(ctx.clone(), v)),
        None => shapes.number_value.construct((n,)),
    }
}

/// A JS value as an attribute value.
///
/// # Errors
/// A value DynamoDB cannot store (`undefined`, a function, NaN, an empty or
/// mixed `Set`, a class instance other than the shapes above), named by its
/// path (`address.lines[2]`).
///
/// One function on purpose (about 100 lines): one case per JS shape, in the
/// order the shapes must be told apart (a `NumberValue` and a `Set` are
/// objects too), reads best as the one table it is.
pub fn from_js<'js>(
    shapes: &Shapes<'js>,
    v: &Value<'js>,
    path: &mut String,
) -> Result<AttributeValue, ValueError> {
    use AttributeValue as V;
    if let Some(s) = v.as_string() {
        return Ok(V::S(s.to_string().map_err(|e| js_error(path, e))?));
    }
    if let Some(i) = v.as_int() {
        return Ok(V::N(i.to_string()));
    }
    if let Some(f) = v.as_float() {
        return number_from_f64(f)
            .map(V::N)
            .map_err(|e| format!("{path}: {e}"));
    }
    if let Some(b) = v.as_bool() {
        return Ok(V::Bool(b));
    }
    if v.is_null() {
        return Ok(V::Null(true));
    }
    if v.is_undefined() {
        return Err(format!(
            "{path} is undefined, which DynamoDB cannot store (to remove an attribute, `delete item.name`)"
        ));
    }
    if v.is_big_int() {
        let text: String = shapes
            .string
            .call((v.clone(),))
            .map_err(|e| js_error(path, e))?;
        return checked_number(text)
            .map(V::N)
            .map_err(|e| format!("{path}: {e}"));
    }
    if v.is_array() {
        let array = v.as_array().expect("checked is_array");
        let mut list = Vec::with_capacity(array.len());
        for i in 0..array.len() {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let item: Value = array.get(i).map_err(|e| js_error(path, e))?;
            list.push(from_js(shapes, &item, path)?);
            path.truncate(len);
        }
        return Ok(V::L(list));
    }
    let Some(object) = v.as_object() else {
        return Err(format!(
            "{path} is a {}, which DynamoDB cannot store",
            v.type_name()
        ));
    };
    if v.is_function() {
        return Err(format!("{path} is a function, which DynamoDB cannot store"));
    }
    if let Some(bytes) = object.as_typed_array::<u8>() {
        return typed_bytes(bytes)
            .map(|b| V::B(Blob::new(b)))
            .ok_or_else(|| format!("{path} is a detached Uint8Array"));
    }
    if object.is_instance_of(&shapes.number_value) {
        let text: String = object.get("value").map_err(|e| js_error(path, e))?;
        return checked_number(text)
            .map(V::N)
            .map_err(|e| format!("{path}: {e}"));
    }
    if object.is_instance_of(&shapes.set) {
        return set_from_js(shapes, object, path);
    }
    if object.get_prototype().as_ref() != Some(&shapes.object_proto)
        && object.get_prototype().is_some()
    {
        let name: String = object
            .get::<_, Object>("constructor")
            .and_then(|c| c.get("name"))
            .unwrap_or_else(|_| "object".into());
        return Err(format!(
            "{path} is a {name}, which DynamoDB cannot store (use a plain object, an array, a Set, \
             a Uint8Array, a string, a number or a NumberValue)"
        ));
    }
    let mut map = HashMap::new();
    for key in object.keys::<String>() {
        let key = key.map_err(|e| js_error(path, e))?;
        let value: Value = object.get(key.as_str()).map_err(|e| js_error(path, e))?;
        let len = path.len();
        path.push('.');
        path.push_str(&key);
        let converted = from_js(shapes, &value, path)?;
        path.truncate(len);
        map.insert(key, converted);
    }
    Ok(V::M(map))
}

fn js_error(path: &str, e: rquickjs::Error) -> ValueError {
    format!("{path}: {e}")
}

fn typed_bytes(bytes: &TypedArray<'_, u8>) -> Option<Vec<u8>> {
    // SAFETY: the bytes are copied before any JavaScript runs again.
    bytes.as_raw().map(|raw| unsafe { raw.as_ref() }.to_vec())
}

fn set_from_js<'js>(
    shapes: &Shapes<'js>,
    set: &Object<'js>,
    path: &mut String,
) -> Result<AttributeValue, ValueError> {
    let values: Array = shapes
        .set_values
        .call((set.clone(),))
        .map_err(|e| js_error(path, e))?;
    if values.is_empty() {
        return Err(format!(
            "{path} is an empty Set, which DynamoDB cannot store (remove the attribute instead)"
        ));
    }
    let mut converted = Vec::with_capacity(values.len());
    for i in 0..values.len() {
        let v: Value = values.get(i).map_err(|e| js_error(path, e))?;
        let len = path.len();
        path.push_str(&format!("<{i}>"));
        converted.push(from_js(shapes, &v, path)?);
        path.truncate(len);
    }
    use AttributeValue as V;
    let mixed = || {
        format!(
            "{path} is a Set that mixes types; DynamoDB sets hold only strings, only numbers or only binary"
        )
    };
    Ok(match &converted[0] {
        V::S(_) => V::Ss(
            converted
                .into_iter()
                .map(|v| match v {
                    V::S(s) => Ok(s),
                    _ => Err(mixed()),
                })
                .collect::<Result<_, _>>()?,
        ),
        V::N(_) => V::Ns(
            converted
                .into_iter()
                .map(|v| match v {
                    V::N(s) => Ok(s),
                    _ => Err(mixed()),
                })
                .collect::<Result<_, _>>()?,
        ),
        V::B(_) => V::Bs(
            converted
                .into_iter()
                .map(|v| match v {
                    V::B(b) => Ok(b),
                    _ => Err(mixed()),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            return Err(format!(
                "{path} is a Set of something other than strings, numbers or Uint8Arrays"
            ))
        }
    })
}

/// The shortest decimal text that reads back as `v`.
///
/// # Errors
/// NaN, the infinities and numbers outside DynamoDB's range.
pub fn number_from_f64(v: f64) -> Result<String, String> {
    if !v.is_finite() {
        return Err(format!(
            "{v} is not a number DynamoDB can store (NaN and infinities cannot be stored)"
        ));
    }
    crate::dynamo::number::Number::from_f64(v)
        .map(|n| n.as_str().to_owned())
        .ok_or_else(|| format!("{v:e} is outside the range of DynamoDB numbers"))
}

fn checked_number(text: String) -> Result<String, String> {
    match problem(&text) {
        Some(p) => Err(p),
        None => Ok(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_a_js_number_only_when_exact() {
        assert_eq!(exact_f64("12"), Some(12.0));
        assert_eq!(exact_f64("1234.5"), Some(1234.5));
        assert_eq!(exact_f64("-12345678901234.5"), Some(-12345678901234.5));
        assert_eq!(exact_f64("0.12345678901234567"), None);
        assert_eq!(exact_f64("12.50"), Some(12.5));
        assert_eq!(exact_f64("0.1"), Some(0.1));
        assert_eq!(exact_f64("-3e-7"), Some(-3e-7));
        assert_eq!(exact_f64("9007199254740993"), None);
        assert_eq!(exact_f64("0.1000000000000000000000000000000000001"), None);
        assert_eq!(exact_f64("1E+125"), Some(1e125));
        assert_eq!(exact_f64("1E-130"), Some(1e-130));
    }

    #[test]
    fn js_numbers_are_written_in_their_shortest_exact_form() {
        assert_eq!(number_from_f64(0.1 + 0.2).unwrap(), "0.30000000000000004");
        assert_eq!(number_from_f64(3.0).unwrap(), "3");
        assert_eq!(
            number_from_f64(1e300).unwrap_err(),
            "1e300 is outside the range of DynamoDB numbers"
        );
        assert!(number_from_f64(f64::NAN).is_err());
        assert!(number_from_f64(f64::INFINITY).is_err());
    }
}
