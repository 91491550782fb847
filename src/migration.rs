//! What a migration is: an id, a target table, optional scan options and schema
//! step, and a per-item transform that decides a [`Change`].
//!
//! The transform sees an [`Item`], which records every attribute it reads. The
//! writer conditions its write on those attributes (and the ones it changes)
//! still holding the scanned values, so an application write that lands between
//! our read and our write is never overwritten (see the `diff` module).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{de::DeserializeOwned, Serialize};

pub use crate::dynamo::number::Number;
pub use crate::dynamo::schema::SchemaStep;

pub use crate::dynamo::value::Attrs;

/// One versioned, named change to a table's items.
///
/// Transforms must be idempotent: applied to their own output they return
/// [`Change::Keep`] (or an update that changes nothing). A run may process an
/// item more than once (after a crash, or after a write conflict).
pub trait Migration: Send + Sync {
    /// `YYYYMMDD_description`, unique; migrations run in id order.
    fn id(&self) -> &'static str;
    /// One sentence saying what the migration does and why.
    fn description(&self) -> &'static str;
    /// The table the migration targets, unless the operator passes `--table`.
    fn table(&self) -> Option<&'static str> {
        None
    }
    /// Projection, filter and read consistency for the scan.
    fn scan_options(&self) -> ScanOptions {
        ScanOptions::default()
    }
    /// A schema change applied (idempotently) before the data step.
    fn schema_step(&self) -> Option<SchemaStep> {
        None
    }
    /// A number attribute the application already uses for optimistic
    /// locking. When set (or given with `--version-attribute`), every update
    /// and delete is also conditioned on it holding the scanned value (or being
    /// absent, if it was) and increments it, so any application write that
    /// bumps the version, including one that only touches attributes the
    /// transform never read or adds new ones, makes the migration re-read and
    /// re-apply instead of writing over it.
    fn version_attribute(&self) -> Option<&str> {
        None
    }
    /// Decides what happens to one item. An `Err` sends the item to the
    /// dead-letter file; the run continues.
    fn transform(&self, item: &Item) -> Result<Change, TransformError>;
    /// A transform that runs on threads of its own (a script engine), page by
    /// page, instead of on the async worker task: `None` (the default) calls
    /// [`Migration::transform`] on the worker task, which suits transforms
    /// that take microseconds.
    fn page_transform(&self) -> Option<&dyn PageTransform> {
        None
    }
}

/// What a transform may know about the run it is part of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFacts {
    /// The table the run migrates.
    pub table: String,
    /// True in a dry run (nothing is written whatever the transform decides).
    pub dry_run: bool,
    /// The table's key attribute names (partition key first); empty when
    /// the transform runs outside a run.
    pub keys: Vec<String>,
}

/// A migration's transform run away from the async worker threads (see
/// [`Migration::page_transform`]): a page's items go over at once and come
/// back each with its decision and the reads it recorded.
pub trait PageTransform: Send + Sync {
    /// Transforms `items` in order; each comes back as the [`Item`] with its
    /// reads recorded and the decision for it.
    fn transform_page(
        &self,
        run: &RunFacts,
        items: Vec<Attrs>,
    ) -> futures::future::BoxFuture<'static, Vec<(Item, Result<Change, TransformError>)>>;
}

/// Scan options a migration may set.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Attribute names to read; `None` reads whole items. Key attributes are
    /// always added. Every attribute the transform reads or writes must be
    /// listed: an item whose transform touches another attribute is
    /// dead-lettered rather than written on a partial view.
    pub projection: Option<Vec<String>>,
    /// A filter expression, e.g. `attribute_exists(#s)`.
    pub filter: Option<String>,
    /// Names used by `filter` (`#s` -> `status`).
    pub filter_names: HashMap<String, String>,
    /// Values used by `filter` (`:v` -> value).
    pub filter_values: HashMap<String, AttributeValue>,
    /// Strongly consistent reads (twice the read cost).
    pub consistent_read: bool,
}

/// What the transform decided for one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Leave the item as it is.
    Keep,
    /// Set and remove attributes. An update that changes nothing counts as unchanged.
    Update(Update),
    /// Delete the item.
    Delete,
}

/// Attribute changes: values to set, names to remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    /// Attributes to set to a value.
    pub set: BTreeMap<String, AttributeValue>,
    /// Attributes to remove.
    pub remove: BTreeSet<String>,
}

impl Update {
    /// An empty update.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`.
    pub fn set(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        self.remove.remove(&name);
        self.set.insert(name, value.into().0);
        self
    }

    /// Removes `name`.
    pub fn remove(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.set.remove(&name);
        self.remove.insert(name);
        self
    }

