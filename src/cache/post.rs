//! A `POST` response reused for later `GET`s of its URI (RFC 9110 §9.3.3):
//! when it has explicit freshness and a `Content-Location` naming the
//! request's own URI, and would be stored as the response to a `GET` with
//! the same fields, it becomes that stored response once the `POST`'s
//! invalidation (RFC 9111 §4.4) has landed. It takes the `GET`'s fill lock
//! without waiting: when another fill holds it, nothing is stored.

use std::sync::Arc;

use http::header::EXPIRES;
use http::{HeaderMap, Method, Request, StatusCode};

use super::conditional::Cond;
use super::fill::FillCtx;
use super::key;
use super::leader::Leader;
use super::look::learn;
use super::policy::{verdict, CacheControl, Verdict};
use super::route::{route, Plan, Route};
use super::shared::{token, Shared};
use super::store::{LockState, Lookup};

/// A `POST` whose response may become its URI's stored `GET` response.
#[derive(Debug)]
pub(crate) struct Post {
    plan: Plan,
    request: Arc<HeaderMap>,
    url: Arc<str>,
}

impl Post {
    /// A `POST` that, as a `GET` with the same fields, could fill an entry
    /// (no `Authorization` unless allowed, no unkeyed inputs, ...).
    pub(crate) fn of<B>(shared: &Shared, req: &Request<B>) -> Option<Self> {
        if req.method() != Method::POST {
            return None;
        }
        match route(shared, &Method::GET, req.uri(), req.headers()) {
            Route::Cache(plan) if !plan.lookup_only && !plan.only_if_cached => Some(Self {
                plan,
                request: Arc::new(req.headers().clone()),
                url: shared.cfg.key.url(req.uri(), req.headers()),
            }),
            _ => None,
        }
    }

    /// Whether a response whose `Content-Location` names `location` (a URL
    /// digest, when on the request's origin) is reused: it names this
    /// `POST`'s URI, has explicit freshness and is storable.
    pub(crate) fn adopts(
        &self,
        shared: &Shared,
        status: StatusCode,
        h: &HeaderMap,
        location: Option<Arc<str>>,
    ) -> bool {
        if location.as_deref() != Some(&*self.url) {
            return false;
        }
        let cc = CacheControl::of_response(h, &shared.cfg.rules.targeted);
        let explicit = cc.s_maxage.is_some()
            || cc.max_age.is_some()
            || (!cc.targeted && h.contains_key(EXPIRES));
        let rules = &shared.cfg.rules;
        explicit
            && matches!(
                verdict(rules, self.plan.asked, status, h, shared.now_ms()),
                Verdict::Store(_)
            )
    }

    /// Takes the `GET` slot's fill lock (after the purge, under the URL's
    /// new generation) for this response; `None` when another fill holds
    /// it or the store fails.
    pub(crate) async fn lease(self, shared: Arc<Shared>) -> Option<(Leader, FillCtx)> {
        for _ in 0..2 {
            let slot = key::slot(self.url.clone(), shared.spec_of(&self.url), &self.request);
            let token = token();
            let q = Lookup {
                slot: slot.clone(),
                lock: Some((token, shared.cfg.lock_ttl.as_millis() as u64)),
                force: true,
            };
            let found = match shared.home.lookup(&q).await {
                Ok(found) => found,
                Err(e) => {
                    // Redis may still take the lock for us: give it back.
                    if e.is_timeout() {
                        shared.spawn_release(&slot, token, 0);
                    }
                    return None;
                }
            };
            let acquired = found.lock == LockState::Acquired;
            if !learn(&shared, &slot, &found) {
                if acquired {
                    shared.spawn_release(&slot, token, 0);
                }
                continue;
            }
            if !acquired {
                return None;
            }
            let leader = Leader::new(&shared, slot, None, Some((&found, Some(token))), None, None);
            let ctx = FillCtx {
                cond: Cond::of(&HeaderMap::new()),
                asked: self.plan.asked,
                only_if_cached: false,
                grpc: crate::problem::is_grpc(&self.request),
                head: false,
                request: self.request,
            };
            return Some((leader, ctx));
        }
        None
    }
}
