//! [`Wire`] over real loopback sockets against a rustls server thread (blocking, with a
//! certificate made by rcgen), and the ways `--ca` can be wrong.

use super::*;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::PrivateKeyDer;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A certificate for localhost and 127.0.0.1 (like scripts/gencert.sh's), written as
/// `<name>.pem` in a fresh directory, and a server configuration using it.
fn cert(name: &str) -> (PathBuf, Arc<ServerConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("wshub-load-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, certified.cert.pem()).unwrap();
    let key = PrivateKeyDer::try_from(certified.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    (path, Arc::new(server))
}

/// `TlsClient::load`, then the certificate's directory goes.
fn load_once(ca: &Path, server_name: &str) -> Result<TlsClient, String> {
    let loaded = TlsClient::load(ca, server_name);
    let _ = std::fs::remove_dir_all(ca.parent().unwrap());
    loaded
}

/// A server that echoes `len` bytes back over TLS (or just handshakes and hangs up).
fn echo_server(config: Arc<ServerConfig>, len: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut stream = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
        let mut data = vec![0; len];
        if stream.read_exact(&mut data).is_ok() {
            let _ = stream.write_all(&data).and_then(|()| stream.flush());
        }
    });
    addr
}

/// Sends `data` through a fresh client Wire and reads as many bytes back, driving both from
/// one edge-triggered poll as `conn` does; the first error ends it.
fn round_trip(addr: std::net::SocketAddr, client: &TlsClient, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut poll = Poll::new()?;
    let mut wire = Wire::new(TcpStream::connect(addr)?, Some(client))?;
    poll.registry().register(wire.tcp_mut(), Token(0), Interest::READABLE | Interest::WRITABLE)?;
    let (mut events, mut sent, mut got) = (Events::with_capacity(8), 0, Vec::new());
    let mut buf = vec![0; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < data.len() {
        assert!(Instant::now() < deadline, "stuck at sent {sent}, got {}", got.len());
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        if wire.tcp().peer_addr().is_err() {
            continue; // still connecting
        }
        loop {
            let mut progress = false;
            if sent < data.len() {
                match wire.write(&data[sent..]) {
                    Ok(n) => (sent, progress) = (sent + n, true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            match wire.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => (progress, _) = (true, got.extend_from_slice(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !progress || got.len() == data.len() {
                break;
            }
        }
    }
    Ok(got)
}

#[test]
fn bytes_go_both_ways_through_partial_writes() {
    let (ca, server) = cert("both-ways");
    // Far more than the session's 64 KiB buffer and the socket's: many partial writes.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let addr = echo_server(server, data.len());
    let client = load_once(&ca, "127.0.0.1").unwrap();
    assert_eq!(round_trip(addr, &client, &data).unwrap(), data);
}

#[test]
fn a_certificate_for_another_name_is_a_tls_error() {
    let (ca, server) = cert("other-name");
    let addr = echo_server(server, 10);
    let client = load_once(&ca, "example.com").unwrap();
    let err = round_trip(addr, &client, b"0123456789").unwrap_err();
    assert!(is_tls_error(&err), "{err}");
    assert!(err.to_string().contains("TLS: invalid peer certificate"), "{err}");
}

#[test]
fn an_untrusted_certificate_is_a_tls_error() {
    let (ca, server) = cert("untrusted-server");
    let _ = std::fs::remove_dir_all(ca.parent().unwrap());
    let (other_ca, _) = cert("untrusted-ca");
    let addr = echo_server(server, 10);
    let client = load_once(&other_ca, "127.0.0.1").unwrap();
    let err = round_trip(addr, &client, b"0123456789").unwrap_err();
    // rcgen gives every certificate the same subject, so it is the signature that fails.
    assert!(is_tls_error(&err) && err.to_string().contains("TLS: invalid peer certificate"), "{err}");
}

#[test]
fn bad_ca_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("wshub-load-tls-{}-bad", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = TlsClient::load(&dir.join("missing.pem"), "127.0.0.1").unwrap_err();
    assert!(missing.contains("missing.pem") && missing.contains("I/O error"), "{missing}");

    let key_only = dir.join("key.pem");
    std::fs::write(&key_only, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    assert!(TlsClient::load(&key_only, "127.0.0.1").unwrap_err().contains("no certificate"));

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n").unwrap();
    assert!(TlsClient::load(&garbage, "127.0.0.1").unwrap_err().contains("certificate 1"));

    let _ = std::fs::remove_dir_all(&dir);
    let (ca, _) = cert("bad-name");
    assert!(load_once(&ca, "not a name!").unwrap_err().contains("not a TLS server name"));
}
