//! [`Idempotency`]: the middleware service.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::RequestBody;
use super::fingerprint::RecordKey;
use super::future::{Ctx, ResponseFuture};
use super::key;
use super::layer::Config;
use super::response::{invalid, too_large};
use crate::body::ResponseBody;
use crate::key::{KeyError, RequestView};

/// Runs each request with an `Idempotency-Key` once and replays its
/// response to retries; built by [`IdempotencyLayer`](super::IdempotencyLayer).
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
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let cfg = &self.config;
        if !cfg.methods.contains(req.method()) {
            return ResponseFuture::skip(self.inner.call(req.map(RequestBody::streaming)));
        }
        let idem_key = match key::parse(req.headers()) {
            Ok(Some(k)) => k,
            Ok(None) if cfg.required => {
                return ResponseFuture::respond(invalid(
                    "this endpoint requires an Idempotency-Key header",
                ))
            }
            Ok(None) => {
                return ResponseFuture::skip(self.inner.call(req.map(RequestBody::streaming)))
            }
            Err(why) => return ResponseFuture::respond(invalid(&why)),
        };
        let principal = match cfg.principal.extract(&RequestView::new(&req)) {
            Ok(p) => p,
            Err(KeyError::Invalid(why)) => {
                return ResponseFuture::respond(invalid(&format!("invalid principal: {why}")))
            }
            Err(KeyError::Missing) => {
                return ResponseFuture::respond(invalid(
                    "the request names no principal to scope its Idempotency-Key",
                ))
            }
        };
        if req.body().size_hint().lower() > cfg.max_body as u64 {
            return ResponseFuture::respond(too_large(cfg.max_body));
        }
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
            },
        )
    }
}
