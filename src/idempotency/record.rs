//! The stored response: our own small versioned binary layout, shared by
//! both stores. Decoding is bounds-checked and never panics; anything that
//! does not parse is a [`Corrupt`] record, treated as a store failure.
//!
//! ```text
//! magic "TRLI" | version u8 (1) | status u16 | header count u16
//! per header: name length u16 | name | value length u32 | value
//! body length u32 | body
//! ```
//! All integers big-endian; the record ends exactly after the body.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

const MAGIC: &[u8; 4] = b"TRLI";
const VERSION: u8 = 1;

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) &'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt idempotency record: {}", self.0)
    }
}

impl StoredResponse {
    /// The record bytes. Header values over 4 GiB or bodies over 4 GiB cannot
    /// occur: both are capped far below by the layer.
    pub(crate) fn encode(&self) -> Bytes {
        let headers_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum();
        let mut out = BytesMut::with_capacity(13 + headers_len + self.body.len());
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u16(self.status.as_u16());
        out.put_u16(self.headers.len().min(u16::MAX as usize) as u16);
        for (name, value) in self.headers.iter().take(u16::MAX as usize) {
            out.put_u16(name.as_str().len() as u16);
            out.put_slice(name.as_str().as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value.as_bytes());
        }
        out.put_u32(self.body.len() as u32);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Reads a record; the body shares `bytes`' allocation.
    pub(crate) fn decode(bytes: &Bytes) -> Result<Self, Corrupt> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(Corrupt("bad magic"));
        }
        if r.u8()? != VERSION {
            return Err(Corrupt("unknown version"));
        }
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| Corrupt("bad status"))?;
        let count = r.u16()?;
        // Not `with_capacity(count)`: http panics on capacities it cannot hold.
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let len = r.u16()? as usize;
            let name =
                HeaderName::from_bytes(r.take(len)?).map_err(|_| Corrupt("bad header name"))?;
            let len = r.u32()? as usize;
            let value =
                HeaderValue::from_bytes(r.take(len)?).map_err(|_| Corrupt("bad header value"))?;
            headers
                .try_append(name, value)
                .map_err(|_| Corrupt("too many headers"))?;
        }
        let len = r.u32()? as usize;
        let start = r.pos;
        r.take(len)?;
        if r.pos != bytes.len() {
            return Err(Corrupt("trailing bytes"));
        }
        Ok(Self {
            status,
            headers,
            body: bytes.slice(start..start + len),
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        let end = self.pos.checked_add(n).ok_or(Corrupt("length overflow"))?;
        let s = self.bytes.get(self.pos..end).ok_or(Corrupt("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Corrupt> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("link", HeaderValue::from_static("</a>; rel=a"));
        headers.append("link", HeaderValue::from_static("</b>; rel=b"));
        headers.insert("x-bin", HeaderValue::from_bytes(b"\xff\x80").unwrap());
        StoredResponse {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"{\"order\":1}\x00\xff"),
        }
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let r = sample();
        assert_eq!(StoredResponse::decode(&r.encode()).unwrap(), r);
        let empty = StoredResponse {
            status: StatusCode::NO_CONTENT,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        assert_eq!(StoredResponse::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn every_truncation_and_extension_is_corrupt() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(StoredResponse::decode(&bytes.slice(..n)).is_err(), "{n}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            StoredResponse::decode(&Bytes::from(longer)),
            Err(Corrupt("trailing bytes"))
        );
        let mut v2 = bytes.to_vec();
        v2[4] = 2;
        assert_eq!(
            StoredResponse::decode(&Bytes::from(v2)),
            Err(Corrupt("unknown version"))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut with_magic = b"TRLI\x01".to_vec();
            with_magic.extend_from_slice(&data);
            let _ = StoredResponse::decode(&Bytes::from(data));
            let _ = StoredResponse::decode(&Bytes::from(with_magic));
        }

        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..64, byte in any::<u8>()) {
            let mut bytes = sample().encode().to_vec();
            let i = pos % bytes.len();
            bytes[i] = byte;
            let _ = StoredResponse::decode(&Bytes::from(bytes));
        }
    }
}
