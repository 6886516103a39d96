//! The responses the rate limiter writes itself: 429 (HTTP or gRPC), 503, 400.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use serde_json::json;

use super::decision::{DecisionSource, RateLimitDecision};
use super::headers::ceil_secs;
use super::layer::Config;
use crate::problem::problem;

/// The problem type of draft-ietf-httpapi-ratelimit-headers.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// `content-type: application/grpc*`: answered the gRPC way.
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a request over its quota, with the rate-limit fields and the
/// decision as an extension.
pub(crate) fn rejection(cfg: &Config, decision: RateLimitDecision, grpc: bool) -> Response<Bytes> {
    let retry = decision.retry_after();
    let detail = match (decision.source, retry) {
        (DecisionSource::CostTooHigh, _) => {
            "this request costs more than the quota can ever admit; retrying will not help"
                .to_owned()
        }
        (_, Some(r)) => format!("quota exceeded; retry in {} s", ceil_secs(r)),
        (_, None) => "quota exceeded".to_owned(),
    };
    let mut res = if grpc {
        let mut res = Response::new(Bytes::new());
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        // RESOURCE_EXHAUSTED; a trailers-only response carries it in the headers.
        h.insert("grpc-status", HeaderValue::from_static("8"));
        if let Ok(msg) = HeaderValue::try_from(percent_encode(&detail)) {
            h.insert("grpc-message", msg);
        }
        res
    } else if let Some(custom) = &cfg.rejection {
        custom.response(&decision)
    } else {
        let mut extra = Vec::new();
        if let Some(r) = retry {
            extra.push(("retry_after", json!(ceil_secs(r))));
        }
        problem(
            StatusCode::TOO_MANY_REQUESTS,
            QUOTA_EXCEEDED,
            "Too Many Requests",
            &detail,
            &extra,
        )
    };
    cfg.headers.apply(res.headers_mut(), &decision, true);
    res.extensions_mut().insert(decision);
    res
}

/// Fail-closed: the store could not decide.
pub(crate) fn unavailable(decision: RateLimitDecision, grpc: bool) -> Response<Bytes> {
    let detail = "the rate limiter's store is unavailable; retry shortly";
    let mut res = if grpc {
        let mut res = Response::new(Bytes::new());
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("14"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("rate%20limiter%20unavailable"),
        );
        res
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "about:blank",
            "Service Unavailable",
            detail,
            &[],
        )
    };
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    res.extensions_mut().insert(decision);
    res
}

/// gRPC's `grpc-message` is percent-encoded (gRPC over HTTP/2 spec).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
