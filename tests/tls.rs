//! `wss://` and HTTPS over real sockets: a self-signed certificate made at test time
//! (rcgen), clients speaking rustls over blocking sockets, the server's TLS driven by
//! its non-blocking shard loop.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::json;
use tungstenite::{Message, WebSocket};
use wshub::{App, Config, TlsSettings};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;
type WssClient = WebSocket<TlsStream>;

/// A self-signed certificate for localhost and 127.0.0.1, as PEM files in a fresh
/// directory (loaded the way `--tls-cert`/`--tls-key` load them), and the client side's
/// trust in it.
struct TestCert {
    dir: PathBuf,
    cert_pem: String,
    client: Arc<ClientConfig>,
}

impl TestCert {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("certificate generated");
        let dir = std::env::temp_dir().join(format!(
            "wshub-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert_pem = certified.cert.pem();
        std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), certified.key_pair.serialize_pem()).unwrap();

        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(certified.cert.der().to_vec())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestCert { dir, cert_pem, client: Arc::new(client) }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// A test config serving TLS with this certificate.
    fn config(&self, shards: usize) -> Config {
        let tls = TlsSettings::load(self.cert_path(), self.key_path()).expect("certificate loads");
        Config { tls: Some(tls), ..config(shards) }
    }

    /// A TLS connection (handshake done) to `addr`, verified as 127.0.0.1.
    fn tls_stream(&self, addr: SocketAddr) -> TlsStream {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let session = ClientConnection::new(self.client.clone(), name).unwrap();
        let mut stream = StreamOwned::new(session, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
        }
        stream
    }

