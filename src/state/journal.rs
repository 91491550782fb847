//! The journal: what every write of a run changed, so that `dynbulk revert`
//! can put it back. One file per process and attempt of a run, named in the
//! run's state before the first write and in the ledger when the run ends.
//!
//! Write-ahead: a write's record (its intent: key, the previous values of
//! the attributes it changes — the whole item for a delete — and the values
//! it writes) is handed to the operating system (write(2)) before the write
//! request is sent, and the checkpointer syncs the file (fsync) before a
//! checkpoint moves past the page. A record written after DynamoDB
//! acknowledged the write could be lost with the process; the resumed run
//! would then find the item already changed, change nothing and journal
//! nothing, and the previous values would be gone.
//!
//! Format: JSON lines compressed as a series of independent gzip members (one
//! per page's records), so `zcat` reads it, and a file cut by a crash is
//! readable up to its last complete member (the reader stops at a torn tail
//! and says so). Lines:
//!
//! - `{"op":"update","key":K,"before":{a: V|null},"after":{a: V|null}}`: an
//!   UpdateItem; `null` is an absent attribute (before: the write adds it;
//!   after: the write removes it);
//! - `{"op":"delete","key":K,"item":I}`: a DeleteItem of item `I`;
//! - `{"op":"not_applied","id":N}`: the intent numbered `N` (intents are
//!   numbered from 0 in file order) was definitely not applied (its condition
//!   failed, or DynamoDB rejected it); revert skips it.
//!
//! Keys and values are DynamoDB JSON (numbers as their exact strings,
//! binaries in base64), as in the dead-letter file. The file is created
//! readable by its owner only: it holds item values.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_sdk_dynamodb::types::AttributeValue;
use flate2::Compression;
use serde_json::{json, Map, Value};

use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};
use crate::state::deadletter::{
    from_json as attrs_from_json, to_json, value_from_json, value_json,
};

/// One journal record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An UpdateItem: each changed attribute's value before and after (`None`: absent).
    Update {
        /// The item's key.
        key: Attrs,
        /// Values before the write, by attribute (`None`: the write adds it).
        before: BTreeMap<String, Option<AttributeValue>>,
        /// Values the write sets (`None`: the write removes it).
        after: BTreeMap<String, Option<AttributeValue>>,
    },
    /// A DeleteItem of the whole `item`.
    Delete {
        /// The item's key.
        key: Attrs,
        /// The item as it was before the delete.
        item: Attrs,
    },
    /// The intent with this number was definitely not applied.
    NotApplied(u64),
}

impl Record {
    /// Whether this record is a write's intent (numbered), not a note about one.
    pub fn is_intent(&self) -> bool {
        !matches!(self, Record::NotApplied(_))
    }

    /// The key of an intent.
    pub fn key(&self) -> Option<&Attrs> {
        match self {
            Record::Update { key, .. } | Record::Delete { key, .. } => Some(key),
            Record::NotApplied(_) => None,
        }
    }

    fn to_line(&self) -> Value {
        let optional = |m: &BTreeMap<String, Option<AttributeValue>>| {
            Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, value_json)))
                    .collect::<Map<_, _>>(),
            )
        };
        match self {
            Record::Update { key, before, after } => json!({
                "op": "update",
                "key": to_json(key),
                "before": optional(before),
                "after": optional(after),
            }),
            Record::Delete { key, item } => json!({
                "op": "delete",
                "key": to_json(key),
                "item": to_json(item),
            }),
            Record::NotApplied(id) => json!({ "op": "not_applied", "id": id }),
        }
    }

    fn from_line(line: &Value) -> std::result::Result<Record, String> {
        let attrs = |k: &str| -> std::result::Result<Attrs, String> {
            attrs_from_json(line.get(k).ok_or_else(|| format!("no {k:?}"))?)
        };
        let optional =
            |k: &str| -> std::result::Result<BTreeMap<String, Option<AttributeValue>>, String> {
                let Some(Value::Object(m)) = line.get(k) else {
                    return Err(format!("no {k:?} object"));
                };
                m.iter()
                    .map(|(name, v)| match v {
                        Value::Null => Ok((name.clone(), None)),
                        v => value_from_json(v).map(|v| (name.clone(), Some(v))),
                    })
                    .collect()
            };
        match line.get("op").and_then(Value::as_str) {
            Some("update") => Ok(Record::Update {
                key: attrs("key")?,
                before: optional("before")?,
                after: optional("after")?,
            }),
            Some("delete") => Ok(Record::Delete {
                key: attrs("key")?,
                item: attrs("item")?,
            }),
            Some("not_applied") => line
                .get("id")
                .and_then(Value::as_u64)
                .map(Record::NotApplied)
                .ok_or_else(|| "a not_applied record without an id".into()),
            other => Err(format!("unknown op {other:?}")),
        }
    }
}

