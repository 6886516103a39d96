//! [`ResponseFuture`]: read the body → reserve → run → read the response →
//! complete; or answer at once (replay, 409, 422, 4xx, 503).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{request, response, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::body::RequestBody;
use super::capture::{Capture, Captured};
use super::fingerprint::{Fingerprint, RecordKey, Token};
use super::layer::{Config, Conflict, FailurePolicy};
use super::lease::{Completion, Lease};
use super::policy::stored_headers;
use super::record::StoredResponse;
use super::response::{
    body_failed, in_progress, invalid, mismatch, replay, too_large, unavailable,
    IdempotencyOutcome as Outcome,
};
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
    enum State<S, B, ResBody>
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
            capture: Option<Capture>,
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
struct Pending<S, B> {
    req: Request<RequestBody<B>>,
    inner: S,
    config: Arc<Config>,
    reserve: Reserve,
    wait_until: Option<Instant>,
    attempt: u32,
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

impl<S, B, ResBody> State<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>>,
{
    fn respond(res: Response<Bytes>) -> Self {
        State::Respond { res: Some(res) }
    }

    /// Releases the key, then answers `res`.
    fn releasing(lease: Lease, res: Result<Response<ResponseBody<ResBody>>, S::Error>) -> Self {
        State::Completing {
            completion: lease.release(),
            res: Some(res),
            storing: false,
        }
    }

