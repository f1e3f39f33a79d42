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
use wshub::{ApiKey, App, AuthSettings, ClusterSettings, Config, ConnId, Server};

const KEY: &str = "cluster-key";

/// An instance's config: `shards` shards, joined to the cluster on `redis_url`.
fn member_config(redis_url: &str, shards: usize) -> Config {
    Config {
        api_keys: vec![ApiKey::new(KEY)],
        cluster: Some(ClusterSettings { redis: redis_url.parse().unwrap(), prefix: "wshub".into() }),
        ..config(shards)
    }
}

/// An instance running the hub protocol, with two application requests: `announce`,
/// which publishes its params to `room` from a worker thread, and `who`, which answers
/// the cluster's presence of `room` as a worker sees it (`AppContext::presence`).
fn member(redis: &RedisServer, shards: usize) -> Server {
    let app = App::new()
        .on_request("announce", |cx, params| {
            cx.publish("room", &params)?;
            Ok(json!("announced"))
        })
        .on_request("who", |cx, _| Ok(serde_json::to_value(cx.presence("room")?)?));
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
    publisher.send(json!({"type": "publish", "id": 5, "topic": "room", "data": "during too"}));
    let told = publisher.next();
    assert_eq!((told["type"].as_str(), told["code"].as_str()), (Some("error"), Some("overloaded")), "{told}");
    assert_eq!(told["id"], 5, "the refusal answers the publish it is about, in place of its ack");
    assert_eq!(publisher.call(json!({"type": "ping"}), 6)["type"], "pong", "and nothing else came: {told}");
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

/// Asks `presence` of `topic` through `client` (not subscribed to anything, so the next
/// frame is the answer): the `response` frame.
fn presence(client: &mut JsonClient, topic: &str) -> Value {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let answer = client.call(json!({"type": "request", "method": "presence", "params": {"topic": topic}}), id);
    assert_eq!(answer["type"], "response", "{answer}");
    answer
}

/// Waits until `presence` of `topic`, asked through `client`, lists exactly `users`.
fn await_presence(client: &mut JsonClient, topic: &str, users: &[&str]) {
    let expected = json!({"count": users.len(), "users": users, "truncated": false});
    let mut last = Value::Null;
    let listed = wait_until(PATIENCE, || {
        last = presence(client, topic);
        last["result"] == expected
    });
    assert!(listed, "presence of {topic} never became {expected}; last answer {last}");
}

/// Subscribers on three instances, asked on any instance (one with no subscriber of
/// its own): each user counted once, wherever and however often connected; an
/// unsubscribe or a disconnect removes the user from every instance's answer.
#[test]
fn presence_counts_each_user_once_across_instances_and_follows_leaves() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b, c) = (member(&redis, 2), member(&redis, 1), member(&redis, 1));
    let mut ann_a = JsonClient::connect(a.local_addr(), "/?user=ann");
    let mut ann_b = JsonClient::connect(b.local_addr(), "/?user=ann");
    let mut bob_b = JsonClient::connect(b.local_addr(), "/?user=bob");
    let mut cy_c = JsonClient::connect(c.local_addr(), "/?user=cy");
    for client in [&mut ann_a, &mut ann_b, &mut bob_b, &mut cy_c] {
        subscribe(client, "room");
    }
    let mut askers: Vec<JsonClient> =
        [&a, &b, &c].iter().map(|server| JsonClient::connect(server.local_addr(), "/?user=watcher")).collect();
    for asker in &mut askers {
        await_presence(asker, "room", &["ann", "bob", "cy"]);
    }
    await_presence(&mut askers[0], "elsewhere", &[]);
    let worker = askers[1].call(json!({"type": "request", "method": "who"}), 7);
    assert_eq!(worker["result"], presence(&mut askers[1], "room")["result"], "a worker sees the same: {worker}");

    // ann is still subscribed on A.
    assert_eq!(ann_b.call(json!({"type": "unsubscribe", "topic": "room"}), 2)["type"], "ack");
    assert_eq!(presence(&mut askers[2], "room")["result"]["count"], 3);
    drop(ann_a);
    await_presence(&mut askers[2], "room", &["bob", "cy"]);
    assert_eq!(bob_b.call(json!({"type": "unsubscribe", "topic": "room"}), 2)["type"], "ack");
    await_presence(&mut askers[0], "room", &["cy"]);
    for server in [a, b, c] {
        stop(server);
    }
    assert_eq!(redis.keys("wshub:p*"), Vec::<String>::new(), "stopped instances leave no presence behind");
}

