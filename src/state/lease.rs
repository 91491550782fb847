//! A run shared by processes started with `run --join`: each process's
//! membership and the leases on the run's segments, the way the Kinesis
//! Client Library shares a stream's shards through a lease table.
//!
//! - Membership: the run's lock item is held in join mode (see
//!   [`crate::state::lock::join`]) under a session token every member renews,
//!   and each member keeps a row `member#<token>` in the lock's partition
//!   (owner, pid, heartbeat counter, expiry for display) that `status` lists.
//! - Segment leases live on the segment rows (`segment#<n>` in the run's
//!   partition): `token` (the holder's member token), `owner`, `host`, `pid`,
//!   `since`, a heartbeat counter `beat`, `lease_ms` and `expires_ms` (the
//!   holder's wall clock, shown by `status`, never used to decide). A segment
//!   is claimed by one conditional write: free (no row yet, or a row without
//!   a token and not done), or held by a lease seen unchanged (same token,
//!   same counter) for a whole lease period on this process's monotonic
//!   clock ([`crate::state::lock::judge`], the lock's own rule).
//! - Every heartbeat renews the lock item, the membership row and each held
//!   segment's lease (its counter moves); the member's fence is extended only
//!   when all of them were renewed. A refused renewal (the session or a
//!   segment was taken over) loses the fence: the process stops writing.
//! - Checkpoints of a segment are written only under its lease: conditioned
//!   on the row holding this member's token (and on the fence's epoch), so a
//!   paused former owner can never move a segment's watermark. The segment's
//!   last checkpoint (`done`) releases the lease in the same write.
//! - One capacity budget: each membership row publishes the member's shares
//!   of the run's read and write limits and whether it wants capacity; every
//!   heartbeat, each member reads the others' rows (live ones only: a row
//!   unrenewed for a whole lease is a dead member's) and moves its shares by
//!   [`crate::capacity::share`]'s rule, so their sum stays within the limits.
//! - Each segment row carries the counts of its acknowledged pages over
//!   every process that held it, so the run's totals are the rows' sum.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::capacity::limiter::Budgets;
use crate::capacity::share::{self, Peer};
use crate::dynamo::classify::{AwsError, Class};
use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};
use crate::state::fence::{self, Fence};
use crate::state::lock::{self, heartbeat, held_for, judge, now_ms, Session, Verdict, Version};
use crate::state::store::{now, query_state, runner_identity, Counts};

/// The attributes of a segment row that make up its lease.
const LEASE_ATTRIBUTES: [(&str, &str); 8] = [
    ("#token", "token"),
    ("#owner", "owner"),
    ("#host", "host"),
    ("#pid", "pid"),
    ("#since", "since"),
    ("#beat", "beat"),
    ("#lease", "lease_ms"),
    ("#expires", "expires_ms"),
];

/// A segment's lease, as its row holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentLease {
    /// `user@host` of the holder.
    pub owner: String,
    /// The holder's host.
    pub host: String,
    /// The holder's pid.
    pub pid: u32,
    /// Lease expiry by the holder's wall clock, epoch milliseconds (display only).
    pub expires_ms: i64,
    /// The holder's member token.
    pub token: String,
    /// Renewals so far.
    pub beat: u64,
    /// The holder's lease length, milliseconds.
    pub lease_ms: u64,
}

impl SegmentLease {
    /// What changes while the holder is alive: its token and its counter.
    pub(crate) fn version(&self) -> Version {
        (self.token.clone(), self.beat, None)
    }
}

/// A member of a shared run, as its membership row holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// `user@host`.
    pub owner: String,
    /// Process id.
    pub pid: u32,
    /// When it joined (RFC 3339).
    pub since: String,
    /// Its lease expiry by its own wall clock, epoch milliseconds (display only).
    pub expires_ms: i64,
}

