//! The stored form of a response: our own versioned binary layout, decoded
//! with bounds checks only (never a general-purpose deserialiser).
//!
//! ```text
//! magic "TRLC" | version u8 (1; 2 for incomplete entries) | flags u8 (1 must-revalidate, 2 s-maxage) | status u16
//! key_tag u64 | stored_ms u64 | fresh_ms u64 | age_s u32 | swr_s u32 | sie_s u32
//! header count u16 | { name_len u16 | name | value_len u32 | value } …
//! body_len u32 | body
//! checksum u64 (word-wise FNV-1a of every byte before it, see `checksum`)
//! ```
//!
//! Integers are big-endian. A decoded entry's body and header values are
//! slices of the stored bytes (`Bytes`), so serving a hit copies nothing.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const MAGIC: &[u8; 4] = b"TRLC";
const VERSION: u8 = 1;
/// The version of incomplete entries (status 206, see
/// [`partial`](super::partial)): instances that predate them read these
/// as misses instead of serving a part as the whole.
const VERSION_PARTIAL: u8 = 2;
const FLAG_MUST_REVALIDATE: u8 = 1;
const FLAG_S_MAXAGE: u8 = 2;
const FIXED: usize = 4 + 1 + 1 + 2 + 8 * 3 + 4 * 3 + 2;
/// Most header fields an entry holds; a response with more is not stored.
pub(crate) const MAX_HEADERS: usize = 512;

/// What the cache knows about a stored response besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    pub(crate) status: u16,
    /// Ties the entry to the key it was written under: a foreign entry is a miss.
    pub(crate) key_tag: u64,
    /// Store-clock time the response was received (ms since the epoch).
    pub(crate) stored_ms: u64,
    /// How long after `stored_ms` the entry is fresh.
    pub(crate) fresh_ms: u64,
    /// The response's age when it was received (its `Age` field).
    pub(crate) age_s: u32,
    /// `stale-while-revalidate` window in seconds.
    pub(crate) swr_s: u32,
    /// `stale-if-error` window in seconds.
    pub(crate) sie_s: u32,
    /// `must-revalidate` / `proxy-revalidate`: never served stale.
    pub(crate) must_revalidate: bool,
    /// `s-maxage`: stale only where the origin explicitly allows it.
    pub(crate) s_maxage: bool,
}

impl Meta {
    pub(crate) fn fresh_until_ms(&self) -> u64 {
        self.stored_ms.saturating_add(self.fresh_ms)
    }
}

/// A decoded entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) meta: Meta,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Field slots a hit's response keeps free for the fields added to it
/// (`Age`, `Cache-Status`, and the server's `Content-Length` and `Date`).
pub(crate) const SERVE_ROOM: usize = 4;

impl Entry {
    /// The memory a decoded entry holds besides the stored bytes its body
    /// and values slice, counted from above: its map (index and field
    /// slots, every value as if in a slot of its own), the names, and the
    /// entry itself.
    pub(crate) fn overhead(&self) -> usize {
        let h = &self.headers;
        let slot = std::mem::size_of::<HeaderName>() + std::mem::size_of::<HeaderValue>() + 24;
        let names: usize = h.keys().map(|n| n.as_str().len()).sum();
        std::mem::size_of::<Self>() + 16 + (h.capacity() + h.len()) * slot + names
    }
}

/// Why stored bytes are not an entry. Every variant is a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Foreign,
    Version(u8),
    Truncated,
    Checksum,
    Invalid(&'static str),
}

/// A 64-bit checksum that detects corruption (the store is trusted not to
/// forge): FNV-1a's offset and prime over 8-byte little-endian words, the
/// tail zero-padded and the length mixed in last. Word-wise, it runs about
/// eight times faster than byte-wise FNV-1a, and a change confined to one
/// word always changes the sum (each step is a bijection of the state).
pub(crate) fn checksum(parts: &[&[u8]]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len = 0u64;
    for part in parts {
        let mut words = part.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut b = [0u8; 8];
            b[..tail.len()].copy_from_slice(tail);
            h = (h ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
        }
        len += part.len() as u64;
    }
    (h ^ len).wrapping_mul(PRIME)
}

