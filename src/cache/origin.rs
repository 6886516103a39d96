//! After the origin answered a request that leads a fill: refresh a
//! revalidated entry on `304` (or a HEAD's `200`), serve stale on errors within
//! `stale-if-error`, pass what may not be stored, and start capturing what may.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, ETAG, LAST_MODIFIED};
use http::response::Parts;
use http::{HeaderMap, HeaderName, Response, StatusCode};
use http_body::Body;

use super::capture::Capture;
use super::decide::sie_ok;
use super::entry::Entry;
use super::fill::{Fill, FillCtx};
use super::flight::Outcome;
use super::key;
use super::leader::Leader;
use super::policy::{has_validator, request_specific, verdict, Verdict};
use super::response::{cache_status, merge_fields, serve, to_store, CACHE_STATUS};
use super::shared::spawn;

/// What the origin's response becomes.
pub(crate) enum Answer<B> {
    /// The client's response as it is.
    Done(Response<crate::ResponseBody<B>>),
    /// Read the body into the entry first.
    Capture(Box<Capture>, Parts, B),
}

/// Marks a response the service generated because the origin could not be
/// reached — a proxy's 502 or 504 for a refused, reset or timed-out
/// connection: insert it in the response's extensions, and the cache
/// serves a stale entry where
/// [`stale_if_unreachable`](super::ResponseCacheLayerBuilder::stale_if_unreachable)
/// allows it, as it does when the inner service fails (RFC 9111 §4.2.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginUnreachable;

/// How the origin failed to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// It answered with this 5xx.
    Status(u16),
    /// It could not be reached (or its body broke off), with the status
    /// the service answered in its place, if any.
    Unreachable(Option<u16>),
}

/// A stale entry served because the origin failed: within its
/// `stale-if-error`, or, unreachable, within `stale_if_unreachable`.
pub(crate) fn serve_stale_on_error(
    leader: &Leader,
    ctx: &FillCtx,
    failed: Failed,
) -> Option<Response<Bytes>> {
    let stale = leader.stale.as_ref()?;
    let now = leader.shared.now_ms();
    let (params, unreachable) = match failed {
        Failed::Status(s) => (format!("fwd=stale; fwd-status={s}"), false),
        Failed::Unreachable(Some(s)) => (
            format!("fwd=stale; fwd-status={s}; detail=unreachable"),
            true,
        ),
        Failed::Unreachable(None) => ("fwd=stale; detail=unreachable".to_owned(), true),
    };
    let max = leader.shared.cfg.rules.stale_if_unreachable.as_millis() as u64;
    let m = &stale.meta;
    let grace = unreachable
        && !m.must_revalidate
        && !m.s_maxage
        && now <= m.fresh_until_ms().saturating_add(max);
    (sie_ok(stale, now) || grace)
        .then(|| serve(&leader.shared.cfg, stale, now, ctx.head, &ctx.cond, &params))
}

pub(crate) fn on_origin<B: Body>(mut leader: Leader, res: Response<B>, ctx: FillCtx) -> Answer<B> {
    let shared = leader.shared.clone();
    let name = &shared.cfg.name;
    let now = shared.now_ms();
    let status = res.status();
    // A 304 to our validators, or a HEAD's 200 for the stored
    // representation (§4.3.5), refreshes the entry.
    let refreshes = |stale: &Entry| match status {
        StatusCode::NOT_MODIFIED => has_validator(&stale.headers),
        StatusCode::OK if ctx.head => same_representation(stale, res.headers()),
        _ => false,
    };
    if let Some(stale) = leader.stale.take_if(|s| refreshes(s)) {
        return Answer::Done(refreshed(leader, stale, res.headers(), &ctx, now));
    }
    // A HEAD's 200 for another representation (validators or length
    // differ): the stored GET is stale from now on (§4.3.5), on every
    // instance, before the lock is given back.
    if ctx.head && status == StatusCode::OK && leader.stale.take().is_some() {
        let purge = shared.soft_purge(&leader.slot.url);
        spawn(async move {
            let _ = purge.await;
            leader.end(Outcome::Abandoned);
        });
        let mut res = res.map(crate::ResponseBody::inner);
        shared.cfg.tags.strip(res.headers_mut());
        let params = "fwd=stale; fwd-status=200; detail=head-changed";
        res.headers_mut()
            .append(CACHE_STATUS.clone(), cache_status(name, params));
        return Answer::Done(res);
    }
    if status.is_server_error() {
        let failed = match res.extensions().get::<OriginUnreachable>() {
            Some(_) => Failed::Unreachable(Some(status.as_u16())),
            None => Failed::Status(status.as_u16()),
        };
        if let Some(r) = serve_stale_on_error(&leader, &ctx, failed) {
            return Answer::Done(r.map(crate::ResponseBody::full));
        }
    }
    let fwd = if leader.stale.is_some() {
        "stale"
    } else {
        "miss"
    };
    let forwarded = format!("fwd={fwd}; fwd-status={}", status.as_u16());
    let spec = shared.cfg.key.spec_for(res.headers());
    let v = match &spec {
        // A HEAD response has no body to store.
        _ if ctx.head => Verdict::Pass("head"),
        None => Verdict::Pass("vary-star"),
        Some(_) if res.headers().len() > super::entry::MAX_HEADERS => {
            Verdict::Pass("too-many-fields")
        }
        Some(_) if res.body().size_hint().lower() > shared.cfg.max_body as u64 => {
            Verdict::Pass("too-large")
        }
        Some(_) => verdict(&shared.cfg.rules, ctx.asked, status, res.headers(), now),
    };
    let (Verdict::Store(l), Some(spec)) = (v, spec) else {
        let why = match v {
            Verdict::Pass(why) => why,
            Verdict::Store(_) => "vary-star",
        };
        // A pass caused by this request (its fields, its method, the
        // origin's answer to its own conditions) lets the others fill.
        let answered = !ctx.cond.is_empty() && matches!(status.as_u16(), 304 | 412);
        leader.end(if request_specific(why) || why == "head" || answered {
            Outcome::Abandoned
        } else {
            Outcome::Pass
        });
        let mut res = res.map(crate::ResponseBody::inner);
        shared.cfg.tags.strip(res.headers_mut());
        let params = format!("{forwarded}; detail={why}");
        res.headers_mut()
            .append(CACHE_STATUS.clone(), cache_status(name, &params));
        return Answer::Done(res);
    };
    let slot = if spec == leader.slot.spec {
        leader.slot.clone()
    } else {
        shared.learn(&leader.slot.url, &spec);
        key::slot(leader.slot.url.clone(), spec, &ctx.request)
    };
    let detail = leader
        .detail
        .map(|d| format!("; detail={d}"))
        .unwrap_or_default();
    let stored = format!("; stored; ttl={}{detail}", l.fresh_ms / 1000);
    let fields = to_store(res.headers(), &shared.cfg.rules.targeted);
    let fill = Fill::new(leader, slot, status, now, &l, fields);
    let (mut parts, body) = res.into_parts();
    shared.cfg.tags.strip(&mut parts.headers);
    let capture = Capture::new(fill, ctx, forwarded, stored, shared.cfg.max_body);
    Answer::Capture(Box::new(capture), parts, body)
}

