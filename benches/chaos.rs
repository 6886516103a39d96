//! The chaos benchmark: three instances of a service with every layer, in
//! process, under load on a fixed schedule while Redis is paused, killed
//! and restarted, filled to its memory limit and (feature `cluster`) a
//! cluster master fails over.
//!
//! ```text
//! cargo bench --bench chaos --features cluster   # about a minute
//! cargo bench --bench chaos -- --smoke           # about a second per phase (CI)
//! cargo bench --bench chaos -- --strict          # exit 1 when a check fails
//! ```
//!
//! It starts its own `redis-server` on a free loopback port (append-only
//! file, `appendfsync always`) and, for the failover, a cluster of three
//! masters with a replica each. Each instance has its own `RedisStore`.
//! Per phase it reports requests slower than 2 s (hung), rate-limit
//! admissions decided by the store beyond the limit (fail-open admissions
//! counted apart), idempotency keys whose handler ran twice, cache reads of
//! a body older than an acknowledged write, and how long after Redis
//! answered again the rate limiter's decisions came from the store again.
//! The table is printed and written to `target/chaos-report.md`.

#[path = "chaos/fleet.rs"]
mod fleet;
#[path = "chaos/load.rs"]
mod load;
#[path = "chaos/report.rs"]
mod report;
#[path = "chaos/servers.rs"]
mod servers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::{Fleet, World, ORDER_WORK};
use load::{Log, Phase};
use report::{Fault, Row};
use tokio::runtime::Runtime;
use tower_redis_layers::RedisStore;

const INSTANCES: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    None,
    Pause,
    Kill,
    OutOfMemory,
    Failover,
}

/// One phase of the schedule: load for `len` (and at least `tail` after
/// Redis answers again), the fault at `at`, lasting `lasts`.
struct Step {
    name: &'static str,
    kind: Kind,
    len: Duration,
    at: Duration,
    lasts: Duration,
    tail: Duration,
}

fn schedule(smoke: bool) -> Vec<Step> {
    let s = Duration::from_secs_f64;
    let step = |name, kind, len, at, lasts, tail| Step {
        name,
        kind,
        len: s(len),
        at: s(at),
        lasts: s(lasts),
        tail: s(tail),
    };
    if smoke {
        return vec![
            step("none", Kind::None, 1.0, 0.0, 0.0, 0.0),
            step("paused", Kind::Pause, 1.0, 0.25, 0.3, 0.3),
            step("killed, restarted", Kind::Kill, 1.0, 0.25, 0.3, 0.3),
            step("out of memory", Kind::OutOfMemory, 1.0, 0.25, 0.3, 0.3),
            step("failed over", Kind::Failover, 1.0, 0.25, 0.0, 1.0),
        ];
    }
    vec![
        step("none", Kind::None, 6.0, 0.0, 0.0, 0.0),
        step("paused 2 s", Kind::Pause, 8.0, 2.0, 2.0, 4.0),
        step("killed 5 s, restarted", Kind::Kill, 12.0, 2.0, 5.0, 4.0),
        step("out of memory 4 s", Kind::OutOfMemory, 10.0, 2.0, 4.0, 4.0),
        step("master failed over", Kind::Failover, 10.0, 2.0, 0.0, 5.0),
    ]
}

fn main() {
    let mut smoke = false;
    let mut strict = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--strict" => strict = true,
            _ => {} // cargo bench passes --bench
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = Arc::new(World::default());
    let mut redis = servers::Standalone::start();
    let url = redis.url();
    let fleet = rt.block_on(connect(&world, || RedisStore::builder(url.as_str())));
    warm_up(&rt, &fleet, &world, 100);
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (number, step) in schedule(smoke).iter().enumerate() {
        eprintln!("phase {number}: {}", step.name);
        let row = match step.kind {
            Kind::Failover => failover(&rt, &world, number, step),
            _ => Some(run_phase(&rt, &fleet, &world, number, step, |lasts| {
                break_standalone(step.kind, &mut redis, lasts)
            })),
        };
        match row {
            Some(row) => rows.push(row),
            None => skipped.push(format!(
                "{}: skipped (build with `--features cluster`)",
                step.name
            )),
        }
    }
    let header = format!(
        "{INSTANCES} instances in process, one redis-server (appendfsync always){}; \
         every layer with its defaults; `cargo bench --bench chaos{}`",
        if cfg!(feature = "cluster") {
            " and a cluster of 3 masters with a replica each"
        } else {
            ""
        },
        match (cfg!(feature = "cluster"), smoke) {
            (true, true) => " --features cluster -- --smoke",
            (true, false) => " --features cluster",
            (false, true) => " -- --smoke",
            (false, false) => "",
        }
    );
    let table = report::table(&header, &rows, &skipped);
    println!("\n{table}");
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/chaos-report.md", &table);
    let violations: Vec<String> = rows.iter().flat_map(Row::violations).collect();
    if violations.is_empty() {
        println!("every check passed");
    } else {
        println!("checks failed:\n- {}", violations.join("\n- "));
        if strict {
            std::process::exit(1);
        }
    }
}

/// Three instances, each on a store of its own from `builder`.
async fn connect(
    world: &Arc<World>,
    builder: impl Fn() -> tower_redis_layers::RedisStoreBuilder,
) -> Fleet {
    let mut stores = Vec::new();
    for _ in 0..INSTANCES {
        let store = builder()
            .prefix("chaos")
            .ping_on_connect(true)
            .connect()
            .await
            .expect("connect to the benchmark's Redis");
        stores.push(store);
    }
    Fleet::new(stores, world).expect("the layers build")
}

