//! The real binary: bad input gets one clear message, exit code 2 and no write;
//! dry runs write nothing and predict the real run; exit code 1 on item failures.

mod common;

use std::path::Path;
use std::process::Output;

use aws_sdk_dynamodb::types::AttributeValue;
use common::sample::KeyShape;
use common::*;

const MIGRATION: &str = "20241220_add_status_category_fields";

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary and checks it exited with `code` and said `needle` on stderr.
fn expect_error(args: &[&str], code: i32, needle: &str) -> String {
    let out = dynbulk().args(args).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "args {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "args {args:?}: expected {needle:?} in stderr:\n{stderr}"
    );
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_clear_message_exit_2_and_no_write() {
    let client = client();
    let (table, _) = sample_table("orders-bad", KeyShape::Composite, 300, 11).await;
    let state = TestTable::named("state");
    let before = read_all(&client, &table.name).await;

    // A table that does not exist.
    let stderr = expect_error(
        &[
            "run",
            "--table",
            "no-such-table",
            "--state-table",
            &state.name,
        ],
        2,
        "table no-such-table does not exist",
    );
    assert!(stderr.contains("--table"), "says what to check: {stderr}");
    // An unknown migration id: names the registered ones.
    let stderr = expect_error(
        &[
            "run",
            "--migration",
            "20990101_nope",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ],
        2,
        "unknown migration \"20990101_nope\"",
    );
    assert!(stderr.contains(MIGRATION), "{stderr}");
    // Invalid flag values name the flag.
    expect_error(
        &["run", "--table", &table.name, "--segments", "0"],
        2,
        "--segments",
    );
    expect_error(
        &["run", "--table", &table.name, "--segments", "1000001"],
        2,
        "--segments",
    );
    expect_error(
        &["run", "--table", &table.name, "--segments", "many"],
        2,
        "--segments",
    );
    expect_error(
        &["run", "--table", &table.name, "--workers", "0"],
        2,
        "--workers",
    );
    expect_error(
        &["run", "--table", &table.name, "--max-errors", "-1"],
        2,
        "--max-errors",
    );
    expect_error(
        &["run", "--table", &table.name, "--page-size", "0"],
        2,
        "--page-size",
    );
    // An on-demand table without limits: refused, with the flags to pass.
    let stderr = expect_error(
        &["run", "--table", &table.name, "--state-table", &state.name],
        2,
        "on-demand",
    );
    assert!(
        stderr.contains("--rcu-limit") && stderr.contains("--wcu-limit"),
        "{stderr}"
    );
    expect_error(
        &["run", "--table", &table.name, "--rcu-limit", "0"],
        2,
        "--rcu-limit",
    );
    expect_error(
        &["run", "--table", &table.name, "--wcu-limit", "-5"],
        2,
        "--wcu-limit",
    );
    expect_error(
        &[
            "run",
            "--table",
            &table.name,
            "--wcu-limit",
            "5",
            "--unlimited",
        ],
        2,
        "--unlimited",
    );
    // A profile that does not exist.
    let home = tempfile::tempdir().unwrap();
    let out = dynbulk()
        .env("HOME", home.path())
        .args([
            "run",
            "--profile",
            "ghost",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out)
            .1
            .contains("AWS profile \"ghost\" is not defined"),
        "{}",
        text(&out).1
    );
    // No credentials anywhere.
    let out = dynbulk()
        .env("HOME", home.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["run", "--table", &table.name, "--state-table", &state.name])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("no credentials"), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("AWS_ACCESS_KEY_ID"),
        "says what to do: {}",
        text(&out).1
    );

    assert_eq!(
        read_all(&client, &table.name).await,
        before,
        "bad input wrote to the table"
    );
    assert!(
        !table_exists(&client, &state.name).await,
        "bad input created the state table"
    );
}

