//! [`ResponseFuture`]: read the body → reserve → execute (see
//! `execute.rs`); or answer at once (replay, 409, 422, 4xx, 503). What each
//! step leads to is decided in `steps.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{request, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_service::Service;
use tracing::Instrument;

use super::body::RequestBody;
use super::capture::Capture;
use super::config::{Config, FailurePolicy, HangUp};
use super::execute::{with, Execution};
use super::fingerprint::{Fingerprint, RecordKey, Token};
use super::lease::Lease;
use super::response::{reject, replay, IdempotencyOutcome as Outcome, Rejection};
use super::steps::{after_read, after_reserve, OnReserve, Wait};
use super::store::{Hold, Reservation, Reserve};
use crate::body::ResponseBody;
use crate::error::StoreError;

type Res<B> = Response<ResponseBody<B>>;

pin_project! {
    /// Response future of [`Idempotency`](super::Idempotency).
    pub struct ResponseFuture<S, B, ResBody>
    where
        S: Service<Request<RequestBody<B>>>,
    {
        #[pin]
        state: State<S, B, ResBody>,
        // Counts the response's outcome (metrics, a debug span).
        config: Arc<Config>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, ResBody>
    where
        S: Service<Request<RequestBody<B>>>,
    {
        Reading { #[pin] body: B, capture: Capture, ctx: Option<Ctx<S>> },
        Reserving {
            fut: BoxFuture<'static, Result<Reservation, StoreError>>,
            pending: Option<Pending<S, B>>,
        },
        // The execution, polled here (`HangUp::Release`, or no runtime).
        Executing { #[pin] exec: Execution<S::Future, ResBody, S::Error> },
        // The execution in a task of its own (`HangUp::Finish`).
        Detached { handle: JoinHandle<Result<Res<ResBody>, S::Error>>, config: Arc<Config>, grpc: bool },
        Passing { #[pin] fut: S::Future, outcome: Outcome },
        Respond { res: Option<Response<Bytes>> },
    }
}

/// A covered request, before its body is read.
pub(super) struct Ctx<S> {
    pub(super) parts: request::Parts,
    pub(super) inner: S,
    pub(super) config: Arc<Config>,
    pub(super) key: RecordKey,
    pub(super) grpc: bool,
}

/// A read request waiting for the store.
struct Pending<S, B> {
    req: Request<RequestBody<B>>,
    inner: S,
    config: Arc<Config>,
    reserve: Reserve,
    wait: Wait,
    grpc: bool,
}

impl<S, B, ResBody> std::fmt::Debug for ResponseFuture<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Reading { .. } => "reading the request body",
            State::Reserving { .. } => "reserving",
            State::Executing { .. } => "executing",
            State::Detached { .. } => "executing in a task",
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
    pub(super) fn read(body: B, ctx: Ctx<S>) -> Self {
        let capture = Capture::new(ctx.config.max_body);
        let config = ctx.config.clone();
        Self::from(
            State::Reading {
                body,
                capture,
                ctx: Some(ctx),
            },
            config,
        )
    }

    pub(super) fn skip(fut: S::Future, config: Arc<Config>) -> Self {
        Self::from(
            State::Passing {
                fut,
                outcome: Outcome::Skipped,
            },
            config,
        )
    }

    pub(super) fn respond(res: Response<Bytes>, config: Arc<Config>) -> Self {
        Self::from(State::Respond { res: Some(res) }, config)
    }

    fn from(state: State<S, B, ResBody>, config: Arc<Config>) -> Self {
        Self { state, config }
    }
}

const DONE: &str = "ResponseFuture polled after completion";

impl<S, B, ResBody> Future for ResponseFuture<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(poll_state(this.state, cx));
        if let Ok(res) = &out {
            this.config.count(res.extensions().get::<Outcome>());
        }
        Poll::Ready(out)
    }
}

#[allow(clippy::type_complexity)]
fn poll_state<S, B, ResBody>(
    mut state: Pin<&mut State<S, B, ResBody>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Res<ResBody>, S::Error>>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    {
        loop {
            let next = match state.as_mut().project() {
                StateProj::Reading { body, capture, ctx } => {
                    let ended = ready!(capture.poll(body, cx));
                    let ctx = ctx.take().expect(DONE);
                    match after_read(&ended, ctx.config.max_body) {
                        Some(r) => State::Respond {
                            res: Some(reject(&ctx.config, ctx.grpc, r)),
                        },
                        None => reserve(ctx, capture),
                    }
                }
                StateProj::Reserving { fut, pending } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    reserved(pending.take().expect(DONE), result)
                }
                StateProj::Executing { exec } => return exec.poll(cx),
                StateProj::Detached {
                    handle,
                    config,
                    grpc,
                } => {
                    return Poll::Ready(match ready!(Pin::new(handle).poll(cx)) {
                        Ok(result) => result,
                        // The handler panicked: so does this future, as it would inline.
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        // The runtime is shutting down.
                        Err(_) => {
                            let res = reject(config, *grpc, Rejection::ResponseFailed);
                            Ok(res.map(ResponseBody::full))
                        }
                    });
                }
                StateProj::Passing { fut, outcome } => {
                    let res = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(with(res.map(ResponseBody::inner), *outcome)));
                }
                StateProj::Respond { res } => {
                    let res = res.take().expect(DONE);
                    return Poll::Ready(Ok(res.map(ResponseBody::full)));
                }
            };
            state.set(next);
        }
    }
}

