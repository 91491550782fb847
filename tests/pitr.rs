//! Point-in-time recovery through the real binary: the plan shows the table's
//! status (dynalite does not implement DescribeContinuousBackups: "unknown");
//! `run --require-pitr` refuses a table whose recovery is not known to be on
//! with exit 2, a message saying how to turn it on, and no write of any kind;
//! a dry run never refuses. `revert --require-pitr` refuses the same way.

mod common;

use std::process::Output;

use common::sample::KeyShape;
use common::*;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(table: &str, state: &str, extra: &[&str]) -> Output {
    let out = dynbulk()
        .args(["run", "--table", table, "--state-table", state])
        .args(["--unlimited", "--progress", "off", "--segments", "2"])
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!(
        "dynbulk run {extra:?} -> {:?}\n{stdout}\n{stderr}",
        out.status
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_pitr_refuses_a_table_without_known_recovery_and_a_dry_run_proceeds() {
    let client = client();
    let (table, _) = sample_table("orders-pitr", KeyShape::Composite, 300, 5).await;
    let state = TestTable::named("state");
    let before = read_all(&client, &table.name).await;

    let out = run(&table.name, &state.name, &["--require-pitr"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    for needle in [
        &format!("table {} was not changed", table.name),
        "point-in-time recovery cannot be confirmed",
        "does not implement DescribeContinuousBackups",
        &format!(
            "aws dynamodb update-continuous-backups --table-name {}",
            table.name
        ),
        "PointInTimeRecoveryEnabled=true",
        "--require-pitr",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in:\n{stderr}");
    }
    assert_eq!(
        read_all(&client, &table.name).await,
        before,
        "the table changed"
    );
    assert!(
        !table_exists(&client, &state.name).await,
        "the refused run created the state table"
    );

    // A dry run never refuses, and its plan says what the endpoint told.
    let out = run(&table.name, &state.name, &["--require-pitr", "--dry-run"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "point-in-time recovery: unknown (the endpoint does not implement DescribeContinuousBackups)"
        ),
        "{stdout}"
    );
    assert_eq!(count(&stdout, "items scanned"), before.len() as u64);
    assert_eq!(read_all(&client, &table.name).await, before);

    // Without the flag, the plan shows the same and the run goes ahead.
    let out = run(&table.name, &state.name, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("point-in-time recovery: unknown"),
        "{stdout}"
    );
    assert_migrated(&table.name, &before.values().cloned().collect::<Vec<_>>()).await;

    // A revert with --require-pitr refuses the same way, before any write;
    // without it, the same revert puts every item back.
    let migrated = read_all(&client, &table.name).await;
    let revert = |extra: &[&str]| {
        let out = dynbulk()
            .args([
                "revert",
                "--migration",
                "20241220_add_status_category_fields",
            ])
            .args(["--table", &table.name, "--state-table", &state.name])
            .args(["--unlimited", "--yes"])
            .args(extra)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        eprintln!(
            "dynbulk revert {extra:?} -> {:?}\n{stdout}\n{stderr}",
            out.status
        );
        out
    };
    let out = revert(&["--require-pitr"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("point-in-time recovery cannot be confirmed"),
        "{stderr}"
    );
    assert_eq!(read_all(&client, &table.name).await, migrated);
    assert_eq!(revert(&[]).status.code(), Some(0));
    assert_eq!(read_all(&client, &table.name).await, before);
}
