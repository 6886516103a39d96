//! Client keys: who a request counts against, shared by every layer.
//!
//! A [`KeyExtractor`] turns a request into a [`ClientKey`]: the peer address
//! ([`PeerIp`]), the client address behind trusted proxies ([`ClientIp`]), a
//! header such as an API key ([`Header`]), one key for everyone ([`Global`]),
//! or any closure. Extractors chain with [`KeyExtractorExt::or`].
//!
//! The text of a key never reaches Redis as is: it is hashed (SHA-256,
//! base64url) before it becomes part of a Redis key, so a client cannot inject
//! key syntax or grow keys without bound.
//!
//! ```
//! use tower_redis_layers::key::{Header, KeyExtractorExt, PeerIp};
//!
//! // The API key when the client sends one, else the peer's address.
//! let key = Header::new("x-api-key").or(PeerIp::new());
//! # drop(key);
//! ```

mod forwarded;
mod ip;

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri};
use sha2::{Digest, Sha256};

pub use forwarded::{ClientIp, ForwardingHeader};
pub use ip::{PeerAddr, PeerIp};

/// The parts of a request a key extractor may read.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (peer address, authenticated user, ...).
    pub extensions: &'a Extensions,
}

impl<'a> RequestView<'a> {
    /// A view of `req`.
    pub fn new<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// Who a request counts against. Built by an extractor; its bytes are hashed
/// before they enter a store key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    raw: Vec<u8>,
}

impl ClientKey {
    /// A key in namespace `kind` (so `ip` 1.2.3.4 and an API key "1.2.3.4"
    /// never meet) with the given bytes.
    pub fn new(kind: &str, value: impl AsRef<[u8]>) -> Self {
        let value = value.as_ref();
        let mut raw = Vec::with_capacity(kind.len() + 1 + value.len());
        raw.extend_from_slice(kind.as_bytes());
        raw.push(b':');
        raw.extend_from_slice(value);
        Self { raw }
    }

    /// The key's bytes, namespace included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// SHA-256 of the key, base64url without padding (43 characters): the form
    /// in which the key enters a store key.
    pub fn digest(&self) -> String {
        digest(&self.raw)
    }

    /// [`digest`](Self::digest) without allocating.
    pub(crate) fn digest_bytes(&self) -> [u8; DIGEST_LEN] {
        digest_array(&self.raw)
    }
}

/// Length of a key digest: SHA-256 in base64url without padding.
pub(crate) const DIGEST_LEN: usize = 43;

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys may be secrets (API keys): show only the digest.
        write!(f, "ClientKey({})", &self.digest()[..12])
    }
}

/// SHA-256 of `bytes`, base64url without padding.
pub(crate) fn digest(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
}

/// [`digest`] as bytes, without allocating.
pub(crate) fn digest_array(bytes: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(Sha256::digest(bytes), &mut out)
        .unwrap_or(0);
    debug_assert_eq!(n, DIGEST_LEN);
    out
}

/// Why no key could be taken from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The request carries nothing to key on (no header, no peer address).
    /// What happens then is the layer's missing-key policy.
    Missing,
    /// The request carries a key that cannot be used (oversized, several
    /// values, unparseable): answered with 400 and this message.
    Invalid(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing => f.write_str("the request carries no client key"),
            KeyError::Invalid(why) => write!(f, "invalid client key: {why}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Takes the client key from a request.
///
/// Implemented by the extractors of this module and by closures
/// `Fn(&RequestView<'_>) -> Result<ClientKey, KeyError>`.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of `req`.
    fn extract(&self, req: &RequestView<'_>) -> Result<ClientKey, KeyError>;

    /// What this extractor looks for, in words, for the messages of a
    /// request that carried no key (e.g. "the x-api-key header").
    fn describe(&self) -> String {
        "a key from a custom extractor".to_owned()
    }
}

impl<F> KeyExtractor for F
where
    F: Fn(&RequestView<'_>) -> Result<ClientKey, KeyError> + Send + Sync + 'static,
{
    fn extract(&self, req: &RequestView<'_>) -> Result<ClientKey, KeyError> {
        self(req)
    }
}

impl KeyExtractor for Arc<dyn KeyExtractor> {
    fn extract(&self, req: &RequestView<'_>) -> Result<ClientKey, KeyError> {
        (**self).extract(req)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Combinators for every [`KeyExtractor`].
pub trait KeyExtractorExt: KeyExtractor + Sized {
    /// Uses `fallback` when `self` finds no key ([`KeyError::Missing`]). An
    /// invalid key is not replaced: the client sent something wrong.
    fn or<E: KeyExtractor>(self, fallback: E) -> Or<Self, E> {
        Or {
            first: self,
            fallback,
        }
    }
}

impl<K: KeyExtractor> KeyExtractorExt for K {}

/// See [`KeyExtractorExt::or`].
#[derive(Debug, Clone)]
pub struct Or<A, B> {
    first: A,
    fallback: B,
}

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Or<A, B> {
    fn extract(&self, req: &RequestView<'_>) -> Result<ClientKey, KeyError> {
        match self.first.extract(req) {
            Err(KeyError::Missing) => self.fallback.extract(req),
            other => other,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}, else {}",
            self.first.describe(),
            self.fallback.describe()
        )
    }
}

/// One key for every request: a quota for the whole service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl KeyExtractor for Global {
    fn extract(&self, _req: &RequestView<'_>) -> Result<ClientKey, KeyError> {
        Ok(ClientKey::new("global", b""))
    }

    fn describe(&self) -> String {
        "one global key".to_owned()
    }
}

/// The value of a request header, e.g. an API key (`x-api-key`) or
/// `authorization`. The value is hashed before use, so secrets never reach
/// the store in clear.
///
/// Missing header: [`KeyError::Missing`]. Empty, longer than the limit
/// (default 1024 bytes) or sent more than once: [`KeyError::Invalid`].
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
    max_len: usize,
}

impl Header {
    /// Keys on the header `name`.
    ///
    /// # Panics
    /// When `name` is not a valid header name (a programming error, like
    /// `HeaderName::from_static`); the panic points at the caller.
    #[track_caller]
    pub fn new(name: &str) -> Self {
        // A `match`, not a closure: the panic must point at the caller.
        let name = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => n,
            Err(_) => panic!("Header::new: {name:?} is not a valid header name"),
        };
        Self {
            name,
            max_len: 1024,
        }
    }

    /// The longest value accepted (default 1024 bytes).
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }
}

