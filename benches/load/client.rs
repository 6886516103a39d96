//! The load generator: N keep-alive HTTP/1.1 connections (hyper), each
//! sending its next request when the previous response has been read.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Makes the `seq`-th request of connection `conn` (headers other than
/// `host`, which the client adds).
pub type RequestSpec = Arc<dyn Fn(usize, u64) -> Request<Full<Bytes>> + Send + Sync>;

pub struct Run {
    pub requests: u64,
    pub elapsed: Duration,
    /// Latencies in µs, sorted.
    pub latencies: Vec<u32>,
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Responses served from the store: cache hits (`Cache-Status: ...; hit`,
    /// or `collapsed` into another request's lookup) and idempotent replays
    /// (`Idempotent-Replayed`).
    pub served: u64,
}

impl Run {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        Duration::from_micros(u64::from(self.latencies[i - 1]))
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

async fn connection(
    addr: SocketAddr,
    spec: RequestSpec,
    idx: usize,
    start_at: Instant,
    end_at: Instant,
) -> (Vec<u32>, std::collections::BTreeMap<u16, u64>, u64) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut lat = Vec::with_capacity(100_000);
    let mut statuses = std::collections::BTreeMap::new();
    let mut seq = 0u64;
    let mut served = 0;
    loop {
        let now = Instant::now();
        if now >= end_at {
            break;
        }
        let mut req = spec(idx, seq);
        seq += 1;
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("bench"));
        if sender.ready().await.is_err() {
            break;
        }
        let res = match sender.send_request(req).await {
            Ok(r) => r,
            Err(_) => break,
        };
        let status = res.status().as_u16();
        let from_store = from_store(res.headers());
        let _ = res.into_body().collect().await;
        if now >= start_at {
            lat.push(now.elapsed().as_micros().min(u32::MAX as u128) as u32);
            *statuses.entry(status).or_insert(0) += 1;
            served += u64::from(from_store);
        }
    }
    (lat, statuses, served)
}

fn from_store(h: &http::HeaderMap) -> bool {
    let hit = h
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("; hit") || v.contains("; collapsed"));
    hit || h.contains_key("idempotent-replayed")
}

/// Sends `spec(0, 0..n)` one request at a time on one connection: fills the
/// URLs and keys a scenario cycles through before it is measured.
pub async fn prime(addr: SocketAddr, spec: &RequestSpec, n: u64) {
    if n == 0 {
        return;
    }
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for seq in 0..n {
        let mut req = spec(0, seq);
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("bench"));
        if sender.ready().await.is_err() {
            return;
        }
        match sender.send_request(req).await {
            Ok(res) => {
                let _ = res.into_body().collect().await;
            }
            Err(_) => return,
        }
    }
}

/// Drives `addr` with `conns` connections for `warmup + duration`, counting
/// only what completes after the warm-up.
pub async fn drive(
    addr: SocketAddr,
    spec: &RequestSpec,
    conns: usize,
    warmup: Duration,
    duration: Duration,
) -> Run {
    let start_at = Instant::now() + warmup;
    let end_at = start_at + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|i| tokio::spawn(connection(addr, spec.clone(), i, start_at, end_at)))
        .collect();
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    let mut served = 0;
    for t in tasks {
        let (l, s, h) = t.await.expect("connection task");
        served += h;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_insert(0) += v;
        }
    }
    latencies.sort_unstable();
    Run {
        requests: latencies.len() as u64,
        elapsed: duration,
        latencies,
        statuses,
        served,
    }
}

/// The same load as [`drive`], without sockets: `conns` tasks on the
/// server's runtime call the router directly (`--inproc`), so that a profile
/// or the CPU per request shows the layers' own cost without HTTP's.
pub async fn drive_inproc(
    router: axum::Router,
    spec: &RequestSpec,
    conns: usize,
    duration: Duration,
) -> Run {
    let end_at = Instant::now() + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|idx| {
            let (router, spec) = (router.clone(), spec.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                let mut statuses = std::collections::BTreeMap::new();
                let (mut seq, mut served) = (0u64, 0u64);
                while Instant::now() < end_at {
                    let now = Instant::now();
                    let res = call(&router, &spec, idx, seq).await;
                    seq += 1;
                    served += u64::from(from_store(res.headers()));
                    *statuses.entry(res.status().as_u16()).or_insert(0) += 1;
                    let _ = res.into_body().collect().await;
                    lat.push(now.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                (lat, statuses, served)
            })
        })
        .collect();
    let mut run = Run {
        requests: 0,
        elapsed: duration,
        latencies: Vec::new(),
        statuses: std::collections::BTreeMap::new(),
        served: 0,
    };
    for t in tasks {
        let (l, s, h) = t.await.expect("in-process task");
        run.served += h;
        run.latencies.extend(l);
        for (k, v) in s {
            *run.statuses.entry(k).or_insert(0) += v;
        }
    }
    run.latencies.sort_unstable();
    run.requests = run.latencies.len() as u64;
    run
}

/// [`prime`] without sockets.
pub async fn prime_inproc(router: &axum::Router, spec: &RequestSpec, n: u64) {
    for seq in 0..n {
        let _ = call(router, spec, 0, seq).await.into_body().collect().await;
    }
}

async fn call(
    router: &axum::Router,
    spec: &RequestSpec,
    idx: usize,
    seq: u64,
) -> http::Response<axum::body::Body> {
    use tower::ServiceExt as _;
    let mut req = spec(idx, seq).map(axum::body::Body::new);
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("bench"));
    let peer: SocketAddr = ([127, 0, 0, 1], 40000 + idx as u16).into();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    match router.clone().oneshot(req).await {
        Ok(res) => res,
        Err(e) => match e {},
    }
}