    /// An upgraded wss client.
    fn connect(&self, addr: SocketAddr, path: &str) -> WssClient {
        let url = format!("wss://127.0.0.1:{}{path}", addr.port());
        let (client, response) = tungstenite::client(url.as_str(), self.tls_stream(addr)).expect("wss handshake");
        assert_eq!(response.status(), 101);
        client
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn next_json(client: &mut WssClient) -> serde_json::Value {
    loop {
        match client.read().expect("read a message") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Binary(_) => panic!("binary frame from the hub"),
            _ => continue,
        }
    }
}

fn call(client: &mut WssClient, mut frame: serde_json::Value, id: u64) -> serde_json::Value {
    frame["id"] = id.into();
    client.send(Message::text(frame.to_string())).unwrap();
    let answer = next_json(client);
    assert_eq!(answer["id"], id, "answer to frame {id}: {answer}");
    answer
}

/// A hub client over wss, its welcome read.
fn hub_client(cert: &TestCert, addr: SocketAddr, path: &str) -> WssClient {
    let mut client = cert.connect(addr, path);
    let welcome = next_json(&mut client);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client
}

/// Sends `request` over TLS and reads the answer until the server closes.
fn https(stream: &mut TlsStream, request: &[u8]) -> String {
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A server that ends with FIN but no close_notify would land here; ours sends one.
        Err(e) => panic!("TLS stream ended badly: {e} after {:?}", String::from_utf8_lossy(&response)),
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn hub_protocol_over_wss() {
    let cert = TestCert::new();
    let server = App::new().start(cert.config(2)).expect("hub starts");
    let addr = server.local_addr();

    let mut subscribers: Vec<WssClient> = (0..4).map(|_| hub_client(&cert, addr, "/")).collect();
    for (i, sub) in subscribers.iter_mut().enumerate() {
        assert_eq!(call(sub, json!({"type": "subscribe", "topic": "room"}), i as u64)["type"], "ack");
    }
    let mut publisher = hub_client(&cert, addr, "/?user=pat");
    let ack = call(&mut publisher, json!({"type": "publish", "topic": "room", "data": {"n": 1}}), 99);
    assert_eq!(ack["type"], "ack");
    for sub in &mut subscribers {
        let frame = next_json(sub);
        assert_eq!((frame["type"].as_str(), frame["topic"].as_str()), (Some("message"), Some("room")));
        assert_eq!(frame["from"], "pat");
        assert_eq!(frame["data"], json!({"n": 1}));
    }

    // Shutdown closes every wss client with 1001, through TLS.
    server.shutdown();
    for sub in &mut subscribers {
        assert_eq!(close_code_of(sub), tungstenite::protocol::frame::coding::CloseCode::Away);
    }
    server.join().expect("shards stop cleanly");
}

fn close_code_of(client: &mut WssClient) -> tungstenite::protocol::frame::coding::CloseCode {
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

#[test]
fn large_messages_echo_through_tls_both_ways() {
    // Messages of many TLS records, in bursts larger than the socket buffers: the server's
    // writes block inside rustls and resume on WRITABLE.
    let cert = TestCert::new();
    let server = start(cert.config(1), |_| wshub::Echo);
    let mut client = cert.connect(server.local_addr(), "/");
    for round in 0..8u8 {
        let messages: Vec<Vec<u8>> = (0..6u8).map(|i| vec![round.wrapping_mul(31) ^ i; 60_000 + i as usize]).collect();
        for message in &messages {
            client.send(Message::binary(message.clone())).unwrap();
        }
        for message in &messages {
            match client.read().expect("echo") {
                Message::Binary(data) => assert_eq!(&data[..], &message[..]),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    stop(server);
}

#[test]
fn shared_frames_reach_every_tls_receiver_in_order() {
    // Each frame is encoded once and encrypted per receiver; receivers that do not read
    // while the burst is sent (720 KB each, typically more than the socket takes at once)
    // still get every message, in order, once they do, each at its own pace.
    let cert = TestCert::new();
    let server = start(cert.config(2), |_| wshub::Relay);
    let addr = server.local_addr();
    let mut receivers: Vec<WssClient> = (0..4).map(|_| cert.connect(addr, "/")).collect();
    let mut publisher = cert.connect(addr, "/");
    // A client that has read its 101 is open on its shard: the server upgrades as soon as
    // the 101 is written.
    let messages: Vec<String> = (0..24).map(|i| format!("{i:04}:{}", "x".repeat(30_000))).collect();
    for message in &messages {
        publisher.send(Message::text(message.as_str())).unwrap();
    }
    for client in receivers.iter_mut().chain([&mut publisher]) {
        for message in &messages {
            match client.read().expect("a relayed message") {
                Message::Text(text) => assert_eq!(text.as_str(), message.as_str()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    stop(server);
}

#[test]
fn plain_http_endpoints_answer_over_tls() {
    let cert = TestCert::new();
    let server = App::new().start(cert.config(1)).expect("hub starts");
    let addr = server.local_addr();

    let mut stream = cert.tls_stream(addr);
    let answer = https(&mut stream, b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"ok\":true}\n"), "{answer}");

    // Kept alive: two pipelined requests on one TLS connection, then a close.
    let mut stream = cert.tls_stream(addr);
    let answer = https(
        &mut stream,
        b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 404"), "{answer}");
    stop(server);
}

#[test]
fn garbage_instead_of_a_client_hello_is_dropped_without_harm() {
    let cert = TestCert::new();
    let server = App::new().start(cert.config(1)).expect("hub starts");
    let addr = server.local_addr();
    let mut bystander = hub_client(&cert, addr, "/");
    let mut peer = hub_client(&cert, addr, "/?user=peer");

    // Plain HTTP to the TLS port, and random bytes: each is dropped at once.
    for garbage in [&b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3][..]] {
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(PATIENCE)).unwrap();
        raw.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer); // EOF or reset, after at most a TLS alert
        assert!(!answer.starts_with(b"HTTP"), "plaintext answer on the TLS port: {answer:?}");
    }
    eventually("the dropped sockets are gone", || server.connection_count() == 2);

    // The others are unaffected.
    let sent = call(&mut bystander, json!({"type": "send", "to": "peer", "data": "still here"}), 1);
    assert_eq!(sent["type"], "ack", "{sent}");
    let frame = next_json(&mut peer);
    assert_eq!(frame["data"], "still here", "{frame}");
    stop(server);
}

#[test]
fn a_client_over_the_connection_limit_gets_its_503_after_the_tls_handshake() {
    let cert = TestCert::new();
    let server = App::new().start(Config { max_connections: 1, ..cert.config(1) }).expect("hub starts");
    let addr = server.local_addr();
    let _holder = hub_client(&cert, addr, "/");
    // The server answers 503 at accept, before the client's hello: the answer waits in
    // rustls until the handshake is done.
    let mut stream = cert.tls_stream(addr);
    let answer = https(&mut stream, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    stop(server);
}

#[test]
fn tls_flags_come_in_pairs_and_bad_files_fail_at_startup() {
    let cli = |args: &[&str]| wshub::Cli::try_parse_from([&["wshub"], args].concat()).unwrap().config();
    let lone = cli(&["--tls-cert", "cert.pem"]).unwrap_err();
    assert!(lone.contains("--tls-cert and --tls-key"), "{lone}");
    let missing = cli(&["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"]).unwrap_err();
    assert!(missing.contains("cannot read /nonexistent/c.pem"), "{missing}");

    let cert = TestCert::new();
    let (cert_path, key_path) = (cert.cert_path(), cert.key_path());
    let swapped = cli(&["--tls-cert", key_path.to_str().unwrap(), "--tls-key", cert_path.to_str().unwrap()]);
    assert!(swapped.unwrap_err().contains("no certificate"));
    let config = cli(&["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()]).unwrap();
    let tls = config.tls.expect("TLS configured");
    assert_eq!(tls.cert_path(), Some(cert_path.as_path()));
    assert!(!format!("{tls:?}").contains("PRIVATE"), "no key material in Debug");
    assert!(TlsSettings::from_pem(cert.cert_pem.as_bytes(), b"not a key").is_err());
}
