//! A private `redis-server` for the cluster tests: a free port on 127.0.0.1, a fresh
//! temporary directory, persistence off; killed (by its own child handle) and its
//! directory removed when dropped. Where `redis-server` is not installed, a test fails
//! under `CI=true` (CI must run them: scripts/test.sh installs it) and is skipped with a
//! notice otherwise.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{eventually, not_installed, private_dir, PATIENCE};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// A running server; `None` (after a notice) where none is installed outside CI.
    pub fn start() -> Option<Self> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            let what = "redis-server is not installed (Debian: apt-get install redis-server; scripts/test.sh does it)";
            not_installed("cluster", what);
            return None;
        }
        let dir = private_dir("redis");
        // A port the OS says is free now; it stays this server's across a restart.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { child: None, port, dir };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        eventually("redis-server answers PING", || self.query::<String>(&mut ::redis::cmd("PING")).is_ok());
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Instances subscribed to `channel` (each holds one subscription per channel).
    pub fn subscribers(&self, channel: &str) -> i64 {
        let counts: Vec<(String, i64)> =
            self.query(::redis::cmd("PUBSUB").arg("NUMSUB").arg(channel)).expect("PUBSUB NUMSUB");
        counts[0].1
    }

    /// Waits until `channel` has exactly `count` subscribed instances.
    pub fn await_subscribers(&self, channel: &str, count: i64) {
        eventually(&format!("{count} instances subscribed to {channel}"), || self.subscribers(channel) == count);
    }

    /// Runs one command (for a test that plays a part Redis's clients would).
    pub fn run(&self, cmd: &mut ::redis::Cmd) {
        self.query::<::redis::Value>(cmd).expect("the command runs");
    }

    /// The keys matching `pattern`, sorted (for a test that checks what wshub left there).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.query(::redis::cmd("KEYS").arg(pattern)).expect("KEYS");
        keys.sort();
        keys
    }

    /// A string key's value (`None` when there is none).
    pub fn get(&self, key: &str) -> Option<String> {
        self.query(::redis::cmd("GET").arg(key)).expect("GET")
    }

    /// Runs one command and reads its answer as `T`.
    pub fn query<T: ::redis::FromRedisValue>(&self, cmd: &mut ::redis::Cmd) -> ::redis::RedisResult<T> {
        let client = ::redis::Client::open(self.url())?;
        let mut connection = client.get_connection_with_timeout(PATIENCE)?;
        cmd.query(&mut connection)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
