//! [`ResponseCache`]: the middleware service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, RANGE};
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::capture::CacheBody;
use super::fill::FillCtx;
use super::future::{After, Pending, ResponseFuture};
use super::invalidate::Targets;
use super::layer::RequestDirectives;
use super::policy::CacheControl;
use super::resolve::{resolve, Ask};
use super::response::{cache_status, Cond};
use super::shared::Shared;

/// Answers GET and HEAD from the cache and invalidates on writes; built by
/// [`ResponseCacheLayer`](super::ResponseCacheLayer).
#[derive(Clone, Debug)]
pub struct ResponseCache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ResponseCache<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    define_inner_service_accessors!();
}

/// Every method but the safe ones (RFC 9110 §9.2.1), unknown ones included.
fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Body,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let sh = &self.shared;
        // The readied service goes into the future; a fresh clone stays here.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = req.method();
        if is_unsafe(method) && sh.invalidate_unsafe {
            let targets = Targets::of(sh, &req);
            return ResponseFuture::call(inner.call(req), After::Invalidate(sh.clone(), targets));
        }
        if *method != Method::GET && *method != Method::HEAD {
            return ResponseFuture::call(inner.call(req), After::Pass(None));
        }
        let h = req.headers();
        let authorized = h.contains_key(AUTHORIZATION);
        let bypass = if h.contains_key(RANGE) {
            Some("range")
        } else if authorized && !sh.rules.cache_authorized {
            Some("authorization")
        } else {
            None
        };
        if let Some(why) = bypass {
            let status = cache_status(&sh.name, &format!("fwd=bypass; detail={why}"));
            return ResponseFuture::call(inner.call(req), After::Pass(Some(status)));
        }
        let head = *method == Method::HEAD;
        // A header the key ignores must not shape a stored response.
        let unkeyed = sh
            .unkeyed
            .iter()
            .any(|n| h.contains_key(n) && !sh.key.headers.contains(n));
        let mut lookup_only = head || unkeyed;
        let mut force_older_than = None;
        let mut only_if_cached = false;
        if let RequestDirectives::Honor { min_age } = sh.directives {
            let cc = CacheControl::parse(h);
            only_if_cached = cc.only_if_cached;
            lookup_only |= cc.no_store || only_if_cached;
            if cc.no_cache || cc.max_age == Some(0) {
                force_older_than = Some(min_age);
            }
        }
        let request = Arc::new(h.clone());
        let ask = Ask {
            url: sh.key.url(req.uri(), h),
            headers: request.clone(),
            lookup_only,
            force_older_than,
        };
        let ctx = FillCtx {
            cond: Cond::of(h),
            request,
            authorized,
            only_if_cached,
        };
        let fut = Box::pin(resolve(sh.clone(), ask));
        let pending = Pending {
            req,
            inner,
            shared: sh.clone(),
            ctx,
            head,
        };
        ResponseFuture::resolve(fut, pending)
    }
}
