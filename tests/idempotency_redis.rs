//! IdempotencyLayer on Redis alone: several instances, hang-ups, round
//! trips, keys and TTLs, replicas, store failures and corrupt records.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_layers::idempotency::{
    Conflict, FailurePolicy, IdempotencyLayer, IdempotencyOutcome, RequestBody,
};
use tower_redis_layers::key::Header;
use tower_redis_layers::{RedisStore, ResponseBody};

type Res = Response<ResponseBody<Full<Bytes>>>;

/// What the test handlers are.
trait Handler:
    tower::Service<
        Request<RequestBody<Full<Bytes>>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + Sync
{
}

impl<T> Handler for T where
    T: tower::Service<
            Request<RequestBody<Full<Bytes>>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + Sync
{
}

/// A handler that takes 50 ms and numbers its executions.
fn handler(calls: Arc<AtomicUsize>) -> impl Handler {
    tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let res = Response::builder()
                .status(StatusCode::CREATED)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"order\":{n},\"len\":{}}}",
                    body.len()
                ))))
                .unwrap();
            Ok(res)
        }
    })
}

fn post(key: &str) -> Request<Full<Bytes>> {
    Request::post("/api/orders")
        .header("content-type", "application/json")
        .header("x-api-key", "alice")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{\"amount\":10}")))
        .unwrap()
}

fn layer(store: RedisStore, conflict: Conflict) -> IdempotencyLayer {
    IdempotencyLayer::builder(store)
        .principal(Header::new("x-api-key"))
        .on_conflict(conflict)
        .build()
        .unwrap()
}

