//! Criterion micro-benchmarks of the hot pure code: client-key extraction,
//! rate-limit field rendering, the idempotency fingerprint, and the cache
//! entry codec.
//!
//! ```text
//! cargo bench --bench micro
//! ```

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Request};
use tower_redis_layers::bench;
use tower_redis_layers::key::{
    ClientIp, Header, KeyExtractor, KeyExtractorExt, PeerAddr, PeerIp, RequestView,
};

fn keys(c: &mut Criterion) {
    let mut req = Request::builder()
        .header("x-api-key", "sk_live_51H8q2KJ3kL9xYzAbCdEfGh")
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.2, 10.0.0.5")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(PeerAddr("10.0.0.2:5555".parse::<SocketAddr>().unwrap()));
    let header = Header::new("x-api-key");
    let peer = PeerIp::new();
    let behind_proxies = ClientIp::new().trust(["10.0.0.0/8".parse().unwrap()]);
    let chained = Header::new("x-missing").or(PeerIp::new());
    let mut g = c.benchmark_group("key");
    g.bench_function("header + digest", |b| {
        b.iter(|| {
            header
                .extract(&RequestView::new(black_box(&req)))
                .unwrap()
                .digest()
        })
    });
    g.bench_function("peer ip", |b| {
        b.iter(|| peer.extract(&RequestView::new(black_box(&req))).unwrap())
    });
    g.bench_function("client ip behind 1 trusted hop", |b| {
        b.iter(|| {
            behind_proxies
                .extract(&RequestView::new(black_box(&req)))
                .unwrap()
        })
    });
    g.bench_function("header or peer (fallback)", |b| {
        b.iter(|| chained.extract(&RequestView::new(black_box(&req))).unwrap())
    });
    g.finish();
}

fn rate_limit_fields(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate limit fields");
    for n in [1, 3] {
        let fields = bench::RateLimitFields::new(n);
        g.bench_function(format!("{n} policies"), |b| {
            b.iter(|| {
                let mut h = HeaderMap::new();
                black_box(&fields).apply(&mut h);
                h
            })
        });
    }
    g.finish();
}

fn fingerprint(c: &mut Criterion) {
    let req = Request::post("/api/orders?x=1")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut g = c.benchmark_group("idempotency fingerprint");
    for size in [256usize, 16 * 1024] {
        let body = Bytes::from(vec![b'x'; size]);
        g.bench_function(format!("{size} B body"), |b| {
            b.iter(|| bench::idempotency_fingerprint(black_box(&req), black_box(&body)))
        });
    }
    g.finish();
}

fn cache_entry(c: &mut Criterion) {
    let headers = bench::sample_headers();
    let body = Bytes::from(vec![b'{'; 1024]);
    let raw = bench::cache_encode(&headers, &body);
    let mut g = c.benchmark_group("cache entry (1 KiB body)");
    g.bench_function("encode", |b| {
        b.iter(|| bench::cache_encode(black_box(&headers), black_box(&body)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| bench::cache_decode(black_box(raw.clone())))
    });
    g.finish();
}

criterion_group!(benches, keys, rate_limit_fields, fingerprint, cache_entry);
criterion_main!(benches);
