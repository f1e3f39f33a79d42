//! What the cluster tests share: instances joined to a private `redis-server`
//! (`super::redis_server`), their health and HTTP API, and the frames their clients get.

use serde_json::{json, Value};
use tungstenite::Message;
use wshub::{ApiKey, App, ClusterSettings, Config, ConnId, Server};

use super::redis_server::RedisServer;
use super::*;

pub const KEY: &str = "cluster-key";

/// An instance's config: `shards` shards, joined to the cluster on `redis_url`.
pub fn member_config(redis_url: &str, shards: usize) -> Config {
    Config {
        api_keys: vec![ApiKey::new(KEY)],
        cluster: Some(ClusterSettings { redis: redis_url.parse().unwrap(), prefix: "wshub".into() }),
        ..config(shards)
    }
}

/// An instance running the hub protocol, with two application requests: `announce`,
/// which publishes its params to `room` from a worker thread, and `who`, which answers
/// the cluster's presence of `room` as a worker sees it (`AppContext::presence`).
pub fn member(redis: &RedisServer, shards: usize) -> Server {
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

pub fn health(server: &Server) -> Value {
    http_once(server.local_addr(), "GET", "/health", None, "").json()
}

pub fn await_health(server: &Server, status: &str) {
    eventually(&format!("/health says {status}"), || health(server)["status"] == status);
}

pub fn api(server: &Server, path: &str, body: Value) -> u16 {
    http_once(server.local_addr(), "POST", path, Some(KEY), &body.to_string()).status
}

pub fn subscribe(client: &mut JsonClient, topic: &str) {
    assert_eq!(client.call(json!({"type": "subscribe", "topic": topic}), 1)["type"], "ack");
}

/// The next frame's `data`, checking it is a message.
pub fn next_data(client: &mut JsonClient) -> Value {
    let frame = client.next();
    assert_eq!(frame["type"], "message", "{frame}");
    frame["data"].clone()
}

/// The connection id a client was welcomed with.
pub fn conn_id(client: &JsonClient) -> ConnId {
    ConnId::from_u64(client.welcome["conn"].as_u64().expect("welcome names the connection"))
}

/// Every client's next frame is the marker `server` broadcasts: nothing else came
/// before it (a duplicate, or a delivery meant for another connection).
pub fn nothing_before_a_marker(server: &Server, clients: &mut [&mut JsonClient]) {
    server.hub().broadcast(Message::text(r#"{"type":"marker"}"#)).unwrap();
    for client in clients.iter_mut() {
        let frame = client.next();
        assert_eq!(frame["type"], "marker", "unexpected frame before the marker: {frame}");
    }
}
