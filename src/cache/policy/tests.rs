use super::*;

/// 2026-01-01T00:00:00Z, in ms.
const NOW: u64 = 1_767_225_600_000;

fn app() -> Rules {
    Rules {
        default_ttl: Some(Duration::from_secs(30)),
        negative_ttl: None,
        jitter: 0.0,
        keep_stale: Duration::from_secs(60),
        strip_set_cookie: false,
        cache_authorized: false,
        share_cookie_requests: false,
        heuristic: Some(Heuristic::default()),
        stale_if_unreachable: Duration::ZERO,
        targeted: Vec::new(),
    }
}

fn pure() -> Rules {
    Rules {
        default_ttl: None,
        ..app()
    }
}

const AUTH: Asked = Asked {
    authorized: true,
    cookie: false,
};
const COOKIE: Asked = Asked {
    authorized: false,
    cookie: true,
};

fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(*k, http::HeaderValue::from_static(v));
    }
    m
}

fn v(r: &Rules, status: u16, pairs: &[(&'static str, &'static str)]) -> Verdict {
    let s = StatusCode::from_u16(status).unwrap();
    verdict(r, Asked::default(), s, &h(pairs), NOW)
}

fn fresh(v: Verdict) -> u64 {
    match v {
        Verdict::Store(l) => l.fresh_ms,
        Verdict::Pass(why) => panic!("passed: {why}"),
    }
}

const MAX60: (&str, &str) = ("cache-control", "max-age=60");
const LM_DAY: [(&str, &str); 2] = [
    ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
    ("last-modified", "Wed, 31 Dec 2025 00:00:00 GMT"),
];

#[test]
fn lifetime_precedence() {
    let r = app();
    assert_eq!(
        fresh(v(&r, 200, &[("cache-control", "max-age=10, s-maxage=20")])),
        20_000
    );
    assert_eq!(
        fresh(v(&r, 200, &[("cache-control", "max-age=10")])),
        10_000
    );
    let expires = [
        ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ("expires", "Thu, 01 Jan 2026 00:00:45 GMT"),
    ];
    assert_eq!(fresh(v(&r, 200, &expires)), 45_000);
    assert_eq!(fresh(v(&r, 200, &[])), 30_000, "the default TTL");
    assert_eq!(
        fresh(v(&r, 200, &[("cache-control", "max-age=10"), ("age", "4")])),
        6_000
    );
    assert_eq!(v(&r, 200, &[("expires", "0")]), Verdict::Pass("stale"));
    assert_eq!(v(&pure(), 200, &[]), Verdict::Pass("no-freshness"));
}

#[test]
fn rfc9111_3_any_final_status_with_explicit_freshness_is_stored() {
    for s in [
        200, 201, 299, 302, 303, 307, 400, 404, 410, 499, 500, 502, 503, 504, 599,
    ] {
        assert_eq!(fresh(v(&pure(), s, &[MAX60])), 60_000, "{s}");
    }
    for s in [100, 103, 304] {
        assert_eq!(v(&pure(), s, &[MAX60]), Verdict::Pass("status"), "{s}");
    }
    let unsatisfiable = v(&pure(), 416, &[MAX60]);
    assert_eq!(
        unsatisfiable,
        Verdict::Pass("unsatisfiable"),
        "about its request"
    );
}

#[test]
fn rfc9111_3_3_a_206_is_stored_when_it_is_one_range_of_a_known_length() {
    let one = ("content-range", "bytes 0-4/10");
    assert_eq!(fresh(v(&pure(), 206, &[MAX60, one])), 60_000);
    let unknown = ("content-range", "bytes 0-4/*");
    assert_eq!(v(&pure(), 206, &[MAX60, unknown]), Verdict::Pass("partial"));
    assert_eq!(v(&pure(), 206, &[MAX60]), Verdict::Pass("partial"));
    let multi = ("content-type", "multipart/byteranges; boundary=x");
    assert_eq!(v(&pure(), 206, &[MAX60, multi]), Verdict::Pass("partial"));
}

