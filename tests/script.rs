//! TypeScript and JavaScript migrations run by the stock binary against the
//! real endpoint: each test writes its scripts into a temporary migrations
//! folder, runs `dynbulk run --migrations-dir DIR`, and reads the table back.

mod common;
mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use common::sample::{self, KeyShape};
use common::*;
use proxy::{Config, KeyRace, Proxy};

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.into())
}

fn b(v: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(v))
}

/// A migrations folder holding `files` (name, source).
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
    dir
}

/// A hash-keyed table (`pk`) holding `items`.
async fn table_with(prefix: &str, items: &[Attrs]) -> TestTable {
    let client = client();
    let table = TestTable::named(prefix);
    sample::create_table(&client, &table.name, KeyShape::Hash)
        .await
        .unwrap();
    sample::put_all(&client, &table.name, items).await.unwrap();
    table
}

fn item(pk: &str, attrs: &[(&str, AttributeValue)]) -> Attrs {
    let mut item: Attrs = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    item.insert("pk".into(), s(pk));
    item
}

/// `dynbulk run` of migration `id` from `dir` on `table`, through `endpoint`.
fn run_with(
    endpoint: &str,
    dir: &Path,
    id: &str,
    table: &str,
    state: &str,
    extra: &[&str],
) -> Output {
    let out = dynbulk()
        .env("AWS_ENDPOINT_URL", endpoint)
        .arg("--migrations-dir")
        .arg(dir)
        .args(["run", "--migration", id, "--table", table])
        .args(["--state-table", state, "--unlimited", "--progress", "off"])
        .args(extra)
        .output()
        .unwrap();
    eprintln!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run(dir: &Path, id: &str, table: &str, state: &str, extra: &[&str]) -> Output {
    run_with(&endpoint(), dir, id, table, state, extra)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// DynamoDB decimal text in one form per value (`12.50`, `1.25E1` -> `125e-1`).
fn canonical(text: &str) -> String {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().unwrap()),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits = format!("{int}{frac}");
    let mut exp = exponent - frac.len() as i64;
    digits = digits.trim_start_matches('0').to_owned();
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    if digits.is_empty() {
        return "0".into();
    }
    format!("{}{digits}e{exp}", if negative { "-" } else { "" })
}

/// The same value as DynamoDB compares them: numbers by value, sets in any order.
fn same(a: &AttributeValue, b: &AttributeValue) -> bool {
    use AttributeValue as V;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    match (a, b) {
        (V::N(x), V::N(y)) => canonical(x) == canonical(y),
        (V::Ns(x), V::Ns(y)) => {
            sorted(x.iter().map(|v| canonical(v)).collect())
                == sorted(y.iter().map(|v| canonical(v)).collect())
        }
        (V::Ss(x), V::Ss(y)) => sorted(x.clone()) == sorted(y.clone()),
        (V::Bs(x), V::Bs(y)) => {
            let mut x: Vec<_> = x.iter().map(|b| b.as_ref().to_vec()).collect();
            let mut y: Vec<_> = y.iter().map(|b| b.as_ref().to_vec()).collect();
            x.sort();
            y.sort();
            x == y
        }
        (V::L(x), V::L(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (V::M(x), V::M(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

const DIGITS_38: &str = "1.2345678901234567890123456789012345678";

/// One attribute of every type, in every shape that needs care.
fn every_type() -> Vec<(&'static str, AttributeValue)> {
    use AttributeValue as V;
    vec![
        ("str", s("plain")),
        ("empty", s("")),
        ("unicode", s("naïve — 日本語 🚀")),
        ("naïve 名前", s("a unicode attribute name")),
        ("int", n("42")),
        ("negative", n("-17")),
        ("decimal", n("12.5")),
        ("tenth", n("0.1")),
        ("big", n(DIGITS_38)),
        ("bigInt", n("12345678901234567890123456789012345678")),
        ("tiny", n("1E-130")),
        ("huge", n("9.9999999999999999999999999999999999999E+125")),
        ("yes", V::Bool(true)),
        ("no", V::Bool(false)),
        ("nothing", V::Null(true)),
        ("bytes", b(&[0, 1, 2, 255])),
        ("strings", V::Ss(vec!["a".into(), "b".into(), "ü".into()])),
        (
            "numbers",
            V::Ns(vec!["1".into(), "2.5".into(), DIGITS_38.into()]),
        ),
        (
            "blobs",
            V::Bs(vec![Blob::new(vec![1u8]), Blob::new(vec![2u8, 3])]),
        ),
        (
            "list",
            V::L(vec![
                s("x"),
                n("1"),
                n(DIGITS_38),
                V::Null(true),
                V::L(vec![]),
            ]),
        ),
        (
            "map",
            V::M(HashMap::from([
                (
                    "inner".to_string(),
                    V::M(HashMap::from([("deep".to_string(), n("3"))])),
                ),
                ("list".to_string(), V::L(vec![s(""), b(&[9])])),
                ("empty".to_string(), V::M(HashMap::new())),
                ("big".to_string(), n(DIGITS_38)),
            ])),
        ),
    ]
}

/// The attributes of [`every_type`] the round-trip migration reads and copies:
/// all but the list and the map. dynalite's `=` compares lists and maps by
/// object identity, so a write guarded on one (as reading it guards it) never
/// holds there; DynamoDB compares them by value. Their round trip through
/// the engine is checked by the script module's unit tests, and lists and
/// maps made by the script are written here.
const COPIED: &str = r##"["str", "empty", "unicode", "naïve 名前", "int", "negative", "decimal", "tenth",
  "big", "bigInt", "tiny", "huge", "yes", "no", "nothing", "bytes", "strings", "numbers", "blobs"]"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_type_round_trips_untouched_and_touched() {
    use AttributeValue as V;
    let items: Vec<Attrs> = (0..4)
        .map(|i| item(&format!("item#{i}"), &every_type()))
        .collect();
    let table = table_with("script-values", &items).await;
    let state = TestTable::named("state");
    let before = read_all(&client(), &table.name).await;
    // Copies attributes to copy_<name> (converted to JS and back) and writes a
    // list and a map of every shape; nothing else may be rewritten.
    let source = r##"
import { NumberValue } from "dynbulk";
const COPIED = __COPIED__;
export default {
  description: "copy every attribute",
  transform(item, ctx) {
    if (!(item.big instanceof NumberValue)) throw new Error("big is not a NumberValue: " + typeof item.big);
    if (item.big.toString() !== "1.2345678901234567890123456789012345678") throw new Error("big printed as " + item.big);
    if (`${item.big}` !== item.big.value) throw new Error("big in a template: " + `${item.big}`);
    if (!(item.big > 1.2 && item.big < 1.3)) throw new Error("big does not compare as a number");
    if (typeof item.int !== "number" || item.int + 1 !== 43) throw new Error("int is not the number 42");
    if (typeof item.decimal !== "number" || item.tenth !== 0.1) throw new Error("decimals are not numbers");
    if (!(item.strings instanceof Set) || !item.strings.has("ü")) throw new Error("strings is not a Set");
    if (!(item.bytes instanceof Uint8Array) || item.bytes[3] !== 255) throw new Error("bytes is not a Uint8Array");
    if (item.nothing !== null || item.empty !== "" || item.yes !== true) throw new Error("null, empty string or bool changed");
    for (const k of COPIED) item["copy_" + k] = item[k];
    item.madeList = ["x", 1, new NumberValue("1.2345678901234567890123456789012345678"), null, [], new Uint8Array([9]), new Set(["a"]), true];
    item.madeMap = { inner: { deep: 3 }, list: ["", new Uint8Array([9])], empty: {}, big: NumberValue.from("-1E-130"), n: 12n, s: new Set([1, 2.5]) };
    item.touched = ctx.tableName.length > 0;
  },
};
"##
    .replace("__COPIED__", COPIED);
    let dir = folder(&[("20250101_copy_everything.js", &source)]);
    let out = run(
        dir.path(),
        "20250101_copy_everything",
        &table.name,
        &state.name,
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let after = read_all(&client(), &table.name).await;
    assert_eq!(after.len(), items.len());
    let copied: Vec<String> = serde_json::from_str(COPIED).unwrap();
    let made_list = V::L(vec![
        s("x"),
        n("1"),
        n(DIGITS_38),
        V::Null(true),
        V::L(vec![]),
        b(&[9]),
        V::Ss(vec!["a".into()]),
        V::Bool(true),
    ]);
    let made_map = V::M(HashMap::from([
        (
            "inner".to_string(),
            V::M(HashMap::from([("deep".to_string(), n("3"))])),
        ),
        ("list".to_string(), V::L(vec![s(""), b(&[9])])),
        ("empty".to_string(), V::M(HashMap::new())),
        ("big".to_string(), n("-1E-130")),
        ("n".to_string(), n("12")),
        ("s".to_string(), V::Ns(vec!["1".into(), "2.5".into()])),
    ]));
    for (key, old) in &before {
        let new = &after[key];
        for (name, value) in old {
            assert_eq!(&new[name], value, "{key}: {name} was rewritten");
        }
        for name in &copied {
            let copy = &new[&format!("copy_{name}")];
            assert!(
                same(copy, &old[name]),
                "{key}: copy of {name} is {copy:?}, not {:?}",
                old[name]
            );
        }
        // The 38 digits survive the trip through JS exactly.
        assert_eq!(new["copy_big"], n(DIGITS_38));
        assert!(
            same(&new["madeList"], &made_list),
            "{key}: {:?}",
            new["madeList"]
        );
        assert!(
            same(&new["madeMap"], &made_map),
            "{key}: {:?}",
            new["madeMap"]
        );
        assert_eq!(new["touched"], V::Bool(true));
        assert_eq!(new.len(), old.len() + copied.len() + 3, "{key}: {new:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutate_remove_delete_and_unchanged_are_written_as_decided() {
    let items = vec![
        item("a#1", &[("status", s("pending")), ("notes", s("keep"))]),
        item("a#2", &[("status", s("strip")), ("notes", s("drop me"))]),
        item("a#3", &[("status", s("gone"))]),
        item("a#4", &[("status", s("other")), ("total", n(DIGITS_38))]),
        item("a#5", &[("status", s("same")), ("total", n("12.50"))]),
    ];
    let table = table_with("script-decide", &items).await;
    let state = TestTable::named("state");
    let before = read_all(&client(), &table.name).await;
    let dir = folder(&[(
        "20250101_decide.ts",
        r##"
import { DELETE } from "dynbulk";

type Item = Record<string, unknown>;

export default {
  description: "each status decides",
  transform(item: Item) {
    switch (item.status) {
      case "pending": item.statusCategory = "active"; item.count = 0.1 + 0.2; return item;
      case "strip": delete item.notes; return;
      case "gone": return DELETE;
      case "same": item.total = 12.5; return;
      default: item.total = item.total; return undefined;
    }
  },
};
"##,
    )]);
    let out = run(dir.path(), "20250101_decide", &table.name, &state.name, &[]);
    assert_eq!(out.status.code(), Some(0));
    let after = read_all(&client(), &table.name).await;
    let mut want: BTreeMap<String, Attrs> = before.clone();
    want.get_mut("a#1").unwrap().extend([
        ("statusCategory".to_string(), s("active")),
        ("count".to_string(), n("0.30000000000000004")),
    ]);
    want.get_mut("a#2").unwrap().remove("notes");
    want.remove("a#3");
    assert_eq!(after, want);
    let (stdout, _) = text(&out);
    assert_eq!(count(&stdout, "updated"), 2, "{stdout}");
    assert_eq!(count(&stdout, "deleted"), 1, "{stdout}");
    assert_eq!(count(&stdout, "unchanged"), 2, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_write_to_an_attribute_the_script_found_absent_is_not_lost() {
    // Orders without a hold are deleted; the application puts some on hold
    // (or archives them) between the scan and the migration's delete.
    let items: Vec<Attrs> = (0..30)
        .map(|i| {
            if i % 3 == 0 {
                item(&format!("o#{i}"), &[("holdUntil", s("2029-01-01"))])
            } else {
                item(&format!("o#{i}"), &[])
            }
        })
        .collect();
    let table = table_with("script-race", &items).await;
    let state = TestTable::named("state");
    let races: Vec<KeyRace> = (0..30)
        .filter(|i| i % 3 != 0 && i % 2 == 0)
        .map(|i| {
            let (name, value) = if i % 4 == 0 {
                ("holdUntil", "2030-01-01")
            } else {
                ("archivedAt", "2030-02-02")
            };
            KeyRace {
                key: format!("o#{i}"),
                update: serde_json::json!({
                    "TableName": table.name,
                    "Key": {"pk": {"S": format!("o#{i}")}},
                    "UpdateExpression": "SET #a = :v",
                    "ExpressionAttributeNames": {"#a": name},
                    "ExpressionAttributeValues": {":v": {"S": value}},
                }),
            }
        })
        .collect();
    let raced: Vec<String> = races.iter().map(|r| r.key.clone()).collect();
    let proxy = Proxy::start(
        &endpoint(),
        Config {
            races,
            ..Config::new(&table.name)
        },
    )
    .await;
    let dir = folder(&[(
        "20250101_delete_unheld.ts",
        r##"
import { DELETE } from "dynbulk";
export default {
  description: "delete orders that are neither on hold nor archived",
  transform(item: { holdUntil?: string }) {
    if (item.holdUntil !== undefined || "archivedAt" in item) return;
    return DELETE;
  },
};
"##,
    )]);
    let url = proxy.url.clone();
    let (path, name, state_name) = (
        dir.path().to_owned(),
        table.name.clone(),
        state.name.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        run_with(
            &url,
            &path,
            "20250101_delete_unheld",
            &name,
            &state_name,
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let mut seen = proxy.stats().raced;
    seen.sort();
    let mut want_raced = raced.clone();
    want_raced.sort();
    assert_eq!(seen, want_raced, "every application write was sent");
    let after = read_all(&client(), &table.name).await;
    for i in 0..30 {
        let k = format!("o#{i}");
        if i % 3 == 0 {
            assert_eq!(after[&k]["holdUntil"], s("2029-01-01"), "{k}");
        } else if raced.contains(&k) {
            let got = after
                .get(&k)
                .unwrap_or_else(|| panic!("{k}: the application's write was lost"));
            let want = if i % 4 == 0 {
                ("holdUntil", "2030-01-01")
            } else {
                ("archivedAt", "2030-02-02")
            };
            assert_eq!(got[want.0], s(want.1), "{k}");
        } else {
            assert!(!after.contains_key(&k), "{k} should be deleted");
        }
    }
}

/// Dead-letter records: key (`pk`) -> error.
fn dead_letters(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["key"]["pk"]["S"].as_str().unwrap().to_owned(),
                v["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_scripts_dead_letter_their_item_and_the_run_goes_on() {
    let kinds = ["throw", "bad", "key", "loop", "mem", "nan", "async"];
    let mut items: Vec<Attrs> = kinds.iter().map(|k| item(&format!("{k}#1"), &[])).collect();
    items.extend((0..20).map(|i| item(&format!("ok#{i}"), &[])));
    let table = table_with("script-fail", &items).await;
    let state = TestTable::named("state");
    let dir = folder(&[(
        "20250101_fail_some.ts",
        r##"import { DELETE } from "dynbulk";

export default {
  description: "fails in every way a script can",
  transform(item: { pk: string; [k: string]: unknown }) {
    const kind = item.pk.split("#")[0];
    if (kind === "throw") throw new Error(`refusing ${item.pk}`);
    if (kind === "bad") return 42;
    if (kind === "key") { item.pk = "other"; return; }
    if (kind === "loop") { for (;;) {} }
    if (kind === "mem") { const a: number[][] = []; for (;;) a.push(new Array(100000).fill(1)); }
    if (kind === "nan") { item.total = 0 / 0; return; }
    if (kind === "async") return Promise.resolve(DELETE);
    item.migrated = "yes";
  },
};
"##,
    )]);
    let dl = tempfile::tempdir().unwrap();
    let dead = dl.path().join("dead.jsonl");
    let out = run(
        dir.path(),
        "20250101_fail_some",
        &table.name,
        &state.name,
        &[
            "--script-timeout",
            "300ms",
            "--script-memory",
            "16MiB",
            "--page-size",
            "3",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let failed = dead_letters(&dead);
    let expect = [
        ("throw#1", "refusing throw#1"),
        ("throw#1", "20250101_fail_some.ts:7"),
        ("bad#1", "transform returned a number"),
        ("bad#1", "transform at "),
        ("bad#1", "20250101_fail_some.ts:5"),
        ("key#1", "key attribute"),
        ("key#1", "20250101_fail_some.ts:9"),
        ("nan#1", "20250101_fail_some.ts:12"),
        ("async#1", "20250101_fail_some.ts:5"),
        ("loop#1", "time limit"),
        ("mem#1", "memory limit"),
        ("nan#1", "NaN"),
        ("async#1", "synchronous"),
    ];
    for (pk, needle) in expect {
        let e = failed
            .get(pk)
            .unwrap_or_else(|| panic!("{pk} not dead-lettered: {failed:?}"));
        assert!(e.contains(needle), "{pk}: {e:?} lacks {needle:?}");
    }
    assert_eq!(failed.len(), kinds.len(), "{failed:?}");
    let after = read_all(&client(), &table.name).await;
    assert_eq!(after.len(), items.len());
    for (key, got) in &after {
        if key.starts_with("ok#") {
            assert_eq!(got.get("migrated"), Some(&s("yes")), "{key}");
        } else {
            assert_eq!(got.len(), 1, "{key} must be left as it was: {got:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_stops_the_run_naming_file_and_line_before_any_write() {
    let items: Vec<Attrs> = (0..5).map(|i| item(&format!("s#{i}"), &[])).collect();
    let table = table_with("script-syntax", &items).await;
    let state = TestTable::named("state");
    let good = "export default { description: \"fine\", transform(item) { item.x = 1; } };\n";
    let cases: [(&str, &str, &str); 4] = [
        (
            "20250102_bad.ts",
            "const a: number = 1;\n\nconst b = ;\nexport default {};\n",
            "20250102_bad.ts:3",
        ),
        (
            "20250102_bad.js",
            "const a = 1;\nconst b = {;\n",
            "20250102_bad.js:2",
        ),
        (
            "20250102_bad.ts",
            "const a = 1;\nenum Color { Red }\n",
            "20250102_bad.ts:2",
        ),
        (
            "20250102_bad.ts",
            "import { x } from \"../outside.ts\";\nexport default {};\n",
            "migrations folder",
        ),
    ];
    for (file, source, needle) in cases {
        let dir = folder(&[("20250101_good.js", good), (file, source)]);
        let out = run(dir.path(), "20250101_good", &table.name, &state.name, &[]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{file}: {stderr:?} lacks {needle:?}"
        );
    }
    assert_eq!(read_all(&client(), &table.name).await.len(), 5);
    for got in read_all(&client(), &table.name).await.values() {
        assert_eq!(got.len(), 1, "nothing may be written: {got:?}");
    }
    assert!(
        !table_exists(&client(), &state.name).await,
        "not even the state table is created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_of_a_script_writes_nothing() {
    let items: Vec<Attrs> = (0..10)
        .map(|i| item(&format!("d#{i}"), &[("n", n("1"))]))
        .collect();
    let table = table_with("script-dry", &items).await;
    let state = TestTable::named("state");
    let before = read_all(&client(), &table.name).await;
    let dir = folder(&[(
        "20250101_dry.js",
        r##"import { DELETE } from "dynbulk";
export default {
  description: "changes everything",
  transform(item, ctx) {
    if (!ctx.dryRun) throw new Error("not told it is a dry run");
    if (!Object.isFrozen(ctx)) throw new Error("ctx can be changed");
    item.n = 2;
    if (item.pk.endsWith("1")) return DELETE;
  },
};
"##,
    )]);
    let out = run(
        dir.path(),
        "20250101_dry",
        &table.name,
        &state.name,
        &["--dry-run"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_all(&client(), &table.name).await, before);
    let (stdout, _) = text(&out);
    assert_eq!(count(&stdout, "would update"), 9, "{stdout}");
    assert_eq!(count(&stdout, "would delete"), 1, "{stdout}");
}

/// The reference migration in TypeScript, importing its mapping from a
/// helper, in the old runner's named-export shape, under another id than the
/// repository's reference migration.
const STATUS_CATEGORY_TS: &str = r##"import type { } from "dynbulk";
import { category } from "./lib/category.ts";

interface Order {
  status?: unknown;
  statusCategory?: string;
}

export const migration_20250103_add_status_category = {
  description: "Add statusCategory (active/done/closed/other) derived from status",
  table: "orders",
  transform(item: Order) {
    if (typeof item.status !== "string") return;
    item.statusCategory = category(item.status);
  },
};
"##;

const CATEGORY_TS: &str = r##"export type Category = "active" | "done" | "closed" | "other";

export function category(status: string): Category {
  switch (status) {
    case "pending": case "processing": return "active";
    case "shipped": case "delivered": return "done";
    case "cancelled": case "refunded": return "closed";
    default: return "other";
  }
}
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_migration_importing_a_helper_migrates_like_the_rust_one() {
    let (table, items) = small_items_table("script-ts", 300, 5).await;
    let state = TestTable::named("state");
    let dir = folder(&[
        ("20250103_add_status_category.ts", STATUS_CATEGORY_TS),
        ("lib/category.ts", CATEGORY_TS),
        (
            "20241220_add_status_category_fields.ts",
            include_str!("../migrations/20241220_add_status_category_fields.ts"),
        ),
    ]);
    let listed = dynbulk()
        .arg("--migrations-dir")
        .arg(dir.path())
        .arg("list")
        .output()
        .unwrap();
    let (stdout, _) = text(&listed);
    let ids: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        ids,
        [
            "20241220_add_status_category_fields",
            "20250103_add_status_category"
        ],
        "script migrations are listed in id order"
    );
    let out = run(
        dir.path(),
        "20250103_add_status_category",
        &table.name,
        &state.name,
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_migrated(&table.name, &items).await;
}

#[test]
fn a_duplicate_id_or_a_wrong_declared_id_is_refused() {
    let same_id = folder(&[
        (
            "20241220_add_status_category_fields.js",
            "export default { description: \"twin\", transform() {} };\n",
        ),
        (
            "20241220_add_status_category_fields.ts",
            "export default { description: \"twin\", transform() {} };\n",
        ),
    ]);
    let wrong_id = folder(&[(
        "20250101_right.js",
        "export default { id: \"20250101_wrong\", description: \"x\", transform() {} };\n",
    )]);
    let missing = PathBuf::from("/nonexistent/dynbulk-migrations");
    for (dir, needle) in [
        (same_id.path(), "20241220_add_status_category_fields"),
        (wrong_id.path(), "20250101_wrong"),
        (missing.as_path(), "does not exist"),
    ] {
        let out = dynbulk()
            .arg("list")
            .env("DYNBULK_MIGRATIONS_DIR", dir)
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    }
}
