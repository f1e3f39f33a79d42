//! A private PostgreSQL for the use case tests: a cluster made with `initdb` in a fresh
//! temporary directory, served by `postgres` on a free port of 127.0.0.1 (its socket in
//! that directory too), durability off since nothing outlives the test; stopped (by its
//! PID) and its directory removed when dropped. Where PostgreSQL is not installed, a test
//! fails under `CI=true` (CI must run them: scripts/test.sh installs it) and is skipped
//! with a notice otherwise.
//!
//! PostgreSQL refuses to run as root. Run as root (CI is), `initdb` and `postgres` run as
//! the `postgres` user that Debian's package creates (else `nobody`), and the directory
//! belongs to that user: the test process drops privileges in the child itself
//! (`CommandExt::uid`), so the PID it holds is the server's own, not a wrapper's.

use std::ffi::CString;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{not_installed, private_dir, wait_until, PATIENCE};

/// The superuser `initdb` creates; the tests connect as it, trusted, on 127.0.0.1 only.
const SUPERUSER: &str = "wshub";

pub struct PostgresServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The unprivileged user (uid, gid) the server runs as when the tests run as root.
    owner: Option<(u32, u32)>,
}

impl PostgresServer {
    /// A running server with an empty cluster; `None` (after a notice) where PostgreSQL is
    /// not installed outside CI.
    pub fn start() -> Option<Self> {
        let Some(bin) = binaries() else {
            let what = "PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/test.sh does it)";
            not_installed("PostgreSQL", what);
            return None;
        };
        let dir = private_dir("postgres");
        // SAFETY: geteuid has no preconditions.
        let owner = (unsafe { libc::geteuid() } == 0).then(unprivileged_user);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("hand the cluster's directory to its user");
        }
        // A port the OS says is free now; it stays this server's across a restart.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = PostgresServer { child: None, port, dir, bin, owner };
        let initdb = server
            .command("initdb")
            .args(["-D", "data", "-U", SUPERUSER, "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"])
            .output()
            .expect("initdb runs");
        assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        let mut server = server;
        server.restart();
        Some(server)
    }

    /// A connection string for the `postgres` database as the superuser.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// A connection, for a test that looks at or changes the database behind the app.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect to the test's PostgreSQL")
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = File::create(self.dir.join("postgres.log")).unwrap();
        let socket_dir = self.dir.to_str().expect("a UTF-8 temporary directory").to_string();
        let child = self
            .command("postgres")
            .args(["-D", "data", "-p", &self.port.to_string(), "-k", &socket_dir])
            // Loopback only; and no durability: the cluster is thrown away with the test.
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let ready = wait_until(PATIENCE, || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("postgres exited ({status}) at start: {}", self.log());
            }
            postgres::Client::connect(&self.url(), postgres::NoTls).is_ok()
        });
        assert!(ready, "postgres did not accept connections in time: {}", self.log());
    }

    /// Stops the server with a fast shutdown (SIGINT: clients are disconnected at once),
    /// killing it if it has not gone within the tests' patience.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill has no memory preconditions; the PID is our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        if !wait_until(PATIENCE, || child.try_wait().ok().flatten().is_some()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `program` from the PostgreSQL binaries, in the cluster's directory, as its user.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(&self.dir).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            // Supplementary groups are dropped too: std clears them when root sets a uid.
            command.uid(uid).gid(gid);
        }
        command
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory holding `initdb` and `postgres`: Debian keeps them off PATH, one
/// directory per major version (the newest is taken); else wherever PATH has them.
fn binaries() -> Option<PathBuf> {
    let complete = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let debian = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().filter_map(|entry| {
        let entry = entry.ok()?;
        let version: u32 = entry.file_name().to_str()?.parse().ok()?;
        let bin = entry.path().join("bin");
        complete(&bin).then_some((version, bin))
    });
    if let Some((_, bin)) = debian.max_by_key(|(version, _)| *version) {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| complete(dir))
}

/// The user a root test process runs PostgreSQL as: `postgres` (Debian's package makes
/// it), else `nobody`.
fn unprivileged_user() -> (u32, u32) {
    ["postgres", "nobody"].into_iter().find_map(user_ids).expect("a `postgres` or `nobody` user to run PostgreSQL as")
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    // The reentrant lookup: other tests' threads may look users up at the same time.
    // SAFETY: passwd is plain data; getpwnam_r fills it, its strings pointing into
    // `buffer`, which outlives the read of the two ids.
    let mut record: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: a NUL-terminated name, a record, a buffer of the given length, an out pointer.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut record, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    (rc == 0 && !found.is_null()).then_some((record.pw_uid, record.pw_gid))
}