/// A real `wshub` process in the cluster, its log drained to nowhere; killed by the test.
struct Child(std::process::Child);

impl Child {
    fn spawn(redis: &RedisServer) -> (Self, std::net::SocketAddr) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
            .args(["--listen", "127.0.0.1:0", "--shards", "1", "--log-level", "info", "--redis", &redis.url()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.split("listening on ws://").nth(1)?.split_whitespace().next()?.parse().ok())
            .expect("the binary logs its address");
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (Child(child), addr)
    }

    /// SIGKILL: no clean leave, no last heartbeat.
    fn kill(&mut self) {
        self.0.kill().expect("the child is killed");
        self.0.wait().expect("the child is reaped");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An instance killed outright (a separate process, SIGKILL) leaves its presence
/// entries in Redis; its users drop out of every answer once its heartbeat entry expires
/// (3 s after its last renewal), and a live instance then prunes its entries.
#[test]
fn a_killed_instance_drops_out_of_presence_within_the_ttl() {
    let Some(redis) = RedisServer::start() else { return };
    let a = member(&redis, 1);
    let (mut child, child_addr) = Child::spawn(&redis);
    let mut zed = JsonClient::connect(child_addr, "/?user=zed");
    subscribe(&mut zed, "room");
    let mut ann = JsonClient::connect(a.local_addr(), "/?user=ann");
    subscribe(&mut ann, "room");
    let mut asker = JsonClient::connect(a.local_addr(), "/");
    await_presence(&mut asker, "room", &["ann", "zed"]);
    assert_eq!(redis.keys("wshub:p:*:room").len(), 2, "{:?}", redis.keys("wshub:*"));

    child.kill();
    let killed = std::time::Instant::now();
    await_presence(&mut asker, "room", &["ann"]);
    let gone_after = killed.elapsed();
    assert!(gone_after < std::time::Duration::from_millis(4500), "gone after {gone_after:?}, TTL 3 s");
    eventually("the dead instance's entries pruned", || redis.keys("wshub:p:*:room").len() == 1);
    assert_eq!(redis.keys("wshub:pi:*").len(), 1, "only the live instance's index is left");
    stop(a);
}

/// `stats` carries the cluster's totals (summed over the live instances' heartbeats)
/// and each instance's own figures, beside this instance's.
#[test]
fn stats_sum_every_live_instances_figures() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b) = (member(&redis, 2), member(&redis, 1));
    let mut ann_a = JsonClient::connect(a.local_addr(), "/?user=ann");
    subscribe(&mut ann_a, "room");
    subscribe(&mut ann_a, "hall");
    let mut bob_b = JsonClient::connect(b.local_addr(), "/?user=bob");
    subscribe(&mut bob_b, "room");
    let mut ann_b = JsonClient::connect(b.local_addr(), "/?user=ann");
    let mut last = Value::Null;
    let summed = wait_until(PATIENCE, || {
        last = ann_b.call(json!({"type": "request", "method": "stats"}), 5)["result"].clone();
        let cluster = &last["cluster"];
        cluster["instances"] == 2 && cluster["topics"] == 3 && cluster["users"] == 3
    });
    assert!(summed, "cluster totals never became 2 instances, 3 topics, 3 users: {last}");
    assert_eq!((last["topics"].clone(), last["users"].clone()), (json!(1), json!(2)), "B's own: {last}");
    let members = last["cluster"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{last}");
    let own = members.iter().find(|member| member["id"] == last["cluster"]["id"]).expect("this instance listed");
    assert_eq!((own["topics"].clone(), own["users"].clone()), (json!(1), json!(2)), "{last}");
    let summed_in: u64 = members.iter().map(|member| member["messages_in"].as_u64().unwrap()).sum();
    assert_eq!(last["cluster"]["messages_in"], summed_in);
    assert!(summed_in >= 3, "the subscribes counted: {last}");
    // A's view is as of its own last heartbeat, which may have come before B's first.
    eventually("A's /stats lists both instances", || {
        let http = http_once(a.local_addr(), "GET", "/stats", None, "").json();
        http["cluster"]["members"].as_array().map(Vec::len) == Some(2) && http["cluster"]["users"] == 3
    });
    stop(a);
    stop(b);
}

/// While Redis is down a presence request is answered at once with `unavailable`; when
/// Redis is back (empty: it lost everything), every instance writes its presence anew.
#[test]
fn presence_while_redis_is_down_is_unavailable_and_is_rewritten_when_it_returns() {
    let Some(mut redis) = RedisServer::start() else { return };
    let (a, b) = (member(&redis, 1), member(&redis, 1));
    let mut bob = JsonClient::connect(b.local_addr(), "/?user=bob");
    subscribe(&mut bob, "room");
    let mut asker = JsonClient::connect(a.local_addr(), "/");
    await_presence(&mut asker, "room", &["bob"]);

    redis.kill();
    for id in 0..3 {
        let answer = asker.call(json!({"type": "request", "method": "presence", "params": {"topic": "room"}}), id);
        assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    }
    let worker = asker.call(json!({"type": "request", "method": "who"}), 3);
    assert_eq!(worker["error"]["code"], "unavailable", "a worker is told too: {worker}");
    redis.restart();
    await_presence(&mut asker, "room", &["bob"]);
    stop(a);
    stop(b);
}

/// The connection id a client was welcomed with.
fn conn_id(client: &JsonClient) -> ConnId {
    ConnId::from_u64(client.welcome["conn"].as_u64().expect("welcome names the connection"))
}

/// Every client's next frame is the marker `server` broadcasts: nothing else came
/// before it (a duplicate, or a delivery meant for another connection).
fn nothing_before_a_marker(server: &Server, clients: &mut [&mut JsonClient]) {
    server.hub().broadcast(Message::text(r#"{"type":"marker"}"#)).unwrap();
    for client in clients.iter_mut() {
        let frame = client.next();
        assert_eq!(frame["type"], "marker", "unexpected frame before the marker: {frame}");
    }
}

/// Connection ids carry their instance's node number: the first connection of each
/// one-shard instance has the same shard, slot and generation, and still a different
/// id. A send to an id (from a client's `send`, the HTTP API, `Hub::send_to`) goes to
/// that instance alone and reaches that connection once.
#[test]
fn a_send_to_a_connection_id_reaches_that_connection_on_its_instance_once() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b, c) = (member(&redis, 1), member(&redis, 1), member(&redis, 2));
    let mut on_a = JsonClient::connect(a.local_addr(), "/");
    let mut on_b = JsonClient::connect(b.local_addr(), "/");
    let mut named_b = JsonClient::connect(b.local_addr(), "/?user=bob");
    let mut on_c = JsonClient::connect(c.local_addr(), "/");
    let ids = [&on_a, &on_b, &named_b, &on_c].map(conn_id);
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 4, "ids unique across the cluster: {ids:?}");
    let nodes = [ids[0].node(), ids[1].node(), ids[3].node()];
    assert!(
        nodes.iter().all(|&node| node != 0) && nodes[0] != nodes[1] && nodes[1] != nodes[2] && nodes[0] != nodes[2]
    );
    assert_eq!(ids[1].node(), ids[2].node(), "one node number per instance");
    let stats = http_once(b.local_addr(), "GET", "/stats", None, "").json();
    assert_eq!(stats["cluster"]["node"], ids[1].node(), "{stats}");
    for node in nodes {
        redis.await_subscribers(&format!("wshub:n:{node}"), 1);
    }

