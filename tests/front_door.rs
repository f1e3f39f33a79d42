//! The HTTP side of the front door, over real sockets: upgrades, refusals, timeouts.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tungstenite::Message;

#[test]
fn upgrades_and_echoes() {
    let server = start(config(2), |_| wshub::Echo);
    let mut client = connect(server.local_addr(), "/");
    client.send(Message::text("hello")).unwrap();
    assert_eq!(next_text(&mut client), "hello");
    client.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(next_message(&mut client), Message::binary(vec![0u8, 1, 2, 255]));
    stop(server);
}

#[test]
fn a_plain_request_gets_404() {
    let server = start(config(1), |_| wshub::Echo);
    let response = http(server.local_addr(), b"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{response}");
    stop(server);
}

#[test]
fn the_http_hook_answers_plain_requests() {
    struct Health;
    impl wshub::Handler for Health {
        fn on_message(&mut self, _: &mut wshub::Context<'_>, _: Message) {}
        fn on_http(&mut self, request: &wshub::PlainRequest) -> wshub::HttpResponse {
            match request.target.as_str() {
                "/custom" => wshub::HttpResponse::text(200, "OK", "ok"),
                _ => wshub::HttpResponse::not_found(),
            }
        }
    }
    let server = start(config(1), |_| Health);
    let response = http(server.local_addr(), b"GET /custom HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("ok\n"), "{response}");
    stop(server);
}

#[test]
fn malformed_and_wrong_upgrades_get_their_status() {
    let server = start(config(1), |_| wshub::Echo);
    let addr = server.local_addr();
    assert!(http(addr, b"NOT HTTP AT ALL\x01\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let upgrade = "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let post = upgrade.replacen("GET", "POST", 1);
    assert!(http(addr, post.as_bytes()).starts_with("HTTP/1.1 405 "));
    let version = upgrade.replace("Version: 13", "Version: 7");
    let response = http(addr, version.as_bytes());
    assert!(response.starts_with("HTTP/1.1 426 ") && response.contains("Sec-WebSocket-Version: 13"));
    let http10 = upgrade.replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert!(http(addr, http10.as_bytes()).starts_with("HTTP/1.1 400 "));
    let oversized = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert!(http(addr, oversized.as_bytes()).starts_with("HTTP/1.1 431 "));
    stop(server);
}

#[test]
fn a_silent_socket_is_dropped_at_the_handshake_deadline() {
    let mut config = config(1);
    config.handshake_timeout = Duration::from_millis(300);
    let server = start(config, |_| wshub::Echo);
    let mut silent = TcpStream::connect(server.local_addr()).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    eventually("connection accepted", || server.connection_count() == 1);
    assert!(wait_for_eof(&mut silent), "server closes the silent socket");
    eventually("connection released", || server.connection_count() == 0);
    stop(server);
}

#[test]
fn a_slow_request_head_is_dropped_too() {
    // Trickling bytes does not extend the handshake deadline.
    let mut config = config(1);
    config.handshake_timeout = Duration::from_millis(400);
    let server = start(config, |_| wshub::Echo);
    let mut slow = TcpStream::connect(server.local_addr()).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut closed = false;
    for byte in
        b"GET / HTTP/1.1\r\nHost: trickle.example\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle().take(200)
    {
        if slow.write_all(&[*byte]).is_err() || slow.read(&mut [0u8; 64]).map(|n| n == 0).unwrap_or(false) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a request trickled past the deadline is cut off");
    stop(server);
}

#[test]
fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let server = start(config(1), |_| wshub::Echo);
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    bytes.extend(frame(0x81, b"early bird", MASK));
    stream.write_all(&bytes).unwrap();
    let mut reply = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(10).any(|w| w == b"early bird") {
        let n = stream.read(&mut reply).expect("echo arrives");
        assert!(n > 0, "server closed before echoing");
        got.extend_from_slice(&reply[..n]);
    }
    stop(server);
}

#[test]
fn connections_over_the_limit_get_503() {
    let mut config = config(2);
    config.max_connections = 3;
    let server = start(config, |_| wshub::Echo);
    let addr = server.local_addr();
    let mut held: Vec<_> = (0..3).map(|_| connect(addr, "/")).collect();
    let response = http(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
    // A slot frees up when one leaves.
    held.pop().unwrap().close(None).unwrap();
    eventually("slot released", || server.connection_count() == 2);
    let mut again = connect(addr, "/");
    again.send(Message::text("in")).unwrap();
    assert_eq!(next_text(&mut again), "in");
    stop(server);
}
