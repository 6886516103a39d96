//! The Redis home of the idempotency records: one Lua script per step, on
//! one key per record; reservations and completions are batched
//! ([`batches`]).

mod batches;
mod done;
mod replays;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::{Script, Value};

use super::{
    Flag, Hold, IdempotencyHome, IdempotencyStore, Replicas, Reservation, Reserve, Written,
};
use crate::error::StoreError;
use crate::idempotency::fingerprint::RecordKey;
use crate::store::batch::Batcher;
use crate::store::lane::Lane;
use crate::RedisStore;
use batches::{Completes, Completion, Reserves, COMPLETE, RESERVE};
use done::Done;
use replays::Replays;

static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/release.lua")));
static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/renew.lua")));

/// The idempotency home of one [`RedisStore`]: the layer's own lane (own
/// breakers, so a flood of another layer's failures never opens them).
#[derive(Debug)]
pub(crate) struct RedisHome {
    prefix: String,
    lane: Lane,
    reserves: Arc<Batcher<Reserves>>,
    completes: Arc<Batcher<Completes>>,
    /// The responses this instance stored, for retries that come back to it.
    replays: Arc<Replays>,
}

impl IdempotencyStore for RedisStore {
    fn idempotency_home(&self) -> Arc<dyn IdempotencyHome> {
        let done = Done::new();
        Arc::new(RedisHome {
            prefix: self.prefix().to_owned(),
            lane: {
                let lane = self.lane("idempotency", false);
                lane.preload(&[&*RESERVE, &*COMPLETE, &*RELEASE, &*RENEW]);
                lane
            },
            // Made on the store's first use, for both protocols at once.
            reserves: self.batcher(|| Reserves {
                prefix: self.prefix().to_owned(),
                done: done.clone(),
            }),
            completes: self.batcher(|| Completes {
                prefix: self.prefix().to_owned(),
                done,
            }),
            replays: Arc::new(Replays::new()),
        })
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// `{prefix}:idem:{digest}`: one hash per record (state, fingerprint,
/// lease token, response), so the hash tag puts all of it in one slot.
fn key(prefix: &str, key: &RecordKey) -> String {
    format!("{prefix}:idem:{{{}}}", key.0)
}

impl RedisHome {
    fn key(&self, record: &RecordKey) -> String {
        key(&self.prefix, record)
    }

    /// Runs `script` on one record with `args`, under the breaker and deadline.
    fn call(
        &self,
        script: &'static Script,
        key: &RecordKey,
        args: Vec<Bytes>,
    ) -> BoxFuture<'static, Result<Value, StoreError>> {
        let lane = self.lane.clone();
        let redis_key = self.key(key);
        Box::pin(async move {
            let mut inv = script.key(&redis_key);
            for a in &args {
                inv.arg(&a[..]);
            }
            let mut conn = lane.conn();
            lane.call(&redis_key, inv.invoke_async::<Value>(&mut conn))
                .await
        })
    }

    /// A script on a held record, `hold`'s token first among `args`: it
    /// answers 1 (done) or 0 (the token does not hold the lease).
    fn flag(&self, script: &'static Script, hold: &Hold, mut args: Vec<Bytes>) -> Flag {
        args.insert(0, Bytes::copy_from_slice(&hold.token.0));
        let call = self.call(script, &hold.key, args);
        Box::pin(async move {
            match call.await? {
                Value::Int(n) => Ok(n == 1),
                other => Err(StoreError::protocol(format!(
                    "idempotency script returned {other:?}"
                ))),
            }
        })
    }
}

impl RedisHome {
    /// `WAIT n timeout` on the connection (on a cluster, to the master of
    /// the record's slot) that carried the completion: Redis answers once
    /// `n` replicas acknowledged every write sent on it so far, or when the
    /// timeout passes, with how many did. Not under the breaker (replicas
    /// lagging are no store failure) and bounded by the timeout plus the
    /// store's deadline.
    fn wait(&self, key: &RecordKey, r: Replicas) -> BoxFuture<'static, Written> {
        let lane = self.lane.clone();
        let redis_key = self.key(key);
        Box::pin(async move {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(r.n).arg(millis(r.timeout));
            let mut conn = lane.conn();
            let call = conn.query_on_master_of::<u32>(&redis_key, cmd);
            match tokio::time::timeout(r.timeout + lane.deadline(), call).await {
                Ok(Ok(acked)) if acked >= r.n => Written::Stored,
                Ok(Ok(acked)) => Written::Unconfirmed { acked: Some(acked) },
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "idempotency: WAIT failed");
                    Written::Unconfirmed { acked: None }
                }
                Err(_) => Written::Unconfirmed { acked: None },
            }
        })
    }
}

impl IdempotencyHome for RedisHome {
    fn reserve(&self, r: &Reserve) -> BoxFuture<'static, Result<Reservation, StoreError>> {
        if let Some(record) = self.replays.get(&r.hold.key, &r.hold.fingerprint) {
            return Box::pin(std::future::ready(Ok(Reservation::Completed(record))));
        }
        let (lane, batcher, r) = (self.lane.clone(), self.reserves.clone(), r.clone());
        Box::pin(async move { batcher.submit(&lane, r).await })
    }

    fn complete(
        &self,
        hold: &Hold,
        record: Bytes,
        ttl: Duration,
        replicas: Option<Replicas>,
    ) -> BoxFuture<'static, Result<Written, StoreError>> {
        let (lane, batcher) = (self.lane.clone(), self.completes.clone());
        let (replays, until) = (self.replays.clone(), self.replays.until(ttl));
        let (key, fingerprint) = (hold.key.clone(), hold.fingerprint);
        let completion = Completion {
            key: hold.key.clone(),
            token: hold.token.clone(),
            record: record.clone(),
            ttl,
        };
        let confirm = replicas.map(|r| self.wait(&hold.key, r));
        Box::pin(async move {
            if !batcher.submit(&lane, completion).await? {
                return Ok(Written::Lost);
            }
            replays.keep(&key, fingerprint, record, until);
            Ok(match confirm {
                None => Written::Stored,
                Some(wait) => wait.await,
            })
        })
    }

    fn release(&self, hold: &Hold) -> Flag {
        self.flag(&RELEASE, hold, Vec::new())
    }

    fn renew(&self, hold: &Hold, lease: Duration) -> Flag {
        self.flag(&RENEW, hold, vec![millis(lease).to_string().into()])
    }
}
