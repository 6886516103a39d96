//! How early leases deny under contention: three instances (each its own
//! RedisStore and layer, one Redis) share one client's quota of 1000 units,
//! each leasing 50 units for up to 500 ms. Instance A sees 2% of the
//! client's requests, B and C 49% each: when B and C have spent what the
//! store had, A still holds units it will not spend soon, and B and C deny
//! until A's lease ends and gives them back.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer};
use tower_redis_layers::RedisStore;

const LIMIT: u64 = 1000;
const UNITS: u64 = 50;
const AGE: Duration = Duration::from_millis(500);

/// One row: the policy, units admitted when the first request was denied,
/// and how long after that the fleet had admitted the whole quota.
pub struct Row {
    pub policy: &'static str,
    pub at_first_denial: u64,
    pub whole_after: Option<Duration>,
}

async fn run(redis_url: &str, name: &'static str, policy: Policy) -> Row {
    let prefix = format!("contention-{}-{name}", std::process::id());
    let mut services = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::builder(redis_url)
            .prefix(prefix.clone())
            .deadline(Duration::from_millis(500))
            .connect()
            .await
            .expect("bench redis");
        let layer = RateLimitLayer::builder(store)
            .policy(policy.clone())
            .key(Header::new("x-api-key"))
            .remember_denials(false)
            .lease(UNITS, AGE)
            .build()
            .unwrap();
        services.push(
            ServiceBuilder::new()
                .layer(layer)
                .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                })),
        );
    }
    let (mut admitted, mut first_denial, mut denied_at) = (0u64, None, None);
    let started = Instant::now();
    let mut i = 0u64;
    while admitted < LIMIT && started.elapsed() < Duration::from_secs(5) {
        // 2% of the requests to A, 49% each to B and C, 8 at a time.
        let batch: Vec<_> = (0..8)
            .map(|_| {
                i += 1;
                let who = match i % 50 {
                    0 => 0,
                    n if n % 2 == 0 => 1,
                    _ => 2,
                };
                let req = Request::builder()
                    .header("x-api-key", "contended")
                    .body(Full::default())
                    .unwrap();
                services[who].clone().oneshot(req)
            })
            .collect();
        for res in futures_util::future::join_all(batch).await {
            match res.map(|r| r.status()) {
                Ok(StatusCode::OK) => admitted += 1,
                _ => {
                    if first_denial.is_none() {
                        first_denial = Some(admitted);
                        denied_at = Some(Instant::now());
                    }
                }
            }
        }
    }
    Row {
        policy: name,
        at_first_denial: first_denial.unwrap_or(admitted),
        whole_after: (admitted >= LIMIT).then(|| denied_at.map_or(Duration::ZERO, |d| d.elapsed())),
    }
}

pub async fn all(redis_url: &str) -> Vec<Row> {
    let hour = Duration::from_secs(3600);
    vec![
        run(
            redis_url,
            "fixed window 1000/h",
            Policy::fixed_window(LIMIT, hour),
        )
        .await,
        run(redis_url, "GCRA 1000/h", Policy::gcra(LIMIT, hour)).await,
        run(
            redis_url,
            "token bucket 1000/h",
            Policy::token_bucket(LIMIT, hour),
        )
        .await,
    ]
}

pub fn report(rows: &[Row]) -> String {
    let mut out = format!(
        "\nLeases under contention: 3 instances, one client's quota of {LIMIT}, slices of {UNITS} units for up to {} ms, the client's requests 2% / 49% / 49% across the instances:\n\n| policy | admitted at the first denial | early by | whole quota admitted after |\n|---|---:|---:|---:|\n",
        AGE.as_millis()
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} of {LIMIT} | {:.1}% | {} |\n",
            r.policy,
            r.at_first_denial,
            (LIMIT - r.at_first_denial) as f64 * 100.0 / LIMIT as f64,
            r.whole_after
                .map_or("not within 5 s".into(), |d| format!("{} ms", d.as_millis()))
        ));
    }
    out
}
