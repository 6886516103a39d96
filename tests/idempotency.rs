//! IdempotencyLayer behaviour, on every store (conformance) and on Redis alone.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_redis_layers::idempotency::{
    Conflict, HangUp, IdempotencyLayer, IdempotencyLayerBuilder, IdempotencyOutcome,
    IdempotencyStore, RequestBody,
};
use tower_redis_layers::key::Header;
use tower_redis_layers::ResponseBody;

type Res = Response<ResponseBody<Full<Bytes>>>;

/// The test handler: counts executions, and behaves as the request's
/// `x-behave` header says (not part of the fingerprint, so a retry may
/// behave differently): `ok` (201 JSON), `500`, `429`, `400`, `block`
/// (waits for a permit of the gate), `panic`, `error`, `big` (64 KiB),
/// `stall` (blocks the thread for `x-delay-ms`). `x-delay-ms` sleeps first.
#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Handler {
    fn new() -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service<B>(
        &self,
    ) -> impl Service<
        Request<RequestBody<B>>,
        Response = Response<Full<Bytes>>,
        Error = std::io::Error,
        Future: Send,
    > + Clone
           + Send
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::fmt::Debug + Send,
    {
        let h = self.clone();
        tower::service_fn(move |req: Request<RequestBody<B>>| {
            let h = h.clone();
            async move {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let behave = header("x-behave").unwrap_or_else(|| "ok".into());
                let delay: u64 = header("x-delay-ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let n = h.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if behave == "block" {
                    h.gate.acquire().await.unwrap().forget();
                }
                if behave == "stall" {
                    // The whole thread stops (a GC pause, a swapped-out VM): no renewal runs.
                    std::thread::sleep(Duration::from_millis(delay));
                } else if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let body = String::from_utf8_lossy(&body).into_owned();
                let status = match behave.as_str() {
                    "panic" => panic!("the handler panicked"),
                    "error" => return Err(std::io::Error::other("the handler failed")),
                    "500" => 500,
                    "429" => 429,
                    "400" => 400,
                    _ => 201,
                };
                let payload = if behave == "big" {
                    "x".repeat(64 * 1024)
                } else {
                    format!("{{\"order\":{n},\"echo\":\"{body}\"}}")
                };
                Ok(Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("location", format!("/orders/{n}"))
                    .header("set-cookie", "session=secret")
                    .header("x-trace", format!("t{n}"))
                    .body(Full::new(Bytes::from(payload)))
                    .unwrap())
            }
        })
    }
}

