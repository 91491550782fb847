//! The dead-letter file: one JSON line per failed item (table, migration, key in
//! DynamoDB JSON, error, time), so failures can be inspected and replayed.
//! The file is created on the first failure only, readable by its owner only
//! (keys can be personal data).
//!
//! A record is handed to the operating system before the item's page is
//! acknowledged; the checkpointer calls [`DeadLetter::sync`] before it saves a
//! checkpoint past a page with failures, so a checkpoint never moves past a
//! dead letter that a crash of the machine could still lose.

use std::path::{Path, PathBuf};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};

/// Appends failures to a JSON-lines file.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    file: Mutex<Option<Sink>>,
}

/// The open file and what is not yet on disk.
#[derive(Debug)]
struct Sink {
    file: tokio::fs::File,
    /// Records written since the last sync.
    unsynced: bool,
    /// The file was created by this run: its directory entry needs a sync too.
    created: bool,
}

impl DeadLetter {
    /// A dead-letter sink writing to `path` (appending) once something fails.
    /// A relative path is made absolute against the current directory, so
    /// that the run's state names a file a later attempt can find.
    pub fn new(path: PathBuf) -> Self {
        let path = std::path::absolute(&path).unwrap_or(path);
        DeadLetter {
            path,
            file: Mutex::new(None),
        }
    }

    /// Where failures go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::io(
            format!("{what} dead-letter file {}", self.path.display()),
            e,
        )
    }

    /// Records one failed item: the line is written and flushed to the
    /// operating system before this returns; [`DeadLetter::sync`] puts it on disk.
    ///
    /// # Errors
    /// When the file cannot be created or written: losing the record of a
    /// failure is not acceptable, so the run stops.
    pub async fn record(
        &self,
        table: &str,
        migration: &str,
        key: &Attrs,
        error: &str,
    ) -> Result<()> {
        let line = json!({
            "table": table,
            "migration": migration,
            "key": to_json(key),
            "error": error,
            "at": chrono::Utc::now().to_rfc3339(),
        });
        let mut text = line.to_string();
        text.push('\n');
        let mut guard = self.file.lock().await;
        if guard.is_none() {
            let created = !tokio::fs::try_exists(&self.path).await.unwrap_or(false);
            let mut options = tokio::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            options.mode(0o600);
            let file = options
                .open(&self.path)
                .await
                .map_err(|e| self.io("opening", e))?;
            *guard = Some(Sink {
                file,
                unsynced: false,
                created,
            });
        }
        let sink = guard.as_mut().expect("opened above");
        sink.unsynced = true;
        sink.file
            .write_all(text.as_bytes())
            .await
            .map_err(|e| self.io("writing", e))?;
        sink.file.flush().await.map_err(|e| self.io("writing", e))
    }

    /// Puts every record written so far on disk (fsync), and the file's
    /// directory entry when this run created it. Cheap when nothing was
    /// written since the last call.
    ///
    /// # Errors
    /// When the file or its directory cannot be synced: the checkpoint must
    /// then not move past the failures.
    pub async fn sync(&self) -> Result<()> {
        let mut guard = self.file.lock().await;
        let Some(sink) = guard.as_mut() else {
            return Ok(());
        };
        if !sink.unsynced {
            return Ok(());
        }
        sink.file
            .sync_data()
            .await
            .map_err(|e| self.io("syncing", e))?;
        if sink.created {
            // A new file's name is only durable once its directory is synced.
            #[cfg(unix)]
            if let Some(dir) = self.path.parent() {
                let dir = tokio::fs::File::open(dir)
                    .await
                    .map_err(|e| self.io("opening the directory of", e))?;
                dir.sync_all()
                    .await
                    .map_err(|e| self.io("syncing the directory of", e))?;
            }
            sink.created = false;
        }
        sink.unsynced = false;
        Ok(())
    }

    /// Whether any failure was recorded through this sink.
    pub async fn has_records(&self) -> bool {
        self.file.lock().await.is_some()
    }

    /// Whether every record written so far has been synced to disk.
    pub async fn is_synced(&self) -> bool {
        self.file.lock().await.as_ref().is_none_or(|s| !s.unsynced)
    }
}

