//! A response on its way into the store: the entry is encoded, written
//! under the generation its lookup saw (a purge since then keeps it out),
//! and handed to local followers once the store has taken it.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, StatusCode};

use super::app::Stored;
use super::conditional::Cond;
use super::entry::{body_of, encode, Meta};
use super::flight::Outcome;
use super::key::Slot;
use super::leader::Leader;
use super::partial::combine;
use super::policy::{Asked, Lifetime};
use super::shared::spawn;
use super::store::{Tagging, Write};
use super::tags::tag_key;
use crate::error::StoreError;
use futures_util::future::BoxFuture;

/// The request context a fill needs once the origin answered.
#[derive(Debug)]
pub(crate) struct FillCtx {
    pub(crate) cond: Cond,
    pub(crate) request: Arc<HeaderMap>,
    pub(crate) asked: Asked,
    /// `only-if-cached` (honoured by policy): a miss is answered 504.
    pub(crate) only_if_cached: bool,
    /// The client speaks gRPC: the cache's own answers are gRPC statuses.
    pub(crate) grpc: bool,
    /// A HEAD request: answered without a body.
    pub(crate) head: bool,
}

/// One response on its way into the store.
pub(crate) struct Fill {
    pub(crate) leader: Leader,
    pub(crate) slot: Slot,
    pub(crate) meta: Meta,
    pub(crate) headers: HeaderMap,
    pub(crate) keep_ms: u64,
    /// The tags (store names) the entry is recorded under.
    pub(crate) tags: Vec<Arc<str>>,
}

impl Fill {
    /// A response received at store time `now`, to store as `l` says under
    /// `slot`, with the fields `headers` (its tags read from them).
    pub(crate) fn new(
        leader: Leader,
        slot: Slot,
        status: StatusCode,
        now: u64,
        l: &Lifetime,
        headers: HeaderMap,
    ) -> Self {
        let cfg = &leader.shared.cfg;
        let tags = cfg.tags.of(&cfg.key.scope, &headers);
        // Stored after the purge its lookup saw: never read as purged.
        let now = leader.looked.map_or(now, |l| now.max(l.gen.div_ceil(1000)));
        Self {
            meta: meta(&slot, status, now, l),
            keep_ms: l.keep_ms,
            headers,
            tags,
            slot,
            leader,
        }
    }
}

pub(crate) fn meta(slot: &Slot, status: StatusCode, now: u64, l: &Lifetime) -> Meta {
    Meta {
        status: status.as_u16(),
        key_tag: slot.tag(),
        stored_ms: now,
        fresh_ms: l.fresh_ms,
        age_s: l.age_s,
        swr_s: l.swr_s,
        sie_s: l.sie_s,
        must_revalidate: l.must_revalidate,
        s_maxage: l.s_maxage,
    }
}

impl Fill {
    /// The body is complete: write the entry. Returns the body, a slice of
    /// the entry.
    pub(crate) fn finish(self, chunks: &[Bytes]) -> Bytes {
        if self.meta.status == 206 {
            return self.finish_part(chunks);
        }
        let raw = encode(&self.meta, &self.headers, chunks);
        let body = body_of(&raw, chunks.iter().map(Bytes::len).sum());
        // The write runs to its end whether or not its outcome is awaited.
        drop(self.land(raw));
        body
    }

    /// A `206` is complete: combine it with the stored part, if any, and
    /// write the entry (complete `200` once the parts cover the whole
    /// representation). Returns the response's own body.
    fn finish_part(mut self, chunks: &[Bytes]) -> Bytes {
        let body = match chunks {
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        };
        let older = self.leader.partial.take().or(self.leader.stale.take());
        let shared = self.leader.shared.clone();
        let (cap, targets) = (shared.cfg.max_body, &shared.cfg.rules.targeted);
        let mut status = StatusCode::PARTIAL_CONTENT;
        let combined = combine(
            &mut status,
            &mut self.headers,
            body.clone(),
            older.as_ref(),
            cap,
            targets,
        );
        match combined {
            Some(stored) => {
                self.meta.status = status.as_u16();
                let raw = encode(&self.meta, &self.headers, &[stored]);
                drop(self.land(raw));
            }
            // Not the part it names: passed on, not stored.
            None => self.pass(),
        }
        body
    }

