//! Shared helpers for integration tests: start a real server on 127.0.0.1:0, connect
//! real clients (tungstenite over blocking std sockets), and speak raw bytes where a test
//! needs to break the protocol on purpose.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod postgres_server;
pub mod redis_server;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};
use wshub::{Config, Handler, Server};

pub type Client = WebSocket<TcpStream>;

/// How long any single wait in a test may take before the test fails (not a speed
/// assertion: a generous bound so a hang becomes a failure).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A config for tests: loopback, port 0, `shards` shards. The shutdown timeout is short
/// because many tests end holding raw sockets that never answer the server's close frame.
pub fn config(shards: usize) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards,
        shutdown_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

pub fn start<H: Handler>(config: Config, make: impl Fn(usize) -> H) -> Server {
    wshub::start(config, make).expect("server starts")
}

pub fn stop(server: Server) {
    server.shutdown();
    server.join().expect("shards stop cleanly");
}

/// A connected, upgraded client with a read timeout.
pub fn connect(addr: SocketAddr, path: &str) -> Client {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let url = format!("ws://{addr}{path}");
    let (client, response) = tungstenite::client(url.as_str(), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    client
}

/// Reads the next text or binary message, answering pings on the way.
pub fn next_message(client: &mut Client) -> Message {
    loop {
        match client.read().expect("read a message") {
            message @ (Message::Text(_) | Message::Binary(_)) => return message,
            _ => continue,
        }
    }
}

pub fn next_text(client: &mut Client) -> String {
    next_message(client).into_text().expect("text").to_string()
}

/// Reads until the server's close frame arrives and returns its code.
pub fn close_code(client: &mut Client) -> CloseCode {
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// Sends a raw HTTP request, ends the sending side, and returns everything the server
/// answers until it closes (a kept-alive connection closes on seeing that end).
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("server closes after its answer");
    String::from_utf8_lossy(&response).into_owned()
}

/// A raw socket after a successful upgrade, for sending hand-made frames.
pub fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    upgrade_raw(TcpStream::connect(addr).unwrap())
}

/// A valid upgrade request for `/`.
pub const UPGRADE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Sends [`UPGRADE_REQUEST`] on `stream` and returns the status and head of the answer.
pub fn send_upgrade(stream: &mut TcpStream) -> (u16, String) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(UPGRADE_REQUEST).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head)
}

/// Upgrades an already connected socket by hand.
pub fn upgrade_raw(mut stream: TcpStream) -> TcpStream {
    let (status, head) = send_upgrade(&mut stream);
    assert_eq!(status, 101, "{head}");
    stream
}

/// A client frame: `first` is FIN/RSV/opcode, masked unless `mask` is None.
pub fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

pub const MASK: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

/// Reads one server (unmasked) frame from a raw socket: its first byte (FIN/RSV/opcode)
/// and payload; None when the socket ends or times out first.
pub fn read_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).ok()?;
    let len = match head[1] & 0x7F {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).ok()?;
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).ok()?;
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    Some((head[0], payload))
}

/// Every frame the server sends until it closes the socket.
pub fn read_frames_to_end(stream: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    std::iter::from_fn(|| read_frame(stream)).collect()
}

/// Reads server frames from a raw socket until a close frame; returns its code, or None
/// when the socket ends first.
pub fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    loop {
        let (first, payload) = read_frame(stream)?;
        if first & 0x0F == 0x8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// True once the peer has closed the socket (EOF or reset), reading and dropping data.
pub fn wait_for_eof(stream: &mut TcpStream) -> bool {
    let deadline = Instant::now() + PATIENCE;
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Polls `condition` every few milliseconds until it holds (true) or `timeout` runs out
/// (false). The one place tests wait for something to happen: a wait ends as soon as its
/// condition holds, however fast or loaded the machine is.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `condition` holds; fails the test when it does not within `PATIENCE`.
pub fn eventually(what: &str, condition: impl FnMut() -> bool) {
    assert!(wait_until(PATIENCE, condition), "timed out waiting for: {what}");
}

/// A hub-protocol client: connected, with its `welcome` frame read.
pub struct JsonClient {
    pub ws: Client,
    pub welcome: serde_json::Value,
}

impl JsonClient {
    pub fn connect(addr: SocketAddr, path: &str) -> Self {
        let mut ws = connect(addr, path);
        let welcome: serde_json::Value = serde_json::from_str(&next_text(&mut ws)).unwrap();
        assert_eq!(welcome["type"], "welcome");
        JsonClient { ws, welcome }
    }

    /// The connection's identity as the server reported it.
    pub fn user(&self) -> String {
        self.welcome["user"].as_str().unwrap().to_string()
    }

    pub fn send(&mut self, frame: serde_json::Value) {
        self.ws.send(Message::text(frame.to_string())).unwrap();
    }

    /// The next frame from the server, as JSON.
    pub fn next(&mut self) -> serde_json::Value {
        serde_json::from_str(&next_text(&mut self.ws)).unwrap()
    }

    /// Sends `frame` with `id` and returns the answer (ack, error or response).
    pub fn call(&mut self, mut frame: serde_json::Value, id: u64) -> serde_json::Value {
        frame["id"] = id.into();
        self.send(frame);
        let answer = self.next();
        assert_eq!(answer["id"], id, "answer to frame {id}: {answer}");
        answer
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 connection that reads responses by their Content-Length, so several
/// requests can go over it (keep-alive, pipelining).
pub struct HttpConn {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        HttpConn { stream, buffer: Vec::new() }
    }

    /// Sends `method path` with an optional bearer key and JSON body; reads the answer.
    pub fn request(&mut self, method: &str, path: &str, key: Option<&str>, body: &str) -> HttpReply {
        self.stream.write_all(&http_request(method, path, key, body)).unwrap();
        self.read_reply(method == "HEAD")
    }

    /// Reads one response; `head_only`: it answers a HEAD, so it has no body.
    pub fn read_reply(&mut self, head_only: bool) -> HttpReply {
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill();
        };
        let head = String::from_utf8(self.buffer[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length = match head_only {
            true => 0,
            false => headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap()),
        };
        while self.buffer.len() < head_end + length {
            self.fill();
        }
        let body = String::from_utf8(self.buffer[head_end..head_end + length].to_vec()).unwrap();
        self.buffer.drain(..head_end + length);
        HttpReply { status, headers, body }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).expect("response arrives");
        assert!(n > 0, "server closed mid-response: {:?}", String::from_utf8_lossy(&self.buffer));
        self.buffer.extend_from_slice(&chunk[..n]);
    }
}

/// The bytes of a request with `Host`, an optional bearer key and a body.
pub fn http_request(method: &str, path: &str, key: Option<&str>, body: &str) -> Vec<u8> {
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// One request on a fresh connection.
pub fn http_once(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> HttpReply {
    HttpConn::connect(addr).request(method, path, key, body)
}

/// A real component a test needs is not installed: under `CI=true` that fails the test
/// (CI must run it: scripts/test.sh installs it); elsewhere the test is skipped with a
/// notice naming `what` and how to install it.
pub fn not_installed(tests: &str, what: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{what}: the {tests} tests must run in CI");
    // Straight to stderr: the test harness keeps `eprintln!` of a passing test to itself.
    let _ = writeln!(io::stderr(), "SKIPPED ({tests} test): {what}");
}

/// A fresh temporary directory for one private server (`kind`), unique in this process.
pub fn private_dir(kind: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wshub-{kind}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