impl KeyExtractor for Header {
    fn extract(&self, req: &RequestView<'_>) -> Result<ClientKey, KeyError> {
        let mut values = req.headers.get_all(&self.name).iter();
        let value = values.next().ok_or(KeyError::Missing)?;
        if values.next().is_some() {
            return Err(KeyError::Invalid(format!(
                "the {} header was sent more than once",
                self.name
            )));
        }
        let bytes = value.as_bytes();
        if bytes.is_empty() {
            return Err(KeyError::Invalid(format!(
                "the {} header is empty",
                self.name
            )));
        }
        if bytes.len() > self.max_len {
            return Err(KeyError::Invalid(format!(
                "the {} header is longer than {} bytes",
                self.name, self.max_len
            )));
        }
        // `h:{name}:{value}`, as `ClientKey::new("h:{name}", value)` in one allocation.
        let name = self.name.as_str().as_bytes();
        let mut raw = Vec::with_capacity(3 + name.len() + bytes.len());
        raw.extend_from_slice(b"h:");
        raw.extend_from_slice(name);
        raw.push(b':');
        raw.extend_from_slice(bytes);
        Ok(ClientKey { raw })
    }

    fn describe(&self) -> String {
        format!("the {} header", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn view_of(req: &Request<()>) -> RequestView<'_> {
        RequestView::new(req)
    }

    #[test]
    fn header_key_hashes_the_value_and_namespaces_it() {
        let req = Request::builder()
            .header("x-api-key", "1.2.3.4")
            .body(())
            .unwrap();
        let key = Header::new("x-api-key").extract(&view_of(&req)).unwrap();
        assert_ne!(key, ClientKey::new("ip", "1.2.3.4"));
        assert_eq!(key, ClientKey::new("h:x-api-key", "1.2.3.4"));
        let d = key.digest();
        assert_eq!(d.len(), 43);
        assert_eq!(d.as_bytes(), key.digest_bytes(), "both forms agree");
        assert!(d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(
            !format!("{key:?}").contains("1.2.3.4"),
            "debug hides the secret"
        );
    }

    #[test]
    fn header_key_rejects_oversized_repeated_and_empty_values() {
        let long = "a".repeat(1025);
        let req = Request::builder()
            .header("x-api-key", long)
            .body(())
            .unwrap();
        assert!(matches!(
            Header::new("x-api-key").extract(&view_of(&req)),
            Err(KeyError::Invalid(m)) if m.contains("longer than 1024")
        ));
        let req = Request::builder()
            .header("x-api-key", "a")
            .header("x-api-key", "b")
            .body(())
            .unwrap();
        assert!(matches!(
            Header::new("x-api-key").extract(&view_of(&req)),
            Err(KeyError::Invalid(m)) if m.contains("more than once")
        ));
        let req = Request::builder().header("x-api-key", "").body(()).unwrap();
        assert!(matches!(
            Header::new("x-api-key").extract(&view_of(&req)),
            Err(KeyError::Invalid(_))
        ));
    }

    #[test]
    fn non_utf8_header_values_are_distinct_keys() {
        let mut a = Request::new(());
        a.headers_mut()
            .insert("x-api-key", HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap());
        let mut b = Request::new(());
        b.headers_mut()
            .insert("x-api-key", HeaderValue::from_bytes(&[0xff, 0xfd]).unwrap());
        let h = Header::new("x-api-key");
        assert_ne!(
            h.extract(&view_of(&a)).unwrap(),
            h.extract(&view_of(&b)).unwrap()
        );
    }

    #[test]
    fn or_falls_back_only_when_missing() {
        let ex = Header::new("x-api-key").or(Global);
        let req = Request::new(());
        assert_eq!(
            ex.extract(&view_of(&req)).unwrap(),
            ClientKey::new("global", b"")
        );
        let req = Request::builder().header("x-api-key", "").body(()).unwrap();
        assert!(matches!(
            ex.extract(&view_of(&req)),
            Err(KeyError::Invalid(_))
        ));
    }

    #[test]
    fn closures_are_extractors() {
        let ex = |req: &RequestView<'_>| Ok(ClientKey::new("path", req.uri.path()));
        let req = Request::builder().uri("/a").body(()).unwrap();
        assert_eq!(
            ex.extract(&view_of(&req)).unwrap(),
            ClientKey::new("path", "/a")
        );
    }
}
