//! The load benchmark: every layer against the same handler without it, in
//! one run, over real loopback sockets.
//!
//! ```text
//! cargo bench --bench load                       # 32 connections, 5 s per scenario, 3 rounds
//! cargo bench --bench load -- --conns 64 --secs 10 --filter rate
//! cargo bench --bench load -- --smoke            # a quick run that only proves it works
//! cargo bench --bench load -- --pin              # client on core 0, server + Redis on core 1
//! cargo bench --bench load -- --inproc           # the router called in process: the layers' own cost
//! cargo bench --bench load -- --only 'cache, redis, miss$'   # one scenario (`$`: exactly), no bare
//! ```
//!
//! It starts its own `redis-server` on a free port, serves each scenario from
//! a server runtime of its own (`--server-threads`, default 1), drives it with
//! an in-process hyper client on another thread, and reports requests/s
//! (and its ratio to bare, against the scenario's target), latency
//! percentiles, Redis round trips (socket reads Redis processed), script
//! calls and commands per request (INFO stats, commandstats), and CPU per
//! request of the server threads (/proc) and of Redis (INFO cpu). Redis is
//! flushed before each scenario, which then fills what it cycles through
//! (URLs, keys): every scenario runs against its own keys only, whatever ran
//! before it. The table is printed and written to `target/load-report.md`.

#[path = "../../tests/support/server.rs"]
#[allow(dead_code)]
mod server;

mod client;
mod contention;
mod cpu;
mod scenarios;

use std::net::SocketAddr;
use std::time::Duration;

use client::{drive, prime, Run};
use scenarios::Scenario;

struct Args {
    conns: usize,
    secs: f64,
    warmup: f64,
    server_threads: usize,
    filter: Option<String>,
    rounds: usize,
    /// Skip the bare baseline (for profiling one scenario).
    only: bool,
    /// Call the router in process instead of over sockets.
    inproc: bool,
    /// The load generator on core 0, the server and Redis on core 1.
    pin: bool,
    /// The machine's cores (read before `--pin` narrows this thread's).
    cores: usize,
}

