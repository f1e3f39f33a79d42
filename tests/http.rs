//! The HTTP side over real sockets: the publish API reaching WebSocket clients, health,
//! stats and Prometheus metrics, keep-alive and pipelining, body limits, and a slow HTTP
//! client that must not hold up anyone else.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::json;
use wshub::ApiKey;
use wshub::{App, Config, Server};

const KEY: &str = "test-key-1";

fn hub(config: Config) -> Server {
    App::new().start(Config { api_keys: vec![ApiKey::new(KEY)], ..config }).expect("hub starts")
}

/// Subscribes a fresh client to `topic` and waits for the ack.
fn subscriber(server: &Server, path: &str, topic: &str) -> JsonClient {
    let mut client = JsonClient::connect(server.local_addr(), path);
    assert_eq!(client.call(json!({"type": "subscribe", "topic": topic}), 1)["type"], "ack");
    client
}

#[test]
fn the_publish_api_reaches_websocket_clients() {
    let server = hub(config(2));
    let addr = server.local_addr();
    let mut ann = subscriber(&server, "/?user=ann", "news");
    let mut bob = subscriber(&server, "/?user=bob", "news");

    let reply = http_once(addr, "POST", "/api/publish", Some(KEY), r#"{"topic":"news","data":{"headline":"hi"}}"#);
    assert_eq!((reply.status, reply.json()), (202, json!({"ok": true})));
    for client in [&mut ann, &mut bob] {
        let frame = client.next();
        assert_eq!((frame["topic"].clone(), frame["from"].clone()), (json!("news"), json!("api")), "{frame}");
        assert_eq!(frame["data"], json!({"headline": "hi"}));
    }

    let reply = http_once(addr, "POST", "/api/send", Some(KEY), r#"{"user":"bob","data":"psst","from":"ops"}"#);
    assert_eq!(reply.status, 202);
    let frame = bob.next();
    assert_eq!((frame["data"].clone(), frame["from"].clone()), (json!("psst"), json!("ops")));

    assert_eq!(http_once(addr, "POST", "/api/broadcast", Some(KEY), r#"{"data":[1,2]}"#).status, 202);
    for client in [&mut ann, &mut bob] {
        let frame = client.next();
        assert_eq!((frame["type"].clone(), frame["data"].clone()), (json!("message"), json!([1, 2])), "{frame}");
        assert!(frame.get("topic").is_none());
    }
    // ann got no copy of bob's direct message: her next frame is the marker.
    server.hub().broadcast(wshub::Message::text(r#"{"type":"marker"}"#)).unwrap();
    assert_eq!(ann.next()["type"], "marker");
    stop(server);
}

#[test]
fn the_api_refuses_with_status_and_a_json_error() {
    let server = hub(config(1));
    let addr = server.local_addr();
    let code = |reply: HttpReply| (reply.status, reply.json()["error"].as_str().unwrap_or_default().to_string());
    let publish = r#"{"topic":"t","data":1}"#;
    let no_key = http_once(addr, "POST", "/api/publish", None, publish);
    assert_eq!(no_key.header("www-authenticate"), Some("Bearer"));
    assert_eq!(code(no_key), (401, "unauthorized".into()));
    assert_eq!(code(http_once(addr, "POST", "/api/publish", Some("wrong"), publish)), (401, "unauthorized".into()));
    assert_eq!(code(http_once(addr, "POST", "/api/publish", Some(KEY), "{")), (400, "bad_json".into()));
    assert_eq!(code(http_once(addr, "POST", "/api/publish", Some(KEY), r#"{"data":1}"#)), (400, "bad_field".into()));
    assert_eq!(code(http_once(addr, "POST", "/api/nope", Some(KEY), publish)), (404, "not_found".into()));
    let get = http_once(addr, "GET", "/api/publish", Some(KEY), "");
    assert_eq!(get.header("allow"), Some("POST"));
    assert_eq!(code(get), (405, "method_not_allowed".into()));

    // Over the body limit: refused from the Content-Length, before the body is read.
    let huge = format!(r#"{{"topic":"t","data":"{}"}}"#, "x".repeat(Config::default().max_message_size + 2048));
    assert_eq!(http_once(addr, "POST", "/api/publish", Some(KEY), &huge).status, 413);
    eventually("auth failures counted", || stats(addr)["auth_failures"] == 2);

    let open = App::new().start(config(1)).unwrap();
    let disabled = http_once(open.local_addr(), "POST", "/api/publish", Some(KEY), publish);
    assert_eq!(code(disabled), (403, "api_disabled".into()));
    stop(open);
    stop(server);
}

fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let reply = http_once(addr, "GET", "/stats", None, "");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

#[test]
fn health_and_stats_report_the_server() {
    let server = hub(config(2));
    let addr = server.local_addr();
    let health = http_once(addr, "GET", "/health", None, "");
    assert_eq!((health.status, health.json()), (200, json!({"ok": true})));

    let mut ann = subscriber(&server, "/?user=ann", "room");
    let _bob = subscriber(&server, "/?user=bob", "room");
    for n in 0..5 {
        ann.send(json!({"type": "publish", "topic": "room", "data": n}));
    }
    eventually("stats count the traffic", || {
        let stats = stats(addr);
        // 2 subscribes + 5 publishes in; 2 acks + 2 welcomes + 10 deliveries out.
        stats["messages_in"] == 7 && stats["messages_out"] == 14
    });
    let stats = stats(addr);
    assert_eq!(stats["users"], 2);
    assert_eq!(stats["topics"], 1);
    assert_eq!(stats["handshakes"], 2);
    assert_eq!(stats["connections_per_shard"].as_array().unwrap().len(), 2);
    assert!(stats["bytes_out"].as_u64().unwrap() > stats["bytes_in"].as_u64().unwrap());
    assert!(stats["http_requests"].as_u64().unwrap() >= 2);
    stop(server);
}

/// Parses the Prometheus text format strictly enough to catch what a scraper rejects:
/// every sample belongs to a family declared with HELP and TYPE before it, names and
/// labels are well formed, values are numbers, counters end in `_total`.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let valid_name = |name: &str| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(kind != "counter" || name.ends_with("_total"), "counter without _total: {line}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "family declared twice: {name}");
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample and value");
            let name = series.split('{').next().unwrap();
            assert!(valid_name(name), "{line}");
            assert!(types.contains_key(name), "sample before its TYPE: {line}");
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                let labels = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("{labels}");
                for pair in labels.split(',') {
                    let (label, quoted) = pair.split_once('=').expect("label=value");
                    assert!(valid_name(label) && quoted.starts_with('"') && quoted.ends_with('"'), "{line}");
                }
            }
            samples.insert(series.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("value: {line}")));
        }
    }
    samples
}

#[test]
fn metrics_are_prometheus_text_with_a_series_per_shard() {
    let server = hub(config(2));
    let addr = server.local_addr();
    let mut ann = subscriber(&server, "/?user=ann", "room");
    ann.send(json!({"type": "publish", "topic": "room", "data": "x"}));
    assert_eq!(ann.next()["data"], "x");
    let refused = http(addr, b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 426 "), "{refused}");

    let scrape = || {
        let reply = http_once(addr, "GET", "/metrics", None, "");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        parse_prometheus(&reply.body)
    };
    let sum = |samples: &HashMap<String, f64>, name: &str| -> f64 {
        (0..2).map(|shard| samples[&format!("{name}{{shard=\"{shard}\"}}")]).sum()
    };
    eventually("metrics count the traffic", || {
        let samples = scrape();
        sum(&samples, "wshub_messages_received_total") == 2.0
            && sum(&samples, "wshub_handshakes_total") == 1.0
            && sum(&samples, "wshub_handshake_failures_total") == 1.0
    });
    let samples = scrape();
    assert!(sum(&samples, "wshub_connections") >= 1.0, "the scraping connection itself counts");
    assert_eq!(sum(&samples, "wshub_messages_sent_total"), 3.0, "welcome, ack, delivery");
    assert_eq!(samples["wshub_topics"], 1.0);
    assert_eq!(samples["wshub_users"], 1.0);
    for family in ["wshub_inbox_depth", "wshub_evictions_total", "wshub_auth_failures_total", "wshub_sent_bytes_total"]
    {
        assert!(samples.contains_key(&format!("{family}{{shard=\"1\"}}")), "{family}");
    }
    stop(server);
}

#[test]
fn keep_alive_serves_several_requests_and_pipelines_in_order() {
    let server = hub(config(1));
    let mut conn = HttpConn::connect(server.local_addr());
    for _ in 0..3 {
        let reply = conn.request("GET", "/health", None, "");
        assert_eq!((reply.status, reply.header("connection")), (200, Some("keep-alive")));
    }
    let head = conn.request("HEAD", "/stats", None, "");
    assert_eq!(head.status, 200);
    assert!(head.header("content-length").unwrap().parse::<usize>().unwrap() > 0, "HEAD says the GET length");

    // Three requests in one write; the answers come back in order.
    let mut batch = http_request("GET", "/health", None, "");
    batch.extend(http_request("POST", "/api/publish", Some(KEY), r#"{"topic":"t","data":1}"#));
    batch.extend(http_request("GET", "/nothing-here", None, ""));
    conn.stream.write_all(&batch).unwrap();
    assert_eq!(conn.read_reply(false).status, 200);
    assert_eq!(conn.read_reply(false).status, 202);
    assert_eq!(conn.read_reply(false).status, 404);

    // `Connection: close` is honoured: the answer says so and the server closes.
    conn.stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(conn.read_reply(false).header("connection"), Some("close"));
    assert!(wait_for_eof(&mut conn.stream));

    // The same connection can still become a WebSocket after plain requests.
    let mut conn = HttpConn::connect(server.local_addr());
    assert_eq!(conn.request("GET", "/health", None, "").status, 200);
    let ws = upgrade_raw(conn.stream);
    drop(ws);
    stop(server);
}

#[test]
fn expect_continue_gets_100_before_the_body() {
    let server = hub(config(1));
    let mut conn = HttpConn::connect(server.local_addr());
    let body = r#"{"topic":"t","data":"later"}"#;
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.stream.write_all(head.as_bytes()).unwrap();
    assert_eq!(conn.read_reply(false).status, 100);
    conn.stream.write_all(body.as_bytes()).unwrap();
    assert_eq!(conn.read_reply(false).status, 202);
    stop(server);
}

#[test]
fn a_slow_http_client_holds_up_no_one_and_idles_out() {
    let mut config = config(1);
    config.handshake_timeout = Duration::from_millis(500);
    let server = hub(config);
    let addr = server.local_addr();
    // Half a request, then silence: the one shard keeps serving everyone else.
    let mut slow = HttpConn::connect(addr);
    slow.stream.write_all(b"POST /api/publish HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"top").unwrap();
    for _ in 0..5 {
        assert_eq!(http_once(addr, "GET", "/health", None, "").status, 200);
    }
    let mut client = JsonClient::connect(addr, "/");
    assert_eq!(client.call(json!({"type": "ping"}), 3)["type"], "pong");
    assert!(wait_for_eof(&mut slow.stream), "the unfinished request is cut off at the deadline");

    // A kept-alive connection that goes quiet is closed after the same timeout.
    let mut idle = HttpConn::connect(addr);
    assert_eq!(idle.request("GET", "/health", None, "").status, 200);
    assert!(wait_for_eof(&mut idle.stream), "an idle keep-alive connection is closed");
    stop(server);
}

#[test]
fn the_demo_page_and_its_script_are_served() {
    let server = hub(config(1));
    let addr = server.local_addr();
    let page = http_once(addr, "GET", "/", None, "");
    assert_eq!((page.status, page.header("content-type")), (200, Some("text/html; charset=utf-8")));
    assert!(page.body.contains("app.js"), "the page loads its script");
    let script = http_once(addr, "GET", "/app.js", None, "");
    assert_eq!((script.status, script.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert!(script.body.contains("WebSocket"));
    stop(server);

    let quiet = App::new().start(Config { serve_demo: false, ..config(1) }).unwrap();
    assert_eq!(http_once(quiet.local_addr(), "GET", "/", None, "").status, 404);
    stop(quiet);
}
