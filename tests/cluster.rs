//! Several instances acting as one over a real, private `redis-server`
//! (`common::redis_server`): topic publications, broadcasts, sends to a user, the HTTP
//! API and application handlers' sends reach every instance's connections exactly once
//! and in order, and a subscription's ack means what any instance publishes next arrives;
//! a Redis outage leaves local delivery going and is recovered from without restarting
//! wshub. Presence, connection ids and filters, and tickets have files of their own
//! (`cluster_*.rs`). Every wait is on a condition (`eventually`), never a sleep.

mod common;

use common::cluster::*;
use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};
use tungstenite::Message;
use wshub::{App, Server};

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
