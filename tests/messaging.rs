//! The hub protocol end to end over real sockets, clients spread over 4 shards:
//! pub/sub, broadcast, user sends, requests, acks, bad input, batching, order, cleanup.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tungstenite::Message;
use wshub::{App, AppError, Config};

fn hub_config() -> Config {
    config(4)
}

fn start_hub(app: App, config: Config) -> wshub::Server {
    app.start(config).expect("hub starts")
}

/// A marker broadcast from outside; every client's next frame must be it, which proves
/// nothing else (no duplicate) was queued before it.
fn assert_nothing_else(server: &wshub::Server, clients: &mut [JsonClient]) {
    server.hub().broadcast(Message::text(r#"{"type":"marker"}"#)).unwrap();
    for client in clients {
        let frame = client.next();
        assert_eq!(frame["type"], "marker", "unexpected frame before the marker: {frame}");
    }
}

#[test]
fn publish_reaches_every_subscriber_on_every_shard_exactly_once() {
    let server = start_hub(App::new(), hub_config());
    let addr = server.local_addr();
    let mut subscribers: Vec<JsonClient> = (0..16).map(|_| JsonClient::connect(addr, "/")).collect();
    let shards: std::collections::BTreeSet<u64> = subscribers
        .iter()
        .map(|c| wshub::ConnId::from_u64(c.welcome["conn"].as_u64().unwrap()).shard() as u64)
        .collect();
    assert!(shards.len() >= 2, "subscribers should span shards: {shards:?}");
    for (i, sub) in subscribers.iter_mut().enumerate() {
        assert_eq!(sub.call(json!({"type": "subscribe", "topic": "room"}), i as u64)["type"], "ack");
    }
    let bystander = JsonClient::connect(addr, "/");
    let mut publisher = JsonClient::connect(addr, "/?user=pat");
    assert_eq!(publisher.call(json!({"type": "publish", "topic": "room", "data": {"n": 1}}), 99)["type"], "ack");
    for sub in &mut subscribers {
        let frame = sub.next();
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["topic"], "room");
        assert_eq!(frame["from"], "pat", "from is set by the server");
        assert_eq!(frame["data"], json!({"n": 1}));
        assert!(frame["ts"].as_u64().unwrap() > 0);
    }
    subscribers.push(bystander);
    assert_nothing_else(&server, &mut subscribers);
    stop(server);
}

#[test]
fn unsubscribe_stops_delivery() {
    let server = start_hub(App::new(), hub_config());
    let addr = server.local_addr();
    let mut stays = JsonClient::connect(addr, "/");
    let mut leaves = JsonClient::connect(addr, "/");
    stays.call(json!({"type": "join", "topic": "t"}), 1);
    leaves.call(json!({"type": "subscribe", "topic": "t"}), 1);
    assert_eq!(leaves.call(json!({"type": "leave", "topic": "t"}), 2)["type"], "ack");
    let mut publisher = JsonClient::connect(addr, "/");
    publisher.send(json!({"type": "message", "topic": "t", "data": "after"}));
    assert_eq!(stays.next()["data"], "after");
    assert_nothing_else(&server, &mut [leaves]);
    stop(server);
}

#[test]
fn broadcast_reaches_every_connection_once() {
    let server = start_hub(App::new(), hub_config());
    let addr = server.local_addr();
    let mut clients: Vec<JsonClient> = (0..12).map(|_| JsonClient::connect(addr, "/")).collect();
    let sender = clients[3].user();
    clients[3].send(json!({"type": "broadcast", "data": [1, 2, 3]}));
    for client in &mut clients {
        let frame = client.next();
        assert_eq!((frame["type"].as_str(), frame["from"].as_str()), (Some("message"), Some(sender.as_str())));
        assert!(frame.get("topic").is_none());
    }
    assert_nothing_else(&server, &mut clients);
    stop(server);
}

#[test]
fn send_reaches_all_of_a_users_connections_and_nobody_else() {
    let server = start_hub(App::new(), hub_config());
    let addr = server.local_addr();
    let mut ann: Vec<JsonClient> = (0..5).map(|_| JsonClient::connect(addr, "/?user=ann")).collect();
    let mut others: Vec<JsonClient> = (0..5).map(|_| JsonClient::connect(addr, "/?user=bob")).collect();
    let mut anonymous = JsonClient::connect(addr, "/");
    let anon_id = anonymous.user();
    assert_eq!(anon_id, anonymous.welcome["conn"].to_string(), "no user: known by connection id");

    others[0].call(json!({"type": "send", "to": "ann", "data": "psst"}), 5);
    for client in &mut ann {
        let frame = client.next();
        assert_eq!((frame["data"].as_str(), frame["from"].as_str()), (Some("psst"), Some("bob")));
    }
    others[1].send(json!({"type": "send", "to": anon_id, "data": "by id"}));
    assert_eq!(anonymous.next()["data"], "by id");
    ann.append(&mut others);
    ann.push(anonymous);
    assert_nothing_else(&server, &mut ann);
    stop(server);
}

#[test]
fn requests_get_results_or_errors() {
    let app = App::new().on_request("add", |_ctx, params| {
        let a = params["a"].as_i64().ok_or_else(|| AppError::invalid("a must be a number"))?;
        let b = params["b"].as_i64().ok_or_else(|| AppError::invalid("b must be a number"))?;
        Ok(json!(a + b))
    });
    let server = start_hub(app, hub_config());
    let mut client = JsonClient::connect(server.local_addr(), "/");
    let ok = client.call(json!({"type": "request", "method": "add", "params": {"a": 2, "b": 40}}), 1);
    assert_eq!(ok, json!({"type": "response", "id": 1, "result": 42}));
    let bad = client.call(json!({"type": "request", "method": "add", "params": {"a": "x"}}), 2);
    assert_eq!(bad["error"], json!({"code": "invalid_params", "message": "a must be a number"}));
    let unknown = client.call(json!({"type": "request", "method": "nope"}), 3);
    assert_eq!(unknown["error"]["code"], "unknown_method");
    stop(server);
}

#[test]
fn a_panicking_handler_answers_with_an_error_and_the_pool_survives() {
    let app =
        App::new().workers(1).on_request("boom", |_, _| panic!("handler bug")).on_request("ok", |_, _| Ok(json!(1)));
    let server = start_hub(app, hub_config());
    let mut client = JsonClient::connect(server.local_addr(), "/");
    assert_eq!(client.call(json!({"type": "request", "method": "boom"}), 1)["error"]["code"], "handler_failed");
    assert_eq!(client.call(json!({"type": "request", "method": "ok"}), 2)["result"], 1);
    stop(server);
}

#[test]
fn frames_with_an_id_are_acknowledged_and_pings_answered() {
    let server = start_hub(App::new(), hub_config());
    let mut client = JsonClient::connect(server.local_addr(), "/");
    assert_eq!(client.call(json!({"type": "subscribe", "topic": "a"}), 1), json!({"type": "ack", "id": 1}));
    client.send(json!({"type": "subscribe", "topic": "b"})); // no id: no ack
    assert_eq!(client.call(json!({"type": "ping"}), 2), json!({"type": "pong", "id": 2}));
    client.send(json!({"type": "ping"}));
    assert_eq!(client.next(), json!({"type": "pong"}));
    stop(server);
}

#[test]
fn bad_input_gets_an_error_frame_and_the_connection_stays_open() {
    let mut config = hub_config();
    config.max_subscriptions = 2;
    let server = start_hub(App::new(), config);
    let mut client = JsonClient::connect(server.local_addr(), "/");
    let expect_error = |client: &mut JsonClient, frame: Message, code: &str| {
        client.ws.send(frame).unwrap();
        let error = client.next();
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some(code)), "{error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
        assert_eq!(client.call(json!({"type": "ping"}), 1000)["type"], "pong", "still open after {code}");
    };
    expect_error(&mut client, Message::text("{not json"), "bad_json");
    expect_error(&mut client, Message::text(r#"{"no":"type"}"#), "bad_json");
    expect_error(&mut client, Message::text(r#"{"type":"frobnicate"}"#), "unknown_type");
    expect_error(&mut client, Message::text(r#"{"type":"publish","topic":"t"}"#), "bad_field");
    expect_error(&mut client, Message::text(r#"{"type":"send","to":7,"data":1}"#), "bad_field");
    expect_error(&mut client, Message::text(r#"{"type":"subscribe","topic":""}"#), "bad_topic");
    let long = json!({"type": "subscribe", "topic": "x".repeat(257)}).to_string();
    expect_error(&mut client, Message::text(long), "bad_topic");
    expect_error(&mut client, Message::binary(vec![1, 2, 3]), "binary_not_supported");
    client.call(json!({"type": "subscribe", "topic": "one"}), 1);
    client.call(json!({"type": "subscribe", "topic": "two"}), 2);
    let refused = client.call(json!({"type": "subscribe", "topic": "three"}), 3);
    assert_eq!(refused["code"], "too_many_subscriptions");
    let request = client.call(json!({"type": "request", "method": "presence", "params": {}}), 4);
    assert_eq!(request["error"]["code"], "bad_field");
    let request = client.call(json!({"type": "request", "method": "presence", "params": {"topic": ""}}), 5);
    assert_eq!(request["error"]["code"], "bad_topic");
    expect_error(&mut client, Message::text(r#"["subscribe",null,"arr"]"#), "bad_json");
    stop(server);
}

#[test]
fn batching_coalesces_a_burst_into_few_frames_in_order() {
    let mut config = hub_config();
    config.batch = vec!["tick.*=300ms".parse().unwrap()];
    let server = start_hub(App::new(), config);
    let addr = server.local_addr();
    let mut subscriber = JsonClient::connect(addr, "/");
    subscriber.call(json!({"type": "subscribe", "topic": "tick.btc"}), 1);
    subscriber.call(json!({"type": "subscribe", "topic": "plain"}), 2);
    let mut publisher = JsonClient::connect(addr, "/");
    for n in 0..50 {
        publisher.send(json!({"type": "publish", "topic": "tick.btc", "data": n}));
    }
    publisher.send(json!({"type": "publish", "topic": "plain", "data": "now"}));
    // The unbatched topic overtakes the held burst.
    assert_eq!(subscriber.next()["data"], "now");
    let mut items = Vec::new();
    let mut frames = 0;
    while items.len() < 50 {
        let frame = subscriber.next();
        assert_eq!((frame["type"].as_str(), frame["topic"].as_str()), (Some("batch"), Some("tick.btc")), "{frame}");
        items.extend(frame["d"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()));
        frames += 1;
    }
    assert_eq!(items, (0..50).collect::<Vec<_>>(), "every item once, in order");
    assert!(frames < 50, "a burst of 50 coalesced into {frames} frames");
    stop(server);
}

#[test]
fn one_publishers_messages_arrive_in_order_at_every_subscriber() {
    let server = start_hub(App::new(), hub_config());
    let addr = server.local_addr();
    let mut subscribers: Vec<JsonClient> = (0..8).map(|_| JsonClient::connect(addr, "/")).collect();
    for sub in &mut subscribers {
        sub.call(json!({"type": "subscribe", "topic": "seq"}), 0);
    }
    let mut publisher = JsonClient::connect(addr, "/");
    for n in 0..300 {
        publisher.send(json!({"type": "publish", "topic": "seq", "data": n}));
    }
    for sub in &mut subscribers {
        for n in 0..300 {
            assert_eq!(sub.next()["data"], n);
        }
    }
    stop(server);
}

#[test]
fn presence_spans_shards_and_indexes_empty_when_everyone_leaves() {
    let server = start_hub(App::new(), hub_config());
    let addr = server.local_addr();
    let mut clients: Vec<JsonClient> =
        ["ann", "bob", "ann", "cy"].iter().map(|u| JsonClient::connect(addr, &format!("/?user={u}"))).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.call(json!({"type": "subscribe", "topic": "lobby"}), i as u64);
        client.call(json!({"type": "subscribe", "topic": format!("own.{i}")}), 10 + i as u64);
    }
    let presence = clients[0].call(json!({"type": "request", "method": "presence", "params": {"topic": "lobby"}}), 50);
    assert_eq!(presence["result"], json!({"count": 3, "users": ["ann", "bob", "cy"], "truncated": false}));
    let stats = clients[0].call(json!({"type": "request", "method": "stats"}), 51);
    assert_eq!(stats["result"]["connections"], 4);
    assert_eq!(stats["result"]["topics"], 5);

    drop(clients);
    eventually("connections gone", || server.connection_count() == 0);
    let stats = server.hub().stats();
    assert_eq!((stats.connections, stats.topics, stats.sessions), (0, 0, 0), "{stats:?}");
    assert_eq!(server.hub().presence("lobby").count, 0);
    stop(server);
}

#[test]
fn custom_events_session_data_and_filtered_sends() {
    let app = App::new()
        .on("set_lang", |ctx, data| {
            let lang = data.as_str().ok_or_else(|| AppError::invalid("a language code"))?;
            ctx.set("lang", json!(lang));
            Ok(())
        })
        .on("announce", |ctx, data| {
            let lang = data["lang"].clone();
            ctx.send_filtered(move |session| session.get("lang") == Some(&lang), &data["text"])?;
            ctx.reply(&json!({"type": "announced", "by": ctx.user(), "lang": ctx.get("lang")}))
        });
    let server = start_hub(app, hub_config());
    let addr = server.local_addr();
    let mut finns: Vec<JsonClient> = (0..3).map(|_| JsonClient::connect(addr, "/")).collect();
    let mut swedes: Vec<JsonClient> = (0..3).map(|_| JsonClient::connect(addr, "/")).collect();
    for (i, c) in finns.iter_mut().enumerate() {
        assert_eq!(c.call(json!({"type": "set_lang", "data": "fi"}), i as u64)["type"], "ack");
    }
    for (i, c) in swedes.iter_mut().enumerate() {
        c.call(json!({"type": "set_lang", "data": "sv"}), i as u64);
    }
    let error = swedes[0].call(json!({"type": "set_lang", "data": 5}), 9);
    assert_eq!(error["code"], "invalid_params");
    let mut announcer = JsonClient::connect(addr, "/?user=mod");
    announcer.send(json!({"type": "announce", "data": {"lang": "fi", "text": "hei"}}));
    for finn in &mut finns {
        let frame = finn.next();
        assert_eq!((frame["data"].as_str(), frame["from"].as_str()), (Some("hei"), Some("mod")));
    }
    let reply = announcer.next();
    assert_eq!(reply, json!({"type": "announced", "by": "mod", "lang": null}));
    assert_nothing_else(&server, &mut swedes);
    stop(server);
}

#[test]
fn a_slow_handler_does_not_hold_up_the_shard() {
    let app = App::new().workers(2).on_request("slow", |_, _| {
        std::thread::sleep(Duration::from_millis(300));
        Ok(json!("done"))
    });
    let server = start_hub(app, hub_config());
    let mut client = JsonClient::connect(server.local_addr(), "/");
    client.send(json!({"type": "request", "id": 1, "method": "slow"}));
    // Answered while the slow request is still running on a worker.
    client.send(json!({"type": "ping", "id": 2}));
    assert_eq!(client.next(), json!({"type": "pong", "id": 2}));
    assert_eq!(client.next()["result"], "done");
    stop(server);
}

#[test]
fn one_connections_events_are_handled_in_order_across_workers() {
    let app = App::new().workers(4).on("step", |ctx, data| {
        // Uneven work: without per-connection ordering, later steps would overtake.
        let n = data.as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_millis((7 * n) % 5));
        ctx.reply(&json!({"type": "done", "n": n}))
    });
    let server = start_hub(app, hub_config());
    let mut client = JsonClient::connect(server.local_addr(), "/");
    for n in 0..40 {
        client.send(json!({"type": "step", "data": n}));
    }
    for n in 0..40 {
        assert_eq!(client.next(), json!({"type": "done", "n": n}));
    }
    stop(server);
}
