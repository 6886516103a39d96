//! The response cache's Redis layout: one hash per URL holds its variants.
//!
//! Every key a response-cache script touches is one it declares in `KEYS`
//! (Redis's rule, enforced by Dragonfly and cluster proxies): the cache's
//! operations run against a `redis-server` while a `MONITOR` connection
//! records what each script executes; `COMMAND GETKEYS` names the keys of
//! each of those commands, and every one must be among its script's `KEYS`.
//! Entries are hash fields with no TTL of their own: one past its expiry
//! reads as absent, and a URL's hash stays bounded under rotating Vary values.

mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redis_layers::cache::{ResponseCacheLayer, Stored};
use tower_redis_layers::ResponseBody;

/// The cache's scripts, by SHA-1, to tell which ran.
fn scripts() -> HashMap<String, &'static str> {
    [
        ("lookup", include_str!("../src/cache/scripts/lookup.lua")),
        ("store", include_str!("../src/cache/scripts/store.lua")),
        ("release", include_str!("../src/cache/scripts/release.lua")),
        (
            "purge_urls",
            include_str!("../src/cache/scripts/purge_urls.lua"),
        ),
        ("tag", include_str!("../src/cache/scripts/tag.lua")),
        (
            "variants",
            include_str!("../src/cache/scripts/variants.lua"),
        ),
        (
            "purge_tag",
            include_str!("../src/cache/scripts/purge_tag.lua"),
        ),
    ]
    .into_iter()
    .map(|(name, code)| (redis::Script::new(code).get_hash().to_owned(), name))
    .collect()
}

/// The lines a `MONITOR` connection receives, collected by a thread.
struct Monitor {
    lines: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Monitor {
    fn start(port: u16) -> Self {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.write_all(b"MONITOR\r\n").unwrap();
        let mut reader = BufReader::new(conn);
        let mut ok = Vec::new();
        reader.read_until(b'\n', &mut ok).unwrap();
        assert_eq!(ok, b"+OK\r\n");
        let lines = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let lines = lines.clone();
            move || loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => lines.lock().unwrap().push(line),
                }
            }
        });
        Self { lines }
    }

    /// The commands seen so far: (run by a script, arguments).
    fn commands(&self) -> Vec<(bool, Vec<Vec<u8>>)> {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter_map(|l| parse(l)).collect()
    }
}

/// One `MONITOR` line: `+<time> [<db> <client or "lua">] "arg" "arg"…`,
/// arguments quoted and escaped as `sdscatrepr` does.
fn parse(line: &[u8]) -> Option<(bool, Vec<Vec<u8>>)> {
    let line = line.strip_prefix(b"+")?;
    let open = line.iter().position(|&b| b == b'[')?;
    let close = open + line[open..].iter().position(|&b| b == b']')?;
    let lua = line[open..close].ends_with(b" lua");
    let mut args = Vec::new();
    let mut it = line[close + 1..].iter().copied().peekable();
    while let Some(b) = it.next() {
        if b != b'"' {
            continue;
        }
        let mut arg = Vec::new();
        loop {
            match it.next()? {
                b'"' => break,
                b'\\' => match it.next()? {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = [it.next()?, it.next()?];
                        arg.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                    }
                    c => arg.push(c),
                },
                c => arg.push(c),
            }
        }
        args.push(arg);
    }
    Some((lua, args))
}

/// The keys of a command, as the server names them (none for `TIME`,
/// `PUBLISH`…).
async fn keys_of(conn: &mut redis::aio::MultiplexedConnection, args: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYS");
    for a in args {
        cmd.arg(&a[..]);
    }
    cmd.query_async::<Vec<Vec<u8>>>(conn)
        .await
        .unwrap_or_default()
}

async fn send<S>(svc: &S, method: Method, path: &str, headers: &[(&str, &str)]) -> Bytes
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResponseBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = svc
        .clone()
        .oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    // Let the background write land.
    tokio::time::sleep(Duration::from_millis(30)).await;
    body
}