    /// Writes the entry and tells whether it was stored (`false`: a purge
    /// since the lookup fenced it out).
    pub(crate) fn store(self, chunks: &[Bytes]) -> BoxFuture<'static, Result<bool, StoreError>> {
        let raw = encode(&self.meta, &self.headers, chunks);
        self.land(raw)
    }

    /// Whether a write will be tried: not when the lookup failed (the
    /// store is down), so `Cache-Status` does not say `stored` then.
    pub(crate) fn will_store(&self) -> bool {
        self.leader.looked.is_some()
    }

    /// Not stored after all (over the size cap, trailers): followers ask the origin.
    pub(crate) fn pass(self) {
        self.leader.end(Outcome::Pass);
    }

    fn land(self, raw: Bytes) -> BoxFuture<'static, Result<bool, StoreError>> {
        let Fill {
            mut leader,
            slot,
            meta,
            keep_ms,
            tags,
            headers,
            ..
        } = self;
        let shared = leader.shared.clone();
        let Some(looked) = leader.looked else {
            // No lookup to fence a write with (the store failed): nothing is
            // stored; the local followers waiting get the response.
            let round = leader.sent();
            leader.finish(round, Outcome::Done(raw));
            return Box::pin(std::future::ready(Ok(false)));
        };
        // The lock is ours only if the slot is the one we locked.
        let token = (slot == leader.slot).then(|| leader.token.take()).flatten();
        let fresh_until = meta.fresh_until_ms();
        let write = Write {
            slot: slot.clone(),
            entry: raw.clone(),
            fresh_until_ms: fresh_until,
            keep_ms,
            token,
            max_variants: shared.cfg.max_variants,
            gen: looked.gen,
            seen_ms: looked.at_ms,
            etag: super::freshen::strong_etag(&headers).map(Bytes::copy_from_slice),
            writer: shared.l1.as_ref().map_or(0, |l1| l1.id),
        };
        let round = leader.sent();
        let home = shared.home.clone();
        // Tags first, so that a tag purge either sees this URL or makes
        // this write stand down: writes win for tags too.
        let tagged = (!tags.is_empty()).then(|| {
            home.tag(Tagging {
                url: slot.url.clone(),
                tags,
                keep_ms,
                seen_ms: looked.at_ms,
            })
        });
        let mut written: BoxFuture<'static, Result<bool, StoreError>> = Box::pin(async move {
            if let Some(tagged) = tagged {
                if !tagged.await? {
                    if let Some(token) = write.token {
                        home.release(&write.slot, token, 0).await?;
                    }
                    return Ok(false);
                }
            }
            home.write(write).await
        });
        let landed = move |result: &Result<bool, StoreError>| match result {
            Ok(true) => {
                shared.retries.stored(keep_ms);
                shared.l1_put_raw(&slot, &raw, fresh_until, leader.epoch);
                leader.finish(round, Outcome::Done(raw));
            }
            // Overtaken by a purge: the response may predate it. The
            // followers look again.
            Ok(false) => leader.end(Outcome::Abandoned),
            Err(e) => {
                shared.store_failed("storing an entry", "the response was not stored", e);
                leader.finish(round, Outcome::Done(raw));
            }
        };
        // The memory store answers at once: no task for it.
        if let Some(result) = (&mut written).now_or_never() {
            landed(&result);
            return Box::pin(std::future::ready(result));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn(async move {
            let result = written.await;
            landed(&result);
            let _ = tx.send(result);
        });
        // Outside a runtime nothing was written.
        Box::pin(async move { rx.await.unwrap_or(Ok(false)) })
    }
}

/// The fill of an application value (`None`: the loader found nothing,
/// stored only with a negative TTL, as a 404 without a body); `None` when
/// nothing is to be stored.
pub(crate) fn app_fill(leader: Leader, value: Option<&Bytes>, stored: &Stored) -> Option<Fill> {
    let shared = leader.shared.clone();
    let (status, ttl) = match value {
        Some(_) => (StatusCode::OK, stored.ttl),
        None => (StatusCode::NOT_FOUND, stored.negative_ttl?.min(stored.ttl)),
    };
    let ttl = super::config::clamp_ttl(ttl).as_millis() as u64;
    let ms = super::policy::jittered(ttl, shared.cfg.rules.jitter).max(1);
    let slot = leader.slot.clone();
    let l = Lifetime {
        fresh_ms: ms,
        age_s: 0,
        swr_s: 0,
        sie_s: 0,
        must_revalidate: false,
        s_maxage: false,
        keep_ms: ms,
    };
    let now = shared.now_ms();
    let mut fill = Fill::new(leader, slot, status, now, &l, HeaderMap::new());
    let scope = &shared.cfg.key.scope;
    fill.tags = stored.tags.iter().map(|t| tag_key(scope, t)).collect();
    Some(fill)
}