async fn parts(res: Res) -> (StatusCode, http::HeaderMap, Bytes) {
    let (p, body) = res.into_parts();
    (
        p.status,
        p.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// 3 instances sharing one Redis, 500 concurrent requests with one key:
/// returns the handler's executions and each answer.
async fn fleet_run(
    name: &str,
    conflict: Conflict,
) -> (usize, Vec<(StatusCode, http::HeaderMap, Bytes)>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let services: Vec<_> = support::redis_fleet(name, 3)
        .await
        .into_iter()
        .map(|store| {
            ServiceBuilder::new()
                .layer(layer(store, conflict))
                .service(handler(calls.clone()))
        })
        .collect();
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let svc = services[i % 3].clone();
            tokio::spawn(async move {
                // Spread over ~100 ms, twice the handler's time: conflicts, then replays.
                tokio::time::sleep(Duration::from_micros(i as u64 * 200)).await;
                parts(svc.oneshot(post("order-1")).await.unwrap()).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    (calls.load(Ordering::SeqCst), answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_500_concurrent_requests_run_the_handler_once() {
    let (calls, answers) = fleet_run("fleet-reject", Conflict::Reject).await;
    assert_eq!(calls, 1);
    let firsts: Vec<_> = answers
        .iter()
        .filter(|(s, h, _)| *s == StatusCode::CREATED && !h.contains_key("idempotent-replayed"))
        .collect();
    assert_eq!(firsts.len(), 1, "exactly one original answer");
    let original = &firsts[0].2;
    let (mut replays, mut conflicts) = (0, 0);
    for (status, headers, body) in &answers {
        match *status {
            StatusCode::CREATED if headers.contains_key("idempotent-replayed") => {
                assert_eq!(headers["idempotent-replayed"], "true");
                assert_eq!(body, original, "a replay is the original byte for byte");
                replays += 1;
            }
            StatusCode::CREATED => {}
            StatusCode::CONFLICT => {
                assert_eq!(headers["retry-after"], "1");
                conflicts += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(1 + replays + conflicts, 500);
    eprintln!("1 execution, {replays} replays, {conflicts} conflicts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_every_other_request_gets_the_replay() {
    let wait = Conflict::Wait(Duration::from_secs(10));
    let (calls, answers) = fleet_run("fleet-wait", wait).await;
    assert_eq!(calls, 1);
    let original = answers
        .iter()
        .find(|(_, h, _)| !h.contains_key("idempotent-replayed"))
        .map(|(_, _, b)| b.clone())
        .unwrap();
    let replays = answers
        .iter()
        .filter(|(s, h, b)| {
            *s == StatusCode::CREATED && h.get("idempotent-replayed").is_some() && *b == original
        })
        .count();
    assert_eq!(replays, 499);
}

/// A first execution costs two script calls (reserve, complete); a replay
/// on another instance one; then, on that instance, one plain read; on the
/// instance that stored the response, nothing: it keeps the response.
#[tokio::test]
async fn a_replay_is_one_round_trip_and_a_first_execution_two() {
    let server = support::RedisServer::start();
    let connect = || async {
        RedisStore::builder(server.url())
            .prefix("rt")
            .ping_on_connect(true)
            .connect()
            .await
            .unwrap()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer(connect().await, Conflict::Reject))
        .service(handler(calls.clone()));
    let other = ServiceBuilder::new()
        .layer(layer(connect().await, Conflict::Reject))
        .service(handler(calls.clone()));
    let url = server.url();
    let scripts = || support::command_calls(&url, |n| n.starts_with("eval"));
    let reads = || support::command_calls(&url, |n| n == "hmget");
    let commands = || support::command_calls(&url, |n| n != "info");
    // Load the scripts first (EVALSHA, NOSCRIPT, EVAL): not what is measured.
    for key in ["warm-1", "warm-1"] {
        svc.clone().oneshot(post(key)).await.unwrap();
        other.clone().oneshot(post(key)).await.unwrap();
    }
    let before = scripts().await;
    let (s, _, first) = parts(svc.clone().oneshot(post("k")).await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED);
    let after_first = scripts().await;
    assert_eq!(after_first - before, 2, "reserve + complete");
    let (_, h, _) = parts(other.clone().oneshot(post("k")).await.unwrap()).await;
    assert_eq!(h["idempotent-replayed"], "true");
    let after_other = scripts().await;
    assert_eq!(
        after_other - after_first,
        1,
        "a replay elsewhere is one call"
    );
    let reads_before = reads().await;
    let (_, h, body) = parts(other.clone().oneshot(post("k")).await.unwrap()).await;
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(body, first);
    assert_eq!(scripts().await, after_other, "known completed: no script");
    assert_eq!(reads().await - reads_before, 1, "one read");
    // The instance that stored the response answers its retries itself.
    let commands_before = commands().await;
    for _ in 0..3 {
        let (_, h, body) = parts(svc.clone().oneshot(post("k")).await.unwrap()).await;
        assert_eq!(h["idempotent-replayed"], "true");
        assert_eq!(body, first);
    }
    assert_eq!(commands().await, commands_before, "no command at all");
    // A different request under the key is still the script's to judge.
    let mut changed = post("k");
    *changed.body_mut() = Full::new(Bytes::from_static(b"another body"));
    let (s, _, _) = parts(svc.clone().oneshot(changed).await.unwrap()).await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "from the known record's read"
    );
    assert_eq!(scripts().await, after_other);
    // Retries of one record in flight together share one read.
    let reads_before = reads().await;
    let retries: Vec<_> = (0..50)
        .map(|_| tokio::spawn(other.clone().oneshot(post("k"))))
        .collect();
    for r in retries {
        let (_, h, _) = parts(r.await.unwrap().unwrap()).await;
        assert_eq!(h["idempotent-replayed"], "true");
    }
    let shared = reads().await - reads_before;
    assert!(shared <= 25, "{shared} reads for 50 retries in flight");
    assert_eq!(scripts().await, after_other);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The read of a record known completed is only a shortcut: a record gone
/// from Redis is reserved again by the script and the handler runs, and a
/// different request under the key is still a mismatch. The instance that
/// stored the response keeps replaying it until the record would have
/// expired: a completed record never changes.
#[tokio::test]
async fn a_record_known_completed_but_gone_runs_again() {
    let fleet = support::redis_fleet("known-gone", 2).await;
    let prefix = fleet[0].prefix().to_owned();
    let calls = Arc::new(AtomicUsize::new(0));
    let instances: Vec<_> = fleet
        .into_iter()
        .map(|store| {
            ServiceBuilder::new()
                .layer(layer(store, Conflict::Reject))
                .service(handler(calls.clone()))
        })
        .collect();
    let (ran, svc) = (&instances[0], &instances[1]);
    let (_, _, stored) = parts(ran.clone().oneshot(post("gone")).await.unwrap()).await;
    for _ in 0..2 {
        let (_, h, _) = parts(svc.clone().oneshot(post("gone")).await.unwrap()).await;
        assert_eq!(h["idempotent-replayed"], "true");
    }
    let mut other = post("gone");
    *other.body_mut() = Full::new(Bytes::from_static(b"another body"));
    let (s, _, _) = parts(svc.clone().oneshot(other).await.unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "a mismatch");
    let keys = record_keys(&support::redis_url(), &prefix).await;
    let client = redis::Client::open(support::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (s, h, _) = parts(svc.clone().oneshot(post("gone")).await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(h.get("idempotent-replayed").is_none());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "ran again once the record was gone"
    );
    let (_, h, kept) = parts(ran.clone().oneshot(post("gone")).await.unwrap()).await;
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(kept, stored, "the instance that stored it replays its copy");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn record_keys_are_hashed_tagged_and_expire() {
    let store = support::redis_store("keys").await;
    let prefix = store.prefix().to_owned();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer(store, Conflict::Reject))
        .service(handler(calls));
    let secret = "customer-42-secret-key";
    svc.clone().oneshot(post(secret)).await.unwrap();
    let client = redis::Client::open(support::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:idem:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    assert!(!key.contains(secret) && !key.contains("alice") && !key.contains("orders"));
    let tag = key.strip_prefix(&format!("{prefix}:idem:{{")).unwrap();
    assert_eq!(
        tag.len(),
        44,
        "a 43-character digest and the closing brace: {key}"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 23 * 3600 * 1000 && ttl <= 24 * 3600 * 1000, "{ttl}");
}

#[tokio::test]
async fn a_corrupt_record_is_a_store_failure_not_a_panic() {
    // Stored by one instance, read from Redis by another (the first keeps
    // its own copy of the response).
    let fleet = support::redis_fleet("corrupt", 2).await;
    let prefix = fleet[0].prefix().to_owned();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut instances = fleet.into_iter().map(|store| {
        ServiceBuilder::new()
            .layer(layer(store, Conflict::Reject))
            .service(handler(calls.clone()))
    });
    let (ran, svc) = (instances.next().unwrap(), instances.next().unwrap());
    ran.oneshot(post("k")).await.unwrap();
    let client = redis::Client::open(support::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:idem:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for garbage in [&b"TRLI\x01\xff\xff\xff"[..], b"", b"not a record"] {
        let _: () = redis::cmd("HSET")
            .arg(&keys[0])
            .arg("r")
            .arg(garbage)
            .query_async(&mut conn)
            .await
            .unwrap();
        let res = svc.clone().oneshot(post("k")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.extensions().get::<IdempotencyOutcome>(),
            Some(&IdempotencyOutcome::StoreUnavailable)
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "never ran twice");
}

#[tokio::test]
async fn a_store_outage_fails_closed_or_open() {
    let mut server = support::RedisServer::start();
    let url = server.url();
    let connect = || {
        RedisStore::builder(url.clone())
            .prefix("down")
            .deadline(Duration::from_millis(200))
            .connect()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let closed = ServiceBuilder::new()
        .layer(layer(connect().await.unwrap(), Conflict::Reject))
        .service(handler(calls.clone()));
    let open = ServiceBuilder::new()
        .layer(
            IdempotencyLayer::builder(connect().await.unwrap())
                .on_store_failure(FailurePolicy::Open)
                .build()
                .unwrap(),
        )
        .service(handler(calls.clone()));
    server.kill();
    let res = closed.clone().oneshot(post("k")).await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let (s, _, _) = parts(res).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let res = open.clone().oneshot(post("k")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        res.extensions().get::<IdempotencyOutcome>(),
        Some(&IdempotencyOutcome::StoreBypassed)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Back up: the key works as usual (the breaker lets a probe through in time).
    server.restart();
    let mut last = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..60 {
        last = closed.clone().oneshot(post("k2")).await.unwrap().status();
        if last == StatusCode::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, StatusCode::CREATED);
}

#[tokio::test]
async fn a_paused_redis_misses_the_deadline_and_fails_closed() {
    let server = support::RedisServer::start();
    let store = RedisStore::builder(server.url())
        .prefix("paused")
        .deadline(Duration::from_millis(100))
        .ping_on_connect(true)
        .connect()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer(store, Conflict::Reject))
        .service(handler(calls.clone()));
    support::pause_clients(&server.url(), 1000).await;
    let started = std::time::Instant::now();
    let res = svc.clone().oneshot(post("k")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "bounded by the deadline"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A handler that commits its side effect (counted in `effects`), then
/// waits for a permit of `gate` before answering.
fn gated(effects: Arc<AtomicUsize>, gate: Arc<Semaphore>) -> impl Handler {
    tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        let (effects, gate) = (effects.clone(), gate.clone());
        async move {
            let n = effects.fetch_add(1, Ordering::SeqCst) + 1;
            gate.acquire().await.unwrap().forget();
            let mut res = Response::new(Full::new(Bytes::from(format!("payment {n}"))));
            *res.status_mut() = StatusCode::CREATED;
            Ok(res)
        }
    })
}

/// The client of instance 0 hangs up while the handler runs: the handler
/// finishes, its answer is stored, and retries through every instance get
/// 409 while it runs and the replay after; the payment is made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_on_one_of_three_instances_never_pays_twice() {
    let effects = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let stores = support::redis_fleet("hang-up", 6).await;
    let wait = Conflict::Wait(Duration::from_secs(10));
    let services: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, store)| {
            let conflict = if i < 3 { Conflict::Reject } else { wait };
            ServiceBuilder::new()
                .layer(layer(store, conflict))
                .service(gated(effects.clone(), gate.clone()))
        })
        .collect();
    let client = tokio::spawn(services[0].clone().oneshot(post("pay-1")));
    while effects.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    for svc in &services[..3] {
        let res = svc.clone().oneshot(post("pay-1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT, "still running");
    }
    let waiters: Vec<_> = services[3..]
        .iter()
        .map(|svc| tokio::spawn(svc.clone().oneshot(post("pay-1"))))
        .collect();
    gate.add_permits(1);
    let mut answers = Vec::new();
    for w in waiters {
        answers.push(parts(w.await.unwrap().unwrap()).await);
    }
    for svc in &services[..3] {
        answers.push(parts(svc.clone().oneshot(post("pay-1")).await.unwrap()).await);
    }
    for (status, headers, body) in answers {
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(body, "payment 1");
    }
    assert_eq!(effects.load(Ordering::SeqCst), 1, "paid exactly once");
}

/// A layer with `wait_replicas(1, timeout)` on the server at `url`.
async fn waiting_for_a_replica(
    url: String,
    prefix: &str,
    timeout: Duration,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<Request<Full<Bytes>>, Response = Res, Error = Infallible, Future: Send> + Clone
{
    let store = RedisStore::builder(url)
        .prefix(prefix)
        .deadline(Duration::from_secs(2))
        .ping_on_connect(true)
        .connect()
        .await
        .unwrap();
    let layer = IdempotencyLayer::builder(store)
        .principal(Header::new("x-api-key"))
        .wait_replicas(1, timeout)
        .build()
        .unwrap();
    ServiceBuilder::new().layer(layer).service(handler(calls))
}

async fn record_keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}:idem:*"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// With `wait_replicas(1, ..)` the response goes out only once the replica
/// has the record: while the replica is suspended (SIGSTOP) there is no
/// answer; once it resumes the answer comes, and the replica has the record.
#[tokio::test]
async fn wait_replicas_answers_once_a_real_replica_has_the_record() {
    let master = support::RedisServer::start();
    let replica = support::RedisServer::replica_of(&master);
    let calls = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_millis(450);
    let svc = waiting_for_a_replica(master.url(), "wr", timeout, calls.clone()).await;
    replica.suspend();
    let request = tokio::spawn(svc.clone().oneshot(post("k")));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !request.is_finished(),
        "no answer while the only replica cannot acknowledge"
    );
    replica.resume();
    let res = request.await.unwrap().unwrap();
    assert_eq!(
        res.extensions().get::<IdempotencyOutcome>(),
        Some(&IdempotencyOutcome::Stored)
    );
    assert_eq!(
        record_keys(&replica.url(), "wr").await.len(),
        1,
        "on the replica"
    );
    let waits = support::command_calls(&master.url(), |n| n == "wait").await;
    assert_eq!(waits, 1, "one WAIT for the one completion");
    let (_, h, _) = parts(svc.clone().oneshot(post("k")).await.unwrap()).await;
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// With no replica to confirm it, the record is still stored and the
/// response still sent (with a warning): the handler ran, and refusing its
/// answer would not undo it.
#[tokio::test]
async fn wait_replicas_without_a_replica_still_answers_and_stores() {
    let server = support::RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_millis(20);
    let svc = waiting_for_a_replica(server.url(), "nr", timeout, calls.clone()).await;
    let res = svc.clone().oneshot(post("k")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        res.extensions().get::<IdempotencyOutcome>(),
        Some(&IdempotencyOutcome::Stored)
    );
    assert_eq!(
        support::command_calls(&server.url(), |n| n == "wait").await,
        1
    );
    let (s, h, _) = parts(svc.clone().oneshot(post("k")).await.unwrap()).await;
    assert_eq!(
        (s, &h["idempotent-replayed"]),
        (
            StatusCode::CREATED,
            &"true".parse::<http::HeaderValue>().unwrap()
        )
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