    /// The update that turns `old` into `new`: every attribute that differs is
    /// set, every attribute missing from `new` is removed.
    pub fn diff(old: &Attrs, new: &Attrs) -> Self {
        let mut update = Update::new();
        for (name, value) in new {
            if !old
                .get(name)
                .is_some_and(|o| crate::dynamo::value::same_value(o, value))
            {
                update.set.insert(name.clone(), value.clone());
            }
        }
        for name in old.keys() {
            if !new.contains_key(name) {
                update.remove.insert(name.clone());
            }
        }
        update
    }

    /// True when the update sets and removes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Every attribute name the update touches.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.set.keys().chain(self.remove.iter())
    }
}

impl From<Update> for Change {
    fn from(u: Update) -> Self {
        Change::Update(u)
    }
}

/// An attribute value; `From` impls let transforms write `"active"` or `42`.
#[derive(Debug, Clone, PartialEq)]
pub struct Value(pub AttributeValue);

impl From<AttributeValue> for Value {
    fn from(v: AttributeValue) -> Self {
        Value(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value(AttributeValue::S(v.to_owned()))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value(AttributeValue::S(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value(AttributeValue::Bool(v))
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value(AttributeValue::N(v.to_string()))
    }
}
/// The explicit floating-point path: writes the shortest text that reads
/// back as `v` (prefer [`Number`] for exact values).
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value(AttributeValue::N(v.to_string()))
    }
}
impl From<Number> for Value {
    fn from(v: Number) -> Self {
        Value(AttributeValue::N(v.as_str().to_owned()))
    }
}
impl From<&Number> for Value {
    fn from(v: &Number) -> Self {
        Value(AttributeValue::N(v.as_str().to_owned()))
    }
}

/// A transform's failure for one item; recorded in the dead-letter file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(pub String);

impl TransformError {
    /// A transform error with a message.
    pub fn new(msg: impl Into<String>) -> Self {
        TransformError(msg.into())
    }
}

impl From<serde_dynamo::Error> for TransformError {
    fn from(e: serde_dynamo::Error) -> Self {
        TransformError(format!("item does not match the migration's type: {e}"))
    }
}

/// An item handed to a transform. Reads are recorded: every attribute the
/// transform looks at becomes part of the write's condition.
#[derive(Debug)]
pub struct Item {
    attrs: Attrs,
    read: Mutex<BTreeSet<String>>,
}

impl Item {
    /// Wraps scanned attributes.
    pub fn new(attrs: Attrs) -> Self {
        Item {
            attrs,
            read: Mutex::new(BTreeSet::new()),
        }
    }

    fn note(&self, name: &str) {
        self.read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
    }

    /// The attribute `name`, if present. Records the read, present or not.
    pub fn get(&self, name: &str) -> Option<&AttributeValue> {
        self.note(name);
        self.attrs.get(name)
    }

    /// The string attribute `name`; `None` when absent or not a string.
    pub fn get_s(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
    }

    /// The number attribute `name`, exactly (all of DynamoDB's 38 digits);
    /// `None` when absent or not a number.
    pub fn get_n(&self, name: &str) -> Option<Number> {
        self.get(name)
            .and_then(|v| v.as_n().ok())
            .map(|n| Number::stored(n))
    }

    /// The number attribute `name` as the nearest f64 (digits beyond about 17
    /// are lost); `None` when absent or not a number. Write an f64 back only
    /// when the value really changed: see [`Item::update_from`].
    pub fn get_f64(&self, name: &str) -> Option<f64> {
        self.get_n(name).map(|n| n.as_f64())
    }

    /// True when the attribute `name` is present. Records the read either way:
    /// a write planned on "`name` is absent" is conditioned on
    /// `attribute_not_exists(name)`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The item's attributes through the read tracker: lookups record the name
    /// looked up (present or not), whole-item access (iteration, `len`)
    /// records every attribute present.
    pub fn attrs(&self) -> AttrsView<'_> {
        AttrsView { item: self }
    }

    /// Records reads of `names` (present or not), taking the strings.
    pub(crate) fn note_reads(&self, names: impl IntoIterator<Item = String>) {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.extend(names);
    }

    fn note_all(&self) {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.extend(self.attrs.keys().cloned());
    }

