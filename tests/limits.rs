//! Abuse limits over real sockets: messages per second per connection (refused, then
//! recovered, or closed with 1008 when it persists) and connections per source address.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use wshub::{App, Config};

fn limited(rate: u32, burst: u32) -> Config {
    Config { max_messages_per_second: rate, message_burst: burst, ..config(1) }
}

/// Sends `count` pings with ids at once; returns each answer's type or error code, in order.
fn ping_burst(client: &mut JsonClient, count: u64, first_id: u64) -> Vec<String> {
    for id in first_id..first_id + count {
        client.send(json!({"type": "ping", "id": id}));
    }
    (0..count)
        .map(|_| {
            let answer = client.next();
            answer["code"].as_str().unwrap_or(answer["type"].as_str().unwrap()).to_string()
        })
        .collect()
}

#[test]
fn over_the_rate_messages_are_refused_until_the_bucket_refills() {
    let server = App::new().start(limited(5, 5)).unwrap();
    let mut client = JsonClient::connect(server.local_addr(), "/");
    let answers = ping_burst(&mut client, 8, 1);
    assert_eq!(&answers[..5], ["pong"; 5], "the burst goes through");
    assert_eq!(&answers[5..], ["rate_limited"; 3]);
    // Refilling at 5 a second: after a second the client may send again. A fixed wait on
    // purpose: the refill is a function of time alone, nothing announces it, and probing
    // by sending would count refusals toward the 1008 close or spend the tokens under
    // test. Waiting past the 600 ms three tokens take cannot hurt: the bucket holds at
    // most its burst of 5.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ping_burst(&mut client, 3, 100), ["pong"; 3], "recovered");
    // Another connection was never limited.
    let mut other = JsonClient::connect(server.local_addr(), "/");
    assert_eq!(ping_burst(&mut other, 5, 1), ["pong"; 5]);
    stop(server);
}

#[test]
fn a_client_that_keeps_flooding_is_closed_with_1008() {
    let server = App::new().start(limited(2, 2)).unwrap();
    let mut flooder = JsonClient::connect(server.local_addr(), "/");
    for id in 0..40 {
        flooder.send(json!({"type": "ping", "id": id}));
    }
    assert_eq!(close_code(&mut flooder.ws), CloseCode::Policy);
    stop(server);
}

/// A connection from the source address `from` (anywhere in 127.0.0.0/8).
fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&server.into()).unwrap();
    socket.into()
}

#[test]
fn each_address_may_hold_only_so_many_connections() {
    let server = App::new().start(Config { max_connections_per_ip: 2, ..config(2) }).unwrap();
    let addr = server.local_addr();
    let first = upgrade_raw(connect_from("127.0.0.7", addr));
    let _second = upgrade_raw(connect_from("127.0.0.7", addr));
    let third = send_upgrade(&mut connect_from("127.0.0.7", addr)).0;
    assert_eq!(third, 429, "a third from the same address");
    let _elsewhere = upgrade_raw(connect_from("127.0.0.8", addr));
    drop(first);
    eventually("the slot is released", || send_upgrade(&mut connect_from("127.0.0.7", addr)).0 == 101);
    stop(server);
}
