//! The Redis processes the chaos benchmark owns and breaks: one durable
//! standalone server, and (feature `cluster`) a cluster of masters with a
//! replica each. Everything listens on free loopback ports and dies with
//! the benchmark.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A fresh directory for the servers' files, removed by its owner.
fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trl-chaos-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// A synchronous admin connection to the server on `port`.
pub fn admin(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let conn = client.get_connection_with_timeout(Duration::from_millis(200))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(conn)
}

/// Runs one admin command on `port`.
pub fn run<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut admin(port)?)
}

/// Blocks until the server on `port` answers `PING` (at most 10 s).
fn wait_answering(port: u16) -> Instant {
    let give_up = Instant::now() + Duration::from_secs(10);
    while Instant::now() < give_up {
        if run::<String>(port, &["PING"]).is_ok() {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("redis-server on port {port} did not answer within 10 s");
}

fn spawn_server(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (apt-get install redis-server)")
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One standalone server that writes every change to its append-only file
/// before answering (`appendfsync always`), as a store holding idempotency
/// records should: a kill and restart loses nothing acknowledged.
pub struct Standalone {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Standalone {
    pub fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            dir: scratch_dir("standalone"),
            child: None,
        };
        s.restart();
        s
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: connections drop, nothing answers.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts the server again on its port (reloading its append-only file)
    /// and returns when it first answered.
    pub fn restart(&mut self) -> Instant {
        self.kill();
        let aof = ["--appendonly", "yes", "--appendfsync", "always"];
        self.child = Some(spawn_server(self.port, &self.dir, &aof));
        wait_answering(self.port)
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of masters with one replica each, for a failover.
#[cfg(feature = "cluster")]
pub struct Cluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

#[cfg(feature = "cluster")]
impl Cluster {
    pub fn start(masters: usize) -> Self {
        let dir = scratch_dir("cluster");
        let nodes: Vec<(u16, Option<Child>)> = (0..masters * 2)
            .map(|_| {
                let port = free_port();
                let conf = format!("nodes-{port}.conf");
                let args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "1000",
                    "--appendonly",
                    "no",
                ];
                (port, Some(spawn_server(port, &dir, &args)))
            })
            .collect();
        let cluster = Self { nodes, dir };
        for (port, _) in &cluster.nodes {
            wait_answering(*port);
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until("the cluster is up with its replicas in sync", |port| {
            let info: String = run(port, &["CLUSTER", "INFO"]).unwrap_or_default();
            let repl: String = run(port, &["INFO", "replication"]).unwrap_or_default();
            info.contains("cluster_state:ok")
                && (!repl.contains("role:slave") || repl.contains("master_link_status:up"))
        });
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn wait_until(&self, what: &str, ok: impl Fn(u16) -> bool) {
        let give_up = Instant::now() + Duration::from_secs(30);
        while Instant::now() < give_up {
            if self
                .nodes
                .iter()
                .filter(|(_, c)| c.is_some())
                .all(|(p, _)| ok(*p))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting until {what}");
    }

    /// Kills a master (SIGKILL) and returns the port of its replica, which
    /// the cluster will promote.
    pub fn kill_a_master(&mut self) -> u16 {
        let any = self.nodes[0].0;
        let nodes: String = run(any, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        // `<id> <ip:port@bus> <flags> <master id or -> ...`
        let fields: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let port_of = |f: &[&str]| -> u16 {
            f[1].split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap()
        };
        let (master, replica) = fields
            .iter()
            .filter(|f| f.len() > 3 && f[2].contains("slave"))
            .find_map(|r| {
                let m = fields.iter().find(|m| m[0] == r[3])?;
                Some((port_of(m), port_of(r)))
            })
            .expect("a master with a replica");
        let node = self.nodes.iter_mut().find(|(p, _)| *p == master).unwrap();
        stop(&mut node.1);
        replica
    }

    /// `true` once the node on `port` serves as a master.
    pub fn is_master(port: u16) -> bool {
        run::<String>(port, &["INFO", "replication"]).is_ok_and(|i| i.contains("role:master"))
    }
}

#[cfg(feature = "cluster")]
impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            stop(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
