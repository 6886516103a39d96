//! [`ResponseFuture`]: resolves the request against the cache, then answers
//! from an entry or calls the inner service (and stores, or invalidates).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::response::Parts;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::capture::Capture;
use super::conditional::revalidating;
use super::decide::HitKind;
use super::fill::FillCtx;
use super::invalidate::Targets;
use super::leader::Leader;
use super::origin::{on_origin, serve_stale_on_error, Answer, Failed};
use super::post::Post;
use super::purges::Invalidated;
use super::refresh::spawn_refresh;
use super::resolve::Resolution;
use super::response::{cache_status, refusal, serve, Refusal, CACHE_STATUS};
use super::shared::Shared;

pin_project! {
    /// Response future of [`ResponseCache`](super::ResponseCache): `S` the
    /// inner service, `B` the request body, `R` the inner response body.
    pub struct ResponseFuture<S, B, R>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, R>,
        // Counts the answer by its `Cache-Status` (metrics, a debug span).
        shared: Arc<Shared>,
        // The outcome, when known without reading `Cache-Status`.
        outcome: Option<usize>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, R>
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
        // Reading the origin's body into the entry before answering.
        Capturing {
            capture: Option<(Box<Capture>, Parts, Pin<Box<R>>)>,
        },
        Invalidating {
            fut: BoxFuture<'static, Invalidated>,
            res: Option<(S::Response, Arc<Shared>, Option<Post>)>,
        },
        // A `POST` response taking its URI's fill lock, to be stored.
        Adopting {
            fut: BoxFuture<'static, Option<(Leader, FillCtx)>>,
            res: Option<S::Response>,
        },
        Ready {
            res: Option<Response<Bytes>>,
        },
    }
}

/// A request that waits for the cache's answer: its fields are in
/// `ctx.request` until it is forwarded.
pub(crate) struct Pending<S, B> {
    pub(crate) parts: http::request::Parts,
    pub(crate) body: B,
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ctx: FillCtx,
}

/// What to do with the inner service's response.
pub(crate) enum After {
    Fill(Box<(Leader, FillCtx)>),
    /// Pass it through with this `Cache-Status` (if any).
    Pass(Option<HeaderValue>),
    Invalidate(Arc<Shared>, Targets),
}

impl<S, B, R> std::fmt::Debug for ResponseFuture<S, B, R>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Resolving { .. } => "resolving",
            State::Calling { .. } => "calling",
            State::Capturing { .. } => "capturing",
            State::Invalidating { .. } => "invalidating",
            State::Adopting { .. } => "adopting",
            State::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, R> ResponseFuture<S, B, R>
where
    S: Service<Request<B>>,
{
    pub(crate) fn resolve(fut: BoxFuture<'static, Resolution>, pending: Pending<S, B>) -> Self {
        Self {
            shared: pending.shared.clone(),
            state: State::Resolving {
                fut,
                pending: Some(pending),
            },
            outcome: None,
        }
    }

    /// Answered already (a hit served at once), with its outcome.
    pub(crate) fn ready(res: Response<Bytes>, shared: Arc<Shared>, outcome: usize) -> Self {
        Self {
            state: State::Ready { res: Some(res) },
            shared,
            outcome: Some(outcome),
        }
    }

    pub(crate) fn call(fut: S::Future, after: After, shared: Arc<Shared>) -> Self {
        Self {
            state: State::Calling {
                fut,
                after: Some(after),
            },
            shared,
            outcome: None,
        }
    }
}

/// The state after the cache resolved a request.
fn resolved<S, B, R>(p: Pending<S, B>, r: Resolution) -> State<S, B, R>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Send,
{
    let Pending {
        mut parts,
        body,
        mut inner,
        shared,
        ctx,
    } = p;
    // Only a forwarded request needs its own fields again.
    let forward = move |ctx: &FillCtx| {
        parts.headers = (*ctx.request).clone();
        Request::from_parts(parts, body)
    };
    let name = &shared.cfg.name;
    let res = match r {
        Resolution::Hit(e, kind) => {
            let params = match kind {
                HitKind::Fresh | HitKind::Stale => "hit",
                HitKind::Local => "hit; detail=l1",
                HitKind::Collapsed => "fwd=miss; collapsed",
            };
            serve(
                &shared.cfg,
                &e,
                shared.now_ms(),
                ctx.head,
                &ctx.cond,
                params,
            )
        }
        Resolution::Fill(leader) => {
            let mut req = forward(&ctx);
            revalidating(req.headers_mut(), &leader);
            return State::Calling {
                fut: inner.call(req),
                after: Some(After::Fill(Box::new((leader, ctx)))),
            };
        }
        Resolution::Refresh(e, leader) => {
            let res = serve(&shared.cfg, &e, shared.now_ms(), ctx.head, &ctx.cond, "hit");
            let mut req = forward(&ctx);
            revalidating(req.headers_mut(), &leader);
            spawn_refresh(inner.call(req), leader, ctx);
            res
        }
        // RFC 9111 §5.2.1.7: nothing stored, so 504 without asking the origin.
        Resolution::Pass(_) if ctx.only_if_cached => refusal(name, Refusal::OnlyIfCached, ctx.grpc),
        Resolution::Unavailable => refusal(name, Refusal::Unavailable, ctx.grpc),
        Resolution::Pass(detail) => {
            let status = cache_status(name, &format!("fwd=miss; detail={detail}"));
            return State::Calling {
                fut: inner.call(forward(&ctx)),
                after: Some(After::Pass(Some(status))),
            };
        }
    };
    State::Ready { res: Some(res) }
}

