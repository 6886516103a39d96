//! The identity of a record (its scope), the fingerprint of a request and
//! the lease token: computed in Rust, the same for both stores.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use sha2::{Digest, Sha256};

use super::key::IdempotencyKey;
use crate::key::ClientKey;

/// Which record a request addresses: SHA-256 of principal, method, path and
/// idempotency key (each length-prefixed), base64url. Client text never
/// enters a store key in clear.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(unreachable_pub)]
pub struct RecordKey(pub(crate) String);

impl RecordKey {
    pub(crate) fn new(
        scope: &str,
        principal: &ClientKey,
        parts: &Parts,
        key: &IdempotencyKey,
    ) -> Self {
        let mut h = Sha256::new();
        for field in [
            scope.as_bytes(),
            principal.as_bytes(),
            parts.method.as_str().as_bytes(),
            parts.uri.path().as_bytes(),
            key.as_str().as_bytes(),
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field);
        }
        // `digest` hashes again: the key is the digest of the 32-byte scope hash.
        Self(crate::key::digest(&h.finalize()))
    }
}

/// SHA-256 of method, path and query, content type and body: a key reused
/// for a different request is detected (422).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(unreachable_pub)]
pub struct Fingerprint(pub(crate) [u8; 32]);

impl Fingerprint {
    pub(crate) fn new(parts: &Parts, body: &Bytes) -> Self {
        let path_and_query = parts.uri.path_and_query().map_or("", |p| p.as_str());
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes());
        let mut h = Sha256::new();
        for field in [
            parts.method.as_str().as_bytes(),
            path_and_query.as_bytes(),
            content_type,
            &body[..],
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field);
        }
        Self(h.finalize().into())
    }
}

/// The lease token of one reservation (fencing): 128 random-enough bits.
/// Uniqueness is what matters, not secrecy: it never leaves the store.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(unreachable_pub)]
pub struct Token(pub(crate) [u8; 16]);

impl Token {
    pub(crate) fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // `process::id` is a system call each time: asked once.
        static PID: std::sync::LazyLock<u32> = std::sync::LazyLock::new(std::process::id);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut out = [0u8; 16];
        for (i, half) in out.chunks_exact_mut(8).enumerate() {
            // RandomState is seeded from the OS per process (and per thread).
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(n);
            h.write_u64(nanos);
            h.write_u32(*PID);
            h.write_usize(i);
            half.copy_from_slice(&h.finish().to_be_bytes());
        }
        Self(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, ct: Option<&str>) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn fingerprint_covers_method_target_type_and_body() {
        let body = Bytes::from_static(b"{}");
        let base = Fingerprint::new(&parts("POST", "/a?x=1", Some("application/json")), &body);
        assert_eq!(
            base,
            Fingerprint::new(&parts("POST", "/a?x=1", Some("application/json")), &body)
        );
        for other in [
            Fingerprint::new(&parts("PATCH", "/a?x=1", Some("application/json")), &body),
            Fingerprint::new(&parts("POST", "/a?x=2", Some("application/json")), &body),
            Fingerprint::new(&parts("POST", "/a?x=1", Some("text/plain")), &body),
            Fingerprint::new(&parts("POST", "/a?x=1", None), &body),
            Fingerprint::new(
                &parts("POST", "/a?x=1", Some("application/json")),
                &Bytes::from_static(b"{ }"),
            ),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn record_keys_separate_principals_paths_and_keys() {
        let k = |s: &str| {
            super::super::key::parse(&{
                let mut h = http::HeaderMap::new();
                h.insert("idempotency-key", s.parse().unwrap());
                h
            })
            .unwrap()
            .unwrap()
        };
        let a = ClientKey::new("h:x-api-key", "a");
        let b = ClientKey::new("h:x-api-key", "b");
        let p = parts("POST", "/orders", None);
        let base = RecordKey::new("s", &a, &p, &k("k1"));
        assert_eq!(base.0.len(), 43);
        assert_eq!(
            base,
            RecordKey::new("s", &a, &parts("POST", "/orders?q=1", None), &k("k1"))
        );
        assert_ne!(base, RecordKey::new("s", &b, &p, &k("k1")));
        assert_ne!(
            base,
            RecordKey::new("s", &a, &parts("POST", "/other", None), &k("k1"))
        );
        assert_ne!(base, RecordKey::new("s", &a, &p, &k("k2")));
        assert_ne!(base, RecordKey::new("other", &a, &p, &k("k1")));
        assert_ne!(Token::generate(), Token::generate());
    }
}
