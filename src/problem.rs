//! The responses every layer writes itself: `application/problem+json`
//! (RFC 9457) for HTTP clients, a gRPC status for gRPC clients
//! (`content-type: application/grpc*`), which cannot read a problem body.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

pub(crate) const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// `content-type: application/grpc*`: answered the gRPC way.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A rejection: answered as problem+json, or as a gRPC status when the
/// request was gRPC.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Problem<'a> {
    pub(crate) status: StatusCode,
    pub(crate) type_uri: &'a str,
    pub(crate) title: &'a str,
    pub(crate) detail: &'a str,
}

impl<'a> Problem<'a> {
    /// A problem of type `about:blank`, titled by its status.
    pub(crate) fn plain(status: StatusCode, detail: &'a str) -> Self {
        Self {
            status,
            type_uri: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            detail,
        }
    }

    /// The response for a client that speaks gRPC when `grpc`, else problem+json.
    pub(crate) fn respond(
        &self,
        grpc: bool,
        extra: &[(&str, serde_json::Value)],
    ) -> Response<Bytes> {
        if grpc {
            self.grpc()
        } else {
            problem(self.status, self.type_uri, self.title, self.detail, extra)
        }
    }

    /// A trailers-only gRPC response: HTTP 200, the status in the headers.
    pub(crate) fn grpc(&self) -> Response<Bytes> {
        let mut res = Response::new(Bytes::new());
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(grpc_code(self.status)));
        if let Ok(msg) = HeaderValue::try_from(percent_encode(self.detail)) {
            h.insert("grpc-message", msg);
        }
        res
    }
}

/// The gRPC status code that says what an HTTP status says here.
pub(crate) fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 | 413 => 3, // INVALID_ARGUMENT
        409 => 10,      // ABORTED: retry the whole operation
        422 => 9,       // FAILED_PRECONDITION
        429 => 8,       // RESOURCE_EXHAUSTED
        503 => 14,      // UNAVAILABLE
        _ => 13,        // INTERNAL
    }
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
pub(crate) fn bad_request(grpc: bool, detail: &str) -> Response<Bytes> {
    Problem::plain(StatusCode::BAD_REQUEST, detail).respond(grpc, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_clients_get_a_grpc_status_and_others_problem_json() {
        let p = Problem::plain(StatusCode::CONFLICT, "in progress: 50% done");
        let g = p.respond(true, &[]);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "10");
        assert_eq!(g.headers()["grpc-message"], "in progress: 50%25 done");
        let h = p.respond(false, &[]);
        assert_eq!(h.status(), StatusCode::CONFLICT);
        assert_eq!(h.headers()[CONTENT_TYPE], PROBLEM_JSON);
        let doc: serde_json::Value = serde_json::from_slice(h.body()).unwrap();
        assert_eq!(doc["title"], "Conflict");
        assert_eq!(doc["status"], 409);
    }
}
