//! Migrations that live in a team's own crate: `dynbulk init --rust` scaffolds
//! one, the crate's own binary adds a migration with `new`, builds and runs it
//! against the real endpoint; the example crate (examples/migrations) is
//! exactly what `init --rust` writes, and runs the reference migration as the
//! stock binary does.
//!
//! The crates are built by cargo, offline, into one target directory under
//! this suite's target directory (CARGO_TARGET_TMPDIR), with the example
//! crate's lockfile: their dependencies (the AWS SDK) are compiled once and
//! reused by every build, in this run and the next.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_dynamodb::types::AttributeValue;
use common::sample::KeyShape;
use common::*;
use dynbulk::state::ledger::{Ledger, Status};

const REFERENCE: &str = "20241220_add_status_category_fields";

fn checkout() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_crate() -> PathBuf {
    checkout().join("examples").join("migrations")
}

/// The target directory every migrations crate of this suite builds into.
fn crates_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("migration-crates")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_success(what: &str, out: &Output) {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

/// Runs `cargo <args> --offline` in the crate at `dir`.
fn cargo(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .args(["--offline", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", crates_target())
        .output()
        .unwrap();
    assert_success(&format!("cargo {args:?} in {}", dir.display()), &out);
}

/// Builds the crate at `dir` and returns the path of its binary `bin`.
fn build(dir: &Path, bin: &str) -> PathBuf {
    cargo(dir, &["build"]);
    crates_target()
        .join("debug")
        .join(format!("{bin}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `dynbulk init --rust DIR --dynbulk-path <this checkout>`.
fn init(dir: &Path) {
    let out = dynbulk()
        .args(["init", "--rust"])
        .arg(dir)
        .arg("--dynbulk-path")
        .arg(checkout())
        .output()
        .unwrap();
    assert_success("dynbulk init --rust", &out);
}

/// The new migration's transform: orders still pending get `urgent: true`.
const URGENT_TRANSFORM: &str = r#"        match item.get_s("status") {
            Some("pending") => Ok(Update::new().set("urgent", true).into()),
            _ => Ok(Change::Keep),
        }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_crate_adds_builds_and_runs_its_own_migration() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("team-migrations");
    init(&dir);
    std::fs::copy(example_crate().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let bin = build(&dir, "team-migrations");

    // The crate's own binary adds a migration and registers it.
    let out = program(&bin)
        .args(["new", "mark", "pending", "orders", "urgent"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_success("new", &out);
    let migrations = dir.join("src").join("migrations");
    let file = std::fs::read_dir(&migrations)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.to_string_lossy()
                .ends_with("_mark_pending_orders_urgent.rs")
        })
        .expect("new wrote the migration file");
    let id = file.file_stem().unwrap().to_string_lossy().into_owned();
    let template = std::fs::read_to_string(&file).unwrap();
    let keep = "        let _ = item;\n        Ok(Change::Keep)";
    assert!(template.contains(keep), "{template}");
    std::fs::write(&file, template.replace(keep, URGENT_TRANSFORM)).unwrap();
    let bin = build(&dir, "team-migrations");

    let client = client();
    let (table, items) = sample_table("crate-orders", KeyShape::Composite, 400, 21).await;
    let state = TestTable::named("state");
    let out = program(&bin)
        .args(["run", "--migration", &id, "--table", &table.name])
        .args([
            "--state-table",
            &state.name,
            "--unlimited",
            "--segments",
            "3",
        ])
        .args(["--progress", "off"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_success("run", &out);

    // Every item read back: pending orders are urgent, every other item is untouched.
    let after = read_all(&client, &table.name).await;
    assert_eq!(after.len(), items.len());
    let mut urgent = 0;
    for before in &items {
        let mut expected = before.clone();
        if before.get("status") == Some(&AttributeValue::S("pending".into())) {
            expected.insert("urgent".into(), AttributeValue::Bool(true));
            urgent += 1;
        }
        let key = key_string(before);
        assert_eq!(after.get(&key), Some(&expected), "{key}");
    }
    assert!(urgent > 0, "the sample has pending orders");

    // The ledger records it.
    let entry = Ledger::new(client.clone(), state.name.clone())
        .get(&table.name, &id)
        .await
        .unwrap()
        .expect("a ledger entry");
    assert_eq!(entry.status, Status::Applied);
    assert_eq!(entry.counts.updated, urgent);
    assert_eq!(entry.counts.scanned, items.len() as u64);

    // `status` and `list` show it.
    let out = program(&bin)
        .args([
            "status",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_success("status", &out);
    let status = text(&out).0;
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("applied")),
        "{status}"
    );
    // (From the crate's root: the checkout's root has a script migrations
    // folder holding the reference migration's TypeScript twin.)
    let out = program(&bin)
        .arg("list")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_success("list", &out);
    let list = text(&out).0;
    assert!(list.lines().any(|l| l.starts_with(&id)), "{list}");
    assert!(list.lines().any(|l| l.starts_with(REFERENCE)), "{list}");

    // An id two migrations share stops the program before any command runs.
    let text_now = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text_now.replace(&format!("\"{id}\""), &format!("\"{REFERENCE}\"")),
    )
    .unwrap();
    let bin = build(&dir, "team-migrations");
    // (From the crate's root: the checkout's root has a script migrations
    // folder holding the reference migration's TypeScript twin.)
    let out = program(&bin)
        .arg("list")
        .current_dir(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("\"{REFERENCE}\"")), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

/// Every file under `dir`, relative to it, except build output and the lockfile.
fn files(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            if rel == Path::new("target") || rel == Path::new("Cargo.lock") {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                out.insert(rel, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn the_example_crate_is_what_init_writes() {
    // Run from a stand-in checkout root, as `dynbulk init --rust
    // examples/migrations --dynbulk-path .` would be run from dynbulk's.
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("Cargo.toml"), "").unwrap();
    let out = dynbulk()
        .args([
            "init",
            "--rust",
            "examples/migrations",
            "--dynbulk-path",
            ".",
        ])
        .current_dir(root.path())
        .output()
        .unwrap();
    assert_success("dynbulk init --rust", &out);
    let written = files(&root.path().join("examples").join("migrations"));
    assert!(written[Path::new("Cargo.toml")].contains("dynbulk = { path = \"../..\" }"));
    assert_eq!(files(&example_crate()), written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_crate_and_the_stock_binary_migrate_alike() {
    let dir = example_crate();
    // The example's own unit tests (the reference migration's).
    cargo(&dir, &["test"]);
    let example = build(&dir, "migrations");

    let client = client();
    let state = TestTable::named("state");
    let mut tables = Vec::new();
    for prefix in ["stock-orders", "example-orders"] {
        let (table, items) = sample_table(prefix, KeyShape::Composite, 1_500, 8).await;
        tables.push((table, items));
    }
    let (stock_table, items) = &tables[0];
    let (example_table, _) = &tables[1];
    // The stock binary runs migrations/20241220_add_status_category_fields.ts
    // from the checkout's root; the example crate's binary its Rust twin, from
    // its own folder (which has no script migrations folder).
    let example_cmd = || {
        let mut cmd = program(&example);
        cmd.current_dir(&dir);
        cmd
    };
    // `verify` before the run: both binaries count the same items left to
    // change (the Rust migration and the script alike), write nothing, exit 4.
    let need = items
        .iter()
        .filter(|i| expected_after_example(i) != **i)
        .count() as u64;
    for (mut cmd, table) in [(dynbulk(), stock_table), (example_cmd(), example_table)] {
        let out = verify(&mut cmd, &table.name, &state.name);
        assert_eq!(out.status.code(), Some(4), "verify before the run");
        assert_eq!(count(&text(&out).0, "would update"), need);
    }
    let generated: BTreeMap<String, _> = items.iter().map(|i| (key_string(i), i.clone())).collect();
    for table in [stock_table, example_table] {
        assert_eq!(
            read_all(&client, &table.name).await,
            generated,
            "verify wrote"
        );
    }
    assert!(
        !table_exists(&client, &state.name).await,
        "verify created the state table"
    );
    for (mut cmd, table) in [(dynbulk(), stock_table), (example_cmd(), example_table)] {
        let out = cmd
            .args(["run", "--migration", REFERENCE, "--table", &table.name])
            .args([
                "--state-table",
                &state.name,
                "--unlimited",
                "--segments",
                "4",
            ])
            .args(["--progress", "off"])
            .output()
            .unwrap();
        assert_success(&format!("run on {}", table.name), &out);
    }

    let stock = read_all(&client, &stock_table.name).await;
    let from_example = read_all(&client, &example_table.name).await;
    assert_eq!(stock.len(), items.len());
    assert!(stock == from_example, "the two tables differ");
    assert_migrated(&stock_table.name, items).await;
    assert!(
        items.iter().any(|i| { stock[&key_string(i)] != *i }),
        "the migration changed items"
    );
    let ledger = Ledger::new(client.clone(), state.name.clone());
    let mut counts = Vec::new();
    for table in [stock_table, example_table] {
        let entry = ledger.get(&table.name, REFERENCE).await.unwrap().unwrap();
        assert_eq!(entry.status, Status::Applied);
        counts.push((
            entry.counts.scanned,
            entry.counts.updated,
            entry.counts.unchanged,
        ));
    }
    assert_eq!(counts[0], counts[1]);
    // `verify` after it: nothing left, whichever binary asks.
    for (mut cmd, table) in [(dynbulk(), stock_table), (example_cmd(), example_table)] {
        let out = verify(&mut cmd, &table.name, &state.name);
        assert_success("verify after the run", &out);
        assert_eq!(count(&text(&out).0, "would update"), 0);
    }
}

/// `verify` of the reference migration on `table`.
fn verify(cmd: &mut Command, table: &str, state: &str) -> Output {
    let out = cmd
        .args(["verify", "--migration", REFERENCE, "--table", table])
        .args(["--state-table", state, "--unlimited", "--progress", "off"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!("verify on {table} -> {:?}\n{stdout}\n{stderr}", out.status);
    out
}
