//! `application/problem+json` responses (RFC 9457).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

pub(crate) const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// A problem document: `type`, `title`, `status`, `detail`, plus members.
pub(crate) fn problem(
    status: StatusCode,
    type_uri: &str,
    title: &str,
    detail: &str,
    extra: &[(&str, serde_json::Value)],
) -> Response<Bytes> {
    let mut doc = serde_json::Map::new();
    doc.insert("type".into(), type_uri.into());
    doc.insert("title".into(), title.into());
    doc.insert("status".into(), status.as_u16().into());
    doc.insert("detail".into(), detail.into());
    for (k, v) in extra {
        doc.insert((*k).into(), v.clone());
    }
    let body = serde_json::to_vec(&doc).unwrap_or_default();
    let mut res = Response::new(Bytes::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    res
}

/// 400 for a request this crate cannot key or parse.
pub(crate) fn bad_request(detail: &str) -> Response<Bytes> {
    problem(
        StatusCode::BAD_REQUEST,
        "about:blank",
        "Bad Request",
        detail,
        &[],
    )
}
