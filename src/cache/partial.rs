//! Partial content in the store (RFC 9111 §3.3, §3.4): a `206` with one
//! byte range of a representation of known length is stored as an
//! incomplete entry; a later `206` with the same strong validator is
//! combined with it, and once the parts cover the whole representation the
//! entry is a complete `200`. An incomplete entry answers only `Range`
//! requests wholly within its parts.
//!
//! An incomplete entry is status 206 with one `Content-Range` field per
//! part (sorted, disjoint) and the parts' bytes concatenated in that
//! order as its body: the entry layout itself is unchanged.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::conditional::Tag;
use super::entry::Entry;
use super::response::merge_fields;

/// Most parts an incomplete entry keeps; past it, the newest part alone.
const MAX_PARTS: usize = 16;

/// `bytes first-last/complete` (RFC 9110 §14.4) with a known complete
/// length and `first <= last < complete`; `None` for anything else
/// (`*` lengths, other units, unsatisfied ranges).
pub(crate) fn content_range(v: &[u8]) -> Option<(u64, u64, u64)> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (unit, rest) = v.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, complete) = rest.trim_start().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let num = |s: &str| {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (first, last, complete) = (num(first)?, num(last)?, num(complete)?);
    (first <= last && last < complete).then_some((first, last, complete))
}

/// A representation's bytes as the cache holds them: all of them, or parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parts {
    /// The complete length.
    pub(crate) len: u64,
    /// `(first byte, bytes)`, sorted, disjoint and not adjacent.
    pub(crate) parts: Vec<(u64, Bytes)>,
}

impl Parts {
    /// A complete body.
    pub(crate) fn complete(body: &Bytes) -> Self {
        Self {
            len: body.len() as u64,
            parts: vec![(0, body.clone())],
        }
    }

    /// The parts a stored response of `status` holds: a complete body, or
    /// for a 206 the parts its `Content-Range` fields name in `body`.
    /// `None` when they do not describe it (a corrupt entry).
    pub(crate) fn of(status: u16, headers: &HeaderMap, body: &Bytes) -> Option<Self> {
        if status != 206 {
            return Some(Self::complete(body));
        }
        let mut len = None;
        let mut at = 0usize;
        let mut parts: Vec<(u64, Bytes)> = Vec::new();
        for v in headers.get_all(CONTENT_RANGE) {
            let (first, last, complete) = content_range(v.as_bytes())?;
            if *len.get_or_insert(complete) != complete {
                return None;
            }
            if parts
                .last()
                .is_some_and(|(f, b)| f + b.len() as u64 >= first)
            {
                return None;
            }
            let n = usize::try_from(last - first + 1).ok()?;
            let end = at.checked_add(n).filter(|e| *e <= body.len())?;
            parts.push((first, body.slice(at..end)));
            at = end;
        }
        let len = len?;
        (at == body.len()).then_some(Self { len, parts })
    }

    pub(crate) fn is_complete(&self) -> bool {
        matches!(self.parts.as_slice(), [(0, b)] if b.len() as u64 == self.len)
    }

    /// Bytes `first..=last`, when one part holds them all.
    pub(crate) fn slice(&self, first: u64, last: u64) -> Option<Bytes> {
        let (start, b) = self.parts.iter().take_while(|(f, _)| *f <= first).last()?;
        let end = start + b.len() as u64;
        (last < end).then(|| b.slice((first - start) as usize..=(last - start) as usize))
    }