#[test]
fn unreachable_endpoint_fails_fast_with_exit_2() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    let out = dynbulk()
        .args([
            "run",
            "--endpoint-url",
            "http://127.0.0.1:1",
            "--table",
            "orders",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("cannot reach DynamoDB"), "{stderr}");
    assert!(stderr.contains("--endpoint-url"), "{stderr}");

    // A server that accepts connections and never answers: the attempt times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let out = dynbulk()
        .args(["run", "--endpoint-url", &url, "--table", "orders"])
        .output()
        .unwrap();
    drop(silent);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("timed out"), "{}", text(&out).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_predicts_the_real_run() {
    let client = client();
    let (table, items) = sample_table("orders-dry", KeyShape::Composite, 3_000, 11).await;
    let state = TestTable::named("state");
    let before = read_all(&client, &table.name).await;

    let out = dynbulk()
        .args([
            "run",
            "--unlimited",
            "--dry-run",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
            "--segments",
            "4",
        ])
        .output()
        .unwrap();
    let (dry, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{dry}\n{stderr}");
    assert!(dry.contains("DRY RUN"), "{dry}");
    assert!(
        dry.contains("sample changes:") && dry.contains("statusCategory: (absent) -> {\"S\":"),
        "{dry}"
    );
    assert_eq!(
        read_all(&client, &table.name).await,
        before,
        "the dry run changed the table"
    );
    assert!(
        !table_exists(&client, &state.name).await,
        "the dry run created the state table"
    );

    let out = dynbulk()
        .args([
            "run",
            "--unlimited",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
            "--segments",
            "4",
        ])
        .output()
        .unwrap();
    let (real, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{real}\n{stderr}");
    assert_eq!(count(&dry, "items scanned"), count(&real, "items scanned"));
    assert_eq!(count(&dry, "would update"), count(&real, "updated"));
    assert_eq!(count(&dry, "would delete"), count(&real, "deleted"));
    assert_eq!(count(&dry, "unchanged"), count(&real, "unchanged"));
    assert_eq!(count(&dry, "errors"), count(&real, "errors"));
    // And the real run did what it said.
    let after = read_all(&client, &table.name).await;
    let changed = items
        .iter()
        .filter(|i| after[&key_string(i)] != **i)
        .count() as u64;
    assert_eq!(changed, count(&real, "updated"));

    // status shows the run; run again skips it.
    let out = dynbulk()
        .args([
            "status",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ])
        .output()
        .unwrap();
    let (status, _) = text(&out);
    let line = status
        .lines()
        .find(|l| l.starts_with(MIGRATION))
        .expect(&status);
    assert!(line.contains("applied"), "{status}");
    assert!(
        line.contains(&format!(" {} ", count(&real, "updated"))),
        "{status}"
    );
    assert!(line.contains("3000"), "{status}");
    let out = dynbulk()
        .args([
            "run",
            "--unlimited",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).0.contains("already applied"), "{}", text(&out).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_segments_the_count_follows_the_table_and_join() {
    let (table, items) = sample_table("orders-segs", KeyShape::Composite, 300, 5).await;
    let state = TestTable::named("state");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--unlimited",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ];
        args.extend_from_slice(extra);
        dynbulk().args(&args).output().unwrap()
    };
    // A small table: the floor, 4 segments alone, 8 x --workers shared.
    for (extra, want) in [
        (
            vec!["--dry-run"],
            "segments:       4 (default: one per 256 MiB",
        ),
        (vec!["--dry-run", "--join"], "segments:       64 (default"),
        (
            vec!["--dry-run", "--join", "--workers", "2"],
            "segments:       16 (default",
        ),
        (vec!["--dry-run", "--segments", "7"], "segments:       7\n"),
    ] {
        let out = run(&extra);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {stdout}\n{stderr}");
        assert!(stdout.contains(want), "{extra:?}: {stdout}");
    }
    // A shared run on the default count migrates every item.
    let out = run(&["--join"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_migrated(&table.name, &items).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_too_large_to_update_is_dead_lettered_and_exit_is_1() {
    let client = client();
    let (table, _) = sample_table("orders-big", KeyShape::Composite, 200, 11).await;
    let state = TestTable::named("state");
    // An item just under DynamoDB's 400 KB limit: adding statusCategory pushes it over.
    let mut big: Attrs = Attrs::new();
    big.insert("pk".into(), AttributeValue::S("customer#big".into()));
    big.insert("sk".into(), AttributeValue::S("order#big".into()));
    big.insert("status".into(), AttributeValue::S("pending".into()));
    let overhead = "pk".len()
        + "customer#big".len()
        + "sk".len()
        + "order#big".len()
        + "status".len()
        + "pending".len()
        + "notes".len();
    big.insert(
        "notes".into(),
        AttributeValue::S("x".repeat(400 * 1024 - overhead - 2)),
    );
    client
        .put_item()
        .table_name(&table.name)
        .set_item(Some(big.clone()))
        .send()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let dl = dir.path().join("dead.jsonl");
    let out = dynbulk()
        .args([
            "run",
            "--rcu-limit",
            "5000",
            "--wcu-limit",
            "5000",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
            "--dead-letter",
        ])
        .arg(&dl)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(count(&stdout, "errors"), 1, "{stdout}");
    assert!(
        stdout.contains(&dl.display().to_string()),
        "the report names the dead-letter file: {stdout}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["key"]["pk"]["S"], "customer#big");
    assert_eq!(lines[0]["key"]["sk"]["S"], "order#big");
    assert_eq!(lines[0]["migration"], MIGRATION);
    assert_eq!(lines[0]["table"], table.name.as_str());
    // The item is untouched, every other item is migrated.
    let after = read_all(&client, &table.name).await;
    assert_eq!(after["customer#big|order#big"], big);
    for item in after
        .values()
        .filter(|i| key_string(i) != "customer#big|order#big")
    {
        assert_eq!(*item, expected_after_example(item));
    }
    // status reports the failed run.
    let out = dynbulk()
        .args([
            "status",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ])
        .output()
        .unwrap();
    assert!(
        text(&out)
            .0
            .lines()
            .any(|l| l.starts_with(MIGRATION) && l.contains("failed")),
        "{}",
        text(&out).0
    );
}

#[test]
fn list_new_and_init_scaffold_migrations() {
    let out = dynbulk().arg("list").output().unwrap();
    assert!(text(&out).0.contains(MIGRATION));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mod.rs"),
        "// dynbulk:modules:begin\n// dynbulk:modules:end\nvec![\n        // dynbulk:registry:begin\n        // dynbulk:registry:end\n];\n",
    )
    .unwrap();
    let out = dynbulk()
        .args(["new", "backfill", "order", "totals", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let created: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with("_backfill_order_totals.rs"))
        .collect();
    assert_eq!(created.len(), 1);
    let registry = std::fs::read_to_string(dir.path().join("mod.rs")).unwrap();
    assert!(registry.contains("::BackfillOrderTotals),"), "{registry}");

    // `init --rust` makes a crate, and never overwrites a file.
    expect_error(&["init", "--dynbulk-path", "."], 2, "--dynbulk-path");
    let crate_dir = dir.path().join("team");
    let out = dynbulk()
        .args(["init", "--rust"])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains(&format!("dynbulk = \"{}\"", env!("CARGO_PKG_VERSION"))));
    let out = dynbulk()
        .args(["init", "--rust"])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("already exists"), "{}", text(&out).1);
    assert_eq!(
        std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap(),
        manifest
    );

    let missing = dir.path().join("nowhere");
    let out = dynbulk()
        .args(["new", "x", "--dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--dir"), "{}", text(&out).1);
}

/// The pinned TypeScript compiler that scripts/test.sh installs.
fn tsc(project: &Path) -> Output {
    let tsc = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/typescript/node_modules/typescript/bin/tsc");
    assert!(
        tsc.is_file(),
        "{} is missing: run the tests with scripts/test.sh, which installs the pinned TypeScript",
        tsc.display()
    );
    std::process::Command::new("node")
        .arg(tsc)
        .arg("-p")
        .arg(project)
        .output()
        .unwrap()
}

#[test]
fn init_writes_a_typescript_folder_that_the_compiler_checks() {
    let repo = tempfile::tempdir().unwrap();
    let folder = repo.path().join("migrations");
    let out = dynbulk()
        .arg("init")
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "20241220_add_status_category_fields.ts",
            "dynbulk.d.ts",
            "tsconfig.json"
        ]
    );
    // The example is the repository's reference migration, byte for byte.
    assert_eq!(
        std::fs::read_to_string(folder.join("20241220_add_status_category_fields.ts")).unwrap(),
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations/20241220_add_status_category_fields.ts")
        )
        .unwrap()
    );

    // `new` outside a Rust crate writes a dated TypeScript file there.
    let out = dynbulk()
        .args(["new", "backfill \"order\" totals"])
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let id = format!(
        "{}_backfill_order_totals",
        chrono::Local::now().date_naive().format("%Y%m%d")
    );
    let created = std::fs::read_to_string(folder.join(format!("{id}.ts"))).unwrap();
    assert!(
        created.contains(r#"description: "backfill \"order\" totals","#),
        "{created}"
    );
    assert!(created.contains(&format!("--migration {id} ")), "{created}");
    let out = dynbulk()
        .args(["new", "backfill order totals"])
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("already exists"), "{}", text(&out).1);

    // A migration using the rest of the module's types, and a helper file.
    std::fs::create_dir(folder.join("lib")).unwrap();
    std::fs::write(
        folder.join("lib/money.ts"),
        "export function cents(n: number): number { return Math.round(n * 100); }\n",
    )
    .unwrap();
    std::fs::write(
        folder.join("20250101_everything.ts"),
        r##"import { DELETE, NumberValue, type Migration } from "dynbulk";
import { cents } from "./lib/money.ts";
export default {
  description: "uses every type",
  scan: { projection: ["a", "b"], filter: "#a <> :x", names: { "#a": "a" }, values: { ":x": "gone" } },
  transform(item, ctx) {
    ctx.log("seen", item.a, ctx.tableName, ctx.dryRun);
    if (item.a === "gone") return DELETE;
    delete item.b;
    item.big = new NumberValue("12345678901234567890123456789012345678");
    item.total = typeof item.amount === "number" ? cents(item.amount) : null;
    item.tags = new Set(["x"]);
    item.raw = new Uint8Array([1, 2]);
    item.nested = { list: [1, "two", null, { deep: true }] };
  },
} satisfies Migration;
"##,
    )
    .unwrap();
    let out = tsc(&folder);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    // The types do constrain: a transform returning a number is rejected.
    std::fs::write(
        folder.join("20250102_bad.ts"),
        "import type { Migration } from \"dynbulk\";\n\
         export default { description: \"bad\", transform() { return 42; } } satisfies Migration;\n",
    )
    .unwrap();
    let out = tsc(&folder);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).0.contains("20250102_bad.ts"), "{:?}", text(&out));

    // And `init` never overwrites a file.
    let before = std::fs::read_to_string(folder.join("dynbulk.d.ts")).unwrap();
    let out = dynbulk()
        .arg("init")
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("already exists"), "{}", text(&out).1);
    assert_eq!(
        std::fs::read_to_string(folder.join("dynbulk.d.ts")).unwrap(),
        before
    );
}
