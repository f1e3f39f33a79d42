//! Authentication and authorization over real sockets: JWTs, static tokens, one-time
//! tickets, the origin check, topic permissions, and a token refreshed past its expiry.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use wshub::unix_now;
use wshub::{sign_jwt as sign, JwtVerifier};
use wshub::{App, Config, Server};
use wshub::{AuthSettings, Secret, StaticToken};

const SECRET: &[u8] = b"a-test-secret-of-32-bytes-length";
const API_KEY: &str = "backend-key";

fn auth_config() -> Config {
    let jwt = JwtVerifier::new(SECRET.to_vec()).issuer("auth.test").leeway(Duration::ZERO);
    Config {
        api_keys: vec![Secret::new(API_KEY)],
        auth: AuthSettings {
            tokens: vec![
                StaticToken { token: Secret::new("tok-ops"), user: "ops".into(), admin: true },
                StaticToken { token: Secret::new("tok-bob"), user: "bob".into(), admin: false },
            ],
            jwt: Some(Arc::new(jwt)),
            tickets: true,
            ticket_ttl: Duration::from_secs(1),
            ..AuthSettings::default()
        },
        ..config(2)
    }
}

fn hub() -> Server {
    App::new().start(auth_config()).expect("hub starts")
}

fn jwt(claims: serde_json::Value) -> String {
    let mut claims = claims;
    claims["iss"] = claims.get("iss").cloned().unwrap_or(json!("auth.test"));
    sign(SECRET, &claims)
}

