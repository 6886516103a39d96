//! Partial content from stored responses (RFC 9110 §14, RFC 9111 §3.4): a
//! `Range` request answered from a stored complete `200` gets `206` with
//! the byte ranges it asks for (suffix ranges too; several as
//! `multipart/byteranges`), or `416` when none is satisfiable. A `Range`
//! that is not `bytes`, is invalid or asks for too many ranges is ignored
//! (the whole response), and so is one whose `If-Range` does not match
//! (§13.1.5). An incomplete entry (a stored `206`, see
//! [`partial`](super::partial)) answers only ranges wholly within its parts.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::conditional::Tag;
use super::date;
use super::entry::Entry;
use super::partial::Parts;

/// More ranges than this in one request: the whole response instead.
const MAX_RANGES: usize = 32;

/// The request's `Range` and `If-Range`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ranges {
    range: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
}

/// Inclusive byte ranges of a `Range` value for `len` bytes: `None` when
/// the field is to be ignored, empty when none is satisfiable (§14.1.1).
fn parse(v: &[u8], len: u64) -> Option<Vec<(u64, u64)>> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (unit, set) = v.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut out = Vec::new();
    let mut specs = 0;
    for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        specs += 1;
        if specs > MAX_RANGES {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let num = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        match (first.is_empty(), last.is_empty()) {
            // `-n`: the last n bytes.
            (true, false) => {
                let n = num(last)?;
                if n > 0 && len > 0 {
                    out.push((len.saturating_sub(n), len - 1));
                }
            }
            (false, _) => {
                let a = num(first)?;
                let b = if last.is_empty() {
                    u64::MAX
                } else {
                    num(last)?
                };
                if b < a {
                    return None;
                }
                if a < len {
                    out.push((a, b.min(len - 1)));
                }
            }
            (true, true) => return None,
        }
    }
    (specs > 0).then_some(out)
}

impl Ranges {
    /// Whether the request has a `Range` field.
    pub(crate) fn asked(&self) -> bool {
        self.range.is_some()
    }

    pub(crate) fn of(h: &HeaderMap) -> Self {
        Self {
            range: h.get(http::header::RANGE).cloned(),
            if_range: h.get(http::header::IF_RANGE).cloned(),
        }
    }

    /// `If-Range` (§13.1.5): an entity-tag matches the stored one by the
    /// strong comparison, a date matches `Last-Modified` exactly.
    fn if_range_holds(&self, stored: &HeaderMap) -> bool {
        let Some(v) = &self.if_range else {
            return true;
        };
        if let Some(tag) = Tag::parse(v.as_bytes()) {
            let stored = stored.get(ETAG).and_then(|e| Tag::parse(e.as_bytes()));
            return stored.is_some_and(|s| s.strong_eq(&tag));
        }
        let when = date::parse(v.as_bytes(), 0);
        when.is_some() && when == date::of(stored.get(LAST_MODIFIED), 0)
    }

