//! A fault-injecting proxy in front of the DynamoDB endpoint, for tests and
//! benchmarks. It listens on a loopback port and forwards to the real endpoint.
//! For one table (the data table under test) it:
//!
//! - enforces a capacity in read and write units per second, as DynamoDB does:
//!   a token bucket per kind, refilled continuously, holding `burst_seconds` of
//!   capacity; a request arriving while the bucket is empty is answered with
//!   ProvisionedThroughputExceededException (HTTP 400, DynamoDB's JSON error
//!   shape) without reaching the endpoint; a served request is charged what the
//!   endpoint's `ConsumedCapacity` says (the bucket may go into debt);
//! - injects faults at configured rates: ThrottlingException,
//!   RequestLimitExceeded, HTTP 500 and 503, connection resets (some after the
//!   request was forwarded, so the write happened and the answer was lost), and
//!   latency spikes;
//! - answers writes (UpdateItem, DeleteItem, PutItem) of chosen keys with a
//!   chosen error, a bounded number of times ("hot keys", poison items the
//!   endpoint would reject), without reaching the endpoint;
//! - plays the application racing a migration ([`KeyRace`]): the first write
//!   of a chosen item is preceded by an application write of that item sent
//!   to the endpoint, so it lands between the migration's scan and its write;
//! - counts requests, throttles, faults and units per operation, and keeps a
//!   timeline of served units so tests can check any window.
//!
//! For every table, it can also:
//!
//! - cut the client off ([`Proxy::cut`]): requests are held, as a network
//!   partition holds them, and delivered late on [`Proxy::restore`] (even if
//!   the client gave up waiting) or never ([`Proxy::drop_held`]);
//! - play a client whose wall clock is off ([`Config::clock_skew_ms`]): every
//!   number in a request to another table than the data table that looks like
//!   a time in epoch milliseconds is shifted by the skew.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Fault rates, each a probability per request to the data table.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// ThrottlingException.
    pub throttling: f64,
    /// RequestLimitExceeded.
    pub request_limit: f64,
    /// ProvisionedThroughputExceededException regardless of capacity.
    pub provisioned: f64,
    /// HTTP 500 InternalServerError.
    pub http500: f64,
    /// HTTP 503 ServiceUnavailable.
    pub http503: f64,
    /// Connection reset without an answer.
    pub reset: f64,
    /// Latency spike.
    pub latency: f64,
    /// How long a spike lasts.
    pub latency_spike: Duration,
}

/// An error returned for every write of one item, up to `times` times.
#[derive(Debug, Clone)]
pub struct KeyFault {
    /// `pk` or `pk|sk` (string keys) of the item.
    pub key: String,
    /// DynamoDB error code, e.g. `ProvisionedThroughputExceededException`.
    pub code: &'static str,
    /// Its message (DynamoDB's own text, so classification is tested on it).
    pub message: &'static str,
    /// Writes of the key answered with the error; later ones pass. `u32::MAX`: all.
    pub times: u32,
}

impl KeyFault {
    /// Throttles the first `times` writes of `key`, as a hot partition does.
    pub fn hot(key: &str, times: u32) -> Self {
        KeyFault {
            key: key.to_owned(),
            code: "ProvisionedThroughputExceededException",
            message: "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
            times,
        }
    }
}

/// An application write of one item, sent to the endpoint just before the
/// first migration write of that item is forwarded.
#[derive(Debug, Clone)]
pub struct KeyRace {
    /// `pk` or `pk|sk` (string keys) of the item.
    pub key: String,
    /// The application's whole UpdateItem request (DynamoDB JSON: TableName,
    /// Key, UpdateExpression, ...).
    pub update: Value,
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data table: capacity and faults apply to it only.
    pub table: String,
    /// Read units per second; `None` is unlimited.
    pub read_capacity: Option<f64>,
    /// Write units per second; `None` is unlimited.
    pub write_capacity: Option<f64>,
    /// Bucket size in seconds of capacity.
    pub burst_seconds: f64,
    /// Injected faults.
    pub faults: Faults,
    /// Seed of the fault dice (printed by tests so failures replay).
    pub seed: u64,
    /// Errors for writes of particular items.
    pub key_faults: Vec<KeyFault>,
    /// Shift of the client's wall clock, milliseconds, applied to epoch-millisecond
    /// numbers it sends to other tables than the data table (the state table).
    pub clock_skew_ms: i64,
    /// Application writes racing the migration's writes of chosen items.
    pub races: Vec<KeyRace>,
}

