//! What is stored: which outcomes ([`StorePolicy`]) and which headers.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

/// Decides which responses are stored for replay. Implemented by closures
/// `Fn(StatusCode) -> bool`.
///
/// The default ([`default_store_policy`]) stores 2xx, 3xx and 4xx except
/// 408, 409 and 429: outcomes a retry would get again. A response that is
/// not stored releases the key, so that a retry runs the handler again.
pub trait StorePolicy: Send + Sync + 'static {
    /// Whether a response with `status` is stored and replayed.
    fn stores(&self, status: StatusCode) -> bool;
}

impl<F> StorePolicy for F
where
    F: Fn(StatusCode) -> bool + Send + Sync + 'static,
{
    fn stores(&self, status: StatusCode) -> bool {
        self(status)
    }
}

/// 2xx-4xx except 408 Request Timeout, 409 Conflict and 429 Too Many
/// Requests, which a retry may well not get again; 5xx are never stored.
pub fn default_store_policy(status: StatusCode) -> bool {
    (200..500).contains(&status.as_u16())
        && !matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
        )
}

pub(crate) type SharedPolicy = Arc<dyn StorePolicy>;

/// The headers stored with a response by default: those that describe the
/// representation or the created resource.
pub const DEFAULT_STORED_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::CONTENT_ENCODING,
    header::CONTENT_LOCATION,
    header::LOCATION,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::VARY,
    header::LINK,
];

/// Headers never stored, whatever the configuration: cookies belong to one
/// client's session; hop-by-hop headers to one connection; the length is
/// the stored body's.
const NEVER_STORED: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "idempotent-replayed",
];

/// Checks a configured allow-list: `Err` names a header that is never stored.
pub(crate) fn check_allow_list(names: &[HeaderName]) -> Result<(), String> {
    match names.iter().find(|n| NEVER_STORED.contains(&n.as_str())) {
        Some(n) => Err(format!("the header {n} is never stored for replay")),
        None => Ok(()),
    }
}

/// The allow-listed headers of a response, in order, repeated ones kept.
pub(crate) fn stored_headers(allow: &[HeaderName], headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in allow {
        for value in headers.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn default_policy_stores_client_errors_but_not_retryable_ones() {
        for s in [200, 201, 204, 302, 400, 404, 422] {
            assert!(
                default_store_policy(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
        for s in [408, 409, 429, 500, 502, 503] {
            assert!(
                !default_store_policy(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[test]
    fn only_allow_listed_headers_are_kept_and_cookies_never() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("set-cookie", HeaderValue::from_static("s=1"));
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        h.append("link", HeaderValue::from_static("</a>"));
        h.append("link", HeaderValue::from_static("</b>"));
        let kept = stored_headers(DEFAULT_STORED_HEADERS, &h);
        assert_eq!(kept.len(), 3);
        assert!(!kept.contains_key("set-cookie") && !kept.contains_key("x-request-id"));
        assert_eq!(kept.get_all("link").iter().count(), 2);
        assert!(check_allow_list(DEFAULT_STORED_HEADERS).is_ok());
        assert!(check_allow_list(&[header::SET_COOKIE]).is_err());
        assert!(check_allow_list(&[header::TRANSFER_ENCODING]).is_err());
    }
}