/// The status line of a raw upgrade request to `target` with `extra` headers.
fn upgrade_status(addr: SocketAddr, target: &str, extra: &str) -> (u16, String) {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    let response = http(addr, request.as_bytes());
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

/// Connects with a header set, reads the welcome.
fn connect_with(addr: SocketAddr, target: &str, header: Option<(&str, &str)>) -> (JsonClient, Option<String>) {
    let mut request = format!("ws://{addr}{target}").into_client_request().unwrap();
    if let Some((name, value)) = header {
        request
            .headers_mut()
            .insert(tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let (mut ws, response) = tungstenite::client(request, stream).expect("handshake");
    let protocol = response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_string());
    let welcome: serde_json::Value = serde_json::from_str(&next_text(&mut ws)).unwrap();
    assert_eq!(welcome["type"], "welcome");
    (JsonClient { ws, welcome }, protocol)
}

#[test]
fn jwt_upgrades_are_checked_and_refused_with_401() {
    let server = hub();
    let addr = server.local_addr();
    let now = unix_now();
    let refused = |target: &str, extra: &str| upgrade_status(addr, target, extra).0;
    assert_eq!(refused("/?user=ann", ""), 401, "no credential");
    assert_eq!(refused("/?token=not.a.jwt", ""), 401);
    let forged = sign(b"some-other-secret-entirely-here!", &json!({"sub": "ann", "iss": "auth.test"}));
    assert_eq!(refused(&format!("/?token={forged}"), ""), 401);
    assert_eq!(refused(&format!("/?token={}", jwt(json!({"sub": "ann", "exp": now - 5}))), ""), 401);
    assert_eq!(refused(&format!("/?token={}", jwt(json!({"sub": "ann", "nbf": now + 600}))), ""), 401);
    assert_eq!(refused(&format!("/?token={}", jwt(json!({"sub": "ann", "iss": "evil"}))), ""), 401);
    let (status, response) = upgrade_status(addr, "/", "Authorization: Bearer nope\r\n");
    assert!(status == 401 && response.contains("WWW-Authenticate: Bearer"), "{response}");

    let token = jwt(json!({"sub": "ann", "exp": now + 600}));
    let (ann, _) = connect_with(addr, "/?user=mallory", Some(("Authorization", &format!("Bearer {token}"))));
    assert_eq!(ann.user(), "ann", "the token's sub, not ?user=");
    let (ann_by_query, _) = connect_with(addr, &format!("/?token={token}"), None);
    assert_eq!(ann_by_query.user(), "ann");
    // Browsers pass it as a subprotocol; the server confirms `wshub`.
    let protocols = format!("wshub, bearer.{token}");
    let (ann_by_protocol, confirmed) = connect_with(addr, "/", Some(("Sec-WebSocket-Protocol", &protocols)));
    assert_eq!((ann_by_protocol.user(), confirmed.as_deref()), ("ann".into(), Some("wshub")));
    eventually("failures counted", || {
        let stats = http_once(addr, "GET", "/stats", None, "").json();
        stats["auth_failures"] == 7 && stats["handshakes"] == 3
    });
    stop(server);
}

#[test]
fn a_ticket_opens_one_connection_as_its_user() {
    let server = hub();
    let addr = server.local_addr();
    let issue = |key| http_once(addr, "POST", "/api/ticket", key, r#"{"user":"cy"}"#);
    assert_eq!(issue(None).status, 401, "tickets are for backends holding the key");
    let reply = issue(Some(API_KEY));
    assert_eq!(reply.status, 201);
    let ticket = reply.json()["ticket"].as_str().unwrap().to_string();
    let (cy, _) = connect_with(addr, &format!("/?ticket={ticket}"), None);
    assert_eq!(cy.user(), "cy");
    assert_eq!(upgrade_status(addr, &format!("/?ticket={ticket}"), "").0, 401, "used once");

    let stale = issue(Some(API_KEY)).json()["ticket"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500)); // past the 1 s lifetime
    assert_eq!(upgrade_status(addr, &format!("/?ticket={stale}"), "").0, 401, "expired");
    stop(server);
}

#[test]
fn browsers_on_other_sites_get_403() {
    let server = App::new().start(config(1)).unwrap();
    let addr = server.local_addr();
    assert_eq!(upgrade_status(addr, "/", "Origin: https://evil.example\r\n").0, 403);
    assert_eq!(upgrade_status(addr, "/", &format!("Origin: http://{addr}\r\n")).0, 101, "same origin");
    stop(server);
    let listed = Config {
        auth: AuthSettings { allowed_origins: vec!["https://app.example".into()], ..AuthSettings::default() },
        ..config(1)
    };
    let server = App::new().start(listed).unwrap();
    let addr = server.local_addr();
    assert_eq!(upgrade_status(addr, "/", "Origin: https://app.example\r\n").0, 101);
    assert_eq!(upgrade_status(addr, "/", &format!("Origin: http://{addr}\r\n")).0, 403, "only the list");
    stop(server);
}

#[test]
fn permissions_deny_with_a_forbidden_error() {
    let server = hub();
    let addr = server.local_addr();
    let limited = jwt(json!({"sub": "ann", "subs": ["room.*", "user:ann"], "pubs": ["room.lobby"]}));
    let (mut ann, _) = connect_with(addr, &format!("/?token={limited}"), None);
    let (mut bob, _) = connect_with(addr, "/?token=tok-bob", None);
    let (mut ops, _) = connect_with(addr, "/?token=tok-ops", None);
    let code =
        |answer: serde_json::Value| answer["code"].as_str().unwrap_or(answer["type"].as_str().unwrap()).to_string();

    assert_eq!(code(ann.call(json!({"type": "subscribe", "topic": "room.1"}), 1)), "ack");
    assert_eq!(code(ann.call(json!({"type": "subscribe", "topic": "admin.log"}), 2)), "forbidden");
    assert_eq!(code(ann.call(json!({"type": "subscribe", "topic": "user:ann"}), 3)), "ack");
    assert_eq!(code(bob.call(json!({"type": "subscribe", "topic": "user:ann"}), 4)), "forbidden");
    assert_eq!(code(ann.call(json!({"type": "publish", "topic": "room.1", "data": 1}), 5)), "forbidden");
    assert_eq!(code(ann.call(json!({"type": "publish", "topic": "room.lobby", "data": 1}), 6)), "ack");
    assert_eq!(code(bob.call(json!({"type": "broadcast", "data": 1}), 7)), "forbidden", "not an admin");
    // The admin may broadcast and write to anyone's user topic.
    assert_eq!(code(ops.call(json!({"type": "publish", "topic": "user:ann", "data": "hi"}), 8)), "ack");
    assert_eq!(ann.next()["data"], "hi");
    ops.send(json!({"type": "broadcast", "data": "all", "id": 9}));
    let mut answers: Vec<String> = (0..2).map(|_| code(ops.next())).collect();
    answers.sort();
    assert_eq!(answers, ["ack", "message"], "the sender gets its own broadcast too");
    assert_eq!(ann.next()["data"], "all");
    assert_eq!(bob.next()["data"], "all");
    stop(server);
}

#[test]
fn a_refreshed_token_outlives_the_first_and_an_unrefreshed_one_is_closed() {
    let server = hub();
    let addr = server.local_addr();
    let first_expiry = unix_now() + 2;
    let short = jwt(json!({"sub": "ann", "exp": first_expiry}));
    let (mut keeper, _) = connect_with(addr, &format!("/?token={short}"), None);
    let (mut lapser, _) = connect_with(addr, &format!("/?token={short}"), None);
    // Less than the warning period left: both are told at once.
    for client in [&mut keeper, &mut lapser] {
        let warning = client.next();
        assert_eq!(warning["type"], "token_expiring", "{warning}");
    }
    let wrong_user = jwt(json!({"sub": "bob", "exp": unix_now() + 600}));
    assert_eq!(keeper.call(json!({"type": "refresh", "token": wrong_user}), 1)["code"], "unauthorized");
    let fresh = jwt(json!({"sub": "ann", "exp": unix_now() + 600}));
    assert_eq!(keeper.call(json!({"type": "refresh", "token": fresh}), 2)["type"], "ack");

    assert_eq!(close_code(&mut lapser.ws), CloseCode::Library(4001), "closed at expiry");
    // By now the first token has expired; the refreshed connection still works.
    assert!(unix_now() >= first_expiry);
    assert_eq!(keeper.call(json!({"type": "ping"}), 3)["type"], "pong");
    stop(server);
}

#[test]
fn secrets_never_reach_the_log() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let secret = "jwt-secret-that-must-not-leak-1234";
    /// Kills the server if an assertion fails before it is stopped.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "trace", "--shards", "1", "--auth", "jwt,token"])
        .args(["--auth-token", "static-token-secret=ann", "--api-key", "api-key-secret"])
        .env("WSHUB_JWT_SECRET", secret)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let child = Reaped(child);
    let mut log = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&log).contains(" shard(s)") {
        assert_eq!(stderr.read(&mut byte).unwrap(), 1, "log ended early: {}", String::from_utf8_lossy(&log));
        log.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&log).to_string();
    let addr: SocketAddr = text.split("ws://").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let presented = sign(b"wrong-secret-wrong-secret-wrong!", &json!({"sub": "ann"}));
    assert_eq!(upgrade_status(addr, &format!("/?token={presented}"), "").0, 401);
    assert_eq!(upgrade_status(addr, "/?token=static-token-secret", "").0, 101);
    let reply = http_once(addr, "POST", "/api/publish", Some("api-key-secret"), r#"{"topic":"t","data":1}"#);
    assert_eq!(reply.status, 202);
    // SAFETY: signals our own child, which is still running (Reaped has not dropped it).
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    stderr.read_to_end(&mut log).unwrap();
    drop(child);
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("upgrade refused: 401"), "the refusal is logged: {log}");
    for leaked in [secret, "static-token-secret", "api-key-secret", presented.as_str()] {
        assert!(!log.contains(leaked), "{leaked} appears in the log:\n{log}");
    }
}