    /// The store could not decide: the failure policy answers.
    fn store_failed(mut p: Pending<S, B>) -> Self {
        match p.config.on_failure {
            FailurePolicy::PassThrough => State::Passing {
                fut: p.inner.call(p.req),
                outcome: Outcome::StoreBypassed,
            },
            _ => State::respond(unavailable()),
        }
    }
}

/// One warning per second at most: an outage must not flood the logs.
fn warn_store_failure(cfg: &Config, e: &dyn std::fmt::Display) {
    let sec = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if cfg.warned_at.swap(sec, Ordering::Relaxed) != sec {
        tracing::warn!(error = %e, policy = ?cfg.on_failure, "idempotency store failed");
    }
}

fn with<B>(mut res: Response<B>, outcome: Outcome) -> Response<B> {
    res.extensions_mut().insert(outcome);
    res
}

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
                    let ctx = ctx.take().expect("ResponseFuture polled after completion");
                    match ended {
                        Captured::Over => State::respond(too_large(ctx.config.max_body)),
                        Captured::Failed(_) => {
                            tracing::debug!("idempotency: the request body failed");
                            State::respond(invalid("the request body could not be read"))
                        }
                        Captured::Done => {
                            let (data, trailers) = capture.take();
                            let reserve = Reserve {
                                key: ctx.key,
                                fingerprint: Fingerprint::new(&ctx.parts, &data),
                                token: Token::generate(),
                                lease: ctx.config.lease,
                            };
                            let fut = ctx.config.store.reserve(&reserve);
                            let body = RequestBody::buffered(data, trailers);
                            let pending = Pending {
                                req: Request::from_parts(ctx.parts, body),
                                inner: ctx.inner,
                                config: ctx.config,
                                reserve,
                                wait_until: None,
                                attempt: 0,
                            };
                            State::Reserving {
                                fut,
                                pending: Some(pending),
                            }
                        }
                    }
                }
                StateProj::Reserving { fut, pending } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let mut p = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match result {
                        Ok(Reservation::Reserved) => {
                            let cfg = &p.config;
                            let lease = Lease::new(
                                cfg.store.clone(),
                                p.reserve.key.clone(),
                                p.reserve.token.clone(),
                                cfg.lease,
                            );
                            State::Running {
                                fut: p.inner.call(p.req),
                                lease: Some(lease),
                                config: p.config,
                            }
                        }
                        Ok(Reservation::InProgress { lease_left }) => {
                            if let Conflict::Wait(max) = p.config.conflict {
                                let now = Instant::now();
                                let until = *p.wait_until.get_or_insert(now + max);
                                if now < until {
                                    // 10, 20, 40, 80 ms, then every 160 ms.
                                    let delay = Duration::from_millis(10 << p.attempt.min(4))
                                        .min(until - now);
                                    p.attempt += 1;
                                    let store = p.config.store.clone();
                                    let r = p.reserve.clone();
                                    *fut = Box::pin(async move {
                                        tokio::time::sleep(delay).await;
                                        store.reserve(&r).await
                                    });
                                    *pending = Some(p);
                                    continue;
                                }
                            }
                            State::respond(in_progress(lease_left))
                        }
                        Ok(Reservation::Mismatch) => State::respond(mismatch()),
                        Ok(Reservation::Completed(bytes)) => match StoredResponse::decode(&bytes) {
                            Ok(stored) => State::respond(replay(stored)),
                            Err(corrupt) => {
                                tracing::error!(
                                    error = %corrupt,
                                    "idempotency: a stored record does not decode; \
                                     treated as a store failure"
                                );
                                State::store_failed(p)
                            }
                        },
                        Err(e) => {
                            warn_store_failure(&p.config, &e);
                            State::store_failed(p)
                        }
                    }
                }
                StateProj::Running { fut, lease, config } => {
                    if let Some(l) = lease.as_mut() {
                        l.poll_renew(cx);
                    }
                    let result = ready!(fut.poll(cx));
                    let lease = lease
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let res = match result {
                        Ok(res) => res,
                        // A handler error releases the key: a retry runs again.
                        Err(e) => {
                            this.state.set(State::releasing(lease, Err(e)));
                            continue;
                        }
                    };
                    let too_large = res.body().size_hint().lower() > config.max_stored_body as u64;
                    if too_large || !config.policy.stores(res.status()) {
                        if too_large {
                            warn_too_large(config);
                        }
                        let res = with(res.map(ResponseBody::inner), Outcome::NotStored);
                        this.state.set(State::releasing(lease, Ok(res)));
                        continue;
                    }
                    let (parts, body) = res.into_parts();
                    State::Capturing {
                        body: Some(Box::pin(body)),
                        parts: Some(parts),
                        capture: Some(Capture::new(config.max_stored_body)),
                        lease: Some(lease),
                        config: config.clone(),
                    }
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
                    let (Some(b), Some(c)) = (body.as_mut(), capture.as_mut()) else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let ended = ready!(c.poll(b.as_mut(), cx));
                    let (Some(body), Some(parts), Some(mut capture), Some(lease)) =
                        (body.take(), parts.take(), capture.take(), lease.take())
                    else {
                        panic!("ResponseFuture polled after completion");
                    };
                    match ended {
                        Captured::Failed(_) => {
                            tracing::warn!("idempotency: the response body failed; key released");
                            let res = body_failed().map(ResponseBody::full);
                            this.state.set(State::releasing(lease, Ok(res)));
                            continue;
                        }
                        Captured::Over => warn_too_large(config),
                        Captured::Done if capture.has_trailers() => {
                            tracing::debug!("idempotency: responses with trailers are not stored");
                        }
                        Captured::Done => {
                            let (data, _) = capture.take();
                            let record = StoredResponse {
                                status: parts.status,
                                headers: stored_headers(&config.stored_headers, &parts.headers),
                                body: data.clone(),
                            }
                            .encode();
                            let res = Response::from_parts(parts, ResponseBody::full(data));
                            match lease.complete(record, config.record_ttl) {
                                Some(completion) => {
                                    this.state.set(State::Completing {
                                        completion,
                                        res: Some(Ok(res)),
                                        storing: true,
                                    });
                                    continue;
                                }
                                None => return Poll::Ready(Ok(with(res, Outcome::NotStored))),
                            }
                        }
                    }
                    lease.release();
                    let body = ResponseBody::prefixed(capture.into_frames(), body);
                    return Poll::Ready(Ok(with(
                        Response::from_parts(parts, body),
                        Outcome::NotStored,
                    )));
                }
                StateProj::Completing {
                    completion,
                    res,
                    storing,
                } => {
                    let result = ready!(Pin::new(completion).poll(cx));
                    let res = res.take().expect("ResponseFuture polled after completion");
                    if !*storing {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "idempotency: release failed; the lease will lapse");
                        }
                        return Poll::Ready(res);
                    }
                    let Ok(res) = res else {
                        return Poll::Ready(res);
                    };
                    let outcome = match result {
                        Ok(true) => Outcome::Stored,
                        Ok(false) => {
                            tracing::warn!(
                                "idempotency: the lease lapsed before the response was stored \
                                 (raise the lease); a retry may run again"
                            );
                            Outcome::NotStored
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "idempotency: storing the response failed");
                            Outcome::NotStored
                        }
                    };
                    return Poll::Ready(Ok(with(res, outcome)));
                }
                StateProj::Passing { fut, outcome } => {
                    let res = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(with(res.map(ResponseBody::inner), *outcome)));
                }
                StateProj::Respond { res } => {
                    let res = res.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(res.map(ResponseBody::full)));
                }
            };
            this.state.set(next);
        }
    }
}

fn warn_too_large(cfg: &Config) {
    tracing::warn!(
        max_stored_body = cfg.max_stored_body,
        "idempotency: the response is larger than max_stored_body; \
         sent without storing it, key released (a retry runs again)"
    );
}
