//! ResponseCacheLayer behaviour, on every store (conformance) and on Redis
//! alone (several instances, corrupt entries, round trips, outages).

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redis_layers::cache::{CacheStore, ResponseCacheLayer, ResponseCacheLayerBuilder};

/// An origin body of separate chunks with no size hint: every test
/// exercises the streaming capture.
#[derive(Debug, Default)]
struct Chunks(VecDeque<Bytes>);

impl Chunks {
    fn of(parts: &[&str]) -> Self {
        Self(parts.iter().map(|p| Bytes::from(p.to_string())).collect())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

type Handler = dyn Fn(&Request<Full<Bytes>>, usize) -> Response<Chunks> + Send + Sync;

#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    delay: Duration,
    handler: Arc<Handler>,
}

impl Origin {
    fn new(
        handler: impl Fn(&Request<Full<Bytes>>, usize) -> Response<Chunks> + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            delay: Duration::ZERO,
            handler: Arc::new(handler),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<Full<Bytes>>> for Origin {
    type Response = Response<Chunks>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Chunks>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let res = (self.handler)(&req, n);
        let delay = self.delay;
        let (in_flight, max) = (self.in_flight.clone(), self.max_in_flight.clone());
        Box::pin(async move {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(now, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(res)
        })
    }
}

fn res(headers: &[(&str, &str)], body: &str) -> Response<Chunks> {
    let mut b = Response::builder();
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let half = body.len() / 2;
    b.body(Chunks::of(&[&body[..half], &body[half..]])).unwrap()
}

/// An origin answering `v<n>` (n = its call count) with these fields.
fn versioned(headers: &'static [(&'static str, &'static str)]) -> Origin {
    Origin::new(move |_, n| res(headers, &format!("v{n}")))
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn cache_status(&self) -> String {
        self.headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

fn with(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

fn builder(store: impl CacheStore) -> ResponseCacheLayerBuilder {
    ResponseCacheLayer::builder(store).jitter(0.0)
}

async fn send<S>(svc: &S, req: Request<Full<Bytes>>) -> Got
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Response: Into<Response<tower_redis_layers::ResponseBody<Chunks>>>,
    S::Error: std::fmt::Debug,
{
    let res: Response<_> = svc.clone().oneshot(req).await.unwrap().into();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    // Let the background write land before the next request.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn cached(
    layer: ResponseCacheLayer,
    origin: &Origin,
) -> tower_redis_layers::cache::ResponseCache<Origin> {
    ServiceBuilder::new().layer(layer).service(origin.clone())
}

const MAX60: &[(&str, &str)] = &[("cache-control", "max-age=60")];

/// An origin with a version its PUTs advance; its GET number `hold`
/// (the first by default) reads the version, then is held until
/// [`release`](Self::release). GETs answer `v<version>` with `cc`.
#[derive(Clone)]
struct HeldOrigin {
    version: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Notify>,
    hold: usize,
    cc: &'static str,
    /// `Surrogate-Key` of its GETs (none when empty).
    tags: &'static str,
}

impl Default for HeldOrigin {
    fn default() -> Self {
        Self {
            version: Arc::default(),
            gets: Arc::default(),
            gate: Arc::default(),
            hold: 1,
            cc: "max-age=60",
            tags: "",
        }
    }
}

impl HeldOrigin {
    /// Waits until `n` GETs reached the origin.
    async fn reached(&self, n: usize) {
        while self.gets.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn release(&self) {
        self.gate.notify_one();
    }
}

impl Service<Request<Full<Bytes>>> for HeldOrigin {
    type Response = Response<Chunks>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Chunks>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.method() == Method::PUT {
                this.version.fetch_add(1, Ordering::SeqCst);
                return Ok(res(&[], ""));
            }
            let v = this.version.load(Ordering::SeqCst);
            if this.gets.fetch_add(1, Ordering::SeqCst) + 1 == this.hold {
                this.gate.notified().await;
            }
            let mut r = res(&[("cache-control", this.cc)], &format!("v{v}"));
            if !this.tags.is_empty() {
                r.headers_mut()
                    .insert("surrogate-key", http::HeaderValue::from_static(this.tags));
            }
            Ok(r)
        })
    }
}

/// The body of a GET through `svc`, read whole.
async fn body_of<S>(svc: &S, req: Request<Full<Bytes>>) -> Bytes
where
    S: Service<Request<Full<Bytes>>, Response = Response<tower_redis_layers::ResponseBody<Chunks>>>
        + Clone,
    S::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes()
}

/// An origin that reflects every vector into a page stored for 30 s by
/// the layer's default TTL (no `Cache-Control`), as many apps do.
fn reflecting() -> Origin {
    Origin::new(|req, _| res(&[], &support::reflected_page(req.headers())))
}

conformance! {
    async fn fresh_hits_carry_age_and_cache_status(store) {
        let origin = versioned(MAX60);
        let svc = cached(builder(store).build().unwrap(), &origin);
        let first = send(&svc, get("/a")).await;
        assert_eq!(first.body, "v1");
        assert!(first.cache_status().starts_with("trl; fwd=miss; fwd-status=200; stored; ttl=60"), "{}", first.cache_status());
        let hit = send(&svc, get("/a")).await;
        assert_eq!(hit.body, "v1");
        assert_eq!(hit.headers["cache-control"], "max-age=60");
        assert!(hit.cache_status().starts_with("trl; hit; ttl=5"), "{}", hit.cache_status());
        let age: u64 = hit.headers["age"].to_str().unwrap().parse().unwrap();
        assert!(age <= 1);
        assert_eq!(origin.calls(), 1);
        // Another path is another key.
        assert_eq!(send(&svc, get("/b")).await.body, "v2");
    }

    async fn head_is_answered_from_the_get_entry(store) {
        let origin = versioned(MAX60);
        let svc = cached(builder(store).build().unwrap(), &origin);
        send(&svc, get("/h")).await;
        let head = send(&svc, with(Method::HEAD, "/h", &[])).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        assert!(head.cache_status().contains("hit"));
        assert_eq!(origin.calls(), 1);
    }

    async fn ttl_precedence_and_pure_http_cache(store) {
        // No freshness and no default TTL: not stored.
        let origin = versioned(&[]);
        let svc = cached(builder(store.clone()).scope("pure").build().unwrap(), &origin);
        send(&svc, get("/p")).await;
        let again = send(&svc, get("/p")).await;
        assert_eq!(again.body, "v2");
        assert!(again.cache_status().contains("detail=no-freshness"), "{}", again.cache_status());
        // The application TTL applies when the response states none...
        let origin = versioned(&[]);
        let svc = cached(builder(store.clone()).scope("app").default_ttl(Duration::from_secs(30)).build().unwrap(), &origin);
        assert!(send(&svc, get("/p")).await.cache_status().contains("ttl=30"));
        assert_eq!(send(&svc, get("/p")).await.body, "v1");
        // ...and s-maxage wins over max-age and the default.
        let origin = versioned(&[("cache-control", "max-age=10, s-maxage=20")]);
        let svc = cached(builder(store).scope("smax").default_ttl(Duration::from_secs(30)).build().unwrap(), &origin);
        assert!(send(&svc, get("/p")).await.cache_status().contains("stored; ttl=20"));
    }

    async fn private_set_cookie_and_no_store_are_never_served_to_another_client(store) {
        for (i, headers) in [
            &[("cache-control", "max-age=60, private")][..],
            &[("cache-control", "max-age=60"), ("set-cookie", "session=alice")][..],
            &[("cache-control", "max-age=60, no-store")][..],
        ].into_iter().enumerate() {
            let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let origin = Origin::new(move |_, n| {
                let mut r = res(&[], &format!("secret-{n}"));
                for (k, v) in &headers {
                    r.headers_mut().append(http::HeaderName::try_from(k.as_str()).unwrap(), v.parse().unwrap());
                }
                r
            });
            let svc = cached(builder(store.clone()).scope(format!("s{i}")).build().unwrap(), &origin);
            assert_eq!(send(&svc, get("/me")).await.body, "secret-1");
            let other = send(&svc, get("/me")).await;
            assert_eq!(other.body, "secret-2", "case {i}");
            assert!(!other.cache_status().contains("hit"));
        }
    }

    async fn set_cookie_responses_stored_only_when_configured_and_without_the_cookie(store) {
        let origin = versioned(&[("cache-control", "max-age=60"), ("set-cookie", "session=alice")]);
        let svc = cached(builder(store).store_set_cookie_responses(true).build().unwrap(), &origin);
        let first = send(&svc, get("/c")).await;
        assert!(first.headers.contains_key("set-cookie"), "the filling client keeps its cookie");
        let hit = send(&svc, get("/c")).await;
        assert_eq!(hit.body, "v1");
        assert!(!hit.headers.contains_key("set-cookie"));
    }

    async fn requests_with_authorization_bypass_the_cache(store) {
        let origin = Origin::new(|req, n| {
            let who = req.headers().get("authorization").map_or("anon", |v| v.to_str().unwrap()).to_owned();
            res(&[("cache-control", "max-age=60")], &format!("{who}-{n}"))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let alice = send(&svc, with(Method::GET, "/doc", &[("authorization", "Bearer alice")])).await;
        assert_eq!(alice.body, "Bearer alice-1");
        assert!(alice.cache_status().contains("fwd=bypass"));
        let anon = send(&svc, get("/doc")).await;
        assert_eq!(anon.body, "anon-2", "alice's response was not stored");
        let bob = send(&svc, with(Method::GET, "/doc", &[("authorization", "Bearer bob")])).await;
        assert_eq!(bob.body, "Bearer bob-3", "bob is not served the anonymous entry");
    }

    async fn an_unkeyed_forwarded_host_cannot_poison_the_cache(store) {
        // The origin reflects X-Forwarded-Host into the page without Vary.
        let origin = Origin::new(|req, _| {
            let host = req.headers().get("x-forwarded-host").map_or("example.com", |v| v.to_str().unwrap()).to_owned();
            res(&[("cache-control", "max-age=60")], &format!("<script src=//{host}/app.js>"))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let attack = send(&svc, with(Method::GET, "/page", &[("x-forwarded-host", "evil.example")])).await;
        assert!(attack.body.ends_with(b"evil.example/app.js>"));
        let victim = send(&svc, get("/page")).await;
        assert_eq!(victim.body, "<script src=//example.com/app.js>");
        // Once the clean page is stored, the attacker is served it too.
        let again = send(&svc, with(Method::GET, "/page", &[("x-forwarded-host", "evil.example")])).await;
        assert_eq!(again.body, "<script src=//example.com/app.js>");
        assert_eq!(send(&svc, get("/page")).await.body, "<script src=//example.com/app.js>");
        assert_eq!(origin.calls(), 2);
    }

    async fn no_poisoning_vector_fills_the_entry_clean_clients_read(store) {
        let origin = reflecting();
        let svc = cached(builder(store).default_ttl(Duration::from_secs(30)).build().unwrap(), &origin);
        let clean_page = "page host=good.example";
        for (i, (name, value)) in support::POISON_VECTORS.iter().enumerate() {
            let path = format!("/p{i}");
            let mut poisoned = vec![("host", "good.example")];
            match *name {
                "host" => poisoned[0].1 = value,
                _ => poisoned.push((name, value)),
            }
            // The poisoned request may get anything...
            send(&svc, with(Method::GET, &path, &poisoned)).await;
            // ...the next clean client gets the clean page, and so does the one after.
            for _ in 0..2 {
                let clean = send(&svc, with(Method::GET, &path, &[("host", "good.example")])).await;
                assert_eq!(clean.body, clean_page, "vector {name}");
            }
        }
        // An absolute-form request naming one host while `Host` names another.
        let abs = with(Method::GET, "http://good.example/abs", &[("host", "evil.example")]);
        send(&svc, abs).await;
        let clean = send(&svc, with(Method::GET, "/abs", &[("host", "good.example")])).await;
        assert_eq!(clean.body, clean_page, "absolute-form");
        // Hosts never share entries, and ports and case are normalised.
        let other = send(&svc, with(Method::GET, "/p0", &[("host", "other.example")])).await;
        assert_eq!(other.body, "page host=other.example");
        let same = send(&svc, with(Method::GET, "/p0", &[("host", "Good.Example:80")])).await;
        assert_eq!(same.body, clean_page);
        assert!(same.cache_status().contains("hit"), "{}", same.cache_status());
    }

    async fn cookie_requests_fill_only_responses_that_share_themselves(store) {
        let origin = Origin::new(|req, n| {
            let shared = req.uri().path() == "/public";
            let cc = if shared { "public, max-age=60" } else { "max-age=60" };
            res(&[("cache-control", cc)], &format!("v{n}"))
        });
        let svc = cached(builder(store.clone()).default_ttl(Duration::from_secs(30)).build().unwrap(), &origin);
        let cookie = [("cookie", "session=alice")];
        let first = send(&svc, with(Method::GET, "/private", &cookie)).await;
        assert!(first.cache_status().contains("detail=cookie"), "{}", first.cache_status());
        assert_eq!(send(&svc, get("/private")).await.body, "v2", "not stored from the cookie request");
        assert_eq!(send(&svc, with(Method::GET, "/private", &cookie)).await.body, "v2", "but served to it");
        send(&svc, with(Method::GET, "/public", &cookie)).await;
        assert_eq!(send(&svc, get("/public")).await.body, "v3", "public: stored");
        // Opted out: a cookie is a header like any other.
        let svc = cached(builder(store).scope("open").share_cookie_requests(true).build().unwrap(), &origin);
        let n = origin.calls() + 1;
        send(&svc, with(Method::GET, "/private", &cookie)).await;
        assert_eq!(send(&svc, get("/private")).await.body, format!("v{n}"));
    }

    async fn overflowing_settings_are_build_errors_and_app_ttls_are_clamped(store) {
        for b in [
            builder(store.clone()).max_wait(Duration::MAX),
            builder(store.clone()).lock_ttl(Duration::MAX),
            builder(store.clone()).default_ttl(Duration::ZERO),
            builder(store.clone()).default_ttl(Duration::MAX),
            builder(store.clone()).negative_ttl(Duration::MAX),
            builder(store.clone()).keep_stale(Duration::MAX),
            builder(store.clone()).l1(10, Duration::MAX),
        ] {
            assert!(b.build().is_err());
        }
        let handle = builder(store).build().unwrap().handle();
        for _ in 0..2 {
            let v = handle
                .get_or_load("forever", Duration::MAX, || async { Ok::<_, Infallible>(Bytes::from_static(b"v")) })
                .await;
            assert_eq!(v, Ok(Bytes::from_static(b"v")));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let not_loaded = handle
            .get_or_load("forever", Duration::MAX, || async { Err::<Bytes, _>("loaded again") })
            .await;
        assert_eq!(not_loaded, Ok(Bytes::from_static(b"v")), "stored, clamped to ten years");
    }

    async fn a_write_wins_over_a_fill_in_flight_on_three_instances(store) {
        let origin = HeldOrigin::default();
        let layers: Vec<_> = (0..3).map(|_| builder(store.clone()).build().unwrap()).collect();
        let [a, b, c] = [0, 1, 2].map(|i| ServiceBuilder::new().layer(layers[i].clone()).service(origin.clone()));
        // A's fill reads version 0 at the origin, which then holds it.
        let held = tokio::spawn({
            let a = a.clone();
            async move { body_of(&a, get("/item")).await }
        });
        origin.reached(1).await;
        // The write completes while that fill is in flight.
        let put = b.clone().oneshot(with(Method::PUT, "/item", &[])).await.unwrap();
        assert_eq!(put.status(), StatusCode::OK);
        drop(put);
        // Reads that start after the write's response, on every instance,
        // one of them behind A's own flight.
        let reads: Vec<_> = [a.clone(), b.clone(), c.clone(), a.clone()]
            .into_iter()
            .map(|svc| tokio::spawn(async move { body_of(&svc, get("/item")).await }))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        origin.release();
        assert_eq!(held.await.unwrap(), "v0", "the fill's own client, concurrent with the write");
        for r in reads {
            assert_eq!(r.await.unwrap(), "v1", "a read after the write's response");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for svc in [&a, &b, &c] {
            assert_eq!(body_of(svc, get("/item")).await, "v1", "the old fill never landed");
        }
    }

    async fn a_client_that_never_reads_does_not_hold_up_the_others(store) {
        // A cold, large response (64 chunks of 4 KiB) and a client that
        // takes the response but never reads its body.
        let big = "x".repeat(4096);
        let origin = Origin::new(move |_, n| {
            let mut r = res(&[("cache-control", "max-age=60")], "");
            *r.body_mut() = Chunks((0..64).map(|i| Bytes::from(if i == 0 { format!("{n:04}") } else { big.clone() })).collect());
            r
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let stalled = svc.clone().oneshot(get("/big")).await.unwrap();
        assert_eq!(stalled.status(), StatusCode::OK);
        // Everyone else is served from the entry at once, while that client sleeps.
        for _ in 0..3 {
            let other = svc.clone().oneshot(get("/big")).await.unwrap();
            let status = other.headers()["cache-status"].to_str().unwrap().to_owned();
            assert!(status.contains("hit") || status.contains("collapsed"), "{status}");
            let body = other.into_body().collect().await.unwrap().to_bytes();
            assert_eq!((body.len(), &body[..4]), (4 + 63 * 4096, &b"0001"[..]));
        }
        assert_eq!(origin.calls(), 1, "no extra origin call");
        // And the sleeping client still gets the whole body when it reads.
        let body = stalled.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 4 + 63 * 4096);
    }

    async fn vary_values_are_case_folded_only_for_accept_headers(store) {
        let origin = Origin::new(|req, n| {
            let t = req.headers().get("x-tenant").map_or("-", |v| v.to_str().unwrap()).to_owned();
            res(&[("cache-control", "max-age=60"), ("vary", "x-tenant")], &format!("{t}-{n}"))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let tenant = |t: &str| with(Method::GET, "/t", &[("x-tenant", t)]);
        assert_eq!(send(&svc, tenant("Acme")).await.body, "Acme-1");
        assert_eq!(send(&svc, tenant("acme")).await.body, "acme-2", "case matters outside Accept-*");
        assert_eq!(send(&svc, tenant("Acme")).await.body, "Acme-1");
    }

    async fn vary_keys_variants_and_vary_star_is_not_stored(store) {
        let origin = Origin::new(|req, n| {
            let lang = req.headers().get("accept-language").map_or("none", |v| v.to_str().unwrap()).to_owned();
            res(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")], &format!("{lang}-{n}"))
        });
        let svc = cached(builder(store.clone()).build().unwrap(), &origin);
        let lang = |l: &str| with(Method::GET, "/v", &[("accept-language", l)]);
        assert_eq!(send(&svc, lang("en")).await.body, "en-1");
        assert_eq!(send(&svc, lang("de")).await.body, "de-2");
        assert_eq!(send(&svc, lang("EN")).await.body, "en-1", "values are normalised");
        assert_eq!(send(&svc, lang("de")).await.body, "de-2");
        assert_eq!(origin.calls(), 2);

        let origin = versioned(&[("cache-control", "max-age=60"), ("vary", "*")]);
        let svc = cached(builder(store).scope("star").build().unwrap(), &origin);
        send(&svc, get("/v")).await;
        let again = send(&svc, get("/v")).await;
        assert_eq!(again.body, "v2");
        assert!(again.cache_status().contains("detail=vary-star"));
    }

    async fn variants_per_url_are_capped(store) {
        let origin = Origin::new(|req, n| {
            let lang = req.headers().get("accept-language").unwrap().to_str().unwrap().to_owned();
            res(&[("cache-control", "max-age=60"), ("vary", "accept-language")], &format!("{lang}-{n}"))
        });
        let svc = cached(builder(store).max_variants(2).build().unwrap(), &origin);
        let lang = |l: &str| with(Method::GET, "/v", &[("accept-language", l)]);
        for l in ["a", "b", "c"] {
            send(&svc, lang(l)).await;
        }
        assert_eq!(send(&svc, lang("c")).await.body, "c-3");
        assert_eq!(send(&svc, lang("a")).await.body, "a-4", "the oldest variant was dropped");
    }

    async fn negative_results_only_with_a_negative_ttl(store) {
        let not_found = |_: &Request<Full<Bytes>>, n: usize| {
            let mut r = res(&[], &format!("missing-{n}"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        };
        let origin = Origin::new(not_found);
        let svc = cached(builder(store.clone()).default_ttl(Duration::from_secs(30)).build().unwrap(), &origin);
        send(&svc, get("/nf")).await;
        assert_eq!(send(&svc, get("/nf")).await.body, "missing-2");
        let origin = Origin::new(not_found);
        let svc = cached(builder(store).scope("neg").negative_ttl(Duration::from_secs(5)).build().unwrap(), &origin);
        assert!(send(&svc, get("/nf")).await.cache_status().contains("ttl=5"));
        let hit = send(&svc, get("/nf")).await;
        assert_eq!((hit.status, hit.body.clone()), (StatusCode::NOT_FOUND, Bytes::from("missing-1")));
    }

    async fn conditional_requests_get_304_from_the_entry(store) {
        let origin = versioned(&[
            ("cache-control", "max-age=60"),
            ("etag", "\"abc\""),
            ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ]);
        let svc = cached(builder(store).build().unwrap(), &origin);
        send(&svc, get("/c")).await;
        let nm = send(&svc, with(Method::GET, "/c", &[("if-none-match", "W/\"abc\"")])).await;
        assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
        assert!(nm.body.is_empty());
        assert_eq!(nm.headers["etag"], "\"abc\"");
        assert_eq!(nm.headers["cache-control"], "max-age=60");
        assert!(nm.headers.contains_key("age") && nm.cache_status().contains("hit"));
        let ims = send(&svc, with(Method::GET, "/c", &[("if-modified-since", "Fri, 02 Jan 2026 00:00:00 GMT")])).await;
        assert_eq!(ims.status, StatusCode::NOT_MODIFIED);
        let changed = send(&svc, with(Method::GET, "/c", &[("if-none-match", "\"other\"")])).await;
        assert_eq!((changed.status, changed.body.clone()), (StatusCode::OK, Bytes::from("v1")));
        assert_eq!(origin.calls(), 1);
    }

    async fn stale_entries_are_revalidated_and_a_304_refreshes_them(store) {
        let origin = Origin::new(|req, n| {
            if req.headers().get("if-none-match").is_some_and(|v| v == "\"e1\"") {
                let mut r = res(&[("cache-control", "max-age=60"), ("etag", "\"e1\""), ("x-refreshed", "yes")], "");
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                return r;
            }
            res(&[("cache-control", "max-age=1"), ("etag", "\"e1\"")], &format!("body-{n}"))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        assert_eq!(send(&svc, get("/r")).await.body, "body-1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let reval = send(&svc, get("/r")).await;
        assert_eq!(reval.body, "body-1", "the stored body, confirmed by the origin");
        assert!(reval.cache_status().contains("fwd=stale; fwd-status=304; stored"), "{}", reval.cache_status());
        assert_eq!(reval.headers["x-refreshed"], "yes");
        let hit = send(&svc, get("/r")).await;
        assert!(hit.cache_status().starts_with("trl; hit; ttl=5"), "refreshed to max-age=60: {}", hit.cache_status());
        assert_eq!(origin.calls(), 2);
    }

    async fn stale_if_error_serves_the_stale_entry(store) {
        let origin = Origin::new(|_, n| {
            if n == 1 {
                return res(&[("cache-control", "max-age=1, stale-if-error=60")], "good");
            }
            let mut r = res(&[], "boom");
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        send(&svc, get("/e")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let stale = send(&svc, get("/e")).await;
        assert_eq!((stale.status, stale.body.clone()), (StatusCode::OK, Bytes::from("good")));
        assert!(stale.cache_status().contains("fwd=stale; fwd-status=503"), "{}", stale.cache_status());
    }

    async fn stale_while_revalidate_serves_stale_to_others_while_one_refreshes(store) {
        let mut origin = versioned(&[("cache-control", "max-age=1, stale-while-revalidate=60")]);
        origin.delay = Duration::from_millis(300);
        let svc = cached(builder(store).build().unwrap(), &origin);
        assert_eq!(send(&svc, get("/swr")).await.body, "v1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let refresher = tokio::spawn({
            let svc = svc.clone();
            async move { send(&svc, get("/swr")).await.body }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let other = send(&svc, get("/swr")).await;
        assert_eq!(other.body, "v1", "served stale while the refresh runs");
        assert_eq!(refresher.await.unwrap(), "v1", "the refresh runs in the background");
        refreshed(&svc, "/swr", "v2").await;
        assert_eq!(origin.calls(), 2);
    }

    async fn unsafe_requests_invalidate_the_uri_and_its_location(store) {
        let origin = Origin::new(|req, n| {
            if req.method() == Method::POST {
                return res(&[("location", "/items/7")], "created");
            }
            res(&[("cache-control", "max-age=60")], &format!("{}-{n}", req.uri().path()))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        send(&svc, get("/items/7")).await;
        send(&svc, get("/items?page=1")).await;
        assert_eq!(send(&svc, get("/items/7")).await.body, "/items/7-1");
        send(&svc, with(Method::PUT, "/items/7", &[])).await;
        assert_eq!(send(&svc, get("/items/7")).await.body, "/items/7-4");
        send(&svc, with(Method::POST, "/items", &[])).await;
        assert_eq!(send(&svc, get("/items/7")).await.body, "/items/7-6", "Location was invalidated");
        assert_eq!(send(&svc, get("/items?page=1")).await.body, "/items-2", "another URI stays");
    }

    async fn failed_writes_invalidate_nothing(store) {
        let origin = Origin::new(|req, n| {
            if req.method() == Method::PUT {
                let mut r = res(&[], "conflict");
                *r.status_mut() = StatusCode::CONFLICT;
                return r;
            }
            res(&[("cache-control", "max-age=60")], &format!("v{n}"))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        send(&svc, get("/x")).await;
        send(&svc, with(Method::PUT, "/x", &[])).await;
        assert_eq!(send(&svc, get("/x")).await.body, "v1");
    }

    async fn the_handle_invalidates_by_uri(store) {
        let origin = versioned(MAX60);
        let layer = builder(store).build().unwrap();
        let handle = layer.handle();
        let svc = cached(layer, &origin);
        let host = [("host", "api.example")];
        send(&svc, with(Method::GET, "/items/1?x=1", &host)).await;
        assert!(handle.invalidate(&"/items/1?x=1".parse().unwrap()).await.is_err(), "keyed per host: absolute URIs only");
        handle.invalidate(&"http://API.example:80/items/1?x=1".parse().unwrap()).await.unwrap();
        assert_eq!(send(&svc, with(Method::GET, "/items/1?x=1", &host)).await.body, "v2");
    }

    async fn the_query_is_normalised_as_configured(store) {
        let origin = versioned(MAX60);
        let svc = cached(builder(store).sort_query(true).ignore_query_param("utm_source").build().unwrap(), &origin);
        send(&svc, get("/q?b=2&a=1")).await;
        assert_eq!(send(&svc, get("/q?a=1&b=2&utm_source=news")).await.body, "v1");
        assert_eq!(send(&svc, get("/q?a=1&b=3")).await.body, "v2");
    }

    async fn concurrent_misses_collapse_into_one_origin_call(store) {
        let mut origin = versioned(MAX60);
        origin.delay = Duration::from_millis(100);
        let svc = cached(builder(store).build().unwrap(), &origin);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { send(&svc, get("/hot")).await })
            })
            .collect();
        let mut collapsed = 0;
        for t in tasks {
            let got = t.await.unwrap();
            assert_eq!(got.body, "v1");
            if got.cache_status().contains("collapsed") {
                collapsed += 1;
            }
        }
        assert_eq!(origin.calls(), 1);
        assert!(collapsed >= 40, "{collapsed}");
    }

    async fn bodies_over_the_cap_stream_through_unstored(store) {
        let big = "x".repeat(5000);
        let origin = Origin::new(move |_, _| res(&[("cache-control", "max-age=60")], &big));
        let svc = cached(builder(store).max_body_size(4096).build().unwrap(), &origin);
        assert_eq!(send(&svc, get("/big")).await.body.len(), 5000);
        assert_eq!(send(&svc, get("/big")).await.body.len(), 5000);
        assert_eq!(origin.calls(), 2);
    }

    async fn get_or_load_loads_once_and_invalidates_by_key(store) {
        let handle = builder(store).build().unwrap().handle();
        let loads = Arc::new(AtomicUsize::new(0));
        let load = |v: &'static str| {
            let loads = loads.clone();
            move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, Infallible>(Bytes::from_static(v.as_bytes()))
            }
        };
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (h, l) = (handle.clone(), load("row-1"));
                tokio::spawn(async move { h.get_or_load("item:1", Duration::from_secs(30), l).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "row-1");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle.invalidate_key("item:1").await.unwrap();
        let v = handle.get_or_load("item:1", Duration::from_secs(30), load("row-2")).await.unwrap();
        assert_eq!(v, "row-2");
        // A loader error is returned and nothing is stored.
        let err = handle.get_or_load("item:2", Duration::from_secs(30), || async { Err::<Bytes, _>("db down") }).await;
        assert_eq!(err, Err("db down"));
    }

    async fn request_directives_are_ignored_by_default_and_honoured_with_a_floor(store) {
        use tower_redis_layers::cache::RequestDirectives;
        let origin = versioned(MAX60);
        let svc = cached(builder(store.clone()).build().unwrap(), &origin);
        send(&svc, get("/d")).await;
        for cc in ["no-cache", "max-age=0", "no-store"] {
            let got = send(&svc, with(Method::GET, "/d", &[("cache-control", cc)])).await;
            assert_eq!(got.body, "v1", "{cc} cannot force origin load by default");
        }
        let origin = versioned(MAX60);
        let honor = RequestDirectives::Honor { min_age: Duration::from_secs(1) };
        let svc = cached(builder(store).scope("honor").request_directives(honor).build().unwrap(), &origin);
        send(&svc, get("/d")).await;
        let young = send(&svc, with(Method::GET, "/d", &[("cache-control", "no-cache")])).await;
        assert_eq!(young.body, "v1", "younger than the floor: served from the cache");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let forced = send(&svc, with(Method::GET, "/d", &[("cache-control", "max-age=0")])).await;
        assert_eq!(forced.body, "v2", "old enough: refetched");
        assert_eq!(send(&svc, get("/d")).await.body, "v2", "and the refetch was stored");
        let only = send(&svc, with(Method::GET, "/never", &[("cache-control", "only-if-cached")])).await;
        assert_eq!(only.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(only.headers["content-type"], "application/problem+json");
        let only = send(&svc, with(Method::GET, "/d", &[("cache-control", "only-if-cached")])).await;
        assert_eq!(only.body, "v2");
        let no_store = send(&svc, with(Method::GET, "/q", &[("cache-control", "no-store")])).await;
        assert_eq!(no_store.body, "v3");
        assert_eq!(send(&svc, get("/q")).await.body, "v4", "a no-store request fills nothing");
    }

    async fn a_changed_vary_rekeys_the_url_and_other_instances_learn_it(store) {
        let origin = Origin::new(|req, n| {
            if n == 1 {
                return res(&[("cache-control", "max-age=1")], "plain-1");
            }
            let lang = req.headers().get("accept-language").unwrap().to_str().unwrap().to_owned();
            res(&[("cache-control", "max-age=60"), ("vary", "accept-language")], &format!("{lang}-{n}"))
        });
        let svc = cached(builder(store.clone()).build().unwrap(), &origin);
        let lang = |l: &str| with(Method::GET, "/cv", &[("accept-language", l)]);
        assert_eq!(send(&svc, lang("en")).await.body, "plain-1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(send(&svc, lang("en")).await.body, "en-2");
        assert_eq!(send(&svc, lang("de")).await.body, "de-3");
        assert_eq!(send(&svc, lang("en")).await.body, "en-2");
        // Another instance on the same store has not seen the Vary yet.
        let other = cached(builder(store).build().unwrap(), &origin);
        assert_eq!(send(&other, lang("de")).await.body, "de-3");
        assert_eq!(send(&other, lang("en")).await.body, "en-2");
        assert_eq!(origin.calls(), 3);
    }

    async fn after_an_unstorable_response_nobody_queues_behind_the_lock(store) {
        let mut origin = versioned(&[("cache-control", "private")]);
        origin.delay = Duration::from_millis(100);
        let svc = cached(builder(store).build().unwrap(), &origin);
        send(&svc, get("/private")).await;
        origin.max_in_flight.store(0, Ordering::SeqCst);
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { send(&svc, get("/private")).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().cache_status().contains("fwd=miss"));
        }
        assert_eq!(origin.calls(), 6);
        assert_eq!(origin.max_in_flight.load(Ordering::SeqCst), 5, "hit-for-miss: all at once");
    }

    async fn content_location_on_the_same_origin_is_invalidated_and_others_are_not(store) {
        let origin = Origin::new(|req, n| {
            if req.method() == Method::PATCH {
                return res(&[("content-location", "/a"), ("location", "https://elsewhere.example/b")], "");
            }
            res(&[("cache-control", "max-age=60")], &format!("{}-{n}", req.uri().path()))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let host = [("host", "api.example")];
        send(&svc, with(Method::GET, "/a", &host)).await;
        send(&svc, with(Method::GET, "/b", &host)).await;
        send(&svc, with(Method::PATCH, "/c", &host)).await;
        assert_eq!(send(&svc, with(Method::GET, "/a", &host)).await.body, "/a-4");
        assert_eq!(send(&svc, with(Method::GET, "/b", &host)).await.body, "/b-2", "another origin's Location is ignored");
    }
}

#[tokio::test]
async fn a_waiter_on_another_instance_goes_to_the_origin_after_the_bounded_wait() {
    let fleet = support::redis_fleet("bounded", 2).await;
    let mut slow = versioned(MAX60);
    slow.delay = Duration::from_millis(1500);
    let fast = Origin::new(|_, _| res(&[("cache-control", "max-age=60")], "fast"));
    let a = cached(builder(fleet[0].clone()).build().unwrap(), &slow);
    let b = cached(
        builder(fleet[1].clone())
            .max_wait(Duration::from_millis(200))
            .build()
            .unwrap(),
        &fast,
    );
    let first = tokio::spawn(async move { send(&a, get("/slow")).await.body });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let got = send(&b, get("/slow")).await;
    assert_eq!(got.body, "fast");
    assert!(
        got.cache_status().contains("detail=wait-timeout"),
        "{}",
        got.cache_status()
    );
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "did not wait for the slow fill"
    );
    assert_eq!(first.await.unwrap(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_runs_one_loader_across_instances() {
    let fleet = support::redis_fleet("app-fleet", 3).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = fleet
        .into_iter()
        .map(|s| builder(s).build().unwrap().handle())
        .collect();
    let tasks: Vec<_> = (0..90)
        .map(|i| {
            let h = handles[i % 3].clone();
            let loads = loads.clone();
            tokio::spawn(async move {
                h.get_or_load("user:7", Duration::from_secs(30), || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, Infallible>(Bytes::from_static(b"row"))
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "row");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_three_instances_600_requests_one_origin_call() {
    let stores = support::redis_fleet("stampede", 3).await;
    let mut origin = versioned(MAX60);
    origin.delay = Duration::from_millis(200);
    let services: Vec<_> = stores
        .into_iter()
        .map(|s| {
            cached(
                builder(s)
                    .default_ttl(Duration::from_secs(30))
                    .build()
                    .unwrap(),
                &origin,
            )
        })
        .collect();
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let svc = services[i % 3].clone();
            tokio::spawn(async move {
                let res = svc.oneshot(get("/api/items/1")).await.unwrap();
                let status = res.status();
                (status, res.into_body().collect().await.unwrap().to_bytes())
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("v1")));
    }
    assert_eq!(
        origin.calls(),
        1,
        "one origin call for 600 requests on 3 instances"
    );
}

#[tokio::test]
async fn a_put_through_one_instance_invalidates_the_get_on_another() {
    let fleet = support::redis_fleet("invalidate", 2).await;
    let origin = Origin::new(|req, n| {
        if req.method() == Method::PUT {
            return res(&[], "");
        }
        res(&[], &format!("item-v{n}"))
    });
    let mk = |s| {
        cached(
            builder(s)
                .default_ttl(Duration::from_secs(30))
                .build()
                .unwrap(),
            &origin,
        )
    };
    let (a, b) = (mk(fleet[0].clone()), mk(fleet[1].clone()));
    assert_eq!(send(&b, get("/api/items/9")).await.body, "item-v1");
    assert_eq!(
        send(&a, get("/api/items/9")).await.body,
        "item-v1",
        "A hits B's entry"
    );
    send(&a, with(Method::PUT, "/api/items/9", &[])).await;
    assert_eq!(send(&b, get("/api/items/9")).await.body, "item-v3");
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_corrupt_entry_is_answered_from_the_origin_and_repaired() {
    // A URL without Vary keeps its entry in a key of its own; with Vary,
    // each variant's entry is a field of the URL's index hash.
    const VARY: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("vary", "accept")];
    for (headers, home) in [(MAX60, "an entry key"), (VARY, "an index field")] {
        let store = support::redis_store("corrupt").await;
        let prefix = store.prefix().to_owned();
        let origin = versioned(headers);
        let svc = cached(builder(store).build().unwrap(), &origin);
        send(&svc, get("/fragile")).await;
        let mut conn = redis_conn(&support::redis_url()).await;
        let homes = entry_homes(&mut conn, &prefix).await;
        assert_eq!(homes.len(), 1, "{home}: {homes:?}");
        assert_eq!(homes[0].1.is_some(), headers == VARY, "{home}: {homes:?}");
        let fragile = homes[0].clone();
        for garbage in [
            (0..300u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect::<Vec<u8>>(),
            b"TRLC\x01garbage".to_vec(),
            Vec::new(),
        ] {
            put_entry(&mut conn, &fragile, &garbage).await;
            let calls = origin.calls();
            let got = send(&svc, get("/fragile")).await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(
                got.body,
                format!("v{}", calls + 1),
                "{home}: the origin answered"
            );
            let repaired = send(&svc, get("/fragile")).await;
            assert!(
                repaired.cache_status().contains("hit"),
                "{home}: repaired: {}",
                repaired.cache_status()
            );
            assert_eq!(repaired.body, got.body);
        }
        // A well-formed entry of another URL copied under this key is foreign: a miss.
        send(&svc, get("/elsewhere")).await;
        let all = entry_homes(&mut conn, &prefix).await;
        let other = all.iter().find(|h| **h != fragile).unwrap();
        let foreign = get_entry(&mut conn, other).await;
        put_entry(&mut conn, &fragile, &foreign).await;
        let elsewhere = send(&svc, get("/elsewhere")).await.body;
        let got = send(&svc, get("/fragile")).await;
        assert_ne!(got.body, elsewhere, "{home}: never another URL's response");
        assert!(
            got.cache_status().contains("stored"),
            "{home}: {}",
            got.cache_status()
        );
    }
}

/// Where an entry lives: a key of its own, or a field of the URL's index.
type EntryHome = (String, Option<String>);

/// Where every cached entry under `prefix` lives.
async fn entry_homes(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<EntryHome> {
    let keys = |pattern: String| {
        let mut cmd = redis::cmd("KEYS");
        cmd.arg(pattern);
        cmd
    };
    let own: Vec<String> = keys(format!("{prefix}:cache:*:h"))
        .query_async(conn)
        .await
        .unwrap();
    let mut out: Vec<EntryHome> = own.into_iter().map(|k| (k, None)).collect();
    let indexes: Vec<String> = keys(format!("{prefix}:cache:*:i"))
        .query_async(conn)
        .await
        .unwrap();
    for index in indexes {
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(&index)
            .query_async(conn)
            .await
            .unwrap();
        for f in fields.into_iter().filter(|f| f.starts_with("e:")) {
            out.push((index.clone(), Some(f)));
        }
    }
    assert!(!out.is_empty(), "no entries under {prefix}");
    out
}

async fn put_entry(conn: &mut redis::aio::MultiplexedConnection, at: &EntryHome, bytes: &[u8]) {
    let cmd = match &at.1 {
        Some(field) => redis::cmd("HSET").arg(&at.0).arg(field).arg(bytes).clone(),
        None => redis::cmd("SET")
            .arg(&at.0)
            .arg(bytes)
            .arg("KEEPTTL")
            .clone(),
    };
    let _: () = cmd.query_async(conn).await.unwrap();
}

async fn get_entry(conn: &mut redis::aio::MultiplexedConnection, at: &EntryHome) -> Vec<u8> {
    let cmd = match &at.1 {
        Some(field) => redis::cmd("HGET").arg(&at.0).arg(field).clone(),
        None => redis::cmd("GET").arg(&at.0).clone(),
    };
    cmd.query_async(conn).await.unwrap()
}

#[tokio::test]
async fn every_key_has_a_ttl_and_a_hit_is_one_round_trip() {
    let server = support::RedisServer::start();
    let store = tower_redis_layers::RedisStore::builder(server.url())
        .prefix("ttl")
        .ping_on_connect(true)
        .connect()
        .await
        .unwrap();
    let origin = Origin::new(|_, n| {
        res(
            &[("cache-control", "max-age=60"), ("vary", "accept")],
            &"x".repeat(1024 + n),
        )
    });
    let handle;
    let svc = {
        let layer = builder(store).build().unwrap();
        handle = layer.handle();
        cached(layer, &origin)
    };
    send(&svc, get("/k")).await;
    handle
        .get_or_load("app", Duration::from_secs(5), || async {
            Ok::<_, Infallible>(Bytes::from("v"))
        })
        .await
        .unwrap();
    let mut conn = redis_conn(&server.url()).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ttl:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    // One index per URL (the response's and the value's); the response
    // varies, so its entry is a field of its index; the value does not, so
    // its entry is a key of its own. No key is left without a TTL.
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(
        keys.iter().filter(|k| k.ends_with(":h")).count(),
        1,
        "{keys:?}"
    );
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{k} has no TTL");
    }
    send(&svc, get("/k")).await; // learns the URL's Vary spec
    let url = server.url();
    let count = || async {
        let all = support::command_calls(&url, |c| c != "info").await;
        let scripts = support::command_calls(&url, |c| c.starts_with("eval")).await;
        (scripts, all - scripts)
    };
    let (scripts0, others0) = count().await;
    let hit = send(&svc, get("/k")).await;
    let (scripts1, others1) = count().await;
    assert!(hit.cache_status().contains("hit"));
    // A fresh hit is one pipeline of plain reads: TIME and one HMGET of
    // the URL's index (Vary spec, generation, the variant's entry and
    // times); no script.
    assert_eq!(scripts1 - scripts0, 0, "no script for a fresh hit");
    assert_eq!(others1 - others0, 2, "two reads, in one round trip");
}

#[tokio::test]
async fn hits_on_urls_without_vary_are_one_key_read_each_stored_once() {
    let server = support::RedisServer::start();
    let fleet = support::fleet_at(&server.url(), "own", 2).await;
    let origin = versioned(MAX60);
    let svcs: Vec<_> = fleet
        .into_iter()
        .map(|store| cached(builder(store).build().unwrap(), &origin))
        .collect();
    const URLS: usize = 40;
    for i in 0..URLS {
        send(&svcs[i % 2], get(&format!("/own/{i}"))).await;
    }
    assert_eq!(origin.calls(), URLS);
    let mut conn = redis_conn(&server.url()).await;
    // Each entry is stored once, in its own key, with its TTL; the index
    // holds the URL's spec, generation and the entry's times, not the entry.
    let homes = entry_homes(&mut conn, "own").await;
    assert_eq!(homes.len(), URLS, "{homes:?}");
    for (key, field) in &homes {
        assert!(field.is_none(), "{key}: {field:?}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 50_000,
            "{key} lives as long as the entry may be kept: {ttl}"
        );
    }
    let url = server.url();
    let calls = |pred: fn(&str) -> bool| support::command_calls(&url, pred);
    let (scripts0, mget0, hmget0, get0) = (
        calls(|c| c.starts_with("eval")).await,
        calls(|c| c == "mget").await,
        calls(|c| c == "hmget").await,
        calls(|c| c == "get").await,
    );
    // Every URL read on both instances at once: 80 hits.
    let hits = futures_util::future::join_all(
        (0..2 * URLS).map(|i| send(&svcs[i % 2], get(&format!("/own/{}", i / 2)))),
    )
    .await;
    for (i, hit) in hits.iter().enumerate() {
        assert!(
            hit.cache_status().contains("hit"),
            "{i}: {}",
            hit.cache_status()
        );
        assert_eq!(
            hit.body,
            format!("v{}", i / 2 + 1),
            "{i}: its own URL's response"
        );
    }
    assert_eq!(origin.calls(), URLS, "no origin call");
    let mget = calls(|c| c == "mget").await - mget0;
    assert_eq!(
        calls(|c| c.starts_with("eval")).await - scripts0,
        0,
        "no script"
    );
    assert_eq!(calls(|c| c == "hmget").await - hmget0, 0, "no index read");
    assert_eq!(calls(|c| c == "get").await - get0, 0, "batched into MGETs");
    assert!((1..=2 * URLS as u64).contains(&mget), "{mget} MGETs");
}

/// A URL without Vary: a soft purge moves its entry key aside (the next
/// request revalidates it, and the refreshed entry is a key of its own
/// again), a purge drops both, and a refill that starts to vary drops it.
#[tokio::test]
async fn the_entry_key_of_a_url_without_vary_follows_purges_and_vary() {
    let store = support::redis_store("moves").await;
    let prefix = store.prefix().to_owned();
    let varies = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = Origin::new({
        let varies = varies.clone();
        let plain = validating("max-age=3600");
        move |req, n| {
            if varies.load(Ordering::SeqCst) {
                let cc = ("cache-control", "max-age=60");
                return res(&[cc, ("vary", "accept")], &format!("w{n}"));
            }
            plain(req, n)
        }
    });
    let layer = builder(store).build().unwrap();
    let svc = cached(layer.clone(), &origin);
    let conn = redis_conn(&support::redis_url()).await;
    let keys = |suffix: &'static str| {
        let (mut conn, pattern) = (conn.clone(), format!("{prefix}:cache:*:{suffix}"));
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys
        }
    };
    let copies = || async { (keys("h").await.len(), keys("s").await.len()) };
    let uri: http::Uri = "http://api.example/m".parse().unwrap();
    let m = || with(Method::GET, "/m", &[("host", "api.example")]);
    send(&svc, m()).await;
    assert_eq!(copies().await, (1, 0));
    layer.handle().soft_purge_url(&uri).await.unwrap();
    assert_eq!(copies().await, (0, 1), "moved aside");
    let reval = send(&svc, m()).await;
    assert_eq!(reval.body, "v1");
    let status = reval.cache_status();
    assert!(status.contains("fwd=stale; fwd-status=304"), "{status}");
    assert_eq!(copies().await, (1, 0), "refreshed: a key of its own again");
    let index = keys("i").await.remove(0);
    let mut conn = conn.clone();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !fields.iter().any(|f| f == "sp" || f.starts_with("e:")),
        "{fields:?}"
    );
    let hit = send(&svc, m()).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    // Soft, then hard: both copies go.
    layer.handle().soft_purge_url(&uri).await.unwrap();
    layer.handle().invalidate(&uri).await.unwrap();
    assert_eq!(copies().await, (0, 0));
    assert_eq!(send(&svc, m()).await.body, "v3");
    // Stale, then refilled with a response that varies: the entry key
    // goes, the variant is a field of the index.
    layer.handle().soft_purge_url(&uri).await.unwrap();
    varies.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let refill = send(&svc, m()).await;
    assert_eq!(refill.body, "w4");
    assert_eq!(copies().await, (0, 0));
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(fields.iter().any(|f| f.starts_with("e:")), "{fields:?}");
    assert!(!fields.iter().any(|f| f == "sp"), "{fields:?}");
}

#[tokio::test]
async fn a_failing_store_is_a_miss_served_by_the_origin() {
    let mut server = support::RedisServer::start();
    let store = tower_redis_layers::RedisStore::builder(server.url())
        .prefix("down")
        .deadline(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let origin = versioned(MAX60);
    let layer = builder(store).build().unwrap();
    let handle = layer.handle();
    let svc = cached(layer, &origin);
    assert_eq!(send(&svc, get("/d")).await.body, "v1");
    server.kill();
    let loaded = handle
        .get_or_load("k", Duration::from_secs(5), || async {
            Ok::<_, Infallible>(Bytes::from_static(b"from-db"))
        })
        .await;
    assert_eq!(
        loaded,
        Ok(Bytes::from_static(b"from-db")),
        "the loader runs"
    );
    for n in 2..5 {
        let got = send(&svc, get("/d")).await;
        assert_eq!(
            (got.status, got.body.clone()),
            (StatusCode::OK, Bytes::from(format!("v{n}")))
        );
    }
    let put = send(&svc, with(Method::PUT, "/d", &[])).await;
    assert_eq!(
        put.status,
        StatusCode::OK,
        "a failed invalidation does not fail the write"
    );
}

#[test]
fn futures_services_and_bodies_are_send() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let origin = versioned(MAX60);
    let mut svc = cached(
        builder(tower_redis_layers::MemoryStore::new())
            .build()
            .unwrap(),
        &origin,
    );
    assert_send(&svc);
    let fut = svc.call(get("/s"));
    assert_send(&fut);
}

type Cached = tower_redis_layers::cache::ResponseCache<Origin>;

/// Two instances with the L1 tier over `fleet`'s first two stores, both
/// holding "/hot" (v1) in process once their subscriptions are up.
async fn l1_pair(fleet: &[tower_redis_layers::RedisStore]) -> (Cached, Cached) {
    let origin = Origin::new(|req, n| {
        if req.method() == Method::PUT {
            return res(&[], "");
        }
        res(&[("cache-control", "max-age=60")], &format!("v{n}"))
    });
    let mk = |s| {
        cached(
            builder(s).l1(100, Duration::from_secs(30)).build().unwrap(),
            &origin,
        )
    };
    let (a, b) = (mk(fleet[0].clone()), mk(fleet[1].clone()));
    for svc in [&a, &b] {
        // Copies are kept once the subscription is up: wait for it.
        let mut tries = 0;
        loop {
            let got = send(svc, get("/hot")).await;
            assert_eq!(got.body, "v1");
            if got.cache_status().contains("detail=l1") {
                break;
            }
            tries += 1;
            assert!(tries < 100, "the subscription never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (a, b)
}

#[tokio::test]
async fn the_l1_tier_serves_hot_hits_without_a_round_trip_and_stays_coherent() {
    let server = support::RedisServer::start();
    let fleet = support::fleet_at(&server.url(), "l1", 2).await;
    let (a, b) = l1_pair(&fleet).await;
    let url = server.url();
    let evals = || support::command_calls(&url, |c| c.starts_with("eval"));
    let before = evals().await;
    for svc in [&a, &b, &a, &b] {
        let hit = send(svc, get("/hot")).await;
        assert_eq!(hit.body, "v1");
        assert!(
            hit.cache_status().contains("hit; detail=l1"),
            "{}",
            hit.cache_status()
        );
    }
    assert_eq!(
        evals().await - before,
        0,
        "in-process hits cost no round trip"
    );
    send(&a, with(Method::PUT, "/hot", &[])).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // pub/sub delivery
    assert_eq!(
        send(&b, get("/hot")).await.body,
        "v3",
        "B's copy was dropped"
    );
    assert_eq!(
        send(&a, get("/hot")).await.body,
        "v3",
        "A refills from B's entry"
    );
}

#[test]
fn the_l1_tier_is_off_on_the_memory_store() {
    // Outside a runtime and on a MemoryStore: builds, with the tier off.
    let layer = builder(tower_redis_layers::MemoryStore::new())
        .l1(10, Duration::from_secs(1))
        .build();
    assert!(layer.is_ok());
}

#[tokio::test]
async fn works_as_an_axum_layer() {
    use axum::routing::{get as get_route, put};
    let n = Arc::new(AtomicUsize::new(0));
    let layer = ResponseCacheLayer::builder(tower_redis_layers::MemoryStore::new())
        .default_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/api/items/{id}",
            get_route({
                let n = n.clone();
                move || async move { format!("item-{}", n.fetch_add(1, Ordering::SeqCst)) }
            })
            .merge(put(|| async { "saved" })),
        )
        .layer(layer);
    let call = |method: Method| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri("/api/items/1")
                .body(axum::body::Body::empty())
                .unwrap();
            let res = app.oneshot(req).await.unwrap();
            let cs = res.headers().get("cache-status").cloned();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            tokio::time::sleep(Duration::from_millis(10)).await;
            (body, cs)
        }
    };
    assert_eq!(call(Method::GET).await.0, "item-0");
    let (body, cs) = call(Method::GET).await;
    assert_eq!(body, "item-0");
    assert!(cs.unwrap().to_str().unwrap().starts_with("trl; hit"));
    assert_eq!(call(Method::PUT).await.0, "saved");
    assert_eq!(call(Method::GET).await.0, "item-1");
}

/// The L1 tier's invalidations travel by pub/sub on a Redis Cluster too: a
/// PUT through instance A drops instance B's in-process copy.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_l1_tier_stays_coherent_on_a_cluster() {
    let urls = support::cluster::shared_cluster_urls();
    let prefix = support::unique_prefix("l1-cluster");
    let mut fleet = Vec::new();
    for _ in 0..2 {
        let store = tower_redis_layers::RedisStore::cluster_builder(urls.clone())
            .prefix(prefix.clone())
            .deadline(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        fleet.push(store);
    }
    let (a, b) = l1_pair(&fleet).await;
    let hit = send(&b, get("/hot")).await;
    assert!(
        hit.cache_status().contains("hit; detail=l1"),
        "{}",
        hit.cache_status()
    );
    send(&a, with(Method::PUT, "/hot", &[])).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // pub/sub delivery
    assert_eq!(
        send(&b, get("/hot")).await.body,
        "v3",
        "B's copy was dropped"
    );
}

/// A store whose every call fails: a dead port, the breaker opening at the
/// first failure.
async fn dead_store() -> tower_redis_layers::RedisStore {
    let port = support::server::free_port();
    tower_redis_layers::RedisStore::builder(format!("redis://127.0.0.1:{port}"))
        .deadline(Duration::from_millis(50))
        .breaker(tower_redis_layers::BreakerConfig::default().failures(1))
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn failing_open_the_origin_serves_and_failing_closed_it_is_shielded() {
    use tower_redis_layers::cache::FailurePolicy;
    // Fail open (default): a failed lookup is a miss the origin serves.
    let origin = versioned(MAX60);
    let svc = cached(builder(dead_store().await).build().unwrap(), &origin);
    for n in 1..=3 {
        let got = send(&svc, get("/o")).await;
        assert_eq!(
            (got.status, got.body.clone()),
            (StatusCode::OK, Bytes::from(format!("v{n}")))
        );
        assert!(
            got.cache_status().contains("detail=store-error"),
            "{}",
            got.cache_status()
        );
        assert!(
            !got.cache_status().contains("stored"),
            "nothing was stored: {}",
            got.cache_status()
        );
    }
    // Fail closed: 503 with Retry-After, the origin never called.
    let origin = versioned(MAX60);
    let layer = builder(dead_store().await)
        .on_store_failure(FailurePolicy::Closed)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = cached(layer, &origin);
    for _ in 0..3 {
        let got = send(&svc, get("/c")).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(got.headers["retry-after"], "1");
        assert_eq!(got.headers["content-type"], "application/problem+json");
        assert!(got.cache_status().contains("detail=store-unavailable"));
    }
    let grpc = send(
        &svc,
        with(Method::GET, "/c", &[("content-type", "application/grpc")]),
    )
    .await;
    assert_eq!(
        (grpc.status, &grpc.headers["grpc-status"]),
        (StatusCode::OK, &"14".parse::<http::HeaderValue>().unwrap())
    );
    assert_eq!(origin.calls(), 0, "the origin is shielded");
    // Writes still reach the origin; application loaders still run.
    assert_eq!(
        send(&svc, with(Method::PUT, "/c", &[])).await.status,
        StatusCode::OK
    );
    let v = handle
        .get_or_load("k", Duration::from_secs(5), || async {
            Ok::<_, Infallible>(Bytes::from_static(b"row"))
        })
        .await;
    assert_eq!(v, Ok(Bytes::from_static(b"row")));
}

conformance! {
    async fn failing_closed_changes_nothing_while_the_store_answers(store) {
        use tower_redis_layers::cache::FailurePolicy;
        let origin = versioned(MAX60);
        let layer = builder(store).on_store_failure(FailurePolicy::Closed).build().unwrap();
        let svc = cached(layer, &origin);
        assert_eq!(send(&svc, get("/a")).await.body, "v1");
        let hit = send(&svc, get("/a")).await;
        assert_eq!(hit.body, "v1");
        assert!(hit.cache_status().contains("hit"));
        let only = send(&svc, with(Method::GET, "/b", &[("cache-control", "only-if-cached")])).await;
        assert_eq!(only.status, StatusCode::OK, "request directives are ignored by default");
    }
}

/// A store under `prefix` whose calls give up after 50 ms and whose breaker
/// opens at the first failure and probes every 50 ms.
fn quick_to_fail(
    builder: tower_redis_layers::RedisStoreBuilder,
    prefix: &str,
) -> impl std::future::Future<
    Output = Result<tower_redis_layers::RedisStore, tower_redis_layers::StoreError>,
> {
    builder
        .prefix(prefix)
        .deadline(Duration::from_millis(50))
        .breaker(
            tower_redis_layers::BreakerConfig::default()
                .failures(1)
                .probe_every(Duration::from_millis(50)),
        )
        .connect()
}

/// The writer's instance has its breaker open when it writes: the purge is
/// retried in the background until it lands, the write's response says so,
/// and meanwhile that instance does not serve the URL from the cache.
#[tokio::test]
async fn a_purge_during_an_open_breaker_is_retried_and_lands() {
    let server = support::RedisServer::start();
    let store = || {
        quick_to_fail(
            tower_redis_layers::RedisStore::builder(server.url()),
            "retry",
        )
    };
    let origin = Origin::new(|req, n| {
        if req.method() == Method::PUT {
            return res(&[], "");
        }
        res(MAX60, &format!("v{n}"))
    });
    let a = cached(builder(store().await.unwrap()).build().unwrap(), &origin);
    let b = cached(builder(store().await.unwrap()).build().unwrap(), &origin);
    assert_eq!(send(&a, get("/x")).await.body, "v1");
    assert!(send(&b, get("/x")).await.cache_status().contains("hit"));
    // Redis stops answering: A's next call times out and opens its breaker.
    let mut conn = redis_conn(&server.url()).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    send(&a, get("/other")).await;
    let put = send(&a, with(Method::PUT, "/x", &[])).await;
    assert_eq!(put.status, StatusCode::OK);
    assert!(
        put.cache_status().contains("detail=purge-pending"),
        "{}",
        put.cache_status()
    );
    let during = send(&a, get("/x")).await;
    assert_ne!(
        during.body, "v1",
        "the writer's instance never serves the old entry"
    );
    // Once Redis answers again, the retried purge lands: the URL's
    // generation (field `g` of its index) moves and its entry is gone.
    let mut tries = 0;
    loop {
        // Errors while Redis is still paused: ask again.
        let indexes: redis::RedisResult<Vec<String>> = redis::cmd("KEYS")
            .arg("retry:cache:*:i")
            .query_async(&mut conn)
            .await;
        let mut purged = false;
        for index in indexes.unwrap_or_default() {
            let gen: redis::RedisResult<Option<String>> = redis::cmd("HGET")
                .arg(&index)
                .arg("g")
                .query_async(&mut conn)
                .await;
            purged |= gen.is_ok_and(|g| g.is_some());
        }
        if purged {
            break;
        }
        tries += 1;
        assert!(tries < 200, "the purge never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = send(&b, get("/x")).await;
    assert_ne!(
        after.body, "v1",
        "another instance no longer finds the old entry"
    );
    assert!(
        !after.cache_status().contains("hit"),
        "{}",
        after.cache_status()
    );
}

/// Redis stops answering during a tag purge: the purge returns an error
/// and is retried in the background; once Redis answers again, the tagged
/// entries are gone on every instance and the others stay.
#[tokio::test]
async fn a_tag_purge_that_fails_is_retried_and_lands() {
    let server = support::RedisServer::start();
    let store = || {
        quick_to_fail(
            tower_redis_layers::RedisStore::builder(server.url()),
            "tagretry",
        )
    };
    let origin = tagged();
    let layer = builder(store().await.unwrap()).build().unwrap();
    let a = cached(layer.clone(), &origin);
    let b = cached(builder(store().await.unwrap()).build().unwrap(), &origin);
    for path in ["/a", "/b", "/c"] {
        send(&a, get(path)).await;
        assert!(send(&b, get(path)).await.cache_status().contains("hit"));
    }
    server.suspend();
    let purged = layer.handle().purge_tag("t2").await;
    assert!(purged.is_err(), "{purged:?}");
    server.resume();
    // The retry lands: B no longer finds /a nor /b (tagged t2).
    let started = std::time::Instant::now();
    while send(&b, get("/a")).await.cache_status().contains("hit") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the tag purge never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = origin.calls();
    assert!(!send(&b, get("/b")).await.cache_status().contains("hit"));
    assert_eq!(origin.calls(), calls + 1, "/b was purged too");
    assert!(
        send(&b, get("/c")).await.cache_status().contains("hit"),
        "another tag stays"
    );
}

/// On a cluster, a master that holds some of a tag's URLs (not the tag)
/// refuses scripts during the tag purge (an ACL, so nothing it was sent
/// runs later): the URLs it holds are retried one by one, and once it takes
/// scripts again every entry of the tag is gone on every instance.
#[cfg(feature = "cluster")]
#[tokio::test]
async fn a_tag_purge_that_fails_on_one_master_retries_its_urls() {
    let cluster = support::cluster::RedisCluster::start(3, 0);
    let store = || {
        quick_to_fail(
            tower_redis_layers::RedisStore::cluster_builder(cluster.urls()),
            "tagslots",
        )
    };
    let origin = Origin::new(|_, n| {
        res(
            &[("cache-control", "max-age=3600"), ("surrogate-key", "t")],
            &format!("v{n}"),
        )
    });
    let layer = builder(store().await.unwrap()).build().unwrap();
    let a = cached(layer.clone(), &origin);
    let b = cached(builder(store().await.unwrap()).build().unwrap(), &origin);
    let paths: Vec<String> = (0..30).map(|i| format!("/u{i}")).collect();
    for path in &paths {
        send(&a, get(path)).await;
    }
    // A master with some of the URLs' entries but not the tag's keys.
    let mut victim = None;
    for url in cluster.urls() {
        let mut conn = redis_conn(&url).await;
        let keys = |pattern: &str| {
            let mut cmd = redis::cmd("KEYS");
            cmd.arg(pattern);
            cmd
        };
        let urls: Vec<String> = keys("tagslots:cache:*:i")
            .query_async(&mut conn)
            .await
            .unwrap();
        let tag: Vec<String> = keys("tagslots:cache:{t:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !urls.is_empty() && tag.is_empty() {
            victim = Some(url);
            break;
        }
    }
    let victim = victim.expect("a master with entries and without the tag");
    let mut conn = redis_conn(&victim).await;
    let scripts = |rule: &'static str| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg("default")
            .arg(rule)
            .arg(rule.replace("evalsha", "eval"));
        cmd
    };
    let _: () = scripts("-evalsha").query_async(&mut conn).await.unwrap();
    let purged = layer.handle().purge_tag("t").await;
    assert!(purged.is_err(), "{purged:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = scripts("+evalsha").query_async(&mut conn).await.unwrap();
    let started = std::time::Instant::now();
    for path in &paths {
        while send(&b, get(path)).await.cache_status().contains("hit") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{path} was never purged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An origin body that fails after its first chunk.
struct Failing(bool);

impl Body for Failing {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(Some(Err(std::io::Error::other("origin reset"))));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))))
    }
}

conformance! {
    async fn an_origin_body_that_fails_is_a_502_never_an_entry(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = ServiceBuilder::new().layer(builder(store).build().unwrap()).service(tower::service_fn({
            let calls = calls.clone();
            move |_req: Request<Full<Bytes>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let res = Response::builder().header("cache-control", "max-age=60").body(Failing(false)).unwrap();
                async move { Ok::<_, Infallible>(res) }
            }
        }));
        for n in 1..=2 {
            let res = svc.clone().oneshot(get("/f")).await.unwrap();
            assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            assert_eq!(calls.load(Ordering::SeqCst), n, "nothing was stored");
        }
    }
}

// RFC 9111 conformance, section by section, on every store. The layer is
// a pure HTTP cache here (no default TTL) unless a test says otherwise.

/// An HTTP-date `secs` from now (negative: in the past).
fn http_date(secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if secs >= 0 {
        now + Duration::from_secs(secs as u64)
    } else {
        now - Duration::from_secs(secs.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

/// An origin answering `status` with `headers` and the body `v<n>`.
fn answering(status: u16, headers: Vec<(String, String)>) -> Origin {
    Origin::new(move |_, n| {
        let mut r = res(&[], &format!("v{n}"));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in &headers {
            r.headers_mut().append(
                http::HeaderName::try_from(k.as_str()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r
    })
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether the second of two GETs of a fresh path is answered from the cache.
async fn reused(store: impl CacheStore, scope: &str, origin: &Origin) -> bool {
    let svc = cached(builder(store).scope(scope).build().unwrap(), origin);
    let path = format!("/{scope}");
    send(&svc, get(&path)).await;
    let before = origin.calls();
    let again = send(&svc, get(&path)).await;
    origin.calls() == before && again.cache_status().contains("hit")
}

conformance! {
    async fn rfc9111_3_any_final_status_with_explicit_freshness_is_stored(store) {
        for status in [200, 201, 299, 302, 307, 400, 410, 499, 500, 503, 599] {
            let origin = answering(status, fields(&[("cache-control", "max-age=60")]));
            assert!(reused(store.clone(), &format!("s{status}"), &origin).await, "{status}");
        }
        for status in [206, 304] {
            let origin = answering(status, fields(&[("cache-control", "max-age=60")]));
            assert!(!reused(store.clone(), &format!("s{status}"), &origin).await, "{status}");
        }
    }

    async fn rfc9111_4_2_2_heuristic_freshness_from_last_modified(store) {
        // Dated when it answers: a past Date would age the response.
        let lm = |status: u16, extra: &[(&str, &str)]| {
            let extra = fields(extra);
            Origin::new(move |_, n| {
                let mut r = res(&[], &format!("v{n}"));
                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                let mut f = fields(&[("date", &http_date(0)), ("last-modified", &http_date(-24 * 3600))]);
                f.extend(extra.iter().cloned());
                for (k, v) in f {
                    r.headers_mut().append(http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
                }
                r
            })
        };
        for status in [200, 203, 204, 404, 405, 410, 414, 501] {
            assert!(reused(store.clone(), &format!("h{status}"), &lm(status, &[])).await, "{status}");
        }
        for status in [201, 403, 502, 503, 599] {
            assert!(!reused(store.clone(), &format!("h{status}"), &lm(status, &[])).await, "{status}");
        }
        assert!(reused(store.clone(), "public599", &lm(599, &[("cache-control", "public")])).await);
        // 10% of a day, and a maximum.
        let origin = lm(200, &[]);
        let svc = cached(builder(store.clone()).scope("ttl").build().unwrap(), &origin);
        assert!(send(&svc, get("/t")).await.cache_status().contains("stored; ttl=86"), "8640 s");
        let svc = cached(builder(store.clone()).scope("cap").heuristic_freshness(0.1, Duration::from_secs(60)).build().unwrap(), &origin);
        let capped = send(&svc, get("/t")).await.cache_status();
        assert!(capped.contains("stored; ttl=60") || capped.contains("stored; ttl=59"), "{capped}");
        // Off where the application sets its own TTL.
        let svc = cached(builder(store).scope("app").default_ttl(Duration::from_secs(5)).build().unwrap(), &origin);
        let app = send(&svc, get("/t")).await.cache_status();
        assert!(app.contains("stored; ttl=5") || app.contains("stored; ttl=4"), "{app}");
    }

    async fn rfc9111_5_2_2_3_must_understand_lifts_no_store_for_known_statuses(store) {
        let cc = "max-age=60, must-understand, no-store";
        assert!(reused(store.clone(), "mu200", &answering(200, fields(&[("cache-control", cc)]))).await);
        assert!(!reused(store.clone(), "mu299", &answering(299, fields(&[("cache-control", cc)]))).await);
        assert!(!reused(store, "ns", &answering(200, fields(&[("cache-control", "max-age=60, no-store")]))).await);
    }

    async fn rfc9111_3_5_a_response_to_authorization_is_stored_only_when_it_allows_it(store) {
        for (cc, stored) in [
            ("max-age=60", false),
            ("public, max-age=60", true),
            ("s-maxage=60", true),
            ("max-age=60, must-revalidate", true),
        ] {
            let origin = versioned_with(cc);
            let svc = cached(builder(store.clone()).scope(format!("a{}", cc.len())).cache_authorized(true).build().unwrap(), &origin);
            send(&svc, with(Method::GET, "/doc", &[("authorization", "Bearer a")])).await;
            let other = send(&svc, get("/doc")).await;
            assert_eq!(other.body == "v1", stored, "{cc}");
        }
    }

    async fn rfc9111_5_1_an_invalid_age_is_ignored_and_a_list_keeps_its_first_member(store) {
        for (i, (age, reuse)) in [("abc", true), ("-7200", true), ("7200.0", true), ("0, 7200", true), ("7200, 0", false)].into_iter().enumerate() {
            let origin = answering(200, fields(&[("cache-control", "max-age=3600"), ("age", age)]));
            assert_eq!(reused(store.clone(), &format!("age{i}"), &origin).await, reuse, "Age: {age}");
        }
    }

    async fn rfc9110_5_6_7_expires_in_every_date_format_in_any_case_and_invalid_ones_in_the_past(store) {
        let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
        // The same instant as RFC 850 and asctime dates.
        let t: httpdate::HttpDate = future.parse().unwrap();
        let imf = t.to_string();
        let (wday, rest) = imf.split_once(", ").unwrap();
        let long = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
            .into_iter()
            .find(|d| d.starts_with(wday))
            .unwrap();
        let p: Vec<&str> = rest.split(' ').collect(); // [dd, Mon, yyyy, time, GMT]
        let rfc850 = format!("{long}, {}-{}-{} {} GMT", p[0], p[1], &p[2][2..], p[3]);
        let day = p[0].trim_start_matches('0');
        let asctime = format!("{wday} {} {day:>2} {} {}", p[1], p[3], p[2]);
        for (i, expires) in [imf.as_str(), &rfc850, &asctime].into_iter().enumerate() {
            let origin = answering(200, fields(&[("expires", expires)]));
            assert!(reused(store.clone(), &format!("x{i}"), &origin).await, "{expires}");
        }
        // Names and GMT in another case are read as the Internet Message
        // Format writes them (the robustness RFC 9110 §5.6.7 encourages) ...
        let upper = imf.to_uppercase();
        let origin = answering(200, fields(&[("expires", &upper)]));
        assert!(reused(store.clone(), "upper", &origin).await, "{upper}");
        // ... another zone is not GMT.
        let utc = imf.replace(" GMT", " UTC");
        for (i, expires) in ["0", "never", utc.as_str()].into_iter().enumerate() {
            let origin = answering(200, fields(&[("expires", expires)]));
            assert!(!reused(store.clone(), &format!("bad{i}"), &origin).await, "{expires}: in the past");
        }
    }

    async fn rfc9111_4_2_1_duplicate_directives_keep_the_first_and_conflicts_the_most_restrictive(store) {
        let two = fields(&[("cache-control", "max-age=3600"), ("cache-control", "max-age=0")]);
        assert!(reused(store.clone(), "first-fresh", &answering(200, two)).await);
        let two = fields(&[("cache-control", "max-age=0, max-age=3600")]);
        assert!(!reused(store.clone(), "first-stale", &answering(200, two)).await);
        let quoted = fields(&[("cache-control", "ext=\"max-age=3600\", max-age=0")]);
        assert!(!reused(store.clone(), "quoted", &answering(200, quoted)).await);
        let spaced = fields(&[("cache-control", "max-age =3600")]);
        assert!(!reused(store.clone(), "spaced", &answering(200, spaced)).await);
        for cc in ["max-age=3600, no-cache", "max-age=3600, private", "public, no-store, max-age=3600"] {
            assert!(!reused(store.clone(), "conflict", &answering(200, fields(&[("cache-control", cc)]))).await, "{cc}");
        }
        // A qualified no-cache or private keeps only the fields it names out.
        let origin = answering(200, fields(&[("cache-control", "no-cache=\"x-a\", max-age=3600"), ("x-a", "1"), ("x-b", "2")]));
        let svc = cached(builder(store).scope("named").build().unwrap(), &origin);
        send(&svc, get("/n")).await;
        let hit = send(&svc, get("/n")).await;
        assert!(hit.cache_status().contains("hit"));
        assert!(!hit.headers.contains_key("x-a") && hit.headers["x-b"] == "2");
    }
}

/// Waits (bounded) until `path` answers `body` from the cache.
async fn refreshed<S>(svc: &S, path: &str, body: &str)
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Response: Into<Response<tower_redis_layers::ResponseBody<Chunks>>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..200 {
        if send(svc, get(path)).await.body == body {
            return;
        }
    }
    panic!("{path} never answered {body}");
}

fn versioned_with(cc: &'static str) -> Origin {
    Origin::new(move |_, n| res(&[("cache-control", cc)], &format!("v{n}")))
}

/// A layer that honours request directives with no floor, as a proxy's.
fn honouring(store: impl CacheStore, scope: &str) -> ResponseCacheLayerBuilder {
    use tower_redis_layers::cache::RequestDirectives;
    builder(store)
        .scope(scope)
        .request_directives(RequestDirectives::Honor {
            min_age: Duration::ZERO,
        })
}

/// The method and fields of every request an origin got.
type Seen = Arc<std::sync::Mutex<Vec<(Method, HeaderMap)>>>;

/// An origin that records the fields of the requests it gets.
fn recording(
    handler: impl Fn(&Request<Full<Bytes>>, usize) -> Response<Chunks> + Send + Sync + 'static,
) -> (Origin, Seen) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let origin = Origin::new(move |req, n| {
        log.lock()
            .unwrap()
            .push((req.method().clone(), req.headers().clone()));
        handler(req, n)
    });
    (origin, seen)
}

/// A `304` when the request's `If-None-Match` is `"e1"`, else `v<n>` with
/// these fields and that ETag.
fn validating(
    cc: &'static str,
) -> impl Fn(&Request<Full<Bytes>>, usize) -> Response<Chunks> + Send + Sync + 'static {
    move |req, n| {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"e1\"")
        {
            let mut r = res(&[("cache-control", cc), ("etag", "\"e1\"")], "");
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            return r;
        }
        res(
            &[("cache-control", cc), ("etag", "\"e1\"")],
            &format!("v{n}"),
        )
    }
}

conformance! {
    async fn rfc9111_5_2_1_1_request_max_age_and_5_2_1_3_min_fresh(store) {
        let origin = answering(200, fields(&[("cache-control", "max-age=3600"), ("age", "1800")]));
        let svc = cached(honouring(store, "ma").build().unwrap(), &origin);
        send(&svc, get("/m")).await;
        let ask = |cc: &'static str| with(Method::GET, "/m", &[("cache-control", cc)]);
        assert_eq!(send(&svc, ask("max-age=3600")).await.body, "v1", "old enough");
        assert_eq!(send(&svc, ask("min-fresh=1000")).await.body, "v1", "fresh enough");
        assert_eq!(send(&svc, ask("max-age=600")).await.body, "v2", "too old: refetched");
        // v2 came with Age: 1800 too: 1800 s of 3600 left.
        assert_eq!(send(&svc, ask("min-fresh=2000")).await.body, "v3", "not fresh enough");
        assert_eq!(origin.calls(), 3);
    }

    async fn rfc9111_5_2_1_2_max_stale_takes_a_stale_entry_unless_the_response_forbids_it(store) {
        for (cc, taken) in [("max-age=1", true), ("max-age=1, must-revalidate", false), ("s-maxage=1", false)] {
            let origin = answering(200, fields(&[("cache-control", cc), ("etag", "\"e1\"")]));
            let svc = cached(honouring(store.clone(), &format!("ms{}", cc.len())).build().unwrap(), &origin);
            send(&svc, get("/s")).await;
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let got = send(&svc, with(Method::GET, "/s", &[("cache-control", "max-stale=60")])).await;
            assert_eq!(got.body == "v1", taken, "{cc}: {}", got.cache_status());
            let tight = send(&svc, with(Method::GET, "/s", &[("cache-control", "max-stale=0")])).await;
            assert_ne!(tight.body, "v1", "{cc}: stale by more than max-stale");
        }
    }

    async fn rfc9111_5_2_1_4_request_no_cache_revalidates_with_the_stored_validator(store) {
        let (origin, seen) = recording(validating("max-age=3600"));
        let svc = cached(honouring(store, "nc").build().unwrap(), &origin);
        send(&svc, get("/n")).await;
        let got = send(&svc, with(Method::GET, "/n", &[("cache-control", "no-cache")])).await;
        assert_eq!(got.body, "v1", "the stored body, validated");
        assert!(got.cache_status().contains("fwd-status=304"), "{}", got.cache_status());
        assert_eq!(seen.lock().unwrap()[1].1["if-none-match"], "\"e1\"");
        assert_eq!(origin.calls(), 2);
    }

    async fn rfc9111_5_2_1_5_request_no_store_and_5_2_1_7_only_if_cached(store) {
        let origin = versioned(MAX60);
        let svc = cached(honouring(store.clone(), "ns").build().unwrap(), &origin);
        let ns = send(&svc, with(Method::GET, "/x", &[("cache-control", "no-store")])).await;
        assert_eq!(ns.body, "v1");
        let oic = send(&svc, with(Method::GET, "/x", &[("cache-control", "only-if-cached")])).await;
        assert_eq!(oic.status, StatusCode::GATEWAY_TIMEOUT, "the no-store request stored nothing");
        send(&svc, get("/x")).await;
        let oic = send(&svc, with(Method::GET, "/x", &[("cache-control", "only-if-cached")])).await;
        assert_eq!((oic.status, oic.body), (StatusCode::OK, Bytes::from("v2")));
        // A stale entry is no answer for only-if-cached, unless max-stale takes it.
        let origin = answering(200, fields(&[("cache-control", "max-age=1"), ("etag", "\"e\"")]));
        let svc = cached(honouring(store, "oic").build().unwrap(), &origin);
        send(&svc, get("/o")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let oic = send(&svc, with(Method::GET, "/o", &[("cache-control", "only-if-cached")])).await;
        assert_eq!(oic.status, StatusCode::GATEWAY_TIMEOUT);
        let grace = send(&svc, with(Method::GET, "/o", &[("cache-control", "only-if-cached, max-stale")])).await;
        assert_eq!((grace.status, grace.body), (StatusCode::OK, Bytes::from("v1")));
        assert_eq!(origin.calls(), 1);
    }

    async fn rfc9110_13_with_no_usable_entry_the_clients_validators_are_forwarded(store) {
        let (origin, seen) = recording(validating("max-age=60"));
        let svc = cached(builder(store).build().unwrap(), &origin);
        let inm = [("if-none-match", "\"e1\"")];
        let first = send(&svc, with(Method::GET, "/f", &inm)).await;
        assert_eq!(first.status, StatusCode::NOT_MODIFIED, "the origin's answer to the client");
        assert_eq!(seen.lock().unwrap()[0].1["if-none-match"], "\"e1\"");
        // That 304 was this client's: the next request fills, nobody skips the lock.
        let full = send(&svc, get("/f")).await;
        assert_eq!((full.status, full.body.clone()), (StatusCode::OK, Bytes::from("v2")));
        assert!(full.cache_status().contains("stored"), "{}", full.cache_status());
        let again = send(&svc, with(Method::GET, "/f", &inm)).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        assert!(again.cache_status().contains("hit"));
        assert_eq!(origin.calls(), 2);
    }

    async fn rfc9110_13_1_if_match_is_strong_and_if_none_match_weak_on_a_stored_response(store) {
        let origin = answering(200, fields(&[("cache-control", "max-age=60"), ("etag", "W/\"w1\"")]));
        let svc = cached(builder(store.clone()).scope("weak").build().unwrap(), &origin);
        send(&svc, get("/c")).await;
        let inm = send(&svc, with(Method::GET, "/c", &[("if-none-match", "\"w1\"")])).await;
        assert_eq!(inm.status, StatusCode::NOT_MODIFIED, "weak comparison");
        let im = send(&svc, with(Method::GET, "/c", &[("if-match", "W/\"w1\"")])).await;
        assert_eq!(im.status, StatusCode::PRECONDITION_FAILED, "strong comparison: a weak tag never matches");
        let origin = answering(200, fields(&[("cache-control", "max-age=60"), ("etag", "\"s1\""), ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT")]));
        let svc = cached(builder(store).scope("strong").build().unwrap(), &origin);
        send(&svc, get("/c")).await;
        let ok = send(&svc, with(Method::GET, "/c", &[("if-match", "\"s0\", \"s1\"")])).await;
        assert_eq!((ok.status, ok.body), (StatusCode::OK, Bytes::from("v1")));
        let other = send(&svc, with(Method::GET, "/c", &[("if-match", "\"s2\"")])).await;
        assert_eq!(other.status, StatusCode::PRECONDITION_FAILED);
        let ius = send(&svc, with(Method::GET, "/c", &[("if-unmodified-since", "Wed, 31 Dec 2025 00:00:00 GMT")])).await;
        assert_eq!(ius.status, StatusCode::PRECONDITION_FAILED);
        let ims = send(&svc, with(Method::GET, "/c", &[("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")])).await;
        assert_eq!(ims.status, StatusCode::NOT_MODIFIED);
        assert_eq!(origin.calls(), 1);
    }

    async fn rfc9111_4_3_5_a_head_response_freshens_the_stored_get(store) {
        let (origin, seen) = recording(|req, n| {
            if req.method() == Method::HEAD {
                return res(&[("cache-control", "max-age=60"), ("etag", "\"e1\""), ("x-v", "head")], "");
            }
            res(&[("cache-control", "max-age=1"), ("etag", "\"e1\""), ("x-v", "get")], &format!("v{n}"))
        });
        let svc = cached(builder(store.clone()).build().unwrap(), &origin);
        // A HEAD with nothing stored goes to the origin and stores nothing.
        let head = send(&svc, with(Method::HEAD, "/h", &[])).await;
        assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
        assert_eq!(send(&svc, get("/h")).await.body, "v2");
        // Fresh: answered from the stored GET.
        let head = send(&svc, with(Method::HEAD, "/h", &[])).await;
        assert!(head.cache_status().contains("hit") && head.body.is_empty());
        assert_eq!(origin.calls(), 2);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Stale: the HEAD's 200 for the same representation freshens it.
        let head = send(&svc, with(Method::HEAD, "/h", &[])).await;
        assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
        assert_eq!(seen.lock().unwrap()[2].0, Method::HEAD);
        let hit = send(&svc, get("/h")).await;
        assert_eq!((hit.body.clone(), hit.headers["x-v"].clone()), (Bytes::from("v2"), "head".parse().unwrap()));
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
        assert_eq!(origin.calls(), 3);
    }

    async fn rfc9111_4_3_4_a_304_freshens_every_variant_its_strong_etag_selects(store) {
        // `/v` varies on Accept, with the strong ETag "e2" for text/plain and
        // "e1" for the others; `/w` has the weak W/"w1". Fresh for 1 s; a
        // 304 (to a matching If-None-Match) says fresh for a minute.
        let origin = Origin::new(|req, n| {
            let plain = req.headers().get("accept").is_some_and(|a| a == "text/plain");
            let etag = match (req.uri().path(), plain) {
                ("/w", _) => "W/\"w1\"",
                (_, true) => "\"e2\"",
                _ => "\"e1\"",
            };
            if req.headers().get("if-none-match").is_some_and(|v| v == etag) {
                let fields = [("cache-control", "max-age=60"), ("etag", etag), ("vary", "accept"), ("x-v", "304")];
                let mut r = res(&fields, "");
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                return r;
            }
            let fields = [("cache-control", "max-age=1"), ("etag", etag), ("vary", "accept"), ("x-v", "200")];
            res(&fields, &format!("v{n}"))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let ask = |path: &str, accept: &str| with(Method::GET, path, &[("accept", accept)]);
        for (path, accept) in [("/v", "text/html"), ("/v", "application/json"), ("/v", "text/plain"), ("/w", "text/html"), ("/w", "application/json")] {
            send(&svc, ask(path, accept)).await;
        }
        assert_eq!(origin.calls(), 5);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let revalidated = send(&svc, ask("/v", "text/html")).await;
        assert!(revalidated.cache_status().contains("fwd-status=304"), "{}", revalidated.cache_status());
        assert_eq!((revalidated.body, origin.calls()), (Bytes::from("v1"), 6));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The other variant with "e1" was freshened by that 304: a hit, with its fields.
        let json = send(&svc, ask("/v", "application/json")).await;
        assert!(json.cache_status().contains("hit"), "{}", json.cache_status());
        assert_eq!((json.body, json.headers["x-v"].clone()), (Bytes::from("v2"), "304".parse().unwrap()));
        assert_eq!(origin.calls(), 6);
        // "e2" was not selected: still stale, revalidated on its own.
        let plain = send(&svc, ask("/v", "text/plain")).await;
        assert!(plain.cache_status().contains("fwd=stale; fwd-status=304"), "{}", plain.cache_status());
        assert_eq!((plain.body, origin.calls()), (Bytes::from("v3"), 7));
        // A weak validator freshens only the response the request selected.
        assert!(send(&svc, ask("/w", "text/html")).await.cache_status().contains("fwd-status=304"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let other = send(&svc, ask("/w", "application/json")).await;
        assert!(other.cache_status().contains("fwd=stale; fwd-status=304"), "{}", other.cache_status());
        assert_eq!((other.body, origin.calls()), (Bytes::from("v5"), 9));
    }

    async fn interim_responses_and_protocol_switches_are_never_stored(store) {
        let origin = answering(101, fields(&[("cache-control", "max-age=60"), ("upgrade", "websocket")]));
        let svc = cached(builder(store.clone()).scope("101").build().unwrap(), &origin);
        let ws = [("upgrade", "websocket"), ("connection", "upgrade")];
        let first = send(&svc, with(Method::GET, "/ws", &ws)).await;
        assert_eq!(first.status, StatusCode::SWITCHING_PROTOCOLS);
        assert!(first.cache_status().contains("fwd=bypass; detail=upgrade"));
        assert!(!reused(store, "1xx", &answering(103, fields(&[("cache-control", "max-age=60")]))).await);
    }
}

/// How an origin fails after its first answer.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// The service fails (connection refused, reset).
    Error,
    /// A proxy's 502 marked `OriginUnreachable`.
    Marked,
    /// A 503 from the origin itself.
    Unavailable,
}

/// An origin whose first answer is `v1` with `cc`, then fails.
#[derive(Clone)]
struct Unreachable {
    cc: &'static str,
    failure: Failure,
    calls: Arc<AtomicUsize>,
}

impl Service<Request<Full<Bytes>>> for Unreachable {
    type Response = Response<Chunks>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Response<Chunks>, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return std::future::ready(Ok(res(&[("cache-control", self.cc)], "v1")));
        }
        let mut r = res(&[], "down");
        match self.failure {
            Failure::Error => {
                return std::future::ready(Err(std::io::ErrorKind::ConnectionRefused.into()))
            }
            Failure::Marked => {
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                r.extensions_mut()
                    .insert(tower_redis_layers::cache::OriginUnreachable);
            }
            Failure::Unavailable => *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
        }
        std::future::ready(Ok(r))
    }
}

conformance! {
    async fn rfc9111_4_2_4_stale_is_served_when_the_origin_cannot_be_reached(store) {
        let cases = [
            ("max-age=1", Failure::Error, true),
            ("max-age=1", Failure::Marked, true),
            ("max-age=1", Failure::Unavailable, false),
            ("max-age=1, must-revalidate", Failure::Error, false),
            ("max-age=1, proxy-revalidate", Failure::Marked, false),
            ("s-maxage=1", Failure::Error, false),
            ("s-maxage=1, stale-if-error=60", Failure::Error, true),
            ("max-age=1, no-cache", Failure::Error, false),
        ];
        for (i, (cc, failure, stale)) in cases.into_iter().enumerate() {
            let origin = Unreachable { cc, failure, calls: Arc::default() };
            let layer = builder(store.clone()).scope(format!("u{i}")).stale_if_unreachable(Duration::from_secs(60)).build().unwrap();
            let svc = ServiceBuilder::new().layer(layer).service(origin);
            send_ok(&svc, get("/u")).await;
            tokio::time::sleep(Duration::from_millis(1100)).await;
            match svc.clone().oneshot(get("/u")).await {
                Ok(r) => {
                    let status = r.headers().get("cache-status").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                    let served = r.status() == StatusCode::OK;
                    assert_eq!(served, stale, "{cc} {failure:?}: {status}");
                    if served {
                        assert!(status.contains("fwd=stale") && status.contains("detail=unreachable") != matches!(failure, Failure::Unavailable), "{status}");
                        assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "v1");
                    }
                }
                Err(e) => assert!(!stale, "{cc}: {e}"),
            }
        }
        // Bounded: past the configured staleness, the failure is the answer.
        let origin = Unreachable { cc: "max-age=1", failure: Failure::Error, calls: Arc::default() };
        let layer = builder(store).scope("bounded").stale_if_unreachable(Duration::from_millis(100)).build().unwrap();
        let svc = ServiceBuilder::new().layer(layer).service(origin);
        send_ok(&svc, get("/u")).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(svc.clone().oneshot(get("/u")).await.is_err());
    }

    async fn rfc5861_3_stale_while_revalidate_answers_everyone_at_once_and_refreshes_once_fleet_wide(store) {
        let origin = HeldOrigin {
            hold: 2,
            cc: "max-age=1, stale-while-revalidate=60",
            ..HeldOrigin::default()
        };
        let fleet: Vec<_> = (0..3)
            .map(|_| ServiceBuilder::new().layer(builder(store.clone()).build().unwrap()).service(origin.clone()))
            .collect();
        assert_eq!(body_of(&fleet[0], get("/swr")).await, "v0");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        origin.version.fetch_add(1, Ordering::SeqCst);
        // Stale now: 30 requests across the instances, while the one
        // refresh is held at the origin, all get the stale entry.
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let svc = fleet[i % 3].clone();
                tokio::spawn(async move { body_of(&svc, get("/swr")).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "v0", "answered at once");
        }
        origin.reached(2).await;
        assert_eq!(origin.gets.load(Ordering::SeqCst), 2, "one refresh across the fleet");
        origin.release();
        for svc in &fleet {
            refreshed(svc, "/swr", "v1").await;
        }
        assert_eq!(origin.gets.load(Ordering::SeqCst), 2);
    }
}

async fn send_ok<S>(svc: &S, req: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Response: Into<Response<tower_redis_layers::ResponseBody<Chunks>>>,
    S::Error: std::fmt::Debug,
{
    let res: Response<_> = svc.clone().oneshot(req).await.unwrap().into();
    res.into_body().collect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// An origin answering `<path> v<n>` fresh for an hour, with the
/// `Surrogate-Key` its path names: `/a` "t1 t2", `/b` "t2", `/c` "t3".
fn tagged() -> Origin {
    Origin::new(|req, n| {
        let path = req.uri().path().to_owned();
        let tags = match path.as_str() {
            "/a" => "t1 t2",
            "/b" => "t2",
            _ => "t3",
        };
        res(
            &[("cache-control", "max-age=3600"), ("surrogate-key", tags)],
            &format!("{path} v{n}"),
        )
    })
}

conformance! {
    async fn purge_tag_drops_every_entry_that_named_the_tag_on_every_instance(store) {
        let origin = tagged();
        let layers: Vec<_> = (0..3).map(|_| builder(store.clone()).build().unwrap()).collect();
        let fleet: Vec<_> = layers.iter().map(|l| cached(l.clone(), &origin)).collect();
        for (i, path) in ["/a", "/b", "/c"].into_iter().enumerate() {
            let got = send(&fleet[i], get(path)).await;
            assert!(!got.headers.contains_key("surrogate-key"), "stripped before the client");
        }
        let hit = send(&fleet[1], get("/a")).await;
        assert!(hit.cache_status().contains("hit") && !hit.headers.contains_key("surrogate-key"));
        assert_eq!(layers[2].handle().purge_tag("t2").await.unwrap(), 2);
        for svc in &fleet {
            let a = send(svc, get("/a")).await;
            assert!(!a.body.ends_with(b" v1"), "purged everywhere: {:?}", a.body);
        }
        assert_eq!(send(&fleet[0], get("/c")).await.body, "/c v3", "another tag stays");
        let before = origin.calls();
        send(&fleet[1], get("/b")).await;
        assert_eq!(origin.calls(), before + 1, "/b was purged too");
        assert_eq!(layers[0].handle().purge_tag("t9").await.unwrap(), 0);
        // Shown to clients when configured.
        let svc = cached(builder(store).scope("shown").strip_tag_header(false).build().unwrap(), &origin);
        assert_eq!(send(&svc, get("/c")).await.headers["surrogate-key"], "t3");
        assert_eq!(send(&svc, get("/c")).await.headers["surrogate-key"], "t3");
    }

    async fn a_tag_purge_wins_over_a_fill_in_flight(store) {
        let origin = HeldOrigin { tags: "item", ..HeldOrigin::default() };
        let layers: Vec<_> = (0..2).map(|_| builder(store.clone()).build().unwrap()).collect();
        let [a, b] = [0, 1].map(|i| ServiceBuilder::new().layer(layers[i].clone()).service(origin.clone()));
        let held = tokio::spawn({
            let a = a.clone();
            async move { body_of(&a, get("/item")).await }
        });
        origin.reached(1).await;
        origin.version.fetch_add(1, Ordering::SeqCst);
        layers[1].handle().purge_tag("item").await.unwrap();
        origin.release();
        assert_eq!(held.await.unwrap(), "v0");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(body_of(&b, get("/item")).await, "v1", "the fill from before the purge never landed");
    }

    async fn soft_purge_marks_entries_stale_and_one_revalidation_runs_fleet_wide(store) {
        let (origin, seen) = recording(|req, n| {
            let cc = "max-age=3600, stale-while-revalidate=60";
            if req.headers().get("if-none-match").is_some_and(|v| v == "\"e1\"") {
                let mut r = res(&[("cache-control", cc), ("etag", "\"e1\""), ("surrogate-key", "s")], "");
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                return r;
            }
            res(&[("cache-control", cc), ("etag", "\"e1\""), ("surrogate-key", "s")], &format!("v{n}"))
        });
        let layers: Vec<_> = (0..3).map(|_| builder(store.clone()).build().unwrap()).collect();
        let fleet: Vec<_> = layers.iter().map(|l| cached(l.clone(), &origin)).collect();
        assert_eq!(send(&fleet[0], get("/s")).await.body, "v1");
        assert_eq!(layers[1].handle().soft_purge_tag("s").await.unwrap(), 1);
        // A fill that looks up within the purge's millisecond is not
        // stored (it cannot be told from one that looked up before).
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Every request is answered with the kept entry; one revalidates it.
        for i in 0..12 {
            assert_eq!(send(&fleet[i % 3], get("/s")).await.body, "v1");
        }
        assert_eq!(origin.calls(), 2, "one revalidation across the fleet");
        assert_eq!(seen.lock().unwrap()[1].1["if-none-match"], "\"e1\"");
        let hit = send(&fleet[2], get("/s")).await;
        assert!(hit.cache_status().starts_with("trl; hit; ttl=35"), "refreshed: {}", hit.cache_status());
        // Without stale-while-revalidate the next request revalidates first.
        let origin = Origin::new(validating("max-age=3600"));
        let layer = builder(store).scope("url").build().unwrap();
        let svc = cached(layer.clone(), &origin);
        send(&svc, with(Method::GET, "/u", &[("host", "api.example")])).await;
        layer.handle().soft_purge_url(&"http://api.example/u".parse().unwrap()).await.unwrap();
        let reval = send(&svc, with(Method::GET, "/u", &[("host", "api.example")])).await;
        assert_eq!(reval.body, "v1");
        assert!(reval.cache_status().contains("fwd=stale; fwd-status=304"), "{}", reval.cache_status());
        assert_eq!(origin.calls(), 2);
    }
}

conformance! {
    async fn application_values_get_put_and_a_put_wins_over_a_load_in_flight(store) {
        use tower_redis_layers::cache::Stored;
        let layers: Vec<_> = (0..2).map(|_| builder(store.clone()).build().unwrap()).collect();
        let (a, b) = (layers[0].handle(), layers[1].handle());
        assert_eq!(a.get("row:1").await.unwrap(), None);
        assert!(a.put("row:1", Bytes::from_static(b"one"), Duration::from_secs(60)).await.unwrap());
        assert_eq!(b.get("row:1").await.unwrap(), Some(Bytes::from_static(b"one")), "on every instance");
        let v = b.get_or_load("row:1", Duration::from_secs(60), || async { Err::<Bytes, _>("not loaded") }).await;
        assert_eq!(v, Ok(Bytes::from_static(b"one")));
        // A load that read the old row is in flight when the new row is put.
        let gate = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(tokio::sync::Notify::new());
        let slow = tokio::spawn({
            let (a, gate, started) = (a.clone(), gate.clone(), started.clone());
            async move {
                a.get_or_load("row:2", Stored::ttl(Duration::from_secs(60)), || async move {
                    started.notify_one();
                    gate.notified().await;
                    Ok::<_, Infallible>(Bytes::from_static(b"old"))
                })
                .await
            }
        });
        started.notified().await;
        assert!(b.put("row:2", Bytes::from_static(b"new"), Duration::from_secs(60)).await.unwrap());
        gate.notify_one();
        assert_eq!(slow.await.unwrap(), Ok(Bytes::from_static(b"old")), "its own caller gets what it loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
        for h in [&a, &b] {
            assert_eq!(h.get("row:2").await.unwrap(), Some(Bytes::from_static(b"new")), "the put won");
        }
        // A purge after the put drops it everywhere.
        b.invalidate_key("row:2").await.unwrap();
        assert_eq!(a.get("row:2").await.unwrap(), None);
    }

    async fn nothing_found_is_cached_only_with_an_explicit_negative_ttl(store) {
        use tower_redis_layers::cache::Stored;
        let handle = builder(store).build().unwrap().handle();
        let loads = Arc::new(AtomicUsize::new(0));
        let none = || {
            let loads = loads.clone();
            move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<Bytes>, Infallible>(None)
            }
        };
        for _ in 0..2 {
            let v = handle.get_or_load_optional("gone", Duration::from_secs(60), none()).await;
            assert_eq!(v, Ok(None));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(loads.load(Ordering::SeqCst), 2, "no negative TTL: never stored");
        let short = Stored::ttl(Duration::from_secs(60)).negative_ttl(Duration::from_millis(300));
        for _ in 0..3 {
            let v = handle.get_or_load_optional("gone", short.clone(), none()).await;
            assert_eq!(v, Ok(None));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(loads.load(Ordering::SeqCst), 3, "remembered for the negative TTL");
        assert_eq!(handle.get("gone").await.unwrap(), None);
        // A plain get_or_load is not answered with the stored "nothing".
        let v = handle.get_or_load("gone", Duration::from_secs(60), || async { Ok::<_, Infallible>(Bytes::from_static(b"here")) }).await;
        assert_eq!(v, Ok(Bytes::from_static(b"here")));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let v = handle.get_or_load_optional("gone", short, none()).await;
        assert_eq!((v, loads.load(Ordering::SeqCst)), (Ok(None), 4), "expired: loaded again");
    }

    async fn tags_on_application_values_are_purged_with_purge_tag(store) {
        use tower_redis_layers::cache::Stored;
        let layer = builder(store).build().unwrap();
        let handle = layer.handle();
        let tagged = Stored::ttl(Duration::from_secs(60)).tag("users");
        handle.put("user:1", Bytes::from_static(b"ann"), tagged.clone()).await.unwrap();
        let v = handle.get_or_load("user:2", tagged.clone().tag("admins"), || async { Ok::<_, Infallible>(Bytes::from_static(b"bob")) }).await;
        assert_eq!(v, Ok(Bytes::from_static(b"bob")));
        handle.put("item:1", Bytes::from_static(b"pen"), Duration::from_secs(60)).await.unwrap();
        // An HTTP response tagged the same goes too.
        let origin = Origin::new(|_, n| res(&[("cache-control", "max-age=60"), ("surrogate-key", "users")], &format!("v{n}")));
        let svc = cached(layer, &origin);
        send(&svc, get("/users")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(handle.purge_tag("users").await.unwrap(), 3);
        assert_eq!(handle.get("user:1").await.unwrap(), None);
        assert_eq!(handle.get("user:2").await.unwrap(), None);
        assert_eq!(handle.get("item:1").await.unwrap(), Some(Bytes::from_static(b"pen")));
        assert_eq!(send(&svc, get("/users")).await.body, "v2");
    }

    async fn typed_values_are_stored_as_json(store) {
        let handle = builder(store).build().unwrap().handle();
        let row = ("ann".to_owned(), 42u32);
        let v = handle.get_or_load_json("user:1", Duration::from_secs(60), || async { Ok::<_, Infallible>(("ann".to_owned(), 42u32)) }).await;
        assert_eq!(v, Ok(row.clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(handle.get("user:1").await.unwrap(), Some(Bytes::from_static(b"[\"ann\",42]")), "JSON in the store");
        let v = handle.get_or_load_json("user:1", Duration::from_secs(60), || async { Err::<(String, u32), _>("not loaded") }).await;
        assert_eq!(v, Ok(row.clone()));
        assert_eq!(handle.get_json::<(String, u32)>("user:1").await.unwrap(), Some(row));
        // Bytes that are no such value read as a miss and are replaced.
        handle.put("user:2", Bytes::from_static(b"\x00not json"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(handle.get_json::<(String, u32)>("user:2").await.unwrap(), None);
        let v = handle.get_or_load_json("user:2", Duration::from_secs(60), || async { Ok::<_, Infallible>(("bob".to_owned(), 7u32)) }).await;
        assert_eq!(v, Ok(("bob".to_owned(), 7)));
        assert_eq!(handle.get_json::<(String, u32)>("user:2").await.unwrap(), Some(("bob".to_owned(), 7)));
        assert!(handle.put_json("user:3", &vec![1, 2], Duration::from_secs(60)).await.unwrap());
        assert_eq!(handle.get_json::<Vec<u8>>("user:3").await.unwrap(), Some(vec![1, 2]));
        let none = handle.get_or_load_json_optional::<u8, _, _, Infallible>("user:4", Duration::from_secs(60), || async { Ok(None) }).await;
        assert_eq!(none, Ok(None));
    }
}

conformance! {
    async fn rfc9110_14_range_requests_are_answered_from_the_stored_response(store) {
        let (origin, seen) = recording(|_, _| res(&[("cache-control", "max-age=60"), ("etag", "\"r1\""), ("content-type", "text/plain")], "0123456789"));
        let svc = cached(builder(store).build().unwrap(), &origin);
        let range = |r: &'static str| with(Method::GET, "/r", &[("range", r)]);
        let first = send(&svc, range("bytes=2-4")).await;
        assert_eq!((first.status, first.body.clone()), (StatusCode::PARTIAL_CONTENT, Bytes::from("234")));
        assert_eq!(first.headers["content-range"], "bytes 2-4/10");
        // The range was asked for; this origin answered with the whole
        // response, which is stored and cut.
        assert_eq!(seen.lock().unwrap()[0].1["range"], "bytes=2-4");
        let hit = send(&svc, range("bytes=-3")).await;
        assert_eq!((hit.status, hit.body.clone()), (StatusCode::PARTIAL_CONTENT, Bytes::from("789")));
        assert!(hit.cache_status().contains("hit"));
        assert_eq!(hit.headers["content-length"], "3");
        let open = send(&svc, range("bytes=7-")).await;
        assert_eq!(open.body, "789");
        let many = send(&svc, range("bytes=0-0, 9-9")).await;
        assert_eq!(many.status, StatusCode::PARTIAL_CONTENT);
        let ct = many.headers["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
        let text = String::from_utf8(many.body.to_vec()).unwrap();
        assert!(text.contains("Content-Range: bytes 0-0/10\r\n\r\n0") && text.contains("Content-Range: bytes 9-9/10\r\n\r\n9"), "{text}");
        let none = send(&svc, range("bytes=10-")).await;
        assert_eq!((none.status, none.headers["content-range"].clone()), (StatusCode::RANGE_NOT_SATISFIABLE, "bytes */10".parse().unwrap()));
        let ignored = send(&svc, range("bytes=5-1")).await;
        assert_eq!((ignored.status, ignored.body.clone()), (StatusCode::OK, Bytes::from("0123456789")), "invalid: ignored");
        // If-Range: the range only for the representation the client has.
        let same = send(&svc, with(Method::GET, "/r", &[("range", "bytes=0-1"), ("if-range", "\"r1\"")])).await;
        assert_eq!((same.status, same.body.clone()), (StatusCode::PARTIAL_CONTENT, Bytes::from("01")));
        let other = send(&svc, with(Method::GET, "/r", &[("range", "bytes=0-1"), ("if-range", "\"r0\"")])).await;
        assert_eq!((other.status, other.body.clone()), (StatusCode::OK, Bytes::from("0123456789")));
        let head = send(&svc, with(Method::HEAD, "/r", &[("range", "bytes=0-1")])).await;
        assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
        assert_eq!(origin.calls(), 1);
    }
}

/// An origin serving `0123456789` with ETag `"p<version>"` that answers a
/// single `Range` with `206` (the version advances when `changes`).
fn ranged(changes: bool) -> (Origin, Seen) {
    recording(move |req, n| {
        let full = "0123456789";
        let etag = format!("\"p{}\"", if changes { n } else { 1 });
        let range = req.headers().get("range").and_then(|v| {
            let (a, b) = v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-')?;
            Some((
                a.parse::<usize>().ok()?,
                b.parse::<usize>().unwrap_or(9).min(9),
            ))
        });
        let cc = ("cache-control", "max-age=60");
        let mut r = match range {
            Some((a, _)) if a > 9 => {
                let mut r = res(&[cc, ("content-range", "bytes */10")], "");
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                r
            }
            Some((a, b)) => {
                let cr = format!("bytes {a}-{b}/10");
                let mut r = res(&[cc, ("content-range", &cr)], &full[a..=b]);
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                r
            }
            None => res(&[cc], full),
        };
        r.headers_mut().insert("etag", etag.parse().unwrap());
        r
    })
}

conformance! {
    async fn rfc9111_3_3_and_3_4_partial_responses_are_stored_and_combined(store) {
        let (origin, seen) = ranged(false);
        let svc = cached(builder(store.clone()).build().unwrap(), &origin);
        let range = |r: &'static str| with(Method::GET, "/p", &[("range", r)]);
        let last_range = |seen: &Seen| seen.lock().unwrap().last().unwrap().1.get("range").cloned();
        // A miss asks the origin for the range; its 206 is stored.
        let first = send(&svc, range("bytes=0-4")).await;
        assert_eq!((first.status, first.body.clone()), (StatusCode::PARTIAL_CONTENT, Bytes::from("01234")));
        assert_eq!(last_range(&seen).unwrap(), "bytes=0-4");
        assert!(first.cache_status().contains("stored"), "{}", first.cache_status());
        // Ranges within the part are answered from it, several at once too.
        let within = send(&svc, range("bytes=1-3")).await;
        assert_eq!((within.status, within.body.clone()), (StatusCode::PARTIAL_CONTENT, Bytes::from("123")));
        assert_eq!(within.headers["content-range"], "bytes 1-3/10");
        assert!(within.cache_status().contains("hit"), "{}", within.cache_status());
        let many = send(&svc, range("bytes=0-0,4-4")).await;
        assert_eq!(many.status, StatusCode::PARTIAL_CONTENT);
        assert!(many.headers["content-type"].to_str().unwrap().starts_with("multipart/byteranges"));
        assert_eq!(origin.calls(), 1);
        // One past it goes to the origin with its Range, and the parts combine.
        let rest = send(&svc, range("bytes=5-9")).await;
        assert_eq!((rest.status, rest.body.clone()), (StatusCode::PARTIAL_CONTENT, Bytes::from("56789")));
        assert_eq!(last_range(&seen).unwrap(), "bytes=5-9");
        assert_eq!(origin.calls(), 2);
        // Complete now: a 200 for a request without Range, and any range.
        let whole = send(&svc, get("/p")).await;
        assert_eq!((whole.status, whole.body.clone()), (StatusCode::OK, Bytes::from("0123456789")));
        assert_eq!(whole.headers["content-length"], "10");
        assert!(!whole.headers.contains_key("content-range"));
        assert!(whole.cache_status().contains("hit"), "{}", whole.cache_status());
        let across = send(&svc, range("bytes=3-6")).await;
        assert_eq!(across.body, "3456");
        let head = send(&svc, with(Method::HEAD, "/p", &[])).await;
        assert_eq!((head.status, head.headers["content-length"].clone()), (StatusCode::OK, "10".parse().unwrap()));
        assert_eq!(origin.calls(), 2);
    }

    async fn rfc9111_3_3_a_part_never_answers_a_request_without_range(store) {
        let (origin, seen) = ranged(false);
        let svc = cached(builder(store.clone()).build().unwrap(), &origin);
        send(&svc, with(Method::GET, "/q", &[("range", "bytes=0-4")])).await;
        let head = send(&svc, with(Method::HEAD, "/q", &[])).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(!head.cache_status().contains("hit"), "{}", head.cache_status());
        let whole = send(&svc, get("/q")).await;
        assert_eq!((whole.status, whole.body.clone()), (StatusCode::OK, Bytes::from("0123456789")));
        assert!(!seen.lock().unwrap().last().unwrap().1.contains_key("range"));
        assert_eq!(origin.calls(), 3);
        // That 200 replaced the part: everything is answered from it now.
        assert_eq!(send(&svc, get("/q")).await.body, "0123456789");
        assert_eq!(send(&svc, with(Method::GET, "/q", &[("range", "bytes=8-")])).await.body, "89");
        // A 416 answers its request alone: it is not stored.
        let (origin, _) = ranged(false);
        let svc = cached(builder(store.clone()).scope("416").build().unwrap(), &origin);
        let none = send(&svc, with(Method::GET, "/q", &[("range", "bytes=20-")])).await;
        assert_eq!(none.status, StatusCode::RANGE_NOT_SATISFIABLE);
        let whole = send(&svc, get("/q")).await;
        assert_eq!((whole.status, whole.body.clone(), origin.calls()), (StatusCode::OK, Bytes::from("0123456789"), 2));
        // A range the part does not cover, an unsatisfiable one, or one
        // whose If-Range does not match goes to the origin.
        let (origin, _) = ranged(false);
        let svc = cached(builder(store).scope("u").build().unwrap(), &origin);
        send(&svc, with(Method::GET, "/q", &[("range", "bytes=0-4")])).await;
        for (range, if_range) in [("bytes=0-1", "\"p0\""), ("bytes=4-5", "\"p1\""), ("bytes=20-", "\"p1\"")] {
            let before = origin.calls();
            send(&svc, with(Method::GET, "/q", &[("range", range), ("if-range", if_range)])).await;
            assert_eq!(origin.calls(), before + 1, "{range} {if_range}");
        }
    }

    async fn rfc9111_3_4_parts_of_another_representation_are_not_combined(store) {
        // Every answer has a new ETag: no two parts are of one representation.
        let (origin, _) = ranged(true);
        let svc = cached(builder(store).build().unwrap(), &origin);
        let range = |r: &'static str| with(Method::GET, "/v", &[("range", r)]);
        send(&svc, range("bytes=0-4")).await;
        let second = send(&svc, range("bytes=5-9")).await;
        assert_eq!((second.body.clone(), second.headers["etag"].clone()), (Bytes::from("56789"), "\"p2\"".parse().unwrap()));
        // The newer part replaced the older one; nothing was made complete.
        let hit = send(&svc, range("bytes=6-7")).await;
        assert!(hit.cache_status().contains("hit") && hit.body == "67", "{}", hit.cache_status());
        send(&svc, range("bytes=0-1")).await;
        let whole = send(&svc, get("/v")).await;
        assert_eq!((whole.status, whole.body), (StatusCode::OK, Bytes::from("0123456789")));
        assert_eq!(origin.calls(), 4);
    }
}

fn cdn(store: impl CacheStore, scope: &str) -> ResponseCacheLayerBuilder {
    builder(store)
        .scope(scope)
        .targeted_cache_control([http::HeaderName::from_static("cdn-cache-control")])
}

/// Whether the second of two GETs through `layer` is answered from the cache.
async fn reused_by(layer: ResponseCacheLayer, origin: &Origin) -> bool {
    let svc = cached(layer, origin);
    send(&svc, get("/t")).await;
    let before = origin.calls();
    let again = send(&svc, get("/t")).await;
    origin.calls() == before && again.cache_status().contains("hit")
}

conformance! {
    async fn rfc9213_2_1_a_valid_targeted_field_replaces_cache_control_and_expires(store) {
        let expires = http_date(3600);
        for (i, (pairs, stored)) in [
            (vec![("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")], true),
            (vec![("cache-control", "max-age=60"), ("cdn-cache-control", "no-store")], false),
            (vec![("cache-control", "max-age=60"), ("cdn-cache-control", "private")], false),
            (vec![("cache-control", "max-age=60"), ("cdn-cache-control", "max-age=0")], false),
            (vec![("expires", expires.as_str()), ("cdn-cache-control", "max-age=0")], false),
            (vec![("expires", "0"), ("cdn-cache-control", "max-age=60")], true),
            (vec![("cdn-cache-control", "foobar, max-age=60")], true),
            // Invalid (not a dictionary, a wrong type, upper case): ignored.
            (vec![("cache-control", "no-store"), ("cdn-cache-control", "max-age=60, &&&")], false),
            (vec![("cache-control", "no-store"), ("cdn-cache-control", "max-age=\"60\"")], false),
            (vec![("cache-control", "max-age=60"), ("cdn-cache-control", "MAX-AGE=0")], true),
        ].into_iter().enumerate() {
            let origin = answering(200, fields(&pairs));
            let layer = cdn(store.clone(), &format!("t{i}")).build().unwrap();
            assert_eq!(reused_by(layer, &origin).await, stored, "{pairs:?}");
        }
        // The field is passed on; without a target list it is not obeyed.
        let origin = answering(200, fields(&[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")]));
        let svc = cached(cdn(store.clone(), "fwd").build().unwrap(), &origin);
        assert_eq!(send(&svc, get("/t")).await.headers["cdn-cache-control"], "max-age=60");
        let plain = builder(store).scope("plain").build().unwrap();
        assert!(!reused_by(plain, &origin).await, "off by default");
    }
}

conformance! {
    async fn rfc9111_5_4_a_request_pragma_no_cache_without_cache_control_revalidates(store) {
        let (origin, seen) = recording(validating("max-age=3600"));
        let svc = cached(honouring(store.clone(), "pragma").build().unwrap(), &origin);
        send(&svc, get("/n")).await;
        let got = send(&svc, with(Method::GET, "/n", &[("pragma", "no-cache")])).await;
        assert_eq!(got.body, "v1", "the stored body, validated");
        assert!(got.cache_status().contains("fwd-status=304"), "{}", got.cache_status());
        assert_eq!(seen.lock().unwrap()[1].1["if-none-match"], "\"e1\"");
        // With Cache-Control it is read alone; other pragmas mean nothing.
        for pairs in [[("pragma", "no-cache"), ("cache-control", "max-stale=0")], [("pragma", "x-other"), ("x-none", "1")]] {
            let hit = send(&svc, with(Method::GET, "/n", &pairs)).await;
            assert!(hit.cache_status().contains("hit"), "{pairs:?}: {}", hit.cache_status());
        }
        assert_eq!(origin.calls(), 2);
        // Request directives ignored (the default): Pragma too.
        let svc = cached(builder(store).scope("ignored").build().unwrap(), &origin);
        send(&svc, get("/n")).await;
        let hit = send(&svc, with(Method::GET, "/n", &[("pragma", "no-cache")])).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    }

    async fn rfc9111_5_4_a_response_pragma_is_not_cache_control(store) {
        let origin = answering(200, fields(&[("cache-control", "max-age=60"), ("pragma", "no-cache")]));
        assert!(reused(store.clone(), "rp", &origin).await, "explicit freshness wins");
        let lm = http_date(-24 * 3600);
        let origin = answering(200, fields(&[("last-modified", lm.as_str()), ("pragma", "no-cache")]));
        assert!(!reused(store, "rph", &origin).await, "no heuristic lifetime for an HTTP/1.0 no-cache");
    }

    async fn rfc9111_5_5_no_answer_carries_a_generated_warning(store) {
        // Stale within max-stale, within stale-while-revalidate, on an
        // origin error within stale-if-error, and a 304 refresh.
        let origin = answering(200, fields(&[("cache-control", "max-age=1, stale-while-revalidate=60"), ("etag", "\"e1\"")]));
        let svc = cached(honouring(store.clone(), "w").build().unwrap(), &origin);
        send(&svc, get("/w")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let stale = send(&svc, with(Method::GET, "/w", &[("cache-control", "max-stale=60")])).await;
        let swr = send(&svc, get("/w")).await;
        for got in [&stale, &swr] {
            assert_eq!(got.body, "v1");
            assert!(!got.headers.contains_key("warning"), "{:?}", got.headers);
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = Unreachable { cc: "max-age=1, stale-if-error=60", failure: Failure::Unavailable, calls };
        let svc = ServiceBuilder::new().layer(builder(store).scope("w5").build().unwrap()).service(failing);
        let first = svc.clone().oneshot(get("/w")).await.unwrap();
        assert!(!first.headers().contains_key("warning"));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let stale = svc.clone().oneshot(get("/w")).await.unwrap();
        assert_eq!(stale.status(), StatusCode::OK);
        assert!(stale.headers()["cache-status"].to_str().unwrap().contains("fwd=stale"));
        assert!(!stale.headers().contains_key("warning"));
    }
}

conformance! {
    async fn rfc9111_4_3_5_a_head_response_for_another_representation_makes_the_stored_get_stale(store) {
        // GETs answer v<n>; every answer carries the ETag "e<version>".
        let version = Arc::new(AtomicUsize::new(1));
        let v = version.clone();
        let origin = Origin::new(move |req, n| {
            let body = if req.method() == Method::HEAD { String::new() } else { format!("v{n}") };
            let mut r = res(&[("cache-control", "max-age=60")], &body);
            let etag = format!("\"e{}\"", v.load(Ordering::SeqCst));
            r.headers_mut().insert("etag", etag.parse().unwrap());
            if req.headers().contains_key("x-long") {
                r.headers_mut().insert("content-length", "99".parse().unwrap());
            }
            r
        });
        let svc = cached(honouring(store, "hd").build().unwrap(), &origin);
        assert_eq!(send(&svc, get("/h")).await.body, "v1");
        let head = |extra: &'static [(&'static str, &'static str)]| {
            let mut h = vec![("cache-control", "no-cache")];
            h.extend_from_slice(extra);
            with(Method::HEAD, "/h", &h)
        };
        // The same representation: the stored GET is freshened, still served.
        send(&svc, head(&[])).await;
        let hit = send(&svc, get("/h")).await;
        assert!(hit.cache_status().contains("hit") && hit.body == "v1", "{}", hit.cache_status());
        assert_eq!(origin.calls(), 2);
        // Another ETag: the stored GET is stale; the next GET asks the origin.
        version.store(2, Ordering::SeqCst);
        let changed = send(&svc, head(&[])).await;
        assert_eq!((changed.status, changed.body.len()), (StatusCode::OK, 0));
        assert!(changed.cache_status().contains("detail=head-changed"), "{}", changed.cache_status());
        let fetched = send(&svc, get("/h")).await;
        assert_eq!((fetched.body.clone(), origin.calls()), (Bytes::from("v4"), 4), "{}", fetched.cache_status());
        assert_eq!(send(&svc, get("/h")).await.body, "v4", "stored again");
        // Another length, same ETag: stale too.
        send(&svc, head(&[("x-long", "1")])).await;
        assert_eq!(send(&svc, get("/h")).await.body, "v6");
        assert_eq!(origin.calls(), 6);
    }
}

conformance! {
    async fn rfc9111_3_4_parts_not_stored_are_fetched_side_by_side(store) {
        let (mut origin, _) = ranged(false);
        origin.delay = Duration::from_millis(100);
        let svc = cached(builder(store).build().unwrap(), &origin);
        let range = |r: &'static str| with(Method::GET, "/s", &[("range", r)]);
        assert_eq!(send(&svc, range("bytes=0-1")).await.body, "01");
        let parts = ["bytes=2-3", "bytes=4-5", "bytes=6-7", "bytes=8-9"];
        let got = futures_util::future::join_all(parts.map(|r| send(&svc, range(r)))).await;
        for (g, want) in got.iter().zip(["23", "45", "67", "89"]) {
            assert_eq!((g.status, g.body.clone()), (StatusCode::PARTIAL_CONTENT, Bytes::from(want)));
        }
        // No request for one part waited for another's: none holds the others'.
        assert!(origin.max_in_flight.load(Ordering::SeqCst) >= 3, "{}", origin.max_in_flight.load(Ordering::SeqCst));
        assert_eq!(origin.calls(), 5);
    }
}

conformance! {
    async fn rfc9111_4_3_4_a_stored_part_is_revalidated_and_freshened(store) {
        let (origin, seen) = recording(|req, _| {
            if req.headers().get("if-none-match").is_some_and(|v| v == "\"p1\"") {
                let mut r = res(&[("cache-control", "max-age=60"), ("etag", "\"p1\"")], "");
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                return r;
            }
            let mut r = res(&[("cache-control", "max-age=1"), ("etag", "\"p1\""), ("content-range", "bytes 0-4/10")], "01234");
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let range = |r: &'static str| with(Method::GET, "/r", &[("range", r)]);
        send(&svc, range("bytes=0-4")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Stale: revalidated for its range with the stored validator.
        let got = send(&svc, range("bytes=1-3")).await;
        assert_eq!((got.status, got.body.clone()), (StatusCode::PARTIAL_CONTENT, Bytes::from("123")));
        assert!(got.cache_status().contains("fwd-status=304"), "{}", got.cache_status());
        let asked = seen.lock().unwrap()[1].1.clone();
        assert_eq!((asked["range"].clone(), asked["if-none-match"].clone()), ("bytes=1-3".parse().unwrap(), "\"p1\"".parse().unwrap()));
        // Freshened for a minute.
        let hit = send(&svc, range("bytes=2-4")).await;
        assert!(hit.cache_status().contains("hit") && hit.body == "234", "{}", hit.cache_status());
        assert_eq!(origin.calls(), 2);
    }
}

conformance! {
    async fn rfc9111_3_3_parts_obey_the_body_cap(store) {
        let (origin, _) = ranged(false);
        let svc = cached(builder(store).max_body_size(4).build().unwrap(), &origin);
        let range = |r: &'static str| with(Method::GET, "/c", &[("range", r)]);
        // Five bytes: past the cap, passed on unstored.
        for _ in 0..2 {
            let big = send(&svc, range("bytes=0-4")).await;
            assert_eq!(big.body, "01234");
            assert!(big.cache_status().contains("detail=too-large"), "{}", big.cache_status());
        }
        assert_eq!(origin.calls(), 2);
        // Two parts of three bytes: each stored, never both together.
        send(&svc, range("bytes=0-2")).await;
        send(&svc, range("bytes=3-5")).await;
        assert!(send(&svc, range("bytes=4-5")).await.cache_status().contains("hit"));
        assert!(!send(&svc, range("bytes=0-1")).await.cache_status().contains("hit"));
    }
}

conformance! {
    async fn rfc9111_4_1_selecting_values_match_across_combined_lines_and_list_whitespace(store) {
        let origin = Origin::new(|req, n| {
            let foo: Vec<&str> = req.headers().get_all("foo").iter().map(|v| v.to_str().unwrap()).collect();
            res(&[("cache-control", "max-age=60"), ("vary", "Foo")], &format!("{}|{n}", foo.join(";")))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let foo = |values: &[&'static str]| {
            let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("foo", *v)).collect();
            with(Method::GET, "/v41", &pairs)
        };
        assert_eq!(send(&svc, foo(&["1, 2"])).await.body, "1, 2|1");
        // Two field lines combine into the same list (RFC 9110 §5.3) ...
        assert_eq!(send(&svc, foo(&["1", "2"])).await.body, "1, 2|1");
        // ... and the optional whitespace around its commas is not part of it.
        assert_eq!(send(&svc, foo(&[" 1,2 "])).await.body, "1, 2|1");
        assert_eq!(send(&svc, foo(&["1 ,\t2"])).await.body, "1, 2|1");
        assert_eq!(origin.calls(), 1);
        // Other differences still select another variant: other whitespace,
        // quoted strings, absence (case: vary_values_are_case_folded_only_for_accept_headers).
        for (i, other) in [&["1, 2, 3"][..], &["1 2"], &["\"1, 2\""], &[]].into_iter().enumerate() {
            let got = send(&svc, foo(other)).await;
            assert!(got.body.ends_with(format!("|{}", i + 2).as_bytes()), "{other:?}: {:?}", got.body);
        }
    }
}

conformance! {
    async fn rfc9110_14_4_a_part_whose_length_contradicts_its_range_is_passed_on_unstored(store) {
        // Content-Range names six bytes, the body (v<n>) has two.
        let origin = answering(
            206,
            fields(&[("cache-control", "max-age=60"), ("content-range", "bytes 4-9/10"), ("content-length", "2")]),
        );
        let svc = cached(builder(store).build().unwrap(), &origin);
        let range = || with(Method::GET, "/bad-part", &[("range", "bytes=4-9")]);
        for n in 1..=2 {
            let got = send(&svc, range()).await;
            assert_eq!(got.body, format!("v{n}"));
            assert!(got.cache_status().contains("detail=partial"), "{}", got.cache_status());
        }
    }
}

conformance! {
    async fn rfc9110_9_3_3_a_post_response_naming_its_own_uri_answers_later_gets(store) {
        // A POST is answered with the Content-Location and Cache-Control it
        // asks for (x-cl, x-cc); a GET with "get<n>", fresh for a minute.
        let origin = Origin::new(|req, n| {
            if req.method() != Method::POST {
                return res(&[("cache-control", "max-age=60")], &format!("get{n}"));
            }
            let field = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
            let mut fields = vec![];
            let (cl, cc) = (field("x-cl"), field("x-cc"));
            if let Some(cl) = &cl {
                fields.push(("content-location", cl.as_str()));
            }
            if let Some(cc) = &cc {
                fields.push(("cache-control", cc.as_str()));
            }
            res(&fields, &format!("post{n}"))
        });
        let svc = cached(builder(store).build().unwrap(), &origin);
        let post = |path: &str, extra: &[(&'static str, &'static str)]| with(Method::POST, path, extra);
        // Naming its own URI with explicit freshness: the GET that follows is a hit.
        let p = send(&svc, post("/p1", &[("x-cl", "/p1"), ("x-cc", "max-age=60")])).await;
        assert_eq!(p.body, "post1");
        assert!(p.cache_status().contains("stored"), "{}", p.cache_status());
        let g = send(&svc, get("/p1")).await;
        assert_eq!(g.body, "post1");
        assert!(g.cache_status().contains("hit"), "{}", g.cache_status());
        assert_eq!(origin.calls(), 1);
        // Otherwise the POST only invalidates: another URI, no explicit
        // freshness, a request the cache would not store for a GET.
        let cases: [(&str, &[(&'static str, &'static str)]); 3] = [
            ("/p2", &[("x-cl", "/elsewhere"), ("x-cc", "max-age=60")]),
            ("/p3", &[("x-cl", "/p3")]),
            ("/p4", &[("x-cl", "/p4"), ("x-cc", "max-age=60"), ("authorization", "Bearer x")]),
        ];
        for (path, fields) in cases {
            send(&svc, get(path)).await;
            let before = origin.calls();
            send(&svc, post(path, fields)).await;
            let g = send(&svc, get(path)).await;
            assert!(g.body.starts_with(b"get"), "{path}: {:?}", g.body);
            assert_eq!(origin.calls(), before + 2, "{path}: the POST invalidated the GET");
        }
    }
}
