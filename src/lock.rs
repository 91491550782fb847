//! One runner per migration and table: a lock item in the state table with an
//! owner, a lease that expires, and a heartbeat that renews it.
//!
//! Taking the lock is a conditional write that succeeds when there is no lock
//! or its lease has expired (its holder died). A holder on this host whose
//! process no longer exists is taken over at once. The heartbeat renews the
//! lease conditioned on our token; if that fails, someone took the lock over
//! and this runner must stop.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use tokio_util::sync::CancellationToken;

use crate::error::{AwsError, Class, Error, Result};
use crate::ledger::runner_identity;
use crate::migration::Attrs;

/// How long a lease lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often the heartbeat renews it.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

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
    /// Lease expiry, epoch milliseconds.
    pub expires_ms: i64,
    token: String,
}

/// A held lock. Dropping it does not release it; call [`Lock::release`].
pub struct Lock {
    client: Client,
    state_table: String,
    pk: String,
    token: String,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Fires when the lock was lost (taken over); the run must stop.
    pub lost: CancellationToken,
}

fn pk(table: &str, migration: &str) -> String {
    format!("lock#{table}#{migration}")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn host() -> String {
    runner_identity()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn decode(item: &Attrs) -> Option<Holder> {
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    Some(Holder {
        owner: s("owner")?,
        host: s("host").unwrap_or_default(),
        pid: n("pid").unwrap_or(0) as u32,
        since: s("since").unwrap_or_default(),
        expires_ms: n("expires_ms")?,
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
            if e.code.as_deref() == Some("ResourceNotFoundException") {
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

/// Takes the lock of `migration` on `table`, or says who holds it.
///
/// # Errors
/// [`Error::Usage`] naming the holder when another live runner has it.
pub async fn acquire(
    client: &Client,
    state_table: &str,
    table: &str,
    migration: &str,
) -> Result<Lock> {
    let token = format!("{:016x}", rand::random::<u64>());
    let key = pk(table, migration);
    let item = |expires: i64| -> Attrs {
        HashMap::from([
            ("pk".into(), AttributeValue::S(key.clone())),
            ("sk".into(), AttributeValue::S("lock".into())),
            ("owner".into(), AttributeValue::S(runner_identity())),
            ("host".into(), AttributeValue::S(host())),
            (
                "pid".into(),
                AttributeValue::N(std::process::id().to_string()),
            ),
            ("since".into(), AttributeValue::S(crate::ledger::now())),
            ("token".into(), AttributeValue::S(token.clone())),
            ("expires_ms".into(), AttributeValue::N(expires.to_string())),
        ])
    };
    for _ in 0..5 {
        let now = now_ms();
        let r = client
            .put_item()
            .table_name(state_table)
            .set_item(Some(item(now + LEASE.as_millis() as i64)))
            .condition_expression("attribute_not_exists(pk) OR expires_ms < :now")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .send()
            .await;
        let err = match r {
            Ok(_) => return Ok(start(client, state_table, key, token)),
            Err(e) => AwsError::from_sdk(e),
        };
        if err.class() != Class::ConditionFailed {
            if matches!(err.class(), Class::Throttle | Class::Transient) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            return Err(Error::aws(
                format!("taking the lock in state table {state_table}"),
                err,
            ));
        }
        let Some(h) = holder(client, state_table, table, migration).await? else {
            continue;
        };
        let dead_here = h.host == host() && h.pid != std::process::id() && !pid_alive(h.pid);
        if !dead_here {
            let expires = chrono::DateTime::from_timestamp_millis(h.expires_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            return Err(Error::Usage(format!(
                "migration {migration} on table {table} is already being run by {} (pid {}) since {}; \
                 its lease runs until {expires} and is renewed while it runs. Wait for it to finish; \
                 if it died on another machine, run again after the lease expires",
                h.owner, h.pid, h.since
            )));
        }
        // Its process is gone: take over at once, conditioned on its token.
        let now = now_ms();
        let r = client
            .put_item()
            .table_name(state_table)
            .set_item(Some(item(now + LEASE.as_millis() as i64)))
            .condition_expression("#t = :old")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":old", AttributeValue::S(h.token.clone()))
            .send()
            .await;
        if r.is_ok() {
            tracing::warn!(table, migration, previous = %h.owner, pid = h.pid, since = %h.since, "took over the lock of a runner on this host whose process no longer exists");
            return Ok(start(client, state_table, key, token));
        }
    }
    Err(Error::Usage(format!(
        "could not take the lock of migration {migration} on table {table}: it keeps changing hands; try again"
    )))
}

fn start(client: &Client, state_table: &str, pk: String, token: String) -> Lock {
    let lost = CancellationToken::new();
    let heartbeat = {
        let client = client.clone();
        let state_table = state_table.to_owned();
        let pk = pk.clone();
        let token = token.clone();
        let lost = lost.clone();
        tokio::spawn(async move {
            // Our lease is good until this instant (measured from when the
            // renewal was sent, so a slow answer cannot stretch it).
            let mut valid_until = std::time::Instant::now() + LEASE;
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let sent = std::time::Instant::now();
                let renewal = client
                    .update_item()
                    .table_name(&state_table)
                    .key("pk", AttributeValue::S(pk.clone()))
                    .key("sk", AttributeValue::S("lock".into()))
                    .update_expression("SET expires_ms = :e")
                    .condition_expression("#t = :t")
                    .expression_attribute_names("#t", "token")
                    .expression_attribute_values(
                        ":e",
                        AttributeValue::N((now_ms() + LEASE.as_millis() as i64).to_string()),
                    )
                    .expression_attribute_values(":t", AttributeValue::S(token.clone()))
                    .send();
                match tokio::time::timeout(HEARTBEAT - Duration::from_secs(1), renewal).await {
                    Ok(Ok(_)) => valid_until = sent + LEASE,
                    Ok(Err(e)) => {
                        let e = AwsError::from_sdk(e);
                        if e.class() == Class::ConditionFailed {
                            tracing::error!(error = %e, "the run's lock was taken over by another runner; stopping");
                            lost.cancel();
                            return;
                        }
                        tracing::warn!(error = %e, "renewing the lock failed; retrying at the next heartbeat");
                    }
                    Err(_) => tracing::warn!(
                        "renewing the lock timed out; retrying at the next heartbeat"
                    ),
                }
                // Stop before the lease can run out under us: another runner
                // could then take the lock while we still write.
                if std::time::Instant::now() + HEARTBEAT >= valid_until {
                    tracing::error!("the lock could not be renewed before its lease ends; stopping with checkpoints saved");
                    lost.cancel();
                    return;
                }
            }
        })
    };
    Lock {
        client: client.clone(),
        state_table: state_table.to_owned(),
        pk,
        token,
        heartbeat,
        lost,
    }
}

impl Lock {
    /// Stops the heartbeat and deletes the lock if it is still ours.
    pub async fn release(self) {
        self.heartbeat.abort();
        let r = self
            .client
            .delete_item()
            .table_name(&self.state_table)
            .key("pk", AttributeValue::S(self.pk.clone()))
            .key("sk", AttributeValue::S("lock".into()))
            .condition_expression("#t = :t")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":t", AttributeValue::S(self.token.clone()))
            .send()
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %AwsError::from_sdk(e), "could not release the lock; it expires with its lease");
        }
    }
}
