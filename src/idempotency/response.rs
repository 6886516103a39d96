//! The responses the layer writes itself (a problem document, or a gRPC
//! status for gRPC clients), the replay, and the [`IdempotencyOutcome`]
//! extension every response carries.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use serde_json::json;

use super::config::Config;
use super::record::StoredResponse;
use crate::problem::Problem;

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
    /// The store failed; ran the handler unprotected ([`FailurePolicy::Open`](super::FailurePolicy::Open)).
    StoreBypassed,
}

/// What the layer answers itself instead of running the handler (or
/// instead of its failed response), given to a [`RejectionResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// 400: the key, the principal or the request body cannot be used;
    /// `detail` says why.
    #[non_exhaustive]
    BadRequest {
        /// Why, for the client.
        detail: String,
    },
    /// 413: the request body is larger than `max_body`.
    #[non_exhaustive]
    TooLarge {
        /// The layer's cap.
        max_body: usize,
    },
    /// 409: the first request with this key is still running.
    #[non_exhaustive]
    InProgress {
        /// How long its lease has left (an upper bound of the wait).
        lease_left: Duration,
    },
    /// 422: the key was used for a different request.
    Mismatch,
    /// 503: the store could not decide (fail-closed).
    Unavailable,
    /// 500: the handler's response body failed before it was complete;
    /// nothing was sent yet and the key was released.
    ResponseFailed,
}

/// Builds the answers the layer writes itself, in place of the default
/// problem+json documents. Implemented by closures
/// `Fn(&Rejection) -> Response<Bytes>`.
///
/// The layer adds `Retry-After: 1` to a 409 or 503 answer that has none,
/// and the [`IdempotencyOutcome`] extension. gRPC requests always get the
/// default gRPC status.
///
/// ```
/// use bytes::Bytes;
/// use http::Response;
/// use tower_redis_layers::idempotency::{IdempotencyLayer, Rejection};
/// use tower_redis_layers::MemoryStore;
///
/// # fn main() -> Result<(), tower_redis_layers::ConfigError> {
/// let layer = IdempotencyLayer::builder(MemoryStore::new())
///     .rejection(|r: &Rejection| {
///         let body = format!("{{\"error\":{:?}}}", r.detail());
///         let mut res = Response::new(Bytes::from(body));
///         *res.status_mut() = r.status();
///         res.headers_mut()
///             .insert("content-type", "application/json".parse().unwrap());
///         res
///     })
///     .build()?;
/// # drop(layer);
/// # Ok(()) }
/// ```
pub trait RejectionResponse: Send + Sync + 'static {
    /// The answer to `rejection`.
    fn response(&self, rejection: &Rejection) -> Response<Bytes>;
}

impl<F> RejectionResponse for F
where
    F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
{
    fn response(&self, rejection: &Rejection) -> Response<Bytes> {
        self(rejection)
    }
}

impl Rejection {
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
        }
    }

    /// The status of the default answer (gRPC clients get its gRPC code).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InProgress { .. } => StatusCode::CONFLICT,
            Self::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ResponseFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the default answer tells the client.
    pub fn detail(&self) -> String {
        match self {
            Self::BadRequest { detail } => detail.clone(),
            Self::TooLarge { max_body } => format!(
                "the request body is larger than {max_body} bytes, the most this endpoint \
                 reads to check an Idempotency-Key"
            ),
            Self::InProgress { .. } => "a request with this Idempotency-Key is still being \
                 processed; retry shortly"
                .to_owned(),
            Self::Mismatch => "this Idempotency-Key was used for a different request (method, \
                 target, content type or body differ); use a new key for a new request"
                .to_owned(),
            Self::Unavailable => "the idempotency store is unavailable; retry shortly with the \
                 same Idempotency-Key"
                .to_owned(),
            Self::ResponseFailed => {
                "the response could not be produced; retry with the same Idempotency-Key".to_owned()
            }
        }
    }

    /// The seconds a client should wait before retrying, if it should.
    /// 409 says 1 s: handlers mostly finish well within their lease, which
    /// is only an upper bound.
    fn retry_after(&self) -> Option<u32> {
        matches!(self, Self::InProgress { .. } | Self::Unavailable).then_some(1)
    }

    fn outcome(&self) -> IdempotencyOutcome {
        match self {
            Self::BadRequest { .. } | Self::TooLarge { .. } => IdempotencyOutcome::Invalid,
            Self::InProgress { .. } => IdempotencyOutcome::InProgress,
            Self::Mismatch => IdempotencyOutcome::Mismatch,
            Self::Unavailable => IdempotencyOutcome::StoreUnavailable,
            Self::ResponseFailed => IdempotencyOutcome::NotStored,
        }
    }

    /// The default answer: problem+json, or a gRPC status.
    fn default_response(&self, grpc: bool) -> Response<Bytes> {
        let status = self.status();
        let title = match status {
            // RFC 9110's names, newer than the http crate's.
            StatusCode::PAYLOAD_TOO_LARGE => "Content Too Large",
            StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable Content",
            s => s.canonical_reason().unwrap_or("Error"),
        };
        let extra = match self {
            Self::TooLarge { max_body } => vec![("max_body", json!(max_body))],
            Self::InProgress { lease_left } => {
                vec![("lease_ms", json!(lease_left.as_millis() as u64))]
            }
            _ => Vec::new(),
        };
        let detail = self.detail();
        let problem = Problem {
            status,
            type_uri: "about:blank",
            title,
            detail: &detail,
        };
        problem.respond(grpc, &extra)
    }
}