fn args() -> Args {
    let mut a = Args {
        conns: 32,
        secs: 5.0,
        warmup: 1.0,
        server_threads: 1,
        filter: None,
        rounds: 3,
        only: false,
        inproc: false,
        pin: false,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
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
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(3).max(1),
            "--only" => {
                a.filter = it.next();
                a.only = true;
            }
            "--inproc" => a.inproc = true,
            "--pin" => a.pin = true,
            "--smoke" => {
                a.rounds = 1;
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
    target: Option<f64>,
    run: Run,
    reads: u64,
    scripts: u64,
    commands: u64,
    server_cpu: Duration,
    redis_cpu: Duration,
    script_time: Duration,
}

impl Row {
    /// A scenario's run and what Redis and the server's threads did
    /// between the counters read before it and after it.
    fn of(
        sc: &Scenario,
        run: Run,
        (r0, r1): (cpu::RedisCounters, cpu::RedisCounters),
        (s_cpu0, s_cpu1): (Duration, Duration),
    ) -> Self {
        Self {
            name: sc.name.clone(),
            target: sc.target,
            run,
            // The second INFO's own read is counted; leave it out.
            reads: r1.reads.saturating_sub(r0.reads).saturating_sub(1),
            scripts: r1.scripts.saturating_sub(r0.scripts),
            commands: r1.commands.saturating_sub(r0.commands),
            server_cpu: s_cpu1.saturating_sub(s_cpu0),
            redis_cpu: r1.cpu.saturating_sub(r0.cpu),
            script_time: r1.script_time.saturating_sub(r0.script_time),
        }
    }
}

fn main() {
    let args = args();
    let redis = server::RedisServer::start();
    let threads = cpu::Threads::default();
    let t = threads.clone();
    let pin = args.pin;
    if pin {
        // The load generator (this thread's runtime) alone on core 0; the
        // server's threads and Redis share core 1.
        cpu::Threads::pin_self(0);
        if let Some(pid) = redis.pid() {
            cpu::pin(&pid.to_string(), 1, true);
        }
    }
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .on_thread_start(move || {
            if pin {
                cpu::Threads::pin_self(1);
            }
            t.register()
        })
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

    let selected: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|s| match &args.filter {
            // A filter ending in `$` names one scenario exactly.
            Some(f) => {
                (s.name == "bare" && !args.only)
                    || f.strip_suffix('$')
                        .map_or(s.name.contains(f.as_str()), |f| s.name == f)
            }
            None => true,
        })
        .collect();
    // Rounds interleave the scenarios, so that drift on a shared machine hits
    // them alike; each row is the round with the median req/s.
    let mut runs: Vec<Vec<Row>> = selected.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, sc) in selected.iter().enumerate() {
            let spec = &sc.spec;
            if args.inproc {
                let row = inproc_row(&args, sc, &server_rt, &client_rt, &mut admin, &threads);
                eprintln!(
                    "round {round}: {:<42} {:>9.0} req/s (in process)",
                    row.name,
                    row.run.rps()
                );
                runs[i].push(row);
                continue;
            }
            let listener = server_rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            // Made in the server's runtime: a layer may start tasks there.
            let router = {
                let _rt = server_rt.enter();
                sc.router()
            };
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
                // Fill, warm up (scripts loaded, connections made), then measure.
                cpu::flush(&mut admin).await;
                match sc.primer() {
                    Some(other) => client::prime_inproc(&other, spec, sc.warm).await,
                    None => prime(addr, spec, sc.warm).await,
                }
                drive(addr, spec, args.conns, Duration::ZERO, warmup).await;
                let r0 = cpu::redis_counters(&mut admin).await;
                let s_cpu0 = threads.cpu();
                let run = drive(addr, spec, args.conns, Duration::ZERO, secs).await;
                let s_cpu1 = threads.cpu();
                let r1 = cpu::redis_counters(&mut admin).await;
                Row::of(sc, run, (r0, r1), (s_cpu0, s_cpu1))
            });
            let _ = stop.send(());
            let _ = server_rt.block_on(handle);
            eprintln!(
                "round {round}: {:<42} {:>9.0} req/s",
                row.name,
                row.run.rps()
            );
            runs[i].push(row);
        }
    }
    let rows: Vec<Row> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.run.rps().total_cmp(&b.run.rps()));
            r.swap_remove(r.len() / 2)
        })
        .collect();
    let mut report = report(&args, &rows);
    if args
        .filter
        .as_ref()
        .is_none_or(|f| "leases contention".contains(f.as_str()))
    {
        let rows = server_rt.block_on(contention::all(&redis_url));
        report.push_str(&contention::report(&rows));
    }
    println!("\n{report}");
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/load-report.md", &report);
    let _ = std::fs::write("target/load-report.svg", chart(&rows));
    drop(redis);
}

