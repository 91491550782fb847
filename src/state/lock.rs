//! One runner per migration and table: a lock item in the state table holding
//! the runner's lease token, a heartbeat counter and the lock's epoch.
//!
//! Liveness is judged the way the Kinesis Client Library judges shard leases,
//! without comparing clocks across machines: a held lock is taken over only
//! after its item was seen unchanged (same token, same heartbeat counter) for
//! a whole lease period on this process's monotonic clock. A holder that
//! heartbeats changes the counter every renewal, so it is never taken over,
//! whatever its clock says. The one shortcut: a holder recorded with this
//! machine's boot id and this process's pid namespace whose pid no longer
//! exists is provably dead and is taken over at once. Where the boot id or the
//! pid namespace cannot be read (macOS, a restricted /proc), the shortcut is
//! not used. The recorded expiry (`expires_ms`) is the holder's wall clock; it
//! is shown by `dynbulk status` and never used to decide.
//!
//! The holder renews its lease every third of a lease, conditioned on its
//! token; a refused renewal means the lock was taken over, and a lease that
//! could not be renewed in time is given up (see the `fence` module): either way
//! the runner stops writing at once.
//!
//! The item is never deleted: releasing the lock removes the holder and keeps
//! `epoch`, which grows by one with every acquisition, so that the epoch
//! orders the runners that ever held it (a fencing token).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;

use crate::dynamo::classify::{AwsError, Cause, Class};
use crate::dynamo::value::Attrs;
use crate::error::{Error, Result};
use crate::state::fence::Fence;
use crate::state::store::{now, runner_identity};

/// How long a lease lasts without a renewal, unless the run says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// How often a lease of length `lease` is renewed: three times per lease, so
/// that one slow or lost renewal does not lose it.
pub fn heartbeat(lease: Duration) -> Duration {
    lease / 3
}

/// How long after a renewal was sent its holder may rely on the lease: a
/// little less than the lease. Another runner takes the lock over only after
/// seeing it unchanged for a whole lease, from after that renewal landed; the
/// sixth kept in hand covers the flight time of a write checked just before
/// the end.
pub fn held_for(lease: Duration) -> Duration {
    lease - lease / 6
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// `user@host`.
    pub owner: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When it took the lock (RFC 3339).
    pub since: String,
    /// Lease expiry by the holder's wall clock, epoch milliseconds (for display).
    pub expires_ms: i64,
    /// The lock's epoch: how many times it was taken, this time included.
    pub epoch: u64,
    /// Renewals so far: changes with every heartbeat.
    pub beat: Option<u64>,
    /// The holder's lease length, milliseconds.
    pub lease_ms: Option<u64>,
    /// `Some("join")` when the run is shared by processes started with
    /// `--join` (the holder is the first of them; every member renews the
    /// lock); `None` for one exclusive runner.
    pub mode: Option<String>,
    identity: Option<Identity>,
    token: String,
}

impl Holder {
    /// What changes whenever the holder is alive: its token and its
    /// heartbeat counter (older versions renewed the expiry only).
    pub(crate) fn version(&self) -> Version {
        match self.beat {
            Some(beat) => (self.token.clone(), beat, None),
            None => (self.token.clone(), 0, Some(self.expires_ms)),
        }
    }
}

/// Token, heartbeat counter, and (for holders that have no counter) expiry.
pub(crate) type Version = (String, u64, Option<i64>);

/// Where a process runs, provably: the kernel's boot id (changes on every
/// boot, differs between machines) and its pid namespace (containers on one
/// kernel have their own). Two processes with the same identity see the same
/// pids.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    boot_id: String,
    pid_ns: String,
}

fn identity() -> Option<Identity> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    // `pid:[4026531836]`: the namespace's inode.
    let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let boot_id = boot_id.trim().to_owned();
    let pid_ns = pid_ns.to_string_lossy().into_owned();
    (!boot_id.is_empty() && !pid_ns.is_empty()).then_some(Identity { boot_id, pid_ns })
}