/// The origin's `n`th answer: `/vary` varies on `Accept`, `/etag` too with
/// a strong ETag, fresh for 1 s and a 304 to a conditional request, `/rekey` on
/// `Accept-Language` when the request has one, else on `Accept`; `/nostore` is
/// never stored; all tagged `t`; PUTs succeed.
fn answer(req: &Request<Full<Bytes>>, n: usize) -> Response<Full<Bytes>> {
    let res = Response::builder().header("surrogate-key", "t");
    let res = match req.uri().path() {
        "/vary" => res
            .header("cache-control", "max-age=60")
            .header("vary", "accept"),
        "/rekey" if req.headers().contains_key("accept-language") => res
            .header("cache-control", "max-age=60")
            .header("vary", "accept-language"),
        "/rekey" => res
            .header("cache-control", "max-age=60")
            .header("vary", "accept"),
        "/etag" if req.headers().contains_key("if-none-match") => {
            let res = res.status(304).header("cache-control", "max-age=60");
            res.header("etag", "\"e1\"").header("vary", "accept")
        }
        "/etag" => res
            .header("cache-control", "max-age=1")
            .header("etag", "\"e1\"")
            .header("vary", "accept"),
        "/nostore" => res.header("cache-control", "no-store"),
        _ => res.header("cache-control", "max-age=60"),
    };
    res.body(Full::new(Bytes::from(format!("v{n}")))).unwrap()
}