    /// Deserializes the item into `T` with serde_dynamo. What deserialization
    /// read counts as read: every field name `T` looks for (present or not,
    /// aliases included, so an absent `Option` field guards the write with
    /// `attribute_not_exists`) and every attribute whose value it consumed.
    /// Attributes `T` does not have are skipped and not recorded.
    ///
    /// # Errors
    /// When the item does not match `T`'s shape.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, TransformError> {
        let read = std::cell::RefCell::new(BTreeSet::new());
        let value = crate::dynamo::typed::from_item(&self.attrs, &read);
        self.read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(read.into_inner());
        Ok(value?)
    }

    /// The update that makes the item equal to `value` in the attributes `T`
    /// knows about (attributes `T` does not have are left alone; `None` fields
    /// serialized as NULL are set to NULL, skipped fields are left alone).
    ///
    /// A number counts as unchanged when it equals the scanned one by decimal
    /// value, or when both read as the same f64: a typed field of type f64
    /// holds a scanned `0.1000000000000000000000000000000000001` as `0.1`,
    /// and writing that back would only lose digits. (A transform cannot
    /// mean to set a value an f64 cannot tell from the old one.)
    ///
    /// # Errors
    /// When `value` cannot be serialized to an item.
    pub fn update_from<T: Serialize>(&self, value: &T) -> Result<Update, TransformError> {
        let new: Attrs = serde_dynamo::to_item(value)?;
        let mut update = Update::new();
        for (name, v) in new {
            if !self
                .scanned()
                .get(&name)
                .is_some_and(|o| crate::dynamo::value::same_typed_value(o, &v))
            {
                update.set.insert(name, v);
            }
        }
        Ok(update)
    }

    /// The names the transform has read so far.
    pub fn read_set(&self) -> BTreeSet<String> {
        self.read.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The scanned attributes, without recording a read (for dynbulk itself).
    pub(crate) fn scanned(&self) -> &Attrs {
        &self.attrs
    }

    /// Unwraps into the scanned attributes.
    pub fn into_attrs(self) -> Attrs {
        self.attrs
    }

    /// Unwraps into the scanned attributes and the names read.
    pub(crate) fn into_parts(self) -> (Attrs, BTreeSet<String>) {
        let read = self.read.into_inner().unwrap_or_else(|p| p.into_inner());
        (self.attrs, read)
    }
}

/// An [`Item`]'s attributes seen through its read tracker, so that every way
/// of looking at them guards the write.
///
/// Lookups ([`get`](Self::get), [`contains_key`](Self::contains_key)) record
/// the name looked up, also when the attribute is absent: the write then
/// requires it to still be absent. Whole-item access ([`iter`](Self::iter),
/// [`keys`](Self::keys), [`len`](Self::len), [`to_attrs`](Self::to_attrs))
/// records every attribute present, so the write requires each of them to be
/// unchanged; it **cannot** guard against an attribute the application adds
/// between the scan and the write (a condition can only name attributes it
/// knows of). A transform whose decision depends on the whole item should
/// use a version attribute ([`Migration::version_attribute`]).
#[derive(Debug, Clone, Copy)]
pub struct AttrsView<'a> {
    item: &'a Item,
}

impl<'a> AttrsView<'a> {
    /// The attribute `name`, if present. Records the read, present or not.
    pub fn get(&self, name: &str) -> Option<&'a AttributeValue> {
        self.item.get(name)
    }

    /// True when `name` is present. Records the read, present or not.
    pub fn contains_key(&self, name: &str) -> bool {
        self.item.contains(name)
    }

    /// Every attribute. Records every attribute present (not ones added later).
    pub fn iter(&self) -> std::collections::hash_map::Iter<'a, String, AttributeValue> {
        self.item.note_all();
        self.item.attrs.iter()
    }

    /// Every attribute name. Records every attribute present (not ones added later).
    pub fn keys(&self) -> std::collections::hash_map::Keys<'a, String, AttributeValue> {
        self.item.note_all();
        self.item.attrs.keys()
    }

    /// How many attributes the item has. Records every attribute present.
    pub fn len(&self) -> usize {
        self.item.note_all();
        self.item.attrs.len()
    }

    /// True when the item has no attributes. Records every attribute present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the whole map (e.g. for [`Update::diff`]). Records every
    /// attribute present (not ones added later).
    pub fn to_attrs(&self) -> Attrs {
        self.item.note_all();
        self.item.attrs.clone()
    }
}

