//! One-time tickets across instances over a real, private `redis-server`: issued on any
//! instance, taken atomically on any one, refused everywhere after; Redis down answered 503;
//! nothing left behind by a client that leaves while its ticket is checked.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::cluster::*;
use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};
use wshub::{App, AuthSettings, Server};

/// An instance that admits by one-time ticket only (`--auth ticket`), tickets living `ttl`.
fn ticket_member(redis: &RedisServer, ttl: Duration) -> Server {
    let mut config = member_config(&redis.url(), 1);
    config.auth = AuthSettings { tickets: true, ticket_ttl: ttl, ..AuthSettings::default() };
    let server = App::new().start(config).expect("instance starts");
    await_health(&server, "ok");
    server
}

/// `POST /api/ticket` on `server` for `body`.
fn issue(server: &Server, body: Value) -> HttpReply {
    http_once(server.local_addr(), "POST", "/api/ticket", Some(KEY), &body.to_string())
}

/// A ticket for `user` from `server`, which must issue it.
fn ticket_for(server: &Server, user: &str) -> String {
    let reply = issue(server, json!({ "user": user }));
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["ticket"].as_str().unwrap().to_string()
}

/// An upgrade request presenting `ticket`.
fn ticket_upgrade(server: &Server, ticket: &str) -> String {
    format!(
        "GET /?ticket={ticket} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.local_addr()
    )
}

/// The status an upgrade with `ticket` gets on `server` (the client then leaves).
fn use_ticket(server: &Server, ticket: &str) -> u16 {
    let response = http(server.local_addr(), ticket_upgrade(server, ticket).as_bytes());
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn ticket_key(ticket: &str) -> String {
    format!("wshub:ticket:{ticket}")
}

fn exists(redis: &RedisServer, key: &str) -> bool {
    redis.query::<i64>(::redis::cmd("EXISTS").arg(key)).expect("EXISTS") == 1
}

#[test]
fn a_ticket_issued_on_one_instance_opens_a_connection_on_another_once() {
    let Some(redis) = RedisServer::start() else { return };
    let ttl = Duration::from_secs(30);
    let (a, b, c) = (ticket_member(&redis, ttl), ticket_member(&redis, ttl), ticket_member(&redis, ttl));
    let reply = issue(&a, json!({"user": "cy", "subs": ["room"]}));
    assert_eq!((reply.status, reply.json()["expires_in"].as_u64()), (201, Some(30)), "{}", reply.body);
    let ticket = reply.json()["ticket"].as_str().unwrap().to_string();
    assert!(exists(&redis, &ticket_key(&ticket)), "in Redis before the backend has it");

    let mut cy = JsonClient::connect(b.local_addr(), &format!("/?ticket={ticket}"));
    assert_eq!(cy.user(), "cy");
    subscribe(&mut cy, "room");
    let elsewhere = cy.call(json!({"type": "subscribe", "topic": "elsewhere"}), 2);
    assert_eq!(elsewhere["type"], "error", "the ticket's grants came along: {elsewhere}");
    assert_eq!(use_ticket(&c, &ticket), 401, "used once, whichever instance");
    assert_eq!(use_ticket(&a, &ticket), 401);
    assert!(!exists(&redis, &ticket_key(&ticket)));
    // cy is a user of instance B like any other: a send to cy entering on C reaches it.
    redis.await_subscribers("wshub:u:cy", 1);
    assert_eq!(api(&c, "/api/send", json!({"user": "cy", "data": "hi"})), 202);
    assert_eq!(next_data(&mut cy), "hi");

    // Three instances racing for one ticket: exactly one wins.
    let ticket = ticket_for(&b, "dee");
    let ticket = ticket.as_str();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let racers: Vec<_> = [&a, &b, &c].map(|server| scope.spawn(move || use_ticket(server, ticket))).into();
        racers.into_iter().map(|racer| racer.join().unwrap()).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [101, 401, 401], "{statuses:?}");
    for server in [a, b, c] {
        stop(server);
    }
}

#[test]
fn an_expired_ticket_is_refused_on_every_instance() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b) = (ticket_member(&redis, Duration::from_secs(1)), ticket_member(&redis, Duration::from_secs(1)));
    let ticket = ticket_for(&a, "cy");
    let ttl: i64 = redis.query(::redis::cmd("PTTL").arg(ticket_key(&ticket))).unwrap();
    assert!(0 < ttl && ttl <= 1000, "stored with the ticket's lifetime: {ttl} ms");
    eventually("Redis expires the ticket", || !exists(&redis, &ticket_key(&ticket)));
    assert_eq!(use_ticket(&b, &ticket), 401);
    assert_eq!(use_ticket(&a, &ticket), 401);
    stop(a);
    stop(b);
}