/// Every instance serves for half a second, unmeasured: connections and
/// scripts are loaded before the first phase.
fn warm_up(rt: &Runtime, fleet: &Fleet, world: &Arc<World>, number: usize) {
    let step = Step {
        name: "warm-up",
        kind: Kind::None,
        len: Duration::from_millis(500),
        at: Duration::ZERO,
        lasts: Duration::ZERO,
        tail: Duration::ZERO,
    };
    run_phase(rt, fleet, world, number, &step, |_| unreachable!());
}

/// Runs one phase: load from the start, the fault `inject` at `step.at`
/// (it returns when Redis answered again), load until the phase ends.
fn run_phase(
    rt: &Runtime,
    fleet: &Fleet,
    world: &Arc<World>,
    number: usize,
    step: &Step,
    inject: impl FnOnce(Duration) -> Instant,
) -> Row {
    let phase = Arc::new(Phase {
        fleet: fleet.clone(),
        world: world.clone(),
        log: Log::default(),
        number,
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let load = rt.spawn(load::run(phase.clone()));
    let mut end = started + step.len;
    let fault = (step.kind != Kind::None).then(|| {
        std::thread::sleep(step.at);
        let began = Instant::now();
        let answered = inject(step.lasts);
        end = end.max(answered + step.tail);
        Fault { began, answered }
    });
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    phase.stop.store(true, Ordering::Relaxed);
    rt.block_on(load).expect("the load ran");
    // Handlers that outlived their clients finish their work.
    std::thread::sleep(ORDER_WORK * 2);
    Row::of(step.name, &phase, started, fault)
}

/// Breaks the standalone server for `lasts`; returns when it answers again.
fn break_standalone(kind: Kind, redis: &mut servers::Standalone, lasts: Duration) -> Instant {
    let port = redis.port();
    match kind {
        Kind::Pause => {
            // Made before the pause, so that its PING waits the pause out.
            let mut probe = servers::admin(port).expect("a connection");
            let ms = lasts.as_millis().to_string();
            servers::run::<()>(port, &["CLIENT", "PAUSE", &ms, "ALL"]).expect("CLIENT PAUSE");
            redis::cmd("PING")
                .query::<String>(&mut probe)
                .expect("PING after the pause");
            Instant::now()
        }
        Kind::Kill => {
            redis.kill();
            std::thread::sleep(lasts);
            redis.restart()
        }
        Kind::OutOfMemory => fill_memory(port, lasts),
        Kind::None | Kind::Failover => unreachable!("not a standalone fault"),
    }
}

/// Fills Redis with junk up to a `maxmemory` just above what was used,
/// with `noeviction`, and lowers the limit a little below the usage: every
/// write is refused for `lasts` (usage hovers by a few kilobytes, so a
/// limit at the edge would let most writes through). Then restores both
/// settings and drops the junk.
fn fill_memory(port: u16, lasts: Duration) -> Instant {
    let config = |name: &str| -> String {
        let pair: Vec<String> = servers::run(port, &["CONFIG", "GET", name]).expect("CONFIG GET");
        pair.get(1).cloned().unwrap_or_default()
    };
    let set = |name: &str, value: &str| {
        servers::run::<()>(port, &["CONFIG", "SET", name, value]).expect("CONFIG SET");
    };
    let used = || -> u64 {
        let info: String = servers::run(port, &["INFO", "memory"]).expect("INFO memory");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    };
    let (max, policy) = (config("maxmemory"), config("maxmemory-policy"));
    set("maxmemory-policy", "noeviction");
    set("maxmemory", &(used() + (2 << 20)).to_string());
    let mut admin = servers::admin(port).expect("a connection");
    let value = vec![b'x'; 64 << 10];
    let mut junk = 0;
    while junk < 1000 {
        junk += 1;
        let key = format!("chaos-junk:{junk}");
        let args = (key, &value[..]);
        if redis::cmd("SET")
            .arg(args)
            .arg("EX")
            .arg(600)
            .query::<()>(&mut admin)
            .is_err()
        {
            break;
        }
    }
    set("maxmemory", &(used() - (256 << 10)).to_string());
    std::thread::sleep(lasts);
    let keys: Vec<String> = (1..=junk).map(|i| format!("chaos-junk:{i}")).collect();
    let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(keys).query(&mut admin);
    set("maxmemory", &max);
    set("maxmemory-policy", &policy);
    Instant::now()
}

/// The failover phase, on a cluster of its own; `None` without the
/// `cluster` feature.
#[cfg(feature = "cluster")]
fn failover(rt: &Runtime, world: &Arc<World>, number: usize, step: &Step) -> Option<Row> {
    let mut cluster = servers::Cluster::start(3);
    let urls = cluster.urls();
    let fleet = rt.block_on(connect(world, || RedisStore::cluster_builder(urls.clone())));
    warm_up(rt, &fleet, world, 101);
    Some(run_phase(rt, &fleet, world, number, step, |_| {
        let replica = cluster.kill_a_master();
        let give_up = Instant::now() + Duration::from_secs(30);
        while !servers::Cluster::is_master(replica) {
            assert!(Instant::now() < give_up, "no failover within 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Instant::now()
    }))
}

#[cfg(not(feature = "cluster"))]
fn failover(_: &Runtime, _: &Arc<World>, _: usize, _: &Step) -> Option<Row> {
    None
}
