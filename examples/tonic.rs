//! A gRPC server (tonic, with tonic-health's generated service: no `protoc`
//! needed) behind RateLimitLayer, and a client in the same example showing
//! `RESOURCE_EXHAUSTED` with the retry hint.
//!
//! ```text
//! cargo run --example tonic                       # memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tonic
//! ```
//!
//! It serves on `LISTEN` (default 127.0.0.1:50051), then calls its own
//! health service four times with a quota of three per 10 s per peer:
//!
//! ```text
//! call 1: Serving
//! call 2: Serving
//! call 3: Serving
//! call 4: ResourceExhausted "quota exceeded; retry in 4 s" (retry-after: 4)
//! ```
//!
//! The response cache does not sit in front of gRPC here: unary gRPC calls
//! are POSTs, which an HTTP cache does not store.

use std::time::Duration;

use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_redis_layers::key::PeerIp;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::{MemoryStore, RedisStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(store: impl RateLimitStore, listen: &str) -> Result<(), BoxError> {
    let limit = RateLimitLayer::builder(store)
        .policy(Policy::gcra(3, Duration::from_secs(10)).named("grpc"))
        // tonic puts the peer address in a TcpConnectInfo extension.
        .key(PeerIp::from_extension(|c: &TcpConnectInfo| {
            c.remote_addr().map(|a| a.ip())
        }))
        .build()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    tokio::spawn(
        Server::builder()
            .layer(limit)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    for call in 1..=4 {
        let req = HealthCheckRequest {
            service: String::new(),
        };
        match client.check(req).await {
            Ok(res) => println!("call {call}: {:?}", res.into_inner().status()),
            Err(status) => {
                let retry = status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?");
                println!(
                    "call {call}: {:?} {:?} (retry-after: {retry})",
                    status.code(),
                    status.message()
                );
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:50051".into());
    match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        None => run(MemoryStore::new(), &listen).await,
        Some(url) => run(RedisStore::builder(url).connect().await?, &listen).await,
    }
}