/// Encodes an entry; `body` is the captured chunks (copied once, here).
pub(crate) fn encode(meta: &Meta, headers: &HeaderMap, body: &[Bytes]) -> Bytes {
    let body_len: usize = body.iter().map(Bytes::len).sum();
    let head_len: usize = headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    let mut buf = BytesMut::with_capacity(FIXED + head_len + 4 + body_len + 8);
    buf.put_slice(MAGIC);
    buf.put_u8(if meta.status == 206 {
        VERSION_PARTIAL
    } else {
        VERSION
    });
    let flag = |on, f| if on { f } else { 0 };
    buf.put_u8(
        flag(meta.must_revalidate, FLAG_MUST_REVALIDATE) | flag(meta.s_maxage, FLAG_S_MAXAGE),
    );
    buf.put_u16(meta.status);
    buf.put_u64(meta.key_tag);
    buf.put_u64(meta.stored_ms);
    buf.put_u64(meta.fresh_ms);
    buf.put_u32(meta.age_s);
    buf.put_u32(meta.swr_s);
    buf.put_u32(meta.sie_s);
    let count = headers.len().min(MAX_HEADERS);
    buf.put_u16(count as u16);
    for (name, value) in headers.iter().take(count) {
        buf.put_u16(name.as_str().len() as u16);
        buf.put_slice(name.as_str().as_bytes());
        buf.put_u32(value.len() as u32);
        buf.put_slice(value.as_bytes());
    }
    buf.put_u32(body_len as u32);
    for chunk in body {
        buf.put_slice(chunk);
    }
    let sum = checksum(&[&buf]);
    buf.put_u64(sum);
    buf.freeze()
}

/// The body of an encoded entry of `body_len` body bytes: a slice, no copy.
pub(crate) fn body_of(raw: &Bytes, body_len: usize) -> Bytes {
    let end = raw.len() - 8;
    raw.slice(end - body_len..end)
}

struct Reader<'a> {
    raw: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        if end > self.raw.len() {
            return Err(DecodeError::Truncated);
        }
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let r = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.raw[r]);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// Until when the entry `raw` holds is fresh (store-clock ms), read from
/// its fixed header alone, for a store to tell a fresh entry from a stale
/// one before the entry is decoded (and its checksum checked). `None`:
/// not an entry.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn fresh_until_of(raw: &[u8]) -> Option<u64> {
    if raw.len() < FIXED || !raw.starts_with(MAGIC) {
        return None;
    }
    let at = |i: usize| raw[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    // magic, version, flags, status, key_tag: stored_ms at 16, fresh_ms at 24.
    Some(at(16)?.saturating_add(at(24)?))
}