    /// These parts with `newer`'s (which win where they overlap).
    fn merge(&self, newer: &Parts) -> Parts {
        let mut all: Vec<(u64, Bytes)> = newer.parts.clone();
        for (first, b) in &self.parts {
            // Keep only the stretches of an older part that no newer part covers.
            let mut cut = vec![(*first, *first + b.len() as u64)];
            for (nf, nb) in &newer.parts {
                let (ns, ne) = (*nf, *nf + nb.len() as u64);
                cut = cut
                    .into_iter()
                    .flat_map(|(s, e)| {
                        [(s, e.min(ns)), (s.max(ne), e)]
                            .into_iter()
                            .filter(|(s, e)| s < e)
                    })
                    .collect();
            }
            all.extend(
                cut.into_iter()
                    .map(|(s, e)| (s, b.slice((s - first) as usize..(e - first) as usize))),
            );
        }
        all.sort_by_key(|(f, _)| *f);
        let mut parts: Vec<(u64, Bytes)> = Vec::with_capacity(all.len());
        for (f, b) in all {
            match parts.last_mut() {
                Some((pf, pb)) if *pf + pb.len() as u64 == f => {
                    let mut joined = BytesMut::with_capacity(pb.len() + b.len());
                    joined.extend_from_slice(pb);
                    joined.extend_from_slice(&b);
                    *pb = joined.freeze();
                }
                _ => parts.push((f, b)),
            }
        }
        Parts {
            len: self.len,
            parts,
        }
    }

    fn stored_len(&self) -> usize {
        self.parts.iter().map(|(_, b)| b.len()).sum()
    }
}

/// The strong entity-tag of a response, if it has one.
fn strong_tag(h: &HeaderMap) -> Option<&[u8]> {
    let v = h.get(ETAG)?;
    Tag::parse(v.as_bytes())
        .filter(|t| !t.weak)
        .map(|t| t.opaque)
}

/// Whether a response's parts may be stored: byte ranges of a known
/// length (not `multipart/byteranges`; an origin's `206` names one, a
/// stored entry being refreshed may name several), with a `Content-Length`,
/// if any, that is their size (else the message contradicts itself, RFC
/// 9110 §8.6, §14.4).
pub(crate) fn storable(h: &HeaderMap) -> bool {
    let mut size = Some(0u64);
    let mut ranges = h.get_all(CONTENT_RANGE).iter().peekable();
    let valid = ranges.peek().is_some()
        && ranges.all(|v| {
            let r = content_range(v.as_bytes());
            size = size
                .zip(r)
                .map(|(n, (first, last, _))| n + (last - first + 1));
            r.is_some()
        });
    let sized = h.get(CONTENT_LENGTH).is_none_or(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            == size
    });
    let multipart = h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/byteranges")
        });
    valid && sized && !multipart
}

/// What a `206` fill stores: its part combined with the stored incomplete
/// entry `older` when both have the same strong validator and length
/// (RFC 9111 §3.4: the new response's fields replace the stored ones),
/// within `cap` bytes. `None` when the response does not hold the part it
/// names. The status and fields are changed to the entry's: `200` and its
/// length once complete, else 206 with a `Content-Range` per part.
pub(crate) fn combine(
    status: &mut StatusCode,
    headers: &mut HeaderMap,
    body: Bytes,
    older: Option<&Entry>,
    cap: usize,
    targets: &[HeaderName],
) -> Option<Bytes> {
    let new = Parts::of(206, headers, &body)?;
    let older = older
        .filter(|o| o.meta.status == 206)
        .filter(|o| strong_tag(&o.headers).is_some_and(|t| Some(t) == strong_tag(headers)))
        .and_then(|o| Some((o, Parts::of(206, &o.headers, &o.body)?)))
        .filter(|(_, p)| p.len == new.len);
    let parts = match older.map(|(o, p)| (o, p.merge(&new))) {
        Some((o, m)) if m.stored_len() <= cap && m.parts.len() <= MAX_PARTS => {
            // The new response's fields update the stored ones (§3.2).
            *headers = merge_fields(&o.headers, headers, targets);
            m
        }
        _ => new,
    };
    headers.remove(CONTENT_RANGE);
    headers.remove(CONTENT_LENGTH);
    if parts.is_complete() {
        *status = StatusCode::OK;
        headers.insert(CONTENT_LENGTH, HeaderValue::from(parts.len));
        return Some(parts.parts[0].1.clone());
    }
    let mut out = BytesMut::with_capacity(parts.stored_len());
    for (first, b) in &parts.parts {
        let last = first + b.len() as u64 - 1;
        let v = HeaderValue::try_from(format!("bytes {first}-{last}/{}", parts.len)).ok()?;
        headers.append(CONTENT_RANGE, v);
        out.extend_from_slice(b);
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests;
