//! The responses the rate limiter writes itself: 429 (HTTP or gRPC), 503, 400.

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use serde_json::json;

use super::config::Config;
use super::decision::{DecisionSource, RateLimitDecision};
use super::headers::ceil_secs;
use super::plan::PlanSet;
use crate::problem::Problem;

/// The problem type of draft-ietf-httpapi-ratelimit-headers.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The answer to a request over its quota, with the rate-limit fields and the
/// decision as an extension.
pub(crate) fn rejection(
    cfg: &Config,
    plan: &PlanSet,
    decision: RateLimitDecision,
    grpc: bool,
) -> Response<Bytes> {
    let retry = decision.retry_after();
    let detail = match (decision.source, retry) {
        (DecisionSource::CostTooHigh, _) => {
            "this request costs more than the quota can ever admit; retrying will not help"
                .to_owned()
        }
        (_, Some(r)) => format!("quota exceeded; retry in {} s", ceil_secs(r)),
        (_, None) => "quota exceeded".to_owned(),
    };
    let quota = Problem {
        status: StatusCode::TOO_MANY_REQUESTS,
        type_uri: QUOTA_EXCEEDED,
        title: "Too Many Requests",
        detail: &detail,
    };
    let mut res = match &cfg.rejection {
        Some(custom) if !grpc => custom.response(&decision),
        _ => {
            let mut extra = Vec::new();
            if let Some(r) = retry {
                extra.push(("retry_after", json!(ceil_secs(r))));
            }
            quota.respond(grpc, &extra)
        }
    };
    plan.headers.apply(res.headers_mut(), &decision, true);
    res.extensions_mut().insert(decision);
    res
}

/// Fail-closed: the store could not decide.
pub(crate) fn unavailable(decision: RateLimitDecision, grpc: bool) -> Response<Bytes> {
    let detail = "the rate limiter's store is unavailable; retry shortly";
    let mut res = Problem::plain(StatusCode::SERVICE_UNAVAILABLE, detail).respond(grpc, &[]);
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    res.extensions_mut().insert(decision);
    res
}