/// The origin confirmed a stale entry (304): refresh its fields and lifetime.
fn refreshed<B>(
    leader: Leader,
    stale: Entry,
    fields: &HeaderMap,
    ctx: &FillCtx,
    now: u64,
) -> Response<crate::ResponseBody<B>> {
    let shared = leader.shared.clone();
    let headers = merge_fields(&stale.headers, fields, &shared.cfg.rules.targeted);
    let status = StatusCode::from_u16(stale.meta.status).unwrap_or(StatusCode::OK);
    let slot = leader.slot.clone();
    let (entry, params) = match verdict(&shared.cfg.rules, ctx.asked, status, &headers, now) {
        Verdict::Store(l) => {
            super::freshen::other_variants(&shared, &slot, fields, ctx.asked);
            let fill = Fill::new(leader, slot, status, now, &l, headers);
            let entry = Entry {
                meta: fill.meta,
                headers: fill.headers.clone(),
                body: stale.body.clone(),
            };
            fill.finish(std::slice::from_ref(&stale.body));
            (entry, "fwd=stale; fwd-status=304; stored")
        }
        Verdict::Pass(_) => {
            leader.end(Outcome::Pass);
            (Entry { headers, ..stale }, "fwd=stale; fwd-status=304")
        }
    };
    serve(&shared.cfg, &entry, now, ctx.head, &ctx.cond, params).map(crate::ResponseBody::full)
}

/// A HEAD response describes the stored representation (§4.3.5): every
/// validator field it carries (`ETag`, `Last-Modified`) matches the
/// stored response's, and its `Content-Length`, if any, is the stored
/// length.
fn same_representation(stale: &Entry, fields: &HeaderMap) -> bool {
    fn value(h: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
        h.get(name).map(|v| v.as_bytes().trim_ascii().to_vec())
    }
    for name in [ETAG, LAST_MODIFIED] {
        if let Some(v) = value(fields, &name) {
            if value(&stale.headers, &name) != Some(v) {
                return false;
            }
        }
    }
    let length = fields
        .get(CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()));
    length.is_none_or(|n| n == Some(stale.body.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Meta;

    fn stored(pairs: &[(&'static str, &'static str)]) -> Entry {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(*k, http::HeaderValue::from_static(v));
        }
        let meta = Meta {
            status: 200,
            ..Meta::default()
        };
        Entry {
            meta,
            headers,
            body: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn rfc9111_4_3_5_a_head_response_matches_when_every_validator_it_carries_does() {
        const LM: &str = "Thu, 01 Jan 2026 00:00:00 GMT";
        let e = stored(&[("etag", "W/\"a\""), ("last-modified", LM)]);
        let same = |pairs: &[(&'static str, &'static str)]| {
            same_representation(&e, &stored(pairs).headers)
        };
        assert!(same(&[("etag", "W/\"a\"")]), "a weak ETag that is equal");
        assert!(same(&[("last-modified", LM), ("content-length", "5")]));
        assert!(same(&[("etag", "W/\"a\""), ("last-modified", LM)]));
        assert!(same(&[("x-other", "1")]), "no validator: none contradicts");
        assert!(!same(&[("etag", "W/\"b\"")]));
        assert!(!same(&[
            ("etag", "W/\"a\""),
            ("last-modified", "Fri, 02 Jan 2026 00:00:00 GMT")
        ]));
        assert!(!same(&[("etag", "W/\"a\""), ("content-length", "6")]));
        assert!(!same(&[("etag", "W/\"a\""), ("content-length", "five")]));
        let no_lm = stored(&[("etag", "\"a\"")]);
        assert!(!same_representation(
            &no_lm,
            &stored(&[("last-modified", LM)]).headers
        ));
    }
}
