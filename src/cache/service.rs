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
use super::look::at_once;
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
        let plan = match route(sh, req.method(), req.uri(), req.headers()) {
            Route::Cache(plan) => plan,
            other => return self.pass(req, other),
        };
        let h = req.headers();
        let url = sh.cfg.key.url(req.uri(), h);
        let cond = Cond::of(h);
        // A hit in process: no future to resolve, and the inner service
        // stays readied for the next request.
        if let Some((res, outcome)) = at_once(sh, &url, &plan, h, &cond) {
            return ResponseFuture::ready(res, sh.clone(), outcome);
        }
        let inner = take(&mut self.inner);
        // The request's fields move into the shared copy: a hit needs no
        // clone of them; a forwarded request gets them back (`Pending`).
        let (mut parts, body) = req.into_parts();
        let request = Arc::new(std::mem::take(&mut parts.headers));
        let grpc = crate::problem::is_grpc(&request);
        let ask = Ask {
            url,
            headers: request.clone(),
            lookup_only: plan.lookup_only,
            want: plan.want,
            ranges: cond.ranges.clone(),
            head: plan.head,
        };
        let ctx = FillCtx {
            cond,
            request,
            asked: plan.asked,
            only_if_cached: plan.only_if_cached,
            grpc,
            head: plan.head,
        };
        let fut = Box::pin(resolve(sh.clone(), ask));
        let pending = Pending {
            parts,
            body,
            inner,
            shared: sh.clone(),
            ctx,
        };
        ResponseFuture::resolve(fut, pending)
    }
}

/// The readied service, for a future; a fresh clone stays here.
fn take<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

impl<S: Clone> ResponseCache<S> {
    /// A request the cache does not answer.
    fn pass<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        route: Route,
    ) -> ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let sh = self.shared.clone();
        let mut inner = take(&mut self.inner);
        match route {
            Route::Invalidate => {
                let targets = Targets::of(&sh, &req);
                let after = After::Invalidate(sh.clone(), targets);
                ResponseFuture::call(inner.call(req), after, sh)
            }
            Route::Pass => ResponseFuture::call(inner.call(req), After::Pass(None), sh),
            Route::Bypass(why) => {
                let status = cache_status(&sh.cfg.name, &format!("fwd=bypass; detail={why}"));
                ResponseFuture::call(inner.call(req), After::Pass(Some(status)), sh)
            }
            Route::Cache(_) => unreachable!("answered through the cache"),
        }
    }
}