/// Renders an item in DynamoDB JSON (`{"pk": {"S": "a"}}`), the format the AWS
/// CLI accepts, so keys are typed and replayable.
pub fn to_json(item: &Attrs) -> Value {
    let mut m = Map::new();
    let mut names: Vec<_> = item.keys().collect();
    names.sort();
    for k in names {
        m.insert(k.clone(), value_json(&item[k]));
    }
    Value::Object(m)
}

/// One attribute value in DynamoDB JSON.
pub fn value_json(v: &AttributeValue) -> Value {
    use aws_smithy_types::base64::encode;
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::B(b) => json!({ "B": encode(b.as_ref()) }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::Bs(v) => {
            json!({ "BS": v.iter().map(|b| encode(b.as_ref())).collect::<Vec<_>>() })
        }
        AttributeValue::L(l) => json!({ "L": l.iter().map(value_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": to_json(m) }),
        _ => json!({ "UNKNOWN": format!("{v:?}") }),
    }
}

/// Parses an item in DynamoDB JSON, as [`to_json`] renders it.
///
/// # Errors
/// A sentence naming what is not DynamoDB JSON.
pub fn from_json(value: &Value) -> std::result::Result<Attrs, String> {
    let Value::Object(m) = value else {
        return Err(format!("expected an object of attributes, found {value}"));
    };
    m.iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                value_from_json(v).map_err(|e| format!("attribute {k:?}: {e}"))?,
            ))
        })
        .collect()
}

/// Parses one attribute value in DynamoDB JSON (`{"S": "a"}`), as
/// [`value_json`] renders it.
///
/// # Errors
/// A sentence naming what is not DynamoDB JSON.
pub fn value_from_json(v: &Value) -> std::result::Result<AttributeValue, String> {
    use aws_smithy_types::base64::decode;
    use aws_smithy_types::Blob;
    let bad = || format!("{v} is not a DynamoDB JSON value like {{\"S\": \"text\"}}");
    let Some((tag, inner)) = v
        .as_object()
        .filter(|m| m.len() == 1)
        .and_then(|m| m.iter().next())
    else {
        return Err(bad());
    };
    let string = |x: &Value| x.as_str().map(str::to_owned).ok_or_else(bad);
    let strings = |x: &Value| -> std::result::Result<Vec<String>, String> {
        x.as_array().ok_or_else(bad)?.iter().map(string).collect()
    };
    let blob = |x: &Value| -> std::result::Result<Blob, String> {
        decode(string(x)?)
            .map(Blob::new)
            .map_err(|e| format!("bad base64 in {v}: {e}"))
    };
    Ok(match tag.as_str() {
        "S" => AttributeValue::S(string(inner)?),
        "N" => AttributeValue::N(string(inner)?),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or_else(bad)?),
        "NULL" => AttributeValue::Null(true),
        "B" => AttributeValue::B(blob(inner)?),
        "SS" => AttributeValue::Ss(strings(inner)?),
        "NS" => AttributeValue::Ns(strings(inner)?),
        "BS" => AttributeValue::Bs(
            inner
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(blob)
                .collect::<std::result::Result<_, _>>()?,
        ),
        "L" => AttributeValue::L(
            inner
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(value_from_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        "M" => AttributeValue::M(from_json(inner)?),
        _ => return Err(bad()),
    })
}

/// One line of a dead-letter file, read back for `dynbulk replay`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Line number in the file (1-based).
    pub line: u64,
    /// The table the item belongs to.
    pub table: String,
    /// The migration that failed on it.
    pub migration: String,
    /// The item's key.
    pub key: Attrs,
    /// Why it failed.
    pub error: String,
}

