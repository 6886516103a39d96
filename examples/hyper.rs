//! hyper 1 + hyper-util, no framework: the layers on a plain tower service,
//! with the peer address set per connection for the key extractors.
//!
//! ```text
//! cargo run --example hyper                     # memory store, 127.0.0.1:3001
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example hyper
//! for i in $(seq 5); do curl -si localhost:3001/ | head -1; done        # 3 × 200, then 429
//! curl -si localhost:3001/ -XPOST -H 'Idempotency-Key: "a"' -d hi     # twice: one execution
//! ```

use std::convert::Infallible;
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
use tower_redis_layers::{MemoryStore, RedisStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application: a counter of executions, echoed with the request body.
async fn handler(
    counter: Arc<AtomicU64>,
    req: Request<RequestBody<Incoming>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    let text = format!("execution {n}: {}\n", String::from_utf8_lossy(&body));
    Ok(Response::new(Full::new(Bytes::from(text))))
}

async fn serve<St>(store: St, listen: &str) -> Result<(), BoxError>
where
    St: RateLimitStore + IdempotencyStore + Clone,
{
    let limit = RateLimitLayer::builder(store.clone())
        .policy(Policy::gcra(3, Duration::from_secs(10)))
        .key(PeerIp::new()) // reads the PeerAddr extension set below
        .build()?;
    let idempotent = IdempotencyLayer::builder(store).build()?;
    let counter = Arc::new(AtomicU64::new(0));
    let app = ServiceBuilder::new()
        .layer(limit)
        .layer(idempotent)
        .service_fn(move |req| handler(counter.clone(), req));

    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        // Each connection's service stamps its requests with the peer address.
        let svc = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            })
            .service(app.clone());
        tokio::spawn(async move {
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .await
            {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3001".into());
    match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        None => serve(MemoryStore::new(), &listen).await,
        Some(url) => {
            let store = RedisStore::builder(url)
                .ping_on_connect(true)
                .connect()
                .await?;
            serve(store, &listen).await
        }
    }
}