#[test]
fn rfc9110_15_1_heuristically_cacheable_statuses_get_heuristic_freshness() {
    for s in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
        assert_eq!(
            fresh(v(&pure(), s, &LM_DAY)),
            8_640_000,
            "{s}: 10% of a day"
        );
    }
    for s in [201, 202, 302, 403, 502, 503, 504, 599] {
        assert_eq!(v(&pure(), s, &LM_DAY), Verdict::Pass("status"), "{s}");
    }
    let public = [LM_DAY[0], LM_DAY[1], ("cache-control", "public")];
    assert_eq!(
        fresh(v(&pure(), 599, &public)),
        8_640_000,
        "public: any status"
    );
    let off = Rules {
        heuristic: None,
        ..pure()
    };
    assert_eq!(v(&off, 200, &LM_DAY), Verdict::Pass("no-freshness"));
    // A default TTL takes the place of heuristics.
    assert_eq!(fresh(v(&app(), 200, &LM_DAY)), 30_000);
    // With only an ETag: stored stale, to be revalidated.
    match v(&pure(), 200, &[("etag", "\"x\"")]) {
        Verdict::Store(l) => assert_eq!((l.fresh_ms, l.keep_ms), (0, 60_000)),
        v => panic!("{v:?}"),
    }
}

#[test]
fn rfc9111_5_2_2_3_must_understand_stores_only_statuses_understood() {
    let mu = [("cache-control", "must-understand, no-store, max-age=60")];
    assert_eq!(fresh(v(&pure(), 200, &mu)), 60_000, "no-store lifted");
    assert_eq!(v(&pure(), 299, &mu), Verdict::Pass("must-understand"));
    assert_eq!(
        v(&pure(), 200, &[("cache-control", "no-store, max-age=60")]),
        Verdict::Pass("no-store")
    );
}

#[test]
fn rfc9111_3_5_authorization_only_with_public_s_maxage_or_must_revalidate() {
    let ok = StatusCode::OK;
    assert_eq!(
        verdict(&pure(), AUTH, ok, &h(&[MAX60]), NOW),
        Verdict::Pass("authorization")
    );
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        let got = verdict(&pure(), AUTH, ok, &h(&[("cache-control", cc)]), NOW);
        assert!(matches!(got, Verdict::Store(_)), "{cc}");
    }
}