fn request(principal: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri("/api/orders")
        .header("content-type", "application/json")
        .header("x-api-key", principal);
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

fn post(key: &str) -> Request<Full<Bytes>> {
    request("alice", Some(key), "pay 10")
}

fn behave(mut req: Request<Full<Bytes>>, how: &str) -> Request<Full<Bytes>> {
    req.headers_mut().insert("x-behave", how.parse().unwrap());
    req
}

fn builder(store: impl IdempotencyStore) -> IdempotencyLayerBuilder {
    IdempotencyLayer::builder(store).principal(Header::new("x-api-key"))
}

type Svc = tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Res, BoxError>;

fn service(layer: IdempotencyLayer, h: &Handler) -> Svc {
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(h.service::<Full<Bytes>>());
    tower::util::BoxCloneSyncService::new(svc.map_err(BoxError::from))
}

async fn send(svc: &Svc, req: Request<Full<Bytes>>) -> Res {
    svc.clone().oneshot(req).await.expect("no service error")
}

async fn parts(
    res: Res,
) -> (
    StatusCode,
    http::HeaderMap,
    Bytes,
    Option<IdempotencyOutcome>,
) {
    let outcome = res.extensions().get::<IdempotencyOutcome>().copied();
    let (p, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (p.status, p.headers, bytes, outcome)
}

async fn problem(res: Res, status: StatusCode) -> serde_json::Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let (_, _, body, _) = parts(res).await;
    serde_json::from_slice(&body).expect("a problem document")
}

/// Waits until the handler has started `n` executions.
async fn started(h: &Handler, n: usize) {
    for _ in 0..500 {
        if h.calls() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the handler did not start {n} times");
}

/// Retries until the answer is not 409 (a release is a task on Redis).
async fn retry_until_not_conflict(svc: &Svc, req: impl Fn() -> Request<Full<Bytes>>) -> Res {
    for _ in 0..100 {
        let res = send(svc, req()).await;
        if res.status() != StatusCode::CONFLICT {
            return res;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the key stayed in progress");
}

conformance! {
    async fn retry_replays_the_first_response_byte_for_byte(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        let (status, headers, body, outcome) = parts(send(&svc, post("k1")).await).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(outcome, Some(IdempotencyOutcome::Stored));
        assert_eq!(headers["set-cookie"], "session=secret", "the first client gets every header");
        assert!(headers.get("idempotent-replayed").is_none());
        for _ in 0..3 {
            let (s, hs, b, o) = parts(send(&svc, post("k1")).await).await;
            assert_eq!((s, &b), (status, &body));
            assert_eq!(o, Some(IdempotencyOutcome::Replayed));
            assert_eq!(hs["idempotent-replayed"], "true");
            assert_eq!(hs["content-type"], headers["content-type"]);
            assert_eq!(hs["location"], headers["location"]);
            assert!(hs.get("set-cookie").is_none(), "cookies are never replayed");
            assert!(hs.get("x-trace").is_none(), "only allow-listed headers are replayed");
        }
        assert_eq!(h.calls(), 1);
        // The quoted structured-field form names the same record.
        let (_, _, b, o) = parts(send(&svc, post("\"k1\"")).await).await;
        assert_eq!((b, o), (body, Some(IdempotencyOutcome::Replayed)));
    }

    async fn other_methods_and_keyless_requests_pass_through(store) {
        let h = Handler::new();
        let svc = service(builder(store.clone()).build().unwrap(), &h);
        for _ in 0..2 {
            let mut get = post("k");
            *get.method_mut() = Method::GET;
            let (s, _, _, o) = parts(send(&svc, get).await).await;
            assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Skipped)));
            let (s, _, _, o) = parts(send(&svc, request("alice", None, "x")).await).await;
            assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Skipped)));
        }
        assert_eq!(h.calls(), 4);
        let required = service(builder(store).required(true).build().unwrap(), &h);
        let doc = problem(send(&required, request("alice", None, "x")).await, StatusCode::BAD_REQUEST).await;
        assert!(doc["detail"].as_str().unwrap().contains("requires an Idempotency-Key"), "{doc}");
        assert_eq!(h.calls(), 4);
    }

    async fn bad_keys_get_400_with_a_reason(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        let long = "a".repeat(256);
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty"),
            (b"\"\"", "empty"),
            (long.as_bytes(), "longer than 255"),
            (b"caf\xc3\xa9", "visible ASCII"),
            (b"ab\tc", "visible ASCII"),
            (b"\"ab\tc\"", "structured-field"),
            (b"\"a\", \"b\"", "one key, not a list"),
            (b"a,b", "not a list"),
        ];
        for (bad, why) in cases {
            let mut req = request("alice", None, "x");
            req.headers_mut().insert("idempotency-key", http::HeaderValue::from_bytes(bad).unwrap());
            let doc = problem(send(&svc, req).await, StatusCode::BAD_REQUEST).await;
            assert!(doc["detail"].as_str().unwrap().contains(why), "{bad:?}: {doc}");
        }
        let mut twice = post("a");
        twice.headers_mut().append("idempotency-key", "b".parse().unwrap());
        let doc = problem(send(&svc, twice).await, StatusCode::BAD_REQUEST).await;
        assert!(doc["detail"].as_str().unwrap().contains("more than once"), "{doc}");
        assert_eq!(h.calls(), 0);
        let max = "k".repeat(255);
        assert_eq!(send(&svc, post(&max)).await.status(), StatusCode::CREATED);
    }

    async fn a_key_reused_for_another_request_is_422(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        assert_eq!(send(&svc, post("k")).await.status(), StatusCode::CREATED);
        let other_body = request("alice", Some("k"), "pay 99");
        let doc = problem(send(&svc, other_body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(doc["detail"].as_str().unwrap().contains("different request"), "{doc}");
        let mut other_query = post("k");
        *other_query.uri_mut() = "/api/orders?amount=99".parse().unwrap();
        assert_eq!(send(&svc, other_query).await.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let mut other_type = post("k");
        other_type.headers_mut().insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(send(&svc, other_type).await.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(h.calls(), 1);
    }

    async fn a_key_on_another_path_is_a_record_of_its_own(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        assert_eq!(send(&svc, post("k")).await.status(), StatusCode::CREATED);
        let mut elsewhere = post("k");
        *elsewhere.uri_mut() = "/api/refunds".parse().unwrap();
        let (s, _, _, o) = parts(send(&svc, elsewhere).await).await;
        assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Stored)));
        assert_eq!(h.calls(), 2);
    }

    async fn principals_never_share_records(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        let (_, _, alice, _) = parts(send(&svc, request("alice", Some("same"), "x")).await).await;
        let (_, _, bob, o) = parts(send(&svc, request("bob", Some("same"), "x")).await).await;
        assert_eq!(o, Some(IdempotencyOutcome::Stored), "bob gets his own execution");
        assert_ne!(alice, bob);
        assert_eq!(h.calls(), 2);
        let (_, _, again, _) = parts(send(&svc, request("bob", Some("same"), "x")).await).await;
        assert_eq!(again, bob);
        let (_, _, again, _) = parts(send(&svc, request("alice", Some("same"), "x")).await).await;
        assert_eq!(again, alice);
    }

    async fn a_key_in_progress_is_409_with_retry_after(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        let first = tokio::spawn({
            let svc = svc.clone();
            async move { send(&svc, behave(post("k"), "block")).await }
        });
        started(&h, 1).await;
        let res = send(&svc, post("k")).await;
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.extensions().get::<IdempotencyOutcome>(), Some(&IdempotencyOutcome::InProgress));
        problem(res, StatusCode::CONFLICT).await;
        h.gate.add_permits(1);
        let (s, _, body, _) = parts(first.await.unwrap()).await;
        assert_eq!(s, StatusCode::CREATED);
        let (_, hs, replay, _) = parts(send(&svc, post("k")).await).await;
        assert_eq!((replay, &hs["idempotent-replayed"]), (body, &"true".parse::<http::HeaderValue>().unwrap()));
        assert_eq!(h.calls(), 1);
    }

    async fn waiting_replays_the_first_outcome(store) {
        let h = Handler::new();
        let layer = builder(store).on_conflict(Conflict::Wait(Duration::from_secs(5))).build().unwrap();
        let svc = service(layer, &h);
        let first = tokio::spawn({
            let svc = svc.clone();
            async move { send(&svc, behave(post("k"), "block")).await }
        });
        started(&h, 1).await;
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { send(&svc, post("k")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.gate.add_permits(1);
        let (_, _, body, _) = parts(first.await.unwrap()).await;
        for w in waiters {
            let (s, hs, b, o) = parts(w.await.unwrap()).await;
            assert_eq!((s, &b, o), (StatusCode::CREATED, &body, Some(IdempotencyOutcome::Replayed)));
            assert_eq!(hs["idempotent-replayed"], "true");
        }
        assert_eq!(h.calls(), 1);
    }

    async fn waiting_is_bounded(store) {
        let h = Handler::new();
        let layer = builder(store).on_conflict(Conflict::Wait(Duration::from_millis(150))).build().unwrap();
        let svc = service(layer, &h);
        let _first = tokio::spawn({
            let svc = svc.clone();
            async move { send(&svc, behave(post("k"), "block")).await }
        });
        started(&h, 1).await;
        let t = std::time::Instant::now();
        assert_eq!(send(&svc, post("k")).await.status(), StatusCode::CONFLICT);
        assert!(t.elapsed() >= Duration::from_millis(140), "{:?}", t.elapsed());
        h.gate.add_permits(1);
    }

    async fn failures_and_retryable_statuses_release_the_key(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        for (how, status) in [("500", 500), ("429", 429)] {
            let key = format!("k-{how}");
            let (s, _, _, o) = parts(send(&svc, behave(post(&key), how)).await).await;
            assert_eq!((s.as_u16(), o), (status, Some(IdempotencyOutcome::NotStored)));
            let (s, _, _, o) = parts(send(&svc, post(&key)).await).await;
            assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Stored)), "{how}: the retry ran");
        }
        // A handler error is a service error, and releases the key too.
        assert!(svc.clone().oneshot(behave(post("k-err"), "error")).await.is_err());
        assert_eq!(send(&svc, post("k-err")).await.status(), StatusCode::CREATED);
        // A 400 is the answer to this request: stored and replayed.
        assert_eq!(send(&svc, behave(post("k-400"), "400")).await.status(), StatusCode::BAD_REQUEST);
        let (s, _, _, o) = parts(send(&svc, post("k-400")).await).await;
        assert_eq!((s, o), (StatusCode::BAD_REQUEST, Some(IdempotencyOutcome::Replayed)));
        assert_eq!(h.calls(), 7);
    }

    async fn a_hang_up_never_cancels_a_committed_write(store) {
        let h = Handler::new();
        let svc = service(builder(store.clone()).build().unwrap(), &h);
        let wait = Conflict::Wait(Duration::from_secs(10));
        let waiting = service(builder(store).on_conflict(wait).build().unwrap(), &h);
        // The handler commits its side effect (counted), then awaits the gate.
        let client = tokio::spawn(send_owned(svc.clone(), behave(post("k"), "block")));
        started(&h, 1).await;
        client.abort();
        assert!(client.await.unwrap_err().is_cancelled(), "the client went away");
        // The handler runs on: a retry meets the key in progress, and one
        // that waits gets the replay once the handler ends.
        let res = send(&svc, post("k")).await;
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let waiter = tokio::spawn(send_owned(waiting.clone(), post("k")));
        h.gate.add_permits(1);
        let (s, hs, body, o) = parts(waiter.await.unwrap()).await;
        assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Replayed)));
        assert_eq!(hs["idempotent-replayed"], "true");
        assert!(body.starts_with(b"{\"order\":1,"), "the hung-up run's answer: {body:?}");
        let (_, _, again, o) = parts(send(&svc, post("k")).await).await;
        assert_eq!((again, o), (body, Some(IdempotencyOutcome::Replayed)));
        assert_eq!(h.calls(), 1, "the side effect ran exactly once");
    }

    async fn with_hang_up_release_a_dropped_request_releases_its_key_at_once(store) {
        let h = Handler::new();
        let svc = service(builder(store).on_hang_up(HangUp::Release).build().unwrap(), &h);
        let task = tokio::spawn({
            let svc = svc.clone();
            async move { send(&svc, behave(post("k"), "block")).await }
        });
        started(&h, 1).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let (s, _, _, o) = parts(retry_until_not_conflict(&svc, || post("k")).await).await;
        assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Stored)));
        assert_eq!(h.calls(), 2, "the cancelled run is run again");
    }

    async fn a_panicking_handler_releases_its_key(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        let task = tokio::spawn({
            let svc = svc.clone();
            async move { send(&svc, behave(post("k"), "panic")).await }
        });
        assert!(task.await.unwrap_err().is_panic());
        let (s, _, _, _) = parts(retry_until_not_conflict(&svc, || post("k")).await).await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(h.calls(), 2);
    }

    async fn an_abandoned_lease_lapses_then_a_retry_runs(store) {
        let h = Handler::new();
        let lease = Duration::from_millis(500);
        // Inline execution (`Release`), so that a future never polled again
        // is a process that died mid-handler: nothing renews its lease.
        let layer = builder(store).lease(lease).on_hang_up(HangUp::Release).build().unwrap();
        let svc = service(layer, &h);
        let mut fut = Box::pin(send_owned(svc.clone(), behave(post("k"), "block")));
        tokio::select! {
            _ = &mut fut => panic!("the blocked handler finished"),
            _ = started(&h, 1) => {}
        }
        std::mem::forget(fut);
        assert_eq!(send(&svc, post("k")).await.status(), StatusCode::CONFLICT);
        tokio::time::sleep(lease + Duration::from_millis(150)).await;
        let (s, _, _, o) = parts(send(&svc, post("k")).await).await;
        assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Stored)));
        assert_eq!(h.calls(), 2);
    }

    async fn a_slow_handler_keeps_its_lease(store) {
        let h = Handler::new();
        let svc = service(builder(store).lease(Duration::from_millis(600)).build().unwrap(), &h);
        let mut slow = post("k");
        slow.headers_mut().insert("x-delay-ms", "1500".parse().unwrap());
        let first = tokio::spawn(send_owned(svc.clone(), slow));
        // Well past the lease: still held, renewed every 200 ms.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(send(&svc, post("k")).await.status(), StatusCode::CONFLICT);
        let (s, _, body, o) = parts(first.await.unwrap()).await;
        assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Stored)));
        let (_, _, replay, o) = parts(send(&svc, post("k")).await).await;
        assert_eq!((replay, o), (body, Some(IdempotencyOutcome::Replayed)));
        assert_eq!(h.calls(), 1);
    }

    async fn a_body_over_the_cap_is_413(store) {
        let h = Handler::new();
        let svc = service(builder(store).max_body(16).build().unwrap(), &h);
        let doc = problem(send(&svc, request("alice", Some("k"), &"x".repeat(17))).await, StatusCode::PAYLOAD_TOO_LARGE).await;
        assert!(doc["detail"].as_str().unwrap().contains("larger than 16 bytes"), "{doc}");
        assert_eq!(doc["max_body"], 16);
        assert_eq!(send(&svc, request("alice", Some("k"), &"x".repeat(16))).await.status(), StatusCode::CREATED);
        assert_eq!(h.calls(), 1);
    }

    async fn a_response_over_the_storage_cap_is_sent_not_stored(store) {
        let h = Handler::new();
        let svc = service(builder(store).max_stored_body(1024).build().unwrap(), &h);
        for _ in 0..2 {
            let (s, _, body, o) = parts(send(&svc, behave(post("k"), "big")).await).await;
            assert_eq!((s, body.len(), o), (StatusCode::CREATED, 64 * 1024, Some(IdempotencyOutcome::NotStored)));
        }
        assert_eq!(h.calls(), 2, "not stored: the retry ran");
    }

    async fn a_waiter_runs_itself_when_the_first_request_fails(store) {
        let h = Handler::new();
        let layer = builder(store).on_conflict(Conflict::Wait(Duration::from_secs(5))).build().unwrap();
        let svc = service(layer, &h);
        let mut failing = behave(post("k"), "500");
        failing.headers_mut().insert("x-delay-ms", "100".parse().unwrap());
        let first = tokio::spawn(send_owned(svc.clone(), failing));
        started(&h, 1).await;
        let (s, _, _, o) = parts(send(&svc, post("k")).await).await;
        assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Stored)));
        assert_eq!(first.await.unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(h.calls(), 2);
    }

    async fn streamed_bodies_are_read_up_to_the_cap(store) {
        let h = Handler::new();
        let layer = builder(store).max_body(10).build().unwrap();
        let svc = ServiceBuilder::new().layer(layer).service(h.service::<Chunks>());
        let req = |key: &str, chunks: Vec<Result<&'static str, ()>>| {
            let body = Chunks(
                chunks
                    .into_iter()
                    .map(|c| c.map(|s| Bytes::from_static(s.as_bytes())).map_err(|_| std::io::Error::other("reset")))
                    .collect(),
            );
            Request::post("/api/orders")
                .header("x-api-key", "alice")
                .header("idempotency-key", key)
                .body(body)
                .unwrap()
        };
        // No length announced: the layer reads it and stops past the cap.
        let res = svc.clone().oneshot(req("a", vec![Ok("123456"), Ok("78901"), Ok("never read")])).await.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let res = svc.clone().oneshot(req("b", vec![Ok("123"), Err(())])).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(h.calls(), 0);
        let res = svc.clone().oneshot(req("c", vec![Ok("12345"), Ok("67890")])).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"\"echo\":\"1234567890\"}"), "the handler got the whole body: {body:?}");
        let (s, _, o) = parts_of(svc.clone().oneshot(req("c", vec![Ok("1234567890")])).await.unwrap()).await;
        assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::Replayed)), "chunking is not fingerprinted");
    }

    async fn the_default_principal_is_the_authorization_header(store) {
        let h = Handler::new();
        let svc = service(IdempotencyLayer::builder(store).build().unwrap(), &h);
        let as_user = |auth: Option<&str>| {
            let mut r = post("k");
            r.headers_mut().remove("x-api-key");
            if let Some(a) = auth {
                r.headers_mut().insert("authorization", a.parse().unwrap());
            }
            r
        };
        for auth in [Some("Bearer one"), Some("Bearer two"), None] {
            let (_, _, _, o) = parts(send(&svc, as_user(auth)).await).await;
            assert_eq!(o, Some(IdempotencyOutcome::Stored), "{auth:?}");
        }
        for auth in [Some("Bearer one"), Some("Bearer two"), None] {
            let (_, _, _, o) = parts(send(&svc, as_user(auth)).await).await;
            assert_eq!(o, Some(IdempotencyOutcome::Replayed), "{auth:?}");
        }
        assert_eq!(h.calls(), 3);
    }

    async fn a_holder_whose_lease_lapsed_cannot_store(store) {
        let h = Handler::new();
        let svc = service(builder(store).lease(Duration::from_millis(100)).build().unwrap(), &h);
        let mut stalled = behave(post("k"), "stall");
        stalled.headers_mut().insert("x-delay-ms", "300".parse().unwrap());
        let (s, _, _, o) = parts(send(&svc, stalled).await).await;
        assert_eq!((s, o), (StatusCode::CREATED, Some(IdempotencyOutcome::NotStored)), "fenced off");
        let (_, _, _, o) = parts(send(&svc, post("k")).await).await;
        assert_eq!(o, Some(IdempotencyOutcome::Stored), "the retry ran");
        assert_eq!(h.calls(), 2);
    }

    async fn concurrent_requests_with_one_key_run_once(store) {
        let h = Handler::new();
        let svc = service(builder(store).build().unwrap(), &h);
        let slow = || {
            let mut r = post("k");
            r.headers_mut().insert("x-delay-ms", "30".parse().unwrap());
            r
        };
        let tasks: Vec<_> = (0..100).map(|_| tokio::spawn(send_owned(svc.clone(), slow()))).collect();
        let mut conflicts = 0;
        for t in tasks {
            match t.await.unwrap().status() {
                StatusCode::CREATED => {}
                StatusCode::CONFLICT => conflicts += 1,
                other => panic!("{other}"),
            }
        }
        assert_eq!(h.calls(), 1);
        assert!(conflicts >= 1);
    }
}