impl Config {
    pub fn new(table: &str) -> Self {
        Config {
            table: table.to_owned(),
            read_capacity: None,
            write_capacity: None,
            burst_seconds: 1.0,
            faults: Faults::default(),
            seed: 0,
            key_faults: Vec::new(),
            clock_skew_ms: 0,
            races: Vec::new(),
        }
    }
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Read,
    Write,
}

/// Counters for one operation.
#[derive(Debug, Clone, Default)]
pub struct OpStats {
    /// Requests received for the data table.
    pub requests: u64,
    /// Answered with a throttling error (capacity or injected).
    pub throttled: u64,
    /// Capacity throttles only (bucket empty).
    pub capacity_throttled: u64,
    /// Injected 5xx, resets.
    pub faults: u64,
    /// Units the endpoint reported for served requests.
    pub units: f64,
}

/// What the proxy saw.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Per operation name (`Scan`, `UpdateItem`, ...).
    pub ops: HashMap<String, OpStats>,
    /// (seconds since start, kind, units) of every served request.
    pub timeline: Vec<(f64, Kind, f64)>,
    /// (seconds since start, kind, throttled) of every request to the data table.
    pub requests: Vec<(f64, Kind, bool)>,
    /// (epoch, `pk` or `pk|sk`) of every item a Scan of the data table returned.
    pub scanned: Vec<(u32, String)>,
    /// (seconds since start, items) of every Scan response of the data table.
    pub scan_pages: Vec<(f64, usize)>,
    /// Key faults answered, per key.
    pub key_faults: HashMap<String, u32>,
    /// Keys whose application write ([`KeyRace`]) was sent.
    pub raced: Vec<String>,
    /// Requests to the data table that neither read nor write items
    /// (DescribeTable, UpdateTable, ...), by operation: passed through unmetered.
    pub table_ops: HashMap<String, u64>,
}

impl Stats {
    /// Totals over all operations of one kind.
    pub fn total(&self, kind: Kind) -> OpStats {
        let mut t = OpStats::default();
        for (op, s) in &self.ops {
            if kind_of(op) == Some(kind) {
                t.requests += s.requests;
                t.throttled += s.throttled;
                t.capacity_throttled += s.capacity_throttled;
                t.faults += s.faults;
                t.units += s.units;
            }
        }
        t
    }

    /// The most units of `kind` served in any window of `window` seconds
    /// (windows start at every served request).
    pub fn max_window(&self, kind: Kind, window: f64) -> f64 {
        let events: Vec<(f64, f64)> = self
            .timeline
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(t, _, u)| (*t, *u))
            .collect();
        let mut best = 0.0;
        let mut sum = 0.0;
        let mut j = 0;
        for i in 0..events.len() {
            while j < events.len() && events[j].0 < events[i].0 + window {
                sum += events[j].1;
                j += 1;
            }
            if sum > best {
                best = sum;
            }
            sum -= events[i].1;
        }
        best
    }

    /// Units of `kind` served between `from` and `to` seconds.
    pub fn units_between(&self, kind: Kind, from: f64, to: f64) -> f64 {
        self.timeline
            .iter()
            .filter(|(t, k, _)| *k == kind && *t >= from && *t < to)
            .map(|(_, _, u)| u)
            .sum()
    }

    /// Requests of `kind` between `from` and `to` seconds, and how many were throttled.
    pub fn requests_between(&self, kind: Kind, from: f64, to: f64) -> (u64, u64) {
        let mut n = (0, 0);
        for (t, k, throttled) in &self.requests {
            if *k == kind && *t >= from && *t < to {
                n.0 += 1;
                n.1 += u64::from(*throttled);
            }
        }
        n
    }

    /// Time of the last served request of `kind`.
    pub fn last(&self, kind: Kind) -> f64 {
        self.timeline
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(t, _, _)| *t)
            .fold(0.0, f64::max)
    }
}

