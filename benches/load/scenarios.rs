//! The scenarios: one trivial handler, bare and behind each layer, on the
//! memory store and on Redis; with one hot key (what in-process collapsing
//! and batching of one key flatter) and with many distinct keys and URLs
//! (what every request of a real fleet pays).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_redis_layers::cache::{CacheStore, ResponseCacheLayer};
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyStore};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::{MemoryStore, RedisStore};

use crate::client::RequestSpec;

pub struct Scenario {
    pub name: String,
    /// Makes the service, anew for each round: what one round's service
    /// keeps in process (a memory store's million records, say, and the
    /// sweeping of them) must not weigh on the next scenarios.
    make: Make,
    stores: Arc<Stores>,
    pub spec: RequestSpec,
    /// Requests sent one by one on one connection before the warm-up (`spec`
    /// of connection 0, sequence 0..warm): fills every URL or key the
    /// scenario cycles through, so that its hits are hits.
    pub warm: u64,
    /// The ratio to bare this scenario should reach (marked in the report).
    pub target: Option<f64>,
    /// What sends the `warm` requests instead of the service, in process:
    /// another instance of it, sharing its store (made anew each round too:
    /// Redis is flushed between rounds, and a long-lived instance would
    /// answer from what it keeps in process and store nothing).
    primer: Option<Make>,
}

type Make = Arc<dyn Fn(&Stores) -> Router + Send + Sync>;

/// The Redis stores the scenarios share: two instances' connections.
pub struct Stores {
    redis: RedisStore,
    elsewhere: RedisStore,
}

impl Scenario {
    /// This round's service.
    pub fn router(&self) -> Router {
        (self.make)(&self.stores)
    }

    /// This round's primer, if another instance primes the scenario.
    pub fn primer(&self) -> Option<Router> {
        self.primer.as_ref().map(|p| p(&self.stores))
    }
}

/// A limit no scenario reaches.
const BIG: u64 = 1_000_000_000;

/// Distinct keys, URLs and clients of the "many" scenarios.
pub const DISTINCT: u64 = 1000;
/// Vary variants of one URL (the cache's default cap per URL).
const VARIANTS: u64 = 16;

/// The `seq`-th id of connection `conn` out of `n`: connections start apart
/// and step by 7 (coprime with `n`), so connection 0 alone visits every id
/// in its first `n` requests (the warm-up relies on it).
fn spread(conn: usize, seq: u64, n: u64) -> u64 {
    (seq * 7 + conn as u64 * 131) % n
}

async fn handler() -> &'static str {
    "ok"
}

/// The handler after one wait (a task wake after the I/O driver ran, as an
/// answer from Redis is), holding the request meanwhile as a layer that
/// waits before passing it on does: what any such wait costs the server,
/// whatever it waits for. (While the request is held, hyper's look for
/// the connection's end cannot reuse its read buffer, which the request's
/// fields still point into: it allocates another.)
async fn waiting_handler(req: axum::extract::Request) -> &'static str {
    tokio::task::yield_now().await;
    drop(req);
    "ok"
}

