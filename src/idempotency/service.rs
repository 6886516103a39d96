//! [`Idempotency`]: the middleware service.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::admit::{admit, Admit};
use super::body::RequestBody;
use super::config::Config;
use super::fingerprint::RecordKey;
use super::future::{Ctx, ResponseFuture};
use super::response::reject;
use crate::body::ResponseBody;
use crate::problem::is_grpc;

/// Runs each request with an `Idempotency-Key` once and replays its
/// response to retries; built by [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// The inner service's future and error, and its response body, must be
/// `Send + 'static`: a first execution runs to the end in a task of its
/// own, even if its client hangs up ([`HangUp`](super::HangUp)). axum,
/// tonic and hyper services are.
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Idempotency<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let cfg = &self.config;
        let (idem_key, principal) = match admit(cfg, &req) {
            Admit::Skip => {
                return ResponseFuture::skip(
                    self.inner.call(req.map(RequestBody::streaming)),
                    cfg.clone(),
                )
            }
            Admit::Reject(r) => {
                return ResponseFuture::respond(reject(cfg, is_grpc(req.headers()), r), cfg.clone())
            }
            Admit::Check(k, p) => (k, p),
        };
        let grpc = is_grpc(req.headers());
        let (parts, body) = req.into_parts();
        let key = RecordKey::new(&cfg.scope, &principal, &parts, &idem_key);
        // The readied service goes into the future; a fresh clone stays here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::read(
            body,
            Ctx {
                parts,
                inner,
                config: cfg.clone(),
                key,
                grpc,
            },
        )
    }
}
