//! tonic over real sockets: a gRPC client gets RESOURCE_EXHAUSTED from the
//! rate limiter with a retry hint, normal calls pass, and gRPC trailers
//! survive the layer.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tonic::transport::Server;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_redis_layers::key::PeerIp;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::MemoryStore;

async fn serve(store: impl RateLimitStore) -> SocketAddr {
    let limit = RateLimitLayer::builder(store)
        .policy(Policy::gcra(3, Duration::from_secs(60)).named("grpc"))
        .key(PeerIp::from_extension(|c: &TcpConnectInfo| {
            c.remote_addr().map(|a| a.ip())
        }))
        .build()
        .unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .layer(limit)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

async fn check_limit(store: impl RateLimitStore) {
    let addr = serve(store).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..3 {
        let res = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("calls within the quota pass, their trailers intact");
        // SERVING = 1: the body and the trailers (grpc-status 0) came through.
        assert_eq!(res.into_inner().status, 1);
    }
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("the fourth call is over quota");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("quota exceeded"),
        "{}",
        status.message()
    );
    let retry = status
        .metadata()
        .get("retry-after")
        .expect("a retry hint")
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(status.metadata().get("ratelimit").is_some());
}

#[tokio::test]
async fn tonic_client_gets_resource_exhausted_memory() {
    check_limit(MemoryStore::new()).await;
}

#[tokio::test]
async fn tonic_client_gets_resource_exhausted_redis() {
    check_limit(support::redis_store("tonic").await).await;
}