impl<S, B, R> Future for ResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<R>>,
    // A background refresh (stale-while-revalidate) runs in a task.
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Send,
{
    type Output = Result<Response<crate::ResponseBody<R>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(poll_state(this.state, cx));
        if let Ok(res) = &out {
            match this.outcome.take() {
                Some(i) => this.shared.count_outcome(i),
                None => this.shared.count(res.headers()),
            }
        }
        Poll::Ready(out)
    }
}

#[allow(clippy::type_complexity)]
fn poll_state<S, B, R>(
    mut state: Pin<&mut State<S, B, R>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<crate::ResponseBody<R>>, S::Error>>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Send,
{
    {
        const DONE: &str = "ResponseFuture polled after completion";
        loop {
            let next = match state.as_mut().project() {
                StateProj::Resolving { fut, pending } => {
                    let r = ready!(fut.as_mut().poll(cx));
                    resolved(pending.take().expect(DONE), r)
                }
                StateProj::Calling { fut, after } => {
                    let result = ready!(fut.poll(cx));
                    match (after.take().expect(DONE), result) {
                        (After::Fill(fill), Ok(res)) => {
                            let (leader, ctx) = *fill;
                            match on_origin(leader, res, ctx) {
                                Answer::Done(res) => return Poll::Ready(Ok(res)),
                                Answer::Capture(c, parts, body) => State::Capturing {
                                    capture: Some((c, parts, Box::pin(body))),
                                },
                            }
                        }
                        (After::Fill(fill), Err(e)) => {
                            let (leader, ctx) = &*fill;
                            let stale =
                                serve_stale_on_error(leader, ctx, Failed::Unreachable(None));
                            return Poll::Ready(
                                stale.map(|r| r.map(crate::ResponseBody::full)).ok_or(e),
                            );
                        }
                        (_, Err(e)) => return Poll::Ready(Err(e)),
                        (After::Pass(status), Ok(res)) => {
                            let mut res = res.map(crate::ResponseBody::inner);
                            if let Some(s) = status {
                                res.headers_mut().append(CACHE_STATUS.clone(), s);
                            }
                            return Poll::Ready(Ok(res));
                        }
                        (After::Invalidate(shared, mut targets), Ok(res)) => {
                            let s = res.status();
                            if !(s.is_success() || s.is_redirection()) {
                                return Poll::Ready(Ok(res.map(crate::ResponseBody::inner)));
                            }
                            let post = targets.adopting(&shared, s, res.headers());
                            let fut = targets.purge(&shared, res.headers());
                            State::Invalidating {
                                fut,
                                res: Some((res, shared, post)),
                            }
                        }
                    }
                }
                StateProj::Capturing { capture } => {
                    let (c, _, body) = capture.as_mut().expect(DONE);
                    let read = ready!(c.poll_read(body.as_mut(), cx));
                    let (c, parts, body) = capture.take().expect(DONE);
                    return Poll::Ready(Ok(c.respond(parts, body, read)));
                }
                StateProj::Invalidating { fut, res } => {
                    let invalidated = ready!(fut.as_mut().poll(cx));
                    match res.take().expect(DONE) {
                        // Stored only over what the purge dropped.
                        (res, shared, Some(post)) if invalidated.landed => State::Adopting {
                            fut: Box::pin(post.lease(shared)),
                            res: Some(res),
                        },
                        (res, shared, _) => {
                            let mut res = res.map(crate::ResponseBody::inner);
                            invalidated.mark(&shared.cfg.name, res.headers_mut());
                            return Poll::Ready(Ok(res));
                        }
                    }
                }
                StateProj::Adopting { fut, res } => {
                    let lease = ready!(fut.as_mut().poll(cx));
                    let res = res.take().expect(DONE);
                    let Some((leader, ctx)) = lease else {
                        return Poll::Ready(Ok(res.map(crate::ResponseBody::inner)));
                    };
                    match on_origin(leader, res, ctx) {
                        Answer::Done(res) => return Poll::Ready(Ok(res)),
                        Answer::Capture(c, parts, body) => State::Capturing {
                            capture: Some((c, parts, Box::pin(body))),
                        },
                    }
                }
                StateProj::Ready { res } => {
                    let res = res.take().expect(DONE);
                    return Poll::Ready(Ok(res.map(crate::ResponseBody::full)));
                }
            };
            state.set(next);
        }
    }
}