fn kind_of(op: &str) -> Option<Kind> {
    match op {
        "Scan" | "Query" | "GetItem" | "BatchGetItem" => Some(Kind::Read),
        "UpdateItem" | "PutItem" | "DeleteItem" | "BatchWriteItem" => Some(Kind::Write),
        _ => None,
    }
}

struct Bucket {
    capacity: f64,
    size: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(capacity: f64, burst_seconds: f64) -> Self {
        let size = capacity * burst_seconds;
        Bucket {
            capacity,
            size,
            tokens: size,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.capacity).min(self.size);
    }
}

struct Shared {
    config: Config,
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    start: Instant,
    stats: Mutex<Stats>,
    buckets: Mutex<HashMap<Kind, Bucket>>,
    rng: Mutex<rand::rngs::StdRng>,
    epoch: std::sync::atomic::AtomicU32,
    gate: tokio::sync::watch::Sender<Gate>,
}

/// Whether requests get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// Held until the gate opens (delivered late) or drops (never delivered).
    Held,
    Dropped,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: &str, config: Config) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut buckets = HashMap::new();
        if let Some(c) = config.read_capacity {
            buckets.insert(Kind::Read, Bucket::new(c, config.burst_seconds));
        }
        if let Some(c) = config.write_capacity {
            buckets.insert(Kind::Write, Bucket::new(c, config.burst_seconds));
        }
        let shared = Arc::new(Shared {
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(config.seed)),
            config,
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            start: Instant::now(),
            stats: Mutex::new(Stats::default()),
            buckets: Mutex::new(buckets),
            epoch: std::sync::atomic::AtomicU32::new(0),
            gate: tokio::sync::watch::channel(Gate::Open).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy { url, shared, task }
    }

    /// A snapshot of what the proxy saw.
    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// Tags what the proxy sees from now on (e.g. one run attempt each).
    pub fn set_epoch(&self, epoch: u32) {
        self.shared
            .epoch
            .store(epoch, std::sync::atomic::Ordering::SeqCst);
    }

    /// Seconds since the proxy started (the timeline's clock).
    pub fn now(&self) -> f64 {
        self.shared.start.elapsed().as_secs_f64()
    }

    /// Cuts the client off: from now on every request is held, unanswered.
    pub fn cut(&self) {
        self.shared.gate.send_replace(Gate::Held);
    }

    /// Ends the cut: held requests are delivered now, late, and answered if
    /// the client still waits; new ones pass.
    pub fn restore(&self) {
        self.shared.gate.send_replace(Gate::Open);
    }

    /// Held requests are never delivered (their connections are reset), nor
    /// any later one.
    pub fn drop_held(&self) {
        self.shared.gate.send_replace(Gate::Dropped);
    }
}

/// Waits while the gate holds requests; `false` when it drops them.
async fn through_gate(s: &Shared) -> bool {
    let mut gate = s.gate.subscribe();
    loop {
        match *gate.borrow_and_update() {
            Gate::Open => return true,
            Gate::Dropped => return false,
            Gate::Held => {}
        }
        if gate.changed().await.is_err() {
            return false;
        }
    }
}

