//! Real `redis-server` processes on free loopback ports.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub(crate) fn check_binary() {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "redis-server was not found on PATH. Install it (`apt-get install redis-server`) \
         or point TEST_REDIS_URL at a running Redis."
    );
}

pub(crate) fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            if s.write_all(b"PING\r\n").is_ok() {
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within 10 s");
}

pub(crate) fn server_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--loglevel",
        "warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The server of this test binary: `TEST_REDIS_URL`, or a `redis-server`
/// started once and killed by a watchdog when this process exits.
#[allow(clippy::zombie_processes)]
pub fn shared_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_REDIS_URL") {
            return url;
        }
        check_binary();
        let port = free_port();
        let args = server_args(port)
            .into_iter()
            .map(|a| if a.is_empty() { "''".to_owned() } else { a })
            .collect::<Vec<_>>()
            .join(" ");
        // The watchdog shell kills the server once this test process is gone.
        let script = format!(
            "redis-server {args} & R=$!; trap 'kill $R 2>/dev/null' EXIT; \
             while kill -0 {pid} 2>/dev/null && kill -0 $R 2>/dev/null; do sleep 0.2; done",
            pid = std::process::id()
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        wait_ready(port);
        format!("redis://127.0.0.1:{port}")
    })
    .clone()
}

/// A server of its own, for tests that kill, pause or restart it. Killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// A server with these arguments added to the usual ones.
    pub fn start_with(extra: Vec<String>) -> Self {
        check_binary();
        let port = free_port();
        let mut s = Self {
            port,
            child: None,
            extra,
        };
        s.restart();
        s
    }

    /// A replica of `master`, once it has synced with it.
    pub fn replica_of(master: &RedisServer) -> Self {
        let args = ["--replicaof", "127.0.0.1", &master.port().to_string()];
        let replica = Self::start_with(args.iter().map(|s| s.to_string()).collect());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !replica
            .info("replication")
            .contains("master_link_status:up")
        {
            assert!(
                Instant::now() < deadline,
                "the replica did not sync within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    /// `INFO <section>`, through redis-cli.
    pub fn info(&self, section: &str) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "info", section])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Stops the process (SIGSTOP): it holds its connections but answers
    /// nothing until [`resume`](Self::resume)d.
    pub fn suspend(&self) {
        self.signal("-STOP");
    }

    /// Resumes a suspended process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid}");
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): connections drop, nothing answers.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(server_args(self.port))
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_ready(self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
