//! After the origin answered a request that leads a fill: store what may be
//! stored (capturing the body as it streams), refresh a revalidated entry on
//! `304`, serve stale on errors within `stale-if-error`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body::Body;

use super::capture::{passed, CacheBody, CaptureBody};
use super::decide::sie_ok;
use super::entry::{encode, Entry, Meta};
use super::flight::Outcome;
use super::key::{self, Slot};
use super::leader::Leader;
use super::policy::{request_specific, verdict, Asked, Lifetime, Verdict};
use super::response::{cache_status, serve, to_store, Cond, CACHE_STATUS};
use super::store::Write;

/// One response on its way into the store.
pub(crate) struct Fill {
    leader: Leader,
    slot: Slot,
    meta: Meta,
    headers: HeaderMap,
    keep_ms: u64,
}

impl Fill {
    /// The body is complete: publish the entry to local followers and write it.
    pub(crate) fn finish(mut self, body: &[Bytes]) {
        let raw = encode(&self.meta, &self.headers, body);
        let shared = self.leader.shared.clone();
        // The lock is ours only if the slot is the one we locked.
        let token = if self.slot == self.leader.slot {
            self.leader.token.take()
        } else {
            None
        };
        let write = Write {
            slot: self.slot.clone(),
            entry: raw.clone(),
            fresh_until_ms: self.meta.fresh_until_ms(),
            keep_ms: self.keep_ms,
            token,
            max_variants: shared.cfg.max_variants,
            writer: shared.l1.as_ref().map_or(0, |l1| l1.id),
        };
        shared.l1_put(
            &self.slot,
            &raw,
            self.meta.fresh_until_ms(),
            self.leader.seen,
        );
        // Written first so a local follower's next lookup sees it in memory.
        shared.spawn_write(write);
        self.leader.finish(Outcome::Done(raw));
    }

    /// Not stored after all (over the size cap, trailers): followers ask the origin.
    pub(crate) fn pass(self) {
        self.leader.finish(Outcome::Pass);
    }
}

fn meta(slot: &Slot, status: StatusCode, now: u64, l: &Lifetime) -> Meta {
    Meta {
        status: status.as_u16(),
        key_tag: slot.tag(),
        stored_ms: now,
        fresh_ms: l.fresh_ms,
        age_s: l.age_s,
        swr_s: l.swr_s,
        sie_s: l.sie_s,
        must_revalidate: l.must_revalidate,
    }
}

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
}

/// A stale entry served because the origin failed.
pub(crate) fn serve_stale_on_error<B>(
    leader: &Leader,
    ctx: &FillCtx,
    status: u16,
) -> Option<Response<CacheBody<B>>> {
    let stale = leader.stale.as_ref()?;
    let now = leader.shared.now_ms();
    sie_ok(stale, now).then(|| {
        let params = format!("fwd=stale; fwd-status={status}");
        serve(
            &leader.shared.cfg.name,
            stale,
            now,
            false,
            &ctx.cond,
            &params,
        )
        .map(crate::ResponseBody::full)
    })
}

