//! [`ResponseFuture`]: read the body → reserve → run → read the response →
//! complete; or answer at once (replay, 409, 422, 4xx, 503). The steps
//! between states are in `steps.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{request, response, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::body::RequestBody;
use super::capture::Capture;
use super::fingerprint::RecordKey;
use super::layer::Config;
use super::lease::{Completion, Lease};
use super::response::IdempotencyOutcome as Outcome;
use super::store::{Reservation, Reserve};
use crate::body::ResponseBody;
use crate::error::StoreError;

pin_project! {
    /// Response future of [`Idempotency`](super::Idempotency).
    pub struct ResponseFuture<S, B, ResBody>
    where
        S: Service<Request<RequestBody<B>>>,
    {
        #[pin]
        state: State<S, B, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<S, B, ResBody>
    where
        S: Service<Request<RequestBody<B>>>,
    {
        Reading { #[pin] body: B, capture: Capture, ctx: Option<Ctx<S>> },
        Reserving {
            fut: BoxFuture<'static, Result<Reservation, StoreError>>,
            pending: Option<Pending<S, B>>,
        },
        Running { #[pin] fut: S::Future, lease: Option<Lease>, config: Arc<Config> },
        Capturing {
            // Boxed: over the cap it is handed on, after what was read.
            body: Option<Pin<Box<ResBody>>>,
            parts: Option<response::Parts>,
            capture: Capture,
            lease: Option<Lease>,
            config: Arc<Config>,
        },
        // Storing the response, or releasing the key when it is not stored.
        Completing {
            completion: Completion,
            res: Option<Result<Response<ResponseBody<ResBody>>, S::Error>>,
            storing: bool,
        },
        Passing { #[pin] fut: S::Future, outcome: Outcome },
        Respond { res: Option<Response<Bytes>> },
    }
}

/// A covered request, before its body is read.
pub(crate) struct Ctx<S> {
    pub(crate) parts: request::Parts,
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
    pub(crate) key: RecordKey,
}

/// A read request waiting for the store.
pub(super) struct Pending<S, B> {
    pub(super) req: Request<RequestBody<B>>,
    pub(super) inner: S,
    pub(super) config: Arc<Config>,
    pub(super) reserve: Reserve,
    pub(super) wait_until: Option<Instant>,
    pub(super) attempt: u32,
}

impl<S, B, ResBody> std::fmt::Debug for ResponseFuture<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Reading { .. } => "reading the request body",
            State::Reserving { .. } => "reserving",
            State::Running { .. } => "running",
            State::Capturing { .. } => "reading the response body",
            State::Completing { .. } => "completing",
            State::Passing { .. } => "passing through",
            State::Respond { .. } => "responding",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, ResBody> ResponseFuture<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>>,
{
    pub(crate) fn read(body: B, ctx: Ctx<S>) -> Self {
        let capture = Capture::new(ctx.config.max_body);
        Self::from(State::Reading {
            body,
            capture,
            ctx: Some(ctx),
        })
    }

    pub(crate) fn skip(fut: S::Future) -> Self {
        Self::from(State::Passing {
            fut,
            outcome: Outcome::Skipped,
        })
    }

    pub(crate) fn respond(res: Response<Bytes>) -> Self {
        Self::from(State::Respond { res: Some(res) })
    }

    fn from(state: State<S, B, ResBody>) -> Self {
        Self { state }
    }
}

const DONE: &str = "ResponseFuture polled after completion";

impl<S, B, ResBody> Future for ResponseFuture<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    B: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Reading { body, capture, ctx } => {
                    let ended = ready!(capture.poll(body, cx));
                    State::after_read(ctx.take().expect(DONE), ended, capture)
                }
                StateProj::Reserving { fut, pending } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    State::after_reserve(pending.take().expect(DONE), result)
                }
                StateProj::Running { fut, lease, config } => {
                    if let Some(l) = lease.as_mut() {
                        l.poll_renew(cx);
                    }
                    let result = ready!(fut.poll(cx));
                    State::after_run(result, lease.take().expect(DONE), config)
                }
                StateProj::Capturing {
                    body,
                    parts,
                    capture,
                    lease,
                    config,
                } => {
                    if let Some(l) = lease.as_mut() {
                        l.poll_renew(cx);
                    }
                    let ended = ready!(capture.poll(body.as_mut().expect(DONE).as_mut(), cx));
                    let (Some(body), Some(parts), Some(lease)) =
                        (body.take(), parts.take(), lease.take())
                    else {
                        panic!("{DONE}");
                    };
                    let capture = std::mem::replace(capture, Capture::new(0));
                    State::after_capture(ended, body, parts, capture, lease, config)
                }
                StateProj::Completing {
                    completion,
                    res,
                    storing,
                } => {
                    let result = ready!(Pin::new(completion).poll(cx));
                    let res = res.take().expect(DONE);
                    return Poll::Ready(super::steps::finish(res, result, *storing));
                }
                StateProj::Passing { fut, outcome } => {
                    let res = ready!(fut.poll(cx))?;
                    let mut res = res.map(ResponseBody::inner);
                    res.extensions_mut().insert(*outcome);
                    return Poll::Ready(Ok(res));
                }
                StateProj::Respond { res } => {
                    let res = res.take().expect(DONE);
                    return Poll::Ready(Ok(res.map(ResponseBody::full)));
                }
            };
            this.state.set(next);
        }
    }
}
