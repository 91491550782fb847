//! Shared test support: the real endpoint, tables that delete themselves, and
//! helpers to read a whole table back.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use dynbulk::run::{Limit, Limits, Plan};
use rand::Rng;

#[path = "../../src/bin/dynbulk-sample-data/sample.rs"]
pub mod sample;
mod status_category;

#[allow(unused_imports)] // not every test file runs it in-process
pub use status_category::StatusCategory;

pub type Attrs = HashMap<String, AttributeValue>;

/// No capacity limit in either direction.
pub const UNLIMITED: Limits = Limits {
    read: Limit::Unlimited,
    write: Limit::Unlimited,
};

/// A fresh dead-letter file name in the temp directory.
pub fn dead_letter_file() -> PathBuf {
    std::env::temp_dir().join(format!("{}.jsonl", unique("dl")))
}

/// Where the binary's runs journal in tests (unless a test says otherwise).
pub fn journal_dir() -> PathBuf {
    std::env::temp_dir().join("dynbulk-test-journals")
}

/// A test run's plan: state in `state`, a fresh dead-letter file, the
/// journal in [`journal_dir`], no capacity limit; a test sets what it is
/// about with `..test_plan(&state)`.
pub fn test_plan(state: &TestTable) -> Plan {
    Plan {
        state_table: state.name.clone(),
        dead_letter: dead_letter_file(),
        journal: dynbulk::run::JournalPlace::Dir(journal_dir()),
        limits: UNLIMITED,
        ..Plan::default()
    }
}

/// The DynamoDB endpoint under test. `scripts/test.sh` starts dynalite and sets
/// it; point it at DynamoDB Local (docker-compose.yml) or any other endpoint to
/// run the suite there.
pub fn endpoint() -> String {
    std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "DYNAMODB_ENDPOINT is not set: run the suite with scripts/test.sh (it starts dynalite), \
             or set DYNAMODB_ENDPOINT=http://localhost:8000 with DynamoDB Local running"
        )
    })
}

/// A client for the endpoint under test (static test credentials).
pub fn client() -> Client {
    client_for(&endpoint())
}

/// A client for any endpoint (a proxy in front of the real one, say).
pub fn client_for(endpoint: &str) -> Client {
    // dynbulk's own policy: no SDK retries, so injected faults reach dynbulk's backoff.
    let conf = dynbulk::dynamo::client::policy(aws_sdk_dynamodb::Config::builder())
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "dynbulk-tests",
        ))
        .endpoint_url(endpoint)
        .build();
    Client::from_conf(conf)
}

/// A random name with a readable prefix.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

/// A table that is deleted when the guard drops, so tests run in parallel and
/// leave nothing behind.
pub struct TestTable {
    pub name: String,
}

impl TestTable {
    pub fn named(prefix: &str) -> Self {
        TestTable {
            name: unique(prefix),
        }
    }
}

impl Drop for TestTable {
    fn drop(&mut self) {
        let name = self.name.clone();
        let endpoint = endpoint();
        // Drop may run inside a runtime; delete from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = client_for(&endpoint)
                    .delete_table()
                    .table_name(&name)
                    .send()
                    .await;
            });
        })
        .join();
    }
}

/// Every item of `table`, keyed by its key attributes rendered as a string.
pub async fn read_all(client: &Client, table: &str) -> BTreeMap<String, Attrs> {
    let mut out = BTreeMap::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan for verification");
        for item in page.items() {
            out.insert(key_string(item), item.clone());
        }
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return out;
        }
    }
}

/// `pk` or `pk|sk`.
pub fn key_string(item: &Attrs) -> String {
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    match (s("pk"), s("sk")) {
        (Some(pk), Some(sk)) => format!("{pk}|{sk}"),
        (Some(pk), None) => pk,
        _ => panic!("item without pk: {item:?}"),
    }
}

/// Whether a table exists.
pub async fn table_exists(client: &Client, table: &str) -> bool {
    match client.describe_table().table_name(table).send().await {
        Ok(_) => true,
        Err(e) => {
            let e = dynbulk::error::AwsError::from_sdk(e);
            assert_eq!(
                e.code.as_deref(),
                Some("ResourceNotFoundException"),
                "describe failed: {e}"
            );
            false
        }
    }
}

/// The real `dynbulk` binary, pointed at the endpoint under test.
pub fn dynbulk() -> Command {
    program(env!("CARGO_BIN_EXE_dynbulk"))
}

/// A program built on dynbulk's command line (the stock binary, a migrations
/// crate's), pointed at the endpoint under test.
pub fn program(path: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(path);
    cmd.env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
        .env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Runs started from the repository would journal into it.
        .env("DYNBULK_JOURNAL_DIR", journal_dir());
    cmd
}

/// What the example migration must leave for an item that started as `before`.
pub fn expected_after_example(before: &Attrs) -> Attrs {
    let mut after = before.clone();
    if let Some(AttributeValue::S(status)) = before.get("status") {
        after.insert(
            "statusCategory".into(),
            AttributeValue::S(sample::category(status).into()),
        );
    }
    after
}

/// A new table of `n` generated orders whose notes are 400-800 bytes, so each
/// write costs one WCU and unit charges are fine-grained against limits.
/// A new table of `shape` holding the `n` sample orders generated from `seed`
/// (written with BatchWriteItem), and those items.
pub async fn sample_table(
    prefix: &str,
    shape: sample::KeyShape,
    n: u64,
    seed: u64,
) -> (TestTable, Vec<Attrs>) {
    let client = client();
    let table = TestTable::named(prefix);
    sample::create_table(&client, &table.name, shape)
        .await
        .unwrap();
    let items = sample::load(&client, &table.name, shape, n, seed)
        .await
        .unwrap();
    (table, items)
}

pub async fn small_items_table(prefix: &str, n: u64, seed: u64) -> (TestTable, Vec<Attrs>) {
    use rand::SeedableRng;
    let client = client();
    let table = TestTable::named(prefix);
    sample::create_table(&client, &table.name, sample::KeyShape::Composite)
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let items: Vec<Attrs> = (0..n)
        .map(|i| {
            let mut item = sample::item(sample::KeyShape::Composite, i, n, &mut rng);
            let len = rng.random_range(400..800);
            item.insert("notes".into(), AttributeValue::S("n".repeat(len)));
            item
        })
        .collect();
    sample::put_all(&client, &table.name, &items).await.unwrap();
    (table, items)
}

/// Every item of `table` is exactly what the example migration makes of `items`.
pub async fn assert_migrated(table: &str, items: &[Attrs]) {
    let after = read_all(&client(), table).await;
    assert_eq!(after.len(), items.len());
    for before in items {
        let key = key_string(before);
        assert_eq!(
            after.get(&key),
            Some(&expected_after_example(before)),
            "{key}"
        );
    }
}

/// Parses `  label: N` from a report printed by the binary.
pub fn count(output: &str, label: &str) -> u64 {
    output
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{label}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {label:?} line in output:\n{output}"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Starts the real binary with `args` and `env`, its output captured.
pub fn spawn_dynbulk(args: &[&str], env: &[(&str, &str)]) -> Child {
    dynbulk()
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child started with captured output: exit code (`None` when
/// killed), stdout, stderr.
pub fn output(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
