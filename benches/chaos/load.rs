//! The load: on a fixed schedule, open loop (a stalled request does not
//! slow the schedule down), on every layer at once, until told to stop.
//! Every name a phase uses (clients, idempotency keys, items) is new, so
//! that each phase's counts are its own.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tower_redis_layers::rate_limit::{DecisionSource, RateLimitDecision};

use crate::fleet::{Fleet, World, ORDER_WORK};

/// A request slower than this is hung.
const HUNG: Duration = Duration::from_secs(2);
/// The client gives up after this (bounds the benchmark).
const GIVE_UP: Duration = Duration::from_secs(5);

/// Rate-limited clients, each sending every `RATE_EVERY × CLIENTS`.
const CLIENTS: usize = 4;
const RATE_EVERY: Duration = Duration::from_millis(5);
/// Cached items: reads every `READ_EVERY`, one write every `WRITE_EVERY`.
const ITEMS: usize = 8;
const READ_EVERY: Duration = Duration::from_millis(4);
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// A new idempotency key every `ORDER_EVERY`; each is sent until answered
/// 201 and once more (a replay), at most `ATTEMPTS` times. Every third
/// key's first attempt hangs up half-way through the handler's work.
const ORDER_EVERY: Duration = Duration::from_millis(20);
const ATTEMPTS: usize = 10;

/// One rate-limit decision as a client saw it.
pub struct Decision {
    pub client: usize,
    pub instance: usize,
    pub sent: Instant,
    pub received: Instant,
    pub source: DecisionSource,
    pub allowed: bool,
}

/// What happened during one phase.
#[derive(Default)]
pub struct Log {
    pub requests: AtomicU64,
    pub hung: AtomicU64,
    pub slowest_us: AtomicU64,
    pub routes: Mutex<BTreeMap<&'static str, Route>>,
    pub decisions: Mutex<Vec<Decision>>,
    pub keys: AtomicU64,
    pub hang_ups: AtomicU64,
    pub reads: AtomicU64,
    pub stale: AtomicU64,
}

/// Answers of one route: a count per status (0: no answer in time), and
/// the slowest.
#[derive(Default)]
pub struct Route {
    pub statuses: BTreeMap<u16, u64>,
    pub slowest: Duration,
}

struct Answer {
    status: u16,
    decision: Option<RateLimitDecision>,
    body: Bytes,
}

impl Log {
    /// Sends `req` to instance `i` and reads the whole answer; `None` when
    /// it did not come within [`GIVE_UP`].
    async fn send(
        &self,
        fleet: &Fleet,
        i: usize,
        route: &'static str,
        req: Request<Body>,
    ) -> Option<Answer> {
        let start = Instant::now();
        let answer = tokio::time::timeout(GIVE_UP, async {
            let (parts, body) = fleet.call(i, req).await.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Answer {
                status: parts.status.as_u16(),
                decision: parts.extensions.get::<RateLimitDecision>().cloned(),
                body,
            }
        })
        .await
        .ok();
        let took = start.elapsed();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.slowest_us
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        if took > HUNG {
            self.hung.fetch_add(1, Ordering::Relaxed);
        }
        let status = answer.as_ref().map_or(0, |a| a.status);
        let mut routes = self.routes.lock().unwrap();
        let route = routes.entry(route).or_default();
        *route.statuses.entry(status).or_default() += 1;
        route.slowest = route.slowest.max(took);
        drop(routes);
        answer
    }
}

fn request(method: &str, uri: String) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

/// What every request of a phase needs.
pub struct Phase {
    pub fleet: Fleet,
    pub world: Arc<World>,
    pub log: Log,
    pub number: usize,
    pub stop: AtomicBool,
}

/// Runs the load of a phase until its `stop` is set, then waits for every
/// request in flight (each bounded by [`GIVE_UP`]).
pub async fn run(phase: Arc<Phase>) {
    let tasks = [
        every(RATE_EVERY, &phase, limited),
        every(READ_EVERY, &phase, read_item),
        every(WRITE_EVERY, &phase, write_item),
        every(ORDER_EVERY, &phase, order),
    ];
    for task in tasks {
        let _ = task.await;
    }
}

