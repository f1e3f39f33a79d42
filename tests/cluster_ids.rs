//! Connection ids and filtered sends across instances over a real, private
//! `redis-server`: ids unique across the cluster (each carries its instance's claimed node
//! number) and a send to one reaching it once; a named filter run on every instance.

mod common;

use common::cluster::*;
use common::redis_server::RedisServer;
use common::*;
use serde_json::json;
use tungstenite::Message;
use wshub::{App, Server};

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