/// The request body was read: fingerprint it and reserve.
fn reserve<S, B, ResBody>(ctx: Ctx<S>, capture: &mut Capture) -> State<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>>,
{
    let (data, trailers) = capture.take();
    let reserve = Reserve {
        hold: Hold {
            key: ctx.key,
            token: Token::generate(),
            fingerprint: Fingerprint::new(&ctx.parts, &data),
        },
        lease: ctx.config.lease,
    };
    let fut = ctx.config.home.reserve(&reserve);
    let pending = Pending {
        req: Request::from_parts(ctx.parts, RequestBody::buffered(data, trailers)),
        inner: ctx.inner,
        config: ctx.config,
        reserve,
        wait: Wait::default(),
        grpc: ctx.grpc,
    };
    State::Reserving {
        fut,
        pending: Some(pending),
    }
}

/// The store answered the reservation.
fn reserved<S, B, ResBody>(
    mut p: Pending<S, B>,
    result: Result<Reservation, StoreError>,
) -> State<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let cfg = p.config.clone();
    let respond = |res| State::Respond { res: Some(res) };
    match after_reserve(result, cfg.conflict, &mut p.wait, Instant::now()) {
        OnReserve::Run => {
            let lease = Lease::new(cfg.clone(), p.reserve.hold);
            let exec = Execution::new(p.inner.call(p.req), lease, cfg.clone(), p.grpc);
            match (cfg.hang_up, tokio::runtime::Handle::try_current()) {
                // A hang-up never cancels a write: the execution is a task of its own.
                (HangUp::Finish, Ok(rt)) => State::Detached {
                    handle: rt.spawn(exec.instrument(tracing::Span::current())),
                    config: cfg,
                    grpc: p.grpc,
                },
                _ => State::Executing { exec },
            }
        }
        OnReserve::AskAgain(delay) => {
            let r = p.reserve.clone();
            let fut = Box::pin(async move {
                tokio::time::sleep(delay).await;
                cfg.home.reserve(&r).await
            });
            State::Reserving {
                fut,
                pending: Some(p),
            }
        }
        OnReserve::Reject(r) => respond(reject(&cfg, p.grpc, r)),
        OnReserve::Replay(stored) => respond(replay(stored)),
        OnReserve::StoreFailed(e) => match cfg.on_failure {
            FailurePolicy::Open => {
                cfg.store_failed("reserve", "ran the handler unprotected (fail-open)", &e);
                State::Passing {
                    fut: p.inner.call(p.req),
                    outcome: Outcome::StoreBypassed,
                }
            }
            _ => {
                cfg.store_failed("reserve", "answered 503 (fail-closed)", &e);
                respond(reject(&cfg, p.grpc, Rejection::Unavailable))
            }
        },
    }
}