/// Parses one line of a dead-letter file (`line` is its 1-based number).
///
/// # Errors
/// A sentence naming what is wrong with the line.
pub fn parse_record(line: u64, text: &str) -> std::result::Result<Record, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no {name:?} string"))
    };
    let key = from_json(v.get("key").ok_or("no \"key\" object")?)?;
    if key.is_empty() {
        return Err("an empty \"key\"".into());
    }
    Ok(Record {
        line,
        table: field("table")?,
        migration: field("migration")?,
        key,
        error: v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_render_as_typed_dynamodb_json() {
        let key: Attrs = HashMap::from([
            ("pk".into(), AttributeValue::S("a".into())),
            ("sk".into(), AttributeValue::N("7".into())),
        ]);
        assert_eq!(
            to_json(&key).to_string(),
            r#"{"pk":{"S":"a"},"sk":{"N":"7"}}"#
        );
    }

    #[tokio::test]
    async fn records_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetter::new(dir.path().join("dl.jsonl"));
        let key: Attrs = HashMap::from([("pk".into(), AttributeValue::S("a".into()))]);
        dl.record("t", "m", &key, "boom").await.unwrap();
        dl.record("t", "m", &key, "again").await.unwrap();
        let text = std::fs::read_to_string(dl.path()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["error"], "again");
        assert_eq!(lines[0]["key"]["pk"]["S"], "a");
    }

    #[tokio::test]
    async fn the_file_is_private_absolute_and_synced_on_request() {
        let relative = DeadLetter::new(PathBuf::from("dl.jsonl"));
        assert_eq!(
            relative.path(),
            std::env::current_dir().unwrap().join("dl.jsonl")
        );
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetter::new(dir.path().join("dl.jsonl"));
        assert!(dl.is_synced().await, "nothing written, nothing to sync");
        dl.sync().await.unwrap();
        assert!(!dl.path().exists(), "created on the first failure only");

        let key: Attrs = HashMap::from([("pk".into(), AttributeValue::S("a".into()))]);
        dl.record("t", "m", &key, "boom").await.unwrap();
        assert!(!dl.is_synced().await);
        dl.sync().await.unwrap();
        assert!(dl.is_synced().await);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dl.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
    }

    #[test]
    fn every_value_type_round_trips_through_dynamodb_json() {
        use aws_smithy_types::Blob;
        let m: Attrs = HashMap::from([
            ("s".into(), AttributeValue::S(String::new())),
            (
                "n".into(),
                AttributeValue::N("123456789012345678901234567890.5".into()),
            ),
            ("b".into(), AttributeValue::B(Blob::new(vec![0, 255, 7]))),
            ("t".into(), AttributeValue::Bool(false)),
            ("z".into(), AttributeValue::Null(true)),
            (
                "ss".into(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            (
                "ns".into(),
                AttributeValue::Ns(vec!["1".into(), "-2.5".into()]),
            ),
            (
                "bs".into(),
                AttributeValue::Bs(vec![Blob::new(vec![1]), Blob::new(vec![])]),
            ),
        ]);
        let item: Attrs = HashMap::from([
            ("m".into(), AttributeValue::M(m.clone())),
            (
                "l".into(),
                AttributeValue::L(vec![AttributeValue::M(m), AttributeValue::S("x".into())]),
            ),
        ]);
        assert_eq!(from_json(&to_json(&item)), Ok(item));
        assert!(from_json(&json!({"a": {"Q": 1}}))
            .unwrap_err()
            .contains("\"a\""));
        assert!(value_from_json(&json!({"B": "%%"})).is_err());
    }

    #[test]
    fn a_record_line_parses_back_with_its_line_number() {
        let line =
            r#"{"table":"t","migration":"m","key":{"pk":{"S":"a"}},"error":"boom","at":"x"}"#;
        let r = parse_record(7, line).unwrap();
        assert_eq!(
            (
                r.line,
                r.table.as_str(),
                r.migration.as_str(),
                r.error.as_str()
            ),
            (7, "t", "m", "boom")
        );
        assert_eq!(r.key["pk"], AttributeValue::S("a".into()));
        assert!(parse_record(1, "{").unwrap_err().starts_with("not JSON"));
        assert!(parse_record(1, r#"{"table":"t","migration":"m"}"#)
            .unwrap_err()
            .contains("key"));
        assert!(parse_record(1, r#"{"table":"t","migration":"m","key":{}}"#)
            .unwrap_err()
            .contains("empty"));
    }
}
