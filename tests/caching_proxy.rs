//! The caching proxy example (the binary `cargo test` builds) in front of a
//! real upstream: a pure HTTP shared cache over real sockets, on the memory
//! store and on Redis.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use support::http::call;

struct Proxy(Child, String);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_proxy(upstream: SocketAddr, redis: Option<&str>) -> Proxy {
    start_proxy_with(upstream, redis, &[])
}

fn start_proxy_with(upstream: SocketAddr, redis: Option<&str>, extra: &[&str]) -> Proxy {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("caching_proxy");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with cargo test --all-features",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("http://{upstream}"),
    ]);
    if let Some(url) = redis {
        cmd.args(["--redis", url]);
    }
    cmd.args(extra);
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start the proxy");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    Proxy(child, addr)
}

#[derive(Clone, Default)]
struct Counts {
    fresh: Arc<AtomicU64>,
    nostore: Arc<AtomicU64>,
    page: Arc<AtomicU64>,
    big: Arc<AtomicU64>,
}

async fn upstream() -> (SocketAddr, Counts) {
    let counts = Counts::default();
    let app = Router::new()
        .route(
            "/fresh",
            get(|State(c): State<Counts>| async move {
                let n = c.fresh.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    [("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                    format!("fresh {n}"),
                )
            })
            .post(|| async { (StatusCode::CREATED, "made") }),
        )
        .route(
            "/nostore",
            get(|State(c): State<Counts>| async move {
                let n = c.nostore.fetch_add(1, Ordering::SeqCst) + 1;
                ([("cache-control", "no-store")], format!("nostore {n}"))
            }),
        )
        .route(
            "/big",
            get(|State(c): State<Counts>| async move {
                c.big.fetch_add(1, Ordering::SeqCst);
                ([("cache-control", "max-age=60")], "b".repeat(BIG))
            }),
        )
        .route(
            "/page",
            get(|State(c): State<Counts>, headers: HeaderMap| async move {
                c.page.fetch_add(1, Ordering::SeqCst);
                // Reflects what a poisoned request would change, as apps do.
                let page = support::reflected_page(&headers);
                ([("cache-control", "max-age=60")], page)
            }),
        )
        .route(
            "/echo",
            get(|headers: HeaderMap, uri: axum::http::Uri| async move {
                let hop = headers.contains_key("keep-alive") || headers.contains_key("x-hop");
                (
                    [("x-upstream", "yes")],
                    format!(
                        "{} {} hop={hop}",
                        uri,
                        headers.get("x-test").map_or("-", |v| v.to_str().unwrap())
                    ),
                )
                    .into_response()
            }),
        )
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, counts)
}