/// Decodes stored bytes; any deviation from the layout is an error, never a panic.
pub(crate) fn decode(raw: Bytes) -> Result<Entry, DecodeError> {
    if raw.len() < 4 || &raw[..4] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    if raw.len() < FIXED + 4 + 8 {
        return Err(DecodeError::Truncated);
    }
    let (content, sum) = raw.split_at(raw.len() - 8);
    let mut sum_bytes = [0u8; 8];
    sum_bytes.copy_from_slice(sum);
    if checksum(&[content]) != u64::from_be_bytes(sum_bytes) {
        return Err(DecodeError::Checksum);
    }
    let content = raw.slice(..raw.len() - 8);
    let mut r = Reader {
        raw: &content,
        pos: 4,
    };
    let version = r.u8()?;
    if version != VERSION && version != VERSION_PARTIAL {
        return Err(DecodeError::Version(version));
    }
    let flags = r.u8()?;
    let status = r.u16()?;
    StatusCode::from_u16(status).map_err(|_| DecodeError::Invalid("status"))?;
    let meta = Meta {
        status,
        key_tag: r.u64()?,
        stored_ms: r.u64()?,
        fresh_ms: r.u64()?,
        age_s: r.u32()?,
        swr_s: r.u32()?,
        sie_s: r.u32()?,
        must_revalidate: flags & FLAG_MUST_REVALIDATE != 0,
        s_maxage: flags & FLAG_S_MAXAGE != 0,
    };
    let count = usize::from(r.u16()?);
    if count > MAX_HEADERS {
        return Err(DecodeError::Invalid("header count"));
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let n = usize::from(r.u16()?);
        let name = r.take(n)?;
        let name =
            HeaderName::from_bytes(&content[name]).map_err(|_| DecodeError::Invalid("name"))?;
        let n = r.u32()? as usize;
        let value = r.take(n)?;
        let value = HeaderValue::from_maybe_shared(content.slice(value))
            .map_err(|_| DecodeError::Invalid("value"))?;
        headers.append(name, value);
    }
    let n = r.u32()? as usize;
    let body = r.take(n)?;
    if r.pos != content.len() {
        return Err(DecodeError::Invalid("trailing bytes"));
    }
    let body = content.slice(body);
    // An incomplete entry's parts must be the body it holds.
    if (status == 206) != (version == VERSION_PARTIAL)
        || super::partial::Parts::of(status, &headers, &body).is_none()
    {
        return Err(DecodeError::Invalid("partial content"));
    }
    Ok(Entry {
        meta,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (Meta, HeaderMap, Vec<Bytes>) {
        let meta = Meta {
            status: 200,
            key_tag: 7,
            stored_ms: 1_700_000_000_000,
            fresh_ms: 30_000,
            age_s: 3,
            swr_s: 10,
            sie_s: 0,
            must_revalidate: true,
            s_maxage: true,
        };
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        (
            meta,
            h,
            vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")],
        )
    }

    #[test]
    fn round_trips() {
        let (meta, h, body) = sample();
        let raw = encode(&meta, &h, &body);
        assert_eq!(body_of(&raw, 11), "hello world");
        let e = decode(raw).unwrap();
        assert_eq!(e.meta, meta);
        assert_eq!(e.headers, h);
        assert_eq!(e.body, "hello world");
    }

    #[test]
    fn fresh_until_is_read_from_the_header_alone() {
        let (meta, h, body) = sample();
        let raw = encode(&meta, &h, &body);
        assert_eq!(fresh_until_of(&raw), Some(meta.fresh_until_ms()));
        assert_eq!(fresh_until_of(&raw[..FIXED]), Some(meta.fresh_until_ms()));
        assert_eq!(fresh_until_of(&raw[..FIXED - 1]), None);
        assert_eq!(
            fresh_until_of(b"not an entry at all, but long enough to read"),
            None
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let (meta, h, body) = sample();
        let raw = encode(&meta, &h, &body);
        for n in 0..raw.len() {
            assert!(decode(raw.slice(..n)).is_err(), "truncated at {n}");
        }
        for i in 0..raw.len() {
            let mut v = raw.to_vec();
            v[i] ^= 0x40;
            assert!(decode(Bytes::from(v)).is_err(), "flipped byte {i}");
        }
    }

    #[test]
    fn incomplete_entries_have_a_version_of_their_own_and_valid_parts() {
        let (mut meta, mut h, _) = sample();
        meta.status = 206;
        h.insert("content-range", HeaderValue::from_static("bytes 2-6/20"));
        let body = [Bytes::from_static(b"hello")];
        let raw = encode(&meta, &h, &body);
        assert_eq!(raw[4], VERSION_PARTIAL);
        assert_eq!(decode(raw).unwrap().body, "hello");
        h.insert("content-range", HeaderValue::from_static("bytes 2-7/20"));
        let wrong = encode(&meta, &h, &body);
        assert_eq!(
            decode(wrong).unwrap_err(),
            DecodeError::Invalid("partial content")
        );
        // A version 1 entry never holds a part.
        let mut v1 = encode(&meta, &h, &body).to_vec();
        v1[4] = VERSION;
        let n = v1.len() - 8;
        let sum = checksum(&[&v1[..n]]);
        v1[n..].copy_from_slice(&sum.to_be_bytes());
        assert!(decode(Bytes::from(v1)).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Bytes::from(data));
        }

        #[test]
        fn random_content_with_a_valid_checksum_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), partial in any::<bool>()) {
            // Past the checksum, so the field parsing itself is exercised
            // (a version 2 entry's parts too).
            let mut v = if partial { b"TRLC\x02".to_vec() } else { b"TRLC\x01".to_vec() };
            v.extend(data);
            let sum = checksum(&[&v]);
            v.extend(sum.to_be_bytes());
            let _ = decode(Bytes::from(v));
        }
    }
}
