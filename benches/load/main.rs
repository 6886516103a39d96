//! The load benchmark: every layer against the same handler without it, in
//! one run, over real loopback sockets.
//!
//! ```text
//! cargo bench --bench load                       # 32 connections, 5 s per scenario
//! cargo bench --bench load -- --conns 64 --secs 10 --filter rate
//! cargo bench --bench load -- --smoke            # a quick run that only proves it works
//! ```
//!
//! It starts its own `redis-server` on a free port, serves each scenario from
//! a server runtime of its own (`--server-threads`, default 1), drives it with
//! an in-process hyper client on another thread, and reports requests/s,
//! latency percentiles, Redis commands per request (INFO commandstats), and
//! CPU per request of the server threads (/proc) and of Redis (INFO cpu). The
//! table is printed and written to `target/load-report.md`.

#[path = "../../tests/support/server.rs"]
#[allow(dead_code)]
mod server;

mod client;
mod cpu;
mod scenarios;

use std::net::SocketAddr;
use std::time::Duration;

use client::{drive, Run};
use scenarios::Scenario;

struct Args {
    conns: usize,
    secs: f64,
    warmup: f64,
    server_threads: usize,
    filter: Option<String>,
    /// Skip the bare baseline (for profiling one scenario).
    only: bool,
}

fn args() -> Args {
    let mut a = Args {
        conns: 32,
        secs: 5.0,
        warmup: 1.0,
        server_threads: 1,
        filter: None,
        only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--conns" => a.conns = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.conns),
            "--secs" => a.secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.secs),
            "--server-threads" => {
                a.server_threads = it.next().and_then(|v| v.parse().ok()).unwrap_or(1)
            }
            "--filter" => a.filter = it.next(),
            "--only" => {
                a.filter = it.next();
                a.only = true;
            }
            "--smoke" => {
                a.secs = 0.3;
                a.warmup = 0.1;
                a.conns = 4;
            }
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

struct Row {
    name: String,
    run: Run,
    scripts: u64,
    commands: u64,
    server_cpu: Duration,
    redis_cpu: Duration,
}

fn main() {
    let args = args();
    let redis = server::RedisServer::start();
    let threads = cpu::Threads::default();
    let t = threads.clone();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .on_thread_start(move || t.register())
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let redis_url = redis.url();
    let scenarios = server_rt.block_on(scenarios::all(&redis_url));
    let mut admin = client_rt.block_on(async {
        redis::Client::open(redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });

    let mut rows: Vec<Row> = Vec::new();
    for Scenario { name, router, spec } in scenarios {
        if let Some(f) = &args.filter {
            if (name != "bare" || args.only) && !name.contains(f.as_str()) {
                continue;
            }
        }
        let listener = server_rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = server_rt.spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
        });
        let warmup = Duration::from_secs_f64(args.warmup);
        let secs = Duration::from_secs_f64(args.secs);
        let row = client_rt.block_on(async {
            // Warm up (scripts loaded, connections made), then measure.
            drive(addr, &spec, args.conns, Duration::ZERO, warmup).await;
            let r0 = cpu::redis_counters(&mut admin).await;
            let s_cpu0 = threads.cpu();
            let run = drive(addr, &spec, args.conns, Duration::ZERO, secs).await;
            let s_cpu1 = threads.cpu();
            let r1 = cpu::redis_counters(&mut admin).await;
            Row {
                name: name.to_owned(),
                run,
                scripts: r1.scripts.saturating_sub(r0.scripts),
                commands: r1.commands.saturating_sub(r0.commands),
                server_cpu: s_cpu1.saturating_sub(s_cpu0),
                redis_cpu: r1.cpu.saturating_sub(r0.cpu),
            }
        });
        let _ = stop.send(());
        let _ = server_rt.block_on(handle);
        eprintln!("{:<34} {:>9.0} req/s", row.name, row.run.rps());
        rows.push(row);
    }
    let report = report(&args, &rows);
    println!("\n{report}");
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/load-report.md", &report);
    drop(redis);
}

fn per_req(count: u64, n: u64) -> String {
    if n == 0 {
        return "-".into();
    }
    format!("{:.2}", count as f64 / n as f64)
}

fn us_per_req(d: Duration, n: u64) -> String {
    if n == 0 {
        return "-".into();
    }
    format!("{:.1}", d.as_secs_f64() * 1e6 / n as f64)
}

fn report(args: &Args, rows: &[Row]) -> String {
    let bare = rows.iter().find(|r| r.name == "bare").map(|r| r.run.rps());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "{} connections, {} s per scenario, {} server thread(s), {} cores; `cargo bench --bench load -- --conns {} --secs {}`\n\n",
        args.conns, args.secs, args.server_threads, cores, args.conns, args.secs
    );
    out.push_str("| scenario | req/s | × bare | p50 | p99 | p99.9 | Redis scripts/req | Redis cmds/req (incl. in scripts) | server CPU µs/req | Redis CPU µs/req | statuses |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let n = r.run.requests;
        let ratio = bare.map_or("-".into(), |b| format!("{:.2}", r.run.rps() / b));
        let statuses: Vec<String> = r
            .run
            .statuses
            .iter()
            .map(|(s, c)| format!("{s}×{c}"))
            .collect();
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {} | {} | {} | {} | {} |\n",
            r.name,
            r.run.rps(),
            ratio,
            r.run.percentile(0.50).as_secs_f64() * 1e6,
            r.run.percentile(0.99).as_secs_f64() * 1e6,
            r.run.percentile(0.999).as_secs_f64() * 1e6,
            per_req(r.scripts, n),
            per_req(r.commands, n),
            us_per_req(r.server_cpu, n),
            us_per_req(r.redis_cpu, n),
            statuses.join(" ")
        ));
    }
    out
}