async fn check(redis: Option<&str>) {
    let (up, counts) = upstream().await;
    let proxy = start_proxy(up, redis);
    let p = proxy.1.as_str();

    let (s, h, body) = call(p, "GET", "/fresh", &[], "").await;
    assert_eq!((s, body.as_str()), (200, "fresh 1"));
    assert!(h["cache-status"].to_str().unwrap().contains("fwd=miss"));
    let (s, h, body) = call(p, "GET", "/fresh", &[], "").await;
    assert_eq!(
        (s, body.as_str()),
        (200, "fresh 1"),
        "served from the cache"
    );
    // A hit, or collapsed onto the first fill while its write was landing:
    // either way served from the cache, the upstream asked once.
    let status = h["cache-status"].to_str().unwrap();
    assert!(
        status.contains("hit") || status.contains("collapsed"),
        "{status}"
    );
    assert_eq!(counts.fresh.load(Ordering::SeqCst), 1);

    // Conditional request against the stored entry.
    let (s, _, _) = call(p, "GET", "/fresh", &[("if-none-match", "W/\"v1\"")], "").await;
    assert_eq!(s, 304);
    // A range of it (RFC 9110 §14).
    let (s, h, body) = call(p, "GET", "/fresh", &[("range", "bytes=0-4")], "").await;
    assert_eq!((s, body.as_str()), (206, "fresh"));
    assert_eq!(h["content-range"], "bytes 0-4/7");

    // no-store is never stored.
    call(p, "GET", "/nostore", &[], "").await;
    let (_, _, body) = call(p, "GET", "/nostore", &[], "").await;
    assert_eq!(body, "nostore 2");

    // A successful POST is forwarded and invalidates the cached GET.
    let (s, _, body) = call(p, "POST", "/fresh", &[], "").await;
    assert_eq!((s, body.as_str()), (201, "made"));
    let (_, _, body) = call(p, "GET", "/fresh", &[], "").await;
    assert_eq!(body, "fresh 2");

    // Path, query and end-to-end headers reach the upstream; hop-by-hop ones do not.
    let (s, h, body) = call(
        p,
        "GET",
        "/echo?a=1&b=two",
        &[("x-test", "hello"), ("connection", "x-hop"), ("x-hop", "1")],
        "",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-upstream"], "yes");
    assert_eq!(body, "/echo?a=1&b=two hello hop=false");
}

/// A large cacheable body (within the proxy's 1 MiB cap).
const BIG: usize = 900 << 10;

/// A client that sends a GET for a cold large response and never reads it
/// does not hold up the clients after it, nor cost an extra upstream call.
async fn stalled_reader(redis: Option<&str>) {
    let (up, counts) = upstream().await;
    let proxy = start_proxy(up, redis);
    let p = proxy.1.as_str();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(p.parse().unwrap()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, b"GET /big HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    while counts.big.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for _ in 0..3 {
        let (s, h, body) = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            call(p, "GET", "/big", &[], ""),
        )
        .await
        .expect("not held up by the stalled client");
        assert_eq!((s, body.len()), (200, BIG));
        let status = h["cache-status"].to_str().unwrap();
        assert!(
            status.contains("hit") || status.contains("collapsed"),
            "{status}"
        );
    }
    assert_eq!(counts.big.load(Ordering::SeqCst), 1);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_holds_up_nobody_on_the_memory_store() {
    stalled_reader(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_holds_up_nobody_on_redis() {
    let url = support::redis_url();
    stalled_reader(Some(&url)).await;
}

/// Each poisoning vector through the proxy: the poisoned request may get
/// anything, the next clean client gets the clean page; hosts never mix.
async fn poison(redis: Option<&str>) {
    let (up, counts) = upstream().await;
    let proxy = start_proxy(up, redis);
    let p = proxy.1.as_str();
    let clean = [("host", "good.example")];
    for (i, (name, value)) in support::POISON_VECTORS.iter().enumerate() {
        let path = format!("/page?v={i}");
        let poisoned: Vec<(&str, &str)> = match *name {
            "host" => vec![("host", value)],
            _ => vec![clean[0], (name, value)],
        };
        call(p, "GET", &path, &poisoned, "").await;
        for _ in 0..2 {
            let (s, h, body) = call(p, "GET", &path, &clean, "").await;
            assert_eq!(
                (s, body.as_str()),
                (200, "page host=good.example"),
                "vector {name}: {h:?}"
            );
        }
    }
    // An absolute-form target naming one host while `Host` names another.
    call(
        p,
        "GET",
        "http://good.example/page?abs",
        &[("host", "evil.example")],
        "",
    )
    .await;
    let (_, _, body) = call(p, "GET", "/page?abs", &clean, "").await;
    assert_eq!(body, "page host=good.example", "absolute-form");
    // Several hosts share the proxy; their entries never mix.
    let before = counts.page.load(Ordering::SeqCst);
    for host in ["a.example", "b.example", "a.example", "b.example"] {
        let (_, _, body) = call(p, "GET", "/page?hosts", &[("host", host)], "").await;
        assert_eq!(body, format!("page host={host}"));
    }
    assert_eq!(
        counts.page.load(Ordering::SeqCst) - before,
        2,
        "one fill per host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_poisoning_through_the_proxy_on_the_memory_store() {
    poison(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_poisoning_through_the_proxy_on_redis() {
    let url = support::redis_url();
    poison(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_proxy_on_the_memory_store() {
    check(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_proxy_on_redis() {
    let url = support::redis_url();
    check(Some(&url)).await;
}

/// An upstream in a runtime of its own, so that stopping it closes every
/// connection too: `/short` is fresh for a second, `/strict` too but with
/// `must-revalidate`. Returns its address and the stop switch.
fn killable_upstream() -> (SocketAddr, std::sync::mpsc::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            let n = Arc::new(AtomicU64::new(0));
            let app = Router::new()
                .route(
                    "/short",
                    get(|State(n): State<Arc<AtomicU64>>| async move {
                        let v = n.fetch_add(1, Ordering::SeqCst) + 1;
                        ([("cache-control", "max-age=1")], format!("short {v}"))
                    }),
                )
                .route(
                    "/strict",
                    get(|| async { ([("cache-control", "max-age=1, must-revalidate")], "strict") }),
                )
                .with_state(n);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        let _ = stop_rx.recv();
        rt.shutdown_background();
    });
    (addr_rx.recv().unwrap(), stop_tx)
}

/// RFC 9111 §4.2.4 and §5.2.1 through the proxy: request directives are
/// honoured, and with the upstream gone a stale entry is served unless it
/// forbids it.
async fn stale_when_unreachable(redis: Option<&str>) {
    let (up, stop) = killable_upstream();
    let proxy = start_proxy(up, redis);
    let p = proxy.1.as_str();
    assert_eq!(call(p, "GET", "/short", &[], "").await.2, "short 1");
    let (_, h, body) = call(p, "GET", "/short", &[("cache-control", "max-age=0")], "").await;
    assert_eq!(body, "short 2", "request max-age=0 revalidates: {h:?}");
    let (s, _, _) = call(
        p,
        "GET",
        "/nothing",
        &[("cache-control", "only-if-cached")],
        "",
    )
    .await;
    assert_eq!(s, 504);
    call(p, "GET", "/strict", &[], "").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (s, h, body) = call(p, "GET", "/short", &[], "").await;
    assert_eq!(
        (s, body.as_str()),
        (200, "short 2"),
        "stale while the upstream is down"
    );
    let status = h["cache-status"].to_str().unwrap();
    assert!(
        status.contains("fwd=stale") && status.contains("detail=unreachable"),
        "{status}"
    );
    let (s, _, _) = call(p, "GET", "/strict", &[], "").await;
    assert_eq!(s, 502, "must-revalidate: never stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_when_unreachable_and_request_directives_on_the_memory_store() {
    stale_when_unreachable(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_when_unreachable_and_request_directives_on_redis() {
    let url = support::redis_url();
    stale_when_unreachable(Some(&url)).await;
}

/// An upstream tagging its pages: `/t/<n>` is fresh for an hour with
/// `Surrogate-Key: <tag> page-<n>`, its body counting the loads.
async fn tagging_upstream(tag: &'static str) -> SocketAddr {
    let loads = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/t/{n}",
            get(
                move |State(l): State<Arc<AtomicU64>>,
                      axum::extract::Path(n): axum::extract::Path<u32>| async move {
                    let v = l.fetch_add(1, Ordering::SeqCst) + 1;
                    let keys = format!("{tag} page-{n}");
                    (
                        [
                            ("cache-control", "max-age=3600".to_owned()),
                            ("surrogate-key", keys),
                        ],
                        format!("page {n} load {v}"),
                    )
                },
            ),
        )
        .with_state(loads);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_is_refused_without_a_token_and_by_url_with_one() {
    let up = tagging_upstream("off").await;
    let off = start_proxy(up, None);
    let (s, _, _) = call(&off.1, "PURGE", "/t/1", &[], "").await;
    assert_eq!(s, 405, "PURGE is off without --purge-token");
    let proxy = start_proxy_with(up, None, &["--purge-token", "s3cret"]);
    let p = proxy.1.as_str();
    let host = ("host", "shop.example");
    let (_, h, first) = call(p, "GET", "/t/1", &[host], "").await;
    assert!(!h.contains_key("surrogate-key"), "tags stay in the cache");
    assert_eq!(call(p, "GET", "/t/1", &[host], "").await.2, first);
    for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
        let mut headers = vec![host];
        headers.extend(auth.map(|a| ("authorization", a)));
        let (s, h, _) = call(p, "PURGE", "/t/1", &headers, "").await;
        assert_eq!(
            (s, h["www-authenticate"].to_str().unwrap()),
            (401, "Bearer"),
            "{auth:?}"
        );
    }
    assert_eq!(
        call(p, "GET", "/t/1", &[host], "").await.2,
        first,
        "nothing purged"
    );
    let (s, _, _) = call(
        p,
        "PURGE",
        "/t/1",
        &[host, ("authorization", "Bearer s3cret")],
        "",
    )
    .await;
    assert_eq!(s, 200);
    assert_ne!(call(p, "GET", "/t/1", &[host], "").await.2, first, "purged");
}

/// Three proxies on one Redis: a PURGE with `Surrogate-Key` through one
/// drops the tagged pages on all; a soft purge keeps them for revalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_surrogate_key_reaches_three_proxies_on_redis() {
    let url = support::redis_url();
    let tag = "fleet-tag";
    let up = tagging_upstream(tag).await;
    let fleet: Vec<Proxy> = (0..3)
        .map(|_| start_proxy_with(up, Some(&url), &["--purge-token", "s3cret"]))
        .collect();
    let host = ("host", "fleet.example");
    let mut bodies = Vec::new();
    for (i, proxy) in fleet.iter().enumerate() {
        bodies.push(
            call(&proxy.1, "GET", &format!("/t/{i}"), &[host], "")
                .await
                .2,
        );
    }
    for (i, proxy) in fleet.iter().enumerate() {
        let (_, _, b) = call(&proxy.1, "GET", &format!("/t/{}", (i + 1) % 3), &[host], "").await;
        assert_eq!(b, bodies[(i + 1) % 3], "shared through Redis");
    }
    let auth = ("authorization", "Bearer s3cret");
    let (s, _, body) = call(
        &fleet[1].1,
        "PURGE",
        "/",
        &[host, auth, ("surrogate-key", tag)],
        "",
    )
    .await;
    assert_eq!((s, body.as_str()), (200, "purged 3 URLs\n"));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    for (i, proxy) in fleet.iter().enumerate() {
        let (_, _, b) = call(&proxy.1, "GET", &format!("/t/{i}"), &[host], "").await;
        assert_ne!(b, bodies[i], "purged on every proxy");
    }
    // Soft: one page, by its own tag; it is kept and revalidated on next use
    // (this upstream has no validators, so it is refetched).
    let before = call(&fleet[0].1, "GET", "/t/0", &[host], "").await.2;
    let soft = [host, auth, ("surrogate-key", "page-0"), ("soft-purge", "1")];
    let (s, _, body) = call(&fleet[2].1, "PURGE", "/", &soft, "").await;
    assert_eq!((s, body.as_str()), (200, "purged 1 URLs\n"));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (_, h, after) = call(&fleet[1].1, "GET", "/t/0", &[host], "").await;
    assert_ne!(after, before, "{h:?}");
}

/// An upstream for the proxy's own RFC behaviours: `/file` serves
/// `0123456789` (ETag `"f1"`), a single `Range` with `206`; `/cdn` says
/// `no-store` to every cache but `max-age=60` to CDNs; `/plain` is fresh
/// for a minute with an ETag. Each body counts the upstream's calls.
async fn rfc_upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/file",
            get(|State(c): State<Arc<AtomicU64>>, h: HeaderMap| async move {
                c.fetch_add(1, Ordering::SeqCst);
                let full = "0123456789";
                let range = h.get("range").and_then(|v| {
                    let (a, b) = v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                });
                let cc = ("cache-control", "max-age=60".to_owned());
                let etag = ("etag", "\"f1\"".to_owned());
                match range {
                    Some((a, b)) => {
                        let cr = ("content-range", format!("bytes {a}-{b}/10"));
                        let part = full[a..=b].to_owned();
                        (StatusCode::PARTIAL_CONTENT, [cc, etag, cr], part).into_response()
                    }
                    None => ([cc, etag], full).into_response(),
                }
            }),
        )
        .route(
            "/cdn",
            get(|State(c): State<Arc<AtomicU64>>| async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                let cc = [
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=60"),
                ];
                (cc, format!("cdn {n}"))
            }),
        )
        .route(
            "/plain",
            get(|State(c): State<Arc<AtomicU64>>| async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    [("cache-control", "max-age=60"), ("etag", "\"p1\"")],
                    format!("plain {n}"),
                )
            }),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

/// RFC 9111 §3.3 / §3.4 (parts stored and combined), RFC 9213
/// (`CDN-Cache-Control` obeyed), §5.4 (`Pragma: no-cache` from an
/// HTTP/1.0 client revalidates) and §5.5 (no `Warning`) through the proxy.
async fn rfc_behaviours(redis: Option<&str>) {
    let (up, calls) = rfc_upstream().await;
    let proxy = start_proxy(up, redis);
    let p = proxy.1.as_str();
    let n = || calls.load(Ordering::SeqCst);
    let (s, h, body) = call(p, "GET", "/file", &[("range", "bytes=0-4")], "").await;
    assert_eq!((s, body.as_str()), (206, "01234"));
    assert_eq!(h["content-range"], "bytes 0-4/10");
    let (s, h, body) = call(p, "GET", "/file", &[("range", "bytes=1-2")], "").await;
    assert_eq!((s, body.as_str(), n()), (206, "12", 1), "{h:?}");
    assert_eq!(h["content-length"], "2");
    let (s, _, body) = call(p, "GET", "/file", &[("range", "bytes=5-9")], "").await;
    assert_eq!((s, body.as_str(), n()), (206, "56789", 2));
    let (s, h, body) = call(p, "GET", "/file", &[], "").await;
    assert_eq!(
        (s, body.as_str(), n()),
        (200, "0123456789", 2),
        "combined: {h:?}"
    );
    assert_eq!(h["content-length"], "10");

    call(p, "GET", "/cdn", &[], "").await;
    let (_, h, body) = call(p, "GET", "/cdn", &[], "").await;
    assert_eq!(body, "cdn 3", "stored for CDN-Cache-Control's minute");
    assert_eq!(h["cdn-cache-control"], "max-age=60", "passed on");

    call(p, "GET", "/plain", &[], "").await;
    let (_, h, body) = call(p, "GET", "/plain", &[("pragma", "no-cache")], "").await;
    assert_eq!(body, "plain 5", "revalidated: {h:?}");
    assert!(!h.contains_key("warning"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_behaviours_through_the_proxy_on_the_memory_store() {
    rfc_behaviours(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_behaviours_through_the_proxy_on_redis() {
    let url = support::redis_url();
    rfc_behaviours(Some(&url)).await;
}