async fn vary_handler() -> ([(http::HeaderName, &'static str); 1], &'static str) {
    ([(http::header::VARY, "x-variant")], "ok")
}

fn app() -> Router {
    Router::new()
        .route("/", get(handler).post(handler))
        .route("/items/{id}", get(handler))
        .route("/vary", get(vary_handler))
}

fn request(method: &str, path: String, client: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", client)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

const HOT: &str = "client-hot";

/// GET / from one client.
fn hot_client() -> RequestSpec {
    Arc::new(|_, _| request("GET", "/".into(), HOT))
}

/// GET / from `DISTINCT` clients, spread over the connections.
fn many_clients() -> RequestSpec {
    Arc::new(|conn, seq| {
        let id = spread(conn, seq, DISTINCT);
        request("GET", "/".into(), &format!("client-{id}"))
    })
}

fn with_idempotency_key(mut r: Request<Full<Bytes>>, key: &str) -> Request<Full<Bytes>> {
    let key = format!("\"{key}\"");
    r.headers_mut()
        .insert("idempotency-key", key.parse().unwrap());
    r
}

/// POSTs with a key never used before (unique across the warm-up and the run).
fn post_first_run() -> RequestSpec {
    static N: AtomicU64 = AtomicU64::new(0);
    Arc::new(|_, _| {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let r = request("POST", "/".into(), &format!("client-{}", n % DISTINCT));
        with_idempotency_key(r, &format!("k{n}"))
    })
}

/// POSTs repeating `DISTINCT` keys of as many clients: once warmed, replays.
fn post_replay_many() -> RequestSpec {
    Arc::new(|conn, seq| {
        let id = spread(conn, seq, DISTINCT);
        let r = request("POST", "/".into(), &format!("client-{id}"));
        with_idempotency_key(r, &format!("replay-{id}"))
    })
}

/// POSTs repeating one key of one client: all but the first are replays.
fn post_replay_hot() -> RequestSpec {
    Arc::new(|_, _| with_idempotency_key(request("POST", "/".into(), HOT), "replay-hot"))
}

/// GETs of one URL.
fn get_hot() -> RequestSpec {
    Arc::new(|_, _| request("GET", "/items/1".into(), HOT))
}

/// GETs of `DISTINCT` URLs by as many clients.
fn get_many() -> RequestSpec {
    Arc::new(|conn, seq| {
        let id = spread(conn, seq, DISTINCT);
        request("GET", format!("/items/{id}"), &format!("client-{id}"))
    })
}

/// GETs of one URL whose response varies on `x-variant`, in `VARIANTS` variants.
fn get_variants() -> RequestSpec {
    Arc::new(|conn, seq| {
        let mut r = request("GET", "/vary".into(), HOT);
        let v = format!("v{}", spread(conn, seq, VARIANTS));
        r.headers_mut().insert("x-variant", v.parse().unwrap());
        r
    })
}

/// GETs of URLs never requested before.
fn get_miss() -> RequestSpec {
    static N: AtomicU64 = AtomicU64::new(0);
    Arc::new(|_, _| {
        let id = N.fetch_add(1, Ordering::Relaxed);
        request("GET", format!("/items/miss-{id}"), HOT)
    })
}

fn rate_limit(store: impl RateLimitStore, limit: u64, scope: &str) -> RateLimitLayer {
    RateLimitLayer::builder(store)
        .policy(Policy::gcra(limit, Duration::from_secs(3600)))
        .key(Header::new("x-api-key"))
        .scope(scope)
        .build()
        .unwrap()
}

/// The same, taking local leases of 1000 units for up to 50 ms.
fn rate_limit_leased(store: impl RateLimitStore, limit: u64, scope: &str) -> RateLimitLayer {
    RateLimitLayer::builder(store)
        .policy(Policy::gcra(limit, Duration::from_secs(3600)))
        .key(Header::new("x-api-key"))
        .scope(scope)
        .lease(1000, Duration::from_millis(50))
        .build()
        .unwrap()
}

fn idempotency(store: impl IdempotencyStore, scope: &str) -> IdempotencyLayer {
    IdempotencyLayer::builder(store)
        .principal(Header::new("x-api-key"))
        .scope(scope)
        .build()
        .unwrap()
}

fn cache(store: impl CacheStore, scope: &str) -> ResponseCacheLayer {
    ResponseCacheLayer::builder(store)
        .default_ttl(Duration::from_secs(600))
        .scope(scope)
        .build()
        .unwrap()
}

/// The cache with its in-process L1 tier (kept coherent by pub/sub).
fn cache_l1(store: impl CacheStore, scope: &str) -> ResponseCacheLayer {
    ResponseCacheLayer::builder(store)
        .default_ttl(Duration::from_secs(600))
        .l1(10_000, Duration::from_secs(60))
        .scope(scope)
        .build()
        .unwrap()
}

/// tower_governor's key: the same `x-api-key` header our layer keys on.
#[derive(Clone)]
struct ApiKey;

impl tower_governor::key_extractor::KeyExtractor for ApiKey {
    type Key = String;

    fn extract<T>(&self, req: &http::Request<T>) -> Result<String, tower_governor::GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// tower_governor (governor's GCRA, in process): the in-memory peer.
fn governor() -> Router {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(ApiKey)
        .finish()
        .unwrap();
    app().layer(tower_governor::GovernorLayer::new(config))
}

fn stacked<St>(store: St, scope: &str) -> Router
where
    St: RateLimitStore + IdempotencyStore + CacheStore + Clone,
{
    app().layer(
        ServiceBuilder::new()
            .layer(rate_limit(store.clone(), 1_000_000_000, scope))
            .layer(idempotency(store.clone(), scope))
            .layer(cache(store, scope)),
    )
}

impl Scenario {
    fn warm(mut self, n: u64) -> Self {
        self.warm = n;
        self
    }

    fn target(mut self, ratio: f64) -> Self {
        self.target = Some(ratio);
        self
    }

    fn primed_by(mut self, other: impl Fn(&Stores) -> Router + Send + Sync + 'static) -> Self {
        self.primer = Some(Arc::new(other));
        self
    }
}

pub async fn all(redis_url: &str) -> Vec<Scenario> {
    let connect = || async {
        RedisStore::builder(redis_url)
            .prefix("bench")
            .deadline(Duration::from_millis(500))
            .ping_on_connect(true)
            .connect()
            .await
            .expect("bench redis")
    };
    let stores = Arc::new(Stores {
        redis: connect().await,
        // Another instance of the service: its own connection to the same Redis.
        elsewhere: connect().await,
    });
    // A fresh memory store per scenario and round.
    let mem = MemoryStore::new;
    let r = |s: &Stores| s.redis.clone();
    let scenario = |name: &str, make: Make, spec: RequestSpec| Scenario {
        name: name.to_owned(),
        make,
        stores: stores.clone(),
        spec,
        warm: 0,
        target: None,
        primer: None,
    };
    vec![
        scenario("bare", Arc::new(|_| app()), hot_client()),
        // What one wait costs, with no layer: the floor under every row
        // that waits for Redis.
        scenario(
            "bare, the handler waiting once",
            Arc::new(|_| Router::new().route("/", get(waiting_handler))),
            hot_client(),
        ),
        // Rate limit: many clients, then one hot key.
        scenario(
            "tower_governor (peer, memory), 1000 clients",
            Arc::new(|_| governor()),
            many_clients(),
        ),
        scenario(
            "rate limit, memory, 1000 clients",
            Arc::new(move |_| app().layer(rate_limit(mem(), BIG, "m"))),
            many_clients(),
        ),
        scenario(
            "rate limit, redis, 1000 clients",
            Arc::new(move |s| app().layer(rate_limit(r(s), BIG, "a"))),
            many_clients(),
        )
        .target(0.6),
        scenario(
            "rate limit, redis, one hot key",
            Arc::new(move |s| app().layer(rate_limit(r(s), BIG, "h"))),
            hot_client(),
        )
        .target(0.6),
        scenario(
            "rate limit, redis, one hot key, leases",
            Arc::new(move |s| app().layer(rate_limit_leased(r(s), BIG, "hl"))),
            hot_client(),
        )
        .target(0.9),
        scenario(
            "rate limit, redis, 1000 clients, leases",
            Arc::new(move |s| app().layer(rate_limit_leased(r(s), BIG, "al"))),
            many_clients(),
        ),
        scenario(
            "rate limit, redis, one hot key, denied",
            Arc::new(move |s| app().layer(rate_limit(r(s), 1, "d"))),
            hot_client(),
        ),
        // Idempotency.
        scenario(
            "idempotency, memory, first run",
            Arc::new(move |_| app().layer(idempotency(mem(), "m1"))),
            post_first_run(),
        ),
        scenario(
            "idempotency, memory, replay, 1000 keys",
            Arc::new(move |_| app().layer(idempotency(mem(), "m2"))),
            post_replay_many(),
        )
        .warm(DISTINCT),
        scenario(
            "idempotency, redis, first run",
            Arc::new(move |s| app().layer(idempotency(r(s), "r1"))),
            post_first_run(),
        ),
        scenario(
            "idempotency, redis, replay, 1000 keys",
            Arc::new(move |s| app().layer(idempotency(r(s), "r2"))),
            post_replay_many(),
        )
        .warm(DISTINCT)
        .target(0.5),
        scenario(
            "idempotency, redis, replay, 1000 keys stored by another instance",
            Arc::new(move |s| app().layer(idempotency(r(s), "r4"))),
            post_replay_many(),
        )
        .warm(DISTINCT)
        .primed_by(|s| app().layer(idempotency(s.elsewhere.clone(), "r4")))
        .target(0.5),
        scenario(
            "idempotency, redis, replay, one hot key",
            Arc::new(move |s| app().layer(idempotency(r(s), "r3"))),
            post_replay_hot(),
        )
        .warm(1)
        .target(0.5),
        // Cache.
        scenario(
            "cache, memory, hit, 1000 URLs",
            Arc::new(move |_| app().layer(cache(mem(), "m1"))),
            get_many(),
        )
        .warm(DISTINCT),
        scenario(
            "cache, memory, miss",
            Arc::new(move |_| app().layer(cache(mem(), "m2"))),
            get_miss(),
        ),
        scenario(
            "cache, redis, hit, 1000 URLs",
            Arc::new(move |s| app().layer(cache(r(s), "r1"))),
            get_many(),
        )
        .warm(DISTINCT)
        .target(0.6),
        scenario(
            "cache, redis, hit, one hot URL",
            Arc::new(move |s| app().layer(cache(r(s), "r3"))),
            get_hot(),
        )
        .warm(1),
        scenario(
            "cache, redis, hit, one URL × 16 Vary variants",
            Arc::new(move |s| app().layer(cache(r(s), "r4"))),
            get_variants(),
        )
        .warm(VARIANTS),
        scenario(
            "cache, redis + L1 tier, hit, 1000 URLs",
            Arc::new(move |s| app().layer(cache_l1(r(s), "l1"))),
            get_many(),
        )
        .warm(DISTINCT)
        .target(0.9),
        scenario(
            "cache, redis, miss",
            Arc::new(move |s| app().layer(cache(r(s), "r2"))),
            get_miss(),
        ),
        // All three stacked.
        scenario(
            "all three, memory, GET hit, 1000 URLs",
            Arc::new(move |_| stacked(mem(), "s")),
            get_many(),
        )
        .warm(DISTINCT),
        scenario(
            "all three, redis, GET hit, 1000 URLs",
            Arc::new(move |s| stacked(r(s), "s")),
            get_many(),
        )
        .warm(DISTINCT)
        .target(0.5),
        scenario(
            "all three, redis, GET hit, one hot URL",
            Arc::new(move |s| stacked(r(s), "s1")),
            get_hot(),
        )
        .warm(1)
        .target(0.5),
    ]
}