impl<'a> IntoIterator for AttrsView<'a> {
    type Item = (&'a String, &'a AttributeValue);
    type IntoIter = std::collections::hash_map::Iter<'a, String, AttributeValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Checks that an id has the `YYYYMMDD_description` shape.
pub fn valid_id(id: &str) -> bool {
    let (date, rest) = match id.split_once('_') {
        Some(p) => p,
        None => return false,
    };
    date.len() == 8
        && date.bytes().all(|b| b.is_ascii_digit())
        && chrono::NaiveDate::parse_from_str(date, "%Y%m%d").is_ok()
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    #[test]
    fn reads_are_recorded_even_for_missing_attributes() {
        let item = Item::new(HashMap::from([("a".into(), s("1"))]));
        assert_eq!(item.get_s("a"), Some("1"));
        assert!(item.get("missing").is_none());
        assert_eq!(
            item.read_set(),
            BTreeSet::from(["a".to_string(), "missing".to_string()])
        );
    }

    #[test]
    fn lookups_through_the_view_record_misses_and_iteration_records_all() {
        let item = Item::new(HashMap::from([("a".into(), s("1")), ("b".into(), s("2"))]));
        assert!(!item.attrs().contains_key("holdUntil"));
        assert!(!item.contains("other"));
        assert_eq!(
            item.read_set(),
            BTreeSet::from(["holdUntil".to_string(), "other".to_string()])
        );
        assert_eq!(item.attrs().iter().count(), 2);
        assert_eq!(
            item.read_set(),
            BTreeSet::from(["a", "b", "holdUntil", "other"].map(String::from))
        );
    }

    #[test]
    fn typed_parse_records_the_fields_of_the_type() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Order {
            status: Option<String>,
        }
        let item = Item::new(HashMap::from([
            ("status".into(), s("x")),
            ("blob".into(), s("y")),
        ]));
        let o: Order = item.parse().unwrap();
        assert_eq!(o.status.as_deref(), Some("x"));
        assert_eq!(item.read_set(), BTreeSet::from(["status".to_string()]));
    }

    #[test]
    fn typed_parse_records_absent_optional_and_skipped_fields() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Order {
            #[serde(skip_serializing_if = "Option::is_none")]
            hold_until: Option<String>,
            #[serde(alias = "state")]
            status: String,
            #[serde(skip_serializing)]
            internal: Option<String>,
        }
        let item = Item::new(HashMap::from([
            ("state".into(), s("x")),
            ("internal".into(), s("y")),
            ("blob".into(), s("z")),
        ]));
        let o: Order = item.parse().unwrap();
        assert_eq!(o.status, "x");
        assert_eq!(o.internal.as_deref(), Some("y"));
        let read = item.read_set();
        for name in ["hold_until", "state", "status", "internal"] {
            assert!(read.contains(name), "{name} not in {read:?}");
        }
        assert!(
            !read.contains("blob"),
            "an attribute Order lacks is not a read"
        );
    }

    #[test]
    fn numbers_are_read_exactly_and_f64_only_on_request() {
        let tenth = "0.1000000000000000000000000000000000001";
        let item = Item::new(HashMap::from([(
            "total".into(),
            AttributeValue::N(tenth.into()),
        )]));
        assert_eq!(item.get_n("total").unwrap().as_str(), tenth);
        assert_eq!(item.get_f64("total"), Some(0.1));
        assert_eq!(item.get_n("missing"), None);
    }

    #[test]
    fn update_from_does_not_rewrite_what_an_f64_could_not_hold() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Order {
            total: f64,
            lines: Vec<f64>,
            count: i64,
        }
        let n = |v: &str| AttributeValue::N(v.into());
        let item = Item::new(HashMap::from([
            ("total".into(), n("0.1000000000000000000000000000000000001")),
            (
                "lines".into(),
                AttributeValue::L(vec![n("1.00000000000000000001"), n("2")]),
            ),
            ("count".into(), n("3")),
        ]));
        let order: Order = item.parse().unwrap();
        assert!(item.update_from(&order).unwrap().is_empty());
        let changed = Order {
            total: 0.2,
            ..order
        };
        let u = item.update_from(&changed).unwrap();
        assert_eq!(u.set, BTreeMap::from([("total".to_string(), n("0.2"))]));
    }

    #[test]
    fn diff_sets_changed_and_removes_missing() {
        let old = HashMap::from([
            ("a".into(), s("1")),
            ("b".into(), s("2")),
            ("c".into(), s("3")),
        ]);
        let new = HashMap::from([
            ("a".into(), s("1")),
            ("b".into(), s("20")),
            ("d".into(), s("4")),
        ]);
        let u = Update::diff(&old, &new);
        assert_eq!(
            u.set,
            BTreeMap::from([("b".to_string(), s("20")), ("d".to_string(), s("4"))])
        );
        assert_eq!(u.remove, BTreeSet::from(["c".to_string()]));
    }

    #[test]
    fn ids_must_be_dated_and_snake_case() {
        assert!(valid_id("20241220_add_status_category_fields"));
        assert!(!valid_id("20241320_bad_month"));
        assert!(!valid_id("2024122_short"));
        assert!(!valid_id("20241220_"));
        assert!(!valid_id("20241220_Upper"));
        assert!(!valid_id("nodate"));
    }
}
