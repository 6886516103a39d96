//! CPU accounting: the server's worker threads (from /proc) and Redis (INFO).

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Thread ids of the server runtime's workers, recorded as they start.
#[derive(Clone, Default)]
pub struct Threads(Arc<Mutex<Vec<String>>>);

impl Threads {
    /// Call from `on_thread_start`.
    pub fn register(&self) {
        if let Ok(path) = std::fs::read_link("/proc/thread-self") {
            // The link reads "<pid>/task/<tid>", relative to /proc.
            let path = std::path::Path::new("/proc").join(path);
            self.0
                .lock()
                .unwrap()
                .push(path.to_string_lossy().into_owned());
        }
    }

    /// Pins the calling thread to `core` (`--pin`).
    pub fn pin_self(core: usize) {
        if let Ok(path) = std::fs::read_link("/proc/thread-self") {
            if let Some(tid) = path.to_string_lossy().rsplit('/').next() {
                pin(tid, core, false);
            }
        }
    }

    /// User + system CPU of the registered threads so far.
    pub fn cpu(&self) -> Duration {
        let tick = 100.0; // USER_HZ on Linux
        let mut total = 0u64;
        for p in self.0.lock().unwrap().iter() {
            if let Ok(stat) = std::fs::read_to_string(format!("{p}/stat")) {
                // Fields after the ")" of the comm: state is field 3; utime 14, stime 15.
                if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
                    let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
                    total += ut + st;
                }
            }
        }
        Duration::from_secs_f64(total as f64 / tick)
    }
}

/// What Redis reports: its CPU time, the script calls it received, all
/// commands it ran (commands run inside scripts count too), and the reads
/// of its clients' sockets it processed (one per round trip that reached
/// it: a pipeline or a batch read at once counts once).
pub struct RedisCounters {
    pub cpu: Duration,
    pub scripts: u64,
    /// Time Redis spent running scripts (commands inside them included).
    pub script_time: Duration,
    pub commands: u64,
    pub reads: u64,
}

/// One `INFO` of the sections needed: the reading itself costs Redis one
/// read and one `info` call, which the report leaves out.
/// Empties Redis (keys only: loaded scripts stay), so that a scenario does
/// not pay for the keys earlier ones left (a larger keyspace costs every
/// command more).
pub async fn flush(conn: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("FLUSHALL").query_async(conn).await.unwrap();
    trim();
}

/// Gives the memory the earlier scenarios freed back to the system: glibc
/// keeps freed chunks in its bins, and a scenario after one that churned
/// through tens of MiB (a memory cache's misses) would allocate among them.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub async fn redis_counters(conn: &mut redis::aio::MultiplexedConnection) -> RedisCounters {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("commandstats")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    let field = |name: &str| -> Option<&str> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let secs: f64 = ["used_cpu_sys", "used_cpu_user"]
        .iter()
        .filter_map(|f| field(f)?.parse::<f64>().ok())
        .sum();
    // `cmdstat_<name>:calls=N,usec=N,...`: the field `what` of the
    // commands whose name matches.
    let stat = |pred: &dyn Fn(&str) -> bool, what: &str| -> u64 {
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                if !pred(name) {
                    return None;
                }
                rest.split(',')
                    .find_map(|f| f.strip_prefix(what)?.strip_prefix('='))?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let calls = |pred: &dyn Fn(&str) -> bool| stat(pred, "calls");
    RedisCounters {
        cpu: Duration::from_secs_f64(secs),
        scripts: calls(&|n| n.starts_with("eval")),
        script_time: Duration::from_micros(stat(&|n| n.starts_with("eval"), "usec")),
        commands: calls(&|n| n != "info"),
        reads: field("total_reads_processed")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// `taskset`: pins a thread (or, `all`, every thread of a process) to `core`.
pub fn pin(id: &str, core: usize, all: bool) {
    let flags = if all { "-apc" } else { "-pc" };
    let ok = std::process::Command::new("taskset")
        .args([flags, &core.to_string(), id])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("--pin: taskset {flags} {core} {id} failed; running unpinned");
    }
}