fn s_of(item: &Attrs, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn n_of(item: &Attrs, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// The lease a segment row holds, if any.
pub fn decode_lease(row: &Attrs) -> Option<SegmentLease> {
    Some(SegmentLease {
        token: s_of(row, "token")?,
        owner: s_of(row, "owner").unwrap_or_default(),
        host: s_of(row, "host").unwrap_or_default(),
        pid: n_of(row, "pid").unwrap_or(0).max(0) as u32,
        expires_ms: n_of(row, "expires_ms").unwrap_or(0),
        beat: n_of(row, "beat").unwrap_or(0).max(0) as u64,
        lease_ms: n_of(row, "lease_ms").unwrap_or(0).max(0) as u64,
    })
}

/// The members of the shared run of `migration` on `table` (every row,
/// live or not: a process that died leaves its row behind).
///
/// # Errors
/// When the state table cannot be read.
pub async fn members(
    client: &Client,
    state_table: &str,
    table: &str,
    migration: &str,
) -> Result<Vec<MemberInfo>> {
    let rows = query_state(client, state_table, &lock::pk(table, migration))
        .await
        .map_err(|e| Error::aws(format!("reading the run's members in {state_table}"), e))?;
    Ok(rows
        .iter()
        .filter(|r| s_of(r, "sk").is_some_and(|sk| sk.starts_with("member#")))
        .map(|r| MemberInfo {
            owner: s_of(r, "owner").unwrap_or_default(),
            pid: n_of(r, "pid").unwrap_or(0).max(0) as u32,
            since: s_of(r, "since").unwrap_or_default(),
            expires_ms: n_of(r, "expires_ms").unwrap_or(0),
        })
        .collect())
}

/// What a claim found in a segment's row when it read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// No row: nobody has claimed the segment in this run.
    Missing,
    /// A row of this run without a lease, not done.
    Free,
    /// A row another run left (after a `--restart`): the segment starts over.
    Foreign(String),
    /// A lease seen unchanged for a whole lease period.
    Expired(SegmentLease),
}

/// A segment this member now holds: where it stands and its counts so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// Its checkpoint (`None`: from the start).
    pub last_key: Option<Attrs>,
    /// Counts of its acknowledged pages, over every earlier holder.
    pub base: Counts,
}

struct Held {
    base: Counts,
    _slot: OwnedSemaphorePermit,
}

/// This process's place in a shared run: its session, its member token, the
/// segments it holds, and the heartbeat that renews them all.
pub struct Member {
    client: Client,
    state_table: String,
    run_pk: String,
    session: Session,
    token: String,
    run_id: String,
    lease: Duration,
    held: Mutex<HashMap<u32, Held>>,
    /// Held segments whose last checkpoint (which releases the lease) is
    /// being written: no longer renewed, and a refused renewal sent just
    /// before is no loss.
    closing: Mutex<std::collections::HashSet<u32>>,
    slots: Arc<Semaphore>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    /// The run's read and write limits (units per second; `None`: unlimited),
    /// shared by the live members.
    limits: [Option<f64>; 2],
    /// This process's shares: as published in its membership row, and as
    /// applied to its budgets (an increase is published before it is applied,
    /// a decrease applied before it is published).
    shares: Mutex<Shares>,
    budgets: Mutex<Option<Arc<Budgets>>>,
    /// Other members' rows, watched to tell the live from the dead.
    peers: Mutex<HashMap<String, Option<(Version, Instant)>>>,
}

#[derive(Debug, Clone, Copy)]
struct Shares {
    published: [f64; 2],
    applied: [f64; 2],
    wants: bool,
}