#[test]
fn config_rules_decide_topics_and_broadcasts() {
    use wshub::Policy;
    let policy = Policy {
        rules: vec!["publish:news.*=ops".parse().unwrap(), "subscribe:staff.*=ops".parse().unwrap()],
        broadcasters: Some(vec!["alerts".into()]),
    };
    let config = Config { auth: AuthSettings { policy, ..AuthSettings::default() }, ..config(2) };
    let server = App::new().start(config).unwrap();
    let addr = server.local_addr();
    let mut ann = JsonClient::connect(addr, "/?user=ann");
    let mut ops = JsonClient::connect(addr, "/?user=ops");
    let mut alerts = JsonClient::connect(addr, "/?user=alerts");
    let kind =
        |answer: serde_json::Value| answer["code"].as_str().unwrap_or(answer["type"].as_str().unwrap()).to_string();
    assert_eq!(kind(ann.call(json!({"type": "publish", "topic": "news.eu", "data": 1}), 1)), "forbidden");
    assert_eq!(kind(ops.call(json!({"type": "publish", "topic": "news.eu", "data": 1}), 2)), "ack");
    assert_eq!(kind(ann.call(json!({"type": "subscribe", "topic": "staff.room"}), 3)), "forbidden");
    assert_eq!(kind(ann.call(json!({"type": "subscribe", "topic": "news.eu"}), 4)), "ack", "rule is for publish");
    assert_eq!(kind(ann.call(json!({"type": "broadcast", "data": 1}), 5)), "forbidden");
    alerts.send(json!({"type": "broadcast", "data": "fire drill"}));
    assert_eq!(ann.next()["data"], "fire drill");
    stop(server);
}

/// Closes a client and waits until the server has dropped its socket (so its slab slot
/// is free again).
fn hang_up(mut client: JsonClient) {
    client.ws.close(None).unwrap();
    while client.ws.read().is_ok() {}
    assert!(wait_for_eof(client.ws.get_mut()), "the server closes the socket");
}

fn one_shard_hub() -> Server {
    App::new().start(Config { shards: 1, ..auth_config() }).expect("hub starts")
}

