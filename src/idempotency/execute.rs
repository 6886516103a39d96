//! [`Execution`]: a first execution, once its key is reserved: run the
//! handler (renewing the lease) → read its response → store it, or release
//! the key → the response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{response, Response};
use http_body::Body;
use pin_project_lite::pin_project;

use super::capture::Capture;
use super::config::Config;
use super::lease::{Completion, Lease};
use super::policy::stored_headers;
use super::record::StoredResponse;
use super::response::{reject, IdempotencyOutcome as Outcome, Rejection};
use super::steps::{after_capture, after_complete, after_release, after_run};
use super::steps::{OnCapture, OnResponse};
use super::store::Written;
use crate::body::ResponseBody;

type Res<B> = Response<ResponseBody<B>>;

pin_project! {
    /// The handler's future `F` and what follows it, up to the response.
    pub(super) struct Execution<F, B, E> {
        #[pin]
        state: State<F, B, E>,
        config: Arc<Config>,
        grpc: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Running { #[pin] fut: F, lease: Option<Lease> },
        Capturing {
            // Boxed: over the cap it is handed on, after what was read.
            body: Option<Pin<Box<B>>>,
            parts: Option<response::Parts>,
            capture: Capture,
            lease: Option<Lease>,
        },
        // Storing the response.
        Storing { completion: Completion<Written>, res: Option<Res<B>> },
        // Releasing the key of a response (or error) that is not stored.
        Releasing { completion: Completion<bool>, res: Option<Result<Res<B>, E>> },
    }
}

const DONE: &str = "Execution polled after completion";

impl<F, B, E> Execution<F, B, E> {
    pub(super) fn new(fut: F, lease: Lease, config: Arc<Config>, grpc: bool) -> Self {
        Self {
            state: State::Running {
                fut,
                lease: Some(lease),
            },
            config,
            grpc,
        }
    }
}

impl<F, B, E> Future for Execution<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Res<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Running { fut, lease } => {
                    lease.as_mut().expect(DONE).poll_renew(cx);
                    let result = ready!(fut.poll(cx));
                    ran(result, lease.take().expect(DONE), this.config)
                }
                StateProj::Capturing {
                    body,
                    parts,
                    capture,
                    lease,
                } => {
                    lease.as_mut().expect(DONE).poll_renew(cx);
                    let ended = ready!(capture.poll(body.as_mut().expect(DONE).as_mut(), cx));
                    let on = after_capture(this.config, &ended, capture.has_trailers());
                    let (Some(body), Some(parts), Some(lease)) =
                        (body.take(), parts.take(), lease.take())
                    else {
                        panic!("{DONE}");
                    };
                    let capture = std::mem::replace(capture, Capture::new(0));
                    captured(on, body, parts, capture, lease, this.config, *this.grpc)
                }
                StateProj::Storing { completion, res } => {
                    let written = ready!(Pin::new(completion).poll(cx));
                    let outcome = after_complete(this.config, written);
                    return Poll::Ready(Ok(with(res.take().expect(DONE), outcome)));
                }
                StateProj::Releasing { completion, res } => {
                    let released = ready!(Pin::new(completion).poll(cx));
                    after_release(this.config, released);
                    return Poll::Ready(res.take().expect(DONE));
                }
            };
            this.state.set(next);
        }
    }
}

/// The handler answered: read its body to store it, or release the key.
fn ran<F, B, E>(result: Result<Response<B>, E>, lease: Lease, cfg: &Config) -> State<F, B, E>
where
    B: Body,
{
    let res = match result {
        Ok(res) => res,
        // A handler error releases the key: a retry runs again.
        Err(e) => return releasing(lease, Err(e)),
    };
    match after_run(cfg, res.status(), res.body().size_hint().lower()) {
        OnResponse::Release => {
            let res = with(res.map(ResponseBody::inner), Outcome::NotStored);
            releasing(lease, Ok(res))
        }
        OnResponse::Capture => {
            let (parts, body) = res.into_parts();
            State::Capturing {
                body: Some(Box::pin(body)),
                parts: Some(parts),
                capture: Capture::new(cfg.max_stored_body),
                lease: Some(lease),
            }
        }
    }
}

/// The response body was read: store it, or send it on and release the key.
fn captured<F, B, E>(
    on: OnCapture,
    body: Pin<Box<B>>,
    parts: response::Parts,
    mut capture: Capture,
    lease: Lease,
    cfg: &Config,
    grpc: bool,
) -> State<F, B, E> {
    match on {
        OnCapture::Failed => {
            let res = reject(cfg, grpc, Rejection::ResponseFailed);
            releasing(lease, Ok(res.map(ResponseBody::full)))
        }
        OnCapture::SendOn => {
            let body = ResponseBody::prefixed(capture.into_frames(), body);
            let res = with(Response::from_parts(parts, body), Outcome::NotStored);
            releasing(lease, Ok(res))
        }
        OnCapture::Store => {
            let (data, _) = capture.take();
            let record = StoredResponse {
                status: parts.status,
                headers: stored_headers(&cfg.stored_headers, &parts.headers),
                body: data.clone(),
            }
            .encode();
            let res = Response::from_parts(parts, ResponseBody::full(data));
            State::Storing {
                completion: lease.complete(record),
                res: Some(res),
            }
        }
    }
}

/// Releases the key, then answers `res`.
fn releasing<F, B, E>(lease: Lease, res: Result<Res<B>, E>) -> State<F, B, E> {
    State::Releasing {
        completion: lease.release(),
        res: Some(res),
    }
}

pub(super) fn with<B>(mut res: Response<B>, outcome: Outcome) -> Response<B> {
    res.extensions_mut().insert(outcome);
    res
}
