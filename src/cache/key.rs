//! Cache keys: which stored response answers a request.
//!
//! A key has two parts. The *URL* part (scope, method GET, the authority
//! unless configured off, path, query normalised as configured) names
//! everything the layer stores for one resource, so invalidating a URL
//! drops every variant. The *variant* part holds the request's values of the
//! configured key headers and of the headers the response's `Vary` names.
//! Both are hashed (SHA-256, base64url) before they become part of a store key.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HOST, VARY};
use http::Uri;

use crate::key::digest;

/// How the URL part of a key is built (set on the builder).
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyRules {
    pub(crate) scope: String,
    pub(crate) host: bool,
    pub(crate) sort_query: bool,
    pub(crate) ignore_params: Vec<String>,
    /// Request headers always in the key (lowercase, sorted).
    pub(crate) headers: Vec<HeaderName>,
}

/// Where one variant of one URL lives in a store.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(unreachable_pub)]
pub struct Slot {
    /// Digest of the URL part.
    pub(crate) url: Arc<str>,
    /// The header names the variant is keyed on, comma-separated.
    pub(crate) spec: Arc<str>,
    /// Digest of the request's values of `spec`, or `_` when `spec` is empty.
    pub(crate) variant: Arc<str>,
}

impl Slot {
    /// Tags an entry with the key it belongs to.
    pub(crate) fn tag(&self) -> u64 {
        super::entry::checksum(&[
            self.url.as_bytes(),
            b"\0",
            self.spec.as_bytes(),
            b"\0",
            self.variant.as_bytes(),
        ])
    }
}

/// `host[:port]` lowercased, without the scheme's default port (with no
/// scheme known, without `:80` or `:443`).
pub(crate) fn normalise_authority(authority: &[u8], scheme: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(authority.len());
    push_authority(&mut out, authority, scheme);
    out
}

/// Appends `authority` normalised as [`normalise_authority`] says.
fn push_authority(out: &mut Vec<u8>, authority: &[u8], scheme: Option<&str>) {
    let start = out.len();
    out.extend(authority.iter().map(u8::to_ascii_lowercase));
    let is = |s: &str| scheme.is_some_and(|x| x.eq_ignore_ascii_case(s));
    let defaults: &[&[u8]] = if is("http") {
        &[b":80"]
    } else if is("https") {
        &[b":443"]
    } else {
        &[b":80", b":443"]
    };
    for d in defaults {
        if out[start..].ends_with(d) {
            out.truncate(out.len() - d.len());
            return;
        }
    }
}

/// Appends the request's authority, normalised: the absolute-form URI's
/// (RFC 9112 §3.2.2: it wins over `Host`), else the `Host` field's;
/// nothing without either.
fn push_request_authority(out: &mut Vec<u8>, uri: &Uri, headers: &HeaderMap) {
    match uri.authority() {
        Some(a) => push_authority(out, a.as_str().as_bytes(), uri.scheme_str()),
        None => {
            if let Some(h) = headers.get(HOST) {
                push_authority(out, h.as_bytes(), None);
            }
        }
    }
}

/// The request's authority, normalised (see [`push_request_authority`]).
pub(crate) fn authority(uri: &Uri, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    push_request_authority(&mut out, uri, headers);
    out
}

/// The request names two authorities: an absolute-form URI and a `Host`
/// field that differ. Apps read either (axum's `Host` prefers the field),
/// so such a request must not fill the key of the URI's.
pub(crate) fn authorities_differ(uri: &Uri, headers: &HeaderMap) -> bool {
    match (uri.authority(), headers.get(HOST)) {
        (Some(a), Some(h)) => {
            normalise_authority(a.as_str().as_bytes(), uri.scheme_str())
                != normalise_authority(h.as_bytes(), uri.scheme_str())
        }
        _ => false,
    }
}

impl KeyRules {
    /// The URL digest of a GET (or HEAD) of `uri`.
    pub(crate) fn url(&self, uri: &Uri, headers: &HeaderMap) -> Arc<str> {
        let mut s = Vec::with_capacity(96);
        s.extend_from_slice(self.scope.as_bytes());
        s.extend_from_slice(b"\0GET\0");
        if self.host {
            push_request_authority(&mut s, uri, headers);
        }
        s.push(0);
        s.extend_from_slice(uri.path().as_bytes());
        if let Some(q) = uri.query() {
            let mut params: Vec<&str> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let name = p.split_once('=').map_or(*p, |(n, _)| n);
                    !self.ignore_params.iter().any(|i| i == name)
                })
                .collect();
            if self.sort_query {
                params.sort_unstable();
            }
            for (i, p) in params.iter().enumerate() {
                s.push(if i == 0 { b'?' } else { b'&' });
                s.extend_from_slice(p.as_bytes());
            }
        }
        digest_arc(&s)
    }

    /// The spec of a URL whose response did not `Vary`.
    pub(crate) fn base_spec(&self) -> Arc<str> {
        join(self.headers.iter().map(HeaderName::as_str))
    }

    /// The spec for a response: the configured key headers plus its `Vary`
    /// names. `None` for `Vary: *` (not stored).
    pub(crate) fn spec_for(&self, response: &HeaderMap) -> Option<Arc<str>> {
        let mut names: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for line in response.get_all(VARY) {
            let line = line.to_str().ok()?;
            for name in line.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" {
                    return None;
                }
                names.push(name.to_ascii_lowercase());
            }
        }
        names.sort_unstable();
        names.dedup();
        Some(join(names.iter().map(String::as_str)))
    }
}

