//! A lane: one path to Redis with its own circuit breakers (one per range
//! of hash slots on a cluster) and, when asked, its own connection. Each
//! layer talks through its own lane, so one layer's failures (or a flood of
//! large cache payloads) cannot open another layer's breaker or hold up its
//! calls.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::breaker::{Breaker, BreakerConfig};
use super::conn::RedisConn;
#[cfg(feature = "cluster")]
use super::slots::probe_key;
use super::slots::{breakers, slot};
use crate::error::StoreError;
use crate::telemetry::{CallOutcome, StoreCalls};

#[derive(Clone, Debug)]
pub(crate) struct Lane {
    inner: Arc<Inner>,
    /// When calls through this clone give up, if earlier than the deadline
    /// from their start (a batch: its last caller's deadline).
    until: Option<tokio::time::Instant>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    conn: RedisConn,
    deadline: Duration,
    /// How long the background probe waits for an answer.
    probe_timeout: Duration,
    breakers: Box<[Breaker]>,
    metrics: StoreCalls,
    /// The scripts this lane's layer runs: loaded ahead, and again once
    /// Redis answers after an outage (a restarted Redis has none), so no
    /// call pays a `NOSCRIPT` round trip — one a timed-out caller would
    /// never send.
    scripts: std::sync::Mutex<Vec<&'static redis::Script>>,
}

impl Lane {
    pub(crate) fn new(
        name: &'static str,
        conn: RedisConn,
        deadline: Duration,
        probe_timeout: Duration,
        config: BreakerConfig,
    ) -> Self {
        Self {
            until: None,
            inner: Arc::new(Inner {
                name,
                breakers: breakers(&conn, config),
                metrics: StoreCalls::new(name),
                scripts: std::sync::Mutex::default(),
                conn,
                deadline,
                probe_timeout,
            }),
        }
    }

    pub(crate) fn conn(&self) -> RedisConn {
        self.inner.conn.clone()
    }

    /// Loads `scripts` now (in the background) and after every outage.
    pub(crate) fn preload(&self, scripts: &[&'static redis::Script]) {
        crate::store::memory::lock(&self.inner.scripts).extend_from_slice(scripts);
        load_scripts(&self.inner);
    }

    pub(crate) fn is_cluster(&self) -> bool {
        !matches!(self.inner.conn, RedisConn::Standalone(_))
    }

    pub(crate) fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// This lane, its calls giving up at `until` (a time before the
    /// deadline from their start) as well.
    pub(crate) fn until(&self, until: tokio::time::Instant) -> Self {
        Self {
            inner: self.inner.clone(),
            until: Some(until),
        }
    }

    /// Runs one call about `key` under the breaker of `key`'s slots and the
    /// deadline. The call that opens a breaker starts its background probe.
    pub(crate) async fn call<T, F>(&self, key: &str, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let slot = match self.inner.breakers.len() {
            1 => 0,
            _ => slot::of(key.as_bytes()),
        };
        self.call_in_slot(slot, fut).await
    }

    /// [`call`](Self::call) for a call whose keys are all in hash slot `slot`.
    pub(crate) async fn call_in_slot<T, F>(&self, slot: u16, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &*self.inner;
        let index = self.breaker_index(slot);
        let breaker = &inner.breakers[index];
        if !breaker.allow() {
            inner.metrics.skipped.add(1);
            return Err(StoreError::circuit_open());
        }
        let started = Instant::now();
        let until = tokio::time::Instant::now() + inner.deadline;
        let until = self.until.map_or(until, |u| u.min(until));
        let (result, outcome) = match tokio::time::timeout_at(until, fut).await {
            Ok(Ok(v)) => {
                inner.metrics.record(CallOutcome::Ok, started.elapsed());
                if breaker.record_success() {
                    self.inner.closed();
                }
                return Ok(v);
            }
            // Redis answered, out of memory: no outage, so the breaker stays
            // closed (reads still work); the layer's failure policy answers.
            Ok(Err(e)) if e.code() == Some("OOM") => {
                inner.metrics.record(CallOutcome::Error, started.elapsed());
                return Err(StoreError::redis(e));
            }
            Ok(Err(e)) => (Err(StoreError::redis(e)), CallOutcome::Error),
            Err(_) => (
                Err(StoreError::timeout(inner.deadline)),
                CallOutcome::Timeout,
            ),
        };
        inner.metrics.record(outcome, started.elapsed());
        if breaker.record_failure() {
            if let Err(e) = &result {
                tracing::warn!(
                    lane = inner.name,
                    error = %e,
                    probe_every_ms = breaker.config().probe_every.as_millis() as u64,
                    "store circuit breaker opened: {} skips the store while a background \
                     probe waits for it to answer",
                    inner.name
                );
            }
            inner.metrics.breakers_open.add(1.0);
            spawn_probe(&self.inner, index);
        }
        result
    }

    /// Runs a clean-up call (giving back a lock) under the deadline but past
    /// the breaker, and without counting toward it: a lock taken by a call
    /// Redis ran late must be given back even while the breaker is open, or
    /// readers wait for a fill that nobody makes.
    pub(crate) async fn call_cleanup<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.inner.deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::redis(e)),
            Err(_) => Err(StoreError::timeout(self.inner.deadline)),
        }
    }

    fn breaker_index(&self, slot: u16) -> usize {
        let n = self.inner.breakers.len();
        if n == 1 {
            return 0;
        }
        usize::from(slot) * n / slot::SLOTS
    }
}