    /// The partial answer to give from a stored `status` response with
    /// `headers` (changed to match) and `body`: a complete `200`, or an
    /// incomplete `206` entry (answered only when every range is wholly
    /// within its parts); `None`: the whole response.
    pub(crate) fn apply(
        &self,
        status: StatusCode,
        headers: &mut HeaderMap,
        body: &Bytes,
    ) -> Option<(StatusCode, Bytes)> {
        let (parts, ranges) = self.answerable(status, headers, body)?;
        let len = parts.len;
        headers.remove(CONTENT_RANGE);
        let (status, out) = match ranges.as_slice() {
            [] => {
                let unsatisfied = HeaderValue::try_from(format!("bytes */{len}")).ok()?;
                headers.insert(CONTENT_RANGE, unsatisfied);
                (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
            }
            [(a, b)] => {
                let content_range = HeaderValue::try_from(format!("bytes {a}-{b}/{len}")).ok()?;
                headers.insert(CONTENT_RANGE, content_range);
                (StatusCode::PARTIAL_CONTENT, parts.slice(*a, *b)?)
            }
            many => {
                let boundary = format!("{:016x}", super::shared::token());
                let part_type = headers.remove(CONTENT_TYPE);
                let mut out = BytesMut::new();
                for (a, b) in many {
                    out.put_slice(format!("\r\n--{boundary}\r\n").as_bytes());
                    if let Some(t) = &part_type {
                        out.put_slice(b"Content-Type: ");
                        out.put_slice(t.as_bytes());
                        out.put_slice(b"\r\n");
                    }
                    out.put_slice(format!("Content-Range: bytes {a}-{b}/{len}\r\n\r\n").as_bytes());
                    out.put_slice(&parts.slice(*a, *b)?);
                }
                out.put_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                let multipart = format!("multipart/byteranges; boundary={boundary}");
                headers.insert(CONTENT_TYPE, HeaderValue::try_from(multipart).ok()?);
                (StatusCode::PARTIAL_CONTENT, out.freeze())
            }
        };
        headers.insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
        Some((status, out))
    }

    /// The stored bytes and the ranges to answer from them; for an
    /// incomplete entry only when every range is satisfiable and within
    /// one of its parts (RFC 9111 §3.3).
    fn answerable(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<(Parts, Vec<(u64, u64)>)> {
        let range = self.range.as_ref()?;
        let parts = match status {
            StatusCode::OK => Parts::complete(body),
            StatusCode::PARTIAL_CONTENT => Parts::of(206, headers, body)?,
            _ => return None,
        };
        if !self.if_range_holds(headers) {
            return None;
        }
        let ranges = parse(range.as_bytes(), parts.len)?;
        let within = |(a, b): &(u64, u64)| parts.slice(*a, *b).is_some();
        let whole = parts.is_complete() || (!ranges.is_empty() && ranges.iter().all(within));
        whole.then_some((parts, ranges))
    }

    /// Whether a stored response can answer this request: a complete one
    /// always, an incomplete one only a `Range` wholly within its parts.
    pub(crate) fn served_by(&self, e: &Entry, head: bool) -> bool {
        e.meta.status != 206
            || (!head
                && self
                    .answerable(StatusCode::PARTIAL_CONTENT, &e.headers, &e.body)
                    .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_14_1_1_byte_ranges() {
        let p = |v: &str| parse(v.as_bytes(), 10);
        assert_eq!(p("bytes=0-4"), Some(vec![(0, 4)]));
        assert_eq!(p("bytes=5-"), Some(vec![(5, 9)]));
        assert_eq!(p("bytes=-3"), Some(vec![(7, 9)]));
        assert_eq!(p("bytes=-30"), Some(vec![(0, 9)]));
        assert_eq!(p("bytes=8-20"), Some(vec![(8, 9)]));
        assert_eq!(p("bytes=0-1, 4-5"), Some(vec![(0, 1), (4, 5)]));
        assert_eq!(p("bytes=10-"), Some(vec![]), "unsatisfiable");
        assert_eq!(p("bytes=-0"), Some(vec![]), "unsatisfiable");
        for ignored in [
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=",
            "0-1",
        ] {
            assert_eq!(p(ignored), None, "{ignored}");
        }
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(p(&many), None);
    }

    fn ranges(range: &'static str, if_range: Option<&'static str>) -> Ranges {
        Ranges {
            range: Some(HeaderValue::from_static(range)),
            if_range: if_range.map(HeaderValue::from_static),
        }
    }

    #[test]
    fn rfc9110_14_2_partial_answers() {
        let body = Bytes::from_static(b"0123456789");
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("\"v1\""));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let (s, b) = ranges("bytes=2-4", None)
            .apply(StatusCode::OK, &mut h, &body)
            .unwrap();
        assert_eq!((s, &b[..]), (StatusCode::PARTIAL_CONTENT, &b"234"[..]));
        assert_eq!(h[CONTENT_RANGE], "bytes 2-4/10");
        let (s, _) = ranges("bytes=20-", None)
            .apply(StatusCode::OK, &mut h, &body)
            .unwrap();
        assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(h[CONTENT_RANGE], "bytes */10");
        let (s, b) = ranges("bytes=0-0,-1", None)
            .apply(StatusCode::OK, &mut h, &body)
            .unwrap();
        assert_eq!(s, StatusCode::PARTIAL_CONTENT);
        let ct = h[CONTENT_TYPE].to_str().unwrap().to_owned();
        let boundary = ct.strip_prefix("multipart/byteranges; boundary=").unwrap();
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(text.contains("Content-Type: text/plain\r\nContent-Range: bytes 0-0/10\r\n\r\n0"));
        assert!(text.contains("Content-Range: bytes 9-9/10\r\n\r\n9"));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
        // If-Range: a strong match applies the range, anything else does not.
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("\"v1\""));
        let apply = |r: Ranges, h: &mut HeaderMap| r.apply(StatusCode::OK, h, &body).map(|x| x.0);
        assert_eq!(
            apply(ranges("bytes=0-1", Some("\"v1\"")), &mut h),
            Some(StatusCode::PARTIAL_CONTENT)
        );
        assert_eq!(apply(ranges("bytes=0-1", Some("\"v2\"")), &mut h), None);
        assert_eq!(apply(ranges("bytes=0-1", Some("W/\"v1\"")), &mut h), None);
        assert_eq!(
            ranges("bytes=0-1", None).apply(StatusCode::NOT_FOUND, &mut h, &body),
            None
        );
    }
}
