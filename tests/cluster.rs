//! Several instances acting as one over a real, private `redis-server`
//! (`common::redis_server`): topic publications, broadcasts, sends to a user, the HTTP
//! API and application handlers' sends reach every instance's connections exactly once
//! and in order; one-time tickets issued on any instance open one connection on any
//! instance; a Redis outage leaves local delivery going and is recovered from without
//! restarting wshub. Every wait is on a condition (`eventually`), never a sleep.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};
use tungstenite::Message;
use wshub::{ApiKey, App, AuthSettings, ClusterSettings, Config, Server};

const KEY: &str = "cluster-key";

/// An instance's config: `shards` shards, joined to the cluster on `redis_url`.
fn member_config(redis_url: &str, shards: usize) -> Config {
    Config {
        api_keys: vec![ApiKey::new(KEY)],
        cluster: Some(ClusterSettings { redis: redis_url.parse().unwrap(), prefix: "wshub".into() }),
        ..config(shards)
    }
}

/// An instance running the hub protocol, with one application request (`announce`, which
/// publishes its params to `room` from a worker thread).
fn member(redis: &RedisServer, shards: usize) -> Server {
    let app = App::new().on_request("announce", |cx, params| {
        cx.publish("room", &params)?;
        Ok(json!("announced"))
    });
    let server = app.start(member_config(&redis.url(), shards)).expect("instance starts");
    await_health(&server, "ok");
    server
}

fn health(server: &Server) -> Value {
    http_once(server.local_addr(), "GET", "/health", None, "").json()
}

fn await_health(server: &Server, status: &str) {
    eventually(&format!("/health says {status}"), || health(server)["status"] == status);
}

fn api(server: &Server, path: &str, body: Value) -> u16 {
    http_once(server.local_addr(), "POST", path, Some(KEY), &body.to_string()).status
}

fn subscribe(client: &mut JsonClient, topic: &str) {
    assert_eq!(client.call(json!({"type": "subscribe", "topic": topic}), 1)["type"], "ack");
}

/// The next frame's `data`, checking it is a message.
fn next_data(client: &mut JsonClient) -> Value {
    let frame = client.next();
    assert_eq!(frame["type"], "message", "{frame}");
    frame["data"].clone()
}

