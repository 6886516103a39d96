//! The state one layer (and its handles) share: configuration, the store,
//! in-process flights, the store-clock estimate and the learned Vary specs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::config::Config;
use super::entry::Entry;
use super::flight::Flights;
use super::key::Slot;
use super::l1::{Epoch, L1};
use super::purges::Retries;
use super::store::CacheHome;
use crate::error::StoreError;
use crate::store::memory::lock;
use crate::telemetry::Outcomes;
use crate::warn::Throttle;

/// Most URLs whose Vary spec is remembered in process.
const MAX_SPECS: usize = 10_000;

pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) home: Arc<dyn CacheHome>,
    pub(crate) flights: Arc<Flights>,
    pub(crate) l1: Option<Arc<L1>>,
    pub(crate) retries: Retries,
    warned: Throttle,
    outcomes: Outcomes,
    specs: Mutex<HashMap<Arc<str>, Arc<str>>>,
    /// The spec of URLs whose responses do not `Vary` (most of them).
    base_spec: Arc<str>,
    base: Instant,
    offset_ms: AtomicI64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cfg.fmt(f)
    }
}

impl Shared {
    pub(crate) fn new(home: Arc<dyn CacheHome>, cfg: Config) -> Self {
        let l1 = cfg.l1.and_then(|c| {
            let l1 = Arc::new(L1::new(c.max_entries, cfg.l1_bytes, c.max_age));
            if home.listen(l1.listener()) {
                Some(l1)
            } else {
                tracing::warn!(
                    "response cache: the in-process tier needs a RedisStore built from a URL \
                     and a Tokio runtime at build time; it is off"
                );
                None
            }
        });
        let outcomes = Outcomes::new(
            "trl_cache_requests_total",
            &[("scope", &cfg.key.scope)],
            &OUTCOMES,
        );
        let base_spec = cfg.key.base_spec();
        Self {
            cfg,
            home,
            l1,
            flights: Arc::default(),
            retries: Retries::default(),
            warned: Throttle::default(),
            outcomes,
            specs: Mutex::default(),
            base_spec,
            base: Instant::now(),
            offset_ms: AtomicI64::new(i64::MIN),
        }
    }

    fn local_ms(&self) -> i64 {
        self.base.elapsed().as_millis() as i64
    }

    /// Records the store's clock as seen in a reply. An in-process home's
    /// clock runs with this process's: once seen, its offset holds (and
    /// is not read again at every lookup).
    pub(crate) fn observe(&self, store_now_ms: u64) {
        if self.home.is_local() && self.offset_ms.load(Ordering::Relaxed) != i64::MIN {
            return;
        }
        self.offset_ms
            .store(store_now_ms as i64 - self.local_ms(), Ordering::Relaxed);
    }

