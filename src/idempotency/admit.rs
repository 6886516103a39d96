//! Admission: what the layer does with a request before reading its body
//! (a pure step, like those in `steps.rs`).

use http::Request;
use http_body::Body;

use super::config::Config;
use super::key::{self, IdempotencyKey};
use super::response::Rejection;
use crate::key::{ClientKey, KeyError, RequestView};

/// What the layer does with a request, before reading its body.
#[derive(Debug)]
pub(super) enum Admit {
    /// Not covered: passed through.
    Skip,
    /// Answered at once.
    Reject(Rejection),
    /// Covered: read the body, then reserve the key of `principal`.
    Check(IdempotencyKey, ClientKey),
}

/// Classifies a request: method, key, principal, announced body size.
pub(super) fn admit<B: Body>(cfg: &Config, req: &Request<B>) -> Admit {
    if !cfg.methods.contains(req.method()) {
        return Admit::Skip;
    }
    let idem_key = match key::parse(req.headers()) {
        Ok(Some(k)) => k,
        Ok(None) if cfg.required => {
            return Admit::Reject(Rejection::bad_request(
                "this endpoint requires an Idempotency-Key header",
            ))
        }
        Ok(None) => return Admit::Skip,
        Err(why) => return Admit::Reject(Rejection::bad_request(why)),
    };
    let principal = match cfg.principal.extract(&RequestView::new(req)) {
        Ok(p) => p,
        Err(KeyError::Invalid(why)) => {
            return Admit::Reject(Rejection::bad_request(format!("invalid principal: {why}")))
        }
        Err(KeyError::Missing) => {
            return Admit::Reject(Rejection::bad_request(format!(
                "the request names no principal to scope its Idempotency-Key; looked for {}",
                cfg.principal.describe()
            )))
        }
    };
    if req.body().size_hint().lower() > cfg.max_body as u64 {
        return Admit::Reject(Rejection::TooLarge {
            max_body: cfg.max_body,
        });
    }
    Admit::Check(idem_key, principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::config::test_config as cfg;
    use bytes::Bytes;
    use http::{Method, StatusCode};
    use http_body_util::Full;

    fn req(
        method: Method,
        key: Option<&str>,
        principal: Option<&str>,
        body: &'static str,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(method).uri("/orders");
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        if let Some(p) = principal {
            b = b.header("x-api-key", p);
        }
        b.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    fn rejected(a: Admit) -> Rejection {
        match a {
            Admit::Reject(r) => r,
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[test]
    fn admit_classifies_by_method_key_principal_and_size() {
        let c = cfg(|b| b.max_body(4));
        assert!(matches!(
            admit(&c, &req(Method::GET, Some("k"), Some("a"), "")),
            Admit::Skip
        ));
        assert!(matches!(
            admit(&c, &req(Method::POST, None, Some("a"), "")),
            Admit::Skip
        ));
        assert!(matches!(
            admit(&c, &req(Method::POST, Some("k"), Some("a"), "abcd")),
            Admit::Check(..)
        ));
        let r = rejected(admit(&c, &req(Method::POST, Some(""), Some("a"), "")));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = rejected(admit(&c, &req(Method::POST, Some("k"), None, "")));
        assert!(r.detail().contains("principal"), "{r:?}");
        let r = rejected(admit(&c, &req(Method::POST, Some("k"), Some("a"), "abcde")));
        assert_eq!(r, Rejection::TooLarge { max_body: 4 });
        let unbounded = cfg(|b| b.max_body(usize::MAX));
        let huge = req(Method::POST, Some("k"), Some("a"), "abcde");
        assert!(
            matches!(admit(&unbounded, &huge), Admit::Check(..)),
            "no overflow"
        );
        let required = cfg(|b| b.required(true));
        let r = rejected(admit(&required, &req(Method::POST, None, Some("a"), "")));
        assert!(r.detail().contains("requires an Idempotency-Key"), "{r:?}");
    }
}