/// Starts `f(phase, n)` for n = 0, 1, ... every `period` until the phase stops.
fn every<F, Fut>(period: Duration, phase: &Arc<Phase>, f: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<Phase>, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let phase = phase.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight = JoinSet::new();
        for n in 0.. {
            tick.tick().await;
            if phase.stop.load(Ordering::Relaxed) {
                break;
            }
            in_flight.spawn(f(phase.clone(), n));
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
    })
}

/// Client `n % CLIENTS` asks for the rate-limited route.
async fn limited(p: Arc<Phase>, n: usize) {
    let client = n % CLIENTS;
    let instance = (n / CLIENTS) % p.fleet.len();
    let req = request("GET", "/limited".into())
        .header("x-api-key", format!("p{}-c{client}", p.number))
        .body(Body::empty())
        .unwrap();
    let sent = Instant::now();
    let answer = p.log.send(&p.fleet, instance, "rate limit", req).await;
    if let Some(d) = answer.and_then(|a| a.decision) {
        p.log.decisions.lock().unwrap().push(Decision {
            client,
            instance,
            sent,
            received: Instant::now(),
            source: d.source,
            allowed: d.allowed,
        });
    }
}

fn item_name(p: &Phase, n: usize) -> String {
    format!("p{}-{}", p.number, n % ITEMS)
}

fn number(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// Reads an item; a version older than one acknowledged before the read
/// was sent is a stale read.
async fn read_item(p: Arc<Phase>, n: usize) {
    let item = item_name(&p, n);
    let acked = p.world.acked(&item);
    let req = request("GET", format!("/items/{item}"));
    let answer = p.log.send(
        &p.fleet,
        n / ITEMS,
        "cache read",
        req.body(Body::empty()).unwrap(),
    );
    if let Some(a) = answer.await.filter(|a| a.status == 200) {
        p.log.reads.fetch_add(1, Ordering::Relaxed);
        if number(&a.body).unwrap_or(0) < acked {
            p.log.stale.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes an item; its new version counts as acknowledged once answered.
async fn write_item(p: Arc<Phase>, n: usize) {
    let item = item_name(&p, n);
    let req = request("PUT", format!("/items/{item}"));
    let answer = p
        .log
        .send(&p.fleet, n, "cache write", req.body(Body::empty()).unwrap());
    if let Some(v) = answer
        .await
        .filter(|a| a.status == 200)
        .and_then(|a| number(&a.body))
    {
        p.world.ack(&item, v);
    }
}

/// One idempotency key, retried until answered 201 and once more (a
/// replay), at most [`ATTEMPTS`] times.
async fn order(p: Arc<Phase>, n: usize) {
    p.log.keys.fetch_add(1, Ordering::Relaxed);
    // Keys whose first attempt hangs up are named apart.
    let hangs_up = n.is_multiple_of(3);
    let key = format!("\"p{}-{}{n}\"", p.number, if hangs_up { 'h' } else { 'k' });
    let post = || {
        request("POST", "/orders".into())
            .header("idempotency-key", key.as_str())
            .body(Body::from("one order"))
            .unwrap()
    };
    let mut answered = false;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 && p.stop.load(Ordering::Relaxed) {
            return;
        }
        let instance = n + attempt;
        if attempt == 0 && hangs_up {
            // The client hangs up: its request future is dropped mid-handler.
            let _ = tokio::time::timeout(ORDER_WORK / 2, p.fleet.call(instance, post())).await;
            p.log.hang_ups.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let status = p
            .log
            .send(&p.fleet, instance, "idempotent", post())
            .await
            .map(|a| a.status);
        let pause = match status {
            Some(201) if answered => return,
            Some(201) => {
                answered = true;
                10
            }
            Some(409) => 50,
            _ => 100,
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
