//! Presence and stats across instances over a real, private `redis-server`: each user
//! counted once wherever connected, leaves followed, a killed instance dropping out within
//! the heartbeat's TTL, figures summed over the live instances, and Redis down answered.

mod common;

use common::cluster::*;
use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};

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