/// One in-process run of `sc` (`--inproc`): the same measurements, with the
/// load driven from the server's runtime and no sockets.
fn inproc_row(
    args: &Args,
    sc: &Scenario,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    admin: &mut redis::aio::MultiplexedConnection,
    threads: &cpu::Threads,
) -> Row {
    let warmup = Duration::from_secs_f64(args.warmup);
    let secs = Duration::from_secs_f64(args.secs);
    client_rt.block_on(cpu::flush(admin));
    let router = {
        let _rt = server_rt.enter();
        sc.router()
    };
    server_rt.block_on(async {
        let primer = sc.primer().unwrap_or_else(|| router.clone());
        client::prime_inproc(&primer, &sc.spec, sc.warm).await;
        client::drive_inproc(router.clone(), &sc.spec, args.conns, warmup).await;
    });
    let r0 = client_rt.block_on(cpu::redis_counters(admin));
    let s_cpu0 = threads.cpu();
    let run = server_rt.block_on(client::drive_inproc(router, &sc.spec, args.conns, secs));
    let s_cpu1 = threads.cpu();
    let r1 = client_rt.block_on(cpu::redis_counters(admin));
    Row::of(sc, run, (r0, r1), (s_cpu0, s_cpu1))
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
    let cores = args.cores;
    let mode = match (args.inproc, args.pin) {
        (true, _) => ", in process (no sockets)",
        (false, true) => ", load generator pinned to core 0, server and Redis to core 1",
        (false, false) => "",
    };
    let flags = format!(
        "{}{}",
        if args.inproc { " --inproc" } else { "" },
        if args.pin { " --pin" } else { "" }
    );
    let mut out = format!(
        "{} connections, {} s per scenario, median of {} interleaved rounds, {} server thread(s), {} cores{mode}; `cargo bench --bench load -- --conns {} --secs {} --rounds {}{flags}`\n\n",
        args.conns, args.secs, args.rounds, args.server_threads, cores, args.conns, args.secs, args.rounds
    );
    out.push_str("| scenario | req/s | × bare | target | p50 | p99 | Redis round trips/req | scripts/req | cmds/req (incl. in scripts) | server CPU µs/req | Redis CPU µs/req | of which in scripts | hit or replay | statuses |\n");
    out.push_str("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let n = r.run.requests;
        let ratio = bare.map(|b| r.run.rps() / b);
        let target = match (r.target, ratio) {
            (Some(t), Some(x)) if x >= t => format!("≥ {t:.2} met"),
            (Some(t), Some(_)) => format!("≥ {t:.2} **not met**"),
            _ => String::new(),
        };
        let statuses: Vec<String> = r
            .run
            .statuses
            .iter()
            .map(|(s, c)| format!("{s}×{c}"))
            .collect();
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.0} µs | {:.0} µs | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.run.rps(),
            ratio.map_or("-".into(), |x| format!("{x:.2}")),
            target,
            r.run.percentile(0.50).as_secs_f64() * 1e6,
            r.run.percentile(0.99).as_secs_f64() * 1e6,
            per_req(r.reads, n),
            per_req(r.scripts, n),
            per_req(r.commands, n),
            us_per_req(r.server_cpu, n),
            us_per_req(r.redis_cpu, n),
            us_per_req(r.script_time, n),
            percent(r.run.served, n),
            statuses.join(" ")
        ));
    }
    out
}

fn percent(count: u64, n: u64) -> String {
    if count == 0 || n == 0 {
        return "-".into();
    }
    format!("{:.0}%", count as f64 * 100.0 / n as f64)
}

/// A horizontal bar chart of each scenario's throughput as a ratio to bare,
/// with each scenario's target marked.
fn chart(rows: &[Row]) -> String {
    let bare = rows
        .iter()
        .find(|r| r.name == "bare")
        .map_or(1.0, |r| r.run.rps());
    let (label_w, bar_w, row_h, top) = (330.0, 420.0, 22.0, 40.0);
    let max = rows
        .iter()
        .map(|r| r.run.rps() / bare)
        .fold(1.2f64, f64::max);
    let height = top + row_h * rows.len() as f64 + 30.0;
    let width = label_w + bar_w + 80.0;
    let x = |ratio: f64| label_w + bar_w * ratio / max;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="14" font-weight="bold">Throughput as a ratio to the bare handler (same run)</text>
"##
    );
    for (i, r) in rows.iter().enumerate() {
        let ratio = r.run.rps() / bare;
        let y = top + row_h * i as f64;
        let color = if r.name == "bare" {
            "#888"
        } else if r.name.contains("redis") {
            "#c0392b"
        } else {
            "#2980b9"
        };
        svg.push_str(&format!(
            r##"<text x="{lx}" y="{ty}" text-anchor="end">{name}</text>
<rect x="{label_w}" y="{y}" width="{w:.1}" height="{h}" fill="{color}"/>
<text x="{vx:.1}" y="{ty}">{ratio:.2}×</text>
"##,
            lx = label_w - 8.0,
            ty = y + 14.0,
            name = r.name.replace('&', "&amp;").replace('<', "&lt;"),
            w = x(ratio) - label_w,
            h = row_h - 6.0,
            vx = x(ratio) + 4.0,
        ));
        if let Some(t) = r.target {
            svg.push_str(&format!(
                r##"<line x1="{tx:.1}" y1="{y1}" x2="{tx:.1}" y2="{y2}" stroke="#27ae60" stroke-width="3"/>
"##,
                tx = x(t),
                y1 = y - 2.0,
                y2 = y + row_h - 4.0,
            ));
        }
    }
    svg.push_str(&format!(
        r##"<line x1="10" y1="{ly}" x2="10" y2="{ly2}" stroke="#27ae60" stroke-width="3"/>
<text x="18" y="{ly}" fill="#27ae60">the scenario's target</text>
</svg>
"##,
        ly = height - 10.0,
        ly2 = height - 22.0,
    ));
    svg
}