/// A streamed body with no announced length.
struct Chunks(std::collections::VecDeque<Result<Bytes, std::io::Error>>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|r| r.map(http_body::Frame::data)),
        )
    }
}

async fn parts_of<B>(
    res: Response<ResponseBody<B>>,
) -> (StatusCode, Bytes, Option<IdempotencyOutcome>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let outcome = res.extensions().get::<IdempotencyOutcome>().copied();
    let (p, body) = res.into_parts();
    (p.status, body.collect().await.unwrap().to_bytes(), outcome)
}

/// A stalls past its lease; B takes the key over; A's completion is fenced
/// off and B's response is the one replayed.
async fn a_lapsed_holder_cannot_overwrite_the_next_one(store: impl IdempotencyStore) {
    let h = Handler::new();
    let svc = service(
        builder(store)
            .lease(Duration::from_millis(100))
            .build()
            .unwrap(),
        &h,
    );
    let mut stalled = behave(post("k"), "stall");
    stalled
        .headers_mut()
        .insert("x-delay-ms", "600".parse().unwrap());
    let a = tokio::spawn(send_owned(svc.clone(), stalled));
    started(&h, 1).await;
    // A's lease lapses while its thread is stalled; B reserves and blocks.
    let b = retry_until_not_conflict_spawned(&svc, &h).await;
    let (_, _, _, o) = parts(a.await.unwrap()).await;
    assert_eq!(o, Some(IdempotencyOutcome::NotStored), "A was fenced off");
    h.gate.add_permits(1);
    let (s, _, b_body, o) = parts(b.await.unwrap()).await;
    assert_eq!(
        (s, o),
        (StatusCode::CREATED, Some(IdempotencyOutcome::Stored))
    );
    let (_, _, replay, o) = parts(send(&svc, post("k")).await).await;
    assert_eq!((replay, o), (b_body, Some(IdempotencyOutcome::Replayed)));
    assert_eq!(h.calls(), 2);
}

