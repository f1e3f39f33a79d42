//! Topic history over real sockets, with real SQLite files in temporary directories:
//! offsets, recovery across a disconnect, trimming, epochs, restarts, paging, bad input.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;
use wshub::{App, Config, Store};

/// A directory of its own per test, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wshub-history-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn store(&self) -> Store {
        Store::File(self.0.join("history.db"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn history_config(rules: &[&str], store: Store) -> Config {
    Config { history: rules.iter().map(|rule| rule.parse().unwrap()).collect(), store, ..config(2) }
}

fn start(config: Config) -> wshub::Server {
    App::new().start(config).expect("hub starts")
}

/// Publishes `n` on `topic` and waits for its ack (sent once it is stored).
fn publish(client: &mut JsonClient, topic: &str, n: u64) {
    let ack = client.call(json!({"type": "publish", "topic": topic, "data": {"n": n}}), 1_000_000 + n);
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// The next frame, which must be a message on a topic with history: its offset and epoch.
fn next_kept(client: &mut JsonClient) -> (u64, String, Value) {
    let frame = client.next();
    assert_eq!(frame["type"], "message", "{frame}");
    (frame["offset"].as_u64().expect("an offset"), frame["epoch"].as_str().expect("an epoch").into(), frame)
}

fn since(offset: u64, epoch: &str) -> Value {
    json!({"offset": offset, "epoch": epoch})
}

/// A marker broadcast from outside: every client's next frame must be it, so nothing else
/// (no duplicate) was queued before it.
fn assert_nothing_else(server: &wshub::Server, clients: &mut [&mut JsonClient]) {
    server.hub().broadcast(Message::text(r#"{"type":"marker"}"#)).unwrap();
    for client in clients {
        let frame = client.next();
        assert_eq!(frame["type"], "marker", "unexpected frame before the marker: {frame}");
    }
}

#[test]
fn every_subscriber_sees_offsets_increase_by_one_without_gaps() {
    let dir = TempDir::new("offsets");
    let server = start(history_config(&["chat.*=10000"], dir.store()));
    let addr = server.local_addr();
    let mut subscribers: Vec<JsonClient> = (0..4).map(|_| JsonClient::connect(addr, "/")).collect();
    for (i, sub) in subscribers.iter_mut().enumerate() {
        assert_eq!(sub.call(json!({"type": "subscribe", "topic": "chat.a"}), i as u64)["type"], "ack");
    }
    // Two publishers at once, from connections on (likely) different shards.
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            std::thread::spawn(move || {
                let mut publisher = JsonClient::connect(addr, &format!("/?user=p{p}"));
                for n in 0..300 {
                    publisher.send(json!({"type": "publish", "topic": "chat.a", "data": {"p": p, "n": n}}));
                }
                publish(&mut publisher, "chat.a", 300);
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }
    for sub in &mut subscribers {
        let mut epoch = None;
        let mut per_publisher = [0, 0];
        for expected in 1..=602 {
            let (offset, this_epoch, frame) = next_kept(sub);
            assert_eq!(offset, expected, "offsets go up by one: {frame}");
            assert_eq!(epoch.get_or_insert(this_epoch.clone()), &this_epoch);
            if let Some(p) = frame["data"]["p"].as_u64() {
                assert_eq!(frame["data"]["n"], per_publisher[p as usize], "each publisher's order is kept");
                per_publisher[p as usize] += 1;
            }
        }
    }
    let mut refs: Vec<&mut JsonClient> = subscribers.iter_mut().collect();
    assert_nothing_else(&server, &mut refs);
    stop(server);
}

#[test]
fn a_subscriber_that_drops_during_a_burst_recovers_every_missed_message_once_and_in_order() {
    const TOTAL: u64 = 3000;
    let dir = TempDir::new("burst");
    let config = Config { max_replay: TOTAL as usize, ..history_config(&["room=100000/1h"], dir.store()) };
    let server = start(config);
    let addr = server.local_addr();
    let mut sub = JsonClient::connect(addr, "/?user=sub");
    assert_eq!(sub.call(json!({"type": "subscribe", "topic": "room"}), 1)["type"], "ack");
    let burst = std::thread::spawn(move || {
        let mut publisher = JsonClient::connect(addr, "/?user=pub");
        for n in 1..TOTAL {
            publisher.send(json!({"type": "publish", "topic": "room", "data": n}));
        }
        publish(&mut publisher, "room", TOTAL);
    });
    // Drop the connection partway through the burst, remembering the last one seen.
    let (mut last, epoch) = (
        0,
        loop {
            let (offset, epoch, _) = next_kept(&mut sub);
            if offset == 200 {
                break epoch;
            }
        },
    );
    last += 200;
    drop(sub);
    let mut sub = JsonClient::connect(addr, "/?user=sub");
    sub.send(json!({"type": "subscribe", "topic": "room", "id": 2, "since": since(last, &epoch)}));
    let mut acked = false;
    while last < TOTAL {
        let frame = sub.next();
        if frame["type"] == "ack" {
            assert_eq!((frame["id"].as_u64(), frame["recovered"].as_bool()), (Some(2), Some(true)), "{frame}");
            assert!(frame["offset"].as_u64().unwrap() >= last, "the ack follows the replay: {frame}");
            acked = true;
            continue;
        }
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["offset"], last + 1, "each missed message once, in order: {frame}");
        assert_eq!(frame["epoch"], epoch.as_str());
        let n = frame["data"].as_u64().or_else(|| frame["data"]["n"].as_u64());
        assert_eq!(n, Some(last + 1), "offset n carries the nth publication");
        last += 1;
    }
    burst.join().unwrap();
    if !acked {
        let ack = sub.next();
        assert_eq!((ack["type"].as_str(), ack["recovered"].as_bool()), (Some("ack"), Some(true)), "{ack}");
    }
    assert_nothing_else(&server, &mut [&mut sub]);
    stop(server);
}

#[test]
fn recovery_fails_plainly_after_trimming_and_after_an_epoch_change() {
    let server = start(history_config(&["t=5"], Store::Memory));
    let addr = server.local_addr();
    let mut publisher = JsonClient::connect(addr, "/?user=pub");
    for n in 1..=10 {
        publish(&mut publisher, "t", n);
    }
    let mut sub = JsonClient::connect(addr, "/");
    let ack = sub.call(json!({"type": "subscribe", "topic": "t", "since": since(0, "unknown")}), 1);
    assert_eq!((ack["recovered"].as_bool(), ack["offset"].as_u64()), (Some(false), Some(10)), "another epoch: {ack}");
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    sub.call(json!({"type": "unsubscribe", "topic": "t"}), 2);
    // Offsets 1..=5 were trimmed (the topic keeps 5): 3 and 4 cannot be given back.
    let ack = sub.call(json!({"type": "subscribe", "topic": "t", "since": since(2, &epoch)}), 3);
    assert_eq!((ack["recovered"].as_bool(), ack["offset"].as_u64()), (Some(false), Some(10)), "{ack}");
    publish(&mut publisher, "t", 11);
    assert_eq!(next_kept(&mut sub).0, 11, "live delivery goes on after recovered:false");
    sub.call(json!({"type": "unsubscribe", "topic": "t"}), 4);
    // Within what is kept: replayed, then the ack.
    sub.send(json!({"type": "subscribe", "topic": "t", "id": 5, "since": since(8, &epoch)}));
    let replayed: Vec<u64> = (0..3).map(|_| next_kept(&mut sub).0).collect();
    assert_eq!(replayed, [9, 10, 11]);
    let ack = sub.next();
    assert_eq!((ack["id"].as_u64(), ack["recovered"].as_bool()), (Some(5), Some(true)), "{ack}");
    // Up to date: nothing to replay.
    sub.call(json!({"type": "unsubscribe", "topic": "t"}), 6);
    let ack = sub.call(json!({"type": "subscribe", "topic": "t", "since": since(11, &epoch)}), 7);
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_nothing_else(&server, &mut [&mut sub]);
    stop(server);
}

#[test]
fn too_far_behind_for_one_replay_is_told_and_pages_instead() {
    let config = Config { max_replay: 3, ..history_config(&["t=100"], Store::Memory) };
    let server = start(config);
    let mut client = JsonClient::connect(server.local_addr(), "/");
    for n in 1..=7 {
        publish(&mut client, "t", n);
    }
    let page = client.call(json!({"type": "request", "method": "history", "params": {"topic": "t", "limit": 2}}), 1);
    let result = &page["result"];
    let epoch = result["epoch"].as_str().unwrap().to_string();
    let offsets = |result: &Value| {
        result["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!((offsets(result), result["offset"].as_u64()), (vec![1, 2], Some(7)), "{page}");
    assert_eq!(result["messages"][0]["data"], json!({"n": 1}));
    let params = json!({"topic": "t", "since": since(2, &epoch), "limit": 100});
    let page = client.call(json!({"type": "request", "method": "history", "params": params}), 2);
    assert_eq!(offsets(&page["result"]), [3, 4, 5], "a page holds --max-replay at most");
    let ack = client.call(json!({"type": "subscribe", "topic": "t", "since": since(2, &epoch)}), 3);
    assert_eq!(ack["recovered"], false, "5 missed, 3 replayed at most: {ack}");
    assert_nothing_else(&server, &mut [&mut client]);
    stop(server);
}

#[test]
fn a_restart_keeps_history_and_epoch_and_a_wiped_store_starts_a_new_epoch() {
    let dir = TempDir::new("restart");
    let server = start(history_config(&["t=100"], dir.store()));
    let mut client = JsonClient::connect(server.local_addr(), "/");
    publish(&mut client, "t", 1);
    publish(&mut client, "t", 2);
    let page = client.call(json!({"type": "request", "method": "history", "params": {"topic": "t"}}), 1);
    let epoch = page["result"]["epoch"].as_str().unwrap().to_string();
    stop(server);

    let server = start(history_config(&["t=100"], dir.store()));
    let mut client = JsonClient::connect(server.local_addr(), "/");
    client.send(json!({"type": "subscribe", "topic": "t", "id": 1, "since": since(0, &epoch)}));
    assert_eq!(next_kept(&mut client).0, 1);
    assert_eq!(next_kept(&mut client).0, 2);
    assert_eq!(client.next()["recovered"], true);
    client.send(json!({"type": "publish", "topic": "t", "data": 3}));
    let (offset, same_epoch, _) = next_kept(&mut client);
    assert_eq!((offset, same_epoch.as_str()), (3, epoch.as_str()), "offsets go on after a restart");
    stop(server);

    std::fs::remove_dir_all(&dir.0).unwrap();
    std::fs::create_dir_all(&dir.0).unwrap();
    let server = start(history_config(&["t=100"], dir.store()));
    let mut client = JsonClient::connect(server.local_addr(), "/");
    let ack = client.call(json!({"type": "subscribe", "topic": "t", "since": since(3, &epoch)}), 1);
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"], epoch.as_str(), "a wiped store gets a new epoch");
    stop(server);
}

#[test]
fn bad_since_and_topics_without_history_are_refused_with_codes() {
    let server = start(history_config(&["t=100"], Store::Memory));
    let mut client = JsonClient::connect(server.local_addr(), "/");
    publish(&mut client, "t", 1);
    let code = |answer: &Value| answer["code"].as_str().map(String::from).unwrap_or_default();
    let bad = client.call(json!({"type": "subscribe", "topic": "t", "since": {"offset": -1, "epoch": "e"}}), 1);
    assert_eq!(code(&bad), "bad_since", "{bad}");
    let bad = client.call(json!({"type": "subscribe", "topic": "t", "since": {"offset": 1}}), 2);
    assert_eq!(code(&bad), "bad_since", "{bad}");
    let ack = client.call(json!({"type": "subscribe", "topic": "t", "since": since(0, "x")}), 3);
    let epoch = ack["epoch"].as_str().unwrap().to_string();
    client.call(json!({"type": "unsubscribe", "topic": "t"}), 4);
    let beyond = client.call(json!({"type": "subscribe", "topic": "t", "since": since(9, &epoch)}), 5);
    assert_eq!(code(&beyond), "bad_since", "an offset the topic never reached: {beyond}");
    // Refused, so not subscribed: the next publication does not reach it.
    publish(&mut client, "t", 2);
    let none = client.call(json!({"type": "subscribe", "topic": "news", "since": since(0, "x")}), 6);
    assert_eq!(code(&none), "no_history", "{none}");
    let params = json!({"topic": "news"});
    let page = client.call(json!({"type": "request", "method": "history", "params": params}), 7);
    assert_eq!(page["error"]["code"], "no_history", "{page}");
    let params = json!({"topic": "t", "since": 3});
    let page = client.call(json!({"type": "request", "method": "history", "params": params}), 8);
    assert_eq!(page["error"]["code"], "bad_since", "{page}");
    client.call(json!({"type": "subscribe", "topic": "t"}), 9);
    let again = client.call(json!({"type": "subscribe", "topic": "t", "since": since(0, &epoch)}), 10);
    assert_eq!(code(&again), "already_subscribed", "{again}");
    assert_nothing_else(&server, &mut [&mut client]);
    stop(server);
}

#[test]
fn without_history_messages_carry_no_offset() {
    let server = start(config(2));
    let mut client = JsonClient::connect(server.local_addr(), "/");
    client.call(json!({"type": "subscribe", "topic": "t"}), 1);
    client.send(json!({"type": "publish", "topic": "t", "data": 1}));
    let frame = client.next();
    assert!(frame.get("offset").is_none() && frame.get("epoch").is_none(), "{frame}");
    let none = client.call(json!({"type": "subscribe", "topic": "t2", "since": since(0, "x")}), 3);
    assert_eq!(none["code"], "no_history", "{none}");
    stop(server);
}

#[test]
fn the_http_publish_api_writes_through_history() {
    let config = Config { api_keys: vec![wshub::ApiKey::new("k")], ..history_config(&["t=100"], Store::Memory) };
    let server = start(config);
    let addr = server.local_addr();
    let mut sub = JsonClient::connect(addr, "/");
    sub.call(json!({"type": "subscribe", "topic": "t"}), 1);
    for n in 1..=2 {
        let reply = http_once(addr, "POST", "/api/publish", Some("k"), &format!(r#"{{"topic":"t","data":{n}}}"#));
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    assert_eq!(next_kept(&mut sub).0, 1);
    let (offset, _, frame) = next_kept(&mut sub);
    assert_eq!((offset, &frame["data"]), (2, &json!(2)));
    stop(server);
}