#[test]
fn while_redis_is_down_tickets_are_answered_503_and_open_connections_carry_on() {
    let Some(mut redis) = RedisServer::start() else { return };
    let ttl = Duration::from_secs(30);
    let (a, b) = (ticket_member(&redis, ttl), ticket_member(&redis, ttl));
    let spare = ticket_for(&a, "cy");
    let mut dee = JsonClient::connect(b.local_addr(), &format!("/?ticket={}", ticket_for(&a, "dee")));

    redis.kill();
    for server in [&a, &b] {
        await_health(server, "degraded");
    }
    let refused = issue(&a, json!({"user": "eve"}));
    assert_eq!((refused.status, refused.json()["error"].as_str()), (503, Some("cluster_unavailable")));
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(use_ticket(&b, &spare), 503, "cannot be checked: not refused as unknown");
    subscribe(&mut dee, "room");
    assert_eq!(dee.call(json!({"type": "unsubscribe", "topic": "room"}), 2)["type"], "ack");

    redis.restart();
    for server in [&a, &b] {
        await_health(server, "ok");
    }
    // The first question on a connection Redis dropped may still be answered 503.
    eventually("tickets issue and open connections again", || {
        let reply = issue(&a, json!({"user": "eve"}));
        reply.status == 201 && use_ticket(&b, reply.json()["ticket"].as_str().unwrap()) == 101
    });
    stop(a);
    stop(b);
}

#[test]
fn a_client_gone_while_its_ticket_is_taken_leaves_nothing_behind() {
    let Some(redis) = RedisServer::start() else { return };
    let ttl = Duration::from_secs(30);
    let (a, b) = (ticket_member(&redis, ttl), ticket_member(&redis, ttl));
    let ticket = ticket_for(&a, "cy");
    assert!(exists(&redis, &ticket_key(&ticket)));
    // Redis holds writes (GETDEL is one) for a while: the client is gone before the
    // verdict comes.
    redis.run(::redis::cmd("CLIENT").arg("PAUSE").arg(500).arg("WRITE"));
    let mut stream = TcpStream::connect(b.local_addr()).unwrap();
    stream.write_all(ticket_upgrade(&b, &ticket).as_bytes()).unwrap();
    drop(stream);
    eventually("the ticket taken", || !exists(&redis, &ticket_key(&ticket)));
    eventually("no connection left on B", || b.connection_count() == 0);
    eventually("no user left on B", || redis.subscribers("wshub:u:cy") == 0);
    // B goes on serving.
    let mut cy = JsonClient::connect(b.local_addr(), &format!("/?ticket={}", ticket_for(&a, "cy")));
    subscribe(&mut cy, "room");
    stop(a);
    stop(b);
}

/// A verdict that comes after its connection is gone matches nothing, even when another
/// connection waiting for its own verdict holds that slot now (the connection id's
/// generation tells them apart).
#[test]
fn a_late_verdict_does_not_reach_the_connection_that_took_its_slot() {
    let Some(redis) = RedisServer::start() else { return };
    let a = ticket_member(&redis, Duration::from_secs(30));
    let mut config = member_config(&redis.url(), 1);
    config.auth = AuthSettings { tickets: true, ..AuthSettings::default() };
    config.handshake_timeout = Duration::from_millis(1200);
    let b = App::new().start(config).expect("instance starts");
    await_health(&b, "ok");
    let (cy, dee) = (ticket_for(&a, "cy"), ticket_for(&a, "dee"));
    // Redis holds writes for 1.9 s (under the bus's 2 s command timeout): cy's verdict
    // comes after its wait on B ended (1.2 s), while dee's, in the slot cy's left, waits.
    redis.run(::redis::cmd("CLIENT").arg("PAUSE").arg(1900).arg("WRITE"));
    let mut first = TcpStream::connect(b.local_addr()).unwrap();
    first.write_all(ticket_upgrade(&b, &cy).as_bytes()).unwrap();
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    assert!(wait_for_eof(&mut first), "dropped at its deadline");
    let second = JsonClient::connect(b.local_addr(), &format!("/?ticket={dee}"));
    assert_eq!(second.user(), "dee", "cy's late verdict went to the wrong connection");
    stop(a);
    stop(b);
}
