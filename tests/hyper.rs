//! A plain hyper 1 server (`hyper::server::conn` via hyper-util) with the
//! layers, the peer address stamped per connection, over real sockets.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyStore, RequestBody};
use tower_redis_layers::key::{PeerAddr, PeerIp};
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::MemoryStore;

async fn serve<St>(store: St, executions: Arc<AtomicU64>) -> SocketAddr
where
    St: RateLimitStore + IdempotencyStore + Clone,
{
    let app = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(store.clone())
                .policy(Policy::fixed_window(4, Duration::from_secs(3600)))
                .key(PeerIp::new())
                .build()
                .unwrap(),
        )
        .layer(IdempotencyLayer::builder(store).build().unwrap())
        .service_fn(move |req: Request<RequestBody<Incoming>>| {
            let executions = executions.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let n = executions.fetch_add(1, Ordering::SeqCst) + 1;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                    "{n}:{}",
                    String::from_utf8_lossy(&body)
                )))))
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req
                })
                .service(app.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    addr
}

async fn post(addr: SocketAddr, key: &str, body: &'static str) -> (u16, Option<String>, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/orders")
        .header("host", "test")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let res = tx.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        replayed,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn check(store: impl RateLimitStore + IdempotencyStore + Clone) {
    let executions = Arc::new(AtomicU64::new(0));
    let addr = serve(store, executions.clone()).await;
    let first = post(addr, "\"k1\"", "pay 10").await;
    assert_eq!(first, (200, None, "1:pay 10".to_owned()));
    let replay = post(addr, "\"k1\"", "pay 10").await;
    assert_eq!(
        replay,
        (200, Some("true".to_owned()), "1:pay 10".to_owned())
    );
    assert_eq!(post(addr, "\"k2\"", "pay 20").await.0, 200);
    assert_eq!(post(addr, "\"k3\"", "pay 30").await.0, 200);
    // The peer (127.0.0.1) has used its 4 requests: the limit reads PeerAddr.
    assert_eq!(post(addr, "\"k4\"", "pay 40").await.0, 429);
    assert_eq!(executions.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn hyper_server_conn_with_layers_memory() {
    check(MemoryStore::new()).await;
}

#[tokio::test]
async fn hyper_server_conn_with_layers_redis() {
    check(support::redis_store("hyper").await).await;
}
