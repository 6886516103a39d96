//! [`ResponseCache`]: the middleware service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::conditional::Cond;
use super::fill::FillCtx;
use super::future::{After, Pending, ResponseFuture};
use super::invalidate::Targets;
use super::range::Ranges;
use super::resolve::{resolve, Ask};
use super::response::cache_status;
use super::route::{route, Route};
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    // A background refresh (stale-while-revalidate) runs in a task.
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<crate::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let sh = &self.shared;
        // The readied service goes into the future; a fresh clone stays here.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let plan = match route(sh, req.method(), req.uri(), req.headers()) {
            Route::Invalidate => {
                let targets = Targets::of(sh, &req);
                let after = After::Invalidate(sh.clone(), targets);
                return ResponseFuture::call(inner.call(req), after, sh.clone());
            }
            Route::Pass => {
                return ResponseFuture::call(inner.call(req), After::Pass(None), sh.clone())
            }
            Route::Bypass(why) => {
                let status = cache_status(&sh.cfg.name, &format!("fwd=bypass; detail={why}"));
                return ResponseFuture::call(
                    inner.call(req),
                    After::Pass(Some(status)),
                    sh.clone(),
                );
            }
            Route::Cache(plan) => plan,
        };
        let h = req.headers();
        let request = Arc::new(h.clone());
        let ask = Ask {
            url: sh.cfg.key.url(req.uri(), h),
            headers: request.clone(),
            lookup_only: plan.lookup_only,
            want: plan.want,
            ranges: Ranges::of(h),
            head: plan.head,
        };
        let ctx = FillCtx {
            cond: Cond::of(h),
            request,
            asked: plan.asked,
            only_if_cached: plan.only_if_cached,
            grpc: crate::problem::is_grpc(h),
            head: plan.head,
        };
        let fut = Box::pin(resolve(sh.clone(), ask));
        let pending = Pending {
            req,
            inner,
            shared: sh.clone(),
            ctx,
        };
        ResponseFuture::resolve(fut, pending)
    }
}