pub(crate) fn on_origin<B: Body>(
    mut leader: Leader,
    res: Response<B>,
    ctx: &FillCtx,
) -> Response<CacheBody<B>> {
    let shared = leader.shared.clone();
    let name = &shared.cfg.name;
    let now = shared.now_ms();
    let status = res.status();
    if status == StatusCode::NOT_MODIFIED {
        if let Some(stale) = leader.stale.take() {
            return refreshed(leader, stale, res.headers(), ctx, now);
        }
    }
    if status.is_server_error() {
        if let Some(r) = serve_stale_on_error(&leader, ctx, status.as_u16()) {
            return r;
        }
    }
    let fwd = if leader.stale.is_some() {
        "stale"
    } else {
        "miss"
    };
    let detail = leader
        .detail
        .map(|d| format!("; detail={d}"))
        .unwrap_or_default();
    let spec = shared.cfg.key.spec_for(res.headers());
    let v = match &spec {
        None => Verdict::Pass("vary-star"),
        Some(_) if res.headers().len() > super::entry::MAX_HEADERS => {
            Verdict::Pass("too-many-fields")
        }
        Some(_) => verdict(&shared.cfg.rules, ctx.asked, status, res.headers()),
    };
    let (Verdict::Store(l), Some(spec)) = (v, spec) else {
        let why = match v {
            Verdict::Pass(why) => why,
            Verdict::Store(_) => "vary-star",
        };
        // A pass caused by this request's fields lets the others fill.
        leader.finish(if request_specific(why) {
            Outcome::Abandoned
        } else {
            Outcome::Pass
        });
        let mut res = res.map(passed);
        let params = format!("fwd={fwd}; fwd-status={}; detail={why}", status.as_u16());
        res.headers_mut()
            .append(CACHE_STATUS.clone(), cache_status(name, &params));
        return res;
    };
    let slot = if spec == leader.slot.spec {
        leader.slot.clone()
    } else {
        shared.learn(&leader.slot.url, &spec);
        key::slot(leader.slot.url.clone(), spec, &ctx.request)
    };
    let fill = Fill {
        meta: meta(&slot, status, now, &l),
        headers: to_store(res.headers()),
        keep_ms: l.keep_ms,
        slot,
        leader,
    };
    let ttl = l.fresh_ms / 1000;
    let params = format!(
        "fwd={fwd}; fwd-status={}; stored; ttl={ttl}{detail}",
        status.as_u16()
    );
    let (mut parts, body) = res.into_parts();
    parts
        .headers
        .append(CACHE_STATUS.clone(), cache_status(name, &params));
    let body = crate::ResponseBody::inner(CaptureBody::capture(body, fill, shared.cfg.max_body));
    Response::from_parts(parts, body)
}

/// The origin confirmed a stale entry (304): refresh its fields and lifetime.
fn refreshed<B>(
    leader: Leader,
    stale: Entry,
    fields: &HeaderMap,
    ctx: &FillCtx,
    now: u64,
) -> Response<CacheBody<B>> {
    let shared = leader.shared.clone();
    let headers = super::response::merge_304(&stale.headers, fields);
    let status = StatusCode::from_u16(stale.meta.status).unwrap_or(StatusCode::OK);
    let slot = leader.slot.clone();
    let entry = match verdict(&shared.cfg.rules, ctx.asked, status, &headers) {
        Verdict::Store(l) => {
            let entry = Entry {
                meta: meta(&slot, status, now, &l),
                headers,
                body: stale.body.clone(),
            };
            let fill = Fill {
                leader,
                slot,
                meta: entry.meta,
                headers: entry.headers.clone(),
                keep_ms: l.keep_ms,
            };
            fill.finish(std::slice::from_ref(&stale.body));
            let params = "fwd=stale; fwd-status=304; stored";
            return serve(&shared.cfg.name, &entry, now, false, &ctx.cond, params)
                .map(crate::ResponseBody::full);
        }
        Verdict::Pass(_) => Entry { headers, ..stale },
    };
    leader.finish(Outcome::Pass);
    serve(
        &shared.cfg.name,
        &entry,
        now,
        false,
        &ctx.cond,
        "fwd=stale; fwd-status=304",
    )
    .map(crate::ResponseBody::full)
}

/// Stores an application value (`get_or_load`) for `ttl`.
pub(crate) fn store_value(leader: Leader, value: &Bytes, ttl: std::time::Duration) {
    let shared = leader.shared.clone();
    let ttl = super::config::clamp_ttl(ttl).as_millis() as u64;
    let ms = super::policy::jittered(ttl, shared.cfg.rules.jitter).max(1);
    let slot = leader.slot.clone();
    let l = Lifetime {
        fresh_ms: ms,
        age_s: 0,
        swr_s: 0,
        sie_s: 0,
        must_revalidate: false,
        keep_ms: ms,
    };
    let fill = Fill {
        meta: meta(&slot, StatusCode::OK, shared.now_ms(), &l),
        headers: HeaderMap::new(),
        keep_ms: ms,
        slot,
        leader,
    };
    fill.finish(std::slice::from_ref(value));
}
