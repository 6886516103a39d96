//! A real Redis Cluster of `redis-server` processes on free loopback ports,
//! created with `redis-cli --cluster create`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::server::{check_binary, free_port, server_args, wait_ready};

fn node_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    let mut args = server_args(port);
    args.extend(
        [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            "--cluster-node-timeout",
            "1000",
            "--dir",
            &dir.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "trl-cluster-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("cluster dir");
    dir
}

fn create(ports: &[u16], replicas: usize) {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("--cluster").arg("create");
    for p in ports {
        cmd.arg(format!("127.0.0.1:{p}"));
    }
    let out = cmd
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Waits until every node in `ports` reports `cluster_state:ok`.
pub fn wait_cluster_ok(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ports
            .iter()
            .all(|p| cli(*p, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the cluster on {ports:?} did not reach cluster_state:ok within 30 s");
}

/// Waits until every replica has synced with its master: a replica that never
/// did refuses to fail over ("data too old").
fn wait_replicas_synced(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let synced = ports.iter().all(|p| {
            let info = cli(*p, &["info", "replication"]);
            !info.contains("role:slave") || info.contains("master_link_status:up")
        });
        if synced {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the replicas on {ports:?} did not sync within 30 s");
}

fn urls(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect()
}

/// The 3-master cluster of this test binary (`TEST_REDIS_CLUSTER_URLS`, a
/// comma-separated list, overrides), killed by a watchdog when the process exits.
#[allow(clippy::zombie_processes)]
pub fn shared_cluster_urls() -> Vec<String> {
    static URLS: OnceLock<Vec<String>> = OnceLock::new();
    URLS.get_or_init(|| {
        if let Ok(list) = std::env::var("TEST_REDIS_CLUSTER_URLS") {
            return list.split(',').map(str::to_owned).collect();
        }
        check_binary();
        let dir = temp_dir();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut script = String::from("PIDS=''; ");
        for p in &ports {
            let args = node_args(*p, &dir)
                .into_iter()
                .map(|a| if a.is_empty() { "''".to_owned() } else { a })
                .collect::<Vec<_>>()
                .join(" ");
            script.push_str(&format!("redis-server {args} & PIDS=\"$PIDS $!\"; "));
        }
        script.push_str(&format!(
            "trap 'kill $PIDS 2>/dev/null; rm -rf {dir}' EXIT; \
             while kill -0 {pid} 2>/dev/null; do sleep 0.2; done",
            dir = dir.display(),
            pid = std::process::id()
        ));
        let _watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the cluster nodes");
        for p in &ports {
            wait_ready(*p);
        }
        create(&ports, 0);
        wait_cluster_ok(&ports);
        urls(&ports)
    })
    .clone()
}

/// A cluster of its own (masters + replicas), for failover tests. Killed on drop.
pub struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas_per_master: usize) -> Self {
        check_binary();
        let dir = temp_dir();
        let n = masters * (1 + replicas_per_master);
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let children = ports
            .iter()
            .map(|p| {
                Some(
                    Command::new("redis-server")
                        .args(node_args(*p, &dir))
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("start a cluster node"),
                )
            })
            .collect();
        for p in &ports {
            wait_ready(*p);
        }
        create(&ports, replicas_per_master);
        wait_cluster_ok(&ports);
        wait_replicas_synced(&ports);
        Self {
            ports,
            children,
            dir,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        urls(&self.ports)
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        for p in &self.ports {
            let out = cli(*p, &["cluster", "keyslot", key]);
            let slot: u16 = out.trim().parse().expect("keyslot");
            let nodes = cli(*p, &["cluster", "nodes"]);
            for line in nodes.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                for range in &f[8..] {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) else {
                        continue;
                    };
                    if (a..=b).contains(&slot) {
                        let port = f[1].split(['@', ':']).nth(1).unwrap();
                        return port.parse().unwrap();
                    }
                }
            }
        }
        panic!("no master serves {key}");
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).expect("a node");
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the surviving nodes report the cluster healthy again.
    pub fn wait_ok(&self) {
        let alive: Vec<u16> = self
            .ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect();
        wait_cluster_ok(&alive);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