/// Sends B (blocking in the handler) once the key is free, as a task.
async fn retry_until_not_conflict_spawned(svc: &Svc, h: &Handler) -> tokio::task::JoinHandle<Res> {
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let task = tokio::spawn(send_owned(svc.clone(), behave(post("k"), "block")));
        for _ in 0..1000 {
            if h.calls() >= 2 || task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !task.is_finished() {
            return task;
        }
        assert_eq!(task.await.unwrap().status(), StatusCode::CONFLICT);
    }
    panic!("the lapsed key was never free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_fences_off_a_lapsed_holder() {
    a_lapsed_holder_cannot_overwrite_the_next_one(tower_redis_layers::MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fences_off_a_lapsed_holder() {
    a_lapsed_holder_cannot_overwrite_the_next_one(support::redis_store("fence").await).await;
}

async fn send_owned(svc: Svc, req: Request<Full<Bytes>>) -> Res {
    send(&svc, req).await
}

#[tokio::test(start_paused = true)]
async fn memory_records_expire_after_their_ttl() {
    let h = Handler::new();
    let layer = builder(tower_redis_layers::MemoryStore::new())
        .record_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let svc = service(layer, &h);
    assert_eq!(send(&svc, post("k")).await.status(), StatusCode::CREATED);
    tokio::time::advance(Duration::from_secs(3599)).await;
    let (_, _, _, o) = parts(send(&svc, post("k")).await).await;
    assert_eq!(o, Some(IdempotencyOutcome::Replayed));
    tokio::time::advance(Duration::from_secs(2)).await;
    let (_, _, _, o) = parts(send(&svc, post("k")).await).await;
    assert_eq!(o, Some(IdempotencyOutcome::Stored));
    assert_eq!(h.calls(), 2);
}

#[test]
fn futures_and_services_are_send() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let h = Handler::new();
    let layer = builder(tower_redis_layers::MemoryStore::new())
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(h.service::<Full<Bytes>>());
    assert_send(&svc);
    let fut = svc.call(post("k"));
    assert_send(&fut);
}

#[tokio::test]
async fn works_under_an_axum_router() {
    use axum::routing::post as route_post;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new()
        .route(
            "/api/orders",
            route_post(move |body: String| {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move { (StatusCode::CREATED, format!("order {n}: {body}")) }
            }),
        )
        .layer(
            IdempotencyLayer::builder(tower_redis_layers::MemoryStore::new())
                .build()
                .unwrap(),
        );
    let req = || {
        Request::post("/api/orders")
            .header("idempotency-key", "\"abc\"")
            .body(axum::body::Body::from("pay"))
            .unwrap()
    };
    for _ in 0..2 {
        let res = app.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "order 1: pay");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A response body made of given frames (data, trailers or errors).
struct Frames(std::collections::VecDeque<Result<http_body::Frame<Bytes>, std::io::Error>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.get_mut().0.pop_front())
    }
}

#[tokio::test]
async fn responses_with_trailers_or_failing_bodies_are_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        c.fetch_add(1, Ordering::SeqCst);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> =
            match req.headers().get("x-behave").map(|v| v.as_bytes()) {
                Some(b"trailers") => vec![
                    Ok(http_body::Frame::data(Bytes::from_static(b"data"))),
                    Ok(http_body::Frame::trailers(trailers)),
                ],
                _ => vec![
                    Ok(http_body::Frame::data(Bytes::from_static(b"da"))),
                    Err(std::io::Error::other("reset")),
                ],
            };
        async move { Ok::<_, std::io::Error>(Response::new(Frames(frames.into()))) }
    });
    let layer = builder(tower_redis_layers::MemoryStore::new())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(behave(post("t"), "trailers"))
            .await
            .unwrap();
        let outcome = res.extensions().get::<IdempotencyOutcome>().copied();
        assert_eq!(outcome, Some(IdempotencyOutcome::NotStored));
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "data");
    }
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(behave(post("e"), "fail"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4, "neither was stored");
}

#[tokio::test]
async fn grpc_clients_get_a_grpc_status_for_every_rejection() {
    let h = Handler::new();
    let layer = builder(tower_redis_layers::MemoryStore::new())
        .max_body(64)
        .build()
        .unwrap();
    let svc = service(layer, &h);
    let grpc = |mut req: Request<Full<Bytes>>| {
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        req
    };
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, grpc(behave(post("k"), "block"))).await }
    });
    started(&h, 1).await;
    let mut bad_key = grpc(post("k"));
    bad_key
        .headers_mut()
        .insert("idempotency-key", "a b".parse().unwrap());
    let mut other_body = grpc(request("alice", Some("k"), "pay 99"));
    other_body
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    for (req, code) in [
        (bad_key, "3"),
        (grpc(request("alice", Some("big"), &"x".repeat(65))), "3"),
        (grpc(post("k")), "10"),
        (other_body, "9"),
    ] {
        let res = send(&svc, req).await;
        assert_eq!(res.status(), StatusCode::OK, "a trailers-only gRPC answer");
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], code);
        assert!(res.headers().contains_key("grpc-message"));
    }
    h.gate.add_permits(1);
    first.await.unwrap();
    assert_eq!(h.calls(), 1);
}
