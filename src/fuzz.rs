//! Entry points for the cargo-fuzz targets (`fuzz/`): every decoder and
//! header parser that reads client or store bytes. Not part of the API;
//! each must return, never panic, on any input.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};

use crate::key::{ClientIp, ForwardingHeader, KeyExtractor, PeerAddr, RequestView};

/// Decodes `data` as a stored idempotency record. Returns whether it decoded.
pub fn idempotency_record(data: &[u8]) -> bool {
    crate::idempotency::record::StoredResponse::decode(&Bytes::copy_from_slice(data)).is_ok()
}

/// Parses `data` as an `Idempotency-Key` field value (when it is one).
pub fn idempotency_key(data: &[u8]) -> bool {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return false;
    };
    let mut headers = HeaderMap::new();
    headers.insert("idempotency-key", value);
    matches!(crate::idempotency::key::parse(&headers), Ok(Some(_)))
}

/// Reads `data` as `X-Forwarded-For` and as `Forwarded` behind a trusted
/// proxy. Returns whether both produced a key.
pub fn forwarding_headers(data: &[u8]) -> bool {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return false;
    };
    let mut ok = true;
    for (header, name) in [
        (ForwardingHeader::XForwardedFor, "x-forwarded-for"),
        (ForwardingHeader::Forwarded, "forwarded"),
    ] {
        let mut req = Request::new(());
        req.headers_mut().insert(name, value.clone());
        req.extensions_mut()
            .insert(PeerAddr(([10, 0, 0, 1], 4000).into()));
        let ex = ClientIp::new()
            .trust(["10.0.0.0/8".parse().expect("a network")])
            .header(header);
        ok &= ex.extract(&RequestView::new(&req)).is_ok();
    }
    ok
}

/// Decodes `data` as a stored cache entry, then as the content of an entry
/// with a valid checksum (so the field parsing is reached). Returns whether
/// either decoded.
pub fn entry_decode(data: &[u8]) -> bool {
    use crate::cache::entry::{checksum, decode};
    let raw = decode(Bytes::copy_from_slice(data)).is_ok();
    let mut sealed = b"TRLC\x01".to_vec();
    sealed.extend_from_slice(data);
    let sum = checksum(&[&sealed]);
    sealed.extend_from_slice(&sum.to_be_bytes());
    raw | decode(Bytes::from(sealed)).is_ok()
}