/// Shifts every `{"N": ...}` that reads as a time within ten years of now in
/// epoch milliseconds by `skew` milliseconds. `true` if anything changed.
fn skew_times(v: &mut Value, skew: i64) -> bool {
    const TEN_YEARS_MS: i64 = 10 * 365 * 24 * 3600 * 1000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    match v {
        Value::Object(map) => {
            if let Some(Value::String(n)) = map.get_mut("N") {
                if let Ok(t) = n.parse::<i64>() {
                    if (t - now).abs() < TEN_YEARS_MS {
                        *n = (t + skew).to_string();
                        return true;
                    }
                }
                return false;
            }
            let mut changed = false;
            for v in map.values_mut() {
                changed |= skew_times(v, skew);
            }
            changed
        }
        Value::Array(list) => {
            let mut changed = false;
            for v in list {
                changed |= skew_times(v, skew);
            }
            changed
        }
        _ => false,
    }
}

#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for Reset {}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "__type": format!("com.amazonaws.dynamodb.v20120810#{code}"),
        "message": message,
    })
    .to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-requestid", "dynbulk-test-proxy")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// What the dice decided for one request.
enum Fate {
    Pass,
    Error(StatusCode, &'static str),
    Reset { after_forward: bool },
    FiveHundredAfterForward,
}

async fn handle(s: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Reset> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| Reset)?.to_bytes();
    // The request is on its way: a cut holds it, in a task of its own, so
    // that it is delivered late even when the client has given up on it.
    if *s.gate.borrow() != Gate::Open {
        let s2 = s.clone();
        return tokio::spawn(async move {
            if !through_gate(&s2).await {
                return Err(Reset);
            }
            handle_open(s2, parts, body).await
        })
        .await
        .map_err(|_| Reset)?;
    }
    handle_open(s, parts, body).await
}