/// Appends records to a journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    sink: Mutex<Sink>,
}

#[derive(Debug, Default)]
struct Sink {
    file: Option<std::fs::File>,
    /// Intents written so far: the next intent's number.
    intents: u64,
    /// Notes not yet written (they go out with the next member, or on sync).
    notes: Vec<Record>,
    /// Members written since the last sync.
    unsynced: bool,
    /// The file's directory entry still needs a sync.
    created: bool,
}

impl Journal {
    /// A journal writing to `path` (created by [`Journal::create`] or the
    /// first record). A relative
    /// path is made absolute, so that the run's state names a file a later
    /// revert can find.
    pub fn new(path: PathBuf) -> Self {
        let path = std::path::absolute(&path).unwrap_or(path);
        Journal {
            path,
            sink: Mutex::new(Sink::default()),
        }
    }

    /// The file name of a process's journal of one attempt of a run, in `dir`.
    pub fn file_in(dir: &Path, table: &str, migration: &str) -> PathBuf {
        dir.join(format!(
            "dynbulk-journal-{table}-{migration}-{}-{}.jsonl.gz",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            std::process::id()
        ))
    }

    /// Where the records go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::io(format!("{what} journal {}", self.path.display()), e)
    }

    /// Writes `intents` (with any notes pending) as one compressed member,
    /// handed to the operating system before this returns. Returns the number
    /// of the first intent (the others follow in order).
    ///
    /// The member is built and compressed before the file's lock is taken,
    /// so workers appending at once only wait for each other's write(2); the
    /// intents are numbered in the order their members reach the file.
    ///
    /// # Errors
    /// When the file cannot be created or written: the writes must then not
    /// be sent.
    pub fn append(&self, intents: &[&Record]) -> Result<u64> {
        let notes = std::mem::take(&mut self.sink().notes);
        if intents.is_empty() && notes.is_empty() {
            return Ok(self.sink().intents);
        }
        let member = compress(notes.iter().chain(intents.iter().copied()))
            .map_err(|e| self.io("compressing", e))?;
        let mut sink = self.sink();
        self.open_sink(&mut sink)?;
        let file = sink.file.as_mut().expect("opened above");
        file.write_all(&member).map_err(|e| self.io("writing", e))?;
        let first = sink.intents;
        sink.intents += intents.len() as u64;
        sink.unsynced = true;
        Ok(first)
    }

    fn sink(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the file (empty) if it does not exist yet, so that a journal
    /// named in the run's state exists on the machine that named it even
    /// when its process wrote nothing.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(&self) -> Result<()> {
        let mut sink = self.sink();
        self.open_sink(&mut sink)?;
        sink.unsynced = true;
        Ok(())
    }

    fn open_sink(&self, sink: &mut Sink) -> Result<()> {
        if sink.file.is_none() {
            let created = !self.path.exists();
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            sink.file = Some(
                options
                    .open(&self.path)
                    .map_err(|e| self.io("opening", e))?,
            );
            sink.created = created;
        }
        Ok(())
    }

    /// Notes that intent `id` was definitely not applied; written with the
    /// next member or the next [`Journal::sync`]. Losing a note costs revert
    /// a re-read, never correctness.
    pub fn not_applied(&self, id: u64) {
        let mut sink = self.sink();
        sink.notes.push(Record::NotApplied(id));
    }

    /// Writes pending notes and puts everything written so far on disk
    /// (fsync), and the file's directory entry when it is new. Cheap when
    /// nothing was written since the last call.
    ///
    /// # Errors
    /// When the file cannot be written or synced: a checkpoint must then not
    /// move past the records.
    pub async fn sync(&self) -> Result<()> {
        let pending = !self
            .sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notes
            .is_empty();
        if pending {
            self.append(&[])?;
        }
        let (file, created) = {
            let mut sink = self.sink();
            if !sink.unsynced {
                return Ok(());
            }
            let Some(file) = sink.file.as_ref() else {
                return Ok(());
            };
            let file = file.try_clone().map_err(|e| self.io("syncing", e))?;
            sink.unsynced = false;
            (file, std::mem::take(&mut sink.created))
        };
        let dir = self.path.parent().map(Path::to_owned);
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.sync_data()?;
            // A new file's name is only durable once its directory is synced.
            #[cfg(unix)]
            if let (true, Some(dir)) = (created, dir) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("syncing the journal: {e}")))?;
        if let Err(e) = synced {
            let mut sink = self.sink();
            sink.unsynced = true;
            sink.created |= created;
            return Err(self.io("syncing", e));
        }
        Ok(())
    }

    /// Whether any record was written through this journal.
    pub fn has_records(&self) -> bool {
        self.sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .is_some()
    }
}