/// The answer to a rejected request: `Retry-After` where a retry will
/// work, and the outcome as an extension.
pub(crate) fn reject(cfg: &Config, grpc: bool, rejection: Rejection) -> Response<Bytes> {
    let mut res = match &cfg.rejection {
        Some(custom) if !grpc => custom.response(&rejection),
        _ => rejection.default_response(grpc),
    };
    if let Some(secs) = rejection.retry_after() {
        res.headers_mut()
            .entry(RETRY_AFTER)
            .or_insert_with(|| HeaderValue::from(secs));
    }
    res.extensions_mut().insert(rejection.outcome());
    res
}

/// The stored response, with `Idempotent-Replayed: true`.
pub(crate) fn replay(stored: StoredResponse) -> Response<Bytes> {
    let mut res = Response::new(stored.body);
    *res.status_mut() = stored.status;
    *res.headers_mut() = stored.headers;
    res.headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    res.extensions_mut().insert(IdempotencyOutcome::Replayed);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::config::test_config;

    #[test]
    fn every_rejection_is_a_problem_or_a_grpc_status() {
        let cfg = test_config(|b| b);
        for (r, status, grpc_code) in [
            (Rejection::bad_request("bad key"), 400, "3"),
            (Rejection::TooLarge { max_body: 16 }, 413, "3"),
            (
                Rejection::InProgress {
                    lease_left: Duration::from_millis(1500),
                },
                409,
                "10",
            ),
            (Rejection::Mismatch, 422, "9"),
            (Rejection::Unavailable, 503, "14"),
            (Rejection::ResponseFailed, 500, "13"),
        ] {
            let http = reject(&cfg, false, r.clone());
            assert_eq!(http.status().as_u16(), status);
            assert_eq!(http.headers()["content-type"], "application/problem+json");
            let doc: serde_json::Value = serde_json::from_slice(http.body()).unwrap();
            assert_eq!(doc["status"], status);
            assert_eq!(doc["detail"], r.detail());
            let grpc = reject(&cfg, true, r.clone());
            assert_eq!(grpc.status(), StatusCode::OK);
            assert_eq!(grpc.headers()["grpc-status"], grpc_code, "{r:?}");
            for res in [&http, &grpc] {
                assert_eq!(
                    res.extensions().get::<IdempotencyOutcome>(),
                    Some(&r.outcome())
                );
                assert_eq!(
                    res.headers().contains_key(RETRY_AFTER),
                    matches!(status, 409 | 503)
                );
            }
        }
    }

    #[test]
    fn a_custom_rejection_answers_http_clients_and_grpc_gets_its_status() {
        let cfg = test_config(|b| {
            b.rejection(|r: &Rejection| {
                let mut res = Response::new(Bytes::from(format!("custom {}", r.status())));
                *res.status_mut() = r.status();
                res
            })
        });
        let res = reject(&cfg, false, Rejection::Mismatch);
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(res.body(), "custom 422 Unprocessable Entity");
        let busy = Rejection::InProgress {
            lease_left: Duration::from_secs(2),
        };
        let res = reject(&cfg, false, busy.clone());
        assert_eq!(res.headers()[RETRY_AFTER], "1", "added when missing");
        assert_eq!(
            res.extensions().get::<IdempotencyOutcome>(),
            Some(&IdempotencyOutcome::InProgress)
        );
        let grpc = reject(&cfg, true, busy);
        assert_eq!(grpc.headers()["grpc-status"], "10");
    }
}