#[test]
fn a_reconnect_into_the_same_slot_is_warned_once() {
    let server = one_shard_hub();
    let addr = server.local_addr();
    // Warned 3 s from now (30 s before expiry): each of the first three connections is
    // gone before its warning comes due, and the next one takes its slab slot.
    let token = jwt(json!({"sub": "ann", "exp": unix_now() + 33}));
    for _ in 0..3 {
        let (client, _) = connect_with(addr, &format!("/?token={token}"), None);
        hang_up(client);
    }
    let (mut last, _) = connect_with(addr, &format!("/?token={token}"), None);
    let warning = last.next();
    assert_eq!(warning["type"], "token_expiring", "{warning}");
    // Any duplicate would have come due in the same pass, ahead of this answer.
    last.send(json!({"type": "ping", "id": 1}));
    let mut frames = Vec::new();
    loop {
        let frame = last.next();
        if frame["type"] == "pong" {
            break;
        }
        frames.push(frame);
    }
    assert_eq!(frames, Vec::<serde_json::Value>::new(), "exactly one token_expiring");
    stop(server);
}

#[test]
fn connection_churn_does_not_pile_up_expiry_entries() {
    let server = one_shard_hub();
    let addr = server.local_addr();
    let token = jwt(json!({"sub": "ann", "exp": unix_now() + 3600}));
    let (_keeper, _) = connect_with(addr, &format!("/?token={token}"), None);
    for _ in 0..200 {
        let (client, _) = connect_with(addr, &format!("/?token={token}"), None);
        hang_up(client);
    }
    // One live connection (a warning and a close), twice over, plus the slack of 64
    // stale entries; before the fix all 400 of the churned ones stayed until due.
    eventually("the churned connections' entries dropped", || {
        let entries = http_once(addr, "GET", "/stats", None, "").json()["expiry_entries"].as_u64();
        entries.is_some_and(|entries| (2..=2 * 2 + 64).contains(&entries))
    });
    stop(server);
}

#[test]
fn an_upgrade_with_two_credentials_gets_400() {
    let server = hub();
    let addr = server.local_addr();
    let valid = jwt(json!({"sub": "ann", "exp": unix_now() + 600}));
    let header = |token: &str| format!("Authorization: Bearer {token}\r\n");
    let cases = [
        ("valid header, other ?token=", header(&valid), "/?token=tok-bob".to_string()),
        ("?token= valid, other header", header("tok-bob"), format!("/?token={valid}")),
        ("the same token in both", header(&valid), format!("/?token={valid}")),
        (
            "?ticket= and a bearer subprotocol",
            format!("Sec-WebSocket-Protocol: wshub, bearer.{valid}\r\n"),
            "/?ticket=x".into(),
        ),
        ("two ?token=", String::new(), format!("/?token={valid}&token=tok-bob")),
        ("two Authorization headers", format!("{}{}", header(&valid), header("tok-bob")), "/".into()),
    ];
    for (case, extra, target) in &cases {
        let (status, response) = upgrade_status(addr, target, extra);
        assert_eq!(status, 400, "{case}: {response}");
        assert!(response.contains("more than one "), "{case}: {response}");
        assert!(!response.contains(&valid) && !response.contains("tok-bob"), "{case}: no credential echoed");
    }
    // One of them alone still works.
    let (ann, _) = connect_with(addr, &format!("/?token={valid}"), None);
    assert_eq!(ann.user(), "ann");
    eventually("refusals counted as handshake failures", || {
        http_once(addr, "GET", "/stats", None, "").json()["handshake_failures"].as_u64() >= Some(cases.len() as u64)
    });
    stop(server);
    // Open mode ignores credentials, but two of them are still ambiguous.
    let server = App::new().start(config(1)).unwrap();
    let addr = server.local_addr();
    assert_eq!(upgrade_status(addr, "/?user=ann&token=a", &header("b")).0, 400);
    assert_eq!(upgrade_status(addr, "/?user=ann&token=a", "").0, 101);
    stop(server);
}

#[test]
fn the_api_refuses_two_authorization_headers_with_400() {
    let server = hub();
    let addr = server.local_addr();
    let body = r#"{"topic":"t","data":1}"#;
    let mut conn = HttpConn::connect(addr);
    for (first, second) in [(API_KEY, "wrong"), ("wrong", API_KEY), (API_KEY, API_KEY)] {
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {first}\r\n\
             Authorization: Bearer {second}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.stream.write_all(request.as_bytes()).unwrap();
        let reply = conn.read_reply(false);
        assert_eq!(
            (reply.status, reply.json()["error"].as_str()),
            (400, Some("ambiguous_credentials")),
            "{first} + {second}"
        );
        assert!(!reply.body.contains(API_KEY), "the key is not echoed: {}", reply.body);
    }
    assert_eq!(http_once(addr, "POST", "/api/publish", Some(API_KEY), body).status, 202, "one header still works");
    stop(server);
}