/// Starts the one background probe of breaker `index`: it asks the node of
/// that breaker's slots every `probe_every` and closes the breaker on the
/// first answer. It holds only a weak reference: a lane dropped by its owner
/// stops its probe.
fn spawn_probe(inner: &Arc<Inner>, index: usize) {
    let breaker = &inner.breakers[index];
    if tokio::runtime::Handle::try_current().is_err() || !breaker.start_probe() {
        return;
    }
    breaker.hold();
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let _ended = ProbeEnded(weak.clone(), index);
        loop {
            let every = match weak.upgrade() {
                Some(inner) => inner.breakers[index].config().probe_every,
                None => return,
            };
            tokio::time::sleep(every).await;
            let Some(inner) = weak.upgrade() else { return };
            let breaker = &inner.breakers[index];
            if !breaker.is_open() {
                return;
            }
            breaker.hold();
            if probe(&inner, index).await {
                if breaker.record_success() {
                    inner.closed();
                }
                return;
            }
        }
    });
}

/// Loads the lane's scripts in the background (best effort: a script that
/// is still missing is loaded by the `NOSCRIPT` fallback of its call).
fn load_scripts(inner: &Arc<Inner>) {
    let scripts = crate::store::memory::lock(&inner.scripts).clone();
    if scripts.is_empty() || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let mut conn = inner.conn.clone();
    let timeout = inner.probe_timeout;
    tokio::spawn(async move {
        for script in scripts {
            let invocation = script.prepare_invoke();
            let load = invocation.load_async(&mut conn);
            if !matches!(tokio::time::timeout(timeout, load).await, Ok(Ok(_))) {
                return;
            }
        }
    });
}

impl Inner {
    /// A breaker of this lane closed: the store answers again.
    fn closed(self: &Arc<Self>) {
        load_scripts(self);
        self.metrics.breakers_open.add(-1.0);
        tracing::warn!(
            lane = self.name,
            "store circuit breaker closed: {} uses the store again",
            self.name
        );
    }
}

/// Clears the probe flag however the probe task ends (even with its runtime).
struct ProbeEnded(Weak<Inner>, usize);

impl Drop for ProbeEnded {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.breakers[self.1].probe_ended();
        }
    }
}

async fn probe(
    inner: &Inner,
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))] index: usize,
) -> bool {
    let mut conn = inner.conn.clone();
    let ask = async {
        match &conn {
            RedisConn::Standalone(_) => redis::cmd("PING").query_async::<()>(&mut conn).await,
            // A key of the breaker's slot range routes the probe to its master.
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(_) => {
                let n = inner.breakers.len();
                redis::cmd("EXISTS")
                    .arg(probe_key(index, n))
                    .query_async::<()>(&mut conn)
                    .await
            }
        }
    };
    matches!(
        tokio::time::timeout(inner.probe_timeout, ask).await,
        Ok(Ok(()))
    )
}
