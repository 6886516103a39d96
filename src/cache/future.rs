//! [`ResponseFuture`]: resolves the request against the cache, then answers
//! from an entry or calls the inner service (and stores, or invalidates).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::capture::{passed, CacheBody};
use super::decide::HitKind;
use super::fill::{on_origin, serve_stale_on_error, FillCtx};
use super::invalidate::Targets;
use super::leader::Leader;
use super::resolve::Resolution;
use super::response::{cache_status, refusal, serve, Refusal, CACHE_STATUS};
use super::shared::Shared;

pin_project! {
    /// Response future of [`ResponseCache`](super::ResponseCache).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Resolving {
            fut: BoxFuture<'static, Resolution>,
            pending: Option<Pending<S, B>>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            after: Option<After>,
        },
        Invalidating {
            fut: BoxFuture<'static, ()>,
            res: Option<S::Response>,
        },
        Ready {
            res: Option<Response<Bytes>>,
        },
    }
}

pub(crate) struct Pending<S, B> {
    pub(crate) req: Request<B>,
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ctx: FillCtx,
    pub(crate) head: bool,
}

/// What to do with the inner service's response.
pub(crate) enum After {
    Fill(Box<(Leader, FillCtx)>),
    /// Pass it through with this `Cache-Status` (if any).
    Pass(Option<HeaderValue>),
    Invalidate(Arc<Shared>, Targets),
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Resolving { .. } => "resolving",
            State::Calling { .. } => "calling",
            State::Invalidating { .. } => "invalidating",
            State::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn resolve(fut: BoxFuture<'static, Resolution>, pending: Pending<S, B>) -> Self {
        Self {
            state: State::Resolving {
                fut,
                pending: Some(pending),
            },
        }
    }

    pub(crate) fn call(fut: S::Future, after: After) -> Self {
        Self {
            state: State::Calling {
                fut,
                after: Some(after),
            },
        }
    }
}

/// The state after the cache resolved a request.
fn resolved<S, B>(p: Pending<S, B>, r: Resolution) -> State<S, B>
where
    S: Service<Request<B>>,
{
    let Pending {
        mut req,
        mut inner,
        shared,
        ctx,
        head,
    } = p;
    match r {
        Resolution::Hit(e, kind) => {
            let params = match kind {
                HitKind::Fresh | HitKind::Stale => "hit",
                HitKind::Local => "hit; detail=l1",
                HitKind::Collapsed => "fwd=miss; collapsed",
            };
            let now = shared.now_ms();
            let res = serve(&shared.cfg.name, &e, now, head, &ctx.cond, params);
            State::Ready { res: Some(res) }
        }
        Resolution::Fill(leader) => {
            // The cache fills with a full response: the client's own
            // conditions are answered from the entry, not forwarded.
            let h = req.headers_mut();
            h.remove(IF_NONE_MATCH);
            h.remove(IF_MODIFIED_SINCE);
            if let Some(stale) = &leader.stale {
                if let Some(etag) = stale.headers.get(ETAG) {
                    h.insert(IF_NONE_MATCH, etag.clone());
                }
                if let Some(lm) = stale.headers.get(LAST_MODIFIED) {
                    h.insert(IF_MODIFIED_SINCE, lm.clone());
                }
            }
            State::Calling {
                fut: inner.call(req),
                after: Some(After::Fill(Box::new((leader, ctx)))),
            }
        }
        // RFC 9111 §5.2.1.7: nothing stored, so 504 without asking the origin.
        Resolution::Pass(_) if ctx.only_if_cached => State::Ready {
            res: Some(refusal(&shared.cfg.name, Refusal::OnlyIfCached, ctx.grpc)),
        },
        Resolution::Unavailable => State::Ready {
            res: Some(refusal(&shared.cfg.name, Refusal::Unavailable, ctx.grpc)),
        },
        Resolution::Pass(detail) => {
            let status = cache_status(&shared.cfg.name, &format!("fwd=miss; detail={detail}"));
            State::Calling {
                fut: inner.call(req),
                after: Some(After::Pass(Some(status))),
            }
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Output = Result<Response<CacheBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Resolving { fut, pending } => {
                    let r = ready!(fut.as_mut().poll(cx));
                    let p = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    resolved(p, r)
                }
                StateProj::Calling { fut, after } => {
                    let result = ready!(fut.poll(cx));
                    let after = after
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match (after, result) {
                        (After::Fill(fill), Ok(res)) => {
                            let (leader, ctx) = *fill;
                            return Poll::Ready(Ok(on_origin(leader, res, &ctx)));
                        }
                        (After::Fill(fill), Err(e)) => {
                            let (leader, ctx) = &*fill;
                            return Poll::Ready(serve_stale_on_error(leader, ctx, 500).ok_or(e));
                        }
                        (_, Err(e)) => return Poll::Ready(Err(e)),
                        (After::Pass(status), Ok(res)) => {
                            let mut res = res.map(passed);
                            if let Some(s) = status {
                                res.headers_mut().append(CACHE_STATUS.clone(), s);
                            }
                            return Poll::Ready(Ok(res));
                        }
                        (After::Invalidate(shared, targets), Ok(res)) => {
                            let s = res.status();
                            if !(s.is_success() || s.is_redirection()) {
                                return Poll::Ready(Ok(res.map(passed)));
                            }
                            let fut = targets.purge(&shared, res.headers());
                            State::Invalidating {
                                fut,
                                res: Some(res),
                            }
                        }
                    }
                }
                StateProj::Invalidating { fut, res } => {
                    ready!(fut.as_mut().poll(cx));
                    let res = res.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(res.map(passed)));
                }
                StateProj::Ready { res } => {
                    let res = res.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(res.map(crate::ResponseBody::full)));
                }
            };
            this.state.set(next);
        }
    }
}