    /// The store's clock, estimated from the last reply (the local wall
    /// clock before the first one).
    pub(crate) fn now_ms(&self) -> u64 {
        let off = self.offset_ms.load(Ordering::Relaxed);
        if off == i64::MIN {
            return std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        (self.local_ms() + off).max(0) as u64
    }

    /// The spec a URL's variants were last seen keyed on.
    pub(crate) fn spec_of(&self, url: &Arc<str>) -> Arc<str> {
        lock(&self.specs)
            .get(url)
            .cloned()
            .unwrap_or_else(|| self.base_spec.clone())
    }

    pub(crate) fn learn(&self, url: &Arc<str>, spec: &Arc<str>) {
        let mut specs = lock(&self.specs);
        if *spec == self.base_spec {
            specs.remove(url);
            return;
        }
        if specs.len() >= MAX_SPECS {
            specs.clear();
        }
        specs.insert(url.clone(), spec.clone());
    }

    /// Counts an answer by the `Cache-Status` this layer gave it, in a
    /// `response_cache` span (debug level).
    pub(crate) fn count(&self, headers: &http::HeaderMap) {
        let name = self.cfg.name.as_bytes();
        let Some(status) = headers
            .get_all(&super::response::CACHE_STATUS)
            .iter()
            .rev()
            .map(|v| v.as_bytes())
            .find(|v| v.starts_with(name) && v.get(name.len()) == Some(&b';'))
        else {
            return;
        };
        if let Some(i) = outcome_of(&status[name.len() + 1..]) {
            self.count_outcome(i);
        }
    }

    /// Counts an answer whose outcome is known already (index into
    /// `OUTCOMES`: [`HIT`], [`HIT_L1`]).
    pub(crate) fn count_outcome(&self, i: usize) {
        self.outcomes.inc(i);
        tracing::debug_span!(
            "response_cache",
            layer = "response cache",
            scope = %self.cfg.key.scope,
            outcome = OUTCOMES[i],
        )
        .in_scope(|| tracing::debug!("response cache outcome"));
    }

    /// Warns (at most once a second) that the store failed at `what`.
    pub(crate) fn store_failed(&self, what: &str, then: &str, e: &StoreError) {
        self.outcomes.inc(STORE_ERROR);
        self.warned
            .store_failed("response cache", &self.cfg.key.scope, what, then, e);
    }

    /// Keeps an in-process copy of a fresh entry, decoded from `raw_len`
    /// stored bytes (when the tier is on).
    pub(crate) fn l1_put(
        &self,
        slot: &Slot,
        entry: &Arc<Entry>,
        raw_len: usize,
        fresh_until: u64,
        seen: Option<Epoch>,
    ) {
        if let (Some(l1), Some(seen)) = (&self.l1, seen) {
            l1.put(
                slot,
                entry.clone(),
                raw_len,
                self.now_ms(),
                fresh_until,
                seen,
            );
        }
    }

    /// [`l1_put`](Self::l1_put) of an entry in its stored form (decoded
    /// only when the tier is on).
    pub(crate) fn l1_put_raw(
        &self,
        slot: &Slot,
        raw: &bytes::Bytes,
        fresh_until: u64,
        seen: Option<Epoch>,
    ) {
        if self.l1.is_none() || seen.is_none() {
            return;
        }
        if let Some(e) = super::decide::decode_for(slot, raw.clone(), 0) {
            self.l1_put(slot, &Arc::new(e), raw.len(), fresh_until, seen);
        }
    }

    /// The in-process tier's invalidations of `url` so far (read before a lookup).
    pub(crate) fn l1_epoch(&self, url: &str) -> Option<Epoch> {
        self.l1.as_ref().map(|l1| l1.epoch(url))
    }

    /// Drops every variant of a URL here at once and, through the store, everywhere.
    pub(crate) fn purge(
        &self,
        url: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<u64, StoreError>> {
        if let Some(l1) = &self.l1 {
            l1.remove_url(url);
        }
        self.home.purge(url)
    }

    /// Marks every variant of a URL stale here at once and, through the
    /// store, everywhere.
    pub(crate) fn soft_purge(
        &self,
        url: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<u64, StoreError>> {
        if let Some(l1) = &self.l1 {
            l1.remove_url(url);
        }
        self.home.soft_purge(url)
    }

    pub(crate) fn spawn_release(self: &Arc<Self>, slot: &Slot, token: u64, pass_ms: u64) {
        let fut = self.home.release(slot, token, pass_ms);
        spawn(async move {
            let _ = fut.await;
        });
    }
}

/// Spawns on the current Tokio runtime; outside one (a drop at shutdown)
/// the work is skipped: locks expire and writes are only an optimisation.
pub(crate) fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(fut);
    }
}

/// A random lock token.
pub(crate) fn token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The `outcome` label of `trl_cache_requests_total`, in index order.
const OUTCOMES: [&str; 8] = [
    "hit",
    "hit_l1",
    "miss",
    "collapsed",
    "stale",
    "revalidated",
    "bypass",
    "store_error",
];
const STORE_ERROR: usize = 7;
pub(crate) const HIT: usize = 0;
pub(crate) const HIT_L1: usize = 1;

/// The outcome a `Cache-Status` parameter list (after the cache's name) says.
fn outcome_of(params: &[u8]) -> Option<usize> {
    let has = |p: &[u8]| params.windows(p.len()).any(|w| w == p);
    let params = params.trim_ascii_start();
    Some(if params.starts_with(b"hit") {
        if has(b"detail=l1") {
            1
        } else {
            0
        }
    } else if has(b"collapsed") {
        3
    } else if params.starts_with(b"fwd=stale") {
        if has(b"fwd-status=304") {
            5
        } else {
            4
        }
    } else if params.starts_with(b"fwd=bypass") {
        6
    } else if params.starts_with(b"fwd=miss") {
        2
    } else {
        return None;
    })
}

#[cfg(test)]
mod count_tests {
    use super::*;

    #[test]
    fn cache_status_parameters_name_the_outcome() {
        for (params, outcome) in [
            (" hit; ttl=12", Some("hit")),
            (" hit; detail=l1", Some("hit_l1")),
            (" fwd=miss; fwd-status=200; stored; ttl=30", Some("miss")),
            (" fwd=miss; collapsed", Some("collapsed")),
            (" fwd=stale; fwd-status=304", Some("revalidated")),
            (" fwd=stale; fwd-status=503", Some("stale")),
            (" fwd=bypass; detail=authorization", Some("bypass")),
            (" fwd=method; detail=purge-pending", None),
        ] {
            assert_eq!(
                outcome_of(params.as_bytes()).map(|i| OUTCOMES[i]),
                outcome,
                "{params}"
            );
        }
    }
}
