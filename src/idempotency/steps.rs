//! The steps between the states of [`ResponseFuture`](super::ResponseFuture):
//! what each store answer and each handler outcome leads to.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{response, Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::body::RequestBody;
use super::capture::{Capture, Captured};
use super::fingerprint::{Fingerprint, Token};
use super::future::{Ctx, Pending, State};
use super::layer::{Config, Conflict, FailurePolicy};
use super::lease::Lease;
use super::policy::stored_headers;
use super::record::StoredResponse;
use super::response::{
    body_failed, in_progress, invalid, mismatch, replay, too_large, unavailable,
    IdempotencyOutcome as Outcome,
};
use super::store::{Reservation, Reserve};
use crate::body::ResponseBody;
use crate::error::StoreError;

type Res<ResBody> = Response<ResponseBody<ResBody>>;

impl<S, B, ResBody> State<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
{
    fn respond(res: Response<Bytes>) -> Self {
        State::Respond { res: Some(res) }
    }

    /// The request body was read (or not): fingerprint it and reserve.
    pub(super) fn after_read<E>(ctx: Ctx<S>, ended: Captured<E>, capture: &mut Capture) -> Self {
        match ended {
            Captured::Over => return State::respond(too_large(ctx.config.max_body)),
            Captured::Failed(_) => {
                tracing::debug!("idempotency: the request body failed");
                return State::respond(invalid("the request body could not be read"));
            }
            Captured::Done => {}
        }
        let (data, trailers) = capture.take();
        let reserve = Reserve {
            key: ctx.key,
            fingerprint: Fingerprint::new(&ctx.parts, &data),
            token: Token::generate(),
            lease: ctx.config.lease,
        };
        let fut = ctx.config.store.reserve(&reserve);
        let req = Request::from_parts(ctx.parts, RequestBody::buffered(data, trailers));
        let pending = Pending {
            req,
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

    /// The store answered the reservation.
    pub(super) fn after_reserve(
        mut p: Pending<S, B>,
        result: Result<Reservation, StoreError>,
    ) -> Self {
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
                        // Ask again after 10, 20, 40, 80 ms, then every 160 ms.
                        let delay = Duration::from_millis(10 << p.attempt.min(4)).min(until - now);
                        p.attempt += 1;
                        let store = p.config.store.clone();
                        let r = p.reserve.clone();
                        let fut = Box::pin(async move {
                            tokio::time::sleep(delay).await;
                            store.reserve(&r).await
                        });
                        return State::Reserving {
                            fut,
                            pending: Some(p),
                        };
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
                        "idempotency: a stored record does not decode; treated as a store failure"
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

    /// The handler answered: read its body to store it, or release the key.
    pub(super) fn after_run(
        result: Result<Response<ResBody>, S::Error>,
        lease: Lease,
        config: &std::sync::Arc<Config>,
    ) -> Self
    where
        ResBody: http_body::Body,
    {
        let res = match result {
            Ok(res) => res,
            // A handler error releases the key: a retry runs again.
            Err(e) => return State::releasing(lease, Err(e)),
        };
        let too_large = res.body().size_hint().lower() > config.max_stored_body as u64;
        if too_large || !config.policy.stores(res.status()) {
            if too_large {
                warn_too_large(config);
            }
            let res = with(res.map(ResponseBody::inner), Outcome::NotStored);
            return State::releasing(lease, Ok(res));
        }
        let (parts, body) = res.into_parts();
        State::Capturing {
            body: Some(Box::pin(body)),
            parts: Some(parts),
            capture: Capture::new(config.max_stored_body),
            lease: Some(lease),
            config: config.clone(),
        }
    }

    /// The response body was read: store it, or send it on and release the key.
    pub(super) fn after_capture<E>(
        ended: Captured<E>,
        body: Pin<Box<ResBody>>,
        parts: response::Parts,
        mut capture: Capture,
        lease: Lease,
        config: &Config,
    ) -> Self {
        match ended {
            Captured::Failed(_) => {
                tracing::warn!("idempotency: the response body failed; key released");
                let res = body_failed().map(ResponseBody::full);
                return State::releasing(lease, Ok(res));
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
                return State::Completing {
                    completion: lease.complete(record, config.record_ttl),
                    res: Some(Ok(res)),
                    storing: true,
                };
            }
        }
        let body = ResponseBody::prefixed(capture.into_frames(), body);
        let res = with(Response::from_parts(parts, body), Outcome::NotStored);
        State::releasing(lease, Ok(res))
    }

    /// Releases the key, then answers `res`.
    fn releasing(lease: Lease, res: Result<Res<ResBody>, S::Error>) -> Self {
        State::Completing {
            completion: lease.release(),
            res: Some(res),
            storing: false,
        }
    }
}

/// The answer once the completion (or release) write is done.
pub(super) fn finish<ResBody, E>(
    res: Result<Res<ResBody>, E>,
    written: Result<bool, StoreError>,
    storing: bool,
) -> Result<Res<ResBody>, E> {
    if !storing {
        if let Err(e) = written {
            tracing::warn!(error = %e, "idempotency: release failed; the lease will lapse");
        }
        return res;
    }
    let outcome = match written {
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
    res.map(|res| with(res, outcome))
}

/// One warning per second at most: an outage must not flood the logs.
fn warn_store_failure(cfg: &Config, e: &StoreError) {
    let sec = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if cfg.warned_at.swap(sec, Ordering::Relaxed) != sec {
        tracing::warn!(error = %e, policy = ?cfg.on_failure, "idempotency store failed");
    }
}

fn warn_too_large(cfg: &Config) {
    tracing::warn!(
        max_stored_body = cfg.max_stored_body,
        "idempotency: the response is larger than max_stored_body; \
         sent without storing it, key released (a retry runs again)"
    );
}

fn with<B>(mut res: Response<B>, outcome: Outcome) -> Response<B> {
    res.extensions_mut().insert(outcome);
    res
}
