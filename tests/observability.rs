//! What an operator watches: a real Prometheus scrapes a running migration,
//! every dashboard query returns data, the counters equal what the table
//! shows; and the progress bar appears on a terminal only.

mod common;
mod proxy;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use common::*;
use proxy::{Config, Faults, Proxy};
use serde_json::Value;

const MIGRATION: &str = "20241220_add_status_category_fields";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server (Debian's `prometheus`, installed by scripts/test.sh)
/// scraping `target` every second; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    /// Evaluation time of queries (Unix seconds); `None` is now.
    at: Option<f64>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dynbulk\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin}: {e}; scripts/test.sh installs Debian's prometheus package (or set PROMETHEUS_BIN)")
            });
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            at: None,
        }
    }

    fn query(&self, expr: &str) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "--get", "--data-urlencode"])
            .arg(format!("query={expr}"));
        if let Some(at) = self.at {
            cmd.args(["--data-urlencode"]).arg(format!("time={at:.3}"));
        }
        let out = cmd
            .arg(format!("{}/api/v1/query", self.url))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// A range query from `start` to `end` (Unix seconds), one point a
    /// second, as a dashboard panel asks: each series' labels and values
    /// (the last is what a stat panel's "last not null" shows).
    fn range(&self, expr: &str, start: f64, end: f64) -> Vec<(Value, Vec<f64>)> {
        let out = Command::new("curl")
            .args(["-sf", "--get", "--data-urlencode"])
            .arg(format!("query={expr}"))
            .args(["--data-urlencode", &format!("start={start:.3}")])
            .args(["--data-urlencode", &format!("end={end:.3}")])
            .args(["--data-urlencode", "step=1"])
            .arg(format!("{}/api/v1/query_range", self.url))
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let values = series["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p[1].as_str().unwrap().parse().unwrap())
                    .collect();
                (series["metric"].clone(), values)
            })
            .collect()
    }

    /// The single value of an instant query, if it has exactly one series.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let v = self.query(expr);
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_run_and_every_dashboard_query_returns_data() {
    const ITEMS: u64 = 6_000;
    let (table, items) = small_items_table("orders-metrics", ITEMS, 31).await;
    let state = TestTable::named("state");
    // Throttles and 503s (answered before the request reaches the table, so
    // counts stay exact) make the throttle and retry series exist.
    let mut config = Config::new(&table.name);
    config.seed = 7;
    // (Rare enough not to be a capacity signal: see limiter::significant.)
    config.faults = Faults {
        throttling: 0.005,
        http503: 0.01,
        ..Faults::default()
    };
    let proxy = Proxy::start(&endpoint(), config).await;
    let metrics_port = free_port();
    let prometheus = Prometheus::start(&format!("127.0.0.1:{metrics_port}"));
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let child = dynbulk()
        .args([
            "run",
            "--endpoint-url",
            &proxy.url,
            "--table",
            &table.name,
            "--state-table",
            &state.name,
            "--rcu-limit",
            "2000",
            "--wcu-limit",
            "1000",
            "--metrics-addr",
            &metrics_addr,
            "--metrics-hold",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Once dynbulk is gone, Prometheus marks its series stale at the next
    // scrape; evaluate every query at a moment when it was still serving its
    // final values (it served them for 5 s after the run, scraped every second).
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let mut prometheus = prometheus;
    prometheus.at = Some(unix(std::time::SystemTime::now()) - 1.5);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The final values were served for 5 s after the run; Prometheus scraped them.
    let scanned = prometheus
        .scalar("dynbulk_items_scanned_total")
        .unwrap_or(-1.0);
    assert_eq!(scanned, ITEMS as f64, "the last scrape has the final count");

    // Every expression of the dashboard returns data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/observability/grafana/dashboards/dynbulk.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            exprs.push((
                panel["title"].as_str().unwrap().to_owned(),
                expr.replace("$migration", ".*").replace("$table", ".*"),
            ));
        }
    }
    assert!(exprs.len() >= 12, "the dashboard has its panels");
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        let v = prometheus.query(expr);
        let ok = v["status"] == "success"
            && v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
        if !ok {
            empty.push(format!("{title}: {expr} -> {v}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );

    // The counters' final values equal what the table shows.
    let after = read_all(&client(), &table.name).await;
    let changed = items
        .iter()
        .filter(|i| after[&key_string(i)] != **i)
        .count() as f64;
    for item in after.values() {
        assert_eq!(*item, expected_after_example(item));
    }
    let q = |outcome: &str| {
        prometheus
            .scalar(&format!(
                "dynbulk_items_total{{outcome=\"{outcome}\",migration=\"{MIGRATION}\"}}"
            ))
            .unwrap_or(-1.0)
    };
    assert_eq!(q("updated"), changed);
    assert_eq!(q("unchanged"), ITEMS as f64 - changed);
    assert_eq!(q("deleted"), 0.0);
    assert_eq!(q("failed"), 0.0);
    assert_eq!(
        prometheus.scalar("dynbulk_segments{state=\"completed\"}"),
        Some(4.0)
    );
    assert_eq!(
        prometheus.scalar("dynbulk_run_state{state=\"done\"}"),
        Some(1.0)
    );
    assert!(
        prometheus
            .scalar("sum(dynbulk_throttled_requests_total)")
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        prometheus.scalar("dynbulk_capacity_limit_units{kind=\"write\"}"),
        Some(1000.0)
    );
}

/// The dashboard's panel titled `title`: its first query, for every
/// migration and table, and its value mappings (value -> text).
fn panel(title: &str) -> (String, BTreeMap<String, String>) {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/observability/grafana/dashboards/dynbulk.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let panel = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"));
    let expr = panel["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .replace("$migration", ".*")
        .replace("$table", ".*");
    let mut mappings = BTreeMap::new();
    for mapping in panel["fieldConfig"]["defaults"]["mappings"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (value, to) in mapping["options"].as_object().unwrap() {
            mappings.insert(value.clone(), to["text"].as_str().unwrap().to_owned());
        }
    }
    (expr, mappings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_run_the_run_state_panel_shows_exactly_its_final_state() {
    const ITEMS: u64 = 2_000;
    let (table, _) = small_items_table("orders-state", ITEMS, 32).await;
    let state = TestTable::named("state");
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let prometheus = Prometheus::start(&metrics_addr);
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let started = unix();
    // About 8 s at 200 WCU/s: several scrapes while it runs.
    let out = dynbulk()
        .args(["run", "--endpoint-url", &endpoint(), "--table", &table.name])
        .args([
            "--state-table",
            &state.name,
            "--rcu-limit",
            "2000",
            "--wcu-limit",
            "200",
        ])
        .args(["--metrics-addr", &metrics_addr, "--metrics-hold", "4"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Evaluated after the run ended, over the whole run, as the panels ask.
    let ended = unix();
    let (expr, mappings) = panel("Run state");
    let series = prometheus.range(&expr, started - 5.0, ended - 1.5);
    assert_eq!(series.len(), 1, "one number per run: {series:?}");
    let (labels, values) = &series[0];
    assert_eq!(labels["table"], table.name.as_str());
    let name = |v: &f64| mappings.get(&format!("{v}")).cloned();
    assert_eq!(
        values.last().and_then(name).as_deref(),
        Some("done"),
        "{values:?} with mappings {mappings:?}"
    );
    // Before that, the same series said running (and nothing else).
    let states: std::collections::BTreeSet<_> = values.iter().filter_map(name).collect();
    assert_eq!(
        states,
        ["done", "running"].map(String::from).into(),
        "{values:?}"
    );
}

/// Serves Prometheus exposition text on `listener`: `page(t)` for the
/// request at `t` seconds after the start, until dropped.
fn serve_metrics(
    listener: std::net::TcpListener,
    page: impl Fn(f64) -> String + Send + 'static,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let start = std::time::Instant::now();
    listener.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = page(start.elapsed().as_secs_f64());
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })
}

/// The ETA panel against a target whose numbers the test controls (a live
/// DescribeTable item count, which dynalite does not keep): an estimate
/// while the run is running, 0 once it is done, not its last estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eta_panel_drops_to_zero_when_the_run_ends() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    // Running for 8 s at 100 items/s of 10,000, then done (still served).
    let _server = serve_metrics(listener, |t| {
        let running = t < 8.0;
        let items = (t.min(8.0) * 100.0).floor();
        let l = r#"migration="20250101_x",table="orders""#;
        let state = |s: &str, on: bool| {
            format!("dynbulk_run_state{{{l},state=\"{s}\"}} {}\n", u8::from(on))
        };
        format!(
            "dynbulk_items_estimated{{{l}}} 10000\n\
             dynbulk_items_total{{{l},outcome=\"updated\"}} {items}\n{}{}",
            state("running", running),
            state("done", !running)
        )
    });
    let prometheus = Prometheus::start(&target);
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let started = unix();
    tokio::time::sleep(std::time::Duration::from_secs(13)).await;
    let (eta, _) = panel("ETA");
    let series = prometheus.range(&eta, started, unix() - 1.0);
    assert_eq!(series.len(), 1, "{series:?}");
    let values = &series[0].1;
    assert!(
        values.iter().any(|v| *v > 10.0),
        "an estimate while running: {values:?}"
    );
    assert_eq!(
        values.last(),
        Some(&0.0),
        "no estimate once the run has ended: {values:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bar_only_on_a_terminal() {
    let (table, _) = small_items_table("orders-bar", 3_000, 32).await;
    let state = TestTable::named("state");
    let state2 = TestTable::named("state");
    let args = |state: &str| {
        vec![
            "run".to_owned(),
            "--table".into(),
            table.name.clone(),
            "--state-table".into(),
            state.to_owned(),
            "--rcu-limit".into(),
            "2000".into(),
            // About two seconds of writes: the bar draws more than once.
            "--wcu-limit".into(),
            "1200".into(),
        ]
    };
    // Not a terminal: no bar on stdout.
    let out = dynbulk().args(args(&state.name)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        !stdout.contains("items/s, ETA"),
        "a bar was drawn on a pipe:\n{stdout}"
    );
    assert!(
        stdout.contains("items scanned:"),
        "the report is there: {stdout}"
    );

    // A pseudo-terminal (util-linux `script`): the bar is drawn.
    let bin = env!("CARGO_BIN_EXE_dynbulk");
    let mut command = String::from(bin);
    for a in args(&state2.name) {
        command.push(' ');
        command.push_str(&a);
    }
    // The items are already migrated; --rerun processes them all again anyway.
    command.push_str(" --rerun");
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .envs(
            dynbulk()
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .output()
        .expect("util-linux `script` runs a command under a pseudo-terminal");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("items/s, ETA"),
        "no progress bar under a terminal:\n{screen}"
    );
    assert!(screen.contains("segments "), "{screen}");
    assert!(
        screen.contains("items scanned:"),
        "the report follows the bar: {screen}"
    );
}

/// One sample of a Prometheus text exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses `name{a="x",b="y"} 0` lines (comments skipped).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.push((name, labels, value.parse().unwrap()));
    }
    out
}

/// Counters whose label values are known in advance exist at 0 from the start
/// of a run: a run without a throttle, a retry, a conflict or a failed item
/// exports every such series with value 0 (dashboards show 0, not "No data").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_with_known_labels_are_exported_at_zero() {
    use std::io::{BufRead, BufReader};

    const ITEMS: u64 = 500;
    let (table, items) = small_items_table("orders-zero", ITEMS, 33).await;
    let state = TestTable::named("state");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut child = dynbulk()
        .args([
            "run",
            "--table",
            &table.name,
            "--state-table",
            &state.name,
            "--unlimited",
            "--progress",
            "off",
            "--metrics-addr",
            &metrics_addr,
            // An upper bound: the test scrapes as soon as the report is out, then ends the process.
            "--metrics-hold",
            "300",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The report is printed once the run is over and its last values published.
    // (The pipe stays open until the scrape: the report goes on after `duration`.)
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut report = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        report.push_str(&line);
        report.push('\n');
        if line.trim_start().starts_with("duration:") {
            break;
        }
    }
    let scraped = Command::new("curl")
        .args(["-sf", &format!("http://{metrics_addr}/metrics")])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
    assert!(scraped.status.success(), "no /metrics:\n{report}");
    let samples = parse_exposition(&String::from_utf8(scraped.stdout).unwrap());

    // The run itself: every item migrated, nothing throttled or failed.
    assert_migrated(&table.name, &items).await;
    assert_eq!(count(&report, "errors"), 0, "{report}");
    assert_eq!(count(&report, "throttled"), 0, "{report}");
    assert_eq!(count(&report, "retried faults"), 0, "{report}");

    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    };
    let mut missing = Vec::new();
    let mut want_zero = |name: &str, labels: Vec<(&str, &str)>| match value(name, &labels) {
        Some(0.0) => {}
        other => missing.push(format!("{name}{labels:?} = {other:?}")),
    };
    let run = [("migration", MIGRATION), ("table", table.name.as_str())];
    // Every operation dynbulk meters, every throttling code DynamoDB answers
    // with (and `throttled` when there is none), every retry reason.
    let ops = ["Scan", "UpdateItem", "DeleteItem", "GetItem", "Query"];
    let codes = [
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "TooManyRequestsException",
        "throttled",
    ];
    for op in ops {
        for code in codes {
            want_zero(
                "dynbulk_throttled_requests_total",
                vec![("op", op), ("code", code)],
            );
        }
        for reason in ["throttle", "transient"] {
            want_zero(
                "dynbulk_retries_total",
                vec![("op", op), ("reason", reason)],
            );
        }
    }
    for outcome in ["deleted", "failed"] {
        let mut labels = run.to_vec();
        labels.push(("outcome", outcome));
        want_zero("dynbulk_items_total", labels);
    }
    want_zero("dynbulk_write_conflicts_total", run.to_vec());
    assert!(
        missing.is_empty(),
        "series missing or not 0:\n{}",
        missing.join("\n")
    );
    // The counters that did move carry the run's values.
    let mut labels = run.to_vec();
    labels.push(("outcome", "updated"));
    let changed = items
        .iter()
        .filter(|i| expected_after_example(i) != **i)
        .count() as f64;
    assert_eq!(value("dynbulk_items_total", &labels), Some(changed));
}