/// Whether process `pid` of this pid namespace exists; `None` when that cannot
/// be told.
fn pid_exists(pid: u32) -> Option<bool> {
    #[cfg(unix)]
    {
        let pid = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0)?;
        // Signal 0 checks existence and permission without sending anything.
        // SAFETY: kill with signal 0 has no effect on any process.
        if unsafe { libc::kill(pid, 0) } == 0 {
            return Some(true);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Some(false),
            Some(libc::EPERM) => Some(true),
            _ => None,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        None
    }
}

/// The holder is dead beyond doubt: same machine and boot, same pid
/// namespace, and its pid no longer exists. A reused pid only makes this
/// answer "not provably dead", never the reverse.
fn provably_dead(h: &Holder, mine: Option<&Identity>) -> bool {
    match (&h.identity, mine) {
        (Some(theirs), Some(mine)) if theirs == mine => {
            h.pid != std::process::id() && pid_exists(h.pid) == Some(false)
        }
        _ => false,
    }
}

/// What an acquirer concludes from watching a held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not seen unchanged for a whole lease period yet.
    Wait,
    /// It changed while watched: its holder is alive.
    Alive,
    /// Unchanged for a whole lease period: its holder is gone.
    Expired,
}

/// The Kinesis Client Library's rule: a lease is expired when this process
/// has seen it unchanged for `period` on its own monotonic clock. `watch`
/// is what was first seen and when. Segment leases (`--join`) are judged by
/// the same rule (see [`crate::state::lease`]).
pub(crate) fn judge(
    watch: &mut Option<(Version, Instant)>,
    seen: Version,
    now: Instant,
    period: Duration,
) -> Verdict {
    match watch {
        None => {
            *watch = Some((seen, now));
            Verdict::Wait
        }
        Some((first, _)) if *first != seen => Verdict::Alive,
        Some((_, since)) if now.duration_since(*since) >= period => Verdict::Expired,
        Some(_) => Verdict::Wait,
    }
}

/// A held lock. Dropping it does not release it; call [`Lock::release`].
pub struct Lock {
    client: Client,
    state_table: String,
    pk: String,
    token: String,
    beat: Duration,
    heartbeat: tokio::task::JoinHandle<()>,
    /// The lease: its epoch and until when it is held. Lost when the lock is
    /// taken over or cannot be renewed in time; the run must then stop writing.
    pub fence: Fence,
}