async fn handle_open(
    s: Arc<Shared>,
    mut parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Reset> {
    let op = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split('.').nth(1))
        .unwrap_or("")
        .to_owned();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let tables: Vec<String> = match json.get("TableName").and_then(Value::as_str) {
        Some(t) => vec![t.to_owned()],
        None => json
            .get("RequestItems")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let kind = kind_of(&op);
    let metered = kind.is_some() && tables.iter().any(|t| *t == s.config.table);
    let mut json = json;
    let body = if s.config.clock_skew_ms != 0
        && !tables.iter().any(|t| *t == s.config.table)
        && skew_times(&mut json, s.config.clock_skew_ms)
    {
        let body = Bytes::from(serde_json::to_vec(&json).unwrap());
        parts.headers.insert(
            hyper::header::CONTENT_LENGTH,
            hyper::header::HeaderValue::from(body.len()),
        );
        body
    } else {
        body
    };

    if metered {
        let kind = kind.unwrap();
        s.stats
            .lock()
            .unwrap()
            .ops
            .entry(op.clone())
            .or_default()
            .requests += 1;
        // Capacity first: an empty bucket throttles before anything else.
        let empty = {
            let mut buckets = s.buckets.lock().unwrap();
            match buckets.get_mut(&kind) {
                Some(b) => {
                    b.refill();
                    b.tokens <= 0.0
                }
                None => false,
            }
        };
        let t = s.start.elapsed().as_secs_f64();
        if empty {
            let mut st = s.stats.lock().unwrap();
            st.requests.push((t, kind, true));
            let o = st.ops.entry(op.clone()).or_default();
            o.throttled += 1;
            o.capacity_throttled += 1;
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded.",
            ));
        }
        if let Some(fault) = key_fault(&s, &op, &json) {
            let mut st = s.stats.lock().unwrap();
            let throttle = fault.code.contains("Throughput");
            st.requests.push((t, kind, throttle));
            let o = st.ops.entry(op.clone()).or_default();
            if throttle {
                o.throttled += 1;
            } else {
                o.faults += 1;
            }
            return Ok(error(StatusCode::BAD_REQUEST, fault.code, fault.message));
        }
        if let Some(race) = key_race(&s, &op, &json) {
            forward_update(&s, &parts, &race.update).await?;
        }
        let (fate, delay) = {
            let f = &s.config.faults;
            let mut rng = s.rng.lock().unwrap();
            let delay = (rng.random::<f64>() < f.latency).then_some(f.latency_spike);
            let mut x: f64 = rng.random();
            let mut pick = |p: f64| {
                let hit = x < p;
                x -= p;
                hit
            };
            let fate = if pick(f.throttling) {
                Fate::Error(StatusCode::BAD_REQUEST, "ThrottlingException")
            } else if pick(f.request_limit) {
                Fate::Error(StatusCode::BAD_REQUEST, "RequestLimitExceeded")
            } else if pick(f.provisioned) {
                Fate::Error(
                    StatusCode::BAD_REQUEST,
                    "ProvisionedThroughputExceededException",
                )
            } else if pick(f.http500 / 2.0) {
                Fate::Error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError")
            } else if pick(f.http500 / 2.0) {
                Fate::FiveHundredAfterForward
            } else if pick(f.http503) {
                Fate::Error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            } else if pick(f.reset) {
                Fate::Reset {
                    after_forward: rng.random::<bool>(),
                }
            } else {
                Fate::Pass
            };
            (fate, delay)
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match fate {
            Fate::Error(status, code) => {
                let mut st = s.stats.lock().unwrap();
                st.requests
                    .push((t, kind, status == StatusCode::BAD_REQUEST));
                let o = st.ops.entry(op.clone()).or_default();
                if status == StatusCode::BAD_REQUEST {
                    o.throttled += 1;
                } else {
                    o.faults += 1;
                }
                return Ok(error(status, code, "injected by the dynbulk test proxy"));
            }
            Fate::Reset {
                after_forward: false,
            } => {
                s.stats
                    .lock()
                    .unwrap()
                    .ops
                    .entry(op.clone())
                    .or_default()
                    .faults += 1;
                return Err(Reset);
            }
            _ => {}
        }
        let response = forward(&s, &parts, body).await?;
        let (rparts, rbody) = response;
        let units = if rparts.status == StatusCode::OK {
            consumed(&rbody, &s.config.table)
        } else {
            0.0
        };
        {
            let t = s.start.elapsed().as_secs_f64();
            let mut st = s.stats.lock().unwrap();
            if units > 0.0 {
                st.timeline.push((t, kind, units));
            }
            st.requests.push((t, kind, false));
            if op == "Scan" && rparts.status == StatusCode::OK {
                let epoch = s.epoch.load(std::sync::atomic::Ordering::SeqCst);
                let keys = scanned_keys(&rbody);
                st.scan_pages.push((t, keys.len()));
                st.scanned.extend(keys.into_iter().map(|k| (epoch, k)));
            }
            let o = st.ops.entry(op.clone()).or_default();
            o.units += units;
            if !matches!(fate, Fate::Pass) {
                o.faults += 1;
            }
        }
        if let Some(b) = s.buckets.lock().unwrap().get_mut(&kind) {
            b.refill();
            b.tokens -= units;
        }
        return match fate {
            Fate::Reset { .. } => Err(Reset),
            Fate::FiveHundredAfterForward => Ok(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "injected by the dynbulk test proxy after the request was applied",
            )),
            _ => Ok(Response::from_parts(rparts, Full::new(rbody))),
        };
    }
    if tables.iter().any(|t| *t == s.config.table) {
        *s.stats.lock().unwrap().table_ops.entry(op).or_default() += 1;
    }
    let (rparts, rbody) = forward(&s, &parts, body).await?;
    Ok(Response::from_parts(rparts, Full::new(rbody)))
}

