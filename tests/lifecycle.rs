//! Server lifecycle over real sockets and real processes: graceful shutdown (in process
//! and by SIGTERM to the binary), running out of file descriptors, and starting on an
//! address another server holds (refused) or one a stopped server left (allowed).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;
use wshub::Config;

#[test]
fn shutdown_sends_1001_to_every_connection_and_stops() {
    let server = start(config(4), |_| wshub::Echo);
    let mut clients: Vec<Client> = (0..20).map(|_| connect(server.local_addr(), "/")).collect();
    server.shutdown();
    for client in &mut clients {
        assert_eq!(close_code(client), CloseCode::Away);
    }
    server.join().expect("shards stop cleanly");
}

/// Starts the real binary with `args`; returns it and the address it logged.
#[allow(clippy::zombie_processes)] // the caller waits for the child it is handed
fn spawn_binary(args: &[&str], limit_fds: Option<u64>) -> (Child, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wshub"));
    command.args(["--listen", "127.0.0.1:0", "--log-level", "info"]).args(args);
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(limit) = limit_fds {
        let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().expect("binary starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let status = child.wait();
            panic!("binary exited before listening: {status:?}");
        }
        if let Some(rest) = line.split("listening on ws://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            // Keep draining the log so the child never blocks on a full pipe.
            let log_path = std::env::temp_dir().join(format!("wshub-test-{}.log", child.id()));
            std::thread::spawn(move || {
                let mut log = std::fs::File::create(log_path).unwrap();
                for line in stderr.lines().map_while(Result::ok) {
                    let _ = writeln!(log, "{line}");
                }
            });
            return (child, addr);
        }
    }
}

#[test]
fn sigterm_closes_connections_with_1001_and_exits_zero() {
    let (mut child, addr) = spawn_binary(&["--echo", "--shards", "2"], None);
    let mut clients: Vec<Client> = (0..10).map(|_| connect(addr, "/")).collect();
    clients[0].send(Message::text("up")).unwrap();
    assert_eq!(next_text(&mut clients[0]), "up");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for client in &mut clients {
        assert_eq!(close_code(client), CloseCode::Away);
    }
    drop(clients);
    let status = wait_with_patience(&mut child);
    assert_eq!(status.code(), Some(0), "graceful exit");
}

#[test]
fn running_out_of_descriptors_pauses_accepting_without_spinning() {
    // 48 descriptors: a few for the process itself, the rest for connections.
    const FD_LIMIT: usize = 48;
    let (mut child, addr) = spawn_binary(&["--echo", "--shards", "1"], Some(FD_LIMIT as u64));
    let pid = child.id();
    let own_sockets = socket_count(pid);
    let mut sockets: Vec<TcpStream> = (0..80)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("the kernel queues what the server cannot take");
            s.write_all(UPGRADE_REQUEST).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let upgraded = |s: &mut TcpStream, wait: Duration| {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 101")
    };
    // The server takes connections until its descriptors run out, and answers each one
    // it took: wait until it is full and every connection it holds has its answer.
    let mut answered = [false; 80];
    eventually("the server holds all it can, each connection answered", || {
        for (socket, answered) in sockets.iter().zip(&mut answered) {
            let mut head = [0u8; 12];
            *answered = *answered || socket.peek(&mut head).is_ok_and(|n| n == 12 && head.starts_with(b"HTTP/1.1 101"));
        }
        let held = answered.iter().filter(|&&a| a).count();
        fd_count(pid) >= FD_LIMIT && held == socket_count(pid) - own_sockets
    });
    for socket in &sockets {
        socket.set_nonblocking(false).unwrap();
    }
    let held = answered.iter().filter(|&&a| a).count();
    assert!(held > 20 && held < 80, "some upgraded, the rest wait in the backlog ({held})");

    // While connections wait, the server must not spin on accept. Not spinning is an
    // absence, which no event announces: measure over a fixed second instead.
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(child.id()) - before;
    assert!(spent < 50, "server burned {spent} of 100 clock ticks in a second waiting for descriptors");

    // Freed descriptors let the waiting connections in.
    let waiting: Vec<usize> = (0..80).filter(|&i| !answered[i]).collect();
    for i in (0..80).filter(|&i| answered[i]).take(waiting.len().min(held)) {
        sockets[i].shutdown(std::net::Shutdown::Both).unwrap();
    }
    let first_waiting = waiting[0];
    assert!(upgraded(&mut sockets[first_waiting], PATIENCE), "a waiting connection got in once descriptors freed up");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    drop(sockets);
    assert_eq!(wait_with_patience(&mut child).code(), Some(0));
}

