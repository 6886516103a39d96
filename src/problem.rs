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
    // Written member by member: no intermediate map on the rejection path.
    let mut body = Vec::with_capacity(128 + detail.len());
    let members: [(&str, serde_json::Value); 4] = [
        ("type", type_uri.into()),
        ("title", title.into()),
        ("status", status.as_u16().into()),
        ("detail", detail.into()),
    ];
    for (name, value) in members.iter().chain(extra) {
        body.push(if body.is_empty() { b'{' } else { b',' });
        let _ = serde_json::to_writer(&mut body, name);
        body.push(b':');
        let _ = serde_json::to_writer(&mut body, value);
    }
    body.push(b'}');
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