impl Member {
    /// Becomes a member of the run `run_id` of `migration` on `table` under
    /// `session`, holding at most `slots` segments at once and sharing the
    /// run's `limits` (read, write) with the other members; writes the
    /// membership row and starts the heartbeat. A member that opened the
    /// session starts with the whole limits, one that joined with none.
    ///
    /// # Errors
    /// When the membership row cannot be written.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        client: &Client,
        state_table: &str,
        run_pk: String,
        session: Session,
        run_id: &str,
        lease: Duration,
        slots: usize,
        limits: [Option<f64>; 2],
    ) -> Result<Arc<Member>> {
        let first = limits.map(|l| {
            if session.opened {
                l.unwrap_or(0.0)
            } else {
                0.0
            }
        });
        let member = Arc::new(Member {
            client: client.clone(),
            state_table: state_table.to_owned(),
            run_pk,
            session,
            token: format!("{:016x}", rand::random::<u64>()),
            run_id: run_id.to_owned(),
            lease,
            held: Mutex::new(HashMap::new()),
            closing: Mutex::new(std::collections::HashSet::new()),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            heartbeat: Mutex::new(None),
            limits,
            // A member joins to scan: it wants capacity until its first
            // heartbeat finds it holds nothing.
            shares: Mutex::new(Shares {
                published: first,
                applied: first,
                wants: true,
            }),
            budgets: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
        });
        member
            .write_membership(true)
            .await
            .map_err(|e| Error::aws(format!("joining the run in {state_table}"), e))?;
        let task = tokio::spawn(beat(member.clone()));
        *member.heartbeat.lock().unwrap() = Some(task);
        Ok(member)
    }

    /// The member's fence: the lock's epoch and until when this process may write.
    pub fn fence(&self) -> &Fence {
        &self.session.fence
    }

    /// The shared run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// This member's token (the lease token of every segment it holds).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lease period others judge this member's leases by.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Waits for room for one more segment (at most `slots` held at once).
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the member's semaphore is never closed")
    }

    /// Segments held now.
    pub fn held(&self) -> Vec<u32> {
        self.held.lock().unwrap().keys().copied().collect()
    }

    /// Segments held now whose lease is renewed (not being released).
    fn renewed(&self) -> Vec<u32> {
        let closing = self.closing.lock().unwrap();
        self.held()
            .into_iter()
            .filter(|s| !closing.contains(s))
            .collect()
    }

    /// Counts of `segment`'s pages acknowledged before this member claimed it.
    pub fn base(&self, segment: u32) -> Counts {
        self.held
            .lock()
            .unwrap()
            .get(&segment)
            .map(|h| h.base)
            .unwrap_or_default()
    }

    fn lock_pk(&self) -> &str {
        &self.session.pk
    }

    async fn write_membership(&self, first: bool) -> std::result::Result<(), AwsError> {
        let shares = *self.shares.lock().unwrap();
        let mut update = "SET #owner = :owner, #pid = :pid, #lease = :lease, #expires = :expires, \
                          #sr = :sr, #sw = :sw, #wants = :wants \
                          ADD #beat :one"
            .to_owned();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.state_table)
            .key("pk", AttributeValue::S(self.lock_pk().to_owned()))
            .key("sk", AttributeValue::S(format!("member#{}", self.token)))
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#pid", "pid")
            .expression_attribute_names("#lease", "lease_ms")
            .expression_attribute_names("#expires", "expires_ms")
            .expression_attribute_names("#beat", "beat")
            .expression_attribute_values(":owner", AttributeValue::S(runner_identity()))
            .expression_attribute_values(":pid", num(i64::from(std::process::id())))
            .expression_attribute_values(":lease", num(self.lease.as_millis() as i64))
            .expression_attribute_values(":expires", num(now_ms() + self.lease.as_millis() as i64))
            .expression_attribute_values(":one", num(1))
            .expression_attribute_names("#sr", "share_read")
            .expression_attribute_names("#sw", "share_write")
            .expression_attribute_names("#wants", "wants")
            .expression_attribute_values(":sr", AttributeValue::N(shares.published[0].to_string()))
            .expression_attribute_values(":sw", AttributeValue::N(shares.published[1].to_string()))
            .expression_attribute_values(":wants", AttributeValue::Bool(shares.wants));
        if first {
            update = update.replace("SET ", "SET #since = :since, ");
            req = req
                .expression_attribute_names("#since", "since")
                .expression_attribute_values(":since", AttributeValue::S(now()));
        }
        req.update_expression(update)
            .send()
            .await
            .map(|_| ())
            .map_err(AwsError::from_sdk)
    }

    /// Caps `budgets` at this process's shares of the run's limits, from now
    /// on following them.
    pub fn attach(&self, budgets: Arc<Budgets>) {
        let applied = self.shares.lock().unwrap().applied;
        self.apply(&budgets, applied);
        *self.budgets.lock().unwrap() = Some(budgets);
    }

    fn apply(&self, budgets: &Budgets, shares: [f64; 2]) {
        for (k, budget) in [&budgets.read, &budgets.write].into_iter().enumerate() {
            if self.limits[k].is_some() {
                budget.set_share(Some(shares[k]));
            }
        }
    }

    /// Decides this process's next shares from the other live members' rows
    /// (see [`crate::capacity::share`]): a decrease is applied at once, the
    /// new shares are published by this heartbeat's membership write and
    /// applied once it lands ([`Member::apply_published`]). Members whose row
    /// went a whole lease unrenewed are dead and count for nothing.
    ///
    /// About 80 lines on purpose: the members read, the shares decided and
    /// the decrease applied belong to one heartbeat and must agree.
    async fn rebalance(&self) {
        if self.limits.iter().all(Option::is_none) {
            return;
        }
        let Ok(rows) = query_state(&self.client, &self.state_table, self.lock_pk()).await else {
            return;
        };
        let me = format!("member#{}", self.token);
        let now = Instant::now();
        let mut peers: [Vec<Peer>; 2] = [Vec::new(), Vec::new()];
        let mut dead = Vec::new();
        {
            let mut watches = self.peers.lock().unwrap();
            let mut seen = Vec::new();
            for row in &rows {
                let Some(sk) = s_of(row, "sk").filter(|sk| sk.starts_with("member#") && *sk != me)
                else {
                    continue;
                };
                seen.push(sk.clone());
                let version = (
                    sk.clone(),
                    n_of(row, "beat").unwrap_or(0).max(0) as u64,
                    None,
                );
                let period = self.lease.max(Duration::from_millis(
                    n_of(row, "lease_ms").unwrap_or(0).max(0) as u64,
                ));
                let watch = watches.entry(sk).or_default();
                match judge(watch, version.clone(), now, period) {
                    Verdict::Expired => {
                        dead.push(version);
                        continue;
                    }
                    Verdict::Alive => *watch = Some((version, now)),
                    Verdict::Wait => {}
                }
                let wants = matches!(row.get("wants"), Some(AttributeValue::Bool(true)));
                for (k, name) in ["share_read", "share_write"].into_iter().enumerate() {
                    let share = row
                        .get(name)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0);
                    peers[k].push(Peer { share, wants });
                }
            }
            watches.retain(|sk, _| seen.contains(sk));
        }
        // A dead member's row goes (unless it was renewed meanwhile), so
        // that the last member out can release the lock.
        for (sk, beat, _) in dead {
            let _ = self
                .client
                .delete_item()
                .table_name(&self.state_table)
                .key("pk", AttributeValue::S(self.lock_pk().to_owned()))
                .key("sk", AttributeValue::S(sk))
                .condition_expression("#beat = :beat")
                .expression_attribute_names("#beat", "beat")
                .expression_attribute_values(":beat", num(beat as i64))
                .send()
                .await;
        }
        let wants = !self.held().is_empty();
        let mut shares = self.shares.lock().unwrap();
        shares.wants = wants;
        for (k, peers) in peers.iter().enumerate() {
            let Some(limit) = self.limits[k] else {
                continue;
            };
            let (next, _) = share::next(limit, shares.applied[k], wants, peers);
            shares.published[k] = next;
            if next < shares.applied[k] {
                shares.applied[k] = next;
            }
        }
        let applied = shares.applied;
        drop(shares);
        if let Some(b) = self.budgets.lock().unwrap().as_ref() {
            self.apply(b, applied);
        }
    }

    /// The published shares are in the membership row: use them.
    fn apply_published(&self) {
        let mut shares = self.shares.lock().unwrap();
        shares.applied = shares.published;
        let applied = shares.applied;
        drop(shares);
        if let Some(b) = self.budgets.lock().unwrap().as_ref() {
            self.apply(b, applied);
        }
    }

    /// This process's shares of the run's read and write limits, as applied.
    pub fn shares(&self) -> [f64; 2] {
        self.shares.lock().unwrap().applied
    }

    /// One renewal of `segment`'s lease, refused when it is no longer ours.
    async fn renew_segment(&self, segment: u32) -> std::result::Result<(), AwsError> {
        self.client
            .update_item()
            .table_name(&self.state_table)
            .key("pk", AttributeValue::S(self.run_pk.clone()))
            .key("sk", AttributeValue::S(format!("segment#{segment}")))
            .update_expression("SET #expires = :e ADD #beat :one")
            .condition_expression("#token = :t")
            .expression_attribute_names("#token", "token")
            .expression_attribute_names("#beat", "beat")
            .expression_attribute_names("#expires", "expires_ms")
            .expression_attribute_values(":e", num(now_ms() + self.lease.as_millis() as i64))
            .expression_attribute_values(":one", num(1))
            .expression_attribute_values(":t", AttributeValue::S(self.token.clone()))
            .send()
            .await
            .map(|_| ())
            .map_err(AwsError::from_sdk)
    }

    /// Claims `segment`, found as `observed`, by one conditional write;
    /// `None` when another process got there first. `slot` is held with it
    /// until the segment is done or released (and given back on `None`).
    ///
    /// # Errors
    /// When the state table cannot be written or the fence is lost.
    ///
    /// About 100 lines on purpose: the conditional write and what it expects
    /// of the segment row as observed (missing, free, another run's, or a
    /// holder's) are the segment lease's protocol and are read together.
    pub async fn claim(
        &self,
        segment: u32,
        observed: &Observed,
        slot: OwnedSemaphorePermit,
    ) -> Result<std::result::Result<Claimed, OwnedSemaphorePermit>> {
        let fence = self.fence();
        let mut names: HashMap<String, String> = LEASE_ATTRIBUTES
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (k, v) in [
            ("#run", "run_id"),
            ("#fence", fence::ATTRIBUTE),
            ("#done", "done"),
            ("#last", "last_key"),
            ("#sk", "sk"),
        ] {
            names.insert(k.into(), v.into());
        }
        let mut values: HashMap<String, AttributeValue> = HashMap::from([
            (":token".into(), AttributeValue::S(self.token.clone())),
            (":owner".into(), AttributeValue::S(runner_identity())),
            (":host".into(), AttributeValue::S(lock::host())),
            (":pid".into(), num(i64::from(std::process::id()))),
            (":since".into(), AttributeValue::S(now())),
            (":zero".into(), num(0)),
            (":lease".into(), num(self.lease.as_millis() as i64)),
            (
                ":expires".into(),
                num(now_ms() + self.lease.as_millis() as i64),
            ),
            (":run".into(), AttributeValue::S(self.run_id.clone())),
            (":fence".into(), num(fence.epoch() as i64)),
        ]);
        let mut update = "SET #token = :token, #owner = :owner, #host = :host, #pid = :pid, \
                          #since = :since, #beat = :zero, #lease = :lease, #expires = :expires, \
                          #run = :run, #fence = :fence"
            .to_owned();
        let which = match observed {
            Observed::Missing => "attribute_not_exists(#sk)".to_owned(),
            Observed::Free => {
                "#run = :run AND attribute_not_exists(#token) AND attribute_not_exists(#done)"
                    .to_owned()
            }
            Observed::Foreign(old) => {
                // Another run's row: this run's segment starts from its beginning.
                values.insert(":old".into(), AttributeValue::S(old.clone()));
                let mut zero = Attrs::new();
                Counts::default().store(&mut zero);
                for name in zero.keys() {
                    update.push_str(&format!(", #c_{name} = :zero"));
                    names.insert(format!("#c_{name}"), name.clone());
                }
                update.push_str(" REMOVE #done, #last");
                "#run = :old".to_owned()
            }
            Observed::Expired(l) => {
                values.insert(":old_token".into(), AttributeValue::S(l.token.clone()));
                values.insert(":old_beat".into(), num(l.beat as i64));
                "#run = :run AND #token = :old_token AND #beat = :old_beat".to_owned()
            }
        };
        let condition = format!("({which}) AND ({})", fence::UPDATE_CONDITION);
        names.retain(|k, _| update.contains(k.as_str()) || condition.contains(k.as_str()));
        let send = || {
            let req = self
                .client
                .update_item()
                .table_name(&self.state_table)
                .key("pk", AttributeValue::S(self.run_pk.clone()))
                .key("sk", AttributeValue::S(format!("segment#{segment}")))
                .update_expression(&update)
                .condition_expression(&condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .return_values(ReturnValue::AllNew);
            async move { req.send().await.map_err(AwsError::from_sdk) }
        };
        let what = format!(
            "claiming segment {segment} in state table {}",
            self.state_table
        );
        let Some(out) = fence::attempt(fence, &what, send).await? else {
            return Ok(Err(slot));
        };
        // The row as our claim left it: the checkpoint and counts it holds
        // now, whatever a late checkpoint of the previous holder moved.
        let row = out.attributes.unwrap_or_default();
        let last_key = match row.get("last_key") {
            Some(AttributeValue::M(k)) => Some(k.clone()),
            _ => None,
        };
        let base = Counts::load(|k| Ok::<_, ()>(n_of(&row, k).unwrap_or(0).max(0) as u64))
            .unwrap_or_default();
        self.held
            .lock()
            .unwrap()
            .insert(segment, Held { base, _slot: slot });
        Ok(Ok(Claimed { last_key, base }))
    }

    /// Saves `segment`'s checkpoint under its lease: at `last_key`, or done
    /// (`None`), which releases the lease in the same write. `counts` are the
    /// segment's over every holder. A refused condition means the segment was
    /// taken over: the fence is lost and nothing more is written.
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lease or the fence is gone; [`Error::Aws`] otherwise.
    pub async fn save(
        &self,
        segment: u32,
        last_key: Option<&Attrs>,
        counts: &Counts,
    ) -> Result<()> {
        let fence = self.fence();
        let mut names: HashMap<String, String> = HashMap::from([
            ("#token".into(), "token".into()),
            ("#run".into(), "run_id".into()),
            ("#fence".into(), fence::ATTRIBUTE.into()),
            ("#at".into(), "checkpoint_at".into()),
            ("#by".into(), "saved_by".into()),
        ]);
        let mut values: HashMap<String, AttributeValue> = HashMap::from([
            (":me".into(), AttributeValue::S(self.token.clone())),
            (":run".into(), AttributeValue::S(self.run_id.clone())),
            (":fence".into(), num(fence.epoch() as i64)),
            (":at".into(), AttributeValue::S(now())),
        ]);
        let mut update = "SET #run = :run, #fence = :fence, #at = :at, #by = :me".to_owned();
        let mut stored = Attrs::new();
        counts.store(&mut stored);
        for (name, v) in stored {
            update.push_str(&format!(", #c_{name} = :c_{name}"));
            names.insert(format!("#c_{name}"), name.clone());
            values.insert(format!(":c_{name}"), v);
        }
        match last_key {
            Some(k) => {
                update.push_str(", #last = :last");
                names.insert("#last".into(), "last_key".into());
                values.insert(":last".into(), AttributeValue::M(k.clone()));
            }
            None => {
                update.push_str(", #done = :done REMOVE #last");
                names.insert("#done".into(), "done".into());
                names.insert("#last".into(), "last_key".into());
                values.insert(":done".into(), AttributeValue::Bool(true));
                for (k, v) in LEASE_ATTRIBUTES {
                    if k != "#token" {
                        update.push_str(&format!(", {k}"));
                        names.insert(k.into(), v.into());
                    }
                }
                update.push_str(", #token");
            }
        }
        let condition = format!("#token = :me AND ({})", fence::UPDATE_CONDITION);
        let send = || {
            let req = self
                .client
                .update_item()
                .table_name(&self.state_table)
                .key("pk", AttributeValue::S(self.run_pk.clone()))
                .key("sk", AttributeValue::S(format!("segment#{segment}")))
                .update_expression(&update)
                .condition_expression(&condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()));
            async move { req.send().await.map(|_| ()).map_err(AwsError::from_sdk) }
        };
        let what = format!(
            "saving the checkpoint of segment {segment} in state table {}",
            self.state_table
        );
        if last_key.is_none() {
            self.closing.lock().unwrap().insert(segment);
        }
        match fence::attempt(fence, &what, send).await? {
            Some(()) => {
                if last_key.is_none() {
                    self.held.lock().unwrap().remove(&segment);
                    self.closing.lock().unwrap().remove(&segment);
                }
                Ok(())
            }
            None => {
                fence.lose();
                Err(Error::LockLost(format!(
                    "{what} was refused: another process took the segment's lease over \
                     (this one went a whole lease without renewing it); this process stopped writing at once"
                )))
            }
        }
    }

    /// Names `file` in the run's header as a dead-letter file of the run,
    /// once (before any checkpoint moves past its records).
    ///
    /// # Errors
    /// When the header cannot be written or the fence is lost.
    pub async fn name_dead_letter(&self, file: &str) -> Result<()> {
        self.name_file("dead_letters", "dead-letter file", file)
            .await
    }

    /// Names `file` in the run's header as this process's journal, before
    /// the process's first write.
    ///
    /// # Errors
    /// When the header cannot be written or the fence is lost.
    pub async fn name_journal(&self, file: &str) -> Result<()> {
        self.name_file("journals", "journal", file).await
    }

    /// Appends `file` to the header's list `attribute`, once.
    async fn name_file(&self, attribute: &str, what: &str, file: &str) -> Result<()> {
        let fence = self.fence();
        let send = || {
            let req = self
                .client
                .update_item()
                .table_name(&self.state_table)
                .key("pk", AttributeValue::S(self.run_pk.clone()))
                .key("sk", AttributeValue::S("run".into()))
                .update_expression("SET #dl = list_append(if_not_exists(#dl, :empty), :file)")
                .condition_expression(
                    "#run = :run AND (attribute_not_exists(#dl) OR NOT contains(#dl, :f))",
                )
                .expression_attribute_names("#dl", attribute)
                .expression_attribute_names("#run", "run_id")
                .expression_attribute_values(":empty", AttributeValue::L(vec![]))
                .expression_attribute_values(
                    ":file",
                    AttributeValue::L(vec![AttributeValue::S(file.to_owned())]),
                )
                .expression_attribute_values(":f", AttributeValue::S(file.to_owned()))
                .expression_attribute_values(":run", AttributeValue::S(self.run_id.clone()));
            async move { req.send().await.map(|_| ()).map_err(AwsError::from_sdk) }
        };
        let what = format!("naming the {what} in state table {}", self.state_table);
        // Refused: the file is named already (another attempt of this process's path).
        fence::attempt(fence, &what, send).await.map(|_| ())
    }

    /// Leaves the run: stops the heartbeat, releases the segments still held
    /// (their checkpoints are saved: others go on from them at once), removes
    /// the membership row and, when no member is left, releases the lock.
    /// Sends nothing once the fence is lost. Gives up on a write after a heartbeat.
    pub async fn leave(&self) {
        if let Some(task) = self.heartbeat.lock().unwrap().take() {
            task.abort();
        }
        if !self.fence().held() {
            return;
        }
        let patience = heartbeat(self.lease);
        let releases = self.held().into_iter().map(|segment| async move {
            let mut update = "REMOVE ".to_owned();
            let mut req = self
                .client
                .update_item()
                .table_name(&self.state_table)
                .key("pk", AttributeValue::S(self.run_pk.clone()))
                .key("sk", AttributeValue::S(format!("segment#{segment}")))
                .condition_expression("#token = :me")
                .expression_attribute_values(":me", AttributeValue::S(self.token.clone()));
            let removed: Vec<&str> = LEASE_ATTRIBUTES.iter().map(|(k, _)| *k).collect();
            update.push_str(&removed.join(", "));
            for (k, v) in LEASE_ATTRIBUTES {
                req = req.expression_attribute_names(k, v);
            }
            let r = tokio::time::timeout(patience, req.update_expression(update).send()).await;
            match r {
                Ok(Ok(_)) => tracing::info!(segment, "released the segment's lease"),
                _ => tracing::warn!(segment, "could not release the segment's lease; others take it over once it has gone a lease period without renewal"),
            }
        });
        futures::future::join_all(releases).await;
        self.held.lock().unwrap().clear();
        let delete = self
            .client
            .delete_item()
            .table_name(&self.state_table)
            .key("pk", AttributeValue::S(self.lock_pk().to_owned()))
            .key("sk", AttributeValue::S(format!("member#{}", self.token)))
            .send();
        if tokio::time::timeout(patience, delete).await.is_err() {
            return;
        }
        leave_session(&self.client, &self.state_table, &self.session, self.lease).await;
    }
}