/// Compresses records as one gzip member of JSON lines. Fast level: a page's
/// records are a few KB, written on the worker's task. The lines are
/// rendered into one buffer first and handed to the encoder in one write:
/// flate2 clears its whole output buffer on every write it is given, so
/// serde_json's many small writes straight into it cost more than the
/// compression.
fn compress<'a>(records: impl Iterator<Item = &'a Record>) -> std::io::Result<Vec<u8>> {
    let mut lines = Vec::with_capacity(8 * 1024);
    for r in records {
        serde_json::to_writer(&mut lines, &r.to_line())?;
        lines.push(b'\n');
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(lines.len() / 4 + 64),
        Compression::fast(),
    );
    gz.write_all(&lines)?;
    gz.finish()
}

/// A journal file as read back: where each member starts, which intents
/// were not applied, and whether the file ends in a torn member.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Each complete member: its offset and the number of its first intent.
    pub members: Vec<(u64, u64)>,
    /// Intents noted as not applied.
    pub not_applied: HashSet<u64>,
    /// Intents in the complete members.
    pub intents: u64,
    /// Why the file ends early, if it does (a crash cut its last member).
    pub torn: Option<String>,
}

/// A `BufRead` that counts what was consumed: the offset of the next member.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.pos += amt as u64;
        self.inner.consume(amt)
    }
}

fn parse_member(bytes: &[u8]) -> std::result::Result<Vec<Record>, String> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l).map_err(|e| e.to_string())?;
            Record::from_line(&v)
        })
        .collect()
}

/// Reads a journal through once: its members, its not-applied notes, and
/// where a torn tail starts.
///
/// # Errors
/// When the file cannot be opened or read, or a complete member holds a
/// record that does not parse (not a torn tail: the file is not a journal).
pub fn index(path: &Path) -> Result<Index> {
    let io = |e| Error::io(format!("reading journal {}", path.display()), e);
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = Counting {
        inner: BufReader::with_capacity(1 << 16, file),
        pos: 0,
    };
    let mut index = Index::default();
    loop {
        if reader.fill_buf().map_err(io)?.is_empty() {
            return Ok(index);
        }
        let start = reader.pos;
        let mut bytes = Vec::new();
        let decoded = flate2::bufread::GzDecoder::new(&mut reader).read_to_end(&mut bytes);
        if let Err(e) = decoded {
            index.torn = Some(format!(
                "the journal ends in an incomplete record group at byte {start} ({e}); \
                 the records before it are read (a crash cut the file there)"
            ));
            return Ok(index);
        }
        let records = parse_member(&bytes).map_err(|e| Error::State {
            table: path.display().to_string(),
            message: format!(
                "is not a dynbulk journal: the record group at byte {start} does not parse ({e})"
            ),
        })?;
        index.members.push((start, index.intents));
        for r in &records {
            match r {
                Record::NotApplied(id) => {
                    index.not_applied.insert(*id);
                }
                _ => index.intents += 1,
            }
        }
    }
}