/// User plus system CPU time of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5); the slice starts at field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Descriptors a process holds open.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Sockets among them: listeners, connections, the signal pipe.
fn socket_count(pid: u32) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().filter_map(Result::ok);
    fds.filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| to.to_string_lossy().starts_with("socket:"))).count()
}

fn wait_with_patience(child: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    if !wait_until(PATIENCE, || {
        status = child.try_wait().unwrap();
        status.is_some()
    }) {
        let _ = child.kill();
        panic!("binary did not exit");
    }
    status.unwrap()
}

#[test]
fn a_second_server_on_a_taken_address_is_refused() {
    let first = start(config(2), |_| wshub::Echo);
    let addr = first.local_addr();
    // Without the check, the second server's reuseport listeners would join the first's.
    let second = wshub::start(Config { listen: addr, ..config(2) }, |_| wshub::Echo);
    let Err(error) = second else { panic!("a second server started on {addr}, which another one holds") };
    assert!(matches!(error, wshub::Error::Bind { addr: refused, .. } if refused == addr), "{error:?}");
    assert!(
        error.to_string().contains(&format!("cannot listen on {addr}: another process is already listening there")),
        "{error}"
    );
    // The first one goes on serving.
    let mut client = connect(addr, "/");
    client.send(Message::text("still mine")).unwrap();
    assert_eq!(next_text(&mut client), "still mine");
    stop(first);
}

#[test]
fn the_binary_exits_1_when_its_address_is_taken() {
    let server = start(config(1), |_| wshub::Echo);
    let addr = server.local_addr().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--listen", &addr, "--echo"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    // A binary that wrongly starts is killed after PATIENCE and fails the test.
    let status = wait_with_patience(&mut child);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: another process is already listening there")),
        "stderr: {stderr}"
    );
    stop(server);
}

#[test]
fn a_restart_on_the_same_port_works_despite_connections_left_in_time_wait() {
    let server = start(config(2), |_| wshub::Echo);
    let addr = server.local_addr();
    let mut client = connect(addr, "/");
    client.send(Message::text("first run")).unwrap();
    assert_eq!(next_text(&mut client), "first run");
    server.shutdown();
    assert_eq!(close_code(&mut client), CloseCode::Away);
    // Reading on sends our close reply; the server then closes the TCP connection first,
    // which leaves its end (on the server's port) in TIME-WAIT.
    while client.read().is_ok() {}
    assert!(wait_for_eof(client.get_mut()), "the server closes its end first");
    drop(client);
    server.join().expect("shards stop cleanly");
    assert!(time_wait_on(addr.port()), "a connection on port {} is in TIME-WAIT", addr.port());

    let again = wshub::start(Config { listen: addr, ..config(2) }, |_| wshub::Echo)
        .unwrap_or_else(|e| panic!("restart on {addr} refused: {e}"));
    let mut client = connect(addr, "/");
    client.send(Message::text("second run")).unwrap();
    assert_eq!(next_text(&mut client), "second run");
    stop(again);
}

/// True when some IPv4 TCP connection whose local port is `port` is in TIME-WAIT.
fn time_wait_on(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields[1].rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok());
        local_port == Some(port) && fields[3] == "06"
    })
}