pub(crate) fn pk(table: &str, migration: &str) -> String {
    format!("lock#{table}#{migration}")
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn host() -> String {
    runner_identity()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn decode(item: &Attrs) -> Option<Holder> {
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let identity = match (s("boot_id"), s("pid_ns")) {
        (Some(boot_id), Some(pid_ns)) => Some(Identity { boot_id, pid_ns }),
        _ => None,
    };
    Some(Holder {
        owner: s("owner")?,
        host: s("host").unwrap_or_default(),
        pid: n("pid").unwrap_or(0) as u32,
        since: s("since").unwrap_or_default(),
        expires_ms: n("expires_ms").unwrap_or(0),
        epoch: n("epoch").unwrap_or(0).max(0) as u64,
        beat: n("beat").map(|b| b.max(0) as u64),
        lease_ms: n("lease_ms").map(|l| l.max(0) as u64),
        mode: s("mode"),
        identity,
        token: s("token")?,
    })
}

/// Reads the current holder of the lock, if any.
///
/// # Errors
/// When the state table cannot be read.
pub async fn holder(
    client: &Client,
    state_table: &str,
    table: &str,
    migration: &str,
) -> Result<Option<Holder>> {
    let out = client
        .get_item()
        .table_name(state_table)
        .key("pk", AttributeValue::S(pk(table, migration)))
        .key("sk", AttributeValue::S("lock".into()))
        .consistent_read(true)
        .send()
        .await;
    match out {
        Ok(o) => Ok(o.item.as_ref().and_then(decode)),
        Err(e) => {
            let e = AwsError::from_sdk(e);
            if e.cause() == Cause::MissingResource {
                Ok(None)
            } else {
                Err(Error::aws(
                    format!("reading the lock in state table {state_table}"),
                    e,
                ))
            }
        }
    }
}

/// The `mode` of a lock held by the processes of a run shared with `--join`.
pub const JOIN_MODE: &str = "join";

/// Who claims the lock, and how.
#[derive(Clone, Copy)]
struct Claim<'a> {
    token: &'a str,
    lease: Duration,
    mine: &'a Option<Identity>,
    /// [`JOIN_MODE`] for a run shared with `--join`; `None` for one runner.
    mode: Option<&'a str>,
}

/// What a claim of the lock expects to find.
enum Expect<'a> {
    /// No holder (no item, or released).
    Free,
    /// Exactly this holder, unchanged.
    Holder(&'a Holder),
}

/// Takes the lock of `migration` on `table` with a lease of `lease`, or says
/// who holds it. When it is held, watches it for up to one lease period (the
/// holder's, if longer) before deciding.
///
/// # Errors
/// [`Error::Locked`] naming the holder when another live runner has it.
///
/// A state machine over what the lock item holds (free, ours, a live holder,
/// a holder seen unchanged for a lease, a provably dead one on this machine),
/// kept in one function (about 85 lines) so that every transition and its
/// wait is visible in one place.
pub async fn acquire(
    client: &Client,
    state_table: &str,
    table: &str,
    migration: &str,
    lease: Duration,
) -> Result<Lock> {
    let token = format!("{:016x}", rand::random::<u64>());
    let key = pk(table, migration);
    let mine = identity();
    let mut watch = None;
    let mut claims = 0;
    loop {
        let h = match holder(client, state_table, table, migration).await? {
            None => {
                claims += 1;
                let to = Claim {
                    token: &token,
                    lease,
                    mine: &mine,
                    mode: None,
                };
                if let Some(fence) = claim(client, state_table, &key, &to, Expect::Free).await? {
                    return Ok(start(client, state_table, &key, &token, lease, fence));
                }
                if claims >= 5 {
                    return Err(Error::Locked(format!(
                        "could not take the lock of migration {migration} on table {table}: it keeps changing hands; try again"
                    )));
                }
                continue;
            }
            Some(h) => h,
        };
        let period = lease.max(Duration::from_millis(h.lease_ms.unwrap_or(0)));
        // A run shared with --join has other members besides the recorded
        // holder: only watching tells whether any of them is alive.
        let dead_here = h.mode.is_none() && provably_dead(&h, mine.as_ref());
        let first_look = watch.is_none();
        let verdict = if dead_here {
            Verdict::Expired
        } else {
            judge(&mut watch, h.version(), Instant::now(), period)
        };
        match verdict {
            Verdict::Alive => return Err(busy(&h, table, migration)),
            Verdict::Wait => {
                if first_look {
                    tracing::info!(table, migration, holder = %h.owner, pid = h.pid, "the lock is held; watching whether its holder renews it");
                }
                // Often enough to see a renewal within a heartbeat or so.
                tokio::time::sleep(period / 10).await;
            }
            Verdict::Expired => {
                let to = Claim {
                    token: &token,
                    lease,
                    mine: &mine,
                    mode: None,
                };
                let fence = claim(client, state_table, &key, &to, Expect::Holder(&h)).await?;
                if let Some(fence) = fence {
                    let lock = start(client, state_table, &key, &token, lease, fence);
                    if dead_here {
                        tracing::warn!(table, migration, previous = %h.owner, pid = h.pid, since = %h.since, "took over the lock of a runner on this machine whose process no longer exists");
                    } else {
                        tracing::warn!(table, migration, previous = %h.owner, pid = h.pid, since = %h.since, lease_secs = period.as_secs_f64(), "took over the lock: its holder did not renew it for a whole lease period");
                    }
                    return Ok(lock);
                }
                // It changed under us: look again.
                watch = None;
                claims += 1;
                if claims >= 5 {
                    return Err(busy(&h, table, migration));
                }
            }
        }
    }
}

fn busy(h: &Holder, table: &str, migration: &str) -> Error {
    if h.mode.as_deref() == Some(JOIN_MODE) {
        return Error::Locked(format!(
            "migration {migration} on table {table} is being run by processes started with --join \
             (the first: {} (pid {}) since {}); run with --join to join them, or wait for them to finish",
            h.owner, h.pid, h.since
        ));
    }
    Error::Locked(format!(
        "migration {migration} on table {table} is already being run by {} (pid {}) since {}; \
         it renews its lock while it runs. Wait for it to finish; if it died, run again: \
         its lock is taken over once it has gone a whole lease period without renewal",
        h.owner, h.pid, h.since
    ))
}

/// A claim's UpdateItem: the expression that writes this runner into the
/// lock item, and the condition that the item is as `expect` says. No I/O.
///
/// The condition and the holder fields are the lock's protocol and are
/// read together here: the epoch goes up by one, the token is new, the
/// heartbeat counter starts at 0, the boot id and pid namespace say where
/// the holder runs (removed when unknown), and the mode says `--join`.
fn claim_expression(to: &Claim<'_>, expect: Expect<'_>) -> Expression {
    let Claim {
        token,
        lease,
        mine,
        mode,
    } = *to;
    let mut names = HashMap::from([
        ("#owner".to_string(), "owner".to_string()),
        ("#host".to_string(), "host".to_string()),
        ("#pid".to_string(), "pid".to_string()),
        ("#since".to_string(), "since".to_string()),
        ("#token".to_string(), "token".to_string()),
        ("#beat".to_string(), "beat".to_string()),
        ("#lease".to_string(), "lease_ms".to_string()),
        ("#expires".to_string(), "expires_ms".to_string()),
        ("#epoch".to_string(), "epoch".to_string()),
        ("#boot".to_string(), "boot_id".to_string()),
        ("#ns".to_string(), "pid_ns".to_string()),
        ("#mode".to_string(), "mode".to_string()),
    ]);
    let n = |v: i64| AttributeValue::N(v.to_string());
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let mut values = HashMap::from([
        (":owner".to_string(), s(&runner_identity())),
        (":host".to_string(), s(&host())),
        (":pid".to_string(), n(i64::from(std::process::id()))),
        (":since".to_string(), s(&now())),
        (":token".to_string(), s(token)),
        (":zero".to_string(), n(0)),
        (":one".to_string(), n(1)),
        (":lease".to_string(), n(lease.as_millis() as i64)),
        (
            ":expires".to_string(),
            n(now_ms() + lease.as_millis() as i64),
        ),
    ]);
    let mut update = "SET #owner = :owner, #host = :host, #pid = :pid, #since = :since, \
                      #token = :token, #beat = :zero, #lease = :lease, #expires = :expires"
        .to_owned();
    if let Some(id) = mine {
        update.push_str(", #boot = :boot, #ns = :ns");
        values.insert(":boot".into(), s(&id.boot_id));
        values.insert(":ns".into(), s(&id.pid_ns));
    }
    if let Some(mode) = mode {
        update.push_str(", #mode = :mode");
        values.insert(":mode".into(), s(mode));
    }
    let removed: Vec<&str> = [
        mine.is_none().then_some("#boot, #ns"),
        mode.is_none().then_some("#mode"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !removed.is_empty() {
        update.push_str(&format!(" REMOVE {}", removed.join(", ")));
    }
    update.push_str(" ADD #epoch :one");
    let condition = expected(expect, &mut values);
    names.retain(|k, _| update.contains(k.as_str()) || condition.contains(k.as_str()));
    Expression {
        update,
        condition,
        names,
        values,
    }
}

/// The condition that the lock item is as `expect` says (its values go into
/// `values`): free, or exactly the holder seen, renewal count and all.
fn expected(expect: Expect<'_>, values: &mut HashMap<String, AttributeValue>) -> String {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: i64| AttributeValue::N(v.to_string());
    match expect {
        Expect::Free => "attribute_not_exists(#token)".to_owned(),
        Expect::Holder(h) => {
            values.insert(":old_token".into(), s(&h.token));
            match h.beat {
                Some(b) => {
                    values.insert(":old_beat".into(), n(b as i64));
                    "#token = :old_token AND #beat = :old_beat".to_owned()
                }
                None => {
                    values.insert(":old_expires".into(), n(h.expires_ms));
                    "#token = :old_token AND attribute_not_exists(#beat) AND #expires = :old_expires"
                        .to_owned()
                }
            }
        }
    }
}

/// An UpdateItem's expressions and their names and values.
struct Expression {
    update: String,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

/// One conditional write that makes us the holder, if what it expects is
/// still there ([`claim_expression`]); `None` when it is not.
async fn claim(
    client: &Client,
    state_table: &str,
    key: &str,
    to: &Claim<'_>,
    expect: Expect<'_>,
) -> Result<Option<Fence>> {
    let lease = to.lease;
    let Expression {
        update,
        condition,
        names,
        values,
    } = claim_expression(to, expect);
    for attempt in 0..5 {
        let sent = Instant::now();
        let r = client
            .update_item()
            .table_name(state_table)
            .key("pk", AttributeValue::S(key.to_owned()))
            .key("sk", AttributeValue::S("lock".into()))
            .update_expression(&update)
            .condition_expression(&condition)
            .set_expression_attribute_names(Some(names.clone()))
            .set_expression_attribute_values(Some(values.clone()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        let err = match r {
            Ok(out) => {
                let epoch = out
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("epoch"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                return Ok(Some(Fence::new(epoch, sent + held_for(lease))));
            }
            Err(e) => AwsError::from_sdk(e),
        };
        match err.class() {
            Class::ConditionFailed => return Ok(None),
            Class::Throttle | Class::Transient if attempt < 4 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => {
                return Err(Error::aws(
                    format!("taking the lock in state table {state_table}"),
                    err,
                ))
            }
        }
    }
    unreachable!("the last attempt returns")
}

fn start(
    client: &Client,
    state_table: &str,
    pk: &str,
    token: &str,
    lease: Duration,
    fence: Fence,
) -> Lock {
    let beat = heartbeat(lease);
    let heartbeat = {
        let client = client.clone();
        let state_table = state_table.to_owned();
        let pk = pk.to_owned();
        let token = token.to_owned();
        let fence = fence.clone();
        tokio::spawn(async move {
            let mut pause = beat;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tokio::time::sleep_until(fence.until().into()) => {
                        tracing::error!("the run's lock could not be renewed before its lease ran out; stopping at once");
                        fence.lose();
                        return;
                    }
                }
                let sent = Instant::now();
                let renewal = renew(&client, &state_table, &pk, &token, lease);
                // A slow answer still counts, from when it was sent; one after
                // the lease's end proves nothing. After a failure, try again soon.
                let wait = fence.until().saturating_duration_since(Instant::now());
                pause = beat / 4;
                match tokio::time::timeout(wait, renewal).await {
                    Ok(Ok(_)) => {
                        fence.extend(sent + held_for(lease));
                        pause = beat;
                    }
                    Ok(Err(e)) => {
                        if e.class() == Class::ConditionFailed {
                            tracing::error!(error = %e, "the run's lock was taken over by another runner; stopping at once");
                            fence.lose();
                            return;
                        }
                        tracing::warn!(error = %e, "renewing the lock failed; retrying");
                    }
                    Err(_) => {
                        tracing::warn!("renewing the lock got no answer before the lease ran out")
                    }
                }
            }
        })
    };
    Lock {
        client: client.clone(),
        state_table: state_table.to_owned(),
        pk: pk.to_owned(),
        token: token.to_owned(),
        beat,
        heartbeat,
        fence,
    }
}

/// One renewal of the lock held under `token`: the heartbeat counter moves
/// (what watchers judge by) and the displayed expiry with it.
pub(crate) async fn renew(
    client: &Client,
    state_table: &str,
    pk: &str,
    token: &str,
    lease: Duration,
) -> std::result::Result<(), AwsError> {
    client
        .update_item()
        .table_name(state_table)
        .key("pk", AttributeValue::S(pk.to_owned()))
        .key("sk", AttributeValue::S("lock".into()))
        .update_expression("SET #expires = :e ADD #beat :one")
        .condition_expression("#token = :t")
        .expression_attribute_names("#token", "token")
        .expression_attribute_names("#beat", "beat")
        .expression_attribute_names("#expires", "expires_ms")
        .expression_attribute_values(
            ":e",
            AttributeValue::N((now_ms() + lease.as_millis() as i64).to_string()),
        )
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":t", AttributeValue::S(token.to_owned()))
        .send()
        .await
        .map(|_| ())
        .map_err(AwsError::from_sdk)
}

/// A place in a run shared by processes started with `--join`: the lock
/// item is held in [`JOIN_MODE`] under a session token that every member
/// renews (so a runner without `--join` watching it sees it alive while any
/// member is), and the lock's epoch fences the members' state writes.
/// The caller renews it (with its segment leases: see
/// [`crate::state::lease`]).
pub struct Session {
    /// The lock item's partition key.
    pub pk: String,
    /// The session's token: the lock item's, shared by its members.
    pub token: String,
    /// The lease: the lock's epoch, held until the last renewal's send time
    /// plus [`held_for`] the lease.
    pub fence: Fence,
    /// This process took the lock (free, or unrenewed for a lease): no other
    /// member was alive when it did.
    pub opened: bool,
}

/// Joins the session of `h`, a lock held in [`JOIN_MODE`], at once with a
/// renewal of our own as proof; `None` when it changed hands or was
/// released a moment ago. A session whose members all died is joined too,
/// under the same epoch: each member's own fence (its lease deadline) and
/// the segments' lease tokens are what keep a paused or cut-off member from
/// writing.
///
/// # Errors
/// When the renewal fails for another reason than its condition.
async fn join_session(
    client: &Client,
    state_table: &str,
    key: &str,
    h: &Holder,
    lease: Duration,
) -> Result<Option<Session>> {
    let sent = Instant::now();
    match renew(client, state_table, key, &h.token, lease).await {
        Ok(()) => Ok(Some(Session {
            pk: key.to_owned(),
            token: h.token.clone(),
            fence: Fence::new(h.epoch, sent + held_for(lease)),
            opened: false,
        })),
        Err(e) if e.class() == Class::ConditionFailed => Ok(None),
        Err(e) => Err(Error::aws(
            format!("joining the run in state table {state_table}"),
            e,
        )),
    }
}

/// Joins the run of `migration` on `table` shared with `--join`, or opens it:
/// takes a free lock in [`JOIN_MODE`]; joins a lock held in that mode at once,
/// with a renewal of its own as proof; takes the lock of a runner without
/// `--join` over (the epoch grows) once it has gone a whole lease unrenewed,
/// and is refused while that runner renews it.
///
/// One loop: each round reads the lock, and what it found (free, held in
/// join mode, held by a plain runner, unchanged for how long) decides that
/// round's write (a claim, or a renewal in [`join_session`]).
///
/// # Errors
/// [`Error::Locked`] when a live runner holds the run without `--join`.
pub async fn join(
    client: &Client,
    state_table: &str,
    table: &str,
    migration: &str,
    lease: Duration,
) -> Result<Session> {
    let key = pk(table, migration);
    let mine = identity();
    let mut watch = None;
    for _ in 0..1000 {
        let token = format!("{:016x}", rand::random::<u64>());
        let to = Claim {
            token: &token,
            lease,
            mine: &mine,
            mode: Some(JOIN_MODE),
        };
        let h = match holder(client, state_table, table, migration).await? {
            None => match claim(client, state_table, &key, &to, Expect::Free).await? {
                Some(fence) => {
                    return Ok(Session {
                        pk: key,
                        token,
                        fence,
                        opened: true,
                    })
                }
                None => continue,
            },
            Some(h) => h,
        };
        if h.mode.as_deref() == Some(JOIN_MODE) {
            match join_session(client, state_table, &key, &h, lease).await? {
                Some(session) => {
                    tracing::info!(
                        table,
                        migration,
                        epoch = h.epoch,
                        "joined the run in progress"
                    );
                    return Ok(session);
                }
                // It changed hands or was released a moment ago: look again.
                None => continue,
            }
        }
        let period = lease.max(Duration::from_millis(h.lease_ms.unwrap_or(0)));
        let verdict = if provably_dead(&h, mine.as_ref()) {
            Verdict::Expired
        } else {
            judge(&mut watch, h.version(), Instant::now(), period)
        };
        match verdict {
            Verdict::Alive => return Err(busy(&h, table, migration)),
            Verdict::Wait => tokio::time::sleep(period / 10).await,
            Verdict::Expired => {
                if let Some(fence) =
                    claim(client, state_table, &key, &to, Expect::Holder(&h)).await?
                {
                    tracing::warn!(table, migration, previous = %h.owner, pid = h.pid, "took over the run's lock from a runner that did not renew it for a whole lease period");
                    return Ok(Session {
                        pk: key,
                        token,
                        fence,
                        opened: true,
                    });
                }
                watch = None;
            }
        }
    }
    Err(Error::Locked(format!(
        "could not join the run of migration {migration} on table {table}: its lock keeps changing hands; try again"
    )))
}

/// Removes the holder of the lock item `pk` if it still holds `token` (the
/// item and its epoch stay); gives up after `patience`.
pub(crate) async fn remove_holder(
    client: &Client,
    state_table: &str,
    pk: &str,
    token: &str,
    patience: Duration,
) {
    let release = client
        .update_item()
        .table_name(state_table)
        .key("pk", AttributeValue::S(pk.to_owned()))
        .key("sk", AttributeValue::S("lock".into()))
        .update_expression(
            "REMOVE #token, #owner, #host, #pid, #since, #beat, #lease, #expires, #boot, #ns, #mode",
        )
        .condition_expression("#token = :t")
        .expression_attribute_names("#token", "token")
        .expression_attribute_names("#owner", "owner")
        .expression_attribute_names("#host", "host")
        .expression_attribute_names("#pid", "pid")
        .expression_attribute_names("#since", "since")
        .expression_attribute_names("#beat", "beat")
        .expression_attribute_names("#lease", "lease_ms")
        .expression_attribute_names("#expires", "expires_ms")
        .expression_attribute_names("#boot", "boot_id")
        .expression_attribute_names("#ns", "pid_ns")
        .expression_attribute_names("#mode", "mode")
        .expression_attribute_values(":t", AttributeValue::S(token.to_owned()))
        .send();
    let error = match tokio::time::timeout(patience, release).await {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => AwsError::from_sdk(e).to_string(),
        Err(_) => "no answer".to_owned(),
    };
    tracing::warn!(%error, "could not release the lock; another runner takes it over once it has gone a lease period without renewal");
}

impl Lock {
    /// Stops the heartbeat and, if the lock is still ours, removes us as its
    /// holder (the item and its epoch stay). Gives up after a heartbeat's time:
    /// a lock not released is taken over after a lease period anyway.
    pub async fn release(self) {
        self.heartbeat.abort();
        remove_holder(
            &self.client,
            &self.state_table,
            &self.pk,
            &self.token,
            self.beat,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(beat: Option<u64>) -> Holder {
        Holder {
            owner: "a@h".into(),
            host: "h".into(),
            pid: 1,
            since: String::new(),
            expires_ms: 1_000,
            epoch: 4,
            beat,
            lease_ms: None,
            mode: None,
            identity: None,
            token: "old".into(),
        }
    }

    #[test]
    fn a_claim_expression_names_exactly_what_it_uses_and_expects_the_holder_it_saw() {
        let mine = Some(Identity {
            boot_id: "b".into(),
            pid_ns: "pid:[1]".into(),
        });
        let none = None;
        let cases = [
            (
                Claim {
                    token: "t",
                    lease: Duration::from_secs(15),
                    mine: &none,
                    mode: None,
                },
                Expect::Free,
            ),
            (
                Claim {
                    token: "t",
                    lease: Duration::from_secs(15),
                    mine: &mine,
                    mode: Some(JOIN_MODE),
                },
                Expect::Free,
            ),
        ];
        for (claim, expect) in cases {
            let e = claim_expression(&claim, expect);
            assert_eq!(e.condition, "attribute_not_exists(#token)");
            assert!(e.update.ends_with(" ADD #epoch :one"), "{}", e.update);
            assert_eq!(e.values[":token"], AttributeValue::S("t".into()));
            for name in e.names.keys() {
                assert!(
                    e.update.contains(name.as_str()) || e.condition.contains(name.as_str()),
                    "{name} unused"
                );
            }
            let used = e
                .update
                .split(|c: char| !(c == '#' || c.is_alphanumeric()))
                .filter(|w| w.starts_with('#'));
            for name in used {
                assert!(
                    e.names.contains_key(name),
                    "{name} not named in {}",
                    e.update
                );
            }
            match claim.mine {
                Some(_) => assert!(
                    e.update.contains("#boot = :boot") && !e.update.contains("REMOVE #boot")
                ),
                None => assert!(e.update.contains("REMOVE #boot, #ns")),
            }
        }
        let seen = holder(Some(7));
        let claim = Claim {
            token: "t",
            lease: Duration::from_secs(15),
            mine: &none,
            mode: None,
        };
        let e = claim_expression(&claim, Expect::Holder(&seen));
        assert_eq!(e.condition, "#token = :old_token AND #beat = :old_beat");
        assert_eq!(e.values[":old_beat"], AttributeValue::N("7".into()));
        let seen = holder(None);
        let e = claim_expression(&claim, Expect::Holder(&seen));
        assert!(
            e.condition.ends_with("#expires = :old_expires"),
            "{}",
            e.condition
        );
        assert_eq!(e.values[":old_expires"], AttributeValue::N("1000".into()));
    }

    fn v(token: &str, beat: u64) -> Version {
        (token.to_owned(), beat, None)
    }

    #[test]
    fn a_lease_is_expired_only_after_a_whole_period_unchanged_on_the_local_clock() {
        let period = Duration::from_secs(15);
        let t0 = Instant::now();
        let mut watch = None;
        assert_eq!(judge(&mut watch, v("a", 3), t0, period), Verdict::Wait);
        let almost = t0 + period - Duration::from_millis(1);
        assert_eq!(judge(&mut watch, v("a", 3), almost, period), Verdict::Wait);
        assert_eq!(
            judge(&mut watch, v("a", 3), t0 + period, period),
            Verdict::Expired
        );
    }

    #[test]
    fn a_renewal_or_a_new_holder_while_watched_means_alive() {
        let period = Duration::from_secs(15);
        let t0 = Instant::now();
        let mut watch = None;
        judge(&mut watch, v("a", 3), t0, period);
        assert_eq!(
            judge(&mut watch, v("a", 4), t0 + Duration::from_secs(1), period),
            Verdict::Alive,
            "the heartbeat counter moved"
        );
        let mut watch = None;
        judge(&mut watch, v("a", 3), t0, period);
        assert_eq!(
            judge(&mut watch, v("b", 0), t0 + period * 2, period),
            Verdict::Alive,
            "someone else took it"
        );
        // An older holder renews its expiry only: that is a change too.
        let mut watch = None;
        judge(&mut watch, ("a".into(), 0, Some(100)), t0, period);
        assert_eq!(
            judge(&mut watch, ("a".into(), 0, Some(200)), t0 + period, period),
            Verdict::Alive
        );
    }

    fn holder_with(identity: Option<Identity>, pid: u32) -> Holder {
        Holder {
            owner: "u@h".into(),
            host: "h".into(),
            pid,
            since: String::new(),
            expires_ms: 0,
            epoch: 1,
            beat: Some(0),
            lease_ms: Some(15_000),
            mode: None,
            identity,
            token: "t".into(),
        }
    }

    #[test]
    fn only_a_provably_same_machine_and_namespace_allows_the_dead_pid_shortcut() {
        let Some(mine) = identity() else {
            return; // no boot id or pid namespace here: the shortcut is never used
        };
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        let gone = 4_194_305 + 17;
        assert!(provably_dead(
            &holder_with(Some(mine.clone()), gone),
            Some(&mine)
        ));
        assert!(
            !provably_dead(
                &holder_with(Some(mine.clone()), std::process::id()),
                Some(&mine)
            ),
            "a live pid"
        );
        let other = Identity {
            boot_id: "another-boot".into(),
            pid_ns: mine.pid_ns.clone(),
        };
        assert!(!provably_dead(&holder_with(Some(other), gone), Some(&mine)));
        let container = Identity {
            boot_id: mine.boot_id.clone(),
            pid_ns: "pid:[1]".into(),
        };
        assert!(!provably_dead(
            &holder_with(Some(container), gone),
            Some(&mine)
        ));
        assert!(
            !provably_dead(&holder_with(None, gone), Some(&mine)),
            "a holder that recorded no identity"
        );
        assert!(!provably_dead(&holder_with(Some(mine), gone), None));
    }
}