    // A client's send to a connection without a user goes by its id.
    let ack = on_a.call(json!({"type": "send", "to": ids[1].to_string(), "data": "to b"}), 1);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next_data(&mut on_b), "to b");
    // The hub's send to an id, from outside the shards, and to a named connection.
    a.hub().send_to(ids[2], Message::text(r#"{"type":"message","data":"to bob"}"#)).unwrap();
    assert_eq!(next_data(&mut named_b), "to bob");
    assert_eq!(api(&a, "/api/send", json!({"user": ids[3].to_string(), "data": "to c"})), 202);
    assert_eq!(next_data(&mut on_c), "to c");
    // Its own connections' ids stay on the instance (nothing published for them).
    let published = |server: &Server| {
        http_once(server.local_addr(), "GET", "/stats", None, "").json()["cluster"]["published"].clone()
    };
    let before = published(&a);
    a.hub().send_to(ids[0], Message::text(r#"{"type":"message","data":"to a"}"#)).unwrap();
    assert_eq!(next_data(&mut on_a), "to a");
    assert_eq!(published(&a), before);
    nothing_before_a_marker(&a, &mut [&mut on_a, &mut on_b, &mut named_b, &mut on_c]);
    for server in [a, b, c] {
        stop(server);
    }
}

/// An instance with the `lang` filter and two requests: `lang` stores the params as the
/// connection's `lang`; `shout` sends `text` to the connections whose `lang` is `lang`,
/// through the named filter; `shout_closure` tries the same with a closure.
fn filtering_member(redis: &RedisServer, shards: usize) -> Server {
    let app = App::new()
        .filter("lang", |session, lang| session.get("lang") == Some(lang))
        .on_request("lang", |cx, params| {
            cx.set("lang", params);
            Ok(json!("set"))
        })
        .on_request("shout", |cx, params| {
            cx.send_to_filter("lang", &params["lang"], &params["text"])?;
            Ok(json!("sent"))
        })
        .on_request("shout_closure", |cx, params| {
            let lang = params["lang"].clone();
            cx.send_filtered(move |session| session.get("lang") == Some(&lang), &params["text"])?;
            Ok(json!("sent"))
        });
    let server = app.start(member_config(&redis.url(), shards)).expect("instance starts");
    await_health(&server, "ok");
    server
}

fn speaking(server: &Server, lang: &str) -> JsonClient {
    let mut client = JsonClient::connect(server.local_addr(), "/");
    let answer = client.call(json!({"type": "request", "method": "lang", "params": lang}), 1);
    assert_eq!(answer["result"], "set", "{answer}");
    client
}

/// A named filter's send from one instance runs on every instance over its own
/// sessions: each matching connection gets it once, the others nothing. An instance
/// that has not registered the filter counts it; a closure filter is refused in a
/// cluster rather than reaching one instance only.
#[test]
fn a_filtered_send_reaches_the_matching_sessions_on_every_instance_once() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b, c) = (filtering_member(&redis, 2), filtering_member(&redis, 1), filtering_member(&redis, 1));
    let without = member(&redis, 1);
    let mut fr = [speaking(&a, "fr"), speaking(&a, "fr"), speaking(&b, "fr"), speaking(&c, "fr")];
    let mut others = [speaking(&a, "de"), speaking(&b, "de"), JsonClient::connect(c.local_addr(), "/")];
    let mut elsewhere = JsonClient::connect(without.local_addr(), "/");

    let shout = json!({"type": "request", "method": "shout", "params": {"lang": "fr", "text": "bonjour"}});
    assert_eq!(others[0].call(shout, 2)["result"], "sent");
    for client in &mut fr {
        assert_eq!(next_data(client), "bonjour");
    }
    let unknown =
        || http_once(without.local_addr(), "GET", "/stats", None, "").json()["cluster"]["unknown_filters"].clone();
    eventually("the instance without the filter counts it", || unknown() == 1);

    let closure = json!({"type": "request", "method": "shout_closure", "params": {"lang": "fr", "text": "salut"}});
    let refused = others[0].call(closure, 3);
    assert_eq!(refused["error"]["code"], "local_filter", "{refused}");

    let mut everyone: Vec<&mut JsonClient> = fr.iter_mut().chain(others.iter_mut()).collect();
    everyone.push(&mut elsewhere);
    nothing_before_a_marker(&a, &mut everyone);
    for server in [a, b, c, without] {
        stop(server);
    }
}

/// Node numbers are claimed in Redis (`P:nodeid:N`, 1 to 1023): with every number but
/// one held, an instance takes that one, and frees it when it stops cleanly.
#[test]
fn an_instance_claims_a_free_node_number_and_frees_it_on_a_clean_stop() {
    let Some(redis) = RedisServer::start() else { return };
    let mut held = ::redis::cmd("MSET");
    for number in (1..1024).filter(|&number| number != 77) {
        held.arg(format!("wshub:nodeid:{number}")).arg("another instance");
    }
    redis.run(&mut held);
    let server = member(&redis, 1);
    let client = JsonClient::connect(server.local_addr(), "/");
    assert_eq!(conn_id(&client).node(), 77);
    assert!(redis.get("wshub:nodeid:77").is_some_and(|holder| holder != "another instance"));
    stop(server);
    assert_eq!(redis.get("wshub:nodeid:77"), None, "released");
}

/// An instance that minted ids under a number another instance holds (here: all were
/// held when it reached Redis, so it kept its provisional one) moves to a free number as
/// soon as there is one: new connections get it, and its node channel follows.
#[test]
fn an_instance_whose_node_number_is_taken_moves_new_connections_to_a_free_one() {
    let Some(redis) = RedisServer::start() else { return };
    let mut held = ::redis::cmd("MSET");
    for number in 1..1024 {
        held.arg(format!("wshub:nodeid:{number}")).arg("another instance");
    }
    redis.run(&mut held);
    let server = member(&redis, 1);
    let early = JsonClient::connect(server.local_addr(), "/");
    let provisional = conn_id(&early).node();
    assert!(provisional != 0);
    let free = if provisional == 500 { 501 } else { 500 };
    redis.run(::redis::cmd("DEL").arg(format!("wshub:nodeid:{free}")));
    redis.await_subscribers(&format!("wshub:n:{free}"), 1);
    redis.await_subscribers(&format!("wshub:n:{provisional}"), 0);
    let late = JsonClient::connect(server.local_addr(), "/");
    assert_eq!(conn_id(&late).node(), free);
    assert_eq!(redis.get(&format!("wshub:nodeid:{provisional}")).as_deref(), Some("another instance"));
    stop(server);
}

/// A `subscribe` ack in a cluster comes once this instance's Redis subscription to the
/// topic is in place, so a publication made on another instance right after the ack
/// reaches the subscriber (each topic is new, so each subscription starts from nothing).
#[test]
fn a_subscribe_ack_means_publications_from_other_instances_arrive() {
    let Some(redis) = RedisServer::start() else { return };
    let (a, b) = (member(&redis, 1), member(&redis, 2));
    let mut subscriber = JsonClient::connect(b.local_addr(), "/?user=sub");
    for n in 0..20 {
        let topic = format!("fresh-{n}");
        subscribe(&mut subscriber, &topic);
        let data = serde_json::value::RawValue::from_string(n.to_string()).unwrap();
        a.hub().publish(&topic, "a", &data).unwrap();
        assert_eq!(next_data(&mut subscriber), json!(n), "published on A right after the ack on B");
    }
    nothing_before_a_marker(&b, &mut [&mut subscriber]);
    stop(a);
    stop(b);
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
