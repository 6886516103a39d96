//! The responses the layer writes itself (problem+json), the replay, and
//! the [`IdempotencyOutcome`] extension every response carries.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use serde_json::json;

use super::record::StoredResponse;
use crate::problem::problem;

/// `Idempotent-Replayed: true` marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What the layer did with a request: a response extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdempotencyOutcome {
    /// Not covered: another method, or no key (and none required).
    Skipped,
    /// Ran the handler; its response was stored for replay.
    Stored,
    /// Ran the handler; its response was not stored (store policy, size,
    /// trailers, lost lease or failed write) and the key was released.
    NotStored,
    /// Replayed a stored response.
    Replayed,
    /// 409: another request with this key is in progress.
    InProgress,
    /// 422: the key was used for a different request.
    Mismatch,
    /// 400 or 413: the key, principal or body cannot be used.
    Invalid,
    /// 503: the store failed (fail-closed).
    StoreUnavailable,
    /// The store failed; ran the handler unprotected (pass-through).
    StoreBypassed,
}

fn with_outcome(mut res: Response<Bytes>, outcome: IdempotencyOutcome) -> Response<Bytes> {
    res.extensions_mut().insert(outcome);
    res
}

fn retry_after(res: &mut Response<Bytes>, secs: u64) {
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
}

/// 400: a key, principal or body the layer cannot use.
pub(crate) fn invalid(detail: &str) -> Response<Bytes> {
    with_outcome(
        crate::problem::bad_request(false, detail),
        IdempotencyOutcome::Invalid,
    )
}

/// 413: the body is over the fingerprinting cap.
pub(crate) fn too_large(cap: usize) -> Response<Bytes> {
    let detail = format!(
        "the request body is larger than {cap} bytes, the most this endpoint reads \
         to check an Idempotency-Key"
    );
    let res = problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "about:blank",
        "Content Too Large",
        &detail,
        &[("max_body", json!(cap))],
    );
    with_outcome(res, IdempotencyOutcome::Invalid)
}

/// 409: the first request with this key is still running. Retry in 1 s:
/// handlers mostly finish well within their lease, which is only an upper bound.
pub(crate) fn in_progress(lease_left: Duration) -> Response<Bytes> {
    let mut res = problem(
        StatusCode::CONFLICT,
        "about:blank",
        "Conflict",
        "a request with this Idempotency-Key is still being processed; retry shortly",
        &[("lease_ms", json!(lease_left.as_millis() as u64))],
    );
    retry_after(&mut res, 1);
    with_outcome(res, IdempotencyOutcome::InProgress)
}

/// 422: the key belongs to a different request.
pub(crate) fn mismatch() -> Response<Bytes> {
    let res = problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "about:blank",
        "Unprocessable Content",
        "this Idempotency-Key was used for a different request (method, target, \
         content type or body differ); use a new key for a new request",
        &[],
    );
    with_outcome(res, IdempotencyOutcome::Mismatch)
}

/// 503: the store could not decide (fail-closed).
pub(crate) fn unavailable() -> Response<Bytes> {
    let mut res = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "about:blank",
        "Service Unavailable",
        "the idempotency store is unavailable; retry shortly with the same Idempotency-Key",
        &[],
    );
    retry_after(&mut res, 1);
    with_outcome(res, IdempotencyOutcome::StoreUnavailable)
}

/// 500: the handler's response body failed before it was complete. Nothing
/// was sent yet (the layer reads the body before answering); the key was released.
pub(crate) fn body_failed() -> Response<Bytes> {
    let res = problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "about:blank",
        "Internal Server Error",
        "the response could not be produced; retry with the same Idempotency-Key",
        &[],
    );
    with_outcome(res, IdempotencyOutcome::NotStored)
}

/// The stored response, with `Idempotent-Replayed: true`.
pub(crate) fn replay(stored: StoredResponse) -> Response<Bytes> {
    let mut res = Response::new(stored.body);
    *res.status_mut() = stored.status;
    *res.headers_mut() = stored.headers;
    res.headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    with_outcome(res, IdempotencyOutcome::Replayed)
}