#[test]
fn rfc9111_4_2_1_conflicting_directives_honour_the_most_restrictive() {
    let r = pure();
    match v(
        &r,
        200,
        &[
            ("cache-control", "max-age=60, no-cache"),
            ("etag", "\"v1\""),
        ],
    ) {
        Verdict::Store(l) => {
            assert_eq!(l.fresh_ms, 0);
            assert!(l.must_revalidate);
            assert_eq!(l.keep_ms, 60_000);
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(
        v(&r, 200, &[("cache-control", "public, private, max-age=60")]),
        Verdict::Pass("private")
    );
    assert_eq!(
        v(&r, 200, &[("cache-control", "max-age=60, no-store")]),
        Verdict::Pass("no-store")
    );
    let dup = [
        ("cache-control", "max-age=60"),
        ("cache-control", "max-age=1"),
    ];
    assert_eq!(fresh(v(&r, 200, &dup)), 60_000, "the first");
}

#[test]
fn rfc9111_5_2_2_10_s_maxage_is_marked_and_proxy_revalidate_forbids_stale() {
    match v(
        &pure(),
        200,
        &[("cache-control", "s-maxage=5, stale-while-revalidate=9")],
    ) {
        Verdict::Store(l) => assert!(l.s_maxage && !l.must_revalidate && l.swr_s == 9),
        v => panic!("{v:?}"),
    }
    match v(
        &pure(),
        200,
        &[(
            "cache-control",
            "max-age=5, proxy-revalidate, stale-if-error=9",
        )],
    ) {
        Verdict::Store(l) => assert!(l.must_revalidate && l.sie_s == 0),
        v => panic!("{v:?}"),
    }
}

#[test]
fn rfc9111_4_2_4_entries_are_kept_for_stale_if_unreachable_unless_forbidden() {
    let r = Rules {
        stale_if_unreachable: Duration::from_secs(600),
        ..pure()
    };
    let keep = |cc: &'static str| match v(&r, 200, &[("cache-control", cc)]) {
        Verdict::Store(l) => l.keep_ms,
        Verdict::Pass(why) => panic!("{cc}: {why}"),
    };
    assert_eq!(keep("max-age=60"), 660_000);
    assert_eq!(keep("max-age=60, must-revalidate"), 60_000);
    assert_eq!(keep("max-age=60, proxy-revalidate"), 60_000);
    assert_eq!(keep("s-maxage=60"), 60_000);
    assert_eq!(
        keep("s-maxage=60, stale-if-error=30"),
        90_000,
        "explicitly allowed"
    );
}

#[test]
fn qualified_private_and_no_cache_store_the_response_without_those_fields() {
    let r = pure();
    let named = [
        ("cache-control", "private=\"set-cookie\", max-age=60"),
        ("set-cookie", "a=b"),
    ];
    assert_eq!(fresh(v(&r, 200, &named)), 60_000);
    assert_eq!(
        fresh(v(
            &r,
            200,
            &[("cache-control", "no-cache=\"x-a\", max-age=60")]
        )),
        60_000
    );
}

#[test]
fn what_is_never_stored_by_default() {
    let r = app();
    assert_eq!(
        v(&r, 200, &[("cache-control", "no-store")]),
        Verdict::Pass("no-store")
    );
    assert_eq!(
        v(&r, 200, &[("cache-control", "private")]),
        Verdict::Pass("private")
    );
    assert_eq!(
        v(&r, 200, &[("set-cookie", "a=b")]),
        Verdict::Pass("set-cookie")
    );
    assert_eq!(
        verdict(&r, AUTH, StatusCode::OK, &h(&[]), NOW),
        Verdict::Pass("authorization")
    );
    let public = h(&[("cache-control", "public")]);
    assert!(matches!(
        verdict(&r, AUTH, StatusCode::OK, &public, NOW),
        Verdict::Store(_)
    ));
    assert_eq!(v(&r, 302, &[]), Verdict::Pass("status"));
}

#[test]
fn in_application_mode_errors_are_stored_only_with_a_negative_ttl() {
    let r = app();
    assert_eq!(v(&r, 404, &[]), Verdict::Pass("negative"));
    assert_eq!(v(&r, 404, &[MAX60]), Verdict::Pass("negative"));
    assert_eq!(v(&r, 500, &[MAX60]), Verdict::Pass("negative"));
    let neg = Rules {
        negative_ttl: Some(Duration::from_secs(5)),
        ..app()
    };
    assert_eq!(fresh(v(&neg, 404, &[MAX60])), 5_000);
    assert_eq!(fresh(v(&neg, 404, &[])), 5_000);
    // A pure HTTP cache stores what the origin says, within the negative TTL if set.
    assert_eq!(fresh(v(&pure(), 404, &[MAX60])), 60_000);
    let capped = Rules {
        negative_ttl: Some(Duration::from_secs(5)),
        ..pure()
    };
    assert_eq!(fresh(v(&capped, 404, &[MAX60])), 5_000);
    assert_eq!(fresh(v(&capped, 404, &[])), 5_000);
}

#[test]
fn a_request_with_cookies_fills_only_what_the_response_shares() {
    let r = app();
    let ok = StatusCode::OK;
    assert_eq!(
        verdict(&r, COOKIE, ok, &h(&[]), NOW),
        Verdict::Pass("cookie"),
        "default TTL"
    );
    assert_eq!(
        verdict(&r, COOKIE, ok, &h(&[MAX60]), NOW),
        Verdict::Pass("cookie")
    );
    for shared in ["public, max-age=60", "s-maxage=60"] {
        let v = verdict(&r, COOKIE, ok, &h(&[("cache-control", shared)]), NOW);
        assert!(matches!(v, Verdict::Store(_)), "{shared}");
    }
    let open = Rules {
        share_cookie_requests: true,
        ..app()
    };
    assert!(matches!(
        verdict(&open, COOKIE, ok, &h(&[]), NOW),
        Verdict::Store(_)
    ));
}

#[test]
fn jitter_only_shortens() {
    for _ in 0..100 {
        let j = jittered(10_000, 0.1);
        assert!((9_000..=10_000).contains(&j), "{j}");
    }
}

#[test]
fn rfc9111_5_4_a_response_pragma_is_ignored_but_blocks_heuristics_without_cache_control() {
    let pragma = ("pragma", "no-cache");
    assert_eq!(fresh(v(&pure(), 200, &[MAX60, pragma])), 60_000);
    let heuristic = [LM_DAY[0], LM_DAY[1], pragma];
    assert_eq!(v(&pure(), 200, &heuristic), Verdict::Pass("no-freshness"));
    let public = [LM_DAY[0], LM_DAY[1], pragma, ("cache-control", "public")];
    assert_eq!(fresh(v(&pure(), 200, &public)), 8_640_000);
    let other = [LM_DAY[0], LM_DAY[1], ("pragma", "x-extension")];
    assert_eq!(fresh(v(&pure(), 200, &other)), 8_640_000);
}