async fn forward(
    s: &Shared,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Result<(hyper::http::response::Parts, Bytes), Reset> {
    let uri = format!(
        "{}{}",
        s.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let req = builder.body(Full::new(body)).map_err(|_| Reset)?;
    let resp = s.client.request(req).await.map_err(|_| Reset)?;
    let (rparts, rbody) = resp.into_parts();
    let rbody = rbody.collect().await.map_err(|_| Reset)?.to_bytes();
    Ok((rparts, rbody))
}

/// Sends `update` (an UpdateItem request) to the endpoint with the headers of
/// the request in hand; fails the test if the endpoint refuses it.
async fn forward_update(
    s: &Shared,
    parts: &hyper::http::request::Parts,
    update: &Value,
) -> Result<(), Reset> {
    let body = Bytes::from(serde_json::to_vec(update).unwrap());
    let mut builder = Request::builder()
        .method(hyper::Method::POST)
        .uri(format!("{}/", s.upstream));
    for (name, value) in &parts.headers {
        if name != hyper::header::CONTENT_LENGTH && name.as_str() != "x-amz-target" {
            builder = builder.header(name, value);
        }
    }
    let req = builder
        .header("x-amz-target", "DynamoDB_20120810.UpdateItem")
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .map_err(|_| Reset)?;
    let resp = s.client.request(req).await.map_err(|_| Reset)?;
    let status = resp.status();
    let text = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| Reset)?
        .to_bytes();
    assert!(
        status.is_success(),
        "the application's racing write failed: {status} {}",
        String::from_utf8_lossy(&text)
    );
    Ok(())
}

/// The application write to send before this request, the first time a
/// migration write of a raced key comes through.
fn key_race(s: &Shared, op: &str, json: &Value) -> Option<KeyRace> {
    if s.config.races.is_empty() || !matches!(op, "UpdateItem" | "DeleteItem" | "PutItem") {
        return None;
    }
    let item = json.get("Key").or_else(|| json.get("Item"))?;
    let key = item_key(item)?;
    let race = s.config.races.iter().find(|r| r.key == key)?;
    let mut stats = s.stats.lock().unwrap();
    if stats.raced.contains(&key) {
        return None;
    }
    stats.raced.push(key);
    Some(race.clone())
}

/// The key fault that answers this request, if any (counted against its `times`).
fn key_fault(s: &Shared, op: &str, json: &Value) -> Option<KeyFault> {
    if s.config.key_faults.is_empty() || !matches!(op, "UpdateItem" | "DeleteItem" | "PutItem") {
        return None;
    }
    let item = json.get("Key").or_else(|| json.get("Item"))?;
    let key = item_key(item)?;
    let fault = s.config.key_faults.iter().find(|f| f.key == key)?;
    let mut stats = s.stats.lock().unwrap();
    let hits = stats.key_faults.entry(key).or_default();
    if *hits >= fault.times {
        return None;
    }
    *hits += 1;
    Some(fault.clone())
}

/// `pk` or `pk|sk` of an item or key in DynamoDB JSON.
fn item_key(item: &Value) -> Option<String> {
    let s = |k: &str| {
        item.get(k)
            .and_then(|a| a.get("S"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match (s("pk"), s("sk")) {
        (Some(pk), Some(sk)) => Some(format!("{pk}|{sk}")),
        (Some(pk), None) => Some(pk),
        _ => None,
    }
}

/// `pk` or `pk|sk` of each item in a Scan response.
fn scanned_keys(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return vec![];
    };
    let s = |item: &Value, k: &str| {
        item.get(k)
            .and_then(|a| a.get("S"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    v.get("Items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| match (s(i, "pk"), s(i, "sk")) {
                    (Some(pk), Some(sk)) => Some(format!("{pk}|{sk}")),
                    (Some(pk), None) => Some(pk),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Units the response reports for `table` (ConsumedCapacity, object or list).
fn consumed(body: &[u8], table: &str) -> f64 {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0.0;
    };
    let one = |c: &Value| -> f64 {
        if c.get("TableName")
            .and_then(Value::as_str)
            .is_some_and(|t| t != table)
        {
            return 0.0;
        }
        c.get("CapacityUnits")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    match v.get("ConsumedCapacity") {
        Some(Value::Array(list)) => list.iter().map(one).sum(),
        Some(c @ Value::Object(_)) => one(c),
        _ => 0.0,
    }
}