#[test]
fn publications_broadcasts_and_user_sends_reach_every_instance_exactly_once() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b, c) = (member(&redis, 2), member(&redis, 2), member(&redis, 1));
    let mut ann_a = JsonClient::connect(a.local_addr(), "/?user=ann");
    let mut ann_b = JsonClient::connect(b.local_addr(), "/?user=ann");
    let mut bob_b = JsonClient::connect(b.local_addr(), "/?user=bob");
    let mut cy_c = JsonClient::connect(c.local_addr(), "/?user=cy");
    subscribe(&mut ann_a, "room");
    subscribe(&mut bob_b, "room");
    redis.await_subscribers("wshub:t:room", 2);
    // A user's channel on the instances where the user is, and only there.
    redis.await_subscribers("wshub:u:ann", 2);
    redis.await_subscribers("wshub:u:cy", 1);

    // Everything below enters on instance C, so it leaves C's bus in order: the closing
    // marker follows all of it, and a duplicate would come before the marker.
    let ack = cy_c.call(json!({"type": "publish", "topic": "room", "data": {"n": 1}}), 2);
    assert_eq!(ack["type"], "ack", "{ack}");
    for client in [&mut ann_a, &mut bob_b] {
        let frame = client.next();
        assert_eq!(
            (frame["topic"].clone(), frame["from"].clone(), frame["data"].clone()),
            (json!("room"), json!("cy"), json!({"n": 1}))
        );
    }

    assert_eq!(api(&c, "/api/broadcast", json!({"data": "all"})), 202);
    for client in [&mut ann_a, &mut ann_b, &mut bob_b, &mut cy_c] {
        assert_eq!(next_data(client), "all");
    }

    assert_eq!(api(&c, "/api/send", json!({"user": "ann", "data": "to ann"})), 202);
    for client in [&mut ann_a, &mut ann_b] {
        assert_eq!(next_data(client), "to ann");
    }

    assert_eq!(api(&c, "/api/publish", json!({"topic": "room", "data": "via api"})), 202);
    for client in [&mut ann_a, &mut bob_b] {
        assert_eq!(next_data(client), "via api");
    }

    let request = json!({"type": "request", "method": "announce", "params": {"from": "worker"}});
    assert_eq!(cy_c.call(request, 3)["result"], "announced");
    for client in [&mut ann_a, &mut bob_b] {
        assert_eq!(next_data(client), json!({"from": "worker"}));
    }

    c.hub().broadcast(Message::text(r#"{"type":"marker"}"#)).unwrap();
    for client in [&mut ann_a, &mut ann_b, &mut bob_b, &mut cy_c] {
        let frame = client.next();
        assert_eq!(frame["type"], "marker", "unexpected frame before the marker: {frame}");
    }
    let stats = http_once(c.local_addr(), "GET", "/stats", None, "").json();
    assert_eq!(stats["cluster"]["redis_up"], true, "{stats}");
    assert_eq!(stats["cluster"]["refused"], 0);
    assert_eq!(stats["cluster"]["dropped"], 0);
    for server in [a, b, c] {
        stop(server);
    }
}

#[test]
fn a_thousand_publications_arrive_in_order_once_on_every_instance() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b, c) = (member(&redis, 2), member(&redis, 1), member(&redis, 1));
    let mut subscribers: Vec<JsonClient> =
        [&a, &b, &c].iter().map(|server| JsonClient::connect(server.local_addr(), "/")).collect();
    for client in &mut subscribers {
        subscribe(client, "seq");
    }
    redis.await_subscribers("wshub:t:seq", 3);
    let mut publisher = JsonClient::connect(a.local_addr(), "/?user=pub");
    for n in 0..1000 {
        publisher.send(json!({"type": "publish", "topic": "seq", "data": n}));
    }
    publisher.send(json!({"type": "publish", "topic": "seq", "data": "end"}));
    for client in &mut subscribers {
        let received: Vec<Value> = (0..1001).map(|_| next_data(client)).collect();
        let expected: Vec<Value> = (0..1000).map(|n| json!(n)).chain([json!("end")]).collect();
        assert!(received == expected, "out of order or duplicated: first differing at {:?}", {
            received.iter().zip(&expected).position(|(got, want)| got != want)
        });
    }
    // Nothing after the last one either: a marker from the same instance comes next.
    a.hub().broadcast(Message::text(r#"{"type":"marker"}"#)).unwrap();
    for client in &mut subscribers {
        assert_eq!(client.next()["type"], "marker");
    }
    for server in [a, b, c] {
        stop(server);
    }
}

#[test]
fn a_redis_outage_keeps_local_delivery_and_the_cluster_recovers_without_a_restart() {
    let Some(mut redis) = RedisServer::start() else { return };
    let (a, b) = (member(&redis, 1), member(&redis, 1));
    let mut local = JsonClient::connect(a.local_addr(), "/");
    let mut remote = JsonClient::connect(b.local_addr(), "/");
    subscribe(&mut local, "room");
    subscribe(&mut remote, "room");
    redis.await_subscribers("wshub:t:room", 2);
    assert_eq!(api(&a, "/api/publish", json!({"topic": "room", "data": "before"})), 202);
    assert_eq!((next_data(&mut local), next_data(&mut remote)), (json!("before"), json!("before")));

    redis.kill();
    for server in [&a, &b] {
        await_health(server, "degraded");
    }
    let reason = health(&a)["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("Redis unreachable"), "{reason}");
    // Local delivery goes on; the publisher is told the other instances missed it.
    assert_eq!(api(&a, "/api/publish", json!({"topic": "room", "data": "during"})), 503);
    assert_eq!(next_data(&mut local), "during");
    let mut publisher = JsonClient::connect(a.local_addr(), "/");
    publisher.send(json!({"type": "publish", "topic": "room", "data": "during too"}));
    let told = publisher.next();
    assert_eq!((told["type"].as_str(), told["code"].as_str()), (Some("error"), Some("overloaded")), "{told}");
    assert_eq!(next_data(&mut local), "during too");
    let metrics = http_once(a.local_addr(), "GET", "/metrics", None, "").body;
    assert!(metrics.contains("\nwshub_redis_up 0\n"), "{metrics}");
    assert!(metrics.contains("\nwshub_redis_refused_total 2\n"), "{metrics}");

    redis.restart();
    for server in [&a, &b] {
        await_health(server, "ok");
    }
    redis.await_subscribers("wshub:t:room", 2);
    assert_eq!(api(&a, "/api/publish", json!({"topic": "room", "data": "after"})), 202);
    assert_eq!(next_data(&mut local), "after");
    assert_eq!(next_data(&mut remote), "after", "what Redis never took is not delivered late");
    let stats = http_once(a.local_addr(), "GET", "/stats", None, "").json();
    assert!(stats["cluster"]["reconnects"].as_u64().unwrap() >= 2, "both links came back: {stats}");
    stop(a);
    stop(b);
}

/// A topic batched by `--batch` on the receiving instance: the payload crosses inside the
/// frame (not twice) and is batched there like a local publication.
#[test]
fn a_batched_topic_is_batched_on_the_receiving_instance_too() {
    let Some(redis) = RedisServer::start() else { return };
    let batched = |shards| {
        let mut config = member_config(&redis.url(), shards);
        config.batch = vec!["tick.*=100ms".parse().unwrap()];
        let server = App::new().start(config).expect("instance starts");
        await_health(&server, "ok");
        server
    };
    let (a, b) = (batched(1), batched(1));
    let mut subscriber = JsonClient::connect(b.local_addr(), "/");
    subscribe(&mut subscriber, "tick.btc");
    redis.await_subscribers("wshub:t:tick.btc", 1);
    let mut publisher = JsonClient::connect(a.local_addr(), "/");
    for n in 0..20 {
        publisher.send(json!({"type": "publish", "topic": "tick.btc", "data": {"n": n}}));
    }
    let mut items = Vec::new();
    while items.len() < 20 {
        let frame = subscriber.next();
        assert_eq!((frame["type"].as_str(), frame["topic"].as_str()), (Some("batch"), Some("tick.btc")), "{frame}");
        items.extend(frame["d"].as_array().unwrap().iter().map(|item| item["n"].as_u64().unwrap()));
    }
    assert_eq!(items, (0..20).collect::<Vec<_>>(), "every item once, in order");
    stop(a);
    stop(b);
}

/// Every instance renews its entry among the members each second, with a 3 s TTL:
/// `/stats` counts the live instances and their connections; one that stops cleanly
/// leaves at once, and one that stops renewing (a crash, played here by an entry written
/// by hand and never renewed) drops out when its entry expires.
#[test]
fn stats_count_the_live_instances_and_a_silent_one_drops_out_within_the_ttl() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b, c) = (member(&redis, 2), member(&redis, 1), member(&redis, 1));
    let _clients = [JsonClient::connect(a.local_addr(), "/"), JsonClient::connect(b.local_addr(), "/")];
    let cluster = |server: &Server| http_once(server.local_addr(), "GET", "/stats", None, "").json()["cluster"].clone();
    // Each /stats request is a connection of its own while it is answered, so a
    // heartbeat may count it: wait for the quiet figure.
    eventually("3 instances holding the 2 clients", || {
        let stats = cluster(&a);
        stats["instances"] == 3 && stats["connections"] == 2
    });
    redis.run(
        ::redis::cmd("SET")
            .arg("wshub:node:42")
            .arg(r#"{"connections":5,"messages_in":0,"messages_out":0}"#)
            .arg("PX")
            .arg(5000),
    );
    redis.run(::redis::cmd("SADD").arg("wshub:nodes").arg("42"));
    eventually("a 4th instance with 5 connections", || {
        let stats = cluster(&b);
        stats["instances"] == 4 && stats["connections"] == 7
    });
    eventually("the silent one gone after its TTL", || cluster(&b)["instances"] == 3);
    stop(c);
    eventually("the stopped one gone", || cluster(&a)["instances"] == 2);
    let metrics = http_once(a.local_addr(), "GET", "/metrics", None, "").body;
    assert!(metrics.contains("\nwshub_cluster_instances 2\n"), "{metrics}");
    stop(a);
    stop(b);
}

/// Needs no Redis: an instance whose Redis is not there starts, serves its own
/// connections, and says it is degraded.
#[test]
fn an_instance_starts_and_serves_locally_while_its_redis_is_unreachable() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = App::new().start(member_config(&format!("redis://127.0.0.1:{port}"), 1)).unwrap();
    await_health(&server, "degraded");
    let mut subscriber = JsonClient::connect(server.local_addr(), "/");
    subscribe(&mut subscriber, "room");
    assert_eq!(api(&server, "/api/publish", json!({"topic": "room", "data": "local"})), 503);
    assert_eq!(next_data(&mut subscriber), "local");
    let metrics = http_once(server.local_addr(), "GET", "/metrics", None, "").body;
    assert!(metrics.contains("\nwshub_redis_up 0\n") && metrics.contains("\nwshub_redis_channels 0\n"), "{metrics}");
    stop(server);
}

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