#[tokio::test]
async fn every_key_a_cache_script_touches_is_declared() {
    let server = support::RedisServer::start();
    let monitor = Monitor::start(server.port());
    let store = tower_redis_layers::RedisStore::builder(server.url())
        .prefix("keys")
        .connect()
        .await
        .unwrap();
    let layer = ResponseCacheLayer::builder(store)
        .jitter(0.0)
        .max_variants(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(answer(&req, n)) }
    });
    let svc = ServiceBuilder::new().layer(layer).service(origin);
    let url = |path: &str| format!("http://api.example{path}");

    // Fill, hit, variants past the cap, a changed Vary, an unstorable response.
    send(&svc, Method::GET, &url("/plain"), &[]).await;
    send(&svc, Method::GET, &url("/plain"), &[]).await;
    for accept in ["text/html", "application/json", "text/plain", "text/html"] {
        send(&svc, Method::GET, &url("/vary"), &[("accept", accept)]).await;
    }
    send(
        &svc,
        Method::GET,
        &url("/rekey"),
        &[("accept", "text/html")],
    )
    .await;
    send(
        &svc,
        Method::GET,
        &url("/rekey"),
        &[("accept", "application/json")],
    )
    .await;
    send(
        &svc,
        Method::GET,
        &url("/rekey"),
        &[("accept-language", "fr")],
    )
    .await;
    send(&svc, Method::GET, &url("/nostore"), &[]).await;
    send(&svc, Method::GET, &url("/nostore"), &[]).await;
    // A 304 freshens the other variants with its ETag.
    for accept in ["text/html", "application/json", "text/html"] {
        send(&svc, Method::GET, &url("/etag"), &[("accept", accept)]).await;
        if accept == "application/json" {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    // Purges: a write, a soft purge, by tag (soft and hard).
    send(&svc, Method::PUT, &url("/plain"), &[]).await;
    send(&svc, Method::GET, &url("/plain"), &[]).await;
    handle
        .soft_purge_url(&url("/vary").parse().unwrap())
        .await
        .unwrap();
    send(&svc, Method::GET, &url("/vary"), &[("accept", "text/html")]).await;
    assert!(handle.soft_purge_tag("t").await.unwrap() > 0);
    assert!(handle.purge_tag("t").await.unwrap() > 0);
    // Application values: put, get, load, an expired one, invalidation.
    let tagged = Stored::ttl(Duration::from_secs(60)).tag("app");
    assert!(handle
        .put("row:1", Bytes::from_static(b"one"), tagged)
        .await
        .unwrap());
    assert_eq!(
        handle.get("row:1").await.unwrap(),
        Some(Bytes::from_static(b"one"))
    );
    let load = || async { Ok::<_, Infallible>(Bytes::from_static(b"two")) };
    handle
        .get_or_load("row:2", Duration::from_millis(100), load)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    handle
        .get_or_load("row:2", Duration::from_secs(60), load)
        .await
        .unwrap();
    handle.invalidate_key("row:2").await.unwrap();
    assert_eq!(handle.purge_tag("app").await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let names = scripts();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut declared: Vec<Vec<u8>> = Vec::new();
    let mut script = None;
    let (mut ran, mut checked) = (HashSet::new(), 0);
    let mut undeclared = Vec::new();
    // A script's commands follow its EVALSHA (or EVAL) in the stream.
    for (lua, args) in monitor.commands() {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        if !lua {
            script = None;
            if name == "evalsha" || name == "eval" {
                let n: usize = std::str::from_utf8(&args[2]).unwrap().parse().unwrap();
                declared = args[3..3 + n].to_vec();
                let sha = String::from_utf8_lossy(&args[1]).to_string();
                script = Some(names.get(&sha).copied().unwrap_or("another script"));
            }
            continue;
        }
        let script = script.expect("a script's command follows its EVALSHA");
        ran.insert(script);
        for key in keys_of(&mut conn, &args).await {
            checked += 1;
            if !declared.contains(&key) {
                undeclared.push(format!(
                    "{script}: {name} touches {} (KEYS: {:?})",
                    String::from_utf8_lossy(&key),
                    declared
                        .iter()
                        .map(|k| String::from_utf8_lossy(k))
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(
        undeclared.is_empty(),
        "undeclared keys:\n{}",
        undeclared.join("\n")
    );
    let mut missing: Vec<_> = names.values().filter(|s| !ran.contains(*s)).collect();
    missing.sort();
    assert!(missing.is_empty(), "scripts that never ran: {missing:?}");
    assert!(checked > 50, "only {checked} keys checked");
}

async fn conn_of(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn hlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("HLEN").arg(key).query_async(conn).await.unwrap()
}

/// The only index hash under `prefix`.
async fn only_index(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:cache:*:i"))
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_variant_past_its_expiry_reads_as_absent_while_its_url_lives() {
    let store = support::redis_store("expiry").await;
    let prefix = store.prefix().to_owned();
    let layer = ResponseCacheLayer::builder(store)
        .jitter(0.0)
        .keep_stale(Duration::from_millis(100))
        .build()
        .unwrap();
    let conditional = Arc::new(AtomicUsize::new(0));
    let origin = tower::service_fn({
        let conditional = conditional.clone();
        move |req: Request<Full<Bytes>>| {
            if req.headers().contains_key("if-none-match") {
                conditional.fetch_add(1, Ordering::SeqCst);
            }
            // `text/html` is fresh for 1 s (kept 1.1 s), the other for a minute.
            let short = req.headers()["accept"] == "text/html";
            let cc = if short { "max-age=1" } else { "max-age=60" };
            let res = Response::builder()
                .header("cache-control", cc)
                .header("vary", "accept")
                .header("etag", "\"e1\"")
                .body(Full::new(Bytes::from_static(b"page")))
                .unwrap();
            async move { Ok::<_, Infallible>(res) }
        }
    });
    let svc = ServiceBuilder::new().layer(layer).service(origin);
    let page = |accept: &'static str| (Method::GET, "http://api.example/p", [("accept", accept)]);
    for accept in ["text/html", "application/json"] {
        let (m, u, h) = page(accept);
        send(&svc, m, u, &h).await;
    }
    let mut conn = conn_of(&support::redis_url()).await;
    let index = only_index(&mut conn, &prefix).await;
    assert_eq!(
        hlen(&mut conn, &index).await,
        1 + 2 * 4,
        "vary, and e:/f:/x:/t: per variant"
    );
    tokio::time::sleep(Duration::from_millis(1400)).await;
    // The hash lives on (the other variant), the short one's fields too.
    assert_eq!(hlen(&mut conn, &index).await, 9);
    let (m, u, h) = page("text/html");
    send(&svc, m, u, &h).await;
    assert_eq!(
        conditional.load(Ordering::SeqCst),
        0,
        "an expired entry is absent: not revalidated as a stale one would be"
    );
    assert_eq!(
        hlen(&mut conn, &index).await,
        9,
        "dropped, then stored again"
    );
    let (m, u, h) = page("application/json");
    send(&svc, m, u, &h).await;
    assert_eq!(
        conditional.load(Ordering::SeqCst),
        0,
        "the other variant is a hit"
    );
}

#[tokio::test]
async fn rotating_vary_values_keep_a_url_bounded() {
    let store = support::redis_store("rotate").await;
    let prefix = store.prefix().to_owned();
    let layer = ResponseCacheLayer::builder(store)
        .jitter(0.0)
        .max_variants(4)
        .build()
        .unwrap();
    let origin = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        let res = Response::builder()
            .header("cache-control", "max-age=60")
            .header("vary", "x-client")
            .body(Full::new(Bytes::from(vec![b'x'; 4096])))
            .unwrap();
        Ok::<_, Infallible>(res)
    });
    let svc = ServiceBuilder::new().layer(layer).service(origin);
    for i in 0..100 {
        let client = format!("c{i}");
        send(
            &svc,
            Method::GET,
            "http://api.example/r",
            &[("x-client", &client)],
        )
        .await;
    }
    let mut conn = conn_of(&support::redis_url()).await;
    let index = only_index(&mut conn, &prefix).await;
    assert_eq!(
        hlen(&mut conn, &index).await,
        1 + 4 * 3,
        "the Vary spec and the four newest variants"
    );
    let bytes: usize = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&index)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(bytes < 6 * 4096, "{bytes} bytes for four 4 KiB variants");
}
