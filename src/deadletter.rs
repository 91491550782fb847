//! The dead-letter file: one JSON line per failed item (table, migration, key in
//! DynamoDB JSON, error, time), so failures can be inspected and replayed.
//! The file is created on the first failure only.

use std::path::{Path, PathBuf};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::migration::Attrs;

/// Appends failures to a JSON-lines file.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
}

impl DeadLetter {
    /// A dead-letter sink writing to `path` (appending) once something fails.
    pub fn new(path: PathBuf) -> Self {
        DeadLetter {
            path,
            file: Mutex::new(None),
        }
    }

    /// Where failures go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one failed item.
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
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| {
                    Error::io(
                        format!("opening dead-letter file {}", self.path.display()),
                        e,
                    )
                })?;
            *guard = Some(f);
        }
        let f = guard.as_mut().expect("opened above");
        f.write_all(text.as_bytes()).await.map_err(|e| {
            Error::io(
                format!("writing dead-letter file {}", self.path.display()),
                e,
            )
        })?;
        f.flush().await.map_err(|e| {
            Error::io(
                format!("writing dead-letter file {}", self.path.display()),
                e,
            )
        })
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
}