/// The intents of the member at `offset`, numbered from `first`.
///
/// # Errors
/// When the file cannot be read there or the member does not decode.
pub fn read_member(path: &Path, offset: u64, first: u64) -> Result<Vec<(u64, Record)>> {
    let io = |e| Error::io(format!("reading journal {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut bytes = Vec::new();
    flate2::bufread::GzDecoder::new(BufReader::new(file))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let records = parse_member(&bytes).map_err(|e| Error::State {
        table: path.display().to_string(),
        message: format!(
            "is not a dynbulk journal: the record group at byte {offset} does not parse ({e})"
        ),
    })?;
    Ok(records
        .into_iter()
        .filter(Record::is_intent)
        .enumerate()
        .map(|(i, r)| (first + i as u64, r))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::primitives::Blob;
    use std::collections::HashMap;

    fn every_type() -> Attrs {
        HashMap::from([
            ("pk".into(), AttributeValue::S("a".into())),
            ("s".into(), AttributeValue::S(String::new())),
            (
                "n".into(),
                AttributeValue::N("123456789012345678901234567890.000000001".into()),
            ),
            ("b".into(), AttributeValue::B(Blob::new(vec![0, 1, 255]))),
            ("t".into(), AttributeValue::Bool(true)),
            ("z".into(), AttributeValue::Null(true)),
            (
                "ss".into(),
                AttributeValue::Ss(vec!["x".into(), "y".into()]),
            ),
            (
                "ns".into(),
                AttributeValue::Ns(vec!["1".into(), "-2.5E10".into()]),
            ),
            (
                "bs".into(),
                AttributeValue::Bs(vec![Blob::new(vec![9]), Blob::new(vec![])]),
            ),
            (
                "m".into(),
                AttributeValue::M(HashMap::from([
                    ("empty".into(), AttributeValue::S(String::new())),
                    (
                        "l".into(),
                        AttributeValue::L(vec![
                            AttributeValue::N("0".into()),
                            AttributeValue::M(HashMap::new()),
                        ]),
                    ),
                ])),
            ),
        ])
    }

    #[test]
    fn every_value_type_round_trips_exactly() {
        let item = every_type();
        let back = attrs_from_json(&to_json(&item)).unwrap();
        assert_eq!(back, item);
    }

    #[test]
    fn members_are_read_back_with_their_numbers_and_notes() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j.jsonl.gz"));
        let key: Attrs = HashMap::from([("pk".into(), AttributeValue::S("a".into()))]);
        let update = Record::Update {
            key: key.clone(),
            before: BTreeMap::from([
                ("x".into(), None),
                ("m".into(), Some(every_type()["m"].clone())),
            ]),
            after: BTreeMap::from([
                ("x".into(), Some(AttributeValue::N("1".into()))),
                ("m".into(), None),
            ]),
        };
        let delete = Record::Delete {
            key: key.clone(),
            item: every_type(),
        };
        assert_eq!(j.append(&[&update, &delete]).unwrap(), 0);
        j.not_applied(1);
        assert_eq!(j.append(&[&update]).unwrap(), 2);
        let index = index(j.path()).unwrap();
        assert_eq!(index.members.len(), 2);
        assert_eq!(index.intents, 3);
        assert_eq!(index.not_applied, HashSet::from([1]));
        assert!(index.torn.is_none());
        let (off, first) = index.members[0];
        assert_eq!(
            read_member(j.path(), off, first).unwrap(),
            vec![(0, update.clone()), (1, delete)]
        );
        let (off, first) = index.members[1];
        assert_eq!(
            read_member(j.path(), off, first).unwrap(),
            vec![(2, update)]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(j.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_reported_and_what_precedes_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j.jsonl.gz"));
        let key: Attrs = HashMap::from([("pk".into(), AttributeValue::S("a".into()))]);
        let r = Record::Delete {
            key,
            item: every_type(),
        };
        j.append(&[&r]).unwrap();
        j.not_applied(0);
        j.sync().await.unwrap();
        j.append(&[&r, &r]).unwrap();
        let len = std::fs::metadata(j.path()).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(j.path())
            .unwrap();
        file.set_len(len - 5).unwrap();
        let index = index(j.path()).unwrap();
        assert_eq!(
            index.members.len(),
            2,
            "the first member and the notes' member"
        );
        assert_eq!(index.intents, 1);
        assert!(index.not_applied.contains(&0));
        assert!(index.torn.unwrap().contains("incomplete"));
    }
}