fn join<'a>(names: impl Iterator<Item = &'a str>) -> Arc<str> {
    names.collect::<Vec<_>>().join(",").into()
}

/// The slot of a request for a URL whose variants are keyed on `spec`.
pub(crate) fn slot(url: Arc<str>, spec: Arc<str>, request: &HeaderMap) -> Slot {
    let variant = variant(&spec, request);
    Slot { url, spec, variant }
}

/// How a selecting header's request value is normalised before keying
/// (RFC 9111 §4.1: two values match when one can be turned into the other
/// by combining field lines, adding or removing whitespace where the
/// field's syntax allows it, or a normalisation known to keep its meaning).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Norm {
    /// `Accept-*`: case-insensitive lists; items trimmed, inner whitespace
    /// collapsed, lowercase.
    Accept,
    /// Free text where every byte may matter (`User-Agent`): as it is, line
    /// by line.
    Exact,
    /// Any other field: lines combined with `,` (RFC 9110 §5.3), each
    /// trimmed, the optional whitespace around commas outside quoted
    /// strings removed (the list syntax of RFC 9110 §5.6.1). Case kept.
    List,
}

fn norm(name: &str) -> Norm {
    if name == "accept" || name.starts_with("accept-") {
        Norm::Accept
    } else if name == "user-agent" {
        Norm::Exact
    } else {
        Norm::List
    }
}

/// Appends `line` trimmed, without the whitespace around its commas outside
/// quoted strings.
fn squeeze_commas(line: &[u8], out: &mut Vec<u8>) {
    let (mut quoted, mut escaped, mut after_comma) = (false, false, false);
    for &b in line.trim_ascii() {
        if quoted {
            quoted = escaped || b != b'"';
            escaped = !escaped && b == b'\\';
        } else if b == b',' {
            while out.last().is_some_and(|c| *c == b' ' || *c == b'\t') {
                out.pop();
            }
            after_comma = true;
        } else if after_comma && (b == b' ' || b == b'\t') {
            continue;
        } else {
            quoted = b == b'"';
        }
        if b != b',' {
            after_comma = false;
        }
        out.push(b);
    }
}

/// Digest of the request values of the headers in `spec`, each normalised
/// as [`norm`] says; an absent header differs from an empty one.
pub(crate) fn variant(spec: &str, request: &HeaderMap) -> Arc<str> {
    if spec.is_empty() {
        // One shared string: most URLs do not vary.
        static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        return NONE.get_or_init(|| "_".into()).clone();
    }
    let mut s = Vec::with_capacity(64);
    for name in spec.split(',') {
        s.extend_from_slice(name.as_bytes());
        s.push(b':');
        let mut lines = request.get_all(name).iter().peekable();
        if lines.peek().is_some() {
            s.push(b'=');
        }
        match norm(name) {
            Norm::Exact => {
                for line in lines {
                    s.extend_from_slice(line.as_bytes());
                    // Never a byte of a field value: lines stay apart.
                    s.push(b'\n');
                }
            }
            Norm::List => {
                for (i, line) in lines.enumerate() {
                    if i > 0 {
                        s.push(b',');
                    }
                    squeeze_commas(line.as_bytes(), &mut s);
                }
            }
            Norm::Accept => {
                let mut first = true;
                for line in lines {
                    for item in line.as_bytes().split(|b| *b == b',') {
                        let item: Vec<u8> = item
                            .split(|b| b.is_ascii_whitespace())
                            .filter(|w| !w.is_empty())
                            .collect::<Vec<_>>()
                            .join(&b' ')
                            .to_ascii_lowercase();
                        if item.is_empty() {
                            continue;
                        }
                        if !first {
                            s.push(b',');
                        }
                        first = false;
                        s.extend_from_slice(&item);
                    }
                }
            }
        }
        s.push(0);
    }
    digest_arc(&s)
}

/// [`digest`] straight into its shared string (no intermediate `String`).
fn digest_arc(bytes: &[u8]) -> Arc<str> {
    let d = crate::key::digest_array(bytes);
    // Base64url is ASCII.
    std::str::from_utf8(&d).map_or_else(|_| digest(bytes).into(), Arc::from)
}

/// The URL digest of an application key (`get_or_load`).
pub(crate) fn app_url(scope: &str, key: &str) -> Arc<str> {
    scoped(scope, "app", key)
}

/// Digest of a name of some `kind` within a layer's scope.
pub(crate) fn scoped(scope: &str, kind: &str, name: &str) -> Arc<str> {
    digest([scope, kind, name].join("\0").as_bytes()).into()
}

#[cfg(test)]
mod tests;
