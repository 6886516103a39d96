//! A caching reverse proxy: every request (method, path, query, end-to-end
//! headers, body) goes to the upstream and the response streams back, with
//! ResponseCacheLayer in front as a pure HTTP shared cache: freshness comes
//! only from the upstream's headers (RFC 9111), there is no default TTL.
//!
//! ```text
//! cargo run --release --example caching_proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3000
//! cargo run --release --example caching_proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3000 --redis redis://127.0.0.1:6379
//! curl -si localhost:8080/some/path      # twice: Cache-Status says hit when the upstream allowed storing
//! ```
//!
//! Without `--redis` it caches in process (`MemoryStore`). It prints
//! `listening on <addr>` when ready.
//!
//! While the upstream cannot be reached (connection refused or reset, no
//! answer within 30 s) a stored response up to an hour stale is served in
//! place of the 502 / 504, unless it said `must-revalidate`,
//! `proxy-revalidate`, `no-cache` or `s-maxage`.
//!
//! With `--purge-token TOKEN`, `PURGE /path` (the URL on the request's
//! host) and `PURGE` with `Surrogate-Key: a b` (every entry whose response
//! named tag `a` or `b` in its `Surrogate-Key`) drop entries on every
//! instance sharing the store; `Soft-Purge: 1` marks them stale instead.
//! They need `Authorization: Bearer TOKEN`; without the flag PURGE is 405.
//! Upstream `Surrogate-Key` headers are not passed to clients.
//!
//! `CDN-Cache-Control` (RFC 9213), when the upstream sends a valid one,
//! is obeyed in place of `Cache-Control` and `Expires`, and passed on.
//!
//! Several hosts may share one proxy: the cache keys on the request's
//! authority (`Host`, or an absolute-form target), so their entries never
//! mix; a request whose `Forwarded` / `X-Forwarded-*` / override headers
//! could change the upstream's page is answered but never stored.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_redis_layers::cache::{
    CacheHandle, CacheStore, OriginUnreachable, RequestDirectives, ResponseCacheLayer,
};
use tower_redis_layers::{MemoryStore, RedisStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the upstream may take to answer before the proxy gives up (504).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How stale a stored response may be served while the upstream cannot be
/// reached (refused, reset, timed out; RFC 9111 §4.2.4).
const STALE_IF_UNREACHABLE: Duration = Duration::from_secs(3600);

#[derive(Clone)]
struct Proxy {
    client: Client<HttpConnector, Body>,
    upstream: Uri,
}

struct Args {
    listen: String,
    upstream: Uri,
    redis: Option<String>,
    purge_token: Option<String>,
}

fn args() -> Result<Args, BoxError> {
    let mut listen = None;
    let mut upstream = None;
    let mut redis = None;
    let mut purge_token = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => listen = it.next(),
            "--upstream" => upstream = it.next(),
            "--redis" => redis = it.next(),
            "--purge-token" => purge_token = it.next(),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let usage =
        "usage: caching_proxy --listen ADDR --upstream URL [--redis URL] [--purge-token TOKEN]";
    let upstream: Uri = upstream.ok_or(usage)?.parse()?;
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        return Err("--upstream must be an http:// URL with a host".into());
    }
    if purge_token.as_deref().is_some_and(str::is_empty) {
        return Err("--purge-token must not be empty".into());
    }
    Ok(Args {
        listen: listen.ok_or(usage)?,
        upstream,
        redis,
        purge_token,
    })
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and those `Connection` names: never forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

async fn forward(
    State(proxy): State<Proxy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = format!(
        "http://{}{}",
        proxy.upstream.authority().expect("checked at start"),
        path
    );
    *req.uri_mut() = match uri.parse() {
        Ok(u) => u,
        Err(_) => return (StatusCode::BAD_REQUEST, "invalid request target").into_response(),
    };
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if let Ok(v) = HeaderValue::try_from(peer.ip().to_string()) {
        headers.append("x-forwarded-for", v);
    }
    match tokio::time::timeout(UPSTREAM_TIMEOUT, proxy.client.request(req)).await {
        Ok(Ok(res)) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(e)) => unreachable(
            StatusCode::BAD_GATEWAY,
            format!("upstream unreachable: {e}\n"),
        ),
        Err(_) => unreachable(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n".into()),
    }
}

/// The proxy's own answer when the upstream cannot be reached, marked so
/// that the cache serves a stale entry instead where it may.
fn unreachable(status: StatusCode, message: String) -> Response {
    let mut res = (status, [(header::CONTENT_TYPE, "text/plain")], message).into_response();
    res.extensions_mut().insert(OriginUnreachable);
    res
}

#[derive(Clone)]
struct Purger {
    cache: CacheHandle,
    token: Option<String>,
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `PURGE <path>` drops the cached GET of that URL on this host; `PURGE`
/// with `Surrogate-Key: a b` drops every entry tagged `a` or `b`; with
/// `Soft-Purge: 1` entries are marked stale instead (revalidated on next
/// use). Every instance sharing the store sees it. Refused (405) unless the
/// proxy runs with `--purge-token`, and (401) unless the request carries
/// `Authorization: Bearer <token>`. Anything else passes on.
async fn purge(State(p): State<Purger>, req: Request, next: Next) -> Response {
    if req.method().as_str() != "PURGE" {
        return next.run(req).await;
    }
    let text = |status, body: String| (status, [(header::CONTENT_TYPE, "text/plain")], body);
    let Some(token) = &p.token else {
        let off = "PURGE is off: start the proxy with --purge-token\n";
        return text(StatusCode::METHOD_NOT_ALLOWED, off.into()).into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if !given.is_some_and(|g| same_secret(g, token.as_bytes())) {
        let refused = text(
            StatusCode::UNAUTHORIZED,
            "a valid purge token is needed\n".into(),
        );
        return ([(header::WWW_AUTHENTICATE, "Bearer")], refused).into_response();
    }
    let h = req.headers();
    let soft = h.get("soft-purge").is_some_and(|v| v == "1");
    let result = match h.get("surrogate-key").and_then(|v| v.to_str().ok()) {
        Some(keys) => {
            let mut urls = 0;
            let mut failed = None;
            for tag in keys.split([' ', ',']).filter(|t| !t.is_empty()) {
                let r = if soft {
                    p.cache.soft_purge_tag(tag).await
                } else {
                    p.cache.purge_tag(tag).await
                };
                match r {
                    Ok(n) => urls += n,
                    Err(e) => failed = Some(e),
                }
            }
            failed.map_or(Ok(format!("purged {urls} URLs\n")), Err)
        }
        None => {
            let host = h
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let Ok(uri) = format!("http://{host}{path}").parse::<Uri>() else {
                return text(StatusCode::BAD_REQUEST, "invalid URL\n".into()).into_response();
            };
            let r = if soft {
                p.cache.soft_purge_url(&uri).await
            } else {
                p.cache.invalidate(&uri).await
            };
            r.map(|()| "purged\n".to_owned())
        }
    };
    match result {
        Ok(body) => text(StatusCode::OK, body).into_response(),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("purge failed: {e}\n"),
        )
        .into_response(),
    }
}

async fn serve(store: impl CacheStore, args: Args) -> Result<(), BoxError> {
    // A pure HTTP shared cache: no default TTL, the upstream's headers
    // decide (heuristic freshness from Last-Modified where they state no
    // lifetime); keyed per host by default. Responses to requests with
    // Authorization are stored where they allow it (RFC 9111 §3.5), and
    // clients' Cache-Control (no-cache, max-age, max-stale, min-fresh,
    // no-store, only-if-cached) is honoured, as a proxy's should be. As a
    // shared cache in front of the upstream, it obeys CDN-Cache-Control
    // (RFC 9213) in place of Cache-Control when the upstream sends it.
    let cache = ResponseCacheLayer::builder(store)
        .cache_authorized(true)
        .targeted_cache_control([HeaderName::from_static("cdn-cache-control")])
        .request_directives(RequestDirectives::Honor {
            min_age: Duration::ZERO,
        })
        .stale_if_unreachable(STALE_IF_UNREACHABLE)
        .build()?;
    let purger = Purger {
        cache: cache.handle(),
        token: args.purge_token,
    };
    let proxy = Proxy {
        client: Client::builder(TokioExecutor::new()).build_http(),
        upstream: args.upstream,
    };
    // PURGE is answered in front of the cache: it never reaches the upstream.
    let app = Router::new()
        .fallback(forward)
        .with_state(proxy)
        .layer(cache)
        .layer(middleware::from_fn_with_state(purger, purge));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args()?;
    match args.redis.clone() {
        None => serve(MemoryStore::new(), args).await,
        Some(url) => {
            let store = RedisStore::builder(url)
                .prefix("proxy")
                .ping_on_connect(true)
                .connect()
                .await?;
            serve(store, args).await
        }
    }
}
