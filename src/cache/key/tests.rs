//! Unit tests of the cache key rules.

use super::*;

fn rules() -> KeyRules {
    KeyRules {
        scope: "s".into(),
        sort_query: true,
        ignore_params: vec!["utm_source".into()],
        ..KeyRules::default()
    }
}

#[test]
fn query_is_normalised() {
    let r = rules();
    let h = HeaderMap::new();
    let a = r.url(&"/p?b=2&a=1&utm_source=x".parse().unwrap(), &h);
    let b = r.url(&"/p?a=1&b=2".parse().unwrap(), &h);
    assert_eq!(a, b);
    assert_ne!(a, r.url(&"/p?a=1&b=3".parse().unwrap(), &h));
    assert_ne!(a, r.url(&"/q?a=1&b=2".parse().unwrap(), &h));
}

#[test]
fn authorities_are_normalised() {
    let n = |a: &str, scheme| String::from_utf8(normalise_authority(a.as_bytes(), scheme)).unwrap();
    assert_eq!(n("API.Example:80", Some("http")), "api.example");
    assert_eq!(n("api.example:443", Some("https")), "api.example");
    assert_eq!(n("api.example:443", Some("http")), "api.example:443");
    assert_eq!(n("api.example:443", None), "api.example");
    assert_eq!(n("api.example:8080", None), "api.example:8080");
    let mut h = HeaderMap::new();
    h.insert(HOST, "Good.Example".parse().unwrap());
    let abs: Uri = "http://good.example:80/p".parse().unwrap();
    assert_eq!(authority(&abs, &h), b"good.example");
    assert!(!authorities_differ(&abs, &h));
    let other: Uri = "http://evil.example/p".parse().unwrap();
    assert_eq!(authority(&other, &h), b"evil.example", "the URI's wins");
    assert!(authorities_differ(&other, &h));
    assert!(!authorities_differ(&"/p".parse().unwrap(), &h));
}

#[test]
fn host_unless_configured_off() {
    let mut h1 = HeaderMap::new();
    h1.insert(HOST, "a.example".parse().unwrap());
    let mut h2 = HeaderMap::new();
    h2.insert(HOST, "b.example".parse().unwrap());
    let uri: Uri = "/p".parse().unwrap();
    let r = KeyRules {
        host: true,
        ..rules()
    };
    assert_ne!(r.url(&uri, &h1), r.url(&uri, &h2));
    let mut h3 = HeaderMap::new();
    h3.insert(HOST, "A.example:80".parse().unwrap());
    assert_eq!(r.url(&uri, &h1), r.url(&uri, &h3));
    assert_eq!(
        r.url(&"http://a.example/p".parse().unwrap(), &h2),
        r.url(&uri, &h1)
    );
    let r = rules();
    assert_eq!(r.url(&uri, &h1), r.url(&uri, &h2));
}

#[test]
fn vary_values_are_normalised() {
    let mut resp = HeaderMap::new();
    resp.append(VARY, "Accept-Encoding, accept-language".parse().unwrap());
    let spec = rules().spec_for(&resp).unwrap();
    assert_eq!(&*spec, "accept-encoding,accept-language");
    let mut a = HeaderMap::new();
    a.append("accept-encoding", "gzip,  BR".parse().unwrap());
    let mut b = HeaderMap::new();
    b.append("accept-encoding", "gzip".parse().unwrap());
    b.append("accept-encoding", "br".parse().unwrap());
    assert_eq!(variant(&spec, &a), variant(&spec, &b));
    assert_ne!(variant(&spec, &a), variant(&spec, &HeaderMap::new()));
    resp.append(VARY, "*".parse().unwrap());
    assert!(rules().spec_for(&resp).is_none());
}

fn one(name: &'static str, v: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.append(name, v.parse().unwrap());
    h
}

#[test]
fn rfc9111_4_1_other_vary_values_match_across_line_combining_and_list_whitespace() {
    let spec = "x-tenant";
    let v = |h: &HeaderMap| variant(spec, h);
    let x = |s| one("x-tenant", s);
    assert_ne!(v(&x("Acme")), v(&x("acme")), "case is kept");
    assert_eq!(
        v(&x("a,b")),
        v(&x(" a ,\tb ")),
        "whitespace around commas is not"
    );
    let mut two = x("a");
    two.append("x-tenant", "b".parse().unwrap());
    assert_eq!(v(&two), v(&x("a, b")), "lines combine into a list");
    assert_ne!(v(&two), v(&x("ab")));
    assert_ne!(v(&x("a b")), v(&x("ab")), "whitespace elsewhere matters");
    assert_ne!(
        v(&x("\"a , b\"")),
        v(&x("\"a,b\"")),
        "quoted strings are kept"
    );
    assert_eq!(v(&x("\"q\\\"\" , b")), v(&x("\"q\\\"\",b")));
    assert_ne!(v(&x("")), v(&HeaderMap::new()), "empty is not absent");
    assert_eq!(v(&x("Acme")), v(&x("Acme")));
}

#[test]
fn user_agent_values_are_compared_byte_for_byte() {
    let ua = |s| variant("user-agent", &one("user-agent", s));
    assert_ne!(ua("m (KHTML, like Gecko)"), ua("m (KHTML,like Gecko)"));
    assert_eq!(ua("m (KHTML, like Gecko)"), ua("m (KHTML, like Gecko)"));
}