/// Leaves a shared run's session without (or after) being a member: when no
/// membership row is left, releases the lock, so a later run need not wait a
/// lease period for it. A member that died left its row: the lock is then
/// left to expire.
pub async fn leave_session(client: &Client, state_table: &str, session: &Session, lease: Duration) {
    let Ok(rows) = query_state(client, state_table, &session.pk).await else {
        return;
    };
    let left = rows
        .iter()
        .any(|r| s_of(r, "sk").is_some_and(|sk| sk.starts_with("member#")));
    if !left {
        lock::remove_holder(
            client,
            state_table,
            &session.pk,
            &session.token,
            heartbeat(lease),
        )
        .await;
    }
}

fn num(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The member's heartbeat: every third of a lease, renews the lock item, the
/// membership row and every held segment; the fence is extended from the
/// send time only when all of them were renewed. A refused renewal loses the
/// fence at once; one that fails otherwise is retried soon, until the
/// fence's deadline passes.
async fn beat(member: Arc<Member>) {
    let fence = member.fence().clone();
    let every = heartbeat(member.lease);
    let mut pause = every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::time::sleep_until(fence.until().into()) => {
                tracing::error!("this process could not renew its membership and leases before they ran out; stopping at once");
                fence.lose();
                return;
            }
        }
        member.rebalance().await;
        let sent = Instant::now();
        let segments = member.renewed();
        let renewals = async {
            let lock = lock::renew(
                &member.client,
                &member.state_table,
                member.lock_pk(),
                &member.session.token,
                member.lease,
            );
            let me = member.write_membership(false);
            let held = futures::future::join_all(segments.iter().map(|s| member.renew_segment(*s)));
            let (lock, me, held) = tokio::join!(lock, me, held);
            // A segment released while its renewal was in flight refuses it: no loss.
            let closing = member.closing.lock().unwrap().clone();
            let held = segments
                .iter()
                .zip(held)
                .map(|(s, r)| match r {
                    Err(e) if closing.contains(s) || !member.held().contains(s) => {
                        tracing::debug!(segment = s, error = %e, "a renewal crossed the segment's release");
                        Ok(())
                    }
                    r => r,
                });
            std::iter::once(lock)
                .chain(std::iter::once(me))
                .chain(held)
                .collect::<Vec<_>>()
        };
        let wait = fence.until().saturating_duration_since(Instant::now());
        pause = every / 4;
        match tokio::time::timeout(wait, renewals).await {
            Ok(results) => {
                if let Some(e) = results
                    .iter()
                    .filter_map(|r| r.as_ref().err())
                    .find(|e| e.class() == Class::ConditionFailed)
                {
                    tracing::error!(error = %e, "this process's membership or a segment's lease was taken over; stopping at once");
                    fence.lose();
                    return;
                }
                match results.iter().find_map(|r| r.as_ref().err()) {
                    None => {
                        fence.extend(sent + held_for(member.lease));
                        member.apply_published();
                        pause = every;
                    }
                    Some(e) => {
                        tracing::warn!(error = %e, "renewing the membership and leases failed; retrying")
                    }
                }
            }
            Err(_) => tracing::warn!(
                "renewing the membership and leases got no answer before the lease ran out"
            ),
        }
    }
}
